//! Issue 13: nuisances that need no key must neither raise a false alarm
//! nor hide a real failure (docs/security.md, "Nuisances without the key").
//!
//! A 3-node cluster with a floating-address group on node 3. The master
//! (node 1) gets, at once, a flood of its control port (TCP connections
//! from a host on the link that is no peer, dropped by XDP, and from peer
//! node 2's address, accepted and evicted by the pre-authentication caps)
//! and 20 idle clients on its local control socket (more than the 16 it
//! serves at once, held past the 2 s request deadline). The test asserts
//! correctness, not timing (the benches measure time; this machine's 2
//! cores are shared with other builds and tests):
//!
//! (a) no false alarm: while both nuisances last, every member keeps its
//!     life, the master and the term do not change, nobody halts;
//! (b) no hidden failure: node 3, crashed during the flood, is still forced
//!     out and its group moves to a survivor, whose page the client then
//!     gets (within 5 s: a liveness bound only, the detection bound is
//!     100 ms here);
//! (c) the master keeps serving `baton status` during the flood (after the
//!     idle clients' deadline at worst), does not exit, and its open
//!     descriptors stay bounded.
//!
//! Without the hardening each part fails: a control socket served inside
//! the event loop, or without the request deadline, leaves `baton status`
//! unanswered (and froze the master long enough for the others to elect a
//! new one); without the per-source cap the master's descriptors grow by
//! thousands (docs/security.md says how this was checked).

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use baton_tests::flood::*;
use baton_tests::svc::*;
use baton_tests::*;
use baton_tests::state::NodeState;

/// Connections of one flood: half from the stranger, half from node 2's address.
const FLOOD: usize = 10_000;
/// Idle clients on the master's control socket (it serves 16 at once).
const IDLE: usize = 20;

/// Lives (incarnations) of nodes `ids` as node `i` sees them.
fn lives(svc: &Svc, i: usize, ids: &[u32]) -> Vec<(u32, Option<NodeState>, Option<u64>)> {
    let m = svc.c.membership(i);
    ids.iter()
        .map(|id| {
            let n = m.as_ref().and_then(|m| m.node(*id));
            (*id, n.map(|n| n.state), n.map(|n| n.incarnation))
        })
        .collect()
}

/// The view (term, master) of node `i`'s snapshot.
fn view(svc: &Svc, i: usize) -> Option<(u64, u32)> {
    svc.c.membership(i).and_then(|m| m.view).map(|v| (v.term, v.master))
}

