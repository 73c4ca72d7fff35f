//! `cargo xtask bench detect`: failure-detection latency and false alarms of
//! baton beside keepalived (VRRP, same advert interval, unicast peers), in the
//! same namespaces on this machine, in one run.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_tests::{monotonic_ns, wait_until, Cluster};

/// Options of `cargo xtask bench detect` (see the clap definition in main.rs).
#[derive(Debug, Clone)]
pub struct DetectOpts {
    /// Number of kills to measure.
    pub kills: u32,
    /// Length of the soak phase, in seconds.
    pub soak_secs: u64,
    /// Length of the soak under `stress-ng --cpu 2 --io 2 --vm 1`, in
    /// minutes (0: skipped).
    pub stress_minutes: f64,
    /// Heartbeat interval, in milliseconds.
    pub interval_ms: u64,
    /// Missed heartbeats before declaring a peer dead.
    pub misses: u32,
}

/// A deterministic pseudo-random sequence (the phase of each kill relative to
/// the heartbeat clock), so two runs kill at the same offsets.
struct Lcg(u64);
impl Lcg {
    fn next_below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// The p-th percentile (nearest rank) of `v`; NaN when empty.
pub(crate) fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = (p / 100.0 * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Lines keepalived writes to its notify FIFO, with the monotonic time we read
/// them.
#[derive(Clone, Default)]
struct FifoLog(Arc<Mutex<Vec<(u64, String)>>>);

impl FifoLog {
    fn follow(path: PathBuf) -> FifoLog {
        let log = FifoLog::default();
        let l2 = log.clone();
        std::thread::spawn(move || loop {
            // Blocks until keepalived opens the FIFO; EOF when it dies.
            let Ok(f) = File::open(&path) else { return };
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                l2.0.lock().unwrap().push((monotonic_ns(), line));
            }
        });
        log
    }
    /// First line after `t` containing `needle`.
    fn first_after(&self, t: u64, needle: &str) -> Option<u64> {
        self.0.lock().unwrap().iter().find(|(ts, l)| *ts >= t && l.contains(needle)).map(|(ts, _)| *ts)
    }
    fn last_state(&self) -> Option<String> {
        self.0.lock().unwrap().last().map(|(_, l)| l.clone())
    }
    fn count_between(&self, a: u64, b: u64, needle: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|(ts, l)| *ts >= a && *ts <= b && l.contains(needle)).count()
    }
}

struct Keepalived {
    children: Vec<Option<Child>>,
    fifos: Vec<FifoLog>,
    dir: PathBuf,
}

