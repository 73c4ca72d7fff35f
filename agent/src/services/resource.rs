//! Resource runners: the applications and monitors of a resource group
//! (S4.1), run asynchronously on tokio.
//!
//! Three kinds (see [`ResourceKind`] and `docs/services-config.md`):
//! - `command`: `start` / `stop` / `monitor` shell command lines run with
//!   `/bin/sh -c` (exit 0 = success; for monitor 0 = running, 7 = not running
//!   as in OCF, anything else = failed), and an optional `daemon`: a
//!   foreground command line that baton spawns on start in its own process
//!   group and supervises. Stop sends SIGTERM to the group and SIGKILL after
//!   the stop timeout; an unexpected exit is reported as a
//!   [`MonitorEvent::Failed`] (the process watcher of S1.9).
//! - `ocf`: an OCF resource agent, run as Pacemaker runs it (environment,
//!   actions, exit codes), so the agents of Debian's `resource-agents`
//!   package run unchanged.
//! - `systemd`: a unit, through systemd's D-Bus API (`crate::services::sdbus`: start
//!   and stop jobs with their `JobRemoved` result, the unit's `ActiveState`
//!   followed through `PropertiesChanged`), or `systemctl start` / `stop` /
//!   `is-active` when there is no systemd on the system bus.
//!
//! Every action has a timeout; on expiry the action's whole process group is
//! killed and the action fails. Each action runs in a new process group so
//! that nothing it spawned in the foreground survives a timeout. Output of
//! actions goes to the tracing log with the resource name (at debug level
//! for monitor actions, which run every interval, at info otherwise).
//!
//! [`MonitorLoop`] runs a resource's monitor action periodically and reports
//! a failure after `failures` consecutive failed runs; it can be enabled and
//! disabled (event groups of S1.9 are enabled on registration).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub use crate::config::groups::{ResourceKind, ResourceSpec, Role, Timeouts};

/// Where OCF agents live (Pacemaker's and Debian's default).
pub const OCF_ROOT: &str = "/usr/lib/ocf";
/// Timeout of the `meta-data` action.
pub const META_DATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to keep reading an action's output after it exited (a process
/// it left behind may hold the pipes open).
const DRAIN_GRACE: Duration = Duration::from_millis(100);
/// Lines of stdout / stderr kept for error messages.
const TAIL_LINES: usize = 10;

/// OCF exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OcfCode {
    Success,
    ErrGeneric,
    ErrArgs,
    Unimplemented,
    ErrPerm,
    ErrInstalled,
    ErrConfigured,
    NotRunning,
    RunningPromoted,
    FailedPromoted,
    Other(i32),
}

impl OcfCode {
    pub fn from_exit(code: i32) -> Self {
        match code {
            0 => OcfCode::Success,
            1 => OcfCode::ErrGeneric,
            2 => OcfCode::ErrArgs,
            3 => OcfCode::Unimplemented,
            4 => OcfCode::ErrPerm,
            5 => OcfCode::ErrInstalled,
            6 => OcfCode::ErrConfigured,
            7 => OcfCode::NotRunning,
            8 => OcfCode::RunningPromoted,
            9 => OcfCode::FailedPromoted,
            n => OcfCode::Other(n),
        }
    }

    pub fn code(self) -> i32 {
        match self {
            OcfCode::Success => 0,
            OcfCode::ErrGeneric => 1,
            OcfCode::ErrArgs => 2,
            OcfCode::Unimplemented => 3,
            OcfCode::ErrPerm => 4,
            OcfCode::ErrInstalled => 5,
            OcfCode::ErrConfigured => 6,
            OcfCode::NotRunning => 7,
            OcfCode::RunningPromoted => 8,
            OcfCode::FailedPromoted => 9,
            OcfCode::Other(n) => n,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OcfCode::Success => "OCF_SUCCESS",
            OcfCode::ErrGeneric => "OCF_ERR_GENERIC",
            OcfCode::ErrArgs => "OCF_ERR_ARGS",
            OcfCode::Unimplemented => "OCF_ERR_UNIMPLEMENTED",
            OcfCode::ErrPerm => "OCF_ERR_PERM",
            OcfCode::ErrInstalled => "OCF_ERR_INSTALLED",
            OcfCode::ErrConfigured => "OCF_ERR_CONFIGURED",
            OcfCode::NotRunning => "OCF_NOT_RUNNING",
            OcfCode::RunningPromoted => "OCF_RUNNING_PROMOTED",
            OcfCode::FailedPromoted => "OCF_FAILED_PROMOTED",
            OcfCode::Other(_) => "unknown OCF code",
        }
    }
}

impl fmt::Display for OcfCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// The actions baton runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Start,
    Stop,
    Monitor,
    MetaData,
    ValidateAll,
    /// The supervised foreground process of a command resource.
    Daemon,
    /// Action functions of S1.13 run through [`run_hook`].
    Notify,
    Recovery,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Monitor => "monitor",
            Action::MetaData => "meta-data",
            Action::ValidateAll => "validate-all",
            Action::Daemon => "daemon",
            Action::Notify => "notify",
            Action::Recovery => "recovery",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use super::monitor::{MonitorEvent, MonitorStatus};

fn tail_suffix(s: &str) -> String {
    if s.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", s.trim())
    }
}

fn ocf_suffix(o: &Option<OcfCode>) -> String {
    o.map(|c| format!(" ({})", c.name())).unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("resource {resource}: {action} failed with exit code {code}{}{}", ocf_suffix(.ocf), tail_suffix(.stderr))]
    Exit { resource: String, action: Action, code: i32, ocf: Option<OcfCode>, stderr: String },
    #[error("resource {resource}: {action} was killed by signal {signal}{}", tail_suffix(.stderr))]
    Signal { resource: String, action: Action, signal: i32, stderr: String },
    #[error("resource {resource}: {action} timed out after {timeout_ms} ms (its process group was killed){}", tail_suffix(.stderr))]
    Timeout { resource: String, action: Action, timeout_ms: u64, stderr: String },
    #[error("resource {resource}: cannot run {action}: {source}")]
    Spawn {
        resource: String,
        action: Action,
        #[source]
        source: std::io::Error,
    },
    #[error("resource {resource}: {what} is not installed ({path})")]
    NotInstalled { resource: String, what: String, path: PathBuf },
    #[error("resource {resource}: agent {agent} requires {}: add {} to `params`", plural_params(.params), if .params.len() == 1 { "it" } else { "them" })]
    MissingParams { resource: String, agent: String, params: Vec<String> },
    #[error("resource {resource}: {reason}")]
    Invalid { resource: String, reason: String },
    /// A systemd job (D-Bus) that did not end `done`, or a failed call.
    #[error("resource {resource}: {action} of systemd unit {unit} failed: {source}")]
    Job {
        resource: String,
        action: Action,
        unit: String,
        #[source]
        source: crate::services::sdbus::JobError,
    },
    /// The OCF agent's `meta-data` output does not parse.
    #[error("resource {resource}: meta-data: {source}")]
    MetaData {
        resource: String,
        #[source]
        source: MetaDataError,
    },
}

