//! Resource groups (S4.1–S4.2), which are also the client services of
//! S1.10–S1.13: the repeated `[[group]]` table of `baton.toml`.
//!
//! A group is a set of floating addresses, an application and monitors, with
//! the placement rules the deciding node uses (allowable / disallowable nodes,
//! preference, placement policy, maturity), a parent for nesting and the
//! action functions notify / recovery. Parsing keeps the style of
//! `config.rs`: every error names the file, the line, the key and the reason.
//!
//! What depends on the machine (an OCF agent installed, its required
//! parameters, `systemctl` present) is not checked here but by
//! [`check_host`]: `baton config check` reports a missing agent as a warning
//! (the file may be checked on another machine), `baton run` refuses to start.
//! See `docs/services-config.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::common::{ConfigError, ConfigName, Ctx as Cx, Link, Named};

/// Default action timeouts (ms) and monitor settings.
pub const DEFAULT_START_TIMEOUT_MS: u32 = 20_000;
pub const DEFAULT_STOP_TIMEOUT_MS: u32 = 20_000;
pub const DEFAULT_MONITOR_TIMEOUT_MS: u32 = 10_000;
pub const DEFAULT_MONITOR_INTERVAL_MS: u32 = 1_000;
pub const DEFAULT_GARP_COUNT: u32 = 3;
pub const DEFAULT_GARP_INTERVAL_MS: u32 = 20;
/// Overlap handover: default time the old node waits for its connections.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u32 = 2000;
/// Longest accepted timeout or interval: one hour.
const MAX_MS: i64 = 3_600_000;

/// A floating (logical) address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupAddress {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for GroupAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

// The choosing parameters are the services core's own types (the model
// holds what the core is given): `nodes` is an `Allowable` (`"*"`: `Any`,
// or a sequenced list), `preference`, `placement`, `transfer_cost` and
// `maturity` as the core has them. The file names their values in lower
// case ([`ConfigName`]).
pub use baton_core::services::{Allowable, Maturity, Placement, Preference, TransferCost};

impl ConfigName for Preference {
    const TYPE: &'static str = "Preference";
    const NAMES: &'static [&'static str] = &["ordered", "unordered"];
    fn from_config_name(name: &str) -> Option<Self> {
        match name {
            "ordered" => Some(Preference::Ordered),
            "unordered" => Some(Preference::Unordered),
            _ => None,
        }
    }
}

impl ConfigName for Placement {
    const TYPE: &'static str = "Placement";
    const NAMES: &'static [&'static str] = &["one", "every"];
    fn from_config_name(name: &str) -> Option<Self> {
        match name {
            "one" => Some(Placement::One),
            "every" => Some(Placement::Every),
            _ => None,
        }
    }
}

impl ConfigName for TransferCost {
    const TYPE: &'static str = "TransferCost";
    const NAMES: &'static [&'static str] = &["free", "costly"];
    fn from_config_name(name: &str) -> Option<Self> {
        match name {
            "free" => Some(TransferCost::Free),
            "costly" => Some(TransferCost::Costly),
            _ => None,
        }
    }
}

/// How a planned move (switchover, failback, transfer) hands the group over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Handover {
    /// S4.3 as written: halt on the old node, then run on the new one. A
    /// client that connects in between may fail.
    StopStart,
    /// Zero-loss (docs/addresses.md): the new node starts the application
    /// while the old one still serves, without claiming the address; the
    /// old node's XDP program then hands it every new connection, finishes
    /// its own, and halts. Both application instances run for a moment: only
    /// for applications that allow it (stateless servers, proxies).
    Overlap,
}

/// What the other nodes of a group's list hold while it runs elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Standby {
    /// Nothing: a failover starts the application (the default).
    Cold,
    /// The application also runs, monitored, on the node a failover would
    /// choose, bound to the floating addresses before it has them
    /// (`ip_nonlocal_bind`, set by the agent): a failover only adds the
    /// addresses and announces them (docs/services-config.md).
    Hot,
}

/// Action timeouts in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub start_ms: u32,
    pub stop_ms: u32,
    pub monitor_ms: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { start_ms: DEFAULT_START_TIMEOUT_MS, stop_ms: DEFAULT_STOP_TIMEOUT_MS, monitor_ms: DEFAULT_MONITOR_TIMEOUT_MS }
    }
}

/// What runs an application or a monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    /// Shell command lines (`/bin/sh -c`), and a supervised foreground daemon.
    Command { start: Option<String>, stop: Option<String>, monitor: Option<String>, daemon: Option<String> },
    /// An OCF resource agent `<root>/resource.d/<provider>/<agent>`.
    Ocf { provider: String, agent: String, params: BTreeMap<String, String> },
    /// A systemd unit, driven with `systemctl`.
    Systemd { unit: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Application,
    Monitor,
}

/// One runnable resource: a group's application or one of its monitors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceSpec {
    /// Name used in logs and events: the group name for the application,
    /// `<group>-monitor-<i>` for the monitors.
    pub name: String,
    /// The group (also `OCF_RESOURCE_INSTANCE` for OCF agents, so a monitor
    /// of kind `ocf` sees the same instance as the application).
    pub group: String,
    pub role: Role,
    pub kind: ResourceKind,
    pub timeouts: Timeouts,
    /// Period of the monitor loop. Always set for monitors; for the
    /// application only when `interval_ms` is given (its own monitor action
    /// then runs periodically too).
    pub interval_ms: Option<u32>,
    /// Consecutive failed monitor runs before a failure is reported.
    pub failures: u32,
}

/// A validated resource group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub addresses: Vec<GroupAddress>,
    /// Interface the addresses go on.
    pub interface: String,
    pub preferred: Option<u32>,
    pub nodes: Allowable,
    pub exclude: Vec<u32>,
    pub preference: Preference,
    pub placement: Placement,
    pub auto_register: bool,
    pub maturity: Maturity,
    pub parent: Option<String>,
    pub transfer_cost: TransferCost,
    pub garp_count: u32,
    pub garp_interval_ms: u32,
    pub handover: Handover,
    /// Overlap handover: how long the old node waits for its connections
    /// to finish before it halts anyway.
    pub drain_timeout_ms: u32,
    /// Hot standby (`standby = "hot"`).
    pub standby: Standby,
    /// Action functions (S1.13), shell command lines.
    pub notify: Option<String>,
    pub recovery: Option<String>,
    pub application: Option<ResourceSpec>,
    pub monitors: Vec<ResourceSpec>,
}

impl Group {
    /// The allowable nodes in preference order, given every configured node
    /// id: the sequenced list (or every node, ascending, the preferred one
    /// first), less the excluded ones.
    pub fn allowable(&self, all_nodes: &[u32]) -> Vec<u32> {
        let mut v: Vec<u32> = match &self.nodes {
            Allowable::Nodes(l) => l.clone(),
            Allowable::Any => {
                let mut s: Vec<u32> = all_nodes.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
                if let Some(p) = self.preferred {
                    if let Some(i) = s.iter().position(|&n| n == p) {
                        let p = s.remove(i);
                        s.insert(0, p);
                    }
                }
                s
            }
        };
        v.retain(|n| !self.exclude.contains(n));
        v
    }

    /// The application first, then the monitors.
    pub fn resources(&self) -> impl Iterator<Item = &ResourceSpec> {
        self.application.iter().chain(self.monitors.iter())
    }
}

