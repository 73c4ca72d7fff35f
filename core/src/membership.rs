//! The membership manager: node states (S1.1), joining through the master
//! (S1.8), graceful and forced leave, the ordered transition framework with
//! levels and barriers (S1.2–S1.6, Table 1 of the 001 seed), halting a node
//! that was forced out (S1.7), node shutdown on failure with distress (S0),
//! and the group membership protocol with subgroup leaders (S3, [`crate::gmp`])
//! committing every change of the group.
//!
//! One [`Membership`] runs on every node. It is sans-IO: feed it
//! [`Input`]s with `handle(now, input)`, pull [`Action`]s with
//! `poll_action()`, and call it again at `next_deadline()`.
//!
//! ## How it works
//! * The **master** is the node that formed the cluster, or after it failed
//!   the lowest-id joined member that still sees a quorum. It alone decides
//!   every change and keeps the authoritative [`ClusterState`], which it
//!   broadcasts (on every change, and periodically so that losses heal).
//! * Nodes send the master a [`Report`]: their incarnation, whether they want
//!   to join or leave, the levels their subsystems registered, and every
//!   transition step their subsystems completed. Reports are state, not
//!   deltas: a lost one is repaired by the next.
//! * A change of the group (nodes joining, failed nodes forced out, a leave
//!   finishing) is first committed with the S3 protocol among the members of
//!   the new group; then the master applies it and starts the transitions.
//! * A transition of node X walks the registered levels, bottom-up for a join
//!   and a forced leave, top-down for a graceful leave; each level runs its
//!   barriers 0..n. The master moves a transition to its next step only when
//!   every participant reported the current step done; a node reports a step
//!   done when all of its local subsystems at that level acknowledged it (a
//!   node with no subsystem at a level completes it at once).
//! * Several transitions (of different nodes) progress at once, each at its
//!   own level; one node's transition is only ever notified in order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::gmp::{ChangeId, Gmp, GmpAction, GmpConfig, GmpInput, GmpMsg};
use crate::{Instant, NodeId};

/// S1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum NodeState {
    Inactive,
    Joining,
    Joined,
    Leaving,
    ForcedLeaving,
}

/// The three transition types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Kind {
    Join,
    Leave,
    ForcedLeave,
}

impl Kind {
    /// The state a node has while a transition of this kind runs.
    pub fn state(self) -> NodeState {
        match self {
            Kind::Join => NodeState::Joining,
            Kind::Leave => NodeState::Leaving,
            Kind::ForcedLeave => NodeState::ForcedLeaving,
        }
    }
    /// The state after all nodes acknowledged every level (Table 1).
    pub fn end_state(self) -> NodeState {
        match self {
            Kind::Join => NodeState::Joined,
            Kind::Leave | Kind::ForcedLeave => NodeState::Inactive,
        }
    }
    /// Join and forced leave go bottom-up, a graceful leave top-down (S1.3).
    pub fn bottom_up(self) -> bool {
        !matches!(self, Kind::Leave)
    }
}

/// Barriers a subsystem asks for, per transition type (S1.5), at least 1 each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Barriers {
    pub join: u32,
    pub leave: u32,
    pub forced_leave: u32,
}

impl Barriers {
    pub const ONE: Barriers = Barriers { join: 1, leave: 1, forced_leave: 1 };
    pub fn of(&self, k: Kind) -> u32 {
        match k {
            Kind::Join => self.join,
            Kind::Leave => self.leave,
            Kind::ForcedLeave => self.forced_leave,
        }
        .max(1)
    }
}

/// A registered level (a global order) with its barrier counts.
///
/// Serialized compactly (it is repeated in every node entry and every
/// transition's path of the state the master sends to every node): the bare
/// level when every barrier count is 1 (the agent's built-in levels and
/// most subsystems), else `[level, join, leave, forced_leave]`. The struct
/// form `{"level":..,"barriers":{"join":..,"leave":..,"forced_leave":..}}`
/// is accepted too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LevelSpec {
    pub level: u32,
    pub barriers: Barriers,
}

#[cfg(feature = "serde")]
impl serde::Serialize for LevelSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.barriers == Barriers::ONE {
            return s.serialize_u32(self.level);
        }
        use serde::ser::SerializeTuple;
        let b = self.barriers;
        let mut t = s.serialize_tuple(4)?;
        t.serialize_element(&self.level)?;
        t.serialize_element(&b.join)?;
        t.serialize_element(&b.leave)?;
        t.serialize_element(&b.forced_leave)?;
        t.end()
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for LevelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LevelSpec, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LevelSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a level, [level, join, leave, forced_leave] or {level, barriers}")
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<LevelSpec, E> {
                let level = u32::try_from(v).map_err(|_| E::custom(format!("level {v} out of range")))?;
                Ok(LevelSpec { level, barriers: Barriers::ONE })
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<LevelSpec, E> {
                let v = u64::try_from(v).map_err(|_| E::custom(format!("level {v} out of range")))?;
                self.visit_u64(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<LevelSpec, A::Error> {
                let mut next = |i: usize| -> Result<u32, A::Error> { a.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self)) };
                let (level, join, leave, forced_leave) = (next(0)?, next(1)?, next(2)?, next(3)?);
                if a.next_element::<IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(5, &self));
                }
                Ok(LevelSpec { level, barriers: Barriers { join, leave, forced_leave } })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<LevelSpec, A::Error> {
                let (mut level, mut barriers) = (None, None);
                while let Some(k) = a.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*k {
                        "level" => level = Some(a.next_value()?),
                        "barriers" => barriers = Some(a.next_value()?),
                        _ => {
                            a.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(LevelSpec {
                    level: level.ok_or_else(|| A::Error::missing_field("level"))?,
                    barriers: barriers.ok_or_else(|| A::Error::missing_field("barriers"))?,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// One step of a transition: a level and a barrier of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Step {
    pub level: u32,
    pub barrier: u32,
}

/// Identifies a transition: the node it is about, that node's incarnation, and the kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TransitionId {
    pub node: NodeId,
    pub incarnation: u64,
    pub kind: Kind,
}

/// A completed step, as reported by a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StepDone {
    pub id: TransitionId,
    pub step: Step,
}

/// A transition in flight (part of the replicated state).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Transition {
    pub id: TransitionId,
    /// The levels it walks, in walking order, with their barrier counts.
    pub path: Vec<LevelSpec>,
    /// Index into `path` of the current level.
    pub pos: usize,
    pub barrier: u32,
    /// The nodes whose acknowledgement every step needs.
    pub participants: BTreeSet<NodeId>,
    /// The node asked to leave while joining: reverse at the next level boundary (S1.6).
    /// (Left out of the encoding when false, its usual value.)
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_false"))]
    pub leave_pending: bool,
}

#[cfg(feature = "serde")]
fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(feature = "serde")]
fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Transition {
    pub fn step(&self) -> Step {
        Step { level: self.path[self.pos].level, barrier: self.barrier }
    }
}

/// What the master knows of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeEntry {
    pub state: NodeState,
    pub incarnation: u64,
    /// Levels registered by this node's subsystems (from its report).
    pub levels: BTreeSet<LevelSpec>,
}

/// Identifies a version of the cluster state: (term, master, version).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ViewId {
    pub term: u64,
    pub master: NodeId,
    /// The master's incarnation: a master that restarted never reuses a view id.
    pub master_incarnation: u64,
    pub version: u64,
}

impl ViewId {
    /// Whether `self` supersedes `other`: a higher term wins; in the same
    /// term the lower master id wins (two nodes that formed the cluster
    /// apart); from the same master, the higher version.
    pub fn supersedes(&self, other: &ViewId) -> bool {
        if self.term != other.term {
            return self.term > other.term;
        }
        if self.master != other.master {
            return self.master < other.master;
        }
        if self.master_incarnation != other.master_incarnation {
            return self.master_incarnation > other.master_incarnation;
        }
        self.version > other.version
    }
}

/// The replicated cluster state, authoritative at the master.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClusterState {
    pub view: ViewId,
    /// The view in which this cluster was formed: kept through takeovers,
    /// so that a successor's state is recognised as the same cluster.
    pub origin: ViewId,
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    pub transitions: BTreeMap<NodeId, Transition>,
    /// The last S3 group change applied to this state.
    #[cfg_attr(feature = "serde", serde(default))]
    pub change: ChangeId,
    /// Whether the group ever held a majority of the configured nodes
    /// (either of two). A cluster formed apart (its master could see a
    /// majority's heartbeats but not reach them, e.g. its control channel
    /// slower than `form_ns` next to a running cluster) admits nobody until
    /// it can admit such a majority at once: alone, it would run services
    /// the running cluster runs too. It yields to a quorate cluster of
    /// another lineage, and a quorate cluster never yields to it.
    #[cfg_attr(feature = "serde", serde(default))]
    pub quorate: bool,
    /// The whole cluster is being stopped (`baton stop --all`): every
    /// joined node leaves gracefully in one change, nobody is admitted, and
    /// the master leaves last. (Left out of the encoding when false.)
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_false"))]
    pub stopping: bool,
}

impl ClusterState {
    pub fn state_of(&self, n: NodeId) -> NodeState {
        self.nodes.get(&n).map(|e| e.state).unwrap_or(NodeState::Inactive)
    }
    /// The group: nodes joining, joined or leaving.
    pub fn group(&self) -> BTreeSet<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, e)| matches!(e.state, NodeState::Joining | NodeState::Joined | NodeState::Leaving))
            .map(|(n, _)| *n)
            .collect()
    }
    pub fn states(&self) -> BTreeMap<NodeId, NodeState> {
        self.nodes.iter().map(|(n, e)| (*n, e.state)).collect()
    }
    /// The cluster-wide level table: the union of every group member's levels.
    pub fn levels(&self) -> BTreeMap<u32, LevelSpec> {
        let mut t = BTreeMap::new();
        for n in self.group() {
            for l in &self.nodes[&n].levels {
                t.entry(l.level).or_insert(*l);
            }
        }
        t
    }
}

/// Why the master does not admit a node that asks to join
/// ([`Membership::join_waits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinBlock {
    /// Its failure detector says the node is down (`failed` set).
    Failed,
    /// Its last report is older than two resend periods.
    OldReport { age_ns: u64 },
    /// A transition of that node (a forced leave) still runs.
    InTransition,
    /// The cluster is being stopped.
    Stopping,
    /// Another group change (S3) is being committed first.
    ChangePending { change: ChangeId, gmp: Option<ChangeId> },
    /// This master has no quorum.
    NotQuorate,
    /// Nothing known blocks it: it should be in the next change.
    NotYet,
}

/// What a node wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Want {
    Nothing,
    Join,
    Leave,
}

/// A node's report to the master (state, not deltas).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Report {
    pub incarnation: u64,
    pub want: Want,
    pub levels: BTreeSet<LevelSpec>,
    pub done: BTreeSet<StepDone>,
    pub seen: ViewId,
    /// The state this node follows, sent to a successor taking over from a
    /// failed master, so that it continues from the most advanced one.
    pub state: Option<ClusterState>,
    /// The highest S3 change id this node has seen: a new master (even one
    /// that just restarted) numbers its changes above every earlier one.
    pub max_change: ChangeId,
    /// An operator asked this node to stop the whole cluster
    /// ([`Input::StopAll`]). (Left out of the encoding when false.)
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_false"))]
    pub stop_all: bool,
    /// The token of the last [`Msg::Gather`] this node got from the node
    /// the report goes to (0: none): a successor counts a report as an
    /// answer to its recovery only with its current token, so that a report
    /// sent before the recovery began and delivered late (the successor was
    /// paused with it in its queue) never counts (sim seed 9916).
    /// (Left out of the encoding when 0.)
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_zero"))]
    pub answers: u64,
    /// The term of this node's last vote (0: none): the term of the last
    /// [`Msg::Gather`] it answered, or of its own recovery. A member votes
    /// once per term; a successor that sees a vote of another node at its
    /// term or above, not for it, gathers again in a higher term (one vote
    /// per term, issue 11). (Left out of the encoding when 0.)
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_zero"))]
    pub voted: u64,
}

