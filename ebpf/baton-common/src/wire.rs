//! The heartbeat / distress datagram (UDP payload), wire format version 3.
//! Layout and rules: `docs/wire-format.md`. All integers are big-endian on
//! the wire; each MAC is the SipHash-2-4 output in its canonical
//! little-endian bytes.
//!
//! One datagram per link per interval carries what every receiver needs: a
//! common header and one entry per receiver (its node id, the echo of the
//! receiver's last heartbeat the sender heard on this link, its incarnation
//! as the sender last heard it, and a MAC made for that receiver alone).
//!
//! ```text
//!  0  magic "BATN"      4  version 3   5 kind  6 link  7 flags(0)
//!  8  cluster_id u32   12  src_node u32    16 arg u32
//! 20  entries u16      22  reserved u16 (0)
//! 24  incarnation u64  32  seq u64                           (40 bytes)
//! 40 + 24*i, entry i:
//!     dst_node u32, echo_seq u32, dst_incarnation u64,
//!     mac u64 = SipHash-2-4(key, MAC block of this entry)
//! ```
//!
//! The MAC block of an entry (56 bytes, never sent as such): magic, version,
//! kind, link, flags, cluster_id, src_node, dst_node, arg, incarnation, seq,
//! dst_incarnation (version 2's 48 bytes, with version 3), then echo_seq
//! and 4 zero bytes. A receiver only reads its own entry and the header, and
//! every byte it acts on is under its entry's MAC.
//!
//! `echo_seq` (version 3): the low 32 bits of the `seq` of the last
//! heartbeat of the receiver (this life of it, this link) that the sender
//! accepted as liveness, 0 if none. The receiver knows when it sent that
//! sequence number, by its own clock: the address lease counts a peer only
//! while such a round trip is recent (agent/src/services/lease.rs).

use crate::siphash::{mac_words, MAC_WORDS};

/// "BATN"
pub const MAGIC: u32 = 0x4241_544e;
/// The wire format this build speaks.
pub const VERSION: u8 = 3;
/// The retired format (one datagram per receiver, 56 bytes): counted as
/// `drop_old_version` and dropped by the datapath, never read.
pub const VERSION_V1: u8 = 1;
/// The retired format without `echo_seq` (the entry's bytes 4..8 were
/// reserved, MAC block of 48 bytes): dropped as `drop_old_version` too.
pub const VERSION_V2: u8 = 2;
/// Whether `v` is a retired version (counted `drop_old_version`).
#[inline(always)]
pub fn is_old_version(v: u8) -> bool {
    v == VERSION_V1 || v == VERSION_V2
}
pub const KIND_HEARTBEAT: u8 = 1;
pub const KIND_DISTRESS: u8 = 2;
/// Bytes of an entry's MAC block.
pub const MAC_COVERED: usize = MAC_WORDS * 8;
/// The common header.
pub const HEADER_LEN: usize = 40;
/// One receiver's entry.
pub const ENTRY_LEN: usize = 24;
/// Entries in one datagram at most (a datagram of 1192 bytes fits the
/// 1280-byte IPv6 minimum MTU with its IPv6 and UDP headers). A sender with
/// more peers sends several datagrams per interval, each with its own `seq`.
pub const MAX_ENTRIES: usize = 48;
/// A datagram with one entry (what a unicast heartbeat is).
pub const UNICAST_LEN: usize = HEADER_LEN + ENTRY_LEN;
/// The largest datagram.
pub const MAX_PACKET_LEN: usize = HEADER_LEN + MAX_ENTRIES * ENTRY_LEN;
/// Size of a version 1 datagram (for the test that it is refused).
pub const V1_PACKET_LEN: usize = 56;
/// Bytes of the MAC block of versions 1 and 2.
const OLD_COVERED: usize = 48;
/// Default UDP port of the interconnect.
pub const DEFAULT_PORT: u16 = 7405;
/// `dst_incarnation` value meaning "I have not heard from you yet".
pub const INCARNATION_UNKNOWN: u64 = 0;
/// Links per node the datapath tracks.
pub const MAX_LINKS: u32 = 4;