/// The monitor of a group's `gateway` probe: `ping` through the group's
/// interface every second, failed after three misses in a row.
pub fn gateway_monitor(group: &str, interface: &str, gateway: IpAddr) -> ResourceSpec {
    ResourceSpec {
        name: format!("{group}-gateway"),
        group: group.to_string(),
        role: Role::Monitor,
        kind: ResourceKind::Command {
            start: None,
            stop: None,
            monitor: Some(format!("exec ping -n -q -c 1 -W 1 -I {interface} {gateway}")),
            daemon: None,
        },
        timeouts: Timeouts { monitor_ms: 2000, ..Timeouts::default() },
        interval_ms: Some(1000),
        failures: 3,
    }
}

/// Indices of `groups` with every parent before its children (file order
/// otherwise): the start order of S1.12. Reverse it to stop.
pub fn start_order(groups: &[Group]) -> Vec<usize> {
    fn depth(groups: &[Group], i: usize) -> usize {
        let mut d = 0;
        let mut cur = &groups[i];
        while let Some(p) = &cur.parent {
            match groups.iter().find(|g| &g.name == p) {
                Some(g) if d < groups.len() => {
                    d += 1;
                    cur = g;
                }
                _ => break,
            }
        }
        d
    }
    let mut idx: Vec<usize> = (0..groups.len()).collect();
    idx.sort_by_key(|&i| depth(groups, i));
    idx
}

// ------------------------------------------------------------------ raw TOML

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    name: Spanned<String>,
    addresses: Option<Spanned<Vec<Spanned<String>>>>,
    interface: Option<Spanned<String>>,
    preferred: Option<Spanned<i64>>,
    nodes: Option<Spanned<RawNodes>>,
    exclude: Option<Spanned<Vec<Spanned<i64>>>>,
    preference: Option<Spanned<Named<Preference>>>,
    placement: Option<Spanned<Named<Placement>>>,
    auto_register: Option<Spanned<bool>>,
    maturity: Option<Spanned<RawMaturity>>,
    parent: Option<Spanned<String>>,
    transfer_cost: Option<Spanned<Named<TransferCost>>>,
    garp_count: Option<Spanned<i64>>,
    garp_interval_ms: Option<Spanned<i64>>,
    handover: Option<Spanned<Handover>>,
    drain_timeout_ms: Option<Spanned<i64>>,
    standby: Option<Spanned<Standby>>,
    notify: Option<Spanned<String>>,
    recovery: Option<Spanned<String>>,
    gateway: Option<Spanned<String>>,
    application: Option<Spanned<RawResource>>,
    #[serde(default)]
    monitor: Vec<Spanned<RawResource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaturity {
    primary_up: Option<Spanned<bool>>,
    nodes_up: Option<Spanned<i64>>,
    after_ms: Option<Spanned<i64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum KindName {
    Command,
    Ocf,
    Systemd,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    kind: Spanned<KindName>,
    start: Option<Spanned<String>>,
    stop: Option<Spanned<String>>,
    monitor: Option<Spanned<String>>,
    daemon: Option<Spanned<String>>,
    agent: Option<Spanned<String>>,
    params: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    unit: Option<Spanned<String>>,
    start_timeout_ms: Option<Spanned<i64>>,
    stop_timeout_ms: Option<Spanned<i64>>,
    monitor_timeout_ms: Option<Spanned<i64>>,
    timeout_ms: Option<Spanned<i64>>,
    interval_ms: Option<Spanned<i64>>,
    failures: Option<Spanned<i64>>,
}

/// `nodes = "*"` or `nodes = [1, 2]`, keeping the span of each id.
enum RawNodes {
    All(String),
    List(Vec<Spanned<i64>>),
}

impl<'de> Deserialize<'de> for RawNodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawNodes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"*\" or a list of node ids")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawNodes, E> {
                Ok(RawNodes::All(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNodes, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element::<Spanned<i64>>()? {
                    v.push(x);
                }
                Ok(RawNodes::List(v))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------- validation

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && !s.contains('/') && !s.contains(char::is_whitespace)
}

/// What is wrong with a group address (`group.addresses`), from [`parse_address`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{text:?} has no prefix length: write it as address/prefix, e.g. 10.0.0.100/24")]
    NoPrefix { text: String },
    #[error("{ip:?} is not an IPv4 or IPv6 address")]
    NotAnAddress { ip: String },
    #[error("{prefix:?} is not a prefix length of an IPv{family} address (0..={max})")]
    BadPrefix { prefix: String, family: u8, max: u8 },
    #[error("prefix length 0 in {text:?} would cover every address")]
    ZeroPrefix { text: String },
    #[error("{ip} is not a unicast address a service can be reached at")]
    NotUnicast { ip: IpAddr },
    #[error("{ip} is the broadcast address")]
    Broadcast { ip: IpAddr },
}

/// Parses `ip/prefix`. The prefix is required.
pub fn parse_address(s: &str) -> Result<GroupAddress, AddressError> {
    let (ip, prefix) = s.split_once('/').ok_or_else(|| AddressError::NoPrefix { text: s.to_string() })?;
    let ip: IpAddr = ip.parse().map_err(|_| AddressError::NotAnAddress { ip: ip.to_string() })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| AddressError::BadPrefix {
        prefix: prefix.to_string(),
        family: if ip.is_ipv4() { 4 } else { 6 },
        max,
    })?;
    if prefix == 0 {
        return Err(AddressError::ZeroPrefix { text: s.to_string() });
    }
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return Err(AddressError::NotUnicast { ip });
    }
    if let IpAddr::V4(v4) = ip {
        if v4.is_broadcast() {
            return Err(AddressError::Broadcast { ip });
        }
    }
    Ok(GroupAddress { ip, prefix })
}

