//! systemd integration (issue 14, item 2), with real agents in network
//! namespaces (no systemd runs on the test machines, so its parts are
//! stood in for by the real mechanisms they use):
//!
//! * the notification protocol: a real `AF_UNIX` datagram socket (a path,
//!   and an abstract name) as `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` set: the
//!   messages the agent really sends (READY=1 with the datapath attached,
//!   STATUS= on changes, WATCHDOG=1 from the event loop, STOPPING=1 on a
//!   graceful leave, the halted status) and its exit codes (0 stopped, 3
//!   halted for good, 78 unusable host);
//! * the unit's capabilities: the agents of a 3-node cluster run under
//!   `setpriv` with exactly the unit's `CapabilityBoundingSet=` (parsed from
//!   `packaging/baton.service`), serve a floating address and fail over;
//!   without CAP_BPF the agent names it and exits 78;
//! * `systemd-analyze verify` accepts the unit.
//!
//! Needs root; under CI=true a skip is a failure.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baton_tests::svc::*;
use baton_tests::*;

fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/baton.service")
}

/// The values of `key=` in the unit (space-separated, all lines).
fn unit_values(key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(unit_file()).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// The unit's bounding set as `setpriv` arguments ("-all,+bpf,+net_admin,...").
fn setpriv_caps(without: &[&str]) -> String {
    let caps = unit_values("CapabilityBoundingSet");
    assert!(caps.len() >= 5, "no CapabilityBoundingSet= in the unit: {caps:?}");
    let mut s = String::from("-all");
    for c in caps.iter().filter(|c| !without.contains(&c.as_str())) {
        s += &format!(",+{}", c.trim_start_matches("CAP_").to_lowercase());
    }
    s
}

/// Starts node `i`'s agent like `Svc::start`, but as `wrapper... baton run`
/// with `env` added.
fn start_with(svc: &mut Svc, i: usize, wrapper: &[String], env: &[(&str, String)]) {
    let cfg = svc.c.node_dir(i).join("baton.toml");
    std::fs::create_dir_all(svc.c.node_dir(i)).unwrap();
    let text = format!(
        "{}\n{}\n",
        svc.c.config_text(i),
        svc.group_text.replace("@NODE@", &svc.c.hosts[i].name).replace("@IP@", &svc.c.hosts[i].addrs[0])
    );
    std::fs::write(&cfg, text).unwrap();
    let log = svc.c.node_dir(i).join("agent.log");
    let mut cmd = match wrapper.split_first() {
        Some((w, rest)) => {
            let mut c = Command::new(w);
            c.args(rest).arg(baton_bin());
            c
        }
        None => Command::new(baton_bin()),
    };
    cmd.args(["run", "--config"]).arg(&cfg);
    for (k, v) in env {
        cmd.env(k, v);
    }
    svc.c.agents[i] = Some(Agent { child: spawn_in_netns(&svc.c.hosts[i].ns.name, cmd, &log) });
}

fn wait_control_socket(svc: &mut Svc, i: usize) {
    let sock = svc.c.control_socket(i);
    let ok = wait_until(Duration::from_secs(20), || {
        if let Some(a) = svc.c.agents[i].as_mut() {
            if let Some(st) = a.child.try_wait().unwrap() {
                panic!("agent {i} exited early ({st}):\n{}", svc.c.agent_log(i));
            }
        }
        sock.exists()
    });
    assert!(ok.is_some(), "agent {i} did not start:\n{}", svc.c.agent_log(i));
}

/// A stand-in for systemd's notification socket.
struct NotifySock {
    sock: UnixDatagram,
    /// (when received, message)
    got: Vec<(Instant, String)>,
}

impl NotifySock {
    fn path(p: &Path) -> NotifySock {
        let _ = std::fs::remove_file(p);
        NotifySock::new(UnixDatagram::bind(p).unwrap())
    }

    fn abstract_name(name: &str) -> NotifySock {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        NotifySock::new(UnixDatagram::bind_addr(&addr).unwrap())
    }

    fn new(sock: UnixDatagram) -> NotifySock {
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        NotifySock { sock, got: Vec::new() }
    }

    /// Reads what arrived (for up to `for_at_least`).
    fn drain(&mut self, for_at_least: Duration) {
        let end = Instant::now() + for_at_least;
        let mut buf = vec![0u8; 4096];
        loop {
            match self.sock.recv(&mut buf) {
                Ok(n) => self.got.push((Instant::now(), String::from_utf8_lossy(&buf[..n]).to_string())),
                Err(_) if Instant::now() >= end => return,
                Err(_) => {}
            }
        }
    }

    /// Waits until a message satisfies `pred`; returns it.
    fn wait(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let end = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            if let Some((_, m)) = self.got[seen..].iter().find(|(_, m)| pred(m)) {
                return Some(m.clone());
            }
            seen = self.got.len();
            if Instant::now() >= end {
                return None;
            }
            self.drain(Duration::from_millis(50));
        }
    }

    fn statuses(&self) -> Vec<String> {
        self.got.iter().flat_map(|(_, m)| m.lines().filter_map(|l| l.strip_prefix("STATUS=")).map(str::to_string).collect::<Vec<_>>()).collect()
    }

    fn dump(&self) -> String {
        self.got.iter().map(|(_, m)| format!("{m:?}")).collect::<Vec<_>>().join("\n")
    }
}

