//! The thin runtime around the services core (`baton_core::services`): it
//! carries out the core's action functions on this node (S4.3 run and halt
//! methods: addresses through `addr`, the application and its monitors
//! through `resource`) and feeds their results back. The services core is
//! part of the composed node (`baton_core::node`), which also turns
//! membership progress into the core's `View` / `NodeFailed` /
//! `NodeLeaving` / `NodeLeft` inputs; this module reaches it through a
//! [`SvcPort`]. The decisions (where a service runs, when it moves) are all
//! in the cores.
//!
//! Every action function runs in its own tokio task; the actions of one
//! group are serialised by a per-group lock (so a stop never overtakes the
//! start it cleans up after). Results come back to the event loop through
//! an mpsc channel ([`SvcDone`]) and are fed to the core there.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_core::services::{
    Action, ActionParams, ActionResult, Reason, Config as SvcConfig, Input, ServiceSpec, ServiceStatus, Services, StandbyPhase,
};
use baton_core::{Instant, NodeId};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::control::channel::Channel;
use crate::datapath::events::monotonic_ns;
use crate::config::groups::{self, Group};
use crate::services::resource::{self, MonitorEvent, MonitorLoop, Resource};
use crate::services::addr::release_all;

/// The result of an action function that ran in a task.
#[derive(Debug)]
pub enum SvcDone {
    Start { service: String, result: ActionResult },
    Stop { service: String, result: ActionResult },
    Recovery { service: String, result: ActionResult },
    Notify { service: String, result: ActionResult },
    Offline { service: String, result: ActionResult },
    /// Hot standby: the standby instance started (or not) here.
    StandbyStarted { service: String, result: ActionResult },
    /// Hot standby: the standby instance stopped here.
    StandbyStopped { service: String, result: ActionResult },
    /// A reload changed a group that runs here, in place (`reload`).
    Reconfigured { service: String, ok: bool },
}

/// What the event loop selects on.
pub struct SvcChannels {
    pub done: mpsc::Receiver<SvcDone>,
    pub monitor: mpsc::Receiver<MonitorEvent>,
}

struct GroupRt {
    group: Group,
    app: Option<Arc<Resource>>,
    monitors: Vec<MonitorLoop>,
    /// Hot standby: the application's monitor while it runs here as the
    /// standby instance (enabled only then).
    standby_mon: Option<MonitorLoop>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// Hot standby: the standby instance's monitor loop (disabled): the
/// application's own monitor every `interval_ms` (1 s when it has none);
/// a daemon's exit is reported at once anyway. The group's other monitors
/// usually reach the floating address, which the standby node does not have.
fn standby_monitor(g: &Group, app: Option<&Arc<Resource>>, mon_tx: &mpsc::Sender<MonitorEvent>) -> Option<MonitorLoop> {
    if g.standby != groups::Standby::Hot {
        return None;
    }
    let app = app?;
    let interval = Duration::from_millis(app.spec().interval_ms.unwrap_or(1000) as u64);
    Some(MonitorLoop::spawn(app.clone(), interval, app.spec().failures, mon_tx.clone(), false))
}

/// Errors of the services runtime: a group's run, halt or off-line method
/// on this node, and the group set at start-up or reload. The text is what
/// the log, the core's `ActionResult` detail and `baton reload` show.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("interface {interface} has no carrier (or is down)")]
    NoCarrier { interface: String },
    #[error("{source}")]
    Carrier {
        #[source]
        source: crate::services::carrier::CarrierError,
    },
    #[error("address {address}: {source}")]
    Address {
        address: groups::GroupAddress,
        #[source]
        source: crate::services::addr::AddrError,
    },
    /// The application's start or stop failed.
    #[error("{source}")]
    Application {
        #[source]
        source: resource::ResourceError,
    },
    #[error("no application")]
    NoApplication,
    /// The overlap handover's old side: the application did not stop.
    #[error("{source}")]
    Handover {
        #[from]
        source: crate::services::handover::HandoverError,
    },
    #[error("hot standby: cannot set {name} = 1 ({path}): {source}")]
    NonlocalBind {
        name: &'static str,
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The services core refused the group set (`baton run` says
    /// "resource groups: ", a reload "the resource groups were refused: " first).
    #[error("{source}")]
    Groups {
        #[source]
        source: baton_core::services::SpecError,
    },
}

/// Hot standby: a group that asks for it and may run on node `me` needs
/// `net.ipv4.ip_nonlocal_bind` (and the IPv6 one) in this network
/// namespace, so that its application binds to the floating addresses
/// before they are here. Sets them to 1 (logged) and returns what it set.
pub fn allow_nonlocal_bind(me: NodeId, groups: &[Group]) -> Result<Vec<&'static str>, ServiceError> {
    let needed = groups.iter().any(|g| {
        g.standby == groups::Standby::Hot
            && !g.exclude.contains(&me)
            && g.nodes.allows(me)
    });
    if !needed {
        return Ok(Vec::new());
    }
    let mut set = Vec::new();
    for (path, name) in [
        ("/proc/sys/net/ipv4/ip_nonlocal_bind", "net.ipv4.ip_nonlocal_bind"),
        ("/proc/sys/net/ipv6/ip_nonlocal_bind", "net.ipv6.ip_nonlocal_bind"),
    ] {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        if name.starts_with("net.ipv6") && !std::path::Path::new(path).exists() {
            continue; // no IPv6 in this kernel
        }
        std::fs::write(path, "1").map_err(|source| ServiceError::NonlocalBind { name, path, source })?;
        info!("hot standby: {name} = 1 in this network namespace");
        set.push(name);
    }
    Ok(set)
}

/// What one run or halt task carries into its tokio task.
struct GroupTask {
    group: Group,
    app: Option<Arc<Resource>>,
    lock: Arc<tokio::sync::Mutex<()>>,
    tx: mpsc::Sender<SvcDone>,
    events: PathBuf,
    me: NodeId,
    active: crate::services::guard::Ownership,
    handovers: Option<crate::services::handover::Handovers>,
    watchdog: Option<crate::services::watchdog::Ctx>,
}

/// The services core inside the composed node, as this module sees it: it
/// feeds inputs (their actions come back through the node, in order, to
/// [`ServiceManager::run_action`]) and reads the core.
pub struct SvcPort<'a> {
    node: &'a mut baton_core::node::Node,
}

