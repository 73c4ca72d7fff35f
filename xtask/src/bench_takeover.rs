//! `cargo xtask bench takeover`: negotiated takeover and giveback (seed 002,
//! docs/takeover.md) of the `web` group under the demo's client load: a GET
//! every 5 ms (100 ms timeout). Each round: a fault is injected on the node
//! serving `web` (its health check, every 50 ms with a threshold of 2, fails
//! on a marker file); its partner takes it over (the overlap handover) and
//! it leaves; it is restarted (it stays down); the fault is cured and the
//! giveback returns `web`. Measured: the failed requests and the outage of
//! each takeover and giveback, and the time from the fault to the partner
//! serving. Last, a node whose application does not stop is forced down
//! when the countdown expires.

use std::path::Path;
use std::time::Duration;

use crate::bench::{percentile, round1};
use anyhow::{bail, Context, Result};
use baton_tests::{monotonic_ns, Cluster};

use crate::bench_failover::{
    answering, group_toml, install_sigint, measure, node_index, pause, remove_leftovers, wait_for, wait_served, window, write_www,
    BatonRig, PERIOD, TIMEOUT,
};

#[derive(Debug, Clone)]
pub struct TakeoverOpts {
    pub runs: u32,
    pub interval_ms: u64,
    pub misses: u32,
}



/// The health check and takeover settings (a marker file per node is the fault).
pub fn ha_toml(dir: &Path, countdown_ms: u32) -> String {
    format!(
        "\n[[health]]\nname = \"data\"\nkind = \"command\"\ncommand = \"test ! -e {}/fault-$(ip netns identify)\"\nfault = \"disk\"\ninterval_ms = 50\nthreshold = 2\n\n\
         [takeover]\ncountdown_ms = {countdown_ms}\ncure_ms = 300\n",
        dir.display()
    )
}

fn new_rig(tag: &str, opts: &TakeoverOpts, countdown_ms: u32, app_extra: Option<&str>) -> Result<BatonRig> {
    let mut rig = BatonRig::new(tag, opts.interval_ms, opts.misses)?;
    let www = write_www(&rig.c)?;
    let mut group = group_toml(&www);
    if let Some(extra) = app_extra {
        // (NS1: node1's network namespace.)
        group = group.replace("stop_timeout_ms = 2000\n", &extra.replace("NS1", &rig.c.hosts[0].ns.name));
    }
    rig.c.extra_config = format!("{group}{}", ha_toml(&rig.c.dir, countdown_ms));
    rig.start_all()?;
    let t = monotonic_ns();
    wait_served(&rig.prober, t, Some("node1"), None, Duration::from_secs(30))?.context("web never answered from node1")?;
    Ok(rig)
}

fn fault_file(c: &Cluster, i: usize) -> std::path::PathBuf {
    c.dir.join(format!("fault-{}", c.hosts[i].ns.name))
}

/// What went wrong with each failed request of a window, counted by cause.
fn note_failures(notes: &mut Vec<String>, what: &str, v: &[baton_tests::Sample]) {
    let mut causes: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for s in v {
        if let Err(e) = &s.result {
            *causes.entry(e.as_str()).or_default() += 1;
        }
    }
    if !causes.is_empty() {
        let list: Vec<String> = causes.iter().map(|(e, n)| format!("{n} x {e}")).collect();
        notes.push(format!("{what}: failed requests: {}", list.join(", ")));
    }
}

#[derive(Default)]
struct Results {
    takeover_failed: Vec<usize>,
    takeover_outage: Vec<f64>,
    fault_to_served: Vec<f64>,
    giveback_failed: Vec<usize>,
    giveback_outage: Vec<f64>,
    notes: Vec<String>,
}

