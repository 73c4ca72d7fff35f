//! A deterministic simulator of many membership managers.
//!
//! One seed drives everything: the cluster size, the registered levels and
//! their barriers, every fault probability, and the schedule of crashes,
//! restarts, partitions, leaves and local failures. The network loses,
//! duplicates, delays and reorders messages. A simulated failure detector
//! (the datapath's role) reports peers silent or up after a detection delay;
//! a distress signal reaches connected peers at once.
//!
//! Invariants are checked here, outside the code under test:
//! * every node that followed a view saw the same content for it;
//! * a step of a transition is notified only after every participant that
//!   stayed alive acknowledged the previous step, and the levels of one
//!   transition are notified in the right direction (bottom-up for join and
//!   forced leave, top-down for leave) and barriers in order;
//! * a node that halted (forced out, lost quorum, local failure) performs no
//!   action afterwards;
//! * a local failure sends one distress per node life, however many
//!   failures are reported (S0.4), and each node processes a peer's distress
//!   once;
//! * after the faults stop and the network heals, every node is Joined in
//!   the master's view, every transition completed, and all agree on it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::membership::{
    Action, Barriers, ClusterState, Config, HaltReason, Input, Kind, LevelSpec, Membership, Msg, NodeState, Step,
    SubsystemId, TransitionId, ViewId,
};
use crate::rng::Rng;
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
}

impl SimConfig {
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut r = Rng::new(seed ^ 0x6261_746f_6e5f_7369);
        let nodes = r.range(3, 16) as u32;
        let n_levels = r.range(1, 4);
        let mut levels = Vec::new();
        for i in 0..n_levels {
            levels.push(LevelSpec {
                level: 10 * (i as u32 + 1),
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
            // Drawn last: the draws above stay what they were for each seed.
            batch_ms: [0, 1, 2, 5][r.below(4) as usize],
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
    pub summary: String,
}

impl SimResult {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver { to: NodeId, from: NodeId, to_life: u32, msg: Msg },
    /// A failure-detector event about `subject` (dropped if either side restarted since).
    Peer { to: NodeId, to_life: u32, subject: NodeId, subject_life: u32, input: Input },
    SubAck { node: NodeId, life: u32, subsystem: SubsystemId, id: TransitionId, step: Step },
    Crash { node: NodeId },
    Restart { node: NodeId },
    Partition { side: BTreeSet<NodeId> },
    Heal,
    Leave { node: NodeId },
    LocalFailure { node: NodeId, twice: bool },
    Start { node: NodeId },
}

struct NodeSim {
    core: Option<Membership>,
    life: u32,
    incarnation: u64,
    up: bool,
    halted: bool,
    left: bool,
    distress_sent: u32,
    deadline_armed: Option<Instant>,
}

/// FNV-1a, for the trace hash.
fn fnv(h: &mut u64, s: &str) {
    for b in s.bytes() {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: Instant,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    nodes: BTreeMap<NodeId, NodeSim>,
    side: BTreeSet<NodeId>,
    partitioned: bool,
    /// What each node believes of each peer's connectivity (to send FD events on change).
    fd_view: BTreeMap<(NodeId, NodeId), bool>,
    views: BTreeMap<ViewId, u64>,
    /// (node, transition, step) -> time each subsystem acked; per node the
    /// subsystems registered.
    acks: BTreeMap<(NodeId, TransitionId, Step), BTreeSet<SubsystemId>>,
    notified: BTreeMap<(NodeId, u32, TransitionId), Vec<Step>>,
    ever_down: BTreeSet<NodeId>,
    /// Pairs of nodes that were ever cut apart by a partition.
    ever_cut: BTreeSet<(NodeId, NodeId)>,
    /// (receiver life, sender, sender incarnation) -> distress processed count.
    distress_processed: BTreeMap<(NodeId, u32, NodeId, u64), u32>,
    violations: Vec<String>,
    hash: u64,
    events: u64,
    messages: u64,
    trace: Vec<String>,
    keep_trace: bool,
}

fn subsystems(levels: &[LevelSpec]) -> Vec<(SubsystemId, LevelSpec)> {
    levels.iter().enumerate().map(|(i, l)| (i as SubsystemId + 1, *l)).collect()
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
                    deadline_armed: None,
                },
            );
        }
        Sim {
            cfg,
            rng,
            now: Instant::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            nodes,
            side: BTreeSet::new(),
            partitioned: false,
            fd_view: BTreeMap::new(),
            views: BTreeMap::new(),
            acks: BTreeMap::new(),
            notified: BTreeMap::new(),
            ever_down: BTreeSet::new(),
            ever_cut: BTreeSet::new(),
            distress_processed: BTreeMap::new(),
            violations: Vec::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            events: 0,
            messages: 0,
            trace: Vec::new(),
            keep_trace,
        }
    }