/// The S3 group data: the member records of the sender's subgroup.
pub type Records = BTreeMap<NodeId, (u64, BTreeSet<LevelSpec>)>;

/// A master unheard on the control channel for this many formation
/// periods counts as dead even if the datapath still hears it.
pub const MASTER_SILENCE_FORMS: u64 = 4;

/// Messages between membership managers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Msg {
    Report(Report),
    State(ClusterState),
    Gmp(GmpMsg<Records>),
    /// The master's periodic sign of life to a node whose last report
    /// showed it has the current state (the others get the whole state).
    Alive { view: ViewId },
    /// A successor (the master of `view` failed) gathering the survivors'
    /// states: report now (to the successor, with the state we follow),
    /// instead of at the next resend period. `token` names this recovery:
    /// the reports that answer it echo it ([`Report::answers`]). `term` is
    /// the term the successor takes over in if a majority answers: each
    /// member answers (votes for) one successor per term.
    Gather {
        view: ViewId,
        #[cfg_attr(feature = "serde", serde(default))]
        token: u64,
        #[cfg_attr(feature = "serde", serde(default))]
        term: u64,
    },
}

/// A local subsystem (S1.2), as registered with this node's manager.
pub type SubsystemId = u32;

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Input {
    /// Start clustering: join (or form) the cluster.
    Start,
    /// Leave the cluster gracefully.
    Leave,
    /// Stop the whole cluster (an operator's `baton stop --all`): every
    /// node leaves gracefully, at once, the master last.
    StopAll,
    /// A local subsystem registers at `level` (S1.2).
    Register { subsystem: SubsystemId, spec: LevelSpec },
    Deregister { subsystem: SubsystemId },
    /// A local subsystem acknowledges a notification.
    Ack { subsystem: SubsystemId, id: TransitionId, step: Step },
    /// A local member detected a critical failure (S0.1); `from` is the
    /// reporting subsystem, if any.
    LocalFailure { from: Option<SubsystemId>, reason: u32 },
    /// The datapath: a peer is alive / silent / sent a distress signal.
    PeerUp { node: NodeId },
    PeerSilent { node: NodeId },
    PeerDistress { node: NodeId, reason: u32 },
    Receive { from: NodeId, msg: Msg },
    /// Time passed (timers).
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Action {
    Send { to: NodeId, msg: Msg },
    /// Tell a local subsystem about a transition step (Table 1). `states`
    /// carries every node's state along with it.
    Notify {
        subsystem: SubsystemId,
        id: TransitionId,
        step: Step,
        states: BTreeMap<NodeId, NodeState>,
    },
    /// S0.2: send the distress signal to every node, on every link.
    SendDistress { reason: u32 },
    /// S0.2: terminate a local member preemptively, telling it with an
    /// error that clustering is ending.
    Terminate { subsystem: SubsystemId, reason: u32 },
    /// Clustering ended on this node: forced out (S1.7), lost quorum, or
    /// shut down on failure (S0). No action follows this one.
    Halt { why: HaltReason },
    /// This node finished its graceful leave.
    Left,
    /// The state this node follows changed (for status and logs).
    StateChanged { view: ViewId },
    /// Master: a transition finished on every participant (for logs, and
    /// for the simulator's completeness check).
    TransitionCompleted { id: TransitionId, participants: BTreeSet<NodeId>, path: Vec<LevelSpec> },
    /// A peer failure was processed (once per failure; a distress once per
    /// life of the sender, however many copies arrive).
    PeerFailed { node: NodeId, distress: bool },
    /// The heartbeats of a node that had left gracefully stopped: not a
    /// failure, nothing to recover.
    PeerGone { node: NodeId },
    /// The cluster is being stopped as a whole (`stopping` in the state):
    /// this node leaves, and must not start again by itself.
    StopRequested,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum HaltReason {
    ForcedOut,
    /// This node formed a cluster apart; a cluster with a lower master id wins.
    Superseded,
    /// The master failed and no joined member was left to succeed it.
    ClusterLost,
    LostQuorum,
    LocalFailure { reason: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Config {
    pub me: NodeId,
    pub incarnation: u64,
    /// Every configured node, this one included.
    pub nodes: BTreeSet<NodeId>,
    pub subgroup_size: usize,
    /// Period of reports and state broadcasts, and of S3 retransmissions,
    /// while anything is in flight; in a quiet cluster the reports and the
    /// master's refresh go out every `form_ns` instead (see `quiet`).
    pub resend_ns: u64,
    /// How long a starting node waits for a master before it forms the cluster.
    pub form_ns: u64,
    /// Coalescing window: a report made stale by a change, and the master's
    /// broadcast of a new state, are sent at most this long after the
    /// first change, with every change made in the meantime (one report
    /// for all the steps acknowledged in a burst, one broadcast for all the
    /// transitions advanced by a burst of reports). 0: at once.
    #[cfg_attr(feature = "serde", serde(default))]
    pub batch_ns: u64,
    /// A cluster of two configured nodes with a shared disk for fencing:
    /// when they lose sight of each other both sides keep quorum and race
    /// to preempt the other's key (the fencing level); the loser fences
    /// itself (docs/fencing.md). Without it the lower id keeps quorum.
    #[cfg_attr(feature = "serde", serde(default))]
    pub two_node_race: bool,
}

/// The agent's coalescing window ([`Config::batch_ns`]).
pub const DEFAULT_BATCH_NS: u64 = 2_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Started; member of no group yet, or joining.
    Active,
    Halted,
    Left,
}

/// Counters for benchmarks and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Stats {
    pub messages_sent: u64,
    pub gmp_messages_sent: u64,
    pub changes_committed: u64,
    pub ignored_failures: u64,
}

struct Pending {
    change: ChangeId,
    /// When the S3 change last made progress here (see `Gmp::progress_mark`).
    started: Instant,
    mark: u64,
    joins: BTreeSet<NodeId>,
    forced: BTreeSet<NodeId>,
}

/// A local subsystem's registration and notification progress.
#[derive(Clone, Debug)]
struct Local {
    spec: LevelSpec,
    /// Notified and not acknowledged yet: (transition, step).
    notified: BTreeSet<(TransitionId, Step)>,
    acked: BTreeSet<(TransitionId, Step)>,
}

pub struct Membership {
    cfg: Config,
    phase: Phase,
    want: Want,
    started_at: Instant,
    state: Option<ClusterState>,
    /// Nodes the datapath reported up, or that sent us something.
    heard: BTreeSet<NodeId>,
    /// Nodes the datapath reported silent or distressed (until up again).
    failed: BTreeSet<NodeId>,
    /// When each node's latest report arrived.
    report_at: BTreeMap<NodeId, Instant>,
    /// Since when our master is gone and someone else should succeed it.
    orphan_since: Option<Instant>,
    /// Joining: since when only our datapath says the master is silent,
    /// with no joined member to succeed it.
    unseen_master_since: Option<Instant>,
    /// Which branch halted this node, for the agent's log (`halt_path`).
    halt_path: Option<&'static str>,
    /// When the master we follow last sent us its state.
    master_contact: Instant,
    /// The highest term heard of (reports, states).
    max_term: u64,
    /// Members of the S3 change in progress.
    gmp_members: BTreeSet<NodeId>,
    /// The id of the change `gmp_members` belongs to.
    gmp_change: ChangeId,
    /// The newest incarnation heard from each node (reports, states).
    known_inc: BTreeMap<NodeId, u64>,
    /// Successor of a failed master: gathering states since this time.
    recovering: Option<Instant>,
    /// Successor: the token of the recovery in progress (0: none), the
    /// term it takes over in, how many recoveries this life began, and
    /// when its `Gather` last went out.
    gather_token: u64,
    gather_term: u64,
    gather_seq: u64,
    gather_sent: Instant,
    /// Follower: the last `Gather` received, (from, token, term); reports
    /// to that node answer it if this node has not voted for another in
    /// that term.
    gathered: Option<(NodeId, u64, u64)>,
    /// This life's last vote: (term, successor, token). A member answers
    /// (gives its state to) at most one successor per term, its own
    /// recovery included, and only in a term above every earlier vote
    /// (like Raft's `votedFor`); kept for the life of the process (a new
    /// life is no member of the old group and does not vote in it).
    vote: Option<(u64, NodeId, u64)>,
    /// Peers whose distress we processed (until they are up again).
    distressed: BTreeSet<NodeId>,
    locals: BTreeMap<SubsystemId, Local>,
    done: BTreeSet<StepDone>,
    /// Master only: the latest report of every node.
    reports: BTreeMap<NodeId, Report>,
    /// Master only: the change being committed with S3.
    pending: Option<Pending>,
    gmp: Gmp<Records>,
    max_change: ChangeId,
    /// When the periodic reports (and the master's refresh) last went out;
    /// None: at once.
    last_resend: Option<Instant>,
    last_broadcast: Option<ViewId>,
    report_dirty: bool,
    /// When a stale report goes out (coalescing window).
    report_due: Option<Instant>,
    /// Master: when the state, changed since it was last sent, goes out.
    state_due: Option<Instant>,
    shutting_down: bool,
    /// This node asked for a cluster-wide stop, or follows a stopping state.
    stop_all: bool,
    actions: VecDeque<Action>,
    stats: Stats,
    /// The `now` of the input being handled.
    now: Instant,
}

impl Membership {
    pub fn new(cfg: Config) -> Membership {
        let gmp = Gmp::new(GmpConfig { me: cfg.me, subgroup_size: cfg.subgroup_size, retransmit_ns: cfg.resend_ns });
        Membership {
            phase: Phase::Idle,
            want: Want::Nothing,
            started_at: Instant::ZERO,
            state: None,
            heard: BTreeSet::from([cfg.me]),
            failed: BTreeSet::new(),
            recovering: None,
            gather_token: 0,
            gather_term: 0,
            gather_seq: 0,
            gather_sent: Instant::ZERO,
            gathered: None,
            vote: None,
            known_inc: BTreeMap::new(),
            gmp_members: BTreeSet::new(),
            gmp_change: 0,
            max_term: 0,
            master_contact: Instant::ZERO,
            orphan_since: None,
            unseen_master_since: None,
            halt_path: None,
            report_at: BTreeMap::new(),
            distressed: BTreeSet::new(),
            locals: BTreeMap::new(),
            done: BTreeSet::new(),
            reports: BTreeMap::new(),
            pending: None,
            gmp,
            max_change: 0,
            last_resend: None,
            last_broadcast: None,
            report_dirty: true,
            report_due: None,
            state_due: None,
            shutting_down: false,
            stop_all: false,
            actions: VecDeque::new(),
            stats: Stats::default(),
            now: Instant::ZERO,
            cfg,
        }
    }

    pub fn me(&self) -> NodeId {
        self.cfg.me
    }
    pub fn state(&self) -> Option<&ClusterState> {
        self.state.as_ref()
    }
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.gmp_messages_sent = self.gmp.messages_sent();
        s
    }
    pub fn is_halted(&self) -> bool {
        self.phase == Phase::Halted
    }
    pub fn has_left(&self) -> bool {
        self.phase == Phase::Left
    }
    pub fn is_master(&self) -> bool {
        self.phase == Phase::Active && self.state.as_ref().map(|s| s.view.master) == Some(self.cfg.me)
    }
    /// This node's state as the state it follows says.
    pub fn my_state(&self) -> NodeState {
        match self.state.as_ref().and_then(|s| s.nodes.get(&self.cfg.me)) {
            // An entry of an older life of this node is not this life's state.
            Some(e) if e.incarnation == self.cfg.incarnation => e.state,
            _ => NodeState::Inactive,
        }
    }

    /// At the master: every node whose report asks to join (a new life,
    /// Inactive in the state) and why it is not being admitted right now
    /// (None when it is in the change being committed). For the agent's log
    /// of joins that stall (issue 13); changes nothing.
    pub fn join_waits(&self) -> Vec<(NodeId, Option<JoinBlock>)> {
        let Some(s) = self.state.as_ref() else { return Vec::new() };
        if !self.is_master() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (n, r) in &self.reports {
            let Some(e) = s.nodes.get(n) else { continue };
            if *n == self.cfg.me || r.want != Want::Join || r.incarnation <= e.incarnation || e.state != NodeState::Inactive {
                continue;
            }
            let in_change = self.pending.as_ref().is_some_and(|p| p.joins.contains(n));
            let why = if in_change {
                None
            } else if self.failed.contains(n) {
                Some(JoinBlock::Failed)
            } else if self.report_at.get(n).is_none_or(|t| self.now.since(*t) > 2 * self.cfg.resend_ns) {
                Some(JoinBlock::OldReport { age_ns: self.report_at.get(n).map(|t| self.now.since(*t)).unwrap_or(u64::MAX) })
            } else if s.transitions.contains_key(n) {
                Some(JoinBlock::InTransition)
            } else if s.stopping {
                Some(JoinBlock::Stopping)
            } else if let Some(p) = &self.pending {
                Some(JoinBlock::ChangePending { change: p.change, gmp: self.gmp.current() })
            } else if !self.quorum(s) {
                Some(JoinBlock::NotQuorate)
            } else {
                Some(JoinBlock::NotYet)
            };
            out.push((*n, why));
        }
        out
    }

    /// One line of internals, for debugging simulations.
    pub fn debug_line(&self) -> String {
        format!(
            "phase {:?} want {:?} failed {:?} heard {:?} known_inc {:?} successor {:?} recovering {:?} pending {:?} gmp {:?} max_change {}",
            self.phase,
            self.want,
            self.failed,
            self.heard,
            self.known_inc,
            self.successor(),
            self.recovering,
            self.pending.as_ref().map(|p| p.change),
            self.gmp.current(),
            self.max_change
        )
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        if self.phase != Phase::Active {
            return None;
        }
        let mut d = self.resend_at();
        if let Some(g) = self.gmp.next_deadline() {
            d = d.min(g);
        }
        if self.state.is_none() {
            d = d.min(self.started_at.plus_ns(self.cfg.form_ns));
        }
        if let Some(r) = self.report_due.filter(|_| self.report_dirty) {
            d = d.min(r);
        }
        if let Some(s) = self.state_due {
            d = d.min(s);
        }
        Some(d)
    }

    fn send(&mut self, to: NodeId, msg: Msg) {
        if to == self.cfg.me {
            return;
        }
        self.stats.messages_sent += 1;
        self.actions.push_back(Action::Send { to, msg });
    }

    /// Which branch halted this node (`ClusterLost` has three), for the
    /// agent's log; `None` before a halt or for a reason with one branch.
    pub fn halt_path(&self) -> Option<&'static str> {
        self.halt_path
    }

    fn halt(&mut self, why: HaltReason) {
        if self.phase == Phase::Halted {
            return;
        }
        self.phase = Phase::Halted;
        self.actions.push_back(Action::Halt { why });
    }

    pub fn handle(&mut self, now: Instant, input: Input) {
        if matches!(self.phase, Phase::Halted | Phase::Left) {
            return;
        }
        self.now = self.now.max(now);
        match input {
            Input::Start => {
                if self.phase == Phase::Idle {
                    self.phase = Phase::Active;
                    self.want = Want::Join;
                    self.started_at = now;
                    self.last_resend = None;
                }
            }
            Input::Leave => {
                self.want = Want::Leave;
                self.report_dirty = true;
            }
            Input::StopAll => {
                self.want = Want::Leave;
                self.report_dirty = true;
                if !self.stop_all {
                    self.stop_all = true;
                    self.actions.push_back(Action::StopRequested);
                }
            }
            Input::Register { subsystem, spec } => {
                self.locals.insert(subsystem, Local { spec, notified: BTreeSet::new(), acked: BTreeSet::new() });
                self.report_dirty = true;
            }
            Input::Deregister { subsystem } => {
                self.locals.remove(&subsystem);
                self.report_dirty = true;
            }
            Input::Ack { subsystem, id, step } => {
                if let Some(l) = self.locals.get_mut(&subsystem) {
                    if l.notified.remove(&(id, step)) {
                        l.acked.insert((id, step));
                    }
                }
            }
            Input::LocalFailure { from, reason } => {
                self.local_failure(from, reason);
                return;
            }
            Input::PeerUp { node } => {
                self.heard.insert(node);
                self.failed.remove(&node);
                self.distressed.remove(&node);
                self.gmp.handle(self.now, GmpInput::MemberRecovered { node });
            }
            Input::PeerSilent { node } => {
                if !self.failed.contains(&node) {
                    // A node whose graceful leave finished is gone, not failed.
                    let left = self.state.as_ref().is_some_and(|s| s.state_of(node) == NodeState::Inactive && !s.transitions.contains_key(&node));
                    self.actions.push_back(if left { Action::PeerGone { node } } else { Action::PeerFailed { node, distress: false } });
                }
                self.peer_failed(node);
            }
            Input::PeerDistress { node, reason: _ } => {
                if !self.distressed.insert(node) {
                    // S0: a distress is processed once (copies come on every link).
                    return;
                }
                self.actions.push_back(Action::PeerFailed { node, distress: true });
                self.peer_failed(node);
            }
            Input::Receive { from, msg } => self.receive(now, from, msg),
            Input::Tick => {}
        }
        if self.phase == Phase::Active {
            self.step(now);
        }
    }

    /// S0.1/S0.2/S0.4.
    fn local_failure(&mut self, from: Option<SubsystemId>, reason: u32) {
        if self.shutting_down {
            self.stats.ignored_failures += 1;
            return;
        }
        self.shutting_down = true;
        self.actions.push_back(Action::SendDistress { reason });
        let others: Vec<SubsystemId> = self.locals.keys().copied().filter(|s| Some(*s) != from).collect();
        for s in others {
            self.actions.push_back(Action::Terminate { subsystem: s, reason });
        }
        self.locals.clear();
        self.halt(HaltReason::LocalFailure { reason });
    }

    fn peer_failed(&mut self, node: NodeId) {
        if node == self.cfg.me {
            return;
        }
        self.failed.insert(node);
        if self.state.as_ref().is_some_and(|s| s.view.master == node) {
            // The master failed: our next report goes to its successor,
            // with the state we follow; send it now.
            self.report_dirty = true;
        }
        // Only a member of the change in progress concerns S3 (a failure of
        // anyone else would be remembered for a later change, where that
        // node may be back with a new life).
        if self.gmp_members.contains(&node) {
            self.gmp.handle(self.now, GmpInput::MemberFailed { node });
            self.drain_gmp();
        }
    }

    /// A change (Initiate, or a Request received) starts: tell S3 which of
    /// its members we already know to have failed.
    fn gmp_change_started(&mut self, id: ChangeId, members: &BTreeSet<NodeId>) {
        self.gmp_members = members.clone();
        self.gmp_change = id;
        let known: Vec<NodeId> = members.iter().copied().filter(|n| self.failed.contains(n)).collect();
        for node in known {
            self.gmp.handle(self.now, GmpInput::MemberFailed { node });
        }
    }

    fn receive(&mut self, now: Instant, from: NodeId, msg: Msg) {
        self.heard.insert(from);
        match msg {
            Msg::Report(r) => {
                self.max_change = self.max_change.max(r.max_change);
                self.max_term = self.max_term.max(r.seen.term);
                let k = self.known_inc.entry(from).or_insert(0);
                *k = (*k).max(r.incarnation);
                self.report_at.insert(from, now);
                if r.answers == 0 || r.answers != self.gather_token {
                    // A vote (for another successor) in that term: no
                    // successor of ours may take over in it.
                    self.max_term = self.max_term.max(r.voted);
                }
                // A report sent to a successor carries the sender's state: if
                // it is more advanced than ours, follow it too, so that every
                // survivor agrees on who the successor is.
                // (Only within the cluster we are in: a state of a cluster
                // whose master is gone must not stop us from forming anew.)
                let newer = match (&r.state, &self.state) {
                    (Some(st), Some(cur)) => st.origin == cur.origin && st.view.supersedes(&cur.view),
                    _ => false,
                };
                if newer {
                    let st = r.state.clone().unwrap();
                    self.adopt(now, st);
                }
                self.reports.insert(from, r);
            }
            Msg::Alive { view } => {
                self.max_term = self.max_term.max(view.term);
                match &self.state {
                    Some(c) if (c.view.term, c.view.master, c.view.master_incarnation) == (view.term, view.master, view.master_incarnation) => {
                        self.master_contact = now;
                        if view.supersedes(&c.view) {
                            // We missed a state: our next report says so,
                            // and the master sends it whole.
                            self.report_dirty = true;
                        }
                    }
                    _ => {}
                }
            }
            Msg::Gather { view, token, term } => {
                if self.state.as_ref().is_some_and(|c| c.view.term == view.term && c.view.master == view.master) {
                    self.report_dirty = true;
                    self.gathered = Some((from, token, term));
                }
            }
            Msg::State(s) => {
                self.max_term = self.max_term.max(s.view.term);
                if self.state.as_ref().map(|c| (c.view.term, c.view.master, c.view.master_incarnation))
                    == Some((s.view.term, s.view.master, s.view.master_incarnation))
                {
                    self.master_contact = now;
                }
                let k = self.known_inc.entry(s.view.master).or_insert(0);
                *k = (*k).max(s.view.master_incarnation);
                self.adopt(now, s)
            }
            Msg::Gmp(m) => {
                let request = match &m {
                    GmpMsg::Request { id, members } if *id > self.max_change || self.gmp.current().is_none() => {
                        self.max_change = self.max_change.max(*id);
                        Some((*id, members.clone()))
                    }
                    _ => None,
                };
                if let Some((_, members)) = &request {
                    // Only what our failure detector says now counts for the
                    // new change: forget older failures of members that are back.
                    for n in members.iter().filter(|n| !self.failed.contains(n)) {
                        self.gmp.handle(now, GmpInput::MemberRecovered { node: *n });
                    }
                }
                self.gmp.handle(now, GmpInput::Receive { from, msg: m });
                if let Some((id, members)) = request {
                    self.gmp_change_started(id, &members);
                }
                self.drain_gmp();
            }
        }
    }

    /// Follows a newer state from a master.
    fn adopt(&mut self, _now: Instant, s: ClusterState) {
        let me = self.cfg.me;
        let mut was_member = false;
        if let Some(cur) = &self.state {
            // A cluster formed apart that never had a majority yields to a
            // quorate cluster of another lineage, whatever their terms; a
            // quorate cluster never yields to it ([`ClusterState::quorate`]).
            let other = s.origin != cur.origin;
            if other && cur.quorate && !s.quorate {
                return;
            }
            let yields = other && s.quorate && !cur.quorate;
            if other && s.quorate && cur.quorate {
                // Two quorate clusters of different lineages (a master that
                // formed one and was paused before anyone heard of it, while
                // the others formed another): the one that got further wins
                // (more Joined members, then more versions of its term),
                // the lower master id only when they are level. By the ids
                // alone, the paused master's state, never followed by
                // anyone, made every member of the running cluster halt
                // when it resumed (sim seed 3837). Both sides compare the
                // same two states the same way, so they agree.
                let joined = |st: &ClusterState| st.nodes.values().filter(|e| e.state == NodeState::Joined).count();
                let key = |st: &ClusterState| (joined(st), st.view.term, st.view.version);
                let (ks, kc) = (key(&s), key(cur));
                if ks < kc || (ks == kc && !s.view.supersedes(&cur.view)) {
                    return;
                }
            } else if !yields && !s.view.supersedes(&cur.view) {
                return;
            }
            // Membership of this life only (an older life's entry is not ours).
            was_member = cur.group().contains(&me) && cur.nodes.get(&me).map(|e| e.incarnation) == Some(self.cfg.incarnation);
            let other_lineage = s.origin != cur.origin;
            if other_lineage && was_member {
                // Another cluster (formed apart, with a lower id) supersedes
                // ours: stop, and start again with a new incarnation.
                self.state = Some(s);
                self.halt(HaltReason::Superseded);
                return;
            }
        }
        let now_state = s.state_of(me);
        let incarnation_matches = s.nodes.get(&me).map(|e| e.incarnation) == Some(self.cfg.incarnation);
        // This life was admitted and then forced out before we ever saw it
        // joined (the states in between were lost): halt too, the next life
        // joins afresh.
        if incarnation_matches
            && matches!(now_state, NodeState::ForcedLeaving | NodeState::Inactive)
            && self.want == Want::Join
        {
            self.state = Some(s);
            self.halt(HaltReason::ForcedOut);
            return;
        }
        if was_member && self.want != Want::Leave && (!s.group().contains(&me) || !incarnation_matches) {
            // S1.7: we were forced out; halt before touching anything.
            self.state = Some(s);
            self.halt(HaltReason::ForcedOut);
            return;
        }
        if self.is_master() && s.view.master != me {
            self.pending = None;
        }
        let view = s.view;
        let stopping = s.stopping;
        self.state = Some(s);
        self.master_contact = self.now;
        self.report_dirty = true;
        self.actions.push_back(Action::StateChanged { view });
        if stopping && incarnation_matches && !self.stop_all {
            // The cluster is being stopped: this node leaves with it.
            self.stop_all = true;
            self.want = Want::Leave;
            self.actions.push_back(Action::StopRequested);
        }
        if self.want == Want::Leave && now_state == NodeState::Inactive && was_member {
            self.phase = Phase::Left;
            self.actions.push_back(Action::Left);
        }
    }

    fn my_report(&self) -> Report {
        Report {
            incarnation: self.cfg.incarnation,
            want: self.want,
            levels: self.locals.values().map(|l| l.spec).collect(),
            done: self.done.clone(),
            seen: self.state.as_ref().map(|s| s.view).unwrap_or_default(),
            state: None,
            max_change: self.max_change,
            stop_all: self.stop_all,
            answers: 0,
            voted: self.vote.map_or(0, |v| v.0),
        }
    }

    /// A strict majority of `group` is in sight. Exactly half is not enough,
    /// except in a cluster of two configured nodes, where the side with the
    /// lower id keeps quorum (like corosync's two_node), or, with a shared
    /// disk ([`Config::two_node_race`]), both sides do and the fencing race
    /// decides.
    fn majority_of(&self, s: &ClusterState, group: &BTreeSet<NodeId>) -> bool {
        let Some(lowest) = group.iter().next() else { return true };
        let seen = group.iter().filter(|n| !self.out_of_sight(s, n)).count();
        seen * 2 > group.len()
            || (self.cfg.nodes.len() == 2
                && seen * 2 == group.len()
                && (self.cfg.two_node_race || !self.out_of_sight(s, lowest)))
    }

    /// A member of `s` that is not in sight for quorum: its failure was
    /// seen, or it is known to run a newer life than its entry in `s` (it
    /// restarted: its report or its state says so). Its life in `s` is over
    /// whatever the datapath says of the node: the heartbeats of a new life
    /// end the silence (`PeerUp` clears `failed`), but that life follows no
    /// cluster or another one and never votes for this one. Counting it kept
    /// a minority quorate (sim seed 214: the master n2 crashed while n5, a
    /// failed member, had already restarted; n1 and n4, 2 of 5 configured
    /// nodes, counted n5's new life, stayed quorate and kept `db` running on
    /// n4 for 3.9 s while n2, n3 and n5's new lives formed the primary
    /// cluster and started `db` on n3).
    fn out_of_sight(&self, s: &ClusterState, n: &NodeId) -> bool {
        self.failed.contains(n)
            || (*n != self.cfg.me
                && s.nodes.get(n).is_some_and(|e| e.incarnation != 0 && self.known_inc.get(n).is_some_and(|i| *i > e.incarnation)))
    }

    /// Quorum: a majority of the group of the state we follow and, while a
    /// group change is committed or after we saw its request, of the new
    /// group too (joint majority), so that a partition in the middle of a
    /// change never leaves two sides that each think they have one.
    /// Once the state we follow has that change applied, its group is the
    /// new group and the joint majority is over (a later graceful leave
    /// shrinks the group without an S3 change, so a stale change must not
    /// count any more).
    ///
    /// And static quorum ([`Self::majority_of_configured_in_sight`]): the
    /// group's members in sight must also be a strict majority of the
    /// configured nodes.
    fn quorum(&self, s: &ClusterState) -> bool {
        let change_pending = !self.gmp_members.is_empty() && self.gmp_change > s.change;
        let group = s.group();
        self.majority_of(s, &group)
            && (!change_pending || self.majority_of(s, &self.gmp_members))
            && self.majority_of_configured_in_sight(s, &group)
    }

    /// Static quorum, as corosync's votequorum by default (expected_votes =
    /// the configured nodes, no last_man_standing, a clean shutdown lowers
    /// nothing): a quorate state's members in sight must be a strict
    /// majority of the *configured* nodes, not only of its group. A group
    /// shrinks with every forced and graceful leave, while a formation on
    /// the other side of a partition needs a majority of the configured
    /// nodes: a majority of a shrunk group ({1, 4, 6} of 7 configured)
    /// need not intersect it, and both sides ran as primary clusters (sim
    /// seeds 8753 and 3362; test
    /// `a_group_shrunk_below_a_configured_majority_halts_before_the_majority_forms_another_cluster`).
    /// Not applied to a state that is not quorate yet (a formation admits
    /// nobody until a majority joins at once), in a cluster of two
    /// configured nodes (the two-node rule of [`Self::majority_of`]
    /// decides), to a cluster being stopped, or to a node that is itself
    /// leaving (its leave goes on as before; a Leaving member never halted
    /// for lost quorum).
    fn majority_of_configured_in_sight(&self, s: &ClusterState, group: &BTreeSet<NodeId>) -> bool {
        let n = self.cfg.nodes.len();
        if !s.quorate || n <= 2 || s.stopping || self.want == Want::Leave {
            return true;
        }
        let votes = group.iter().filter(|m| self.cfg.nodes.contains(m) && !self.out_of_sight(s, m)).count();
        votes * 2 > n
    }

    /// Runs after every input: timers, local notifications, reports, master work.
    fn step(&mut self, now: Instant) {
        self.gmp.handle(now, GmpInput::Tick);
        self.drain_gmp();
        // Form the cluster when nobody answered in time and we are the
        // lowest node we can see that wants to be in it. The lowest
        // configured node forms at once when every other configured node
        // reported recently that it follows no cluster (they all started
        // fresh, as after a power failure: there is no cluster to find, and
        // waiting only delays the mass join). Nodes of a running cluster
        // report to their master only, so a node restarting next to a
        // running cluster never sees this and waits as before.
        let me = self.cfg.me;
        let all_fresh = self.state.is_none()
            && self.cfg.nodes.first() == Some(&me)
            && self.cfg.nodes.iter().all(|n| {
                *n == me
                    || (!self.failed.contains(n)
                        && self.reports.get(n).is_some_and(|r| r.seen == ViewId::default())
                        && self.report_at.get(n).is_some_and(|t| now.since(*t) <= 2 * self.cfg.resend_ns))
            });
        if self.state.is_none() && (all_fresh || now >= self.started_at.plus_ns(self.cfg.form_ns)) {
            let visible: Vec<NodeId> = self.heard.iter().copied().filter(|n| !self.failed.contains(n)).collect();
            let lowest_alive = visible.first() == Some(&self.cfg.me);
            // Forming needs a majority of the configured nodes in sight (two
            // nodes: either), so that two sides of a partition never form
            // two clusters.
            let n = self.cfg.nodes.len();
            let majority = visible.len() * 2 > n || n <= 2;
            if lowest_alive && majority {
                self.form(now);
            } else {
                self.started_at = now;
            }
        }
        if let Some(s) = &self.state {
            let joined = s.state_of(self.cfg.me) == NodeState::Joined;
            // The master of a quorate state halts too, whatever its own
            // state (still Joining, or outside the group after its own
            // leave): staying the master of a quorate state it has no
            // majority of would make two primary clusters when the other
            // side forms one (sim seed 8203: a master cut off before any
            // join of the new cluster completed stayed the master of a
            // quorate state of term 1 while the majority formed another).
            let quorate_master = s.quorate && s.view.master == self.cfg.me;
            if (joined || quorate_master) && !self.quorum(s) {
                // In the minority side of a partition: the majority will
                // force us out and recover what we hold, so stop at once,
                // before it could (the failure detector's bound is the same
                // on both sides).
                self.halt(HaltReason::LostQuorum);
                return;
            }
        }
        // Asked to leave while not in the cluster: there is nothing to leave.
        if self.want == Want::Leave {
            let in_cluster = self
                .state
                .as_ref()
                .map(|s| s.state_of(self.cfg.me) != NodeState::Inactive || s.transitions.contains_key(&self.cfg.me))
                .unwrap_or(false);
            if !in_cluster && !self.state.as_ref().is_some_and(|s| self.master_must_stay(s)) {
                self.phase = Phase::Left;
                self.actions.push_back(Action::Left);
                return;
            }
        }
        // In the cluster by the state we follow, or by a group change of it
        // that takes us in and that we took part in (its request named us):
        // the others count us in their quorum from that change on, even if
        // the states that show us in were lost on the way to us. Forgetting
        // the cluster then gave our vote to two clusters at once (sim seed
        // 3740: n3 took part in the change that added it, missed the states
        // after it, forgot the cluster when its master left and joined a
        // cluster formed anew, while the successor n2 counted n3 in sight
        // and ran its groups on, 2 of 3 by its count).
        let in_by_change =
            self.state.as_ref().is_some_and(|s| self.gmp_change > s.change && self.gmp_members.contains(&self.cfg.me));
        let this_life_in = in_by_change
            || self
                .state
                .as_ref()
                .and_then(|s| s.nodes.get(&self.cfg.me))
                .map(|e| e.incarnation == self.cfg.incarnation && e.state != NodeState::Inactive)
                .unwrap_or(false);
        if self.master_dead() && !this_life_in {
            // Not in that cluster, and its master is gone: forget it and look
            // for a live master (or form) again. Nothing was notified to us.
            self.state = None;
            self.started_at = now;
            self.recovering = None;
            self.report_dirty = true;
        }
        // Waiting for a successor that never takes over (it follows another
        // cluster now): the cluster we follow is gone.
        if self.master_dead() && self.successor() != Some(self.cfg.me) {
            let since = *self.orphan_since.get_or_insert(now);
            // (Longer than the successor waits for late reports of live
            // members before it gives up: see `take_over_if_master_died`.)
            if now.since(since) > 2 * MASTER_SILENCE_FORMS * self.cfg.form_ns {
                self.halt_path = Some("orphan wait: the master is dead and its successor did not take over within twice the master-silence bound");
                self.halt(HaltReason::ClusterLost);
                return;
            }
        } else {
            self.orphan_since = None;
        }
        if self.master_dead() && self.successor().is_none() && self.my_state() != NodeState::Joined {
            // The master is gone and no joined member is left to succeed it:
            // the cluster we follow is gone. Halt; a new life forms or joins anew.
            // Except while this node is still joining (it runs no service
            // yet) and only our datapath says the master is silent: on a
            // loaded machine a busy master's heartbeats are missed for a
            // moment (a 32-node mass join), and halting then cost the whole
            // join a new life of this node and its forced leave. Wait for
            // the master to be heard again as long as a follower waits for
            // a silent master; halt if it is not.
            // A master silent on the control channel alone (its heartbeats
            // still arrive) is waited for too: in a 32-node mass join on a
            // loaded machine the busy master sent nothing for 2 s and half
            // the joining nodes halted at once (issue 15); a master that
            // restarted or left is gone for sure.
            let since = *self.unseen_master_since.get_or_insert(now);
            let may_wait = self.my_state() == NodeState::Joining && !self.master_restarted_or_left();
            if !may_wait || now.since(since) > MASTER_SILENCE_FORMS * self.cfg.form_ns {
                self.halt_path = Some(if !may_wait && self.master_restarted_or_left() {
                    "unseen master: no joined successor and the master restarted or left"
                } else if !may_wait {
                    "unseen master: no joined successor, and this node is not joining (it leaves)"
                } else {
                    "unseen master: no joined successor, and the master stayed silent (datapath or control channel) for the master-silence bound after its death was seen"
                });
                self.halt(HaltReason::ClusterLost);
                return;
            }
        } else {
            self.unseen_master_since = None;
        }
        self.take_over_if_master_died(now);
        self.notify_locals();
        if self.is_master() {
            let me = self.cfg.me;
            let r = self.my_report();
            self.reports.insert(me, r);
            self.master_work(now);
            if self.phase != Phase::Active {
                return;
            }
            if self.state_due.is_some_and(|d| now >= d) {
                self.send_state_to_all();
            }
        } else {
            // Not (or no longer) the master: nothing of ours to broadcast.
            self.state_due = None;
        }
        // Reports go to the master, or to its successor (with our state) when it failed.
        let master = match self.successor() {
            Some(succ) => Some(succ),
            None => self.state.as_ref().map(|s| s.view.master),
        };
        if self.report_dirty && self.report_due.is_none() {
            self.report_due = Some(now.plus_ns(self.cfg.batch_ns));
        }
        let report_due = self.report_dirty && self.report_due.is_some_and(|d| now >= d);
        let periodic = now >= self.resend_at();
        if periodic || report_due {
            let mut r = self.my_report();
            if self.successor().is_some() {
                r.state = self.state.clone();
            }
            if let Some((g, token, term)) = self.gathered {
                if master == Some(g) && self.may_vote(term, g) {
                    self.vote = Some((term, g, token));
                }
            }
            // The answer goes to the successor we voted for only, and only
            // in the term of that vote: one vote per term.
            if let Some((term, v, token)) = self.vote {
                if master == Some(v) && v != self.cfg.me {
                    r.answers = token;
                    r.voted = term;
                }
            }
            match master {
                Some(m) if m != self.cfg.me => self.send(m, Msg::Report(r)),
                Some(_) => {}
                None => {
                    let nodes: Vec<NodeId> = self.cfg.nodes.iter().copied().collect();
                    for n in nodes {
                        self.send(n, Msg::Report(r.clone()));
                    }
                }
            }
            if self.is_master() && periodic {
                if self.state_due.is_some() {
                    self.send_state_to_all();
                } else {
                    self.refresh_followers();
                }
            }
            if periodic {
                self.last_resend = Some(now);
            }
            self.report_dirty = false;
            self.report_due = None;
        }
    }

    fn form(&mut self, _now: Instant) {
        let me = self.cfg.me;
        let mut nodes = BTreeMap::new();
        for n in &self.cfg.nodes {
            nodes.insert(*n, NodeEntry { state: NodeState::Inactive, incarnation: 0, levels: BTreeSet::new() });
        }
        // Above every term heard of, so that the new cluster supersedes
        // whatever dead lineage a node may still follow.
        let view = ViewId { term: self.max_term + 1, master: me, master_incarnation: self.cfg.incarnation, version: 0 };
        self.state = Some(ClusterState {
            view,
            origin: view,
            nodes,
            transitions: BTreeMap::new(),
            change: self.max_change,
            quorate: false,
            stopping: false,
        });
        self.report_dirty = true;
    }

    /// A majority of the configured nodes (of two: either).
    fn majority_of_configured(&self, group: &BTreeSet<NodeId>) -> bool {
        let n = self.cfg.nodes.len();
        group.len() * 2 > n || (n <= 2 && !group.is_empty())
    }

    /// When the master failed: the lowest joined member we do not know to
    /// have failed is its successor.
    fn master_dead(&self) -> bool {
        let Some(s) = self.state.as_ref() else { return false };
        if s.view.master == self.cfg.me {
            return false;
        }
        // The datapath's failure detector decides the master's death in
        // tens of milliseconds (`failed`); the other reasons are in
        // [`Self::master_surely_gone`].
        self.failed.contains(&s.view.master) || self.master_surely_gone()
    }

    /// The master is dead for a reason other than our datapath's silence
    /// alone: it restarted, it left, or nothing came from it on the control
    /// channel for the whole master-silence bound (see [`Self::master_dead`]).
    fn master_surely_gone(&self) -> bool {
        let Some(s) = self.state.as_ref() else { return false };
        if s.view.master == self.cfg.me {
            return false;
        }
        // The master restarted (a newer life of it spoke to us), or has not
        // sent its (periodic) state for a whole formation period: silence
        // on the control channel is only the backstop, long enough not to
        // take a master that is merely slow (a loaded machine, a mass join)
        // for a dead one.
        let silent = self.now.since(self.master_contact) > MASTER_SILENCE_FORMS * self.cfg.form_ns;
        silent || self.master_restarted_or_left()
    }

    /// The master restarted (a newer life of it spoke to us) or its
    /// graceful leave finished: gone whatever our datapath hears of it.
    fn master_restarted_or_left(&self) -> bool {
        let Some(s) = self.state.as_ref() else { return false };
        if s.view.master == self.cfg.me {
            return false;
        }
        let restarted = self.known_inc.get(&s.view.master).map(|i| *i > s.view.master_incarnation).unwrap_or(false);
        // Its graceful leave finished and nothing keeps it master (its last
        // state says so): it is gone, whether or not its silence was seen yet.
        // (An entry of this master's own life: in a state just formed, the
        // master's entry is still the Inactive one of no life.)
        let left = s.nodes.get(&s.view.master).is_some_and(|e| e.state == NodeState::Inactive && e.incarnation == s.view.master_incarnation)
            && !self.master_must_stay(s);
        restarted || left
    }

    /// A master whose own graceful leave finished stays master while
    /// another node's transition is in flight and no other joined member
    /// could succeed it (every node leaving at once, a cluster-wide stop):
    /// it leaves last, once those transitions are over. With a joined
    /// member left, that member succeeds it and carries them on.
    fn master_must_stay(&self, s: &ClusterState) -> bool {
        let master = s.view.master;
        let successor = s.nodes.iter().any(|(n, e)| *n != master && e.state == NodeState::Joined && !self.failed.contains(n));
        !successor && s.transitions.keys().any(|n| *n != master && !self.failed.contains(n))
    }

    /// The period of the reports and of the master's refresh while the
    /// cluster is quiet ([`Self::quiet`]): the formation wait, a quarter of
    /// the master-silence bound (`MASTER_SILENCE_FORMS` formation waits), so
    /// that a quiet master's `Alive`s still reach its followers four times
    /// within the bound. Never shorter than `resend_ns`.
    fn idle_resend_ns(&self) -> u64 {
        self.cfg.resend_ns.max(MASTER_SILENCE_FORMS * self.cfg.form_ns / 4)
    }

    /// When the next periodic report (and master refresh) is due: every
    /// `resend_ns` while anything is in flight, every
    /// [`Self::idle_resend_ns`] while the cluster is quiet.
    fn resend_at(&self) -> Instant {
        match self.last_resend {
            None => Instant::ZERO,
            Some(t) => t.plus_ns(if self.quiet() { self.idle_resend_ns() } else { self.cfg.resend_ns }),
        }
    }

    /// Nothing to retransmit or to wait for: this node is a joined member of
    /// a state with no transition, no S3 change and no recovery in flight,
    /// has nothing unsent (report, state), does not leave, its master is
    /// alive, and, at the master, every live member's recent report
    /// follows the current state. Only then do the periodic messages
    /// slow down; any change makes them fast again at once.
    fn quiet(&self) -> bool {
        let Some(s) = self.state.as_ref() else { return false };
        if self.phase != Phase::Active
            || self.want == Want::Leave
            || self.stop_all
            || self.shutting_down
            || self.report_dirty
            || self.state_due.is_some()
            || self.recovering.is_some()
            || self.pending.is_some()
            || self.gmp.current().is_some()
            || s.stopping
            || !s.transitions.is_empty()
            || self.my_state() != NodeState::Joined
            || self.master_dead()
        {
            return false;
        }
        if s.view.master != self.cfg.me {
            return true;
        }
        let recent = 2 * self.idle_resend_ns();
        s.group().iter().all(|n| {
            *n == self.cfg.me
                || self.failed.contains(n)
                || (self.reports.get(n).is_some_and(|r| r.seen == s.view)
                    && self.report_at.get(n).is_some_and(|t| self.now.since(*t) <= recent))
        })
    }

    fn successor(&self) -> Option<NodeId> {
        let s = self.state.as_ref()?;
        if !self.master_dead() {
            return None;
        }
        s.nodes
            .iter()
            .filter(|(n, e)| e.state == NodeState::Joined && !self.failed.contains(n) && **n != s.view.master)
            .map(|(n, _)| *n)
            .next()
    }

    /// This node may answer `succ`'s `Gather` for `term`: it voted in no
    /// later term and for nobody else in this one, and the state it follows
    /// is of an earlier term (a master of that term or a later one exists).
    fn may_vote(&self, term: u64, succ: NodeId) -> bool {
        let state_term = self.state.as_ref().map_or(0, |s| s.view.term);
        term > state_term
            && match self.vote {
                None => true,
                Some((t, v, _)) => t < term || (t == term && v == succ),
            }
    }

    /// The successor first gathers the states the survivors follow and
    /// continues from the most advanced one, in a new term: a master never
    /// takes the cluster back to an older state.
    fn take_over_if_master_died(&mut self, now: Instant) {
        if self.successor() != Some(self.cfg.me) {
            self.recovering = None;
            return;
        }
        let Some(cur) = self.state.clone() else { return };
        if !self.quorum(&cur) {
            // The minority side of a partition never takes over.
            self.recovering = None;
            return;
        }
        let group = cur.group();
        let live: Vec<NodeId> = group.iter().copied().filter(|n| *n != self.cfg.me && !self.out_of_sight(&cur, n)).collect();
        // A member voted for another successor in our term or a later one,
        // or follows a state of such a term: we cannot take over in it.
        // Gather again, in a term above all of them (a new token: answers
        // to the old one do not count).
        let lost = self.recovering.is_some() && self.max_term >= self.gather_term;
        if self.recovering.is_none() || lost {
            // Ask the survivors for their states now: a report sent before
            // this moment does not count (below), and the next periodic
            // one may be a whole resend period away. The term is above
            // every term heard of and every vote of ours, and we vote for
            // ourselves in it.
            self.gather_seq += 1;
            self.gather_token = self.cfg.incarnation.wrapping_add(self.gather_seq).max(1);
            self.gather_term = cur.view.term.max(self.max_term).max(self.vote.map_or(0, |v| v.0)) + 1;
            self.vote = Some((self.gather_term, self.cfg.me, self.gather_token));
            self.gather_sent = now;
            let (token, term) = (self.gather_token, self.gather_term);
            for n in &live {
                self.send(*n, Msg::Gather { view: cur.view, token, term });
            }
        }
        let began = *self.recovering.get_or_insert(now);
        let deadline = began.plus_ns(2 * self.cfg.resend_ns);
        let since = began.0;
        let (token, gather_term) = (self.gather_token, self.gather_term);
        // Only reports that answer this recovery's `Gather` count: an older
        // one may carry a stale state. (Received after the recovery began is
        // not enough: a successor paused with the survivors' reports in its
        // queue got them all at once when it resumed, counted them, and took
        // over the term the survivors had meanwhile given to another
        // successor, which had forced it out: sim seed 9916.)
        let answered: BTreeSet<NodeId> = group
            .iter()
            .copied()
            .filter(|n| {
                self.report_at.get(n).map(|t| t.0 >= since).unwrap_or(false)
                    && self.reports.get(n).is_some_and(|r| r.state.is_some() && r.answers == token)
            })
            .collect();
        let fresh = |n: &NodeId| answered.contains(n);
        let slow: Vec<NodeId> = live.iter().copied().filter(|n| !fresh(n)).collect();
        let waiting = !slow.is_empty();
        if waiting && now >= self.gather_sent.plus_ns(self.cfg.resend_ns) {
            // Ask again those that did not answer (the `Gather` or the
            // answer may be lost).
            self.gather_sent = now;
            for n in slow {
                self.send(n, Msg::Gather { view: cur.view, token, term: gather_term });
            }
        }
        if waiting && now < deadline {
            return;
        }
        // Never without the states of a majority of the group (ourselves
        // included): the most advanced state is among them.
        let have = group.iter().filter(|n| **n == self.cfg.me || fresh(n)).count();
        // (Two nodes racing for a disk: our own state is half, and the
        // fencing race decides which side goes on.)
        let race = self.cfg.two_node_race && self.cfg.nodes.len() == 2 && have * 2 == group.len();
        if have * 2 <= group.len() && !race {
            // Not (yet) the states of a majority. While the members we wait
            // for are alive (the datapath says so), their reports may just
            // be late (a loaded machine: one 100 ms late used to end the
            // whole cluster), so keep waiting, as long as a follower waits
            // for a silent master. After that, the others follow someone
            // else: the lineage we follow is dead. Halt; a new life joins
            // whatever cluster is alive.
            // Twice that bound: members whose datapath still hears the
            // master (a lossy master, not a dead one) switch to us only
            // once their own master-silence bound ran out, counted from
            // their last contact, later than our start (chaos seed 2026:
            // the successor halted a moment before they came).
            if now < began.plus_ns(2 * MASTER_SILENCE_FORMS * self.cfg.form_ns) {
                return;
            }
            self.halt_path = Some("successor's recovery: not the states of a majority of the group within twice the master-silence bound");
            self.halt(HaltReason::ClusterLost);
            return;
        }
        let mut best = cur.clone();
        for (n, r) in self.reports.iter() {
            if !fresh(n) {
                continue;
            }
            if let Some(st) = &r.state {
                if st.view.supersedes(&best.view) {
                    best = st.clone();
                }
            }
        }
        // The term the majority voted for: above every state gathered (a
        // report of a later term would have started a new round above).
        let term = gather_term;
        debug_assert!(term > best.view.term, "gathered a state of term {} for term {term}", best.view.term);
        best.view = ViewId { term, master: self.cfg.me, master_incarnation: self.cfg.incarnation, version: 0 };
        self.state = Some(best);
        self.recovering = None;
        self.pending = None;
        self.report_dirty = true;
        self.broadcast_state();
    }

    /// Notifies local subsystems of the current step of every transition
    /// this node participates in, and records completed steps.
    fn notify_locals(&mut self) {
        let Some(s) = &self.state else { return };
        // Only a member of this life takes part in transitions.
        if s.nodes.get(&self.cfg.me).map(|e| e.incarnation) != Some(self.cfg.incarnation) {
            return;
        }
        let states = s.states();
        let mut notes = Vec::new();
        let mut newly_done = Vec::new();
        for t in s.transitions.values() {
            if !t.participants.contains(&self.cfg.me) {
                continue;
            }
            let step = t.step();
            let sd = StepDone { id: t.id, step };
            if self.done.contains(&sd) {
                continue;
            }
            let mut all = true;
            for (sid, l) in self.locals.iter() {
                if l.spec.level != step.level {
                    continue;
                }
                if l.acked.contains(&(t.id, step)) {
                    continue;
                }
                all = false;
                if !l.notified.contains(&(t.id, step)) {
                    notes.push((*sid, t.id, step));
                }
            }
            if all {
                newly_done.push(sd);
            }
        }
        for (sid, id, step) in notes {
            if let Some(l) = self.locals.get_mut(&sid) {
                l.notified.insert((id, step));
            }
            self.actions.push_back(Action::Notify { subsystem: sid, id, step, states: states.clone() });
        }
        if !newly_done.is_empty() {
            self.done.extend(newly_done);
            self.report_dirty = true;
        }
        // Forget what concerns transitions that are over.
        let live: BTreeSet<TransitionId> = s.transitions.values().map(|t| t.id).collect();
        self.done.retain(|d| live.contains(&d.id));
        for l in self.locals.values_mut() {
            l.notified.retain(|(id, _)| live.contains(id));
            l.acked.retain(|(id, _)| live.contains(id));
        }
    }

    /// The master's state changed: send it to every node, at once or at
    /// the end of the coalescing window.
    fn broadcast_state(&mut self) {
        let Some(s) = self.state.as_ref() else { return };
        let view = s.view;
        if self.last_broadcast != Some(view) {
            self.last_broadcast = Some(view);
            self.actions.push_back(Action::StateChanged { view });
        }
        if self.cfg.batch_ns == 0 {
            self.send_state_to_all();
        } else if self.state_due.is_none() {
            self.state_due = Some(self.now.plus_ns(self.cfg.batch_ns));
        }
    }

    fn send_state_to_all(&mut self) {
        self.state_due = None;
        let Some(s) = self.state.clone() else { return };
        let nodes: Vec<NodeId> = self.cfg.nodes.iter().copied().collect();
        for n in nodes {
            self.send(n, Msg::State(s.clone()));
        }
    }

    /// The periodic resend of the master: the whole state to every node
    /// whose last report has not seen it, a small `Alive` to the others.
    /// (A report counts only while recent: a node that restarted fast
    /// follows nothing yet, whatever its earlier life reported.)
    fn refresh_followers(&mut self) {
        let Some(s) = self.state.clone() else { return };
        let me = self.cfg.me;
        let now = self.now;
        // (Followers of a quiet cluster report every idle period.)
        let recent = 2 * self.idle_resend_ns();
        let nodes: Vec<NodeId> = self.cfg.nodes.iter().copied().filter(|n| *n != me).collect();
        for n in nodes {
            let current = self.reports.get(&n).is_some_and(|r| r.seen == s.view)
                && self.report_at.get(&n).is_some_and(|t| now.since(*t) <= recent);
            if current {
                self.send(n, Msg::Alive { view: s.view });
            } else {
                self.send(n, Msg::State(s.clone()));
            }
        }
    }

    fn drain_gmp(&mut self) {
        while let Some(a) = self.gmp.poll_action() {
            match a {
                GmpAction::Send { to, msg } => {
                    self.actions.push_back(Action::Send { to, msg: Msg::Gmp(msg) });
                }
                GmpAction::NeedData { id } => {
                    let data = self.records_for_my_subgroup();
                    self.gmp.handle(self.now, GmpInput::LocalData { id, my_data: data });
                }
                GmpAction::Complete { id, .. } => {
                    self.stats.changes_committed += 1;
                    if let Some(p) = &self.pending {
                        if p.change == id {
                            let p = self.pending.take().unwrap();
                            self.apply_change(p);
                        }
                    }
                }
            }
        }
    }

    /// S3 group data: the records (incarnation, levels) this node knows for
    /// the members of its subgroup.
    fn records_for_my_subgroup(&self) -> Records {
        let mut r = Records::new();
        if let Some(s) = &self.state {
            for (n, e) in &s.nodes {
                if s.group().contains(n) {
                    r.insert(*n, (e.incarnation, e.levels.clone()));
                }
            }
        }
        r.insert(self.cfg.me, (self.cfg.incarnation, self.locals.values().map(|l| l.spec).collect()));
        r
    }

    // ----- master -----

    fn master_work(&mut self, now: Instant) {
        // Taken out and put back (no clone: this runs on every input the
        // master handles, and the state of a big cluster is not small).
        let Some(mut s) = self.state.take() else { return };
        if !self.quorum(&s) {
            self.state = Some(s);
            return;
        }
        // Refresh records from reports.
        let mut changed = false;
        for (n, r) in &self.reports {
            if let Some(e) = s.nodes.get_mut(n) {
                if e.incarnation == r.incarnation && e.levels != r.levels && s.transitions.get(n).map(|t| t.id.kind) != Some(Kind::ForcedLeave) {
                    e.levels = r.levels.clone();
                    changed = true;
                }
            }
        }
        // A cluster-wide stop asked by any member: every node leaves.
        if !s.stopping && self.reports.iter().any(|(n, r)| r.stop_all && s.nodes.get(n).is_some_and(|e| e.incarnation == r.incarnation)) {
            s.stopping = true;
            changed = true;
        }
        if s.stopping && !self.stop_all {
            // The master leaves with the others (last: `master_must_stay`).
            self.stop_all = true;
            self.want = Want::Leave;
            self.actions.push_back(Action::StopRequested);
        }
        // Leave requests of joined nodes start a graceful leave; of joining
        // nodes, they wait for the next level boundary.
        let leaving: Vec<(NodeId, u64)> = if s.stopping {
            s.group().into_iter().map(|n| (n, s.nodes[&n].incarnation)).collect()
        } else {
            self.reports.iter().filter(|(_, r)| r.want == Want::Leave).map(|(n, r)| (*n, r.incarnation)).collect()
        };
        for (n, inc) in leaving {
            let Some(e) = s.nodes.get(&n) else { continue };
            if e.incarnation != inc {
                continue;
            }
            match (e.state, s.transitions.get_mut(&n)) {
                (NodeState::Joined, None) => {
                    let t = new_transition(&s, n, e.incarnation, Kind::Leave, None);
                    if t.path.is_empty() {
                        s.nodes.get_mut(&n).unwrap().state = NodeState::Inactive;
                    } else {
                        s.nodes.get_mut(&n).unwrap().state = NodeState::Leaving;
                        s.transitions.insert(n, t);
                    }
                    changed = true;
                }
                (NodeState::Joining, Some(t)) if t.id.kind == Kind::Join && !t.leave_pending => {
                    t.leave_pending = true;
                    changed = true;
                }
                _ => {}
            }
        }
        if self.advance(&mut s) {
            changed = true;
        }
        if changed {
            s.view.version += 1;
            let me_inactive = s.state_of(self.cfg.me) == NodeState::Inactive;
            self.state = Some(s);
            self.broadcast_state();
            self.notify_locals();
            let stay = self.state.as_ref().is_some_and(|s| self.master_must_stay(s));
            if me_inactive && self.want == Want::Leave && !stay {
                // The master finished its own graceful leave: the final state
                // is out; the others see us go silent and a successor takes over.
                self.send_state_to_all();
                self.phase = Phase::Left;
                self.actions.push_back(Action::Left);
                return;
            }
        } else {
            self.state = Some(s);
        }
        // A change that cannot complete (a member was wrongly suspected and
        // is back, or failures raced) is replaced by a new one: a newer
        // change id supersedes the old one at every member.
        // (Stuck: no progress of the S3 change here for that long. A
        // change that still progresses, only slowly, e.g. on a loaded
        // machine, is not restarted: that would only add load.)
        let mark = self.gmp.progress_mark();
        if let Some(p) = self.pending.as_mut() {
            if mark != p.mark {
                p.mark = mark;
                p.started = now;
            }
            if now.since(p.started) > 10 * self.cfg.resend_ns {
                self.pending = None;
            }
        }
        if self.pending.is_none() {
            self.start_change(now);
        }
    }

    /// Advances every transition whose current step every participant completed.
    fn advance(&mut self, s: &mut ClusterState) -> bool {
        let mut changed = false;
        let ids: Vec<NodeId> = s.transitions.keys().copied().collect();
        for n in ids {
            loop {
                let t = s.transitions.get(&n).unwrap();
                // A node that failed during its own graceful transition does
                // not count as having acknowledged it: its transition freezes
                // until the forced leave replaces it.
                if t.id.kind != Kind::ForcedLeave && self.failed.contains(&t.id.node) {
                    break;
                }
                let sd = StepDone { id: t.id, step: t.step() };
                let all = t.participants.iter().all(|p| {
                    self.failed.contains(p) || self.reports.get(p).map(|r| r.done.contains(&sd)).unwrap_or(false)
                });
                if !all {
                    break;
                }
                changed = true;
                let mut t = t.clone();
                let spec = t.path[t.pos];
                if t.barrier + 1 < spec.barriers.of(t.id.kind) {
                    t.barrier += 1;
                    s.transitions.insert(n, t);
                    continue;
                }
                // Level complete. A leave asked for while joining reverses here (S1.6).
                if t.id.kind == Kind::Join && t.leave_pending {
                    let upto: Vec<LevelSpec> = t.path[..=t.pos].to_vec();
                    let mut lt = new_transition(s, n, t.id.incarnation, Kind::Leave, Some(upto));
                    lt.participants = t.participants.clone();
                    s.nodes.get_mut(&n).unwrap().state = NodeState::Leaving;
                    s.transitions.insert(n, lt);
                    continue;
                }
                if t.pos + 1 < t.path.len() {
                    t.pos += 1;
                    t.barrier = 0;
                    s.transitions.insert(n, t);
                    continue;
                }
                // Done: Table 1 end state.
                s.transitions.remove(&n);
                self.actions.push_back(Action::TransitionCompleted {
                    id: t.id,
                    participants: t.participants.clone(),
                    path: t.path.clone(),
                });
                let end = t.id.kind.end_state();
                s.nodes.get_mut(&n).unwrap().state = end;
                if end == NodeState::Inactive {
                    drop_participant(s, n);
                }
                break;
            }
        }
        changed
    }

    /// Batches pending group changes into one S3 change.
    fn start_change(&mut self, now: Instant) {
        let Some(s) = self.state.clone() else { return };
        let group = s.group();
        let mut forced = BTreeSet::new();
        for n in &group {
            if *n != self.cfg.me && self.failed.contains(n) {
                forced.insert(*n);
            }
        }
        // A node that restarted (new incarnation) while still a member is
        // forced out first; it joins again afterwards.
        for (n, r) in &self.reports {
            if let Some(e) = s.nodes.get(n) {
                if group.contains(n) && r.incarnation > e.incarnation {
                    forced.insert(*n);
                }
            }
        }
        let mut joins = BTreeSet::new();
        for (n, r) in &self.reports {
            let Some(e) = s.nodes.get(n) else { continue };
            // Only a recent report admits a node: a node that wants to join
            // reports every resend period, and one whose reports stopped
            // follows another cluster now (sim seed 926: a master forming
            // anew admitted three members of the running cluster on their
            // reports from before they joined it, its S3 change committed with
            // them, and its state counted as quorate beside that cluster's).
            // (Our own report is always current.)
            let recent = *n == self.cfg.me || self.report_at.get(n).is_some_and(|t| now.since(*t) <= 2 * self.cfg.resend_ns);
            // Only a new life joins: a report of a life that was already in
            // the cluster (a stale one) never brings it back.
            if recent
                && r.want == Want::Join
                && r.incarnation > e.incarnation
                && e.state == NodeState::Inactive
                && !s.transitions.contains_key(n)
                && !self.failed.contains(n)
                && !forced.contains(n)
            {
                joins.insert(*n);
            }
        }
        if s.stopping {
            // Nobody joins a cluster that is being stopped.
            joins.clear();
        }
        // A finished leave (state Inactive after Leaving) left the group
        // already in `advance`; the S3 change records the smaller group.
        if forced.is_empty() && joins.is_empty() {
            return;
        }
        let mut new_group: BTreeSet<NodeId> = group.difference(&forced).copied().collect();
        new_group.extend(joins.iter().copied());
        // A cluster just formed admits its first members only when they are
        // a majority of the configured nodes ([`ClusterState::quorate`]).
        if !s.quorate && !self.majority_of_configured(&new_group) {
            return;
        }
        self.max_change += 1;
        let change = self.max_change;
        self.pending = Some(Pending { change, started: now, mark: 0, joins, forced });
        let data = self.records_for_my_subgroup();
        // The master runs the S3 change, so it is one of its members even
        // when it is outside the group (its own leave completed while it
        // must stay the master: [`Self::master_must_stay`]). The S3
        // protocol ignores a change its initiator is not a member of: the
        // change stayed pending for good and the cluster stalled (sim
        // seed 693).
        let mut members = new_group.clone();
        members.insert(self.cfg.me);
        for n in members.iter().filter(|n| !self.failed.contains(n)) {
            self.gmp.handle(now, GmpInput::MemberRecovered { node: *n });
        }
        self.gmp.handle(now, GmpInput::Initiate { id: change, members: members.clone(), my_data: data });
        self.gmp_change_started(change, &members);
        self.drain_gmp();
    }

    fn apply_change(&mut self, p: Pending) {
        let Some(mut s) = self.state.clone() else { return };
        // Failures during the commit may have cost us the quorum: then the
        // change is not applied (and we halt on the next step).
        if !self.quorum(&s) {
            return;
        }
        for n in &p.forced {
            // Forced-Leaving re-notifies over Joining, Leaving or Joined and
            // aborts the graceful processing (Table 1).
            let (inc, prev) = {
                let e = &s.nodes[n];
                (e.incarnation, s.transitions.get(n).cloned())
            };
            let limit = match &prev {
                // Only as high as the graceful transition got: the levels a
                // join reached, or the levels a (reversed) leave walks.
                Some(t) if t.id.kind == Kind::Join => Some(t.path[..=t.pos].to_vec()),
                Some(t) if t.id.kind == Kind::Leave => Some(t.path.clone()),
                _ => None,
            };
            if self.reports.get(n).map(|r| r.incarnation <= inc).unwrap_or(false) {
                self.reports.remove(n);
            }
            drop_participant(&mut s, *n);
            let mut t = new_transition(&s, *n, inc, Kind::ForcedLeave, limit);
            t.participants.remove(n);
            if t.path.is_empty() {
                s.nodes.get_mut(n).unwrap().state = NodeState::Inactive;
                s.transitions.remove(n);
            } else {
                s.nodes.get_mut(n).unwrap().state = NodeState::ForcedLeaving;
                s.transitions.insert(*n, t);
            }
        }
        // Every joiner is Joining before any join transition is made, so
        // joiners of one change take part in each other's joins.
        let mut joiners = Vec::new();
        for n in &p.joins {
            let Some(r) = self.reports.get(n).cloned() else { continue };
            let e = s.nodes.get_mut(n).unwrap();
            e.state = NodeState::Joining;
            e.incarnation = r.incarnation;
            e.levels = r.levels.clone();
            joiners.push((*n, r.incarnation));
        }
        for (n, inc) in joiners {
            let t = new_transition(&s, n, inc, Kind::Join, None);
            if t.path.is_empty() {
                s.nodes.get_mut(&n).unwrap().state = NodeState::Joined;
            } else {
                s.transitions.insert(n, t);
            }
        }
        s.change = s.change.max(p.change);
        if !s.quorate && self.majority_of_configured(&s.group()) {
            s.quorate = true;
        }
        s.view.version += 1;
        self.state = Some(s);
        self.broadcast_state();
        self.notify_locals();
    }
}

