//! [`Connection`]: one client connection from the server's first byte to
//! `NBD_CMD_DISC`, negotiation and transmission in one value.

use crate::error::{BufferTooSmall, ProtocolError};
use crate::flags::CmdFlags;
use crate::types::{Command, Cookie, HeaderMode};
use crate::wire::MAX_STRING_LEN;
use crate::wire::request::{Request, RequestHeader};

use super::event::{Event, ReplyError, TlsStart};
use super::handshake::Negotiation;
use super::receive::{Receiver, Step};
use super::request::{Cmd, RequestError, Sent, validate};
use super::table::Table;
use super::{ClientConfig, ClientEvent, ClientNegotiated};

/// Default bound on a reply chunk that is not READ data (block status,
/// error messages): 2^20 extents in extended layout (the most a server
/// SHOULD send in one chunk) plus the chunk's fixed fields.
pub const DEFAULT_MAX_CHUNK: u32 = (1 << 24) + 8;

/// [`Connection::new`] could not use the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The export name is longer than the spec's 4096 bytes.
    #[error("export name longer than 4096 bytes")]
    ExportNameTooLong,
}

/// The export name, copied so the connection borrows nothing.
#[derive(Clone)]
struct ExportName {
    buf: [u8; MAX_STRING_LEN],
    len: usize,
}

