//! A deterministic simulator of many composed nodes ([`crate::node::Node`]:
//! membership and services joined by the node's composition rules), on the
//! shared harness ([`crate::testing`]).
//!
//! Services faults: failing action functions (start, stop, recovery, with
//! seeded probabilities), monitor failures, operator commands (switchover,
//! standby, maintenance) and dropped control-channel connections. Services
//! messages travel as the agent's control channel carries them ([`Stream`]:
//! in order while a connection lasts, lost with it, never resent). Checked
//! after every step: a One group is never active on two live nodes (except
//! a disowned life in the stale window, counted: see `check_services`), no
//! node holds a hot standby and the registered instance, a node that left
//! has nothing active; after healing every wanted group runs exactly once
//! and every node's registrations agree with what runs.
//!
//! One seed drives everything: the cluster size, the registered levels and
//! their barriers, every fault probability, and the schedule of crashes,
//! restarts, partitions, leaves, local failures, false alarms of the failure
//! detector and slow (paused) nodes. The network loses, duplicates, delays
//! and reorders messages. The simulated failure detector (the datapath's
//! role) reports peers silent or up after a detection delay, and raises
//! false alarms: a live, connected peer reported silent, then up again at
//! its next heartbeat. A slow node is paused for a while: it processes
//! nothing (its inputs queue up and are processed in order when it resumes)
//! and sends no heartbeats, so its peers may take it for dead.
//!
//! Invariants are checked here, outside the code under test, for every node
//! at every step (no node is exempted for having been down, halted, left,
//! partitioned or paused; the rules below say what applies to such a node):
//! * every node that followed a view saw the same content for it;
//! * **ack ordering** — whenever a master publishes a state in which a
//!   transition moved past a step (or completed it), every participant
//!   still listed acknowledged that step (all its subsystems at that level),
//!   unless that master's failure detector reported the participant failed
//!   (silent or distress, not up again since), in this master's life. A node
//!   that was down, restarted or cut off is covered by the same rule: the
//!   master may only pass it by if it saw it fail, and then it forces it out;
//! * the steps of one transition are notified on each node in the right
//!   direction (bottom-up for join and forced leave, top-down for leave) and
//!   barriers in order;
//! * **split brain** — at no moment are two running nodes masters of
//!   quorate states of the same term (checked whenever a master publishes a
//!   state; a stale master of an older term may run until it hears of the
//!   newer one, it is forced out by then; a paused master counts, unless no
//!   node is Joined or Leaving in its state); and a life of Y whose forced
//!   leave a master completed while it still acted as joined (it had not
//!   learned it yet: counted as `forced_out_late`, see `check_not_acting`)
//!   stops acting as joined within [`FORCED_OUT_BOUND_MS`], counted while
//!   it runs unpaused and connected to that master;
//! * a node that halted (forced out, lost quorum, local failure) performs no
//!   action afterwards;
//! * a local failure sends one distress per node life, however many
//!   failures are reported (S0.4), and each node processes a peer's distress
//!   once;
//! * every seed injects faults, and the summary says which (`faults=`); a
//!   run in which none ran is reported as a harness bug;
//! * after the faults stop and the network heals, every node is Joined in
//!   the master's view, every transition completed, and all agree on it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::membership::{
    Action, Barriers, ClusterState, Config, Input, Kind, LevelSpec, Msg, NodeState, Step, SubsystemId,
    Transition, TransitionId, ViewId,
};
use crate::node::{LevelRole, Node, NodeAction, NodeInput, FIRST_EXTERNAL_SUBSYSTEM};
use crate::services::{self, ActionResult, Allowable, LocalPhase, Maturity, Placement, Preference, ServiceSpec, ServiceState, Services, StandbyPhase, TransferCost};
use crate::testing::{Clock, Detector, DetectorConfig, FaultCounts, Net, NetConfig, Rng, Trace};
use crate::{Instant, NodeId};

/// Everything a run depends on, derived from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: u32,
    pub levels: Vec<LevelSpec>,
    pub subgroup_size: usize,
    pub loss: f64,
    pub dup: f64,
    pub delay_ms: (u64, u64),
    pub detect_ms: u64,
    /// Faults happen during `0..fault_ms`; then everything heals.
    pub fault_ms: u64,
    pub settle_ms: u64,
    pub crash_p: f64,
    pub partition_p: f64,
    pub leave_p: f64,
    pub distress_p: f64,
    pub staggered_start: bool,
    /// The cores' coalescing window (`Config::batch_ns`), in ms.
    pub batch_ms: u64,
    /// Per fault slot: a false alarm of the failure detector.
    pub false_alarm_p: f64,
    /// Per fault slot: a node pauses (a slow node).
    pub pause_p: f64,
    /// Rule 8 of `baton_core::node`: how long an addresses step of a
    /// forced leave waits for the forced-out life's lease (the agent's
    /// `interval × (misses + 1)`), in ms.
    pub lease_wait_ms: u64,
    /// How often action functions fail while faults are on.
    pub actions: ActionFaults,
    /// Per fault slot: an operator command (switchover, standby on or
    /// off, maintenance on or off) on a random running node.
    pub operator_p: f64,
    /// Per fault slot: a control-channel connection drops (what it had
    /// queued is lost, as in the agent).
    pub conn_drop_p: f64,
    /// Links per pair of nodes: the control channel sends every services
    /// message over each link that is up (2: duplicates, reordered across
    /// the links).
    pub links: u32,
}

/// How often action functions fail (per completion, while faults are on),
/// and the monitor-failure probability per fault slot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActionFaults {
    pub start: f64,
    pub stop: f64,
    pub recovery: f64,
    pub monitor: f64,
}

/// The simulator's resource groups, for `n` nodes: a three-deep group
/// `ip` > `app` > `web` (preferred on node 1, free transfer, recovery), a
/// hot-standby `db` on nodes 2–4, an unordered `lic` with a maturity rule
/// (not on the last node) and `mon` on every node of 1–3.
pub fn sim_specs(n: u32) -> Vec<ServiceSpec> {
    vec![
        ServiceSpec { preferred: Some(1), transfer_cost: TransferCost::Free, has_recovery: true, ..ServiceSpec::new("ip") },
        ServiceSpec { parent: Some("ip".into()), has_notify: true, ..ServiceSpec::new("app") },
        ServiceSpec { parent: Some("app".into()), ..ServiceSpec::new("web") },
        ServiceSpec { allowable: Allowable::Nodes(vec![2, 3, 4]), has_notify: true, hot_standby: true, ..ServiceSpec::new("db") },
        ServiceSpec {
            preference: Preference::Unordered,
            maturity: Maturity { nodes_up: Some(2), after_ms: Some(30), primary_up: false },
            disallowable: [n].into(),
            ..ServiceSpec::new("lic")
        },
        ServiceSpec { placement: Placement::Every, allowable: Allowable::Nodes(vec![1, 2, 3]), ..ServiceSpec::new("mon") },
    ]
}

/// The root of `name`'s group in `specs`.
fn root_of<'a>(specs: &'a [ServiceSpec], name: &str) -> &'a ServiceSpec {
    let mut s = specs.iter().find(|s| s.name == name).expect("a configured service");
    while let Some(p) = &s.parent {
        s = specs.iter().find(|x| &x.name == p).expect("parents are configured");
    }
    s
}

impl SimConfig {
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut r = Rng::new(seed ^ 0x6261_746f_6e5f_7369);
        let nodes = r.range(3, 16) as u32;
        let n_levels = r.range(1, 4);
        let mut levels = Vec::new();
        for i in 0..n_levels {
            levels.push(LevelSpec {
                // Between the node's built-in levels (10, 20, 30, 40).
                level: 10 * (i as u32 + 1) + 5,
                barriers: Barriers {
                    join: r.range(1, 3) as u32,
                    leave: r.range(1, 2) as u32,
                    forced_leave: r.range(1, 2) as u32,
                },
            });
        }
        SimConfig {
            seed,
            nodes,
            levels,
            subgroup_size: [1usize, 2, 3, 4][r.below(4) as usize],
            loss: [0.0, 0.01, 0.05, 0.15][r.below(4) as usize],
            dup: [0.0, 0.02, 0.1][r.below(3) as usize],
            delay_ms: (1, r.range(2, 20)),
            detect_ms: 30,
            fault_ms: 3_000,
            settle_ms: 12_000,
            crash_p: [0.0, 0.1, 0.3][r.below(3) as usize],
            partition_p: [0.0, 0.05, 0.15][r.below(3) as usize],
            leave_p: [0.0, 0.05, 0.15][r.below(3) as usize],
            distress_p: [0.0, 0.03, 0.1][r.below(3) as usize],
            staggered_start: r.chance(0.5),
            batch_ms: [0, 1, 2, 5][r.below(4) as usize],
            false_alarm_p: [0.0, 0.05, 0.2][r.below(3) as usize],
            pause_p: [0.0, 0.05, 0.15][r.below(3) as usize],
            ..SimConfig::services_from_seed(seed)
        }
    }

    /// The services part of a seed's parameters, from a separate stream
    /// (the membership draws stay put).
    fn services_from_seed(seed: u64) -> SimConfig {
        let mut r = Rng::new(seed ^ 0x7376_635f_6661_756c);
        SimConfig {
            seed,
            nodes: 0,
            levels: Vec::new(),
            subgroup_size: 0,
            loss: 0.0,
            dup: 0.0,
            delay_ms: (0, 0),
            detect_ms: 0,
            fault_ms: 0,
            settle_ms: 0,
            crash_p: 0.0,
            partition_p: 0.0,
            leave_p: 0.0,
            distress_p: 0.0,
            staggered_start: false,
            batch_ms: 0,
            false_alarm_p: 0.0,
            pause_p: 0.0,
            lease_wait_ms: [0, 40][r.below(2) as usize],
            actions: ActionFaults {
                start: [0.0, 0.02, 0.1, 0.3][r.below(4) as usize],
                stop: [0.0, 0.02, 0.05][r.below(3) as usize],
                recovery: [0.0, 0.05, 0.2][r.below(3) as usize],
                monitor: [0.0, 0.05, 0.15][r.below(3) as usize],
            },
            operator_p: [0.0, 0.05, 0.15][r.below(3) as usize],
            conn_drop_p: [0.0, 0.03, 0.1][r.below(3) as usize],
            links: r.range(1, 2) as u32,
        }
    }
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct SimResult {
    pub seed: u64,
    pub violations: Vec<String>,
    pub trace_hash: u64,
    pub events: u64,
    pub messages: u64,
    pub final_view: Option<ViewId>,
    /// The faults that ran, by kind.
    pub faults: FaultCounts,
    pub summary: String,
    /// Forced leaves that completed while the forced-out life still acted
    /// as joined (it had not learned it yet: after a false alarm, a pause
    /// or message loss), and the longest time until that life stopped.
    pub forced_out_late: u64,
    pub forced_out_late_max_ns: u64,
    /// One groups active on a disowned life and a survivor at once (the
    /// stale window), and the longest such overlap.
    pub stale_overlaps: u64,
    pub stale_overlap_max_ns: u64,
}

