//! `cargo xtask bench failover`: the client-visible outage of a resource
//! group (a floating IPv4 address and `busybox httpd` on it) when its node
//! crashes, when its node's link is cut, and the failed requests of planned
//! switchovers; baton beside keepalived (VRRPv3, unicast peers, advert
//! interval = baton's heartbeat interval, notify scripts starting the same
//! httpd) on the same topology: three nodes and a client in network
//! namespaces on one bridge.
//!
//! The client requests `http://VIP/` every 5 ms over a new TCP connection
//! (100 ms timeout, a pool of threads so a hanging request does not delay the
//! next), and the page names the node that served it. The outage of an event
//! is measured from the start of the first failed request to the start of the
//! first successful one after the last failure (5 ms granularity).
//!
//! Also shared with `cargo xtask demo`: the topology, the group, the
//! keepalived rig, clean-up of earlier runs and Ctrl-C handling.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::bench::{percentile, round1};
use anyhow::{bail, Context, Result};
use baton_tests::{monotonic_ns, netns_pids, outage, spawn_in_netns, wait_until, ClientHost, Cluster, Prober, Sample};

/// The floating address of the `web` group (on the interconnect, link 0).
pub const VIP: &str = "10.77.0.100";
pub const VIP_CIDR: &str = "10.77.0.100/24";
/// Client request period and per-request timeout.
pub const PERIOD: Duration = Duration::from_millis(5);
pub const TIMEOUT: Duration = Duration::from_millis(100);
/// Consecutive successful answers from one node that count as "settled".
const STABLE: usize = 20;

/// Options of `cargo xtask bench failover`.
#[derive(Debug, Clone)]
pub struct FailoverOpts {
    /// Crashes, link cuts and switchovers, each.
    pub crashes: u32,
    /// baton's heartbeat interval = keepalived's advert interval.
    pub interval_ms: u64,
    pub misses: u32,
}

// ---------------------------------------------------------------------------
// Ctrl-C

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C (and SIGTERM) set a flag that the loops check; the error that
/// follows unwinds through the drops that remove everything.
pub fn install_sigint() {
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

pub fn pause(ms: u64) -> Result<()> {
    for _ in 0..ms / 10 {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    check_interrupt()
}

/// `wait_until` that gives up on Ctrl-C.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Result<bool> {
    let r = wait_until(timeout, || interrupted() || f());
    check_interrupt()?;
    Ok(r.is_some())
}

// ---------------------------------------------------------------------------
// Clean-up

/// Kills (SIGKILL) every process left in the given namespaces when dropped,
/// even after the namespaces' names were deleted (they are found by inode).
/// Declare it before the `Cluster` so it runs after the cluster's drop.
pub struct Reaper {
    inodes: Vec<u64>,
}

impl Reaper {
    pub fn new() -> Reaper {
        Reaper { inodes: Vec::new() }
    }
    pub fn watch(&mut self, ns: &str) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata(Path::new("/run/netns").join(ns)) {
            self.inodes.push(m.ino());
        }
    }
    pub fn watch_cluster(&mut self, c: &Cluster) {
        for h in &c.hosts {
            self.watch(&h.ns.name);
        }
    }
    pub fn reap(&self) -> usize {
        let me = std::process::id() as i32;
        let mut n = 0;
        for pid in all_pids() {
            if pid == me {
                continue;
            }
            let Ok(l) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else { continue };
            let l = l.to_string_lossy().to_string();
            let ino = l.trim_start_matches("net:[").trim_end_matches(']').parse::<u64>().unwrap_or(0);
            if self.inodes.contains(&ino) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                n += 1;
            }
        }
        n
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.reap();
    }
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Removes what an earlier run with one of `tags` (killed hard) left: its
/// processes (agents, keepalived, httpd: recognised by the run's directory
/// `<test root>/baton-<tag>...` in their command line, see
/// `baton_tests::test_root`), namespaces and pinned maps.
pub fn remove_leftovers(tags: &[&str]) {
    let me = std::process::id() as i32;
    let tmp = baton_tests::test_root();
    let dirs: Vec<String> = tags.iter().map(|t| tmp.join(format!("baton-{t}")).display().to_string()).collect();
    let mut killed = 0;
    for pid in all_pids() {
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if dirs.iter().any(|d| cmd.contains(d.as_str())) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed += 1;
        }
    }
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if tags.iter().any(|t| name.starts_with(t) && name[t.len()..].starts_with(|c: char| c.is_ascii_digit())) {
                for pid in netns_pids(name) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    killed += 1;
                }
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/bpf/baton") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if tags.iter().any(|t| n.starts_with(&format!("t{t}"))) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if killed > 0 {
        eprintln!("  killed {killed} stray process(es) of an earlier run");
    }
}

// ---------------------------------------------------------------------------
// Topology, group and client

/// Writes `<dir>/www/<netns>/index.html` naming each node; returns `<dir>/www`.
pub fn write_www(c: &Cluster) -> Result<PathBuf> {
    let www = c.dir.join("www");
    for h in &c.hosts {
        let d = www.join(&h.ns.name);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("index.html"), format!("{}\n", h.name))?;
    }
    Ok(www)
}

/// The `web` group: the VIP on ic0, busybox httpd as its daemon (serving the
/// directory of the namespace it runs in, so the page names the node),
/// preferred node 1, nodes 1, 2, 3, transfer cost free, and the zero-loss
/// handover for planned moves (busybox httpd is stateless, so two instances
/// for a moment are fine), with an HTTP monitor that says when a new
/// instance answers.
pub fn group_toml(www: &Path) -> String {
    format!(
        "[[group]]\nname = \"web\"\naddresses = [\"{VIP_CIDR}\"]\ninterface = \"ic0\"\npreferred = 1\nnodes = [1, 2, 3]\n\
         transfer_cost = \"free\"\nhandover = \"overlap\"\ndrain_timeout_ms = 1000\n\n\
         [[group.monitor]]\nkind = \"command\"\nmonitor = \"busybox wget -q -O /dev/null http://{VIP}/\"\ninterval_ms = 1000\n\n\
         [group.application]\nkind = \"command\"\n\
         daemon = \"exec busybox httpd -f -p {VIP}:80 -h {}/$(ip netns identify)\"\nstop_timeout_ms = 2000\n",
        www.display()
    )
}

/// The `web` group with a hot standby (`standby = "hot"`, stop-start
/// handover for planned moves: hot standby and `overlap` exclude each
/// other): the standby node runs httpd bound to the VIP before it has it.
pub fn hot_group_toml(www: &Path) -> String {
    group_toml(www).replace("handover = \"overlap\"\ndrain_timeout_ms = 1000\n", "standby = \"hot\"\n")
}

pub fn vip_addr() -> SocketAddr {
    format!("{VIP}:80").parse().unwrap()
}

/// Name of the node that answered the last successful request.
pub fn answering(p: &Prober) -> Option<String> {
    p.samples().iter().rev().find_map(|s| s.result.as_ref().ok().cloned())
}

/// Index of host "nodeN" (N-1).
pub fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("node")?.parse::<usize>().ok()?.checked_sub(1)
}

