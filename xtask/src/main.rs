//! baton's developer tasks: `cargo xtask <command>` (alias in .cargo/config.toml).

mod bench;
mod bench_failover;
mod bench_fence;
mod bench_takeover;
mod bench_membership;
mod chaos;
mod deb;
mod demo;
mod fuzz;
mod setup;
mod sim;
mod vagrant;
mod vm;

use std::path::PathBuf;
use std::process::{self, Command};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "baton developer tasks",
    bin_name = "cargo xtask"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install build/test prerequisites (Debian/Ubuntu, as root; a no-op when all are present)
    ///
    /// apt packages (rustc-web, cargo-web, libstd-rust-web-dev-bpf, llvm-22-dev, keepalived, bpftool, ...),
    /// bpf-linker 0.13.0, or rust-src for rustup nightly where the Debian toolchain is unavailable.
    Setup,
    /// Check prerequisites, then build the release agent (with the embedded eBPF object).
    Build,
    /// Run `setup`, build the debug agent, then `cargo test --workspace` (kernel tests need root).
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the demo.
    Demo,
    /// Fuzz the parsers of untrusted input with libFuzzer (stable + RUSTC_BOOTSTRAP=1; `fuzz/`).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// One target only (datagram, channel_frames, control_line, subsys_line, config_toml).
        #[arg(long)]
        target: Option<String>,
    },
    /// Run seeded simulations of composed nodes (membership + services) and check invariants.
    Sim {
        /// Number of seeds to run (from --start).
        #[arg(long, default_value_t = 300)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 1)]
        start: u64,
        /// Run this one seed only (what a failure tells you to run).
        #[arg(long)]
        seed: Option<u64>,
        /// With --seed: print the whole event trace.
        #[arg(long)]
        trace: bool,
        /// Run each seed once, not twice (a long sweep; determinism unchecked).
        #[arg(long)]
        once: bool,
    },
    /// Run a benchmark.
    Bench {
        /// Which benchmark to run.
        #[arg(value_enum)]
        which: Bench,
        /// Number of kills to measure (fence: 20, and as many fence_scsi runs).
        #[arg(long, default_value_t = 30, default_value_if("which", "fence", Some("20")))]
        kills: u32,
        /// Soak duration in seconds.
        #[arg(long, default_value_t = 180)]
        soak_secs: u64,
        /// detect: minutes of the soak under `stress-ng --cpu 2 --io 2 --vm 1` (0: none).
        #[arg(long, default_value_t = 10.0)]
        stress_minutes: f64,
        /// Heartbeat interval in milliseconds (fence: 100, for the emulated VM).
        #[arg(long, default_value_t = 10, default_value_if("which", "fence", Some("100")))]
        interval_ms: u64,
        /// Missed heartbeats before a peer is declared dead (fence: 5).
        #[arg(long, default_value_t = 3, default_value_if("which", "fence", Some("5")))]
        misses: u32,
        /// membership: cluster sizes (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "3,8,16,32")]
        sizes: Vec<usize>,
        /// membership: forced leaves (kill, then restart and rejoin) per cluster.
        #[arg(long, default_value_t = 3)]
        leaves: u32,
        /// membership: heartbeat interval for clusters of 32 nodes or more, in milliseconds.
        #[arg(long, default_value_t = 20)]
        interval_ms_32: u64,
        /// membership: members per S3 subgroup ("with subgroups"; "without" is 1).
        #[arg(long, default_value_t = 4)]
        subgroup_size: usize,
        /// membership: `membership.resend_ms` of the message-count clusters (form_ms is 3 times it).
        #[arg(long, default_value_t = 2000)]
        count_resend_ms: u32,
        /// membership: attempts per cluster (a cluster whose agents halt or do not converge is
        /// retried up to this many times; every failed attempt is still a failure of the run).
        #[arg(long, default_value_t = 1)]
        attempts: u32,
        /// failover: crashes, link cuts and switchovers to measure (each);
        /// takeover: rounds (a takeover and a giveback each). `--events` is the same.
        #[arg(long, visible_alias = "events", default_value_t = 20)]
        crashes: u32,
    },
    /// Chaos: a cluster in network namespaces with client load on two groups and a seeded
    /// nemesis (kills, pauses, cuts, partitions, one-way and lossy links, restarts mid-transition,
    /// stress-ng, operator commands), invariants checked from outside (docs/chaos.md).
    /// The last line is a JSON summary; the exit status is non-zero on any violation.
    Chaos {
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// The seed of every choice of the nemesis.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 10)]
        interval_ms: u32,
        #[arg(long, default_value_t = 3)]
        misses: u32,
        /// Convergence bound after each heal, in ms (plus the rejoin back-off the halted nodes logged).
        #[arg(long, default_value_t = 20000)]
        converge_ms: u64,
        /// A node continued or restarted is left out of the two-owner checks for this long (ms).
        #[arg(long, default_value_t = 1000)]
        release_ms: u64,
        /// Only these fault kinds (comma-separated; default all).
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        /// Client request period per group, in ms.
        #[arg(long, default_value_t = 10)]
        period_ms: u64,
        /// Use the debug agent (as `cargo xtask test` builds it) instead of the release build.
        #[arg(long)]
        debug: bool,
    },
    /// Build the Debian package baton_<version>_amd64.deb (cargo-deb, installed when missing):
    /// the release binary, the systemd unit, an example /etc/baton/baton.toml, man pages and completions.
    Deb {
        /// Then check it: control fields and files, and an install into a throwaway Debian 12 root
        /// (mmdebstrap; root): dpkg -i, baton --version, man, keygen, config check, purge.
        #[arg(long)]
        check: bool,
    },
    /// Check vagrant/ without starting VMs: `vagrant validate` (vagrant installed when missing)
    /// and every node's configuration rendered by vagrant/provision.sh passes `baton config check`.
    VagrantValidate,
    /// The Vagrant provisioning without VMs (root): the .deb, each node's configuration from the
    /// template and one key in three Debian 12 roots in network namespaces; the agents join, web runs
    /// on node1, node1 crashes, a client is served by node2 or node3 (vagrant/chroot-test.sh).
    VagrantChrootTest,
    /// The .deb under a real systemd (root): three Debian 12 machines booted with systemd as PID 1
    /// (systemd-nspawn), provisioned by vagrant/provision.sh; Type=notify, journal fields, systemctl
    /// reload, WatchdogSec, Restart=on-failure, systemd-unit groups over D-Bus, a crash failover and
    /// systemctl stop as a graceful leave (vagrant/systemd-test.sh).
    SystemdTest {
        /// Use this package instead of building it (`cargo xtask deb`).
        #[arg(long)]
        deb: Option<std::path::PathBuf>,
    },
    /// The test VM on Debian 12's own kernel with an LIO iSCSI target (docs/vm.md).
    Vm {
        #[command(subcommand)]
        cmd: vm::VmCmd,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Bench {
    /// Failure-detection latency.
    Detect,
    /// Membership: mass join, forced leave, messages per change with and without S3 subgroups.
    Membership,
    /// Failover: client-visible outage of a resource group on crash, link cut and switchover, beside keepalived.
    Failover,
    /// Fencing in the test VM: SCSI-3 preempt of a crashed node's key, kill to service, beside Debian's fence_scsi.
    Fence,
    /// Negotiated takeover and giveback of web under client load (seed 002).
    Takeover,
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build => build(),
        Cmd::Test { args } => test(&args),
        Cmd::Demo => prepare_release().and_then(|_| demo::run()),
        Cmd::Vm { cmd } => vm::run(cmd),
        Cmd::VagrantValidate => vagrant::validate(),
        Cmd::VagrantChrootTest => vagrant::chroot_test(),
        Cmd::SystemdTest { deb } => vagrant::systemd_test(deb),
        Cmd::Deb { check } => deb::build().and_then(|p| if check { deb::check(&p) } else { Ok(()) }),
        Cmd::Fuzz { secs, target } => target_dir().and_then(|t| fuzz::run(&workspace_root(), &t, secs, target.as_deref())),
        Cmd::Sim { seeds, start, seed, trace, once } => sim::run(&sim::SimOpts { seeds, start, seed, trace, once }),
        Cmd::Chaos { nodes, minutes, seed, interval_ms, misses, converge_ms, release_ms, kinds, period_ms, debug } => {
            (if debug { prepare_debug() } else { prepare_release() }).and_then(|_| {
                chaos::run(&chaos::ChaosOpts { nodes, minutes, seed, interval_ms, misses, converge_ms, release_ms, kinds, period_ms })
            })
        }
        Cmd::Bench {
            which: Bench::Membership,
            interval_ms,
            misses,
            sizes,
            leaves,
            interval_ms_32,
            subgroup_size,
            count_resend_ms,
            attempts,
            ..
        // (BATON_BENCH_BIN: that agent binary runs; no release build is needed.)
        } => (if std::env::var_os("BATON_BENCH_BIN").is_some() { setup::setup() } else { prepare_release() }).and_then(|_| bench_membership::membership(&bench_membership::MembershipOpts {
            sizes,
            leaves,
            interval_ms,
            interval_ms_32,
            misses,
            subgroup_size,
            count_resend_ms,
            attempts,
        })),
        Cmd::Bench {
            which: Bench::Failover,
            crashes,
            interval_ms,
            misses,
            ..
        } => prepare_release().and_then(|_| bench_failover::failover(&bench_failover::FailoverOpts {
            crashes,
            interval_ms,
            misses,
        })),
        Cmd::Bench {
            which: Bench::Takeover,
            crashes,
            interval_ms,
            misses,
            ..
        } => prepare_release().and_then(|_| bench_takeover::takeover(&bench_takeover::TakeoverOpts { runs: crashes, interval_ms, misses })),
        Cmd::Bench {
            which: Bench::Fence,
            kills,
            interval_ms,
            misses,
            ..
        } => prepare_release().and_then(|_| bench_fence::fence(&bench_fence::FenceOpts { kills, interval_ms, misses })),
        Cmd::Bench {
            which: Bench::Detect,
            kills,
            soak_secs,
            stress_minutes,
            interval_ms,
            misses,
            ..
        } => prepare_release().and_then(|_| bench::detect(&bench::DetectOpts {
            kills,
            soak_secs,
            stress_minutes,
            interval_ms,
            misses,
        })),
    };
    if let Err(e) = res {
        eprintln!("xtask: error: {e:#}");
        process::exit(1);
    }
}

