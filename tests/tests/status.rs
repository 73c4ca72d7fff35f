//! `baton status`: the JSON document against its documentation
//! (docs/status-json.md), and `--watch`.
//!
//! Needs root; under CI=true a skip is a failure.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use baton_tests::svc::*;
use baton_tests::*;
use serde_json::Value;

/// The documented field paths: the first backticked word of each row of
/// the tables of docs/status-json.md, with whether it is always present.
fn documented() -> Vec<(String, bool)> {
    let doc = include_str!("../../docs/status-json.md");
    doc.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let path = l[3..].split('`').next().unwrap().to_string();
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            (path, cols.get(3).is_some_and(|p| *p == "always"))
        })
        .collect()
}

/// Every field path of `v` in the documentation's notation: `a.b`, `a[]`
/// for array elements, `a.{name}` where the documentation says `a` is a map
/// (its keys are data, e.g. node ids).
fn paths(v: &Value, prefix: &str, maps: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    match v {
        Value::Object(m) => {
            let map_key = maps.iter().find(|p| p.starts_with(&format!("{prefix}.{{")) && p[prefix.len() + 1..].find('.').is_none()).cloned();
            for (k, child) in m {
                let p = match &map_key {
                    Some(mk) if !prefix.is_empty() => mk.clone(),
                    _ => join(k),
                };
                out.insert(p.clone());
                paths(child, &p, maps, out);
            }
        }
        Value::Array(a) => {
            let p = format!("{prefix}[]");
            for child in a {
                out.insert(p.clone());
                paths(child, &p, maps, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_status_json_has_exactly_the_documented_fields_and_watch_refreshes() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("sts", 3, &web_group("costly", "")).with_client();
    web_on_node1(&mut svc);
    // agent.json (with the sender's counters and the config object) is
    // written every second.
    std::thread::sleep(Duration::from_millis(1500));
    let v = svc.status(1);
    let doc = documented();
    let maps: BTreeSet<String> = doc.iter().map(|(p, _)| p.clone()).filter(|p| p.contains(".{")).collect();
    let mut seen = BTreeSet::new();
    paths(&v, "", &maps, &mut seen);
    let documented: BTreeSet<String> = doc.iter().map(|(p, _)| p.clone()).collect();
    let undocumented: Vec<&String> = seen.iter().filter(|p| !documented.contains(*p)).collect();
    let missing: Vec<&String> = doc.iter().filter(|(p, always)| *always && !seen.contains(p)).map(|(p, _)| p).collect();
    assert!(undocumented.is_empty(), "fields of `baton status --json` not in docs/status-json.md: {undocumented:#?}");
    assert!(missing.is_empty(), "documented fields (always present) missing from `baton status --json`: {missing:#?}");
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["services"][0]["name"], "web");

    // --watch: a view every 0.2 s (not a terminal: one after the other).
    let cfg = svc.c.node_dir(1).join("baton.toml");
    let out = Command::new("timeout")
        .args(["1.1", baton_bin().to_str().unwrap(), "status", "--watch", "--interval", "0.2", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let views = text.matches("baton status (every 0.2 s; Ctrl-C to stop)").count();
    assert!(views >= 3, "--watch showed {views} views in 1.1 s:\n{text}");
    assert!(text.contains("web") && text.contains("PEER"), "{text}");
    let out = Command::new("timeout")
        .args(["0.7", baton_bin().to_str().unwrap(), "status", "--watch", "--json", "--interval", "0.2", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("one JSON document per line")).collect();
    assert!(docs.len() >= 2 && docs.iter().all(|d| d["schema_version"] == 1), "{docs:?}");

    // Piped into `head -1`: the reader goes away after the first document
    // and the next write ends the command quietly (SIGPIPE), not with a
    // panic on EPIPE.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "timeout 3 '{}' status --watch --json --interval 0.1 --config '{}' | head -1 >/dev/null",
            baton_bin().display(),
            cfg.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "`baton status --json | head -1`: {err}");
}
