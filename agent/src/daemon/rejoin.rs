//! The wait between a halt and the new life (docs/membership.md,
//! "Halting"): the back-off of [`crate::daemon::run::rejoin_delay`], ended early
//! after a halt for lost quorum once a majority of the cluster is heard
//! stably again ([`baton_core::rejoin`], the rule).
//!
//! The halted life detached its datapath, so the peers' heartbeats reach
//! the UDP stack: the wait binds the interconnect port, authenticates each
//! datagram with the cluster key (the same decoder and checks as the XDP
//! program up to the MAC, plus the cluster id) and hands the sender, link,
//! incarnation and sequence number to the rule. A forged or replayed
//! datagram cannot end the wait early; and ending it early is only the
//! start of a new life, which joins through the master like any other and
//! never forms a cluster without a majority in sight.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use baton_common::{Header, KIND_HEARTBEAT, MAX_PACKET_LEN};
use baton_core::membership::HaltReason;
use baton_core::rejoin::{Due, RejoinParams, RejoinWait};
use baton_core::Instant;

use crate::config::Config;
use crate::datapath::events::monotonic_ns;

/// How long a majority must be heard without a gap to end the wait early.
pub const STABLE: Duration = Duration::from_secs(1);
/// The shortest gap that breaks a peer's run of heartbeats: four silence
/// bounds, at least this.
pub const MIN_GAP: Duration = Duration::from_millis(200);

/// How the wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    BackoffOver,
    /// After this long, with this many peers heard stably.
    QuorumHeard { after: Duration, peers: usize },
}

/// The rule's parameters for this halt: `delay` is the back-off.
pub fn params(cfg: &Config, why: &HaltReason, delay: Duration) -> RejoinParams {
    let bound = Duration::from_millis(cfg.interval_ms as u64 * cfg.misses as u64);
    RejoinParams {
        min_ns: (cfg.rejoin_ms as u64 * 1_000_000).min(delay.as_nanos() as u64),
        max_ns: delay.as_nanos() as u64,
        early: matches!(why, HaltReason::LostQuorum),
        nodes: cfg.peers.len() + 1,
        gap_ns: (bound * 4).max(MIN_GAP).as_nanos() as u64,
        stable_ns: STABLE.as_nanos() as u64,
    }
}

/// Waits out the back-off `delay` after a halt for `why`, pinging the
/// systemd watchdog; after a halt for lost quorum, listens for the peers'
/// heartbeats meanwhile and ends the wait as [`baton_core::rejoin`] says.
pub async fn wait(cfg: &Config, why: &HaltReason, delay: Duration) -> Waited {
    let p = params(cfg, why, delay);
    let started = monotonic_ns();
    let end = tokio::time::Instant::now() + delay;
    let sock = if p.early { listen(cfg).await } else { None };
    let Some(sock) = sock else {
        crate::daemon::sdnotify::sleep_pinging(delay).await;
        return Waited::BackoffOver;
    };
    let key = match crate::config::read_secret(&cfg.secret_file) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the cluster key to listen for the peers while waiting: waiting out the back-off");
            crate::daemon::sdnotify::sleep_pinging(delay).await;
            return Waited::BackoffOver;
        }
    };
    let (k0, k1) = baton_common::siphash::key_halves(&key);
    let mut w = RejoinWait::new(p, Instant(started));
    let mut buf = vec![0u8; MAX_PACKET_LEN + 64];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => return Waited::BackoffOver,
            _ = tick.tick() => crate::daemon::sdnotify::watchdog(),
            r = sock.recv_from(&mut buf) => {
                let Ok((n, _from)) = r else { continue };
                let Ok(h) = Header::decode(&buf[..n], cfg.node_id, k0, k1) else { continue };
                if h.kind != KIND_HEARTBEAT || h.cluster_id != cfg.cluster_id || !cfg.peers.iter().any(|p| p.id == h.src_node) {
                    continue;
                }
                w.heard(h.src_node, h.link, h.incarnation, h.seq, Instant(monotonic_ns()));
            }
        }
        let now = monotonic_ns();
        match w.due(Instant(now)) {
            Due::Wait(_) => {}
            Due::BackoffOver => return Waited::BackoffOver,
            Due::QuorumHeard { peers } => {
                return Waited::QuorumHeard { after: Duration::from_nanos(now.saturating_sub(started)), peers };
            }
        }
    }
}

/// The interconnect port on every address (IPv6 links: `[::]`, which takes
/// IPv4 too); None (logged) when it cannot be bound.
async fn listen(cfg: &Config) -> Option<tokio::net::UdpSocket> {
    let any: IpAddr = if cfg.links.iter().any(|l| l.address.is_ipv6()) { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
    match tokio::net::UdpSocket::bind(SocketAddr::new(any, cfg.port)).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, port = cfg.port, "cannot listen for the peers' heartbeats while waiting to start again: waiting out the back-off");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(peers: usize, rejoin_ms: u32) -> Config {
        let mut text = String::from(
            "[cluster]\nname = \"t\"\nid = 1\nsecret_file = \"/s\"\n[node]\nid = 1\nname = \"n1\"\n\
             [heartbeat]\ninterval_ms = 10\nmisses = 3\n\
             [[link]]\nname = \"r0\"\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\n",
        );
        for p in 0..peers {
            text += &format!("[[peer]]\nid = {}\nname = \"n{}\"\naddresses = [\"10.0.0.{}\"]\n", p + 2, p + 2, p + 2);
        }
        text += &format!("[membership]\nrejoin_ms = {rejoin_ms}\n");
        crate::config::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn only_a_halt_for_lost_quorum_may_end_early_and_never_before_rejoin_ms() {
        let c = cfg(4, 1000);
        let p = params(&c, &HaltReason::LostQuorum, Duration::from_secs(8));
        assert_eq!(p, RejoinParams { min_ns: 1_000_000_000, max_ns: 8_000_000_000, early: true, nodes: 5, gap_ns: 200_000_000, stable_ns: 1_000_000_000 });
        for why in [HaltReason::ForcedOut, HaltReason::Superseded, HaltReason::ClusterLost] {
            assert!(!params(&c, &why, Duration::from_secs(8)).early, "{why:?}");
        }
        // A back-off shorter than rejoin_ms (none is, but the rule must not
        // wait past it): the shortest wait is the back-off.
        assert_eq!(params(&c, &HaltReason::LostQuorum, Duration::from_millis(500)).min_ns, 500_000_000);
        // Slow heartbeats: the gap is four silence bounds.
        let mut slow = cfg(2, 1000);
        slow.interval_ms = 100;
        assert_eq!(params(&slow, &HaltReason::LostQuorum, Duration::from_secs(2)).gap_ns, 1_200_000_000);
    }
}