/// Workspace root (xtask lives in <root>/xtask).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent dir")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// The workspace's target directory (honours CARGO_TARGET_DIR / config).
fn target_dir() -> Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let dir = v["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// Run a cargo command; on failure exit with its exit code.
fn run_cargo(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        eprintln!("xtask: error: {cmd:?} failed ({status})");
        process::exit(status.code().filter(|&c| c != 0).unwrap_or(1));
    }
    Ok(())
}

/// For `demo` and `bench`: install prerequisites, build the release agent,
/// and point the namespace harness at it.
fn prepare_release() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("this needs root (network namespaces, XDP, bpffs): run it with sudo or as root");
    }
    setup::setup()?;
    run_cargo(cargo().args(["build", "--release", "-p", "baton-agent"]))?;
    let bin = target_dir()?.join("release/baton");
    std::env::set_var("BATON_BIN", &bin);
    Ok(())
}

/// For `chaos --debug`: like [`prepare_release`] with the debug agent
/// (`$BATON_BIN` when set: an agent built already, as in CI after `test`).
fn prepare_debug() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("this needs root (network namespaces, XDP, bpffs): run it with sudo or as root");
    }
    setup::setup()?;
    if std::env::var_os("BATON_BIN").is_some_and(|b| std::path::Path::new(&b).is_file()) {
        return Ok(());
    }
    run_cargo(cargo().args(["build", "-p", "baton-agent"]))?;
    std::env::set_var("BATON_BIN", target_dir()?.join("debug/baton"));
    Ok(())
}

