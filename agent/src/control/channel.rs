//! The control channel: authenticated, encrypted message streams between
//! agents, over every configured link, with reconnection.
//!
//! The membership cores (`baton_core::membership`) exchange [`Msg`] values;
//! this module carries them between nodes. Hand the channel a `Msg` and a
//! node id with [`Channel::send`]; take what peers sent from the receiver
//! returned by [`Channel::start`].
//!
//! ## Security
//! The crypto is the [Noise protocol framework](https://noiseprotocol.org)
//! (the `snow` crate), pattern [`NOISE_PARAMS`] =
//! `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`: an ephemeral X25519 exchange
//! (forward secrecy) mixed with a 32-byte pre-shared key, ChaCha20-Poly1305
//! for every frame after the handshake. No static keys: a node is
//! authenticated as *a holder of the cluster secret*, exactly as the
//! heartbeat datapath authenticates it. (So a node holding the secret can
//! claim any node id in its hello; that is the trust model of the whole
//! cluster, whose secret is shared by every node.)
//!
//! The PSK is derived from the cluster's 128-bit secret (the file that
//! `baton keygen` writes and the datapath uses) with domain separation, so
//! that the datapath's SipHash key and the channel key are never the same
//! bytes, and two clusters sharing a secret by mistake still cannot talk:
//!
//! ```text
//! psk = BLAKE2s-256( "baton control channel v1" || cluster_id (u32, big-endian) || secret (16 bytes) )
//! ```
//!
//! (see [`derive_psk`]). A peer with another secret or another cluster id
//! fails the first handshake message: its connection is closed and counted
//! in [`ChannelStats::handshake_failures`].
//!
//! ## Transport and wire format
//! TCP. Every node listens on `(its address on link i, port)` for every link
//! i. For each pair of nodes, the node with the LOWER id dials the higher
//! one, once per link (from its own address on that link), and redials with
//! a backoff of 50 ms doubling to 1 s whenever the connection fails or drops.
//! When the agent's datapath hears the peer come up on a link (its
//! heartbeats: a new peer, a restart, the end of a silence), the agent calls
//! [`Channel::peer_heard`]: the dialer of that link dials at once and, if
//! that fails (the peer's agent sends heartbeats a moment before its control
//! channel listens), every [`FAST_REDIAL`] for [`FAST_REDIAL_FOR`], then
//! backs off as before. So a peer that starts while the backoff is long is
//! reached within milliseconds of its first heartbeat instead of up to 1 s
//! later, and a peer that is down (no heartbeats) is not redialed any faster
//! than before: the fast redials are bounded by the peer's up events, at most
//! `FAST_REDIAL_FOR / FAST_REDIAL` attempts each.
//!
//! Everything on the wire is a frame: a `u16` big-endian length, then that
//! many bytes of Noise message.
//! 1. Handshake: the dialer (Noise initiator) sends `-> psk, e` (48 bytes),
//!    the listener answers `<- e, ee` (48 bytes). Handshake payloads are
//!    empty.
//! 2. Then transport messages, whose plaintext is one type byte and a body:
//!    * `0` HELLO: node id (u32 BE), cluster id (u32 BE), incarnation
//!      (u64 BE). The dialer sends its hello first, the listener answers
//!      with its own. A hello with another cluster id, or from a node that
//!      is not a configured peer (or, at the listener, not a lower-id peer,
//!      or at the dialer, not the node it dialed) closes the connection,
//!      counted in [`ChannelStats::hello_rejects`] (and in
//!      `handshake_failures`).
//!    * `1` MSG: a `Msg`, encoded with `serde_json` (self-describing, easy
//!      to read when debugging, already a dependency; the core's maps are
//!      keyed by integers, which JSON carries). A message longer than
//!      [`CHUNK_LEN`] goes as `4` PART frames of `CHUNK_LEN` bytes of its
//!      body and a last frame of its own type with the rest; the receiver
//!      joins them. At most [`MAX_MSG_LEN`]
//!      bytes: [`Channel::try_send`] rejects bigger messages with
//!      [`ChannelError::TooLarge`]. The cores' messages are a few KB, up
//!      to about 10 KB (the state of 32 nodes in a mass join; it was about
//!      25 KB before `LevelSpec`s were encoded compactly).
//!    * `2` KEEPALIVE: empty; sent when nothing else was sent for
//!      [`KEEPALIVE_INTERVAL`].
//!
//! A connection on which nothing arrives for [`IDLE_TIMEOUT`] is closed
//! (and redialed), so a peer that vanished without a FIN/RST (power cut,
//! link cut) is noticed. The handshake and both hellos must complete within
//! [`HANDSHAKE_TIMEOUT`]. A new session with a peer on a link replaces the
//! older one (a peer that restarted redials before its old connection timed
//! out); the hello's incarnation is shown in [`ChannelStats::peers`].
//!
//! Not supported: IPv6 link-local addresses (no scope id is configured). A
//! listener that cannot bind (the link's address is not up yet) fails
//! [`Channel::start`] with [`ChannelError::Bind`]; a dialer whose local
//! address is missing retries like any failed connection.
//!
//! ## Robustness
//! Nothing received from the network panics. Garbage or a wrong key during
//! the handshake, a frame that does not decrypt, a frame longer than any
//! this protocol sends, or an unknown frame type closes that connection only
//! (with a `warn!` naming the peer address; repeats from the same address
//! within 30 s are logged at debug level) and counts in
//! `handshake_failures` / `bad_frames`. A MSG that decrypts (so it came from
//! a holder of the secret) but does not decode as a `Msg` (another version
//! of baton) is skipped and counted in `bad_frames`; the connection stays.
//!
//! Connections before authentication are bounded, so that a host on the
//! cluster network without the key cannot exhaust the agent's descriptors
//! or memory (docs/security.md):
//! * a listener admits connections only from a configured peer's address
//!   (any link); others are closed at once and counted in
//!   [`ChannelStats::preauth_rejected`];
//! * the first handshake message must arrive within [`FIRST_FRAME_TIMEOUT`]
//!   (the dialer sends it as soon as it connected), the whole handshake and
//!   hellos within [`HANDSHAKE_TIMEOUT`];
//! * at most [`PREAUTH_PER_SOURCE`] connections per source address may be
//!   pending at once: a new one closes that address's oldest pending one
//!   (counted in [`ChannelStats::preauth_evicted`]), so a flood from a
//!   peer's address cannot lock that peer's own redial out (its real dial
//!   sends its first message within a round trip, long before the flood
//!   evicts it); at most [`PREAUTH_TOTAL`] in all (more are closed at once);
//! * a failed `accept` (out of descriptors: `EMFILE`/`ENFILE`, a connection
//!   aborted before it was accepted) is logged and retried after 100 ms:
//!   it never ends the agent. The agent also raises its `RLIMIT_NOFILE`
//!   soft limit to the hard limit at start (`baton run`).
//!
//! [`Channel::send`] never blocks: each connection has a bounded queue
//! ([`QUEUE_LEN`] messages); a message for a full queue is dropped and
//! counted in `frames_dropped`. A message goes over every link to the peer
//! that is up, so a peer usually receives it once per link: the cores are
//! idempotent, and this module does not deduplicate.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baton_core::membership::Msg;
use baton_core::services::Msg as SvcMsg;
use blake2::{Blake2s256, Digest};
use serde::Serialize;
use snow::{HandshakeState, TransportState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// A fencing notice between agents (control channel, `FRAME_FENCE`): the
/// sender fenced `node`'s life `incarnation` (its key is off the disks), by
/// its own PREEMPT AND ABORT or because an operator confirmed it (`baton
/// fence confirm`). Every survivor takes it as its own fencing of that life
/// done: the forced leave needs one survivor that reaches the disks, not
/// all, and a confirmation given on any node counts on every node.
/// (`services::fencing` uses it; it is defined with the transport so that
/// the transport depends on none of its users.)
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FenceMsg {
    Fenced { node: u32, incarnation: u64, by_operator: bool },
}

/// Messages between the old and the new node of a handover
/// (`services::handover`; defined here like [`FenceMsg`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HandoverMsg {
    /// Old → new: prepare `group` (handover `id`).
    Prepare { group: String, id: u64 },
    /// New → old: prepared; `mac` is the new node's address on the group's
    /// interface.
    Ready { group: String, id: u64, mac: [u8; 6] },
    /// New → old: could not prepare.
    Failed { group: String, id: u64, reason: String },
    /// Old → new: the handover is off; undo the preparation.
    Abort { group: String, id: u64 },
}

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// The domain-separation label of the PSK derivation.
pub const PSK_LABEL: &[u8] = b"baton control channel v1";
/// The largest encoded message [`Channel::try_send`] accepts (1 MiB).
pub const MAX_MSG_LEN: usize = 1024 * 1024;
/// The largest message body carried by one frame; a longer message goes as
/// [`FRAME_PART`] frames of this size and a last frame of its own type.
/// (A frame's length is a u16. The whole state of a 32-node cluster in the
/// middle of a mass join is about 10 KB of JSON; bigger clusters, or many
/// registered levels, need more than one frame.)
pub const CHUNK_LEN: usize = 60 * 1024;
/// The Noise AEAD tag length.
const TAG_LEN: usize = 16;
/// The largest frame body (Noise message) this protocol sends; a longer one
/// is a bad frame.
pub const MAX_FRAME_LEN: usize = 1 + CHUNK_LEN + TAG_LEN;
/// The largest handshake frame accepted (the real ones are 48 bytes).
const MAX_HANDSHAKE_FRAME_LEN: usize = 256;
/// Frame types (the first plaintext byte of a transport message).
pub const FRAME_HELLO: u8 = 0;
pub const FRAME_MSG: u8 = 1;
pub const FRAME_KEEPALIVE: u8 = 2;
/// A message of the services cores (`baton_core::services::Msg`).
pub const FRAME_SVC: u8 = 3;
/// A leading part of a message longer than [`CHUNK_LEN`]: the body bytes
/// continue in the next frame (parts, then a MSG or SVC frame with the rest).
pub const FRAME_PART: u8 = 4;
/// A message between the agents of a planned handover
/// ([`crate::services::handover::HandoverMsg`]).
pub const FRAME_HANDOVER: u8 = 5;
/// A fencing notice ([`crate::services::fencing::FenceMsg`]).
pub const FRAME_FENCE: u8 = 6;
/// A message of a topic the channel does not know ([`AppMsg`]): the
/// runtime's newer parts (the negotiated takeover) use it.
pub const FRAME_APP: u8 = 7;