/// Reasons carried by a distress packet (`arg` field), S0.1.
pub const DISTRESS_COMMUNICATION: u32 = 1;
pub const DISTRESS_PROTOCOL: u32 = 2;
pub const DISTRESS_COMPONENT: u32 = 3;
pub const DISTRESS_CORRUPTION: u32 = 4;
pub const DISTRESS_ADMIN: u32 = 5;
/// This node found its key gone from a shared disk: it was fenced (D4).
pub const DISTRESS_FENCED: u32 = 6;

/// What one receiver reads from a datagram: the common header and its own
/// entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub link: u8,
    pub cluster_id: u32,
    pub src_node: u32,
    pub dst_node: u32,
    /// Heartbeat: the sender's interval in ms. Distress: the reason.
    pub arg: u32,
    /// The sender's incarnation: strictly greater after every agent start.
    pub incarnation: u64,
    /// Per (sender, link), strictly increasing within one incarnation.
    pub seq: u64,
    /// The incarnation of `dst_node` the sender last heard (0 = none yet).
    /// A receiver only counts a heartbeat as liveness when this equals its own
    /// current incarnation, so a datagram recorded before it restarted can never
    /// make a dead peer look alive.
    pub dst_incarnation: u64,
    /// The low 32 bits of the `seq` of `dst_node`'s last heartbeat on this
    /// link that the sender accepted as liveness (0: none yet). Per entry,
    /// under its MAC.
    pub echo_seq: u32,
}

/// Why a datagram was rejected by [`Header::decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    BadMagic,
    /// Version 1 or 2: a retired format.
    OldVersion,
    BadVersion,
    BadKind,
    /// No entry for the receiver.
    NotForUs,
    BadMac,
}

/// The MAC block's bytes as the little-endian words SipHash consumes.
pub fn words_of(covered: &[u8; MAC_COVERED]) -> [u64; MAC_WORDS] {
    let mut w = [0u64; MAC_WORDS];
    for (i, word) in w.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&covered[i * 8..i * 8 + 8]);
        *word = u64::from_le_bytes(b);
    }
    w
}

impl Header {
    /// The MAC block of this receiver's entry (see the module doc).
    pub fn covered_bytes(&self) -> [u8; MAC_COVERED] {
        self.covered_bytes_v(VERSION)
    }

