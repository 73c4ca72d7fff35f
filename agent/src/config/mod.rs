//! `baton.toml`: parsing and validation. Every error names the file, the line,
//! the key and the problem; nothing is applied from a file that has one.

mod common;
pub mod events;
pub mod groups;
pub mod health;
pub mod takeover;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::paths::RuntimePaths;

pub(crate) use common::Ctx;
pub use common::{ConfigError, Disk, Link, Transport};

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native (driver) mode if the driver has it, else generic.
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: u32,
    pub name: String,
    /// One address per link, in link order.
    pub addresses: Vec<IpAddr>,
}

/// Default of `membership.confirm_ms`.
pub const DEFAULT_CONFIRM_MS: u32 = 200;

impl Config {
    /// Who may use the local sockets (besides root).
    pub fn socket_access(&self) -> crate::localsock::Access {
        crate::localsock::Access { group: self.socket_group }
    }
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub file: PathBuf,
    pub cluster_name: String,
    pub cluster_id: u32,
    pub secret_file: PathBuf,
    pub node_id: u32,
    pub node_name: String,
    pub interval_ms: u32,
    pub misses: u32,
    pub port: u16,
    pub realtime_priority: u32,
    pub watchdog_tick_us: u32,
    pub xdp_mode: XdpModeSetting,
    /// Membership: members per S3 subgroup, resend period, formation wait,
    /// and the TCP port of the encrypted control channel.
    pub subgroup_size: usize,
    pub resend_ms: u32,
    pub form_ms: u32,
    pub control_port: u16,
    /// After this node halted (forced out, lost quorum, superseded, cluster
    /// lost; not after a local critical failure, S0), the agent starts again
    /// as a new life after this long, doubled for each halt that follows
    /// the previous start within a minute (at most 60 s). 0: the agent exits
    /// instead (for a supervisor, or an operator, to restart it).
    pub rejoin_ms: u32,
    /// A silence seen by this node's datapath alone is handed to membership
    /// only once another member saw it too, or after this long with the peer
    /// still silent here (0: at once). See `crate::daemon::confirm`.
    pub confirm_ms: u32,
    pub links: Vec<Link>,
    pub peers: Vec<Peer>,
    pub paths: RuntimePaths,
    /// `paths.socket_group` (a group name or gid) as a gid: members of that
    /// group may use the control and subsystem sockets (docs/security.md).
    pub socket_group: Option<u32>,
    /// Resource groups / services (`[[group]]`, see `groups.rs`).
    pub groups: Vec<crate::config::groups::Group>,
    /// Shared disks fenced with SCSI-3 persistent reservations (`[[disk]]`,
    /// docs/fencing.md).
    pub disks: Vec<Disk>,
    /// Health checks (`[[health]]`), the negotiated takeover (`[takeover]`),
    /// event actions (`[[on]]`) and alerts (`[alerts]`): docs/takeover.md,
    /// docs/events.md.
    pub health: Vec<crate::config::health::HealthCheck>,
    pub takeover: crate::config::takeover::TakeoverCfg,
    pub actions: Vec<crate::config::events::OnAction>,
    pub alerts: Option<crate::config::events::AlertsCfg>,
    /// The Prometheus endpoint (`[metrics]`, docs/metrics.md); off when absent.
    pub metrics: Option<MetricsCfg>,
}

/// `[metrics]`: where the agent serves `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsCfg {
    pub listen: std::net::SocketAddr,
}

impl Config {
    /// Two configured nodes and a disk that decides their quorum races.
    pub fn two_node_race(&self) -> bool {
        self.peers.len() == 1 && self.disks.iter().any(|d| d.quorum)
    }

    /// The reservation key of node `id` on this cluster's disks.
    pub fn disk_key(&self, id: u32) -> u64 {
        baton_scsi::node_key(self.cluster_id, id)
    }

    /// Silence bound: `interval × misses`.
    pub fn timeout_ns(&self) -> u64 {
        self.interval_ms as u64 * self.misses as u64 * 1_000_000
    }

