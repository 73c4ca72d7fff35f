//! Fencing of shared storage with SCSI-3 persistent reservations (D4), at
//! the fencing level of the transition framework (docs/fencing.md).
//!
//! One [`Fencing`] runs on every node that has a shared disk configured. It
//! is sans-IO: the membership driver feeds it the fencing level's
//! notifications ([`Input::Step`]) and the results of the persistent
//! reservation operations it asked for ([`Input::Done`]); it answers with
//! [`Action`]s: run an operation ([`Action::Run`]), acknowledge a step
//! ([`Action::Ack`]), or stop clustering here because this node's own key
//! is gone ([`Action::Fenced`]). The runtime carries the operations out
//! through SG_IO (`baton-scsi`) and reports facts ([`Outcome`]); every
//! decision is here.
//!
//! What each transition does at the fencing level:
//! * **join of this node**: register this node's key (REGISTER AND IGNORE
//!   EXISTING KEY) and, if the disk has no reservation yet, reserve it (the
//!   first node reserves); acknowledged once registered. A join of another
//!   node is acknowledged at once (that node registers itself).
//! * **forced leave of another node**: PREEMPT AND ABORT of its key. The
//!   step is acknowledged only once its key is gone (ours removed it, or a
//!   conflict shows another survivor did), so the transition never reaches
//!   storage, addresses or services before the failed node is fenced.
//!   Failures that may pass (a target that does not answer, a timeout, a
//!   busy device) are retried with a doubling backoff, and reported as
//!   waiting (`waiting()`, [`Action::Waiting`]) and once as an alert; an
//!   operator who switched the node off can confirm it fenced
//!   ([`Input::Confirm`], `baton fence confirm NODE`).
//! * **graceful leave of this node** (the fencing level is its last step):
//!   unregister; a leave of another node is acknowledged at once.
//! * **self-fencing**: a conflict that shows this node's key gone, a unit
//!   attention saying its registration was preempted, or the periodic check
//!   ([`Config::check_ns`], READ KEYS) not finding its key makes this node
//!   stop clustering at once ([`Action::Fenced`]).
//!
//! In a two-node cluster with a disk both sides of a partition keep quorum
//! and race to preempt each other: the target serializes the two PREEMPT
//! AND ABORTs, exactly one wins, and the loser's own command meets a
//! conflict with its key gone: it fences itself (docs/membership.md).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::membership::{Kind, Step, TransitionId};
use crate::{Instant, NodeId};

/// Identifies one operation this core asked the runtime to run.
pub type OpId = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub me: NodeId,
    /// Every configured node's reservation key (this node's included).
    pub keys: BTreeMap<NodeId, u64>,
    /// Period of the self-check (READ KEYS) while registered.
    pub check_ns: u64,
    /// First retry delay of an operation that could not complete; doubles
    /// up to `retry_max_ns`.
    pub retry_ns: u64,
    pub retry_max_ns: u64,
    /// Retries of an unregister before a graceful leave goes on anyway
    /// (with an alert: the key stays registered).
    pub leave_attempts: u32,
    /// An operation that has not answered after this long is reported
    /// waiting (and alerted); it keeps running (a SCSI command cannot be
    /// taken back).
    pub slow_ns: u64,
}

impl Config {
    pub fn new(me: NodeId, keys: BTreeMap<NodeId, u64>) -> Config {
        Config {
            me,
            keys,
            check_ns: 1_000_000_000,
            retry_ns: 100_000_000,
            retry_max_ns: 5_000_000_000,
            leave_attempts: 3,
            slow_ns: 10_000_000_000,
        }
    }
    fn key(&self, n: NodeId) -> u64 {
        self.keys.get(&n).copied().unwrap_or(0)
    }
}

/// An operation on the disk, for the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// REGISTER AND IGNORE EXISTING KEY with this node's key; then RESERVE
    /// if the disk has no reservation.
    Register,
    /// Unregister this node's key (not registered counts as done).
    Unregister,
    /// PREEMPT AND ABORT of `key` (node `victim`'s), with this node's key.
    Preempt { victim: NodeId, key: u64 },
    /// READ KEYS; and RESERVE if there is no reservation and this node is
    /// registered (a holder that left takes the reservation with it).
    Check,
}

