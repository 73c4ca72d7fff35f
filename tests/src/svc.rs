//! The fixture of the service tests (`tests/tests/services.rs`,
//! `tests/tests/ownership.rs`): a cluster of agents with resource groups,
//! a client namespace that requests the floating address, and a watcher
//! that samples, from outside the agents, which nodes hold the address.
//!
//! Topology: the harness's `Cluster` (one link `ic0` on 10.77.0.0/24,
//! bridge `br0` in the switch namespace) and a client namespace whose
//! `eth0` (10.77.0.250/24) is a port of the same bridge. The floating
//! address is 10.77.0.100/24.
//!
//! Every node gets its own configuration file: `@NODE@` in the group text is
//! replaced by the node's name (node1, node2, ...), as real hosts have their
//! own paths.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::*;
use serde_json::Value;

pub const VIP: &str = "10.77.0.100";
pub const VIP_OCTETS: [u8; 4] = [10, 77, 0, 100];
/// The interface of the harness's client namespace (`Cluster::add_client`).
pub const CLIENT_IF: &str = "eth0";
pub const IF: &str = "ic0";

// ------------------------------------------------------------------ fixture

/// A 3-node cluster with per-node configuration, a client namespace and a
/// scratch directory `work` for web roots and marker files.
pub struct Svc {
    pub c: Cluster,
    pub client: Option<ClientHost>,
    pub work: PathBuf,
    pub group_text: String,
}

impl Svc {
    /// `group_text` is TOML appended to every node's configuration, with
    /// `@NODE@` replaced by the node's name, `@IP@` by its address on the
    /// first link and `@WORK@` by the work dir.
    ///
    /// Heartbeats every 20 ms, silence after 5 misses (100 ms): these tests
    /// are about services, not detection speed (datapath.rs and the benches
    /// use 10 ms × 3), and fourteen of them run at once, each with three
    /// agents, a client and busybox servers. A scheduling stall of 30 ms on
    /// a busy CI machine must not force a node out in the middle of a
    /// switchover that the test checks.
    pub fn new(tag: &str, n: usize, group_text: &str) -> Svc {
        let c = Cluster::new(tag, n, 1, 20, 5);
        let work = c.dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        for h in &c.hosts {
            let www = work.join("www").join(&h.name);
            std::fs::create_dir_all(&www).unwrap();
            std::fs::write(www.join("index.html"), format!("{}\n", h.name)).unwrap();
        }
        let group_text = group_text.replace("@WORK@", &work.display().to_string());
        Svc { c, client: None, work, group_text }
    }

    pub fn with_client(mut self) -> Svc {
        self.client = Some(self.c.add_client(0));
        self
    }

    pub fn client(&self) -> String {
        self.client.as_ref().expect("client namespace").ns.name.clone()
    }

    pub fn ns(&self, i: usize) -> String {
        self.c.hosts[i].ns.name.clone()
    }

    pub fn name(&self, i: usize) -> String {
        self.c.hosts[i].name.clone()
    }

    pub fn id(&self, i: usize) -> u64 {
        self.c.hosts[i].id as u64
    }

    /// The index of the node with id `id`.
    pub fn index_of(&self, id: u64) -> usize {
        self.c.hosts.iter().position(|h| h.id as u64 == id).unwrap_or_else(|| panic!("no node with id {id}"))
    }

    /// Writes node `i`'s configuration (the harness's plus the group text)
    /// and starts its agent, waiting until its control socket exists.
    pub fn start(&mut self, i: usize) {
        let cfg = self.c.node_dir(i).join("baton.toml");
        std::fs::create_dir_all(self.c.node_dir(i)).unwrap();
        let text = format!("{}\n{}\n", self.c.config_text(i), self.group_text.replace("@NODE@", &self.c.hosts[i].name).replace("@IP@", &self.c.hosts[i].addrs[0]));
        std::fs::write(&cfg, text).unwrap();
        // Keep the previous life's log (a restart overwrites agent.log).
        let log = self.c.node_dir(i).join("agent.log");
        if log.exists() {
            let n = (0..).find(|k| !self.c.node_dir(i).join(format!("agent.{k}.log")).exists()).unwrap();
            std::fs::rename(&log, self.c.node_dir(i).join(format!("agent.{n}.log"))).unwrap();
        }
        let a = Agent::spawn(&self.c.hosts[i].ns, &cfg, &log);
        self.c.agents[i] = Some(a);
        let sock = self.c.control_socket(i);
        let ok = wait_until(Duration::from_secs(20), || {
            if let Some(a) = self.c.agents[i].as_mut() {
                if let Some(st) = a.child.try_wait().unwrap() {
                    panic!("agent {i} exited early ({st}):\n{}", self.c.agent_log(i));
                }
            }
            sock.exists()
        });
        if ok.is_none() {
            panic!("agent {i} did not start:\n{}", self.c.agent_log(i));
        }
    }

