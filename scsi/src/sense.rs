//! SCSI status, sense data (fixed and descriptor formats, SPC-4 4.5) and the
//! Linux host/driver status bytes of `sg_io_hdr`.

use std::fmt;

/// SCSI status codes (SAM-5 table 43).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;

    /// A name for a status code.
    pub fn name(s: u8) -> &'static str {
        match s {
            GOOD => "GOOD",
            CHECK_CONDITION => "CHECK CONDITION",
            CONDITION_MET => "CONDITION MET",
            BUSY => "BUSY",
            RESERVATION_CONFLICT => "RESERVATION CONFLICT",
            TASK_SET_FULL => "TASK SET FULL",
            ACA_ACTIVE => "ACA ACTIVE",
            TASK_ABORTED => "TASK ABORTED",
            _ => "unknown status",
        }
    }
}

/// Linux `host_status` values (include/scsi/scsi_status.h, `DID_*`).
pub mod host {
    pub const DID_OK: u16 = 0x00;
    pub const DID_NO_CONNECT: u16 = 0x01;
    pub const DID_BUS_BUSY: u16 = 0x02;
    pub const DID_TIME_OUT: u16 = 0x03;
    pub const DID_BAD_TARGET: u16 = 0x04;
    pub const DID_ABORT: u16 = 0x05;
    pub const DID_PARITY: u16 = 0x06;
    pub const DID_ERROR: u16 = 0x07;
    pub const DID_RESET: u16 = 0x08;
    pub const DID_BAD_INTR: u16 = 0x09;
    pub const DID_PASSTHROUGH: u16 = 0x0a;
    pub const DID_SOFT_ERROR: u16 = 0x0b;
    pub const DID_IMM_RETRY: u16 = 0x0c;
    pub const DID_REQUEUE: u16 = 0x0d;
    pub const DID_TRANSPORT_DISRUPTED: u16 = 0x0e;
    pub const DID_TRANSPORT_FAILFAST: u16 = 0x0f;
    pub const DID_TARGET_FAILURE: u16 = 0x10;
    pub const DID_NEXUS_FAILURE: u16 = 0x11;
    pub const DID_ALLOC_FAILURE: u16 = 0x12;
    pub const DID_MEDIUM_ERROR: u16 = 0x13;
    pub const DID_TRANSPORT_MARGINAL: u16 = 0x14;

    /// The kernel's name and a plain-words meaning of a host status.
    pub fn describe(h: u16) -> &'static str {
        match h {
            DID_OK => "DID_OK",
            DID_NO_CONNECT => "DID_NO_CONNECT: no connection to the target",
            DID_BUS_BUSY => "DID_BUS_BUSY: the bus stayed busy",
            DID_TIME_OUT => "DID_TIME_OUT: the command timed out",
            DID_BAD_TARGET => "DID_BAD_TARGET: the target is gone",
            DID_ABORT => "DID_ABORT: the command was aborted",
            DID_PARITY => "DID_PARITY: parity error",
            DID_ERROR => "DID_ERROR: internal error of the host adapter",
            DID_RESET => "DID_RESET: the bus or device was reset",
            DID_BAD_INTR => "DID_BAD_INTR: unexpected interrupt",
            DID_PASSTHROUGH => "DID_PASSTHROUGH",
            DID_SOFT_ERROR => "DID_SOFT_ERROR: the adapter asked for a retry",
            DID_IMM_RETRY => "DID_IMM_RETRY: retry at once",
            DID_REQUEUE => "DID_REQUEUE: requeued",
            DID_TRANSPORT_DISRUPTED => {
                "DID_TRANSPORT_DISRUPTED: the transport (e.g. the iSCSI session) is down and recovering"
            }
            DID_TRANSPORT_FAILFAST => {
                "DID_TRANSPORT_FAILFAST: the transport (e.g. the iSCSI session) failed and gave up"
            }
            DID_TARGET_FAILURE => "DID_TARGET_FAILURE: permanent target failure",
            DID_NEXUS_FAILURE => "DID_NEXUS_FAILURE: permanent nexus failure",
            DID_ALLOC_FAILURE => "DID_ALLOC_FAILURE: space allocation failed",
            DID_MEDIUM_ERROR => "DID_MEDIUM_ERROR: medium error",
            DID_TRANSPORT_MARGINAL => "DID_TRANSPORT_MARGINAL: the transport is marginal",
            _ => "unknown host status",
        }
    }
}

