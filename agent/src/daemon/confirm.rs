//! Confirming a peer's silence before it becomes a failure (a forced leave).
//!
//! A silence seen by this node's datapath alone may be this node's own
//! fault: its receive path stalled (softirq work deferred to `ksoftirqd` on
//! a loaded machine) or one of its links broke, while the peer is alive.
//! So a `peer_silent` of the local datapath is held, and handed to the
//! membership core only when it is confirmed:
//!
//! * **by another member**: every node tells every other node, on the
//!   control channel (topic [`TOPIC`]), each silence its own datapath saw;
//!   when another node (not the suspect) reported the same peer silent
//!   within [`REPORT_VALID_NS`], the silence is confirmed at once (two
//!   receivers on their own links agree). In a cluster of three or more a
//!   dead node is thus confirmed as soon as a second member's datapath saw
//!   it too: a few milliseconds after the first (the same bound, a
//!   heartbeat's phase apart) plus one control-channel message;
//! * **by the deadline**: `membership.confirm_ms` after the suspicion, if
//!   the peer is still silent here (a two-node cluster, or every other
//!   member slow or gone), it is confirmed anyway, **unless another member
//!   hears it**: a member that gets a report of a silence its own datapath
//!   does not see answers on topic [`HEARD_TOPIC`]; an answer that came
//!   after the suspicion (or its last renewal) holds the silence for another
//!   `confirm_ms`, and the report is sent again for fresh answers. That is a
//!   one-way (or pairwise) fault between this node and the suspect while the
//!   rest of the cluster hears both: nothing moves, as long as it lasts (the
//!   accuser is the one that cannot hear; it does not get to expel a node the
//!   others hear, and the suspect, hearing everyone, has nothing to act on).
//!   A member that later sees the suspect silent too reports it, which
//!   confirms at once as above, so a dead node is not delayed by it.
//!
//! A peer heard again (`peer_up`) before either cancels the suspicion: a
//! false silence averted, logged and counted, and nothing moves. A distress,
//! and the silence of a node whose graceful leave finished, are never held.
//! So a dead node is forced out within the detection bound (`interval_ms ×
//! misses`) plus at most `confirm_ms`, and a live node survives any stall of
//! one receiver shorter than `confirm_ms`. (docs/datapath.md, "Confirming a
//! silence".) Deterministic: no clock of its own, BTree collections.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The control-channel topic of silence reports.
pub const TOPIC: &str = "liveness";
/// The control-channel topic of answers "I hear that node" to a report.
pub const HEARD_TOPIC: &str = "liveness-heard";
/// Another member's report of a silence counts for this long.
pub const REPORT_VALID_NS: u64 = 1_000_000_000;

/// One node's report: its datapath saw `silent` go silent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub silent: u32,
}

/// A member's answer to a [`Report`]: its datapath hears `node`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heard {
    pub node: u32,
}

/// A held silence whose deadline passed while another member heard the
/// suspect: held again for `confirm_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldHeard {
    pub node: u32,
    /// The member whose answer held it.
    pub heard_by: u32,
    /// The first time for this suspicion (log it once).
    pub first: bool,
}

/// What [`SilenceConfirm::expired`] found due.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub confirmed: Vec<Confirmed>,
    pub held: Vec<HeldHeard>,
}

/// How a held silence was confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Another member (this node id) saw it too.
    Peer(u32),
    /// `confirm_ms` passed with the peer still silent here.
    Deadline,
    /// Confirmation is off (`confirm_ms = 0`).
    Off,
}

/// A confirmed silence: hand `PeerSilent { node }` to the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confirmed {
    pub node: u32,
    pub by: By,
    /// From the local suspicion to the confirmation.
    pub waited_ns: u64,
}

/// Counters for `baton status` (`agent.silence`).
pub use baton_state::SilenceCounts as Counts;

pub struct SilenceConfirm {
    max_wait_ns: u64,
    /// Suspect → when this node's datapath saw it silent.
    pending: BTreeMap<u32, u64>,
    /// Suspect → (reporter → when its report arrived).
    reports: BTreeMap<u32, BTreeMap<u32, u64>>,
    /// Suspect → (member → when its answer "I hear it" arrived).
    heard: BTreeMap<u32, BTreeMap<u32, u64>>,
    /// Suspects already held once because another member heard them.
    held_once: BTreeSet<u32>,
    /// Peers this node's datapath hears (up, and not silent since).
    up_here: BTreeSet<u32>,
    pub counts: Counts,
}

impl SilenceConfirm {
    pub fn new(max_wait_ns: u64) -> Self {
        SilenceConfirm {
            max_wait_ns,
            pending: BTreeMap::new(),
            reports: BTreeMap::new(),
            heard: BTreeMap::new(),
            held_once: BTreeSet::new(),
            up_here: BTreeSet::new(),
            counts: Counts::default(),
        }
    }

