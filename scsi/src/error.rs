//! The typed error, and the mapping of one SG_IO completion (transport
//! status, SCSI status, sense data) onto it.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::decode::DecodeError;
use crate::sense::{self, driver, host, status, Asc, FieldPointer, Sense, SenseKey};

/// The operation a command error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    TestUnitReady,
    Inquiry,
    ReadKeys,
    ReadReservation,
    ReportCapabilities,
    ReadFullStatus,
    /// REGISTER of a new key (reservation key 0, or a key change).
    Register,
    /// REGISTER with service action key 0: removing this node's key.
    Unregister,
    RegisterAndIgnore,
    Reserve,
    Release,
    Clear,
    Preempt,
    PreemptAndAbort,
}

impl Op {
    /// The command as an operator reads it in `sg_persist` terms.
    pub fn name(self) -> &'static str {
        match self {
            Op::TestUnitReady => "TEST UNIT READY",
            Op::Inquiry => "INQUIRY",
            Op::ReadKeys => "PERSISTENT RESERVE IN (READ KEYS)",
            Op::ReadReservation => "PERSISTENT RESERVE IN (READ RESERVATION)",
            Op::ReportCapabilities => "PERSISTENT RESERVE IN (REPORT CAPABILITIES)",
            Op::ReadFullStatus => "PERSISTENT RESERVE IN (READ FULL STATUS)",
            Op::Register => "PERSISTENT RESERVE OUT (REGISTER)",
            Op::Unregister => "PERSISTENT RESERVE OUT (REGISTER, unregistering)",
            Op::RegisterAndIgnore => "PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)",
            Op::Reserve => "PERSISTENT RESERVE OUT (RESERVE)",
            Op::Release => "PERSISTENT RESERVE OUT (RELEASE)",
            Op::Clear => "PERSISTENT RESERVE OUT (CLEAR)",
            Op::Preempt => "PERSISTENT RESERVE OUT (PREEMPT)",
            Op::PreemptAndAbort => "PERSISTENT RESERVE OUT (PREEMPT AND ABORT)",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a path is not a SCSI device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotScsiDetail {
    /// Neither a block device nor an sg node (never opened).
    NotBlockOrSg {
        /// "regular file", "directory", "FIFO", "socket", "character device other than sg".
        file_type: &'static str,
    },
    /// A device node whose driver refused `SG_GET_VERSION_NUM` (not sd, sg,
    /// or a SCSI pass-through such as dm-multipath).
    NoSgIo {
        /// The ioctl's errno (ENOTTY, EINVAL).
        errno: i32,
    },
}

impl fmt::Display for NotScsiDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotScsiDetail::NotBlockOrSg { file_type } => {
                write!(
                    f,
                    "it is a {file_type}; only block devices and sg nodes take SG_IO"
                )
            }
            NotScsiDetail::NoSgIo { errno } => write!(
                f,
                "its driver does not take SG_IO: SG_GET_VERSION_NUM failed with {}",
                errno_text(*errno)
            ),
        }
    }
}

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

fn conflict_hint(op: Op) -> &'static str {
    match op {
        Op::Register => {
            "this path is already registered with another key (an earlier life's?); \
             REGISTER AND IGNORE EXISTING KEY replaces it"
        }
        Op::Unregister | Op::Release | Op::Clear => {
            "this node's key is not registered on the device: another node preempted or cleared it"
        }
        Op::Preempt | Op::PreemptAndAbort => {
            "this node's key is not registered, or the victim's key no longer is \
             (already preempted?); READ KEYS tells which"
        }
        Op::Reserve => "another node holds the reservation, or this node's key is not registered",
        Op::RegisterAndIgnore => "the device refused the registration",
        Op::TestUnitReady
        | Op::Inquiry
        | Op::ReadKeys
        | Op::ReadReservation
        | Op::ReportCapabilities
        | Op::ReadFullStatus => {
            "another node holds the reservation and this node's key is not registered"
        }
    }
}

