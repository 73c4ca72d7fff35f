//! Prometheus metrics (`[metrics] listen = "127.0.0.1:9745"`), served at
//! `/metrics` in the OpenMetrics text format with the `prometheus-client`
//! crate: docs/metrics.md lists every metric.
//!
//! A scrape reads what `baton status` reads (the pinned maps, the
//! membership and services snapshots the agent writes) plus the heartbeat
//! sender's counters, so it never waits for the event loop; the counters of
//! things that happen (failovers, switchovers, fencing, failures, the
//! detection-latency histogram) are kept here, fed by the agent's events
//! ([`observe`]). Each source that could not be read gives
//! `baton_scrape_success{source=...} 0` instead of failing the scrape.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tracing::{info, warn};

use crate::config::Config;

type Labels = Vec<(String, String)>;

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Buckets of the detection-latency histogram (seconds): from one 1 ms
/// heartbeat to a slow configuration's seconds.
pub const DETECTION_BUCKETS: [f64; 15] = [0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0];

/// Counters of events, kept for the agent's life.
struct Events {
    failovers: Family<Labels, Counter>,
    switchovers: Family<Labels, Counter>,
    starts: Family<Labels, Counter>,
    monitor_failures: Family<Labels, Counter>,
    fence_operations: Family<Labels, Counter>,
    peer_failures: Family<Labels, Counter>,
    detection: Histogram,
    reloads: Family<Labels, Counter>,
}

static EVENTS: OnceLock<Events> = OnceLock::new();

fn events() -> &'static Events {
    EVENTS.get_or_init(|| Events {
        failovers: Family::default(),
        switchovers: Family::default(),
        starts: Family::default(),
        monitor_failures: Family::default(),
        fence_operations: Family::default(),
        peer_failures: Family::default(),
        detection: Histogram::new(DETECTION_BUCKETS),
        reloads: Family::default(),
    })
}

/// An agent event (a line of `events.jsonl`): counted where it matters.
pub fn observe(v: &Value) {
    let e = events();
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    match v["event"].as_str().unwrap_or("") {
        "service_up" => {
            let reason = s("reason");
            let group = s("service");
            e.starts.get_or_create(&l(&[("group", &group), ("reason", &reason)])).inc();
            match reason.as_str() {
                "Failover" | "MonitorFailed" => {
                    e.failovers.get_or_create(&l(&[("group", &group)])).inc();
                }
                "Switchover" | "Transfer" | "Failback" => {
                    e.switchovers.get_or_create(&l(&[("group", &group)])).inc();
                }
                _ => {}
            }
        }
        "monitor_failed" => {
            e.monitor_failures.get_or_create(&l(&[("group", &s("service"))])).inc();
        }
        "fenced" => {
            let by = if v["by_this_node"] == true { "true" } else { "false" };
            e.fence_operations.get_or_create(&l(&[("node", &s("name")), ("by_this_node", by)])).inc();
        }
        "peer_silent" | "peer_distress" => {
            let kind = if v["event"] == "peer_silent" { "silent" } else { "distress" };
            e.peer_failures.get_or_create(&l(&[("peer", &s("name")), ("kind", kind)])).inc();
            // Detection latency: from the last heartbeat heard (on any
            // link) to the datapath's silent event, both kernel time.
            if let (Some(at), Some(last)) = (v["kernel_ns"].as_u64(), v["last_seen_ns"].as_u64()) {
                if at >= last && last > 0 {
                    e.detection.observe((at - last) as f64 / 1e9);
                }
            }
        }
        "config_reloaded" => {
            e.reloads.get_or_create(&l(&[("result", "applied")])).inc();
        }
        "reload_refused" => {
            e.reloads.get_or_create(&l(&[("result", "refused")])).inc();
        }
        _ => {}
    }
}

