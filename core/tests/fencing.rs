//! Exact-action tests of the fencing core (docs/fencing.md), and a model of
//! a shared disk that applies persistent reservation commands one at a time
//! (as a SCSI target does) for the two-node preemption race.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::fencing::{Action, Config, Fencing, Input, Op, OpId, Outcome};
use baton_core::membership::{Kind, Step, TransitionId};
use baton_core::rng::Rng;
use baton_core::{Instant, NodeId};

const MS: u64 = 1_000_000;

fn key(n: NodeId) -> u64 {
    (4242u64 << 32) | n as u64
}

fn core(me: NodeId) -> Fencing {
    Fencing::new(Config::new(me, (1..=3).map(|n| (n, key(n))).collect()))
}

fn tid(node: NodeId, kind: Kind) -> TransitionId {
    TransitionId { node, incarnation: 7, kind }
}

const STEP: Step = Step { level: 10, barrier: 0 };

fn drain(f: &mut Fencing) -> Vec<Action> {
    std::iter::from_fn(|| f.poll_action()).collect()
}

fn run_of(actions: &[Action]) -> (OpId, Op) {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Run { op, what } => Some((*op, what.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Run in {actions:?}"))
}

fn keys(v: &[NodeId]) -> BTreeSet<u64> {
    v.iter().map(|n| key(*n)).collect()
}

/// Joined: this node's join registered (so the periodic check runs).
fn joined(me: NodeId) -> Fencing {
    let mut f = core(me);
    f.handle(Instant::ZERO, Input::Step { id: tid(me, Kind::Join), step: STEP });
    let (op, what) = run_of(&drain(&mut f));
    assert_eq!(what, Op::Register);
    f.handle(Instant::ZERO, Input::Done { op, outcome: Outcome::Ok { keys: None } });
    assert_eq!(drain(&mut f), vec![Action::Ack { id: tid(me, Kind::Join), step: STEP }]);
    assert!(f.registered());
    f
}

#[test]
fn a_join_registers_then_acks_and_the_check_finds_a_missing_key() {
    let mut f = joined(1);
    assert_eq!(f.next_deadline(), Some(Instant(1000 * MS)));
    f.handle(Instant(1000 * MS), Input::Tick);
    let (op, what) = run_of(&drain(&mut f));
    assert_eq!(what, Op::Check);
    // Present: nothing happens, the next check is a period later.
    f.handle(Instant(1001 * MS), Input::Done { op, outcome: Outcome::Ok { keys: Some(keys(&[1, 2])) } });
    assert_eq!(drain(&mut f), vec![]);
    assert_eq!(f.next_deadline(), Some(Instant(2001 * MS)));
    f.handle(Instant(2001 * MS), Input::Tick);
    let (op, _) = run_of(&drain(&mut f));
    // An unreachable disk proves nothing: no self-fencing.
    f.handle(Instant(2002 * MS), Input::Done { op, outcome: Outcome::Unavailable { reason: "timeout".into() } });
    assert_eq!(drain(&mut f), vec![]);
    f.handle(Instant(3002 * MS), Input::Tick);
    let (op, _) = run_of(&drain(&mut f));
    f.handle(Instant(3003 * MS), Input::Done { op, outcome: Outcome::Ok { keys: Some(keys(&[2])) } });
    let a = drain(&mut f);
    assert!(matches!(a.as_slice(), [Action::Fenced { .. }]), "{a:?}");
    assert_eq!(f.next_deadline(), None);
    // Nothing after that.
    f.handle(Instant(5000 * MS), Input::Step { id: tid(2, Kind::ForcedLeave), step: STEP });
    assert_eq!(drain(&mut f), vec![]);
}

#[test]
fn steps_of_other_nodes_joins_and_leaves_are_acked_at_once() {
    let mut f = joined(1);
    f.handle(Instant::ZERO, Input::Step { id: tid(2, Kind::Join), step: STEP });
    assert_eq!(drain(&mut f), vec![Action::Ack { id: tid(2, Kind::Join), step: STEP }]);
    f.handle(Instant::ZERO, Input::Step { id: tid(2, Kind::Leave), step: STEP });
    assert_eq!(drain(&mut f), vec![Action::Ack { id: tid(2, Kind::Leave), step: STEP }]);
    // A leaver may have held the reservation: a check comes soon.
    assert_eq!(f.next_deadline(), Some(Instant(100 * MS)));
}

#[test]
fn a_forced_leave_is_acked_only_once_the_victims_key_is_gone() {
    let mut f = joined(1);
    let id = tid(2, Kind::ForcedLeave);
    f.handle(Instant(10 * MS), Input::Step { id, step: STEP });
    let (op, what) = run_of(&drain(&mut f));
    assert_eq!(what, Op::Preempt { victim: 2, key: key(2) });
    // Notified again: no second operation.
    f.handle(Instant(11 * MS), Input::Step { id, step: STEP });
    assert_eq!(drain(&mut f), vec![]);
    // The target does not answer: waiting, retried after 100 ms, alerted
    // from the second failure on, doubling.
    f.handle(Instant(20 * MS), Input::Done { op, outcome: Outcome::Unavailable { reason: "timeout".into() } });
    assert_eq!(drain(&mut f), vec![Action::Waiting { node: 2, reason: "timeout".into() }]);
    assert_eq!(f.waiting(), vec![(2, "timeout".to_string())]);
    assert_eq!(f.next_deadline(), Some(Instant(120 * MS)));
    f.handle(Instant(120 * MS), Input::Tick);
    let (op, _) = run_of(&drain(&mut f));
    f.handle(Instant(130 * MS), Input::Done { op, outcome: Outcome::Unavailable { reason: "timeout".into() } });
    assert_eq!(drain(&mut f), vec![Action::Alert { node: 2, reason: "timeout".into() }]);
    assert_eq!(f.next_deadline(), Some(Instant(330 * MS)));
    f.handle(Instant(330 * MS), Input::Tick);
    let (op, _) = run_of(&drain(&mut f));
    f.handle(Instant(340 * MS), Input::Done { op, outcome: Outcome::Ok { keys: None } });
    assert_eq!(drain(&mut f), vec![Action::Cleared { node: 2 }, Action::Ack { id, step: STEP }]);
    assert!(f.waiting().is_empty());
}

#[test]
fn an_operation_that_does_not_answer_is_reported_waiting_and_its_late_answer_counts() {
    let mut f = joined(1);
    let id = tid(2, Kind::ForcedLeave);
    f.handle(Instant::ZERO, Input::Step { id, step: STEP });
    let (op, _) = run_of(&drain(&mut f));
    assert_eq!(f.next_deadline(), Some(Instant(1000 * MS)), "the check comes first");
    f.handle(Instant(1000 * MS), Input::Tick);
    let (check, what) = run_of(&drain(&mut f));
    assert_eq!(what, Op::Check);
    f.handle(Instant(1001 * MS), Input::Done { op: check, outcome: Outcome::Ok { keys: Some(keys(&[1, 2])) } });
    // 10 s without an answer to the preemption: waiting and alerted, not acked.
    f.handle(Instant(10_000 * MS), Input::Tick);
    let a = drain(&mut f);
    let reason = "no answer from the disk within 10000 ms".to_string();
    assert!(a.contains(&Action::Waiting { node: 2, reason: reason.clone() }) && a.contains(&Action::Alert { node: 2, reason }), "{a:?}");
    assert!(!a.iter().any(|x| matches!(x, Action::Ack { .. })));
    // The answer comes at last.
    f.handle(Instant(60_000 * MS), Input::Done { op, outcome: Outcome::Ok { keys: None } });
    let a = drain(&mut f);
    assert!(a.ends_with(&[Action::Cleared { node: 2 }, Action::Ack { id, step: STEP }]), "{a:?}");
}

#[test]
fn a_conflict_on_preempt_is_read_through_the_keys() {
    // Another survivor fenced the victim first: done.
    let mut f = joined(1);
    let id = tid(3, Kind::ForcedLeave);
    f.handle(Instant::ZERO, Input::Step { id, step: STEP });
    let (op, _) = run_of(&drain(&mut f));
    f.handle(Instant::ZERO, Input::Done { op, outcome: Outcome::Conflict { keys: keys(&[1, 2]) } });
    assert_eq!(drain(&mut f), vec![Action::Ack { id, step: STEP }]);
    // Our own key is gone: we lost, we fence ourselves and ack nothing.
    let mut f = joined(2);
    let id = tid(1, Kind::ForcedLeave);
    f.handle(Instant::ZERO, Input::Step { id, step: STEP });
    let (op, _) = run_of(&drain(&mut f));
    f.handle(Instant::ZERO, Input::Done { op, outcome: Outcome::Conflict { keys: keys(&[1]) } });
    let a = drain(&mut f);
    assert!(matches!(a.as_slice(), [Action::Fenced { .. }]), "{a:?}");
    // A unit attention saying we were preempted: the same.
    let mut f = joined(2);
    f.handle(Instant::ZERO, Input::Step { id, step: STEP });
    let (op, _) = run_of(&drain(&mut f));
    f.handle(Instant::ZERO, Input::Done { op, outcome: Outcome::Preempted });
    assert!(matches!(drain(&mut f).as_slice(), [Action::Fenced { .. }]));
}

#[test]
fn an_operator_confirmation_completes_a_waiting_fencing() {
    let mut f = joined(1);
    let id = tid(2, Kind::ForcedLeave);
    f.handle(Instant::ZERO, Input::Step { id, step: STEP });
    let (op, _) = run_of(&drain(&mut f));
    f.handle(Instant(5 * MS), Input::Done { op, outcome: Outcome::Unavailable { reason: "no path".into() } });
    drain(&mut f);
    f.handle(Instant(50 * MS), Input::Confirm { node: 3, incarnation: None });
    assert_eq!(drain(&mut f), vec![], "a confirmation of another node changes nothing");
    f.handle(Instant(55 * MS), Input::Confirm { node: 2, incarnation: Some(6) });
    assert_eq!(drain(&mut f), vec![], "a confirmation of another life changes nothing");
    f.handle(Instant(60 * MS), Input::Confirm { node: 2, incarnation: Some(7) });
    assert_eq!(drain(&mut f), vec![Action::Cleared { node: 2 }, Action::Ack { id, step: STEP }]);
    // Its retry is gone.
    assert_eq!(f.next_deadline(), Some(Instant(1000 * MS)));
}

#[test]
fn a_graceful_leave_unregisters_and_gives_up_after_three_attempts() {
    let mut f = joined(1);
    let id = tid(1, Kind::Leave);
    f.handle(Instant::ZERO, Input::Step { id, step: STEP });
    let (op, what) = run_of(&drain(&mut f));
    assert_eq!(what, Op::Unregister);
    f.handle(Instant::ZERO, Input::Done { op, outcome: Outcome::Ok { keys: None } });
    assert_eq!(drain(&mut f), vec![Action::Ack { id, step: STEP }]);
    assert!(!f.registered());
    assert_eq!(f.next_deadline(), None, "no checks once unregistered");

    let mut f = joined(1);
    f.handle(Instant::ZERO, Input::Step { id, step: STEP });
    let mut now = 0;
    for attempt in 1..=3 {
        let (op, _) = run_of(&drain(&mut f));
        f.handle(Instant(now), Input::Done { op, outcome: Outcome::Unavailable { reason: "gone".into() } });
        if attempt < 3 {
            now = f.next_deadline().unwrap().0;
            f.handle(Instant(now), Input::Tick);
        }
    }
    let a = drain(&mut f);
    assert!(matches!(a.as_slice(), [Action::Alert { node: 1, .. }, Action::Cleared { node: 1 }, Action::Ack { .. }]), "{a:?}");
}

// ------------------------------------------------------------------ the race

/// A shared disk: registered keys and the reservation holder; commands are
/// applied one at a time, in the order they reach it.
#[derive(Default)]
struct Disk {
    keys: BTreeSet<u64>,
    holder: Option<u64>,
}

impl Disk {
    fn apply(&mut self, me: u64, op: &Op) -> Outcome {
        match op {
            Op::Register => {
                self.keys.insert(me);
                if self.holder.is_none() {
                    self.holder = Some(me);
                }
                Outcome::Ok { keys: None }
            }
            Op::Unregister => {
                self.keys.remove(&me);
                if self.holder == Some(me) {
                    self.holder = None;
                }
                Outcome::Ok { keys: None }
            }
            Op::Preempt { key, .. } => {
                if !self.keys.contains(&me) || !self.keys.contains(key) {
                    return Outcome::Conflict { keys: self.keys.clone() };
                }
                self.keys.remove(key);
                if self.holder == Some(*key) {
                    self.holder = Some(me);
                }
                Outcome::Ok { keys: None }
            }
            Op::Check => Outcome::Ok { keys: Some(self.keys.clone()) },
        }
    }
}

/// Two nodes with a disk, partitioned: each side forces the other out and
/// preempts it. Whatever the order the target sees the commands in, exactly
/// one side acknowledges its fencing step and the other fences itself, and
/// the winner's key alone is left.
#[test]
fn in_a_two_node_race_exactly_one_side_wins() {
    for seed in 1..=200u64 {
        let mut rng = Rng::new(seed);
        let mut disk = Disk::default();
        let mut nodes: BTreeMap<NodeId, Fencing> = BTreeMap::new();
        for me in [1, 2] {
            let mut f = Fencing::new(Config::new(me, [(1, key(1)), (2, key(2))].into()));
            f.handle(Instant::ZERO, Input::Step { id: tid(me, Kind::Join), step: STEP });
            let (op, what) = run_of(&drain(&mut f));
            let o = disk.apply(key(me), &what);
            f.handle(Instant::ZERO, Input::Done { op, outcome: o });
            drain(&mut f);
            nodes.insert(me, f);
        }
        // The partition: both start the other's forced leave; their
        // commands reach the disk in a random order, with checks between.
        let mut queue: Vec<(NodeId, OpId, Op)> = Vec::new();
        let mut acked = BTreeSet::new();
        let mut fenced = BTreeSet::new();
        for me in [1, 2] {
            let other = 3 - me;
            let f = nodes.get_mut(&me).unwrap();
            f.handle(Instant(10 * MS), Input::Step { id: tid(other, Kind::ForcedLeave), step: STEP });
            let (op, what) = run_of(&drain(f));
            queue.push((me, op, what));
        }
        let mut now = 10 * MS;
        while !queue.is_empty() {
            let i = rng.range(0, queue.len() as u64 - 1) as usize;
            let (me, op, what) = queue.remove(i);
            let o = disk.apply(key(me), &what);
            let f = nodes.get_mut(&me).unwrap();
            now += MS;
            f.handle(Instant(now), Input::Done { op, outcome: o });
            for a in drain(f) {
                match a {
                    Action::Ack { .. } => {
                        acked.insert(me);
                    }
                    Action::Fenced { .. } => {
                        fenced.insert(me);
                    }
                    Action::Run { op, what } => queue.push((me, op, what)),
                    _ => {}
                }
            }
        }
        assert_eq!(acked.len(), 1, "seed {seed}: acked {acked:?}");
        assert_eq!(fenced.len(), 1, "seed {seed}: fenced {fenced:?}");
        assert!(acked.is_disjoint(&fenced));
        let winner = *acked.iter().next().unwrap();
        assert_eq!(disk.keys, keys(&[winner]), "seed {seed}");
        assert_eq!(disk.holder, Some(key(winner)), "seed {seed}");
    }
}
