//! baton's in-kernel datapath.
//!
//! * `baton_xdp` (XDP, on every interconnect interface): authenticates
//!   heartbeat and distress datagrams, keeps the per-(peer, link) liveness
//!   record, counts every rejected datagram under its reason, and consumes all
//!   baton traffic. Everything else passes untouched.
//! * `baton_handover` (TC ingress, only on interfaces that carry a group with
//!   `handover = "overlap"`): traffic to an address in a planned handover
//!   (`BATON_HANDOVER`).
//! * `baton_watchdog` (perf_event on a software cpu-clock, i.e. an hrtimer in
//!   interrupt context): notices links that went silent, without depending on
//!   userspace being scheduled, and wakes the agent through the ring buffer.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{bpf_sock_tuple, xdp_action, BPF_F_CURRENT_NETNS},
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_sk_release, bpf_skc_lookup_tcp, bpf_xdp_load_bytes},
    macros::{classifier, map, perf_event, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{PerfEventContext, TcContext, XdpContext},
};
use aya_log_ebpf::{info, warn};
use baton_common::{
    siphash::mac_words, words_of, Counter, CtrlAllowKey, DatapathConfig, MAX_CTRL_ALLOW, Event, Handover, NodeSlot, PeerLink, EV_DISTRESS,
    HANDOVER_SILENT, HANDOVER_STEER, MAX_HANDOVER,
    EV_LINK_SILENT, EV_LINK_UP, EV_NEW_INCARNATION, KIND_DISTRESS, KIND_HEARTBEAT, LINK_DISTRESSED,
    LINK_SILENT, LINK_UNKNOWN, LINK_UP, MAC_COVERED, MAGIC, MAX_NODES, MAX_SLOTS, N_COUNTERS,
    ENTRY_LEN, HEADER_LEN, MAX_ENTRIES, VERSION, is_old_version,
};

