//! `baton run`: the daemon.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use baton_common::{siphash::key_halves, Event};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::datapath::Datapath;
use crate::events::{monotonic_ns, EventSink, PeerTracker};
use crate::guard::GuardLink;
use crate::cluster::{ClusterDriver, Effect, FIRST_EXTERNAL_SUBSYSTEM};
use crate::subsys::{SubsysEvent, SubsysServer};
use crate::{control, sender};
use baton_core::membership::{HaltReason, Input};

/// A new incarnation: the wall clock in µs, but always above the last one
/// this node used (kept in the state dir), so a restart is always "newer" even
/// if the clock stepped back.
pub fn next_incarnation(file: &Path) -> Result<u64> {
    let last: u64 = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let inc = wall.max(last + 1);
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    writeln!(f, "{inc}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
    Ok(inc)
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
    Halted(HaltReason),
}

/// After a halt, how long until the agent starts again as a new life, or
/// `None` when it must exit instead: after a local critical failure (S0:
/// the node shuts down until someone looks at it), with
/// `membership.rejoin_ms = 0`, and in a cluster of two configured nodes
/// (a new life that cannot see the other node forms a cluster of its own
/// there, so a partition would give two; the operator restarts it, as
/// corosync's `two_node` with `wait_for_all` asks). `streak` counts the
/// halts in a row that came within a minute of the previous start: the
/// delay doubles for each, up to 60 s.
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

pub async fn run(cfg_path: &Path) -> Result<Ended> {
    let cfg = config::load(cfg_path)?;
    crate::datapath::check_prerequisites()?;
    crate::caps::check(&cfg, crate::caps::effective())?;
    let key = config::read_secret(&cfg.secret_file)?;
    std::fs::create_dir_all(&cfg.paths.state_dir)
        .with_context(|| format!("creating state dir {}", cfg.paths.state_dir.display()))?;
    let incarnation = next_incarnation(&cfg.paths.incarnation_file())?;
    // The membership snapshot of an earlier life is not ours.
    let _ = std::fs::remove_file(cfg.paths.cluster_snapshot());
    // Start clean, then the guard watches this life (docs/services.md,
    // "Ownership"): before the datapath, so nothing of an earlier life is
    // configured here when this one joins.
    let (guard, cleaned) = GuardLink::spawn(&cfg, incarnation).context("starting the guard process")?;
    if !cleaned.is_empty() {
        warn!(
            addresses = ?cleaned.addresses_removed, processes = ?cleaned.processes_stopped, applications = ?cleaned.applications_stopped,
            "start clean: removed what an earlier life of this node left behind"
        );
    }
    let guard = std::sync::Arc::new(guard);
    let result = run_guarded(&cfg, key, incarnation, &guard, &cleaned).await;
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
    cleaned: &crate::guard::Released,
) -> Result<Ended> {

    // The shared disks must be usable before this node joins (docs/fencing.md).
    let disks = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || crate::fencing::open_disks(&cfg)
    })
    .await?
    .context("checking the shared disks ([[disk]])")?;
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
        Err(e) => {
            dp.stop();
            return Err(anyhow::Error::new(e).context("starting the heartbeat sender"));
        }
    };
    let listener = match control::bind(&cfg.paths.control_socket()) {
        Ok(l) => l,
        Err(e) => {
            sender.stop();
            dp.stop();
            return Err(anyhow::Error::new(e).context(format!("binding {}", cfg.paths.control_socket().display())));
        }
    };
    let mut status = serde_json::json!({
        "pid": std::process::id(),
        "incarnation": incarnation,
        "started_monotonic_ns": monotonic_ns(),
        "config": cfg.file.display().to_string(),
        "xdp": dp.attachments.iter().map(|(i, m)| serde_json::json!({"interface": i, "mode": m})).collect::<Vec<_>>(),
        "watchdog_cpu": dp.watchdog_cpu,
        "guard": {"pid": guard.pid()},
        "start_clean": cleaned,
    });
    write_agent_status(cfg, &mut status, &sender.shared);
    info!(
        cluster = %cfg.cluster_name, node = cfg.node_id, incarnation,
        interval_ms = cfg.interval_ms, misses = cfg.misses, peers = cfg.peers.len(), links = cfg.links.len(),
        pin_dir = %cfg.paths.bpffs_dir.display(),
        "baton agent running"
    );

    let result = async {
        let (channel, chan_rx) = crate::channel::Channel::start(crate::channel::ChannelConfig {
            me: cfg.node_id,
            cluster_id: cfg.cluster_id,
            incarnation,
            psk_secret: key,
            port: cfg.control_port,
            links: cfg.links.iter().map(|l| l.address).collect(),
            peers: cfg.peers.iter().map(|p| (p.id, p.addresses.clone())).collect(),
        })
        .await
        .context("starting the control channel")?;
        let (subsys, sub_rx) = SubsysServer::bind(&cfg.paths.subsys_socket(), FIRST_EXTERNAL_SUBSYSTEM)
            .await
            .context("binding the subsystem API socket")?;
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
        let ownership = crate::guard::Ownership::new(Some(guard.clone()));
        crate::eventmgr::install(cfg, ownership.clone());
        let svc = crate::svc::ServiceManager::new(
            cfg.node_id,
            incarnation,
            &cfg.groups,
            cfg.paths.state_dir.join("services.json"),
            cfg.paths.events_log(),
            channel.take_handover_inbox().map(|inbox| crate::handover::Wiring {
                sender: channel.handover_sender(),
                inbox,
                map: cfg.paths.map(baton_common::MAP_HANDOVER),
            }),
            ownership,
        )?;
        let mut driver = ClusterDriver::new(core_cfg, channel, subsys, names, cfg.paths.cluster_snapshot());
        let fence_rx = if disks.is_empty() {
            None
        } else {
            let (f, rx) = crate::cluster::FencingRt::new(cfg, disks);
            driver.fencing = Some(f);
            Some(rx)
        };
        let svc_channels = match svc {
            Some((mut m, ch)) => {
                m.set_watchdog(crate::watchdog::Ctx::new(&cfg.file, &cfg.paths.state_dir));
                driver.svc = Some(m);
                Some((ch, svc_rx.expect("services inbox")))
            }
            None => None,
        };
        let fence_inbox = fence_rx.as_ref().and(fence_inbox);
        let ha = Ha {
            takeover: crate::takeover::TakeoverRt::new(cfg, incarnation),
            health_rx: crate::health::spawn(cfg),
            app_rx,
            app_sender,
            selfcheck: crate::selfcheck::SelfCheck::new(cfg, dp.config, incarnation),
        };
        spawn_partner_checks(cfg, &ha);
        event_loop(cfg, events, &sender, listener, status, driver, chan_rx, sub_rx, svc_channels, fence_rx, fence_inbox, ha, guard).await
    }
    .await;
    let _ = std::fs::remove_file(cfg.paths.control_socket());
    let _ = std::fs::remove_file(cfg.paths.subsys_socket());
    let _ = std::fs::remove_file(cfg.paths.agent_status());
    sender.stop();
    dp.stop();
    info!("baton agent stopped");
    match result? {
        Outcome::Stopped | Outcome::Left => Ok(Ended::Stopped),
        Outcome::Halted(why) => Ok(Ended::Halted(why)),
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
    if unsafe { libc::mlockall(libc::MCL_CURRENT) } != 0 {
        warn!("mlockall(MCL_CURRENT) failed ({}); page faults may delay heartbeats", std::io::Error::last_os_error());
        return;
    }
    if unsafe { libc::mlockall(libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        warn!("mlockall(MCL_FUTURE | MCL_ONFAULT) failed ({}); memory allocated from now on may be paged out", std::io::Error::last_os_error());
    }
}

/// `<state_dir>/agent.json`: what `baton status` shows about the agent
/// itself, with the sender's counters (refreshed every second).
fn write_agent_status(cfg: &Config, status: &mut serde_json::Value, s: &sender::SenderShared) {
    use std::sync::atomic::Ordering::Relaxed;
    status["sender"] = serde_json::json!({
        "sent": s.sent.load(Relaxed),
        "send_errors": s.send_errors.load(Relaxed),
        "late_ticks": s.late_ticks.load(Relaxed),
    });
    let tmp = cfg.paths.agent_status().with_extension("tmp");
    if std::fs::write(&tmp, status.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, cfg.paths.agent_status());
    }
}

