//! The runtime of the negotiated takeover (seed 002; docs/takeover.md):
//! `[takeover]` and the partner rule, the stay-down mark on disk, the
//! protocol's messages on the control channel (topic `takeover`), and the
//! core's actions carried out through the services core (standby, planned
//! moves) and the membership (a graceful leave, a critical failure). The
//! protocol itself is `baton_core::takeover`.
//!
//! **The partner** of a node is the node that would take most of its
//! groups: for each group that may run on the node, the next allowable node
//! after it in the group's list; the most frequent one, the lowest id on a
//! tie; without groups, the lowest other node. `takeover.partner` sets it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use baton_core::takeover::{Action, Config as CoreConfig, Input, Mark, Msg, Refusal, State, Takeover};
use baton_core::{Instant, NodeId};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::datapath::events::monotonic_ns;

pub const TOPIC: &str = "takeover";

pub use crate::config::takeover::TakeoverCfg;

/// The node that takes `node`'s work over (see the module docs).
pub fn partner_of(cfg: &Config, node: u32) -> Option<u32> {
    if node == cfg.node_id {
        if let Some(p) = cfg.takeover.partner {
            return Some(p);
        }
    }
    let mut all: Vec<u32> = cfg.peers.iter().map(|p| p.id).chain(std::iter::once(cfg.node_id)).collect();
    all.sort();
    let mut votes: BTreeMap<u32, u32> = BTreeMap::new();
    for g in &cfg.groups {
        let list = g.allowable(&all);
        if let Some(i) = list.iter().position(|n| *n == node) {
            if let Some(next) = list.iter().skip(i + 1).chain(list.iter().take(i)).find(|n| **n != node) {
                *votes.entry(*next).or_default() += 1;
            }
        }
    }
    let best = votes.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(n, _)| *n);
    best.or_else(|| all.into_iter().find(|n| *n != node))
}

/// A message of the `takeover` topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Protocol(Msg),
    /// An operator asks the receiver to have itself taken over.
    OperatorTakeover { reason: String },
    /// An operator asks the receiver to give back (or ask for) `node`'s work.
    OperatorGiveback { node: u32 },
    /// A node asks its partner to run a check against it (claim 24).
    Diagnose { check: String, address: std::net::SocketAddr, timeout_ms: u32 },
    Diagnosed { check: String, result: Result<(), PartnerCheckFailed> },
}

/// A check the partner ran against this node failed (`Frame::Diagnosed`):
/// the partner's text of its [`HealthError`](crate::services::health::HealthError).
/// On the wire it is that text alone (serde-transparent), as before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(transparent)]
#[error("{reason}")]
pub struct PartnerCheckFailed {
    pub reason: String,
}

impl From<crate::services::health::HealthError> for PartnerCheckFailed {
    fn from(e: crate::services::health::HealthError) -> Self {
        PartnerCheckFailed { reason: e.to_string() }
    }
}

/// Why an operator's `baton takeover` / `baton giveback` was refused here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error("node {node} is not a peer")]
    NotAPeer { node: u32 },
}

fn mark_file(cfg: &Config) -> PathBuf {
    cfg.paths.state_dir.join("takeover.json")
}

/// The stay-down mark a previous life left, if any.
pub fn load_mark(cfg: &Config) -> Option<Mark> {
    let text = std::fs::read_to_string(mark_file(cfg)).ok()?;
    match serde_json::from_str(&text) {
        Ok(m) => Some(m),
        Err(e) => {
            warn!(file = %mark_file(cfg).display(), "unreadable stay-down mark ({e}); ignored");
            None
        }
    }
}

fn save_mark(cfg: &Config, mark: Option<&Mark>) {
    let path = mark_file(cfg);
    match mark {
        None => {
            let _ = std::fs::remove_file(&path);
        }
        Some(m) => {
            let r = crate::statefile::write_json(&path, m, true);
            if let Err(e) = r {
                error!(file = %path.display(), "cannot save the stay-down mark: {e}");
            }
        }
    }
}

