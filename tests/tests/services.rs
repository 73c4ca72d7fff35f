//! Kernel tests of services (S1.10–S1.15, S4, D5): real agents in network
//! namespaces run `[[group]]`s: a floating IPv4 address on the interconnect
//! subnet and `busybox httpd` as the application, a client namespace on the
//! same bridge that requests it, failover after SIGKILL, switchover,
//! fall-back to the preferred node, every-node placement, a failing start,
//! recovery, and Debian's `ocf:heartbeat:Dummy` driven by the cluster.
//!
//! Topology per test: the harness's `Cluster` (3 nodes, one link `ic0` on
//! 10.77.0.0/24, bridge `br0` in the switch namespace) and a client
//! namespace whose `ic0` (10.77.0.200/24) is a port of the same bridge.
//! The floating address is 10.77.0.100/24.
//!
//! Every node gets its own configuration file: `@NODE@` in the group text is
//! replaced by the node's name (node1, node2, ...), as real hosts have their
//! own paths. Needs root; under CI=true a skip is a failure. Needs busybox and
//! Debian's resource-agents (`cargo xtask setup` installs both).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton_tests::*;
use serde_json::Value;

const VIP: &str = "10.77.0.100";
const VIP_OCTETS: [u8; 4] = [10, 77, 0, 100];
/// The interface of the harness's client namespace (`Cluster::add_client`).
const CLIENT_IF: &str = "eth0";
const IF: &str = "ic0";

// ------------------------------------------------------------------ fixture

/// A 3-node cluster with per-node configuration, a client namespace and a
/// scratch directory `work` for web roots and marker files.
struct Svc {
    c: Cluster,
    client: Option<ClientHost>,
    work: PathBuf,
    group_text: String,
}

