//! Kernel tests of the configuration reload (docs/reload.md): real agents in
//! network namespaces (the services fixture, `baton_tests::svc`), their
//! files rewritten while they run, then `baton reload` or SIGHUP.
//!
//! * a good reload adds a group that starts, changes a running group in
//!   place (a new address appears where it runs; it does not move), removes
//!   a group everywhere, and leaves the untouched groups where they were;
//!   every node ends on the same groups' hash;
//! * a bad file is refused with its file:line:key error and nothing changes
//!   (also by SIGHUP: the agent keeps running); a change that needs a
//!   restart is refused naming it;
//! * a node whose groups differ is shown as a mismatch by the others, and a
//!   group only it has is not started.
//!
//! Needs root; under CI=true a skip is a failure. Needs busybox.

use std::time::Duration;

use baton_tests::svc::*;
use baton_tests::*;
use serde_json::Value;
use baton_tests::state::ConfigStatus;

const DB: &str = r#"
[[group]]
name = "db"
addresses = ["10.77.0.101/24"]
interface = "ic0"
preferred = 2
nodes = [2, 1, 3]
"#;

const API: &str = r#"
[[group]]
name = "api"
addresses = ["10.77.0.103/24"]
interface = "ic0"
preferred = 3
nodes = [3, 1, 2]
"#;

/// Web as in `web_group`, with a second address and a monitor (which fails
/// once the node's marker file `fail-<node>` exists).
fn web_changed() -> String {
    web_group("costly", "")
        .replace(&format!("addresses = [\"{VIP}/24\"]"), &format!("addresses = [\"{VIP}/24\", \"10.77.0.102/24\"]"))
        + "\n[[group.monitor]]\nkind = \"command\"\nmonitor = \"test ! -e @WORK@/fail-@NODE@\"\ninterval_ms = 200\n"
}

/// Rewrites node `i`'s file with `groups` (as `Svc::start` writes it).
fn write_groups(svc: &Svc, i: usize, groups: &str) {
    let text = format!(
        "{}\n{}\n",
        svc.c.config_text(i),
        groups
            .replace("@WORK@", &svc.work.display().to_string())
            .replace("@NODE@", &svc.name(i))
            .replace("@IP@", &svc.c.hosts[i].addrs[0])
    );
    std::fs::write(svc.c.node_dir(i).join("baton.toml"), text).unwrap();
}

