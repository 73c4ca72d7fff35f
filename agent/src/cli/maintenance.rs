//! `baton maintenance on|off`: freeze or resume every service decision.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;

/// `baton maintenance MODE` (`on` or `off`, checked by clap).
pub fn run(config: &Path, mode: &str) -> Result<()> {
    operator_request(config, &format!("maintenance {mode}"))
}
