//! `cargo xtask chaos --nodes 5 --minutes M --seed S`: a cluster of real
//! agents in network namespaces (real XDP, real netlink), two groups with
//! floating addresses and a client load on each, and a seeded nemesis that
//! injects one fault episode after another while invariants are checked
//! from outside the agents. See docs/chaos.md.
//!
//! One seed drives every choice of the nemesis (which fault, its targets,
//! its durations and the gaps) through a small deterministic PRNG
//! (splitmix64); the outcomes still depend on timing, so a seed reproduces
//! the same sequence of faults, not necessarily the same interleaving.
//!
//! Invariants, checked continuously:
//! - a floating address is never configured on two live nodes (netlink
//!   dumps of every node's addresses every few ms; a node is live unless its
//!   agent is SIGSTOPped or killed, and for `release_ms` after it was
//!   continued or restarted);
//! - a group's application (`busybox httpd` on its address) never runs on
//!   two live nodes (a /proc scan every ~50 ms, process → netns);
//! - after each heal the cluster converges (every agent joined, one view, no
//!   transition in flight, each group's address and application on exactly
//!   one node, and the client answered by that node) within the stated
//!   bound;
//! - no agent exits or panics (a halt and a new life of a node that was
//!   forced out or lost quorum is documented; an exit is not);
//! - no node that the episode neither killed, paused nor cut off (network
//!   faults count as cut) halts: a halt there is a false forced leave.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use baton_tests::state::StateName;
use baton_tests::{in_netns, monotonic_ns, Cluster, Prober};

use crate::bench_failover::{check_interrupt, install_sigint, interrupted, remove_leftovers, Reaper};

/// Options of `cargo xtask chaos`.
#[derive(Debug, Clone)]
pub struct ChaosOpts {
    pub nodes: usize,
    pub minutes: f64,
    pub seed: u64,
    pub interval_ms: u32,
    pub misses: u32,
    /// Convergence bound after a heal (plus the documented rejoin back-off
    /// of the nodes that halted in the episode).
    pub converge_ms: u64,
    /// How long a node stays excluded from the ownership checks after its
    /// agent was continued or restarted (it must release what it held by then).
    pub release_ms: u64,
    /// Only these fault kinds (all when empty).
    pub kinds: Vec<String>,
    /// Client request period per group.
    pub period_ms: u64,
}

const TAG: &str = "chao";
const GROUPS: [(&str, &str, [u8; 4]); 2] = [("web", "10.77.0.100", [10, 77, 0, 100]), ("db", "10.77.0.101", [10, 77, 0, 101])];

/// Every fault kind, in the order of the JSON counts.
pub const KINDS: [&str; 15] = [
    "crash",
    "kill_agent",
    "pause_short",
    "pause_long",
    "cut",
    "isolate_one",
    "partition_minority",
    "partition_majority",
    "deaf",
    "mute",
    "loss",
    "slow",
    "restart_in_transition",
    "stress",
    "operator",
];

// ---------------------------------------------------------------------------
// The PRNG: splitmix64, one stream for every choice.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in [a, b].
    pub fn range(&mut self, a: u64, b: u64) -> u64 {
        a + self.below(b - a + 1)
    }
    /// `k` distinct indices of 0..n, ascending.
    pub fn pick(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k.min(n) {
            let j = i + self.below((n - i) as u64) as usize;
            all.swap(i, j);
        }
        let mut v = all[..k.min(n)].to_vec();
        v.sort();
        v
    }
}

// ---------------------------------------------------------------------------
// Shared state between the nemesis and the checker thread.

struct Shared {
    t0: u64,
    /// Per node: excluded from the ownership checks until this time (ns);
    /// u64::MAX while paused or killed.
    excluded_until: Vec<u64>,
    /// Per group: nodes whose address sample showed it in the last round.
    addr_owners: Vec<Vec<usize>>,
    /// Per group: nodes running its application in the last /proc scan.
    app_owners: Vec<Vec<usize>>,
    violations: Vec<String>,
    timeline: Vec<String>,
    rounds: u64,
    /// The kind of the episode under way ("start" before the first), and
    /// the violations per kind of the episode they happened in.
    episode: &'static str,
    by_kind: BTreeMap<&'static str, u64>,
    /// Checker rounds that took over 100 ms (the host stalled), the longest.
    stalls: u64,
    max_stall_ms: f64,
}

impl Shared {
    fn live(&self, i: usize, now: u64) -> bool {
        now >= self.excluded_until[i]
    }
    fn ms(&self, t: u64) -> f64 {
        t.saturating_sub(self.t0) as f64 / 1e6
    }
    fn note(&mut self, what: String) {
        let line = format!("{:>10.1} ms  {}  {what}", self.ms(monotonic_ns()), utc_now());
        println!("  {line}");
        self.timeline.push(line);
    }
    fn violate(&mut self, what: String) {
        let line = format!("{:>10.1} ms  {}  VIOLATION: {what}", self.ms(monotonic_ns()), utc_now());
        println!("  {line}");
        self.timeline.push(line.clone());
        self.violations.push(line);
        *self.by_kind.entry(self.episode).or_default() += 1;
    }
}

type SharedRef = Arc<Mutex<Shared>>;

/// HH:MM:SS.mmm UTC, to match the agents' log lines.
fn utc_now() -> String {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let s = ts.tv_sec % 86400;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600, s / 60 % 60, s % 60, ts.tv_nsec / 1_000_000)
}

// ---------------------------------------------------------------------------
// The checker: addresses over netlink in every node namespace, applications
// from /proc.

fn netlink_socket(ns: &str) -> OwnedFd {
    in_netns(ns, || {
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        assert!(fd >= 0, "netlink socket: {}", std::io::Error::last_os_error());
        unsafe { OwnedFd::from_raw_fd(fd) }
    })
}

/// The IPv4 addresses configured in the namespace of `fd` (RTM_GETADDR dump).
fn ipv4_addrs(fd: &OwnedFd, seq: u32) -> Option<Vec<[u8; 4]>> {
    let mut req = [0u8; 24];
    req[0..4].copy_from_slice(&24u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETADDR.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    req[16] = libc::AF_INET as u8;
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr() as *const libc::c_void, req.len(), 0) };
    if n != 24 {
        return None;
    }
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::new();
    loop {
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n <= 0 {
            return None;
        }
        let n = n as usize;
        let mut off = 0usize;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
            if len < 16 || off + len > n {
                break;
            }
            if mseq == seq {
                if ty == libc::NLMSG_DONE as u16 {
                    return Some(out);
                }
                if ty == libc::NLMSG_ERROR as u16 {
                    return None;
                }
                if ty == libc::RTM_NEWADDR {
                    let mut a = off + 16 + 8;
                    while a + 4 <= off + len {
                        let alen = u16::from_ne_bytes(buf[a..a + 2].try_into().unwrap()) as usize;
                        let aty = u16::from_ne_bytes(buf[a + 2..a + 4].try_into().unwrap());
                        if alen < 4 {
                            break;
                        }
                        if aty == libc::IFA_LOCAL && alen == 8 {
                            out.push(buf[a + 4..a + 8].try_into().unwrap());
                        }
                        a += (alen + 3) & !3;
                    }
                }
            }
            off += (len + 3) & !3;
        }
    }
}

fn netns_inode(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Per group, the nodes whose namespace runs `busybox httpd` on its address.
fn app_scan(node_inodes: &[u64]) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); GROUPS.len()];
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains("httpd") || cmd.contains("/bin/sh") {
            continue;
        }
        // Zombies (a stopped httpd not yet reaped) do not serve, nor does a
        // daemon frozen (SIGSTOP, state T) by its node's address lease.
        if let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if st.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with(['Z', 'T'])).unwrap_or(false) {
                continue;
            }
        }
        let Some(ino) = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|l| l.to_string_lossy().trim_start_matches("net:[").trim_end_matches(']').parse::<u64>().ok())
        else {
            continue;
        };
        let Some(node) = node_inodes.iter().position(|&n| n == ino) else { continue };
        for (g, (_, vip, _)) in GROUPS.iter().enumerate() {
            if cmd.contains(&format!("-p {vip}:80")) && !out[g].contains(&node) {
                out[g].push(node);
            }
        }
    }
    out
}