impl SimResult {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver { to: NodeId, from: NodeId, to_life: u32, msg: Msg },
    /// A failure-detector event about `subject` (dropped if either side
    /// restarted since). `false_alarm`: reported although heartbeats flow.
    Peer { to: NodeId, to_life: u32, subject: NodeId, subject_life: u32, input: Input, false_alarm: bool },
    SubAck { node: NodeId, life: u32, subsystem: SubsystemId, id: TransitionId, step: Step },
    Crash { node: NodeId },
    Restart { node: NodeId },
    Partition { side: BTreeSet<NodeId> },
    Heal,
    Leave { node: NodeId },
    LocalFailure { node: NodeId, twice: bool },
    Start { node: NodeId },
    /// The failure detector of `observer` falsely reports `subject` silent.
    FalseAlarm { observer: NodeId, subject: NodeId },
    /// `node` stops processing (and heartbeating) for `ms`.
    Pause { node: NodeId, ms: u64 },
    Resume { node: NodeId },
    /// Late in the fault window: if no fault ran yet (every scheduled one
    /// found its node down), pause the lowest running node.
    EnsureFault,
    /// [`FORCED_OUT_BOUND_MS`] after `master` completed the forced leave of
    /// this life of `node` while it still acted as joined: by now it must
    /// have learned it and stopped.
    ForcedOutDeadline { node: NodeId, incarnation: u64, master: NodeId },
    /// The head of the services stream from → to on `link` is due.
    SvcPump { from: NodeId, to: NodeId, link: u32, gen: u64 },
    /// An action function of `node`'s life `life` ended.
    ActionDone { node: NodeId, life: u32, input: services::Input },
    /// A monitor of a service running on `node` reports a failure.
    MonitorFail { node: NodeId },
    /// An operator command on `node` (`kind` names it in the fault counts).
    Operator { node: NodeId, kind: &'static str, input: services::Input },
    /// The control-channel connections between `a` and `b` drop.
    ConnDrop { a: NodeId, b: NodeId },
    /// After the faults: nodes stuck in a failed stop are fenced, and the
    /// operator ends maintenance and standby and registers again what
    /// failed.
    HealServices,
}

/// One control-channel connection from → to on one link, as the agent's
/// channel carries services messages (agent/src/control/channel.rs): a TCP
/// stream, so in order and without loss while it lasts, held through a
/// short cut (TCP retransmits); a message sent while no connection is up
/// is dropped (`send_services` returns false); when the connection drops
/// (either end restarts, or it closes) what it had queued is lost: the
/// channel resends nothing and the services core has no retransmission of
/// its own.
struct Stream {
    /// The lives of the two ends this connection is between.
    lives: (u32, u32),
    gen: u64,
    queue: std::collections::VecDeque<(Instant, services::Msg)>,
    pumping: bool,
    /// Closed until then (redialing).
    down_until: Instant,
}

/// How long a forced-out life that is running, not paused and connected
/// to the master may still act as joined after the master completed its
/// forced leave: it learns it from the master's next state, resent every
/// resend period (50 ms) or, in a quiet cluster, every idle period
/// (300 ms here), so this is six or more chances under message loss.
pub const FORCED_OUT_BOUND_MS: u64 = 2_000;

impl Ev {
    /// The node whose processing this event is (deferred while it is paused).
    fn target(&self) -> Option<NodeId> {
        match self {
            Ev::Deliver { to, .. } | Ev::Peer { to, .. } => Some(*to),
            Ev::SubAck { node, .. } | Ev::Leave { node } | Ev::LocalFailure { node, .. } => Some(*node),
            Ev::SvcPump { to, .. } => Some(*to),
            Ev::ActionDone { node, .. } | Ev::MonitorFail { node } | Ev::Operator { node, .. } => Some(*node),
            _ => None,
        }
    }
}

struct NodeSim {
    core: Option<Node>,
    life: u32,
    incarnation: u64,
    up: bool,
    halted: bool,
    left: bool,
    distress_sent: u32,
    /// Paused (a slow node) until then.
    paused_until: Option<Instant>,
    /// A mirror of the core's failure set, from the inputs fed to this
    /// life: peers reported silent or in distress and not up again since.
    fd_failed: BTreeSet<NodeId>,
    fd_distressed: BTreeSet<NodeId>,
    /// The state this life followed after its last input.
    last_state: Option<ClusterState>,
}

pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    clock: Clock<Ev>,
    net: Net,
    fd: Detector,
    nodes: BTreeMap<NodeId, NodeSim>,
    views: BTreeMap<ViewId, u64>,
    /// The node life that was master of each (lineage, term): one vote per
    /// term (issue 11) allows one master per term of a lineage, ever.
    term_masters: BTreeMap<(ViewId, u64), (NodeId, u64)>,
    /// (node, transition, step) -> the subsystems that acknowledged it.
    acks: BTreeMap<(NodeId, TransitionId, Step), BTreeSet<SubsystemId>>,
    notified: BTreeMap<(NodeId, u32, TransitionId), Vec<Step>>,
    /// (receiver life, sender, sender incarnation) -> distress processed count.
    distress_processed: BTreeMap<(NodeId, u32, NodeId, u64), u32>,
    faults: FaultCounts,
    /// When the current partition began.
    partitioned_at: Option<Instant>,
    /// Forced-out lives (node, incarnation) still acting as joined when
    /// their forced leave completed -> when it completed.
    late_forced: BTreeMap<(NodeId, u64), Instant>,
    forced_out_late: u64,
    forced_out_late_max_ns: u64,
    violations: Vec<String>,
    events: u64,
    messages: u64,
    trace: Trace,
    /// Built-in level steps held by a node: (node, life, transition, role).
    held: BTreeMap<(NodeId, u32, TransitionId, LevelRole), Step>,
    /// Lives whose services the survivors recover (some node fed the
    /// forced leave's services step as `NodeFailed`): (node, incarnation).
    disowned: BTreeSet<(NodeId, u64)>,
    streams: BTreeMap<(NodeId, NodeId, u32), Stream>,
    /// Services messages: sent, dropped (no connection), lost in a
    /// connection that dropped, delivered.
    svc_sent: u64,
    svc_dropped: u64,
    svc_lost: u64,
    svc_delivered: u64,
    /// Services whose action or monitor failed (the operator registers
    /// them again after the faults), and nodes whose stop failed.
    all_failed: BTreeSet<String>,
    /// One groups active on two live nodes where one is a disowned life
    /// (the stale window): since when, per service; how many; the longest.
    overlap_since: BTreeMap<String, Instant>,
    stale_overlaps: u64,
    stale_overlap_max_ns: u64,
    /// Services reported unsafe now (a violation is reported once until
    /// it clears).
    unsafe_now: BTreeSet<String>,
}

/// The seed's external subsystems (ids from [`FIRST_EXTERNAL_SUBSYSTEM`]).
fn subsystems(levels: &[LevelSpec]) -> Vec<(SubsystemId, LevelSpec)> {
    levels.iter().enumerate().map(|(i, l)| (FIRST_EXTERNAL_SUBSYSTEM + i as SubsystemId, *l)).collect()
}

/// Every step of `t`'s path, in walking order.
fn all_steps(t: &Transition) -> Vec<Step> {
    let mut v = Vec::new();
    for l in &t.path {
        for b in 0..l.barriers.of(t.id.kind) {
            v.push(Step { level: l.level, barrier: b });
        }
    }
    v
}