/// A node that is out of the group (Inactive, or being forced out) takes
/// part in no other transition any more.
fn drop_participant(s: &mut ClusterState, node: NodeId) {
    for (n, t) in s.transitions.iter_mut() {
        if *n != node {
            t.participants.remove(&node);
        }
    }
}

/// A new transition of `node` over the current level table (or `limit`, for
/// a forced leave that only goes as high as a join got, or a reversed join).
fn new_transition(s: &ClusterState, node: NodeId, incarnation: u64, kind: Kind, limit: Option<Vec<LevelSpec>>) -> Transition {
    let mut path: Vec<LevelSpec> = match limit {
        Some(l) => l,
        None => {
            let mut lv = s.levels();
            if let Some(e) = s.nodes.get(&node) {
                for l in &e.levels {
                    lv.entry(l.level).or_insert(*l);
                }
            }
            lv.into_values().collect()
        }
    };
    path.sort();
    if !kind.bottom_up() {
        path.reverse();
    }
    let mut participants = s.group();
    participants.insert(node);
    Transition { id: TransitionId { node, incarnation, kind }, path, pos: 0, barrier: 0, participants, leave_pending: false }
}

#[cfg(test)]
pub(crate) mod quiet_tests {
    use super::*;

    pub(crate) const MS: u64 = 1_000_000;