/// What the event loop must do after a takeover step.
#[derive(Debug, Default)]
pub struct Todo {
    /// Services inputs (standby, switchover).
    pub services: Vec<baton_core::services::Input>,
    /// Leave the cluster gracefully once drained (A, after `Drain`).
    pub leave_when_drained: bool,
    /// Stop clustering at once (S0): the partner forced this node down.
    pub stop: bool,
    /// Messages to send: (to, frame).
    pub send: Vec<(u32, Frame)>,
    /// A partner's diagnosis requests to run: (from, check, address, timeout).
    pub diagnose: Vec<(u32, String, std::net::SocketAddr, u32)>,
}

pub struct TakeoverRt {
    core: Takeover,
    cfg: Config,
    /// Draining: waiting until no group is held here, then leave.
    pub draining: bool,
    /// Health: checks failing now (name → fault kind).
    failing: BTreeMap<String, String>,
    /// Since when every check passes (the cure period runs).
    healthy_since: Option<u64>,
    /// B: the groups each taken-over node held (returned at giveback).
    their_groups: BTreeMap<NodeId, Vec<String>>,
    /// The membership states last seen (to tell joins and departures).
    last_states: BTreeMap<NodeId, baton_core::membership::NodeState>,
    /// A partner's diagnosis of this node: consecutive failures per check.
    diag_fails: BTreeMap<String, u32>,
}

impl TakeoverRt {
    /// A reload changed the groups (the partner stays: a reload that would
    /// change it is refused).
    pub fn set_groups(&mut self, groups: &[crate::config::groups::Group]) {
        self.cfg.groups = groups.to_vec();
    }

    pub fn new(cfg: &Config, incarnation: u64) -> TakeoverRt {
        let core = Takeover::new(CoreConfig {
            me: cfg.node_id,
            partner: partner_of(cfg, cfg.node_id),
            countdown_ns: cfg.takeover.countdown_ms as u64 * 1_000_000,
            resend_ns: (cfg.resend_ms as u64 * 10).max(200) * 1_000_000,
            id_base: incarnation,
        });
        let mut rt = TakeoverRt {
            core,
            cfg: cfg.clone(),
            draining: false,
            failing: BTreeMap::new(),
            healthy_since: None,
            their_groups: BTreeMap::new(),
            last_states: BTreeMap::new(),
            diag_fails: BTreeMap::new(),
        };
        if let Some(mark) = load_mark(cfg) {
            warn!(by = mark.by, fault = %mark.fault, "this node was taken over: it stays down (no group runs here) until giveback");
            rt.core.handle(Instant(monotonic_ns()), Input::Restore { mark });
        }
        rt
    }

    pub fn next_deadline_ns(&self) -> Option<u64> {
        let cure = self.healthy_since.filter(|_| self.cfg.takeover.auto_giveback).map(|t| t + self.cfg.takeover.cure_ms as u64 * 1_000_000);
        [self.core.next_deadline().map(|i| i.0), cure].into_iter().flatten().min()
    }

    pub fn partner(&self) -> Option<u32> {
        partner_of(&self.cfg, self.cfg.node_id)
    }

    /// For `baton status`.
    pub fn status(&self) -> baton_state::TakeoverStatus {
        let name = |n: u32| if n == self.cfg.node_id { self.cfg.node_name.clone() } else { self.cfg.peer_name(n) };
        let now = monotonic_ns();
        let mut v = baton_state::TakeoverStatus {
            state: String::new(),
            partner: None,
            node: None,
            fault: None,
            forced: None,
            why: None,
            countdown_left_ms: None,
            partner_of_this_node: self.partner().map(name),
            taken_over: self.core.taken_over().into_iter().map(|(n, f, forced)| baton_state::TakenOver { node: name(n), fault: f, forced }).collect(),
            failing_checks: self.failing.keys().cloned().collect(),
        };
        let state = match self.core.state() {
            State::Normal => "normal",
            State::Requested { to, fault } => {
                (v.partner, v.fault) = (Some(name(to)), Some(fault));
                "takeover requested"
            }
            State::Draining { by, fault } => {
                (v.partner, v.fault) = (Some(name(by)), Some(fault));
                "draining for takeover"
            }
            State::TakenOver { by, fault, forced } => {
                v.why = Some(format!("taken over by {} (fault: {fault}); no group runs here until giveback", name(by)));
                (v.partner, v.fault, v.forced) = (Some(name(by)), Some(fault), Some(forced));
                "taken over"
            }
            State::GivebackRequested { from } => {
                v.partner = Some(name(from));
                "giveback requested"
            }
            State::TakingOver { node, fault, deadline, forced } => {
                (v.node, v.fault, v.forced) = (Some(name(node)), Some(fault), Some(forced));
                v.countdown_left_ms = Some(deadline.0.saturating_sub(now) / 1_000_000);
                "takeover in progress"
            }
        };
        v.state = state.to_string();
        v
    }

