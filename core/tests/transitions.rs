//! Deterministic scenario tests of the membership manager's transition
//! framework (S0, S1.1–S1.8, Table 1 of the 001 seed).
//!
//! A small synchronous harness drives 2–4 [`Membership`] cores: messages go
//! through one FIFO queue and are delivered with zero latency; time only
//! moves when every queue is empty, straight to the earliest
//! `next_deadline()`, and the due cores get `Input::Tick`. The datapath's
//! inputs (`PeerUp`, `PeerSilent`, `PeerDistress`) are injected by the tests.
//! Every node registers one subsystem per level; its notifications are
//! acknowledged automatically through the same FIFO queue, unless a hold
//! rule keeps them back (a hung subsystem) until the test releases them.
//!
//! The tests compare exact sequences of `Action::Notify` per node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use baton_core::membership::{
    Action, Barriers, Config, HaltReason, Input, Kind, LevelSpec, Membership, Msg, NodeState, Step, SubsystemId,
    TransitionId,
};
use baton_core::{Instant, NodeId};

const MS: u64 = 1_000_000;

/// The registered levels: (subsystem id, level, barriers). Every node
/// registers the same three subsystems. Barrier counts differ per kind so
/// that every kind runs a 2-barrier level somewhere.
const LEVELS: [(SubsystemId, u32, Barriers); 3] = [
    (1, 10, Barriers { join: 2, leave: 1, forced_leave: 1 }),
    (2, 20, Barriers { join: 1, leave: 2, forced_leave: 1 }),
    (3, 30, Barriers { join: 1, leave: 1, forced_leave: 2 }),
];

fn sid_of(level: u32) -> SubsystemId {
    LEVELS.iter().find(|(_, l, _)| *l == level).unwrap().0
}

/// One notification, as compared by the tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Note {
    sid: SubsystemId,
    kind: Kind,
    node: NodeId,
    inc: u64,
    level: u32,
    barrier: u32,
}

impl Note {
    fn id(&self) -> TransitionId {
        TransitionId { node: self.node, incarnation: self.inc, kind: self.kind }
    }
    fn step(&self) -> Step {
        Step { level: self.level, barrier: self.barrier }
    }
}

/// The notifications one node's subsystems get for a whole transition of
/// `node` (incarnation `inc`): bottom-up for Join and ForcedLeave, top-down
/// for Leave, over the levels `<= upto`, each with its barriers in order.
fn walk(kind: Kind, node: NodeId, inc: u64, upto: u32) -> Vec<Note> {
    let mut lv: Vec<(SubsystemId, u32, Barriers)> = LEVELS.iter().copied().filter(|(_, l, _)| *l <= upto).collect();
    if kind == Kind::Leave {
        lv.reverse();
    }
    let mut out = Vec::new();
    for (sid, level, b) in lv {
        for barrier in 0..b.of(kind) {
            out.push(Note { sid, kind, node, inc, level, barrier });
        }
    }
    out
}

/// Only the listed (level, barrier) steps of a transition.
fn steps(kind: Kind, node: NodeId, inc: u64, st: &[(u32, u32)]) -> Vec<Note> {
    st.iter().map(|&(level, barrier)| Note { sid: sid_of(level), kind, node, inc, level, barrier }).collect()
}

fn cat(parts: &[Vec<Note>]) -> Vec<Note> {
    parts.iter().flatten().copied().collect()
}

type Rule = Box<dyn Fn(NodeId, &Note) -> bool>;

struct Node {
    core: Membership,
    inc: u64,
    up: bool,
    started: bool,
    /// Every action, with the time it was produced.
    actions: Vec<(Instant, Action)>,
    notes: Vec<Note>,
    /// Set once a Halt or Left was seen: nothing may follow.
    ended: bool,
    after_end: Vec<Action>,
}

enum Ev {
    Msg { to: NodeId, from: NodeId, msg: Msg },
    Ack { node: NodeId, inc: u64, note: Note },
}

struct Harness {
    now: Instant,
    all: BTreeSet<NodeId>,
    nodes: BTreeMap<NodeId, Node>,
    /// Earlier lives of restarted nodes.
    old: Vec<(NodeId, Node)>,
    queue: VecDeque<Ev>,
    holds: Vec<Rule>,
    held: Vec<(NodeId, u64, Note)>,
    /// Directed links that lose everything: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Messages (from, to, message) that are lost.
    lose: Option<Box<dyn Fn(NodeId, NodeId, &Msg) -> bool>>,
    /// `Config::two_node_race` of every core.
    race: bool,
    /// Paused nodes (a stopped process): their inputs wait, in order, in
    /// `parked`, and are handled when they resume; no timer fires for them.
    paused: BTreeSet<NodeId>,
    parked: Vec<(NodeId, Input)>,
    /// `Config::subgroup_size` of the cores created from now on.
    subgroup: usize,
}

fn config(me: NodeId, inc: u64, all: &BTreeSet<NodeId>) -> Config {
    Config { me, incarnation: inc, nodes: all.clone(), subgroup_size: 2, resend_ns: 10 * MS, form_ns: 50 * MS, batch_ns: 0, two_node_race: false }
}

impl Harness {
    /// `n` configured nodes 1..=n, created (and registered) but not started.
    fn new(n: u32) -> Harness {
        Harness::new_with(n, false)
    }

    fn new_with(n: u32, race: bool) -> Harness {
        let all: BTreeSet<NodeId> = (1..=n).collect();
        let mut h = Harness {
            now: Instant::ZERO,
            all: all.clone(),
            nodes: BTreeMap::new(),
            old: Vec::new(),
            queue: VecDeque::new(),
            holds: Vec::new(),
            held: Vec::new(),
            cut: BTreeSet::new(),
            lose: None,
            race,
            paused: BTreeSet::new(),
            parked: Vec::new(),
            subgroup: 2,
        };
        for id in all {
            h.create(id, 1);
        }
        h
    }

    fn create(&mut self, id: NodeId, inc: u64) {
        let core = Membership::new(Config { two_node_race: self.race, subgroup_size: self.subgroup, ..config(id, inc, &self.all) });
        let node = Node {
            core,
            inc,
            up: true,
            started: false,
            actions: Vec::new(),
            notes: Vec::new(),
            ended: false,
            after_end: Vec::new(),
        };
        if let Some(old) = self.nodes.insert(id, node) {
            self.old.push((id, old));
        }
        for (sid, level, barriers) in LEVELS {
            self.input(id, Input::Register { subsystem: sid, spec: LevelSpec { level, barriers } });
        }
    }

    /// Starts `id`; the datapath of every other running node and of `id`
    /// reports the links up.
    fn start(&mut self, id: NodeId) {
        self.nodes.get_mut(&id).unwrap().started = true;
        self.input(id, Input::Start);
        let others: Vec<NodeId> =
            self.nodes.iter().filter(|(n, s)| **n != id && s.up && s.started).map(|(n, _)| *n).collect();
        for o in others {
            self.input(o, Input::PeerUp { node: id });
            self.input(id, Input::PeerUp { node: o });
        }
    }

    /// A new life of `id` (incarnation `inc`), registered and started.
    fn restart(&mut self, id: NodeId, inc: u64) {
        self.create(id, inc);
        self.start(id);
    }

    /// The node stops: it gets nothing any more (what it sent is in flight).
    fn crash(&mut self, id: NodeId) {
        self.nodes.get_mut(&id).unwrap().up = false;
    }

    /// The datapath of every other running node reports `id` silent.
    fn silent(&mut self, id: NodeId) {
        let others: Vec<NodeId> =
            self.nodes.iter().filter(|(n, s)| **n != id && s.up && s.started).map(|(n, _)| *n).collect();
        for o in others {
            self.input(o, Input::PeerSilent { node: id });
        }
    }

    fn hold(&mut self, rule: impl Fn(NodeId, &Note) -> bool + 'static) {
        self.holds.push(Box::new(rule));
    }

    /// Drops every hold rule and acknowledges what they held back.
    fn release_all(&mut self) {
        self.holds.clear();
        for (node, inc, note) in std::mem::take(&mut self.held) {
            self.queue.push_back(Ev::Ack { node, inc, note });
        }
    }

    /// Pauses `id`: it handles nothing until [`Self::resume`].
    fn pause(&mut self, id: NodeId) {
        self.paused.insert(id);
    }

