//! `baton watchdog` (internal, S4.5): the watchdog process the agent spawns
//! after a group's halt method; see docs/services.md.

use anyhow::Result;

/// Runs the watchdog and exits with its code.
pub fn run(args: crate::services::watchdog::Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let code = rt.block_on(crate::services::watchdog::run(args))?;
    std::process::exit(code);
}
