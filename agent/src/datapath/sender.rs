//! The heartbeat sender: one dedicated thread, SCHED_FIFO when allowed, on
//! absolute deadlines of the monotonic clock, so that a CPU hog at normal
//! priority cannot delay a heartbeat. It also sends the distress signal (S0.2),
//! after which this node sends nothing more: clustering has ended here.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{Array, MapData};
use baton_common::{encode_into, Header, PeerLink, KIND_DISTRESS, KIND_HEARTBEAT, MAX_ENTRIES, MAX_LINKS, MAX_PACKET_LEN, UNICAST_LEN};
use tracing::{error, info, warn};

use crate::config::{Config, Link, Transport};
use crate::datapath::slot_base;
use crate::datapath::events::monotonic_ns;

/// State shared between the sender thread and the rest of the agent.
#[derive(Default)]
pub struct SenderShared {
    /// Non-zero: send distress with this reason, then stop.
    pub distress: AtomicU32,
    pub stop: AtomicBool,
    /// Set by the sender once it sent its distress and went quiet.
    pub ended: AtomicBool,
    pub sent: AtomicU64,
    pub send_errors: AtomicU64,
    /// Ticks that started more than one interval late.
    pub late_ticks: AtomicU64,
    /// The longest time between two periodic heartbeats, in µs, over this
    /// life (what a receiver waits at worst because of the sender), and over
    /// the first `STARTUP_WINDOW` after the first heartbeat.
    pub max_gap_us: AtomicU64,
    pub startup_max_gap_us: AtomicU64,
    /// The latest periodic tick's lateness in µs at its worst (start of
    /// sending minus its deadline), over this life and over the first
    /// `STARTUP_WINDOW`.
    pub max_late_us: AtomicU64,
    pub startup_max_late_us: AtomicU64,
    /// The `max_gap_us` last warned about (see [`SenderShared::gap_warning`]).
    pub warned_gap_us: AtomicU64,
    /// Set by [`Sender::heartbeat_now`]: send one heartbeat at once, outside
    /// the schedule, to the peers flagged in `answer`.
    pub send_now: AtomicBool,
    /// Per peer (in configuration order): answer it with a heartbeat now.
    pub answer: Vec<AtomicBool>,
    /// Per peer (in configuration order): the incarnation of its life that
    /// this node's membership forced out (0: none). Heartbeats to that life
    /// carry `dst_incarnation` 0 and no echo, which its datapath does not
    /// take as live (a handshake): a forced-out node that still hears us
    /// stops counting us for its address lease within the silence bound, and
    /// sees us silent, instead of learning it over a slow control channel.
    pub disowned: Vec<AtomicU64>,
    /// The peers' node ids, in configuration order (the index of `disowned`).
    pub peer_ids: Vec<u32>,
    /// When each recent heartbeat was sent, per link (the address lease
    /// reads it to time the peers' echoes).
    pub sent_log: SentLog,
}

/// Sequence numbers of a link's datagrams the [`SentLog`] remembers (a
/// power of two, so the low 32 bits of a sequence number pick its slot):
/// far more than a silence bound's worth (`misses` ≤ 1000 intervals, plus
/// answers), so an echo the lease can still use is never forgotten.
pub const SENT_LOG: usize = 4096;

/// When this life of the agent sent each recent heartbeat, per link, by
/// `CLOCK_MONOTONIC` (the clock of `bpf_ktime_get_ns`): written by the
/// sender thread, read by the address lease without a lock. A peer echoes
/// the `seq` of our last heartbeat it accepted (`echo_seq`, wire format
/// version 3); the time we sent that heartbeat is a moment at which, for
/// certain, the peer had not heard anything newer from us, by our own clock
/// (no clock of the peer is involved).
#[derive(Default)]
pub struct SentLog {
    links: Vec<Vec<SentSlot>>,
}

#[derive(Default)]
struct SentSlot {
    /// The full sequence number (0: the slot is being written or unused).
    seq: AtomicU64,
    at_ns: AtomicU64,
}

impl SentLog {
    pub fn new(links: usize) -> SentLog {
        // Written element by element: the pages are touched here, not in the
        // sender's real-time loop.
        SentLog { links: (0..links).map(|_| (0..SENT_LOG).map(|_| SentSlot::default()).collect()).collect() }
    }

