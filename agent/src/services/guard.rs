//! The guard: no floating address or application outlives the life of the
//! agent that holds it (docs/services.md, "Ownership").
//!
//! Every life of the agent starts `baton guard --config F --incarnation N`:
//! a small process of the same binary, in a session of its own (`setsid`),
//! so that a SIGKILL of the agent (an OOM kill, a crash, an operator's
//! mistake) or of the agent's process group does not reach it. It is the
//! only reader of a pipe whose only writer is the agent (the write end is
//! close-on-exec, so no child of the agent keeps it). The agent tells it,
//! line by line, what this node holds:
//!
//! ```text
//! hold GROUP            before the run method (or a handover's preparation,
//!                       or going off-line) configures anything of GROUP here
//! pgid GROUP PGID...    the process groups of GROUP's daemon, once started
//! release GROUP         after the halt method released everything of GROUP
//! reload                the agent reloaded its configuration file: read it
//!                       again (a held group the file no longer has keeps
//!                       its old definition until it is released)
//! bye                   the agent ends cleanly (everything released)
//! ```
//!
//! When the pipe ends (the kernel closes the agent's end when the agent
//! exits, however it exits), the guard releases at once whatever is still
//! held, in this order:
//! 1. every address of every held group is removed (rtnetlink), and the
//!    group's entries in the pinned `BATON_HANDOVER` map are cleared: the
//!    node stops answering for them within a millisecond or two, long before
//!    a survivor can take them over (interval × misses);
//! 2. unless the agent said `bye`, a distress datagram (S0, reason
//!    `component`) goes to every peer on every link, authenticated with the
//!    cluster key, for the agent's incarnation: the others start the forced
//!    leave at once instead of waiting for the silence bound;
//! 3. the applications are stopped, children first: the recorded process
//!    groups get SIGTERM (SIGKILL after [`crate::services::watchdog::TERM_GRACE`]),
//!    then the application's own stop (OCF `stop`, `systemctl stop`, a
//!    command's `stop` line);
//! 4. an S4.5 watchdog process is spawned for each group (leftovers that
//!    escaped their process group, or that come back).
//!
//! The guard records what is held in `<state_dir>/held.json`, so that the
//! next life can clean up even if the guard itself was killed too. The same
//! release runs at the start of every life, before the agent joins ("start
//! clean"): the guard first takes `<state_dir>/guard.lock` (waiting for the
//! guard of an earlier life that is still releasing), releases every group
//! recorded in `held.json`, removes every configured floating address of
//! every group from its interface and stops every leftover process of a
//! group's application in this network namespace (by the recorded process
//! groups and by the `BATON_GROUP` mark baton sets, root-owned processes
//! only). A new life never owns a group when it starts (its incarnation is
//! new, and the cluster recovers the old life's groups through its forced
//! leave), so nothing is kept. Only then does it answer `ready` and the
//! agent goes on to load the datapath and join.
//!
//! The guard never acts while the agent lives: it acts on the end of the
//! pipe only. It ignores SIGTERM, SIGINT and SIGHUP (a `systemctl stop`
//! signals every process of the unit; the agent's graceful leave then ends
//! the pipe). Only root can signal it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::config::groups::{Group, ResourceKind};
use crate::services::resource::Resource;

/// What a life of the agent holds: group → the process groups of its daemon.
pub type Held = BTreeMap<String, Vec<i32>>;

/// `<state_dir>/held.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRecord {
    /// The life that holds them.
    pub incarnation: u64,
    pub groups: Held,
}

pub fn held_file(state_dir: &Path) -> PathBuf {
    state_dir.join("held.json")
}

fn lock_file(state_dir: &Path) -> PathBuf {
    state_dir.join("guard.lock")
}

/// What a release found and did (the guard's event, `baton status`):
/// `agent.start_clean` of `agent.json`.
pub use baton_state::Released;

// ------------------------------------------------------------ agent side

