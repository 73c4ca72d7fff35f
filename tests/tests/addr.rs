//! Kernel tests of address takeover (D5): `baton_agent::services::addr` adds and removes
//! a floating address through rtnetlink and announces it with gratuitous ARP /
//! unsolicited neighbour advertisements, in real network namespaces.
//!
//! Topology per test: a switch namespace with a bridge, and hosts whose `eth0`
//! (a veth) is a port of it. Host i has 10.88.0.(i+1)/24 and fd00:88::(i+1)/64;
//! host 0 is server A, host 1 server B, host 2 the client. The floating
//! addresses are 10.88.0.100/24 and fd00:88::100/64.
//!
//! Needs root; under CI=true a skip is a failure.

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use baton_agent::services::addr::{self, AcquireOptions, AddrError, Announce};
use baton_tests::*;

const IF: &str = "eth0";
const VIP4: &str = "10.88.0.100";
const VIP6: &str = "fd00:88::100";

/// A bridge in a switch namespace and `n` hosts on it.
struct Lan {
    hosts: Vec<NetNs>,
    _switch: NetNs,
}

fn lan(tag: &str, n: usize) -> Lan {
    let prefix = unique_prefix(tag);
    let switch = NetNs::new(&format!("{prefix}sw"));
    sh(&["ip", "-n", &switch.name, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", &switch.name, "link", "set", "br0", "up"]);
    let mut hosts = Vec::new();
    for i in 0..n {
        let ns = NetNs::new(&format!("{prefix}h{i}"));
        let port = format!("p{i}");
        sh(&["ip", "link", "add", IF, "netns", &ns.name, "type", "veth", "peer", "name", &port, "netns", &switch.name]);
        sh(&["ip", "-n", &switch.name, "link", "set", &port, "master", "br0"]);
        sh(&["ip", "-n", &switch.name, "link", "set", &port, "up"]);
        sh(&["ip", "-n", &ns.name, "addr", "add", &format!("10.88.0.{}/24", i + 1), "dev", IF]);
        sh(&["ip", "-n", &ns.name, "addr", "add", &format!("fd00:88::{}/64", i + 1), "dev", IF, "nodad"]);
        sh(&["ip", "-n", &ns.name, "link", "set", IF, "up"]);
        hosts.push(ns);
    }
    Lan { hosts, _switch: switch }
}

impl Lan {
    fn ns(&self, i: usize) -> String {
        self.hosts[i].name.clone()
    }
}

/// Runs the future made by `f` on a current-thread tokio runtime, on a thread
/// inside network namespace `ns` (netlink and packet sockets belong to the
/// namespace of the thread that opens them).
fn run<T, Fut>(ns: &str, f: impl FnOnce() -> Fut + Send + 'static) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T>,
{
    in_netns(ns, move || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f()))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(ns: &str) -> String {
    link_mac(ns, IF)
}

/// The client's neighbour entry for `vip`: (lladdr, states).
fn neigh(ns: &str, vip: &str) -> Option<(String, Vec<String>)> {
    neigh_entry(ns, vip, IF)
}

fn ping(ns: &str, vip: &str) -> bool {
    ns_ok(ns, &["ping", "-c1", "-W1", vip])
}

/// An IPv6 MIB counter of namespace `ns` (/proc/net/snmp6).
fn snmp6(ns: &str, key: &str) -> u64 {
    ns_sh(ns, &["cat", "/proc/net/snmp6"])
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(key)).then(|| it.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {key} in /proc/net/snmp6"))
}

fn addr_show(ns: &str) -> String {
    sh(&["ip", "-n", ns, "addr", "show", "dev", IF])
}

/// The `ip addr` line of `vip` on host `ns`.
fn vip_line(ns: &str, vip: &str) -> String {
    addr_show(ns)
        .lines()
        .find(|l| l.contains(&format!(" {vip}/")))
        .unwrap_or_else(|| panic!("{vip} not on {ns}"))
        .to_string()
}

/// An on-link takeover from A to B, seen by the client.
fn takeover(tag: &str, vip: &'static str, prefix: u8) {
    if !kernel_tests_possible() {
        return;
    }
    let lan = lan(tag, 3);
    let (a, b, c) = (lan.ns(0), lan.ns(1), lan.ns(2));
    let (mac_a, mac_b) = (mac(&a), mac(&b));
    assert_ne!(mac_a, mac_b);
    let v6 = ip(vip).is_ipv6();
    // The receiver's defaults: no sysctl is changed for the takeover to work.
    let sysctls: &[&str] = if v6 {
        &["net.ipv6.conf.eth0.drop_unsolicited_na", "net.ipv6.conf.eth0.accept_untracked_na"]
    } else {
        &["net.ipv4.conf.eth0.arp_accept", "net.ipv4.conf.all.arp_accept"]
    };
    for k in sysctls {
        assert_eq!(ns_sh(&c, &["sysctl", "-n", k]).trim(), "0", "{k}");
    }

    // A acquires; the client reaches it and resolves it to A's MAC.
    let r = run(&a, move || addr::acquire(IF, ip(vip), prefix)).unwrap();
    assert!(!r.was_configured);
    assert_eq!(r.frames_sent, 3, "default: 3 announcements");
    assert!(addr_show(&a).contains(&format!("{vip}/{prefix}")));
    assert!(
        !vip_line(&a, vip).contains("tentative"),
        "the IPv6 VIP must be usable at once (NODAD):\n{}",
        addr_show(&a)
    );
    assert!(ping(&c, vip), "client cannot ping {vip} on A");
    let (ll, _) = neigh(&c, vip).expect("client has no neighbour entry for the VIP after ping");
    assert_eq!(ll, mac_a, "client resolved {vip} to {ll}, not A's {mac_a}");

    // A releases, B acquires and announces. The client sends nothing.
    assert!(run(&a, move || addr::release(IF, ip(vip), prefix)).unwrap());
    assert!(!run(&a, move || addr::is_configured(IF, ip(vip))).unwrap());
    let (na0, csum0) = (snmp6(&c, "Icmp6InNeighborAdvertisements"), snmp6(&c, "Icmp6InCsumErrors"));
    // The client is watched while B's acquire runs (it returns after the
    // last of its 3 rounds, 40 ms after the first).
    let t0 = Instant::now();
    let b2 = b.clone();
    let acquiring = std::thread::spawn(move || run(&b2, move || addr::acquire(IF, ip(vip), prefix)));
    let mut moved = None;
    wait_until(Duration::from_secs(2), || {
        let ok = neigh(&c, vip).map(|(ll, _)| ll == mac_b).unwrap_or(false);
        if ok {
            moved = Some(t0.elapsed());
        }
        ok
    });
    let r = acquiring.join().unwrap().unwrap();
    assert_eq!(r.frames_sent, 3);
    let moved =
        moved.unwrap_or_else(|| panic!("client's entry for {vip} never moved to B ({mac_b}): {:?}", neigh(&c, vip)));
    eprintln!(
        "{vip}: the client's neighbour entry showed B's MAC {:.1} ms after B's acquire started",
        moved.as_secs_f64() * 1e3
    );
    // Learned from unsolicited information (a gratuitous ARP request or an
    // unsolicited NA gives STALE; a solicited answer would give REACHABLE).
    let (_, states) = neigh(&c, vip).unwrap();
    assert!(states.iter().any(|s| s == "STALE"), "expected STALE, got {states:?}");
    if v6 {
        let na = snmp6(&c, "Icmp6InNeighborAdvertisements") - na0;
        assert!(na >= 3, "client received {na} NAs, expected the 3 announcements");
        assert_eq!(snmp6(&c, "Icmp6InCsumErrors"), csum0, "an announcement had a bad ICMPv6 checksum");
    }

    // Traffic now goes to B.
    assert!(ping(&c, vip), "client cannot ping {vip} on B");
    assert_eq!(neigh(&c, vip).unwrap().0, mac_b);
    assert!(!addr_show(&a).contains(vip));

    // Control: without announcements the client does not learn of a move.
    // Back to A with count = 0: the entry keeps B's MAC; A's announce fixes it.
    assert!(run(&b, move || addr::release(IF, ip(vip), prefix)).unwrap());
    let silent = AcquireOptions { announce: Announce { count: 0, ..Announce::default() }, ..AcquireOptions::default() };
    let r = run(&a, move || async move { addr::acquire_with(IF, ip(vip), prefix, &silent).await }).unwrap();
    assert_eq!(r.frames_sent, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(neigh(&c, vip).unwrap().0, mac_b, "the client learned of the move without an announcement");
    assert_eq!(run(&a, move || async move { addr::announce(IF, ip(vip), &Announce::default()).await }).unwrap(), 3);
    wait_until(Duration::from_secs(2), || neigh(&c, vip).map(|(ll, _)| ll == mac_a).unwrap_or(false))
        .unwrap_or_else(|| panic!("A's announcement did not move the client's entry back: {:?}", neigh(&c, vip)));
    assert!(ping(&c, vip));
}

#[test]
fn ipv4_takeover_updates_the_clients_arp_entry_by_gratuitous_arp() {
    takeover("av4", VIP4, 24);
}

#[test]
fn ipv6_takeover_updates_the_clients_neighbour_entry_by_unsolicited_na() {
    takeover("av6", VIP6, 64);
}

#[test]
fn acquire_is_idempotent_release_of_absent_is_ok_and_missing_interface_is_named() {
    if !kernel_tests_possible() {
        return;
    }
    let lan = lan("aidm", 1);
    let a = lan.ns(0);
    for (vip, prefix) in [(VIP4, 24u8), (VIP6, 64)] {
        let (r1, r2, conf) = run(&a, move || async move {
            let r1 = addr::acquire(IF, ip(vip), prefix).await.unwrap();
            let r2 = addr::acquire(IF, ip(vip), prefix).await.unwrap();
            (r1, r2, addr::is_configured(IF, ip(vip)).await.unwrap())
        });
        assert!(!r1.was_configured && r2.was_configured && conf);
        let shown = addr_show(&a);
        assert_eq!(shown.matches(&format!("{vip}/{prefix}")).count(), 1, "{shown}");
        let (first, second) = run(&a, move || async move {
            (addr::release(IF, ip(vip), prefix).await.unwrap(), addr::release(IF, ip(vip), prefix).await.unwrap())
        });
        assert!(first && !second, "release: {first} then {second}");
        assert!(!addr_show(&a).contains(vip));
    }
    // Never configured at all.
    assert!(!run(&a, || addr::release(IF, ip("10.88.0.250"), 24)).unwrap());
    assert!(!run(&a, || addr::release(IF, ip("fd00:88::250"), 64)).unwrap());

    // A nonexistent interface is named, by every operation.
    let errs = run(&a, || async {
        vec![
            addr::acquire("nope0", ip(VIP4), 24).await.err(),
            addr::acquire("nope0", ip(VIP6), 64).await.err(),
            addr::release("nope0", ip(VIP4), 24).await.err(),
            addr::is_configured("nope0", ip(VIP6)).await.err(),
            addr::announce("nope0", ip(VIP4), &Announce::default()).await.err(),
        ]
    });
    for e in errs {
        let e = e.expect("an operation on a missing interface succeeded");
        assert!(matches!(&e, AddrError::NoSuchInterface { interface } if interface == "nope0"), "{e:?}");
        assert!(e.to_string().contains("\"nope0\""), "{e}");
    }
}

#[test]
fn ipv6_with_dad_waits_for_it_and_reports_a_duplicate() {
    if !kernel_tests_possible() {
        return;
    }
    let lan = lan("adad", 2);
    let (a, b) = (lan.ns(0), lan.ns(1));
    let opts = AcquireOptions { nodad: false, ..AcquireOptions::default() };
    let o = opts.clone();
    let t0 = Instant::now();
    let r = run(&a, move || async move { addr::acquire_with(IF, ip(VIP6), 64, &o).await });
    r.unwrap();
    eprintln!("DAD took {:?}", t0.elapsed());
    assert!(!vip_line(&a, VIP6).contains("tentative"), "{}", addr_show(&a));

    // fd00:88::200 already belongs to B: DAD on A fails and says so.
    sh(&["ip", "-n", &b, "addr", "add", "fd00:88::200/64", "dev", IF, "nodad"]);
    let e = run(&a, move || async move { addr::acquire_with(IF, ip("fd00:88::200"), 64, &opts).await }).unwrap_err();
    assert!(matches!(&e, AddrError::DuplicateAddress { interface, .. } if interface == IF), "{e:?}");
    assert!(e.to_string().contains("fd00:88::200"), "{e}");
}

/// Drops capabilities from the effective set of the calling thread only.
fn drop_effective_caps(caps: &[u32]) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header { version: 0x2008_0522, pid: 0 };
    let mut d = [Data::default(); 2];
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()), 0);
        for c in caps {
            d[(*c / 32) as usize].effective &= !(1 << (c % 32));
        }
        assert_eq!(libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()), 0, "capset");
    }
}

