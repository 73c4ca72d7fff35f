//! `cargo xtask fuzz`: coverage-guided fuzzing of baton's parsers of
//! untrusted input with libFuzzer (the `fuzz/` crate, libfuzzer-sys).
//!
//! Toolchain: the stable one CI installs (rustup's default), with
//! `RUSTC_BOOTSTRAP=1`, because the instrumentation needs
//! `-Zsanitizer=address` (stable's standard library ships the sanitizer
//! runtimes; the eBPF build already relies on `RUSTC_BOOTSTRAP`); no
//! nightly toolchain is needed. The flags are those cargo-fuzz passes (SanitizerCoverage with inline 8-bit counters, a PC
//! table and comparison tracing, `--cfg fuzzing`, AddressSanitizer, debug
//! assertions), so cargo-fuzz itself is not needed. Built for the host
//! target explicitly, so that build scripts and proc-macros are not
//! instrumented. The eBPF object the agent embeds is taken from an earlier
//! build of the workspace when there is one (`BATON_EBPF_OBJ`).
//!
//! Each target runs for `--secs` seconds (default 20: five targets, under
//! two minutes of fuzzing) on its corpus `fuzz/corpus/<target>/` (created;
//! what libFuzzer finds is added there, not committed). A crash fails the
//! command with the input's path (`fuzz/artifacts/<target>/`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const TARGETS: [&str; 5] = ["datagram", "channel_frames", "control_line", "subsys_line", "config_toml"];

const RUSTFLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Zsanitizer=address -Cdebug-assertions -Coverflow-checks";

const HOST: &str = "x86_64-unknown-linux-gnu";

/// The newest eBPF object of an earlier workspace build, if any.
fn ebpf_object(target: &Path) -> Option<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for profile in ["debug", "release"] {
        let Ok(rd) = std::fs::read_dir(target.join(profile).join("build")) else { continue };
        for e in rd.flatten() {
            let p = e.path().join("out").join("baton-ebpf.o");
            if let Ok(m) = std::fs::metadata(&p).and_then(|m| m.modified()) {
                if best.as_ref().is_none_or(|(t, _)| m > *t) {
                    best = Some((m, p));
                }
            }
        }
    }
    best.map(|(_, p)| p)
}

pub fn run(root: &Path, target: &Path, secs: u64, only: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match only {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?} (targets: {})", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let fuzz_dir = root.join("fuzz");
    let out = target.join("fuzz");
    let mut build = Command::new("cargo");
    build
        .current_dir(&fuzz_dir)
        .args(["build", "--release", "--target", HOST, "--bins"])
        .env("CARGO_TARGET_DIR", &out)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", RUSTFLAGS)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER");
    if let Some(obj) = ebpf_object(target) {
        build.env("BATON_EBPF_OBJ", &obj);
    }
    eprintln!("xtask: fuzz: building the targets with libFuzzer ({build:?})");
    let st = build.status().context("running cargo")?;
    if !st.success() {
        bail!("building the fuzz targets failed ({st})");
    }
    let mut summary = Vec::new();
    for t in targets {
        let corpus = fuzz_dir.join("corpus").join(t);
        let artifacts = fuzz_dir.join("artifacts").join(t);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let bin = out.join(HOST).join("release").join(t);
        eprintln!("xtask: fuzz: {t} for {secs} s");
        let o = Command::new(&bin)
            .arg(format!("-max_total_time={secs}"))
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(&corpus)
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        let err = String::from_utf8_lossy(&o.stderr);
        // libFuzzer's last status line: "#N DONE cov: C ft: F corp: ...".
        let done = err
            .lines()
            .rfind(|l| l.starts_with('#') && l[1..].starts_with(|c: char| c.is_ascii_digit()) && l.contains("cov:"))
            .unwrap_or("")
            .to_string();
        let runs = err.lines().find_map(|l| l.strip_prefix("stat::number_of_executed_units:")).map(|s| s.trim().to_string()).unwrap_or_default();
        if !o.status.success() {
            let tail: Vec<&str> = err.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("{}", tail.join("\n"));
            bail!("fuzz target {t} failed ({}); the input is in {}", o.status, artifacts.display());
        }
        summary.push(format!("{t}: {runs} runs, {done}"));
    }
    for s in &summary {
        println!("fuzz {s}");
    }
    Ok(())
}
