//! `sd_notify(3)`-style readiness notification, written directly: one
//! datagram `READY=1` to the Unix socket named by `NOTIFY_SOCKET` (a path,
//! or an abstract name when it starts with `@`). This lets a systemd unit
//! use `Type=notify` so dependants start only once nbdd listens.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (for example `"READY=1"`) to `$NOTIFY_SOCKET`.
///
/// Returns `Ok(false)` when the variable is unset (not started by a service
/// manager), `Ok(true)` once sent.
///
/// # Errors
///
/// If the socket cannot be reached.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let addr = address(target.as_encoded_bytes())?;
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// Parses `NOTIFY_SOCKET`: `@name` is Linux's abstract namespace.
fn address(target: &[u8]) -> io::Result<SocketAddr> {
    match target.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        Some(_) => {
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(target))
        }
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is empty",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_and_path_addresses() {
        use std::os::linux::net::SocketAddrExt;
        let a = address(b"@nbdd-test").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"nbdd-test"[..]));
        let p = address(b"/run/systemd/notify").unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(address(b"").is_err());
    }

    #[test]
    fn sends_one_datagram() {
        let dir = std::env::temp_dir().join(format!("nbdd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let sock = UnixDatagram::unbound().unwrap();
        let addr = address(path.as_os_str().as_encoded_bytes()).unwrap();
        sock.send_to_addr(b"READY=1", &addr).unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