fn plural_params(p: &[String]) -> String {
    let list = p.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(", ");
    if p.len() == 1 {
        format!("parameter {list}")
    } else {
        format!("parameters {list}")
    }
}

impl ResourceError {
    /// The resource the error is about.
    pub fn resource(&self) -> &str {
        match self {
            ResourceError::Exit { resource, .. }
            | ResourceError::Signal { resource, .. }
            | ResourceError::Timeout { resource, .. }
            | ResourceError::Spawn { resource, .. }
            | ResourceError::NotInstalled { resource, .. }
            | ResourceError::MissingParams { resource, .. }
            | ResourceError::Invalid { resource, .. }
            | ResourceError::Job { resource, .. }
            | ResourceError::MetaData { resource, .. } => resource,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, ResourceError::Timeout { .. })
    }
}

/// The finished run of one action.
#[derive(Clone, Debug)]
pub struct ActionOutput {
    pub status: ExitStatus,
    /// The last lines of stdout / stderr.
    pub stdout: String,
    pub stderr: String,
}

impl ActionOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

// --------------------------------------------------------------- processes

/// Kills a process group on drop unless disarmed: a cancelled action (its
/// future dropped) leaves nothing running.
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        }
    }
}

type Tail = Arc<Mutex<VecDeque<String>>>;

fn spawn_reader<R: AsyncRead + Unpin + Send + 'static>(
    pipe: Option<R>,
    resource: String,
    action: Action,
    stream: &'static str,
    tail: Tail,
) -> Option<JoinHandle<()>> {
    let pipe = pipe?;
    Some(tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if action == Action::Monitor || action == Action::MetaData {
                debug!(resource = %resource, action = %action, stream, "{line}");
            } else {
                info!(resource = %resource, action = %action, stream, "{line}");
            }
            let mut t = tail.lock().expect("tail lock");
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    }))
}

fn tail_text(t: &Tail) -> String {
    t.lock().expect("tail lock").iter().cloned().collect::<Vec<_>>().join("\n")
}

/// Runs `program args` with extra environment, in a new process group, with
/// a timeout. Any exit is `Ok`; a timeout kills the group and is `Err`.
/// `stdout_full` keeps all of stdout (meta-data), not only its tail.
async fn run_process(
    resource: &str,
    action: Action,
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<ActionOutput, ResourceError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let spawn_err = |source| ResourceError::Spawn { resource: resource.to_string(), action, source };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let pgid = child.id().expect("a child just spawned has a pid") as i32;
    let mut guard = GroupGuard { pgid, armed: true };
    debug!(resource, action = %action, pid = pgid, "running {program} {}", args.join(" "));
    let (out_tail, err_tail): (Tail, Tail) = Default::default();
    // meta-data output is the payload: keep it all.
    let full: Tail = Default::default();
    let out_task = if action == Action::MetaData {
        let pipe = child.stdout.take();
        let full = full.clone();
        pipe.map(|p| {
            tokio::spawn(async move {
                let mut lines = BufReader::new(p).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    full.lock().expect("tail lock").push_back(line);
                }
            })
        })
    } else {
        spawn_reader(child.stdout.take(), resource.to_string(), action, "stdout", out_tail.clone())
    };
    let err_task = spawn_reader(child.stderr.take(), resource.to_string(), action, "stderr", err_tail.clone());

    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let status = match waited {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => return Err(spawn_err(e)),
        Err(_) => {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            let _ = child.wait().await;
            None
        }
    };
    guard.armed = false;
    for t in [out_task, err_task].into_iter().flatten() {
        let abort = t.abort_handle();
        if tokio::time::timeout(DRAIN_GRACE, t).await.is_err() {
            abort.abort();
        }
    }
    let stderr = tail_text(&err_tail);
    match status {
        None => {
            warn!(resource, action = %action, "timed out after {} ms; process group {pgid} killed", timeout.as_millis());
            Err(ResourceError::Timeout { resource: resource.to_string(), action, timeout_ms: timeout.as_millis() as u64, stderr })
        }
        Some(status) => {
            let stdout = if action == Action::MetaData { tail_text(&full) } else { tail_text(&out_tail) };
            debug!(resource, action = %action, "exited: {status}");
            Ok(ActionOutput { status, stdout, stderr })
        }
    }
}

fn sh_args(line: &str) -> [&str; 2] {
    ["-c", line]
}

/// Runs an action function (S1.13: notify, recovery) or any command line
/// with `/bin/sh -c`, extra environment (the IN parameters) and a timeout.
/// Exit 0 is success.
pub async fn run_hook(
    resource: &str,
    action: Action,
    line: &str,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<ActionOutput, ResourceError> {
    let out = run_process(resource, action, "/bin/sh", &sh_args(line), env, timeout).await?;
    check_exit(resource, action, out, false)
}

fn check_exit(resource: &str, action: Action, out: ActionOutput, ocf: bool) -> Result<ActionOutput, ResourceError> {
    match (out.status.code(), out.status.signal()) {
        (Some(0), _) => Ok(out),
        (Some(code), _) => Err(ResourceError::Exit {
            resource: resource.into(),
            action,
            code,
            ocf: ocf.then(|| OcfCode::from_exit(code)),
            stderr: out.stderr,
        }),
        (None, Some(signal)) => Err(ResourceError::Signal { resource: resource.into(), action, signal, stderr: out.stderr }),
        (None, None) => Err(ResourceError::Invalid { resource: resource.into(), reason: format!("{action}: unknown exit status") }),
    }
}

// ------------------------------------------------------------------ daemon

struct Daemon {
    pgid: i32,
    /// Set before baton stops it: its exit is then expected.
    stopping: Arc<AtomicBool>,
    /// `Some(description)` once it exited.
    exited: watch::Receiver<Option<String>>,
}

fn describe_status(s: &ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended ({s})"),
    }
}

// ---------------------------------------------------------------- resource

/// An application or monitor, ready to run.
pub struct Resource {
    spec: ResourceSpec,
    ocf_root: PathBuf,
    started: AtomicBool,
    daemon: tokio::sync::Mutex<Option<Daemon>>,
    events: Mutex<Option<mpsc::Sender<MonitorEvent>>>,
    /// A systemd unit's state watcher (D-Bus) while baton has it started,
    /// and whether it still reports.
    unit_watch: Mutex<Option<(JoinHandle<()>, Arc<AtomicBool>)>>,
}