/// A message of a topic: a name and a JSON body, for the runtime's parts
/// that need no frame type of their own.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AppMsg {
    pub topic: String,
    pub body: serde_json::Value,
}
/// The hello body length (after the type byte).
const HELLO_LEN: usize = 16;

/// Per-connection send queue, in messages.
pub const QUEUE_LEN: usize = 256;
/// The receiver returned by [`Channel::start`] holds this many messages.
pub const INBOX_LEN: usize = 1024;
/// A keepalive is sent after this long without sending anything.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// A connection on which nothing arrived for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// The handshake and hellos must complete within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// The listener closes a connection whose first handshake frame (the
/// dialer sends it right after connecting) has not arrived within this.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this many connections from one source address may be before
/// their session is up (pre-authentication) at once: a new one closes the
/// oldest (see "Robustness" in the module doc).
pub const PREAUTH_PER_SOURCE: usize = 8;
/// The nice value of the pre-authentication thread ([`PreauthThread`]).
pub const PREAUTH_NICE: libc::c_int = 10;
/// At most this many pre-authentication connections in total; more are
/// closed at once.
pub const PREAUTH_TOTAL: usize = 64;
/// Dialing gives up after this (then backs off and retries).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Redial backoff: from MIN, doubling, up to MAX.
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// After [`Channel::peer_heard`]: redial at once, then at this period ...
pub const FAST_REDIAL: Duration = Duration::from_millis(25);
/// ... for this long (then the backoff again).
pub const FAST_REDIAL_FOR: Duration = Duration::from_secs(1);

/// The channel's configuration.
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// This node's id.
    pub me: u32,
    pub cluster_id: u32,
    /// This run of the agent (sent in the hello).
    pub incarnation: u64,
    /// The cluster's 128-bit secret; the PSK is derived from it ([`derive_psk`]).
    pub psk_secret: [u8; 16],
    /// The TCP port, the same on every node and link (by default the heartbeat port + 1).
    pub port: u16,
    /// My address on each link, in link order.
    pub links: Vec<IpAddr>,
    /// Every other node: its id and its address on each link (same order as `links`).
    pub peers: Vec<(u32, Vec<IpAddr>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("control channel: cannot listen on {addr} port {port}: {source}")]
    Bind {
        addr: IpAddr,
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("control channel configuration: {reason}")]
    Config { reason: String },
    #[error("control channel configuration: noise setup ({params}): {source}", params = NOISE_PARAMS)]
    Noise {
        #[source]
        source: snow::Error,
    },
    #[error("control channel: node {node} is not a configured peer")]
    UnknownPeer { node: u32 },
    #[error("control channel: no link to node {node} is up")]
    NotConnected { node: u32 },
    #[error("control channel: a message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("control channel: cannot encode a message: {source}")]
    Encode {
        #[source]
        source: serde_json::Error,
    },
    #[error("control channel configuration: cannot start the pre-authentication thread: {source}")]
    PreauthThread {
        #[source]
        source: io::Error,
    },
    #[error("control channel configuration: cannot build the pre-authentication runtime: {source}")]
    PreauthRuntime {
        #[source]
        source: io::Error,
    },
    #[error("control channel configuration: link {link}: cannot serve the listener: {source}")]
    PreauthListener {
        link: usize,
        #[source]
        source: io::Error,
    },
    #[error("control channel configuration: the pre-authentication thread ended at start")]
    PreauthEnded,
}

/// A decrypted frame that ends the connection ([`Reassembly::push`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a message longer than {max} bytes", max = MAX_MSG_LEN)]
    TooLong,
    #[error("message parts followed by frame type {kind:?}")]
    PartsThen { kind: Option<u8> },
    #[error("unexpected frame type {kind:?} ({len} bytes)")]
    Unexpected { kind: Option<u8>, len: usize },
}

/// A hello's plaintext that is not a hello ([`decode_hello_plain`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a hello frame, got type {kind:?}, {len} bytes")]
pub struct BadHello {
    pub kind: Option<u8>,
    pub len: usize,
}

/// The links to one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerLinks {
    /// Per link (in link order): whether a session is up on it.
    pub up: Vec<bool>,
    /// The peer's incarnation, from the hello of its latest session.
    pub incarnation: Option<u64>,
}

impl PeerLinks {
    /// How many links to the peer are up.
    pub fn links_up(&self) -> usize {
        self.up.iter().filter(|u| **u).count()
    }
}

/// Counters since [`Channel::start`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChannelStats {
    /// Every configured peer.
    pub peers: BTreeMap<u32, PeerLinks>,
    /// MSG frames written to a socket (one per link a message went over).
    pub frames_sent: u64,
    /// MSG frames received and decoded.
    pub frames_received: u64,
    /// Messages dropped because a connection's queue was full.
    pub frames_dropped: u64,
    /// Connections closed before their session was up: a wrong key,
    /// garbage, a timeout, or a rejected hello.
    pub handshake_failures: u64,
    /// Of those, hellos rejected (wrong cluster id, unknown or unexpected node id).
    pub hello_rejects: u64,
    /// Frames after the handshake that did not decrypt, were too long, had an
    /// unknown type, or did not decode.
    pub bad_frames: u64,
    /// Sessions that came up (handshake and hellos done).
    pub sessions: u64,
    /// TCP connections made (dialed or accepted), before any handshake:
    /// the path to a peer works (the self-check's communication reason).
    pub connections: u64,
    /// Accepted connections closed at once: from an address that is no
    /// configured peer's, or over [`PREAUTH_TOTAL`].
    pub preauth_rejected: u64,
    /// Pre-authentication connections closed because a newer one came from
    /// the same address while it had [`PREAUTH_PER_SOURCE`].
    pub preauth_evicted: u64,
}

/// Derives the channel's 32-byte Noise PSK from the cluster secret (see the module doc).
pub fn derive_psk(cluster_id: u32, secret: &[u8; 16]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(PSK_LABEL);
    h.update(cluster_id.to_be_bytes());
    h.update(secret);
    h.finalize().into()
}

