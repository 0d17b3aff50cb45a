//! A validated request as the caller sees it: the operation to run
//! ([`Op`]) and the token its reply consumes ([`Pending`]).

use crate::flags::CmdFlags;
use crate::types::{Command, Cookie};
use crate::wire::reply::ReplyTo;
use crate::wire::request::Request;

/// One validated operation, with the spec's per-command rules already
/// applied: bounds, flags against what was advertised, read-only, the
/// BLOCK_STATUS payload parsed ([proto.md "Request types"]).
///
/// [proto.md "Request types"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#request-types
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op<'a> {
    /// `NBD_CMD_READ`: reply with [`Connection::reply_read`](super::Connection::reply_read) (or
    /// chunks, when structured). `len` is at most the maximum payload.
    Read {
        /// Offset in the export.
        offset: u64,
        /// Bytes to read (0 is legal).
        len: usize,
        /// `NBD_CMD_FLAG_DF`: the reply must be one data chunk.
        df: bool,
    },
    /// `NBD_CMD_WRITE`: `data` borrows the input; use it before consuming.
    Write {
        /// Offset in the export.
        offset: u64,
        /// The payload.
        data: &'a [u8],
        /// `NBD_CMD_FLAG_FUA`: durable before the reply.
        fua: bool,
    },
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim {
        /// Offset in the export.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// `NBD_CMD_FLAG_FUA`.
        fua: bool,
    },
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes {
        /// Offset in the export.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// `NBD_CMD_FLAG_FUA`.
        fua: bool,
        /// The range may be deallocated (no `NBD_CMD_FLAG_NO_HOLE`).
        may_trim: bool,
        /// `NBD_CMD_FLAG_FAST_ZERO`: fail with `NBD_ENOTSUP` unless fast.
        fast: bool,
    },
    /// `NBD_CMD_CACHE`.
    Cache {
        /// Offset in the export.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// `NBD_CMD_BLOCK_STATUS`: reply with one chunk per context of
    /// `contexts`
    /// ([`Connection::block_status_chunk`](super::Connection::block_status_chunk),
    /// the last with
    /// [`Connection::reply_block_status`](super::Connection::reply_block_status)).
    /// Note the numbering: bit i of `contexts` is context ID i + 1, the
    /// `id` those calls take.
    BlockStatus {
        /// Offset in the export.
        offset: u64,
        /// The effect length (from the payload in extended mode).
        len: u64,
        /// `NBD_CMD_FLAG_REQ_ONE`: one extent per context.
        req_one: bool,
        /// The contexts asked about (bit i = context ID i + 1): the
        /// payload's IDs, or every selected context.
        contexts: u64,
    },
    /// `NBD_CMD_RESIZE`: change the size to `size`; a successful
    /// [`Connection::reply_ok`](super::Connection::reply_ok) records it.
    Resize {
        /// The new size.
        size: u64,
    },
}

impl<'a> Op<'a> {
    /// The operation of a request that passed validation. `selected` is the
    /// negotiated meta-context selection.
    pub(crate) fn of(req: &Request<'a>, selected: u64) -> Self {
        let h = req.header;
        let fua = h.flags.contains(CmdFlags::FUA);
        match h.command {
            // Validated against the maximum payload, which fits usize.
            Command::Read => Self::Read {
                offset: h.offset,
                len: usize::try_from(h.len).unwrap_or(0),
                df: h.flags.contains(CmdFlags::DF),
            },
            Command::Write => Self::Write {
                offset: h.offset,
                data: req.data,
                fua,
            },
            Command::Trim => Self::Trim {
                offset: h.offset,
                len: h.len,
                fua,
            },
            Command::WriteZeroes => Self::WriteZeroes {
                offset: h.offset,
                len: h.len,
                fua,
                may_trim: !h.flags.contains(CmdFlags::NO_HOLE),
                fast: h.flags.contains(CmdFlags::FAST_ZERO),
            },
            Command::Cache => Self::Cache {
                offset: h.offset,
                len: h.len,
            },
            Command::BlockStatus => {
                let (len, contexts) = if h.flags.contains(CmdFlags::PAYLOAD_LEN) {
                    block_status_payload(req.data)
                } else {
                    (h.len, selected)
                };
                Self::BlockStatus {
                    offset: h.offset,
                    len,
                    req_one: h.flags.contains(CmdFlags::REQ_ONE),
                    contexts,
                }
            }
            Command::Resize => Self::Resize { size: h.offset },
            // Validation admits nothing else; FLUSH (and DISC, answered
            // before) take no arguments.
            _ => Self::Flush,
        }
    }
}