    /// Resumes `id`: it handles what it got meanwhile, in order, now.
    fn resume(&mut self, id: NodeId) {
        self.paused.remove(&id);
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked).into_iter().partition(|(n, _)| *n == id);
        self.parked = rest;
        for (_, i) in mine {
            self.input(id, i);
        }
    }

    fn input(&mut self, id: NodeId, input: Input) {
        if self.paused.contains(&id) {
            if self.nodes[&id].up {
                self.parked.push((id, input));
            }
            return;
        }
        let now = self.now;
        {
            let n = self.nodes.get_mut(&id).unwrap();
            if !n.up {
                return;
            }
            n.core.handle(now, input);
        }
        self.drain(id);
    }

    /// Like `input`, and returns exactly the actions this input produced.
    fn input_actions(&mut self, id: NodeId, input: Input) -> Vec<Action> {
        let before = self.nodes[&id].actions.len();
        self.input(id, input);
        self.nodes[&id].actions[before..].iter().map(|(_, a)| a.clone()).collect()
    }

    fn drain(&mut self, id: NodeId) {
        loop {
            let (a, inc) = {
                let n = self.nodes.get_mut(&id).unwrap();
                match n.core.poll_action() {
                    Some(a) => (a, n.inc),
                    None => break,
                }
            };
            let now = self.now;
            {
                let n = self.nodes.get_mut(&id).unwrap();
                if n.ended {
                    n.after_end.push(a.clone());
                }
                n.actions.push((now, a.clone()));
                if matches!(a, Action::Halt { .. } | Action::Left) {
                    n.ended = true;
                }
            }
            match a {
                Action::Send { to, msg } if !self.cut.contains(&(id, to)) && !self.lose.as_ref().is_some_and(|l| l(id, to, &msg)) => {
                    self.queue.push_back(Ev::Msg { to, from: id, msg });
                }
                Action::Notify { subsystem, id: tid, step, .. } => {
                    let note = Note {
                        sid: subsystem,
                        kind: tid.kind,
                        node: tid.node,
                        inc: tid.incarnation,
                        level: step.level,
                        barrier: step.barrier,
                    };
                    self.nodes.get_mut(&id).unwrap().notes.push(note);
                    if self.holds.iter().any(|r| r(id, &note)) {
                        self.held.push((id, inc, note));
                    } else {
                        self.queue.push_back(Ev::Ack { node: id, inc, note });
                    }
                }
                _ => {}
            }
        }
    }

    /// Delivers everything queued (and what that causes), in FIFO order.
    fn pump(&mut self) {
        let mut guard = 0u32;
        while let Some(ev) = self.queue.pop_front() {
            guard += 1;
            assert!(guard < 2_000_000, "message storm");
            match ev {
                Ev::Msg { to, from, msg } => {
                    if self.nodes.get(&to).is_some_and(|n| n.up) {
                        self.input(to, Input::Receive { from, msg });
                    }
                }
                Ev::Ack { node, inc, note } => {
                    // An ack of an earlier life goes nowhere.
                    if self.nodes[&node].inc == inc {
                        self.input(node, Input::Ack { subsystem: note.sid, id: note.id(), step: note.step() });
                    }
                }
            }
        }
    }

    /// Runs `ms` of fake time: pump, then jump to the earliest deadline and
    /// tick every core that is due, until the time is over.
    fn run_ms(&mut self, ms: u64) {
        let end = self.now.plus_ms(ms);
        let mut guard = 0u32;
        loop {
            self.pump();
            let next = self
                .nodes
                .iter()
                .filter(|(id, n)| n.up && !self.paused.contains(id))
                .filter_map(|(_, n)| n.core.next_deadline())
                .min();
            match next {
                Some(t) if t <= end => {
                    guard += 1;
                    assert!(guard < 200_000, "timer storm");
                    self.now = self.now.max(t);
                    let due: Vec<NodeId> = self
                        .nodes
                        .iter()
                        .filter(|(id, n)| n.up && !self.paused.contains(id) && n.core.next_deadline().is_some_and(|d| d <= self.now))
                        .map(|(id, _)| *id)
                        .collect();
                    for id in due {
                        self.input(id, Input::Tick);
                    }
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
    }

    fn notes(&self, id: NodeId) -> Vec<Note> {
        self.nodes[&id].notes.clone()
    }

    /// Forgets the notifications and actions seen so far (after a setup).
    fn mark(&mut self) {
        for n in self.nodes.values_mut() {
            n.notes.clear();
            n.actions.clear();
        }
    }

    /// The state of `of` in the state `at` follows.
    fn state_of(&self, at: NodeId, of: NodeId) -> NodeState {
        self.nodes[&at].core.state().expect("no state").state_of(of)
    }

    fn master(&self, at: NodeId) -> NodeId {
        self.nodes[&at].core.state().expect("no state").view.master
    }

    fn count(&self, id: NodeId, f: impl Fn(&Action) -> bool) -> usize {
        self.nodes[&id].actions.iter().filter(|(_, a)| f(a)).count()
    }

    /// The `states` carried by the first Notify of `id` matching `note`.
    fn states_with(&self, id: NodeId, note: Note) -> BTreeMap<NodeId, NodeState> {
        for (_, a) in &self.nodes[&id].actions {
            if let Action::Notify { subsystem, id: tid, step, states } = a {
                if *subsystem == note.sid && *tid == note.id() && *step == note.step() {
                    return states.clone();
                }
            }
        }
        panic!("n{id} never got {note:?}");
    }

    /// No core (of any life) produced an action after its Halt or Left.
    fn check_nothing_after_end(&self) {
        for (id, n) in self.nodes.iter().chain(self.old.iter().map(|(i, n)| (i, n))) {
            assert!(n.after_end.is_empty(), "n{id} acted after it halted or left: {:?}", n.after_end);
        }
    }

    fn no_transitions(&self, at: NodeId) -> bool {
        self.nodes[&at].core.state().expect("no state").transitions.is_empty()
    }
}

fn states(v: &[(NodeId, NodeState)]) -> BTreeMap<NodeId, NodeState> {
    v.iter().copied().collect()
}

fn all_joined(h: &Harness, nodes: &[NodeId]) -> bool {
    nodes.iter().all(|n| h.nodes[n].core.my_state() == NodeState::Joined) && h.no_transitions(nodes[0])
}

/// Five configured nodes, all started together and joined.
fn five_joined() -> Harness {
    let mut h = Harness::new(5);
    for n in 1..=5 {
        h.start(n);
    }
    h.run_ms(300);
    assert!(all_joined(&h, &[1, 2, 3, 4, 5]), "setup: all joined");
    h
}

/// On every survivor, the forced leave of each gone node was notified once
/// per step, in order (the gone nodes' first lives).
fn forced_leaves_walked_once(h: &Harness, survivors: &[NodeId], gone: &[NodeId]) {
    for n in survivors {
        for g in gone {
            let got: Vec<Note> = h.notes(*n).into_iter().filter(|x| x.kind == Kind::ForcedLeave && x.node == *g).collect();
            assert_eq!(got, walk(Kind::ForcedLeave, *g, 1, 30), "node {n}: forced leave of {g}");
        }
    }
}

/// Three configured nodes: 1 and 2 start together, 1 forms the cluster
/// and both join. Then node 3 is started (and joins) if `with3`.
fn three(with3: bool) -> Harness {
    let mut h = Harness::new(3);
    h.start(1);
    h.start(2);
    h.run_ms(200);
    assert!(all_joined(&h, &[1, 2]), "setup: 1 and 2 did not join");
    if with3 {
        h.start(3);
        h.run_ms(200);
        assert!(all_joined(&h, &[1, 2, 3]), "setup: 3 did not join");
    }
    h
}

// ---------------------------------------------------------------------------
// Table 1, row Joining -> Joined (S1.3, S1.5, S1.8)
// ---------------------------------------------------------------------------

/// Node 1 forms a 1-node cluster; node 2 joins it through the master. Both
/// nodes are notified of node 2's join bottom-up, level by level, barrier
/// by barrier; node 2 ends Joined on both.
#[test]
fn join_is_notified_bottom_up_with_barriers_on_every_node() {
    let mut h = Harness::new(2);
    h.start(1);
    h.run_ms(100);
    assert_eq!(h.nodes[&1].core.my_state(), NodeState::Joined);
    assert!(h.nodes[&1].core.is_master());
    assert_eq!(h.notes(1), walk(Kind::Join, 1, 1, 30), "n1 forming alone joins itself");

    h.start(2);
    h.run_ms(200);
    let j2 = walk(Kind::Join, 2, 1, 30);
    assert_eq!(j2.iter().map(|n| (n.level, n.barrier)).collect::<Vec<_>>(), vec![(10, 0), (10, 1), (20, 0), (30, 0)]);
    assert_eq!(h.notes(1), cat(&[walk(Kind::Join, 1, 1, 30), j2.clone()]));
    assert_eq!(h.notes(2), j2);
    for at in [1, 2] {
        assert_eq!(h.state_of(at, 2), NodeState::Joined);
        assert_eq!(h.state_of(at, 1), NodeState::Joined);
        assert!(h.no_transitions(at));
        assert_eq!(h.master(at), 1, "S1.8: the joiner negotiated with the master");
    }
    assert_eq!(h.nodes[&2].core.my_state(), NodeState::Joined);
    h.check_nothing_after_end();
}

/// A step is notified only once the previous one was acknowledged on every
/// node: node 2's level-10 barrier-0 ack is slow, so nobody (not even node
/// 1, which acked) hears of barrier 1; the moment it acks, both do.
#[test]
fn join_waits_for_every_nodes_ack_before_the_next_step() {
    let mut h = Harness::new(2);
    h.start(1);
    h.run_ms(100);
    h.mark();
    h.hold(|n, note| n == 2 && note.node == 2 && note.level == 10 && note.barrier == 0);
    h.start(2);
    h.run_ms(200);
    let first = steps(Kind::Join, 2, 1, &[(10, 0)]);
    assert_eq!(h.notes(1), first);
    assert_eq!(h.notes(2), first);
    assert_eq!(h.state_of(1, 2), NodeState::Joining);
    h.release_all();
    h.run_ms(100);
    assert_eq!(h.notes(1), walk(Kind::Join, 2, 1, 30));
    assert_eq!(h.notes(2), walk(Kind::Join, 2, 1, 30));
    assert_eq!(h.state_of(1, 2), NodeState::Joined);
}

// ---------------------------------------------------------------------------
// Table 1, rows Inactive / Joined: the states carried with notifications
// ---------------------------------------------------------------------------

/// Table 1: "Inactive" and "Joined" are never notified alone; the manager
/// sends them along with real transitions. Every Notify carries every
/// node's current state: the master Joined, the joiner Joining, a node
/// that never started Inactive; later Leaving and Forced-Leaving.
#[test]
fn notifications_carry_every_nodes_current_state() {
    let mut h = three(false);
    h.mark();
    h.start(3);
    h.run_ms(200);
    let n = Note { sid: 1, kind: Kind::Join, node: 3, inc: 1, level: 10, barrier: 0 };
    let want = states(&[(1, NodeState::Joined), (2, NodeState::Joined), (3, NodeState::Joining)]);
    for at in [1, 2, 3] {
        assert_eq!(h.states_with(at, n), want, "n{at}");
    }

    // A node that never started shows Inactive along with a transition.
    let mut h = Harness::new(3);
    h.start(1);
    h.start(2);
    h.run_ms(200);
    let n = Note { sid: 1, kind: Kind::Join, node: 2, inc: 1, level: 10, barrier: 0 };
    assert_eq!(
        h.states_with(2, n),
        states(&[(1, NodeState::Joining), (2, NodeState::Joining), (3, NodeState::Inactive)])
    );

    // Leaving and Forced-Leaving.
    let mut h = three(true);
    h.input(3, Input::Leave);
    h.run_ms(200);
    let n = Note { sid: 3, kind: Kind::Leave, node: 3, inc: 1, level: 30, barrier: 0 };
    assert_eq!(h.states_with(1, n), states(&[(1, NodeState::Joined), (2, NodeState::Joined), (3, NodeState::Leaving)]));
    // (Forced leave with a majority left: node 3 stays; 1 of the 2 that
    // remain after node 3's leave would not be a quorum with 3 configured
    // nodes.)
    let mut h = three(true);
    h.mark();
    h.crash(2);
    h.silent(2);
    h.run_ms(200);
    let n = Note { sid: 1, kind: Kind::ForcedLeave, node: 2, inc: 1, level: 10, barrier: 0 };
    assert_eq!(
        h.states_with(1, n),
        states(&[(1, NodeState::Joined), (2, NodeState::ForcedLeaving), (3, NodeState::Joined)])
    );
}

// ---------------------------------------------------------------------------
// Table 1, row Leaving -> Inactive
// ---------------------------------------------------------------------------

/// A graceful leave is notified top-down on every node (the leaver
/// included), barrier by barrier; the leaver gets `Left` and nothing
/// after; the others see it Inactive.
#[test]
fn graceful_leave_is_top_down_and_ends_inactive() {
    let mut h = three(true);
    h.mark();
    let acts = h.input_actions(3, Input::Leave);
    assert!(!acts.iter().any(|a| matches!(a, Action::Left)), "Left before the leave ran: {acts:?}");
    h.run_ms(300);
    let l3 = walk(Kind::Leave, 3, 1, 30);
    assert_eq!(l3.iter().map(|n| (n.level, n.barrier)).collect::<Vec<_>>(), vec![(30, 0), (20, 0), (20, 1), (10, 0)]);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), l3, "n{at}");
    }
    assert_eq!(h.count(3, |a| matches!(a, Action::Left)), 1);
    assert!(h.nodes[&3].core.has_left());
    for at in [1, 2] {
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
        assert_eq!(h.state_of(at, at), NodeState::Joined);
        assert!(h.no_transitions(at));
        assert_eq!(h.count(at, |a| matches!(a, Action::Left | Action::Halt { .. })), 0);
    }
    // The leaver's silence afterwards is no failure to recover from.
    h.crash(3);
    h.silent(3);
    h.run_ms(200);
    for at in [1, 2] {
        assert_eq!(h.notes(at), l3, "n{at}: no forced leave of a node that left");
    }
    h.check_nothing_after_end();
}

/// Two nodes: the lower one (the master, which wins a two-node tie) leaves
/// gracefully and then goes silent. The survivor is the whole group now:
/// the silence of a node that left must not cost it the quorum (a stale
/// joint majority of the earlier join change once made it halt here).
#[test]
fn survivor_of_a_two_node_cluster_keeps_running_after_the_other_left() {
    let mut h = Harness::new(2);
    h.start(1);
    h.start(2);
    h.run_ms(200);
    assert!(all_joined(&h, &[1, 2]), "setup: 1 and 2 did not join");
    h.mark();
    h.input(1, Input::Leave);
    h.run_ms(300);
    assert!(h.nodes[&1].core.has_left());
    assert_eq!(h.state_of(2, 1), NodeState::Inactive);
    h.crash(1);
    h.silent(1);
    h.run_ms(300);
    assert_eq!(h.count(2, |a| matches!(a, Action::Halt { .. })), 0, "the survivor halted");
    assert_eq!(h.nodes[&2].core.my_state(), NodeState::Joined);
    // And it still admits the node when it comes back.
    h.restart(1, 2);
    h.run_ms(300);
    assert!(all_joined(&h, &[1, 2]), "node 1 did not rejoin");
    h.check_nothing_after_end();
}

// ---------------------------------------------------------------------------
// Table 1, row Forced-Leaving -> Inactive
// ---------------------------------------------------------------------------

/// A joined node goes silent: the survivors force it out, notified
/// bottom-up with the forced-leave barriers; it ends Inactive.
#[test]
fn silent_node_is_forced_out_bottom_up() {
    let mut h = three(true);
    h.mark();
    h.crash(3);
    h.silent(3);
    h.run_ms(300);
    let f3 = walk(Kind::ForcedLeave, 3, 1, 30);
    assert_eq!(f3.iter().map(|n| (n.level, n.barrier)).collect::<Vec<_>>(), vec![(10, 0), (20, 0), (30, 0), (30, 1)]);
    for at in [1, 2] {
        assert_eq!(h.notes(at), f3, "n{at}");
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
        assert!(h.no_transitions(at));
        assert_eq!(h.count(at, |a| matches!(a, Action::PeerFailed { node: 3, distress: false })), 1);
    }
    h.check_nothing_after_end();
}

/// The master itself goes silent: the lowest joined survivor takes over
/// and forces the old master out, bottom-up on both survivors.
#[test]
fn silent_master_is_forced_out_by_its_successor() {
    let mut h = three(true);
    h.mark();
    h.crash(1);
    h.silent(1);
    h.run_ms(300);
    let f1 = walk(Kind::ForcedLeave, 1, 1, 30);
    for at in [2, 3] {
        assert_eq!(h.notes(at), f1, "n{at}");
        assert_eq!(h.master(at), 2);
        assert_eq!(h.state_of(at, 1), NodeState::Inactive);
        assert_eq!(h.state_of(at, 3), NodeState::Joined);
        assert!(h.no_transitions(at));
    }
    h.check_nothing_after_end();
}

