//! Kernel tests of the negotiated takeover and giveback (seed 002;
//! docs/takeover.md) and of the event manager (docs/events.md): real agents
//! in network namespaces run the service tests' `web` group with the
//! overlap handover, a client requests it every 5 ms with a 500 ms timeout
//! (a lost SYN counts as failed), and each node has a health check that an
//! injected fault (a marker file) makes fail.
//!
//! Needs root; under CI=true a skip is a failure.

use std::time::{Duration, Instant};

use baton_tests::svc::*;
use baton_tests::*;

/// The zero-loss handover (the service tests' `overlap_keys`).
fn overlap() -> String {
    format!(
        "handover = \"overlap\"\ndrain_timeout_ms = 1000\n\n[[group.monitor]]\nkind = \"command\"\nmonitor = \"busybox wget -q -O /dev/null http://{VIP}/\"\ninterval_ms = 1000\n"
    )
}

/// Health check (a marker file `fault-<node>` is the fault), takeover
/// settings, and `extra` (event actions, alerts).
fn ha_config(countdown_ms: u32, extra: &str) -> String {
    format!(
        "{}\n[[health]]\nname = \"data\"\nkind = \"command\"\ncommand = \"test ! -e @WORK@/fault-@NODE@\"\nfault = \"disk\"\ninterval_ms = 100\nthreshold = 2\n\n[takeover]\ncountdown_ms = {countdown_ms}\ncure_ms = 500\n\n{extra}",
        web_group("costly", &overlap())
    )
}

/// The takeover state of node `i` (its `agent.json`; `None` before the
/// agent's first tick).
fn takeover_state(svc: &Svc, i: usize) -> Option<String> {
    svc.c.agent_status(i).and_then(|a| a.takeover).map(|t| t.state)
}

fn failed(samples: &[Sample]) -> Vec<String> {
    samples.iter().filter(|s| !s.ok()).map(|s| format!("{:?}", s.result)).collect()
}

#[test]
fn a_diagnosed_fault_is_taken_over_without_a_failed_request_stays_down_and_is_given_back_when_cured() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("tko", 3, &ha_config(15_000, "")).with_client();
    web_on_node1(&mut svc);
    // 500 ms per request: a refused or reset connection fails at once, a
    // lost SYN (retried after 1 s) fails too; a request that is merely slow
    // on a loaded machine (other tests run meanwhile) does not.
    let prober = Prober::start(&svc.client(), vip_http(), Duration::from_millis(5), Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(300));
    // The fault: node1's data check fails.
    let t0 = monotonic_ns();
    let started = Instant::now();
    std::fs::write(svc.marker("fault-node1"), "injected\n").unwrap();
    let on = svc.wait_registered("web", Duration::from_secs(20), |n| n != 1);
    svc.check(on == 2, || format!("web went to node {on}, not to node1's partner node2"));
    let served = prober.wait_stable(t0, Some("node2"), 20, Duration::from_secs(10));
    svc.check(served.is_some(), || "the client is not served by node2".into());
    let fault_to_served_ms = (served.unwrap().saturating_sub(t0)) as f64 / 1e6;
    // node1 moved its work away and left: its agent exits.
    let exited = wait_until(Duration::from_secs(15), || svc.c.agents[0].as_mut().is_some_and(|a| a.child.try_wait().unwrap().is_some()));
    svc.check(exited.is_some(), || "node1's agent did not leave after the takeover".into());
    let st = svc.c.agents[0].take().unwrap().child.wait().unwrap();
    svc.check(st.success(), || format!("node1's agent exited with {st}"));
    let mark = svc.c.node_dir(0).join("state").join("takeover.json");
    svc.check(mark.exists(), || "node1 saved no stay-down mark".into());
    std::thread::sleep(Duration::from_millis(300));
    let window = prober.since(t0);
    let f = failed(&window);
    eprintln!(
        "takeover: fault to node2 serving {fault_to_served_ms:.0} ms ({:?} in all), {} requests, {} failed",
        started.elapsed(),
        window.len(),
        f.len()
    );
    svc.check(f.is_empty(), || format!("{} client requests failed during the takeover: {f:?}", f.len()));
    let ev = svc.c.wait_event(1, Duration::from_secs(2), |e| e["event"] == "takeover_done" && e["node"] == 1);
    svc.check(ev.is_some(), || format!("no takeover_done on node2: {:?}", svc.c.events(1)));

    // node1 restarted while the fault lasts: it stays down.
    svc.start(0);
    svc.c.wait_all_joined(Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(2));
    svc.check(svc.registered_on(0, "web") == Some(2), || "web left node2 when node1 came back".into());
    let t = takeover_state(&svc, 0);
    svc.check(t.as_deref() == Some("taken over"), || format!("node1's takeover state: {t:?}"));
    let text = svc.baton(0, &["status"]);
    svc.check(text.contains("taken over by node2 (fault: disk)"), || format!("node1's status does not say why it holds nothing:\n{text}"));

    // Cured: giveback, again without a failed request.
    let t1 = monotonic_ns();
    std::fs::remove_file(svc.marker("fault-node1")).unwrap();
    svc.wait_registered("web", Duration::from_secs(20), |n| n == 1);
    let back = prober.wait_stable(t1, Some("node1"), 20, Duration::from_secs(10));
    svc.check(back.is_some(), || "the client is not served by node1 after the giveback".into());
    std::thread::sleep(Duration::from_millis(300));
    let window = prober.since(t1);
    let f = failed(&window);
    eprintln!("giveback: {} requests, {} failed; node1 serving {:.0} ms after the cure", window.len(), f.len(), (back.unwrap() - t1) as f64 / 1e6);
    svc.check(f.is_empty(), || format!("{} client requests failed during the giveback: {f:?}", f.len()));
    svc.check(!mark.exists(), || "node1's stay-down mark is still there after the giveback".into());
    // (agent.json is written every second.)
    let normal = wait_until(Duration::from_secs(3), || takeover_state(&svc, 0).as_deref() == Some("normal"));
    svc.check(normal.is_some(), || format!("node1's takeover state after the giveback: {:?}", takeover_state(&svc, 0)));
    let ev = svc.c.wait_event(1, Duration::from_secs(2), |e| e["event"] == "giveback_done" && e["node"] == 1);
    svc.check(ev.is_some(), || format!("no giveback_done on node2: {:?}", svc.c.events(1)));
}

