//! The agent diagnoses its own critical failures (S0.1, with the seed 000
//! reason codes; docs/takeover.md): checked every second, each one ends
//! clustering on this node with a distress of its reason.
//!
//! * **corruption**: a critical object fails its check: the pinned
//!   `BATON_CONFIG` map no longer holds what the agent wrote (someone wrote
//!   into it, `bpftool map update`...), or the incarnation file names
//!   another life (a second agent on the same state directory);
//! * **communication**: the datapath hears peers but no peer is reachable
//!   on the control channel (no session up, and not one TCP connection
//!   made in either direction), for `COMMUNICATION_GRACE` or ten formation
//!   periods, whichever is longer (a blocked TCP port, a firewall, a wrong
//!   `membership.control_port`): this node cannot take part in the cluster
//!   although the others see it alive. A connection whose handshake is
//!   slow (a machine under heavy load, an emulated CPU) shows the path
//!   works: not this failure;
//! * **protocol**: authenticated peers keep sending messages this agent
//!   cannot decode (`PROTOCOL_BAD_FRAMES` within `PROTOCOL_WINDOW`): another
//!   version, or a broken peer.
//!
//! Not a failure of this node: every interconnect link quiet while its own
//! interfaces are up is what the others' death or a switch failure looks
//! like too; the membership halts such a node (lost quorum) and it starts
//! again by itself when the network heals.

use std::collections::VecDeque;
use std::time::Duration;

use baton_common::{DatapathConfig, MAP_CONFIG};

use crate::config::Config;

pub const COMMUNICATION_GRACE: Duration = Duration::from_secs(5);
pub const PROTOCOL_BAD_FRAMES: u64 = 10;
pub const PROTOCOL_WINDOW: Duration = Duration::from_secs(10);

pub struct SelfCheck {
    expected: DatapathConfig,
    incarnation: u64,
    /// The directory of the pinned maps (`BATON_CONFIG` is checked).
    pin_dir: std::path::PathBuf,
    incarnation_file: std::path::PathBuf,
    comm_grace_ns: u64,
    /// Since when peers are heard but no control link is up.
    comm_down_since: Option<u64>,
    /// The channel's count of TCP connections at the last check.
    connections: u64,
    /// (time, bad frames so far) samples within the window.
    bad: VecDeque<(u64, u64)>,
}

/// A critical failure: its S0 reason code and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: u32,
    pub name: &'static str,
    pub why: String,
}

impl SelfCheck {
    pub fn new(cfg: &Config, expected: DatapathConfig, incarnation: u64) -> SelfCheck {
        SelfCheck {
            expected,
            incarnation,
            pin_dir: cfg.paths.bpffs_dir.clone(),
            incarnation_file: cfg.paths.incarnation_file(),
            comm_grace_ns: (COMMUNICATION_GRACE.as_nanos() as u64).max(10 * cfg.form_ms as u64 * 1_000_000),
            comm_down_since: None,
            connections: 0,
            bad: VecDeque::new(),
        }
    }

    /// One check at `now` (monotonic ns): whether peers are heard in the
    /// datapath, whether some control link is up, and the channel's counts
    /// of TCP connections and of bad frames so far.
    pub fn check(&mut self, now: u64, peers_heard: bool, control_up: bool, connections: u64, bad_frames: u64) -> Option<Failure> {
        // Corruption.
        match crate::datapath::pinned::config(&self.pin_dir)
            .map_err(|e| e.to_string())
            .and_then(|a| a.get(&0, 0).map_err(|e| e.to_string()))
        {
            Ok(c) if c != self.expected => {
                return Some(Failure {
                    reason: baton_common::DISTRESS_CORRUPTION,
                    name: "corruption",
                    why: format!("the pinned map {} no longer holds what the agent wrote", self.pin_dir.join(MAP_CONFIG).display()),
                })
            }
            Ok(_) => {}
            Err(e) => {
                return Some(Failure {
                    reason: baton_common::DISTRESS_CORRUPTION,
                    name: "corruption",
                    why: format!("the pinned map {} cannot be read: {e}", self.pin_dir.join(MAP_CONFIG).display()),
                })
            }
        }
        if let Ok(text) = std::fs::read_to_string(&self.incarnation_file) {
            if text.trim().parse::<u64>().ok() != Some(self.incarnation) {
                return Some(Failure {
                    reason: baton_common::DISTRESS_CORRUPTION,
                    name: "corruption",
                    why: format!("{} names another life ({:?}, this one is {}): a second agent on this state directory?", self.incarnation_file.display(), text.trim(), self.incarnation),
                });
            }
        }
        self.communication(now, peers_heard, control_up, connections).or_else(|| self.protocol(now, bad_frames))
    }

