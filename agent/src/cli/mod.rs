//! The command-line interface: one file per subcommand of `baton` (the
//! argument parsing and the dispatch are in `main.rs`), the exit codes, and
//! the generated man pages and completions.

pub mod assets;
pub mod exit;
mod request;

pub mod config;
pub mod deregister;
pub mod distress;
pub mod fence;
pub mod giveback;
pub mod guard;
pub mod keygen;
pub mod maintenance;
pub mod offline;
pub mod online;
pub mod register;
pub mod reload;
pub mod run;
pub mod selftest;
pub mod standby;
pub mod status;
pub mod stop;
pub mod storage;
pub mod switchover;
pub mod takeover;
pub mod unstandby;
pub mod watchdog;