    /// Three cores wired together without loss (each message delivered 1 ms
    /// after it was sent), counting every control-channel message.
    pub(crate) struct Net {
        pub(crate) now: Instant,
        pub(crate) cores: BTreeMap<NodeId, Membership>,
        pub(crate) wire: Vec<(Instant, NodeId, NodeId, Msg)>,
        pub(crate) sent: u64,
        /// Nodes that halted: (node, why).
        pub(crate) halted: Vec<(NodeId, HaltReason)>,
        /// Nodes whose subsystem 7 (level 10) holds its acknowledgements.
        pub(crate) holding: BTreeSet<NodeId>,
        pub(crate) held: Vec<(NodeId, Input)>,
    }

    impl Net {
        pub(crate) fn new(n: u32) -> Net {
            Net::holding(n, &[])
        }

        /// `n` nodes; on the nodes of `hold` a subsystem of level 10
        /// registers before the start and holds its acknowledgements
        /// (until [`Net::release`]).
        pub(crate) fn holding(n: u32, hold: &[NodeId]) -> Net {
            let nodes: BTreeSet<NodeId> = (1..=n).collect();
            let mut cores = BTreeMap::new();
            for me in 1..=n {
                let cfg = Config { me, incarnation: 1, nodes: nodes.clone(), subgroup_size: 2, resend_ns: 50 * MS, form_ns: 500 * MS, batch_ns: 0, two_node_race: false };
                cores.insert(me, Membership::new(cfg));
            }
            let holding: BTreeSet<NodeId> = hold.iter().copied().collect();
            let mut net = Net { now: Instant::ZERO, cores, wire: Vec::new(), sent: 0, halted: Vec::new(), holding, held: Vec::new() };
            for me in hold {
                net.input(*me, Input::Register { subsystem: 7, spec: LevelSpec { level: 10, barriers: Barriers::ONE } });
            }
            for me in 1..=n {
                for p in 1..=n {
                    if p != me {
                        net.input(me, Input::PeerUp { node: p });
                    }
                }
                net.input(me, Input::Start);
            }
            net
        }

