//! Services: registration and launch of client services and resource groups
//! (S1.9–S1.15 of the 001 seed, S4 of the 004 seed).
//!
//! One [`Services`] runs on every node. It is sans-IO: feed it [`Input`]s with
//! `handle(now, input)`, pull [`Action`]s with `poll_action()`, and call it
//! again (with [`Input::Tick`]) at `next_deadline()`.
//!
//! ## How it works (see `docs/services.md` for the full argument)
//! * **One decider.** The membership master (given with every [`Input::View`])
//!   makes every decision cluster-wide. It keeps the authoritative
//!   [`Registry`] (versioned) and replicates it to every member.
//! * **Nodes report state, not deltas.** Every node sends the decider a
//!   [`Report`] of its local service phases whenever one changes (and when
//!   it adopts a registry version, which doubles as the acknowledgement).
//!   The decider reconciles the registry with the reports (level-triggered):
//!   a lost or duplicated message is repaired by the next report.
//! * **Directives.** The decider tells a node to start, stop or recover a
//!   service ([`Directive`]); each carries an [`OpId`] that only grows, so a
//!   duplicated or reordered directive is ignored by the node.
//! * **Epochs.** A new decider first sends [`Msg::Collect`] and waits for a
//!   report from every member (carrying its copy of the registry) before it
//!   decides anything. A node obeys only its current master, in the epoch the
//!   master announced, so a late directive of a dead decider is never run.
//! * **Safety.** A placement-One service is started on a node only when no
//!   member runs it, starts it, stops it or recovers it: the old owner must
//!   have reported it stopped, or have left the view (forced out nodes halt,
//!   S1.7; a gracefully leaving node leaves only once it is drained).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use crate::{Instant, NodeId};

// ---------------------------------------------------------------------------
// Specification (the choosing parameters, S1.10, S1.12, S4.2)
// ---------------------------------------------------------------------------

/// Where a service may be registered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Allowable {
    /// The wildcard: every node of the cluster.
    Any,
    /// These nodes, in this order: with [`Preference::Ordered`] this is the
    /// sequenced list of possible nodes of S4.2.
    Nodes(Vec<NodeId>),
}

impl Allowable {
    pub fn allows(&self, n: NodeId) -> bool {
        match self {
            Allowable::Any => true,
            Allowable::Nodes(v) => v.contains(&n),
        }
    }
}

/// How the allowable nodes are ranked (the preferred node always comes first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Preference {
    /// The allowable list, highest rank first (node id order for `Any`).
    Ordered,
    /// The least loaded node by the most recent load figure each node
    /// reported; ties go to the lowest node id.
    Unordered,
}

/// Placement policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Placement {
    /// Registered on exactly one node.
    One,
    /// Registered and started on every allowable node.
    Every,
}

/// S1.14: a service whose transfer cost is free moves back to a better
/// node (its preferred node, or a higher ordered one) when that node joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum TransferCost {
    Free,
    Costly,
}

/// When the cluster is mature for a service (its first registration waits
/// for it). Mature means: at least one allowable node is up, and either no
/// condition is set, or one of the set conditions holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Maturity {
    /// The preferred ("primary") node is up.
    pub primary_up: bool,
    /// At least this many allowable nodes are up (Table 2's maturity count).
    pub nodes_up: Option<u32>,
    /// This much time passed since the service began awaiting maturity
    /// (Table 2's maturity time), as measured by the deciding node.
    pub after_ms: Option<u64>,
}

impl Maturity {
    pub const NONE: Maturity = Maturity { primary_up: false, nodes_up: None, after_ms: None };
    pub fn applies(&self) -> bool {
        self.primary_up || self.nodes_up.is_some() || self.after_ms.is_some()
    }
}

/// A client service or resource group (its choosing parameters and what
/// action functions it has). Children ([`ServiceSpec::parent`]) have no
/// choosing factors of their own: only the root's are used (S1.12).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ServiceSpec {
    pub name: String,
    pub allowable: Allowable,
    pub disallowable: BTreeSet<NodeId>,
    pub preferred: Option<NodeId>,
    pub preference: Preference,
    pub auto_register: bool,
    pub placement: Placement,
    pub maturity: Maturity,
    /// The parent service (nested to any depth).
    pub parent: Option<String>,
    pub transfer_cost: TransferCost,
    pub has_notify: bool,
    pub has_recovery: bool,
    /// Hot standby (`standby = "hot"`): the application also runs, without
    /// the addresses, on the node a failover would choose next
    /// ([`Services::hot_standby_of`]); a start there finds it running.
    /// Only for a root with placement One.
    #[cfg_attr(feature = "serde", serde(default))]
    pub hot_standby: bool,
}

impl ServiceSpec {
    /// Defaults: allowable anywhere, ordered, auto-registered, one node, no
    /// maturity, no parent, costly transfer, no notify, no recovery.
    pub fn new(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.to_string(),
            allowable: Allowable::Any,
            disallowable: BTreeSet::new(),
            preferred: None,
            preference: Preference::Ordered,
            auto_register: true,
            placement: Placement::One,
            maturity: Maturity::NONE,
            parent: None,
            transfer_cost: TransferCost::Costly,
            has_notify: false,
            has_recovery: false,
            hot_standby: false,
        }
    }
    /// Whether the choosing factors allow `n` at all.
    pub fn may_run_on(&self, n: NodeId) -> bool {
        self.allowable.allows(n) && !self.disallowable.contains(&n)
    }
}

/// A configuration that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    Duplicate(String),
    UnknownParent { service: String, parent: String },
    Cycle(String),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Duplicate(s) => write!(f, "service {s:?} is defined twice"),
            SpecError::UnknownParent { service, parent } => {
                write!(f, "service {service:?} names parent {parent:?}, which is not defined")
            }
            SpecError::Cycle(s) => write!(f, "service {s:?} is its own ancestor"),
        }
    }
}

impl std::error::Error for SpecError {}

// ---------------------------------------------------------------------------
// States (S1.15)
// ---------------------------------------------------------------------------

/// S1.15 (Fig. 19 of the 001 seed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ServiceState {
    Starting,
    Registered,
    Stopping,
    Deregistered,
    Recovering,
}

/// S1.15's flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Flags {
    pub transfer_intent: bool,
    pub awaiting_maturity: bool,
    pub has_notify: bool,
}

/// Identifies a directive: the decider's epoch and a counter. Only grows
/// (epochs are view ids, which grow across deciders).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OpId {
    pub epoch: u64,
    pub n: u64,
}

/// A registry version: the decider's epoch and a counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Version {
    pub epoch: u64,
    pub seq: u64,
}

/// Why an action function runs (an IN parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Reason {
    /// First registration (auto_register or an operator's register).
    Register,
    /// Part of a transfer (S1.14): a node leaving or going standby.
    Transfer,
    /// An operator's switchover.
    Switchover,
    /// Back to a better node (transfer cost free).
    Failback,
    /// The monitor failed on the owner.
    MonitorFailed,
    /// After a forced leave (S4.4).
    Failover,
    /// Cleanup after a failed start (S1.13).
    StartFailed,
    /// The parent moves or stops (S1.12).
    Parent,
    /// Deregistered by the operator.
    Deregister,
    /// Notify: the service was registered on `node`.
    Registered,
    /// S4.6: the group goes off-line here ([`Action::Offline`] from a running
    /// application: stop it, keep the addresses).
    Offline,
    /// S4.6: the group leaves off-line mode here ([`Action::Start`] on the
    /// node that holds its addresses off-line).
    Online,
}

/// The IN parameters of an action function.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ActionParams {
    pub service: String,
    /// Start/Stop/Recovery: the node the action runs on. Notify: the node
    /// the service is registered on (the notify itself runs locally).
    pub node: NodeId,
    pub reason: Reason,
    /// The node the service was registered on before, if any (transfer,
    /// failover: the failed node).
    pub previous: Option<NodeId>,
    pub op: OpId,
    /// Stop of a planned move (switchover, failback, transfer): the node
    /// the decider means to start the service on next. A hint for a
    /// handover (the agent prepares that node while this one still
    /// serves); the decider may still choose otherwise.
    #[cfg_attr(feature = "serde", serde(default))]
    pub next: Option<NodeId>,
}

/// The OUT result of an action function.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ActionResult {
    pub ok: bool,
    /// Exit code (OCF codes for resource agents).
    pub code: i32,
    pub detail: String,
}

impl ActionResult {
    pub const OK: ActionResult = ActionResult { ok: true, code: 0, detail: String::new() };
    pub fn failed(code: i32, detail: &str) -> ActionResult {
        ActionResult { ok: false, code, detail: detail.to_string() }
    }
}

/// Why an alert was raised.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum AlertReason {
    /// S4.7: the service runs on its last possible node; switching is
    /// disabled (a switchover or a monitor failure cannot move it).
    LastPossibleNode { node: NodeId },
    /// No allowable live node is left to register the service on.
    NoNode,
    /// The start failed on every allowable live node (S1.13): the service
    /// stays deregistered until an operator registers it again.
    AllNodesFailed,
    /// The stop failed: the service may still run there, so it is started
    /// nowhere else until that node leaves the cluster (or is fenced).
    StopFailed { node: NodeId },
    /// The recovery failed: the service stays deregistered until an
    /// operator registers it again.
    RecoveryFailed { node: NodeId },
    /// S4.6 with S4.7: the group failed on its last possible node; it was
    /// taken off-line there (application stopped, addresses kept).
    OfflineOnFailure { node: NodeId },
}

/// Why a group is in off-line mode (S4.6).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum OfflineCause {
    /// An operator's `Offline` request; only `Offline { on: false }` ends it.
    Operator,
    /// Its monitor failed on `node`, its last possible node (S4.7): it ends
    /// with an operator's `Offline { on: false }`, or when another possible
    /// node becomes available (the group then moves there, in normal mode),
    /// or when `node` is gone (the group is taken over in normal mode).
    Failed { node: NodeId },
}

// ---------------------------------------------------------------------------
// The replicated registry
// ---------------------------------------------------------------------------

/// A service's registration on one node (or its recovery after that node
/// was forced out).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Instance {
    /// Starting, Registered, Stopping or Recovering (Deregistered = absent).
    pub state: ServiceState,
    /// The latest directive for this instance.
    pub op: OpId,
    /// Registered, but the monitor reported a failure.
    pub failed: bool,
    /// The stop failed: stuck until the node leaves.
    pub stuck: bool,
    /// Recovering: where the recovery runs (chosen by the choosing factors).
    pub recovery_on: Option<NodeId>,
    /// S4.6: held off-line on that node (addresses configured, application
    /// and monitors stopped), or being taken off-line.
    #[cfg_attr(feature = "serde", serde(default))]
    pub offline: bool,
    /// A change of mode (off-line <-> normal) is under way in place: the
    /// node keeps the group's addresses throughout (children stay).
    #[cfg_attr(feature = "serde", serde(default))]
    pub mode_change: bool,
}

impl Instance {
    fn new(state: ServiceState, op: OpId) -> Instance {
        Instance { state, op, failed: false, stuck: false, recovery_on: None, offline: false, mode_change: false }
    }
}

/// The decider's record of one service.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Entry {
    /// Per node (for placement One at most one).
    pub instances: BTreeMap<NodeId, Instance>,
    pub transfer_intent: bool,
    pub awaiting_maturity: bool,
    /// Maturity was reached once: it does not apply any more.
    pub matured: bool,
    /// Should be registered (auto_register, or an operator's register).
    pub wanted: bool,
    /// Start (or, for One, monitor) failed there: not chosen again until
    /// that node leaves and rejoins, or an operator registers or switches.
    /// Node -> the incarnation (life) of that node the ban applies to.
    pub banned: BTreeMap<NodeId, u64>,
    /// An operator's switchover destination.
    pub target: Option<NodeId>,
    /// Registered where an operator's switchover put it: no automatic
    /// failback while it stays there (like a move constraint in
    /// Pacemaker; a new switchover, a failover or a transfer clears it).
    #[cfg_attr(feature = "serde", serde(default))]
    pub pinned: Option<NodeId>,
    /// The node the service was last registered on.
    pub previous: Option<NodeId>,
    /// Every member acknowledged the registry version that recorded the
    /// registration (S1.11: the registration is complete).
    pub complete: bool,
    /// Recovery or every start failed: wait for an operator.
    pub blocked: bool,
}

impl Entry {
    fn new(wanted: bool) -> Entry {
        Entry {
            instances: BTreeMap::new(),
            transfer_intent: false,
            awaiting_maturity: false,
            matured: false,
            wanted,
            banned: BTreeMap::new(),
            target: None,
            pinned: None,
            previous: None,
            complete: false,
            blocked: false,
        }
    }
}

/// The replicated registry: where every service is registered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Registry {
    pub version: Version,
    pub services: BTreeMap<String, Entry>,
    pub maintenance: bool,
    pub standby: BTreeSet<NodeId>,
    /// Nodes leaving gracefully: their services are transferred.
    pub leaving: BTreeSet<NodeId>,
    /// S4.6: groups (roots) in off-line mode, and why.
    #[cfg_attr(feature = "serde", serde(default))]
    pub offline: BTreeMap<String, OfflineCause>,
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// A node's local phase of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum LocalPhase {
    #[default]
    Idle,
    Starting,
    Running,
    /// Running, and the monitor reported a failure.
    Failed,
    Stopping,
    /// The stop failed: may still be running.
    StopFailed,
    /// S4.6: [`Action::Offline`] runs (the application stops, or the
    /// addresses are acquired).
    GoingOffline,
    /// S4.6: the addresses are held here, the application is stopped.
    Offline,
}

impl LocalPhase {
    /// The service may be running here (so nowhere else may start it).
    pub fn active(self) -> bool {
        self != LocalPhase::Idle
    }
}