/// A running control channel. Dropping it stops every task (without
/// waiting); [`Channel::shutdown`] also waits until every socket is closed.
pub struct Channel {
    shared: Arc<Shared>,
    /// The pre-authentication thread (listeners and handshakes of accepted
    /// connections); it ends when this is dropped or shut down.
    preauth: Option<PreauthThread>,
}

/// The thread that accepts connections and runs their handshakes, on its
/// own single-threaded runtime at a lower CPU priority (nice +10), so that a
/// flood of connections cannot delay the established sessions and the event
/// loop on the agent's runtime. A connection whose handshake succeeded
/// continues on the agent's runtime.
struct PreauthThread {
    /// Dropped: the thread's runtime stops (closing the listeners and the
    /// pending connections).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Fires when the thread has ended.
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl PreauthThread {
    fn start(s: Arc<Shared>, listeners: Vec<std::net::TcpListener>) -> Result<PreauthThread, ChannelError> {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        // The runtime is built (and dropped) on the thread itself: a runtime
        // must not be dropped inside the agent's async context.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), ChannelError>>(1);
        std::thread::Builder::new()
            .name("baton-preauth".into())
            .spawn(move || {
                // A lower priority than the agent's other threads: under a
                // flood this thread's work waits, not theirs.
                // SAFETY: plain syscalls on this thread's own id.
                unsafe {
                    // nix 0.29 has no setpriority: libc's.
                    let tid = nix::unistd::gettid().as_raw() as libc::id_t;
                    libc::setpriority(libc::PRIO_PROCESS, tid, PREAUTH_NICE);
                }
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(source) => {
                        let _ = ready_tx.send(Err(ChannelError::PreauthRuntime { source }));
                        return;
                    }
                };
                rt.block_on(async move {
                    for (link, l) in listeners.into_iter().enumerate() {
                        match TcpListener::from_std(l) {
                            Ok(l) => {
                                tokio::spawn(listen_loop(s.clone(), link, l));
                            }
                            Err(source) => {
                                let _ = ready_tx.send(Err(ChannelError::PreauthListener { link, source }));
                                return;
                            }
                        }
                    }
                    drop(s);
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.await;
                });
                // Dropping the runtime drops its tasks: listeners and pending
                // connections are closed before `done` fires.
                drop(rt);
                let _ = done_tx.send(());
            })
            .map_err(|source| ChannelError::PreauthThread { source })?;
        // Waits for the thread's start (a few microseconds).
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(ChannelError::PreauthEnded),
        }
        Ok(PreauthThread { stop: Some(stop), done: Some(done) })
    }
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    frames_dropped: AtomicU64,
    handshake_failures: AtomicU64,
    hello_rejects: AtomicU64,
    bad_frames: AtomicU64,
    sessions: AtomicU64,
    connections: AtomicU64,
    preauth_rejected: AtomicU64,
    preauth_evicted: AtomicU64,
}

/// The connections accepted whose session is not up yet, per source
/// address (oldest first), each with the sender that closes it early.
#[derive(Default)]
struct Preauth {
    total: usize,
    next_id: u64,
    by_src: BTreeMap<IpAddr, std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>>,
}

/// A pre-authentication connection's place in [`Preauth`]; released on drop.
struct PreauthTicket {
    shared: Arc<Shared>,
    ip: IpAddr,
    id: u64,
}

impl Drop for PreauthTicket {
    fn drop(&mut self) {
        let mut p = lock(&self.shared.preauth);
        let mut emptied = false;
        let mut found = false;
        if let Some(q) = p.by_src.get_mut(&self.ip) {
            if let Some(i) = q.iter().position(|(id, _)| *id == self.id) {
                q.remove(i);
                found = true;
            }
            emptied = q.is_empty();
        }
        if found {
            p.total -= 1;
        }
        if emptied {
            p.by_src.remove(&self.ip);
        }
    }
}

/// A session's entry in the connection table.
struct Conn {
    gen: u64,
    tx: mpsc::Sender<Arc<[u8]>>,
}

struct PeerSlot {
    links: Vec<Option<Conn>>,
    incarnation: Option<u64>,
}

struct Tasks {
    set: JoinSet<()>,
    closed: bool,
}

struct Shared {
    me: u32,
    cluster_id: u32,
    incarnation: u64,
    psk: [u8; 32],
    port: u16,
    conns: Mutex<BTreeMap<u32, PeerSlot>>,
    inbox: mpsc::Sender<(u32, Msg)>,
    svc_inbox: mpsc::Sender<(u32, SvcMsg)>,
    /// The receiver of services messages, until taken.
    svc_rx: Mutex<Option<mpsc::Receiver<(u32, SvcMsg)>>>,
    ho_inbox: mpsc::Sender<(u32, HandoverMsg)>,
    ho_rx: Mutex<Option<mpsc::Receiver<(u32, HandoverMsg)>>>,
    fence_inbox: mpsc::Sender<(u32, FenceMsg)>,
    fence_rx: Mutex<Option<mpsc::Receiver<(u32, FenceMsg)>>>,
    app_inbox: mpsc::Sender<(u32, AppMsg)>,
    app_rx: Mutex<Option<mpsc::Receiver<(u32, AppMsg)>>>,
    /// Per peer this node dials, per link: a counter bumped by
    /// [`Channel::peer_heard`], watched by that link's dial loop.
    heard: BTreeMap<u32, Vec<watch::Sender<u64>>>,
    tasks: Mutex<Tasks>,
    next_gen: AtomicU64,
    counters: Counters,
    /// Every configured peer's address on every link: the only sources the
    /// listeners admit.
    allowed: std::collections::BTreeSet<IpAddr>,
    preauth: Mutex<Preauth>,
    /// The agent's runtime: sessions run there once authenticated (the
    /// pre-authentication work runs on [`PreauthThread`]).
    main: tokio::runtime::Handle,
    /// When a failed handshake from/to an address was last logged at warn
    /// level (a misconfigured peer retries every second: warn once per
    /// [`WARN_EVERY`], debug otherwise).
    warned: Mutex<HashMap<IpAddr, tokio::time::Instant>>,
}

const WARN_EVERY: Duration = Duration::from_secs(30);

