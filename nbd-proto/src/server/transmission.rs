//! The server transmission state machine (proto.md "Transmission phase").
//!
//! [`Transmission::handle_request`] frames and validates each request
//! against the negotiated state and says either "execute this command" or
//! "answer this cookie with this error and keep going"; it returns `Err`
//! only where the connection must end. The `reply_*` / `encode_*` methods
//! encode replies in the negotiated layout.

use super::export::Negotiated;
use crate::error::{BufferTooSmall, ProtocolError};
use crate::flags::{CmdFlags, TransmissionFlags};
use crate::types::{Command, ErrorCode, HeaderMode};
use crate::wire::reply::{
    self, BlockStatusExtent, ChunkHeader, OFFSET_DATA_PREFIX, ReplyTo, SIMPLE_REPLY_LEN,
    SimpleReply,
};
use crate::wire::request::{Request, RequestHeader};

/// Limits of the transmission phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransmissionConfig {
    /// A rejected payload up to this size is drained and answered with an
    /// error; a larger one ends the connection. Payloads of at most 32 MiB
    /// SHOULD NOT be treated as a denial of service (proto.md "Request
    /// message"), so this is never below that.
    pub max_drain: u64,
    /// Largest READ honoured with `NBD_CMD_FLAG_DF` (the spec requires at
    /// least 64 KiB; structured replies send reads in one chunk anyway).
    pub max_df_read: u64,
}

impl Default for TransmissionConfig {
    fn default() -> Self {
        Self {
            max_drain: 128 * 1024 * 1024,
            max_df_read: 64 * 1024 * 1024,
        }
    }
}

/// What the driver must do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A valid request: run it, then reply. The payload (WRITE data or a
    /// BLOCK_STATUS payload) is in `request.data`.
    Command(Request<'a>),
    /// A well-formed but invalid request: reply with `error` and go on. Any
    /// payload is being drained by the state machine.
    Reject {
        /// Where the reply goes.
        to: ReplyTo,
        /// The command, for choosing the reply form.
        command: Command,
        /// The error to send.
        error: ErrorCode,
        /// A human-readable reason, for structured error chunks and logs.
        message: &'static str,
    },
    /// `NBD_CMD_DISC`: finish in-flight requests, then close. No reply.
    Disconnect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Draining(u64),
    Disconnected,
}

/// The transmission state machine for one connection.
#[derive(Debug, Clone)]
pub struct Transmission {
    neg: Negotiated,
    cfg: TransmissionConfig,
    state: State,
    in_flight: usize,
}

