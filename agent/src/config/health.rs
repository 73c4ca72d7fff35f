//! `[[health]]`: the health checks of the configuration (docs/takeover.md),
//! parsed and validated; `services::health` runs them.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::common::{ConfigError, Ctx};


/// The fault kinds a check may raise (what the partner is told).
pub const FAULT_KINDS: &[&str] = &["disk", "network", "memory", "application", "operator"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    Command { line: String },
    Writable { path: PathBuf },
    Carrier { interface: String },
    Disk { disk: String },
    Systemd { unit: String },
    Reachable { address: std::net::SocketAddr, by_partner: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub name: String,
    pub kind: CheckKind,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub threshold: u32,
    pub fault: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    name: Spanned<String>,
    kind: Spanned<String>,
    command: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    interface: Option<Spanned<String>>,
    disk: Option<Spanned<String>>,
    unit: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    by: Option<Spanned<String>>,
    interval_ms: Option<Spanned<i64>>,
    timeout_ms: Option<Spanned<i64>>,
    threshold: Option<Spanned<i64>>,
    fault: Spanned<String>,
}

pub(crate) fn validate(cx: &Ctx, raw: &[Spanned<RawHealth>], disks: &[super::common::Disk]) -> Result<Vec<HealthCheck>, ConfigError> {
    let mut out: Vec<HealthCheck> = Vec::new();
    for (i, h) in raw.iter().enumerate() {
        let hr = h.get_ref();
        let key = |k: &str| format!("health[{i}].{k}");
        let name = hr.name.get_ref().clone();
        let ok_name = !name.is_empty() && name.len() <= 32 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok_name {
            return Err(cx.invalid(&hr.name, &key("name"), format!("{name:?} must be 1-32 characters of a-z, 0-9, '-' or '_'")));
        }
        if out.iter().any(|c| c.name == name) {
            return Err(cx.invalid(&hr.name, &key("name"), format!("duplicate health check name {name:?}")));
        }
        let need = |v: &Option<Spanned<String>>, k: &str| -> Result<Spanned<String>, ConfigError> {
            v.clone().ok_or_else(|| cx.invalid(&hr.kind, &key(k), format!("a {:?} check needs `{k}`", hr.kind.get_ref())))
        };
        let kind = match hr.kind.get_ref().as_str() {
            "command" => CheckKind::Command { line: cx.command(&need(&hr.command, "command")?, &key("command"))? },
            "writable" => {
                let p = need(&hr.path, "path")?;
                let pb = PathBuf::from(p.get_ref());
                if !pb.is_absolute() {
                    return Err(cx.invalid(&p, &key("path"), "must be an absolute directory"));
                }
                CheckKind::Writable { path: pb }
            }
            "carrier" => CheckKind::Carrier { interface: need(&hr.interface, "interface")?.into_inner() },
            "disk" => {
                let d = need(&hr.disk, "disk")?;
                if !disks.iter().any(|x| &x.name == d.get_ref()) {
                    return Err(cx.invalid(&d, &key("disk"), format!("{:?} is not a [[disk]] of this node", d.get_ref())));
                }
                CheckKind::Disk { disk: d.into_inner() }
            }
            "systemd" => CheckKind::Systemd { unit: need(&hr.unit, "unit")?.into_inner() },
            "reachable" => {
                let a = need(&hr.address, "address")?;
                let address = a.get_ref().parse().map_err(|_| cx.invalid(&a, &key("address"), format!("{:?} is not an ADDRESS:PORT", a.get_ref())))?;
                let by_partner = match hr.by.as_ref().map(|b| b.get_ref().as_str()) {
                    None | Some("self") => false,
                    Some("partner") => true,
                    Some(other) => return Err(cx.invalid(hr.by.as_ref().unwrap(), &key("by"), format!("{other:?}: use \"self\" or \"partner\""))),
                };
                CheckKind::Reachable { address, by_partner }
            }
            other => {
                return Err(cx.invalid(
                    &hr.kind,
                    &key("kind"),
                    format!("unknown kind {other:?}: use command, writable, carrier, disk, systemd or reachable"),
                ))
            }
        };
        if let Some(by) = hr.by.as_ref().filter(|_| !matches!(kind, CheckKind::Reachable { .. })) {
            return Err(cx.invalid(by, &key("by"), "only a \"reachable\" check can be run by the partner"));
        }
        let fault = hr.fault.get_ref().clone();
        if !FAULT_KINDS.contains(&fault.as_str()) {
            return Err(cx.invalid(&hr.fault, &key("fault"), format!("unknown fault kind {fault:?}: use {}", FAULT_KINDS.join(", "))));
        }
        let interval_ms = hr.interval_ms.as_ref().map(|v| cx.int(v, &key("interval_ms"), 50, 3_600_000)).transpose()?.unwrap_or(1000);
        let timeout_ms = hr.timeout_ms.as_ref().map(|v| cx.int(v, &key("timeout_ms"), 10, 600_000)).transpose()?.unwrap_or(5000);
        let threshold = hr.threshold.as_ref().map(|v| cx.int(v, &key("threshold"), 1, 1000)).transpose()?.unwrap_or(3);
        out.push(HealthCheck { name, kind, interval_ms, timeout_ms, threshold, fault });
    }
    Ok(out)
}