#[test]
fn a_node_that_does_not_shut_down_is_forced_down_when_the_countdown_expires() {
    if !kernel_tests_possible() {
        return;
    }
    // node1's application takes 20 s to stop: its drain cannot finish
    // within the 1.5 s countdown.
    let group = ha_config(1500, "").replace(
        "daemon = \"exec busybox httpd",
        "stop = \"if [ @NODE@ = node1 ]; then sleep 20; fi\"\nstop_timeout_ms = 30000\ndaemon = \"exec busybox httpd",
    );
    let mut svc = Svc::new("tkf", 3, &group).with_client();
    web_on_node1(&mut svc);
    std::fs::write(svc.marker("fault-node1"), "injected\n").unwrap();
    let forced = svc.c.wait_event(1, Duration::from_secs(20), |e| e["event"] == "takeover_forced" && e["node"] == 1);
    svc.check(forced.is_some(), || format!("node2 did not force node1 down: {:?}", svc.c.events(1)));
    // node1 stops at once (S0) and the others force it out.
    let out = svc.c.wait_event(1, Duration::from_secs(10), |e| e["event"] == "peer_distress" && e["node"] == 1);
    svc.check(out.is_some(), || format!("no distress of node1 at node2: {:?}", svc.c.events(1)));
    // (node1's agent is still busy stopping its application: only the
    // survivors' views count.)
    let mut on = None;
    let moved = wait_until(Duration::from_secs(20), || {
        on = svc.registered_on(1, "web").filter(|n| *n != 1);
        on.is_some() && svc.registered_on(2, "web") == on
    });
    svc.check(moved.is_some(), || "web did not move to a survivor after node1 was forced down".into());
    svc.expect_page(&svc.name(svc.index_of(on.unwrap())), Duration::from_secs(10), "after the forced takeover");
    let halted = svc.c.log_lines(0, &["partner forced this node down"]);
    svc.check(!halted.is_empty(), || "node1 never logged that it was forced down".into());
}

