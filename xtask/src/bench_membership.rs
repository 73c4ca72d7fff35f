//! `cargo xtask bench membership`: how fast a cluster of N agents in network
//! namespaces forms when every node starts at once, how fast a killed node's
//! forced leave is processed everywhere, and how many control-channel
//! messages one membership change costs, with S3 subgroup leaders and without
//! them (`[membership] subgroup_size = 1`: every member is its own subgroup).
//!
//! Per cluster size N, three clusters are run, one after the other:
//!
//! * **timing** (the agent's defaults: subgroups of 4, resend 50 ms, formation
//!   wait 500 ms): all N agents are spawned at once and the bench polls every
//!   node's `state/cluster.json` until all say `joined`, follow the same view
//!   and have no transition left (`join_all_ms`, from the first spawn). Then,
//!   `--leaves` times, one non-master agent is SIGKILLed and the bench polls
//!   until every survivor shows it `inactive` with no transition left
//!   (`forced_leave_ms`, from the kill; it includes the failure detection,
//!   interval × misses); the node is restarted and rejoins before the next kill.
//! * **counts, with and without subgroups**: the same, with
//!   `resend_ms = --count-resend-ms` (and `form_ms` three times that, so that
//!   followers do not take the quiet master for dead). The periodic reports
//!   and state broadcasts (every resend period) then barely overlap the
//!   change being counted, and S3 retransmits nothing in a loss-free change
//!   that completes within one period. The agents' counters in cluster.json
//!   (`stats.gmp_messages_sent`: S3 messages; `stats.messages_sent`: every
//!   control-channel message, S3 included) are summed over the survivors
//!   before the kill and after the forced leave settled: the difference is
//!   what that one change cost. The agent rewrites cluster.json only when
//!   its state changes, so the counters are those of each node's last state
//!   change: the windows are [last write before the kill, last write of the
//!   forced leave]; the periodic traffic that can fall in them is bounded
//!   and printed.
//!
//! `BATON_BENCH_BIN=/path/to/baton` runs that agent binary instead of the
//! release build (to compare two builds on the same machine state; the
//! release build is then not made). `BATON_BENCH_IDLE_ONLY=1` runs only the
//! idle agent with 8 peers (per-thread CPU and wake-ups printed;
//! `BATON_BENCH_IDLE_S`: its window, `BATON_BENCH_IDLE_HOLD_S`: seconds to
//! keep the cluster after it, for `perf`; docs/datapath.md, "Idle cost").
//!
//! The final JSON line: `join_all_ms`, `idle_cpu_pct_32` (the whole joined,
//! idle 32-node cluster: all its agents' CPU over 3 s, a second after the
//! join, in percent of one CPU; null without a size of 32),
//! `idle_cpu_pct_agent_8peers` (one agent, the master, of a joined idle
//! 9-node cluster at `--interval-ms`, over 10 s, run after the sizes) and `forced_leave_ms` from the timing
//! clusters (medians of the forced leaves), `msgs_per_change` and
//! `msgs_per_change_without_subgroups`: S3 messages of one forced leave (the
//! medians of the count clusters; the table also shows every message).
//!
//! The heartbeat interval is `--interval-ms` (10) and `--interval-ms-32` (20)
//! for N ≥ 32: a joined 32-node cluster at 10 ms costs about one of this
//! machine's two CPUs at idle. Each cluster starts only when the machine is
//! quiet (a SCHED_FIFO probe thread per CPU saw no wake-up later than 5 ms
//! for a second): creating and deleting network namespaces stalls real-time
//! threads here for tens of ms, more than a 30 ms silence bound. A cluster
//! whose agents halt (or do not converge) is reported as a failure (the JSON's
//! `failed_attempts`, and the command fails); with `--attempts` above its
//! default of 1 it is also retried on a new cluster, so that the other
//! figures can still be measured, but a retry never hides the failure. The
//! probe's stalls and the false `peer_silent` events are printed with it.
//! A failed cluster's node directories (agent logs, configuration,
//! `state/`: events.jsonl, cluster.json) are copied to
//! `<target>/bench-membership-failed/<cluster>-<label>-n<N>/` before the
//! cluster is removed, and the failure says where, with the first halt of
//! each node that halted (time, reason, the `path=` of a `ClusterLost`,
//! and the critical failure logged before a `LocalFailure`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bench::round1;
use anyhow::{bail, Context, Result};
use baton_tests::state::{ClusterSnapshot, NodeState, StateFile, StateName};
use baton_tests::{monotonic_ns, Agent, Cluster};
use serde_json::Value;

/// Options of `cargo xtask bench membership` (see the clap definition in main.rs).
#[derive(Debug, Clone)]
pub struct MembershipOpts {
    /// Cluster sizes.
    pub sizes: Vec<usize>,
    /// Forced leaves measured per cluster.
    pub leaves: u32,
    /// Heartbeat interval, in milliseconds.
    pub interval_ms: u64,
    /// Heartbeat interval for clusters of 32 nodes or more.
    pub interval_ms_32: u64,
    /// Missed heartbeats before a peer is declared dead.
    pub misses: u32,
    /// Members per S3 subgroup ("with subgroups").
    pub subgroup_size: usize,
    /// `membership.resend_ms` of the message-count clusters.
    pub count_resend_ms: u32,
    /// Attempts per cluster before its numbers are reported missing.
    pub attempts: u32,
}

impl MembershipOpts {
    fn interval_for(&self, n: usize) -> u64 {
        if n >= 32 {
            self.interval_ms_32
        } else {
            self.interval_ms
        }
    }
}

/// How often every node's cluster.json is read: a sweep reads N files, so
/// it is slower for big clusters, to leave the CPUs to the agents.
fn poll_interval(n: usize) -> Duration {
    Duration::from_millis((n as u64 / 4).max(2))
}

