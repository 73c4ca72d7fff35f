//! The address lease: a node holds its floating addresses only while a
//! majority of its view (the same quorum rule as the membership core,
//! two-node rule included) both is heard by its own datapath and hears it:
//! a peer counts while this node heard it within the silence bound AND its
//! last echo names a heartbeat this node sent within the bound.
//!
//! Why: when a node is cut off, the survivors confirm its silence among
//! themselves (another member's datapath sees the same silence at once),
//! force it out and configure its addresses some tens of milliseconds after
//! the detection bound. The node that was cut off hears nobody either, but
//! its own silences cannot be confirmed by anyone (it is alone), so it would
//! wait the whole `membership.confirm_ms` and its halt before it releases
//! its addresses: for that time the address was on two live nodes (found by
//! `cargo xtask chaos`: 14–270 ms with `cut`, `isolate_one`,
//! `partition_minority`). The lease closes that window: a thread of its own
//! (SCHED_FIFO like the heartbeat sender, so CPU load does not delay it)
//! reads the pinned liveness map every heartbeat interval, and when fewer
//! peers than a majority of the view were heard within the detection bound
//! (`interval × misses`), it removes every floating address this agent
//! configured, at once, without waiting for any confirmation. Survivors
//! cannot act before that same bound plus their confirmation and the forced
//! leave's levels, so the isolated side lets go first.
//!
//! A lease lost by a false alarm (this node's receive path stalled) only
//! withdraws the addresses until the majority is heard again: they are then
//! configured again and announced, and nothing else changes (membership
//! still decides with its confirmation). Addresses added or released by the
//! services meanwhile are recorded here ([`crate::services::addr::add`] and
//! [`crate::services::addr::release`] go through [`HELD`]), so the set configured on
//! regain is the set the services want now.
//!
//! The supervised daemons of the groups (`kind = "daemon"`, whose process
//! groups the agent recorded) are frozen with SIGSTOP for as long as the
//! lease is lost and resumed with SIGCONT when it is regained: an isolated
//! node's application neither answers nor writes while the survivors start
//! theirs. Applications run by OCF agents or systemd are not frozen (their
//! processes are not the agent's children); fencing covers their storage.
//!
//! # Both ways: the echo (wire format version 3)
//!
//! A node that still hears the others but no longer reaches them (a one-way
//! cut, "mute"; heavy loss or a clogged queue on its sending side) hears a
//! majority, so hearing alone would keep its lease while the survivors force
//! it out and configure its addresses (found by `cargo xtask chaos`: `mute`,
//! 131 and 269 ms on two live nodes). So every heartbeat entry carries,
//! under its MAC, `echo_seq`: the (low 32 bits of the) `seq` of the last
//! heartbeat of the receiver on this link that the sender's datapath
//! accepted as liveness, read from its pinned map just before the round is
//! sent. The receiver's datapath stores it (`PeerLink::echo_seq`, live
//! heartbeats only); the heartbeat sender of this node remembers when it
//! sent each recent `seq` ([`SentLog`], this node's `CLOCK_MONOTONIC`,
//! stamped before the `sendto`). `heard_me` of a peer is the send time of
//! the heartbeat its echo names, and the peer counts from
//! `min(last_seen_ns, heard_me)` on ([`Peer::both_ways`]).
//!
//! Safety: let P be a survivor and T_P the moment its datapath accepted the
//! last heartbeat of this node M (by P's clock). Every echo P sends from
//! then on names that heartbeat or an older one, which M sent at t ≤ T_P (a
//! heartbeat is received after it was sent, and the send time is taken
//! before it). So M stops counting P at t + bound ≤ T_P + bound at the
//! latest, by M's own clock, whatever the delays, losses or reordering on
//! either path (a late echo only names an older heartbeat, and a stale map
//! read in P's sender only an older `seq`). P cannot declare M silent before
//! T_P + bound (its watchdog), and then still needs the confirmation, the
//! forced leave and the levels up to the address's level before it
//! configures the address. When every survivor stops hearing M (mute), M's
//! lease therefore ends first, by at least P's detection latency (a
//! watchdog tick) plus the confirmation and the forced leave, minus the
//! wake-up of this SCHED_FIFO thread (it sleeps until the exact expiry) and
//! the netlink removal. No clock is compared between nodes: each side only
//! measures ages on its own `CLOCK_MONOTONIC` (a wall-clock jump changes
//! nothing; only the two clocks' rates matter, parts per million of the
//! bound).
//!
//! Why a `seq` and not an age ("I heard you x µs ago", as first proposed):
//! the receiver would compute `now − x`, which is late by the transit time
//! of the echo; a slow path (the chaos suite's `slow`: a 10-packet queue at
//! 64 kbit/s holds about 100 ms) makes the mute node believe it was heard
//! more recently than it was, unsafe once that delay exceeds the
//! survivors' confirmation. A round trip on one clock has no such term.
//!
//! Where it can fail: (1) the lease thread or its netlink removal is held
//! up longer than the margin above (a stall of the whole machine; the thread
//! is real-time but the kernel work is not); (2) a partial one-way cut where
//! a majority still hears M and is heard by it while a minority forces it
//! out: M then learns from the membership state, as before (fencing covers
//! shared storage); (3) echoes are 32 bits of a 64-bit `seq`: a wrong match
//! needs an echo 2^32 datagrams old still in the log, whose slot holds a
//! number with the same low bits (the slot stores the full `seq`, and 4096
//! slots are far less than 2^32).
//!
//! The price: a peer counts only while the round trip (this node's
//! heartbeat to it, its wait until its next heartbeat, up to an interval,
//! and its heartbeat back) stays under the bound, so a path slower than
//! `bound − interval` round trip (20 ms at 10 ms × 3) makes this node
//! withdraw its addresses (`lease_lost`) although membership holds; they
//! come back when echoes are fresh again (`lease_regained`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use aya::maps::{Array, MapData};
use baton_common::PeerLink;
use nix::sys::signal::Signal;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::datapath::slot_base;
use crate::datapath::events::monotonic_ns;
use crate::datapath::sender::{SenderShared, SentLog};
use crate::services::held::{HELD, LOST};