/// What an operation found (facts; the decisions are the core's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done. For [`Op::Check`], with the keys registered now.
    Ok { keys: Option<BTreeSet<u64>> },
    /// RESERVATION CONFLICT; the keys registered right after it.
    Conflict { keys: BTreeSet<u64> },
    /// A unit attention said this node's registration was preempted or
    /// cleared (2A/05, 2A/03, 2A/04).
    Preempted,
    /// Not done now, may pass: no answer, timeout, transport error, not
    /// ready, busy. Retried.
    Unavailable { reason: String },
    /// Refused for good (illegal request, a device that lost PR support).
    /// Retried too (an operator may fix it), and alerted.
    Refused { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The fencing level of a transition is notified here.
    Step { id: TransitionId, step: Step },
    /// An operation ended.
    Done { op: OpId, outcome: Outcome },
    /// `node` (its life `incarnation`, or any life when `None`) is fenced
    /// already: an operator declares it (switched off, disconnected), or
    /// another survivor's preemption removed its key. Its pending
    /// preemption here is taken as done.
    Confirm { node: NodeId, incarnation: Option<u64> },
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Run { op: OpId, what: Op },
    /// Acknowledge the fencing level's step of a transition.
    Ack { id: TransitionId, step: Step },
    /// This node's key is gone: stop clustering now (S0, reason fenced).
    Fenced { why: String },
    /// Fencing of `node` cannot complete now (status; once per change of
    /// reason).
    Waiting { node: NodeId, reason: String },
    /// For the operator (logs, alert command), once per trouble.
    Alert { node: NodeId, reason: String },
    /// A fencing of `node` that was waiting completed (or was confirmed).
    Cleared { node: NodeId },
}

/// A step being worked on.
#[derive(Clone, Debug)]
struct Pending {
    id: TransitionId,
    step: Step,
    what: Op,
    /// The operation in flight, if any, and when it is slow.
    op: Option<OpId>,
    slow_at: Option<Instant>,
    /// Retry at this time (no operation in flight).
    retry_at: Option<Instant>,
    attempts: u32,
    waiting: Option<String>,
    alerted: bool,
}

pub struct Fencing {
    cfg: Config,
    now: Instant,
    next_op: OpId,
    /// Steps worked on, by transition.
    pending: BTreeMap<TransitionId, Pending>,
    /// This node's key is registered (a join's registration succeeded and
    /// no unregister since).
    registered: bool,
    /// The periodic check: in flight, and when the next one is due.
    check_op: Option<OpId>,
    next_check: Option<Instant>,
    fenced: bool,
    actions: VecDeque<Action>,
}