// ---------------------------------------------------------------------------
// Table 1: Forced-Leaving re-notifies over Joining
// ---------------------------------------------------------------------------

/// Node 3 joins; its level-20 subsystem hangs (never acks the join). Node 3
/// then fails. The survivors abort the join and are re-notified with a
/// forced leave that only goes up to level 20, the highest level notified
/// of the join; level 30 never hears of node 3.
#[test]
fn forced_leave_over_hung_join_goes_only_as_high_as_the_join() {
    let mut h = three(false);
    h.mark();
    h.hold(|n, note| n == 3 && note.node == 3 && note.kind == Kind::Join && note.level == 20);
    h.start(3);
    h.run_ms(200);
    let j = steps(Kind::Join, 3, 1, &[(10, 0), (10, 1), (20, 0)]);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), j, "n{at}: join hung at level 20");
    }
    assert_eq!(h.state_of(1, 3), NodeState::Joining);

    h.crash(3);
    h.silent(3);
    h.run_ms(300);
    let f3 = walk(Kind::ForcedLeave, 3, 1, 20);
    for at in [1, 2] {
        assert_eq!(h.notes(at), cat(&[j.clone(), f3.clone()]), "n{at}");
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
        assert!(h.no_transitions(at));
    }
    h.check_nothing_after_end();
}

/// Same, with the hung level-20 subsystem on a survivor (node 2) too: its
/// late ack of the aborted join arrives while the forced leave runs, and
/// is ignored: no level-30 join step, the forced leave still stops at 20.
#[test]
fn late_acks_of_an_aborted_join_are_ignored() {
    let mut h = three(false);
    h.mark();
    h.hold(|n, note| (n == 3 || n == 2) && note.node == 3 && note.kind == Kind::Join && note.level == 20);
    h.start(3);
    h.run_ms(200);
    let j = steps(Kind::Join, 3, 1, &[(10, 0), (10, 1), (20, 0)]);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), j, "n{at}");
    }
    h.crash(3);
    h.silent(3);
    // Node 2's recovery of level 20 hangs as well, so the forced leave is
    // still in flight when the old join ack comes in.
    h.hold(|n, note| n == 2 && note.kind == Kind::ForcedLeave && note.level == 20);
    h.run_ms(100);
    let f10 = steps(Kind::ForcedLeave, 3, 1, &[(10, 0), (20, 0)]);
    for at in [1, 2] {
        assert_eq!(h.notes(at), cat(&[j.clone(), f10.clone()]), "n{at}");
        assert_eq!(h.state_of(at, 3), NodeState::ForcedLeaving);
    }
    // The hung join ack (held since before the failure) now arrives.
    h.release_all();
    h.run_ms(200);
    let f3 = walk(Kind::ForcedLeave, 3, 1, 20);
    for at in [1, 2] {
        assert_eq!(h.notes(at), cat(&[j.clone(), f3.clone()]), "n{at}");
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
        assert!(h.no_transitions(at));
    }
}

/// The join of node 3 stalls at level 20 on node 3 only (nodes 1 and 2
/// acked). The moment the survivors learn that node 3 failed, its join is
/// aborted where it stands: it is not pushed on to level 30 on the dead
/// node's behalf (that would notify level 30 of a join that never happens,
/// and the forced leave would then go up to 30).
#[test]
fn failure_of_the_joiner_does_not_complete_its_join_step() {
    let mut h = three(false);
    h.mark();
    h.hold(|n, note| n == 3 && note.node == 3 && note.kind == Kind::Join && note.level == 20);
    h.start(3);
    h.run_ms(200);
    h.crash(3);
    // Only the master learns of the failure first.
    let acts = h.input_actions(1, Input::PeerSilent { node: 3 });
    let joins_at_30: Vec<&Action> = acts
        .iter()
        .filter(|a| matches!(a, Action::Notify { id, step, .. } if id.kind == Kind::Join && step.level == 30))
        .collect();
    assert!(joins_at_30.is_empty(), "level 30 notified of a failed node's join: {joins_at_30:?}");
    h.silent(3);
    h.run_ms(300);
    let j = steps(Kind::Join, 3, 1, &[(10, 0), (10, 1), (20, 0)]);
    for at in [1, 2] {
        assert_eq!(h.notes(at), cat(&[j.clone(), walk(Kind::ForcedLeave, 3, 1, 20)]), "n{at}");
    }
}

// ---------------------------------------------------------------------------
// Table 1: Forced-Leaving re-notifies over Leaving
// ---------------------------------------------------------------------------

/// Node 3 leaves gracefully; its level-20 subsystem hangs on the leave
/// (barrier 0). Node 3 fails: the graceful leave is aborted (no barrier 1
/// of level 20, no level 10 leave), and the survivors run the forced leave
/// bottom-up over every level instead.
#[test]
fn forced_leave_over_leaving_aborts_the_graceful_leave() {
    let mut h = three(true);
    h.mark();
    h.hold(|n, note| n == 3 && note.kind == Kind::Leave && note.level == 20);
    h.input(3, Input::Leave);
    h.run_ms(200);
    let l = steps(Kind::Leave, 3, 1, &[(30, 0), (20, 0)]);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), l, "n{at}: leave hung at level 20 barrier 0");
    }
    assert_eq!(h.state_of(1, 3), NodeState::Leaving);
    h.crash(3);
    h.silent(3);
    h.run_ms(300);
    for at in [1, 2] {
        assert_eq!(h.notes(at), cat(&[l.clone(), walk(Kind::ForcedLeave, 3, 1, 30)]), "n{at}");
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
        assert!(h.no_transitions(at));
    }
}

/// Forced-Leaving re-notifies over a Leaving node that is held up by a
/// *survivor's* subsystem: the leave has not passed level 30 when node 3
/// fails. Node 2's late ack of the leave is ignored.
#[test]
fn forced_leave_over_leaving_ignores_late_leave_acks() {
    let mut h = three(true);
    h.mark();
    h.hold(|n, note| n == 2 && note.kind == Kind::Leave && note.level == 30);
    h.input(3, Input::Leave);
    h.run_ms(200);
    let l = steps(Kind::Leave, 3, 1, &[(30, 0)]);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), l, "n{at}");
    }
    h.crash(3);
    h.silent(3);
    h.hold(|n, note| n == 2 && note.kind == Kind::ForcedLeave && note.level == 10);
    h.run_ms(100);
    let f = steps(Kind::ForcedLeave, 3, 1, &[(10, 0)]);
    for at in [1, 2] {
        assert_eq!(h.notes(at), cat(&[l.clone(), f.clone()]), "n{at}");
    }
    h.release_all();
    h.run_ms(200);
    for at in [1, 2] {
        assert_eq!(h.notes(at), cat(&[l.clone(), walk(Kind::ForcedLeave, 3, 1, 30)]), "n{at}");
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
        assert!(h.no_transitions(at));
    }
}

// ---------------------------------------------------------------------------
// S1.6: a leave asked for while joining waits for a level boundary
// ---------------------------------------------------------------------------

/// Node 3 asks to leave while level 10 barrier 0 of its join is not yet
/// acked everywhere. Level 10 completes (both barriers), then the join is
/// reversed: no level-20 join notification, a leave top-down from level 10
/// instead. Node 3 ends Inactive and gets `Left`.
#[test]
fn leave_while_joining_reverses_at_the_level_boundary() {
    let mut h = three(false);
    h.mark();
    h.hold(|n, note| n == 2 && note.node == 3 && note.kind == Kind::Join && note.level == 10 && note.barrier == 0);
    h.start(3);
    h.run_ms(200);
    let j0 = steps(Kind::Join, 3, 1, &[(10, 0)]);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), j0, "n{at}");
    }
    h.input(3, Input::Leave);
    h.run_ms(100);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), j0, "n{at}: nothing moves before barrier 0 is acked");
    }
    assert_eq!(h.state_of(1, 3), NodeState::Joining, "joining is not converted mid-level");
    h.release_all();
    h.run_ms(300);
    let want = cat(&[steps(Kind::Join, 3, 1, &[(10, 0), (10, 1)]), walk(Kind::Leave, 3, 1, 10)]);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), want, "n{at}");
    }
    for at in [1, 2] {
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
        assert!(h.no_transitions(at));
    }
    assert_eq!(h.count(3, |a| matches!(a, Action::Left)), 1);
    h.check_nothing_after_end();
}

/// Same, asked while level 20 of the join is in flight: the join completes
/// level 20, then the leave runs top-down from 20 (with its 2 leave
/// barriers) down to 10; level 30 never hears of node 3.
#[test]
fn leave_while_joining_at_level_20_leaves_from_20_down() {
    let mut h = three(false);
    h.mark();
    h.hold(|n, note| n == 1 && note.node == 3 && note.kind == Kind::Join && note.level == 20);
    h.start(3);
    h.run_ms(200);
    let j = steps(Kind::Join, 3, 1, &[(10, 0), (10, 1), (20, 0)]);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), j, "n{at}");
    }
    h.input(3, Input::Leave);
    h.run_ms(50);
    h.release_all();
    h.run_ms(300);
    let want = cat(&[j.clone(), walk(Kind::Leave, 3, 1, 20)]);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), want, "n{at}");
    }
    assert_eq!(h.state_of(1, 3), NodeState::Inactive);
    assert!(h.nodes[&3].core.has_left());
}

// ---------------------------------------------------------------------------
// S1.5: barriers across nodes
// ---------------------------------------------------------------------------

/// Three nodes at level 10 with two join barriers: node 2 holds back its
/// ack of barrier 0 of node 3's join; no node gets barrier 1 until it acks.
#[test]
fn barrier_k_plus_1_waits_for_barrier_k_on_every_node() {
    let mut h = three(false);
    h.mark();
    h.hold(|n, note| n == 2 && note.node == 3 && note.level == 10 && note.barrier == 0);
    h.start(3);
    h.run_ms(300);
    let b0 = steps(Kind::Join, 3, 1, &[(10, 0)]);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), b0, "n{at}: barrier 1 before node 2 acked barrier 0");
    }
    h.release_all();
    h.run_ms(200);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), walk(Kind::Join, 3, 1, 30), "n{at}");
    }

    // The same for a graceful leave (level 20 has two leave barriers) and
    // a forced leave (level 30 has two).
    h.mark();
    h.hold(|n, note| n == 1 && note.kind == Kind::Leave && note.level == 20 && note.barrier == 0);
    h.input(3, Input::Leave);
    h.run_ms(200);
    let l = steps(Kind::Leave, 3, 1, &[(30, 0), (20, 0)]);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), l, "n{at}");
    }
    h.release_all();
    h.run_ms(200);
    for at in [1, 2] {
        assert_eq!(h.notes(at), walk(Kind::Leave, 3, 1, 30), "n{at}");
    }
    assert!(h.nodes[&3].core.has_left());
}

/// Forced-leave barriers: level 30 has two; node 1 holds barrier 0.
#[test]
fn forced_leave_barriers_wait_for_every_survivor() {
    let mut h = three(true);
    h.mark();
    h.hold(|n, note| n == 1 && note.kind == Kind::ForcedLeave && note.level == 30 && note.barrier == 0);
    h.crash(3);
    h.silent(3);
    h.run_ms(200);
    let f = steps(Kind::ForcedLeave, 3, 1, &[(10, 0), (20, 0), (30, 0)]);
    for at in [1, 2] {
        assert_eq!(h.notes(at), f, "n{at}");
    }
    h.release_all();
    h.run_ms(200);
    for at in [1, 2] {
        assert_eq!(h.notes(at), walk(Kind::ForcedLeave, 3, 1, 30), "n{at}");
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
    }
}

// ---------------------------------------------------------------------------
// S1.4: concurrent transitions
// ---------------------------------------------------------------------------

fn only(notes: &[Note], kind: Kind, node: NodeId) -> Vec<Note> {
    notes.iter().copied().filter(|n| n.kind == kind && n.node == node).collect()
}

