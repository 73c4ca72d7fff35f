//! Layouts of the values in baton's pinned maps and ring-buffer events.
//! Map names (as pinned under `/sys/fs/bpf/baton/<cluster>/`) are the `MAP_*`
//! constants.

pub const MAP_CONFIG: &str = "BATON_CONFIG";
pub const MAP_PEERS: &str = "BATON_PEERS";
pub const MAP_NODE_SLOTS: &str = "BATON_NODE_SLOTS";
pub const MAP_COUNTERS: &str = "BATON_COUNTERS";
pub const MAP_FENCED: &str = "BATON_FENCED";
pub const MAP_EVENTS: &str = "BATON_EVENTS";
pub const MAP_HANDOVER: &str = "BATON_HANDOVER";
pub const MAP_CTRL_ALLOW: &str = "BATON_CTRL_ALLOW";

/// Entries of `BATON_CTRL_ALLOW`: (interconnect interface, peer address)
/// pairs allowed to open a control-channel connection (peers × links).
pub const MAX_CTRL_ALLOW: u32 = MAX_NODES * crate::wire::MAX_LINKS;

/// `BATON_CTRL_ALLOW` key: a configured peer's address on one link, with
/// the index of this node's interface of that link. A TCP SYN to the
/// control port (`DatapathConfig::control_port`) arriving on `ifindex` is
/// passed only when its source address is in the map (docs/datapath.md).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct CtrlAllowKey {
    pub ifindex: u32,
    /// 4 or 6.
    pub family: u32,
    /// The address as the packet carries it (network byte order), read as
    /// native-endian words; IPv4 in `addr[0]`, the rest 0.
    pub addr: [u32; 4],
}

impl CtrlAllowKey {
    /// The key of `octets` (4 or 16 bytes of an address) on `ifindex`.
    pub fn new(ifindex: u32, octets: &[u8]) -> CtrlAllowKey {
        let w =
            |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
        if octets.len() == 4 {
            CtrlAllowKey {
                ifindex,
                family: 4,
                addr: [w(0), 0, 0, 0],
            }
        } else {
            CtrlAllowKey {
                ifindex,
                family: 6,
                addr: [w(0), w(4), w(8), w(12)],
            }
        }
    }
}

/// Addresses in a planned handover at a time (`BATON_HANDOVER` entries).
pub const MAX_HANDOVER: u32 = 64;

/// [`Handover::mode`]: this node is the *new* owner of the address and
/// prepares it: the address is configured and the application starts, but
/// the node must not claim it yet, so ARP requests for it are dropped.
pub const HANDOVER_SILENT: u32 = 1;
/// This node is the *old* owner: packets to the address that do not belong
/// to a connection this node still has (TCP SYNs, segments of unknown
/// connections, anything not TCP) are handed to the new owner's MAC
/// address (rewritten and sent back out, `XDP_TX`); the connections it
/// already had finish here.
pub const HANDOVER_STEER: u32 = 2;

/// `BATON_HANDOVER` value, keyed by an IPv4 address (network byte order,
/// as the `u32` read from the packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handover {
    pub mode: u32,
    pub _pad: u32,
    /// STEER: the new owner's MAC address on this interface, and ours.
    pub peer_mac: [u8; 6],
    pub own_mac: [u8; 6],
    pub _pad2: u32,
}

/// Nodes the datapath can track (slots = nodes × MAX_LINKS).
pub const MAX_NODES: u32 = 256;
pub const MAX_SLOTS: u32 = MAX_NODES * crate::wire::MAX_LINKS;

/// The single entry of `BATON_CONFIG`, written by the agent before attach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// SipHash key halves (little-endian halves of the 128-bit cluster secret).
    pub k0: u64,
    pub k1: u64,
    /// This node's current incarnation.
    pub my_incarnation: u64,
    /// Silence bound: a link is silent when nothing valid arrived for this long.
    pub timeout_ns: u64,
    pub cluster_id: u32,
    pub my_node: u32,
    /// UDP destination port of the interconnect, host byte order.
    pub port: u16,
    /// Non-zero once the agent finished filling the maps.
    pub enabled: u16,
    /// Slots in use in `BATON_PEERS` (the watchdog scans `0..n_slots`).
    pub n_slots: u32,
    /// TCP port of the control channel, host byte order: SYNs to it from
    /// an address not in `BATON_CTRL_ALLOW` are dropped (0: not filtered).
    pub control_port: u16,
    pub _pad: u16,
    pub _pad2: u32,
}

/// Link state values of [`PeerLink::state`].
pub const LINK_UNKNOWN: u32 = 0;
pub const LINK_UP: u32 = 1;
pub const LINK_SILENT: u32 = 2;
pub const LINK_DISTRESSED: u32 = 3;

/// One (peer node, link) liveness record, a slot of `BATON_PEERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerLink {
    pub node: u32,
    pub link: u32,
    pub state: u32,
    pub distress_reason: u32,
    /// Last incarnation and sequence accepted from this peer on this link.
    pub incarnation: u64,
    pub last_seq: u64,
    /// Kernel monotonic time (bpf_ktime_get_ns) of the last live heartbeat.
    pub last_seen_ns: u64,
    /// When the state last changed (kernel monotonic ns).
    pub changed_ns: u64,
    /// Heartbeats accepted as liveness.
    pub rx_live: u64,
    /// Authentic, fresh heartbeats that did not yet prove they know our
    /// incarnation (handshake after either side restarted).
    pub rx_handshake: u64,
    /// The heartbeat interval the peer announced, ms.
    pub peer_interval_ms: u32,
    /// The echo in the peer's last live heartbeat on this link: the low 32
    /// bits of the `seq` of our last heartbeat (this life, this link) that
    /// the peer had accepted as liveness when it sent it (0: none). The
    /// address lease maps it to the time we sent it (agent/src/services/lease.rs).
    pub echo_seq: u32,
    /// The `seq` of the peer's last heartbeat on this link accepted as
    /// liveness (0 since its current incarnation began: none yet); what our
    /// heartbeats to it echo.
    pub live_seq: u64,
}

