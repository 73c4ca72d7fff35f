//! SCSI-3 persistent reservations (SPC-4 PERSISTENT RESERVE IN / OUT)
//! through Linux `SG_IO`, for baton's fencing.
//!
//! A node fences another off a shared disk by removing that node's
//! registration key (PREEMPT AND ABORT): from then on the device refuses the
//! victim's writes with RESERVATION CONFLICT. This crate is the blocking
//! mechanism; the policy (who registers, who reserves, when to preempt, what
//! to do on a conflict) belongs to the agent, which calls it from
//! `spawn_blocking`.
//!
//! # Pieces
//!
//! - [`cdb`]: the CDBs (PERSISTENT RESERVE IN 0x5E, PERSISTENT RESERVE OUT
//!   0x5F, INQUIRY, TEST UNIT READY), the 24-byte PR OUT parameter list
//!   ([`ParamList`]) and the reservation types ([`PrType`], parseable from
//!   configuration strings). Pure, unit-tested byte for byte against SPC-4.
//! - [`decode`]: READ KEYS ([`Keys`]), READ RESERVATION
//!   ([`ReservationStatus`]), REPORT CAPABILITIES ([`Capabilities`]), READ
//!   FULL STATUS ([`FullStatus`]) and standard INQUIRY ([`Inquiry`]). Pure;
//!   short buffers are decoded as far as they go and flagged `truncated`.
//! - [`sense`]: SCSI status, fixed (0x70/0x71) and descriptor (0x72/0x73)
//!   sense data, ASC/ASCQ names, the kernel's host and driver statuses.
//! - [`Error`]: one typed error per condition, each with the device path and
//!   the operation; [`Completion::check`] maps an SG_IO result onto it.
//! - [`Device`]: opens a device, checks it is SCSI, and runs the operations
//!   ([`Device::read_keys`], [`Device::register_ignore`],
//!   [`Device::preempt_and_abort`], ...). The only `unsafe` code is the
//!   private `sys` module (the `sg_io_hdr` struct and two ioctls).
//!
//! ```no_run
//! use baton_scsi::{node_key, Device, PrType};
//! let dev = Device::open("/dev/disk/by-id/wwn-0x6001405abcdef")?;
//! let me = node_key(4242, 2);
//! dev.register_ignore(me)?;
//! if dev.read_reservation()?.reservation.is_none() {
//!     dev.reserve(me, PrType::WriteExclusiveRegistrantsOnly)?;
//! }
//! // node 1 failed: fence it.
//! dev.preempt_and_abort(me, node_key(4242, 1), PrType::WriteExclusiveRegistrantsOnly)?;
//! # Ok::<(), baton_scsi::Error>(())
//! ```
//!
//! # Keys
//!
//! A node's reservation key is `cluster_id << 32 | node_id` ([`node_key`]):
//! the high 32 bits are the cluster id, the low 32 bits the node id. Node ids
//! start at 1, so a key is never 0 (0 means "no key" to the device). Cluster
//! 4242 (0x1092), node 1 has key `0x0000109200000001`; `sg_persist -k`
//! prints keys without leading zeros, so it shows as `0x109200000001`.
//! [`key_owner`] inverts it. Two clusters sharing a LUN must have different
//! cluster ids. The key does not change across a node's restarts: the agent
//! must not register a rejoining node again before the old life's leave (its
//! preemption) has completed.
//!
//! # Reservation types
//!
//! [`PrType`] names the six SPC-4 types; the default, as in fence_scsi, is
//! Write Exclusive – Registrants Only (5): registered nodes may write, every
//! node may read, and a node whose key was preempted gets RESERVATION
//! CONFLICT on writes. With the registrants-only types one registrant holds
//! the reservation; if that holder unregisters, the reservation goes with it
//! (another node must RESERVE again). With the all-registrants types (7, 8)
//! every registrant is a holder and READ RESERVATION reports key 0.
//!
//! # How conditions map onto [`Error`]
//!
//! | device says                                  | error                                   |
//! |----------------------------------------------|-----------------------------------------|
//! | path missing                                 | [`Error::NotFound`]                     |
//! | file, directory, /dev/null, loop, NVMe ...   | [`Error::NotScsi`]                      |
//! | open fails otherwise (EACCES, ENXIO)         | [`Error::Open`]                         |
//! | SG_IO ioctl fails (EIO, ENODEV, EPERM ...)   | [`Error::Ioctl`]                        |
//! | host DID_TIME_OUT, driver DRIVER_TIMEOUT     | [`Error::Timeout`]                      |
//! | other host_status / driver_status            | [`Error::Transport`]                    |
//! | status 0x18 RESERVATION CONFLICT             | [`Error::ReservationConflict`]          |
//! | status 0x08 BUSY / 0x28 TASK SET FULL        | [`Error::Busy`] / [`Error::TaskSetFull`]|
//! | other status (ACA ACTIVE, TASK ABORTED)      | [`Error::Status`]                       |
//! | CHECK CONDITION, UNIT ATTENTION              | [`Error::UnitAttention`] (asc, ascq)    |
//! | CHECK CONDITION, NOT READY                   | [`Error::NotReady`]                     |
//! | CHECK CONDITION, ILLEGAL REQUEST             | [`Error::IllegalRequest`] (+ field)     |
//! | CHECK CONDITION, any other key               | [`Error::Sense`]                        |
//! | CHECK CONDITION, no readable sense           | [`Error::NoSenseData`]                  |
//! | RECOVERED ERROR / NO SENSE                   | success                                 |
//! | data that cannot be decoded                  | [`Error::Malformed`]                    |
//!
//! Notable codes: UNIT ATTENTION 2A/03 reservations preempted (after a
//! CLEAR), 2A/04 reservations released, 2A/05 registrations preempted,
//! 29/xx power on or reset; ILLEGAL REQUEST 20/00 (the device has no PR:
//! [`Error::pr_unsupported`]), 24/00 invalid field in CDB (type or scope not
//! supported), 26/00 invalid field in parameter list (ALL_TG_PT, APTPL),
//! 26/04 invalid release (wrong type). LIO answers NOT READY to a REGISTER
//! when its PR state directory is missing.
//!
//! # Knowing that this node's key is gone
//!
//! - UNIT ATTENTION 2A/05 or 2A/03 ([`Error::registration_lost`]): the key
//!   was removed. Certain. Stop writing. But a unit attention is reported
//!   once per I_T nexus, to whichever command comes first, and that may be
//!   the kernel's own I/O on the disk: never count on seeing it.
//! - READ KEYS without this node's key ([`Device::is_registered`] false):
//!   certain, and the only check that cannot be missed. Poll it.
//! - RESERVATION CONFLICT ([`Error::is_reservation_conflict`]) depends on
//!   the command. On a write, CLEAR, RELEASE or unregister: the key is not
//!   registered. On PREEMPT / PREEMPT AND ABORT: either this node's key is
//!   not registered *or the victim's key is not* (a repeated preempt after
//!   the first one succeeded). On RESERVE: another nexus may simply hold
//!   the reservation. On REGISTER: this nexus already has some key (use
//!   [`Device::register_ignore`]). So after a conflict on a PR command,
//!   READ KEYS decides.
//! - Any UNIT ATTENTION means the command was not executed: send it again
//!   ([`Error::is_retryable`]) after looking at [`Error::registration_lost`].
//! - [`Error::outcome_unknown`] (timeout, transport, ioctl failure): the
//!   command may or may not have taken effect. A PREEMPT that timed out must
//!   be confirmed by READ KEYS before anything acts on it.
//!
//! # Timeouts and targets that stop answering
//!
//! Every command carries the device's timeout ([`Device::set_timeout`],
//! default [`DEFAULT_TIMEOUT`]) in `sg_io_hdr.timeout`; on expiry the
//! kernel aborts the command and it comes back as [`Error::Timeout`] (or
//! [`Error::Transport`]). The ioctl is synchronous, though, and the kernel's
//! error handling (abort, then LUN/target reset, then transport recovery)
//! can hold it past the timeout; with iSCSI a dead session blocks commands
//! for up to `node.session.timeo.replacement_timeout` (default 120 s) before
//! they fail with DID_TRANSPORT_FAILFAST. Set that to a few seconds on the
//! initiators, and have the caller put its own deadline around the blocking
//! call as well.
//!
//! # Requirements
//!
//! Run as root: without CAP_SYS_RAWIO the kernel's SG_IO command filter
//! lets only a short list of "safe" commands through to a block device. Registrations belong to an I_T nexus (initiator port, target
//! port): with several paths to a LUN, register through each path's device
//! (or set ALL_TG_PT where REPORT CAPABILITIES shows ATP_C). A dm-multipath
//! map passes SG_IO to one path only.

