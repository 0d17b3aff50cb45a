//! Connecting to the upstream server and negotiating, blocking: this runs
//! once, at start-up, before the event loop exists.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nbd_proto::client::{
    CLIENT_TRANSMIT_MAX, ClientConfig, ClientEvent, ClientHandshake, ClientNegotiated,
};
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

/// What negotiation produced.
pub struct Opened {
    /// The socket, positioned at the start of transmission.
    pub stream: Stream,
    /// Size, flags, header mode, block sizes, `base:allocation` id.
    pub negotiated: ClientNegotiated,
    /// The upstream's `NBD_INFO_DESCRIPTION`, if it sent one.
    pub description: Option<String>,
}

/// A negotiation that does not finish in this time is a dead upstream.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(30);

fn proto(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("negotiation: {e}"))
}

/// Connect to `target` and negotiate structured replies and
/// `base:allocation` with `NBD_OPT_GO` (the client state machine falls
/// back to `NBD_OPT_EXPORT_NAME` and simple replies on old servers).
///
/// # Errors
///
/// Connection errors, and an upstream that refuses the export or breaks
/// the protocol.
pub fn open(target: &Target) -> io::Result<Opened> {
    let mut stream = match &target.address {
        Address::Tcp(host, port) => {
            let s = TcpStream::connect((host.as_str(), *port))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(NEGOTIATION_TIMEOUT))?;
            Stream::Tcp(s)
        }
        Address::Unix(path) => {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(Some(NEGOTIATION_TIMEOUT))?;
            Stream::Unix(s)
        }
    };
    let mut hs = ClientHandshake::new(ClientConfig {
        export: &target.export,
        structured_replies: true,
        base_allocation: true,
        ..ClientConfig::default()
    });
    let mut out = vec![0u8; CLIENT_TRANSMIT_MAX];
    let mut input: Vec<u8> = Vec::with_capacity(4096);
    let mut description = None;
    let io = stream.io();
    let negotiated = loop {
        if let Some(n) = hs.negotiated() {
            break n;
        }
        if hs.wants_write() {
            let n = hs.poll_transmit(&mut out).map_err(proto)?;
            io.write_all(out.get(..n).unwrap_or_default())?;
            continue;
        }
        let (used, event) = hs.handle_input(&input).map_err(proto)?;
        let progressed = used > 0 || event.is_some();
        match event {
            Some(ClientEvent::Info(Info::Description(d))) => description = Some(d.to_owned()),
            Some(ClientEvent::StartTls) => return Err(proto("unexpected STARTTLS")),
            Some(ClientEvent::Refused {
                option, message, ..
            }) => log::debug!("nbd proxy: upstream refused {option:?}: {message}"),
            _ => {}
        }
        input.drain(..used);
        if !progressed {
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
    Ok(Opened {
        stream,
        negotiated,
        description,
    })
}
