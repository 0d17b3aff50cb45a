//! [`Connection`]: one server-side NBD connection, from the first byte to
//! `NBD_CMD_DISC`, as one value.

use super::answer::EXPORT_ANSWER_MAX;
use super::export::{ExportInfo, Negotiated};
use super::handshake::{Asked, Handshake, HandshakeConfig};
use super::question::{ExportQuestion, ListQuestion, MetaQuestion, NeedRoom, StartTls};
use super::request::{Op, Pending, StreamedWrite};
use super::transmission::{Incoming, Transmission, TransmissionConfig};
use crate::error::{BufferTooSmall, ProtocolError};
use crate::types::{ErrorCode, OptReplyType};
use crate::wire::reply::BlockStatusExtent;

/// Everything a server connection is configured with. The default is a
/// fixed-newstyle server without TLS that offers structured replies,
/// extended headers and the `base:allocation` meta context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionConfig {
    /// Negotiation limits, TLS policy and the meta-context catalogue.
    pub handshake: HandshakeConfig,
    /// Transmission limits.
    pub transmission: TransmissionConfig,
    /// Serve oldstyle negotiation (no options; the default export only).
    pub oldstyle: bool,
}

/// What the caller must do after [`Connection::handle_input`]: one value
/// per call, naming the next step (the
/// [run loop](crate#server-run-loop)). Variants that carry a token
/// (`Export`, `List`, `MetaContexts`, `StartTls`, `Request`, `Reject`) must
/// be answered before the connection asks anything new.
#[must_use]
#[derive(Debug)]
#[non_exhaustive]
pub enum Input<'a> {
    /// The input holds no complete frame: read more from the peer
    /// ([`Connection::needed`] says how much must be buffered).
    NeedInput,
    /// Progress was made (bytes consumed or output queued): drain
    /// [`Connection::poll_transmit`] and call again.
    Continue,
    /// Nothing can be done until the output queued by
    /// [`Connection::poll_transmit`] is drained, or (after DISC) until the
    /// requests in flight are answered.
    Blocked,
    /// Look up the export [`Connection::asked_name`] names and answer with
    /// [`Connection::answer_export`].
    Export(ExportQuestion),
    /// `NBD_OPT_LIST`: answer with [`Connection::list_entry`] per export and
    /// [`Connection::finish_list`].
    List(ListQuestion),
    /// Say which catalogue contexts the export [`Connection::asked_name`]
    /// offers, with [`Connection::answer_meta_contexts`].
    MetaContexts(MetaQuestion),
    /// Start TLS now: see [`StartTls`].
    StartTls(StartTls),
    /// Run `op`, then send one final reply through `reply`.
    Request {
        /// The operation, validated.
        op: Op<'a>,
        /// The token the reply consumes.
        reply: Pending,
    },
    /// A well-formed request the spec says to refuse: answer it with
    /// [`Connection::reply_error`] and go on.
    Reject {
        /// The token the error reply consumes.
        reply: Pending,
        /// The error to send.
        error: ErrorCode,
        /// A human-readable reason (for error chunks and logs).
        message: &'static str,
    },
    /// `NBD_CMD_DISC` arrived: answer what is in flight; nothing after it
    /// is executed. [`Connection::is_closed`] turns true once all is answered.
    Disconnect,
    /// The connection is finished: write out what is queued, then close.
    Closed,
    /// Bytes of the payload of the WRITE that
    /// [`Connection::begin_write_stream`] accepted, in order: store them
    /// (they borrow the input), consume them, and reply once the whole
    /// payload is stored. Only after `begin_write_stream`.
    WriteData(&'a [u8]),
}

// The handshake holds a 4 KiB name buffer that transmission does not need;
// the enum keeps the larger size, which is fine for one value per client.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Phase {
    Handshake(Handshake),
    Transmission(Transmission),
}

/// One server-side connection: negotiation (oldstyle, fixed and non-fixed
/// newstyle, STARTTLS), transmission and shutdown, as one value.
///
/// Feed it the client's bytes with [`Connection::handle_input`], write out
/// what [`Connection::poll_transmit`] gives, and act on each [`Input`]: the
/// [run loop](crate#server-run-loop) in the crate docs is the whole
/// contract. Answers (`answer_*`, `list_entry`) and replies (`reply_*`,
/// chunks) are encoded into the caller's slice; the connection never holds
/// request data and never allocates.
///
/// A connection is a plain value (no I/O handle, no lifetime): store one
/// per client next to its socket. It holds a 4 KiB buffer for the export
/// name a question is about, so box it if you keep many in a `Vec` that
/// moves.
///
/// `examples/blocking_server.rs` (std::net) and `examples/tokio_server.rs`
/// (tokio) are complete servers built on it.
#[derive(Debug, Clone)]
pub struct Connection {
    phase: Phase,
    transmission: TransmissionConfig,
}