#[map]
static BATON_CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);
#[map]
static BATON_PEERS: Array<PeerLink> = Array::with_max_entries(MAX_SLOTS, 0);
#[map]
static BATON_NODE_SLOTS: HashMap<u32, NodeSlot> = HashMap::with_max_entries(MAX_NODES, 0);
#[map]
static BATON_FENCED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_NODES, 0);
#[map]
static BATON_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_COUNTERS, 0);
#[map]
static BATON_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
/// Output of `baton_siphash_kat`.
#[map]
static BATON_KAT: Array<u64> = Array::with_max_entries(1, 0);
/// The watchdog's own clock: [0] = when it last ran, [1] = no silence is
/// declared before this time (after a stall of the machine, see below).
#[map]
static BATON_WD: Array<u64> = Array::with_max_entries(2, 0);
/// Addresses in a planned handover (IPv4, network byte order) → what this
/// node does with their traffic meanwhile.
#[map]
static BATON_HANDOVER: HashMap<u32, Handover> = HashMap::with_max_entries(MAX_HANDOVER, 0);
/// (interface, peer address) pairs allowed to open a control-channel
/// connection: written by the agent from the config before attach.
#[map]
static BATON_CTRL_ALLOW: HashMap<CtrlAllowKey, u32> = HashMap::with_max_entries(MAX_CTRL_ALLOW, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_TCP: u8 = 6;
const ETH_P_ARP: u16 = 0x0806;
const UDP_HLEN: usize = 8;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
/// `BPF_TCP_*` states of the kernel's `struct bpf_sock::state`.
const TCP_TIME_WAIT: u32 = 6;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;

#[xdp]
pub fn baton_xdp(ctx: XdpContext) -> u32 {
    match try_baton_xdp(&ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn count(c: Counter) {
    if let Some(p) = BATON_COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn drop_as(c: Counter) -> Result<u32, ()> {
    count(c);
    Ok(xdp_action::XDP_DROP)
}

#[inline(always)]
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
#[inline(always)]
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes([
        b[o],
        b[o + 1],
        b[o + 2],
        b[o + 3],
        b[o + 4],
        b[o + 5],
        b[o + 6],
        b[o + 7],
    ])
}

#[inline(always)]
fn emit(kind: u32, p: &PeerLink, now: u64, reason: u32) {
    let ev = Event {
        kind,
        node: p.node,
        link: p.link,
        reason,
        incarnation: p.incarnation,
        ts_ns: now,
        last_seen_ns: p.last_seen_ns,
    };
    if BATON_EVENTS.output::<Event>(&ev, 0).is_err() {
        count(Counter::EventsLost);
    }
}

/// Offset of the UDP payload if this is a UDP datagram to `port`.
#[inline(always)]
fn baton_payload_offset(ctx: &XdpContext, port: u16) -> Result<Option<usize>, ()> {
    let ethertype = u16::from_be(unsafe { *ptr_at::<u16>(ctx, 12)? });
    let udp_off = match ethertype {
        ETH_P_IP => {
            let vihl: u8 = unsafe { *ptr_at::<u8>(ctx, ETH_HLEN)? };
            if vihl >> 4 != 4 {
                return Ok(None);
            }
            let proto: u8 = unsafe { *ptr_at::<u8>(ctx, ETH_HLEN + 9)? };
            if proto != IPPROTO_UDP {
                return Ok(None);
            }
            // Fragments (offset or more-fragments set) are not ours to judge.
            let frag = u16::from_be(unsafe { *ptr_at::<u16>(ctx, ETH_HLEN + 6)? });
            if frag & 0x3fff != 0 {
                return Ok(None);
            }
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Ok(None);
            }
            ETH_HLEN + ihl
        }
        ETH_P_IPV6 => {
            let next: u8 = unsafe { *ptr_at::<u8>(ctx, ETH_HLEN + 6)? };
            if next != IPPROTO_UDP {
                return Ok(None);
            }
            ETH_HLEN + 40
        }
        _ => return Ok(None),
    };
    let dport = u16::from_be(unsafe { *ptr_at::<u16>(ctx, udp_off + 2)? });
    if dport != port {
        return Ok(None);
    }
    Ok(Some(udp_off + UDP_HLEN))
}

/// The IPv4 socket tuple of `bpf_skc_lookup_tcp` (`struct bpf_sock_tuple`'s
/// `ipv4` member), all in network byte order.
#[repr(C)]
struct Ipv4Tuple {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

/// Traffic that is not baton's, during a planned handover of an address
/// (zero-loss switchover, docs/addresses.md):
/// * on the new owner (`HANDOVER_SILENT`), ARP requests for the address are
///   dropped: it is configured there so that the application can start, but
///   nobody must learn it there yet;
/// * on the old owner (`HANDOVER_STEER`), every IPv4 packet to the address
///   that does not belong to a connection this node still has (a TCP SYN, a
///   segment for which no established or half-open socket exists here,
///   anything not TCP) gets the new owner's MAC address and is sent back
///   out of the interface it came in on.
///
/// A TC program rather than XDP: `XDP_TX` on a veth drops the frame unless
/// the peer device has NAPI (an XDP program or GRO) on, and a redirect from
/// TC works on every device.
#[classifier]
pub fn baton_handover(ctx: TcContext) -> i32 {
    match try_handover(&ctx) {
        Ok(action) => action,
        Err(_) => TC_ACT_OK,
    }
}

#[inline(always)]
fn try_handover(ctx: &TcContext) -> Result<i32, i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    if ethertype == ETH_P_ARP {
        // htype(2) ptype(2) hlen(1) plen(1) oper(2) sha(6) spa(4) tha(6) tpa(4)
        let oper = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6)?);
        if oper != 1 {
            return Ok(TC_ACT_OK);
        }
        let tpa: u32 = ctx.load::<u32>(ETH_HLEN + 24)?;
        return match unsafe { BATON_HANDOVER.get(&tpa) } {
            Some(h) if h.mode == HANDOVER_SILENT => {
                count(Counter::HandoverArpSilenced);
                Ok(TC_ACT_SHOT)
            }
            _ => Ok(TC_ACT_OK),
        };
    }
    if ethertype != ETH_P_IP {
        return Ok(TC_ACT_OK);
    }
    let iph: [u8; 20] = ctx.load(ETH_HLEN)?;
    let vihl = iph[0];
    if vihl >> 4 != 4 {
        return Ok(TC_ACT_OK);
    }
    let daddr = u32::from_ne_bytes([iph[16], iph[17], iph[18], iph[19]]);
    let h = match unsafe { BATON_HANDOVER.get(&daddr) } {
        Some(h) if h.mode == HANDOVER_STEER => *h,
        _ => return Ok(TC_ACT_OK),
    };
    let proto = iph[9];
    let frag = u16::from_be_bytes([iph[6], iph[7]]);
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if proto == IPPROTO_TCP && frag & 0x1fff == 0 && ihl >= 20 && ihl <= 60 {
        let th: [u8; 20] = ctx.load(ETH_HLEN + ihl)?;
        let flags = th[13];
        let (syn, ack) = (flags & 0x02 != 0, flags & 0x10 != 0);
        if !(syn && !ack) {
            // A segment of a connection this node may still have.
            let mut t = Ipv4Tuple {
                saddr: u32::from_ne_bytes([iph[12], iph[13], iph[14], iph[15]]),
                daddr,
                sport: u16::from_ne_bytes([th[0], th[1]]),
                dport: u16::from_ne_bytes([th[2], th[3]]),
            };
            let sk = unsafe {
                bpf_skc_lookup_tcp(
                    ctx.skb.skb as *mut _,
                    &mut t as *mut Ipv4Tuple as *mut bpf_sock_tuple,
                    core::mem::size_of::<Ipv4Tuple>() as u32,
                    BPF_F_CURRENT_NETNS as u64,
                    0,
                )
            };
            if !sk.is_null() {
                let state = unsafe { (*sk).state };
                unsafe { bpf_sk_release(sk as *mut _) };
                // A listener is no connection; neither is a time-wait
                // socket: a client that reuses the port of a connection this
                // node closed less than a minute ago has its new connection
                // on the new owner (its SYN was handed over), and the
                // segments that follow must go there too.
                if state != TCP_LISTEN && state != TCP_TIME_WAIT && state != TCP_CLOSE {
                    return Ok(TC_ACT_OK);
                }
            }
        }
    }
    // Hand it to the new owner: its MAC as destination, ours as source, out
    // of the interface it came in on.
    let mut hdr = [0u8; 12];
    hdr[..6].copy_from_slice(&h.peer_mac);
    hdr[6..].copy_from_slice(&h.own_mac);
    ctx.store(0, &hdr, 0)?;
    count(Counter::HandoverSteered);
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// A TCP SYN (without ACK) to the control port: passed when its source is
/// a configured peer's address on the link it arrived on, dropped and
/// counted otherwise. `None`: not such a SYN.
#[inline(always)]
fn control_syn(ctx: &XdpContext, port: u16) -> Result<Option<u32>, ()> {
    let ethertype = u16::from_be(unsafe { *ptr_at::<u16>(ctx, 12)? });
    let mut key = CtrlAllowKey { ifindex: unsafe { (*ctx.ctx).ingress_ifindex }, family: 0, addr: [0; 4] };
    let tcp_off = match ethertype {
        ETH_P_IP => {
            let vihl: u8 = unsafe { *ptr_at::<u8>(ctx, ETH_HLEN)? };
            if vihl >> 4 != 4 {
                return Ok(None);
            }
            let proto: u8 = unsafe { *ptr_at::<u8>(ctx, ETH_HLEN + 9)? };
            if proto != IPPROTO_TCP {
                return Ok(None);
            }
            // A later fragment carries no TCP header.
            let frag = u16::from_be(unsafe { *ptr_at::<u16>(ctx, ETH_HLEN + 6)? });
            if frag & 0x1fff != 0 {
                return Ok(None);
            }
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Ok(None);
            }
            key.family = 4;
            key.addr[0] = unsafe { core::ptr::read_unaligned(ptr_at::<u32>(ctx, ETH_HLEN + 12)?) };
            ETH_HLEN + ihl
        }
        ETH_P_IPV6 => {
            let next: u8 = unsafe { *ptr_at::<u8>(ctx, ETH_HLEN + 6)? };
            if next != IPPROTO_TCP {
                return Ok(None);
            }
            key.family = 6;
            key.addr = unsafe { core::ptr::read_unaligned(ptr_at::<[u32; 4]>(ctx, ETH_HLEN + 8)?) };
            ETH_HLEN + 40
        }
        _ => return Ok(None),
    };
    let dport = u16::from_be(unsafe { core::ptr::read_unaligned(ptr_at::<u16>(ctx, tcp_off + 2)?) });
    if dport != port {
        return Ok(None);
    }
    let flags: u8 = unsafe { *ptr_at::<u8>(ctx, tcp_off + 13)? };
    if flags & 0x12 != 0x02 {
        return Ok(None); // not a SYN, or a SYN-ACK: a connection's own segment
    }
    if unsafe { BATON_CTRL_ALLOW.get(&key) }.is_some() {
        count(Counter::ControlSynPeer);
        return Ok(Some(xdp_action::XDP_PASS));
    }
    count(Counter::DropControlSyn);
    Ok(Some(xdp_action::XDP_DROP))
}

