//! The heartbeat / distress datagram (UDP payload). Layout and rules:
//! `docs/wire-format.md`. All integers are big-endian on the wire; the MAC is
//! the SipHash-2-4 output in its canonical little-endian bytes.
//!
//! ```text
//!  0  magic "BATN"      4  version  5 kind  6 link  7 flags(0)
//!  8  cluster_id u32   12  src_node u32    16 dst_node u32   20 arg u32
//! 24  incarnation u64  32  seq u64         40 dst_incarnation u64
//! 48  mac u64 = SipHash-2-4(key, bytes 0..48)                 (56 bytes)
//! ```

use crate::siphash::{mac_words, MAC_WORDS};

/// "BATN"
pub const MAGIC: u32 = 0x4241_544e;
pub const VERSION: u8 = 1;
pub const KIND_HEARTBEAT: u8 = 1;
pub const KIND_DISTRESS: u8 = 2;
/// Bytes covered by the MAC.
pub const MAC_COVERED: usize = MAC_WORDS * 8;
/// Whole datagram payload.
pub const PACKET_LEN: usize = MAC_COVERED + 8;
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

/// A decoded baton datagram header.
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
}

/// Why a datagram was rejected by [`Header::decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    BadMagic,
    BadVersion,
    BadKind,
    BadMac,
}

/// The header bytes as the little-endian words SipHash consumes.
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
    /// Serializes the MAC-covered bytes.
    pub fn covered_bytes(&self) -> [u8; MAC_COVERED] {
        let mut b = [0u8; MAC_COVERED];
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4] = VERSION;
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
        b
    }

    /// The full datagram, MAC appended.
    pub fn encode(&self, k0: u64, k1: u64) -> [u8; PACKET_LEN] {
        let covered = self.covered_bytes();
        let mut out = [0u8; PACKET_LEN];
        out[..MAC_COVERED].copy_from_slice(&covered);
        let mac = mac_words(k0, k1, &words_of(&covered));
        out[MAC_COVERED..].copy_from_slice(&mac.to_le_bytes());
        out
    }

    /// Parses and authenticates a datagram (the same checks, in the same order,
    /// as the XDP program up to and including the MAC).
    pub fn decode(buf: &[u8], k0: u64, k1: u64) -> Result<Header, DecodeError> {
        if buf.len() < PACKET_LEN {
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
        if buf[4] != VERSION {
            return Err(DecodeError::BadVersion);
        }
        if buf[5] != KIND_HEARTBEAT && buf[5] != KIND_DISTRESS {
            return Err(DecodeError::BadKind);
        }
        let mut covered = [0u8; MAC_COVERED];
        covered.copy_from_slice(&buf[..MAC_COVERED]);
        let mut m = [0u8; 8];
        m.copy_from_slice(&buf[MAC_COVERED..PACKET_LEN]);
        if u64::from_le_bytes(m) != mac_words(k0, k1, &words_of(&covered)) {
            return Err(DecodeError::BadMac);
        }
        Ok(Header {
            kind: buf[5],
            link: buf[6],
            cluster_id: be32(8),
            src_node: be32(12),
            dst_node: be32(16),
            arg: be32(20),
            incarnation: be64(24),
            seq: be64(32),
            dst_incarnation: be64(40),
        })
    }
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
        }
    }

    #[test]
    fn roundtrip() {
        let h = hdr();
        let b = h.encode(1, 2);
        assert_eq!(b.len(), 56);
        assert_eq!(&b[0..4], b"BATN");
        assert_eq!(Header::decode(&b, 1, 2), Ok(h));
    }

    #[test]
    fn every_covered_bit_is_authenticated() {
        let b = hdr().encode(7, 8);
        for i in 0..MAC_COVERED {
            for bit in 0..8 {
                let mut c = b;
                c[i] ^= 1 << bit;
                let r = Header::decode(&c, 7, 8);
                assert!(r.is_err(), "flip of byte {i} bit {bit} accepted");
            }
        }
        for i in MAC_COVERED..PACKET_LEN {
            let mut c = b;
            c[i] ^= 0x40;
            assert_eq!(Header::decode(&c, 7, 8), Err(DecodeError::BadMac));
        }
    }

    #[test]
    fn wrong_key_truncated_and_garbage() {
        let b = hdr().encode(7, 8);
        assert_eq!(Header::decode(&b, 7, 9), Err(DecodeError::BadMac));
        assert_eq!(Header::decode(&b[..55], 7, 8), Err(DecodeError::Truncated));
        let mut g = b;
        g[0] = b'X';
        assert_eq!(Header::decode(&g, 7, 8), Err(DecodeError::BadMagic));
        let mut g = b;
        g[4] = 9;
        assert_eq!(Header::decode(&g, 7, 8), Err(DecodeError::BadVersion));
        let mut g = b;
        g[5] = 77;
        assert_eq!(Header::decode(&g, 7, 8), Err(DecodeError::BadKind));
    }

    #[test]
    fn known_answer() {
        // Pins the layout: a change to field order or endianness breaks this.
        let key: [u8; 16] = *b"0123456789abcdef";
        let (k0, k1) = crate::siphash::key_halves(&key);
        let b = hdr().encode(k0, k1);
        let expected_prefix: [u8; 24] = [
            0x42, 0x41, 0x54, 0x4e, 1, 1, 1, 0, 0, 0, 0, 0xc1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 10,
        ];
        assert_eq!(&b[..24], &expected_prefix);
        assert_eq!(&b[32..40], &99u64.to_be_bytes());
    }
}
