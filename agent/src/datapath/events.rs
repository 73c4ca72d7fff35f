//! Turns ring-buffer records into peer events: per-link up / silent, and per
//! node up / silent / distress / restarted. Each event is logged through
//! `tracing` and appended as one JSON line to `<state_dir>/events.jsonl`.

use std::collections::{BTreeMap, BTreeSet};

use baton_common::{Event, EV_DISTRESS, EV_LINK_SILENT, EV_LINK_UP, EV_NEW_INCARNATION};
use serde::Serialize;
use tracing::{error, info, warn};

use crate::config::Config;

/// Monotonic clock in ns: the same clock as the kernel's `bpf_ktime_get_ns`
/// (the agent's one clock, `crate::clock`).
pub use crate::clock::monotonic_ns;

/// What a peer event reports (its `event` in `events.jsonl`).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PeerEventKind {
    /// The peer is heard on a link again.
    LinkUp,
    /// The peer went silent on a link.
    LinkSilent,
    /// The peer is heard on some link (it was heard on none).
    PeerUp,
    /// The peer went silent on every link.
    PeerSilent,
    /// The peer sent a distress.
    PeerDistress,
    /// The peer started a new life (a new incarnation heard on a link).
    PeerRestarted,
    /// A `peer_silent` of a peer that had left gracefully in that life (the
    /// daemon renames it: no failure).
    PeerStopped,
}

impl PeerEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerEventKind::LinkUp => "link_up",
            PeerEventKind::LinkSilent => "link_silent",
            PeerEventKind::PeerUp => "peer_up",
            PeerEventKind::PeerSilent => "peer_silent",
            PeerEventKind::PeerDistress => "peer_distress",
            PeerEventKind::PeerRestarted => "peer_restarted",
            PeerEventKind::PeerStopped => "peer_stopped",
        }
    }
}

impl std::fmt::Display for PeerEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of `events.jsonl`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PeerEvent {
    pub event: PeerEventKind,
    pub node: u32,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<u32>,
    pub incarnation: u64,
    /// Kernel monotonic time the datapath produced the record.
    pub kernel_ns: u64,
    /// Monotonic time the agent handled it.
    pub agent_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<u32>,
}

/// Folds link events into node events. Deterministic (BTree collections).
pub struct PeerTracker {
    names: BTreeMap<u32, String>,
    up_links: BTreeMap<u32, BTreeSet<u32>>,
    distressed: BTreeMap<u32, u64>,
}

impl PeerTracker {
    pub fn new(cfg: &Config) -> Self {
        PeerTracker {
            names: cfg.peers.iter().map(|p| (p.id, p.name.clone())).collect(),
            up_links: BTreeMap::new(),
            distressed: BTreeMap::new(),
        }
    }

    /// Events to report for one ring-buffer record received at `agent_ns`.
    /// Whether the datapath hears some peer on some link now.
    pub fn any_up(&self) -> bool {
        self.up_links.values().any(|l| !l.is_empty())
    }

    /// Compares what the events said with the datapath's liveness records
    /// (`BATON_PEERS`, one [`PeerLink`](baton_common::PeerLink) per peer
    /// and link) and returns the events of every difference, as if their
    /// lost records had arrived now: a link up here but silent (or
    /// distressed) in the kernel, or up in the kernel but not here. So an
    /// event lost to a full ring buffer delays what it reports until the
    /// next resync, never for good. Records in state unknown (never heard)
    /// are skipped. Idempotent: a late real record of the same change
    /// reports nothing more.
    pub fn resync(&mut self, links: &[baton_common::PeerLink], agent_ns: u64) -> Vec<PeerEvent> {
        use baton_common::{LINK_DISTRESSED, LINK_SILENT, LINK_UP};
        let mut out = Vec::new();
        for l in links {
            if !self.names.contains_key(&l.node) {
                continue;
            }
            let up_here = self.up_links.get(&l.node).is_some_and(|s| s.contains(&l.link));
            let rec = |kind: u32| Event {
                kind,
                node: l.node,
                link: l.link,
                reason: l.distress_reason,
                incarnation: l.incarnation,
                ts_ns: l.changed_ns,
                last_seen_ns: l.last_seen_ns,
            };
            match l.state {
                LINK_SILENT if up_here => out.extend(self.on_record(&rec(EV_LINK_SILENT), agent_ns)),
                LINK_DISTRESSED if self.distressed.get(&l.node) != Some(&l.incarnation) => {
                    out.extend(self.on_record(&rec(EV_DISTRESS), agent_ns))
                }
                LINK_UP if !up_here && self.distressed.get(&l.node) != Some(&l.incarnation) => {
                    out.extend(self.on_record(&rec(EV_LINK_UP), agent_ns))
                }
                _ => {}
            }
        }
        out
    }