fn ua_hint(asc: u8, ascq: u8) -> &'static str {
    match (asc, ascq) {
        (0x2a, 0x03) => {
            "another node cleared or preempted the reservation: this node's key is likely gone"
        }
        (0x2a, 0x04) => "the holder released the reservation; this node's key is still registered",
        (0x2a, 0x05) => {
            "another node preempted this node's key: this node is fenced off the device"
        }
        (0x29, _) => "the device or its path was reset; registrations survive a reset",
        _ => "the device reports a change of state",
    }
}

fn illegal_hint(op: Op, asc: u8, ascq: u8) -> &'static str {
    let pr = !matches!(op, Op::TestUnitReady | Op::Inquiry);
    match (asc, ascq) {
        (0x20, 0x00) if pr => ": the device does not support persistent reservations",
        (0x24, 0x00) if pr => {
            ": the device rejected a CDB field (reservation type or scope unsupported?)"
        }
        (0x26, 0x00) => {
            ": the device rejected a parameter-list field (ALL_TG_PT or APTPL unsupported?)"
        }
        (0x26, 0x04) => ": the type given does not match the reservation held",
        _ => "",
    }
}

struct OptField<'a>(&'a Option<FieldPointer>);

impl fmt::Display for OptField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, " at {p}"),
            None => Ok(()),
        }
    }
}

/// Everything that can go wrong. Every variant names the device path; every
/// command error names the operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The path does not exist (or the device vanished while opening).
    #[error("{}: no such device on this node", .path.display())]
    NotFound { path: PathBuf },

    /// The path exists but cannot be opened read-write (EACCES, ENXIO, ...).
    #[error("{}: cannot open read-write: {}", .path.display(), errno_text(*.errno))]
    Open { path: PathBuf, errno: i32 },

    /// The path is not a SCSI device: a regular file, /dev/null, a loop or
    /// NVMe device, ...
    #[error("{}: not a SCSI device ({detail})", .path.display())]
    NotScsi {
        path: PathBuf,
        detail: NotScsiDetail,
    },

    /// The SG_IO ioctl itself failed (EIO, ENODEV when the device went away,
    /// EPERM without CAP_SYS_RAWIO, EINTR, ...). Whether the command reached
    /// the device is unknown.
    #[error("{}: {op}: SG_IO failed: {}", .path.display(), errno_text(*.errno))]
    Ioctl { path: PathBuf, op: Op, errno: i32 },

    /// No answer within the command timeout. Whether the command took effect
    /// is unknown.
    #[error(
        "{}: {op}: no answer within {timeout_ms} ms (the target or the path to it is down)",
        .path.display()
    )]
    Timeout {
        path: PathBuf,
        op: Op,
        timeout_ms: u32,
    },

    /// The initiator side reported a failure of the path (host_status /
    /// driver_status). Whether the command took effect is unknown.
    #[error(
        "{}: {op}: transport failure: host status 0x{host_status:02x} ({}), driver status 0x{driver_status:02x}",
        .path.display(), host::describe(*.host_status)
    )]
    Transport {
        path: PathBuf,
        op: Op,
        host_status: u16,
        driver_status: u16,
    },

    /// Status RESERVATION CONFLICT. What it means depends on `op`; see the
    /// crate documentation.
    #[error("{}: {op}: RESERVATION CONFLICT ({})", .path.display(), conflict_hint(*.op))]
    ReservationConflict { path: PathBuf, op: Op },

    /// CHECK CONDITION, UNIT ATTENTION: the command was NOT executed; the
    /// condition is reported once per I_T nexus.
    #[error(
        "{}: {op}: UNIT ATTENTION {} ({}; the command was not executed)",
        .path.display(), Asc(*.asc, *.ascq), ua_hint(*.asc, *.ascq)
    )]
    UnitAttention {
        path: PathBuf,
        op: Op,
        asc: u8,
        ascq: u8,
    },

    /// CHECK CONDITION, NOT READY (e.g. 04/xx; LIO without its PR directory).
    #[error("{}: {op}: NOT READY {}", .path.display(), Asc(*.asc, *.ascq))]
    NotReady {
        path: PathBuf,
        op: Op,
        asc: u8,
        ascq: u8,
    },

    /// CHECK CONDITION, ILLEGAL REQUEST (20/00: PR not supported; 24/00 bad
    /// CDB field; 26/00 bad parameter-list field; 26/04 bad release).
    #[error(
        "{}: {op}: ILLEGAL REQUEST {}{}{}",
        .path.display(), Asc(*.asc, *.ascq), OptField(.field), illegal_hint(*.op, *.asc, *.ascq)
    )]
    IllegalRequest {
        path: PathBuf,
        op: Op,
        asc: u8,
        ascq: u8,
        field: Option<FieldPointer>,
    },

    /// CHECK CONDITION with another sense key (MEDIUM ERROR, HARDWARE ERROR,
    /// ABORTED COMMAND, DATA PROTECT, ...).
    #[error("{}: {op}: {key} {}", .path.display(), Asc(*.asc, *.ascq))]
    Sense {
        path: PathBuf,
        op: Op,
        key: SenseKey,
        asc: u8,
        ascq: u8,
    },

    /// CHECK CONDITION without sense data this crate can read.
    #[error("{}: {op}: CHECK CONDITION without usable sense data", .path.display())]
    NoSenseData { path: PathBuf, op: Op },

    /// Status BUSY: retry later.
    #[error("{}: {op}: BUSY (the device is busy; retry)", .path.display())]
    Busy { path: PathBuf, op: Op },

    /// Status TASK SET FULL: too many commands queued; retry later.
    #[error("{}: {op}: TASK SET FULL (the device's queue is full; retry)", .path.display())]
    TaskSetFull { path: PathBuf, op: Op },

    /// Another SCSI status (ACA ACTIVE, TASK ABORTED, ...).
    #[error("{}: {op}: SCSI status 0x{status:02x} ({})", .path.display(), sense::status::name(*.status))]
    Status { path: PathBuf, op: Op, status: u8 },

    /// The command succeeded but its data could not be decoded.
    #[error("{}: {op}: malformed response: {error}", .path.display())]
    Malformed {
        path: PathBuf,
        op: Op,
        error: DecodeError,
    },
}

