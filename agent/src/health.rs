//! Health checks that diagnose this node (S2.1; docs/takeover.md): the
//! `[[health]]` entries of the configuration, run periodically. A check
//! that fails `threshold` times in a row raises a fault of its kind (the
//! negotiated takeover asks the partner to take this node's work over); the
//! node is cured once every check passed for `takeover.cure_ms`.
//!
//! Kinds: `command` (exit 0 is healthy), `writable` (create, write, fsync
//! and remove a file in a directory), `carrier` (an interface's carrier is
//! up), `disk` (a `[[disk]]` answers TEST UNIT READY and still has this
//! node's key), `systemd` (a unit is active), `reachable` (a TCP connect to
//! an address; `by = "partner"`: the partner node runs it against this node,
//! claim 24 of seed 002). Every check has a timeout; a command that hangs is
//! killed with its process group.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Ctx};

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

pub(crate) fn validate(cx: &Ctx, raw: &[Spanned<RawHealth>], disks: &[crate::config::Disk]) -> Result<Vec<HealthCheck>, ConfigError> {
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

/// One run of a check: `Ok` healthy, `Err(why)` not.
pub async fn run_check(check: &HealthCheck, cfg: &crate::config::Config) -> Result<(), String> {
    let timeout = Duration::from_millis(check.timeout_ms as u64);
    let fut = async {
        match &check.kind {
            CheckKind::Command { line } => {
                let env = [("BATON_HEALTH".to_string(), check.name.clone())];
                match crate::resource::run_hook(&check.name, crate::resource::Action::Monitor, line, &env, timeout).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
            CheckKind::Writable { path } => writable(path).await,
            CheckKind::Carrier { interface } => carrier(interface),
            CheckKind::Disk { disk } => {
                let d = cfg.disks.iter().find(|d| &d.name == disk).cloned().ok_or_else(|| format!("no disk {disk:?}"))?;
                let me = cfg.disk_key(cfg.node_id);
                tokio::task::spawn_blocking(move || -> Result<(), String> {
                    let dev = baton_scsi::Device::open(&d.device).map_err(|e| e.to_string())?.with_timeout(Duration::from_millis(d.timeout_ms as u64));
                    dev.test_unit_ready().or_else(|e| if e.is_retryable() { dev.test_unit_ready() } else { Err(e) }).map_err(|e| e.to_string())?;
                    if !dev.read_keys().map_err(|e| e.to_string())?.contains(me) {
                        return Err(format!("this node's key {me:#x} is not registered on {}", d.device.display()));
                    }
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())?
            }
            CheckKind::Systemd { unit } => {
                // systemd's D-Bus API (src/sdbus.rs), systemctl without a bus.
                let state = match crate::sdbus::get().await {
                    Some(sd) => sd.active_state(unit).await.map_err(|e| format!("{unit}: {e}"))?,
                    None => {
                        let out = tokio::process::Command::new("systemctl").args(["is-active", unit]).output().await.map_err(|e| format!("systemctl: {e}"))?;
                        String::from_utf8_lossy(&out.stdout).trim().to_string()
                    }
                };
                if state == "active" {
                    Ok(())
                } else {
                    Err(format!("{unit} is {state}"))
                }
            }
            CheckKind::Reachable { address, .. } => reachable(*address, timeout).await,
        }
    };
    match tokio::time::timeout(timeout + Duration::from_millis(100), fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no result within {} ms", check.timeout_ms)),
    }
}

async fn writable(dir: &Path) -> Result<(), String> {
    let path = dir.join(format!(".baton-health-{}", std::process::id()));
    let p = path.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        use std::io::Write;
        let mut f = std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        f.write_all(b"baton health check\n").map_err(|e| format!("{}: {e}", p.display()))?;
        f.sync_all().map_err(|e| format!("{}: fsync: {e}", p.display()))?;
        std::fs::remove_file(&p).map_err(|e| format!("{}: {e}", p.display()))
    })
    .await
    .map_err(|e| e.to_string())?
}

fn carrier(interface: &str) -> Result<(), String> {
    let p = format!("/sys/class/net/{interface}/carrier");
    match std::fs::read_to_string(&p) {
        Ok(s) if s.trim() == "1" => Ok(()),
        Ok(_) => Err(format!("{interface}: no carrier")),
        Err(e) => Err(format!("{interface}: {e} (no such interface, or it is down)")),
    }
}

/// A TCP connect within `timeout`.
pub async fn reachable(address: std::net::SocketAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{address}: {e}")),
        Err(_) => Err(format!("{address}: no answer within {} ms", timeout.as_millis())),
    }
}

/// What the health runner tells the event loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthEvent {
    /// A check crossed its threshold.
    Fault { check: String, fault: String, reason: String },
    /// A failing check passes again.
    Recovered { check: String },
}