impl Sim {
    pub fn new(cfg: SimConfig, keep_trace: bool) -> Sim {
        let rng = Rng::new(cfg.seed);
        let mut nodes = BTreeMap::new();
        for id in 1..=cfg.nodes {
            nodes.insert(
                id,
                NodeSim {
                    core: None,
                    life: 0,
                    incarnation: 0,
                    up: false,
                    halted: false,
                    left: false,
                    distress_sent: 0,
                    paused_until: None,
                    fd_failed: BTreeSet::new(),
                    fd_distressed: BTreeSet::new(),
                    last_state: None,
                },
            );
        }
        let net = Net::new(NetConfig { loss: cfg.loss, dup: cfg.dup, delay_us: (cfg.delay_ms.0 * 1000, cfg.delay_ms.1 * 1000) });
        let fd = Detector::new(DetectorConfig {
            detect_ms: cfg.detect_ms,
            up_ms: 2,
            false_alarm_p: cfg.false_alarm_p,
            false_alarm_ms: (5, 120),
        });
        Sim {
            cfg,
            rng,
            clock: Clock::new(),
            net,
            fd,
            nodes,
            views: BTreeMap::new(),
            term_masters: BTreeMap::new(),
            acks: BTreeMap::new(),
            notified: BTreeMap::new(),
            distress_processed: BTreeMap::new(),
            faults: FaultCounts::default(),
            partitioned_at: None,
            late_forced: BTreeMap::new(),
            forced_out_late: 0,
            forced_out_late_max_ns: 0,
            violations: Vec::new(),
            events: 0,
            messages: 0,
            trace: Trace::new(keep_trace),
            held: BTreeMap::new(),
            disowned: BTreeSet::new(),
            streams: BTreeMap::new(),
            svc_sent: 0,
            svc_dropped: 0,
            svc_lost: 0,
            svc_delivered: 0,
            all_failed: BTreeSet::new(),
            overlap_since: BTreeMap::new(),
            stale_overlaps: 0,
            stale_overlap_max_ns: 0,
            unsafe_now: BTreeSet::new(),
        }
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn at(&mut self, t: Instant, ev: Ev) {
        self.clock.at(t, ev);
    }

    fn log(&mut self, line: String) {
        self.trace.log(line);
    }

    fn violation(&mut self, v: String) {
        if self.violations.len() < 20 {
            self.violations.push(format!("t={} {v}", self.now()));
        }
    }

    fn running(&self, n: NodeId) -> bool {
        let s = &self.nodes[&n];
        s.up && !s.halted && !s.left && s.core.is_some()
    }

    fn paused(&self, n: NodeId) -> bool {
        self.nodes[&n].paused_until.is_some()
    }

    /// Whether messages from `a` reach `b` (a paused receiver gets them when it resumes).
    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.running(a) && self.running(b) && self.net.link(a, b)
    }

    /// Whether `b`'s heartbeats reach `a` now.
    fn heartbeats(&self, a: NodeId, b: NodeId) -> bool {
        self.connected(a, b) && self.connected(b, a) && !self.paused(b) && !self.paused(a)
    }

    /// Sends failure-detector events where connectivity changed.
    fn refresh_fd(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let observers: Vec<NodeId> = ids.iter().copied().filter(|a| self.running(*a)).collect();
        let hb: BTreeSet<(NodeId, NodeId)> =
            observers.iter().flat_map(|&a| ids.iter().map(move |&b| (a, b))).filter(|&(a, b)| a != b && self.heartbeats(a, b)).collect();
        let changes = self.fd.refresh(&observers, &ids, |a, b| hb.contains(&(a, b)));
        for (delay, ch) in changes {
            let life = self.nodes[&ch.observer].life;
            let subject_life = self.nodes[&ch.subject].life;
            let input = if ch.up { Input::PeerUp { node: ch.subject } } else { Input::PeerSilent { node: ch.subject } };
            let t = self.now().plus_ms(delay);
            self.at(t, Ev::Peer { to: ch.observer, to_life: life, subject: ch.subject, subject_life, input, false_alarm: false });
        }
    }

    fn start_node(&mut self, n: NodeId) {
        let life = self.nodes[&n].life + 1;
        let incarnation = (life as u64) << 32 | self.rng.below(1 << 20);
        let cfg = Config {
            me: n,
            incarnation,
            nodes: (1..=self.cfg.nodes).collect(),
            subgroup_size: self.cfg.subgroup_size,
            resend_ns: 50_000_000,
            form_ns: 300_000_000,
            batch_ns: self.cfg.batch_ms * 1_000_000,
            two_node_race: false,
        };
        let now = self.now();
        // The composed node: its built-in levels (fencing 10, storage 20,
        // addresses 30, services 40), the services core, the address lease
        // wait of rule 8; then the seed's external subsystems.
        let svc = Services::new(services::Config { me: n, incarnation, services: sim_specs(self.cfg.nodes) }).expect("the simulator's services are valid");
        let mut core = Node::new(now, cfg, Some(svc), None);
        core.set_lease_wait(self.cfg.lease_wait_ms * 1_000_000);
        for (sid, spec) in subsystems(&self.cfg.levels) {
            core.handle(now, NodeInput::Membership(Input::Register { subsystem: sid, spec }));
        }
        while core.poll().is_some() {}
        {
            let s = self.nodes.get_mut(&n).unwrap();
            s.core = Some(core);
            s.life = life;
            s.incarnation = incarnation;
            s.up = true;
            s.halted = false;
            s.left = false;
            s.distress_sent = 0;
            s.paused_until = None;
            s.fd_failed.clear();
            s.fd_distressed.clear();
            s.last_state = None;
        }
        // Every other node's links to it are re-learned from scratch.
        self.fd.forget(n);
        self.log(format!("{now} start n{n} life {life} inc {incarnation:x}"));
        self.input(n, Input::Start);
        self.refresh_fd();
    }

    /// Time passed for `n`'s node: a tick to each of its cores.
    fn tick(&mut self, n: NodeId) {
        if !self.running(n) {
            return;
        }
        let now = self.now();
        if let Some(core) = self.nodes.get_mut(&n).unwrap().core.as_mut() {
            core.handle_timeout(now);
        }
        self.after_input(n);
    }

    /// A services input to `n`'s node.
    fn svc_input(&mut self, n: NodeId, input: services::Input) {
        if !self.running(n) {
            return;
        }
        let now = self.now();
        if self.trace.keeps() {
            // Debugging detail (not hashed): every services input but the
            // ticks, shortened.
            let mut l = format!("{now} n{n} svc<- {input:?}");
            l.truncate(600);
            self.trace.note(|| l);
        }
        if let Some(core) = self.nodes.get_mut(&n).unwrap().core.as_mut() {
            core.handle(now, NodeInput::Services(input));
        }
        self.after_input(n);
    }

    fn input(&mut self, n: NodeId, input: Input) {
        if !self.running(n) {
            return;
        }
        // Mirror the core's failure set (`Membership::failed`): what this
        // life's failure detector said last about each peer.
        {
            let s = self.nodes.get_mut(&n).unwrap();
            match &input {
                Input::PeerUp { node } => {
                    s.fd_failed.remove(node);
                    s.fd_distressed.remove(node);
                }
                Input::PeerSilent { node } if *node != n => {
                    s.fd_failed.insert(*node);
                }
                Input::PeerDistress { node, .. } if *node != n && s.fd_distressed.insert(*node) => {
                    s.fd_failed.insert(*node);
                }
                _ => {}
            }
        }
        let now = self.now();
        if let Some(core) = self.nodes.get_mut(&n).unwrap().core.as_mut() {
            core.handle(now, NodeInput::Membership(input));
        }
        self.after_input(n);
    }

    fn after_input(&mut self, n: NodeId) {
        self.drain(n);
        let st = self.nodes[&n].core.as_ref().and_then(|c| c.membership().state().cloned());
        if let Some(s) = self.nodes.get_mut(&n) {
            s.last_state = st;
        }
        if !self.acts_joined(n) {
            self.stopped_acting(n);
        }
    }

    /// Whether `n`'s current life runs and acts as a joined member.
    fn acts_joined(&self, n: NodeId) -> bool {
        self.running(n) && self.nodes[&n].core.as_ref().is_some_and(|c| c.membership().my_state() == NodeState::Joined)
    }

    /// `n`'s current life no longer acts as joined: if its forced leave had
    /// completed before, that window is over.
    fn stopped_acting(&mut self, n: NodeId) {
        let inc = self.nodes[&n].incarnation;
        if let Some(t) = self.late_forced.remove(&(n, inc)) {
            let w = self.now().since(t);
            self.forced_out_late_max_ns = self.forced_out_late_max_ns.max(w);
            self.log(format!("{} n{n} stopped acting as joined {} after its forced leave completed", self.now(), w as f64 / 1e6));
        }
    }

    fn drain(&mut self, n: NodeId) {
        loop {
            let a = {
                let s = self.nodes.get_mut(&n).unwrap();
                match s.core.as_mut() {
                    Some(c) => c.poll(),
                    None => None,
                }
            };
            let Some(a) = a else { break };
            if self.nodes[&n].halted {
                self.violation(format!("n{n} produced {a:?} after it halted"));
                continue;
            }
            self.node_act(n, a);
        }
    }