/// Validates the `[[group]]` tables. `this_node` and `peers` are the
/// configured node ids; `links` gives the default interface (the first link's); any other is allowed.
pub(crate) fn validate(
    file: &Path,
    text: &str,
    raw: &[Spanned<RawGroup>],
    this_node: u32,
    peers: &[u32],
    links: &[Link],
) -> Result<Vec<Group>, ConfigError> {
    let cx = Cx { file, text };
    let all_nodes: BTreeSet<u32> = std::iter::once(this_node).chain(peers.iter().copied()).collect();
    let known = |id: u32| all_nodes.contains(&id);
    let node_list = || all_nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");

    let mut groups: Vec<Group> = Vec::new();
    let mut seen_addr: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (i, g) in raw.iter().enumerate() {
        let g = g.get_ref();
        let key = |k: &str| format!("group[{i}].{k}");
        let name = g.name.get_ref().clone();
        if !valid_name(&name) {
            return Err(cx.invalid(&g.name, &key("name"), format!("{name:?} must be 1-32 characters of a-z, 0-9, '-' or '_'")));
        }
        if groups.iter().any(|x| x.name == name) {
            return Err(cx.invalid(&g.name, &key("name"), format!("duplicate group name {name:?}")));
        }

        let mut addresses = Vec::new();
        if let Some(a) = &g.addresses {
            for (j, s) in a.get_ref().iter().enumerate() {
                let k = format!("group[{i}].addresses[{j}]");
                let addr = parse_address(s.get_ref()).map_err(|r| cx.invalid(s, &k, r.to_string()))?;
                if let Some(other) = seen_addr.get(&addr.ip) {
                    let r = if other == &name { "is listed twice".to_string() } else { format!("is already an address of group {other:?}") };
                    return Err(cx.invalid(s, &k, format!("{} {r}", addr.ip)));
                }
                seen_addr.insert(addr.ip, name.clone());
                addresses.push(addr);
            }
        }

        let interface = match &g.interface {
            Some(v) => {
                let s = v.get_ref();
                if !valid_ifname(s) {
                    return Err(cx.invalid(v, &key("interface"), format!("{s:?} is not a valid interface name")));
                }
                // Any interface: a client network apart from the
                // heartbeat links is watched for carrier (carrier.rs).
                s.clone()
            }
            None => links.first().map(|l| l.interface.clone()).unwrap_or_default(),
        };

        let nodes = match &g.nodes {
            None => Allowable::Any,
            Some(v) => match v.get_ref() {
                RawNodes::All(s) if s == "*" => Allowable::Any,
                RawNodes::All(s) => {
                    return Err(cx.invalid(v, &key("nodes"), format!("{s:?}: give \"*\" (every node) or a list of node ids")));
                }
                RawNodes::List(l) => {
                    if l.is_empty() {
                        return Err(cx.invalid(v, &key("nodes"), "is empty: give at least one node id, or \"*\""));
                    }
                    let mut ids = Vec::new();
                    for (j, n) in l.iter().enumerate() {
                        let k = format!("group[{i}].nodes[{j}]");
                        let id: u32 = cx.int(n, &k, 1, u32::MAX as i64 - 1)?;
                        if !known(id) {
                            return Err(cx.invalid(n, &k, format!("node {id} is not configured (nodes: {})", node_list())));
                        }
                        if ids.contains(&id) {
                            return Err(cx.invalid(n, &k, format!("node {id} is listed twice")));
                        }
                        ids.push(id);
                    }
                    Allowable::Nodes(ids)
                }
            },
        };

        let mut exclude = Vec::new();
        if let Some(v) = &g.exclude {
            for (j, n) in v.get_ref().iter().enumerate() {
                let k = format!("group[{i}].exclude[{j}]");
                let id: u32 = cx.int(n, &k, 1, u32::MAX as i64 - 1)?;
                if !known(id) {
                    return Err(cx.invalid(n, &k, format!("node {id} is not configured (nodes: {})", node_list())));
                }
                if let Allowable::Nodes(l) = &nodes {
                    if l.contains(&id) {
                        return Err(cx.invalid(n, &k, format!("node {id} is both in `nodes` and excluded")));
                    }
                }
                if !exclude.contains(&id) {
                    exclude.push(id);
                }
            }
        }

        let preferred = match &g.preferred {
            None => None,
            Some(v) => {
                let id: u32 = cx.int(v, &key("preferred"), 1, u32::MAX as i64 - 1)?;
                if !known(id) {
                    return Err(cx.invalid(v, &key("preferred"), format!("node {id} is not configured (nodes: {})", node_list())));
                }
                if exclude.contains(&id) {
                    return Err(cx.invalid(v, &key("preferred"), format!("node {id} is in `exclude`")));
                }
                if let Allowable::Nodes(l) = &nodes {
                    if !l.contains(&id) {
                        return Err(cx.invalid(v, &key("preferred"), format!("node {id} is not in `nodes`")));
                    }
                }
                Some(id)
            }
        };

        let mut maturity = Maturity::default();
        if let Some(m) = &g.maturity {
            let m = m.get_ref();
            if let Some(v) = &m.primary_up {
                maturity.primary_up = *v.get_ref();
                if maturity.primary_up && preferred.is_none() && !matches!(nodes, Allowable::Nodes(_)) {
                    return Err(cx.invalid(v, &key("maturity.primary_up"), "the group has no primary: set `preferred` or a `nodes` list"));
                }
            }
            if let Some(v) = &m.nodes_up {
                maturity.nodes_up = Some(cx.int(v, &key("maturity.nodes_up"), 1, all_nodes.len() as i64)?);
            }
            if let Some(v) = &m.after_ms {
                maturity.after_ms = Some(cx.int(v, &key("maturity.after_ms"), 0, MAX_MS)?);
            }
        }

        let parent = match &g.parent {
            None => None,
            Some(v) => {
                let p = v.get_ref();
                if p == &name {
                    return Err(cx.invalid(v, &key("parent"), format!("group {name:?} cannot be its own parent")));
                }
                if !raw.iter().any(|r| r.get_ref().name.get_ref() == p) {
                    return Err(cx.invalid(v, &key("parent"), format!("no group is named {p:?}")));
                }
                Some(p.clone())
            }
        };

        let garp_count = match &g.garp_count {
            Some(v) => cx.int(v, &key("garp_count"), 0, 100)?,
            None => DEFAULT_GARP_COUNT,
        };
        let garp_interval_ms = match &g.garp_interval_ms {
            Some(v) => cx.int(v, &key("garp_interval_ms"), 1, 10_000)?,
            None => DEFAULT_GARP_INTERVAL_MS,
        };
        let handover = g.handover.as_ref().map(|v| *v.get_ref()).unwrap_or(Handover::StopStart);
        if let (Some(v), Handover::Overlap) = (&g.handover, handover) {
            if let Some(a) = addresses.iter().find(|a| !a.ip.is_ipv4()) {
                return Err(cx.invalid(v, &key("handover"), format!("\"overlap\" hands over IPv4 addresses only, and {} is IPv6: use \"stop-start\" for this group", a.ip)));
            }
            let has_children = raw.iter().any(|r| r.get_ref().parent.as_ref().is_some_and(|p| p.get_ref() == &name));
            if g.parent.is_some() || has_children {
                return Err(cx.invalid(v, &key("handover"), "\"overlap\" is for a group without parent or children: a group moves with its parent, and children stop first"));
            }
            if g.placement.as_ref().is_some_and(|p| p.get_ref().0 == Placement::Every) {
                return Err(cx.invalid(v, &key("handover"), "\"overlap\" is for placement = \"one\": an every-node group does not move"));
            }
        }
        let drain_timeout_ms = match &g.drain_timeout_ms {
            Some(v) => cx.int(v, &key("drain_timeout_ms"), 0, 600_000)?,
            None => DEFAULT_DRAIN_TIMEOUT_MS,
        };
        let standby = g.standby.as_ref().map(|v| *v.get_ref()).unwrap_or(Standby::Cold);
        if let (Some(v), Standby::Hot) = (&g.standby, standby) {
            let has_children = raw.iter().any(|r| r.get_ref().parent.as_ref().is_some_and(|p| p.get_ref() == &name));
            if g.parent.is_some() || has_children {
                return Err(cx.invalid(v, &key("standby"), "\"hot\" is for a group without parent or children: its one application runs on the standby node"));
            }
            if g.placement.as_ref().is_some_and(|p| p.get_ref().0 == Placement::Every) {
                return Err(cx.invalid(v, &key("standby"), "\"hot\" is for placement = \"one\": an every-node group runs everywhere already"));
            }
            if handover == Handover::Overlap {
                return Err(cx.invalid(v, &key("standby"), "\"hot\" and handover = \"overlap\" both start a second instance: choose one"));
            }
            if g.application.is_none() {
                return Err(cx.invalid(v, &key("standby"), "\"hot\" needs a [group.application] to run on the standby node"));
            }
        }
        let notify = g.notify.as_ref().map(|v| cx.command(v, &key("notify"))).transpose()?;
        let recovery = g.recovery.as_ref().map(|v| cx.command(v, &key("recovery"))).transpose()?;

        let application = g
            .application
            .as_ref()
            .map(|a| resource(&cx, a, &format!("group[{i}].application"), &name, name.clone(), Role::Application))
            .transpose()?;
        let mut monitors = Vec::new();
        for (j, m) in g.monitor.iter().enumerate() {
            monitors.push(resource(&cx, m, &format!("group[{i}].monitor[{j}]"), &name, format!("{name}-monitor-{j}"), Role::Monitor)?);
        }
        // Client networks: a gateway probe is a monitor of its own (three
        // failed pings in a row, one a second, fail the group).
        if let Some(gw) = &g.gateway {
            let ip: IpAddr = gw.get_ref().parse().map_err(|_| cx.invalid(gw, &key("gateway"), format!("{:?} is not an IPv4 or IPv6 address", gw.get_ref())))?;
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err(cx.invalid(gw, &key("gateway"), format!("{ip} is not a unicast address to probe")));
            }
            if addresses.is_empty() {
                return Err(cx.invalid(gw, &key("gateway"), "a gateway probe needs the group's addresses (it checks their network)"));
            }
            monitors.push(gateway_monitor(&name, &interface, ip));
        }

        groups.push(Group {
            name,
            addresses,
            interface,
            preferred,
            nodes,
            exclude,
            preference: g.preference.as_ref().map(|v| v.get_ref().0).unwrap_or(Preference::Ordered),
            placement: g.placement.as_ref().map(|v| v.get_ref().0).unwrap_or(Placement::One),
            auto_register: g.auto_register.as_ref().map(|v| *v.get_ref()).unwrap_or(true),
            maturity,
            parent,
            transfer_cost: g.transfer_cost.as_ref().map(|v| v.get_ref().0).unwrap_or(TransferCost::Free),
            garp_count,
            garp_interval_ms,
            handover,
            drain_timeout_ms,
            standby,
            notify,
            recovery,
            application,
            monitors,
        });
    }

    // Parent cycles: follow each chain; report the first group (in file
    // order) on a cycle, naming the whole cycle.
    for (i, g) in groups.iter().enumerate() {
        let mut chain = vec![g.name.as_str()];
        let mut cur = g;
        while let Some(p) = &cur.parent {
            if let Some(pos) = chain.iter().position(|n| n == p) {
                if pos == 0 {
                    let mut names: Vec<&str> = chain.clone();
                    names.push(p);
                    let at = raw[i].get_ref().parent.as_ref().expect("has a parent");
                    return Err(cx.invalid(at, &format!("group[{i}].parent"), format!("parent cycle: {}", names.join(" → "))));
                }
                break; // a cycle further up, reported for its own first member
            }
            chain.push(p);
            cur = groups.iter().find(|x| &x.name == p).expect("parent checked");
        }
    }
    Ok(groups)
}