    /// Records that `seq` goes out on `link` now (`at_ns`, taken before the
    /// send: never later than the truth).
    pub fn record(&self, link: usize, seq: u64, at_ns: u64) {
        let Some(ring) = self.links.get(link) else { return };
        let slot = &ring[seq as usize % SENT_LOG];
        slot.seq.store(0, Ordering::SeqCst);
        slot.at_ns.store(at_ns, Ordering::SeqCst);
        slot.seq.store(seq, Ordering::SeqCst);
    }

    /// When the datagram whose sequence number ends in `echo` (its low 32
    /// bits) was sent on `link`, if it is still remembered; `None` for 0 (no
    /// echo), a forgotten or never sent number, or a slot being rewritten.
    pub fn sent_at(&self, link: usize, echo: u32) -> Option<u64> {
        if echo == 0 {
            return None;
        }
        let slot = &self.links.get(link)?[echo as usize % SENT_LOG];
        let s1 = slot.seq.load(Ordering::SeqCst);
        let at = slot.at_ns.load(Ordering::SeqCst);
        let s2 = slot.seq.load(Ordering::SeqCst);
        (s1 != 0 && s1 == s2 && s1 as u32 == echo).then_some(at)
    }
}

impl SenderShared {
    /// This node's membership forced out `node`'s life `incarnation`: stop
    /// acknowledging that life in heartbeats (see `disowned`).
    pub fn disown(&self, node: u32, incarnation: u64) {
        if let Some(i) = self.peer_ids.iter().position(|p| *p == node) {
            if incarnation != 0 && self.disowned[i].swap(incarnation, Ordering::Relaxed) != incarnation {
                tracing::info!(node, incarnation, "heartbeats no longer acknowledge this forced-out life of the peer (its address lease ends)");
            }
        }
    }

    /// The (`dst_incarnation`, echo) to send to peer index `pi`, whose
    /// incarnation the datapath knows as `inc`.
    fn acknowledged(&self, pi: usize, inc: u64, echo: u32) -> (u64, u32) {
        if inc != 0 && self.disowned.get(pi).is_some_and(|d| d.load(Ordering::Relaxed) == inc) {
            (0, 0)
        } else {
            (inc, echo)
        }
    }

    /// The sender's longest gap, in µs, when it reached `bound_us` (the
    /// silence bound, `interval_ms × misses`) and grew since the last time
    /// it was returned: peers may have declared this node silent although
    /// it was alive, because the machine did not run the real-time sender
    /// in time (docs/datapath.md, "Under load"). `None` otherwise.
    pub fn gap_warning(&self, bound_us: u64) -> Option<u64> {
        let gap = self.max_gap_us.load(Ordering::Relaxed);
        if gap < bound_us || gap <= self.warned_gap_us.load(Ordering::Relaxed) {
            return None;
        }
        self.warned_gap_us.store(gap, Ordering::Relaxed);
        Some(gap)
    }
}

pub struct Sender {
    pub shared: Arc<SenderShared>,
    /// The peers' node ids, in configuration order (the index of `answer`).
    peer_ids: Vec<u32>,
    thread: std::thread::JoinHandle<()>,
}

impl Sender {
    pub fn wake(&self) {
        self.thread.thread().unpark();
    }
    /// Sends one heartbeat to peer `node` at once, on every link (the
    /// schedule of the periodic ones is unchanged). The agent asks for it
    /// when that peer came up (`link_up`, `peer_restarted`): the datapath has
    /// just learnt its incarnation, and our heartbeats count as live at the
    /// peer only once they carry it, so the peer sees us up now instead of
    /// at our next tick (up to an interval later). The same answer goes to
    /// every peer whose incarnation the datapath learnt since our last
    /// heartbeat to it (a handshake record, which raises no event). Only to
    /// those peers (a
    /// restart of one node of 32 costs 31 extra datagrams in the cluster,
    /// not 31 × 31), at most one per wake-up of the sender, and only on such
    /// edges: no flood. Unknown nodes are ignored.
    pub fn heartbeat_now(&self, node: u32) {
        let Some(i) = self.peer_ids.iter().position(|p| *p == node) else { return };
        self.shared.answer[i].store(true, Ordering::SeqCst);
        self.shared.send_now.store(true, Ordering::SeqCst);
        self.wake();
    }
    pub fn distress(&self, reason: u32) {
        self.shared.distress.store(reason.max(1), Ordering::SeqCst);
        self.wake();
    }
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        let _ = self.thread.join();
    }
}

