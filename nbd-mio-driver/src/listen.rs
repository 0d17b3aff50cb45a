//! Listening sockets (TCP, Unix, inherited from systemd, stdin for `-s`)
//! and the URI that clients use to reach them.
//!
//! Everything here is non-blocking and close-on-exec, ready for mio. The
//! event loop only sees [`Listener`] and [`Stream`]; how they were obtained
//! (bound, inherited, `-s`) is decided here and in `activation`.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use mio::event::Source;
use mio::{Interest, Registry, Token};
use nbd_backends::Peer;
use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

use crate::cli::{Config, IpFamily, TlsMode, UnixPath};

/// Pending connections the kernel queues per listener (nbdkit uses 1024 too).
const BACKLOG: i32 = 1024;

/// A listening socket registered with mio.
#[derive(Debug)]
pub enum Listener {
    /// TCP over IPv4 or IPv6.
    Tcp(mio::net::TcpListener),
    /// A Unix-domain stream socket.
    Unix(mio::net::UnixListener),
    /// An `AF_VSOCK` socket (`--vsock`), see `vsock.rs`.
    Vsock(std::os::fd::OwnedFd),
}

/// An accepted connection: `Read`, `Write` (also through `&Stream`) and a
/// mio [`Source`]. TCP streams have `TCP_NODELAY` set, because NBD replies
/// are latency-bound request/response traffic.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(mio::net::TcpStream),
    /// A Unix-domain connection (also `-s` on a socketpair).
    Unix(mio::net::UnixStream),
    /// An in-memory byte pipe: the whole-server fuzz harness's client,
    /// with no socket (never registered with mio).
    #[cfg(feature = "fuzzing")]
    Pipe(crate::fuzzing::Pipe),
}

impl Listener {
    /// Accepts one pending connection and names the peer for logs.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when nothing is pending (keep accepting until then), or
    /// the OS error from `accept(2)`.
    pub fn accept(&self) -> io::Result<(Stream, String, Peer)> {
        match self {
            Self::Tcp(l) => {
                let (s, peer) = l.accept()?;
                // Best effort: a failure here only costs latency.
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), peer.to_string(), Peer::Tcp(peer)))
            }
            Self::Unix(l) => {
                let (s, _) = l.accept()?;
                // Unix peers are anonymous; the credentials say who it is.
                let peer = rustix::net::sockopt::socket_peercred(&s).map_or_else(
                    |_| "unix".to_owned(),
                    |c| format!("unix pid {}", c.pid.as_raw_nonzero()),
                );
                Ok((Stream::Unix(s), peer, Peer::Unix))
            }
            Self::Vsock(fd) => {
                let (s, cid, port) = crate::vsock::accept(fd)?;
                Ok((
                    Stream::Unix(s),
                    format!("vsock {cid}:{port}"),
                    Peer::Vsock { cid, port },
                ))
            }
        }
    }

    /// The TCP port this listener is bound to, if it is TCP.
    #[must_use]
    pub fn tcp_port(&self) -> Option<u16> {
        match self {
            Self::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Self::Unix(_) | Self::Vsock(_) => None,
        }
    }

    /// The filesystem path of a Unix listener, if it has one.
    #[must_use]
    pub fn unix_path(&self) -> Option<PathBuf> {
        match self {
            Self::Tcp(_) | Self::Vsock(_) => None,
            Self::Unix(l) => l.local_addr().ok()?.as_pathname().map(Path::to_path_buf),
        }
    }

    /// A human-readable local address, for logs.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".to_owned(), |a| a.to_string()),
            Self::Unix(_) => self
                .unix_path()
                .map_or_else(|| "unix".to_owned(), |p| p.display().to_string()),
            Self::Vsock(fd) => format!("vsock port {}", crate::vsock::local_port(fd).unwrap_or(0)),
        }
    }

    /// The port of a vsock listener.
    #[must_use]
    pub fn vsock_port(&self) -> Option<u32> {
        match self {
            Self::Vsock(fd) => crate::vsock::local_port(fd),
            _ => None,
        }
    }

    /// Wraps an inherited listening socket (systemd) according to its family.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the socket is neither a stream socket nor
    /// listening-capable Unix/IPv4/IPv6.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        if sockopt::socket_type(&fd)? != SocketType::STREAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a stream socket",
            ));
        }
        let family = rustix::net::getsockname(&fd)?.address_family();
        if family == AddressFamily::UNIX {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true)?;
            Ok(Self::Unix(mio::net::UnixListener::from_std(l)))
        } else if family == AddressFamily::INET || family == AddressFamily::INET6 {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true)?;
            Ok(Self::Tcp(mio::net::TcpListener::from_std(l)))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unsupported socket family",
            ))
        }
    }
}

