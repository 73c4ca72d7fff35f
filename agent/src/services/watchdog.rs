//! S4.5 (claims 3, 34 and 41 of the 004 seed): a watchdog process for a
//! resource group whose halt method ran on this node.
//!
//! After every halt method (a monitor failure, the cleanup of a failed
//! start, a switchover, transfer or failback, a node leave, the stop of
//! every group when the agent ends) and after a group went off-line here,
//! the agent spawns `baton watchdog --config F --group G --gen N ...`: a
//! separate process of the same binary, in a session of its own (`setsid`),
//! so that it outlives a crash of the agent and shows in `ps`. For a bounded
//! time ([`DURATION`], a round every [`PERIOD`]) it verifies that the group
//! is really down on this node and cleans up what is not:
//!
//! * processes of the application: members of the daemon's process group
//!   (handed over by the agent) and every process whose environment has
//!   `BATON_GROUP=<group>` (baton sets it for every command of the group, so
//!   it also finds a daemon that escaped its process group) and that is
//!   owned by the agent's own user (root): an unprivileged user's process
//!   that sets the mark is never touched (docs/security.md); in this
//!   network namespace only: SIGTERM, then SIGKILL after [`TERM_GRACE`];
//! * an OCF or systemd application that still reports running (its monitor
//!   action): stopped again;
//! * the group's addresses still configured on its interface: removed with
//!   the same rtnetlink code as the halt method ([`crate::services::addr::release`]),
//!   unless the group went off-line (`--keep-addresses`: S4.6 keeps them).
//!
//! What it found and did is appended to the agent's events file as one
//! `{"event":"watchdog",...}` line and logged. When it cannot clean up (an
//! address that cannot be removed, a process that survives SIGKILL, an
//! application that still runs after a second stop, or leftovers that keep
//! coming back round after round) it raises a local critical failure (S0)
//! through the agent's control socket (`distress component`, as `baton
//! fail` does): the node leaves the cluster rather than keep a resource that
//! another node now owns. Without an agent it still cleans up.
//!
//! **Races.** The watchdog must never touch a group that this node
//! legitimately runs again (restarted here meanwhile). Every run of a group
//! here (its run method, or its going off-line) first increments the
//! group's generation in `<state_dir>/groups/<group>.gen` under an exclusive
//! `flock` of that file ([`begin_run`]); the watchdog is handed the
//! generation of the run it cleans up after, and does each destructive step
//! (a signal, an address removal, a stop) while it holds the same lock and
//! only after it checked that the generation is still its own. So a step
//! either happens before the new run begins (which then finds a clean node)
//! or not at all: a watchdog that sees a newer generation reports
//! `superseded` and ends. Before each step it also asks the agent
//! (`group-state <group>` on the control socket): `busy` (an action of the
//! agent on the group is under way, e.g. a handover preparing it here)
//! skips the round, `active` (the agent uses the group here) ends the
//! watchdog as superseded, except after going off-line or a failed halt,
//! where the group stays active by design. Without an agent it goes on.

use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::config::groups::Group;
use crate::services::resource::{MonitorStatus, Resource};

/// How long a watchdog watches.
pub const DURATION: Duration = Duration::from_secs(5);
/// The period of its rounds.
pub const PERIOD: Duration = Duration::from_millis(250);
/// SIGTERM to SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(1);
/// Rounds after the first that find leftovers again before the watchdog
/// gives up ("it keeps coming back").
pub const MAX_RECURRENCES: u32 = 3;

/// What the agent needs to spawn watchdogs.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub exe: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
}

impl Ctx {
    /// This binary, with the agent's configuration file.
    pub fn new(config: &Path, state_dir: &Path) -> Ctx {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
        Ctx { exe, config, state_dir: state_dir.to_path_buf() }
    }
}

// ------------------------------------------------------------ generations

fn gen_file(state_dir: &Path, group: &str) -> PathBuf {
    state_dir.join("groups").join(format!("{group}.gen"))
}

/// The generation file, locked exclusively (released on drop).
struct Locked(nix::fcntl::Flock<std::fs::File>);

