//! One client connection: its socket, buffers, optional TLS session and
//! protocol phase. The server calls [`Conn::on_readable`],
//! [`Conn::process`] and [`Conn::on_writable`]; the connection never blocks.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use nbd_backends::{Backend, Caps, Export, ExportSet};
use nbd_proto::server::{
    BlockSizes, ExportInfo, ExportQuery, Handshake, HandshakeConfig, HandshakeEvent, Incoming,
    Negotiated, Transmission, TransmissionConfig,
};
use nbd_proto::wire::handshake::Greeting;
use nbd_proto::{OptReplyType, TransmissionFlags};

use crate::buffer::{Buf, ReadEnd};
use crate::dispatch::{self, Executed, Shared};
use crate::listen::Stream;
use crate::tls::{TlsServerConfig, TlsSession};

/// Contexts offered to SET/LIST_META_CONTEXT; ID = index + 1.
pub const META_CONTEXTS: &[&str] = &["base:allocation"];
/// Stop reading requests while this much output is queued (back-pressure).
const OUTPUT_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Most requests on the pool per connection.
const MAX_QUEUED: usize = 64;
/// Most requests handled per connection per wake-up, for fairness.
pub const BUDGET: usize = 64;
/// Most ciphertext queued for the socket before encryption pauses (a few
/// TLS records; the rest of the output waits as plaintext in `wbuf`).
const TLS_OUT_LIMIT: usize = 256 * 1024;
/// Initial buffer sizes.
const BUF_INITIAL: usize = 16 * 1024;
/// Most bytes read from the socket per pass when no larger frame is
/// pending: enough to batch many pipelined requests per wake-up. The input
/// buffer grows to it only under load; idle clients keep BUF_INITIAL.
const READ_BATCH: usize = 128 * 1024;
/// Room kept free in the output for one handshake answer (replies to INFO
/// with a 4 KiB name and a 4 KiB description fit).
const HANDSHAKE_ROOM: usize = 9 * 1024;

enum Phase {
    Handshake(Box<Handshake>),
    Transmission {
        t: Transmission,
        export: Arc<dyn nbd_backends::Backend>,
    },
}

/// What the server needs to know after processing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// More input is buffered but the budget ran out: process again soon.
    pub more: bool,
    /// The connection is finished; drop it once the output is flushed.
    pub closing: bool,
}

/// Configuration shared by every connection.
pub struct ConnConfig {
    /// Exports.
    pub exports: Arc<ExportSet>,
    /// Negotiation limits and TLS policy.
    pub handshake: HandshakeConfig,
    /// TLS credentials (when the policy is not off).
    pub tls: Option<Arc<TlsServerConfig>>,
    /// Serve oldstyle (no negotiation; the default export).
    pub oldstyle: bool,
}

/// One connection.
pub struct Conn {
    /// Unique id (slab keys are reused, ids are not).
    pub id: u64,
    /// Peer, for logs.
    pub peer: String,
    /// The socket.
    pub stream: Stream,
    rbuf: Buf,
    wbuf: Buf,
    /// Ciphertext (or pre-TLS plaintext) waiting for the socket.
    tls_out: Buf,
    tls: Option<Box<dyn TlsSession>>,
    phase: Phase,
    /// The export chosen by GO / EXPORT_NAME.
    chosen: Option<Arc<dyn Backend>>,
    /// Jobs on the pool.
    pub queued: usize,
    eof: bool,
    /// The last read saw `WouldBlock` (or EOF). mio is edge-triggered: when
    /// a read stopped at the buffer limit instead, no new event will come
    /// for the bytes still in the socket, so the server must read again
    /// once there is room.
    drained: bool,
    closing: bool,
    shutting_down: bool,
    /// The negotiation must end by then.
    pub deadline: Option<Instant>,
}

