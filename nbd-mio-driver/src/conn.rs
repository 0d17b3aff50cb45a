//! One client connection: its socket, buffers, optional TLS session and the
//! nbd-proto [`Connection`] that knows the protocol. The server calls
//! [`Conn::on_readable`], [`Conn::process`] and [`Conn::on_writable`]; the
//! connection never blocks.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use nbd_backends::{Backend, Caps, ClientInfo, Export, ExportSet, Peer};
use nbd_proto::server::{
    BASE_ALLOCATION, BlockSizes, Connection, ConnectionConfig, ExportInfo, ExportQuestion, Input,
    ListQuestion, QEMU_ALLOCATION_DEPTH, StartTls,
};
use nbd_proto::{OptReplyType, TransmissionFlags};

use crate::buffer::{Buf, ReadEnd};
use crate::dispatch::{self, Exec, Executed, Shared, Target, put};
use crate::inflow::Inflow;
use crate::listen::Stream;
use crate::outq::OutQueue;
use crate::tls::{TlsServerConfig, TlsSession};

/// The meta contexts nbdd knows; ID = index + 1.
pub const META_CONTEXTS: &[&str] = &[BASE_ALLOCATION, QEMU_ALLOCATION_DEPTH];
/// `META_CONTEXTS` bit of `base:allocation` (every export offers it).
pub const META_BASE: u64 = 1 << 0;
/// `META_CONTEXTS` bit of `qemu:allocation-depth` (backends with
/// `Caps::ALLOCATION_DEPTH`: qcow2 chains, the cow filter).
pub const META_DEPTH: u64 = 1 << 1;

/// The catalogue entries backend `b` offers.
fn offered_contexts(b: &dyn Backend) -> u64 {
    if b.caps().contains(Caps::ALLOCATION_DEPTH) {
        META_BASE | META_DEPTH
    } else {
        META_BASE
    }
}
/// Stop reading requests while this much output is queued (back-pressure).
pub(crate) const OUTPUT_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Most requests on the pool per connection.
pub(crate) const MAX_QUEUED: usize = 64;
/// Most requests handled per connection per wake-up, for fairness.
pub const BUDGET: usize = 64;
/// Most ciphertext queued for the socket before encryption pauses (a few
/// TLS records; the rest of the output waits as plaintext in `wbuf`).
const TLS_OUT_LIMIT: usize = 256 * 1024;
/// Initial input buffer size: an idle client costs little (issue 9: at
/// most 16 KiB per idle negotiated connection); the buffer grows under
/// load and housekeeping shrinks it back.
const BUF_INITIAL: usize = 4 * 1024;
/// Most bytes read from the socket per pass when no larger frame is
/// pending: enough to batch many pipelined requests per wake-up. The input
/// buffer grows to it only under load; idle clients keep BUF_INITIAL.
const READ_BATCH: usize = 128 * 1024;

/// What the server needs to know after processing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// More input is buffered but the budget ran out: process again soon.
    pub more: bool,
    /// The connection is finished; drop it once the output is flushed.
    pub closing: bool,
}

/// Memory limits (issue 9): when one is reached, nbdd stops reading new
/// requests (back-pressure) rather than buffer more.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Per connection: output queued plus replies and payloads in flight
    /// (`--max-connection-buffer`).
    pub connection: usize,
    /// Per event loop: the same summed over its connections (its share of
    /// `--max-memory`).
    pub per_loop: usize,
    /// Most reply bytes one negotiation may produce before it is closed (a
    /// client asking for LIST again and again).
    pub handshake_output: usize,
    /// Page-aligned WRITEs from this many bytes are received straight
    /// into pages, on backends that take them (inflow.rs).
    pub stream_writes_from: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connection: DEFAULT_CONNECTION_BUDGET,
            per_loop: usize::MAX,
            handshake_output: HANDSHAKE_OUTPUT_MAX,
            stream_writes_from: crate::inflow::STREAM_MIN,
        }
    }
}

/// Default `--max-connection-buffer`: two maximum payloads, so a client
/// always has one large request in flight while another's reply drains.
pub const DEFAULT_CONNECTION_BUDGET: usize = 128 << 20;
/// Default cap on the replies of one negotiation (a LIST of thousands of
/// exports with 4 KiB descriptions is tens of MiB).
pub const HANDSHAKE_OUTPUT_MAX: usize = 64 << 20;