/// The agent's end: the guard process and the pipe to it.
pub struct GuardLink {
    inner: Mutex<LinkInner>,
    exe: PathBuf,
    config: PathBuf,
    incarnation: u64,
}

struct LinkInner {
    child: Child,
    stdin: Option<ChildStdin>,
    held: Held,
    /// `bye` was sent: nothing more goes to the guard.
    finished: bool,
}

/// How long the agent waits for the guard's start clean (stop actions of
/// leftover applications included).
fn ready_timeout(cfg: &Config) -> Duration {
    let stops: u64 = cfg.groups.iter().filter_map(|g| g.application.as_ref()).map(|a| a.timeouts.stop_ms as u64).sum();
    Duration::from_secs(30) + Duration::from_millis(stops) + crate::services::watchdog::TERM_GRACE * 2
}

impl GuardLink {
    /// Starts the guard and waits for its start clean. Returns what it
    /// released.
    pub fn spawn(cfg: &Config, incarnation: u64) -> std::io::Result<(GuardLink, Released)> {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let config = std::fs::canonicalize(&cfg.file).unwrap_or_else(|_| cfg.file.clone());
        let (child, stdin, released) = start_guard(&exe, &config, incarnation, ready_timeout(cfg))?;
        let link = GuardLink { inner: Mutex::new(LinkInner { child, stdin: Some(stdin), held: Held::new(), finished: false }), exe, config, incarnation };
        Ok((link, released))
    }

    pub fn pid(&self) -> u32 {
        self.lock().child.id()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one line; if the guard is gone, starts a new one and tells it
    /// everything held (the line's own change is in `held` already).
    fn send(&self, inner: &mut LinkInner, line: &str) {
        if inner.finished {
            return;
        }
        let ok = inner.stdin.as_mut().is_some_and(|s| s.write_all(line.as_bytes()).and_then(|_| s.write_all(b"\n")).is_ok());
        if !ok {
            self.respawn(inner);
        }
    }

    /// The guard died while the agent lives (killed by hand): a new one,
    /// told what is held. (Its start clean finds the groups held in the
    /// record and would release them: so the record is rewritten first.)
    fn respawn(&self, inner: &mut LinkInner) {
        let _ = inner.child.try_wait();
        error!(pid = inner.child.id(), "the guard process is gone: starting a new one");
        inner.stdin = None;
        let _ = inner.child.kill();
        let _ = inner.child.wait();
        match start_guard_keeping(&self.exe, &self.config, self.incarnation) {
            Ok((child, stdin)) => {
                inner.child = child;
                inner.stdin = Some(stdin);
                let lines: Vec<String> = inner.held.iter().flat_map(|(g, p)| held_lines(g, p)).collect();
                for l in lines {
                    if let Some(s) = inner.stdin.as_mut() {
                        let _ = s.write_all(format!("{l}\n").as_bytes());
                    }
                }
                info!(pid = inner.child.id(), held = inner.held.len(), "guard restarted");
            }
            Err(e) => error!("cannot start a new guard: {e}; addresses and applications of this node may outlive the agent"),
        }
    }

    /// Before anything of `group` is configured here.
    pub fn hold(&self, group: &str) {
        let mut i = self.lock();
        if i.held.contains_key(group) {
            return;
        }
        i.held.insert(group.to_string(), Vec::new());
        self.send(&mut i, &format!("hold {group}"));
    }

    /// The daemon's process groups, once started.
    pub fn set_pgids(&self, group: &str, pgids: &[i32]) {
        let mut i = self.lock();
        let Some(p) = i.held.get_mut(group) else { return };
        if p.as_slice() == pgids {
            return;
        }
        *p = pgids.to_vec();
        let line = held_lines(group, pgids).pop().unwrap_or_default();
        self.send(&mut i, &line);
    }

    /// After the halt released everything of `group`.
    pub fn release(&self, group: &str) {
        let mut i = self.lock();
        if i.held.remove(group).is_none() {
            return;
        }
        self.send(&mut i, &format!("release {group}"));
    }

    /// The agent reloaded its configuration file: the guard reads it again.
    pub fn reload(&self) {
        let mut i = self.lock();
        self.send(&mut i, "reload");
    }

    /// Whether any group is held.
    pub fn holds_anything(&self) -> bool {
        !self.lock().held.is_empty()
    }

    /// Periodic: a guard that died is replaced.
    pub fn check(&self) {
        let mut i = self.lock();
        if i.finished {
            return;
        }
        if let Ok(Some(st)) = i.child.try_wait() {
            warn!(%st, "the guard process exited");
            self.respawn(&mut i);
        }
    }

    /// The agent ends cleanly: `bye`, then the pipe ends. The guard releases
    /// whatever is still held (a halt that failed) and exits; waits for it.
    pub fn finish(&self) {
        let mut i = self.lock();
        i.finished = true;
        if let Some(mut s) = i.stdin.take() {
            let _ = s.write_all(b"bye\n");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = i.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        warn!(pid = i.child.id(), "the guard did not end within 10 s of the agent's end; leaving it");
    }
}

fn held_lines(group: &str, pgids: &[i32]) -> Vec<String> {
    let mut v = vec![format!("hold {group}")];
    if !pgids.is_empty() {
        let list: Vec<String> = pgids.iter().map(|p| p.to_string()).collect();
        v.push(format!("pgid {group} {}", list.join(" ")));
    }
    v
}

fn guard_command(exe: &Path, config: &Path, incarnation: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(exe);
    cmd.arg("guard").arg("--config").arg(config).arg("--incarnation").arg(incarnation.to_string());
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    // stderr: the agent's log. Its own session: a signal to the agent's
    // process group, or the end of the agent's terminal, does not reach it.
    cmd.process_group(0);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let _ = nix::unistd::setsid();
            Ok(())
        });
    }
    cmd
}

