//! The event manager (S1.9, S4.3, S4.7; docs/events.md): named events with
//! name-value parameters, actions configured per event (`[[on]]`), and
//! alerts (`[alerts]`) with the conventions of Pacemaker's alert agents.
//!
//! Every event the agent records in `events.jsonl` (a service up or down, a
//! monitor failure, a peer's arrival or loss, a fault, a takeover or
//! giveback step, a fencing, an alert) is also published here. For each
//! event, the `[[on]]` entries that match (its name, and the optional
//! `service` and `node` filters) run one after the other, each with the
//! event's parameters in its environment (`BATON_EVENT`, and `BATON_<NAME>`
//! for every parameter: IN); a line `KEY=VALUE` an action prints on stdout
//! adds or replaces the parameter `KEY` for the actions after it (OUT). An
//! entry with `group = G` belongs to G's event group: it runs only while G
//! is registered (held) on this node, so a group's reactions to other
//! groups' service up/down (S4.3) follow it where it runs. An action that is
//! missing, fails or times out (its process group is killed) raises an
//! alert; nothing else changes.
//!
//! Alerts run `[alerts] command` once per alert, with the environment of a
//! Pacemaker alert agent (`CRM_alert_kind`, `CRM_alert_node`,
//! `CRM_alert_rsc`, `CRM_alert_desc`, `CRM_alert_timestamp`, ...), so
//! existing alert scripts run unchanged.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tracing::{error, info, warn};

pub use crate::config::events::{AlertsCfg, OnAction, EVENTS};

// ------------------------------------------------------------ dispatch

struct Dispatcher {
    tx: tokio::sync::mpsc::UnboundedSender<Value>,
}

static DISPATCHER: OnceLock<Dispatcher> = OnceLock::new();

/// The name an event of `events.jsonl` has here (a peer's silence and
/// distress are both `peer_down`; `self_fenced`, `fencing_waiting` are
/// alerts of kind fencing).
fn name_of(ev: &Value) -> Option<String> {
    let e = ev["event"].as_str()?;
    Some(
        match e {
            "peer_silent" | "peer_distress" => "peer_down",
            "takeover_refused_here" => "takeover_refused",
            "giveback_refused_here" => "giveback_refused",
            other => other,
        }
        .to_string(),
    )
}

/// The event's parameters as strings (everything but `event` and the
/// agent's timestamps).
fn params_of(ev: &Value) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    if let Some(o) = ev.as_object() {
        for (k, v) in o {
            if matches!(k.as_str(), "event" | "agent_ns" | "kernel_ns") {
                continue;
            }
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            p.insert(k.clone(), s);
        }
    }
    p
}

/// Publishes an event (a line of `events.jsonl`). A no-op until
/// [`install`] ran in this process.
pub fn publish(ev: &Value) {
    if let Some(d) = DISPATCHER.get() {
        let _ = d.tx.send(ev.clone());
    }
}

/// Starts the dispatcher of this agent (once per process).
pub fn install(cfg: &crate::config::Config, ownership: crate::services::guard::Ownership) {
    if cfg.actions.is_empty() && cfg.alerts.is_none() {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    if DISPATCHER.set(Dispatcher { tx }).is_err() {
        return;
    }
    let (actions, alerts, me, events) = (cfg.actions.clone(), cfg.alerts.clone(), cfg.node_id, cfg.paths.events_log());
    let names: BTreeMap<u32, String> =
        cfg.peers.iter().map(|p| (p.id, p.name.clone())).chain(std::iter::once((cfg.node_id, cfg.node_name.clone()))).collect();
    tokio::spawn(async move {
        let mut seq = 0u64;
        while let Some(ev) = rx.recv().await {
            let Some(name) = name_of(&ev) else { continue };
            let mut params = params_of(&ev);
            for a in actions.iter().filter(|a| a.event == name) {
                if a.service.as_ref().is_some_and(|s| params.get("service") != Some(s)) {
                    continue;
                }
                if a.node.is_some_and(|n| params.get("node") != Some(&n.to_string())) {
                    continue;
                }
                if a.group.as_ref().is_some_and(|g| !ownership.holds(g)) {
                    continue;
                }
                match run_action(a, &name, &params).await {
                    Ok(out) => {
                        for (k, v) in out {
                            params.insert(k, v);
                        }
                    }
                    Err(why) => {
                        error!(event = %name, run = %a.run, "action failed: {why}");
                        let alert = serde_json::json!({"event": "alert", "kind": "action_failed", "node": me, "reason": format!("[[on]] {name}: {}: {why}", a.run)});
                        crate::eventlog::record(&events, alert);
                    }
                }
            }
            if let (Some(al), Some(kind)) = (&alerts, alert_kind(&name)) {
                seq += 1;
                run_alert(al, kind, &name, &params, &names, seq).await;
            }
        }
    });
}

/// Runs one action; its `KEY=VALUE` lines (OUT parameters).
async fn run_action(a: &OnAction, name: &str, params: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, crate::services::resource::ResourceError> {
    let mut env = vec![("BATON_EVENT".to_string(), name.to_string())];
    for (k, v) in params {
        env.push((format!("BATON_{}", k.to_ascii_uppercase()), v.clone()));
    }
    info!(event = name, run = %a.run, "event action");
    let out = crate::services::resource::run_hook(name, crate::services::resource::Action::Notify, &a.run, &env, Duration::from_millis(a.timeout_ms as u64)).await?;
    Ok(out_params(&out.stdout))
}

/// `KEY=VALUE` lines (KEY: a letter or '_', then letters, digits, '_').
pub fn out_params(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim_end().split_once('=')?;
            let ok = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            ok.then(|| (k.to_ascii_lowercase(), v.to_string()))
        })
        .collect()
}

