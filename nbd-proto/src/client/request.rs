//! Requests a client sends, checked against what was negotiated before a
//! byte is written ([proto.md "Request types"], [proto.md "Command flags"], "Block
//! size constraints"): a request the server must reject never leaves.
//!
//! [proto.md "Request types"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#request-types
//! [proto.md "Command flags"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#command-flags

use crate::error::BufferTooSmall;
use crate::flags::{CmdFlags, TransmissionFlags as TF};
use crate::server::BlockSizes;
use crate::types::{Command, Cookie, HeaderMode};

use super::ClientNegotiated;

/// One request, before the connection gives it a cookie.
///
/// Build it with the constructors ([`Cmd::read`], [`Cmd::write`], …) and
/// add flags with [`Cmd::with_flags`]; `len` of a WRITE is its data's
/// length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmd<'d> {
    /// The command.
    pub command: Command,
    /// Command flags (`NBD_CMD_FLAG_*`); `PAYLOAD_LEN` is the
    /// connection's business and must not be set.
    pub flags: CmdFlags,
    /// Offset in bytes.
    pub offset: u64,
    /// Effect length in bytes.
    pub len: u64,
    /// The WRITE payload; empty for every other command.
    pub data: &'d [u8],
}

impl<'d> Cmd<'d> {
    const fn new(command: Command, offset: u64, len: u64) -> Self {
        Self {
            command,
            flags: CmdFlags::empty(),
            offset,
            len,
            data: &[],
        }
    }

    /// `NBD_CMD_READ` of `len` bytes at `offset`.
    #[must_use]
    pub const fn read(offset: u64, len: u64) -> Self {
        Self::new(Command::Read, offset, len)
    }

    /// `NBD_CMD_WRITE` of `data` at `offset`.
    #[must_use]
    pub const fn write(offset: u64, data: &'d [u8]) -> Self {
        Self {
            data,
            ..Self::new(Command::Write, offset, data.len() as u64)
        }
    }

    /// `NBD_CMD_FLUSH`.
    #[must_use]
    pub const fn flush() -> Self {
        Self::new(Command::Flush, 0, 0)
    }

    /// `NBD_CMD_TRIM` of `len` bytes at `offset`.
    #[must_use]
    pub const fn trim(offset: u64, len: u64) -> Self {
        Self::new(Command::Trim, offset, len)
    }

    /// `NBD_CMD_WRITE_ZEROES` of `len` bytes at `offset` (add `NO_HOLE`
    /// or `FAST_ZERO` with [`Cmd::with_flags`]).
    #[must_use]
    pub const fn write_zeroes(offset: u64, len: u64) -> Self {
        Self::new(Command::WriteZeroes, offset, len)
    }

    /// `NBD_CMD_CACHE` of `len` bytes at `offset`.
    #[must_use]
    pub const fn cache(offset: u64, len: u64) -> Self {
        Self::new(Command::Cache, offset, len)
    }

    /// `NBD_CMD_BLOCK_STATUS` for `base:allocation` over `len` bytes at
    /// `offset` (the length is a hint; the reply may cover less).
    #[must_use]
    pub const fn block_status(offset: u64, len: u64) -> Self {
        Self::new(Command::BlockStatus, offset, len)
    }

    /// `NBD_CMD_DISC`: no reply; the server closes after answering every
    /// request sent before it.
    #[must_use]
    pub const fn disconnect() -> Self {
        Self::new(Command::Disc, 0, 0)
    }

    /// The same request with `flags` added.
    #[must_use]
    pub const fn with_flags(mut self, flags: CmdFlags) -> Self {
        self.flags = self.flags.union(flags);
        self
    }
}

/// A request [`Connection::encode_request`](super::Connection::encode_request)
/// did not send. Nothing changed: no slot was taken and nothing was
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Negotiation has not finished.
    #[error("negotiation has not finished")]
    NotReady,
    /// `NBD_CMD_DISC` was sent or the connection was lost.
    #[error("the connection is closed or closing")]
    Closed,
    /// Every slot of the in-flight table is taken: wait for a reply.
    #[error("too many requests in flight")]
    Busy,
    /// The server did not advertise this command (or, for BLOCK_STATUS, no
    /// `base:allocation` context was negotiated).
    #[error("{0:?} not supported by the server")]
    Unsupported(Command),
    /// These flags are unknown, not advertised, or not valid on the command.
    #[error("flags {0:?} not allowed on this request")]
    Flags(CmdFlags),
    /// The export is read-only.
    #[error("the export is read-only")]
    ReadOnly,
    /// The range runs past the end of the export.
    #[error("range beyond the end of the export")]
    OutOfRange,
    /// A zero length, or a WRITE whose `len` differs from its data.
    #[error("bad length")]
    BadLength,
    /// Longer than the maximum payload (READ/WRITE) or than the compact
    /// header's 32-bit length field: split the request.
    #[error("request too long")]
    TooLong,
    /// Offset or length is not a multiple of the minimum block size.
    #[error("misaligned to the minimum block size")]
    Misaligned,
    /// The output slice is too small: `required` bytes are needed.
    #[error("buffer too small: {required} bytes required")]
    BufferTooSmall {
        /// Bytes the frame needs.
        required: usize,
    },
}

