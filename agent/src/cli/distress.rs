//! `baton distress` (`baton fail`): report a critical local failure.

use std::path::Path;

use anyhow::Result;

use super::request::operator_request;
use crate::control::protocol::{DistressReason, Request};

/// `baton distress --reason REASON`.
pub fn run(config: &Path, reason: &str) -> Result<()> {
    let reason: DistressReason = reason.parse()?;
    operator_request(config, Request::Distress { reason })
}