impl<'a> SvcPort<'a> {
    pub fn new(node: &'a mut baton_core::node::Node) -> SvcPort<'a> {
        SvcPort { node }
    }
    pub fn feed(&mut self, input: Input) {
        self.node.handle(Instant(monotonic_ns()), baton_core::node::NodeInput::Services(input));
    }
    pub fn core(&self) -> &Services {
        self.node.services().expect("a ServiceManager goes with a services core")
    }
    fn reconfigure(&mut self, specs: Vec<ServiceSpec>) -> Result<(), baton_core::services::SpecError> {
        self.node.reconfigure_services(Instant(monotonic_ns()), specs)
    }
}

pub struct ServiceManager {
    me: NodeId,
    groups: BTreeMap<String, GroupRt>,
    done_tx: mpsc::Sender<SvcDone>,
    /// Monitor events (for the resources of groups added by a reload).
    mon_tx: mpsc::Sender<MonitorEvent>,
    snapshot: PathBuf,
    events: PathBuf,
    status: BTreeMap<String, ServiceStatus>,
    /// `status` changed since services.json was written.
    status_dirty: bool,
    /// Maintenance mode as last logged (the registry's flag).
    maintenance: bool,
    /// Groups whose run method (or a handover's preparation, or off-line
    /// mode) configured something here and whose halt method has not
    /// released it: stopped on exit whatever the core thinks, and told to
    /// the guard, which releases them if the agent dies (`guard.rs`).
    active: crate::services::guard::Ownership,
    /// Zero-loss handovers (`handover = "overlap"` groups), when wired.
    handovers: Option<crate::services::handover::Handovers>,
    /// S4.5 watchdog processes after every halt, when wired.
    watchdog: Option<crate::services::watchdog::Ctx>,
    /// The whole cluster is being stopped: a group with no node left to go
    /// to stops, as asked, without an alert.
    stopping: bool,
}

/// A group's application and monitor loops (disabled).
fn resources_of(g: &Group, mon_tx: &mpsc::Sender<MonitorEvent>) -> (Option<Arc<Resource>>, Vec<MonitorLoop>) {
    let app = g.application.as_ref().map(|spec| Arc::new(Resource::from_spec(spec).with_events(mon_tx.clone())));
    let mut monitors = Vec::new();
    if let Some(a) = &app {
        if let Some(m) = MonitorLoop::for_resource(a.clone(), mon_tx.clone(), false) {
            monitors.push(m);
        }
    }
    for m in &g.monitors {
        let r = Arc::new(Resource::from_spec(m).with_events(mon_tx.clone()));
        if let Some(m) = MonitorLoop::for_resource(r, mon_tx.clone(), false) {
            monitors.push(m);
        }
    }
    (app, monitors)
}

/// The core's spec of a configured group.
pub fn spec_of(g: &Group) -> ServiceSpec {
    let mut s = ServiceSpec::new(&g.name);
    s.allowable = g.nodes.clone();
    s.disallowable = g.exclude.iter().copied().collect();
    s.preferred = g.preferred;
    s.preference = g.preference;
    s.auto_register = g.auto_register;
    s.placement = g.placement;
    s.maturity = g.maturity;
    s.parent = g.parent.clone();
    s.transfer_cost = g.transfer_cost;
    s.has_notify = g.notify.is_some();
    s.has_recovery = g.recovery.is_some();
    s.hot_standby = g.standby == groups::Standby::Hot;
    s
}

/// One service line (`services.json`, `baton status --json`).
pub fn status_line(s: &ServiceStatus) -> baton_state::ServiceLine {
    baton_state::ServiceLine {
        name: s.name.clone(),
        state: s.state,
        node: s.node,
        nodes: s.nodes.clone(),
        flags: s.flags,
        failed: s.failed,
        complete: s.complete,
        // S4.6: normal or offline (with why, and where it is held).
        mode: baton_state::Mode::of(s.offline.as_ref()),
        offline_cause: s.offline.clone(),
        offline_on: s.offline_on.clone(),
        since_ns: s.since.0,
        since_s_ago: None,
    }
}

impl ServiceManager {
    /// `None` when no group is configured; else the manager, its channels,
    /// and the services core (for the composed node).
    pub fn new(
        me: NodeId,
        incarnation: u64,
        groups: &[Group],
        snapshot: PathBuf,
        events: PathBuf,
        handover: Option<crate::services::handover::Wiring>,
        active: crate::services::guard::Ownership,
    ) -> Result<Option<(ServiceManager, SvcChannels, Services)>, ServiceError> {
        let _ = std::fs::remove_file(&snapshot);
        if groups.is_empty() {
            return Ok(None);
        }
        let specs: Vec<ServiceSpec> = groups.iter().map(spec_of).collect();
        let core = Services::new(SvcConfig { me, incarnation, services: specs })
            .map_err(|source| ServiceError::Groups { source })?;
        let (done_tx, done_rx) = mpsc::channel(256);
        let (mon_tx, mon_rx) = mpsc::channel(256);
        // Client networks: a lost carrier fails the groups on it.
        crate::services::carrier::spawn(mon_tx.clone());
        allow_nonlocal_bind(me, groups)?;
        let mut rts = BTreeMap::new();
        for g in groups {
            let (app, monitors) = resources_of(g, &mon_tx);
            let standby_mon = standby_monitor(g, app.as_ref(), &mon_tx);
            rts.insert(g.name.clone(), GroupRt { group: g.clone(), app, monitors, standby_mon, lock: Arc::new(tokio::sync::Mutex::new(())) });
        }
        info!(groups = groups.len(), "resource groups configured");
        let handovers = handover.map(|w| {
            let handles = rts
                .iter()
                .map(|(n, g): (&String, &GroupRt)| {
                    (n.clone(), crate::services::handover::GroupHandle { group: g.group.clone(), app: g.app.clone(), lock: g.lock.clone() })
                })
                .collect();
            crate::services::handover::Handovers::start(me, w, handles, active.clone(), events.clone())
        });
        Ok(Some((
            ServiceManager {
                me,
                groups: rts,
                done_tx,
                mon_tx,
                snapshot,
                events,
                status: BTreeMap::new(),
                status_dirty: false,
                maintenance: false,
                active,
                handovers,
                watchdog: None,
                stopping: false,
            },
            SvcChannels { done: done_rx, monitor: mon_rx },
            core,
        )))
    }

