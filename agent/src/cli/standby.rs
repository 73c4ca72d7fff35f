//! `baton standby NODE`: move every service off NODE and keep them off.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;
use crate::control::protocol::Request;

/// `baton standby NODE`.
pub fn run(config: &Path, node: u32) -> Result<()> {
    operator_request(config, Request::Standby { node })
}