/// Process groups of the supervised daemons (`kind = "daemon"`) running
/// here; while the lease is lost they are frozen (SIGSTOP), so that an
/// isolated node's application neither serves nor writes while the
/// survivors start theirs, and resumed (SIGCONT) when it is regained.
static APPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
static FROZEN: AtomicBool = AtomicBool::new(false);


/// Whether the daemons are frozen by a lost lease: a stop then ends them
/// with SIGKILL rather than resuming them to handle a SIGTERM.
pub fn apps_frozen() -> bool {
    FROZEN.load(Ordering::SeqCst) && !old_release()
}

/// Test switch (`BATON_TEST_LEASE_OLD_RELEASE=1`, read once): the lease
/// behaves as before its release under load was fixed: it removes the
/// addresses only through the services' netlink path (under [`HELD`]), it
/// resumes the frozen daemons when the node leaves its view, and a stop
/// resumes a frozen daemon to handle its SIGTERM. So that a test can show
/// what the fix prevents; never set it in production.
fn old_release() -> bool {
    static ON: LazyLock<bool> = LazyLock::new(|| std::env::var_os("BATON_TEST_LEASE_OLD_RELEASE").is_some_and(|v| v == "1"));
    *ON
}

/// A daemon's process group started (frozen at once while the lease is lost).
pub fn app_started(pgid: i32) {
    if let Ok(mut a) = APPS.lock() {
        a.insert(pgid);
        if FROZEN.load(Ordering::SeqCst) {
            signal_group(pgid, Signal::SIGSTOP);
        }
    }
}

/// A daemon's process group ended.
pub fn app_ended(pgid: i32) {
    if let Ok(mut a) = APPS.lock() {
        a.remove(&pgid);
    }
}

fn signal_group(pgid: i32, sig: Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
}

/// Freezes (or resumes) every daemon; returns how many.
fn freeze_apps(frozen: bool) -> usize {
    let Ok(a) = APPS.lock() else { return 0 };
    FROZEN.store(frozen, Ordering::SeqCst);
    for pg in a.iter() {
        signal_group(*pg, if frozen { Signal::SIGSTOP } else { Signal::SIGCONT });
    }
    a.len()
}

/// Ends every frozen daemon with SIGKILL (the node left its view while its
/// lease was lost: the survivors run the groups now, and a frozen daemon
/// must never run again, not even to handle a SIGTERM); returns how many.
fn kill_frozen_apps() -> usize {
    let Ok(a) = APPS.lock() else { return 0 };
    for pg in a.iter() {
        signal_group(*pg, Signal::SIGKILL);
    }
    FROZEN.store(false, Ordering::SeqCst);
    a.len()
}

