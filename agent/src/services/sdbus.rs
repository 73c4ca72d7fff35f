//! systemd units of resource groups through systemd's D-Bus API
//! (`org.freedesktop.systemd1` on the system bus, zbus) instead of spawning
//! `systemctl` (issue 14 item 5).
//!
//! - **start / stop**: `StartUnit` / `StopUnit` (mode `replace`) queue a job;
//!   its end is the `JobRemoved` signal with the job's result (`done`,
//!   `failed`, `timeout`, `canceled`, `dependency`, `skipped`), awaited as an
//!   event (no polling). Anything but `done` is a failed action whose error
//!   names the result and the unit's state (`failed (exit-code)`).
//! - **state changes**: while baton has the unit started, a watcher follows
//!   the unit's `ActiveState` through `PropertiesChanged` and reports the
//!   unit going `failed` or `inactive` behind baton's back at once, as a
//!   [`crate::services::resource::MonitorEvent::Failed`] (like a daemon's unexpected
//!   exit).
//! - **monitor**: the unit's `ActiveState` property (kept current by the same
//!   signals), no process spawned.
//!
//! The agent subscribes (`Subscribe`) once so that systemd sends these
//! signals. When there is no system bus or no systemd on it (a container
//! without systemd, a test host), [`get`] answers `None` once and for the
//! life of the process, and units are run with `systemctl` as before.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, OnceCell};
use tokio::task::JoinHandle;
use tracing::{debug, info};
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use crate::services::monitor::MonitorEvent;

/// How long connecting to the system bus and `Subscribe` may take at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(&self, id: u32, job: ObjectPath<'_>, unit: &str, result: &str) -> zbus::Result<()>;
}

#[zbus::proxy(interface = "org.freedesktop.systemd1.Unit", default_service = "org.freedesktop.systemd1")]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
}

#[zbus::proxy(interface = "org.freedesktop.systemd1.Service", default_service = "org.freedesktop.systemd1")]
trait Service {
    /// `success`, `exit-code`, `signal`, `timeout`, `watchdog`, ...
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
}

/// A start or stop job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
}

/// Why a job did not end `done`.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The call or the bus failed (no such unit, access denied, bus gone).
    #[error("{source}")]
    Bus {
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("the system bus connection closed")]
    BusClosed,
    /// The job ended with another result than `done`.
    #[error("job result {result:?}; the unit is {state}")]
    Result { result: String, state: String },
    /// No `JobRemoved` within the action's timeout.
    #[error("no result of job {job} within {timeout_ms} ms")]
    Timeout { job: String, timeout_ms: u64 },
}

impl From<zbus::Error> for JobError {
    fn from(e: zbus::Error) -> Self {
        JobError::Bus { source: Box::new(e) }
    }
}

/// The agent's connection to systemd.
pub struct Systemd {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
}

static BUS: OnceCell<Option<Arc<Systemd>>> = OnceCell::const_new();

/// systemd on the system bus, connected and subscribed on first use; `None`
/// (for good) when there is none.
pub async fn get() -> Option<Arc<Systemd>> {
    BUS.get_or_init(|| async {
        match tokio::time::timeout(CONNECT_TIMEOUT, Systemd::connect()).await {
            Ok(Ok(s)) => {
                info!("systemd units are run through systemd's D-Bus API (org.freedesktop.systemd1)");
                Some(Arc::new(s))
            }
            Ok(Err(e)) => {
                info!("no systemd on the system bus ({e}): systemd units are run with systemctl");
                None
            }
            Err(_) => {
                info!("the system bus did not answer within {} s: systemd units are run with systemctl", CONNECT_TIMEOUT.as_secs());
                None
            }
        }
    })
    .await
    .clone()
}

impl Systemd {
    async fn connect() -> zbus::Result<Self> {
        let conn = zbus::Connection::system().await?;
        let manager = ManagerProxy::new(&conn).await?;
        // Without a subscriber systemd sends neither JobRemoved nor the
        // units' PropertiesChanged.
        manager.subscribe().await?;
        Ok(Systemd { conn, manager })
    }

