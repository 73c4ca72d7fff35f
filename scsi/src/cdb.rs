//! Command descriptor blocks (CDBs) and the PERSISTENT RESERVE OUT
//! parameter list, encoded as SPC-4 lays them out.
//!
//! Everything here is pure: byte arrays in, byte arrays out. Multi-byte
//! fields are big-endian, as in every SCSI structure.

use std::fmt;
use std::str::FromStr;

/// TEST UNIT READY operation code (SPC-4 6.47).
pub const TEST_UNIT_READY: u8 = 0x00;
/// INQUIRY operation code (SPC-4 6.6).
pub const INQUIRY: u8 = 0x12;
/// PERSISTENT RESERVE IN operation code (SPC-4 6.16).
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
/// PERSISTENT RESERVE OUT operation code (SPC-4 6.17).
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;

/// Scope LU_SCOPE: the only scope SPC-4 still defines (the others are obsolete).
pub const LU_SCOPE: u8 = 0x0;

/// Service actions of PERSISTENT RESERVE IN (CDB byte 1, bits 4-0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PrInAction {
    /// READ KEYS: the PR generation and every registered reservation key.
    ReadKeys = 0x00,
    /// READ RESERVATION: the PR generation and the reservation, if any.
    ReadReservation = 0x01,
    /// REPORT CAPABILITIES: which optional features and types the device server supports.
    ReportCapabilities = 0x02,
    /// READ FULL STATUS: every registration with its I_T nexus (TransportID).
    ReadFullStatus = 0x03,
}

/// Service actions of PERSISTENT RESERVE OUT (CDB byte 1, bits 4-0).
/// REGISTER AND MOVE (0x07) is not offered: it needs a different parameter list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PrOutAction {
    /// REGISTER: add, change or (with service action key 0) remove this I_T nexus' key.
    Register = 0x00,
    /// RESERVE: take the reservation of the given type.
    Reserve = 0x01,
    /// RELEASE: give up the reservation (type must match the one held).
    Release = 0x02,
    /// CLEAR: remove the reservation and every registration.
    Clear = 0x03,
    /// PREEMPT: remove the registrations of another key (and take its reservation).
    Preempt = 0x04,
    /// PREEMPT AND ABORT: as PREEMPT, and abort the victim's outstanding commands.
    PreemptAndAbort = 0x05,
    /// REGISTER AND IGNORE EXISTING KEY: register whatever key this nexus had.
    RegisterAndIgnoreExistingKey = 0x06,
}

/// Persistent reservation types (SPC-4 table 170, the TYPE field).
///
/// Names accepted by [`PrType::from_str`] (case-insensitive; `_` and spaces
/// count as `-`):
///
/// | type | canonical (config) name              | short forms accepted          |
/// |------|--------------------------------------|-------------------------------|
/// | 1    | `write-exclusive`                    | `we`, `wr-ex`, `1`            |
/// | 3    | `exclusive-access`                   | `ea`, `ex-ac`, `3`            |
/// | 5    | `write-exclusive-registrants-only`   | `wero`, `we-ro`, `wr-ex-ro`, `5` |
/// | 6    | `exclusive-access-registrants-only`  | `earo`, `ea-ro`, `ex-ac-ro`, `6` |
/// | 7    | `write-exclusive-all-registrants`    | `wear`, `we-ar`, `wr-ex-ar`, `7` |
/// | 8    | `exclusive-access-all-registrants`   | `eaar`, `ea-ar`, `ex-ac-ar`, `8` |
///
/// The `wr-ex-ro` forms are SPC-4's own abbreviations (`WR_EX_RO`, as
/// `sg_persist` and the kernel print them); the digits are what
/// `sg_persist --prout-type=` takes. The default is type 5, Write Exclusive –
/// Registrants Only, the type fence_scsi uses: registered nodes may write,
/// everybody may read, and a preempted node's writes fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    #[default]
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    /// Every type, in code order.
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    /// The TYPE code (4 bits).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The type with this TYPE code, if SPC-4 defines one.
    pub fn from_code(code: u8) -> Option<PrType> {
        PrType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The canonical configuration name, e.g. `write-exclusive-registrants-only`.
    pub fn name(self) -> &'static str {
        match self {
            PrType::WriteExclusive => "write-exclusive",
            PrType::ExclusiveAccess => "exclusive-access",
            PrType::WriteExclusiveRegistrantsOnly => "write-exclusive-registrants-only",
            PrType::ExclusiveAccessRegistrantsOnly => "exclusive-access-registrants-only",
            PrType::WriteExclusiveAllRegistrants => "write-exclusive-all-registrants",
            PrType::ExclusiveAccessAllRegistrants => "exclusive-access-all-registrants",
        }
    }

    /// SPC-4's abbreviation, e.g. `WR_EX_RO`.
    pub fn abbreviation(self) -> &'static str {
        match self {
            PrType::WriteExclusive => "WR_EX",
            PrType::ExclusiveAccess => "EX_AC",
            PrType::WriteExclusiveRegistrantsOnly => "WR_EX_RO",
            PrType::ExclusiveAccessRegistrantsOnly => "EX_AC_RO",
            PrType::WriteExclusiveAllRegistrants => "WR_EX_AR",
            PrType::ExclusiveAccessAllRegistrants => "EX_AC_AR",
        }
    }

    /// The bit of this type in REPORT CAPABILITIES' 16-bit PERSISTENT
    /// RESERVATION TYPE MASK (bytes 4-5 read big-endian).
    pub fn mask_bit(self) -> u16 {
        match self {
            PrType::WriteExclusiveAllRegistrants => 1 << 15, // byte 4 bit 7 WR_EX_AR
            PrType::ExclusiveAccessRegistrantsOnly => 1 << 14, // byte 4 bit 6 EX_AC_RO
            PrType::WriteExclusiveRegistrantsOnly => 1 << 13, // byte 4 bit 5 WR_EX_RO
            PrType::ExclusiveAccess => 1 << 11,              // byte 4 bit 3 EX_AC
            PrType::WriteExclusive => 1 << 9,                // byte 4 bit 1 WR_EX
            PrType::ExclusiveAccessAllRegistrants => 1 << 0, // byte 5 bit 0 EX_AC_AR
        }
    }

    /// True for the "all registrants" types (7, 8): every registrant is a
    /// reservation holder, READ RESERVATION reports key 0, and the
    /// reservation lasts while any registrant remains.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