/// The lease's own way to remove the floating addresses, armed when its
/// thread starts: a NETLINK_ROUTE socket of its own and one `RTM_DELADDR`
/// request per address of every configured group, built on the stack when
/// the lease ends. It takes no lock the services hold ([`HELD`] is taken
/// only afterwards, for the bookkeeping), opens no connection, dumps
/// nothing and needs no runtime: one `sendto` and one `recv` per address.
///
/// Why: in the 60-minute chaos run (seed 2026, 14:04:33) a cut-off node's
/// lease thread, due to remove `web`'s address at the bound, waited about
/// 100 ms on [`HELD`], held by the services' own release of that address,
/// whose netlink connection task could not run while the agent's runtime
/// spawned a watchdog process (a fork of the whole agent under load): the
/// address was on two live nodes for 35 ms.
struct Remover {
    fd: std::os::fd::OwnedFd,
    /// (interface, address, prefix length) of every configured group.
    addrs: Vec<(String, IpAddr, u8)>,
    seq: u32,
}

impl Remover {
    fn open(cfg: &Config) -> std::io::Result<Remover> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mut addrs = Vec::new();
        for g in &cfg.groups {
            for a in &g.addresses {
                addrs.push((g.interface.clone(), a.ip, a.prefix));
            }
        }
        Ok(Remover { fd, addrs, seq: 0 })
    }

    /// Removes every configured floating address from this node (those not
    /// configured here answer EADDRNOTAVAIL); returns how many were removed.
    fn remove_all(&mut self) -> usize {
        let mut n = 0;
        let Remover { fd, addrs, seq } = self;
        for (ifname, ip, prefix) in addrs.iter() {
            let (ip, prefix) = (*ip, *prefix);
            // IPv4: every instance, whatever its prefix (one per request).
            for _ in 0..4 {
                match Self::remove(fd, seq, ifname, ip, prefix) {
                    Ok(true) => n += 1,
                    Ok(false) => break,
                    Err(e) => {
                        error!(interface = %ifname, address = %ip, "address lease: removing the address failed: {e}");
                        break;
                    }
                }
                if ip.is_ipv6() {
                    break;
                }
            }
        }
        n
    }

    /// One `RTM_DELADDR`: Ok(true) removed, Ok(false) not there.
    fn remove(fd: &std::os::fd::OwnedFd, seq: &mut u32, ifname: &str, ip: IpAddr, prefix: u8) -> std::io::Result<bool> {
        use std::os::fd::AsRawFd;
        let mut name = [0u8; 16 /* IF_NAMESIZE */ + 1];
        let b = ifname.as_bytes();
        if b.len() >= 16 /* IF_NAMESIZE */ {
            return Err(std::io::Error::from_raw_os_error(libc::ENODEV));
        }
        name[..b.len()].copy_from_slice(b);
        // SAFETY: a NUL-terminated name on the stack.
        let index = unsafe { libc::if_nametoindex(name.as_ptr() as *const libc::c_char) };
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        *seq = seq.wrapping_add(1);
        let mut octets = [0u8; 16];
        let (family, attr, alen): (u8, u16, usize) = match ip {
            IpAddr::V4(a) => {
                octets[..4].copy_from_slice(&a.octets());
                (libc::AF_INET as u8, 2 /* IFA_LOCAL */, 4)
            }
            IpAddr::V6(a) => {
                octets.copy_from_slice(&a.octets());
                (libc::AF_INET6 as u8, 1 /* IFA_ADDRESS */, 16)
            }
        };
        let bytes = &octets[..alen];
        // nlmsghdr (16) + ifaddrmsg (8) + rtattr (4) + the address.
        let len = 16 + 8 + 4 + bytes.len();
        let mut buf = [0u8; 48];
        buf[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        buf[4..6].copy_from_slice(&libc::RTM_DELADDR.to_ne_bytes());
        buf[6..8].copy_from_slice(&(0x1u16 | 0x4 /* NLM_F_REQUEST | NLM_F_ACK */).to_ne_bytes());
        buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        buf[16] = family;
        buf[17] = prefix;
        buf[20..24].copy_from_slice(&index.to_ne_bytes());
        buf[24..26].copy_from_slice(&((4 + bytes.len()) as u16).to_ne_bytes());
        buf[26..28].copy_from_slice(&attr.to_ne_bytes());
        buf[28..28 + bytes.len()].copy_from_slice(bytes);
        // SAFETY: an all-zero sockaddr_nl is the kernel's address.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                len,
                0,
                &to as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The kernel handled the request within sendto: its answer is
        // queued (an older answer of an earlier request is skipped by seq).
        let mut ans = [0u8; 256];
        for _ in 0..8 {
            let got = unsafe { libc::recv(fd.as_raw_fd(), ans.as_mut_ptr() as *mut libc::c_void, ans.len(), libc::MSG_DONTWAIT) };
            if got < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if got < 20 {
                continue;
            }
            let kind = u16::from_ne_bytes([ans[4], ans[5]]);
            let got_seq = u32::from_ne_bytes([ans[8], ans[9], ans[10], ans[11]]);
            if kind != 2 /* NLMSG_ERROR */ || got_seq != *seq {
                continue;
            }
            let err = i32::from_ne_bytes([ans[16], ans[17], ans[18], ans[19]]);
            return match -err {
                0 => Ok(true),
                libc::EADDRNOTAVAIL | libc::ENODEV => Ok(false),
                e => Err(std::io::Error::from_raw_os_error(e)),
            };
        }
        Err(std::io::Error::other("no answer to RTM_DELADDR"))
    }
}