/// Why the metrics listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{}: [metrics] listen = \"{listen}\": the address is in use (another process listens there): stop it, or choose another port in metrics.listen", file.display())]
    InUse { file: std::path::PathBuf, listen: std::net::SocketAddr },
    #[error("{}: [metrics] listen = \"{listen}\": cannot listen there: {source}", file.display())]
    Listen {
        file: std::path::PathBuf,
        listen: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the metrics listener: {source}")]
    Socket {
        #[source]
        source: std::io::Error,
    },
}

/// Binds the metrics listener (before anything else starts, so a port in
/// use is one clear error at start). `None` without `[metrics]`.
pub fn bind(cfg: &Config) -> Result<Option<std::net::TcpListener>, MetricsError> {
    let Some(m) = &cfg.metrics else { return Ok(None) };
    match std::net::TcpListener::bind(m.listen) {
        Ok(l) => {
            l.set_nonblocking(true).map_err(|source| MetricsError::Socket { source })?;
            Ok(Some(l))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(MetricsError::InUse { file: cfg.file.clone(), listen: m.listen }),
        Err(source) => Err(MetricsError::Listen { file: cfg.file.clone(), listen: m.listen, source }),
    }
}

/// Serves `/metrics` on `listener` until the agent ends.
pub fn spawn(cfg: Config, listener: std::net::TcpListener, sender: Arc<crate::datapath::sender::SenderShared>) -> Result<(), MetricsError> {
    let socket = |source| MetricsError::Socket { source };
    let listener = tokio::net::TcpListener::from_std(listener).map_err(socket)?;
    info!(listen = %listener.local_addr().map_err(socket)?, "metrics: serving /metrics (docs/metrics.md)");
    let cfg = Arc::new(cfg);
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { continue };
            let cfg = cfg.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(sock, &cfg, &sender).await {
                    warn!("metrics: a request failed: {e}");
                }
            });
        }
    });
    Ok(())
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for
/// clients that do not ask for OpenMetrics (curl, `promtool check
/// metrics`): a counter family is named with its `_total` suffix, and the
/// `# UNIT` and `# EOF` lines go.
pub fn to_text_format(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let full = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            if let Some((_, text)) = help.take().filter(|(h, _)| *h == name) {
                let _ = writeln!(out, "# HELP {full} {text}");
            }
            let _ = writeln!(out, "# TYPE {full} {kind}");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// One HTTP/1.x request: `GET /metrics` (anything else: 404), then close.
/// OpenMetrics when the client accepts it (Prometheus does), else the
/// Prometheus text format.
async fn serve(mut sock: tokio::net::TcpStream, cfg: &Config, sender: &crate::datapath::sender::SenderShared) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head not received within 5 s"))??;
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let openmetrics = head.lines().any(|h| h.to_ascii_lowercase().starts_with("accept:") && h.contains("application/openmetrics-text"));
    let (status, ctype, body) = if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
        if openmetrics {
            ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", render(cfg, sender))
        } else {
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", to_text_format(&render(cfg, sender)))
        }
    } else {
        ("404 Not Found", "text/plain; charset=utf-8", "baton serves /metrics only\n".to_string())
    };
    let resp = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

fn gauge_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge_f_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> {
    let f = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// ha_cluster_exporter's node status names for membership states.
fn ha_node_status(state: baton_state::NodeState) -> &'static str {
    use baton_state::NodeState as S;
    match state {
        S::Joined => "online",
        S::Joining => "pending",
        S::Leaving => "shutdown",
        S::ForcedLeaving => "unclean",
        S::Inactive => "offline",
    }
}

