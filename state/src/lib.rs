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
//! The crate depends on serde and baton-core alone, so that xtask and the
//! test harness, which cannot depend on the agent crate (its build script
//! compiles the eBPF program), share the types with it. The enums in the
//! files are the core's own (`NodeState`, `Kind`, `ServiceState`, `Flags`,
//! `HaltReason`, `OfflineCause`, re-exported here), written with the names
//! the files have always used ([`StateName`], [`halt_text`],
//! [`offline_text`]; see "The core's enums in the files" below). A field
//! added here is added to docs/status-json.md too (`tests/tests/status.rs`
//! checks both ways).

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
// The core's enums in the files
//
// The files hold the core's own types (re-exported above and below), in
// the names they have always had. Those differ from the core's serde names,
// which are the control channel's wire format between agents and stay as
// they are (`"Joined"` on the wire, `"joined"` in `cluster.json`): the
// files' names are given here, once, and the fields that hold such an enum
// say `#[serde(with = ...)]`.

/// The name of an enum's value in the state files (and on the subsystem
/// socket, in `baton status`, the metrics' labels and the logs): the core's
/// enums, and the files' own `Direction` and `Mode` (whose serde names are
/// these too: a test holds them equal).
pub trait StateName: Copy + Sized + 'static {
    /// Every name, in the enum's order (what an error lists as expected).
    const NAMES: &'static [&'static str];
    /// Every value, in the enum's order.
    const VALUES: &'static [Self];
    fn as_str(self) -> &'static str;
    /// The value named `name` (the inverse of [`StateName::as_str`]).
    fn from_name(name: &str) -> Option<Self> {
        Self::VALUES.iter().copied().find(|v| v.as_str() == name)
    }
}

impl StateName for NodeState {
    const NAMES: &'static [&'static str] = &["inactive", "joining", "joined", "leaving", "forced-leaving"];
    const VALUES: &'static [Self] = &[NodeState::Inactive, NodeState::Joining, NodeState::Joined, NodeState::Leaving, NodeState::ForcedLeaving];
    fn as_str(self) -> &'static str {
        match self {
            NodeState::Inactive => "inactive",
            NodeState::Joining => "joining",
            NodeState::Joined => "joined",
            NodeState::Leaving => "leaving",
            NodeState::ForcedLeaving => "forced-leaving",
        }
    }
}

impl StateName for TransitionKind {
    const NAMES: &'static [&'static str] = &["join", "leave", "forced-leave"];
    const VALUES: &'static [Self] = &[TransitionKind::Join, TransitionKind::Leave, TransitionKind::ForcedLeave];
    fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Join => "join",
            TransitionKind::Leave => "leave",
            TransitionKind::ForcedLeave => "forced-leave",
        }
    }
}

/// The same names as the core's serde derive (`services.json` writes a
/// `ServiceState` with that derive: a test holds the two equal).
impl StateName for ServiceState {
    const NAMES: &'static [&'static str] = &["Starting", "Registered", "Stopping", "Deregistered", "Recovering"];
    const VALUES: &'static [Self] = &[ServiceState::Starting, ServiceState::Registered, ServiceState::Stopping, ServiceState::Deregistered, ServiceState::Recovering];
    fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "Starting",
            ServiceState::Registered => "Registered",
            ServiceState::Stopping => "Stopping",
            ServiceState::Deregistered => "Deregistered",
            ServiceState::Recovering => "Recovering",
        }
    }
}

/// `#[serde(with = "named")]`: a [`StateName`] enum as its name.
mod named {
    use super::StateName;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: StateName, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.as_str())
    }

    pub fn deserialize<'de, T: StateName, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let name = String::deserialize(d)?;
        T::from_name(&name).ok_or_else(|| serde::de::Error::unknown_variant(&name, T::NAMES))
    }
}

/// `membership.halted`: the text of a halt reason, as the agent has always
/// written it (`ForcedOut`, `Superseded`, `ClusterLost`, `LostQuorum`,
/// `LocalFailure { reason: 3 }`: the reason's `Debug` form).
pub fn halt_text(h: HaltReason) -> String {
    match h {
        HaltReason::ForcedOut => "ForcedOut".into(),
        HaltReason::Superseded => "Superseded".into(),
        HaltReason::ClusterLost => "ClusterLost".into(),
        HaltReason::LostQuorum => "LostQuorum".into(),
        HaltReason::LocalFailure { reason } => format!("LocalFailure {{ reason: {reason} }}"),
    }
}