/// The group of the cluster state this node follows (with this node), as
/// the cluster driver last wrote it; empty while not a member.
static VIEW: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The lease thread, woken (unparked) when the view changes or it must
/// stop: otherwise it sleeps until the lease would end (see `run`).
static THREAD: Mutex<Option<std::thread::Thread>> = Mutex::new(None);

fn wake_thread() {
    if let Some(t) = THREAD.lock().ok().and_then(|t| t.clone()) {
        t.unpark();
    }
}

/// Called by the cluster driver whenever the state it follows changes.
///
/// When the group grows by a node while this node was already a member (a
/// node joined or rejoined: often the heal of a partition), every floating
/// address this node holds is announced again. A takeover during a
/// partition announced the addresses on its own side only; a client on the
/// other side keeps the old owner's MAC address in its ARP or neighbour
/// cache, reachable for up to 45 s (`base_reachable_time` 30 s,
/// randomised, plus the probes), and is not answered for that long
/// (`cargo xtask chaos`, partition kinds: 31–46 s). keepalived sends a
/// second round of gratuitous ARP for the same reason
/// (`vrrp_garp_master_delay`).
pub fn set_view(group: impl IntoIterator<Item = u32>) {
    let g: Vec<u32> = group.into_iter().collect();
    let (grew, changed) = match VIEW.lock() {
        Ok(mut v) => {
            let grew = !v.is_empty() && g.iter().any(|n| !v.contains(n));
            let changed = *v != g;
            *v = g;
            (grew, changed)
        }
        Err(_) => (false, false),
    };
    if changed {
        wake_thread();
    }
    if grew {
        reannounce_held();
    }
}

/// Announces every held address again (not while the lease is lost: they
/// are not configured then), in the background.
fn reannounce_held() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        let held: Vec<(String, IpAddr)> = rt.block_on(async {
            let h = HELD.lock().await;
            if h.withdrawn {
                Vec::new()
            } else {
                h.entries.iter().map(|(i, a, _)| (i.clone(), *a)).collect()
            }
        });
        for (ifname, ip) in held {
            info!(interface = %ifname, address = %ip, "a node joined the view: announcing the address again (a client cut off by a partition may still know the old owner)");
            if let Err(e) = rt.block_on(crate::services::addr::announce(&ifname, ip, &crate::services::addr::Announce::default())) {
                warn!(interface = %ifname, address = %ip, "announcing the address again failed: {e}");
            }
        }
    });
}

/// Whether `heard` (this node included) keeps the lease in `group`: a
/// majority, or, with two configured nodes, half when the lower id is heard
/// (or a disk decides the race): `baton_core::membership`'s quorum rule.
pub fn majority(group: &[u32], heard: &BTreeSet<u32>, configured_nodes: usize, two_node_race: bool) -> bool {
    let Some(lowest) = group.iter().min() else { return true };
    let seen = group.iter().filter(|n| heard.contains(n)).count();
    seen * 2 > group.len() || (configured_nodes == 2 && seen * 2 == group.len() && (two_node_race || heard.contains(lowest)))
}

