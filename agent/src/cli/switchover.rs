//! `baton switchover GROUP [NODE]`: a planned switchover (S4.4).

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;

/// `baton switchover GROUP [NODE]`.
pub fn run(config: &Path, group: &str, node: Option<u32>) -> Result<()> {
    let line = match node {
        Some(n) => format!("switchover {group} {n}"),
        None => format!("switchover {group}"),
    };
    operator_request(config, &line)
}
