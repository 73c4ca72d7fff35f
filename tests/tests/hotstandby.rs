//! Kernel tests of hot standby (`standby = "hot"`, docs/services-config.md):
//! real agents in network namespaces run the `web` group of the service
//! tests (a floating address and `busybox httpd` bound to it) with a hot
//! standby. The standby node runs httpd bound to the address before it has
//! it (the agent set `net.ipv4.ip_nonlocal_bind`); a failover adds the
//! address to that node and announces it, and the same httpd process serves.
//!
//! Needs root; under CI=true a skip is a failure.

use std::time::Duration;

use baton_tests::svc::*;
use baton_tests::*;

const HTTPD: &str = "busybox httpd";

fn hot_web() -> String {
    web_group("costly", "standby = \"hot\"")
}

/// The one httpd of namespace `i`, waiting up to `within` for it.
fn httpd_of(svc: &Svc, i: usize, within: Duration) -> i32 {
    let mut found = None;
    wait_until(within, || {
        let p = pids_matching(&svc.ns(i), HTTPD);
        found = (p.len() == 1).then(|| p[0]);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        svc.fail(&format!("no single httpd on {} after {within:?}: {:?}", svc.name(i), netns_cmdlines(&svc.ns(i))))
    })
}

fn sysctl_in(ns: &str, key: &str) -> String {
    sh(&["ip", "netns", "exec", ns, "sysctl", "-n", key]).trim().to_string()
}

/// Node 1 owns `web`, node 2 runs the standby httpd (node 3 none), and a
/// client cannot reach the standby: even sent straight to node 2's MAC, a
/// request for the address finds no listener (the address is not there).
/// node1 crashes: node 2's standby httpd serves through the address, the
/// same process (not restarted), and node 3 starts the new standby.
#[test]
fn crash_of_the_owner_the_standby_serves_without_a_restart_and_the_next_node_becomes_standby() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("hsb", 3, &hot_web()).with_client();
    web_on_node1(&mut svc);
    let standby = httpd_of(&svc, 1, Duration::from_secs(10));
    let owner = httpd_of(&svc, 0, Duration::from_secs(1));
    svc.check(pids_matching(&svc.ns(2), HTTPD).is_empty(), || format!("node3 runs httpd too: {:?}", netns_cmdlines(&svc.ns(2))));
    svc.check(sysctl_in(&svc.ns(1), "net.ipv4.ip_nonlocal_bind") == "1", || "ip_nonlocal_bind is not 1 on node2".into());
    svc.check(!vip_on(&svc.ns(1)), || format!("{VIP} is on the standby node2"));
    let up = svc.c.wait_event(1, Duration::from_secs(2), |e| e["event"] == "standby_up" && e["service"] == "web");
    svc.check(up.is_some(), || format!("no standby_up event on node2: {:?}", svc.c.events(1)));

    // Not reachable before the takeover: the client's neighbour entry for
    // the address pointed at node 2 gets no answer.
    let client = svc.client();
    let m2 = mac(&svc.ns(1));
    sh(&["ip", "-n", &client, "neigh", "replace", VIP, "lladdr", &m2, "dev", CLIENT_IF, "nud", "permanent"]);
    let direct = in_netns(&client, || http_get(vip_http(), Duration::from_millis(500)));
    sh(&["ip", "-n", &client, "neigh", "del", VIP, "dev", CLIENT_IF]);
    svc.check(direct.is_err(), || format!("the standby node2 answered a request for {VIP} before the takeover: {direct:?}"));
    svc.expect_page("node1", Duration::from_secs(5), "after the direct probe of the standby");

    let prober = Prober::start(&client, vip_http(), Duration::from_millis(5), Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(200));
    let kill_ns = monotonic_ns();
    svc.crash(0);
    svc.wait_registered("web", Duration::from_secs(10), |n| n == 2);
    svc.expect_page("node2", Duration::from_secs(5), "after node1 crashed");
    let served = prober.wait_stable(kill_ns, Some("node2"), 5, Duration::from_secs(5));
    let probes = prober.stop();
    svc.check(served.is_some(), || "the client's requests did not settle on node2".to_string());
    let after = pids_matching(&svc.ns(1), HTTPD);
    svc.check(after == vec![standby], || format!("node2's httpd was {standby}, now {after:?}: the standby was restarted"));
    let spawned = std::fs::read_to_string(svc.c.node_dir(1).join("agent.log")).unwrap_or_default().matches("daemon spawned").count();
    svc.check(spawned == 1, || format!("node2 spawned httpd {spawned} times"));
    let new_standby = httpd_of(&svc, 2, Duration::from_secs(10));
    svc.check(!vip_on(&svc.ns(2)), || format!("{VIP} is on the new standby node3"));
    svc.check(vip_on(&svc.ns(1)), || format!("{VIP} is not on node2"));
    eprintln!(
        "hot standby: node1 (httpd {owner}) crashed; node2's standby httpd {standby} served after {:.1} ms (client outage {:?}); \
         node3 started the new standby httpd {new_standby}",
        served.unwrap().saturating_sub(kill_ns) as f64 / 1e6,
        outage(&probes)
    );
}

