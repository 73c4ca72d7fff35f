//! Test harness: real network namespaces, veth links, bridges and real
//! `baton` processes. Used by the kernel tests in `tests/tests/` and by
//! `cargo xtask demo` / `cargo xtask bench`.
//!
//! Every object is named from a unique prefix (test name + pid + counter), so
//! tests run in parallel, and everything is removed on drop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use baton_common;
/// The agent's state files, typed (`agent.json`, `cluster.json`, `services.json`).
pub use baton_state as state;
use baton_state::StateFile;

pub mod flood;
pub mod svc;
pub mod vm;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if !out.status.success() {
        panic!("{args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs a command inside a network namespace.
pub fn ns_sh(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    sh(&v)
}

/// Like [`ns_sh`], returning success instead of panicking.
pub fn ns_ok(ns: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The `baton` binary under test: `$BATON_BIN`, else next to the test binary.
pub fn baton_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BATON_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("baton");
    assert!(p.exists(), "baton binary not found at {} (build it, or set BATON_BIN)", p.display());
    p
}

/// Reports that the calling test is skipped (it then returns without
/// asserting anything): a `SKIPPED:` line on stderr, and a line in the file
/// named by `$BATON_SKIP_LOG` (set by `cargo xtask test`, which then counts
/// these tests as skipped in its summary, not as passed).
pub fn note_skipped(why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    eprintln!("SKIPPED: {test}: {why}");
    if let Some(path) = std::env::var_os("BATON_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{test}\t{}", why.replace('\n', " "));
        }
    }
}

/// True when the tests must not skip (CI).
pub fn must_run() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Checks that kernel tests can run here: root, netns, veth. Returns false
/// (after printing why) when they cannot and we are not in CI; panics in CI.
pub fn kernel_tests_possible() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("not running as root".to_string())
    } else if !Path::new("/sys/fs/bpf").exists() {
        Some("/sys/fs/bpf missing".to_string())
    } else {
        let name = format!("bprobe{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let ok = Command::new("ip").args(["netns", "add", &name]).status().map(|s| s.success()).unwrap_or(false);
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        (!ok).then(|| "cannot create network namespaces (`ip netns add` failed)".to_string())
    };
    match why {
        None => true,
        Some(w) if must_run() => panic!("kernel tests cannot run here ({w}) and CI=true forbids skipping"),
        Some(w) => {
            note_skipped(&format!("kernel test needs root with netns support: {w}"));
            false
        }
    }
}

/// A unique short prefix for object names (interface names are ≤ 15 chars).
pub fn unique_prefix(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let tag: String = tag.chars().filter(|c| c.is_ascii_alphanumeric()).take(4).collect();
    format!("{tag}{}x{n}", std::process::id() % 100000)
}

/// A network namespace that is deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> NetNs {
        sh(&["ip", "netns", "add", name]);
        sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
        NetNs { name: name.to_string() }
    }
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// One simulated host.
pub struct Host {
    pub ns: NetNs,
    pub index: usize,
    pub id: u32,
    pub name: String,
    /// Address per link.
    pub addrs: Vec<String>,
}

/// N hosts joined by one bridge per link (the bridges live in a switch
/// namespace), addresses 10.(77+link).0.(index+1)/24.
pub struct Cluster {
    pub prefix: String,
    pub switch: NetNs,
    pub hosts: Vec<Host>,
    pub links: usize,
    pub dir: PathBuf,
    pub interval_ms: u32,
    pub misses: u32,
    pub secret: PathBuf,
    pub cluster_name: String,
    pub cluster_id: u32,
    pub agents: Vec<Option<Agent>>,
    pub xdp_mode: &'static str,
    /// `heartbeat.realtime_priority` written into every config (0 = normal scheduling).
    pub realtime_priority: u32,
    /// TOML appended to every node's configuration (e.g. a `[membership]`
    /// table); empty by default.
    pub extra_config: String,
    /// `transport` of every `[[link]]` (`"broadcast"`, `"unicast"`); empty:
    /// not written (the default, unicast). Starts as `$BATON_TEST_TRANSPORT`
    /// (to run any kernel test on unicast links).
    pub transport: String,
}

pub fn link_addr(link: usize, index: usize) -> String {
    format!("10.{}.0.{}", 77 + link, index + 1)
}

pub fn link_addr6(link: usize, index: usize) -> String {
    format!("fd77:{link}::{}", index + 1)
}

impl Cluster {
    pub fn new(tag: &str, n: usize, links: usize, interval_ms: u32, misses: u32) -> Cluster {
        Cluster::with_family(tag, n, links, interval_ms, misses, false)
    }

