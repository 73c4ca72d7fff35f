//! `baton fence add|remove|list NODE` (the datapath's drop list) and
//! `baton fence confirm NODE` (a fencing done by hand, told to the agent).

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};

use super::request::operator_request;
use crate::control::protocol::Request;
use crate::config;

fn open(config: &Path) -> Result<(config::Config, HashMap<MapData, u32, u32>)> {
    let cfg = config::load(config)?;
    let m = crate::datapath::pinned::fenced(&cfg.paths.bpffs_dir)?;
    Ok((cfg, m))
}

/// `baton fence add NODE`: drop every datagram of NODE in this node's datapath.
pub fn add(config: &Path, node: u32) -> Result<()> {
    let (cfg, mut m) = open(config)?;
    if !cfg.peers.iter().any(|p| p.id == node) {
        anyhow::bail!("node {node} is not a peer in {}", config.display());
    }
    m.insert(node, 1, 0)?;
    println!("node {node} fenced: the datapath drops its datagrams");
    Ok(())
}

/// `baton fence remove NODE`.
pub fn remove(config: &Path, node: u32) -> Result<()> {
    let (_, mut m) = open(config)?;
    m.remove(&node).with_context(|| format!("node {node} is not fenced"))?;
    println!("node {node} unfenced");
    Ok(())
}

/// `baton fence list`.
pub fn list(config: &Path) -> Result<()> {
    let (_, m) = open(config)?;
    for k in m.keys() {
        println!("{}", k?);
    }
    Ok(())
}

/// `baton fence confirm NODE`: handled by the agent.
pub fn confirm(config: &Path, node: u32) -> Result<()> {
    operator_request(config, Request::FenceConfirm { node })
}
