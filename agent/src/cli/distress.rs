//! `baton distress` (`baton fail`): report a critical local failure.

use std::path::Path;

use anyhow::Result;

use crate::{config, control::socket as control};

/// `baton distress --reason REASON`.
pub fn run(config: &Path, reason: &str) -> Result<()> {
    if control::reason_code(reason).is_none() {
        anyhow::bail!("unknown reason {reason:?}: use communication, protocol, component, corruption or admin");
    }
    let cfg = config::load(config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reply = rt.block_on(control::request(&cfg.paths.control_socket(), &format!("distress {reason}")))?;
    println!("{reply}");
    Ok(())
}
