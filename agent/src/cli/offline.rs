//! `baton offline GROUP`: off-line mode for a resource group (S4.6).

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;
use crate::control::protocol::Request;

/// `baton offline GROUP`.
pub fn run(config: &Path, group: &str) -> Result<()> {
    operator_request(config, Request::Offline { group: group.to_string() })
}
