//! `baton guard` (internal): the guard process each life of the agent
//! starts (releases what the node held when the agent dies); see
//! docs/services.md.

use anyhow::Result;

/// Runs the guard and exits with its code.
pub fn run(args: crate::services::guard::Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let code = rt.block_on(crate::services::guard::run(args))?;
    std::process::exit(code);
}
