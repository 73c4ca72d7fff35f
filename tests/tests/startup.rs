//! Kernel test of issue 13 item 4: agents that start while the machine is
//! busy (CPU, I/O and memory hogs, another cluster starting beside them) are
//! never declared silent by their peers: no `link_silent`, `peer_silent`,
//! held or confirmed silence, forced leave, halt or exit, in any phase from
//! the first agent's start to well after every cluster joined.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton_tests::*;

/// Load on every CPU for at most `secs` seconds, ended on drop:
/// `stress-ng --cpu N --io 2 --vm 1` where stress-ng is installed
/// (`cargo xtask setup`), else N×2 shell busy loops. Both at normal
/// priority, as a user's work would be.
struct Hogs(Vec<Child>);

impl Hogs {
    fn start(secs: u64) -> Hogs {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let stress = ["/usr/bin/stress-ng", "/usr/local/bin/stress-ng"].into_iter().find(|p| std::path::Path::new(p).exists());
        let children = match stress {
            Some(p) => vec![Command::new(p)
                .args(["--cpu", &cpus.to_string(), "--io", "2", "--vm", "1", "--vm-bytes", "128M", "--timeout", &format!("{secs}s"), "--quiet"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawning stress-ng")],
            None => (0..cpus * 2)
                .map(|_| {
                    Command::new("timeout")
                        .args([&secs.to_string(), "sh", "-c", "while :; do :; done"])
                        .spawn()
                        .expect("spawning a busy loop")
                })
                .collect(),
        };
        // stress-ng needs a moment to fork its workers.
        std::thread::sleep(Duration::from_millis(500));
        Hogs(children)
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGINT: stress-ng stops its workers and exits; a busy loop's
            // `timeout` passes it on.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        }
        for c in &mut self.0 {
            if wait_until(Duration::from_secs(5), || c.try_wait().ok().flatten().is_some()).is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Events that mean a peer was (or nearly was) declared dead.
const FALSE_ALARMS: &[&str] = &["link_silent", "peer_silent", "silence_averted", "silence_confirmed", "peer_down", "halted"];

#[test]
fn agents_started_on_a_busy_machine_are_never_declared_silent() {
    if !kernel_tests_possible() {
        return;
    }
    let _hogs = Hogs::start(90);
    // Two clusters of three, 10 ms × 3, whose agents start interleaved:
    // each agent starts while the other cluster's agents start and join.
    let mut a = Cluster::new("stA", 3, 1, 10, 3);
    let mut b = Cluster::new("stB", 3, 1, 10, 3);
    for i in 0..3 {
        a.start(i);
        b.start(i);
    }
    a.wait_all_joined(Duration::from_secs(30));
    b.wait_all_joined(Duration::from_secs(30));
    // The window of the reported false silences (the first half second
    // after a start) and well beyond it.
    std::thread::sleep(Duration::from_secs(3));
    let mut failures = Vec::new();
    for (name, c) in [("A", &mut a), ("B", &mut b)] {
        for i in 0..3 {
            let snd = c.agent_status(i).map(|a| a.sender).unwrap_or_default();
            eprintln!(
                "cluster {name} node{}: sender start-up max gap {} µs, max lateness {} µs; life max gap {} µs; late ticks {}",
                i + 1,
                snd.startup_max_gap_us,
                snd.startup_max_late_us,
                snd.max_gap_us,
                snd.late_ticks
            );
            if let Some(st) = c.agents[i].as_mut().and_then(|a| a.child.try_wait().unwrap()) {
                failures.push(format!("cluster {name} node{}: the agent exited ({st})", i + 1));
            }
            for e in c.events(i) {
                if FALSE_ALARMS.iter().any(|k| e["event"] == *k) {
                    failures.push(format!("cluster {name} node{}: {e}", i + 1));
                }
            }
            let forced = c.log_lines(i, &["transition step", "forced-leave"]);
            if !forced.is_empty() {
                failures.push(format!("cluster {name} node{}: forced leave: {forced:?}", i + 1));
            }
        }
    }
    assert!(failures.is_empty(), "false alarms at start-up on a busy machine:\n{}", failures.join("\n"));
    // Every life is still the first one, in one view per cluster.
    a.wait_all_joined(Duration::from_secs(5));
    b.wait_all_joined(Duration::from_secs(5));
}
