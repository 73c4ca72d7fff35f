//! The thin runtime around the membership core: it feeds the core with
//! datapath peer events, control-channel messages, local subsystem
//! registrations and acknowledgements, and timer ticks, and carries out the
//! core's actions (messages, notifications, distress, halting). The protocol
//! itself is in `baton_core::membership`; nothing here decides anything.

use std::collections::BTreeMap;
use std::path::PathBuf;

use baton_core::membership::{
    Action, Barriers, Config as CoreConfig, HaltReason, Input, Kind, LevelSpec, Membership, SubsystemId,
};
use baton_core::{Instant, NodeId};
use serde_json::json;
use tracing::{error, info, warn};

use crate::channel::Channel;
use crate::events::monotonic_ns;
use crate::subsys::{kind_name, state_name, SubsysServer};

/// The agent's own parts register as these levels (lowest first): fencing
/// must be done before storage is taken over, storage before addresses,
/// addresses before services.
pub const BUILTIN_LEVELS: [(&str, u32); 4] = [("fencing", 10), ("storage", 20), ("addresses", 30), ("services", 40)];

/// `cluster.json` is rewritten at most this often while transitions are in
/// flight (a mass join changes the state of every node tens of times a
/// second, and each write is a new file and a rename); the latest state is
/// always written at the end of the period, and a state with no transition
/// in flight (the end of a burst), a halt and the end of a leave are written
/// at once.
pub const SNAPSHOT_EVERY_NS: u64 = 50_000_000;

/// Ids of external subsystems (over the Unix socket) start here.
pub const FIRST_EXTERNAL_SUBSYSTEM: SubsystemId = 100;

/// The subsystem id of the built-in fencing level (the first of
/// [`BUILTIN_LEVELS`]).
const FENCING_SID: SubsystemId = 1;

/// Fencing at the fencing level (docs/fencing.md): the core and the
/// executor of its operations on the shared disks.
pub struct FencingRt {
    core: baton_core::fencing::Fencing,
    exec: crate::fencing::Executor,
    events: PathBuf,
    /// When each forced leave's fencing step was notified here (for the
    /// `fenced` event's time).
    started: BTreeMap<baton_core::membership::TransitionId, u64>,
    /// Disks (name, device) for status.
    disks: Vec<(String, String)>,
}

impl FencingRt {
    pub fn new(cfg: &crate::config::Config, disks: Vec<crate::fencing::OpenDisk>) -> (FencingRt, tokio::sync::mpsc::Receiver<(baton_core::fencing::OpId, baton_core::fencing::Outcome)>) {
        let mut keys: BTreeMap<NodeId, u64> = cfg.peers.iter().map(|p| (p.id, cfg.disk_key(p.id))).collect();
        keys.insert(cfg.node_id, cfg.disk_key(cfg.node_id));
        let mut core_cfg = baton_core::fencing::Config::new(cfg.node_id, keys);
        core_cfg.check_ns = cfg.disks.iter().map(|d| d.check_interval_ms as u64).min().unwrap_or(1000) * 1_000_000;
        // Twice a command's timeout (then the kernel's error handling holds
        // the command, e.g. an iSCSI session in recovery).
        core_cfg.slow_ns = cfg.disks.iter().map(|d| d.timeout_ms as u64).max().unwrap_or(5000) * 2_000_000;
        let names = disks.iter().map(|d| (d.disk.name.clone(), d.disk.device.display().to_string())).collect();
        let (exec, rx) = crate::fencing::Executor::new(disks, cfg.disk_key(cfg.node_id));
        (
            FencingRt { core: baton_core::fencing::Fencing::new(core_cfg), exec, events: cfg.paths.events_log(), started: BTreeMap::new(), disks: names },
            rx,
        )
    }
}

/// What the caller must do after an input.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// S0.2: send the distress datagram on every link.
    SendDistress { reason: u32 },
    /// Clustering ended on this node.
    Halted { why: HaltReason },
    /// The graceful leave finished.
    Left,
    /// The whole cluster is being stopped (`baton stop --all`): leave, and
    /// do not start again.
    StopRequested,
}

