//! Exact-action tests of the negotiated takeover core (seed 002;
//! docs/takeover.md), and a seeded simulation of two nodes with message
//! loss, duplication, reordering and restarts.

use baton_core::rng::Rng;
use baton_core::takeover::{Action, Config, Input, Mark, Msg, Refusal, State, Takeover};
use baton_core::{Instant, NodeId};

const MS: u64 = 1_000_000;
const A: NodeId = 1;
const B: NodeId = 2;

fn core(me: NodeId, partner: NodeId) -> Takeover {
    Takeover::new(Config { me, partner: Some(partner), countdown_ns: 5000 * MS, resend_ns: 500 * MS, id_base: me as u64 * 1000 })
}

fn drain(t: &mut Takeover) -> Vec<Action> {
    std::iter::from_fn(|| t.poll_action()).collect()
}

fn sends(actions: &[Action]) -> Vec<(NodeId, Msg)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn without_events(actions: Vec<Action>) -> Vec<Action> {
    actions.into_iter().filter(|a| !matches!(a, Action::Event { .. })).collect()
}

/// A faulty, B accepts: the whole exchange, action by action.
fn accepted(now: u64) -> (Takeover, Takeover, u64) {
    let (mut a, mut b) = (core(A, B), core(B, A));
    a.handle(Instant(now), Input::Fault { kind: "disk".into() });
    let out = without_events(drain(&mut a));
    let id = 1001;
    assert_eq!(out, vec![Action::Send { to: B, msg: Msg::Request { id, fault: "disk".into() } }]);
    assert_eq!(a.state(), State::Requested { to: B, fault: "disk".into() });
    b.handle(Instant(now), Input::Receive { from: A, msg: Msg::Request { id, fault: "disk".into() } });
    assert_eq!(without_events(drain(&mut b)), vec![Action::Check { node: A, id }]);
    b.handle(Instant(now + MS), Input::Checked { node: A, id, result: Ok(()) });
    let out = drain(&mut b);
    assert_eq!(sends(&out), vec![(A, Msg::Accept { id, countdown_ms: 5000 })]);
    assert!(matches!(b.state(), State::TakingOver { node: A, .. }));
    a.handle(Instant(now + 2 * MS), Input::Receive { from: B, msg: Msg::Accept { id, countdown_ms: 5000 } });
    let mark = Mark { id, by: B, fault: "disk".into(), forced: false };
    assert_eq!(without_events(drain(&mut a)), vec![Action::Drain { mark }]);
    assert_eq!(a.state(), State::Draining { by: B, fault: "disk".into() });
    (a, b, id)
}

#[test]
fn a_fault_is_taken_over_and_the_leave_confirms_it() {
    let (_a, mut b, _id) = accepted(0);
    // A drained and left: the membership says it is gone. No force.
    b.handle(Instant(3000 * MS), Input::PeerGone { node: A });
    let out = drain(&mut b);
    assert!(out.iter().any(|x| matches!(x, Action::Event { name: "takeover_done", node: A, .. })), "{out:?}");
    b.handle(Instant(9000 * MS), Input::Tick);
    assert!(!drain(&mut b).iter().any(|x| matches!(x, Action::Force { .. })));
    assert_eq!(b.taken_over(), vec![(A, "disk".to_string(), false)]);
    assert_eq!(b.state(), State::Normal);
}

#[test]
fn a_refusal_leaves_the_faulty_node_up() {
    let (mut a, mut b) = (core(A, B), core(B, A));
    b.handle(Instant::ZERO, Input::Degraded { on: true });
    a.handle(Instant::ZERO, Input::Fault { kind: "network".into() });
    let (_, req) = sends(&drain(&mut a)).remove(0);
    b.handle(Instant::ZERO, Input::Receive { from: A, msg: req });
    let out = sends(&drain(&mut b));
    let Msg::Refuse { id, reason } = out[0].1.clone() else { panic!("{out:?}") };
    assert!(reason.contains("degraded"), "{reason}");
    a.handle(Instant(MS), Input::Receive { from: B, msg: Msg::Refuse { id, reason } });
    let out = drain(&mut a);
    assert!(matches!(out.as_slice(), [Action::Event { name: "takeover_refused_here", .. }]), "{out:?}");
    assert_eq!(a.state(), State::Normal);
    // A check that fails refuses too.
    let (mut a, mut b) = (core(A, B), core(B, A));
    a.handle(Instant::ZERO, Input::Fault { kind: "memory".into() });
    let (_, req) = sends(&drain(&mut a)).remove(0);
    b.handle(Instant::ZERO, Input::Receive { from: A, msg: req });
    let Action::Check { id, .. } = without_events(drain(&mut b))[0].clone() else { panic!() };
    b.handle(Instant(MS), Input::Checked { node: A, id, result: Err(Refusal::GroupNotAllowed { group: "db".into() }) });
    assert_eq!(sends(&drain(&mut b)), vec![(A, Msg::Refuse { id, reason: "group db may not run on this node".into() })]);
    assert_eq!(b.state(), State::Normal);
}

