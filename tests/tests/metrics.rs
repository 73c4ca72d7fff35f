//! Kernel tests of the Prometheus metrics (docs/metrics.md): a real
//! Prometheus server (Debian's `prometheus`, `cargo xtask setup` installs
//! it) in the client namespace scrapes a 3-node namespace cluster every
//! second; its HTTP API must show `up` = 1 for the three targets and baton
//! metrics with the values the cluster has; `promtool check metrics` accepts
//! a scrape; a metrics port in use is one clear error at start.
//!
//! Needs root; under CI=true a skip is a failure.

use std::process::{Child, Command};
use std::time::Duration;

use baton_tests::svc::*;
use baton_tests::*;
use serde_json::Value;

const PORT: u16 = 9745;

/// Kills the Prometheus server (and its process group) on drop.
struct Prom(Child);

impl Drop for Prom {
    fn drop(&mut self) {
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

fn curl(ns: &str, url: &str) -> Option<String> {
    let out = Command::new("ip").args(["netns", "exec", ns, "curl", "-sf", "--max-time", "3", url]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// `query` through Prometheus's HTTP API: (instance, value) pairs.
fn query(ns: &str, q: &str) -> Vec<(String, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sfG", "--max-time", "3", "--data-urlencode"])
        .arg(format!("query={q}"))
        .arg("http://127.0.0.1:9090/api/v1/query")
        .output();
    let Ok(out) = out else { return Vec::new() };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["metric"]["instance"].as_str().unwrap_or("").to_string(), r["value"][1].as_str().unwrap_or("").to_string()))
        .collect()
}

fn metrics_group() -> String {
    format!("{}\n[metrics]\nlisten = \"@IP@:{PORT}\"\nallow_remote = true\n", web_group("costly", ""))
}

#[test]
fn a_real_prometheus_scrapes_every_node_and_promtool_accepts_the_exposition() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("met", 3, &metrics_group()).with_client();
    web_on_node1(&mut svc);
    let client = svc.client();

    // Prometheus in the client namespace, scraping the three agents.
    let dir = svc.work.join("prometheus");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let targets: Vec<String> = (0..3).map(|i| format!("\"{}:{PORT}\"", svc.c.hosts[i].addrs[0])).collect();
    let yml = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: baton\n    scrape_timeout: 900ms\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), yml).unwrap();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg("--web.listen-address=127.0.0.1:9090");
    let _prom = Prom(spawn_in_netns(&client, cmd, &dir.join("prometheus.log")));

    // `up` is 1 for the three targets.
    let mut up = Vec::new();
    let ok = wait_until(Duration::from_secs(30), || {
        up = query(&client, "up");
        up.len() == 3 && up.iter().all(|(_, v)| v == "1")
    });
    svc.check(ok.is_some(), || {
        format!("Prometheus does not see 3 targets up: {up:?}\n{}", std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default())
    });
    eprintln!("up: {up:?}");
    // Baton metrics with the cluster's values, from every node.
    let expect = |q: &str, want: &str| {
        let mut got = Vec::new();
        let ok = wait_until(Duration::from_secs(10), || {
            got = query(&client, q);
            got.len() == 3 && got.iter().all(|(_, v)| v == want)
        });
        svc.check(ok.is_some(), || format!("{q}: expected {want} from the 3 nodes, got {got:?}"));
        eprintln!("{q}: {got:?}");
    };
    expect("baton_membership_members", "3");
    expect("ha_cluster_corosync_quorate", "1");
    expect("baton_group_node{group=\"web\"}", "1");
    expect("sum by (instance) (baton_peer_up)", "2");
    expect("baton_scrape_success{source=\"datapath\"}", "1");
    let hb = query(&client, "baton_datapath_datagrams_total{reason=\"heartbeat_live\"}");
    svc.check(hb.len() == 3 && hb.iter().all(|(_, v)| v.parse::<f64>().unwrap_or(0.0) > 0.0), || format!("no live heartbeats counted: {hb:?}"));

    // A crash of node 3: the others see it silent, count the failure and
    // its detection latency.
    svc.crash(2);
    let mut got = Vec::new();
    let ok = wait_until(Duration::from_secs(15), || {
        got = query(&client, "baton_detection_latency_seconds_count");
        got.iter().filter(|(_, v)| v == "1").count() == 2
    });
    svc.check(ok.is_some(), || format!("detection latency not observed on the two survivors: {got:?}"));
    let survivors: Vec<String> = (0..2).map(|i| format!("{}:{PORT}", svc.c.hosts[i].addrs[0])).collect();
    let sum: Vec<(String, String)> = query(&client, "baton_detection_latency_seconds_sum").into_iter().filter(|(i, _)| survivors.contains(i)).collect();
    eprintln!("detection latency sums after node3's crash: {sum:?}");
    // 20 ms × 5 misses = 100 ms: detected at the bound, within a few
    // watchdog ticks.
    svc.check(sum.len() == 2 && sum.iter().all(|(_, v)| v.parse::<f64>().is_ok_and(|s| (0.09..0.3).contains(&s))), || format!("detection latency {sum:?}"));
    let down = format!("up{{instance=\"{}:{PORT}\"}}", svc.c.hosts[2].addrs[0]);
    let ok = wait_until(Duration::from_secs(10), || query(&client, &down).first().is_some_and(|(_, v)| v == "0"));
    svc.check(ok.is_some(), || format!("{down} did not become 0 after the crash"));

    // promtool accepts a scrape.
    let body = curl(&client, &format!("http://{}:{PORT}/metrics", svc.c.hosts[0].addrs[0])).expect("GET /metrics of node1");
    let file = dir.join("node1.metrics");
    std::fs::write(&file, &body).unwrap();
    let out = Command::new("sh").arg("-c").arg(format!("promtool check metrics < {}", file.display())).output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("promtool check metrics: {} {report}", out.status);
    svc.check(out.status.success(), || format!("promtool check metrics failed: {report}\n{body}"));
    let e404 = curl(&client, &format!("http://{}:{PORT}/other", svc.c.hosts[0].addrs[0]));
    svc.check(e404.is_none(), || "a path other than /metrics is served".into());
}

#[test]
fn a_metrics_port_in_use_is_one_clear_error_at_start() {
    if !kernel_tests_possible() {
        return;
    }
    let svc = Svc::new("mpu", 2, &format!("\n[metrics]\nlisten = \"127.0.0.1:{PORT}\"\n"));
    let ns = svc.ns(0);
    let holder = in_netns(&ns, || std::net::TcpListener::bind(("127.0.0.1", PORT)).unwrap());
    let cfg = svc.c.node_dir(0).join("baton.toml");
    std::fs::create_dir_all(svc.c.node_dir(0)).unwrap();
    std::fs::write(&cfg, format!("{}\n{}", svc.c.config_text(0), svc.group_text)).unwrap();
    let log = svc.c.node_dir(0).join("agent.log");
    let mut a = Agent::spawn(&svc.c.hosts[0].ns, &cfg, &log);
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = a.child.try_wait().unwrap();
        status.is_some()
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("{text}");
    assert!(status.is_some_and(|s| !s.success()), "the agent did not exit with an error: {status:?}");
    let want = format!("[metrics] listen = \"127.0.0.1:{PORT}\": the address is in use (another process listens there): stop it, or choose another port in metrics.listen");
    assert!(text.contains(&want), "expected {want:?} in:\n{text}");
    assert!(!text.contains("XDP program attached") && !text.contains("guard"), "the agent started something before refusing:\n{text}");
    drop(holder);
}
