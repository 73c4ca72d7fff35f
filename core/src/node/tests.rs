//! The composition rules of [`Node`], each against a rule-breaking variant
//! in mind: every test here fails if its rule is removed.
//!
//! A small synchronous harness drives 3 composed nodes: messages (membership
//! and services) go through one FIFO queue with zero latency; action
//! functions succeed at once (a test may hold a node's stop results), disk
//! operations once nothing else is in flight; time
//! moves only when the queue is empty, to the earliest `poll_timeout()`.

use super::*;
use crate::membership::{Action as MAction, Config as MConfig, HaltReason, Input as MInput, NodeEntry, Transition, ViewId};
use crate::services::{Action as SAction, ActionResult, Config as SConfig, Input as SInput, ServiceSpec};

const MS: u64 = 1_000_000;

struct Harness {
    now: Instant,
    nodes: BTreeMap<NodeId, Node>,
    up: BTreeSet<NodeId>,
    queue: VecDeque<(NodeId, NodeInput)>,
    log: Vec<(NodeId, NodeAction)>,
    /// When each entry of `log` was made.
    log_at: Vec<Instant>,
    /// Nodes whose stop results are held back (a slow halt method).
    hold_stops: BTreeSet<NodeId>,
    held: Vec<(NodeId, NodeInput)>,
    /// Nodes whose next fencing operation finds their registration
    /// preempted (another node fenced them).
    preempted: BTreeSet<NodeId>,
    /// Results of fencing operations: delivered once everything else in
    /// flight was (a disk is slower than the network here).
    disk: Vec<(NodeId, NodeInput)>,
}

/// The distress reason of a self-fencing in these tests.
const FENCED: u32 = 77;

fn key(n: NodeId) -> u64 {
    0x100 + n as u64
}

fn mcfg(me: NodeId, inc: u64, n: u32) -> MConfig {
    MConfig { me, incarnation: inc, nodes: (1..=n).collect(), subgroup_size: 2, resend_ns: 10 * MS, form_ns: 50 * MS, batch_ns: 0, two_node_race: false }
}

fn web() -> ServiceSpec {
    let mut s = ServiceSpec::new("web");
    s.preferred = Some(2);
    // Waits for the three nodes, so that it starts on its preferred node.
    s.maturity.nodes_up = Some(3);
    s
}

impl Harness {
    /// `n` nodes, each with the resource group "web" (preferred on node 2),
    /// started, links up, run until the cluster is formed and web runs.
    fn new(n: u32) -> Harness {
        Harness::with(n, false)
    }

    /// As [`Harness::new`]; `fencing`: every node fences shared disks
    /// (operations succeed at once unless the node is in `preempted`).
    fn with(n: u32, fencing: bool) -> Harness {
        let mut h = Harness {
            now: Instant::ZERO,
            nodes: BTreeMap::new(),
            up: BTreeSet::new(),
            queue: VecDeque::new(),
            log: Vec::new(),
            log_at: Vec::new(),
            hold_stops: BTreeSet::new(),
            held: Vec::new(),
            preempted: BTreeSet::new(),
            disk: Vec::new(),
        };
        for id in 1..=n {
            let svc = Services::new(SConfig { me: id, incarnation: 1, services: vec![web()] }).unwrap();
            let fence = fencing.then(|| FencingSlot {
                core: Fencing::new(fencing::Config::new(id, (1..=n).map(|k| (k, key(k))).collect())),
                distress_reason: FENCED,
            });
            h.nodes.insert(id, Node::new(h.now, mcfg(id, 1, n), Some(svc), fence));
            h.up.insert(id);
        }
        for id in 1..=n {
            h.queue.push_back((id, NodeInput::Membership(MInput::Start)));
            for o in 1..=n {
                if o != id {
                    h.queue.push_back((id, NodeInput::Membership(MInput::PeerUp { node: o })));
                }
            }
        }
        h
    }