fn resource(cx: &Cx, r: &Spanned<RawResource>, base: &str, group: &str, name: String, role: Role) -> Result<ResourceSpec, ConfigError> {
    let rr = r.get_ref();
    let key = |k: &str| format!("{base}.{k}");
    let kind = *rr.kind.get_ref();
    let kind_s = match kind {
        KindName::Command => "command",
        KindName::Ocf => "ocf",
        KindName::Systemd => "systemd",
    };
    // Keys that do not belong to this kind or role.
    let present: [(&str, Option<usize>); 13] = [
        ("start", rr.start.as_ref().map(|v| v.span().start)),
        ("stop", rr.stop.as_ref().map(|v| v.span().start)),
        ("monitor", rr.monitor.as_ref().map(|v| v.span().start)),
        ("daemon", rr.daemon.as_ref().map(|v| v.span().start)),
        ("agent", rr.agent.as_ref().map(|v| v.span().start)),
        ("params", rr.params.as_ref().map(|v| v.span().start)),
        ("unit", rr.unit.as_ref().map(|v| v.span().start)),
        ("start_timeout_ms", rr.start_timeout_ms.as_ref().map(|v| v.span().start)),
        ("stop_timeout_ms", rr.stop_timeout_ms.as_ref().map(|v| v.span().start)),
        ("monitor_timeout_ms", rr.monitor_timeout_ms.as_ref().map(|v| v.span().start)),
        ("timeout_ms", rr.timeout_ms.as_ref().map(|v| v.span().start)),
        ("interval_ms", rr.interval_ms.as_ref().map(|v| v.span().start)),
        ("failures", rr.failures.as_ref().map(|v| v.span().start)),
    ];
    let allowed: &[&str] = match (kind, role) {
        (KindName::Command, Role::Application) => &["start", "stop", "monitor", "daemon"],
        (KindName::Command, Role::Monitor) => &["monitor"],
        (KindName::Ocf, _) => &["agent", "params"],
        (KindName::Systemd, _) => &["unit"],
    };
    let timing: &[&str] = match role {
        Role::Application => &["start_timeout_ms", "stop_timeout_ms", "monitor_timeout_ms", "interval_ms", "failures"],
        Role::Monitor => &["timeout_ms", "interval_ms", "failures"],
    };
    for (k, at) in present {
        if let Some(at) = at {
            if !allowed.contains(&k) && !timing.contains(&k) {
                let why = if ["start_timeout_ms", "stop_timeout_ms", "monitor_timeout_ms", "timeout_ms"].contains(&k) {
                    match role {
                        Role::Application => "an application has start_timeout_ms, stop_timeout_ms and monitor_timeout_ms".to_string(),
                        Role::Monitor => "a monitor only runs its monitor action: use timeout_ms".to_string(),
                    }
                } else if role == Role::Monitor && kind == KindName::Command {
                    "a monitor of kind \"command\" has only `monitor` (its check command line)".to_string()
                } else {
                    format!("not a key of kind \"{kind_s}\" (it has {})", allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", "))
                };
                return Err(ConfigError::Invalid { file: cx.file.to_path_buf(), line: cx.line(at), key: key(k), reason: why });
            }
        }
    }

    let cmd = |v: &Option<Spanned<String>>, k: &str| v.as_ref().map(|v| cx.command(v, &key(k))).transpose();
    let kind = match kind {
        KindName::Command => {
            let (start, stop, monitor, daemon) = (cmd(&rr.start, "start")?, cmd(&rr.stop, "stop")?, cmd(&rr.monitor, "monitor")?, cmd(&rr.daemon, "daemon")?);
            match role {
                Role::Application if start.is_none() && daemon.is_none() => {
                    return Err(cx.invalid(&rr.kind, &key("kind"), "a command application needs `start` or `daemon` (or both)"));
                }
                Role::Monitor if monitor.is_none() => {
                    return Err(cx.invalid(&rr.kind, &key("kind"), "a command monitor needs `monitor` (the check command line)"));
                }
                _ => {}
            }
            ResourceKind::Command { start, stop, monitor, daemon }
        }
        KindName::Ocf => {
            let a = rr.agent.as_ref().ok_or_else(|| cx.invalid(&rr.kind, &key("kind"), "kind \"ocf\" needs `agent = \"provider:type\"`, e.g. \"heartbeat:Dummy\""))?;
            let s = a.get_ref();
            let parts: Vec<&str> = s.split(':').collect();
            let (provider, agent) = match parts.as_slice() {
                [p, t] => (*p, *t),
                ["ocf", p, t] => (*p, *t),
                _ => return Err(cx.invalid(a, &key("agent"), format!("{s:?} must be \"provider:type\" (or \"ocf:provider:type\"), e.g. \"heartbeat:Dummy\""))),
            };
            let ok = |x: &str| !x.is_empty() && x != "." && x != ".." && x.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok(provider) || !ok(agent) {
                return Err(cx.invalid(a, &key("agent"), format!("{s:?}: provider and type must be plain names (letters, digits, '-', '_', '.')")));
            }
            let mut params = BTreeMap::new();
            if let Some(p) = &rr.params {
                for (k, v) in p.get_ref() {
                    let pk = format!("{base}.params.{k}");
                    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(cx.invalid(v, &pk, format!("{k:?} is not a parameter name (letters, digits and '_': it becomes OCF_RESKEY_{k})")));
                    }
                    let s = match v.get_ref() {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(n) => n.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        toml::Value::Float(f) => f.to_string(),
                        _ => return Err(cx.invalid(v, &pk, "must be a string, number or boolean")),
                    };
                    if s.contains('\0') {
                        return Err(cx.invalid(v, &pk, "must not contain a NUL character"));
                    }
                    params.insert(k.clone(), s);
                }
            }
            ResourceKind::Ocf { provider: provider.into(), agent: agent.into(), params }
        }
        KindName::Systemd => {
            let u = rr.unit.as_ref().ok_or_else(|| cx.invalid(&rr.kind, &key("kind"), "kind \"systemd\" needs `unit`, e.g. \"nginx.service\""))?;
            let s = u.get_ref();
            if s.is_empty() || s.starts_with('-') || s.contains('/') || s.contains(char::is_whitespace) {
                return Err(cx.invalid(u, &key("unit"), format!("{s:?} is not a unit name")));
            }
            ResourceKind::Systemd { unit: s.clone() }
        }
    };

    let ms = |v: &Option<Spanned<i64>>, k: &str, default: u32| -> Result<u32, ConfigError> {
        match v {
            Some(v) => cx.int(v, &key(k), 1, MAX_MS),
            None => Ok(default),
        }
    };
    let mut timeouts = Timeouts {
        start_ms: ms(&rr.start_timeout_ms, "start_timeout_ms", DEFAULT_START_TIMEOUT_MS)?,
        stop_ms: ms(&rr.stop_timeout_ms, "stop_timeout_ms", DEFAULT_STOP_TIMEOUT_MS)?,
        monitor_ms: ms(&rr.monitor_timeout_ms, "monitor_timeout_ms", DEFAULT_MONITOR_TIMEOUT_MS)?,
    };
    if role == Role::Monitor {
        timeouts.monitor_ms = ms(&rr.timeout_ms, "timeout_ms", DEFAULT_MONITOR_TIMEOUT_MS)?;
    }
    let interval_ms = match (&rr.interval_ms, role) {
        (Some(v), _) => Some(cx.int(v, &key("interval_ms"), 10, MAX_MS)?),
        (None, Role::Monitor) => Some(DEFAULT_MONITOR_INTERVAL_MS),
        (None, Role::Application) => None,
    };
    let failures = match &rr.failures {
        Some(v) => cx.int(v, &key("failures"), 1, 1000)?,
        None => 1,
    };
    if let (Role::Application, None, Some(v)) = (role, interval_ms, &rr.failures) {
        return Err(cx.invalid(v, &key("failures"), "has no effect without `interval_ms` (the application is not monitored periodically)"));
    }
    Ok(ResourceSpec { name, group: group.to_string(), role, kind, timeouts, interval_ms, failures })
}