pub fn takeover(opts: &TakeoverOpts) -> Result<()> {
    install_sigint();
    remove_leftovers(&["btk", "btf"]);
    eprintln!(
        "bench takeover: 3 nodes + a client in network namespaces, web = VIP + busybox httpd with the overlap handover, \
         GET every {} ms ({} ms timeout); {} takeovers and givebacks; heartbeats {} ms x {}",
        PERIOD.as_millis(),
        TIMEOUT.as_millis(),
        opts.runs,
        opts.interval_ms,
        opts.misses
    );
    let mut r = Results::default();
    let mut rig = new_rig("btk", opts, 15_000, None)?;
    for k in 0..opts.runs {
        let res = (|| -> Result<()> {
            pause(300)?;
            let active = answering(&rig.prober).and_then(|n| node_index(&n)).context("nobody answers")?;
            let name = rig.c.hosts[active].name.clone();
            // The fault.
            let t = monotonic_ns();
            std::fs::write(fault_file(&rig.c, active), "fault\n")?;
            let served = wait_served(&rig.prober, t, None, Some(&name), Duration::from_secs(20))?
                .with_context(|| format!("nobody else served after {name}'s fault"))?;
            let by = answering(&rig.prober).unwrap_or_default();
            // The old node leaves: its agent exits.
            let left = wait_for(Duration::from_secs(20), || rig.c.agents[active].as_mut().is_some_and(|a| a.child.try_wait().ok().flatten().is_some()))?;
            if !left {
                bail!("{name}'s agent did not leave after the takeover");
            }
            rig.c.agents[active] = None;
            pause(TIMEOUT.as_millis() as u64 + 50)?;
            let v = window(&rig.prober, t, monotonic_ns());
            let (ms, failed) = measure(&v);
            note_failures(&mut r.notes, &format!("takeover {}", k + 1), &v);
            r.takeover_failed.push(failed);
            r.takeover_outage.push(ms);
            r.fault_to_served.push(served.saturating_sub(t) as f64 / 1e6);
            eprint!("\r  takeover {}/{}: {name} -> {by}: fault to served {:.0} ms, {failed} failed, outage {ms:.1} ms   ", k + 1, opts.runs, served.saturating_sub(t) as f64 / 1e6);
            // Back, still faulty: it stays down.
            rig.c.start(active);
            rig.c.wait_all_joined(Duration::from_secs(20));
            pause(500)?;
            if answering(&rig.prober).as_deref() == Some(name.as_str()) {
                bail!("{name} took web back while it was marked down");
            }
            // Cured: giveback.
            let t2 = monotonic_ns();
            std::fs::remove_file(fault_file(&rig.c, active))?;
            let back = wait_served(&rig.prober, t2, Some(&name), None, Duration::from_secs(20))?
                .with_context(|| format!("web did not come back to {name} after the cure"))?;
            pause(TIMEOUT.as_millis() as u64 + 50)?;
            let v = window(&rig.prober, t2, back + PERIOD.as_nanos() as u64);
            let (ms, failed) = measure(&v);
            note_failures(&mut r.notes, &format!("giveback {}", k + 1), &v);
            r.giveback_failed.push(failed);
            r.giveback_outage.push(ms);
            eprint!("\r  giveback {}/{}: {by} -> {name}: {failed} failed, outage {ms:.1} ms                       ", k + 1, opts.runs);
            rig.c.wait_all_joined(Duration::from_secs(20));
            Ok(())
        })();
        if let Err(e) = res {
            crate::bench_failover::check_interrupt()?;
            r.notes.push(format!("round {k}: {e:#}; the cluster was rebuilt"));
            eprintln!("\n  round {k} failed ({e:#}); rebuilding");
            for i in 0..3 {
                let _ = std::fs::remove_file(fault_file(&rig.c, i));
            }
            drop(rig);
            rig = new_rig("btk", opts, 15_000, None)?;
        }
    }
    eprintln!();
    drop(rig);

    // A node that does not shut down: forced at countdown expiry.
    let forced_ok = (|| -> Result<bool> {
        let c_stop = "stop = \"if [ $(ip netns identify) = NS1 ]; then sleep 20; fi\"\nstop_timeout_ms = 30000\n";
        let rig = new_rig("btf", opts, 1500, Some(c_stop))?;
        let t = monotonic_ns();
        std::fs::write(fault_file(&rig.c, 0), "fault\n")?;
        let forced = wait_for(Duration::from_secs(20), || !rig.c.events(1).iter().all(|e| e["event"] != "takeover_forced"))?;
        let served = wait_served(&rig.prober, t, None, Some("node1"), Duration::from_secs(20))?.is_some();
        if !forced || !served {
            r.notes.push(format!("forced takeover: takeover_forced at node2 {forced}, served elsewhere {served}"));
        }
        Ok(forced && served)
    })()
    .unwrap_or_else(|e| {
        r.notes.push(format!("forced takeover: {e:#}"));
        false
    });

    let sum = |v: &[usize]| v.iter().sum::<usize>();
    println!();
    println!("negotiated takeover and giveback of web, {} rounds, GET every {} ms ({} ms timeout)", opts.runs, PERIOD.as_millis(), TIMEOUT.as_millis());
    println!("{:<40} {:>10} {:>10}", "", "takeover", "giveback");
    println!("{:<40} {:>10} {:>10}", "rounds measured", r.takeover_failed.len(), r.giveback_failed.len());
    println!("{:<40} {:>10} {:>10}", "failed requests (total)", sum(&r.takeover_failed), sum(&r.giveback_failed));
    println!(
        "{:<40} {:>10} {:>10}",
        "rounds with a failed request",
        r.takeover_failed.iter().filter(|n| **n > 0).count(),
        r.giveback_failed.iter().filter(|n| **n > 0).count()
    );
    println!("{:<40} {:>10.1} {:>10.1}", "outage p50 (ms)", percentile(&r.takeover_outage, 50.0), percentile(&r.giveback_outage, 50.0));
    println!("{:<40} {:>10.1} {:>10.1}", "outage p99 (ms)", percentile(&r.takeover_outage, 99.0), percentile(&r.giveback_outage, 99.0));
    println!("{:<40} {:>10.1}", "fault to served by the partner p50 (ms)", percentile(&r.fault_to_served, 50.0));
    println!("{:<40} {:>10.1}", "fault to served by the partner p99 (ms)", percentile(&r.fault_to_served, 99.0));
    println!("{:<40} {:>10}", "forced down at countdown expiry", forced_ok);
    println!("(fault to served includes the health check: every 50 ms, 2 failures in a row)");
    for n in &r.notes {
        println!("note: {n}");
    }
    let failed_rounds = opts.runs as usize - r.takeover_failed.len().min(r.giveback_failed.len());
    println!(
        "{}",
        serde_json::json!({
            "takeover_failed_requests": sum(&r.takeover_failed),
            "giveback_failed_requests": sum(&r.giveback_failed),
            "takeover_outage_p99_ms": round1(percentile(&r.takeover_outage, 99.0)),
            "giveback_outage_p99_ms": round1(percentile(&r.giveback_outage, 99.0)),
            "fault_to_served_p99_ms": round1(percentile(&r.fault_to_served, 99.0)),
            "forced_after_countdown_ok": forced_ok,
            "rounds": opts.runs,
            "failed_rounds": failed_rounds,
        })
    );
    Ok(())
}
