//! Kernel tests of the cluster brain: real agents in network namespaces,
//! membership over the encrypted control channel, failure detection by the
//! XDP datapath, transitions over the agent's built-in levels (fencing 10,
//! storage 20, addresses 30, services 40).

use std::time::Duration;

use baton_tests::*;
use baton_tests::state::NodeState;

fn positions(lines: &[String], needles: &[&str]) -> Vec<usize> {
    needles
        .iter()
        .map(|n| lines.iter().position(|l| l.contains(n)).unwrap_or_else(|| panic!("no line with {n:?} in:\n{}", lines.join("\n"))))
        .collect()
}

#[test]
fn nodes_started_one_by_one_all_join_one_view() {
    if !kernel_tests_possible() {
        return;
    }
    let mut c = Cluster::new("mjoin", 3, 1, 10, 3);
    // One of three configured nodes is not a quorum: it waits, and says so.
    c.start(0);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.my_state(0), Some(NodeState::Inactive), "a lone node must not form a cluster of 3");
    assert!(c.membership(0).and_then(|m| m.view).is_none());
    // With a second node there is a majority: they form the cluster.
    c.start(1);
    c.wait_all_joined(Duration::from_secs(10));
    c.start(2);
    c.wait_all_joined(Duration::from_secs(10));
    let m = c.membership(0).expect("cluster.json of node 1");
    let states: Vec<NodeState> = m.nodes.iter().map(|n| n.state).collect();
    assert_eq!(states, [NodeState::Joined; 3], "{m:?}");
    assert_eq!(m.master, Some(1), "the node that formed the cluster is its master");
    // baton status shows the membership too.
    assert_eq!(c.status_membership(2).map(|m| m.my_state), Some(NodeState::Joined));
}

#[test]
fn all_nodes_started_at_once_after_a_power_failure_join() {
    if !kernel_tests_possible() {
        return;
    }
    let mut c = Cluster::new("mpow", 5, 1, 10, 3);
    // Spawn all five before waiting for any.
    for i in 0..5 {
        let cfg = c.config_path(i);
        let log = c.node_dir(i).join("agent.log");
        c.agents[i] = Some(Agent::spawn(&c.hosts[i].ns, &cfg, &log));
    }
    let took = c.wait_all_joined(Duration::from_secs(20));
    eprintln!("5 nodes started at once: all joined after {took:?}");
    let m = c.membership(4).expect("cluster.json of node 5");
    assert_eq!(m.nodes.len(), 5);
}

#[test]
fn graceful_leave_is_processed_top_down_on_every_node() {
    if !kernel_tests_possible() {
        return;
    }
    let mut c = Cluster::new("mleave", 3, 1, 10, 3);
    c.start_all();
    c.wait_all_joined(Duration::from_secs(10));
    assert!(c.stop(2).success(), "SIGTERM: a graceful leave, exit 0:\n{}", c.agent_log(2));
    for i in [0, 1] {
        let lines = c.log_lines(i, &["transition step", "node=node3", "transition=\"leave\""]);
        let p = positions(&lines, &["level=40", "level=30", "level=20", "level=10"]);
        assert!(p.windows(2).all(|w| w[0] < w[1]), "leave must go top-down: {lines:#?}");
        wait_until(Duration::from_secs(5), || c.node_state(i, 3) == Some(NodeState::Inactive))
            .unwrap_or_else(|| panic!("node3 not inactive at node{}: {}", i + 1, c.membership_text(i)));
    }
    // No forced leave: it was graceful.
    assert!(c.log_lines(0, &["transition step", "node=node3", "forced-leave"]).is_empty());
    // Its heartbeats ended: reported as the end of a graceful leave, never
    // as a silence (a failure).
    for i in [0, 1] {
        c.wait_event(i, Duration::from_secs(5), |e| e["event"] == "peer_stopped" && e["node"] == 3)
            .unwrap_or_else(|| panic!("no peer_stopped of node3 at node{}: {:?}", i + 1, c.events(i)));
        assert!(c.events(i).iter().all(|e| !(e["event"] == "peer_silent" && e["node"] == 3)), "node3 reported silent at node{}", i + 1);
    }
}

