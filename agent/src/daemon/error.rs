//! The daemon's error: why `baton run` could not start or had to end
//! (docs/layout.md, "Errors"). Each variant names the step and carries the
//! lower layer's error as its `source()`: the configuration's
//! [`ConfigError`] (file:line:key), the datapath's [`DatapathError`], the
//! control layer's [`ChannelError`] / [`SubsysError`], the services'
//! [`ServiceError`], ... The text of a variant already contains its
//! source's text; `main` prints the chain without repeating it and
//! `cli::exit::code_of` picks the exit code by walking the same chain (a
//! `ConfigError`, a `MissingCapability` or an unusable-host
//! `DatapathError` anywhere in it exits 78).

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::control::channel::ChannelError;
use crate::control::subsys::SubsysError;
use crate::daemon::caps::MissingCapability;
use crate::datapath::DatapathError;
use crate::localsock::LocalSockError;
use crate::services::fencing::DiskError;
use crate::services::metrics::MetricsError;
use crate::services::svc::ServiceError;
use crate::statefile::IncarnationError;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{source}")]
    Config {
        #[from]
        source: ConfigError,
    },
    #[error("{source}")]
    Capability {
        #[from]
        source: MissingCapability,
    },
    #[error("{source}")]
    Datapath {
        #[from]
        source: DatapathError,
    },
    /// The metrics port (bound first, before anything runs).
    #[error("{source}")]
    Metrics {
        #[from]
        source: MetricsError,
    },
    #[error("creating state dir {}: {source}", dir.display())]
    StateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening {}: {source}", path.display())]
    LockFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another baton agent runs with the state directory {} (it holds {}); refusing to start", dir.display(), path.display())]
    StateDirLocked { dir: PathBuf, path: PathBuf },
    #[error("locking {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A live agent's socket, or a path that is not a socket.
    #[error("{source}")]
    Socket {
        #[from]
        source: LocalSockError,
    },
    #[error("{source}")]
    Incarnation {
        #[from]
        source: IncarnationError,
    },
    #[error("starting the guard process: {source}")]
    Guard {
        #[source]
        source: std::io::Error,
    },
    #[error("checking the shared disks ([[disk]]): {source}")]
    Disks {
        #[source]
        source: DiskError,
    },
    /// A blocking start-up task panicked or was cancelled.
    #[error("{what}: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("starting the heartbeat sender: {source}")]
    Sender {
        #[source]
        source: std::io::Error,
    },
    #[error("serving the metrics: {source}")]
    MetricsServe {
        #[source]
        source: MetricsError,
    },
    #[error("binding {}: {source}", path.display())]
    ControlSocket {
        path: PathBuf,
        #[source]
        source: LocalSockError,
    },
    #[error("starting the address lease: {source}")]
    Lease {
        #[source]
        source: std::io::Error,
    },
    #[error("starting the control channel: {source}")]
    Channel {
        #[source]
        source: ChannelError,
    },
    #[error("binding the subsystem API socket: {source}")]
    Subsys {
        #[source]
        source: SubsysError,
    },
    #[error("resource groups: {source}")]
    Services {
        #[source]
        source: ServiceError,
    },
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} the event ring buffer: {source}")]
    RingBuffer {
        /// "registering" or "reading".
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn holds_config_error(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut c = Some(e);
        while let Some(x) = c {
            if x.is::<ConfigError>() {
                return true;
            }
            c = x.source();
        }
        false
    }

    /// The texts name the step and the file; the cause is the `source()`
    /// (which `cli::exit::code_of` walks for the exit code).
    #[test]
    fn daemon_errors_name_the_step_and_keep_the_cause() {
        let e = DaemonError::StateDirLocked { dir: "/var/lib/baton".into(), path: "/var/lib/baton/agent.lock".into() };
        assert_eq!(
            e.to_string(),
            "another baton agent runs with the state directory /var/lib/baton (it holds /var/lib/baton/agent.lock); refusing to start"
        );
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let io_text = io.to_string();
        let e = DaemonError::StateDir { dir: "/var/lib/baton".into(), source: io };
        assert_eq!(e.to_string(), format!("creating state dir /var/lib/baton: {io_text}"));
        assert!(e.source().is_some_and(|s| s.is::<std::io::Error>()));
        let e: DaemonError = ConfigError::Invalid { file: "b.toml".into(), line: 7, key: "node.id".into(), reason: "must be 1..=255".into() }.into();
        assert_eq!(e.to_string(), "b.toml:7: `node.id`: must be 1..=255");
        assert!(e.source().is_some_and(|s| s.is::<ConfigError>()));
        // The chain `cli::exit::code_of` walks (through anyhow in `main`)
        // holds the configuration error; a lease failure's does not.
        assert!(holds_config_error(&e));
        assert!(!holds_config_error(&DaemonError::Lease { source: std::io::Error::from(std::io::ErrorKind::AddrInUse) }));
    }
}