/// Turns the datapath's node-level peer events into membership inputs.
fn peer_input(pe: &crate::events::PeerEvent) -> Option<Input> {
    match pe.event {
        "peer_up" => Some(Input::PeerUp { node: pe.node }),
        "peer_silent" => Some(Input::PeerSilent { node: pe.node }),
        "peer_distress" => Some(Input::PeerDistress { node: pe.node, reason: pe.reason.unwrap_or(0) }),
        _ => None,
    }
}

async fn event_loop(
    cfg: &Config,
    events: RingBuf<MapData>,
    sender: &sender::Sender,
    listener: tokio::net::UnixListener,
    mut status: serde_json::Value,
    mut driver: ClusterDriver,
    mut chan_rx: tokio::sync::mpsc::Receiver<(u32, baton_core::membership::Msg)>,
    mut sub_rx: tokio::sync::mpsc::Receiver<SubsysEvent>,
    svc_channels: Option<(crate::svc::SvcChannels, tokio::sync::mpsc::Receiver<(u32, baton_core::services::Msg)>)>,
    mut fence_rx: Option<tokio::sync::mpsc::Receiver<(baton_core::fencing::OpId, baton_core::fencing::Outcome)>>,
    mut fence_inbox: Option<tokio::sync::mpsc::Receiver<(u32, crate::fencing::FenceMsg)>>,
    mut ha: Ha,
    guard: &GuardLink,
) -> Result<Outcome> {
    let has_svc = svc_channels.is_some();
    let (mut svc_done, mut svc_mon, mut svc_msgs) = match svc_channels {
        Some((ch, rx)) => (Some(ch.done), Some(ch.monitor), Some(rx)),
        None => (None, None, None),
    };
    let mut every_second = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tracker = PeerTracker::new(cfg);
    let mut sink = EventSink::open(&cfg.paths.events_log());
    // SAFETY: the ring buffer owns its fd and is moved into the AsyncFd, so
    // the fd stays open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the event ring buffer: {e}"))?;
    let incarnation = std::fs::read_to_string(cfg.paths.incarnation_file()).unwrap_or_default();
    let mut effects = driver.handle(Input::Start);
    // After SIGTERM: leave gracefully, but not forever.
    let mut leave_deadline: Option<tokio::time::Instant> = None;
    let mut last_view = None;
    // systemd (docs/operations.md): ready now, the status line on changes,
    // the watchdog pinged from this loop.
    let notify = crate::sdnotify::enabled();
    if notify {
        crate::sdnotify::ready(&crate::sdnotify::status_line(cfg, &driver, false));
    }
    let watchdog_every = crate::sdnotify::watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(std::time::Duration::from_secs(3600)));
    loop {
        if notify {
            let line = crate::sdnotify::status_line(cfg, &driver, leave_deadline.is_some());
            if leave_deadline.is_some() {
                crate::sdnotify::stopping(&line);
            }
            crate::sdnotify::status(&line);
        }
        // The negotiated takeover follows the membership (joins and
        // departures), and its steps may ask for services inputs, a leave or
        // a stop.
        let mut todo = crate::takeover::Todo::default();
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
                    driver.shutdown().await;
                    // A stop asked for (SIGTERM, SIGINT, `baton stop --all`)
                    // is a stop, whatever happened meanwhile: no new life.
                    if leave_deadline.is_some() {
                        warn!(?why, "clustering halted during the graceful leave; the agent stops as asked");
                        return Ok(Outcome::Stopped);
                    }
                    return Ok(Outcome::Halted(why));
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
        let tick = [driver.next_deadline_ns(), ha.takeover.next_deadline_ns()]
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
            _ = watchdog.tick(), if watchdog_every.is_some() => crate::sdnotify::watchdog(),
            _ = leave_sleep, if leave_deadline.is_some() => {
                warn!("the graceful leave did not finish in time; stopping anyway");
                driver.shutdown().await;
                return Ok(Outcome::Stopped);
            }
            _ = tick_sleep, if tick.is_some() => {
                effects = driver.handle(Input::Tick);
                effects.extend(driver.services_input(|s, c| s.tick(c)));
                effects.extend(driver.fencing_input(baton_core::fencing::Input::Tick));
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
                    if m.topic == crate::takeover::TOPIC {
                        match serde_json::from_value::<crate::takeover::Frame>(m.body) {
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
                if let Some((from, crate::fencing::FenceMsg::Fenced { node, incarnation, by_operator })) = m {
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
                    crate::svc::append_event(&cfg.paths.events_log(), serde_json::json!({"event": "alert", "kind": "critical", "node": cfg.node_id, "reason": format!("{}: {}", f.name, f.why)}));
                    effects = driver.handle(Input::LocalFailure { from: None, reason: f.reason });
                    continue;
                }
                status["takeover"] = ha.takeover.status();
                write_agent_status(cfg, &mut status, &sender.shared);
                effects = driver.services_input(|s, c| s.feed_load(c));
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
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                let mut inputs = Vec::new();
                while let Some(item) = rb.next() {
                    let agent_ns = monotonic_ns();
                    if item.len() < std::mem::size_of::<Event>() {
                        continue;
                    }
                    let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) };
                    for mut pe in tracker.on_record(&ev, agent_ns) {
                        let input = peer_input(&pe);
                        if pe.event == "peer_silent" && driver.left_gracefully(pe.node) {
                            // Membership still hears of it (PeerGone), but
                            // the log and the event actions do not see a
                            // failure.
                            pe.event = "peer_stopped";
                        }
                        sink.emit(&pe);
                        if matches!(pe.event, "link_up" | "peer_restarted") {
                            // A peer came up: dial it now if we dial it, and
                            // answer with a heartbeat that carries its
                            // incarnation, so that it sees us up at once too.
                            driver.peer_heard(pe.node, pe.link);
                            sender.heartbeat_now(pe.node);
                        }
                        if let Some(i) = input {
                            inputs.push(i);
                        }
                    }
                }
                guard.clear_ready();
                for i in inputs {
                    effects.extend(driver.handle(i));
                }
            }
            conn = listener.accept() => {
                let (mut s, _) = conn?;
                let req = control::read_request(&mut s).await.unwrap_or_default();
                let mut words = req.split_whitespace();
                match (words.next(), words.next()) {
                    (Some("ping"), _) => { let _ = control::reply(&mut s, &format!("ok {}", incarnation.trim())).await; }
                    (Some("group-state"), Some(g)) => {
                        // S4.5: a watchdog asks whether the agent uses the group here.
                        let st = driver.svc.as_ref().map(|s| s.group_state(g)).unwrap_or("unknown");
                        let _ = control::reply(&mut s, &format!("ok {st}")).await;
                    }
                    (Some("fence-confirm"), Some(n)) => {
                        match n.parse::<u32>() {
                            Ok(node) if driver.fencing.is_some() => {
                                warn!(node, "an operator confirms the node fenced (baton fence confirm): its pending fencing is taken as done");
                                effects = driver.fence_confirm(node, None, true);
                                let _ = control::reply(&mut s, &format!("ok: node {node} confirmed fenced")).await;
                            }
                            Ok(_) => { let _ = control::reply(&mut s, "error: no [[disk]] is configured: there is no fencing to confirm").await; }
                            Err(_) => { let _ = control::reply(&mut s, &format!("error: {n:?} is not a node id")).await; }
                        }
                    }
                    (Some("takeover"), Some(n)) => {
                        let reason: Vec<&str> = words.collect();
                        let reason = if reason.is_empty() { "operator".to_string() } else { reason.join(" ") };
                        match n.parse::<u32>().map_err(|_| format!("{n:?} is not a node id")).and_then(|node| ha.takeover.operator_takeover(node, &reason, &ha_ctx(&driver))) {
                            Ok(todo) => {
                                info!(node = n, reason, "operator: takeover");
                                effects = apply_todo(&mut driver, &mut ha, todo, &mut leave_deadline, cfg);
                                let _ = control::reply(&mut s, "ok").await;
                            }
                            Err(e) => { let _ = control::reply(&mut s, &format!("error: {e}")).await; }
                        }
                    }
                    (Some("giveback"), Some(n)) => {
                        match n.parse::<u32>().map_err(|_| format!("{n:?} is not a node id")).and_then(|node| ha.takeover.operator_giveback(node, &ha_ctx(&driver))) {
                            Ok(todo) => {
                                info!(node = n, "operator: giveback");
                                effects = apply_todo(&mut driver, &mut ha, todo, &mut leave_deadline, cfg);
                                let _ = control::reply(&mut s, "ok").await;
                            }
                            Err(e) => { let _ = control::reply(&mut s, &format!("error: {e}")).await; }
                        }
                    }
                    (Some("stop"), None) => {
                        info!("stop requested on the control socket: leaving the cluster gracefully");
                        leave_deadline.get_or_insert_with(|| tokio::time::Instant::now() + LEAVE_BOUND);
                        effects = driver.handle(Input::Leave);
                        let _ = control::reply(&mut s, "ok: leaving").await;
                    }
                    (Some("stop-all"), None) => {
                        warn!("cluster-wide stop requested on the control socket (baton stop --all)");
                        leave_deadline.get_or_insert_with(|| tokio::time::Instant::now() + LEAVE_BOUND);
                        effects = driver.handle(Input::StopAll);
                        let _ = control::reply(&mut s, "ok: the whole cluster is stopping").await;
                    }
                    (Some("distress"), Some(r)) => {
                        let code = control::reason_code(r).or_else(|| r.parse().ok()).unwrap_or(baton_common::DISTRESS_ADMIN);
                        error!(reason = r, "local failure reported: sending distress and ending clustering on this node");
                        effects = driver.handle(Input::LocalFailure { from: None, reason: code });
                        let _ = control::reply(&mut s, "ok").await;
                    }
                    (Some(op @ ("switchover" | "standby" | "unstandby" | "maintenance" | "offline" | "online" | "register" | "deregister")), arg) => {
                        let rest: Vec<&str> = arg.into_iter().chain(words).collect();
                        match service_request(op, &rest) {
                            Err(e) => { let _ = control::reply(&mut s, &format!("error: {e}")).await; }
                            Ok(_) if !has_svc => { let _ = control::reply(&mut s, "error: no resource group is configured on this node").await; }
                            Ok(baton_core::services::Input::Offline { service, .. } | baton_core::services::Input::Register { service } | baton_core::services::Input::Deregister { service })
                                if !cfg.groups.iter().any(|g| g.name == service) =>
                            {
                                let _ = control::reply(&mut s, &format!("error: no group {service:?} is configured")).await;
                            }
                            Ok(input) => {
                                info!(request = %req, "operator request");
                                effects = driver.services_input(|sv, c| sv.input(input, c));
                                let _ = control::reply(&mut s, "ok").await;
                            }
                        }
                    }
                    _ => { let _ = control::reply(&mut s, &format!("error: unknown request {req:?}")).await; }
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

/// An operator request of the control socket as a services input.
fn service_request(op: &str, args: &[&str]) -> std::result::Result<baton_core::services::Input, String> {
    use baton_core::services::Input as S;
    let node = |s: &str| s.parse::<u32>().map_err(|_| format!("{op}: {s:?} is not a node id"));
    match (op, args) {
        ("switchover", [g]) => Ok(S::Switchover { service: g.to_string(), to: None }),
        ("switchover", [g, n]) => Ok(S::Switchover { service: g.to_string(), to: Some(node(n)?) }),
        ("standby", [n]) => Ok(S::Standby { node: node(n)?, on: true }),
        ("unstandby", [n]) => Ok(S::Standby { node: node(n)?, on: false }),
        ("maintenance", ["on"]) => Ok(S::Maintenance { on: true }),
        ("maintenance", ["off"]) => Ok(S::Maintenance { on: false }),
        ("offline", [g]) => Ok(S::Offline { service: g.to_string(), on: true }),
        ("register", [g]) => Ok(S::Register { service: g.to_string() }),
        ("deregister", [g]) => Ok(S::Deregister { service: g.to_string() }),
        ("online", [g]) => Ok(S::Offline { service: g.to_string(), on: false }),
        _ => Err(format!(
            "usage: switchover GROUP [NODE] | standby NODE | unstandby NODE | maintenance on|off | offline GROUP | online GROUP | register GROUP | deregister GROUP (got {op} {args:?})"
        )),
    }
}

/// The negotiated takeover's parts of the event loop.
struct Ha {
    takeover: crate::takeover::TakeoverRt,
    selfcheck: crate::selfcheck::SelfCheck,
    health_rx: Option<tokio::sync::mpsc::Receiver<crate::health::HealthEvent>>,
    app_rx: Option<tokio::sync::mpsc::Receiver<(u32, crate::channel::AppMsg)>>,
    app_sender: crate::channel::AppSender,
}

fn ha_ctx(driver: &ClusterDriver) -> crate::takeover::Ctx2 {
    crate::takeover::Ctx2 {
        joined_quorate: driver.joined_quorate(),
        fencing_ok: driver.fencing_ok(),
        registered: driver.svc.as_ref().map(|s| s.registered()).unwrap_or_default(),
    }
}

/// Carries out what a takeover step asks for.
fn apply_todo(
    driver: &mut ClusterDriver,
    ha: &mut Ha,
    todo: crate::takeover::Todo,
    leave_deadline: &mut Option<tokio::time::Instant>,
    cfg: &Config,
) -> Vec<Effect> {
    let mut effects = Vec::new();
    for (to, frame) in todo.send {
        ha.app_sender.send(to, crate::takeover::TOPIC, &frame);
    }
    for (from, check, address, timeout_ms) in todo.diagnose {
        let sender = ha.app_sender.clone();
        tokio::spawn(async move {
            let result = crate::takeover::diagnose(address, timeout_ms).await;
            sender.send(from, crate::takeover::TOPIC, &crate::takeover::Frame::Diagnosed { check, result });
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
    for (check, address, interval_ms, timeout_ms) in crate::takeover::partner_checks(cfg) {
        let sender = ha.app_sender.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(interval_ms as u64));
            loop {
                every.tick().await;
                sender.send(partner, crate::takeover::TOPIC, &crate::takeover::Frame::Diagnose { check: check.clone(), address, timeout_ms });
            }
        });
    }
}

/// How the event loop ended.
pub enum Outcome {
    /// Stopped without a completed graceful leave (timeout or second signal).
    Stopped,
    Left,
    Halted(HaltReason),
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
}
