//! The local subsystem API (S1.2, S1.3, S1.5, S0.1, S0.2): a Unix socket
//! (`<run_dir>/<cluster>-subsys.sock`, mode 0600) through which external
//! programs register a subsystem at a level, receive the transition
//! notifications of the membership core, acknowledge them, report critical
//! local failures, and are told when clustering ends.
//!
//! The protocol (newline-delimited JSON, one object per line, both ways) is
//! documented in `docs/subsystem-api.md`; `examples/subsystem-client.py` is a
//! client. One connection is one subsystem; closing it deregisters.
//!
//! This module is runtime, not protocol: it does not own the membership core.
//! [`SubsysServer::bind`] returns a receiver of [`SubsysEvent`]s that the
//! agent's driver turns into core inputs (`Register`, `Ack`, `LocalFailure`,
//! `Deregister`), and the driver hands the core's `Notify` / `Terminate`
//! actions back with [`SubsysServer::notify`] / [`SubsysServer::terminate`].
//!
//! What the server decides on its own:
//! * validation of every client line (an `error` line names the problem;
//!   the connection stays usable unless the line was unusable as a stream:
//!   longer than [`MAX_LINE`]);
//! * acknowledgements are forwarded only for notifications actually sent and
//!   not acknowledged yet;
//! * the ack timeout (S0): a notification left unacknowledged for longer
//!   than the subsystem's `ack_timeout_ms` is reported once as
//!   [`SubsysEvent::Failure`] with reason `component` (3);
//! * a notification for node X under a new transition id supersedes the
//!   unacknowledged ones of X's previous transition (Table 1: a forced-leave
//!   re-notification aborts the graceful one), which then no longer count for
//!   the timeout; so do notifications of transitions the driver reports over
//!   with [`SubsysServer::retain_transitions`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::membership::{Barriers, Kind, LevelSpec, NodeState, Step, SubsystemId, TransitionId};
use baton_core::NodeId;
use baton_state::StateName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Levels an external subsystem may register at.
pub const LEVEL_MIN: u32 = 1;
pub const LEVEL_MAX: u32 = 65_535;
/// Barriers per transition type a subsystem may ask for (S1.5).
pub const MAX_BARRIERS: u32 = 16;
/// Bounds and default of `ack_timeout_ms`.
pub const ACK_TIMEOUT_MIN_MS: u64 = 10;
pub const ACK_TIMEOUT_MAX_MS: u64 = 3_600_000;
pub const ACK_TIMEOUT_DEFAULT_MS: u64 = 10_000;
/// Longest client line (bytes, without the newline). A longer one closes the connection.
pub const MAX_LINE: usize = 64 * 1024;
/// Connections served at once (more are refused with an error line).
pub const MAX_CONNECTIONS: usize = 64;
/// Longest subsystem name (bytes).
pub const MAX_NAME: usize = 128;
/// Output not yet read by a client, beyond which the client counts as hung
/// (reported as a component failure) and is disconnected.
pub const MAX_BACKLOG: usize = 4 * 1024 * 1024;
/// How long a closing connection may take to flush its last lines.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// Capacity of the event channel returned by [`SubsysServer::bind`].
pub const EVENT_CAPACITY: usize = 1024;

/// S0.1 reasons, as codes (the distress reasons of the wire format).
pub const REASON_COMMUNICATION: u32 = baton_common::DISTRESS_COMMUNICATION;
pub const REASON_PROTOCOL: u32 = baton_common::DISTRESS_PROTOCOL;
pub const REASON_COMPONENT: u32 = baton_common::DISTRESS_COMPONENT;
pub const REASON_CORRUPTION: u32 = baton_common::DISTRESS_CORRUPTION;
pub const REASON_ADMIN: u32 = baton_common::DISTRESS_ADMIN;