    pub fn peer_name(&self, id: u32) -> String {
        self.peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| format!("node{id}"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: Option<Spanned<RawCluster>>,
    node: Option<Spanned<RawNode>>,
    heartbeat: Option<Spanned<RawHeartbeat>>,
    datapath: Option<Spanned<RawDatapath>>,
    membership: Option<Spanned<RawMembership>>,
    paths: Option<Spanned<RawPaths>>,
    #[serde(default)]
    link: Vec<Spanned<RawLink>>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
    #[serde(default)]
    group: Vec<Spanned<crate::config::groups::RawGroup>>,
    #[serde(default)]
    disk: Vec<Spanned<RawDisk>>,
    #[serde(default)]
    health: Vec<Spanned<crate::config::health::RawHealth>>,
    takeover: Option<Spanned<crate::config::takeover::RawTakeover>>,
    #[serde(default)]
    on: Vec<Spanned<crate::config::events::RawOn>>,
    alerts: Option<Spanned<crate::config::events::RawAlerts>>,
    metrics: Option<Spanned<RawMetrics>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Spanned<String>,
    allow_remote: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    name: Spanned<String>,
    device: Option<Spanned<String>>,
    devices: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    #[serde(rename = "type")]
    pr_type: Option<Spanned<String>>,
    check_interval_ms: Option<Spanned<i64>>,
    timeout_ms: Option<Spanned<i64>>,
    quorum: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    id: Spanned<i64>,
    secret_file: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Spanned<i64>,
    name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeartbeat {
    interval_ms: Option<Spanned<i64>>,
    misses: Option<Spanned<i64>>,
    port: Option<Spanned<i64>>,
    realtime_priority: Option<Spanned<i64>>,
    watchdog_tick_us: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatapath {
    xdp_mode: Option<Spanned<XdpModeSetting>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMembership {
    subgroup_size: Option<Spanned<i64>>,
    resend_ms: Option<Spanned<i64>>,
    form_ms: Option<Spanned<i64>>,
    control_port: Option<Spanned<i64>>,
    rejoin_ms: Option<Spanned<i64>>,
    confirm_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    bpffs_dir: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    run_dir: Option<Spanned<String>>,
    socket_group: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    name: Spanned<String>,
    interface: Spanned<String>,
    address: Spanned<String>,
    transport: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: Spanned<i64>,
    name: Spanned<String>,
    addresses: Spanned<Vec<Spanned<String>>>,
}

/// Reads and validates a configuration file.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Io { file: file.to_path_buf(), source })?;
    parse(file, &text)
}

/// Validates configuration text (`file` is only used in messages and to
/// resolve a relative `secret_file`).
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let cx = Ctx { file, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.to_path_buf(),
        line: e.span().map(|s| cx.line(s.start)).unwrap_or(1),
        message: e.message().to_string(),
    })?;

    let cluster = raw.cluster.ok_or_else(|| cx.missing("cluster", "the [cluster] table is required"))?;
    let cluster = cluster.get_ref();
    let cluster_name = cx.name(&cluster.name, "cluster.name")?;
    let cluster_id: u32 = cx.int(&cluster.id, "cluster.id", 1, u32::MAX as i64)?;
    if cluster.secret_file.get_ref().is_empty() {
        return Err(cx.invalid(&cluster.secret_file, "cluster.secret_file", "must name a file"));
    }
    let mut secret_file = PathBuf::from(cluster.secret_file.get_ref());
    if secret_file.is_relative() {
        secret_file = file.parent().unwrap_or(Path::new(".")).join(secret_file);
    }

    let node = raw.node.ok_or_else(|| cx.missing("node", "the [node] table is required"))?;
    let node = node.get_ref();
    let node_id: u32 = cx.int(&node.id, "node.id", 1, u32::MAX as i64 - 1)?;
    let node_name = cx.name(&node.name, "node.name")?;

    let (mut interval_ms, mut misses, mut port, mut rt, mut tick) = (100u32, 3u32, baton_common::DEFAULT_PORT, 10u32, 1000u32);
    if let Some(hb) = &raw.heartbeat {
        let hb = hb.get_ref();
        if let Some(v) = &hb.interval_ms {
            interval_ms = cx.int(v, "heartbeat.interval_ms", 1, 60_000)?;
        }
        if let Some(v) = &hb.misses {
            misses = cx.int(v, "heartbeat.misses", 2, 1000)?;
        }
        if let Some(v) = &hb.port {
            port = cx.int(v, "heartbeat.port", 1, 65535)?;
        }
        if let Some(v) = &hb.realtime_priority {
            rt = cx.int(v, "heartbeat.realtime_priority", 0, 99)?;
        }
        if let Some(v) = &hb.watchdog_tick_us {
            tick = cx.int(v, "heartbeat.watchdog_tick_us", 100, 1_000_000)?;
            // The watchdog must tick at least 4 times per silence bound, or
            // detection is dominated by the tick rather than the bound.
            let bound_us = interval_ms as u64 * misses as u64 * 1000;
            if tick as u64 * 4 > bound_us {
                return Err(cx.invalid(v, "heartbeat.watchdog_tick_us", format!(
                    "{tick} µs is too coarse for a silence bound of interval_ms × misses = {bound_us} µs (at most a quarter of it)"
                )));
            }
        }
    }
    if (interval_ms as u64 * misses as u64 * 1000) < tick as u64 * 4 {
        return Err(cx.missing(
            "heartbeat.watchdog_tick_us",
            &format!("the default tick of {tick} µs is more than a quarter of interval_ms × misses; set a smaller tick"),
        ));
    }

    let mut xdp_mode = XdpModeSetting::Auto;
    if let Some(dp) = &raw.datapath {
        if let Some(m) = &dp.get_ref().xdp_mode {
            xdp_mode = *m.get_ref();
        }
    }

    let (mut subgroup_size, mut resend_ms, mut form_ms, mut rejoin_ms) = (4usize, 50u32, 500u32, 1000u32);
    let mut confirm_ms = DEFAULT_CONFIRM_MS;
    let mut control_port: u16 = port.checked_add(1).unwrap_or(port - 1);
    if let Some(m) = &raw.membership {
        let m = m.get_ref();
        if let Some(v) = &m.subgroup_size {
            subgroup_size = cx.int(v, "membership.subgroup_size", 1, 256)?;
        }
        if let Some(v) = &m.resend_ms {
            resend_ms = cx.int(v, "membership.resend_ms", 1, 10_000)?;
        }
        if let Some(v) = &m.form_ms {
            form_ms = cx.int(v, "membership.form_ms", 10, 600_000)?;
        }
        if let Some(v) = &m.confirm_ms {
            confirm_ms = cx.int(v, "membership.confirm_ms", 0, 10_000)?;
        }
        if let Some(v) = &m.rejoin_ms {
            rejoin_ms = cx.int(v, "membership.rejoin_ms", 0, 600_000)?;
        }
        if let Some(v) = &m.control_port {
            control_port = cx.int(v, "membership.control_port", 1, 65535)?;
            if control_port == port {
                return Err(cx.invalid(v, "membership.control_port", format!("{control_port} is the heartbeat port (heartbeat.port)")));
            }
        }
    }

    let (mut bpffs, mut state, mut run) = (None, None, None);
    let mut socket_group = None;
    if let Some(p) = &raw.paths {
        let p = p.get_ref();
        let abs = |v: &Spanned<String>, key: &str| -> Result<PathBuf, ConfigError> {
            let pb = PathBuf::from(v.get_ref());
            if !pb.is_absolute() {
                return Err(cx.invalid(v, key, "must be an absolute path"));
            }
            Ok(pb)
        };
        if let Some(v) = &p.bpffs_dir {
            let pb = abs(v, "paths.bpffs_dir")?;
            if !pb.starts_with(crate::paths::BPFFS_ROOT) {
                return Err(cx.invalid(v, "paths.bpffs_dir", "must be below /sys/fs/bpf (a bpffs)"));
            }
            bpffs = Some(pb);
        }
        if let Some(v) = &p.state_dir {
            state = Some(abs(v, "paths.state_dir")?);
        }
        if let Some(v) = &p.run_dir {
            run = Some(abs(v, "paths.run_dir")?);
        }
        if let Some(v) = &p.socket_group {
            let name = v.get_ref();
            let gid = match name.parse::<u32>() {
                Ok(g) => g,
                Err(_) => match nix::unistd::Group::from_name(name) {
                    Ok(Some(g)) => g.gid.as_raw(),
                    Ok(None) => return Err(cx.invalid(v, "paths.socket_group", format!("no group {name:?} on this host"))),
                    Err(e) => return Err(cx.invalid(v, "paths.socket_group", format!("cannot look up group {name:?}: {e}"))),
                },
            };
            socket_group = Some(gid);
        }
    }

    if raw.link.is_empty() {
        return Err(cx.missing("link", "at least one [[link]] (cluster interconnect) is required"));
    }
    if raw.link.len() > baton_common::MAX_LINKS as usize {
        return Err(cx.invalid(&raw.link[baton_common::MAX_LINKS as usize], "link", format!("at most {} links are supported", baton_common::MAX_LINKS)));
    }
    let mut links = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, l) in raw.link.iter().enumerate() {
        let lr = l.get_ref();
        let key = |k: &str| format!("link[{i}].{k}");
        let name = cx.name(&lr.name, &key("name"))?;
        if !seen.insert(name.clone()) {
            return Err(cx.invalid(&lr.name, &key("name"), format!("duplicate link name {name:?}")));
        }
        let ifname = lr.interface.get_ref();
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains('/') || ifname.contains(char::is_whitespace) {
            return Err(cx.invalid(&lr.interface, &key("interface"), format!("{ifname:?} is not a valid interface name")));
        }
        if links.iter().any(|x: &Link| &x.interface == ifname) {
            return Err(cx.invalid(&lr.interface, &key("interface"), format!("interface {ifname:?} is used by two links")));
        }
        let address = cx.ip(&lr.address, &key("address"))?;
        if address.is_unspecified() || address.is_multicast() {
            return Err(cx.invalid(&lr.address, &key("address"), "must be a unicast address of this node"));
        }
        let transport = match lr.transport.as_ref().map(|t| t.get_ref().as_str()) {
            Some("broadcast") => Transport::Broadcast,
            None | Some("unicast") => Transport::Unicast,
            Some(other) => {
                return Err(cx.invalid(
                    lr.transport.as_ref().unwrap(),
                    &key("transport"),
                    format!("{other:?} is not a transport: \"broadcast\" (one datagram per interval for all peers, shared L2) or \"unicast\" (one per peer, routed interconnects)"),
                ))
            }
        };
        links.push(Link { index: i as u8, name, interface: ifname.clone(), address, transport });
    }

    if raw.peer.is_empty() {
        return Err(cx.missing("peer", "at least one [[peer]] is required (a cluster of one has nobody to watch)"));
    }
    if raw.peer.len() >= baton_common::MAX_NODES as usize {
        return Err(cx.invalid(&raw.peer[0], "peer", format!("at most {} peers are supported", baton_common::MAX_NODES - 1)));
    }
    let mut peers: Vec<Peer> = Vec::new();
    let mut names = BTreeSet::from([node_name.clone()]);
    for (i, p) in raw.peer.iter().enumerate() {
        let pr = p.get_ref();
        let key = |k: &str| format!("peer[{i}].{k}");
        let id: u32 = cx.int(&pr.id, &key("id"), 1, u32::MAX as i64 - 1)?;
        if id == node_id {
            return Err(cx.invalid(&pr.id, &key("id"), format!("{id} is this node's own id (node.id)")));
        }
        if peers.iter().any(|q| q.id == id) {
            return Err(cx.invalid(&pr.id, &key("id"), format!("duplicate peer id {id}")));
        }
        let name = cx.name(&pr.name, &key("name"))?;
        if !names.insert(name.clone()) {
            return Err(cx.invalid(&pr.name, &key("name"), format!("duplicate node name {name:?}")));
        }
        let addrs = pr.addresses.get_ref();
        if addrs.len() != links.len() {
            return Err(cx.invalid(&pr.addresses, &key("addresses"), format!(
                "has {} addresses but there are {} links: give one address per [[link]], in order",
                addrs.len(),
                links.len()
            )));
        }
        let mut addresses = Vec::new();
        for (j, a) in addrs.iter().enumerate() {
            let ip = cx.ip(a, &format!("peer[{i}].addresses[{j}]"))?;
            if ip.is_ipv4() != links[j].address.is_ipv4() {
                return Err(cx.invalid(a, &format!("peer[{i}].addresses[{j}]"), format!(
                    "{ip} is not of the same family as link {:?}'s address {}",
                    links[j].name, links[j].address
                )));
            }
            addresses.push(ip);
        }
        peers.push(Peer { id, name, addresses });
    }

    let peer_ids: Vec<u32> = peers.iter().map(|p| p.id).collect();
    let groups = crate::config::groups::validate(file, text, &raw.group, node_id, &peer_ids, &links)?;

    let mut disks: Vec<Disk> = Vec::new();
    for (i, d) in raw.disk.iter().enumerate() {
        let dr = d.get_ref();
        let key = |k: &str| format!("disk[{i}].{k}");
        let name = cx.name(&dr.name, &key("name"))?;
        if disks.iter().any(|x| x.name == name) {
            return Err(cx.invalid(&dr.name, &key("name"), format!("duplicate disk name {name:?}")));
        }
        let path = |v: &Spanned<String>, k: &str| -> Result<PathBuf, ConfigError> {
            let pb = PathBuf::from(v.get_ref());
            if !pb.is_absolute() {
                return Err(cx.invalid(v, k, format!("{:?} must be an absolute device path (e.g. /dev/disk/by-id/...)", v.get_ref())));
            }
            Ok(pb)
        };
        let device = match (&dr.device, &dr.devices) {
            (Some(_), Some(m)) => return Err(cx.invalid(m, &key("devices"), "give either `device` (this node's path) or `devices` (a path per node name), not both")),
            (Some(v), None) => path(v, &key("device"))?,
            (None, Some(m)) => {
                for (n, v) in m.get_ref() {
                    if !names.contains(n) {
                        return Err(cx.invalid(v, &key(&format!("devices.{n}")), format!("{n:?} is not a node name of this cluster (node.name or a [[peer]] name)")));
                    }
                }
                let mine = m.get_ref().get(&node_name).ok_or_else(|| {
                    cx.invalid(m, &key("devices"), format!("has no path for this node ({node_name:?})"))
                })?;
                path(mine, &key(&format!("devices.{node_name}")))?
            }
            (None, None) => return Err(cx.invalid(d, &key("device"), "a disk needs `device` (this node's path to it) or `devices` (a path per node name)")),
        };
        if disks.iter().any(|x| x.device == device) {
            return Err(cx.invalid(d, &key("device"), format!("{} is already disk {:?}", device.display(), disks.iter().find(|x| x.device == device).map(|x| x.name.clone()).unwrap_or_default())));
        }
        let pr_type = match &dr.pr_type {
            None => baton_scsi::PrType::default(),
            Some(v) => v.get_ref().parse::<baton_scsi::PrType>().map_err(|e| cx.invalid(v, &key("type"), e.to_string()))?,
        };
        let check_interval_ms = match &dr.check_interval_ms {
            Some(v) => cx.int(v, &key("check_interval_ms"), 100, 600_000)?,
            None => 1000,
        };
        let timeout_ms = match &dr.timeout_ms {
            Some(v) => cx.int(v, &key("timeout_ms"), 100, 600_000)?,
            None => 5000,
        };
        let quorum = dr.quorum.as_ref().map(|v| *v.get_ref()).unwrap_or(true);
        disks.push(Disk { name, device, pr_type, check_interval_ms, timeout_ms, quorum });
    }
    if disks.len() > 8 {
        return Err(cx.invalid(&raw.disk[8], "disk", "at most 8 disks are supported"));
    }

    let health = crate::config::health::validate(&cx, &raw.health, &disks)?;
    let takeover = crate::config::takeover::validate(&cx, &raw.takeover, node_id, &peer_ids)?;
    let actions = crate::config::events::validate_on(&cx, &raw.on, &groups)?;
    let alerts = crate::config::events::validate_alerts(&cx, &raw.alerts)?;

    let metrics = match &raw.metrics {
        None => None,
        Some(m) => {
            let m = m.get_ref();
            let listen: std::net::SocketAddr = m.listen.get_ref().parse().map_err(|_| {
                cx.invalid(&m.listen, "metrics.listen", format!("{:?} is not an address:port (e.g. \"127.0.0.1:9745\")", m.listen.get_ref()))
            })?;
            if listen.port() == 0 {
                return Err(cx.invalid(&m.listen, "metrics.listen", "give a port (e.g. 127.0.0.1:9745)"));
            }
            let remote_ok = m.allow_remote.as_ref().is_some_and(|v| *v.get_ref());
            if !listen.ip().is_loopback() && !remote_ok {
                return Err(cx.invalid(&m.listen, "metrics.listen", format!(
                    "{} is not a loopback address: the metrics show the cluster's state (nodes, groups, addresses) to anyone who can connect, without authentication; listen on 127.0.0.1, or set metrics.allow_remote = true to serve them there",
                    listen.ip()
                )));
            }
            Some(MetricsCfg { listen })
        }
    };

    let paths = RuntimePaths::new(&cluster_name, bpffs.as_deref(), state.as_deref(), run.as_deref());
    Ok(Config {
        file: file.to_path_buf(),
        cluster_name,
        cluster_id,
        secret_file,
        node_id,
        node_name,
        interval_ms,
        misses,
        port,
        realtime_priority: rt,
        watchdog_tick_us: tick,
        xdp_mode,
        subgroup_size,
        resend_ms,
        form_ms,
        control_port,
        rejoin_ms,
        confirm_ms,
        links,
        peers,
        paths,
        socket_group,
        groups,
        disks,
        health,
        takeover,
        actions,
        alerts,
        metrics,
    })
}

/// Reads the 128-bit cluster secret: 32 hex digits (whitespace ignored).
/// Refuses a file that group or others can read or write, or a weak key.
pub fn read_secret(file: &Path) -> Result<[u8; 16], ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let err = |reason: String| ConfigError::Secret { file: file.to_path_buf(), reason };
    let md = std::fs::metadata(file).map_err(|e| err(format!("cannot read: {e}")))?;
    if md.mode() & 0o077 != 0 {
        return Err(err(format!(
            "mode {:04o} lets group or others access the cluster key; run `chmod 600 {}`",
            md.mode() & 0o7777,
            file.display()
        )));
    }
    if md.uid() != nix::unistd::geteuid().as_raw() {
        return Err(err(format!("is owned by uid {}, not by the user running baton", md.uid())));
    }
    let text = std::fs::read_to_string(file).map_err(|e| err(format!("cannot read: {e}")))?;
    parse_secret(&text).map_err(|e| err(e.to_string()))
}