/// CPU time this process (the bench: the poller and the probe) used so far, in seconds.
fn self_cpu_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A SCHED_FIFO thread per CPU (the heartbeat sender's priority) that wakes
/// every millisecond on absolute deadlines and records how late it woke:
/// what a heartbeat sender suffers from the machine (a non-preemptible
/// kernel, a vCPU descheduled by the host), independent of the agent.
struct Probe {
    stop: Arc<AtomicBool>,
    /// Wake-ups later than STALL_MS: (cpu, CLOCK_MONOTONIC ns of the deadline, ms late).
    stalls: Arc<Mutex<Vec<Stall>>>,
    max_us: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const STALL_MS: f64 = 10.0;
/// The machine counts as quiet when no probe wake-up was later than this for a second.
const QUIET_MS: f64 = 5.0;

impl Probe {
    fn start() -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let stalls = Arc::new(Mutex::new(Vec::new()));
        let max_us = Arc::new(AtomicU64::new(0));
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = (0..cpus)
            .map(|cpu| {
                let (stop, stalls, max_us) = (stop.clone(), stalls.clone(), max_us.clone());
                std::thread::spawn(move || {
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(cpu, &mut set);
                        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                        let p = libc::sched_param { sched_priority: 10 };
                        libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &p);
                    }
                    let mut next = monotonic_ns();
                    while !stop.load(Ordering::Relaxed) {
                        next += 1_000_000;
                        let ts = libc::timespec { tv_sec: (next / 1_000_000_000) as i64, tv_nsec: (next % 1_000_000_000) as i64 };
                        unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) };
                        let now = monotonic_ns();
                        let late = now.saturating_sub(next);
                        max_us.fetch_max(late / 1000, Ordering::Relaxed);
                        if late as f64 / 1e6 > STALL_MS {
                            stalls.lock().unwrap().push((cpu, next, late as f64 / 1e6));
                        }
                        if now > next + 1_000_000 {
                            next = now;
                        }
                    }
                })
            })
            .collect();
        Probe { stop, stalls, max_us, threads }
    }
    /// (largest lateness in ms, stalls) since the last call.
    fn take(&self) -> (f64, Vec<Stall>) {
        let max = self.max_us.swap(0, Ordering::Relaxed) as f64 / 1000.0;
        (max, std::mem::take(&mut *self.stalls.lock().unwrap()))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Every node's cluster.json, re-parsed only when its bytes changed.
struct Snapshots {
    paths: Vec<PathBuf>,
    raw: Vec<Vec<u8>>,
    val: Vec<Option<ClusterSnapshot>>,
}

impl Snapshots {
    fn new(c: &Cluster) -> Snapshots {
        let n = c.hosts.len();
        Snapshots {
            paths: (0..n).map(|i| ClusterSnapshot::path(&c.state_dir(i))).collect(),
            raw: vec![Vec::new(); n],
            val: vec![None; n],
        }
    }
    fn refresh(&mut self, which: &[usize]) {
        for &i in which {
            let bytes = std::fs::read(&self.paths[i]).unwrap_or_default();
            if bytes != self.raw[i] {
                self.val[i] = serde_json::from_slice(&bytes).ok();
                self.raw[i] = bytes;
            }
        }
    }
    fn forget(&mut self, i: usize) {
        self.raw[i].clear();
        self.val[i] = None;
    }
    /// When `cluster.json` of node `i` was last written, CLOCK_MONOTONIC ns
    /// (from its mtime: CLOCK_REALTIME, coarse, one jiffy).
    fn written_ns(&self, i: usize) -> Option<u64> {
        let m = std::fs::metadata(&self.paths[i]).ok()?.modified().ok()?;
        let real = m.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128;
        Some((real - realtime_minus_monotonic()).max(0) as u64)
    }
    /// (messages_sent, gmp_messages_sent, changes_committed) summed over `which`.
    fn counters(&self, which: &[usize]) -> Counters {
        let mut c = Counters::default();
        for &i in which {
            let s = self.val[i].as_ref().map(|m| m.stats).unwrap_or_default();
            c.total += s.messages_sent;
            c.gmp += s.gmp_messages_sent;
            c.changes = c.changes.max(s.changes_committed);
        }
        c
    }
}

fn realtime_minus_monotonic() -> i128 {
    let mut rt = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut rt) };
    let m = monotonic_ns() as i128;
    rt.tv_sec as i128 * 1_000_000_000 + rt.tv_nsec as i128 - m
}

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    total: u64,
    gmp: u64,
    /// The highest changes_committed of any node (the master's count).
    changes: u64,
}

impl Counters {
    fn minus(self, b: Counters) -> Counters {
        Counters {
            total: self.total.saturating_sub(b.total),
            gmp: self.gmp.saturating_sub(b.gmp),
            changes: self.changes.saturating_sub(b.changes),
        }
    }
}

fn all_joined(s: &Snapshots, which: &[usize]) -> bool {
    let Some(&first) = which.first() else { return true };
    let Some(v0) = s.val[first].as_ref().and_then(|m| m.view) else { return false };
    which.iter().all(|&i| {
        s.val[i].as_ref().is_some_and(|m| {
            m.my_state == NodeState::Joined && m.halted.is_none() && m.view == Some(v0) && m.transitions.is_empty()
        })
    })
}

fn node_state(m: Option<&ClusterSnapshot>, id: u32) -> Option<NodeState> {
    m.and_then(|m| m.node(id)).map(|n| n.state)
}

/// Fails if an agent in `which` exited.
fn check_alive(c: &mut Cluster, which: &[usize]) -> Result<()> {
    for &i in which {
        // A halt (the agent then starts again as a new life,
        // `membership.rejoin_ms`) spoils the measurement as an exit would:
        // a life other than the first one seen since the spawn.
        let inc = c.incarnation(i);
        let stale = STALE_LIFE.lock().unwrap().get(&c.hosts[i].ns.name).copied();
        if let Some(inc) = inc.filter(|v| Some(*v) != stale) {
            let first = *FIRST_LIFE.lock().unwrap().entry(c.hosts[i].ns.name.clone()).or_insert(inc);
            if inc != first {
                let why = c
                    .log_lines(i, &["clustering halted on this node why="])
                    .first()
                    .and_then(|l| l.split("why=").nth(1).map(|w| w.trim().to_string()))
                    .unwrap_or_default();
                bail!("agent of {} halted ({why}) and started again as a new life; {}", c.hosts[i].name, false_alarms(c));
            }
        }
        if let Some(a) = c.agents[i].as_mut() {
            if let Some(st) = a.child.try_wait()? {
                let log = c.agent_log(i);
                let why = log
                    .lines()
                    .find_map(|l| l.split("clustering halted on this node why=").nth(1))
                    .map(|w| format!(": halted, {}", w.trim()))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
                bail!("agent of {} exited ({st}){why}; {}\n{}", c.hosts[i].name, false_alarms(c), tail.join("\n"));
            }
        }
    }
    Ok(())
}

/// When the bench spawned the agent now running in each namespace.
static SPAWNED: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// The incarnation of the first life of the agent spawned in each namespace.
static FIRST_LIFE: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// The incarnation file's content before the spawn (an earlier agent's, until
/// the new one writes its own).
static STALE_LIFE: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