        pub(crate) fn input(&mut self, at: NodeId, i: Input) {
            let now = self.now;
            // (A crashed node receives nothing.)
            let Some(c) = self.cores.get_mut(&at) else { return };
            c.handle(now, i);
            let mut acks = Vec::new();
            while let Some(a) = c.poll_action() {
                match a {
                    Action::Send { to, msg } => {
                        self.sent += 1;
                        self.wire.push((now.plus_ms(1), at, to, msg));
                    }
                    Action::Halt { why } => self.halted.push((at, why)),
                    // Local subsystems acknowledge every step at once.
                    Action::Notify { subsystem, id, step, .. } => acks.push(Input::Ack { subsystem, id, step }),
                    _ => {}
                }
            }
            for a in acks {
                if self.holding.contains(&at) {
                    self.held.push((at, a));
                } else {
                    self.input(at, a);
                }
            }
        }

        pub(crate) fn release(&mut self) {
            self.holding.clear();
            for (at, a) in std::mem::take(&mut self.held) {
                self.input(at, a);
            }
        }

        /// Runs `ms` milliseconds in 1 ms steps.
        pub(crate) fn run_ms(&mut self, ms: u64) {
            for _ in 0..ms {
                self.now = self.now.plus_ms(1);
                let now = self.now;
                let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire).into_iter().partition(|(t, ..)| *t <= now);
                self.wire = later;
                for (_, from, to, msg) in due {
                    self.input(to, Input::Receive { from, msg });
                }
                let ids: Vec<NodeId> = self.cores.keys().copied().collect();
                for id in ids {
                    if self.cores[&id].next_deadline().is_some_and(|d| d <= now) {
                        self.input(id, Input::Tick);
                    }
                }
            }
        }

