//! Address takeover (BRIEF D5, S2.4, S4.3): a floating ("virtual") address is
//! added to or removed from an interface through rtnetlink, and after it is
//! added the neighbours on the link are told at once that it now lives behind
//! this host's MAC address:
//!
//! * IPv4: gratuitous ARP, as keepalived sends it: a broadcast ARP request with
//!   sender IP = target IP = the address, sender MAC = ours, target MAC
//!   ff:ff:ff:ff:ff:ff ([`GarpOp::Request`], the default). A gratuitous ARP
//!   reply (target MAC = sender MAC, as `arping -A` sends) can be sent instead
//!   or as well ([`GarpOp`]).
//! * IPv6: an unsolicited neighbour advertisement (RFC 4861 §7.2.6), as the
//!   kernel (`ndisc_notify`) and keepalived send it: ICMPv6 type 136 from the
//!   address itself to ff02::1 (Ethernet 33:33:00:00:00:01), hop limit 255,
//!   Solicited = 0, Override = 1, Router = the interface's `forwarding`
//!   setting, with a target link-layer address option carrying our MAC.
//!
//! Both are written as whole Ethernet frames to an `AF_PACKET` raw socket bound
//! to the interface, `count` times, `interval` apart, the first one at once
//! ([`Announce`], default 3 × 20 ms).
//!
//! Everything here is async on tokio (rtnetlink needs a runtime) and works in
//! the network namespace of the calling thread. Netlink needs CAP_NET_ADMIN,
//! the packet socket CAP_NET_RAW; a missing one is reported as
//! [`AddrError::PermissionDenied`] naming it.
//!
//! The caller (the resource-group runtime) is responsible for the ordering
//! guarantee of the issue: an address is acquired only after its old owner was
//! halted, forced out or fenced. Nothing here talks to other nodes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use nix::errno::Errno;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkLayerType};
use tracing::{debug, error, info, warn};

/// Errors of address takeover. Each names the interface and, where there is
/// one, the address.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("interface {interface:?} does not exist in this network namespace")]
    NoSuchInterface { interface: String },
    #[error(
        "{action} {address} on {interface}: permission denied: this needs {capability} (run baton as root, or grant \
         CAP_NET_ADMIN and CAP_NET_RAW, e.g. AmbientCapabilities= in its systemd unit)"
    )]
    PermissionDenied { action: &'static str, address: IpAddr, interface: String, capability: &'static str },
    #[error("netlink: {action} {address} on {interface}: {source}")]
    Netlink {
        action: &'static str,
        address: IpAddr,
        interface: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("{address}/{prefix_len} cannot be taken over: {reason}")]
    InvalidAddress { address: IpAddr, prefix_len: u8, reason: &'static str },
    #[error("{address} on {interface}: duplicate address detection failed: another host on the link already uses it")]
    DuplicateAddress { address: IpAddr, interface: String },
    #[error("{address} on {interface}: still tentative (duplicate address detection) after {waited_ms} ms")]
    DadTimeout { address: IpAddr, interface: String, waited_ms: u64 },
    #[error("interface {interface:?} is down: cannot announce {address} on it")]
    InterfaceDown { interface: String, address: IpAddr },
    #[error("{action} for {address} on {interface}: {source}")]
    Io {
        action: &'static str,
        address: IpAddr,
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, AddrError>;

/// Which gratuitous ARP to send for an IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GarpOp {
    /// ARP request, sender IP = target IP (keepalived, `arping -U`, Linux's
    /// own `arp_notify`). Every Linux neighbour that already has an entry for
    /// the address updates it.
    #[default]
    Request,
    /// ARP reply, target MAC = sender MAC (`arping -A`). Some old stacks only
    /// honour replies.
    Reply,
    /// Both, request first.
    Both,
}

/// How the neighbours are told after an address is acquired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    /// Number of rounds (0 = announce nothing). One round is one unsolicited
    /// NA, or one gratuitous ARP (two for [`GarpOp::Both`]).
    pub count: u32,
    /// Time between rounds; the first round is sent at once.
    pub interval: Duration,
    pub garp_op: GarpOp,
}

impl Default for Announce {
    fn default() -> Self {
        Announce { count: 3, interval: Duration::from_millis(20), garp_op: GarpOp::Request }
    }
}