#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod cdb;
pub mod decode;
mod device;
mod error;
pub mod sense;
mod sys;

pub use cdb::{ParamList, ParsePrTypeError, PrInAction, PrOutAction, PrType};
pub use decode::{
    Capabilities, DecodeError, FullStatus, Inquiry, Keys, Registrant, Reservation,
    ReservationStatus,
};
pub use device::{Device, DEFAULT_TIMEOUT};
pub use error::{Completion, Error, NotScsiDetail, Op};
pub use sense::{FieldPointer, Sense, SenseKey};

/// The reservation key of node `node_id` in cluster `cluster_id`:
/// `cluster_id << 32 | node_id`. Never 0 for a valid node id (ids start at 1).
pub const fn node_key(cluster_id: u32, node_id: u32) -> u64 {
    ((cluster_id as u64) << 32) | node_id as u64
}

/// The `(cluster_id, node_id)` a key was made from by [`node_key`], or
/// `None` for a key that cannot be one (node id 0, which includes key 0).
/// Any other key decodes, so compare the cluster id with your own before
/// trusting the node id.
pub const fn key_owner(key: u64) -> Option<(u32, u32)> {
    let node_id = key as u32;
    if node_id == 0 {
        None
    } else {
        Some(((key >> 32) as u32, node_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() {
        assert_eq!(node_key(4242, 1), 0x0000_1092_0000_0001);
        assert_eq!(format!("{:#018x}", node_key(4242, 1)), "0x0000109200000001");
        // How `sg_persist -k` prints it.
        assert_eq!(format!("0x{:x}", node_key(4242, 1)), "0x109200000001");
        assert_eq!(node_key(0, 1), 1);
        assert_eq!(node_key(u32::MAX, u32::MAX), u64::MAX);
        assert_eq!(node_key(1, 0x8000_0000), 0x0000_0001_8000_0000);
        assert_ne!(node_key(0, 1), 0);
    }

    #[test]
    fn key_owner_inverts() {
        for (c, n) in [
            (4242, 1),
            (0, 1),
            (1, 2),
            (u32::MAX, u32::MAX),
            (7, 0x8000_0000),
        ] {
            assert_eq!(key_owner(node_key(c, n)), Some((c, n)));
        }
        assert_eq!(key_owner(0), None);
        assert_eq!(key_owner(0x0000_1092_0000_0000), None);
        assert_eq!(key_owner(0x0000_1092_0000_0003), Some((4242, 3)));
    }
}