fn start_guard(exe: &Path, config: &Path, incarnation: u64, timeout: Duration) -> std::io::Result<(Child, ChildStdin, Released)> {
    let mut child = guard_command(exe, config, incarnation).spawn()?;
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    // The guard's start clean, then `ready {json}`.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    let fail = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        std::io::Error::other(why)
    };
    match rx.recv_timeout(timeout) {
        Ok(Ok(line)) => match line.trim().strip_prefix("ready ") {
            Some(json) => {
                let released = serde_json::from_str(json).unwrap_or_default();
                Ok((child, stdin, released))
            }
            None => {
                let st = child.wait().ok();
                Err(fail(&mut child, format!("the guard process did not start (exit {st:?}; its error is in the log above)")))
            }
        },
        Ok(Err(e)) => Err(fail(&mut child, format!("reading the guard's answer: {e}"))),
        Err(_) => Err(fail(&mut child, format!("the guard's start clean did not finish within {timeout:?}"))),
    }
}

/// A replacement guard (`--keep`: no start clean, the agent lives and holds
/// what it holds); the caller tells it what is held.
fn start_guard_keeping(exe: &Path, config: &Path, incarnation: u64) -> std::io::Result<(Child, ChildStdin)> {
    let mut cmd = guard_command(exe, config, incarnation);
    cmd.arg("--keep");
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("ready") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(std::io::Error::other("the replacement guard did not start"));
    }
    stdin.flush()?;
    Ok((child, stdin))
}

// ------------------------------------------------------------ the process

/// `baton guard`.
#[derive(Clone, Debug)]
pub struct Args {
    pub config: PathBuf,
    pub incarnation: u64,
    /// A replacement for a guard that died while the agent lives: no start
    /// clean (the agent holds what it holds, and re-sends it).
    pub keep: bool,
}

/// An exclusive `flock` of a file, released on drop.
type FileLock = nix::fcntl::Flock<std::fs::File>;

fn take_lock(path: &Path) -> std::io::Result<FileLock> {
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))
}