/// Options of [`acquire_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcquireOptions {
    /// IPv6 only: add the address with IFA_F_NODAD. Without it the kernel
    /// first runs duplicate address detection (one NS and `retrans_time`,
    /// about 1 s by default) and keeps the address *tentative* meanwhile:
    /// it cannot be bound or used as a source, incoming traffic to it is
    /// dropped, and announcing it would be a lie (RFC 4862 forbids
    /// advertising a tentative address). A takeover happens exactly because
    /// the old owner is known to be gone (halted, forced out or fenced), so
    /// DAD only costs a second of outage: baton skips it by default, as
    /// keepalived does. With `nodad = false`, [`acquire_with`] waits for DAD
    /// to finish (up to `dad_timeout`) before announcing, and reports a
    /// duplicate as [`AddrError::DuplicateAddress`].
    pub nodad: bool,
    pub dad_timeout: Duration,
    pub announce: Announce,
}

impl Default for AcquireOptions {
    fn default() -> Self {
        AcquireOptions { nodad: true, dad_timeout: Duration::from_secs(5), announce: Announce::default() }
    }
}

/// What [`acquire`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acquired {
    /// The address was already on the interface before (the add was a
    /// harmless replace).
    pub was_configured: bool,
    /// Announcement frames sent (0 on an interface without an Ethernet
    /// address, e.g. `lo`).
    pub frames_sent: u32,
}

/// Adds `ip/prefix_len` to `ifname` (IPv6 without DAD) and announces it with
/// the default [`Announce`] (3 × 20 ms). Returns after the last announcement.
pub async fn acquire(ifname: &str, ip: IpAddr, prefix_len: u8) -> Result<Acquired> {
    acquire_with(ifname, ip, prefix_len, &AcquireOptions::default()).await
}

/// [`acquire`] with explicit options.
pub async fn acquire_with(ifname: &str, ip: IpAddr, prefix_len: u8, opts: &AcquireOptions) -> Result<Acquired> {
    let was_configured = add(ifname, ip, prefix_len, opts.nodad).await?;
    if ip.is_ipv6() && !opts.nodad {
        wait_dad(ifname, ip, opts.dad_timeout).await?;
    }
    let frames_sent = announce(ifname, ip, &opts.announce).await?;
    info!(interface = ifname, address = %ip, prefix_len, was_configured, frames_sent, "address acquired");
    Ok(Acquired { was_configured, frames_sent })
}

/// Adds `ip/prefix_len` to `ifname` without announcing it. Idempotent: the
/// request carries NLM_F_REPLACE, so adding an address that is already there
/// succeeds and changes nothing. For IPv6, `nodad` sets IFA_F_NODAD (see
/// [`AcquireOptions::nodad`]). Returns whether the address was already there.
///
/// The address is recorded as held by this agent ([`crate::services::held::HELD`]);
/// while the address lease is lost (this node hears no majority) it is only
/// recorded, not configured (returns `Ok(true)`, so nothing is announced),
/// and configured when the lease is regained.
pub async fn add(ifname: &str, ip: IpAddr, prefix_len: u8, nodad: bool) -> Result<bool> {
    validate(ip, prefix_len)?;
    let mut held = crate::services::held::HELD.lock().await;
    held.entries.insert((ifname.to_string(), ip, prefix_len));
    if held.withdrawn || crate::services::held::lost() {
        warn!(interface = ifname, address = %ip, "address lease lost: the address is configured when this node hears a majority again");
        return Ok(true);
    }
    add_raw(ifname, ip, prefix_len, nodad).await
}