#[test]
fn missing_capabilities_are_named() {
    if !kernel_tests_possible() {
        return;
    }
    let lan = lan("acap", 1);
    let (acq, ann) = run(&lan.ns(0), || async {
        drop_effective_caps(&[12 /* CAP_NET_ADMIN */, 13 /* CAP_NET_RAW */]);
        (
            addr::acquire(IF, ip(VIP4), 24).await.unwrap_err(),
            addr::announce(IF, ip(VIP4), &Announce::default()).await.unwrap_err(),
        )
    });
    assert!(matches!(&acq, AddrError::PermissionDenied { capability: "CAP_NET_ADMIN", .. }), "{acq:?}");
    assert!(acq.to_string().contains("CAP_NET_ADMIN") && acq.to_string().contains(IF), "{acq}");
    assert!(matches!(&ann, AddrError::PermissionDenied { capability: "CAP_NET_RAW", .. }), "{ann:?}");
    assert!(!addr_show(&lan.ns(0)).contains(VIP4));
}

/// Records of level WARN or above from the netlink crates (the `log` facade,
/// which the agent's tracing subscriber forwards to its log).
static NETLINK_WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct NetlinkWarnings;

impl log::Log for NetlinkWarnings {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn && m.target().starts_with("netlink")
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            NETLINK_WARNINGS.lock().unwrap().push(format!("{} {}: {}", r.level(), r.target(), r.args()));
        }
    }
    fn flush(&self) {}
}