fn write_record(state_dir: &Path, rec: &HeldRecord) {
    let path = held_file(state_dir);
    if rec.groups.is_empty() {
        let _ = std::fs::remove_file(&path);
        return;
    }
    let ok = crate::statefile::write_json(&path, rec, true);
    if let Err(e) = ok {
        warn!(file = %path.display(), "cannot record what this node holds: {e}");
    }
}

fn read_record(state_dir: &Path) -> Option<HeldRecord> {
    let text = std::fs::read_to_string(held_file(state_dir)).ok()?;
    match serde_json::from_str(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(file = %held_file(state_dir).display(), "unreadable record of held groups ({e}); every group is cleaned up");
            None
        }
    }
}

/// One line of the agent.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Hold(String),
    Pgid(String, Vec<i32>),
    Release(String),
    Reload,
    Bye,
}

fn parse_line(l: &str) -> Option<Line> {
    let mut w = l.split_whitespace();
    match (w.next()?, w.next()) {
        ("hold", Some(g)) => Some(Line::Hold(g.to_string())),
        ("release", Some(g)) => Some(Line::Release(g.to_string())),
        ("pgid", Some(g)) => Some(Line::Pgid(g.to_string(), w.filter_map(|p| p.parse().ok()).collect())),
        ("bye", None) => Some(Line::Bye),
        ("reload", None) => Some(Line::Reload),
        _ => None,
    }
}

/// Why `baton guard` could not start (it then exits non-zero and the
/// agent's `GuardLink::spawn` fails: the agent does not start).
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("{source}")]
    Config {
        #[from]
        source: crate::config::ConfigError,
    },
    #[error("creating {}: {source}", dir.display())]
    StateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("installing the signal handlers: {source}")]
    Signals {
        #[source]
        source: std::io::Error,
    },
    #[error("taking the guard lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("taking the guard lock: {source}")]
    LockTask {
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("encoding what the start-clean released: {source}")]
    Encode {
        #[source]
        source: serde_json::Error,
    },
    /// The `ready` line to the agent (stdout).
    #[error("telling the agent it is ready: {source}")]
    Ready {
        #[source]
        source: std::io::Error,
    },
}

