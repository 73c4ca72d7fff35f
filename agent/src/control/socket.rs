//! The local control socket (`<run_dir>/<cluster>.sock`, mode 0600): one
//! request line, one reply line.
//!
//! | request | reply |
//! |---|---|
//! | `ping` | `ok <incarnation>` |
//! | `reload [--all]` | `ok: reloaded ...` or `error: <why>` (docs/reload.md); `--all` asks every peer to reload its own file |
//! | `distress <reason>` | `ok` once the distress signal was sent |
//! | `switchover <group> [<node>]` | `ok` once handed to the services core (it asks the deciding node) |
//! | `standby <node>` / `unstandby <node>` | `ok` |
//! | `maintenance on\|off` | `ok` |
//! | `offline <group>` / `online <group>` | `ok` (S4.6 off-line mode, asked of the deciding node) |
//! | `group-state <group>` | `ok active\|busy\|idle\|unknown`: whether the group runs here, a run or halt of it is in progress, or neither (asked by a watchdog process, S4.5) |
//!
//! The socket is served off the agent's event loop (docs/security.md): a
//! task accepts connections (at most [`MAX_CONNECTIONS`] at once; more are
//! answered `error: busy` and closed), checks each peer's credentials
//! (`SO_PEERCRED`: root, the agent's user, or `paths.socket_group`), reads
//! one request line of at most [`MAX_REQUEST_LINE`] bytes within
//! [`REQUEST_TIMEOUT`], and only then hands the complete request to the
//! event loop, which answers at once; the reply is written within
//! [`REQUEST_TIMEOUT`]. So a client that connects and sends nothing (a
//! forgotten `nc -U`) costs one connection slot for two seconds and never
//! delays membership.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::localsock::Access;

/// The longest request line (bytes, without its newline).
pub const MAX_REQUEST_LINE: usize = 4096;
/// A client must send its whole request line within this, and read the
/// reply within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection waits for the event loop's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One request line for the event loop, and where its reply goes.
#[derive(Debug)]
pub struct Request {
    pub line: String,
    pub reply: oneshot::Sender<String>,
}

/// Sends one request to a running agent and returns its reply line.
pub async fn request(socket: &Path, line: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot reach the agent at {}: {e} (is `baton run` running?)", socket.display()))
    })?;
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).await?;
    Ok(reply.trim().to_string())
}

/// Serves `listener` (see the module doc): returns the receiver of
/// complete requests. The task ends when the receiver is dropped.
pub fn serve(listener: UnixListener, access: Access) -> mpsc::Receiver<Request> {
    let (tx, rx) = mpsc::channel(MAX_CONNECTIONS);
    tokio::spawn(accept_loop(listener, access, tx));
    rx
}

async fn accept_loop(listener: UnixListener, access: Access, tx: mpsc::Sender<Request>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut errors = 0u32;
    loop {
        let r = tokio::select! {
            r = listener.accept() => r,
            _ = tx.closed() => return,
        };
        let stream = match r {
            Ok((s, _)) => {
                errors = 0;
                s
            }
            Err(e) => {
                // Out of descriptors and the like: never the end of the agent.
                if errors < 3 {
                    warn!("control socket: accept failed: {e} (retrying)");
                }
                errors = errors.saturating_add(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(why) = access.check(&stream) {
            warn!("control socket: connection refused: {why}");
            let _ = stream.try_write(format!("error: permission denied: {why}\n").as_bytes());
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!("control socket: {MAX_CONNECTIONS} connections already served; refusing one");
            let _ = stream.try_write(b"error: busy (too many connections to the control socket)\n");
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            serve_one(stream, tx).await;
            drop(permit);
        });
    }
}

/// Reads one line of at most `max` bytes (without the newline): `Ok(None)`
/// when it is longer.
pub async fn read_line_limited<R: tokio::io::AsyncRead + Unpin>(r: R, max: usize) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let mut lim = BufReader::new(r).take(max as u64 + 1);
    lim.read_until(b'\n', &mut buf).await?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > max {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&buf).trim().to_string()))
}

async fn serve_one(mut s: UnixStream, tx: mpsc::Sender<Request>) {
    let (r, mut w) = s.split();
    let line = match tokio::time::timeout(REQUEST_TIMEOUT, read_line_limited(r, MAX_REQUEST_LINE)).await {
        // Connected and closed without a request: nothing to do.
        Ok(Ok(Some(l))) if l.is_empty() => return,
        Ok(Ok(Some(l))) => l,
        Ok(Ok(None)) => {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, w.write_all(format!("error: request longer than {MAX_REQUEST_LINE} bytes\n").as_bytes())).await;
            return;
        }
        Ok(Err(_)) => return,
        Err(_) => {
            debug!("control socket: no complete request within {REQUEST_TIMEOUT:?}; connection closed");
            let _ = w.try_write(format!("error: no complete request line within {REQUEST_TIMEOUT:?}\n").as_bytes());
            return;
        }
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx.send(Request { line, reply: reply_tx }).await.is_err() {
        return;
    }
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, reply_rx).await {
        Ok(Ok(a)) => a,
        _ => "error: the agent did not answer".to_string(),
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, w.write_all(format!("{answer}\n").as_bytes())).await;
}

/// Distress reasons by name (S0.1).
pub fn reason_code(name: &str) -> Option<u32> {
    Some(match name {
        "communication" => baton_common::DISTRESS_COMMUNICATION,
        "protocol" => baton_common::DISTRESS_PROTOCOL,
        "component" => baton_common::DISTRESS_COMPONENT,
        "corruption" => baton_common::DISTRESS_CORRUPTION,
        "admin" => baton_common::DISTRESS_ADMIN,
        _ => return None,
    })
}