/// Nodes 1 and 2 join at once (the cluster forms with both). Node 2's join
/// hangs at level 20 (node 2's subsystem): node 1's join goes on to level
/// 30 and completes while node 2's stays at 20. Each transition is
/// notified in order on each node.
#[test]
fn concurrent_joins_progress_independently() {
    let mut h = Harness::new(3);
    h.hold(|n, note| n == 2 && note.node == 2 && note.kind == Kind::Join && note.level == 20);
    h.start(1);
    h.start(2);
    h.run_ms(200);
    for at in [1, 2] {
        let notes = h.notes(at);
        assert_eq!(only(&notes, Kind::Join, 1), walk(Kind::Join, 1, 1, 30), "n{at}: join of 1");
        assert_eq!(
            only(&notes, Kind::Join, 2),
            steps(Kind::Join, 2, 1, &[(10, 0), (10, 1), (20, 0)]),
            "n{at}: join of 2"
        );
        assert_eq!(notes.len(), 7);
        assert_eq!(h.state_of(at, 1), NodeState::Joined);
        assert_eq!(h.state_of(at, 2), NodeState::Joining);
    }
    h.release_all();
    h.run_ms(200);
    for at in [1, 2] {
        let notes = h.notes(at);
        assert_eq!(only(&notes, Kind::Join, 1), walk(Kind::Join, 1, 1, 30), "n{at}");
        assert_eq!(only(&notes, Kind::Join, 2), walk(Kind::Join, 2, 1, 30), "n{at}");
        // Node 2's level 30 comes last, after node 1's whole join.
        assert_eq!(notes.last().copied(), walk(Kind::Join, 2, 1, 30).last().copied());
        assert_eq!(notes.len(), 8);
    }
    assert!(all_joined(&h, &[1, 2]));
}

/// Four nodes: 1, 2, 3 joined; node 3 leaves (top-down) while node 4 joins
/// (bottom-up). The two transitions run at once in opposite directions,
/// each in order. Node 4's join waits at level 10 (node 4 holds it) while
/// the leave goes all the way down.
#[test]
fn leave_and_join_run_concurrently_in_opposite_directions() {
    let mut h = Harness::new(4);
    h.start(1);
    h.start(2);
    h.start(3);
    h.run_ms(200);
    assert!(all_joined(&h, &[1, 2, 3]));
    h.mark();
    // The leave hangs at level 20 (node 3) until node 4's join started.
    h.hold(|n, note| n == 3 && note.kind == Kind::Leave && note.level == 20);
    h.input(3, Input::Leave);
    h.run_ms(100);
    h.hold(|n, note| n == 4 && note.kind == Kind::Join && note.level == 10 && note.barrier == 1);
    h.start(4);
    h.run_ms(100);
    for at in [1, 2, 3] {
        let notes = h.notes(at);
        assert_eq!(only(&notes, Kind::Leave, 3), steps(Kind::Leave, 3, 1, &[(30, 0), (20, 0)]), "n{at}");
        assert_eq!(only(&notes, Kind::Join, 4), steps(Kind::Join, 4, 1, &[(10, 0), (10, 1)]), "n{at}");
    }
    assert_eq!(h.notes(4), steps(Kind::Join, 4, 1, &[(10, 0), (10, 1)]), "n4 is no participant of the leave");
    // Let the leave go on; node 4's join still waits at level 10.
    h.holds.clear();
    h.hold(|n, note| n == 4 && note.kind == Kind::Join && note.level == 10 && note.barrier == 1);
    let held = std::mem::take(&mut h.held);
    for (node, inc, note) in held {
        if note.kind == Kind::Leave {
            h.queue.push_back(Ev::Ack { node, inc, note });
        } else {
            h.held.push((node, inc, note));
        }
    }
    h.run_ms(200);
    for at in [1, 2] {
        let notes = h.notes(at);
        assert_eq!(only(&notes, Kind::Leave, 3), walk(Kind::Leave, 3, 1, 30), "n{at}");
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
        assert_eq!(h.state_of(at, 4), NodeState::Joining);
    }
    assert!(h.nodes[&3].core.has_left());
    // Node 4's join completes without the node that left.
    h.release_all();
    h.run_ms(200);
    for at in [1, 2, 4] {
        assert_eq!(only(&h.notes(at), Kind::Join, 4), walk(Kind::Join, 4, 1, 30), "n{at}");
        assert_eq!(h.state_of(at, 4), NodeState::Joined, "n{at}");
    }
    h.check_nothing_after_end();
}

// ---------------------------------------------------------------------------
// S0: node shutdown on failure (distress)
// ---------------------------------------------------------------------------

/// A local member reports a critical failure: the node sends the distress
/// signal, terminates every other local subsystem, halts, and does nothing
/// more. A second failure is disregarded (S0.4).
#[test]
fn local_failure_sends_distress_terminates_others_and_halts() {
    let mut h = three(true);
    h.mark();
    let acts = h.input_actions(2, Input::LocalFailure { from: Some(2), reason: 7 });
    assert_eq!(
        acts,
        vec![
            Action::SendDistress { reason: 7 },
            Action::Terminate { subsystem: 1, reason: 7 },
            Action::Terminate { subsystem: 3, reason: 7 },
            Action::Halt { why: HaltReason::LocalFailure { reason: 7 } },
        ]
    );
    assert!(h.nodes[&2].core.is_halted());
    assert_eq!(h.input_actions(2, Input::LocalFailure { from: None, reason: 8 }), vec![], "S0.4");
    assert_eq!(h.input_actions(2, Input::Tick), vec![]);
    assert_eq!(h.nodes[&2].core.next_deadline(), None);
    h.run_ms(100);
    h.check_nothing_after_end();

    // The cluster-control member starting the shutdown itself terminates all.
    let mut h = three(true);
    let acts = h.input_actions(3, Input::LocalFailure { from: None, reason: 9 });
    assert_eq!(
        acts,
        vec![
            Action::SendDistress { reason: 9 },
            Action::Terminate { subsystem: 1, reason: 9 },
            Action::Terminate { subsystem: 2, reason: 9 },
            Action::Terminate { subsystem: 3, reason: 9 },
            Action::Halt { why: HaltReason::LocalFailure { reason: 9 } },
        ]
    );
}

/// The other nodes process a distress signal once, however many copies
/// arrive (one per link), and force the node out right away (S0.3).
#[test]
fn peer_distress_is_processed_once_and_forces_the_node_out() {
    let mut h = three(true);
    h.mark();
    let acts = h.input_actions(3, Input::LocalFailure { from: None, reason: 5 });
    assert_eq!(acts.first(), Some(&Action::SendDistress { reason: 5 }));
    // The datapath delivers the distress on two links.
    for at in [1, 2] {
        let first = h.input_actions(at, Input::PeerDistress { node: 3, reason: 5 });
        assert_eq!(first.first(), Some(&Action::PeerFailed { node: 3, distress: true }), "n{at}");
        let second = h.input_actions(at, Input::PeerDistress { node: 3, reason: 5 });
        assert_eq!(second, vec![], "n{at}: second copy");
    }
    h.run_ms(300);
    // Detecting the silence later changes nothing.
    h.silent(3);
    h.run_ms(100);
    for at in [1, 2] {
        assert_eq!(h.count(at, |a| matches!(a, Action::PeerFailed { node: 3, distress: true })), 1, "n{at}");
        assert_eq!(h.count(at, |a| matches!(a, Action::PeerFailed { node: 3, distress: false })), 0, "n{at}");
        assert_eq!(h.notes(at), walk(Kind::ForcedLeave, 3, 1, 30), "n{at}");
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
    }
    assert_eq!(h.notes(3), vec![]);
    h.check_nothing_after_end();
}

// ---------------------------------------------------------------------------
// S1.7: forced out, and rejoining
// ---------------------------------------------------------------------------

/// Node 3's outgoing links die (the others see it silent) but it still
/// hears the master. When the state where it is forced out reaches it, it
/// halts at once, notifies nothing and does nothing more.
#[test]
fn node_that_learns_it_was_forced_out_halts() {
    let mut h = three(true);
    h.mark();
    h.cut.insert((3, 1));
    h.cut.insert((3, 2));
    h.silent(3);
    h.run_ms(300);
    let halts: Vec<Action> =
        h.nodes[&3].actions.iter().map(|(_, a)| a.clone()).filter(|a| matches!(a, Action::Halt { .. })).collect();
    assert_eq!(halts, vec![Action::Halt { why: HaltReason::ForcedOut }]);
    assert!(h.nodes[&3].core.is_halted());
    let (_, last) = h.nodes[&3].actions.last().unwrap();
    assert_eq!(last, &Action::Halt { why: HaltReason::ForcedOut });
    assert_eq!(h.notes(3), vec![], "a forced-out node notifies nothing");
    for at in [1, 2] {
        assert_eq!(h.notes(at), walk(Kind::ForcedLeave, 3, 1, 30), "n{at}");
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
    }
    // Still more states arrive: nothing.
    h.run_ms(100);
    h.check_nothing_after_end();
}

/// Node 3 crashes; node 2's recovery at level 20 hangs. Node 3 restarts
/// (new incarnation) meanwhile: it is not admitted until every survivor
/// completed its forced leave; then it joins normally.
#[test]
fn restarted_node_waits_until_its_forced_leave_completed() {
    let mut h = three(true);
    h.mark();
    h.hold(|n, note| n == 2 && note.kind == Kind::ForcedLeave && note.level == 20);
    h.crash(3);
    h.silent(3);
    h.run_ms(100);
    let f = steps(Kind::ForcedLeave, 3, 1, &[(10, 0), (20, 0)]);
    for at in [1, 2] {
        assert_eq!(h.notes(at), f, "n{at}");
    }
    h.restart(3, 2);
    h.run_ms(300);
    for at in [1, 2] {
        assert_eq!(h.notes(at), f, "n{at}: joined while its forced leave runs");
        assert_eq!(h.state_of(at, 3), NodeState::ForcedLeaving);
    }
    assert_eq!(h.notes(3), vec![]);
    assert!(!h.nodes[&3].core.is_halted());
    h.release_all();
    h.run_ms(300);
    for at in [1, 2] {
        assert_eq!(h.notes(at), cat(&[walk(Kind::ForcedLeave, 3, 1, 30), walk(Kind::Join, 3, 2, 30)]), "n{at}");
    }
    assert_eq!(h.notes(3), walk(Kind::Join, 3, 2, 30));
    assert!(all_joined(&h, &[1, 2, 3]));
    h.check_nothing_after_end();
}

/// The seed's case: a leaving node dies and reboots before the others
/// noticed (no silence is ever reported). Its new life's report tells the
/// master; the others force the old life out, aborting the graceful leave,
/// and only then admit the new life.
#[test]
fn node_rebooted_while_leaving_is_forced_out_then_rejoins() {
    let mut h = three(true);
    h.mark();
    h.hold(|n, note| n == 3 && note.kind == Kind::Leave && note.level == 20);
    h.input(3, Input::Leave);
    h.run_ms(100);
    let l = steps(Kind::Leave, 3, 1, &[(30, 0), (20, 0)]);
    for at in [1, 2] {
        assert_eq!(h.notes(at), l, "n{at}");
    }
    h.holds.clear();
    h.held.clear();
    h.restart(3, 2);
    h.run_ms(400);
    for at in [1, 2] {
        assert_eq!(
            h.notes(at),
            cat(&[l.clone(), walk(Kind::ForcedLeave, 3, 1, 30), walk(Kind::Join, 3, 2, 30)]),
            "n{at}"
        );
    }
    assert!(!h.nodes[&3].core.is_halted(), "new life halted: {:?}", h.nodes[&3].actions.last());
    assert_eq!(h.notes(3), walk(Kind::Join, 3, 2, 30));
    assert!(all_joined(&h, &[1, 2, 3]));
    h.check_nothing_after_end();
}

/// A joined node reboots faster than failure detection: same as above from
/// Joined. The new life must not mistake the old life's membership for its
/// own and halt.
#[test]
fn node_rebooted_while_joined_is_forced_out_then_rejoins() {
    let mut h = three(true);
    h.mark();
    h.restart(3, 2);
    h.run_ms(400);
    for at in [1, 2] {
        assert_eq!(h.notes(at), cat(&[walk(Kind::ForcedLeave, 3, 1, 30), walk(Kind::Join, 3, 2, 30)]), "n{at}");
    }
    assert!(!h.nodes[&3].core.is_halted(), "new life halted: {:?}", h.nodes[&3].actions.last());
    assert_eq!(h.notes(3), walk(Kind::Join, 3, 2, 30));
    assert!(all_joined(&h, &[1, 2, 3]));
    h.check_nothing_after_end();
}

