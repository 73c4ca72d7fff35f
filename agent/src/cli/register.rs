//! `baton register GROUP [NODE]`: register (start) a group, clearing its failures.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;
use crate::control::protocol::Request;

/// `baton register GROUP [NODE]`: with NODE, then a switchover there.
pub fn run(config: &Path, group: &str, node: Option<u32>) -> Result<()> {
    operator_request(config, Request::Register { group: group.to_string() })?;
    match node {
        Some(n) => operator_request(config, Request::Switchover { group: group.to_string(), to: Some(n) }),
        None => Ok(()),
    }
}
