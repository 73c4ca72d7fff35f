//! `baton reload [--all]`: reload the configuration without a restart.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;
use crate::control::protocol::Request;

/// `baton reload [--all]`.
pub fn run(config: &Path, all: bool) -> Result<()> {
    operator_request(config, Request::Reload { all })
}