impl Connection {
    /// A new connection. Newstyle: the greeting is the first thing
    /// [`Connection::poll_transmit`] writes. Oldstyle: the first
    /// [`Connection::handle_input`] (even with no input) asks for the
    /// default export, whose answer writes the greeting.
    #[must_use]
    pub fn new(cfg: &ConnectionConfig) -> Self {
        Self {
            phase: Phase::Handshake(Handshake::new(cfg.handshake, cfg.oldstyle)),
            transmission: cfg.transmission,
        }
    }

    /// A connection whose negotiation happened elsewhere (a server that
    /// negotiates in one process and hands the socket to another, as
    /// nbd-server does, or a test): transmission starts at once.
    #[must_use]
    pub fn in_transmission(negotiated: Negotiated, cfg: TransmissionConfig) -> Self {
        Self {
            phase: Phase::Transmission(Transmission::new(negotiated, cfg)),
            transmission: cfg,
        }
    }

    /// The negotiation result, once transmission has started (size updated
    /// by RESIZE).
    #[must_use]
    pub fn negotiated(&self) -> Option<&Negotiated> {
        match &self.phase {
            Phase::Transmission(t) => Some(&t.neg),
            Phase::Handshake(_) => None,
        }
    }

    /// True while TLS is active on this connection (as the caller reported
    /// through [`Connection::handle_tls_established`]).
    #[must_use]
    pub fn tls_active(&self) -> bool {
        match &self.phase {
            Phase::Handshake(h) => h.tls_active(),
            Phase::Transmission(t) => t.neg.tls,
        }
    }

    /// The export name the outstanding [`ExportQuestion`] or
    /// [`MetaQuestion`] is about ("" = the default export).
    #[must_use]
    pub fn asked_name(&self) -> &str {
        match &self.phase {
            Phase::Handshake(h) => h.asked.as_str(),
            Phase::Transmission(_) => "",
        }
    }

    /// The largest READ or WRITE payload this connection hands over (the
    /// advertised maximum, or more for a client that did not agree to block
    /// sizes; see [`TransmissionConfig::max_unnegotiated_payload`]): size
    /// buffers with it. `None` before transmission.
    #[must_use]
    pub fn max_request_len(&self) -> Option<u64> {
        match &self.phase {
            Phase::Transmission(t) => Some(t.max_payload()),
            Phase::Handshake(_) => None,
        }
    }