/// What is wrong with a secret file's text ([`parse_secret`]).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretFormatError {
    #[error("must hold exactly 32 hex digits (a 128-bit key), found {found} characters")]
    NotHex { found: usize },
    #[error("is not a random key (fewer than 4 distinct bytes); make one with `baton keygen`")]
    NotRandom,
}

pub fn parse_secret(text: &str) -> Result<[u8; 16], SecretFormatError> {
    let hex: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(SecretFormatError::NotHex { found: hex.len() });
    }
    let mut key = [0u8; 16];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).expect("checked hex");
    }
    let distinct: BTreeSet<u8> = key.iter().copied().collect();
    if distinct.len() < 4 {
        return Err(SecretFormatError::NotRandom);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
name = "demo"
id = 42
secret_file = "/etc/baton/secret"

[node]
id = 1
name = "alpha"

[heartbeat]
interval_ms = 10
misses = 3

[[link]]
name = "ring0"
interface = "eth1"
address = "10.0.0.1"

[[peer]]
id = 2
name = "beta"
addresses = ["10.0.0.2"]
"#;

    fn err(text: &str) -> String {
        parse(Path::new("t.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn good_config() {
        let c = parse(Path::new("/etc/baton/baton.toml"), GOOD).unwrap();
        assert_eq!(c.cluster_id, 42);
        assert_eq!(c.timeout_ns(), 30_000_000);
        assert_eq!(c.links[0].interface, "eth1");
        assert_eq!(c.peers[0].addresses, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.paths.bpffs_dir, Path::new("/sys/fs/bpf/baton/demo"));
        assert_eq!(c.port, baton_common::DEFAULT_PORT);
    }

    #[test]
    fn link_transport_defaults_to_unicast_and_names_a_bad_value() {
        let c = parse(Path::new("t.toml"), GOOD).unwrap();
        assert_eq!(c.links[0].transport, Transport::Unicast);
        let b = GOOD.replace("address = \"10.0.0.1\"", "address = \"10.0.0.1\"\ntransport = \"broadcast\"");
        assert_eq!(parse(Path::new("t.toml"), &b).unwrap().links[0].transport, Transport::Broadcast);
        let bad = GOOD.replace("address = \"10.0.0.1\"", "address = \"10.0.0.1\"\ntransport = \"multicast\"");
        let e = err(&bad);
        assert!(e.starts_with("t.toml:19: `link[0].transport`: \"multicast\" is not a transport"), "{e}");
    }

    #[test]
    fn disks_take_this_nodes_path_and_name_every_error() {
        let c = parse(Path::new("t.toml"), &format!("{GOOD}\n[[disk]]\nname = \"shared\"\ndevice = \"/dev/disk/by-id/wwn-0x1\"\n")).unwrap();
        assert_eq!(c.disks.len(), 1);
        let d = &c.disks[0];
        assert_eq!((d.device.as_path(), d.pr_type, d.check_interval_ms, d.timeout_ms, d.quorum), (Path::new("/dev/disk/by-id/wwn-0x1"), baton_scsi::PrType::WriteExclusiveRegistrantsOnly, 1000, 5000, true));
        assert!(c.two_node_race());
        assert_eq!(c.disk_key(2), 42u64 << 32 | 2);
        let c = parse(
            Path::new("t.toml"),
            &format!("{GOOD}\n[[disk]]\nname = \"shared\"\ndevices = {{ alpha = \"/dev/sdb\", beta = \"/dev/sdc\" }}\ntype = \"wear\"\nquorum = false\n"),
        )
        .unwrap();
        assert_eq!(c.disks[0].device, Path::new("/dev/sdb"));
        assert_eq!(c.disks[0].pr_type, baton_scsi::PrType::WriteExclusiveAllRegistrants);
        assert!(!c.two_node_race());
        let disk = |body: &str| err(&format!("{GOOD}\n[[disk]]\nname = \"shared\"\n{body}\n"));
        // [[disk]] is line 25, `name` 26, the body from 27.
        let e = disk("");
        assert!(e.starts_with("t.toml:25: `disk[0].device`: a disk needs `device`"), "{e}");
        let e = disk("device = \"sdb\"");
        assert!(e.starts_with("t.toml:27: `disk[0].device`: \"sdb\" must be an absolute device path"), "{e}");
        let e = disk("devices = { gamma = \"/dev/sdb\" }");
        assert!(e.contains("`disk[0].devices.gamma`: \"gamma\" is not a node name of this cluster"), "{e}");
        let e = disk("devices = { beta = \"/dev/sdb\" }");
        assert!(e.contains("`disk[0].devices`: has no path for this node (\"alpha\")"), "{e}");
        let e = disk("device = \"/dev/sdb\"\ndevices = { alpha = \"/dev/sdb\" }");
        assert!(e.contains("give either `device`"), "{e}");
        let e = disk("device = \"/dev/sdb\"\ntype = \"exclusive\"");
        assert!(e.starts_with("t.toml:28: `disk[0].type`:") && e.contains("exclusive"), "{e}");
        let e = disk("device = \"/dev/sdb\"\ncheck_interval_ms = 10");
        assert!(e.contains("`disk[0].check_interval_ms`: 10 is out of range 100..=600000"), "{e}");
    }

    #[test]
    fn errors_name_line_key_and_reason() {
        let e = err(&GOOD.replace("interval_ms = 10", "interval_ms = 0"));
        assert_eq!(e, "t.toml:12: `heartbeat.interval_ms`: 0 is out of range 1..=60000");
        let e = err(&GOOD.replace("addresses = [\"10.0.0.2\"]", "addresses = [\"10.0.0.2\", \"10.0.1.2\"]"));
        assert!(e.starts_with("t.toml:23: `peer[0].addresses`: has 2 addresses but there are 1 links"), "{e}");
        let e = err(&GOOD.replace("id = 2", "id = 1"));
        assert!(e.starts_with("t.toml:21: `peer[0].id`: 1 is this node's own id"), "{e}");
        let e = err(&GOOD.replace("\"10.0.0.2\"", "\"10.0.0.300\""));
        assert!(e.contains("`peer[0].addresses[0]`: \"10.0.0.300\" is not an IPv4 or IPv6 address"), "{e}");
        let e = err(&GOOD.replace("\"10.0.0.2\"", "\"fd00::2\""));
        assert!(e.contains("is not of the same family"), "{e}");
        let e = err(&GOOD.replace("name = \"demo\"", "name = \"Demo Cluster\""));
        assert!(e.starts_with("t.toml:3: `cluster.name`"), "{e}");
    }

    #[test]
    fn unknown_keys_and_syntax_errors_have_lines() {
        let e = err(&GOOD.replace("misses = 3", "misses = 3\nmises = 4"));
        assert!(e.starts_with("t.toml:14: unknown field `mises`"), "{e}");
        let e = err(&GOOD.replace("misses = 3", "misses = = 3"));
        assert!(e.starts_with("t.toml:13:"), "{e}");
        let e = err(&GOOD.replace("misses = 3", "misses = \"three\""));
        assert!(e.starts_with("t.toml:13:"), "{e}");
    }

    #[test]
    fn rejoin_after_halt() {
        assert_eq!(parse(Path::new("t.toml"), GOOD).unwrap().rejoin_ms, 1000);
        let c = parse(Path::new("t.toml"), &format!("{GOOD}\n[membership]\nrejoin_ms = 0\n")).unwrap();
        assert_eq!(c.rejoin_ms, 0);
        let e = err(&format!("{GOOD}\n[membership]\nrejoin_ms = -5\n"));
        assert_eq!(e, "t.toml:26: `membership.rejoin_ms`: -5 is out of range 0..=600000");
    }

    #[test]
    fn missing_sections() {
        let no_link = GOOD.split("[[link]]").next().unwrap().to_string();
        assert!(err(&no_link).contains("`link`: at least one [[link]]"));
        assert!(err("").contains("`cluster`: the [cluster] table is required"));
    }

    #[test]
    fn watchdog_tick_must_fit_the_bound() {
        let e = err(&GOOD.replace("misses = 3", "misses = 3\nwatchdog_tick_us = 20000"));
        assert!(e.contains("`heartbeat.watchdog_tick_us`: 20000 µs is too coarse"), "{e}");
        let e = err(&GOOD.replace("interval_ms = 10", "interval_ms = 1").replace("misses = 3", "misses = 2"));
        assert!(e.contains("set a smaller tick"), "{e}");
    }

    #[test]
    fn confirm_ms_and_socket_group() {
        let c = parse(Path::new("t.toml"), GOOD).unwrap();
        assert_eq!((c.confirm_ms, c.socket_group), (DEFAULT_CONFIRM_MS, None));
        assert_eq!(c.socket_access().mode(), 0o600);
        let c = parse(Path::new("t.toml"), &format!("{GOOD}\n[membership]\nconfirm_ms = 0\n")).unwrap();
        assert_eq!(c.confirm_ms, 0);
        let e = err(&format!("{GOOD}\n[membership]\nconfirm_ms = 20000\n"));
        assert!(e.contains("membership.confirm_ms") && e.contains("0..=10000"), "{e}");
        let with_paths = |v: &str| format!("{GOOD}\n[paths]\nsocket_group = {v}\n");
        let c = parse(Path::new("t.toml"), &with_paths("\"0\"")).unwrap();
        assert_eq!((c.socket_group, c.socket_access().mode()), (Some(0), 0o660));
        let c = parse(Path::new("t.toml"), &with_paths("\"root\"")).unwrap();
        assert_eq!(c.socket_group, Some(0));
        let e = err(&with_paths("\"no-such-group-baton\""));
        assert!(e.contains("t.toml:") && e.contains("paths.socket_group") && e.contains("no group \"no-such-group-baton\""), "{e}");
    }

    #[test]
    fn secrets() {
        assert!(parse_secret("00112233445566778899aabbccddeeff\n").is_ok());
        assert!(parse_secret("0011").unwrap_err().to_string().contains("32 hex digits"));
        assert!(parse_secret("00000000000000000000000000000000").unwrap_err().to_string().contains("not a random key"));
        assert!(parse_secret("zz112233445566778899aabbccddeeff").is_err());
    }

    #[test]
    fn secret_file_permissions_are_enforced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("baton-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, "00112233445566778899aabbccddeeff").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&f).unwrap_err().to_string();
        assert!(e.contains("mode 0644 lets group or others access"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_secret(&f).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The configuration shown in README.md is one the agent accepts.
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let at = readme.find("A configuration (`/etc/baton/baton.toml`):").expect("README's configuration example");
        let block = readme[at..].split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("a toml block");
        let cfg = parse(Path::new("README.md"), block).unwrap_or_else(|e| panic!("README's example: {e}"));
        assert_eq!(cfg.groups.len(), 1);
        // The floating address on the client network, apart from the links.
        assert_eq!(cfg.groups[0].interface, "eth0");
        assert!(cfg.links.iter().all(|l| l.interface != "eth0"));
        assert_eq!(cfg.health.len(), 1);
        assert_eq!(cfg.metrics.map(|m| m.listen.to_string()).as_deref(), Some("127.0.0.1:9745"));
    }
}
