//! `--vsock`: listen on an `AF_VSOCK` port so virtual machines reach the
//! host's server without a network (as nbdkit's `--vsock`).
//!
//! Neither std nor mio knows `AF_VSOCK`, so the listener is a raw socket
//! registered through `SourceFd`. Accepted connections are plain stream
//! sockets: they are carried in a `mio::net::UnixStream`, whose
//! `read`/`write`/`shutdown` are the generic socket calls and never look at
//! the address family (nothing here asks a vsock stream for a Unix address).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// `VMADDR_CID_ANY`: accept from every context.
const VMADDR_CID_ANY: u32 = u32::MAX;
/// `IOCTL_VM_SOCKETS_GET_LOCAL_CID` from linux/vm_sockets.h.
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::c_ulong = 0x7b9;

/// Bind and listen on `port` for any CID; the socket is non-blocking.
///
/// # Errors
/// The OS error, e.g. `EAFNOSUPPORT` when the kernel has no vsock.
pub fn bind(port: u32) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        rustix::net::AddressFamily::VSOCK,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    let addr = libc::sockaddr_vm {
        svm_family: libc::AF_VSOCK as libc::sa_family_t,
        svm_reserved1: 0,
        svm_port: port,
        svm_cid: VMADDR_CID_ANY,
        svm_zero: [0; 4],
    };
    // SAFETY: `addr` is a fully initialised sockaddr_vm that outlives the
    // call, and the length passed is its exact size; `fd` is an open socket.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    rustix::net::listen(&fd, 1024)?;
    Ok(fd)
}

/// Accept one connection as a non-blocking stream, with the peer's
/// context ID and port (for logs and the `ip` filter's `vsock:CID` rules).
///
/// # Errors
/// `WouldBlock` when nothing is pending, or the OS error.
pub fn accept(listener: &OwnedFd) -> io::Result<(mio::net::UnixStream, u32, u32)> {
    // SAFETY: all-zero bytes are a valid sockaddr_vm (plain integers).
    #[allow(unsafe_code)]
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are live, writable and sized for the
    // kernel's sockaddr_vm; `listener` is an open listening socket. On
    // success the return value is a new descriptor we own.
    #[allow(unsafe_code)]
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&raw mut addr).cast::<libc::sockaddr>(),
            &raw mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by accept4 and nothing else owns it.
    #[allow(unsafe_code)]
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let std_stream = std::os::unix::net::UnixStream::from(owned);
    Ok((
        mio::net::UnixStream::from_std(std_stream),
        addr.svm_cid,
        addr.svm_port,
    ))
}

/// This machine's vsock context ID (for the URI), if the kernel says.
#[must_use]
pub fn local_cid() -> Option<u32> {
    let dev = std::fs::File::open("/dev/vsock").ok()?;
    let mut cid: u32 = 0;
    // SAFETY: the ioctl writes one u32 through the pointer, which points at
    // a live, writable u32; the descriptor is open for the call's duration.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            IOCTL_VM_SOCKETS_GET_LOCAL_CID as _,
            &raw mut cid,
        )
    };
    (rc == 0).then_some(cid)
}

/// The bound port of a vsock listener (for `-p 0`).
#[must_use]
pub fn local_port(fd: &OwnedFd) -> Option<u32> {
    let mut addr = libc::sockaddr_vm {
        svm_family: 0,
        svm_reserved1: 0,
        svm_port: 0,
        svm_cid: 0,
        svm_zero: [0; 4],
    };
    let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`, which is a
    // sockaddr_vm of exactly that size.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&raw mut addr).cast::<libc::sockaddr>(),
            &raw mut len,
        )
    };
    (rc == 0).then_some(addr.svm_port)
}