// ------------------------------------------------------------ host checks

/// A problem found by [`check_host`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostProblem {
    pub group: String,
    pub resource: String,
    pub kind: HostProblemKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostProblemKind {
    /// The OCF agent, or `systemctl`, is not on this machine. A warning for
    /// `baton config check` (the file may be checked elsewhere), an error for
    /// `baton run`.
    NotInstalled,
    /// The agent is installed and its meta-data names a required parameter
    /// that is not given, or the meta-data cannot be read: always an error.
    Invalid,
}

impl HostProblem {
    /// Whether `baton config check` treats this as an error (not a warning).
    pub fn is_error_for_check(&self) -> bool {
        self.kind != HostProblemKind::NotInstalled
    }
}

impl fmt::Display for HostProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {:?}: {}", self.group, self.message)
    }
}

/// One line per group for `baton config check`.
pub fn describe(g: &Group) -> String {
    let mut s = format!("group {:?}", g.name);
    if !g.addresses.is_empty() {
        let a: Vec<String> = g.addresses.iter().map(|a| a.to_string()).collect();
        s += &format!(" addresses {} on {}", a.join(", "), g.interface);
    }
    match &g.nodes {
        Allowable::Any => s += " nodes *",
        Allowable::Nodes(l) => s += &format!(" nodes {l:?}"),
    }
    if !g.exclude.is_empty() {
        s += &format!(" exclude {:?}", g.exclude);
    }
    if let Some(p) = g.preferred {
        s += &format!(" preferred {p}");
    }
    if let Some(p) = &g.parent {
        s += &format!(" parent {p:?}");
    }
    if let Some(a) = &g.application {
        s += &format!(", application {}", describe_kind(&a.kind));
    }
    if !g.monitors.is_empty() {
        s += &format!(", {} monitor(s)", g.monitors.len());
    }
    s
}

fn describe_kind(k: &ResourceKind) -> String {
    match k {
        ResourceKind::Command { daemon: Some(_), .. } => "command (daemon)".into(),
        ResourceKind::Command { .. } => "command".into(),
        ResourceKind::Ocf { provider, agent, .. } => format!("ocf:{provider}:{agent}"),
        ResourceKind::Systemd { unit } => format!("systemd {unit}"),
    }
}

