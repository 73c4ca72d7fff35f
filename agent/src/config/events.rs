//! `[[on]]` and `[alerts]`: the event manager's actions and alerts
//! (docs/events.md), parsed and validated; `services::eventmgr` runs them.

use serde::Deserialize;
use toml::Spanned;

use super::common::{ConfigError, Ctx};


/// The event names an `[[on]]` may name.
pub const EVENTS: &[&str] = &[
    "peer_up",
    "peer_down",
    "peer_stopped",
    "service_up",
    "service_down",
    "service_offline",
    "monitor_failed",
    "fault",
    "fault_cured",
    "takeover_requested",
    "takeover_accepted",
    "takeover_refused",
    "takeover_forced",
    "takeover_done",
    "giveback_requested",
    "giveback_done",
    "giveback_refused",
    "fenced",
    "alert",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnAction {
    pub event: String,
    pub service: Option<String>,
    pub node: Option<u32>,
    pub group: Option<String>,
    pub run: String,
    pub timeout_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertsCfg {
    pub command: String,
    pub timeout_ms: u32,
    pub recipient: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOn {
    event: Spanned<String>,
    service: Option<Spanned<String>>,
    node: Option<Spanned<i64>>,
    group: Option<Spanned<String>>,
    run: Spanned<String>,
    timeout_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    command: Spanned<String>,
    timeout_ms: Option<Spanned<i64>>,
    recipient: Option<Spanned<String>>,
}

pub(crate) fn validate_on(cx: &Ctx, raw: &[Spanned<RawOn>], groups: &[crate::config::groups::Group]) -> Result<Vec<OnAction>, ConfigError> {
    let mut out = Vec::new();
    for (i, o) in raw.iter().enumerate() {
        let r = o.get_ref();
        let key = |k: &str| format!("on[{i}].{k}");
        let event = r.event.get_ref().clone();
        if !EVENTS.contains(&event.as_str()) {
            return Err(cx.invalid(&r.event, &key("event"), format!("unknown event {event:?}: use one of {}", EVENTS.join(", "))));
        }
        let group = match &r.group {
            Some(g) if !groups.iter().any(|x| &x.name == g.get_ref()) => {
                return Err(cx.invalid(g, &key("group"), format!("{:?} is not a [[group]] of this configuration", g.get_ref())))
            }
            g => g.as_ref().map(|g| g.get_ref().clone()),
        };
        let node = r.node.as_ref().map(|v| cx.int(v, &key("node"), 1, u32::MAX as i64 - 1)).transpose()?;
        let run = cx.command(&r.run, &key("run"))?;
        let timeout_ms = r.timeout_ms.as_ref().map(|v| cx.int(v, &key("timeout_ms"), 10, 3_600_000)).transpose()?.unwrap_or(10_000);
        out.push(OnAction { event, service: r.service.as_ref().map(|s| s.get_ref().clone()), node, group, run, timeout_ms });
    }
    Ok(out)
}

pub(crate) fn validate_alerts(cx: &Ctx, raw: &Option<Spanned<RawAlerts>>) -> Result<Option<AlertsCfg>, ConfigError> {
    let Some(a) = raw else { return Ok(None) };
    let a = a.get_ref();
    let command = cx.command(&a.command, "alerts.command")?;
    let timeout_ms = a.timeout_ms.as_ref().map(|v| cx.int(v, "alerts.timeout_ms", 10, 3_600_000)).transpose()?.unwrap_or(30_000);
    let recipient = a.recipient.as_ref().map(|r| r.get_ref().clone()).unwrap_or_default();
    Ok(Some(AlertsCfg { command, timeout_ms, recipient }))
}
