//! The runtime of fencing (docs/fencing.md): the shared disks of `[[disk]]`
//! opened and checked at start, and the persistent reservation operations
//! the fencing core (`baton_core::fencing`) asks for, carried out through
//! SG_IO (`baton-scsi`) in blocking tasks. Every decision is the core's;
//! this module turns device answers into the core's [`Outcome`]s.
//!
//! With several disks an operation runs on each in turn; its outcome is the
//! first that is not plain success (preempted, a conflict with the keys of
//! that disk, unavailable, refused), so a node must be registered, and a
//! victim preempted, on every disk.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_core::fencing::{Op, OpId, Outcome};
use baton_scsi::{Device, Error as ScsiError, PrType};

use crate::config::{Config, Disk};

pub use crate::control::channel::FenceMsg;

/// Why a disk cannot be used (`baton run` refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {name:?} ({})", .device.display())]
    Device {
        name: String,
        device: PathBuf,
        #[source]
        source: ScsiError,
    },
    #[error("disk {name:?} ({}): it does not support persistent reservations of type {wanted} (the device supports: {supported}); set `type` in [[disk]]", .device.display())]
    TypeUnsupported { name: String, device: PathBuf, wanted: PrType, supported: String },
}

/// A configured disk, opened.
pub struct OpenDisk {
    pub disk: Disk,
    pub dev: Device,
}

/// Opens and checks every configured disk: it exists, it is SCSI, it
/// answers REPORT CAPABILITIES and supports the configured type.
pub fn open_disks(cfg: &Config) -> Result<Vec<OpenDisk>, DiskError> {
    let mut out = Vec::new();
    for d in &cfg.disks {
        let err = |source| DiskError::Device { name: d.name.clone(), device: d.device.clone(), source };
        let dev = Device::open(&d.device).map_err(err)?.with_timeout(Duration::from_millis(d.timeout_ms as u64));
        // A unit attention is a notice, not an answer: an earlier life's
        // key preempted (2A/05, the normal state of a node fenced and
        // restarted while its iSCSI session stayed logged in), a reset, a
        // power on. Several may be queued; each is reported once.
        let mut caps = dev.report_capabilities();
        for _ in 0..4 {
            match &caps {
                Err(ScsiError::UnitAttention { .. }) => caps = dev.report_capabilities(),
                _ => break,
            }
        }
        let caps = caps.map_err(err)?;
        if !caps.supports(d.pr_type) {
            let supported: Vec<String> = PrType::ALL.iter().filter(|t| caps.supports(**t)).map(|t| t.to_string()).collect();
            return Err(DiskError::TypeUnsupported {
                name: d.name.clone(),
                device: d.device.clone(),
                wanted: d.pr_type,
                supported: if supported.is_empty() { "none".into() } else { supported.join(", ") },
            });
        }
        out.push(OpenDisk { disk: d.clone(), dev });
    }
    Ok(out)
}

fn unavailable(e: &ScsiError) -> Outcome {
    let reason = e.to_string();
    if e.registration_lost() {
        Outcome::Preempted
    } else if e.outcome_unknown() || e.is_retryable() || matches!(e, ScsiError::NotReady { .. } | ScsiError::NotFound { .. } | ScsiError::Open { .. }) {
        Outcome::Unavailable { reason }
    } else {
        Outcome::Refused { reason }
    }
}

/// The keys registered on `dev` now, as a conflict's outcome.
fn conflict(dev: &Device) -> Outcome {
    match dev.read_keys() {
        Ok(k) => Outcome::Conflict { keys: k.keys.into_iter().collect() },
        Err(e) => unavailable(&e),
    }
}

/// Runs `f`, resending it once after a unit attention that is not about
/// our registration (the command was not executed: a reset, a power on, a
/// capacity change).
fn once_more<T>(mut f: impl FnMut() -> Result<T, ScsiError>) -> Result<T, ScsiError> {
    match f() {
        Err(e @ ScsiError::UnitAttention { .. }) if !e.registration_lost() => f(),
        r => r,
    }
}

/// One operation on one disk.
fn run_one(d: &OpenDisk, me: u64, op: &Op) -> Outcome {
    let (dev, t) = (&d.dev, d.disk.pr_type);
    match op {
        Op::Register => {
            if let Err(e) = once_more(|| dev.register_ignore(me)) {
                return unavailable(&e);
            }
            ensure_reserved(dev, me, t).unwrap_or_else(|e| unavailable(&e))
        }
        Op::Unregister => match once_more(|| dev.unregister(me)) {
            Ok(()) => Outcome::Ok { keys: None },
            Err(e) if e.is_reservation_conflict() => conflict(dev),
            Err(e) => unavailable(&e),
        },
        Op::Preempt { key, .. } => match once_more(|| dev.preempt_and_abort(me, *key, t)) {
            Ok(()) => Outcome::Ok { keys: None },
            Err(e) if e.is_reservation_conflict() => conflict(dev),
            Err(e) => unavailable(&e),
        },
        Op::Check => match once_more(|| dev.read_keys()) {
            Ok(k) => {
                let keys: BTreeSet<u64> = k.keys.into_iter().collect();
                if keys.contains(&me) {
                    // A holder that left (type 5/6) took the reservation.
                    let _ = ensure_reserved(dev, me, t);
                }
                Outcome::Ok { keys: Some(keys) }
            }
            Err(e) => unavailable(&e),
        },
    }
}

