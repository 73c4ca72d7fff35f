//! `baton`: the agent daemon and its command-line interface.

use std::path::PathBuf;
use std::os::unix::process::CommandExt;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use baton_agent::{config, control::socket as control, config::groups, paths, daemon::run, datapath::status};

#[derive(Parser)]
#[command(name = "baton", version, about = "baton: a Linux high-availability cluster agent with an XDP datapath")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (needs CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON).
    Run {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the local view of peers, read from the pinned maps.
    Status {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        /// The whole status as JSON (schema: docs/status-json.md).
        #[arg(long)]
        json: bool,
        /// Refresh until interrupted (as crm_mon): the screen is redrawn on
        /// a terminal; otherwise each view follows the last (with --json:
        /// one JSON document per line).
        #[arg(long, short)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, short, default_value_t = 2.0, requires = "watch")]
        interval: f64,
    },
    /// Make a new 128-bit cluster secret (hex), written with mode 0600.
    Keygen {
        /// Output file; refuses to overwrite. Without it, prints to stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Report a critical local failure: the agent sends a distress signal to
    /// every peer on every link and ends clustering on this node (S0).
    /// Also `baton fail`.
    #[command(alias = "fail")]
    Distress {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        /// communication | protocol | component | corruption | admin
        #[arg(long, default_value = "admin")]
        reason: String,
    },
    /// Check the eBPF object in this kernel without attaching anything: the
    /// verifier, the in-kernel SipHash-2-4 against its reference vector, and
    /// the XDP cost per heartbeat.
    Selftest {
        #[arg(long, default_value_t = 100_000)]
        repeat: u32,
        #[arg(long)]
        json: bool,
    },
    /// Move a resource group (and its children) to NODE, or to the next
    /// allowable node (a planned switchover, S4.4).
    Switchover {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        group: String,
        node: Option<u32>,
    },
    /// Move every service off NODE and keep them off until `unstandby`.
    Standby {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        node: u32,
    },
    /// Let NODE run services again.
    Unstandby {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        node: u32,
    },
    /// Freeze (on) or resume (off) every service decision cluster-wide:
    /// nothing is started, stopped or moved while on.
    Maintenance {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(value_parser = ["on", "off"])]
        mode: String,
    },
    /// Off-line mode for a resource group (S4.6), cluster-wide: its
    /// application and monitors stop where it is registered, its addresses
    /// stay there (clients are refused at once instead of timing out), and
    /// it does not fail over or back until `baton online GROUP`.
    Offline {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        group: String,
    },
    /// Normal mode again (S4.6): the application starts again where the
    /// group holds its addresses (and falls back to its preferred node as
    /// usual).
    Online {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        group: String,
    },
    /// Internal (packaging): write the man pages and the bash/zsh/fish
    /// completions generated from this CLI under OUT (`cargo xtask deb`).
    #[command(hide = true)]
    GenerateAssets {
        #[arg(long)]
        out: PathBuf,
    },
    /// Internal (S4.5): the watchdog process the agent spawns after a
    /// group's halt method; see docs/services.md.
    #[command(hide = true)]
    Watchdog {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        group: String,
        #[arg(long)]
        gen: u64,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        pgid: Vec<i32>,
        #[arg(long)]
        keep_addresses: bool,
        #[arg(long)]
        halt_failed: bool,
    },
    /// Negotiated takeover (seed 002): NODE (this one, or another) asks its
    /// partner to take its work over, as after a diagnosed fault of kind
    /// `operator`; the partner accepts or refuses, NODE moves its groups
    /// away and leaves, and stays down until giveback (docs/takeover.md).
    Takeover {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        node: u32,
        /// Why (logged, and given to the event actions).
        #[arg(long, default_value = "operator")]
        reason: String,
    },
    /// Giveback: NODE, taken over, gets its work back from its partner
    /// (run it on NODE, on the partner, or anywhere).
    Giveback {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        node: u32,
    },
    /// Register (start) a group, clearing its failures: for `auto_register
    /// = false` groups and after AllNodesFailed / RecoveryFailed; with NODE,
    /// then move it there.
    Register {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        group: String,
        node: Option<u32>,
    },
    /// Deregister (stop) a group cluster-wide.
    Deregister {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        group: String,
    },
    /// Stop the agent on this node: a graceful leave (as SIGTERM), after
    /// which it exits. With `--all`, stop the whole cluster (as `pcs cluster
    /// stop --all`): every node leaves at once, top-down through every
    /// level, services are stopped where they run (not moved), the master
    /// leaves last, and every agent exits.
    Stop {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        all: bool,
    },
    /// Reload the configuration file without a restart (as SIGHUP): the
    /// whole file is checked first; a bad file, or a change that needs a
    /// restart, is refused and nothing changes; [[group]] changes are
    /// applied (docs/reload.md). With `--all`, every peer reloads its own
    /// file too.
    Reload {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        all: bool,
    },
    /// Internal: the guard process each life of the agent starts (releases
    /// what the node held when the agent dies); see docs/services.md.
    #[command(hide = true)]
    Guard {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        incarnation: u64,
        #[arg(long)]
        keep: bool,
    },
    /// Shared disks (`[[disk]]`): `baton storage status`.
    Storage {
        #[command(subcommand)]
        cmd: StorageCmd,
    },
    /// Drop (or stop dropping) every datagram from a node in the datapath;
    /// `confirm` a node fenced by hand.
    Fence {
        /// (Before or after the subcommand.)
        #[arg(long, short, global = true, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        cmd: FenceCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file without running anything.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum FenceCmd {
    /// Drop every datagram of NODE in this node's datapath.
    Add { node: u32 },
    /// Stop dropping NODE's datagrams.
    Remove { node: u32 },
    /// The nodes whose datagrams are dropped.
    List,
    /// Declare NODE fenced (you switched it off or cut it from the shared
    /// disks): a fencing that cannot complete (its disk unreachable) is
    /// taken as done, and the forced leave goes on (as `pcs stonith confirm`).
    Confirm { node: u32 },
}

#[derive(Subcommand)]
enum StorageCmd {
    /// The shared disks' persistent reservations: registered keys (with the
    /// node each belongs to), the reservation's holder and type, the PR
    /// generation. Reads the disks directly (needs root).
    Status {
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    // The journal with structured fields when systemd connected stderr to
    // it, stderr otherwise (docs/operations.md).
    baton_agent::daemon::sdnotify::init_logging();
    if let Err(e) = real_main() {
        eprintln!("baton: error: {}", error_text(&e));
        std::process::exit(baton_agent::cli::exit::code_of(&e));
    }
}

/// An error and its causes on one line, like `{:#}`, but a cause whose text
/// the message before it already contains (our errors name their source in
/// their message) is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

/// The environment variable that carries the number of halts in a row
/// (each within a minute of the previous start) across the re-execution.
const REJOIN_STREAK_ENV: &str = "BATON_REJOIN_STREAK";

/// After clustering halted: start again as a new life (the same process
/// re-executes itself with the same arguments: new incarnation, datapath
/// loaded afresh, nothing of the old life kept) after
/// [`run::rejoin_delay`], or exit with an error.
fn rejoin_or_exit(
    rt: tokio::runtime::Runtime,
    mut stop: run::StopSignals,
    cfg: &config::Config,
    why: baton_core::membership::HaltReason,
    started_ns: u64,
) -> Result<()> {
    let prev: u32 = std::env::var(REJOIN_STREAK_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let lived = std::time::Duration::from_nanos(baton_agent::datapath::events::monotonic_ns().saturating_sub(started_ns));
    let streak = if lived < std::time::Duration::from_secs(60) { prev } else { 0 };
    let Some(delay) = run::rejoin_delay(cfg, &why, streak) else {
        let why = format!("{why:?}");
        baton_agent::daemon::sdnotify::status(&format!("halted ({why}): not starting again by itself; restart the agent to join again"));
        return Err(baton_agent::cli::exit::Halted { why }.into());
    };
    tracing::warn!(
        ?why, delay_ms = delay.as_millis() as u64, halts_in_a_row = streak + 1,
        "clustering halted on this node; everything of this life is stopped and released: starting again as a new life (membership.rejoin_ms)"
    );
    baton_agent::daemon::sdnotify::status(&format!("halted ({why:?}): starting again as a new life in {} ms", delay.as_millis()));
    // SIGTERM or SIGINT while waiting, or since the halt (the same
    // listeners as the life's event loop: one that came while the life
    // shut down is pending and seen here): the operator stops the agent.
    // After a halt for lost quorum the wait ends early once a majority is
    // heard stably again (baton_agent::daemon::rejoin).
    let waited = rt.block_on(async {
        tokio::select! {
            biased;
            _ = stop.term.recv() => None,
            _ = stop.int.recv() => None,
            w = baton_agent::daemon::rejoin::wait(cfg, &why, delay) => Some(w),
        }
    });
    if let Some(baton_agent::daemon::rejoin::Waited::QuorumHeard { after, peers }) = waited {
        tracing::info!(
            waited_ms = after.as_millis() as u64, back_off_ms = delay.as_millis() as u64, peers,
            "a majority heard again without a gap for a second: starting again before the back-off is over"
        );
    }
    let stopped = waited.is_none();
    drop(stop);
    drop(rt);
    if stopped {
        tracing::info!("stopped by a signal before starting again");
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding this program to start it again")?;
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(REJOIN_STREAK_ENV, (streak + 1).to_string())
        .exec();
    Err(anyhow::Error::new(err).context(format!("starting {} again after the halt", exe.display())))
}

fn restore_default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installs the default disposition; no handler code runs.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Run { .. }) {
        // A command-line tool whose output is piped into `head` ends
        // quietly when the reader goes away, like coreutils, instead of
        // panicking in `println!` on EPIPE. The agent (`run`) keeps Rust's
        // default (SIGPIPE ignored): a peer closing a socket must never
        // kill it.
        restore_default_sigpipe();
    }
    match cli.cmd {
        Cmd::Run { config } => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            // Resource groups must be runnable here: a missing OCF agent or
            // systemctl is an error at run time (a warning in `config check`).
            let cfg = config::load(&config)?;
            let problems = rt.block_on(baton_agent::services::resource::check_host(&cfg.groups));
            if !problems.is_empty() {
                let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
                anyhow::bail!("{}: resource groups cannot run on this machine:\n{}", config.display(), list.join("\n"));
            }
            let started_ns = baton_agent::datapath::events::monotonic_ns();
            // Registered once, before the life starts, and kept until the
            // process ends or starts again (see run::StopSignals).
            let mut stop = rt.block_on(async { run::StopSignals::new() }).context("installing the SIGTERM and SIGINT handlers")?;
            let ended = rt.block_on(run::run(&config, &mut stop))?;
            match ended {
                run::Ended::Stopped => Ok(()),
                run::Ended::Halted(why) => rejoin_or_exit(rt, stop, &cfg, why, started_ns),
            }
        }
        Cmd::Status { config, json, watch: true, interval } => {
            let cfg = config::load(&config)?;
            Ok(status::watch(&cfg, json, interval)?)
        }
        Cmd::Status { config, json, watch: false, .. } => {
            let cfg = config::load(&config)?;
            let v = status::collect(&cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", status::render(&v));
            }
            Ok(())
        }
        Cmd::Keygen { out } => keygen(out),
        Cmd::Config { cmd: ConfigCmd::Check { file } } => {
            let cfg = config::load(&file)?;
            config::read_secret(&cfg.secret_file)?;
            // Resource groups: machine-dependent problems (agent not
            // installed) are warnings here, errors for `baton run`.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let problems = rt.block_on(baton_agent::services::resource::check_host(&cfg.groups));
            let mut errors = 0;
            for p in &problems {
                if p.is_error_for_check() {
                    errors += 1;
                    eprintln!("error: {p}");
                } else {
                    eprintln!("warning: {p} (an error for `baton run` on this machine)");
                }
            }
            if errors > 0 {
                anyhow::bail!("{}: {errors} resource group error(s)", file.display());
            }
            println!(
                "{}: ok (cluster {:?} id {}, node {:?} id {}, {} link(s), {} peer(s), silence bound {} ms, {} group(s))",
                file.display(),
                cfg.cluster_name,
                cfg.cluster_id,
                cfg.node_name,
                cfg.node_id,
                cfg.links.len(),
                cfg.peers.len(),
                cfg.interval_ms * cfg.misses,
                cfg.groups.len()
            );
            for g in &cfg.groups {
                println!("  {}", groups::describe(g));
            }
            Ok(())
        }
        Cmd::Distress { config, reason } => {
            if control::reason_code(&reason).is_none() {
                anyhow::bail!("unknown reason {reason:?}: use communication, protocol, component, corruption or admin");
            }
            let cfg = config::load(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let reply = rt.block_on(control::request(&cfg.paths.control_socket(), &format!("distress {reason}")))?;
            println!("{reply}");
            Ok(())
        }
        Cmd::Switchover { config, group, node } => {
            let line = match node {
                Some(n) => format!("switchover {group} {n}"),
                None => format!("switchover {group}"),
            };
            operator_request(&config, &line)
        }
        Cmd::Standby { config, node } => operator_request(&config, &format!("standby {node}")),
        Cmd::Unstandby { config, node } => operator_request(&config, &format!("unstandby {node}")),
        Cmd::Maintenance { config, mode } => operator_request(&config, &format!("maintenance {mode}")),
        Cmd::Takeover { config, node, reason } => operator_request(&config, &format!("takeover {node} {reason}")),
        Cmd::Giveback { config, node } => operator_request(&config, &format!("giveback {node}")),
        Cmd::Register { config, group, node } => {
            operator_request(&config, &format!("register {group}"))?;
            match node {
                Some(n) => operator_request(&config, &format!("switchover {group} {n}")),
                None => Ok(()),
            }
        }
        Cmd::Deregister { config, group } => operator_request(&config, &format!("deregister {group}")),
        Cmd::Stop { config, all } => operator_request(&config, if all { "stop-all" } else { "stop" }),
        Cmd::Reload { config, all } => operator_request(&config, if all { "reload --all" } else { "reload" }),
        Cmd::Offline { config, group } => operator_request(&config, &format!("offline {group}")),
        Cmd::Online { config, group } => operator_request(&config, &format!("online {group}")),
        Cmd::GenerateAssets { out } => {
            for p in baton_agent::cli::assets::write(<Cli as clap::CommandFactory>::command(), &out)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::Watchdog { config, group, gen, reason, pgid, keep_addresses, halt_failed } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let args = baton_agent::services::watchdog::Args { config, group, gen, reason, pgids: pgid, keep_addresses, halt_failed };
            let code = rt.block_on(baton_agent::services::watchdog::run(args))?;
            std::process::exit(code);
        }
        Cmd::Guard { config, incarnation, keep } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let code = rt.block_on(baton_agent::services::guard::run(baton_agent::services::guard::Args { config, incarnation, keep }))?;
            std::process::exit(code);
        }
        Cmd::Fence { config, cmd: FenceCmd::Confirm { node } } => operator_request(&config, &format!("fence-confirm {node}")),
        Cmd::Fence { config, cmd } => fence(&config, cmd),
        Cmd::Storage { cmd: StorageCmd::Status { config, json } } => {
            let cfg = config::load(&config)?;
            let v = baton_agent::services::fencing::storage_status(&cfg);
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", baton_agent::services::fencing::render_storage(&v));
            }
            if v["disks"].as_array().is_some_and(|d| d.iter().any(|d| d["error"].is_string())) {
                anyhow::bail!("a shared disk could not be read");
            }
            Ok(())
        }
        Cmd::Selftest { repeat, json } => {
            baton_agent::datapath::check_prerequisites()?;
            let r = baton_agent::datapath::selftest::run(repeat)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("verifier: all programs accepted");
                println!(
                    "in-kernel SipHash-2-4, reference vector ({} bytes): expected {} got {} -> {}",
                    baton_common::MAC_COVERED,
                    r.kat_expected,
                    r.kat_kernel,
                    if r.kat_ok { "ok" } else { "MISMATCH" }
                );
                println!("baton_xdp on an authentic heartbeat frame: verdict {} (1 = XDP_DROP, consumed)", r.xdp_verdict_first);
                println!("baton_xdp cost: {:.0} ns per heartbeat (BPF_PROG_TEST_RUN, {} runs)", r.xdp_ns_per_heartbeat, r.repeat);
            }
            if !r.kat_ok || r.xdp_verdict_first != 1 {
                anyhow::bail!("selftest failed");
            }
            Ok(())
        }
    }
}