/// Tracks, per group and per kind of check, the pairs of live nodes seen
/// together in two consecutive rounds (then both certainly held it at once:
/// see `baton_tests::svc::certain_intervals`).
struct DualTracker {
    prev: Vec<Vec<usize>>,
    open: Vec<Option<(u64, Vec<usize>)>>,
}

impl DualTracker {
    fn new() -> DualTracker {
        DualTracker { prev: vec![Vec::new(); GROUPS.len()], open: vec![None; GROUPS.len()] }
    }
    fn round(&mut self, sh: &mut Shared, what: &str, now_owners: Vec<Vec<usize>>, now: u64) {
        for g in 0..GROUPS.len() {
            let both: Vec<usize> =
                now_owners[g].iter().copied().filter(|n| self.prev[g].contains(n) && sh.live(*n, now)).collect();
            match (&self.open[g], both.len() >= 2) {
                (None, true) => {
                    let names: Vec<String> = both.iter().map(|n| format!("node{}", n + 1)).collect();
                    sh.violate(format!("{what} of group {} on two live nodes at once: {}", GROUPS[g].0, names.join(", ")));
                    self.open[g] = Some((now, both));
                }
                (Some((since, nodes)), false) => {
                    let line = format!(
                        "{what} of group {} no longer on two live nodes ({:?} for {:.1} ms)",
                        GROUPS[g].0,
                        nodes.iter().map(|n| n + 1).collect::<Vec<_>>(),
                        (now - since) as f64 / 1e6
                    );
                    sh.note(line);
                    self.open[g] = None;
                }
                _ => {}
            }
        }
        self.prev = now_owners;
    }
}