/// What a client did, for the driver that owns the membership core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubsysEvent {
    /// Feed `Input::Register { subsystem, spec }`.
    Registered { subsystem: SubsystemId, name: String, spec: LevelSpec, ack_timeout: Duration },
    /// Feed `Input::Ack`. Only for a notification sent and not acknowledged yet.
    Ack { subsystem: SubsystemId, id: TransitionId, step: Step },
    /// Feed `Input::LocalFailure { from: Some(subsystem), reason }`: the client
    /// reported a critical failure (S0.1), or left a notification
    /// unacknowledged beyond its ack timeout (reason 3, component), or stopped
    /// reading its socket. At most once per subsystem.
    Failure { subsystem: SubsystemId, reason: u32 },
    /// Feed `Input::Deregister`. Exactly once after every `Registered`, however
    /// the connection ended (deregister, disconnect, terminate), except after
    /// [`SubsysServer::shutdown`].
    Deregistered { subsystem: SubsystemId },
}

#[derive(Debug, thiserror::Error)]
pub enum SubsysError {
    #[error("cannot create {dir}, the directory of the subsystem socket: {source}")]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("the subsystem socket {path} is in use (is another agent of this cluster running?)")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket: refusing to replace it with the subsystem socket")]
    NotASocket { path: PathBuf },
    #[error("cannot bind the subsystem socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// What is wrong with a client's request line: sent back to the client as
/// `{"error": <text>}` (docs/subsystems.md), the connection stays open.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid UTF-8: {source}")]
    Utf8 {
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("invalid JSON: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("expected a JSON object with an \"op\" field")]
    NotAnObject,
    #[error("missing \"op\" field (register, ack, fail or deregister)")]
    NoOp,
    #[error("\"op\" must be a string, not {found}")]
    OpNotAString { found: serde_json::Value },
    #[error("unknown op {op:?} (expected register, ack, fail or deregister)")]
    UnknownOp { op: String },
    /// The fields of a known op do not fit it.
    #[error("bad {op}: {source}")]
    Fields {
        op: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("already registered as subsystem {subsystem} (one connection is one subsystem)")]
    AlreadyRegistered { subsystem: SubsystemId },
    #[error("bad register: name must be 1 to {max} bytes without control characters")]
    BadName { max: usize },
    #[error("bad register: level {level} out of range ({min}..={max})", min = LEVEL_MIN, max = LEVEL_MAX)]
    LevelOutOfRange { level: u32 },
    #[error("bad register: barriers.{which} = {n} out of range (1..={max})", max = MAX_BARRIERS)]
    BarriersOutOfRange { which: &'static str, n: u32 },
    #[error("bad register: ack_timeout_ms {ms} out of range ({min}..={max})", min = ACK_TIMEOUT_MIN_MS, max = ACK_TIMEOUT_MAX_MS)]
    AckTimeoutOutOfRange { ms: u64 },
    #[error(
        "bad register: level {level} is registered with barriers join {}, leave {}, forced_leave {}; every subsystem at a level must ask for the same",
        registered.join, registered.leave, registered.forced_leave
    )]
    BarriersDiffer { level: u32, registered: Barriers },
    #[error("no subsystem ids left")]
    NoIdsLeft,
    #[error("not registered: send register first")]
    NotRegistered,
    #[error("not registered: nothing to deregister")]
    NothingToDeregister,
    #[error("ack for {step} that was not notified, was superseded, or was already acknowledged")]
    NotNotified { step: String },
    #[error("bad fail: unknown reason {reason:?} (expected communication, protocol, component or corruption)")]
    UnknownReason { reason: String },
}

/// One client line, parsed (see [`parse_request`]).
pub enum ClientRequest {
    Register(RegisterMsg),
    Ack(AckMsg),
    Fail(FailMsg),
    Deregister,
}

/// Parses one client line (without its newline): the whole wire-format
/// check of a request, before anything acts on it. Used by the connections
/// and by the fuzz target `subsys_line`.
pub fn parse_request(line: &[u8]) -> Result<ClientRequest, RequestError> {
    let text = std::str::from_utf8(line).map_err(|source| RequestError::Utf8 { source })?;
    let v: serde_json::Value = serde_json::from_str(text).map_err(|source| RequestError::Json { source })?;
    let op = match v.as_object() {
        None => return Err(RequestError::NotAnObject),
        Some(o) => match o.get("op") {
            None => return Err(RequestError::NoOp),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => return Err(RequestError::OpNotAString { found: other.clone() }),
        },
    };
    match op.as_str() {
        "register" => Ok(ClientRequest::Register(parse("register", v)?)),
        "ack" => Ok(ClientRequest::Ack(parse("ack", v)?)),
        "fail" => Ok(ClientRequest::Fail(parse("fail", v)?)),
        "deregister" => Ok(ClientRequest::Deregister),
        other => Err(RequestError::UnknownOp { op: other.to_string() }),
    }
}