#[test]
fn event_actions_get_their_parameters_and_pass_out_values_on_and_alerts_get_pacemakers_environment() {
    if !kernel_tests_possible() {
        return;
    }
    let extra = r#"
[[on]]
event = "service_up"
service = "web"
run = "echo TICKET=T-$BATON_NODE; echo \"$BATON_EVENT $BATON_SERVICE $BATON_NODE\" >> @WORK@/first-@NODE@"

[[on]]
event = "service_up"
service = "web"
run = "echo \"$BATON_TICKET\" >> @WORK@/second-@NODE@"

[[on]]
event = "service_up"
service = "web"
run = "/nonexistent/action"

[alerts]
command = "env | grep -E '^CRM_alert_(kind|node|rsc|task|desc|timestamp|recipient)=' | sort | tr '\n' ' ' >> @WORK@/alerts-@NODE@; echo >> @WORK@/alerts-@NODE@"
recipient = "ops"
"#;
    let mut svc = Svc::new("tke", 3, &ha_config(10_000, extra)).with_client();
    web_on_node1(&mut svc);
    let first = svc.marker("first-node1");
    let ok = wait_until(Duration::from_secs(10), || std::fs::read_to_string(svc.marker("second-node1")).is_ok_and(|s| !s.is_empty()));
    svc.check(ok.is_some(), || "the second action never ran".into());
    let f = std::fs::read_to_string(&first).unwrap_or_default();
    svc.check(f.trim() == "service_up web 1", || format!("IN parameters: {f:?}"));
    let s2 = std::fs::read_to_string(svc.marker("second-node1")).unwrap();
    svc.check(s2.trim() == "T-1", || format!("OUT parameter of the first action seen by the second: {s2:?}"));
    // A missing action is an alert, and nothing else changes.
    let alert = svc.c.wait_event(0, Duration::from_secs(5), |e| e["event"] == "alert" && e["kind"] == "action_failed");
    svc.check(alert.is_some(), || format!("no alert for the failed action: {:?}", svc.c.events(0)));
    svc.check(svc.registered_on(0, "web") == Some(1), || "web moved after an action failed".into());
    // The alert script got Pacemaker's environment for the service start.
    let ok = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(svc.marker("alerts-node1")).is_ok_and(|s| s.lines().any(|l| l.contains("CRM_alert_task=start") && l.contains("CRM_alert_rsc=web")))
    });
    let a = std::fs::read_to_string(svc.marker("alerts-node1")).unwrap_or_default();
    svc.check(ok.is_some(), || format!("no resource alert for web's start: {a}"));
    let line = a.lines().find(|l| l.contains("CRM_alert_task=start")).unwrap();
    for want in ["CRM_alert_kind=resource", "CRM_alert_node=node1", "CRM_alert_recipient=ops", "CRM_alert_timestamp=20"] {
        svc.check(line.contains(want), || format!("alert environment without {want}: {line}"));
    }
}

#[test]
fn a_node_that_hangs_after_accepting_the_shutdown_is_forced_out_and_stays_down() {
    if !kernel_tests_possible() {
        return;
    }
    // node1's application takes 3 s to stop, so node1 is still draining
    // when its agent freezes.
    let group = ha_config(2000, "").replace(
        "daemon = \"exec busybox httpd",
        "stop = \"if [ @NODE@ = node1 ]; then sleep 3; fi\"\nstop_timeout_ms = 10000\ndaemon = \"exec busybox httpd",
    );
    let mut svc = Svc::new("tkh", 3, &group).with_client();
    web_on_node1(&mut svc);
    std::fs::write(svc.marker("fault-node1"), "injected\n").unwrap();
    let acc = svc.c.wait_event(1, Duration::from_secs(10), |e| e["event"] == "takeover_accepted" && e["node"] == 1);
    svc.check(acc.is_some(), || format!("node2 never accepted node1's request: {:?}", svc.c.events(1)));
    let pid = svc.c.agents[0].as_ref().unwrap().child.id() as i32;
    let alive = svc.c.agents[0].as_mut().unwrap().child.try_wait().unwrap().is_none();
    svc.check(alive, || "node1's agent had already left: the test needs it mid-drain".into());
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let frozen = Instant::now();
    // Its heartbeats stop: the survivors force it out (the countdown would
    // have, later) and web runs on node2.
    let out = svc.c.wait_event(1, Duration::from_secs(10), |e| {
        (e["event"] == "peer_silent" || e["event"] == "takeover_forced") && e["node"] == 1
    });
    svc.check(out.is_some(), || format!("node2 did not force the frozen node1 out: {:?}", svc.c.events(1)));
    let moved = wait_until(Duration::from_secs(20), || svc.registered_on(1, "web") == Some(2) && svc.registered_on(2, "web") == Some(2));
    svc.check(moved.is_some(), || "web is not registered on node2 after node1 froze".into());
    svc.expect_page("node2", Duration::from_secs(10), "after node1 froze mid-drain");
    eprintln!("frozen node1: out after {:?}", frozen.elapsed());
    // Thawed, node1 learns it was forced out and ends that life (it was
    // leaving anyway: the agent exits); started again, it comes back with
    // the stay-down mark: web stays on node2, the VIP is not on node1.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let ended = wait_until(Duration::from_secs(15), || {
        svc.c.agents[0].as_mut().unwrap().child.try_wait().unwrap().is_some() || !svc.c.log_lines(0, &["starting again as a new life"]).is_empty()
    });
    svc.check(ended.is_some(), || "node1 neither exited nor started a new life after it was thawed".into());
    if svc.c.agents[0].as_mut().unwrap().child.try_wait().unwrap().is_some() {
        svc.c.agents[0] = None;
        svc.start(0);
    }
    svc.c.wait_all_joined(Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    svc.check(svc.registered_on(1, "web") == Some(2), || "web left node2 when node1 came back".into());
    svc.check(!vip_on(&svc.ns(0)), || format!("{VIP} is on node1 after it came back"));
    let t = takeover_state(&svc, 0);
    svc.check(t.as_deref() == Some("taken over"), || format!("node1's takeover state after its new life: {t:?}"));
}

