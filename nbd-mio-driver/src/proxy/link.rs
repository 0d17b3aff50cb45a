//! The upstream socket as the event loop holds it (non-blocking, in the
//! server's `mio::Poll`), and the reconnect policy.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

use super::handshake::{Peer, Stream};

/// A non-blocking upstream socket.
pub(crate) enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    /// Adopt a connected blocking stream.
    pub(crate) fn from_stream(stream: Stream) -> io::Result<Self> {
        Ok(match stream {
            Stream::Tcp(s) => {
                s.set_nonblocking(true)?;
                Self::Tcp(TcpStream::from_std(s))
            }
            Stream::Unix(s) => {
                s.set_nonblocking(true)?;
                Self::Unix(UnixStream::from_std(s))
            }
        })
    }

    /// Start a non-blocking connect: TCP completes later (see
    /// [`Sock::connected`]), a Unix socket at once or never.
    pub(crate) fn connect(peer: &Peer) -> io::Result<Self> {
        Ok(match peer {
            Peer::Tcp(addr) => {
                let s = TcpStream::connect(*addr)?;
                s.set_nodelay(true)?;
                Self::Tcp(s)
            }
            Peer::Unix(path) => Self::Unix(UnixStream::connect(path)?),
        })
    }

    /// After a writable event during connect: `Ok(true)` connected,
    /// `Ok(false)` not yet, `Err` failed (mio's documented check).
    pub(crate) fn connected(&self) -> io::Result<bool> {
        let (err, peer) = match self {
            Self::Tcp(s) => (s.take_error()?, s.peer_addr().map(|_| ())),
            Self::Unix(s) => (s.take_error()?, Ok(())),
        };
        if let Some(e) = err {
            return Err(e);
        }
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        match self {
            Self::Tcp(s) => registry.register(s, token, interest),
            Self::Unix(s) => registry.register(s, token, interest),
        }
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        let _ = match self {
            Self::Tcp(s) => registry.deregister(s),
            Self::Unix(s) => registry.deregister(s),
        };
    }

    pub(crate) fn io(&mut self) -> &mut dyn ReadWriteDyn {
        match self {
            Self::Tcp(s) => s,
            Self::Unix(s) => s,
        }
    }
}

/// Read and write as one trait object.
pub(crate) trait ReadWriteDyn: Read + Write {}
impl<T: Read + Write> ReadWriteDyn for T {}

/// First delay before reconnecting, and its cap: reconnects back off
/// exponentially but never wait longer than this between attempts.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// When to try the next connection.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    delay: Duration,
    next: Instant,
}

impl Backoff {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            delay: FIRST_BACKOFF,
            next: now,
        }
    }

    /// An attempt failed (or the link was lost): wait, longer each time.
    pub(crate) fn failed(&mut self, now: Instant) {
        self.next = now + self.delay;
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
    }

    /// A connection succeeded.
    pub(crate) fn reset(&mut self, now: Instant) {
        self.delay = FIRST_BACKOFF;
        self.next = now;
    }

    pub(crate) fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    pub(crate) fn next(&self) -> Instant {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        assert!(b.due(t0));
        let mut waits = Vec::new();
        for _ in 0..8 {
            b.failed(t0);
            waits.push(b.next() - t0);
        }
        assert_eq!(waits[0], FIRST_BACKOFF);
        assert_eq!(waits[1], FIRST_BACKOFF * 2);
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
        assert!(!b.due(t0));
        b.reset(t0);
        assert!(b.due(t0));
        b.failed(t0);
        assert_eq!(b.next() - t0, FIRST_BACKOFF);
    }
}
