//! Decoding of the data-in buffers: PERSISTENT RESERVE IN (READ KEYS, READ
//! RESERVATION, REPORT CAPABILITIES, READ FULL STATUS) and standard INQUIRY.
//!
//! Every decoder takes the bytes actually transferred (the allocation length
//! minus the residual count) and is pure. A response longer than what was
//! transferred (the device's ADDITIONAL LENGTH says more than the buffer
//! holds) is decoded as far as it goes and flagged `truncated`; a buffer too
//! short to hold even the fixed header is a [`DecodeError`].

use crate::cdb::PrType;

/// A response that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the fixed part of the response.
    #[error("{what} response is {got} bytes, shorter than its {needed}-byte fixed part")]
    TooShort {
        /// Which response.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes received.
        got: usize,
    },
}

fn need(what: &'static str, buf: &[u8], needed: usize) -> Result<(), DecodeError> {
    if buf.len() < needed {
        Err(DecodeError::TooShort {
            what,
            needed,
            got: buf.len(),
        })
    } else {
        Ok(())
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// READ KEYS parameter data (SPC-4 6.16.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// PRGENERATION: bumped by the device server on every successful PR OUT
    /// that changes registrations or the reservation (not by RESERVE/RELEASE).
    pub generation: u32,
    /// The registered reservation keys, one per registered I_T nexus (a key
    /// registered through several nexuses appears several times).
    pub keys: Vec<u64>,
    /// ADDITIONAL LENGTH as the device reported it: bytes of key list it has.
    pub additional_length: u32,
    /// True when the buffer held fewer keys than ADDITIONAL LENGTH announced.
    pub truncated: bool,
}

impl Keys {
    /// Whether `key` is registered (through at least one I_T nexus).
    pub fn contains(&self, key: u64) -> bool {
        self.keys.contains(&key)
    }
}

/// Decode READ KEYS: 4 bytes PRGENERATION, 4 bytes ADDITIONAL LENGTH, then
/// 8-byte keys.
pub fn read_keys(buf: &[u8]) -> Result<Keys, DecodeError> {
    need("READ KEYS", buf, 8)?;
    let generation = be32(&buf[0..4]);
    let additional_length = be32(&buf[4..8]);
    let have = buf.len() - 8;
    let listed = usize::try_from(additional_length).unwrap_or(usize::MAX);
    let usable = listed.min(have);
    let keys = buf[8..8 + usable - usable % 8]
        .chunks_exact(8)
        .map(be64)
        .collect();
    Ok(Keys {
        generation,
        keys,
        additional_length,
        truncated: have < listed,
    })
}

/// The persistent reservation that READ RESERVATION reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// RESERVATION KEY of the holder. 0 for the all-registrants types (7, 8),
    /// where every registrant holds the reservation.
    pub key: u64,
    /// SCOPE (0 = LU_SCOPE).
    pub scope: u8,
    /// TYPE code as reported; see [`Reservation::pr_type`].
    pub type_code: u8,
}

impl Reservation {
    /// The type, if the code is one SPC-4 defines.
    pub fn pr_type(&self) -> Option<PrType> {
        PrType::from_code(self.type_code)
    }
}

/// READ RESERVATION parameter data (SPC-4 6.16.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationStatus {
    /// PRGENERATION.
    pub generation: u32,
    /// The reservation, or `None` when the logical unit is not reserved.
    pub reservation: Option<Reservation>,
}

/// Decode READ RESERVATION: the 8-byte header, then (ADDITIONAL LENGTH 16)
/// the key in bytes 8-15 and SCOPE/TYPE in byte 21.
pub fn read_reservation(buf: &[u8]) -> Result<ReservationStatus, DecodeError> {
    need("READ RESERVATION", buf, 8)?;
    let generation = be32(&buf[0..4]);
    let additional_length = be32(&buf[4..8]);
    if additional_length == 0 {
        return Ok(ReservationStatus {
            generation,
            reservation: None,
        });
    }
    need("READ RESERVATION", buf, 22)?;
    Ok(ReservationStatus {
        generation,
        reservation: Some(Reservation {
            key: be64(&buf[8..16]),
            scope: buf[21] >> 4,
            type_code: buf[21] & 0x0f,
        }),
    })
}

