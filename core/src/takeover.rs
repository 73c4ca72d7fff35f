//! Negotiated graceful takeover and giveback (seed 002, S2.1–S2.9;
//! docs/takeover.md).
//!
//! A node that diagnoses a fault in itself (a health check crossed its
//! threshold, or an operator's `baton takeover`) does not wait to be
//! declared dead: it asks its partner to take its work over. One
//! [`Takeover`] runs on every node and plays both roles:
//!
//! * **A, the faulty node**: [`Input::Fault`] → `Request { fault }` to its
//!   partner (S2.1–S2.2). On `Refuse` it stays up (alert). On `Accept` it
//!   drains ([`Action::Drain`]: the runtime moves every group of this node
//!   away — with the overlap handover where configured —, saves the
//!   stay-down mark, and leaves the cluster gracefully; S2.3). A restarted A
//!   that finds its mark ([`Input::Restore`]) stays down: it joins, but
//!   holds no group ([`Action::StayDown`]) and says why in status. Once
//!   cured ([`Input::Cured`]: its health checks passed for the cure period)
//!   or told by an operator ([`Input::Giveback`]), it asks for its work back
//!   (`GivebackRequest`, S2.8) and, when `GivebackDone` comes, clears its
//!   mark ([`Action::ClearMark`]).
//! * **B, the partner**: on `Request` it asks the runtime whether it can
//!   take over ([`Action::Check`]: healthy, joined, quorate, every group of A
//!   allowed here, the disks reachable; S2.2, claim 27), and refuses with
//!   the reason or accepts and starts the **countdown** (S2.5). A's exit is
//!   confirmed by the membership ([`Input::PeerGone`]: the absence of its
//!   heartbeat after its graceful leave, S2.6). If A still runs when the
//!   countdown expires, B forces it down ([`Action::Force`]: A is told to
//!   stop at once, which it does with a distress, so the others force it
//!   out and fence it; S2.5). While A is marked down and comes back, B
//!   reminds it to stay down every `stay_down_ns` (S2.7). On A's
//!   `GivebackRequest` B returns A's groups ([`Action::Return`], a planned
//!   move) unless B itself is degraded (then it refuses and A asks again).
//! * A node that cannot negotiate is simply failed over (S2.9): nothing here
//!   stands in the way of the membership's forced leave.
//!
//! Messages are idempotent and carry the id of the takeover they belong to;
//! requests are resent until answered, so a lost message delays, never
//! breaks, a takeover.

use std::collections::{BTreeMap, VecDeque};

use crate::{Instant, NodeId};

/// Identifies one takeover (chosen by A: unique across its lives).
pub type TakeoverId = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub me: NodeId,
    /// Who takes this node's work over when it is faulty.
    pub partner: Option<NodeId>,
    /// B's countdown from its `Accept` to forcing A down.
    pub countdown_ns: u64,
    /// Period of resending a request that was not answered, and of B's
    /// stay-down reminders.
    pub resend_ns: u64,
    /// Seed of takeover ids (the incarnation: unique across lives).
    pub id_base: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Msg {
    /// A → B: take over for me; my fault is of this kind.
    Request { id: TakeoverId, fault: String },
    /// B → A: not now, and why.
    Refuse { id: TakeoverId, reason: String },
    /// B → A: shut down; I take over (countdown started).
    Accept { id: TakeoverId, countdown_ms: u64 },
    /// B → A: the countdown expired: stop now.
    Force { id: TakeoverId },
    /// B → A: you were taken over; stay down until giveback.
    StayDown { id: TakeoverId, fault: String },
    /// A → B: I am cured (or an operator says so): give my work back.
    GivebackRequest { id: TakeoverId },
    /// B → A: done, your groups are back (or on their way).
    GivebackDone { id: TakeoverId },
    /// B → A: not now (B is degraded, or knows no takeover of A).
    GivebackRefused { id: TakeoverId, reason: String },
}

/// The stay-down mark a taken-over node keeps (saved across restarts).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Mark {
    pub id: TakeoverId,
    pub by: NodeId,
    pub fault: String,
    /// The partner forced it down (it did not shut down in time).
    pub forced: bool,
}