    fn collect(&mut self, id: NodeId) {
        let all: BTreeSet<u64> = self.nodes.keys().map(|k| key(*k)).collect();
        while let Some(a) = self.nodes.get_mut(&id).unwrap().poll() {
            match &a {
                NodeAction::Membership(MAction::Send { to, msg }) => {
                    self.queue.push_back((*to, NodeInput::Membership(MInput::Receive { from: id, msg: msg.clone() })))
                }
                NodeAction::Fencing { action: fencing::Action::Run { op, what }, .. } => {
                    let outcome = if self.preempted.contains(&id) {
                        fencing::Outcome::Preempted
                    } else if *what == fencing::Op::Check {
                        fencing::Outcome::Ok { keys: Some(all.clone()) }
                    } else {
                        fencing::Outcome::Ok { keys: None }
                    };
                    self.disk.push((id, NodeInput::Fencing(fencing::Input::Done { op: *op, outcome })));
                }
                NodeAction::Services(sa) => {
                    let done = |service: &String| service.clone();
                    let reply = match sa {
                        SAction::Send { to, msg } => Some((*to, SInput::Receive { from: id, msg: msg.clone() })),
                        SAction::Start { params } => Some((id, SInput::StartDone { service: done(&params.service), result: ActionResult::OK })),
                        SAction::Stop { params } => Some((id, SInput::StopDone { service: done(&params.service), result: ActionResult::OK })),
                        SAction::Notify { params } => Some((id, SInput::NotifyDone { service: done(&params.service), result: ActionResult::OK })),
                        SAction::Recovery { params, .. } => {
                            Some((id, SInput::RecoveryDone { service: done(&params.service), result: ActionResult::OK }))
                        }
                        SAction::Offline { params } => Some((id, SInput::OfflineDone { service: done(&params.service), result: ActionResult::OK })),
                        SAction::StandbyStart { service } => Some((id, SInput::StandbyStarted { service: service.clone(), result: ActionResult::OK })),
                        SAction::StandbyStop { service } => Some((id, SInput::StandbyStopped { service: service.clone(), result: ActionResult::OK })),
                        _ => None,
                    };
                    if let Some((to, input)) = reply {
                        let held = matches!(sa, SAction::Stop { .. }) && self.hold_stops.contains(&id);
                        if held {
                            self.held.push((to, NodeInput::Services(input)));
                        } else {
                            self.queue.push_back((to, NodeInput::Services(input)));
                        }
                    }
                }
                _ => {}
            }
            self.log.push((id, a));
            self.log_at.push(self.now);
        }
    }

    /// Delivers the queue, then moves time; until `done` or `limit_ms` of
    /// simulated time from now.
    fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&Harness) -> bool) -> bool {
        let end = self.now.plus_ms(limit_ms);
        loop {
            if done(self) {
                return true;
            }
            if let Some((to, input)) = self.queue.pop_front() {
                if self.up.contains(&to) {
                    self.nodes.get_mut(&to).unwrap().handle(self.now, input);
                    self.collect(to);
                }
                continue;
            }
            if !self.disk.is_empty() {
                let done = std::mem::take(&mut self.disk);
                self.queue.extend(done);
                continue;
            }
            let next = self.up.iter().filter_map(|n| self.nodes[n].poll_timeout()).min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    for n in self.up.clone() {
                        if self.nodes[&n].poll_timeout().is_some_and(|d| d <= self.now) {
                            self.nodes.get_mut(&n).unwrap().handle_timeout(self.now);
                            self.collect(n);
                        }
                    }
                }
                _ => {
                    self.now = end;
                    return done(self);
                }
            }
        }
    }

    fn state_of(&self, at: NodeId, n: NodeId) -> NodeState {
        self.nodes[&at].membership().state().map(|s| s.state_of(n)).unwrap_or(NodeState::Inactive)
    }

    fn settled(&self, at: NodeId) -> bool {
        self.nodes[&at].membership().state().is_some_and(|s| s.transitions.is_empty())
    }

    /// The nodes that ran web's start (in order).
    fn starts(&self) -> Vec<NodeId> {
        self.log
            .iter()
            .filter(|(_, a)| matches!(a, NodeAction::Services(SAction::Start { params }) if params.service == "web"))
            .map(|(n, _)| *n)
            .collect()
    }

    fn formed(&mut self) {
        let ok = self.run_until(5_000, |h| {
            h.up.iter().all(|n| h.state_of(1, *n) == NodeState::Joined) && h.settled(1) && h.starts().len() == 1
        });
        assert!(ok, "the cluster formed and web started once: starts {:?}", self.starts());
    }

    /// `id` crashes: it gets nothing any more, every other node's datapath
    /// reports it silent.
    fn kill(&mut self, id: NodeId) {
        self.up.remove(&id);
        for o in self.up.clone() {
            self.queue.push_back((o, NodeInput::Membership(MInput::PeerSilent { node: id })));
        }
    }
}