/// Locks, ignoring poisoning (no code here panics while holding a lock, and
/// none of the guarded data can be left half-updated).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Channel {
    /// Binds a listener on every link, starts dialing every higher-id peer
    /// on every link, and returns the channel and the receiver of
    /// `(sender node id, message)`.
    pub async fn start(cfg: ChannelConfig) -> Result<(Channel, mpsc::Receiver<(u32, Msg)>), ChannelError> {
        validate(&cfg)?;
        // Fail early (and in the caller's terms) if the Noise parameters do not build.
        let psk = derive_psk(cfg.cluster_id, &cfg.psk_secret);
        noise_builder(&psk).and_then(|b| b.build_initiator()).map_err(|source| ChannelError::Noise { source })?;

        let mut listeners = Vec::with_capacity(cfg.links.len());
        for &addr in &cfg.links {
            // Served by the pre-authentication thread's runtime.
            let l = bind(addr, cfg.port)?;
            listeners.push(l.into_std().map_err(|source| ChannelError::Bind { addr, port: cfg.port, source })?);
        }
        let (inbox, rx) = mpsc::channel(INBOX_LEN);
        let (svc_inbox, svc_rx) = mpsc::channel(INBOX_LEN);
        let (ho_inbox, ho_rx) = mpsc::channel(INBOX_LEN);
        let (fence_inbox, fence_rx) = mpsc::channel(INBOX_LEN);
        let (app_inbox, app_rx) = mpsc::channel(INBOX_LEN);
        let conns = cfg
            .peers
            .iter()
            .map(|(id, _)| (*id, PeerSlot { links: (0..cfg.links.len()).map(|_| None).collect(), incarnation: None }))
            .collect();
        let shared = Arc::new(Shared {
            me: cfg.me,
            cluster_id: cfg.cluster_id,
            incarnation: cfg.incarnation,
            psk,
            port: cfg.port,
            conns: Mutex::new(conns),
            inbox,
            svc_inbox,
            svc_rx: Mutex::new(Some(svc_rx)),
            ho_inbox,
            ho_rx: Mutex::new(Some(ho_rx)),
            fence_inbox,
            fence_rx: Mutex::new(Some(fence_rx)),
            app_inbox,
            app_rx: Mutex::new(Some(app_rx)),
            heard: cfg
                .peers
                .iter()
                .filter(|(id, _)| *id > cfg.me)
                .map(|(id, _)| (*id, (0..cfg.links.len()).map(|_| watch::channel(0u64).0).collect()))
                .collect(),
            tasks: Mutex::new(Tasks { set: JoinSet::new(), closed: false }),
            next_gen: AtomicU64::new(1),
            counters: Counters::default(),
            warned: Mutex::new(HashMap::new()),
            allowed: cfg.peers.iter().flat_map(|(_, a)| a.iter().copied()).collect(),
            preauth: Mutex::new(Preauth::default()),
            main: tokio::runtime::Handle::current(),
        });
        let preauth = PreauthThread::start(shared.clone(), listeners)?;
        for (peer, addrs) in &cfg.peers {
            if *peer <= cfg.me {
                continue; // it dials me
            }
            for (link, (&local, &remote)) in cfg.links.iter().zip(addrs).enumerate() {
                let s = shared.clone();
                let heard = shared.heard[peer][link].subscribe();
                shared.spawn(dial_loop(s, *peer, link, local, remote, heard));
            }
        }
        info!(me = cfg.me, port = cfg.port, links = cfg.links.len(), peers = cfg.peers.len(), "control channel started");
        Ok((Channel { shared, preauth: Some(preauth) }, rx))
    }

    /// Sends `msg` to node `to` over every link to it that is up. Returns
    /// whether it was queued on at least one link: false when no link to it
    /// is up, when every queue to it was full (counted in `frames_dropped`),
    /// or on an error of [`Channel::try_send`] (logged). Never blocks.
    pub fn send(&self, to: u32, msg: &Msg) -> bool {
        match self.try_send(to, msg) {
            Ok(n) => n > 0,
            Err(ChannelError::NotConnected { .. }) => false,
            Err(e) => {
                warn!("{e}");
                false
            }
        }
    }

    /// Like [`Channel::send`], with the reason: `Ok(n)` = queued on `n`
    /// links (0 if every queue to the peer was full: dropped and counted);
    /// [`ChannelError::NotConnected`] if no link to `to` is up;
    /// [`ChannelError::UnknownPeer`], [`ChannelError::TooLarge`] (more than
    /// [`MAX_MSG_LEN`] bytes encoded), [`ChannelError::Encode`]. Never blocks.
    pub fn try_send(&self, to: u32, msg: &Msg) -> Result<usize, ChannelError> {
        if !self.is_up(to)? {
            return Err(ChannelError::NotConnected { node: to });
        }
        let plain = Self::encode(msg)?;
        self.send_encoded(to, &plain)
    }

    /// The receiver of `(sender, services message)`; `None` after the
    /// first call.
    pub fn take_services_inbox(&self) -> Option<mpsc::Receiver<(u32, SvcMsg)>> {
        lock(&self.shared.svc_rx).take()
    }

    /// Sends a services message to `to` over every link that is up (the
    /// services cores ignore duplicates). Returns whether it was queued.
    pub fn send_services(&self, to: u32, msg: &SvcMsg) -> bool {
        if !matches!(self.is_up(to), Ok(true)) {
            return false;
        }
        match encode_frame(FRAME_SVC, msg) {
            Ok(plain) => matches!(self.send_encoded(to, &plain), Ok(n) if n > 0),
            Err(e) => {
                warn!("services message not sent: {e}");
                false
            }
        }
    }

    /// The receiver of `(sender, handover message)`; `None` after the
    /// first call.
    pub fn take_handover_inbox(&self) -> Option<mpsc::Receiver<(u32, HandoverMsg)>> {
        lock(&self.shared.ho_rx).take()
    }

    /// The receiver of `(sender, fencing notice)`; `None` after the first call.
    pub fn take_fence_inbox(&self) -> Option<mpsc::Receiver<(u32, FenceMsg)>> {
        lock(&self.shared.fence_rx).take()
    }

    /// Sends a fencing notice to `to` over every link that is up; whether
    /// it was queued.
    pub fn send_fence(&self, to: u32, msg: &FenceMsg) -> bool {
        if !matches!(self.is_up(to), Ok(true)) {
            return false;
        }
        match encode_frame(FRAME_FENCE, msg) {
            Ok(plain) => matches!(self.send_encoded(to, &plain), Ok(n) if n > 0),
            Err(e) => {
                warn!("fencing notice not sent: {e}");
                false
            }
        }
    }

    /// The receiver of `(sender, topic message)`; `None` after the first call.
    pub fn take_app_inbox(&self) -> Option<mpsc::Receiver<(u32, AppMsg)>> {
        lock(&self.shared.app_rx).take()
    }

    /// Sends `body` on `topic` to `to` over every link that is up; whether
    /// it was queued.
    pub fn send_app<T: serde::Serialize>(&self, to: u32, topic: &str, body: &T) -> bool {
        if !matches!(self.is_up(to), Ok(true)) {
            return false;
        }
        let msg = match serde_json::to_value(body) {
            Ok(b) => AppMsg { topic: topic.to_string(), body: b },
            Err(e) => {
                warn!(topic, "message not sent: {e}");
                return false;
            }
        };
        match encode_frame(FRAME_APP, &msg) {
            Ok(plain) => matches!(self.send_encoded(to, &plain), Ok(n) if n > 0),
            Err(e) => {
                warn!(topic, "message not sent: {e}");
                false
            }
        }
    }

    /// A handle that sends topic messages from a task.
    pub fn app_sender(&self) -> AppSender {
        AppSender { shared: self.shared.clone() }
    }

    /// A handle that sends handover messages from a task.
    pub fn handover_sender(&self) -> HandoverSender {
        HandoverSender { shared: self.shared.clone() }
    }

    /// The datapath heard `node` come up on `link` (`None`: on some link):
    /// if this node dials it, dial that link at once and retry quickly for a
    /// moment (see the module doc). Cheap; a no-op for a peer that dials us.
    pub fn peer_heard(&self, node: u32, link: Option<usize>) {
        if let Some(links) = self.shared.heard.get(&node) {
            for (i, tx) in links.iter().enumerate() {
                if link.is_none_or(|l| l == i) {
                    tx.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        }
    }

    /// Whether a link to `to` is up (an unknown node is an error).
    pub fn is_up(&self, to: u32) -> Result<bool, ChannelError> {
        self.shared.is_up(to)
    }

    /// Encodes `msg` once, for [`Channel::send_encoded`] to several peers.
    pub fn encode(msg: &Msg) -> Result<Arc<[u8]>, ChannelError> {
        encode_frame(FRAME_MSG, msg)
    }

    /// Queues a message encoded by [`Channel::encode`]; see [`Channel::try_send`].
    pub fn send_encoded(&self, to: u32, plain: &Arc<[u8]>) -> Result<usize, ChannelError> {
        self.shared.send_encoded(to, plain)
    }

    pub fn stats(&self) -> ChannelStats {
        let s = &self.shared;
        let c = &s.counters;
        let peers = lock(&s.conns)
            .iter()
            .map(|(id, slot)| (*id, PeerLinks { up: slot.links.iter().map(|l| l.as_ref().is_some_and(|c| !c.tx.is_closed())).collect(), incarnation: slot.incarnation }))
            .collect();
        ChannelStats {
            peers,
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
            frames_dropped: c.frames_dropped.load(Ordering::Relaxed),
            handshake_failures: c.handshake_failures.load(Ordering::Relaxed),
            hello_rejects: c.hello_rejects.load(Ordering::Relaxed),
            bad_frames: c.bad_frames.load(Ordering::Relaxed),
            sessions: c.sessions.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
            preauth_rejected: c.preauth_rejected.load(Ordering::Relaxed),
            preauth_evicted: c.preauth_evicted.load(Ordering::Relaxed),
        }
    }

    /// Stops every task and waits until every listener and connection is
    /// closed (so the ports can be bound again at once). The receiver then
    /// yields the messages still queued, then `None`.
    pub async fn shutdown(mut self) {
        if let Some(mut p) = self.preauth.take() {
            drop(p.stop.take());
            if let Some(done) = p.done.take() {
                let _ = done.await;
            }
        }
        let mut set = {
            let mut t = lock(&self.shared.tasks);
            t.closed = true;
            std::mem::replace(&mut t.set, JoinSet::new())
        };
        set.abort_all();
        while set.join_next().await.is_some() {}
        for slot in lock(&self.shared.conns).values_mut() {
            slot.links.iter_mut().for_each(|l| *l = None);
        }
        info!(me = self.shared.me, "control channel stopped");
    }
}

/// Sends topic messages from a task (see [`Channel::app_sender`]); sends
/// fail (return `false`) once the channel is gone.
#[derive(Clone)]
pub struct AppSender {
    shared: Arc<Shared>,
}

impl AppSender {
    pub fn send<T: serde::Serialize>(&self, to: u32, topic: &str, body: &T) -> bool {
        if lock(&self.shared.tasks).closed || !matches!(self.shared.is_up(to), Ok(true)) {
            return false;
        }
        let Ok(body) = serde_json::to_value(body) else { return false };
        match encode_frame(FRAME_APP, &AppMsg { topic: topic.to_string(), body }) {
            Ok(plain) => matches!(self.shared.send_encoded(to, &plain), Ok(n) if n > 0),
            Err(e) => {
                warn!(topic, "message not sent: {e}");
                false
            }
        }
    }
}

/// Sends handover messages (see [`Channel::handover_sender`]); sends fail
/// (return `false`) once the channel is gone.
#[derive(Clone)]
pub struct HandoverSender {
    shared: Arc<Shared>,
}

impl HandoverSender {
    /// Sends `msg` to `to` over every link that is up; whether it was queued.
    pub fn send(&self, to: u32, msg: &HandoverMsg) -> bool {
        if lock(&self.shared.tasks).closed || !matches!(self.shared.is_up(to), Ok(true)) {
            return false;
        }
        match encode_frame(FRAME_HANDOVER, msg) {
            Ok(plain) => matches!(self.shared.send_encoded(to, &plain), Ok(n) if n > 0),
            Err(e) => {
                warn!("handover message not sent: {e}");
                false
            }
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // Tasks hold the shared state: abort them, or they would run forever.
        let mut t = lock(&self.shared.tasks);
        t.closed = true;
        t.set.abort_all();
    }
}

impl Shared {
    fn is_up(&self, to: u32) -> Result<bool, ChannelError> {
        let conns = lock(&self.conns);
        let slot = conns.get(&to).ok_or(ChannelError::UnknownPeer { node: to })?;
        Ok(slot.links.iter().flatten().any(|c| !c.tx.is_closed()))
    }

    fn send_encoded(&self, to: u32, plain: &Arc<[u8]>) -> Result<usize, ChannelError> {
        let s = self;
        let conns = lock(&s.conns);
        let slot = conns.get(&to).ok_or(ChannelError::UnknownPeer { node: to })?;
        let (mut up, mut queued) = (0, 0);
        for c in slot.links.iter().flatten() {
            up += 1;
            match c.tx.try_send(plain.clone()) {
                Ok(()) => queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => bump(&s.counters.frames_dropped),
                // The session is ending; it removes itself from the table.
                Err(mpsc::error::TrySendError::Closed(_)) => up -= 1,
            }
        }
        if up == 0 {
            return Err(ChannelError::NotConnected { node: to });
        }
        Ok(queued)
    }

    /// Whether a handshake failure with `ip` should be logged at warn level now.
    fn should_warn(&self, ip: IpAddr) -> bool {
        let now = tokio::time::Instant::now();
        let mut w = lock(&self.warned);
        if w.len() > 1024 {
            w.clear(); // many addresses: a scan; don't grow without bound
        }
        match w.get(&ip) {
            Some(t) if now.duration_since(*t) < WARN_EVERY => false,
            _ => {
                w.insert(ip, now);
                true
            }
        }
    }

    /// Admits an accepted connection from `ip` before its authentication:
    /// only from a configured peer's address, at most [`PREAUTH_TOTAL`] in
    /// all, and at most [`PREAUTH_PER_SOURCE`] per address (a new one
    /// closes that address's oldest). `None`: close it at once.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<(PreauthTicket, tokio::sync::oneshot::Receiver<()>)> {
        if !self.allowed.contains(&ip) {
            bump(&self.counters.preauth_rejected);
            return None;
        }
        let mut p = lock(&self.preauth);
        let full = p.by_src.get(&ip).is_some_and(|q| q.len() >= PREAUTH_PER_SOURCE);
        if full {
            // Dropping the oldest's sender closes its connection.
            p.by_src.get_mut(&ip).and_then(|q| q.pop_front());
            p.total -= 1;
            bump(&self.counters.preauth_evicted);
        } else if p.total >= PREAUTH_TOTAL {
            bump(&self.counters.preauth_rejected);
            return None;
        }
        let id = p.next_id;
        p.next_id += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        p.by_src.entry(ip).or_default().push_back((id, tx));
        p.total += 1;
        Some((PreauthTicket { shared: self.clone(), ip, id }, rx))
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        let mut t = lock(&self.tasks);
        if t.closed {
            return;
        }
        while t.set.try_join_next().is_some() {}
        t.set.spawn_on(f, &self.main);
    }
}

fn validate(cfg: &ChannelConfig) -> Result<(), ChannelError> {
    let bad = |reason: String| Err(ChannelError::Config { reason });
    if cfg.port == 0 {
        return bad("the port must not be 0".into());
    }
    if cfg.links.is_empty() {
        return bad("no link".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (id, addrs) in &cfg.peers {
        if *id == cfg.me {
            return bad(format!("node {id} is this node and cannot be its own peer"));
        }
        if !seen.insert(*id) {
            return bad(format!("peer {id} is listed twice"));
        }
        if addrs.len() != cfg.links.len() {
            return bad(format!("peer {id} has {} addresses for {} links", addrs.len(), cfg.links.len()));
        }
        for (i, (a, l)) in addrs.iter().zip(&cfg.links).enumerate() {
            if a.is_ipv4() != l.is_ipv4() {
                return bad(format!("link {i}: peer {id}'s address {a} and this node's address {l} are not of the same IP version"));
            }
        }
    }
    Ok(())
}

fn bind(addr: IpAddr, port: u16) -> Result<TcpListener, ChannelError> {
    let err = |source| ChannelError::Bind { addr, port, source };
    let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(err)?;
    sock.set_reuseaddr(true).map_err(err)?;
    sock.bind(SocketAddr::new(addr, port)).map_err(err)?;
    sock.listen(128).map_err(err)
}

fn noise_builder(psk: &[u8; 32]) -> Result<snow::Builder<'_>, snow::Error> {
    snow::Builder::new(NOISE_PARAMS.parse()?).psk(0, psk)
}

async fn listen_loop(s: Arc<Shared>, link: usize, listener: TcpListener) {
    let mut errors_logged = 0u32;
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                errors_logged = 0;
                let Some((ticket, cancel)) = s.admit(remote.ip()) else {
                    // Closed at once (dropped): counted, logged at most
                    // once per WARN_EVERY per address.
                    if s.should_warn(remote.ip()) {
                        warn!(peer_addr = %remote, link, "control channel: connection refused (not a configured peer's address, or too many connections before authentication)");
                    }
                    continue;
                };
                // The handshake runs here, on the pre-authentication
                // thread; an authenticated session moves to the agent's
                // runtime (`run_session_inner`).
                let s2 = s.clone();
                tokio::spawn(async move {
                    run_session_admitted(s2, stream, remote, link, ticket, cancel).await;
                });
                // Let the connection just evicted (if any) close before the
                // next accept: the descriptors in use stay bounded by the
                // caps, not by how many accepts one turn of the loop makes.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                // Out of file descriptors (EMFILE, ENFILE), out of memory,
                // a connection aborted before it was accepted: none of it
                // ends the agent. Back off so as not to spin, and go on.
                if errors_logged < 3 {
                    warn!(link, "control channel: accept failed: {e} (retrying)");
                } else {
                    debug!(link, "control channel: accept failed: {e}");
                }
                errors_logged = errors_logged.saturating_add(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn dial_loop(s: Arc<Shared>, peer: u32, link: usize, local: IpAddr, remote_ip: IpAddr, mut heard: watch::Receiver<u64>) {
    let remote = SocketAddr::new(remote_ip, s.port);
    let mut backoff = MIN_BACKOFF;
    let mut reported = false;
    // Until when to redial every FAST_REDIAL (after the peer was heard).
    let mut fast_until: Option<tokio::time::Instant> = None;
    loop {
        match connect(local, remote).await {
            Ok(stream) => {
                reported = false;
                fast_until = None;
                // This session answers whatever was heard of the peer before it.
                heard.borrow_and_update();
                if run_session(s.clone(), stream, remote, link, Role::Dialer { peer }).await {
                    backoff = MIN_BACKOFF;
                }
            }
            Err(e) => {
                // Normal while the peer is down: say it once per outage.
                if !reported {
                    info!(peer, link, %remote, "control channel: cannot connect: {e} (retrying)");
                    reported = true;
                } else {
                    debug!(peer, link, %remote, "control channel: cannot connect: {e}");
                }
            }
        }
        let fast = fast_until.is_some_and(|t| tokio::time::Instant::now() < t);
        let wait = if fast { FAST_REDIAL } else { backoff };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                if !fast {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            r = heard.changed() => {
                if r.is_err() {
                    // Cannot happen (the sender lives in `s`); don't spin.
                    tokio::time::sleep(wait).await;
                    continue;
                }
                heard.borrow_and_update();
                debug!(peer, link, %remote, "control channel: the peer was heard; dialing now");
                fast_until = Some(tokio::time::Instant::now() + FAST_REDIAL_FOR);
                backoff = MIN_BACKOFF;
            }
        }
    }
}

async fn connect(local: IpAddr, remote: SocketAddr) -> io::Result<TcpStream> {
    let sock = if local.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
    // From my address on this link, so the connection uses this link.
    sock.bind(SocketAddr::new(local, 0))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(remote)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

#[derive(Clone, Copy, Debug)]
enum Role {
    /// I dialed `peer` (the Noise initiator).
    Dialer { peer: u32 },
    Listener,
}

/// Why a connection ended (logged as "control channel: link down: ...").
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{source}")]
    Io {
        #[source]
        source: io::Error,
    },
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    #[error("timed out: {what}")]
    Timeout { what: &'static str },
    /// Garbage or a wrong key during the handshake.
    #[error("handshake failed: {reason}")]
    Handshake { reason: String },
    #[error("hello rejected: {reason}")]
    Hello { reason: String },
    /// A bad frame after the handshake.
    #[error("bad frame: {reason}")]
    BadFrame { reason: String },
}

impl From<io::Error> for SessionError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            SessionError::Closed
        } else {
            SessionError::Io { source: e }
        }
    }
}

/// Reads one frame (length-prefixed) of at most `max` bytes.
async fn read_frame(rd: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>, max: usize) -> Result<(), SessionError> {
    let mut len = [0u8; 2];
    rd.read_exact(&mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    if len == 0 || len > max {
        return Err(SessionError::BadFrame { reason: format!("frame of {len} bytes (at most {max} expected)") });
    }
    buf.resize(len, 0);
    rd.read_exact(buf).await?;
    Ok(())
}

/// Writes `body` (at most 65535 bytes) as one frame.
async fn write_frame(wr: &mut (impl AsyncWriteExt + Unpin), out: &mut [u8], body_len: usize) -> io::Result<()> {
    // `out` holds the body at [2..2 + body_len].
    out[..2].copy_from_slice(&(body_len as u16).to_be_bytes());
    wr.write_all(&out[..2 + body_len]).await
}

struct Hello {
    node: u32,
    cluster: u32,
    incarnation: u64,
}

/// A message frame of type `kind`: the type byte, then `msg` as JSON (at
/// most [`MAX_MSG_LEN`] bytes; the writer splits it into frames).
fn encode_frame<T: serde::Serialize>(kind: u8, msg: &T) -> Result<Arc<[u8]>, ChannelError> {
    let mut plain = vec![kind];
    serde_json::to_writer(&mut plain, msg).map_err(|source| ChannelError::Encode { source })?;
    if plain.len() - 1 > MAX_MSG_LEN {
        return Err(ChannelError::TooLarge { size: plain.len() - 1, max: MAX_MSG_LEN });
    }
    Ok(plain.into())
}

fn encode_hello(h: &Hello) -> [u8; 1 + HELLO_LEN] {
    let mut b = [0u8; 1 + HELLO_LEN];
    b[0] = FRAME_HELLO;
    b[1..5].copy_from_slice(&h.node.to_be_bytes());
    b[5..9].copy_from_slice(&h.cluster.to_be_bytes());
    b[9..17].copy_from_slice(&h.incarnation.to_be_bytes());
    b
}

fn decode_hello(p: &[u8]) -> Result<Hello, BadHello> {
    if p.len() != 1 + HELLO_LEN || p[0] != FRAME_HELLO {
        return Err(BadHello { kind: p.first().copied(), len: p.len() });
    }
    let u32_at = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    let mut inc = [0u8; 8];
    inc.copy_from_slice(&p[9..17]);
    Ok(Hello { node: u32_at(1), cluster: u32_at(5), incarnation: u64::from_be_bytes(inc) })
}

/// A session that is up: the transport state and the peer.
struct Up {
    ts: TransportState,
    peer: u32,
    incarnation: u64,
}

/// The Noise handshake and the hellos.
async fn handshake(s: &Shared, rd: &mut OwnedReadHalf, wr: &mut OwnedWriteHalf, role: Role) -> Result<Up, SessionError> {
    let hs_err = |e: snow::Error| SessionError::Handshake { reason: format!("{e} (does the peer use the same cluster secret and id?)") };
    let mut out = vec![0u8; 2 + MAX_HANDSHAKE_FRAME_LEN];
    let mut frame = Vec::new();
    let mut scratch = vec![0u8; MAX_HANDSHAKE_FRAME_LEN];
    let builder = noise_builder(&s.psk).map_err(hs_err)?;
    let mut hs: HandshakeState = match role {
        Role::Dialer { .. } => builder.build_initiator(),
        Role::Listener => builder.build_responder(),
    }
    .map_err(hs_err)?;
    let mut read_hs = async |hs: &mut HandshakeState, rd: &mut OwnedReadHalf| -> Result<(), SessionError> {
        match read_frame(rd, &mut frame, MAX_HANDSHAKE_FRAME_LEN).await {
            Ok(()) => {}
            Err(SessionError::BadFrame { reason: m }) => return Err(SessionError::Handshake { reason: m }),
            Err(SessionError::Closed) => return Err(SessionError::Handshake { reason: "connection closed during the handshake (does the peer use the same cluster secret and id?)".into() }),
            Err(e) => return Err(e),
        }
        hs.read_message(&frame, &mut scratch).map_err(hs_err)?;
        Ok(())
    };
    match role {
        Role::Dialer { .. } => {
            let n = hs.write_message(&[], &mut out[2..]).map_err(hs_err)?;
            write_frame(wr, &mut out, n).await?;
            read_hs(&mut hs, rd).await?;
        }
        Role::Listener => {
            // The dialer sends its first message as soon as it connected.
            match tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_hs(&mut hs, rd)).await {
                Ok(r) => r?,
                Err(_) => return Err(SessionError::Timeout { what: "the first handshake message" }),
            }
            let n = hs.write_message(&[], &mut out[2..]).map_err(hs_err)?;
            write_frame(wr, &mut out, n).await?;
        }
    }
    let mut ts = hs.into_transport_mode().map_err(hs_err)?;

    // Hellos: the dialer's first, then the listener's.
    let mine = encode_hello(&Hello { node: s.me, cluster: s.cluster_id, incarnation: s.incarnation });
    let mut send_hello = async |ts: &mut TransportState, wr: &mut OwnedWriteHalf| -> Result<(), SessionError> {
        let n = ts.write_message(&mine, &mut out[2..]).map_err(hs_err)?;
        write_frame(wr, &mut out, n).await?;
        Ok(())
    };
    let recv_hello = async |ts: &mut TransportState, rd: &mut OwnedReadHalf| -> Result<Hello, SessionError> {
        let mut frame = Vec::new();
        match read_frame(rd, &mut frame, MAX_HANDSHAKE_FRAME_LEN).await {
            Ok(()) => {}
            Err(SessionError::BadFrame { reason: m }) => return Err(SessionError::Handshake { reason: m }),
            Err(SessionError::Closed) => return Err(SessionError::Handshake { reason: "connection closed before the hello".into() }),
            Err(e) => return Err(e),
        }
        let mut p = [0u8; MAX_HANDSHAKE_FRAME_LEN];
        let n = ts.read_message(&frame, &mut p).map_err(|e| SessionError::Handshake { reason: format!("hello does not decrypt: {e}") })?;
        decode_hello(&p[..n]).map_err(|e| SessionError::Hello { reason: e.to_string() })
    };
    let known = |node: u32| lock(&s.conns).contains_key(&node);
    let peer_hello = match role {
        Role::Dialer { peer } => {
            send_hello(&mut ts, wr).await?;
            let h = recv_hello(&mut ts, rd).await?;
            if h.cluster != s.cluster_id {
                return Err(SessionError::Hello { reason: format!("cluster id {}, expected {}", h.cluster, s.cluster_id) });
            }
            if h.node != peer {
                return Err(SessionError::Hello { reason: format!("node {} answered, expected node {peer}", h.node) });
            }
            h
        }
        Role::Listener => {
            let h = recv_hello(&mut ts, rd).await?;
            if h.cluster != s.cluster_id {
                return Err(SessionError::Hello { reason: format!("cluster id {}, expected {}", h.cluster, s.cluster_id) });
            }
            if !known(h.node) {
                return Err(SessionError::Hello { reason: format!("unknown node id {}", h.node) });
            }
            if h.node > s.me {
                return Err(SessionError::Hello { reason: format!("node {} dialed, but the lower id (this node, {}) dials", h.node, s.me) });
            }
            send_hello(&mut ts, wr).await?;
            h
        }
    };
    Ok(Up { ts, peer: peer_hello.node, incarnation: peer_hello.incarnation })
}

/// An accepted connection: its handshake ends early when `cancel` fires
/// (a newer connection from the same address took its place), and its
/// pre-authentication place is given back once the handshake ended.
async fn run_session_admitted(
    s: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    link: usize,
    ticket: PreauthTicket,
    cancel: tokio::sync::oneshot::Receiver<()>,
) -> bool {
    run_session_inner(s, stream, remote, link, Role::Listener, Some((ticket, cancel))).await
}

/// Runs one connection to its end. Returns whether its session came up.
async fn run_session(s: Arc<Shared>, stream: TcpStream, remote: SocketAddr, link: usize, role: Role) -> bool {
    run_session_inner(s, stream, remote, link, role, None).await
}

async fn run_session_inner(
    s: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    link: usize,
    role: Role,
    preauth: Option<(PreauthTicket, tokio::sync::oneshot::Receiver<()>)>,
) -> bool {
    bump(&s.counters.connections);
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (ticket, cancel) = match preauth {
        Some((t, c)) => (Some(t), Some(c)),
        None => (None, None),
    };
    let evicted = async {
        match cancel {
            // Fires when the sender is dropped (evicted), never otherwise.
            Some(c) => {
                let _ = c.await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let hs = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&s, &mut rd, &mut wr, role)) => r,
        _ = evicted => Ok(Err(SessionError::Handshake { reason: format!(
            "closed before its handshake ended: a newer connection came from the same address while {PREAUTH_PER_SOURCE} were pending"
        ) })),
    };
    drop(ticket);
    let up = match hs {
        Ok(Ok(up)) => up,
        Ok(Err(e)) => {
            bump(&s.counters.handshake_failures);
            if matches!(e, SessionError::Hello { .. }) {
                bump(&s.counters.hello_rejects);
            }
            if s.should_warn(remote.ip()) {
                warn!(peer_addr = %remote, link, ?role, "control channel: {e}; connection closed (similar failures with this address are logged at debug level for {WARN_EVERY:?})");
            } else {
                debug!(peer_addr = %remote, link, ?role, "control channel: {e}; connection closed");
            }
            return false;
        }
        Err(_) => {
            bump(&s.counters.handshake_failures);
            let e = SessionError::Timeout { what: "handshake" };
            if s.should_warn(remote.ip()) {
                warn!(peer_addr = %remote, link, ?role, "control channel: {e}; connection closed (similar failures with this address are logged at debug level for {WARN_EVERY:?})");
            } else {
                debug!(peer_addr = %remote, link, ?role, "control channel: {e}; connection closed");
            }
            return false;
        }
    };
    if role_is_listener(role) {
        // Authenticated: the session goes on on the agent's runtime, away
        // from the pre-authentication thread.
        let stream = match rd.reunite(wr) {
            Ok(st) => st.into_std(),
            // Only halves of two different streams fail to reunite.
            Err(e) => Err(io::Error::other(e.to_string())),
        };
        let stream = match stream {
            Ok(st) => st,
            Err(e) => {
                warn!(peer_addr = %remote, link, "control channel: cannot hand the session over: {e}");
                return false;
            }
        };
        let s2 = s.clone();
        s.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(st) => {
                    let (rd, wr) = st.into_split();
                    run_established(s2, up, rd, wr, remote, link).await;
                }
                Err(e) => warn!(peer_addr = %remote, link, "control channel: cannot hand the session over: {e}"),
            }
        });
        return true;
    }
    run_established(s, up, rd, wr, remote, link).await
}

