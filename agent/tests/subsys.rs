//! The subsystem socket (agent/src/control/subsys.rs) over a real Unix socket in a
//! temporary directory: registration, notifications and acks, bad input,
//! the ack timeout, failures, termination, disconnects, and the example
//! Python client (examples/subsystem-client.py).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use baton_agent::control::subsys::{SubsysError, SubsysEvent, SubsysServer};
use baton_core::membership::{Barriers, Kind, LevelSpec, NodeState, Step, TransitionId};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc::Receiver;
use tokio::time::{timeout, Instant};

const FIRST: u32 = 100;
const WAIT: Duration = Duration::from_secs(5);

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!("baton-subsys-{}-{}-{}", std::process::id(), tag, N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("test-subsys.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Client {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Client {
    async fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).await.unwrap();
        let (rd, wr) = s.into_split();
        Client { rd: BufReader::new(rd), wr }
    }
    async fn send_raw(&mut self, line: &str) {
        self.wr.write_all(line.as_bytes()).await.unwrap();
        self.wr.write_all(b"\n").await.unwrap();
    }
    async fn send(&mut self, v: Value) {
        self.send_raw(&v.to_string()).await;
    }
    /// The next line, as text (panics after WAIT or at end of file).
    async fn line(&mut self) -> String {
        let mut s = String::new();
        let n = timeout(WAIT, self.rd.read_line(&mut s)).await.expect("no line from the agent").unwrap();
        assert!(n > 0, "unexpected end of file");
        assert!(s.ends_with('\n'));
        s.trim_end().to_string()
    }
    async fn recv(&mut self) -> Value {
        let l = self.line().await;
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("agent sent invalid JSON {l:?}: {e}"))
    }
    async fn expect_error(&mut self, contains: &str) -> String {
        let v = self.recv().await;
        assert_eq!(v["ev"], "error", "expected an error, got {v}");
        let m = v["message"].as_str().unwrap().to_string();
        assert!(m.contains(contains), "error {m:?} does not mention {contains:?}");
        m
    }
    async fn expect_eof(&mut self) {
        let mut s = String::new();
        let n = timeout(WAIT, self.rd.read_line(&mut s)).await.expect("connection not closed").unwrap_or(0);
        assert_eq!(n, 0, "expected end of file, got {s:?}");
    }
    async fn register(&mut self, name: &str, level: u32, timeout_ms: u64) -> u32 {
        self.send(json!({"op":"register","name":name,"level":level,"barriers":{"join":1,"leave":1,"forced_leave":1},"ack_timeout_ms":timeout_ms}))
            .await;
        let v = self.recv().await;
        assert_eq!(v["ev"], "registered", "{v}");
        v["subsystem"].as_u64().unwrap() as u32
    }
}

async fn event(rx: &mut Receiver<SubsysEvent>) -> SubsysEvent {
    timeout(WAIT, rx.recv()).await.expect("no event").expect("event channel closed")
}

async fn no_event(rx: &mut Receiver<SubsysEvent>, for_: Duration) {
    if let Ok(e) = timeout(for_, rx.recv()).await {
        panic!("unexpected event {e:?}");
    }
}

async fn registered(rx: &mut Receiver<SubsysEvent>) -> u32 {
    match event(rx).await {
        SubsysEvent::Registered { subsystem, .. } => subsystem,
        e => panic!("expected Registered, got {e:?}"),
    }
}

fn tid(node: u32, incarnation: u64, kind: Kind) -> TransitionId {
    TransitionId { node, incarnation, kind }
}

fn states() -> BTreeMap<u32, NodeState> {
    BTreeMap::from([(1, NodeState::Joined), (2, NodeState::Joining)])
}

fn wire(id: TransitionId, step: Step) -> (Value, Value) {
    let kind = match id.kind {
        Kind::Join => "join",
        Kind::Leave => "leave",
        Kind::ForcedLeave => "forced-leave",
    };
    (json!({"node": id.node, "incarnation": id.incarnation, "kind": kind}), json!({"level": step.level, "barrier": step.barrier}))
}

async fn ack(c: &mut Client, id: TransitionId, step: Step) {
    let (t, s) = wire(id, step);
    c.send(json!({"op":"ack","transition":t,"step":s})).await;
}

