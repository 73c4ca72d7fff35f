//! The shared simulation harness (feature `testing`): one seeded [`Rng`],
//! a [`Clock`] with an ordered event queue, a simulated network ([`Net`]:
//! loss, duplication, delay and so reordering, partitions, directed cuts),
//! a simulated failure detector ([`Detector`]: detection delays, false
//! alarms), an event [`Trace`] with its hash, and per-run [`FaultCounts`].
//!
//! The membership simulator ([`crate::sim`]) and the scenario and services
//! tests (`core/tests/`) drive the cores with these pieces. Everything is
//! deterministic: the only source of randomness is the `Rng` a run is
//! seeded with, and every collection is ordered (`BTreeMap`/`BTreeSet`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

pub use crate::rng::Rng;
use crate::{Instant, NodeId};

/// FNV-1a over `s`, folded into `h`.
pub fn fnv(h: &mut u64, s: &str) {
    for b in s.bytes() {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

/// The FNV-1a offset basis (the hash of nothing).
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The event trace of a run: every line is folded into a hash (two runs of
/// one seed must give the same hash); the lines are kept only when asked
/// (`--trace`).
#[derive(Clone, Debug)]
pub struct Trace {
    hash: u64,
    keep: bool,
    lines: Vec<String>,
}

impl Trace {
    pub fn new(keep: bool) -> Trace {
        Trace { hash: FNV_START, keep, lines: Vec::new() }
    }
    /// Records a line (hashed always, kept when asked).
    pub fn log(&mut self, line: String) {
        fnv(&mut self.hash, &line);
        fnv(&mut self.hash, "\n");
        if self.keep {
            self.lines.push(line);
        }
    }
    /// Keeps a line for the reader without hashing it (debugging detail).
    pub fn note(&mut self, line: impl FnOnce() -> String) {
        if self.keep {
            self.lines.push(line());
        }
    }
    pub fn keeps(&self) -> bool {
        self.keep
    }
    pub fn hash(&self) -> u64 {
        self.hash
    }
    pub fn lines(&self) -> &[String] {
        &self.lines
    }
    pub fn take_lines(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lines)
    }
    /// The last `n` kept lines (for a failure message).
    pub fn tail(&self, n: usize) -> &[String] {
        &self.lines[self.lines.len().saturating_sub(n)..]
    }
}

/// Simulated time and the queue of future events, ordered by (time, the
/// order they were scheduled in).
#[derive(Clone, Debug)]
pub struct Clock<E> {
    now: Instant,
    seq: u64,
    queue: BTreeMap<(Instant, u64), E>,
}

impl<E> Default for Clock<E> {
    fn default() -> Self {
        Clock { now: Instant::ZERO, seq: 0, queue: BTreeMap::new() }
    }
}

impl<E> Clock<E> {
    pub fn new() -> Clock<E> {
        Clock::default()
    }
    pub fn now(&self) -> Instant {
        self.now
    }
    /// Moves time forward (never back).
    pub fn advance_to(&mut self, t: Instant) {
        self.now = self.now.max(t);
    }
    pub fn advance_ms(&mut self, ms: u64) {
        self.now = self.now.plus_ms(ms);
    }
    /// Schedules `ev` at `t` (after everything already scheduled at `t`).
    pub fn at(&mut self, t: Instant, ev: E) {
        self.seq += 1;
        self.queue.insert((t.max(self.now), self.seq), ev);
    }
    pub fn after_ns(&mut self, ns: u64, ev: E) {
        let t = self.now.plus_ns(ns);
        self.at(t, ev);
    }
    /// When the next event is due.
    pub fn next_time(&self) -> Option<Instant> {
        self.queue.keys().next().map(|k| k.0)
    }
    /// Takes the next event and moves time to it.
    pub fn pop(&mut self) -> Option<E> {
        let key = *self.queue.keys().next()?;
        self.now = self.now.max(key.0);
        self.queue.remove(&key)
    }
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
    pub fn len(&self) -> usize {
        self.queue.len()
    }
    /// Drops every queued event `drop` selects.
    pub fn retain(&mut self, mut keep: impl FnMut(&E) -> bool) {
        self.queue.retain(|_, e| keep(e));
    }
}

/// The network's fault parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetConfig {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a delivered message arrives twice.
    pub dup: f64,
    /// One-way delay, uniform in this range (µs); independent draws per
    /// copy reorder messages.
    pub delay_us: (u64, u64),
}

impl NetConfig {
    /// A perfect network: no loss, no duplicates, zero delay (FIFO).
    pub const PERFECT: NetConfig = NetConfig { loss: 0.0, dup: 0.0, delay_us: (0, 0) };
}

/// What a transmission became.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub lost: u64,
    pub cut: u64,
    pub duplicated: u64,
}