/// A standby instance that dies is restarted there (a new process), and
/// the registered instance on node 1 is not touched.
#[test]
fn a_standby_whose_monitor_fails_is_restarted() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("hsr", 3, &hot_web()).with_client();
    web_on_node1(&mut svc);
    let owner = httpd_of(&svc, 0, Duration::from_secs(1));
    let standby = httpd_of(&svc, 1, Duration::from_secs(10));
    unsafe { libc::kill(standby, libc::SIGKILL) };
    let failed = svc.c.wait_event(1, Duration::from_secs(5), |e| e["event"] == "standby_failed" && e["service"] == "web");
    svc.check(failed.is_some(), || format!("no standby_failed event on node2: {:?}", svc.c.events(1)));
    let mut again = None;
    wait_until(Duration::from_secs(5), || {
        let p = pids_matching(&svc.ns(1), HTTPD);
        again = (p.len() == 1 && p[0] != standby).then(|| p[0]);
        again.is_some()
    });
    svc.check(again.is_some(), || format!("node2's standby httpd was not restarted: {:?}", netns_cmdlines(&svc.ns(1))));
    svc.check(pids_matching(&svc.ns(0), HTTPD) == vec![owner], || "node1's httpd changed".to_string());
    svc.check(svc.registered_on(0, "web") == Some(1), || "web moved".to_string());
    svc.check(!vip_on(&svc.ns(1)), || format!("{VIP} is on the standby node2"));
    svc.expect_page("node1", Duration::from_secs(5), "after the standby's restart");
    eprintln!("standby httpd {standby} killed on node2; restarted as {}", again.unwrap());
}

/// The standby node's agent dies (SIGKILL, alone): its guard stops the
/// standby httpd too (nothing of the group outlives its agent), and node 3
/// becomes the standby.
#[test]
fn the_guard_stops_the_standby_instance_when_its_agent_dies() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("hsg", 3, &hot_web()).with_client();
    web_on_node1(&mut svc);
    let standby = httpd_of(&svc, 1, Duration::from_secs(10));
    svc.c.kill_agent(1);
    let gone = wait_until(Duration::from_secs(5), || pids_matching(&svc.ns(1), HTTPD).is_empty());
    svc.check(gone.is_some(), || format!("node2's standby httpd {standby} still runs 5 s after its agent died"));
    let next = httpd_of(&svc, 2, Duration::from_secs(10));
    svc.check(svc.registered_on(0, "web") == Some(1), || "web moved".to_string());
    svc.c.agents[1] = None;
    eprintln!("node2's agent killed: its standby httpd {standby} stopped after {:?}; node3's standby httpd {next}", gone.unwrap());
}
