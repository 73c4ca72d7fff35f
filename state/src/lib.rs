//! The agent's state files, in one place: their names and their serde
//! types, shared by their writer (the agent), `baton status` (which embeds
//! them in its document, docs/status-json.md), the tests and xtask.
//!
//! | file (in `<state_dir>`) | type | written by |
//! |---|---|---|
//! | [`AGENT_FILE`] `agent.json` | [`AgentStatus`] | `daemon/run.rs`, every second |
//! | [`CLUSTER_FILE`] `cluster.json` | [`ClusterSnapshot`] | `daemon/cluster.rs`, on every membership change |
//! | [`SERVICES_FILE`] `services.json` | `Vec<`[`ServiceLine`]`>` | `services/svc.rs`, on every group change |
//! | [`EVENTS_FILE`] `events.jsonl` | one JSON object per line (docs/events.md) | the agent's event log |
//! | [`INCARNATION_FILE`] `incarnation` | a decimal number | `statefile.rs` |
//!
//! The crate depends on serde alone, so that xtask and the test harness,
//! which cannot depend on the agent crate (its build script compiles the
//! eBPF program), share the types with it. A field added here is added to
//! docs/status-json.md too (`tests/tests/status.rs` checks both ways).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The agent's own status (pid, incarnation, sender counters, ...).
pub const AGENT_FILE: &str = "agent.json";
/// The membership snapshot.
pub const CLUSTER_FILE: &str = "cluster.json";
/// The resource groups as the services core on the node sees them.
pub const SERVICES_FILE: &str = "services.json";
/// The event log, one JSON object per line.
pub const EVENTS_FILE: &str = "events.jsonl";
/// The last incarnation the node used.
pub const INCARNATION_FILE: &str = "incarnation";

/// Why a state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid state file: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

impl ReadError {
    /// The file is not there (the agent did not write it, or removed it).
    pub fn is_missing(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads and parses one state file.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|source| ReadError::Parse { path: path.to_path_buf(), source })
}

/// One state file, typed: its name and how to read it from a state
/// directory.
pub trait StateFile: DeserializeOwned + Serialize {
    const FILE: &'static str;

    /// `<state_dir>/<FILE>`.
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(Self::FILE)
    }

    /// The file of `state_dir`, parsed.
    fn read_from(state_dir: &Path) -> Result<Self, ReadError> {
        read(&Self::path(state_dir))
    }

    /// The file of `state_dir`, or `None` when it is missing or does not
    /// parse (a reader polling an agent that may not have written it yet).
    fn load(state_dir: &Path) -> Option<Self> {
        Self::read_from(state_dir).ok()
    }
}

/// `services.json`: one line per configured group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Services(pub Vec<ServiceLine>);

impl StateFile for AgentStatus {
    const FILE: &'static str = AGENT_FILE;
}
impl StateFile for ClusterSnapshot {
    const FILE: &'static str = CLUSTER_FILE;
}
impl StateFile for Services {
    const FILE: &'static str = SERVICES_FILE;
}

// ---------------------------------------------------------------------------
// cluster.json

/// A node's membership state (S1.1), as written in the state files, on the
/// subsystem socket and in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    Inactive,
    Joining,
    Joined,
    Leaving,
    ForcedLeaving,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Inactive => "inactive",
            NodeState::Joining => "joining",
            NodeState::Joined => "joined",
            NodeState::Leaving => "leaving",
            NodeState::ForcedLeaving => "forced-leaving",
        }
    }
}

/// The kind of a membership transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransitionKind {
    Join,
    Leave,
    ForcedLeave,
}

impl TransitionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Join => "join",
            TransitionKind::Leave => "leave",
            TransitionKind::ForcedLeave => "forced-leave",
        }
    }
}

/// The order in which a transition visits the levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    BottomUp,
    TopDown,
}

/// `cluster.json` (docs/status-json.md, "Membership").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    pub me: u32,
    pub my_state: NodeState,
    pub master: Option<u32>,
    pub quorate: Option<bool>,
    pub view: Option<ViewLine>,
    pub nodes: Vec<NodeLine>,
    pub transitions: Vec<TransitionLine>,
    pub local_in_flight: Vec<LocalInFlight>,
    pub subsystems: Vec<SubsystemLine>,
    pub halted: Option<String>,
    pub fencing: Option<FencingLine>,
    pub stats: MembershipStats,
}