fn spawn(c: &Cluster, i: usize, cfg: &std::path::Path, log: &std::path::Path) -> Agent {
    SPAWNED.lock().unwrap().insert(c.hosts[i].ns.name.clone(), monotonic_ns());
    FIRST_LIFE.lock().unwrap().remove(&c.hosts[i].ns.name);
    let stale = c.incarnation(i).unwrap_or(0);
    STALE_LIFE.lock().unwrap().insert(c.hosts[i].ns.name.clone(), stale);
    Agent::spawn(&c.hosts[i].ns, cfg, log)
}

/// peer_silent events about agents the bench did not kill, in their current
/// life (false alarms, unless that agent had already stopped on its own),
/// over every node's events.jsonl.
fn false_alarms(c: &Cluster) -> String {
    let now = monotonic_ns();
    let spawned = SPAWNED.lock().unwrap().clone();
    let mut seen = Vec::new();
    for i in 0..c.hosts.len() {
        for e in c.events(i) {
            let Some(node) = e["node"].as_u64() else { continue };
            let t = e["agent_ns"].as_u64().unwrap_or(0);
            let live = c
                .hosts
                .iter()
                .position(|h| h.id as u64 == node)
                .filter(|&j| c.agents[j].is_some())
                .map(|j| spawned.get(&c.hosts[j].ns.name).map(|s| t > *s).unwrap_or(true))
                .unwrap_or(false);
            if e["event"] == "peer_silent" && live && t < now {
                seen.push((t, c.hosts[i].id, node));
            }
        }
    }
    seen.sort();
    let first: Vec<String> = seen.iter().take(6).map(|(t, by, of)| format!("node{by} saw node{of} {:.0} ms ago", (now - t) as f64 / 1e6)).collect();
    format!("{} peer_silent event(s) about running agents{}{}", seen.len(), if first.is_empty() { "" } else { ": " }, first.join(", "))
}