    /// For a watchdog (`group-state` on the control socket): `active` (a
    /// run, a handover's preparation or off-line mode holds the group
    /// here), `busy` (an action on the group is under way), `idle`, or
    /// `unknown`.
    pub fn group_state(&self, group: &str) -> &'static str {
        let Some(g) = self.groups.get(group) else { return "unknown" };
        if self.active.holds(group) {
            "active"
        } else if g.lock.try_lock().is_err() {
            "busy"
        } else {
            "idle"
        }
    }

    /// The cluster is being stopped as a whole (`baton stop --all`).
    pub fn set_stopping(&mut self) {
        self.stopping = true;
    }

    /// S4.5: spawn a watchdog process after every halt of a group here.
    pub fn set_watchdog(&mut self, ctx: crate::services::watchdog::Ctx) {
        ctx.install();
        self.watchdog = Some(ctx);
    }

    pub fn input(&mut self, input: Input, port: &mut SvcPort) {
        port.feed(input);
    }

    pub fn done(&mut self, d: SvcDone, port: &mut SvcPort) {
        let input = match d {
            SvcDone::Start { service, result } => Input::StartDone { service, result },
            SvcDone::Stop { service, result } => Input::StopDone { service, result },
            SvcDone::Recovery { service, result } => Input::RecoveryDone { service, result },
            SvcDone::Notify { service, result } => Input::NotifyDone { service, result },
            SvcDone::Offline { service, result } => Input::OfflineDone { service, result },
            SvcDone::StandbyStarted { service, result } => {
                let ok = result.ok;
                port.feed(Input::StandbyStarted { service: service.clone(), result });
                // Monitored only while it is (still) the standby instance.
                if ok && port.core().standby_phase(&service) == StandbyPhase::Running {
                    if let Some(m) = self.groups.get(&service).and_then(|g| g.standby_mon.as_ref()) {
                        m.enable();
                    }
                }
                return;
            }
            SvcDone::StandbyStopped { service, result } => Input::StandbyStopped { service, result },
            SvcDone::Reconfigured { service, ok } => {
                // The monitors of the new definition start where it runs.
                if ok && port.core().local_phase(&service) == baton_core::services::LocalPhase::Running {
                    if let Some(g) = self.groups.get(&service) {
                        g.monitors.iter().for_each(|m| m.enable());
                    }
                }
                return;
            }
        };
        port.feed(input);
    }

    pub fn monitor_failed(&mut self, ev: MonitorEvent, port: &mut SvcPort) {
        let MonitorEvent::Failed { resource, reason } = ev;
        if let Some(ifname) = resource.strip_prefix("carrier:") {
            // Client networks: every group running here on that interface.
            let hit: Vec<String> = self
                .groups
                .values()
                .filter(|g| g.group.interface == ifname && !g.group.addresses.is_empty() && self.active.holds(&g.group.name))
                .filter(|g| port.core().local_phase(&g.group.name) == baton_core::services::LocalPhase::Running)
                .map(|g| g.group.name.clone())
                .collect();
            for group in hit {
                warn!(group = %group, interface = ifname, "client interface lost its carrier: the group moves");
                self.event(serde_json::json!({"event": "monitor_failed", "service": group, "node": self.me, "reason": reason}));
                port.feed(Input::MonitorFailed { service: group });
            }
            return;
        }
        let Some(group) = self
            .groups
            .values()
            .find(|g| g.group.resources().any(|r| r.name == resource))
            .map(|g| g.group.name.clone())
        else {
            return;
        };
        if !self.active.holds(&group) {
            if port.core().standby_phase(&group) == StandbyPhase::Running {
                warn!(group = %group, resource = %resource, reason = %reason, "hot standby: the standby instance failed: restarting it");
                self.event(serde_json::json!({"event": "standby_failed", "service": group, "node": self.me, "reason": reason}));
                port.feed(Input::StandbyFailed { service: group });
            }
            return; // a late report after the halt method
        }
        warn!(group = %group, resource = %resource, reason = %reason, "monitor failure");
        self.event(serde_json::json!({"event": "monitor_failed", "service": group, "node": self.me, "reason": reason}));
        port.feed(Input::MonitorFailed { service: group });
    }