    pub fn on_record(&mut self, ev: &Event, agent_ns: u64) -> Vec<PeerEvent> {
        let name = self.names.get(&ev.node).cloned().unwrap_or_else(|| format!("node{}", ev.node));
        let mk = |event: PeerEventKind, link: Option<u32>| PeerEvent {
            event,
            node: ev.node,
            name: name.clone(),
            link,
            incarnation: ev.incarnation,
            kernel_ns: ev.ts_ns,
            agent_ns,
            last_seen_ns: None,
            reason: None,
        };
        let mut out = Vec::new();
        match ev.kind {
            EV_LINK_UP => {
                let set = self.up_links.entry(ev.node).or_default();
                let was_down = set.is_empty();
                if set.insert(ev.link) {
                    out.push(mk(PeerEventKind::LinkUp, Some(ev.link)));
                }
                if was_down && !set.is_empty() {
                    out.push(mk(PeerEventKind::PeerUp, None));
                }
            }
            EV_LINK_SILENT => {
                let set = self.up_links.entry(ev.node).or_default();
                if set.remove(&ev.link) {
                    let mut e = mk(PeerEventKind::LinkSilent, Some(ev.link));
                    e.last_seen_ns = Some(ev.last_seen_ns);
                    out.push(e);
                    if set.is_empty() {
                        let mut e = mk(PeerEventKind::PeerSilent, None);
                        e.last_seen_ns = Some(ev.last_seen_ns);
                        out.push(e);
                    }
                }
            }
            // Redundant copies on other links, or repeats: processed once
            // per incarnation of the sender.
            EV_DISTRESS if self.distressed.get(&ev.node) != Some(&ev.incarnation) => {
                self.distressed.insert(ev.node, ev.incarnation);
                self.up_links.remove(&ev.node);
                let mut e = mk(PeerEventKind::PeerDistress, None);
                e.reason = Some(ev.reason);
                out.push(e);
            }
            EV_NEW_INCARNATION => {
                // The link's kernel state is unchanged by a new life (an up
                // link stays up, a silent one reports its EV_LINK_UP next):
                // keep ours in step with it, or the next silence of this
                // link would go unreported.
                out.push(mk(PeerEventKind::PeerRestarted, Some(ev.link)));
            }
            _ => {}
        }
        out
    }
}

/// Appends events to the JSON-lines log (`crate::eventlog`) and reports
/// them through tracing; the peer events (up, silent, distress, stopped)
/// also go to the event log's publish hook (the event manager and the
/// metrics, installed by the daemon: both are above the datapath in the
/// layout, docs/layout.md).
pub struct EventSink {
    path: std::path::PathBuf,
    /// The log could not be written (said once).
    warned: bool,
}

impl EventSink {
    pub fn open(path: &std::path::Path) -> Self {
        EventSink { path: path.to_path_buf(), warned: false }
    }