impl Svc {
    /// `group_text` is TOML appended to every node's configuration, with
    /// `@NODE@` replaced by the node's name and `@WORK@` by the work dir.
    ///
    /// Heartbeats every 20 ms, silence after 5 misses (100 ms): these tests
    /// are about services, not detection speed (datapath.rs and the benches
    /// use 10 ms × 3), and fourteen of them run at once, each with three
    /// agents, a client and busybox servers. A scheduling stall of 30 ms on
    /// a busy CI machine must not force a node out in the middle of a
    /// switchover that the test checks.
    fn new(tag: &str, n: usize, group_text: &str) -> Svc {
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

    fn with_client(mut self) -> Svc {
        self.client = Some(self.c.add_client(0));
        self
    }

    fn client(&self) -> String {
        self.client.as_ref().expect("client namespace").ns.name.clone()
    }

    fn ns(&self, i: usize) -> String {
        self.c.hosts[i].ns.name.clone()
    }

    fn name(&self, i: usize) -> String {
        self.c.hosts[i].name.clone()
    }

    fn id(&self, i: usize) -> u64 {
        self.c.hosts[i].id as u64
    }

    /// The index of the node with id `id`.
    fn index_of(&self, id: u64) -> usize {
        self.c.hosts.iter().position(|h| h.id as u64 == id).unwrap_or_else(|| panic!("no node with id {id}"))
    }

    /// Writes node `i`'s configuration (the harness's plus the group text)
    /// and starts its agent, waiting until its control socket exists.
    fn start(&mut self, i: usize) {
        let cfg = self.c.node_dir(i).join("baton.toml");
        std::fs::create_dir_all(self.c.node_dir(i)).unwrap();
        let text = format!("{}\n{}\n", self.c.config_text(i), self.group_text.replace("@NODE@", &self.c.hosts[i].name));
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

    fn start_all(&mut self) {
        for i in 0..self.c.hosts.len() {
            self.start(i);
        }
        self.c.wait_all_joined(Duration::from_secs(15));
    }

    fn running(&self) -> Vec<usize> {
        (0..self.c.hosts.len()).filter(|i| self.c.agents[*i].is_some()).collect()
    }

    /// A node crash: SIGKILL its agent, then every process left in its
    /// namespace (the application the agent started). Returns the instant
    /// just before the kill.
    fn crash(&mut self, i: usize) -> Instant {
        let t = Instant::now();
        self.c.crash(i);
        t
    }

    /// `baton status --json` of node `i`, Null when it cannot be read.
    fn status(&self, i: usize) -> Value {
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

    /// Service `name` in node `i`'s status (Null when absent).
    fn service(&self, i: usize, name: &str) -> Value {
        let st = self.status(i);
        st["services"].as_array().and_then(|a| a.iter().find(|s| s["name"] == name).cloned()).unwrap_or(Value::Null)
    }

    /// The node id service `name` is Registered on, as node `i` sees it.
    fn registered_on(&self, i: usize, name: &str) -> Option<u64> {
        let s = self.service(i, name);
        (s["state"] == "Registered").then(|| s["node"].as_u64()).flatten()
    }

    /// Waits until every running agent sees `name` Registered on the same
    /// node; returns that node's id.
    fn wait_registered(&self, name: &str, timeout: Duration, pred: impl Fn(u64) -> bool) -> u64 {
        let mut on = None;
        let ok = wait_until(timeout, || {
            let seen: Vec<Option<u64>> = self.running().iter().map(|&i| self.registered_on(i, name)).collect();
            on = seen[0];
            on.is_some_and(&pred) && seen.iter().all(|s| *s == on)
        });
        if ok.is_none() {
            self.fail(&format!("service {name:?} not registered as expected within {timeout:?}"));
        }
        on.unwrap()
    }

    /// Panics with `msg`, every running node's view of the services and the
    /// tail of every agent's log.
    fn fail(&self, msg: &str) -> ! {
        let mut s = format!("{msg}\n");
        for i in self.running() {
            s += &format!("--- {} services: {}\n", self.name(i), self.status(i)["services"]);
        }
        s += &self.logs();
        panic!("{s}");
    }

    fn logs(&self) -> String {
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

    fn check(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(&msg());
        }
    }

    /// Waits until the client gets `page` (a node's name) from the VIP;
    /// fails with `when` and the last answer otherwise.
    fn expect_page(&self, page: &str, within: Duration, when: &str) {
        let client = self.client();
        let mut last = Err(String::new());
        let ok = wait_until(within, || {
            last = get_page(&client);
            last.as_deref() == Ok(page)
        });
        self.check(ok.is_some(), || format!("the client never got {page}'s page {when}: {last:?}"));
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// `baton CMD... --config <node i's file>`; panics (with logs) on failure.
    fn baton(&self, i: usize, args: &[&str]) -> String {
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
fn kill_netns_processes(ns: &str) {
    for pid in netns_pids(ns) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Command lines of the processes in namespace `ns`.
fn netns_cmdlines(ns: &str) -> Vec<String> {
    let out = std::process::Command::new("ip").args(["netns", "pids", ns]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
        .collect()
}

fn mac(ns: &str) -> String {
    link_mac(ns, IF)
}

/// The client's neighbour entry for the VIP: (lladdr, states).
fn neigh(ns: &str) -> Option<(String, Vec<String>)> {
    neigh_entry(ns, VIP, CLIENT_IF)
}

fn vip_on(ns: &str) -> bool {
    sh(&["ip", "-n", ns, "-4", "addr", "show", "dev", IF]).contains(&format!(" {VIP}/"))
}

// ------------------------------------------------------------------ client

fn vip_http() -> std::net::SocketAddr {
    format!("{VIP}:80").parse().unwrap()
}

/// One GET of the VIP from the client namespace: the serving node's name.
fn get_page(client: &str) -> Result<String, String> {
    in_netns(client, || http_get(vip_http(), Duration::from_secs(2)))
}

// ------------------------------------------------------------------ address watcher

/// A netlink route socket opened inside namespace `ns`.
fn netlink_in(ns: &str) -> OwnedFd {
    in_netns(ns, || {
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        assert!(fd >= 0, "netlink socket: {}", std::io::Error::last_os_error());
        unsafe { OwnedFd::from_raw_fd(fd) }
    })
}

/// Whether the VIP is configured in the namespace of `fd` (an RTM_GETADDR
/// dump, IPv4).
fn netlink_has_vip(fd: &OwnedFd, seq: u32) -> bool {
    let mut req = [0u8; 24];
    req[0..4].copy_from_slice(&24u32.to_ne_bytes());
    req[4..6].copy_from_slice(&(libc::RTM_GETADDR as u16).to_ne_bytes());
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
type AddrSample = (usize, Instant, Instant, bool);

/// Samples which nodes hold the VIP, round after round, until stopped.
struct Watcher {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<AddrSample>>,
}

impl Watcher {
    fn start(namespaces: Vec<String>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let fds: Vec<OwnedFd> = namespaces.iter().map(|ns| netlink_in(ns)).collect();
            let mut out = Vec::new();
            let mut seq = 1u32;
            while !st.load(Ordering::SeqCst) {
                for (i, fd) in fds.iter().enumerate() {
                    seq += 1;
                    let t0 = Instant::now();
                    let has = netlink_has_vip(fd, seq);
                    out.push((i, t0, Instant::now(), has));
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            out
        });
        Watcher { stop, handle }
    }

    fn finish(self) -> Vec<AddrSample> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// Intervals during which node `n` certainly held the VIP: from the end of
/// the first to the start of the last sample of each run of present samples
/// (samples of node `n` at or after `dead_from[n]` are ignored: the node is
/// no longer live).
fn certain_intervals(samples: &[AddrSample], n: usize, dead_from: Option<Instant>) -> Vec<(Instant, Instant)> {
    let mut out = Vec::new();
    let mut run: Option<(Instant, Instant)> = None;
    for &(node, t0, t1, has) in samples.iter().filter(|s| s.0 == n && dead_from.map_or(true, |d| s.1 < d)) {
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
fn check_never_on_two(svc: &Svc, samples: &[AddrSample], dead_from: &[Option<Instant>]) -> Vec<usize> {
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
        if s.3 && dead_from[s.0].map_or(true, |d| s.1 < d) && !holders.contains(&s.0) {
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
fn web_group(transfer_cost: &str, extra: &str) -> String {
    format!(
        r#"[[group]]
name = "web"
addresses = ["{VIP}/24"]
interface = "{IF}"
preferred = 1
nodes = [1, 2, 3]
transfer_cost = "{transfer_cost}"
{extra}

[group.application]
kind = "command"
daemon = "exec busybox httpd -f -p {VIP}:80 -h @WORK@/www/@NODE@"
"#
    )
}

/// Starts the cluster and waits for `web` on node 1 with the VIP there only.
fn web_on_node1(svc: &mut Svc) {
    svc.start_all();
    svc.wait_registered("web", Duration::from_secs(20), |n| n == 1);
    svc.expect_page("node1", Duration::from_secs(10), "at the start");
    svc.check(vip_on(&svc.ns(0)), || format!("{VIP} is not on node1"));
    for i in 1..svc.c.hosts.len() {
        svc.check(!vip_on(&svc.ns(i)), || format!("{VIP} is on {} too", svc.name(i)));
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn failover_moves_the_address_and_the_clients_neighbour_entry_follows_the_gratuitous_arp() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("sfo", 3, &web_group("costly", "")).with_client();
    web_on_node1(&mut svc);
    let client = svc.client();
    let macs: Vec<String> = (0..3).map(|i| mac(&svc.ns(i))).collect();
    let (ll, _) = neigh(&client).unwrap_or_else(|| svc.fail("the client has no neighbour entry for the VIP"));
    svc.check(ll == macs[0], || format!("client's entry {ll} is not node1's MAC {}", macs[0]));

    let watcher = Watcher::start((0..3).map(|i| svc.ns(i)).collect());
    std::thread::sleep(Duration::from_millis(100));
    let killed = svc.crash(0);
    eprintln!("node1's agent and its httpd killed (SIGKILL)");

    // A survivor acquires the address. The client sends nothing meanwhile.
    let mut owner = None;
    let took = wait_until(Duration::from_secs(10), || {
        owner = [1usize, 2].into_iter().find(|&i| vip_on(&svc.ns(i)));
        owner.is_some()
    });
    svc.check(took.is_some(), || format!("no survivor acquired {VIP} within 10 s of the crash"));
    let owner = owner.unwrap();
    // The gratuitous ARP moves the client's entry to the new owner's MAC,
    // without the client sending anything.
    let moved = wait_until(Duration::from_secs(3), || neigh(&client).is_some_and(|(ll, _)| ll == macs[owner]));
    let entry = neigh(&client);
    svc.check(moved.is_some(), || {
        format!("the client's entry for {VIP} did not move to {} ({}) without traffic: {entry:?}", svc.name(owner), macs[owner])
    });
    let neigh_ms = killed.elapsed().as_secs_f64() * 1e3;
    let (_, states) = entry.unwrap();
    svc.check(states.iter().any(|s| s == "STALE"), || format!("entry learned from an unsolicited ARP should be STALE: {states:?}"));

    // The client reaches the service on the new owner.
    svc.expect_page(&svc.name(owner), Duration::from_secs(10), "after the failover");
    let served_ms = killed.elapsed().as_secs_f64() * 1e3;
    let on = svc.wait_registered("web", Duration::from_secs(10), |n| n != 1);
    svc.check(on == svc.id(owner), || format!("registered on node {on}, address on {}", svc.name(owner)));
    let samples = watcher.finish();
    let holders = check_never_on_two(&svc, &samples, &[Some(killed), None, None]);
    svc.check(holders == vec![0, owner], || format!("address holders over the failover: {holders:?}"));
    let up = svc.c.wait_event(owner, Duration::from_secs(5), |e| {
        e["event"] == "service_up" && e["service"] == "web" && (e["node"] == svc.id(owner) || e["node"] == svc.name(owner).as_str())
    });
    svc.check(up.is_some(), || format!("no service_up event for web on {}: {:?}", svc.name(owner), svc.c.events(owner)));
    eprintln!(
        "failover to {}: address acquired after {:.0} ms, client's neighbour entry moved after {neigh_ms:.0} ms, \
         client served after {served_ms:.0} ms (times from SIGKILL, by polling)",
        svc.name(owner),
        took.unwrap().as_secs_f64() * 1e3
    );
}

/// A switchover of `web` from node1 to node2 while the client requests it
/// every 10 ms. Asserts what is guaranteed (the address is never on two
/// nodes, node2 serves afterwards, answers never go back to node1) and
/// returns the failed requests, described. The cluster is returned so that
/// logs can be printed.
fn switchover_under_load(tag: &str) -> (Svc, Vec<String>, usize) {
    switchover_with(tag, "", Duration::from_secs(3))
}

/// [`switchover_under_load`] with `extra` group keys and a per-request
/// `timeout`. With `handover = "overlap"` the address is configured on both
/// nodes for a moment (node2 silent, node1 steering), so instead of "never
/// on two nodes" it asserts that node1's XDP program handed connections over
/// and that the address went from node1 alone to node2 alone.
fn switchover_with(tag: &str, extra: &str, timeout: Duration) -> (Svc, Vec<String>, usize) {
    let overlap = extra.contains("overlap");
    let mut svc = Svc::new(tag, 3, &web_group("costly", extra)).with_client();
    web_on_node1(&mut svc);
    let client = svc.client();
    let watcher = Watcher::start((0..3).map(|i| svc.ns(i)).collect());
    // A request every 10 ms, each with `timeout` to complete. With 3 s a SYN
    // lost while the address moves is sent again after 1 s; that is
    // latency, not a failed request. With 100 ms it is a failed request.
    let prober = Prober::start(&client, vip_http(), Duration::from_millis(10), timeout);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = monotonic_ns();
    svc.baton(0, &["switchover", "web", "2"]);
    svc.wait_registered("web", Duration::from_secs(15), |n| n == 2);
    let registered = Duration::from_nanos(monotonic_ns() - t0);
    // Keep polling until node2 has answered for a while.
    let stable = prober.wait_stable(t0, Some("node2"), 30, Duration::from_secs(10));
    let samples = prober.stop();
    let addr_samples = watcher.finish();
    svc.check(stable.is_some(), || "the client did not get node2's page steadily after the switchover".to_string());
    if overlap {
        // Node1 alone, then both (the handover), then node2 alone: once node1
        // let it go it never had it again.
        let last0 = addr_samples.iter().filter(|s| s.0 == 0 && s.3).map(|s| s.1).max();
        let first1 = addr_samples.iter().filter(|s| s.0 == 1 && s.3).map(|s| s.1).min();
        let held2 = addr_samples.iter().any(|s| s.0 == 2 && s.3);
        svc.check(last0.is_some() && first1.is_some() && !held2, || format!("address holders: node1 until {last0:?}, node2 from {first1:?}, node3 {held2}"));
        let st = svc.baton(0, &["status", "--json"]);
        let steered = serde_json::from_str::<serde_json::Value>(&st).ok().and_then(|v| v["counters"]["handover_steered"].as_u64()).unwrap_or(0);
        svc.check(steered > 0, || format!("node1's XDP program handed no packet to node2 (handover_steered = 0):\n{st}"));
        eprintln!("switchover: node1 steered {steered} packets to node2");
    } else {
        let holders = check_never_on_two(&svc, &addr_samples, &[None, None, None]);
        svc.check(holders == vec![0, 1], || format!("address holders over the switchover: {holders:?}"));
    }
    svc.check(!vip_on(&svc.ns(0)) && vip_on(&svc.ns(1)), || format!("{VIP} should be on node2 only"));

    let ms = |t: u64| (t as i64 - t0 as i64) as f64 / 1e6;
    let failed: Vec<String> = samples
        .iter()
        .filter_map(|s| s.result.as_ref().err().map(|e| format!("request at {:+.1} ms ({:.1} ms): {e}", ms(s.start_ns), (s.end_ns - s.start_ns) as f64 / 1e6)))
        .collect();
    let bodies: Vec<&str> = samples.iter().filter_map(|s| s.result.as_deref().ok()).collect();
    let slowest = samples.iter().map(|s| s.end_ns - s.start_ns).max().unwrap_or_default() as f64 / 1e6;
    // Node1 until the switch, node2 after it; never back.
    let first2 = bodies.iter().position(|b| *b == "node2");
    svc.check(first2.is_some(), || "node2 never answered".to_string());
    svc.check(bodies[first2.unwrap()..].iter().all(|b| *b == "node2"), || format!("answers went back after the switch: {bodies:?}"));
    svc.check(bodies[..first2.unwrap()].iter().all(|b| *b == "node1"), || format!("unexpected answers: {bodies:?}"));
    eprintln!(
        "switchover: {} requests every 10 ms, {} failed, slowest {slowest:.1} ms, outage {:?}; registered on node2 {registered:?} after the command",
        samples.len(),
        failed.len(),
        outage(&samples)
    );
    let n = samples.len();
    (svc, failed, n)
}

#[test]
fn switchover_moves_the_service_and_the_address_is_never_on_two_nodes() {
    if !kernel_tests_possible() {
        return;
    }
    let (_svc, failed, n) = switchover_under_load("ssw");
    // Reported, not asserted here (see the next test).
    eprintln!("switchover: {} of {n} client requests failed:\n{}", failed.len(), failed.join("\n"));
}

/// The `web` group keys of the zero-loss handover. The monitor is what tells
/// the new node that its server answers (a spawned daemon may not listen
/// yet): the old node steers only after it passed there.
fn overlap_keys() -> String {
    format!(
        "handover = \"overlap\"\ndrain_timeout_ms = 1000\n\n[[group.monitor]]\nkind = \"command\"\nmonitor = \"busybox wget -q -O /dev/null http://{VIP}/\"\ninterval_ms = 1000\n"
    )
}

/// Issue 4: "switchover without a failed client request", with the
/// zero-loss handover (`handover = "overlap"`, docs/addresses.md) and a
/// client as impatient as the bench's: 100 ms per request, so that a SYN
/// lost while the address moves (retried after 1 s) counts as failed, and a
/// connection reset or refused fails at once.
#[test]
fn switchover_with_overlap_handover_loses_no_client_request() {
    if !kernel_tests_possible() {
        return;
    }
    let (svc, failed, n) = switchover_with("ssw0", &overlap_keys(), Duration::from_millis(100));
    svc.check(failed.is_empty(), || {
        format!("{} of {n} client requests failed during the switchover:\n{}", failed.len(), failed.join("\n"))
    });
}

#[test]
fn the_service_falls_back_to_its_preferred_node_when_it_returns() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("sfb", 3, &web_group("free", "")).with_client();
    web_on_node1(&mut svc);
    svc.crash(0);
    let on = svc.wait_registered("web", Duration::from_secs(15), |n| n != 1);
    let owner = svc.index_of(on);
    svc.expect_page(&svc.name(owner), Duration::from_secs(10), "after the failover");

    // Node1 reboots: its kernel lost the address, and its agent starts again.
    svc.c.flush_addr(0, &format!("{VIP}/24"), IF);
    let watcher = Watcher::start((0..3).map(|i| svc.ns(i)).collect());
    let t0 = Instant::now();
    svc.start(0);
    svc.wait_registered("web", Duration::from_secs(30), |n| n == 1);
    let back = t0.elapsed();
    svc.expect_page("node1", Duration::from_secs(10), "after the fall-back");
    let samples = watcher.finish();
    let holders = check_never_on_two(&svc, &samples, &[None, None, None]);
    svc.check(holders == vec![owner, 0], || format!("address holders over the fall-back: {holders:?}"));
    svc.check(!vip_on(&svc.ns(owner)), || format!("{} still has {VIP}", svc.name(owner)));
    eprintln!("fall-back from {} to node1: registered {back:?} after node1's agent started", svc.name(owner));
}

#[test]
fn every_node_placement_runs_the_service_on_every_node() {
    if !kernel_tests_possible() {
        return;
    }
    let group = r#"[[group]]
name = "agentd"
placement = "every"

[group.application]
kind = "command"
start = "touch @WORK@/started-@NODE@"
daemon = "exec sleep 3600"
"#;
    let mut svc = Svc::new("sevr", 3, group);
    svc.start_all();
    let all = wait_until(Duration::from_secs(20), || {
        let s = svc.service(0, "agentd");
        (1..=3u64).all(|id| s["nodes"][id.to_string()] == "Registered")
    });
    svc.check(all.is_some(), || "agentd not Registered on every node".to_string());
    for i in 0..3 {
        svc.check(svc.marker(&format!("started-{}", svc.name(i))).exists(), || format!("the start did not run on {}", svc.name(i)));
        let procs = netns_cmdlines(&svc.ns(i));
        svc.check(procs.iter().any(|p| p.contains("sleep 3600")), || format!("no daemon in {}: {procs:?}", svc.name(i)));
        let s = svc.service(i, "agentd");
        svc.check((1..=3u64).all(|id| s["nodes"][id.to_string()] == "Registered"), || format!("{} sees {s}", svc.name(i)));
    }
}

#[test]
fn a_failing_start_moves_the_service_to_the_next_node() {
    if !kernel_tests_possible() {
        return;
    }
    // The start fails on node1 only (it leaves a marker everywhere it runs).
    let group = web_group("costly", "").replace(
        "kind = \"command\"\n",
        "kind = \"command\"\nstart = \"touch @WORK@/tried-@NODE@; test @NODE@ != node1\"\n",
    );
    let mut svc = Svc::new("sfst", 3, &group).with_client();
    svc.start_all();
    let on = svc.wait_registered("web", Duration::from_secs(20), |n| n != 1);
    svc.check(on == 2, || format!("registered on node {on}; node2 is next in nodes = [1, 2, 3]"));
    svc.check(svc.marker("tried-node1").exists(), || "the start was never tried on node1 (the preferred node)".to_string());
    svc.check(!svc.marker("tried-node3").exists(), || "the start was tried on node3".to_string());
    let mut last = Err(String::new());
    let ok = wait_until(Duration::from_secs(10), || {
        last = get_page(&svc.client());
        last.as_deref() == Ok("node2")
    });
    svc.check(ok.is_some(), || format!("the client never got node2's page: {last:?}"));
    svc.check(!vip_on(&svc.ns(0)), || format!("{VIP} left on node1 after its failed start"));
    svc.check(!netns_cmdlines(&svc.ns(0)).iter().any(|p| p.contains("httpd")), || "httpd runs on node1".to_string());
}

#[test]
fn after_kill_9_the_recovery_action_runs_on_a_survivor_then_the_service_registers_there() {
    if !kernel_tests_possible() {
        return;
    }
    let group = web_group("costly", "recovery = \"echo $(date +%s%N) $BATON_FAILED_NODE > @WORK@/recovered-@NODE@\"").replace(
        "kind = \"command\"\n",
        "kind = \"command\"\nstart = \"date +%s%N >> @WORK@/started-@NODE@\"\n",
    );
    let mut svc = Svc::new("srec", 3, &group).with_client();
    web_on_node1(&mut svc);
    for i in 0..3 {
        svc.check(!svc.marker(&format!("recovered-{}", svc.name(i))).exists(), || "recovery ran before any failure".to_string());
    }
    svc.crash(0);
    let on = svc.wait_registered("web", Duration::from_secs(15), |n| n != 1);
    let owner = svc.index_of(on);
    let read = |p: PathBuf| -> Vec<u128> {
        std::fs::read_to_string(p).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    };
    let recovered: Vec<usize> = (1..3).filter(|&i| svc.marker(&format!("recovered-{}", svc.name(i))).exists()).collect();
    svc.check(recovered.len() == 1, || format!("recovery should run on exactly one survivor, ran on {recovered:?}"));
    let rec = std::fs::read_to_string(svc.marker(&format!("recovered-{}", svc.name(recovered[0])))).unwrap();
    let mut words = rec.split_whitespace();
    let rec_t: u128 = words.next().and_then(|w| w.parse().ok()).unwrap_or_else(|| svc.fail(&format!("recovery marker: {rec:?}")));
    let failed_node = words.next().unwrap_or("");
    svc.check(failed_node == "1", || format!("the recovery action was told the failed node is {failed_node:?}, not 1"));
    let starts = read(svc.marker(&format!("started-{}", svc.name(owner))));
    svc.check(starts.last().is_some_and(|s| *s > rec_t), || {
        format!("the start on {} ({starts:?}) did not follow the recovery ({rec_t})", svc.name(owner))
    });
    eprintln!("recovery ran on {}, the service registered on {}", svc.name(recovered[0]), svc.name(owner));
    let mut last = Err(String::new());
    let ok = wait_until(Duration::from_secs(10), || {
        last = get_page(&svc.client());
        last.as_deref() == Ok(svc.name(owner).as_str())
    });
    svc.check(ok.is_some(), || format!("the client never got {}'s page: {last:?}", svc.name(owner)));
}

#[test]
fn ocf_dummy_is_started_monitored_and_stopped_by_the_cluster() {
    if !kernel_tests_possible() {
        return;
    }
    let agent = Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy");
    if !agent.exists() {
        assert!(!must_run(), "{} missing (Debian's resource-agents) and CI=true forbids skipping", agent.display());
        eprintln!("SKIPPED: {} missing (install resource-agents)", agent.display());
        return;
    }
    let group = r#"[[group]]
name = "dummy"
preferred = 1
nodes = [1, 2, 3]
transfer_cost = "costly"

[group.application]
kind = "ocf"
agent = "heartbeat:Dummy"
params = { state = "@WORK@/dummy-@NODE@.state" }
interval_ms = 300
"#;
    let mut svc = Svc::new("socf", 3, group);
    let state = |svc: &Svc, i: usize| svc.marker(&format!("dummy-{}.state", svc.name(i)));
    svc.start_all();
    svc.wait_registered("dummy", Duration::from_secs(20), |n| n == 1);
    svc.check(state(&svc, 0).exists(), || "Dummy's state file of node1 missing: start did not run".to_string());
    svc.check(!state(&svc, 1).exists() && !state(&svc, 2).exists(), || "Dummy started elsewhere too".to_string());

    // Switchover: stop on node1, start on node2.
    svc.baton(0, &["switchover", "dummy", "2"]);
    svc.wait_registered("dummy", Duration::from_secs(15), |n| n == 2);
    svc.check(!state(&svc, 0).exists(), || "node1's state file is still there: Dummy stop did not run".to_string());
    svc.check(state(&svc, 1).exists(), || "node2's state file missing".to_string());

    // Monitor: the resource vanishes behind the cluster's back; Dummy's
    // monitor says "not running" and the group moves off node2.
    std::fs::remove_file(state(&svc, 1)).unwrap();
    let on = svc.wait_registered("dummy", Duration::from_secs(15), |n| n != 2);
    let owner = svc.index_of(on);
    svc.check(state(&svc, owner).exists(), || format!("{}'s state file missing after the move", svc.name(owner)));
    eprintln!("Dummy's monitor failure on node2 moved the group to {}", svc.name(owner));
}

// ------------------------------------------------------------------ S4.6 off-line mode, S4.5 watchdog

/// Waits until every running node shows `web` in mode `mode`, registered
/// on node id `on`.
fn wait_mode(svc: &Svc, mode: &str, on: u64, timeout: Duration) {
    let ok = wait_until(timeout, || {
        svc.running().iter().all(|&i| {
            let s = svc.service(i, "web");
            s["mode"] == mode && s["state"] == "Registered" && s["node"] == on
        })
    });
    svc.check(ok.is_some(), || format!("web not in mode {mode:?} on node {on} everywhere within {timeout:?}"));
}

fn httpd_runs(svc: &Svc, i: usize) -> bool {
    netns_cmdlines(&svc.ns(i)).iter().any(|p| p.contains("httpd"))
}

/// S4.6: `baton offline` stops the application where the group runs and
/// keeps its address there: a client is refused at once (no timeout), the
/// group does not move, the watchdog leaves the address alone; `baton
/// online` starts the application there again.
#[test]
fn offline_keeps_the_address_so_clients_are_refused_at_once_and_online_restarts_it() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("soff", 3, &web_group("free", "")).with_client();
    web_on_node1(&mut svc);
    let client = svc.client();
    // Asked on node2: the mode is cluster-wide (the decider carries it out).
    svc.baton(1, &["offline", "web"]);
    wait_mode(&svc, "offline", 1, Duration::from_secs(10));
    let stopped = wait_until(Duration::from_secs(10), || !httpd_runs(&svc, 0));
    svc.check(stopped.is_some(), || "httpd still runs on node1 in off-line mode".to_string());
    for i in 0..3 {
        let s = svc.service(i, "web");
        svc.check(s["offline_on"] == serde_json::json!([1]) && s["offline_cause"] == "operator", || format!("{} shows {s}", svc.name(i)));
    }
    let table = svc.baton(2, &["status"]);
    svc.check(table.lines().any(|l| l.starts_with("web ") && l.contains("offline")), || format!("status table:\n{table}"));
    // The address stays on node1, nowhere else, for longer than a watchdog
    // watches (5 s): a failover or the watchdog would take it away.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(6) {
        svc.check(vip_on(&svc.ns(0)), || format!("{VIP} left node1 in off-line mode after {:?}", t0.elapsed()));
        for i in 1..3 {
            svc.check(!vip_on(&svc.ns(i)), || format!("{VIP} is on {} in off-line mode", svc.name(i)));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let wd = svc.c.wait_event(0, Duration::from_secs(5), |e| e["event"] == "watchdog" && e["keep_addresses"] == true);
    svc.check(wd.as_ref().is_some_and(|e| e["result"] == "clean" || e["result"] == "cleaned"), || {
        format!("no successful watchdog report for the off-line group on node1: {wd:?}")
    });
    svc.check(wd.as_ref().is_some_and(|e| e["addresses_removed"] == serde_json::json!([])), || format!("the watchdog removed an address: {wd:?}"));
    // Clients: the address answers (ARP) and the kernel refuses the
    // connection at once: no SYN timeout, no retry to wait for.
    for _ in 0..5 {
        let t = Instant::now();
        let r = get_page(&client);
        let took = t.elapsed();
        svc.check(matches!(&r, Err(e) if e.contains("refused")), || format!("off-line: the client got {r:?}, not a refusal"));
        svc.check(took < Duration::from_millis(500), || format!("off-line: the refusal took {took:?}"));
    }
    svc.check(svc.registered_on(2, "web") == Some(1), || "web moved while off-line".to_string());

    // Normal mode: the application starts again on node1.
    svc.baton(2, &["online", "web"]);
    wait_mode(&svc, "normal", 1, Duration::from_secs(10));
    svc.expect_page("node1", Duration::from_secs(10), "after `baton online`");
    svc.check(vip_on(&svc.ns(0)) && !vip_on(&svc.ns(1)) && !vip_on(&svc.ns(2)), || format!("{VIP} should be on node1 only"));
}

/// S4.6: when the node holding an off-line group dies, a survivor takes the
/// address over, still off-line (clients are refused, nothing is started).
#[test]
fn an_offline_group_is_taken_over_offline_when_its_node_dies() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("sofo", 3, &web_group("costly", "")).with_client();
    web_on_node1(&mut svc);
    svc.baton(0, &["offline", "web"]);
    wait_mode(&svc, "offline", 1, Duration::from_secs(10));
    svc.crash(0);
    let on = svc.wait_registered("web", Duration::from_secs(15), |n| n != 1);
    let owner = svc.index_of(on);
    wait_mode(&svc, "offline", on, Duration::from_secs(10));
    let took = wait_until(Duration::from_secs(5), || vip_on(&svc.ns(owner)));
    svc.check(took.is_some(), || format!("{} did not acquire {VIP} off-line", svc.name(owner)));
    let other = 3 - owner; // the third node (indices 1 and 2 survive)
    svc.check(!vip_on(&svc.ns(other)), || format!("{VIP} is on {} too", svc.name(other)));
    for i in [owner, other] {
        svc.check(!httpd_runs(&svc, i), || format!("httpd was started on {} for an off-line group", svc.name(i)));
    }
    let client = svc.client();
    let mut last = Ok(String::new());
    let refused = wait_until(Duration::from_secs(5), || {
        last = get_page(&client);
        matches!(&last, Err(e) if e.contains("refused"))
    });
    svc.check(refused.is_some(), || format!("the client is not refused by the new holder: {last:?}"));
    svc.baton(owner, &["online", "web"]);
    svc.expect_page(&svc.name(owner), Duration::from_secs(10), "after `baton online`");
}

/// S4.5: after a halt, the watchdog process finds what the halt left: a
/// process of the application that escaped its process group (setsid) and
/// the group's address configured again on the old node. It kills the one,
/// removes the other and reports both; the same process on the new node is
/// not touched.
#[test]
fn the_watchdog_kills_a_leftover_process_and_removes_a_leftover_address_after_a_halt() {
    if !kernel_tests_possible() {
        return;
    }
    let group = web_group("costly", "").replace(
        "daemon = \"exec busybox httpd",
        "daemon = \"setsid sleep 601 & exec busybox httpd",
    );
    let mut svc = Svc::new("swd", 3, &group).with_client();
    web_on_node1(&mut svc);
    let leftover = |svc: &Svc, i: usize| netns_cmdlines(&svc.ns(i)).iter().any(|p| p == "sleep 601");
    svc.check(leftover(&svc, 0), || format!("no `sleep 601` on node1: {:?}", netns_cmdlines(&svc.ns(0))));
    svc.baton(0, &["switchover", "web", "2"]);
    svc.wait_registered("web", Duration::from_secs(15), |n| n == 2);
    // Something configures the address on node1 again (a stray tool, a
    // late script of the application) while node2 owns it.
    sh(&["ip", "-n", &svc.ns(0), "addr", "add", &format!("{VIP}/24"), "dev", IF]);
    let gone = wait_until(Duration::from_secs(4), || !vip_on(&svc.ns(0)) && !leftover(&svc, 0));
    svc.check(gone.is_some(), || {
        format!("node1 still has {VIP}: {} or `sleep 601`: {}", vip_on(&svc.ns(0)), leftover(&svc, 0))
    });
    let wd = svc.c.wait_event(0, Duration::from_secs(10), |e| e["event"] == "watchdog" && e["reason"] == "Switchover");
    let wd = wd.unwrap_or_else(|| svc.fail(&format!("no watchdog event on node1: {:?}", svc.c.events(0))));
    svc.check(wd["result"] == "cleaned", || format!("watchdog: {wd}"));
    svc.check(wd["addresses_removed"] == serde_json::json!([format!("{VIP}/24")]), || format!("watchdog: {wd}"));
    let killed: Vec<&str> = wd["killed"].as_array().into_iter().flatten().filter_map(|k| k["cmd"].as_str()).collect();
    svc.check(killed.contains(&"sleep 601"), || format!("watchdog killed {killed:?}"));
    // Node2's own instance is untouched (same group, other node).
    svc.check(leftover(&svc, 1) && httpd_runs(&svc, 1) && vip_on(&svc.ns(1)), || "the watchdog touched node2's instance".to_string());
    let alive = svc.c.agents[0].as_mut().is_some_and(|a| a.child.try_wait().unwrap().is_none());
    svc.check(alive, || "node1's agent ended".to_string());
    let ps = sh(&["ps", "-eo", "args"]);
    eprintln!("watchdog report: {wd}\n(watchdog processes now: {:?})", ps.lines().filter(|l| l.contains("baton watchdog")).collect::<Vec<_>>());
}

/// S4.5 + S0: a watchdog that cannot bring the group down on the old node
/// (a process of the group keeps coming back, e.g. restarted by a
/// supervisor behind the cluster's back) raises a critical failure: the
/// node leaves the cluster rather than run a resource that another node
/// now owns.
#[test]
fn a_watchdog_that_cannot_clean_up_makes_the_node_leave_the_cluster() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("swdf", 3, &web_group("costly", ""));
    svc.start_all();
    svc.wait_registered("web", Duration::from_secs(20), |n| n == 1);
    svc.baton(0, &["switchover", "web", "2"]);
    svc.wait_registered("web", Duration::from_secs(15), |n| n == 2);
    // A supervisor outside the group restarts a process of the group.
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "while :; do env BATON_GROUP=web sleep 602; sleep 0.05; done"]);
    let mut respawner = spawn_in_netns(&svc.ns(0), cmd, &svc.work.join("respawner.log"));
    let wd = svc.c.wait_event(0, Duration::from_secs(15), |e| e["event"] == "watchdog" && e["result"] == "critical");
    // The loop and its current child together (its own process group).
    unsafe { libc::killpg(respawner.id() as i32, libc::SIGKILL) };
    let _ = respawner.wait();
    let wd = wd.unwrap_or_else(|| svc.fail(&format!("no critical watchdog event on node1: {:?}", svc.c.events(0))));
    eprintln!("watchdog report: {wd}");
    let ended = wait_until(Duration::from_secs(15), || svc.c.agents[0].as_mut().is_some_and(|a| a.child.try_wait().unwrap().is_some()));
    svc.check(ended.is_some(), || "node1's agent did not end after the watchdog's critical failure".to_string());
    let log = svc.c.agent_log(0);
    svc.check(log.contains("local failure reported"), || "node1 did not report a local failure (distress)".to_string());
    // The others go on without node1; the service stays on node2.
    let gone = wait_until(Duration::from_secs(15), || {
        let m = svc.c.membership(1);
        m["nodes"].as_array().is_some_and(|ns| ns.iter().any(|n| n["id"] == 1 && n["state"] != "joined" && n["state"] != "leaving"))
            || m["nodes"].as_array().is_some_and(|ns| !ns.iter().any(|n| n["id"] == 1))
    });
    svc.check(gone.is_some(), || format!("node2 still counts node1 in: {}", svc.c.membership(1)));
    svc.check(svc.registered_on(1, "web") == Some(2), || "web left node2".to_string());
}

/// S4.5 races: the group comes back to node1 while node1's watchdog (from
/// the switchover away) still watches. The watchdog must leave the new run
/// alone: no process killed, no address removed, the client keeps being
/// served by node1; it reports `superseded`.
#[test]
fn a_watchdog_never_touches_the_group_when_it_runs_on_the_node_again() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("swdr", 3, &web_group("costly", "")).with_client();
    web_on_node1(&mut svc);
    let client = svc.client();
    let t0 = Instant::now();
    svc.baton(0, &["switchover", "web", "2"]);
    svc.wait_registered("web", Duration::from_secs(15), |n| n == 2);
    svc.baton(0, &["switchover", "web", "1"]);
    svc.wait_registered("web", Duration::from_secs(15), |n| n == 1);
    let back = t0.elapsed();
    svc.check(back < Duration::from_secs(4), || format!("the round trip took {back:?}: the watchdog window (5 s) is over"));
    svc.expect_page("node1", Duration::from_secs(5), "after the round trip");
    // Past the end of the first watchdog: node1 serves all along.
    while t0.elapsed() < Duration::from_secs(7) {
        let r = get_page(&client);
        svc.check(r.as_deref() == Ok("node1"), || format!("node1 stopped serving {:?} after the switchover back: {r:?}", t0.elapsed()));
        svc.check(vip_on(&svc.ns(0)), || format!("{VIP} left node1 after the switchover back"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let wd = svc.c.wait_event(0, Duration::from_secs(3), |e| e["event"] == "watchdog" && e["reason"] == "Switchover");
    let wd = wd.unwrap_or_else(|| svc.fail(&format!("no watchdog event on node1: {:?}", svc.c.events(0))));
    svc.check(wd["result"] == "superseded", || format!("node1's watchdog: {wd}"));
    svc.check(wd["killed"] == serde_json::json!([]) && wd["addresses_removed"] == serde_json::json!([]), || format!("node1's watchdog: {wd}"));
    eprintln!("round trip {back:?}; node1's watchdog: {wd}");
}

/// One GET of the VIP from the client namespace, from local port `port`
/// (SO_REUSEADDR): the serving node's name.
fn get_page_from_port(client: &str, port: u16) -> Result<String, String> {
    in_netns(client, move || -> Result<String, String> {
        use std::io::{Read, Write};
        use std::os::fd::FromRawFd;
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let s = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
        let mut local: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        local.sin_family = libc::AF_INET as u16;
        local.sin_port = port.to_be();
        let mut remote = local;
        remote.sin_port = 80u16.to_be();
        remote.sin_addr.s_addr = u32::from_ne_bytes(VIP_OCTETS);
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one as *const _ as *const libc::c_void, 4);
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv as *const _ as *const libc::c_void, std::mem::size_of::<libc::timeval>() as u32);
            if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
                return Err(format!("bind port {port}: {}", std::io::Error::last_os_error()));
            }
            if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
                return Err(format!("connect from port {port}: {}", std::io::Error::last_os_error()));
            }
        }
        let mut s = s;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n").map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(|e| format!("read from port {port}: {e}"))?;
        let text = String::from_utf8_lossy(&buf).to_string();
        match text.split_once("\r\n\r\n") {
            Some((head, body)) if head.contains(" 200 ") => Ok(body.trim().to_string()),
            _ => Err(format!("from port {port}: {text:?}")),
        }
    })
}

/// The overlap handover keeps steering for a while after the old node let
/// the address go, for clients that missed the announcement. Such a client
/// may reuse the local port of a connection the old node closed (so the old
/// node holds a time-wait socket of that 4-tuple): its new connection is the
/// new node's, and every segment of it must be handed over, not only the SYN.
#[test]
fn overlap_handover_steers_a_client_that_missed_the_announcement_even_on_a_reused_port() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("stw", 3, &web_group("costly", &overlap_keys())).with_client();
    web_on_node1(&mut svc);
    let client = svc.client();
    const PORT: u16 = 40123;
    let first = get_page_from_port(&client, PORT);
    svc.check(first.as_deref() == Ok("node1"), || format!("before the switchover, from port {PORT}: {first:?}"));
    // httpd closed first: node1 keeps the 4-tuple in time-wait.
    let tw = ns_sh(&svc.ns(0), &["cat", "/proc/net/tcp"]);
    let port_hex = format!(":{PORT:04X} ");
    svc.check(tw.lines().any(|l| l.contains(&port_hex) && l.split_whitespace().nth(3) == Some("06")), || format!("no time-wait socket for port {PORT} on node1:\n{tw}\nnode1: {}\nclient: {}", ns_sh(&svc.ns(0), &["ss", "-tan"]), ns_sh(&client, &["ss", "-tan"])));
    let node1_mac = mac(&svc.ns(0));

    svc.baton(0, &["switchover", "web", "2"]);
    svc.wait_registered("web", Duration::from_secs(15), |n| n == 2);
    // A client that missed the announcement: it still sends to node1.
    sh(&["ip", "-n", &client, "neigh", "replace", VIP, "lladdr", &node1_mac, "dev", "eth0", "nud", "permanent"]);
    let steered = |svc: &Svc| -> u64 {
        let st = svc.baton(0, &["status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&st).ok().and_then(|v| v["counters"]["handover_steered"].as_u64()).unwrap_or(0)
    };
    let before = steered(&svc);
    let reused = get_page_from_port(&client, PORT);
    let fresh = get_page_from_port(&client, PORT + 1);
    let after = steered(&svc);
    svc.check(!vip_on(&svc.ns(0)), || "node1 still has the address".to_string());
    svc.check(reused.as_deref() == Ok("node2"), || format!("through node1, from the reused port {PORT}: {reused:?}"));
    svc.check(fresh.as_deref() == Ok("node2"), || format!("through node1, from a fresh port: {fresh:?}"));
    svc.check(after >= before + 4, || format!("node1 handed over {} packets for two connections", after - before));
}


/// A stall of the whole machine longer than the silence bound (every agent
/// frozen at once, as a paused VM or an overloaded host does): each node
/// sees both peers silent and halts (no quorum), stopping the service and
/// releasing the address. Each agent then starts again as a new life by
/// itself (`membership.rejoin_ms`, 1 s): they form the cluster anew and the
/// service runs again, with the address never on two nodes and no operator.
#[test]
fn after_a_stall_of_every_node_the_cluster_forms_again_by_itself_and_the_service_returns() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("sstl", 3, &web_group("costly", "")).with_client();
    web_on_node1(&mut svc);
    let pids: Vec<i32> = (0..3).map(|i| svc.c.agents[i].as_ref().unwrap().pid()).collect();
    let lives = |svc: &Svc| -> Vec<u64> { (0..3).map(|i| svc.c.incarnation(i).expect("an incarnation")).collect() };
    let first = lives(&svc);
    let watcher = Watcher::start((0..3).map(|i| svc.ns(i)).collect());
    // Frozen for 250 ms: 2.5 times the silence bound (20 ms × 5).
    for p in &pids {
        unsafe { libc::kill(*p, libc::SIGSTOP) };
    }
    std::thread::sleep(Duration::from_millis(250));
    for p in &pids {
        unsafe { libc::kill(*p, libc::SIGCONT) };
    }
    for i in 0..3 {
        let again = wait_until(Duration::from_secs(10), || !svc.c.log_lines(i, &["starting again as a new life", "why=LostQuorum"]).is_empty());
        svc.check(again.is_some(), || format!("{} did not halt for lost quorum and start again", svc.name(i)));
    }
    // The new lives: same processes, new incarnations, one cluster.
    let up = wait_until(Duration::from_secs(10), || (0..3).all(|i| svc.c.control_socket(i).exists()));
    svc.check(up.is_some(), || "not every agent runs a new life".to_string());
    let second = lives(&svc);
    for i in 0..3 {
        let alive = svc.c.agents[i].as_mut().is_some_and(|a| a.child.try_wait().unwrap().is_none());
        svc.check(alive && svc.c.agents[i].as_ref().unwrap().pid() == pids[i], || format!("{}'s agent process exited", svc.name(i)));
        svc.check(first[i] != second[i], || format!("{} kept its incarnation {}", svc.name(i), first[i]));
    }
    svc.c.wait_all_joined(Duration::from_secs(20));
    svc.wait_registered("web", Duration::from_secs(20), |n| n == 1);
    svc.expect_page("node1", Duration::from_secs(10), "again");
    let samples = watcher.finish();
    // The halt released the address (node1 alone ever held it; a sample
    // without it shows the release).
    let holders = check_never_on_two(&svc, &samples, &[None, None, None]);
    svc.check(holders == vec![0], || format!("address holders over the stall: {holders:?}"));
    let released = samples.iter().any(|s| s.0 == 0 && !s.3);
    svc.check(released, || "node1 never released the address while its clustering was halted".to_string());
    let httpds = netns_cmdlines(&svc.ns(0)).iter().filter(|c| c.contains("httpd")).count();
    svc.check(httpds == 1, || format!("{httpds} httpd processes on node1 after the new start"));
}
