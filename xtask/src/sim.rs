//! `cargo xtask sim`: runs seeded simulations of many membership managers
//! (baton-core's `sim`) and checks their invariants. Every failure prints the
//! one command that reproduces it.

use anyhow::{bail, Result};
use baton_core::sim::{run_seed, run_seed_traced, SimConfig};

pub struct SimOpts {
    pub seeds: u64,
    pub start: u64,
    pub seed: Option<u64>,
    pub trace: bool,
}

pub fn run(o: &SimOpts) -> Result<()> {
    if let Some(seed) = o.seed {
        let (r, trace) = run_seed_traced(seed);
        if o.trace {
            for l in &trace {
                println!("{l}");
            }
        }
        println!("seed {seed}: {} ({} events, {} messages, trace {:016x})", SimConfig::from_seed(seed).describe(), r.events, r.messages, r.trace_hash);
        let again = run_seed(seed);
        if again.trace_hash != r.trace_hash {
            bail!("seed {seed} is not deterministic: trace {:016x} then {:016x}", r.trace_hash, again.trace_hash);
        }
        if !r.ok() {
            for v in &r.violations {
                println!("  violation: {v}");
            }
            bail!("seed {seed} failed; reproduce with: cargo xtask sim --seed {seed} --trace");
        }
        println!("seed {seed}: ok, final view {:?}", r.final_view);
        return Ok(());
    }
    let seeds: Vec<u64> = (o.start..o.start + o.seeds).collect();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(1);
    let chunks: Vec<Vec<u64>> = (0..threads).map(|t| seeds.iter().copied().skip(t).step_by(threads).collect()).collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|c| std::thread::spawn(move || c.into_iter().map(run_seed).collect::<Vec<_>>()))
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.extend(h.join().expect("sim thread"));
    }
    results.sort_by_key(|r| r.seed);
    let failed: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    let events: u64 = results.iter().map(|r| r.events).sum();
    // Determinism: the same seed twice gives the same trace.
    let mut nondet = Vec::new();
    for r in results.iter().take(5).chain(failed.iter().copied()) {
        let again = run_seed(r.seed);
        if again.trace_hash != r.trace_hash {
            nondet.push(r.seed);
        }
    }
    for r in &failed {
        println!("FAILED seed {} ({}):", r.seed, SimConfig::from_seed(r.seed).describe());
        for v in r.violations.iter().take(5) {
            println!("  {v}");
        }
        println!("  reproduce: cargo xtask sim --seed {} --trace", r.seed);
    }
    for s in &nondet {
        println!("NONDETERMINISTIC seed {s}: reproduce: cargo xtask sim --seed {s}");
    }
    println!(
        "sim: {} seeds ({}..{}), {} events, {} failed, determinism rechecked on {} seeds",
        results.len(),
        o.start,
        o.start + o.seeds - 1,
        events,
        failed.len(),
        5.min(results.len()) + failed.len()
    );
    if !failed.is_empty() || !nondet.is_empty() {
        bail!("{} seed(s) failed", failed.len() + nondet.len());
    }
    Ok(())
}
