//! Zero-loss planned handover of a resource group (`handover = "overlap"`,
//! docs/addresses.md).
//!
//! A planned move (switchover, failback, transfer) as S4.3 writes it halts
//! the group on the old node and then runs it on the new one; a client that
//! connects in between is not answered, and a lost SYN costs it a second.
//! With `handover = "overlap"` the two nodes hand the group over instead,
//! with the XDP program deciding, packet by packet, who answers:
//!
//! 1. The old node (its halt method, with the core's `next` hint) sends
//!    `Prepare` to the new node.
//! 2. The new node makes its XDP program drop ARP requests for the addresses
//!    (`HANDOVER_SILENT`), configures them, and starts the application. No
//!    client can reach it yet: nobody learns the address there. It answers
//!    `Ready` with its MAC address (or `Failed`).
//! 3. The old node makes its XDP program hand every packet to the addresses
//!    that is not part of a connection it still has to the new node's MAC
//!    (`HANDOVER_STEER`): from now on every new connection is the new
//!    node's. It waits until its own connections are finished (at most
//!    `drain_timeout_ms`), stops the application, removes the addresses and
//!    reports the halt done; the steering stays a few seconds more for
//!    clients that still use its MAC address.
//! 4. The core then starts the group on the new node, whose run method finds
//!    it prepared: it lifts the ARP silence and announces the addresses.
//!
//! Nothing here decides where a group runs: the core does. If the core
//! starts the group elsewhere, or no start comes, the preparation is undone.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_common::{Handover as Entry, HANDOVER_SILENT, HANDOVER_STEER};
use baton_core::NodeId;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::control::channel::HandoverSender;
use crate::config::groups::Group;
use crate::services::resource::Resource;

pub use crate::control::channel::HandoverMsg;

