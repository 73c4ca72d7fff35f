//! The event log, `<state_dir>/events.jsonl` (docs/events.md): the one
//! writer of its lines.
//!
//! Every module that records an event calls [`record`] (an agent event: a
//! JSON object with `event`) or [`append_line`] (a line already stamped,
//! such as the datapath's peer events). A line is written with one
//! `write` on a file opened with `O_APPEND`, so lines of concurrent writers
//! (the event loop, spawned tasks, the guard process) never interleave.
//!
//! Recording an event also hands it to the publish hook: the event manager
//! (`[[on]]` actions, alerts) and the metrics, which sit above this leaf in
//! the layout (docs/layout.md); `daemon/run.rs` installs the hook with
//! [`set_publisher`] before anything of the node starts.

use std::io::{self, Write};
use std::path::Path;
use std::sync::OnceLock;

use crate::clock::monotonic_ns;

static PUBLISH: OnceLock<fn(&serde_json::Value)> = OnceLock::new();

/// Installs the publish hook (once per process; later calls are ignored).
pub fn set_publisher(publish: fn(&serde_json::Value)) {
    let _ = PUBLISH.set(publish);
}

/// Hands an event to the publish hook, if one is installed.
pub fn publish(v: &serde_json::Value) {
    if let Some(p) = PUBLISH.get() {
        p(v);
    }
}

/// Records an agent event: published, stamped with `agent_ns` (the
/// monotonic clock) and appended to the log at `path`. A log that cannot be
/// written does not stop the agent (the event still went to the hook).
pub fn record(path: &Path, mut v: serde_json::Value) {
    publish(&v);
    v["agent_ns"] = monotonic_ns().into();
    let _ = append_line(path, &v);
}

/// Appends `v` as one JSON line to the log at `path`.
pub fn append_line<T: serde::Serialize>(path: &Path, v: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_concurrent_writers_never_interleave_and_each_event_is_stamped() {
        let d = crate::test_util::fresh_dir("eventlog");
        let log = d.join("events.jsonl");
        let hs: Vec<_> = (0..4u32)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for k in 0..200u32 {
                        record(&log, serde_json::json!({"event": "test", "thread": t, "k": k, "pad": "x".repeat(3000)}));
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("a whole JSON line")).collect();
        assert_eq!(lines.len(), 800);
        assert!(lines.iter().all(|v| v["agent_ns"].as_u64().is_some_and(|t| t > 0)));
        for t in 0..4u32 {
            let ks: Vec<u64> = lines.iter().filter(|v| v["thread"] == t).map(|v| v["k"].as_u64().unwrap()).collect();
            assert_eq!(ks, (0..200).collect::<Vec<u64>>(), "thread {t}'s events out of order or lost");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