#[inline(always)]
fn try_baton_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let cfg = match BATON_CONFIG.get(0) {
        Some(c) => *c,
        None => return Ok(xdp_action::XDP_PASS),
    };
    if cfg.control_port != 0 && cfg.enabled != 0 {
        if let Some(verdict) = control_syn(ctx, cfg.control_port)? {
            return Ok(verdict);
        }
    }
    let off = match baton_payload_offset(ctx, cfg.port)? {
        Some(o) => o,
        None => return Ok(xdp_action::XDP_PASS),
    };
    if cfg.enabled == 0 {
        return drop_as(Counter::DropDisabled);
    }
    let buf: [u8; HEADER_LEN] = match ptr_at::<[u8; HEADER_LEN]>(ctx, off) {
        Ok(p) => unsafe { core::ptr::read_unaligned(p) },
        Err(()) => return drop_as(Counter::DropTruncated),
    };
    if be32(&buf, 0) != MAGIC {
        return drop_as(Counter::DropMalformed);
    }
    if is_old_version(buf[4]) {
        // The retired formats (version 1: one datagram per receiver, its
        // fields sit elsewhere; version 2: no echo): never read as ours.
        return drop_as(Counter::DropOldVersion);
    }
    if buf[4] != VERSION || (buf[5] != KIND_HEARTBEAT && buf[5] != KIND_DISTRESS) || buf[7] != 0 {
        return drop_as(Counter::DropMalformed);
    }
    if be32(&buf, 8) != cfg.cluster_id {
        return drop_as(Counter::DropUnknownCluster);
    }
    let n = u16::from_be_bytes([buf[20], buf[21]]) as usize;
    if n > MAX_ENTRIES {
        return drop_as(Counter::DropMalformed);
    }
    let data_len = ctx.data_end() - ctx.data();
    if data_len < off + HEADER_LEN + n * ENTRY_LEN {
        return drop_as(Counter::DropTruncated);
    }
    // Our entry: the sender lists every receiver of this datagram.
    let mut entry = [0u8; ENTRY_LEN];
    let mut found = false;
    for i in 0..MAX_ENTRIES {
        if i >= n {
            break;
        }
        let at = (off + HEADER_LEN + i * ENTRY_LEN) as u32;
        let rc = unsafe {
            bpf_xdp_load_bytes(ctx.ctx, at, entry.as_mut_ptr() as *mut core::ffi::c_void, ENTRY_LEN as u32)
        };
        if rc != 0 {
            return drop_as(Counter::DropTruncated);
        }
        if be32(&entry, 0) == cfg.my_node {
            found = true;
            break;
        }
    }
    if !found {
        return drop_as(Counter::DropNotForUs);
    }
    // The MAC block of our entry (docs/wire-format.md).
    let mut covered = [0u8; MAC_COVERED];
    covered[..16].copy_from_slice(&buf[..16]);
    covered[16..20].copy_from_slice(&entry[..4]);
    covered[20..24].copy_from_slice(&buf[16..20]);
    covered[24..40].copy_from_slice(&buf[24..40]);
    covered[40..48].copy_from_slice(&entry[8..16]);
    covered[48..52].copy_from_slice(&entry[4..8]);
    let mac = u64::from_le_bytes([
        entry[16], entry[17], entry[18], entry[19], entry[20], entry[21], entry[22], entry[23],
    ]);
    if mac != mac_words(cfg.k0, cfg.k1, &words_of(&covered)) {
        return drop_as(Counter::DropBadMac);
    }
    // Authentic from here on.
    let kind = buf[5];
    let link = buf[6] as u32;
    let src = be32(&buf, 12);
    let dst = cfg.my_node;
    let arg = be32(&buf, 16);
    let incarnation = be64(&buf, 24);
    let seq = be64(&buf, 32);
    let dst_incarnation = be64(&entry, 8);
    let echo_seq = be32(&entry, 4);

    let slot = match unsafe { BATON_NODE_SLOTS.get(&src) } {
        Some(s) => *s,
        None => return drop_as(Counter::DropUnknownNode),
    };
    if dst != cfg.my_node || src == cfg.my_node {
        return drop_as(Counter::DropNotForUs);
    }
    if unsafe { BATON_FENCED.get(&src) }.is_some() {
        return drop_as(Counter::DropFenced);
    }
    if link >= slot.links {
        return drop_as(Counter::DropMalformed);
    }
    let p = match BATON_PEERS.get_ptr_mut(slot.base + link) {
        Some(p) => unsafe { &mut *p },
        None => return drop_as(Counter::DropUnknownNode),
    };
    if incarnation < p.incarnation {
        return drop_as(Counter::DropStaleIncarnation);
    }
    if incarnation == p.incarnation && seq <= p.last_seq {
        return drop_as(Counter::DropReplay);
    }
    let synced = dst_incarnation == cfg.my_incarnation;
    if kind == KIND_DISTRESS && !synced {
        // A distress that does not prove it was made for this incarnation of
        // ours could be a recording from before we restarted: ignore it.
        return drop_as(Counter::DropStaleIncarnation);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let new_life = incarnation > p.incarnation;
    let had_life = p.incarnation != 0;
    if new_life {
        // What we echo to the peer refers to its current life only (reset
        // before the incarnation changes, for readers of the record).
        p.live_seq = 0;
        p.echo_seq = 0;
    }
    p.incarnation = incarnation;
    p.last_seq = seq;
    if new_life {
        if p.state == LINK_DISTRESSED {
            p.state = LINK_UNKNOWN;
            p.distress_reason = 0;
        }
        if had_life {
            emit(EV_NEW_INCARNATION, p, now, 0);
            info!(ctx, "node {} restarted (link {})", src, link);
        }
    }
    if kind == KIND_DISTRESS {
        if p.state == LINK_DISTRESSED {
            return drop_as(Counter::DistressRepeat);
        }
        p.state = LINK_DISTRESSED;
        p.distress_reason = arg;
        p.changed_ns = now;
        emit(EV_DISTRESS, p, now, arg);
        warn!(ctx, "distress from node {} on link {}, reason {}", src, link, arg);
        return drop_as(Counter::Distress);
    }
    if !synced {
        p.rx_handshake += 1;
        return drop_as(Counter::Handshake);
    }
    if p.state == LINK_DISTRESSED {
        // Heartbeats of a life that announced distress never revive it.
        return drop_as(Counter::DistressRepeat);
    }
    p.last_seen_ns = now;
    p.live_seq = seq;
    p.echo_seq = echo_seq;
    p.rx_live += 1;
    p.peer_interval_ms = arg;
    if p.state != LINK_UP {
        p.state = LINK_UP;
        p.changed_ns = now;
        emit(EV_LINK_UP, p, now, 0);
    }
    drop_as(Counter::HeartbeatLive)
}