impl Keepalived {
    /// keepalived on host 0 (BACKUP, priority 100) and host 1 (priority 200,
    /// the master), VRRPv3 with unicast peers on link 0, advert interval =
    /// baton's heartbeat interval. Its own defaults otherwise: this is what a
    /// keepalived user gets.
    fn setup(c: &Cluster, interval_ms: u64) -> Result<Keepalived> {
        let dir = c.dir.join("keepalived");
        std::fs::create_dir_all(&dir)?;
        let mut fifos = Vec::new();
        for i in 0..2 {
            let fifo = dir.join(format!("fifo{i}"));
            let cpath = std::ffi::CString::new(fifo.to_str().unwrap())?;
            if unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) } != 0 {
                bail!("mkfifo {}: {}", fifo.display(), std::io::Error::last_os_error());
            }
            let peer = 1 - i;
            let conf = format!(
                "global_defs {{\n  router_id bench{i}\n  vrrp_version 3\n  notify_fifo {fifo}\n}}\n\
                 vrrp_instance VI_1 {{\n  state BACKUP\n  interface ic0\n  virtual_router_id 51\n  priority {prio}\n  \
                 advert_int {adv}\n  unicast_src_ip {src}\n  unicast_peer {{\n    {dst}\n  }}\n  \
                 virtual_ipaddress {{\n    10.77.0.200/24\n  }}\n}}\n",
                fifo = fifo.display(),
                prio = if i == 0 { 100 } else { 200 },
                adv = interval_ms as f64 / 1000.0,
                src = c.hosts[i].addrs[0],
                dst = c.hosts[peer].addrs[0],
            );
            std::fs::write(dir.join(format!("k{i}.conf")), conf)?;
            fifos.push(FifoLog::follow(fifo));
        }
        Ok(Keepalived { children: vec![None, None], fifos, dir })
    }

    fn start(&mut self, c: &Cluster, i: usize) {
        self.children[i] = Some(crate::bench_failover::spawn_keepalived(&self.dir, i, &c.hosts[i].ns.name));
    }

    /// SIGKILL keepalived and its VRRP child (the whole process group).
    fn kill(&mut self, i: usize) -> u64 {
        let mut ch = self.children[i].take().expect("running");
        let t = monotonic_ns();
        unsafe { libc::kill(-(ch.id() as i32), libc::SIGKILL) };
        let _ = ch.wait();
        t
    }

    /// Host 1 is MASTER and host 0 BACKUP.
    fn settled(&self) -> bool {
        matches!(self.fifos[1].last_state(), Some(s) if s.contains("MASTER"))
            && matches!(self.fifos[0].last_state(), Some(s) if s.contains("BACKUP"))
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        for ch in self.children.iter_mut().flatten() {
            unsafe { libc::kill(-(ch.id() as i32), libc::SIGKILL) };
            let _ = ch.wait();
        }
        // Unblock FIFO readers that wait for a writer.
        for i in 0..2 {
            let _ = std::fs::OpenOptions::new().write(true).custom_flags_nonblock().open(self.dir.join(format!("fifo{i}")));
        }
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}
impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// The agents of `c` that exited, or halted and started a new life, since
/// `lives` (each running agent's incarnation) was taken: each one is a
/// failure of the bench's figures, whatever the phase (issue 13: an agent
/// of the soak's pair that exited while the bench counted 0 false alarms).
fn casualties(c: &mut Cluster, lives: &[Option<u64>], phase: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..c.hosts.len() {
        let Some(a) = c.agents[i].as_mut() else { continue };
        let why = match a.child.try_wait() {
            Ok(Some(st)) => Some(format!("exited ({st})")),
            _ if c.incarnation(i) != lives[i] => Some(format!(
                "halted and started a new life (incarnation {:?} -> {:?}): {:?}",
                lives[i],
                c.incarnation(i),
                c.log_lines(i, &["clustering halted"]).last()
            )),
            _ => None,
        };
        if let Some(why) = why {
            out.push(format!("{phase}: {} {}: {why}", c.prefix, c.hosts[i].name));
        }
    }
    out
}

/// Each host's current agent life.
fn lives(c: &Cluster) -> Vec<Option<u64>> {
    (0..c.hosts.len()).map(|i| c.incarnation(i)).collect()
}

/// `stress-ng --cpu 2 --io 2 --vm 1` for `secs`; killed (its process group)
/// on drop.
struct Stress(Child);

