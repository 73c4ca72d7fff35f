//! The operator requests' common path: one line to the local agent's
//! control socket, which hands it to the deciding node.

use std::path::Path;

use anyhow::Result;

use crate::{config, control::socket as control};

/// Sends an operator request to the local agent (which hands it to the
/// deciding node) and fails when the agent refuses it.
pub fn operator_request(config: &Path, line: &str) -> Result<()> {
    let cfg = config::load(config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reply = rt.block_on(control::request(&cfg.paths.control_socket(), line))?;
    if let Some(e) = reply.strip_prefix("error: ") {
        anyhow::bail!("{e}");
    }
    println!("{reply}");
    Ok(())
}