fn role_is_listener(role: Role) -> bool {
    matches!(role, Role::Listener)
}

/// An authenticated session, to its end.
async fn run_established(s: Arc<Shared>, up: Up, rd: OwnedReadHalf, wr: OwnedWriteHalf, remote: SocketAddr, link: usize) -> bool {
    let Up { ts, peer, incarnation } = up;

    // Register the session (replacing an older one on the same link: its
    // queue's sender is dropped, which ends it).
    let (tx, rx) = mpsc::channel(QUEUE_LEN);
    let gen = s.next_gen.fetch_add(1, Ordering::Relaxed);
    {
        let mut conns = lock(&s.conns);
        let Some(slot) = conns.get_mut(&peer) else { return false };
        slot.links[link] = Some(Conn { gen, tx });
        slot.incarnation = Some(incarnation);
    }
    bump(&s.counters.sessions);
    info!(peer, link, peer_addr = %remote, incarnation, "control channel: link up");

    let ts = Mutex::new(ts);
    let end = tokio::select! {
        r = reader(&s, &ts, rd, peer, remote) => r,
        r = writer(&s, &ts, wr, rx) => r,
    };
    {
        let mut conns = lock(&s.conns);
        if let Some(slot) = conns.get_mut(&peer) {
            if slot.links[link].as_ref().is_some_and(|c| c.gen == gen) {
                slot.links[link] = None;
            }
        }
    }
    match end {
        Err(e @ SessionError::BadFrame { .. }) => {
            bump(&s.counters.bad_frames);
            warn!(peer, link, peer_addr = %remote, "control channel: {e}; connection closed");
        }
        Err(e @ SessionError::Timeout { .. }) => warn!(peer, link, peer_addr = %remote, "control channel: {e}; connection closed"),
        Err(e) => info!(peer, link, peer_addr = %remote, "control channel: link down: {e}"),
        Ok(()) => debug!(peer, link, peer_addr = %remote, "control channel: session replaced or stopped"),
    }
    true
}

