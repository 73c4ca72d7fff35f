//! `baton storage status`: the shared disks' persistent reservations.

use std::path::Path;

use anyhow::Result;

use crate::config;

/// `baton storage status [--json]`.
pub fn status(config: &Path, json: bool) -> Result<()> {
    let cfg = config::load(config)?;
    let v = crate::services::fencing::storage_status(&cfg);
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", crate::services::fencing::render_storage(&v));
    }
    if v["disks"].as_array().is_some_and(|d| d.iter().any(|d| d["error"].is_string())) {
        anyhow::bail!("a shared disk could not be read");
    }
    Ok(())
}