/// Configuration shared by every connection.
pub struct ConnConfig {
    /// Memory limits.
    pub limits: Limits,
    /// Exports.
    pub exports: Arc<ExportSet>,
    /// Negotiation and transmission limits, TLS policy, oldstyle.
    pub proto: ConnectionConfig,
    /// TLS credentials (when the policy is not off).
    pub tls: Option<Arc<TlsServerConfig>>,
}

/// One connection.
pub struct Conn {
    /// Unique id (slab keys are reused, ids are not).
    pub id: u64,
    /// Peer, for logs.
    pub peer: String,
    /// Where the client came from, for backends' per-connection hooks.
    peer_kind: Peer,
    /// The socket.
    pub stream: Stream,
    rbuf: Buf,
    wbuf: OutQueue,
    /// Ciphertext (or pre-TLS plaintext) waiting for the socket.
    tls_out: Buf,
    tls: Option<Box<dyn TlsSession>>,
    /// The STARTTLS the TLS session answers, until its handshake is done.
    tls_pending: Option<StartTls>,
    proto: Connection,
    /// The connection's handle on its export, once negotiated, and how its
    /// requests run.
    export: Option<(Arc<dyn Backend>, Exec)>,
    /// A LIST answer in progress: the question and the next export.
    listing: Option<(ListQuestion, usize)>,
    /// Jobs on the pool.
    pub queued: usize,
    /// Bytes those jobs hold against the budget (see `Job::cost`).
    in_flight_bytes: usize,
    /// `Limits::connection`, for `wants_read`.
    budget: usize,
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
    /// Input or output since the last housekeeping pass.
    active: bool,
    /// A zero-copy WRITE being received (inflow.rs).
    inflow: Inflow,
}

/// The wire description of export `e` as served through `b` (the shared
/// backend, or a connection's own handle: a `tmpdisk` per client may
/// differ in size).
fn export_info<'a>(e: &'a Export, b: &dyn Backend) -> ExportInfo<'a> {
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
        meta_contexts: offered_contexts(b),
    }
}