    pub fn start_all(&mut self) {
        for i in 0..self.c.hosts.len() {
            self.start(i);
        }
        self.c.wait_all_joined(Duration::from_secs(15));
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.c.hosts.len()).filter(|i| self.c.agents[*i].is_some()).collect()
    }

    /// A node crash: SIGKILL its agent, then every process left in its
    /// namespace (the application the agent started). Returns the instant
    /// just before the kill.
    pub fn crash(&mut self, i: usize) -> Instant {
        let t = Instant::now();
        self.c.crash(i);
        t
    }

    /// `baton status --json` of node `i`, Null when it cannot be read.
    pub fn status(&self, i: usize) -> Value {
        let out = std::process::Command::new(baton_bin())
            .args(["status", "--json", "--config"])
            .arg(self.c.node_dir(i).join("baton.toml"))
            .output()
            .unwrap();
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The `agent` part of node `i`'s status (its `agent.json`), typed.
    pub fn status_agent(&self, i: usize) -> Option<state::AgentStatus> {
        serde_json::from_value(self.status(i)["agent"].take()).ok()
    }

    /// The `membership` part of node `i`'s status (its `cluster.json`), typed.
    pub fn status_membership(&self, i: usize) -> Option<state::ClusterSnapshot> {
        serde_json::from_value(self.status(i)["membership"].take()).ok()
    }

    /// The service lines of node `i`'s status (`services.json` as `baton
    /// status --json` shows it; empty when it cannot be read).
    pub fn services(&self, i: usize) -> Vec<state::ServiceLine> {
        serde_json::from_value(self.status(i)["services"].take()).unwrap_or_default()
    }

    /// Service `name` in node `i`'s status (None when absent).
    pub fn service(&self, i: usize, name: &str) -> Option<state::ServiceLine> {
        self.services(i).into_iter().find(|s| s.name == name)
    }

    /// The node id service `name` is Registered on, as node `i` sees it.
    pub fn registered_on(&self, i: usize, name: &str) -> Option<u64> {
        let s = self.service(i, name)?;
        (s.state == state::ServiceState::Registered).then_some(s.node.map(u64::from)).flatten()
    }

    /// Whether node `i`'s agent process has ended (a zombie not reaped yet,
    /// or gone), although the test did not stop it.
    pub fn agent_exited(&self, i: usize) -> bool {
        let Some(a) = &self.c.agents[i] else { return true };
        match std::fs::read_to_string(format!("/proc/{}/stat", a.pid())) {
            // The state is the first field after the command's closing parenthesis.
            Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
            Err(_) => true,
        }
    }

    /// Waits until every running agent sees `name` Registered on the same
    /// node; returns that node's id.
    pub fn wait_registered(&self, name: &str, timeout: Duration, pred: impl Fn(u64) -> bool) -> u64 {
        let mut on = None;
        let ok = wait_until(timeout, || {
            // An agent that ended on its own (a node taken over leaves and
            // stops) has no say: its last state files are stale.
            let seen: Vec<Option<u64>> = self.running().into_iter().filter(|&i| !self.agent_exited(i)).map(|i| self.registered_on(i, name)).collect();
            on = seen.first().copied().flatten();
            on.is_some_and(&pred) && seen.iter().all(|s| *s == on)
        });
        if ok.is_none() {
            self.fail(&format!("service {name:?} not registered as expected within {timeout:?}"));
        }
        on.unwrap()
    }

    /// Panics with `msg`, every running node's view of the services and the
    /// tail of every agent's log.
    pub fn fail(&self, msg: &str) -> ! {
        let mut s = format!("{msg}\n");
        for i in self.running() {
            s += &format!("--- {} services: {}\n", self.name(i), serde_json::to_string(&self.services(i)).unwrap_or_default());
        }
        s += &self.logs();
        panic!("{s}");
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for i in 0..self.c.hosts.len() {
            // Without the netlink crate's attribute-size warnings and the
            // per-level transition steps.
            let lines: Vec<String> = self
                .c
                .log_lines(i, &[])
                .into_iter()
                .filter(|l| !l.contains("netlink_packet_route") && !l.contains("transition step"))
                .collect();
            let from = lines.len().saturating_sub(60);
            s += &format!("--- {} agent log (last {} of {} lines):\n{}\n", self.name(i), lines.len() - from, lines.len(), lines[from..].join("\n"));
        }
        s
    }

    pub fn check(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(&msg());
        }
    }

    /// Waits until the client gets `page` (a node's name) from the VIP;
    /// fails with `when` and the last answer otherwise.
    pub fn expect_page(&self, page: &str, within: Duration, when: &str) {
        let client = self.client();
        let mut last = Err(String::new());
        let ok = wait_until(within, || {
            last = get_page(&client);
            last.as_deref() == Ok(page)
        });
        self.check(ok.is_some(), || format!("the client never got {page}'s page {when}: {last:?}"));
    }

    pub fn marker(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// `baton CMD... --config <node i's file>`; panics (with logs) on failure.
    pub fn baton(&self, i: usize, args: &[&str]) -> String {
        let out = std::process::Command::new(baton_bin())
            .args(args)
            .arg("--config")
            .arg(self.c.node_dir(i).join("baton.toml"))
            .output()
            .unwrap();
        if !out.status.success() {
            self.fail(&format!(
                "baton {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        // Stop the agents first (they stop their services), then whatever
        // is left in the namespaces, before the harness deletes them.
        for i in 0..self.c.hosts.len() {
            if let Some(a) = self.c.agents[i].take() {
                a.terminate();
            }
            kill_netns_processes(&self.ns(i));
        }
    }
}

/// SIGKILL every process in network namespace `ns` (all started by this
/// test's agents).
pub fn kill_netns_processes(ns: &str) {
    for pid in netns_pids(ns) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Command lines of the processes in namespace `ns`.
pub fn netns_cmdlines(ns: &str) -> Vec<String> {
    let out = std::process::Command::new("ip").args(["netns", "pids", ns]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
        .collect()
}

pub fn mac(ns: &str) -> String {
    link_mac(ns, IF)
}

/// The client's neighbour entry for the VIP: (lladdr, states).
pub fn neigh(ns: &str) -> Option<(String, Vec<String>)> {
    neigh_entry(ns, VIP, CLIENT_IF)
}

pub fn vip_on(ns: &str) -> bool {
    sh(&["ip", "-n", ns, "-4", "addr", "show", "dev", IF]).contains(&format!(" {VIP}/"))
}

// ------------------------------------------------------------------ client

pub fn vip_http() -> std::net::SocketAddr {
    format!("{VIP}:80").parse().unwrap()
}

/// One GET of the VIP from the client namespace: the serving node's name.
pub fn get_page(client: &str) -> Result<String, String> {
    in_netns(client, || http_get(vip_http(), Duration::from_secs(2)))
}

// ------------------------------------------------------------------ address watcher

/// A netlink route socket opened inside namespace `ns`.
pub fn netlink_in(ns: &str) -> OwnedFd {
    in_netns(ns, || {
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        assert!(fd >= 0, "netlink socket: {}", std::io::Error::last_os_error());
        unsafe { OwnedFd::from_raw_fd(fd) }
    })
}

/// Whether the VIP is configured in the namespace of `fd` (an RTM_GETADDR
/// dump, IPv4).
pub fn netlink_has_vip(fd: &OwnedFd, seq: u32) -> bool {
    let mut req = [0u8; 24];
    req[0..4].copy_from_slice(&24u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETADDR.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    req[16] = libc::AF_INET as u8;
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr() as *const libc::c_void, req.len(), 0) };
    assert_eq!(n, 24, "netlink send: {}", std::io::Error::last_os_error());
    let mut buf = vec![0u8; 65536];
    let mut found = false;
    loop {
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        assert!(n > 0, "netlink recv: {}", std::io::Error::last_os_error());
        let mut off = 0usize;
        let n = n as usize;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
            if len < 16 || off + len > n {
                break;
            }
            if mseq == seq {
                if ty == libc::NLMSG_DONE as u16 {
                    return found;
                }
                if ty == libc::NLMSG_ERROR as u16 {
                    panic!("netlink dump error");
                }
                if ty == libc::RTM_NEWADDR {
                    let mut a = off + 16 + 8;
                    while a + 4 <= off + len {
                        let alen = u16::from_ne_bytes(buf[a..a + 2].try_into().unwrap()) as usize;
                        let aty = u16::from_ne_bytes(buf[a + 2..a + 4].try_into().unwrap());
                        if alen < 4 {
                            break;
                        }
                        if (aty == libc::IFA_LOCAL || aty == libc::IFA_ADDRESS) && alen == 8 && buf[a + 4..a + 8] == VIP_OCTETS {
                            found = true;
                        }
                        a += (alen + 3) & !3;
                    }
                }
            }
            off += (len + 3) & !3;
        }
    }
}

/// One sample: node index, start and end of the dump, VIP present.
pub type AddrSample = (usize, Instant, Instant, bool);

/// Samples which nodes hold the VIP, round after round (about every
/// millisecond), until stopped (`finish`, or drop).
pub struct Watcher {
    stop: Arc<AtomicBool>,
    samples: Arc<std::sync::Mutex<Vec<AddrSample>>>,
    handle: Option<JoinHandle<()>>,
}

impl Watcher {
    pub fn start(namespaces: Vec<String>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (st, out) = (stop.clone(), samples.clone());
        let handle = std::thread::spawn(move || {
            let fds: Vec<OwnedFd> = namespaces.iter().map(|ns| netlink_in(ns)).collect();
            let mut seq = 1u32;
            while !st.load(Ordering::SeqCst) {
                for (i, fd) in fds.iter().enumerate() {
                    seq += 1;
                    let t0 = Instant::now();
                    let has = netlink_has_vip(fd, seq);
                    out.lock().unwrap().push((i, t0, Instant::now(), has));
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        Watcher { stop, samples, handle: Some(handle) }
    }

    /// The samples so far (the watcher goes on).
    pub fn samples(&self) -> Vec<AddrSample> {
        self.samples.lock().unwrap().clone()
    }

    pub fn finish(mut self) -> Vec<AddrSample> {
        self.halt();
        self.samples()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Intervals during which node `n` certainly held the VIP: from the end of
/// the first to the start of the last sample of each run of present samples
/// (samples of node `n` at or after `dead_from[n]` are ignored: the node is
/// no longer live).
pub fn certain_intervals(samples: &[AddrSample], n: usize, dead_from: Option<Instant>) -> Vec<(Instant, Instant)> {
    let mut out = Vec::new();
    let mut run: Option<(Instant, Instant)> = None;
    for &(node, t0, t1, has) in samples.iter().filter(|s| s.0 == n && dead_from.is_none_or(|d| s.1 < d)) {
        let _ = node;
        match (has, run) {
            (true, None) => run = Some((t1, t0)),
            (true, Some((a, _))) => run = Some((a, t0)),
            (false, Some(r)) => {
                out.push(r);
                run = None;
            }
            (false, None) => {}
        }
    }
    if let Some(r) = run {
        out.push(r);
    }
    out.into_iter().filter(|(a, b)| a < b).collect()
}

/// Checks that no two live nodes certainly held the VIP at the same time;
/// returns the nodes that held it at any sample (in order of first sighting).
pub fn check_never_on_two(svc: &Svc, samples: &[AddrSample], dead_from: &[Option<Instant>]) -> Vec<usize> {
    let n = dead_from.len();
    let iv: Vec<Vec<(Instant, Instant)>> = (0..n).map(|i| certain_intervals(samples, i, dead_from[i])).collect();
    for a in 0..n {
        for b in a + 1..n {
            for x in &iv[a] {
                for y in &iv[b] {
                    if x.0 < y.1 && y.0 < x.1 {
                        let t0 = samples[0].1;
                        svc.fail(&format!(
                            "{VIP} was configured on {} ({:?}..{:?}) and {} ({:?}..{:?}) at once (times from the watch start)",
                            svc.name(a),
                            x.0 - t0,
                            x.1 - t0,
                            svc.name(b),
                            y.0 - t0,
                            y.1 - t0
                        ));
                    }
                }
            }
        }
    }
    let mut holders = Vec::new();
    for s in samples {
        if s.3 && dead_from[s.0].is_none_or(|d| s.1 < d) && !holders.contains(&s.0) {
            holders.push(s.0);
        }
    }
    let rounds = samples.len() / n.max(1);
    let span = samples.last().map(|s| s.2 - samples[0].1).unwrap_or_default();
    eprintln!("address watcher: {rounds} rounds over {span:?} (every {:?} on average)", span / rounds.max(1) as u32);
    holders
}

// ------------------------------------------------------------------ configs

/// A web group: the VIP and busybox httpd serving the node's name.
pub fn web_group(transfer_cost: &str, extra: &str) -> String {
    httpd_group("web", VIP, transfer_cost, extra)
}

/// A group `name` on nodes 1-3 (preferred 1): floating address `vip` and
/// busybox httpd on it, serving the node's name.
pub fn httpd_group(name: &str, vip: &str, transfer_cost: &str, extra: &str) -> String {
    format!(
        r#"[[group]]
name = "{name}"
addresses = ["{vip}/24"]
interface = "{IF}"
preferred = 1
nodes = [1, 2, 3]
transfer_cost = "{transfer_cost}"
{extra}

[group.application]
kind = "command"
daemon = "exec busybox httpd -f -p {vip}:80 -h @WORK@/www/@NODE@"
"#
    )
}

/// Starts the cluster and waits for `web` on node 1 with the VIP there only.
pub fn web_on_node1(svc: &mut Svc) {
    svc.start_all();
    svc.wait_registered("web", Duration::from_secs(20), |n| n == 1);
    svc.expect_page("node1", Duration::from_secs(10), "at the start");
    svc.check(vip_on(&svc.ns(0)), || format!("{VIP} is not on node1"));
    for i in 1..svc.c.hosts.len() {
        svc.check(!vip_on(&svc.ns(i)), || format!("{VIP} is on {} too", svc.name(i)));
    }
}


/// Waits (up to 10 s) until hosts `seen_by` both see `web` registered on one
/// node other than node `from` (an id), then (up to 5 s) for the VIP on
/// that node; fails the test with `failure` (or with the VIP's absence)
/// otherwise. Returns the new owner's host index and when the two hosts
/// were first seen to agree.
pub fn wait_web_taken_over(svc: &Svc, from: u64, seen_by: (usize, usize), failure: &str) -> (usize, Duration) {
    let mut owner = None;
    let moved = wait_until(Duration::from_secs(10), || {
        owner = svc.registered_on(seen_by.0, "web");
        owner.is_some_and(|n| n != from) && svc.registered_on(seen_by.1, "web") == owner
    });
    svc.check(moved.is_some(), || failure.to_string());
    let owner_i = svc.index_of(owner.unwrap());
    let served = wait_until(Duration::from_secs(5), || vip_on(&svc.ns(owner_i)));
    svc.check(served.is_some(), || format!("{VIP} never came to {}", svc.name(owner_i)));
    (owner_i, moved.unwrap())
}

/// The longest time two live nodes certainly held the VIP at once (the
/// overlap of their certain intervals, see [`certain_intervals`]), with the
/// two nodes; zero when never.
pub fn max_dual_ownership(samples: &[AddrSample], dead_from: &[Option<Instant>]) -> (Duration, Option<(usize, usize)>) {
    let n = dead_from.len();
    let iv: Vec<Vec<(Instant, Instant)>> = (0..n).map(|i| certain_intervals(samples, i, dead_from[i])).collect();
    let mut worst = (Duration::ZERO, None);
    for a in 0..n {
        for b in a + 1..n {
            for x in &iv[a] {
                for y in &iv[b] {
                    let (from, to) = (x.0.max(y.0), x.1.min(y.1));
                    if from < to && to - from > worst.0 {
                        worst = (to - from, Some((a, b)));
                    }
                }
            }
        }
    }
    worst
}

/// Whether node `i` held the VIP at any sample that started at or after `t`.
pub fn held_since(samples: &[AddrSample], i: usize, t: Instant) -> bool {
    samples.iter().any(|s| s.0 == i && s.1 >= t && s.3)
}

/// Pids of processes in namespace `ns` whose command line contains `needle`.
pub fn pids_matching(ns: &str, needle: &str) -> Vec<i32> {
    netns_pids(ns)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").contains(needle))
                .unwrap_or(false)
        })
        .collect()
}