/// From the server handle to one connection's task.
#[derive(Debug)]
enum Cmd {
    Notify { id: TransitionId, step: Step, states: BTreeMap<NodeId, NodeState> },
    Terminate { reason: u32 },
    Retain { live: Arc<BTreeSet<TransitionId>> },
}

struct Shared {
    /// Registered subsystems: the command channel of their connection.
    conns: Mutex<HashMap<SubsystemId, mpsc::UnboundedSender<Cmd>>>,
    next_id: Mutex<Option<SubsystemId>>,
    /// (level, barriers) of the connected external subsystems, with a count:
    /// every subsystem at one level must ask for the same barriers.
    levels: Mutex<BTreeMap<u32, (Barriers, usize)>>,
}

/// The listening subsystem socket and its connections.
pub struct SubsysServer {
    path: PathBuf,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl SubsysServer {
    /// Binds the socket at `path` (mode 0600; the directory is created; a
    /// stale socket nobody listens on is replaced) and starts accepting.
    /// Registered subsystems get ids `first_id`, `first_id + 1`, ...
    /// (never reused while the server runs).
    pub async fn bind(path: &Path, first_id: SubsystemId) -> Result<(SubsysServer, mpsc::Receiver<SubsysEvent>), SubsysError> {
        Self::bind_with(path, first_id, crate::localsock::Access::default()).await
    }

    /// [`SubsysServer::bind`], with who may connect besides root and the
    /// agent's user (`paths.socket_group`: the socket is then 0660 and of
    /// that group). The socket is created with its mode atomically and a
    /// live agent's socket is never replaced (`crate::localsock`).
    pub async fn bind_with(
        path: &Path,
        first_id: SubsystemId,
        access: crate::localsock::Access,
    ) -> Result<(SubsysServer, mpsc::Receiver<SubsysEvent>), SubsysError> {
        use crate::localsock::LocalSockError as L;
        let listener = crate::localsock::bind(path, access).map_err(|e| match e {
            L::CreateDir { dir, source, .. } => SubsysError::CreateDir { dir, source },
            L::InUse { path } => SubsysError::InUse { path },
            L::NotASocket { path } => SubsysError::NotASocket { path },
            L::Create { path, source, .. } => SubsysError::Bind { path, source },
        })?;
        let shared = Arc::new(Shared {
            conns: Mutex::new(HashMap::new()),
            next_id: Mutex::new(Some(first_id)),
            levels: Mutex::new(BTreeMap::new()),
        });
        let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, access, shared.clone(), events_tx, stop_rx));
        info!(path = %path.display(), "subsystem socket listening");
        Ok((SubsysServer { path: path.to_path_buf(), shared, stop, accept }, events_rx))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Delivers a core `Action::Notify` to the subsystem's client (no-op if it is gone).
    pub fn notify(&self, subsystem: SubsystemId, id: TransitionId, step: Step, states: &BTreeMap<NodeId, NodeState>) {
        self.send(subsystem, Cmd::Notify { id, step, states: states.clone() });
    }

    /// Delivers a core `Action::Terminate` (S0.2): the client gets a
    /// `terminate` line, then the connection is closed (no-op if it is gone).
    pub fn terminate(&self, subsystem: SubsystemId, reason: u32) {
        self.send(subsystem, Cmd::Terminate { reason });
    }

    /// Optional: tells every connection which transitions are still in
    /// flight (`ClusterState::transitions`). Unacknowledged notifications of
    /// any other transition stop counting for the ack timeout, and their late
    /// acks are refused. Call it when the core's state changes.
    pub fn retain_transitions(&self, live: &BTreeSet<TransitionId>) {
        let live = Arc::new(live.clone());
        let conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        for tx in conns.values() {
            let _ = tx.send(Cmd::Retain { live: live.clone() });
        }
    }

    /// Ids of the subsystems registered right now.
    pub fn registered(&self) -> BTreeSet<SubsystemId> {
        self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect()
    }

