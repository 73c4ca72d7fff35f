//! Kernel tests of ownership (docs/services.md, "Ownership"): no floating
//! address or application outlives the agent life that holds it, and a stop
//! is a stop. Real agents in network namespaces run the `web` group of the
//! service tests (a floating address and `busybox httpd`); a watcher outside
//! the agents samples, about every millisecond, which nodes hold the address,
//! and a client requests it every 5 ms.
//!
//! Needs root; under CI=true a skip is a failure.

use std::time::{Duration, Instant};

use baton_tests::svc::*;
use baton_tests::*;
use serde_json::Value;

/// The service tests' silence bound: 20 ms × 5.
const BOUND: Duration = Duration::from_millis(100);

const HTTPD: &str = "busybox httpd";

/// The guard's pid as node `i`'s latest life recorded it (agent.json stays
/// after a SIGKILL).
fn guard_pid(svc: &Svc, i: usize) -> i32 {
    let path = svc.c.node_dir(i).join("state").join("agent.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default()).unwrap_or(Value::Null);
    v["guard"]["pid"].as_i64().unwrap_or_else(|| svc.fail(&format!("no guard pid in {}: {v}", path.display()))) as i32
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

fn httpd_total(svc: &Svc) -> usize {
    (0..svc.c.hosts.len()).map(|i| pids_matching(&svc.ns(i), HTTPD).len()).sum()
}

/// The `guard` event of node `i` with `why`.
fn guard_event(svc: &Svc, i: usize, why: &str) -> Value {
    svc.c
        .wait_event(i, Duration::from_secs(5), |e| e["event"] == "guard" && e["why"] == why)
        .unwrap_or_else(|| svc.fail(&format!("no guard event ({why}) on {}: {:?}", svc.name(i), svc.c.events(i))))
}

/// After node1's agent died (with or without its application): the guard
/// removed the address and stopped httpd, told the others (distress), a
/// survivor took `web` over and the client is served there, and the
/// address was never on two live nodes for longer than the bound + 10 ms.
fn check_agent_death(mut svc: Svc, watcher: Watcher, prober: Prober, killed: Instant, kill_ns: u64) {
    let gone = wait_until(Duration::from_secs(5), || pids_matching(&svc.ns(0), HTTPD).is_empty());
    svc.check(gone.is_some(), || format!("httpd still runs on node1 5 s after its agent died: {:?}", netns_cmdlines(&svc.ns(0))));
    let owner = svc.wait_registered("web", Duration::from_secs(10), |n| n != 1);
    let owner_i = svc.index_of(owner);
    svc.expect_page(&svc.name(owner_i), Duration::from_secs(5), "after the agent's death");
    let served = prober.wait_stable(kill_ns, Some(&svc.name(owner_i)), 5, Duration::from_secs(5));
    svc.check(served.is_some(), || "the client's requests did not settle on the survivor".to_string());
    std::thread::sleep(Duration::from_millis(200));
    let samples = watcher.finish();
    let probes = prober.stop();
    let dead_from = [None, None, None];
    let (dual, pair) = max_dual_ownership(&samples, &dead_from);
    let ev = guard_event(&svc, 0, "agent_gone");
    eprintln!(
        "node1's agent died: guard released {} in {:.2} ms (distress: {} datagrams); httpd gone after {:?}; \
         longest time on two live nodes {dual:?} {pair:?}; client outage {:?}; served by {} after {:.0} ms",
        ev["addresses_removed"],
        ev["addresses_ms"].as_f64().unwrap_or(-1.0),
        ev["distress_sent"],
        gone.unwrap(),
        outage(&probes),
        svc.name(owner_i),
        (served.unwrap().saturating_sub(kill_ns)) as f64 / 1e6,
    );
    svc.check(dual <= BOUND + Duration::from_millis(10), || format!("{VIP} was on two live nodes for {dual:?} ({pair:?})"));
    svc.check(ev["addresses_removed"].as_array().is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(|s| s.starts_with(VIP)))), || format!("guard event: {ev}"));
    svc.check(ev["distress_sent"].as_u64().unwrap_or(0) > 0, || format!("the guard sent no distress: {ev}"));
    // The others learnt it from the distress, not from the silence.
    let distress = svc.c.wait_event(owner_i, Duration::from_secs(2), |e| e["event"] == "peer_distress" && e["node"] == 1);
    svc.check(distress.is_some(), || format!("{} saw no distress of node1: {:?}", svc.name(owner_i), svc.c.events(owner_i)));
    svc.check(!vip_on(&svc.ns(0)), || format!("{VIP} is back on node1"));
    svc.check(httpd_total(&svc) == 1, || format!("{} httpd instances run", httpd_total(&svc)));
    let _ = killed;
    svc.c.agents[0] = None;
}