#[test]
fn the_partner_diagnoses_a_node_and_its_fault_is_taken_over() {
    if !kernel_tests_possible() {
        return;
    }
    // Each node asks its partner to connect to its port 8081 (a busybox
    // httpd apart from the group); node1's listener dies.
    let check = "[[health]]\nname = \"reach\"\nkind = \"reachable\"\naddress = \"@IP@:8081\"\nby = \"partner\"\nfault = \"network\"\ninterval_ms = 100\nthreshold = 2\n";
    let text = format!("{}\n{check}\n[takeover]\ncountdown_ms = 10000\ncure_ms = 500\n", web_group("costly", &overlap()));
    let mut svc = Svc::new("tkp", 3, &text).with_client();
    let mut listeners = Vec::new();
    for i in 0..3 {
        let dir = svc.marker("empty");
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &svc.ns(i), "busybox", "httpd", "-f", "-p", &format!("{}:8081", svc.c.hosts[i].addrs[0]), "-h"])
            .arg(&dir)
            .spawn()
            .unwrap();
        listeners.push(child);
    }
    web_on_node1(&mut svc);
    std::thread::sleep(Duration::from_millis(500));
    svc.check(svc.c.events(0).iter().all(|e| e["event"] != "fault"), || format!("a fault before any was injected: {:?}", svc.c.events(0)));
    let t = Instant::now();
    listeners[0].kill().unwrap();
    let _ = listeners[0].wait();
    let fault = svc.c.wait_event(0, Duration::from_secs(10), |e| e["event"] == "fault" && e["check"] == "reach");
    svc.check(fault.is_some(), || format!("node1 never learned its partner's diagnosis: {:?}", svc.c.events(0)));
    let f = fault.unwrap();
    svc.check(f["fault"] == "network", || format!("fault kind: {f}"));
    let on = svc.wait_registered("web", Duration::from_secs(20), |n| n != 1);
    svc.check(on == 2, || format!("web went to node {on}, not to node1's partner node2"));
    svc.expect_page("node2", Duration::from_secs(10), "after the partner's diagnosis");
    eprintln!("partner diagnosis: listener killed, web on node2 after {:?}", t.elapsed());
    for mut l in listeners {
        let _ = l.kill();
        let _ = l.wait();
    }
}

#[test]
fn register_starts_a_manual_group_and_deregister_stops_it_everywhere() {
    if !kernel_tests_possible() {
        return;
    }
    let text = "[[group]]\nname = \"job\"\nnodes = [1, 2, 3]\nauto_register = false\n\n[group.application]\nkind = \"command\"\ndaemon = \"exec sleep 7777\"\n";
    let mut svc = Svc::new("tkr", 3, text);
    svc.start_all();
    svc.c.wait_all_joined(Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    let running = |svc: &Svc| -> Vec<usize> { (0..3).filter(|&i| !pids_matching(&svc.ns(i), "sleep 7777").is_empty()).collect() };
    svc.check(svc.registered_on(0, "job").is_none(), || format!("job started without a register: {:?}", svc.service(0, "job")));
    svc.check(running(&svc).is_empty(), || "job's process runs without a register".into());
    // register job 3: it starts, then moves to node3.
    svc.baton(0, &["register", "job", "3"]);
    svc.wait_registered("job", Duration::from_secs(20), |n| n == 3);
    let on3 = wait_until(Duration::from_secs(10), || running(&svc) == vec![2]);
    svc.check(on3.is_some(), || format!("job's process runs on {:?}, not on node3 alone", running(&svc)));
    // deregister job (asked on another node): stopped everywhere.
    svc.baton(1, &["deregister", "job"]);
    let gone = wait_until(Duration::from_secs(20), || (0..3).all(|i| svc.registered_on(i, "job").is_none()) && running(&svc).is_empty());
    svc.check(gone.is_some(), || format!("job after deregister: {:?} / processes on {:?}", svc.service(0, "job"), running(&svc)));
    // A group that does not exist is refused by name.
    let out = std::process::Command::new(baton_bin())
        .args(["register", "nosuch", "--config"])
        .arg(svc.c.node_dir(0).join("baton.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    svc.check(!out.status.success() && err.contains("nosuch"), || format!("register of an unknown group: {} {err}", out.status));
}