    pub fn emit(&mut self, e: &PeerEvent) {
        use PeerEventKind as K;
        match e.event {
            K::PeerSilent | K::PeerDistress => error!(node = e.node, name = %e.name, incarnation = e.incarnation, reason = ?e.reason, "{}", e.event),
            K::LinkSilent => warn!(node = e.node, name = %e.name, link = ?e.link, "{}", e.event),
            _ => info!(node = e.node, name = %e.name, link = ?e.link, incarnation = e.incarnation, "{}", e.event),
        }
        if matches!(e.event, K::PeerUp | K::PeerSilent | K::PeerDistress | K::PeerStopped) {
            if let Ok(v) = serde_json::to_value(e) {
                crate::eventlog::publish(&v);
            }
        }
        if let Err(err) = crate::eventlog::append_line(&self.path, e) {
            if !std::mem::replace(&mut self.warned, true) {
                warn!(path = %self.path.display(), "cannot write the event log: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let text = r#"
[cluster]
name = "t"
id = 1
secret_file = "s"
[node]
id = 1
name = "a"
[[link]]
name = "l0"
interface = "eth0"
address = "10.0.0.1"
[[link]]
name = "l1"
interface = "eth1"
address = "10.0.1.1"
[[peer]]
id = 2
name = "b"
addresses = ["10.0.0.2", "10.0.1.2"]
"#;
        crate::config::parse(std::path::Path::new("t.toml"), text).unwrap()
    }

    fn rec(kind: u32, link: u32, inc: u64) -> Event {
        Event { kind, node: 2, link, reason: 7, incarnation: inc, ts_ns: 100, last_seen_ns: 50 }
    }

    fn kinds(v: Vec<PeerEvent>) -> Vec<&'static str> {
        v.into_iter().map(|e| e.event.as_str()).collect()
    }

    #[test]
    fn node_is_silent_only_when_every_link_is() {
        let mut t = PeerTracker::new(&cfg());
        assert_eq!(kinds(t.on_record(&rec(EV_LINK_UP, 0, 5), 1)), ["link_up", "peer_up"]);
        assert_eq!(kinds(t.on_record(&rec(EV_LINK_UP, 1, 5), 1)), ["link_up"]);
        assert_eq!(kinds(t.on_record(&rec(EV_LINK_SILENT, 0, 5), 1)), ["link_silent"]);
        assert_eq!(kinds(t.on_record(&rec(EV_LINK_SILENT, 0, 5), 1)), Vec::<&str>::new());
        assert_eq!(kinds(t.on_record(&rec(EV_LINK_SILENT, 1, 5), 1)), ["link_silent", "peer_silent"]);
        assert_eq!(kinds(t.on_record(&rec(EV_LINK_UP, 1, 5), 1)), ["link_up", "peer_up"]);
    }

    /// A restart while the link stays up: the kernel reports the new life
    /// but no EV_LINK_UP (the link never went down); its next silence must
    /// still be reported (it once went unnoticed after a restart).
    #[test]
    fn silence_after_a_restart_with_the_link_up_is_reported() {
        let mut t = PeerTracker::new(&cfg());
        assert_eq!(kinds(t.on_record(&rec(EV_LINK_UP, 0, 5), 1)), ["link_up", "peer_up"]);
        assert_eq!(kinds(t.on_record(&rec(EV_LINK_UP, 1, 5), 1)), ["link_up"]);
        assert_eq!(kinds(t.on_record(&rec(EV_NEW_INCARNATION, 0, 6), 1)), ["peer_restarted"]);
        assert_eq!(kinds(t.on_record(&rec(EV_NEW_INCARNATION, 1, 6), 1)), ["peer_restarted"]);
        assert_eq!(kinds(t.on_record(&rec(EV_LINK_SILENT, 0, 6), 1)), ["link_silent"]);
        assert_eq!(kinds(t.on_record(&rec(EV_LINK_SILENT, 1, 6), 1)), ["link_silent", "peer_silent"]);
    }

    #[test]
    fn distress_is_reported_once_per_incarnation() {
        let mut t = PeerTracker::new(&cfg());
        t.on_record(&rec(EV_LINK_UP, 0, 5), 1);
        let d = t.on_record(&rec(EV_DISTRESS, 0, 5), 1);
        assert_eq!(kinds(d.clone()), ["peer_distress"]);
        assert_eq!(d[0].reason, Some(7));
        assert!(t.on_record(&rec(EV_DISTRESS, 1, 5), 1).is_empty());
        assert_eq!(kinds(t.on_record(&rec(EV_NEW_INCARNATION, 0, 6), 1)), ["peer_restarted"]);
        assert_eq!(kinds(t.on_record(&rec(EV_DISTRESS, 0, 6), 1)), ["peer_distress"]);
    }

    fn link(node: u32, link: u32, state: u32, inc: u64) -> baton_common::PeerLink {
        baton_common::PeerLink { node, link, state, incarnation: inc, distress_reason: 4, last_seen_ns: 50, changed_ns: 90, ..Default::default() }
    }

    /// Lost ring-buffer records (a full ring) are made up for from the
    /// liveness map: a silent peer is never left unnoticed.
    #[test]
    fn resync_reports_what_lost_records_would_have_and_only_once() {
        use baton_common::{LINK_DISTRESSED, LINK_SILENT, LINK_UNKNOWN, LINK_UP};
        let mut t = PeerTracker::new(&cfg());
        // Never heard: nothing.
        assert!(t.resync(&[link(2, 0, LINK_UNKNOWN, 0), link(2, 1, LINK_UNKNOWN, 0)], 1).is_empty());
        // Both link-up records lost: the map says up.
        assert_eq!(kinds(t.resync(&[link(2, 0, LINK_UP, 5), link(2, 1, LINK_UP, 5)], 1)), ["link_up", "peer_up", "link_up"]);
        assert!(t.resync(&[link(2, 0, LINK_UP, 5), link(2, 1, LINK_UP, 5)], 1).is_empty(), "in step: nothing");
        // Link 0's silence was delivered, link 1's (the peer's last) lost.
        assert_eq!(kinds(t.on_record(&rec(EV_LINK_SILENT, 0, 5), 1)), ["link_silent"]);
        let ev = t.resync(&[link(2, 0, LINK_SILENT, 5), link(2, 1, LINK_SILENT, 5)], 7);
        assert_eq!(kinds(ev.clone()), ["link_silent", "peer_silent"]);
        assert_eq!((ev[1].node, ev[1].last_seen_ns, ev[1].agent_ns), (2, Some(50), 7));
        // The lost record arriving late after all: nothing more.
        assert!(t.on_record(&rec(EV_LINK_SILENT, 1, 5), 1).is_empty());
        assert!(t.resync(&[link(2, 0, LINK_SILENT, 5), link(2, 1, LINK_SILENT, 5)], 8).is_empty());
        // Back up, then a lost distress: reported once, with its reason.
        t.resync(&[link(2, 0, LINK_UP, 6)], 9);
        let ev = t.resync(&[link(2, 0, LINK_DISTRESSED, 6), link(2, 1, LINK_DISTRESSED, 6)], 10);
        assert_eq!(kinds(ev.clone()), ["peer_distress"]);
        assert_eq!(ev[0].reason, Some(4));
        assert!(t.resync(&[link(2, 0, LINK_DISTRESSED, 6), link(2, 1, LINK_DISTRESSED, 6)], 11).is_empty());
        // Records of nodes that are not configured peers are ignored.
        assert!(t.resync(&[link(9, 0, LINK_UP, 1)], 12).is_empty());
    }
}