impl Error {
    /// The device path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::NotFound { path }
            | Error::Open { path, .. }
            | Error::NotScsi { path, .. }
            | Error::Ioctl { path, .. }
            | Error::Timeout { path, .. }
            | Error::Transport { path, .. }
            | Error::ReservationConflict { path, .. }
            | Error::UnitAttention { path, .. }
            | Error::NotReady { path, .. }
            | Error::IllegalRequest { path, .. }
            | Error::Sense { path, .. }
            | Error::NoSenseData { path, .. }
            | Error::Busy { path, .. }
            | Error::TaskSetFull { path, .. }
            | Error::Status { path, .. }
            | Error::Malformed { path, .. } => path,
        }
    }

    /// The operation, for command errors (`None` for open errors).
    pub fn op(&self) -> Option<Op> {
        match self {
            Error::NotFound { .. } | Error::Open { .. } | Error::NotScsi { .. } => None,
            Error::Ioctl { op, .. }
            | Error::Timeout { op, .. }
            | Error::Transport { op, .. }
            | Error::ReservationConflict { op, .. }
            | Error::UnitAttention { op, .. }
            | Error::NotReady { op, .. }
            | Error::IllegalRequest { op, .. }
            | Error::Sense { op, .. }
            | Error::NoSenseData { op, .. }
            | Error::Busy { op, .. }
            | Error::TaskSetFull { op, .. }
            | Error::Status { op, .. }
            | Error::Malformed { op, .. } => Some(*op),
        }
    }

    /// True when the device says, beyond doubt, that this I_T nexus' key was
    /// removed by someone else: UNIT ATTENTION 2A/05 REGISTRATIONS PREEMPTED
    /// or 2A/03 RESERVATIONS PREEMPTED (what a CLEAR leaves behind). A node
    /// that sees this is fenced and must stop touching the disk.
    ///
    /// A RESERVATION CONFLICT is *not* counted here, because on some
    /// commands it has innocent causes (see [`Error::is_reservation_conflict`]
    /// and the crate docs); confirm with [`crate::Device::read_keys`].
    pub fn registration_lost(&self) -> bool {
        matches!(
            self,
            Error::UnitAttention {
                asc: 0x2a,
                ascq: 0x03 | 0x05,
                ..
            }
        )
    }

    /// True for status RESERVATION CONFLICT.
    pub fn is_reservation_conflict(&self) -> bool {
        matches!(self, Error::ReservationConflict { .. })
    }

    /// True when the device does not implement persistent reservations:
    /// ILLEGAL REQUEST 20/00 (invalid command operation code) on a PR command.
    pub fn pr_unsupported(&self) -> bool {
        matches!(
            self,
            Error::IllegalRequest { op, asc: 0x20, ascq: 0x00, .. }
                if !matches!(op, Op::TestUnitReady | Op::Inquiry)
        )
    }

    /// True when the device could not be reached, so whether the command
    /// took effect is unknown: timeout, transport failure, failed ioctl.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. } | Error::Transport { .. } | Error::Ioctl { .. }
        )
    }

    /// True when the same command may simply be sent again: any UNIT
    /// ATTENTION (it was not executed; look at [`Error::registration_lost`]
    /// first), BUSY, TASK SET FULL, TASK ABORTED, ABORTED COMMAND, NOT READY
    /// 04/01 (becoming ready) or 04/0A (ALUA transition), and the transport
    /// statuses the kernel itself marks as retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::UnitAttention { .. } | Error::Busy { .. } | Error::TaskSetFull { .. } => true,
            Error::Status { status, .. } => *status == status::TASK_ABORTED,
            Error::Sense { key, .. } => *key == SenseKey::AbortedCommand,
            Error::NotReady {
                asc: 0x04, ascq, ..
            } => matches!(ascq, 0x01 | 0x0a),
            Error::Transport { host_status, .. } => matches!(
                *host_status,
                host::DID_BUS_BUSY
                    | host::DID_SOFT_ERROR
                    | host::DID_IMM_RETRY
                    | host::DID_REQUEUE
                    | host::DID_RESET
                    | host::DID_TRANSPORT_DISRUPTED
            ),
            _ => false,
        }
    }
}

