//! The agent's idle cost: one agent of a joined 9-node cluster (8 peers, one
//! link, 10 ms heartbeats), CPU time per thread over 10 s, from
//! /proc/PID/task/*/stat. Prints the per-thread figures (where the idle CPU
//! goes) and checks the total against the bound of issue 15 (under 0.5 % of
//! one CPU). `BATON_IDLE_HOLD_S=N` keeps the cluster up N more seconds after
//! the measurement (to attach `perf record -p PID` by hand).
//!
//! Ignored by default: the bound is not met yet (2.5–3.5 % before the
//! membership's quiet period, 1.6 % after it, most of what is left the
//! heartbeat sender and the address-lease thread; see docs/membership.md,
//! "Idle cost").
//! Run it with `cargo test -p baton-tests --test idle -- --ignored --nocapture`
//! (set `BATON_BIN` to a release build for figures that mean something).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_tests::*;

/// (thread name, utime + stime ticks) of every thread of `pid`.
fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let name = s[s.find('(').unwrap() + 1..s.rfind(')').unwrap()].to_string();
        let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
        let t = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        *m.entry(name).or_insert(0) += t;
    }
    m
}

#[test]
#[ignore = "issue 15 target (< 0.5 % of a CPU with 8 peers) not met yet: a measurement to run by hand"]
fn idle_agent_with_8_peers_costs_under_half_a_percent_of_a_cpu() {
    if !kernel_tests_possible() {
        return;
    }
    let mut c = Cluster::new("idl", 9, 1, 10, 3);
    c.start_all();
    c.wait_all_joined(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let pid = c.agents[0].as_ref().unwrap().child.id();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let a = thread_ticks(pid);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let b = thread_ticks(pid);
    let secs = t.elapsed().as_secs_f64();
    let mut total = 0.0;
    for (name, tb) in &b {
        let pct = (tb - a.get(name).copied().unwrap_or(0)) as f64 / hz / secs * 100.0;
        total += pct;
        eprintln!("idle: thread {name:<20} {pct:6.2} % of a CPU");
    }
    eprintln!("idle: agent pid {pid} total {total:.2} % of a CPU over {secs:.1} s (8 peers, 10 ms heartbeats)");
    if let Some(hold) = std::env::var("BATON_IDLE_HOLD_S").ok().and_then(|s| s.parse::<u64>().ok()) {
        eprintln!("idle: holding the cluster {hold} s (agent pid {pid})");
        std::thread::sleep(Duration::from_secs(hold));
    }
    assert!(total < 0.5, "an idle agent with 8 peers uses {total:.2} % of a CPU (bound 0.5 %)");
}