struct LinkSock {
    sock: UdpSocket,
    /// Per-link sequence; strictly increasing over heartbeats and distress.
    seq: u64,
    /// `Transport::Broadcast`: where the one datagram for all peers goes
    /// (255.255.255.255, or ff02::1 scoped to the interface). `None`:
    /// unicast, one datagram per peer to its address on the link.
    group: Option<SocketAddr>,
}

fn open_link(l: &Link) -> std::io::Result<LinkSock> {
    let sock = open_socket(&l.interface, l.address)?;
    let group = match l.transport {
        Transport::Unicast => None,
        Transport::Broadcast if l.address.is_ipv4() => {
            nix::sys::socket::setsockopt(&sock.as_fd(), nix::sys::socket::sockopt::Broadcast, &true).map_err(std::io::Error::from)?;
            Some(SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::BROADCAST), 0))
        }
        Transport::Broadcast => {
            let index = nix::net::if_::if_nametoindex(l.interface.as_str()).map_err(std::io::Error::from)?;
            // Not back to ourselves (the datapath would only drop it).
            // (Its failure was ignored before, as now.)
            let _ = sock.set_multicast_loop_v6(false);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index)))
        }
    };
    Ok(LinkSock { sock, seq: 0, group })
}

fn open_socket(interface: &str, local: IpAddr) -> std::io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddr::new(local, 0))?;
    nix::sys::socket::setsockopt(&sock.as_fd(), nix::sys::socket::sockopt::BindToDevice, &std::ffi::OsString::from(interface))
        .map_err(std::io::Error::from)?;
    // Network control traffic: DSCP CS6, and the highest socket priority.
    let _ = nix::sys::socket::setsockopt(&sock.as_fd(), nix::sys::socket::sockopt::Priority, &6);
    if local.is_ipv4() {
        let _ = nix::sys::socket::setsockopt(&sock.as_fd(), nix::sys::socket::sockopt::IpTos, &0xc0);
    } else {
        let _ = nix::sys::socket::setsockopt(&sock.as_fd(), nix::sys::socket::sockopt::Ipv6TClass, &0xc0);
    }
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// How much of its stack the sender thread touches before its loop. The
/// process locks future mappings only as their pages are first touched
/// (`MCL_FUTURE | MCL_ONFAULT`, see `run::lock_memory`), so this makes the
/// sender's stack resident and locked up front: its loop (and the distress
/// path) then never takes a page fault on it. The loop uses a few KB.
pub const STACK_PREFAULT: usize = 256 * 1024;
/// The start-up window of `SenderShared::startup_max_*` (issue 13 item 4:
/// false silences right after a node starts).
pub const STARTUP_WINDOW: Duration = Duration::from_secs(2);
/// The sender thread's stack (above `STACK_PREFAULT` with a wide margin).
const STACK_SIZE: usize = 1024 * 1024;