    fn send(&self, subsystem: SubsystemId, cmd: Cmd) {
        let conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        match conns.get(&subsystem) {
            Some(tx) => {
                let _ = tx.send(cmd);
            }
            None => debug!(subsystem, "subsystem gone: {cmd:?} dropped"),
        }
    }

    /// Stops accepting, closes every connection (clients see end of file; no
    /// more events are sent), and removes the socket.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
        let _ = std::fs::remove_file(&self.path);
        info!(path = %self.path.display(), "subsystem socket closed");
    }
}

async fn accept_loop(
    listener: UnixListener,
    access: crate::localsock::Access,
    shared: Arc<Shared>,
    events: mpsc::Sender<SubsysEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    if let Err(why) = access.check(&stream) {
                        warn!("subsystem socket: connection refused: {why}");
                        let line = serde_json::json!({"ev": "error", "message": format!("permission denied: {why}")});
                        let _ = stream.try_write(format!("{line}\n").as_bytes());
                        continue;
                    }
                    if tasks.len() >= MAX_CONNECTIONS {
                        warn!("subsystem socket: {MAX_CONNECTIONS} connections already; refusing one");
                        let _ = stream.try_write(b"{\"ev\":\"error\",\"message\":\"too many connections to the subsystem socket\"}\n");
                        continue;
                    }
                    tasks.spawn(Conn::new(stream, shared.clone(), events.clone(), stop.clone()).run());
                }
                Err(e) => {
                    warn!("subsystem socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    // Connections see the stop signal; give them a moment, then cut them.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(1), drain).await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

// ---------------------------------------------------------------- wire format

// The names of transition kinds and node states on this socket are those
// of the state files and the logs: `baton_state::StateName`.

/// S0.1 reason names accepted from clients in `fail`.
fn reason_from_name(name: &str) -> Option<u32> {
    Some(match name {
        "communication" => REASON_COMMUNICATION,
        "protocol" => REASON_PROTOCOL,
        "component" => REASON_COMPONENT,
        "corruption" => REASON_CORRUPTION,
        _ => return None,
    })
}

/// The name of a reason code in `terminate` (`admin` for an operator's
/// `baton distress admin`; the decimal code for anything else).
pub fn reason_name(code: u32) -> String {
    match code {
        REASON_COMMUNICATION => "communication".into(),
        REASON_PROTOCOL => "protocol".into(),
        REASON_COMPONENT => "component".into(),
        REASON_CORRUPTION => "corruption".into(),
        REASON_ADMIN => "admin".into(),
        baton_common::DISTRESS_FENCED => "fenced".into(),
        n => n.to_string(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WireKind(#[serde(with = "kind_serde")] Kind);

mod kind_serde {
    use super::*;
    pub fn serialize<S: serde::Serializer>(k: &Kind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.as_str())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "forced_leave" => Ok(Kind::ForcedLeave),
            other => Kind::from_name(other)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown transition kind {other:?} (expected join, leave or forced-leave)"))),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct WireId {
    node: NodeId,
    incarnation: u64,
    kind: WireKind,
}

impl From<TransitionId> for WireId {
    fn from(id: TransitionId) -> Self {
        WireId { node: id.node, incarnation: id.incarnation, kind: WireKind(id.kind) }
    }
}

impl From<WireId> for TransitionId {
    fn from(w: WireId) -> Self {
        TransitionId { node: w.node, incarnation: w.incarnation, kind: w.kind.0 }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct WireStep {
    level: u32,
    barrier: u32,
}

#[derive(Serialize)]
#[serde(tag = "ev", rename_all = "lowercase")]
enum Out<'a> {
    Registered { subsystem: SubsystemId },
    Notify { transition: WireId, step: WireStep, states: BTreeMap<NodeId, &'static str> },
    Terminate { reason: String },
    Deregistered { subsystem: SubsystemId },
    Error { message: &'a str },
}

#[derive(Deserialize)]
pub struct RegisterMsg {
    name: String,
    level: u32,
    #[serde(default)]
    barriers: WireBarriers,
    ack_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
struct WireBarriers {
    #[serde(default = "one")]
    join: u32,
    #[serde(default = "one")]
    leave: u32,
    #[serde(default = "one")]
    forced_leave: u32,
}

impl Default for WireBarriers {
    fn default() -> Self {
        WireBarriers { join: 1, leave: 1, forced_leave: 1 }
    }
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
pub struct AckMsg {
    transition: WireId,
    step: WireStep,
}

#[derive(Deserialize)]
pub struct FailMsg {
    reason: String,
}

fn describe(id: &TransitionId, step: &Step) -> String {
    format!(
        "transition (node {}, incarnation {}, {}) step (level {}, barrier {})",
        id.node,
        id.incarnation,
        id.kind.as_str(),
        step.level,
        step.barrier
    )
}

/// Deserializes `v` as `T`, naming the op in the error.
fn parse<T: serde::de::DeserializeOwned>(op: &'static str, v: serde_json::Value) -> Result<T, RequestError> {
    serde_json::from_value(v).map_err(|source| RequestError::Fields { op, source })
}

// ---------------------------------------------------------------- one connection

struct Registration {
    subsystem: SubsystemId,
    spec: LevelSpec,
    ack_timeout: Duration,
    /// Notified and not acknowledged yet, with when it was sent.
    pending: BTreeMap<(TransitionId, Step), Instant>,
    /// A Failure was emitted (at most one per subsystem).
    failed: bool,
}

struct Conn {
    stream: UnixStream,
    shared: Arc<Shared>,
    events: mpsc::Sender<SubsysEvent>,
    stop: watch::Receiver<bool>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    reg: Option<Registration>,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// Stop reading; close once the output is flushed (or at `close_by`).
    closing: bool,
    close_by: Option<Instant>,
}

enum Flow {
    Continue,
    /// The connection ends now.
    Close,
}

impl Conn {
    fn new(stream: UnixStream, shared: Arc<Shared>, events: mpsc::Sender<SubsysEvent>, stop: watch::Receiver<bool>) -> Conn {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        Conn {
            stream,
            shared,
            events,
            stop,
            cmd_tx,
            cmd_rx,
            reg: None,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            closing: false,
            close_by: None,
        }
    }

    fn start_closing(&mut self) {
        if !self.closing {
            self.closing = true;
            self.close_by = Some(Instant::now() + CLOSE_FLUSH);
        }
    }

    async fn run(mut self) {
        let mut chunk = vec![0u8; 8192];
        let mut shutting_down = *self.stop.borrow();
        while !shutting_down {
            if self.closing && self.outbuf.is_empty() {
                break;
            }
            let deadline = self.next_deadline();
            let (mut rd, mut wr) = self.stream.split();
            let reading = !self.closing;
            let writing = !self.outbuf.is_empty();
            enum Ev {
                Stop,
                Read(io::Result<usize>),
                Wrote(io::Result<usize>),
                Cmd(Cmd),
                Timeout,
                CloseBy,
            }
            let ev = tokio::select! {
                _ = self.stop.changed() => Ev::Stop,
                r = rd.read(&mut chunk), if reading => Ev::Read(r),
                r = wr.write(&self.outbuf), if writing => Ev::Wrote(r),
                Some(c) = self.cmd_rx.recv() => Ev::Cmd(c),
                _ = sleep_until_opt(deadline), if deadline.is_some() => Ev::Timeout,
                _ = sleep_until_opt(self.close_by), if self.close_by.is_some() => Ev::CloseBy,
            };
            let flow = match ev {
                Ev::Stop => {
                    shutting_down = true;
                    Flow::Close
                }
                // End of file: the client is gone (or half-closed): flush what
                // it may still read, then close.
                Ev::Read(Ok(0)) => {
                    self.start_closing();
                    Flow::Continue
                }
                Ev::Read(Err(_)) => Flow::Close,
                Ev::Read(Ok(n)) => {
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    self.take_lines().await
                }
                Ev::Wrote(Ok(n)) => {
                    self.outbuf.drain(..n);
                    Flow::Continue
                }
                Ev::Wrote(Err(_)) => Flow::Close,
                Ev::Cmd(c) => self.command(c).await,
                Ev::Timeout => self.ack_timeout().await,
                Ev::CloseBy => Flow::Close,
            };
            if matches!(flow, Flow::Close) {
                break;
            }
        }
        self.finish(shutting_down).await;
    }

    fn next_deadline(&self) -> Option<Instant> {
        let r = self.reg.as_ref()?;
        if r.failed {
            return None;
        }
        r.pending.values().min().map(|t| *t + r.ack_timeout)
    }

    async fn finish(mut self, shutting_down: bool) {
        let Some(r) = self.reg.take() else { return };
        self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&r.subsystem);
        {
            let mut levels = self.shared.levels.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = levels.get_mut(&r.spec.level) {
                e.1 -= 1;
                if e.1 == 0 {
                    levels.remove(&r.spec.level);
                }
            }
        }
        info!(subsystem = r.subsystem, "subsystem connection closed");
        if !shutting_down {
            let _ = self.events.send(SubsysEvent::Deregistered { subsystem: r.subsystem }).await;
        }
    }

    fn out(&mut self, msg: &Out<'_>) -> Flow {
        // Serializing these types cannot fail (string keys, no floats).
        if let Ok(mut line) = serde_json::to_vec(msg) {
            line.push(b'\n');
            self.outbuf.extend_from_slice(&line);
        }
        if self.outbuf.len() > MAX_BACKLOG {
            return Flow::Close;
        }
        Flow::Continue
    }

    fn error(&mut self, message: &str) -> Flow {
        if let Some(r) = &self.reg {
            debug!(subsystem = r.subsystem, "subsystem client error: {message}");
        } else {
            debug!("subsystem client error: {message}");
        }
        self.out(&Out::Error { message })
    }

    /// Emits the subsystem's one Failure.
    async fn fail(&mut self, reason: u32) {
        let Some(r) = self.reg.as_mut() else { return };
        if r.failed {
            return;
        }
        r.failed = true;
        let subsystem = r.subsystem;
        let _ = self.events.send(SubsysEvent::Failure { subsystem, reason }).await;
    }

    /// The client stopped reading: it counts as hung.
    async fn overrun(&mut self) -> Flow {
        if let Some(r) = &self.reg {
            warn!(subsystem = r.subsystem, "subsystem client does not read its socket: component failure");
        }
        self.fail(REASON_COMPONENT).await;
        Flow::Close
    }

    async fn ack_timeout(&mut self) -> Flow {
        let now = Instant::now();
        let Some(r) = self.reg.as_ref() else { return Flow::Continue };
        let late = r.pending.iter().filter(|(_, t)| now >= **t + r.ack_timeout).map(|(k, _)| *k).next();
        if let Some((id, step)) = late {
            warn!(
                subsystem = r.subsystem,
                timeout_ms = r.ack_timeout.as_millis() as u64,
                "subsystem did not acknowledge {} in time: component failure",
                describe(&id, &step)
            );
            self.fail(REASON_COMPONENT).await;
        }
        Flow::Continue
    }

    async fn command(&mut self, c: Cmd) -> Flow {
        if self.closing {
            return Flow::Continue;
        }
        match c {
            Cmd::Notify { id, step, states } => {
                let Some(r) = self.reg.as_mut() else { return Flow::Continue };
                // One node has one transition at a time: a new id for the same
                // node supersedes (Table 1: forced leave aborts graceful).
                r.pending.retain(|(pid, _), _| pid.node != id.node || *pid == id);
                r.pending.entry((id, step)).or_insert_with(Instant::now);
                let states = states.into_iter().map(|(n, s)| (n, s.as_str())).collect();
                let flow = self.out(&Out::Notify { transition: id.into(), step: WireStep { level: step.level, barrier: step.barrier }, states });
                match flow {
                    Flow::Close => self.overrun().await,
                    Flow::Continue => Flow::Continue,
                }
            }
            Cmd::Terminate { reason } => {
                if let Some(r) = self.reg.as_mut() {
                    // Clustering is ending: nothing is waited for any more.
                    r.failed = true;
                    r.pending.clear();
                    info!(subsystem = r.subsystem, reason, "terminating subsystem");
                }
                self.start_closing();
                let _ = self.out(&Out::Terminate { reason: reason_name(reason) });
                Flow::Continue
            }
            Cmd::Retain { live } => {
                if let Some(r) = self.reg.as_mut() {
                    r.pending.retain(|(id, _), _| live.contains(id));
                }
                Flow::Continue
            }
        }
    }

    /// Handles every complete line in `inbuf`.
    async fn take_lines(&mut self) -> Flow {
        while let Some(pos) = self.inbuf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.inbuf.drain(..=pos).collect();
            let flow = self.line(&line[..line.len() - 1]).await;
            if matches!(flow, Flow::Close) {
                return Flow::Close;
            }
            if self.closing {
                self.inbuf.clear();
                return Flow::Continue;
            }
        }
        if self.inbuf.len() > MAX_LINE {
            let _ = self.error(&format!("line longer than {MAX_LINE} bytes: closing the connection"));
            self.start_closing();
            self.inbuf.clear();
        }
        Flow::Continue
    }

    async fn line(&mut self, line: &[u8]) -> Flow {
        if line.len() > MAX_LINE {
            let _ = self.error(&format!("line longer than {MAX_LINE} bytes: closing the connection"));
            self.start_closing();
            return Flow::Continue;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return Flow::Continue;
        }
        let r = match self.request(line).await {
            Ok(()) => Flow::Continue,
            Err(e) => self.error(&e.to_string()),
        };
        match r {
            Flow::Close => self.overrun().await,
            Flow::Continue => Flow::Continue,
        }
    }

    async fn request(&mut self, line: &[u8]) -> Result<(), RequestError> {
        match parse_request(line)? {
            ClientRequest::Register(m) => self.register(m).await,
            ClientRequest::Ack(m) => self.ack(m).await,
            ClientRequest::Fail(m) => self.client_failure(m).await,
            ClientRequest::Deregister => self.deregister(),
        }
    }

    async fn register(&mut self, m: RegisterMsg) -> Result<(), RequestError> {
        if let Some(r) = &self.reg {
            return Err(RequestError::AlreadyRegistered { subsystem: r.subsystem });
        }
        if m.name.is_empty() || m.name.len() > MAX_NAME || m.name.chars().any(char::is_control) {
            return Err(RequestError::BadName { max: MAX_NAME });
        }
        if !(LEVEL_MIN..=LEVEL_MAX).contains(&m.level) {
            return Err(RequestError::LevelOutOfRange { level: m.level });
        }
        for (which, n) in [("join", m.barriers.join), ("leave", m.barriers.leave), ("forced_leave", m.barriers.forced_leave)] {
            if !(1..=MAX_BARRIERS).contains(&n) {
                return Err(RequestError::BarriersOutOfRange { which, n });
            }
        }
        let ms = m.ack_timeout_ms.unwrap_or(ACK_TIMEOUT_DEFAULT_MS);
        if !(ACK_TIMEOUT_MIN_MS..=ACK_TIMEOUT_MAX_MS).contains(&ms) {
            return Err(RequestError::AckTimeoutOutOfRange { ms });
        }
        let barriers = Barriers { join: m.barriers.join, leave: m.barriers.leave, forced_leave: m.barriers.forced_leave };
        let spec = LevelSpec { level: m.level, barriers };
        let ack_timeout = Duration::from_millis(ms);
        // All subsystems at one level ask for the same barriers (S1.5).
        {
            let mut levels = self.shared.levels.lock().unwrap_or_else(|e| e.into_inner());
            match levels.get_mut(&m.level) {
                Some((b, _)) if *b != barriers => {
                    return Err(RequestError::BarriersDiffer { level: m.level, registered: *b });
                }
                Some((_, count)) => *count += 1,
                None => {
                    levels.insert(m.level, (barriers, 1));
                }
            }
        }
        let subsystem = {
            let mut next = self.shared.next_id.lock().unwrap_or_else(|e| e.into_inner());
            match *next {
                Some(id) => {
                    *next = id.checked_add(1);
                    id
                }
                None => {
                    drop(next);
                    self.release_level(m.level);
                    return Err(RequestError::NoIdsLeft);
                }
            }
        };
        // Reachable by notify() before the driver hears of it, and the
        // `registered` line goes out before any notification.
        self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(subsystem, self.cmd_tx.clone());
        self.reg = Some(Registration { subsystem, spec, ack_timeout, pending: BTreeMap::new(), failed: false });
        info!(subsystem, name = %m.name, level = m.level, ack_timeout_ms = ms, "external subsystem registered");
        let _ = self.out(&Out::Registered { subsystem });
        let _ = self.events.send(SubsysEvent::Registered { subsystem, name: m.name, spec, ack_timeout }).await;
        Ok(())
    }

    fn release_level(&self, level: u32) {
        let mut levels = self.shared.levels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = levels.get_mut(&level) {
            e.1 -= 1;
            if e.1 == 0 {
                levels.remove(&level);
            }
        }
    }

    async fn ack(&mut self, m: AckMsg) -> Result<(), RequestError> {
        let Some(r) = self.reg.as_mut() else {
            return Err(RequestError::NotRegistered);
        };
        let id: TransitionId = m.transition.into();
        let step = Step { level: m.step.level, barrier: m.step.barrier };
        if r.pending.remove(&(id, step)).is_none() {
            return Err(RequestError::NotNotified { step: describe(&id, &step) });
        }
        let subsystem = r.subsystem;
        let _ = self.events.send(SubsysEvent::Ack { subsystem, id, step }).await;
        Ok(())
    }

    async fn client_failure(&mut self, m: FailMsg) -> Result<(), RequestError> {
        let Some(r) = self.reg.as_ref() else {
            return Err(RequestError::NotRegistered);
        };
        let Some(reason) = reason_from_name(&m.reason) else {
            return Err(RequestError::UnknownReason { reason: m.reason.clone() });
        };
        warn!(subsystem = r.subsystem, reason = m.reason, "subsystem reports a critical local failure");
        self.fail(reason).await;
        Ok(())
    }

    fn deregister(&mut self) -> Result<(), RequestError> {
        let Some(r) = self.reg.as_ref() else {
            return Err(RequestError::NothingToDeregister);
        };
        let subsystem = r.subsystem;
        // finish() removes it and emits Deregistered once the line is out.
        self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&subsystem);
        if let Some(r) = self.reg.as_mut() {
            r.pending.clear();
            r.failed = true;
        }
        self.start_closing();
        let _ = self.out(&Out::Deregistered { subsystem });
        Ok(())
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;

    fn err(line: &str) -> String {
        match parse_request(line.as_bytes()) {
            Ok(_) => panic!("{line} parsed"),
            Err(e) => e.to_string(),
        }
    }

    /// The `{"error": ...}` texts a client reads (docs/subsystems.md):
    /// each names the field and the allowed values.
    #[test]
    fn request_errors_name_the_field_and_the_allowed_values() {
        assert!(err("{").starts_with("invalid JSON: "));
        assert_eq!(err("[1]"), "expected a JSON object with an \"op\" field");
        assert_eq!(err("{}"), "missing \"op\" field (register, ack, fail or deregister)");
        assert_eq!(err("{\"op\": 3}"), "\"op\" must be a string, not 3");
        assert_eq!(err("{\"op\": \"frobnicate\"}"), "unknown op \"frobnicate\" (expected register, ack, fail or deregister)");
        assert!(err("{\"op\": \"register\"}").starts_with("bad register: missing field"), "{}", err("{\"op\": \"register\"}"));
        assert!(matches!(parse_request(b"\xff"), Err(RequestError::Utf8 { .. })));
        assert_eq!(RequestError::LevelOutOfRange { level: 0 }.to_string(), "bad register: level 0 out of range (1..=65535)");
        assert_eq!(RequestError::BarriersOutOfRange { which: "leave", n: 17 }.to_string(), "bad register: barriers.leave = 17 out of range (1..=16)");
        assert_eq!(RequestError::AckTimeoutOutOfRange { ms: 5 }.to_string(), "bad register: ack_timeout_ms 5 out of range (10..=3600000)");
        assert_eq!(
            RequestError::BarriersDiffer { level: 50, registered: Barriers { join: 1, leave: 2, forced_leave: 1 } }.to_string(),
            "bad register: level 50 is registered with barriers join 1, leave 2, forced_leave 1; every subsystem at a level must ask for the same"
        );
        assert_eq!(RequestError::BadName { max: MAX_NAME }.to_string(), format!("bad register: name must be 1 to {MAX_NAME} bytes without control characters"));
    }
}
