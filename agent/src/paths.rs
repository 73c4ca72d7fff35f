//! Every runtime path baton uses, in one place.
//!
//! | what | default | config key |
//! |---|---|---|
//! | pinned maps | `/sys/fs/bpf/baton/<cluster>/` | `paths.bpffs_dir` |
//! | state (incarnation, events.jsonl) | `/var/lib/baton/<cluster>/` | `paths.state_dir` |
//! | control socket | `/run/baton/<cluster>.sock` | `paths.run_dir` |
//!
//! The state files' names (and their types) are defined once, in the crate
//! `baton-state` (`state/`), shared with `baton status`, the tests and xtask.

use std::path::{Path, PathBuf};

pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
pub const DEFAULT_BPFFS_BASE: &str = "/sys/fs/bpf/baton";
pub const DEFAULT_STATE_BASE: &str = "/var/lib/baton";
pub const DEFAULT_RUN_DIR: &str = "/run/baton";
pub const DEFAULT_CONFIG: &str = "/etc/baton/baton.toml";

/// Resolved runtime paths of one agent instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimePaths {
    pub bpffs_dir: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub cluster: String,
}

impl RuntimePaths {
    pub fn new(
        cluster: &str,
        bpffs_dir: Option<&Path>,
        state_dir: Option<&Path>,
        run_dir: Option<&Path>,
    ) -> Self {
        RuntimePaths {
            bpffs_dir: bpffs_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| Path::new(DEFAULT_BPFFS_BASE).join(cluster)),
            state_dir: state_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| Path::new(DEFAULT_STATE_BASE).join(cluster)),
            run_dir: run_dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR)),
            cluster: cluster.to_string(),
        }
    }

    /// The pinned map called `name` (one of `baton_common::MAP_*`).
    pub fn map(&self, name: &str) -> PathBuf {
        self.bpffs_dir.join(name)
    }

    /// Last incarnation used by this node (kept strictly increasing).
    pub fn incarnation_file(&self) -> PathBuf {
        self.state_dir.join(baton_state::INCARNATION_FILE)
    }

    /// One JSON object per line for every peer event the agent saw.
    pub fn events_log(&self) -> PathBuf {
        self.state_dir.join(baton_state::EVENTS_FILE)
    }

    /// The agent's own status snapshot (pid, incarnation, start time).
    pub fn agent_status(&self) -> PathBuf {
        self.state_dir.join(baton_state::AGENT_FILE)
    }

    /// The membership snapshot the agent keeps for `baton status`.
    pub fn cluster_snapshot(&self) -> PathBuf {
        self.state_dir.join(baton_state::CLUSTER_FILE)
    }

    /// The resource groups as the services core here last saw them.
    pub fn services_snapshot(&self) -> PathBuf {
        self.state_dir.join(baton_state::SERVICES_FILE)
    }

    /// Unix socket of the subsystem API (docs/subsystem-api.md).
    pub fn subsys_socket(&self) -> PathBuf {
        self.run_dir.join(format!("{}-subsys.sock", self.cluster))
    }

    /// Unix socket for local commands (`baton distress`).
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.join(format!("{}.sock", self.cluster))
    }
}