impl Drop for Resource {
    /// A removed group's unit watcher stops with it.
    fn drop(&mut self) {
        self.unwatch_unit();
    }
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl Resource {
    pub fn from_spec(spec: &ResourceSpec) -> Self {
        Resource {
            spec: spec.clone(),
            ocf_root: PathBuf::from(OCF_ROOT),
            started: AtomicBool::new(false),
            daemon: tokio::sync::Mutex::new(None),
            events: Mutex::new(None),
            unit_watch: Mutex::new(None),
        }
    }

    /// Where daemon exits (and nothing else) are reported.
    pub fn with_events(self, tx: mpsc::Sender<MonitorEvent>) -> Self {
        *self.events.lock().expect("events lock") = Some(tx);
        self
    }

    /// Another OCF root than `/usr/lib/ocf` (tests, custom installs).
    pub fn with_ocf_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.ocf_root = root.into();
        self
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &ResourceSpec {
        &self.spec
    }

    /// The agent's path for an OCF resource.
    pub fn ocf_path(&self) -> Option<PathBuf> {
        match &self.spec.kind {
            ResourceKind::Ocf { provider, agent, .. } => Some(crate::config::groups::ocf_agent_path(&self.ocf_root, provider, agent)),
            _ => None,
        }
    }

    /// The environment an OCF agent gets, as Pacemaker's executor sets it.
    pub fn ocf_env(&self, timeout: Duration, interval_ms: u32) -> Vec<(String, String)> {
        let ResourceKind::Ocf { provider, agent, params } = &self.spec.kind else { return Vec::new() };
        let root = self.ocf_root.display().to_string();
        let mut env = vec![
            ("OCF_ROOT".to_string(), root.clone()),
            ("OCF_FUNCTIONS_DIR".to_string(), format!("{root}/lib/heartbeat")),
            ("OCF_RA_VERSION_MAJOR".to_string(), "1".to_string()),
            ("OCF_RA_VERSION_MINOR".to_string(), "1".to_string()),
            ("OCF_RESOURCE_INSTANCE".to_string(), self.spec.group.clone()),
            ("OCF_RESOURCE_TYPE".to_string(), agent.clone()),
            ("OCF_RESOURCE_PROVIDER".to_string(), provider.clone()),
            ("OCF_RESKEY_CRM_meta_timeout".to_string(), timeout.as_millis().to_string()),
            ("OCF_RESKEY_CRM_meta_interval".to_string(), interval_ms.to_string()),
            // ocf-shellfuncs: no syslog facility and no log file = log to
            // stderr, which baton forwards to its own log.
            ("HA_LOGFACILITY".to_string(), "none".to_string()),
            ("HA_debug".to_string(), "0".to_string()),
        ];
        if let Ok(path) = std::env::var("PATH") {
            // Agents call `ip`, `ss` and friends from sbin.
            if !path.split(':').any(|p| p == "/usr/sbin" || p == "/sbin") {
                env.push(("PATH".to_string(), format!("{path}:/usr/sbin:/sbin")));
            }
        }
        for (k, v) in params {
            env.push((format!("OCF_RESKEY_{k}"), v.clone()));
        }
        env
    }

    async fn ocf(&self, action: Action, timeout: Duration) -> Result<ActionOutput, ResourceError> {
        let path = self.ocf_path().expect("an OCF resource");
        let program = path.to_string_lossy().into_owned();
        let interval = if action == Action::Monitor { self.spec.interval_ms.unwrap_or(0) } else { 0 };
        let env = self.ocf_env(timeout, interval);
        run_process(&self.spec.name, action, &program, &[action.as_str()], &env, timeout).await
    }

    async fn sh(&self, action: Action, line: &str, timeout: Duration) -> Result<ActionOutput, ResourceError> {
        let env = [("BATON_RESOURCE".to_string(), self.spec.name.clone()), ("BATON_GROUP".to_string(), self.spec.group.clone())];
        run_process(&self.spec.name, action, "/bin/sh", &sh_args(line), &env, timeout).await
    }

    async fn systemctl(&self, args: &[&str], action: Action, timeout: Duration) -> Result<ActionOutput, ResourceError> {
        let mut a = vec!["--no-ask-password"];
        a.extend_from_slice(args);
        run_process(&self.spec.name, action, "systemctl", &a, &[], timeout).await
    }

    fn ms(ms: u32) -> Duration {
        Duration::from_millis(ms as u64)
    }

    /// Starts the resource. Success only when the start action succeeded
    /// (and, for a daemon, it was spawned). Starting a running resource is a
    /// success, as in OCF.
    pub async fn start(&self) -> Result<(), ResourceError> {
        let name = self.spec.name.as_str();
        let t = Self::ms(self.spec.timeouts.start_ms);
        info!(resource = name, "starting");
        match &self.spec.kind {
            ResourceKind::Command { start, daemon, .. } => {
                if let Some(line) = start {
                    check_exit(name, Action::Start, self.sh(Action::Start, line, t).await?, false)?;
                }
                if let Some(line) = daemon {
                    self.spawn_daemon(line).await?;
                }
            }
            ResourceKind::Ocf { .. } => {
                check_exit(name, Action::Start, self.ocf(Action::Start, t).await?, true)?;
            }
            ResourceKind::Systemd { unit } => match crate::services::sdbus::get().await {
                Some(sd) => {
                    self.unwatch_unit();
                    sd.job(unit, crate::services::sdbus::Verb::Start, t).await.map_err(|e| ResourceError::Job {
                        resource: name.into(),
                        action: Action::Start,
                        unit: unit.clone(),
                        source: e,
                    })?;
                    self.watch_unit(&sd, unit).await;
                }
                None => {
                    check_exit(name, Action::Start, self.systemctl(&["start", unit], Action::Start, t).await?, false)?;
                }
            },
        }
        self.started.store(true, Ordering::SeqCst);
        info!(resource = name, "started");
        Ok(())
    }

    /// Stops the resource. For OCF, "not running" from stop is a success (as
    /// in Pacemaker).
    pub async fn stop(&self) -> Result<(), ResourceError> {
        let name = self.spec.name.as_str();
        let t = Self::ms(self.spec.timeouts.stop_ms);
        info!(resource = name, "stopping");
        self.started.store(false, Ordering::SeqCst);
        match &self.spec.kind {
            ResourceKind::Command { stop, .. } => {
                self.stop_daemon(t).await;
                if let Some(line) = stop {
                    check_exit(name, Action::Stop, self.sh(Action::Stop, line, t).await?, false)?;
                }
            }
            ResourceKind::Ocf { .. } => {
                let out = self.ocf(Action::Stop, t).await?;
                if out.code() != Some(OcfCode::NotRunning.code()) {
                    check_exit(name, Action::Stop, out, true)?;
                }
            }
            ResourceKind::Systemd { unit } => {
                self.unwatch_unit();
                match crate::services::sdbus::get().await {
                    Some(sd) => sd.job(unit, crate::services::sdbus::Verb::Stop, t).await.map_err(|e| ResourceError::Job {
                        resource: name.into(),
                        action: Action::Stop,
                        unit: unit.clone(),
                        source: e,
                    })?,
                    None => {
                        check_exit(name, Action::Stop, self.systemctl(&["stop", unit], Action::Stop, t).await?, false)?;
                    }
                }
            }
        }
        info!(resource = name, "stopped");
        Ok(())
    }

    /// Runs the monitor action once.
    pub async fn monitor(&self) -> MonitorStatus {
        let t = Self::ms(self.spec.timeouts.monitor_ms);
        let failed = |e: ResourceError| MonitorStatus::Failed { reason: e.to_string() };
        match &self.spec.kind {
            ResourceKind::Command { monitor, daemon, .. } => {
                if daemon.is_some() {
                    let d = self.daemon.lock().await;
                    match d.as_ref().map(|d| d.exited.borrow().clone()) {
                        None => return MonitorStatus::NotRunning,
                        Some(Some(how)) => {
                            return if d.as_ref().is_some_and(|d| d.stopping.load(Ordering::SeqCst)) {
                                MonitorStatus::NotRunning
                            } else {
                                MonitorStatus::Failed { reason: format!("daemon {how}") }
                            }
                        }
                        Some(None) => {}
                    }
                }
                match monitor {
                    Some(line) => match self.sh(Action::Monitor, line, t).await {
                        Err(e) => failed(e),
                        Ok(out) => match out.code() {
                            Some(0) => MonitorStatus::Running,
                            Some(7) => MonitorStatus::NotRunning,
                            _ => failed(check_exit(&self.spec.name, Action::Monitor, out, false).expect_err("not 0")),
                        },
                    },
                    None if daemon.is_some() || self.started.load(Ordering::SeqCst) => MonitorStatus::Running,
                    None => MonitorStatus::NotRunning,
                }
            }
            ResourceKind::Ocf { .. } => match self.ocf(Action::Monitor, t).await {
                Err(e) => failed(e),
                Ok(out) => match out.code().map(OcfCode::from_exit) {
                    Some(OcfCode::Success) | Some(OcfCode::RunningPromoted) => MonitorStatus::Running,
                    Some(OcfCode::NotRunning) => MonitorStatus::NotRunning,
                    _ => failed(check_exit(&self.spec.name, Action::Monitor, out, true).expect_err("not 0")),
                },
            },
            ResourceKind::Systemd { unit } => match crate::services::sdbus::get().await {
                Some(sd) => match sd.active_state(unit).await {
                    Ok(state) => systemd_state(&state),
                    Err(e) => MonitorStatus::Failed { reason: format!("systemd unit {unit}: {e}") },
                },
                None => match self.systemctl(&["is-active", unit], Action::Monitor, t).await {
                    Err(e) => failed(e),
                    Ok(out) => systemd_state(out.stdout.lines().last().unwrap_or("").trim()),
                },
            },
        }
    }

    /// Checks what can be checked without starting anything: the OCF agent
    /// is installed and every parameter its meta-data marks required is
    /// given; `systemctl` is there for a unit; `/bin/sh` for commands.
    pub async fn validate(&self) -> Result<(), ResourceError> {
        let name = self.spec.name.clone();
        match &self.spec.kind {
            ResourceKind::Command { .. } => {
                if !Path::new("/bin/sh").exists() {
                    return Err(ResourceError::NotInstalled { resource: name, what: "the shell".into(), path: "/bin/sh".into() });
                }
            }
            ResourceKind::Systemd { unit } => {
                if let Some(sd) = crate::services::sdbus::get().await {
                    if let Some(state) = sd.load_state(unit).await {
                        if state == "not-found" {
                            return Err(ResourceError::NotInstalled { resource: name, what: format!("systemd unit {unit}"), path: PathBuf::from(unit) });
                        }
                    }
                } else if find_in_path("systemctl").is_none() {
                    return Err(ResourceError::NotInstalled { resource: name, what: "systemctl".into(), path: "systemctl".into() });
                }
            }
            ResourceKind::Ocf { provider, agent, params } => {
                let path = self.ocf_path().expect("ocf");
                if !is_executable(&path) {
                    return Err(ResourceError::NotInstalled {
                        resource: name,
                        what: format!("OCF agent ocf:{provider}:{agent}"),
                        path,
                    });
                }
                let md = self.meta_data().await?;
                let missing: Vec<String> =
                    md.parameters.iter().filter(|p| p.required && !params.contains_key(&p.name)).map(|p| p.name.clone()).collect();
                if !missing.is_empty() {
                    return Err(ResourceError::MissingParams { resource: name, agent: format!("ocf:{provider}:{agent}"), params: missing });
                }
                for k in params.keys() {
                    if !md.parameters.iter().any(|p| &p.name == k) {
                        warn!(resource = %name, "parameter {k:?} is not in the meta-data of ocf:{provider}:{agent}");
                    }
                }
            }
        }
        Ok(())
    }

    /// The OCF `validate-all` action (a no-op for other kinds).
    pub async fn validate_all(&self) -> Result<(), ResourceError> {
        if let ResourceKind::Ocf { .. } = &self.spec.kind {
            let t = Self::ms(self.spec.timeouts.start_ms);
            check_exit(&self.spec.name, Action::ValidateAll, self.ocf(Action::ValidateAll, t).await?, true)?;
        }
        Ok(())
    }

    /// The OCF agent's meta-data.
    pub async fn meta_data(&self) -> Result<OcfMetaData, ResourceError> {
        let name = self.spec.name.as_str();
        if self.ocf_path().is_none() {
            return Err(ResourceError::Invalid { resource: name.into(), reason: "meta-data is an OCF action".into() });
        }
        let out = check_exit(name, Action::MetaData, self.ocf(Action::MetaData, META_DATA_TIMEOUT).await?, true)?;
        OcfMetaData::parse(&out.stdout).map_err(|source| ResourceError::MetaData { resource: name.into(), source })
    }

    /// Whether a supervised daemon is alive (false for other kinds).
    pub async fn daemon_alive(&self) -> bool {
        self.daemon.lock().await.as_ref().is_some_and(|d| d.exited.borrow().is_none())
    }

    /// Process group of the running daemon.
    pub async fn daemon_pgid(&self) -> Option<i32> {
        self.daemon.lock().await.as_ref().filter(|d| d.exited.borrow().is_none()).map(|d| d.pgid)
    }

    /// Follows a started unit's state: `failed` or `inactive` while baton
    /// has it started is reported at once as a [`MonitorEvent::Failed`].
    async fn watch_unit(&self, sd: &crate::services::sdbus::Systemd, unit: &str) {
        let Some(tx) = self.events.lock().expect("events lock").clone() else { return };
        let armed = Arc::new(AtomicBool::new(true));
        let (a, name, u) = (armed.clone(), self.spec.name.clone(), unit.to_string());
        let judge = move |state: &str| -> Option<MonitorEvent> {
            if !a.load(Ordering::SeqCst) || !matches!(state, "failed" | "inactive") {
                return None;
            }
            warn!(resource = %name, unit = %u, "systemd unit is {state} (PropertiesChanged)");
            Some(MonitorEvent::Failed { resource: name.clone(), reason: format!("systemd unit {u} is {state}") })
        };
        match sd.watch(unit, tx, judge).await {
            Ok(h) => *self.unit_watch.lock().expect("unit watch lock") = Some((h, armed)),
            Err(e) => warn!(resource = %self.spec.name, unit, "cannot follow the unit's state over D-Bus ({e}): only its monitor runs"),
        }
    }

    fn unwatch_unit(&self) {
        if let Some((h, armed)) = self.unit_watch.lock().expect("unit watch lock").take() {
            armed.store(false, Ordering::SeqCst);
            h.abort();
        }
    }

    async fn spawn_daemon(&self, line: &str) -> Result<(), ResourceError> {
        let name = self.spec.name.clone();
        let mut slot = self.daemon.lock().await;
        if let Some(d) = slot.as_ref() {
            if d.exited.borrow().is_none() && !d.stopping.load(Ordering::SeqCst) {
                return Ok(()); // already running
            }
        }
        let mut cmd = Command::new("/bin/sh");
        cmd.args(sh_args(line))
            .env("BATON_RESOURCE", &name)
            .env("BATON_GROUP", &self.spec.group)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| ResourceError::Spawn { resource: name.clone(), action: Action::Daemon, source })?;
        let pgid = child.id().expect("a child just spawned has a pid") as i32;
        info!(resource = %name, pid = pgid, "daemon spawned: {line}");
        let (out_tail, err_tail): (Tail, Tail) = Default::default();
        spawn_reader(child.stdout.take(), name.clone(), Action::Daemon, "stdout", out_tail);
        spawn_reader(child.stderr.take(), name.clone(), Action::Daemon, "stderr", err_tail.clone());
        let stopping = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(None);
        let events = self.events.lock().expect("events lock").clone();
        let st = stopping.clone();
        tokio::spawn(async move {
            let how = match child.wait().await {
                Ok(s) => describe_status(&s),
                Err(e) => format!("could not be waited for: {e}"),
            };
            if st.load(Ordering::SeqCst) {
                info!(resource = %name, pid = pgid, "daemon {how} (stopped)");
            } else {
                // Give its last words a moment to reach the log.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let reason = format!("daemon {how}{}", tail_suffix(&tail_text(&err_tail)));
                warn!(resource = %name, pid = pgid, "unexpected exit: {reason}");
                if let Some(tx) = events {
                    let _ = tx.send(MonitorEvent::Failed { resource: name.clone(), reason }).await;
                }
            }
            crate::services::lease::app_ended(pgid);
            let _ = tx.send(Some(how));
        });
        // Frozen at once while the address lease is lost (lease.rs).
        crate::services::lease::app_started(pgid);
        *slot = Some(Daemon { pgid, stopping, exited: rx });
        Ok(())
    }