impl Stress {
    fn start(secs: u64) -> Result<Stress> {
        use std::os::unix::process::CommandExt;
        let child = Command::new("stress-ng")
            .args(["--cpu", "2", "--io", "2", "--vm", "1", "--timeout", &format!("{secs}s"), "--quiet"])
            .process_group(0)
            .spawn()
            .context("starting stress-ng (run `cargo xtask setup`)")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Stress(child))
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGINT) };
        if wait_until(Duration::from_secs(10), || self.0.try_wait().ok().flatten().is_some()).is_none() {
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

struct StressResult {
    /// Silences of a live node confirmed (a forced leave), plus agents
    /// that halted or exited.
    false_forced_leaves: usize,
    /// Every `peer_silent`/`link_silent` about a live node (held, then
    /// averted or confirmed).
    false_alarms: usize,
    /// Detection latency of kills made under the same load.
    detect: Vec<f64>,
    sender_max_gap_us: u64,
    failures: Vec<String>,
}

/// The soak under `stress-ng --cpu 2 --io 2 --vm 1`, without any tuning:
/// three nodes at the bench's heartbeat setting, started once the load runs
/// (so their start-up is under load too), watched for `stress_minutes`;
/// then `kills` SIGKILLs of node 3, each restarted under the same load.
fn stress_soak(opts: &DetectOpts, kills: u32, rng: &mut Lcg) -> Result<StressResult> {
    let secs = (opts.stress_minutes * 60.0).round() as u64;
    // The load outlives the phase by a wide margin; it ends on drop.
    let _stress = Stress::start(secs + 600)?;
    let t0 = monotonic_ns();
    let mut c = Cluster::new("strs", 3, 1, opts.interval_ms as u32, opts.misses);
    c.start_all();
    c.wait_all_joined(Duration::from_secs(60));
    let mut failures = Vec::new();
    let mut lv = lives(&c);
    let t_end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < t_end {
        std::thread::sleep(Duration::from_secs(1));
        let left = t_end.saturating_duration_since(Instant::now()).as_secs();
        eprint!("\r  soak under stress-ng --cpu 2 --io 2 --vm 1: {left:>4} s left   ");
    }
    eprintln!();
    let t1 = monotonic_ns();
    failures.extend(casualties(&mut c, &lv, "stress soak"));
    let count = |c: &Cluster, a: u64, b: u64, kinds: &[&str], except: Option<u32>| -> usize {
        (0..c.hosts.len())
            .map(|i| {
                c.events(i)
                    .iter()
                    .filter(|e| {
                        let t = e["agent_ns"].as_u64().unwrap_or(0);
                        t >= a && t <= b && kinds.iter().any(|k| e["event"] == *k) && except.is_none_or(|n| e["node"] != n)
                    })
                    .count()
            })
            .sum()
    };
    let mut false_alarms = count(&c, t0, t1, &["peer_silent", "link_silent"], None);
    let mut confirmed = count(&c, t0, t1, &["silence_confirmed"], None);
    let mut sender_max_gap_us = 0;
    for i in 0..3 {
        sender_max_gap_us = sender_max_gap_us.max(c.agent_status(i).map(|a| a.sender.max_gap_us).unwrap_or(0));
    }
    // Kills under the same load: node 3, restarted each time.
    let mut detect = Vec::new();
    for k in 0..kills {
        if !failures.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300 + rng.next_below(opts.interval_ms)));
        let a = monotonic_ns();
        let t = c.kill(2);
        let e = c.wait_event(0, Duration::from_secs(10), |e| {
            e["event"] == "peer_silent" && e["node"] == 3 && e["agent_ns"].as_u64().unwrap_or(0) > t
        });
        match e {
            Some(e) => detect.push((e["agent_ns"].as_u64().unwrap() - t) as f64 / 1e6),
            None => {
                // A kill never reported counts as its timeout.
                detect.push(10_000.0);
                failures.push(format!("stress kill {k}: node3's silence never reported at node1"));
            }
        }
        eprint!("\r  kill under stress {}/{kills}: {:.1} ms   ", k + 1, detect.last().unwrap());
        c.start(2);
        c.wait_all_joined(Duration::from_secs(60));
        let b = monotonic_ns();
        // About the two live nodes only: node 3 was really killed.
        false_alarms += count(&c, a, b, &["peer_silent", "link_silent"], Some(3));
        confirmed += count(&c, a, b, &["silence_confirmed"], Some(3));
        lv[2] = c.incarnation(2);
        failures.extend(casualties(&mut c, &lv, &format!("stress kill {k}")));
    }
    if kills > 0 {
        eprintln!();
    }
    let false_forced_leaves = confirmed + failures.iter().filter(|f| f.contains("exited") || f.contains("halted")).count();
    Ok(StressResult { false_forced_leaves, false_alarms, detect, sender_max_gap_us, failures })
}

fn baton_kills(opts: &DetectOpts, rng: &mut Lcg, failures: &mut Vec<String>) -> Result<Vec<f64>> {
    let mut c = Cluster::new("bdet", 2, 1, opts.interval_ms as u32, opts.misses);
    c.start_all();
    c.wait_all_up(Duration::from_secs(10));
    let mut lv = lives(&c);
    let mut lat = Vec::new();
    for k in 0..opts.kills {
        std::thread::sleep(Duration::from_millis(100 + rng.next_below(opts.interval_ms)));
        let t = c.kill(1);
        let e = c
            .wait_event(0, Duration::from_secs(5), |e| {
                e["event"] == "peer_silent" && e["node"] == 2 && e["agent_ns"].as_u64().unwrap_or(0) > t
            })
            .with_context(|| format!("kill {k}: baton never reported the peer silent"))?;
        let ms = (e["agent_ns"].as_u64().unwrap() - t) as f64 / 1e6;
        lat.push(ms);
        eprint!("\r  baton kill {}/{}: {ms:.1} ms   ", k + 1, opts.kills);
        c.start(1);
        c.wait_all_up(Duration::from_secs(10));
        lv[1] = c.incarnation(1);
        failures.extend(casualties(&mut c, &lv, &format!("kill {k}")));
    }
    eprintln!();
    Ok(lat)
}