impl Fencing {
    pub fn new(cfg: Config) -> Fencing {
        Fencing {
            cfg,
            now: Instant::ZERO,
            next_op: 1,
            pending: BTreeMap::new(),
            registered: false,
            check_op: None,
            next_check: None,
            fenced: false,
            actions: VecDeque::new(),
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        if self.fenced {
            return None;
        }
        let retries = self.pending.values().filter_map(|p| p.retry_at.or(p.slow_at));
        retries.chain(self.next_check.filter(|_| self.check_op.is_none())).min()
    }

    /// Whether this node's key is registered (as far as this core knows).
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// The forced leaves whose fencing is under way here: (node, incarnation).
    pub fn fencing(&self) -> Vec<(NodeId, u64)> {
        self.pending.values().filter(|p| matches!(p.what, Op::Preempt { .. })).map(|p| (p.id.node, p.id.incarnation)).collect()
    }

    /// Fencings that cannot complete now: (node, reason).
    pub fn waiting(&self) -> Vec<(NodeId, String)> {
        self.pending.values().filter_map(|p| p.waiting.clone().map(|w| (p.id.node, w))).collect()
    }

    pub fn handle(&mut self, now: Instant, input: Input) {
        self.now = self.now.max(now);
        if self.fenced {
            return;
        }
        match input {
            Input::Step { id, step } => self.step(id, step),
            Input::Done { op, outcome } => self.done(op, outcome),
            Input::Confirm { node, incarnation } => {
                let ids: Vec<TransitionId> = self
                    .pending
                    .values()
                    .filter(|p| p.id.node == node && incarnation.is_none_or(|i| i == p.id.incarnation) && matches!(p.what, Op::Preempt { .. }))
                    .map(|p| p.id)
                    .collect();
                for id in ids {
                    self.complete(id);
                }
            }
            Input::Tick => {}
        }
        self.timers();
    }

    fn step(&mut self, id: TransitionId, step: Step) {
        if let Some(p) = self.pending.get(&id) {
            if p.step == step {
                return; // notified again: already at work
            }
        }
        let me = self.cfg.me;
        let what = match (id.kind, id.node == me) {
            (Kind::Join, true) => Op::Register,
            (Kind::Leave, true) => Op::Unregister,
            (Kind::ForcedLeave, false) => Op::Preempt { victim: id.node, key: self.cfg.key(id.node) },
            // A join or graceful leave of another node: that node registers
            // or unregisters itself. (A forced leave of this node is never
            // notified here: a node forced out is no participant.)
            _ => {
                self.actions.push_back(Action::Ack { id, step });
                if id.kind == Kind::Leave {
                    // A holder that left took the reservation with it: check
                    // soon (the check reserves again).
                    self.check_soon();
                }
                return;
            }
        };
        if matches!(what, Op::Preempt { key: 0, .. }) {
            // No key known for that node: nothing of it is registered.
            self.actions.push_back(Action::Ack { id, step });
            return;
        }
        self.pending.insert(id, Pending { id, step, what, op: None, slow_at: None, retry_at: None, attempts: 0, waiting: None, alerted: false });
        self.run(id);
    }

    fn run(&mut self, id: TransitionId) {
        let op = self.next_op;
        self.next_op += 1;
        let slow_at = self.now.plus_ns(self.cfg.slow_ns);
        let Some(p) = self.pending.get_mut(&id) else { return };
        p.op = Some(op);
        p.slow_at = Some(slow_at);
        p.retry_at = None;
        p.attempts += 1;
        self.actions.push_back(Action::Run { op, what: p.what.clone() });
    }

    fn check_soon(&mut self) {
        if self.registered {
            let soon = self.now.plus_ns(self.cfg.retry_ns);
            self.next_check = Some(self.next_check.map_or(soon, |t| t.min(soon)));
        }
    }

    fn timers(&mut self) {
        let now = self.now;
        let due: Vec<TransitionId> =
            self.pending.values().filter(|p| p.op.is_none() && p.retry_at.is_some_and(|t| t <= now)).map(|p| p.id).collect();
        for id in due {
            self.run(id);
        }
        let slow: Vec<TransitionId> =
            self.pending.values().filter(|p| p.op.is_some() && p.slow_at.is_some_and(|t| t <= now)).map(|p| p.id).collect();
        for id in slow {
            let ms = self.cfg.slow_ns / 1_000_000;
            let Some(p) = self.pending.get_mut(&id) else { continue };
            p.slow_at = None;
            let (node, reason) = (p.id.node, format!("no answer from the disk within {ms} ms"));
            p.waiting = Some(reason.clone());
            self.actions.push_back(Action::Waiting { node, reason: reason.clone() });
            if !p.alerted {
                p.alerted = true;
                self.actions.push_back(Action::Alert { node, reason });
            }
        }
        if self.registered && self.check_op.is_none() && self.next_check.is_some_and(|t| t <= now) {
            let op = self.next_op;
            self.next_op += 1;
            self.check_op = Some(op);
            self.next_check = None;
            self.actions.push_back(Action::Run { op, what: Op::Check });
        }
    }

    fn fence_self(&mut self, why: String) {
        if !self.fenced {
            self.fenced = true;
            self.registered = false;
            self.actions.push_back(Action::Fenced { why });
        }
    }

    fn complete(&mut self, id: TransitionId) {
        if let Some(p) = self.pending.remove(&id) {
            if p.waiting.is_some() {
                self.actions.push_back(Action::Cleared { node: p.id.node });
            }
            self.actions.push_back(Action::Ack { id: p.id, step: p.step });
        }
    }

    /// An operation could not complete: retry later, and say so.
    fn retry(&mut self, id: TransitionId, reason: String, alert: bool) {
        let (retry, max) = (self.cfg.retry_ns, self.cfg.retry_max_ns);
        let now = self.now;
        let Some(p) = self.pending.get_mut(&id) else { return };
        let delay = retry.saturating_mul(1u64 << p.attempts.saturating_sub(1).min(20)).min(max);
        p.op = None;
        p.slow_at = None;
        p.retry_at = Some(now.plus_ns(delay));
        let node = p.id.node;
        if p.waiting.as_deref() != Some(reason.as_str()) {
            p.waiting = Some(reason.clone());
            self.actions.push_back(Action::Waiting { node, reason: reason.clone() });
        }
        if alert && !p.alerted {
            p.alerted = true;
            self.actions.push_back(Action::Alert { node, reason });
        }
    }

    fn done(&mut self, op: OpId, outcome: Outcome) {
        if self.check_op == Some(op) {
            self.check_op = None;
            self.next_check = Some(self.now.plus_ns(self.cfg.check_ns));
            match outcome {
                Outcome::Ok { keys: Some(keys) } | Outcome::Conflict { keys } => {
                    if self.registered && !keys.contains(&self.cfg.key(self.cfg.me)) {
                        self.fence_self("this node's key is no longer registered (READ KEYS)".into());
                    }
                }
                Outcome::Preempted => self.fence_self("the disk reports this node's registration preempted".into()),
                // A check that cannot reach the disk proves nothing either
                // way; the next one tries again.
                Outcome::Ok { keys: None } | Outcome::Unavailable { .. } | Outcome::Refused { .. } => {}
            }
            return;
        }
        let Some(p) = self.pending.values().find(|p| p.op == Some(op)).cloned() else {
            return; // a result of a step that was confirmed or replaced
        };
        let mine = self.cfg.key(self.cfg.me);
        match (&p.what, outcome) {
            (Op::Register, Outcome::Ok { .. }) => {
                self.registered = true;
                self.next_check = Some(self.now.plus_ns(self.cfg.check_ns));
                self.complete(p.id);
            }
            (Op::Unregister, Outcome::Ok { .. }) => {
                self.registered = false;
                self.next_check = None;
                self.complete(p.id);
            }
            (Op::Unregister, Outcome::Conflict { keys }) if !keys.contains(&mine) => {
                // Not registered (any more): that is what a leave wants.
                self.registered = false;
                self.next_check = None;
                self.complete(p.id);
            }
            (Op::Unregister, Outcome::Preempted) => {
                self.registered = false;
                self.next_check = None;
                self.complete(p.id);
            }
            (Op::Unregister, o) => {
                if p.attempts >= self.cfg.leave_attempts {
                    // A graceful leave goes on: the node stopped everything
                    // of its own; its key stays registered until a survivor
                    // or an operator removes it.
                    self.actions.push_back(Action::Alert {
                        node: self.cfg.me,
                        reason: format!("leaving with this node's key still registered ({})", describe(&o)),
                    });
                    self.registered = false;
                    self.next_check = None;
                    self.complete(p.id);
                } else {
                    self.retry(p.id, describe(&o), false);
                }
            }
            (Op::Preempt { .. }, Outcome::Ok { .. }) => self.complete(p.id),
            (Op::Preempt { key, .. }, Outcome::Conflict { keys }) => {
                if !keys.contains(&mine) {
                    // We lost: our own key was preempted (a two-node race,
                    // or we were fenced while hung).
                    self.fence_self("this node's key was preempted (RESERVATION CONFLICT on PREEMPT AND ABORT)".into());
                } else if !keys.contains(key) {
                    // Another survivor fenced it first.
                    self.complete(p.id);
                } else {
                    self.retry(p.id, "RESERVATION CONFLICT with both keys registered".into(), true);
                }
            }
            (Op::Register | Op::Preempt { .. }, Outcome::Preempted) => {
                self.fence_self("the disk reports this node's registration preempted".into());
            }
            (Op::Register, Outcome::Conflict { .. }) => self.retry(p.id, "RESERVATION CONFLICT on REGISTER".into(), true),
            // (A check is never a step's operation: it is `check_op`.)
            (Op::Check, _) => {}
            (_, o @ Outcome::Unavailable { .. }) => self.retry(p.id, describe(&o), p.attempts >= 2),
            (_, o @ Outcome::Refused { .. }) => self.retry(p.id, describe(&o), true),
        }
    }
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Ok { .. } => "done".into(),
        Outcome::Conflict { .. } => "RESERVATION CONFLICT".into(),
        Outcome::Preempted => "registration preempted".into(),
        Outcome::Unavailable { reason } | Outcome::Refused { reason } => reason.clone(),
    }
}
