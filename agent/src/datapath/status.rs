//! `baton status`: the local view of peers, read straight from the pinned
//! maps, so it answers even when the agent is busy or stuck.

use crate::datapath::pinned;
use baton_common::{
    Counter, PeerLink, LINK_DISTRESSED, LINK_SILENT, LINK_UNKNOWN, LINK_UP, MAP_CONFIG, MAP_COUNTERS,
    MAP_PEERS,
};
use baton_state::StateName;
use serde_json::{json, Value};

use crate::config::Config;
use crate::datapath::slot_base;
use crate::datapath::events::monotonic_ns;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Open(#[from] crate::datapath::pinned::PinnedError),
    #[error("reading pinned map {map}: {source}")]
    Read {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("--interval {interval}: give between 0.1 and 3600 seconds")]
    Interval { interval: f64 },
    #[error("writing the status: {source}")]
    Output {
        #[from]
        source: std::io::Error,
    },
}

pub fn state_name(s: u32) -> &'static str {
    match s {
        LINK_UNKNOWN => "unknown",
        LINK_UP => "up",
        LINK_SILENT => "silent",
        LINK_DISTRESSED => "distressed",
        _ => "invalid",
    }
}


/// Sums the per-CPU counters.
pub fn counters(cfg: &Config) -> Result<Vec<(Counter, u64)>, StatusError> {
    let arr = pinned::counters(&cfg.paths.bpffs_dir)?;
    let mut out = Vec::new();
    for c in Counter::ALL {
        let v = arr.get(&(c as u32), 0).map_err(|source| StatusError::Read { map: MAP_COUNTERS, source })?;
        out.push((c, v.iter().sum()));
    }
    Ok(out)
}

/// The liveness record of every configured peer on every link
/// (`BATON_PEERS`), for the agent's resync (`PeerTracker::resync`).
pub fn peer_links(cfg: &Config) -> Result<Vec<PeerLink>, StatusError> {
    let peers = pinned::peers(&cfg.paths.bpffs_dir)?;
    let mut out = Vec::new();
    for i in 0..cfg.peers.len() {
        for li in 0..cfg.links.len() {
            out.push(peers.get(&(slot_base(i) + li as u32), 0).map_err(|source| StatusError::Read { map: MAP_PEERS, source })?);
        }
    }
    Ok(out)
}

/// The version of the `baton status --json` document (docs/status-json.md):
/// fields may be added without a change; a field removed, renamed or given
/// another meaning or type raises it.
pub const SCHEMA_VERSION: u32 = 1;

/// `baton status --watch`: the status every `interval` seconds until
/// interrupted. On a terminal the screen is redrawn (as `crm_mon`);
/// otherwise each view follows the last, after a `--- <time>` line, or one
/// JSON document per line with `json`. An agent that is not running (yet)
/// is shown as such and asked again at the next refresh.
pub fn watch(cfg: &Config, json: bool, interval: f64) -> Result<(), StatusError> {
    use std::io::{IsTerminal, Write};
    if !(interval.is_finite() && (0.1..=3600.0).contains(&interval)) {
        return Err(StatusError::Interval { interval });
    }
    let tty = std::io::stdout().is_terminal();
    loop {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut out = std::io::stdout().lock();
        match collect(cfg) {
            Ok(v) if json => writeln!(out, "{v}")?,
            Ok(v) => {
                if tty {
                    write!(out, "\x1b[H\x1b[2J")?;
                } else {
                    writeln!(out, "--- {now}")?;
                }
                writeln!(out, "baton status (every {interval} s; Ctrl-C to stop)\n")?;
                write!(out, "{}", render(&v))?;
            }
            Err(e) if json => writeln!(out, "{}", json!({"schema_version": SCHEMA_VERSION, "error": e.to_string()}))?,
            Err(e) => {
                if tty {
                    write!(out, "\x1b[H\x1b[2J")?;
                } else {
                    writeln!(out, "--- {now}")?;
                }
                writeln!(out, "baton status (every {interval} s; Ctrl-C to stop)\n\n{e}")?;
            }
        }
        out.flush()?;
        drop(out);
        std::thread::sleep(std::time::Duration::from_secs_f64(interval));
    }
}