/// RESERVE with our key if nobody holds a reservation (a conflict means
/// somebody else reserved meanwhile: fine).
fn ensure_reserved(dev: &Device, me: u64, t: PrType) -> Result<Outcome, ScsiError> {
    if once_more(|| dev.read_reservation())?.reservation.is_none() {
        match once_more(|| dev.reserve(me, t)) {
            Ok(()) => tracing::info!(device = %dev.path().display(), key = format_args!("{me:#x}"), "disk reserved"),
            Err(e) if e.is_reservation_conflict() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Outcome::Ok { keys: None })
}

/// Runs `op` on every disk; the first outcome that is not success wins
/// (for a check, the keys of a disk where ours is missing, else of the
/// first disk).
pub fn run(disks: &[OpenDisk], me: u64, op: &Op) -> Outcome {
    let mut keys: Option<BTreeSet<u64>> = None;
    for d in disks {
        match run_one(d, me, op) {
            Outcome::Ok { keys: Some(k) } => {
                if !k.contains(&me) {
                    return Outcome::Ok { keys: Some(k) };
                }
                keys.get_or_insert(k);
            }
            Outcome::Ok { keys: None } => {}
            other => return other,
        }
    }
    Outcome::Ok { keys }
}

/// Runs the operations of the core in blocking tasks; their outcomes come
/// back on the channel the event loop selects on.
#[derive(Clone)]
pub struct Executor {
    disks: Arc<Vec<OpenDisk>>,
    me: u64,
    tx: tokio::sync::mpsc::Sender<(OpId, Outcome)>,
}

impl Executor {
    pub fn new(disks: Vec<OpenDisk>, me: u64) -> (Executor, tokio::sync::mpsc::Receiver<(OpId, Outcome)>) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        (Executor { disks: Arc::new(disks), me, tx }, rx)
    }

    pub fn spawn(&self, op: OpId, what: Op) {
        let (disks, me, tx) = (self.disks.clone(), self.me, self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            let outcome = run(&disks, me, &what);
            tracing::debug!(op, ?what, ?outcome, ms = t0.elapsed().as_secs_f64() * 1e3, "fencing operation");
            let _ = tx.blocking_send((op, outcome));
        });
    }
}

/// `baton storage status --json`: every configured disk read directly.
pub fn storage_status(cfg: &Config) -> serde_json::Value {
    let owner = |key: u64| -> serde_json::Value {
        match baton_scsi::key_owner(key) {
            Some((c, n)) if c == cfg.cluster_id => {
                let name = if n == cfg.node_id { cfg.node_name.clone() } else { cfg.peer_name(n) };
                serde_json::json!({"id": n, "name": name})
            }
            Some((c, n)) => serde_json::json!({"cluster_id": c, "id": n}),
            None => serde_json::Value::Null,
        }
    };
    let disks: Vec<serde_json::Value> = cfg
        .disks
        .iter()
        .map(|d| {
            let base = serde_json::json!({"name": d.name, "device": d.device.display().to_string(), "type": d.pr_type.to_string()});
            let read = || -> Result<serde_json::Value, ScsiError> {
                let dev = Device::open(&d.device)?.with_timeout(Duration::from_millis(d.timeout_ms as u64));
                let keys = dev.read_keys()?;
                let res = dev.read_reservation()?;
                Ok(serde_json::json!({
                    "generation": keys.generation,
                    "keys": keys.keys.iter().map(|k| serde_json::json!({"key": format!("{k:#018x}"), "node": owner(*k)})).collect::<Vec<_>>(),
                    "reservation": res.reservation.map(|r| serde_json::json!({
                        "key": format!("{:#018x}", r.key),
                        "holder": if r.key == 0 { serde_json::json!("every registrant") } else { owner(r.key) },
                        "type": r.pr_type().map(|t| t.to_string()).unwrap_or_else(|| format!("code {}", r.type_code)),
                    })),
                }))
            };
            let mut v = base;
            match read() {
                Ok(r) => {
                    for (k, x) in r.as_object().into_iter().flatten() {
                        v[k] = x.clone();
                    }
                }
                Err(e) => v["error"] = e.to_string().into(),
            }
            v
        })
        .collect();
    serde_json::json!({"cluster_id": cfg.cluster_id, "this_node_key": format!("{:#018x}", cfg.disk_key(cfg.node_id)), "disks": disks})
}

/// The table of `baton storage status`.
pub fn render_storage(v: &serde_json::Value) -> String {
    let mut s = String::new();
    let disks = v["disks"].as_array().cloned().unwrap_or_default();
    if disks.is_empty() {
        return "no [[disk]] is configured\n".into();
    }
    let who = |n: &serde_json::Value| -> String {
        match (n["name"].as_str(), n["id"].as_u64(), n["cluster_id"].as_u64()) {
            (Some(name), Some(id), _) => format!("{name} (node {id})"),
            (None, Some(id), Some(c)) => format!("node {id} of cluster {c}"),
            _ if n.is_string() => n.as_str().unwrap_or_default().to_string(),
            _ => "unknown".into(),
        }
    };
    for d in disks {
        s += &format!("disk {} ({}), type {}\n", d["name"].as_str().unwrap_or("?"), d["device"].as_str().unwrap_or("?"), d["type"].as_str().unwrap_or("?"));
        if let Some(e) = d["error"].as_str() {
            s += &format!("  cannot read it: {e}\n");
            continue;
        }
        s += &format!("  PR generation {}\n", d["generation"]);
        match d["reservation"].as_object() {
            Some(r) => s += &format!("  reservation: {} held by {} ({})\n", r["type"].as_str().unwrap_or("?"), who(&r["holder"]), r["key"].as_str().unwrap_or("?")),
            None => s += "  reservation: none\n",
        }
        s += &format!("  {:<20} {}\n", "KEY", "NODE");
        for k in d["keys"].as_array().into_iter().flatten() {
            s += &format!("  {:<20} {}\n", k["key"].as_str().unwrap_or("?"), who(&k["node"]));
        }
    }
    s
}
