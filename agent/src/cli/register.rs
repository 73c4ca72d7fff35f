//! `baton register GROUP [NODE]`: register (start) a group, clearing its failures.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;

/// `baton register GROUP [NODE]`: with NODE, then a switchover there.
pub fn run(config: &Path, group: &str, node: Option<u32>) -> Result<()> {
    operator_request(config, &format!("register {group}"))?;
    match node {
        Some(n) => operator_request(config, &format!("switchover {group} {n}")),
        None => Ok(()),
    }
}