fn build() -> Result<()> {
    setup::check()?;
    run_cargo(cargo().args(["build", "--release", "-p", "baton-agent"]))?;
    let bin = target_dir()?.join("release/baton");
    if !bin.is_file() {
        bail!("build succeeded but {} does not exist", bin.display());
    }
    println!("{}", bin.display());
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    setup::setup()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xtask: warning: not running as root; the kernel tests in baton-tests need root");
    }
    determinism_check()?;
    run_cargo(cargo().args(["build", "-p", "baton-agent"]))?;
    let bin = target_dir()?.join("debug/baton");
    if !bin.is_file() {
        bail!("build succeeded but {} does not exist", bin.display());
    }
    let mut cmd = cargo();
    cmd.arg("test");
    let cargo_args: Vec<&String> = extra.iter().take_while(|a| *a != "--").collect();
    // `--workspace` would override a `-p` given by the user.
    let picks_package = cargo_args
        .iter()
        .any(|a| a.starts_with("-p") || a.starts_with("--package"));
    if !picks_package {
        cmd.arg("--workspace");
    }
    // Run every test binary even if an earlier one fails (the exit status still reflects failures).
    if !cargo_args.iter().any(|a| *a == "--no-fail-fast") {
        cmd.arg("--no-fail-fast");
    }
    cmd.args(extra).env("BATON_BIN", &bin);
    run_cargo_tests(&mut cmd)
}