/// REPORT CAPABILITIES parameter data (SPC-4 6.16.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// RLR_C (byte 2 bit 7): replace lost reservation capable.
    pub rlr_c: bool,
    /// CRH (byte 2 bit 4): compatible reservation handling (SPC-2 RESERVE
    /// is refused while a persistent reservation exists).
    pub crh: bool,
    /// SIP_C (byte 2 bit 3): SPEC_I_PT supported.
    pub sip_c: bool,
    /// ATP_C (byte 2 bit 2): ALL_TG_PT supported.
    pub atp_c: bool,
    /// PTPL_C (byte 2 bit 0): APTPL (persist through power loss) supported.
    pub ptpl_c: bool,
    /// TMV (byte 3 bit 7): the type mask is valid. When false, `types` is
    /// empty and says nothing.
    pub tmv: bool,
    /// ALLOW COMMANDS (byte 3 bits 6-4): which commands a Write Exclusive
    /// reservation lets non-holders through (SPC-4 table 167).
    pub allow_commands: u8,
    /// PTPL_A (byte 3 bit 0): persist through power loss is active.
    pub ptpl_a: bool,
    /// PERSISTENT RESERVATION TYPE MASK (bytes 4-5, big-endian) as reported.
    pub type_mask: u16,
    /// The types the mask declares supported (empty unless `tmv`), in code order.
    pub types: Vec<PrType>,
}

impl Capabilities {
    /// True when the device declares support for `t` (TMV set and its mask bit set).
    pub fn supports(&self, t: PrType) -> bool {
        self.types.contains(&t)
    }
}

/// Decode REPORT CAPABILITIES (8 bytes; the first 6 are needed).
pub fn report_capabilities(buf: &[u8]) -> Result<Capabilities, DecodeError> {
    need("REPORT CAPABILITIES", buf, 6)?;
    let b2 = buf[2];
    let b3 = buf[3];
    let tmv = b3 & 0x80 != 0;
    let type_mask = u16::from_be_bytes([buf[4], buf[5]]);
    let types = if tmv {
        PrType::ALL
            .into_iter()
            .filter(|t| type_mask & t.mask_bit() != 0)
            .collect()
    } else {
        Vec::new()
    };
    Ok(Capabilities {
        rlr_c: b2 & 0x80 != 0,
        crh: b2 & 0x10 != 0,
        sip_c: b2 & 0x08 != 0,
        atp_c: b2 & 0x04 != 0,
        ptpl_c: b2 & 0x01 != 0,
        tmv,
        allow_commands: (b3 >> 4) & 0x07,
        ptpl_a: b3 & 0x01 != 0,
        type_mask,
        types,
    })
}

/// One registration in READ FULL STATUS (SPC-4 6.16.5, table 169).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registrant {
    /// RESERVATION KEY.
    pub key: u64,
    /// ALL_TG_PT: registered through all target ports.
    pub all_tg_pt: bool,
    /// R_HOLDER: this registrant holds the reservation.
    pub holder: bool,
    /// SCOPE of the reservation (meaningful when `holder`).
    pub scope: u8,
    /// TYPE code of the reservation (meaningful when `holder`).
    pub type_code: u8,
    /// RELATIVE TARGET PORT IDENTIFIER (meaningful unless `all_tg_pt`).
    pub relative_target_port: u16,
    /// The initiator's TransportID, as sent.
    pub transport_id: Vec<u8>,
}

impl Registrant {
    /// The iSCSI initiator name (and `,i,0x<ISID>` if present) when the
    /// TransportID is iSCSI's (protocol identifier 5).
    pub fn iscsi_name(&self) -> Option<String> {
        let t = &self.transport_id;
        if t.len() < 5 || t[0] & 0x0f != 5 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([t[2], t[3]]));
        let name = &t[4..t.len().min(4 + len)];
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        Some(String::from_utf8_lossy(&name[..end]).into_owned())
    }
}

/// READ FULL STATUS parameter data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullStatus {
    /// PRGENERATION.
    pub generation: u32,
    /// The registrations, as far as the buffer held them.
    pub registrants: Vec<Registrant>,
    /// ADDITIONAL LENGTH as reported.
    pub additional_length: u32,
    /// True when the buffer held less than ADDITIONAL LENGTH announced.
    pub truncated: bool,
}