// Rule 1: the built-in levels are typed and registered lowest first.
#[test]
fn builtin_levels_are_typed_and_ordered() {
    let levels: Vec<u32> = LevelRole::ALL.iter().map(|r| r.level()).collect();
    assert_eq!(levels, vec![10, 20, 30, 40]);
    for r in LevelRole::ALL {
        assert_eq!(LevelRole::of_subsystem(r.subsystem()), Some(r));
        assert!(r.subsystem() < FIRST_EXTERNAL_SUBSYSTEM);
    }
    assert_eq!(LevelRole::of_subsystem(FIRST_EXTERNAL_SUBSYSTEM), None);
    let mut h = Harness::new(3);
    h.formed();
    // Every join passed the four built-in levels on every node, in order.
    let steps: Vec<LevelRole> = h
        .log
        .iter()
        .filter_map(|(n, a)| match a {
            NodeAction::LevelStep { role, id, .. } if *n == 1 && id.node == 1 && id.kind == Kind::Join => Some(*role),
            _ => None,
        })
        .collect();
    assert_eq!(steps, LevelRole::ALL.to_vec());
}

// Rule 5: a new cluster state reaches the services core as a view (web
// starts on its preferred node only because the decider got the view).
#[test]
fn a_new_state_is_fed_to_services_as_a_view() {
    let mut h = Harness::new(3);
    h.formed();
    assert_eq!(h.starts(), vec![2]);
}

// Rule 2, forced leave: acknowledged at once at the services level (the
// transition completes), and the node's services are recovered elsewhere.
#[test]
fn a_forced_leave_is_acked_at_once_and_recovers_services() {
    let mut h = Harness::new(3);
    h.formed();
    h.kill(2);
    let ok = h.run_until(5_000, |h| {
        h.state_of(1, 2) == NodeState::Inactive && h.state_of(3, 2) == NodeState::Inactive && h.settled(1) && h.settled(3)
    });
    assert!(ok, "the forced leave of node 2 completed: {:?}", h.nodes[&1].membership().state().map(|s| &s.transitions));
    let step = h.log.iter().find_map(|(n, a)| match a {
        NodeAction::LevelStep { role: LevelRole::Services, id, held, .. } if *n == 1 && id.node == 2 && id.kind == Kind::ForcedLeave => Some(*held),
        _ => None,
    });
    assert_eq!(step, Some(false), "the services step of the forced leave was not held");
    let ok = h.run_until(2_000, |h| h.starts().len() == 2);
    assert!(ok, "web was started again after node 2 failed: {:?}", h.starts());
    assert_ne!(h.starts()[1], 2);
}

// Rule 2, graceful leave: the services step is held until the leaving
// node's services are drained; then the leave goes on.
#[test]
fn a_graceful_leave_waits_for_drained_services() {
    let mut h = Harness::new(3);
    h.formed();
    h.hold_stops.insert(2);
    h.queue.push_back((2, NodeInput::Membership(MInput::Leave)));
    // Long enough for the leave to finish many times over if nothing held it.
    h.run_until(2_000, |_| false);
    assert_eq!(h.state_of(1, 2), NodeState::Leaving, "the leave waits while web is still stopping on node 2");
    assert!(h.log.iter().any(|(n, a)| *n == 2 && matches!(a, NodeAction::LevelStep { role: LevelRole::Services, id, held: true, .. } if id.kind == Kind::Leave)));
    assert!(!h.log.iter().any(|(_, a)| matches!(a, NodeAction::LeaveReleased { .. })));
    // The halt method finishes: web moves, node 2 is drained, the leave ends.
    h.hold_stops.clear();
    let held = std::mem::take(&mut h.held);
    h.queue.extend(held);
    let ok = h.run_until(5_000, |h| h.log.iter().any(|(n, a)| *n == 2 && matches!(a, NodeAction::Membership(MAction::Left))));
    assert!(ok, "node 2's leave finished once drained");
    assert!(h.log.iter().any(|(_, a)| matches!(a, NodeAction::LeaveReleased { node: 2 })));
    let ok = h.run_until(2_000, |h| h.starts().len() == 2);
    assert!(ok, "web runs on another node: {:?}", h.starts());
    assert_ne!(h.starts()[1], 2);
}

