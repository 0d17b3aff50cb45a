//! systemd socket activation: listening sockets inherited from the service
//! manager (`sd_listen_fds(3)` protocol, implemented from its description).
//!
//! The manager passes `LISTEN_FDS` sockets starting at fd 3 and sets
//! `LISTEN_PID` to the pid it started; the variables are only for us when
//! that pid is ours (a child we spawn inherits the environment, so `--run`
//! strips them; see [`VARS`]). Detection is automatic, as with nbdkit:
//! there is no command-line switch.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use rustix::io::FdFlags;

use crate::listen::Listener;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// Environment variables of the protocol, removed from children's
/// environments so they do not mistake our sockets for theirs.
pub const VARS: &[&str] = &["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// How many sockets the environment says were passed to *this* process:
/// `None` when there is no activation (variables absent or meant for
/// another pid).
///
/// # Errors
///
/// `InvalidInput` when the variables are present for us but malformed.
pub fn detect() -> io::Result<Option<usize>> {
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    let n: usize = std::env::var("LISTEN_FDS")
        .map_err(|_| bad("LISTEN_PID is set but LISTEN_FDS is not"))?
        .trim()
        .parse()
        .map_err(|_| bad("LISTEN_FDS is not a number"))?;
    // An absurd count would make us adopt unrelated descriptors.
    if n == 0 || n > 64 {
        return Err(bad("LISTEN_FDS must be between 1 and 64"));
    }
    Ok(Some(n))
}

/// Adopts the `n` inherited sockets (fds 3 .. 3+n) as non-blocking,
/// close-on-exec listeners.
///
/// Call once, early in `main`, with the count from [`detect`].
///
/// # Errors
///
/// If a descriptor is not open, or is not a TCP or Unix stream socket.
pub fn take(n: usize) -> io::Result<Vec<Listener>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let raw = FIRST_FD + RawFd::try_from(i).unwrap_or(RawFd::MAX - FIRST_FD);
        let ctx = |e: io::Error| io::Error::new(e.kind(), format!("LISTEN_FDS fd {raw}: {e}"));
        // Probe before adopting: an OwnedFd must only ever own an open fd.
        // SAFETY: F_GETFD reads the descriptor flags of an int; it touches no
        // memory and is harmless on a closed fd (EBADF).
        #[allow(unsafe_code)]
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
        if flags == -1 {
            return Err(ctx(io::Error::last_os_error()));
        }
        // SAFETY: the protocol hands fds 3..3+LISTEN_FDS to this process
        // (checked: LISTEN_PID is our pid), the probe above shows the fd is
        // open, and nothing else in nbdd claims these numbers: `main` calls
        // this once, before opening any file or socket of its own.
        #[allow(unsafe_code)]
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // systemd leaves them inheritable; --run children must not get them.
        rustix::io::fcntl_setfd(&fd, FdFlags::CLOEXEC).map_err(|e| ctx(e.into()))?;
        out.push(Listener::from_fd(fd).map_err(ctx)?);
    }
    Ok(out)
}
