//! The operator requests' common path: one request to the local agent's
//! control socket (which hands it to the deciding node), in the protocol
//! of `control::protocol`.

use std::path::Path;

use anyhow::Result;

use crate::config;
use crate::control::{protocol::Reply, protocol::Request, socket as control};

/// Sends an operator request to the local agent and prints its reply
/// line; fails when the agent refuses it (`error: ...`, printed as the
/// error without the prefix).
pub fn operator_request(config: &Path, request: Request) -> Result<()> {
    let cfg = config::load(config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match rt.block_on(control::call(&cfg.paths.control_socket(), &request))? {
        Reply::Error(e) => anyhow::bail!("{e}"),
        reply => println!("{reply}"),
    }
    Ok(())
}