/// [`add`] without the lease's bookkeeping (the lease itself uses it).
pub(crate) async fn add_raw(ifname: &str, ip: IpAddr, prefix_len: u8, nodad: bool) -> Result<bool> {
    validate(ip, prefix_len)?;
    with_handle(ifname, ip, |handle| async move {
        let link = link(&handle, ifname, ip).await?;
        let was = !find(&handle, &link, ip).await?.is_empty();
        let mut req = handle.address().add(link.index, ip, prefix_len).replace();
        if nodad && ip.is_ipv6() {
            let m = req.message_mut();
            // The 8-bit header field for old kernels, IFA_FLAGS for new ones.
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(nl_err("adding", ip, ifname))?;
        info!(interface = ifname, address = %ip, prefix_len, was_there = was, "address configured");
        Ok(was)
    })
    .await
}

/// Removes `ip` from `ifname`. An address that is not there is not an error
/// (returns `Ok(false)`). Every instance of `ip` on the interface is removed;
/// one with a prefix length other than `prefix_len` is removed too, with a
/// warning, since the point of a release is that this host stops answering
/// for the address.
///
/// Note for IPv4: removing a *primary* address also removes the secondaries
/// of its subnet unless `net.ipv4.conf.IF.promote_secondaries = 1`.
///
/// The address stops being held by this agent ([`crate::services::held::HELD`]).
pub async fn release(ifname: &str, ip: IpAddr, prefix_len: u8) -> Result<bool> {
    let mut held = crate::services::held::HELD.lock().await;
    held.entries.retain(|(i, a, _)| !(i == ifname && *a == ip));
    release_raw(ifname, ip, prefix_len).await
}

/// Removes every address of `g` from its interface, logging (not
/// returning) what fails: the halt paths go on either way.
pub(crate) async fn release_all(g: &crate::config::groups::Group) {
    for a in &g.addresses {
        if let Err(e) = release(&g.interface, a.ip, a.prefix).await {
            error!(address = %a, interface = %g.interface, "releasing the address failed: {e}");
        }
    }
}

/// [`release`] without the lease's bookkeeping.
pub(crate) async fn release_raw(ifname: &str, ip: IpAddr, prefix_len: u8) -> Result<bool> {
    with_handle(ifname, ip, |handle| async move {
        let link = link(&handle, ifname, ip).await?;
        let found = find(&handle, &link, ip).await?;
        let mut removed = false;
        for msg in found {
            if msg.header.prefix_len != prefix_len {
                warn!(
                    interface = ifname,
                    address = %ip,
                    configured = msg.header.prefix_len,
                    asked = prefix_len,
                    "releasing an address configured with another prefix length"
                );
            }
            match handle.address().del(msg).execute().await {
                Ok(()) => removed = true,
                // Gone between the dump and the delete: what we wanted.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -(Errno::EADDRNOTAVAIL as i32) => {}
                Err(e) => return Err(nl_err("removing", ip, ifname)(e)),
            }
        }
        if removed {
            info!(interface = ifname, address = %ip, "address released");
        } else {
            debug!(interface = ifname, address = %ip, "address to release was not configured");
        }
        Ok(removed)
    })
    .await
}

/// Whether `ip` is configured on `ifname` (with any prefix length; an IPv6
/// address still tentative or whose DAD failed counts as configured).
pub async fn is_configured(ifname: &str, ip: IpAddr) -> Result<bool> {
    with_handle(ifname, ip, |handle| async move {
        let link = link(&handle, ifname, ip).await?;
        Ok(!find(&handle, &link, ip).await?.is_empty())
    })
    .await
}

/// Sends the gratuitous ARPs (IPv4) or unsolicited neighbour advertisements
/// (IPv6) for `ip` out of `ifname`: `count` rounds, `interval` apart, the
/// first at once. Returns the number of frames sent; 0 when the interface has
/// no Ethernet address (nothing to announce there, e.g. `lo`).
pub async fn announce(ifname: &str, ip: IpAddr, opts: &Announce) -> Result<u32> {
    let link = with_handle(ifname, ip, |handle| async move { link(&handle, ifname, ip).await }).await?;
    let Some(mac) = link.mac else {
        info!(interface = ifname, address = %ip, "interface has no Ethernet address: nothing to announce");
        return Ok(0);
    };
    if opts.count == 0 {
        return Ok(0);
    }
    let frames: Vec<(u16, Vec<u8>)> = match ip {
        IpAddr::V4(v4) => {
            let mut f = Vec::new();
            if matches!(opts.garp_op, GarpOp::Request | GarpOp::Both) {
                f.push((ETH_P_ARP, garp_frame(mac, v4, ARPOP_REQUEST).to_vec()));
            }
            if matches!(opts.garp_op, GarpOp::Reply | GarpOp::Both) {
                f.push((ETH_P_ARP, garp_frame(mac, v4, ARPOP_REPLY).to_vec()));
            }
            f
        }
        IpAddr::V6(v6) => {
            // As the kernel and keepalived do: R mirrors whether we route on
            // this interface, so a neighbour does not drop us as a router.
            let router = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{ifname}/forwarding"))
                .map(|s| s.trim() == "1")
                .unwrap_or(false);
            vec![(ETH_P_IPV6, unsolicited_na_frame(mac, v6, router).to_vec())]
        }
    };
    let sock = PacketSocket::open(link.index).map_err(|e| sock_err("opening a packet socket", ip, ifname, e))?;
    let mut sent = 0u32;
    let mut next = Instant::now();
    for round in 0..opts.count {
        if round > 0 {
            next += opts.interval;
            tokio::time::sleep_until(next.into()).await;
        }
        for (proto, frame) in &frames {
            sock.send(*proto, &mac, frame).map_err(|e| sock_err("sending an announcement", ip, ifname, e))?;
            sent += 1;
        }
    }
    debug!(interface = ifname, address = %ip, sent, "announced");
    Ok(sent)
}

/// The Ethernet address of `ifname` (`None`: it has none, e.g. `lo`).
pub async fn mac_of(ifname: &str) -> Result<Option<[u8; 6]>> {
    let ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let link = with_handle(ifname, ip, |handle| async move { link(&handle, ifname, ip).await }).await?;
    Ok(link.mac)
}

// ---------------------------------------------------------------------------
// netlink

struct Link {
    name: String,
    index: u32,
    mac: Option<[u8; 6]>,
}

fn validate(ip: IpAddr, prefix_len: u8) -> Result<()> {
    let bad = |reason| Err(AddrError::InvalidAddress { address: ip, prefix_len, reason });
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return bad("prefix length too long");
    }
    if ip.is_unspecified() {
        return bad("the unspecified address");
    }
    if ip.is_multicast() {
        return bad("a multicast address");
    }
    if let IpAddr::V4(v4) = ip {
        if v4.is_broadcast() {
            return bad("the broadcast address");
        }
    }
    Ok(())
}