/// Linux `driver_status` values (low nibble; the high nibble held "suggest" bits).
pub mod driver {
    pub const DRIVER_OK: u16 = 0x00;
    pub const DRIVER_BUSY: u16 = 0x01;
    pub const DRIVER_SOFT: u16 = 0x02;
    pub const DRIVER_MEDIA: u16 = 0x03;
    pub const DRIVER_ERROR: u16 = 0x04;
    pub const DRIVER_INVALID: u16 = 0x05;
    pub const DRIVER_TIMEOUT: u16 = 0x06;
    pub const DRIVER_HARD: u16 = 0x07;
    /// Sense data is valid: not an error in itself.
    pub const DRIVER_SENSE: u16 = 0x08;
}

/// Sense keys (SPC-4 table 49).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    BlankCheck = 0x8,
    VendorSpecific = 0x9,
    CopyAborted = 0xa,
    AbortedCommand = 0xb,
    Reserved = 0xc,
    VolumeOverflow = 0xd,
    Miscompare = 0xe,
    Completed = 0xf,
}

impl SenseKey {
    /// The key in the low nibble of `b`.
    pub fn from_nibble(b: u8) -> SenseKey {
        use SenseKey::*;
        match b & 0x0f {
            0x0 => NoSense,
            0x1 => RecoveredError,
            0x2 => NotReady,
            0x3 => MediumError,
            0x4 => HardwareError,
            0x5 => IllegalRequest,
            0x6 => UnitAttention,
            0x7 => DataProtect,
            0x8 => BlankCheck,
            0x9 => VendorSpecific,
            0xa => CopyAborted,
            0xb => AbortedCommand,
            0xc => Reserved,
            0xd => VolumeOverflow,
            0xe => Miscompare,
            _ => Completed,
        }
    }

    /// SPC-4's name, e.g. `UNIT ATTENTION`.
    pub fn name(self) -> &'static str {
        use SenseKey::*;
        match self {
            NoSense => "NO SENSE",
            RecoveredError => "RECOVERED ERROR",
            NotReady => "NOT READY",
            MediumError => "MEDIUM ERROR",
            HardwareError => "HARDWARE ERROR",
            IllegalRequest => "ILLEGAL REQUEST",
            UnitAttention => "UNIT ATTENTION",
            DataProtect => "DATA PROTECT",
            BlankCheck => "BLANK CHECK",
            VendorSpecific => "VENDOR SPECIFIC",
            CopyAborted => "COPY ABORTED",
            AbortedCommand => "ABORTED COMMAND",
            Reserved => "RESERVED (0xC)",
            VolumeOverflow => "VOLUME OVERFLOW",
            Miscompare => "MISCOMPARE",
            Completed => "COMPLETED",
        }
    }
}

impl fmt::Display for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The SENSE KEY SPECIFIC field pointer of an ILLEGAL REQUEST: which byte
/// (and bit) of the CDB or of the parameter list the device server rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// C/D: true if the byte is in the CDB, false if in the parameter list.
    pub in_cdb: bool,
    /// FIELD POINTER: the byte.
    pub byte: u16,
    /// BIT POINTER, when BPV is set.
    pub bit: Option<u8>,
}

impl fmt::Display for FieldPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.in_cdb { "CDB" } else { "parameter list" };
        match self.bit {
            Some(bit) => write!(f, "{what} byte {} bit {bit}", self.byte),
            None => write!(f, "{what} byte {}", self.byte),
        }
    }
}

/// Decoded sense data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// RESPONSE CODE: 0x70/0x71 fixed, 0x72/0x73 descriptor format.
    pub response_code: u8,
    /// SENSE KEY.
    pub key: SenseKey,
    /// ADDITIONAL SENSE CODE (0 when the data stops before it).
    pub asc: u8,
    /// ADDITIONAL SENSE CODE QUALIFIER (0 when the data stops before it).
    pub ascq: u8,
    /// The field pointer, for ILLEGAL REQUEST with SKSV set.
    pub field_pointer: Option<FieldPointer>,
}

impl Sense {
    /// True for deferred errors (0x71, 0x73): about an earlier command.
    pub fn deferred(&self) -> bool {
        self.response_code & 0x01 != 0
    }

    /// True for descriptor format (0x72, 0x73).
    pub fn descriptor_format(&self) -> bool {
        self.response_code >= 0x72
    }

