//! [`Device`]: an open SCSI block device or sg node, and the PR operations on it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cdb::{self, ParamList, PrInAction, PrOutAction, PrType};
use crate::decode::{self, Capabilities, FullStatus, Inquiry, Keys, ReservationStatus};
use crate::error::{Completion, Error, NotScsiDetail, Op};
use crate::sys::{self, Data};

/// The command timeout a [`Device`] starts with.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Major number of the sg character devices (`SCSI_GENERIC_MAJOR`).
const SG_MAJOR: u64 = 21;

/// READ KEYS allocation length tried first: room for 128 keys.
const READ_KEYS_FIRST_ALLOC: u16 = 8 + 128 * 8;

fn dev_major(rdev: u64) -> u64 {
    // glibc's gnu_dev_major: bits 8-19 and 32-43.
    ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)
}

fn os_errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// An open SCSI device: a disk's block device (`/dev/sdb`,
/// `/dev/disk/by-id/...`), its sg node (`/dev/sg2`), or a SCSI pass-through
/// such as a dm-multipath map (which forwards to one path only).
///
/// Every method blocks for one or a few SCSI commands, each bounded by the
/// command timeout (but see the crate docs on error recovery). Call them
/// from a blocking thread. `&self` methods may be used from several threads.
#[derive(Debug)]
pub struct Device {
    file: File,
    path: PathBuf,
    timeout_ms: u32,
    sg_version: i32,
    aptpl: bool,
    all_tg_pt: bool,
}

