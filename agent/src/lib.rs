//! The baton agent: configuration, the kernel datapath (XDP + watchdog), the
//! heartbeat sender, peer events and status. The binary (`baton`) is in
//! `main.rs`; the daemon loop in `run.rs`.

pub mod addr;
pub mod assets;
pub mod caps;
pub mod carrier;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod confirm;
pub mod control;
pub mod datapath;
pub mod eventmgr;
pub mod events;
pub mod exit;
pub mod fencing;
pub mod groups;
pub mod guard;
pub mod metrics;
pub mod health;
pub mod lease;
pub mod localsock;
pub mod handover;
pub mod paths;
pub mod rejoin;
pub mod reload;
pub mod resource;
pub mod run;
pub mod sdbus;
pub mod sdnotify;
pub mod selfcheck;
pub mod selftest;
pub mod statefile;
pub mod sender;
pub mod status;
pub mod subsys;
pub mod svc;
pub mod takeover;
pub mod watchdog;

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
