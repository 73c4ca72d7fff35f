//! The agent's one clock: `CLOCK_MONOTONIC` in nanoseconds, the time base
//! of the datapath's records (`kernel_ns`), of the event log (`agent_ns`),
//! of the state files (`since_ns`, `started_monotonic_ns`) and of every
//! deadline of the I/O shell. The cores (`baton_core`) never read a clock:
//! they are given `Instant`s built from this one.

/// `CLOCK_MONOTONIC` now, in ns.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}
