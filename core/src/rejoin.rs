//! The wait between a halt and the new life (docs/membership.md, "Halting"):
//! when it may end before the back-off is over.
//!
//! A node that halts again within a minute of its last start backs off
//! (`membership.rejoin_ms` doubled per halt in a row, at most 60 s), so a
//! node that keeps failing does not flap at full speed. After repeated
//! partitions that back-off kept a healed node out for 30–60 s, though the
//! cause (it could not see a majority) was gone seconds after the heal.
//! Corosync and Pacemaker rejoin a node as soon as its ring re-forms; baton
//! does the same for a halt for lost quorum: while it waits, the halted
//! node listens for its peers' authentic heartbeats (the agent decodes
//! them; this core only sees who sent what, when), and once a majority of
//! the configured nodes, itself included, has been heard without a gap for
//! [`RejoinParams::stable_ns`], the wait ends, though never before the
//! shortest wait (`rejoin_ms`). A link that flaps faster than that never
//! counts as stable, so the back-off still damps it. Other halts (forced
//! out, superseded, cluster lost) wait out the whole back-off: a node that
//! was forced out while it heard everybody (a one-way cut, its own stall)
//! learns nothing from hearing them again.
//!
//! Sans-IO and deterministic: `now` is passed in, state is in `BTreeMap`s.

use std::collections::BTreeMap;

use crate::{Instant, NodeId};

/// How a halted node waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejoinParams {
    /// The shortest wait (`membership.rejoin_ms`).
    pub min_ns: u64,
    /// The back-off of this halt (the whole wait when no quorum is heard).
    pub max_ns: u64,
    /// Whether a quorum heard stably may end the wait early (halts for lost
    /// quorum only).
    pub early: bool,
    /// Configured nodes, this one included.
    pub nodes: usize,
    /// A peer heard again after a gap longer than this starts a new run.
    pub gap_ns: u64,
    /// How long a peer must have been heard without such a gap to count.
    pub stable_ns: u64,
}

/// Why the wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Not yet: ask again at the latest at this time.
    Wait(Instant),
    /// The whole back-off is over.
    BackoffOver,
    /// A majority (`peers` peers and this node) has been heard stably.
    QuorumHeard { peers: usize },
}

#[derive(Clone, Copy, Debug)]
struct Run {
    since: Instant,
    last: Instant,
}

/// One wait after a halt.
#[derive(Clone, Debug)]
pub struct RejoinWait {
    p: RejoinParams,
    halted: Instant,
    runs: BTreeMap<NodeId, Run>,
    /// The newest (incarnation, seq) per (peer, link): a datagram that is
    /// not newer (a duplicate, a replay) is not counted.
    newest: BTreeMap<(NodeId, u8), (u64, u64)>,
}

impl RejoinWait {
    pub fn new(p: RejoinParams, halted: Instant) -> RejoinWait {
        RejoinWait { p, halted, runs: BTreeMap::new(), newest: BTreeMap::new() }
    }

    /// An authentic heartbeat of `peer` on `link` (its incarnation and
    /// sequence number) arrived at `now`.
    pub fn heard(&mut self, peer: NodeId, link: u8, incarnation: u64, seq: u64, now: Instant) {
        let k = (peer, link);
        if self.newest.get(&k).is_some_and(|n| *n >= (incarnation, seq)) {
            return;
        }
        self.newest.insert(k, (incarnation, seq));
        let gap = self.p.gap_ns;
        match self.runs.get_mut(&peer) {
            Some(r) if now.0.saturating_sub(r.last.0) <= gap => r.last = r.last.max(now),
            _ => {
                self.runs.insert(peer, Run { since: now, last: now });
            }
        }
    }

    /// Peers heard without a gap for at least `stable_ns` up to `now`.
    pub fn stable_peers(&self, now: Instant) -> usize {
        self.runs
            .values()
            .filter(|r| now.0.saturating_sub(r.last.0) <= self.p.gap_ns && now.0.saturating_sub(r.since.0) >= self.p.stable_ns)
            .count()
    }