/// The distress of a life of this node that died without sending one (the
/// guard sends it, `guard.rs`): three rounds to every peer on every link, for
/// `incarnation`, with sequence numbers above any that life's sender could
/// have used (2^62 and up: the sender counts from 1 per heartbeat), and
/// each peer's incarnation as the pinned liveness map last saw it (a
/// distress only counts when it proves it was made for the receiver's
/// current life). Returns the datagrams sent.
pub fn distress_of_dead_life(cfg: &Config, k0: u64, k1: u64, incarnation: u64, reason: u32) -> std::io::Result<u32> {
    let mut socks = Vec::new();
    for l in &cfg.links {
        let mut ls = open_link(l)?;
        ls.seq = 1 << 62;
        socks.push(ls);
    }
    let peers_map = crate::datapath::pinned::peers(&cfg.paths.bpffs_dir).map_err(std::io::Error::other)?;
    let mut dst_inc = vec![0u64; cfg.peers.len()];
    for (i, inc) in dst_inc.iter_mut().enumerate() {
        for l in 0..cfg.links.len() as u32 {
            if let Ok(rec) = peers_map.get(&(slot_base(i) + l), 0) {
                *inc = (*inc).max(rec.incarnation);
            }
        }
    }
    let shared = SenderShared::default();
    let echo = vec![[0u32; MAX_LINKS as usize]; cfg.peers.len()];
    let mut out = Outbox::new(cfg);
    for _round in 0..3 {
        send_all(cfg, k0, k1, incarnation, &mut socks, &mut out, &dst_inc, &echo, KIND_DISTRESS, reason, &shared, None);
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(shared.sent.load(Ordering::Relaxed) as u32)
}

/// Touches `STACK_PREFAULT` bytes of this thread's stack, page by page.
#[inline(never)]
fn prefault_stack() {
    let mut buf = [0u8; STACK_PREFAULT];
    for i in (0..STACK_PREFAULT).step_by(4096) {
        // SAFETY: an in-bounds write to a local array.
        unsafe { std::ptr::write_volatile(buf.as_mut_ptr().add(i), 1) };
    }
    std::hint::black_box(&buf);
}

/// Moves the calling thread to SCHED_FIFO at `priority` (0: leaves it at
/// normal priority); `what` names the thread in the log.
pub(crate) fn set_realtime(what: &str, priority: u32) {
    if priority == 0 {
        return;
    }
    let param = libc::sched_param { sched_priority: priority as i32 };
    // SAFETY: sets this thread's own scheduling policy.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        warn!(priority, "cannot run the {what} at SCHED_FIFO ({}); it runs at normal priority and may be delayed by CPU load", std::io::Error::from_raw_os_error(rc));
    } else {
        info!(priority, "{what} runs at SCHED_FIFO");
    }
}

/// Starts the sender thread. Sockets are opened here, so errors (no such
/// address on the interface, ...) are reported before the agent goes live.
pub fn spawn(cfg: &Config, k0: u64, k1: u64, incarnation: u64) -> std::io::Result<Sender> {
    let mut socks = Vec::new();
    for l in &cfg.links {
        let ls = open_link(l).map_err(|e| {
            std::io::Error::new(e.kind(), format!("link {:?}: cannot send from {} on {}: {e}", l.name, l.address, l.interface))
        })?;
        socks.push(ls);
    }
    let peers_map = crate::datapath::pinned::peers(&cfg.paths.bpffs_dir).map_err(std::io::Error::other)?;
    let shared = Arc::new(SenderShared {
        answer: cfg.peers.iter().map(|_| AtomicBool::new(false)).collect(),
        disowned: cfg.peers.iter().map(|_| AtomicU64::new(0)).collect(),
        peer_ids: cfg.peers.iter().map(|p| p.id).collect(),
        sent_log: SentLog::new(cfg.links.len()),
        ..Default::default()
    });
    let peer_ids = cfg.peers.iter().map(|p| p.id).collect();
    let s2 = shared.clone();
    let cfg = cfg.clone();
    let thread = std::thread::Builder::new()
        .name("baton-heartbeat".into())
        .stack_size(STACK_SIZE)
        .spawn(move || run(cfg, k0, k1, incarnation, socks, peers_map, s2))?;
    Ok(Sender { shared, peer_ids, thread })
}

