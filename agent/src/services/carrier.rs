//! Client networks: the carrier of the interfaces groups put their
//! addresses on (docs/services-config.md, "Client networks").
//!
//! A group's `interface` may be any interface, not only a heartbeat link's.
//! The agent watches every interface's link state through rtnetlink link
//! notifications (a raw `NETLINK_ROUTE` socket subscribed to `RTMGRP_LINK`,
//! so nothing here depends on the netlink crates' versions): when an
//! interface loses its carrier (not `IFF_LOWER_UP`, or not `IFF_RUNNING`:
//! cable out, switch port down, the veth peer gone), is set down or is
//! deleted, every group running here on it fails as if a monitor had
//! failed, and the cluster moves it (S4.4). A run method also refuses to
//! start a group on an interface without carrier ([`has_carrier`]), so the
//! deciding node tries the next node.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::services::monitor::MonitorEvent;

/// The resource name of a carrier failure of `ifname` in a [`MonitorEvent`].
pub fn resource_name(ifname: &str) -> String {
    format!("carrier:{ifname}")
}

const RTMGRP_LINK: u32 = 1;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const IFLA_IFNAME: u16 = 3;
const IFF_UP: u32 = 0x1;
const IFF_RUNNING: u32 = 0x40;
const IFF_LOWER_UP: u32 = 0x10000;

/// One link notification: the interface's name and whether it can carry
/// traffic (up, running, carrier).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub name: String,
    pub usable: bool,
}

/// Parses the link notifications of one netlink datagram.
pub fn parse(buf: &[u8]) -> Vec<LinkState> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        if len < 16 || off + len > buf.len() {
            break;
        }
        let msg = &buf[off + 16..off + len];
        if (kind == RTM_NEWLINK || kind == RTM_DELLINK) && msg.len() >= 16 {
            let flags = u32::from_ne_bytes(msg[8..12].try_into().unwrap());
            let mut name = None;
            let mut a = 16;
            while a + 4 <= msg.len() {
                let alen = u16::from_ne_bytes(msg[a..a + 2].try_into().unwrap()) as usize;
                let atype = u16::from_ne_bytes(msg[a + 2..a + 4].try_into().unwrap()) & 0x3fff;
                if alen < 4 || a + alen > msg.len() {
                    break;
                }
                if atype == IFLA_IFNAME {
                    let v = &msg[a + 4..a + alen];
                    let v = v.split(|b| *b == 0).next().unwrap_or(v);
                    name = Some(String::from_utf8_lossy(v).to_string());
                }
                a += (alen + 3) & !3;
            }
            if let Some(name) = name {
                let usable = kind == RTM_NEWLINK && flags & IFF_UP != 0 && flags & IFF_RUNNING != 0 && flags & IFF_LOWER_UP != 0;
                out.push(LinkState { name, usable });
            }
        }
        off += (len + 3) & !3;
    }
    out
}

/// Why [`has_carrier`] could not tell.
#[derive(Debug, thiserror::Error)]
pub enum CarrierError {
    #[error("{name:?} is not an interface name")]
    NotAName { name: String },
    #[error("interface {interface} does not exist")]
    NoSuchInterface { interface: String },
    #[error("socket: {source}")]
    Socket {
        #[source]
        source: std::io::Error,
    },
    #[error("interface {interface}: {source}")]
    Flags {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether `ifname` exists here, is up and has carrier (`IFF_UP` and
/// `IFF_RUNNING`, from `SIOCGIFFLAGS` in this network namespace).
pub fn has_carrier(ifname: &str) -> Result<bool, CarrierError> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(CarrierError::NotAName { name: ifname.into() });
    }
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| CarrierError::Socket { source: e.into() })?;
    // The ioctl stays libc's: nix 0.29 has no SIOCGIFFLAGS wrapper.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(nix::errno::Errno::ENODEV as i32) {
            CarrierError::NoSuchInterface { interface: ifname.into() }
        } else {
            CarrierError::Flags { interface: ifname.into(), source: e }
        });
    }
    let flags = unsafe { req.ifr_ifru.ifru_flags } as u32;
    Ok(flags & IFF_UP != 0 && flags & IFF_RUNNING != 0)
}