// Rule 5: a graceful leave turned into a forced leave (the leaving node
// was taken for dead while it still stopped its groups) is not a finished
// leave: the node stays a services member until the forced leave reaches
// the services level, after the levels below and the address lease (rule
// 8). Fed as `NodeLeft` at once, the decider restarted web on another node
// while node 2, alive and reachable, still stopped it: found by the
// composed simulator (`cargo xtask sim --seed 1473`, also 683, 696, 1381),
// where a leaving node paused longer than the detection bound.
#[test]
fn a_leave_turned_into_a_forced_leave_waits_for_the_forced_leave() {
    let mut h = Harness::new(3);
    for n in h.nodes.values_mut() {
        n.set_lease_wait(40 * MS);
    }
    h.formed();
    h.hold_stops.insert(2);
    h.queue.push_back((2, NodeInput::Membership(MInput::Leave)));
    let ok = h.run_until(1_000, |h| {
        h.log.iter().any(|(n, a)| *n == 1 && matches!(a, NodeAction::LevelStep { role: LevelRole::Services, id, held: true, .. } if id.node == 2 && id.kind == Kind::Leave))
            && !h.held.is_empty()
    });
    assert!(ok, "node 2's leave is held at the services level while web stops there");
    // Node 2 is taken for dead by the master while node 3 still hears it.
    h.queue.push_back((3, NodeInput::Membership(MInput::PeerSilent { node: 2 })));
    h.queue.push_back((3, NodeInput::Membership(MInput::PeerUp { node: 2 })));
    h.queue.push_back((1, NodeInput::Membership(MInput::PeerSilent { node: 2 })));
    let ok = h.run_until(5_000, |h| h.starts().len() == 2);
    assert!(ok, "web was started again after node 2 was forced out: {:?}", h.starts());
    assert_ne!(h.starts()[1], 2);
    let step3 = addresses_step_at(&h, 3, 2).expect("the addresses step of the forced leave reached node 3");
    let restart = start_at(&h, 1).unwrap();
    assert!(restart >= step3.plus_ms(40), "web restarted at {restart}, before node 3's addresses step at {step3} plus the lease wait");
    let services_step = h.log.iter().zip(&h.log_at).find_map(|((n, a), t)| match a {
        NodeAction::LevelStep { role: LevelRole::Services, id, .. } if *n == 1 && id.node == 2 && id.kind == Kind::ForcedLeave => Some(*t),
        _ => None,
    });
    assert!(services_step.is_some_and(|t| t <= restart), "web restarted at {restart}, before the forced leave's services step {services_step:?}");
}

fn slot() -> ServicesSlot {
    ServicesSlot {
        core: Services::new(SConfig { me: 1, incarnation: 2, services: vec![web()] }).unwrap(),
        failed_fed: BTreeSet::new(),
        leaving: BTreeSet::new(),
        last_view: None,
        last_lives: BTreeMap::new(),
        drained: Vec::new(),
        drained_nodes: BTreeSet::new(),
        held_leaves: BTreeMap::new(),
    }
}

fn entry(state: NodeState, incarnation: u64) -> NodeEntry {
    NodeEntry { state, incarnation, levels: BTreeSet::new() }
}

fn cluster(master: NodeId, master_incarnation: u64, nodes: &[(NodeId, NodeState, u64)]) -> ClusterState {
    let view = ViewId { term: 1, master, master_incarnation, version: 7 };
    ClusterState {
        view,
        origin: view,
        nodes: nodes.iter().map(|(n, s, i)| (*n, entry(*s, *i))).collect(),
        transitions: BTreeMap::<NodeId, Transition>::new(),
        change: Default::default(),
        quorate: true,
        stopping: false,
    }
}

/// Node 1's (incarnation 2) transition of `kind` at its first step, walking
/// `levels` with `participants`.
fn transition_of_1(kind: Kind, levels: &[u32], participants: &[NodeId]) -> Transition {
    Transition {
        id: TransitionId { node: 1, incarnation: 2, kind },
        path: levels.iter().map(|l| LevelSpec { level: *l, barriers: membership::Barriers::ONE }).collect(),
        pos: 0,
        barrier: 0,
        participants: participants.iter().copied().collect(),
        leave_pending: false,
    }
}