pub struct Lease {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Starts the lease thread (after the datapath pinned its maps).
pub fn spawn(cfg: &Config, sender: Arc<SenderShared>) -> std::io::Result<Lease> {
    let peers = crate::datapath::pinned::peers(&cfg.paths.bpffs_dir).map_err(std::io::Error::other)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let cfg = cfg.clone();
    let thread = std::thread::Builder::new().name("baton-lease".into()).spawn(move || run(cfg, peers, sender, s2))?;
    if let Ok(mut t) = THREAD.lock() {
        *t = Some(thread.thread().clone());
    }
    Ok(Lease { stop, thread: Some(thread) })
}


/// What the lease knows of one peer (monotonic ns; 0: never).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peer {
    id: u32,
    /// The last time this node heard the peer (any link).
    heard: u64,
    /// The latest time this node sent a heartbeat that, by the peer's
    /// echo, the peer had heard (any link; this node's clock).
    heard_me: u64,
}

impl Peer {
    /// Since when the peer counts for the lease: both ways must be recent,
    /// so the older of the two (0: it does not count).
    fn both_ways(&self, echo_rule: bool) -> u64 {
        if echo_rule {
            self.heard.min(self.heard_me)
        } else {
            self.heard
        }
    }
}

/// Test switch (`BATON_TEST_LEASE_NO_ECHO=1`, read once): the lease ignores
/// the echoes, as before wire format version 3, so that a test can show
/// what the echo rule prevents. Never set it in production.
fn echo_rule() -> bool {
    static ON: LazyLock<bool> = LazyLock::new(|| std::env::var_os("BATON_TEST_LEASE_NO_ECHO").is_none_or(|v| v != "1"));
    *ON
}

/// Each peer's record, in configuration order: when it was last heard (the
/// liveness map's `last_seen_ns`) and when it last heard this node (the
/// send time of the heartbeat its `echo_seq` names, from `sent`).
fn read_peers(cfg: &Config, peers: &Array<MapData, PeerLink>, sent: &SentLog) -> Vec<Peer> {
    let mut out = Vec::with_capacity(cfg.peers.len());
    for (i, p) in cfg.peers.iter().enumerate() {
        let (mut heard, mut heard_me) = (0, 0);
        for l in 0..cfg.links.len() {
            if let Ok(rec) = peers.get(&(slot_base(i) + l as u32), 0) {
                heard = heard.max(rec.last_seen_ns);
                heard_me = heard_me.max(sent.sent_at(l, rec.echo_seq).unwrap_or(0));
            }
        }
        out.push(Peer { id: p.id, heard, heard_me });
    }
    out
}

/// When the lease ends unless more is heard: the earliest time at which the
/// peers heard within `bound_ns` no longer keep [`majority`] (`None`: it is
/// already lost at `now`). `last`: per peer, since when it counts (for the
/// lease, [`Peer::both_ways`]: the older of "this node heard it" and "it
/// heard this node"). Peers drop out in that order, so this is found by
/// dropping the stalest first.
fn expiry(me: u32, group: &[u32], last: &[(u32, u64)], now: u64, bound_ns: u64, configured: usize, race: bool) -> Option<u64> {
    let mut alive: Vec<(u64, u32)> = last
        .iter()
        .filter(|(id, t)| group.contains(id) && *t != 0 && now.saturating_sub(*t) < bound_ns)
        .map(|(id, t)| (*t, *id))
        .collect();
    alive.sort();
    let mut heard: BTreeSet<u32> = alive.iter().map(|(_, id)| *id).collect();
    heard.insert(me);
    if !majority(group, &heard, configured, race) {
        return None;
    }
    for (t, id) in alive {
        heard.remove(&id);
        if !majority(group, &heard, configured, race) {
            return Some(t + bound_ns);
        }
    }
    // This node alone keeps it (a two-node cluster's lower id).
    Some(u64::MAX)
}