/// What one SG_IO call reported, before interpretation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Completion {
    /// SCSI status byte (`status`).
    pub status: u8,
    /// `host_status` (`DID_*`).
    pub host_status: u16,
    /// `driver_status` (`DRIVER_*`).
    pub driver_status: u16,
    /// The sense bytes written (`sb_len_wr` of them).
    pub sense: Vec<u8>,
    /// `resid`: bytes of the data buffer not transferred.
    pub resid: i32,
    /// `duration`: milliseconds the command took.
    pub duration_ms: u32,
}

impl Completion {
    /// Map the completion onto `Ok` or the error it means.
    ///
    /// Order: transport first (host_status, then driver_status), then SCSI
    /// status, then sense. RECOVERED ERROR and NO SENSE count as success.
    pub fn check(&self, path: &Path, op: Op, timeout_ms: u32) -> Result<(), Error> {
        let path = path.to_path_buf();
        match self.host_status {
            host::DID_OK => {}
            host::DID_TIME_OUT => {
                return Err(Error::Timeout {
                    path,
                    op,
                    timeout_ms,
                })
            }
            host_status => {
                return Err(Error::Transport {
                    path,
                    op,
                    host_status,
                    driver_status: self.driver_status,
                })
            }
        }
        match self.driver_status & 0x0f {
            driver::DRIVER_OK | driver::DRIVER_SENSE => {}
            driver::DRIVER_TIMEOUT => {
                return Err(Error::Timeout {
                    path,
                    op,
                    timeout_ms,
                })
            }
            _ => {
                return Err(Error::Transport {
                    path,
                    op,
                    host_status: self.host_status,
                    driver_status: self.driver_status,
                })
            }
        }
        // Bits 0 and 7 of the status byte are reserved (or vendor
        // leftovers): ignore them, as sg3_utils does.
        let scsi_status = self.status & 0x7e;
        match scsi_status {
            status::GOOD | status::CONDITION_MET => Ok(()),
            status::CHECK_CONDITION => self.check_sense(path, op),
            status::RESERVATION_CONFLICT => Err(Error::ReservationConflict { path, op }),
            status::BUSY => Err(Error::Busy { path, op }),
            status::TASK_SET_FULL => Err(Error::TaskSetFull { path, op }),
            _ => Err(Error::Status {
                path,
                op,
                status: scsi_status,
            }),
        }
    }