impl ExportName {
    fn new(name: &str) -> Result<Self, ConfigError> {
        let mut buf = [0u8; MAX_STRING_LEN];
        buf.get_mut(..name.len())
            .ok_or(ConfigError::ExportNameTooLong)?
            .copy_from_slice(name.as_bytes());
        Ok(Self {
            buf,
            len: name.len(),
        })
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

impl core::fmt::Debug for ExportName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.as_str().fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Negotiating,
    Transmission,
    /// `NBD_CMD_DISC` sent: replies still arrive, no request may follow.
    Disconnecting,
    /// The transport ended or a protocol error happened: requests in
    /// flight are reported as lost, then [`Event::Closed`].
    Lost,
    Closed,
}

/// One NBD client connection: negotiation (oldstyle, fixed and non-fixed
/// newstyle, STARTTLS, LIST, GO/EXPORT_NAME, structured replies, extended
/// headers, `base:allocation`), then transmission with up to `N`
/// requests in flight, READ reassembly and block-status decoding.
///
/// Sans-IO: it never touches a socket. The caller moves bytes:
/// - [`Connection::handle_input`] takes received bytes and returns how
///   many it consumed and one [`Event`] naming what to do next;
/// - [`Connection::poll_transmit`] writes negotiation messages;
/// - [`Connection::encode_request`] writes a request and returns its
///   cookie and table slot.
///
/// The table of requests in flight has `N` slots (a const generic: no
/// allocation); cookies are chosen by the connection. See the crate
/// documentation for the run loop, and `examples/blocking_client.rs`.
#[derive(Debug, Clone)]
pub struct Connection<const N: usize = 64> {
    hs: Negotiation,
    export: ExportName,
    phase: Phase,
    neg: Option<ClientNegotiated>,
    table: Table<N>,
    rx: Receiver,
}

impl<const N: usize> Connection<N> {
    /// A connection that will negotiate as `cfg` says; the server speaks
    /// first, so start by reading. Strings in `cfg` are copied.
    ///
    /// # Errors
    /// [`ConfigError`] when the export name is over 4096 bytes.
    pub fn new(cfg: &ClientConfig<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            hs: Negotiation::new(cfg),
            export: ExportName::new(cfg.export)?,
            phase: Phase::Negotiating,
            neg: None,
            table: Table::new(),
            rx: Receiver::new(HeaderMode::Simple, None, u64::from(DEFAULT_MAX_CHUNK)),
        })
    }

    /// A connection whose negotiation was done elsewhere (by a
    /// [`ClientHandshake`](super::ClientHandshake), or by another `Connection` whose
    /// transport was handed over): it starts in transmission with `neg`.
    #[must_use]
    pub fn from_negotiated(neg: ClientNegotiated) -> Self {
        let mut hs = Negotiation::new(&ClientConfig::default());
        hs.finish_external(neg);
        Self {
            hs,
            export: ExportName {
                buf: [0u8; MAX_STRING_LEN],
                len: 0,
            },
            phase: Phase::Transmission,
            neg: Some(neg),
            table: Table::new(),
            rx: Receiver::new(neg.mode, neg.base_allocation, u64::from(DEFAULT_MAX_CHUNK)),
        }
    }

    /// Bound the length of a reply chunk that is not READ data (block
    /// status, error chunks); a longer one is a [`ProtocolError`]. READ
    /// data is streamed and never counts against it. Default
    /// [`DEFAULT_MAX_CHUNK`].
    pub fn set_max_chunk_len(&mut self, max: u32) {
        self.rx.set_max_chunk(u64::from(max));
    }

    /// What negotiation produced, once [`Event::Ready`] was reported.
    #[must_use]
    pub fn negotiated(&self) -> Option<&ClientNegotiated> {
        self.neg.as_ref()
    }

    /// Requests sent whose reply is not complete.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.table.busy()
    }

    /// The size of the in-flight table (`N`).
    #[must_use]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// True when [`Connection::encode_request`] may be called: negotiation
    /// is over, no DISC was sent and a slot is free.
    #[must_use]
    pub fn can_send(&self) -> bool {
        self.phase == Phase::Transmission && !self.table.is_full()
    }

    /// True once [`Event::Closed`] has been reported.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// True when bytes from the server are expected (a negotiation reply,
    /// or a reply to a request in flight).
    #[must_use]
    pub fn wants_read(&self) -> bool {
        match self.phase {
            Phase::Negotiating => self.hs.wants_read(),
            Phase::Transmission | Phase::Disconnecting => {
                self.table.busy() > 0 || !self.rx.is_idle()
            }
            Phase::Lost | Phase::Closed => false,
        }
    }

    /// True when [`Connection::poll_transmit`] has a negotiation message.
    #[must_use]
    pub fn wants_write(&self) -> bool {
        self.phase == Phase::Negotiating && self.hs.wants_write()
    }

    /// Write the next negotiation message into `out` (client flags, an
    /// option); 0 when there is none. Call it after every
    /// [`Event::Transmit`]; a buffer of [`CLIENT_TRANSMIT_MAX`](super::CLIENT_TRANSMIT_MAX)
    /// bytes always suffices. Requests are written by
    /// [`Connection::encode_request`] instead.
    ///
    /// # Errors
    /// [`BufferTooSmall`] with the size needed; nothing changes then.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        match self.phase {
            Phase::Negotiating => self.hs.poll_transmit(self.export.as_str(), out),
            _ => Ok(0),
        }
    }

    /// The TLS handshake that [`Event::StartTls`] asked for is complete:
    /// from now on feed decrypted bytes. Negotiation starts over, as the
    /// spec requires (digest note 17).
    pub fn handle_tls_established(&mut self, started: TlsStart) {
        let TlsStart { _private: () } = started;
        self.hs.handle_tls_established();
    }

    /// The transport ended (EOF, reset, TLS failure) or the caller gave up
    /// on it. Requests in flight are then reported one by one as
    /// [`Event::Done`] with [`ReplyError::Disconnected`], then
    /// [`Event::Closed`].
    pub fn handle_eof(&mut self) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Lost;
            self.rx.reset();
        }
    }

    /// Feed bytes received from the server (after TLS, the plaintext).
    /// Returns how many bytes of `input` were consumed, and one event.
    ///
    /// Call it again after acting on the event, with the unconsumed bytes
    /// first, until it returns [`Event::NeedInput`] (read more),
    /// [`Event::Transmit`] (send first), [`Event::Idle`] (send a request),
    /// [`Event::StartTls`] / [`Event::TlsPending`] (do TLS) or
    /// [`Event::Closed`].
    ///
    /// # Errors
    /// A [`ProtocolError`] means the server broke the protocol (bad magic,
    /// a reply for an unknown cookie, a chunk outside its READ) or refused
    /// something the configuration requires: close the transport. The
    /// requests in flight are then reported lost by later calls, as after
    /// [`Connection::handle_eof`].
    pub fn handle_input<'i>(
        &mut self,
        input: &'i [u8],
    ) -> Result<(usize, Event<'i>), ProtocolError> {
        let r = match self.phase {
            Phase::Negotiating => self.negotiate(input),
            Phase::Transmission | Phase::Disconnecting => self.receive(input),
            Phase::Lost => Ok((0, self.drain_lost())),
            Phase::Closed => Ok((0, Event::Closed)),
        };
        if r.is_err() {
            self.handle_eof();
        }
        r
    }

    fn negotiate<'i>(&mut self, input: &'i [u8]) -> Result<(usize, Event<'i>), ProtocolError> {
        let mut pos = 0;
        loop {
            if self.hs.tls_pending() {
                return Ok((pos, Event::TlsPending));
            }
            if self.hs.wants_write() {
                return Ok((pos, Event::Transmit));
            }
            let rest = input.get(pos..).unwrap_or_default();
            let (n, ev) = self.hs.handle_input(rest)?;
            pos += n;
            let ev = match ev {
                None if n == 0 => Event::NeedInput {
                    needed: self.hs.needed(rest).max(rest.len() + 1),
                },
                None => continue,
                Some(ev) => self.negotiation_event(ev),
            };
            return Ok((pos, ev));
        }
    }

    fn negotiation_event<'i>(&mut self, ev: ClientEvent<'i>) -> Event<'i> {
        match ev {
            ClientEvent::StartTls => Event::StartTls(TlsStart { _private: () }),
            ClientEvent::ListEntry { name, description } => Event::ListEntry { name, description },
            ClientEvent::Info(i) => Event::Info(i),
            ClientEvent::MetaContext { id, name } => Event::MetaContext { id, name },
            ClientEvent::Refused {
                option,
                reply,
                message,
            } => Event::Refused {
                option,
                reply,
                message,
            },
            ClientEvent::Ready(neg) => {
                self.neg = Some(neg);
                self.rx = Receiver::new(neg.mode, neg.base_allocation, self.rx_max());
                self.phase = Phase::Transmission;
                Event::Ready(neg)
            }
        }
    }

    fn rx_max(&self) -> u64 {
        self.rx.max_chunk()
    }

    fn receive<'i>(&mut self, input: &'i [u8]) -> Result<(usize, Event<'i>), ProtocolError> {
        let mut pos = 0;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            if self.rx.is_idle() && self.table.busy() == 0 {
                if self.phase == Phase::Disconnecting {
                    self.phase = Phase::Closed;
                    return Ok((pos, Event::Closed));
                }
                if rest.is_empty() {
                    return Ok((pos, Event::Idle));
                }
                // Bytes with nothing in flight: decoding them reports the
                // unknown cookie.
            }
            match self.rx.step(&mut self.table, rest)? {
                Step::Need(n) => return Ok((pos, Event::NeedInput { needed: n.max(1) })),
                Step::Skip(n) => pos += n,
                Step::Event(n, ev) => return Ok((pos + n, ev)),
            }
        }
    }

    fn drain_lost<'i>(&mut self) -> Event<'i> {
        let Some(idx) = self.table.any_busy() else {
            self.phase = Phase::Closed;
            return Event::Closed;
        };
        match self.table.remove(idx) {
            Some(s) => Event::Done(super::Done {
                cookie: s.cookie,
                slot: idx as usize,
                command: s.command,
                result: Err(ReplyError::Disconnected),
            }),
            None => Event::Closed,
        }
    }

    /// Check `cmd` against what was negotiated, give it a cookie and a
    /// slot, and write it (header, then a WRITE's data) into `out`.
    ///
    /// In extended mode a WRITE gets `NBD_CMD_FLAG_PAYLOAD_LEN`. After
    /// [`Cmd::disconnect`] no request may follow; replies to those in
    /// flight still arrive, then [`Event::Closed`].
    ///
    /// # Errors
    /// [`RequestError`] says why nothing was sent: not negotiated yet,
    /// closed, table full, a command or flag the server did not
    /// advertise, a bad range, or an `out` shorter than
    /// `RequestError::BufferTooSmall { required }`.
    pub fn encode_request(&mut self, cmd: &Cmd<'_>, out: &mut [u8]) -> Result<Sent, RequestError> {
        let neg = match (self.phase, self.neg) {
            (Phase::Transmission, Some(n)) => n,
            (Phase::Negotiating, _) => return Err(RequestError::NotReady),
            _ => return Err(RequestError::Closed),
        };
        validate(cmd, &neg)?;
        let mut flags = cmd.flags;
        if neg.mode == HeaderMode::Extended && cmd.command == Command::Write {
            flags |= CmdFlags::PAYLOAD_LEN;
        }
        let required = neg.mode.request_header_len() + cmd.data.len();
        if out.len() < required {
            return Err(RequestError::BufferTooSmall { required });
        }
        let disc = cmd.command == Command::Disc;
        let slot = if disc {
            None
        } else {
            Some(
                self.table
                    .insert(cmd.command, cmd.offset, cmd.len)
                    .ok_or(RequestError::Busy)?,
            )
        };
        let cookie = slot
            .and_then(|i| self.table.get(i))
            .map_or(Cookie(u64::MAX), |s| s.cookie);
        let req = Request {
            header: RequestHeader {
                flags,
                command: cmd.command,
                cookie,
                offset: cmd.offset,
                len: cmd.len,
            },
            data: cmd.data,
        };
        let len = match req.encode(neg.mode, out) {
            Ok(n) => n,
            Err(e) => {
                // Unreachable after the size check; never leak the slot.
                if let Some(i) = slot {
                    let _ = self.table.remove(i);
                }
                return Err(e.into());
            }
        };
        if disc {
            self.phase = Phase::Disconnecting;
        }
        Ok(Sent {
            cookie,
            slot: slot.map(|i| i as usize),
            len,
        })
    }
}