/// Nodes 1 and 2 start; node 2's reports are lost at first, so node 1 forms
/// and starts its own join alone; node 2's join is a later change. Node 1's
/// join hangs at level 20 (node 1's subsystem) while node 2's join runs
/// through every level and completes: two joins in flight at once, at
/// different levels, each notified in order.
#[test]
fn joins_in_flight_at_once_progress_independently() {
    // Two configured nodes: node 1 may admit itself alone (in a cluster of
    // three it waits for a second member: `ClusterState::quorate`).
    let mut h = Harness::new(2);
    h.hold(|n, note| n == 1 && note.node == 1 && note.kind == Kind::Join && note.level == 20);
    h.cut.insert((2, 1));
    h.start(1);
    h.start(2);
    h.run_ms(100);
    let j1 = steps(Kind::Join, 1, 1, &[(10, 0), (10, 1), (20, 0)]);
    assert_eq!(h.notes(1), j1);
    assert_eq!(h.state_of(1, 1), NodeState::Joining);
    h.cut.clear();
    h.run_ms(200);
    assert_eq!(h.notes(1), cat(&[j1.clone(), walk(Kind::Join, 2, 1, 30)]));
    assert_eq!(h.notes(2), walk(Kind::Join, 2, 1, 30));
    for at in [1, 2] {
        assert_eq!(h.state_of(at, 1), NodeState::Joining, "n{at}");
        assert_eq!(h.state_of(at, 2), NodeState::Joined, "n{at}");
    }
    h.release_all();
    h.run_ms(100);
    assert_eq!(h.notes(1), cat(&[j1, walk(Kind::Join, 2, 1, 30), steps(Kind::Join, 1, 1, &[(30, 0)])]));
    assert_eq!(h.notes(2), walk(Kind::Join, 2, 1, 30), "node 2 was no member when node 1's join began");
    assert!(all_joined(&h, &[1, 2]));
}

/// A join (bottom-up) runs while another node's graceful leave (top-down)
/// is held at level 20: the join passes the leave's level in the opposite
/// direction and completes; then the leave goes on from where it stood.
#[test]
fn join_runs_while_another_nodes_leave_is_in_flight() {
    let mut h = three(false);
    h.mark();
    h.hold(|n, note| n == 2 && note.kind == Kind::Leave && note.level == 20);
    h.input(2, Input::Leave);
    h.run_ms(100);
    let l = steps(Kind::Leave, 2, 1, &[(30, 0), (20, 0)]);
    assert_eq!(h.notes(1), l);
    h.start(3);
    h.run_ms(200);
    let j3 = walk(Kind::Join, 3, 1, 30);
    for at in [1, 2] {
        assert_eq!(h.notes(at), cat(&[l.clone(), j3.clone()]), "n{at}");
        assert_eq!(h.state_of(at, 2), NodeState::Leaving);
        assert_eq!(h.state_of(at, 3), NodeState::Joined);
    }
    assert_eq!(h.notes(3), j3);
    h.release_all();
    h.run_ms(200);
    let rest = steps(Kind::Leave, 2, 1, &[(20, 1), (10, 0)]);
    for at in [1, 2] {
        assert_eq!(h.notes(at), cat(&[l.clone(), j3.clone(), rest.clone()]), "n{at}");
    }
    assert_eq!(h.notes(3), j3, "node 3 was no member when node 2's leave began");
    assert!(h.nodes[&2].core.has_left());
    for at in [1, 3] {
        assert_eq!(h.state_of(at, 2), NodeState::Inactive);
        assert!(h.no_transitions(at));
    }
    h.check_nothing_after_end();
}

/// Four nodes: node 4's join hangs at level 20 (node 4). Node 3 crashes, is
/// forced out, and restarts (new life, PeerUp) while node 4's join is still
/// in flight. The new life is not a member of the cluster that began node
/// 4's join: it is not notified of that join mid-way (from level 20 on),
/// and gets only its own join.
#[test]
fn restarted_node_is_not_notified_of_transitions_begun_before_it_joined() {
    let mut h = Harness::new(4);
    h.start(1);
    h.start(2);
    h.start(3);
    h.run_ms(200);
    assert!(all_joined(&h, &[1, 2, 3]));
    h.mark();
    h.hold(|n, note| n == 4 && note.node == 4 && note.kind == Kind::Join && note.level == 20);
    h.start(4);
    h.run_ms(100);
    let j4 = steps(Kind::Join, 4, 1, &[(10, 0), (10, 1), (20, 0)]);
    for at in [1, 2, 3, 4] {
        assert_eq!(h.notes(at), j4, "n{at}");
    }
    h.crash(3);
    h.silent(3);
    h.run_ms(100);
    for at in [1, 2, 4] {
        assert_eq!(h.notes(at), cat(&[j4.clone(), walk(Kind::ForcedLeave, 3, 1, 30)]), "n{at}");
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
    }
    h.restart(3, 2);
    h.run_ms(200);
    assert_eq!(only(&h.notes(3), Kind::Join, 4), vec![], "new life of n3 notified of n4's join mid-way");
    h.release_all();
    h.run_ms(200);
    assert_eq!(h.notes(3), walk(Kind::Join, 3, 2, 30));
    for at in [1, 2, 4] {
        assert_eq!(only(&h.notes(at), Kind::Join, 4), walk(Kind::Join, 4, 1, 30), "n{at}");
        assert_eq!(only(&h.notes(at), Kind::Join, 3), walk(Kind::Join, 3, 2, 30), "n{at}");
    }
    assert!(all_joined(&h, &[1, 2, 3, 4]));
}

/// Fast reboot, and the master has not heard of the new life yet (its
/// reports are lost for a while): the new life follows the master's state,
/// where its *old* life is Joined. That membership is not its own: it must
/// neither count itself Joined nor halt as "forced out" when a newer state
/// (node 1 registers one more subsystem) arrives; once its reports get
/// through, the old life is forced out and the new one joins.
#[test]
fn rebooted_node_does_not_take_its_old_lifes_membership_for_its_own() {
    let mut h = three(true);
    h.mark();
    h.cut.insert((3, 1));
    h.restart(3, 2);
    // The cluster was quiet: the master sends the state to node 3 once the
    // old life's last report is older than two idle periods (2 × form_ns),
    // then at the fast period.
    h.run_ms(150);
    assert!(h.nodes[&3].core.state().is_some(), "the new life follows the master's state");
    h.input(1, Input::Register { subsystem: 9, spec: LevelSpec { level: 40, barriers: Barriers::ONE } });
    h.run_ms(50);
    assert!(!h.nodes[&3].core.is_halted(), "new life halted: {:?}", h.nodes[&3].actions.last());
    assert_ne!(h.nodes[&3].core.my_state(), NodeState::Joined, "the old life's membership is not the new one's");
    h.cut.clear();
    h.run_ms(400);
    assert!(!h.nodes[&3].core.is_halted());
    assert_eq!(h.notes(2), cat(&[walk(Kind::ForcedLeave, 3, 1, 30), walk(Kind::Join, 3, 2, 30)]));
    assert_eq!(h.notes(3), walk(Kind::Join, 3, 2, 30));
    assert!(all_joined(&h, &[1, 2, 3]));
}

/// Node 3 asked to leave while joining; its join reversed after level 10
/// into a leave of level 10 only (levels 20 and 30 never heard of it). Node
/// 3 fails during that leave (held by node 2's subsystem): the forced leave
/// that replaces it goes only as high as the join got, level 10.
#[test]
fn forced_leave_over_reversed_join_goes_only_as_high_as_the_join() {
    let mut h = three(false);
    h.mark();
    h.hold(|n, note| n == 2 && note.node == 3 && note.kind == Kind::Join && note.level == 10 && note.barrier == 0);
    h.start(3);
    h.run_ms(100);
    h.input(3, Input::Leave);
    h.run_ms(50);
    h.release_all();
    h.hold(|n, note| n == 2 && note.node == 3 && note.kind == Kind::Leave);
    h.run_ms(100);
    let before = cat(&[steps(Kind::Join, 3, 1, &[(10, 0), (10, 1)]), steps(Kind::Leave, 3, 1, &[(10, 0)])]);
    for at in [1, 2, 3] {
        assert_eq!(h.notes(at), before, "n{at}");
    }
    assert_eq!(h.state_of(1, 3), NodeState::Leaving);
    h.crash(3);
    h.silent(3);
    h.release_all();
    h.run_ms(300);
    for at in [1, 2] {
        assert_eq!(h.notes(at), cat(&[before.clone(), walk(Kind::ForcedLeave, 3, 1, 10)]), "n{at}");
        assert_eq!(h.state_of(at, 3), NodeState::Inactive);
        assert!(h.no_transitions(at));
    }
}

/// A node that sees a majority's heartbeats but none of their messages (its
/// control channel slower than the formation wait) forms a cluster apart,
/// but admits nobody, itself included, until a majority of the configured
/// nodes can be admitted at once: alone it would act on shared resources
/// next to the cluster the others may run (`ClusterState::quorate`).
#[test]
fn a_cluster_formed_apart_admits_nobody_until_a_majority_can_join_at_once() {
    let mut h = Harness::new(3);
    h.cut.insert((2, 1));
    h.cut.insert((3, 1));
    for n in [1, 2, 3] {
        h.start(n);
    }
    h.run_ms(300);
    assert_eq!(h.master(1), 1, "node 1 formed (a majority's heartbeats in sight)");
    assert!(!h.nodes[&1].core.state().unwrap().quorate);
    for n in [1, 2, 3] {
        assert_eq!(h.state_of(1, n), NodeState::Inactive, "node 1 admitted n{n} without a majority");
        assert!(h.notes(n).is_empty(), "n{n} was notified: {:?}", h.notes(n));
    }
    h.cut.clear();
    h.run_ms(300);
    assert!(all_joined(&h, &[1, 2, 3]), "all three join");
    assert!(h.nodes[&1].core.state().unwrap().quorate);
    h.check_nothing_after_end();
}

/// Nodes 2 and 3 run a (quorate) cluster; node 1 starts and forms apart
/// because their messages do not reach it. When they do, node 1's cluster,
/// which never had a majority, yields: node 1 joins theirs, whatever the
/// terms, and nobody halts (a quorate cluster never yields to it).
#[test]
fn a_cluster_formed_apart_yields_to_the_quorate_one_and_nobody_halts() {
    let mut h = Harness::new(3);
    h.start(2);
    h.start(3);
    h.run_ms(300);
    assert!(all_joined(&h, &[2, 3]), "2 and 3 run the cluster");
    h.cut.insert((2, 1));
    h.cut.insert((3, 1));
    h.start(1);
    h.run_ms(300);
    assert_eq!(h.master(1), 1, "node 1 formed apart");
    assert_eq!(h.state_of(1, 1), NodeState::Inactive);
    h.cut.clear();
    h.run_ms(500);
    assert!(all_joined(&h, &[1, 2, 3]), "node 1 joined the quorate cluster");
    assert_eq!(h.master(1), 2);
    for n in [1, 2, 3] {
        assert_eq!(h.count(n, |a| matches!(a, Action::Halt { .. })), 0, "n{n} halted");
    }
    h.check_nothing_after_end();
}

/// The master dies and the successor (node 2) gets no report from node 3
/// for a while (a loaded machine), although its datapath says node 3 is
/// alive: node 2 keeps waiting for a majority's states instead of halting
/// (`ClusterLost`), and takes over once they come.
#[test]
fn a_successor_waits_for_late_reports_of_live_members_instead_of_halting() {
    let mut h = three(true);
    h.cut.insert((3, 2));
    h.crash(1);
    h.silent(1);
    h.run_ms(150);
    let halts: Vec<String> = h.nodes[&2].actions.iter().filter(|(_, a)| matches!(a, Action::Halt { .. })).map(|(_, a)| format!("{a:?}")).collect();
    assert!(halts.is_empty(), "node 2 halted while node 3's reports were late: {halts:?}");
    h.cut.clear();
    h.run_ms(300);
    let halts: Vec<String> = [2, 3].iter().flat_map(|n| h.nodes[n].actions.iter().filter(|(_, a)| matches!(a, Action::Halt { .. })).map(move |(_, a)| format!("n{n}: {a:?}"))).collect();
    assert!(halts.is_empty(), "halts: {halts:?}");
    assert_eq!(h.master(2), 2);
    assert_eq!(h.master(3), 2);
    assert!(all_joined(&h, &[2, 3]), "2 and 3 go on");
    assert_eq!(h.state_of(2, 1), NodeState::Inactive, "node 1 forced out");
    for n in [2, 3] {
        assert_eq!(h.count(n, |a| matches!(a, Action::Halt { .. })), 0, "n{n} halted");
    }
    h.check_nothing_after_end();
}