    fn covered_bytes_v(&self, version: u8) -> [u8; MAC_COVERED] {
        let mut b = [0u8; MAC_COVERED];
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4] = version;
        b[5] = self.kind;
        b[6] = self.link;
        b[7] = 0;
        b[8..12].copy_from_slice(&self.cluster_id.to_be_bytes());
        b[12..16].copy_from_slice(&self.src_node.to_be_bytes());
        b[16..20].copy_from_slice(&self.dst_node.to_be_bytes());
        b[20..24].copy_from_slice(&self.arg.to_be_bytes());
        b[24..32].copy_from_slice(&self.incarnation.to_be_bytes());
        b[32..40].copy_from_slice(&self.seq.to_be_bytes());
        b[40..48].copy_from_slice(&self.dst_incarnation.to_be_bytes());
        if version == VERSION {
            b[48..52].copy_from_slice(&self.echo_seq.to_be_bytes());
        }
        b
    }

    /// The MAC of this receiver's entry.
    pub fn mac(&self, k0: u64, k1: u64) -> u64 {
        mac_words(k0, k1, &words_of(&self.covered_bytes()))
    }

    /// A datagram for this one receiver (one entry): what a unicast
    /// heartbeat is.
    pub fn encode(&self, k0: u64, k1: u64) -> [u8; UNICAST_LEN] {
        let mut out = [0u8; UNICAST_LEN];
        let n = encode_into(self, &[(self.dst_node, self.dst_incarnation, self.echo_seq)], k0, k1, &mut out);
        debug_assert_eq!(n, UNICAST_LEN);
        out
    }

    /// The retired version 1 datagram (56 bytes: one receiver, MAC over the
    /// first 48). Only for tests that check it is refused, not misread.
    pub fn encode_v1(&self, k0: u64, k1: u64) -> [u8; V1_PACKET_LEN] {
        let covered = self.covered_bytes_v(VERSION_V1);
        let mut out = [0u8; V1_PACKET_LEN];
        out[..OLD_COVERED].copy_from_slice(&covered[..OLD_COVERED]);
        let mac = crate::siphash::siphash24(k0, k1, &covered[..OLD_COVERED]);
        out[OLD_COVERED..].copy_from_slice(&mac.to_le_bytes());
        out
    }

    /// The retired version 2 datagram for this one receiver (the layout of
    /// version 3 with the entry's bytes 4..8 reserved, MAC over the 48-byte
    /// block). Only for tests that check it is refused, not misread.
    pub fn encode_v2(&self, k0: u64, k1: u64) -> [u8; UNICAST_LEN] {
        let mut out = self.encode(k0, k1);
        out[4] = VERSION_V2;
        out[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&[0; 4]);
        let covered = self.covered_bytes_v(VERSION_V2);
        let mac = crate::siphash::siphash24(k0, k1, &covered[..OLD_COVERED]);
        out[HEADER_LEN + 16..HEADER_LEN + 24].copy_from_slice(&mac.to_le_bytes());
        out
    }

    /// Finds receiver `me`'s entry in a datagram and authenticates it (the
    /// same checks, in the same order, as the XDP program up to and
    /// including the MAC).
    pub fn decode(buf: &[u8], me: u32, k0: u64, k1: u64) -> Result<Header, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        let be32 = |o: usize| u32::from_be_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
        let be64 = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&buf[o..o + 8]);
            u64::from_be_bytes(w)
        };
        if be32(0) != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if is_old_version(buf[4]) {
            return Err(DecodeError::OldVersion);
        }
        if buf[4] != VERSION {
            return Err(DecodeError::BadVersion);
        }
        if (buf[5] != KIND_HEARTBEAT && buf[5] != KIND_DISTRESS) || buf[7] != 0 {
            return Err(DecodeError::BadKind);
        }
        let n = u16::from_be_bytes([buf[20], buf[21]]) as usize;
        if n > MAX_ENTRIES {
            return Err(DecodeError::BadKind);
        }
        if buf.len() < HEADER_LEN + n * ENTRY_LEN {
            return Err(DecodeError::Truncated);
        }
        for i in 0..n {
            let o = HEADER_LEN + i * ENTRY_LEN;
            if be32(o) != me {
                continue;
            }
            let h = Header {
                kind: buf[5],
                link: buf[6],
                cluster_id: be32(8),
                src_node: be32(12),
                dst_node: me,
                arg: be32(16),
                incarnation: be64(24),
                seq: be64(32),
                dst_incarnation: be64(o + 8),
                echo_seq: be32(o + 4),
            };
            let mut m = [0u8; 8];
            m.copy_from_slice(&buf[o + 16..o + 24]);
            if u64::from_le_bytes(m) != h.mac(k0, k1) {
                return Err(DecodeError::BadMac);
            }
            return Ok(h);
        }
        Err(DecodeError::NotForUs)
    }
}