impl fmt::Display for PrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A reservation type name that [`PrType::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown reservation type {input:?} (expected write-exclusive-registrants-only / wero / 5, \
     write-exclusive-all-registrants / wear / 7, exclusive-access-registrants-only / earo / 6, \
     exclusive-access-all-registrants / eaar / 8, write-exclusive / we / 1 or exclusive-access / ea / 3)"
)]
pub struct ParsePrTypeError {
    /// What was given.
    pub input: String,
}

impl FromStr for PrType {
    type Err = ParsePrTypeError;

    fn from_str(s: &str) -> Result<PrType, ParsePrTypeError> {
        let norm: String = s
            .trim()
            .chars()
            .map(|c| match c {
                '_' | ' ' => '-',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        let t = match norm.as_str() {
            "write-exclusive" | "we" | "wr-ex" | "1" => PrType::WriteExclusive,
            "exclusive-access" | "ea" | "ex-ac" | "3" => PrType::ExclusiveAccess,
            "write-exclusive-registrants-only" | "wero" | "we-ro" | "wr-ex-ro" | "5" => {
                PrType::WriteExclusiveRegistrantsOnly
            }
            "exclusive-access-registrants-only" | "earo" | "ea-ro" | "ex-ac-ro" | "6" => {
                PrType::ExclusiveAccessRegistrantsOnly
            }
            "write-exclusive-all-registrants" | "wear" | "we-ar" | "wr-ex-ar" | "7" => {
                PrType::WriteExclusiveAllRegistrants
            }
            "exclusive-access-all-registrants" | "eaar" | "ea-ar" | "ex-ac-ar" | "8" => {
                PrType::ExclusiveAccessAllRegistrants
            }
            _ => {
                return Err(ParsePrTypeError {
                    input: s.to_string(),
                })
            }
        };
        Ok(t)
    }
}

/// The 24-byte basic PERSISTENT RESERVE OUT parameter list (SPC-4 6.17.2,
/// table 174).
///
/// `spec_i_pt` is encoded as asked, but this crate sends no TransportIDs
/// after the basic list, so a device server rejects SPEC_I_PT=1 (ILLEGAL
/// REQUEST, 26/00 or 1A/00); it is here for completeness of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParamList {
    /// RESERVATION KEY (bytes 0-7): the key this I_T nexus is registered with (0 if none).
    pub reservation_key: u64,
    /// SERVICE ACTION RESERVATION KEY (bytes 8-15): the new key (REGISTER*)
    /// or the victim's key (PREEMPT*).
    pub service_action_key: u64,
    /// SPEC_I_PT (byte 20 bit 3): TransportIDs follow (never sent by this crate).
    pub spec_i_pt: bool,
    /// ALL_TG_PT (byte 20 bit 2): register the key through every target port
    /// (REGISTER* only; needs ATP_C in REPORT CAPABILITIES).
    pub all_tg_pt: bool,
    /// APTPL (byte 20 bit 0): keep the registrations through power loss
    /// (REGISTER* only; needs PTPL_C).
    pub aptpl: bool,
}

impl ParamList {
    /// Length of the basic parameter list, the PARAMETER LIST LENGTH sent.
    pub const LEN: usize = 24;

    /// The parameter list bytes.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.reservation_key.to_be_bytes());
        b[8..16].copy_from_slice(&self.service_action_key.to_be_bytes());
        // 16..20: obsolete (scope-specific address), 0.
        b[20] = (u8::from(self.spec_i_pt) << 3)
            | (u8::from(self.all_tg_pt) << 2)
            | u8::from(self.aptpl);
        // 21: reserved; 22..24: obsolete (extent length), 0.
        b
    }
}

/// PERSISTENT RESERVE IN CDB (10 bytes, SPC-4 table 162).
pub fn pr_in(action: PrInAction, allocation_length: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = PERSISTENT_RESERVE_IN;
    c[1] = action as u8 & 0x1f;
    // 2..7 reserved
    c[7..9].copy_from_slice(&allocation_length.to_be_bytes());
    // 9: CONTROL 0
    c
}

/// PERSISTENT RESERVE OUT CDB (10 bytes, SPC-4 table 172) with LU_SCOPE.
/// `pr_type` is `None` for the service actions that ignore TYPE (REGISTER,
/// REGISTER AND IGNORE EXISTING KEY, CLEAR): the field is then sent as 0.
pub fn pr_out(
    action: PrOutAction,
    pr_type: Option<PrType>,
    parameter_list_length: u32,
) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = PERSISTENT_RESERVE_OUT;
    c[1] = action as u8 & 0x1f;
    c[2] = (LU_SCOPE << 4) | pr_type.map_or(0, PrType::code);
    // 3..5 reserved
    c[5..9].copy_from_slice(&parameter_list_length.to_be_bytes());
    // 9: CONTROL 0
    c
}

/// INQUIRY CDB for standard data (6 bytes, SPC-4 table 142; EVPD 0, page 0).
pub fn inquiry(allocation_length: u16) -> [u8; 6] {
    let mut c = [0u8; 6];
    c[0] = INQUIRY;
    c[3..5].copy_from_slice(&allocation_length.to_be_bytes());
    c
}

/// TEST UNIT READY CDB (6 bytes, all zero but for the operation code, which is 0 too).
pub fn test_unit_ready() -> [u8; 6] {
    [TEST_UNIT_READY, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pr_in_read_keys() {
        assert_eq!(
            pr_in(PrInAction::ReadKeys, 0x0208),
            [
                0x5e, // OPERATION CODE: PERSISTENT RESERVE IN
                0x00, // SERVICE ACTION: READ KEYS
                0x00, 0x00, 0x00, 0x00, 0x00, // reserved
                0x02, 0x08, // ALLOCATION LENGTH (MSB, LSB) = 520
                0x00, // CONTROL
            ]
        );
    }

    #[test]
    fn pr_in_read_reservation() {
        assert_eq!(
            pr_in(PrInAction::ReadReservation, 24),
            [
                0x5e, // OPERATION CODE
                0x01, // SERVICE ACTION: READ RESERVATION
                0x00, 0x00, 0x00, 0x00, 0x00, // reserved
                0x00, 0x18, // ALLOCATION LENGTH = 24
                0x00, // CONTROL
            ]
        );
    }

    #[test]
    fn pr_in_report_capabilities() {
        assert_eq!(
            pr_in(PrInAction::ReportCapabilities, 8),
            [
                0x5e, // OPERATION CODE
                0x02, // SERVICE ACTION: REPORT CAPABILITIES
                0x00, 0x00, 0x00, 0x00, 0x00, // reserved
                0x00, 0x08, // ALLOCATION LENGTH = 8
                0x00, // CONTROL
            ]
        );
    }

    #[test]
    fn pr_in_read_full_status() {
        assert_eq!(
            pr_in(PrInAction::ReadFullStatus, 0xffff),
            [
                0x5e, // OPERATION CODE
                0x03, // SERVICE ACTION: READ FULL STATUS
                0x00, 0x00, 0x00, 0x00, 0x00, // reserved
                0xff, 0xff, // ALLOCATION LENGTH = 65535
                0x00, // CONTROL
            ]
        );
    }

    #[test]
    fn pr_out_register() {
        assert_eq!(
            pr_out(PrOutAction::Register, None, 24),
            [
                0x5f, // OPERATION CODE: PERSISTENT RESERVE OUT
                0x00, // SERVICE ACTION: REGISTER
                0x00, // SCOPE (7-4) = LU_SCOPE, TYPE (3-0) = 0 (ignored)
                0x00, 0x00, // reserved
                0x00, 0x00, 0x00, 0x18, // PARAMETER LIST LENGTH = 24
                0x00, // CONTROL
            ]
        );
    }

    #[test]
    fn pr_out_reserve_wero() {
        assert_eq!(
            pr_out(
                PrOutAction::Reserve,
                Some(PrType::WriteExclusiveRegistrantsOnly),
                24
            ),
            [
                0x5f, // OPERATION CODE
                0x01, // SERVICE ACTION: RESERVE
                0x05, // SCOPE = LU_SCOPE, TYPE = 5 (WR_EX_RO)
                0x00, 0x00, // reserved
                0x00, 0x00, 0x00, 0x18, // PARAMETER LIST LENGTH = 24
                0x00, // CONTROL
            ]
        );
    }

    #[test]
    fn pr_out_release_ex_ac_ar() {
        assert_eq!(
            pr_out(
                PrOutAction::Release,
                Some(PrType::ExclusiveAccessAllRegistrants),
                24
            ),
            [
                0x5f, // OPERATION CODE
                0x02, // SERVICE ACTION: RELEASE
                0x08, // SCOPE = LU_SCOPE, TYPE = 8 (EX_AC_AR)
                0x00, 0x00, // reserved
                0x00, 0x00, 0x00, 0x18, // PARAMETER LIST LENGTH
                0x00, // CONTROL
            ]
        );
    }

    #[test]
    fn pr_out_clear() {
        assert_eq!(
            pr_out(PrOutAction::Clear, None, 24),
            [
                0x5f, // OPERATION CODE
                0x03, // SERVICE ACTION: CLEAR
                0x00, // SCOPE/TYPE (ignored)
                0x00, 0x00, // reserved
                0x00, 0x00, 0x00, 0x18, // PARAMETER LIST LENGTH
                0x00, // CONTROL
            ]
        );
    }

    #[test]
    fn pr_out_preempt_we() {
        assert_eq!(
            pr_out(PrOutAction::Preempt, Some(PrType::WriteExclusive), 24),
            [
                0x5f, // OPERATION CODE
                0x04, // SERVICE ACTION: PREEMPT
                0x01, // SCOPE = LU_SCOPE, TYPE = 1 (WR_EX)
                0x00, 0x00, // reserved
                0x00, 0x00, 0x00, 0x18, // PARAMETER LIST LENGTH
                0x00, // CONTROL
            ]
        );
    }

    #[test]
    fn pr_out_preempt_and_abort_wear() {
        assert_eq!(
            pr_out(
                PrOutAction::PreemptAndAbort,
                Some(PrType::WriteExclusiveAllRegistrants),
                24
            ),
            [
                0x5f, // OPERATION CODE
                0x05, // SERVICE ACTION: PREEMPT AND ABORT
                0x07, // SCOPE = LU_SCOPE, TYPE = 7 (WR_EX_AR)
                0x00, 0x00, // reserved
                0x00, 0x00, 0x00, 0x18, // PARAMETER LIST LENGTH
                0x00, // CONTROL
            ]
        );
    }

    #[test]
    fn pr_out_register_ignore_and_other_types() {
        assert_eq!(
            pr_out(PrOutAction::RegisterAndIgnoreExistingKey, None, 24),
            [
                0x5f, // OPERATION CODE
                0x06, // SERVICE ACTION: REGISTER AND IGNORE EXISTING KEY
                0x00, // SCOPE/TYPE (ignored)
                0x00, 0x00, // reserved
                0x00, 0x00, 0x00, 0x18, // PARAMETER LIST LENGTH
                0x00, // CONTROL
            ]
        );
        // TYPE lands in byte 2 bits 3-0 for every type.
        for (t, byte2) in [
            (PrType::ExclusiveAccess, 0x03),
            (PrType::ExclusiveAccessRegistrantsOnly, 0x06),
        ] {
            assert_eq!(pr_out(PrOutAction::Reserve, Some(t), 24)[2], byte2);
        }
        // A large PARAMETER LIST LENGTH is big-endian over bytes 5-8.
        assert_eq!(
            pr_out(PrOutAction::Register, None, 0x0102_0304)[5..9],
            [0x01, 0x02, 0x03, 0x04]
        );
    }

    #[test]
    fn inquiry_cdb() {
        assert_eq!(
            inquiry(96),
            [
                0x12, // OPERATION CODE: INQUIRY
                0x00, // EVPD = 0
                0x00, // PAGE CODE
                0x00, 0x60, // ALLOCATION LENGTH = 96
                0x00, // CONTROL
            ]
        );
    }

    #[test]
    fn test_unit_ready_cdb() {
        assert_eq!(
            test_unit_ready(),
            [
                0x00, // OPERATION CODE: TEST UNIT READY
                0x00, 0x00, 0x00, 0x00, // reserved
                0x00, // CONTROL
            ]
        );
    }

    #[test]
    fn param_list_register() {
        let p = ParamList {
            reservation_key: 0,
            service_action_key: 0x0000_1092_0000_0001,
            ..ParamList::default()
        };
        assert_eq!(
            p.encode(),
            [
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // RESERVATION KEY = 0
                0x00, 0x00, 0x10, 0x92, 0x00, 0x00, 0x00, 0x01, // SA RESERVATION KEY
                0x00, 0x00, 0x00, 0x00, // obsolete (scope-specific address)
                0x00, // SPEC_I_PT=0 ALL_TG_PT=0 APTPL=0
                0x00, // reserved
                0x00, 0x00, // obsolete (extent length)
            ]
        );
    }

    #[test]
    fn param_list_preempt_with_flags() {
        let p = ParamList {
            reservation_key: 0x0102_0304_0506_0708,
            service_action_key: 0x1112_1314_1516_1718,
            spec_i_pt: false,
            all_tg_pt: true,
            aptpl: true,
        };
        assert_eq!(
            p.encode(),
            [
                0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // RESERVATION KEY
                0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // SA RESERVATION KEY
                0x00, 0x00, 0x00, 0x00, // obsolete
                0x05, // ALL_TG_PT (bit 2) | APTPL (bit 0)
                0x00, // reserved
                0x00, 0x00, // obsolete
            ]
        );
        let spec = ParamList {
            spec_i_pt: true,
            ..ParamList::default()
        };
        assert_eq!(spec.encode()[20], 0x08); // SPEC_I_PT is bit 3
        let all = ParamList {
            spec_i_pt: true,
            all_tg_pt: true,
            aptpl: true,
            ..ParamList::default()
        };
        assert_eq!(all.encode()[20], 0x0d);
    }

    #[test]
    fn type_codes_and_names() {
        for t in PrType::ALL {
            assert_eq!(PrType::from_code(t.code()), Some(t));
            assert_eq!(t.name().parse::<PrType>(), Ok(t));
            assert_eq!(t.abbreviation().parse::<PrType>(), Ok(t));
            assert_eq!(t.code().to_string().parse::<PrType>(), Ok(t));
            assert_eq!(t.to_string(), t.name());
        }
        assert_eq!(PrType::from_code(0), None);
        assert_eq!(PrType::from_code(2), None);
        assert_eq!(PrType::from_code(4), None);
        assert_eq!(PrType::default(), PrType::WriteExclusiveRegistrantsOnly);
        assert_eq!("WERO".parse(), Ok(PrType::WriteExclusiveRegistrantsOnly));
        assert_eq!(" we_ro ".parse(), Ok(PrType::WriteExclusiveRegistrantsOnly));
        assert_eq!(
            "Write Exclusive Registrants Only".parse(),
            Ok(PrType::WriteExclusiveRegistrantsOnly)
        );
        assert_eq!("wear".parse(), Ok(PrType::WriteExclusiveAllRegistrants));
        assert_eq!(
            "EX_AC_AR".parse(),
            Ok(PrType::ExclusiveAccessAllRegistrants)
        );
        assert_eq!("earo".parse(), Ok(PrType::ExclusiveAccessRegistrantsOnly));
        assert_eq!("we".parse(), Ok(PrType::WriteExclusive));
        assert_eq!("ea".parse(), Ok(PrType::ExclusiveAccess));
        let err = "exclusive".parse::<PrType>().unwrap_err();
        assert_eq!(err.input, "exclusive");
        assert!(err.to_string().contains("\"exclusive\""));
        assert!("2".parse::<PrType>().is_err());
        assert!("".parse::<PrType>().is_err());
    }

    #[test]
    fn mask_bits_are_distinct() {
        let mut seen = 0u16;
        for t in PrType::ALL {
            assert_eq!(seen & t.mask_bit(), 0);
            seen |= t.mask_bit();
        }
        assert_eq!(seen, 0xea01);
        assert!(PrType::WriteExclusiveAllRegistrants.all_registrants());
        assert!(!PrType::WriteExclusiveRegistrantsOnly.all_registrants());
    }
}