impl Conn {
    /// A new connection; newstyle queues the greeting at once.
    pub fn new(
        id: u64,
        (peer, peer_kind): (String, Peer),
        stream: Stream,
        cfg: &ConnConfig,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            id,
            peer,
            peer_kind,
            stream,
            rbuf: Buf::with_capacity(BUF_INITIAL),
            wbuf: OutQueue::default(),
            tls_out: Buf::default(),
            tls: None,
            tls_pending: None,
            proto: Connection::new(&cfg.proto),
            export: None,
            listing: None,
            queued: 0,
            in_flight_bytes: 0,
            budget: cfg.limits.connection,
            eof: false,
            drained: true,
            closing: false,
            shutting_down: false,
            deadline: if cfg.proto.oldstyle { None } else { deadline },
            active: true,
            inflow: Inflow::default(),
        }
    }

    fn negotiated(&self) -> bool {
        self.proto.negotiated().is_some()
    }

    /// True when the socket should be polled for reading.
    pub fn wants_read(&self) -> bool {
        if self.closing || self.eof {
            return false;
        }
        if self.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
            return true;
        }
        self.proto.wants_read()
            && self.wbuf.len() < OUTPUT_HIGH_WATER
            && (!self.negotiated() || self.queued < MAX_QUEUED)
            && self.held() < self.budget
    }

    /// Bytes this connection holds against the memory limits.
    pub fn held(&self) -> usize {
        self.wbuf.len() + self.in_flight_bytes
    }

    /// Back-pressure: stop taking requests while the output is piled up,
    /// too many jobs are out, or a memory limit is reached.
    fn saturated(&self, cfg: &ConnConfig, shared: &Shared) -> bool {
        self.wbuf.len() >= OUTPUT_HIGH_WATER
            || self.queued >= MAX_QUEUED
            || self.held() >= cfg.limits.connection
            || shared.held >= cfg.limits.per_loop
    }

    /// True when jobs in flight hold back new requests: each one that
    /// finishes wakes the connection.
    fn waits_for_jobs(&self, cfg: &ConnConfig) -> bool {
        self.queued >= MAX_QUEUED
            || (self.in_flight_bytes > 0 && self.held() >= cfg.limits.connection)
    }

    /// True when bytes may be waiting in the socket that no event will
    /// announce (see `drained`) and there is room to take them now.
    pub fn should_read_again(&self) -> bool {
        !self.drained && self.wants_read()
    }

    /// True when processing more input now would not overfill the output
    /// (otherwise the next writable event resumes it).
    pub fn has_output_room(&self) -> bool {
        // At its budget the connection is resumed by what frees the bytes:
        // a writable event (output the socket refused) or a finished job.
        // Polling it again at once spun the loop while a client with a
        // budget below the high-water mark did not read.
        self.wbuf.len() < OUTPUT_HIGH_WATER && self.held() < self.budget
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
        self.proto.begin_shutdown();
    }

    /// Housekeeping (about once a second): a connection with no traffic
    /// since the last pass gives back the memory a burst left behind
    /// (recycled output chunks, a grown input buffer), so an idle client
    /// costs little however busy it was.
    pub fn housekeep(&mut self) {
        if !self.active && self.queued == 0 {
            self.wbuf.release();
            self.rbuf.shrink_if_idle(BUF_INITIAL, BUF_INITIAL);
        }
        self.active = false;
    }

    /// The socket has input, to be read after the pending pass processes
    /// what is buffered (see `should_read_again`).
    pub fn defer_read(&mut self) {
        self.active = true;
        self.drained = false;
    }

    /// Read what the socket has (through TLS if active). `closing_hint`:
    /// the readiness event said the peer closed its side (read to EOF
    /// then, not just until a short read).
    pub fn on_readable(&mut self, closing_hint: bool) -> io::Result<()> {
        self.active = true;
        let limit = self.read_limit();
        self.drained = false;
        match &mut self.tls {
            // Payload bytes go to the pages once the buffer holds no more
            // of them.
            None if self.inflow.wants_payload() && self.rbuf.is_empty() => {
                self.read_payload(!closing_hint)?;
            }
            None => match self
                .rbuf
                .read_from(&mut self.stream, limit, !closing_hint)?
            {
                ReadEnd::Eof => {
                    self.eof = true;
                    self.drained = true;
                }
                ReadEnd::WouldBlock => self.drained = true,
                // Bytes may remain in the socket (see `drained`).
                ReadEnd::Limit => {}
            },
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

    /// Read a streamed WRITE's payload straight into its pages, until it is
    /// complete (then the socket is read again after it is stored) or the
    /// socket is drained.
    fn read_payload(&mut self, short_is_drained: bool) -> io::Result<()> {
        while self.inflow.wants_payload() {
            match self.inflow.read_from(&mut self.stream) {
                Ok((0, _)) => {
                    self.eof = true;
                    self.drained = true;
                    return Ok(());
                }
                Ok((n, asked)) => {
                    self.proto.payload_received(n);
                    // A short read took all the socket had (buffer.rs
                    // `read_from`: no second call just to see EAGAIN).
                    if short_is_drained && n < asked {
                        self.drained = true;
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.drained = true;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// True when the WRITE whose header may start the input should be
    /// received into pages: plaintext, an inline backend that takes
    /// pages, and a payload not already buffered whole.
    fn should_stream(&self) -> bool {
        self.tls.is_none()
            && !self.inflow.is_active()
            && matches!(&self.export, Some((b, Exec::Inline)) if b.takes_pages())
            && self.rbuf.len() < self.proto.needed(self.rbuf.filled())
    }

    /// The streamed WRITE's payload is complete: store it and reply.
    fn store_inflow(&mut self, shared: &mut Shared) {
        let Some((backend, _)) = &self.export else {
            return;
        };
        let Some((w, r)) = self.inflow.finish(&**backend, &mut shared.pages) else {
            return;
        };
        crate::trace::request(&self.peer, &w.reply);
        #[cfg(feature = "fuzzing")]
        let tapped = crate::fuzzing::tap::Request::new(&w.reply);
        dispatch::reply_result(&mut self.proto, &mut self.wbuf, w.reply, &r);
        #[cfg(feature = "fuzzing")]
        tapped.executed(&Executed::Done);
    }

    /// How much input to buffer: a whole option or request frame (a WRITE
    /// payload is parsed in place), never more than nbd-proto says it needs
    /// (the maximum payload plus a header), but batches of small ones.
    fn read_limit(&self) -> usize {
        self.proto.needed(self.rbuf.filled()).max(READ_BATCH)
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
                let n = tls.write_plaintext(self.wbuf.front())?;
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
        Ok(())
    }

    /// Run the protocol over buffered input.
    ///
    /// # Errors
    /// Only for a TLS session that cannot start; a protocol violation
    /// closes the connection after the replies already made are written.
    pub fn process(
        &mut self,
        cfg: &ConnConfig,
        shared: &mut Shared,
        token: usize,
    ) -> io::Result<Status> {
        crate::trace::serving(&self.peer);
        if let Some(t) = self.tls_pending.take() {
            if self.tls.as_ref().is_some_and(|s| !s.is_handshaking()) {
                crate::trace::tls_established(&self.peer);
                self.proto.handle_tls_established(t);
            } else {
                self.tls_pending = Some(t);
            }
        }
        let mut status = Status::default();
        // `-v`: what this pass answered during negotiation.
        let mark = (!self.negotiated() && crate::trace::on()).then(|| self.wbuf.total());
        let ran = self.run(cfg, shared, token);
        if let Some(b) = mark.and_then(|m| self.wbuf.tail((self.wbuf.total() - m) as usize)) {
            crate::trace::answered(&self.peer, &b);
        }
        match ran {
            Ok(more) => status.more = more,
            Err(e) => {
                // Replies already computed are owed: flush them, then close
                // (a WRITE, DISC and junk in one burst still gets the
                // WRITE's reply).
                log::info!("{}: {e}", self.peer);
                self.closing = true;
            }
        }
        if self.negotiated() {
            self.deadline = None;
            // Checklist 112: once shutting down, a connection with nothing
            // in flight, nothing buffered and a drained socket is done;
            // close it as soon as its replies are out rather than at the end
            // of the shutdown grace period.
            if self.shutting_down && self.queued == 0 && self.rbuf.is_empty() && self.drained {
                self.closing = true;
            }
        }
        if self.proto.is_closed() && self.queued == 0 {
            self.closing = true;
        }
        if self.eof && self.rbuf.is_empty() && self.queued == 0 {
            // The client went away (or closed after DISC): finish what is
            // in flight, then close.
            self.closing = true;
        }
        // A very large WRITE grew the input buffer; give it back at once
        // (smaller bursts keep it until housekeeping finds them idle).
        self.rbuf.shrink_if_idle(BUF_INITIAL, OUTPUT_HIGH_WATER * 2);
        status.closing = self.closing;
        Ok(status)
    }

    /// The documented nbd-proto loop. Returns true when input remains but
    /// the budget ran out or back-pressure stopped it.
    fn run(
        &mut self,
        cfg: &ConnConfig,
        shared: &mut Shared,
        token: usize,
    ) -> Result<bool, nbd_proto::ProtocolError> {
        for _ in 0..BUDGET {
            self.drain_transmit();
            if self.saturated(cfg, shared) {
                // Back-pressure: resume once output drains or jobs finish.
                // A finished job wakes its connection (`Loop::deliver`), so
                // while jobs alone hold it back there is nothing to retry
                // before then: asking for another pass at once made the
                // loop spin at 100% CPU for as long as the pool was full.
                return Ok(!self.rbuf.is_empty() && !self.waits_for_jobs(cfg));
            }
            if !self.negotiated() {
                // Everything queued so far is negotiation output.
                let produced = usize::try_from(self.wbuf.total()).unwrap_or(usize::MAX);
                if produced > cfg.limits.handshake_output {
                    return Err(nbd_proto::ProtocolError::Violation(
                        "negotiation produced too much output (too many LIST/INFO options)",
                    ));
                }
            }
            if self.listing.is_some() {
                self.continue_list(cfg);
                continue;
            }
            if self.inflow.is_complete() {
                self.store_inflow(shared);
                continue;
            }
            if self.should_stream()
                && let Some((header, w)) = self.proto.begin_write_stream(
                    self.rbuf.filled(),
                    cfg.limits.stream_writes_from,
                    nbd_backends::lent::PAGE_SIZE as u64,
                )
            {
                self.rbuf.consume(header);
                self.inflow.start(w, &mut shared.pages);
                continue;
            }
            let negotiating = !self.negotiated();
            let (consumed, next) = self.proto.handle_input(self.rbuf.filled())?;
            if negotiating {
                let taken = self.rbuf.filled().get(..consumed).unwrap_or_default();
                crate::trace::received(&self.peer, taken);
            }
            let stop = match next {
                Input::NeedInput | Input::Blocked => true,
                Input::Closed => {
                    self.closing = true;
                    true
                }
                Input::Continue | Input::Disconnect => false,
                Input::WriteData(data) => {
                    self.inflow.absorb(data);
                    false
                }
                Input::Export(q) => {
                    let who = (self.id, self.peer_kind);
                    let chosen = answer_export(&mut self.proto, &mut self.wbuf, cfg, q, who);
                    #[cfg(feature = "fuzzing")]
                    crate::fuzzing::tap::negotiated(self.wbuf.total(), self.proto.negotiated());
                    if let Some((handle, name)) = chosen {
                        if let Some(n) = self.proto.negotiated() {
                            crate::trace::negotiated(&self.peer, &name, n);
                        }
                        let exec = shared.exec_for(&handle, &name);
                        self.export = Some((handle, exec));
                    }
                    false
                }
                Input::List(q) => {
                    self.listing = Some((q, 0));
                    false
                }
                Input::MetaContexts(q) => {
                    // What the named export offers (a name that is no
                    // export: base:allocation, as any export would).
                    let e = cfg.exports.get(self.proto.asked_name());
                    let offered = Ok(e.map_or(META_BASE, |e| offered_contexts(&*e.backend)));
                    put(&mut self.wbuf, 256, q, |q, b| {
                        self.proto.answer_meta_contexts(q, offered, b)
                    });
                    false
                }
                Input::StartTls(t) => {
                    self.tls_pending = Some(t);
                    self.rbuf.consume(consumed);
                    self.start_tls(cfg)
                        .map_err(|_| nbd_proto::ProtocolError::Violation("TLS could not start"))?;
                    return Ok(false);
                }
                Input::Request { op, reply } => {
                    crate::trace::request(&self.peer, &reply);
                    #[cfg(feature = "fuzzing")]
                    let tapped = crate::fuzzing::tap::Request::new(&reply);
                    let Some((backend, exec)) = &self.export else {
                        return Err(nbd_proto::ProtocolError::Violation(
                            "request without an export",
                        ));
                    };
                    let target = Target {
                        conn: (self.id, token),
                        backend,
                        exec: *exec,
                    };
                    let done = dispatch::execute(
                        &mut self.proto,
                        &mut self.wbuf,
                        &target,
                        op,
                        reply,
                        shared,
                    );
                    #[cfg(feature = "fuzzing")]
                    tapped.executed(&done);
                    if let Executed::Queued { cost } = done {
                        self.queued += 1;
                        self.in_flight_bytes += cost;
                    }
                    false
                }
                Input::Reject {
                    reply,
                    error,
                    message,
                } => {
                    #[cfg(feature = "fuzzing")]
                    crate::fuzzing::tap::rejected(&reply);
                    dispatch::reply_error(&mut self.proto, &mut self.wbuf, reply, error, message);
                    false
                }
                // nbd-proto's `Input` may grow (it is `#[non_exhaustive]`):
                // an event this driver does not know ends the connection.
                _ => {
                    return Err(nbd_proto::ProtocolError::Violation(
                        "unknown nbd-proto event",
                    ));
                }
            };
            self.rbuf.consume(consumed);
            if stop {
                return Ok(false);
            }
        }
        Ok(!self.rbuf.is_empty())
    }

    /// Move what nbd-proto queued by itself (greeting, option replies) to
    /// the output.
    fn drain_transmit(&mut self) {
        loop {
            let spare = self.wbuf.spare(nbd_proto::server::POLL_TRANSMIT_MAX);
            match self.proto.poll_transmit(spare) {
                Ok(0) => return,
                Ok(n) => self.wbuf.commit(n),
                Err(e) => {
                    self.wbuf.spare(e.required);
                }
            }
        }
    }

    /// Answer LIST entries while the output has room (a server with
    /// thousands of exports must not queue them all at once).
    fn continue_list(&mut self, cfg: &ConnConfig) {
        let Some((q, mut next)) = self.listing.take() else {
            return;
        };
        let tls = self.proto.tls_active();
        for e in cfg.exports.list().skip(next) {
            if self.wbuf.len() >= OUTPUT_HIGH_WATER {
                self.listing = Some((q, next));
                return;
            }
            next += 1;
            if e.tls_required && !tls {
                // Nothing about a TLS-only export leaks before TLS.
                continue;
            }
            let desc = e.description.as_deref().unwrap_or("");
            let desc = clip(desc, nbd_proto::wire::MAX_STRING_LEN);
            let room = 24 + e.name.len() + desc.len();
            let n = self
                .proto
                .list_entry(&q, &e.name, desc, self.wbuf.spare(room))
                .unwrap_or(0);
            self.wbuf.commit(n);
        }
        put(&mut self.wbuf, 64, q, |q, b| self.proto.finish_list(q, b));
    }

    /// STARTTLS was acknowledged: the ACK leaves in plaintext, everything
    /// after it is TLS.
    fn start_tls(&mut self, cfg: &ConnConfig) -> io::Result<()> {
        self.drain_transmit();
        let Some(tls_cfg) = &cfg.tls else {
            return Err(io::Error::other(
                "STARTTLS accepted without TLS credentials",
            ));
        };
        // Everything queued so far (the ACK) goes out before TLS starts.
        while !self.wbuf.is_empty() {
            let n = self.wbuf.front().len();
            self.tls_out.extend(self.wbuf.front());
            self.wbuf.consume(n);
        }
        let mut session = tls_cfg.new_session()?;
        self.wbuf.copy_only();
        // Bytes already read past the option are the ClientHello.
        let early = std::mem::take(&mut self.rbuf);
        self.rbuf = Buf::with_capacity(BUF_INITIAL);
        feed_all(session.as_mut(), early.filled(), &mut self.rbuf)?;
        drain_ciphertext(session.as_mut(), &mut self.tls_out)?;
        self.tls = Some(session);
        Ok(())
    }

    /// The upstream this connection owns (a per-client `nbd` proxy
    /// connection), to close with it.
    pub fn owned_upstream(&self) -> Option<usize> {
        match self.export {
            Some((_, Exec::Upstream { key, owned: true })) => Some(key),
            _ => None,
        }
    }

    /// A pool job for this connection finished.
    pub fn on_job_done(&mut self, job: &mut crate::workers::Job, shared: &mut Shared) {
        crate::trace::serving(&self.peer);
        self.active = true;
        self.queued = self.queued.saturating_sub(1);
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(job.cost);
        dispatch::complete(
            &mut self.proto,
            &mut self.wbuf,
            job,
            &mut shared.descriptors,
        );
        if self.proto.is_closed() && self.queued == 0 {
            self.closing = true;
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

/// Answer an export question; on GO / EXPORT_NAME success, the
/// connection's handle on the export (the backend's per-connection
/// `open`) and the export's canonical name.
fn answer_export(
    proto: &mut Connection,
    out: &mut OutQueue,
    cfg: &ConnConfig,
    q: ExportQuestion,
    (id, peer): (u64, Peer),
) -> Option<(Arc<dyn Backend>, String)> {
    let name = proto.asked_name();
    let export = cfg.exports.get(name);
    let mut handle = None;
    let answer = match export {
        // A TLS-only export does not exist for a plaintext client: refuse
        // before saying anything about it (an EXPORT_NAME refusal closes).
        Some(e) if e.tls_required && !proto.tls_active() => Err(OptReplyType::ErrTlsReqd),
        Some(e) if q.ends_negotiation() => {
            let client = ClientInfo {
                id,
                peer,
                export_name: name,
                tls: proto.tls_active(),
            };
            match e.backend.open(&client) {
                Ok(h) => {
                    let h = h.unwrap_or_else(|| Arc::clone(&e.backend));
                    let info = export_info(e, &*h);
                    handle = Some((h, e.name.clone()));
                    Ok(info)
                }
                Err(err) => {
                    log::info!("export '{}' refused the client: {err}", e.name);
                    Err(OptReplyType::ErrPolicy)
                }
            }
        }
        Some(e) => Ok(export_info(e, &*e.backend)),
        None => Err(OptReplyType::ErrUnknown),
    };
    // Room for a typical answer; a long name or description makes the
    // encoder ask for exactly what it needs (at most EXPORT_ANSWER_MAX), so
    // an idle client's output chunk stays small.
    put(out, 256, q, |q, b| proto.answer_export(q, answer, b));
    if proto.negotiated().is_some() {
        handle
    } else {
        None
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