impl Source for Listener {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Self::Tcp(l) => l.register(r, t, i),
            Self::Unix(l) => l.register(r, t, i),
            Self::Vsock(fd) => {
                mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(fd)).register(r, t, i)
            }
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Self::Tcp(l) => l.reregister(r, t, i),
            Self::Unix(l) => l.reregister(r, t, i),
            Self::Vsock(fd) => {
                mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(fd)).reregister(r, t, i)
            }
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Self::Tcp(l) => l.deregister(r),
            Self::Unix(l) => l.deregister(r),
            Self::Vsock(fd) => {
                mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(fd)).deregister(r)
            }
        }
    }
}

impl Stream {
    /// Takes standard input as the one client for `-s`.
    ///
    /// Standard input must be a connected stream socket (as with inetd or
    /// libnbd's `connect_command`, which hand the server one socketpair on
    /// fds 0 and 1); replies are written to the same socket. Pipes are
    /// refused because mio needs one pollable, bidirectional source.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if stdin is not a stream socket.
    pub fn from_stdin() -> io::Result<Self> {
        let fd = io::stdin().as_fd().try_clone_to_owned()?;
        let not_socket = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "-s needs standard input to be a stream socket",
            )
        };
        if sockopt::socket_type(&fd).map_err(|_| not_socket())? != SocketType::STREAM {
            return Err(not_socket());
        }
        let family = rustix::net::getsockname(&fd)?.address_family();
        if family == AddressFamily::INET || family == AddressFamily::INET6 {
            let s = std::net::TcpStream::from(fd);
            s.set_nonblocking(true)?;
            let _ = s.set_nodelay(true);
            Ok(Self::Tcp(mio::net::TcpStream::from_std(s)))
        } else {
            let s = std::os::unix::net::UnixStream::from(fd);
            s.set_nonblocking(true)?;
            Ok(Self::Unix(mio::net::UnixStream::from_std(s)))
        }
    }

    /// Shuts down both directions (used after a clean `NBD_CMD_DISC`).
    ///
    /// # Errors
    ///
    /// The OS error from `shutdown(2)`.
    pub fn shutdown(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Self::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            #[cfg(feature = "fuzzing")]
            Self::Pipe(p) => {
                p.shutdown();
                Ok(())
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "fuzzing")]
        if let Self::Pipe(p) = self {
            return p.read(buf);
        }
        (&*self).read(buf)
    }

    // readv: a streamed WRITE's payload goes into many pages at once
    // (inflow.rs); the default would fill only the first.
    fn read_vectored(&mut self, bufs: &mut [std::io::IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read_vectored(bufs),
            Self::Unix(s) => s.read_vectored(bufs),
            #[cfg(feature = "fuzzing")]
            Self::Pipe(p) => p.read_vectored(bufs),
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
            // The pipe is read through `&mut Stream` only.
            #[cfg(feature = "fuzzing")]
            Stream::Pipe(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        #[cfg(feature = "fuzzing")]
        if let Self::Pipe(p) = self {
            return p.write(buf);
        }
        (&*self).write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        #[cfg(feature = "fuzzing")]
        if let Self::Pipe(p) = self {
            return p.write_vectored(bufs);
        }
        (&*self).write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
            #[cfg(feature = "fuzzing")]
            Stream::Pipe(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&*s).write_vectored(bufs),
            Stream::Unix(s) => (&*s).write_vectored(bufs),
            #[cfg(feature = "fuzzing")]
            Stream::Pipe(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.register(r, t, i),
            Self::Unix(s) => s.register(r, t, i),
            #[cfg(feature = "fuzzing")]
            Self::Pipe(_) => Ok(()),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.reregister(r, t, i),
            Self::Unix(s) => s.reregister(r, t, i),
            #[cfg(feature = "fuzzing")]
            Self::Pipe(_) => Ok(()),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.deregister(r),
            Self::Unix(s) => s.deregister(r),
            #[cfg(feature = "fuzzing")]
            Self::Pipe(_) => Ok(()),
        }
    }
}

/// Removes the Unix socket file (and the private directory of `-U -`) when
/// dropped, but only if the file is still the one we bound: a second server
/// that replaced it must not lose its socket.
#[derive(Debug, Default)]
pub struct ListenGuard {
    socket: Option<(PathBuf, u64, u64)>,
    private_dir: Option<PathBuf>,
}

impl ListenGuard {
    /// The private directory created for `-U -`, if any.
    #[must_use]
    pub fn private_dir(&self) -> Option<&Path> {
        self.private_dir.as_deref()
    }
}

impl Drop for ListenGuard {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.socket
            && let Ok(m) = std::fs::symlink_metadata(path)
            && m.dev() == *dev
            && m.ino() == *ino
        {
            let _ = std::fs::remove_file(path);
        }
        if let Some(dir) = &self.private_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Binds what the configuration asks for.
///
/// * `-U PATH`: refuses when a live server answers on `PATH` (`AddrInUse`);
///   removes a stale socket file left by a crashed server; never removes a
///   file that is not a socket.
/// * `-U -`: a socket named `socket` in a fresh mode-0700 temporary directory.
/// * otherwise TCP on every address `-i` resolves to, or on both `0.0.0.0`
///   and `[::]` (with `IPV6_V6ONLY`, so the two binds do not collide). With
///   `-p 0` the IPv6 socket reuses the port the kernel gave IPv4, so one URI
///   reaches both.
///
/// # Errors
///
/// The OS error of the failing bind, with the address in the message.
pub fn bind(cfg: &Config) -> io::Result<(Vec<Listener>, ListenGuard)> {
    let mut guard = ListenGuard::default();
    if let Some(unix) = &cfg.unix {
        let path = match unix {
            UnixPath::Path(p) => p.clone(),
            UnixPath::Private => {
                let dir = private_dir()?;
                let p = dir.join("socket");
                guard.private_dir = Some(dir);
                p
            }
        };
        remove_stale(&path)?;
        let l = mio::net::UnixListener::bind(&path)
            .map_err(|e| annotate(e, &path.display().to_string()))?;
        let m = std::fs::symlink_metadata(&path)?;
        guard.socket = Some((path, m.dev(), m.ino()));
        return Ok((vec![Listener::Unix(l)], guard));
    }
    if cfg.vsock {
        let fd = crate::vsock::bind(u32::from(cfg.port))
            .map_err(|e| annotate(e, &format!("vsock port {}", cfg.port)))?;
        return Ok((vec![Listener::Vsock(fd)], guard));
    }
    let addrs: Vec<SocketAddr> = match &cfg.ipaddr {
        Some(host) => {
            let mut v: Vec<SocketAddr> = (host.as_str(), cfg.port)
                .to_socket_addrs()
                .map_err(|e| annotate(e, host))?
                .collect();
            // /etc/hosts may list an address twice; binding it again would
            // fail with EADDRINUSE.
            let mut seen = Vec::new();
            v.retain(|a| {
                let fresh = !seen.contains(a);
                seen.push(*a);
                fresh
            });
            v
        }
        None => vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), cfg.port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), cfg.port),
        ],
    };
    // -4 / -6: one family only, both for -i's names and for the default
    // addresses (nbdkit's meaning).
    let addrs: Vec<SocketAddr> = match cfg.family {
        None => addrs,
        Some(f) => {
            let keep: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| a.is_ipv4() == (f == IpFamily::V4))
                .collect();
            if keep.is_empty() {
                let (flag, fam) = match f {
                    IpFamily::V4 => ("-4", "IPv4"),
                    IpFamily::V6 => ("-6", "IPv6"),
                };
                return Err(io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!(
                        "{flag}: {} has no {fam} address",
                        cfg.ipaddr.as_deref().unwrap_or("")
                    ),
                ));
            }
            keep
        }
    };
    let mut listeners = Vec::new();
    let mut port = cfg.port;
    for (i, mut addr) in addrs.iter().copied().enumerate() {
        if cfg.port == 0 && port != 0 {
            addr.set_port(port);
        }
        match bind_tcp(addr) {
            Ok(l) => {
                port = l.local_addr()?.port();
                listeners.push(Listener::Tcp(l));
            }
            // A host without IPv6 still serves IPv4 when no -i was given.
            Err(e)
                if cfg.ipaddr.is_none() && cfg.family.is_none() && i > 0 && is_unavailable(&e) =>
            {
                log::debug!("not listening on {addr}: {e}");
            }
            Err(e) => return Err(annotate(e, &addr.to_string())),
        }
    }
    Ok((listeners, guard))
}