#[test]
fn agent_killed_alone_its_guard_releases_the_address_and_stops_the_application() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("ogk", 3, &web_group("costly", "")).with_client();
    web_on_node1(&mut svc);
    let guard = guard_pid(&svc, 0);
    svc.check(alive(guard), || format!("node1's guard {guard} is not running"));
    let watcher = Watcher::start((0..3).map(|i| svc.ns(i)).collect());
    let prober = Prober::start(&svc.client(), vip_http(), Duration::from_millis(5), Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(200));
    let killed = Instant::now();
    let kill_ns = svc.c.kill_agent(0);
    // The node and its application are alive: only the agent died.
    check_agent_death(svc, watcher, prober, killed, kill_ns);
}

#[test]
fn agent_and_application_killed_the_guard_releases_the_address() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("ogka", 3, &web_group("costly", "")).with_client();
    web_on_node1(&mut svc);
    let httpd = pids_matching(&svc.ns(0), HTTPD);
    svc.check(httpd.len() == 1, || format!("httpd on node1: {httpd:?}"));
    let watcher = Watcher::start((0..3).map(|i| svc.ns(i)).collect());
    let prober = Prober::start(&svc.client(), vip_http(), Duration::from_millis(5), Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(200));
    let killed = Instant::now();
    let kill_ns = monotonic_ns();
    unsafe { libc::kill(httpd[0], libc::SIGKILL) };
    svc.c.kill_agent(0);
    check_agent_death(svc, watcher, prober, killed, kill_ns);
}

/// The guard was killed too (a kill of every baton process on the node):
/// nothing released the address or stopped httpd, and a survivor took the
/// group over. The agent started again there must start clean: the address
/// is removed and httpd stopped before it joins, and neither comes back
/// while another node owns the group.
#[test]
fn an_agent_restarted_while_another_node_owns_the_group_starts_clean() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("ogr", 3, &web_group("costly", "")).with_client();
    web_on_node1(&mut svc);
    let guard = guard_pid(&svc, 0);
    unsafe { libc::kill(guard, libc::SIGKILL) };
    svc.c.kill_agent(0);
    let owner = svc.wait_registered("web", Duration::from_secs(10), |n| n != 1);
    let owner_i = svc.index_of(owner);
    svc.expect_page(&svc.name(owner_i), Duration::from_secs(5), "after the failover");
    // What the dead life left: the address and its httpd (the guard was
    // killed with the agent), so the address is on two nodes here.
    svc.check(vip_on(&svc.ns(0)), || format!("{VIP} left node1 although its guard was killed"));
    svc.check(pids_matching(&svc.ns(0), HTTPD).len() == 1, || "node1's httpd is gone although its guard was killed".into());

    let watcher = Watcher::start((0..3).map(|i| svc.ns(i)).collect());
    svc.start(0);
    // (The control socket of the killed life is still there: wait for the
    // new life's agent.json, written after its start clean.)
    let pid = svc.c.agents[0].as_ref().unwrap().pid();
    let path = svc.c.node_dir(0).join("state").join("agent.json");
    let started = wait_until(Duration::from_secs(20), || {
        serde_json::from_str::<Value>(&std::fs::read_to_string(&path).unwrap_or_default()).is_ok_and(|v| v["pid"] == pid)
    });
    svc.check(started.is_some(), || "node1's new life did not write agent.json".into());
    let running = Instant::now();
    svc.c.wait_all_joined(Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(1));
    let samples = watcher.finish();
    svc.check(!held_since(&samples, 0, running), || format!("{VIP} was on node1 after its new life started"));
    svc.check(!vip_on(&svc.ns(0)), || format!("{VIP} is on node1"));
    svc.check(pids_matching(&svc.ns(0), HTTPD).is_empty(), || format!("httpd runs on node1: {:?}", netns_cmdlines(&svc.ns(0))));
    svc.check(httpd_total(&svc) == 1, || format!("{} httpd instances run", httpd_total(&svc)));
    svc.check(svc.registered_on(0, "web") == Some(owner), || "web moved".into());
    let st = svc.status(0);
    let clean = &st["agent"]["start_clean"];
    svc.check(clean["addresses_removed"].as_array().is_some_and(|a| a.len() == 1), || format!("status start_clean: {clean}"));
    svc.check(clean["processes_stopped"].as_array().is_some_and(|a| a.len() == 1), || format!("status start_clean: {clean}"));
    let ev = guard_event(&svc, 0, "start");
    eprintln!("node1 restarted: start clean {ev}");
}