fn dump(c: &Cluster, s: &Snapshots, which: &[usize]) -> String {
    which
        .iter()
        .map(|&i| {
            let Some(m) = &s.val[i] else { return format!("  {}: no {}", c.hosts[i].name, baton_tests::state::CLUSTER_FILE) };
            let states: Vec<String> = m.nodes.iter().map(|n| format!("{}:{}", n.id, n.state.as_str())).collect();
            format!(
                "  {}: my_state {} view {:?} transitions {} halted {:?} nodes [{}]",
                c.hosts[i].name,
                m.my_state.as_str(),
                m.view,
                m.transitions.len(),
                m.halted,
                states.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls until `done`; returns (observed CLOCK_MONOTONIC ns, latest write
/// time of the files in `which` at that point).
fn poll_until(
    c: &mut Cluster,
    s: &mut Snapshots,
    which: &[usize],
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&Snapshots) -> bool,
) -> Result<(u64, u64)> {
    let start = Instant::now();
    loop {
        s.refresh(which);
        if done(s) {
            let seen = monotonic_ns();
            let written = which.iter().filter_map(|&i| s.written_ns(i)).max().unwrap_or(seen).min(seen);
            return Ok((seen, written));
        }
        check_alive(c, which)?;
        if start.elapsed() > timeout {
            bail!("{what}: not done after {timeout:?}; {}:\n{}", false_alarms(c), dump(c, s, which));
        }
        std::thread::sleep(poll_interval(s.paths.len()));
    }
}

/// One forced leave (and the rejoin after it).
#[derive(Clone, Debug, Default)]
struct Leave {
    /// SIGKILL -> every survivor shows it inactive, no transition left.
    ms: f64,
    /// SIGKILL -> the last survivor's datapath reported it silent.
    detect_ms: f64,
    cost: Counters,
    /// Upper bound of periodic messages (reports, state broadcasts) in the
    /// counting windows.
    periodic_max: u64,
    /// Spawn of the new life -> all joined again.
    rejoin_ms: f64,
    rejoin_cost: Counters,
    rejoin_periodic_max: u64,
}

#[derive(Clone, Debug, Default)]
struct Run {
    interval_ms: u64,
    /// Idle share of the machine's CPUs in the second before the agents start.
    machine_idle_pct: f64,
    /// How long the bench waited for a quiet machine, and the probe's worst
    /// wake-up delay in the last second before the start.
    quiet_wait_s: f64,
    quiet_max_ms: f64,
    /// CPU time all agents used from their spawn to all joined (s).
    join_cpu_s: f64,
    /// CPU the idle, joined cluster uses (all agents, % of one CPU, over 1 s).
    idle_cpu_pct: f64,
    /// Largest wake-up delay of the SCHED_FIFO probe during the mass join / the whole run (ms).
    stall_join_ms: f64,
    stall_run_ms: f64,
    /// Probe wake-ups more than STALL_MS late in the whole run.
    stalls: usize,
    /// Attempts of this run that failed before this one.
    failed_attempts: u32,
    /// CPU the bench itself (poller, probe) used during the mass join, % of one CPU.
    bench_cpu_pct: f64,
    /// First spawn -> last spawn returned.
    spawn_ms: f64,
    /// First spawn -> every agent's control socket exists (eBPF loaded, XDP attached).
    sockets_ms: f64,
    /// First spawn -> the first node has a view (the cluster formed).
    formed_ms: f64,
    /// First spawn -> all joined (observed by polling).
    join_ms: f64,
    /// First spawn -> the last cluster.json write of the settled state.
    join_written_ms: f64,
    join_cost: Counters,
    leaves: Vec<Leave>,
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let k = s.len();
    if k % 2 == 1 {
        s[k / 2]
    } else {
        (s[k / 2 - 1] + s[k / 2]) / 2.0
    }
}

/// Messages of one loss-free S3 change among `m` members in subgroups of `k`
/// (core/src/gmp.rs, "Message counts").
fn s3_formula(m: usize, k: usize) -> u64 {
    let m = m as u64;
    let s = subgroups(m as usize, k) as u64;
    (m - 1) * (2 * s + 1) + m - s
}

fn subgroups(m: usize, k: usize) -> usize {
    m.div_ceil(k.max(1))
}

/// SIGKILL every agent at once, then reap them (faster than the graceful
/// leaves of Cluster's Drop); Drop then removes maps and namespaces.
fn kill_all(c: &mut Cluster) {
    for a in c.agents.iter().flatten() {
        unsafe { libc::kill(a.pid(), libc::SIGKILL) };
    }
    for a in c.agents.iter_mut() {
        if let Some(a) = a.take() {
            a.kill9();
        }
    }
}

fn periodic_bound(s: &Snapshots, which: &[usize], before: &BTreeMap<usize, u64>, n: usize, master: u32, resend_ms: u32, c: &Cluster) -> u64 {
    which
        .iter()
        .map(|&i| {
            let b = before.get(&i).copied().unwrap_or(0);
            let a = s.written_ns(i).unwrap_or(b);
            let ticks = (a.saturating_sub(b) as f64 / (resend_ms as f64 * 1e6)).ceil() as u64 + 1;
            let per_tick = if c.hosts[i].id == master { n as u64 - 1 } else { 1 };
            ticks * per_tick
        })
        .sum()
}

fn run_cluster(opts: &MembershipOpts, n: usize, k: usize, resend_ms: Option<u32>, label: &str) -> Result<Run> {
    let interval_ms = opts.interval_for(n);
    let mut c = Cluster::new("bmem", n, 1, interval_ms as u32, opts.misses);
    let probe = Probe::start();
    let t_probe = monotonic_ns();
    let mut all: Vec<Stall> = Vec::new();
    let res = run_on(&mut c, &probe, &mut all, opts, n, k, resend_ms, interval_ms, label);
    kill_all(&mut c);
    // A failed cluster's node directories (agent logs, events.jsonl,
    // cluster.json) are kept: Cluster's Drop removes them.
    let kept = if res.is_err() { Some(keep_failed(&c, label)) } else { None };
    let (max, stalls) = probe.take();
    drop(probe);
    let describe = |stalls: &[Stall]| -> String {
        stalls
            .iter()
            .take(12)
            .map(|(cpu, t, ms)| format!("cpu{cpu} +{:.0} ms: {ms:.0} ms late", t.saturating_sub(t_probe) as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match res {
        Ok(mut run) => {
            run.stall_run_ms = run.stall_run_ms.max(max);
            run.stalls += stalls.len();
            Ok(run)
        }
        Err(e) => {
            all.extend(stalls);
            Err(anyhow::anyhow!(
                "{e:#}\n  (RT probe: worst wake-up delay {max:.0} ms near the end; {} wake-ups > {STALL_MS} ms in this run{}{})\n{}",
                all.len(),
                if all.is_empty() { "" } else { ": " },
                describe(&all),
                kept.unwrap_or_default()
            ))
        }
    }
}

type Stall = (usize, u64, f64);

/// Copies the node directories of a failed cluster (regular files only:
/// agent logs, configuration, `state/`: events.jsonl, cluster.json, ...)
/// to `<target>/bench-membership-failed/<cluster>-<label>/` and says where,
/// with the first halt of each node that halted (time, reason, and the
/// critical failure or detail the log gives with it), from the kept logs.
fn keep_failed(c: &Cluster, label: &str) -> String {
    let tag: String = label.chars().map(|ch| if ch.is_ascii_alphanumeric() || ch == '=' { ch } else { '-' }).collect();
    let base = match crate::target_dir() {
        Ok(t) => t.join("bench-membership-failed"),
        Err(e) => return format!("  (the failed cluster's logs were not kept: no target dir: {e:#})"),
    };
    let dest = base.join(format!("{}-{tag}-n{}", c.prefix, c.hosts.len()));
    let mut copied = 0usize;
    for i in 0..c.hosts.len() {
        copied += copy_regular(&c.node_dir(i), &dest.join(&c.hosts[i].name));
    }
    let mut out = format!("  the failed cluster's node directories ({copied} files) are kept in {}", dest.display());
    let halts = first_halts(c);
    if halts.is_empty() {
        out += "\n  no agent logged a halt";
    } else {
        out += &format!("\n  first halt of each node that halted ({} of {}):", halts.len(), c.hosts.len());
        for h in halts {
            out += &format!("\n    {h}");
        }
    }
    out
}

/// Copies the regular files under `from` to `to` (recursively); returns how many.
fn copy_regular(from: &std::path::Path, to: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(from) else { return 0 };
    let _ = std::fs::create_dir_all(to);
    let mut n = 0;
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            n += copy_regular(&e.path(), &to.join(e.file_name()));
        } else if ft.is_file() && std::fs::copy(e.path(), to.join(e.file_name())).is_ok() {
            n += 1;
        }
    }
    n
}

/// Per node that halted, in the order of the halts: "nodeN at TIME: WHY
/// (after: the critical failure logged just before it, if any)", from its
/// agent logs (every life of this spawn writes the same agent.log).
fn first_halts(c: &Cluster) -> Vec<String> {
    let mut v: Vec<(String, String)> = Vec::new();
    for i in 0..c.hosts.len() {
        let log = c.agent_log(i);
        let mut before = None;
        for l in log.lines() {
            if l.contains("critical failure of this node") || l.contains("local failure reported") {
                before = Some(l.to_string());
            }
            if let Some(why) = l.split("clustering halted on this node why=").nth(1) {
                let at = l.split_whitespace().next().unwrap_or("").to_string();
                let cause = before.as_deref().and_then(|b| b.split_once(": ").map(|(_, r)| r.trim().to_string()));
                let text = format!(
                    "{} at {at}: {}{}",
                    c.hosts[i].name,
                    why.trim(),
                    cause.map(|c| format!(" (after: {c})")).unwrap_or_default()
                );
                v.push((at, text));
                break;
            }
        }
    }
    v.sort();
    v.into_iter().map(|(_, t)| t).collect()
}

/// Takes what the probe saw since the last call into `run` and `seen`.
fn note_stalls(probe: &Probe, run: &mut Run, seen: &mut Vec<Stall>) -> f64 {
    let (max, st) = probe.take();
    run.stall_run_ms = run.stall_run_ms.max(max);
    run.stalls += st.len();
    seen.extend(st);
    max
}

#[allow(clippy::too_many_arguments)]
fn run_on(
    c: &mut Cluster,
    probe: &Probe,
    stalls: &mut Vec<Stall>,
    opts: &MembershipOpts,
    n: usize,
    k: usize,
    resend_ms: Option<u32>,
    interval_ms: u64,
    label: &str,
) -> Result<Run> {
    let mut extra = format!("[membership]\nsubgroup_size = {k}\n");
    if let Some(r) = resend_ms {
        extra += &format!("resend_ms = {r}\nform_ms = {}\n", 3 * r);
    }
    c.extra_config = extra;
    let resend = resend_ms.unwrap_or(50);
    let form_ms = resend_ms.map(|r| 3 * r).unwrap_or(500);
    let all: Vec<usize> = (0..n).collect();
    let mut s = Snapshots::new(c);
    let mut run = Run { interval_ms, ..Default::default() };
    // Creating and deleting network namespaces (this cluster's, the previous
    // one's, which the kernel tears down in the background) stalls real-time
    // threads here for tens of ms: more than the silence bound. Start when
    // the machine is quiet.
    let t_wait = Instant::now();
    loop {
        let _ = probe.take();
        run.machine_idle_pct = machine_idle_pct(Duration::from_secs(1));
        let (max, _) = probe.take();
        if (max < QUIET_MS && run.machine_idle_pct >= 85.0) || t_wait.elapsed() > Duration::from_secs(20) {
            run.quiet_wait_s = t_wait.elapsed().as_secs_f64();
            run.quiet_max_ms = max;
            break;
        }
    }

    // --- every node starts at once ---
    let cfgs: Vec<PathBuf> = all.iter().map(|&i| c.config_path(i)).collect();
    let socks: Vec<PathBuf> = all.iter().map(|&i| c.control_socket(i)).collect();
    let cpu0 = self_cpu_s();
    let t0 = monotonic_ns();
    for (i, cfg) in cfgs.iter().enumerate() {
        let log = c.node_dir(i).join("agent.log");
        c.agents[i] = Some(spawn(c, i, cfg, &log));
    }
    run.spawn_ms = (monotonic_ns() - t0) as f64 / 1e6;
    let mut sock_at: Vec<Option<u64>> = vec![None; n];
    let mut formed_at: Option<u64> = None;
    let timeout = Duration::from_millis(30_000 + form_ms as u64);
    let (seen, written) = {
        let start = Instant::now();
        loop {
            let now = monotonic_ns();
            for (at, sock) in sock_at.iter_mut().zip(&socks) {
                if at.is_none() && sock.exists() {
                    *at = Some(now);
                }
            }
            s.refresh(&all);
            if formed_at.is_none() && all.iter().any(|&i| s.val[i].as_ref().is_some_and(|m| m.view.is_some())) {
                formed_at = Some(now);
            }
            if all_joined(&s, &all) {
                let seen = monotonic_ns();
                let written = all.iter().filter_map(|&i| s.written_ns(i)).max().unwrap_or(seen).min(seen);
                break (seen, written);
            }
            check_alive(c, &all)?;
            if start.elapsed() > timeout {
                bail!("{label}: {n} nodes started at once did not all join within {timeout:?}; {}:\n{}", false_alarms(c), dump(c, &s, &all));
            }
            std::thread::sleep(poll_interval(n));
        }
    };
    let ms = |t: u64| t.saturating_sub(t0) as f64 / 1e6;
    run.sockets_ms = sock_at.iter().map(|t| t.map(ms).unwrap_or(f64::NAN)).fold(0.0, f64::max);
    run.formed_ms = formed_at.map(ms).unwrap_or(f64::NAN);
    run.join_ms = ms(seen);
    run.bench_cpu_pct = (self_cpu_s() - cpu0) / (seen - t0) as f64 * 1e9 * 100.0;
    run.join_written_ms = ms(written);
    run.join_cost = s.counters(&all);
    run.stall_join_ms = note_stalls(probe, &mut run, stalls);
    let pids: Vec<u32> = c.agents.iter().flatten().map(|a| a.child.id()).collect();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = |pids: &[u32]| pids.iter().filter_map(|p| proc_cpu_ticks(*p)).sum::<u64>() as f64 / hz;
    run.join_cpu_s = cpu(&pids);
    // Idle: after a second for the join's last messages to settle, over 3 s.
    std::thread::sleep(Duration::from_secs(1));
    let (a, t) = (cpu(&pids), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    run.idle_cpu_pct = (cpu(&pids) - a) / t.elapsed().as_secs_f64() * 100.0;
    eprintln!(
        "  {label}: {n} nodes started at once: agents up {:.0} ms, formed {:.0} ms, all joined {:.0} ms ({} S3 msgs, {} change(s)); agents' CPU {:.1} s to join, {:.0}% of a CPU when idle (machine {:.0}% idle before, after {:.0} s waiting for quiet; bench {:.1}% CPU)",
        run.sockets_ms, run.formed_ms, run.join_ms, run.join_cost.gmp, run.join_cost.changes, run.join_cpu_s, run.idle_cpu_pct, run.machine_idle_pct, run.quiet_wait_s, run.bench_cpu_pct
    );

    // --- forced leaves ---
    let master = s.val[0].as_ref().and_then(|m| m.master).context("no master after the join")?;
    let mut cands: Vec<usize> = [n - 1, n / 2, 1, n - 2, 2].into_iter().filter(|&i| i < n && c.hosts[i].id != master).collect();
    cands.dedup();
    let mut uniq = Vec::new();
    for i in cands {
        if !uniq.contains(&i) {
            uniq.push(i);
        }
    }
    for round in 0..opts.leaves as usize {
        let v = uniq[round % uniq.len()];
        let vid = c.hosts[v].id;
        let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != v).collect();
        // Quiet for a moment: nothing in flight.
        std::thread::sleep(Duration::from_millis(200));
        s.refresh(&all);
        if !all_joined(&s, &all) {
            bail!("{label}: cluster not settled before kill {round}; {}:\n{}", false_alarms(c), dump(c, &s, &all));
        }
        let before = s.counters(&survivors);
        let before_w: BTreeMap<usize, u64> = survivors.iter().map(|&i| (i, s.written_ns(i).unwrap_or(0))).collect();
        let t_kill = c.kill(v);
        let (seen, _) = poll_until(c, &mut s, &survivors, Duration::from_secs(15), &format!("{label}: forced leave of node{vid}"), |s| {
            all_joined(s, &survivors) && survivors.iter().all(|&i| node_state(s.val[i].as_ref(), vid) == Some(NodeState::Inactive))
        })?;
        let mut l = Leave { ms: (seen - t_kill) as f64 / 1e6, ..Default::default() };
        l.cost = s.counters(&survivors).minus(before);
        l.periodic_max = periodic_bound(&s, &survivors, &before_w, n, master, resend, c);
        l.detect_ms = survivors
            .iter()
            .filter_map(|&i| {
                c.events(i)
                    .iter()
                    .filter(|e| e["event"] == "peer_silent" && e["node"] == vid)
                    .filter_map(|e| e["agent_ns"].as_u64())
                    .find(|t| *t > t_kill)
            })
            .map(|t| (t - t_kill) as f64 / 1e6)
            .fold(f64::NAN, f64::max);

        // --- the node restarts and rejoins (one more change) ---
        let before = s.counters(&survivors);
        let before_w: BTreeMap<usize, u64> = survivors.iter().map(|&i| (i, s.written_ns(i).unwrap_or(0))).collect();
        let _ = std::fs::remove_file(&s.paths[v]);
        s.forget(v);
        let t_spawn = monotonic_ns();
        let log = c.node_dir(v).join("agent.log");
        c.agents[v] = Some(spawn(c, v, &cfgs[v], &log));
        let (seen, _) = poll_until(c, &mut s, &all, Duration::from_secs(30), &format!("{label}: rejoin of node{vid}"), |s| all_joined(s, &all))?;
        l.rejoin_ms = (seen - t_spawn) as f64 / 1e6;
        l.rejoin_cost = s.counters(&all).minus(before);
        l.rejoin_cost.changes = s.counters(&survivors).changes.saturating_sub(before.changes);
        // The new life reports to every node until it follows a state.
        l.rejoin_periodic_max = periodic_bound(&s, &survivors, &before_w, n, master, resend, c)
            + ((l.rejoin_ms / resend as f64).ceil() as u64 + 1) * (n as u64 - 1);
        eprintln!(
            "  {label}: kill node{vid}: detected {:.1} ms, forced out everywhere {:.1} ms, {} S3 / {} total msgs (periodic <= {}), {} change(s); rejoin {:.0} ms, {} S3 msgs",
            l.detect_ms, l.ms, l.cost.gmp, l.cost.total, l.periodic_max, l.cost.changes, l.rejoin_ms, l.rejoin_cost.gmp
        );
        run.leaves.push(l);
        note_stalls(probe, &mut run, stalls);
    }
    Ok(run)
}

/// CPU use of one agent with 8 peers (node 1, the master, of a joined,
/// idle 9-node cluster at `--interval-ms`), over 10 s (`BATON_BENCH_IDLE_S`
/// seconds when set), a second after the join settled, in percent of one
/// CPU (`idle_cpu_pct_agent_8peers`). Each of its threads is printed too:
/// CPU % and wake-ups per second (its voluntary and involuntary context
/// switches, which the machine's load does not inflate as it does CPU time).
/// `BATON_BENCH_IDLE_HOLD_S`: keep the cluster that many seconds more after
/// the measurement (to attach `perf` to the agent, whose pid is printed).
fn idle_agent_8peers(opts: &MembershipOpts) -> Result<f64> {
    let secs: f64 = std::env::var("BATON_BENCH_IDLE_S").ok().and_then(|v| v.parse().ok()).unwrap_or(10.0);
    let hold: u64 = std::env::var("BATON_BENCH_IDLE_HOLD_S").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut c = Cluster::new("idl8", 9, 1, opts.interval_ms as u32, opts.misses);
    c.start_all();
    c.wait_all_joined(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let pid = c.agents[0].as_ref().context("node 1 not running")?.child.id();
    eprintln!("  idle agent with 8 peers: pid {pid}, measuring {secs} s");
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let a = proc_cpu_ticks(pid).context("reading /proc/PID/stat")?;
    let ta = thread_stats(pid);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let b = proc_cpu_ticks(pid).context("reading /proc/PID/stat (the agent exited?)")?;
    let el = t.elapsed().as_secs_f64();
    let tb = thread_stats(pid);
    println!("  threads of the idle agent (over {el:.1} s): CPU % of one CPU, wake-ups (context switches) per second");
    for (tid, (name, ticks, cs)) in &tb {
        let (t0, c0) = ta.get(tid).map(|(_, t, c)| (*t, *c)).unwrap_or((0, 0));
        println!("    {tid:>8} {name:<16} {:>6.2} % {:>8.1} /s", (ticks - t0) as f64 / hz / el * 100.0, (cs - c0) as f64 / el);
    }
    if hold > 0 {
        eprintln!("  holding the cluster {hold} s more (BATON_BENCH_IDLE_HOLD_S; agent pid {pid})");
        std::thread::sleep(Duration::from_secs(hold));
    }
    Ok((b - a) as f64 / hz / el * 100.0)
}

/// Per thread of `pid`: (name, utime + stime in ticks, voluntary +
/// involuntary context switches), by thread id.
fn thread_stats(pid: u32) -> BTreeMap<u32, (String, u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        let name = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map(|(n, _)| n.to_string()).unwrap_or_default();
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        let cs: u64 = status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.insert(tid, (name, ticks, cs));
    }
    out
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?)
}

/// (idle, total) jiffies of all CPUs.
fn cpu_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (idle, v.iter().take(8).sum())
}

/// Idle share of all CPUs over `d` (other work on this machine skews the timings).
fn machine_idle_pct(d: Duration) -> f64 {
    let (i0, t0) = cpu_jiffies();
    std::thread::sleep(d);
    let (i1, t1) = cpu_jiffies();
    if t1 > t0 {
        (i1 - i0) as f64 / (t1 - t0) as f64 * 100.0
    } else {
        f64::NAN
    }
}


pub fn membership(opts: &MembershipOpts) -> Result<()> {
    if opts.sizes.is_empty() || opts.sizes.iter().any(|&n| n < 3) {
        bail!("--sizes: every size must be at least 3 (a forced leave must keep a majority)");
    }
    if opts.leaves == 0 || opts.subgroup_size == 0 || opts.attempts == 0 {
        bail!("--leaves, --subgroup-size and --attempts must be at least 1");
    }
    if let Some(bin) = std::env::var_os("BATON_BENCH_BIN") {
        eprintln!("bench membership: agent binary {} (BATON_BENCH_BIN)", std::path::Path::new(&bin).display());
        std::env::set_var("BATON_BIN", bin);
    }
    // BATON_BENCH_IDLE_ONLY=1: only the idle agent with 8 peers (for profiling it).
    if std::env::var_os("BATON_BENCH_IDLE_ONLY").is_some() {
        let p = idle_agent_8peers(opts)?;
        println!("idle agent with 8 peers (the master of a joined 9-node cluster, {} ms heartbeats): {p:.2} % of one CPU", opts.interval_ms);
        println!("{{\"idle_cpu_pct_agent_8peers\":{:.2}}}", (p * 100.0).round() / 100.0);
        return Ok(());
    }
    let k = opts.subgroup_size;
    let r = opts.count_resend_ms;
    eprintln!(
        "bench membership: N = {:?} agents in network namespaces, 1 link, heartbeat {} ms × {} misses ({} ms for N ≥ 32), {} forced leave(s) per cluster",
        opts.sizes, opts.interval_ms, opts.misses, opts.interval_ms_32, opts.leaves
    );
    eprintln!(
        "  timing: agent defaults (subgroups of {k}, resend 50 ms, form 500 ms); message counts: resend_ms = {r}, form_ms = {}, subgroup_size = {k} and = 1",
        3 * r
    );
    let started = Instant::now();
    let (mut timing, mut with, mut without) = (Vec::new(), Vec::new(), Vec::new());
    let mut failures: Vec<String> = Vec::new();
    for (step, &n) in opts.sizes.iter().enumerate() {
        eprintln!("[{}/{}] N = {n} (heartbeat {} ms)", step + 1, opts.sizes.len(), opts.interval_for(n));
        let mut go = |k: usize, resend: Option<u32>, label: &str| {
            for attempt in 1..=opts.attempts {
                match run_cluster(opts, n, k, resend, label) {
                    Ok(mut run) => {
                        run.failed_attempts = attempt - 1;
                        return Some(run);
                    }
                    Err(e) => {
                        eprintln!("  {label}: attempt {attempt}/{} FAILED: {e:#}", opts.attempts);
                        failures.push(format!("N = {n}, {label}, attempt {attempt}: {}", format!("{e:#}").lines().next().unwrap_or("")));
                    }
                }
            }
            None
        };
        timing.push(go(k, None, "timing"));
        // BATON_BENCH_TIMING_ONLY=1: the timing clusters only (for profiling).
        if std::env::var_os("BATON_BENCH_TIMING_ONLY").is_some() {
            with.push(None);
            without.push(None);
            continue;
        }
        with.push(go(k, Some(r), &format!("counts k={k}")));
        without.push(go(1, Some(r), "counts k=1"));
    }

    let med = |run: &Option<Run>, f: &dyn Fn(&Leave) -> f64| -> f64 {
        run.as_ref().map(|run| median(&run.leaves.iter().map(f).collect::<Vec<_>>())).unwrap_or(f64::NAN)
    };
    let get = |run: &Option<Run>, f: &dyn Fn(&Run) -> f64| -> f64 { run.as_ref().map(f).unwrap_or(f64::NAN) };
    let leave_ms = |run: &Option<Run>| med(run, &|l| l.ms);
    let s3 = |run: &Option<Run>| med(run, &|l| l.cost.gmp as f64);
    let tot = |run: &Option<Run>| med(run, &|l| l.cost.total as f64);
    let per = |run: &Option<Run>| med(run, &|l| l.periodic_max as f64);
    let rj_s3 = |run: &Option<Run>| med(run, &|l| l.rejoin_cost.gmp as f64);
    let rj_tot = |run: &Option<Run>| med(run, &|l| l.rejoin_cost.total as f64);
    let changes = |run: &Option<Run>| run.as_ref().and_then(|r| r.leaves.iter().map(|l| l.cost.changes).max()).map(|c| c.to_string()).unwrap_or("-".into());
    let f1 = |x: f64| if x.is_finite() { format!("{x:.1}") } else { "-".into() };
    let f0 = |x: f64| if x.is_finite() { format!("{x:.0}") } else { "-".into() };
    let pair0 = |a: f64, b: f64| format!("{}/{}", f0(a), f0(b));

    println!();
    println!("membership, 1 link, agents started at once in network namespaces (medians of {} forced leave(s) per N)", opts.leaves);
    print!("{:<44}", "N");
    for n in &opts.sizes {
        print!("{n:>11}");
    }
    println!();
    let row = |name: &str, f: &dyn Fn(usize) -> String| {
        print!("{name:<44}");
        for i in 0..opts.sizes.len() {
            print!("{:>11}", f(i));
        }
        println!();
    };
    row("heartbeat interval (ms)", &|i| f0(get(&timing[i], &|r| r.interval_ms as f64)));
    row("machine CPU idle before the start (%)", &|i| f0(get(&timing[i], &|r| r.machine_idle_pct)));
    row("  waited for quiet (s) / RT probe then (ms)", &|i| {
        timing[i].as_ref().map(|r| format!("{:.0}/{:.0}", r.quiet_wait_s, r.quiet_max_ms)).unwrap_or("-".into())
    });
    row("failed attempts: timing/k=4/k=1", &|i| {
        let f = |r: &Option<Run>| r.as_ref().map(|r| r.failed_attempts.to_string()).unwrap_or(format!("{}!", opts.attempts));
        format!("{}/{}/{}", f(&timing[i]), f(&with[i]), f(&without[i]))
    });
    println!("-- timing (subgroups of {k}, resend 50 ms, form 500 ms)");
    row("all agents spawned (ms after first spawn)", &|i| f1(get(&timing[i], &|r| r.spawn_ms)));
    row("all control sockets up (ms)", &|i| f1(get(&timing[i], &|r| r.sockets_ms)));
    row("cluster formed, first view (ms)", &|i| f1(get(&timing[i], &|r| r.formed_ms)));
    row("all joined, seen by polling (ms)", &|i| f1(get(&timing[i], &|r| r.join_ms)));
    row("all joined, last cluster.json write (ms)", &|i| f1(get(&timing[i], &|r| r.join_written_ms)));
    row("  S3 changes of the mass join", &|i| timing[i].as_ref().map(|r| r.join_cost.changes.to_string()).unwrap_or("-".into()));
    row("  agents' CPU, spawn to all joined (s)", &|i| f1(get(&timing[i], &|r| r.join_cpu_s)));
    row("  joined cluster idle, agents' CPU (%)", &|i| f0(get(&timing[i], &|r| r.idle_cpu_pct)));
    row("  the bench's own CPU during the join (%)", &|i| f1(get(&timing[i], &|r| r.bench_cpu_pct)));
    row("  RT probe, worst wake-up delay in join (ms)", &|i| f1(get(&timing[i], &|r| r.stall_join_ms)));
    row("  RT probe, worst in run (ms) / # > 10 ms", &|i| {
        timing[i].as_ref().map(|r| format!("{:.0}/{}", r.stall_run_ms, r.stalls)).unwrap_or("-".into())
    });
    row("forced leave: last survivor detects (ms)", &|i| f1(med(&timing[i], &|l| l.detect_ms)));
    row("forced leave: done on every survivor (ms)", &|i| f1(leave_ms(&timing[i])));
    row("  min/max (ms)", &|i| {
        let v: Vec<f64> = timing[i].as_ref().map(|r| r.leaves.iter().map(|l| l.ms).collect()).unwrap_or_default();
        if v.is_empty() {
            return "-".into();
        }
        pair0(v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max))
    });
    row("rejoin after restart (ms)", &|i| f0(med(&timing[i], &|l| l.rejoin_ms)));
    row("  S3 msgs per forced leave at resend 50 ms", &|i| f0(s3(&timing[i])));
    println!("-- messages per change (resend_ms {r}, form_ms {}): a forced leave is one S3 change among M = N-1", 3 * r);
    row(&format!("S (subgroups of {k}, M members)"), &|i| subgroups(opts.sizes[i] - 1, k).to_string());
    row(&format!("S3 msgs, subgroups of {k}"), &|i| f0(s3(&with[i])));
    row("  formula (M-1)(2S+1)+M-S", &|i| s3_formula(opts.sizes[i] - 1, k).to_string());
    row("S3 msgs, no subgroups (k = 1, S = M)", &|i| f0(s3(&without[i])));
    row("  formula, k = 1", &|i| s3_formula(opts.sizes[i] - 1, 1).to_string());
    row("ratio without/with", &|i| {
        let x = s3(&without[i]) / s3(&with[i]);
        if x.is_finite() { format!("{x:.1}x") } else { "-".into() }
    });
    row("S3 msgs / (S·M), with subgroups", &|i| f1(s3(&with[i]) / ((opts.sizes[i] - 1) * subgroups(opts.sizes[i] - 1, k)) as f64));
    row(&format!("all msgs (S3 + reports + states), k = {k}"), &|i| f0(tot(&with[i])));
    row("  of which periodic, at most", &|i| f0(per(&with[i])));
    row("all msgs, k = 1", &|i| f0(tot(&without[i])));
    row("  of which periodic, at most", &|i| f0(per(&without[i])));
    row(&format!("S3 changes per forced leave, k = {k}/1"), &|i| format!("{}/{}", changes(&with[i]), changes(&without[i])));
    row(&format!("forced leave time, k = {k}/1 (ms)"), &|i| pair0(leave_ms(&with[i]), leave_ms(&without[i])));
    println!("-- a join is one S3 change among N (the restarted node rejoining)");
    row(&format!("S (subgroups of {k}, N members)"), &|i| subgroups(opts.sizes[i], k).to_string());
    row(&format!("S3 msgs per join, k = {k} / formula"), &|i| format!("{}/{}", f0(rj_s3(&with[i])), s3_formula(opts.sizes[i], k)));
    row("S3 msgs per join, k = 1 / formula", &|i| format!("{}/{}", f0(rj_s3(&without[i])), s3_formula(opts.sizes[i], 1)));
    row(&format!("all msgs per join, k = {k}/1"), &|i| pair0(rj_tot(&with[i]), rj_tot(&without[i])));
    row(&format!("S3 msgs of the mass join, k = {k}/1"), &|i| {
        pair0(get(&with[i], &|r| r.join_cost.gmp as f64), get(&without[i], &|r| r.join_cost.gmp as f64))
    });
    println!(
        "target: 32-node mass join < 2000 ms; S3 msgs per change O(S·N) with subgroups, O(N²) without. ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    for f in &failures {
        println!("FAILED: {f}");
    }
    if !failures.is_empty() {
        println!("(every failed attempt is a failure of this run; with --attempts {} > 1 it was retried on a new cluster to measure the rest; \"!\" = every attempt failed)", opts.attempts);
    }

    // One agent with 8 peers, idle (issue 15: under 0.5 % of one CPU).
    let agent_8 = match idle_agent_8peers(opts) {
        Ok(p) => {
            println!("idle agent with 8 peers (the master of a joined 9-node cluster, {} ms heartbeats, over 10 s): {p:.2} % of one CPU", opts.interval_ms);
            p
        }
        Err(e) => {
            println!("FAILED: idle agent with 8 peers: {e:#}");
            failures.push(format!("idle agent with 8 peers: {e:#}"));
            f64::NAN
        }
    };
    let by_n = |f: &dyn Fn(usize) -> String| -> String {
        let parts: Vec<String> = opts.sizes.iter().enumerate().map(|(i, n)| format!("\"{n}\":{}", f(i))).collect();
        format!("{{{}}}", parts.join(","))
    };
    let ms = |x: f64| if x.is_finite() { format!("{:.1}", round1(x)) } else { "null".into() };
    let count = |x: f64| if x.is_finite() { format!("{}", x.round() as u64) } else { "null".into() };
    // Built by hand to keep the key order.
    let json = format!(
        "{{\"join_all_ms\":{},\"idle_cpu_pct_32\":{},\"idle_cpu_pct_agent_8peers\":{},\"forced_leave_ms\":{},\"msgs_per_change\":{},\"msgs_per_change_without_subgroups\":{},\"failed_attempts\":{}}}",
        by_n(&|i| ms(get(&timing[i], &|r| r.join_ms))),
        opts.sizes.iter().position(|&n| n == 32).map(|i| ms(get(&timing[i], &|r| r.idle_cpu_pct))).unwrap_or_else(|| "null".into()),
        if agent_8.is_finite() { format!("{:.2}", (agent_8 * 100.0).round() / 100.0) } else { "null".into() },
        by_n(&|i| ms(leave_ms(&timing[i]))),
        by_n(&|i| count(s3(&with[i]))),
        by_n(&|i| count(s3(&without[i]))),
        failures.len(),
    );
    debug_assert!(serde_json::from_str::<Value>(&json).is_ok());
    println!("{json}");
    // (BATON_BENCH_TIMING_ONLY leaves the count clusters out: not a failure.)
    let timing_only = std::env::var_os("BATON_BENCH_TIMING_ONLY").is_some();
    let ran = if timing_only { opts.sizes.len() } else { 3 * opts.sizes.len() };
    let missing = timing.iter().chain(&with).chain(&without).filter(|r| r.is_none()).count() - (3 * opts.sizes.len() - ran);
    if missing > 0 {
        bail!("{missing} of {ran} clusters failed every attempt (see FAILED above)");
    }
    if !failures.is_empty() {
        bail!("{} attempt(s) failed (see FAILED above); a retry that succeeded does not hide a failure", failures.len());
    }
    Ok(())
}