    /// The communication reason (see the module doc).
    fn communication(&mut self, now: u64, peers_heard: bool, control_up: bool, connections: u64) -> Option<Failure> {
        let connected = connections != self.connections;
        self.connections = connections;
        if !(peers_heard && !control_up && !connected) {
            self.comm_down_since = None;
            return None;
        }
        let since = *self.comm_down_since.get_or_insert(now);
        (now.saturating_sub(since) >= self.comm_grace_ns).then(|| Failure {
            reason: baton_common::DISTRESS_COMMUNICATION,
            name: "communication",
            why: format!(
                "peers' heartbeats arrive but no peer is reachable on the control channel (no TCP connection either way) for {} ms",
                now.saturating_sub(since) / 1_000_000
            ),
        })
    }

    /// The protocol reason (see the module doc).
    fn protocol(&mut self, now: u64, bad_frames: u64) -> Option<Failure> {
        self.bad.push_back((now, bad_frames));
        let window = PROTOCOL_WINDOW.as_nanos() as u64;
        while self.bad.front().is_some_and(|(t, _)| now.saturating_sub(*t) > window) {
            self.bad.pop_front();
        }
        let first = self.bad.front().map(|(_, n)| *n).unwrap_or(bad_frames);
        (bad_frames.saturating_sub(first) >= PROTOCOL_BAD_FRAMES).then(|| Failure {
            reason: baton_common::DISTRESS_PROTOCOL,
            name: "protocol",
            why: format!("{} messages from authenticated peers could not be decoded within {} s", bad_frames - first, PROTOCOL_WINDOW.as_secs()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn sc() -> SelfCheck {
        SelfCheck {
            expected: unsafe { std::mem::zeroed() },
            incarnation: 1,
            pin_dir: "/nonexistent".into(),
            incarnation_file: "/nonexistent".into(),
            comm_grace_ns: 5 * S,
            comm_down_since: None,
            connections: 0,
            bad: VecDeque::new(),
        }
    }

    #[test]
    fn heartbeats_without_any_control_connection_are_a_communication_failure_after_the_grace() {
        let mut c = sc();
        for t in 0..5 {
            assert_eq!(c.communication(t * S, true, false, 0), None, "at {t} s");
        }
        let f = c.communication(5 * S, true, false, 0).expect("a failure after 5 s");
        assert_eq!((f.reason, f.name), (baton_common::DISTRESS_COMMUNICATION, "communication"));
        // A control link up, or no heartbeats, ends it.
        let mut c = sc();
        c.communication(0, true, false, 0);
        assert_eq!(c.communication(3 * S, true, true, 0), None);
        assert_eq!(c.communication(7 * S, true, false, 0), None, "the grace starts again");
        assert_eq!(c.communication(9 * S, false, false, 0), None);
    }

    #[test]
    fn connections_whose_handshake_is_slow_show_the_path_works() {
        // Under an emulated CPU, connections are made but their handshakes
        // time out: every check sees a new one. Not a failure of this node.
        let mut c = sc();
        for t in 0..60 {
            assert_eq!(c.communication(t * S, true, false, t / 2), None, "at {t} s");
        }
        // They stop (the last one seen at 60 s): the grace runs from the
        // first check without one.
        for t in 60..66 {
            assert_eq!(c.communication(t * S, true, false, 30), None, "at {t} s");
        }
        assert!(c.communication(66 * S, true, false, 30).is_some());
    }

    #[test]
    fn undecodable_messages_are_a_protocol_failure_within_the_window() {
        let mut c = sc();
        assert_eq!(c.protocol(0, 0), None);
        assert_eq!(c.protocol(S, 9), None);
        assert!(c.protocol(2 * S, 10).is_some());
        // Slowly, over more than the window: not.
        let mut c = sc();
        for t in 0..40 {
            assert_eq!(c.protocol(t * S, t / 2), None, "at {t} s");
        }
    }
}
