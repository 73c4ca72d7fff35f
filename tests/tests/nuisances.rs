//! Issue 13 "Measured": a flood of 10,000 TCP connections to the control
//! port, and an idle control-socket client, each leave crash-failover time
//! unchanged. Node 3 is crashed (SIGKILL of agent and guard) three times
//! with nothing else going on, three times during a 10,000-connection flood
//! of the master's control port, and three times while an idle client
//! holds the master's control socket; each time the master's silence
//! confirmation (the forced leave's decision, timed by the agent's own
//! clock) and the forced leave seen in its `cluster.json` are timed from the
//! kill. The figures are printed; the test fails when a nuisance makes any
//! failover slower than the slowest quiet one by more than a stated
//! scheduling allowance.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use baton_tests::*;

/// Scheduling allowance over the quiet figures (a loaded 2-core machine).
const ALLOWANCE_MS: f64 = 100.0;
const ROUNDS: usize = 3;

fn raise_own_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    r.rlim_cur = r.rlim_max;
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
}

/// Opens `n` TCP connections (nonblocking connects) from `src` to `dst`
/// inside namespace `ns`, held open until the streams are dropped.
fn flood(ns: &str, src: &str, dst: std::net::SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let std::net::IpAddr::V4(src) = src.parse::<std::net::IpAddr>().unwrap() else { unreachable!() };
    let std::net::SocketAddr::V4(dst) = dst else { unreachable!() };
    in_netns(ns, move || {
        let mut v = Vec::new();
        for _ in 0..n {
            let Ok(fd) = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_NONBLOCK, None) else { break };
            if bind(fd.as_raw_fd(), &SockaddrIn::from(std::net::SocketAddrV4::new(src, 0))).is_err() {
                continue;
            }
            let _ = connect(fd.as_raw_fd(), &SockaddrIn::from(dst));
            v.push(std::net::TcpStream::from(fd));
        }
        v
    })
}

/// Crashes node 3 and returns (ms to the master's confirmed silence, by its
/// clock; ms to the forced leave in its cluster.json, by polling); then
/// restarts node 3 and waits until all three are joined again. `during`
/// runs between the crash and the measurement (the rest of a flood).
fn crash_failover(c: &mut Cluster, during: impl FnOnce()) -> (f64, f64) {
    let t = c.kill(2);
    during();
    let done = wait_until(Duration::from_secs(10), || c.membership(0)["nodes"][2]["state"] == "inactive");
    let forced = (monotonic_ns() - t) as f64 / 1e6;
    assert!(done.is_some(), "node 3 never forced out at the master: {}", c.membership(0));
    let e = c
        .wait_event(0, Duration::from_secs(2), |e| {
            e["event"] == "silence_confirmed" && e["node"] == 3 && e["agent_ns"].as_u64().unwrap_or(0) > t
        })
        .unwrap_or_else(|| panic!("no confirmed silence of node 3 at the master: {:?}", c.events(0)));
    let confirmed = (e["agent_ns"].as_u64().unwrap() - t) as f64 / 1e6;
    c.start(2);
    c.wait_all_joined(Duration::from_secs(30));
    (confirmed, forced)
}

