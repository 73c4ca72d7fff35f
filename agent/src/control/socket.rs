//! The local control socket (`<run_dir>/<cluster>.sock`, mode 0600): one
//! request line, one reply line. The requests and replies, and their one
//! codec, are in [`super::protocol`] (docs/control-socket.md).
//!
//! The socket is served off the agent's event loop (docs/security.md): a
//! task accepts connections (at most [`MAX_CONNECTIONS`] at once; more are
//! answered `error: busy` and closed), checks each peer's credentials
//! (`SO_PEERCRED`: root, the agent's user, or `paths.socket_group`), reads
//! one request line of at most [`MAX_REQUEST_LINE`] bytes within
//! [`REQUEST_TIMEOUT`], parses it (a line that does not parse is answered
//! `error: <why>` here), and only then hands the request to the event loop,
//! which answers at once; the reply is written within
//! [`REQUEST_TIMEOUT`]. So a client that connects and sends nothing (a
//! forgotten `nc -U`) costs one connection slot for two seconds and never
//! delays membership.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::protocol::{ProtocolError, Reply, Request};
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

/// One parsed request for the event loop, and where its reply goes.
#[derive(Debug)]
pub struct Incoming {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}

/// Why a request to the agent got no reply it could read.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the agent at {}: {source} (is `baton run` running?)", socket.display())]
    Connect { socket: std::path::PathBuf, source: std::io::Error },
    #[error("talking to the agent at {}: {source}", socket.display())]
    Io { socket: std::path::PathBuf, source: std::io::Error },
    #[error("the agent at {} closed the connection without a reply to `{command}`", socket.display())]
    NoReply { socket: std::path::PathBuf, command: &'static str },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Sends one request to a running agent and returns its reply (an
/// `error: ...` reply is [`Reply::Error`], not an `Err`).
pub async fn call(socket: &Path, request: &Request) -> Result<Reply, CallError> {
    let line = request.encode()?;
    let io = |source| CallError::Io { socket: socket.to_path_buf(), source };
    let mut s = UnixStream::connect(socket).await.map_err(|source| CallError::Connect { socket: socket.to_path_buf(), source })?;
    s.write_all(format!("{line}\n").as_bytes()).await.map_err(io)?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).await.map_err(io)?;
    if reply.trim().is_empty() {
        return Err(CallError::NoReply { socket: socket.to_path_buf(), command: request.command() });
    }
    Ok(Reply::parse(&reply, request)?)
}

/// Serves `listener` (see the module doc): returns the receiver of
/// complete requests. The task ends when the receiver is dropped.
pub fn serve(listener: UnixListener, access: Access) -> mpsc::Receiver<Incoming> {
    let (tx, rx) = mpsc::channel(MAX_CONNECTIONS);
    tokio::spawn(accept_loop(listener, access, tx));
    rx
}

async fn accept_loop(listener: UnixListener, access: Access, tx: mpsc::Sender<Incoming>) {
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
            let _ = stream.try_write(format!("{}\n", Reply::Error(format!("permission denied: {why}"))).as_bytes());
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!("control socket: {MAX_CONNECTIONS} connections already served; refusing one");
            let _ = stream.try_write(format!("{}\n", Reply::error("busy (too many connections to the control socket)")).as_bytes());
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

async fn serve_one(mut s: UnixStream, tx: mpsc::Sender<Incoming>) {
    let (r, mut w) = s.split();
    let line = match tokio::time::timeout(REQUEST_TIMEOUT, read_line_limited(r, MAX_REQUEST_LINE)).await {
        // (An empty line, or a client that connected and closed without
        // a request, is answered `error: empty request` below: a write to a
        // closed connection just fails.)
        Ok(Ok(Some(l))) => l,
        Ok(Ok(None)) => {
            let refused = Reply::Error(format!("request longer than {MAX_REQUEST_LINE} bytes"));
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, w.write_all(format!("{refused}\n").as_bytes())).await;
            return;
        }
        Ok(Err(_)) => return,
        Err(_) => {
            debug!("control socket: no complete request within {REQUEST_TIMEOUT:?}; connection closed");
            let _ = w.try_write(format!("{}\n", Reply::Error(format!("no complete request line within {REQUEST_TIMEOUT:?}"))).as_bytes());
            return;
        }
    };
    let request = match Request::parse(&line) {
        Ok(r) => r,
        Err(e) => {
            debug!("control socket: refused request {line:?}: {e}");
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, w.write_all(format!("{}\n", Reply::error(e)).as_bytes())).await;
            return;
        }
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx.send(Incoming { request, reply: reply_tx }).await.is_err() {
        return;
    }
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, reply_rx).await {
        Ok(Ok(a)) => a,
        _ => Reply::error("the agent did not answer"),
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, w.write_all(format!("{answer}\n").as_bytes())).await;
}