fn export_info<'a>(e: &'a Export) -> ExportInfo<'a> {
    let b = &e.backend;
    let caps = b.caps();
    let mut f = TransmissionFlags::SEND_WRITE_ZEROES
        | TransmissionFlags::SEND_FAST_ZERO
        | TransmissionFlags::SEND_CACHE;
    for (cap, flag) in [
        (Caps::READ_ONLY, TransmissionFlags::READ_ONLY),
        (Caps::FLUSH, TransmissionFlags::SEND_FLUSH),
        (Caps::FUA, TransmissionFlags::SEND_FUA),
        (Caps::TRIM, TransmissionFlags::SEND_TRIM),
        (Caps::MULTI_CONN, TransmissionFlags::CAN_MULTI_CONN),
        (Caps::ROTATIONAL, TransmissionFlags::ROTATIONAL),
        (Caps::RESIZE, TransmissionFlags::SEND_RESIZE),
    ] {
        if caps.contains(cap) {
            f |= flag;
        }
    }
    if caps.contains(Caps::READ_ONLY) {
        f.remove(TransmissionFlags::SEND_RESIZE);
    }
    let block_sizes = b.block_size().map(|s| BlockSizes {
        minimum: s.minimum,
        preferred: s.preferred,
        maximum: s.maximum,
    });
    ExportInfo {
        size: b.size(),
        flags: f,
        name: &e.name,
        description: clip(
            e.description.as_deref().unwrap_or(""),
            nbd_proto::wire::MAX_STRING_LEN,
        ),
        block_sizes: block_sizes.filter(BlockSizes::is_valid),
    }
}

impl Conn {
    /// A new connection; the greeting is queued at once.
    pub fn new(
        id: u64,
        peer: String,
        stream: Stream,
        cfg: &ConnConfig,
        deadline: Option<Instant>,
    ) -> Self {
        let mut wbuf = Buf::with_capacity(BUF_INITIAL);
        let phase = if cfg.oldstyle {
            match cfg.exports.default_export() {
                Some(e) => {
                    let info = export_info(e);
                    let neg = Negotiated::oldstyle(info.size, info.flags);
                    let g = Greeting::Oldstyle {
                        size: neg.size,
                        flags: neg.flags,
                    };
                    let n = g.encode(wbuf.spare(g.encoded_len())).unwrap_or(0);
                    wbuf.commit(n);
                    Phase::Transmission {
                        t: Transmission::new(neg, TransmissionConfig::default()),
                        export: Arc::clone(&e.backend),
                    }
                }
                None => Phase::Handshake(Box::new(Handshake::new(cfg.handshake))),
            }
        } else {
            Phase::Handshake(Box::new(Handshake::new(cfg.handshake)))
        };
        Self {
            id,
            peer,
            stream,
            rbuf: Buf::with_capacity(BUF_INITIAL),
            wbuf,
            tls_out: Buf::default(),
            tls: None,
            phase,
            chosen: None,
            queued: 0,
            eof: false,
            drained: true,
            closing: false,
            shutting_down: false,
            deadline: if cfg.oldstyle { None } else { deadline },
        }
    }

    /// True when the socket should be polled for reading.
    pub fn wants_read(&self) -> bool {
        if self.closing || self.eof {
            return false;
        }
        match &self.phase {
            Phase::Handshake(hs) => {
                hs.wants_read() || self.tls.as_ref().is_some_and(|t| t.is_handshaking())
            }
            Phase::Transmission { t, .. } => {
                t.wants_read() && self.wbuf.len() < OUTPUT_HIGH_WATER && self.queued < MAX_QUEUED
            }
        }
    }

    /// True when bytes may be waiting in the socket that no event will
    /// announce (see `drained`) and there is room to take them now.
    pub fn should_read_again(&self) -> bool {
        !self.drained && self.wants_read()
    }

    /// True when processing more input now would not overfill the output
    /// (otherwise the next writable event resumes it).
    pub fn has_output_room(&self) -> bool {
        self.wbuf.len() < OUTPUT_HIGH_WATER
    }

