//! Client networks (docs/services-config.md, "Client networks"): a group's
//! floating address on a client-facing interface that is not a heartbeat
//! link. The harness's cluster (heartbeats on `ic0`, bridge `br0`) gets a
//! second network: `cl0` in every node (192.168.77.N/24) on bridge `brc`
//! of the switch namespace. When the carrier of the active node's `cl0`
//! goes (its switch port is set down), the group moves to another node.
//!
//! Needs root; under CI=true a skip is a failure.

use std::time::Duration;

use baton_tests::svc::*;
use baton_tests::*;

const CVIP: &str = "192.168.77.100";

/// The cluster with the client network (`cl0` on bridge `brc`, which has
/// 192.168.77.254, the gateway) and `extra` in web's group table.
fn cluster(tag: &str, extra: &str) -> Svc {
    let group = format!(
        "[[group]]\nname = \"web\"\naddresses = [\"{CVIP}/24\"]\ninterface = \"cl0\"\npreferred = 1\nnodes = [1, 2, 3]\n{extra}\n\
         [group.application]\nkind = \"command\"\ndaemon = \"exec busybox httpd -f -p {CVIP}:80 -h @WORK@/www/@NODE@\"\n"
    );
    let svc = Svc::new(tag, 3, &group);
    let sw = svc.c.switch.name.clone();
    sh(&["ip", "-n", &sw, "link", "add", "brc", "type", "bridge"]);
    sh(&["ip", "-n", &sw, "addr", "add", "192.168.77.254/24", "dev", "brc"]);
    sh(&["ip", "-n", &sw, "link", "set", "brc", "up"]);
    for i in 0..3 {
        let ns = svc.ns(i);
        let port = format!("c{i}");
        sh(&["ip", "link", "add", "cl0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &sw]);
        sh(&["ip", "-n", &sw, "link", "set", &port, "master", "brc"]);
        sh(&["ip", "-n", &sw, "link", "set", &port, "up"]);
        sh(&["ip", "-n", &ns, "addr", "add", &format!("192.168.77.{}/24", i + 1), "dev", "cl0"]);
        sh(&["ip", "-n", &ns, "link", "set", "cl0", "up"]);
    }
    svc
}

#[test]
fn a_lost_carrier_on_the_client_interface_moves_the_group() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = cluster("cln", "");
    let sw = svc.c.switch.name.clone();
    // The file passes `baton config check` with cl0 (no [[link]] of it).
    svc.start_all();
    let on = svc.wait_registered("web", Duration::from_secs(20), |n| n == 1);
    assert_eq!(on, 1);
    let ok = wait_until(Duration::from_secs(5), || svc.c.has_addr(0, CVIP));
    svc.check(ok.is_some(), || format!("{CVIP} is not on node1's cl0"));

    // Node 1's client port goes down: its cl0 loses the carrier.
    sh(&["ip", "-n", &sw, "link", "set", "c0", "down"]);
    let t = std::time::Instant::now();
    let moved = svc.wait_registered("web", Duration::from_secs(15), |n| n != 1);
    let ms = t.elapsed().as_millis();
    eprintln!("web moved to node {moved} {ms} ms after node1's client carrier went down");
    let i = svc.index_of(moved);
    let ok = wait_until(Duration::from_secs(5), || svc.c.has_addr(i, CVIP) && !svc.c.has_addr(0, CVIP));
    svc.check(ok.is_some(), || format!("{CVIP} did not move from node1 to node{moved}"));
    let ev = svc.c.events(0).into_iter().any(|e| e["event"] == "monitor_failed" && e["service"] == "web" && e["reason"].as_str().is_some_and(|r| r.contains("cl0 lost its carrier")));
    svc.check(ev, || "no monitor_failed event naming cl0's carrier on node1".into());
    // The heartbeats (ic0) never noticed: every node is still a member.
    svc.check(svc.c.membership(0).is_some_and(|m| m.nodes.iter().all(|x| x.state == baton_tests::state::NodeState::Joined)), || "a node left".into());
}

#[test]
fn a_gateway_that_stops_answering_moves_the_group_though_the_carrier_stays() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = cluster("clg", "gateway = \"192.168.77.254\"");
    svc.start_all();
    svc.wait_registered("web", Duration::from_secs(20), |n| n == 1);
    // Let the probe run a few times on node 1 (it passes).
    std::thread::sleep(Duration::from_millis(1500));
    svc.check(svc.registered_on(0, "web") == Some(1), || "web left node1 while its gateway answered".into());
    // Node 1 can no longer reach the gateway (its frames go to a MAC nobody
    // has); cl0's carrier stays up.
    sh(&["ip", "-n", &svc.ns(0), "neigh", "replace", "192.168.77.254", "lladdr", "02:00:00:00:00:99", "dev", "cl0", "nud", "permanent"]);
    let t = std::time::Instant::now();
    let moved = svc.wait_registered("web", Duration::from_secs(20), |n| n != 1);
    eprintln!("web moved to node {moved} {} ms after node1 lost its gateway", t.elapsed().as_millis());
    let ev = svc.c.events(0).into_iter().any(|e| e["event"] == "monitor_failed" && e["service"] == "web");
    svc.check(ev, || "no monitor_failed event on node1".into());
    let ok = wait_until(Duration::from_secs(5), || !svc.c.has_addr(0, CVIP));
    svc.check(ok.is_some(), || format!("{CVIP} still on node1"));
}