/// The Pacemaker alert kind of an event, for those that are alerts.
fn alert_kind(name: &str) -> Option<&'static str> {
    Some(match name {
        "peer_up" | "peer_down" | "fault" | "fault_cured" | "takeover_requested" | "takeover_accepted" | "takeover_refused"
        | "takeover_forced" | "takeover_done" | "giveback_requested" | "giveback_done" | "giveback_refused" => "node",
        "fenced" => "fencing",
        "service_up" | "service_down" | "service_offline" | "monitor_failed" => "resource",
        "alert" => "alert",
        _ => return None,
    })
}

/// UTC "YYYY-MM-DD HH:MM:SS.uuuuuu" of a Unix time in µs.
pub fn utc_timestamp(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}", rem / 3600, rem % 3600 / 60, rem % 60, us % 1_000_000)
}

async fn run_alert(al: &AlertsCfg, kind: &str, name: &str, params: &BTreeMap<String, String>, names: &BTreeMap<u32, String>, seq: u64) {
    let us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    let node_id: Option<u32> = params.get("node").and_then(|n| n.parse().ok());
    let node = node_id.and_then(|n| names.get(&n).cloned()).or_else(|| params.get("name").cloned()).unwrap_or_default();
    let service = params.get("service").cloned().unwrap_or_default();
    let desc = params.get("reason").or_else(|| params.get("detail")).cloned().unwrap_or_else(|| name.to_string());
    // Pacemaker's kinds are node, fencing, resource, attribute: baton's
    // own alerts (S4.7, fencing troubles, failed actions) go as "node" with
    // the task "alert", or "fencing" / "resource" by what they concern.
    let pkind = match (kind, params.get("kind").map(String::as_str)) {
        ("alert", Some("fencing")) => "fencing",
        ("alert", _) if !service.is_empty() => "resource",
        ("alert", _) => "node",
        (k, _) => k,
    };
    let task = match name {
        "service_up" => "start",
        "service_down" => "stop",
        "monitor_failed" => "monitor",
        "fenced" => "off",
        "peer_up" => "member",
        "peer_down" => "lost",
        other => other,
    };
    let mut env: Vec<(String, String)> = vec![
        ("CRM_alert_version".into(), "baton-0.1".into()),
        ("CRM_alert_recipient".into(), al.recipient.clone()),
        ("CRM_alert_node_sequence".into(), seq.to_string()),
        ("CRM_alert_timestamp".into(), utc_timestamp(us)),
        ("CRM_alert_timestamp_epoch".into(), (us / 1_000_000).to_string()),
        ("CRM_alert_timestamp_usec".into(), (us % 1_000_000).to_string()),
        ("CRM_alert_kind".into(), pkind.into()),
        ("CRM_alert_node".into(), node),
        ("CRM_alert_nodeid".into(), node_id.map(|n| n.to_string()).unwrap_or_default()),
        ("CRM_alert_desc".into(), desc),
        ("CRM_alert_task".into(), task.into()),
        ("CRM_alert_rsc".into(), service),
        ("CRM_alert_rc".into(), "0".into()),
        ("CRM_alert_status".into(), "0".into()),
        ("BATON_EVENT".into(), name.into()),
    ];
    for (k, v) in params {
        env.push((format!("BATON_{}", k.to_ascii_uppercase()), v.clone()));
    }
    if let Err(e) = crate::services::resource::run_hook("alerts", crate::services::resource::Action::Notify, &al.command, &env, Duration::from_millis(al.timeout_ms as u64)).await {
        warn!(event = name, "the alert command failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_parameters_are_key_value_lines() {
        let out = out_params("hello\nTARGET=node2\n2BAD=x\nwith space=y\n_ok=1=2\n");
        assert_eq!(out, vec![("target".to_string(), "node2".to_string()), ("_ok".to_string(), "1=2".to_string())]);
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00.000000");
        // 2026-12-07 01:02:03.000004 UTC
        assert_eq!(utc_timestamp(1_796_605_323_000_004), "2026-12-07 01:02:03.000004");
    }

    #[test]
    fn events_map_to_names_and_parameters() {
        let ev = serde_json::json!({"event": "peer_silent", "node": 2, "name": "beta", "agent_ns": 5, "reason": null});
        assert_eq!(name_of(&ev).as_deref(), Some("peer_down"));
        let p = params_of(&ev);
        assert_eq!(p.get("node").map(String::as_str), Some("2"));
        assert_eq!(p.get("name").map(String::as_str), Some("beta"));
        assert!(!p.contains_key("agent_ns") && !p.contains_key("reason"));
    }
}
