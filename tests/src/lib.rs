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
            eprintln!("SKIPPED: kernel test needs root with netns support: {w}");
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
        let dir = std::env::temp_dir().join(format!("baton-{prefix}"));
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

    /// Starts the agent of host `i` and waits until it is running.
    pub fn start(&mut self, i: usize) {
        let cfg = self.config_path(i);
        let log = self.node_dir(i).join("agent.log");
        let a = Agent::spawn(&self.hosts[i].ns, &cfg, &log);
        self.agents[i] = Some(a);
        let sock = self.node_dir(i).join("run").join(format!("{}.sock", self.cluster_name));
        wait_until(Duration::from_secs(20), || {
            if let Some(a) = self.agents[i].as_mut() {
                if let Some(st) = a.child.try_wait().unwrap() {
                    panic!("agent {i} exited early ({st}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
                }
            }
            sock.exists()
        })
        .unwrap_or_else(|| panic!("agent {i} did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    }

    pub fn start_all(&mut self) {
        for i in 0..self.hosts.len() {
            self.start(i);
        }
    }

    /// SIGKILL the agent of host `i`; returns the CLOCK_MONOTONIC ns just before.
    pub fn kill(&mut self, i: usize) -> u64 {
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

    /// Events (events.jsonl) of host `i`.
    pub fn events(&self, i: usize) -> Vec<serde_json::Value> {
        let p = self.node_dir(i).join("state").join("events.jsonl");
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
    /// The membership snapshot (`state/cluster.json`) of host `i`.
    pub fn membership(&self, i: usize) -> serde_json::Value {
        std::fs::read_to_string(self.node_dir(i).join("state").join("cluster.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits until every running agent is Joined and all follow the same view.
    pub fn wait_all_joined(&self, timeout: Duration) -> Duration {
        let running: Vec<usize> = (0..self.hosts.len()).filter(|i| self.agents[*i].is_some()).collect();
        let r = wait_until(timeout, || {
            let ms: Vec<serde_json::Value> = running.iter().map(|&i| self.membership(i)).collect();
            ms.iter().all(|m| m["my_state"] == "joined")
                && ms.windows(2).all(|w| w[0]["view"] == w[1]["view"])
                && ms.iter().all(|m| m["transitions"].as_array().map(|t| t.is_empty()).unwrap_or(false))
        });
        r.unwrap_or_else(|| {
            let dump: Vec<String> = running.iter().map(|&i| format!("{}: {}", self.hosts[i].name, self.membership(i))).collect();
            panic!("not every node joined within {timeout:?}:\n{}", dump.join("\n"))
        })
    }

    /// Lines of host `i`'s agent log that contain every one of `needles`.
    pub fn log_lines(&self, i: usize, needles: &[&str]) -> Vec<String> {
        self.agent_log(i).lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_string).collect()
    }
}
