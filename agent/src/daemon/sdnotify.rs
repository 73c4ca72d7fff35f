//! systemd integration: the service notification protocol (`sd_notify(3)`)
//! and the choice of the log destination (the journal or stderr).
//!
//! With `Type=notify` systemd passes `$NOTIFY_SOCKET` (a path, or an
//! abstract name starting with `@`) and, with `WatchdogSec=`,
//! `$WATCHDOG_USEC` and `$WATCHDOG_PID`. The agent sends, as datagrams of
//! newline-separated `KEY=VALUE` lines:
//!
//! * `READY=1` once the datapath is attached, the control channel and
//!   sockets are bound and the node joins or waits to join (the top of the
//!   event loop), with a first `STATUS=`;
//! * `STATUS=<one line>` whenever that line changes (membership state,
//!   members, master, quorum, groups running here);
//! * `STOPPING=1` when a graceful leave starts (SIGTERM, SIGINT,
//!   `baton stop`, `baton stop --all`, a negotiated takeover);
//! * `WATCHDOG=1` from the event loop itself (every half of
//!   `WATCHDOG_USEC`): the loop that carries membership, services and the
//!   datapath's events stalls first, the real-time heartbeat sender keeps
//!   going without it; while the agent waits to start a new life after a
//!   halt, the wait pings instead.
//!
//! Nothing is sent without `$NOTIFY_SOCKET` (started by hand), and a failed
//! send is logged once and never stops the agent. The implementation is
//! the protocol itself (a few lines over `AF_UNIX`/`SOCK_DGRAM`), no crate.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::time::Duration;

/// Where notifications go, from the environment.
struct Target {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// Half of `$WATCHDOG_USEC` when the watchdog is on for this process.
    watchdog: Option<Duration>,
}

struct State {
    target: Option<Target>,
    last_status: String,
    stopping: bool,
    failed_once: bool,
    /// The last status line was not delivered (the socket's queue was full).
    status_pending: bool,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let st = g.get_or_insert_with(|| State { target: target_from_env(), last_status: String::new(), stopping: false, failed_once: false, status_pending: false });
    f(st)
}

fn target_from_env() -> Option<Target> {
    let path = std::env::var_os("NOTIFY_SOCKET")?;
    let path = path.to_string_lossy().to_string();
    let addr = if let Some(name) = path.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes()).ok()?
    } else if path.starts_with('/') {
        SocketAddr::from_pathname(&path).ok()?
    } else {
        tracing::warn!(notify_socket = %path, "NOTIFY_SOCKET is neither a path nor an abstract name: not notifying systemd");
        return None;
    };
    let sock = UnixDatagram::unbound().ok()?;
    // Never wait for the reader: a full receive queue (systemd stuck, or a
    // stand-in that does not read) drops a notification instead of
    // blocking the event loop in sendto.
    sock.set_nonblocking(true).ok()?;
    Some(Target { sock, addr, watchdog: watchdog_from_env() })
}

/// Half of `$WATCHDOG_USEC` when `$WATCHDOG_PID` is unset or this process.
fn watchdog_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Sends `msg`; false when it was not delivered.
fn send(st: &mut State, msg: &str) -> bool {
    let Some(t) = &st.target else { return true };
    match t.sock.send_to_addr(msg.as_bytes(), &t.addr) {
        Ok(_) => true,
        Err(e) => {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                tracing::debug!("systemd's notification socket is full: {msg:?} dropped");
            } else if !st.failed_once {
                st.failed_once = true;
                tracing::warn!("notifying systemd ({msg:?}) failed: {e}; the agent goes on");
            }
            false
        }
    }
}

/// Sends `msg` with the status line; a status line that was not delivered
/// is sent again with the next notification.
fn send_status(st: &mut State, msg: &str) {
    st.status_pending = !send(st, msg);
}

/// Whether systemd (or a stand-in) listens: `$NOTIFY_SOCKET` was set.
pub fn enabled() -> bool {
    with(|st| st.target.is_some())
}

/// How often the event loop must ping the watchdog (`None`: no watchdog).
pub fn watchdog_interval() -> Option<Duration> {
    with(|st| st.target.as_ref().and_then(|t| t.watchdog))
}