    /// Whether the wait is over at `now`.
    pub fn due(&self, now: Instant) -> Due {
        let waited = now.0.saturating_sub(self.halted.0);
        if waited >= self.p.max_ns {
            return Due::BackoffOver;
        }
        if self.p.early && waited >= self.p.min_ns {
            let peers = self.stable_peers(now);
            if 2 * (peers + 1) > self.p.nodes {
                return Due::QuorumHeard { peers };
            }
        }
        Due::Wait(Instant(self.halted.0 + self.p.max_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn params(early: bool) -> RejoinParams {
        RejoinParams { min_ns: 1000 * MS, max_ns: 32_000 * MS, early, nodes: 5, gap_ns: 100 * MS, stable_ns: 1000 * MS }
    }

    /// Heartbeats of `peers` every 10 ms from `from` to `to` (ms), seq from `seq0`.
    fn beat(w: &mut RejoinWait, peers: &[NodeId], from: u64, to: u64, seq0: u64) {
        let mut t = from;
        let mut seq = seq0;
        while t <= to {
            for &p in peers {
                w.heard(p, 0, 7, seq, Instant(t * MS));
            }
            t += 10;
            seq += 1;
        }
    }

    #[test]
    fn a_quorum_heard_stably_ends_the_wait_after_a_second_not_the_back_off() {
        let mut w = RejoinWait::new(params(true), Instant(0));
        // A partition: only one peer in sight (2 of 5 with this node).
        beat(&mut w, &[2], 0, 5000, 1);
        assert_eq!(w.due(Instant(5000 * MS)), Due::Wait(Instant(32_000 * MS)));
        // The heal at 5 s: three peers heard from then on.
        beat(&mut w, &[2, 3, 4], 5010, 5990, 501);
        assert_eq!(w.stable_peers(Instant(5990 * MS)), 1);
        assert!(matches!(w.due(Instant(5990 * MS)), Due::Wait(_)));
        beat(&mut w, &[2, 3, 4], 6000, 6010, 600);
        assert_eq!(w.due(Instant(6010 * MS)), Due::QuorumHeard { peers: 3 });
        // Two peers and this node are a majority of 5 too.
        let mut w = RejoinWait::new(params(true), Instant(0));
        beat(&mut w, &[3, 4], 0, 2000, 1);
        assert_eq!(w.due(Instant(2000 * MS)), Due::QuorumHeard { peers: 2 });
    }

    #[test]
    fn never_before_the_shortest_wait_and_always_after_the_back_off() {
        let mut w = RejoinWait::new(params(true), Instant(0));
        beat(&mut w, &[2, 3, 4, 5], 0, 990, 1);
        // Heard for 990 ms: not stable yet; the shortest wait not over either.
        assert!(matches!(w.due(Instant(990 * MS)), Due::Wait(_)));
        let p = RejoinParams { min_ns: 3000 * MS, ..params(true) };
        let mut w = RejoinWait::new(p, Instant(0));
        beat(&mut w, &[2, 3, 4, 5], 0, 2990, 1);
        assert!(matches!(w.due(Instant(2990 * MS)), Due::Wait(_)), "before rejoin_ms");
        beat(&mut w, &[2, 3, 4, 5], 3000, 3000, 300);
        assert_eq!(w.due(Instant(3000 * MS)), Due::QuorumHeard { peers: 4 });
        // Nobody heard: the whole back-off.
        let w = RejoinWait::new(params(true), Instant(100 * MS));
        assert_eq!(w.due(Instant(32_099 * MS)), Due::Wait(Instant(32_100 * MS)));
        assert_eq!(w.due(Instant(32_100 * MS)), Due::BackoffOver);
    }

    #[test]
    fn other_halts_a_flapping_link_and_replays_do_not_end_the_wait_early() {
        // Forced out (not lost quorum): hearing everybody changes nothing.
        let mut w = RejoinWait::new(params(false), Instant(0));
        beat(&mut w, &[2, 3, 4, 5], 0, 10_000, 1);
        assert!(matches!(w.due(Instant(10_000 * MS)), Due::Wait(_)));
        // A link that is up 800 ms, down 300 ms, again and again.
        let mut w = RejoinWait::new(params(true), Instant(0));
        let mut seq = 1;
        for k in 0..20 {
            let t0 = k * 1100;
            beat(&mut w, &[2, 3, 4], t0, t0 + 800, seq);
            seq += 100;
            assert!(matches!(w.due(Instant((t0 + 800) * MS)), Due::Wait(_)), "flap {k}");
        }
        // A replay: the same (incarnation, seq) over and over, or older ones,
        // keeps no run alive.
        let mut w = RejoinWait::new(params(true), Instant(0));
        for t in (0..3000).step_by(10) {
            for p in [2, 3, 4] {
                w.heard(p, 0, 7, 42, Instant(t * MS));
                w.heard(p, 0, 6, 1000 + t, Instant(t * MS));
            }
        }
        assert_eq!(w.stable_peers(Instant(2990 * MS)), 0);
        assert!(matches!(w.due(Instant(2990 * MS)), Due::Wait(_)));
        // A new incarnation of a peer continues its run (seq starts again).
        let mut w = RejoinWait::new(params(true), Instant(0));
        beat(&mut w, &[2, 3], 0, 600, 500);
        for t in (610..=1200).step_by(10) {
            w.heard(2, 0, 8, t, Instant(t * MS));
            w.heard(3, 0, 7, 500 + t, Instant(t * MS));
        }
        assert_eq!(w.due(Instant(1200 * MS)), Due::QuorumHeard { peers: 2 });
    }
}
