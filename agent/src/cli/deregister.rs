//! `baton deregister GROUP`: stop a group cluster-wide.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;
use crate::control::protocol::Request;

/// `baton deregister GROUP`.
pub fn run(config: &Path, group: &str) -> Result<()> {
    operator_request(config, Request::Deregister { group: group.to_string() })
}
