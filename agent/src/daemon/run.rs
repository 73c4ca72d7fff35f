//! `baton run`: the daemon.

use std::path::Path;

pub use crate::daemon::error::DaemonError;
use aya::maps::{MapData, RingBuf};
use baton_common::{siphash::key_halves, Event};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};

use crate::config::{self, Config};
use crate::datapath::Datapath;
use crate::datapath::events::{monotonic_ns, EventSink, PeerTracker};
use crate::services::guard::GuardLink;
use crate::daemon::cluster::{ClusterDriver, Effect, FIRST_EXTERNAL_SUBSYSTEM};
use crate::daemon::reload::ReloadError;
use crate::control::subsys::{SubsysEvent, SubsysServer};
use crate::{control::socket as control, datapath::sender};
use baton_core::membership::{HaltReason, Input};

type Result<T> = std::result::Result<T, DaemonError>;

/// A new incarnation: the wall clock in µs, but always above the last one
/// this node used (kept in the state dir), so a restart is always "newer" even
/// if the clock stepped back.
/// An unreadable or corrupt file is an error that names it
/// ([`crate::statefile::next_incarnation`]).
pub fn next_incarnation(file: &Path) -> Result<u64> {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    Ok(crate::statefile::next_incarnation(file, wall)?)
}

/// Takes `<state_dir>/agent.lock` (an exclusive `flock`, held for as long
/// as the returned file is open): a second agent with the same state
/// directory refuses to start.
pub fn lock_state_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg, OFlag};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("agent.lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .map_err(|source| DaemonError::LockFile { path: path.clone(), source })?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => Ok(locked),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(DaemonError::StateDirLocked { dir: dir.to_path_buf(), path }),
        Err((_, e)) => Err(DaemonError::Lock { path, source: std::io::Error::from(e) }),
    }
}

/// How long a graceful leave may take after a stop was asked for (SIGTERM,
/// SIGINT, `baton stop`, `baton stop --all`) before the agent stops anyway
/// (the guard then releases what is left).
pub const LEAVE_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

/// How `baton run` ended without an error.
#[derive(Debug)]
pub enum Ended {
    /// Stopped by a signal (after a graceful leave, or without one).
    Stopped,
    /// Clustering halted on this node (S1.7, S0): see [`rejoin_delay`].
    /// `member_for`: how long this life had been a joined member when it
    /// halted (None: it never joined); see [`halts_in_a_row`].
    Halted { why: HaltReason, member_for: Option<std::time::Duration> },
}

/// The operator's stop signals (SIGTERM, SIGINT), registered once for the
/// whole process and kept across a halt: a signal that arrives while a
/// halted life shuts down (after the event loop stopped listening, before
/// the wait for the new life) stays pending here and stops the agent
/// instead of being lost (tokio only reports a signal to a listener that
/// existed when it came; a lost SIGTERM let the agent start a new life and
/// ignore the stop until its supervisor's SIGKILL).
pub struct StopSignals {
    pub term: tokio::signal::unix::Signal,
    pub int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Must be called inside the tokio runtime.
    pub fn new() -> std::io::Result<StopSignals> {
        Ok(StopSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }
}

/// After a halt, how long until the agent starts again as a new life, or
/// `None` when it must exit instead: after a local critical failure (S0:
/// the node shuts down until someone looks at it), with
/// `membership.rejoin_ms = 0`, and in a cluster of two configured nodes
/// (a new life that cannot see the other node forms a cluster of its own
/// there, so a partition would give two; the operator restarts it, as
/// corosync's `two_node` with `wait_for_all` asks). `streak` counts the
/// halts in a row before this one ([`halts_in_a_row`]: lives shorter than
/// a minute that were members for less than [`STABLE_MEMBER`]): the delay
/// doubles for each, up to 60 s.
pub fn rejoin_delay(cfg: &Config, why: &HaltReason, streak: u32) -> Option<std::time::Duration> {
    // A node fenced off the shared disks (its key preempted) may join again
    // as a new life: its join registers its key only after the others
    // finished the old life's forced leave (docs/fencing.md).
    let fenced = matches!(why, HaltReason::LocalFailure { reason } if *reason == baton_common::DISTRESS_FENCED);
    if cfg.rejoin_ms == 0 || cfg.peers.len() < 2 || (matches!(why, HaltReason::LocalFailure { .. }) && !fenced) {
        return None;
    }
    let ms = (cfg.rejoin_ms as u64).saturating_mul(1u64 << streak.min(16)).min(60_000.max(cfg.rejoin_ms as u64));
    Some(std::time::Duration::from_millis(ms))
}

/// A life that was a joined member this long before it halted worked: its
/// halt is not one more of a flapping node's, and the back-off starts
/// again at `membership.rejoin_ms` (docs/membership.md, "Halting").
pub const STABLE_MEMBER: std::time::Duration = std::time::Duration::from_secs(10);

/// The `streak` of [`rejoin_delay`] for this halt: `prev`, the halts in a
/// row before it, continues only while the node keeps failing, that is when
/// the life that halted lived less than a minute and was a joined member
/// for less than [`STABLE_MEMBER`] (`member_for`, None: it never joined);
/// otherwise the count starts again (0). Before this, a life's length
/// alone decided: in chaos runs a node hit by separate faults every 15–30 s,
/// a member for 10–30 s in between each time, reached the 60 s back-off
/// (seven halts "in a row") and came back a minute after the heal.
pub fn halts_in_a_row(prev: u32, lived: std::time::Duration, member_for: Option<std::time::Duration>) -> u32 {
    if lived >= std::time::Duration::from_secs(60) || member_for.is_some_and(|m| m >= STABLE_MEMBER) {
        0
    } else {
        prev
    }
}

/// The open-file soft limit the agent asks for (see [`raise_nofile_limit`]).
pub const NOFILE_TARGET: u64 = 65536;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, at most
/// [`NOFILE_TARGET`] (the agent, its resource actions, monitors and redials
/// all need descriptors; the usual soft default is 1024; the children the
/// agent starts inherit it, and some old programs loop over every possible
/// descriptor, hence the cap). Returns (soft, hard) after the attempt.
pub fn raise_nofile_limit() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (mut soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(r) => r,
        Err(e) => {
            warn!("getrlimit(RLIMIT_NOFILE) failed: {}", std::io::Error::from(e));
            return (0, 0);
        }
    };
    let target = hard.min(NOFILE_TARGET);
    if soft < target {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            warn!(soft, hard, "cannot raise the open-file limit: {}", std::io::Error::from(e));
        } else {
            soft = target;
        }
    }
    (soft, hard)
}

