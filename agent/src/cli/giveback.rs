//! `baton giveback NODE`: NODE, taken over, gets its work back.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;

/// `baton giveback NODE`.
pub fn run(config: &Path, node: u32) -> Result<()> {
    operator_request(config, &format!("giveback {node}"))
}