    /// True when output is waiting.
    pub fn wants_write(&self) -> bool {
        !self.wbuf.is_empty()
            || !self.tls_out.is_empty()
            || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// True when the connection is done and its output is flushed.
    pub fn finished(&self) -> bool {
        let done = self.closing || (self.eof && self.queued == 0);
        done && self.queued == 0 && !self.wants_write()
    }

    /// Begin a graceful shutdown: refuse further options; answer buffered
    /// requests with ESHUTDOWN once in-flight ones finish.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        if let Phase::Handshake(hs) = &mut self.phase {
            hs.begin_shutdown();
        }
    }

    /// Read what the socket has (through TLS if active).
    pub fn on_readable(&mut self) -> io::Result<()> {
        let limit = self.read_limit();
        self.drained = false;
        match &mut self.tls {
            None => {
                match self.rbuf.read_from(&mut self.stream, limit)? {
                    ReadEnd::Eof => {
                        self.eof = true;
                        self.drained = true;
                    }
                    ReadEnd::WouldBlock => self.drained = true,
                    // Bytes may remain in the socket (see `drained`).
                    ReadEnd::Limit => {}
                }
            }
            Some(tls) => {
                let mut raw = [0u8; 16 * 1024];
                loop {
                    match self.stream.read(&mut raw) {
                        Ok(0) => {
                            self.eof = true;
                            self.drained = true;
                            break;
                        }
                        Ok(n) => feed_all(tls.as_mut(), &raw[..n], &mut self.rbuf)?,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.drained = true;
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                    if self.rbuf.len() >= limit {
                        break;
                    }
                }
                if tls.peer_closed() {
                    self.eof = true;
                }
            }
        }
        Ok(())
    }

    /// How much input to buffer: a whole request frame (a WRITE payload is
    /// parsed in place), and never more than the maximum payload plus a header.
    fn read_limit(&self) -> usize {
        match &self.phase {
            Phase::Handshake(_) => 16 + 64 * 1024 + 64 * 1024,
            Phase::Transmission { t, .. } => t.needed(self.rbuf.filled()).max(READ_BATCH),
        }
    }

    /// Write queued output until the socket would block.
    pub fn on_writable(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            // Encrypt only while little ciphertext waits for the socket:
            // output the peer is not reading must stay in `wbuf`, where
            // OUTPUT_HIGH_WATER stops reading new requests. Encrypting all
            // of it at once let a client that never reads make us buffer
            // without bound (256 MiB for 256 pipelined 1 MiB READs).
            loop {
                drain_ciphertext(tls.as_mut(), &mut self.tls_out)?;
                self.tls_out.write_to(&mut self.stream)?;
                if self.wbuf.is_empty() || self.tls_out.len() >= TLS_OUT_LIMIT {
                    break;
                }
                let n = tls.write_plaintext(self.wbuf.filled())?;
                if n == 0 {
                    break;
                }
                self.wbuf.consume(n);
            }
        } else {
            // Bytes queued before TLS started (the STARTTLS ACK) go first.
            self.tls_out.write_to(&mut self.stream)?;
            if self.tls_out.is_empty() {
                self.wbuf.write_to(&mut self.stream)?;
            }
        }
        if self.wbuf.is_empty() {
            self.wbuf.shrink_if_idle(BUF_INITIAL, OUTPUT_HIGH_WATER * 2);
        }
        Ok(())
    }

    /// Run the protocol over buffered input.
    pub fn process(
        &mut self,
        cfg: &ConnConfig,
        shared: &mut Shared,
        token: usize,
    ) -> io::Result<Status> {
        let mut status = Status::default();
        if let Phase::Handshake(_) = self.phase {
            self.process_handshake(cfg)?;
        }
        if let Phase::Transmission { .. } = self.phase {
            self.deadline = None;
            status.more = self.process_requests(shared, token)?;
            // Checklist 112: once shutting down, a connection with nothing
            // in flight, nothing buffered and a drained socket is done; close
            // it as soon as its replies are out rather than at the end of
            // the shutdown grace period.
            if self.shutting_down && self.queued == 0 && self.rbuf.is_empty() && self.drained {
                self.closing = true;
            }
        }
        if self.eof && self.rbuf.is_empty() {
            // The client went away (or closed after DISC): finish what is
            // in flight, then close.
            if self.queued == 0 {
                self.closing = true;
            }
        }
        // A large WRITE grew the input buffer; give it back once idle.
        self.rbuf.shrink_if_idle(BUF_INITIAL, OUTPUT_HIGH_WATER * 2);
        status.closing = self.closing;
        Ok(status)
    }

    fn process_handshake(&mut self, cfg: &ConnConfig) -> io::Result<()> {
        let Phase::Handshake(hs) = &mut self.phase else {
            return Ok(());
        };
        if self.tls.as_ref().is_some_and(|t| !t.is_handshaking()) && !hs.tls_active() {
            hs.handle_tls_established();
        }
        loop {
            let n = hs.poll_transmit(self.wbuf.spare(HANDSHAKE_ROOM));
            self.wbuf.commit(n);
            if hs.is_closed() {
                self.closing = true;
                return Ok(());
            }
            let (consumed, event) = hs.handle_input(self.rbuf.filled()).map_err(proto_err)?;
            let mut start_tls = false;
            let had_event = event.is_some();
            match event {
                Some(HandshakeEvent::Export(q)) => {
                    if let Some(b) = answer_export(hs, cfg, &q, &mut self.wbuf) {
                        self.chosen = Some(b);
                    }
                }
                Some(HandshakeEvent::List) => {
                    for e in cfg.exports.list() {
                        let desc = e.description.as_deref().unwrap_or("");
                        let room = 20 + 4 + e.name.len() + desc.len();
                        let n = hs
                            .answer_list_entry(&e.name, desc, self.wbuf.spare(room))
                            .unwrap_or(0);
                        self.wbuf.commit(n);
                    }
                    let n = hs.finish_list(self.wbuf.spare(64)).unwrap_or(0);
                    self.wbuf.commit(n);
                }
                Some(HandshakeEvent::MetaContexts(q)) => {
                    let n = hs
                        .answer_meta_contexts(&q, META_CONTEXTS, self.wbuf.spare(HANDSHAKE_ROOM))
                        .unwrap_or(0);
                    self.wbuf.commit(n);
                }
                Some(HandshakeEvent::StartTls) => start_tls = true,
                Some(_) | None => {}
            }
            self.rbuf.consume(consumed);
            if start_tls {
                let n = hs.poll_transmit(self.wbuf.spare(64));
                self.wbuf.commit(n);
                let Some(tls_cfg) = &cfg.tls else {
                    return Err(io::Error::other(
                        "STARTTLS accepted without TLS credentials",
                    ));
                };
                // The ACK leaves in plaintext; everything after it is TLS.
                let ack = std::mem::take(&mut self.wbuf);
                self.tls_out.extend(ack.filled());
                self.wbuf = Buf::with_capacity(BUF_INITIAL);
                let mut session = tls_cfg.new_session()?;
                // Bytes already read past the option are the ClientHello.
                let early = std::mem::take(&mut self.rbuf);
                self.rbuf = Buf::with_capacity(BUF_INITIAL);
                feed_all(session.as_mut(), early.filled(), &mut self.rbuf)?;
                drain_ciphertext(session.as_mut(), &mut self.tls_out)?;
                self.tls = Some(session);
                return Ok(());
            }
            if let Some(neg) = hs.negotiated() {
                let Some(export) = self.chosen.take() else {
                    return Err(io::Error::other("negotiated without an export"));
                };
                self.phase = Phase::Transmission {
                    t: Transmission::new(neg, TransmissionConfig::default()),
                    export,
                };
                return Ok(());
            }
            if consumed == 0 && !had_event {
                return Ok(());
            }
        }
    }

    /// Returns true when input remains but the budget ran out.
    fn process_requests(&mut self, shared: &mut Shared, token: usize) -> io::Result<bool> {
        let Phase::Transmission { t, export } = &mut self.phase else {
            return Ok(false);
        };
        for _ in 0..BUDGET {
            if self.wbuf.len() >= OUTPUT_HIGH_WATER || self.queued >= MAX_QUEUED {
                // Back-pressure: resume once output drains or jobs finish.
                return Ok(!self.rbuf.is_empty());
            }
            let (consumed, incoming) = t.handle_request(self.rbuf.filled()).map_err(proto_err)?;
            match incoming {
                Some(Incoming::Command(req)) => {
                    // `-v -v`: one line per request. The level check comes
                    // first, so nothing is formatted (or allocated) otherwise.
                    log::debug!(
                        "{}: {:?} cookie={:#x} offset={} len={} flags={:?}",
                        self.peer,
                        req.header.command,
                        req.header.cookie.0,
                        req.header.offset,
                        req.header.len,
                        req.header.flags
                    );
                    if self.shutting_down {
                        let to = nbd_proto::wire::reply::ReplyTo {
                            cookie: req.header.cookie,
                            offset: req.header.offset,
                        };
                        dispatch::reply_error(
                            t,
                            &mut self.wbuf,
                            to,
                            nbd_proto::ErrorCode::Shutdown,
                            "server is shutting down",
                        );
                    } else if dispatch::execute(
                        (self.id, token),
                        t,
                        &mut self.wbuf,
                        export,
                        &req,
                        shared,
                    ) == Executed::Queued
                    {
                        self.queued += 1;
                    }
                }
                Some(Incoming::Reject {
                    to,
                    command,
                    error,
                    message,
                }) => {
                    log::debug!(
                        "{}: {command:?} cookie={:#x} rejected: {error:?} ({message})",
                        self.peer,
                        to.cookie.0
                    );
                    dispatch::reply_error(t, &mut self.wbuf, to, error, message);
                }
                Some(Incoming::Disconnect) => {}
                None if consumed == 0 => {
                    if t.is_disconnecting() && t.in_flight() == 0 {
                        self.closing = true;
                    }
                    return Ok(false);
                }
                None => {}
            }
            self.rbuf.consume(consumed);
        }
        Ok(!self.rbuf.is_empty())
    }

    /// A pool job for this connection finished.
    pub fn on_job_done(&mut self, job: &mut crate::workers::Job, shared: &mut Shared) {
        self.queued = self.queued.saturating_sub(1);
        if let Phase::Transmission { t, .. } = &mut self.phase {
            dispatch::complete(t, &mut self.wbuf, job, &mut shared.descriptors);
            if t.is_disconnecting() && t.in_flight() == 0 {
                self.closing = true;
            }
        }
    }

    /// Queue TLS close_notify before closing.
    pub fn close_tls(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = drain_ciphertext(tls.as_mut(), &mut self.tls_out);
            let _ = self.tls_out.write_to(&mut self.stream);
        }
        let _ = self.stream.flush();
    }
}