/// The whole status document (`baton status --json`).
pub fn collect(cfg: &Config) -> Result<Value, StatusError> {
    let now = monotonic_ns();
    let conf = pinned::config(&cfg.paths.bpffs_dir)?;
    let dc = conf.get(&0, 0).map_err(|source| StatusError::Read { map: MAP_CONFIG, source })?;
    let peers = pinned::peers(&cfg.paths.bpffs_dir)?;
    let fenced = pinned::fenced(&cfg.paths.bpffs_dir)?;
    let fenced_ids: Vec<u32> = fenced.keys().filter_map(Result::ok).collect();

    let mut nodes = Vec::new();
    for (i, p) in cfg.peers.iter().enumerate() {
        let mut links = Vec::new();
        let mut any_up = false;
        let mut distressed = false;
        let mut inc = 0;
        for (li, l) in cfg.links.iter().enumerate() {
            let r = peers
                .get(&(slot_base(i) + li as u32), 0)
                .map_err(|source| StatusError::Read { map: MAP_PEERS, source })?;
            any_up |= r.state == LINK_UP;
            distressed |= r.state == LINK_DISTRESSED;
            inc = inc.max(r.incarnation);
            let age = (r.last_seen_ns != 0).then(|| now.saturating_sub(r.last_seen_ns) as f64 / 1e6);
            links.push(json!({
                "link": li,
                "name": l.name,
                "address": p.addresses[li].to_string(),
                "state": state_name(r.state),
                "last_seen_age_ms": age,
                "incarnation": r.incarnation,
                "last_seq": r.last_seq,
                "live_seq": r.live_seq,
                "echo_seq": r.echo_seq,
                "rx_live": r.rx_live,
                "rx_handshake": r.rx_handshake,
                "peer_interval_ms": r.peer_interval_ms,
                "distress_reason": r.distress_reason,
            }));
        }
        let state = if distressed {
            "distressed"
        } else if any_up {
            "up"
        } else if links.iter().any(|l| l["state"] == "silent") {
            "silent"
        } else {
            "unknown"
        };
        nodes.push(json!({
            "id": p.id,
            "name": p.name,
            "state": state,
            "incarnation": inc,
            "fenced": fenced_ids.contains(&p.id),
            "links": links,
        }));
    }
    let counters: serde_json::Map<String, Value> =
        counters(cfg)?.into_iter().map(|(c, v)| (c.name().to_string(), json!(v))).collect();
    use baton_state::StateFile;
    let cluster = baton_state::ClusterSnapshot::load(&cfg.paths.state_dir);
    let agent = baton_state::AgentStatus::load(&cfg.paths.state_dir);
    // Resource groups: as the services core on this node last saw them
    // (`since_ns` on the monotonic clock; `since_s_ago` for people).
    let now = crate::datapath::events::monotonic_ns();
    let mut services = baton_state::Services::load(&cfg.paths.state_dir).unwrap_or_default().0;
    for e in &mut services {
        e.since_s_ago = Some(((now.saturating_sub(e.since_ns)) as f64 / 1e9 * 10.0).round() / 10.0);
    }
    Ok(json!({
        "schema_version": SCHEMA_VERSION,
        "services": services,
        "cluster": cfg.cluster_name,
        "cluster_id": dc.cluster_id,
        "node": {"id": dc.my_node, "name": cfg.node_name, "incarnation": dc.my_incarnation},
        "timeout_ms": dc.timeout_ns as f64 / 1e6,
        "enabled": dc.enabled != 0,
        "pin_dir": cfg.paths.bpffs_dir.display().to_string(),
        "agent": agent,
        "membership": cluster,
        "peers": nodes,
        "counters": counters,
    }))
}