        pub(crate) fn all_joined(&self) -> bool {
            self.cores.values().all(|c| c.my_state() == NodeState::Joined && c.state().is_some_and(|s| s.transitions.is_empty()))
        }
    }

    /// A quiet cluster sends its periodic reports and `Alive`s every
    /// formation wait (500 ms), not every resend period (50 ms); a change
    /// (a subsystem registers at a follower) makes them fast again at once,
    /// and the cluster quiet again once it has settled.
    #[test]
    fn a_quiet_cluster_slows_its_periodic_messages_and_a_change_speeds_them_up() {
        let mut net = Net::new(3);
        net.run_ms(2000);
        assert!(net.all_joined(), "not joined: {:?}", net.cores.values().map(|c| c.debug_line()).collect::<Vec<_>>());
        assert!(net.cores.values().all(|c| c.quiet()), "joined and settled, but not quiet");
        // 10 s of a quiet cluster of 3: per 500 ms, two reports to the
        // master and two `Alive`s from it: 80 messages (at the 50 ms resend
        // period it would be 800).
        let before = net.sent;
        net.run_ms(10_000);
        let quiet = net.sent - before;
        assert!((76..=84).contains(&quiet), "{quiet} messages in 10 s of a quiet 3-node cluster (4 per 500 ms expected)");
        // Follower 3 registers a subsystem: its report goes out at once (the
        // master sees it within 2 ms: 1 ms on the wire, batch 0) and, while
        // the master is busy with it, the periodic messages are fast.
        let before = net.sent;
        net.input(3, Input::Register { subsystem: 7, spec: LevelSpec { level: 10, barriers: Barriers::ONE } });
        net.run_ms(2);
        assert!(net.cores[&1].reports.get(&3).is_some_and(|r| r.levels.len() == 1), "the master did not get the new report at once");
        net.run_ms(1000);
        assert!(net.sent - before > 3, "no traffic after a change");
        assert!(net.cores.values().all(|c| c.quiet()), "not quiet again after the change settled");
        assert!(net.halted.is_empty(), "halted: {:?}", net.halted);
        // The followers' master-silence backstop (4 × 500 ms) never fired on
        // a quiet master: every follower still follows node 1.
        net.run_ms(5000);
        assert!(net.cores.values().all(|c| c.state().is_some_and(|s| s.view.master == 1)));
        assert!(net.cores.values().all(|c| !c.master_dead()));
    }

    /// A follower's failure (the datapath reports it silent) ends the quiet
    /// at the master at once: the forced leave runs at the fast period.
    #[test]
    fn a_failure_ends_the_quiet() {
        let mut net = Net::new(3);
        net.run_ms(2000);
        assert!(net.all_joined());
        net.run_ms(1000);
        net.cores.remove(&3);
        net.wire.retain(|(_, _, to, _)| *to != 3);
        let t = net.now;
        assert!(net.cores[&1].quiet());
        net.input(1, Input::PeerSilent { node: 3 });
        assert!(!net.cores[&1].quiet(), "the master is still quiet after a member failed");
        net.input(2, Input::PeerSilent { node: 3 });
        let mut gone = None;
        for _ in 0..500 {
            net.run_ms(1);
            if net.cores.values().all(|c| c.state().is_some_and(|s| s.state_of(3) == NodeState::Inactive && s.transitions.is_empty())) {
                gone = Some(net.now.since(t) / MS);
                break;
            }
        }
        let gone = gone.expect("node 3 not forced out within 500 ms");
        assert!(gone < 100, "forced leave took {gone} ms in a quiet cluster");
        assert!(net.halted.is_empty(), "halted: {:?}", net.halted);
    }
}