/// The guard's whole life. Exit status 0.
pub async fn run(args: Args) -> Result<i32, GuardError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut cfg = crate::config::load(&args.config)?;
    std::fs::create_dir_all(&cfg.paths.state_dir).map_err(|source| GuardError::StateDir { dir: cfg.paths.state_dir.clone(), source })?;
    // While the agent lives, signals that end ordinary processes are
    // ignored (handlers, not SIG_IGN: a child of ours, such as an OCF
    // `stop`, starts with the default dispositions).
    let mut sigs = Vec::new();
    for k in [SignalKind::terminate(), SignalKind::interrupt(), SignalKind::hangup()] {
        sigs.push(signal(k).map_err(|source| GuardError::Signals { source })?);
    }
    tokio::spawn(async move {
        let mut term = sigs.remove(0);
        let mut int = sigs.remove(0);
        let mut hup = sigs.remove(0);
        loop {
            tokio::select! {
                _ = term.recv() => info!("guard: SIGTERM ignored (it ends with the agent)"),
                _ = int.recv() => {}
                _ = hup.recv() => {}
            }
        }
    });
    let lock = {
        let path = lock_file(&cfg.paths.state_dir);
        let p = path.clone();
        tokio::task::spawn_blocking(move || take_lock(&p))
            .await
            .map_err(|source| GuardError::LockTask { source })?
            .map_err(|source| GuardError::Lock { path, source })?
    };
    let mut rec = HeldRecord { incarnation: args.incarnation, groups: Held::new() };
    let released = if args.keep {
        Released { why: "restart".into(), ..Default::default() }
    } else {
        let r = start_clean(&cfg).await;
        log_release(&cfg, &r);
        r
    };
    write_record(&cfg.paths.state_dir, &rec);
    {
        let mut out = std::io::stdout();
        let line = serde_json::to_string(&released).map_err(|source| GuardError::Encode { source })?;
        writeln!(out, "ready {line}").and_then(|()| out.flush()).map_err(|source| GuardError::Ready { source })?;
    }
    // The agent's lines, read by a thread (stdin is a blocking pipe).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for l in stdin.lock().lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut bye = false;
    while let Some(l) = rx.recv().await {
        match parse_line(&l) {
            Some(Line::Hold(g)) => {
                rec.groups.entry(g).or_default();
            }
            Some(Line::Pgid(g, p)) => {
                if let Some(e) = rec.groups.get_mut(&g) {
                    *e = p;
                }
            }
            Some(Line::Release(g)) => {
                rec.groups.remove(&g);
            }
            Some(Line::Bye) => bye = true,
            Some(Line::Reload) => match crate::config::load(&args.config) {
                Ok(mut new) => {
                    for g in &cfg.groups {
                        if rec.groups.contains_key(&g.name) && !new.groups.iter().any(|n| n.name == g.name) {
                            new.groups.push(g.clone());
                        }
                    }
                    info!(groups = new.groups.len(), "guard: configuration reloaded");
                    cfg = new;
                }
                Err(e) => warn!("guard: reload: {e}; keeping the groups it had"),
            },
            None => warn!(line = %l, "guard: unknown line from the agent"),
        }
        write_record(&cfg.paths.state_dir, &rec);
    }
    // The pipe ended: the agent is gone.
    if !bye {
        error!(held = ?rec.groups.keys().collect::<Vec<_>>(), incarnation = args.incarnation, "guard: the agent ended without a clean exit: releasing what this node held");
    } else if !rec.groups.is_empty() {
        warn!(held = ?rec.groups.keys().collect::<Vec<_>>(), "guard: the agent ended with groups still held (a halt that failed): releasing them");
    }
    if !bye || !rec.groups.is_empty() {
        let r = release(&cfg, &rec.groups, if bye { "exit" } else { "agent_gone" }, (!bye).then_some(args.incarnation)).await;
        log_release(&cfg, &r);
    }
    rec.groups.clear();
    write_record(&cfg.paths.state_dir, &rec);
    drop(lock);
    Ok(0)
}

fn log_release(cfg: &Config, r: &Released) {
    if r.is_empty() && r.groups.is_empty() && r.distress_sent == 0 {
        return;
    }
    info!(
        why = %r.why, groups = ?r.groups, addresses = ?r.addresses_removed, processes = r.processes_stopped.len(),
        applications = ?r.applications_stopped, distress = r.distress_sent, addresses_ms = r.addresses_ms, total_ms = r.total_ms,
        "guard: released"
    );
    for e in &r.errors {
        error!(why = %r.why, "guard: {e}");
    }
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["event"] = "guard".into();
    v["node"] = cfg.node_id.into();
    crate::eventlog::record(&cfg.paths.events_log(), v);
}

/// Start clean: what the record says an earlier life held, then every
/// configured address of every group and every marked leftover process.
async fn start_clean(cfg: &Config) -> Released {
    let held = read_record(&cfg.paths.state_dir).map(|r| r.groups).unwrap_or_default();
    let mut r = release(cfg, &held, "start", None).await;
    let t0 = Instant::now();
    for g in &cfg.groups {
        if held.contains_key(&g.name) {
            continue;
        }
        remove_addresses(g, &mut r).await;
        kill_leftovers(g, &[], &mut r).await;
    }
    r.total_ms += t0.elapsed().as_secs_f64() * 1e3;
    r
}