#[test]
fn killed_node_is_forced_out_bottom_up_within_the_bound() {
    if !kernel_tests_possible() {
        return;
    }
    let mut c = Cluster::new("mkill", 3, 1, 10, 3);
    c.start_all();
    c.wait_all_joined(Duration::from_secs(10));
    let killed = c.kill(2);
    for i in [0, 1] {
        let done = wait_until(Duration::from_secs(5), || c.node_state(i, 3) == Some(NodeState::Inactive));
        assert!(done.is_some(), "node3 never forced out at node{}: {}", i + 1, c.membership_text(i));
        let lines = c.log_lines(i, &["transition step", "node=node3", "transition=\"forced-leave\""]);
        let p = positions(&lines, &["level=10", "level=20", "level=30", "level=40"]);
        assert!(p.windows(2).all(|w| w[0] < w[1]), "forced leave must go bottom-up: {lines:#?}");
    }
    let ms = (monotonic_ns() - killed) as f64 / 1e6;
    eprintln!("node3 forced out everywhere {ms:.0} ms after SIGKILL (observed by polling)");
    // The bound: detection (10 ms × 3) plus the silence confirmation (the
    // other survivor confirms within milliseconds; at most confirm_ms =
    // 200 ms), plus an allowance of 500 ms for the four levels' transition
    // steps on both survivors and this test's polling of two files on a
    // loaded 2-core machine (measured: 60-90 ms in all).
    assert!(ms <= 30.0 + 200.0 + 500.0, "node3 forced out everywhere only {ms:.0} ms after SIGKILL");
    // The survivors keep a quorum (2 of 3) and stay joined.
    assert_eq!(c.my_state(0), Some(NodeState::Joined));
}