/// What one decrypted frame gave ([`Reassembly::push`]).
#[derive(Debug)]
pub enum Decoded {
    Keepalive,
    /// A leading part of a long message: nothing yet.
    Part,
    Msg(Msg),
    Svc(SvcMsg),
    Handover(HandoverMsg),
    Fence(FenceMsg),
    App(AppMsg),
    /// A message of a known type whose body does not decode (another
    /// version of baton): skipped, the connection stays.
    Undecodable { kind: u8, error: String },
}

/// The sans-IO part of a session's reader: joins the parts of long
/// messages and decodes each complete one. An `Err` closes the connection
/// (a message longer than [`MAX_MSG_LEN`], parts followed by a frame that
/// cannot end them, an unknown frame type). Fuzzed by `channel_frames`.
#[derive(Default)]
pub struct Reassembly {
    partial: Vec<u8>,
    joined: Vec<u8>,
}

impl Reassembly {
    pub fn push(&mut self, plain: &[u8]) -> Result<Decoded, FrameError> {
        let n = plain.len();
        let mut p = plain;
        if p.first() == Some(&FRAME_PART) {
            if self.partial.len() + n - 1 > MAX_MSG_LEN {
                return Err(FrameError::TooLong);
            }
            self.partial.extend_from_slice(&p[1..]);
            return Ok(Decoded::Part);
        }
        if !self.partial.is_empty() {
            if !matches!(p.first(), Some(&FRAME_MSG) | Some(&FRAME_SVC) | Some(&FRAME_HANDOVER) | Some(&FRAME_FENCE) | Some(&FRAME_APP)) {
                return Err(FrameError::PartsThen { kind: p.first().copied() });
            }
            self.joined.clear();
            self.joined.push(p[0]);
            self.joined.append(&mut self.partial);
            self.joined.extend_from_slice(&p[1..]);
            p = &self.joined;
        }
        let bad = |kind: u8, e: serde_json::Error| Decoded::Undecodable { kind, error: e.to_string() };
        Ok(match p.first() {
            Some(&FRAME_KEEPALIVE) if n == 1 => Decoded::Keepalive,
            Some(&FRAME_SVC) => serde_json::from_slice(&p[1..]).map(Decoded::Svc).unwrap_or_else(|e| bad(FRAME_SVC, e)),
            Some(&FRAME_HANDOVER) => serde_json::from_slice(&p[1..]).map(Decoded::Handover).unwrap_or_else(|e| bad(FRAME_HANDOVER, e)),
            Some(&FRAME_APP) => serde_json::from_slice(&p[1..]).map(Decoded::App).unwrap_or_else(|e| bad(FRAME_APP, e)),
            Some(&FRAME_FENCE) => serde_json::from_slice(&p[1..]).map(Decoded::Fence).unwrap_or_else(|e| bad(FRAME_FENCE, e)),
            Some(&FRAME_MSG) => serde_json::from_slice(&p[1..]).map(Decoded::Msg).unwrap_or_else(|e| bad(FRAME_MSG, e)),
            other => return Err(FrameError::Unexpected { kind: other.copied(), len: n }),
        })
    }
}