fn keepalived_kills(opts: &DetectOpts, rng: &mut Lcg) -> Result<Vec<f64>> {
    let c = Cluster::new("kdet", 2, 1, opts.interval_ms as u32, opts.misses);
    let mut k = Keepalived::setup(&c, opts.interval_ms)?;
    k.start(&c, 0);
    k.start(&c, 1);
    wait_until(Duration::from_secs(15), || k.settled()).context("keepalived did not settle (host 1 MASTER, host 0 BACKUP)")?;
    let mut lat = Vec::new();
    for n in 0..opts.kills {
        std::thread::sleep(Duration::from_millis(100 + rng.next_below(opts.interval_ms)));
        let t = k.kill(1);
        wait_until(Duration::from_secs(10), || k.fifos[0].first_after(t, "MASTER").is_some())
            .with_context(|| format!("kill {n}: keepalived backup never became MASTER"))?;
        let ms = (k.fifos[0].first_after(t, "MASTER").unwrap() - t) as f64 / 1e6;
        lat.push(ms);
        eprint!("\r  keepalived kill {}/{}: {ms:.1} ms   ", n + 1, opts.kills);
        k.start(&c, 1);
        wait_until(Duration::from_secs(15), || k.settled()).context("keepalived did not settle after restart")?;
    }
    eprintln!();
    Ok(lat)
}

fn read_sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/"))).unwrap_or_default().trim().to_string()
}
fn write_sysctl(name: &str, v: &str) {
    let _ = std::fs::write(format!("/proc/sys/{}", name.replace('.', "/")), v);
}

/// (sum run_time_ns, sum run_cnt) of every loaded `baton_xdp`.
fn xdp_stats() -> (u64, u64) {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output();
    let Ok(out) = out else { return (0, 0) };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut t = (0, 0);
    for p in v.as_array().into_iter().flatten() {
        if p["name"] == "baton_xdp" {
            t.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            t.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    t
}

struct SoakResult {
    baton_false: usize,
    baton_false_no_rt: usize,
    keepalived_false: usize,
    /// Agents of the real-time pair that exited or halted (from its start).
    failures: Vec<String>,
    xdp_ns: f64,
    late_ticks: String,
}

fn soak(opts: &DetectOpts) -> Result<SoakResult> {
    let mut c = Cluster::new("soak", 2, 1, opts.interval_ms as u32, opts.misses);
    c.start_all();
    c.wait_all_up(Duration::from_secs(10));
    // From its start: an exit or halt of this pair in any phase (also
    // while the second pair starts) is a failure of the soak's figures.
    let lv = lives(&c);
    // The same, with the heartbeat sender at normal priority (realtime_priority = 0).
    let mut nort = Cluster::new("soakn", 2, 1, opts.interval_ms as u32, opts.misses);
    nort.realtime_priority = 0;
    nort.start_all();
    nort.wait_all_up(Duration::from_secs(10));
    let mut k = Keepalived::setup(&c, opts.interval_ms)?;
    k.start(&c, 0);
    k.start(&c, 1);
    wait_until(Duration::from_secs(15), || k.settled()).context("keepalived did not settle")?;
    std::thread::sleep(Duration::from_secs(1));

    let stats_was = read_sysctl("kernel.bpf_stats_enabled");
    write_sysctl("kernel.bpf_stats_enabled", "1");
    let (t0_ns, t0_cnt) = xdp_stats();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let hogs: Vec<Child> = (0..cpus * 2)
        .map(|_| Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("spawn hog"))
        .collect();
    let start = monotonic_ns();
    let t_end = Instant::now() + Duration::from_secs(opts.soak_secs);
    while Instant::now() < t_end {
        std::thread::sleep(Duration::from_secs(1));
        let left = t_end.saturating_duration_since(Instant::now()).as_secs();
        eprint!("\r  soak with {} CPU hogs at normal priority: {left:>4} s left   ", hogs.len());
    }
    let end = monotonic_ns();
    for mut h in hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
    eprintln!();
    let (t1_ns, t1_cnt) = xdp_stats();
    write_sysctl("kernel.bpf_stats_enabled", if stats_was.is_empty() { "0" } else { &stats_was });

    let false_alarms = |c: &Cluster| -> usize {
        (0..2)
            .map(|i| {
                c.events(i)
                    .iter()
                    .filter(|e| {
                        let t = e["agent_ns"].as_u64().unwrap_or(0);
                        t >= start && t <= end && (e["event"] == "peer_silent" || e["event"] == "link_silent")
                    })
                    .count()
            })
            .sum()
    };
    let baton_false = false_alarms(&c);
    let baton_false_no_rt = false_alarms(&nort);
    // keepalived: the backup taking over, or the master stepping down.
    let keepalived_false =
        k.fifos[0].count_between(start, end, "MASTER") + k.fifos[1].count_between(start, end, "BACKUP") + k.fifos[1].count_between(start, end, "FAULT");
    std::thread::sleep(Duration::from_millis(1100));
    // An agent that halted (e.g. after a false silence: no quorum) has
    // removed its status; say so instead of failing the whole bench.
    let late: Vec<String> = (0..2)
        .map(|i| {
            c.agent_status(i).map(|a| a.sender.late_ticks.to_string()).unwrap_or_else(|| "agent exited".to_string())
        })
        .collect();
    let xdp_ns = if t1_cnt > t0_cnt { (t1_ns - t0_ns) as f64 / (t1_cnt - t0_cnt) as f64 } else { f64::NAN };
    let failures = casualties(&mut c, &lv, "soak");
    Ok(SoakResult { baton_false, baton_false_no_rt, keepalived_false, xdp_ns, late_ticks: late.join(","), failures })
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?)
}

/// CPU use of one agent with 8 peers, idle, over `secs`.
fn idle_cpu(opts: &DetectOpts, secs: u64, failures: &mut Vec<String>) -> Result<f64> {
    let mut c = Cluster::new("idle", 9, 1, opts.interval_ms as u32, opts.misses);
    c.start_all();
    c.wait_all_up(Duration::from_secs(20));
    let lv = lives(&c);
    std::thread::sleep(Duration::from_secs(1));
    let pid = c.agents[0].as_ref().unwrap().child.id();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let a = proc_cpu_ticks(pid).context("reading /proc/PID/stat")?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let b = proc_cpu_ticks(pid).context("reading /proc/PID/stat")?;
    failures.extend(casualties(&mut c, &lv, "idle"));
    Ok((b - a) as f64 / hz / t.elapsed().as_secs_f64() * 100.0)
}

fn selftest_ns() -> f64 {
    let out = Command::new(baton_tests::baton_bin()).args(["selftest", "--json", "--repeat", "1000000"]).output();
    out.ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v["xdp_ns_per_heartbeat"].as_f64())
        .unwrap_or(f64::NAN)
}