/// Chaos seed 2026 (issue 13/11): the master (1) loses half its packets.
/// Nodes 2 and 4's datapaths see it silent, 3 and 5's still hear it, but
/// nothing of its control messages gets through. The successor (2) gets no
/// report from 3 and 5 until their master-silence bound (4 × form_ns since
/// their last contact) says node 1 is dead; it used to halt (`ClusterLost`)
/// at that same bound counted from its own, earlier, start, a moment before
/// they came. It waits long enough for them and takes over.
#[test]
fn a_successor_outwaits_the_followers_master_silence_bound() {
    let mut h = Harness::new(5);
    for n in 1..=5 {
        h.start(n);
    }
    h.run_ms(400);
    assert!(all_joined(&h, &[1, 2, 3, 4, 5]), "setup: all joined");
    assert_eq!(h.master(3), 1);
    for o in 2..=5 {
        h.cut.insert((1, o));
        h.cut.insert((o, 1));
    }
    for o in [2, 4] {
        h.input(o, Input::PeerSilent { node: 1 });
        h.input(1, Input::PeerSilent { node: o });
    }
    h.run_ms(1000);
    let halts: Vec<String> = [2, 3, 4, 5].iter().flat_map(|n| h.nodes[n].actions.iter().filter(|(_, a)| matches!(a, Action::Halt { .. })).map(move |(_, a)| format!("n{n}: {a:?}"))).collect();
    assert!(halts.is_empty(), "halts: {halts:?}");
    for n in [2, 3, 4, 5] {
        assert_eq!(h.master(n), 2, "node {n} follows the successor");
    }
    assert!(all_joined(&h, &[2, 3, 4, 5]), "2, 3, 4 and 5 go on");
}

/// When the master dies, its successor asks the survivors for their states
/// (`Msg::Gather`) and they report at once (a report the successor got
/// before its own recovery began does not count): it takes over within the
/// same instant here, not at the survivors' next resend period (up to 10
/// ms in this harness, 50 ms in the agent: a third of a crash's outage).
#[test]
fn a_successor_gathers_the_survivors_states_at_once() {
    let mut h = three(true);
    h.run_ms(3);
    h.crash(1);
    h.silent(1);
    h.run_ms(1);
    assert_eq!(h.master(2), 2, "node 2 took over at once");
    assert_eq!(h.master(3), 2);
    h.run_ms(200);
    assert!(all_joined(&h, &[2, 3]));
    assert_eq!(h.state_of(3, 1), NodeState::Inactive);
    h.check_nothing_after_end();
}

// ---------------------------------------------------------------------------
// A stop is a stop: every node leaving at once, and `baton stop --all`
// ---------------------------------------------------------------------------

/// Every node asks to leave at the same moment (SIGTERM to every agent):
/// every leave finishes, nobody halts and nobody counts a leaver as failed,
/// and the master leaves last (it stays master while the others' leaves run:
/// there is no joined member left to succeed it).
#[test]
fn every_node_leaving_at_once_all_leave_and_the_master_leaves_last() {
    let mut h = three(true);
    h.mark();
    for n in [1, 2, 3] {
        h.input(n, Input::Leave);
    }
    // The master's own leave is quick: hold the others' level 10 a while.
    h.hold(|_, note| note.kind == Kind::Leave && note.node != 1 && note.level == 10);
    h.run_ms(100);
    assert!(!h.nodes[&1].core.has_left(), "the master left while the others' leaves were in flight");
    assert_eq!(h.state_of(2, 1), NodeState::Inactive, "the master's own leave did not finish");
    h.release_all();
    h.run_ms(300);
    for n in [1, 2, 3] {
        assert!(h.nodes[&n].core.has_left(), "n{n} did not leave");
        assert_eq!(h.count(n, |a| matches!(a, Action::Halt { .. } | Action::PeerFailed { .. })), 0, "n{n}: {:?}", h.nodes[&n].actions);
    }
    let left_at = |n: NodeId| h.nodes[&n].actions.iter().find(|(_, a)| matches!(a, Action::Left)).map(|(t, _)| *t).unwrap();
    assert!(left_at(1) >= left_at(2) && left_at(1) >= left_at(3), "the master did not leave last");
    // Their silence afterwards changes nothing.
    for n in [1, 2, 3] {
        h.crash(n);
    }
    h.check_nothing_after_end();
}

/// The master leaves while another node is joined: that node succeeds it
/// as soon as the master's final state says it left, without waiting for
/// its silence, and the master's silence afterwards is `PeerGone`, not a
/// failure.
#[test]
fn a_master_that_left_is_succeeded_at_once_and_its_silence_is_no_failure() {
    let mut h = three(true);
    h.mark();
    h.input(1, Input::Leave);
    h.run_ms(100);
    assert!(h.nodes[&1].core.has_left());
    // No silence reported yet: 2 took over from the final state alone.
    assert_eq!(h.master(2), 2);
    assert_eq!(h.master(3), 2);
    h.crash(1);
    h.silent(1);
    h.run_ms(200);
    for n in [2, 3] {
        assert_eq!(h.count(n, |a| matches!(a, Action::PeerFailed { .. } | Action::Halt { .. })), 0, "n{n}: {:?}", h.nodes[&n].actions);
        assert_eq!(h.count(n, |a| matches!(a, Action::PeerGone { node: 1 })), 1, "n{n}");
        assert_eq!(h.nodes[&n].core.my_state(), NodeState::Joined);
    }
    assert!(!h.notes(2).iter().any(|n| n.kind == Kind::ForcedLeave), "a forced leave of the node that left");
    h.check_nothing_after_end();
}

/// `baton stop --all` on a follower: the master starts every node's leave in
/// one change (`stopping`), every node is told to stop (`StopRequested`),
/// all leave, the master last, nobody halts, and a node that starts
/// meanwhile is not admitted.
#[test]
fn stop_all_from_a_follower_makes_every_node_leave() {
    let mut h = three(true);
    h.mark();
    let acts = h.input_actions(3, Input::StopAll);
    assert!(acts.iter().any(|a| matches!(a, Action::StopRequested)), "{acts:?}");
    h.run_ms(300);
    for n in [1, 2, 3] {
        assert!(h.nodes[&n].core.has_left(), "n{n} did not leave");
        assert_eq!(h.count(n, |a| matches!(a, Action::StopRequested)), 1, "n{n}");
        assert_eq!(h.count(n, |a| matches!(a, Action::Halt { .. } | Action::PeerFailed { .. })), 0, "n{n}");
        // Every leave walked top-down on every node.
        for of in [1, 2, 3] {
            assert_eq!(only(&h.notes(n), Kind::Leave, of), walk(Kind::Leave, of, 1, 30), "n{n} about n{of}");
        }
    }
    let left_at = |n: NodeId| h.nodes[&n].actions.iter().find(|(_, a)| matches!(a, Action::Left)).map(|(t, _)| *t).unwrap();
    assert!(left_at(1) >= left_at(2) && left_at(1) >= left_at(3), "the master did not leave last");
    h.check_nothing_after_end();
}

/// While the cluster stops, a node that starts is not admitted.
#[test]
fn nobody_joins_a_cluster_that_is_stopping() {
    let mut h = three(false);
    h.mark();
    // Hold node 2's leave so the stop lasts.
    h.hold(|_, note| note.kind == Kind::Leave && note.node == 2 && note.level == 10);
    h.input(2, Input::StopAll);
    h.run_ms(50);
    h.start(3);
    h.run_ms(200);
    assert_eq!(h.state_of(1, 3), NodeState::Inactive, "node 3 was admitted into a stopping cluster");
    assert!(h.nodes[&1].core.state().unwrap().stopping);
    h.release_all();
    h.run_ms(300);
    assert!(h.nodes[&1].core.has_left() && h.nodes[&2].core.has_left());
    h.check_nothing_after_end();
}

/// Two nodes with a shared disk (`two_node_race`) lose sight of each other:
/// both keep quorum and each forces the other out (the fencing level then
/// decides the race: tests/fencing.rs). Without the disk, the higher id
/// halts for lost quorum and only the lower one forces it out.
#[test]
fn two_nodes_with_a_disk_both_keep_quorum_and_force_the_other_out() {
    for race in [false, true] {
        let mut h = Harness::new_with(2, race);
        h.start(1);
        h.start(2);
        h.run_ms(200);
        assert!(all_joined(&h, &[1, 2]), "setup: 1 and 2 did not join");
        h.mark();
        h.cut.insert((1, 2));
        h.cut.insert((2, 1));
        h.input(1, Input::PeerSilent { node: 2 });
        h.input(2, Input::PeerSilent { node: 1 });
        h.run_ms(300);
        let forced_out = |h: &Harness, at: NodeId, of: NodeId| h.notes(at).iter().any(|n| n.kind == Kind::ForcedLeave && n.node == of && n.level == 10);
        assert!(forced_out(&h, 1, 2), "race={race}: node 1 did not force node 2 out");
        let halted2 = h.count(2, |a| matches!(a, Action::Halt { why: HaltReason::LostQuorum }));
        if race {
            assert_eq!(halted2, 0, "with a disk node 2 keeps quorum");
            assert!(forced_out(&h, 2, 1), "node 2 did not force node 1 out");
        } else {
            assert_eq!(halted2, 1, "without a disk node 2 halts");
        }
    }
}

// ---------------------------------------------------------------------------
// Failing seeds of the 10,000-seed simulator sweep (docs/simulator.md)
// ---------------------------------------------------------------------------

/// Sim seed 8203: five configured nodes, of which 3, 4 and 5 run. Node 3
/// forms the cluster and all three join (a quorate state: 3 of 5), but no
/// join has completed when node 3 is cut off from 4 and 5. Node 3, still
/// Joining, is the master of a quorate state it no longer has a majority
/// of: it must halt for lost quorum as a joined member does, instead of
/// staying the master of a quorate state while the other side (with
/// nodes 1 and 2) forms a second quorate cluster of the same term.
#[test]
fn master_that_loses_its_majority_while_still_joining_halts() {
    let mut h = Harness::new(5);
    // Every join hangs at level 20: nobody is Joined yet.
    h.hold(|_, note| note.kind == Kind::Join && note.level == 20);
    h.start(3);
    h.start(4);
    h.start(5);
    h.run_ms(300);
    let st = h.nodes[&3].core.state().expect("node 3 formed no cluster").clone();
    assert_eq!(st.view.master, 3);
    assert!(st.quorate, "setup: the state of {{3, 4, 5}} is quorate");
    assert_eq!(st.group(), [3, 4, 5].into_iter().collect());
    assert_eq!(h.nodes[&3].core.my_state(), NodeState::Joining, "setup: node 3's join hangs");
    h.mark();
    for (a, b) in [(3, 4), (3, 5)] {
        h.cut.insert((a, b));
        h.cut.insert((b, a));
        h.input(a, Input::PeerSilent { node: b });
        h.input(b, Input::PeerSilent { node: a });
    }
    h.run_ms(100);
    let halts3 = h.count(3, |a| matches!(a, Action::Halt { why: HaltReason::LostQuorum }));
    assert_eq!(halts3, 1, "node 3 is still the master of a quorate state without a majority: {:?}", h.nodes[&3].core.debug_line());
    assert!(h.nodes[&3].core.is_halted());
    h.check_nothing_after_end();
}

/// Sim seed 693: the master leaves gracefully while the other nodes are
/// still joining (no joined successor, so it stays the master after its
/// leave completed, outside the group). One joiner then crashes. The
/// master must still run the group change that forces it out; the other
/// joiners' joins then complete. (Before, the master's S3 change had
/// members without the master itself, the S3 protocol ignored it, and
/// the cluster stalled for good with the change pending.)
/// Five configured nodes (the seed had four): with static quorum the
/// joiners left after the leave and the crash must still be a majority of
/// the configured nodes (2 of 4 are not, and halt for lost quorum once
/// joined, as corosync's votequorum would stop them), so a fifth joiner
/// keeps the survivors {2, 4, 5} at 3 of 5.
#[test]
fn master_that_left_still_forces_out_a_failed_joiner() {
    let mut h = Harness::new(5);
    // The joins of 2, 3, 4 and 5 hang at level 20; node 1's does not.
    h.hold(|_, note| note.kind == Kind::Join && note.level == 20 && note.node != 1);
    for n in 1..=5 {
        h.start(n);
    }
    h.run_ms(300);
    assert_eq!(h.nodes[&1].core.my_state(), NodeState::Joined, "setup: node 1 formed and joined");
    assert_eq!(h.state_of(1, 2), NodeState::Joining, "setup: node 2 is joining");
    assert_eq!(h.state_of(1, 3), NodeState::Joining, "setup: node 3 is joining");
    assert_eq!(h.state_of(1, 4), NodeState::Joining, "setup: node 4 is joining");
    assert_eq!(h.state_of(1, 5), NodeState::Joining, "setup: node 5 is joining");
    h.input(1, Input::Leave);
    h.run_ms(300);
    assert_eq!(h.state_of(1, 1), NodeState::Inactive, "setup: node 1's own leave completed");
    assert_eq!(h.master(1), 1, "setup: node 1 stays the master (no joined successor)");
    h.mark();
    h.crash(3);
    h.silent(3);
    h.run_ms(1000);
    assert_eq!(h.state_of(1, 3), NodeState::Inactive, "the failed joiner was never forced out: {}", h.nodes[&1].core.debug_line());
    assert_eq!(h.state_of(2, 3), NodeState::Inactive, "node 2 does not see node 3 out");
    h.release_all();
    h.run_ms(1000);
    let st = h.nodes[&2].core.state().expect("node 2 follows no state").clone();
    assert_eq!(st.state_of(2), NodeState::Joined, "node 2's join did not complete: {}", h.nodes[&2].core.debug_line());
    assert_eq!(st.state_of(4), NodeState::Joined, "node 4's join did not complete");
    assert_eq!(st.state_of(5), NodeState::Joined, "node 5's join did not complete");
    assert!(st.transitions.is_empty(), "transitions still in flight: {:?}", st.transitions.keys().collect::<Vec<_>>());
    h.check_nothing_after_end();
}

