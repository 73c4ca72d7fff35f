//! Nuisances without the key, for the hardening tests (tests/tests/hardening.rs,
//! tests/tests/nuisances.rs; docs/security.md): a TCP connection flood of a
//! control port, and what a test reads of an agent under it (open
//! descriptors, CPU time of its threads).

use std::net::{IpAddr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;

use crate::in_netns;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (a flood
/// holds thousands of sockets).
pub fn raise_own_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    r.rlim_cur = r.rlim_max;
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
}

/// Open descriptors of process `pid` (0 when it cannot be read).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// CPU time (clock ticks, user + system) of the threads of process `pid`
/// whose name starts with `prefix`.
pub fn thread_ticks(pid: i32, prefix: &str) -> u64 {
    let mut sum = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        // Fields after the name: state is the 3rd field of stat; utime and
        // stime the 14th and 15th.
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        sum += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    sum
}

/// Opens up to `n` TCP connections from `src` to `dst` inside namespace
/// `ns` (nonblocking connects: the SYNs are sent, the handshakes complete
/// or not) and keeps them open, as an attacker without the key would,
/// until the returned streams are dropped.
///
/// The flooder models a host elsewhere on the network; here it shares the
/// test machine's cores with the agents, so its thread runs at the lowest
/// priority (nice 19): its own CPU (connect syscalls and the handshakes
/// they drive) would otherwise slow the agents whatever they do.
pub fn flood(ns: &str, src: &str, dst: SocketAddr, n: usize) -> Vec<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let IpAddr::V4(src) = src.parse::<IpAddr>().expect("flood: source address") else { panic!("flood: IPv4 only") };
    let SocketAddr::V4(dst) = dst else { panic!("flood: IPv4 only") };
    in_netns(ns, move || {
        // SAFETY: setpriority of this thread (a tid is a valid PRIO_PROCESS who).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t, 19) };
        let mut v = Vec::new();
        for _ in 0..n {
            let Ok(fd) = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_NONBLOCK, None) else { break };
            if bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0))).is_err() {
                continue;
            }
            let _ = connect(fd.as_raw_fd(), &SockaddrIn::from(dst));
            v.push(TcpStream::from(fd));
        }
        v
    })
}