fn run(cfg: Config, peers: Array<MapData, PeerLink>, sender: Arc<SenderShared>, stop: Arc<AtomicBool>) {
    crate::datapath::sender::set_realtime("address lease", cfg.realtime_priority);
    // Touch the stack this thread uses now, so that its pages are there
    // (and locked, MCL_ONFAULT) before the moment the lease ends.
    std::hint::black_box([0u8; 64 * 1024]);
    if old_release() {
        warn!("BATON_TEST_LEASE_OLD_RELEASE=1: the address lease releases as before (a test switch; never set it in production)");
    }
    let mut remover = match Remover::open(&cfg) {
        Ok(r) if !old_release() => Some(r),
        Ok(_) => None,
        Err(e) => {
            warn!("the address lease cannot open its own netlink socket ({e}): it removes addresses through the services' netlink path");
            None
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("the address lease cannot start its runtime: {e}; addresses are not withdrawn on isolation");
            return;
        }
    };
    let interval_ns = cfg.interval_ms as u64 * 1_000_000;
    let bound = cfg.timeout_ns();
    let configured = cfg.peers.len() + 1;
    let race = cfg.two_node_race();
    let mut lost_at: Option<u64> = None;
    let mut wake = monotonic_ns();
    // When the lease was due to end, as computed at the last wake-up.
    let mut due: Option<u64> = None;
    while !stop.load(Ordering::SeqCst) {
        // Sleeps until the lease would end (exactly, so that the isolated
        // side lets go as soon as the survivors can detect its silence),
        // not one interval more (issue 15: polling every interval was 100
        // wake-ups a second at 10 ms); a view change or the stop unparks it.
        // The expiry only moves later with what is heard meanwhile: each
        // peer counts until its own evidence + the bound (the safety
        // argument above is per peer), so waking then loses nothing.
        let now = monotonic_ns();
        if wake > now {
            std::thread::park_timeout(Duration::from_nanos(wake - now));
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        let group = VIEW.lock().map(|v| v.clone()).unwrap_or_default();
        let now = monotonic_ns();
        let recs = read_peers(&cfg, &peers, &sender.sent_log);
        let rule = echo_rule();
        let last: Vec<(u32, u64)> = recs.iter().map(|p| (p.id, p.both_ways(rule))).collect();
        let member = group.len() >= 2 && group.contains(&cfg.node_id);
        let until = if member { expiry(cfg.node_id, &group, &last, now, bound, configured, race) } else { Some(u64::MAX) };
        let ok = until.is_some();
        // Lost: polled every interval, to be regained as soon as a
        // majority is heard again. Held (or not a member): until it would
        // end, and a second at most (a view change wakes it sooner).
        wake = match until {
            None => now + interval_ns,
            Some(t) => t.min(now + 1_000_000_000),
        };
        let was_due = std::mem::replace(&mut due, until.filter(|t| *t != u64::MAX));
        let recent = |t: u64| t != 0 && now.saturating_sub(t) < bound;
        let heard: Vec<u32> = std::iter::once(cfg.node_id).chain(recs.iter().filter(|p| recent(p.heard)).map(|p| p.id)).collect();
        match (ok, lost_at) {
            (false, None) => {
                lost_at = Some(now);
                LOST.store(true, Ordering::SeqCst);
                // The daemons first (a signal per group), then the
                // addresses over this thread's own netlink socket, then
                // the bookkeeping under HELD (which also removes an
                // address the services were adding meanwhile).
                let apps = freeze_apps(true);
                let fast = remover.as_mut().map(|r| r.remove_all());
                let removed_at = monotonic_ns();
                let n = rt.block_on(withdraw());
                // How long after the computed end of the lease the addresses
                // were gone (this thread's wake-up, the signals, netlink).
                let late_ms = was_due.map(|d| removed_at.saturating_sub(d) as f64 / 1e6);
                // Of which this thread's own wake-up (the rest: the
                // signals and the netlink requests, e.g. waiting for RTNL).
                let woke_ms = was_due.map(|d| now.saturating_sub(d) as f64 / 1e6);
                let heard_list = heard;
                let hears_me: Vec<u32> = std::iter::once(cfg.node_id).chain(recs.iter().filter(|p| recent(p.heard_me)).map(|p| p.id)).collect();
                warn!(?group, heard = ?heard_list, ?hears_me, addresses = n, removed = ?fast, apps, ?late_ms, ?woke_ms, "address lease lost: no majority of this node's view both hears it and is heard by it; its floating addresses are withdrawn and its daemons frozen until one does");
                crate::eventlog::record(&cfg.paths.events_log(), serde_json::json!({"event": "lease_lost", "group": group, "heard": heard_list, "hears_me": hears_me, "addresses": n, "apps_frozen": apps, "late_ms": late_ms, "woke_ms": woke_ms}));
            }
            (true, Some(_)) if !member => {
                // Halted or left meanwhile: the services released what they
                // held; nothing is configured again. The frozen daemons
                // are ended, never resumed: the survivors run their groups
                // by now, and the halt stops one group after the other
                // (a daemon resumed here ran again until its own stop: the
                // 60-minute chaos run saw db's httpd on two live nodes for
                // 51 and 281 ms that way, after `mute` and `cut`).
                lost_at = None;
                let killed = if old_release() {
                    freeze_apps(false);
                    0
                } else {
                    kill_frozen_apps()
                };
                rt.block_on(async {
                    let mut h = HELD.lock().await;
                    h.withdrawn = false;
                    LOST.store(false, Ordering::SeqCst);
                });
                info!(killed, "address lease over: this node is no longer a member of a view; its frozen daemons are ended (SIGKILL)");
            }
            (true, Some(t)) => {
                lost_at = None;
                // The application first, then its address (as a start does).
                freeze_apps(false);
                let again = rt.block_on(restore());
                let held_ms = now.saturating_sub(t) as f64 / 1e6;
                info!(held_ms, addresses = again.len(), "address lease regained: the withdrawn addresses are configured again");
                crate::eventlog::record(&cfg.paths.events_log(), serde_json::json!({"event": "lease_regained", "withdrawn_ms": held_ms, "addresses": again.len()}));
                for (ifname, ip) in again {
                    // Announced in the background: the rounds sleep.
                    std::thread::spawn(move || {
                        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                            let _ = rt.block_on(crate::services::addr::announce(&ifname, ip, &crate::services::addr::Announce::default()));
                        }
                    });
                }
            }
            _ => {}
        }
    }
}

