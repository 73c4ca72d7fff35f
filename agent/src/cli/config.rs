//! `baton config check FILE`: validate a configuration file.

use std::path::Path;

use anyhow::Result;

use crate::config::{self, groups};

/// `baton config check FILE`.
pub fn check(file: &Path) -> Result<()> {
    let cfg = config::load(file)?;
    config::read_secret(&cfg.secret_file)?;
    // Resource groups: machine-dependent problems (agent not
    // installed) are warnings here, errors for `baton run`.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let problems = rt.block_on(crate::services::resource::check_host(&cfg.groups));
    let mut errors = 0;
    for p in &problems {
        if p.is_error_for_check() {
            errors += 1;
            eprintln!("error: {p}");
        } else {
            eprintln!("warning: {p} (an error for `baton run` on this machine)");
        }
    }
    if errors > 0 {
        anyhow::bail!("{}: {errors} resource group error(s)", file.display());
    }
    println!(
        "{}: ok (cluster {:?} id {}, node {:?} id {}, {} link(s), {} peer(s), silence bound {} ms, {} group(s))",
        file.display(),
        cfg.cluster_name,
        cfg.cluster_id,
        cfg.node_name,
        cfg.node_id,
        cfg.links.len(),
        cfg.peers.len(),
        cfg.interval_ms * cfg.misses,
        cfg.groups.len()
    );
    for g in &cfg.groups {
        println!("  {}", groups::describe(g));
    }
    Ok(())
}