    fn at(&mut self, t: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn log(&mut self, line: String) {
        fnv(&mut self.hash, &line);
        if self.keep_trace {
            self.trace.push(line);
        }
    }

    fn violation(&mut self, v: String) {
        if self.violations.len() < 20 {
            self.violations.push(format!("t={} {v}", self.now));
        }
    }

    fn running(&self, n: NodeId) -> bool {
        let s = &self.nodes[&n];
        s.up && !s.halted && !s.left && s.core.is_some()
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.running(a) && self.running(b) && (!self.partitioned || self.side.contains(&a) == self.side.contains(&b))
    }

    /// Sends failure-detector events where connectivity changed.
    fn refresh_fd(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &a in &ids {
            if !self.running(a) {
                continue;
            }
            for &b in &ids {
                if a == b {
                    continue;
                }
                let c = self.connected(a, b);
                let prev = self.fd_view.get(&(a, b)).copied();
                if prev != Some(c) {
                    self.fd_view.insert((a, b), c);
                    let life = self.nodes[&a].life;
                    let subject_life = self.nodes[&b].life;
                    let t = self.now.plus_ms(if c { 2 } else { self.cfg.detect_ms });
                    let input = if c { Input::PeerUp { node: b } } else { Input::PeerSilent { node: b } };
                    if prev.is_some() || c {
                        self.at(t, Ev::Peer { to: a, to_life: life, subject: b, subject_life, input });
                    }
                }
            }
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
        let mut core = Membership::new(cfg);
        for (sid, spec) in subsystems(&self.cfg.levels) {
            core.handle(self.now, Input::Register { subsystem: sid, spec });
        }
        {
            let s = self.nodes.get_mut(&n).unwrap();
            s.core = Some(core);
            s.life = life;
            s.incarnation = incarnation;
            s.up = true;
            s.halted = false;
            s.left = false;
            s.distress_sent = 0;
            s.deadline_armed = None;
        }
        // Every other node's links are re-learned from scratch.
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for b in ids {
            self.fd_view.remove(&(n, b));
            self.fd_view.remove(&(b, n));
        }
        self.log(format!("{} start n{n} life {life} inc {incarnation:x}", self.now));
        self.input(n, Input::Start);
        self.refresh_fd();
    }

    fn input(&mut self, n: NodeId, input: Input) {
        if !self.running(n) {
            return;
        }
        let now = self.now;
        if let Some(core) = self.nodes.get_mut(&n).unwrap().core.as_mut() {
            core.handle(now, input);
        }
        self.drain(n);
    }

    fn drain(&mut self, n: NodeId) {
        loop {
            let a = {
                let s = self.nodes.get_mut(&n).unwrap();
                match s.core.as_mut() {
                    Some(c) => c.poll_action(),
                    None => None,
                }
            };
            let Some(a) = a else { break };
            if self.nodes[&n].halted {
                self.violation(format!("n{n} produced {a:?} after it halted"));
                continue;
            }
            self.act(n, a);
        }
    }

    fn act(&mut self, n: NodeId, a: Action) {
        let life = self.nodes[&n].life;
        match a {
            Action::Send { to, msg } => {
                self.messages += 1;
                if self.keep_trace {
                    if let Msg::Gmp(g) = &msg {
                        let line = format!("{} n{n} -> n{to} {g:?}", self.now);
                        self.trace.push(line);
                    }
                }
                if !self.connected(n, to) || self.rng.chance(self.cfg.loss) {
                    return;
                }
                let copies = if self.rng.chance(self.cfg.dup) { 2 } else { 1 };
                for _ in 0..copies {
                    let d = self.rng.range(self.cfg.delay_ms.0 * 1000, self.cfg.delay_ms.1 * 1000);
                    let to_life = self.nodes[&to].life;
                    let t = self.now.plus_ns(d * 1000);
                    self.at(t, Ev::Deliver { to, from: n, to_life, msg: msg.clone() });
                }
            }
            Action::Notify { subsystem, id, step, states: _ } => {
                self.log(format!("{} n{n} notify s{subsystem} {id:?} {step:?}", self.now));
                self.check_notify(n, id, step);
                self.notified.entry((n, life, id)).or_default().push(step);
                let d = self.rng.range(0, 8_000_000);
                let t = self.now.plus_ns(d);
                self.at(t, Ev::SubAck { node: n, life, subsystem, id, step });
            }
            Action::SendDistress { reason } => {
                self.nodes.get_mut(&n).unwrap().distress_sent += 1;
                if self.nodes[&n].distress_sent > 1 {
                    self.violation(format!("n{n} sent a second distress in one life"));
                }
                self.log(format!("{} n{n} distress {reason}", self.now));
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                for b in ids {
                    if b != n && self.connected(n, b) {
                        let to_life = self.nodes[&b].life;
                        // Redundantly on every link: two copies.
                        for k in 0..2 {
                            let t = self.now.plus_ns(500_000 + k * 100_000);
                            self.at(t, Ev::Peer { to: b, to_life, subject: n, subject_life: life, input: Input::PeerDistress { node: n, reason } });
                        }
                    }
                }
            }
            Action::Terminate { subsystem, reason } => {
                self.log(format!("{} n{n} terminate s{subsystem} {reason}", self.now));
            }
            Action::Halt { why } => {
                self.log(format!("{} n{n} halt {why:?}", self.now));
                let s = self.nodes.get_mut(&n).unwrap();
                s.halted = true;
                self.ever_down.insert(n);
                // A halted node stops heartbeating; it is restarted later.
                let t = self.now.plus_ms(self.rng.range(200, 800));
                self.at(t, Ev::Restart { node: n });
                let _ = matches!(why, HaltReason::ForcedOut);
                self.refresh_fd();
            }
            Action::Left => {
                self.log(format!("{} n{n} left", self.now));
                self.nodes.get_mut(&n).unwrap().left = true;
                self.ever_down.insert(n);
                let t = self.now.plus_ms(self.rng.range(100, 600));
                self.at(t, Ev::Restart { node: n });
                self.refresh_fd();
            }
            Action::TransitionCompleted { id, participants, path } => {
                self.log(format!("{} n{n} completed {id:?}", self.now));
                self.check_completion(n, id, &participants, &path);
                if id.kind == Kind::ForcedLeave {
                    self.check_not_acting(n, id);
                }
            }
            Action::PeerFailed { node, distress } => {
                self.log(format!("{} n{n} peer failed n{node} distress={distress}", self.now));
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
                self.log(format!("{} n{n} peer gone n{node}", self.now));
            }
            Action::StopRequested => {
                self.log(format!("{} n{n} stop requested", self.now));
            }
            Action::StateChanged { view } => {
                if self.keep_trace {
                    let master = self.nodes[&n].core.as_ref().map(|c| c.is_master()).unwrap_or(false);
                    let dbg = self.nodes[&n].core.as_ref().map(|c| c.debug_line()).unwrap_or_default();
                    let grp = self.nodes[&n].core.as_ref().and_then(|c| c.state()).map(|s| s.group());
                    let line = format!("{} n{n} view {view:?} master={master} group={grp:?} {dbg}", self.now);
                    self.trace.push(line);
                }
                let st = self.nodes[&n].core.as_ref().and_then(|c| c.state().cloned());
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
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        fnv(&mut h, &format!("{:?}{:?}", st.nodes, st.transitions));
        match self.views.get(&view) {
            Some(prev) if *prev != h => {
                self.violation(format!("n{n} followed view {view:?} with content different from another node's"));
            }
            _ => {
                self.views.insert(view, h);
            }
        }
    }

    /// A transition the master completed must have been acknowledged, at
    /// every step, by every participant that stayed up and in touch.
    fn check_completion(&mut self, master: NodeId, id: TransitionId, participants: &BTreeSet<NodeId>, path: &[LevelSpec]) {
        let subs = subsystems(&self.cfg.levels);
        for p in participants.iter().copied() {
            if self.ever_down.contains(&p) || self.ever_cut.contains(&(master, p)) || self.ever_down.contains(&master) {
                continue;
            }
            for spec in path {
                for b in 0..spec.barriers.of(id.kind) {
                    let step = Step { level: spec.level, barrier: b };
                    let want: BTreeSet<SubsystemId> = subs.iter().filter(|(_, l)| l.level == spec.level).map(|(s, _)| *s).collect();
                    let got = self.acks.get(&(p, id, step)).cloned().unwrap_or_default();
                    if !want.is_subset(&got) {
                        self.violation(format!("master n{master} completed {id:?} although n{p} never acknowledged {step:?}"));
                    }
                }
            }
        }
    }

    /// No split brain: when a forced leave of Y completes (the survivors
    /// recover what Y held), that life of Y must not still act as a joined
    /// member of any cluster.
    fn check_not_acting(&mut self, master: NodeId, id: TransitionId) {
        let y = &self.nodes[&id.node];
        if !self.running(id.node) || y.incarnation != id.incarnation {
            return;
        }
        let acting = y.core.as_ref().map(|c| c.my_state() == NodeState::Joined).unwrap_or(false);
        if acting {
            let view = y.core.as_ref().and_then(|c| c.state()).map(|s| s.view);
            self.violation(format!(
                "split brain: master n{master} completed the forced leave of n{} while it still acts as joined (following {view:?})",
                id.node
            ));
        }
    }

    /// A step may be notified only after every participant that stayed up
    /// acknowledged the previous step of the same transition.
    fn check_notify(&mut self, n: NodeId, id: TransitionId, step: Step) {
        // Direction and order on this node.
        let life = self.nodes[&n].life;
        if let Some(prev) = self.notified.get(&(n, life, id)).and_then(|v| v.last()).copied() {
            let ok = if prev.level == step.level {
                step.barrier > prev.barrier
            } else if id.kind == Kind::Leave {
                step.level < prev.level
            } else {
                step.level > prev.level
            };
            if !ok && !(prev == step) {
                self.violation(format!("n{n}: {id:?} notified {step:?} after {prev:?} (wrong order)"));
            }
        }
        let Some(t) = self.nodes[&n]
            .core
            .as_ref()
            .and_then(|c| c.state())
            .and_then(|st| st.transitions.get(&id.node))
            .filter(|t| t.id == id)
            .cloned()
        else {
            return;
        };
        // The previous step in the path.
        let prev = if t.barrier > 0 {
            Some(Step { level: t.path[t.pos].level, barrier: t.barrier - 1 })
        } else if t.pos > 0 {
            let l = t.path[t.pos - 1];
            Some(Step { level: l.level, barrier: l.barriers.of(id.kind) - 1 })
        } else {
            None
        };
        let Some(prev) = prev else { return };
        let subs: Vec<(SubsystemId, LevelSpec)> = subsystems(&self.cfg.levels);
        let master = self.nodes[&n].core.as_ref().and_then(|c| c.state()).map(|s| s.view.master).unwrap_or(0);
        for p in t.participants.iter().copied() {
            // The master skips a participant it saw fail (it is then forced out).
            if self.ever_down.contains(&p) || self.ever_cut.contains(&(master, p)) || self.ever_down.contains(&master) {
                continue;
            }
            let want: BTreeSet<SubsystemId> = subs.iter().filter(|(_, l)| l.level == prev.level).map(|(s, _)| *s).collect();
            let got = self.acks.get(&(p, id, prev)).cloned().unwrap_or_default();
            if !want.is_subset(&got) {
                self.violation(format!(
                    "n{n}: {id:?} step {step:?} notified before n{p} acknowledged {prev:?} (acked by {got:?})"
                ));
            }
        }
    }

    fn process(&mut self, ev: Ev) {
        self.events += 1;
        match ev {
            Ev::Deliver { to, from, to_life, msg } => {
                if self.nodes[&to].life != to_life || !self.connected(from, to) {
                    return;
                }
                self.input(to, Input::Receive { from, msg });
            }
            Ev::Peer { to, to_life, subject, subject_life, input } => {
                if self.nodes[&to].life != to_life {
                    return;
                }
                // A silence noticed about a node that has restarted since is
                // stale: the new life's heartbeats keep its links up.
                if self.nodes[&subject].life != subject_life && !matches!(input, Input::PeerDistress { .. }) {
                    return;
                }
                // Like the datapath: silence is only reported if the link is
                // still silent when the bound expires, and "up" only while up.
                match input {
                    Input::PeerSilent { .. } if self.connected(to, subject) => return,
                    Input::PeerUp { .. } if !self.connected(to, subject) => return,
                    _ => {}
                }
                self.log(format!("{} n{to} fd {input:?}", self.now));
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
                self.log(format!("{} n{node} crash", self.now));
                let s = self.nodes.get_mut(&node).unwrap();
                s.up = false;
                s.core = None;
                self.ever_down.insert(node);
                self.refresh_fd();
                let t = self.now.plus_ms(self.rng.range(100, 1500));
                self.at(t, Ev::Restart { node });
            }
            Ev::Restart { node } | Ev::Start { node } => {
                if self.running(node) {
                    return;
                }
                self.start_node(node);
            }
            Ev::Partition { side } => {
                self.log(format!("{} partition {side:?}", self.now));
                for a in 1..=self.cfg.nodes {
                    for b in 1..=self.cfg.nodes {
                        if side.contains(&a) != side.contains(&b) {
                            self.ever_cut.insert((a, b));
                        }
                    }
                }
                self.side = side;
                self.partitioned = true;
                self.refresh_fd();
            }
            Ev::Heal => {
                self.log(format!("{} heal", self.now));
                self.partitioned = false;
                self.refresh_fd();
            }
            Ev::Leave { node } => {
                self.log(format!("{} n{node} asks to leave", self.now));
                self.input(node, Input::Leave);
            }
            Ev::LocalFailure { node, twice } => {
                self.log(format!("{} n{node} local failure", self.now));
                self.input(node, Input::LocalFailure { from: Some(1), reason: 3 });
                if twice {
                    // S0.4: the second report is ignored.
                    self.input(node, Input::LocalFailure { from: Some(2), reason: 4 });
                }
            }
        }
    }

    fn schedule_faults(&mut self) {
        let n = self.cfg.nodes;
        for id in 1..=n {
            let t = if self.cfg.staggered_start { Instant::from_ms(self.rng.range(0, 800)) } else { Instant::ZERO };
            self.at(t, Ev::Start { node: id });
        }
        let mut t = 500u64;
        loop {
            t += self.rng.range(50, 300);
            if t + 20 >= self.cfg.fault_ms {
                break;
            }
            let node = self.rng.range(1, n as u64) as NodeId;
            if self.rng.chance(self.cfg.crash_p) {
                self.at(Instant::from_ms(t), Ev::Crash { node });
            }
            if self.rng.chance(self.cfg.leave_p) {
                self.at(Instant::from_ms(t + 7), Ev::Leave { node });
            }
            if self.rng.chance(self.cfg.distress_p) {
                let twice = self.rng.chance(0.5);
                self.at(Instant::from_ms(t + 13), Ev::LocalFailure { node, twice });
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
            }
        }
        self.at(Instant::from_ms(self.cfg.fault_ms), Ev::Heal);
    }

    pub fn run(mut self) -> (SimResult, Vec<String>) {
        self.run_inner()
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
            // The earliest of the queue and every core's deadline.
            let mut next = self.queue.keys().next().map(|k| k.0);
            let mut due = None;
            for (&id, s) in &self.nodes {
                if let Some(d) = s.core.as_ref().and_then(|c| c.next_deadline()) {
                    if s.up && !s.halted && !s.left && next.map(|x| d < x).unwrap_or(true) {
                        next = Some(d);
                        due = Some(id);
                    }
                }
            }
            let Some(t) = next else { break };
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            if let Some(id) = due {
                self.events += 1;
                self.input(id, Input::Tick);
                continue;
            }
            let key = *self.queue.keys().next().unwrap();
            let ev = self.queue.remove(&key).unwrap();
            self.process(ev);
        }
        self.now = end;
        self.final_checks();
        let summary = self.summary();
        let final_view = self.master_state().map(|s| s.view);
        (
            SimResult {
                seed: self.cfg.seed,
                violations: self.violations.clone(),
                trace_hash: self.hash,
                events: self.events,
                messages: self.messages,
                final_view,
                summary,
            },
            std::mem::take(&mut self.trace),
        )
    }

    /// Runs and also returns a dump of every node's final state (debugging).
    pub fn run_with_dump(mut self) -> (SimResult, Vec<String>, String) {
        let (r, t) = {
            // Run by value, then reconstruct the dump from a second identical run is not
            // possible; so run here inline.
            self.keep_trace = true;
            let mut me = self;
            let (r, t) = me.run_inner();
            let dump = me.dump();
            return (r, t, dump);
        };
        #[allow(unreachable_code)]
        (r, t, String::new())
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        for (id, s) in &self.nodes {
            let _ = writeln!(out, "n{id} life {} up {} halted {} left {}", s.life, s.up, s.halted, s.left);
            if let Some(c) = &s.core {
                let _ = writeln!(out, "   master? {} state {:?}", c.is_master(), c.state().map(|st| (st.view, st.states())));
                let _ = writeln!(out, "   debug {}", c.debug_line());
            }
        }
        out
    }

    fn master_state(&self) -> Option<ClusterState> {
        self.nodes
            .values()
            .filter_map(|s| s.core.as_ref())
            .filter(|c| c.is_master() && !c.is_halted())
            .filter_map(|c| c.state().cloned())
            .max_by(|a, b| if a.view.supersedes(&b.view) { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Less })
    }

    fn final_checks(&mut self) {
        let Some(ms) = self.master_state() else {
            self.violation("no master after healing".into());
            return;
        };
        let masters = self.nodes.values().filter(|s| s.core.as_ref().map(|c| c.is_master()).unwrap_or(false)).count();
        if masters != 1 {
            self.violation(format!("{masters} masters after healing"));
        }
        for (&id, s) in &self.nodes.iter().map(|(a, b)| (*a, b.up && !b.halted)).collect::<BTreeMap<_, _>>() {
            let _ = s;
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
            self.nodes.values().filter_map(|s| s.core.as_ref()).filter_map(|c| c.state().map(|s| s.view)).collect();
        if views.len() != 1 {
            self.violation(format!("nodes disagree on the final view: {views:?}"));
        }
    }

    fn summary(&self) -> String {
        self.cfg.describe()
    }
}

impl SimConfig {
    /// One line with every parameter the seed chose.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let c = self;
        let _ = write!(
            s,
            "nodes={} levels={} subgroup={} loss={} dup={} delay={:?}ms crash={} partition={} leave={} distress={} staggered={} batch={}ms",
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
            c.staggered_start,
            c.batch_ms
        );
        s
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