/// The halt reason of a [`halt_text`].
pub fn parse_halt(text: &str) -> Option<HaltReason> {
    Some(match text {
        "ForcedOut" => HaltReason::ForcedOut,
        "Superseded" => HaltReason::Superseded,
        "ClusterLost" => HaltReason::ClusterLost,
        "LostQuorum" => HaltReason::LostQuorum,
        _ => {
            let reason = text.strip_prefix("LocalFailure { reason: ")?.strip_suffix(" }")?.parse().ok()?;
            HaltReason::LocalFailure { reason }
        }
    })
}

/// `#[serde(default, with = "halted")]`: an optional [`HaltReason`] as its [`halt_text`].
mod halted {
    use super::{halt_text, parse_halt, HaltReason};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<HaltReason>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(h) => s.serialize_some(&halt_text(*h)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HaltReason>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
        parse_halt(&text).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown halt reason `{text}`, expected `ForcedOut`, `Superseded`, `ClusterLost`, `LostQuorum` or `LocalFailure {{ reason: N }}`"
            ))
        })
    }
}

/// `services[].offline_cause`: `operator`, or `failed on node N`.
pub fn offline_text(c: &OfflineCause) -> String {
    match c {
        OfflineCause::Operator => "operator".into(),
        OfflineCause::Failed { node } => format!("failed on node {node}"),
    }
}

/// The off-line cause of an [`offline_text`].
pub fn parse_offline(text: &str) -> Option<OfflineCause> {
    if text == "operator" {
        return Some(OfflineCause::Operator);
    }
    let node = text.strip_prefix("failed on node ")?.parse().ok()?;
    Some(OfflineCause::Failed { node })
}

/// `#[serde(default, with = "offline_cause")]`: an optional [`OfflineCause`] as its [`offline_text`].
mod offline_cause {
    use super::{offline_text, parse_offline, OfflineCause};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<OfflineCause>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(c) => s.serialize_some(&offline_text(c)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OfflineCause>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
        parse_offline(&text)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown off-line cause `{text}`, expected `operator` or `failed on node N`")))
    }
}

// ---------------------------------------------------------------------------
// cluster.json

/// A node's membership state (S1.1): the core's `NodeState`, written
/// `inactive`, `joining`, `joined`, `leaving`, `forced-leaving` ([`StateName`]).
pub use baton_core::membership::NodeState;
/// The kind of a membership transition: the core's `Kind`, written `join`,
/// `leave`, `forced-leave` ([`StateName`]).
pub use baton_core::membership::Kind as TransitionKind;
/// Why clustering halted on a node: the core's `HaltReason`, written as
/// [`halt_text`] does.
pub use baton_core::membership::HaltReason;

/// The order in which a transition visits the levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    BottomUp,
    TopDown,
}

impl StateName for Direction {
    const NAMES: &'static [&'static str] = &["bottom-up", "top-down"];
    const VALUES: &'static [Self] = &[Direction::BottomUp, Direction::TopDown];
    fn as_str(self) -> &'static str {
        match self {
            Direction::BottomUp => "bottom-up",
            Direction::TopDown => "top-down",
        }
    }
}

impl From<TransitionKind> for Direction {
    /// Join and forced leave go bottom-up, a graceful leave top-down (S1.3).
    fn from(k: TransitionKind) -> Direction {
        if k.bottom_up() {
            Direction::BottomUp
        } else {
            Direction::TopDown
        }
    }
}

/// `cluster.json` (docs/status-json.md, "Membership").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    pub me: u32,
    #[serde(with = "named")]
    pub my_state: NodeState,
    pub master: Option<u32>,
    pub quorate: Option<bool>,
    pub view: Option<ViewLine>,
    pub nodes: Vec<NodeLine>,
    pub transitions: Vec<TransitionLine>,
    pub local_in_flight: Vec<LocalInFlight>,
    pub subsystems: Vec<SubsystemLine>,
    #[serde(default, with = "halted")]
    pub halted: Option<HaltReason>,
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
    #[serde(with = "named")]
    pub state: NodeState,
    pub incarnation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionLine {
    pub node: u32,
    pub name: String,
    #[serde(with = "named")]
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
    #[serde(with = "named")]
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

/// A group's summary state (S1.15): the core's `ServiceState`, written
/// `Starting`, `Registered`, `Stopping`, `Deregistered`, `Recovering` (its
/// serde names, [`StateName`] too).
pub use baton_core::services::ServiceState;
/// S1.15's flags: the core's `Flags`.
pub use baton_core::services::Flags as ServiceFlags;
/// Why a group is off-line (S4.6): the core's `OfflineCause`, written
/// `operator` or `failed on node N` ([`offline_text`]).
pub use baton_core::services::OfflineCause;

/// S4.6: the group's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Normal,
    Offline,
}

