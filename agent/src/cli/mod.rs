//! Support of the command-line interface in `main.rs`: exit codes and the
//! generated man pages and completions.

pub mod assets;
pub mod exit;
