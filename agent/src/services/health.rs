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

use std::path::Path;
use std::time::Duration;

pub use crate::config::health::{CheckKind, HealthCheck, FAULT_KINDS};

/// Why one run of a health check found this node unhealthy. The text is
/// what the log and the takeover's fault reason show.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// A `command` check's command failed (exit code, signal, timeout).
    #[error("{source}")]
    Command {
        #[source]
        source: crate::services::resource::ResourceError,
    },
    #[error("no disk {disk:?}")]
    NoDisk { disk: String },
    /// A `disk` check's SCSI command failed.
    #[error("{source}")]
    Scsi {
        #[source]
        source: baton_scsi::Error,
    },
    #[error("this node's key {key:#x} is not registered on {}", device.display())]
    KeyNotRegistered { key: u64, device: std::path::PathBuf },
    /// A blocking check's task panicked or was cancelled.
    #[error("{source}")]
    Task {
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{unit}: {source}")]
    Bus {
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("systemctl: {source}")]
    Systemctl {
        #[source]
        source: std::io::Error,
    },
    #[error("{unit} is {state}")]
    UnitNotActive { unit: String, state: String },
    /// A `writable` check's file could not be created, written, synced or removed.
    #[error("{}: {step}{source}", path.display())]
    Writable {
        path: std::path::PathBuf,
        /// "" or "fsync: ".
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{interface}: no carrier")]
    NoCarrier { interface: String },
    #[error("{interface}: {source} (no such interface, or it is down)")]
    NoInterface {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{address}: {source}")]
    Connect {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{address}: no answer within {ms} ms")]
    NoAnswer { address: std::net::SocketAddr, ms: u128 },
    /// The whole check did not finish within its timeout.
    #[error("no result within {timeout_ms} ms")]
    Timeout { timeout_ms: u32 },
}

/// One run of a check: `Ok` healthy, `Err(why)` not.
pub async fn run_check(check: &HealthCheck, cfg: &crate::config::Config) -> Result<(), HealthError> {
    let timeout = Duration::from_millis(check.timeout_ms as u64);
    let fut = async {
        match &check.kind {
            CheckKind::Command { line } => {
                let env = [("BATON_HEALTH".to_string(), check.name.clone())];
                match crate::services::resource::run_hook(&check.name, crate::services::resource::Action::Monitor, line, &env, timeout).await {
                    Ok(_) => Ok(()),
                    Err(source) => Err(HealthError::Command { source }),
                }
            }
            CheckKind::Writable { path } => writable(path).await,
            CheckKind::Carrier { interface } => carrier(interface),
            CheckKind::Disk { disk } => {
                let d = cfg.disks.iter().find(|d| &d.name == disk).cloned().ok_or_else(|| HealthError::NoDisk { disk: disk.clone() })?;
                let me = cfg.disk_key(cfg.node_id);
                tokio::task::spawn_blocking(move || -> Result<(), HealthError> {
                    let scsi = |source| HealthError::Scsi { source };
                    let dev = baton_scsi::Device::open(&d.device).map_err(scsi)?.with_timeout(Duration::from_millis(d.timeout_ms as u64));
                    dev.test_unit_ready().or_else(|e| if e.is_retryable() { dev.test_unit_ready() } else { Err(e) }).map_err(scsi)?;
                    if !dev.read_keys().map_err(scsi)?.contains(me) {
                        return Err(HealthError::KeyNotRegistered { key: me, device: d.device.clone() });
                    }
                    Ok(())
                })
                .await
                .map_err(|source| HealthError::Task { source })?
            }
            CheckKind::Systemd { unit } => {
                // systemd's D-Bus API (src/sdbus.rs), systemctl without a bus.
                let state = match crate::services::sdbus::get().await {
                    Some(sd) => sd.active_state(unit).await.map_err(|source| HealthError::Bus { unit: unit.clone(), source: Box::new(source) })?,
                    None => {
                        let out = tokio::process::Command::new("systemctl")
                            .args(["is-active", unit])
                            .output()
                            .await
                            .map_err(|source| HealthError::Systemctl { source })?;
                        String::from_utf8_lossy(&out.stdout).trim().to_string()
                    }
                };
                if state == "active" {
                    Ok(())
                } else {
                    Err(HealthError::UnitNotActive { unit: unit.clone(), state })
                }
            }
            CheckKind::Reachable { address, .. } => reachable(*address, timeout).await,
        }
    };
    match tokio::time::timeout(timeout + Duration::from_millis(100), fut).await {
        Ok(r) => r,
        Err(_) => Err(HealthError::Timeout { timeout_ms: check.timeout_ms }),
    }
}

async fn writable(dir: &Path) -> Result<(), HealthError> {
    let path = dir.join(format!(".baton-health-{}", std::process::id()));
    let p = path.clone();
    tokio::task::spawn_blocking(move || -> Result<(), HealthError> {
        use std::io::Write;
        let at = |step: &'static str| {
            let path = p.clone();
            move |source| HealthError::Writable { path, step, source }
        };
        let mut f = std::fs::File::create(&p).map_err(at(""))?;
        f.write_all(b"baton health check\n").map_err(at(""))?;
        f.sync_all().map_err(at("fsync: "))?;
        std::fs::remove_file(&p).map_err(at(""))
    })
    .await
    .map_err(|source| HealthError::Task { source })?
}

fn carrier(interface: &str) -> Result<(), HealthError> {
    let p = format!("/sys/class/net/{interface}/carrier");
    match std::fs::read_to_string(&p) {
        Ok(s) if s.trim() == "1" => Ok(()),
        Ok(_) => Err(HealthError::NoCarrier { interface: interface.to_string() }),
        Err(source) => Err(HealthError::NoInterface { interface: interface.to_string(), source }),
    }
}

/// A TCP connect within `timeout`.
pub async fn reachable(address: std::net::SocketAddr, timeout: Duration) -> Result<(), HealthError> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(HealthError::Connect { address, source }),
        Err(_) => Err(HealthError::NoAnswer { address, ms: timeout.as_millis() }),
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
                    Err(e) => {
                        let reason = e.to_string();
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

    fn cfg(extra: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let text = format!(
            "[cluster]\nname = \"t\"\nid = 1\nsecret_file = \"/s\"\n[node]\nid = 1\nname = \"n1\"\n\
             [[link]]\nname = \"r0\"\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\n\
             [[peer]]\nid = 2\nname = \"n2\"\naddresses = [\"10.0.0.2\"]\n{extra}"
        );
        crate::config::parse(Path::new("t.toml"), &text)
    }

    #[test]
    fn checks_are_validated_with_file_line_and_key() {
        let c = cfg("[[health]]\nname = \"fs\"\nkind = \"writable\"\npath = \"/srv\"\nfault = \"disk\"\n").unwrap();
        assert_eq!(c.health[0].kind, CheckKind::Writable { path: "/srv".into() });
        assert_eq!((c.health[0].interval_ms, c.health[0].timeout_ms, c.health[0].threshold), (1000, 5000, 3));
        let e = cfg("[[health]]\nname = \"fs\"\nkind = \"writable\"\npath = \"/srv\"\nfault = \"cosmic-rays\"\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:20: `health[0].fault`: unknown fault kind \"cosmic-rays\""), "{e}");
        let e = cfg("[[health]]\nname = \"x\"\nkind = \"telepathy\"\nfault = \"disk\"\n").unwrap_err().to_string();
        assert!(e.contains("`health[0].kind`: unknown kind \"telepathy\""), "{e}");
        let e = cfg("[[health]]\nname = \"x\"\nkind = \"command\"\nfault = \"disk\"\n").unwrap_err().to_string();
        assert!(e.contains("`health[0].command`: a \"command\" check needs `command`"), "{e}");
        let e = cfg("[[health]]\nname = \"x\"\nkind = \"disk\"\ndisk = \"nope\"\nfault = \"disk\"\n").unwrap_err().to_string();
        assert!(e.contains("\"nope\" is not a [[disk]]"), "{e}");
        let e = cfg("[[health]]\nname = \"x\"\nkind = \"command\"\ncommand = \"true\"\nby = \"partner\"\nfault = \"disk\"\n").unwrap_err().to_string();
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
        assert!(matches!(r, Err(HealthError::Timeout { timeout_ms: 200 }) | Err(HealthError::Command { .. })), "{r:?}");
        assert!(t0.elapsed() < Duration::from_millis(1000), "took {:?}", t0.elapsed());
        // Its whole process group was killed: the `touch` never ran.
        std::thread::sleep(Duration::from_millis(700));
        assert!(!marker.exists(), "the check's process group outlived its timeout");
    }

    /// The texts of failing checks (the log's reason and the takeover's
    /// fault reason) name what failed and where.
    #[tokio::test]
    async fn failing_checks_say_what_and_where() {
        let e = carrier("baton-nope0").unwrap_err();
        assert!(matches!(e, HealthError::NoInterface { .. }), "{e:?}");
        assert!(e.to_string().starts_with("baton-nope0: ") && e.to_string().ends_with("(no such interface, or it is down)"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        // A closed port on loopback: refused at once.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = reachable(addr, Duration::from_millis(500)).await.unwrap_err();
        assert!(matches!(e, HealthError::Connect { .. }), "{e:?}");
        assert!(e.to_string().starts_with(&format!("{addr}: ")), "{e}");
        let e = writable(Path::new("/nonexistent-baton-dir")).await.unwrap_err();
        assert!(e.to_string().starts_with(&format!("/nonexistent-baton-dir/.baton-health-{}: ", std::process::id())), "{e}");
        assert_eq!(HealthError::Timeout { timeout_ms: 200 }.to_string(), "no result within 200 ms");
        assert_eq!(HealthError::UnitNotActive { unit: "web.service".into(), state: "failed".into() }.to_string(), "web.service is failed");
    }
}
