//! The server transmission state machine ([proto.md "Transmission phase"]),
//! used by [`Connection`](super::Connection).
//!
//! [`Transmission::handle_request`] frames and validates each request
//! against the negotiated state and says either "execute this operation"
//! or "answer this cookie with this error and keep going"; it returns
//! `Err` only where the connection must end. Replies are encoded in
//! `replies.rs`.
//!
//! [proto.md "Transmission phase"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#transmission-phase

use super::export::Negotiated;
use super::request::{Op, Pending, StreamedWrite};
use crate::error::ProtocolError;
use crate::flags::{CmdFlags, TransmissionFlags};
use crate::types::{Command, ErrorCode, HeaderMode};
use crate::wire::request::{Request, RequestHeader};

/// Limits of the transmission phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransmissionConfig {
    /// A rejected payload up to this size is drained and answered with an
    /// error; a larger one ends the connection. Payloads of at most 32 MiB
    /// SHOULD NOT be treated as a denial of service
    /// ([proto.md "Request message"]), so this is never below that.
    ///
    /// [proto.md "Request message"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#request-message
    pub max_drain: u64,
    /// Largest READ honoured with `NBD_CMD_FLAG_DF` (the spec requires at
    /// least 64 KiB; structured replies send reads in one chunk anyway).
    pub max_df_read: u64,
    /// Largest READ or WRITE accepted from a client that did not agree to
    /// block sizes (no `NBD_INFO_BLOCK_SIZE` in GO), when above the
    /// advertised maximum. The spec lets a server refuse more than 32 MiB
    /// then, but real clients send more (the reference NBD test client up
    /// to 47.5 MiB; nbdkit accepts 64 MiB), so the default is 64 MiB. The
    /// caller's input buffer must hold this plus a header.
    pub max_unnegotiated_payload: u32,
}

impl Default for TransmissionConfig {
    fn default() -> Self {
        Self {
            max_drain: 128 * 1024 * 1024,
            max_df_read: 64 * 1024 * 1024,
            max_unnegotiated_payload: 64 * 1024 * 1024,
        }
    }
}