/// Answer an export query; returns the backend when the query was GO or
/// EXPORT_NAME for a known export (the one transmission will use).
fn answer_export(
    hs: &mut Handshake,
    cfg: &ConnConfig,
    q: &ExportQuery<'_>,
    out: &mut Buf,
) -> Option<Arc<dyn Backend>> {
    let export = cfg.exports.get(q.name());
    let answer = match export {
        Some(e) => Ok(export_info(e)),
        None => Err(OptReplyType::ErrUnknown),
    };
    // The answer fits HANDSHAKE_ROOM for spec-sized strings; if a backend
    // still needs more, make exactly that much room rather than drop it.
    let n = match hs.answer_export(q, answer, out.spare(HANDSHAKE_ROOM)) {
        Ok(n) => n,
        Err(e) => hs
            .answer_export(q, answer, out.spare(e.required))
            .unwrap_or(0),
    };
    out.commit(n);
    match q {
        ExportQuery::Info(_) => None,
        _ => export.map(|e| Arc::clone(&e.backend)),
    }
}

/// The longest prefix of `s` within `max` bytes that ends on a character
/// boundary (NBD strings are at most 4096 bytes; a backend's description
/// may be longer).
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn proto_err(e: nbd_proto::ProtocolError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Feed ciphertext and move every decrypted byte into `plain`.
fn feed_all(tls: &mut dyn TlsSession, mut data: &[u8], plain: &mut Buf) -> io::Result<()> {
    loop {
        let n = if data.is_empty() {
            0
        } else {
            tls.feed_ciphertext(data)?
        };
        data = &data[n..];
        loop {
            let m = tls.read_plaintext(plain.spare(16 * 1024))?;
            if m == 0 {
                break;
            }
            plain.commit(m);
        }
        if data.is_empty() {
            return Ok(());
        }
        if n == 0 {
            return Err(io::Error::other("TLS session accepts no more input"));
        }
    }
}

fn drain_ciphertext(tls: &mut dyn TlsSession, out: &mut Buf) -> io::Result<()> {
    while tls.wants_write() {
        let n = tls.take_ciphertext(out.spare(32 * 1024))?;
        if n == 0 {
            break;
        }
        out.commit(n);
    }
    Ok(())
}