/// Ignored: it fails today, and is kept as the measurement of issue 13's
/// "Measured" item (run it with `--ignored`; docs/security.md has the
/// table). Release agents, two runs on a loaded 2-core machine
/// (2026-12-07): the master's confirmation 21-35 ms in every case; node 3
/// forced out 50-62 ms quiet, 65-471 ms during the flood (4 of 6 rounds
/// 248-471 ms), 55-202 ms with an idle client. Debug agents: forced out
/// 1,978-8,760 ms during the flood (confirmed by the 200 ms deadline: the
/// other survivor's report over the control channel came too late).
#[test]
#[ignore = "fails today: a 10,000-connection flood slows the forced leave at the master from 50-62 ms to up to 471 ms (release) / 8.8 s (debug) (issue 13, Measured)"]
fn a_connection_flood_and_an_idle_control_client_leave_crash_failover_time_unchanged() {
    if !kernel_tests_possible() {
        return;
    }
    raise_own_nofile();
    let mut c = Cluster::new("nuis", 3, 1, 10, 3);
    c.start_all();
    c.wait_all_joined(Duration::from_secs(15));
    assert_eq!(c.membership(0)["view"]["master"], 1);
    let master_pid = c.agents[0].as_ref().unwrap().pid();
    let target: std::net::SocketAddr = format!("{}:7406", link_addr(0, 0)).parse().unwrap();
    let client = c.add_client(0);
    let node2_ns = c.hosts[1].ns.name.clone();

    let mut quiet = Vec::new();
    for _ in 0..ROUNDS {
        quiet.push(crash_failover(&mut c, || {}));
    }

    // 10,000 connections to the master's control port: 5,000 from a host
    // that is no peer, 5,000 from node 2's address (its namespace), held
    // open; node 3 is crashed half-way, the second half opened after the
    // crash while the master handles it.
    let mut flooded = Vec::new();
    let mut opened = Vec::new();
    for _ in 0..ROUNDS {
        let mut held = Vec::new();
        for _ in 0..5 {
            held.extend(flood(&client.ns.name, &client.addr, target, 500));
            held.extend(flood(&node2_ns, &link_addr(0, 1), target, 500));
        }
        // The second half goes on in a thread while the failover is timed.
        let rest = std::thread::spawn({
            let (cl_ns, cl_addr, n2) = (client.ns.name.clone(), client.addr.clone(), node2_ns.clone());
            move || {
                let mut rest = Vec::new();
                for _ in 0..5 {
                    rest.extend(flood(&cl_ns, &cl_addr, target, 500));
                    rest.extend(flood(&n2, &link_addr(0, 1), target, 500));
                }
                rest
            }
        });
        let r = crash_failover(&mut c, || {});
        let rest = rest.join().unwrap();
        opened.push(held.len() + rest.len());
        flooded.push(r);
        drop(held);
        drop(rest);
    }
    assert!(opened.iter().all(|n| *n >= 9_000), "the floods opened {opened:?} connections");

    // One forgotten `nc -U` on the master's control socket: connected,
    // sending nothing, for the whole crash and failover.
    let mut idle = Vec::new();
    for _ in 0..ROUNDS {
        let s = UnixStream::connect(c.control_socket(0)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        idle.push(crash_failover(&mut c, || {}));
        drop(s);
    }

    let show = |name: &str, v: &[(f64, f64)]| {
        let conf: Vec<String> = v.iter().map(|r| format!("{:.1}", r.0)).collect();
        let forced: Vec<String> = v.iter().map(|r| format!("{:.0}", r.1)).collect();
        eprintln!("{name:<36} confirmed at the master [{}] ms; forced out (polled) [{}] ms", conf.join(", "), forced.join(", "));
    };
    show("quiet", &quiet);
    show("10,000-connection flood", &flooded);
    show("idle control-socket client", &idle);
    eprintln!("connections opened per flood: {opened:?}");
    let a = c.agents[0].as_mut().unwrap();
    assert!(a.child.try_wait().unwrap().is_none(), "the master's agent ended:\n{}", c.agent_log(0));
    assert_eq!(a.pid(), master_pid);
    let worst_quiet = quiet.iter().map(|r| r.0).fold(0.0, f64::max);
    let worst_quiet_forced = quiet.iter().map(|r| r.1).fold(0.0, f64::max);
    for (name, v) in [("flood", &flooded), ("idle client", &idle)] {
        for r in v {
            assert!(r.0 <= worst_quiet + ALLOWANCE_MS, "{name}: confirmed after {:.1} ms, quiet at worst {worst_quiet:.1} ms", r.0);
            assert!(r.1 <= worst_quiet_forced + ALLOWANCE_MS, "{name}: forced out after {:.0} ms, quiet at worst {worst_quiet_forced:.0} ms", r.1);
        }
    }
    c.wait_all_joined(Duration::from_secs(10));
}