/// Splits `data` into frames as [`read_frame`] does (a `u16` big-endian
/// length, then that many bytes, at most `max`): the frames, and whether
/// the input ended in a bad or partial frame. For the fuzz target.
pub fn split_frames(mut data: &[u8], max: usize) -> (Vec<&[u8]>, bool) {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 2 {
            return (out, false);
        }
        let len = u16::from_be_bytes([data[0], data[1]]) as usize;
        if len == 0 || len > max || data.len() < 2 + len {
            return (out, false);
        }
        out.push(&data[2..2 + len]);
        data = &data[2 + len..];
    }
    (out, true)
}

/// A hello's plaintext (type byte and body), decoded: (node, cluster,
/// incarnation). For the fuzz target.
pub fn decode_hello_plain(p: &[u8]) -> Result<(u32, u32, u64), BadHello> {
    decode_hello(p).map(|h| (h.node, h.cluster, h.incarnation))
}

async fn reader(s: &Shared, ts: &Mutex<TransportState>, mut rd: OwnedReadHalf, peer: u32, remote: SocketAddr) -> Result<(), SessionError> {
    let mut frame = Vec::with_capacity(MAX_FRAME_LEN);
    let mut plain = vec![0u8; MAX_FRAME_LEN];
    let mut parts = Reassembly::default();
    loop {
        tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut rd, &mut frame, MAX_FRAME_LEN))
            .await
            .map_err(|_| SessionError::Timeout { what: "nothing received (not even a keepalive)" })??;
        let n = lock(ts).read_message(&frame, &mut plain).map_err(|e| SessionError::BadFrame { reason: format!("does not decrypt: {e}") })?;
        match parts.push(&plain[..n]).map_err(|e| SessionError::BadFrame { reason: e.to_string() })? {
            Decoded::Keepalive | Decoded::Part => {}
            Decoded::Svc(msg) => {
                bump(&s.counters.frames_received);
                let _ = s.svc_inbox.send((peer, msg)).await;
            }
            Decoded::Handover(msg) => {
                bump(&s.counters.frames_received);
                let _ = s.ho_inbox.send((peer, msg)).await;
            }
            Decoded::App(msg) => {
                bump(&s.counters.frames_received);
                let _ = s.app_inbox.send((peer, msg)).await;
            }
            Decoded::Fence(msg) => {
                bump(&s.counters.frames_received);
                let _ = s.fence_inbox.send((peer, msg)).await;
            }
            Decoded::Msg(msg) => {
                bump(&s.counters.frames_received);
                // Backpressure if the consumer is slow; if it is gone, drop.
                let _ = s.inbox.send((peer, msg)).await;
            }
            Decoded::Undecodable { kind, error } => {
                // Authenticated, so from a holder of the secret: another
                // version, not an attack. Skip this message only.
                bump(&s.counters.bad_frames);
                warn!(peer, peer_addr = %remote, kind, "control channel: a message that does not decode skipped: {error}");
            }
        }
    }
}