/// Effect length and context set of a validated BLOCK_STATUS payload (u64
/// length, then u32 IDs; checklist 120).
fn block_status_payload(p: &[u8]) -> (u64, u64) {
    let len = p.first_chunk::<8>().map_or(0, |b| u64::from_be_bytes(*b));
    let mut ids = 0u64;
    for id in p.get(8..).unwrap_or_default().chunks_exact(4) {
        let id = u32::from_be_bytes(id.try_into().unwrap_or([0; 4]));
        if let Some(bit) = id.checked_sub(1).filter(|b| *b < 64) {
            ids |= 1 << bit;
        }
    }
    (len, ids)
}

/// The reply a request is owed. Not `Clone`: each request gets exactly one
/// final reply, and the final `reply_*` call consumes this (non-final
/// chunks borrow it), so a request cannot be answered twice:
///
/// ```compile_fail
/// use nbd_proto::server::*;
/// fn twice(c: &mut Connection, p: Pending, out: &mut [u8]) {
///     let _ = c.reply_ok(p, out);
///     let _ = c.reply_ok(p, out);
/// }
/// ```
#[must_use = "every request needs exactly one final reply"]
#[derive(Debug, PartialEq, Eq)]
pub struct Pending {
    pub(crate) to: ReplyTo,
    pub(crate) command: Command,
    pub(crate) flags: CmdFlags,
    pub(crate) len: u64,
}

impl Pending {
    pub(crate) fn new(req: &Request<'_>) -> Self {
        let h = req.header;
        let len = match h.command {
            Command::BlockStatus if h.flags.contains(CmdFlags::PAYLOAD_LEN) => {
                block_status_payload(req.data).0
            }
            _ => h.len,
        };
        Self {
            to: ReplyTo {
                cookie: h.cookie,
                offset: h.offset,
            },
            command: h.command,
            flags: h.flags,
            len,
        }
    }

    /// The request's cookie.
    #[must_use]
    pub fn cookie(&self) -> Cookie {
        self.to.cookie
    }

    /// The request's offset (RESIZE: the new size).
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.to.offset
    }

    /// The command being answered.
    #[must_use]
    pub fn command(&self) -> Command {
        self.command
    }

    /// The request's flags.
    #[must_use]
    pub fn flags(&self) -> CmdFlags {
        self.flags
    }

    /// The request's length (BLOCK_STATUS: the effect length).
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length request.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A WRITE accepted on its header alone, whose payload the caller receives
/// straight into its own storage ([`Connection::begin_write_stream`](super::Connection::begin_write_stream)).
/// The next `len` bytes of the stream are the payload: what is already
/// buffered comes back from `handle_input` as [`Input::WriteData`](super::Input::WriteData),
/// bytes read elsewhere are reported with
/// [`Connection::payload_received`](super::Connection::payload_received).
/// Reply through `reply` once all of it is stored.
#[must_use = "every request needs exactly one final reply"]
#[derive(Debug, PartialEq, Eq)]
pub struct StreamedWrite {
    /// Offset in the export.
    pub offset: u64,
    /// Payload bytes to come.
    pub len: u64,
    /// `NBD_CMD_FLAG_FUA`: durable before the reply.
    pub fua: bool,
    /// The token the reply consumes.
    pub reply: Pending,
}
