//! The thin runtime around the membership core: it feeds the core with
//! datapath peer events, control-channel messages, local subsystem
//! registrations and acknowledgements, and timer ticks, and carries out the
//! core's actions (messages, notifications, distress, halting). The protocol
//! itself is in `baton_core::membership`, and the rules that join it to the
//! services and fencing cores in `baton_core::node` (the composed node this
//! driver holds); nothing here decides anything.

use std::collections::BTreeMap;
use std::path::PathBuf;

use baton_core::membership::{Action, Config as CoreConfig, HaltReason, Input, Kind, LevelSpec, SubsystemId};
use baton_core::node::{LevelRole, Node, NodeAction, NodeInput};
use baton_core::{Instant, NodeId};
use baton_state::StateName;
use serde_json::json;
use tracing::{error, info, warn};

use crate::control::channel::Channel;
use crate::datapath::events::monotonic_ns;
use crate::control::subsys::SubsysServer;


/// `cluster.json` is rewritten at most this often while transitions are in
/// flight (a mass join changes the state of every node tens of times a
/// second, and each write is a new file and a rename); the latest state is
/// always written at the end of the period, and a state with no transition
/// in flight (the end of a burst), a halt and the end of a leave are written
/// at once.
pub const SNAPSHOT_EVERY_NS: u64 = 50_000_000;

/// Ids of external subsystems (over the Unix socket) start here.
pub const FIRST_EXTERNAL_SUBSYSTEM: SubsystemId = baton_core::node::FIRST_EXTERNAL_SUBSYSTEM;

/// Fencing at the fencing level (docs/fencing.md): the executor of the
/// fencing core's operations on the shared disks (the core is in the node).
pub struct FencingRt {
    exec: crate::services::fencing::Executor,
    events: PathBuf,
    /// When each forced leave's fencing step was notified here (for the
    /// `fenced` event's time).
    started: BTreeMap<baton_core::membership::TransitionId, u64>,
    /// Disks (name, device) for status.
    disks: Vec<(String, String)>,
}