/// What the caller must do with one request.
#[derive(Debug)]
pub(crate) enum Incoming<'a> {
    /// A valid request: run it, then reply through `Pending`.
    Command(Op<'a>, Pending),
    /// A well-formed but invalid request: reply with the error and go on.
    /// Any payload is being drained by the state machine.
    Reject(Pending, ErrorCode, &'static str),
    /// `NBD_CMD_DISC`: finish in-flight requests, then close. No reply.
    Disconnect,
    /// Bytes of a streamed WRITE's payload.
    Payload(&'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Draining(u64),
    /// A streamed WRITE's payload bytes still to come.
    Payload(u64),
    Disconnected,
}

/// The transmission state machine for one connection.
#[derive(Debug, Clone)]
pub(crate) struct Transmission {
    pub(crate) neg: Negotiated,
    cfg: TransmissionConfig,
    state: State,
    pub(crate) in_flight: usize,
    shutting_down: bool,
}

type Check = Result<(), (ErrorCode, &'static str)>;

impl Transmission {
    /// Start transmission with the negotiation's result.
    pub(crate) fn new(neg: Negotiated, cfg: TransmissionConfig) -> Self {
        let max_drain = cfg.max_drain.max(32 * 1024 * 1024);
        Self {
            neg,
            cfg: TransmissionConfig { max_drain, ..cfg },
            state: State::Running,
            in_flight: 0,
            shutting_down: false,
        }
    }

    /// True once `NBD_CMD_DISC` arrived.
    pub(crate) fn is_disconnecting(&self) -> bool {
        self.state == State::Disconnected
    }

    /// True when more requests may be read.
    pub(crate) fn wants_read(&self) -> bool {
        self.state != State::Disconnected
    }

    /// From now on every valid request is answered `NBD_ESHUTDOWN`
    /// (checklist 112).
    pub(crate) fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// The largest READ/WRITE payload accepted: the advertised maximum, or
    /// more for a client that never agreed to block sizes.
    pub(crate) fn max_payload(&self) -> u64 {
        let advertised = self.neg.block_sizes.maximum;
        if self.neg.block_sizes_agreed {
            u64::from(advertised)
        } else {
            u64::from(advertised.max(self.cfg.max_unnegotiated_payload))
        }
    }

    /// The bytes the driver must buffer to make progress: a whole request
    /// frame (header plus payload) when one is partially present.
    ///
    /// A payload above the maximum payload is never needed whole: such a
    /// request is rejected on its header and its payload drained as it
    /// streams in, so a client cannot make the driver buffer more than the
    /// maximum payload plus a header (the attack: a 128 MiB WRITE header on
    /// many connections).
    pub(crate) fn needed(&self, input: &[u8]) -> usize {
        if let State::Payload(_) = self.state {
            // Payload bytes are handed out as they come: nothing is needed
            // whole.
            return 0;
        }
        let mode = self.neg.mode;
        let header = mode.request_header_len();
        match RequestHeader::decode(input, mode) {
            Ok(Some((h, _))) => {
                let payload = h.payload_len(mode);
                if payload > self.max_payload() {
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
    pub(crate) fn handle_request<'a>(
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
            State::Payload(left) => {
                let n = left.min(input.len() as u64) as usize;
                self.payload_received(n);
                let data = input.get(..n).unwrap_or_default();
                return Ok((n, (n > 0).then_some(Incoming::Payload(data))));
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
            && payload > self.max_payload()
        {
            return Err(ProtocolError::PayloadTooLarge(payload));
        }
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
                let req = Request { header: h, data };
                let pending = Pending::new(&req);
                if self.shutting_down {
                    let why = "server is shutting down";
                    return Ok((
                        end,
                        Some(Incoming::Reject(pending, ErrorCode::Shutdown, why)),
                    ));
                }
                let op = Op::of(&req, self.neg.meta_contexts);
                Ok((end, Some(Incoming::Command(op, pending))))
            }
            Err((error, message)) => {
                self.in_flight += 1;
                if payload > 0 {
                    // Drain exactly the payload before the next header, so its
                    // bytes are never parsed as requests (checklist 80).
                    self.state = State::Draining(payload);
                }
                let req = Request {
                    header: h,
                    data: &[],
                };
                Ok((
                    hlen,
                    Some(Incoming::Reject(Pending::new(&req), error, message)),
                ))
            }
        }
    }

    /// Accept the WRITE whose header starts `input` without its payload,
    /// if it is valid, at least `min_len` bytes long and its offset and
    /// length are multiples of `align`. Everything else (another command,
    /// an invalid WRITE, a shutdown) is left to `handle_request`, which
    /// answers it as usual. Returns the header's length.
    pub(crate) fn begin_stream(
        &mut self,
        input: &[u8],
        min_len: u64,
        align: u64,
    ) -> Option<(usize, StreamedWrite)> {
        if self.state != State::Running || self.shutting_down {
            return None;
        }
        let mode = self.neg.mode;
        let (h, hlen) = RequestHeader::decode(input, mode).ok()??;
        let align = align.max(1);
        let fits = h.len >= min_len.max(1)
            && h.offset.is_multiple_of(align)
            && h.len.is_multiple_of(align)
            && h.payload_len(mode) == h.len;
        if h.command != Command::Write || !fits || self.validate(&h, &[]).is_err() {
            return None;
        }
        self.in_flight += 1;
        self.state = State::Payload(h.len);
        let req = Request {
            header: h,
            data: &[],
        };
        let write = StreamedWrite {
            offset: h.offset,
            len: h.len,
            fua: h.flags.contains(CmdFlags::FUA),
            reply: Pending::new(&req),
        };
        Some((hlen, write))
    }

    /// Payload bytes of a streamed WRITE still to come (0 when none is
    /// being received).
    pub(crate) fn payload_left(&self) -> u64 {
        match self.state {
            State::Payload(left) => left,
            _ => 0,
        }
    }

    /// `n` more payload bytes of the streamed WRITE arrived (at most
    /// [`Transmission::payload_left`]; more is the caller's bug and is
    /// clamped). Returns what is left.
    pub(crate) fn payload_received(&mut self, n: usize) -> u64 {
        let left = self.payload_left();
        debug_assert!(n as u64 <= left, "{n} payload bytes reported, {left} left");
        let rest = left.saturating_sub(n as u64);
        if let State::Payload(_) = self.state {
            self.state = if rest == 0 {
                State::Running
            } else {
                State::Payload(rest)
            };
        }
        rest
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

    /// The command x flag matrix of [proto.md "Command flags"] plus the
    /// per-command rules; the error names follow section 4.6 of the digest.
    ///
    /// [proto.md "Command flags"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#command-flags
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
        let max_payload = self.max_payload();
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
}