pub async fn run(cfg_path: &Path, stop: &mut StopSignals) -> Result<Ended> {
    let (soft, hard) = raise_nofile_limit();
    info!(soft, hard, "open-file limit (RLIMIT_NOFILE)");
    let cfg = config::load(cfg_path)?;
    // Every event recorded (events.jsonl) goes to the event manager and the
    // metrics too.
    crate::eventlog::set_publisher(|v| {
        crate::services::eventmgr::publish(v);
        crate::services::metrics::observe(v);
    });
    // First: a metrics port in use is one clear error before anything runs.
    let metrics = crate::services::metrics::bind(&cfg)?;
    crate::datapath::check_prerequisites()?;
    crate::daemon::caps::check(&cfg, crate::daemon::caps::effective())?;
    let key = config::read_secret(&cfg.secret_file)?;
    std::fs::create_dir_all(&cfg.paths.state_dir).map_err(|source| DaemonError::StateDir { dir: cfg.paths.state_dir.clone(), source })?;
    // One agent per state directory, and never beside a live agent's
    // control socket: before anything of this node is touched (the
    // incarnation, the guard's start-clean, the datapath).
    let _state_lock = lock_state_dir(&cfg.paths.state_dir)?;
    crate::localsock::ensure_free(&cfg.paths.control_socket())?;
    crate::localsock::ensure_free(&cfg.paths.subsys_socket())?;
    let incarnation = next_incarnation(&cfg.paths.incarnation_file())?;
    // The membership snapshot of an earlier life is not ours.
    let _ = std::fs::remove_file(cfg.paths.cluster_snapshot());
    // Start clean, then the guard watches this life (docs/services.md,
    // "Ownership"): before the datapath, so nothing of an earlier life is
    // configured here when this one joins.
    let (guard, cleaned) = GuardLink::spawn(&cfg, incarnation).map_err(|source| DaemonError::Guard { source })?;
    if !cleaned.is_empty() {
        warn!(
            addresses = ?cleaned.addresses_removed, processes = ?cleaned.processes_stopped, applications = ?cleaned.applications_stopped,
            "start clean: removed what an earlier life of this node left behind"
        );
    }
    let guard = std::sync::Arc::new(guard);
    let result = run_guarded(&cfg, key, incarnation, &guard, &cleaned, metrics, stop).await;
    match &result {
        // Everything of this life is released (or nothing was ever held,
        // e.g. a start-up check failed): the guard ends with it.
        Ok(_) => guard.finish(),
        Err(_) if !guard.holds_anything() => guard.finish(),
        // Not released (an error ended the loop): the guard does it, and
        // tells the others at once (distress), as for a crash.
        Err(e) => error!("the agent ends with an error ({e:#}); the guard releases what this node held"),
    }
    result
}

async fn run_guarded(
    cfg: &Config,
    key: [u8; 16],
    incarnation: u64,
    guard: &std::sync::Arc<GuardLink>,
    cleaned: &crate::services::guard::Released,
    metrics: Option<std::net::TcpListener>,
    stop: &mut StopSignals,
) -> Result<Ended> {

    // The shared disks must be usable before this node joins (docs/fencing.md).
    let disks = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || crate::services::fencing::open_disks(&cfg)
    })
    .await
    .map_err(|source| DaemonError::Task { what: "checking the shared disks ([[disk]])", source })?
    .map_err(|source| DaemonError::Disks { source })?;
    for d in &disks {
        info!(disk = %d.disk.name, device = %d.disk.device.display(), pr_type = %d.disk.pr_type, key = format_args!("{:#x}", cfg.disk_key(cfg.node_id)), "shared disk checked: persistent reservations supported");
    }
    let (dp, events) = Datapath::start(cfg, &key, incarnation).await?;
    // After the datapath is loaded (aya's read and parse of the kernel's BTF,
    // several MB that are freed again, are not locked), before the heartbeat
    // sender exists: see `lock_memory`.
    lock_memory();
    let (k0, k1) = key_halves(&key);
    let sender = match sender::spawn(cfg, k0, k1, incarnation) {
        Ok(s) => s,
        Err(source) => {
            dp.stop();
            return Err(DaemonError::Sender { source });
        }
    };
    if let Some(l) = metrics {
        if let Err(source) = crate::services::metrics::spawn(cfg.clone(), l, sender.shared.clone()) {
            sender.stop();
            dp.stop();
            return Err(DaemonError::MetricsServe { source });
        }
    }
    let listener = match crate::localsock::bind(&cfg.paths.control_socket(), cfg.socket_access()) {
        Ok(l) => control::serve(l, cfg.socket_access()),
        Err(source) => {
            sender.stop();
            dp.stop();
            return Err(DaemonError::ControlSocket { path: cfg.paths.control_socket(), source });
        }
    };
    // The address lease (lease.rs): floating addresses are withdrawn at once
    // when this node hears no majority of its view.
    let lease = match crate::services::lease::spawn(cfg, sender.shared.clone()) {
        Ok(l) => l,
        Err(source) => {
            sender.stop();
            dp.stop();
            return Err(DaemonError::Lease { source });
        }
    };
    let mut status = baton_state::AgentStatus {
        pid: std::process::id(),
        incarnation,
        started_monotonic_ns: monotonic_ns(),
        config: baton_state::ConfigField::File(cfg.file.display().to_string()),
        xdp: dp.attachments.iter().map(|(i, m)| baton_state::XdpAttachment { interface: i.clone(), mode: m.to_string() }).collect(),
        watchdog_cpu: dp.watchdog_cpu,
        guard: baton_state::GuardLine { pid: guard.pid() },
        start_clean: cleaned.clone(),
        sender: Default::default(),
        takeover: None,
        channel: None,
        events_lost: None,
        silence: None,
    };
    write_agent_status(cfg, &mut status, &sender.shared);
    info!(
        cluster = %cfg.cluster_name, node = cfg.node_id, incarnation,
        interval_ms = cfg.interval_ms, misses = cfg.misses, peers = cfg.peers.len(), links = cfg.links.len(),
        pin_dir = %cfg.paths.bpffs_dir.display(),
        "baton agent running"
    );

    let result = async {
        let (channel, chan_rx) = crate::control::channel::Channel::start(crate::control::channel::ChannelConfig {
            me: cfg.node_id,
            cluster_id: cfg.cluster_id,
            incarnation,
            psk_secret: key,
            port: cfg.control_port,
            links: cfg.links.iter().map(|l| l.address).collect(),
            peers: cfg.peers.iter().map(|p| (p.id, p.addresses.clone())).collect(),
        })
        .await
        .map_err(|source| DaemonError::Channel { source })?;
        let (subsys, sub_rx) = SubsysServer::bind_with(&cfg.paths.subsys_socket(), FIRST_EXTERNAL_SUBSYSTEM, cfg.socket_access())
            .await
            .map_err(|source| DaemonError::Subsys { source })?;
        let mut nodes: std::collections::BTreeSet<u32> = cfg.peers.iter().map(|p| p.id).collect();
        nodes.insert(cfg.node_id);
        let core_cfg = baton_core::membership::Config {
            me: cfg.node_id,
            incarnation,
            nodes,
            subgroup_size: cfg.subgroup_size,
            resend_ns: cfg.resend_ms as u64 * 1_000_000,
            form_ns: cfg.form_ms as u64 * 1_000_000,
            batch_ns: baton_core::membership::DEFAULT_BATCH_NS,
            two_node_race: cfg.two_node_race(),
        };
        let mut names: std::collections::BTreeMap<u32, String> = cfg.peers.iter().map(|p| (p.id, p.name.clone())).collect();
        names.insert(cfg.node_id, cfg.node_name.clone());
        let svc_rx = channel.take_services_inbox();
        let fence_inbox = channel.take_fence_inbox();
        let app_rx = channel.take_app_inbox();
        let app_sender = channel.app_sender();
        let ownership = crate::services::guard::Ownership::new(Some(guard.clone()));
        crate::services::eventmgr::install(cfg, ownership.clone());
        let svc = crate::services::svc::ServiceManager::new(
            cfg.node_id,
            incarnation,
            &cfg.groups,
            cfg.paths.services_snapshot(),
            cfg.paths.events_log(),
            channel.take_handover_inbox().map(|inbox| crate::services::handover::Wiring {
                sender: channel.handover_sender(),
                inbox,
                pin_dir: cfg.paths.bpffs_dir.clone(),
            }),
            ownership,
        )
        .map_err(|source| DaemonError::Services { source })?;
        let (fencing, fence_rx) = if disks.is_empty() {
            (None, None)
        } else {
            let (f, slot, rx) = crate::daemon::cluster::FencingRt::new(cfg, disks);
            (Some((f, slot)), Some(rx))
        };
        let (services, svc_channels) = match svc {
            Some((mut m, ch, core)) => {
                m.set_watchdog(crate::services::watchdog::Ctx::new(&cfg.file, &cfg.paths.state_dir));
                (Some((m, core)), Some((ch, svc_rx.expect("services inbox"))))
            }
            None => (None, None),
        };
        let mut driver = ClusterDriver::new(core_cfg, channel, subsys, names, cfg.paths.cluster_snapshot(), services, fencing);
        driver.heartbeats = Some(sender.shared.clone());
        driver.set_lease_wait(cfg);
        let fence_inbox = fence_rx.as_ref().and(fence_inbox);
        let ha = Ha {
            takeover: crate::services::takeover::TakeoverRt::new(cfg, incarnation),
            health_rx: crate::services::health::spawn(cfg),
            app_rx,
            app_sender,
            selfcheck: crate::datapath::selfcheck::SelfCheck::new(cfg, dp.config, incarnation),
            reload: crate::daemon::reload::Reloader::new(cfg, key),
        };
        spawn_partner_checks(cfg, &ha);
        event_loop(cfg, events, &sender, listener, status, driver, chan_rx, sub_rx, svc_channels, fence_rx, fence_inbox, ha, guard, stop).await
    }
    .await;
    let _ = std::fs::remove_file(cfg.paths.control_socket());
    let _ = std::fs::remove_file(cfg.paths.subsys_socket());
    let _ = std::fs::remove_file(cfg.paths.agent_status());
    lease.stop();
    sender.stop();
    dp.stop();
    info!("baton agent stopped");
    match result? {
        Outcome::Stopped | Outcome::Left => Ok(Ended::Stopped),
        Outcome::Halted(why, member_for) => Ok(Ended::Halted { why, member_for }),
    }
}