async fn writer(s: &Shared, ts: &Mutex<TransportState>, mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Arc<[u8]>>) -> Result<(), SessionError> {
    let mut out = vec![0u8; 2 + MAX_FRAME_LEN];
    let keepalive: Arc<[u8]> = Arc::from(&[FRAME_KEEPALIVE][..]);
    loop {
        let (plain, is_msg) = match tokio::time::timeout(KEEPALIVE_INTERVAL, rx.recv()).await {
            Ok(Some(p)) => (p, true),
            // Replaced by a newer session on this link, or shutting down.
            Ok(None) => return Ok(()),
            Err(_) => (keepalive.clone(), false),
        };
        let encrypt = |p: &[u8], out: &mut [u8]| {
            lock(ts).write_message(p, &mut out[2..]).map_err(|e| SessionError::Io { source: io::Error::other(format!("encrypt: {e}")) })
        };
        if plain.len() <= 1 + CHUNK_LEN {
            let n = encrypt(&plain, &mut out)?;
            write_frame(&mut wr, &mut out, n).await?;
        } else {
            // Parts, then the rest under the message's own type.
            let body = &plain[1..];
            let chunks: Vec<&[u8]> = body.chunks(CHUNK_LEN).collect();
            let mut part = Vec::with_capacity(1 + CHUNK_LEN);
            for (i, c) in chunks.iter().enumerate() {
                part.clear();
                part.push(if i + 1 < chunks.len() { FRAME_PART } else { plain[0] });
                part.extend_from_slice(c);
                let n = encrypt(&part, &mut out)?;
                write_frame(&mut wr, &mut out, n).await?;
            }
        }
        if is_msg {
            bump(&s.counters.frames_sent);
        }
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;

    /// A frame that closes the connection says why (the text goes into the
    /// "link down: bad frame: ..." log line).
    #[test]
    fn frames_that_end_a_connection_say_why() {
        let mut r = Reassembly::default();
        assert_eq!(r.push(&[0xEE, 1, 2]).unwrap_err(), FrameError::Unexpected { kind: Some(0xEE), len: 3 });
        assert_eq!(r.push(&[0xEE, 1, 2]).unwrap_err().to_string(), "unexpected frame type Some(238) (3 bytes)");
        let mut r = Reassembly::default();
        assert!(matches!(r.push(&[FRAME_PART, b'{']), Ok(Decoded::Part)));
        assert_eq!(r.push(&[FRAME_KEEPALIVE]).unwrap_err().to_string(), "message parts followed by frame type Some(2)");
        let mut r = Reassembly::default();
        let mut big = vec![b' '; MAX_MSG_LEN + 1];
        big[0] = FRAME_PART;
        assert!(matches!(r.push(&big), Ok(Decoded::Part)));
        assert_eq!(r.push(&[FRAME_PART, b' ']).unwrap_err().to_string(), format!("a message longer than {MAX_MSG_LEN} bytes"));
        assert_eq!(decode_hello_plain(&[FRAME_HELLO, 1]).unwrap_err().to_string(), "expected a hello frame, got type Some(0), 2 bytes");
    }
}