    /// What `n`'s composed node asks for.
    fn node_act(&mut self, n: NodeId, a: NodeAction) {
        let life = self.nodes[&n].life;
        let now = self.now();
        match a {
            NodeAction::Membership(a) => self.act(n, a),
            NodeAction::LevelStep { role, id, step, held } => {
                self.log(format!("{now} n{n} level {} {id:?} {step:?}{}", role.name(), if held { " held" } else { "" }));
                self.check_notify_order(n, id, step);
                self.notified.entry((n, life, id)).or_default().push(step);
                if role == LevelRole::Services && id.kind == Kind::ForcedLeave {
                    // The survivors recover that life's services from now on.
                    self.disowned.insert((id.node, id.incarnation));
                }
                if held {
                    if role == LevelRole::Services && id.kind == Kind::Leave {
                        // The node holds one services-level leave per
                        // leaver: a new one replaces one of an earlier
                        // life of the leaver that was never released (that
                        // life was forced out), and `LeaveReleased` then
                        // acknowledges the new one (seed 4730).
                        self.held.retain(|(m, l, i, r), _| !(*m == n && *l == life && i.node == id.node && i.kind == Kind::Leave && *r == role && *i != id));
                    }
                    self.held.insert((n, life, id, role), step);
                } else {
                    self.acks.entry((n, id, step)).or_default().insert(role.subsystem());
                }
            }
            NodeAction::LeaveReleased { node } => {
                self.log(format!("{now} n{n} leave of n{node} released (drained)"));
                let key = self.held.keys().find(|(m, l, id, r)| *m == n && *l == life && id.node == node && id.kind == Kind::Leave && *r == LevelRole::Services).copied();
                if let Some(k) = key {
                    let step = self.held.remove(&k).unwrap();
                    self.acks.entry((n, k.2, step)).or_default().insert(LevelRole::Services.subsystem());
                } else {
                    self.violation(format!("n{n} released the leave of n{node}, which it did not hold"));
                }
            }
            NodeAction::LeaseWait { id, until } => {
                self.log(format!("{now} n{n} lease wait {id:?} until {until}"));
            }
            NodeAction::LeaseWaited { id, waited_ns, silent } => {
                self.log(format!("{now} n{n} lease waited {id:?} {waited_ns} silent={silent}"));
                match self.held.remove(&(n, life, id, LevelRole::Addresses)) {
                    Some(step) => {
                        self.acks.entry((n, id, step)).or_default().insert(LevelRole::Addresses.subsystem());
                    }
                    None => self.violation(format!("n{n} ended a lease wait for {id:?} it did not hold")),
                }
            }
            NodeAction::Services(a) => self.svc_act(n, a),
            NodeAction::Fencing { .. } => {}
        }
    }

    /// A services action of `n`'s node: messages go over the simulated
    /// control channel, action functions run for 1–30 ms and fail with
    /// the seed's probabilities while the faults run.
    fn svc_act(&mut self, n: NodeId, a: services::Action) {
        let life = self.nodes[&n].life;
        let now = self.now();
        let faulty = now < Instant::from_ms(self.cfg.fault_ms);
        let f = self.cfg.actions;
        let (service, p, kind) = match &a {
            services::Action::Send { to, msg } => {
                let (to, msg) = (*to, msg.clone());
                self.send_svc(n, to, msg);
                return;
            }
            services::Action::Alert { service, reason } => {
                self.log(format!("{now} n{n} alert {service} {reason:?}"));
                if matches!(reason, services::AlertReason::AllNodesFailed) {
                    self.all_failed.insert(service.clone());
                }
                return;
            }
            services::Action::Start { params } => (params.service.clone(), f.start, "start_failed"),
            services::Action::Stop { params } => (params.service.clone(), f.stop, "stop_failed"),
            services::Action::Recovery { params, .. } => (params.service.clone(), f.recovery, "recovery_failed"),
            services::Action::Offline { params } => (params.service.clone(), 0.0, ""),
            services::Action::StandbyStart { service } | services::Action::StandbyStop { service } => (service.clone(), 0.0, ""),
            _ => return,
        };
        let fail = faulty && p > 0.0 && self.rng.chance(p);
        let result = if fail {
            self.faults.add(kind);
            self.all_failed.insert(service.clone());
            ActionResult::failed(1, "simulated failure")
        } else {
            ActionResult::OK
        };
        self.log(format!("{now} n{n} runs {a:?}{}", if fail { " (fails)" } else { "" }));
        let input = match a {
            services::Action::Start { .. } => services::Input::StartDone { service, result },
            services::Action::Stop { .. } => services::Input::StopDone { service, result },
            services::Action::Recovery { .. } => services::Input::RecoveryDone { service, result },
            services::Action::Offline { .. } => services::Input::OfflineDone { service, result },
            services::Action::StandbyStart { .. } => services::Input::StandbyStarted { service, result },
            _ => services::Input::StandbyStopped { service, result },
        };
        let t = now.plus_ms(self.rng.range(1, 30));
        self.at(t, Ev::ActionDone { node: n, life, input });
    }

    /// A services message from → to, over every link (see [`Stream`]).
    fn send_svc(&mut self, from: NodeId, to: NodeId, msg: services::Msg) {
        self.svc_sent += 1;
        if !self.running(from) || !self.running(to) {
            self.svc_dropped += 1;
            return;
        }
        let lives = (self.nodes[&from].life, self.nodes[&to].life);
        let now = self.now();
        let (lo, hi) = self.cfg.delay_ms;
        for link in 0..self.cfg.links {
            let delay = self.rng.range(lo * 1000, hi * 1000) * 1000;
            let st = self.streams.entry((from, to, link)).or_insert(Stream {
                lives,
                gen: 0,
                queue: Default::default(),
                pumping: false,
                down_until: Instant::ZERO,
            });
            if st.lives != lives {
                // A new connection between the new lives; the old one's
                // queue was lost with it.
                self.svc_lost += st.queue.len() as u64;
                st.queue.clear();
                st.gen += 1;
                st.pumping = false;
                st.lives = lives;
            }
            if now < st.down_until {
                self.svc_dropped += 1;
                continue;
            }
            let ready = now.plus_ns(delay).max(st.queue.back().map(|x| x.0).unwrap_or(now));
            st.queue.push_back((ready, msg.clone()));
            if !st.pumping {
                st.pumping = true;
                let gen = st.gen;
                self.at(ready, Ev::SvcPump { from, to, link, gen });
            }
        }
    }

    fn pump(&mut self, from: NodeId, to: NodeId, link: u32, gen: u64) {
        let lives = (self.nodes[&from].life, self.nodes[&to].life);
        let alive = self.running(from) && self.running(to);
        let linked = self.net.link(from, to);
        let now = self.now();
        let delay = self.rng.range(50, 200);
        let Some(st) = self.streams.get_mut(&(from, to, link)) else { return };
        if st.gen != gen {
            return;
        }
        if st.lives != lives || !alive {
            // The connection ended with a life of either end.
            self.svc_lost += st.queue.len() as u64;
            st.queue.clear();
            st.gen += 1;
            st.pumping = false;
            return;
        }
        if !linked {
            // Cut: TCP retransmits until the link carries again.
            self.at(now.plus_ms(delay), Ev::SvcPump { from, to, link, gen });
            return;
        }
        let Some((_, msg)) = st.queue.pop_front() else {
            st.pumping = false;
            return;
        };
        match st.queue.front() {
            Some((t, _)) => {
                let t = (*t).max(now);
                self.at(t, Ev::SvcPump { from, to, link, gen });
            }
            None => st.pumping = false,
        }
        self.svc_delivered += 1;
        self.svc_input(to, services::Input::Receive { from, msg });
    }

    /// The connections between `a` and `b` drop (both directions, every
    /// link): what they had queued is lost; they are redialed in 50 ms.
    fn conn_drop(&mut self, a: NodeId, b: NodeId) {
        let now = self.now();
        for key in [(a, b), (b, a)] {
            for link in 0..self.cfg.links {
                if let Some(st) = self.streams.get_mut(&(key.0, key.1, link)) {
                    self.svc_lost += st.queue.len() as u64;
                    st.queue.clear();
                    st.gen += 1;
                    st.pumping = false;
                    st.down_until = now.plus_ms(50);
                }
            }
        }
    }

    /// A life of `n` whose services the survivors recover.
    fn is_disowned(&self, n: NodeId) -> bool {
        self.disowned.contains(&(n, self.nodes[&n].incarnation))
    }

    /// Services safety, after every step, for every live node (running:
    /// up, not halted, not left; a paused node is live). A One group is
    /// active (any local phase but Idle) on at most one live node, except
    /// in the stale window: a live life that the survivors disowned (they
    /// fed its forced leave's services step as `NodeFailed` and recover
    /// its groups) may still hold a group until it learns it was forced
    /// out and halts (the membership check `forced_out_late` bounds that
    /// window; in the agent the address lease covers the addresses). Such
    /// overlaps are counted and timed, not violations. And no node holds
    /// a hot-standby instance and the registered one of a group at once.
    fn check_services(&mut self) {
        let specs = sim_specs(self.cfg.nodes);
        let now = self.now();
        let live: Vec<NodeId> = self.nodes.keys().copied().filter(|n| self.running(*n)).collect();
        for s in &specs {
            if root_of(&specs, &s.name).placement != Placement::One {
                continue;
            }
            let mut on = Vec::new();
            let mut both = None;
            for &n in &live {
                let c = self.nodes[&n].core.as_ref().and_then(|c| c.services()).expect("a running node has its services core");
                let ph = c.local_phase(&s.name);
                if ph.active() {
                    on.push((n, ph, self.is_disowned(n)));
                    if matches!(c.standby_phase(&s.name), StandbyPhase::Starting | StandbyPhase::Running) {
                        both = Some(n);
                    }
                }
            }
            let owned: Vec<(NodeId, LocalPhase)> = on.iter().filter(|x| !x.2).map(|x| (x.0, x.1)).collect();
            let bad = if owned.len() > 1 {
                Some(format!("split brain: One group member {} active on live nodes {owned:?}", s.name))
            } else {
                both.map(|n| format!("n{n} holds a hot-standby instance and the registered one of {}", s.name))
            };
            match bad {
                Some(v) => {
                    if self.unsafe_now.insert(s.name.clone()) {
                        self.violation(v);
                    }
                }
                None => {
                    self.unsafe_now.remove(&s.name);
                }
            }
            if on.len() > 1 {
                if !self.overlap_since.contains_key(&s.name) {
                    self.overlap_since.insert(s.name.clone(), now);
                    self.stale_overlaps += 1;
                    self.log(format!("{now} {} active on {on:?} (a disowned life among them)", s.name));
                }
            } else if let Some(t) = self.overlap_since.remove(&s.name) {
                self.stale_overlap_max_ns = self.stale_overlap_max_ns.max(now.since(t));
            }
        }
    }