    fn check_sense(&self, path: PathBuf, op: Op) -> Result<(), Error> {
        let Some(s) = Sense::parse(&self.sense) else {
            return Err(Error::NoSenseData { path, op });
        };
        let Sense { asc, ascq, .. } = s;
        match s.key {
            SenseKey::NoSense | SenseKey::RecoveredError => Ok(()),
            SenseKey::UnitAttention => Err(Error::UnitAttention {
                path,
                op,
                asc,
                ascq,
            }),
            SenseKey::NotReady => Err(Error::NotReady {
                path,
                op,
                asc,
                ascq,
            }),
            SenseKey::IllegalRequest => Err(Error::IllegalRequest {
                path,
                op,
                asc,
                ascq,
                field: s.field_pointer,
            }),
            key => Err(Error::Sense {
                path,
                op,
                key,
                asc,
                ascq,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "/dev/sdb";

    fn fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        let mut b = vec![0u8; 18];
        b[0] = 0x70; // RESPONSE CODE: current, fixed
        b[2] = key; // SENSE KEY
        b[7] = 10; // ADDITIONAL SENSE LENGTH
        b[12] = asc; // ASC
        b[13] = ascq; // ASCQ
        b
    }

    fn desc(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        vec![0x72, key, asc, ascq, 0, 0, 0, 0]
    }

    fn cc(sense: Vec<u8>) -> Completion {
        Completion {
            status: status::CHECK_CONDITION,
            driver_status: driver::DRIVER_SENSE,
            sense,
            ..Completion::default()
        }
    }

    fn check(c: &Completion, op: Op) -> Result<(), Error> {
        c.check(Path::new(DEV), op, 5000)
    }

    #[test]
    fn good() {
        assert_eq!(check(&Completion::default(), Op::ReadKeys), Ok(()));
        let cm = Completion {
            status: status::CONDITION_MET,
            ..Completion::default()
        };
        assert_eq!(check(&cm, Op::ReadKeys), Ok(()));
        // Recovered error and no sense are successes.
        assert_eq!(check(&cc(fixed(0x01, 0x5d, 0x00)), Op::Register), Ok(()));
        assert_eq!(check(&cc(desc(0x00, 0x00, 0x00)), Op::Register), Ok(()));
    }

    #[test]
    fn reservation_conflict() {
        let c = Completion {
            status: status::RESERVATION_CONFLICT,
            ..Completion::default()
        };
        let e = check(&c, Op::Reserve).unwrap_err();
        assert_eq!(
            e,
            Error::ReservationConflict {
                path: DEV.into(),
                op: Op::Reserve
            }
        );
        assert!(e.is_reservation_conflict());
        assert!(!e.registration_lost());
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "/dev/sdb: PERSISTENT RESERVE OUT (RESERVE): RESERVATION CONFLICT (another node holds \
             the reservation, or this node's key is not registered)"
        );
        let e = check(&c, Op::ReadKeys).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/sdb: PERSISTENT RESERVE IN (READ KEYS): RESERVATION CONFLICT (another node holds \
             the reservation and this node's key is not registered)"
        );
        // Masked-off status bits do not hide it.
        let c = Completion {
            status: 0x18 | 0x80 | 0x01,
            ..Completion::default()
        };
        assert!(check(&c, Op::Preempt)
            .unwrap_err()
            .is_reservation_conflict());
    }

    #[test]
    fn unit_attentions_both_formats() {
        for sense in [fixed(0x06, 0x2a, 0x05), desc(0x06, 0x2a, 0x05)] {
            let e = check(&cc(sense), Op::ReadKeys).unwrap_err();
            assert_eq!(
                e,
                Error::UnitAttention {
                    path: DEV.into(),
                    op: Op::ReadKeys,
                    asc: 0x2a,
                    ascq: 0x05
                }
            );
            assert!(e.registration_lost() && e.is_retryable());
            assert_eq!(
                e.to_string(),
                "/dev/sdb: PERSISTENT RESERVE IN (READ KEYS): UNIT ATTENTION 2A/05 registrations \
                 preempted (another node preempted this node's key: this node is fenced off the \
                 device; the command was not executed)"
            );
        }
        for sense in [fixed(0x06, 0x2a, 0x03), desc(0x06, 0x2a, 0x03)] {
            let e = check(&cc(sense), Op::TestUnitReady).unwrap_err();
            assert!(e.registration_lost());
            assert!(e.to_string().contains("2A/03 reservations preempted"));
        }
        for sense in [fixed(0x06, 0x2a, 0x04), desc(0x06, 0x2a, 0x04)] {
            let e = check(&cc(sense), Op::ReadKeys).unwrap_err();
            assert!(!e.registration_lost() && e.is_retryable());
            assert!(e.to_string().contains("2A/04 reservations released"));
        }
        for sense in [fixed(0x06, 0x29, 0x00), desc(0x06, 0x29, 0x07)] {
            let e = check(&cc(sense), Op::ReadKeys).unwrap_err();
            assert!(matches!(e, Error::UnitAttention { asc: 0x29, .. }));
            assert!(!e.registration_lost() && e.is_retryable());
            assert!(e.to_string().contains("reset"));
        }
    }

    #[test]
    fn not_ready() {
        for sense in [fixed(0x02, 0x04, 0x00), desc(0x02, 0x04, 0x00)] {
            let e = check(&cc(sense), Op::Register).unwrap_err();
            assert_eq!(
                e,
                Error::NotReady {
                    path: DEV.into(),
                    op: Op::Register,
                    asc: 4,
                    ascq: 0
                }
            );
            assert!(!e.is_retryable());
            assert_eq!(
                e.to_string(),
                "/dev/sdb: PERSISTENT RESERVE OUT (REGISTER): NOT READY 04/00 logical unit not \
                 ready, cause not reportable"
            );
        }
        assert!(check(&cc(fixed(0x02, 0x04, 0x01)), Op::Register)
            .unwrap_err()
            .is_retryable());
    }

    #[test]
    fn illegal_requests() {
        for sense in [fixed(0x05, 0x20, 0x00), desc(0x05, 0x20, 0x00)] {
            let e = check(&cc(sense), Op::ReportCapabilities).unwrap_err();
            assert!(e.pr_unsupported());
            assert_eq!(
                e.to_string(),
                "/dev/sdb: PERSISTENT RESERVE IN (REPORT CAPABILITIES): ILLEGAL REQUEST 20/00 \
                 invalid command operation code: the device does not support persistent reservations"
            );
        }
        let mut b = fixed(0x05, 0x24, 0x00);
        b[15] = 0xc0; // SKSV, in CDB
        b[17] = 2; // byte 2
        let e = check(&cc(b), Op::Reserve).unwrap_err();
        assert_eq!(
            e,
            Error::IllegalRequest {
                path: DEV.into(),
                op: Op::Reserve,
                asc: 0x24,
                ascq: 0,
                field: Some(FieldPointer {
                    in_cdb: true,
                    byte: 2,
                    bit: None
                }),
            }
        );
        assert!(!e.pr_unsupported());
        assert_eq!(
            e.to_string(),
            "/dev/sdb: PERSISTENT RESERVE OUT (RESERVE): ILLEGAL REQUEST 24/00 invalid field in CDB \
             at CDB byte 2: the device rejected a CDB field (reservation type or scope unsupported?)"
        );
        let e = check(&cc(desc(0x05, 0x26, 0x00)), Op::RegisterAndIgnore).unwrap_err();
        assert!(matches!(
            e,
            Error::IllegalRequest {
                asc: 0x26,
                ascq: 0,
                field: None,
                ..
            }
        ));
        assert!(e.to_string().contains("invalid field in parameter list"));
        let e = check(&cc(fixed(0x05, 0x26, 0x04)), Op::Release).unwrap_err();
        assert!(e
            .to_string()
            .contains("does not match the reservation held"));
        // 20/00 on INQUIRY is not "PR unsupported".
        assert!(!check(&cc(fixed(0x05, 0x20, 0x00)), Op::Inquiry)
            .unwrap_err()
            .pr_unsupported());
    }

    #[test]
    fn other_sense_keys() {
        let e = check(&cc(fixed(0x04, 0x44, 0x00)), Op::Preempt).unwrap_err();
        assert_eq!(
            e,
            Error::Sense {
                path: DEV.into(),
                op: Op::Preempt,
                key: SenseKey::HardwareError,
                asc: 0x44,
                ascq: 0
            }
        );
        assert_eq!(
            e.to_string(),
            "/dev/sdb: PERSISTENT RESERVE OUT (PREEMPT): HARDWARE ERROR 44/00"
        );
        let e = check(&cc(desc(0x0b, 0x47, 0x00)), Op::Preempt).unwrap_err();
        assert!(matches!(
            e,
            Error::Sense {
                key: SenseKey::AbortedCommand,
                ..
            }
        ));
        assert!(e.is_retryable());
        // CHECK CONDITION without usable sense.
        let e = check(&cc(vec![]), Op::ReadKeys).unwrap_err();
        assert_eq!(
            e,
            Error::NoSenseData {
                path: DEV.into(),
                op: Op::ReadKeys
            }
        );
        let e = check(&cc(vec![0x7f, 0, 6]), Op::ReadKeys).unwrap_err();
        assert!(matches!(e, Error::NoSenseData { .. }));
    }

    #[test]
    fn busy_and_queue_full_and_others() {
        let c = Completion {
            status: status::BUSY,
            ..Completion::default()
        };
        let e = check(&c, Op::ReadKeys).unwrap_err();
        assert_eq!(
            e,
            Error::Busy {
                path: DEV.into(),
                op: Op::ReadKeys
            }
        );
        assert!(e.is_retryable());
        let c = Completion {
            status: status::TASK_SET_FULL,
            ..Completion::default()
        };
        let e = check(&c, Op::ReadKeys).unwrap_err();
        assert_eq!(
            e,
            Error::TaskSetFull {
                path: DEV.into(),
                op: Op::ReadKeys
            }
        );
        assert!(e.is_retryable());
        let c = Completion {
            status: status::TASK_ABORTED,
            ..Completion::default()
        };
        let e = check(&c, Op::ReadKeys).unwrap_err();
        assert_eq!(
            e,
            Error::Status {
                path: DEV.into(),
                op: Op::ReadKeys,
                status: 0x40
            }
        );
        assert!(e.is_retryable());
        assert!(e.to_string().ends_with("SCSI status 0x40 (TASK ABORTED)"));
        let c = Completion {
            status: status::ACA_ACTIVE,
            ..Completion::default()
        };
        assert!(!check(&c, Op::ReadKeys).unwrap_err().is_retryable());
    }

    #[test]
    fn transport_and_timeout() {
        let c = Completion {
            host_status: host::DID_TIME_OUT,
            ..Completion::default()
        };
        let e = check(&c, Op::PreemptAndAbort).unwrap_err();
        assert_eq!(
            e,
            Error::Timeout {
                path: DEV.into(),
                op: Op::PreemptAndAbort,
                timeout_ms: 5000
            }
        );
        assert!(e.outcome_unknown() && !e.is_retryable());
        assert_eq!(
            e.to_string(),
            "/dev/sdb: PERSISTENT RESERVE OUT (PREEMPT AND ABORT): no answer within 5000 ms (the \
             target or the path to it is down)"
        );
        let c = Completion {
            driver_status: driver::DRIVER_TIMEOUT,
            ..Completion::default()
        };
        assert!(matches!(
            check(&c, Op::ReadKeys),
            Err(Error::Timeout { .. })
        ));

        let c = Completion {
            host_status: host::DID_TRANSPORT_FAILFAST,
            status: status::GOOD,
            ..Completion::default()
        };
        let e = check(&c, Op::ReadKeys).unwrap_err();
        assert_eq!(
            e,
            Error::Transport {
                path: DEV.into(),
                op: Op::ReadKeys,
                host_status: 0x0f,
                driver_status: 0
            }
        );
        assert!(e.outcome_unknown() && !e.is_retryable());
        assert!(e
            .to_string()
            .contains("host status 0x0f (DID_TRANSPORT_FAILFAST"));
        let c = Completion {
            host_status: host::DID_TRANSPORT_DISRUPTED,
            ..Completion::default()
        };
        assert!(check(&c, Op::ReadKeys).unwrap_err().is_retryable());
        let c = Completion {
            host_status: host::DID_NO_CONNECT,
            ..Completion::default()
        };
        assert!(matches!(
            check(&c, Op::ReadKeys),
            Err(Error::Transport { host_status: 1, .. })
        ));
        // A driver error with a good status is still a failure.
        let c = Completion {
            driver_status: driver::DRIVER_ERROR,
            ..Completion::default()
        };
        assert!(matches!(
            check(&c, Op::ReadKeys),
            Err(Error::Transport {
                driver_status: 4,
                ..
            })
        ));
        // Transport failure wins over whatever status came with it.
        let mut c = cc(fixed(0x06, 0x29, 0x00));
        c.host_status = host::DID_NO_CONNECT;
        assert!(matches!(
            check(&c, Op::ReadKeys),
            Err(Error::Transport { .. })
        ));
    }

    #[test]
    fn open_errors_name_the_path() {
        let e = Error::NotFound {
            path: "/dev/disk/by-id/wwn-0x6001".into(),
        };
        assert_eq!(
            e.to_string(),
            "/dev/disk/by-id/wwn-0x6001: no such device on this node"
        );
        assert_eq!(e.path(), Path::new("/dev/disk/by-id/wwn-0x6001"));
        assert_eq!(e.op(), None);
        let e = Error::NotScsi {
            path: "/dev/null".into(),
            detail: NotScsiDetail::NoSgIo {
                errno: libc::ENOTTY,
            },
        };
        assert!(e
            .to_string()
            .starts_with("/dev/null: not a SCSI device (its driver does not take SG_IO"));
        let e = Error::NotScsi {
            path: "/tmp/x".into(),
            detail: NotScsiDetail::NotBlockOrSg {
                file_type: "regular file",
            },
        };
        assert_eq!(
            e.to_string(),
            "/tmp/x: not a SCSI device (it is a regular file; only block devices and sg nodes take SG_IO)"
        );
        let e = Error::Malformed {
            path: DEV.into(),
            op: Op::ReadKeys,
            error: DecodeError::TooShort {
                what: "READ KEYS",
                needed: 8,
                got: 2,
            },
        };
        assert_eq!(e.op(), Some(Op::ReadKeys));
        assert_eq!(
            e.to_string(),
            "/dev/sdb: PERSISTENT RESERVE IN (READ KEYS): malformed response: READ KEYS response \
             is 2 bytes, shorter than its 8-byte fixed part"
        );
    }
}
