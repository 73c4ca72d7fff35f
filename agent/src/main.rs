//! `baton`: the agent daemon and its command-line interface.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use baton_agent::{cli, paths};

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
        eprintln!("baton: error: {}", cli::exit::error_text(&e));
        std::process::exit(cli::exit::code_of(&e));
    }
}

fn restore_default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installs the default disposition; no handler code runs.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn real_main() -> Result<()> {
    let args = Cli::parse();
    if !matches!(args.cmd, Cmd::Run { .. }) {
        // A command-line tool whose output is piped into `head` ends
        // quietly when the reader goes away, like coreutils, instead of
        // panicking in `println!` on EPIPE. The agent (`run`) keeps Rust's
        // default (SIGPIPE ignored): a peer closing a socket must never
        // kill it.
        restore_default_sigpipe();
    }
    match args.cmd {
        Cmd::Run { config } => cli::run::run(&config),
        Cmd::Status { config, json, watch, interval } => cli::status::run(&config, json, watch, interval),
        Cmd::Keygen { out } => cli::keygen::run(out),
        Cmd::Config { cmd: ConfigCmd::Check { file } } => cli::config::check(&file),
        Cmd::Distress { config, reason } => cli::distress::run(&config, &reason),
        Cmd::Switchover { config, group, node } => cli::switchover::run(&config, &group, node),
        Cmd::Standby { config, node } => cli::standby::run(&config, node),
        Cmd::Unstandby { config, node } => cli::unstandby::run(&config, node),
        Cmd::Maintenance { config, mode } => cli::maintenance::run(&config, &mode),
        Cmd::Takeover { config, node, reason } => cli::takeover::run(&config, node, &reason),
        Cmd::Giveback { config, node } => cli::giveback::run(&config, node),
        Cmd::Register { config, group, node } => cli::register::run(&config, &group, node),
        Cmd::Deregister { config, group } => cli::deregister::run(&config, &group),
        Cmd::Stop { config, all } => cli::stop::run(&config, all),
        Cmd::Reload { config, all } => cli::reload::run(&config, all),
        Cmd::Offline { config, group } => cli::offline::run(&config, &group),
        Cmd::Online { config, group } => cli::online::run(&config, &group),
        Cmd::GenerateAssets { out } => {
            for p in cli::assets::write(<Cli as clap::CommandFactory>::command(), &out)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::Watchdog { config, group, gen, reason, pgid, keep_addresses, halt_failed } => {
            cli::watchdog::run(baton_agent::services::watchdog::Args { config, group, gen, reason, pgids: pgid, keep_addresses, halt_failed })
        }
        Cmd::Guard { config, incarnation, keep } => cli::guard::run(baton_agent::services::guard::Args { config, incarnation, keep }),
        Cmd::Fence { config, cmd: FenceCmd::Add { node } } => cli::fence::add(&config, node),
        Cmd::Fence { config, cmd: FenceCmd::Remove { node } } => cli::fence::remove(&config, node),
        Cmd::Fence { config, cmd: FenceCmd::List } => cli::fence::list(&config),
        Cmd::Fence { config, cmd: FenceCmd::Confirm { node } } => cli::fence::confirm(&config, node),
        Cmd::Storage { cmd: StorageCmd::Status { config, json } } => cli::storage::status(&config, json),
        Cmd::Selftest { repeat, json } => cli::selftest::run(repeat, json),
    }
}