    /// The local load figure (unordered preferences): the 1-minute load average × 100.
    pub fn feed_load(&mut self, port: &mut SvcPort) {
        let figure = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse::<f64>().ok()))
            .map(|f| (f * 100.0) as u64)
            .unwrap_or(0);
        port.feed(Input::Load { figure });
    }

    pub fn tick(&mut self, port: &mut SvcPort) {
        port.feed(Input::Tick);
    }

    /// Carries out one action of the services core (in the order the node
    /// gives them); [`ServiceManager::after_actions`] ends a batch.
    pub fn run_action(&mut self, a: Action, channel: &Channel) {
        {
            match a {
                Action::Send { to, msg } => {
                    channel.send_services(to, &msg);
                }
                Action::Start { params } => self.run_method(params),
                Action::StandbyStart { service } => self.standby_start(service),
                Action::StandbyStop { service } => self.standby_stop(service),
                Action::Stop { params } => self.halt_method(params),
                Action::Notify { params } => self.hook(params, None),
                Action::Recovery { params, failed } => self.hook(params, Some(failed)),
                Action::Offline { params } => self.offline_method(params),
                Action::EnableEvents { service } => {
                    if let Some(g) = self.groups.get(&service) {
                        g.monitors.iter().for_each(|m| m.enable());
                    }
                }
                Action::DisableEvents { service } => {
                    if let Some(g) = self.groups.get(&service) {
                        g.monitors.iter().for_each(|m| m.disable());
                    }
                }
                Action::Alert { service, reason } if self.stopping => {
                    // Every node leaves: the group stops with the cluster.
                    info!(service = %service, ?reason, "the group stopped with the cluster (baton stop --all)");
                }
                Action::Alert { service, reason } => {
                    error!(service = %service, ?reason, "ALERT");
                    self.event(serde_json::json!({"event": "alert", "service": service, "reason": format!("{reason:?}")}));
                }
                // Consumed by the composed node (a held leave goes on).
                Action::Drained { .. } => {}
                Action::Changed { status } => {
                    let elsewhere = status.node.is_some_and(|n| n != self.me)
                        && matches!(status.state, baton_core::services::ServiceState::Starting | baton_core::services::ServiceState::Registered);
                    if let (true, Some(h)) = (elsewhere, &self.handovers) {
                        h.started_elsewhere(&status.name);
                    }
                    self.status.insert(status.name.clone(), status);
                    self.status_dirty = true;
                }
            }
        }
    }

    /// After a batch of actions: groups a reload removed are dropped once
    /// the core forgot them (nothing of them runs here any more), and
    /// services.json is written if anything changed.
    pub fn after_actions(&mut self, core: &Services) {
        // Maintenance freezes every decision, cluster-wide: said once per
        // change, on every node, so that a group placed nowhere has its
        // reason in the log (chaos seed 2026: it stayed on for minutes
        // unnoticed).
        let maintenance = core.registry().maintenance;
        if maintenance != self.maintenance {
            self.maintenance = maintenance;
            if maintenance {
                warn!("maintenance mode on: no group is started, stopped or moved anywhere until `baton maintenance off`");
            } else {
                info!("maintenance mode off: groups are placed again");
            }
        }
        let forgotten: Vec<String> = self.groups.keys().filter(|n| !core.specs().any(|s| &s.name == *n)).cloned().collect();
        for n in forgotten {
            info!(service = %n, "group removed by the reload: stopped everywhere and forgotten");
            self.groups.remove(&n);
            self.status.remove(&n);
            self.status_dirty = true;
        }
        if std::mem::take(&mut self.status_dirty) {
            self.write_snapshot();
        }
    }

    fn write_snapshot(&self) {
        let lines = baton_state::Services(self.status.values().map(status_line).collect());
        let _ = crate::statefile::write_json(&self.snapshot, &lines, false);
    }

    fn event(&self, v: serde_json::Value) {
        crate::eventlog::record(&self.events, v);
    }

    fn env(params: &ActionParams, failed: Option<NodeId>) -> Vec<(String, String)> {
        let mut env = vec![
            ("BATON_SERVICE".to_string(), params.service.clone()),
            ("BATON_NODE".to_string(), params.node.to_string()),
            ("BATON_REASON".to_string(), format!("{:?}", params.reason)),
        ];
        if let Some(p) = params.previous {
            env.push(("BATON_PREVIOUS_NODE".into(), p.to_string()));
        }
        if let Some(f) = failed {
            env.push(("BATON_FAILED_NODE".into(), f.to_string()));
        }
        env
    }

    /// S4.3 run method: the addresses, then the application (monitors are
    /// the core's EnableEvents), then the announcements and "service up".
    fn run_method(&mut self, params: ActionParams) {
        let Some(t) = self.task(&params.service) else {
            let _ = self.done_tx.try_send(SvcDone::Start { service: params.service.clone(), result: ActionResult::failed(1, "unknown group") });
            return;
        };
        info!(service = %t.group.name, reason = ?params.reason, previous = ?params.previous, "run method: start");
        // Hot standby: an instance running here as the standby is promoted
        // (its standby monitor ends; the group's monitors follow the start).
        if let Some(m) = self.groups.get(&params.service).and_then(|g| g.standby_mon.as_ref()) {
            if m.is_enabled() {
                info!(service = %t.group.name, "hot standby: promoting the standby instance");
            }
            m.disable();
        }
        tokio::spawn(async move {
            let _guard = t.lock.lock().await;
            crate::services::watchdog::run_begins(t.watchdog.as_ref(), &t.group.name).await;
            t.active.hold(&t.group.name);
            let t0 = monotonic_ns();
            // Prepared by a handover: the application already runs and the
            // addresses are configured; only the announcement is left.
            let result = if t.handovers.as_ref().is_some_and(|h| h.take_prepared(&t.group)) {
                info!(service = %t.group.name, "run method: prepared by the handover; announcing the addresses");
                announce_all(&t.group);
                Ok(())
            } else {
                run_group(&t.group, t.app.as_deref()).await
            };
            let ms = (monotonic_ns() - t0) as f64 / 1e6;
            t.active.set_pgids(&t.group.name, &crate::services::watchdog::pgids_of(t.app.as_deref()).await);
            match &result {
                Ok(()) => {
                    info!(service = %t.group.name, ms, "service up");
                    crate::eventlog::record(&t.events, serde_json::json!({"event": "service_up", "service": t.group.name, "node": t.me, "start_ms": ms, "reason": format!("{:?}", params.reason)}));
                }
                Err(e) => error!(service = %t.group.name, "start failed: {e}"),
            }
            let result = match result {
                Ok(()) => ActionResult::OK,
                Err(e) => ActionResult::failed(1, &e.to_string()),
            };
            let _ = t.tx.send(SvcDone::Start { service: t.group.name.clone(), result }).await;
        });
    }

    /// Hot standby: the application starts here without the addresses (it
    /// binds to them non-locally); the guard learns of it, so that it stops
    /// with the agent; a new run generation keeps an earlier halt's
    /// watchdog away from it.
    fn standby_start(&mut self, service: String) {
        let Some(t) = self.task(&service) else {
            let _ = self.done_tx.try_send(SvcDone::StandbyStarted { service, result: ActionResult::failed(1, "unknown group") });
            return;
        };
        info!(service = %service, "hot standby: starting the standby instance");
        tokio::spawn(async move {
            let _guard = t.lock.lock().await;
            crate::services::watchdog::run_begins(t.watchdog.as_ref(), &t.group.name).await;
            t.active.hold_standby(&t.group.name);
            let t0 = monotonic_ns();
            let result = match t.app.as_deref() {
                Some(app) => match app.start().await {
                    Ok(()) => Ok(()),
                    Err(source) => {
                        let _ = app.stop().await;
                        Err(ServiceError::Application { source })
                    }
                },
                None => Err(ServiceError::NoApplication),
            };
            let ms = (monotonic_ns() - t0) as f64 / 1e6;
            let pgids = crate::services::watchdog::pgids_of(t.app.as_deref()).await;
            match &result {
                Ok(()) => {
                    t.active.set_standby_pgids(&t.group.name, &pgids);
                    info!(service = %t.group.name, ms, pgid = ?pgids.first(), "hot standby: standby instance up");
                    crate::eventlog::record(&t.events, serde_json::json!({"event": "standby_up", "service": t.group.name, "node": t.me, "start_ms": ms, "pgid": pgids.first()}));
                }
                Err(e) => {
                    t.active.release_standby(&t.group.name);
                    error!(service = %t.group.name, "hot standby: the standby instance did not start: {e}");
                }
            }
            let result = match result {
                Ok(()) => ActionResult::OK,
                Err(e) => ActionResult::failed(1, &e.to_string()),
            };
            let _ = t.tx.send(SvcDone::StandbyStarted { service: t.group.name.clone(), result }).await;
        });
    }

    /// Hot standby: the standby instance stops here (its monitor first).
    fn standby_stop(&mut self, service: String) {
        if let Some(m) = self.groups.get(&service).and_then(|g| g.standby_mon.as_ref()) {
            m.disable();
        }
        let Some(t) = self.task(&service) else {
            let _ = self.done_tx.try_send(SvcDone::StandbyStopped { service, result: ActionResult::OK });
            return;
        };
        info!(service = %service, "hot standby: stopping the standby instance");
        tokio::spawn(async move {
            let _guard = t.lock.lock().await;
            let result = match t.app.as_deref() {
                Some(app) => app.stop().await.map_err(|source| ServiceError::Application { source }),
                None => Ok(()),
            };
            match &result {
                Ok(()) => {
                    if !t.active.holds(&t.group.name) {
                        t.active.release_standby(&t.group.name);
                    }
                    crate::eventlog::record(&t.events, serde_json::json!({"event": "standby_down", "service": t.group.name, "node": t.me}));
                }
                Err(e) => error!(service = %t.group.name, "hot standby: stopping the standby instance failed: {e}"),
            }
            let result = match result {
                Ok(()) => ActionResult::OK,
                Err(e) => ActionResult::failed(1, &e.to_string()),
            };
            let _ = t.tx.send(SvcDone::StandbyStopped { service: t.group.name.clone(), result }).await;
        });
    }

    /// What a run or halt task of `service` needs (None: no such group).
    fn task(&self, service: &str) -> Option<GroupTask> {
        let g = self.groups.get(service)?;
        Some(GroupTask {
            group: g.group.clone(),
            app: g.app.clone(),
            lock: g.lock.clone(),
            tx: self.done_tx.clone(),
            events: self.events.clone(),
            me: self.me,
            active: self.active.clone(),
            handovers: self.handovers.clone(),
            watchdog: self.watchdog.clone(),
        })
    }

    /// S4.6: the group is held off-line here: its application stops if it
    /// ran here (the monitors were disabled first), its addresses are
    /// configured (acquired and announced if they were not), and a watchdog
    /// checks that the application stays down (the addresses stay).
    fn offline_method(&mut self, params: ActionParams) {
        let Some(t) = self.task(&params.service) else {
            let _ = self.done_tx.try_send(SvcDone::Offline { service: params.service.clone(), result: ActionResult::failed(1, "unknown group") });
            return;
        };
        info!(service = %t.group.name, reason = ?params.reason, "off-line: application stopped, addresses kept");
        tokio::spawn(async move {
            let _guard = t.lock.lock().await;
            let was_running = t.active.holds(&t.group.name);
            let pgids = crate::services::watchdog::pgids_of(t.app.as_deref()).await;
            crate::services::watchdog::run_begins(t.watchdog.as_ref(), &t.group.name).await;
            t.active.hold(&t.group.name);
            let result = offline_group(&t.group, t.app.as_deref(), was_running).await;
            match &result {
                Ok(()) => {
                    crate::eventlog::record(&t.events, serde_json::json!({"event": "service_offline", "service": t.group.name, "node": t.me, "reason": format!("{:?}", params.reason)}));
                    if was_running {
                        crate::services::watchdog::after_halt(t.watchdog.as_ref(), &t.group.name, "Offline", pgids, true, false);
                    }
                }
                Err(e) => error!(service = %t.group.name, "going off-line failed: {e}"),
            }
            let result = match result {
                Ok(()) => ActionResult::OK,
                Err(e) => ActionResult::failed(1, &e.to_string()),
            };
            let _ = t.tx.send(SvcDone::Offline { service: t.group.name.clone(), result }).await;
        });
    }

    /// S4.3 halt method: the application, then the addresses, then
    /// "service down" (the monitors were disabled by the core first).
    fn halt_method(&mut self, params: ActionParams) {
        let Some(t) = self.task(&params.service) else {
            let _ = self.done_tx.try_send(SvcDone::Stop { service: params.service.clone(), result: ActionResult::OK });
            return;
        };
        info!(service = %t.group.name, reason = ?params.reason, "halt method: stop");
        tokio::spawn(async move {
            let _guard = t.lock.lock().await;
            let pgids = crate::services::watchdog::pgids_of(t.app.as_deref()).await;
            let planned = matches!(params.reason, Reason::Switchover | Reason::Transfer | Reason::Failback);
            let next = params.next.filter(|n| planned && *n != t.me && t.group.handover == groups::Handover::Overlap);
            let handed = match (next, &t.handovers) {
                (Some(n), Some(h)) => {
                    let gh = crate::services::handover::GroupHandle { group: t.group.clone(), app: t.app.clone(), lock: t.lock.clone() };
                    h.hand_over(&gh, n).await
                }
                _ => Ok(false),
            };
            let result = match handed {
                Ok(true) => Ok(()),
                Ok(false) => halt_group(&t.group, t.app.as_deref(), planned).await,
                Err(e) => Err(e.into()),
            };
            match &result {
                Ok(()) => {
                    t.active.release(&t.group.name);
                    info!(service = %t.group.name, "service down");
                    crate::eventlog::record(&t.events, serde_json::json!({"event": "service_down", "service": t.group.name, "node": t.me}));
                }
                Err(e) => error!(service = %t.group.name, "stop failed: {e}"),
            }
            // S4.5: a watchdog checks that the group is really down here.
            let reason = format!("{:?}", params.reason);
            crate::services::watchdog::after_halt(t.watchdog.as_ref(), &t.group.name, &reason, pgids, false, result.is_err());
            let result = match result {
                Ok(()) => ActionResult::OK,
                Err(e) => ActionResult::failed(1, &e.to_string()),
            };
            let _ = t.tx.send(SvcDone::Stop { service: t.group.name.clone(), result }).await;
        });
    }

    /// Notify and recovery action functions (S1.13), when configured.
    fn hook(&mut self, params: ActionParams, failed: Option<NodeId>) {
        let service = params.service.clone();
        let line = self.groups.get(&service).and_then(|g| if failed.is_some() { g.group.recovery.clone() } else { g.group.notify.clone() });
        let env = Self::env(&params, failed);
        let tx = self.done_tx.clone();
        tokio::spawn(async move {
            let result = match line {
                None => ActionResult::OK,
                Some(line) => {
                    let action = if failed.is_some() { resource::Action::Recovery } else { resource::Action::Notify };
                    info!(service = %service, ?action, "action function");
                    match resource::run_hook(&service, action, &line, &env, Duration::from_secs(60)).await {
                        Ok(_) => ActionResult::OK,
                        Err(e) => {
                            error!(service = %service, "{e}");
                            ActionResult::failed(1, &e.to_string())
                        }
                    }
                }
            };
            let d = if failed.is_some() { SvcDone::Recovery { service, result } } else { SvcDone::Notify { service, result } };
            let _ = tx.send(d).await;
        });
    }

    /// On the way out (halted, forced out, stopped without a finished
    /// leave): run the halt method of every group that still runs here,
    /// children first, so this node holds no address and runs no service.
    pub async fn stop_all_local(&mut self, core: Option<&Services>) {
        // Hot-standby instances first (they hold no address).
        for (name, rt) in &self.groups {
            if self.active.holds(name) || core.is_none_or(|c| c.standby_phase(name) == StandbyPhase::Idle) {
                continue;
            }
            if let Some(m) = &rt.standby_mon {
                m.disable();
            }
            let _guard = rt.lock.lock().await;
            if let Some(app) = rt.app.as_deref() {
                info!(service = %name, "leaving the cluster: stopping the hot-standby instance");
                if let Err(e) = app.stop().await {
                    error!(service = %name, "stopping the hot-standby instance on exit failed: {e}");
                    continue;
                }
            }
            self.active.release_standby(name);
        }
        let names: Vec<String> = self.active.names();
        if names.is_empty() {
            return;
        }
        let groups: Vec<Group> = self.groups.values().map(|g| g.group.clone()).collect();
        let order = groups::start_order(&groups);
        for i in order.into_iter().rev() {
            let g = &groups[i];
            if !names.contains(&g.name) {
                continue;
            }
            let rt = &self.groups[&g.name];
            rt.monitors.iter().for_each(|m| m.disable());
            warn!(service = %g.name, "leaving the cluster with the service running here: halting it");
            let _guard = rt.lock.lock().await;
            let pgids = crate::services::watchdog::pgids_of(rt.app.as_deref()).await;
            let r = halt_group(&rt.group, rt.app.as_deref(), false).await;
            if let Err(e) = &r {
                error!(service = %g.name, "halt on exit failed: {e}");
            }
            if r.is_ok() {
                self.active.release(&g.name);
            }
            // S4.5: the watchdog outlives the agent (its own session).
            crate::services::watchdog::after_halt(self.watchdog.as_ref(), &g.name, "Exit", pgids, false, r.is_err());
            self.event(serde_json::json!({"event": "service_down", "service": g.name, "node": self.me}));
        }
        let _ = std::fs::remove_file(&self.snapshot);
    }
}