/// Sim seed 9916: the successor of a failed master is paused (a stopped
/// process) when the master fails. The survivors send it their states, then
/// see it silent, and the next member succeeds instead, in term 2, and
/// forces the paused one out. When the paused node resumes, it handles its
/// queue in order: the master's silence (so it is the successor), then the
/// survivors' old reports. Those were sent before its recovery began; they
/// must not count as answers to it, or it takes over term 2 as well (two
/// masters of one term: its state, with a lower master id, superseded the
/// real successor's at every survivor, re-ran the forced leave of the old
/// master from its first step and put back the node forced out). It must
/// halt as forced out when it reads the real successor's state.
#[test]
fn a_successor_paused_with_old_reports_in_its_queue_does_not_take_over() {
    let mut h = five_joined();
    assert_eq!(h.master(3), 1, "setup: node 1 is the master");
    h.mark();
    h.pause(2);
    h.crash(1);
    h.silent(1);
    h.pump();
    // The survivors reported to node 2 (the successor); it is paused.
    h.silent(2);
    h.run_ms(300);
    assert_eq!(h.master(3), 3, "setup: node 3 succeeded: {}", h.nodes[&3].core.debug_line());
    assert_eq!(h.state_of(3, 2), NodeState::Inactive, "setup: node 2 was forced out");
    let term = h.nodes[&3].core.state().unwrap().view.term;
    h.resume(2);
    h.run_ms(300);
    let took_over = h.nodes[&2]
        .actions
        .iter()
        .filter(|(_, a)| matches!(a, Action::StateChanged { view } if view.master == 2))
        .count();
    assert_eq!(took_over, 0, "the paused node took over: {}", h.nodes[&2].core.debug_line());
    assert_eq!(h.count(2, |a| matches!(a, Action::Halt { why: HaltReason::ForcedOut })), 1, "{:?}", h.nodes[&2].actions);
    for n in [3, 4, 5] {
        let st = h.nodes[&n].core.state().unwrap();
        assert_eq!((st.view.master, st.view.term), (3, term), "node {n} follows another master: {}", h.nodes[&n].core.debug_line());
        assert_eq!(h.count(n, |a| matches!(a, Action::Halt { .. })), 0, "node {n} halted");
    }
    // Each forced leave is notified once per step, in order, on every survivor.
    forced_leaves_walked_once(&h, &[3, 4, 5], &[1, 2]);
    h.check_nothing_after_end();
}

/// One vote per term (issue 11; the gap left by sim seed 9916's fix): a
/// member answers at most one successor's `Gather` per new term. Node 1
/// (the master) crashes; node 2, the successor, sends its `Gather` and is
/// paused (a stopped process) before it reads the answers: 3, 4 and 5 all
/// answered it, with its current token. Then they see node 2 silent, and
/// node 3 gathers and takes over; 3, 4 and 5 answered two successors. When
/// node 2 resumes, those answers count (they echo its token), so it has the
/// states of a majority and takes over too. Without a vote per term both
/// took the same term (the highest each knew, plus one): two masters of one
/// term, and node 2's state (lower master id) superseded node 3's at every
/// survivor, re-ran the forced leave of node 1 from its first step and put
/// node 2, being forced out, back in. With the vote, node 3 (which voted
/// for node 2 in that term) takes the next term, node 2's term is already
/// behind it, and node 2 halts as forced out when it reads node 3's state.
#[test]
fn a_member_answers_one_successor_per_term() {
    let mut h = five_joined();
    assert_eq!(h.master(3), 1, "setup: node 1 is the master");
    h.mark();
    h.crash(1);
    // Node 2 sees the master fail first and sends its `Gather` (queued),
    // then stops before reading anything.
    h.input(2, Input::PeerSilent { node: 1 });
    let gathers = h.nodes[&2].actions.iter().filter(|(_, a)| matches!(a, Action::Send { msg: Msg::Gather { .. }, .. })).count();
    assert_eq!(gathers, 3, "setup: node 2 asked 3, 4 and 5 for their states");
    h.pause(2);
    h.silent(1);
    h.pump();
    // 3, 4 and 5 answered node 2 (in its queue); now they see it silent.
    h.silent(2);
    h.run_ms(300);
    assert_eq!(h.master(3), 3, "setup: node 3 succeeded: {}", h.nodes[&3].core.debug_line());
    assert_eq!(h.state_of(3, 2), NodeState::Inactive, "setup: node 2 was forced out");
    let view3 = h.nodes[&3].core.state().unwrap().view;
    h.resume(2);
    h.run_ms(300);
    // No term has two masters: every view a node produced as master.
    let mut masters: BTreeMap<u64, BTreeSet<NodeId>> = BTreeMap::new();
    for (id, n) in &h.nodes {
        for (_, a) in &n.actions {
            if let Action::StateChanged { view } = a {
                if view.master == *id {
                    masters.entry(view.term).or_default().insert(*id);
                }
            }
        }
    }
    for (term, m) in &masters {
        assert_eq!(m.len(), 1, "term {term} has two masters {m:?}: {:?}", h.nodes[&3].core.state().map(|s| s.view));
    }
    // The survivors never followed node 2 and go on with node 3's term.
    for n in [3, 4, 5] {
        let followed2 = h.nodes[&n].actions.iter().any(|(_, a)| matches!(a, Action::StateChanged { view } if view.master == 2));
        assert!(!followed2, "node {n} followed node 2 after it resumed: {}", h.nodes[&n].core.debug_line());
        let st = h.nodes[&n].core.state().unwrap();
        assert_eq!((st.view.master, st.view.term), (3, view3.term), "node {n}: {}", h.nodes[&n].core.debug_line());
        assert_eq!(h.count(n, |a| matches!(a, Action::Halt { .. })), 0, "node {n} halted");
    }
    assert_eq!(h.count(2, |a| matches!(a, Action::Halt { why: HaltReason::ForcedOut })), 1, "{:?}", h.nodes[&2].actions);
    forced_leaves_walked_once(&h, &[3, 4, 5], &[1, 2]);
    h.check_nothing_after_end();
}

/// Sim seed 926: a node forming anew must not admit nodes on reports they
/// sent long ago. Nodes 3 and 4 reported to node 1 (wanting to join, in no
/// cluster yet) and then stopped reporting to it (in the sim: they joined
/// the cluster beyond a partition, and report to its master only). When
/// node 1 forms later, with 3 and 4 in sight again, their old reports made
/// them joiners: its first change admitted {1, 2, 3, 4}, a majority of the
/// five, S3 committed it with 3 and 4 (members of the other cluster), and
/// node 1 became the master of a quorate state beside the running one.
#[test]
fn a_formation_admits_nobody_on_old_reports() {
    use baton_core::membership::{Report, Want};
    let mut h = Harness::new(5);
    // 3, 4 and 5 are not running here: what node 1 knows of 3 and 4 is
    // their old reports and their heartbeats.
    for n in [3, 4, 5] {
        h.crash(n);
    }
    for n in [3, 4] {
        let levels = LEVELS.iter().map(|(_, level, barriers)| LevelSpec { level: *level, barriers: *barriers }).collect();
        let r = Report {
            incarnation: 7,
            want: Want::Join,
            levels,
            done: BTreeSet::new(),
            seen: Default::default(),
            state: None,
            max_change: 0,
            stop_all: false,
            answers: 0,
            voted: 0,
        };
        h.input(1, Input::Receive { from: n, msg: Msg::Report(r) });
    }
    h.start(1);
    h.start(2);
    for n in [3, 4] {
        h.input(1, Input::PeerUp { node: n });
        h.input(2, Input::PeerUp { node: n });
    }
    h.run_ms(200);
    let st = h.nodes[&1].core.state().expect("node 1 formed").clone();
    assert_eq!(st.view.master, 1, "setup: node 1 formed");
    let asked: Vec<NodeId> = h.nodes[&1]
        .actions
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Send { to, msg: Msg::Gmp(_) } if *to == 3 || *to == 4 => Some(*to),
            _ => None,
        })
        .collect();
    assert!(asked.is_empty(), "node 1 ran a group change with 3 and 4 on their old reports: {asked:?}");
    assert!(!st.quorate && st.group().is_empty(), "node 1 admitted on old reports: {st:?}");
    h.check_nothing_after_end();
}

/// Sim seed 3837: node 1 formed a cluster of every node (its S3 change
/// committed, so its state is quorate) and was paused before its state went
/// out; the others took it for dead and formed another cluster. When node 1
/// resumed, its state (never followed by anyone, nobody Joined in it)
/// reached the running cluster, and because a lower master id won between
/// two quorate lineages, every member of the running cluster halted
/// `Superseded`. Now the cluster that got further (more Joined members)
/// wins: the running cluster ignores that state.
#[test]
fn a_quorate_cluster_ignores_a_paused_masters_state_that_nobody_followed() {
    use baton_core::membership::{ClusterState, NodeEntry, ViewId};
    let mut h = Harness::new(5);
    for n in [1, 5] {
        h.crash(n);
    }
    for n in [2, 3, 4] {
        h.start(n);
    }
    h.run_ms(300);
    assert!(all_joined(&h, &[2, 3, 4]), "setup: 2, 3 and 4 joined: {} / {:?}", h.nodes[&2].core.debug_line(), h.nodes[&2].core.state());
    let cur = h.nodes[&2].core.state().unwrap().clone();
    assert!(cur.quorate && cur.view.master == 2 && cur.view.term == 1, "setup: {:?}", cur.view);
    // Node 1's state: formed in term 1, every node admitted (Joining).
    let view = ViewId { term: 1, master: 1, master_incarnation: 1, version: 1 };
    let levels: BTreeSet<LevelSpec> = LEVELS.iter().map(|(_, level, barriers)| LevelSpec { level: *level, barriers: *barriers }).collect();
    let nodes = (1..=5).map(|n| (n, NodeEntry { state: NodeState::Joining, incarnation: 1, levels: levels.clone() })).collect();
    let paper = ClusterState {
        view,
        origin: ViewId { version: 0, ..view },
        nodes,
        transitions: BTreeMap::new(),
        change: 1,
        quorate: true,
        stopping: false,
    };
    h.mark();
    for n in [2, 3, 4] {
        h.input(n, Input::Receive { from: 1, msg: Msg::State(paper.clone()) });
    }
    h.run_ms(300);
    for n in [2, 3, 4] {
        assert_eq!(h.count(n, |a| matches!(a, Action::Halt { .. })), 0, "node {n} halted: {:?}", h.nodes[&n].actions);
        assert_eq!(h.master(n), 2, "node {n} follows another master");
    }
    assert!(all_joined(&h, &[2, 3, 4]));
    h.check_nothing_after_end();
}