/// `baton ARGS --config <node i's file>`: (success, stdout + stderr).
fn baton_raw(svc: &Svc, i: usize, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(baton_bin())
        .args(args)
        .arg("--config")
        .arg(svc.c.node_dir(i).join("baton.toml"))
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn has(svc: &Svc, i: usize, ip: &str) -> bool {
    svc.c.has_addr(i, ip)
}

/// The configuration in use on node `i` (`agent.config` of its status),
/// once the agent wrote it.
fn config_of(svc: &Svc, i: usize) -> Option<ConfigStatus> {
    svc.status_agent(i).and_then(|a| a.config.in_use().cloned())
}

/// The groups' hash of node `i`.
fn hash_of(svc: &Svc, i: usize) -> Option<String> {
    config_of(svc, i).map(|c| c.groups_hash)
}

/// Events of `service` named `event` on any node, after the `from[i]`-th
/// event of each node.
fn events_since(svc: &Svc, from: &[usize], event: &str, service: &str) -> Vec<Value> {
    (0..3)
        .flat_map(|i| svc.c.events(i).into_iter().skip(from[i]))
        .filter(|e| e["event"] == event && e["service"] == service)
        .collect()
}

fn event_counts(svc: &Svc) -> Vec<usize> {
    (0..3).map(|i| svc.c.events(i).len()).collect()
}

#[test]
fn a_good_reload_adds_changes_and_removes_groups_without_moving_the_others() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("rld", 3, &format!("{}{DB}", web_group("costly", ""))).with_client();
    web_on_node1(&mut svc);
    svc.wait_registered("db", Duration::from_secs(20), |n| n == 2);
    let hash0 = hash_of(&svc, 0).expect("node1's groups hash");
    let mark = event_counts(&svc);

    // Every node's file: web with a second address and a monitor, db as it
    // was, and a new group api. One `baton reload --all` on node 2.
    for i in 0..3 {
        write_groups(&svc, i, &format!("{}{DB}{API}", web_changed()));
    }
    let out = svc.baton(1, &["reload", "--all"]);
    eprintln!("baton reload --all: {out}");
    svc.check(out.contains("added api") && out.contains("changed web") && out.contains("asked 2 of 2 peers"), || format!("reload reply: {out}"));

    // api starts on its preferred node; web gets its new address where it
    // runs; nothing else moves.
    svc.wait_registered("api", Duration::from_secs(20), |n| n == 3);
    let ok = wait_until(Duration::from_secs(10), || has(&svc, 2, "10.77.0.103") && has(&svc, 0, "10.77.0.102"));
    svc.check(ok.is_some(), || "api's address on node3 and web's new address on node1 expected".into());
    svc.check(!has(&svc, 1, "10.77.0.102") && !has(&svc, 2, "10.77.0.102"), || "web's new address is elsewhere too".into());
    svc.expect_page("node1", Duration::from_secs(5), "after the reload (web did not move)");
    svc.check(svc.registered_on(0, "db") == Some(2), || "db moved".into());
    std::thread::sleep(Duration::from_millis(500));
    let downs: Vec<Value> = ["web", "db"].iter().flat_map(|s| events_since(&svc, &mark, "service_down", s)).collect();
    svc.check(downs.is_empty(), || format!("untouched or changed groups were halted: {downs:?}"));
    let reconf = events_since(&svc, &mark, "service_reconfigured", "web");
    svc.check(reconf.len() == 1 && reconf[0]["node"] == 1 && reconf[0]["ok"] == true, || format!("web changed in place on node 1: {reconf:?}"));
    // Every node on the same groups: the same hash, no mismatch.
    let same = wait_until(Duration::from_secs(10), || {
        let Some(c) = (0..3).map(|i| config_of(&svc, i)).collect::<Option<Vec<ConfigStatus>>>() else { return false };
        let h = &c[0].groups_hash;
        c.iter().all(|x| &x.groups_hash == h && x.mismatch.is_empty() && x.peers.len() == 2 && x.peers.values().all(|v| &v.groups_hash == h))
    });
    svc.check(same.is_some(), || format!("the nodes do not agree on the groups: {:?}", (0..3).map(|i| config_of(&svc, i)).collect::<Vec<_>>()));
    svc.check(hash_of(&svc, 0).is_some_and(|h| h != hash0), || "the hash did not change".into());
    let text = svc.baton(0, &["status"]);
    svc.check(text.contains("same on 2 peer(s) heard"), || format!("baton status: {text}"));

    // Remove api: SIGHUP on every node.
    let mark = event_counts(&svc);
    for i in 0..3 {
        write_groups(&svc, i, &format!("{}{DB}", web_changed()));
        let pid = svc.c.agents[i].as_ref().unwrap().pid();
        sh(&["kill", "-HUP", &pid.to_string()]);
    }
    let gone = wait_until(Duration::from_secs(15), || {
        !has(&svc, 2, "10.77.0.103") && (0..3).all(|i| svc.service(i, "api").is_none())
    });
    svc.check(gone.is_some(), || "api was not stopped and forgotten everywhere".into());
    let downs = events_since(&svc, &mark, "service_down", "api");
    svc.check(downs.len() == 1 && downs[0]["node"] == 3, || format!("api stopped once, on node 3: {downs:?}"));
    let others: Vec<Value> = ["web", "db"].iter().flat_map(|s| events_since(&svc, &mark, "service_down", s)).collect();
    svc.check(others.is_empty(), || format!("web or db halted by api's removal: {others:?}"));
    svc.check(svc.registered_on(0, "web") == Some(1) && svc.registered_on(0, "db") == Some(2), || "web or db moved".into());
    for i in 0..3 {
        svc.check(svc.c.agents[i].is_some() && svc.c.control_socket(i).exists(), || format!("agent {i} ended on SIGHUP"));
    }

    // db's node list without node 2 (where it runs): it moves (a planned
    // move) to the first allowed node; web stays.
    let mark = event_counts(&svc);
    for i in 0..3 {
        write_groups(&svc, i, &format!("{}{}", web_changed(), DB.replace("nodes = [2, 1, 3]", "nodes = [3, 1]").replace("preferred = 2", "preferred = 3")));
    }
    svc.baton(0, &["reload", "--all"]);
    svc.wait_registered("db", Duration::from_secs(15), |n| n == 3);
    let ok = wait_until(Duration::from_secs(5), || svc.c.has_addr(2, "10.77.0.101") && !svc.c.has_addr(1, "10.77.0.101"));
    svc.check(ok.is_some(), || "db's address did not move from node2 to node3".into());
    let ups = events_since(&svc, &mark, "service_up", "db");
    svc.check(ups.len() == 1 && ups[0]["reason"] == "Transfer", || format!("db's start on node 3: {ups:?}"));
    svc.check(events_since(&svc, &mark, "service_down", "web").is_empty() && svc.registered_on(0, "web") == Some(1), || "web moved".into());

    // The monitor web got from the first reload runs on node 1: it fails
    // once node1's marker exists, and web moves.
    std::fs::write(svc.marker("fail-node1"), "").unwrap();
    svc.wait_registered("web", Duration::from_secs(15), |n| n != 1);
}