impl StateName for Mode {
    const NAMES: &'static [&'static str] = &["normal", "offline"];
    const VALUES: &'static [Self] = &[Mode::Normal, Mode::Offline];
    fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Offline => "offline",
        }
    }
}

impl Mode {
    /// A group with an off-line cause is in off-line mode (S4.6).
    pub fn of(offline: Option<&OfflineCause>) -> Mode {
        if offline.is_some() {
            Mode::Offline
        } else {
            Mode::Normal
        }
    }
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
    /// Written `operator`, or `failed on node N`.
    #[serde(default, with = "offline_cause")]
    pub offline_cause: Option<OfflineCause>,
    pub offline_on: BTreeSet<u32>,
    pub since_ns: u64,
    /// Only in `baton status`: `since_ns` in seconds before the status was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_s_ago: Option<f64>,
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
            "transitions": [], "local_in_flight": [], "subsystems": [], "halted": "LostQuorum", "fencing": null,
            "stats": {"messages_sent": 0, "gmp_messages_sent": 0, "changes_committed": 0},
        }));
        assert_eq!(c.halted, Some(HaltReason::LostQuorum));
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
        assert_eq!(s.0[0].offline_cause, Some(OfflineCause::Failed { node: 3 }));
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

    /// Files written by the agent before the state types used the core's
    /// enums (copied from kernel test runs: `services` offline_keeps_...,
    /// `membership` an_external_subsystem_...) parse, with the core's
    /// values, and write back byte for byte.
    #[test]
    fn state_files_written_by_the_previous_agent_still_parse_and_write_back_unchanged() {
        fn same<T: StateFile>(text: &str) -> T {
            let t: T = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(serde_json::to_string(&t).unwrap(), text.trim_end(), "the JSON changed in a round trip");
            t
        }
        let c: ClusterSnapshot = same(include_str!("../tests/fixtures/cluster-transition.json"));
        assert_eq!((c.my_state, c.halted), (NodeState::Joined, None));
        assert_eq!(c.node(3).map(|n| n.state), Some(NodeState::Joining));
        let t = &c.transitions[0];
        assert_eq!((t.kind, t.direction, t.level), (TransitionKind::Join, Direction::BottomUp, 25));
        assert_eq!(c.local_in_flight[0].kind, TransitionKind::Join);
        let c: ClusterSnapshot = same(include_str!("../tests/fixtures/cluster-halted.json"));
        assert_eq!(c.halted, Some(HaltReason::LocalFailure { reason: 3 }));
        let c: ClusterSnapshot = same(include_str!("../tests/fixtures/cluster-offline.json"));
        assert_eq!(c.nodes_in(NodeState::Joined), BTreeSet::from([1, 2, 3]));
        let s: Services = same(include_str!("../tests/fixtures/services-offline.json"));
        let web = &s.0[0];
        assert_eq!((web.state, web.mode, web.offline_cause.clone()), (ServiceState::Registered, Mode::Offline, Some(OfflineCause::Operator)));
        assert_eq!(web.nodes.get(&1), Some(&ServiceState::Registered));
        assert_eq!(web.flags, ServiceFlags::default());
        let a: AgentStatus = same(include_str!("../tests/fixtures/agent-offline.json"));
        assert_eq!(a.takeover.map(|t| t.state), Some("normal".to_string()));
    }

    /// Every value of the core's enums has a name the files read back, and
    /// `services.json` (which writes `ServiceState` with the core's derive)
    /// uses the same names as [`StateName`].
    #[test]
    fn every_value_of_the_cores_enums_reads_back_from_its_name() {
        use NodeState as N;
        for s in [N::Inactive, N::Joining, N::Joined, N::Leaving, N::ForcedLeaving] {
            assert_eq!(NodeState::from_name(s.as_str()), Some(s));
            assert!(NodeState::NAMES.contains(&s.as_str()));
        }
        use TransitionKind as K;
        for k in [K::Join, K::Leave, K::ForcedLeave] {
            assert_eq!(TransitionKind::from_name(k.as_str()), Some(k));
            assert!(TransitionKind::NAMES.contains(&k.as_str()));
        }
        use ServiceState as S;
        for s in [S::Starting, S::Registered, S::Stopping, S::Deregistered, S::Recovering] {
            assert_eq!(ServiceState::from_name(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
            assert!(ServiceState::NAMES.contains(&s.as_str()));
        }
        // `NAMES` lists what `VALUES` are named, in the same order.
        fn names_of<T: StateName>() -> Vec<&'static str> {
            T::VALUES.iter().map(|v| v.as_str()).collect()
        }
        assert_eq!(names_of::<NodeState>(), NodeState::NAMES);
        assert_eq!(names_of::<TransitionKind>(), TransitionKind::NAMES);
        assert_eq!(names_of::<ServiceState>(), ServiceState::NAMES);
        assert_eq!(names_of::<Direction>(), Direction::NAMES);
        assert_eq!(names_of::<Mode>(), Mode::NAMES);
        use HaltReason as H;
        for h in [H::ForcedOut, H::Superseded, H::ClusterLost, H::LostQuorum, H::LocalFailure { reason: 3 }, H::LocalFailure { reason: 4_000_000_000 }] {
            // The previous agent wrote `format!("{h:?}")`.
            assert_eq!(halt_text(h), format!("{h:?}"));
            assert_eq!(parse_halt(&halt_text(h)), Some(h));
        }
        for c in [OfflineCause::Operator, OfflineCause::Failed { node: 7 }] {
            assert_eq!(parse_offline(&offline_text(&c)), Some(c));
        }
        for d in [Direction::BottomUp, Direction::TopDown] {
            assert_eq!(Direction::from_name(d.as_str()), Some(d));
            assert_eq!(serde_json::to_value(d).unwrap(), json!(d.as_str()));
        }
        for m in [Mode::Normal, Mode::Offline] {
            assert_eq!(Mode::from_name(m.as_str()), Some(m));
            assert_eq!(serde_json::to_value(m).unwrap(), json!(m.as_str()));
        }
        assert_eq!((Mode::of(None), Mode::of(Some(&OfflineCause::Operator))), (Mode::Normal, Mode::Offline));
        assert_eq!((Direction::from(K::Leave), Direction::from(K::ForcedLeave)), (Direction::TopDown, Direction::BottomUp));
        // The control channel keeps the core's own serde names.
        assert_eq!(serde_json::to_value(N::ForcedLeaving).unwrap(), json!("ForcedLeaving"));
        assert_eq!(serde_json::to_value(K::ForcedLeave).unwrap(), json!("ForcedLeave"));
    }

    #[test]
    fn a_bad_name_in_a_state_file_is_refused_with_what_was_expected() {
        let line = |state: &str| json!({"id": 1, "name": "node1", "state": state, "incarnation": 1});
        let e = serde_json::from_value::<NodeLine>(line("Joined")).unwrap_err().to_string();
        assert_eq!(e, "unknown variant `Joined`, expected one of `inactive`, `joining`, `joined`, `leaving`, `forced-leaving`");
        let mut v = json!({
            "me": 3, "my_state": "inactive", "master": null, "quorate": null, "view": null, "nodes": [],
            "transitions": [], "local_in_flight": [], "subsystems": [], "halted": "NoQuorum", "fencing": null,
            "stats": {"messages_sent": 0, "gmp_messages_sent": 0, "changes_committed": 0},
        });
        let e = serde_json::from_value::<ClusterSnapshot>(v.clone()).unwrap_err().to_string();
        assert!(e.starts_with("unknown halt reason `NoQuorum`"), "{e}");
        // A file without the key (none written so) reads as not halted.
        v.as_object_mut().unwrap().remove("halted");
        assert_eq!(serde_json::from_value::<ClusterSnapshot>(v).unwrap().halted, None);
        for bad in ["failed on node x", "Operator", "failed"] {
            assert_eq!(parse_offline(bad), None, "{bad}");
        }
        for bad in ["NoQuorum", "LocalFailure { reason: }", "LocalFailure { reason: 3 } "] {
            assert_eq!(parse_halt(bad), None, "{bad}");
        }
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