/// Removes every held address; returns how many were held.
async fn withdraw() -> usize {
    let mut h = HELD.lock().await;
    h.withdrawn = true;
    for (ifname, ip, prefix) in h.entries.clone() {
        if let Err(e) = crate::services::addr::release_raw(&ifname, ip, prefix).await {
            error!(interface = %ifname, address = %ip, "address lease: removing the address failed: {e}");
        }
    }
    h.entries.len()
}

/// Configures every held address again; returns those configured.
async fn restore() -> Vec<(String, IpAddr)> {
    let mut h = HELD.lock().await;
    h.withdrawn = false;
    LOST.store(false, Ordering::SeqCst);
    let mut out = Vec::new();
    for (ifname, ip, prefix) in h.entries.clone() {
        match crate::services::addr::add_raw(&ifname, ip, prefix, true).await {
            Ok(_) => out.push((ifname, ip)),
            Err(e) => error!(interface = %ifname, address = %ip, "address lease: configuring the address again failed: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn the_lease_ends_when_the_stalest_peer_of_a_bare_majority_goes_past_the_bound() {
        let g = [1, 2, 3, 4, 5];
        let b = 30;
        // Me (1) and peers heard at 90, 95, 80, never: majority = 3 of 5.
        let last = [(2, 90), (3, 95), (4, 80), (5, 0)];
        // Dropping 4 (80) leaves 1,2,3: still a majority; dropping 2 (90)
        // then leaves 1,3: not. So the lease ends at 90 + 30.
        assert_eq!(expiry(1, &g, &last, 100, b, 5, false), Some(120));
        // At 111, 4 (80) is past the bound already: the same end.
        assert_eq!(expiry(1, &g, &last, 111, b, 5, false), Some(120));
        // At 121, only 3 remains: lost.
        assert_eq!(expiry(1, &g, &last, 121, b, 5, false), None);
        // Not in the group: peers outside the view do not count.
        assert_eq!(expiry(1, &[1, 2, 3], &[(2, 0), (3, 99), (4, 99)], 100, b, 4, false), Some(129));
        // Two nodes, lower id: it keeps the lease alone.
        assert_eq!(expiry(1, &[1, 2], &[(2, 0)], 100, b, 2, false), Some(u64::MAX));
        assert_eq!(expiry(2, &[1, 2], &[(1, 0)], 100, b, 2, false), None);
    }

    #[test]
    fn a_peer_counts_only_while_it_is_heard_and_hears_this_node() {
        let g = [1, 2, 3, 4, 5];
        let b = 30;
        let at = |recs: &[Peer], now: u64, rule: bool| {
            let last: Vec<(u32, u64)> = recs.iter().map(|p| (p.id, p.both_ways(rule))).collect();
            expiry(1, &g, &last, now, b, 5, false)
        };
        // Node 1 is mute: it hears every peer (at 95..100), but their echoes
        // name heartbeats it sent at 60, 62, 70 and 71 at the latest.
        let mute = [
            Peer { id: 2, heard: 100, heard_me: 60 },
            Peer { id: 3, heard: 99, heard_me: 62 },
            Peer { id: 4, heard: 97, heard_me: 70 },
            Peer { id: 5, heard: 95, heard_me: 71 },
        ];
        // Me + 2 more needed: dropping 60, 62 leaves 4, 5; dropping 70
        // leaves one: the lease ends at 70 + 30, not at 97 + 30.
        assert_eq!(at(&mute, 90, true), Some(100));
        assert_eq!(at(&mute, 101, true), None);
        // Without the echo rule it would hold until the second freshest
        // peer heard (99) goes past the bound.
        assert_eq!(at(&mute, 101, false), Some(129));
        // Deaf instead (echoes fresh, peers not heard): the older side
        // decides all the same.
        let deaf: Vec<Peer> = mute.iter().map(|p| Peer { heard: p.heard_me, heard_me: p.heard, ..*p }).collect();
        assert_eq!(at(&deaf, 90, true), Some(100));
        // A peer with no echo at all (0: it never heard this life of ours,
        // or the echo is forgotten) does not count, however fresh.
        let no_echo = [Peer { id: 2, heard: 100, heard_me: 0 }, Peer { id: 3, heard: 100, heard_me: 99 }, Peer { id: 4, heard: 100, heard_me: 98 }];
        assert_eq!(at(&no_echo, 100, true), Some(128));
        assert_eq!(at(&no_echo[..2], 100, true), None);
        // The next wake-up is the end of the lease, exactly: a fresh echo
        // from a peer moves it.
        let mut later = mute;
        later[2].heard_me = 80;
        assert_eq!(at(&later, 90, true), Some(101));
    }

    #[test]
    fn the_send_log_times_an_echo_or_forgets_it() {
        let log = SentLog::new(2);
        log.record(0, 7, 1_000);
        log.record(1, 7, 2_000);
        assert_eq!(log.sent_at(0, 7), Some(1_000));
        assert_eq!(log.sent_at(1, 7), Some(2_000));
        // No echo, a number never sent, a link that does not exist.
        assert_eq!(log.sent_at(0, 0), None);
        assert_eq!(log.sent_at(0, 8), None);
        assert_eq!(log.sent_at(2, 7), None);
        // A slot reused by a later number forgets the earlier one.
        log.record(0, 7 + crate::datapath::sender::SENT_LOG as u64, 3_000);
        assert_eq!(log.sent_at(0, 7), None);
        assert_eq!(log.sent_at(0, 7 + crate::datapath::sender::SENT_LOG as u32), Some(3_000));
        // The echo is the low 32 bits of a 64-bit sequence number.
        let big = (5u64 << 32) | 9;
        log.record(1, big, 4_000);
        assert_eq!(log.sent_at(1, 9), Some(4_000));
    }

    #[test]
    fn the_lease_follows_the_membership_quorum_rule() {
        // 3 nodes: me and one peer keep it; me alone does not.
        assert!(majority(&[1, 2, 3], &set(&[1, 2]), 3, false));
        assert!(!majority(&[1, 2, 3], &set(&[3]), 3, false));
        // 5 nodes: a minority of 2 does not, a majority of 3 does.
        assert!(!majority(&[1, 2, 3, 4, 5], &set(&[4, 5]), 5, false));
        assert!(majority(&[1, 2, 3, 4, 5], &set(&[1, 2, 5]), 5, false));
        // 4 nodes split 2|2: neither side.
        assert!(!majority(&[1, 2, 3, 4], &set(&[1, 2]), 4, false));
        // Two configured nodes: the side of the lower id keeps it, unless a
        // disk decides the race (then both, and fencing decides).
        assert!(majority(&[1, 2], &set(&[1]), 2, false));
        assert!(!majority(&[1, 2], &set(&[2]), 2, false));
        assert!(majority(&[1, 2], &set(&[2]), 2, true));
        // A group shrunk to this node after the others left.
        assert!(majority(&[2], &set(&[2]), 3, false));
    }
}