impl Device {
    /// Open `path` read-write (`O_RDWR | O_NONBLOCK | O_CLOEXEC`) and check
    /// that it takes SG_IO.
    ///
    /// Errors: [`Error::NotFound`] if the path does not exist;
    /// [`Error::NotScsi`] for a regular file, directory, FIFO, socket, a
    /// character device other than sg (never opened: opening some character
    /// devices, a watchdog for one, has effects), or a block device whose
    /// driver refuses `SG_GET_VERSION_NUM` (loop, NVMe, ...);
    /// [`Error::Open`] for the other open failures (EACCES, ENXIO, ...).
    pub fn open(path: impl AsRef<Path>) -> Result<Device, Error> {
        let path = path.as_ref().to_path_buf();
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound { path }),
            Err(e) => {
                return Err(Error::Open {
                    errno: os_errno(&e),
                    path,
                })
            }
        };
        let ft = meta.file_type();
        let not_device = |file_type| NotScsiDetail::NotBlockOrSg { file_type };
        let refuse = if ft.is_block_device() {
            None
        } else if ft.is_char_device() {
            (dev_major(meta.rdev()) != SG_MAJOR)
                .then(|| not_device("character device other than sg"))
        } else if ft.is_dir() {
            Some(not_device("directory"))
        } else if ft.is_fifo() {
            Some(not_device("FIFO"))
        } else if ft.is_socket() {
            Some(not_device("socket"))
        } else {
            Some(not_device("regular file"))
        };
        if let Some(detail) = refuse {
            return Err(Error::NotScsi { path, detail });
        }
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK) // std adds O_CLOEXEC
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound { path }),
            Err(e) => {
                return Err(Error::Open {
                    errno: os_errno(&e),
                    path,
                })
            }
        };
        let sg_version = match sys::sg_version(file.as_fd()) {
            Ok(v) => v,
            Err(errno) => {
                return Err(Error::NotScsi {
                    path,
                    detail: NotScsiDetail::NoSgIo { errno },
                })
            }
        };
        Ok(Device {
            file,
            path,
            timeout_ms: duration_ms(DEFAULT_TIMEOUT),
            sg_version,
            aptpl: false,
            all_tg_pt: false,
        })
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `SG_GET_VERSION_NUM` returned (e.g. 30527 on sd, 30536 on sg).
    pub fn sg_version(&self) -> i32 {
        self.sg_version
    }

    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.timeout_ms))
    }

    /// Set the per-command timeout (rounded to milliseconds, at least 1 ms).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout_ms = duration_ms(timeout);
    }

    /// Builder form of [`Device::set_timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Device {
        self.set_timeout(timeout);
        self
    }

    /// Send APTPL (keep registrations through power loss) with REGISTER and
    /// REGISTER AND IGNORE EXISTING KEY. Off by default. Needs PTPL_C.
    pub fn set_aptpl(&mut self, on: bool) {
        self.aptpl = on;
    }

    /// Send ALL_TG_PT (register through every target port) with REGISTER
    /// and REGISTER AND IGNORE EXISTING KEY. Off by default. Needs ATP_C.
    pub fn set_all_tg_pt(&mut self, on: bool) {
        self.all_tg_pt = on;
    }

    fn run(&self, op: Op, cdb: &[u8], data: Data<'_>) -> Result<Completion, Error> {
        let c = sys::sg_io(self.file.as_fd(), cdb, data, self.timeout_ms).map_err(|errno| {
            if errno == libc::ETIMEDOUT {
                Error::Timeout {
                    path: self.path.clone(),
                    op,
                    timeout_ms: self.timeout_ms,
                }
            } else {
                Error::Ioctl {
                    path: self.path.clone(),
                    op,
                    errno,
                }
            }
        })?;
        c.check(&self.path, op, self.timeout_ms)?;
        Ok(c)
    }

    fn data_in(&self, op: Op, cdb: &[u8], len: u16) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; usize::from(len)];
        let c = self.run(op, cdb, Data::FromDevice(&mut buf))?;
        let resid = usize::try_from(c.resid).unwrap_or(0);
        buf.truncate(buf.len().saturating_sub(resid));
        Ok(buf)
    }

    fn malformed(&self, op: Op) -> impl FnOnce(decode::DecodeError) -> Error + '_ {
        move |error| Error::Malformed {
            path: self.path.clone(),
            op,
            error,
        }
    }

    /// Low level: PERSISTENT RESERVE IN with this service action and
    /// allocation length; the bytes transferred.
    pub fn pr_in(&self, action: PrInAction, allocation_length: u16) -> Result<Vec<u8>, Error> {
        let op = match action {
            PrInAction::ReadKeys => Op::ReadKeys,
            PrInAction::ReadReservation => Op::ReadReservation,
            PrInAction::ReportCapabilities => Op::ReportCapabilities,
            PrInAction::ReadFullStatus => Op::ReadFullStatus,
        };
        self.data_in(
            op,
            &cdb::pr_in(action, allocation_length),
            allocation_length,
        )
    }

    /// Low level: PERSISTENT RESERVE OUT with this service action, type
    /// (`None` where the action ignores it) and basic parameter list.
    pub fn pr_out(
        &self,
        action: PrOutAction,
        pr_type: Option<PrType>,
        params: &ParamList,
    ) -> Result<(), Error> {
        let op = match action {
            PrOutAction::Register if params.service_action_key == 0 => Op::Unregister,
            PrOutAction::Register => Op::Register,
            PrOutAction::Reserve => Op::Reserve,
            PrOutAction::Release => Op::Release,
            PrOutAction::Clear => Op::Clear,
            PrOutAction::Preempt => Op::Preempt,
            PrOutAction::PreemptAndAbort => Op::PreemptAndAbort,
            PrOutAction::RegisterAndIgnoreExistingKey => Op::RegisterAndIgnore,
        };
        let list = params.encode();
        let cdb = cdb::pr_out(action, pr_type, ParamList::LEN as u32);
        self.run(op, &cdb, Data::ToDevice(&list)).map(drop)
    }

    /// READ KEYS: the PR generation and every registered key. Re-reads with a
    /// larger buffer when the first did not hold the whole list.
    pub fn read_keys(&self) -> Result<Keys, Error> {
        let mut alloc = READ_KEYS_FIRST_ALLOC;
        loop {
            let buf = self.pr_in(PrInAction::ReadKeys, alloc)?;
            let keys = decode::read_keys(&buf).map_err(self.malformed(Op::ReadKeys))?;
            let want = u16::try_from(u64::from(keys.additional_length) + 8).unwrap_or(u16::MAX);
            // Done when complete, or when a larger buffer cannot help.
            if !keys.truncated || want <= alloc {
                return Ok(keys);
            }
            alloc = want;
        }
    }

    /// Whether `key` is among the registered keys (one READ KEYS).
    pub fn is_registered(&self, key: u64) -> Result<bool, Error> {
        Ok(self.read_keys()?.contains(key))
    }

    /// READ RESERVATION: the PR generation and the reservation, if any.
    pub fn read_reservation(&self) -> Result<ReservationStatus, Error> {
        let buf = self.pr_in(PrInAction::ReadReservation, 24)?;
        decode::read_reservation(&buf).map_err(self.malformed(Op::ReadReservation))
    }

    /// REPORT CAPABILITIES: optional features and supported types.
    pub fn report_capabilities(&self) -> Result<Capabilities, Error> {
        let buf = self.pr_in(PrInAction::ReportCapabilities, 8)?;
        decode::report_capabilities(&buf).map_err(self.malformed(Op::ReportCapabilities))
    }

    /// READ FULL STATUS: every registration with its holder flag and
    /// initiator TransportID (not every device implements it).
    pub fn read_full_status(&self) -> Result<FullStatus, Error> {
        let mut alloc: u16 = 8192;
        loop {
            let buf = self.pr_in(PrInAction::ReadFullStatus, alloc)?;
            let st = decode::read_full_status(&buf).map_err(self.malformed(Op::ReadFullStatus))?;
            let want = u16::try_from(u64::from(st.additional_length) + 8).unwrap_or(u16::MAX);
            if !st.truncated || want <= alloc {
                return Ok(st);
            }
            alloc = want;
        }
    }

    /// REGISTER `key` on an I_T nexus that has no key (reservation key 0).
    /// RESERVATION CONFLICT if this nexus already has a key, even the same
    /// one: use [`Device::register_ignore`] to register whatever was there.
    pub fn register(&self, key: u64) -> Result<(), Error> {
        self.pr_out(
            PrOutAction::Register,
            None,
            &ParamList {
                reservation_key: 0,
                service_action_key: key,
                spec_i_pt: false,
                all_tg_pt: self.all_tg_pt,
                aptpl: self.aptpl,
            },
        )
    }

    /// REGISTER AND IGNORE EXISTING KEY: this nexus ends up registered with
    /// `key`, whatever it had before (as fence_scsi's "on" does).
    pub fn register_ignore(&self, key: u64) -> Result<(), Error> {
        self.pr_out(
            PrOutAction::RegisterAndIgnoreExistingKey,
            None,
            &ParamList {
                reservation_key: 0,
                service_action_key: key,
                spec_i_pt: false,
                all_tg_pt: self.all_tg_pt,
                aptpl: self.aptpl,
            },
        )
    }

    /// Remove this nexus' registration `key` (REGISTER with service action
    /// key 0). If this nexus held a registrants-only or plain reservation,
    /// that reservation is released with it.
    pub fn unregister(&self, key: u64) -> Result<(), Error> {
        self.pr_out(
            PrOutAction::Register,
            None,
            &ParamList {
                reservation_key: key,
                service_action_key: 0,
                ..ParamList::default()
            },
        )
    }

    /// RESERVE with `key` (which must be registered through this nexus).
    /// Succeeds without change if this nexus already holds a reservation of
    /// this type.
    pub fn reserve(&self, key: u64, pr_type: PrType) -> Result<(), Error> {
        self.pr_out(PrOutAction::Reserve, Some(pr_type), &keyed(key, 0))
    }

    /// RELEASE the reservation held with `key`; `pr_type` must match it
    /// (else ILLEGAL REQUEST 26/04). A registered non-holder's RELEASE
    /// succeeds and changes nothing.
    pub fn release(&self, key: u64, pr_type: PrType) -> Result<(), Error> {
        self.pr_out(PrOutAction::Release, Some(pr_type), &keyed(key, 0))
    }

    /// CLEAR: remove the reservation and every registration, this node's
    /// included. `key` must be registered through this nexus.
    pub fn clear(&self, key: u64) -> Result<(), Error> {
        self.pr_out(PrOutAction::Clear, None, &keyed(key, 0))
    }

    /// PREEMPT: remove every registration of `victim_key` and, if the victim
    /// held the reservation, take it with `pr_type`. `victim_key` 0 is only
    /// valid against an all-registrants reservation (it removes everyone else).
    pub fn preempt(&self, my_key: u64, victim_key: u64, pr_type: PrType) -> Result<(), Error> {
        self.pr_out(
            PrOutAction::Preempt,
            Some(pr_type),
            &keyed(my_key, victim_key),
        )
    }

    /// PREEMPT AND ABORT: as [`Device::preempt`], and abort the commands the
    /// victim still has queued on the logical unit, so none of its writes
    /// land after this returns.
    pub fn preempt_and_abort(
        &self,
        my_key: u64,
        victim_key: u64,
        pr_type: PrType,
    ) -> Result<(), Error> {
        self.pr_out(
            PrOutAction::PreemptAndAbort,
            Some(pr_type),
            &keyed(my_key, victim_key),
        )
    }

    /// Standard INQUIRY (36 bytes): device type, vendor, product, revision.
    pub fn inquiry(&self) -> Result<Inquiry, Error> {
        let buf = self.data_in(Op::Inquiry, &cdb::inquiry(36), 36)?;
        decode::inquiry(&buf).map_err(self.malformed(Op::Inquiry))
    }

    /// TEST UNIT READY.
    pub fn test_unit_ready(&self) -> Result<(), Error> {
        self.run(Op::TestUnitReady, &cdb::test_unit_ready(), Data::None)
            .map(drop)
    }
}