/// The registered groups and their node (for the negotiated takeover).
impl ServiceManager {
    pub fn registered(&self) -> Vec<(String, NodeId)> {
        self.status
            .values()
            .filter(|s| s.state == baton_core::services::ServiceState::Registered)
            .filter_map(|s| s.node.map(|n| (s.name.clone(), n)))
            .collect()
    }
}

async fn run_group(g: &Group, app: Option<&Resource>) -> Result<(), ServiceError> {
    // Client networks: no address on an interface that cannot carry it
    // (the deciding node then tries the next node).
    if !g.addresses.is_empty() {
        match crate::services::carrier::has_carrier(&g.interface) {
            Ok(true) => {}
            Ok(false) => return Err(ServiceError::NoCarrier { interface: g.interface.clone() }),
            Err(source) => return Err(ServiceError::Carrier { source }),
        }
    }
    for a in &g.addresses {
        crate::services::addr::add(&g.interface, a.ip, a.prefix, true).await.map_err(|source| ServiceError::Address { address: *a, source })?;
    }
    if let Some(app) = app {
        if let Err(source) = app.start().await {
            // Leave nothing half-started: the address goes too.
            let _ = app.stop().await;
            release_all(g).await;
            return Err(ServiceError::Application { source });
        }
    }
    // Only now tell the neighbours (gratuitous ARP / unsolicited NA): a
    // client that follows the announcement at once finds the application
    // listening, not a port that refuses it.
    announce_all(g);
    Ok(())
}

