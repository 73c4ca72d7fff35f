//! The only unsafe code of the crate: the `sg_io_hdr` structure and the two
//! ioctls (`SG_GET_VERSION_NUM`, `SG_IO`). Everything above works on safe
//! slices and the [`Completion`] this returns.

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

use libc::{c_int, c_uint, c_ushort, c_void};

use crate::error::Completion;

/// `SG_IO` from <scsi/sg.h>.
const SG_IO: libc::Ioctl = 0x2285;
/// `SG_GET_VERSION_NUM` from <scsi/sg.h>.
const SG_GET_VERSION_NUM: libc::Ioctl = 0x2282;

/// `interface_id` of the v3 interface: 'S'.
const SG_INTERFACE_ID_ORIG: c_int = b'S' as c_int;
const SG_DXFER_NONE: c_int = -1;
const SG_DXFER_TO_DEV: c_int = -2;
const SG_DXFER_FROM_DEV: c_int = -3;

/// Bytes of sense buffer offered to the kernel (SPC-4 allows 252; the
/// kernel keeps 96; every condition this crate decodes fits in 32).
pub(crate) const SENSE_LEN: usize = 64;

/// `struct sg_io_hdr` from <scsi/sg.h>, field for field.
#[repr(C)]
struct SgIoHdr {
    interface_id: c_int,
    dxfer_direction: c_int,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: c_ushort,
    dxfer_len: c_uint,
    dxferp: *mut c_void,
    cmdp: *const u8,
    sbp: *mut u8,
    timeout: c_uint,
    flags: c_uint,
    pack_id: c_int,
    usr_ptr: *mut c_void,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: c_ushort,
    driver_status: c_ushort,
    resid: c_int,
    duration: c_uint,
    info: c_uint,
}

// The layout the kernel expects: 88 bytes with 8-byte pointers, 64 with 4-byte ones.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<SgIoHdr>() == 88);
#[cfg(target_pointer_width = "32")]
const _: () = assert!(std::mem::size_of::<SgIoHdr>() == 64);

/// The data phase of a command.
pub(crate) enum Data<'a> {
    None,
    /// Data-in: the device writes into the buffer.
    FromDevice(&'a mut [u8]),
    /// Data-out: the device reads the buffer.
    ToDevice(&'a [u8]),
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `SG_GET_VERSION_NUM`: succeeds on sd, sg and SCSI pass-through nodes only.
pub(crate) fn sg_version(fd: BorrowedFd<'_>) -> Result<i32, i32> {
    let mut version: c_int = 0;
    // SAFETY: `fd` is an open descriptor borrowed for the call; the ioctl
    // writes one `int` through the pointer, which points to `version`, a
    // live local of that type. Drivers that do not know the request return
    // an error without touching the pointer.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            SG_GET_VERSION_NUM,
            &mut version as *mut c_int,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(version)
    }
}

/// Issue one command through `SG_IO` and wait for it. `Err(errno)` when the
/// ioctl itself fails; otherwise the raw completion, to be checked.
pub(crate) fn sg_io(
    fd: BorrowedFd<'_>,
    cdb: &[u8],
    data: Data<'_>,
    timeout_ms: u32,
) -> Result<Completion, i32> {
    assert!((6..=16).contains(&cdb.len()), "CDB of {} bytes", cdb.len());
    let mut sense = [0u8; SENSE_LEN];
    let (direction, ptr, len): (c_int, *mut c_void, usize) = match data {
        Data::None => (SG_DXFER_NONE, std::ptr::null_mut(), 0),
        Data::FromDevice(buf) => (SG_DXFER_FROM_DEV, buf.as_mut_ptr().cast(), buf.len()),
        // The kernel only reads a data-out buffer; the header's field is not const.
        Data::ToDevice(buf) => (SG_DXFER_TO_DEV, buf.as_ptr().cast_mut().cast(), buf.len()),
    };
    let mut hdr = SgIoHdr {
        interface_id: SG_INTERFACE_ID_ORIG,
        dxfer_direction: direction,
        cmd_len: cdb.len() as u8, // 6..=16, checked above
        mx_sb_len: SENSE_LEN as u8,
        iovec_count: 0,
        dxfer_len: c_uint::try_from(len).map_err(|_| libc::EINVAL)?,
        dxferp: ptr,
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: timeout_ms.max(1),
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: `hdr` is a correctly laid out `sg_io_hdr` (size checked
    // above) that lives across the call. Its pointers are valid for the
    // lengths it declares: `cmdp` for `cmd_len` bytes of `cdb`, `sbp` for
    // `mx_sb_len` bytes of `sense`, and `dxferp` for `dxfer_len` bytes of
    // the caller's buffer (null with length 0 for no data). The data-out
    // buffer is only read by the kernel; the data-in buffer is exclusively
    // borrowed for the call. SG_IO is synchronous on both sd (the block
    // layer waits uninterruptibly) and sg (indirect I/O, no
    // SG_FLAG_DIRECT_IO: data and sense are copied to user space only
    // before the ioctl returns, and an interrupted request is orphaned,
    // never copied later), so no pointer is used after the call returns.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), SG_IO, &mut hdr as *mut SgIoHdr) };
    if r < 0 {
        return Err(errno());
    }
    let sense_len = usize::from(hdr.sb_len_wr).min(SENSE_LEN);
    Ok(Completion {
        status: hdr.status,
        host_status: hdr.host_status,
        driver_status: hdr.driver_status,
        sense: sense[..sense_len].to_vec(),
        resid: hdr.resid,
        duration_ms: hdr.duration,
    })
}