/// Releases the groups of `held` (and nothing else): addresses and handover
/// entries first, then the distress (`incarnation`: the life that died),
/// then the applications, children first, then a watchdog per group.
pub async fn release(cfg: &Config, held: &Held, why: &str, distress_for: Option<u64>) -> Released {
    let t0 = Instant::now();
    let mut r = Released { why: why.to_string(), ..Default::default() };
    let order: Vec<&Group> = crate::config::groups::start_order(&cfg.groups).into_iter().rev().map(|i| &cfg.groups[i]).collect();
    let groups: Vec<&Group> = order.into_iter().filter(|g| held.contains_key(&g.name)).collect();
    r.groups = groups.iter().map(|g| g.name.clone()).collect();
    for g in &groups {
        remove_addresses(g, &mut r).await;
    }
    clear_handover(cfg, &groups);
    r.addresses_ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(inc) = distress_for {
        match send_distress(cfg, inc) {
            Ok(n) => r.distress_sent = n,
            Err(e) => r.errors.push(format!("sending the distress: {e}")),
        }
    }
    for g in &groups {
        let pgids = held.get(&g.name).cloned().unwrap_or_default();
        kill_leftovers(g, &pgids, &mut r).await;
        if let Some(spec) = &g.application {
            let app = Resource::from_spec(spec);
            let has_stop = match &spec.kind {
                ResourceKind::Command { stop, .. } => stop.is_some(),
                ResourceKind::Ocf { .. } | ResourceKind::Systemd { .. } => true,
            };
            if has_stop {
                match app.stop().await {
                    Ok(()) => r.applications_stopped.push(g.name.clone()),
                    Err(e) => r.errors.push(format!("group {}: stopping the application: {e}", g.name)),
                }
            }
        }
    }
    // S4.5: a watchdog per group checks that nothing comes back.
    let ctx = crate::services::watchdog::Ctx::new(&cfg.file, &cfg.paths.state_dir);
    for g in &groups {
        let gen = crate::services::watchdog::current_gen(&cfg.paths.state_dir, &g.name);
        let pgids = held.get(&g.name).cloned().unwrap_or_default();
        crate::services::watchdog::spawn(
            &ctx,
            &crate::services::watchdog::Spawn { group: g.name.clone(), gen, reason: format!("guard:{why}"), pgids, ..Default::default() },
        );
    }
    r.total_ms = t0.elapsed().as_secs_f64() * 1e3;
    r
}

async fn remove_addresses(g: &Group, r: &mut Released) {
    for a in &g.addresses {
        match crate::services::addr::release(&g.interface, a.ip, a.prefix).await {
            Ok(true) => r.addresses_removed.push(format!("{a}@{}", g.interface)),
            Ok(false) | Err(crate::services::addr::AddrError::NoSuchInterface { .. }) => {}
            Err(e) => r.errors.push(format!("group {}: removing {a} from {}: {e}", g.name, g.interface)),
        }
    }
}