/// The whole exposition.
pub fn render(cfg: &Config, sender: &crate::datapath::sender::SenderShared) -> String {
    let mut reg = Registry::default();
    let ok = gauge_family(&mut reg, "baton_scrape_success", "Whether each source of this scrape could be read (1) or not (0)");

    // The datapath: per peer and link liveness, verdict counters.
    match crate::datapath::status::collect(cfg) {
        Ok(st) => {
            ok.get_or_create(&l(&[("source", "datapath")])).set(1);
            let peer_up = gauge_family(&mut reg, "baton_peer_up", "Whether the datapath hears the peer on at least one link");
            let fenced = gauge_family(&mut reg, "baton_peer_fenced", "Whether the peer's datagrams are dropped (baton fence)");
            let link_up = gauge_family(&mut reg, "baton_link_up", "Whether the datapath hears the peer on this link");
            let age = gauge_f_family(&mut reg, "baton_link_last_seen_age_seconds", "Time since the peer's last authentic heartbeat on this link");
            for p in st["peers"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or("?");
                let id = p["id"].to_string();
                peer_up.get_or_create(&l(&[("peer", name), ("node_id", &id)])).set((p["state"] == "up") as i64);
                fenced.get_or_create(&l(&[("peer", name)])).set((p["fenced"] == true) as i64);
                for k in p["links"].as_array().into_iter().flatten() {
                    let link = k["name"].as_str().unwrap_or("?");
                    link_up.get_or_create(&l(&[("peer", name), ("link", link)])).set((k["state"] == "up") as i64);
                    if let Some(ms) = k["last_seen_age_ms"].as_f64() {
                        age.get_or_create(&l(&[("peer", name), ("link", link)])).set(ms / 1e3);
                    }
                }
            }
            let datagrams = Family::<Labels, Counter>::default();
            reg.register("baton_datapath_datagrams", "Datagrams the XDP program handled, by verdict and reason (pinned counters map)", datagrams.clone());
            let other = Family::<Labels, Counter>::default();
            reg.register("baton_datapath_events", "Other datapath counters: watchdog ticks, link silences, handover steering", other.clone());
            for c in baton_common::Counter::ALL {
                let v = st["counters"][c.name()].as_u64().unwrap_or(0);
                let (fam, labels) = match c as u32 {
                    0..=2 => (&datagrams, l(&[("verdict", "accepted"), ("reason", c.name())])),
                    3..=13 | 19 => (&datagrams, l(&[("verdict", "dropped"), ("reason", c.name())])),
                    _ => (&other, l(&[("counter", c.name())])),
                };
                fam.get_or_create(&labels).inc_by(v);
            }
        }
        Err(e) => {
            warn!("metrics: the pinned maps cannot be read: {e}");
            ok.get_or_create(&l(&[("source", "datapath")])).set(0);
        }
    }

    // The heartbeat sender.
    counter(&mut reg, "baton_heartbeats_sent", "Heartbeats sent (all peers and links)", sender.sent.load(Relaxed));
    counter(&mut reg, "baton_heartbeat_send_errors", "Heartbeats whose send failed", sender.send_errors.load(Relaxed));
    counter(&mut reg, "baton_heartbeat_late_ticks", "Sender periods that started late (the real-time thread was delayed)", sender.late_ticks.load(Relaxed));

    // Membership (cluster.json).
    let total_nodes = cfg.peers.len() as i64 + 1;
    gauge(&mut reg, "baton_nodes_configured", "Configured nodes (this one and its peers)", total_nodes);
    gauge(&mut reg, "ha_cluster_pacemaker_stonith_enabled", "Whether fencing is configured ([[disk]]) (ha_cluster_exporter's name)", (!cfg.disks.is_empty()) as i64);
    use baton_state::{StateFile, StateName};
    match baton_state::ClusterSnapshot::load(&cfg.paths.state_dir) {
        Some(m) => {
            ok.get_or_create(&l(&[("source", "membership")])).set(1);
            let quorate = (m.quorate == Some(true)) as i64;
            gauge(&mut reg, "baton_membership_quorate", "Whether this node's view of the cluster is quorate", quorate);
            gauge(&mut reg, "ha_cluster_corosync_quorate", "Whether the cluster is quorate (ha_cluster_exporter's name)", quorate);
            let joined = m.nodes.iter().filter(|n| n.state == baton_state::NodeState::Joined).count() as i64;
            gauge(&mut reg, "baton_membership_members", "Nodes in state Joined in this node's view", joined);
            gauge(&mut reg, "baton_membership_master", "The node id of the cluster master (0: none)", m.master.unwrap_or(0) as i64);
            gauge(&mut reg, "baton_membership_halted", "Whether clustering halted on this node", m.halted.is_some() as i64);
            let state = gauge_family(&mut reg, "baton_membership_node_state", "Each node's membership state (1 for its current state)");
            let ha = gauge_family(&mut reg, "ha_cluster_pacemaker_nodes", "The nodes, one line per status (ha_cluster_exporter's name and statuses)");
            for n in &m.nodes {
                let st = n.state.as_str();
                state.get_or_create(&l(&[("node", &n.name), ("state", st)])).set(1);
                ha.get_or_create(&l(&[("name", &n.name), ("status", ha_node_status(n.state)), ("type", "member")])).set(1);
                if m.master == Some(n.id) {
                    ha.get_or_create(&l(&[("name", &n.name), ("status", "dc"), ("type", "member")])).set(1);
                }
            }
            let tr = gauge_family(&mut reg, "baton_transitions_in_flight", "Membership transitions in flight, by kind and the level they are at");
            for t in &m.transitions {
                let level = t.level.to_string();
                tr.get_or_create(&l(&[("kind", t.kind.as_str()), ("level", &level)])).inc();
            }
        }
        None => {
            ok.get_or_create(&l(&[("source", "membership")])).set(0);
        }
    }

    // Groups (services.json): present only with groups.
    if !cfg.groups.is_empty() {
        match baton_state::Services::load(&cfg.paths.state_dir) {
            Some(baton_state::Services(list)) => {
                ok.get_or_create(&l(&[("source", "services")])).set(1);
                let state = gauge_family(&mut reg, "baton_group_state", "Each group's state and node as this node sees it (1 for the current one)");
                let node = gauge_family(&mut reg, "baton_group_node", "The node id a group is registered on (0: none or several)");
                let ha = gauge_family(&mut reg, "ha_cluster_pacemaker_resources", "The groups, one line per node and status (ha_cluster_exporter's name)");
                gauge(&mut reg, "baton_groups_configured", "Configured groups", list.len() as i64);
                for g in &list {
                    let st = g.state.as_str();
                    let mode = g.mode.as_str();
                    let on_name = g.node.map(|n| if n == cfg.node_id { cfg.node_name.clone() } else { cfg.peer_name(n) }).unwrap_or_default();
                    state.get_or_create(&l(&[("group", &g.name), ("state", st), ("node", &on_name), ("mode", mode)])).set(1);
                    node.get_or_create(&l(&[("group", &g.name)])).set(g.node.unwrap_or(0) as i64);
                    let role = match g.state {
                        baton_state::ServiceState::Registered => "started",
                        baton_state::ServiceState::Starting => "starting",
                        baton_state::ServiceState::Stopping | baton_state::ServiceState::Recovering => "stopping",
                        baton_state::ServiceState::Deregistered => "stopped",
                    };
                    let status = if g.failed { "failed" } else if g.mode == baton_state::Mode::Offline { "blocked" } else { "active" };
                    if g.state != baton_state::ServiceState::Deregistered {
                        ha.get_or_create(&l(&[("id", &g.name), ("node", &on_name), ("managed", "true"), ("role", role), ("status", status)])).set(1);
                    }
                }
            }
            None => {
                ok.get_or_create(&l(&[("source", "services")])).set(0);
            }
        }
    }

    // Event counters.
    let e = events();
    reg.register("baton_failovers", "Unplanned moves: a group started here after a failure (forced leave or monitor)", e.failovers.clone());
    reg.register("baton_switchovers", "Planned moves: a group started here by a switchover, transfer or failback", e.switchovers.clone());
    reg.register("baton_group_starts", "Group run methods that succeeded here, by reason", e.starts.clone());
    reg.register("baton_monitor_failures", "Monitor failures of groups running here", e.monitor_failures.clone());
    reg.register("baton_fence_operations", "Nodes fenced off the shared disks (as seen here; by_this_node: this node preempted the key)", e.fence_operations.clone());
    reg.register("baton_peer_failures", "Peers that went silent or sent a distress", e.peer_failures.clone());
    reg.register("baton_config_reloads", "Configuration reloads, applied or refused", e.reloads.clone());
    reg.register_with_unit(
        "baton_detection_latency",
        "Time from a peer's last heartbeat to the datapath's silent event",
        prometheus_client::registry::Unit::Seconds,
        e.detection.clone(),
    );

    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        let _ = writeln!(out, "# encoding failed: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_counters_with_total_and_drops_openmetrics_lines() {
        let om = "# HELP a_sent Sent.\n# TYPE a_sent counter\na_sent_total 3\n# HELP b Up.\n# TYPE b gauge\nb{x=\"1\"} 1\n# HELP c_seconds Lat.\n# TYPE c_seconds histogram\n# UNIT c_seconds seconds\nc_seconds_sum 0.1\nc_seconds_count 1\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP a_sent_total Sent.\n# TYPE a_sent_total counter\na_sent_total 3\n# HELP b Up.\n# TYPE b gauge\nb{x=\"1\"} 1\n# HELP c_seconds Lat.\n# TYPE c_seconds histogram\nc_seconds_sum 0.1\nc_seconds_count 1\n"
        );
    }

    /// ha_cluster_exporter's node statuses, from the typed node state.
    #[test]
    fn node_states_are_ha_cluster_exporters_statuses() {
        use baton_state::NodeState as S;
        let got: Vec<&str> = [S::Inactive, S::Joining, S::Joined, S::Leaving, S::ForcedLeaving].into_iter().map(ha_node_status).collect();
        assert_eq!(got, ["offline", "pending", "online", "shutdown", "unclean"]);
    }

    #[test]
    fn events_are_counted() {
        observe(&serde_json::json!({"event": "service_up", "service": "t-web", "reason": "Failover"}));
        observe(&serde_json::json!({"event": "service_up", "service": "t-web", "reason": "Switchover"}));
        observe(&serde_json::json!({"event": "service_up", "service": "t-web", "reason": "Register"}));
        observe(&serde_json::json!({"event": "peer_silent", "name": "t-n2", "kernel_ns": 1_150_000_000u64, "last_seen_ns": 1_050_000_000u64}));
        let e = events();
        assert_eq!(e.failovers.get_or_create(&l(&[("group", "t-web")])).get(), 1);
        assert_eq!(e.switchovers.get_or_create(&l(&[("group", "t-web")])).get(), 1);
        assert_eq!(e.starts.get_or_create(&l(&[("group", "t-web"), ("reason", "Register")])).get(), 1);
        assert_eq!(e.peer_failures.get_or_create(&l(&[("peer", "t-n2"), ("kind", "silent")])).get(), 1);
    }

    #[test]
    fn listen_must_be_loopback_unless_allowed() {
        let base = "[cluster]\nname = \"t\"\nid = 1\nsecret_file = \"/s\"\n[node]\nid = 1\nname = \"n1\"\n[[link]]\nname = \"r0\"\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\n[[peer]]\nid = 2\nname = \"n2\"\naddresses = [\"10.0.0.2\"]\n";
        let p = |extra: &str| crate::config::parse(std::path::Path::new("t.toml"), &format!("{base}{extra}"));
        assert_eq!(p("[metrics]\nlisten = \"127.0.0.1:9745\"\n").unwrap().metrics.unwrap().listen.to_string(), "127.0.0.1:9745");
        assert!(p("").unwrap().metrics.is_none());
        let e = p("[metrics]\nlisten = \"10.0.0.1:9745\"\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:17: `metrics.listen`: 10.0.0.1 is not a loopback address") && e.contains("metrics.allow_remote = true"), "{e}");
        assert!(p("[metrics]\nlisten = \"10.0.0.1:9745\"\nallow_remote = true\n").is_ok());
        let e = p("[metrics]\nlisten = \"localhost\"\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:17: `metrics.listen`: \"localhost\" is not an address:port"), "{e}");
    }
}