/// Keeps the agent's memory resident, so that a page fault cannot stall the
/// real-time heartbeat sender (or the event loop) under memory pressure.
///
/// Two calls, made once start-up's big transient allocations are over:
/// * `mlockall(MCL_CURRENT)`: everything mapped now (the binary's code and
///   data, the heap, the runtime's thread stacks) is faulted in and locked;
/// * `mlockall(MCL_FUTURE | MCL_ONFAULT)`: later mappings are locked as their
///   pages are first touched, and never paged out after that, but are not
///   populated up front. (With plain `MCL_FUTURE` every later allocation,
///   thread stacks and buffers of which only a part is ever used included, was
///   faulted in at once: about a quarter of an agent's start-up CPU when it
///   came before the datapath, whose BTF parse allocates several MB.)
///
/// The sender thread is spawned after this; it touches its stack
/// (`sender::STACK_PREFAULT`) before its loop, and its loop allocates
/// nothing, so every page it uses is resident and locked before its first
/// heartbeat. `MCL_FUTURE` alone (without `MCL_CURRENT`) leaves the current
/// locks as they are.
fn lock_memory() {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    if let Err(e) = mlockall(MlockAllFlags::MCL_CURRENT) {
        warn!("mlockall(MCL_CURRENT) failed ({}); page faults may delay heartbeats", std::io::Error::from(e));
        return;
    }
    // nix 0.29 has no MCL_ONFAULT flag: libc's constant.
    if let Err(e) = mlockall(MlockAllFlags::MCL_FUTURE | MlockAllFlags::from_bits_retain(libc::MCL_ONFAULT)) {
        warn!("mlockall(MCL_FUTURE | MCL_ONFAULT) failed ({}); memory allocated from now on may be paged out", std::io::Error::from(e));
    }
}

/// `<state_dir>/agent.json`: what `baton status` shows about the agent
/// itself, with the sender's counters (refreshed every second).
fn write_agent_status(cfg: &Config, status: &mut baton_state::AgentStatus, s: &sender::SenderShared) {
    use std::sync::atomic::Ordering::Relaxed;
    status.sender = baton_state::SenderCounters {
        sent: s.sent.load(Relaxed),
        send_errors: s.send_errors.load(Relaxed),
        late_ticks: s.late_ticks.load(Relaxed),
        max_gap_us: s.max_gap_us.load(Relaxed),
        max_late_us: s.max_late_us.load(Relaxed),
        startup_max_gap_us: s.startup_max_gap_us.load(Relaxed),
        startup_max_late_us: s.startup_max_late_us.load(Relaxed),
    };
    let bound_us = cfg.interval_ms as u64 * cfg.misses as u64 * 1000;
    if let Some(gap) = s.gap_warning(bound_us) {
        warn!(
            gap_ms = gap as f64 / 1000.0,
            bound_ms = bound_us as f64 / 1000.0,
            "the heartbeat sender went this long without sending, at or past the silence bound: peers may see this live node silent; this machine does not hold this heartbeat setting under its load (docs/datapath.md, \"Under load\")"
        );
    }
    let _ = crate::statefile::write_json(&cfg.paths.agent_status(), status, false);
}

/// Logs a peer event, wakes the control channel and the sender for a peer
/// that came up, and returns its membership input.
fn route_peer_event(mut pe: crate::datapath::events::PeerEvent, driver: &mut ClusterDriver, sender: &sender::Sender, sink: &mut EventSink) -> Option<Input> {
    let input = peer_input(&pe);
    use crate::datapath::events::PeerEventKind as K;
    if pe.event == K::PeerSilent && driver.left_gracefully_in_life(pe.node, pe.incarnation) {
        // Membership still hears of it (PeerGone), but the log and the
        // event actions do not see a failure.
        pe.event = K::PeerStopped;
    }
    sink.emit(&pe);
    if matches!(pe.event, K::LinkUp | K::PeerRestarted) {
        // A peer came up: dial it now if we dial it, and answer with a
        // heartbeat that carries its incarnation, so that it sees us up at
        // once too.
        driver.peer_heard(pe.node, pe.link);
        sender.heartbeat_now(pe.node);
    }
    input
}