    /// Requests accepted and not yet answered with a final reply.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        match &self.phase {
            Phase::Transmission(t) => t.in_flight,
            Phase::Handshake(_) => 0,
        }
    }

    /// True when [`Connection::handle_input`] can use more input.
    #[must_use]
    pub fn wants_read(&self) -> bool {
        match &self.phase {
            Phase::Handshake(h) => h.wants_read(),
            Phase::Transmission(t) => t.wants_read(),
        }
    }

    /// True when [`Connection::poll_transmit`] has bytes to write.
    #[must_use]
    pub fn wants_write(&self) -> bool {
        match &self.phase {
            Phase::Handshake(h) => h.wants_write(),
            Phase::Transmission(_) => false,
        }
    }

    /// True when the connection is over: after ABORT or a refused
    /// EXPORT_NAME, or after DISC once nothing is in flight. Write out what
    /// is queued, then close.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        match &self.phase {
            Phase::Handshake(h) => h.is_closed(),
            Phase::Transmission(t) => t.is_disconnecting() && t.in_flight == 0,
        }
    }

    /// The server is shutting down: later options get
    /// `NBD_REP_ERR_SHUTDOWN` ([proto.md "Option reply types"]), later
    /// requests `NBD_ESHUTDOWN` ([proto.md "Error values"]). Requests in
    /// flight are still answered normally.
    ///
    /// [proto.md "Option reply types"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-reply-types
    /// [proto.md "Error values"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#error-values
    pub fn begin_shutdown(&mut self) {
        match &mut self.phase {
            Phase::Handshake(h) => h.begin_shutdown(),
            Phase::Transmission(t) => t.begin_shutdown(),
        }
    }

    /// Bytes the input buffer must hold to make progress: a whole option
    /// (up to [`HandshakeConfig::max_option_len`]) or request frame (header
    /// plus a payload up to the maximum payload), never more. Larger
    /// payloads are refused on their header and drained as they stream in.
    #[must_use]
    pub fn needed(&self, input: &[u8]) -> usize {
        match &self.phase {
            Phase::Handshake(h) => h.needed(input),
            Phase::Transmission(t) => t.needed(input),
        }
    }

    /// Write pending output (the greeting, replies the connection made on
    /// its own) into `out`. Returns the bytes written, 0 when nothing is
    /// pending; call after every `handle_input` and every answer until it
    /// returns 0.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` cannot hold the next message (at most
    /// [`error_reply_len`](super::error_reply_len)`(64)` bytes); nothing is lost then.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        match &mut self.phase {
            Phase::Handshake(h) => h.poll_transmit(out),
            Phase::Transmission(_) => Ok(0),
        }
    }

    /// Feed bytes from the peer. Returns how many were consumed (discard
    /// them; nothing returned borrows them except [`Op::Write`] data) and
    /// what to do next.
    ///
    /// # Errors
    /// A [`ProtocolError`] means the peer broke the protocol beyond any
    /// reply: write out what is queued (replies already made are owed),
    /// then close.
    pub fn handle_input<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Input<'a>), ProtocolError> {
        match &mut self.phase {
            Phase::Handshake(h) => {
                if h.is_closed() {
                    return Ok((0, Input::Closed));
                }
                let (n, asked) = h.handle_input(input)?;
                let next = match asked {
                    Some(Asked::Export(q)) => Input::Export(q),
                    Some(Asked::List(q)) => Input::List(q),
                    Some(Asked::Meta(q)) => Input::MetaContexts(q),
                    Some(Asked::StartTls(q)) => Input::StartTls(q),
                    None if h.is_closed() => Input::Closed,
                    None if n > 0 || h.wants_write() => Input::Continue,
                    None if h.wants_read() => Input::NeedInput,
                    None => Input::Blocked,
                };
                Ok((n, next))
            }
            Phase::Transmission(t) => {
                let (n, incoming) = t.handle_request(input)?;
                let next = match incoming {
                    Some(Incoming::Command(op, reply)) => Input::Request { op, reply },
                    Some(Incoming::Reject(reply, error, message)) => Input::Reject {
                        reply,
                        error,
                        message,
                    },
                    Some(Incoming::Disconnect) => Input::Disconnect,
                    Some(Incoming::Payload(data)) => Input::WriteData(data),
                    None if t.is_disconnecting() && t.in_flight == 0 => Input::Closed,
                    None if t.is_disconnecting() => Input::Blocked,
                    None if n > 0 => Input::Continue,
                    None => Input::NeedInput,
                };
                Ok((n, next))
            }
        }
    }

    /// Receive a large WRITE's payload straight into the caller's storage
    /// instead of the input buffer (one copy less: a server can read the
    /// socket into the pages the data will live in).
    ///
    /// If `input` starts with a valid WRITE header (its payload may be
    /// absent or partial) of at least `min_len` bytes whose offset and
    /// length are multiples of `align`, the request is accepted now:
    /// returns the header's length (consume it) and the [`StreamedWrite`].
    /// The next `len` bytes of the stream are then its payload: buffered
    /// ones come back from [`Connection::handle_input`] as
    /// [`Input::WriteData`]; ones the caller reads into its storage itself
    /// it reports with [`Connection::payload_received`]. After the last,
    /// requests are parsed again.
    ///
    /// Anything else returns `None` and changes nothing: another command,
    /// a WRITE the spec says to refuse (read-only, out of bounds, bad
    /// flags: [`Connection::handle_input`] rejects it as usual), a shutdown,
    /// the handshake phase, or a payload still being received.
    pub fn begin_write_stream(
        &mut self,
        input: &[u8],
        min_len: u64,
        align: u64,
    ) -> Option<(usize, StreamedWrite)> {
        match &mut self.phase {
            Phase::Transmission(t) => t.begin_stream(input, min_len, align),
            Phase::Handshake(_) => None,
        }
    }

    /// Payload bytes of the streamed WRITE still to come; 0 when none is
    /// being received.
    #[must_use]
    pub fn payload_left(&self) -> u64 {
        match &self.phase {
            Phase::Transmission(t) => t.payload_left(),
            Phase::Handshake(_) => 0,
        }
    }

    /// The caller read `n` more bytes of the streamed WRITE's payload into
    /// its own storage (never more than [`Connection::payload_left`]).
    /// Returns the bytes still to come.
    pub fn payload_received(&mut self, n: usize) -> u64 {
        match &mut self.phase {
            Phase::Transmission(t) => t.payload_received(n),
            Phase::Handshake(_) => 0,
        }
    }

    /// The TLS handshake the [`StartTls`] asked for completed: everything
    /// negotiated in plaintext is forgotten (as `NBD_OPT_STARTTLS` requires) and options are
    /// read again.
    pub fn handle_tls_established(&mut self, token: StartTls) {
        if let Phase::Handshake(h) = &mut self.phase {
            h.handle_tls_established(token);
        }
    }

    fn handshake(&mut self) -> Option<&mut Handshake> {
        match &mut self.phase {
            Phase::Handshake(h) => Some(h),
            Phase::Transmission(_) => None,
        }
    }

    /// Answer an [`ExportQuestion`]: `Ok(info)` for a known export,
    /// `Err(reply)` to refuse it (`NBD_REP_ERR_UNKNOWN`, `_TLS_REQD`,
    /// `_POLICY`, ...). The replies are encoded into `out`; returns their
    /// length. Success for GO, EXPORT_NAME or oldstyle starts transmission
    /// ([`Connection::negotiated`]); a refused EXPORT_NAME or oldstyle
    /// query writes nothing and closes.
    ///
    /// # Errors
    /// [`NeedRoom`] when `out` is too small ([`EXPORT_ANSWER_MAX`] bytes
    /// always suffice); nothing changed, retry with the token.
    pub fn answer_export(
        &mut self,
        q: ExportQuestion,
        answer: Result<ExportInfo<'_>, OptReplyType>,
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<ExportQuestion>> {
        let tcfg = self.transmission;
        let Some(h) = self.handshake() else {
            return Ok(0);
        };
        let n = h.answer_export(q, answer, out)?;
        if let Some(neg) = h.negotiated() {
            self.phase = Phase::Transmission(Transmission::new(neg, tcfg));
        }
        Ok(n)
    }

    /// One export of the answer to a [`ListQuestion`] (`NBD_REP_SERVER`).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is shorter than 24 bytes plus the name
    /// and description.
    pub fn list_entry(
        &mut self,
        q: &ListQuestion,
        name: &str,
        description: &str,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        match self.handshake() {
            Some(h) => h.list_entry(q, name, description, out),
            None => Ok(0),
        }
    }

    /// End the answer to a [`ListQuestion`] with `NBD_REP_ACK`.
    ///
    /// # Errors
    /// [`NeedRoom`] when `out` is shorter than 20 bytes.
    pub fn finish_list(
        &mut self,
        q: ListQuestion,
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<ListQuestion>> {
        match self.handshake() {
            Some(h) => h.finish_list(q, out),
            None => Ok(0),
        }
    }

    /// Answer a [`MetaQuestion`] with the catalogue entries the export
    /// offers (bit i = [`HandshakeConfig::meta_contexts`]`[i]`), or an
    /// error reply (`NBD_REP_ERR_UNKNOWN` for a missing export). The reply
    /// names each matched context the export offers (IDs i + 1 for SET),
    /// and SET remembers the selection for that export.
    ///
    /// # Errors
    /// [`NeedRoom`] when `out` is too small; nothing changed.
    pub fn answer_meta_contexts(
        &mut self,
        q: MetaQuestion,
        offered: Result<u64, OptReplyType>,
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<MetaQuestion>> {
        match self.handshake() {
            Some(h) => h.answer_meta(q, offered, out),
            None => Ok(0),
        }
    }

    fn transmission(&mut self) -> Option<&mut Transmission> {
        match &mut self.phase {
            Phase::Transmission(t) => Some(t),
            Phase::Handshake(_) => {
                debug_assert!(false, "a reply before transmission");
                None
            }
        }
    }

    /// Success without data (every command but READ and BLOCK_STATUS). A
    /// RESIZE answered so records the new size.
    ///
    /// # Errors
    /// [`NeedRoom`] when `out` is shorter than [`OK_REPLY_MAX`](super::OK_REPLY_MAX).
    pub fn reply_ok(&mut self, p: Pending, out: &mut [u8]) -> Result<usize, NeedRoom<Pending>> {
        match self.transmission() {
            Some(t) => t.reply_ok(p, out),
            None => Ok(0),
        }
    }

    /// An error reply: simple without structured replies, else an error
    /// chunk carrying `message` (structured replies answer errors with chunks
    /// too). Ends a chunked reply.
    ///
    /// # Errors
    /// [`NeedRoom`] when `out` is shorter than
    /// [`error_reply_len`](super::error_reply_len)`(message.len())`.
    pub fn reply_error(
        &mut self,
        p: Pending,
        error: ErrorCode,
        message: &str,
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<Pending>> {
        match self.transmission() {
            Some(t) => t.reply_error(p, error, message, out),
            None => Ok(0),
        }
    }

    /// Bytes that precede the data of a one-piece read reply (a simple
    /// reply header, or an OFFSET_DATA chunk header and offset): reserve
    /// them, read the data right behind, then fill them with
    /// [`Connection::reply_read`].
    #[must_use]
    pub fn read_prefix_len(&self) -> usize {
        match &self.phase {
            Phase::Transmission(t) => t.read_prefix_len(),
            Phase::Handshake(_) => 0,
        }
    }

    /// The whole READ in one piece: encodes the prefix for `p.len()` bytes
    /// of data at the request's offset into `out` (exactly
    /// [`Connection::read_prefix_len`] bytes), which the caller follows with
    /// the data. An empty READ in structured mode is answered with a lone
    /// NONE chunk (shorter than the prefix, and no data follows). Either
    /// way the whole reply is the returned length plus the `len` of the
    /// [`Op::Read`], so with the data placed at
    /// [`Connection::read_prefix_len`]:
    ///
    /// ```text
    /// out[prefix..prefix + len] <- the data
    /// n = reply_read(p, &mut out[..prefix])
    /// send out[..n + len]
    /// ```
    /// (`n + len` is right in the empty case too: `len` is 0 there.)
    ///
    /// # Errors
    /// [`NeedRoom`] when `out` is shorter than the prefix.
    pub fn reply_read(&mut self, p: Pending, out: &mut [u8]) -> Result<usize, NeedRoom<Pending>> {
        match self.transmission() {
            Some(t) => t.reply_read(p, out),
            None => Ok(0),
        }
    }

    /// A non-final OFFSET_DATA chunk header for `len` bytes at `offset`
    /// (structured replies only), followed by the data; end the reply with
    /// [`Connection::reply_done`] or [`Connection::reply_error`].
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is shorter than the prefix.
    pub fn read_chunk(
        &mut self,
        p: &Pending,
        offset: u64,
        len: usize,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        match self.transmission() {
            Some(t) => t.read_chunk(p, offset, len, out),
            None => Ok(0),
        }
    }

    /// A non-final OFFSET_HOLE chunk: `len` bytes at `offset` read as zeroes.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short (at most 44 bytes).
    pub fn read_hole(
        &mut self,
        p: &Pending,
        offset: u64,
        len: u32,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        match self.transmission() {
            Some(t) => t.read_hole(p, offset, len, out),
            None => Ok(0),
        }
    }

    /// End a chunked reply with a NONE chunk.
    ///
    /// # Errors
    /// [`NeedRoom`] when `out` is shorter than [`OK_REPLY_MAX`](super::OK_REPLY_MAX).
    pub fn reply_done(&mut self, p: Pending, out: &mut [u8]) -> Result<usize, NeedRoom<Pending>> {
        match self.transmission() {
            Some(t) => t.reply_done(p, out),
            None => Ok(0),
        }
    }

    /// A non-final block-status chunk for context `id`, from the store's
    /// runs, normalised by the spec's rules (clipped to the request, one
    /// run with REQ_ONE, equal neighbours merged, 32-bit lengths in compact
    /// mode, the whole request as status 0 when `extents` is empty).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn block_status_chunk(
        &mut self,
        p: &Pending,
        id: u32,
        extents: &[BlockStatusExtent],
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        match self.transmission() {
            Some(t) => t.block_status_chunk(p, id, extents, out),
            None => Ok(0),
        }
    }

    /// The final block-status chunk (as [`Connection::block_status_chunk`]).
    ///
    /// # Errors
    /// [`NeedRoom`] when `out` is too short; nothing changed.
    pub fn reply_block_status(
        &mut self,
        p: Pending,
        id: u32,
        extents: &[BlockStatusExtent],
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<Pending>> {
        match self.transmission() {
            Some(t) => t.reply_block_status(p, id, extents, out),
            None => Ok(0),
        }
    }
}

/// Room that always holds what [`Connection::poll_transmit`] writes in one
/// call (the greeting, or an option reply with one of the connection's
/// short messages).
pub const POLL_TRANSMIT_MAX: usize = 256;

/// Room for any negotiation answer but LIST entries and meta contexts
/// (which report what they need).
pub const HANDSHAKE_ANSWER_MAX: usize = EXPORT_ANSWER_MAX;