    /// The running node whose services core is the decider.
    fn decider(&self) -> Option<NodeId> {
        self.nodes.keys().copied().find(|n| self.running(*n) && self.nodes[n].core.as_ref().and_then(|c| c.services()).is_some_and(|c| c.is_decider()))
    }

    /// After the faults: a node stuck in a failed stop is fenced (crashed:
    /// the only way out of a stuck stop); the operator ends maintenance
    /// and standby, and registers again the services that failed.
    fn heal_services(&mut self) {
        let specs = sim_specs(self.cfg.nodes);
        let stuck: Vec<NodeId> = self
            .nodes
            .keys()
            .copied()
            .filter(|n| self.running(*n))
            .filter(|n| {
                let c = self.nodes[n].core.as_ref().and_then(|c| c.services()).unwrap();
                specs.iter().any(|s| c.local_phase(&s.name) == LocalPhase::StopFailed)
            })
            .collect();
        for n in stuck {
            self.log(format!("{} n{n} fenced (a stop failed)", self.now()));
            self.at(self.now(), Ev::Crash { node: n });
        }
        let Some(d) = self.decider() else { return };
        let (maint, standby): (bool, Vec<NodeId>) = {
            let r = self.nodes[&d].core.as_ref().and_then(|c| c.services()).unwrap().registry();
            (r.maintenance, r.standby.iter().copied().collect())
        };
        // Registering clears a service's failures (S4.x: the operator's
        // answer to the alerts): every service that failed, once the
        // faults are over.
        let not_registered: Vec<String> = self.all_failed.iter().cloned().collect();
        if maint {
            self.log(format!("{} operator: maintenance off on n{d}", self.now()));
            self.svc_input(d, services::Input::Maintenance { on: false });
        }
        for node in standby {
            self.log(format!("{} operator: standby off for n{node} on n{d}", self.now()));
            self.svc_input(d, services::Input::Standby { node, on: false });
        }
        for service in not_registered {
            self.log(format!("{} operator: register {service} on n{d}", self.now()));
            self.svc_input(d, services::Input::Register { service });
        }
    }

    /// After healing: every wanted group runs exactly once (Every: on
    /// every allowed node), with its hot standby where the decider says,
    /// and every node's view of the registrations agrees with what runs
    /// (registrations survived the decider changes).
    fn final_services_checks(&mut self) {
        let specs = sim_specs(self.cfg.nodes);
        let live: Vec<NodeId> = self.nodes.keys().copied().filter(|n| self.running(*n)).collect();
        let Some(d) = self.decider() else {
            self.violation("no services decider after healing".into());
            return;
        };
        let svc = |n: NodeId| self.nodes[&n].core.as_ref().and_then(|c| c.services()).unwrap();
        let mut v = Vec::new();
        if svc(d).registry().maintenance || !svc(d).registry().standby.is_empty() {
            v.push(format!("after healing the decider n{d} still has maintenance or standby: {:?}", svc(d).registry()));
        }
        for s in &specs {
            let root = root_of(&specs, &s.name);
            let allowed: Vec<NodeId> = live.iter().copied().filter(|n| root.may_run_on(*n)).collect();
            let on: Vec<NodeId> = live.iter().copied().filter(|n| svc(*n).local_phase(&s.name) == LocalPhase::Running).collect();
            let want = match root.placement {
                Placement::One => usize::from(!allowed.is_empty()),
                Placement::Every => allowed.len(),
            };
            if on.len() != want {
                v.push(format!(
                    "after healing {} runs on {on:?}, allowed live nodes {allowed:?}; the decider n{d}'s entry: {:?}",
                    s.name,
                    svc(d).registry().services.get(&s.name)
                ));
                continue;
            }
            if s.hot_standby {
                let sb: Vec<NodeId> = live.iter().copied().filter(|n| svc(*n).standby_phase(&s.name) == StandbyPhase::Running).collect();
                let expect: Vec<NodeId> = svc(d).hot_standby_of(&s.name).into_iter().collect();
                if (on.len() == 1 && allowed.len() > 1 && expect.is_empty()) || sb != expect || expect.iter().any(|n| on.contains(n)) {
                    v.push(format!("after healing {}: standby on {sb:?}, the decider n{d} expects {expect:?} (runs on {on:?})", s.name));
                }
            }
            for &n in &live {
                let Some(st) = svc(n).snapshot().into_iter().find(|x| x.name == s.name) else {
                    v.push(format!("n{n} does not show {}", s.name));
                    continue;
                };
                let regs: Vec<NodeId> = st.nodes.iter().filter(|(_, s)| **s == ServiceState::Registered).map(|(n, _)| *n).collect();
                if regs != on || (want > 0 && st.state != ServiceState::Registered) {
                    v.push(format!("after healing n{n} sees {} as {:?} on {:?}, it runs on {on:?}", s.name, st.state, st.nodes));
                }
            }
        }
        for x in v {
            self.violation(x);
        }
    }

    fn act(&mut self, n: NodeId, a: Action) {
        let life = self.nodes[&n].life;
        let now = self.now();
        match a {
            Action::Send { to, msg } => {
                self.messages += 1;
                if let Msg::Gmp(g) = &msg {
                    self.trace.note(|| format!("{now} n{n} -> n{to} {g:?}"));
                }
                if !self.connected(n, to) {
                    return;
                }
                let delays = self.net.transmit(&mut self.rng, n, to);
                let to_life = self.nodes[&to].life;
                for d in delays {
                    self.at(now.plus_ns(d), Ev::Deliver { to, from: n, to_life, msg: msg.clone() });
                }
            }
            Action::Notify { subsystem, id, step, states: _ } => {
                self.log(format!("{now} n{n} notify s{subsystem} {id:?} {step:?}"));
                self.check_notify_order(n, id, step);
                self.notified.entry((n, life, id)).or_default().push(step);
                let d = self.rng.range(0, 8_000_000);
                self.at(now.plus_ns(d), Ev::SubAck { node: n, life, subsystem, id, step });
            }
            Action::SendDistress { reason } => {
                self.nodes.get_mut(&n).unwrap().distress_sent += 1;
                if self.nodes[&n].distress_sent > 1 {
                    self.violation(format!("n{n} sent a second distress in one life"));
                }
                self.log(format!("{now} n{n} distress {reason}"));
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                for b in ids {
                    if b != n && self.connected(n, b) {
                        let to_life = self.nodes[&b].life;
                        // Redundantly on every link: two copies.
                        for k in 0..2 {
                            let t = now.plus_ns(500_000 + k * 100_000);
                            let input = Input::PeerDistress { node: n, reason };
                            self.at(t, Ev::Peer { to: b, to_life, subject: n, subject_life: life, input, false_alarm: false });
                        }
                    }
                }
            }
            Action::Terminate { subsystem, reason } => {
                self.log(format!("{now} n{n} terminate s{subsystem} {reason}"));
            }
            Action::Halt { why } => {
                self.log(format!("{now} n{n} halt {why:?}"));
                self.nodes.get_mut(&n).unwrap().halted = true;
                self.stopped_acting(n);
                // A halted node stops heartbeating; it is restarted later.
                let t = now.plus_ms(self.rng.range(200, 800));
                self.at(t, Ev::Restart { node: n });
                self.refresh_fd();
            }
            Action::Left => {
                self.log(format!("{now} n{n} left"));
                // A graceful leave goes on only once the node is drained.
                // (Not a life the survivors disowned: a node that asked to
                // leave and was forced out meanwhile, after a false alarm,
                // learns `Left` without a drain; its groups were recovered
                // elsewhere: the stale window of `check_services`.)
                let disowned = self.is_disowned(n);
                if let Some(c) = self.nodes[&n].core.as_ref().and_then(|c| c.services()).filter(|_| !disowned) {
                    let active: Vec<(String, LocalPhase)> =
                        sim_specs(self.cfg.nodes).iter().map(|s| (s.name.clone(), c.local_phase(&s.name))).filter(|(_, p)| p.active()).collect();
                    if !active.is_empty() {
                        self.violation(format!("n{n} left with {active:?} still active"));
                    }
                }
                self.nodes.get_mut(&n).unwrap().left = true;
                self.stopped_acting(n);
                let t = now.plus_ms(self.rng.range(100, 600));
                self.at(t, Ev::Restart { node: n });
                self.refresh_fd();
            }
            Action::TransitionCompleted { id, participants, path: _ } => {
                self.log(format!("{now} n{n} completed {id:?}"));
                self.check_completion(n, id, &participants);
                if id.kind == Kind::ForcedLeave {
                    self.check_not_acting(n, id);
                }
            }
            Action::PeerFailed { node, distress } => {
                self.log(format!("{now} n{n} peer failed n{node} distress={distress}"));
                if distress {
                    let inc = self.nodes[&node].incarnation;
                    let c = self.distress_processed.entry((n, life, node, inc)).or_insert(0);
                    *c += 1;
                    if *c > 1 {
                        self.violation(format!("n{n} processed n{node}'s distress twice"));
                    }
                }
            }
            Action::PeerGone { node } => {
                self.log(format!("{now} n{n} peer gone n{node}"));
            }
            Action::StopRequested => {
                self.log(format!("{now} n{n} stop requested"));
            }
            Action::StateChanged { view } => {
                if self.trace.keeps() {
                    let c = self.nodes[&n].core.as_ref().map(|c| c.membership());
                    let master = c.map(|c| c.is_master()).unwrap_or(false);
                    let dbg = c.map(|c| c.debug_line()).unwrap_or_default();
                    let grp = c.and_then(|c| c.state()).map(|s| s.group());
                    self.trace.note(|| format!("{now} n{n} view {view:?} master={master} group={grp:?} {dbg}"));
                }
                let st = self.nodes[&n].core.as_ref().and_then(|c| c.membership().state().cloned());
                if let Some(st) = st {
                    self.check_view(n, view, &st);
                }
            }
        }
    }

