//! The single mapping from host I/O errors to NBD error values.
//!
//! The protocol restricts reply errors to a fixed set (nbd-protocol.md 4.6;
//! checklist 113): a host errno is never sent raw, because its number need
//! not mean the same thing on the client's OS. Back ends return
//! `std::io::Error`; the driver calls [`to_nbd_errno`] once per failed
//! request and nowhere else.

use std::io::{Error, ErrorKind};

/// `NBD_EPERM` — operation not permitted.
pub const NBD_EPERM: u32 = 1;
/// `NBD_EIO` — input/output error; the fallback for anything unmapped.
pub const NBD_EIO: u32 = 5;
/// `NBD_ENOMEM` — cannot allocate memory.
pub const NBD_ENOMEM: u32 = 12;
/// `NBD_EINVAL` — invalid argument.
pub const NBD_EINVAL: u32 = 22;
/// `NBD_ENOSPC` — no space left on device.
pub const NBD_ENOSPC: u32 = 28;
/// `NBD_EOVERFLOW` — value too large.
pub const NBD_EOVERFLOW: u32 = 75;
/// `NBD_ENOTSUP` — operation not supported.
pub const NBD_ENOTSUP: u32 = 95;
/// `NBD_ESHUTDOWN` — server is shutting down.
pub const NBD_ESHUTDOWN: u32 = 108;

/// Maps an I/O error to the NBD error value sent in a reply.
///
/// The raw OS error is consulted first (it is the most precise), then the
/// [`ErrorKind`] for errors built without one. EDQUOT and EFBIG become
/// `NBD_ENOSPC` as the spec asks; EROFS becomes `NBD_EPERM` as nbdkit does
/// (nbd-protocol.md 4.6). Anything else is `NBD_EIO`.
///
/// # Panics
///
/// Never.
#[must_use]
pub fn to_nbd_errno(e: &Error) -> u32 {
    if let Some(code) = e.raw_os_error() {
        return from_raw(code);
    }
    match e.kind() {
        ErrorKind::InvalidInput => NBD_EINVAL,
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => NBD_EPERM,
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => NBD_ENOSPC,
        ErrorKind::OutOfMemory => NBD_ENOMEM,
        ErrorKind::Unsupported => NBD_ENOTSUP,
        _ => NBD_EIO,
    }
}

/// Maps a host errno. Written as a chain rather than a `match` because on
/// Linux `EOPNOTSUPP == ENOTSUP`, which a match would flag as unreachable.
fn from_raw(code: i32) -> u32 {
    let is = |names: &[i32]| names.contains(&code);
    if is(&[libc::ENOSPC, libc::EDQUOT, libc::EFBIG]) {
        NBD_ENOSPC
    } else if is(&[libc::EROFS, libc::EPERM, libc::EACCES]) {
        NBD_EPERM
    } else if is(&[libc::EINVAL]) {
        NBD_EINVAL
    } else if is(&[libc::ENOMEM]) {
        NBD_ENOMEM
    } else if is(&[libc::EOVERFLOW]) {
        NBD_EOVERFLOW
    } else if is(&[libc::ENOTSUP, libc::EOPNOTSUPP]) {
        NBD_ENOTSUP
    } else if is(&[libc::ESHUTDOWN]) {
        NBD_ESHUTDOWN
    } else {
        NBD_EIO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the map, raw errnos and kinds alike (checklist 113).
    #[test]
    fn every_row_maps_to_an_nbd_value() {
        let raw: &[(i32, u32)] = &[
            (libc::ENOSPC, 28),
            (libc::EDQUOT, 28),
            (libc::EFBIG, 28),
            (libc::EROFS, 1),
            (libc::EPERM, 1),
            (libc::EACCES, 1),
            (libc::EINVAL, 22),
            (libc::ENOMEM, 12),
            (libc::EOVERFLOW, 75),
            (libc::ENOTSUP, 95),
            (libc::EOPNOTSUPP, 95),
            (libc::ESHUTDOWN, 108),
            (libc::EIO, 5),
            (libc::ENOENT, 5),
            (libc::EBADF, 5),
            (libc::EAGAIN, 5),
        ];
        for &(errno, want) in raw {
            let got = to_nbd_errno(&Error::from_raw_os_error(errno));
            assert_eq!(got, want, "errno {errno}");
        }
        let kinds: &[(ErrorKind, u32)] = &[
            (ErrorKind::InvalidInput, 22),
            (ErrorKind::PermissionDenied, 1),
            (ErrorKind::ReadOnlyFilesystem, 1),
            (ErrorKind::StorageFull, 28),
            (ErrorKind::QuotaExceeded, 28),
            (ErrorKind::FileTooLarge, 28),
            (ErrorKind::OutOfMemory, 12),
            (ErrorKind::Unsupported, 95),
            (ErrorKind::UnexpectedEof, 5),
            (ErrorKind::Other, 5),
            (ErrorKind::NotFound, 5),
        ];
        for &(kind, want) in kinds {
            assert_eq!(to_nbd_errno(&Error::new(kind, "x")), want, "{kind:?}");
        }
    }
}
