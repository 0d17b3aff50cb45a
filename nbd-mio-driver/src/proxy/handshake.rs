//! Connecting to the upstream server and negotiating, blocking (at
//! start-up, and for the filtered path's reconnects), with nbd-proto's
//! [`Connection`] doing the protocol.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nbd_proto::client::{CLIENT_TRANSMIT_MAX, ClientConfig, ClientNegotiated, Connection, Event};
use nbd_proto::wire::option::Info;

use super::uri::{Address, Target};

/// A connected upstream socket, before it is made non-blocking.
pub enum Stream {
    /// TCP (Nagle disabled: requests are small and latency-bound).
    Tcp(TcpStream),
    /// Unix domain.
    Unix(UnixStream),
}

impl Stream {
    /// The socket as a byte stream.
    pub(super) fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Self::Tcp(s) => s,
            Self::Unix(s) => s,
        }
    }

    /// Bound blocking reads and writes (`None`: wait forever).
    pub(super) fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Self::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }

    /// Close both directions (best effort): a dead upstream is not reused.
    pub(super) fn shutdown(&self) {
        let _ = match self {
            Self::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Self::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

/// Read and write, as one trait object.
pub(super) trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Where to reconnect: the address resolved at the first connection (a
/// reconnect never blocks on DNS), and the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix-domain socket path.
    Unix(PathBuf),
}

/// What negotiation produced.
pub struct Opened {
    /// The socket, positioned at the start of transmission.
    pub stream: Stream,
    /// Size, flags, header mode, block sizes, `base:allocation` id.
    pub negotiated: ClientNegotiated,
    /// The upstream's `NBD_INFO_DESCRIPTION`, if it sent one.
    pub description: Option<String>,
    /// The address actually connected to.
    pub peer: Peer,
}

/// A negotiation that does not finish in this time is a dead upstream.
pub const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(30);

fn proto(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("negotiation: {e}"))
}

/// What the proxy asks every upstream for: structured replies and
/// `base:allocation` with `NBD_OPT_GO` (nbd-proto falls back to
/// `NBD_OPT_EXPORT_NAME` and simple replies on old servers).
pub fn client_config(export: &str) -> ClientConfig<'_> {
    ClientConfig {
        export,
        structured_replies: true,
        base_allocation: true,
        ..ClientConfig::default()
    }
}

/// Connect to `target` once and negotiate.
///
/// # Errors
///
/// Connection errors, and an upstream that refuses the export or breaks
/// the protocol.
pub fn open(target: &Target) -> io::Result<Opened> {
    let peer = match &target.address {
        Address::Tcp(host, port) => {
            let addr = (host.as_str(), *port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| io::Error::other(format!("{host}: no address")))?;
            Peer::Tcp(addr)
        }
        Address::Unix(path) => Peer::Unix(path.clone()),
    };
    open_peer(&peer, &target.export, NEGOTIATION_TIMEOUT)
}

/// Connect to `target`, retrying once a second for up to `retry` after a
/// failure (nbdkit's `retry=`: the upstream may start after nbdd).
///
/// # Errors
///
/// The last attempt's error.
pub fn open_with_retry(target: &Target, retry: Duration) -> io::Result<Opened> {
    let deadline = Instant::now() + retry;
    loop {
        match open(target) {
            Ok(o) => return Ok(o),
            Err(e) if Instant::now() + Duration::from_secs(1) > deadline => return Err(e),
            Err(e) => {
                log::info!("nbd proxy: upstream not ready ({e}); retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Connect to a resolved `peer` and negotiate `export`, every read and
/// write bounded by `timeout`.
///
/// # Errors
///
/// As [`open`].
pub fn open_peer(peer: &Peer, export: &str, timeout: Duration) -> io::Result<Opened> {
    let stream = match peer {
        Peer::Tcp(addr) => {
            let s = TcpStream::connect_timeout(addr, timeout)?;
            s.set_nodelay(true)?;
            Stream::Tcp(s)
        }
        Peer::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
    };
    stream.set_timeouts(Some(timeout))?;
    let (stream, negotiated, description) = negotiate(stream, export)?;
    Ok(Opened {
        stream,
        negotiated,
        description,
        peer: peer.clone(),
    })
}

/// Run negotiation on a connected blocking `stream`.
fn negotiate(
    mut stream: Stream,
    export: &str,
) -> io::Result<(Stream, ClientNegotiated, Option<String>)> {
    let mut conn = Connection::<1>::new(&client_config(export)).map_err(proto)?;
    let mut out = vec![0u8; CLIENT_TRANSMIT_MAX];
    let mut input: Vec<u8> = Vec::with_capacity(4096);
    let mut description = None;
    let io = stream.io();
    let negotiated = loop {
        let (used, event) = conn.handle_input(&input).map_err(proto)?;
        let mut ready = None;
        let mut need = false;
        match event {
            Event::Transmit => {
                let n = conn.poll_transmit(&mut out).map_err(proto)?;
                io.write_all(out.get(..n).unwrap_or_default())?;
            }
            Event::NeedInput { .. } => need = true,
            Event::Info(Info::Description(d)) => description = Some(d.to_owned()),
            Event::Refused {
                option, message, ..
            } => log::debug!("nbd proxy: upstream refused {option:?}: {message}"),
            Event::Ready(n) => ready = Some(n),
            Event::StartTls(_) | Event::TlsPending => return Err(proto("unexpected STARTTLS")),
            _ => {}
        }
        input.drain(..used);
        if let Some(n) = ready {
            break n;
        }
        if need {
            let mut chunk = [0u8; 4096];
            match io.read(&mut chunk)? {
                0 => return Err(proto("upstream closed the connection")),
                n => input.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
    };
    if !input.is_empty() {
        return Err(proto("upstream sent data before the first request"));
    }
    Ok((stream, negotiated, description))
}

/// How a reconnected upstream must match the one the export was
/// advertised with: same size (clients sized their I/O by it). Flags may
/// differ; the op mapping follows the new ones.
///
/// # Errors
///
/// A one-line reason.
pub fn check_same(first: &ClientNegotiated, now: &ClientNegotiated) -> Result<(), String> {
    if first.size == now.size {
        Ok(())
    } else {
        Err(format!(
            "upstream size changed from {} to {} bytes",
            first.size, now.size
        ))
    }
}