    /// Like [`Cluster::new`]; with `ipv6`, the interconnect uses fd77:LINK::N/64.
    pub fn with_family(tag: &str, n: usize, links: usize, interval_ms: u32, misses: u32, ipv6: bool) -> Cluster {
        let prefix = unique_prefix(tag);
        let switch = NetNs::new(&format!("{prefix}sw"));
        for l in 0..links {
            sh(&["ip", "-n", &switch.name, "link", "add", &format!("br{l}"), "type", "bridge"]);
            sh(&["ip", "-n", &switch.name, "link", "set", &format!("br{l}"), "up"]);
        }
        let mut hosts = Vec::new();
        for i in 0..n {
            let ns = NetNs::new(&format!("{prefix}n{i}"));
            let mut addrs = Vec::new();
            for l in 0..links {
                let peer = format!("h{i}l{l}");
                sh(&["ip", "link", "add", &format!("ic{l}"), "netns", &ns.name, "type", "veth", "peer", "name", &peer, "netns", &switch.name]);
                sh(&["ip", "-n", &switch.name, "link", "set", &peer, "master", &format!("br{l}")]);
                sh(&["ip", "-n", &switch.name, "link", "set", &peer, "up"]);
                let a = if ipv6 { link_addr6(l, i) } else { link_addr(l, i) };
                if ipv6 {
                    sh(&["ip", "-n", &ns.name, "addr", "add", &format!("{a}/64"), "dev", &format!("ic{l}"), "nodad"]);
                } else {
                    sh(&["ip", "-n", &ns.name, "addr", "add", &format!("{a}/24"), "dev", &format!("ic{l}")]);
                }
                sh(&["ip", "-n", &ns.name, "link", "set", &format!("ic{l}"), "up"]);
                addrs.push(a);
            }
            hosts.push(Host { ns, index: i, id: i as u32 + 1, name: format!("node{}", i + 1), addrs });
        }
        let dir = test_root().join(format!("baton-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        write_secret(&secret, "7b1f0e9a3c5d2846a1b2c3d4e5f60718");
        let agents = (0..n).map(|_| None).collect();
        Cluster {
            cluster_name: format!("t{prefix}").to_lowercase(),
            cluster_id: 4000 + COUNTER.load(Ordering::SeqCst),
            prefix,
            switch,
            hosts,
            links,
            dir,
            interval_ms,
            misses,
            secret,
            agents,
            xdp_mode: "auto",
            realtime_priority: 10,
            extra_config: String::new(),
            transport: std::env::var("BATON_TEST_TRANSPORT").unwrap_or_default(),
        }
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(&self.hosts[i].name)
    }

    pub fn bpffs_dir(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/baton/{}-{}", self.cluster_name, self.hosts[i].name))
    }

    /// The configuration file of host `i`.
    pub fn config_text(&self, i: usize) -> String {
        let h = &self.hosts[i];
        let nd = self.node_dir(i);
        let mut s = format!(
            "[cluster]\nname = \"{}\"\nid = {}\nsecret_file = \"{}\"\n\n[node]\nid = {}\nname = \"{}\"\n\n\
             [heartbeat]\ninterval_ms = {}\nmisses = {}\nwatchdog_tick_us = {}\nrealtime_priority = {}\n\n[datapath]\nxdp_mode = \"{}\"\n\n\
             [paths]\nbpffs_dir = \"{}\"\nstate_dir = \"{}\"\nrun_dir = \"{}\"\n",
            self.cluster_name,
            self.cluster_id,
            self.secret.display(),
            h.id,
            h.name,
            self.interval_ms,
            self.misses,
            (self.interval_ms * self.misses * 1000 / 30).clamp(100, 1000),
            self.realtime_priority,
            self.xdp_mode,
            self.bpffs_dir(i).display(),
            nd.join("state").display(),
            nd.join("run").display(),
        );
        for l in 0..self.links {
            s += &format!("\n[[link]]\nname = \"ring{l}\"\ninterface = \"ic{l}\"\naddress = \"{}\"\n", h.addrs[l]);
            if !self.transport.is_empty() {
                s += &format!("transport = \"{}\"\n", self.transport);
            }
        }
        for (j, p) in self.hosts.iter().enumerate() {
            if j == i {
                continue;
            }
            let addrs: Vec<String> = p.addrs.iter().map(|a| format!("\"{a}\"")).collect();
            s += &format!("\n[[peer]]\nid = {}\nname = \"{}\"\naddresses = [{}]\n", p.id, p.name, addrs.join(", "));
        }
        if !self.extra_config.is_empty() {
            s += "\n";
            s += &self.extra_config;
            if !s.ends_with('\n') {
                s.push('\n');
            }
        }
        s
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        let nd = self.node_dir(i);
        std::fs::create_dir_all(&nd).unwrap();
        let p = nd.join("baton.toml");
        std::fs::write(&p, self.config_text(i)).unwrap();
        p
    }

    /// Host `i`'s control socket: it exists while an agent life runs there.
    pub fn control_socket(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("run").join(format!("{}.sock", self.cluster_name))
    }

    /// The incarnation of host `i`'s latest agent life (its state file),
    /// `None` before any life wrote it.
    pub fn incarnation(&self, i: usize) -> Option<u64> {
        std::fs::read_to_string(self.state_dir(i).join(state::INCARNATION_FILE)).ok().and_then(|t| t.trim().parse().ok())
    }

    /// Starts the agent of host `i` and waits until it is running: its
    /// control socket exists and its `agent.json` names this process (a
    /// SIGKILLed earlier life leaves both its socket and its `agent.json`
    /// behind; neither alone says that this life came up). An earlier
    /// life's `agent.log` is kept as `agent.<k>.log`: truncating it in place
    /// while that life's guard (or the agent) still writes at its offset
    /// would fill it with NUL bytes and hide both lives' last lines.
    pub fn start(&mut self, i: usize) {
        let cfg = self.config_path(i);
        let log = self.node_dir(i).join("agent.log");
        if log.exists() {
            let n = (0..).find(|k| !self.node_dir(i).join(format!("agent.{k}.log")).exists()).unwrap();
            std::fs::rename(&log, self.node_dir(i).join(format!("agent.{n}.log"))).unwrap();
        }
        let a = Agent::spawn(&self.hosts[i].ns, &cfg, &log);
        let pid = a.pid() as i64;
        self.agents[i] = Some(a);
        let sock = self.control_socket(i);
        let state_dir = self.state_dir(i);
        wait_until(Duration::from_secs(20), || {
            if let Some(a) = self.agents[i].as_mut() {
                if let Some(st) = a.child.try_wait().unwrap() {
                    panic!("agent {i} exited early ({st}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
                }
            }
            let ours = state::AgentStatus::load(&state_dir).is_some_and(|a| a.pid as i64 == pid);
            ours && sock.exists()
        })
        .unwrap_or_else(|| panic!("agent {i} did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    }

    pub fn start_all(&mut self) {
        for i in 0..self.hosts.len() {
            self.start(i);
        }
    }

    /// The pid of the guard process of host `i`'s latest agent life (its
    /// `agent.json`, which stays after a SIGKILL), if it recorded one.
    pub fn guard_pid(&self, i: usize) -> Option<i32> {
        state::AgentStatus::load(&self.state_dir(i)).map(|a| a.guard.pid as i32)
    }

    /// Host `i` dies as far as baton goes (a crash of the machine, or of
    /// both of its baton processes): SIGKILL of its guard, then of its
    /// agent, so that nothing tells the others (no distress: they notice
    /// the silence). Its services, if any, keep running (see
    /// [`Cluster::crash`]). Returns the CLOCK_MONOTONIC ns just before the
    /// agent's kill.
    pub fn kill(&mut self, i: usize) -> u64 {
        if let Some(g) = self.guard_pid(i) {
            unsafe { libc::kill(g, libc::SIGKILL) };
        }
        self.kill_agent(i)
    }

    /// SIGKILL of the agent of host `i` alone (its guard lives: it releases
    /// what the node held and tells the others at once); returns the
    /// CLOCK_MONOTONIC ns just before.
    pub fn kill_agent(&mut self, i: usize) -> u64 {
        let a = self.agents[i].take().expect("agent running");
        let t = monotonic_ns();
        a.kill9();
        t
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self, i: usize) -> std::process::ExitStatus {
        let a = self.agents[i].take().expect("agent running");
        a.terminate()
    }

    /// `baton status --json` of host `i`.
    pub fn status(&self, i: usize) -> serde_json::Value {
        let out = Command::new(baton_bin())
            .args(["status", "--json", "--config"])
            .arg(self.node_dir(i).join("baton.toml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "baton status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The `agent` part of host `i`'s `baton status --json` (its
    /// `agent.json`), typed; `None` when the agent does not run.
    pub fn status_agent(&self, i: usize) -> Option<state::AgentStatus> {
        serde_json::from_value(self.status(i)["agent"].take()).ok()
    }

    /// The `membership` part of host `i`'s `baton status --json` (its
    /// `cluster.json`), typed.
    pub fn status_membership(&self, i: usize) -> Option<state::ClusterSnapshot> {
        serde_json::from_value(self.status(i)["membership"].take()).ok()
    }

    /// Events (events.jsonl) of host `i`.
    pub fn events(&self, i: usize) -> Vec<serde_json::Value> {
        let p = self.state_dir(i).join(state::EVENTS_FILE);
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The state of peer `peer_id` as host `i` sees it.
    pub fn peer_state(&self, i: usize, peer_id: u32) -> String {
        let st = self.status(i);
        st["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == peer_id)
            .map(|p| p["state"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// Waits until every running agent sees every other running agent up.
    pub fn wait_all_up(&self, timeout: Duration) {
        let running: Vec<usize> = (0..self.hosts.len()).filter(|i| self.agents[*i].is_some()).collect();
        let ok = wait_until(timeout, || {
            running.iter().all(|&i| running.iter().filter(|&&j| j != i).all(|&j| self.peer_state(i, self.hosts[j].id) == "up"))
        });
        if ok.is_none() {
            let dump: Vec<String> = running.iter().map(|&i| self.status(i).to_string()).collect();
            panic!("peers did not all come up within {timeout:?}:\n{}", dump.join("\n"));
        }
    }

    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(i).join("agent.log")).unwrap_or_default()
    }

    /// Cuts link `l` of host `i` (its switch-side port goes down).
    pub fn cut_link(&self, i: usize, l: usize) -> u64 {
        let t = monotonic_ns();
        sh(&["ip", "-n", &self.switch.name, "link", "set", &format!("h{i}l{l}"), "down"]);
        t
    }

    pub fn heal_link(&self, i: usize, l: usize) {
        sh(&["ip", "-n", &self.switch.name, "link", "set", &format!("h{i}l{l}"), "up"]);
    }

    /// Cuts host `i` off from the others at the switch without touching any
    /// carrier: every IPv4 packet from or to its link addresses (heartbeats,
    /// control channel) is dropped by tc filters on its switch ports, while
    /// traffic of its other addresses (a floating address answering a
    /// client) still passes. Returns the monotonic time of the cut.
    pub fn isolate(&self, i: usize) -> u64 {
        self.drop_at_switch(i, true, true)
    }

    /// Host `i` hears nothing from the others (link addresses), while they
    /// still hear it: a stall of its receive path, as seen from outside.
    pub fn deafen(&self, i: usize) -> u64 {
        self.drop_at_switch(i, false, true)
    }

    /// The others hear nothing from host `i` (link addresses: heartbeats,
    /// control channel), while it still hears them: a one-way cut of its
    /// sending side ("mute").
    pub fn mute(&self, i: usize) -> u64 {
        self.drop_at_switch(i, true, false)
    }

    /// `bh0` in the switch namespace, created once: a veth pair whose other
    /// end is down, so what is redirected into it is lost.
    fn black_hole(&self) {
        let sw = &self.switch.name;
        if !Command::new("ip").args(["-n", sw, "link", "show", "bh0"]).output().is_ok_and(|o| o.status.success()) {
            sh(&["ip", "-n", sw, "link", "add", "bh0", "type", "veth", "peer", "name", "bh1"]);
            sh(&["ip", "-n", sw, "link", "set", "bh0", "up"]);
        }
    }

    fn drop_at_switch(&self, i: usize, from_host: bool, to_host: bool) -> u64 {
        let sw = &self.switch.name;
        // The drop is a redirect into a black hole (the gact action is a
        // module, which this kernel may not load; mirred is built in).
        self.black_hole();
        let t = monotonic_ns();
        for l in 0..self.links {
            let port = format!("h{i}l{l}");
            let a = format!("{}/32", link_addr(l, i));
            sh(&["ip", "netns", "exec", sw, "tc", "qdisc", "add", "dev", &port, "clsact"]);
            // Ingress of the switch port: what the host sends; egress: what
            // it would receive.
            for (dir, m, on) in [("ingress", "src", from_host), ("egress", "dst", to_host)] {
                if !on {
                    continue;
                }
                sh(&["ip", "netns", "exec", sw, "tc", "filter", "add", "dev", &port, dir, "protocol", "ip", "u32", "match", "ip", m, &a, "action", "mirred", "egress", "redirect", "dev", "bh0"]);
            }
        }
        t
    }

    /// Drops, at host `i`'s switch ports, the IPv4 packets that match every
    /// tc u32 selector in `matches` (each the words after `match`, e.g.
    /// `["ip", "protocol", "6", "0xff"]`): `from_host`, those it sends
    /// (ingress of its port); otherwise those it would receive. Finer than
    /// [`Cluster::mute`] (one protocol, one peer). Undone by
    /// [`Cluster::unisolate`]. Returns the monotonic time of the cut.
    pub fn drop_matching(&self, i: usize, from_host: bool, matches: &[&[&str]]) -> u64 {
        let sw = &self.switch.name;
        self.black_hole();
        let t = monotonic_ns();
        for l in 0..self.links {
            let port = format!("h{i}l{l}");
            // The qdisc may be there already (an earlier call).
            let _ = Command::new("ip").args(["netns", "exec", sw, "tc", "qdisc", "add", "dev", &port, "clsact"]).output();
            let mut args = vec!["ip", "netns", "exec", sw, "tc", "filter", "add", "dev", &port, if from_host { "ingress" } else { "egress" }, "protocol", "ip", "u32"];
            for m in matches {
                args.push("match");
                args.extend_from_slice(m);
            }
            args.extend_from_slice(&["action", "mirred", "egress", "redirect", "dev", "bh0"]);
            sh(&args);
        }
        t
    }

    /// Undoes [`Cluster::isolate`], [`Cluster::deafen`] and [`Cluster::mute`].
    pub fn unisolate(&self, i: usize) {
        for l in 0..self.links {
            sh(&["ip", "netns", "exec", &self.switch.name, "tc", "qdisc", "del", "dev", &format!("h{i}l{l}"), "clsact"]);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in self.agents.iter_mut() {
            if let Some(a) = a.take() {
                a.terminate();
            }
        }
        for i in 0..self.hosts.len() {
            let d = self.bpffs_dir(i);
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let _ = std::fs::remove_dir(&d);
        }
        if std::env::var("BATON_KEEP_TEST_DIR").is_err() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Where clusters keep their per-node directories (configuration, logs,
/// state, sockets): `/dev/shm` (tmpfs) when there is one, else the temp dir.
/// Each simulated node writes small files several times a second
/// (cluster.json, services.json, by write and rename); 32 of them on one
/// ext4 file system made ext4's inode allocator scan past thousands of
/// recently deleted inodes on every create: a quarter of a CPU in the
/// 32-node bench, which real nodes, each with its own disk, never pay.
pub fn test_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let writable = shm.is_dir() && std::fs::metadata(shm).map(|m| !m.permissions().readonly()).unwrap_or(false);
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

pub fn write_secret(path: &Path, hex: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    writeln!(f, "{hex}").unwrap();
}

/// Spawns `cmd` inside network namespace `ns`, in its own process group,
/// stdout and stderr to `log`. Only the network namespace is entered: `ip
/// netns exec` would also remount /sys and hide /sys/fs/bpf.
pub fn spawn_in_netns(ns: &str, mut cmd: Command, log: &Path) -> Child {
    let nsfile = File::open(PathBuf::from("/run/netns").join(ns)).unwrap();
    let logf = File::create(log).unwrap();
    cmd.stdin(Stdio::null()).stdout(logf.try_clone().unwrap()).stderr(logf).process_group(0);
    let fd = nsfile.as_raw_fd();
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    drop(nsfile);
    child
}

/// A running `baton run` process inside a namespace.
pub struct Agent {
    pub child: Child,
}

impl Agent {
    pub fn spawn(ns: &NetNs, config: &Path, log: &Path) -> Agent {
        let mut cmd = Command::new(baton_bin());
        cmd.args(["run", "--config"]).arg(config);
        Agent { child: spawn_in_netns(&ns.name, cmd, log) }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Polls `f` every 5 ms until it returns true; returns the time it took.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap();
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!("setns {}: {}", path.display(), std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .unwrap()
}

/// Sends raw UDP payloads from inside `ns` (bound to `src`) to `dst:port`.
pub fn send_udp(ns: &str, src: &str, dst: &str, port: u16, payloads: Vec<Vec<u8>>) {
    let src = src.to_string();
    let dst = dst.to_string();
    in_netns(ns, move || {
        let s = std::net::UdpSocket::bind(format!("{src}:0")).unwrap();
        for p in payloads {
            s.send_to(&p, format!("{dst}:{port}")).unwrap();
        }
    })
}

impl Cluster {
    /// The 128-bit key halves of the test secret.
    pub fn key(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(&self.secret).unwrap();
        let hex = text.trim();
        let mut key = [0u8; 16];
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap();
        }
        baton_common::siphash::key_halves(&key)
    }

    /// Counter `name` of host `i`.
    pub fn counter(&self, i: usize, name: &str) -> u64 {
        self.status(i)["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// Waits for an event matching `pred` in host `i`'s event log.
    pub fn wait_event(&self, i: usize, timeout: Duration, pred: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.events(i).into_iter().find(|e| pred(e));
            found.is_some()
        });
        found
    }
}

impl Cluster {
    /// The state directory of host `i` (`state/`: the files of [`state`]).
    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("state")
    }

    /// The membership snapshot (`state/cluster.json`) of host `i`, if it
    /// was written (and parses).
    pub fn membership(&self, i: usize) -> Option<state::ClusterSnapshot> {
        state::ClusterSnapshot::load(&self.state_dir(i))
    }

    /// The membership snapshot of host `i` as its text, for messages.
    pub fn membership_text(&self, i: usize) -> String {
        std::fs::read_to_string(state::ClusterSnapshot::path(&self.state_dir(i))).unwrap_or_else(|e| format!("(no {}: {e})", state::CLUSTER_FILE))
    }

    /// Host `i`'s own membership state (`None`: no snapshot).
    pub fn my_state(&self, i: usize) -> Option<state::NodeState> {
        self.membership(i).map(|m| m.my_state)
    }

    /// The state of node `id` in host `i`'s view (`None`: no snapshot, or
    /// not in it).
    pub fn node_state(&self, i: usize, id: u32) -> Option<state::NodeState> {
        self.membership(i).and_then(|m| m.node(id).map(|n| n.state))
    }

    /// The agent status (`state/agent.json`) of host `i`'s latest life, if
    /// it was written (it stays after a SIGKILL).
    pub fn agent_status(&self, i: usize) -> Option<state::AgentStatus> {
        state::AgentStatus::load(&self.state_dir(i))
    }

    /// Waits until every running agent is Joined and all follow the same
    /// view, in which every running agent is joined with its latest life's
    /// incarnation (a snapshot of an earlier life, or a view from before a
    /// node's new life joined, does not count).
    pub fn wait_all_joined(&self, timeout: Duration) -> Duration {
        let running: Vec<usize> = (0..self.hosts.len()).filter(|i| self.agents[*i].is_some()).collect();
        let r = wait_until(timeout, || {
            let Some(ms) = running.iter().map(|&i| self.membership(i)).collect::<Option<Vec<state::ClusterSnapshot>>>() else {
                return false;
            };
            let lives: Vec<(u32, Option<u64>)> = running.iter().map(|&j| (self.hosts[j].id, self.incarnation(j))).collect();
            let current = |m: &state::ClusterSnapshot| {
                lives.iter().all(|&(id, inc)| m.node(id).is_some_and(|n| n.state == state::NodeState::Joined && inc == Some(n.incarnation)))
            };
            ms.iter().all(|m| m.my_state == state::NodeState::Joined)
                && ms.windows(2).all(|w| w[0].view == w[1].view)
                && ms.iter().all(|m| m.transitions.is_empty())
                && ms.iter().all(current)
        });
        r.unwrap_or_else(|| {
            let dump: Vec<String> = running.iter().map(|&i| format!("{}: {}", self.hosts[i].name, self.membership_text(i))).collect();
            panic!("not every node joined within {timeout:?}:\n{}", dump.join("\n"))
        })
    }

    /// Lines of host `i`'s agent log that contain every one of `needles`.
    pub fn log_lines(&self, i: usize, needles: &[&str]) -> Vec<String> {
        self.agent_log(i).lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_string).collect()
    }
}

// ---------------------------------------------------------------------------
// Clients and HTTP probes (services tests, `cargo xtask demo`, `bench failover`).

/// A client host: its own network namespace with one interface `eth0` on
/// bridge `br{link}` of a [`Cluster`]'s switch. Removed (namespace and veth)
/// on drop.
pub struct ClientHost {
    pub ns: NetNs,
    /// The client's address on the link, e.g. "10.77.0.250".
    pub addr: String,
}

impl Cluster {
    /// Adds a client namespace on link `link`'s bridge with address
    /// 10.(77+link).0.250/24 (IPv6 clusters: fd77:LINK::250/64, nodad). The
    /// switch-side port is `cl{link}`.
    pub fn add_client(&self, link: usize) -> ClientHost {
        let ns = NetNs::new(&format!("{}cl", self.prefix));
        let peer = format!("cl{link}");
        sh(&["ip", "link", "add", "eth0", "netns", &ns.name, "type", "veth", "peer", "name", &peer, "netns", &self.switch.name]);
        sh(&["ip", "-n", &self.switch.name, "link", "set", &peer, "master", &format!("br{link}")]);
        sh(&["ip", "-n", &self.switch.name, "link", "set", &peer, "up"]);
        let ipv6 = self.hosts.first().map(|h| h.addrs[link].contains(':')).unwrap_or(false);
        let addr = if ipv6 { link_addr6(link, 249) } else { link_addr(link, 249) };
        if ipv6 {
            sh(&["ip", "-n", &ns.name, "addr", "add", &format!("{addr}/64"), "dev", "eth0", "nodad"]);
        } else {
            sh(&["ip", "-n", &ns.name, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        }
        sh(&["ip", "-n", &ns.name, "link", "set", "eth0", "up"]);
        ClientHost { ns, addr }
    }

    /// The client of link `link` ([`Cluster::add_client`]) hears no ARP
    /// (`on`), as if it were on the far side of a partition from everybody:
    /// the announcements of a takeover do not reach it. `false` undoes it.
    pub fn client_deaf_to_arp(&self, link: usize, on: bool) {
        let sw = &self.switch.name;
        let port = format!("cl{link}");
        if on {
            self.black_hole();
            sh(&["ip", "netns", "exec", sw, "tc", "qdisc", "add", "dev", &port, "clsact"]);
            sh(&["ip", "netns", "exec", sw, "tc", "filter", "add", "dev", &port, "egress", "protocol", "arp", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "bh0"]);
        } else {
            sh(&["ip", "netns", "exec", sw, "tc", "qdisc", "del", "dev", &port, "clsact"]);
        }
    }

    /// Every process whose network namespace is host `i`'s (the agent, the
    /// services it started, ...).
    pub fn host_pids(&self, i: usize) -> Vec<i32> {
        netns_pids(&self.hosts[i].ns.name)
    }

    /// "Crashes" host `i`: SIGKILL of its agent and of every other process in
    /// its namespace (the services the agent started), as close together as
    /// possible. Returns CLOCK_MONOTONIC ns just before the first kill. The
    /// host's addresses stay configured (call [`Cluster::flush_addr`] to
    /// model the reboot).
    pub fn crash(&mut self, i: usize) -> u64 {
        let mut pids = self.host_pids(i);
        let agent = self.agents[i].take();
        if let Some(a) = &agent {
            pids.retain(|p| *p != a.pid());
        }
        // The guard first: a machine that crashes tells nobody.
        if let Some(g) = self.guard_pid(i) {
            unsafe { libc::kill(g, libc::SIGKILL) };
        }
        let t = monotonic_ns();
        if let Some(a) = &agent {
            unsafe { libc::kill(a.pid(), libc::SIGKILL) };
        }
        for p in &pids {
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        if let Some(a) = agent {
            a.kill9();
        }
        t
    }

    /// Removes address `cidr` (e.g. "10.77.0.100/24") from `dev` of host `i`;
    /// true when it was there.
    pub fn flush_addr(&self, i: usize, cidr: &str, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.hosts[i].ns.name, "addr", "del", cidr, "dev", dev])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// True when host `i` has address `ip` (no prefix) configured on any interface.
    pub fn has_addr(&self, i: usize, ip: &str) -> bool {
        let out = Command::new("ip").args(["-n", &self.hosts[i].ns.name, "-o", "addr", "show"]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().any(|w| w.split('/').next() == Some(ip)))
            .unwrap_or(false)
    }
}

/// Processes whose network namespace is the named one (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// One HTTP request of a [`Prober`].
#[derive(Clone, Debug)]
pub struct Sample {
    /// CLOCK_MONOTONIC ns when the connect began.
    pub start_ns: u64,
    /// When the request ended (answer, error or timeout).
    pub end_ns: u64,
    /// The trimmed body of a 200 answer; `Err` says what went wrong.
    pub result: Result<String, String>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// An HTTP client in a network namespace: `GET http://target/` every
/// `period` (a new TCP connection each time, `timeout` for the whole
/// request), on a pool of threads so a request that hangs does not delay the
/// next ones. Every request is recorded as a [`Sample`]. Stops on drop.
pub struct Prober {
    samples: std::sync::Arc<std::sync::Mutex<Vec<Sample>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub period: Duration,
    pub timeout: Duration,
}

impl Prober {
    pub fn start(ns: &str, target: std::net::SocketAddr, period: Duration, timeout: Duration) -> Prober {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let period_ns = period.as_nanos().max(1) as u64;
        let workers = (timeout.as_nanos() as u64 / period_ns + 3) as usize;
        let t0 = monotonic_ns() + 20_000_000;
        let mut threads = Vec::new();
        for w in 0..workers {
            let path = PathBuf::from("/run/netns").join(ns);
            let samples = samples.clone();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    panic!("setns {}: {}", path.display(), std::io::Error::last_os_error());
                }
                drop(file);
                let cycle = period_ns * workers as u64;
                let mut slot = t0 + w as u64 * period_ns;
                while !stop.load(Ordering::Relaxed) {
                    let now = monotonic_ns();
                    if now < slot {
                        std::thread::sleep(Duration::from_nanos((slot - now).min(50_000_000)));
                        continue;
                    }
                    let start_ns = monotonic_ns();
                    let result = http_get(target, timeout);
                    let end_ns = monotonic_ns();
                    samples.lock().unwrap().push(Sample { start_ns, end_ns, result });
                    while slot <= monotonic_ns() {
                        slot += cycle;
                    }
                }
            }));
        }
        Prober { samples, stop, threads, period, timeout }
    }

    /// Every completed request so far, by start time.
    pub fn samples(&self) -> Vec<Sample> {
        let mut v = self.samples.lock().unwrap().clone();
        v.sort_by_key(|s| s.start_ns);
        v
    }

    /// Completed requests that started at or after `t`.
    pub fn since(&self, t: u64) -> Vec<Sample> {
        let mut v: Vec<Sample> = self.samples.lock().unwrap().iter().filter(|s| s.start_ns >= t).cloned().collect();
        v.sort_by_key(|s| s.start_ns);
        v
    }

    /// Waits until the last `n` requests that started after `t` all answered
    /// with `body` (any body when `None`); returns the start time of the first
    /// of them.
    pub fn wait_stable(&self, t: u64, body: Option<&str>, n: usize, timeout: Duration) -> Option<u64> {
        let mut first = None;
        wait_until(timeout, || {
            let v = self.since(t);
            if v.len() < n {
                return false;
            }
            let tail = &v[v.len() - n..];
            if tail.iter().all(|s| matches!(&s.result, Ok(b) if body.is_none_or(|x| b == x))) {
                first = Some(tail[0].start_ns);
                true
            } else {
                false
            }
        });
        first
    }

    pub fn stop(mut self) -> Vec<Sample> {
        self.halt();
        self.samples()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Client-visible outage in a window of samples (sorted by start): from the
/// start of the first failed request to the start of the first successful
/// request after the last failed one. `None` when nothing failed.
pub fn outage(samples: &[Sample]) -> Option<(Duration, usize)> {
    let first_fail = samples.iter().position(|s| !s.ok())?;
    let last_fail = samples.iter().rposition(|s| !s.ok())?;
    let failed = samples.iter().filter(|s| !s.ok()).count();
    let end = samples[last_fail + 1..].iter().find(|s| s.ok()).map(|s| s.start_ns).unwrap_or(samples[last_fail].end_ns);
    Some((Duration::from_nanos(end.saturating_sub(samples[first_fail].start_ns)), failed))
}

/// One `GET /` over a new TCP connection with an overall deadline.
pub fn http_get(target: std::net::SocketAddr, timeout: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + timeout;
    let mut s = std::net::TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("connect: {}", short_err(&e)))?;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    s.set_write_timeout(Some(left())).ok();
    s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n").map_err(|e| format!("write: {}", short_err(&e)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        s.set_read_timeout(Some(left())).ok();
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {}", short_err(&e))),
        }
        if Instant::now() >= deadline {
            return Err("read: timed out".into());
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| "no HTTP header".to_string())?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("status: {status}"));
    }
    Ok(body.trim().to_string())
}

fn short_err(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out".into(),
        std::io::ErrorKind::ConnectionRefused => "refused".into(),
        std::io::ErrorKind::ConnectionReset => "reset".into(),
        _ => e.to_string(),
    }
}

/// The Ethernet address of `ifname` in namespace `ns`, lower case.
pub fn link_mac(ns: &str, ifname: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&sh(&["ip", "-j", "-n", ns, "link", "show", ifname])).unwrap();
    v[0]["address"].as_str().unwrap().to_lowercase()
}

/// The neighbour entry for `ip` on `dev` in namespace `ns`: (lladdr, states).
pub fn neigh_entry(ns: &str, ip: &str, dev: &str) -> Option<(String, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(&sh(&["ip", "-j", "-n", ns, "neigh", "show", ip, "dev", dev])).unwrap();
    let e = v.as_array()?.first()?;
    let ll = e["lladdr"].as_str()?.to_lowercase();
    let states = e["state"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    Some((ll, states))
}