/// One request line on a control socket; its reply line, or the error.
fn ping(sock: &std::path::Path) -> String {
    use std::io::{BufRead, Write};
    let mut s = match UnixStream::connect(sock) {
        Ok(s) => s,
        Err(e) => return format!("connect: {e}"),
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    if let Err(e) = s.write_all(b"ping\n") {
        return format!("write: {e}");
    }
    let mut r = String::new();
    match std::io::BufReader::new(s).read_line(&mut r) {
        Ok(_) => r.trim().to_string(),
        Err(e) => format!("read: {e}"),
    }
}

/// `baton status --json` of node `i` with a deadline: Err when it fails or
/// gives no answer within `within`.
fn status_within(svc: &Svc, i: usize, within: Duration) -> Result<(Duration, serde_json::Value), String> {
    let mut child = std::process::Command::new(baton_bin())
        .args(["status", "--json", "--config"])
        .arg(svc.c.node_dir(i).join("baton.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let done = wait_until(within, || child.try_wait().unwrap().is_some());
    if done.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("no answer within {within:?}"));
    }
    let took = t.elapsed();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map(|v| (took, v)).map_err(|e| format!("not JSON: {e}"))
}

#[test]
fn a_control_port_flood_and_idle_control_clients_raise_no_false_alarm_and_hide_no_crash() {
    if !kernel_tests_possible() {
        return;
    }
    raise_own_nofile();
    let group = web_group("free", "").replace("preferred = 1", "preferred = 3");
    let mut svc = Svc::new("nuis", 3, &group).with_client();
    svc.start_all();
    svc.wait_registered("web", Duration::from_secs(20), |n| n == 3);
    svc.expect_page("node3", Duration::from_secs(10), "at the start");
    let (term, master) = view(&svc, 0).unwrap_or_else(|| panic!("no view at node1: {}", svc.c.membership_text(0)));
    assert_eq!(master, 1, "{}", svc.c.membership_text(0));
    let all_lives: Vec<_> = (0..3).map(|i| lives(&svc, i, &[1, 2, 3])).collect();
    let master_pid = svc.c.agents[0].as_ref().unwrap().pid();
    let fds_before = fd_count(master_pid);
    let halts_before: Vec<usize> = (0..3).map(|i| svc.c.log_lines(i, &["clustering halted"]).len()).collect();
    let dropped0 = svc.c.counter(0, "drop_control_syn");
    let evicted0 = svc.c.status_agent(0).and_then(|a| a.channel).map_or(0, |ch| ch.preauth_evicted);

    // The nuisances: idle clients first (they hold the master's control
    // socket from the start), then the flood on a thread of its own,
    // 250 + 250 connections every 250 ms (so it lasts at least 5 s, past
    // the crash below), all held until the end.
    let idle: Vec<UnixStream> = (0..IDLE).map(|_| UnixStream::connect(svc.c.control_socket(0)).unwrap()).collect();
    let target: std::net::SocketAddr = format!("{}:7406", link_addr(0, 0)).parse().unwrap();
    let (stranger_ns, stranger) = (svc.client(), svc.client.as_ref().unwrap().addr.clone());
    let node2_ns = svc.ns(1);
    let flooding = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..FLOOD / 500 {
            held.extend(flood(&stranger_ns, &stranger, target, 250));
            held.extend(flood(&node2_ns, &link_addr(0, 1), target, 250));
            std::thread::sleep(Duration::from_millis(250));
        }
        held
    });
    let t0 = Instant::now();
    let mut max_fds = fds_before;

    // (c) The control socket answers again once the idle clients' deadline
    // freed their slots (they hold all 16; a request meanwhile is answered
    // `error: busy`), while the flood goes on; `baton status` (read from
    // the agent's files) answers throughout.
    let sock = svc.c.control_socket(0);
    let pinged = wait_until(Duration::from_secs(8), || ping(&sock).starts_with("ok "));
    max_fds = max_fds.max(fd_count(master_pid));
    assert!(pinged.is_some(), "the master's control socket did not answer `ping` within 8 s of {IDLE} idle clients: {:?}", ping(&sock));
    eprintln!("`ping` on the master's control socket with {IDLE} idle clients and the flood: answered after {:?}", t0.elapsed());
    let st = status_within(&svc, 0, Duration::from_secs(10));
    assert!(st.is_ok(), "`baton status` of the master during the nuisances: {st:?}");

    // (a) For 3 s (past the idle clients' deadline) nothing moves.
    while t0.elapsed() < Duration::from_secs(3) {
        max_fds = max_fds.max(fd_count(master_pid));
        for i in 0..3 {
            let (v, m) = (view(&svc, i), svc.c.membership_text(i));
            assert_eq!(v.map(|v| v.1), Some(master), "node{}: the master changed under the nuisances: {m}", i + 1);
            assert_eq!(v.map(|v| v.0), Some(term), "node{}: a new term under the nuisances: {m}", i + 1);
            assert_eq!(lives(&svc, i, &[1, 2, 3]), all_lives[i], "node{}: a member's life changed under the nuisances: {m}", i + 1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // (b) Node 3 crashes in the middle of the flood: the master forces it
    // out and `web` moves to a survivor.
    assert!(!flooding.is_finished(), "the flood ended before the crash");
    svc.crash(2);
    let crashed = Instant::now();
    let out = wait_until(Duration::from_secs(5), || svc.c.node_state(0, 3) == Some(NodeState::Inactive));
    max_fds = max_fds.max(fd_count(master_pid));
    assert!(out.is_some(), "node 3, crashed during the flood, not forced out at the master within 5 s: {}", svc.c.membership_text(0));
    let moved = wait_until(Duration::from_secs(5).saturating_sub(crashed.elapsed()), || {
        (0..2).all(|i| matches!(svc.registered_on(i, "web"), Some(1) | Some(2)))
    });
    max_fds = max_fds.max(fd_count(master_pid));
    assert!(moved.is_some(), "`web` did not move off the crashed node 3 within 5 s: {:?} / {:?}", svc.service(0, "web").map(|s| s.node), svc.service(1, "web").map(|s| s.node));
    let to = svc.registered_on(0, "web").unwrap();
    eprintln!("during the flood: node 3 forced out at the master {:?} after the crash, `web` on node{to} after {:?}", out.unwrap(), crashed.elapsed());
    svc.expect_page(&format!("node{to}"), Duration::from_secs(5), "after node 3 crashed during the flood");

    let held = flooding.join().unwrap();
    max_fds = max_fds.max(fd_count(master_pid));
    // (c) Still serving, same process, descriptors bounded.
    let after = status_within(&svc, 0, Duration::from_secs(10));
    assert!(after.is_ok(), "`baton status` of the master after the crash: {after:?}");
    let a = svc.c.agents[0].as_mut().unwrap();
    assert!(a.child.try_wait().unwrap().is_none(), "the master's agent ended:\n{}", svc.c.agent_log(0));
    assert_eq!(a.pid(), master_pid);
    let dropped = svc.c.counter(0, "drop_control_syn") - dropped0;
    let evicted = svc.c.status_agent(0).and_then(|a| a.channel).map_or(0, |ch| ch.preauth_evicted) - evicted0;
    eprintln!(
        "flood: {} connections opened; the master's descriptors {fds_before} before, at most {max_fds} during; stranger SYNs dropped by XDP {dropped}, peer-address connections evicted {evicted}",
        held.len()
    );
    assert!(held.len() >= FLOOD * 9 / 10, "the flood opened only {} connections", held.len());
    assert!(dropped >= 1000, "the stranger's SYNs never reached the master's XDP program: drop_control_syn grew by {dropped}");
    assert!(max_fds < fds_before + 100, "the master's descriptors grew from {fds_before} to {max_fds} under the flood");
    // No survivor halted, and the master stayed the master (a crash of
    // another node does not move it).
    for i in 0..2 {
        let halts = svc.c.log_lines(i, &["clustering halted"]);
        assert_eq!(halts.len(), halts_before[i], "node{} halted: {:?}", i + 1, &halts[halts_before[i]..]);
        assert_eq!(view(&svc, i).map(|v| v.1), Some(master));
        assert_eq!(lives(&svc, i, &[1, 2]), all_lives[i][..2].to_vec(), "node{}: a survivor's life changed", i + 1);
    }
    drop(idle);
    drop(held);
    // And node 3 comes back.
    svc.start(2);
    svc.c.wait_all_joined(Duration::from_secs(30));
}
