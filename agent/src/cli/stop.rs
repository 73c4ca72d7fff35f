//! `baton stop [--all]`: a graceful leave of this node, or of the whole cluster.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;
use crate::control::protocol::Request;

/// `baton stop [--all]`.
pub fn run(config: &Path, all: bool) -> Result<()> {
    operator_request(config, if all { Request::StopAll } else { Request::Stop })
}
