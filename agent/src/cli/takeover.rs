//! `baton takeover NODE`: negotiated takeover (docs/takeover.md).

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;
use crate::control::protocol::Request;

/// `baton takeover NODE [--reason REASON]`.
pub fn run(config: &Path, node: u32, reason: &str) -> Result<()> {
    operator_request(config, Request::Takeover { node, reason: reason.to_string() })
}
