//! `cargo xtask demo`: the main job. Three baton nodes and a client in
//! network namespaces on one bridge; a resource group `web` (a floating
//! IPv4 address and `busybox httpd` serving a page that names its node,
//! preferred node 1, transfer cost free). The client requests
//! `http://10.77.0.100/` every 5 ms. The demo crashes the active node (SIGKILL
//! of its agent and httpd), brings it back (the group moves back to its
//! preferred node), switches the group over to node 2, then injects a disk
//! fault on node 2 (its health check fails): its partner takes it over, node
//! 2 leaves, stays down when restarted, and gets `web` back once cured
//! (seed 002's negotiated takeover and giveback). A second cluster then shows
//! a hot-standby failover (`standby = "hot"`: node2's idle httpd serves as
//! soon as it has the address, same process). It measures the
//! client-visible outage of each step and prints a timeline and a summary.
//! Everything is removed at the end, also on Ctrl-C.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use baton_tests::{monotonic_ns, Cluster, Sample};

use crate::bench_failover::{
    answering, baton, install_sigint, measure, pause, remove_leftovers, wait_served, web_status, window, BatonRig, PERIOD, TIMEOUT,
    VIP, VIP_CIDR,
};

fn say(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

/// One line of the timeline.
struct Entry {
    t: u64,
    step: &'static str,
    what: String,
    /// Who answers the client at that moment (filled in at the end).
    answers: String,
}

struct Timeline {
    t0: u64,
    entries: Vec<Entry>,
}

impl Timeline {
    fn add(&mut self, t: u64, step: &'static str, what: impl Into<String>) {
        let what = what.into();
        println!("  {:>9.3} s  {what}", t.saturating_sub(self.t0) as f64 / 1e9);
        self.entries.push(Entry { t, step, what, answers: String::new() });
    }
}

/// The client's view as timeline entries: who answers, and each run of
/// failed requests (count, how they failed, how long).
fn client_entries(samples: &[Sample], step_of: impl Fn(u64) -> &'static str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut last_ok: Option<String> = None;
    let mut i = 0;
    while i < samples.len() {
        match &samples[i].result {
            Ok(body) => {
                if last_ok.as_deref() != Some(body.as_str()) {
                    let what = match &last_ok {
                        None => format!("client: first answer, from {body}"),
                        Some(prev) => format!("client: {body} answers (was {prev})"),
                    };
                    out.push(Entry { t: samples[i].start_ns, step: step_of(samples[i].start_ns), what, answers: body.clone() });
                    last_ok = Some(body.clone());
                }
                i += 1;
            }
            Err(_) => {
                let j = samples[i..].iter().position(|s| s.ok()).map(|p| i + p).unwrap_or(samples.len());
                let run = &samples[i..j];
                let mut kinds: Vec<(String, usize)> = Vec::new();
                for s in run {
                    let e = s.result.as_ref().err().unwrap().clone();
                    match kinds.iter_mut().find(|(k, _)| *k == e) {
                        Some((_, n)) => *n += 1,
                        None => kinds.push((e, 1)),
                    }
                }
                let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
                let end = samples.get(j).map(|s| s.start_ns).unwrap_or(run.last().unwrap().end_ns);
                let what = if last_ok.is_none() {
                    format!("client: not served yet ({} request(s) failed)", run.len())
                } else {
                    format!(
                        "client: {} request(s) failed over {:.1} ms ({})",
                        run.len(),
                        (end - run[0].start_ns) as f64 / 1e6,
                        kinds.join(", ")
                    )
                };
                out.push(Entry { t: run[0].start_ns, step: step_of(run[0].start_ns), what, answers: "-".into() });
                i = j;
            }
        }
    }
    out
}

/// service_up / service_down (from the log of the node they name, else the
/// first node that has them) and the first peer_silent per node, after `t0`.
fn agent_entries(c: &Cluster, t0: u64, step_of: impl Fn(u64) -> &'static str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let logs: Vec<Vec<serde_json::Value>> = (0..c.hosts.len()).map(|i| c.events(i)).collect();
    let name_of = |id: u64| c.hosts.iter().find(|h| h.id as u64 == id).map(|h| h.name.clone()).unwrap_or(format!("node{id}"));
    let mut seen: Vec<(String, u64, u64)> = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        for e in log {
            let t = e["agent_ns"].as_u64().unwrap_or(0);
            if t < t0 {
                continue;
            }
            let ev = e["event"].as_str().unwrap_or("");
            let node = e["node"].as_u64().unwrap_or(0);
            let what = match ev {
                "service_up" | "service_down" => {
                    // Reported by the node itself? Then skip the others' copies.
                    let own = (node as usize).checked_sub(1).and_then(|j| logs.get(j));
                    let near = |x: &serde_json::Value| x["event"] == ev && x["agent_ns"].as_u64().is_some_and(|xt| xt.abs_diff(t) < 50_000_000);
                    if node != c.hosts[i].id as u64 && own.is_some_and(|l| l.iter().any(near)) {
                        continue;
                    }
                    format!("{}: {} {} on {}", c.hosts[i].name, ev.replace('_', " "), e["service"].as_str().unwrap_or("?"), name_of(node))
                }
                "peer_silent" => format!("{}: {} silent (heartbeats stopped)", c.hosts[i].name, name_of(node)),
                "peer_stopped" => format!("{}: {} gone (its graceful leave ended)", c.hosts[i].name, name_of(node)),
                "fault" => format!(
                    "{}: health check {} failed: {} fault",
                    c.hosts[i].name,
                    e["check"].as_str().unwrap_or("?"),
                    e["fault"].as_str().unwrap_or("?")
                ),
                "fault_cured" => format!("{}: health checks pass again", c.hosts[i].name),
                "takeover_requested" | "takeover_accepted" | "takeover_done" | "giveback_requested" | "giveback_done" => {
                    format!("{}: {} ({} by {})", c.hosts[i].name, ev.replace('_', " "), name_of(node), name_of(e["partner"].as_u64().unwrap_or(0)))
                }
                _ => continue,
            };
            // One line per (event, node) within 50 ms.
            if seen.iter().any(|(k, n, st)| k == ev && *n == node && st.abs_diff(t) < 50_000_000 && ev == "peer_silent") {
                continue;
            }
            seen.push((ev.to_string(), node, t));
            out.push(Entry { t, step: step_of(t), what, answers: String::new() });
        }
    }
    out
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    {l}\n")).collect()
}

