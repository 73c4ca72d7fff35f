//! Kernel test: the same node's links cut again and again on one
//! long-lived cluster, with restarts between, are detected every time.

use std::time::Duration;

use baton_tests::*;
use baton_tests::state::NodeState;

/// Kernel-side detection may come this long after the silence bound. This
/// test checks that every cut is detected by the kernel's watchdog, not how
/// fast (figures are `cargo xtask bench detect`'s business), so the slack is
/// the one of tests/tests/datapath.rs: it covers the watchdog's tick (1 ms),
/// its stall grace (after a tick that came late, no silence is declared for
/// half a bound: docs/datapath.md, "Stalls of the machine") and the host's
/// own stalls on a loaded CI machine (a CI run saw 50.8 ms after the last
/// heartbeat at 10 ms x 3, i.e. a late tick plus the grace). A detector
/// that did not work would show seconds here (the agent's 1 s resync) or
/// nothing at all.
const SCHED_ALLOWANCE_MS: f64 = 250.0;

/// Wall-clock time of day (UTC, as in the agents' logs) for the steps'
/// output, so that they can be matched with the agents' lines.
fn now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let s = d.as_secs() % 86_400;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600, s / 60 % 60, s % 60, d.subsec_millis())
}

fn silent_events(c: &Cluster, i: usize, node: u32) -> Vec<serde_json::Value> {
    c.events(i).into_iter().filter(|e| e["event"] == "peer_silent" && e["node"] == node).collect()
}

#[test]
fn the_same_nodes_links_cut_three_times_with_restarts_between_are_detected_each_time() {
    if !kernel_tests_possible() {
        return;
    }
    let (interval, misses) = (10u32, 3u32);
    let bound_ms = (interval * misses) as f64;
    let mut c = Cluster::new("mcut", 3, 2, interval, misses);
    c.start_all();
    c.wait_all_joined(Duration::from_secs(15));
    eprintln!("{} all joined", now());
    let victim = 2; // node 3
    for round in 0..3 {
        let before: Vec<usize> = (0..2).map(|i| silent_events(&c, i, 3).len()).collect();
        let halts_before = c.log_lines(victim, &["clustering halted"]).len();
        c.cut_link(victim, 0);
        // The peer is silent when its last link is: from this cut.
        let t = c.cut_link(victim, 1);
        eprintln!("{} cut {round}: node3's links cut (node3's life {:?})", now(), c.incarnation(victim));
        for i in 0..2 {
            let ev = c
                .wait_event(i, Duration::from_secs(3), |_| silent_events(&c, i, 3).len() > before[i])
                .map(|_| silent_events(&c, i, 3)[before[i]].clone())
                .unwrap_or_else(|| panic!("cut {round}: node{} never reported node3 silent:\n{}", i + 1, c.agent_log(i)));
            let ns = |k: &str| ev[k].as_u64().unwrap() as f64;
            let kernel_ms = (ns("kernel_ns") - t as f64) / 1e6;
            let agent_ms = (ns("agent_ns") - t as f64) / 1e6;
            // Detection after the last heartbeat heard: the bound proper
            // (from the cut command it also includes `ip`'s own latency).
            let silence_ms = (ns("kernel_ns") - ns("last_seen_ns")) / 1e6;
            eprintln!(
                "cut {round}: node{} saw node3 silent {silence_ms:.1} ms after its last heartbeat; {kernel_ms:.1} ms after the cut command (kernel), {agent_ms:.1} ms (agent)",
                i + 1
            );
            assert!(ns("last_seen_ns") >= t as f64 - bound_ms * 1e6, "cut {round}: a stale silence reported");
            // Handled by the agent from the kernel's own event, not made up
            // for later by the once-a-second resync (a lost or ignored record).
            assert!(agent_ms - kernel_ms < 200.0, "cut {round}: node{} handled the silence {:.1} ms after the kernel saw it", i + 1, agent_ms - kernel_ms);
            assert!(
                silence_ms <= bound_ms + SCHED_ALLOWANCE_MS,
                "cut {round}: node{} detected node3's silence {silence_ms:.1} ms after its last heartbeat: bound {bound_ms} ms + {SCHED_ALLOWANCE_MS} ms allowance",
                i + 1
            );
            wait_until(Duration::from_secs(3), || c.node_state(i, 3) == Some(NodeState::Inactive))
                .unwrap_or_else(|| panic!("cut {round}: node3 not forced out at node{}: {}", i + 1, c.membership_text(i)));
        }
        // Node 3, alone, has no quorum: it halts.
        wait_until(Duration::from_secs(5), || c.log_lines(victim, &["clustering halted"]).len() > halts_before)
            .unwrap_or_else(|| panic!("cut {round}: node3 did not halt:\n{}", c.agent_log(victim)));
        eprintln!("{} cut {round}: node3 halted", now());
        c.heal_link(victim, 0);
        c.heal_link(victim, 1);
        eprintln!("{} cut {round}: healed", now());
        if round % 2 == 0 {
            // A restart of its agent (a new process). The SIGTERM comes
            // while the halted life shuts down or waits to start again:
            // either way it is a stop (exit 0 within the harness's 10 s;
            // or death by the SIGTERM itself if it came in the instant of
            // the new life's exec, before any handler), never lost (the
            // harness's SIGKILL after 10 s, the new life running meanwhile).
            let st = c.stop(victim);
            eprintln!("{} cut {round}: node3 stopped ({st})", now());
            use std::os::unix::process::ExitStatusExt;
            assert!(
                st.success() || st.signal() == Some(libc::SIGTERM),
                "cut {round}: SIGTERM after the halt did not stop node3 ({st}):\n{}",
                c.agent_log(victim)
            );
            c.start(victim);
            eprintln!("{} cut {round}: node3 started (life {:?})", now(), c.incarnation(victim));
        }
        // Otherwise its agent starts a new life by itself (rejoin_ms).
        c.wait_all_joined(Duration::from_secs(20));
        eprintln!("{} cut {round}: all joined again (node3's life {:?})", now(), c.incarnation(victim));
    }
}