async fn with_handle<T, F, Fut>(ifname: &str, ip: IpAddr, f: F) -> Result<T>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| AddrError::Io {
        action: "opening a netlink socket",
        address: ip,
        interface: ifname.into(),
        source,
    })?;
    let task = tokio::spawn(conn);
    let r = f(handle).await;
    task.abort();
    r
}

fn nl_err(action: &'static str, ip: IpAddr, ifname: &str) -> impl FnOnce(rtnetlink::Error) -> AddrError {
    let interface = ifname.to_string();
    move |source| {
        if let rtnetlink::Error::NetlinkError(ref m) = source {
            match Errno::from_raw(-m.raw_code()) {
                Errno::EPERM | Errno::EACCES => {
                    return AddrError::PermissionDenied { action, address: ip, interface, capability: "CAP_NET_ADMIN" };
                }
                Errno::ENODEV => return AddrError::NoSuchInterface { interface },
                _ => {}
            }
        }
        AddrError::Netlink { action, address: ip, interface, source: Box::new(source) }
    }
}

fn sock_err(action: &'static str, ip: IpAddr, ifname: &str, e: std::io::Error) -> AddrError {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EPERM | Errno::EACCES) => {
            AddrError::PermissionDenied { action, address: ip, interface: ifname.into(), capability: "CAP_NET_RAW" }
        }
        Some(Errno::ENETDOWN | Errno::ENXIO) => AddrError::InterfaceDown { interface: ifname.into(), address: ip },
        Some(Errno::ENODEV) => AddrError::NoSuchInterface { interface: ifname.into() },
        _ => AddrError::Io { action, address: ip, interface: ifname.into(), source: e },
    }
}

async fn link(handle: &rtnetlink::Handle, ifname: &str, ip: IpAddr) -> Result<Link> {
    // A name the kernel cannot hold cannot exist (and would be EINVAL, not ENODEV).
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ', '\0']) {
        return Err(AddrError::NoSuchInterface { interface: ifname.into() });
    }
    let mut links = handle.link().get().match_name(ifname.to_string()).execute();
    let msg = links
        .try_next()
        .await
        .map_err(nl_err("looking up the interface for", ip, ifname))?
        .ok_or_else(|| AddrError::NoSuchInterface { interface: ifname.into() })?;
    let mut mac = None;
    if msg.header.link_layer_type == LinkLayerType::Ether {
        for a in &msg.attributes {
            if let LinkAttribute::Address(bytes) = a {
                if let Ok(m) = <[u8; 6]>::try_from(bytes.as_slice()) {
                    if m != [0; 6] {
                        mac = Some(m);
                    }
                }
            }
        }
    }
    Ok(Link { name: ifname.to_string(), index: msg.header.index, mac })
}

/// The address messages of `ip` on the link.
async fn find(handle: &rtnetlink::Handle, link: &Link, ip: IpAddr) -> Result<Vec<AddressMessage>> {
    let mut req = handle.address().get().set_link_index_filter(link.index).set_address_filter(ip);
    // Ask only for the right family (the filters above run in userspace).
    req.message_mut().header.family = match ip {
        IpAddr::V4(_) => netlink_packet_route::AddressFamily::Inet,
        IpAddr::V6(_) => netlink_packet_route::AddressFamily::Inet6,
    };
    let msgs: Vec<AddressMessage> =
        req.execute().try_collect().await.map_err(nl_err("listing addresses for", ip, &link.name))?;
    Ok(msgs)
}

