//! The baton agent: configuration, the kernel datapath (XDP + watchdog), the
//! heartbeat sender, peer events and status. The binary (`baton`) is in
//! `main.rs`; the daemon loop in `daemon/run.rs`. The directories and the
//! one direction of their dependencies: docs/layout.md (checked by
//! `agent/tests/layout.rs`).

pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod eventlog;
pub mod localsock;
pub mod paths;
pub mod services;
pub mod statefile;

/// Helpers shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;

    /// A fresh, empty directory `baton-<name>-<pid>` under the temp dir
    /// (what an earlier run left there is removed first).
    pub fn fresh_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("baton-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