/// How the latest directive on a node ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum LocalOutcome {
    Started,
    /// The start failed (the cleanup stop ran after it).
    StartFailed,
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LocalReport {
    pub phase: LocalPhase,
    /// The latest directive this node applied for the service.
    pub op: OpId,
    pub outcome: Option<LocalOutcome>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RecoveryReport {
    pub op: OpId,
    pub failed: NodeId,
    /// None while it runs.
    pub ok: Option<bool>,
}

/// A node's report to the decider: its whole local state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Report {
    /// The decider epoch this report belongs to (0: none announced yet).
    pub epoch: u64,
    /// The sender's view id when it sent the report: a report of a life
    /// that departed (sent in a view up to its departure) is stale.
    pub view: u64,
    pub incarnation: u64,
    /// Grows with every report of this life.
    pub seq: u64,
    pub locals: BTreeMap<String, LocalReport>,
    pub recoveries: BTreeMap<String, RecoveryReport>,
    /// The registry version this node has (its acknowledgement).
    pub seen: Version,
    /// The node's most recent load figure.
    pub load: u64,
    /// Nodes this node was told are leaving gracefully.
    pub leaving: BTreeSet<NodeId>,
    /// The node's registry copy: sent in the first report of an epoch, so
    /// that a new decider continues from the newest one.
    pub registry: Option<Registry>,
    /// Grows with every reconfiguration of this life
    /// ([`Services::reconfigure`]): the decider then lifts the node's bans
    /// (a start it refused for a service it did not have yet).
    #[cfg_attr(feature = "serde", serde(default))]
    pub config_gen: u64,
}

/// What the decider tells a node to do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Directive {
    Start,
    Stop,
    Recover { failed: NodeId },
    /// S4.6: hold the group off-line here (see [`Action::Offline`]).
    Offline,
}

