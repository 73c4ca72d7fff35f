//! `baton giveback NODE`: NODE, taken over, gets its work back.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;
use crate::control::protocol::Request;

/// `baton giveback NODE`.
pub fn run(config: &Path, node: u32) -> Result<()> {
    operator_request(config, Request::Giveback { node })
}
