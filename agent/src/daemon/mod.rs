//! `baton run`: the daemon's event loop (`run`), the membership runtime
//! (`cluster`), silence confirmation, reload, start-up checks, systemd
//! integration and metrics.

pub mod caps;
pub mod cluster;
pub mod confirm;
pub mod error;
pub mod rejoin;
pub mod reload;
pub mod run;
pub mod sdnotify;