    fn done(&mut self, node: u32, by: By, waited_ns: u64) -> Confirmed {
        self.pending.remove(&node);
        self.reports.remove(&node);
        self.heard.remove(&node);
        self.held_once.remove(&node);
        match by {
            By::Peer(_) => self.counts.confirmed_by_peer += 1,
            By::Deadline => self.counts.confirmed_by_deadline += 1,
            By::Off => {}
        }
        self.counts.max_wait_us = self.counts.max_wait_us.max(waited_ns / 1000);
        Confirmed { node, by, waited_ns }
    }

    /// A valid report of `node`'s silence from another member, if any.
    fn reporter(&self, node: u32, now: u64) -> Option<u32> {
        self.reports.get(&node)?.iter().find(|(r, at)| **r != node && now.saturating_sub(**at) <= REPORT_VALID_NS).map(|(r, _)| *r)
    }

    /// This node's datapath saw `node` silent: confirmed now, or held.
    pub fn suspect(&mut self, node: u32, now: u64) -> Option<Confirmed> {
        self.up_here.remove(&node);
        if self.max_wait_ns == 0 {
            return Some(self.done(node, By::Off, 0));
        }
        if let Some(r) = self.reporter(node, now) {
            return Some(self.done(node, By::Peer(r), 0));
        }
        self.pending.entry(node).or_insert(now);
        None
    }

    /// `from` reports `node` silent.
    pub fn report(&mut self, from: u32, node: u32, now: u64) -> Option<Confirmed> {
        if from == node {
            return None;
        }
        self.reports.entry(node).or_default().insert(from, now);
        let since = *self.pending.get(&node)?;
        Some(self.done(node, By::Peer(from), now.saturating_sub(since)))
    }

    /// This node's datapath hears `node` again: a held silence is averted
    /// (returns how long it was held); reports of its silence are stale.
    pub fn peer_up(&mut self, node: u32, now: u64) -> Option<u64> {
        self.up_here.insert(node);
        self.reports.remove(&node);
        self.heard.remove(&node);
        self.held_once.remove(&node);
        let since = self.pending.remove(&node)?;
        self.counts.averted += 1;
        Some(now.saturating_sub(since))
    }

    /// Whether a silence of `node` is held.
    pub fn is_pending(&self, node: u32) -> bool {
        self.pending.contains_key(&node)
    }

    /// This node's datapath no longer hears `node` without a held silence
    /// (a peer whose graceful leave finished).
    pub fn gone(&mut self, node: u32) {
        self.up_here.remove(&node);
    }

    /// Whether this node's datapath hears `node` (it came up and has not
    /// gone silent since): the answer to another member's report.
    pub fn hears(&self, node: u32) -> bool {
        self.up_here.contains(&node)
    }

    /// `from` answers that its datapath hears `node`.
    pub fn heard(&mut self, from: u32, node: u32, now: u64) {
        if from != node && self.pending.contains_key(&node) {
            self.heard.entry(node).or_default().insert(from, now);
        }
    }

    /// Held silences whose deadline passed: confirmed, or held again when
    /// another member answered, since the suspicion or its last renewal,
    /// that it hears the suspect (send the report again then).
    pub fn expired(&mut self, now: u64) -> Expired {
        let due: Vec<(u32, u64)> = self.pending.iter().filter(|(_, s)| now >= **s + self.max_wait_ns).map(|(n, s)| (*n, *s)).collect();
        let mut out = Expired::default();
        for (n, s) in due {
            let by = self.heard.get(&n).and_then(|h| h.iter().find(|(m, at)| **m != n && **at >= s).map(|(m, _)| *m));
            match by {
                Some(heard_by) => {
                    self.pending.insert(n, now);
                    self.counts.held_heard_elsewhere += 1;
                    let first = self.held_once.insert(n);
                    out.held.push(HeldHeard { node: n, heard_by, first });
                }
                None => out.confirmed.push(self.done(n, By::Deadline, now - s)),
            }
        }
        out
    }