/// Runs every check of this node (those a partner runs against it
/// excepted) in its own task; crossing the threshold (and recovering) is
/// reported on the returned channel.
pub fn spawn(cfg: &crate::config::Config) -> Option<tokio::sync::mpsc::Receiver<HealthEvent>> {
    let own: Vec<HealthCheck> = cfg.health.iter().filter(|c| !matches!(c.kind, CheckKind::Reachable { by_partner: true, .. })).cloned().collect();
    if own.is_empty() {
        return None;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    for c in own {
        let (tx, cfg) = (tx.clone(), cfg.clone());
        tokio::spawn(async move {
            let mut fails = 0u32;
            // (The first success is reported too: a node restarted after a
            // fault learns that it is healthy now, and its cure period runs.)
            let mut faulty = true;
            let mut every = tokio::time::interval(Duration::from_millis(c.interval_ms as u64));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let r = run_check(&c, &cfg).await;
                tracing::debug!(check = %c.name, result = ?r, "health check");
                match r {
                    Ok(()) => {
                        fails = 0;
                        if faulty {
                            faulty = false;
                            if tx.send(HealthEvent::Recovered { check: c.name.clone() }).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(reason) => {
                        fails += 1;
                        if fails == 1 || fails == c.threshold {
                            tracing::warn!(check = %c.name, fails, threshold = c.threshold, reason, "health check failed");
                        }
                        if fails >= c.threshold && !faulty {
                            faulty = true;
                            if tx.send(HealthEvent::Fault { check: c.name.clone(), fault: c.fault.clone(), reason }).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
    }
    Some(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[cluster]\nname = \"t\"\nid = 1\nsecret_file = \"/s\"\n[node]\nid = 1\nname = \"n1\"\n\
             [[link]]\nname = \"r0\"\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\n\
             [[peer]]\nid = 2\nname = \"n2\"\naddresses = [\"10.0.0.2\"]\n{extra}"
        );
        crate::config::parse(Path::new("t.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn checks_are_validated_with_file_line_and_key() {
        let c = cfg("[[health]]\nname = \"fs\"\nkind = \"writable\"\npath = \"/srv\"\nfault = \"disk\"\n").unwrap();
        assert_eq!(c.health[0].kind, CheckKind::Writable { path: "/srv".into() });
        assert_eq!((c.health[0].interval_ms, c.health[0].timeout_ms, c.health[0].threshold), (1000, 5000, 3));
        let e = cfg("[[health]]\nname = \"fs\"\nkind = \"writable\"\npath = \"/srv\"\nfault = \"cosmic-rays\"\n").unwrap_err();
        assert!(e.starts_with("t.toml:20: `health[0].fault`: unknown fault kind \"cosmic-rays\""), "{e}");
        let e = cfg("[[health]]\nname = \"x\"\nkind = \"telepathy\"\nfault = \"disk\"\n").unwrap_err();
        assert!(e.contains("`health[0].kind`: unknown kind \"telepathy\""), "{e}");
        let e = cfg("[[health]]\nname = \"x\"\nkind = \"command\"\nfault = \"disk\"\n").unwrap_err();
        assert!(e.contains("`health[0].command`: a \"command\" check needs `command`"), "{e}");
        let e = cfg("[[health]]\nname = \"x\"\nkind = \"disk\"\ndisk = \"nope\"\nfault = \"disk\"\n").unwrap_err();
        assert!(e.contains("\"nope\" is not a [[disk]]"), "{e}");
        let e = cfg("[[health]]\nname = \"x\"\nkind = \"command\"\ncommand = \"true\"\nby = \"partner\"\nfault = \"disk\"\n").unwrap_err();
        assert!(e.contains("only a \"reachable\" check"), "{e}");
        let c = cfg("[[health]]\nname = \"web\"\nkind = \"reachable\"\naddress = \"10.0.0.1:80\"\nby = \"partner\"\nfault = \"network\"\n").unwrap();
        assert!(matches!(c.health[0].kind, CheckKind::Reachable { by_partner: true, .. }));
    }

    #[tokio::test]
    async fn a_check_that_hangs_is_killed_at_its_timeout() {
        let c = cfg("").unwrap();
        let marker = std::env::temp_dir().join(format!("baton-hang-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let check = HealthCheck {
            name: "hang".into(),
            kind: CheckKind::Command { line: format!("sleep 0.5 && touch {}; sleep 30", marker.display()) },
            interval_ms: 1000,
            timeout_ms: 200,
            threshold: 1,
            fault: "application".into(),
        };
        let t0 = std::time::Instant::now();
        let r = run_check(&check, &c).await;
        assert!(r.is_err(), "{r:?}");
        assert!(t0.elapsed() < Duration::from_millis(1000), "took {:?}", t0.elapsed());
        // Its whole process group was killed: the `touch` never ran.
        std::thread::sleep(Duration::from_millis(700));
        assert!(!marker.exists(), "the check's process group outlived its timeout");
    }
}