#[test]
fn a_bad_file_or_a_restart_only_change_is_refused_and_nothing_changes() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("rlb", 3, &web_group("costly", "")).with_client();
    web_on_node1(&mut svc);
    let before = hash_of(&svc, 0);
    let mark = event_counts(&svc);

    // A bad address in web, and a new group api beside it: the file is
    // refused as a whole (api is not added either).
    let bad = format!("{}{API}", web_group("costly", "")).replace(&format!("\"{VIP}/24\""), "\"10.77.0.300/24\"");
    write_groups(&svc, 0, &bad);
    let line = std::fs::read_to_string(svc.c.node_dir(0).join("baton.toml"))
        .unwrap()
        .lines()
        .position(|l| l.contains("10.77.0.300"))
        .unwrap()
        + 1;
    let (ok, out) = baton_raw(&svc, 0, &["reload"]);
    eprintln!("baton reload (bad file): {out}");
    let want = format!("baton.toml:{line}: `group[0].addresses[0]`: \"10.77.0.300\" is not an IPv4 or IPv6 address");
    svc.check(!ok && out.contains(&want), || format!("expected a refusal with {want:?}, got: {out}"));
    // SIGHUP with the same file: refused too, and the agent keeps running.
    let pid = svc.c.agents[0].as_ref().unwrap().pid();
    sh(&["kill", "-HUP", &pid.to_string()]);
    std::thread::sleep(Duration::from_millis(500));
    let alive = svc.c.agents[0].as_mut().unwrap().child.try_wait().unwrap().is_none();
    svc.check(alive, || "the agent ended on SIGHUP with a bad file".into());
    // (`baton status` reads the file too: the good one back first.)
    write_groups(&svc, 0, &web_group("costly", ""));
    // (agent.json is written every second.)
    wait_until(Duration::from_secs(3), || config_of(&svc, 0).and_then(|c| c.last_reload).is_some_and(|r| r.s_ago < 0.5));
    let c = config_of(&svc, 0);
    let last = c.as_ref().and_then(|c| c.last_reload.as_ref());
    svc.check(last.is_some_and(|r| !r.ok && r.message.contains(&want)), || format!("status: {c:?}"));
    svc.check(c.as_ref().is_some_and(|c| Some(&c.groups_hash) == before.as_ref() && c.groups == ["web"]), || format!("the groups changed: {c:?}"));
    let text = svc.baton(0, &["status"]);
    svc.check(text.contains("REFUSED: "), || format!("baton status does not show the refusal: {text}"));

    // A change that needs a restart (the heartbeat interval), with a good
    // group change beside it: refused, naming it.
    let mut text = std::fs::read_to_string(svc.c.node_dir(0).join("baton.toml")).unwrap();
    write_groups(&svc, 0, &format!("{}{API}", web_group("costly", "")));
    text = std::fs::read_to_string(svc.c.node_dir(0).join("baton.toml")).unwrap_or(text).replace("interval_ms = 20\n", "interval_ms = 30\n");
    std::fs::write(svc.c.node_dir(0).join("baton.toml"), text).unwrap();
    let (ok, out) = baton_raw(&svc, 0, &["reload"]);
    eprintln!("baton reload (restart-only change): {out}");
    svc.check(!ok && out.contains("[heartbeat] changed: that needs a restart of the agent; nothing was applied"), || format!("got: {out}"));
    svc.check(hash_of(&svc, 0) == before, || "the groups changed".into());

    // Nothing moved, nothing was halted, api started nowhere.
    std::thread::sleep(Duration::from_millis(300));
    svc.check(svc.registered_on(0, "web") == Some(1), || "web moved".into());
    svc.expect_page("node1", Duration::from_secs(5), "after the refused reloads");
    let downs = events_since(&svc, &mark, "service_down", "web");
    svc.check(downs.is_empty(), || format!("web was halted: {downs:?}"));
    svc.check((0..3).all(|i| !has(&svc, i, "10.77.0.103")), || "api's address appeared".into());

    // Node 1's file back as it runs (its heartbeat setting included).
    write_groups(&svc, 0, &web_group("costly", ""));
    // One node that is not the decider (the master) alone reloads another
    // group set: the others show the mismatch; its extra group runs nowhere
    // (the decider does not know it).
    let master = svc.status_membership(0).and_then(|m| m.master).expect("a master") as usize;
    let x = (0..3).rev().find(|i| *i + 1 != master).unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != x).collect();
    write_groups(&svc, x, &format!("{}{API}", web_group("costly", "")));
    let out = svc.baton(x, &["reload"]);
    svc.check(out.contains("added api"), || out.clone());
    let want_x: Vec<u32> = others.iter().map(|i| *i as u32 + 1).collect();
    let mismatch = |i: usize| config_of(&svc, i).map(|c| c.mismatch);
    let shown = wait_until(Duration::from_secs(10), || {
        others.iter().all(|i| mismatch(*i) == Some(vec![x as u32 + 1])) && mismatch(x) == Some(want_x.clone())
    });
    svc.check(shown.is_some(), || format!("mismatch not shown: {:?}", (0..3).map(|i| config_of(&svc, i)).collect::<Vec<_>>()));
    let o = others[0];
    let text = svc.baton(o, &["status"]);
    svc.check(text.contains(&format!("DIFFERS on {}", svc.name(x))), || format!("baton status: {text}"));
    let ev = svc.c.events(o).into_iter().any(|e| e["event"] == "config_mismatch" && e["peers"] == serde_json::json!([x + 1]));
    svc.check(ev, || format!("no config_mismatch event on {}", svc.name(o)));
    std::thread::sleep(Duration::from_millis(500));
    svc.check((0..3).all(|i| !has(&svc, i, "10.77.0.103")), || "api runs although the decider does not have it".into());
    svc.check(svc.registered_on(0, "web") == Some(1), || "web moved".into());
}
