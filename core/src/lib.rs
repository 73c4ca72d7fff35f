//! baton's protocol cores. Every core here is sans-IO and deterministic:
//! it is driven by `handle(now, input)`, its outputs are pulled with
//! `poll_action()`, and it says when it next needs to run with
//! `next_deadline()`. No core reads a clock, does I/O, spawns, or iterates a
//! `std::collections::HashMap` (only `BTreeMap`/`BTreeSet`), so the same
//! inputs always give the same actions, and the simulator (`sim`) can run
//! many nodes under a seeded schedule of faults. The simulator and the shared
//! simulation harness (`testing`) are built with the `testing` feature.
//!
//! `node` composes the cores into one node (membership, services, fencing,
//! and the rules that join them); the agent's `ClusterDriver` drives it.

#![forbid(unsafe_code)]

pub mod fencing;
pub mod gmp;
pub mod membership;
pub mod node;
pub mod rejoin;
pub mod rng;
pub mod services;
#[cfg(any(test, feature = "testing"))]
pub mod sim;
pub mod takeover;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::fmt;

/// A node of the cluster (`node.id` in the configuration).
pub type NodeId = u32;

/// A point in time, in nanoseconds on some monotonic clock. Cores never read
/// a clock: the runtime or the simulator passes `now`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Instant(pub u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);

    pub fn from_ms(ms: u64) -> Instant {
        Instant(ms * 1_000_000)
    }
    pub fn plus_ns(self, ns: u64) -> Instant {
        Instant(self.0.saturating_add(ns))
    }
    pub fn plus_ms(self, ms: u64) -> Instant {
        self.plus_ns(ms.saturating_mul(1_000_000))
    }
    /// Nanoseconds since `earlier` (0 if `earlier` is later).
    pub fn since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
    pub fn as_ms_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}ms", self.as_ms_f64())
    }
}