    fn feed(&mut self, input: Input, ctx: &Ctx2) -> Todo {
        self.core.handle(Instant(monotonic_ns()), input);
        self.drain(ctx)
    }

    /// The membership state changed: joins and departures of nodes.
    pub fn on_state(&mut self, s: &baton_core::membership::ClusterState, ctx: &Ctx2) -> Todo {
        use baton_core::membership::NodeState as N;
        let mut todo = Todo::default();
        let now: BTreeMap<NodeId, N> = s.nodes.iter().map(|(n, e)| (*n, e.state)).collect();
        for (n, st) in &now {
            if *n == self.cfg.node_id {
                continue;
            }
            let before = self.last_states.get(n).copied().unwrap_or(N::Inactive);
            if before != N::Joined && *st == N::Joined {
                merge(&mut todo, self.feed(Input::PeerJoined { node: *n }, ctx));
            }
            if matches!(before, N::Joined | N::Leaving | N::Joining) && matches!(st, N::Inactive | N::ForcedLeaving) {
                merge(&mut todo, self.feed(Input::PeerGone { node: *n }, ctx));
            }
        }
        self.last_states = now;
        todo
    }

    pub fn receive(&mut self, from: u32, frame: Frame, ctx: &Ctx2) -> Todo {
        match frame {
            Frame::Protocol(msg) => self.feed(Input::Receive { from, msg }, ctx),
            Frame::OperatorTakeover { reason } => {
                info!(from, reason, "an operator asks for this node's takeover");
                self.feed(Input::Fault { kind: "operator".into() }, ctx)
            }
            Frame::OperatorGiveback { node } => self.feed(Input::Giveback { node }, ctx),
            Frame::Diagnose { check, address, timeout_ms } => {
                // Run off the loop (the event loop spawns it); the answer
                // goes back as `Diagnosed`.
                Todo { diagnose: vec![(from, check, address, timeout_ms)], ..Default::default() }
            }
            Frame::Diagnosed { check, result } => {
                let Some(c) = self.cfg.health.iter().find(|c| c.name == check).cloned() else { return Todo::default() };
                let n = self.diag_fails.entry(check.clone()).or_default();
                match result {
                    Ok(()) => {
                        *n = 0;
                        self.health(crate::services::health::HealthEvent::Recovered { check }, ctx)
                    }
                    Err(PartnerCheckFailed { reason }) => {
                        *n += 1;
                        if *n == c.threshold {
                            self.health(crate::services::health::HealthEvent::Fault { check, fault: c.fault, reason }, ctx)
                        } else {
                            Todo::default()
                        }
                    }
                }
            }
        }
    }

    /// A health check crossed its threshold, or recovered.
    pub fn health(&mut self, ev: crate::services::health::HealthEvent, ctx: &Ctx2) -> Todo {
        let me = self.cfg.node_id;
        match ev {
            crate::services::health::HealthEvent::Fault { check, fault, reason } => {
                error!(check = %check, fault = %fault, reason = %reason, "fault detected: asking the partner to take this node over");
                crate::eventlog::record(&self.cfg.paths.events_log(), serde_json::json!({"event": "fault", "node": me, "check": check, "fault": fault, "reason": reason}));
                self.failing.insert(check, fault.clone());
                self.healthy_since = None;
                let mut t = self.feed(Input::Degraded { on: true }, ctx);
                merge(&mut t, self.feed(Input::Fault { kind: fault }, ctx));
                t
            }
            crate::services::health::HealthEvent::Recovered { check } => {
                if self.failing.remove(&check).is_some() {
                    info!(check = %check, "health check passes again");
                }
                if self.failing.is_empty() && self.healthy_since.is_none() {
                    self.healthy_since = Some(monotonic_ns());
                    return self.feed(Input::Degraded { on: false }, ctx);
                }
                Todo::default()
            }
        }
    }