    /// The next deadline (monotonic ns), if a silence is held.
    pub fn next_deadline(&self) -> Option<u64> {
        self.pending.values().map(|s| s + self.max_wait_ns).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_second_member_confirms_at_once_a_return_averts_and_the_deadline_bounds_the_wait() {
        let mut c = SilenceConfirm::new(200 * MS);
        // Node 3 silent here; node 2's report comes 4 ms later: confirmed.
        assert_eq!(c.suspect(3, 1000 * MS), None);
        assert_eq!(c.next_deadline(), Some(1200 * MS));
        assert_eq!(c.report(2, 3, 1004 * MS), Some(Confirmed { node: 3, by: By::Peer(2), waited_ns: 4 * MS }));
        assert!(!c.is_pending(3));
        // The report first, then our own silence: confirmed at once.
        assert_eq!(c.report(2, 4, 2000 * MS), None);
        assert_eq!(c.suspect(4, 2003 * MS), Some(Confirmed { node: 4, by: By::Peer(2), waited_ns: 0 }));
        // A report too old does not count.
        assert_eq!(c.report(2, 5, 3000 * MS), None);
        assert_eq!(c.suspect(5, 3000 * MS + REPORT_VALID_NS + 1), None);
        // The suspect's own word never confirms its silence.
        assert_eq!(c.report(5, 5, 4000 * MS), None);
        // Heard again here within the deadline: averted, nothing confirmed.
        assert_eq!(c.peer_up(5, 4001 * MS), Some(4001 * MS - (3000 * MS + REPORT_VALID_NS + 1)));
        assert_eq!(c.expired(10_000 * MS), Expired::default());
        // Nobody confirms (a two-node cluster): the deadline does.
        assert_eq!(c.suspect(6, 5000 * MS), None);
        assert_eq!(c.expired(5199 * MS), Expired::default());
        assert_eq!(c.expired(5200 * MS).confirmed, vec![Confirmed { node: 6, by: By::Deadline, waited_ns: 200 * MS }]);
        assert_eq!(c.next_deadline(), None);
        // A return clears earlier reports: a later silence needs a new one.
        c.report(2, 7, 6000 * MS);
        c.peer_up(7, 6010 * MS);
        assert_eq!(c.suspect(7, 6020 * MS), None);
        assert_eq!(c.counts, Counts { confirmed_by_peer: 2, confirmed_by_deadline: 1, averted: 1, max_wait_us: 200_000, held_heard_elsewhere: 0 });
        // Off: everything at once.
        let mut off = SilenceConfirm::new(0);
        assert_eq!(off.suspect(3, 1), Some(Confirmed { node: 3, by: By::Off, waited_ns: 0 }));
    }

    #[test]
    fn a_silence_another_member_hears_is_held_past_the_deadline_and_a_dead_node_is_not_delayed() {
        let mut c = SilenceConfirm::new(200 * MS);
        for n in [2, 3, 4] {
            c.peer_up(n, 0);
        }
        assert!(c.hears(3));
        // Node 3 silent here (a one-way cut 3 -> this node); node 2 answers
        // that it hears node 3: the deadline holds it, again and again.
        assert_eq!(c.suspect(3, 1000 * MS), None);
        assert!(!c.hears(3), "not heard here: this node would not answer for it");
        c.heard(2, 3, 1003 * MS);
        assert_eq!(c.expired(1200 * MS), Expired { confirmed: vec![], held: vec![HeldHeard { node: 3, heard_by: 2, first: true }] });
        assert_eq!(c.next_deadline(), Some(1400 * MS));
        // An answer from before the renewal does not count again: fresh ones do.
        c.heard(2, 3, 1202 * MS);
        assert_eq!(c.expired(1400 * MS).held, vec![HeldHeard { node: 3, heard_by: 2, first: false }]);
        // The suspect's own word is no answer.
        c.heard(3, 3, 1401 * MS);
        // Nobody answers any more (node 2 gone too): the deadline confirms.
        assert_eq!(c.expired(1600 * MS).confirmed, vec![Confirmed { node: 3, by: By::Deadline, waited_ns: 200 * MS }]);
        // Held because node 2 heard it, then node 2's datapath sees it
        // silent too (a dead node, node 2's phase later): confirmed at once.
        assert_eq!(c.suspect(4, 2000 * MS), None);
        c.heard(2, 4, 2001 * MS);
        assert_eq!(c.report(2, 4, 2012 * MS), Some(Confirmed { node: 4, by: By::Peer(2), waited_ns: 12 * MS }));
        // Heard again here: an answer of an earlier suspicion is forgotten.
        assert_eq!(c.suspect(2, 3000 * MS), None);
        c.heard(4, 2, 3001 * MS);
        c.peer_up(2, 3010 * MS);
        assert_eq!(c.suspect(2, 3020 * MS), None);
        assert_eq!(c.expired(3220 * MS).confirmed.len(), 1);
        // Answers for a node not held here are ignored.
        c.heard(2, 9, 4000 * MS);
        assert_eq!(c.suspect(9, 4001 * MS), None);
        assert_eq!(c.expired(4201 * MS).confirmed.len(), 1);
        assert_eq!(c.counts.held_heard_elsewhere, 2);
    }
}