    /// SIGTERM to the daemon's process group, SIGKILL when `timeout` passed
    /// and anything of the group is left.
    async fn stop_daemon(&self, timeout: Duration) {
        let mut slot = self.daemon.lock().await;
        let Some(d) = slot.take() else { return };
        d.stopping.store(true, Ordering::SeqCst);
        let pg = Pid::from_raw(d.pgid);
        if crate::services::lease::apps_frozen() {
            // Frozen by a lost address lease: it must not run again, not
            // even to handle a SIGTERM (docs/addresses.md).
            let _ = killpg(pg, Signal::SIGKILL);
        } else {
            let _ = killpg(pg, Signal::SIGTERM);
            // A daemon frozen (SIGSTOP) by a lease lost just now must run to end.
            let _ = killpg(pg, Signal::SIGCONT);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut exited = d.exited.clone();
        // The leader first, then any other member of the group.
        let _ = tokio::time::timeout_at(deadline, exited.wait_for(|e| e.is_some())).await;
        while group_alive(d.pgid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if group_alive(d.pgid) {
            warn!(resource = %self.spec.name, pgid = d.pgid, "daemon still running {} ms after SIGTERM: SIGKILL", timeout.as_millis());
            let _ = killpg(pg, Signal::SIGKILL);
            let _ = exited.wait_for(|e| e.is_some()).await;
            // Other members die as fast as the kernel delivers the signal.
            let until = tokio::time::Instant::now() + Duration::from_secs(1);
            while group_alive(d.pgid) && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Whether any process of group `pgid` is alive (zombies do not count:
/// orphans are reaped by init, which may be slow in containers).
pub fn group_alive(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return killpg(Pid::from_raw(pgid), None).is_ok() };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat")) else { continue };
        // pid (comm) state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let mut f = rest.split_whitespace();
        let (state, _ppid, pgrp) = (f.next(), f.next(), f.next());
        if pgrp.and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && !matches!(state, Some("Z") | Some("X")) {
            return true;
        }
    }
    false
}

fn systemd_state(state: &str) -> MonitorStatus {
    match state {
        "active" | "reloading" => MonitorStatus::Running,
        "inactive" | "unknown" | "" => MonitorStatus::NotRunning,
        other => MonitorStatus::Failed { reason: format!("systemd unit is {other}") },
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn find_in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path.split(':').chain(["/usr/bin", "/bin"]).map(|d| Path::new(d).join(prog)).find(|p| is_executable(p));
    found
}

// --------------------------------------------------------------- meta-data

/// What baton reads from an OCF agent's meta-data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OcfMetaData {
    pub name: String,
    pub parameters: Vec<OcfParameter>,
    /// Action name → advised timeout as written (e.g. "20s").
    pub actions: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcfParameter {
    pub name: String,
    pub required: bool,
    pub unique: bool,
}

/// What is wrong with an OCF agent's `meta-data` output ([`OcfMetaData::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaDataError {
    #[error("unterminated {what}")]
    Unterminated { what: &'static str },
    #[error("a <parameter> without a name")]
    UnnamedParameter,
    #[error("no <resource-agent> element")]
    NoRoot,
}

impl OcfMetaData {
    /// A small parse of the `resource-agent` XML: the `<resource-agent>`
    /// name, each `<parameter>`'s name / required / unique attributes, each
    /// `<action>`'s name and timeout. Comments and CDATA are skipped.
    pub fn parse(xml: &str) -> Result<OcfMetaData, MetaDataError> {
        let mut md = OcfMetaData::default();
        let mut found_root = false;
        let mut rest = xml;
        while let Some(lt) = rest.find('<') {
            rest = &rest[lt..];
            if let Some(r) = rest.strip_prefix("<!--") {
                let end = r.find("-->").ok_or(MetaDataError::Unterminated { what: "comment" })?;
                rest = &r[end + 3..];
                continue;
            }
            if let Some(r) = rest.strip_prefix("<![CDATA[") {
                let end = r.find("]]>").ok_or(MetaDataError::Unterminated { what: "CDATA" })?;
                rest = &r[end + 3..];
                continue;
            }
            let gt = tag_end(rest).ok_or(MetaDataError::Unterminated { what: "tag" })?;
            let tag = &rest[1..gt];
            rest = &rest[gt + 1..];
            let tname: String = tag.chars().take_while(|c| !c.is_whitespace() && *c != '/' && *c != '>').collect();
            let attrs = || attributes(&tag[tname.len()..]);
            match tname.as_str() {
                "resource-agent" => {
                    found_root = true;
                    md.name = attrs().remove("name").unwrap_or_default();
                }
                "parameter" => {
                    let a = attrs();
                    let name = a.get("name").cloned().ok_or(MetaDataError::UnnamedParameter)?;
                    let truthy = |k: &str| a.get(k).is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true") || v == "yes");
                    md.parameters.push(OcfParameter { name, required: truthy("required"), unique: truthy("unique") });
                }
                "action" => {
                    let a = attrs();
                    if let Some(n) = a.get("name") {
                        md.actions.insert(n.clone(), a.get("timeout").cloned().unwrap_or_default());
                    }
                }
                _ => {}
            }
        }
        if !found_root {
            return Err(MetaDataError::NoRoot);
        }
        Ok(md)
    }
}

/// Index of the `>` closing the tag at the start of `s`, outside quotes.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn attributes(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches('/').trim().to_string();
        let after = rest[eq + 1..].trim_start();
        let Some(q) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else { break };
        let Some(end) = after[1..].find(q) else { break };
        let val = &after[1..1 + end];
        let val = val.replace("&quot;", "\"").replace("&apos;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
        out.insert(key.rsplit(char::is_whitespace).next().unwrap_or("").to_string(), val);
        rest = &after[1 + end + 1..];
    }
    out
}

// ------------------------------------------------------------ monitor loop

/// Runs a resource's monitor action every `interval` while enabled, and
/// sends one [`MonitorEvent::Failed`] when `failures` consecutive runs did
/// not find it running (again only after a run that did). The first run is
/// one interval after enabling, so a just-started service has time to come
/// up. Disabling discards a run in progress and resets the count. Dropping
/// the loop stops it.
pub struct MonitorLoop {
    enabled: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MonitorLoop {
    pub fn spawn(resource: Arc<Resource>, interval: Duration, failures: u32, events: mpsc::Sender<MonitorEvent>, enabled: bool) -> Self {
        let (tx, mut rx) = watch::channel(enabled);
        let failures = failures.max(1);
        let task = tokio::spawn(async move {
            'outer: loop {
                // Wait to be enabled.
                while !*rx.borrow_and_update() {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
                let mut streak = 0u32;
                let mut reported = false;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        r = rx.changed() => {
                            if r.is_err() { return; }
                            continue 'outer; // re-enabled or disabled: start over
                        }
                    }
                    let status = tokio::select! {
                        s = resource.monitor() => s,
                        r = rx.changed() => {
                            if r.is_err() { return; }
                            continue 'outer;
                        }
                    };
                    match status {
                        MonitorStatus::Running => {
                            streak = 0;
                            reported = false;
                        }
                        bad => {
                            streak += 1;
                            let reason = match bad {
                                MonitorStatus::NotRunning => "monitor: not running".to_string(),
                                MonitorStatus::Failed { reason } => reason,
                                MonitorStatus::Running => unreachable!(),
                            };
                            debug!(resource = resource.name(), streak, failures, "monitor: {reason}");
                            if streak >= failures && !reported {
                                reported = true;
                                warn!(resource = resource.name(), "monitor failed {streak} time(s) in a row: {reason}");
                                if events.send(MonitorEvent::Failed { resource: resource.name().to_string(), reason }).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        });
        MonitorLoop { enabled: tx, task }
    }

    /// A loop for a spec's own `interval_ms` and `failures` (None if the
    /// spec has no interval).
    pub fn for_resource(resource: Arc<Resource>, events: mpsc::Sender<MonitorEvent>, enabled: bool) -> Option<Self> {
        let interval = Duration::from_millis(resource.spec().interval_ms? as u64);
        let failures = resource.spec().failures;
        Some(Self::spawn(resource, interval, failures, events, enabled))
    }

    pub fn enable(&self) {
        self.enabled.send_replace(true);
    }

    pub fn disable(&self) {
        self.enabled.send_replace(false);
    }

    pub fn is_enabled(&self) -> bool {
        *self.enabled.borrow()
    }
}

impl Drop for MonitorLoop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks the groups against this machine: OCF agents installed, their
/// required parameters given (from the agent's meta-data), `systemctl`
/// present for systemd units. Runs `meta-data` actions, nothing else.
pub async fn check_host(groups: &[crate::config::groups::Group]) -> Vec<crate::config::groups::HostProblem> {
    let mut out = Vec::new();
    for g in groups {
        for spec in g.resources() {
            if let Err(e) = Resource::from_spec(spec).validate().await {
                let kind = match e {
                    ResourceError::NotInstalled { .. } => crate::config::groups::HostProblemKind::NotInstalled,
                    _ => crate::config::groups::HostProblemKind::Invalid,
                };
                out.push(crate::config::groups::HostProblem { group: g.name.clone(), resource: spec.name.clone(), kind, message: e.to_string() });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, kind: ResourceKind) -> ResourceSpec {
        ResourceSpec {
            name: name.into(),
            group: name.into(),
            role: Role::Application,
            kind,
            timeouts: Timeouts::default(),
            interval_ms: None,
            failures: 1,
        }
    }

    fn cmd(start: Option<&str>, stop: Option<&str>, monitor: Option<&str>, daemon: Option<&str>) -> ResourceKind {
        ResourceKind::Command {
            start: start.map(Into::into),
            stop: stop.map(Into::into),
            monitor: monitor.map(Into::into),
            daemon: daemon.map(Into::into),
        }
    }

    fn tmpdir(tag: &str) -> PathBuf {
        crate::test_util::fresh_dir(&format!("res-{tag}"))
    }

    fn pid_alive(pid: i32) -> bool {
        // A zombie still answers kill(0); look at /proc state instead.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
            Err(_) => false,
        }
    }

    /// Requires resource-agents; in CI (CI=true) its absence is a failure.
    fn ocf_available() -> bool {
        let ok = Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").exists();
        if !ok {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("Debian package resource-agents is not installed (/usr/lib/ocf/resource.d/heartbeat/Dummy missing): `cargo xtask setup` or `apt-get install resource-agents`");
            }
            eprintln!("skipping: resource-agents is not installed");
        }
        ok
    }

    #[tokio::test]
    async fn ocf_dummy_start_monitor_stop() {
        if !ocf_available() {
            return;
        }
        let dir = tmpdir("dummy");
        let state = dir.join("dummy.state");
        let params = BTreeMap::from([("state".to_string(), state.display().to_string())]);
        let r = Resource::from_spec(&spec("dummy", ResourceKind::Ocf { provider: "heartbeat".into(), agent: "Dummy".into(), params }));
        r.validate().await.unwrap();
        let md = r.meta_data().await.unwrap();
        assert_eq!(md.name, "Dummy");
        assert!(md.parameters.iter().any(|p| p.name == "state" && !p.required));
        assert!(md.actions.contains_key("monitor"));
        assert_eq!(r.monitor().await, MonitorStatus::NotRunning);
        r.start().await.unwrap();
        assert!(state.exists());
        assert_eq!(r.monitor().await, MonitorStatus::Running);
        r.validate_all().await.unwrap();
        r.stop().await.unwrap();
        assert!(!state.exists());
        assert_eq!(r.monitor().await, MonitorStatus::NotRunning);
        // stop of a stopped resource is a success.
        r.stop().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn ocf_missing_required_param_and_missing_agent() {
        if !ocf_available() {
            return;
        }
        let r = Resource::from_spec(&spec("anything", ResourceKind::Ocf { provider: "heartbeat".into(), agent: "anything".into(), params: BTreeMap::new() }));
        let e = r.validate().await.unwrap_err();
        assert!(matches!(&e, ResourceError::MissingParams { params, .. } if params == &vec!["binfile".to_string()]), "{e}");
        assert_eq!(e.to_string(), "resource anything: agent ocf:heartbeat:anything requires parameter \"binfile\": add it to `params`");

        let r = Resource::from_spec(&spec("nope", ResourceKind::Ocf { provider: "heartbeat".into(), agent: "NoSuchAgent".into(), params: BTreeMap::new() }));
        let e = r.validate().await.unwrap_err();
        assert!(matches!(e, ResourceError::NotInstalled { .. }), "{e}");
        assert!(e.to_string().contains("/usr/lib/ocf/resource.d/heartbeat/NoSuchAgent"), "{e}");
    }

    #[tokio::test]
    async fn ocf_environment_reaches_the_agent() {
        let dir = tmpdir("ocfenv");
        let prov = dir.join("resource.d/test");
        std::fs::create_dir_all(&prov).unwrap();
        let out = dir.join("env.out");
        let agent = prov.join("Env");
        std::fs::write(
            &agent,
            format!("#!/bin/sh\nenv | grep -E '^(OCF_|HA_LOGFACILITY)' | sort > {}\necho \"action $1\" >&2\ncase $1 in monitor) exit 7;; start) exit 6;; esac\nexit 0\n", out.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        let params = BTreeMap::from([("ip".to_string(), "10.0.0.1".to_string())]);
        let mut s = spec("envtest", ResourceKind::Ocf { provider: "test".into(), agent: "Env".into(), params });
        s.group = "grp".into();
        s.timeouts.start_ms = 1500;
        let r = Resource::from_spec(&s).with_ocf_root(&dir);
        assert_eq!(r.monitor().await, MonitorStatus::NotRunning);
        let e = r.start().await.unwrap_err();
        assert_eq!(e.to_string(), "resource envtest: start failed with exit code 6 (OCF_ERR_CONFIGURED): action start");
        let env = std::fs::read_to_string(&out).unwrap();
        for want in [
            format!("OCF_ROOT={}", dir.display()),
            format!("OCF_FUNCTIONS_DIR={}/lib/heartbeat", dir.display()),
            "OCF_RESOURCE_INSTANCE=grp".into(),
            "OCF_RESOURCE_TYPE=Env".into(),
            "OCF_RESOURCE_PROVIDER=test".into(),
            "OCF_RA_VERSION_MAJOR=1".into(),
            "OCF_RESKEY_ip=10.0.0.1".into(),
            "OCF_RESKEY_CRM_meta_timeout=1500".into(),
            "HA_LOGFACILITY=none".into(),
        ] {
            assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn command_start_stop_monitor() {
        let dir = tmpdir("cmd");
        let f = dir.join("on");
        let f = f.display();
        let r = Resource::from_spec(&spec(
            "cmd",
            cmd(Some(&format!("touch {f}")), Some(&format!("rm -f {f}")), Some(&format!("test -e {f} || exit 7")), None),
        ));
        r.validate().await.unwrap();
        assert_eq!(r.monitor().await, MonitorStatus::NotRunning);
        r.start().await.unwrap();
        assert_eq!(r.monitor().await, MonitorStatus::Running);
        r.stop().await.unwrap();
        assert_eq!(r.monitor().await, MonitorStatus::NotRunning);

        let bad = Resource::from_spec(&spec("bad", cmd(Some("echo oops >&2; exit 3"), None, Some("exit 2"), None)));
        let e = bad.start().await.unwrap_err();
        assert_eq!(e.to_string(), "resource bad: start failed with exit code 3: oops");
        assert!(matches!(e, ResourceError::Exit { code: 3, ocf: None, .. }));
        assert!(matches!(bad.monitor().await, MonitorStatus::Failed { reason } if reason.contains("exit code 2")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn start_timeout_kills_the_process_group() {
        let dir = tmpdir("timeout");
        let pidfile = dir.join("pid");
        // A child in the background too: the whole group must go.
        let line = format!("sleep 5 & echo $$ $! > {}; sleep 5", pidfile.display());
        let mut s = spec("slow", cmd(Some(&line), None, None, None));
        s.timeouts.start_ms = 200;
        let r = Resource::from_spec(&s);
        let t0 = std::time::Instant::now();
        let e = r.start().await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(e.is_timeout(), "{e}");
        assert_eq!(e.to_string(), "resource slow: start timed out after 200 ms (its process group was killed)");
        let pids: Vec<i32> = std::fs::read_to_string(&pidfile).unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect();
        let (pg, bg) = (pids[0], pids[1]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!pid_alive(bg), "background sleep {bg} survived the timeout");
        assert!(!group_alive(pg), "process group {pg} survived the timeout");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn monitor_timeout_is_a_failure() {
        let mut s = spec("slowmon", cmd(Some("true"), None, Some("sleep 5"), None));
        s.timeouts.monitor_ms = 100;
        let r = Resource::from_spec(&s);
        assert!(matches!(r.monitor().await, MonitorStatus::Failed { reason } if reason.contains("timed out after 100 ms")));
    }

    #[tokio::test]
    async fn daemon_supervision() {
        let (tx, mut rx) = mpsc::channel(8);
        let r = Resource::from_spec(&spec("web", cmd(None, None, None, Some("echo hello; exec sleep 30")))).with_events(tx);
        assert_eq!(r.monitor().await, MonitorStatus::NotRunning);
        r.start().await.unwrap();
        assert!(r.daemon_alive().await);
        assert_eq!(r.monitor().await, MonitorStatus::Running);
        // Starting again is a success and does not spawn a second one.
        let pgid = r.daemon_pgid().await.unwrap();
        r.start().await.unwrap();
        assert_eq!(r.daemon_pgid().await, Some(pgid));

        // Kill it behind baton's back: a failure event.
        killpg(Pid::from_raw(pgid), Signal::SIGKILL).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        let MonitorEvent::Failed { resource, reason } = ev;
        assert_eq!(resource, "web");
        assert_eq!(reason, "daemon was killed by signal 9");
        assert!(matches!(r.monitor().await, MonitorStatus::Failed { reason } if reason.contains("killed by signal 9")));

        // Restart, then a graceful stop: no event, nothing left.
        r.start().await.unwrap();
        let pgid = r.daemon_pgid().await.unwrap();
        r.stop().await.unwrap();
        assert!(!pid_alive(pgid));
        assert_eq!(r.monitor().await, MonitorStatus::NotRunning);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "a requested stop is not a failure");
    }

    #[tokio::test]
    async fn daemon_ignoring_sigterm_is_killed_after_the_stop_timeout() {
        let mut s = spec("stubborn", cmd(None, Some("true"), None, Some("trap '' TERM; while :; do sleep 0.05; done")));
        s.timeouts.stop_ms = 300;
        let r = Resource::from_spec(&s);
        r.start().await.unwrap();
        let pgid = r.daemon_pgid().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = std::time::Instant::now();
        r.stop().await.unwrap();
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(3), "{took:?}");
        assert!(!group_alive(pgid), "process group {pgid} survived");
    }

    #[tokio::test]
    async fn monitor_loop_reports_after_consecutive_failures_and_can_be_disabled() {
        let dir = tmpdir("loop");
        let f = dir.join("up");
        std::fs::write(&f, "").unwrap();
        let r = Arc::new(Resource::from_spec(&spec("svc", cmd(Some("true"), None, Some(&format!("test -e {}", f.display())), None))));
        let (tx, mut rx) = mpsc::channel(8);
        let lp = MonitorLoop::spawn(r.clone(), Duration::from_millis(30), 3, tx, true);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(rx.try_recv().is_err(), "healthy: no event");
        std::fs::remove_file(&f).unwrap();
        let t0 = std::time::Instant::now();
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        // The first failing run may already be in flight: two more intervals.
        assert!(t0.elapsed() >= Duration::from_millis(55), "3 failures 30 ms apart came too soon: {:?}", t0.elapsed());
        assert!(matches!(&ev, MonitorEvent::Failed { resource, reason } if resource == "svc" && reason.contains("exit code 1")), "{ev:?}");
        // Reported once per failure streak.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err());
        // Disabled: nothing runs, nothing is reported.
        lp.disable();
        assert!(!lp.is_enabled());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err());
        // Enabled again: a fresh streak is reported.
        lp.enable();
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert!(matches!(ev, MonitorEvent::Failed { .. }));
        drop(lp);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn hooks_get_their_environment() {
        let out = run_hook("web", Action::Notify, "echo \"$ROLE\"", &[("ROLE".into(), "up".into())], Duration::from_secs(5)).await.unwrap();
        assert_eq!(out.stdout, "up");
        let e = run_hook("web", Action::Recovery, "exit 4", &[], Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.to_string(), "resource web: recovery failed with exit code 4");
    }

    #[test]
    fn codes_and_states() {
        for c in 0..=10 {
            assert_eq!(OcfCode::from_exit(c).code(), c);
        }
        assert_eq!(OcfCode::from_exit(7).to_string(), "OCF_NOT_RUNNING (7)");
        assert_eq!(systemd_state("active"), MonitorStatus::Running);
        assert_eq!(systemd_state("inactive"), MonitorStatus::NotRunning);
        assert!(matches!(systemd_state("failed"), MonitorStatus::Failed { .. }));
        assert!(matches!(systemd_state("activating"), MonitorStatus::Failed { .. }));
    }

    #[test]
    fn meta_data_parse() {
        let xml = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="IPaddr2" version="1.0">
<!-- <parameter name="commented" required="1"/> -->
<parameters>
<parameter name="ip" unique="1" required="1">
<longdesc lang="en">a > b</longdesc>
<content type="string" default="" />
</parameter>
<parameter name='nic' required='0'>
<content type="string" default="${OCF_RESKEY_nic_default}"/>
</parameter>
</parameters>
<actions>
<action name="start"   timeout="20s" />
<action name="monitor" timeout="20s" interval="10s" depth="0" />
</actions>
</resource-agent>"#;
        let md = OcfMetaData::parse(xml).unwrap();
        assert_eq!(md.name, "IPaddr2");
        assert_eq!(
            md.parameters,
            vec![
                OcfParameter { name: "ip".into(), required: true, unique: true },
                OcfParameter { name: "nic".into(), required: false, unique: false },
            ]
        );
        assert_eq!(md.actions.get("monitor").map(String::as_str), Some("20s"));
        assert_eq!(OcfMetaData::parse("usage: foo").unwrap_err().to_string(), "no <resource-agent> element");
        assert_eq!(OcfMetaData::parse("<resource-agent name=\"x\"><!-- open").unwrap_err().to_string(), "unterminated comment");
    }

    /// A meta-data output that does not parse, and a systemd job that
    /// failed, name the resource and keep the cause as `source()`.
    #[test]
    fn resource_errors_keep_their_cause() {
        use std::error::Error as _;
        let e = ResourceError::MetaData { resource: "ip".into(), source: OcfMetaData::parse("usage: foo").unwrap_err() };
        assert_eq!(e.to_string(), "resource ip: meta-data: no <resource-agent> element");
        assert_eq!(e.resource(), "ip");
        assert!(e.source().is_some_and(|s| s.is::<MetaDataError>()));
        let j = crate::services::sdbus::JobError::Result { result: "failed".into(), state: "failed (exit-code)".into() };
        let e = ResourceError::Job { resource: "web".into(), action: Action::Start, unit: "web.service".into(), source: j };
        assert_eq!(e.to_string(), "resource web: start of systemd unit web.service failed: job result \"failed\"; the unit is failed (exit-code)");
        assert!(e.source().is_some());
    }
}