/// Decode READ FULL STATUS: the 8-byte header, then descriptors of 24 bytes
/// plus ADDITIONAL DESCRIPTOR LENGTH (the TransportID).
pub fn read_full_status(buf: &[u8]) -> Result<FullStatus, DecodeError> {
    need("READ FULL STATUS", buf, 8)?;
    let generation = be32(&buf[0..4]);
    let additional_length = be32(&buf[4..8]);
    let listed = usize::try_from(additional_length).unwrap_or(usize::MAX);
    let end = 8 + listed.min(buf.len() - 8);
    let mut truncated = buf.len() - 8 < listed;
    let mut registrants = Vec::new();
    let mut off = 8;
    while off < end {
        if end - off < 24 {
            truncated = true;
            break;
        }
        let d = &buf[off..end];
        let tid_len = usize::try_from(be32(&d[20..24])).unwrap_or(usize::MAX);
        if d.len() - 24 < tid_len {
            truncated = true;
            break;
        }
        registrants.push(Registrant {
            key: be64(&d[0..8]),
            all_tg_pt: d[12] & 0x02 != 0,
            holder: d[12] & 0x01 != 0,
            scope: d[13] >> 4,
            type_code: d[13] & 0x0f,
            relative_target_port: u16::from_be_bytes([d[18], d[19]]),
            transport_id: d[24..24 + tid_len].to_vec(),
        });
        off += 24 + tid_len;
    }
    Ok(FullStatus {
        generation,
        registrants,
        additional_length,
        truncated,
    })
}

/// Standard INQUIRY data (SPC-4 6.6.2), the fields an operator looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inquiry {
    /// PERIPHERAL QUALIFIER (byte 0 bits 7-5): 0 = a logical unit is connected.
    pub peripheral_qualifier: u8,
    /// PERIPHERAL DEVICE TYPE (byte 0 bits 4-0): 0 = direct access block device (a disk).
    pub device_type: u8,
    /// RMB (byte 1 bit 7): removable medium.
    pub removable: bool,
    /// VERSION (byte 2): 5 = SPC-3, 6 = SPC-4, 7 = SPC-5.
    pub version: u8,
    /// T10 VENDOR IDENTIFICATION (bytes 8-15), trailing spaces trimmed.
    pub vendor: String,
    /// PRODUCT IDENTIFICATION (bytes 16-31), trimmed.
    pub product: String,
    /// PRODUCT REVISION LEVEL (bytes 32-35), trimmed.
    pub revision: String,
}

impl Inquiry {
    /// A name for the peripheral device type (SPC-4 table 144).
    pub fn device_type_name(&self) -> &'static str {
        match self.device_type {
            0x00 => "disk",
            0x01 => "tape",
            0x05 => "cd/dvd",
            0x07 => "optical memory",
            0x08 => "medium changer",
            0x0c => "storage array controller",
            0x0d => "enclosure",
            0x0e => "simplified direct access",
            0x1e => "well known logical unit",
            0x1f => "unknown or no device type",
            _ => "other",
        }
    }
}

fn ascii_field(buf: &[u8], from: usize, to: usize) -> String {
    if from >= buf.len() {
        return String::new();
    }
    let raw = &buf[from..to.min(buf.len())];
    let s: String = raw
        .iter()
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                ' '
            }
        })
        .collect();
    s.trim().to_string()
}