/// Exploration (issue 13): node 3 starts next to a running 2-node cluster
/// (subgroups of `sg`), its datapath reports the peers up at once, but its
/// control messages on each directed link (1->3, 3->1, 2->3, 3->2) are lost
/// until the given time (ms after its start).
fn late_links(sg: usize, until: [u64; 4], silent_first: bool) -> Result<(), String> {
    let mut h = Harness::new(3);
    h.subgroup = sg;
    for id in 1..=3 {
        h.create(id, 1);
    }
    h.start(1);
    h.start(2);
    h.run_ms(200);
    assert!(all_joined(&h, &[1, 2]), "setup: 1 and 2 did not join");
    let links = [(1, 3), (3, 1), (2, 3), (3, 2)];
    for l in links {
        h.cut.insert(l);
    }
    if silent_first {
        h.nodes.get_mut(&3).unwrap().started = true;
        h.input(3, Input::Start);
        h.input(3, Input::PeerSilent { node: 1 });
        h.input(3, Input::PeerSilent { node: 2 });
        h.input(1, Input::PeerUp { node: 3 });
        h.input(2, Input::PeerUp { node: 3 });
        h.run_ms(5);
        h.input(3, Input::PeerUp { node: 1 });
        h.input(3, Input::PeerUp { node: 2 });
    } else {
        h.start(3);
    }
    let t0 = h.now;
    let mut order: Vec<(u64, (NodeId, NodeId))> = until.iter().copied().zip(links).collect();
    order.sort();
    for (t, l) in order {
        let elapsed = h.now.since(t0) / MS;
        if t > elapsed {
            h.run_ms(t - elapsed);
        }
        h.cut.remove(&l);
    }
    h.run_ms(1000);
    if all_joined(&h, &[1, 2, 3]) {
        Ok(())
    } else {
        Err(format!(
            "sg {sg} until {until:?} silent_first {silent_first}: n1 {} | n2 {} | n3 {}",
            h.nodes[&1].core.debug_line(),
            h.nodes[&2].core.debug_line(),
            h.nodes[&3].core.debug_line()
        ))
    }
}

#[test]
fn a_node_starting_while_its_control_links_are_down_joins_once_they_are_up() {
    let mut fails = Vec::new();
    let ts = [0, 20, 100, 230];
    for sg in [4, 2] {
        for silent_first in [false, true] {
            for a in ts {
                for b in ts {
                    for c in ts {
                        for d in ts {
                            if let Err(e) = late_links(sg, [a, b, c, d], silent_first) {
                                fails.push(e);
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(fails.is_empty(), "{} failures:\n{}", fails.len(), fails.iter().take(10).cloned().collect::<Vec<_>>().join("\n"));
}

/// Issue 13: the master says which joiner waits and why (the agent logs it
/// when a join stalls). Node 1's failure detector wrongly holds node 3 as
/// failed: node 3 keeps asking to join and is not admitted, for that reason.
#[test]
fn the_master_tells_why_a_joiner_is_not_admitted() {
    use baton_core::membership::JoinBlock;
    let mut h = three(false);
    h.input(1, Input::PeerSilent { node: 3 });
    h.start(3);
    h.input(1, Input::PeerSilent { node: 3 });
    h.run_ms(100);
    assert_eq!(h.nodes[&3].core.my_state(), NodeState::Inactive);
    assert_eq!(h.nodes[&1].core.join_waits(), vec![(3, Some(JoinBlock::Failed))]);
    assert!(h.nodes[&2].core.join_waits().is_empty(), "only the master answers");
    h.input(1, Input::PeerUp { node: 3 });
    h.run_ms(300);
    assert!(all_joined(&h, &[1, 2, 3]), "3 joins once 1 sees it up");
    assert!(h.nodes[&1].core.join_waits().is_empty());
}

// ---------------------------------------------------------------------------
// Static quorum (issue 11: sim seeds 8753 and 3362 of the membership sweep)
// ---------------------------------------------------------------------------

/// Cuts every link between the two sides, both ways, and lets every started
/// node's datapath report the other side silent.
fn partition(h: &mut Harness, a: &[NodeId], b: &[NodeId]) {
    for x in a {
        for y in b {
            h.cut.insert((*x, *y));
            h.cut.insert((*y, *x));
        }
    }
    for x in a {
        for y in b {
            h.input(*x, Input::PeerSilent { node: *y });
            h.input(*y, Input::PeerSilent { node: *x });
        }
    }
}

/// The nodes that run as Joined members of a quorate state, by master.
fn primaries(h: &Harness) -> BTreeMap<NodeId, BTreeSet<NodeId>> {
    let mut out: BTreeMap<NodeId, BTreeSet<NodeId>> = BTreeMap::new();
    for (id, n) in &h.nodes {
        if !n.up || n.core.is_halted() {
            continue;
        }
        if let Some(s) = n.core.state() {
            if s.quorate && s.state_of(*id) == NodeState::Joined {
                out.entry(s.view.master).or_default().insert(*id);
            }
        }
    }
    out
}

/// Sim seed 8753: 7 configured nodes; node 1's cluster has the group
/// {1, 3, 4, 5, 6} (2 and 7 are down). A partition {1, 4, 6} | {3, 5}:
/// node 1 sees 3 of its 5 members, a majority of its group, and forces 3
/// and 5 out (they halt for lost quorum). Its group {1, 4, 6} is 3 of the 7
/// configured nodes. New lives of 3 and 5 and the nodes 2 and 7 start on
/// the other side: 4 of 7 configured nodes, a majority, so node 2 forms a
/// quorate cluster. With a quorum relative to the group alone, node 1's
/// cluster kept running beside it: two primary clusters, disjoint. Static
/// quorum (a majority of the configured nodes as well) makes 1, 4 and 6
/// halt for lost quorum as soon as they are cut off.
#[test]
fn a_group_shrunk_below_a_configured_majority_halts_before_the_majority_forms_another_cluster() {
    let mut h = Harness::new(7);
    for n in [1, 3, 4, 5, 6] {
        h.start(n);
    }
    h.run_ms(300);
    assert!(all_joined(&h, &[1, 3, 4, 5, 6]), "setup: 1, 3, 4, 5 and 6 did not join");
    assert_eq!(h.nodes[&1].core.state().unwrap().group(), [1, 3, 4, 5, 6].into_iter().collect());
    h.mark();
    partition(&mut h, &[1, 4, 6], &[2, 3, 5, 7]);
    h.run_ms(300);
    for n in [3, 5] {
        assert_eq!(h.count(n, |a| matches!(a, Action::Halt { why: HaltReason::LostQuorum })), 1, "n{n} (2 of its group of 5) did not halt");
    }
    // New lives of 3 and 5, and 2 and 7, start on the far side.
    h.restart(3, 2);
    h.restart(5, 2);
    h.start(2);
    h.start(7);
    partition(&mut h, &[1, 4, 6], &[2, 3, 5, 7]);
    h.run_ms(1000);
    let p = primaries(&h);
    assert!(p.len() <= 1, "two primary clusters at once (master -> joined members): {p:?}");
    for n in [1, 4, 6] {
        assert_eq!(
            h.count(n, |a| matches!(a, Action::Halt { why: HaltReason::LostQuorum })),
            1,
            "n{n} (3 of 7 configured nodes in sight) did not halt for lost quorum: {}",
            h.nodes[&n].core.debug_line()
        );
    }
    assert_eq!(p.get(&2), Some(&[2, 3, 5, 7].into_iter().collect()), "the configured majority did not form its cluster: {p:?}");
    h.check_nothing_after_end();
}

/// Static quorum counts graceful leaves like failures (corosync's default:
/// a clean shutdown does not lower the expected votes). Five configured
/// nodes: 4 and 5 leave gracefully (3 of 5 run on, nobody halts), then
/// node 3 fails. Nodes 1 and 2 are 2 of their group {1, 2, 3}, a majority
/// of it, but 2 of 5 configured nodes: they halt for lost quorum. (With a
/// quorum of the group alone they ran on, and 3, 4 and 5 restarting beyond
/// a partition could form a second cluster of 3 of 5.)
#[test]
fn a_graceful_leave_does_not_lower_the_static_quorum() {
    let mut h = five_joined();
    h.mark();
    for n in [4, 5] {
        h.input(n, Input::Leave);
    }
    h.run_ms(300);
    for n in [4, 5] {
        assert!(h.nodes[&n].core.has_left(), "node {n} did not leave");
        h.crash(n);
        h.silent(n);
    }
    h.run_ms(200);
    for n in [1, 2, 3] {
        assert_eq!(h.count(n, |a| matches!(a, Action::Halt { .. })), 0, "n{n} halted with 3 of 5 configured nodes");
        assert_eq!(h.nodes[&n].core.my_state(), NodeState::Joined);
    }
    h.crash(3);
    h.silent(3);
    h.run_ms(200);
    for n in [1, 2] {
        assert_eq!(
            h.count(n, |a| matches!(a, Action::Halt { why: HaltReason::LostQuorum })),
            1,
            "n{n} runs on with 2 of 5 configured nodes: {}",
            h.nodes[&n].core.debug_line()
        );
    }
    h.check_nothing_after_end();
}

/// Sim seed 214: a member's new life is not a vote for the cluster its old
/// life was in. Five configured nodes, all joined. Node 5 fails, and while
/// the change that removes it is still under way (it waits for node 4,
/// whose messages to and from the master are lost) it restarts: its heartbeats end its silence (`PeerUp`) and its new life
/// reports to every node. Then the master 1 and node 2 crash. Nodes 3 and 4
/// are 2 of 5 configured nodes: they must halt for lost quorum, not count
/// 5's new life and run on as a primary cluster (with that count they did,
/// for seconds, while 3 waited for a state 5's new life never sends, and
/// the new lives of 1, 2 and 5 could form the primary cluster meanwhile).
#[test]
fn a_restarted_members_new_life_is_no_vote_for_its_old_cluster() {
    let mut h = five_joined();
    assert_eq!(h.nodes[&3].core.state().unwrap().view.master, 1, "setup: 1 is the master");
    // The change that removes 5 waits for 4's answer (4's messages to and
    // from the master are lost; its datapath still hears it).
    h.cut.insert((1, 4));
    h.cut.insert((4, 1));
    h.crash(5);
    h.silent(5);
    h.run_ms(10);
    h.restart(5, 2);
    h.run_ms(20);
    let s = h.nodes[&3].core.state().unwrap().clone();
    assert!(s.group().contains(&5), "setup: 5's forced leave is still under way: {:?}", s.group());
    h.mark();
    h.crash(1);
    h.crash(2);
    h.silent(1);
    h.silent(2);
    h.run_ms(100);
    for n in [3, 4] {
        assert_eq!(
            h.count(n, |a| matches!(a, Action::Halt { why: HaltReason::LostQuorum })),
            1,
            "n{n} runs on with 2 of 5 configured nodes, counting 5's new life: {}",
            h.nodes[&n].core.debug_line()
        );
    }
    assert!(primaries(&h).values().all(|m| !m.contains(&3) && !m.contains(&4)), "3 or 4 still primary: {:?}", primaries(&h));
    h.check_nothing_after_end();
}

/// Sim seed 3740: a node that took part in the group change that takes it
/// in is in that cluster, even when the states that show it in are lost on
/// the way to it. Three nodes: 1 (master) and 2 joined; 3 joins, and every
/// state of node 1 that shows 3 in the group is lost on the way to 3. The
/// master crashes. Node 2, the successor, counts 3 in sight (it is in the
/// group); 3 must answer its gather, not forget the cluster as one it is
/// not in (and give its vote to a cluster formed anew): 2 takes over with
/// the states of 2 of 3, and 3 follows it.
#[test]
fn a_node_in_a_group_change_it_took_part_in_stays_in_the_cluster_when_the_master_dies() {
    let mut h = Harness::new(3);
    h.start(1);
    h.start(2);
    h.run_ms(200);
    assert!(all_joined(&h, &[1, 2]), "setup: 1 and 2 did not join");
    h.lose = Some(Box::new(|from, to, msg| from == 1 && to == 3 && matches!(msg, Msg::State(s) if s.group().contains(&3))));
    h.start(3);
    h.run_ms(100);
    let on2 = h.nodes[&2].core.state().unwrap().clone();
    assert!(on2.group().contains(&3), "setup: the change that adds 3 is not through: {:?}", on2.group());
    let on3 = h.nodes[&3].core.state().expect("setup: 3 follows a state of node 1's cluster").clone();
    assert!(!on3.group().contains(&3), "setup: a state with 3 in it reached 3: {:?}", on3.group());
    h.mark();
    h.crash(1);
    h.silent(1);
    h.run_ms(500);
    assert_eq!(h.count(2, |a| matches!(a, Action::Halt { .. })), 0, "n2 halted: {}", h.nodes[&2].core.debug_line());
    let s2 = h.nodes[&2].core.state().unwrap();
    assert_eq!(s2.view.master, 2, "n2 did not take over: {}", h.nodes[&2].core.debug_line());
    let s3 = h.nodes[&3].core.state().expect("n3 follows no state");
    assert_eq!(s3.view.master, 2, "n3 does not follow n2's cluster: {}", h.nodes[&3].core.debug_line());
    h.check_nothing_after_end();
}