fn xdp_attached(ns: &str) -> bool {
    ns_sh(ns, &["ip", "link", "show", IF]).contains("xdp")
}

#[test]
fn notify_ready_status_watchdog_stopping_and_exit_codes() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("sdn", 3, &web_group("costly", "")).with_client();
    let dir = svc.c.dir.clone();
    // node2's socket has an abstract name, which belongs to a network
    // namespace: bound in node2's.
    let abstract_name = format!("baton-test-notify-{}", svc.c.prefix);
    let an = abstract_name.clone();
    let mut socks = [
        NotifySock::path(&dir.join("notify0.sock")),
        in_netns(&svc.ns(1), move || NotifySock::abstract_name(&an)),
        NotifySock::path(&dir.join("notify2.sock")),
    ];
    let notify_env = |i: usize| -> String {
        if i == 1 {
            format!("@{abstract_name}")
        } else {
            dir.join(format!("notify{i}.sock")).display().to_string()
        }
    };
    // WatchdogSec=400ms: a ping every 200 ms.
    let env = |i: usize| vec![("NOTIFY_SOCKET", notify_env(i)), ("WATCHDOG_USEC", "400000".to_string())];

    // node1 alone: ready once its datapath is attached and it waits to join.
    let e0 = env(0);
    start_with(&mut svc, 0, &[], &e0);
    let ready = socks[0].wait(Duration::from_secs(20), |m| m.lines().any(|l| l == "READY=1"));
    let attached = xdp_attached(&svc.ns(0));
    let ready = ready.unwrap_or_else(|| panic!("no READY=1 from node1: {}\n{}", socks[0].dump(), svc.c.agent_log(0)));
    assert!(attached, "READY=1 came before the XDP program was attached on {IF}");
    assert!(svc.c.control_socket(0).exists(), "READY=1 came before the control socket was bound");
    assert!(ready.contains("STATUS=") && ready.contains("MAINPID="), "READY=1 without a status line: {ready:?}");
    assert!(socks[0].got[0].1.contains("READY=1"), "something was sent before READY=1: {}", socks[0].dump());
    for i in 1..3 {
        let e = env(i);
        start_with(&mut svc, i, &[], &e);
    }
    for i in 1..3 {
        wait_control_socket(&mut svc, i);
    }
    svc.c.wait_all_joined(Duration::from_secs(20));
    svc.wait_registered("web", Duration::from_secs(20), |n| n == 1);
    for (i, s) in socks.iter_mut().enumerate() {
        let joined = s.wait(Duration::from_secs(10), |m| m.contains("STATUS=joined: cluster") && m.contains("3 of 3 nodes joined"));
        assert!(joined.is_some(), "node{}: no STATUS line with 3 of 3 joined: {:?}", i + 1, s.statuses());
        assert!(s.got.iter().any(|(_, m)| m.contains("READY=1")), "node{}: no READY=1: {}", i + 1, s.dump());
    }
    let web_here = socks[0].wait(Duration::from_secs(10), |m| m.contains("running here: web"));
    assert!(web_here.is_some(), "node1's status never showed web running there: {:?}", socks[0].statuses());

    // WATCHDOG=1 every 200 ms from the event loop.
    for s in socks.iter_mut() {
        s.got.clear();
    }
    let window = Duration::from_secs(3);
    socks[2].drain(window);
    let pings: Vec<Instant> = socks[2].got.iter().filter(|(_, m)| m.starts_with("WATCHDOG=1")).map(|(t, _)| *t).collect();
    let max_gap = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(window);
    eprintln!("watchdog: {} pings in {window:?}, longest gap {max_gap:?}", pings.len());
    assert!(pings.len() >= 8, "expected about 15 WATCHDOG=1 in {window:?} (every 200 ms), got {}: {}", pings.len(), socks[2].dump());
    assert!(max_gap < Duration::from_millis(400), "a watchdog gap of {max_gap:?} would have killed the agent (WatchdogSec=400ms)");

    // A reload (SIGHUP of the unchanged file): RELOADING=1 with
    // MONOTONIC_USEC, then READY=1 with the outcome as the status.
    socks[2].drain(Duration::from_millis(50));
    socks[2].got.clear();
    unsafe { libc::kill(svc.c.agents[2].as_ref().unwrap().pid(), libc::SIGHUP) };
    let done = socks[2].wait(Duration::from_secs(10), |m| m.contains("READY=1") && m.contains("STATUS=reloaded"));
    assert!(done.is_some(), "no READY=1 with a reloaded status after SIGHUP: {}", socks[2].dump());
    let reloading = socks[2].got.iter().position(|(_, m)| m.contains("RELOADING=1") && m.contains("MONOTONIC_USEC="));
    let ready = socks[2].got.iter().position(|(_, m)| m.contains("READY=1") && m.contains("STATUS=reloaded"));
    assert!(reloading.is_some() && reloading < ready, "RELOADING=1 (with MONOTONIC_USEC) must come before the READY=1 of the reload: {}", socks[2].dump());

    // A graceful leave: STOPPING=1, exit 0 ("stopped"). Nobody reads
    // node1's socket meanwhile: its queue fills (10 datagrams), and its
    // agent must not block on it.
    let mut a = svc.c.agents[2].take().unwrap();
    unsafe { libc::kill(a.pid(), libc::SIGTERM) };
    let mut st = None;
    let end = Instant::now() + Duration::from_secs(10);
    while st.is_none() && Instant::now() < end {
        socks[2].drain(Duration::from_millis(50));
        st = a.child.try_wait().unwrap();
    }
    let st = st.unwrap_or_else(|| panic!("node3 did not stop within 10 s of SIGTERM:\n{}", svc.c.agent_log(2)));
    socks[2].drain(Duration::from_millis(100));
    let stopping = socks[2].got.iter().find(|(_, m)| m.contains("STOPPING=1")).map(|(_, m)| m.clone());
    assert!(stopping.as_deref().is_some_and(|m| m.contains("STATUS=leaving gracefully")), "no STOPPING=1 with a leaving status: {}", socks[2].dump());
    assert_eq!(st.code(), Some(0), "SIGTERM: a graceful leave exits 0:\n{}", svc.c.agent_log(2));
    // node1 is unread since the window above; its loop still ran
    // (node3's leave was processed: it needs every node's acknowledgement).
    let two = socks[0].wait(Duration::from_secs(10), |m| m.contains("2 of 3 nodes joined"));
    assert!(two.is_some(), "node1's status did not follow node3's leave: {:?}", socks[0].statuses());

    // S0 on node2 (an operator's distress): halted for good, exit 3, and
    // the status says so.
    socks[1].drain(Duration::from_millis(100));
    let out = Command::new(baton_bin()).args(["distress", "--config"]).arg(svc.c.node_dir(1).join("baton.toml")).output().unwrap();
    assert!(out.status.success(), "baton distress: {}", String::from_utf8_lossy(&out.stderr));
    let mut a = svc.c.agents[1].take().unwrap();
    let mut code = None;
    wait_until(Duration::from_secs(15), || {
        socks[1].drain(Duration::from_millis(20));
        code = a.child.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    });
    assert_eq!(code, Some(Some(3)), "a halt for good (S0) exits 3:\n{}", svc.c.agent_log(1));
    let halted = socks[1].wait(Duration::from_secs(2), |m| m.contains("STATUS=halted ("));
    assert!(halted.is_some_and(|m| m.contains("restart the agent")), "no halted status: {:?}", socks[1].statuses());
}