pub struct ClusterDriver {
    core: Membership,
    me: NodeId,
    channel: Channel,
    subsys: SubsysServer,
    names: BTreeMap<NodeId, String>,
    builtin: BTreeMap<SubsystemId, &'static str>,
    external: BTreeMap<SubsystemId, String>,
    snapshot: PathBuf,
    /// When cluster.json was last written (monotonic ns), and whether a
    /// newer state waits for `last + SNAPSHOT_EVERY_NS`.
    snapshot_written_ns: Option<u64>,
    snapshot_dirty: bool,
    /// Local notifications not acknowledged yet, for status.
    in_flight: BTreeMap<(SubsystemId, NodeId, u64), (Kind, u32, u32)>,
    halted: Option<HaltReason>,
    messages_sent: u64,
    /// The resource groups (None when none is configured).
    pub svc: Option<crate::svc::ServiceManager>,
    /// Services-level graceful-leave notifications held until the node's
    /// services are drained (transferred).
    held_leaves: BTreeMap<NodeId, (SubsystemId, baton_core::membership::TransitionId, baton_core::membership::Step)>,
    /// Fencing of shared disks (None when no `[[disk]]` is configured: the
    /// fencing level then acknowledges at once).
    pub fencing: Option<FencingRt>,
}

impl ClusterDriver {
    pub fn new(
        core_cfg: CoreConfig,
        channel: Channel,
        subsys: SubsysServer,
        names: BTreeMap<NodeId, String>,
        snapshot: PathBuf,
    ) -> ClusterDriver {
        let me = core_cfg.me;
        let mut d = ClusterDriver {
            core: Membership::new(core_cfg),
            me,
            channel,
            subsys,
            names,
            builtin: BTreeMap::new(),
            external: BTreeMap::new(),
            snapshot,
            snapshot_written_ns: None,
            snapshot_dirty: false,
            in_flight: BTreeMap::new(),
            halted: None,
            messages_sent: 0,
            svc: None,
            held_leaves: BTreeMap::new(),
            fencing: None,
        };
        for (i, (name, level)) in BUILTIN_LEVELS.iter().enumerate() {
            let id = i as SubsystemId + 1;
            d.builtin.insert(id, name);
            d.core.handle(Instant(monotonic_ns()), Input::Register { subsystem: id, spec: LevelSpec { level: *level, barriers: Barriers::ONE } });
        }
        d
    }

    /// The control channel (for the runtime's parts that send on it).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The cluster state this node follows.
    pub fn state(&self) -> Option<&baton_core::membership::ClusterState> {
        self.core.state()
    }

    /// This node's membership state (this life's entry of the state it follows).
    pub fn my_state(&self) -> baton_core::membership::NodeState {
        self.core.my_state()
    }

    /// `node` finished a graceful leave (its heartbeats ending is no
    /// failure).
    pub fn left_gracefully(&self, node: u32) -> bool {
        self.core.state().is_some_and(|s| s.state_of(node) == baton_core::membership::NodeState::Inactive && !s.transitions.contains_key(&node))
    }

    /// This life of `node` (its `incarnation`) was a member and finished a
    /// graceful leave. A life that never joined (killed while it was still
    /// coming up) is not: its silence is reported as `peer_silent`.
    pub fn left_gracefully_in_life(&self, node: u32, incarnation: u64) -> bool {
        self.left_gracefully(node) && incarnation != 0 && self.core.state().and_then(|s| s.nodes.get(&node)).is_some_and(|e| e.incarnation == incarnation)
    }

    /// This node is a joined member of a quorate cluster.
    pub fn joined_quorate(&self) -> bool {
        self.core.my_state() == baton_core::membership::NodeState::Joined && self.core.state().is_some_and(|s| s.quorate)
    }

    /// Shared disks: this node's key is registered (true without disks).
    pub fn fencing_ok(&self) -> bool {
        self.fencing.as_ref().is_none_or(|f| f.core.registered())
    }

