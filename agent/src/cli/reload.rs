//! `baton reload [--all]`: reload the configuration without a restart.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;

/// `baton reload [--all]`.
pub fn run(config: &Path, all: bool) -> Result<()> {
    operator_request(config, if all { "reload --all" } else { "reload" })
}