/// Whether the agent of node `i` runs with exactly `caps` as its bounding set.
fn cap_bnd(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let v = s.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap();
    u64::from_str_radix(v.trim(), 16).unwrap()
}

#[test]
fn a_cluster_runs_and_fails_over_with_only_the_units_capabilities() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("scap", 3, &web_group("costly", "")).with_client();
    let wrapper: Vec<String> = vec!["setpriv".into(), format!("--bounding-set={}", setpriv_caps(&[]))];
    for i in 0..3 {
        start_with(&mut svc, i, &wrapper, &[]);
    }
    for i in 0..3 {
        wait_control_socket(&mut svc, i);
    }
    let full = cap_bnd(std::process::id() as i32);
    for i in 0..3 {
        let b = cap_bnd(svc.c.agents[i].as_ref().unwrap().pid());
        assert!(b != full && b.count_ones() as usize == unit_values("CapabilityBoundingSet").len(), "node{}: CapBnd {b:#x} is not the unit's set", i + 1);
    }
    svc.c.wait_all_joined(Duration::from_secs(20));
    svc.wait_registered("web", Duration::from_secs(20), |n| n == 1);
    svc.expect_page("node1", Duration::from_secs(10), "at the start, with the unit's capabilities");
    // Failover: node2 or node3 acquires the address, announces it, starts httpd.
    svc.crash(0);
    let on = svc.wait_registered("web", Duration::from_secs(15), |n| n != 1);
    let owner = svc.index_of(on);
    svc.expect_page(&svc.name(owner), Duration::from_secs(10), "after the failover, with the unit's capabilities");
    for i in [1, 2] {
        let log = svc.c.agent_log(i);
        for bad in ["SCHED_FIFO (", "mlockall", "PermissionDenied", "Operation not permitted", "missing capability"] {
            assert!(!log.contains(bad), "node{}: {bad:?} in the log with the unit's capabilities:\n{log}", i + 1);
        }
    }
}