/// Waits until `n` consecutive requests after `t` were answered by `body`
/// (any node but `not` when `body` is None); the start of the first of them.
pub fn wait_served(p: &Prober, t: u64, body: Option<&str>, not: Option<&str>, timeout: Duration) -> Result<Option<u64>> {
    let mut first = None;
    wait_for(timeout, || {
        let v = p.since(t);
        if v.len() < STABLE {
            return false;
        }
        let tail = &v[v.len() - STABLE..];
        let b0 = match &tail[0].result {
            Ok(b) => b.clone(),
            Err(_) => return false,
        };
        if body.is_some_and(|x| x != b0) || not.is_some_and(|x| x == b0) {
            return false;
        }
        if tail.iter().all(|s| s.result.as_ref().is_ok_and(|b| *b == b0)) {
            first = Some(tail[0].start_ns);
            true
        } else {
            false
        }
    })?;
    Ok(first)
}

/// Samples that started in [from, to]. `to` is usually where
/// [`wait_served`] saw service again (the start of the first of its steady
/// successes): it belongs to the window, so that the outage ends at the
/// first success after the last failure, as `baton_tests::outage` defines
/// it. (With `[from, to)` a failure that timed out had no success after it
/// in the window, and the outage ran to that request's end: its whole
/// 100 ms timeout too. About one crash in three measured 140-150 ms instead
/// of 45-55, for keepalived as for baton.)
pub fn window(p: &Prober, from: u64, to: u64) -> Vec<Sample> {
    p.since(from).into_iter().filter(|s| s.start_ns <= to).collect()
}

/// Outage (ms) and failed requests in a window; 0 when nothing failed.
pub fn measure(v: &[Sample]) -> (f64, usize) {
    outage(v).map(|(d, n)| (d.as_secs_f64() * 1e3, n)).unwrap_or((0.0, 0))
}