fn is_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// One non-blocking, close-on-exec TCP listener.
fn bind_tcp(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let family = if addr.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    // Restarting right after a crash must not wait out TIME_WAIT.
    sockopt::set_socket_reuseaddr(&fd, true)?;
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, true)?;
    }
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(
        std::net::TcpListener::from(fd),
    ))
}

/// Clears the way for binding `path`, or explains why not.
fn remove_stale(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let shown = path.display();
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{shown}: exists and is not a socket; not replacing it"),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{shown}: another server is already listening there"),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale socket {shown}");
            std::fs::remove_file(path)
        }
        Err(e) => Err(annotate(e, &shown.to_string())),
    }
}

/// Creates `$TMPDIR/nbdd.XXXXXXXX` with mode 0700, so that no other user
/// can reach (or pre-create) the private socket.
fn private_dir() -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for attempt in 0..100u64 {
        // A cheap mix; uniqueness, not secrecy, is what matters (mode 0700
        // plus create-exclusive protects it).
        let n = seed
            .wrapping_add(attempt)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let dir = base.join(format!("nbdd.{:08x}", n >> 32));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(annotate(e, &dir.display().to_string())),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary directory name",
    ))
}

/// The URI a client should use: `nbd://host:port/EXPORT` or
/// `nbd+unix:///EXPORT?socket=PATH` (`nbds…` when TLS is required), as in
/// the NBD URI specification. Used for `--print-uri` and `$uri`.
/// Returns an empty string when there is nothing to connect to (`-s`).
#[must_use]
pub fn uri(cfg: &Config, listeners: &[Listener]) -> String {
    let s = if cfg.tls == TlsMode::Require { "s" } else { "" };
    let export = encode(&cfg.export_name, b"/");
    if let Some(path) = listeners.iter().find_map(Listener::unix_path) {
        let socket = encode(&path.to_string_lossy(), b"/");
        return format!("nbd{s}+unix:///{export}?socket={socket}");
    }
    if let Some(port) = listeners.iter().find_map(Listener::vsock_port) {
        // libnbd's form; the CID is the host's own as the kernel reports it.
        let cid = crate::vsock::local_cid().unwrap_or(2);
        return format!("nbd{s}+vsock://{cid}:{port}/{export}");
    }
    let Some(port) = listeners.iter().find_map(Listener::tcp_port) else {
        return String::new();
    };
    let host = match cfg.ipaddr.as_deref() {
        Some(h) if h.contains(':') => format!("[{h}]"),
        Some(h) => h.to_owned(),
        None => "localhost".to_owned(),
    };
    format!("nbd{s}://{host}:{port}/{export}")
}

