//! Types shared by the XDP programs and the agent: the heartbeat/distress wire
//! format (see `docs/wire-format.md`), the MAC (SipHash-2-4), and the layouts of
//! every map value. Everything is `#[repr(C)]` and defined exactly once here.
#![no_std]

pub mod siphash;
pub mod wire;
pub mod maps;

pub use maps::*;
pub use wire::*;
