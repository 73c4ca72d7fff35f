//! `cargo xtask demo`: a three-node baton cluster in network namespaces on
//! this machine. Shows peers coming up, a node killed and its detection with
//! the measured latency, a link cut on a redundant interconnect, a restart,
//! and a distress signal; then removes everything (also on Ctrl-C).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use baton_tests::{monotonic_ns, wait_until, Cluster};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

fn pause(ms: u64) -> Result<()> {
    let steps = ms / 20;
    for _ in 0..steps {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    check_interrupt()
}

fn say(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

/// Removes namespaces left by a demo that was killed hard.
fn remove_leftovers() {
    if let Ok(out) = std::process::Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with("demo") {
                let _ = std::process::Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

fn wait_event(c: &Cluster, observer: usize, event: &str, node: u32, after: u64) -> Result<serde_json::Value> {
    let mut found = None;
    wait_until(Duration::from_secs(10), || {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return true;
        }
        found = c.events(observer).into_iter().find(|e| {
            e["event"] == event && e["node"] == node && e["agent_ns"].as_u64().unwrap_or(0) >= after
        });
        found.is_some()
    });
    check_interrupt()?;
    found.with_context(|| format!("{} never saw {event} for node {node}", c.hosts[observer].name))
}

fn status_table(c: &Cluster, i: usize) -> Result<String> {
    let out = std::process::Command::new(baton_tests::baton_bin())
        .args(["status", "--config"])
        .arg(c.node_dir(i).join("baton.toml"))
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

pub fn run() -> Result<()> {
    unsafe { libc::signal(libc::SIGINT, on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    remove_leftovers();
    let interval = 10;
    let misses = 3;
    say(&format!("baton demo: 3 nodes, 2 redundant interconnect links, heartbeat every {interval} ms, silent after {misses} misses"));
    let mut c = Cluster::new("demo", 3, 2, interval, misses);
    for h in &c.hosts {
        println!("  {} (id {}) in netns {}: ring0 {} on ic0, ring1 {} on ic1", h.name, h.id, h.ns.name, h.addrs[0], h.addrs[1]);
    }
    println!("  configs, logs and event logs under {}", c.dir.display());

    say("starting the agents one by one");
    let t0 = monotonic_ns();
    for i in 0..3 {
        check_interrupt()?;
        c.start(i);
        println!("  {} running: XDP attached to ic0 and ic1, maps pinned in {}", c.hosts[i].name, c.bpffs_dir(i).display());
    }
    c.wait_all_up(Duration::from_secs(10));
    c.wait_all_joined(Duration::from_secs(15));
    println!("  all three joined the cluster {:.0} ms after the first start (node1 is the master)", (monotonic_ns() - t0) as f64 / 1e6);
    pause(300)?;
    println!("  every node sees every other node up. `baton status` on node1:\n");
    print!("{}", indent(&status_table(&c, 0)?));

    say("SIGKILL node3's agent (its heartbeats stop mid-stream)");
    pause(137)?;
    let t = c.kill(2);
    for i in 0..2 {
        let e = wait_event(&c, i, "peer_silent", 3, t)?;
        let ms = (e["agent_ns"].as_u64().unwrap() - t) as f64 / 1e6;
        println!("  {} declared node3 silent {ms:.1} ms after the kill (bound: {} ms)", c.hosts[i].name, interval * misses);
    }
    wait_until(Duration::from_secs(5), || c.membership(0)["nodes"][2]["state"] == "inactive");
    println!(
        "  node1 and node2 forced node3 out, bottom-up through fencing, storage, addresses, services: done {:.0} ms after the kill",
        (monotonic_ns() - t) as f64 / 1e6
    );
    print!("\n{}", indent(&status_table(&c, 0)?));

    say("restart node3: new incarnation, the peers take it back");
    let t = monotonic_ns();
    c.start(2);
    for i in 0..2 {
        let e = wait_event(&c, i, "peer_up", 3, t)?;
        let ms = (e["agent_ns"].as_u64().unwrap() - t) as f64 / 1e6;
        println!("  {} sees node3 up again {ms:.0} ms after the restart began (incarnation {})", c.hosts[i].name, e["incarnation"]);
    }

    say("cut node2's ring0 link: one link silent, the node stays up on ring1");
    pause(200)?;
    let t = c.cut_link(1, 0);
    let e = wait_event(&c, 0, "link_silent", 2, t)?;
    println!("  node1: link ring0 to node2 silent after {:.1} ms; node2 itself: {}", (e["agent_ns"].as_u64().unwrap() - t) as f64 / 1e6, c.peer_state(0, 2));
    c.heal_link(1, 0);
    let e = wait_event(&c, 0, "link_up", 2, t)?;
    println!("  link healed, ring0 to node2 up again (incarnation {})", e["incarnation"]);

    say("node2 reports a critical local failure: `baton distress --reason component`");
    pause(200)?;
    let t = monotonic_ns();
    let out = std::process::Command::new(baton_tests::baton_bin())
        .args(["distress", "--reason", "component", "--config"])
        .arg(c.node_dir(1).join("baton.toml"))
        .output()?;
    if !out.status.success() {
        bail!("baton distress failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    for i in [0, 2] {
        let e = wait_event(&c, i, "peer_distress", 2, t)?;
        let ms = (e["agent_ns"].as_u64().unwrap() - t) as f64 / 1e6;
        println!("  {} got node2's distress {ms:.1} ms later, without waiting for a timeout", c.hosts[i].name);
    }
    pause(200)?;
    print!("\n{}", indent(&status_table(&c, 0)?));

    say("the event log of node1 (state/events.jsonl)");
    for e in c.events(0) {
        println!("  {e}");
    }

    say("cleaning up");
    let ns: Vec<String> = c.hosts.iter().map(|h| h.ns.name.clone()).chain([c.switch.name.clone()]).collect();
    let pins: Vec<_> = (0..3).map(|i| c.bpffs_dir(i)).collect();
    drop(c);
    let left = String::from_utf8_lossy(&std::process::Command::new("ip").args(["netns", "list"]).output()?.stdout).to_string();
    let leftover_ns: Vec<&String> = ns.iter().filter(|n| left.contains(n.as_str())).collect();
    let leftover_pins: Vec<_> = pins.iter().filter(|p| p.exists()).collect();
    if !leftover_ns.is_empty() || !leftover_pins.is_empty() {
        bail!("left behind: namespaces {leftover_ns:?}, pins {leftover_pins:?}");
    }
    println!("  agents stopped, namespaces, veth links, bridges and pinned maps removed");
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}
