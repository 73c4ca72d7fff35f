//! `cargo xtask demo`: to be implemented.

use anyhow::Result;

pub fn run() -> Result<()> {
    anyhow::bail!("not yet implemented")
}