impl From<BufferTooSmall> for RequestError {
    fn from(e: BufferTooSmall) -> Self {
        Self::BufferTooSmall {
            required: e.required,
        }
    }
}

/// A request written by [`Connection::encode_request`](super::Connection::encode_request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Sent {
    /// The cookie the reply will carry.
    pub cookie: Cookie,
    /// The request's slot in the in-flight table (see
    /// [`ReadData::slot`](super::ReadData::slot)); `None` for `NBD_CMD_DISC`.
    pub slot: Option<usize>,
    /// Bytes written to the output slice (header and payload).
    pub len: usize,
}

/// The largest READ/WRITE payload: the advertised maximum, or the spec's
/// 32 MiB default ([proto.md "Size constraints"]).
///
/// [proto.md "Size constraints"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#size-constraints
pub(crate) fn max_payload(neg: &ClientNegotiated) -> u64 {
    u64::from(neg.block_sizes.unwrap_or(BlockSizes::DEFAULT).maximum)
}

fn required_flag(command: Command) -> Option<TF> {
    match command {
        Command::Flush => Some(TF::SEND_FLUSH),
        Command::Trim => Some(TF::SEND_TRIM),
        Command::WriteZeroes => Some(TF::SEND_WRITE_ZEROES),
        Command::Cache => Some(TF::SEND_CACHE),
        Command::Resize => Some(TF::SEND_RESIZE),
        _ => None,
    }
}

/// Flags `cmd.command` may carry on this connection.
fn allowed_flags(cmd: Command, neg: &ClientNegotiated) -> CmdFlags {
    let f = neg.flags;
    let mut ok = CmdFlags::empty();
    // FUA is valid on every command once advertised (digest note 4).
    if f.contains(TF::SEND_FUA) {
        ok |= CmdFlags::FUA;
    }
    match cmd {
        Command::Read if f.contains(TF::SEND_DF) && neg.mode != HeaderMode::Simple => {
            ok |= CmdFlags::DF;
        }
        Command::WriteZeroes => {
            ok |= CmdFlags::NO_HOLE;
            if f.contains(TF::SEND_FAST_ZERO) {
                ok |= CmdFlags::FAST_ZERO;
            }
        }
        Command::BlockStatus => ok |= CmdFlags::REQ_ONE,
        Command::Disc => ok = CmdFlags::empty(),
        _ => {}
    }
    ok
}

/// Check `cmd` against the negotiated state (client obligations of
/// [proto.md "Request message"] and "Block size constraints").
///
/// [proto.md "Request message"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#request-message
pub(crate) fn validate(cmd: &Cmd<'_>, neg: &ClientNegotiated) -> Result<(), RequestError> {
    let c = cmd.command;
    let bad = cmd.flags.difference(allowed_flags(c, neg));
    if !bad.is_empty() {
        return Err(RequestError::Flags(bad));
    }
    match c {
        Command::Unknown(_) => return Err(RequestError::Unsupported(c)),
        Command::BlockStatus if neg.base_allocation.is_none() => {
            return Err(RequestError::Unsupported(c));
        }
        _ => {}
    }
    if let Some(flag) = required_flag(c)
        && !neg.flags.contains(flag)
    {
        return Err(RequestError::Unsupported(c));
    }
    let writes = matches!(
        c,
        Command::Write | Command::Trim | Command::WriteZeroes | Command::Resize
    );
    if writes && neg.flags.contains(TF::READ_ONLY) {
        return Err(RequestError::ReadOnly);
    }
    match c {
        // Both fields MUST be 0 (proto.md "Request types").
        Command::Flush | Command::Disc if cmd.offset == 0 && cmd.len == 0 => Ok(()),
        Command::Flush | Command::Disc => Err(RequestError::BadLength),
        // RESIZE carries the new size in `offset`.
        Command::Resize => Ok(()),
        _ => validate_range(cmd, neg),
    }
}

fn validate_range(cmd: &Cmd<'_>, neg: &ClientNegotiated) -> Result<(), RequestError> {
    let is_write = cmd.command == Command::Write;
    if cmd.len == 0 || (is_write && cmd.data.len() as u64 != cmd.len) {
        return Err(RequestError::BadLength);
    }
    if !is_write && !cmd.data.is_empty() {
        return Err(RequestError::BadLength);
    }
    let end = cmd
        .offset
        .checked_add(cmd.len)
        .ok_or(RequestError::OutOfRange)?;
    if end > neg.size {
        return Err(RequestError::OutOfRange);
    }
    let payload = matches!(cmd.command, Command::Read | Command::Write);
    if payload && cmd.len > max_payload(neg) {
        return Err(RequestError::TooLong);
    }
    if neg.mode != HeaderMode::Extended && u32::try_from(cmd.len).is_err() {
        return Err(RequestError::TooLong);
    }
    if let Some(b) = neg.block_sizes {
        let min = u64::from(b.minimum.max(1));
        // The last block of an export whose size is not a multiple may
        // be shorter (proto.md "Block size constraints").
        let tail_ok = end == neg.size;
        if !cmd.offset.is_multiple_of(min) || (!cmd.len.is_multiple_of(min) && !tail_ok) {
            return Err(RequestError::Misaligned);
        }
    }
    Ok(())
}