    /// Parse sense data as the device returned it (`sb_len_wr` bytes).
    /// `None` for an empty buffer or a response code other than 0x70-0x73
    /// (vendor-specific 0x7F, or garbage).
    pub fn parse(buf: &[u8]) -> Option<Sense> {
        let response_code = *buf.first()? & 0x7f;
        match response_code {
            0x70 | 0x71 => {
                // Fixed format: byte 2 SENSE KEY, byte 7 ADDITIONAL SENSE
                // LENGTH, 12 ASC, 13 ASCQ, 15-17 SENSE KEY SPECIFIC.
                let key = SenseKey::from_nibble(*buf.get(2)?);
                let len = buf
                    .len()
                    .min(8 + usize::from(buf.get(7).copied().unwrap_or(0)));
                let b = &buf[..len];
                let asc = b.get(12).copied().unwrap_or(0);
                let ascq = b.get(13).copied().unwrap_or(0);
                let field_pointer = match (key, b.get(15..18)) {
                    (SenseKey::IllegalRequest, Some(sks)) => field_pointer(sks),
                    _ => None,
                };
                Some(Sense {
                    response_code,
                    key,
                    asc,
                    ascq,
                    field_pointer,
                })
            }
            0x72 | 0x73 => {
                // Descriptor format: byte 1 SENSE KEY, 2 ASC, 3 ASCQ, 7
                // ADDITIONAL SENSE LENGTH, then descriptors (type, length, ...).
                let key = SenseKey::from_nibble(*buf.get(1)?);
                let asc = buf.get(2).copied().unwrap_or(0);
                let ascq = buf.get(3).copied().unwrap_or(0);
                let len = buf
                    .len()
                    .min(8 + usize::from(buf.get(7).copied().unwrap_or(0)));
                let mut field = None;
                let mut off = 8;
                while off + 2 <= len {
                    let dtype = buf[off];
                    let dlen = usize::from(buf[off + 1]);
                    let end = (off + 2 + dlen).min(len);
                    // Sense key specific descriptor: type 2, length 6, SKS in bytes 4-6.
                    if dtype == 0x02 && key == SenseKey::IllegalRequest && end >= off + 7 {
                        field = field_pointer(&buf[off + 4..off + 7]);
                    }
                    off += 2 + dlen;
                }
                Some(Sense {
                    response_code,
                    key,
                    asc,
                    ascq,
                    field_pointer: field,
                })
            }
            _ => None,
        }
    }
}

fn field_pointer(sks: &[u8]) -> Option<FieldPointer> {
    // SKSV (bit 7), C/D (bit 6), BPV (bit 3), BIT POINTER (2-0); FIELD POINTER.
    if sks[0] & 0x80 == 0 {
        return None;
    }
    Some(FieldPointer {
        in_cdb: sks[0] & 0x40 != 0,
        byte: u16::from_be_bytes([sks[1], sks[2]]),
        bit: (sks[0] & 0x08 != 0).then_some(sks[0] & 0x07),
    })
}

/// The name of an additional sense code and qualifier (SPC-4 annex F), for
/// the codes a PR user meets; `None` for the others.
pub fn asc_name(asc: u8, ascq: u8) -> Option<&'static str> {
    Some(match (asc, ascq) {
        (0x00, 0x00) => "no additional sense information",
        (0x04, 0x00) => "logical unit not ready, cause not reportable",
        (0x04, 0x01) => "logical unit is in process of becoming ready",
        (0x04, 0x02) => "logical unit not ready, initializing command required",
        (0x04, 0x03) => "logical unit not ready, manual intervention required",
        (0x04, 0x0a) => "logical unit not accessible, asymmetric access state transition",
        (0x04, 0x0b) => "logical unit not accessible, target port in standby state",
        (0x04, 0x0c) => "logical unit not accessible, target port in unavailable state",
        (0x08, 0x00) => "logical unit communication failure",
        (0x1a, 0x00) => "parameter list length error",
        (0x20, 0x00) => "invalid command operation code",
        (0x24, 0x00) => "invalid field in CDB",
        (0x25, 0x00) => "logical unit not supported",
        (0x26, 0x00) => "invalid field in parameter list",
        (0x26, 0x04) => "invalid release of persistent reservation",
        (0x27, 0x00) => "write protected",
        (0x29, 0x00) => "power on, reset, or bus device reset occurred",
        (0x29, 0x01) => "power on occurred",
        (0x29, 0x02) => "SCSI bus reset occurred",
        (0x29, 0x03) => "bus device reset function occurred",
        (0x29, 0x04) => "device internal reset",
        (0x29, 0x07) => "I_T nexus loss occurred",
        (0x2a, 0x01) => "mode parameters changed",
        (0x2a, 0x03) => "reservations preempted",
        (0x2a, 0x04) => "reservations released",
        (0x2a, 0x05) => "registrations preempted",
        (0x2a, 0x06) => "asymmetric access state changed",
        (0x2a, 0x09) => "capacity data has changed",
        (0x2c, 0x00) => "command sequence error",
        (0x3a, 0x00) => "medium not present",
        (0x3f, 0x03) => "inquiry data has changed",
        (0x3f, 0x0e) => "reported luns data has changed",
        (0x55, 0x04) => "insufficient registration resources",
        (0x29, _) => "power on, reset, or bus device reset occurred",
        _ => return None,
    })
}