    fn check_view(&mut self, n: NodeId, view: ViewId, st: &ClusterState) {
        if st.view != view {
            // The core moved on within the same call; its later
            // StateChanged covers the newer view.
            return;
        }
        let mut h = crate::testing::FNV_START;
        crate::testing::fnv(&mut h, &format!("{:?}{:?}", st.nodes, st.transitions));
        match self.views.get(&view) {
            Some(prev) if *prev != h => {
                self.violation(format!("n{n} followed view {view:?} with content different from another node's"));
            }
            _ => {
                self.views.insert(view, h);
            }
        }
        let is_master = st.view.master == n && self.nodes[&n].core.as_ref().is_some_and(|c| c.membership().is_master());
        if is_master {
            let life = (n, st.view.master_incarnation);
            let first = *self.term_masters.entry((st.origin, st.view.term)).or_insert(life);
            if first != life {
                self.violation(format!(
                    "two masters of term {} of one lineage: n{} (life {}) and n{n} (life {})",
                    st.view.term, first.0, first.1, life.1
                ));
            }
            self.check_takeover(n, st);
            self.check_split_brain(n, st);
            self.check_advances(n, st);
        }
    }

    /// Split brain: at no moment are two running node lives masters of
    /// quorate states of the same term. (Terms are per lineage: a cluster
    /// formed anew after every node restarted begins at term 1 again, so
    /// the rule is about lives that are masters at the same time. A stale
    /// master of an older term may still run, unaware, until it hears of
    /// the newer one: that is not two masters of one term.)
    fn check_split_brain(&mut self, n: NodeId, st: &ClusterState) {
        if !st.quorate {
            return;
        }
        let others: Vec<(NodeId, ViewId)> = self
            .nodes
            .iter()
            .filter(|(m, s)| **m != n && s.up && !s.halted && !s.left)
            .filter_map(|(m, s)| {
                let c = s.core.as_ref()?.membership();
                let o = c.state()?;
                // A paused master counts (a stopped process keeps its
                // addresses, and its lease thread is stopped too), except
                // one whose state has no Joined or Leaving member: nothing
                // runs in that cluster (services count only those members),
                // and while paused its joins cannot progress (seed 3837: a
                // master paused right after forming, before anyone heard of
                // it; it yields when it resumes).
                let runs_nothing = !o.nodes.values().any(|e| matches!(e.state, NodeState::Joined | NodeState::Leaving));
                if s.paused_until.is_some() && runs_nothing {
                    return None;
                }
                (c.is_master() && !c.is_halted() && o.quorate && o.view.master == *m && o.view.term == st.view.term)
                    .then_some((*m, o.view))
            })
            .collect();
        for (m, v) in others {
            self.violation(format!("split brain: n{n} and n{m} are both masters of quorate states of term {} ({:?} and {v:?})", st.view.term, st.view));
        }
    }

    /// Split brain, at a takeover: a node that takes over (publishes a
    /// state of a higher term than the one it followed) has a majority of
    /// that state's group on its side. Ground truth: a member that is
    /// running beyond a partition older than three detection bounds counts
    /// against it (within the bound, the failure detector cannot know yet).
    fn check_takeover(&mut self, n: NodeId, st: &ClusterState) {
        let Some(old) = self.nodes[&n].last_state.clone() else { return };
        if st.view.term <= old.view.term || self.cfg.nodes <= 2 {
            return;
        }
        let settled = self.partitioned_at.is_some_and(|t| self.now().since(t) > 3 * self.cfg.detect_ms * 1_000_000);
        if !settled {
            return;
        }
        let group = old.group();
        let far: Vec<NodeId> =
            group.iter().copied().filter(|g| *g != n && self.running(*g) && !self.net.link(n, *g)).collect();
        if (group.len() - far.len()) * 2 <= group.len() {
            self.violation(format!(
                "split brain: n{n} took over in term {} with a minority of the group {group:?}: {far:?} are alive beyond a partition",
                st.view.term
            ));
        }
    }

    /// Whether participant `p` acknowledged `step` of `id` at every
    /// subsystem registered at that level.
    fn acked(&self, p: NodeId, id: TransitionId, step: Step) -> bool {
        let mut want: BTreeSet<SubsystemId> =
            subsystems(&self.cfg.levels).iter().filter(|(_, l)| l.level == step.level).map(|(s, _)| *s).collect();
        want.extend(LevelRole::ALL.iter().filter(|r| r.level() == step.level).map(|r| r.subsystem()));
        self.acks.get(&(p, id, step)).is_some_and(|got| want.is_subset(got))
    }

    /// The ack-ordering rule, at the master: the steps in `steps` were
    /// passed; each participant in `participants` must have acknowledged
    /// them unless this master life saw it fail.
    fn check_passed(&mut self, master: NodeId, id: TransitionId, steps: &[Step], participants: &BTreeSet<NodeId>, what: &str) {
        let failed = self.nodes[&master].fd_failed.clone();
        for &p in participants {
            if failed.contains(&p) {
                continue;
            }
            for &step in steps {
                if !self.acked(p, id, step) {
                    let got = self.acks.get(&(p, id, step)).cloned().unwrap_or_default();
                    self.violation(format!(
                        "master n{master} {what} {id:?} past {step:?} although n{p} did not acknowledge it (acked by {got:?}) and was not reported failed"
                    ));
                    break;
                }
            }
        }
    }

    /// Compares the state a master publishes with the one it held before
    /// this input: every transition that moved on passed its steps.
    fn check_advances(&mut self, n: NodeId, st: &ClusterState) {
        let Some(old) = self.nodes[&n].last_state.clone() else { return };
        for (node, t_old) in &old.transitions {
            let steps = all_steps(t_old);
            let Some(from) = steps.iter().position(|s| *s == t_old.step()) else { continue };
            match st.transitions.get(node) {
                Some(t_new) if t_new.id == t_old.id => {
                    let Some(to) = steps.iter().position(|s| *s == t_new.step()) else { continue };
                    if to > from {
                        let parts: BTreeSet<NodeId> = t_new.participants.intersection(&t_old.participants).copied().collect();
                        self.check_passed(n, t_old.id, &steps[from..to], &parts, "moved");
                    }
                }
                // A join reversed into a leave at a level boundary (S1.6):
                // the join's current level was completed.
                Some(t_new)
                    if t_old.id.kind == Kind::Join
                        && t_new.id.kind == Kind::Leave
                        && t_new.id.incarnation == t_old.id.incarnation =>
                {
                    let level = t_old.step().level;
                    let end = steps.iter().rposition(|s| s.level == level).map(|i| i + 1).unwrap_or(from);
                    let parts: BTreeSet<NodeId> = t_new.participants.intersection(&t_old.participants).copied().collect();
                    self.check_passed(n, t_old.id, &steps[from..end], &parts, "reversed");
                }
                // Completed (checked with its TransitionCompleted) or
                // replaced by a forced leave (its node failed).
                _ => {}
            }
        }
    }

    /// A transition the master completed passed every step from where the
    /// master's previous state had it.
    fn check_completion(&mut self, master: NodeId, id: TransitionId, participants: &BTreeSet<NodeId>) {
        let old = self.nodes[&master].last_state.as_ref().and_then(|s| s.transitions.get(&id.node)).filter(|t| t.id == id).cloned();
        let Some(t) = old else {
            // Begun and completed within one input: every step passed.
            // (The path is not known from the old state; the action's
            // participants acknowledged each step of it.)
            return;
        };
        let steps = all_steps(&t);
        let from = steps.iter().position(|s| *s == t.step()).unwrap_or(0);
        self.check_passed(master, id, &steps[from..], participants, "completed");
    }

    /// A forced-out life that does not know it yet. When a master
    /// completes the forced leave of Y and that life of Y still runs and
    /// acts as a joined member (it was taken for dead after a false alarm,
    /// a pause longer than the detection bound, or silence under loss, and
    /// the state that tells it was lost or is still in flight), the
    /// membership core cannot have prevented it: a forced leave does not
    /// wait for the node it removes (S1.7: that node halts when it learns
    /// it). What keeps Y from holding what the survivors recover is outside
    /// this core: the silence confirmation of the agent, the fencing level
    /// (no takeover before Y is fenced) and the address lease (docs/chaos.md,
    /// "Known violations"). So this is counted and timed (the summary's
    /// `forced_out_late`), and what the core does promise is checked: that
    /// life of Y stops acting as joined within [`FORCED_OUT_BOUND_MS`] of
    /// the completion, counted while it runs unpaused and is connected to
    /// the master both ways.
    fn check_not_acting(&mut self, master: NodeId, id: TransitionId) {
        if self.nodes[&id.node].incarnation != id.incarnation || !self.acts_joined(id.node) {
            return;
        }
        let now = self.now();
        self.forced_out_late += 1;
        self.late_forced.insert((id.node, id.incarnation), now);
        self.log(format!("{now} n{} still acts as joined at the completion of its forced leave by n{master}", id.node));
        let t = now.plus_ms(FORCED_OUT_BOUND_MS);
        self.at(t, Ev::ForcedOutDeadline { node: id.node, incarnation: id.incarnation, master });
    }

