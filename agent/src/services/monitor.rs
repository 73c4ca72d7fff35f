//! What a monitor reports: the status of one monitor action and the event
//! a monitor loop, the daemon supervision, a systemd unit's watch or the
//! carrier watch sends. A leaf of `services/`: `resource`, `sdbus` and
//! `carrier` use it (`resource` re-exports it), none of them each other
//! through it.

/// Result of a monitor action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorStatus {
    Running,
    /// Cleanly stopped (OCF 7, systemd `inactive`).
    NotRunning,
    Failed { reason: String },
}

/// Reported by monitor loops and daemon supervision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorEvent {
    Failed { resource: String, reason: String },
}
