//! Reply encoding for the transmission phase, in the negotiated layout
//! ([proto.md "Simple reply message"], [proto.md "Structured reply chunk message"]).
//!
//! Every final reply consumes the request's [`Pending`]; on a short buffer
//! it is handed back in [`NeedRoom`] with nothing written, so no reply can
//! be lost or half-written.
//!
//! [proto.md "Simple reply message"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#simple-reply-message
//! [proto.md "Structured reply chunk message"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#structured-reply-chunk-message

use super::question::NeedRoom;
use super::request::Pending;
use super::transmission::Transmission;
use crate::error::BufferTooSmall;
use crate::flags::CmdFlags;
use crate::types::{Command, ErrorCode, HeaderMode};
use crate::wire::reply::{
    self, BlockStatusExtent, ChunkHeader, OFFSET_DATA_PREFIX, SIMPLE_REPLY_LEN, SimpleReply,
};

/// The longest read-reply prefix (an extended OFFSET_DATA chunk header and
/// its offset).
pub const READ_PREFIX_MAX: usize = 32 + OFFSET_DATA_PREFIX;
/// Room that always holds an error reply with a message of `n` bytes.
#[must_use]
pub const fn error_reply_len(message_len: usize) -> usize {
    32 + 6 + message_len
}
/// Room that always holds a payload-less reply (simple, or an extended
/// NONE chunk).
pub const OK_REPLY_MAX: usize = 32;
/// The largest 32-bit extent length that keeps 512-byte alignment: longer
/// runs are split (compact block status carries 32-bit lengths).
const COMPACT_EXTENT_MAX: u64 = u32::MAX as u64 & !511;

fn room(p: Pending) -> impl FnOnce(BufferTooSmall) -> NeedRoom<Pending> {
    move |e| NeedRoom {
        required: e.required,
        token: p,
    }
}

/// The length written, with the token kept for bookkeeping; or the token
/// handed back with the room needed.
fn keep(
    r: Result<usize, BufferTooSmall>,
    p: Pending,
) -> Result<(usize, Pending), NeedRoom<Pending>> {
    match r {
        Ok(n) => Ok((n, p)),
        Err(e) => Err(NeedRoom {
            required: e.required,
            token: p,
        }),
    }
}

impl Transmission {
    fn finished(&mut self, p: &Pending) {
        self.in_flight = self.in_flight.saturating_sub(1);
        // A successful RESIZE changes the size later requests are checked
        // against (the RESIZE extension).
        if p.command == Command::Resize {
            self.neg.size = p.to.offset;
        }
    }