#[cfg(test)]
mod unseen_master_tests {
    use super::quiet_tests::Net;
    use super::*;

    /// A mass join: every node is still joining (node 3's subsystem holds
    /// the first level of every join), so no joined member could succeed
    /// the master. Node 2's datapath misses the master's heartbeats for
    /// 800 ms (a loaded machine). It used to halt at once (ClusterLost);
    /// now it waits for the master to be heard again and the join completes.
    #[test]
    fn a_joining_node_waits_out_a_masters_short_silence() {
        let mut net = Net::holding(3, &[3]);
        net.run_ms(1500);
        let s2 = net.cores[&2].state().expect("node 2 follows a state").clone();
        assert_eq!(s2.view.master, 1);
        assert!(net.cores.values().all(|c| c.my_state() == NodeState::Joining), "every node joining");
        net.input(2, Input::PeerSilent { node: 1 });
        assert!(net.cores[&2].master_dead() && net.cores[&2].successor().is_none());
        net.run_ms(800);
        assert!(net.halted.is_empty(), "halted while the master was unseen: {:?}", net.halted);
        net.input(2, Input::PeerUp { node: 1 });
        net.release();
        net.run_ms(1000);
        assert!(net.halted.is_empty(), "halted: {:?}", net.halted);
        assert!(net.all_joined(), "not all joined: {:?}", net.cores.values().map(|c| c.debug_line()).collect::<Vec<_>>());
    }