/// Starts node 1's agent under `setpriv` with the unit's bounding set minus
/// `missing`, asserts that it exits 78 within 10 s, and returns its log.
fn start_without_and_expect_78(svc: &mut Svc, missing: &[&str]) -> String {
    let wrapper: Vec<String> = vec!["setpriv".into(), format!("--bounding-set={}", setpriv_caps(missing))];
    start_with(svc, 0, &wrapper, &[]);
    let mut a = svc.c.agents[0].take().unwrap();
    let mut st = None;
    wait_until(Duration::from_secs(10), || {
        st = a.child.try_wait().unwrap();
        st.is_some()
    });
    let log = svc.c.agent_log(0);
    assert_eq!(st.and_then(|s| s.code()), Some(78), "{log}");
    log
}

#[test]
fn without_cap_bpf_the_agent_names_it_and_exits_78() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("sncp", 2, "");
    let log = start_without_and_expect_78(&mut svc, &["CAP_BPF", "CAP_SYS_ADMIN"]);
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {log}");
    assert!(errors[0].contains("missing capability CAP_BPF") && !errors[0].contains("CAP_NET_ADMIN,"), "{log}");
    assert!(!svc.c.control_socket(0).exists());
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    // A root with the system's units, the unit, and the binaries at the
    // paths of ExecStart= and ExecReload= (verify checks that they are
    // executable).
    let root = test_root().join(format!("baton-verify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("lib/systemd/system")).unwrap();
    std::fs::create_dir_all(root.join("etc/baton")).unwrap();
    let cp = Command::new("cp").args(["-a", "/lib/systemd/system/."]).arg(root.join("lib/systemd/system")).status().unwrap();
    assert!(cp.success());
    std::fs::copy(unit_file(), root.join("lib/systemd/system/baton.service")).unwrap();
    std::fs::copy(baton_bin(), root.join("usr/bin/baton")).unwrap();
    // ExecReload= runs /bin/kill (procps).
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/kill", root.join("bin/kill")).unwrap();
    let verify = |root: &Path| Command::new("systemd-analyze").arg("verify").arg(format!("--root={}", root.display())).args(["--man=no", "baton.service"]).output().unwrap();
    let out = verify(&root);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify: {} {err}", out.status);
    // The check sees mistakes: an unknown key is reported.
    let text = std::fs::read_to_string(unit_file()).unwrap().replace("[Service]\n", "[Service]\nRestartt=always\n");
    std::fs::write(root.join("lib/systemd/system/baton.service"), text).unwrap();
    let out = verify(&root);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("Unknown key 'Restartt'"), "a broken unit passed: {err}");
    // The command line of ExecStart= is one the binary accepts.
    let exec = std::fs::read_to_string(unit_file()).unwrap().lines().find_map(|l| l.strip_prefix("ExecStart=").map(str::to_string)).unwrap();
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert_eq!(args, ["run", "--config", "/etc/baton/baton.toml"]);
    let help = Command::new(baton_bin()).args(["run", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config"));
    let _ = std::fs::remove_dir_all(&root);
}

/// Logs go to a real systemd-journald (run in a private mount namespace,
/// with its sockets and a volatile journal on tmpfs) with structured fields
/// when `$JOURNAL_STREAM` names the agent's stderr, as systemd sets it for
/// `StandardError=journal`; to stderr otherwise.
#[test]
fn logs_go_to_the_journal_with_fields_when_stderr_is_the_journal() {
    if !kernel_tests_possible() {
        return;
    }
    if !Path::new("/lib/systemd/systemd-journald").exists() {
        assert!(!must_run(), "/lib/systemd/systemd-journald is missing (Debian package systemd)");
        eprintln!("SKIPPED: no systemd-journald");
        return;
    }
    let mut c = Cluster::new("sjr", 2, 1, 20, 5);
    let cfg = c.config_path(0);
    let out = c.dir.join("journal");
    std::fs::create_dir_all(&out).unwrap();
    let script = format!(
        r#"set -e
mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/journal /run/log
mount -t tmpfs tmpfs /run/log
/lib/systemd/systemd-journald >{out}/journald.out 2>&1 &
JP=$!
for i in $(seq 50); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done
run() {{
  nsenter --net=/run/netns/{ns} {bin} run --config {cfg} 2>"$1" &
  AP=$!
  sleep 3
  kill -TERM $AP; wait $AP || true
}}
# stderr is the journal: JOURNAL_STREAM names its device and inode.
touch {out}/stderr-journal.log
export JOURNAL_STREAM=$(stat -c %d:%i {out}/stderr-journal.log)
run {out}/stderr-journal.log
# JOURNAL_STREAM set, but stderr is another file (a redirected child).
run {out}/stderr-other.log
unset JOURNAL_STREAM
journalctl --sync 2>/dev/null || sleep 1
journalctl -D /run/log/journal -o json --no-pager SYSLOG_IDENTIFIER=baton >{out}/journal.json
kill $JP
"#,
        out = out.display(),
        ns = c.hosts[0].ns.name,
        bin = baton_bin().display(),
        cfg = cfg.display(),
    );
    let st = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).status().unwrap();
    assert!(st.success(), "the journald script failed: {st}; journald: {}", std::fs::read_to_string(out.join("journald.out")).unwrap_or_default());
    let journal = std::fs::read_to_string(out.join("journal.json")).unwrap();
    let entries: Vec<serde_json::Value> = journal.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let attached: Vec<&serde_json::Value> = entries.iter().filter(|e| e["MESSAGE"] == "XDP program attached").collect();
    assert_eq!(attached.len(), 1, "one life logged to the journal ({} entries): {journal}", entries.len());
    let e = attached[0];
    assert_eq!(e["F_INTERFACE"], "ic0", "{e}");
    assert_eq!(e["F_LINK"], "ring0", "{e}");
    assert_eq!(e["PRIORITY"], "6", "INFO is priority 6: {e}");
    assert_eq!(e["TARGET"], "baton_agent::datapath", "{e}");
    assert!(entries.iter().any(|e| e["MESSAGE"] == "SIGTERM: leaving the cluster gracefully"), "{journal}");
    // The sender's own `priority` field (its SCHED_FIFO priority) does not
    // clash with the journal's PRIORITY.
    let fifo = entries.iter().find(|e| e["MESSAGE"] == "heartbeat sender runs at SCHED_FIFO").unwrap_or_else(|| panic!("{journal}"));
    assert!(fifo["F_PRIORITY"] == "10" && fifo["PRIORITY"] == "6", "{fifo}");
    let stderr_journal = std::fs::read_to_string(out.join("stderr-journal.log")).unwrap();
    assert!(!stderr_journal.contains("XDP program attached"), "logged to stderr too: {stderr_journal}");
    let stderr_other = std::fs::read_to_string(out.join("stderr-other.log")).unwrap();
    assert!(stderr_other.contains("XDP program attached"), "a redirected stderr gets the text log: {stderr_other}");
    c.agents[0] = None;
}

#[test]
fn without_cap_net_raw_a_node_with_floating_addresses_names_it_and_exits_78() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("snrw", 3, &web_group("costly", ""));
    let log = start_without_and_expect_78(&mut svc, &["CAP_NET_RAW"]);
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
    assert!(errors.len() == 1 && errors[0].contains("missing capability CAP_NET_RAW: group \"web\" has floating addresses"), "{log}");
    assert!(!vip_on(&svc.ns(0)) && !svc.c.control_socket(0).exists());
}