fn fed_view(s: &ServicesSlot, out: &VecDeque<NodeAction>) -> Option<(BTreeSet<NodeId>, NodeId)> {
    let _ = out;
    s.last_view.as_ref().map(|(_, m, d)| (m.clone(), *d))
}

// Rule 6: a state of an earlier life of this node (its own entry, or the
// master) is not fed to the services core; this life's state is.
#[test]
fn a_state_of_an_earlier_life_is_not_fed() {
    let mut out = VecDeque::new();
    // This node is 1, incarnation 2.
    let mut s = slot();
    s.on_state(Instant::ZERO, 1, 2, &cluster(1, 2, &[(1, NodeState::Joined, 1), (2, NodeState::Joined, 1)]), &mut out);
    assert_eq!(fed_view(&s, &out), None, "own entry of an earlier life");
    assert!(out.is_empty());
    s.on_state(Instant::ZERO, 1, 2, &cluster(1, 1, &[(1, NodeState::Joined, 2), (2, NodeState::Joined, 1)]), &mut out);
    assert_eq!(fed_view(&s, &out), None, "master of an earlier life");
    s.on_state(Instant::ZERO, 1, 2, &cluster(2, 1, &[(1, NodeState::Joining, 2), (2, NodeState::Joined, 1)]), &mut out);
    assert_eq!(fed_view(&s, &out), None, "not a member yet");
    s.on_state(Instant::ZERO, 1, 2, &cluster(2, 1, &[(1, NodeState::Joined, 2), (2, NodeState::Joined, 1)]), &mut out);
    assert_eq!(fed_view(&s, &out), Some(([1, 2].into(), 2)), "this life's state is fed");
}

// Rule 5: a node whose join was reversed into a leave before it reached
// the services level (it asked to leave while joining, S1.6) is no
// services member: its leave walks only the levels below, so it is never
// drained, and a service given to it would still run when it has left
// (found by the composed simulator, `cargo xtask sim --seed 60`, where
// the joining node was the only "member" and decided to start everything
// on itself). A leaving node whose leave passes the services level is a
// member until drained.
#[test]
fn a_join_reversed_below_the_services_level_is_no_member() {
    let mut out = VecDeque::new();
    let mut s = slot();
    let reversed = |levels: &[u32]| transition_of_1(Kind::Leave, levels, &[1, 2]);
    let mut st = cluster(1, 2, &[(1, NodeState::Leaving, 2), (2, NodeState::Joining, 1)]);
    st.transitions.insert(1, reversed(&[20, 10]));
    s.on_state(Instant::ZERO, 1, 2, &st, &mut out);
    assert_eq!(fed_view(&s, &out), None, "a reversed join below the services level is no member");
    let mut st = cluster(1, 2, &[(1, NodeState::Leaving, 2), (2, NodeState::Joined, 1)]);
    st.transitions.insert(1, reversed(&[40, 30, 20, 10]));
    s.on_state(Instant::ZERO, 1, 2, &st, &mut out);
    assert_eq!(fed_view(&s, &out), Some(([1, 2].into(), 1)), "a leave through the services level: a member until drained");
}

// Rule 5: a forced-out life whose forced leave never passes the services
// level (it only walks the levels its join reached, or its reversed join
// walks, S1.6) never was a services member and is none: it is never fed as
// `NodeFailed`, and while every other node was still joining it counted
// itself the only member, became the decider and started every group on
// itself (composed simulator, `cargo xtask sim --seed 1327`: node 4 asked
// to leave while joining, paused past the detection bound, was forced out,
// and on resuming started `ip` and `db` while they ran on nodes 6 and 2).
// A forced leave through the services level: a member until fed as failed.
#[test]
fn a_forced_leave_below_the_services_level_is_no_member() {
    let mut out = VecDeque::new();
    let mut s = slot();
    let forced = |levels: &[u32]| transition_of_1(Kind::ForcedLeave, levels, &[2, 3]);
    let mut st = cluster(2, 1, &[(1, NodeState::ForcedLeaving, 2), (2, NodeState::Joining, 1), (3, NodeState::Joining, 1)]);
    st.transitions.insert(1, forced(&[10]));
    s.on_state(Instant::ZERO, 1, 2, &st, &mut out);
    assert_eq!(fed_view(&s, &out), None, "a forced leave below the services level: no member, so no decider");
    let mut st = cluster(2, 1, &[(1, NodeState::ForcedLeaving, 2), (2, NodeState::Joining, 1), (3, NodeState::Joined, 1)]);
    st.transitions.insert(1, forced(&[40, 30, 20, 10]));
    s.on_state(Instant::ZERO, 1, 2, &st, &mut out);
    assert_eq!(fed_view(&s, &out), Some(([1, 3].into(), 1)), "a forced leave through the services level: a member until fed as failed");
}