    /// An operator (this node's control socket).
    pub fn operator_takeover(&mut self, node: u32, reason: &str, ctx: &Ctx2) -> Result<Todo, OperatorError> {
        if node == self.cfg.node_id {
            info!(reason, "an operator asks for this node's takeover");
            return Ok(self.feed(Input::Fault { kind: "operator".into() }, ctx));
        }
        if !self.cfg.peers.iter().any(|p| p.id == node) {
            return Err(OperatorError::NotAPeer { node });
        }
        let mut t = Todo::default();
        t.send.push((node, Frame::OperatorTakeover { reason: reason.to_string() }));
        Ok(t)
    }

    pub fn operator_giveback(&mut self, node: u32, ctx: &Ctx2) -> Result<Todo, OperatorError> {
        let mine = node == self.cfg.node_id || self.core.taken_over().iter().any(|(n, _, _)| *n == node);
        if mine {
            return Ok(self.feed(Input::Giveback { node }, ctx));
        }
        if !self.cfg.peers.iter().any(|p| p.id == node) {
            return Err(OperatorError::NotAPeer { node });
        }
        let mut t = Todo::default();
        t.send.push((node, Frame::OperatorGiveback { node }));
        Ok(t)
    }

    pub fn tick(&mut self, ctx: &Ctx2) -> Todo {
        let now = monotonic_ns();
        let cured = self.cfg.takeover.auto_giveback
            && self.healthy_since.is_some_and(|t| now >= t + self.cfg.takeover.cure_ms as u64 * 1_000_000)
            && matches!(self.core.state(), State::TakenOver { .. });
        if cured {
            self.healthy_since = None;
            info!("health checks passed for the cure period: asking for the giveback");
            crate::eventlog::record(&self.cfg.paths.events_log(), serde_json::json!({"event": "fault_cured", "node": self.cfg.node_id}));
            return self.feed(Input::Cured, ctx);
        }
        self.feed(Input::Tick, ctx)
    }

    fn drain(&mut self, ctx: &Ctx2) -> Todo {
        let mut t = Todo::default();
        let me = self.cfg.node_id;
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Send { to, msg } => t.send.push((to, Frame::Protocol(msg))),
                Action::Check { node, id } => {
                    let groups: Vec<String> = ctx.registered.iter().filter(|(_, n)| *n == node).map(|(g, _)| g.clone()).collect();
                    let result = check_can_take_over(&self.cfg, node, ctx.joined_quorate, !self.failing.is_empty(), ctx.fencing_ok, &groups);
                    if result.is_ok() {
                        self.their_groups.insert(node, groups);
                    }
                    self.core.handle(Instant(monotonic_ns()), Input::Checked { node, id, result });
                }
                Action::Drain { mark } => {
                    warn!(by = mark.by, fault = %mark.fault, "the partner takes this node over: moving every group away, then leaving the cluster");
                    save_mark(&self.cfg, Some(&mark));
                    self.draining = true;
                    t.services.push(baton_core::services::Input::Standby { node: me, on: true });
                    t.leave_when_drained = true;
                }
                Action::StayDown { mark } => {
                    save_mark(&self.cfg, Some(&mark));
                    t.services.push(baton_core::services::Input::Standby { node: me, on: true });
                }
                Action::ClearMark => {
                    info!("giveback done: groups may run here again");
                    save_mark(&self.cfg, None);
                    t.services.push(baton_core::services::Input::Standby { node: me, on: false });
                }
                Action::Stop { by } => {
                    error!(by, "the partner forced this node down (it did not shut down within the countdown)");
                    t.stop = true;
                }
                Action::Force { node } => {
                    crate::eventlog::record(&self.cfg.paths.events_log(), serde_json::json!({"event": "alert", "kind": "takeover", "node": node, "reason": "the countdown expired with the node still up: forced down"}));
                }
                Action::Return { node } => {
                    let groups = self.their_groups.remove(&node).unwrap_or_default();
                    info!(node, ?groups, "giveback: returning the node's groups");
                    t.services.push(baton_core::services::Input::Standby { node, on: false });
                    for g in groups {
                        t.services.push(baton_core::services::Input::Switchover { service: g, to: Some(node) });
                    }
                }
                Action::Event { name, node, partner, detail } => {
                    info!(event = name, node, partner, detail, "takeover");
                    crate::eventlog::record(
                        &self.cfg.paths.events_log(),
                        serde_json::json!({"event": name, "node": node, "partner": partner, "detail": detail}),
                    );
                }
            }
        }
        t
    }
}