/// Every agent's exit (waits up to `within`), and then that nothing of
/// baton or of the group runs anywhere: no address, no httpd, no process at
/// all left in the nodes' namespaces (guards and watchdogs included, after
/// the watchdog's 5 s), and no agent started a new life.
fn check_all_stopped(svc: &mut Svc, within: Duration, asked: Instant) {
    let mut exits = Vec::new();
    for i in 0..svc.c.hosts.len() {
        let Some(mut a) = svc.c.agents[i].take() else { continue };
        let st = loop {
            if let Some(st) = a.child.try_wait().unwrap() {
                break st;
            }
            if asked.elapsed() > within {
                let _ = a.child.kill();
                svc.fail(&format!("{}'s agent still runs {within:?} after the stop", svc.name(i)));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        exits.push((svc.name(i), st, asked.elapsed()));
    }
    eprintln!("agents exited: {exits:?}");
    if std::env::var("OWN_LOGS").is_ok() { eprintln!("{}", svc.logs()); }
    for (name, st, _) in &exits {
        svc.check(st.success(), || format!("{name}'s agent exited with {st}"));
    }
    for i in 0..svc.c.hosts.len() {
        svc.check(!vip_on(&svc.ns(i)), || format!("{VIP} is still on {}", svc.name(i)));
        let log = svc.c.agent_log(i);
        svc.check(!log.contains("starting again as a new life"), || format!("{} started a new life after the stop", svc.name(i)));
        // An orderly stop: nobody counted a leaver as failed, nobody halted.
        let bad: Vec<String> = ["peer failure processed", "clustering halted", "did not finish in time"].iter().flat_map(|n| svc.c.log_lines(i, &[n])).collect();
        svc.check(bad.is_empty(), || format!("{} during the stop: {bad:?}", svc.name(i)));
    }
    svc.check(httpd_total(svc) == 0, || format!("{} httpd instances still run", httpd_total(svc)));
    let empty = wait_until(Duration::from_secs(8), || (0..svc.c.hosts.len()).all(|i| netns_pids(&svc.ns(i)).is_empty()));
    svc.check(empty.is_some(), || {
        let left: Vec<Vec<String>> = (0..svc.c.hosts.len()).map(|i| netns_cmdlines(&svc.ns(i))).collect();
        format!("processes left in the nodes' namespaces: {left:?}")
    });
}

#[test]
fn sigterm_to_every_agent_at_once_stops_everything_and_no_new_life_starts() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("ost", 3, &web_group("costly", "")).with_client();
    web_on_node1(&mut svc);
    let pids: Vec<i32> = (0..3).map(|i| svc.c.agents[i].as_ref().unwrap().pid()).collect();
    let asked = Instant::now();
    for p in &pids {
        unsafe { libc::kill(*p, libc::SIGTERM) };
    }
    check_all_stopped(&mut svc, Duration::from_secs(5), asked);
}

#[test]
fn stop_all_stops_the_whole_cluster_in_order() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("osa", 3, &web_group("costly", "")).with_client();
    web_on_node1(&mut svc);
    let asked = Instant::now();
    // From a node that is neither the master nor the group's.
    let out = svc.baton(2, &["stop", "--all"]);
    eprintln!("baton stop --all: {out}");
    check_all_stopped(&mut svc, Duration::from_secs(8), asked);
    // Nothing moved on the way out: web stopped where it ran.
    for i in 1..3 {
        let up = svc.c.events(i).into_iter().find(|e| e["event"] == "service_up");
        svc.check(up.is_none(), || format!("web started on {} during the stop: {up:?}", svc.name(i)));
    }
}