#[test]
fn the_countdown_forces_a_node_that_does_not_shut_down() {
    let (mut a, mut b, id) = accepted(0);
    assert_eq!(b.next_deadline(), Some(Instant(5001 * MS)));
    b.handle(Instant(5001 * MS), Input::Tick);
    let out = drain(&mut b);
    assert!(out.contains(&Action::Force { node: A }), "{out:?}");
    assert!(sends(&out).contains(&(A, Msg::Force { id })));
    // A, if it still listens, stops at once.
    a.handle(Instant(5002 * MS), Input::Receive { from: B, msg: Msg::Force { id } });
    assert_eq!(drain(&mut a), vec![Action::Stop { by: B }]);
    // It goes: taken over, forced.
    b.handle(Instant(5600 * MS), Input::PeerGone { node: A });
    drain(&mut b);
    assert_eq!(b.taken_over(), vec![(A, "disk".to_string(), true)]);
    // A lost request of a takeover that was never asked gets nothing.
    a.handle(Instant(6000 * MS), Input::Receive { from: B, msg: Msg::Force { id: 77 } });
    assert_eq!(drain(&mut a), vec![]);
}

#[test]
fn a_taken_over_node_stays_down_across_a_restart_and_gets_its_work_back_when_cured() {
    let (_a, mut b, id) = accepted(0);
    b.handle(Instant(2000 * MS), Input::PeerGone { node: A });
    drain(&mut b);
    // A restarts and finds its mark.
    let mut a = core(A, B);
    let mark = Mark { id, by: B, fault: "disk".into(), forced: false };
    a.handle(Instant(10_000 * MS), Input::Restore { mark: mark.clone() });
    assert_eq!(drain(&mut a), vec![Action::StayDown { mark: mark.clone() }]);
    assert_eq!(a.state(), State::TakenOver { by: B, fault: "disk".into(), forced: false });
    // B reminds it, at once and then every resend period.
    b.handle(Instant(10_100 * MS), Input::PeerJoined { node: A });
    assert_eq!(sends(&drain(&mut b)), vec![(A, Msg::StayDown { id, fault: "disk".into() })]);
    b.handle(Instant(10_600 * MS), Input::Tick);
    assert_eq!(sends(&drain(&mut b)), vec![(A, Msg::StayDown { id, fault: "disk".into() })]);
    // A restarted without its mark asks to be taken over again: B tells it
    // to stay down (and keeps the first takeover, for its giveback).
    b.handle(Instant(10_650 * MS), Input::Receive { from: A, msg: Msg::Request { id: 9999, fault: "disk".into() } });
    assert_eq!(sends(&drain(&mut b)), vec![(A, Msg::StayDown { id, fault: "disk".into() })]);
    assert_eq!(b.taken_over(), vec![(A, "disk".to_string(), false)]);
    // A restarted without its mark (a lost disk): the reminder puts it down.
    let mut a2 = core(A, B);
    a2.handle(Instant(10_601 * MS), Input::Receive { from: B, msg: Msg::StayDown { id, fault: "disk".into() } });
    assert_eq!(drain(&mut a2), vec![Action::StayDown { mark: mark.clone() }]);
    // Cured: giveback.
    a.handle(Instant(20_000 * MS), Input::Cured);
    let out = sends(&drain(&mut a));
    assert_eq!(out, vec![(B, Msg::GivebackRequest { id })]);
    assert_eq!(a.state(), State::GivebackRequested { from: B });
    b.handle(Instant(20_001 * MS), Input::Receive { from: A, msg: Msg::GivebackRequest { id } });
    let out = drain(&mut b);
    assert!(out.contains(&Action::Return { node: A }), "{out:?}");
    assert!(sends(&out).contains(&(A, Msg::GivebackDone { id })));
    assert!(b.taken_over().is_empty());
    a.handle(Instant(20_002 * MS), Input::Receive { from: B, msg: Msg::GivebackDone { id } });
    assert_eq!(drain(&mut a), vec![Action::ClearMark]);
    assert_eq!(a.state(), State::Normal);
    // No more reminders.
    b.handle(Instant(30_000 * MS), Input::Tick);
    assert_eq!(sends(&drain(&mut b)), vec![]);
}

