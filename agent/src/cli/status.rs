//! `baton status`: the local view of peers, read from the pinned maps.

use std::path::Path;

use anyhow::Result;

use crate::{config, datapath::status};

/// `baton status [--json] [--watch --interval SECONDS]`.
pub fn run(config: &Path, json: bool, watch: bool, interval: f64) -> Result<()> {
    let cfg = config::load(config)?;
    if watch {
        return Ok(status::watch(&cfg, json, interval)?);
    }
    let v = status::collect(&cfg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", status::render(&v));
    }
    Ok(())
}