/// An operator's request, forwarded to the decider.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Request {
    Switchover { service: String, to: Option<NodeId> },
    Standby { node: NodeId, on: bool },
    Maintenance { on: bool },
    Register { service: String },
    Deregister { service: String },
    /// S4.6: off-line mode on or off for the service's group.
    Offline { service: String, on: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Msg {
    /// A new decider asks for reports (and announces its epoch).
    /// `incarnation`: the decider's life. A Collect of an earlier life of
    /// the node now master is not this decider's: its epoch may even be
    /// higher (a cluster formed anew starts its terms again), and taking it
    /// made a member refuse the real decider's epoch for good (composed sim
    /// seed 2881).
    Collect { epoch: u64, incarnation: u64 },
    Report(Report),
    Registry(Registry),
    /// `incarnation`: the life of the target node it is meant for (a
    /// directive queued for a node that restarted is not for the new life).
    Do { epoch: u64, incarnation: u64, directive: Directive, params: ActionParams },
    /// An operator's request from the sender's life `incarnation`: the
    /// decider drops one of an earlier life of the sender, or of a life
    /// whose forced leave is under way ([`Input::Lives`]).
    Request { incarnation: u64, request: Request },
}

// ---------------------------------------------------------------------------
// Inputs and actions
// ---------------------------------------------------------------------------

/// A node's life as the membership state shows it ([`Input::Lives`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Life {
    pub incarnation: u64,
    /// Its forced leave is under way.
    pub forced_leaving: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Input {
    /// The membership view: `id` grows over the cluster's life (also across
    /// masters); `members` are the nodes whose services count (Joined and
    /// Leaving, and forced-out nodes until `NodeFailed`); `master` decides.
    View { id: u64, members: BTreeSet<NodeId>, master: NodeId },
    /// The lives in the membership state this node follows (node.rs rule
    /// 5, fed whenever they change): each node's incarnation, and whether
    /// that life's forced leave is under way (`ForcedLeaving`: it stays a
    /// member here until its `NodeFailed`). The decider takes an operator
    /// request only from a member's current life, not from an earlier one
    /// and not from one being forced out.
    Lives { lives: BTreeMap<NodeId, Life> },
    /// `node` was forced out (and fenced): its services are recovered.
    NodeFailed { node: NodeId },
    /// `node` finished its graceful leave.
    NodeLeft { node: NodeId },
    /// `node` began a graceful leave: its services are transferred;
    /// [`Action::Drained`] tells when none is left on it.
    NodeLeaving { node: NodeId },
    /// This node leaves gracefully (same as `NodeLeaving { node: me }`).
    LocalLeave,
    Receive { from: NodeId, msg: Msg },
    StartDone { service: String, result: ActionResult },
    StopDone { service: String, result: ActionResult },
    RecoveryDone { service: String, result: ActionResult },
    NotifyDone { service: String, result: ActionResult },
    /// [`Action::Offline`] finished.
    OfflineDone { service: String, result: ActionResult },
    /// The service's monitor failed on this node.
    MonitorFailed { service: String },
    /// [`Action::StandbyStart`] finished.
    StandbyStarted { service: String, result: ActionResult },
    /// [`Action::StandbyStop`] finished.
    StandbyStopped { service: String, result: ActionResult },
    /// The hot-standby instance's monitor failed here: it is restarted.
    StandbyFailed { service: String },
    /// This node's load figure.
    Load { figure: u64 },
    /// Operator: move the service (and its group) to `to` or the next node.
    Switchover { service: String, to: Option<NodeId> },
    /// Operator: move everything off `node` and keep it off (or allow it again).
    Standby { node: NodeId, on: bool },
    /// Operator: freeze every decision.
    Maintenance { on: bool },
    /// Operator: register (start) a service, clearing its failures.
    Register { service: String },
    /// Operator: deregister (stop) a service.
    Deregister { service: String },
    /// Operator (S4.6): off-line mode for the service's group (`on`), or
    /// back to normal mode. Off-line: the application and its monitors are
    /// stopped where the group is registered, its addresses stay there, and
    /// it does not fail back. Ignored for placement `Every`.
    Offline { service: String, on: bool },
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Action {
    Send { to: NodeId, msg: Msg },
    /// Run the start action function here; answer with `StartDone`.
    Start { params: ActionParams },
    /// Run the stop action function here; answer with `StopDone`.
    Stop { params: ActionParams },
    /// Run the notify action function here; answer with `NotifyDone`.
    Notify { params: ActionParams },
    /// Run the recovery action function here for `failed`; answer with `RecoveryDone`.
    Recovery { params: ActionParams, failed: NodeId },
    /// S4.6: hold the group off-line here: stop its application if it runs
    /// here (its monitors were disabled first), and make sure its addresses
    /// are configured here (acquire and announce them if they are not).
    /// Answer with `OfflineDone`. A failure is cleaned up with a `Stop`
    /// (reason `StartFailed`), as for a failed start.
    Offline { params: ActionParams },
    /// Enable the service's event group (its monitors) here.
    EnableEvents { service: String },
    /// Disable the service's event group here.
    DisableEvents { service: String },
    /// Hot standby: start the application here as the standby instance,
    /// without the addresses (it binds to them non-locally), and monitor it
    /// with the application's own monitor. Answer with `StandbyStarted`.
    StandbyStart { service: String },
    /// Hot standby: stop the standby instance here (its monitor first).
    /// Answer with `StandbyStopped`.
    StandbyStop { service: String },
    Alert { service: String, reason: AlertReason },
    /// Nothing of `node` (which is leaving) is registered any more: its
    /// graceful leave may proceed at the services level.
    Drained { node: NodeId },
    /// A service's status changed (as this node sees it).
    Changed { status: ServiceStatus },
}

/// One line of `baton status`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ServiceStatus {
    pub name: String,
    /// The summary state.
    pub state: ServiceState,
    /// The node, when exactly one instance exists.
    pub node: Option<NodeId>,
    /// Every instance's state (the per-node columns of Tables 2 and 3).
    pub nodes: BTreeMap<NodeId, ServiceState>,
    pub flags: Flags,
    /// The monitor reported a failure on the owner.
    pub failed: bool,
    /// The registration was acknowledged by every member.
    pub complete: bool,
    /// S4.6: the group is in off-line mode (None: normal mode).
    pub offline: Option<OfflineCause>,
    /// Nodes that hold it off-line now (addresses up, application stopped).
    pub offline_on: BTreeSet<NodeId>,
    /// When this node saw the state, node or flags change.
    pub since: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Config {
    pub me: NodeId,
    /// This life of the node (grows at each restart).
    pub incarnation: u64,
    pub services: Vec<ServiceSpec>,
}

// ---------------------------------------------------------------------------
// The state machine
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct LocalSvc {
    phase: LocalPhase,
    op: OpId,
    outcome: Option<LocalOutcome>,
    params: Option<ActionParams>,
    /// A stop that arrived while starting: runs after StartDone.
    pending_stop: Option<ActionParams>,
    /// Stopping after a failed start.
    cleanup: bool,
}

/// This node's hot-standby instance of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum StandbyPhase {
    /// None here (or it became the registered instance: promoted).
    #[default]
    Idle,
    Starting,
    Running,
    Stopping,
}

#[derive(Clone, Debug, Default)]
struct LocalStandby {
    phase: StandbyPhase,
    /// A failed start or stop: the next start waits until then.
    not_before: Option<Instant>,
}

/// How long a hot-standby instance whose start (or stop) failed waits
/// before it is started again.
pub const STANDBY_RETRY_NS: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
struct LocalRecovery {
    op: OpId,
    failed: NodeId,
    ok: Option<bool>,
}

struct Decider {
    epoch: u64,
    collected: bool,
    reports: BTreeMap<NodeId, Report>,
    next_op: u64,
    dirty: bool,
    awaiting_since: BTreeMap<String, Instant>,
    alerted: BTreeMap<String, AlertReason>,
    /// Registrations waiting for every member's acknowledgement.
    commit_at: BTreeMap<String, Version>,
    requests: Vec<Request>,
    /// The last registry published (None: publish the next pass).
    last: Option<Registry>,
    /// The newest incarnation each node reported (kept across departures).
    incarnations: BTreeMap<NodeId, u64>,
    /// Directives sent to other nodes that their reports do not show
    /// applied yet, by (service, target, is a recovery): the latest one
    /// each ([`Services::resend_lost_directives`]).
    sent: BTreeMap<(String, NodeId, bool), Sent>,
    /// When a directive shown missing is sent again next.
    resend_at: Option<Instant>,
    /// When the registry was last sent to each node: a member whose reports
    /// still show an older version once [`DIRECTIVE_RESEND_NS`] passed since
    /// then lost it (with a control connection that closed) and gets it
    /// again; nothing else would show it until the next change.
    registry_sent: BTreeMap<NodeId, Instant>,
}

/// A directive sent to another node, not yet seen applied in its reports.
struct Sent {
    /// The target's life it was sent to.
    incarnation: u64,
    directive: Directive,
    params: ActionParams,
    /// The registry version when it was last sent. The registry
    /// published right after it (it records the directive's op) follows
    /// it on the same control connection, so a report whose `seen` is
    /// newer, without the op applied, shows that the directive was lost
    /// (or is late on another link: a copy sent again is ignored).
    after: Version,
    /// When it was last sent.
    at: Instant,
}

pub struct Services {
    me: NodeId,
    incarnation: u64,
    specs: BTreeMap<String, ServiceSpec>,
    /// Parents before children.
    order: Vec<String>,
    view_id: u64,
    view_members: BTreeSet<NodeId>,
    master: Option<NodeId>,
    /// Nodes failed or left, with the view id when they did.
    gone: BTreeMap<NodeId, u64>,
    /// The view id at which each node last departed.
    departed_at: BTreeMap<NodeId, u64>,
    epoch: u64,
    locals: BTreeMap<String, LocalSvc>,
    recoveries: BTreeMap<String, LocalRecovery>,
    report_seq: u64,
    report_dirty: bool,
    /// The epoch whose first report (with the registry copy) was sent.
    registry_sent_for: u64,
    load: u64,
    registry: Registry,
    leaving_local: BTreeSet<NodeId>,
    drained_sent: BTreeSet<NodeId>,
    notified: BTreeMap<String, BTreeMap<NodeId, OpId>>,
    shown: BTreeMap<String, ServiceStatus>,
    pending_requests: Vec<Request>,
    decider: Option<Decider>,
    inbox: VecDeque<(NodeId, Msg)>,
    actions: VecDeque<Action>,
    now: Instant,
    /// A Collect from a node we do not follow as master yet (its view
    /// reached it before ours reached us): used once we do.
    early_collect: Option<(NodeId, u64, u64)>,
    /// When the handshake with the current master is retried (a report or a
    /// Collect sent while a link was down is lost).
    retry_at: Option<Instant>,
    /// Services removed by [`Services::reconfigure`] that may still run
    /// somewhere: stopped everywhere first, forgotten once nothing of them is
    /// left (see [`Services::reconfigure`]).
    retired: BTreeSet<String>,
    /// Reconfigurations of this life (sent in reports).
    config_gen: u64,
    /// Hot-standby instances on this node.
    standbys: BTreeMap<String, LocalStandby>,
    /// The newest life known of each node ([`Input::Lives`], and on the
    /// decider the reports): a request of an earlier one is stale.
    newest_life: BTreeMap<NodeId, u64>,
    /// The newest life of each node known to be forced out (its forced
    /// leave under way or done): its requests are dropped.
    forced_life: BTreeMap<NodeId, u64>,
}

/// How often an unfinished handshake with a new decider is retried.
pub const HANDSHAKE_RETRY_NS: u64 = 100_000_000;

/// A directive that the target's report shows missing is sent again at
/// once, then at this period while its reports still show it missing (a
/// copy sent again may be lost too; nothing else may change meanwhile).
pub const DIRECTIVE_RESEND_NS: u64 = 1_000_000_000;

/// A start (or going off-line, which starts nothing but ends the same way)
/// ended on this node. A stop that waited for it runs now; a failure is
/// cleaned up here (S1.13: the decider then tries the next node). Returns
/// whether the instance settled, for the caller to set the phase it reached.
fn start_ended(l: &mut LocalSvc, actions: &mut VecDeque<Action>, params: ActionParams, ok: bool) -> bool {
    if ok {
        let Some(stop) = l.pending_stop.take() else { return true };
        l.op = stop.op;
        l.phase = LocalPhase::Stopping;
        l.params = Some(stop.clone());
        actions.push_back(Action::Stop { params: stop });
    } else {
        l.outcome = Some(LocalOutcome::StartFailed);
        l.cleanup = true;
        l.phase = LocalPhase::Stopping;
        if let Some(stop) = l.pending_stop.take() {
            l.op = stop.op;
        }
        let p = ActionParams { reason: Reason::StartFailed, ..params };
        l.params = Some(p.clone());
        actions.push_back(Action::Stop { params: p });
    }
    false
}

/// The specs by name; a name given twice is an error.
fn spec_map(list: Vec<ServiceSpec>) -> Result<BTreeMap<String, ServiceSpec>, SpecError> {
    let mut specs = BTreeMap::new();
    for s in list {
        if specs.contains_key(&s.name) {
            return Err(SpecError::Duplicate(s.name));
        }
        specs.insert(s.name.clone(), s);
    }
    Ok(specs)
}

/// Parents before children (then by name); every parent must be defined
/// and no service may be its own ancestor.
fn start_order(specs: &BTreeMap<String, ServiceSpec>) -> Result<Vec<String>, SpecError> {
    let mut depth: BTreeMap<String, usize> = BTreeMap::new();
    for name in specs.keys() {
        let mut d = 0;
        let mut cur = name.clone();
        while let Some(p) = specs[&cur].parent.clone() {
            if !specs.contains_key(&p) {
                return Err(SpecError::UnknownParent { service: cur, parent: p });
            }
            d += 1;
            if d > specs.len() {
                return Err(SpecError::Cycle(name.clone()));
            }
            cur = p;
        }
        depth.insert(name.clone(), d);
    }
    let mut order: Vec<String> = specs.keys().cloned().collect();
    order.sort_by(|a, b| (depth[a], a).cmp(&(depth[b], b)));
    Ok(order)
}

impl Services {
    pub fn new(cfg: Config) -> Result<Services, SpecError> {
        let specs = spec_map(cfg.services)?;
        let order = start_order(&specs)?;
        let mut services = BTreeMap::new();
        for s in specs.values() {
            services.insert(s.name.clone(), Entry::new(s.parent.is_none() && s.auto_register));
        }
        let mut me = Services {
            me: cfg.me,
            incarnation: cfg.incarnation,
            specs,
            order,
            view_id: 0,
            view_members: BTreeSet::new(),
            master: None,
            gone: BTreeMap::new(),
            departed_at: BTreeMap::new(),
            epoch: 0,
            locals: BTreeMap::new(),
            recoveries: BTreeMap::new(),
            report_seq: 0,
            report_dirty: false,
            registry_sent_for: u64::MAX,
            load: 0,
            registry: Registry {
                version: Version::default(),
                services,
                maintenance: false,
                standby: BTreeSet::new(),
                leaving: BTreeSet::new(),
                offline: BTreeMap::new(),
            },
            leaving_local: BTreeSet::new(),
            drained_sent: BTreeSet::new(),
            notified: BTreeMap::new(),
            shown: BTreeMap::new(),
            pending_requests: Vec::new(),
            decider: None,
            inbox: VecDeque::new(),
            actions: VecDeque::new(),
            now: Instant::ZERO,
            early_collect: None,
            retry_at: None,
            retired: BTreeSet::new(),
            config_gen: 0,
            standbys: BTreeMap::new(),
            newest_life: BTreeMap::new(),
            forced_life: BTreeMap::new(),
        };
        for name in me.order.clone() {
            let st = me.status_of(&name, Instant::ZERO);
            me.shown.insert(name, st);
        }
        Ok(me)
    }

    pub fn me(&self) -> NodeId {
        self.me
    }
    pub fn is_decider(&self) -> bool {
        self.decider.as_ref().is_some_and(|d| d.collected)
    }
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
    /// This node's local phase of a service.
    pub fn local_phase(&self, service: &str) -> LocalPhase {
        self.locals.get(service).map(|l| l.phase).unwrap_or_default()
    }
    pub fn specs(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.specs.values()
    }

    /// Whether `name` is configured and not being removed.
    pub fn is_configured(&self, name: &str) -> bool {
        self.specs.contains_key(name) && !self.retired.contains(name)
    }

    /// Services removed by a reconfiguration that are not forgotten yet
    /// (they still run, or stop, somewhere).
    pub fn retired(&self) -> impl Iterator<Item = &String> {
        self.retired.iter()
    }

    /// A new set of services (a configuration reload), applied without a
    /// restart. Checked as a whole first (duplicates, parents, cycles):
    /// on an error nothing changes.
    ///
    /// * A new service is added (the decider registers it as usual).
    /// * A changed service takes its new choosing parameters at once; the
    ///   decider moves it (a planned move, reason `Transfer`) only if the
    ///   node it runs on is no longer allowed, or, with a free transfer
    ///   cost, if a better node is up (failback). Otherwise it stays where
    ///   it runs.
    /// * A removed service is *retired*: the decider deregisters it
    ///   (children first) wherever it runs, and every node forgets it once
    ///   nothing of it runs (on the decider: once no instance is left in the
    ///   registry). Until then it shows in the status as before. A service
    ///   given again before it is forgotten is simply kept.
    ///
    /// Every node reconfigures from its own file. A node asked by the
    /// decider to start a service it does not know refuses, as a failed
    /// start (the decider then tries the next node), so nodes whose files
    /// differ never run a service they were not configured for.
    pub fn reconfigure(&mut self, now: Instant, services: Vec<ServiceSpec>) -> Result<(), SpecError> {
        self.now = self.now.max(now);
        let new = spec_map(services)?;
        start_order(&new)?;
        let mut all = new.clone();
        let mut retired = BTreeSet::new();
        for (name, old) in &self.specs {
            if !new.contains_key(name) {
                all.insert(name.clone(), old.clone());
                retired.insert(name.clone());
            }
        }
        // A retired child of a kept parent is fine; a kept child of a
        // retired parent cannot be (the new set's parents are all in it).
        let order = start_order(&all)?;
        for name in new.keys() {
            if !self.specs.contains_key(name) {
                let spec = &new[name];
                let wanted = spec.parent.is_none() && spec.auto_register;
                if self.decider.as_ref().is_some_and(|d| d.collected) {
                    self.registry.services.entry(name.clone()).or_insert_with(|| Entry::new(wanted));
                }
            }
        }
        self.specs = all;
        self.order = order;
        self.retired = retired;
        self.config_gen += 1;
        for name in self.order.clone() {
            if !self.shown.contains_key(&name) {
                let st = self.status_of(&name, self.now);
                self.shown.insert(name.clone(), st.clone());
                self.actions.push_back(Action::Changed { status: st });
            }
        }
        if let Some(d) = self.decider.as_mut() {
            d.dirty = true;
        }
        self.report_dirty = true;
        self.flush();
        Ok(())
    }

    /// Whether `name` or one of its ancestors is retired.
    fn is_retired(&self, name: &str) -> bool {
        let mut cur = name;
        loop {
            if self.retired.contains(cur) {
                return true;
            }
            match self.specs.get(cur).and_then(|s| s.parent.as_deref()) {
                Some(p) => cur = p,
                None => return false,
            }
        }
    }

    /// Forgets retired services of which nothing is left: not active here,
    /// no recovery running here, no child still known, and (on the
    /// decider) no instance in the registry.
    fn purge_retired(&mut self) {
        if self.retired.is_empty() {
            return;
        }
        let decider = self.decider.as_ref().is_some_and(|d| d.collected);
        for name in self.order.clone().into_iter().rev() {
            if !self.retired.contains(&name) {
                continue;
            }
            let busy_here = self.locals.get(&name).is_some_and(|l| l.phase.active() || l.pending_stop.is_some())
                || self.recoveries.get(&name).is_some_and(|r| r.ok.is_none());
            let has_child = self.specs.values().any(|s| s.parent.as_deref() == Some(name.as_str()));
            let instances = self.registry.services.get(&name).is_some_and(|e| !e.instances.is_empty());
            if busy_here || has_child || (decider && instances) {
                continue;
            }
            self.specs.remove(&name);
            self.order.retain(|n| *n != name);
            self.retired.remove(&name);
            self.shown.remove(&name);
            self.notified.remove(&name);
            if let Some(d) = self.decider.as_mut() {
                if d.collected {
                    self.registry.services.remove(&name);
                }
                d.awaiting_since.remove(&name);
                d.alerted.remove(&name);
                d.commit_at.remove(&name);
                d.dirty = true;
            }
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The decider's maturity timers.
    pub fn next_deadline(&self) -> Option<Instant> {
        let m = self.maturity_deadline();
        let s = self
            .standbys
            .values()
            .filter(|l| l.phase == StandbyPhase::Idle)
            .filter_map(|l| l.not_before)
            .filter(|t| *t > self.now)
            .min();
        let r = self.decider.as_ref().and_then(|d| d.resend_at);
        [m, self.retry_at, s, r].into_iter().flatten().min()
    }

    /// Until the handshake with the current master is done (we follow its
    /// epoch; as decider, every member reported), say it again: to a
    /// master that had not seen its view yet, or over a link that was down.
    fn retry_handshake(&mut self) {
        self.retry_at = None;
        let Some(master) = self.master else { return };
        let me = self.me;
        if master != me {
            if self.epoch == 0 {
                self.report_dirty = true;
                self.retry_at = Some(self.now.plus_ns(HANDSHAKE_RETRY_NS));
            }
            return;
        }
        let members = self.members();
        let Some(d) = self.decider.as_ref() else { return };
        let epoch = d.epoch;
        // Members that never reported in this epoch: before the first
        // collection, or members that joined after it (their first report
        // may be lost with a dropped connection, and nothing else would
        // make them report again: composed sim seed 8055).
        let missing: Vec<NodeId> = members.iter().copied().filter(|n| *n != me && !d.reports.contains_key(n)).collect();
        if d.collected && missing.is_empty() {
            return;
        }
        for n in missing {
            self.send(n, Msg::Collect { epoch, incarnation: self.incarnation });
        }
        self.retry_at = Some(self.now.plus_ns(HANDSHAKE_RETRY_NS));
    }

    fn maturity_deadline(&self) -> Option<Instant> {
        let d = self.decider.as_ref()?;
        if !d.collected || self.registry.maintenance {
            return None;
        }
        let mut best: Option<Instant> = None;
        for (name, since) in &d.awaiting_since {
            let Some(after) = self.specs.get(name).and_then(|s| s.maturity.after_ms) else { continue };
            if self.registry.services.get(name).is_some_and(|e| e.awaiting_maturity && !e.matured) {
                let t = since.plus_ms(after);
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        }
        best
    }

    /// The status of every service, as this node knows it (`baton status`).
    pub fn snapshot(&self) -> Vec<ServiceStatus> {
        self.order.iter().map(|n| self.shown[n].clone()).collect()
    }

    pub fn handle(&mut self, now: Instant, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::View { id, members, master } => self.on_view(id, members, master),
            Input::Lives { lives } => {
                for (n, l) in lives {
                    let newest = self.newest_life.entry(n).or_insert(0);
                    *newest = (*newest).max(l.incarnation);
                    if l.forced_leaving {
                        let f = self.forced_life.entry(n).or_insert(0);
                        *f = (*f).max(l.incarnation);
                    }
                }
            }
            Input::NodeFailed { node } | Input::NodeLeft { node } => {
                if node != self.me {
                    self.gone.insert(node, self.view_id);
                    self.departed(node);
                }
            }
            Input::NodeLeaving { node } => self.on_leaving(node),
            Input::LocalLeave => self.on_leaving(self.me),
            Input::Receive { from, msg } => self.inbox.push_back((from, msg)),
            Input::StartDone { service, result } => self.on_start_done(&service, result.ok),
            Input::StopDone { service, result } => self.on_stop_done(&service, result.ok),
            Input::RecoveryDone { service, result } => {
                if let Some(r) = self.recoveries.get_mut(&service) {
                    if r.ok.is_none() {
                        r.ok = Some(result.ok);
                        self.report_dirty = true;
                    }
                }
            }
            Input::NotifyDone { .. } => {}
            Input::OfflineDone { service, result } => self.on_offline_done(&service, result.ok),
            Input::MonitorFailed { service } => {
                if let Some(l) = self.locals.get_mut(&service) {
                    if l.phase == LocalPhase::Running {
                        l.phase = LocalPhase::Failed;
                        self.report_dirty = true;
                    }
                }
            }
            Input::StandbyStarted { service, result } => {
                let now = self.now;
                if let Some(l) = self.standbys.get_mut(&service) {
                    if l.phase == StandbyPhase::Starting {
                        l.phase = if result.ok { StandbyPhase::Running } else { StandbyPhase::Idle };
                        l.not_before = if result.ok { None } else { Some(now.plus_ns(STANDBY_RETRY_NS)) };
                    }
                }
            }
            Input::StandbyStopped { service, result } => {
                let now = self.now;
                if let Some(l) = self.standbys.get_mut(&service) {
                    if l.phase == StandbyPhase::Stopping {
                        l.phase = StandbyPhase::Idle;
                        l.not_before = if result.ok { None } else { Some(now.plus_ns(STANDBY_RETRY_NS)) };
                    }
                }
            }
            Input::StandbyFailed { service } => {
                if let Some(l) = self.standbys.get_mut(&service) {
                    if l.phase == StandbyPhase::Running {
                        // Restarted: stopped here, then started again by
                        // the standby check if this node is still the one.
                        l.phase = StandbyPhase::Stopping;
                        self.actions.push_back(Action::StandbyStop { service });
                    }
                }
            }
            Input::Load { figure } => {
                if figure != self.load {
                    self.load = figure;
                    self.report_dirty = true;
                }
            }
            Input::Switchover { service, to } => self.request(Request::Switchover { service, to }),
            Input::Standby { node, on } => self.request(Request::Standby { node, on }),
            Input::Maintenance { on } => self.request(Request::Maintenance { on }),
            Input::Register { service } => self.request(Request::Register { service }),
            Input::Deregister { service } => self.request(Request::Deregister { service }),
            Input::Offline { service, on } => self.request(Request::Offline { service, on }),
            Input::Tick => {
                if let Some(d) = self.decider.as_mut() {
                    d.dirty = true;
                }
                if self.retry_at.is_some_and(|t| self.now >= t) {
                    self.retry_handshake();
                }
            }
        }
        self.flush();
    }

    // ----- membership -----

    fn members(&self) -> BTreeSet<NodeId> {
        self.view_members.iter().copied().filter(|n| !self.gone.contains_key(n)).collect()
    }

    fn on_view(&mut self, id: u64, members: BTreeSet<NodeId>, master: NodeId) {
        if id <= self.view_id {
            return;
        }
        let before = self.members();
        self.view_id = id;
        self.gone.retain(|_, at| *at >= id);
        self.view_members = members;
        let after = self.members();
        for n in before.difference(&after) {
            self.departed(*n);
        }
        // Any life not in this view is over: its reports are stale from now.
        for (n, at) in self.departed_at.iter_mut() {
            if !after.contains(n) {
                *at = (*at).max(id);
            }
        }
        if self.master != Some(master) {
            self.master = Some(master);
            self.epoch = 0;
            self.decider = None;
            if master == self.me {
                self.epoch = id;
                self.decider = Some(Decider {
                    epoch: id,
                    collected: false,
                    reports: BTreeMap::new(),
                    next_op: 0,
                    dirty: true,
                    awaiting_since: BTreeMap::new(),
                    alerted: BTreeMap::new(),
                    commit_at: BTreeMap::new(),
                    requests: Vec::new(),
                    last: None,
                    incarnations: BTreeMap::new(),
                    sent: BTreeMap::new(),
                    resend_at: None,
                    registry_sent: BTreeMap::new(),
                });
                let me = self.me;
                for n in after.iter().copied().filter(|n| *n != me) {
                    self.send(n, Msg::Collect { epoch: id, incarnation: self.incarnation });
                }
            }
            if let Some((from, epoch, inc)) = self.early_collect.take() {
                // Only from the master's current life (fed in `Lives`
                // before the view); otherwise the handshake below gets
                // the decider's Collect again.
                if from == master && master != self.me && self.newest_life.get(&master) == Some(&inc) {
                    self.epoch = epoch;
                }
            }
            // A hello to the new master (it answers with Collect), or our
            // own first report when we are the master.
            self.report_dirty = true;
            self.retry_at = Some(self.now.plus_ns(HANDSHAKE_RETRY_NS));
            for r in std::mem::take(&mut self.pending_requests) {
                self.send(master, Msg::Request { incarnation: self.incarnation, request: r });
            }
        } else if let Some(d) = self.decider.as_mut() {
            d.dirty = true;
            let epoch = d.epoch;
            let new: Vec<NodeId> =
                after.difference(&before).copied().filter(|n| *n != self.me && !d.reports.contains_key(n)).collect();
            if !new.is_empty() && self.retry_at.is_none() {
                // Asked again until they report (see `retry_handshake`).
                self.retry_at = Some(self.now.plus_ns(HANDSHAKE_RETRY_NS));
            }
            for n in new {
                self.send(n, Msg::Collect { epoch, incarnation: self.incarnation });
            }
        }
    }

    /// `n` is no longer a member (failed, left, or dropped from the view).
    fn departed(&mut self, n: NodeId) {
        let at = self.departed_at.entry(n).or_insert(0);
        *at = (*at).max(self.view_id);
        if self.leaving_local.remove(&n) {
            self.report_dirty = true;
        }
        self.drained_sent.remove(&n);
        if let Some(d) = self.decider.as_mut() {
            d.reports.remove(&n);
            d.dirty = true;
            self.registry.leaving.remove(&n);
            for e in self.registry.services.values_mut() {
                e.banned.remove(&n);
            }
        }
    }

    fn on_leaving(&mut self, node: NodeId) {
        if self.leaving_local.insert(node) {
            self.report_dirty = true;
        }
    }

    fn request(&mut self, r: Request) {
        match self.master {
            Some(m) => self.send(m, Msg::Request { incarnation: self.incarnation, request: r }),
            None => self.pending_requests.push(r),
        }
    }

    fn send(&mut self, to: NodeId, msg: Msg) {
        if to == self.me {
            self.inbox.push_back((to, msg));
        } else {
            self.actions.push_back(Action::Send { to, msg });
        }
    }

    // ----- the local side -----

    fn receive(&mut self, from: NodeId, msg: Msg) {
        match msg {
            Msg::Collect { epoch, incarnation } => {
                if self.newest_life.get(&from).is_some_and(|l| incarnation < *l) {
                    // From an earlier life of that node: not a decider any more.
                    return;
                }
                if Some(from) == self.master {
                    if epoch >= self.epoch {
                        self.epoch = epoch;
                        self.report_dirty = true;
                    }
                } else {
                    self.early_collect = Some((from, epoch, incarnation));
                }
            }
            Msg::Registry(reg) => {
                if Some(from) == self.master
                    && from != self.me
                    && self.epoch != 0
                    && reg.version.epoch == self.epoch
                    && reg.version > self.registry.version
                {
                    self.registry = reg;
                    self.report_dirty = true;
                }
            }
            Msg::Do { epoch, incarnation, directive, params } => {
                if Some(from) == self.master
                    && self.epoch != 0
                    && epoch == self.epoch
                    && incarnation == self.incarnation
                {
                    self.on_directive(directive, params);
                }
            }
            Msg::Report(r) => self.on_report(from, r),
            Msg::Request { incarnation, request } => {
                // Only a member's current life's request counts. One sent
                // by a life that was forced out since (cut off by a
                // partition, its control channel delivers it after the
                // heal) is stale: applied, a late `maintenance on` overrode
                // the `maintenance off` an operator gave meanwhile and
                // froze every decision for good (chaos seed 2026: a group
                // placed nowhere after its owner halted). So is one of an
                // earlier life of a member (its new life joined since),
                // and one of a life whose forced leave is under way (it is
                // still a member here until the services level's step).
                if self.request_is_current(from, incarnation) {
                    if let Some(d) = self.decider.as_mut() {
                        d.requests.push(request);
                        d.dirty = true;
                    }
                }
            }
        }
    }

    /// Whether a request of `from`'s life `incarnation` may be applied:
    /// `from` is a member, the life is not older than the newest one known
    /// of it (from [`Input::Lives`] or, on the decider, its reports), and
    /// it is not known to be forced out.
    fn request_is_current(&self, from: NodeId, incarnation: u64) -> bool {
        if from == self.me {
            return incarnation == self.incarnation;
        }
        if !self.members().contains(&from) {
            return false;
        }
        let reported = self.decider.as_ref().and_then(|d| d.incarnations.get(&from)).copied().unwrap_or(0);
        let newest = self.newest_life.get(&from).copied().unwrap_or(0).max(reported);
        let forced = self.forced_life.get(&from).is_some_and(|f| incarnation <= *f);
        incarnation >= newest && !forced
    }

    fn on_directive(&mut self, directive: Directive, params: ActionParams) {
        let service = params.service.clone();
        if !self.specs.contains_key(&service) {
            // Not configured here (this node's file differs from the
            // decider's): a start is refused as a failed one, so that the
            // decider tries the next node; a stop finds nothing to stop.
            let op = params.op;
            if let Directive::Recover { .. } = directive {
                if self.recoveries.get(&service).is_none_or(|r| r.op < op) {
                    self.recoveries.insert(service, LocalRecovery { op, failed: params.previous.unwrap_or(0), ok: Some(false) });
                    self.report_dirty = true;
                }
                return;
            }
            let l = self.locals.entry(service).or_default();
            if op > l.op && !l.phase.active() {
                l.op = op;
                l.outcome = Some(match directive {
                    Directive::Stop => LocalOutcome::Stopped,
                    _ => LocalOutcome::StartFailed,
                });
                self.report_dirty = true;
            }
            return;
        }
        let op = params.op;
        if let Directive::Recover { failed } = directive {
            if self.recoveries.get(&service).is_some_and(|r| r.op >= op) {
                return;
            }
            self.recoveries.insert(service, LocalRecovery { op, failed, ok: None });
            self.actions.push_back(Action::Recovery { params, failed });
            self.report_dirty = true;
            return;
        }
        let l = self.locals.entry(service.clone()).or_default();
        if op <= l.op || l.pending_stop.as_ref().is_some_and(|p| op <= p.op) {
            return; // a duplicate or a stale directive
        }
        self.report_dirty = true;
        match directive {
            Directive::Start => {
                l.op = op;
                // From Offline: back to normal mode (the addresses are here).
                if l.phase == LocalPhase::Idle || l.phase == LocalPhase::Offline {
                    // Hot standby: the instance here becomes the registered
                    // one (promoted, not stopped): the start finds it running.
                    if let Some(sb) = self.standbys.get_mut(&service) {
                        sb.phase = StandbyPhase::Idle;
                        sb.not_before = None;
                    }
                    l.phase = LocalPhase::Starting;
                    l.outcome = None;
                    l.cleanup = false;
                    l.params = Some(params.clone());
                    self.actions.push_back(Action::Start { params });
                }
                // Otherwise it is already here: the report tells the decider.
            }
            Directive::Stop => match l.phase {
                LocalPhase::Running | LocalPhase::Failed => {
                    l.op = op;
                    l.phase = LocalPhase::Stopping;
                    l.params = Some(params.clone());
                    self.actions.push_back(Action::DisableEvents { service });
                    self.actions.push_back(Action::Stop { params });
                }
                LocalPhase::StopFailed => {
                    l.op = op;
                    l.phase = LocalPhase::Stopping;
                    l.params = Some(params.clone());
                    self.actions.push_back(Action::Stop { params });
                }
                LocalPhase::Offline => {
                    l.op = op;
                    l.phase = LocalPhase::Stopping;
                    l.params = Some(params.clone());
                    self.actions.push_back(Action::Stop { params });
                }
                LocalPhase::Starting | LocalPhase::GoingOffline => l.pending_stop = Some(params),
                LocalPhase::Stopping => l.op = op,
                LocalPhase::Idle => {
                    l.op = op;
                    l.outcome = Some(LocalOutcome::Stopped);
                }
            },
            Directive::Offline => match l.phase {
                LocalPhase::Running | LocalPhase::Failed | LocalPhase::Idle => {
                    // Off-line mode stops the application here: a hot-standby
                    // instance too.
                    if let Some(sb) = self.standbys.get_mut(&service) {
                        if matches!(sb.phase, StandbyPhase::Starting | StandbyPhase::Running) {
                            sb.phase = StandbyPhase::Stopping;
                            self.actions.push_back(Action::StandbyStop { service: service.clone() });
                        }
                    }
                    let running = l.phase != LocalPhase::Idle;
                    l.op = op;
                    l.phase = LocalPhase::GoingOffline;
                    l.outcome = None;
                    l.cleanup = false;
                    l.params = Some(params.clone());
                    if running {
                        self.actions.push_back(Action::DisableEvents { service });
                    }
                    self.actions.push_back(Action::Offline { params });
                }
                LocalPhase::Offline | LocalPhase::GoingOffline => l.op = op,
                // The decider sends it only to a settled instance.
                LocalPhase::Starting | LocalPhase::Stopping | LocalPhase::StopFailed => {}
            },
            Directive::Recover { .. } => unreachable!(),
        }
    }

    /// S4.6: the group is held off-line here now (or that failed: cleaned
    /// up like a failed start, so the decider places it elsewhere).
    fn on_offline_done(&mut self, service: &str, ok: bool) {
        let Some(l) = self.locals.get_mut(service) else { return };
        if l.phase != LocalPhase::GoingOffline {
            return;
        }
        self.report_dirty = true;
        let params = l.params.clone().expect("an offline action has its params");
        if start_ended(l, &mut self.actions, params, ok) {
            l.phase = LocalPhase::Offline;
        }
    }

    fn on_start_done(&mut self, service: &str, ok: bool) {
        let Some(l) = self.locals.get_mut(service) else { return };
        if l.phase != LocalPhase::Starting {
            return;
        }
        self.report_dirty = true;
        let params = l.params.clone().expect("a start has its params");
        if ok {
            l.outcome = Some(LocalOutcome::Started);
        }
        if start_ended(l, &mut self.actions, params, ok) {
            l.phase = LocalPhase::Running;
            self.actions.push_back(Action::EnableEvents { service: service.to_string() });
        }
    }

    fn on_stop_done(&mut self, service: &str, ok: bool) {
        let Some(l) = self.locals.get_mut(service) else { return };
        if l.phase != LocalPhase::Stopping {
            return;
        }
        self.report_dirty = true;
        if ok {
            l.phase = LocalPhase::Idle;
            l.outcome = Some(if l.cleanup { LocalOutcome::StartFailed } else { LocalOutcome::Stopped });
            l.cleanup = false;
        } else {
            l.phase = LocalPhase::StopFailed;
            let reason = AlertReason::StopFailed { node: self.me };
            self.actions.push_back(Action::Alert { service: service.to_string(), reason });
        }
    }

    fn make_report(&mut self) -> Report {
        self.report_seq += 1;
        let with_registry = self.registry_sent_for != self.epoch;
        self.registry_sent_for = self.epoch;
        Report {
            epoch: self.epoch,
            view: self.view_id,
            incarnation: self.incarnation,
            seq: self.report_seq,
            locals: self
                .locals
                .iter()
                .map(|(k, l)| (k.clone(), LocalReport { phase: l.phase, op: l.op, outcome: l.outcome }))
                .collect(),
            recoveries: self
                .recoveries
                .iter()
                .map(|(k, r)| (k.clone(), RecoveryReport { op: r.op, failed: r.failed, ok: r.ok }))
                .collect(),
            seen: self.registry.version,
            load: self.load,
            leaving: self.leaving_local.clone(),
            registry: if with_registry { Some(self.registry.clone()) } else { None },
            config_gen: self.config_gen,
        }
    }

    // ----- the loop -----

    fn flush(&mut self) {
        for _ in 0..10_000 {
            while let Some((from, msg)) = self.inbox.pop_front() {
                self.receive(from, msg);
            }
            if self.decider.as_ref().is_some_and(|d| d.dirty) {
                self.reconcile();
            }
            // Retired services of which nothing is left are forgotten (on
            // the decider this marks it dirty: the next pass publishes).
            self.purge_retired();
            if self.report_dirty {
                self.report_dirty = false;
                if let Some(m) = self.master {
                    let r = self.make_report();
                    self.send(m, Msg::Report(r));
                }
            }
            if self.inbox.is_empty() && !self.report_dirty && !self.decider.as_ref().is_some_and(|d| d.dirty) {
                break;
            }
        }
        for name in self.order.clone() {
            self.show(&name);
        }
        self.local_checks();
        self.stop_unmanaged_retired();
        self.standby_checks();
    }

    /// A retired service (a reload removed it here) that is still active
    /// here, while the current decider does not know it at all (its
    /// registry of this epoch has no entry: the decider started with a
    /// file without it), is stopped by this node itself, children first:
    /// no decider would ever deregister it (reload simulation seeds 51
    /// with directives sent again, 266, 1676, 1777: a db left running for
    /// good). A decider that knows it, even only as retired, deregisters
    /// it as usual.
    fn stop_unmanaged_retired(&mut self) {
        if self.retired.is_empty() || self.epoch == 0 || self.registry.version.epoch != self.epoch {
            return;
        }
        let me = self.me;
        for name in self.order.clone().into_iter().rev() {
            if !self.is_retired(&name) || self.registry.services.contains_key(&name) {
                continue;
            }
            let child_active = self
                .specs
                .values()
                .filter(|s| s.parent.as_deref() == Some(name.as_str()))
                .any(|s| self.locals.get(&s.name).is_some_and(|l| l.phase.active()));
            if child_active {
                continue;
            }
            let Some(l) = self.locals.get_mut(&name) else { continue };
            if !matches!(l.phase, LocalPhase::Running | LocalPhase::Failed | LocalPhase::Offline) || l.pending_stop.is_some() {
                continue; // a start or a stop under way ends first
            }
            let running = l.phase != LocalPhase::Offline;
            let params =
                ActionParams { service: name.clone(), node: me, reason: Reason::Deregister, previous: None, op: l.op, next: None };
            l.phase = LocalPhase::Stopping;
            l.params = Some(params.clone());
            if running {
                self.actions.push_back(Action::DisableEvents { service: name.clone() });
            }
            self.actions.push_back(Action::Stop { params });
            self.report_dirty = true;
        }
    }

    /// Notify (S1.13) and drained checks, from this node's registry copy.
    fn local_checks(&mut self) {
        let me = self.me;
        let mut out = Vec::new();
        for (name, e) in &self.registry.services {
            let Some(spec) = self.specs.get(name) else { continue };
            let root = self.root_spec(name);
            if !spec.has_notify || !root.may_run_on(me) || e.instances.contains_key(&me) {
                continue;
            }
            for (n, inst) in &e.instances {
                if inst.state != ServiceState::Registered || inst.offline || *n == me {
                    continue;
                }
                let seen = self.notified.get(name).and_then(|m| m.get(n));
                if seen.is_some_and(|o| *o >= inst.op) {
                    continue;
                }
                out.push((
                    name.clone(),
                    *n,
                    ActionParams {
                        service: name.clone(),
                        node: *n,
                        reason: Reason::Registered,
                        previous: e.previous.filter(|p| p != n),
                        op: inst.op,
                        next: None,
                    },
                ));
            }
        }
        for (name, n, params) in out {
            self.notified.entry(name).or_default().insert(n, params.op);
            self.actions.push_back(Action::Notify { params });
        }
        // Only once the decider recorded the leave: from then on it places
        // nothing there. And only for a leave this node was told of
        // (`NodeLeaving`) that has not ended: a registry copy older than a
        // finished leave still lists the node as leaving, and saying
        // `Drained` for it then would swallow the `Drained` of that node's
        // next leave (a new life's leave held for good; composed simulator,
        // seed 776).
        let leaving: BTreeSet<NodeId> = self.registry.leaving.intersection(&self.leaving_local).copied().collect();
        for n in leaving {
            if self.drained_sent.contains(&n) {
                continue;
            }
            let on_it = self.registry.services.values().any(|e| {
                e.instances.iter().any(|(k, i)| *k == n || i.recovery_on == Some(n))
            });
            let local_busy = n == me
                && (self.locals.values().any(|l| l.phase.active()) || self.recoveries.values().any(|r| r.ok.is_none()));
            // The registry copy must come from the current epoch.
            if !on_it && !local_busy && self.epoch != 0 && self.registry.version.epoch == self.epoch {
                self.drained_sent.insert(n);
                self.actions.push_back(Action::Drained { node: n });
            }
        }
    }

    // ----- hot standby -----

    /// This node's hot-standby instance of `service`.
    pub fn standby_phase(&self, service: &str) -> StandbyPhase {
        self.standbys.get(service).map(|l| l.phase).unwrap_or_default()
    }

    /// The node that should run `service`'s hot-standby instance, from this
    /// node's registry copy and view: the node a failover of the current
    /// owner would choose (the group's order: the preferred node, then the
    /// `nodes` list, else ascending ids), among the members that may run it,
    /// are not banned for it, not in standby mode and not leaving. None when
    /// the group is not hot, not registered on one node (Starting or
    /// Registered, not off-line), or no other node qualifies.
    pub fn hot_standby_of(&self, service: &str) -> Option<NodeId> {
        let spec = self.specs.get(service)?;
        if !spec.hot_standby || spec.parent.is_some() || spec.placement != Placement::One {
            return None;
        }
        let e = self.registry.services.get(service)?;
        let owner = self.owner_of(e)?;
        let reg = &self.registry;
        let mut c: Vec<NodeId> = self
            .members()
            .into_iter()
            .filter(|n| *n != owner && spec.may_run_on(*n) && !e.banned.contains_key(n))
            .filter(|n| !reg.standby.contains(n) && !reg.leaving.contains(n))
            .collect();
        if let (Preference::Ordered, Allowable::Nodes(list)) = (spec.preference, &spec.allowable) {
            c.sort_by_key(|n| list.iter().position(|x| x == n).unwrap_or(usize::MAX));
        }
        if let Some(i) = spec.preferred.and_then(|p| c.iter().position(|x| *x == p)) {
            let p = c.remove(i);
            c.insert(0, p);
        }
        c.first().copied()
    }

    /// The one node where the service is Starting or Registered (not off-line).
    fn owner_of(&self, e: &Entry) -> Option<NodeId> {
        let mut it = e
            .instances
            .iter()
            .filter(|(_, i)| matches!(i.state, ServiceState::Starting | ServiceState::Registered) && !i.offline);
        let (n, _) = it.next()?;
        if it.next().is_some() {
            return None;
        }
        Some(*n)
    }

    /// Whether this node's standby instance of `name` should run (Some),
    /// or be left as it is for now (None: in maintenance, while the group
    /// moves without an owner, or while a directive for this node is due).
    fn standby_wanted(&self, name: &str) -> Option<bool> {
        let Some(spec) = self.specs.get(name) else { return Some(false) };
        if !spec.hot_standby || self.is_retired(name) {
            return Some(false);
        }
        let reg = &self.registry;
        let Some(e) = reg.services.get(name) else { return Some(false) };
        if reg.maintenance {
            return None;
        }
        let me = self.me;
        if !e.wanted || e.blocked || reg.offline.contains_key(name) || self.leaving_local.contains(&me) {
            return Some(false);
        }
        if e.instances.contains_key(&me) || self.locals.get(name).is_some_and(|l| l.phase.active()) {
            // Registered (or about to be) here: the directive decides
            // (a start promotes the standby instance).
            return None;
        }
        self.owner_of(e)?;
        Some(self.hot_standby_of(name) == Some(me))
    }

    /// Starts or stops this node's hot-standby instances, from this node's
    /// registry copy (so it follows the group's owner and node list).
    fn standby_checks(&mut self) {
        // Only with a registry copy of the current epoch.
        if self.epoch == 0 || self.registry.version.epoch != self.epoch {
            return;
        }
        let mut names: BTreeSet<String> = self.specs.values().filter(|s| s.hot_standby).map(|s| s.name.clone()).collect();
        names.extend(self.standbys.keys().cloned());
        for name in names {
            let want = self.standby_wanted(&name);
            let now = self.now;
            let l = self.standbys.entry(name.clone()).or_default();
            match (want, l.phase) {
                (Some(true), StandbyPhase::Idle) if l.not_before.is_none_or(|t| now >= t) => {
                    l.phase = StandbyPhase::Starting;
                    self.actions.push_back(Action::StandbyStart { service: name });
                }
                (Some(false), StandbyPhase::Running) => {
                    l.phase = StandbyPhase::Stopping;
                    self.actions.push_back(Action::StandbyStop { service: name });
                }
                // Starting: checked again when the start ends.
                _ => {}
            }
        }
    }

    fn root_of<'a>(&'a self, name: &'a str) -> &'a str {
        let mut cur = name;
        while let Some(p) = self.specs[cur].parent.as_deref() {
            cur = p;
        }
        cur
    }
    fn root_spec(&self, name: &str) -> &ServiceSpec {
        &self.specs[self.root_of(name)]
    }

    fn status_of(&self, name: &str, since: Instant) -> ServiceStatus {
        let missing = Entry::new(false);
        let e = self.registry.services.get(name).unwrap_or(&missing);
        let spec = &self.specs[name];
        let root = self.root_of(name);
        let root_awaiting = self.registry.services.get(root).is_some_and(|r| r.awaiting_maturity);
        let nodes: BTreeMap<NodeId, ServiceState> = e.instances.iter().map(|(n, i)| (*n, i.state)).collect();
        let has = |s: ServiceState| nodes.values().any(|x| *x == s);
        let state = if has(ServiceState::Recovering) {
            ServiceState::Recovering
        } else if has(ServiceState::Stopping) {
            ServiceState::Stopping
        } else if has(ServiceState::Starting) && !has(ServiceState::Registered) {
            ServiceState::Starting
        } else if has(ServiceState::Registered) {
            ServiceState::Registered
        } else if has(ServiceState::Starting) {
            ServiceState::Starting
        } else {
            ServiceState::Deregistered
        };
        ServiceStatus {
            name: name.to_string(),
            state,
            node: if nodes.len() == 1 { nodes.keys().next().copied() } else { None },
            flags: Flags {
                transfer_intent: e.transfer_intent,
                awaiting_maturity: root_awaiting,
                has_notify: spec.has_notify,
            },
            failed: e.instances.values().any(|i| i.failed),
            complete: e.complete,
            offline: self.registry.offline.get(root).cloned(),
            offline_on: e
                .instances
                .iter()
                .filter(|(_, i)| i.offline && i.state == ServiceState::Registered)
                .map(|(n, _)| *n)
                .collect(),
            nodes,
            since,
        }
    }

    /// Emits `Changed` if the service's status changed since last shown.
    fn show(&mut self, name: &str) {
        let mut st = self.status_of(name, self.now);
        let old = &self.shown[name];
        st.since = old.since;
        if st == *old {
            return;
        }
        st.since = self.now;
        self.shown.insert(name.to_string(), st.clone());
        self.actions.push_back(Action::Changed { status: st });
    }

    // ----- the decider -----

    fn on_report(&mut self, from: NodeId, mut r: Report) {
        let members = self.members();
        let Some(d) = self.decider.as_mut() else { return };
        if !members.contains(&from) || self.departed_at.get(&from).is_some_and(|at| r.view <= *at) {
            return; // not a member, or a report of a life that departed
        }
        if r.epoch != d.epoch {
            let epoch = d.epoch;
            self.send(from, Msg::Collect { epoch, incarnation: self.incarnation });
            return;
        }
        let known = d.incarnations.get(&from).copied();
        if known.is_some_and(|k| k > r.incarnation) {
            return; // an earlier life
        }
        if let Some(old) = d.reports.get(&from) {
            if (old.incarnation, old.seq) >= (r.incarnation, r.seq) {
                return; // a duplicate or stale report
            }
            if r.registry.is_none() && old.incarnation == r.incarnation {
                r.registry = old.registry.clone();
            }
        }
        let first = d.reports.get(&from).is_none_or(|o| o.incarnation != r.incarnation);
        // The node reconfigured: what it refused before (a service it did
        // not have yet) may run there now.
        let reconfigured = d.reports.get(&from).is_some_and(|o| o.incarnation == r.incarnation && o.config_gen != r.config_gen);
        if reconfigured {
            for e in self.registry.services.values_mut() {
                e.banned.remove(&from);
            }
            d.alerted.retain(|_, a| !matches!(a, AlertReason::AllNodesFailed | AlertReason::NoNode));
        }
        d.incarnations.insert(from, r.incarnation);
        d.reports.insert(from, r);
        d.dirty = true;
        if known.is_some_and(|k| k < self.decider.as_ref().unwrap().incarnations[&from]) {
            // A new life: nothing of the old one runs there any more.
            self.lose_node(from);
        }
        let d = self.decider.as_ref().unwrap();
        if first && d.collected && from != self.me {
            self.send_registry(from);
        }
        let d = self.decider.as_ref().unwrap();
        if !d.collected && members.iter().all(|m| d.reports.contains_key(m)) {
            self.finish_collect();
        }
    }

    /// Everything registered on `n` is lost (it restarted).
    fn lose_node(&mut self, n: NodeId) {
        for (name, e) in self.registry.services.iter_mut() {
            let has_recovery = self.specs.get(name).is_some_and(|s| s.has_recovery);
            if let Some(inst) = e.instances.get_mut(&n) {
                if inst.state != ServiceState::Recovering {
                    e.previous = Some(n);
                    if has_recovery {
                        *inst = Instance::new(ServiceState::Recovering, inst.op);
                    } else {
                        e.instances.remove(&n);
                    }
                }
            }
            for inst in e.instances.values_mut() {
                if inst.recovery_on == Some(n) {
                    inst.recovery_on = None;
                }
            }
        }
    }

    /// Every member reported: continue from the newest registry, corrected
    /// by what the members say runs where.
    fn finish_collect(&mut self) {
        let members = self.members();
        let d = self.decider.as_mut().unwrap();
        let mut base = self.registry.clone();
        for r in d.reports.values() {
            if let Some(reg) = &r.registry {
                if reg.version > base.version {
                    base = reg.clone();
                }
            }
        }
        base.version = Version { epoch: d.epoch, seq: 0 };
        for (name, e) in base.services.iter_mut() {
            // Instances on members are rebuilt from their reports; those on
            // non-members are lost (recovered by the reconcile pass).
            e.instances.retain(|n, i| !members.contains(n) || i.state == ServiceState::Recovering);
            for i in e.instances.values_mut() {
                if let Some(r) = i.recovery_on {
                    let running = d.reports.get(&r).and_then(|rep| rep.recoveries.get(name)).is_some_and(|x| x.op == i.op);
                    if !running {
                        i.recovery_on = None;
                    }
                }
            }
        }
        for spec in self.specs.values() {
            base.services.entry(spec.name.clone()).or_insert_with(|| Entry::new(spec.parent.is_none() && spec.auto_register));
        }
        // A service this decider is not configured with (a reload removed
        // it before this node started, with this node's file) is nobody's
        // to manage here: its entry is not kept, frozen. A node where it
        // still runs, retired by its own reload, stops it itself
        // ([`Services::stop_unmanaged_retired`]).
        base.services.retain(|name, _| self.specs.contains_key(name));
        // Leaves are state of the members' reports (reconcile recomputes it).
        base.leaving.clear();
        self.registry = base;
        d.collected = true;
        d.dirty = true;
        // The reconcile pass that follows publishes it to every member.
        d.last = None;
    }

    fn next_op(&mut self) -> OpId {
        let d = self.decider.as_mut().unwrap();
        d.next_op += 1;
        OpId { epoch: d.epoch, n: d.next_op }
    }

    fn alert(&mut self, service: &str, reason: AlertReason) {
        let d = self.decider.as_mut().unwrap();
        if d.alerted.get(service) != Some(&reason) {
            d.alerted.insert(service.to_string(), reason.clone());
            self.actions.push_back(Action::Alert { service: service.to_string(), reason });
        }
    }

    fn directive(&mut self, to: NodeId, directive: Directive, params: ActionParams) {
        let epoch = self.decider.as_ref().unwrap().epoch;
        let incarnation = self.incarnation_of(to);
        if to != self.me {
            let (version, now) = (self.registry.version, self.now);
            let key = (params.service.clone(), to, matches!(directive, Directive::Recover { .. }));
            let sent = Sent { incarnation, directive: directive.clone(), params: params.clone(), after: version, at: now };
            self.decider.as_mut().unwrap().sent.insert(key, sent);
        }
        self.send(to, Msg::Do { epoch, incarnation, directive, params });
    }

    /// Directives lost on the way are sent again (issue 13: a transfer's
    /// Start went over a control connection that then closed on a timeout;
    /// the decider waited for the target to start the group for ever, and
    /// the group ran nowhere for 180 s).
    ///
    /// A directive is missing on its target when the registry still
    /// records it (the instance has its op; for a recovery, the failed
    /// node's instance is recovered there with its op), and the target's
    /// latest report, from the life it was sent to, has seen a registry
    /// version published after it (so the directive, sent before on the
    /// same connection, should have arrived) but not applied its op. It
    /// is sent again, same epoch, same op: at once, and then every
    /// [`DIRECTIVE_RESEND_NS`] or at the next registry version the target
    /// reports, while it stays missing. Also when its report has not seen
    /// a newer registry: once [`DIRECTIVE_RESEND_NS`] passed since it was
    /// sent, for the registry after it may have been lost with it and
    /// nothing newer may follow (chaos, `loss`, 2026-12-07: a switchover's
    /// Start and its registry sent while every connection to the target was
    /// timing out; the group ran nowhere for 180 s). The target applies an op once
    /// (a duplicate, or a directive older than what it applied, is
    /// ignored), so a copy that was not needed is harmless. A stop held
    /// while the target still starts the service is not visible in its
    /// reports: it is not sent again until the start ended.
    fn resend_lost_directives(&mut self) {
        let Some(d) = self.decider.as_ref() else { return };
        let (epoch, version, now) = (d.epoch, self.registry.version, self.now);
        let mut drop = Vec::new();
        let mut again = Vec::new();
        let mut next: Option<Instant> = None;
        for (key, u) in &d.sent {
            let (name, n, recover) = (&key.0, key.1, key.2);
            let e = self.registry.services.get(name);
            let current = match u.directive {
                Directive::Recover { failed } => e
                    .and_then(|e| e.instances.get(&failed))
                    .is_some_and(|i| i.state == ServiceState::Recovering && i.recovery_on == Some(n) && i.op == u.params.op),
                _ => e.and_then(|e| e.instances.get(&n)).is_some_and(|i| i.state != ServiceState::Recovering && i.op == u.params.op),
            };
            let Some(rep) = d.reports.get(&n).filter(|r| r.incarnation == u.incarnation) else {
                drop.push(key.clone());
                continue;
            };
            let applied = if recover {
                rep.recoveries.get(name).is_some_and(|r| r.op >= u.params.op)
            } else {
                rep.locals.get(name).is_some_and(|l| l.op >= u.params.op)
            };
            if !current || applied {
                drop.push(key.clone());
                continue;
            }
            let held = u.directive == Directive::Stop
                && rep.locals.get(name).is_some_and(|l| matches!(l.phase, LocalPhase::Starting | LocalPhase::GoingOffline));
            if held {
                continue;
            }
            // Sent again at once when the target's report has seen the
            // registry published after it; else once a period passed: the
            // registry after it may have been lost with it (every control
            // connection to the target closed meanwhile), and when nothing
            // changes no newer one comes to show the loss.
            let due = u.at.plus_ns(DIRECTIVE_RESEND_NS);
            if rep.seen > u.after || now >= due {
                again.push(key.clone());
                let t = now.plus_ns(DIRECTIVE_RESEND_NS);
                next = Some(next.map_or(t, |x| x.min(t)));
            } else {
                next = Some(next.map_or(due, |x| x.min(due)));
            }
        }
        // A registry lost on the way: a member's latest report still shows
        // an older version a period after it was last sent there.
        let mut registries = Vec::new();
        if d.collected && d.last.is_some() {
            for m in self.members().into_iter().filter(|m| *m != self.me) {
                let Some(rep) = d.reports.get(&m) else { continue };
                if rep.seen >= version {
                    continue;
                }
                let due = d.registry_sent.get(&m).map_or(now, |t| t.plus_ns(DIRECTIVE_RESEND_NS));
                if now >= due {
                    registries.push(m);
                    let t = now.plus_ns(DIRECTIVE_RESEND_NS);
                    next = Some(next.map_or(t, |x| x.min(t)));
                } else {
                    next = Some(next.map_or(due, |x| x.min(due)));
                }
            }
        }
        let d = self.decider.as_mut().unwrap();
        d.resend_at = next;
        for k in drop {
            d.sent.remove(&k);
        }
        let mut msgs = Vec::new();
        for k in again {
            let u = d.sent.get_mut(&k).unwrap();
            u.after = version;
            u.at = now;
            msgs.push((k.1, Msg::Do { epoch, incarnation: u.incarnation, directive: u.directive.clone(), params: u.params.clone() }));
        }
        for (to, msg) in msgs {
            self.send(to, msg);
        }
        for m in registries {
            self.send_registry(m);
        }
    }

    /// The decider sends its registry to `to` and notes when (for
    /// [`Services::resend_lost_directives`]).
    fn send_registry(&mut self, to: NodeId) {
        let now = self.now;
        self.decider.as_mut().unwrap().registry_sent.insert(to, now);
        self.send(to, Msg::Registry(self.registry.clone()));
    }

    /// Nodes the decider may place services on (members that reported in
    /// this epoch, not standby, not leaving).
    fn usable(&self) -> BTreeSet<NodeId> {
        let d = self.decider.as_ref().unwrap();
        self.members()
            .into_iter()
            .filter(|n| {
                d.reports.contains_key(n) && !self.registry.standby.contains(n) && !self.registry.leaving.contains(n)
            })
            .collect()
    }

    /// The root's candidates for `name`, best first.
    fn candidates(&self, root: &str, usable: &BTreeSet<NodeId>) -> Vec<NodeId> {
        let spec = &self.specs[root];
        let e = &self.registry.services[root];
        let mut c: Vec<NodeId> =
            usable.iter().copied().filter(|n| spec.may_run_on(*n) && !self.is_banned(e, *n)).collect();
        let d = self.decider.as_ref().unwrap();
        let load = |n: NodeId| d.reports.get(&n).map(|r| r.load).unwrap_or(0);
        match (spec.preference, &spec.allowable) {
            (Preference::Ordered, Allowable::Nodes(list)) => {
                c.sort_by_key(|n| list.iter().position(|x| x == n).unwrap_or(usize::MAX))
            }
            (Preference::Ordered, Allowable::Any) => {}
            (Preference::Unordered, _) => c.sort_by_key(|n| (load(*n), *n)),
        }
        if let Some(p) = spec.preferred {
            if let Some(i) = c.iter().position(|x| *x == p) {
                let p = c.remove(i);
                c.insert(0, p);
            }
        }
        c
    }

    fn incarnation_of(&self, n: NodeId) -> u64 {
        self.decider.as_ref().and_then(|d| d.reports.get(&n)).map(|r| r.incarnation).unwrap_or(0)
    }

    /// Banned in this life of the node (a new life starts clean).
    fn is_banned(&self, e: &Entry, n: NodeId) -> bool {
        e.banned.get(&n).is_some_and(|inc| *inc == self.incarnation_of(n))
    }

    /// Rank for failback: lower is better.
    fn rank(&self, root: &str, n: NodeId) -> usize {
        let spec = &self.specs[root];
        if spec.preferred == Some(n) {
            return 0;
        }
        match (spec.preference, &spec.allowable) {
            (Preference::Ordered, Allowable::Nodes(list)) => 1 + list.iter().position(|x| *x == n).unwrap_or(usize::MAX - 1),
            _ => 1,
        }
    }

    fn apply_requests(&mut self) {
        let reqs = std::mem::take(&mut self.decider.as_mut().unwrap().requests);
        for r in reqs {
            let d = self.decider.as_mut().unwrap();
            d.dirty = true;
            match r {
                Request::Maintenance { on } => self.registry.maintenance = on,
                Request::Standby { node, on } => {
                    if on {
                        self.registry.standby.insert(node);
                    } else {
                        self.registry.standby.remove(&node);
                    }
                }
                Request::Register { service } => {
                    if self.specs.contains_key(&service) {
                        let root = self.root_of(&service).to_string();
                        let e = self.registry.services.get_mut(&root).unwrap();
                        e.wanted = true;
                        // The failures of the whole group are cleared: a
                        // child whose start failed on every node stays
                        // banned there otherwise, and never runs again.
                        let group: Vec<String> =
                            self.specs.keys().filter(|n| self.root_of(n) == root).cloned().collect();
                        for name in group {
                            if let Some(e) = self.registry.services.get_mut(&name) {
                                e.blocked = false;
                                e.banned.clear();
                            }
                            self.decider.as_mut().unwrap().alerted.remove(&name);
                        }
                    }
                }
                Request::Deregister { service } => {
                    if self.specs.contains_key(&service) {
                        let root = self.root_of(&service).to_string();
                        let e = self.registry.services.get_mut(&root).unwrap();
                        e.wanted = false;
                        e.target = None;
                    }
                }
                Request::Offline { service, on } => {
                    if !self.specs.contains_key(&service) {
                        continue;
                    }
                    let root = self.root_of(&service).to_string();
                    if self.specs[&root].placement == Placement::Every {
                        continue;
                    }
                    self.decider.as_mut().unwrap().alerted.remove(&root);
                    if on {
                        self.registry.offline.insert(root, OfflineCause::Operator);
                    } else {
                        self.registry.offline.remove(&root);
                    }
                }
                Request::Switchover { service, to } => {
                    if !self.specs.contains_key(&service) {
                        continue;
                    }
                    let root = self.root_of(&service).to_string();
                    if self.specs[&root].placement == Placement::Every {
                        continue;
                    }
                    let usable = self.usable();
                    let cur = self.registry.services[&root].instances.keys().next().copied();
                    let dest = match to {
                        Some(t) => Some(t).filter(|t| usable.contains(t) && self.specs[&root].may_run_on(*t)),
                        None => self.candidates(&root, &usable).into_iter().find(|n| Some(*n) != cur),
                    };
                    match (dest, cur) {
                        (Some(t), _) => {
                            let e = self.registry.services.get_mut(&root).unwrap();
                            e.banned.remove(&t);
                            e.target = Some(t);
                        }
                        (None, Some(c)) => self.alert(&root, AlertReason::LastPossibleNode { node: c }),
                        (None, None) => self.alert(&root, AlertReason::NoNode),
                    }
                }
            }
        }
    }

    fn reconcile(&mut self) {
        let Some(d) = self.decider.as_mut() else { return };
        d.dirty = false;
        if !d.collected {
            // A member that departed may have been the last one missing.
            let members = self.members();
            let d = self.decider.as_ref().unwrap();
            if members.iter().all(|m| d.reports.contains_key(m)) {
                self.finish_collect();
            }
            let d = self.decider.as_mut().unwrap();
            if !d.collected {
                return;
            }
            d.dirty = false;
        }
        self.apply_requests();
        let members = self.members();
        // Leaving nodes told by any member's report (state, not deltas).
        let reported_leaving: BTreeSet<NodeId> = {
            let d = self.decider.as_ref().unwrap();
            d.reports.values().flat_map(|r| r.leaving.iter().copied()).collect()
        };
        self.registry.leaving = reported_leaving
            .into_iter()
            .chain(self.leaving_local.iter().copied())
            .filter(|n| members.contains(n))
            .collect();
        // Passes until nothing changes: a parent waits for its children's
        // stops, a child for its parent's start.
        for _ in 0..64 {
            let snap = self.registry.clone();
            let mut stable: BTreeMap<String, BTreeSet<NodeId>> = BTreeMap::new();
            for name in self.order.clone() {
                self.absorb(&name, &members);
                self.show(&name);
                // A departed node's instances are lost in maintenance too
                // (a fact, not a decision): a new decider that never saw
                // the departed life's report would not learn it from the
                // next life's (composed simulator, seed 62).
                self.lost(&name, &members);
                if !self.registry.maintenance {
                    self.decide(&name, &mut stable);
                }
                self.show(&name);
            }
            if self.registry == snap {
                break;
            }
        }
        // Completed registrations (S1.11): every member has the version.
        let me = self.me;
        let mine = self.registry.version;
        let d = self.decider.as_mut().unwrap();
        let acked = |m: &NodeId, v: Version| {
            if *m == me {
                mine >= v
            } else {
                d.reports.get(m).is_some_and(|r| r.seen >= v)
            }
        };
        let done: Vec<String> =
            d.commit_at.iter().filter(|(_, v)| members.iter().all(|m| acked(m, **v))).map(|(k, _)| k.clone()).collect();
        for k in done {
            d.commit_at.remove(&k);
            if let Some(e) = self.registry.services.get_mut(&k) {
                if e.instances.values().any(|i| i.state == ServiceState::Registered) {
                    e.complete = true;
                }
            }
        }
        let unchanged = d.last.as_ref().is_some_and(|last| {
            let mut cur = self.registry.clone();
            cur.version = last.version;
            cur == *last
        });
        if !unchanged {
            self.publish(&members);
        }
        self.resend_lost_directives();
    }

    fn publish(&mut self, members: &BTreeSet<NodeId>) {
        self.registry.version.seq += 1;
        let v = self.registry.version;
        let d = self.decider.as_mut().unwrap();
        d.last = Some(self.registry.clone());
        for (name, e) in self.registry.services.iter() {
            if !e.complete && e.instances.values().any(|i| i.state == ServiceState::Registered) {
                d.commit_at.entry(name.clone()).or_insert(v);
            }
        }
        let to: Vec<NodeId> =
            members.iter().copied().filter(|m| *m != self.me && d.reports.contains_key(m)).collect();
        for m in to {
            self.send_registry(m);
        }
        // Our own acknowledgement is immediate; if everyone else already has
        // it (single node), the next pass completes it.
        if members.len() == 1 {
            self.decider.as_mut().unwrap().dirty = true;
        }
    }

    /// Observations from the reports: starts and stops that completed.
    fn absorb(&mut self, name: &str, members: &BTreeSet<NodeId>) {
        let me = self.me;
        let mut registered = false;
        let mut ban = Vec::new();
        let mut alerts = Vec::new();
        {
            let d = self.decider.as_ref().unwrap();
            let e = self.registry.services.get_mut(name).unwrap();
            // Recoveries that ended first: a recovered instance of a node's
            // earlier life (Recovering, under that node's id) is gone before
            // that node's new life's own instance is read below. Read after
            // it (as before), the new life's running instance was not
            // adopted in this pass, the group looked registered nowhere and
            // was started on a second node (services simulation with
            // failing actions, seed 869 of 2000: ip on nodes 1 and 3).
            for m in members {
                let Some(rep) = d.reports.get(m) else { continue };
                // Recoveries running on m.
                if let Some(rr) = rep.recoveries.get(name) {
                    if let Some(inst) = e.instances.get(&rr.failed) {
                        if inst.state == ServiceState::Recovering && inst.recovery_on == Some(*m) && inst.op == rr.op {
                            match rr.ok {
                                Some(true) => {
                                    e.instances.remove(&rr.failed);
                                }
                                Some(false) => {
                                    e.instances.remove(&rr.failed);
                                    e.blocked = true;
                                    alerts.push(AlertReason::RecoveryFailed { node: rr.failed });
                                }
                                None => {}
                            }
                        }
                    }
                }
            }
            for m in members {
                let Some(rep) = d.reports.get(m) else { continue };
                // This service on m.
                let lr = rep.locals.get(name);
                match (e.instances.get_mut(m), lr) {
                    (Some(inst), Some(lr)) if inst.state != ServiceState::Recovering && lr.op >= inst.op => {
                        inst.op = lr.op;
                        match lr.phase {
                            LocalPhase::Starting => inst.state = ServiceState::Starting,
                            LocalPhase::Running | LocalPhase::Failed => {
                                // Back from off-line mode in place is no new
                                // registration (S4.6).
                                if inst.state == ServiceState::Starting && !inst.mode_change {
                                    registered = true;
                                }
                                inst.state = ServiceState::Registered;
                                inst.failed = lr.phase == LocalPhase::Failed;
                                inst.offline = false;
                                inst.mode_change = false;
                            }
                            // Under way: the state the decider set stays.
                            LocalPhase::GoingOffline => {}
                            LocalPhase::Offline => {
                                if inst.state == ServiceState::Starting && !inst.mode_change {
                                    registered = true;
                                }
                                inst.state = ServiceState::Registered;
                                inst.failed = false;
                                inst.offline = true;
                                inst.mode_change = false;
                            }
                            LocalPhase::Stopping => {
                                inst.state = ServiceState::Stopping;
                                inst.mode_change = false;
                            }
                            LocalPhase::StopFailed => {
                                inst.state = ServiceState::Stopping;
                                if !inst.stuck {
                                    alerts.push(AlertReason::StopFailed { node: *m });
                                }
                                inst.stuck = true;
                            }
                            LocalPhase::Idle => {
                                if lr.outcome == Some(LocalOutcome::StartFailed) {
                                    ban.push((*m, rep.incarnation));
                                }
                                e.instances.remove(m);
                            }
                        }
                    }
                    (None, Some(lr)) if lr.phase.active() => {
                        // Runs there although we did not know: adopt it.
                        let state = match lr.phase {
                            LocalPhase::Starting | LocalPhase::GoingOffline => ServiceState::Starting,
                            LocalPhase::Running | LocalPhase::Failed | LocalPhase::Offline => {
                                registered = true;
                                ServiceState::Registered
                            }
                            _ => ServiceState::Stopping,
                        };
                        let mut inst = Instance::new(state, lr.op);
                        inst.failed = lr.phase == LocalPhase::Failed;
                        inst.stuck = lr.phase == LocalPhase::StopFailed;
                        inst.offline = matches!(lr.phase, LocalPhase::GoingOffline | LocalPhase::Offline);
                        e.instances.insert(*m, inst);
                    }
                    _ => {}
                }
            }
            if registered {
                e.transfer_intent = false;
                let on = e.instances.keys().next().copied();
                e.pinned = e.target.filter(|t| Some(*t) == on);
                // A switchover asked while the group was starting elsewhere
                // (`baton register GROUP NODE`) still holds.
                e.target = e.target.filter(|t| Some(*t) != on);
                e.blocked = false;
                e.matured = true;
                e.awaiting_maturity = false;
                e.complete = false;
                e.previous = e.instances.keys().copied().find(|_| true).or(e.previous);
                let _ = me;
            }
            for b in &ban {
                e.banned.insert(b.0, b.1);
            }
        }
        if registered {
            let d = self.decider.as_mut().unwrap();
            d.alerted.remove(name);
            d.commit_at.remove(name);
        }
        for a in alerts {
            self.alert(name, a);
        }
    }

    /// Instances on nodes that are no longer members: recovered (S1.13) or
    /// simply forgotten. The failed node is never waited for (S4.4).
    fn lost(&mut self, name: &str, members: &BTreeSet<NodeId>) {
        let has_recovery = self.specs[name].has_recovery;
        let e = self.registry.services.get_mut(name).unwrap();
        let gone: Vec<NodeId> = e.instances.keys().copied().filter(|n| !members.contains(n)).collect();
        for n in gone {
            let inst = e.instances.get_mut(&n).unwrap();
            if inst.state == ServiceState::Recovering {
                continue;
            }
            e.previous = Some(n);
            if has_recovery {
                inst.state = ServiceState::Recovering;
                inst.recovery_on = None;
                inst.failed = false;
                inst.stuck = false;
                inst.offline = false;
                inst.mode_change = false;
            } else {
                e.instances.remove(&n);
            }
        }
        for inst in e.instances.values_mut() {
            if inst.recovery_on.is_some_and(|r| !members.contains(&r)) {
                inst.recovery_on = None;
            }
        }
    }

    fn children_on(&self, name: &str, n: NodeId) -> bool {
        self.specs
            .values()
            .filter(|s| s.parent.as_deref() == Some(name))
            .any(|s| self.registry.services[&s.name].instances.contains_key(&n))
    }

    fn params(&self, name: &str, node: NodeId, reason: Reason, op: OpId) -> ActionParams {
        let e = &self.registry.services[name];
        ActionParams { service: name.to_string(), node, reason, previous: e.previous.filter(|p| *p != node), op, next: None }
    }

    fn start_on(&mut self, name: &str, n: NodeId, reason: Reason) {
        let op = self.next_op();
        let e = self.registry.services.get_mut(name).unwrap();
        e.instances
            .insert(n, Instance::new(ServiceState::Starting, op));
        e.complete = false;
        let p = self.params(name, n, reason, op);
        self.directive(n, Directive::Start, p);
    }

    fn stop_on(&mut self, name: &str, n: NodeId, reason: Reason, transfer: bool) {
        self.stop_on_next(name, n, reason, transfer, None)
    }

    fn stop_on_next(&mut self, name: &str, n: NodeId, reason: Reason, transfer: bool, next: Option<NodeId>) {
        let op = self.next_op();
        let e = self.registry.services.get_mut(name).unwrap();
        let inst = e.instances.get_mut(&n).unwrap();
        inst.state = ServiceState::Stopping;
        inst.op = op;
        e.previous = Some(n);
        e.transfer_intent = transfer;
        let p = ActionParams { next, ..self.params(name, n, reason, op) };
        self.directive(n, Directive::Stop, p);
    }

    /// S4.6: hold `name` off-line on `n`: from a running instance
    /// (`in_place`: the application stops, the addresses stay) or from
    /// nothing (the addresses are acquired, nothing is started).
    fn offline_on(&mut self, name: &str, n: NodeId, reason: Reason, in_place: bool) {
        let op = self.next_op();
        let e = self.registry.services.get_mut(name).unwrap();
        let inst = e.instances.entry(n).or_insert_with(|| Instance::new(ServiceState::Starting, op));
        inst.op = op;
        inst.offline = true;
        inst.mode_change = in_place;
        if in_place {
            inst.state = ServiceState::Stopping;
        } else {
            e.complete = false;
        }
        let p = self.params(name, n, reason, op);
        self.directive(n, Directive::Offline, p);
    }

    /// S4.6: back to normal mode in place (the node holds the addresses).
    fn online_on(&mut self, name: &str, n: NodeId) {
        let op = self.next_op();
        let inst = self.registry.services.get_mut(name).unwrap().instances.get_mut(&n).unwrap();
        inst.op = op;
        inst.state = ServiceState::Starting;
        inst.mode_change = true;
        let p = self.params(name, n, Reason::Online, op);
        self.directive(n, Directive::Start, p);
    }

    /// Whether `name`'s parent changes mode in place on `n` (its children
    /// stay there meanwhile).
    fn parent_switching_on(&self, name: &str, n: NodeId) -> bool {
        let Some(p) = self.specs[name].parent.as_deref() else { return false };
        self.registry.services[p].instances.get(&n).is_some_and(|i| i.mode_change)
    }

    /// S4.6 for a registered instance of a placement-One service on `n`.
    /// Returns whether it decided (false: the normal decisions apply).
    #[allow(clippy::too_many_arguments)]
    fn decide_offline(
        &mut self,
        name: &str,
        root: &str,
        n: NodeId,
        parent_nodes: Option<&BTreeSet<NodeId>>,
        wanted: bool,
        usable: &BTreeSet<NodeId>,
        cands: &[NodeId],
        stable: &mut BTreeMap<String, BTreeSet<NodeId>>,
    ) -> bool {
        let keep = |stable: &mut BTreeMap<String, BTreeSet<NodeId>>| {
            stable.entry(name.to_string()).or_default().insert(n);
        };
        if let Some(pn) = parent_nodes {
            if !pn.contains(&n) {
                if self.parent_switching_on(name, n) {
                    keep(stable); // the parent changes mode here: stay
                    return true;
                }
                return false; // the parent moves or stops: stop (S1.12)
            }
        }
        let cause = self.registry.offline.get(root).cloned();
        let inst_off = self.registry.services[name].instances[&n].offline;
        if cause.is_none() && !inst_off {
            return false;
        }
        let is_root = name == root;
        if is_root && !wanted {
            return false; // deregistered: stopped (addresses released)
        }
        if is_root && !usable.contains(&n) {
            // Leaving or standby: the group moves, still off-line (a plain
            // stop: nothing to hand over, the application is not running).
            self.registry.services.get_mut(name).unwrap().transfer_intent = true;
            if !self.children_on(name, n) {
                self.stop_on(name, n, Reason::Transfer, true);
            }
            return true;
        }
        if let Some(OfflineCause::Failed { node }) = cause {
            if is_root && cands.iter().any(|c| *c != n) {
                // Another possible node is there now: out of off-line mode,
                // and the normal decisions move the failed group there.
                self.registry.offline.remove(root);
                if node == n {
                    let inc = self.incarnation_of(n);
                    self.registry.services.get_mut(name).unwrap().banned.insert(n, inc);
                }
                return false;
            }
        }
        match (cause.is_some(), inst_off) {
            (true, false) => {
                // Children first: they go off-line before their parent.
                let children_busy = self.specs.values().filter(|s| s.parent.as_deref() == Some(name)).any(|s| {
                    self.registry.services[&s.name]
                        .instances
                        .get(&n)
                        .is_some_and(|i| !(i.offline && i.state == ServiceState::Registered))
                });
                if !children_busy {
                    self.offline_on(name, n, Reason::Offline, true);
                }
                keep(stable);
            }
            (true, true) => {
                // Held off-line: no failback, no failover for a monitor (the
                // monitors are off). An operator's switchover moves it.
                let target = self.registry.services[name].target.filter(|t| *t != n);
                match target {
                    Some(t) if is_root && cands.contains(&t) => {
                        self.registry.services.get_mut(name).unwrap().transfer_intent = true;
                        if !self.children_on(name, n) {
                            self.stop_on(name, n, Reason::Switchover, true);
                        }
                    }
                    Some(_) if is_root => {
                        self.registry.services.get_mut(name).unwrap().target = None;
                        keep(stable);
                    }
                    _ => keep(stable),
                }
            }
            (false, true) => {
                // Normal mode again: parent first (a child waits, in place,
                // until its parent runs here in normal mode).
                let parent_ready = self.specs[name].parent.as_deref().is_none_or(|p| {
                    self.registry.services[p]
                        .instances
                        .get(&n)
                        .is_some_and(|i| i.state == ServiceState::Registered && !i.offline && !i.mode_change)
                });
                if parent_ready {
                    self.online_on(name, n);
                } else {
                    keep(stable);
                }
            }
            (false, false) => unreachable!(),
        }
        true
    }

    /// Whether any service of `root`'s group failed its monitor on `n`.
    fn group_failed_on(&self, root: &str, n: NodeId) -> bool {
        self.order.iter().filter(|s| self.root_of(s) == root).any(|s| {
            self.registry.services.get(s).and_then(|e| e.instances.get(&n)).is_some_and(|i| i.failed)
        })
    }

    fn decide(&mut self, name: &str, stable: &mut BTreeMap<String, BTreeSet<NodeId>>) {
        let spec = self.specs[name].clone();
        let root = self.root_of(name).to_string();
        let usable = self.usable();
        let cands = self.candidates(&root, &usable);

        // Recoveries waiting for a node.
        let waiting: Vec<NodeId> = self.registry.services[name]
            .instances
            .iter()
            .filter(|(_, i)| i.state == ServiceState::Recovering && i.recovery_on.is_none())
            .map(|(n, _)| *n)
            .collect();
        for f in waiting {
            // The node chosen by the choosing parameters; any member if none
            // is allowable (the recovery must run somewhere).
            let r = cands.first().copied().or_else(|| usable.iter().next().copied());
            let Some(r) = r else { continue };
            let op = self.next_op();
            let inst = self.registry.services.get_mut(name).unwrap().instances.get_mut(&f).unwrap();
            inst.recovery_on = Some(r);
            inst.op = op;
            let p = ActionParams { service: name.to_string(), node: r, reason: Reason::Failover, previous: Some(f), op, next: None };
            self.directive(r, Directive::Recover { failed: f }, p);
        }

        let is_child = spec.parent.is_some();
        let parent_nodes: Option<BTreeSet<NodeId>> =
            spec.parent.as_ref().map(|p| stable.get(p).cloned().unwrap_or_default());
        // A retired service (removed by a reconfiguration) is deregistered.
        let retired = self.is_retired(name);
        let wanted = self.registry.services[&root].wanted && !self.registry.services[name].blocked && !retired;

        if self.specs[&root].placement == Placement::Every {
            self.decide_every(name, &root, wanted, &cands, &usable, parent_nodes, stable);
            return;
        }

        // Placement One (a root, or a member of a One group).
        let e = &self.registry.services[name];
        if e.instances.values().any(|i| i.state != ServiceState::Registered) {
            return; // a start, stop or recovery is under way: wait for it
        }
        let here: Vec<NodeId> = e.instances.keys().copied().collect();
        if here.len() > 1 {
            // Never expected (a start happens only where nothing runs), but
            // if reports ever show two, keep the best one.
            let keep = here.iter().copied().min_by_key(|n| cands.iter().position(|c| c == n).unwrap_or(usize::MAX));
            for n in here {
                if Some(n) != keep && !self.children_on(name, n) {
                    self.stop_on(name, n, Reason::Transfer, false);
                }
            }
            return;
        }
        if let Some(&n) = here.first() {
            // S4.6: off-line mode, and the way in and out of it.
            if !retired && self.decide_offline(name, &root, n, parent_nodes.as_ref(), wanted, &usable, &cands, stable) {
                return;
            }
            let mut stop: Option<(Reason, bool)> = None;
            // Where a planned move goes (the `next` hint of its Stop).
            let mut next: Option<NodeId> = None;
            if retired {
                stop = Some((Reason::Deregister, false));
            } else if let Some(pn) = &parent_nodes {
                if !pn.contains(&n) {
                    let t = self.registry.services[spec.parent.as_ref().unwrap()].transfer_intent;
                    stop = Some((Reason::Parent, t));
                }
            } else if !wanted {
                stop = Some((Reason::Deregister, false));
            } else if !usable.contains(&n) || !self.specs[&root].may_run_on(n) {
                // Leaving or standby, or no longer allowed there (a
                // reconfiguration): the move is not optional.
                stop = Some((Reason::Transfer, true));
                next = cands.iter().copied().find(|c| *c != n);
            } else {
                let alt = cands.iter().copied().find(|c| *c != n);
                let target = self.registry.services[name].target.filter(|t| *t != n);
                // A monitor failure in the group (or an earlier one that
                // already banned this node while the children stopped).
                let failed = self.group_failed_on(&root, n) || self.is_banned(&self.registry.services[name], n);
                if failed {
                    match alt {
                        Some(_) => {
                            let inc = self.incarnation_of(n);
                            self.registry.services.get_mut(name).unwrap().banned.insert(n, inc);
                            stop = Some((Reason::MonitorFailed, true));
                        }
                        // S4.7: switching is disabled on the last possible node.
                        None => {
                            self.alert(name, AlertReason::LastPossibleNode { node: n });
                            // Claims 7/8 of the 004 seed: the address stays
                            // available there, the application is stopped
                            // (off-line mode, S4.6) until an operator or a
                            // new possible node ends it.
                            if !self.registry.offline.contains_key(&root) {
                                self.registry.offline.insert(root.clone(), OfflineCause::Failed { node: n });
                                self.alert(&root, AlertReason::OfflineOnFailure { node: n });
                            }
                        }
                    }
                } else if let Some(t) = target {
                    if cands.contains(&t) {
                        stop = Some((Reason::Switchover, true));
                        next = Some(t);
                    } else {
                        self.registry.services.get_mut(name).unwrap().target = None;
                    }
                } else if spec.transfer_cost == TransferCost::Free
                    && self.registry.services[name].pinned != Some(n)
                    && cands.first().is_some_and(|b| self.rank(&root, *b) < self.rank(&root, n))
                {
                    stop = Some((Reason::Failback, true));
                    next = cands.first().copied();
                }
                if stop.is_none() && alt.is_none() && !failed {
                    self.alert(name, AlertReason::LastPossibleNode { node: n });
                }
            }
            match stop {
                None => {
                    stable.entry(name.to_string()).or_default().insert(n);
                }
                Some((reason, transfer)) => {
                    // The transfer intent is set as the transfer begins, so
                    // that the children stopping first carry it too.
                    self.registry.services.get_mut(name).unwrap().transfer_intent = transfer;
                    // Children stop first (S1.12).
                    if !self.children_on(name, n) {
                        self.stop_on_next(name, n, reason, transfer, next);
                    }
                }
            }
            return;
        }

        // Deregistered: register it somewhere? A group off-line after a
        // failure is taken over in normal mode (its failed node is gone).
        if name == root && matches!(self.registry.offline.get(&root), Some(OfflineCause::Failed { .. })) {
            self.registry.offline.remove(&root);
        }
        if !wanted {
            let e = self.registry.services.get_mut(name).unwrap();
            e.transfer_intent = false;
            e.awaiting_maturity = false;
            return;
        }
        let dest = if let Some(pn) = &parent_nodes {
            let e = &self.registry.services[name];
            pn.iter().copied().find(|n| !self.is_banned(e, *n))
        } else {
            if !self.maturity(&root, &usable) {
                return;
            }
            let e = &self.registry.services[name];
            match e.target.filter(|t| cands.contains(t)) {
                Some(t) => Some(t),
                None => cands.first().copied(),
            }
        };
        let members = self.members();
        let e = &self.registry.services[name];
        match dest {
            Some(n) => {
                let reason = if e.target == Some(n) {
                    Reason::Switchover
                } else if is_child {
                    Reason::Parent
                } else if e.previous.is_some_and(|p| !members.contains(&p)) {
                    Reason::Failover
                } else if e.transfer_intent {
                    Reason::Transfer
                } else {
                    Reason::Register
                };
                if self.registry.offline.contains_key(&root) {
                    // S4.6: the addresses only (taken over off-line).
                    self.offline_on(name, n, reason, false);
                } else {
                    self.start_on(name, n, reason);
                }
            }
            None => {
                let e = self.registry.services.get_mut(name).unwrap();
                e.transfer_intent = false;
                if is_child {
                    if parent_nodes.as_ref().is_some_and(|p| !p.is_empty()) {
                        self.alert(name, AlertReason::AllNodesFailed);
                    }
                    return;
                }
                let spec = &self.specs[&root];
                let e = &self.registry.services[name];
                let allowed: Vec<NodeId> = usable.iter().copied().filter(|n| spec.may_run_on(*n)).collect();
                let reason = if !allowed.is_empty() && allowed.iter().all(|n| self.is_banned(e, *n)) {
                    AlertReason::AllNodesFailed
                } else {
                    AlertReason::NoNode
                };
                self.alert(name, reason);
            }
        }
    }

    /// Placement Every: an instance on every candidate (or wherever the
    /// parent runs). A failed monitor restarts the instance in place.
    #[allow(clippy::too_many_arguments)]
    fn decide_every(
        &mut self,
        name: &str,
        root: &str,
        wanted: bool,
        cands: &[NodeId],
        usable: &BTreeSet<NodeId>,
        parent_nodes: Option<BTreeSet<NodeId>>,
        stable: &mut BTreeMap<String, BTreeSet<NodeId>>,
    ) {
        let matured = parent_nodes.is_some() || (wanted && self.maturity(root, usable));
        let e = &self.registry.services[name];
        let want: BTreeSet<NodeId> = if !wanted || !matured {
            BTreeSet::new()
        } else if let Some(pn) = &parent_nodes {
            pn.iter().copied().filter(|n| !self.is_banned(e, *n)).collect()
        } else {
            cands.iter().copied().collect()
        };
        let insts: Vec<(NodeId, Instance)> = e.instances.iter().map(|(n, i)| (*n, i.clone())).collect();
        let mut keep = BTreeSet::new();
        for (n, i) in &insts {
            if i.state != ServiceState::Registered {
                continue;
            }
            if want.contains(n) && !i.failed {
                keep.insert(*n);
            } else if !self.children_on(name, *n) {
                let reason = if i.failed {
                    Reason::MonitorFailed
                } else if !wanted {
                    Reason::Deregister
                } else if parent_nodes.is_some() {
                    Reason::Parent
                } else {
                    Reason::Transfer
                };
                self.stop_on(name, *n, reason, false);
            }
        }
        for n in want {
            if !self.registry.services[name].instances.contains_key(&n) {
                let reason = if parent_nodes.is_some() { Reason::Parent } else { Reason::Register };
                self.start_on(name, n, reason);
            }
        }
        if keep.is_empty() && wanted && matured && self.registry.services[name].instances.is_empty() {
            self.alert(name, AlertReason::NoNode);
        }
        stable.insert(name.to_string(), keep);
    }

    /// Whether the cluster is mature for `root` (sets awaiting_maturity).
    fn maturity(&mut self, root: &str, usable: &BTreeSet<NodeId>) -> bool {
        let now = self.now;
        let spec = self.specs[root].clone();
        let members = self.members();
        let e = self.registry.services.get_mut(root).unwrap();
        if e.matured {
            return true;
        }
        // Nodes count once they reported to this decider (so that the
        // preferred node, when it makes the cluster mature, is a candidate).
        let d = self.decider.as_ref().unwrap();
        let up: Vec<NodeId> =
            members.iter().copied().filter(|n| spec.may_run_on(*n) && d.reports.contains_key(n)).collect();
        if up.is_empty() || !usable.iter().any(|n| spec.may_run_on(*n)) {
            e.awaiting_maturity = false;
            self.decider.as_mut().unwrap().awaiting_since.remove(root);
            return false;
        }
        let m = spec.maturity;
        let d = self.decider.as_mut().unwrap();
        let since = *d.awaiting_since.entry(root.to_string()).or_insert(now);
        let mature = !m.applies()
            || (m.primary_up && spec.preferred.is_some_and(|p| up.contains(&p)))
            || m.nodes_up.is_some_and(|k| up.len() as u64 >= k as u64)
            || m.after_ms.is_some_and(|t| now >= since.plus_ms(t));
        if mature {
            e.matured = true;
            e.awaiting_maturity = false;
            d.awaiting_since.remove(root);
        } else {
            e.awaiting_maturity = true;
        }
        mature
    }
}