impl FencingRt {
    /// The runtime, the core's slot for the node, and the receiver of
    /// operations' outcomes.
    pub fn new(
        cfg: &crate::config::Config,
        disks: Vec<crate::services::fencing::OpenDisk>,
    ) -> (FencingRt, baton_core::node::FencingSlot, tokio::sync::mpsc::Receiver<(baton_core::fencing::OpId, baton_core::fencing::Outcome)>) {
        let mut keys: BTreeMap<NodeId, u64> = cfg.peers.iter().map(|p| (p.id, cfg.disk_key(p.id))).collect();
        keys.insert(cfg.node_id, cfg.disk_key(cfg.node_id));
        let mut core_cfg = baton_core::fencing::Config::new(cfg.node_id, keys);
        core_cfg.check_ns = cfg.disks.iter().map(|d| d.check_interval_ms as u64).min().unwrap_or(1000) * 1_000_000;
        // Twice a command's timeout (then the kernel's error handling holds
        // the command, e.g. an iSCSI session in recovery).
        core_cfg.slow_ns = cfg.disks.iter().map(|d| d.timeout_ms as u64).max().unwrap_or(5000) * 2_000_000;
        let names = disks.iter().map(|d| (d.disk.name.clone(), d.disk.device.display().to_string())).collect();
        let (exec, rx) = crate::services::fencing::Executor::new(disks, cfg.disk_key(cfg.node_id));
        (
            FencingRt { exec, events: cfg.paths.events_log(), started: BTreeMap::new(), disks: names },
            baton_core::node::FencingSlot { core: baton_core::fencing::Fencing::new(core_cfg), distress_reason: baton_common::DISTRESS_FENCED },
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
    /// The composed node: membership, services and fencing cores.
    node: Node,
    me: NodeId,
    channel: Channel,
    subsys: SubsysServer,
    names: BTreeMap<NodeId, String>,
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
    /// The resource groups (None when none is configured; then the node
    /// has no services core either).
    pub svc: Option<crate::services::svc::ServiceManager>,
    /// Fencing of shared disks (None when no `[[disk]]` is configured: the
    /// fencing level then acknowledges at once).
    pub fencing: Option<FencingRt>,
    /// The heartbeat sender's shared state: lives this node's membership
    /// forces out are disowned there ([`crate::datapath::sender::SenderShared::disown`]).
    pub heartbeats: Option<std::sync::Arc<crate::datapath::sender::SenderShared>>,
    /// The events log for `lease_wait` records (set with the lease wait).
    lease_events: Option<PathBuf>,
    /// Stalled joins (issue 13): since when each joiner waits at this
    /// master, when this node itself started waiting to join, and when the
    /// last such log line was written ([`Self::log_join_stalls`]).
    join_waits: BTreeMap<NodeId, u64>,
    joining_since: Option<u64>,
    join_logged: u64,
}

impl ClusterDriver {
    /// `services`: the resource groups' manager and core; `fencing`: the
    /// shared disks' runtime and core.
    pub fn new(
        core_cfg: CoreConfig,
        channel: Channel,
        subsys: SubsysServer,
        names: BTreeMap<NodeId, String>,
        snapshot: PathBuf,
        services: Option<(crate::services::svc::ServiceManager, baton_core::services::Services)>,
        fencing: Option<(FencingRt, baton_core::node::FencingSlot)>,
    ) -> ClusterDriver {
        let me = core_cfg.me;
        let (svc, svc_core) = services.map_or((None, None), |(m, c)| (Some(m), Some(c)));
        let (fencing, fence_slot) = fencing.map_or((None, None), |(f, c)| (Some(f), Some(c)));
        ClusterDriver {
            node: Node::new(Instant(monotonic_ns()), core_cfg, svc_core, fence_slot),
            lease_events: None,
            join_waits: BTreeMap::new(),
            joining_since: None,
            join_logged: 0,
            me,
            channel,
            subsys,
            names,
            external: BTreeMap::new(),
            snapshot,
            snapshot_written_ns: None,
            snapshot_dirty: false,
            in_flight: BTreeMap::new(),
            halted: None,
            messages_sent: 0,
            svc,
            fencing,
            heartbeats: None,
        }
    }

    /// The composed node (for status and the takeover's context).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Whether `name` is a configured group (not one a reload removed).
    pub fn services_configured(&self, name: &str) -> bool {
        self.node.services().is_some_and(|c| c.is_configured(name))
    }

    /// The control channel (for the runtime's parts that send on it).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The cluster state this node follows.
    pub fn state(&self) -> Option<&baton_core::membership::ClusterState> {
        self.node.membership().state()
    }

    /// This node's membership state (this life's entry of the state it follows).
    pub fn my_state(&self) -> baton_core::membership::NodeState {
        self.node.membership().my_state()
    }

    /// `node` finished a graceful leave (its heartbeats ending is no
    /// failure).
    pub fn left_gracefully(&self, node: u32) -> bool {
        self.node.membership().state().is_some_and(|s| s.state_of(node) == baton_core::membership::NodeState::Inactive && !s.transitions.contains_key(&node))
    }

    /// This life of `node` (its `incarnation`) was a member and finished a
    /// graceful leave. A life that never joined (killed while it was still
    /// coming up) is not: its silence is reported as `peer_silent`.
    pub fn left_gracefully_in_life(&self, node: u32, incarnation: u64) -> bool {
        self.left_gracefully(node) && incarnation != 0 && self.node.membership().state().and_then(|s| s.nodes.get(&node)).is_some_and(|e| e.incarnation == incarnation)
    }

    /// This node is a joined member of a quorate cluster.
    pub fn joined_quorate(&self) -> bool {
        self.node.membership().my_state() == baton_core::membership::NodeState::Joined && self.node.membership().state().is_some_and(|s| s.quorate)
    }

    /// Shared disks: this node's key is registered (true without disks).
    pub fn fencing_ok(&self) -> bool {
        self.node.fencing().is_none_or(|f| f.registered())
    }

    pub fn name(&self, n: NodeId) -> String {
        self.names.get(&n).cloned().unwrap_or_else(|| format!("node{n}"))
    }

    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.halted.is_some() {
            return None;
        }
        let n = self.node.poll_timeout().map(|i| i.0);
        let w = self.snapshot_due_ns();
        [n, w].into_iter().flatten().min()
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
        self.node.handle(Instant(monotonic_ns()), NodeInput::Membership(input));
        self.run_actions(starting)
    }

    /// Carries out the node's actions, in order (see `baton_core::node`).
    /// `changed`: the state changed already (a start).
    fn run_actions(&mut self, mut changed: bool) -> Vec<Effect> {
        let mut urgent = false;
        let mut effects = Vec::new();
        let mut services_acted = false;
        let mut encoded: Option<(baton_core::membership::Msg, std::sync::Arc<[u8]>)> = None;
        while let Some(a) = self.node.poll() {
            let a = match a {
                NodeAction::Membership(a) => a,
                NodeAction::LevelStep { role, id, step, held: _ } => {
                    changed = true;
                    info!(part = role.name(), node = %self.name(id.node), transition = id.kind.as_str(), level = step.level, barrier = step.barrier, "transition step");
                    if let (LevelRole::Fencing, Kind::ForcedLeave, Some(f)) = (role, id.kind, self.fencing.as_mut()) {
                        f.started.entry(id).or_insert_with(monotonic_ns);
                    }
                    continue;
                }
                NodeAction::LeaveReleased { node } => {
                    info!(node = %self.name(node), "services drained: the leave goes on");
                    continue;
                }
                NodeAction::LeaseWait { id, until } => {
                    let ms = until.since(Instant(monotonic_ns())) as f64 / 1e6;
                    info!(node = %self.name(id.node), wait_ms = ms, "forced leave: the addresses level waits until that node's address lease surely ended (this node heard it recently)");
                    continue;
                }
                NodeAction::LeaseWaited { id, waited_ns, silent } => {
                    let ms = waited_ns as f64 / 1e6;
                    info!(node = %self.name(id.node), waited_ms = ms, silent, "forced leave: that node's address lease is over here; the addresses level goes on");
                    if let Some(ev) = &self.lease_events {
                        crate::eventlog::record(ev, json!({"event": "lease_wait", "node": id.node, "incarnation": id.incarnation, "waited_ms": ms, "silent": silent}));
                    }
                    continue;
                }
                NodeAction::Services(a) => {
                    if let Some(svc) = self.svc.as_mut() {
                        svc.run_action(a, &self.channel);
                        services_acted = true;
                    }
                    continue;
                }
                NodeAction::Fencing { action, ours } => {
                    self.fencing_action(action, ours);
                    continue;
                }
            };
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
                    // Only external subsystems: the node handles the
                    // built-in levels (`NodeAction::LevelStep`).
                    changed = true;
                    info!(subsystem, node = %self.name(id.node), transition = id.kind.as_str(), level = step.level, barrier = step.barrier, "notifying subsystem");
                    self.in_flight.insert((subsystem, id.node, id.incarnation), (id.kind, step.level, step.barrier));
                    self.subsys.notify(subsystem, id, step, &states);
                }
                Action::SendDistress { reason } => {
                    error!(reason, "critical local failure: sending distress to every node");
                    effects.push(Effect::SendDistress { reason });
                }
                Action::Terminate { subsystem, reason } => {
                    self.subsys.terminate(subsystem, reason);
                }
                Action::Halt { why } => {
                    error!(?why, path = self.node.membership().halt_path().unwrap_or("-"), "clustering halted on this node");
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
                    info!(node = %self.name(id.node), transition = id.kind.as_str(), "transition completed on every node");
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
        if services_acted {
            if let (Some(svc), Some(core)) = (self.svc.as_mut(), self.node.services()) {
                svc.after_actions(core);
            }
        }
        if changed {
            if let Some(st) = self.node.membership().state() {
                let live = st.transitions.values().map(|t| t.id).collect();
                self.subsys.retain_transitions(&live);
            }
            self.snapshot_changed(urgent);
        } else {
            self.flush_snapshot_if_due();
        }
        effects
    }

    /// Time passed: the node's timers (membership, services, fencing).
    pub fn tick(&mut self) -> Vec<Effect> {
        if self.halted.is_some() {
            return Vec::new();
        }
        let before = self.node.fencing().map(|f| f.waiting());
        self.node.handle_timeout(Instant(monotonic_ns()));
        let effects = self.run_actions(false);
        self.log_join_stalls();
        // `baton status` shows a waiting fencing: write it out when it changes.
        if self.node.fencing().map(|f| f.waiting()) != before {
            self.snapshot_changed(true);
        }
        effects
    }

    /// Logs at INFO, every 10 s, joins that wait longer than 10 s: at the
    /// master each waiting joiner and why it is not admitted
    /// ([`baton_core::membership::Membership::join_waits`]); at a node that
    /// has not joined yet, its membership internals (the master it follows,
    /// the S3 change it is in). A join that stalls is diagnosable from the
    /// logs (issue 13).
    fn log_join_stalls(&mut self) {
        const EVERY_NS: u64 = 10_000_000_000;
        let now = monotonic_ns();
        let m = self.node.membership();
        let waits = m.join_waits();
        self.join_waits.retain(|n, _| waits.iter().any(|(w, _)| w == n));
        for (n, _) in &waits {
            self.join_waits.entry(*n).or_insert(now);
        }
        let inactive = m.my_state() == baton_core::membership::NodeState::Inactive && !m.is_master() && !m.has_left();
        if inactive {
            self.joining_since.get_or_insert(now);
        } else {
            self.joining_since = None;
        }
        if now.saturating_sub(self.join_logged) < EVERY_NS {
            return;
        }
        let mut logged = false;
        for (n, why) in &waits {
            let waited = now.saturating_sub(self.join_waits[n]);
            if waited >= EVERY_NS {
                let why = match why {
                    Some(w) => format!("{w:?}"),
                    None => "in the change being committed".to_string(),
                };
                info!(node = %self.name(*n), waited_s = waited / 1_000_000_000, why = %why, "a node that asks to join is not admitted yet");
                logged = true;
            }
        }
        if let Some(since) = self.joining_since {
            let waited = now.saturating_sub(since);
            if waited >= EVERY_NS {
                let master = m.state().map(|s| s.view.master);
                info!(waited_s = waited / 1_000_000_000, master = ?master, internals = %m.debug_line(), "this node is not admitted to the cluster yet");
                logged = true;
            }
        }
        if logged {
            self.join_logged = now;
        }
    }

    /// An input for the fencing core (an operation's outcome, a tick, an
    /// operator's confirmation), then whatever follows in membership.
    pub fn fencing_input(&mut self, input: baton_core::fencing::Input) -> Vec<Effect> {
        if self.halted.is_some() || self.node.fencing().is_none() {
            return Vec::new();
        }
        let before = self.node.fencing().map(|f| f.waiting());
        self.node.handle(Instant(monotonic_ns()), NodeInput::Fencing(input));
        let effects = self.run_actions(false);
        // `baton status` shows a waiting fencing: write it out when it changes.
        if self.node.fencing().map(|f| f.waiting()) != before {
            self.snapshot_changed(true);
        }
        effects
    }

    /// `node` is fenced: an operator here says so (`baton fence confirm`,
    /// told to every peer), or a peer's notice (`FenceMsg`) says it fenced
    /// that life.
    pub fn fence_confirm(&mut self, node: NodeId, incarnation: Option<u64>, from_operator: bool) -> Vec<Effect> {
        if from_operator {
            let inc = incarnation.or_else(|| self.node.membership().state().and_then(|s| s.nodes.get(&node)).map(|e| e.incarnation));
            if let Some(incarnation) = inc {
                self.broadcast_fenced(node, incarnation, true);
            }
        }
        self.fencing_input(baton_core::fencing::Input::Confirm { node, incarnation })
    }

    fn broadcast_fenced(&self, node: NodeId, incarnation: u64, by_operator: bool) {
        let msg = crate::services::fencing::FenceMsg::Fenced { node, incarnation, by_operator };
        for to in self.names.keys().copied().filter(|n| *n != self.me && *n != node) {
            self.channel.send_fence(to, &msg);
        }
    }

    /// Carries out (logs, runs) one of the fencing core's actions; the
    /// node already acted on its `Ack` and `Fenced`. `ours`: a completed
    /// fencing is this node's own doing (tell the others).
    fn fencing_action(&mut self, a: baton_core::fencing::Action, ours: bool) {
        use baton_core::fencing::Action as F;
        let names = &self.names;
        let name = |n: NodeId| names.get(&n).cloned().unwrap_or_else(|| format!("node{n}"));
        let Some(f) = self.fencing.as_mut() else { return };
        let mut fenced_here = None;
        match a {
            F::Run { op, what } => f.exec.spawn(op, what),
            F::Ack { id, .. } => {
                if let Some(t0) = f.started.remove(&id) {
                    let ms = (monotonic_ns() - t0) as f64 / 1e6;
                    info!(node = %name(id.node), ms, by_this_node = ours, "fenced: its key is off the shared disks; the forced leave goes on");
                    crate::eventlog::record(&f.events, json!({"event": "fenced", "node": id.node, "name": name(id.node), "ms": ms, "by_this_node": ours}));
                    if ours {
                        fenced_here = Some((id.node, id.incarnation));
                    }
                }
            }
            F::Fenced { why } => {
                error!(why, "this node is fenced off the shared disks: clustering ends here (S0, reason fenced)");
                crate::eventlog::record(&f.events, json!({"event": "self_fenced", "node": self.me, "reason": why}));
            }
            F::Waiting { node, reason } => {
                warn!(node = %name(node), reason, "fencing cannot complete yet: the forced leave waits (no takeover before it is fenced; `baton fence confirm` if it is switched off)");
                crate::eventlog::record(&f.events, json!({"event": "fencing_waiting", "node": node, "reason": reason}));
            }
            F::Alert { node, reason } => {
                error!(node = %name(node), reason, "ALERT: fencing");
                crate::eventlog::record(&f.events, json!({"event": "alert", "kind": "fencing", "node": node, "reason": reason}));
            }
            F::Cleared { node } => {
                info!(node = %name(node), "fencing completed after waiting");
                crate::eventlog::record(&f.events, json!({"event": "fencing_cleared", "node": node}));
            }
        }
        if let Some((node, incarnation)) = fenced_here {
            self.broadcast_fenced(node, incarnation, false);
        }
    }

    /// An input for the services core (action results, monitors, operator
    /// requests, ticks), then whatever follows in membership.
    pub fn services_input(&mut self, f: impl FnOnce(&mut crate::services::svc::ServiceManager, &mut crate::services::svc::SvcPort)) -> Vec<Effect> {
        if self.halted.is_some() {
            return Vec::new();
        }
        let Some(svc) = self.svc.as_mut() else { return Vec::new() };
        f(svc, &mut crate::services::svc::SvcPort::new(&mut self.node));
        self.run_actions(false)
    }

    /// Rule 8 of `baton_core::node`: the addresses level of a forced leave
    /// waits up to `interval × (misses + 1)` for the forced-out life's
    /// address lease to end, unless this node's datapath reported it silent
    /// (docs/addresses.md). `BATON_TEST_NO_LEASE_WAIT=1` (a test switch,
    /// never in production) turns the wait off, so that a test can show
    /// what it prevents.
    pub fn set_lease_wait(&mut self, cfg: &crate::config::Config) {
        let off = std::env::var_os("BATON_TEST_NO_LEASE_WAIT").is_some_and(|v| v == "1");
        let ns = if off { 0 } else { cfg.timeout_ns() + cfg.interval_ms as u64 * 1_000_000 };
        if off {
            warn!("BATON_TEST_NO_LEASE_WAIT=1: a takeover does not wait out the lease of a node forced out while reachable (a test switch)");
        }
        self.node.set_lease_wait(ns);
        self.lease_events = Some(cfg.paths.events_log());
    }

    /// The state changed: write cluster.json now, or at the end of the
    /// current period (see [`SNAPSHOT_EVERY_NS`]).
    fn snapshot_changed(&mut self, urgent: bool) {
        let settled = self.node.membership().state().is_none_or(|s| s.transitions.is_empty());
        // The address lease (lease.rs) counts the peers it hears against
        // this group: kept current on every change, not only per snapshot.
        crate::services::lease::set_view(if self.halted.is_some() { Default::default() } else { self.node.membership().state().map(|s| s.group()).unwrap_or_default() });
        // A life being forced out is no longer acknowledged in heartbeats:
        // its address lease ends within the silence bound even when it
        // still hears us (loss, a slow or one-way link), before a survivor
        // can take its addresses over at the end of the forced leave.
        if let (Some(hb), Some(st)) = (&self.heartbeats, self.node.membership().state()) {
            for (n, e) in st.nodes.iter().filter(|(n, e)| **n != self.me && e.state == baton_core::membership::NodeState::ForcedLeaving) {
                hb.disown(*n, e.incarnation);
            }
        }
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
        let _ = crate::statefile::write_json(&self.snapshot, &self.snapshot_doc(), false);
    }

    /// The membership snapshot (`cluster.json`, docs/status-json.md).
    pub fn snapshot_doc(&self) -> baton_state::ClusterSnapshot {
        use baton_state as bs;
        let st = self.node.membership().state();
        let nodes = st
            .map(|s| s.nodes.iter().map(|(n, e)| bs::NodeLine { id: *n, name: self.name(*n), state: e.state, incarnation: e.incarnation }).collect())
            .unwrap_or_default();
        let transitions = st
            .map(|s| {
                s.transitions
                    .values()
                    .map(|t| {
                        let step = t.step();
                        bs::TransitionLine {
                            node: t.id.node,
                            name: self.name(t.id.node),
                            kind: t.id.kind,
                            level: step.level,
                            barrier: step.barrier,
                            direction: t.id.kind.into(),
                            levels: t.path.iter().map(|l| l.level).collect(),
                            participants: t.participants.clone(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let local_in_flight = self
            .in_flight
            .iter()
            .map(|((s, n, _), (k, l, b))| bs::LocalInFlight { subsystem: *s, name: self.external.get(s).cloned(), node: *n, kind: *k, level: *l, barrier: *b })
            .collect();
        let subsystems = LevelRole::ALL
            .iter()
            .map(|r| bs::SubsystemLine { id: r.subsystem(), name: Some(r.name().to_string()), builtin: true })
            .chain(self.external.iter().map(|(id, n)| bs::SubsystemLine { id: *id, name: Some(n.clone()), builtin: false }))
            .collect();
        let fencing = self.fencing.as_ref().zip(self.node.fencing()).map(|(f, core)| bs::FencingLine {
            disks: f.disks.iter().map(|(n, d)| bs::DiskLine { name: n.clone(), device: d.clone() }).collect(),
            registered: core.registered(),
            waiting: core.waiting().into_iter().map(|(n, r)| bs::FenceWaiting { node: n, name: self.name(n), reason: r }).collect(),
        });
        let stats = self.node.membership().stats();
        bs::ClusterSnapshot {
            me: self.me,
            my_state: self.node.membership().my_state(),
            master: st.map(|s| s.view.master),
            quorate: st.map(|s| s.quorate),
            view: st.map(|s| bs::ViewLine { term: s.view.term, master: s.view.master, version: s.view.version }),
            nodes,
            transitions,
            local_in_flight,
            subsystems,
            halted: self.halted,
            fencing,
            stats: bs::MembershipStats {
                messages_sent: self.messages_sent,
                gmp_messages_sent: stats.gmp_messages_sent,
                changes_committed: stats.changes_committed,
            },
        }
    }

    /// Ends the driver. Whatever resource group still runs here is halted
    /// first (after a halt or a forced leave, this node must hold no
    /// address and run no service).
    pub async fn shutdown(mut self) {
        if self.snapshot_dirty {
            self.write_snapshot_now();
        }
        if let Some(svc) = self.svc.as_mut() {
            svc.stop_all_local(self.node.services()).await;
        }
        self.subsys.shutdown().await;
        self.channel.shutdown().await;
    }
}