/// The cores (`baton-core`) must stay sans-IO and deterministic: clippy
/// with core/clippy.toml refuses a std `HashMap`/`HashSet` (iteration order),
/// a clock read (`Instant::now`, `SystemTime::now`) and an OS-seeded random
/// number generator in its library code. Only these lints are checked here.
fn determinism_check() -> Result<()> {
    run_cargo(cargo().args(["clippy", "-p", "baton-core", "--lib", "--", "-A", "clippy::all", "-D", "clippy::disallowed_types", "-D", "clippy::disallowed_methods"]))
        .context("the determinism check of baton-core failed (core/clippy.toml says what is refused and why)")
}

/// Where the tests note that they skipped (`baton_tests::note_skipped`).
fn skip_log() -> Result<PathBuf> {
    Ok(target_dir()?.join("baton-skipped.log"))
}

/// Runs `cargo test`, echoing its output, and closes with one summary line
/// over every test binary ("tests: N passed, N failed"), so the last line
/// says how many tests ran in all (the last binary is often a doc-test run
/// with none). Exits with cargo's status on failure.
fn run_cargo_tests(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let skips = skip_log()?;
    let _ = std::fs::remove_file(&skips);
    cmd.env("BATON_SKIP_LOG", &skips);
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().expect("piped stdout");
    let mut out = std::io::stdout();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        writeln!(out, "{line}")?;
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let words: Vec<&str> = part.split_whitespace().collect();
                let n = |w: &[&str]| w.iter().find_map(|x| x.parse::<u64>().ok()).unwrap_or(0);
                if part.contains(" passed") {
                    passed += n(&words);
                } else if part.contains(" failed") {
                    failed += n(&words);
                } else if part.contains(" ignored") {
                    ignored += n(&words);
                }
            }
        }
    }
    let status = child.wait()?;
    // A test that found it could not run here (no root, no netns, no VM, a
    // missing package) returned early and counted as passed: it is skipped.
    let skipped_lines: Vec<String> = std::fs::read_to_string(&skips).unwrap_or_default().lines().map(str::to_string).collect();
    let skipped = skipped_lines.len() as u64;
    if skipped > 0 {
        let mut why: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for l in &skipped_lines {
            *why.entry(l.split_once('\t').map(|(_, w)| w.to_string()).unwrap_or_default()).or_default() += 1;
        }
        for (w, n) in why {
            println!("skipped: {n} × {w}");
        }
    }
    println!("tests: {} passed, {failed} failed, {skipped} skipped, {ignored} ignored", passed.saturating_sub(skipped));
    if !status.success() {
        eprintln!("xtask: error: {cmd:?} failed ({status})");
        process::exit(status.code().filter(|&c| c != 0).unwrap_or(1));
    }
    if passed.saturating_sub(skipped) == 0 {
        bail!("no test ran");
    }
    Ok(())
}