impl Locked {
    fn open(state_dir: &Path, group: &str) -> std::io::Result<Locked> {
        let path = gen_file(state_dir, group);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let f = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))?;
        Ok(Locked(f))
    }

    fn read(&mut self) -> u64 {
        let mut s = String::new();
        let _ = self.0.rewind();
        let _ = self.0.read_to_string(&mut s);
        s.trim().parse().unwrap_or(0)
    }

    fn write(&mut self, gen: u64) -> std::io::Result<()> {
        self.0.set_len(0)?;
        self.0.rewind()?;
        writeln!(self.0, "{gen}")
    }
}

/// A run of `group` begins here (its run method, or it goes off-line):
/// a new generation, so that every watchdog of an earlier run stops
/// touching the group. Waits while a watchdog does a cleanup step.
pub async fn begin_run(state_dir: &Path, group: &str) -> u64 {
    let (dir, name) = (state_dir.to_path_buf(), group.to_string());
    let r = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let mut l = Locked::open(&dir, &name)?;
        let gen = l.read() + 1;
        l.write(gen)?;
        Ok(gen)
    })
    .await;
    match r {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => {
            warn!(group, "cannot record the group's generation: {e}");
            0
        }
        Err(e) => {
            warn!(group, "cannot record the group's generation: {e}");
            0
        }
    }
}