/// The announcements of every address of `g`. The rounds go on in the
/// background; the first leaves at once.
fn announce_all(g: &Group) {
    for a in &g.addresses {
        let (iface, ip) = (g.interface.clone(), a.ip);
        let opts = crate::services::addr::Announce {
            count: g.garp_count,
            interval: Duration::from_millis(g.garp_interval_ms as u64),
            ..Default::default()
        };
        tokio::spawn(async move {
            if let Err(e) = crate::services::addr::announce(&iface, ip, &opts).await {
                warn!(address = %ip, interface = %iface, "announcing the address failed: {e}");
            }
        });
    }
}

/// S4.6: hold `g` off-line here: stop its application if it ran here, then
/// make sure its addresses are configured (acquired and announced when they
/// were not: the group is taken over off-line).
async fn offline_group(g: &Group, app: Option<&Resource>, was_running: bool) -> Result<(), ServiceError> {
    if let (true, Some(app)) = (was_running, app) {
        app.stop().await.map_err(|source| ServiceError::Application { source })?;
    }
    let mut acquired = false;
    for a in &g.addresses {
        let was = crate::services::addr::add(&g.interface, a.ip, a.prefix, true).await.map_err(|source| ServiceError::Address { address: *a, source })?;
        acquired |= !was;
    }
    if acquired {
        announce_all(g);
    }
    Ok(())
}