// Rule 5: a forced-out life counts as a member until it is fed as
// `NodeFailed`; the decider is the lowest member when the master is none.
#[test]
fn forced_out_lives_count_until_fed_and_the_decider_is_a_member() {
    let mut out = VecDeque::new();
    let mut s = slot();
    let st = cluster(2, 1, &[(1, NodeState::Joined, 2), (2, NodeState::Joined, 1), (3, NodeState::ForcedLeaving, 4)]);
    s.on_state(Instant::ZERO, 1, 2, &st, &mut out);
    assert_eq!(fed_view(&s, &out), Some(([1, 2, 3].into(), 2)));
    let id = TransitionId { node: 3, incarnation: 4, kind: Kind::ForcedLeave };
    s.node_failed(Instant::ZERO, 1, 2, id, Some(&st), &mut out);
    assert_eq!(fed_view(&s, &out), Some(([1, 2].into(), 2)), "fed as failed: no longer a member");
    // The master (2) finished its own leave and stays on: 1 decides.
    let st = cluster(2, 1, &[(1, NodeState::Joined, 2), (2, NodeState::Inactive, 1)]);
    s.on_state(Instant::ZERO, 1, 2, &st, &mut out);
    assert_eq!(fed_view(&s, &out), Some(([1].into(), 1)));
    // An unchanged view is not fed again.
    let n = out.len();
    s.on_state(Instant::ZERO, 1, 2, &st, &mut out);
    assert_eq!(out.len(), n);
}

// Rule 5: the lives of the state are fed with it (`Input::Lives`), a life
// whose forced leave is under way marked: the decider drops its requests
// (and those of earlier lives).
#[test]
fn the_lives_are_fed_with_the_forced_out_ones_marked() {
    let mut out = VecDeque::new();
    let mut s = slot();
    let st = cluster(1, 2, &[(1, NodeState::Joined, 2), (2, NodeState::Joined, 1), (3, NodeState::ForcedLeaving, 4)]);
    s.on_state(Instant::ZERO, 1, 2, &st, &mut out);
    let life = |incarnation, forced_leaving| services::Life { incarnation, forced_leaving };
    assert_eq!(s.last_lives.get(&2), Some(&life(1, false)));
    assert_eq!(s.last_lives.get(&3), Some(&life(4, true)), "node 3's life 4 is being forced out");
    // Its new life joins: fed too.
    let st = cluster(1, 2, &[(1, NodeState::Joined, 2), (2, NodeState::Joined, 1), (3, NodeState::Joining, 5)]);
    s.on_state(Instant::ZERO, 1, 2, &st, &mut out);
    assert_eq!(s.last_lives.get(&3), Some(&life(5, false)));
}

// Rule 7: after a halt no core is fed and no timer runs.
#[test]
fn a_halted_node_takes_no_input_and_has_no_timer() {
    let mut h = Harness::new(3);
    h.formed();
    h.queue.push_back((3, NodeInput::Membership(MInput::LocalFailure { from: None, reason: 9 })));
    let ok = h.run_until(1_000, |h| h.nodes[&3].is_halted());
    assert!(ok);
    assert!(h.log.iter().any(|(n, a)| *n == 3 && matches!(a, NodeAction::Membership(MAction::Halt { why: HaltReason::LocalFailure { reason: 9 } }))));
    let n3 = h.nodes.get_mut(&3).unwrap();
    assert_eq!(n3.poll_timeout(), None);
    while n3.poll().is_some() {}
    n3.handle(Instant::ZERO.plus_ms(60_000), NodeInput::Services(SInput::Switchover { service: "web".into(), to: Some(3) }));
    n3.handle(Instant::ZERO.plus_ms(60_000), NodeInput::Membership(MInput::Tick));
    assert_eq!(n3.poll(), None);
}