    /// The steps of one transition are notified on a node in walking order.
    fn check_notify_order(&mut self, n: NodeId, id: TransitionId, step: Step) {
        let life = self.nodes[&n].life;
        if let Some(prev) = self.notified.get(&(n, life, id)).and_then(|v| v.last()).copied() {
            let ok = if prev.level == step.level {
                step.barrier > prev.barrier
            } else if id.kind == Kind::Leave {
                step.level < prev.level
            } else {
                step.level > prev.level
            };
            if !ok && prev != step {
                self.violation(format!("n{n}: {id:?} notified {step:?} after {prev:?} (wrong order)"));
            }
        }
    }

    fn process(&mut self, ev: Ev) {
        self.events += 1;
        // A paused node processes nothing: its inputs wait, in order.
        if let Some(t) = ev.target() {
            if let Some(until) = self.nodes[&t].paused_until {
                self.at(until, ev);
                return;
            }
        }
        let now = self.now();
        match ev {
            Ev::Deliver { to, from, to_life, msg } => {
                if self.nodes[&to].life != to_life || !self.connected(from, to) {
                    return;
                }
                self.input(to, Input::Receive { from, msg });
            }
            Ev::Peer { to, to_life, subject, subject_life, input, false_alarm } => {
                if self.nodes[&to].life != to_life {
                    return;
                }
                // A silence noticed about a node that has restarted since is
                // stale: the new life's heartbeats keep its links up.
                if self.nodes[&subject].life != subject_life && !matches!(input, Input::PeerDistress { .. }) {
                    return;
                }
                // Like the datapath: silence is only reported if the link is
                // still silent when the bound expires (unless it is a false
                // alarm), and "up" only while up.
                match input {
                    Input::PeerSilent { .. } if !false_alarm && self.heartbeats(to, subject) => return,
                    Input::PeerUp { .. } if !self.heartbeats(to, subject) => return,
                    _ => {}
                }
                if false_alarm {
                    if !self.running(to) {
                        return;
                    }
                    self.faults.add("false_alarm");
                }
                self.log(format!("{now} n{to} fd {input:?}{}", if false_alarm { " (false alarm)" } else { "" }));
                self.input(to, input);
            }
            Ev::SubAck { node, life, subsystem, id, step } => {
                if self.nodes[&node].life != life || !self.running(node) {
                    return;
                }
                self.acks.entry((node, id, step)).or_default().insert(subsystem);
                self.input(node, Input::Ack { subsystem, id, step });
            }
            Ev::Crash { node } => {
                if !self.running(node) {
                    return;
                }
                self.faults.add("crash");
                self.log(format!("{now} n{node} crash"));
                self.stopped_acting(node);
                let s = self.nodes.get_mut(&node).unwrap();
                s.up = false;
                s.core = None;
                s.paused_until = None;
                self.refresh_fd();
                let t = now.plus_ms(self.rng.range(100, 1500));
                self.at(t, Ev::Restart { node });
            }
            Ev::Restart { node } | Ev::Start { node } => {
                if self.running(node) {
                    return;
                }
                self.start_node(node);
            }
            Ev::Partition { side } => {
                self.faults.add("partition");
                self.log(format!("{now} partition {side:?}"));
                self.net.partition(side, 1..=self.cfg.nodes);
                self.partitioned_at = Some(now);
                self.refresh_fd();
            }
            Ev::Heal => {
                self.log(format!("{now} heal"));
                self.net.heal();
                self.partitioned_at = None;
                self.refresh_fd();
            }
            Ev::Leave { node } => {
                if self.running(node) {
                    self.faults.add("leave");
                }
                self.log(format!("{now} n{node} asks to leave"));
                self.input(node, Input::Leave);
            }
            Ev::LocalFailure { node, twice } => {
                if self.running(node) {
                    self.faults.add("local_failure");
                }
                self.log(format!("{now} n{node} local failure"));
                self.input(node, Input::LocalFailure { from: Some(1), reason: 3 });
                if twice {
                    // S0.4: the second report is ignored.
                    self.input(node, Input::LocalFailure { from: Some(2), reason: 4 });
                }
            }
            Ev::FalseAlarm { observer, subject } => {
                // Only a live, connected peer can be falsely reported.
                if !self.heartbeats(observer, subject) {
                    return;
                }
                let (lo, hi) = self.fd.cfg.false_alarm_ms;
                let back = self.rng.range(lo, hi);
                let to_life = self.nodes[&observer].life;
                let subject_life = self.nodes[&subject].life;
                let silent = Input::PeerSilent { node: subject };
                self.at(now, Ev::Peer { to: observer, to_life, subject, subject_life, input: silent, false_alarm: true });
                // Its next heartbeat: up again (if the link still carries them).
                let up = Input::PeerUp { node: subject };
                self.at(now.plus_ms(back), Ev::Peer { to: observer, to_life, subject, subject_life, input: up, false_alarm: false });
            }
            Ev::Pause { node, ms } => {
                if !self.running(node) || self.paused(node) {
                    return;
                }
                self.faults.add("pause");
                self.log(format!("{now} n{node} paused for {ms} ms"));
                let until = now.plus_ms(ms);
                self.nodes.get_mut(&node).unwrap().paused_until = Some(until);
                self.refresh_fd();
                self.at(until, Ev::Resume { node });
            }
            Ev::EnsureFault => {
                if self.faults.total() == 0 {
                    if let Some(node) = (1..=self.cfg.nodes).find(|n| self.running(*n) && !self.paused(*n)) {
                        self.at(now, Ev::Pause { node, ms: 100 });
                    }
                }
            }
            Ev::ForcedOutDeadline { node, incarnation, master } => {
                if !self.late_forced.contains_key(&(node, incarnation)) {
                    return;
                }
                if self.nodes[&node].incarnation != incarnation || !self.acts_joined(node) {
                    self.stopped_acting(node);
                    return;
                }
                // It can only learn from a master (or a successor) it hears:
                // while it is paused or cut off, the bound starts again.
                let linked = self.running(master) && self.net.link(master, node) && self.net.link(node, master);
                if self.paused(node) || !linked {
                    let t = now.plus_ms(FORCED_OUT_BOUND_MS);
                    self.at(t, Ev::ForcedOutDeadline { node, incarnation, master });
                    return;
                }
                let view = self.nodes[&node].core.as_ref().and_then(|c| c.membership().state()).map(|s| s.view);
                self.violation(format!(
                    "split brain: n{node} (inc {incarnation:x}) still acts as joined (following {view:?}) {FORCED_OUT_BOUND_MS} ms after master n{master} completed its forced leave, connected to it"
                ));
            }
            Ev::SvcPump { from, to, link, gen } => self.pump(from, to, link, gen),
            Ev::ActionDone { node, life, input } => {
                if self.nodes[&node].life == life {
                    self.svc_input(node, input);
                }
            }
            Ev::MonitorFail { node } => {
                if !self.running(node) {
                    return;
                }
                let specs = sim_specs(self.cfg.nodes);
                let c = self.nodes[&node].core.as_ref().and_then(|c| c.services()).unwrap();
                let running: Vec<String> = specs.iter().filter(|s| c.local_phase(&s.name) == LocalPhase::Running).map(|s| s.name.clone()).collect();
                if running.is_empty() {
                    return;
                }
                let service = running[self.rng.below(running.len() as u64) as usize].clone();
                self.faults.add("monitor_failed");
                self.all_failed.insert(service.clone());
                self.log(format!("{now} n{node} monitor failed {service}"));
                self.svc_input(node, services::Input::MonitorFailed { service });
            }
            Ev::Operator { node, kind, input } => {
                if !self.running(node) {
                    return;
                }
                self.faults.add(kind);
                self.log(format!("{now} n{node} operator {input:?}"));
                self.svc_input(node, input);
            }
            Ev::ConnDrop { a, b } => {
                if !self.running(a) || !self.running(b) {
                    return;
                }
                self.faults.add("conn_drop");
                self.log(format!("{now} connections n{a} <-> n{b} drop"));
                self.conn_drop(a, b);
            }
            Ev::HealServices => self.heal_services(),
            Ev::Resume { node } => {
                if self.nodes[&node].paused_until.is_none() {
                    return;
                }
                self.log(format!("{now} n{node} resumes"));
                self.nodes.get_mut(&node).unwrap().paused_until = None;
                self.refresh_fd();
            }
        }
    }