/// Decode standard INQUIRY data. At least the 5-byte header is needed; the
/// identification strings are empty when the data stops short of them.
pub fn inquiry(buf: &[u8]) -> Result<Inquiry, DecodeError> {
    need("INQUIRY", buf, 5)?;
    // Bytes past ADDITIONAL LENGTH + 5 are not data, even if transferred.
    let valid = &buf[..buf.len().min(usize::from(buf[4]) + 5)];
    Ok(Inquiry {
        peripheral_qualifier: buf[0] >> 5,
        device_type: buf[0] & 0x1f,
        removable: buf[1] & 0x80 != 0,
        version: buf[2],
        vendor: ascii_field(valid, 8, 16),
        product: ascii_field(valid, 16, 32),
        revision: ascii_field(valid, 32, 36),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_keys_two_keys() {
        let buf = [
            0x00, 0x00, 0x00, 0x07, // PRGENERATION = 7
            0x00, 0x00, 0x00, 0x10, // ADDITIONAL LENGTH = 16 (two keys)
            0x00, 0x00, 0x10, 0x92, 0x00, 0x00, 0x00, 0x01, // key 1
            0x00, 0x00, 0x10, 0x92, 0x00, 0x00, 0x00, 0x02, // key 2
        ];
        let k = read_keys(&buf).unwrap();
        assert_eq!(k.generation, 7);
        assert_eq!(k.keys, vec![0x0000_1092_0000_0001, 0x0000_1092_0000_0002]);
        assert_eq!(k.additional_length, 16);
        assert!(!k.truncated);
        assert!(k.contains(0x0000_1092_0000_0002));
        assert!(!k.contains(0x0000_1092_0000_0003));
    }

    #[test]
    fn read_keys_none_registered() {
        let buf = [0, 0, 0, 0x2a, 0, 0, 0, 0];
        let k = read_keys(&buf).unwrap();
        assert_eq!(k.generation, 0x2a);
        assert!(k.keys.is_empty());
        assert!(!k.truncated);
    }

    #[test]
    fn read_keys_truncated() {
        // The device has 3 keys (24 bytes) but the buffer holds one and a half.
        let buf = [
            0x00, 0x00, 0x01, 0x00, // PRGENERATION = 256
            0x00, 0x00, 0x00, 0x18, // ADDITIONAL LENGTH = 24
            0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // key 1
            0x22, 0x22, 0x22, 0x22, // half of key 2
        ];
        let k = read_keys(&buf).unwrap();
        assert_eq!(k.generation, 256);
        assert_eq!(k.keys, vec![0x1111_1111_1111_1111]);
        assert_eq!(k.additional_length, 24);
        assert!(k.truncated);
    }

    #[test]
    fn read_keys_ignores_bytes_past_additional_length() {
        let mut buf = vec![0, 0, 0, 1, 0, 0, 0, 8];
        buf.extend_from_slice(&5u64.to_be_bytes());
        buf.extend_from_slice(&[0xff; 16]); // padding the device did not count
        let k = read_keys(&buf).unwrap();
        assert_eq!(k.keys, vec![5]);
        assert!(!k.truncated);
    }

    #[test]
    fn read_keys_too_short() {
        assert_eq!(
            read_keys(&[]),
            Err(DecodeError::TooShort {
                what: "READ KEYS",
                needed: 8,
                got: 0
            })
        );
        assert!(read_keys(&[0; 7]).is_err());
    }

    #[test]
    fn read_reservation_held() {
        let buf = [
            0x00, 0x00, 0x00, 0x03, // PRGENERATION = 3
            0x00, 0x00, 0x00, 0x10, // ADDITIONAL LENGTH = 16
            0x00, 0x00, 0x10, 0x92, 0x00, 0x00, 0x00, 0x01, // RESERVATION KEY
            0x00, 0x00, 0x00, 0x00, // obsolete
            0x00, // reserved
            0x05, // SCOPE = 0 (LU_SCOPE), TYPE = 5
            0x00, 0x00, // obsolete
        ];
        let r = read_reservation(&buf).unwrap();
        assert_eq!(r.generation, 3);
        let res = r.reservation.unwrap();
        assert_eq!(res.key, 0x0000_1092_0000_0001);
        assert_eq!(res.scope, 0);
        assert_eq!(res.type_code, 5);
        assert_eq!(res.pr_type(), Some(PrType::WriteExclusiveRegistrantsOnly));
    }

    #[test]
    fn read_reservation_unknown_type_and_scope() {
        let mut buf = [0u8; 24];
        buf[7] = 0x10;
        buf[21] = 0x1f; // SCOPE 1 (obsolete), TYPE 15 (reserved)
        let res = read_reservation(&buf).unwrap().reservation.unwrap();
        assert_eq!(res.scope, 1);
        assert_eq!(res.type_code, 15);
        assert_eq!(res.pr_type(), None);
    }

    #[test]
    fn read_reservation_none() {
        let buf = [0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00];
        let r = read_reservation(&buf).unwrap();
        assert_eq!(
            r,
            ReservationStatus {
                generation: 9,
                reservation: None
            }
        );
        // The same with the 24 bytes a device typically transfers anyway.
        let mut long = [0u8; 24];
        long[3] = 9;
        assert_eq!(read_reservation(&long).unwrap(), r);
    }

    #[test]
    fn read_reservation_truncated_and_empty() {
        assert!(matches!(
            read_reservation(&[]),
            Err(DecodeError::TooShort {
                needed: 8,
                got: 0,
                ..
            })
        ));
        // Header says a reservation follows, but the type byte is missing.
        let buf = [0, 0, 0, 1, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            read_reservation(&buf),
            Err(DecodeError::TooShort {
                what: "READ RESERVATION",
                needed: 22,
                got: 16
            })
        );
    }

    #[test]
    fn report_capabilities_lio_like() {
        let buf = [
            0x00, 0x08, // LENGTH = 8
            0x15, // CRH (bit 4) | ATP_C (bit 2) | PTPL_C (bit 0)
            0x81, // TMV (bit 7) | ALLOW COMMANDS 0 | PTPL_A (bit 0)
            0xea, // WR_EX_AR | EX_AC_RO | WR_EX_RO | EX_AC | WR_EX
            0x01, // EX_AC_AR
            0x00, 0x00, // reserved
        ];
        let c = report_capabilities(&buf).unwrap();
        assert!(c.crh && c.atp_c && c.ptpl_c && c.tmv && c.ptpl_a);
        assert!(!c.sip_c && !c.rlr_c);
        assert_eq!(c.allow_commands, 0);
        assert_eq!(c.type_mask, 0xea01);
        assert_eq!(c.types, PrType::ALL.to_vec());
        for t in PrType::ALL {
            assert!(c.supports(t));
        }
    }

    #[test]
    fn report_capabilities_each_bit() {
        let buf = [
            0x00, 0x08, // LENGTH
            0x88, // RLR_C (bit 7) | SIP_C (bit 3)
            0xb0, // TMV | ALLOW COMMANDS = 3 (bits 6-4)
            0x20, // WR_EX_RO only
            0x00, // -
            0x00, 0x00,
        ];
        let c = report_capabilities(&buf).unwrap();
        assert!(c.rlr_c && c.sip_c && c.tmv);
        assert!(!c.crh && !c.atp_c && !c.ptpl_c && !c.ptpl_a);
        assert_eq!(c.allow_commands, 3);
        assert_eq!(c.types, vec![PrType::WriteExclusiveRegistrantsOnly]);
        assert!(!c.supports(PrType::WriteExclusiveAllRegistrants));

        // Bit by bit, the mask maps to the right type.
        for (b4, b5, t) in [
            (0x80, 0x00, PrType::WriteExclusiveAllRegistrants),
            (0x40, 0x00, PrType::ExclusiveAccessRegistrantsOnly),
            (0x20, 0x00, PrType::WriteExclusiveRegistrantsOnly),
            (0x08, 0x00, PrType::ExclusiveAccess),
            (0x02, 0x00, PrType::WriteExclusive),
            (0x00, 0x01, PrType::ExclusiveAccessAllRegistrants),
        ] {
            let c = report_capabilities(&[0, 8, 0, 0x80, b4, b5, 0, 0]).unwrap();
            assert_eq!(c.types, vec![t], "mask {b4:02x} {b5:02x}");
        }
        // Reserved mask bits map to nothing.
        let c = report_capabilities(&[0, 8, 0, 0x80, 0x15, 0xfe, 0, 0]).unwrap();
        assert!(c.types.is_empty());
    }

    #[test]
    fn report_capabilities_mask_not_valid() {
        let c = report_capabilities(&[0, 8, 0, 0x00, 0xea, 0x01, 0, 0]).unwrap();
        assert!(!c.tmv);
        assert_eq!(c.type_mask, 0xea01);
        assert!(c.types.is_empty());
        assert!(!c.supports(PrType::WriteExclusiveRegistrantsOnly));
    }

    #[test]
    fn report_capabilities_short() {
        // 6 bytes are enough; 5 are not.
        assert!(report_capabilities(&[0, 8, 0, 0x80, 0x20, 0x00]).is_ok());
        assert_eq!(
            report_capabilities(&[0, 8, 0, 0x80, 0x20]),
            Err(DecodeError::TooShort {
                what: "REPORT CAPABILITIES",
                needed: 6,
                got: 5
            })
        );
        assert!(report_capabilities(&[]).is_err());
    }

    fn lio_inquiry() -> Vec<u8> {
        let mut b = vec![
            0x00, // PERIPHERAL QUALIFIER 0, DEVICE TYPE 0 (disk)
            0x00, // RMB 0
            0x06, // VERSION = SPC-4
            0x02, // RESPONSE DATA FORMAT 2
            0x1f, // ADDITIONAL LENGTH = 31 (36 bytes in all)
            0x00, 0x00, 0x02, // flags
        ];
        b.extend_from_slice(b"LIO-ORG "); // VENDOR (8)
        b.extend_from_slice(b"disk0           "); // PRODUCT (16)
        b.extend_from_slice(b"4.0 "); // REVISION (4)
        b
    }

    #[test]
    fn inquiry_standard() {
        let i = inquiry(&lio_inquiry()).unwrap();
        assert_eq!(
            i,
            Inquiry {
                peripheral_qualifier: 0,
                device_type: 0,
                removable: false,
                version: 6,
                vendor: "LIO-ORG".into(),
                product: "disk0".into(),
                revision: "4.0".into(),
            }
        );
        assert_eq!(i.device_type_name(), "disk");
    }

    #[test]
    fn inquiry_truncated_and_odd() {
        // Cut in the middle of PRODUCT.
        let full = lio_inquiry();
        let i = inquiry(&full[..20]).unwrap();
        assert_eq!(i.vendor, "LIO-ORG");
        assert_eq!(i.product, "disk");
        assert_eq!(i.revision, "");
        // Only the header.
        let i = inquiry(&[0x7f, 0x80, 0x05, 0x02, 0x00]).unwrap();
        assert_eq!(i.peripheral_qualifier, 3);
        assert_eq!(i.device_type, 0x1f);
        assert!(i.removable);
        assert_eq!(i.vendor, "");
        // ADDITIONAL LENGTH short of the strings: bytes beyond it are ignored.
        let mut b = full.clone();
        b[4] = 10; // data ends at byte 15
        let i = inquiry(&b).unwrap();
        assert_eq!(i.vendor, "LIO-ORG");
        assert_eq!(i.product, "");
        // Non-printable bytes become spaces.
        let mut b = full;
        b[9] = 0x00;
        assert_eq!(inquiry(&b).unwrap().vendor, "L O-ORG");
        assert!(matches!(
            inquiry(&[0, 0, 5, 2]),
            Err(DecodeError::TooShort {
                needed: 5,
                got: 4,
                ..
            })
        ));
        assert!(inquiry(&[]).is_err());
    }

    fn iscsi_tid(name: &str) -> Vec<u8> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        while !n.len().is_multiple_of(4) {
            n.push(0);
        }
        let mut t = vec![0x05, 0x00]; // FORMAT CODE 0, PROTOCOL IDENTIFIER 5 (iSCSI)
        t.extend_from_slice(&(n.len() as u16).to_be_bytes()); // ADDITIONAL LENGTH
        t.extend_from_slice(&n);
        t
    }

    fn full_status_descriptor(
        key: u64,
        flags: u8,
        scope_type: u8,
        rtp: u16,
        tid: &[u8],
    ) -> Vec<u8> {
        let mut d = key.to_be_bytes().to_vec(); // RESERVATION KEY
        d.extend_from_slice(&[0; 4]); // reserved
        d.push(flags); // ALL_TG_PT (bit 1), R_HOLDER (bit 0)
        d.push(scope_type); // SCOPE, TYPE
        d.extend_from_slice(&[0; 4]); // reserved
        d.extend_from_slice(&rtp.to_be_bytes()); // RELATIVE TARGET PORT IDENTIFIER
        d.extend_from_slice(&(tid.len() as u32).to_be_bytes()); // ADDITIONAL DESCRIPTOR LENGTH
        d.extend_from_slice(tid);
        d
    }

    #[test]
    fn read_full_status_two_registrants() {
        let a = full_status_descriptor(
            0x1092_0000_0001,
            0x01,
            0x05,
            1,
            &iscsi_tid("iqn.2024-01.test:node1"),
        );
        let b = full_status_descriptor(
            0x1092_0000_0002,
            0x00,
            0x00,
            1,
            &iscsi_tid("iqn.2024-01.test:node2"),
        );
        let mut buf = vec![0, 0, 0, 4];
        buf.extend_from_slice(&((a.len() + b.len()) as u32).to_be_bytes());
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&b);
        let s = read_full_status(&buf).unwrap();
        assert_eq!(s.generation, 4);
        assert!(!s.truncated);
        assert_eq!(s.registrants.len(), 2);
        let r = &s.registrants[0];
        assert_eq!(r.key, 0x1092_0000_0001);
        assert!(r.holder && !r.all_tg_pt);
        assert_eq!((r.scope, r.type_code, r.relative_target_port), (0, 5, 1));
        assert_eq!(r.iscsi_name().as_deref(), Some("iqn.2024-01.test:node1"));
        assert!(!s.registrants[1].holder);
        assert_eq!(
            s.registrants[1].iscsi_name().as_deref(),
            Some("iqn.2024-01.test:node2")
        );

        // Cut inside the second descriptor.
        let cut = &buf[..buf.len() - 4];
        let s = read_full_status(cut).unwrap();
        assert!(s.truncated);
        assert_eq!(s.registrants.len(), 1);
        // Empty list, and too short.
        let s = read_full_status(&[0, 0, 0, 1, 0, 0, 0, 0]).unwrap();
        assert!(s.registrants.is_empty() && !s.truncated);
        assert!(read_full_status(&[0, 0]).is_err());
    }
}