/// Human table.
pub fn render(v: &Value) -> String {
    let mut s = format!(
        "cluster {} (id {}), node {} (id {}), incarnation {}, silence bound {} ms\n",
        v["cluster"].as_str().unwrap_or("?"),
        v["cluster_id"],
        v["node"]["name"].as_str().unwrap_or("?"),
        v["node"]["id"],
        v["node"]["incarnation"],
        v["timeout_ms"]
    );
    // The parts read from the state files, typed (docs/status-json.md).
    let membership: Option<baton_state::ClusterSnapshot> = serde_json::from_value(v["membership"].clone()).ok().flatten();
    let services: Vec<baton_state::ServiceLine> = serde_json::from_value(v["services"].clone()).unwrap_or_default();
    let agent: Option<baton_state::AgentStatus> = serde_json::from_value(v["agent"].clone()).ok().flatten();
    // A number, or `null` as the JSON document says it.
    fn or_null<T: std::fmt::Display>(o: Option<T>) -> String {
        o.map(|x| x.to_string()).unwrap_or_else(|| "null".into())
    }
    if let Some(c) = &membership {
        s += &format!(
            "membership: this node {}, master {}, view term {} version {}{}\n",
            c.my_state.as_str(),
            or_null(c.master),
            or_null(c.view.map(|w| w.term)),
            or_null(c.view.map(|w| w.version)),
            c.halted.map(|h| format!(", HALTED ({})", baton_state::halt_text(h))).unwrap_or_default()
        );
        s += &format!("{:<12} {:>6} {:<15} {:>20}\n", "NODE", "ID", "STATE", "INCARNATION");
        for n in &c.nodes {
            s += &format!("{:<12} {:>6} {:<15} {:>20}\n", n.name, n.id.to_string(), n.state.as_str(), n.incarnation.to_string());
        }
        if c.transitions.is_empty() {
            s += "transitions in flight: none\n";
        }
        for t in &c.transitions {
            s += &format!(
                "transition: {} of {} ({}), at level {} barrier {} of levels {}\n",
                t.kind.as_str(),
                t.name,
                t.direction.as_str(),
                t.level,
                t.barrier,
                serde_json::to_string(&t.levels).unwrap_or_default()
            );
        }
        if let Some(f) = &c.fencing {
            let disks: Vec<String> = f.disks.iter().map(|d| format!("{} ({})", d.name, d.device)).collect();
            s += &format!(
                "fencing: disks {}; this node's key {}\n",
                disks.join(", "),
                if f.registered { "registered" } else { "not registered" }
            );
            for w in &f.waiting {
                s += &format!(
                    "fencing {}: waiting ({}); no takeover before it is fenced (`baton fence confirm {}` if it is switched off)\n",
                    w.name, w.reason, w.node
                );
            }
        }
        s += "\n";
    }
    if !services.is_empty() {
        s += &format!("{:<16} {:<13} {:>6} {:<8} {:<24} {:>10}  {}\n", "SERVICE", "STATE", "NODE", "MODE", "FLAGS", "SINCE", "PER NODE");
        for e in &services {
            let mut flags: Vec<&str> = Vec::new();
            for (set, f) in [
                (e.flags.transfer_intent, "transfer_intent"),
                (e.flags.awaiting_maturity, "awaiting_maturity"),
                (e.flags.has_notify, "has_notify"),
            ] {
                if set {
                    flags.push(f);
                }
            }
            if e.failed {
                flags.push("FAILED");
            }
            if !e.complete {
                flags.push("uncommitted");
            }
            let per: Vec<String> = e.nodes.iter().map(|(n, st)| format!("{n}:{}", st.as_str())).collect();
            if let Some(c) = &e.offline_cause {
                flags.push(if *c == baton_state::OfflineCause::Operator { "offline_by_operator" } else { "offline_after_failure" });
            }
            s += &format!(
                "{:<16} {:<13} {:>6} {:<8} {:<24} {:>10}  {}\n",
                e.name,
                e.state.as_str(),
                e.node.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                e.mode.as_str(),
                if flags.is_empty() { "-".to_string() } else { flags.join(",") },
                e.since_s_ago.map(|t| format!("{t:.1} s")).unwrap_or_default(),
                per.join(" ")
            );
        }
        s += "\n";
    }
    s += &format!("{:<12} {:>6} {:<11} {:<8} {:<11} {:>12} {:>10} {:>10}\n", "PEER", "ID", "STATE", "LINK", "LINK STATE", "LAST SEEN", "LIVE", "HANDSHAKE");
    for p in v["peers"].as_array().into_iter().flatten() {
        for (i, l) in p["links"].as_array().into_iter().flatten().enumerate() {
            let age = l["last_seen_age_ms"].as_f64().map(|a| format!("{a:.1} ms")).unwrap_or_else(|| "never".into());
            let (name, id, st) = if i == 0 {
                let mut st = p["state"].as_str().unwrap_or("?").to_string();
                if p["fenced"] == true {
                    st += ",fenced";
                }
                (p["name"].as_str().unwrap_or("?").to_string(), p["id"].to_string(), st)
            } else {
                (String::new(), String::new(), String::new())
            };
            s += &format!(
                "{:<12} {:>6} {:<11} {:<8} {:<11} {:>12} {:>10} {:>10}\n",
                name,
                id,
                st,
                l["name"].as_str().unwrap_or("?"),
                l["state"].as_str().unwrap_or("?"),
                age,
                l["rx_live"],
                l["rx_handshake"]
            );
        }
    }
    if let Some(t) = agent.as_ref().and_then(|a| a.takeover.as_ref()) {
        if t.state != "normal" {
            s += &format!(
                "takeover: {}{}{}\n",
                t.state,
                t.why.as_ref().map(|w| format!(": {w}")).or_else(|| t.node.as_ref().map(|n| format!(" of {n} (fault {})", t.fault.as_deref().unwrap_or("?")))).unwrap_or_default(),
                t.countdown_left_ms.map(|ms| format!(", countdown {ms} ms left")).unwrap_or_default()
            );
        }
        for o in &t.taken_over {
            s += &format!("took over {} (fault {}{}); waiting for giveback\n", o.node, o.fault, if o.forced { ", forced" } else { "" });
        }
    }
    if let Some(cf) = agent.as_ref().and_then(|a| a.config.in_use()) {
        let mismatch: Vec<String> = cf
            .mismatch
            .iter()
            .map(|n| match cf.peers.get(&n.to_string()) {
                Some(p) => format!("{} ({})", p.name, p.groups_hash),
                None => "? (?)".to_string(),
            })
            .collect();
        let agree = cf.peers.len() - mismatch.len().min(cf.peers.len());
        s += &format!(
            "groups hash {}: {}\n",
            cf.groups_hash,
            if mismatch.is_empty() { format!("same on {agree} peer(s) heard") } else { format!("DIFFERS on {}", mismatch.join(", ")) }
        );
        if let Some(r) = &cf.last_reload {
            s += &format!("last reload {} s ago: {}{}\n", json!(r.s_ago), if r.ok { "" } else { "REFUSED: " }, r.message);
        }
    }
    if let Some(a) = &agent {
        let snd = &a.sender;
        s += &format!("agent pid {}: heartbeats sent {}, send errors {}, late ticks {}\n", a.pid, snd.sent, snd.send_errors, snd.late_ticks);
        if let Some(ch) = &a.channel {
            s += &format!(
                "control channel: sessions {}, handshake failures {}, refused before authentication {}, evicted before authentication {}\n",
                ch.sessions, ch.handshake_failures, ch.preauth_rejected, ch.preauth_evicted
            );
        }
    }
    s += "counters:";
    if let Some(c) = v["counters"].as_object() {
        for (k, val) in c {
            if val.as_u64().unwrap_or(0) != 0 {
                s += &format!(" {k}={val}");
            }
        }
    }
    s.push('\n');
    s
}
