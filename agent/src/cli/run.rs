//! `baton run`: the agent daemon, and its new life after a halt.

use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::{config, daemon::run};

/// The environment variable that carries the number of halts in a row
/// (see `run::halts_in_a_row`) across the re-execution.
const REJOIN_STREAK_ENV: &str = "BATON_REJOIN_STREAK";

/// `baton run --config CONFIG`.
pub fn run(config: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Resource groups must be runnable here: a missing OCF agent or
    // systemctl is an error at run time (a warning in `config check`).
    let cfg = config::load(config)?;
    let problems = rt.block_on(crate::services::resource::check_host(&cfg.groups));
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        anyhow::bail!("{}: resource groups cannot run on this machine:\n{}", config.display(), list.join("\n"));
    }
    let started_ns = crate::datapath::events::monotonic_ns();
    // Registered once, before the life starts, and kept until the
    // process ends or starts again (see run::StopSignals).
    let mut stop = rt.block_on(async { run::StopSignals::new() }).context("installing the SIGTERM and SIGINT handlers")?;
    let ended = rt.block_on(run::run(config, &mut stop))?;
    match ended {
        run::Ended::Stopped => Ok(()),
        run::Ended::Halted { why, member_for } => rejoin_or_exit(rt, stop, &cfg, why, started_ns, member_for),
    }
}

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
    member_for: Option<std::time::Duration>,
) -> Result<()> {
    let prev: u32 = std::env::var(REJOIN_STREAK_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let lived = std::time::Duration::from_nanos(crate::datapath::events::monotonic_ns().saturating_sub(started_ns));
    let streak = run::halts_in_a_row(prev, lived, member_for);
    let Some(delay) = run::rejoin_delay(cfg, &why, streak) else {
        let why = format!("{why:?}");
        crate::daemon::sdnotify::status(&format!("halted ({why}): not starting again by itself; restart the agent to join again"));
        return Err(crate::cli::exit::Halted { why }.into());
    };
    tracing::warn!(
        ?why, delay_ms = delay.as_millis() as u64, halts_in_a_row = streak + 1,
        lived_ms = lived.as_millis() as u64, member_ms = member_for.map_or(0, |m| m.as_millis() as u64),
        "clustering halted on this node; everything of this life is stopped and released: starting again as a new life (membership.rejoin_ms)"
    );
    crate::daemon::sdnotify::status(&format!("halted ({why:?}): starting again as a new life in {} ms", delay.as_millis()));
    // SIGTERM or SIGINT while waiting, or since the halt (the same
    // listeners as the life's event loop: one that came while the life
    // shut down is pending and seen here): the operator stops the agent.
    // After a halt for lost quorum the wait ends early once a majority is
    // heard stably again (crate::daemon::rejoin).
    let waited = rt.block_on(async {
        tokio::select! {
            biased;
            _ = stop.term.recv() => None,
            _ = stop.int.recv() => None,
            w = crate::daemon::rejoin::wait(cfg, &why, delay) => Some(w),
        }
    });
    if let Some(crate::daemon::rejoin::Waited::QuorumHeard { after, peers }) = waited {
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