#[test]
fn no_giveback_while_the_partner_is_degraded() {
    let (_a, mut b, id) = accepted(0);
    b.handle(Instant(2000 * MS), Input::PeerGone { node: A });
    drain(&mut b);
    let mut a = core(A, B);
    a.handle(Instant(3000 * MS), Input::Restore { mark: Mark { id, by: B, fault: "disk".into(), forced: false } });
    drain(&mut a);
    b.handle(Instant(3000 * MS), Input::Degraded { on: true });
    a.handle(Instant(4000 * MS), Input::Giveback { node: A });
    let (_, req) = sends(&drain(&mut a)).remove(0);
    b.handle(Instant(4001 * MS), Input::Receive { from: A, msg: req.clone() });
    let out = drain(&mut b);
    assert!(!out.iter().any(|x| matches!(x, Action::Return { .. })), "{out:?}");
    let refused = sends(&out).remove(0).1;
    assert!(matches!(refused, Msg::GivebackRefused { .. }));
    a.handle(Instant(4002 * MS), Input::Receive { from: B, msg: refused });
    drain(&mut a);
    assert!(matches!(a.state(), State::TakenOver { .. }), "A stays down");
    // B recovers; A asks again (cured) and gets it.
    b.handle(Instant(5000 * MS), Input::Degraded { on: false });
    a.handle(Instant(6000 * MS), Input::Cured);
    let (_, req) = sends(&drain(&mut a)).remove(0);
    b.handle(Instant(6001 * MS), Input::Receive { from: A, msg: req });
    assert!(drain(&mut b).contains(&Action::Return { node: A }));
}

#[test]
fn concurrent_requests_and_two_faulty_nodes_are_refused() {
    // B takes A over; C asks too: refused (busy).
    let (_a, mut b, _id) = accepted(0);
    b.handle(Instant(MS), Input::Receive { from: 3, msg: Msg::Request { id: 3001, fault: "disk".into() } });
    let out = sends(&drain(&mut b));
    assert!(matches!(&out[..], [(3, Msg::Refuse { id: 3001, .. })]), "{out:?}");
    // A and B both faulty: B asked A first; A's request to B is refused.
    let (mut a, mut b) = (core(A, B), core(B, A));
    b.handle(Instant::ZERO, Input::Fault { kind: "disk".into() });
    drain(&mut b);
    a.handle(Instant::ZERO, Input::Fault { kind: "disk".into() });
    let (_, req) = sends(&drain(&mut a)).remove(0);
    b.handle(Instant(MS), Input::Receive { from: A, msg: req });
    assert!(matches!(&sends(&drain(&mut b))[..], [(A, Msg::Refuse { .. })]));
    // A second fault while a takeover is under way changes nothing.
    a.handle(Instant(2 * MS), Input::Fault { kind: "memory".into() });
    assert_eq!(drain(&mut a), vec![]);
}

#[test]
fn a_lost_request_is_resent_and_a_duplicate_is_answered_the_same() {
    let (mut a, mut b) = (core(A, B), core(B, A));
    a.handle(Instant::ZERO, Input::Fault { kind: "disk".into() });
    drain(&mut a); // lost
    assert_eq!(a.next_deadline(), Some(Instant(500 * MS)));
    a.handle(Instant(500 * MS), Input::Tick);
    let (_, req) = sends(&drain(&mut a)).remove(0);
    b.handle(Instant(501 * MS), Input::Receive { from: A, msg: req.clone() });
    let Action::Check { id, .. } = without_events(drain(&mut b))[0].clone() else { panic!() };
    // The same request again while being checked: nothing new.
    b.handle(Instant(502 * MS), Input::Receive { from: A, msg: req.clone() });
    assert_eq!(without_events(drain(&mut b)), vec![]);
    b.handle(Instant(503 * MS), Input::Checked { node: A, id, result: Ok(()) });
    drain(&mut b); // the Accept is lost
    a.handle(Instant(1000 * MS), Input::Tick);
    let (_, req) = sends(&drain(&mut a)).remove(0);
    b.handle(Instant(1001 * MS), Input::Receive { from: A, msg: req });
    let out = sends(&drain(&mut b));
    assert!(matches!(&out[..], [(A, Msg::Accept { countdown_ms: 4502, .. })]), "accepted again with the countdown left: {out:?}");
}

// ------------------------------------------------------------------ simulation

/// Two nodes exchange the takeover protocol over a network that loses,
/// duplicates and reorders messages; A restarts at random (keeping its
/// mark, as the agent saves it), B turns degraded and well again. Checked
/// at every step: A never clears its mark unless B returned its work for
/// that takeover (or had forgotten it), B never returns work while
/// degraded, and a forced A was told to stop only after its countdown.
/// After healing: the takeover and then the giveback complete.
#[test]
fn seeded_takeovers_and_givebacks_under_loss_and_restarts() {
    for seed in 1..=300u64 {
        run_seed(seed);
    }
}