/// Writes a datagram with the common fields of `common` (its `dst_node`,
/// `dst_incarnation` and `echo_seq` are ignored) and one entry per
/// `(dst_node, dst_incarnation, echo_seq)` of `entries` (at most
/// [`MAX_ENTRIES`]; more are left out) into `out`; returns its length. `out`
/// must hold it ([`MAX_PACKET_LEN`] always does).
pub fn encode_into(common: &Header, entries: &[(u32, u64, u32)], k0: u64, k1: u64, out: &mut [u8]) -> usize {
    let entries = &entries[..entries.len().min(MAX_ENTRIES)];
    let len = HEADER_LEN + entries.len() * ENTRY_LEN;
    let out = &mut out[..len];
    out[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    out[4] = VERSION;
    out[5] = common.kind;
    out[6] = common.link;
    out[7] = 0;
    out[8..12].copy_from_slice(&common.cluster_id.to_be_bytes());
    out[12..16].copy_from_slice(&common.src_node.to_be_bytes());
    out[16..20].copy_from_slice(&common.arg.to_be_bytes());
    out[20..22].copy_from_slice(&(entries.len() as u16).to_be_bytes());
    out[22..24].copy_from_slice(&[0, 0]);
    out[24..32].copy_from_slice(&common.incarnation.to_be_bytes());
    out[32..40].copy_from_slice(&common.seq.to_be_bytes());
    for (i, &(dst, dst_inc, echo)) in entries.iter().enumerate() {
        let o = HEADER_LEN + i * ENTRY_LEN;
        let h = Header { dst_node: dst, dst_incarnation: dst_inc, echo_seq: echo, ..*common };
        out[o..o + 4].copy_from_slice(&dst.to_be_bytes());
        out[o + 4..o + 8].copy_from_slice(&echo.to_be_bytes());
        out[o + 8..o + 16].copy_from_slice(&dst_inc.to_be_bytes());
        out[o + 16..o + 24].copy_from_slice(&h.mac(k0, k1).to_le_bytes());
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> Header {
        Header {
            kind: KIND_HEARTBEAT,
            link: 1,
            cluster_id: 0xc1,
            src_node: 2,
            dst_node: 3,
            arg: 10,
            incarnation: 1_700_000_000_000_000,
            seq: 99,
            dst_incarnation: 1_700_000_000_123_456,
            echo_seq: 0x0102_0304,
        }
    }

    #[test]
    fn roundtrip() {
        let h = hdr();
        let b = h.encode(1, 2);
        assert_eq!(b.len(), 64);
        assert_eq!(&b[0..4], b"BATN");
        assert_eq!(b[4], 3);
        assert_eq!(Header::decode(&b, 3, 1, 2), Ok(h));
        assert_eq!(Header::decode(&b, 4, 1, 2), Err(DecodeError::NotForUs));
    }

    #[test]
    fn one_datagram_carries_every_receiver_and_each_reads_its_own() {
        let h = hdr();
        let mut entries = [(0u32, 0u64, 0u32); MAX_ENTRIES];
        for (i, e) in entries.iter_mut().enumerate() {
            *e = (3 + i as u32, 1003 + i as u64, 7 * i as u32);
        }
        let mut buf = [0u8; MAX_PACKET_LEN];
        let len = encode_into(&h, &entries, 5, 6, &mut buf);
        assert_eq!(len, MAX_PACKET_LEN);
        for &(n, inc, echo) in &entries {
            let got = Header::decode(&buf[..len], n, 5, 6).unwrap();
            assert_eq!(got, Header { dst_node: n, dst_incarnation: inc, echo_seq: echo, ..h });
        }
        assert_eq!(Header::decode(&buf[..len], 2, 5, 6), Err(DecodeError::NotForUs));
        // Cut short: the entry count says more than there is.
        assert_eq!(Header::decode(&buf[..len - 1], 3, 5, 6), Err(DecodeError::Truncated));
        // An entry moved into another datagram (another seq) does not verify.
        let other = Header { seq: h.seq + 1, ..h };
        let mut buf2 = [0u8; MAX_PACKET_LEN];
        let len2 = encode_into(&other, &entries[..1], 5, 6, &mut buf2);
        buf2[HEADER_LEN..len2].copy_from_slice(&buf[HEADER_LEN..HEADER_LEN + ENTRY_LEN]);
        buf2[HEADER_LEN + 8..HEADER_LEN + 16].copy_from_slice(&buf[HEADER_LEN + ENTRY_LEN + 8..HEADER_LEN + ENTRY_LEN + 16]);
        assert_eq!(Header::decode(&buf2[..len2], 3, 5, 6), Err(DecodeError::BadMac));
    }

    #[test]
    fn every_bit_a_receiver_reads_is_authenticated() {
        let b = hdr().encode(7, 8);
        // Everything but the entry count (20..22, a flip only changes where
        // the entries end), the reserved bytes and the other entries: the
        // echo (the entry's bytes 4..8) included.
        let read = (0..20).chain(24..UNICAST_LEN);
        for i in read {
            for bit in 0..8 {
                let mut c = b;
                c[i] ^= 1 << bit;
                let r = Header::decode(&c, 3, 7, 8);
                assert!(r.is_err(), "flip of byte {i} bit {bit} accepted");
            }
        }
    }

    #[test]
    fn a_version_1_datagram_is_refused_not_misread() {
        let v1 = hdr().encode_v1(7, 8);
        assert_eq!(v1.len(), 56);
        assert_eq!(v1[4], 1);
        assert_eq!(Header::decode(&v1, 3, 7, 8), Err(DecodeError::OldVersion));
    }

    #[test]
    fn a_version_2_datagram_is_refused_not_misread() {
        let v2 = hdr().encode_v2(7, 8);
        assert_eq!((v2.len(), v2[4]), (64, 2));
        assert_eq!(Header::decode(&v2, 3, 7, 8), Err(DecodeError::OldVersion));
        // Read as version 3 (the version byte changed), its MAC (over the
        // 48-byte block, without the echo) does not verify.
        let mut as3 = v2;
        as3[4] = 3;
        assert_eq!(Header::decode(&as3, 3, 7, 8), Err(DecodeError::BadMac));
    }

    #[test]
    fn wrong_key_truncated_and_garbage() {
        let b = hdr().encode(7, 8);
        assert_eq!(Header::decode(&b, 3, 7, 9), Err(DecodeError::BadMac));
        assert_eq!(Header::decode(&b[..63], 3, 7, 8), Err(DecodeError::Truncated));
        assert_eq!(Header::decode(&b[..39], 3, 7, 8), Err(DecodeError::Truncated));
        let mut g = b;
        g[0] = b'X';
        assert_eq!(Header::decode(&g, 3, 7, 8), Err(DecodeError::BadMagic));
        let mut g = b;
        g[4] = 9;
        assert_eq!(Header::decode(&g, 3, 7, 8), Err(DecodeError::BadVersion));
        let mut g = b;
        g[5] = 77;
        assert_eq!(Header::decode(&g, 3, 7, 8), Err(DecodeError::BadKind));
        let mut g = b;
        g[20..22].copy_from_slice(&(MAX_ENTRIES as u16 + 1).to_be_bytes());
        assert_eq!(Header::decode(&g, 3, 7, 8), Err(DecodeError::BadKind));
    }

    #[test]
    fn known_answer() {
        // Pins the layout: a change to field order or endianness breaks this.
        let key: [u8; 16] = *b"0123456789abcdef";
        let (k0, k1) = crate::siphash::key_halves(&key);
        let b = hdr().encode(k0, k1);
        let expected_prefix: [u8; 24] = [
            0x42, 0x41, 0x54, 0x4e, 3, 1, 1, 0, 0, 0, 0, 0xc1, 0, 0, 0, 2, 0, 0, 0, 10, 0, 1, 0, 0,
        ];
        assert_eq!(&b[..24], &expected_prefix);
        assert_eq!(&b[32..40], &99u64.to_be_bytes());
        assert_eq!(&b[40..48], &[0, 0, 0, 3, 1, 2, 3, 4]);
        // The MAC, against the generic SipHash of the 56-byte block.
        let mut block = [0u8; 56];
        block[..8].copy_from_slice(&b[..8]);
        block[8..16].copy_from_slice(&b[8..16]);
        block[16..20].copy_from_slice(&b[40..44]);
        block[20..24].copy_from_slice(&b[16..20]);
        block[24..40].copy_from_slice(&b[24..40]);
        block[40..48].copy_from_slice(&b[48..56]);
        block[48..52].copy_from_slice(&b[44..48]);
        assert_eq!(&b[56..64], &crate::siphash::siphash24(k0, k1, &block).to_le_bytes());
        assert_eq!(&b[48..56], &1_700_000_000_123_456u64.to_be_bytes());
    }
}