impl AsFd for Device {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn keyed(reservation_key: u64, service_action_key: u64) -> ParamList {
    ParamList {
        reservation_key,
        service_action_key,
        ..ParamList::default()
    }
}

fn duration_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("baton-scsi-{}-{name}", std::process::id()))
    }

    #[test]
    fn dev_null_is_not_scsi() {
        let e = Device::open("/dev/null").unwrap_err();
        assert!(
            matches!(&e, Error::NotScsi { path, .. } if path == Path::new("/dev/null")),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("/dev/null: not a SCSI device"),
            "{e}"
        );
    }

    #[test]
    fn regular_file_is_not_scsi() {
        let p = temp_path("regular");
        std::fs::write(&p, b"not a disk").unwrap();
        let e = Device::open(&p).unwrap_err();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(
            e,
            Error::NotScsi {
                path: p.clone(),
                detail: NotScsiDetail::NotBlockOrSg {
                    file_type: "regular file"
                }
            }
        );
        assert!(e.to_string().contains(&*p.to_string_lossy()));
    }

    #[test]
    fn directory_is_not_scsi() {
        let e = Device::open(std::env::temp_dir()).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotScsi {
                    detail: NotScsiDetail::NotBlockOrSg {
                        file_type: "directory"
                    },
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn missing_path_is_not_found() {
        let p = temp_path("missing/sdz");
        let e = Device::open(&p).unwrap_err();
        assert_eq!(e, Error::NotFound { path: p.clone() });
        assert_eq!(
            e.to_string(),
            format!("{}: no such device on this node", p.display())
        );
        // A dangling /dev/disk/by-id style link is "not found" too.
        let link = temp_path("dangling");
        std::os::unix::fs::symlink("/dev/baton-no-such-disk", &link).unwrap();
        let e = Device::open(&link).unwrap_err();
        std::fs::remove_file(&link).unwrap();
        assert_eq!(e, Error::NotFound { path: link });
    }

    #[test]
    fn symlink_to_dev_null_is_not_scsi() {
        let link = temp_path("null-link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        let e = Device::open(&link).unwrap_err();
        std::fs::remove_file(&link).unwrap();
        assert!(
            matches!(&e, Error::NotScsi { path, .. } if *path == link),
            "{e:?}"
        );
    }

    #[test]
    fn loop_device_is_not_scsi() {
        // Only where a loop device node exists and can be opened (root).
        let p = Path::new("/dev/loop0");
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if !meta.file_type().is_block_device() {
            return;
        }
        match Device::open(p) {
            Err(Error::NotScsi {
                detail: NotScsiDetail::NoSgIo { errno },
                ..
            }) => {
                assert!(
                    errno == libc::ENOTTY || errno == libc::EINVAL,
                    "errno {errno}"
                )
            }
            Err(Error::Open { errno, .. }) => assert_eq!(errno, libc::EACCES),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timeouts() {
        assert_eq!(duration_ms(Duration::from_secs(3)), 3000);
        assert_eq!(duration_ms(Duration::ZERO), 1);
        assert_eq!(duration_ms(Duration::from_secs(u64::MAX)), u32::MAX);
        assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(10));
    }

    #[test]
    fn major_numbers() {
        // makedev(21, 3) as glibc encodes it, and a large major.
        assert_eq!(dev_major((21 << 8) | 3), 21);
        assert_eq!(dev_major((0x123 << 8) | (0x45 << 32) << 12), 0x45123);
    }
}