struct Checker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Checker {
    fn start(shared: SharedRef, namespaces: Vec<String>) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let node_inodes: Vec<u64> = namespaces.iter().map(|ns| netns_inode(&format!("/run/netns/{ns}")).unwrap_or(0)).collect();
        let fds: Vec<OwnedFd> = namespaces.iter().map(|ns| netlink_socket(ns)).collect();
        let handle = std::thread::spawn(move || {
            let mut seq = 1u32;
            let mut addrs = DualTracker::new();
            let mut apps = DualTracker::new();
            let mut round = 0u64;
            let mut last = monotonic_ns();
            while !st.load(Ordering::SeqCst) {
                // This thread sleeps 4 ms between rounds: a much longer gap
                // means the host stalled (it runs at normal priority, the
                // agents' heartbeat senders at real-time priority).
                let top = monotonic_ns();
                let gap = top - last;
                last = top;
                if gap > 100_000_000 {
                    let mut sh = shared.lock().unwrap();
                    sh.stalls += 1;
                    sh.max_stall_ms = sh.max_stall_ms.max(gap as f64 / 1e6);
                    sh.note(format!("one checker round took {:.0} ms instead of about 5 (the host stalled)", gap as f64 / 1e6));
                }
                let mut owners = vec![Vec::new(); GROUPS.len()];
                for (i, fd) in fds.iter().enumerate() {
                    seq = seq.wrapping_add(1);
                    let got = ipv4_addrs(fd, seq).unwrap_or_default();
                    for (g, (_, _, oct)) in GROUPS.iter().enumerate() {
                        if got.contains(oct) {
                            owners[g].push(i);
                        }
                    }
                }
                let now = monotonic_ns();
                {
                    let mut sh = shared.lock().unwrap();
                    addrs.round(&mut sh, "the address", owners.clone(), now);
                    sh.addr_owners = owners;
                    sh.rounds += 1;
                }
                if round.is_multiple_of(10) {
                    let a = app_scan(&node_inodes);
                    let now = monotonic_ns();
                    let mut sh = shared.lock().unwrap();
                    apps.round(&mut sh, "the application (httpd)", a.clone(), now);
                    sh.app_owners = a;
                }
                round += 1;
                std::thread::sleep(Duration::from_millis(4));
            }
        });
        Checker { stop, handle: Some(handle) }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The rig.

/// The groups: `web` (preferred node 1, moves back: transfer cost free) and
/// `db` (preferred node 2, stays where it is: costly), each a floating
/// address on ic0 and `busybox httpd` serving a page that names the node.
fn groups_toml(www: &std::path::Path) -> String {
    let mut s = String::new();
    for (g, (name, vip, _)) in GROUPS.iter().enumerate() {
        let (pref, cost) = if g == 0 { (1, "free") } else { (2, "costly") };
        s += &format!(
            "[[group]]\nname = \"{name}\"\naddresses = [\"{vip}/24\"]\ninterface = \"ic0\"\npreferred = {pref}\nnodes = \"*\"\n\
             transfer_cost = \"{cost}\"\n\n\
             [[group.monitor]]\nkind = \"command\"\nmonitor = \"busybox wget -q -O /dev/null http://{vip}/\"\ninterval_ms = 1000\n\n\
             [group.application]\nkind = \"command\"\n\
             daemon = \"exec busybox httpd -f -p {vip}:80 -h {}/$(ip netns identify)\"\nstop_timeout_ms = 2000\n\n",
            www.display()
        );
    }
    s
}

/// Fields drop in order: probers, client, the stress child, the cluster,
/// then whatever is left in the namespaces.
#[allow(dead_code)]
struct Rig {
    checker: Option<Checker>,
    probers: Vec<Prober>,
    client: baton_tests::ClientHost,
    c: Cluster,
    reaper: Reaper,
}

fn sw(c: &Cluster, args: &[&str]) -> bool {
    baton_tests::ns_ok(&c.switch.name, args)
}

fn sw_must(c: &Cluster, args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(["netns", "exec", &c.switch.name]).args(args).output()?;
    if !out.status.success() {
        bail!("{args:?} in the switch namespace failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The byte of an IPv4 packet (offset from its IP header, per protocol)
/// whose low bits choose the packets `loss` and `slow` hit: for TCP a byte
/// of the sequence number; for UDP a byte of the first entry's MAC of a
/// baton datagram (IP 20 + UDP 8 + header 40 + 16), which differs from
/// packet to packet. Not the UDP checksum: on a veth the sender leaves it
/// partial (checksum offload), the same for every packet of a flow, so a
/// selection by it drops all of one node pair's heartbeats or none: a
/// one-way cut of some pairs, not a share of packets.
const SELECT_BYTE: [(&str, &str); 2] = [("6", "27"), ("17", "84")];

/// HTB on `dev` in `netns`: everything in a fast default class, IPv4
/// packets whose [`SELECT_BYTE`] has the `mask` bits clear in a `kbit` class
/// with a 10-packet FIFO.
fn shaper(netns: &str, dev: &str, mask: u8, kbit: u64) -> Result<()> {
    let m = format!("0x{mask:02x}");
    let rate = format!("{kbit}kbit");
    let mut steps: Vec<Vec<&str>> = vec![
        vec!["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10"],
        vec!["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", "1gbit"],
        vec!["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", &rate, "ceil", &rate, "burst", "200", "cburst", "200"],
        vec!["tc", "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "pfifo", "limit", "10"],
    ];
    for (proto, at) in SELECT_BYTE {
        steps.push(vec![
            "tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip", "protocol", proto, "0xff", "match", "u8", "0", &m, "at", at, "flowid", "1:20",
        ]);
    }
    for a in steps.iter() {
        let out = Command::new("ip").args(["netns", "exec", netns]).args(a).output()?;
        if !out.status.success() {
            bail!("{a:?} in {netns} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

fn port(i: usize) -> String {
    format!("h{i}l0")
}

// ---------------------------------------------------------------------------
// Faults.

#[derive(Debug, Clone)]
enum Fault {
    Crash { node: usize, down_ms: u64 },
    KillAgent { node: usize, down_ms: u64 },
    Pause { node: usize, ms: u64, long: bool },
    Cut { node: usize, ms: u64 },
    /// The nodes moved to the other bridge (the client stays on br0).
    Partition { moved: Vec<usize>, ms: u64, kind: &'static str },
    /// 100 % loss in one direction: deaf (nothing reaches the node) or mute
    /// (nothing from the node reaches the others).
    OneWay { node: usize, deaf: bool, ms: u64 },
    /// Pseudo-random loss (by a checksum byte) both ways on the node's port.
    Loss { node: usize, mask: u8, ms: u64 },
    /// A share of the packets both ways (selected like `Loss`) through an
    /// HTB class of `kbit` with a 10-packet queue: late (queued behind each
    /// other), overtaken by the rest (reordered), the excess dropped.
    Slow { node: usize, mask: u8, kbit: u64, ms: u64 },
    RestartInTransition { group: usize, to: usize, victim_is_target: bool, after_ms: u64, down_ms: u64 },
    Stress { secs: u64 },
    Operator { op: Op, hold_ms: u64 },
}

#[derive(Debug, Clone)]
enum Op {
    Switchover { group: usize, to: usize, via: usize },
    Standby { node: usize, via: usize },
    Maintenance { via: usize },
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::Crash { .. } => "crash",
            Fault::KillAgent { .. } => "kill_agent",
            Fault::Pause { long: false, .. } => "pause_short",
            Fault::Pause { long: true, .. } => "pause_long",
            Fault::Cut { .. } => "cut",
            Fault::Partition { kind, .. } => kind,
            Fault::OneWay { deaf: true, .. } => "deaf",
            Fault::OneWay { deaf: false, .. } => "mute",
            Fault::Loss { .. } => "loss",
            Fault::Slow { .. } => "slow",
            Fault::RestartInTransition { .. } => "restart_in_transition",
            Fault::Stress { .. } => "stress",
            Fault::Operator { .. } => "operator",
        }
    }

    /// The nodes this fault may legitimately make halt.
    fn disturbed(&self, n: usize) -> Vec<usize> {
        match self {
            Fault::Crash { node, .. } | Fault::KillAgent { node, .. } | Fault::Pause { node, .. } | Fault::Cut { node, .. } => vec![*node],
            Fault::OneWay { node, .. } | Fault::Loss { node, .. } | Fault::Slow { node, .. } => vec![*node],
            Fault::Partition { moved, .. } => {
                // The side without a majority is cut off; the other must not halt.
                if moved.len() * 2 < n {
                    moved.clone()
                } else {
                    (0..n).filter(|i| !moved.contains(i)).collect()
                }
            }
            Fault::RestartInTransition { .. } | Fault::Stress { .. } | Fault::Operator { .. } => Vec::new(),
        }
    }

    /// The nodes a network fault cuts off from the others (the side
    /// without a majority of the configured nodes; for `cut`, the node).
    fn cut_off(&self, n: usize) -> Option<Vec<usize>> {
        match self {
            Fault::Cut { node, .. } => Some(vec![*node]),
            Fault::Partition { .. } => Some(self.disturbed(n)),
            _ => None,
        }
    }
}

fn choose(rng: &mut Rng, n: usize, bound_ms: u64, kinds: &[&'static str]) -> Fault {
    let kind = kinds[rng.below(kinds.len() as u64) as usize];
    let node = rng.below(n as u64) as usize;
    let hold = rng.range(300, 4000);
    match kind {
        "crash" => Fault::Crash { node, down_ms: rng.range(200, 3000) },
        "kill_agent" => Fault::KillAgent { node, down_ms: rng.range(200, 3000) },
        "pause_short" => Fault::Pause { node, ms: rng.range(2, (bound_ms * 2 / 3).max(3)), long: false },
        "pause_long" => Fault::Pause { node, ms: rng.range(bound_ms + 20, 3000), long: true },
        "cut" => Fault::Cut { node, ms: hold },
        "isolate_one" => Fault::Partition { moved: vec![node], ms: hold, kind },
        "partition_minority" => Fault::Partition { moved: rng.pick(n, (n - 1) / 2), ms: hold, kind },
        "partition_majority" => Fault::Partition { moved: rng.pick(n, n / 2 + 1), ms: hold, kind },
        "deaf" => Fault::OneWay { node, deaf: true, ms: hold },
        "mute" => Fault::OneWay { node, deaf: false, ms: hold },
        "loss" => Fault::Loss { node, mask: [1u8, 3, 7][rng.below(3) as usize], ms: rng.range(1000, 6000) },
        "slow" => Fault::Slow {
            node,
            mask: [1u8, 3][rng.below(2) as usize],
            kbit: [64u64, 128, 256][rng.below(3) as usize],
            ms: rng.range(1000, 6000),
        },
        "restart_in_transition" => Fault::RestartInTransition {
            group: rng.below(GROUPS.len() as u64) as usize,
            to: node,
            victim_is_target: rng.below(2) == 0,
            after_ms: rng.range(0, 150),
            down_ms: rng.range(200, 2000),
        },
        "stress" => Fault::Stress { secs: rng.range(2, 5) },
        _ => {
            let via = rng.below(n as u64) as usize;
            let op = match rng.below(3) {
                0 => Op::Switchover { group: rng.below(GROUPS.len() as u64) as usize, to: node, via },
                1 => Op::Standby { node, via },
                _ => Op::Maintenance { via },
            };
            Fault::Operator { op, hold_ms: rng.range(500, 3000) }
        }
    }
}

// ---------------------------------------------------------------------------
// The run.

struct Nemesis<'a> {
    opts: &'a ChaosOpts,
    rig: Rig,
    shared: SharedRef,
    /// Per node: halts seen so far in its logs, panics seen so far.
    halts_seen: Vec<usize>,
    panics_seen: Vec<usize>,
    /// Agents whose exit we caused (killed): not checked for exits.
    www: PathBuf,
    stress: Option<Child>,
    false_forced_leaves: u64,
    halts_total: u64,
    max_converge_ms: f64,
    converge_bound_max_ms: u64,
    counts: BTreeMap<&'static str, u64>,
    mid_fault_ops: u64,
    faults: u64,
    t_heal: u64,
    /// Per node: its switch port is on brx (else br0).
    on_brx: Vec<bool>,
    /// The nodes the current episode may make halt.
    disturbed: Vec<usize>,
    /// Every episode so far, to attribute a halt by its log time.
    episodes: Vec<EpisodeRec>,
}

/// One episode, for the false-forced-leave verdict: a halt is judged by the
/// episode its log line's time falls in (not by the episode whose
/// convergence happened to scan it).
#[derive(Debug, Clone)]
struct EpisodeRec {
    kind: &'static str,
    /// UTC seconds (CLOCK_REALTIME, like the agents' log times).
    start_s: f64,
    converged_s: Option<f64>,
    /// The nodes the fault itself disturbed.
    disturbed: Vec<usize>,
    /// Nodes on the side with a majority of the configured nodes whose own
    /// view, read from their cluster.json just before the fault, had no
    /// majority on that side: a halt for lost quorum there is correct.
    excused: Vec<(usize, String)>,
}

/// CLOCK_REALTIME in seconds.
fn realtime_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The UTC time (seconds since the epoch) of an agent log line
/// (`2026-12-07T13:44:38.368501Z  ERROR ...`).
fn log_time_s(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let t: Vec<f64> = time.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    Some(days_from_civil(d[0], d[1], d[2]) as f64 * 86400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2])
}

/// The view group of a node's cluster.json (`joining`, `joined` and
/// `leaving` nodes, as `baton_core`'s `ClusterState::group`), or None when
/// the node is not joined itself.
fn view_group(m: &baton_tests::state::ClusterSnapshot) -> Option<Vec<usize>> {
    use baton_tests::state::NodeState as S;
    if m.my_state != S::Joined {
        return None;
    }
    Some(m.nodes.iter().filter(|x| matches!(x.state, S::Joining | S::Joined | S::Leaving)).map(|x| x.id as usize - 1).collect())
}

/// Of the nodes not cut off (`cut`: the cut-off side), those whose view
/// (`views[i]`) has no quorum on their side: they lose quorum correctly.
/// The rule is the core's (docs/membership.md, "Quorum"): the view's members
/// on that side must be a strict majority of the view *and*, with more than
/// two configured nodes (`n`), of the configured nodes (static quorum: a
/// view shrunk by forced or graceful leaves to 3 of 5 members, 2 of them on
/// the majority side, halts there although 2 of 3 is a majority of the view).
fn excused_by_view(cut: &[usize], views: &[Option<Vec<usize>>], n: usize) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, v) in views.iter().enumerate() {
        let Some(g) = v else { continue };
        if cut.contains(&i) || g.is_empty() {
            continue;
        }
        let here = g.iter().filter(|m| !cut.contains(m)).count();
        let of_view = here * 2 > g.len();
        let of_configured = n <= 2 || here * 2 > n;
        if !of_view || !of_configured {
            let names: Vec<String> = g.iter().map(|m| format!("node{}", m + 1)).collect();
            let what = if of_view { format!(", not a majority of the {n} configured nodes") } else { String::new() };
            out.push((i, format!("its view at the fault was [{}], {here} of them on its side{what}", names.join(", "))));
        }
    }
    out
}

fn baton_cmd(c: &Cluster, i: usize, args: &[&str], timeout: Duration) -> String {
    baton_cmd_at(&c.node_dir(i).join("baton.toml"), args, timeout)
}

fn baton_cmd_at(config: &std::path::Path, args: &[&str], timeout: Duration) -> String {
    let mut cmd = Command::new(baton_tests::baton_bin());
    cmd.args(args).arg("--config").arg(config).stdout(Stdio::piped()).stderr(Stdio::piped());
    let Ok(mut child) = cmd.spawn() else { return "could not run baton".into() };
    let deadline = monotonic_ns() + timeout.as_nanos() as u64;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                let out = child.wait_with_output().map(|o| {
                    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
                });
                let text = out.unwrap_or_default().trim().replace('\n', " | ");
                return format!("{} ({st})", text.chars().take(160).collect::<String>());
            }
            Ok(None) if monotonic_ns() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return format!("no answer within {timeout:?}");
            }
        }
    }
}

fn log_files(c: &Cluster, i: usize) -> Vec<PathBuf> {
    let d = c.node_dir(i);
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(&d)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    let k = n.strip_prefix("agent.")?.strip_suffix(".log")?.parse::<usize>().ok()?;
                    Some((k, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    let mut out: Vec<PathBuf> = v.into_iter().map(|(_, p)| p).collect();
    out.push(d.join("agent.log"));
    out
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let i = line.find(&format!("{key}="))?;
    line[i + key.len() + 1..].split_whitespace().next()
}

impl<'a> Nemesis<'a> {
    fn c(&self) -> &Cluster {
        &self.rig.c
    }

    fn note(&self, s: String) {
        self.shared.lock().unwrap().note(s);
    }

    fn violate(&self, s: String) {
        self.shared.lock().unwrap().violate(s);
    }

    fn set_excluded(&self, i: usize, until: u64) {
        self.shared.lock().unwrap().excluded_until[i] = until;
    }

    fn release_after_now(&self) -> u64 {
        monotonic_ns() + self.opts.release_ms * 1_000_000
    }

    fn name(&self, i: usize) -> String {
        format!("node{}", i + 1)
    }

    /// Sleeps `ms`, checking for agents that exited on their own.
    fn hold(&mut self, ms: u64) -> Result<()> {
        let end = monotonic_ns() + ms * 1_000_000;
        loop {
            check_interrupt()?;
            self.check_exits();
            let now = monotonic_ns();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep(Duration::from_nanos((end - now).min(20_000_000)));
        }
    }

    fn tail(&self, i: usize) -> String {
        let log = self.c().agent_log(i);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(8)..].iter().map(|l| format!("      {l}\n")).collect()
    }

    /// An agent process that ended without being killed by the nemesis is a
    /// violation; it is started again so that the run goes on.
    fn check_exits(&mut self) {
        for i in 0..self.opts.nodes {
            let exited = match self.rig.c.agents[i].as_mut() {
                Some(a) => a.child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(st) = exited {
                let tail = self.tail(i);
                self.violate(format!("the agent of {} exited by itself ({st}); last log lines:\n{tail}", self.name(i)));
                self.rig.c.agents[i] = None;
                self.start_agent(i);
            }
        }
    }

    fn start_agent(&mut self, i: usize) {
        self.set_excluded(i, u64::MAX);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.rig.c.start(i)));
        if let Err(e) = r {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            self.violate(format!("the agent of {} could not be started: {}", self.name(i), msg.chars().take(2000).collect::<String>()));
            self.rig.c.agents[i] = None;
        }
        self.set_excluded(i, self.release_after_now());
    }

    fn agent_pid(&self, i: usize) -> Option<i32> {
        self.c().agents[i].as_ref().map(|a| a.pid())
    }

    fn signal(&self, i: usize, sig: i32) {
        if let Some(p) = self.agent_pid(i) {
            unsafe { libc::kill(p, sig) };
        }
    }

    fn crash(&mut self, i: usize) {
        self.set_excluded(i, u64::MAX);
        if self.rig.c.agents[i].is_some() {
            self.rig.c.crash(i);
        }
        for (_, vip, _) in GROUPS {
            self.rig.c.flush_addr(i, &format!("{vip}/24"), "ic0");
        }
    }

    fn kill_agent(&mut self, i: usize) {
        self.set_excluded(i, u64::MAX);
        if self.rig.c.agents[i].is_some() {
            self.rig.c.kill_agent(i);
        }
    }

    /// Puts the ports of `on_x` on brx and every other node's on br0 (one
    /// `ip -batch`; only ports that change bridge move).
    fn place_ports(&mut self, on_x: &[usize]) -> Result<()> {
        use std::io::Write;
        let mut batch = String::new();
        for i in 0..self.opts.nodes {
            let want = on_x.contains(&i);
            if self.on_brx[i] != want {
                batch += &format!("link set {} master {}\n", port(i), if want { "brx" } else { "br0" });
                self.on_brx[i] = want;
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut child = Command::new("ip")
            .args(["-n", &self.c().switch.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().unwrap().write_all(batch.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("moving switch ports failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn clear_tc(&self, i: usize) {
        sw(self.c(), &["tc", "qdisc", "del", "dev", &port(i), "clsact"]);
    }

    /// Drops (redirects to a downed veth) what crosses node i's switch port:
    /// `egress` = towards the node, `ingress` = from it; `sel` a u32 selector.
    fn drop_on(&self, i: usize, dirs: &[&str], sel: &[&str]) -> Result<()> {
        let p = port(i);
        sw(self.c(), &["tc", "qdisc", "add", "dev", &p, "clsact"]);
        for d in dirs {
            let mut args = vec!["tc", "filter", "add", "dev", &p, d, "protocol", "all", "u32"];
            args.extend_from_slice(sel);
            args.extend_from_slice(&["action", "mirred", "egress", "redirect", "dev", "bh0"]);
            sw_must(self.c(), &args)?;
        }
        Ok(())
    }

    /// Runs `baton ARGS` through node `via` on a thread (a command sent to
    /// a stopped agent must not stretch the fault it was sent during); the
    /// thread notes the answer in the timeline.
    fn op_thread(&self, via: usize, args: Vec<String>, phase: &'static str) -> std::thread::JoinHandle<()> {
        let cfg = self.c().node_dir(via).join("baton.toml");
        let shared = self.shared.clone();
        let name = self.name(via);
        std::thread::spawn(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = baton_cmd_at(&cfg, &a, Duration::from_secs(10));
            shared.lock().unwrap().note(format!("{phase}: `baton {}` on {name}: {out}", args.join(" ")));
        })
    }

    /// Starts an operator command; returns its thread and what undoes it
    /// at the heal (unstandby, maintenance off).
    fn run_op(&mut self, op: &Op, phase: &'static str) -> (std::thread::JoinHandle<()>, Option<Box<dyn FnOnce(&mut Nemesis)>>) {
        let (via, args, undo): (usize, Vec<String>, Option<Vec<String>>) = match op.clone() {
            Op::Switchover { group, to, via } => (via, vec!["switchover".into(), GROUPS[group].0.into(), (to + 1).to_string()], None),
            Op::Standby { node, via } => {
                (via, vec!["standby".into(), (node + 1).to_string()], Some(vec!["unstandby".into(), (node + 1).to_string()]))
            }
            Op::Maintenance { via } => (via, vec!["maintenance".into(), "on".into()], Some(vec!["maintenance".into(), "off".into()])),
        };
        let h = self.op_thread(via, args, phase);
        let undo = undo.map(|u| {
            Box::new(move |n: &mut Nemesis| {
                // Undone through the first node that answers.
                for k in 0..n.opts.nodes {
                    let j = (via + k) % n.opts.nodes;
                    let a: Vec<&str> = u.iter().map(String::as_str).collect();
                    let out = baton_cmd(n.c(), j, &a, Duration::from_secs(10));
                    n.note(format!("heal: `baton {}` on {}: {out}", u.join(" "), n.name(j)));
                    if out.contains("exit status: 0") {
                        break;
                    }
                }
            }) as Box<dyn FnOnce(&mut Nemesis)>
        });
        (h, undo)
    }

    /// Injects the fault, holds it, heals it. `mid` is an operator command
    /// issued while the fault holds.
    fn episode(&mut self, f: &Fault, mid: Option<Op>) -> Result<()> {
        let n = self.opts.nodes;
        let mut undo_op: Option<Box<dyn FnOnce(&mut Nemesis)>> = None;
        let mut op_threads = Vec::new();
        let mid_op = |s: &mut Nemesis, undo: &mut Option<Box<dyn FnOnce(&mut Nemesis)>>, th: &mut Vec<std::thread::JoinHandle<()>>| {
            if let Some(op) = &mid {
                let (h, u) = s.run_op(op, "mid-fault");
                th.push(h);
                *undo = u;
            }
        };
        match f.clone() {
            Fault::Crash { node, down_ms } => {
                self.note(format!("fault crash: SIGKILL {}'s guard, agent and applications; down {down_ms} ms", self.name(node)));
                self.crash(node);
                mid_op(self, &mut undo_op, &mut op_threads);
                self.hold(down_ms)?;
                self.t_heal = monotonic_ns();
                self.note(format!("heal: restart {}'s agent", self.name(node)));
                self.start_agent(node);
            }
            Fault::KillAgent { node, down_ms } => {
                self.note(format!("fault kill_agent: SIGKILL {}'s agent (its guard releases); down {down_ms} ms", self.name(node)));
                self.kill_agent(node);
                mid_op(self, &mut undo_op, &mut op_threads);
                self.hold(down_ms)?;
                self.t_heal = monotonic_ns();
                self.note(format!("heal: restart {}'s agent", self.name(node)));
                self.start_agent(node);
            }
            Fault::Pause { node, ms, long } => {
                self.note(format!("fault pause_{}: SIGSTOP {}'s agent for {ms} ms", if long { "long" } else { "short" }, self.name(node)));
                self.set_excluded(node, u64::MAX);
                self.signal(node, libc::SIGSTOP);
                if long {
                    mid_op(self, &mut undo_op, &mut op_threads);
                }
                let t_stop = monotonic_ns();
                let left = (ms * 1_000_000).saturating_sub(monotonic_ns() - t_stop) / 1_000_000;
                if ms < 50 {
                    std::thread::sleep(Duration::from_millis(left));
                } else {
                    self.hold(left)?;
                }
                self.signal(node, libc::SIGCONT);
                self.t_heal = monotonic_ns();
                self.set_excluded(node, self.release_after_now());
                self.note(format!("heal: SIGCONT {}'s agent", self.name(node)));
            }
            Fault::Cut { node, ms } => {
                self.note(format!("fault cut: {}'s switch port down for {ms} ms (carrier lost)", self.name(node)));
                sw_must(self.c(), &["ip", "link", "set", &port(node), "down"])?;
                mid_op(self, &mut undo_op, &mut op_threads);
                self.hold(ms)?;
                sw_must(self.c(), &["ip", "link", "set", &port(node), "up"])?;
                self.t_heal = monotonic_ns();
                self.note(format!("heal: {}'s port up", self.name(node)));
            }
            Fault::Partition { moved, ms, kind } => {
                let names: Vec<String> = moved.iter().map(|i| self.name(*i)).collect();
                // The two sides: `moved` on brx, the others (and the client)
                // on br0, joined by the trunk veth tr0-tr1. Ports move while
                // the trunk is up (connectivity kept); the partition and the
                // heal are then one atomic step each: the trunk down, up.
                // (Moving ports one by one to split or heal passed through
                // intermediate splits that the agents saw as partitions.)
                self.place_ports(&moved)?;
                self.hold(300)?;
                self.note(format!("fault {kind}: {} cut off from the others for {ms} ms (trunk between the bridges down; carrier kept)", names.join(", ")));
                sw_must(self.c(), &["ip", "link", "set", "tr0", "down"])?;
                mid_op(self, &mut undo_op, &mut op_threads);
                self.hold(ms)?;
                sw_must(self.c(), &["ip", "link", "set", "tr0", "up"])?;
                self.t_heal = monotonic_ns();
                self.note("heal: trunk up".to_string());
            }
            Fault::OneWay { node, deaf, ms } => {
                let what = if deaf { "deaf: nothing reaches" } else { "mute: nothing from" };
                self.note(format!("fault {}: {what} {} for {ms} ms (tc on its switch port)", if deaf { "deaf" } else { "mute" }, self.name(node)));
                self.drop_on(node, &[if deaf { "egress" } else { "ingress" }], &["match", "u32", "0", "0"])?;
                mid_op(self, &mut undo_op, &mut op_threads);
                self.hold(ms)?;
                self.clear_tc(node);
                self.t_heal = monotonic_ns();
                self.note(format!("heal: {}'s port clear", self.name(node)));
            }
            Fault::Loss { node, mask, ms } => {
                let pct = 100.0 / (mask as f64 + 1.0);
                self.note(format!("fault loss: about {pct:.1} % of IPv4 packets both ways at {} for {ms} ms", self.name(node)));
                let m = format!("0x{mask:02x}");
                for (proto, at) in SELECT_BYTE {
                    self.drop_on(node, &["egress", "ingress"], &["match", "ip", "protocol", proto, "0xff", "match", "u8", "0", &m, "at", at])?;
                }
                mid_op(self, &mut undo_op, &mut op_threads);
                self.hold(ms)?;
                self.clear_tc(node);
                self.t_heal = monotonic_ns();
                self.note(format!("heal: {}'s port clear", self.name(node)));
            }
            Fault::Slow { node, mask, kbit, ms } => {
                let pct = 100.0 / (mask as f64 + 1.0);
                self.note(format!(
                    "fault slow: about {pct:.0} % of IPv4 packets both ways at {} through {kbit} kbit/s with a 10-packet queue for {ms} ms",
                    self.name(node)
                ));
                let ns = self.c().hosts[node].ns.name.clone();
                let sw_ns = self.c().switch.name.clone();
                let p = port(node);
                for (netns, dev) in [(sw_ns.as_str(), p.as_str()), (ns.as_str(), "ic0")] {
                    shaper(netns, dev, mask, kbit)?;
                }
                mid_op(self, &mut undo_op, &mut op_threads);
                self.hold(ms)?;
                for (netns, dev) in [(sw_ns.as_str(), p.as_str()), (ns.as_str(), "ic0")] {
                    let _ = Command::new("ip").args(["netns", "exec", netns, "tc", "qdisc", "del", "dev", dev, "root"]).output();
                }
                self.t_heal = monotonic_ns();
                self.note(format!("heal: {}'s shaping removed", self.name(node)));
            }
            Fault::RestartInTransition { group, to, victim_is_target, after_ms, down_ms } => {
                let from = self.shared.lock().unwrap().addr_owners[group].first().copied();
                let via = (to + 1) % n;
                self.note(format!(
                    "fault restart_in_transition: `baton switchover {} {}` (on {}, held by {}), then SIGKILL the {} agent after {after_ms} ms",
                    GROUPS[group].0,
                    to + 1,
                    self.name(via),
                    from.map(|f| self.name(f)).unwrap_or("nobody".into()),
                    if victim_is_target { "target's" } else { "source's" },
                ));
                let mut cmd = Command::new(baton_tests::baton_bin());
                cmd.args(["switchover", GROUPS[group].0, &(to + 1).to_string(), "--config"])
                    .arg(self.c().node_dir(via).join("baton.toml"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                let mut child = cmd.spawn().context("baton switchover")?;
                std::thread::sleep(Duration::from_millis(after_ms));
                let victim = if victim_is_target { to } else { from.unwrap_or(to) };
                // Its old life was killed, not cut: but its new life may be
                // told to wait or halt while the old one's leave runs.
                self.disturbed.push(victim);
                self.note(format!("  SIGKILL {}'s agent", self.name(victim)));
                self.kill_agent(victim);
                self.hold(down_ms)?;
                let _ = child.kill();
                let _ = child.wait();
                self.t_heal = monotonic_ns();
                self.note(format!("heal: restart {}'s agent", self.name(victim)));
                self.start_agent(victim);
                // Its restart is the heal; it may halt (its old life is forced out).
                return Ok(());
            }
            Fault::Stress { secs } => {
                self.note(format!("fault stress: stress-ng --cpu 2 --io 1 --vm 1 --vm-bytes 256M --timeout {secs}s on the host"));
                let child = Command::new("stress-ng")
                    .args(["--cpu", "2", "--io", "1", "--vm", "1", "--vm-bytes", "256M", "--timeout", &format!("{secs}s"), "--quiet"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("stress-ng (cargo xtask setup installs it)")?;
                self.stress = Some(child);
                mid_op(self, &mut undo_op, &mut op_threads);
                self.hold(secs * 1000)?;
                let end = monotonic_ns() + 5_000_000_000;
                loop {
                    let done = self.stress.as_mut().map(|c| c.try_wait().ok().flatten().is_some()).unwrap_or(true);
                    if done || monotonic_ns() > end {
                        break;
                    }
                    self.hold(50)?;
                }
                if let Some(mut c) = self.stress.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                self.t_heal = monotonic_ns();
                self.note("heal: stress-ng ended".to_string());
            }
            Fault::Operator { op, hold_ms } => {
                let (h, undo) = self.run_op(&op, "fault operator");
                self.hold(hold_ms)?;
                let _ = h.join();
                self.t_heal = monotonic_ns();
                if let Some(u) = undo {
                    u(self);
                }
                return Ok(());
            }
        }
        for h in op_threads {
            let _ = h.join();
        }
        if let Some(u) = undo_op {
            u(self);
        }
        Ok(())
    }

    /// Halts and panics logged since the last scan; a halt of a node the
    /// episode did not disturb is a false forced leave. Returns the longest
    /// rejoin delay the halted nodes announced (ms).
    fn scan_logs(&mut self, disturbed: &[usize]) -> u64 {
        let mut max_delay = 0u64;
        for i in 0..self.opts.nodes {
            let mut halts = Vec::new();
            let mut panics = Vec::new();
            for f in log_files(self.c(), i) {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                for l in text.lines() {
                    if l.contains("clustering halted on this node") && !l.contains("starting again") {
                        halts.push(l.to_string());
                    }
                    if l.contains("starting again as a new life") {
                        if let Some(d) = field(l, "delay_ms").and_then(|d| d.parse::<u64>().ok()) {
                            max_delay = max_delay.max(d);
                        }
                    }
                    if l.contains("panicked at") {
                        panics.push(l.to_string());
                    }
                }
            }
            for h in halts.iter().skip(self.halts_seen[i]) {
                self.halts_total += 1;
                let why = field(h, "why").unwrap_or("?").to_string();
                // The episode the halt happened in, by its log time.
                let at = log_time_s(h);
                let ep = at.and_then(|t| self.episodes.iter().rev().find(|e| e.start_s <= t).cloned());
                let verdict: Result<String, String> = match (&ep, at) {
                    (Some(e), Some(t)) if e.converged_s.is_some_and(|c| t > c) => {
                        Err(format!("after the {} episode had converged, before the next fault", e.kind))
                    }
                    (Some(e), _) if e.disturbed.contains(&i) => Ok(format!("expected, the {} episode disturbed it", e.kind)),
                    (Some(e), _) => match e.excused.iter().find(|(n, _)| *n == i) {
                        Some((_, why_ok)) => Ok(format!("expected, the {} left its side without a majority of its view: {why_ok}", e.kind)),
                        None => Err(format!("although the {} episode neither killed, paused nor cut it", e.kind)),
                    },
                    (None, _) if disturbed.contains(&i) => Ok("expected, the episode disturbed it".into()),
                    (None, _) => Err("although this episode neither killed, paused nor cut it".into()),
                };
                match verdict {
                    Ok(why_ok) => self.note(format!("{} halted (why={why}): {why_ok}", self.name(i))),
                    Err(why_not) => {
                        self.false_forced_leaves += 1;
                        self.violate(format!("false forced leave: {} halted (why={why}) {why_not}: {h}", self.name(i)));
                    }
                }
            }
            self.halts_seen[i] = halts.len();
            for p in panics.iter().skip(self.panics_seen[i]) {
                self.violate(format!("{} panicked: {p}", self.name(i)));
            }
            self.panics_seen[i] = panics.len();
        }
        max_delay
    }

    /// What keeps the cluster from having converged, or None.
    fn not_converged(&self) -> Option<String> {
        let c = self.c();
        let n = self.opts.nodes;
        for i in 0..n {
            if c.agents[i].is_none() {
                return Some(format!("{} has no agent", self.name(i)));
            }
        }
        let mut ms = Vec::new();
        for i in 0..n {
            let Some(m) = c.membership(i) else {
                return Some(format!("{} has no membership snapshot", self.name(i)));
            };
            if m.my_state != baton_tests::state::NodeState::Joined {
                return Some(format!("{} is {}", self.name(i), m.my_state.as_str()));
            }
            if !m.transitions.is_empty() {
                return Some(format!("{} has transitions in flight", self.name(i)));
            }
            ms.push(m);
        }
        if !ms.windows(2).all(|w| w[0].view == w[1].view) {
            return Some("the nodes follow different views".into());
        }
        for j in 0..n {
            let inc = c.incarnation(j);
            let ok = ms[0].node(j as u32 + 1).is_some_and(|x| x.state == baton_tests::state::NodeState::Joined && inc == Some(x.incarnation));
            if !ok {
                return Some(format!("{}'s current life is not joined in the view", self.name(j)));
            }
        }
        let sh = self.shared.lock().unwrap();
        for (g, (name, _, _)) in GROUPS.iter().enumerate() {
            let a = &sh.addr_owners[g];
            let p = &sh.app_owners[g];
            if a.len() != 1 {
                return Some(format!("{name}'s address is on {} nodes", a.len()));
            }
            if p.len() != 1 || p[0] != a[0] {
                return Some(format!("{name}'s application runs on {:?} (address on node{})", p.iter().map(|x| x + 1).collect::<Vec<_>>(), a[0] + 1));
            }
            let owner = format!("node{}", a[0] + 1);
            let last: Vec<_> = self.rig.probers[g].since(self.t_heal);
            if last.len() < 3 || !last[last.len() - 3..].iter().all(|s| s.result.as_deref() == Ok(owner.as_str())) {
                return Some(format!("the client is not answered by {owner} for {name} yet"));
            }
        }
        None
    }

    /// Waits for convergence after the heal; checks the bound.
    fn converge(&mut self, disturbed: &[usize]) -> Result<()> {
        let hard = Duration::from_secs(180);
        let mut last_reason = String::new();
        loop {
            check_interrupt()?;
            self.check_exits();
            match self.not_converged() {
                None => break,
                Some(r) => {
                    // Past the bound, every change of what the cluster is
                    // waiting for goes into the timeline (why it is slow).
                    if r != last_reason && monotonic_ns() - self.t_heal > self.opts.converge_ms * 1_000_000 {
                        self.note(format!("  not converged yet: {r}"));
                    }
                    last_reason = r;
                }
            }
            if monotonic_ns() - self.t_heal > hard.as_nanos() as u64 {
                let delay = self.scan_logs(disturbed);
                let _ = delay;
                self.violate(format!("no convergence within {} s of the heal: {last_reason}", hard.as_secs()));
                bail!("the cluster did not converge within {} s; giving up", hard.as_secs());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let took = (monotonic_ns() - self.t_heal) as f64 / 1e6;
        let backoff = self.scan_logs(disturbed);
        if let Some(e) = self.episodes.last_mut() {
            e.converged_s = Some(realtime_s());
        }
        let bound = self.opts.converge_ms + backoff;
        self.converge_bound_max_ms = self.converge_bound_max_ms.max(bound);
        self.max_converge_ms = self.max_converge_ms.max(took);
        if took > bound as f64 {
            self.violate(format!(
                "converged after {took:.0} ms, beyond the bound of {bound} ms ({} + rejoin back-off {backoff}); last waited for: {last_reason}",
                self.opts.converge_ms
            ));
        } else {
            self.note(format!("converged {took:.0} ms after the heal (bound {bound} ms)"));
        }
        Ok(())
    }

    fn run(&mut self, rng: &mut Rng, kinds: &[&'static str]) -> Result<()> {
        let n = self.opts.nodes;
        let bound = (self.opts.interval_ms * self.opts.misses) as u64;
        let end = monotonic_ns() + (self.opts.minutes * 60e9) as u64;
        while monotonic_ns() < end {
            check_interrupt()?;
            let f = choose(rng, n, bound, kinds);
            // An operator command mid-fault, for one fault in three that leaves a majority.
            let mid = if !matches!(f, Fault::Operator { .. } | Fault::RestartInTransition { .. }) && rng.below(3) == 0 {
                let via = rng.below(n as u64) as usize;
                let to = rng.below(n as u64) as usize;
                Some(match rng.below(3) {
                    0 => Op::Switchover { group: rng.below(GROUPS.len() as u64) as usize, to, via },
                    1 => Op::Standby { node: to, via },
                    _ => Op::Maintenance { via },
                })
            } else {
                None
            };
            let gap = rng.range(500, 3000);
            self.faults += 1;
            *self.counts.entry(f.kind()).or_default() += 1;
            if mid.is_some() {
                self.mid_fault_ops += 1;
            }
            self.disturbed = f.disturbed(n);
            // Each node's view just before the fault (its cluster.json).
            let excused = match f.cut_off(n) {
                Some(cut) => excused_by_view(&cut, &(0..n).map(|i| self.c().membership(i).and_then(|m| view_group(&m))).collect::<Vec<_>>(), n),
                None => Vec::new(),
            };
            self.episodes.push(EpisodeRec { kind: f.kind(), start_s: realtime_s(), converged_s: None, disturbed: self.disturbed.clone(), excused });
            self.shared.lock().unwrap().episode = f.kind();
            self.episode(&f, mid)?;
            let disturbed = self.disturbed.clone();
            if let Some(e) = self.episodes.last_mut() {
                e.disturbed = disturbed.clone();
            }
            self.converge(&disturbed)?;
            self.hold(gap)?;
        }
        Ok(())
    }
}

fn setup_rig(opts: &ChaosOpts) -> Result<(Rig, PathBuf)> {
    let mut reaper = Reaper::new();
    let mut c = Cluster::new(TAG, opts.nodes, 1, opts.interval_ms, opts.misses);
    reaper.watch_cluster(&c);
    let www = crate::bench_failover::write_www(&c)?;
    c.extra_config = groups_toml(&www);
    // The other side of a partition, and a downed veth that dropped packets are redirected to.
    sw_must(&c, &["ip", "link", "add", "brx", "type", "bridge"])?;
    sw_must(&c, &["ip", "link", "set", "brx", "up"])?;
    sw_must(&c, &["ip", "link", "add", "bh0", "type", "veth", "peer", "name", "bh1"])?;
    sw_must(&c, &["ip", "link", "add", "tr0", "type", "veth", "peer", "name", "tr1"])?;
    sw_must(&c, &["ip", "link", "set", "tr0", "master", "br0", "up"])?;
    sw_must(&c, &["ip", "link", "set", "tr1", "master", "brx", "up"])?;
    let client = c.add_client(0);
    reaper.watch(&client.ns.name);
    let period = Duration::from_millis(opts.period_ms);
    let probers = GROUPS
        .iter()
        .map(|(_, vip, _)| Prober::start(&client.ns.name, format!("{vip}:80").parse().unwrap(), period, Duration::from_millis(100)))
        .collect();
    Ok((Rig { checker: None, probers, client, c, reaper }, www))
}

/// The name prefixes (`chao<pid>x`) of earlier chaos runs whose process is
/// gone: only their leftovers are removed, never those of a run that is
/// still going (an earlier version removed every `chao*` namespace and
/// killed a 60-minute run from a second one started beside it).
fn stale_tags() -> Vec<String> {
    let mut pids: Vec<u32> = Vec::new();
    let mut add = |name: &str| {
        if let Some(rest) = name.strip_prefix(TAG) {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if rest[digits.len()..].starts_with('x') {
                if let Ok(p) = digits.parse::<u32>() {
                    if !pids.contains(&p) {
                        pids.push(p);
                    }
                }
            }
        }
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            add(line.split_whitespace().next().unwrap_or(""));
        }
    }
    if let Ok(rd) = std::fs::read_dir(baton_tests::test_root()) {
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str().and_then(|n| n.strip_prefix("baton-")) {
                add(n);
            }
        }
    }
    let me = std::process::id() % 100000;
    pids.into_iter()
        .filter(|&p| {
            // A live chaos run (the prefix holds its pid modulo 100000).
            let alive = std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("chaos"))
                .unwrap_or(false);
            p != me && !alive
        })
        .map(|p| format!("{TAG}{p}x"))
        .collect()
}

pub fn run(opts: &ChaosOpts) -> Result<()> {
    install_sigint();
    let stale = stale_tags();
    remove_leftovers(&stale.iter().map(String::as_str).collect::<Vec<_>>());
    if opts.nodes < 3 {
        bail!("--nodes must be at least 3 (got {})", opts.nodes);
    }
    let kinds: Vec<&'static str> = if opts.kinds.is_empty() {
        KINDS.to_vec()
    } else {
        let mut v = Vec::new();
        for k in &opts.kinds {
            match KINDS.iter().find(|x| **x == k.as_str()) {
                Some(x) => v.push(*x),
                None => bail!("unknown fault kind {k:?} in --kinds (known: {})", KINDS.join(", ")),
            }
        }
        v
    };
    if kinds.contains(&"stress") && Command::new("stress-ng").arg("--version").output().is_err() {
        bail!("stress-ng is not installed (run `cargo xtask setup`)");
    }
    let reproduce = format!(
        "cargo xtask chaos --nodes {} --minutes {} --seed {} --interval-ms {} --misses {}{}",
        opts.nodes,
        opts.minutes,
        opts.seed,
        opts.interval_ms,
        opts.misses,
        if opts.kinds.is_empty() { String::new() } else { format!(" --kinds {}", opts.kinds.join(",")) }
    );
    println!(
        "chaos: {} nodes, heartbeats {} ms x {}, seed {}, {} minutes, fault kinds: {}",
        opts.nodes,
        opts.interval_ms,
        opts.misses,
        opts.seed,
        opts.minutes,
        kinds.join(", ")
    );
    let (rig, www) = setup_rig(opts)?;
    let shared: SharedRef = Arc::new(Mutex::new(Shared {
        t0: monotonic_ns(),
        excluded_until: vec![u64::MAX; opts.nodes],
        addr_owners: vec![Vec::new(); GROUPS.len()],
        app_owners: vec![Vec::new(); GROUPS.len()],
        violations: Vec::new(),
        timeline: Vec::new(),
        rounds: 0,
        stalls: 0,
        max_stall_ms: 0.0,
        episode: "start",
        by_kind: BTreeMap::new(),
    }));
    let mut nem = Nemesis {
        opts,
        rig,
        shared: shared.clone(),
        halts_seen: vec![0; opts.nodes],
        panics_seen: vec![0; opts.nodes],
        www,
        stress: None,
        false_forced_leaves: 0,
        halts_total: 0,
        max_converge_ms: 0.0,
        converge_bound_max_ms: 0,
        counts: BTreeMap::new(),
        mid_fault_ops: 0,
        faults: 0,
        t_heal: 0,
        on_brx: vec![false; opts.nodes],
        disturbed: Vec::new(),
        episodes: Vec::new(),
    };
    let _ = &nem.www;
    println!("  node directories under {}", nem.rig.c.dir.display());
    let names: Vec<String> = nem.rig.c.hosts.iter().map(|h| h.ns.name.clone()).collect();
    nem.rig.checker = Some(Checker::start(shared.clone(), names));
    let t_start = monotonic_ns();
    let result = (|| -> Result<()> {
        for i in 0..opts.nodes {
            check_interrupt()?;
            nem.start_agent(i);
        }
        nem.note("all agents started".into());
        nem.t_heal = monotonic_ns();
        nem.converge(&(0..opts.nodes).collect::<Vec<_>>())?;
        let mut rng = Rng::new(opts.seed);
        nem.run(&mut rng, &kinds)
    })();
    let minutes = (monotonic_ns() - t_start) as f64 / 60e9;
    if let Err(e) = &result {
        if !interrupted() {
            nem.violate(format!("the run stopped: {e:#}"));
        }
    }
    // Client figures (information, not invariants).
    let failed: Vec<usize> = nem.rig.probers.iter().map(|p| p.samples().iter().filter(|s| !s.ok()).count()).collect();
    let requests: Vec<usize> = nem.rig.probers.iter().map(|p| p.samples().len()).collect();
    // Continue every agent so the clean-up's SIGTERM is seen.
    for i in 0..opts.nodes {
        nem.signal(i, libc::SIGCONT);
    }
    let (violations, timeline, stalls, max_stall_ms, by_kind) = {
        let sh = shared.lock().unwrap();
        let by: serde_json::Map<String, serde_json::Value> = sh.by_kind.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
        (sh.violations.clone(), sh.timeline.clone(), sh.stalls, sh.max_stall_ms, by)
    };
    let summary = serde_json::json!({
        "minutes": (minutes * 100.0).round() / 100.0,
        "seed": opts.seed,
        "nodes": opts.nodes,
        "faults": nem.faults,
        "violations": violations.len(),
        "violations_by_kind": by_kind,
        "false_forced_leaves": nem.false_forced_leaves,
        "max_converge_ms": nem.max_converge_ms.round(),
        "converge_bound_ms": opts.converge_ms,
        "converge_bound_max_ms": nem.converge_bound_max_ms,
        "halts": nem.halts_total,
        "mid_fault_operator_commands": nem.mid_fault_ops,
        "kinds": nem.counts.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
        "client_requests": {"web": requests[0], "db": requests[1]},
        "client_failed": {"web": failed[0], "db": failed[1]},
        "host_stalls_over_100ms": stalls,
        "max_host_stall_ms": max_stall_ms.round(),
    });
    let keep = !violations.is_empty();
    if keep {
        // Keep the node directories (logs, events, state) for the report.
        std::env::set_var("BATON_KEEP_TEST_DIR", "1");
    }
    let dir = nem.rig.c.dir.clone();
    drop(nem);
    if keep {
        println!("\nchaos: {} violation(s), seed {}:", violations.len(), opts.seed);
        for v in &violations {
            println!("  {v}");
        }
        println!("\ntimeline (ms since the start):");
        for l in &timeline {
            println!("  {l}");
        }
        println!("\nnode directories kept in {}", dir.display());
        println!("reproduce: {reproduce}");
    }
    if interrupted() {
        bail!("interrupted");
    }
    println!("{summary}");
    if keep {
        std::process::exit(1);
    }
    Ok(())
}

impl Drop for Nemesis<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.stress.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
/// xtask's binary has `test = false`: `cargo test -p xtask --bin xtask verdict`.
mod verdict_tests {
    use super::*;

    #[test]
    fn log_times_are_read_in_utc_seconds() {
        let t = log_time_s("2026-12-07T13:44:38.368501Z ERROR baton_agent::daemon::cluster: clustering halted").unwrap();
        // 2026-12-07 is day 20794 since the epoch.
        assert_eq!(days_from_civil(2026, 12, 7), 20794);
        assert!((t - (20794.0 * 86400.0 + 13.0 * 3600.0 + 44.0 * 60.0 + 38.368501)).abs() < 1e-6);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert!(log_time_s("  converged 42 ms").is_none());
    }

    #[test]
    fn a_majority_side_whose_view_had_no_majority_there_may_halt() {
        // Chaos seed 2026, 13:44:38: node1 (index 0) had just been forced
        // out; nodes 3 and 4 (indices 2, 3) are cut off from 1, 2, 5.
        let view = Some(vec![1, 2, 3, 4]);
        let views = vec![None, view.clone(), view.clone(), view.clone(), view];
        let ex = excused_by_view(&[2, 3], &views, 5);
        assert_eq!(ex.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 4]);
        // The full view: 3 of 5 on that side keep quorum, nobody excused.
        let full = Some(vec![0, 1, 2, 3, 4]);
        assert!(excused_by_view(&[2, 3], &vec![full.clone(); 5], 5).is_empty());
        // Static quorum: a view shrunk to [1, 2, 3] (4 and 5 forced out) has
        // 2 of its 3 members on the side of 1, 2 and 4 (5 is cut off with 3):
        // a majority of the view, not of the 5 configured nodes; they halt.
        let shrunk = Some(vec![0, 1, 2]);
        let views = vec![shrunk.clone(), shrunk.clone(), shrunk, None, None];
        let ex = excused_by_view(&[2, 4], &views, 5);
        assert_eq!(ex.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!(ex[0].1.contains("not a majority of the 5 configured nodes"), "{}", ex[0].1);
        // Two configured nodes: the two-node rule decides, not this one.
        assert!(excused_by_view(&[1], &[Some(vec![0]), None], 2).is_empty());
        // The cut-off side is judged as disturbed, not here.
        use baton_tests::state::{ClusterSnapshot, NodeLine, NodeState as S};
        let snapshot = |my_state: S, nodes: &[(u32, S)]| ClusterSnapshot {
            me: 2,
            my_state,
            master: Some(2),
            quorate: Some(true),
            view: None,
            nodes: nodes.iter().map(|&(id, state)| NodeLine { id, name: format!("node{id}"), state, incarnation: 1 }).collect(),
            transitions: Vec::new(),
            local_in_flight: Vec::new(),
            subsystems: Vec::new(),
            halted: None,
            fencing: None,
            stats: Default::default(),
        };
        let g = snapshot(S::Joined, &[(1, S::ForcedLeaving), (2, S::Joined), (3, S::Joining), (4, S::Inactive), (5, S::Leaving)]);
        assert_eq!(view_group(&g), Some(vec![1, 2, 4]));
        assert_eq!(view_group(&snapshot(S::Joining, &[(2, S::Joining)])), None);
    }
}