pub fn detect(opts: &DetectOpts) -> Result<()> {
    if !Path::new("/usr/sbin/keepalived").exists() {
        bail!("keepalived is not installed (run `cargo xtask setup`)");
    }
    let mut rng = Lcg(0x5eed_0000_0000_0001);
    let bound = opts.interval_ms as f64 * opts.misses as f64;
    eprintln!(
        "bench detect: 2 nodes in network namespaces, heartbeat/advert interval {} ms, {} misses (bound {bound} ms), {} kills, {} s soak, {} min under stress-ng",
        opts.interval_ms, opts.misses, opts.kills, opts.soak_secs, opts.stress_minutes
    );
    let stress_kills = if opts.stress_minutes > 0.0 { (opts.kills / 3).max(5) } else { 0 };
    let mut failures = Vec::new();
    eprintln!("[1/6] baton: SIGKILL of the peer's agent");
    let b = baton_kills(opts, &mut rng, &mut failures)?;
    eprintln!("[2/6] keepalived: SIGKILL of the master");
    let mut rng = Lcg(0x5eed_0000_0000_0001);
    let k = keepalived_kills(opts, &mut rng)?;
    eprintln!("[3/6] soak: baton and keepalived side by side under CPU hogs");
    let s = soak(opts)?;
    failures.extend(s.failures.iter().cloned());
    let stress = if opts.stress_minutes > 0.0 {
        eprintln!(
            "[4/6] soak under stress-ng --cpu 2 --io 2 --vm 1: 3 nodes started under it, {} min, then {stress_kills} kills under it",
            opts.stress_minutes
        );
        let mut rng = Lcg(0x5eed_0000_0000_0002);
        let r = stress_soak(opts, stress_kills, &mut rng)?;
        failures.extend(r.failures.iter().cloned());
        Some(r)
    } else {
        eprintln!("[4/6] soak under stress-ng: skipped (--stress-minutes 0)");
        None
    };
    eprintln!("[5/6] XDP cost in a tight loop (BPF_PROG_TEST_RUN)");
    let st_ns = selftest_ns();
    eprintln!("[6/6] agent CPU at idle with 8 peers (10 s)");
    let idle = idle_cpu(opts, 10, &mut failures)?;

    let mut t = BTreeMap::new();
    t.insert("baton_detect_p50_ms", percentile(&b, 50.0));
    t.insert("baton_detect_p99_ms", percentile(&b, 99.0));
    t.insert("keepalived_detect_p50_ms", percentile(&k, 50.0));
    t.insert("keepalived_detect_p99_ms", percentile(&k, 99.0));
    println!();
    println!("failure detection, interval {} ms × {} misses (target p99 ≤ {} ms)", opts.interval_ms, opts.misses, bound + 5.0);
    println!("{:<28} {:>12} {:>12} {:>10}", "", "baton", "keepalived", "ratio");
    let row = |name: &str, a: f64, b: f64| println!("{name:<28} {a:>12.1} {b:>12.1} {:>9.1}x", b / a);
    row("detect p50 (ms)", percentile(&b, 50.0), percentile(&k, 50.0));
    row("detect p99 (ms)", percentile(&b, 99.0), percentile(&k, 99.0));
    println!("{:<28} {:>12.1} {:>12.1}", "detect min (ms)", percentile(&b, 0.0), percentile(&k, 0.0));
    println!("{:<28} {:>12.1} {:>12.1}", "detect max (ms)", percentile(&b, 100.0), percentile(&k, 100.0));
    println!("{:<28} {:>12} {:>12}", format!("false alarms ({} s soak)", opts.soak_secs), s.baton_false, s.keepalived_false);
    println!("{:<28} {:>12}", "  same, sender not RT", s.baton_false_no_rt);
    println!("{:<28} {:>12.0}", "XDP ns/heartbeat (live)", s.xdp_ns);
    println!("{:<28} {:>12.0}", "XDP ns/heartbeat (test_run)", st_ns);
    println!("{:<28} {:>12.2}", "agent idle CPU %, 8 peers", idle);
    println!("{:<28} {:>12}", "baton sender late ticks", s.late_ticks);
    if let Some(r) = &stress {
        println!("under stress-ng --cpu 2 --io 2 --vm 1, {} min, 3 nodes, no tuning:", opts.stress_minutes);
        println!("{:<28} {:>12}", "  false forced leaves", r.false_forced_leaves);
        println!("{:<28} {:>12}", "  false alarms (held)", r.false_alarms);
        println!("{:<28} {:>12.1}", "  detect p50 (ms)", percentile(&r.detect, 50.0));
        println!("{:<28} {:>12.1}", "  detect p99 (ms)", percentile(&r.detect, 99.0));
        println!("{:<28} {:>12.1}", "  sender max gap (ms)", r.sender_max_gap_us as f64 / 1000.0);
    }
    for f in &failures {
        println!("FAILED: {f}");
    }
    let json = serde_json::json!({
        "baton_detect_p50_ms": round1(percentile(&b, 50.0)),
        "baton_detect_p99_ms": round1(percentile(&b, 99.0)),
        "baton_false_alarms": s.baton_false,
        "baton_false_alarms_sender_not_rt": s.baton_false_no_rt,
        "keepalived_detect_p50_ms": round1(percentile(&k, 50.0)),
        "keepalived_detect_p99_ms": round1(percentile(&k, 99.0)),
        "keepalived_false_alarms": s.keepalived_false,
        "xdp_ns_per_heartbeat": round1(s.xdp_ns),
        "agent_idle_cpu_pct": (idle * 100.0).round() / 100.0,
    });
    let mut json = json;
    if let Some(r) = &stress {
        json["stress_minutes"] = serde_json::json!(opts.stress_minutes);
        json["baton_false_forced_leaves_stress"] = serde_json::json!(r.false_forced_leaves);
        json["baton_false_alarms_stress"] = serde_json::json!(r.false_alarms);
        json["baton_detect_stress_p99_ms"] = serde_json::json!(round1(percentile(&r.detect, 99.0)));
        json["baton_sender_max_gap_stress_ms"] = serde_json::json!(round1(r.sender_max_gap_us as f64 / 1000.0));
    }
    json["baton_agents_failed"] = serde_json::json!(failures.len());
    println!("{json}");
    if !failures.is_empty() {
        bail!("{} agent(s) exited, halted or missed a kill: the figures above count them as failures", failures.len());
    }
    Ok(())
}

/// `x` rounded to one decimal (for the JSON lines).
pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
