//! `baton selftest`: loads the eBPF object without attaching anything and
//! checks it in this kernel:
//! * the verifier accepts every program;
//! * the in-kernel SipHash-2-4 gives the published reference vector (56-byte
//!   message 00..2f, key 00..0f) through BPF_PROG_TEST_RUN;
//! * the XDP program's cost per authenticated heartbeat (BPF_PROG_TEST_RUN
//!   over a real Ethernet/IPv4/UDP heartbeat, repeated).

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{Array, HashMap};
use aya::programs::{PerfEvent, Xdp};
use aya::EbpfLoader;
use baton_common::siphash::{key_halves, REFERENCE_VECTORS};
use baton_common::{DatapathConfig, Header, NodeSlot, PeerLink, KIND_HEARTBEAT, MAP_CONFIG, MAP_NODE_SLOTS, MAP_PEERS};
use serde::Serialize;

use crate::datapath::{EBPF_OBJECT, WATCHDOG_PROG, XDP_PROG};

pub const KAT_PROG: &str = "baton_siphash_kat";

#[derive(Debug, Serialize)]
pub struct SelftestReport {
    pub kat_expected: String,
    pub kat_kernel: String,
    pub kat_ok: bool,
    pub xdp_verdict_first: u32,
    pub xdp_ns_per_heartbeat: f64,
    pub repeat: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("BPF_PROG_TEST_RUN on {program}: {source}")]
    TestRun {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} missing from the eBPF object")]
    Missing(&'static str),
}

/// BPF_PROG_TEST_RUN: (return value, mean duration in ns).
fn test_run(prog_fd: i32, data: &[u8], repeat: u32) -> std::io::Result<(u32, u32)> {
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestAttr, std::mem::size_of::<TestAttr>())
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((attr.retval, attr.duration))
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/UDP frame carrying `payload` to `port`.
pub fn udp_frame(payload: &[u8], port: u16) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 8 + payload.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 77, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 77, 0, 1]);
    let ck = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&ck.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&port.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn run(repeat: u32) -> Result<SelftestReport, SelftestError> {
    let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT)?;
    // Reference key 00..0f, and a datapath configuration for the XDP run.
    let mut ref_key = [0u8; 16];
    for (i, b) in ref_key.iter_mut().enumerate() {
        *b = i as u8;
    }
    let (k0, k1) = key_halves(&ref_key);
    let my_inc = 1_000_000;
    let cfg = DatapathConfig {
        k0,
        k1,
        my_incarnation: my_inc,
        timeout_ns: 30_000_000,
        cluster_id: 7,
        my_node: 1,
        port: baton_common::DEFAULT_PORT,
        enabled: 1,
        n_slots: baton_common::MAX_LINKS,
        ..Default::default()
    };
    Array::<_, DatapathConfig>::try_from(ebpf.map_mut(MAP_CONFIG).ok_or(SelftestError::Missing(MAP_CONFIG))?)?.set(0, cfg, 0)?;
    HashMap::<_, u32, NodeSlot>::try_from(ebpf.map_mut(MAP_NODE_SLOTS).ok_or(SelftestError::Missing(MAP_NODE_SLOTS))?)?
        .insert(2, NodeSlot { base: 0, links: 1 }, 0)?;
    Array::<_, PeerLink>::try_from(ebpf.map_mut(MAP_PEERS).ok_or(SelftestError::Missing(MAP_PEERS))?)?
        .set(0, PeerLink { node: 2, link: 0, ..Default::default() }, 0)?;

    // The watchdog must pass the verifier too.
    {
        let p: &mut PerfEvent = ebpf
            .program_mut(WATCHDOG_PROG)
            .ok_or(SelftestError::Missing(WATCHDOG_PROG))?
            .try_into()
            .map_err(|source| SelftestError::Program { program: WATCHDOG_PROG, source })?;
        p.load().map_err(|source| SelftestError::Program { program: WATCHDOG_PROG, source })?;
    }

    // Known answer.
    let msg: Vec<u8> = (0u8..baton_common::MAC_COVERED as u8).collect();
    let kat_fd = {
        let p: &mut Xdp = ebpf
            .program_mut(KAT_PROG)
            .ok_or(SelftestError::Missing(KAT_PROG))?
            .try_into()
            .map_err(|source| SelftestError::Program { program: KAT_PROG, source })?;
        p.load().map_err(|source| SelftestError::Program { program: KAT_PROG, source })?;
        p.fd().map_err(|source| SelftestError::Program { program: KAT_PROG, source })?.as_fd().as_raw_fd()
    };
    test_run(kat_fd, &msg, 1).map_err(|source| SelftestError::TestRun { program: KAT_PROG, source })?;
    let kat: Array<_, u64> = Array::try_from(ebpf.map("BATON_KAT").ok_or(SelftestError::Missing("BATON_KAT"))?)?;
    let got = kat.get(&0, 0)?;

    // Cost of the real program on a real heartbeat frame.
    let hb = Header {
        kind: KIND_HEARTBEAT,
        link: 0,
        cluster_id: 7,
        src_node: 2,
        dst_node: 1,
        arg: 10,
        incarnation: 5,
        seq: 1,
        dst_incarnation: my_inc,
        echo_seq: 0,
    };
    let frame = udp_frame(&hb.encode(k0, k1), baton_common::DEFAULT_PORT);
    let xdp_fd = {
        let p: &mut Xdp = ebpf
            .program_mut(XDP_PROG)
            .ok_or(SelftestError::Missing(XDP_PROG))?
            .try_into()
            .map_err(|source| SelftestError::Program { program: XDP_PROG, source })?;
        p.load().map_err(|source| SelftestError::Program { program: XDP_PROG, source })?;
        p.fd().map_err(|source| SelftestError::Program { program: XDP_PROG, source })?.as_fd().as_raw_fd()
    };
    let (first, _) = test_run(xdp_fd, &frame, 1).map_err(|source| SelftestError::TestRun { program: XDP_PROG, source })?;
    // Repeats of the same frame take the replay path: parse, MAC, lookups,
    // sequence check — everything but the final stores.
    let (_, ns) = test_run(xdp_fd, &frame, repeat).map_err(|source| SelftestError::TestRun { program: XDP_PROG, source })?;
    Ok(SelftestReport {
        kat_expected: format!("{:016x}", REFERENCE_VECTORS[baton_common::MAC_COVERED]),
        kat_kernel: format!("{got:016x}"),
        kat_ok: got == REFERENCE_VECTORS[baton_common::MAC_COVERED],
        xdp_verdict_first: first,
        xdp_ns_per_heartbeat: ns as f64,
        repeat,
    })
}