fn run(
    cfg: Config,
    k0: u64,
    k1: u64,
    incarnation: u64,
    mut socks: Vec<LinkSock>,
    peers_map: Array<MapData, PeerLink>,
    shared: Arc<SenderShared>,
) {
    prefault_stack();
    set_realtime("heartbeat sender", cfg.realtime_priority);
    let interval = Duration::from_millis(cfg.interval_ms as u64);
    let mut dst_inc = vec![0u64; cfg.peers.len()];
    // Per peer and link: the echo for it (see `read_peers`).
    let mut echo = vec![[0u32; MAX_LINKS as usize]; cfg.peers.len()];
    let mut batch = PeerBatch::new(cfg.peers.len());
    let mut answer = vec![false; cfg.peers.len()];
    // The receiver incarnation each peer got in our last heartbeat to it.
    let mut sent_inc = vec![0u64; cfg.peers.len()];
    let mut out = Outbox::new(&cfg);
    let mut next = Instant::now();
    let first = next;
    let mut last_sent: Option<Instant> = None;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let reason = shared.distress.load(Ordering::SeqCst);
        if reason != 0 {
            // S0.2: the distress goes to every node, redundantly on every link.
            for _round in 0..3 {
                send_all(&cfg, k0, k1, incarnation, &mut socks, &mut out, &dst_inc, &echo, KIND_DISTRESS, reason, &shared, None);
                std::thread::sleep(Duration::from_millis(1));
            }
            shared.ended.store(true, Ordering::SeqCst);
            error!(reason, "distress sent to every peer on every link; this node sends no more heartbeats");
            while !shared.stop.load(Ordering::SeqCst) {
                std::thread::park();
            }
            return;
        }
        let now = Instant::now();
        let asked = shared.send_now.swap(false, Ordering::SeqCst);
        if now >= next || asked {
            // The receiver's incarnation we put in each datagram proves to it
            // that the datagram is fresh (see docs/wire-format.md), and the
            // echo of its last live heartbeat keeps its address lease: both
            // are read from the liveness map (one batch syscall) before
            // every round, so that the echo is at most one interval older
            // than what the datapath knows.
            read_peers(&cfg, &peers_map, &mut batch, &mut dst_inc, &mut echo);
            if now >= next {
                // Goes to everyone: pending answers are included.
                for a in &shared.answer {
                    a.store(false, Ordering::SeqCst);
                }
                let late = now.saturating_duration_since(next).as_micros() as u64;
                let gap = last_sent.map(|l| now.saturating_duration_since(l).as_micros() as u64).unwrap_or(0);
                last_sent = Some(now);
                shared.max_late_us.fetch_max(late, Ordering::Relaxed);
                shared.max_gap_us.fetch_max(gap, Ordering::Relaxed);
                if now.saturating_duration_since(first) <= STARTUP_WINDOW {
                    shared.startup_max_late_us.fetch_max(late, Ordering::Relaxed);
                    shared.startup_max_gap_us.fetch_max(gap, Ordering::Relaxed);
                }
                send_all(&cfg, k0, k1, incarnation, &mut socks, &mut out, &dst_inc, &echo, KIND_HEARTBEAT, cfg.interval_ms, &shared, None);
                sent_inc.copy_from_slice(&dst_inc);
                next += interval;
                if next + interval < now {
                    shared.late_ticks.fetch_add(1, Ordering::Relaxed);
                    next = now + interval;
                }
            } else {
                // Answers only (see Sender::heartbeat_now): to the peers
                // asked for, and to those whose incarnation the datapath
                // learnt since our last heartbeat to them (they cannot see
                // us live before they get it; the datapath reports no event
                // for that, so it is checked whenever the sender is woken).
                for (i, a) in shared.answer.iter().enumerate() {
                    answer[i] = a.swap(false, Ordering::SeqCst) || dst_inc[i] != sent_inc[i];
                    if answer[i] {
                        sent_inc[i] = dst_inc[i];
                    }
                }
                send_all(&cfg, k0, k1, incarnation, &mut socks, &mut out, &dst_inc, &echo, KIND_HEARTBEAT, cfg.interval_ms, &shared, Some(&answer));
            }
            continue;
        }
        std::thread::park_timeout(next - now);
    }
}

/// The peers' slots of the liveness map, read with one
/// `BPF_MAP_LOOKUP_BATCH` syscall (Linux 5.6) instead of one lookup per
/// peer and link; buffers allocated once, outside the sender's loop.
struct PeerBatch {
    keys: Vec<u32>,
    vals: Vec<PeerLink>,
    /// The batch syscall failed once (an older kernel): lookups one by one.
    unsupported: bool,
}

impl PeerBatch {
    fn new(peers: usize) -> PeerBatch {
        let n = slot_base(peers) as usize;
        PeerBatch { keys: vec![u32::MAX; n], vals: vec![PeerLink { node: u32::MAX, ..Default::default() }; n], unsupported: false }
    }