/// Issue 14 item 9: netlink-packet-route 0.19 logged a warning
/// (`Specified IFLA_INET6_CONF NLA attribute holds more(most likely new
/// kernel) data which is unknown ...`) for every link message of an
/// interface with IPv6, i.e. on each address operation (about 113 lines a
/// minute per agent). With the current crates, the link and address
/// operations the agent does in a takeover give none.
#[test]
fn link_and_address_operations_log_no_netlink_warnings() {
    if !kernel_tests_possible() {
        return;
    }
    static LOGGER: NetlinkWarnings = NetlinkWarnings;
    log::set_logger(&LOGGER).expect("no other logger in this test binary");
    log::set_max_level(log::LevelFilter::Trace);
    let lan = lan("anlw", 1);
    let (mac, acquired, released) = run(&lan.ns(0), || async {
        let mac = addr::mac_of(IF).await.unwrap();
        let acq4 = addr::acquire(IF, ip(VIP4), 24).await.unwrap();
        let acq6 = addr::acquire(IF, ip(VIP6), 64).await.unwrap();
        let rel = addr::release(IF, ip(VIP4), 24).await.unwrap() && addr::release(IF, ip(VIP6), 64).await.unwrap();
        (mac, (acq4, acq6), rel)
    });
    assert!(mac.is_some(), "the veth has an Ethernet address");
    assert!(released, "both addresses were acquired then released ({acquired:?})");
    // The link dumps carried IFLA_AF_SPEC/AF_INET6 (IPv6 is on: the host has fd00:88::1).
    assert!(addr_show(&lan.ns(0)).contains("fd00:88::1"));
    let warnings = NETLINK_WARNINGS.lock().unwrap().clone();
    assert!(warnings.is_empty(), "the netlink crates logged {} warning(s): {warnings:#?}", warnings.len());
}