/// `baton ARGS --config <node i>`: stdout, or an error with stderr.
pub fn baton(c: &Cluster, i: usize, args: &[&str]) -> Result<String> {
    let out = Command::new(baton_tests::baton_bin())
        .args(args)
        .arg("--config")
        .arg(c.node_dir(i).join("baton.toml"))
        .output()
        .context("running baton")?;
    if !out.status.success() {
        bail!("`baton {}` failed ({}): {}{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The `web` entry of `baton status --json` of node i (Null if absent).
pub fn web_status(c: &Cluster, i: usize) -> serde_json::Value {
    baton(c, i, &["status", "--json"])
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|mut v| serde_json::from_value::<Vec<baton_tests::state::ServiceLine>>(v["services"].take()).ok())
        .and_then(|l| l.into_iter().find(|s| s.name == "web"))
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A baton cluster of three with the `web` group and a probing client. Fields
/// drop in order: the prober, the client, the cluster (agents get SIGTERM:
/// a graceful leave), then whatever is still running in the namespaces.
#[allow(dead_code)] // `client` and `reaper` are held for their drops
pub struct BatonRig {
    pub prober: Prober,
    pub client: ClientHost,
    pub c: Cluster,
    pub reaper: Reaper,
}

impl BatonRig {
    pub fn new(tag: &str, interval_ms: u64, misses: u32) -> Result<BatonRig> {
        let mut reaper = Reaper::new();
        let mut c = Cluster::new(tag, 3, 1, interval_ms as u32, misses);
        reaper.watch_cluster(&c);
        let www = write_www(&c)?;
        c.extra_config = group_toml(&www);
        let client = c.add_client(0);
        reaper.watch(&client.ns.name);
        let prober = Prober::start(&client.ns.name, vip_addr(), PERIOD, TIMEOUT);
        Ok(BatonRig { prober, client, c, reaper })
    }

    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..3 {
            check_interrupt()?;
            self.c.start(i);
        }
        self.c.wait_all_joined(Duration::from_secs(20));
        Ok(())
    }

    /// Crash node i: SIGKILL of its agent and httpd; the reboot forgets its
    /// addresses (the VIP is removed from its interface at once, as a
    /// crashed machine stops answering ARP for it).
    pub fn crash(&mut self, i: usize) -> u64 {
        let t = self.c.crash(i);
        self.c.flush_addr(i, VIP_CIDR, "ic0");
        t
    }
}

// ---------------------------------------------------------------------------
// keepalived

/// Starts keepalived `i` of a bench in namespace `ns`, in the foreground,
/// VRRP only, logging to the console: `<dir>/k<i>.conf`, its log in
/// `<dir>/k<i>.log`. A SIGKILLed keepalived leaves its pid files and
/// refuses to start over them: they are removed first.
pub fn spawn_keepalived(dir: &Path, i: usize, ns: &str) -> std::process::Child {
    let _ = std::fs::remove_file(dir.join(format!("k{i}.pid")));
    let _ = std::fs::remove_file(dir.join(format!("vrrp{i}.pid")));
    let mut cmd = Command::new("keepalived");
    cmd.args(["-n", "-l", "-D", "-P", "-f"])
        .arg(dir.join(format!("k{i}.conf")))
        .arg("-p")
        .arg(dir.join(format!("k{i}.pid")))
        .arg("-r")
        .arg(dir.join(format!("vrrp{i}.pid")));
    spawn_in_netns(ns, cmd, &dir.join(format!("k{i}.log")))
}

/// keepalived on every host of `c`: VRRPv3, unicast peers on ic0, advert
/// interval = baton's heartbeat interval, priorities 150/100/50 (node1
/// preferred, preemption on, its default), the VIP, and notify scripts that
/// start busybox httpd on MASTER and stop it on BACKUP/FAULT/stop. The
/// priority of each node can be lowered at run time through a `track_file`.
pub struct Keepalived3 {
    children: Vec<Option<Child>>,
    pub dir: PathBuf,
    ns: Vec<String>,
}

impl Keepalived3 {
    pub fn setup(c: &Cluster, interval_ms: u64, www: &Path) -> Result<Keepalived3> {
        use std::os::unix::fs::PermissionsExt;
        let dir = c.dir.join("keepalived");
        std::fs::create_dir_all(&dir)?;
        let n = c.hosts.len();
        for i in 0..n {
            let h = &c.hosts[i];
            let pidf = dir.join(format!("httpd{i}.pid"));
            let start = format!(
                "#!/bin/sh\n[ -f {p} ] && kill -0 $(cat {p}) 2>/dev/null && exit 0\n\
                 setsid busybox httpd -f -p {VIP}:80 -h {www}/{ns} </dev/null >/dev/null 2>&1 &\necho $! > {p}\n",
                p = pidf.display(),
                www = www.display(),
                ns = h.ns.name
            );
            let stop = format!("#!/bin/sh\n[ -f {p} ] && kill $(cat {p}) 2>/dev/null\nrm -f {p}\nexit 0\n", p = pidf.display());
            for (name, text) in [(format!("start{i}.sh"), start), (format!("stop{i}.sh"), stop)] {
                let p = dir.join(name);
                std::fs::write(&p, text)?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
            }
            let peers: String = (0..n).filter(|&j| j != i).map(|j| format!("    {}\n", c.hosts[j].addrs[0])).collect();
            let conf = format!(
                "global_defs {{\n  router_id kfo{i}\n  vrrp_version 3\n  script_user root\n}}\n\
                 track_file prio{i} {{\n  file \"{tf}\"\n  weight 1\n  init_file 0 overwrite\n}}\n\
                 vrrp_instance VI_1 {{\n  state BACKUP\n  interface ic0\n  virtual_router_id 52\n  priority {prio}\n  \
                 advert_int {adv}\n  unicast_src_ip {src}\n  unicast_peer {{\n{peers}  }}\n  \
                 virtual_ipaddress {{\n    {VIP_CIDR} dev ic0\n  }}\n  track_file {{\n    prio{i}\n  }}\n  \
                 notify_master \"{d}/start{i}.sh\"\n  notify_backup \"{d}/stop{i}.sh\"\n  notify_fault \"{d}/stop{i}.sh\"\n  \
                 notify_stop \"{d}/stop{i}.sh\"\n}}\n",
                tf = dir.join(format!("prio{i}")).display(),
                prio = 150 - 50 * i as i32,
                adv = interval_ms as f64 / 1000.0,
                src = h.addrs[0],
                d = dir.display(),
            );
            std::fs::write(dir.join(format!("k{i}.conf")), conf)?;
        }
        Ok(Keepalived3 { children: (0..n).map(|_| None).collect(), dir, ns: c.hosts.iter().map(|h| h.ns.name.clone()).collect() })
    }

    pub fn start(&mut self, i: usize) {
        let _ = std::fs::remove_file(self.dir.join(format!("httpd{i}.pid")));
        self.children[i] = Some(spawn_keepalived(&self.dir, i, &self.ns[i]));
    }

    /// SIGKILL of everything in host i's namespace (keepalived, its VRRP
    /// child, httpd); returns the monotonic ns just before.
    pub fn crash(&mut self, c: &Cluster, i: usize) -> u64 {
        let pids = netns_pids(&self.ns[i]);
        let t = monotonic_ns();
        for p in &pids {
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        if let Some(mut ch) = self.children[i].take() {
            let _ = ch.wait();
        }
        c.flush_addr(i, VIP_CIDR, "ic0");
        t
    }

    /// Adds `delta` to host i's priority (through its track file).
    pub fn set_priority_delta(&self, i: usize, delta: i32) -> Result<()> {
        let p = self.dir.join(format!("prio{i}"));
        let tmp = self.dir.join(format!("prio{i}.tmp"));
        std::fs::write(&tmp, format!("{delta}\n"))?;
        std::fs::rename(&tmp, &p)?;
        Ok(())
    }
}

impl Drop for Keepalived3 {
    fn drop(&mut self) {
        for (i, ch) in self.children.iter_mut().enumerate() {
            if let Some(mut ch) = ch.take() {
                unsafe { libc::kill(-(ch.id() as i32), libc::SIGKILL) };
                let _ = ch.wait();
            }
            for p in netns_pids(&self.ns[i]) {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The benchmark


struct Lcg(u64);
impl Lcg {
    fn next_below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

#[derive(Default)]
struct Results {
    crash: Vec<f64>,
    crash_failed: Vec<usize>,
    /// The agent alone SIGKILLed (node and httpd alive; its guard releases).
    agentkill: Vec<f64>,
    agentkill_failed: Vec<usize>,
    /// Per agent kill: the longest time the VIP was on two live nodes (ms).
    agentkill_dual: Vec<f64>,
    failback: Vec<f64>,
    linkcut: Vec<f64>,
    switchover_failed: Vec<usize>,
    switchover_ms: Vec<f64>,
    /// Per switchover: from the command (or the priority change) until the
    /// old node's httpd is gone (the end of its drain), ms.
    switchover_complete_ms: Vec<f64>,
    /// Hot standby: crash outages at the bench's setting and at 2 ms × 3.
    hot: Vec<f64>,
    hot_2ms: Vec<f64>,
    /// Hot crashes whose survivor served from a new httpd (not the standby's).
    hot_not_hot: usize,
    /// keepalived at its fastest advert interval (10 ms): crash outages.
    fastest: Vec<f64>,
    /// Events that never failed over within their timeout: each is also in
    /// its kind's outage figures as the timeout (10 s), never left out.
    events_failed: usize,
    /// How requests failed, per kind of event ("switchover: connect: refused", ...), with counts.
    errors: std::collections::BTreeMap<String, usize>,
    notes: Vec<String>,
}

/// How long a failover may take before the event counts as failed (and
/// as this long in the percentiles).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);

impl Results {
    /// An event that never failed over: its timeout goes into `v` (so the
    /// percentiles include it) and it is counted in `events_failed`.
    fn record_never(&mut self, kind: &str, which: fn(&mut Results) -> &mut Vec<f64>) {
        which(self).push(FAILOVER_TIMEOUT.as_secs_f64() * 1e3);
        self.events_failed += 1;
        eprint!("\r  {kind}: no failover within {FAILOVER_TIMEOUT:?} (counted as {FAILOVER_TIMEOUT:?})   ");
    }
    /// The outage and failed requests of one crash window, recorded.
    fn record_crash(&mut self, v: &[Sample]) -> (f64, usize) {
        let (ms, failed) = measure(v);
        self.count_errors("crash", v);
        self.crash.push(ms);
        self.crash_failed.push(failed);
        (ms, failed)
    }

    fn record_agentkill(&mut self, v: &[Sample], dual_ms: f64) -> (f64, usize) {
        let (ms, failed) = measure(v);
        self.count_errors("agent kill", v);
        self.agentkill.push(ms);
        self.agentkill_failed.push(failed);
        self.agentkill_dual.push(dual_ms);
        (ms, failed)
    }

    fn record_linkcut(&mut self, v: &[Sample]) -> (f64, usize) {
        let (ms, failed) = measure(v);
        self.count_errors("link cut", v);
        self.linkcut.push(ms);
        (ms, failed)
    }

    fn record_switchover(&mut self, v: &[Sample]) -> (f64, usize) {
        let (ms, failed) = measure(v);
        self.count_errors("switchover", v);
        self.switchover_failed.push(failed);
        self.switchover_ms.push(ms);
        (ms, failed)
    }

    fn count_errors(&mut self, what: &str, v: &[Sample]) {
        for s in v {
            if let Err(e) = &s.result {
                *self.errors.entry(format!("{what}: {e}")).or_default() += 1;
            }
        }
    }
}

/// A fresh baton rig, serving from node1.
fn fresh_rig(opts: &FailoverOpts) -> Result<BatonRig> {
    let mut rig = BatonRig::new("bfo", opts.interval_ms, opts.misses)?;
    rig.start_all()?;
    let t = monotonic_ns();
    wait_served(&rig.prober, t, Some("node1"), None, Duration::from_secs(30))?
        .with_context(|| format!("the web group never answered from node1; status: {}", web_status(&rig.c, 0)))?;
    Ok(rig)
}

/// Which agents still run, and why the others halted.
fn agents_state(rig: &mut BatonRig) -> String {
    (0..3)
        .map(|i| {
            let alive = rig.c.agents[i].as_mut().is_some_and(|a| a.child.try_wait().ok().flatten().is_none());
            let halted = rig.c.log_lines(i, &["clustering halted"]).first().map(|l| l.split("why=").nth(1).unwrap_or("").to_string());
            let st = match (alive, halted) {
                (true, Some(w)) => format!("halted ({w}), running again as a new life"),
                (true, None) => "running".to_string(),
                (false, Some(w)) => format!("halted ({w})"),
                (false, None) => "exited".to_string(),
            };
            format!("{} {st}", rig.c.hosts[i].name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// After a failed step: note it (with the agents' states) and start over
/// with a fresh cluster.
fn rebuild(rig: &mut BatonRig, opts: &FailoverOpts, r: &mut Results, what: String, e: anyhow::Error) -> Result<()> {
    check_interrupt()?;
    let st = agents_state(rig);
    r.notes.push(format!("{what}: {e:#} [agents: {st}]; the cluster was rebuilt"));
    eprintln!("\n  {what} failed ({e:#}); agents: {st}; rebuilding the cluster");
    *rig = fresh_rig(opts)?;
    Ok(())
}

fn baton_bench(opts: &FailoverOpts, rng: &mut Lcg) -> Result<Results> {
    let mut r = Results::default();
    let mut rig = fresh_rig(opts)?;

    // Crashes of the active node, then its restart (the group moves back).
    let switchovers_only = std::env::var("BENCH_FAILOVER_ONLY").is_ok_and(|v| v == "baton-switchover");
    for k in 0..if switchovers_only { 0 } else { opts.crashes } {
        let res = (|| -> Result<()> {
            pause(150 + rng.next_below(opts.interval_ms))?;
            let active = answering(&rig.prober).and_then(|n| node_index(&n)).context("nobody answers")?;
            let t = rig.crash(active);
            let name = rig.c.hosts[active].name.clone();
            let Some(settled) = wait_served(&rig.prober, t, None, Some(&name), FAILOVER_TIMEOUT)? else {
                r.record_never("baton crash", |r| &mut r.crash);
                anyhow::bail!("no other node served after {name} crashed");
            };
            pause(TIMEOUT.as_millis() as u64)?;
            let v = window(&rig.prober, t - TIMEOUT.as_nanos() as u64, settled);
            let (ms, failed) = r.record_crash(&v);
            eprint!("\r  baton crash {}/{}: outage {ms:.1} ms ({failed} failed)   ", k + 1, opts.crashes);
            let t2 = monotonic_ns();
            rig.c.start(active);
            let back = wait_served(&rig.prober, t2, Some(&name), None, Duration::from_secs(30))?
                .with_context(|| format!("the group did not move back to {name}"))?;
            r.failback.push(measure(&window(&rig.prober, t2, back)).0);
            rig.c.wait_all_joined(Duration::from_secs(20));
            Ok(())
        })();
        if let Err(e) = res {
            rebuild(&mut rig, opts, &mut r, format!("crash {k}"), e)?;
        }
    }
    eprintln!();

    // Agent crashes: SIGKILL of the active node's agent alone (the node and
    // its httpd stay up; its guard releases the address and stops httpd),
    // with a watcher sampling, about every millisecond, which nodes hold
    // the VIP. Then the agent is started again (the group moves back).
    let watcher = (!switchovers_only).then(|| baton_tests::svc::Watcher::start(rig.c.hosts.iter().map(|h| h.ns.name.clone()).collect()));
    for k in 0..if switchovers_only { 0 } else { opts.crashes } {
        let res = (|| -> Result<()> {
            pause(150 + rng.next_below(opts.interval_ms))?;
            let active = answering(&rig.prober).and_then(|n| node_index(&n)).context("nobody answers")?;
            let at = std::time::Instant::now();
            let t = rig.c.kill_agent(active);
            let name = rig.c.hosts[active].name.clone();
            let Some(settled) = wait_served(&rig.prober, t, None, Some(&name), FAILOVER_TIMEOUT)? else {
                r.record_never("baton agent kill", |r| &mut r.agentkill);
                anyhow::bail!("no other node served after {name}'s agent was killed");
            };
            pause(TIMEOUT.as_millis() as u64)?;
            let v = window(&rig.prober, t - TIMEOUT.as_nanos() as u64, settled);
            // Dual ownership from just before the kill to well after the
            // survivor serves (the move back later is a planned handover).
            let upto = at + Duration::from_nanos(settled.saturating_sub(t)) + Duration::from_millis(200);
            let samples: Vec<baton_tests::svc::AddrSample> = watcher
                .as_ref()
                .map(|w| w.samples().into_iter().filter(|s| s.1 + Duration::from_millis(50) >= at && s.2 <= upto).collect())
                .unwrap_or_default();
            let (dual, _) = baton_tests::svc::max_dual_ownership(&samples, &[None, None, None]);
            let (ms, failed) = r.record_agentkill(&v, dual.as_secs_f64() * 1e3);
            eprint!("\r  baton agent kill {}/{}: outage {ms:.1} ms ({failed} failed), VIP on two nodes {:.1} ms   ", k + 1, opts.crashes, dual.as_secs_f64() * 1e3);
            let t2 = monotonic_ns();
            rig.c.start(active);
            wait_served(&rig.prober, t2, Some(&name), None, Duration::from_secs(30))?
                .with_context(|| format!("the group did not move back to {name}"))?;
            rig.c.wait_all_joined(Duration::from_secs(20));
            Ok(())
        })();
        if let Err(e) = res {
            rebuild(&mut rig, opts, &mut r, format!("agent kill {k}"), e)?;
        }
    }
    drop(watcher);
    eprintln!();

    // Switchovers: node1 → node2 → node1 ...
    for k in 0..opts.crashes {
        let res = (|| -> Result<()> {
            pause(200)?;
            let cur = answering(&rig.prober).context("nobody answers")?;
            let ci = node_index(&cur).context("bad page")?;
            let target = if ci == 0 { 1 } else { 0 };
            let tname = rig.c.hosts[target].name.clone();
            let t = monotonic_ns();
            baton(&rig.c, ci, &["switchover", "web", &rig.c.hosts[target].id.to_string()])?;
            let settled = match wait_served(&rig.prober, t, Some(&tname), None, Duration::from_secs(5))? {
                Some(s) => s,
                None => {
                    let now = answering(&rig.prober).unwrap_or_default();
                    r.notes.push(format!("switchover {k} to {tname}: it did not stay there within 5 s ({now} answers)"));
                    wait_served(&rig.prober, t, None, None, Duration::from_secs(10))?.context("nobody serves")?;
                    monotonic_ns()
                }
            };
            // The whole drain: until the old node's httpd is gone.
            let drained = wait_gone(&rig.c.hosts[ci].ns.name, t, Duration::from_secs(10))?;
            let end = settled.max(drained.unwrap_or(settled)) + PERIOD.as_nanos() as u64;
            // Let requests in flight at the moment complete, then count.
            pause(TIMEOUT.as_millis() as u64 + 20)?;
            let v = window(&rig.prober, t, end);
            let (ms, failed) = r.record_switchover(&v);
            record_complete(&mut r, &format!("baton switchover {k}"), t, drained);
            eprint!("\r  baton switchover {}/{}: {failed} failed requests ({ms:.1} ms)   ", k + 1, opts.crashes);
            Ok(())
        })();
        if let Err(e) = res {
            rebuild(&mut rig, opts, &mut r, format!("switchover {k}"), e)?;
        }
    }
    eprintln!();
    Ok(r)
}

/// Link cuts of the active node (its only link: isolated, no quorum), one
/// after the other on one long-lived cluster: after each cut the link is
/// healed, the isolated node's agent (halted: no quorum) is restarted and
/// rejoins, and the next cut cuts whichever node serves then (node 1 again:
/// the group falls back to it). (Until the tracker kept a restarted peer's
/// up links, a cut after a restart that followed a cut went unreported, and
/// each cut had a fresh cluster; `tests/tests/linkcuts.rs` now cuts one node
/// three times in a row.) A cut that fails over nowhere within 10 s counts
/// as 10 s and is noted; a cluster that does not come back together after a
/// cut is noted and rebuilt.
fn baton_linkcuts(opts: &FailoverOpts, rng: &mut Lcg, r: &mut Results) -> Result<()> {
    let mut rig = fresh_rig(opts)?;
    for k in 0..opts.crashes {
        let res = (|| -> Result<()> {
            pause(300 + rng.next_below(opts.interval_ms))?;
            let name = answering(&rig.prober).context("nobody answers")?;
            let active = node_index(&name).context("bad page")?;
            let halts_before = rig.c.log_lines(active, &["clustering halted"]).len();
            let t = rig.c.cut_link(active, 0);
            let Some(settled) = wait_served(&rig.prober, t, None, Some(&name), Duration::from_secs(10))? else {
                let st: Vec<String> = (0..3)
                    .filter(|i| *i != active)
                    .map(|i| {
                        let alive = rig.c.agents[i].as_mut().is_some_and(|a| a.child.try_wait().ok().flatten().is_none());
                        let halted = rig.c.log_lines(i, &["clustering halted"]).first().map(|l| l.split("why=").nth(1).unwrap_or("").to_string());
                        format!("{}: agent {}", rig.c.hosts[i].name, match (alive, halted) {
                            (true, Some(w)) => format!("halted ({w}), running again as a new life"),
                            (true, None) => "running".to_string(),
                            (false, Some(w)) => format!("halted ({w})"),
                            (false, None) => "exited".to_string(),
                        })
                    })
                    .collect();
                r.notes.push(format!("link cut {k} of {name}: no other node served within 10 s ({})", st.join(", ")));
                r.record_never("baton link cut", |r| &mut r.linkcut);
                anyhow::bail!("no failover");
            };
            pause(TIMEOUT.as_millis() as u64)?;
            let v = window(&rig.prober, t - TIMEOUT.as_nanos() as u64, settled);
            let (ms, failed) = r.record_linkcut(&v);
            eprint!("\r  baton link cut {}/{} ({name}): outage {ms:.1} ms ({failed} failed)   ", k + 1, opts.crashes);
            // The isolated agent should halt (no quorum), releasing the
            // address and stopping httpd; its halt's watchdog process (S4.5)
            // checks for 5 s, then exits. (The new life's guard stays.)
            let halted = wait_for(Duration::from_secs(5), || rig.c.log_lines(active, &["clustering halted"]).len() > halts_before)?;
            let still_vip = rig.c.has_addr(active, VIP);
            let agent_pid = rig.c.agents[active].as_ref().map(|a| a.pid());
            let others_left = || {
                let guard = rig.c.guard_pid(active);
                rig.c.host_pids(active).into_iter().filter(|p| Some(*p) != agent_pid && Some(*p) != guard).count()
            };
            wait_for(Duration::from_secs(8), || others_left() == 0)?;
            let others = others_left();
            if !halted || still_vip || others > 0 {
                r.notes.push(format!(
                    "link cut {k}: isolated {name}: agent {}, VIP {}, {others} other process(es) left",
                    if halted { "halted" } else { "did not halt within 5 s of the cut" },
                    if still_vip { "still configured" } else { "released" },
                ));
            }
            // Heal, and restart the isolated node's agent (its own new life
            // would come only after `rejoin_ms` doubled for every halt in a
            // row: tens of seconds after a few cuts); everyone in one view.
            rig.c.heal_link(active, 0);
            rig.c.stop(active);
            rig.c.start(active);
            rig.c.wait_all_joined(Duration::from_secs(30));
            wait_served(&rig.prober, monotonic_ns(), None, None, Duration::from_secs(10))?.context("nobody serves after the heal")?;
            Ok(())
        })();
        if let Err(e) = res {
            rebuild(&mut rig, opts, r, format!("link cut {k}"), e)?;
        }
    }
    eprintln!();
    Ok(())
}

/// Restarts every keepalived from a clean state (priorities restored, no
/// VIP, no httpd) and waits until node1 serves.
fn keepalived_restart_all(c: &Cluster, k: &mut Keepalived3, prober: &Prober) -> Result<()> {
    for i in 0..3 {
        k.crash(c, i);
        k.set_priority_delta(i, 0)?;
    }
    for i in 0..3 {
        k.start(i);
    }
    let t = monotonic_ns();
    wait_served(prober, t, Some("node1"), None, Duration::from_secs(30))?.context("keepalived: node1 never served the VIP")?;
    Ok(())
}

fn keepalived_bench(opts: &FailoverOpts, rng: &mut Lcg) -> Result<Results> {
    let mut r = Results::default();
    let mut reaper = Reaper::new();
    let c = Cluster::new("kfo", 3, 1, opts.interval_ms as u32, opts.misses);
    reaper.watch_cluster(&c);
    let www = write_www(&c)?;
    let client = c.add_client(0);
    reaper.watch(&client.ns.name);
    let mut k = Keepalived3::setup(&c, opts.interval_ms, &www)?;
    let prober = Prober::start(&client.ns.name, vip_addr(), PERIOD, TIMEOUT);
    keepalived_restart_all(&c, &mut k, &prober)?;

    for n in 0..opts.crashes {
        let res = (|| -> Result<()> {
            pause(150 + rng.next_below(opts.interval_ms))?;
            let active = answering(&prober).and_then(|n| node_index(&n)).context("nobody answers")?;
            let name = c.hosts[active].name.clone();
            let t = k.crash(&c, active);
            let Some(settled) = wait_served(&prober, t, None, Some(&name), FAILOVER_TIMEOUT)? else {
                r.record_never("keepalived crash", |r| &mut r.crash);
                anyhow::bail!("no other node served after {name} crashed");
            };
            pause(TIMEOUT.as_millis() as u64)?;
            let v = window(&prober, t - TIMEOUT.as_nanos() as u64, settled);
            let (ms, failed) = r.record_crash(&v);
            eprint!("\r  keepalived crash {}/{}: outage {ms:.1} ms ({failed} failed)   ", n + 1, opts.crashes);
            let t2 = monotonic_ns();
            k.start(active);
            let back = wait_served(&prober, t2, Some(&name), None, Duration::from_secs(30))?
                .with_context(|| format!("{name} did not take the VIP back"))?;
            r.failback.push(measure(&window(&prober, t2, back)).0);
            pause(300)?;
            Ok(())
        })();
        if let Err(e) = res {
            check_interrupt()?;
            r.notes.push(format!("keepalived crash {n}: {e:#}; every keepalived restarted"));
            eprintln!("\n  keepalived crash {n} failed ({e:#}); restarting every keepalived");
            keepalived_restart_all(&c, &mut k, &prober)?;
        }
    }
    eprintln!();

    // Link cuts of the master (its only link): the backups elect a new
    // master, which announces the VIP. The isolated one stays master with
    // the VIP on its side of the cut (keepalived has no quorum); after the
    // heal the highest priority wins again, and every keepalived restarts
    // from a clean state before the next cut.
    for n in 0..opts.crashes {
        let res = (|| -> Result<()> {
            pause(150 + rng.next_below(opts.interval_ms))?;
            let active = answering(&prober).and_then(|n| node_index(&n)).context("nobody answers")?;
            let name = c.hosts[active].name.clone();
            let t = c.cut_link(active, 0);
            let settled = wait_served(&prober, t, None, Some(&name), FAILOVER_TIMEOUT)?;
            c.heal_link(active, 0);
            let Some(settled) = settled else {
                r.record_never("keepalived link cut", |r| &mut r.linkcut);
                anyhow::bail!("no other node served after {name}'s link was cut");
            };
            pause(TIMEOUT.as_millis() as u64)?;
            let v = window(&prober, t - TIMEOUT.as_nanos() as u64, settled);
            let (ms, failed) = r.record_linkcut(&v);
            eprint!("\r  keepalived link cut {}/{}: outage {ms:.1} ms ({failed} failed)   ", n + 1, opts.crashes);
            keepalived_restart_all(&c, &mut k, &prober)?;
            Ok(())
        })();
        if let Err(e) = res {
            check_interrupt()?;
            r.notes.push(format!("keepalived link cut {n}: {e:#}; every keepalived restarted"));
            keepalived_restart_all(&c, &mut k, &prober)?;
        }
    }
    eprintln!();

    // Planned moves: lower node1's priority below node2's (its track file),
    // then restore it (node1 preempts back). The old master keeps the VIP
    // and httpd until the new one has taken over: the most favourable
    // planned move keepalived offers.
    for n in 0..opts.crashes {
        let res = (|| -> Result<()> {
            pause(200)?;
            let cur = answering(&prober).context("nobody answers")?;
            let (delta, target) = if cur == "node1" { (-100, "node2") } else { (0, "node1") };
            let t = monotonic_ns();
            k.set_priority_delta(0, delta)?;
            let settled = wait_served(&prober, t, Some(target), None, Duration::from_secs(10))?
                .with_context(|| format!("{target} never served"))?;
            // The whole drain: until the old master's httpd is gone (its
            // notify_backup script stops it).
            let old = node_index(&cur).context("bad page")?;
            let drained = wait_gone(&c.hosts[old].ns.name, t, Duration::from_secs(10))?;
            let end = settled.max(drained.unwrap_or(settled)) + PERIOD.as_nanos() as u64;
            pause(TIMEOUT.as_millis() as u64 + 20)?;
            let v = window(&prober, t, end);
            let (ms, failed) = r.record_switchover(&v);
            record_complete(&mut r, &format!("keepalived switchover {n}"), t, drained);
            eprint!("\r  keepalived switchover {}/{}: {failed} failed requests ({ms:.1} ms)   ", n + 1, opts.crashes);
            Ok(())
        })();
        if let Err(e) = res {
            check_interrupt()?;
            r.notes.push(format!("keepalived switchover {n}: {e:#}; every keepalived restarted"));
            keepalived_restart_all(&c, &mut k, &prober)?;
        }
    }
    eprintln!();
    drop(prober);
    drop(k);
    drop(client);
    drop(c);
    Ok(r)
}

/// The bench's clock (CLOCK_MONOTONIC) when no `busybox httpd` is left in
/// namespace `ns` (polled every 5 ms), None after `timeout`. The
/// same signal ends a switchover's window for baton and keepalived.
fn wait_gone(ns: &str, _since: u64, timeout: Duration) -> Result<Option<u64>> {
    let mut at = None;
    wait_for(timeout, || {
        let gone = baton_tests::svc::pids_matching(ns, "busybox httpd").is_empty();
        if gone {
            at = Some(monotonic_ns());
        }
        gone
    })?;
    Ok(at)
}

/// A switchover's time to completion (the old instance gone), or a note.
fn record_complete(r: &mut Results, what: &str, t: u64, drained: Option<u64>) {
    match drained {
        Some(d) => r.switchover_complete_ms.push(d.saturating_sub(t) as f64 / 1e6),
        None => r.notes.push(format!("{what}: the old node's httpd still ran 10 s after the switchover began")),
    }
}

/// The nodes (indices) running `busybox httpd`, with its pid.
fn httpds(c: &Cluster) -> Vec<(usize, i32)> {
    (0..c.hosts.len())
        .flat_map(|i| baton_tests::svc::pids_matching(&c.hosts[i].ns.name, "busybox httpd").into_iter().map(move |p| (i, p)))
        .collect()
}

/// Crashes of the node serving a hot-standby `web` group at `interval_ms`
/// × `misses`, `events` times, on one cluster (the crashed node restarts and
/// the group fails back to node 1 between crashes). Before each crash the
/// standby httpd must run; after it, the node that serves must be the one
/// whose standby httpd ran (same pid), else the event is counted in
/// `hot_not_hot`. Outages go to `out`.
fn baton_hot(tag: &str, interval_ms: u64, misses: u32, events: u32, rng: &mut Lcg, r: &mut Results, two_ms: bool) -> Result<()> {
    let fresh = || -> Result<BatonRig> {
        let mut rig = BatonRig::new(tag, interval_ms, misses)?;
        rig.c.extra_config = hot_group_toml(&rig.c.dir.join("www"));
        rig.start_all()?;
        let t = monotonic_ns();
        wait_served(&rig.prober, t, Some("node1"), None, Duration::from_secs(30))?
            .with_context(|| format!("hot: the web group never answered from node1; status: {}", web_status(&rig.c, 0)))?;
        Ok(rig)
    };
    let mut rig = fresh()?;
    for k in 0..events {
        let res = (|| -> Result<()> {
            // The standby instance runs (two httpd: the owner's and the standby's).
            let ok = wait_for(Duration::from_secs(10), || httpds(&rig.c).len() == 2)?;
            if !ok {
                anyhow::bail!("no standby httpd 10 s after the cluster settled: {:?}", httpds(&rig.c));
            }
            pause(150 + rng.next_below(interval_ms))?;
            let active = answering(&rig.prober).and_then(|n| node_index(&n)).context("nobody answers")?;
            let before = httpds(&rig.c);
            let t = rig.crash(active);
            let name = rig.c.hosts[active].name.clone();
            let Some(settled) = wait_served(&rig.prober, t, None, Some(&name), FAILOVER_TIMEOUT)? else {
                if two_ms { &mut r.hot_2ms } else { &mut r.hot }.push(FAILOVER_TIMEOUT.as_secs_f64() * 1e3);
                r.events_failed += 1;
                anyhow::bail!("hot: no other node served after {name} crashed");
            };
            pause(TIMEOUT.as_millis() as u64)?;
            let v = window(&rig.prober, t - TIMEOUT.as_nanos() as u64, settled);
            let (ms, failed) = measure(&v);
            r.count_errors(if two_ms { "hot crash 2 ms" } else { "hot crash" }, &v);
            if two_ms { &mut r.hot_2ms } else { &mut r.hot }.push(ms);
            let server = answering(&rig.prober).and_then(|n| node_index(&n));
            let was = before.iter().find(|(i, _)| Some(*i) == server).map(|x| x.1);
            let now = httpds(&rig.c).into_iter().find(|(i, _)| Some(*i) == server).map(|x| x.1);
            if was.is_none() || was != now {
                r.hot_not_hot += 1;
                r.notes.push(format!("hot crash {k} ({interval_ms} ms): node{} served from httpd {now:?}, its standby httpd was {was:?}", server.map(|s| s + 1).unwrap_or(0)));
            }
            eprint!("\r  baton hot crash {}/{events} ({interval_ms} ms × {misses}): outage {ms:.1} ms ({failed} failed)   ", k + 1);
            let t2 = monotonic_ns();
            rig.c.start(active);
            wait_served(&rig.prober, t2, Some(&name), None, Duration::from_secs(30))?
                .with_context(|| format!("the group did not move back to {name}"))?;
            rig.c.wait_all_joined(Duration::from_secs(20));
            Ok(())
        })();
        if let Err(e) = res {
            check_interrupt()?;
            let st = agents_state(&mut rig);
            r.notes.push(format!("hot crash {k} ({interval_ms} ms × {misses}): {e:#} [agents: {st}]; the cluster was rebuilt"));
            eprintln!("\n  hot crash {k} failed ({e:#}); agents: {st}; rebuilding the cluster");
            rig = fresh()?;
        }
    }
    eprintln!();
    Ok(())
}

/// keepalived's fastest advert interval: VRRPv3 (RFC 5798 §5.2.7) carries
/// the interval as a 12-bit count of centiseconds, so 10 ms is the smallest
/// interval keepalived (`vrrp_version 3`, `advert_int 0.01`) can advertise;
/// VRRPv2 counts whole seconds.
pub const KEEPALIVED_FASTEST_ADVERT_MS: u64 = 10;

/// keepalived's Master_Down_Interval for a backup of `priority` (RFC 5798
/// §6.1: 3 × advert interval + skew, skew = (256 − priority) × interval / 256).
pub fn master_down_ms(advert_ms: u64, priority: u32) -> f64 {
    3.0 * advert_ms as f64 + (256 - priority) as f64 * advert_ms as f64 / 256.0
}

/// keepalived crashes at its fastest advert interval (only when the bench
/// runs at another one: otherwise its crash figures are these).
fn keepalived_fastest(events: u32, misses: u32, rng: &mut Lcg) -> Result<Vec<f64>> {
    let opts = FailoverOpts { crashes: events, interval_ms: KEEPALIVED_FASTEST_ADVERT_MS, misses };
    let mut out = Vec::new();
    let mut reaper = Reaper::new();
    let c = Cluster::new("kff", 3, 1, opts.interval_ms as u32, misses);
    reaper.watch_cluster(&c);
    let www = write_www(&c)?;
    let client = c.add_client(0);
    reaper.watch(&client.ns.name);
    let mut k = Keepalived3::setup(&c, opts.interval_ms, &www)?;
    let prober = Prober::start(&client.ns.name, vip_addr(), PERIOD, TIMEOUT);
    keepalived_restart_all(&c, &mut k, &prober)?;
    for n in 0..events {
        pause(150 + rng.next_below(opts.interval_ms))?;
        let active = answering(&prober).and_then(|n| node_index(&n)).context("nobody answers")?;
        let name = c.hosts[active].name.clone();
        let t = k.crash(&c, active);
        let Some(settled) = wait_served(&prober, t, None, Some(&name), FAILOVER_TIMEOUT)? else {
            out.push(FAILOVER_TIMEOUT.as_secs_f64() * 1e3);
            keepalived_restart_all(&c, &mut k, &prober)?;
            continue;
        };
        pause(TIMEOUT.as_millis() as u64)?;
        let (ms, failed) = measure(&window(&prober, t - TIMEOUT.as_nanos() as u64, settled));
        out.push(ms);
        eprint!("\r  keepalived crash at advert 10 ms {}/{events}: outage {ms:.1} ms ({failed} failed)   ", n + 1);
        k.start(active);
        wait_served(&prober, monotonic_ns(), Some(&name), None, Duration::from_secs(30))?;
        pause(300)?;
    }
    eprintln!();
    drop(prober);
    drop(k);
    drop(client);
    drop(c);
    Ok(out)
}

pub fn failover(opts: &FailoverOpts) -> Result<()> {
    install_sigint();
    if !Path::new("/usr/sbin/keepalived").exists() {
        bail!("keepalived is not installed (run `cargo xtask setup`)");
    }
    if !Path::new("/usr/bin/busybox").exists() && !Path::new("/bin/busybox").exists() {
        bail!("busybox is not installed (run `cargo xtask setup`)");
    }
    remove_leftovers(&["bfo", "bfc", "kfo", "bfh", "bfh2", "kff"]);
    eprintln!(
        "bench failover: 3 nodes + a client in network namespaces, group `web` = {VIP_CIDR} + busybox httpd, \
         client GET every {} ms (timeout {} ms); heartbeat/advert interval {} ms, {} misses; {} crashes, link cuts, switchovers",
        PERIOD.as_millis(),
        TIMEOUT.as_millis(),
        opts.interval_ms,
        opts.misses,
        opts.crashes
    );
    // BENCH_FAILOVER_ONLY=baton|keepalived runs one half, =baton-switchover
    // only baton's switchovers, =baton-linkcut only its link cuts
    // (development).
    let only = std::env::var("BENCH_FAILOVER_ONLY").unwrap_or_default();
    let mut k = Results::default();
    if !only.starts_with("baton") {
        eprintln!("[1/2] keepalived (VRRPv3, unicast, notify scripts start/stop httpd)");
        let mut rng = Lcg(0x5eed_0000_0000_0002);
        k = keepalived_bench(opts, &mut rng)?;
    }
    let mut b = Results::default();
    if only == "baton-linkcut" {
        let mut rng = Lcg(0x5eed_0000_0000_0002);
        baton_linkcuts(opts, &mut rng, &mut b)?;
    } else if only != "keepalived" && only != "baton-hot" {
        eprintln!("[2/2] baton");
        let mut rng = Lcg(0x5eed_0000_0000_0002);
        b = baton_bench(opts, &mut rng)?;
        if only != "baton-switchover" {
            eprintln!("[2/2] baton link cuts (one long-lived cluster)");
            baton_linkcuts(opts, &mut rng, &mut b)?;
        }
    }
    // Hot standby (=baton-hot runs only this part).
    if only.is_empty() || only == "baton-hot" {
        let mut rng = Lcg(0x5eed_0000_0000_0003);
        eprintln!("[hot] baton hot standby, {} ms × {}", opts.interval_ms, opts.misses);
        baton_hot("bfh", opts.interval_ms, opts.misses, opts.crashes, &mut rng, &mut b, false)?;
        eprintln!("[hot] baton hot standby, 2 ms × 3");
        baton_hot("bfh2", 2, 3, opts.crashes, &mut rng, &mut b, true)?;
    }
    if (only.is_empty() || only == "keepalived") && opts.interval_ms != KEEPALIVED_FASTEST_ADVERT_MS {
        eprintln!("[fastest] keepalived at advert_int {} ms", KEEPALIVED_FASTEST_ADVERT_MS);
        let mut rng = Lcg(0x5eed_0000_0000_0004);
        k.fastest = keepalived_fastest(opts.crashes, opts.misses, &mut rng)?;
    } else {
        k.fastest = k.crash.clone();
    }
    report(opts, &b, &k);
    Ok(())
}

fn report(opts: &FailoverOpts, b: &Results, k: &Results) {
    let sum = |v: &[usize]| v.iter().sum::<usize>();
    println!();
    println!(
        "client-visible outage, GET every {} ms, heartbeat/advert interval {} ms × {} misses, {} of each event",
        PERIOD.as_millis(),
        opts.interval_ms,
        opts.misses,
        opts.crashes
    );
    println!("{:<36} {:>10} {:>12} {:>8}", "", "baton", "keepalived", "ratio");
    let row = |name: &str, a: f64, b: f64| {
        let ratio = if a > 0.0 && b.is_finite() { format!("{:.1}x", b / a) } else { "-".into() };
        println!("{name:<36} {a:>10.1} {b:>12.1} {ratio:>8}")
    };
    row("crash outage p50 (ms)", percentile(&b.crash, 50.0), percentile(&k.crash, 50.0));
    row("crash outage p99 (ms)", percentile(&b.crash, 99.0), percentile(&k.crash, 99.0));
    row("crash outage max (ms)", percentile(&b.crash, 100.0), percentile(&k.crash, 100.0));
    row("crash failed requests (mean)", mean_usize(&b.crash_failed), mean_usize(&k.crash_failed));
    println!(
        "{:<36} {:>10.1} {:>12}",
        "agent kill outage p50 (ms)",
        percentile(&b.agentkill, 50.0),
        "-"
    );
    println!("{:<36} {:>10.1} {:>12}", "agent kill outage p99 (ms)", percentile(&b.agentkill, 99.0), "-");
    println!("{:<36} {:>10.1} {:>12}", "agent kill VIP on two nodes max (ms)", percentile(&b.agentkill_dual, 100.0), "-");
    println!("(agent kill: baton's agent alone SIGKILLed, node and httpd alive; keepalived has no separate agent to kill)");
    println!("{:<36} {:>10} {:>12}", "link cuts measured", b.linkcut.len(), k.linkcut.len());
    row("link cut outage p50 (ms)", percentile(&b.linkcut, 50.0), percentile(&k.linkcut, 50.0));
    row("link cut outage p99 (ms)", percentile(&b.linkcut, 99.0), percentile(&k.linkcut, 99.0));
    row("fail-back outage p50 (ms)", percentile(&b.failback, 50.0), percentile(&k.failback, 50.0));
    row("fail-back outage p99 (ms)", percentile(&b.failback, 99.0), percentile(&k.failback, 99.0));
    println!("{:<36} {:>10} {:>12}", "switchover failed requests (total)", sum(&b.switchover_failed), sum(&k.switchover_failed));
    println!(
        "{:<36} {:>10} {:>12}",
        "switchovers with a failed request",
        b.switchover_failed.iter().filter(|&&n| n > 0).count(),
        k.switchover_failed.iter().filter(|&&n| n > 0).count()
    );
    row("switchover outage p50 (ms)", percentile(&b.switchover_ms, 50.0), percentile(&k.switchover_ms, 50.0));
    row("switchover outage p99 (ms)", percentile(&b.switchover_ms, 99.0), percentile(&k.switchover_ms, 99.0));
    row("switchover complete p50 (ms)", percentile(&b.switchover_complete_ms, 50.0), percentile(&k.switchover_complete_ms, 50.0));
    row("switchover complete p99 (ms)", percentile(&b.switchover_complete_ms, 99.0), percentile(&k.switchover_complete_ms, 99.0));
    println!("(keepalived: switchover = lowering the master's priority through a track file, then restoring it; after a link cut the isolated master keeps the VIP on its side: no quorum)");
    println!("(switchover windows run from the command / priority change to the later of: 20 steady answers from the new node, and the old node's httpd gone (its drain); \
              both sides are stamped by this bench with CLOCK_MONOTONIC from the client's probes and the same process check)");
    let bound = (opts.interval_ms * opts.misses as u64) as f64;
    let mdi = master_down_ms(opts.interval_ms, 100);
    println!(
        "detection: baton silence bound {bound:.1} ms ({} ms × {}, then silence confirmation by another member); \
         keepalived master-down interval {mdi:.1} ms (3 × advert_int {} ms + skew at priority 100; RFC 5798 §6.1)",
        opts.interval_ms, opts.misses, opts.interval_ms
    );
    row("hot standby crash outage p50 (ms)", percentile(&b.hot, 50.0), percentile(&k.crash, 50.0));
    row("hot standby crash outage p99 (ms)", percentile(&b.hot, 99.0), percentile(&k.crash, 99.0));
    row("hot 2 ms × 3 / keepalived fastest p99", percentile(&b.hot_2ms, 99.0), percentile(&k.fastest, 99.0));
    println!(
        "(hot: standby = \"hot\", {} and {} crashes; {} served from a new httpd instead of the standby's; keepalived fastest = advert_int {} ms, \
         the smallest VRRPv3 interval (centiseconds), master-down {:.1} ms)",
        b.hot.len(),
        b.hot_2ms.len(),
        b.hot_not_hot,
        KEEPALIVED_FASTEST_ADVERT_MS,
        master_down_ms(KEEPALIVED_FASTEST_ADVERT_MS, 100)
    );
    for (who, r) in [("baton", b), ("keepalived", k)] {
        if !r.errors.is_empty() {
            let e: Vec<String> = r.errors.iter().map(|(e, n)| format!("{n} × {e}")).collect();
            println!("{who} failed requests by kind: {}", e.join(", "));
        }
    }
    for n in b.notes.iter().chain(k.notes.iter()) {
        println!("note: {n}");
    }
    let json = serde_json::json!({
        "baton_outage_p50_ms": round1(percentile(&b.crash, 50.0)),
        "baton_outage_p99_ms": round1(percentile(&b.crash, 99.0)),
        "baton_linkcut_outage_p99_ms": round1(percentile(&b.linkcut, 99.0)),
        "baton_switchover_failed": sum(&b.switchover_failed),
        "baton_agentkill_outage_p99_ms": round1(percentile(&b.agentkill, 99.0)),
        "baton_agentkill_dual_owner_ms_max": round1(percentile(&b.agentkill_dual, 100.0)),
        "keepalived_outage_p50_ms": round1(percentile(&k.crash, 50.0)),
        "keepalived_outage_p99_ms": round1(percentile(&k.crash, 99.0)),
        "keepalived_switchover_failed": sum(&k.switchover_failed),
        "keepalived_linkcut_outage_p99_ms": round1(percentile(&k.linkcut, 99.0)),
        // Crashes, agent kills and link cuts that never failed over (each is
        // in its percentiles as the 10 s timeout).
        "baton_events_failed": b.events_failed,
        "keepalived_events_failed": k.events_failed,
        "baton_hot_outage_p50_ms": round1(percentile(&b.hot, 50.0)),
        "baton_hot_outage_p99_ms": round1(percentile(&b.hot, 99.0)),
        "baton_hot_2ms_outage_p99_ms": round1(percentile(&b.hot_2ms, 99.0)),
        "baton_hot_not_promoted": b.hot_not_hot,
        "keepalived_fastest_outage_p99_ms": round1(percentile(&k.fastest, 99.0)),
        "keepalived_fastest_advert_ms": KEEPALIVED_FASTEST_ADVERT_MS,
        "baton_switchover_complete_p99_ms": round1(percentile(&b.switchover_complete_ms, 99.0)),
        "keepalived_switchover_complete_p99_ms": round1(percentile(&k.switchover_complete_ms, 99.0)),
        "baton_detect_bound_ms": round1(bound),
        "keepalived_master_down_ms": round1(mdi),
        "events_per_kind": opts.crashes,
    });
    println!("{json}");
}

fn mean_usize(v: &[usize]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<usize>() as f64 / v.len() as f64
}