    /// The master of that joining cluster really died: the joining nodes
    /// halt (ClusterLost) once it stayed unseen for the master-silence
    /// bound (4 × form_ns = 2 s), not before.
    #[test]
    fn a_joining_node_halts_when_the_master_stays_unseen() {
        let mut net = Net::holding(3, &[3]);
        net.run_ms(1500);
        assert!(net.cores.values().all(|c| c.my_state() == NodeState::Joining));
        net.cores.remove(&1);
        net.wire.retain(|(_, _, to, _)| *to != 1);
        let t = net.now;
        net.input(2, Input::PeerSilent { node: 1 });
        net.input(3, Input::PeerSilent { node: 1 });
        let mut halted_at = None;
        for _ in 0..3000 {
            net.run_ms(1);
            if net.halted.len() == 2 {
                halted_at = Some(net.now.since(t) / MS);
                break;
            }
        }
        let at = halted_at.unwrap_or_else(|| panic!("not both halted within 3 s: {:?}", net.halted));
        assert!((2000..=2100).contains(&at), "halted after {at} ms (bound 2000 ms)");
        assert!(net.halted.iter().all(|(_, why)| *why == HaltReason::ClusterLost), "{:?}", net.halted);
    }

    /// Issue 15, a 32-node mass join under load (bench run 2026-12-07
    /// 19:26): the busy master sent nothing on the control channel for 2 s
    /// while every node's datapath still heard its heartbeats, and 16
    /// joining nodes halted at once (ClusterLost, "the master sent nothing
    /// for the master-silence bound"). A joining node now waits another
    /// master-silence bound for it, and halts only after that.
    #[test]
    fn a_joining_node_waits_out_a_master_silent_on_the_control_channel() {
        let mut net = Net::holding(3, &[3]);
        net.run_ms(1500);
        assert!(net.cores.values().all(|c| c.my_state() == NodeState::Joining), "every node joining");
        // 3 s of nothing from the master to node 2; heartbeats still arrive.
        for _ in 0..3000 {
            net.wire.retain(|(_, from, to, _)| !(*from == 1 && *to == 2));
            net.run_ms(1);
        }
        assert!(net.cores[&2].master_surely_gone(), "the master is silent on the control channel for 3 s");
        assert!(net.halted.is_empty(), "halted while the master was silent on the control channel: {:?}", net.halted);
        net.release();
        net.run_ms(1000);
        assert!(net.halted.is_empty(), "halted: {:?}", net.halted);
        assert!(net.all_joined(), "not all joined: {:?}", net.cores.values().map(|c| c.debug_line()).collect::<Vec<_>>());

        // A master that stays silent on the control channel still ends the
        // wait: after twice the master-silence bound (4 s) in all, not before.
        let mut net = Net::holding(3, &[3]);
        net.run_ms(1500);
        let t = net.now;
        let mut halted_at = None;
        for _ in 0..6000 {
            net.wire.retain(|(_, from, to, _)| !(*from == 1 && *to == 2));
            net.run_ms(1);
            if !net.halted.is_empty() {
                halted_at = Some(net.now.since(t) / MS);
                break;
            }
        }
        let at = halted_at.unwrap_or_else(|| panic!("node 2 did not halt within 6 s of silence"));
        assert!((3900..=4200).contains(&at), "halted after {at} ms of control silence (bound 4000 ms)");
        assert_eq!(net.halted, vec![(2, HaltReason::ClusterLost)]);
    }

    const MS: u64 = 1_000_000;
}