/// A simulated network between nodes: partitions (two sides), directed
/// cuts, and per-message loss, duplication and delay.
#[derive(Clone, Debug)]
pub struct Net {
    pub cfg: NetConfig,
    /// One side of the current partition (None: not partitioned).
    side: Option<BTreeSet<NodeId>>,
    /// Directed links that lose everything: (from, to).
    cuts: BTreeSet<(NodeId, NodeId)>,
    /// Pairs ever separated by a partition or a cut.
    ever_cut: BTreeSet<(NodeId, NodeId)>,
    pub stats: NetStats,
}

impl Net {
    pub fn new(cfg: NetConfig) -> Net {
        Net { cfg, side: None, cuts: BTreeSet::new(), ever_cut: BTreeSet::new(), stats: NetStats::default() }
    }
    /// Splits the nodes `all` in two: `side` and the rest.
    pub fn partition(&mut self, side: BTreeSet<NodeId>, all: impl IntoIterator<Item = NodeId> + Clone) {
        for a in all.clone() {
            for b in all.clone() {
                if side.contains(&a) != side.contains(&b) {
                    self.ever_cut.insert((a, b));
                }
            }
        }
        self.side = Some(side);
    }
    pub fn is_partitioned(&self) -> bool {
        self.side.is_some()
    }
    /// Removes the partition and every cut.
    pub fn heal(&mut self) {
        self.side = None;
        self.cuts.clear();
    }
    /// Cuts the directed link from → to.
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cuts.insert((from, to));
        self.ever_cut.insert((from, to));
    }
    pub fn uncut(&mut self, from: NodeId, to: NodeId) {
        self.cuts.remove(&(from, to));
    }
    /// Whether the directed link from → to carries messages now.
    pub fn link(&self, from: NodeId, to: NodeId) -> bool {
        !self.cuts.contains(&(from, to)) && self.side.as_ref().map(|s| s.contains(&from) == s.contains(&to)).unwrap_or(true)
    }
    pub fn ever_cut(&self, a: NodeId, b: NodeId) -> bool {
        self.ever_cut.contains(&(a, b))
    }
    /// One message from → to: the delays (ns) of the copies that arrive
    /// (none if lost or cut, two if duplicated).
    pub fn transmit(&mut self, rng: &mut Rng, from: NodeId, to: NodeId) -> Vec<u64> {
        self.stats.sent += 1;
        if !self.link(from, to) {
            self.stats.cut += 1;
            return Vec::new();
        }
        if rng.chance(self.cfg.loss) {
            self.stats.lost += 1;
            return Vec::new();
        }
        let copies = if rng.chance(self.cfg.dup) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        (0..copies).map(|_| rng.range(self.cfg.delay_us.0, self.cfg.delay_us.1) * 1000).collect()
    }
}

/// The failure detector's parameters (the datapath's role).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorConfig {
    /// How long a link must stay silent before it is reported silent.
    pub detect_ms: u64,
    /// How soon a link that carries heartbeats again is reported up.
    pub up_ms: u64,
    /// Probability, per fault slot, of a false alarm: a live, connected
    /// peer reported silent (the real cluster meets these under load).
    pub false_alarm_p: f64,
    /// How long a falsely silenced peer stays "silent" before its next
    /// heartbeat reports it up again, uniform in this range (ms).
    pub false_alarm_ms: (u64, u64),
}

/// A change the failure detector reports: `observer` learns that the link
/// to `subject` went up (`up`) or silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkChange {
    pub observer: NodeId,
    pub subject: NodeId,
    pub up: bool,
    /// Whether the observer had reported this link before (a first
    /// report is only sent for a link that is up).
    pub known: bool,
}

/// A simulated failure detector: remembers what each observer believes of
/// each link, and reports the links whose heartbeat state changed.
#[derive(Clone, Debug)]
pub struct Detector {
    pub cfg: DetectorConfig,
    believed: BTreeMap<(NodeId, NodeId), bool>,
}