/// Errors of the overlap handover, on either side. The texts go into the
/// log, and the new side's into its `Failed` reply (which the old side logs).
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("eBPF map {path}: {source}")]
    Map {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{source}")]
    Mac {
        #[source]
        source: crate::services::addr::AddrError,
    },
    #[error("interface {interface} has no MAC address")]
    NoMac { interface: String },
    #[error("setting {sysctl} to 2: {source}")]
    ArpAnnounce {
        sysctl: String,
        #[source]
        source: std::io::Error,
    },
    #[error("address {address}: {source}")]
    Address {
        address: crate::config::groups::GroupAddress,
        #[source]
        source: crate::services::addr::AddrError,
    },
    /// The application did not start (new side) or stop (old side).
    #[error("{source}")]
    Application {
        #[source]
        source: crate::services::resource::ResourceError,
    },
    #[error("monitor of {resource} not running within {limit:?} after the start: {status}")]
    NotReady { resource: String, limit: Duration, status: String },
    /// The new node's `Failed` reply.
    #[error("{reason}")]
    Refused { reason: String },
    #[error(transparent)]
    Pinned(#[from] crate::datapath::pinned::PinnedError),
}

/// How the agent wires the handover: the channel's sender and inbox, and
/// the directory of the pinned maps (`BATON_HANDOVER`,
/// `datapath::pinned::handover`).
pub struct Wiring {
    pub sender: HandoverSender,
    pub inbox: mpsc::Receiver<(u32, HandoverMsg)>,
    pub pin_dir: PathBuf,
}

/// What a handover needs of a configured group.
#[derive(Clone)]
pub struct GroupHandle {
    pub group: Group,
    pub app: Option<Arc<Resource>>,
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

/// See the drain in [`Handovers::hand_over`].
const DRAIN_SETTLE: Duration = Duration::from_millis(20);
/// How long steering stays after the old node removed the addresses.
pub const LINGER: Duration = Duration::from_secs(3);
/// A preparation that no start (and no abort) follows is undone after the
/// drain timeout plus this.
const PREPARED_TTL: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Handovers {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    sender: HandoverSender,
    pin_dir: PathBuf,
    groups: BTreeMap<String, GroupHandle>,
    /// The service manager's set of groups held here.
    active: crate::services::guard::Ownership,
    events: PathBuf,
    /// Old side: handovers waiting for `Ready` / `Failed`.
    waiters: Mutex<BTreeMap<(String, u64), oneshot::Sender<Result<[u8; 6], HandoverError>>>>,
    /// New side: groups prepared here, by handover id.
    prepared: Mutex<BTreeMap<String, u64>>,
    /// Which handover last wrote each address's map entry (so that a late
    /// cleanup never removes a newer entry).
    entry_owner: Mutex<BTreeMap<Ipv4Addr, u64>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn v4(g: &Group) -> Vec<Ipv4Addr> {
    g.addresses.iter().filter_map(|a| if let IpAddr::V4(v) = a.ip { Some(v) } else { None }).collect()
}

impl Handovers {
    /// Starts the task that serves the inbox.
    pub fn start(
        me: NodeId,
        wiring: Wiring,
        groups: BTreeMap<String, GroupHandle>,
        active: crate::services::guard::Ownership,
        events: PathBuf,
    ) -> Handovers {
        let Wiring { sender, mut inbox, pin_dir } = wiring;
        // Handover ids must differ across restarts of this node too.
        let seed = crate::datapath::events::monotonic_ns();
        let h = Handovers {
            inner: Arc::new(Inner {
                me,
                sender,
                pin_dir,
                groups,
                active,
                events,
                waiters: Mutex::new(BTreeMap::new()),
                prepared: Mutex::new(BTreeMap::new()),
                entry_owner: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(seed),
            }),
        };
        let me2 = h.clone();
        tokio::spawn(async move {
            while let Some((from, msg)) = inbox.recv().await {
                me2.receive(from, msg);
            }
        });
        h
    }

    fn receive(&self, from: NodeId, msg: HandoverMsg) {
        match msg {
            HandoverMsg::Prepare { group, id } => {
                let h = self.clone();
                tokio::spawn(async move { h.prepare(from, group, id).await });
            }
            HandoverMsg::Ready { group, id, mac } => {
                if let Some(w) = lock(&self.inner.waiters).remove(&(group, id)) {
                    let _ = w.send(Ok(mac));
                }
            }
            HandoverMsg::Failed { group, id, reason } => {
                if let Some(w) = lock(&self.inner.waiters).remove(&(group, id)) {
                    let _ = w.send(Err(HandoverError::Refused { reason }));
                }
            }
            HandoverMsg::Abort { group, id } => {
                let h = self.clone();
                tokio::spawn(async move { h.undo(&group, id, "the old node called the handover off").await });
            }
        }
    }

    fn event(&self, v: serde_json::Value) {
        crate::eventlog::record(&self.inner.events, v);
    }

    fn set(&self, ip: Ipv4Addr, id: u64, e: Entry) -> Result<(), HandoverError> {
        let mut m = crate::datapath::pinned::handover(&self.inner.pin_dir)?;
        m.insert(key(ip), e, 0).map_err(|source| HandoverError::Map { path: self.inner.pin_dir.join(baton_common::MAP_HANDOVER), source })?;
        lock(&self.inner.entry_owner).insert(ip, id);
        Ok(())
    }

    /// Removes the entries of `ips` written by handover `id` (any entry when
    /// `id` is `None`).
    fn clear(&self, ips: &[Ipv4Addr], id: Option<u64>) {
        let mut owners = lock(&self.inner.entry_owner);
        let mut m = match crate::datapath::pinned::handover(&self.inner.pin_dir) {
            Ok(m) => m,
            Err(e) => {
                warn!("handover entries not cleared: {e}");
                return;
            }
        };
        for ip in ips {
            if id.is_some() && owners.get(ip).copied() != id {
                continue;
            }
            owners.remove(ip);
            // Absent is fine.
            let _ = m.remove(&key(*ip));
        }
    }

    /// Run method, under the group lock: whether the group was prepared
    /// here by a handover (the application runs, the addresses are
    /// configured). Either way the addresses' handover entries are gone
    /// afterwards: the caller announces them.
    pub fn take_prepared(&self, group: &Group) -> bool {
        let prepared = lock(&self.inner.prepared).remove(&group.name).is_some();
        self.clear(&v4(group), None);
        prepared
    }

    /// The core registered `group` somewhere else: a preparation here is
    /// stale.
    pub fn started_elsewhere(&self, group: &str) {
        let id = lock(&self.inner.prepared).get(group).copied();
        if let Some(id) = id {
            let h = self.clone();
            let group = group.to_string();
            tokio::spawn(async move { h.undo(&group, id, "the group was started on another node").await });
        }
    }

    /// New side.
    async fn prepare(&self, from: NodeId, group: String, id: u64) {
        let reply = |msg: HandoverMsg| {
            if !self.inner.sender.send(from, &msg) {
                warn!(service = %group, to = from, "handover reply not sent (no link up)");
            }
        };
        let Some(gh) = self.inner.groups.get(&group).cloned() else {
            reply(HandoverMsg::Failed { group: group.clone(), id, reason: format!("no group {group:?} configured on node {}", self.inner.me) });
            return;
        };
        let g = &gh.group;
        let _guard = gh.lock.lock().await;
        // A run of the group begins here: a watchdog of an earlier halt on
        // this node must not clean up what the preparation sets up.
        crate::services::watchdog::run_begins_here(&group).await;
        if self.inner.active.holds(&group) {
            reply(HandoverMsg::Failed { group: group.clone(), id, reason: "the group already runs on the new node".into() });
            return;
        }
        info!(service = %group, from, "handover: preparing (address silent, application starting)");
        let t0 = crate::datapath::events::monotonic_ns();
        // Held from now on: if the agent dies during the preparation, the
        // guard removes what it configured.
        self.inner.active.hold(&group);
        match self.prepare_here(g, gh.app.as_deref(), id).await {
            Ok(mac) => {
                lock(&self.inner.prepared).insert(group.clone(), id);
                self.inner.active.set_pgids(&group, &crate::services::watchdog::pgids_of(gh.app.as_deref()).await);
                let ms = (crate::datapath::events::monotonic_ns() - t0) as f64 / 1e6;
                self.event(serde_json::json!({"event": "handover_prepared", "service": group, "node": self.inner.me, "from": from, "ms": ms}));
                reply(HandoverMsg::Ready { group: group.clone(), id, mac });
                let ttl = Duration::from_millis(g.drain_timeout_ms as u64) + PREPARED_TTL;
                let h = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(ttl).await;
                    h.undo(&group, id, "no start followed the preparation").await;
                });
            }
            Err(e) => {
                self.inner.active.release(&group);
                warn!(service = %group, "handover: preparing failed: {e}");
                reply(HandoverMsg::Failed { group: group.clone(), id, reason: e.to_string() });
            }
        }
    }

    async fn prepare_here(&self, g: &Group, app: Option<&Resource>, id: u64) -> Result<[u8; 6], HandoverError> {
        let ips = v4(g);
        let mac = crate::services::addr::mac_of(&g.interface)
            .await
            .map_err(|source| HandoverError::Mac { source })?
            .ok_or_else(|| HandoverError::NoMac { interface: g.interface.clone() })?;
        // The kernel must not tell anybody where the address is: ARP requests
        // for it are dropped, and its own ARP requests use another source
        // address (the default, arp_announce=0, would use the address
        // being prepared when answering a steered connection, and the
        // client would learn it here too early).
        let sysctl = format!("/proc/sys/net/ipv4/conf/{}/arp_announce", g.interface);
        if std::fs::read_to_string(&sysctl).map(|s| s.trim().parse::<u32>().unwrap_or(0) < 2).unwrap_or(false) {
            match std::fs::write(&sysctl, "2") {
                Ok(()) => info!(interface = %g.interface, "handover: net.ipv4.conf.{}.arp_announce set to 2", g.interface),
                Err(source) => return Err(HandoverError::ArpAnnounce { sysctl, source }),
            }
        }
        let entry = Entry { mode: HANDOVER_SILENT, ..Default::default() };
        for ip in &ips {
            if let Err(e) = self.set(*ip, id, entry) {
                self.clear(&ips, Some(id));
                return Err(e);
            }
        }
        let undo = |why: HandoverError| async move {
            if let Some(app) = app {
                let _ = app.stop().await;
            }
            crate::services::addr::release_all(g).await;
            self.clear(&ips, Some(id));
            Err(why)
        };
        for a in &g.addresses {
            if let Err(e) = crate::services::addr::add(&g.interface, a.ip, a.prefix, true).await {
                return undo(HandoverError::Address { address: *a, source: e }).await;
            }
        }
        if let Some(app) = app {
            if let Err(source) = app.start().await {
                return undo(HandoverError::Application { source }).await;
            }
        }
        // Ready when every monitor of the group passes once: the old node
        // sends new connections here from then on, so "spawned" is not
        // enough (a daemon may not listen yet).
        if let Err(e) = ready(g, app).await {
            return undo(e).await;
        }
        Ok(mac)
    }

    /// New side: undoes preparation `id` of `group` if it is still there.
    async fn undo(&self, group: &str, id: u64, why: &str) {
        let Some(gh) = self.inner.groups.get(group).cloned() else { return };
        let _guard = gh.lock.lock().await;
        {
            let mut p = lock(&self.inner.prepared);
            if p.get(group) != Some(&id) {
                return;
            }
            p.remove(group);
        }
        warn!(service = %group, "handover: undoing the preparation: {why}");
        if let Some(app) = &gh.app {
            if let Err(e) = app.stop().await {
                error!(service = %group, "handover: stopping the prepared application failed: {e}");
            }
        }
        crate::services::addr::release_all(&gh.group).await;
        self.clear(&v4(&gh.group), Some(id));
        self.inner.active.release(group);
        self.event(serde_json::json!({"event": "handover_undone", "service": group, "node": self.inner.me, "reason": why}));
    }

    /// Old side, inside the halt method (under the group lock): hands the
    /// group to `next`. `Ok(true)`: done (application stopped, addresses
    /// released, steering lingers); `Ok(false)`: no handover happened and
    /// nothing changed here (the caller halts the usual way); `Err`: the
    /// application did not stop.
    pub async fn hand_over(&self, gh: &GroupHandle, next: NodeId) -> Result<bool, HandoverError> {
        let g = &gh.group;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.waiters).insert((g.name.clone(), id), tx);
        let t0 = crate::datapath::events::monotonic_ns();
        if !self.inner.sender.send(next, &HandoverMsg::Prepare { group: g.name.clone(), id }) {
            lock(&self.inner.waiters).remove(&(g.name.clone(), id));
            warn!(service = %g.name, next, "handover: no link up to the new node; halting the usual way");
            return Ok(false);
        }
        // The new node's start, then its readiness (each within the start
        // timeout), and some slack.
        let wait = Duration::from_millis(2 * g.application.as_ref().map_or(0, |a| a.timeouts.start_ms as u64).max(1000)) + Duration::from_secs(2);
        let peer_mac = match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(mac))) => mac,
            other => {
                lock(&self.inner.waiters).remove(&(g.name.clone(), id));
                let why = match other {
                    Ok(Ok(Err(e))) => e.to_string(),
                    _ => format!("no answer within {wait:?}"),
                };
                warn!(service = %g.name, next, "handover: the new node did not prepare ({why}); halting the usual way");
                self.inner.sender.send(next, &HandoverMsg::Abort { group: g.name.clone(), id });
                return Ok(false);
            }
        };
        let prepared_ms = (crate::datapath::events::monotonic_ns() - t0) as f64 / 1e6;
        let own_mac = match crate::services::addr::mac_of(&g.interface).await {
            Ok(Some(m)) => m,
            other => {
                warn!(service = %g.name, "handover: no MAC address of {} ({other:?}); halting the usual way", g.interface);
                self.inner.sender.send(next, &HandoverMsg::Abort { group: g.name.clone(), id });
                return Ok(false);
            }
        };
        let ips = v4(g);
        let entry = Entry { mode: HANDOVER_STEER, peer_mac, own_mac, ..Default::default() };
        for ip in &ips {
            if let Err(e) = self.set(*ip, id, entry) {
                warn!(service = %g.name, "handover: {e}; halting the usual way");
                self.clear(&ips, Some(id));
                self.inner.sender.send(next, &HandoverMsg::Abort { group: g.name.clone(), id });
                return Ok(false);
            }
        }
        info!(service = %g.name, next, prepared_ms, "handover: new connections go to the new node; draining ours");
        let t1 = crate::datapath::events::monotonic_ns();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(g.drain_timeout_ms as u64);
        // A SYN that reached this node just before the steering may still be
        // on its way into the socket table (backlog, softirq): the drain is
        // over only when the table showed no connection twice, DRAIN_SETTLE
        // apart, the first time DRAIN_SETTLE after the steering began.
        tokio::time::sleep(DRAIN_SETTLE).await;
        let mut left;
        let mut empty_since: Option<tokio::time::Instant> = None;
        loop {
            left = open_connections(&ips);
            let now = tokio::time::Instant::now();
            if left > 0 {
                empty_since = None;
            } else if empty_since.is_some_and(|t| now >= t + DRAIN_SETTLE) {
                break;
            } else if empty_since.is_none() {
                empty_since = Some(now);
            }
            if now >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let drain_ms = (crate::datapath::events::monotonic_ns() - t1) as f64 / 1e6;
        if left > 0 {
            warn!(service = %g.name, left, "handover: connections still open after drain_timeout_ms; halting anyway");
        }
        if let Some(app) = &gh.app {
            // The application may still hold the addresses: keep them, and
            // the steering, as a failed halt keeps them.
            app.stop().await.map_err(|source| HandoverError::Application { source })?;
        }
        crate::services::addr::release_all(g).await;
        self.event(serde_json::json!({
            "event": "handover_done", "service": g.name, "node": self.inner.me, "next": next,
            "prepared_ms": prepared_ms, "drain_ms": drain_ms, "connections_left": left,
        }));
        let h = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            h.clear(&ips, Some(id));
        });
        Ok(true)
    }
}