/// `BATON_NODE_SLOTS` value: node id → index of its first slot in `BATON_PEERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeSlot {
    pub base: u32,
    pub links: u32,
}

/// Ring-buffer event kinds.
pub const EV_LINK_UP: u32 = 1;
pub const EV_LINK_SILENT: u32 = 2;
pub const EV_DISTRESS: u32 = 3;
pub const EV_NEW_INCARNATION: u32 = 4;

/// A record of `BATON_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub node: u32,
    pub link: u32,
    /// Distress reason, or 0.
    pub reason: u32,
    pub incarnation: u64,
    /// Kernel monotonic time of the event.
    pub ts_ns: u64,
    /// For EV_LINK_SILENT: the last time the link was seen alive.
    pub last_seen_ns: u64,
}

/// Indexes of the per-CPU counter array `BATON_COUNTERS`. Every packet that
/// reaches the baton port is counted under exactly one of these (the
/// `Handover*` counters count other traffic).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    HeartbeatLive = 0,
    Handshake = 1,
    Distress = 2,
    DropTruncated = 3,
    DropMalformed = 4,
    DropUnknownCluster = 5,
    DropBadMac = 6,
    DropUnknownNode = 7,
    DropNotForUs = 8,
    DropStaleIncarnation = 9,
    DropReplay = 10,
    DropFenced = 11,
    DropDisabled = 12,
    DistressRepeat = 13,
    WatchdogTicks = 14,
    LinkSilent = 15,
    /// Not baton traffic: packets to an address in a planned handover that
    /// this node handed to the new owner (see [`HANDOVER_STEER`]).
    HandoverSteered = 16,
    /// ARP requests for an address this node prepares but must not claim
    /// yet (see [`HANDOVER_SILENT`]).
    HandoverArpSilenced = 17,
    /// Events the datapath could not put in the ring buffer (it was full:
    /// the agent did not read it in time). The agent reports them and
    /// resyncs from `BATON_PEERS` (docs/datapath.md).
    EventsLost = 18,
    /// A datagram of the retired wire format version 1 (one datagram per
    /// receiver): dropped, never read (docs/wire-format.md).
    DropOldVersion = 19,
    /// Not baton datagrams: TCP SYNs to the control port from a configured
    /// peer's address on that link (`BATON_CTRL_ALLOW`), passed to the
    /// kernel's TCP stack.
    ControlSynPeer = 20,
    /// TCP SYNs to the control port whose source address is no configured
    /// peer's address on that link: dropped before the kernel's TCP stack
    /// (no SYN-ACK, no accept, no work for the agent).
    DropControlSyn = 21,
}

pub const N_COUNTERS: u32 = 22;

impl Counter {
    pub const ALL: [Counter; N_COUNTERS as usize] = [
        Counter::HeartbeatLive,
        Counter::Handshake,
        Counter::Distress,
        Counter::DropTruncated,
        Counter::DropMalformed,
        Counter::DropUnknownCluster,
        Counter::DropBadMac,
        Counter::DropUnknownNode,
        Counter::DropNotForUs,
        Counter::DropStaleIncarnation,
        Counter::DropReplay,
        Counter::DropFenced,
        Counter::DropDisabled,
        Counter::DistressRepeat,
        Counter::WatchdogTicks,
        Counter::LinkSilent,
        Counter::HandoverSteered,
        Counter::HandoverArpSilenced,
        Counter::EventsLost,
        Counter::DropOldVersion,
        Counter::ControlSynPeer,
        Counter::DropControlSyn,
    ];

    /// Stable name used in `baton status --json` and the docs.
    pub fn name(self) -> &'static str {
        match self {
            Counter::HeartbeatLive => "heartbeat_live",
            Counter::Handshake => "heartbeat_handshake",
            Counter::Distress => "distress",
            Counter::DropTruncated => "drop_truncated",
            Counter::DropMalformed => "drop_malformed",
            Counter::DropUnknownCluster => "drop_unknown_cluster",
            Counter::DropBadMac => "drop_bad_mac",
            Counter::DropUnknownNode => "drop_unknown_node",
            Counter::DropNotForUs => "drop_not_for_us",
            Counter::DropStaleIncarnation => "drop_stale_incarnation",
            Counter::DropReplay => "drop_replay",
            Counter::DropFenced => "drop_fenced",
            Counter::DropDisabled => "drop_disabled",
            Counter::DistressRepeat => "distress_repeat",
            Counter::WatchdogTicks => "watchdog_ticks",
            Counter::LinkSilent => "link_silent",
            Counter::HandoverSteered => "handover_steered",
            Counter::HandoverArpSilenced => "handover_arp_silenced",
            Counter::EventsLost => "events_lost",
            Counter::DropOldVersion => "drop_old_version",
            Counter::ControlSynPeer => "control_syn_peer",
            Counter::DropControlSyn => "drop_control_syn",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers, and have no
    // implicit padding (checked by the size assertions below).
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::PeerLink {}
    unsafe impl aya::Pod for super::NodeSlot {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Handover {}
    unsafe impl aya::Pod for super::CtrlAllowKey {}
}

const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 56);
const _: () = assert!(core::mem::size_of::<CtrlAllowKey>() == 24);
const _: () = assert!(core::mem::size_of::<PeerLink>() == 80);
const _: () = assert!(core::mem::size_of::<Event>() == 40);
const _: () = assert!(core::mem::size_of::<Handover>() == 24);