// Rule 3: the fencing level's steps go to the fencing core, whose
// acknowledgement moves the transition on (each node joins only once its
// key is registered); its `Fenced` is a local failure of the fencing level.
#[test]
fn the_fencing_level_follows_the_fencing_core() {
    let mut h = Harness::with(3, true);
    h.formed();
    for n in 1..=3 {
        assert!(h.nodes[&n].fencing().unwrap().registered(), "node {n} registered its key");
        let registered_at = h.log.iter().position(|(m, a)| *m == n && matches!(a, NodeAction::Fencing { action: fencing::Action::Run { what: fencing::Op::Register, .. }, .. }));
        let acked_at = h.log.iter().position(|(m, a)| *m == n && matches!(a, NodeAction::Fencing { action: fencing::Action::Ack { id, .. }, .. } if id.node == n));
        let storage_at = h.log.iter().position(|(m, a)| *m == n && matches!(a, NodeAction::LevelStep { role: LevelRole::Storage, id, .. } if id.node == n));
        assert!(registered_at.is_some() && registered_at < acked_at, "node {n}: the fencing core acknowledged after the registration");
        assert!(acked_at.is_some() && acked_at < storage_at, "node {n}: its join reached storage only after the fencing core's acknowledgement");
    }
    // Node 3's key is preempted: its next check fences it, and clustering
    // ends there with the fencing distress reason.
    h.preempted.insert(3);
    let ok = h.run_until(5_000, |h| h.nodes[&3].is_halted());
    assert!(ok, "node 3 halted once fenced");
    assert!(h.log.iter().any(|(n, a)| *n == 3 && matches!(a, NodeAction::Fencing { action: fencing::Action::Fenced { .. }, .. })));
    assert!(h
        .log
        .iter()
        .any(|(n, a)| *n == 3 && matches!(a, NodeAction::Membership(MAction::Halt { why: HaltReason::LocalFailure { reason: FENCED } }))));
}

// Deterministic: the same inputs give the same actions, in the same order.
#[test]
fn the_same_inputs_give_the_same_actions() {
    let run = || {
        let mut h = Harness::with(3, true);
        h.formed();
        h.queue.push_back((1, NodeInput::Services(SInput::Switchover { service: "web".into(), to: Some(3) })));
        h.run_until(1_000, |_| false);
        h.kill(3);
        h.run_until(3_000, |_| false);
        h.log.iter().map(|(n, a)| format!("{n} {a:?}")).collect::<Vec<_>>()
    };
    let (a, b) = (run(), run());
    assert!(a.len() > 100, "a run with some history: {} actions", a.len());
    assert_eq!(a, b);
}

/// When web's `k`-th start (0-based) was made.
fn start_at(h: &Harness, k: usize) -> Option<Instant> {
    h.log
        .iter()
        .zip(&h.log_at)
        .filter(|((_, a), _)| matches!(a, NodeAction::Services(SAction::Start { params }) if params.service == "web"))
        .nth(k)
        .map(|(_, t)| *t)
}

/// When the addresses step of node `victim`'s forced leave reached `at`.
fn addresses_step_at(h: &Harness, at: NodeId, victim: NodeId) -> Option<Instant> {
    h.log.iter().zip(&h.log_at).find_map(|((n, a), t)| match a {
        NodeAction::LevelStep { role: LevelRole::Addresses, id, .. } if *n == at && id.node == victim && id.kind == Kind::ForcedLeave => Some(*t),
        _ => None,
    })
}

/// Node 2 (web's owner) is forced out while node 3 still hears it: only the
/// master's datapath reports it silent (node 3's reported it and heard it
/// again). Returns the harness once web runs again.
fn forced_out_while_reachable(wait_ms: u64) -> Harness {
    let mut h = Harness::new(3);
    for n in h.nodes.values_mut() {
        n.set_lease_wait(wait_ms * MS);
    }
    h.formed();
    h.queue.push_back((3, NodeInput::Membership(MInput::PeerSilent { node: 2 })));
    h.queue.push_back((3, NodeInput::Membership(MInput::PeerUp { node: 2 })));
    h.queue.push_back((1, NodeInput::Membership(MInput::PeerSilent { node: 2 })));
    let ok = h.run_until(5_000, |h| h.starts().len() == 2);
    assert!(ok, "web was started again after node 2 was forced out: {:?}", h.starts());
    assert_ne!(h.starts()[1], 2);
    h
}