    pub fn name(&self, n: NodeId) -> String {
        self.names.get(&n).cloned().unwrap_or_else(|| format!("node{n}"))
    }

    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.halted.is_some() {
            return None;
        }
        let m = self.core.next_deadline().map(|i| i.0);
        let s = self.svc.as_ref().and_then(|s| s.next_deadline_ns());
        let w = self.snapshot_due_ns();
        let f = self.fencing.as_ref().and_then(|f| f.core.next_deadline()).map(|i| i.0);
        [m, s, w, f].into_iter().flatten().min()
    }

    /// The datapath heard `node` come up on `link` (a `link_up` or
    /// `peer_restarted` event): the control channel redials it now if it is
    /// ours to dial ([`Channel::peer_heard`]).
    pub fn peer_heard(&self, node: NodeId, link: Option<u32>) {
        self.channel.peer_heard(node, link.map(|l| l as usize));
    }

    pub fn register_external(&mut self, subsystem: SubsystemId, name: String, spec: LevelSpec) -> Vec<Effect> {
        info!(subsystem, name = %name, level = spec.level, "subsystem registered");
        self.external.insert(subsystem, name);
        self.handle(Input::Register { subsystem, spec })
    }

    pub fn deregister_external(&mut self, subsystem: SubsystemId) -> Vec<Effect> {
        if let Some(name) = self.external.remove(&subsystem) {
            info!(subsystem, name = %name, "subsystem deregistered");
        }
        self.in_flight.retain(|(s, _, _), _| *s != subsystem);
        self.handle(Input::Deregister { subsystem })
    }

    /// Feeds one input and carries out every resulting action.
    pub fn handle(&mut self, input: Input) -> Vec<Effect> {
        if self.halted.is_some() {
            return Vec::new();
        }
        if let Input::Ack { subsystem, id, .. } = &input {
            self.in_flight.remove(&(*subsystem, id.node, id.incarnation));
        }
        let starting = matches!(input, Input::Start);
        self.core.handle(Instant(monotonic_ns()), input);
        let mut urgent = false;
        let mut effects = Vec::new();
        let mut changed = starting;
        let mut encoded: Option<(baton_core::membership::Msg, std::sync::Arc<[u8]>)> = None;
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Send { to, msg } => {
                    self.messages_sent += 1;
                    if !matches!(self.channel.is_up(to), Ok(true)) {
                        continue;
                    }
                    // A broadcast comes as the same message to each node:
                    // encode it once.
                    let bytes = match &encoded {
                        Some((m, b)) if *m == msg => b.clone(),
                        _ => match Channel::encode(&msg) {
                            Ok(b) => {
                                encoded = Some((msg, b.clone()));
                                b
                            }
                            Err(e) => {
                                warn!("{e}");
                                continue;
                            }
                        },
                    };
                    let _ = self.channel.send_encoded(to, &bytes);
                }
                Action::Notify { subsystem, id, step, states } => {
                    changed = true;
                    if let Some(part) = self.builtin.get(&subsystem).copied() {
                        // The services level drives the resource groups:
                        // a forced leave recovers the node's services (and
                        // is acknowledged at once: recovery runs off the
                        // critical path); a graceful leave waits until its
                        // services were transferred. Fencing, storage and
                        // addresses have nothing of their own to do yet.
                        info!(part, node = %self.name(id.node), transition = kind_name(id.kind), level = step.level, barrier = step.barrier, "transition step");
                        if let (true, Some(f)) = (part == "fencing", self.fencing.as_mut()) {
                            // The fencing core acknowledges (at once, or once
                            // the victim is fenced).
                            if id.kind == Kind::ForcedLeave {
                                f.started.entry(id).or_insert_with(monotonic_ns);
                            }
                            f.core.handle(Instant(monotonic_ns()), baton_core::fencing::Input::Step { id, step });
                            for i in self.fencing_actions(false) {
                                self.core.handle(Instant(monotonic_ns()), i);
                            }
                            continue;
                        }
                        if let (true, Some(svc)) = (part == "services", self.svc.as_mut()) {
                            match id.kind {
                                Kind::ForcedLeave => svc.node_failed(id.node, id.incarnation, self.core.state(), &self.channel),
                                Kind::Leave => {
                                    self.held_leaves.insert(id.node, (subsystem, id, step));
                                    svc.node_leaving(id.node, &self.channel);
                                    continue;
                                }
                                Kind::Join => {}
                            }
                        }
                        self.core.handle(Instant(monotonic_ns()), Input::Ack { subsystem, id, step });
                    } else {
                        info!(subsystem, node = %self.name(id.node), transition = kind_name(id.kind), level = step.level, barrier = step.barrier, "notifying subsystem");
                        self.in_flight.insert((subsystem, id.node, id.incarnation), (id.kind, step.level, step.barrier));
                        self.subsys.notify(subsystem, id, step, &states);
                    }
                }
                Action::SendDistress { reason } => {
                    error!(reason, "critical local failure: sending distress to every node");
                    effects.push(Effect::SendDistress { reason });
                }
                Action::Terminate { subsystem, reason } => {
                    if !self.builtin.contains_key(&subsystem) {
                        self.subsys.terminate(subsystem, reason);
                    }
                }
                Action::Halt { why } => {
                    error!(?why, "clustering halted on this node");
                    self.halted = Some(why);
                    changed = true;
                    urgent = true;
                    effects.push(Effect::Halted { why });
                }
                Action::Left => {
                    info!("graceful leave finished");
                    changed = true;
                    urgent = true;
                    effects.push(Effect::Left);
                }
                Action::StateChanged { view } => {
                    changed = true;
                    tracing::debug!(?view, "view");
                }
                Action::TransitionCompleted { id, .. } => {
                    info!(node = %self.name(id.node), transition = kind_name(id.kind), "transition completed on every node");
                }
                Action::PeerFailed { node, distress } => {
                    warn!(node = %self.name(node), distress, "peer failure processed");
                }
                Action::PeerGone { node } => {
                    info!(node = %self.name(node), "a node that left gracefully went quiet");
                }
                Action::StopRequested => {
                    warn!("the cluster is being stopped (baton stop --all): leaving");
                    if let Some(svc) = self.svc.as_mut() {
                        svc.set_stopping();
                    }
                    effects.push(Effect::StopRequested);
                }
            }
        }
        if changed {
            if let Some(st) = self.core.state() {
                let live = st.transitions.values().map(|t| t.id).collect();
                self.subsys.retain_transitions(&live);
            }
            self.snapshot_changed(urgent);
        } else {
            self.flush_snapshot_if_due();
        }
        if self.halted.is_none() {
            self.services_follow(changed, &mut effects);
        }
        effects
    }

    /// After membership progress (`state_changed`): the services core gets
    /// the view; then the graceful leaves whose services are drained are
    /// acknowledged.
    fn services_follow(&mut self, state_changed: bool, effects: &mut Vec<Effect>) {
        let Some(svc) = self.svc.as_mut() else { return };
        if state_changed {
            if let Some(st) = self.core.state() {
                svc.on_state(st, &self.channel);
            }
        }
        let drained = svc.take_drained();
        let acks: Vec<_> = drained.iter().filter_map(|n| self.held_leaves.remove(n)).collect();
        for (subsystem, id, step) in acks {
            info!(node = %self.name(id.node), "services drained: the leave goes on");
            effects.extend(self.handle(Input::Ack { subsystem, id, step }));
        }
    }

    /// An input for the fencing core (an operation's outcome, a tick, an
    /// operator's confirmation), then whatever follows in membership.
    pub fn fencing_input(&mut self, input: baton_core::fencing::Input) -> Vec<Effect> {
        if self.halted.is_some() {
            return Vec::new();
        }
        let Some(f) = self.fencing.as_mut() else { return Vec::new() };
        let before = f.core.waiting();
        // A forced leave's fencing completed by our own operation is news
        // for the other survivors (FenceMsg).
        let ours = matches!(input, baton_core::fencing::Input::Done { .. });
        f.core.handle(Instant(monotonic_ns()), input);
        let mut effects = Vec::new();
        let inputs = self.fencing_actions(ours);
        // `baton status` shows a waiting fencing: write it out when it changes.
        if self.fencing.as_ref().is_some_and(|f| f.core.waiting() != before) {
            self.snapshot_changed(true);
        }
        for i in inputs {
            effects.extend(self.handle(i));
        }
        effects
    }

    /// `node` is fenced: an operator here says so (`baton fence confirm`,
    /// told to every peer), or a peer's notice (`FenceMsg`) says it fenced
    /// that life.
    pub fn fence_confirm(&mut self, node: NodeId, incarnation: Option<u64>, from_operator: bool) -> Vec<Effect> {
        if from_operator {
            let inc = incarnation.or_else(|| self.core.state().and_then(|s| s.nodes.get(&node)).map(|e| e.incarnation));
            if let Some(incarnation) = inc {
                self.broadcast_fenced(node, incarnation, true);
            }
        }
        self.fencing_input(baton_core::fencing::Input::Confirm { node, incarnation })
    }

    fn broadcast_fenced(&self, node: NodeId, incarnation: u64, by_operator: bool) {
        let msg = crate::fencing::FenceMsg::Fenced { node, incarnation, by_operator };
        for to in self.names.keys().copied().filter(|n| *n != self.me && *n != node) {
            self.channel.send_fence(to, &msg);
        }
    }

    /// Carries out the fencing core's actions; returns the membership
    /// inputs they make (acknowledgements, a self-fencing). `ours`: the
    /// completed fencings are this node's own doing (tell the others).
    fn fencing_actions(&mut self, ours: bool) -> Vec<Input> {
        use baton_core::fencing::Action as F;
        let mut inputs = Vec::new();
        let names = self.names.clone();
        let name = |n: NodeId| names.get(&n).cloned().unwrap_or_else(|| format!("node{n}"));
        let mut fenced_here = Vec::new();
        let Some(f) = self.fencing.as_mut() else { return inputs };
        while let Some(a) = f.core.poll_action() {
            match a {
                F::Run { op, what } => f.exec.spawn(op, what),
                F::Ack { id, step } => {
                    if let Some(t0) = f.started.remove(&id) {
                        let ms = (monotonic_ns() - t0) as f64 / 1e6;
                        info!(node = %name(id.node), ms, by_this_node = ours, "fenced: its key is off the shared disks; the forced leave goes on");
                        crate::svc::append_event(&f.events, json!({"event": "fenced", "node": id.node, "name": name(id.node), "ms": ms, "by_this_node": ours}));
                        if ours {
                            fenced_here.push((id.node, id.incarnation));
                        }
                    }
                    inputs.push(Input::Ack { subsystem: FENCING_SID, id, step });
                }
                F::Fenced { why } => {
                    error!(why, "this node is fenced off the shared disks: clustering ends here (S0, reason fenced)");
                    crate::svc::append_event(&f.events, json!({"event": "self_fenced", "node": self.me, "reason": why}));
                    inputs.push(Input::LocalFailure { from: Some(FENCING_SID), reason: baton_common::DISTRESS_FENCED });
                }
                F::Waiting { node, reason } => {
                    warn!(node = %name(node), reason, "fencing cannot complete yet: the forced leave waits (no takeover before it is fenced; `baton fence confirm` if it is switched off)");
                    crate::svc::append_event(&f.events, json!({"event": "fencing_waiting", "node": node, "reason": reason}));
                }
                F::Alert { node, reason } => {
                    error!(node = %name(node), reason, "ALERT: fencing");
                    crate::svc::append_event(&f.events, json!({"event": "alert", "kind": "fencing", "node": node, "reason": reason}));
                }
                F::Cleared { node } => {
                    info!(node = %name(node), "fencing completed after waiting");
                    crate::svc::append_event(&f.events, json!({"event": "fencing_cleared", "node": node}));
                }
            }
        }
        for (node, incarnation) in fenced_here {
            self.broadcast_fenced(node, incarnation, false);
        }
        inputs
    }

    /// An input for the services core (action results, monitors, operator
    /// requests, ticks), then whatever follows in membership.
    pub fn services_input(&mut self, f: impl FnOnce(&mut crate::svc::ServiceManager, &Channel)) -> Vec<Effect> {
        if self.halted.is_some() {
            return Vec::new();
        }
        let mut effects = Vec::new();
        if let Some(svc) = self.svc.as_mut() {
            f(svc, &self.channel);
            self.services_follow(false, &mut effects);
        }
        effects
    }

    /// The state changed: write cluster.json now, or at the end of the
    /// current period (see [`SNAPSHOT_EVERY_NS`]).
    fn snapshot_changed(&mut self, urgent: bool) {
        let settled = self.core.state().is_none_or(|s| s.transitions.is_empty());
        // The address lease (lease.rs) counts the peers it hears against
        // this group: kept current on every change, not only per snapshot.
        crate::lease::set_view(if self.halted.is_some() { Default::default() } else { self.core.state().map(|s| s.group()).unwrap_or_default() });
        self.snapshot_dirty = true;
        if urgent || settled {
            self.write_snapshot_now();
        } else {
            self.flush_snapshot_if_due();
        }
    }

    /// When a pending cluster.json write is due.
    fn snapshot_due_ns(&self) -> Option<u64> {
        if !self.snapshot_dirty {
            return None;
        }
        Some(self.snapshot_written_ns.map_or(0, |t| t + SNAPSHOT_EVERY_NS))
    }

    /// Writes a pending cluster.json if its time came.
    pub fn flush_snapshot_if_due(&mut self) {
        if self.snapshot_due_ns().is_some_and(|due| monotonic_ns() >= due) {
            self.write_snapshot_now();
        }
    }

    fn write_snapshot_now(&mut self) {
        self.write_snapshot();
        self.snapshot_written_ns = Some(monotonic_ns());
        self.snapshot_dirty = false;
    }

    /// `<state_dir>/cluster.json`, read by `baton status`.
    pub fn write_snapshot(&self) {
        let st = self.core.state();
        let nodes: Vec<serde_json::Value> = st
            .map(|s| {
                s.nodes
                    .iter()
                    .map(|(n, e)| json!({"id": n, "name": self.name(*n), "state": state_name(e.state), "incarnation": e.incarnation}))
                    .collect()
            })
            .unwrap_or_default();
        let transitions: Vec<serde_json::Value> = st
            .map(|s| {
                s.transitions
                    .values()
                    .map(|t| {
                        let step = t.step();
                        json!({
                            "node": t.id.node, "name": self.name(t.id.node), "kind": kind_name(t.id.kind),
                            "level": step.level, "barrier": step.barrier,
                            "direction": if t.id.kind.bottom_up() { "bottom-up" } else { "top-down" },
                            "levels": t.path.iter().map(|l| l.level).collect::<Vec<_>>(),
                            "participants": t.participants,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let local: Vec<serde_json::Value> = self
            .in_flight
            .iter()
            .map(|((s, n, _), (k, l, b))| json!({"subsystem": s, "name": self.external.get(s), "node": n, "kind": kind_name(*k), "level": l, "barrier": b}))
            .collect();
        let view = st.map(|s| json!({"term": s.view.term, "master": s.view.master, "version": s.view.version}));
        let doc = json!({
            "me": self.me,
            "my_state": state_name(self.core.my_state()),
            "master": st.map(|s| s.view.master),
            "quorate": st.map(|s| s.quorate),
            "view": view,
            "nodes": nodes,
            "transitions": transitions,
            "local_in_flight": local,
            "subsystems": self.builtin.iter().map(|(id, n)| json!({"id": id, "name": n, "builtin": true}))
                .chain(self.external.iter().map(|(id, n)| json!({"id": id, "name": n, "builtin": false}))).collect::<Vec<_>>(),
            "halted": self.halted.map(|h| format!("{h:?}")),
            "fencing": self.fencing.as_ref().map(|f| json!({
                "disks": f.disks.iter().map(|(n, d)| json!({"name": n, "device": d})).collect::<Vec<_>>(),
                "registered": f.core.registered(),
                "waiting": f.core.waiting().into_iter().map(|(n, r)| json!({"node": n, "name": self.name(n), "reason": r})).collect::<Vec<_>>(),
            })),
            "stats": {
                "messages_sent": self.messages_sent,
                "gmp_messages_sent": self.core.stats().gmp_messages_sent,
                "changes_committed": self.core.stats().changes_committed,
            },
        });
        let _ = crate::statefile::write_atomic(&self.snapshot, doc.to_string().as_bytes(), false);
    }

    /// Ends the driver. Whatever resource group still runs here is halted
    /// first (after a halt or a forced leave, this node must hold no
    /// address and run no service).
    pub async fn shutdown(mut self) {
        if self.snapshot_dirty {
            self.write_snapshot_now();
        }
        if let Some(svc) = self.svc.as_mut() {
            svc.stop_all_local().await;
        }
        self.subsys.shutdown().await;
        self.channel.shutdown().await;
    }
}