#[tokio::test]
async fn register_notify_ack() {
    let d = TempDir::new("basic");
    let (server, mut rx) = SubsysServer::bind(&d.sock(), FIRST).await.unwrap();
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let m = std::fs::metadata(d.sock()).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
    let mut c = Client::connect(&d.sock()).await;
    c.send_raw(r#"{"op":"register","name":"db","level":30,"barriers":{"join":1,"leave":2,"forced_leave":3},"ack_timeout_ms":5000}"#).await;
    assert_eq!(c.line().await, r#"{"ev":"registered","subsystem":100}"#);
    assert_eq!(
        event(&mut rx).await,
        SubsysEvent::Registered {
            subsystem: 100,
            name: "db".into(),
            spec: LevelSpec { level: 30, barriers: Barriers { join: 1, leave: 2, forced_leave: 3 } },
            ack_timeout: Duration::from_millis(5000),
        }
    );
    assert!(server.registered().contains(&100));

    let id = tid(2, 123, Kind::Join);
    let step = Step { level: 30, barrier: 0 };
    server.notify(100, id, step, &states());
    assert_eq!(
        c.line().await,
        r#"{"ev":"notify","transition":{"node":2,"incarnation":123,"kind":"join"},"step":{"level":30,"barrier":0},"states":{"1":"joined","2":"joining"}}"#
    );
    // Echo the notification's transition and step back, as a client would.
    c.send_raw(r#"{"op":"ack","transition":{"node":2,"incarnation":123,"kind":"join"},"step":{"level":30,"barrier":0}}"#).await;
    assert_eq!(event(&mut rx).await, SubsysEvent::Ack { subsystem: 100, id, step });

    // A second ack of the same step is refused; the connection stays usable.
    ack(&mut c, id, step).await;
    c.expect_error("already acknowledged").await;

    // Every state and kind has its name; node ids sort numerically.
    let all = BTreeMap::from([
        (10, NodeState::Inactive),
        (2, NodeState::Leaving),
        (3, NodeState::ForcedLeaving),
        (4, NodeState::Joined),
        (5, NodeState::Joining),
    ]);
    let id2 = tid(3, u64::MAX, Kind::ForcedLeave);
    let step2 = Step { level: 30, barrier: 2 };
    server.notify(100, id2, step2, &all);
    assert_eq!(
        c.line().await,
        format!(
            r#"{{"ev":"notify","transition":{{"node":3,"incarnation":{},"kind":"forced-leave"}},"step":{{"level":30,"barrier":2}},"states":{{"2":"leaving","3":"forced-leaving","4":"joined","5":"joining","10":"inactive"}}}}"#,
            u64::MAX
        )
    );
    // "forced_leave" is accepted as well.
    c.send_raw(&format!(r#"{{"op":"ack","transition":{{"node":3,"incarnation":{},"kind":"forced_leave"}},"step":{{"level":30,"barrier":2}}}}"#, u64::MAX))
        .await;
    assert_eq!(event(&mut rx).await, SubsysEvent::Ack { subsystem: 100, id: id2, step: step2 });

    // Notifying an unknown subsystem is a no-op.
    server.notify(999, id, step, &states());
    server.terminate(999, 3);

    drop(c);
    assert_eq!(event(&mut rx).await, SubsysEvent::Deregistered { subsystem: 100 });
    assert!(server.registered().is_empty());
    server.shutdown().await;
    assert!(!d.sock().exists(), "shutdown removes the socket");
}

#[tokio::test]
async fn bad_input_is_reported_and_the_connection_stays_usable() {
    let d = TempDir::new("bad");
    let (server, mut rx) = SubsysServer::bind(&d.sock(), FIRST).await.unwrap();
    let mut c = Client::connect(&d.sock()).await;

    c.send_raw("this is not json").await;
    c.expect_error("invalid JSON").await;
    c.send_raw(r#"{"op":"frobnicate"}"#).await;
    c.expect_error("unknown op \"frobnicate\"").await;
    c.send_raw(r#"{"name":"x"}"#).await;
    c.expect_error("missing \"op\"").await;
    c.send_raw(r#"[1,2]"#).await;
    c.expect_error("JSON object").await;
    c.send_raw(r#"{"op":7}"#).await;
    c.expect_error("must be a string").await;
    c.wr.write_all(b"\xff\xfe\n").await.unwrap();
    c.expect_error("UTF-8").await;
    c.send_raw("").await; // empty lines are ignored
    c.send(json!({"op":"ack","transition":{"node":1,"incarnation":1,"kind":"join"},"step":{"level":1,"barrier":0}})).await;
    c.expect_error("not registered").await;
    c.send(json!({"op":"fail","reason":"component"})).await;
    c.expect_error("not registered").await;
    c.send(json!({"op":"deregister"})).await;
    c.expect_error("not registered").await;
    c.send(json!({"op":"register","name":"db","level":0})).await;
    c.expect_error("level 0 out of range").await;
    c.send(json!({"op":"register","name":"db","level":70000})).await;
    c.expect_error("level 70000 out of range").await;
    c.send(json!({"op":"register","name":"db","level":-3})).await;
    c.expect_error("bad register").await;
    c.send(json!({"op":"register","level":30})).await;
    c.expect_error("missing field `name`").await;
    c.send(json!({"op":"register","name":"","level":30})).await;
    c.expect_error("name").await;
    c.send(json!({"op":"register","name":"db","level":30,"barriers":{"join":0}})).await;
    c.expect_error("barriers.join = 0").await;
    c.send(json!({"op":"register","name":"db","level":30,"ack_timeout_ms":0})).await;
    c.expect_error("ack_timeout_ms 0 out of range").await;
    no_event(&mut rx, Duration::from_millis(50)).await;

    // Still usable: register (barriers and ack timeout have defaults).
    c.send(json!({"op":"register","name":"db","level":30})).await;
    assert_eq!(c.recv().await, json!({"ev":"registered","subsystem":100}));
    match event(&mut rx).await {
        SubsysEvent::Registered { subsystem: 100, spec, ack_timeout, .. } => {
            assert_eq!(spec, LevelSpec { level: 30, barriers: Barriers::ONE });
            assert_eq!(ack_timeout, Duration::from_secs(10));
        }
        e => panic!("{e:?}"),
    }
    c.send(json!({"op":"register","name":"db","level":30})).await;
    c.expect_error("already registered as subsystem 100").await;

    // An ack for something never notified names the transition and step.
    c.send(json!({"op":"ack","transition":{"node":2,"incarnation":9,"kind":"leave"},"step":{"level":30,"barrier":0}})).await;
    let m = c.expect_error("not notified").await;
    assert!(m.contains("node 2") && m.contains("incarnation 9") && m.contains("leave") && m.contains("level 30"), "{m}");
    c.send(json!({"op":"ack","transition":{"node":2,"incarnation":9,"kind":"sideways"},"step":{"level":30,"barrier":0}})).await;
    c.expect_error("unknown transition kind").await;
    c.send(json!({"op":"ack","transition":{"node":2},"step":{"level":30,"barrier":0}})).await;
    c.expect_error("bad ack").await;
    c.send(json!({"op":"fail","reason":"boredom"})).await;
    c.expect_error("unknown reason \"boredom\"").await;
    no_event(&mut rx, Duration::from_millis(50)).await;

    // And notifications still arrive and acks still count.
    let id = tid(2, 9, Kind::Leave);
    let step = Step { level: 30, barrier: 0 };
    server.notify(100, id, step, &states());
    assert_eq!(c.recv().await["ev"], "notify");
    ack(&mut c, id, step).await;
    assert_eq!(event(&mut rx).await, SubsysEvent::Ack { subsystem: 100, id, step });

    // A second connection at the same level must ask for the same barriers.
    let mut c2 = Client::connect(&d.sock()).await;
    c2.send(json!({"op":"register","name":"db2","level":30,"barriers":{"join":2,"leave":1,"forced_leave":1}})).await;
    c2.expect_error("same").await;
    assert_eq!(c2.register("db2", 30, 1000).await, 101);
    assert_eq!(registered(&mut rx).await, 101);

    // An over-long line ends the connection (after an error line).
    let mut c3 = Client::connect(&d.sock()).await;
    c3.send_raw(&"x".repeat(70 * 1024)).await;
    c3.expect_error("longer than").await;
    c3.expect_eof().await;

    server.shutdown().await;
    c.expect_eof().await;
    c2.expect_eof().await;
}

#[tokio::test]
async fn unacknowledged_notification_is_a_component_failure_once() {
    let d = TempDir::new("timeout");
    let (server, mut rx) = SubsysServer::bind(&d.sock(), FIRST).await.unwrap();
    let mut c = Client::connect(&d.sock()).await;
    let s = c.register("slow", 20, 200).await;
    assert_eq!(registered(&mut rx).await, s);

    // Acked in time: no failure.
    let id = tid(1, 5, Kind::Join);
    let step0 = Step { level: 20, barrier: 0 };
    server.notify(s, id, step0, &states());
    c.recv().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    ack(&mut c, id, step0).await;
    assert_eq!(event(&mut rx).await, SubsysEvent::Ack { subsystem: s, id, step: step0 });
    no_event(&mut rx, Duration::from_millis(400)).await;

    // Never acked: one Failure (component) after the timeout, not before.
    let step1 = Step { level: 20, barrier: 1 };
    let t0 = Instant::now();
    server.notify(s, id, step1, &states());
    c.recv().await;
    assert_eq!(event(&mut rx).await, SubsysEvent::Failure { subsystem: s, reason: 3 });
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(190), "failure after {took:?}, before the 200 ms timeout");
    assert!(took < Duration::from_millis(2000), "failure only after {took:?}");
    // Only once, even with more late notifications.
    server.notify(s, tid(4, 1, Kind::Join), step0, &states());
    c.recv().await;
    no_event(&mut rx, Duration::from_millis(500)).await;
    // A late ack still goes through.
    ack(&mut c, id, step1).await;
    assert_eq!(event(&mut rx).await, SubsysEvent::Ack { subsystem: s, id, step: step1 });

    drop(c);
    assert_eq!(event(&mut rx).await, SubsysEvent::Deregistered { subsystem: s });
    server.shutdown().await;
}

#[tokio::test]
async fn forced_leave_supersedes_a_graceful_notification() {
    let d = TempDir::new("forced");
    let (server, mut rx) = SubsysServer::bind(&d.sock(), FIRST).await.unwrap();
    let mut c = Client::connect(&d.sock()).await;
    let s = c.register("fs", 20, 300).await;
    registered(&mut rx).await;

    let join = tid(2, 7, Kind::Join);
    let forced = tid(2, 7, Kind::ForcedLeave);
    let step = Step { level: 20, barrier: 0 };
    server.notify(s, join, step, &states());
    assert_eq!(c.recv().await["transition"]["kind"], "join");
    server.notify(s, forced, step, &BTreeMap::from([(1, NodeState::Joined), (2, NodeState::ForcedLeaving)]));
    let v = c.recv().await;
    assert_eq!(v["transition"]["kind"], "forced-leave");
    assert_eq!(v["states"]["2"], "forced-leaving");
    // The aborted join is no longer acknowledged.
    ack(&mut c, join, step).await;
    c.expect_error("superseded").await;
    ack(&mut c, forced, step).await;
    assert_eq!(event(&mut rx).await, SubsysEvent::Ack { subsystem: s, id: forced, step });
    // Nothing left pending: no timeout.
    no_event(&mut rx, Duration::from_millis(600)).await;

    // retain_transitions: notifications of transitions that are over stop counting.
    let leave = tid(3, 1, Kind::Leave);
    server.notify(s, leave, step, &states());
    c.recv().await;
    server.retain_transitions(&Default::default());
    no_event(&mut rx, Duration::from_millis(600)).await;
    ack(&mut c, leave, step).await;
    c.expect_error("not notified").await;
    server.shutdown().await;
}

#[tokio::test]
async fn fail_terminate_deregister_disconnect() {
    let d = TempDir::new("life");
    let (server, mut rx) = SubsysServer::bind(&d.sock(), FIRST).await.unwrap();

    // fail: a Failure with the reason's code, once.
    let mut a = Client::connect(&d.sock()).await;
    let sa = a.register("a", 10, 5000).await;
    registered(&mut rx).await;
    a.send(json!({"op":"fail","reason":"corruption"})).await;
    assert_eq!(event(&mut rx).await, SubsysEvent::Failure { subsystem: sa, reason: 4 });
    a.send(json!({"op":"fail","reason":"protocol"})).await;
    no_event(&mut rx, Duration::from_millis(100)).await;

    // terminate: the terminate line, then end of file, then Deregistered.
    let mut b = Client::connect(&d.sock()).await;
    let sb = b.register("b", 20, 5000).await;
    assert_eq!(sb, sa + 1);
    registered(&mut rx).await;
    server.notify(sb, tid(1, 1, Kind::Join), Step { level: 20, barrier: 0 }, &states());
    b.recv().await;
    server.terminate(sb, 3);
    assert_eq!(b.line().await, r#"{"ev":"terminate","reason":"component"}"#);
    b.expect_eof().await;
    assert_eq!(event(&mut rx).await, SubsysEvent::Deregistered { subsystem: sb });
    // The pending notification does not time out into a Failure afterwards.

    // deregister: a deregistered line, end of file, Deregistered.
    let mut c = Client::connect(&d.sock()).await;
    let sc = c.register("c", 30, 5000).await;
    registered(&mut rx).await;
    c.send(json!({"op":"deregister"})).await;
    assert_eq!(c.recv().await, json!({"ev":"deregistered","subsystem":sc}));
    c.expect_eof().await;
    assert_eq!(event(&mut rx).await, SubsysEvent::Deregistered { subsystem: sc });
    server.notify(sc, tid(1, 1, Kind::Join), Step { level: 30, barrier: 0 }, &states());

    // Disconnect: Deregistered. An unregistered connection ending emits nothing.
    drop(a);
    assert_eq!(event(&mut rx).await, SubsysEvent::Deregistered { subsystem: sa });
    let e = Client::connect(&d.sock()).await;
    drop(e);
    no_event(&mut rx, Duration::from_millis(200)).await;

    // Terminate reasons without an S0.1 name.
    let mut f = Client::connect(&d.sock()).await;
    let sf = f.register("f", 40, 5000).await;
    registered(&mut rx).await;
    server.terminate(sf, 42);
    assert_eq!(f.recv().await, json!({"ev":"terminate","reason":"42"}));
    f.expect_eof().await;
    assert_eq!(event(&mut rx).await, SubsysEvent::Deregistered { subsystem: sf });
    server.shutdown().await;
}

#[tokio::test]
async fn bind_errors_and_stale_sockets() {
    let d = TempDir::new("bind");
    let (server, _rx) = SubsysServer::bind(&d.sock(), FIRST).await.unwrap();
    match SubsysServer::bind(&d.sock(), FIRST).await {
        Err(e @ SubsysError::InUse { .. }) => assert!(e.to_string().contains(&d.sock().display().to_string()), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("bound twice"),
    }
    // A stale socket (nobody listening) is replaced.
    drop(server); // without shutdown: the socket file stays
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(d.sock().exists());
    let (server, _rx) = SubsysServer::bind(&d.sock(), FIRST).await.unwrap();
    server.shutdown().await;

    // A regular file is not replaced.
    std::fs::write(d.sock(), b"precious").unwrap();
    match SubsysServer::bind(&d.sock(), FIRST).await {
        Err(e @ SubsysError::NotASocket { .. }) => assert!(e.to_string().contains("test-subsys.sock"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("replaced a regular file"),
    }
    assert_eq!(std::fs::read(d.sock()).unwrap(), b"precious");

    // A directory that cannot be created is named.
    let bad = d.0.join("file-not-dir");
    std::fs::write(&bad, b"").unwrap();
    let err = SubsysServer::bind(&bad.join("x.sock"), FIRST).await.err().expect("bind under a file");
    assert!(err.to_string().contains("file-not-dir"), "{err}");

    // The directory is created when missing.
    let nested = d.0.join("run/baton/x-subsys.sock");
    let (server, _rx) = SubsysServer::bind(&nested, FIRST).await.unwrap();
    assert!(nested.exists());
    server.shutdown().await;
}

fn python_client() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/subsystem-client.py")
}

async fn run_python(args: &[&str], sock: &Path) -> std::process::Child {
    std::process::Command::new("python3")
        .arg(python_client())
        .arg(sock)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs")
}

async fn finish(child: std::process::Child) -> (i32, String, String) {
    let pid = child.id() as i32;
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    let out = match timeout(WAIT, waiting).await {
        Ok(r) => r.unwrap().unwrap(),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("python client did not exit");
        }
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn python_example_client_acks() {
    let d = TempDir::new("py");
    let (server, mut rx) = SubsysServer::bind(&d.sock(), FIRST).await.unwrap();

    // Acks each notification after 50 ms, deregisters after two.
    let child = run_python(&["db", "30", "--barriers", "2,1,1", "--delay-ms", "50", "--exit-after", "2"], &d.sock()).await;
    let s = match event(&mut rx).await {
        SubsysEvent::Registered { subsystem, name, spec, ack_timeout } => {
            assert_eq!(name, "db");
            assert_eq!(spec, LevelSpec { level: 30, barriers: Barriers { join: 2, leave: 1, forced_leave: 1 } });
            assert_eq!(ack_timeout, Duration::from_millis(5000));
            subsystem
        }
        e => panic!("{e:?}"),
    };
    let id = tid(2, 1_700_000_000_000_000, Kind::Join);
    for barrier in 0..2 {
        let step = Step { level: 30, barrier };
        let t0 = Instant::now();
        server.notify(s, id, step, &states());
        assert_eq!(event(&mut rx).await, SubsysEvent::Ack { subsystem: s, id, step });
        assert!(t0.elapsed() >= Duration::from_millis(45), "acked before its --delay-ms");
    }
    assert_eq!(event(&mut rx).await, SubsysEvent::Deregistered { subsystem: s });
    let (code, out, err) = finish(child).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("registered as subsystem 100"), "{out}");
    assert!(out.contains("notified node 2 incarnation 1700000000000000 join level 30 barrier 1; states: 1=joined, 2=joining"), "{out}");
    assert!(out.contains("acked    node 2 incarnation 1700000000000000 join level 30 barrier 1"), "{out}");

    // A forced leave aborts the delayed graceful ack; terminate exits non-zero.
    let child = run_python(&["fs", "20", "--delay-ms", "300"], &d.sock()).await;
    let s = registered(&mut rx).await;
    let step = Step { level: 20, barrier: 0 };
    server.notify(s, tid(3, 2, Kind::Leave), step, &states());
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.notify(s, tid(3, 2, Kind::ForcedLeave), step, &states());
    assert_eq!(event(&mut rx).await, SubsysEvent::Ack { subsystem: s, id: tid(3, 2, Kind::ForcedLeave), step });
    server.terminate(s, 3);
    assert_eq!(event(&mut rx).await, SubsysEvent::Deregistered { subsystem: s });
    let (code, out, err) = finish(child).await;
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("aborted  node 3 incarnation 2 leave level 20 barrier 0"), "{out}");
    assert!(err.contains("terminated by the agent: clustering is ending (component)"), "{err}");

    // --fail-after 1: the first notification is answered with a failure.
    let child = run_python(&["bad", "40", "--fail-after", "1"], &d.sock()).await;
    let s = registered(&mut rx).await;
    server.notify(s, tid(3, 2, Kind::Join), Step { level: 40, barrier: 0 }, &states());
    assert_eq!(event(&mut rx).await, SubsysEvent::Failure { subsystem: s, reason: 3 });
    server.shutdown().await;
    let (code, out, err) = finish(child).await;
    assert_eq!(code, 3, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("reported a component failure"), "{out}");
}

#[tokio::test]
async fn python_client_refused_registration_and_sigterm() {
    let d = TempDir::new("py2");
    let (server, mut rx) = SubsysServer::bind(&d.sock(), FIRST).await.unwrap();
    let child = run_python(&["db", "0"], &d.sock()).await;
    let (code, _, err) = finish(child).await;
    assert_eq!(code, 1);
    assert!(err.contains("level 0 out of range"), "{err}");

    let child = run_python(&["db", "30"], &d.sock()).await;
    let s = registered(&mut rx).await;
    let pid = child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(event(&mut rx).await, SubsysEvent::Deregistered { subsystem: s });
    let (code, out, err) = finish(child).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("deregistered"), "{out}");
    server.shutdown().await;
}