/// An ASC/ASCQ pair printed as `2A/05 registrations preempted` (or just
/// `2A/05` when unnamed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asc(pub u8, pub u8);

impl fmt::Display for Asc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02X}/{:02X}", self.0, self.1)?;
        if let Some(n) = asc_name(self.0, self.1) {
            write!(f, " {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed-format sense as a device sends it (18 bytes).
    fn fixed(key: u8, asc: u8, ascq: u8) -> [u8; 18] {
        [
            0x70, // VALID 0, RESPONSE CODE 0x70 (current, fixed)
            0x00, // obsolete
            key,  // FILEMARK/EOM/ILI 0, SENSE KEY
            0, 0, 0, 0,    // INFORMATION
            0x0a, // ADDITIONAL SENSE LENGTH = 10
            0, 0, 0, 0, // COMMAND-SPECIFIC INFORMATION
            asc, ascq, // ADDITIONAL SENSE CODE, QUALIFIER
            0x00, // FIELD REPLACEABLE UNIT CODE
            0, 0, 0, // SENSE KEY SPECIFIC
        ]
    }

    /// Descriptor-format sense with no descriptors (8 bytes).
    fn desc(key: u8, asc: u8, ascq: u8) -> [u8; 8] {
        [
            0x72, // RESPONSE CODE 0x72 (current, descriptor)
            key,  // SENSE KEY
            asc, ascq, // ASC, ASCQ
            0, 0, 0,    // reserved
            0x00, // ADDITIONAL SENSE LENGTH = 0
        ]
    }

    #[test]
    fn fixed_unit_attention_conditions() {
        for (asc, ascq, name) in [
            (0x2a, 0x03, "reservations preempted"),
            (0x2a, 0x04, "reservations released"),
            (0x2a, 0x05, "registrations preempted"),
            (0x29, 0x00, "power on, reset, or bus device reset occurred"),
            (0x29, 0x07, "I_T nexus loss occurred"),
        ] {
            let s = Sense::parse(&fixed(0x06, asc, ascq)).unwrap();
            assert_eq!(s.key, SenseKey::UnitAttention);
            assert_eq!((s.asc, s.ascq), (asc, ascq));
            assert!(!s.deferred() && !s.descriptor_format());
            assert_eq!(asc_name(asc, ascq), Some(name));
        }
        // Unlisted 29/xx still reads as a reset.
        assert_eq!(
            asc_name(0x29, 0x7e),
            Some("power on, reset, or bus device reset occurred")
        );
        assert_eq!(Asc(0x2a, 0x05).to_string(), "2A/05 registrations preempted");
        assert_eq!(Asc(0x77, 0x01).to_string(), "77/01");
    }

    #[test]
    fn descriptor_unit_attention_conditions() {
        for (asc, ascq) in [(0x2a, 0x03), (0x2a, 0x04), (0x2a, 0x05), (0x29, 0x01)] {
            let s = Sense::parse(&desc(0x06, asc, ascq)).unwrap();
            assert_eq!(s.key, SenseKey::UnitAttention);
            assert_eq!((s.asc, s.ascq), (asc, ascq));
            assert!(s.descriptor_format() && !s.deferred());
        }
    }

    #[test]
    fn not_ready_and_illegal_request_both_formats() {
        for (key, asc, ascq, k) in [
            (0x02, 0x04, 0x00, SenseKey::NotReady),
            (0x02, 0x04, 0x01, SenseKey::NotReady),
            (0x05, 0x20, 0x00, SenseKey::IllegalRequest),
            (0x05, 0x24, 0x00, SenseKey::IllegalRequest),
            (0x05, 0x26, 0x00, SenseKey::IllegalRequest),
            (0x0b, 0x00, 0x00, SenseKey::AbortedCommand),
        ] {
            for s in [
                Sense::parse(&fixed(key, asc, ascq)),
                Sense::parse(&desc(key, asc, ascq)),
            ] {
                let s = s.unwrap();
                assert_eq!((s.key, s.asc, s.ascq), (k, asc, ascq));
                assert_eq!(s.field_pointer, None);
            }
        }
    }

    #[test]
    fn fixed_field_pointer() {
        let mut b = fixed(0x05, 0x24, 0x00);
        b[15] = 0xc0; // SKSV | C/D=1 (CDB), BPV 0
        b[16] = 0x00;
        b[17] = 0x02; // byte 2: SCOPE/TYPE
        let s = Sense::parse(&b).unwrap();
        let fp = s.field_pointer.unwrap();
        assert_eq!(
            fp,
            FieldPointer {
                in_cdb: true,
                byte: 2,
                bit: None
            }
        );
        assert_eq!(fp.to_string(), "CDB byte 2");

        b[15] = 0x8a; // SKSV | C/D=0 (parameter list) | BPV | bit 2
        b[17] = 0x14; // byte 20: the flags byte
        let fp = Sense::parse(&b).unwrap().field_pointer.unwrap();
        assert_eq!(
            fp,
            FieldPointer {
                in_cdb: false,
                byte: 20,
                bit: Some(2)
            }
        );
        assert_eq!(fp.to_string(), "parameter list byte 20 bit 2");

        b[15] = 0x40; // SKSV clear: no pointer
        assert_eq!(Sense::parse(&b).unwrap().field_pointer, None);
    }

    #[test]
    fn descriptor_field_pointer() {
        let b = [
            0x72, 0x05, 0x26, 0x00, 0, 0, 0,    // header: ILLEGAL REQUEST 26/00
            0x08, // ADDITIONAL SENSE LENGTH = 8
            0x02, 0x06, // descriptor: SENSE KEY SPECIFIC, length 6
            0x00, 0x00, // reserved
            0x80, 0x00, 0x08, // SKSV, parameter list, byte 8
            0x00, // reserved
        ];
        let s = Sense::parse(&b).unwrap();
        assert_eq!(
            s.field_pointer,
            Some(FieldPointer {
                in_cdb: false,
                byte: 8,
                bit: None
            })
        );
    }

    #[test]
    fn deferred_and_truncated_and_garbage() {
        let mut b = fixed(0x06, 0x2a, 0x05);
        b[0] = 0xf1; // VALID bit set, deferred fixed
        let s = Sense::parse(&b).unwrap();
        assert!(s.deferred());
        assert_eq!(s.response_code, 0x71);
        let mut d = desc(0x02, 0x04, 0x02);
        d[0] = 0x73;
        assert!(Sense::parse(&d).unwrap().deferred());

        // Fixed sense cut before ASC: key known, ASC/ASCQ 0.
        let s = Sense::parse(&fixed(0x06, 0x2a, 0x05)[..8]).unwrap();
        assert_eq!((s.key, s.asc, s.ascq), (SenseKey::UnitAttention, 0, 0));
        // ADDITIONAL SENSE LENGTH too small to cover ASC: ASC not trusted.
        let mut b = fixed(0x06, 0x2a, 0x05);
        b[7] = 4;
        assert_eq!(Sense::parse(&b).unwrap().asc, 0);
        // Too short for even the key.
        assert_eq!(Sense::parse(&[0x70, 0x00]), None);
        assert_eq!(Sense::parse(&[0x72]), None);
        assert_eq!(Sense::parse(&[]), None);
        // Vendor-specific or garbage response codes.
        assert_eq!(Sense::parse(&[0x7f, 0, 6, 0, 0, 0, 0, 0]), None);
        assert_eq!(Sense::parse(&[0x00; 18]), None);
    }

    #[test]
    fn names() {
        assert_eq!(SenseKey::from_nibble(0xf6), SenseKey::UnitAttention);
        for n in 0..16u8 {
            assert_eq!(SenseKey::from_nibble(n) as u8, n);
        }
        assert_eq!(SenseKey::IllegalRequest.to_string(), "ILLEGAL REQUEST");
        assert_eq!(status::name(0x18), "RESERVATION CONFLICT");
        assert!(
            host::describe(host::DID_TRANSPORT_DISRUPTED).starts_with("DID_TRANSPORT_DISRUPTED")
        );
    }
}