    fn schedule_faults(&mut self) {
        let n = self.cfg.nodes;
        for id in 1..=n {
            let t = if self.cfg.staggered_start { Instant::from_ms(self.rng.range(0, 800)) } else { Instant::ZERO };
            self.at(t, Ev::Start { node: id });
        }
        let mut scheduled = 0;
        let mut t = 500u64;
        let mut srng = Rng::new(self.cfg.seed ^ 0x7376_635f_7363_6864);
        loop {
            t += self.rng.range(50, 300);
            if t + 20 >= self.cfg.fault_ms {
                break;
            }
            let node = self.rng.range(1, n as u64) as NodeId;
            if self.rng.chance(self.cfg.crash_p) {
                self.at(Instant::from_ms(t), Ev::Crash { node });
                scheduled += 1;
            }
            if self.rng.chance(self.cfg.leave_p) {
                self.at(Instant::from_ms(t + 7), Ev::Leave { node });
                scheduled += 1;
            }
            if self.rng.chance(self.cfg.distress_p) {
                let twice = self.rng.chance(0.5);
                self.at(Instant::from_ms(t + 13), Ev::LocalFailure { node, twice });
                scheduled += 1;
            }
            if self.rng.chance(self.cfg.partition_p) {
                let mut side = BTreeSet::new();
                for i in 1..=n {
                    if self.rng.chance(0.5) {
                        side.insert(i);
                    }
                }
                self.at(Instant::from_ms(t + 3), Ev::Partition { side });
                let heal = (t + self.rng.range(100, 800)).min(self.cfg.fault_ms);
                self.at(Instant::from_ms(heal), Ev::Heal);
                scheduled += 1;
            }
            if self.rng.chance(self.cfg.false_alarm_p) {
                let subject = self.rng.range(1, n as u64) as NodeId;
                if subject != node {
                    self.at(Instant::from_ms(t + 17), Ev::FalseAlarm { observer: node, subject });
                    scheduled += 1;
                }
            }
            if self.rng.chance(self.cfg.pause_p) {
                // Mostly shorter than the detection bound, sometimes longer.
                let ms = if self.rng.chance(0.5) { self.rng.range(5, 25) } else { self.rng.range(40, 400) };
                self.at(Instant::from_ms(t + 19), Ev::Pause { node, ms });
                scheduled += 1;
            }
            // Services faults (draws from their own stream, so that the
            // membership schedule of a seed stays put).
            let node2 = srng.range(1, n as u64) as NodeId;
            if srng.chance(self.cfg.actions.monitor) {
                self.at(Instant::from_ms(t + 23), Ev::MonitorFail { node: node2 });
                scheduled += 1;
            }
            if srng.chance(self.cfg.operator_p) {
                let (kind, input) = match srng.below(3) {
                    0 => {
                        let service = ["ip", "db", "lic"][srng.below(3) as usize].to_string();
                        let to = if srng.chance(0.5) { Some(srng.range(1, n as u64) as NodeId) } else { None };
                        ("switchover", services::Input::Switchover { service, to })
                    }
                    1 => ("standby", services::Input::Standby { node: srng.range(1, n as u64) as NodeId, on: srng.chance(0.6) }),
                    _ => ("maintenance", services::Input::Maintenance { on: srng.chance(0.5) }),
                };
                self.at(Instant::from_ms(t + 29), Ev::Operator { node: node2, kind, input });
                scheduled += 1;
            }
            if srng.chance(self.cfg.conn_drop_p) {
                let b = srng.range(1, n as u64) as NodeId;
                if b != node2 {
                    self.at(Instant::from_ms(t + 31), Ev::ConnDrop { a: node2, b });
                    scheduled += 1;
                }
            }
        }
        if scheduled == 0 {
            // Every seed injects faults: a seed whose probabilities drew
            // none gets a crash and a long pause of two nodes, late enough
            // for the cluster to have formed.
            let a = self.rng.range(1, n as u64) as NodeId;
            let b = a % n + 1;
            self.at(Instant::from_ms(1_500), Ev::Crash { node: a });
            let ms = self.rng.range(40, 400);
            self.at(Instant::from_ms(2_000), Ev::Pause { node: b, ms });
        }
        self.at(Instant::from_ms(self.cfg.fault_ms - 300), Ev::EnsureFault);
        self.at(Instant::from_ms(self.cfg.fault_ms), Ev::Heal);
        for ms in [500, 3_000, 6_000, 9_000] {
            self.at(Instant::from_ms(self.cfg.fault_ms + ms), Ev::HealServices);
        }
    }

    pub fn run(mut self) -> (SimResult, Vec<String>) {
        let (r, t) = self.run_inner();
        (r, t)
    }

    fn run_inner(&mut self) -> (SimResult, Vec<String>) {
        self.schedule_faults();
        let end = Instant::from_ms(self.cfg.fault_ms + self.cfg.settle_ms);
        // After the faults: restart whatever is down, so that liveness can be judged.
        self.at(Instant::from_ms(self.cfg.fault_ms + 1), Ev::Heal);
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &id in &ids {
            self.at(Instant::from_ms(self.cfg.fault_ms + 2), Ev::Restart { node: id });
        }
        loop {
            // The earliest of the queue and every running, unpaused core's deadline.
            let mut next = self.clock.next_time();
            let mut due = None;
            for (&id, s) in &self.nodes {
                if let Some(d) = s.core.as_ref().and_then(|c| c.poll_timeout()) {
                    let live = s.up && !s.halted && !s.left && s.paused_until.is_none();
                    if live && next.map(|x| d < x).unwrap_or(true) {
                        next = Some(d);
                        due = Some(id);
                    }
                }
            }
            let Some(t) = next else { break };
            if t > end {
                break;
            }
            if let Some(id) = due {
                self.clock.advance_to(t);
                self.events += 1;
                self.tick(id);
                self.check_services();
                continue;
            }
            let ev = self.clock.pop().unwrap();
            self.process(ev);
            self.check_services();
        }
        self.clock.advance_to(end);
        self.final_checks();
        self.final_services_checks();
        let summary = self.summary();
        let final_view = self.master_state().map(|s| s.view);
        (
            SimResult {
                seed: self.cfg.seed,
                violations: self.violations.clone(),
                trace_hash: self.trace.hash(),
                events: self.events,
                messages: self.messages,
                final_view,
                faults: self.faults.clone(),
                summary,
                forced_out_late: self.forced_out_late,
                forced_out_late_max_ns: self.forced_out_late_max_ns,
                stale_overlaps: self.stale_overlaps,
                stale_overlap_max_ns: self.stale_overlap_max_ns,
            },
            self.trace.take_lines(),
        )
    }

    /// Runs with the trace kept and also returns a dump of every node's
    /// final state (debugging).
    pub fn run_with_dump(self) -> (SimResult, Vec<String>, String) {
        let mut me = self;
        me.trace = Trace::new(true);
        let (r, t) = me.run_inner();
        let dump = me.dump();
        (r, t, dump)
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        for (id, s) in &self.nodes {
            let _ = writeln!(out, "n{id} life {} up {} halted {} left {}", s.life, s.up, s.halted, s.left);
            if let Some(c) = s.core.as_ref().map(|c| c.membership()) {
                let _ = writeln!(out, "   master? {} state {:?}", c.is_master(), c.state().map(|st| (st.view, st.states())));
                let _ = writeln!(out, "   debug {}", c.debug_line());
            }
        }
        out
    }

    fn master_state(&self) -> Option<ClusterState> {
        self.nodes
            .values()
            .filter_map(|s| s.core.as_ref().map(|c| c.membership()))
            .filter(|c| c.is_master() && !c.is_halted())
            .filter_map(|c| c.state().cloned())
            .max_by(|a, b| if a.view.supersedes(&b.view) { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Less })
    }

    fn final_checks(&mut self) {
        // Injected faults (message loss and duplicates aside): none is a harness bug.
        if self.faults.total() == 0 {
            self.violation("harness bug: no fault ran in this seed".into());
        }
        let Some(ms) = self.master_state() else {
            self.violation("no master after healing".into());
            return;
        };
        let masters = self.nodes.values().filter(|s| s.core.as_ref().map(|c| c.membership().is_master()).unwrap_or(false)).count();
        if masters != 1 {
            self.violation(format!("{masters} masters after healing"));
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let st = ms.state_of(id);
            if st != NodeState::Joined {
                self.violation(format!("after healing n{id} is {st:?} in the master's view {:?}", ms.view));
            }
        }
        if !ms.transitions.is_empty() {
            let t: Vec<String> = ms.transitions.values().map(|t| format!("{:?}@{:?}", t.id, t.step())).collect();
            self.violation(format!("transitions still in flight after healing: {}", t.join(", ")));
        }
        let views: BTreeSet<ViewId> =
            self.nodes.values().filter_map(|s| s.core.as_ref()).filter_map(|c| c.membership().state().map(|s| s.view)).collect();
        if views.len() != 1 {
            self.violation(format!("nodes disagree on the final view: {views:?}"));
        }
    }

    fn summary(&self) -> String {
        let s = self.net.stats;
        format!(
            "{} faults=[{}] net=[sent={} lost={} cut={} dup={}] svc=[sent={} dropped={} lost={} delivered={}]",
            self.cfg.describe(),
            self.faults.describe(),
            s.sent,
            s.lost,
            s.cut,
            s.duplicated,
            self.svc_sent,
            self.svc_dropped,
            self.svc_lost,
            self.svc_delivered
        )
    }
}

impl SimConfig {
    /// One line with every parameter the seed chose.
    pub fn describe(&self) -> String {
        let c = self;
        format!(
            "nodes={} levels={} subgroup={} loss={} dup={} delay={:?}ms crash={} partition={} leave={} distress={} false_alarm={} pause={} staggered={} batch={}ms lease_wait={}ms actions={:?} operator={} conn_drop={} links={}",
            c.nodes,
            c.levels.len(),
            c.subgroup_size,
            c.loss,
            c.dup,
            c.delay_ms,
            c.crash_p,
            c.partition_p,
            c.leave_p,
            c.distress_p,
            c.false_alarm_p,
            c.pause_p,
            c.staggered_start,
            c.batch_ms,
            c.lease_wait_ms,
            (c.actions.start, c.actions.stop, c.actions.recovery, c.actions.monitor),
            c.operator_p,
            c.conn_drop_p,
            c.links
        )
    }
}

/// Runs one seed.
pub fn run_seed(seed: u64) -> SimResult {
    Sim::new(SimConfig::from_seed(seed), false).run().0
}

/// Runs one seed and returns its full trace too.
pub fn run_seed_traced(seed: u64) -> (SimResult, Vec<String>) {
    Sim::new(SimConfig::from_seed(seed), true).run()
}