fn keygen(out: Option<PathBuf>) -> Result<()> {
    let mut key = [0u8; 16];
    getrandom(&mut key)?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    match out {
        None => println!("{hex}"),
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
            writeln!(f, "{hex}")?;
            eprintln!("wrote a new cluster secret to {} (mode 0600); copy it to every node", path.display());
        }
    }
    Ok(())
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        anyhow::bail!("getrandom failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn fence(config: &std::path::Path, cmd: FenceCmd) -> Result<()> {
    use aya::maps::{HashMap, Map, MapData};
    let cfg = config::load(config)?;
    let path = cfg.paths.map(baton_common::MAP_FENCED);
    let md = MapData::from_pin(&path).with_context(|| format!("opening {} (is the agent running?)", path.display()))?;
    let mut m: HashMap<MapData, u32, u32> = HashMap::try_from(Map::HashMap(md))?;
    match cmd {
        FenceCmd::Add { node } => {
            if !cfg.peers.iter().any(|p| p.id == node) {
                anyhow::bail!("node {node} is not a peer in {}", config.display());
            }
            m.insert(node, 1, 0)?;
            println!("node {node} fenced: the datapath drops its datagrams");
        }
        FenceCmd::Remove { node } => {
            m.remove(&node).with_context(|| format!("node {node} is not fenced"))?;
            println!("node {node} unfenced");
        }
        FenceCmd::List => {
            for k in m.keys() {
                println!("{}", k?);
            }
        }
        FenceCmd::Confirm { .. } => unreachable!("handled by the agent"),
    }
    Ok(())
}

/// Sends an operator request to the local agent (which hands it to the
/// deciding node) and fails when the agent refuses it.
fn operator_request(config: &std::path::Path, line: &str) -> anyhow::Result<()> {
    let cfg = config::load(config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reply = rt.block_on(control::request(&cfg.paths.control_socket(), line))?;
    if let Some(e) = reply.strip_prefix("error: ") {
        anyhow::bail!("{e}");
    }
    println!("{reply}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::error_text;
    use anyhow::Context;

    #[test]
    fn an_error_names_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(2);
        let e = baton_agent::config::load(std::path::Path::new("/nonexistent/baton.toml")).unwrap_err();
        let e = anyhow::Error::new(e).context("loading the configuration");
        let text = error_text(&e);
        assert_eq!(text.matches(&io.to_string()).count(), 1, "{text}");
        assert!(text.starts_with("loading the configuration: /nonexistent/baton.toml: cannot read: "), "{text}");
        // A cause that the message does not contain is still shown.
        let e = Err::<(), _>(io).context("opening the disk").unwrap_err();
        assert_eq!(error_text(&e), format!("opening the disk: {}", std::io::Error::from_raw_os_error(2)));
    }
}