impl Detector {
    pub fn new(cfg: DetectorConfig) -> Detector {
        Detector { cfg, believed: BTreeMap::new() }
    }
    /// Forgets everything about `n`'s links (it restarted).
    pub fn forget(&mut self, n: NodeId) {
        self.believed.retain(|(a, b), _| *a != n && *b != n);
    }
    /// Compares each observer's belief with `heartbeats(observer, subject)`
    /// (whether heartbeats flow now) and returns what changed, with the
    /// delay (ms) after which the datapath reports it.
    pub fn refresh(
        &mut self,
        observers: &[NodeId],
        subjects: &[NodeId],
        heartbeats: impl Fn(NodeId, NodeId) -> bool,
    ) -> Vec<(u64, LinkChange)> {
        let mut out = Vec::new();
        for &a in observers {
            for &b in subjects {
                if a == b {
                    continue;
                }
                let up = heartbeats(a, b);
                let prev = self.believed.get(&(a, b)).copied();
                if prev != Some(up) {
                    self.believed.insert((a, b), up);
                    if prev.is_some() || up {
                        let delay = if up { self.cfg.up_ms } else { self.cfg.detect_ms };
                        out.push((delay, LinkChange { observer: a, subject: b, up, known: prev.is_some() }));
                    }
                }
            }
        }
        out
    }
}

/// Which faults a run injected, by kind (each seed must inject some: a
/// seed with none is a harness bug).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts(pub BTreeMap<&'static str, u64>);

impl FaultCounts {
    pub fn add(&mut self, kind: &'static str) {
        *self.0.entry(kind).or_insert(0) += 1;
    }
    pub fn get(&self, kind: &str) -> u64 {
        self.0.get(kind).copied().unwrap_or(0)
    }
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
    /// `crash=2 partition=1 ...` (kinds in name order).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.0 {
            if *v > 0 {
                let _ = write!(s, "{}{k}={v}", if s.is_empty() { "" } else { " " });
            }
        }
        if s.is_empty() {
            s.push_str("none");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_orders_by_time_then_schedule_order() {
        let mut c = Clock::new();
        c.at(Instant::from_ms(5), "b");
        c.at(Instant::from_ms(1), "a");
        c.at(Instant::from_ms(5), "c");
        assert_eq!(c.pop(), Some("a"));
        assert_eq!(c.now(), Instant::from_ms(1));
        assert_eq!(c.pop(), Some("b"));
        assert_eq!(c.pop(), Some("c"));
        assert_eq!(c.pop(), None);
    }

    #[test]
    fn net_partition_cut_loss_and_dup() {
        let mut rng = Rng::new(1);
        let mut n = Net::new(NetConfig { loss: 0.0, dup: 1.0, delay_us: (1, 3) });
        assert_eq!(n.transmit(&mut rng, 1, 2).len(), 2);
        n.partition([1].into(), [1, 2, 3]);
        assert!(n.transmit(&mut rng, 1, 2).is_empty());
        assert!(n.link(2, 3) && !n.link(3, 1));
        n.heal();
        n.cut(2, 3);
        assert!(!n.link(2, 3) && n.link(3, 2));
        assert!(n.ever_cut(1, 2) && n.ever_cut(2, 3) && !n.ever_cut(3, 2));
        let mut lossy = Net::new(NetConfig { loss: 1.0, dup: 0.0, delay_us: (0, 0) });
        assert!(lossy.transmit(&mut rng, 1, 2).is_empty());
        assert_eq!(lossy.stats.lost, 1);
    }

    #[test]
    fn detector_reports_changes_only() {
        let mut d = Detector::new(DetectorConfig { detect_ms: 30, up_ms: 2, false_alarm_p: 0.0, false_alarm_ms: (0, 0) });
        let ids = [1, 2];
        let ch = d.refresh(&ids, &ids, |_, _| true);
        assert_eq!(ch.len(), 2);
        assert!(d.refresh(&ids, &ids, |_, _| true).is_empty());
        let ch = d.refresh(&ids, &ids, |a, _| a != 1);
        assert_eq!(ch, vec![(30, LinkChange { observer: 1, subject: 2, up: false, known: true })]);
    }

    #[test]
    fn trace_hash_depends_on_every_line() {
        let mut a = Trace::new(false);
        let mut b = Trace::new(true);
        a.log("x".into());
        b.log("x".into());
        assert_eq!(a.hash(), b.hash());
        b.log("y".into());
        assert_ne!(a.hash(), b.hash());
        assert_eq!(b.lines(), ["x", "y"]);
    }
}