fn flags_of(msg: &AddressMessage) -> (bool, bool) {
    let mut tentative = msg.header.flags.contains(AddressHeaderFlags::Tentative);
    let mut dadfailed = msg.header.flags.contains(AddressHeaderFlags::Dadfailed);
    for a in &msg.attributes {
        if let AddressAttribute::Flags(f) = a {
            tentative |= f.contains(AddressFlags::Tentative);
            dadfailed |= f.contains(AddressFlags::Dadfailed);
        }
    }
    (tentative, dadfailed)
}

/// Waits until the IPv6 address is no longer tentative.
async fn wait_dad(ifname: &str, ip: IpAddr, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    with_handle(ifname, ip, |handle| async move {
        let link = link(&handle, ifname, ip).await?;
        loop {
            let msgs = find(&handle, &link, ip).await?;
            let (tentative, dadfailed) = msgs.iter().map(flags_of).fold((false, false), |a, b| (a.0 | b.0, a.1 | b.1));
            if dadfailed {
                return Err(AddrError::DuplicateAddress { address: ip, interface: ifname.into() });
            }
            if !tentative {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(AddrError::DadTimeout {
                    address: ip,
                    interface: ifname.into(),
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// frames

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_IP: u16 = 0x0800;
pub const ARPOP_REQUEST: u16 = 1;
pub const ARPOP_REPLY: u16 = 2;
const BROADCAST: [u8; 6] = [0xff; 6];

/// A gratuitous ARP frame for `ip` from `mac`: Ethernet broadcast, sender IP
/// = target IP = `ip`. A request carries target MAC ff:ff:ff:ff:ff:ff as
/// keepalived sends it (receivers ignore it); a reply carries target MAC =
/// sender MAC, which Linux requires to treat a reply as gratuitous
/// (`arp_is_garp`). Padded to the 60-byte Ethernet minimum, since not every
/// driver pads frames from packet sockets.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr, op: u16) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    let a = &mut f[14..42];
    a[0..2].copy_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
    a[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(&mac);
    a[14..18].copy_from_slice(&ip.octets());
    a[18..24].copy_from_slice(if op == ARPOP_REPLY { &mac } else { &BROADCAST });
    a[24..28].copy_from_slice(&ip.octets());
    f
}

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// IPv6 header, ICMPv6 NA (24 bytes) and one 8-byte option.
const NA_LEN: usize = 14 + 40 + 32;

/// An unsolicited neighbour advertisement for `ip` from `mac`: to ff02::1
/// (33:33:00:00:00:01), source `ip`, hop limit 255 (receivers drop ND packets
/// with any other value), flags R = `router`, S = 0, O = 1 (override the
/// cached link-layer address), and a target link-layer address option (without
/// it the receiver has nothing to update its entry with).
pub fn unsolicited_na_frame(mac: [u8; 6], ip: Ipv6Addr, router: bool) -> [u8; NA_LEN] {
    let mut f = [0u8; NA_LEN];
    f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let (ip6, icmp) = f[14..].split_at_mut(40);
    ip6[0] = 0x60; // version 6, traffic class 0, flow label 0
    ip6[4..6].copy_from_slice(&(icmp.len() as u16).to_be_bytes());
    ip6[6] = 58; // next header: ICMPv6
    ip6[7] = 255; // hop limit
    ip6[8..24].copy_from_slice(&ip.octets());
    ip6[24..40].copy_from_slice(&ALL_NODES.octets());
    icmp[0] = 136; // neighbour advertisement
    icmp[1] = 0;
    icmp[4] = if router { 0x80 } else { 0 } | 0x20; // R, S = 0, O = 1
    icmp[8..24].copy_from_slice(&ip.octets());
    icmp[24] = 2; // target link-layer address
    icmp[25] = 1; // length in units of 8 bytes
    icmp[26..32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(&ip, &ALL_NODES, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The ICMPv6 checksum (RFC 4443 §2.3): ones' complement of the ones'
/// complement sum of the pseudo-header (source, destination, upper-layer
/// length, next header 58) and the message, checksum field taken as zero.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], 0]) };
            sum += w as u32;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(&msg[..2]);
    add(&msg[4..]); // the checksum field counts as zero
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An AF_PACKET raw socket bound to one interface with protocol 0: it
/// receives nothing, it only sends whole Ethernet frames.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl PacketSocket {
    fn open(ifindex: u32) -> std::io::Result<PacketSocket> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        let fd = socket(AddressFamily::Packet, SockType::Raw, SockFlag::SOCK_CLOEXEC, None)?;
        // bind and sendto stay libc's: nix 0.29 has no safe constructor of a
        // sockaddr_ll (`LinkAddr`).
        let sll = sockaddr_ll(ifindex, 0, &[0; 6]);
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, ifindex })
    }

    /// Sends one frame. The destination sockaddr names the ethertype, so the
    /// kernel sets skb->protocol right on every kernel version.
    fn send(&self, proto: u16, mac: &[u8; 6], frame: &[u8]) -> std::io::Result<()> {
        let sll = sockaddr_ll(self.ifindex, proto, mac);
        // SAFETY: frame and sll are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short send: {n} of {}", frame.len()),
            ));
        }
        Ok(())
    }
}

fn sockaddr_ll(ifindex: u32, proto: u16, mac: &[u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(mac);
    sll
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    /// Independent check: the ones' complement sum over pseudo-header and
    /// message, checksum included, is 0xffff.
    fn verifies(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> bool {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 58]);
        bytes.extend_from_slice(msg);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut s: u64 = bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u64).sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s == 0xffff
    }

    #[test]
    fn na_frame_layout_and_checksum() {
        let ip: Ipv6Addr = "fd00:88::100".parse().unwrap();
        let f = unsolicited_na_frame(MAC, ip, false);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[14] >> 4, 6);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 32);
        assert_eq!(f[20], 58);
        assert_eq!(f[21], 255);
        assert_eq!(&f[22..38], &ip.octets());
        assert_eq!(&f[38..54], &ALL_NODES.octets());
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0x20, "override only");
        assert_eq!(&icmp[8..24], &ip.octets());
        assert_eq!(&icmp[24..32], &[2, 1, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert!(verifies(&ip, &ALL_NODES, icmp));
        let r = unsolicited_na_frame(MAC, ip, true);
        assert_eq!(r[54 + 4], 0xa0, "router + override");
        assert!(verifies(&ip, &ALL_NODES, &r[54..]));
    }

    #[test]
    fn checksum_matches_a_known_vector() {
        // The NA for fd00:88::100 from 02:11:22:33:44:55, checksum computed
        // separately (a few lines of Python over the same bytes): 0xf0f4.
        let ip: Ipv6Addr = "fd00:88::100".parse().unwrap();
        let f = unsolicited_na_frame(MAC, ip, false);
        assert_eq!(&f[54 + 2..54 + 4], &[0xf0, 0xf4]);
        // Odd-length messages are padded with a zero byte.
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let mut odd = vec![1u8, 0, 0, 0, 7];
        let c = icmpv6_checksum(&src, &ALL_NODES, &odd);
        odd[2..4].copy_from_slice(&c.to_be_bytes());
        assert!(verifies(&src, &ALL_NODES, &odd));
    }

    #[test]
    fn garp_frames() {
        let ip = Ipv4Addr::new(10, 88, 0, 100);
        let q = garp_frame(MAC, ip, ARPOP_REQUEST);
        assert_eq!(&q[0..6], &BROADCAST);
        assert_eq!(&q[6..12], &MAC);
        assert_eq!(&q[12..14], &[0x08, 0x06]);
        assert_eq!(&q[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&q[22..28], &MAC);
        assert_eq!(&q[28..32], &[10, 88, 0, 100]);
        assert_eq!(&q[32..38], &BROADCAST);
        assert_eq!(&q[38..42], &[10, 88, 0, 100]);
        assert!(q[42..].iter().all(|b| *b == 0));
        let r = garp_frame(MAC, ip, ARPOP_REPLY);
        assert_eq!(&r[20..22], &[0, 2]);
        assert_eq!(&r[32..38], &MAC, "a gratuitous reply has target MAC = sender MAC");
    }

    #[test]
    fn invalid_addresses_are_refused() {
        for (ip, p) in
            [("10.0.0.1", 33), ("0.0.0.0", 24), ("224.0.0.1", 32), ("ff02::1", 64), ("::", 64), ("fd00::1", 129)]
        {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(matches!(validate(ip, p), Err(AddrError::InvalidAddress { .. })), "{ip}/{p}");
        }
        assert!(validate("fd00::1".parse().unwrap(), 64).is_ok());
        assert!(validate("10.0.0.1".parse().unwrap(), 32).is_ok());
    }
}