#[test]
fn a_reported_failure_starts_the_forced_leave_before_any_timeout() {
    if !kernel_tests_possible() {
        return;
    }
    // Silence bound 1 s: only the distress can explain a fast forced leave.
    let mut c = Cluster::new("mfail", 3, 2, 100, 10);
    c.start_all();
    c.wait_all_joined(Duration::from_secs(15));
    let t0 = monotonic_ns();
    let out = std::process::Command::new(baton_bin())
        .args(["fail", "--reason", "corruption", "--config"])
        .arg(c.node_dir(2).join("baton.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Both survivors first (the forced leave itself then holds its addresses
    // level for the old owner's lease, interval x (misses + 1) = 1.1 s here,
    // so waiting for one node's "forced out" before timing the other would
    // time the lease wait, not the distress).
    for i in [0, 1] {
        let seen = wait_until(Duration::from_secs(3), || !c.log_lines(i, &["peer failure processed", "node=node3", "distress=true"]).is_empty());
        let ms = (monotonic_ns() - t0) as f64 / 1e6;
        assert!(seen.is_some(), "node{} never processed node3's distress:\n{}", i + 1, c.agent_log(i));
        assert!(ms < 800.0, "distress processed after {ms} ms; the silence bound is 1000 ms");
    }
    for i in [0, 1] {
        wait_until(Duration::from_secs(5), || c.node_state(i, 3) == Some(NodeState::Inactive)).expect("forced out");
    }
    // Clustering ended on node 3 (S0.2): its agent exits with an error.
    let mut a = c.agents[2].take().unwrap();
    wait_until(Duration::from_secs(5), || a.child.try_wait().unwrap().is_some()).expect("agent exited");
    assert!(!a.child.wait().unwrap().success());
}

#[test]
fn a_forced_out_node_rejoins_only_after_its_leave_finished() {
    if !kernel_tests_possible() {
        return;
    }
    let mut c = Cluster::new("mrej", 3, 1, 10, 3);
    c.start_all();
    c.wait_all_joined(Duration::from_secs(10));
    // Everything node1 logs from here on is about the kill and the new life.
    let before = c.agent_log(0).lines().count();
    c.kill(2);
    c.start(2);
    let order = || -> Option<(usize, usize)> {
        let log = c.agent_log(0);
        let lines: Vec<&str> = log.lines().skip(before).collect();
        let done = lines.iter().position(|l| {
            l.contains("transition completed on every node") && l.contains("node=node3") && l.contains("forced-leave")
        })?;
        let first_join_step = lines
            .iter()
            .position(|l| l.contains("transition step") && l.contains("node=node3") && l.contains("transition=\"join\""))?;
        let joined = lines.iter().position(|l| {
            l.contains("transition completed on every node") && l.contains("node=node3") && l.contains("transition=\"join\"")
        })?;
        let _ = joined;
        Some((done, first_join_step))
    };
    wait_until(Duration::from_secs(15), || order().is_some())
        .unwrap_or_else(|| panic!("node3 did not rejoin after its forced leave:\n{}", c.agent_log(0)));
    let (done, rejoin) = order().unwrap();
    assert!(done < rejoin, "node3's new life was notified joining before its old life's forced leave finished");
    c.wait_all_joined(Duration::from_secs(10));
}

#[test]
fn an_external_subsystem_is_notified_in_level_order_and_a_missed_ack_ends_clustering() {
    if !kernel_tests_possible() {
        return;
    }
    let mut c = Cluster::new("msub", 3, 1, 10, 3);
    c.start(0);
    c.start(1);
    c.wait_all_joined(Duration::from_secs(10));
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/subsystem-client.py");
    let sock = |i: usize| c.node_dir(i).join("run").join(format!("{}-subsys.sock", c.cluster_name));
    // A well-behaved subsystem at level 25 on node 1.
    let out1 = std::fs::File::create(c.dir.join("client1.log")).unwrap();
    let mut good = std::process::Command::new("python3")
        .arg(&client)
        .arg(sock(0))
        .args(["db", "25"])
        .stdout(out1.try_clone().unwrap())
        .stderr(out1)
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(5), || !c.log_lines(0, &["subsystem registered", "level=25"]).is_empty()).expect("registered");
    // A subsystem on node 2 that never acknowledges in time.
    let out2 = std::fs::File::create(c.dir.join("client2.log")).unwrap();
    let mut slow = std::process::Command::new("python3")
        .arg(&client)
        .arg(sock(1))
        .args(["slow", "25", "--delay-ms", "60000", "--ack-timeout-ms", "300"])
        .stdout(out2.try_clone().unwrap())
        .stderr(out2)
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(5), || !c.log_lines(1, &["subsystem registered", "level=25"]).is_empty()).expect("registered");
    // Node 3 joins: node 1's subsystem is notified between storage (20) and addresses (30).
    c.start(2);
    let lines = || c.log_lines(0, &["node=node3", "transition=\"join\""]);
    wait_until(Duration::from_secs(10), || lines().iter().any(|l| l.contains("level=40"))).expect("join went through level 40");
    let l = lines();
    let p = positions(&l, &["level=20", "level=25", "level=30"]);
    assert!(p[0] < p[1] && p[1] < p[2], "level 25 out of order: {l:#?}");
    let log1 = std::fs::read_to_string(c.dir.join("client1.log")).unwrap();
    assert!(log1.contains("acked"), "the client acknowledged: {log1}");
    // Node 2's subsystem missed its deadline: a local critical failure (S0):
    // node 2 sends distress, terminates its subsystems and ends clustering.
    let mut a = c.agents[1].take().unwrap();
    wait_until(Duration::from_secs(10), || a.child.try_wait().unwrap().is_some())
        .unwrap_or_else(|| panic!("node 2 kept running:\n{}", c.agent_log(1)));
    assert!(!a.child.wait().unwrap().success());
    wait_until(Duration::from_secs(5), || !c.log_lines(0, &["peer failure processed", "node=node2", "distress=true"]).is_empty())
        .unwrap_or_else(|| panic!("node1 did not get node2's distress:\n{}", c.agent_log(0)));
    // The failing subsystem itself is not terminated (S0.2 terminates the
    // *other* members); it sees the agent go away.
    slow.wait().unwrap();
    let log2 = std::fs::read_to_string(c.dir.join("client2.log")).unwrap();
    assert!(log2.contains("closed the connection") || log2.contains("terminated"), "{log2}");
    let _ = good.kill();
    let _ = good.wait();
}