/// S4.3 halt method: the application, then the addresses. For a planned
/// move (switchover, transfer, failback) the address goes first instead:
/// a client that connects meanwhile sees its SYN unanswered and retries
/// (to the new owner, after its gratuitous ARP) rather than being refused
/// by an address whose application is already gone.
async fn halt_group(g: &Group, app: Option<&Resource>, planned: bool) -> Result<(), ServiceError> {
    if planned {
        release_all(g).await;
    }
    if let Some(app) = app {
        if let Err(source) = app.stop().await {
            // A stop that failed: the application may still run (and, for
            // an unplanned halt, use the address): keep the address then;
            // the core starts the service nowhere else meanwhile.
            return Err(ServiceError::Application { source });
        }
    }
    if !planned {
        release_all(g).await;
    }
    Ok(())
}


/// What a reload changed, by group name.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Changed in any way (placement or resources).
    pub changed: Vec<String>,
    /// Of the changed ones, those running here whose addresses, interface,
    /// application or monitors were changed in place.
    pub changed_here: Vec<String>,
}

impl GroupChanges {
    pub fn summary(&self) -> String {
        let l = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        format!("added {}; removed {}; changed {}", l(&self.added), l(&self.removed), l(&self.changed))
    }
}

/// Whether what runs on the node (addresses, application, monitors)
/// differs between two definitions of a group.
fn resources_differ(a: &Group, b: &Group) -> bool {
    a.addresses != b.addresses
        || a.interface != b.interface
        || a.application != b.application
        || a.monitors != b.monitors
        || a.garp_count != b.garp_count
        || a.garp_interval_ms != b.garp_interval_ms
}