/// Why B's check ([`Action::Check`]) refuses to take a node's work over
/// (S2.2, claim 27). Its text goes to the partner in [`Msg::Refuse`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this node is degraded itself (a health check fails)")]
    Degraded,
    #[error("this node is not a joined member of a quorate cluster")]
    NotJoinedQuorate,
    #[error("this node cannot reach the shared disks (its key is not registered)")]
    NoDiskAccess,
    #[error("group {group} may not run on this node")]
    GroupNotAllowed { group: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// This node diagnosed a fault of this kind (health checks), or an
    /// operator asked for its takeover (`baton takeover`, kind `operator`).
    Fault { kind: String },
    /// This node's health checks pass again (for the cure period).
    Cured,
    /// An operator: give this node's (or node `node`'s) work back.
    Giveback { node: NodeId },
    /// A restarted node found its stay-down mark.
    Restore { mark: Mark },
    Receive { from: NodeId, msg: Msg },
    /// The runtime's answer to [`Action::Check`].
    Checked { node: NodeId, id: TakeoverId, result: Result<(), Refusal> },
    /// This node is degraded (its own health checks fail), or well again.
    Degraded { on: bool },
    /// The membership: `node` left (its graceful leave finished and it went
    /// quiet), or was forced out.
    PeerGone { node: NodeId },
    /// The membership: `node` joined (again).
    PeerJoined { node: NodeId },
    /// The drain ([`Action::Drain`]) could not be done.
    DrainFailed { reason: String },
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send { to: NodeId, msg: Msg },
    /// B: can this node take `node`'s work over? Answer with `Checked`.
    Check { node: NodeId, id: TakeoverId },
    /// A: refuse new work, move every group away, save `mark`, leave the
    /// cluster gracefully (S2.3).
    Drain { mark: Mark },
    /// A: hold no group while marked down (and say why in status).
    StayDown { mark: Mark },
    /// A: the mark is cleared (giveback done): groups may come back here.
    ClearMark,
    /// A: stop at once (the partner forced it): a critical local failure.
    Stop { by: NodeId },
    /// B: the countdown expired with `node` still up: it is told to stop
    /// (and the membership forces it out when it does, or when it goes
    /// silent); raise an alert.
    Force { node: NodeId },
    /// B: return `node`'s groups to it (planned moves).
    Return { node: NodeId },
    /// For the event manager and the log: a named step with parameters.
    Event { name: &'static str, node: NodeId, partner: NodeId, detail: String },
}

/// What status shows.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum State {
    Normal,
    /// A: asked the partner, no answer yet.
    Requested { to: NodeId, fault: String },
    /// A: accepted, draining and leaving.
    Draining { by: NodeId, fault: String },
    /// A: down (taken over), waiting for giveback.
    TakenOver { by: NodeId, fault: String, forced: bool },
    /// A: asked for its work back.
    GivebackRequested { from: NodeId },
    /// B: taking over `node`; the countdown ends at `deadline`.
    TakingOver { node: NodeId, fault: String, deadline: Instant, forced: bool },
}

/// B's record of a node it took over.
#[derive(Clone, Debug)]
struct Over {
    id: TakeoverId,
    fault: String,
    /// The countdown's end while A is still up.
    deadline: Option<Instant>,
    forced: bool,
    gone: bool,
    next_reminder: Option<Instant>,
}

pub struct Takeover {
    cfg: Config,
    now: Instant,
    next_id: u64,
    state: State,
    /// A: the takeover in progress (id) and when to resend.
    current: Option<TakeoverId>,
    resend_at: Option<Instant>,
    /// A: the mark while down.
    mark: Option<Mark>,
    /// A: a fault whose takeover was refused: asked again at this time
    /// (ten resend periods later) while the fault lasts.
    retry_fault: Option<(String, Instant)>,
    /// B: nodes taken over (or being taken over) by this node.
    over: BTreeMap<NodeId, Over>,
    /// B: requests being checked.
    checking: BTreeMap<NodeId, (TakeoverId, String)>,
    degraded: bool,
    actions: VecDeque<Action>,
}

