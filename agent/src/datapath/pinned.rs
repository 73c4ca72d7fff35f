//! Typed opening of the maps the datapath pins under `<bpffs_dir>`
//! (`paths.bpffs_dir`, docs/datapath.md): one function per map, returning
//! aya's typed handle, so that no other module opens a pin by its path.
//!
//! | map | handle | used by |
//! |---|---|---|
//! | `BATON_CONFIG` | [`Config`] | `baton status`, the self-check |
//! | `BATON_PEERS` | [`Peers`] | `baton status`, the sender, the address lease, the resync |
//! | `BATON_COUNTERS` | [`Counters`] | `baton status`, the metrics, the event-loss check |
//! | `BATON_FENCED` | [`Fenced`] | `baton status`, `baton fence` |
//! | `BATON_HANDOVER` | [`Handover`] | the handover, the guard |
//!
//! The loader (`datapath/mod.rs`) fills the maps from the loaded object
//! before it pins them; everything after that opens them here.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use baton_common::{DatapathConfig, PeerLink, MAP_CONFIG, MAP_COUNTERS, MAP_FENCED, MAP_HANDOVER, MAP_PEERS};

/// The datapath's configuration (one element, index 0).
pub type Config = Array<MapData, DatapathConfig>;
/// The liveness of every peer on every link (`slot_base(peer) + link`).
pub type Peers = Array<MapData, PeerLink>;
/// The per-CPU counters (`baton_common::Counter as u32`).
pub type Counters = PerCpuArray<MapData, u64>;
/// Fenced node ids (value 1): their datagrams are dropped.
pub type Fenced = HashMap<MapData, u32, u32>;
/// Handover entries by IPv4 address (network byte order as a native u32).
pub type Handover = HashMap<MapData, u32, baton_common::Handover>;

/// Why a pinned map could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("cannot open the pinned map {path}: {source} (is the agent running with this configuration?)")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("the pinned map {path} is not the map this agent expects: {source}")]
    Type {
        path: PathBuf,
        #[source]
        source: MapError,
    },
}

impl PinnedError {
    /// The pin's path.
    pub fn path(&self) -> &Path {
        match self {
            PinnedError::Open { path, .. } | PinnedError::Type { path, .. } => path,
        }
    }
}

fn open<T>(pin_dir: &Path, name: &str, wrap: fn(MapData) -> Map, typed: impl FnOnce(Map) -> Result<T, MapError>) -> Result<T, PinnedError> {
    let path = pin_dir.join(name);
    let md = MapData::from_pin(&path).map_err(|source| PinnedError::Open { path: path.clone(), source })?;
    typed(wrap(md)).map_err(|source| PinnedError::Type { path, source })
}

/// `BATON_CONFIG` under `pin_dir`.
pub fn config(pin_dir: &Path) -> Result<Config, PinnedError> {
    open(pin_dir, MAP_CONFIG, Map::Array, Array::try_from)
}

/// `BATON_PEERS` under `pin_dir`.
pub fn peers(pin_dir: &Path) -> Result<Peers, PinnedError> {
    open(pin_dir, MAP_PEERS, Map::Array, Array::try_from)
}

/// `BATON_COUNTERS` under `pin_dir`.
pub fn counters(pin_dir: &Path) -> Result<Counters, PinnedError> {
    open(pin_dir, MAP_COUNTERS, Map::PerCpuArray, PerCpuArray::try_from)
}

/// `BATON_FENCED` under `pin_dir`.
pub fn fenced(pin_dir: &Path) -> Result<Fenced, PinnedError> {
    open(pin_dir, MAP_FENCED, Map::HashMap, HashMap::try_from)
}

/// `BATON_HANDOVER` under `pin_dir`.
pub fn handover(pin_dir: &Path) -> Result<Handover, PinnedError> {
    open(pin_dir, MAP_HANDOVER, Map::HashMap, HashMap::try_from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pin_is_an_open_error_naming_its_path() {
        let d = crate::test_util::fresh_dir("pinned");
        let Err(e) = peers(&d) else { panic!("a map opened in an empty directory") };
        assert!(matches!(e, PinnedError::Open { .. }), "{e}");
        assert_eq!(e.path(), d.join(MAP_PEERS));
        assert!(e.to_string().contains(&d.join(MAP_PEERS).display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