/// Known-answer test of the in-kernel MAC, run by `baton selftest` through
/// BPF_PROG_TEST_RUN (never attached): SipHash-2-4 of the first 48 bytes of
/// the packet under the key in `BATON_CONFIG`, written to `BATON_KAT[0]`. It
/// calls the very `mac_words` / `words_of` that `baton_xdp` uses.
#[xdp]
pub fn baton_siphash_kat(ctx: XdpContext) -> u32 {
    let cfg = match BATON_CONFIG.get(0) {
        Some(c) => *c,
        None => return xdp_action::XDP_ABORTED,
    };
    let covered: [u8; MAC_COVERED] = match ptr_at::<[u8; MAC_COVERED]>(&ctx, 0) {
        Ok(p) => unsafe { core::ptr::read_unaligned(p) },
        Err(()) => return xdp_action::XDP_ABORTED,
    };
    let mac = mac_words(cfg.k0, cfg.k1, &words_of(&covered));
    match BATON_KAT.set(0, mac, 0) {
        Ok(()) => xdp_action::XDP_DROP,
        Err(_) => xdp_action::XDP_ABORTED,
    }
}

#[perf_event]
pub fn baton_watchdog(_ctx: PerfEventContext) -> u32 {
    let cfg = match BATON_CONFIG.get(0) {
        Some(c) => *c,
        None => return 0,
    };
    if cfg.enabled == 0 {
        return 0;
    }
    count(Counter::WatchdogTicks);
    let now = unsafe { bpf_ktime_get_ns() };
    // A tick far later than its period (at most a quarter of the bound)
    // means this CPU, usually the whole machine (a VM's vCPUs descheduled
    // by the host), did not run: heartbeats that arrived meanwhile may be
    // waiting in a receive queue that the softirq has not drained yet.
    // Declaring them silent now would be a false alarm on every node at
    // once; give them half a bound to be processed first.
    if let (Some(last), Some(grace)) = (BATON_WD.get_ptr_mut(0), BATON_WD.get_ptr_mut(1)) {
        let (last, grace) = unsafe { (&mut *last, &mut *grace) };
        let gap = now.saturating_sub(*last);
        if *last != 0 && gap > cfg.timeout_ns / 3 {
            *grace = now + cfg.timeout_ns / 2;
        }
        *last = now;
        if now < *grace {
            return 0;
        }
    }
    // The scan over the slots in use goes through `bpf_loop` (Linux 5.17):
    // the verifier checks `watchdog_slot` once instead of walking an
    // open-coded loop of up to MAX_SLOTS iterations one by one (that cost
    // ~50 ms of kernel CPU per agent start).
    let n = if cfg.n_slots < MAX_SLOTS { cfg.n_slots } else { MAX_SLOTS };
    let mut scan = WatchdogScan { now, timeout_ns: cfg.timeout_ns };
    unsafe {
        aya_ebpf::helpers::bpf_loop(
            n,
            watchdog_slot as *const () as *mut core::ffi::c_void,
            &mut scan as *mut WatchdogScan as *mut core::ffi::c_void,
            0,
        );
    }
    0
}

/// What one watchdog tick's scan needs, on the watchdog's stack and handed to
/// each `watchdog_slot` call by `bpf_loop`.
#[repr(C)]
struct WatchdogScan {
    now: u64,
    timeout_ns: u64,
}

/// One slot of the watchdog's scan (the `bpf_loop` callback): an `up` link
/// whose last live heartbeat is older than the bound becomes `silent` and is
/// reported. Always returns 0 (go on with the next slot).
#[inline(never)]
extern "C" fn watchdog_slot(i: u32, ctx: *mut core::ffi::c_void) -> i64 {
    let scan = unsafe { &*(ctx as *const WatchdogScan) };
    let now = scan.now;
    if let Some(ptr) = BATON_PEERS.get_ptr_mut(i) {
        let p = unsafe { &mut *ptr };
        if p.state == LINK_UP && now > p.last_seen_ns + scan.timeout_ns {
            p.state = LINK_SILENT;
            p.changed_ns = now;
            emit(EV_LINK_SILENT, p, now, 0);
            count(Counter::LinkSilent);
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