/// Percent-encodes everything but RFC 3986 unreserved bytes and `keep`.
fn encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_forms() {
        let tcp = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = tcp.local_addr().unwrap().port();
        let ls = [Listener::Tcp(tcp)];
        let mut cfg = Config {
            ipaddr: Some("127.0.0.1".into()),
            ..Config::default()
        };
        assert_eq!(uri(&cfg, &ls), format!("nbd://127.0.0.1:{port}/"));
        cfg.export_name = "a b/ü".into();
        cfg.tls = TlsMode::Require;
        assert_eq!(
            uri(&cfg, &ls),
            format!("nbds://127.0.0.1:{port}/a%20b/%C3%BC")
        );
        cfg.ipaddr = Some("::1".into());
        assert!(uri(&cfg, &ls).starts_with("nbds://[::1]:"));
        cfg.ipaddr = None;
        assert!(uri(&cfg, &ls).starts_with("nbds://localhost:"));
        assert_eq!(uri(&cfg, &[]), "");
    }

    /// Every address a name resolves to is bound, all on the one port the
    /// kernel picked for the first, so the URI's port reaches each.
    #[test]
    fn ephemeral_port_is_shared_across_addresses() {
        let cfg = Config {
            ipaddr: Some("localhost".into()),
            port: 0,
            ..Config::default()
        };
        let (ls, _guard) = bind(&cfg).unwrap();
        assert!(!ls.is_empty());
        let port = ls[0].tcp_port().unwrap();
        assert_ne!(port, 0);
        for l in &ls {
            assert_eq!(l.tcp_port(), Some(port), "{}", l.describe());
        }
    }

    #[test]
    fn private_socket_and_directory_are_removed_by_the_guard() {
        let cfg = Config {
            unix: Some(UnixPath::Private),
            ..Config::default()
        };
        let (ls, guard) = bind(&cfg).unwrap();
        let path = ls[0].unix_path().unwrap();
        let dir = guard.private_dir().unwrap().to_path_buf();
        assert_eq!(path.parent(), Some(dir.as_path()));
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "private directory is owner-only");
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(guard);
        assert!(!path.exists() && !dir.exists());
    }

    #[test]
    fn encode_keeps_unreserved() {
        assert_eq!(encode("/tmp/a b?&=", b"/"), "/tmp/a%20b%3F%26%3D");
    }
}