/// A membership input from the datapath, through the silence confirmation
/// (confirm.rs): this node's own `peer_silent` is told to every peer and
/// held until confirmed; a peer heard again averts a held silence.
fn feed_peer_input(
    i: Input,
    driver: &mut ClusterDriver,
    confirm: &mut crate::daemon::confirm::SilenceConfirm,
    app: &crate::control::channel::AppSender,
    cfg: &Config,
) -> Vec<Effect> {
    let now = monotonic_ns();
    match i {
        Input::PeerSilent { node } if !driver.left_gracefully(node) => {
            for p in cfg.peers.iter().filter(|p| p.id != node) {
                app.send(p.id, crate::daemon::confirm::TOPIC, &crate::daemon::confirm::Report { silent: node });
            }
            match confirm.suspect(node, now) {
                Some(c) => confirmed(c, driver, cfg),
                None => {
                    info!(node, confirm_ms = cfg.confirm_ms, "peer silent here: confirming (another member's datapath, or the deadline) before it counts as failed");
                    Vec::new()
                }
            }
        }
        Input::PeerSilent { node } => {
            confirm.gone(node);
            driver.handle(i)
        }
        Input::PeerUp { node } => {
            if let Some(held) = confirm.peer_up(node, now) {
                warn!(node, held_ms = held as f64 / 1e6, "false silence averted: the peer was heard again before its silence was confirmed (this node's receive path or link stalled)");
                crate::eventlog::record(&cfg.paths.events_log(), serde_json::json!({"event": "silence_averted", "node": node, "held_ms": held as f64 / 1e6}));
            }
            driver.handle(i)
        }
        i => driver.handle(i),
    }
}

/// A held silence reached its deadline while another member hears the
/// suspect (confirm.rs): held again; ask the others afresh.
fn held_heard_elsewhere(h: crate::daemon::confirm::HeldHeard, app: &crate::control::channel::AppSender, cfg: &Config) {
    for p in cfg.peers.iter().filter(|p| p.id != h.node) {
        app.send(p.id, crate::daemon::confirm::TOPIC, &crate::daemon::confirm::Report { silent: h.node });
    }
    if h.first {
        warn!(node = h.node, heard_by = h.heard_by, "peer silent here but heard by another member: held, nothing moves (a one-way fault between this node and the peer)");
        crate::eventlog::record(&cfg.paths.events_log(), serde_json::json!({"event": "silence_held_heard_elsewhere", "node": h.node, "heard_by": h.heard_by}));
    }
}

/// A confirmed silence: the membership core hears of it now.
fn confirmed(c: crate::daemon::confirm::Confirmed, driver: &mut ClusterDriver, cfg: &Config) -> Vec<Effect> {
    use crate::daemon::confirm::By;
    let by = match c.by {
        By::Peer(n) => format!("node {n}"),
        By::Deadline => "deadline".to_string(),
        By::Off => "off".to_string(),
    };
    if c.by != By::Off {
        info!(node = c.node, by = %by, waited_ms = c.waited_ns as f64 / 1e6, "peer silence confirmed");
        crate::eventlog::record(&cfg.paths.events_log(), serde_json::json!({"event": "silence_confirmed", "node": c.node, "by": by, "waited_ms": c.waited_ns as f64 / 1e6}));
    }
    driver.handle(Input::PeerSilent { node: c.node })
}

/// Turns the datapath's node-level peer events into membership inputs.
fn peer_input(pe: &crate::datapath::events::PeerEvent) -> Option<Input> {
    use crate::datapath::events::PeerEventKind as K;
    match pe.event {
        K::PeerUp => Some(Input::PeerUp { node: pe.node }),
        K::PeerSilent => Some(Input::PeerSilent { node: pe.node }),
        K::PeerDistress => Some(Input::PeerDistress { node: pe.node, reason: pe.reason.unwrap_or(0) }),
        K::LinkUp | K::LinkSilent | K::PeerRestarted | K::PeerStopped => None,
    }
}