/// SIGTERM to the group's recorded process groups and marked processes,
/// SIGKILL to what is left after the grace.
async fn kill_leftovers(g: &Group, pgids: &[i32], r: &mut Released) {
    let procs = crate::services::watchdog::leftover_processes(&g.name, pgids);
    if procs.is_empty() {
        return;
    }
    for p in &procs {
        warn!(service = %g.name, pid = p.pid, cmd = %p.cmd, "guard: leftover process of the group: SIGTERM");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), nix::sys::signal::Signal::SIGTERM);
        r.processes_stopped.push(format!("{} {}", p.pid, p.cmd));
    }
    let until = Instant::now() + crate::services::watchdog::TERM_GRACE;
    while procs.iter().any(|p| p.alive()) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for p in procs.iter().filter(|p| p.alive()) {
        warn!(service = %g.name, pid = p.pid, cmd = %p.cmd, "guard: still running after SIGTERM: SIGKILL");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// The groups' entries in the pinned handover map (steering or ARP
/// silence of this node) are gone with the agent.
fn clear_handover(cfg: &Config, groups: &[&Group]) {
    let Ok(mut m) = crate::datapath::pinned::handover(&cfg.paths.bpffs_dir) else { return };
    for g in groups {
        for a in &g.addresses {
            if let IpAddr::V4(v) = a.ip {
                let _ = m.remove(&u32::from_ne_bytes(v.octets()));
            }
        }
    }
}

/// The distress of a life that died (see the module docs).
fn send_distress(cfg: &Config, incarnation: u64) -> std::io::Result<u32> {
    let key = crate::config::read_secret(&cfg.secret_file).map_err(std::io::Error::other)?;
    let (k0, k1) = baton_common::siphash::key_halves(&key);
    crate::datapath::sender::distress_of_dead_life(cfg, k0, k1, incarnation, baton_common::DISTRESS_COMPONENT)
}

/// Shared by the agent and `baton status`: whether a process runs.
pub fn process_alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// Ownership of groups on this node, as the service manager and the
/// handover see it: the groups whose run method, handover preparation or
/// off-line mode configured something here and whose halt has not released
/// it; every change is told to the guard.
#[derive(Clone, Default)]
pub struct Ownership {
    set: Arc<Mutex<std::collections::BTreeSet<String>>>,
    guard: Option<Arc<GuardLink>>,
}

impl Ownership {
    pub fn new(guard: Option<Arc<GuardLink>>) -> Ownership {
        Ownership { set: Default::default(), guard }
    }

    fn set(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before anything of `group` is configured here.
    pub fn hold(&self, group: &str) {
        if let Some(g) = &self.guard {
            g.hold(group);
        }
        self.set().insert(group.to_string());
    }

    /// After everything of `group` was released here.
    pub fn release(&self, group: &str) {
        self.set().remove(group);
        if let Some(g) = &self.guard {
            g.release(group);
        }
    }

    pub fn set_pgids(&self, group: &str, pgids: &[i32]) {
        if let Some(g) = &self.guard {
            g.set_pgids(group, pgids);
        }
    }

    pub fn holds(&self, group: &str) -> bool {
        self.set().contains(group)
    }

    /// Hot standby: the group's application runs here as the standby
    /// instance (no address): told to the guard only, so that it stops the
    /// application if the agent dies; the group is not held here.
    pub fn hold_standby(&self, group: &str) {
        if let Some(g) = &self.guard {
            g.hold(group);
        }
    }

    /// The standby instance's process groups.
    pub fn set_standby_pgids(&self, group: &str, pgids: &[i32]) {
        self.set_pgids(group, pgids);
    }

    /// The standby instance stopped (and the group is not held here).
    pub fn release_standby(&self, group: &str) {
        if let Some(g) = &self.guard {
            g.release(group);
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.set().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_agents_lines() {
        assert_eq!(parse_line("hold web"), Some(Line::Hold("web".into())));
        assert_eq!(parse_line("pgid web 12 34"), Some(Line::Pgid("web".into(), vec![12, 34])));
        assert_eq!(parse_line("release web"), Some(Line::Release("web".into())));
        assert_eq!(parse_line("bye"), Some(Line::Bye));
        assert_eq!(parse_line("bye now"), None);
        assert_eq!(parse_line("hold"), None);
        assert_eq!(parse_line("frobnicate web"), None);
        assert_eq!(held_lines("web", &[7]), vec!["hold web".to_string(), "pgid web 7".to_string()]);
        assert_eq!(held_lines("db", &[]), vec!["hold db".to_string()]);
    }

    #[test]
    fn the_record_round_trips_and_an_empty_one_is_no_file() {
        let d = std::env::temp_dir().join(format!("baton-guard-rec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let mut rec = HeldRecord { incarnation: 9, groups: Held::new() };
        rec.groups.insert("web".into(), vec![42]);
        write_record(&d, &rec);
        assert_eq!(read_record(&d), Some(rec.clone()));
        rec.groups.clear();
        write_record(&d, &rec);
        assert!(!held_file(&d).exists());
        assert_eq!(read_record(&d), None);
        let _ = std::fs::remove_dir_all(&d);
    }
}