fn diagnose(rig: &BatonRig) -> String {
    let mut s = String::new();
    for i in 0..3 {
        s += &format!("  {} web: {}\n  last lines of its agent log:\n{}", rig.c.hosts[i].name, web_status(&rig.c, i), tail(&rig.c.agent_log(i), 15));
    }
    s
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

struct Step {
    name: String,
    outage_ms: f64,
    failed: usize,
    after: String,
}

/// The `busybox httpd` processes of each node of `c` (pids).
fn httpd_pids(c: &Cluster) -> Vec<Vec<i32>> {
    c.hosts.iter().map(|h| baton_tests::svc::pids_matching(&h.ns.name, "busybox httpd")).collect()
}

/// Hot standby (`standby = "hot"`): a second cluster whose `web` group keeps
/// httpd running on the next node, bound to the address it does not have
/// yet; node1 crashes and that same process serves. Returns the step, and
/// the cluster's namespaces and pin directories for the final check (the
/// cluster is gone when it returns).
fn hot_standby_step(interval: u64, misses: u32) -> Result<(Step, Vec<String>, Vec<std::path::PathBuf>)> {
    say("hot standby: a second cluster whose `web` has standby = \"hot\" (httpd also runs on the next node, without the address)");
    let mut rig = BatonRig::new("demoh", interval, misses)?;
    rig.c.extra_config = crate::bench_failover::hot_group_toml(&rig.c.dir.join("www"));
    let ns: Vec<String> =
        rig.c.hosts.iter().map(|h| h.ns.name.clone()).chain([rig.c.switch.name.clone(), rig.client.ns.name.clone()]).collect();
    let pins: Vec<_> = (0..3).map(|i| rig.c.bpffs_dir(i)).collect();
    rig.start_all()?;
    let t0 = monotonic_ns();
    if wait_served(&rig.prober, t0, Some("node1"), None, Duration::from_secs(30))?.is_none() {
        bail!("hot standby: web never answered from node1\n{}", diagnose(&rig));
    }
    let ready = crate::bench_failover::wait_for(Duration::from_secs(10), || httpd_pids(&rig.c)[1].len() == 1)?;
    if !ready {
        bail!("hot standby: no standby httpd on node2\n{}", diagnose(&rig));
    }
    let before = httpd_pids(&rig.c);
    println!("  httpd per node: node1 {:?} (serves, holds {VIP}), node2 {:?} (hot standby, no address), node3 {:?}", before[0], before[1], before[2]);
    pause(500)?;
    let t = rig.crash(0);
    println!("  SIGKILL node1's agent and httpd");
    let Some(settled) = wait_served(&rig.prober, t, None, Some("node1"), Duration::from_secs(10))? else {
        bail!("hot standby: no other node served web after node1 crashed\n{}", diagnose(&rig));
    };
    pause(TIMEOUT.as_millis() as u64 + 20)?;
    let (ms, failed) = measure(&window(&rig.prober, t - TIMEOUT.as_nanos() as u64, settled));
    let after_node = answering(&rig.prober).unwrap_or_default();
    crate::bench_failover::wait_for(Duration::from_secs(10), || httpd_pids(&rig.c)[2].len() == 1)?;
    let after = httpd_pids(&rig.c);
    let same = after[1] == before[1];
    println!(
        "  {after_node} serves web after {:.1} ms: outage {ms:.1} ms, {failed} failed requests; node2's httpd {:?} ({}); node3 now runs the standby httpd {:?}",
        (settled - t) as f64 / 1e6,
        after[1],
        if same { "the same process: not restarted" } else { "a NEW process: the standby was not used" },
        after[2]
    );
    let step = Step { name: "crash of node1, hot standby".into(), outage_ms: ms, failed, after: after_node };
    drop(rig);
    Ok((step, ns, pins))
}

pub fn run() -> Result<()> {
    install_sigint();
    remove_leftovers(&["demo", "demoh"]);
    let (interval, misses) = (10u64, 3u32);
    say(&format!(
        "baton demo: 3 nodes, heartbeat every {interval} ms (silent after {misses} misses), group `web` = {VIP_CIDR} + busybox httpd"
    ));
    let mut rig = BatonRig::new("demo", interval, misses)?;
    // The health check of the takeover step (docs/takeover.md).
    rig.c.extra_config += &crate::bench_takeover::ha_toml(&rig.c.dir, 15_000);
    for h in &rig.c.hosts {
        println!("  {} (id {}) in netns {}: {} on ic0 (bridge br0)", h.name, h.id, h.ns.name, h.addrs[0]);
    }
    println!("  client in netns {}: {} on eth0, GET http://{VIP}/ every {} ms, {} ms timeout", rig.client.ns.name, rig.client.addr, PERIOD.as_millis(), TIMEOUT.as_millis());
    println!("  group: preferred node1, nodes [1, 2, 3], transfer_cost free; each node serves a page with its own name");
    println!("  configs, logs and event logs under {}", rig.c.dir.display());
    let t0 = monotonic_ns();
    let mut tl = Timeline { t0, entries: Vec::new() };
    let mut bounds: Vec<(u64, &'static str)> = vec![(0, "start")];

    say("starting the agents");
    for i in 0..3 {
        pause(0)?;
        rig.c.start(i);
        tl.add(monotonic_ns(), "start", format!("{} agent running", rig.c.hosts[i].name));
    }
    rig.c.wait_all_joined(Duration::from_secs(20));
    tl.add(monotonic_ns(), "start", "all three joined");
    let up = match wait_served(&rig.prober, t0, Some("node1"), None, Duration::from_secs(30))? {
        Some(t) => t,
        None => bail!("the web group never answered from node1 within 30 s\n{}", diagnose(&rig)),
    };
    tl.add(up, "start", "web answers from node1 (its preferred node)");
    pause(300)?;
    println!("\n  `baton status` on node2:\n");
    print!("{}", indent(&baton(&rig.c, 1, &["status"]).unwrap_or_else(|e| format!("{e:#}"))));

    let mut steps = Vec::new();

    say("crash: SIGKILL of node1's agent and its httpd (the whole node is gone)");
    pause(500)?;
    let active = answering(&rig.prober).unwrap_or_default();
    let ai = crate::bench_failover::node_index(&active).context("nobody answers")?;
    let t = rig.crash(ai);
    bounds.push((t, "crash"));
    tl.add(t, "crash", format!("SIGKILL {active}'s agent and httpd; its address is gone with it"));
    let settled = match wait_served(&rig.prober, t, None, Some(&active), Duration::from_secs(10))? {
        Some(s) => s,
        None => bail!("no other node served web after {active} crashed\n{}", diagnose(&rig)),
    };
    pause(TIMEOUT.as_millis() as u64 + 20)?;
    let (ms, failed) = measure(&window(&rig.prober, t - TIMEOUT.as_nanos() as u64, settled));
    let now_serving = answering(&rig.prober).unwrap_or_default();
    tl.add(settled, "crash", format!("{now_serving} serves web: client-visible outage {ms:.1} ms, {failed} failed requests"));
    steps.push(Step { name: format!("crash of {active}"), outage_ms: ms, failed, after: now_serving.clone() });

    say(&format!("{active} comes back: restart its agent; transfer cost free, so web moves back to it"));
    pause(1000)?;
    let t = monotonic_ns();
    bounds.push((t, "return"));
    rig.c.start(ai);
    tl.add(t, "return", format!("{active}'s agent restarted"));
    let back = match wait_served(&rig.prober, t, Some(&active), None, Duration::from_secs(30))? {
        Some(s) => s,
        None => bail!("web did not move back to {active}\n{}", diagnose(&rig)),
    };
    pause(TIMEOUT.as_millis() as u64 + 20)?;
    let (ms, failed) = measure(&window(&rig.prober, t, back));
    tl.add(back, "return", format!("{active} serves web again: outage {ms:.1} ms, {failed} failed requests"));
    steps.push(Step { name: format!("{active} rejoins (fall-back)"), outage_ms: ms, failed, after: active.clone() });
    rig.c.wait_all_joined(Duration::from_secs(20));

    say("planned switchover: `baton switchover web 2`");
    pause(1000)?;
    let t = monotonic_ns();
    bounds.push((t, "switchover"));
    let out = baton(&rig.c, ai, &["switchover", "web", "2"])?;
    tl.add(t, "switchover", format!("`baton switchover web 2` on {active}: {}", out.trim()));
    let moved = wait_served(&rig.prober, t, Some("node2"), None, Duration::from_secs(5))?;
    let end = match moved {
        Some(m) => m,
        None => {
            wait_served(&rig.prober, t, None, None, Duration::from_secs(10))?;
            monotonic_ns()
        }
    };
    pause(TIMEOUT.as_millis() as u64 + 20)?;
    let (ms, failed) = measure(&window(&rig.prober, t, end + PERIOD.as_nanos() as u64));
    let after = answering(&rig.prober).unwrap_or_default();
    let lost = if failed > 0 { format!(" over {ms:.1} ms") } else { String::new() };
    match moved {
        Some(m) => tl.add(m, "switchover", format!("node2 serves web: {failed} failed requests{lost}")),
        None => tl.add(end, "switchover", format!("web did not stay on node2: {after} serves it; {failed} failed requests{lost}")),
    }
    steps.push(Step { name: "switchover to node2".into(), outage_ms: ms, failed, after });
    pause(300)?;
    println!("\n  `baton status` on node1:\n");
    print!("{}", indent(&baton(&rig.c, 0, &["status"]).unwrap_or_else(|e| format!("{e:#}"))));

    // Seed 002: a node that knows it is sick hands its work over and takes
    // it back once cured.
    let sick = answering(&rig.prober).unwrap_or_default();
    let si = crate::bench_failover::node_index(&sick).context("nobody answers")?;
    let fault = rig.c.dir.join(format!("fault-{}", rig.c.hosts[si].ns.name));
    say(&format!(
        "negotiated takeover: {sick}'s health check `data` fails (a disk fault, injected as a marker file); its partner takes it over and {sick} leaves"
    ));
    pause(1000)?;
    let t = monotonic_ns();
    bounds.push((t, "takeover"));
    std::fs::write(&fault, "injected by the demo\n")?;
    tl.add(t, "takeover", format!("fault injected on {sick}: {}", fault.display()));
    let served = match wait_served(&rig.prober, t, None, Some(&sick), Duration::from_secs(20))? {
        Some(s) => s,
        None => bail!("no other node served web after {sick}'s fault\n{}", diagnose(&rig)),
    };
    let left = crate::bench_failover::wait_for(Duration::from_secs(20), || {
        rig.c.agents[si].as_mut().is_some_and(|a| a.child.try_wait().ok().flatten().is_some())
    })?;
    if !left {
        bail!("{sick}'s agent did not leave after the takeover\n{}", diagnose(&rig));
    }
    rig.c.agents[si] = None;
    pause(TIMEOUT.as_millis() as u64 + 20)?;
    let (ms, failed) = measure(&window(&rig.prober, t, served + PERIOD.as_nanos() as u64));
    let by = answering(&rig.prober).unwrap_or_default();
    tl.add(served, "takeover", format!("{by} serves web, {:.0} ms after the fault: {failed} failed requests; {sick}'s agent left", (served - t) as f64 / 1e6));
    steps.push(Step { name: format!("takeover of {sick}"), outage_ms: ms, failed, after: by.clone() });

    say(&format!("{sick} restarted while still sick: it stays down (its mark, and {by}'s reminders)"));
    let t = monotonic_ns();
    bounds.push((t, "stay down"));
    rig.c.start(si);
    rig.c.wait_all_joined(Duration::from_secs(20));
    tl.add(monotonic_ns(), "stay down", format!("{sick} joined again; web stays on {}", answering(&rig.prober).unwrap_or_default()));
    pause(500)?;
    println!("\n  `baton status` on {sick}:\n");
    print!("{}", indent(&baton(&rig.c, si, &["status"]).unwrap_or_else(|e| format!("{e:#}"))));

    say(&format!("giveback: the fault is cured; once its checks pass for the cure period, {sick} asks for its work back"));
    pause(500)?;
    let t = monotonic_ns();
    bounds.push((t, "giveback"));
    std::fs::remove_file(&fault)?;
    tl.add(t, "giveback", format!("fault removed on {sick}"));
    let back = match wait_served(&rig.prober, t, Some(&sick), None, Duration::from_secs(20))? {
        Some(s) => s,
        None => bail!("web did not come back to {sick} after the cure\n{}", diagnose(&rig)),
    };
    pause(TIMEOUT.as_millis() as u64 + 20)?;
    let (ms, failed) = measure(&window(&rig.prober, t, back + PERIOD.as_nanos() as u64));
    tl.add(back, "giveback", format!("{sick} serves web again: {failed} failed requests"));
    steps.push(Step { name: format!("giveback to {sick}"), outage_ms: ms, failed, after: sick.clone() });
    pause(300)?;

    // The whole story, merged: steps, the agents' events, the client's view.
    let t_end = monotonic_ns();
    let samples: Vec<Sample> = rig.prober.samples();
    let step_of = |t: u64| bounds.iter().rev().find(|(b, _)| *b <= t).map(|(_, s)| *s).unwrap_or("start");
    let mut entries = std::mem::take(&mut tl.entries);
    entries.extend(agent_entries(&rig.c, t0, step_of));
    entries.extend(client_entries(&samples, step_of));
    entries.retain(|e| e.t <= t_end);
    entries.sort_by_key(|e| e.t);
    for e in entries.iter_mut() {
        if e.answers.is_empty() {
            e.answers = samples
                .iter()
                .filter(|s| s.end_ns <= e.t)
                .max_by_key(|s| s.end_ns)
                .map(|s| s.result.clone().unwrap_or_else(|_| "-".into()))
                .unwrap_or_else(|| "-".into());
        }
    }
    say("timeline (time since the demo started; `answers` = who served the client's latest completed request)");
    println!("  {:>10}  {:<10}  {:<8}  what happened", "time", "step", "answers");
    for e in &entries {
        println!("  {:>8.3} s  {:<10}  {:<8}  {}", e.t.saturating_sub(t0) as f64 / 1e9, e.step, e.answers, e.what);
    }

    // Hot standby, on a cluster of its own (the group above uses the
    // overlap handover, which hot standby excludes).
    let (hot, hot_ns, hot_pins) = hot_standby_step(interval, misses)?;
    steps.push(hot);

    say("summary");
    let served: Vec<&Sample> = samples.iter().filter(|s| s.start_ns >= up).collect();
    let total = served.len();
    let failed_all = served.iter().filter(|s| !s.ok()).count();
    println!("  {:<28} {:>12} {:>16}  served by after", "step", "outage (ms)", "failed requests");
    for s in &steps {
        println!("  {:<28} {:>12.1} {:>16}  {}", s.name, s.outage_ms, s.failed, s.after);
    }
    println!(
        "  client: {total} requests in the {:.1} s since web first answered, {failed_all} failed (outage = first failed request to first success after it; {} ms resolution)",
        (t_end - up) as f64 / 1e9,
        PERIOD.as_millis()
    );

    say("cleaning up");
    let ns: Vec<String> = rig
        .c
        .hosts
        .iter()
        .map(|h| h.ns.name.clone())
        .chain([rig.c.switch.name.clone(), rig.client.ns.name.clone()])
        .chain(hot_ns)
        .collect();
    let pins: Vec<_> = (0..3).map(|i| rig.c.bpffs_dir(i)).chain(hot_pins).collect();
    drop(rig);
    let left = String::from_utf8_lossy(&std::process::Command::new("ip").args(["netns", "list"]).output()?.stdout).to_string();
    let leftover_ns: Vec<&String> = ns.iter().filter(|n| left.lines().any(|l| l.split_whitespace().next() == Some(n.as_str()))).collect();
    let leftover_pins: Vec<_> = pins.iter().filter(|p| p.exists()).collect();
    if !leftover_ns.is_empty() || !leftover_pins.is_empty() {
        bail!("left behind: namespaces {leftover_ns:?}, pins {leftover_pins:?}");
    }
    println!("  agents stopped (graceful leave), httpd stopped, namespaces, veth links, bridge and pinned maps removed");
    Ok(())
}