/// The generation of the latest run of `group` here.
pub fn current_gen(state_dir: &Path, group: &str) -> u64 {
    std::fs::read_to_string(gen_file(state_dir, group)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

// ------------------------------------------------------------ spawning

/// What the agent hands a watchdog.
#[derive(Clone, Debug, Default)]
pub struct Spawn {
    pub group: String,
    pub gen: u64,
    /// Why the halt ran (the core's reason), for the report.
    pub reason: String,
    /// Process groups of the application's daemon as the halt found them.
    pub pgids: Vec<i32>,
    /// S4.6: the group went off-line here: its addresses stay.
    pub keep_addresses: bool,
    /// The halt method failed.
    pub halt_failed: bool,
}

/// Spawns the watchdog process (in a session of its own; it is reaped by a
/// task of the agent while the agent lives, by init afterwards).
pub fn spawn(ctx: &Ctx, s: &Spawn) {
    let mut cmd = tokio::process::Command::new(&ctx.exe);
    cmd.arg("watchdog")
        .arg("--config")
        .arg(&ctx.config)
        .args(["--group", &s.group, "--gen", &s.gen.to_string(), "--reason", &s.reason]);
    for p in &s.pgids {
        cmd.args(["--pgid", &p.to_string()]);
    }
    if s.keep_addresses {
        cmd.arg("--keep-addresses");
    }
    if s.halt_failed {
        cmd.arg("--halt-failed");
    }
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    // stderr: the agent's log.
    unsafe {
        cmd.pre_exec(|| {
            let _ = nix::unistd::setsid();
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(mut child) => {
            info!(service = %s.group, pid = child.id(), gen = s.gen, "watchdog spawned");
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Err(e) => error!(service = %s.group, "cannot spawn the watchdog: {e}"),
    }
}

// ------------------------------------------------------------ agent hooks

static STATE_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The agent's hooks (`svc.rs`): a run of `group` begins here (the run
/// method, going off-line, a handover's preparation): see [`begin_run`].
/// Nothing when watchdogs are not wired (unit tests of the runtime).
pub async fn run_begins(ctx: Option<&Ctx>, group: &str) {
    if let Some(c) = ctx {
        begin_run(&c.state_dir, group).await;
    } else if let Some(d) = STATE_DIR.get() {
        begin_run(d, group).await;
    }
}

/// [`run_begins`] for code without the context (e.g. a handover preparing
/// the group on this node before its run method).
pub async fn run_begins_here(group: &str) {
    run_begins(None, group).await
}

/// The daemon's process group, as the halt method is about to stop it.
pub async fn pgids_of(app: Option<&Resource>) -> Vec<i32> {
    match app {
        Some(a) => a.daemon_pgid().await.into_iter().collect(),
        None => Vec::new(),
    }
}

/// After a halt method (or going off-line: `keep_addresses`), under the
/// group's lock: a watchdog for the run that just ended.
pub fn after_halt(ctx: Option<&Ctx>, group: &str, reason: &str, pgids: Vec<i32>, keep_addresses: bool, halt_failed: bool) {
    let Some(c) = ctx else { return };
    let gen = current_gen(&c.state_dir, group);
    spawn(c, &Spawn { group: group.to_string(), gen, reason: reason.to_string(), pgids, keep_addresses, halt_failed });
}

impl Ctx {
    /// Makes [`run_begins_here`] work (once per process).
    pub fn install(&self) {
        let _ = STATE_DIR.set(self.state_dir.clone());
    }
}

// ------------------------------------------------------------ the process

/// The arguments of `baton watchdog`.
#[derive(Clone, Debug)]
pub struct Args {
    pub config: PathBuf,
    pub group: String,
    pub gen: u64,
    pub reason: String,
    pub pgids: Vec<i32>,
    pub keep_addresses: bool,
    pub halt_failed: bool,
}

/// A process of this network namespace, identified across PID reuse.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Proc {
    pub pid: i32,
    start: u64,
    pub cmd: String,
}

impl Proc {
    /// Still the same process (not a reuse of its pid), and not a zombie.
    pub fn alive(&self) -> bool {
        alive(self)
    }
}

fn own_netns() -> Option<PathBuf> {
    std::fs::read_link("/proc/self/ns/net").ok()
}

/// (state, pgrp, starttime) from /proc/PID/stat.
fn stat(pid: i32) -> Option<(String, i32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    // utime stime cutime cstime priority nice threads itrealvalue starttime
    Some((f.first()?.to_string(), f.get(2)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

fn alive(p: &Proc) -> bool {
    stat(p.pid).is_some_and(|(st, _, start)| start == p.start && st != "Z" && st != "X")
}

/// Leftover processes of the group in this network namespace: members of
/// the recorded process groups, and processes marked `BATON_GROUP=<group>`
/// that belong to the agent's own user (root), so that an unprivileged
/// user's process that sets the mark is never touched.
pub fn leftover_processes(group: &str, pgids: &[i32]) -> Vec<Proc> {
    leftovers(group, pgids)
}

fn leftovers(group: &str, pgids: &[i32]) -> Vec<Proc> {
    use std::os::unix::fs::MetadataExt;
    let my_uid = nix::unistd::geteuid().as_raw();
    let me = std::process::id() as i32;
    let ns = own_netns();
    let needle = format!("BATON_GROUP={group}");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Some((st, pgrp, start)) = stat(pid) else { continue };
        if st == "Z" || st == "X" {
            continue;
        }
        if ns.is_some() && std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() != ns {
            continue;
        }
        let by_pgid = pgids.contains(&pgrp);
        let by_env = !by_pgid
            && std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == my_uid)
            && std::fs::read(format!("/proc/{pid}/environ"))
                .map(|b| b.split(|c| *c == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false);
        if by_pgid || by_env {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
                .unwrap_or_default();
            out.push(Proc { pid, start, cmd });
        }
    }
    out
}

/// What one round found and did.
#[derive(Default)]
struct Round {
    killed: Vec<serde_json::Value>,
    removed: Vec<String>,
    app: Option<String>,
    errors: Vec<String>,
    superseded: bool,
}

impl Round {
    fn found(&self) -> bool {
        !self.killed.is_empty() || !self.removed.is_empty() || self.app.as_deref() == Some("stopped again")
    }
}

struct Watch {
    args: Args,
    socket: PathBuf,
    group: Group,
    state_dir: PathBuf,
    app: Option<Resource>,
}

impl Watch {
    /// Whether a destructive step may run now: the group's lock, held, if
    /// the generation is still ours and the agent (when it answers) does
    /// not use the group here. `None` ends the round: the agent is acting on
    /// the group right now (not this round), or the group runs here again
    /// (`r.superseded` is set).
    async fn step(&self, r: &mut Round) -> Option<Locked> {
        let (dir, name, gen) = (self.state_dir.clone(), self.args.group.clone(), self.args.gen);
        let l = tokio::task::spawn_blocking(move || {
            let mut l = Locked::open(&dir, &name).ok()?;
            (l.read() == gen).then_some(l)
        })
        .await
        .ok()
        .flatten();
        let Some(l) = l else {
            r.superseded = true;
            return None;
        };
        // The agent's own view: something of the agent may configure the
        // group here outside a run method (a handover's preparation) under
        // the group's task lock, and marks it active afterwards. After
        // going off-line or a failed halt the group is active by design.
        use crate::control::protocol::{GroupState, Reply, Request};
        let reply = crate::control::socket::call(&self.socket, &Request::GroupState { group: self.args.group.clone() }).await;
        match reply {
            Ok(Reply::GroupState(GroupState::Busy)) => None,
            Ok(Reply::GroupState(GroupState::Active)) if !self.args.keep_addresses && !self.args.halt_failed => {
                r.superseded = true;
                None
            }
            _ => Some(l), // idle, or no agent (gone: nothing runs it here)
        }
    }

    async fn round(&self) -> Round {
        let mut r = Round::default();
        // The application as its own agent sees it (OCF, systemd: the
        // monitor action is local by definition; a command application is
        // covered by its processes below).
        if let Some(app) = &self.app {
            if matches!(app.spec().kind, crate::config::groups::ResourceKind::Ocf { .. } | crate::config::groups::ResourceKind::Systemd { .. }) {
                match app.monitor().await {
                    MonitorStatus::NotRunning => {}
                    MonitorStatus::Failed { reason } => r.app = Some(format!("monitor failed: {reason}")),
                    MonitorStatus::Running => {
                        let Some(_l) = self.step(&mut r).await else { return r };
                        warn!(service = %self.args.group, "the application still runs here: stopping it again");
                        match app.stop().await {
                            Err(e) => r.errors.push(format!("the application still runs and its stop failed: {e}")),
                            Ok(()) => match app.monitor().await {
                                MonitorStatus::Running => {
                                    r.errors.push("the application still runs after a second stop".to_string())
                                }
                                _ => r.app = Some("stopped again".to_string()),
                            },
                        }
                    }
                }
            }
        }
        // Leftover processes: SIGTERM, then SIGKILL.
        let procs = leftovers(&self.args.group, &self.args.pgids);
        if !procs.is_empty() {
            {
                let Some(_l) = self.step(&mut r).await else { return r };
                for p in &procs {
                    warn!(service = %self.args.group, pid = p.pid, cmd = %p.cmd, "leftover process of the group: SIGTERM");
                    let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
                }
            }
            let until = Instant::now() + TERM_GRACE;
            while procs.iter().any(alive) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let left: Vec<&Proc> = procs.iter().filter(|p| alive(p)).collect();
            if !left.is_empty() {
                let Some(_l) = self.step(&mut r).await else { return r };
                for p in &left {
                    warn!(service = %self.args.group, pid = p.pid, cmd = %p.cmd, "still running after SIGTERM: SIGKILL");
                    let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                }
            }
            let until = Instant::now() + Duration::from_secs(1);
            while procs.iter().any(alive) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            for p in &procs {
                let signal = if left.contains(&p) { "SIGKILL" } else { "SIGTERM" };
                r.killed.push(serde_json::json!({"pid": p.pid, "cmd": p.cmd, "signal": signal}));
                if alive(p) {
                    r.errors.push(format!("process {} ({}) survived SIGKILL", p.pid, p.cmd));
                }
            }
        }
        // Addresses (not for an off-line group: S4.6 keeps them).
        if !self.args.keep_addresses {
            for a in &self.group.addresses {
                let present = match crate::services::addr::is_configured(&self.group.interface, a.ip).await {
                    Ok(p) => p,
                    // No interface: no address on it either.
                    Err(crate::services::addr::AddrError::NoSuchInterface { .. }) => false,
                    Err(e) => {
                        r.errors.push(format!("cannot check {a} on {}: {e}", self.group.interface));
                        continue;
                    }
                };
                if !present {
                    continue;
                }
                let Some(_l) = self.step(&mut r).await else { return r };
                warn!(service = %self.args.group, address = %a, interface = %self.group.interface, "address still configured: removing it");
                if let Err(e) = crate::services::addr::release(&self.group.interface, a.ip, a.prefix).await {
                    r.errors.push(format!("cannot remove {a} from {}: {e}", self.group.interface));
                    continue;
                }
                r.removed.push(a.to_string());
                if crate::services::addr::is_configured(&self.group.interface, a.ip).await.unwrap_or(false) {
                    r.errors.push(format!("{a} is still on {} after its removal", self.group.interface));
                }
            }
        }
        r
    }
}

/// Why `baton watchdog` could not watch its group.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("{source}")]
    Config {
        #[from]
        source: crate::config::ConfigError,
    },
    #[error("no group {group:?} in {}", file.display())]
    NoGroup { group: String, file: PathBuf },
}

/// `baton watchdog`: watches, cleans up, reports; exit status 0 when the
/// group is down here (or superseded), 1 after a critical failure.
pub async fn run(args: Args) -> Result<i32, WatchdogError> {
    let cfg = crate::config::load(&args.config)?;
    let group = cfg
        .groups
        .iter()
        .find(|g| g.name == args.group)
        .cloned()
        .ok_or_else(|| WatchdogError::NoGroup { group: args.group.clone(), file: args.config.clone() })?;
    let events = cfg.paths.events_log();
    let socket = cfg.paths.control_socket();
    let node = cfg.node_id;
    let app = group.application.as_ref().map(Resource::from_spec);
    let w = Watch { args: args.clone(), socket: socket.clone(), group, state_dir: cfg.paths.state_dir.clone(), app };
    info!(service = %args.group, gen = args.gen, reason = %args.reason, keep_addresses = args.keep_addresses, "watchdog: watching the group");
    let t0 = Instant::now();
    let (mut killed, mut removed, mut app_notes, mut errors) = (Vec::new(), Vec::new(), BTreeSet::new(), Vec::new());
    let (mut rounds, mut recurrences, mut superseded) = (0u32, 0u32, false);
    loop {
        rounds += 1;
        let r = w.round().await;
        if r.found() && rounds > 1 {
            recurrences += 1;
        }
        killed.extend(r.killed.iter().cloned());
        removed.extend(r.removed.iter().cloned());
        app_notes.extend(r.app.clone());
        errors.extend(r.errors.iter().cloned());
        if r.superseded {
            superseded = true;
            break;
        }
        if recurrences >= MAX_RECURRENCES {
            errors.push(format!("the group's leftovers came back in {recurrences} rounds after the first"));
        }
        if !errors.is_empty() || t0.elapsed() >= DURATION {
            break;
        }
        tokio::time::sleep(PERIOD).await;
    }
    let result = if superseded {
        "superseded"
    } else if !errors.is_empty() {
        "critical"
    } else if killed.is_empty() && removed.is_empty() && !app_notes.contains("stopped again") {
        "clean"
    } else {
        "cleaned"
    };
    let ev = serde_json::json!({
        "event": "watchdog",
        "service": args.group,
        "node": node,
        "pid": std::process::id(),
        "gen": args.gen,
        "reason": args.reason,
        "halt_failed": args.halt_failed,
        "keep_addresses": args.keep_addresses,
        "result": result,
        "killed": killed,
        "addresses_removed": removed,
        "application": app_notes.into_iter().collect::<Vec<_>>(),
        "errors": errors,
        "rounds": rounds,
        "ms": t0.elapsed().as_millis() as u64,
    });
    crate::eventlog::record(&events, ev.clone());
    match result {
        "critical" => {
            error!(service = %args.group, errors = ?ev["errors"], "watchdog: the group cannot be brought down here: critical failure (S0), this node leaves the cluster");
            let distress = crate::control::protocol::Request::Distress { reason: crate::control::protocol::DistressReason::Component };
            match crate::control::socket::call(&socket, &distress).await {
                Ok(reply) => info!(service = %args.group, %reply, "watchdog: critical failure reported to the agent"),
                Err(e) => warn!(service = %args.group, "watchdog: the agent is gone ({e}); the cleanup was done as far as possible"),
            }
            Ok(1)
        }
        "superseded" => {
            info!(service = %args.group, "watchdog: the group runs here again (a newer run): nothing more to do");
            Ok(0)
        }
        _ => {
            info!(service = %args.group, result, killed = killed.len(), addresses_removed = removed.len(), "watchdog: the group is down here");
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        crate::test_util::fresh_dir(&format!("wd-{tag}"))
    }

    #[tokio::test]
    async fn generations_grow_and_a_newer_run_supersedes() {
        let d = tmp("gen");
        assert_eq!(current_gen(&d, "web"), 0);
        assert_eq!(begin_run(&d, "web").await, 1);
        assert_eq!(begin_run(&d, "web").await, 2);
        assert_eq!(current_gen(&d, "web"), 2);
        assert_eq!(current_gen(&d, "db"), 0);
        let mut l = Locked::open(&d, "web").unwrap();
        assert_eq!(l.read(), 2);
        // A run waits while the lock is held.
        let d2 = d.clone();
        let h = tokio::spawn(async move { begin_run(&d2, "web").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!h.is_finished(), "begin_run did not wait for the watchdog's lock");
        drop(l);
        assert_eq!(h.await.unwrap(), 3);
    }

    #[test]
    fn finds_processes_by_group_environment_and_process_group() {
        let mut a = std::process::Command::new("sleep").arg("30").env("BATON_GROUP", "wdtest-x").spawn().unwrap();
        let b = std::process::Command::new("sleep").arg("30").env("BATON_GROUP", "wdtest-other").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let found = leftovers("wdtest-x", &[]);
        assert_eq!(found.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![a.id() as i32]);
        assert!(found[0].cmd.starts_with("sleep 30"));
        assert!(alive(&found[0]));
        let _ = a.kill();
        let _ = a.wait();
        assert!(!alive(&found[0]));
        let pg = {
            use std::os::unix::process::CommandExt;
            std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap()
        };
        let pgid = pg.id() as i32;
        let found = leftovers("wdtest-none", &[pgid]);
        assert_eq!(found.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![pgid]);
        for mut c in [b, pg] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    #[test]
    fn never_selects_another_users_process_that_carries_the_mark() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root (to run a process as nobody)");
            // Counted as skipped by `cargo xtask test` (see baton_tests::note_skipped).
            if let Some(path) = std::env::var_os("BATON_SKIP_LOG") {
                if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                    let _ = writeln!(f, "watchdog::tests::never_selects_another_users_process_that_carries_the_mark\tneeds root");
                }
            }
            return;
        }
        // An unprivileged user's process with the group's mark, and the
        // agent's (root's) own: only root's is a leftover of the group.
        let mut theirs = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "30"])
            .env("BATON_GROUP", "wdtest-nobody")
            .spawn()
            .unwrap();
        let mut ours = std::process::Command::new("sleep").arg("30").env("BATON_GROUP", "wdtest-nobody").spawn().unwrap();
        let nobody_pid = theirs.id() as i32;
        assert!(
            wait_for(|| std::fs::read_to_string(format!("/proc/{nobody_pid}/status")).is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.contains("65534")))
                && std::fs::read_to_string(format!("/proc/{nobody_pid}/cmdline")).is_ok_and(|c| c.starts_with("sleep"))),
            "the nobody process did not start"
        );
        let found: Vec<i32> = leftovers("wdtest-nobody", &[]).iter().map(|p| p.pid).collect();
        assert_eq!(found, vec![ours.id() as i32], "only root's marked process; never nobody's ({nobody_pid})");
        for c in [&mut theirs, &mut ours] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..200 {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}
