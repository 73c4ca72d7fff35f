//! `baton maintenance on|off`: freeze or resume every service decision.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;
use crate::control::protocol::Request;

/// `baton maintenance MODE` (`on` or `off`, checked by clap).
pub fn run(config: &Path, mode: &str) -> Result<()> {
    let on = match mode {
        "on" => true,
        "off" => false,
        other => anyhow::bail!("maintenance: {other:?} is not on or off"),
    };
    operator_request(config, Request::Maintenance { on })
}