/// `READY=1` with the first status line. Sent again by a new life after a
/// halt (the same process, re-executed): harmless for systemd.
pub fn ready(status: &str) {
    with(|st| {
        st.last_status = status.to_string();
        let msg = format!("READY=1\nSTATUS={}\nMAINPID={}", one_line(status), std::process::id());
        send_status(st, &msg);
    })
}

/// `STATUS=` when `status` differs from the last line sent.
pub fn status(status: &str) {
    with(|st| {
        if st.last_status != status || st.status_pending {
            st.last_status = status.to_string();
            let msg = format!("STATUS={}", one_line(status));
            send_status(st, &msg);
        }
    })
}

/// `STOPPING=1` (once delivered) with a status line.
pub fn stopping(status: &str) {
    with(|st| {
        if !st.stopping {
            st.last_status = status.to_string();
            let msg = format!("STOPPING=1\nSTATUS={}", one_line(status));
            send_status(st, &msg);
            // Not delivered: sent again by the next call.
            st.stopping = !st.status_pending;
        }
    })
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (CLOCK_MONOTONIC, as systemd
/// wants it) and a status line: for a configuration reload, followed by
/// [`reloaded`] when it is done (applied or refused).
pub fn reloading(status: &str) {
    with(|st| {
        st.last_status = status.to_string();
        let usec = crate::datapath::events::monotonic_ns() / 1000;
        let msg = format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={}", one_line(status));
        send_status(st, &msg);
    })
}

/// `READY=1` again after a reload, with the status line.
pub fn reloaded(status: &str) {
    with(|st| {
        st.last_status = status.to_string();
        let msg = format!("READY=1\nSTATUS={}", one_line(status));
        send_status(st, &msg);
    })
}

/// `WATCHDOG=1`.
pub fn watchdog() {
    with(|st| {
        if st.status_pending {
            let msg = format!("WATCHDOG=1\nSTATUS={}", one_line(&st.last_status));
            send_status(st, &msg);
        } else {
            send(st, "WATCHDOG=1");
        }
    })
}

/// Sleeps for `d`, pinging the watchdog meanwhile (the wait before a new
/// life after a halt).
pub async fn sleep_pinging(d: Duration) {
    let Some(every) = watchdog_interval() else {
        tokio::time::sleep(d).await;
        return;
    };
    let end = tokio::time::Instant::now() + d;
    loop {
        watchdog();
        let now = tokio::time::Instant::now();
        if now >= end {
            return;
        }
        tokio::time::sleep((end - now).min(every)).await;
    }
}

/// The one-line state for `STATUS=` (what `systemctl status baton` shows),
/// e.g. `joined: cluster prod, 3 of 3 nodes joined (node1 node2 node3),
/// master node1, quorate; running here: web`.
pub fn status_line(cfg: &crate::config::Config, driver: &crate::daemon::cluster::ClusterDriver, leaving: bool) -> String {
    use baton_core::membership::NodeState;
    let mine = driver.my_state();
    let what = match (leaving, mine) {
        (true, _) => "leaving gracefully",
        (false, NodeState::Inactive) => "waiting to join",
        (false, NodeState::Joining) => "joining",
        (false, NodeState::Joined) => "joined",
        (false, NodeState::Leaving) => "leaving",
        (false, NodeState::ForcedLeaving) => "forced out",
    };
    let total = cfg.peers.len() + 1;
    let Some(st) = driver.state() else {
        return format!("{what}: cluster {}, no cluster formed yet ({total} nodes configured)", cfg.cluster_name);
    };
    let joined: Vec<String> = st.states().into_iter().filter(|(_, s)| *s == NodeState::Joined).map(|(n, _)| driver.name(n)).collect();
    let mut line = format!(
        "{what}: cluster {}, {} of {total} nodes joined ({}), master {}, {}",
        cfg.cluster_name,
        joined.len(),
        joined.join(" "),
        driver.name(st.view.master),
        if st.quorate { "quorate" } else { "not quorate" },
    );
    if !st.transitions.is_empty() {
        line += &format!(", {} transition(s) in flight", st.transitions.len());
    }
    if let Some(svc) = &driver.svc {
        let here: Vec<String> = svc.registered().into_iter().filter(|(_, n)| *n == cfg.node_id).map(|(g, _)| g).collect();
        if here.is_empty() {
            line += "; no group here";
        } else {
            line += &format!("; running here: {}", here.join(" "));
        }
    }
    line
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Whether stderr is connected to the journal: `$JOURNAL_STREAM` (set by
/// systemd for `StandardError=journal`) names stderr's device and inode
/// (as `sd_journal_stream_fd` and the systemd documentation recommend:
/// a child whose stderr was redirected does not log to the journal).
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.split_once(':') else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    match nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&std::io::stderr())) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// The log subscriber: `BATON_LOG` (an `EnvFilter`, default `info`)
/// selects what is logged; to the journal through its native protocol
/// (each event's fields as journal fields with the prefix `F_`:
/// `F_INTERFACE=`, `F_NODE=`, ..., the prefix keeps them apart from the
/// journal's own fields such as `PRIORITY=`; `TARGET=` is the module,
/// `PRIORITY=` the level as syslog has it, `SYSLOG_IDENTIFIER=baton`) when
/// [`stderr_is_journal`], to stderr as text otherwise (and when the journal's
/// socket cannot be opened).
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || tracing_subscriber::EnvFilter::try_from_env("BATON_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                use tracing_journald::{Priority, PriorityMappings};
                // Syslog's meaning of the levels (the crate's default puts
                // INFO at NOTICE): `journalctl -p info` shows what stderr shows.
                let levels = PriorityMappings {
                    error: Priority::Error,
                    warn: Priority::Warning,
                    info: Priority::Informational,
                    debug: Priority::Debug,
                    trace: Priority::Debug,
                };
                let layer = layer.with_syslog_identifier("baton".into()).with_priority_mappings(levels);
                tracing_subscriber::registry().with(filter()).with(layer).init();
                return;
            }
            Err(e) => eprintln!("baton: the journal's socket cannot be used ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages as a real datagram socket receives them, with a
    /// receive queue that overflows: a status line that was dropped is sent
    /// again with the next ping, and nothing blocks.
    #[test]
    fn messages_reach_a_datagram_socket_and_a_dropped_status_is_resent() {
        let dir = std::env::temp_dir().join(format!("baton-sdnotify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let sock = UnixDatagram::unbound().unwrap();
        sock.set_nonblocking(true).unwrap();
        let target = Target { sock, addr: SocketAddr::from_pathname(&path).unwrap(), watchdog: Some(Duration::from_millis(100)) };
        *STATE.lock().unwrap() = Some(State { target: Some(target), last_status: String::new(), stopping: false, failed_once: false, status_pending: false });
        let recv = || {
            let mut buf = [0u8; 512];
            let n = rx.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        };
        ready("waiting to join");
        assert!(recv().starts_with("READY=1\nSTATUS=waiting to join\nMAINPID="));
        status("waiting to join");
        status("joined");
        assert_eq!(recv(), "STATUS=joined");
        reloading("reloading /etc/baton/baton.toml");
        let m = recv();
        assert!(m.starts_with("RELOADING=1\nMONOTONIC_USEC=") && m.ends_with("\nSTATUS=reloading /etc/baton/baton.toml"), "{m}");
        reloaded("joined");
        assert_eq!(recv(), "READY=1\nSTATUS=joined");
        // Fill the queue (nobody reads) until a status line is dropped:
        // the sends fail at once instead of blocking.
        let t = std::time::Instant::now();
        let mut last = String::new();
        for i in 0..100_000 {
            last = format!("joined ({i})");
            status(&last);
            if STATE.lock().unwrap().as_ref().unwrap().status_pending {
                break;
            }
        }
        assert!(STATE.lock().unwrap().as_ref().unwrap().status_pending, "the socket's queue never filled");
        assert!(t.elapsed() < Duration::from_secs(2), "a full socket blocked the sender");
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        while rx.recv(&mut buf).is_ok() {}
        rx.set_nonblocking(false).unwrap();
        watchdog();
        assert_eq!(recv(), format!("WATCHDOG=1\nSTATUS={last}"), "the dropped status comes with the next ping");
        watchdog();
        assert_eq!(recv(), "WATCHDOG=1");
        *STATE.lock().unwrap() = None;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_lines_are_one_line() {
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
    }
}
