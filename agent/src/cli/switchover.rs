//! `baton switchover GROUP [NODE]`: a planned switchover (S4.4).

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;
use crate::control::protocol::Request;

/// `baton switchover GROUP [NODE]`.
pub fn run(config: &Path, group: &str, node: Option<u32>) -> Result<()> {
    operator_request(config, Request::Switchover { group: group.to_string(), to: node })
}