impl ClusterSnapshot {
    /// Node `id` of the view, if it is in it.
    pub fn node(&self, id: u32) -> Option<&NodeLine> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The ids of the nodes in state `state`.
    pub fn nodes_in(&self, state: NodeState) -> BTreeSet<u32> {
        self.nodes.iter().filter(|n| n.state == state).map(|n| n.id).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewLine {
    pub term: u64,
    pub master: u32,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLine {
    pub id: u32,
    pub name: String,
    pub state: NodeState,
    pub incarnation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionLine {
    pub node: u32,
    pub name: String,
    pub kind: TransitionKind,
    pub level: u32,
    pub barrier: u32,
    pub direction: Direction,
    pub levels: Vec<u32>,
    pub participants: BTreeSet<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalInFlight {
    pub subsystem: u32,
    pub name: Option<String>,
    pub node: u32,
    pub kind: TransitionKind,
    pub level: u32,
    pub barrier: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemLine {
    pub id: u32,
    pub name: Option<String>,
    pub builtin: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencingLine {
    pub disks: Vec<DiskLine>,
    pub registered: bool,
    pub waiting: Vec<FenceWaiting>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLine {
    pub name: String,
    pub device: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceWaiting {
    pub node: u32,
    pub name: String,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipStats {
    pub messages_sent: u64,
    pub gmp_messages_sent: u64,
    pub changes_committed: u64,
}

// ---------------------------------------------------------------------------
// services.json

/// A group's summary state (S1.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ServiceState {
    Starting,
    Registered,
    Stopping,
    Deregistered,
    Recovering,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "Starting",
            ServiceState::Registered => "Registered",
            ServiceState::Stopping => "Stopping",
            ServiceState::Deregistered => "Deregistered",
            ServiceState::Recovering => "Recovering",
        }
    }
}

/// S4.6: the group's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Normal,
    Offline,
}

/// One line of `services.json` (docs/status-json.md, "Services"; `baton
/// status --json` adds `since_s_ago`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceLine {
    pub name: String,
    pub state: ServiceState,
    pub node: Option<u32>,
    pub nodes: BTreeMap<u32, ServiceState>,
    pub flags: ServiceFlags,
    pub failed: bool,
    pub complete: bool,
    pub mode: Mode,
    /// `operator`, or `failed on node N`.
    pub offline_cause: Option<String>,
    pub offline_on: BTreeSet<u32>,
    pub since_ns: u64,
    /// Only in `baton status`: `since_ns` in seconds before the status was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_s_ago: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFlags {
    pub transfer_intent: bool,
    pub awaiting_maturity: bool,
    pub has_notify: bool,
}

// ---------------------------------------------------------------------------
// agent.json

/// `agent.json` (docs/status-json.md, "The agent"). The fields after
/// `sender` are written from the first tick of the event loop on (a second
/// after the start).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub incarnation: u64,
    pub started_monotonic_ns: u64,
    /// The configuration file until the first tick, then the configuration
    /// in use and its reloads.
    pub config: ConfigField,
    pub xdp: Vec<XdpAttachment>,
    pub watchdog_cpu: u32,
    pub guard: GuardLine,
    pub start_clean: Released,
    pub sender: SenderCounters,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover: Option<TakeoverStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelCounters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_lost: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence: Option<SilenceCounts>,
}

/// `agent.config`: the file name (before the first tick), or the
/// configuration in use (docs/reload.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigField {
    File(String),
    InUse(ConfigStatus),
}

impl ConfigField {
    /// The configuration in use, once the agent wrote it.
    pub fn in_use(&self) -> Option<&ConfigStatus> {
        match self {
            ConfigField::InUse(c) => Some(c),
            ConfigField::File(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub file: String,
    pub groups: Vec<String>,
    pub groups_hash: String,
    /// By node id, written as text (an untagged enum cannot read numeric
    /// object keys back).
    pub peers: BTreeMap<String, PeerHash>,
    pub mismatch: Vec<u32>,
    pub last_reload: Option<LastReload>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerHash {
    pub name: String,
    pub groups_hash: String,
    pub age_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastReload {
    pub ok: bool,
    pub message: String,
    pub s_ago: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpAttachment {
    pub interface: String,
    pub mode: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardLine {
    pub pid: u32,
}

/// What a release found and did (the guard's event; `agent.start_clean`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Released {
    /// Why: `start` (start clean) or `agent_gone`.
    pub why: String,
    /// Groups released as held.
    pub groups: Vec<String>,
    /// `address@interface` removed.
    pub addresses_removed: Vec<String>,
    /// Processes signalled (pid and command line).
    pub processes_stopped: Vec<String>,
    /// Applications whose stop action ran.
    pub applications_stopped: Vec<String>,
    /// Peers (times links) the distress went to.
    pub distress_sent: u32,
    pub errors: Vec<String>,
    /// From the start of the release to the last address removed.
    pub addresses_ms: f64,
    pub total_ms: f64,
}

impl Released {
    pub fn is_empty(&self) -> bool {
        self.addresses_removed.is_empty() && self.processes_stopped.is_empty() && self.applications_stopped.is_empty()
    }
}

/// The heartbeat sender's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderCounters {
    pub sent: u64,
    pub send_errors: u64,
    pub late_ticks: u64,
    pub max_gap_us: u64,
    pub max_late_us: u64,
    pub startup_max_gap_us: u64,
    pub startup_max_late_us: u64,
}

/// The control channel's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelCounters {
    pub sessions: u64,
    pub connections: u64,
    pub handshake_failures: u64,
    pub hello_rejects: u64,
    pub bad_frames: u64,
    pub frames_dropped: u64,
    pub preauth_rejected: u64,
    pub preauth_evicted: u64,
}

/// Silence confirmation counters (`agent.silence`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceCounts {
    pub confirmed_by_peer: u64,
    pub confirmed_by_deadline: u64,
    pub averted: u64,
    /// The longest wait of a confirmed silence, µs.
    pub max_wait_us: u64,
    /// Deadlines that passed while another member still heard the suspect:
    /// the silence stayed held (a one-way fault between this node and the
    /// suspect), nothing moved.
    #[serde(default)]
    pub held_heard_elsewhere: u64,
}

/// The negotiated takeover (`agent.takeover`, docs/takeover.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TakeoverStatus {
    /// `normal`, `takeover requested`, `draining for takeover`, `taken
    /// over`, `giveback requested`, `takeover in progress`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countdown_left_ms: Option<u64>,
    pub partner_of_this_node: Option<String>,
    pub taken_over: Vec<TakenOver>,
    pub failing_checks: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenOver {
    pub node: String,
    pub fault: String,
    pub forced: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A document as the agent wrote it before the types (json! sorted
    /// keys) parses, and writes back to the same JSON value.
    fn round_trip<T: StateFile + PartialEq + std::fmt::Debug>(v: serde_json::Value) -> T {
        let t: T = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&t).unwrap(), v, "the JSON changed in a round trip");
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<T>(&text).unwrap(), t);
        t
    }

    #[test]
    fn cluster_json_round_trips_unchanged() {
        let v = json!({
            "me": 1, "my_state": "joined", "master": 1, "quorate": true,
            "view": {"term": 3, "master": 1, "version": 7},
            "nodes": [{"id": 1, "name": "node1", "state": "joined", "incarnation": 17},
                      {"id": 2, "name": "node2", "state": "forced-leaving", "incarnation": 9}],
            "transitions": [{"node": 2, "name": "node2", "kind": "forced-leave", "level": 1, "barrier": 2,
                             "direction": "top-down", "levels": [1, 2, 3], "participants": [1, 3]}],
            "local_in_flight": [{"subsystem": 64, "name": null, "node": 2, "kind": "forced-leave", "level": 64, "barrier": 1}],
            "subsystems": [{"id": 1, "name": "fencing", "builtin": true}, {"id": 64, "name": "db", "builtin": false}],
            "halted": null,
            "fencing": {"disks": [{"name": "d1", "device": "/dev/sdb"}], "registered": true,
                        "waiting": [{"node": 2, "name": "node2", "reason": "no quorum"}]},
            "stats": {"messages_sent": 5, "gmp_messages_sent": 2, "changes_committed": 4},
        });
        let c: ClusterSnapshot = round_trip(v);
        assert_eq!(c.node(2).map(|n| n.state), Some(NodeState::ForcedLeaving));
        assert_eq!(c.nodes_in(NodeState::Joined), BTreeSet::from([1]));
        assert_eq!(c.transitions[0].kind, TransitionKind::ForcedLeave);
        // Before the first view: nulls.
        let c: ClusterSnapshot = round_trip(json!({
            "me": 3, "my_state": "inactive", "master": null, "quorate": null, "view": null, "nodes": [],
            "transitions": [], "local_in_flight": [], "subsystems": [], "halted": "NoQuorum", "fencing": null,
            "stats": {"messages_sent": 0, "gmp_messages_sent": 0, "changes_committed": 0},
        }));
        assert_eq!(c.halted.as_deref(), Some("NoQuorum"));
    }

    #[test]
    fn services_json_round_trips_unchanged_and_node_ids_are_object_keys() {
        let v = json!([{
            "name": "web", "state": "Registered", "node": 2, "nodes": {"2": "Registered", "10": "Deregistered"},
            "flags": {"transfer_intent": false, "awaiting_maturity": false, "has_notify": true},
            "failed": false, "complete": true, "mode": "offline", "offline_cause": "failed on node 3",
            "offline_on": [2], "since_ns": 123456789,
        }]);
        let s: Services = round_trip(v);
        assert_eq!(s.0[0].nodes.get(&10), Some(&ServiceState::Deregistered));
        assert_eq!(s.0[0].mode, Mode::Offline);
        assert!(s.0[0].since_s_ago.is_none());
    }

    #[test]
    fn agent_json_round_trips_before_and_after_the_first_tick() {
        let start = json!({
            "pid": 4242, "incarnation": 99, "started_monotonic_ns": 5, "config": "/etc/baton/baton.toml",
            "xdp": [{"interface": "eth0", "mode": "generic"}], "watchdog_cpu": 1, "guard": {"pid": 4243},
            "start_clean": {"why": "start", "groups": [], "addresses_removed": ["10.0.0.1/24@eth0"], "processes_stopped": [],
                            "applications_stopped": [], "distress_sent": 0, "errors": [], "addresses_ms": 0.5, "total_ms": 1.5},
            "sender": {"sent": 1, "send_errors": 0, "late_ticks": 0, "max_gap_us": 0, "max_late_us": 0,
                       "startup_max_gap_us": 0, "startup_max_late_us": 0},
        });
        let a: AgentStatus = round_trip(start.clone());
        assert_eq!(a.config, ConfigField::File("/etc/baton/baton.toml".into()));
        assert!(a.takeover.is_none() && a.start_clean.addresses_removed.len() == 1);
        let mut later = start;
        later["config"] = json!({"file": "/etc/baton/baton.toml", "groups": ["web"], "groups_hash": "0123456789abcdef",
            "peers": {"2": {"name": "node2", "groups_hash": "0123456789abcdef", "age_s": 0.4}}, "mismatch": [],
            "last_reload": {"ok": true, "message": "applied", "s_ago": 1.0}});
        later["takeover"] = json!({"state": "taken over", "partner": "node2", "fault": "disk", "forced": false,
            "why": "taken over by node2 (fault: disk); no group runs here until giveback",
            "partner_of_this_node": "node2", "taken_over": [], "failing_checks": ["data"]});
        later["channel"] = json!({"sessions": 2, "connections": 3, "handshake_failures": 1, "hello_rejects": 0,
            "bad_frames": 0, "frames_dropped": 0, "preauth_rejected": 0, "preauth_evicted": 0});
        later["events_lost"] = json!(0);
        later["silence"] = json!({"confirmed_by_peer": 1, "confirmed_by_deadline": 0, "averted": 2, "max_wait_us": 300, "held_heard_elsewhere": 0});
        let a: AgentStatus = round_trip(later);
        assert_eq!(a.config.in_use().map(|c| c.peers["2"].name.as_str()), Some("node2"));
        assert_eq!(a.takeover.as_ref().map(|t| t.state.as_str()), Some("taken over"));
    }

    #[test]
    fn a_missing_file_and_a_bad_file_are_told_apart_and_name_the_file() {
        let d = std::env::temp_dir().join(format!("baton-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let e = ClusterSnapshot::read_from(&d).unwrap_err();
        assert!(e.is_missing(), "{e}");
        std::fs::write(d.join(CLUSTER_FILE), "{\"me\": 1}").unwrap();
        let e = ClusterSnapshot::read_from(&d).unwrap_err();
        assert!(!e.is_missing() && e.to_string().contains("cluster.json") && e.to_string().contains("my_state"), "{e}");
        assert!(ClusterSnapshot::load(&d).is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