// Rule 8: the addresses step of a forced leave is held by a survivor whose
// datapath still hears the node, for the lease wait: the services level (the
// new owner's start of web, which configures the address) comes only after.
#[test]
fn a_takeover_from_a_node_forced_out_while_heard_waits_out_its_lease() {
    let h = forced_out_while_reachable(40);
    let step3 = addresses_step_at(&h, 3, 2).expect("the addresses step reached node 3");
    let restart = start_at(&h, 1).unwrap();
    assert!(restart >= step3.plus_ms(40), "web restarted at {restart}, 40 ms after node 3's addresses step at {step3} at the earliest");
    // Node 3 held it for the whole wait; node 1 (silent there) not at all.
    let waited: Vec<(NodeId, u64, bool)> = h
        .log
        .iter()
        .filter_map(|(n, a)| match a {
            NodeAction::LeaseWaited { id, waited_ns, silent } if id.node == 2 => Some((*n, *waited_ns, *silent)),
            _ => None,
        })
        .collect();
    assert_eq!(waited, vec![(3, 40 * MS, false)]);
    assert!(h.log.iter().any(|(n, a)| *n == 3 && matches!(a, NodeAction::LevelStep { role: LevelRole::Addresses, held: true, id, .. } if id.node == 2)));
    assert!(!h.log.iter().any(|(n, a)| *n == 1 && matches!(a, NodeAction::LeaseWait { .. })));
    // Without the rule the same run restarts web at once (the harness has
    // no latency): this is what the wait adds.
    let h0 = forced_out_while_reachable(0);
    let step0 = addresses_step_at(&h0, 3, 2).unwrap();
    assert!(start_at(&h0, 1).unwrap() < step0.plus_ms(40), "without the wait web restarts within the same instant");
    assert!(!h0.log.iter().any(|(_, a)| matches!(a, NodeAction::LeaseWait { .. } | NodeAction::LeaseWaited { .. })));
}

// Rule 8: a crash (every survivor's datapath reports the node silent before
// the forced leave reaches its addresses level) costs nothing: web restarts
// at the same instant as without the rule.
#[test]
fn a_crash_failover_does_not_wait_for_the_lease() {
    let crash = |wait_ms: u64| {
        let mut h = Harness::new(3);
        for n in h.nodes.values_mut() {
            n.set_lease_wait(wait_ms * MS);
        }
        h.formed();
        h.kill(2);
        let killed = h.now;
        assert!(h.run_until(5_000, |h| h.starts().len() == 2), "web restarted");
        assert!(!h.log.iter().any(|(_, a)| matches!(a, NodeAction::LeaseWait { .. })), "no addresses step was held");
        start_at(&h, 1).unwrap().since(killed)
    };
    assert_eq!(crash(40), crash(0));
}

// Rule 8: a silence reported during the wait ends it (the lease is over once
// this node's datapath has not heard the node for the silence bound).
#[test]
fn a_silence_reported_during_the_lease_wait_ends_it() {
    let mut h = Harness::new(3);
    for n in h.nodes.values_mut() {
        n.set_lease_wait(40 * MS);
    }
    h.formed();
    h.queue.push_back((1, NodeInput::Membership(MInput::PeerSilent { node: 2 })));
    let ok = h.run_until(1_000, |h| h.nodes[&3].lease_holds().count() == 1);
    assert!(ok, "node 3 holds the addresses step");
    let (id, since) = h.nodes[&3].lease_holds().next().unwrap();
    assert_eq!(id.node, 2);
    assert_eq!(h.nodes[&3].timers()[Timer::LeaseWait as usize], Some(since.plus_ms(40)));
    // 10 ms later node 3's datapath reports node 2 silent.
    h.now = since.plus_ms(10);
    h.queue.push_back((3, NodeInput::Membership(MInput::PeerSilent { node: 2 })));
    assert!(h.run_until(5_000, |h| h.starts().len() == 2), "web restarted");
    let waited = h.log.iter().find_map(|(n, a)| match a {
        NodeAction::LeaseWaited { id, waited_ns, silent } if *n == 3 && id.node == 2 => Some((*waited_ns, *silent)),
        _ => None,
    });
    assert_eq!(waited, Some((10 * MS, true)));
    assert!(start_at(&h, 1).unwrap() < since.plus_ms(40));
    assert_eq!(h.nodes[&3].lease_holds().count(), 0);
}