/// Waits until the application's monitor and every `[[group.monitor]]`
/// report running, retrying every 10 ms within the application's start
/// timeout.
async fn ready(g: &Group, app: Option<&Resource>) -> Result<(), HandoverError> {
    let extra: Vec<Resource> = g.monitors.iter().map(Resource::from_spec).collect();
    let mut checks: Vec<&Resource> = app.into_iter().collect();
    checks.extend(extra.iter());
    let limit = Duration::from_millis(g.application.as_ref().map_or(20_000, |a| a.timeouts.start_ms as u64).max(1000));
    let deadline = tokio::time::Instant::now() + limit;
    for r in checks {
        loop {
            match r.monitor().await {
                crate::services::resource::MonitorStatus::Running => break,
                other if tokio::time::Instant::now() >= deadline => {
                    return Err(HandoverError::NotReady { resource: r.name().to_string(), limit, status: format!("{other:?}") });
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
    Ok(())
}

/// TCP connections in `/proc/net/tcp` (this network namespace) whose local
/// address is one of `ips`, other than listeners and time-wait.
fn open_connections(ips: &[Ipv4Addr]) -> usize {
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else { return 0 };
    count_open(&text, ips)
}

fn count_open(text: &str, ips: &[Ipv4Addr]) -> usize {
    let wanted: Vec<String> = ips.iter().map(|ip| format!("{:08X}", u32::from_ne_bytes(ip.octets()))).collect();
    text.lines()
        .skip(1)
        .filter(|l| {
            let mut f = l.split_whitespace();
            let (Some(_), Some(local), Some(_), Some(st)) = (f.next(), f.next(), f.next(), f.next()) else { return false };
            let ip = local.split(':').next().unwrap_or("");
            // 06 TIME_WAIT, 07 CLOSE, 0A LISTEN.
            wanted.iter().any(|w| w.eq_ignore_ascii_case(ip)) && !matches!(st, "06" | "07" | "0A")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_open_connections_of_an_address() {
        // 10.0.0.100 is 6400000A in /proc/net/tcp on little-endian machines.
        let ip = Ipv4Addr::new(10, 0, 0, 100);
        let hex = format!("{:08X}", u32::from_ne_bytes(ip.octets()));
        let text = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue\n\
             0: {hex}:0050 00000000:0000 0A 00000000:00000000\n\
             1: {hex}:0050 0200000A:9C40 01 00000000:00000000\n\
             2: {hex}:0050 0200000A:9C41 06 00000000:00000000\n\
             3: 0300000A:0050 0200000A:9C42 01 00000000:00000000\n\
             4: {hex}:0050 0200000A:9C43 08 00000000:00000000\n"
        );
        assert_eq!(count_open(&text, &[ip]), 2);
        assert_eq!(count_open(&text, &[Ipv4Addr::new(10, 0, 0, 7)]), 0);
    }

    #[test]
    fn messages_round_trip() {
        let m = HandoverMsg::Ready { group: "web".into(), id: 7, mac: [2, 0, 0, 0, 0, 1] };
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<HandoverMsg>(&s).unwrap(), m);
    }
}