impl Takeover {
    pub fn new(cfg: Config) -> Takeover {
        let next_id = cfg.id_base;
        Takeover {
            cfg,
            now: Instant::ZERO,
            next_id,
            state: State::Normal,
            current: None,
            resend_at: None,
            mark: None,
            retry_fault: None,
            over: BTreeMap::new(),
            checking: BTreeMap::new(),
            degraded: false,
            actions: VecDeque::new(),
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// This node's own state (A's side), or B's when it takes a node over.
    pub fn state(&self) -> State {
        if !matches!(self.state, State::Normal) {
            return self.state.clone();
        }
        match self.over.iter().find(|(_, o)| !o.gone) {
            Some((n, o)) => State::TakingOver {
                node: *n,
                fault: o.fault.clone(),
                deadline: o.deadline.unwrap_or(self.now),
                forced: o.forced,
            },
            None => State::Normal,
        }
    }

    /// Nodes this node took over (B's side), with the fault and whether forced.
    pub fn taken_over(&self) -> Vec<(NodeId, String, bool)> {
        self.over.iter().filter(|(_, o)| o.gone).map(|(n, o)| (*n, o.fault.clone(), o.forced)).collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let b = self.over.values().flat_map(|o| [o.deadline.filter(|_| !o.gone && !o.forced), o.next_reminder]).flatten();
        self.resend_at.into_iter().chain(b).chain(self.retry_fault.as_ref().map(|r| r.1)).min()
    }

    fn send(&mut self, to: NodeId, msg: Msg) {
        self.actions.push_back(Action::Send { to, msg });
    }

    fn event(&mut self, name: &'static str, node: NodeId, partner: NodeId, detail: impl Into<String>) {
        self.actions.push_back(Action::Event { name, node, partner, detail: detail.into() });
    }

    fn new_id(&mut self) -> TakeoverId {
        self.next_id += 1;
        self.next_id
    }

    pub fn handle(&mut self, now: Instant, input: Input) {
        self.now = self.now.max(now);
        let me = self.cfg.me;
        match input {
            Input::Fault { kind } => self.fault(kind),
            Input::Cured => {
                self.retry_fault = None;
                if let Some(m) = self.mark.clone() {
                    self.ask_giveback(m);
                }
            }
            Input::Giveback { node } if node == me => {
                if let Some(m) = self.mark.clone() {
                    self.ask_giveback(m);
                }
            }
            Input::Giveback { node } => {
                // An operator on B gives `node`'s work back.
                if self.over.get(&node).is_some_and(|o| o.gone) {
                    self.give_back(node);
                }
            }
            Input::Restore { mark } => {
                self.state = State::TakenOver { by: mark.by, fault: mark.fault.clone(), forced: mark.forced };
                self.mark = Some(mark.clone());
                self.actions.push_back(Action::StayDown { mark });
            }
            Input::Receive { from, msg } => self.receive(from, msg),
            Input::Checked { node, id, result } => {
                if self.checking.get(&node).map(|(i, _)| *i) != Some(id) {
                    return;
                }
                let (_, fault) = self.checking.remove(&node).unwrap();
                match result {
                    Ok(()) => {
                        let countdown = self.cfg.countdown_ns;
                        self.over.insert(
                            node,
                            Over { id, fault: fault.clone(), deadline: Some(now.plus_ns(countdown)), forced: false, gone: false, next_reminder: None },
                        );
                        self.send(node, Msg::Accept { id, countdown_ms: countdown / 1_000_000 });
                        self.event("takeover_accepted", node, me, fault);
                    }
                    Err(refusal) => {
                        let reason = refusal.to_string();
                        self.send(node, Msg::Refuse { id, reason: reason.clone() });
                        self.event("takeover_refused", node, me, reason);
                    }
                }
            }
            Input::Degraded { on } => self.degraded = on,
            Input::PeerGone { node } => {
                if let Some(o) = self.over.get_mut(&node) {
                    if !o.gone {
                        o.gone = true;
                        o.deadline = None;
                        o.next_reminder = None;
                        let (fault, forced) = (o.fault.clone(), o.forced);
                        self.event("takeover_done", node, me, format!("{fault}{}", if forced { " (forced)" } else { "" }));
                    }
                }
            }
            Input::PeerJoined { node } => {
                // A taken-over node is back: remind it to stay down (at once,
                // then periodically).
                if let Some(o) = self.over.get_mut(&node) {
                    if o.gone {
                        o.next_reminder = Some(now);
                    }
                }
            }
            Input::DrainFailed { reason } => {
                if let State::Draining { by, .. } = self.state.clone() {
                    self.event("takeover_drain_failed", me, by, reason);
                }
            }
            Input::Tick => {}
        }
        self.timers();
    }

    fn fault(&mut self, kind: String) {
        let me = self.cfg.me;
        match &self.state {
            State::Normal => {}
            // Already asked, draining or down: one takeover at a time.
            _ => return,
        }
        self.retry_fault = None;
        let Some(to) = self.cfg.partner else {
            self.event("takeover_impossible", me, me, format!("{kind}: no partner node"));
            return;
        };
        let id = self.new_id();
        self.current = Some(id);
        self.state = State::Requested { to, fault: kind.clone() };
        self.resend_at = Some(self.now.plus_ns(self.cfg.resend_ns));
        self.send(to, Msg::Request { id, fault: kind.clone() });
        self.event("takeover_requested", me, to, kind);
    }

    fn ask_giveback(&mut self, m: Mark) {
        if matches!(self.state, State::GivebackRequested { .. }) {
            return;
        }
        self.state = State::GivebackRequested { from: m.by };
        self.current = Some(m.id);
        self.resend_at = Some(self.now.plus_ns(self.cfg.resend_ns));
        self.send(m.by, Msg::GivebackRequest { id: m.id });
        self.event("giveback_requested", self.cfg.me, m.by, m.fault.clone());
    }

    fn give_back(&mut self, node: NodeId) {
        let me = self.cfg.me;
        if let Some(o) = self.over.remove(&node) {
            self.actions.push_back(Action::Return { node });
            self.send(node, Msg::GivebackDone { id: o.id });
            self.event("giveback_done", node, me, o.fault);
        }
    }

    fn receive(&mut self, from: NodeId, msg: Msg) {
        let me = self.cfg.me;
        match msg {
            // ----- B's side
            Msg::Request { id, fault } => {
                if let Some(o) = self.over.get(&from) {
                    if o.id == id && !o.gone {
                        // A resent request we accepted: accept again.
                        let left = o.deadline.map(|d| d.since(self.now) / 1_000_000).unwrap_or(0);
                        self.send(from, Msg::Accept { id, countdown_ms: left });
                        return;
                    }
                    if o.gone {
                        // Taken over already (it lost its mark): it stays down
                        // until giveback; a new takeover would lose the old one.
                        let (oid, ofault) = (o.id, o.fault.clone());
                        self.send(from, Msg::StayDown { id: oid, fault: ofault });
                        return;
                    }
                }
                if self.checking.get(&from).is_some_and(|(i, _)| *i == id) {
                    return; // being checked
                }
                let busy = self.over.iter().any(|(n, o)| *n != from && !o.gone) || !matches!(self.state, State::Normal);
                let reason = if self.degraded {
                    Some("the partner is degraded itself (its health checks fail)".to_string())
                } else if busy {
                    Some("the partner is busy with another takeover, or taken over itself".to_string())
                } else {
                    None
                };
                if let Some(reason) = reason {
                    self.send(from, Msg::Refuse { id, reason: reason.clone() });
                    self.event("takeover_refused", from, me, reason);
                    return;
                }
                self.checking.insert(from, (id, fault));
                self.actions.push_back(Action::Check { node: from, id });
            }
            Msg::GivebackRequest { id } => {
                match self.over.get(&from) {
                    Some(o) if !o.gone => {
                        let reason = "the takeover of this node is still under way".to_string();
                        self.send(from, Msg::GivebackRefused { id, reason: reason.clone() });
                        self.event("giveback_refused", from, me, reason);
                    }
                    // (Whatever id it asks with: this node holds its work.)
                    Some(_) => {
                        if self.degraded {
                            let reason = "the partner is degraded: no giveback now".to_string();
                            self.send(from, Msg::GivebackRefused { id, reason: reason.clone() });
                            self.event("giveback_refused", from, me, reason);
                        } else {
                            self.give_back(from);
                        }
                    }
                    // Not (or no longer) known here (this node restarted
                    // since): nothing holds A down any more.
                    _ => self.send(from, Msg::GivebackDone { id }),
                }
            }
            // ----- A's side
            Msg::Refuse { id, reason } => {
                if self.current == Some(id) && matches!(self.state, State::Requested { .. }) {
                    if let State::Requested { fault, .. } = &self.state {
                        self.retry_fault = Some((fault.clone(), self.now.plus_ns(10 * self.cfg.resend_ns)));
                    }
                    self.state = State::Normal;
                    self.current = None;
                    self.resend_at = None;
                    self.event("takeover_refused_here", me, from, reason);
                }
            }
            Msg::Accept { id, .. } => {
                if self.current == Some(id) {
                    if let State::Requested { to, fault } = self.state.clone() {
                        self.resend_at = None;
                        self.state = State::Draining { by: to, fault: fault.clone() };
                        let mark = Mark { id, by: to, fault, forced: false };
                        self.mark = Some(mark.clone());
                        self.actions.push_back(Action::Drain { mark });
                    }
                }
            }
            Msg::Force { id } => {
                if self.current == Some(id) || self.mark.as_ref().is_some_and(|m| m.id == id) {
                    if let Some(m) = self.mark.as_mut() {
                        m.forced = true;
                    }
                    self.actions.push_back(Action::Stop { by: from });
                }
            }
            Msg::StayDown { id, fault } => {
                // The partner says this node was taken over: stay down, even
                // if the mark was lost.
                let mark = Mark { id, by: from, fault, forced: false };
                match &self.state {
                    State::TakenOver { .. } | State::GivebackRequested { .. } | State::Draining { .. } => {}
                    _ => {
                        self.state = State::TakenOver { by: from, fault: mark.fault.clone(), forced: false };
                        self.mark = Some(mark.clone());
                        self.actions.push_back(Action::StayDown { mark });
                    }
                }
            }
            Msg::GivebackDone { id } => {
                if self.mark.as_ref().is_some_and(|m| m.id == id) {
                    self.mark = None;
                    self.current = None;
                    self.resend_at = None;
                    self.state = State::Normal;
                    self.actions.push_back(Action::ClearMark);
                }
            }
            Msg::GivebackRefused { id, reason } => {
                if let (Some(m), State::GivebackRequested { .. }) = (self.mark.clone(), &self.state) {
                    if m.id == id {
                        // Ask again later.
                        self.state = State::TakenOver { by: m.by, fault: m.fault.clone(), forced: m.forced };
                        self.resend_at = None;
                        self.event("giveback_refused_here", self.cfg.me, from, reason);
                    }
                }
            }
        }
    }

    fn timers(&mut self) {
        let now = self.now;
        let me = self.cfg.me;
        if let Some((kind, at)) = self.retry_fault.clone() {
            if at <= now && matches!(self.state, State::Normal) {
                self.fault(kind);
            }
        }
        if self.resend_at.is_some_and(|t| t <= now) {
            self.resend_at = Some(now.plus_ns(self.cfg.resend_ns));
            match (&self.state, self.current) {
                (State::Requested { to, fault }, Some(id)) => {
                    let (to, fault) = (*to, fault.clone());
                    self.send(to, Msg::Request { id, fault });
                }
                (State::GivebackRequested { from }, Some(id)) => {
                    let from = *from;
                    self.send(from, Msg::GivebackRequest { id });
                }
                _ => self.resend_at = None,
            }
        }
        let nodes: Vec<NodeId> = self.over.keys().copied().collect();
        for n in nodes {
            let o = self.over.get_mut(&n).unwrap();
            if !o.gone && !o.forced && o.deadline.is_some_and(|d| d <= now) {
                o.forced = true;
                let id = o.id;
                self.send(n, Msg::Force { id });
                self.actions.push_back(Action::Force { node: n });
                self.event("takeover_forced", n, me, "the countdown expired with the node still up");
            }
            let o = self.over.get_mut(&n).unwrap();
            if o.gone && o.next_reminder.is_some_and(|t| t <= now) {
                o.next_reminder = Some(now.plus_ns(self.cfg.resend_ns));
                let (id, fault) = (o.id, o.fault.clone());
                self.send(n, Msg::StayDown { id, fault });
            }
        }
    }
}
