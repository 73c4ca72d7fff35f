//! `baton unstandby NODE`: let NODE run services again.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;
use crate::control::protocol::Request;

/// `baton unstandby NODE`.
pub fn run(config: &Path, node: u32) -> Result<()> {
    operator_request(config, Request::Unstandby { node })
}