fn run_seed(seed: u64) {
    let mut rng = Rng::new(seed);
    let loss = rng.range(0, 30) as f64 / 100.0;
    let dup = rng.range(0, 20) as f64 / 100.0;
    let mut a = core(A, B);
    let mut b = core(B, A);
    let mut saved: Option<Mark> = None;
    let mut net: Vec<(u64, NodeId, NodeId, Msg)> = Vec::new();
    let mut returned: Vec<u64> = Vec::new();
    let mut degraded = false;
    let (mut a_gone, mut cleared, mut drained) = (false, false, false);
    let mut now = 0u64;
    let mut faults = 0;
    a.handle(Instant(now), Input::Fault { kind: "disk".into() });
    let heal_at = 20_000 * MS;
    while now < 60_000 * MS {
        now += rng.range(1, 50) * MS;
        let healed = now >= heal_at;
        // Events.
        if !healed && rng.chance(0.01) {
            // A restarts (with its mark if it saved one).
            a = core(A, B);
            faults += 1;
            if let Some(m) = saved.clone() {
                a.handle(Instant(now), Input::Restore { mark: m });
            } else if !drained {
                a.handle(Instant(now), Input::Fault { kind: "disk".into() });
            }
            if a_gone {
                b.handle(Instant(now), Input::PeerJoined { node: A });
            }
        }
        if !healed && rng.chance(0.01) {
            degraded = !degraded;
            b.handle(Instant(now), Input::Degraded { on: degraded });
            faults += 1;
        }
        if healed && degraded {
            degraded = false;
            b.handle(Instant(now), Input::Degraded { on: false });
        }
        if drained && !a_gone && (healed || rng.chance(0.05)) {
            a_gone = true;
            b.handle(Instant(now), Input::PeerGone { node: A });
        }
        if a_gone && saved.is_some() && (healed || rng.chance(0.02)) {
            a.handle(Instant(now), Input::Cured);
        }
        // Deliver what is due, in random order.
        net.sort_by_key(|m| m.0);
        let due: Vec<(u64, NodeId, NodeId, Msg)> = net.iter().filter(|m| m.0 <= now).cloned().collect();
        net.retain(|m| m.0 > now);
        for (_, from, to, msg) in due {
            let t = if to == A { &mut a } else { &mut b };
            t.handle(Instant(now), Input::Receive { from, msg });
        }
        for t in [&mut a, &mut b] {
            if t.next_deadline().is_some_and(|d| d.0 <= now) {
                t.handle(Instant(now), Input::Tick);
            }
        }
        // Actions.
        let b_knows_a = b.taken_over().iter().any(|(n, _, _)| *n == A) || matches!(b.state(), State::TakingOver { .. });
        for (me, t) in [(A, &mut a), (B, &mut b)] {
            let acts: Vec<Action> = std::iter::from_fn(|| t.poll_action()).collect();
            for act in acts {
                match act {
                    Action::Send { to, msg } => {
                        if healed || !rng.chance(loss) {
                            let copies = if !healed && rng.chance(dup) { 2 } else { 1 };
                            for _ in 0..copies {
                                net.push((now + rng.range(1, 30) * MS, me, to, msg.clone()));
                            }
                        }
                    }
                    Action::Check { node, id } => {
                        // The runtime's check: fine unless B is degraded.
                        let result = if degraded { Err(Refusal::Degraded) } else { Ok(()) };
                        t.handle(Instant(now), Input::Checked { node, id, result });
                    }
                    Action::Drain { mark } => {
                        assert_eq!(me, A);
                        saved = Some(mark);
                        drained = true;
                    }
                    Action::Return { node } => {
                        assert_eq!((me, node), (B, A));
                        assert!(!degraded, "seed {seed}: B returned A's work while degraded");
                        returned.push(saved.as_ref().map(|m| m.id).unwrap_or(0));
                    }
                    Action::ClearMark => {
                        assert_eq!(me, A);
                        let id = saved.as_ref().map(|m| m.id).expect("a mark to clear");
                        assert!(returned.contains(&id) || !b_knows_a, "seed {seed}: A cleared its mark without a giveback");
                        saved = None;
                        cleared = true;
                    }
                    // The runtime saves the mark it is told to stay down for.
                    Action::StayDown { mark } => saved = Some(mark),
                    Action::Stop { .. } | Action::Force { .. } | Action::Event { .. } => {}
                }
            }
        }
        if cleared && now > heal_at {
            break;
        }
    }
    assert!(drained, "seed {seed}: A was never taken over (loss {loss}, dup {dup}, {faults} faults)");
    assert!(cleared, "seed {seed}: A never got its work back (loss {loss}, dup {dup}, {faults} faults; A {:?}, B {:?})", a.state(), b.taken_over());
}