type Check = Result<(), (ErrorCode, &'static str)>;

impl Transmission {
    /// Start transmission with the negotiation's result.
    #[must_use]
    pub fn new(neg: Negotiated, cfg: TransmissionConfig) -> Self {
        let max_drain = cfg.max_drain.max(32 * 1024 * 1024);
        Self {
            neg,
            cfg: TransmissionConfig { max_drain, ..cfg },
            state: State::Running,
            in_flight: 0,
        }
    }

    /// The negotiated parameters (size updated by RESIZE).
    #[must_use]
    pub fn negotiated(&self) -> &Negotiated {
        &self.neg
    }

    /// Header layout in use.
    #[must_use]
    pub fn mode(&self) -> HeaderMode {
        self.neg.mode
    }

    /// Record a successful `NBD_CMD_RESIZE` (or another size change).
    pub fn set_size(&mut self, size: u64) {
        self.neg.size = size;
    }

    /// Requests accepted and not yet answered with a final reply.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// True once `NBD_CMD_DISC` arrived.
    #[must_use]
    pub fn is_disconnecting(&self) -> bool {
        self.state == State::Disconnected
    }

    /// True when more requests may be read.
    #[must_use]
    pub fn wants_read(&self) -> bool {
        self.state != State::Disconnected
    }

    /// The bytes the driver must buffer to make progress: a whole request
    /// frame (header plus payload) when one is partially present.
    ///
    /// A payload above the maximum payload is never needed whole: such a
    /// request is rejected on its header and its payload drained as it
    /// streams in, so a client cannot make the driver buffer more than the
    /// maximum payload plus a header (the attack: a 128 MiB WRITE header on
    /// many connections).
    #[must_use]
    pub fn needed(&self, input: &[u8]) -> usize {
        let mode = self.neg.mode;
        let header = mode.request_header_len();
        match RequestHeader::decode(input, mode) {
            Ok(Some((h, _))) => {
                let payload = h.payload_len(mode);
                if payload > u64::from(self.neg.block_sizes.maximum) {
                    header
                } else {
                    usize::try_from(payload).map_or(header, |p| header.saturating_add(p))
                }
            }
            _ => header,
        }
    }

    /// Feed client bytes. Returns the bytes consumed (possibly > 0 with no
    /// request, while draining a rejected payload) and at most one request.
    /// Call again until it returns `(0, None)`.
    ///
    /// # Errors
    /// A [`ProtocolError`] means close the connection without replying: bad
    /// magic, a payload beyond the drain limit, a request after DISC.
    pub fn handle_request<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<Incoming<'a>>), ProtocolError> {
        match self.state {
            State::Draining(left) => {
                let n = left.min(input.len() as u64);
                let rest = left - n;
                self.state = if rest == 0 {
                    State::Running
                } else {
                    State::Draining(rest)
                };
                return Ok((n as usize, None));
            }
            State::Disconnected => {
                return if input.is_empty() {
                    Ok((0, None))
                } else {
                    Err(ProtocolError::AfterDisconnect)
                };
            }
            State::Running => {}
        }
        let mode = self.neg.mode;
        let Some((h, hlen)) = RequestHeader::decode(input, mode)? else {
            return Ok((0, None));
        };
        let payload = h.payload_len(mode);
        if payload > self.cfg.max_drain {
            return Err(ProtocolError::PayloadTooLarge(payload));
        }
        // Extended headers: a declared payload above the maximum SHOULD end
        // the connection (checklist 118).
        if mode == HeaderMode::Extended
            && h.flags.contains(CmdFlags::PAYLOAD_LEN)
            && payload > u64::from(self.neg.block_sizes.maximum)
        {
            return Err(ProtocolError::PayloadTooLarge(payload));
        }
        let to = ReplyTo {
            cookie: h.cookie,
            offset: h.offset,
        };
        if h.command == Command::Disc {
            self.state = State::Disconnected;
            return Ok((hlen, Some(Incoming::Disconnect)));
        }
        let verdict = self.validate(&h, input.get(hlen..).unwrap_or_default());
        match verdict {
            Ok(()) => {
                let Ok(p) = usize::try_from(payload) else {
                    return Err(ProtocolError::PayloadTooLarge(payload));
                };
                let end = hlen.saturating_add(p);
                let Some(data) = input.get(hlen..end) else {
                    return Ok((0, None));
                };
                self.in_flight += 1;
                Ok((end, Some(Incoming::Command(Request { header: h, data }))))
            }
            Err((error, message)) => {
                self.in_flight += 1;
                if payload > 0 {
                    // Drain exactly the payload before the next header, so its
                    // bytes are never parsed as requests (checklist 80).
                    self.state = State::Draining(payload);
                }
                Ok((
                    hlen,
                    Some(Incoming::Reject {
                        to,
                        command: h.command,
                        error,
                        message,
                    }),
                ))
            }
        }
    }

    fn flag_allowed(&self, flag: TransmissionFlags) -> Check {
        if self.neg.flags.contains(flag) {
            Ok(())
        } else {
            Err((ErrorCode::Inval, "command not advertised"))
        }
    }

    fn writable(&self) -> Check {
        if self.neg.flags.contains(TransmissionFlags::READ_ONLY) {
            Err((ErrorCode::Perm, "export is read-only"))
        } else {
            Ok(())
        }
    }

    fn in_bounds(&self, h: &RequestHeader, error: ErrorCode) -> Check {
        match h.offset.checked_add(h.len) {
            Some(end) if end <= self.neg.size => Ok(()),
            _ => Err((error, "request beyond the end of the export")),
        }
    }

    fn aligned(&self, h: &RequestHeader) -> Check {
        let min = u64::from(self.neg.block_sizes.minimum);
        if self.neg.block_sizes_agreed
            && min > 1
            && (!h.offset.is_multiple_of(min) || !h.len.is_multiple_of(min))
        {
            return Err((
                ErrorCode::Inval,
                "request not aligned to the minimum block size",
            ));
        }
        Ok(())
    }

    /// The command x flag matrix of proto.md "Command flags" plus the
    /// per-command rules; the error names follow section 4.6 of the digest.
    fn validate(&self, h: &RequestHeader, payload: &[u8]) -> Check {
        let f = h.flags;
        if f.bits() & !CmdFlags::all().bits() != 0 {
            return Err((ErrorCode::Inval, "unknown command flags"));
        }
        if f.contains(CmdFlags::FUA) && !self.neg.flags.contains(TransmissionFlags::SEND_FUA) {
            return Err((ErrorCode::Inval, "FUA not advertised"));
        }
        let extended = self.neg.mode == HeaderMode::Extended;
        let payload_len = f.contains(CmdFlags::PAYLOAD_LEN);
        if payload_len && !extended {
            return Err((ErrorCode::Inval, "PAYLOAD_LEN needs extended headers"));
        }
        let allowed = match h.command {
            Command::Read => CmdFlags::FUA | CmdFlags::DF,
            Command::Write => CmdFlags::FUA | CmdFlags::PAYLOAD_LEN,
            Command::WriteZeroes => CmdFlags::FUA | CmdFlags::NO_HOLE | CmdFlags::FAST_ZERO,
            Command::BlockStatus => CmdFlags::FUA | CmdFlags::REQ_ONE | CmdFlags::PAYLOAD_LEN,
            _ => CmdFlags::FUA,
        };
        if !allowed.contains(f) {
            return Err((ErrorCode::Inval, "flag not valid for this command"));
        }
        let max_payload = u64::from(self.neg.block_sizes.maximum);
        match h.command {
            Command::Read => {
                if f.contains(CmdFlags::DF) {
                    self.flag_allowed(TransmissionFlags::SEND_DF)?;
                }
                self.in_bounds(h, ErrorCode::Inval)?;
                self.aligned(h)?;
                if f.contains(CmdFlags::DF) && h.len > self.cfg.max_df_read {
                    return Err((ErrorCode::Overflow, "read too large to send unfragmented"));
                }
                if h.len > max_payload {
                    // Simple replies cannot split; structured ones could, but
                    // a bounded buffer per connection matters more.
                    let e = if self.neg.mode == HeaderMode::Simple {
                        ErrorCode::Inval
                    } else {
                        ErrorCode::Overflow
                    };
                    return Err((e, "read larger than the maximum payload"));
                }
                Ok(())
            }
            Command::Write => {
                // qemu sends extended WRITEs without PAYLOAD_LEN (see
                // RequestHeader::payload_len): accept both forms.
                self.writable()?;
                self.in_bounds(h, ErrorCode::NoSpc)?;
                self.aligned(h)?;
                if h.len > max_payload {
                    return Err((ErrorCode::Inval, "write larger than the maximum payload"));
                }
                Ok(())
            }
            Command::Flush => self.flag_allowed(TransmissionFlags::SEND_FLUSH),
            // Read-only is checked first: on a read-only export TRIM and
            // WRITE_ZEROES are EPERM even when not advertised (checklist 71).
            Command::Trim => {
                self.writable()?;
                self.flag_allowed(TransmissionFlags::SEND_TRIM)?;
                self.in_bounds(h, ErrorCode::Inval)?;
                self.aligned(h)
            }
            // CACHE is accepted even unadvertised: real clients send it
            // (checklist 95).
            Command::Cache => {
                self.in_bounds(h, ErrorCode::Inval)?;
                self.aligned(h)
            }
            Command::WriteZeroes => {
                self.writable()?;
                self.flag_allowed(TransmissionFlags::SEND_WRITE_ZEROES)?;
                if f.contains(CmdFlags::FAST_ZERO) {
                    self.flag_allowed(TransmissionFlags::SEND_FAST_ZERO)?;
                }
                self.in_bounds(h, ErrorCode::NoSpc)?;
                self.aligned(h)
            }
            Command::BlockStatus => self.validate_block_status(h, payload),
            // RESIZE on a read-only export is forbidden by configuration:
            // EPERM, as the extension text suggests.
            Command::Resize => {
                self.writable()?;
                self.flag_allowed(TransmissionFlags::SEND_RESIZE)
            }
            Command::Disc => Ok(()),
            Command::Unknown(_) => Err((ErrorCode::Inval, "unknown command")),
        }
    }

    fn validate_block_status(&self, h: &RequestHeader, payload: &[u8]) -> Check {
        if self.neg.mode == HeaderMode::Simple || self.neg.meta_contexts == 0 {
            return Err((ErrorCode::Inval, "no meta context selected"));
        }
        if h.flags.contains(CmdFlags::PAYLOAD_LEN) {
            self.flag_allowed(TransmissionFlags::BLOCK_STATUS_PAYLOAD)?;
            // The payload is u64 effect length + u32 IDs; it must be whole
            // before it can be checked, and is small (at most 64 IDs).
            if h.len < 8 || !(h.len - 8).is_multiple_of(4) || h.len > 8 + 4 * 64 {
                return Err((ErrorCode::Inval, "bad BLOCK_STATUS payload"));
            }
            let Some(p) = payload.get(..h.len as usize) else {
                // Not buffered yet: the caller retries with more input.
                return Ok(());
            };
            let effect = crate::wire::be_u64_at(p, 0);
            let mut seen = 0u64;
            for id in p.get(8..).unwrap_or_default().chunks_exact(4) {
                let id = u32::from_be_bytes(id.try_into().unwrap_or([0; 4]));
                let bit = id.checked_sub(1).filter(|b| *b < 64).map(|b| 1u64 << b);
                match bit {
                    Some(b) if self.neg.meta_contexts & b != 0 && seen & b == 0 => seen |= b,
                    _ => return Err((ErrorCode::Inval, "unknown or duplicate context ID")),
                }
            }
            let eff = RequestHeader { len: effect, ..*h };
            return self.in_bounds(&eff, ErrorCode::Inval);
        }
        self.in_bounds(h, ErrorCode::Inval)?;
        self.aligned(h)
    }

    fn complete(&mut self, done: bool) {
        if done {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
    }

    /// Reply "success, no payload" (any command but READ and BLOCK_STATUS).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn reply_ok(&mut self, to: ReplyTo, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let n = match self.neg.mode {
            HeaderMode::Extended => reply::encode_none(HeaderMode::Extended, to, out)?,
            _ => SimpleReply {
                cookie: to.cookie,
                error: 0,
            }
            .encode(out)?,
        };
        self.complete(true);
        Ok(n)
    }

    /// Reply with an error: a simple reply without structured replies, else
    /// an error chunk carrying `message` (always for READ, checklist 96).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn reply_error(
        &mut self,
        to: ReplyTo,
        error: ErrorCode,
        message: &str,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let n = match self.neg.mode {
            HeaderMode::Simple => SimpleReply {
                cookie: to.cookie,
                error: error.into(),
            }
            .encode(out)?,
            mode => reply::encode_error(mode, to, error, message, out)?,
        };
        self.complete(true);
        Ok(n)
    }

    /// Bytes that precede read data in a one-piece read reply: a simple
    /// reply header, or an OFFSET_DATA chunk header and offset.
    #[must_use]
    pub fn read_prefix_len(&self) -> usize {
        match self.neg.mode {
            HeaderMode::Simple => SIMPLE_REPLY_LEN,
            mode => ChunkHeader::len_for(mode) + OFFSET_DATA_PREFIX,
        }
    }

    /// Encode the prefix of a read reply carrying `len` bytes of data at
    /// `data_offset` into `out` (exactly [`Transmission::read_prefix_len`]
    /// bytes); the data follows it. `done` ends the reply (ignored in simple
    /// mode, where a read reply is always complete).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn encode_read_prefix(
        &mut self,
        to: ReplyTo,
        data_offset: u64,
        len: usize,
        done: bool,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let (n, done) = match self.neg.mode {
            HeaderMode::Simple => (
                SimpleReply {
                    cookie: to.cookie,
                    error: 0,
                }
                .encode(out)?,
                true,
            ),
            mode => (
                reply::encode_offset_data_header(mode, to, data_offset, len, done, out)?,
                done,
            ),
        };
        self.complete(done);
        Ok(n)
    }

    /// Encode an OFFSET_HOLE chunk (structured or extended mode only).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn encode_hole(
        &mut self,
        to: ReplyTo,
        hole_offset: u64,
        len: u32,
        done: bool,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let n = reply::encode_offset_hole(self.neg.mode, to, hole_offset, len, done, out)?;
        self.complete(done);
        Ok(n)
    }

    /// Encode a final NONE chunk (structured or extended mode only).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn encode_done(&mut self, to: ReplyTo, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let n = reply::encode_none(self.neg.mode, to, out)?;
        self.complete(true);
        Ok(n)
    }

    /// Encode one block-status chunk for context `id` (type 5, or 6 with
    /// extended headers, checklist 119).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn encode_block_status(
        &mut self,
        to: ReplyTo,
        id: u32,
        extents: &[BlockStatusExtent],
        done: bool,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let n = reply::encode_block_status(self.neg.mode, to, id, extents, done, out)?;
        self.complete(done);
        Ok(n)
    }
}
