//! `baton deregister GROUP`: stop a group cluster-wide.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;

/// `baton deregister GROUP`.
pub fn run(config: &Path, group: &str) -> Result<()> {
    operator_request(config, &format!("deregister {group}"))
}