    pub(crate) fn reply_ok(
        &mut self,
        p: Pending,
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<Pending>> {
        let n = match self.neg.mode {
            HeaderMode::Extended => reply::encode_none(HeaderMode::Extended, p.to, out),
            _ => SimpleReply {
                cookie: p.to.cookie,
                error: 0,
            }
            .encode(out),
        };
        let (n, p) = keep(n, p)?;
        self.finished(&p);
        Ok(n)
    }

    pub(crate) fn reply_error(
        &mut self,
        p: Pending,
        error: ErrorCode,
        message: &str,
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<Pending>> {
        let n = match self.neg.mode {
            HeaderMode::Simple => SimpleReply {
                cookie: p.to.cookie,
                error: error.into(),
            }
            .encode(out),
            mode => reply::encode_error(mode, p.to, error, message, out),
        };
        let n = n.map_err(room(p))?;
        // A failed RESIZE changes nothing.
        self.in_flight = self.in_flight.saturating_sub(1);
        Ok(n)
    }

    pub(crate) fn read_prefix_len(&self) -> usize {
        match self.neg.mode {
            HeaderMode::Simple => SIMPLE_REPLY_LEN,
            mode => ChunkHeader::len_for(mode) + OFFSET_DATA_PREFIX,
        }
    }

    pub(crate) fn reply_read(
        &mut self,
        p: Pending,
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<Pending>> {
        let n = match self.neg.mode {
            HeaderMode::Simple => SimpleReply {
                cookie: p.to.cookie,
                error: 0,
            }
            .encode(out),
            // An OFFSET_DATA chunk carries at least one byte (checklist
            // 98): an empty READ is answered with a lone NONE chunk.
            mode if p.len == 0 => reply::encode_none(mode, p.to, out),
            mode => {
                let len = usize::try_from(p.len).unwrap_or(usize::MAX);
                reply::encode_offset_data_header(mode, p.to, p.to.offset, len, true, out)
            }
        };
        let (n, p) = keep(n, p)?;
        self.finished(&p);
        Ok(n)
    }

    fn structured_only(&self) -> Result<HeaderMode, BufferTooSmall> {
        // Chunks need structured replies; a simple-mode caller gets nothing
        // written (`required: 0` cannot be satisfied by growing).
        match self.neg.mode {
            HeaderMode::Simple => {
                debug_assert!(false, "chunks need structured replies");
                Err(BufferTooSmall { required: 0 })
            }
            mode => Ok(mode),
        }
    }

    pub(crate) fn read_chunk(
        &mut self,
        p: &Pending,
        offset: u64,
        len: usize,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let mode = self.structured_only()?;
        reply::encode_offset_data_header(mode, p.to, offset, len, false, out)
    }

    pub(crate) fn read_hole(
        &mut self,
        p: &Pending,
        offset: u64,
        len: u32,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let mode = self.structured_only()?;
        reply::encode_offset_hole(mode, p.to, offset, len, false, out)
    }

    pub(crate) fn reply_done(
        &mut self,
        p: Pending,
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<Pending>> {
        let n = match self.structured_only() {
            Ok(mode) => reply::encode_none(mode, p.to, out),
            Err(e) => Err(e),
        };
        let (n, p) = keep(n, p)?;
        self.finished(&p);
        Ok(n)
    }

    fn block_status(
        &self,
        p: &Pending,
        id: u32,
        extents: &[BlockStatusExtent],
        done: bool,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let mode = self.structured_only()?;
        let it = Normalized::new(extents, p, mode);
        reply::encode_block_status_iter(mode, p.to, id, it, done, out)
    }

    pub(crate) fn block_status_chunk(
        &mut self,
        p: &Pending,
        id: u32,
        extents: &[BlockStatusExtent],
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        self.block_status(p, id, extents, false, out)
    }

    pub(crate) fn reply_block_status(
        &mut self,
        p: Pending,
        id: u32,
        extents: &[BlockStatusExtent],
        out: &mut [u8],
    ) -> Result<usize, NeedRoom<Pending>> {
        let n = self
            .block_status(&p, id, extents, true, out)
            .map_err(room(p))?;
        self.in_flight = self.in_flight.saturating_sub(1);
        Ok(n)
    }
}

/// The spec's rules for block-status descriptors, applied to what the
/// caller's store reported ([proto.md "Request types"]):
/// - zero-length runs are dropped, and the descriptors stop where the
///   request's effect length is covered (the last one clipped);
/// - with `NBD_CMD_FLAG_REQ_ONE`, exactly one descriptor;
/// - neighbours with the same status are merged (they SHOULD differ);
/// - in compact mode (32-bit lengths) longer runs are split at a 512-aligned
///   32-bit length;
/// - nothing reported: one descriptor covering the request with status 0.
///
/// [proto.md "Request types"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#request-types
#[derive(Debug, Clone)]
pub(crate) struct Normalized<'e> {
    rest: &'e [BlockStatusExtent],
    /// Bytes still to describe.
    left: u64,
    req_one: bool,
    compact: bool,
    /// A run being split (compact mode) or the synthetic fallback.
    carry: Option<BlockStatusExtent>,
    emitted: bool,
}

impl<'e> Normalized<'e> {
    pub(crate) fn new(extents: &'e [BlockStatusExtent], p: &Pending, mode: HeaderMode) -> Self {
        let left = p.len.max(1);
        let reported = extents.iter().any(|e| e.len > 0);
        Self {
            rest: extents,
            left,
            req_one: p.flags.contains(CmdFlags::REQ_ONE),
            compact: mode != HeaderMode::Extended,
            carry: (!reported).then_some(BlockStatusExtent {
                len: left,
                flags: 0,
            }),
            emitted: false,
        }
    }

    /// The next merged run from the caller's list, clipped to what is left.
    fn next_run(&mut self) -> Option<BlockStatusExtent> {
        let mut run: Option<BlockStatusExtent> = None;
        while let Some((e, tail)) = self.rest.split_first() {
            if e.len == 0 {
                self.rest = tail;
                continue;
            }
            match &mut run {
                None => run = Some(*e),
                Some(r) if r.flags == e.flags && !self.req_one && r.len < self.left => {
                    r.len = r.len.saturating_add(e.len);
                }
                Some(_) => break,
            }
            self.rest = tail;
        }
        run.map(|mut r| {
            r.len = r.len.min(self.left);
            r
        })
    }
}

impl Iterator for Normalized<'_> {
    type Item = BlockStatusExtent;

    fn next(&mut self) -> Option<BlockStatusExtent> {
        if self.left == 0 || (self.req_one && self.emitted) {
            return None;
        }
        let mut run = match self.carry.take() {
            Some(r) => r,
            None => self.next_run()?,
        };
        if self.compact && run.len > COMPACT_EXTENT_MAX {
            self.carry = Some(BlockStatusExtent {
                len: run.len - COMPACT_EXTENT_MAX,
                flags: run.flags,
            });
            run.len = COMPACT_EXTENT_MAX;
        }
        self.left -= run.len;
        self.emitted = true;
        Some(run)
    }
}
