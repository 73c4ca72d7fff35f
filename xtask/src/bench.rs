//! `cargo xtask bench detect`: to be implemented.

use anyhow::Result;

/// Options of `cargo xtask bench detect` (see the clap definition in main.rs).
#[derive(Debug, Clone)]
#[allow(dead_code)] // until detect() is implemented
pub struct DetectOpts {
    /// Number of kills to measure.
    pub kills: u32,
    /// Length of the soak phase, in seconds.
    pub soak_secs: u64,
    /// Heartbeat interval, in milliseconds.
    pub interval_ms: u64,
    /// Missed heartbeats before declaring a peer dead.
    pub misses: u32,
}

pub fn detect(opts: &DetectOpts) -> Result<()> {
    let _ = opts;
    anyhow::bail!("not yet implemented")
}