    /// Reads slots `0..slot_base(peers)`; false when it could not (the
    /// caller then reads one by one).
    fn read(&mut self, map: &Array<MapData, PeerLink>) -> bool {
        use std::os::fd::AsRawFd;
        if self.unsupported || self.vals.is_empty() {
            return false;
        }
        #[repr(C)]
        #[derive(Default)]
        struct BatchAttr {
            in_batch: u64,
            out_batch: u64,
            keys: u64,
            values: u64,
            count: u32,
            map_fd: u32,
            elem_flags: u64,
            flags: u64,
        }
        const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
        let mut out_batch = 0u32;
        let fd = aya::maps::IterableMap::map(map).fd().as_fd().as_raw_fd();
        let mut attr = BatchAttr {
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: self.keys.as_mut_ptr() as u64,
            values: self.vals.as_mut_ptr() as u64,
            count: self.vals.len() as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: `keys` and `values` hold `count` keys (u32, the map's key
        // size) and values (PeerLink, the map's value size: the map was
        // opened as an Array of PeerLink, which checks it); `out_batch`
        // holds one key.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>())
        };
        // ENOENT: the end of the map was reached (only when all its slots
        // were asked for); `count` says how many were read.
        let ok = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT);
        if !ok || attr.count as usize != self.vals.len() {
            if !ok {
                warn!("reading the liveness map in one batch failed ({}); reading it one slot at a time", std::io::Error::last_os_error());
                self.unsupported = true;
            }
            return false;
        }
        true
    }
}

/// Reads each peer's records from the liveness map (one batch syscall, see
/// [`PeerBatch`]): its incarnation (the highest over the links, for the
/// entries' `dst_incarnation`) and, per link, the echo for it: the low 32
/// bits of the `seq` of its last heartbeat on that link that our datapath
/// accepted as liveness, when that record is of the incarnation we name
/// (else 0, "none"). A read that fails leaves the echo at 0 and a slow read
/// only yields an older `seq`: an echo can be older than the truth, never
/// newer (an older echo only shortens the peer's lease).
fn read_peers(cfg: &Config, peers_map: &Array<MapData, PeerLink>, batch: &mut PeerBatch, dst_inc: &mut [u64], echo: &mut [[u32; MAX_LINKS as usize]]) {
    let batched = batch.read(peers_map);
    let mut recs = [None; MAX_LINKS as usize];
    for (i, inc) in dst_inc.iter_mut().enumerate() {
        for (l, r) in recs.iter_mut().enumerate().take(cfg.links.len()) {
            let slot = slot_base(i) + l as u32;
            *r = if batched { batch.vals.get(slot as usize).copied() } else { peers_map.get(&slot, 0).ok() };
            if let Some(rec) = r {
                *inc = (*inc).max(rec.incarnation);
            }
        }
        for (l, r) in recs.iter().enumerate().take(cfg.links.len()) {
            echo[i][l] = match r {
                Some(rec) if rec.incarnation == *inc => rec.live_seq as u32,
                _ => 0,
            };
        }
    }
}

/// The unicast datagrams of one round on one link, sent with one
/// `sendmmsg(2)` instead of one `sendto(2)` per peer (issue 15: the idle
/// cost). Everything is allocated once, when the sender starts: the peers'
/// socket addresses per link are fixed by the configuration.
struct Outbox {
    /// Per link, per peer (configuration order): its address on the link.
    to: Vec<Vec<(libc::sockaddr_storage, libc::socklen_t)>>,
    bufs: Vec<[u8; UNICAST_LEN]>,
    /// The peer index of each filled buffer.
    peer: Vec<usize>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    len: usize,
}

/// `addr` as a C socket address.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, valid when zeroed.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in.
            unsafe { std::ptr::write(&mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

impl Outbox {
    fn new(cfg: &Config) -> Outbox {
        let n = cfg.peers.len();
        let to = (0..cfg.links.len())
            .map(|li| cfg.peers.iter().map(|p| sockaddr(SocketAddr::new(p.addresses[li], cfg.port))).collect())
            .collect();
        // SAFETY: iovec and mmsghdr are plain data (null pointers, zero
        // lengths) until `flush` points them at the buffers.
        let (iov, msg) = unsafe { (std::mem::zeroed::<libc::iovec>(), std::mem::zeroed::<libc::mmsghdr>()) };
        Outbox { to, bufs: vec![[0; UNICAST_LEN]; n], peer: vec![0; n], iovs: vec![iov; n], msgs: vec![msg; n], len: 0 }
    }

    /// Queues `pkt` for peer `pi`.
    fn push(&mut self, pi: usize, pkt: [u8; UNICAST_LEN]) {
        if self.len < self.bufs.len() {
            self.bufs[self.len] = pkt;
            self.peer[self.len] = pi;
            self.len += 1;
        }
    }

    /// Sends what is queued on `sock` (link `li`) and empties the queue.
    fn flush(&mut self, sock: &UdpSocket, li: usize, shared: &SenderShared) {
        use std::os::fd::AsRawFd;
        let n = std::mem::take(&mut self.len);
        for i in 0..n {
            let (addr, alen) = &self.to[li][self.peer[i]];
            self.iovs[i] = libc::iovec { iov_base: self.bufs[i].as_ptr() as *mut libc::c_void, iov_len: UNICAST_LEN };
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = addr as *const libc::sockaddr_storage as *mut libc::c_void;
            h.msg_namelen = *alen;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
        }
        let mut i = 0;
        while i < n {
            // SAFETY: msgs[i..n] point at live buffers, iovecs and
            // addresses of `self`, not touched during the call.
            let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), self.msgs[i..].as_mut_ptr(), (n - i) as libc::c_uint, 0) };
            if rc > 0 {
                shared.sent.fetch_add(rc as u64, Ordering::Relaxed);
                i += rc as usize;
            } else {
                // The datagram at `i` failed (EAGAIN on a full queue, ...):
                // counted, and the rest are still sent.
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }
    }
}