/// The OCF agent path of a resource spec, if it is one.
pub fn ocf_agent_path(root: &Path, provider: &str, agent: &str) -> PathBuf {
    root.join("resource.d").join(provider).join(agent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BASE: &str = r#"[cluster]
name = "demo"
id = 42
secret_file = "/etc/baton/secret"

[node]
id = 1
name = "alpha"

[[link]]
name = "ring0"
interface = "eth1"
address = "10.0.0.1"

[[peer]]
id = 2
name = "beta"
addresses = ["10.0.0.2"]

[[peer]]
id = 3
name = "gamma"
addresses = ["10.0.0.3"]
"#;
    // BASE has 23 lines; `[[group]]` is line 25 (after a blank line).

    const WEB: &str = r#"
[[group]]
name = "web"
addresses = ["10.0.0.100/24", "fd00::100/64"]
preferred = 1
nodes = [1, 2, 3]
preference = "ordered"
placement = "one"
auto_register = true
maturity = { primary_up = true, nodes_up = 2, after_ms = 5000 }
parent = "db"
transfer_cost = "free"
garp_count = 5
garp_interval_ms = 10
notify = "/usr/local/bin/notify-web"
recovery = "/usr/local/bin/recover-web"
[group.application]
kind = "command"
daemon = "busybox httpd -f -p 10.0.0.100:80 -h /srv/www"
start_timeout_ms = 3000
[[group.monitor]]
kind = "command"
monitor = "curl -fsS http://10.0.0.100/"
interval_ms = 500
timeout_ms = 2000
failures = 2

[[group]]
name = "db"
nodes = "*"
exclude = [3]
preference = "unordered"
transfer_cost = "costly"
[group.application]
kind = "ocf"
agent = "heartbeat:Dummy"
params = { state = "/run/dummy.state", fake = 3 }
interval_ms = 2000

[[group]]
name = "unit"
placement = "every"
[group.application]
kind = "systemd"
unit = "nginx.service"
"#;

    fn cfg(groups: &str) -> String {
        format!("{BASE}{groups}")
    }

    fn err(groups: &str) -> String {
        parse(Path::new("t.toml"), &cfg(groups)).unwrap_err().to_string()
    }

    #[test]
    fn happy_path() {
        let c = parse(Path::new("t.toml"), &cfg(WEB)).unwrap();
        assert_eq!(c.groups.len(), 3);
        let web = &c.groups[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.addresses[0].to_string(), "10.0.0.100/24");
        assert_eq!(web.addresses[1].to_string(), "fd00::100/64");
        assert_eq!(web.interface, "eth1");
        assert_eq!(web.preferred, Some(1));
        assert_eq!(web.nodes, Allowable::Nodes(vec![1, 2, 3]));
        assert_eq!(web.maturity, Maturity { primary_up: true, nodes_up: Some(2), after_ms: Some(5000) });
        assert_eq!(web.parent.as_deref(), Some("db"));
        assert_eq!((web.garp_count, web.garp_interval_ms), (5, 10));
        assert_eq!(web.notify.as_deref(), Some("/usr/local/bin/notify-web"));
        let app = web.application.as_ref().unwrap();
        assert_eq!(app.name, "web");
        assert_eq!(app.timeouts, Timeouts { start_ms: 3000, stop_ms: 20_000, monitor_ms: 10_000 });
        assert_eq!(app.interval_ms, None);
        assert!(matches!(&app.kind, ResourceKind::Command { daemon: Some(d), start: None, .. } if d.starts_with("busybox httpd")));
        let m = &web.monitors[0];
        assert_eq!((m.name.as_str(), m.group.as_str(), m.role), ("web-monitor-0", "web", Role::Monitor));
        assert_eq!((m.interval_ms, m.timeouts.monitor_ms, m.failures), (Some(500), 2000, 2));

        let db = &c.groups[1];
        assert_eq!(db.nodes, Allowable::Any);
        assert_eq!(db.allowable(&[3, 1, 2]), vec![1, 2]);
        assert_eq!((db.preference, db.transfer_cost, db.garp_count), (Preference::Unordered, TransferCost::Costly, 3));
        let ResourceKind::Ocf { provider, agent, params } = &db.application.as_ref().unwrap().kind else { panic!() };
        assert_eq!((provider.as_str(), agent.as_str()), ("heartbeat", "Dummy"));
        assert_eq!(params.get("fake").map(String::as_str), Some("3"));
        assert_eq!(db.application.as_ref().unwrap().interval_ms, Some(2000));

        let unit = &c.groups[2];
        assert_eq!(unit.placement, Placement::Every);
        assert!(unit.auto_register);
        assert!(!unit.maturity.applies());
        assert_eq!(unit.application.as_ref().unwrap().kind, ResourceKind::Systemd { unit: "nginx.service".into() });

        // Parents start first.
        let order: Vec<&str> = start_order(&c.groups).into_iter().map(|i| c.groups[i].name.as_str()).collect();
        assert_eq!(order, vec!["db", "unit", "web"]);
        assert!(describe(web).contains("addresses 10.0.0.100/24, fd00::100/64 on eth1"));
    }

    #[test]
    fn no_groups_is_fine() {
        assert!(parse(Path::new("t.toml"), BASE).unwrap().groups.is_empty());
    }

    #[test]
    fn allowable_with_wildcard_puts_preferred_first() {
        let c = parse(Path::new("t.toml"), &cfg("\n[[group]]\nname = \"a\"\npreferred = 3\nexclude = [2]\n")).unwrap();
        assert_eq!(c.groups[0].allowable(&[1, 2, 3]), vec![3, 1]);
    }

    fn one(extra: &str) -> String {
        // line 25: [[group]], 26: name, 27..: extra
        err(&format!("\n[[group]]\nname = \"g\"\n{extra}\n"))
    }

    /// The model holds the core's types; the file names their values in
    /// lower case, and a bad value gets the error a derived enum gave
    /// (these texts were printed by the parser before the change).
    #[test]
    fn the_choosing_parameters_are_the_cores_types_read_by_their_names() {
        let c = parse(Path::new("t.toml"), &cfg("\n[[group]]\nname = \"g\"\nnodes = [2, 1]\npreference = \"unordered\"\nplacement = \"every\"\ntransfer_cost = \"costly\"\nmaturity = { nodes_up = 2 }\n")).unwrap();
        let g = &c.groups[0];
        assert_eq!((g.preference, g.placement, g.transfer_cost), (Preference::Unordered, Placement::Every, TransferCost::Costly));
        assert_eq!((g.nodes.clone(), g.maturity), (Allowable::Nodes(vec![2, 1]), Maturity { primary_up: false, nodes_up: Some(2), after_ms: None }));
        assert_eq!(one("preference = \"x\""), "t.toml:27: unknown variant `x`, expected `ordered` or `unordered`");
        assert_eq!(one("preference = \"Ordered\""), "t.toml:27: unknown variant `Ordered`, expected `ordered` or `unordered`");
        assert_eq!(one("placement = \"One\""), "t.toml:27: unknown variant `One`, expected `one` or `every`");
        assert_eq!(one("placement = true"), "t.toml:27: wanted string or table");
        assert_eq!(one("transfer_cost = \"cheap\""), "t.toml:27: unknown variant `cheap`, expected `free` or `costly`");
        assert_eq!(one("transfer_cost = [1]"), "t.toml:27: wanted string or table");
        assert_eq!(one("preference = { ordered = 1 }"), "t.toml:27: expected table, found integer");
        assert_eq!(one("maturity = { after_ms = 4000000 }"), "t.toml:27: `group[0].maturity.after_ms`: 4000000 is out of range 0..=3600000");
    }

    #[test]
    fn unknown_keys() {
        assert!(one("colour = 1").starts_with("t.toml:27: unknown field `colour`"), "{}", one("colour = 1"));
        let e = one("[group.application]\nkind = \"command\"\nstart = \"true\"\nrestart = \"x\"");
        assert!(e.starts_with("t.toml:30: unknown field `restart`"), "{e}");
        let e = one("maturity = { primary = true }");
        assert!(e.starts_with("t.toml:27:") && e.contains("unknown field `primary`"), "{e}");
        let e = one("placement = \"some\"");
        assert!(e.starts_with("t.toml:27:") && e.contains("unknown variant `some`"), "{e}");
        let e = one("[group.application]\nkind = \"docker\"");
        assert!(e.starts_with("t.toml:28:") && e.contains("unknown variant `docker`"), "{e}");
    }

    #[test]
    fn duplicate_names() {
        let e = err("\n[[group]]\nname = \"a\"\n\n[[group]]\nname = \"a\"\n");
        assert_eq!(e, "t.toml:29: `group[1].name`: duplicate group name \"a\"");
        let e = err("\n[[group]]\nname = \"Web Site\"\n");
        assert!(e.starts_with("t.toml:26: `group[0].name`: \"Web Site\" must be"), "{e}");
    }

    #[test]
    fn node_ids() {
        assert_eq!(one("nodes = [1, 9]"), "t.toml:27: `group[0].nodes[1]`: node 9 is not configured (nodes: 1, 2, 3)");
        assert_eq!(one("nodes = [1, 1]"), "t.toml:27: `group[0].nodes[1]`: node 1 is listed twice");
        assert_eq!(one("nodes = []"), "t.toml:27: `group[0].nodes`: is empty: give at least one node id, or \"*\"");
        assert!(one("nodes = \"all\"").starts_with("t.toml:27: `group[0].nodes`: \"all\": give \"*\""));
        assert_eq!(one("exclude = [7]"), "t.toml:27: `group[0].exclude[0]`: node 7 is not configured (nodes: 1, 2, 3)");
        assert_eq!(one("nodes = [1, 2]\nexclude = [2]"), "t.toml:28: `group[0].exclude[0]`: node 2 is both in `nodes` and excluded");
        assert!(one("nodes = [0]").starts_with("t.toml:27: `group[0].nodes[0]`: 0 is out of range"));
    }

    #[test]
    fn preferred() {
        assert_eq!(one("nodes = [2, 3]\npreferred = 1"), "t.toml:28: `group[0].preferred`: node 1 is not in `nodes`");
        assert_eq!(one("exclude = [1]\npreferred = 1"), "t.toml:28: `group[0].preferred`: node 1 is in `exclude`");
        assert_eq!(one("preferred = 4"), "t.toml:27: `group[0].preferred`: node 4 is not configured (nodes: 1, 2, 3)");
        assert!(one("maturity = { primary_up = true }").starts_with("t.toml:27: `group[0].maturity.primary_up`: the group has no primary"));
        assert!(one("maturity = { nodes_up = 4 }").starts_with("t.toml:27: `group[0].maturity.nodes_up`: 4 is out of range 1..=3"));
    }

    #[test]
    fn hot_standby() {
        let app = "\n[group.application]\nkind = \"command\"\ndaemon = \"sleep 1000\"\n";
        let c = parse(Path::new("t.toml"), &cfg(&format!("\n[[group]]\nname = \"g\"\nstandby = \"hot\"\n{app}"))).unwrap();
        assert_eq!(c.groups[0].standby, Standby::Hot);
        let c = parse(Path::new("t.toml"), &cfg("\n[[group]]\nname = \"g\"\n")).unwrap();
        assert_eq!(c.groups[0].standby, Standby::Cold);
        let e = err("\n[[group]]\nname = \"g\"\nstandby = \"hot\"\n");
        assert!(e.starts_with("t.toml:27: `group[0].standby`: \"hot\" needs a [group.application]"), "{e}");
        let e = err(&format!("\n[[group]]\nname = \"g\"\nplacement = \"every\"\nstandby = \"hot\"\n{app}"));
        assert!(e.starts_with("t.toml:28: `group[0].standby`: \"hot\" is for placement = \"one\""), "{e}");
        let e = err(&format!("\n[[group]]\nname = \"g\"\nhandover = \"overlap\"\nstandby = \"hot\"\n{app}"));
        assert!(e.starts_with("t.toml:28: `group[0].standby`: \"hot\" and handover = \"overlap\""), "{e}");
        let e = err(&format!("\n[[group]]\nname = \"a\"\nstandby = \"hot\"\n{app}\n[[group]]\nname = \"b\"\nparent = \"a\"\n"));
        assert!(e.starts_with("t.toml:27: `group[0].standby`: \"hot\" is for a group without parent or children"), "{e}");
        assert_eq!(one("standby = \"warm\""), "t.toml:27: unknown variant `warm`, expected `cold` or `hot`");
    }

    #[test]
    fn parents() {
        assert_eq!(one("parent = \"nope\""), "t.toml:27: `group[0].parent`: no group is named \"nope\"");
        assert_eq!(one("parent = \"g\""), "t.toml:27: `group[0].parent`: group \"g\" cannot be its own parent");
        let e = err("\n[[group]]\nname = \"a\"\nparent = \"c\"\n\n[[group]]\nname = \"b\"\nparent = \"a\"\n\n[[group]]\nname = \"c\"\nparent = \"b\"\n\n[[group]]\nname = \"d\"\nparent = \"a\"\n");
        assert_eq!(e, "t.toml:27: `group[0].parent`: parent cycle: a → c → b → a");
        // A group hanging off a cycle is not itself reported; the cycle is.
        let e = err("\n[[group]]\nname = \"d\"\nparent = \"a\"\n\n[[group]]\nname = \"a\"\nparent = \"b\"\n\n[[group]]\nname = \"b\"\nparent = \"a\"\n");
        assert_eq!(e, "t.toml:31: `group[1].parent`: parent cycle: a → b → a");
    }

    #[test]
    fn addresses() {
        assert!(one("addresses = [\"10.0.0.100\"]").starts_with("t.toml:27: `group[0].addresses[0]`: \"10.0.0.100\" has no prefix length"));
        assert!(one("addresses = [\"10.0.0.300/24\"]").contains("`group[0].addresses[0]`: \"10.0.0.300\" is not an IPv4 or IPv6 address"));
        assert!(one("addresses = [\"10.0.0.1/33\"]").contains("\"33\" is not a prefix length of an IPv4 address (0..=32)"));
        assert!(one("addresses = [\"fd00::1/129\"]").contains("not a prefix length of an IPv6 address"));
        assert!(one("addresses = [\"224.0.0.1/24\"]").contains("is not a unicast address"));
        assert!(one("addresses = [\"10.0.0.5/24\", \"10.0.0.5/24\"]").starts_with("t.toml:27: `group[0].addresses[1]`: 10.0.0.5 is listed twice"));
        let e = err("\n[[group]]\nname = \"a\"\naddresses = [\"10.0.0.5/24\"]\n\n[[group]]\nname = \"b\"\naddresses = [\"10.0.0.5/24\"]\n");
        assert_eq!(e, "t.toml:31: `group[1].addresses[0]`: 10.0.0.5 is already an address of group \"a\"");
    }

    #[test]
    fn handover() {
        let c = parse(Path::new("t.toml"), &cfg("\n[[group]]\nname = \"g\"\naddresses = [\"10.0.0.5/24\"]\nhandover = \"overlap\"\ndrain_timeout_ms = 500\n")).unwrap();
        assert_eq!((c.groups[0].handover, c.groups[0].drain_timeout_ms), (Handover::Overlap, 500));
        let c = parse(Path::new("t.toml"), &cfg("\n[[group]]\nname = \"g\"\n")).unwrap();
        assert_eq!((c.groups[0].handover, c.groups[0].drain_timeout_ms), (Handover::StopStart, DEFAULT_DRAIN_TIMEOUT_MS));
        let e = err("\n[[group]]\nname = \"g\"\naddresses = [\"10.0.0.5/24\", \"fd00::5/64\"]\nhandover = \"overlap\"\n");
        assert!(e.starts_with("t.toml:28: `group[0].handover`: \"overlap\" hands over IPv4 addresses only, and fd00::5 is IPv6"), "{e}");
        let e = err("\n[[group]]\nname = \"a\"\nhandover = \"overlap\"\n\n[[group]]\nname = \"b\"\nparent = \"a\"\n");
        assert!(e.starts_with("t.toml:27: `group[0].handover`: \"overlap\" is for a group without parent or children"), "{e}");
        let e = err("\n[[group]]\nname = \"g\"\nplacement = \"every\"\nhandover = \"overlap\"\n");
        assert!(e.starts_with("t.toml:28: `group[0].handover`: \"overlap\" is for placement = \"one\""), "{e}");
        assert_eq!(one("handover = \"swap\""), "t.toml:27: unknown variant `swap`, expected `stop-start` or `overlap`");
    }

    #[test]
    fn interface() {
        // A client network apart from the links is fine (carrier watched).
        let c = parse(Path::new("t.toml"), &cfg("\n[[group]]\nname = \"g\"\ninterface = \"eth9\"\n")).unwrap();
        assert_eq!(c.groups[0].interface, "eth9");
        // With a gateway probe: a monitor of its own.
        let c = parse(Path::new("t.toml"), &cfg("\n[[group]]\nname = \"g\"\naddresses = [\"192.168.1.80/24\"]\ninterface = \"eth0\"\ngateway = \"192.168.1.1\"\n")).unwrap();
        let m = &c.groups[0].monitors[0];
        assert_eq!((m.name.as_str(), m.interval_ms, m.failures), ("g-gateway", Some(1000), 3));
        assert!(matches!(&m.kind, ResourceKind::Command { monitor: Some(l), .. } if l == "exec ping -n -q -c 1 -W 1 -I eth0 192.168.1.1"));
        assert_eq!(one("gateway = \"x\""), "t.toml:27: `group[0].gateway`: \"x\" is not an IPv4 or IPv6 address");
        assert_eq!(one("gateway = \"10.0.0.1\""), "t.toml:27: `group[0].gateway`: a gateway probe needs the group's addresses (it checks their network)");
        assert!(one("interface = \"a b\"").starts_with("t.toml:27: `group[0].interface`: \"a b\" is not a valid interface name"));
        let c = parse(Path::new("t.toml"), &cfg("\n[[group]]\nname = \"g\"\ninterface = \"eth1\"\n")).unwrap();
        assert_eq!(c.groups[0].interface, "eth1");
    }

    #[test]
    fn resources() {
        let app = |body: &str| one(&format!("[group.application]\n{body}"));
        let mon = |body: &str| one(&format!("[[group.monitor]]\n{body}"));
        assert_eq!(app("kind = \"command\""), "t.toml:28: `group[0].application.kind`: a command application needs `start` or `daemon` (or both)");
        assert_eq!(app("kind = \"command\"\nstart = \"  \""), "t.toml:29: `group[0].application.start`: must be a non-empty command line");
        assert_eq!(app("kind = \"command\"\nstart = \"x\"\nunit = \"a.service\""), "t.toml:30: `group[0].application.unit`: not a key of kind \"command\" (it has `start`, `stop`, `monitor`, `daemon`)");
        assert_eq!(app("kind = \"ocf\""), "t.toml:28: `group[0].application.kind`: kind \"ocf\" needs `agent = \"provider:type\"`, e.g. \"heartbeat:Dummy\"");
        assert!(app("kind = \"ocf\"\nagent = \"Dummy\"").starts_with("t.toml:29: `group[0].application.agent`: \"Dummy\" must be \"provider:type\""));
        assert!(app("kind = \"ocf\"\nagent = \"../x:y\"").starts_with("t.toml:29: `group[0].application.agent`: \"../x:y\": provider and type must be plain names"));
        assert!(app("kind = \"ocf\"\nagent = \"heartbeat:Dummy\"\nparams = { \"bad-name\" = \"x\" }").starts_with("t.toml:30: `group[0].application.params.bad-name`: \"bad-name\" is not a parameter name"));
        assert!(app("kind = \"ocf\"\nagent = \"heartbeat:Dummy\"\nparams = { state = [1] }").starts_with("t.toml:30: `group[0].application.params.state`: must be a string"));
        assert_eq!(app("kind = \"systemd\""), "t.toml:28: `group[0].application.kind`: kind \"systemd\" needs `unit`, e.g. \"nginx.service\"");
        assert!(app("kind = \"systemd\"\nunit = \"a b\"").starts_with("t.toml:29: `group[0].application.unit`: \"a b\" is not a unit name"));
        assert_eq!(app("kind = \"command\"\nstart = \"x\"\ntimeout_ms = 5"), "t.toml:30: `group[0].application.timeout_ms`: an application has start_timeout_ms, stop_timeout_ms and monitor_timeout_ms");
        assert!(app("kind = \"command\"\nstart = \"x\"\nstart_timeout_ms = 0").starts_with("t.toml:30: `group[0].application.start_timeout_ms`: 0 is out of range"));
        assert!(app("kind = \"command\"\nstart = \"x\"\nfailures = 2").starts_with("t.toml:30: `group[0].application.failures`: has no effect without `interval_ms`"));
        assert_eq!(mon("kind = \"command\""), "t.toml:28: `group[0].monitor[0].kind`: a command monitor needs `monitor` (the check command line)");
        assert_eq!(mon("kind = \"command\"\nmonitor = \"true\"\nstart = \"x\""), "t.toml:30: `group[0].monitor[0].start`: a monitor of kind \"command\" has only `monitor` (its check command line)");
        assert_eq!(mon("kind = \"command\"\nmonitor = \"true\"\nstart_timeout_ms = 5"), "t.toml:30: `group[0].monitor[0].start_timeout_ms`: a monitor only runs its monitor action: use timeout_ms");
        assert!(mon("kind = \"command\"\nmonitor = \"true\"\ninterval_ms = 1").starts_with("t.toml:30: `group[0].monitor[0].interval_ms`: 1 is out of range 10..="));
        assert!(mon("kind = \"command\"\nmonitor = \"true\"\nfailures = 0").starts_with("t.toml:30: `group[0].monitor[0].failures`: 0 is out of range 1..="));
        assert!(one("garp_count = 101").starts_with("t.toml:27: `group[0].garp_count`: 101 is out of range 0..=100"));
        assert!(one("garp_interval_ms = 0").starts_with("t.toml:27: `group[0].garp_interval_ms`: 0 is out of range"));
        assert_eq!(one("notify = \"\""), "t.toml:27: `group[0].notify`: must be a non-empty command line");
    }

    #[test]
    fn parse_address_forms() {
        assert_eq!(parse_address("fd00::1/64").unwrap().prefix, 64);
        assert!(parse_address("10.0.0.1/0").unwrap_err().to_string().contains("prefix length 0"));
        assert!(parse_address("127.0.0.1/8").is_err());
        assert!(parse_address("255.255.255.255/32").is_err());
    }

    /// The texts of address errors are what the operator reads after
    /// `file:line: `group[i].addresses[j]``: they name the value and say what to write.
    #[test]
    fn address_error_texts() {
        let e = |s: &str| parse_address(s).unwrap_err().to_string();
        assert_eq!(e("10.0.0.1"), "\"10.0.0.1\" has no prefix length: write it as address/prefix, e.g. 10.0.0.100/24");
        assert_eq!(e("10.0.0.x/24"), "\"10.0.0.x\" is not an IPv4 or IPv6 address");
        assert_eq!(e("10.0.0.1/33"), "\"33\" is not a prefix length of an IPv4 address (0..=32)");
        assert_eq!(e("fd00::1/129"), "\"129\" is not a prefix length of an IPv6 address (0..=128)");
        assert_eq!(e("10.0.0.1/0"), "prefix length 0 in \"10.0.0.1/0\" would cover every address");
        assert_eq!(e("224.0.0.1/24"), "224.0.0.1 is not a unicast address a service can be reached at");
        assert_eq!(e("255.255.255.255/32"), "255.255.255.255 is the broadcast address");
        assert_eq!(parse_address("127.0.0.1/8").unwrap_err(), AddressError::NotUnicast { ip: "127.0.0.1".parse().unwrap() });
    }
}