fn merge(a: &mut Todo, b: Todo) {
    a.services.extend(b.services);
    a.leave_when_drained |= b.leave_when_drained;
    a.stop |= b.stop;
    a.send.extend(b.send);
    a.diagnose.extend(b.diagnose);
}

/// What the takeover runtime needs to know of the rest of the agent, as of
/// now.
pub struct Ctx2 {
    /// This node is a joined member of a quorate cluster.
    pub joined_quorate: bool,
    /// Shared disks: this node's key is registered (true without disks).
    pub fencing_ok: bool,
    /// Every registered group and the node it runs on.
    pub registered: Vec<(String, u32)>,
}

/// Partner diagnosis: every `by = "partner"` check of this node is sent to
/// the partner every interval (its answer comes back as `Diagnosed`).
pub fn partner_checks(cfg: &Config) -> Vec<(String, std::net::SocketAddr, u32, u32)> {
    cfg.health
        .iter()
        .filter_map(|c| match c.kind {
            crate::services::health::CheckKind::Reachable { address, by_partner: true } => Some((c.name.clone(), address, c.interval_ms, c.timeout_ms)),
            _ => None,
        })
        .collect()
}

/// Runs a partner's diagnosis request (a TCP connect to the address).
pub async fn diagnose(address: std::net::SocketAddr, timeout_ms: u32) -> Result<(), crate::services::health::HealthError> {
    crate::services::health::reachable(address, Duration::from_millis(timeout_ms as u64)).await
}

/// B's check (S2.2, claim 27), given the facts.
pub fn check_can_take_over(cfg: &Config, node: u32, joined_quorate: bool, degraded: bool, fencing_ok: bool, groups_on_node: &[String]) -> Result<(), Refusal> {
    if degraded {
        return Err(Refusal::Degraded);
    }
    if !joined_quorate {
        return Err(Refusal::NotJoinedQuorate);
    }
    if !fencing_ok {
        return Err(Refusal::NoDiskAccess);
    }
    let mut all: Vec<u32> = cfg.peers.iter().map(|p| p.id).chain(std::iter::once(cfg.node_id)).collect();
    all.sort();
    let mine: BTreeSet<&str> = groups_on_node.iter().map(String::as_str).collect();
    for g in cfg.groups.iter().filter(|g| mine.contains(g.name.as_str())) {
        if !g.allowable(&all).contains(&cfg.node_id) {
            return Err(Refusal::GroupNotAllowed { group: g.name.clone() });
        }
    }
    let _ = node;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Diagnosed` carries the partner's failure as its text alone, as it
    /// did when the field held a plain string error: agents of both
    /// versions understand each other.
    #[test]
    fn a_diagnosis_failure_is_its_text_on_the_wire() {
        let f = Frame::Diagnosed { check: "web".into(), result: Err(PartnerCheckFailed { reason: "10.0.0.1:80: no answer within 200 ms".into() }) };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v, serde_json::json!({"Diagnosed": {"check": "web", "result": {"Err": "10.0.0.1:80: no answer within 200 ms"}}}));
        assert_eq!(serde_json::from_value::<Frame>(v).unwrap(), f);
        let e = crate::services::health::HealthError::NoAnswer { address: "10.0.0.1:80".parse().unwrap(), ms: 200 };
        assert_eq!(PartnerCheckFailed::from(e).to_string(), "10.0.0.1:80: no answer within 200 ms");
    }

    #[test]
    fn operator_error_names_the_node() {
        assert_eq!(OperatorError::NotAPeer { node: 7 }.to_string(), "node 7 is not a peer");
    }
}