    async fn unit(&self, unit: &str) -> zbus::Result<UnitProxy<'static>> {
        let path = self.manager.load_unit(unit).await?;
        UnitProxy::builder(&self.conn).path(path)?.build().await
    }

    /// `active (running)`, `failed (exit-code)`: the unit's state for an
    /// error message.
    pub async fn describe(&self, unit: &str) -> String {
        let Ok(u) = self.unit(unit).await else { return "unknown".into() };
        let active = u.active_state().await.unwrap_or_else(|_| "?".into());
        let sub = u.sub_state().await.unwrap_or_else(|_| "?".into());
        let mut s = format!("{active} ({sub})");
        if let Ok(svc) = ServiceProxy::builder(&self.conn).path(u.inner().path().to_owned()).map(|b| b.build()) {
            if let Ok(svc) = svc.await {
                if let Ok(r) = svc.result().await {
                    if r != "success" {
                        s += &format!(", result {r}");
                    }
                }
            }
        }
        s
    }

    /// Runs a start or stop job of `unit` and waits for its `JobRemoved`.
    pub async fn job(&self, unit: &str, verb: Verb, timeout: Duration) -> Result<(), JobError> {
        // The stream first: a short job may end before StartUnit returns.
        let mut removed = self.manager.receive_job_removed().await?;
        let job = match verb {
            Verb::Start => self.manager.start_unit(unit, "replace").await?,
            Verb::Stop => self.manager.stop_unit(unit, "replace").await?,
        };
        debug!(unit, job = %job.as_str(), ?verb, "systemd job queued");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let sig = match tokio::time::timeout_at(deadline, removed.next()).await {
                Err(_) => return Err(JobError::Timeout { job: job.to_string(), timeout_ms: timeout.as_millis() as u64 }),
                Ok(None) => return Err(JobError::BusClosed),
                Ok(Some(sig)) => sig,
            };
            let Ok(args) = sig.args() else { continue };
            if args.job().as_str() != job.as_str() {
                continue;
            }
            let result = args.result().to_string();
            debug!(unit, job = %job.as_str(), %result, "systemd job removed");
            return if result == "done" {
                Ok(())
            } else {
                Err(JobError::Result { result, state: self.describe(unit).await })
            };
        }
    }

    /// The unit's `LoadState` (`loaded`, `not-found`, `masked`, ...); `None`
    /// when the bus does not answer.
    pub async fn load_state(&self, unit: &str) -> Option<String> {
        self.unit(unit).await.ok()?.load_state().await.ok()
    }

    /// The unit's `ActiveState` (`active`, `inactive`, `failed`,
    /// `activating`, `deactivating`, `reloading`).
    pub async fn active_state(&self, unit: &str) -> zbus::Result<String> {
        self.unit(unit).await?.active_state().await
    }

    /// Follows the unit's `ActiveState` (`PropertiesChanged` signals): each
    /// new value goes to `judge`; what it returns is sent to `tx`, and the
    /// watcher ends after sending one event, when the task is aborted or
    /// when the bus closes.
    pub async fn watch<F>(&self, unit: &str, tx: mpsc::Sender<MonitorEvent>, mut judge: F) -> zbus::Result<JoinHandle<()>>
    where
        F: FnMut(&str) -> Option<MonitorEvent> + Send + 'static,
    {
        let u = self.unit(unit).await?;
        let mut changes = u.receive_active_state_changed().await;
        let unit = unit.to_string();
        Ok(tokio::spawn(async move {
            while let Some(c) = changes.next().await {
                let Ok(state) = c.get().await else { continue };
                debug!(unit, state, "systemd unit state changed");
                if let Some(ev) = judge(&state) {
                    let _ = tx.send(ev).await;
                    break;
                }
            }
        }))
    }
}