impl ServiceManager {
    /// A reload's groups (docs/reload.md): added groups are registered by
    /// the decider, removed ones stopped everywhere and forgotten, changed
    /// ones keep running where they run unless their node is no longer
    /// allowed. A changed group that runs here gets its new addresses,
    /// application and monitors in place, under its lock: the monitors stop,
    /// the application is restarted only if it changed, addresses that went
    /// are removed and new ones added and announced, then the new monitors
    /// start. A new application that fails to start counts as a monitor
    /// failure (the group moves). Nothing is applied if the core refuses
    /// the set.
    pub fn reload(&mut self, groups: &[Group], port: &mut SvcPort) -> Result<GroupChanges, ServiceError> {
        let new: BTreeMap<String, &Group> = groups.iter().map(|g| (g.name.clone(), g)).collect();
        let mut ch = GroupChanges::default();
        for (name, g) in &new {
            match self.groups.get(name) {
                None => ch.added.push(name.clone()),
                Some(rt) if port.core().is_configured(name) => {
                    if rt.group != **g {
                        ch.changed.push(name.clone());
                    }
                }
                // Removed by an earlier reload and not forgotten yet: given
                // again; its (stopping) runtime is replaced below.
                Some(_) => ch.changed.push(name.clone()),
            }
        }
        for name in self.groups.keys() {
            if !new.contains_key(name) && port.core().is_configured(name) {
                ch.removed.push(name.clone());
            }
        }
        // Runtimes of added groups first: the core may start them at once.
        allow_nonlocal_bind(self.me, groups)?;
        for name in &ch.added {
            let g = new[name];
            let (app, monitors) = resources_of(g, &self.mon_tx);
            let standby_mon = standby_monitor(g, app.as_ref(), &self.mon_tx);
            self.groups.insert(name.clone(), GroupRt { group: g.clone(), app, monitors, standby_mon, lock: Arc::new(tokio::sync::Mutex::new(())) });
        }
        let specs: Vec<ServiceSpec> = groups.iter().map(spec_of).collect();
        if let Err(source) = port.reconfigure(specs) {
            for name in &ch.added {
                self.groups.remove(name);
            }
            return Err(ServiceError::Groups { source });
        }
        let mut stale_standbys = Vec::new();
        for name in ch.changed.clone() {
            let g = new[&name].clone();
            let rt = self.groups.get_mut(&name).expect("a changed group has a runtime");
            if !resources_differ(&rt.group, &g) {
                rt.group = g;
                continue;
            }
            let old_group = std::mem::replace(&mut rt.group, g.clone());
            let (app, monitors) = resources_of(&g, &self.mon_tx);
            let old_app = std::mem::replace(&mut rt.app, app.clone());
            // The old monitor loops end here (dropped), the new ones start
            // disabled.
            rt.monitors = monitors;
            rt.standby_mon = standby_monitor(&g, app.as_ref(), &self.mon_tx);
            if !self.active.holds(&name) {
                if port.core().standby_phase(&name) != StandbyPhase::Idle {
                    // A standby instance of the old definition: stopped,
                    // then restarted with the new one (as after a failure).
                    let lock = rt.lock.clone();
                    tokio::spawn(async move {
                        let _guard = lock.lock().await;
                        if let Some(a) = old_app {
                            let _ = a.stop().await;
                        }
                    });
                    stale_standbys.push(name.clone());
                }
                continue;
            }
            ch.changed_here.push(name.clone());
            let lock = rt.lock.clone();
            let tx = self.done_tx.clone();
            let mon_tx = self.mon_tx.clone();
            let active = self.active.clone();
            let events = self.events.clone();
            let me = self.me;
            tokio::spawn(async move {
                let _guard = lock.lock().await;
                let ok = change_in_place(&old_group, old_app.as_deref(), &g, app.as_deref(), &mon_tx).await;
                active.set_pgids(&g.name, &crate::services::watchdog::pgids_of(app.as_deref()).await);
                crate::eventlog::record(&events, serde_json::json!({"event": "service_reconfigured", "service": g.name, "node": me, "ok": ok}));
                let _ = tx.send(SvcDone::Reconfigured { service: g.name.clone(), ok }).await;
            });
        }
        for name in stale_standbys {
            port.feed(Input::StandbyFailed { service: name });
        }
        Ok(ch)
    }
}

/// A group running here takes its new definition (see
/// [`ServiceManager::reload`]). Returns whether all of it applied.
async fn change_in_place(old: &Group, old_app: Option<&Resource>, new: &Group, app: Option<&Resource>, mon_tx: &mpsc::Sender<MonitorEvent>) -> bool {
    let mut ok = true;
    let app_changed = old.application != new.application;
    if app_changed {
        if let Some(a) = old_app {
            if let Err(e) = a.stop().await {
                error!(service = %new.name, "reload: stopping the old application failed: {e}");
            }
        }
    }
    // Addresses that went (all of them if the interface changed).
    let moved = old.interface != new.interface;
    for a in &old.addresses {
        if moved || !new.addresses.contains(a) {
            if let Err(e) = crate::services::addr::release(&old.interface, a.ip, a.prefix).await {
                error!(service = %new.name, address = %a, "reload: removing the address failed: {e}");
            }
        }
    }
    let mut added = Vec::new();
    for a in &new.addresses {
        if moved || !old.addresses.contains(a) {
            match crate::services::addr::add(&new.interface, a.ip, a.prefix, true).await {
                Ok(_) => added.push(*a),
                Err(e) => {
                    error!(service = %new.name, address = %a, "reload: adding the address failed: {e}");
                    ok = false;
                }
            }
        }
    }
    if app_changed {
        if let Some(a) = app {
            if let Err(e) = a.start().await {
                error!(service = %new.name, "reload: the new application did not start: {e}");
                ok = false;
            }
        }
    }
    if !added.is_empty() {
        let only_new = Group { addresses: added, ..new.clone() };
        announce_all(&only_new);
    }
    info!(service = %new.name, ok, app_restarted = app_changed, "reload: group changed in place");
    if !ok {
        // As a failed monitor: the group moves (the halt uses the new
        // definition).
        let _ = mon_tx.send(MonitorEvent::Failed { resource: new.name.clone(), reason: "the reload's new definition did not apply".into() }).await;
    }
    ok
}