/// Watches every interface's link state; reports a carrier loss (or an
/// interface set down or deleted) as the failure of resource
/// `carrier:<ifname>` on `tx`. Logs and gives up (without carrier
/// watching) if the netlink socket cannot be opened.
pub fn spawn(tx: mpsc::Sender<MonitorEvent>) {
    let fd = match open() {
        Ok(fd) => fd,
        Err(e) => {
            warn!("client networks: cannot watch link state (rtnetlink): {e}; a lost carrier will not move groups");
            return;
        }
    };
    tokio::spawn(async move {
        // SAFETY: the AsyncFd owns the socket, so the fd stays open for as
        // long as it is registered.
        let afd = match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
            Ok(a) => a,
            Err(e) => {
                warn!("client networks: {e}");
                return;
            }
        };
        let mut last: BTreeMap<String, bool> = BTreeMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok(mut guard) = afd.readable().await else { return };
            loop {
                let n = match nix::sys::socket::recv(afd.get_ref().as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
                    Ok(n) => n,
                    Err(nix::errno::Errno::EAGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) => {
                        // ENOBUFS: notifications were lost; carry on.
                        warn!("client networks: rtnetlink: {}", std::io::Error::from(e));
                        continue;
                    }
                };
                for st in parse(&buf[..n]) {
                    let before = last.insert(st.name.clone(), st.usable);
                    if before == Some(st.usable) {
                        continue;
                    }
                    if st.usable {
                        if before.is_some() {
                            info!(interface = %st.name, "client networks: carrier back");
                        }
                    } else {
                        warn!(interface = %st.name, "client networks: carrier lost (or interface down or gone): groups on it move");
                        let _ = tx
                            .send(MonitorEvent::Failed { resource: resource_name(&st.name), reason: format!("interface {} lost its carrier", st.name) })
                            .await;
                    }
                }
            }
        }
    });
}

fn open() -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};
    let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, SockProtocol::NetlinkRoute)?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, RTMGRP_LINK))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newlink(kind: u16, name: &str, flags: u32) -> Vec<u8> {
        let mut attr = Vec::new();
        let nb = name.len() + 1;
        attr.extend_from_slice(&((4 + nb) as u16).to_ne_bytes());
        attr.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        attr.extend_from_slice(name.as_bytes());
        attr.push(0);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut ifi = vec![0u8; 16];
        ifi[8..12].copy_from_slice(&flags.to_ne_bytes());
        let len = 16 + ifi.len() + attr.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend(ifi);
        m.extend(attr);
        m
    }

    #[test]
    fn parses_link_notifications() {
        let mut buf = newlink(RTM_NEWLINK, "eth0", IFF_UP | IFF_RUNNING | IFF_LOWER_UP);
        buf.extend(newlink(RTM_NEWLINK, "cl0", IFF_UP));
        buf.extend(newlink(RTM_DELLINK, "cl1", IFF_UP | IFF_RUNNING | IFF_LOWER_UP));
        assert_eq!(
            parse(&buf),
            vec![
                LinkState { name: "eth0".into(), usable: true },
                LinkState { name: "cl0".into(), usable: false },
                LinkState { name: "cl1".into(), usable: false },
            ]
        );
        assert_eq!(parse(&buf[..10]), vec![]);
    }

    #[test]
    fn loopback_has_carrier_and_a_missing_interface_is_named() {
        assert!(has_carrier("lo").unwrap());
        let e = has_carrier("nosuchif0").unwrap_err();
        assert!(matches!(&e, CarrierError::NoSuchInterface { interface } if interface == "nosuchif0"), "{e:?}");
        assert_eq!(e.to_string(), "interface nosuchif0 does not exist");
    }
}