async fn event_loop(
    cfg: &Config,
    events: RingBuf<MapData>,
    sender: &sender::Sender,
    mut ctl_rx: tokio::sync::mpsc::Receiver<control::Incoming>,
    mut status: baton_state::AgentStatus,
    mut driver: ClusterDriver,
    mut chan_rx: tokio::sync::mpsc::Receiver<(u32, baton_core::membership::Msg)>,
    mut sub_rx: tokio::sync::mpsc::Receiver<SubsysEvent>,
    svc_channels: Option<(crate::services::svc::SvcChannels, tokio::sync::mpsc::Receiver<(u32, baton_core::services::Msg)>)>,
    mut fence_rx: Option<tokio::sync::mpsc::Receiver<(baton_core::fencing::OpId, baton_core::fencing::Outcome)>>,
    mut fence_inbox: Option<tokio::sync::mpsc::Receiver<(u32, crate::services::fencing::FenceMsg)>>,
    mut ha: Ha,
    guard: &GuardLink,
    stop: &mut StopSignals,
) -> Result<Outcome> {
    let has_svc = svc_channels.is_some();
    let (mut svc_done, mut svc_mon, mut svc_msgs) = match svc_channels {
        Some((ch, rx)) => (Some(ch.done), Some(ch.monitor), Some(rx)),
        None => (None, None, None),
    };
    let mut every_second = tokio::time::interval(std::time::Duration::from_secs(1));
    let StopSignals { term, int } = stop;
    // SIGHUP: reload the configuration file (docs/reload.md).
    let mut hup = signal(SignalKind::hangup()).map_err(|source| DaemonError::Signal { signal: "SIGHUP", source })?;
    let mut tracker = PeerTracker::new(cfg);
    let mut sink = EventSink::open(&cfg.paths.events_log());
    // SAFETY: the ring buffer owns its fd and is moved into the AsyncFd, so
    // the fd stays open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(|source| DaemonError::RingBuffer { what: "registering", source: source.into() })?;
    let incarnation = status.incarnation;
    let mut effects = driver.handle(Input::Start);
    // After SIGTERM: leave gracefully, but not forever.
    let mut leave_deadline: Option<tokio::time::Instant> = None;
    let mut last_view = None;
    // When this life became a joined member (for the rejoin back-off).
    let mut joined_at: Option<tokio::time::Instant> = None;
    let mut ctl_open = true;
    // Silences of the local datapath held until confirmed (confirm.rs).
    let mut confirm = crate::daemon::confirm::SilenceConfirm::new(cfg.confirm_ms as u64 * 1_000_000);
    // The datapath's `events_lost` counter as last reported.
    let mut events_lost = 0u64;
    // systemd (docs/operations.md): ready now, the status line on changes,
    // the watchdog pinged from this loop.
    let notify = crate::daemon::sdnotify::enabled();
    if notify {
        crate::daemon::sdnotify::ready(&crate::daemon::sdnotify::status_line(cfg, &driver, false));
    }
    let watchdog_every = crate::daemon::sdnotify::watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(std::time::Duration::from_secs(3600)));
    loop {
        if notify {
            let line = crate::daemon::sdnotify::status_line(cfg, &driver, leave_deadline.is_some());
            if leave_deadline.is_some() {
                crate::daemon::sdnotify::stopping(&line);
            }
            crate::daemon::sdnotify::status(&line);
        }
        // The negotiated takeover follows the membership (joins and
        // departures), and its steps may ask for services inputs, a leave or
        // a stop.
        let mut todo = crate::services::takeover::Todo::default();
        if joined_at.is_none() && driver.my_state() == baton_core::membership::NodeState::Joined {
            joined_at = Some(tokio::time::Instant::now());
        }
        if let Some(st) = driver.state() {
            if last_view != Some(st.view) {
                last_view = Some(st.view);
                let st = st.clone();
                todo = ha.takeover.on_state(&st, &ha_ctx(&driver));
            }
        }
        effects.extend(apply_todo(&mut driver, &mut ha, todo, &mut leave_deadline, cfg));
        for e in effects.drain(..) {
            match e {
                Effect::SendDistress { reason } => {
                    sender.distress(reason);
                    for _ in 0..200 {
                        if sender.shared.ended.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                }
                Effect::Halted { why } => {
                    // A member until now, not until the shutdown is over.
                    let member_for = joined_at.map(|t| t.elapsed());
                    driver.shutdown().await;
                    // A stop asked for (SIGTERM, SIGINT, `baton stop --all`)
                    // is a stop, whatever happened meanwhile: no new life.
                    if leave_deadline.is_some() {
                        warn!(?why, "clustering halted during the graceful leave; the agent stops as asked");
                        return Ok(Outcome::Stopped);
                    }
                    return Ok(Outcome::Halted(why, member_for));
                }
                Effect::Left => {
                    driver.shutdown().await;
                    return Ok(Outcome::Left);
                }
                Effect::StopRequested => {
                    // As SIGTERM: the leave runs (the core started it), and
                    // no new life follows, whatever happens meanwhile.
                    leave_deadline.get_or_insert_with(|| tokio::time::Instant::now() + LEAVE_BOUND);
                }
            }
        }
        let tick = [driver.next_deadline_ns(), ha.takeover.next_deadline_ns(), confirm.next_deadline()]
            .into_iter()
            .flatten()
            .min()
            .map(|d| std::time::Duration::from_nanos(d.saturating_sub(monotonic_ns())));
        let tick_sleep = tokio::time::sleep(tick.unwrap_or(std::time::Duration::from_secs(3600)));
        let leave_sleep = tokio::time::sleep_until(leave_deadline.unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(3600)));
        tokio::select! {
            _ = term.recv() => {
                if leave_deadline.is_some() { driver.shutdown().await; return Ok(Outcome::Stopped); }
                info!("SIGTERM: leaving the cluster gracefully");
                leave_deadline = Some(tokio::time::Instant::now() + LEAVE_BOUND);
                effects = driver.handle(Input::Leave);
            }
            _ = int.recv() => {
                if leave_deadline.is_some() { driver.shutdown().await; return Ok(Outcome::Stopped); }
                info!("SIGINT: leaving the cluster gracefully");
                leave_deadline = Some(tokio::time::Instant::now() + LEAVE_BOUND);
                effects = driver.handle(Input::Leave);
            }
            _ = watchdog.tick(), if watchdog_every.is_some() => crate::daemon::sdnotify::watchdog(),
            _ = hup.recv() => {
                info!("SIGHUP: reloading the configuration file");
                effects = reload_config(&mut driver, &mut ha, guard, false).await.1;
            }
            _ = leave_sleep, if leave_deadline.is_some() => {
                warn!("the graceful leave did not finish in time; stopping anyway");
                driver.shutdown().await;
                return Ok(Outcome::Stopped);
            }
            _ = tick_sleep, if tick.is_some() => {
                effects = Vec::new();
                let due = confirm.expired(monotonic_ns());
                for c in due.confirmed {
                    effects.extend(confirmed(c, &mut driver, cfg));
                }
                for h in due.held {
                    held_heard_elsewhere(h, &ha.app_sender, cfg);
                }
                effects.extend(driver.tick());
                let todo = ha.takeover.tick(&ha_ctx(&driver));
                effects.extend(apply_todo(&mut driver, &mut ha, todo, &mut leave_deadline, cfg));
            }
            h = recv_opt(&mut ha.health_rx), if ha.health_rx.is_some() => {
                if let Some(h) = h {
                    let todo = ha.takeover.health(h, &ha_ctx(&driver));
                    effects = apply_todo(&mut driver, &mut ha, todo, &mut leave_deadline, cfg);
                }
            }
            m = recv_opt(&mut ha.app_rx), if ha.app_rx.is_some() => {
                if let Some((from, m)) = m {
                    if m.topic == crate::daemon::confirm::TOPIC {
                        if let Ok(r) = serde_json::from_value::<crate::daemon::confirm::Report>(m.body) {
                            if from != r.silent && confirm.hears(r.silent) {
                                ha.app_sender.send(from, crate::daemon::confirm::HEARD_TOPIC, &crate::daemon::confirm::Heard { node: r.silent });
                            }
                            if let Some(c) = confirm.report(from, r.silent, monotonic_ns()) {
                                effects = confirmed(c, &mut driver, cfg);
                            }
                        }
                    } else if m.topic == crate::daemon::confirm::HEARD_TOPIC {
                        if let Ok(h) = serde_json::from_value::<crate::daemon::confirm::Heard>(m.body) {
                            confirm.heard(from, h.node, monotonic_ns());
                        }
                    } else if m.topic == crate::daemon::reload::TOPIC {
                        match serde_json::from_value::<crate::daemon::reload::Frame>(m.body) {
                            Ok(crate::daemon::reload::Frame::Hash { hash }) => config_mismatch(cfg, ha.reload.peer_hash(from, hash, monotonic_ns())),
                            Ok(crate::daemon::reload::Frame::Reload) => {
                                info!(from, "a peer asks every node to reload its configuration file (baton reload --all)");
                                effects = reload_config(&mut driver, &mut ha, guard, false).await.1;
                            }
                            Err(e) => warn!(from, "a config message that does not decode skipped: {e}"),
                        }
                    } else if m.topic == crate::services::takeover::TOPIC {
                        match serde_json::from_value::<crate::services::takeover::Frame>(m.body) {
                            Ok(f) => {
                                let todo = ha.takeover.receive(from, f, &ha_ctx(&driver));
                                effects = apply_todo(&mut driver, &mut ha, todo, &mut leave_deadline, cfg);
                            }
                            Err(e) => warn!(from, "a takeover message that does not decode skipped: {e}"),
                        }
                    }
                }
            }
            r = recv_opt(&mut fence_rx), if fence_rx.is_some() => {
                if let Some((op, outcome)) = r {
                    effects = driver.fencing_input(baton_core::fencing::Input::Done { op, outcome });
                }
            }
            m = recv_opt(&mut fence_inbox), if fence_inbox.is_some() => {
                if let Some((from, crate::services::fencing::FenceMsg::Fenced { node, incarnation, by_operator })) = m {
                    info!(from, node, incarnation, by_operator, "fencing notice: a peer fenced the node (or an operator confirmed it there)");
                    effects = driver.fence_confirm(node, Some(incarnation), false);
                }
            }
            _ = every_second.tick() => {
                guard.check();
                let stats = driver.channel().stats();
                let control_up = stats.peers.values().any(|p| p.up.iter().any(|u| *u));
                if let Some(f) = ha.selfcheck.check(monotonic_ns(), tracker.any_up(), control_up, stats.connections, stats.bad_frames) {
                    error!(reason = f.name, why = %f.why, "critical failure of this node (S0): sending distress and ending clustering here");
                    crate::eventlog::record(&cfg.paths.events_log(), serde_json::json!({"event": "alert", "kind": "critical", "node": cfg.node_id, "reason": format!("{}: {}", f.name, f.why)}));
                    effects = driver.handle(Input::LocalFailure { from: None, reason: f.reason });
                    continue;
                }
                status.takeover = Some(ha.takeover.status());
                status.channel = Some(baton_state::ChannelCounters {
                    sessions: stats.sessions,
                    connections: stats.connections,
                    handshake_failures: stats.handshake_failures,
                    hello_rejects: stats.hello_rejects,
                    bad_frames: stats.bad_frames,
                    frames_dropped: stats.frames_dropped,
                    preauth_rejected: stats.preauth_rejected,
                    preauth_evicted: stats.preauth_evicted,
                });
                // Events the ring buffer could not take (it was full) are
                // counted by the datapath; whatever they reported is made up
                // for from the liveness map, every second (docs/datapath.md).
                let lost = crate::datapath::status::counters(cfg)
                    .ok()
                    .and_then(|v| v.into_iter().find(|(c, _)| *c == baton_common::Counter::EventsLost).map(|(_, n)| n))
                    .unwrap_or(0);
                if lost > events_lost {
                    warn!(lost = lost - events_lost, total = lost, "the datapath's event ring buffer was full: events lost; resyncing from the liveness map");
                    events_lost = lost;
                }
                status.events_lost = Some(events_lost);
                status.silence = Some(confirm.counts);
                match crate::datapath::status::peer_links(cfg) {
                    Ok(links) => {
                        for pe in tracker.resync(&links, monotonic_ns()) {
                            warn!(event = pe.event.as_str(), node = pe.node, link = ?pe.link, "resync: the liveness map shows a change whose event was lost");
                            if let Some(i) = route_peer_event(pe, &mut driver, sender, &mut sink) {
                                effects.extend(feed_peer_input(i, &mut driver, &mut confirm, &ha.app_sender, cfg));
                            }
                        }
                    }
                    Err(e) => debug!("resync: cannot read the liveness map: {e}"),
                }
                let now = monotonic_ns();
                if ha.reload.hash_due(now) {
                    let frame = crate::daemon::reload::Frame::Hash { hash: ha.reload.hash.clone() };
                    for p in &cfg.peers {
                        ha.app_sender.send(p.id, crate::daemon::reload::TOPIC, &frame);
                    }
                }
                config_mismatch(cfg, ha.reload.expire(now));
                status.config = baton_state::ConfigField::InUse(ha.reload.status(now));
                write_agent_status(cfg, &mut status, &sender.shared);
                effects.extend(driver.services_input(|s, c| s.feed_load(c)));
            }
            d = recv_opt(&mut svc_done), if has_svc => {
                if let Some(d) = d { effects = driver.services_input(|s, c| s.done(d, c)); }
            }
            m = recv_opt(&mut svc_mon), if has_svc => {
                if let Some(m) = m { effects = driver.services_input(|s, c| s.monitor_failed(m, c)); }
            }
            m = recv_opt(&mut svc_msgs), if has_svc => {
                if let Some((from, msg)) = m {
                    effects = driver.services_input(|s, c| s.input(baton_core::services::Input::Receive { from, msg }, c));
                }
            }
            msg = chan_rx.recv() => {
                if let Some((from, msg)) = msg {
                    effects = driver.handle(Input::Receive { from, msg });
                }
            }
            ev = sub_rx.recv() => {
                effects = match ev {
                    Some(SubsysEvent::Registered { subsystem, name, spec, .. }) => driver.register_external(subsystem, name, spec),
                    Some(SubsysEvent::Ack { subsystem, id, step }) => driver.handle(Input::Ack { subsystem, id, step }),
                    Some(SubsysEvent::Failure { subsystem, reason }) => {
                        error!(subsystem, reason, "a subsystem reported a critical failure (or missed its acknowledgement deadline)");
                        driver.handle(Input::LocalFailure { from: Some(subsystem), reason })
                    }
                    Some(SubsysEvent::Deregistered { subsystem }) => driver.deregister_external(subsystem),
                    None => Vec::new(),
                };
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(|source| DaemonError::RingBuffer { what: "reading", source })?;
                let rb = guard.get_inner_mut();
                let mut inputs = Vec::new();
                while let Some(item) = rb.next() {
                    let agent_ns = monotonic_ns();
                    if item.len() < std::mem::size_of::<Event>() {
                        continue;
                    }
                    let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
                    for pe in tracker.on_record(&ev, agent_ns) {
                        inputs.extend(route_peer_event(pe, &mut driver, sender, &mut sink));
                    }
                }
                guard.clear_ready();
                for i in inputs {
                    effects.extend(feed_peer_input(i, &mut driver, &mut confirm, &ha.app_sender, cfg));
                }
            }
            r = ctl_rx.recv(), if ctl_open => {
                // A complete request line (read off this loop, see control.rs).
                let Some(r) = r else {
                    // Cannot happen (the server task lives as long as the
                    // receiver); never spin on a closed receiver.
                    error!("the control socket's server task ended: local requests are no longer served");
                    ctl_open = false;
                    continue;
                };
                // Parsed off this loop (control/socket.rs): a line that
                // does not parse was answered there.
                use crate::control::protocol::{GroupState, Reply, Request};
                let req = r.request;
                let mut reply_to = Some(r.reply);
                let mut reply = |answer: Reply| {
                    if let Some(t) = reply_to.take() {
                        let _ = t.send(answer);
                    }
                };
                match &req {
                    Request::Ping => { reply(Reply::Pong { incarnation }); }
                    Request::GroupState { group } => {
                        // S4.5: a watchdog asks whether the agent uses the group here.
                        let st = driver.svc.as_ref().map(|s| s.group_state(group)).unwrap_or("unknown");
                        reply(Reply::GroupState(GroupState::from_name(st).unwrap_or(GroupState::Unknown)));
                    }
                    &Request::FenceConfirm { node } => {
                        if driver.fencing.is_some() {
                            warn!(node, "an operator confirms the node fenced (baton fence confirm): its pending fencing is taken as done");
                            effects = driver.fence_confirm(node, None, true);
                            reply(Reply::Done(format!("node {node} confirmed fenced")));
                        } else {
                            reply(Reply::error("no [[disk]] is configured: there is no fencing to confirm"));
                        }
                    }
                    Request::Takeover { node, reason } => {
                        match ha.takeover.operator_takeover(*node, reason, &ha_ctx(&driver)) {
                            Ok(todo) => {
                                info!(node, reason, "operator: takeover");
                                effects = apply_todo(&mut driver, &mut ha, todo, &mut leave_deadline, cfg);
                                reply(Reply::Ok);
                            }
                            Err(e) => { reply(Reply::error(e)); }
                        }
                    }
                    &Request::Giveback { node } => {
                        match ha.takeover.operator_giveback(node, &ha_ctx(&driver)) {
                            Ok(todo) => {
                                info!(node, "operator: giveback");
                                effects = apply_todo(&mut driver, &mut ha, todo, &mut leave_deadline, cfg);
                                reply(Reply::Ok);
                            }
                            Err(e) => { reply(Reply::error(e)); }
                        }
                    }
                    &Request::Reload { all } => {
                        let (outcome, e) = reload_config(&mut driver, &mut ha, guard, all).await;
                        effects = e;
                        match outcome {
                            Ok(msg) => reply(Reply::Done(msg)),
                            Err(e) => reply(Reply::error(e)),
                        }
                    }
                    Request::Stop => {
                        info!("stop requested on the control socket: leaving the cluster gracefully");
                        leave_deadline.get_or_insert_with(|| tokio::time::Instant::now() + LEAVE_BOUND);
                        effects = driver.handle(Input::Leave);
                        reply(Reply::Done("leaving".to_string()));
                    }
                    Request::StopAll => {
                        warn!("cluster-wide stop requested on the control socket (baton stop --all)");
                        leave_deadline.get_or_insert_with(|| tokio::time::Instant::now() + LEAVE_BOUND);
                        effects = driver.handle(Input::StopAll);
                        reply(Reply::Done("the whole cluster is stopping".to_string()));
                    }
                    Request::Distress { reason } => {
                        error!(reason = reason.name(), "local failure reported: sending distress and ending clustering on this node");
                        effects = driver.handle(Input::LocalFailure { from: None, reason: reason.code() });
                        reply(Reply::Ok);
                    }
                    Request::Switchover { .. }
                    | Request::Standby { .. }
                    | Request::Unstandby { .. }
                    | Request::Maintenance { .. }
                    | Request::Offline { .. }
                    | Request::Online { .. }
                    | Request::Register { .. }
                    | Request::Deregister { .. } => {
                        let input = req.services_input().expect("a services request");
                        match input {
                            _ if !has_svc => { reply(Reply::error("no resource group is configured on this node")); }
                            baton_core::services::Input::Offline { service, .. } | baton_core::services::Input::Register { service } | baton_core::services::Input::Deregister { service }
                                if !driver.services_configured(&service) =>
                            {
                                reply(Reply::Error(format!("no group {service:?} is configured")));
                            }
                            input => {
                                info!(request = %req, "operator request");
                                effects = driver.services_input(|sv, c| sv.input(input, c));
                                reply(Reply::Ok);
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn recv_opt<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reloads the configuration file (SIGHUP, `baton reload`, a peer's
/// `baton reload --all`): docs/reload.md. With `all`, every peer is asked to
/// reload its own file too. A refused file changes nothing.
/// A reload (SIGHUP, `baton reload`, a peer's `--all`), told to systemd
/// (RELOADING=1, then READY=1 with the outcome as the status line).
async fn reload_config(driver: &mut ClusterDriver, ha: &mut Ha, guard: &GuardLink, all: bool) -> (std::result::Result<String, ReloadError>, Vec<Effect>) {
    crate::daemon::sdnotify::reloading("reloading the configuration file");
    let r = reload_config_now(driver, ha, guard, all).await;
    crate::daemon::sdnotify::reloaded(&match &r.0 {
        Ok(m) => m.clone(),
        Err(m) => format!("reload refused (running the previous configuration): {m}"),
    });
    r
}

async fn reload_config_now(driver: &mut ClusterDriver, ha: &mut Ha, guard: &GuardLink, all: bool) -> (std::result::Result<String, ReloadError>, Vec<Effect>) {
    let now = monotonic_ns();
    let events = ha.reload.running.paths.events_log();
    let services_level = driver.svc.is_some();
    let refuse = |ha: &mut Ha, e: ReloadError| {
        let msg = e.to_string();
        error!("reload refused: {msg}");
        crate::eventlog::record(&events, serde_json::json!({"event": "reload_refused", "node": ha.reload.running.node_id, "reason": msg}));
        ha.reload.refused(now, msg);
        e
    };
    let new = match crate::daemon::reload::prepare(&ha.reload.running, &ha.reload.key, services_level).await {
        Ok(n) => n,
        Err(e) => return (Err(refuse(ha, e)), Vec::new()),
    };
    let mut changes = Ok(crate::services::svc::GroupChanges::default());
    let effects = driver.services_input(|s, c| changes = s.reload(&new.groups, c));
    let changes = match changes {
        Ok(c) => c,
        Err(source) => {
            return (Err(refuse(ha, ReloadError::Groups { file: new.file.clone(), source })), effects);
        }
    };
    ha.takeover.set_groups(&new.groups);
    guard.reload();
    let hash = crate::daemon::reload::groups_hash(&new.groups);
    let mut msg = format!("reloaded {}: {}; groups hash {hash}", new.file.display(), changes.summary());
    if all {
        let frame = crate::daemon::reload::Frame::Reload;
        let asked = new.peers.iter().filter(|p| ha.app_sender.send(p.id, crate::daemon::reload::TOPIC, &frame)).count();
        msg += &format!("; asked {asked} of {} peers to reload theirs", new.peers.len());
    }
    info!(added = ?changes.added, removed = ?changes.removed, changed = ?changes.changed, changed_here = ?changes.changed_here, hash, "configuration reloaded");
    crate::eventlog::record(&events, serde_json::json!({"event": "config_reloaded", "node": new.node_id, "groups_hash": hash, "changes": changes}));
    let cfg_for_log = new.clone();
    let mismatch = ha.reload.applied(new, now, msg.clone());
    config_mismatch(&cfg_for_log, mismatch);
    (Ok(msg), effects)
}

/// Logs (and writes as an event) a change of the set of peers whose group
/// configuration differs from this node's.
fn config_mismatch(cfg: &Config, changed: Option<Vec<u32>>) {
    let Some(nodes) = changed else { return };
    if nodes.is_empty() {
        info!("the group configuration agrees with every peer heard");
    } else {
        let names: Vec<String> = nodes.iter().map(|n| cfg.peer_name(*n)).collect();
        warn!(peers = ?names, "the group configuration differs from these peers' (another [[group]] set in their files): reload the same groups on every node; `baton status` shows the hashes");
    }
    crate::eventlog::record(&cfg.paths.events_log(), serde_json::json!({"event": "config_mismatch", "node": cfg.node_id, "peers": nodes}));
}

/// The negotiated takeover's parts of the event loop.
struct Ha {
    reload: crate::daemon::reload::Reloader,
    takeover: crate::services::takeover::TakeoverRt,
    selfcheck: crate::datapath::selfcheck::SelfCheck,
    health_rx: Option<tokio::sync::mpsc::Receiver<crate::services::health::HealthEvent>>,
    app_rx: Option<tokio::sync::mpsc::Receiver<(u32, crate::control::channel::AppMsg)>>,
    app_sender: crate::control::channel::AppSender,
}

fn ha_ctx(driver: &ClusterDriver) -> crate::services::takeover::Ctx2 {
    crate::services::takeover::Ctx2 {
        joined_quorate: driver.joined_quorate(),
        fencing_ok: driver.fencing_ok(),
        registered: driver.svc.as_ref().map(|s| s.registered()).unwrap_or_default(),
    }
}

/// Carries out what a takeover step asks for.
fn apply_todo(
    driver: &mut ClusterDriver,
    ha: &mut Ha,
    todo: crate::services::takeover::Todo,
    leave_deadline: &mut Option<tokio::time::Instant>,
    cfg: &Config,
) -> Vec<Effect> {
    let mut effects = Vec::new();
    for (to, frame) in todo.send {
        ha.app_sender.send(to, crate::services::takeover::TOPIC, &frame);
    }
    for (from, check, address, timeout_ms) in todo.diagnose {
        let sender = ha.app_sender.clone();
        tokio::spawn(async move {
            let result = crate::services::takeover::diagnose(address, timeout_ms).await;
            sender.send(from, crate::services::takeover::TOPIC, &crate::services::takeover::Frame::Diagnosed { check, result: result.map_err(Into::into) });
        });
    }
    for input in todo.services {
        effects.extend(driver.services_input(|s, c| s.input(input, c)));
    }
    if todo.stop {
        effects.extend(driver.handle(Input::LocalFailure { from: None, reason: baton_common::DISTRESS_ADMIN }));
    }
    if todo.leave_when_drained && leave_deadline.is_none() {
        // A graceful leave: its services level moves every group away first
        // (planned moves: the overlap handover where configured); the
        // partner forces this node down if it takes longer than the
        // countdown.
        info!("taken over: leaving the cluster gracefully");
        *leave_deadline = Some(tokio::time::Instant::now() + std::time::Duration::from_millis(cfg.takeover.countdown_ms as u64).max(LEAVE_BOUND));
        effects.extend(driver.handle(Input::Leave));
    }
    effects
}

/// Partner diagnosis (claim 24): this node's `by = "partner"` checks are
/// sent to its partner every interval.
fn spawn_partner_checks(cfg: &Config, ha: &Ha) {
    let Some(partner) = ha.takeover.partner() else { return };
    for (check, address, interval_ms, timeout_ms) in crate::services::takeover::partner_checks(cfg) {
        let sender = ha.app_sender.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(interval_ms as u64));
            loop {
                every.tick().await;
                sender.send(partner, crate::services::takeover::TOPIC, &crate::services::takeover::Frame::Diagnose { check: check.clone(), address, timeout_ms });
            }
        });
    }
}

/// How the event loop ended.
pub enum Outcome {
    /// Stopped without a completed graceful leave (timeout or second signal).
    Stopped,
    Left,
    /// With how long this life had been a joined member (None: never).
    Halted(HaltReason, Option<std::time::Duration>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(peers: usize, rejoin_ms: u32) -> Config {
        let mut text = String::from(
            "[cluster]\nname = \"t\"\nid = 1\nsecret_file = \"/s\"\n[node]\nid = 1\nname = \"n1\"\n\
             [[link]]\nname = \"r0\"\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\n",
        );
        for p in 0..peers {
            text += &format!("[[peer]]\nid = {}\nname = \"n{}\"\naddresses = [\"10.0.0.{}\"]\n", p + 2, p + 2, p + 2);
        }
        text += &format!("[membership]\nrejoin_ms = {rejoin_ms}\n");
        config::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn rejoin_delay_doubles_and_is_capped_and_some_halts_never_rejoin() {
        let c = cfg(2, 1000);
        let d = |why: HaltReason, streak| rejoin_delay(&c, &why, streak);
        assert_eq!(d(HaltReason::LostQuorum, 0), Some(Duration::from_millis(1000)));
        assert_eq!(d(HaltReason::ForcedOut, 1), Some(Duration::from_millis(2000)));
        assert_eq!(d(HaltReason::Superseded, 3), Some(Duration::from_millis(8000)));
        assert_eq!(d(HaltReason::ClusterLost, 6), Some(Duration::from_millis(60_000)));
        assert_eq!(d(HaltReason::ClusterLost, 40), Some(Duration::from_millis(60_000)));
        // S0: a local critical failure ends clustering until someone looks.
        assert_eq!(d(HaltReason::LocalFailure { reason: 1 }, 0), None);
        // Off, and in a cluster of two configured nodes.
        assert_eq!(rejoin_delay(&cfg(2, 0), &HaltReason::LostQuorum, 0), None);
        assert_eq!(rejoin_delay(&cfg(1, 1000), &HaltReason::ForcedOut, 0), None);
    }

    #[test]
    fn the_halts_in_a_row_start_again_after_a_life_that_was_a_member_for_ten_seconds() {
        let s = Duration::from_secs;
        // Never joined, or a member only briefly, within a minute: the count goes on.
        assert_eq!(halts_in_a_row(3, s(20), None), 3);
        assert_eq!(halts_in_a_row(3, s(20), Some(Duration::from_millis(9_999))), 3);
        // A member for STABLE_MEMBER: a new count, whatever the count was.
        assert_eq!(halts_in_a_row(6, s(14), Some(s(10))), 0);
        assert_eq!(halts_in_a_row(6, s(40), Some(s(30))), 0);
        // A minute of life (joined or not) starts it again too, as before.
        assert_eq!(halts_in_a_row(5, s(60), None), 0);
        // The chaos case (seed 1, loss and mute): node5's lives were members
        // for 14-30 s between faults; with the count going on its seventh
        // halt waited 60 s, now each waits rejoin_ms.
        let c = cfg(4, 1000);
        let mut prev = 0;
        for member in [14, 30, 20, 25, 14, 30] {
            prev = halts_in_a_row(prev, s(member + 2), Some(s(member)));
            assert_eq!(rejoin_delay(&c, &HaltReason::ForcedOut, prev), Some(s(1)));
            prev += 1;
        }
    }
}