/// Sends one round (a heartbeat or a distress) on every link: on a
/// broadcast link one datagram carrying an entry for every peer (or several,
/// of at most `MAX_ENTRIES` entries each, each with its own sequence number),
/// on a unicast link one datagram per peer (all with one `sendmmsg`). `only`:
/// the peers to include (all when `None`).
#[allow(clippy::too_many_arguments)]
fn send_all(
    cfg: &Config,
    k0: u64,
    k1: u64,
    incarnation: u64,
    socks: &mut [LinkSock],
    out: &mut Outbox,
    dst_inc: &[u64],
    echo: &[[u32; MAX_LINKS as usize]],
    kind: u8,
    arg: u32,
    shared: &SenderShared,
    only: Option<&[bool]>,
) {
    debug_assert!(socks.len() <= MAX_LINKS as usize);
    let mut buf = [0u8; MAX_PACKET_LEN];
    let mut entries = [(0u32, 0u64, 0u32); MAX_ENTRIES];
    let send = |sock: &UdpSocket, pkt: &[u8], to: SocketAddr| match sock.send_to(pkt, to) {
        Ok(_) => {
            shared.sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            shared.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    for (li, ls) in socks.iter_mut().enumerate() {
        let mut common = Header {
            kind,
            link: li as u8,
            cluster_id: cfg.cluster_id,
            src_node: cfg.node_id,
            dst_node: 0,
            arg,
            incarnation,
            seq: 0,
            dst_incarnation: 0,
            echo_seq: 0,
        };
        let wanted = |pi: &usize| only.is_none_or(|o| o[*pi]);
        match ls.group {
            Some(group) => {
                let to = SocketAddr::new(group.ip(), cfg.port);
                let to = match (to, group) {
                    (SocketAddr::V6(mut t), SocketAddr::V6(g)) => {
                        t.set_scope_id(g.scope_id());
                        SocketAddr::V6(t)
                    }
                    (t, _) => t,
                };
                let mut n = 0;
                let mut pis = (0..cfg.peers.len()).filter(wanted).peekable();
                while let Some(pi) = pis.next() {
                    let (inc, e) = shared.acknowledged(pi, dst_inc[pi], echo[pi][li]);
                    entries[n] = (cfg.peers[pi].id, inc, e);
                    n += 1;
                    if n == MAX_ENTRIES || pis.peek().is_none() {
                        ls.seq += 1;
                        common.seq = ls.seq;
                        shared.sent_log.record(li, ls.seq, monotonic_ns());
                        let len = encode_into(&common, &entries[..n], k0, k1, &mut buf);
                        send(&ls.sock, &buf[..len], to);
                        n = 0;
                    }
                }
            }
            None => {
                ls.seq += 1;
                common.seq = ls.seq;
                shared.sent_log.record(li, ls.seq, monotonic_ns());
                for (pi, p) in cfg.peers.iter().enumerate().filter(|(pi, _)| wanted(pi)) {
                    let (inc, e) = shared.acknowledged(pi, dst_inc[pi], echo[pi][li]);
                    let h = Header { dst_node: p.id, dst_incarnation: inc, echo_seq: e, ..common };
                    out.push(pi, h.encode(k0, k1));
                }
                out.flush(&ls.sock, li, shared);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disowned_life_gets_no_acknowledgement_and_its_next_life_does() {
        let s = SenderShared {
            disowned: (0..2).map(|_| AtomicU64::new(0)).collect(),
            peer_ids: vec![2, 3],
            ..Default::default()
        };
        assert_eq!(s.acknowledged(0, 100, 7), (100, 7), "nothing disowned yet");
        s.disown(2, 100);
        assert_eq!(s.acknowledged(0, 100, 7), (0, 0), "the forced-out life of node 2");
        assert_eq!(s.acknowledged(1, 300, 9), (300, 9), "node 3 is not concerned");
        assert_eq!(s.acknowledged(0, 101, 1), (101, 1), "node 2's next life is acknowledged");
        assert_eq!(s.acknowledged(0, 0, 0), (0, 0), "an unknown incarnation stays unknown");
        s.disown(9, 5);
        s.disown(3, 0);
        assert_eq!(s.acknowledged(1, 300, 9), (300, 9), "unknown node or incarnation 0 disown nothing");
    }

    #[test]
    fn one_sendmmsg_delivers_each_queued_datagram_to_its_own_peer() {
        // Three receivers (IPv4 and IPv6 loopback), one sending socket.
        let rx: Vec<UdpSocket> = ["127.0.0.1:0", "127.0.0.1:0", "[::1]:0"].iter().map(|a| UdpSocket::bind(a).unwrap()).collect();
        for r in &rx {
            r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let tx4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx6 = UdpSocket::bind("[::1]:0").unwrap();
        let n = rx.len();
        // SAFETY: plain data, as in Outbox::new.
        let (iov, msg) = unsafe { (std::mem::zeroed::<libc::iovec>(), std::mem::zeroed::<libc::mmsghdr>()) };
        let mut out = Outbox {
            to: vec![rx.iter().map(|r| sockaddr(r.local_addr().unwrap())).collect()],
            bufs: vec![[0; UNICAST_LEN]; n],
            peer: vec![0; n],
            iovs: vec![iov; n],
            msgs: vec![msg; n],
            len: 0,
        };
        let shared = SenderShared::default();
        // Queued out of order: each datagram must reach the peer it was queued for.
        out.push(1, [1; UNICAST_LEN]);
        out.push(0, [0; UNICAST_LEN]);
        out.flush(&tx4, 0, &shared);
        out.push(2, [2; UNICAST_LEN]);
        out.flush(&tx6, 0, &shared);
        assert_eq!(shared.sent.load(Ordering::Relaxed), 3);
        assert_eq!(shared.send_errors.load(Ordering::Relaxed), 0);
        for (i, r) in rx.iter().enumerate() {
            let mut b = [0u8; 256];
            let (len, _) = r.recv_from(&mut b).unwrap();
            assert_eq!(&b[..len], &[i as u8; UNICAST_LEN][..], "receiver {i}");
        }
        // An IPv6 destination from an IPv4 socket fails: counted, and the
        // datagram after it still goes out.
        out.push(2, [9; UNICAST_LEN]);
        out.push(0, [7; UNICAST_LEN]);
        out.flush(&tx4, 0, &shared);
        assert_eq!((shared.sent.load(Ordering::Relaxed), shared.send_errors.load(Ordering::Relaxed)), (4, 1));
        let mut b = [0u8; 256];
        let (len, _) = rx[0].recv_from(&mut b).unwrap();
        assert_eq!(&b[..len], &[7; UNICAST_LEN][..]);
    }

    #[test]
    fn a_gap_at_or_beyond_the_bound_is_warned_once_per_new_record() {
        let s = SenderShared::default();
        s.max_gap_us.store(29_999, Ordering::Relaxed);
        assert_eq!(s.gap_warning(30_000), None, "below the bound");
        s.max_gap_us.store(30_000, Ordering::Relaxed);
        assert_eq!(s.gap_warning(30_000), Some(30_000));
        assert_eq!(s.gap_warning(30_000), None, "the same record again");
        s.max_gap_us.store(41_000, Ordering::Relaxed);
        assert_eq!(s.gap_warning(30_000), Some(41_000), "a new record");
        assert_eq!(s.gap_warning(30_000), None);
    }
}
