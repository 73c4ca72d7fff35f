//! The baton agent: configuration, the kernel datapath (XDP + watchdog), the
//! heartbeat sender, peer events and status. The binary (`baton`) is in
//! `main.rs`; the daemon loop in `run.rs`.

pub mod addr;
pub mod assets;
pub mod caps;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod control;
pub mod datapath;
pub mod eventmgr;
pub mod events;
pub mod exit;
pub mod fencing;
pub mod groups;
pub mod guard;
pub mod health;
pub mod handover;
pub mod paths;
pub mod resource;
pub mod run;
pub mod sdnotify;
pub mod selfcheck;
pub mod selftest;
pub mod sender;
pub mod status;
pub mod subsys;
pub mod svc;
pub mod takeover;
pub mod watchdog;
