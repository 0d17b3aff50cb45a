//! Transmission replies: simple replies, structured (20-byte) and extended
//! (32-byte) reply chunk headers, and every chunk payload (data, holes,
//! block status, errors).
//!
//! For `NBD_CMD_READ` a driver reserves [`ChunkHeader::len_for`] +
//! [`OFFSET_DATA_PREFIX`] bytes (or [`SIMPLE_REPLY_LEN`]), lets the backend
//! read straight into the space after them, then encodes the header in
//! front: the data is never copied.
//!
//! Spec: [proto.md "Simple reply message"][simple], ["Structured reply
//! chunk message"][chunk], ["Structured reply types"][types]; the 32-byte
//! chunk header is the [`EXTENDED_HEADERS` extension][ext].
//!
//! [simple]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#simple-reply-message
//! [chunk]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#structured-reply-chunk-message
//! [types]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#structured-reply-types
//! [ext]: https://github.com/NetworkBlockDevice/nbd/blob/extension-ext-header/doc/proto.md

use super::{Writer, be_u16_at, be_u32_at, be_u64_at, check_str, head};
use crate::error::{BufferTooSmall, DecodeError};
use crate::flags::ReplyFlags;
use crate::magic::{EXTENDED_REPLY_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC};
use crate::types::{ChunkType, Cookie, ErrorCode, HeaderMode};

/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes of an `OFFSET_DATA` payload before the data (the u64 offset).
pub const OFFSET_DATA_PREFIX: usize = 8;
/// Longest message an error chunk may carry.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// A simple reply: error code and cookie (READ data follows on success).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SimpleReply {
    /// The request's cookie.
    pub cookie: Cookie,
    /// 0 for success, else an `NBD_E*` value.
    pub error: u32,
}

impl SimpleReply {
    /// Encode the 16-byte header.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` holds fewer than 16 bytes.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut w = Writer::new(out, SIMPLE_REPLY_LEN)?;
        w.u32(SIMPLE_REPLY_MAGIC);
        w.u32(self.error);
        w.u64(self.cookie.0);
        Ok(w.finish())
    }

    /// Decode the 16-byte header.
    ///
    /// # Errors
    /// [`DecodeError::BadMagic`] when it is not a simple reply.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some(h) = head::<SIMPLE_REPLY_LEN>(buf) else {
            return Ok(None);
        };
        let magic = be_u32_at(h, 0);
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(DecodeError::BadMagic(u64::from(magic)));
        }
        let reply = Self {
            error: be_u32_at(h, 4),
            cookie: Cookie(be_u64_at(h, 8)),
        };
        Ok(Some((reply, SIMPLE_REPLY_LEN)))
    }
}

/// The header of a structured or extended reply chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ChunkHeader {
    /// Reply flags (`DONE`).
    pub flags: ReplyFlags,
    /// Chunk type.
    pub ty: ChunkType,
    /// The request's cookie.
    pub cookie: Cookie,
    /// The request's offset (extended headers only; 0 in structured mode).
    pub offset: u64,
    /// Payload length.
    pub len: u64,
}

impl ChunkHeader {
    /// Header size for `mode`: 20 (structured) or 32 (extended).
    #[must_use]
    pub fn len_for(mode: HeaderMode) -> usize {
        match mode {
            HeaderMode::Extended => 32,
            _ => 20,
        }
    }

    /// Encode the header. In structured mode `offset` is not sent and `len`
    /// must fit 32 bits (callers split larger payloads).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn encode(&self, mode: HeaderMode, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut w = Writer::new(out, Self::len_for(mode))?;
        match mode {
            HeaderMode::Extended => w.u32(EXTENDED_REPLY_MAGIC),
            _ => w.u32(STRUCTURED_REPLY_MAGIC),
        }
        w.u16(self.flags.bits());
        w.u16(self.ty.into());
        w.u64(self.cookie.0);
        match mode {
            HeaderMode::Extended => {
                w.u64(self.offset);
                w.u64(self.len);
            }
            _ => w.u32(u32::try_from(self.len).unwrap_or(u32::MAX)),
        }
        Ok(w.finish())
    }

    /// Decode a chunk header (payload not required).
    ///
    /// # Errors
    /// [`DecodeError::BadMagic`] when the magic does not match `mode`.
    pub fn decode(buf: &[u8], mode: HeaderMode) -> Result<Option<(Self, usize)>, DecodeError> {
        let hlen = Self::len_for(mode);
        let Some(h) = buf.get(..hlen) else {
            return Ok(None);
        };
        let magic = be_u32_at(h, 0);
        let expected = match mode {
            HeaderMode::Extended => EXTENDED_REPLY_MAGIC,
            _ => STRUCTURED_REPLY_MAGIC,
        };
        if magic != expected {
            return Err(DecodeError::BadMagic(u64::from(magic)));
        }
        let (offset, len) = match mode {
            HeaderMode::Extended => (be_u64_at(h, 16), be_u64_at(h, 24)),
            _ => (0, u64::from(be_u32_at(h, 16))),
        };
        let header = Self {
            flags: ReplyFlags::from_bits_retain(be_u16_at(h, 4)),
            ty: ChunkType::from(be_u16_at(h, 6)),
            cookie: Cookie(be_u64_at(h, 8)),
            offset,
            len,
        };
        Ok(Some((header, hlen)))
    }
}

/// Where a reply goes: the request's cookie and offset (the extended
/// header echoes the offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ReplyTo {
    /// The request's cookie.
    pub cookie: Cookie,
    /// The request's offset.
    pub offset: u64,
}

fn done_flag(done: bool) -> ReplyFlags {
    if done {
        ReplyFlags::DONE
    } else {
        ReplyFlags::empty()
    }
}

/// Encode a chunk header then the fixed payload fields written by `body`.
fn chunk(
    mode: HeaderMode,
    to: ReplyTo,
    ty: ChunkType,
    done: bool,
    payload_len: usize,
    out: &mut [u8],
    body: impl FnOnce(&mut Writer<'_>),
) -> Result<usize, BufferTooSmall> {
    let hlen = ChunkHeader::len_for(mode);
    let total = hlen.saturating_add(payload_len);
    if out.len() < total {
        return Err(BufferTooSmall { required: total });
    }
    let header = ChunkHeader {
        flags: done_flag(done),
        ty,
        cookie: to.cookie,
        offset: to.offset,
        len: payload_len as u64,
    };
    let n = header.encode(mode, out)?;
    let mut w = Writer::new(out.get_mut(n..).unwrap_or_default(), payload_len)?;
    body(&mut w);
    Ok(n + w.finish())
}

/// `NBD_REPLY_TYPE_NONE`, always with `DONE`.
///
/// # Errors
/// [`BufferTooSmall`] when `out` is too short.
pub fn encode_none(mode: HeaderMode, to: ReplyTo, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
    chunk(mode, to, ChunkType::None, true, 0, out, |_| {})
}

/// The header and offset of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk carrying
/// `data_len` bytes that the caller places right after the returned length.
///
/// # Errors
/// [`BufferTooSmall`] when `out` cannot hold the header and offset.
pub fn encode_offset_data_header(
    mode: HeaderMode,
    to: ReplyTo,
    data_offset: u64,
    data_len: usize,
    done: bool,
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let hlen = ChunkHeader::len_for(mode) + OFFSET_DATA_PREFIX;
    let slot = out
        .get_mut(..hlen)
        .ok_or(BufferTooSmall { required: hlen })?;
    let header = ChunkHeader {
        flags: done_flag(done),
        ty: ChunkType::OffsetData,
        cookie: to.cookie,
        offset: to.offset,
        len: (OFFSET_DATA_PREFIX as u64).saturating_add(data_len as u64),
    };
    let n = header.encode(mode, slot)?;
    let mut w = Writer::new(slot.get_mut(n..).unwrap_or_default(), OFFSET_DATA_PREFIX)?;
    w.u64(data_offset);
    Ok(n + w.finish())
}

/// `NBD_REPLY_TYPE_OFFSET_HOLE`: `len` bytes at `hole_offset` read as zeroes.
///
/// # Errors
/// [`BufferTooSmall`] when `out` is too short.
pub fn encode_offset_hole(
    mode: HeaderMode,
    to: ReplyTo,
    hole_offset: u64,
    len: u32,
    done: bool,
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    chunk(mode, to, ChunkType::OffsetHole, done, 12, out, |w| {
        w.u64(hole_offset);
        w.u32(len);
    })
}

fn clip_message(message: &str) -> &[u8] {
    let b = message.as_bytes();
    b.get(..MAX_ERROR_MESSAGE).unwrap_or(b)
}

/// `NBD_REPLY_TYPE_ERROR` with a human-readable message (always `DONE`).
///
/// # Errors
/// [`BufferTooSmall`] when `out` is too short.
pub fn encode_error(
    mode: HeaderMode,
    to: ReplyTo,
    error: ErrorCode,
    message: &str,
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let msg = clip_message(message);
    chunk(mode, to, ChunkType::Error, true, 6 + msg.len(), out, |w| {
        w.u32(error.into());
        w.u16(msg.len() as u16);
        w.bytes(msg);
    })
}

/// `NBD_REPLY_TYPE_ERROR_OFFSET`: an error at `error_offset` inside the request.
///
/// # Errors
/// [`BufferTooSmall`] when `out` is too short.
pub fn encode_error_offset(
    mode: HeaderMode,
    to: ReplyTo,
    error: ErrorCode,
    message: &str,
    error_offset: u64,
    done: bool,
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let msg = clip_message(message);
    chunk(
        mode,
        to,
        ChunkType::ErrorOffset,
        done,
        14 + msg.len(),
        out,
        |w| {
            w.u32(error.into());
            w.u16(msg.len() as u16);
            w.bytes(msg);
            w.u64(error_offset);
        },
    )
}

/// One block-status descriptor: a length and the context's status bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct BlockStatusExtent {
    /// Extent length (nonzero).
    pub len: u64,
    /// Status flags (32-bit contexts use only the low half).
    pub flags: u64,
}

/// Bytes of a block-status chunk with `count` descriptors.
#[must_use]
pub fn block_status_len(mode: HeaderMode, count: usize) -> usize {
    match mode {
        HeaderMode::Extended => ChunkHeader::len_for(mode) + 8 + 16 * count,
        _ => ChunkHeader::len_for(mode) + 4 + 8 * count,
    }
}

/// A block-status chunk for context `id`: type 5 (`BLOCK_STATUS`) in
/// structured mode, type 6 (`BLOCK_STATUS_EXT`) in extended mode.
///
/// In structured mode lengths above `u32::MAX` are clamped to the largest
/// 512-aligned 32-bit value; callers should not pass them.
///
/// # Errors
/// [`BufferTooSmall`] when `out` is too short.
pub fn encode_block_status(
    mode: HeaderMode,
    to: ReplyTo,
    id: u32,
    extents: &[BlockStatusExtent],
    done: bool,
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    encode_block_status_iter(mode, to, id, extents.iter().copied(), done, out)
}

/// [`encode_block_status`] from an iterator of descriptors (walked twice:
/// once to count, once to write).
///
/// # Errors
/// [`BufferTooSmall`] when `out` is too short.
pub fn encode_block_status_iter(
    mode: HeaderMode,
    to: ReplyTo,
    id: u32,
    extents: impl Iterator<Item = BlockStatusExtent> + Clone,
    done: bool,
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let count = extents.clone().count();
    let hlen = ChunkHeader::len_for(mode);
    let payload = block_status_len(mode, count) - hlen;
    match mode {
        HeaderMode::Extended => chunk(
            mode,
            to,
            ChunkType::BlockStatusExt,
            done,
            payload,
            out,
            |w| {
                w.u32(id);
                w.u32(u32::try_from(count).unwrap_or(u32::MAX));
                for e in extents {
                    w.u64(e.len);
                    w.u64(e.flags);
                }
            },
        ),
        _ => chunk(mode, to, ChunkType::BlockStatus, done, payload, out, |w| {
            w.u32(id);
            for e in extents {
                w.u32(u32::try_from(e.len).unwrap_or(!511));
                w.u32(e.flags as u32);
            }
        }),
    }
}

/// A decoded chunk payload (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkPayload<'a> {
    /// `NBD_REPLY_TYPE_NONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    OffsetData {
        /// Absolute offset of the data.
        offset: u64,
        /// The data.
        data: &'a [u8],
    },
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    OffsetHole {
        /// Absolute offset of the hole.
        offset: u64,
        /// Hole length.
        len: u32,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS` / `_EXT`.
    BlockStatus {
        /// Context ID.
        id: u32,
        /// Descriptors.
        extents: BlockStatusIter<'a>,
    },
    /// `NBD_REPLY_TYPE_ERROR` / `_ERROR_OFFSET` / unknown error types.
    Error {
        /// The error value.
        error: ErrorCode,
        /// Human-readable message.
        message: &'a str,
        /// The offset, for `ERROR_OFFSET`.
        offset: Option<u64>,
    },
    /// A non-error type this crate does not know (clients must disconnect).
    Unknown(&'a [u8]),
}

/// Iterator over block-status descriptors in either layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatusIter<'a> {
    raw: &'a [u8],
    wide: bool,
}

impl Iterator for BlockStatusIter<'_> {
    type Item = BlockStatusExtent;

    fn next(&mut self) -> Option<BlockStatusExtent> {
        let (e, step) = if self.wide {
            (
                BlockStatusExtent {
                    len: be_u64_at(self.raw, 0),
                    flags: be_u64_at(self.raw, 8),
                },
                16,
            )
        } else {
            (
                BlockStatusExtent {
                    len: u64::from(be_u32_at(self.raw, 0)),
                    flags: u64::from(be_u32_at(self.raw, 4)),
                },
                8,
            )
        };
        self.raw = self.raw.get(step..)?;
        Some(e)
    }
}

impl<'a> ChunkPayload<'a> {
    /// Decode a chunk payload of type `ty`.
    ///
    /// # Errors
    /// `BadLength` when the payload breaks its type's length rule.
    pub fn decode(ty: ChunkType, data: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(match ty {
            ChunkType::None => {
                if !data.is_empty() {
                    return Err(DecodeError::BadLength("NBD_REPLY_TYPE_NONE"));
                }
                Self::None
            }
            ChunkType::OffsetData => {
                let (off, rest) = data
                    .split_first_chunk::<8>()
                    .ok_or(DecodeError::BadLength("OFFSET_DATA"))?;
                if rest.is_empty() {
                    return Err(DecodeError::BadLength("OFFSET_DATA"));
                }
                Self::OffsetData {
                    offset: u64::from_be_bytes(*off),
                    data: rest,
                }
            }
            ChunkType::OffsetHole => {
                if data.len() != 12 || be_u32_at(data, 8) == 0 {
                    return Err(DecodeError::BadLength("OFFSET_HOLE"));
                }
                Self::OffsetHole {
                    offset: be_u64_at(data, 0),
                    len: be_u32_at(data, 8),
                }
            }
            ChunkType::BlockStatus => {
                let (id, rest) = data
                    .split_first_chunk::<4>()
                    .ok_or(DecodeError::BadLength("BLOCK_STATUS"))?;
                if rest.is_empty() || rest.len() % 8 != 0 {
                    return Err(DecodeError::BadLength("BLOCK_STATUS"));
                }
                Self::BlockStatus {
                    id: u32::from_be_bytes(*id),
                    extents: BlockStatusIter {
                        raw: rest,
                        wide: false,
                    },
                }
            }
            ChunkType::BlockStatusExt => {
                let (hdr, rest) = data
                    .split_first_chunk::<8>()
                    .ok_or(DecodeError::BadLength("BLOCK_STATUS_EXT"))?;
                let count = be_u32_at(hdr, 4) as usize;
                if count == 0 || rest.len() != count.saturating_mul(16) {
                    return Err(DecodeError::BadLength("BLOCK_STATUS_EXT"));
                }
                Self::BlockStatus {
                    id: be_u32_at(hdr, 0),
                    extents: BlockStatusIter {
                        raw: rest,
                        wide: true,
                    },
                }
            }
            t if t.is_error() => {
                let (fixed, rest) = data
                    .split_first_chunk::<6>()
                    .ok_or(DecodeError::BadLength("error chunk"))?;
                let error = ErrorCode::from(be_u32_at(fixed, 0));
                let mlen = usize::from(be_u16_at(fixed, 4));
                let msg = rest
                    .get(..mlen)
                    .ok_or(DecodeError::BadLength("error chunk"))?;
                let tail = rest.get(mlen..).unwrap_or_default();
                let offset = if t == ChunkType::ErrorOffset {
                    if tail.len() != 8 {
                        return Err(DecodeError::BadLength("ERROR_OFFSET"));
                    }
                    Some(be_u64_at(tail, 0))
                } else {
                    None
                };
                Self::Error {
                    error,
                    message: check_str(msg, "error message")?,
                    offset,
                }
            }
            _ => Self::Unknown(data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TO: ReplyTo = ReplyTo {
        cookie: Cookie(0x0123_4567_89ab_cdef),
        offset: 4096,
    };

    #[test]
    fn checklist_62_63_simple_reply_bytes() {
        let mut out = [0u8; 16];
        let r = SimpleReply {
            cookie: Cookie(u64::MAX),
            error: 0,
        };
        assert_eq!(r.encode(&mut out), Ok(16));
        assert_eq!(&out[..8], &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0]);
        assert_eq!(&out[8..], &[0xff; 8]);
        assert_eq!(SimpleReply::decode(&out), Ok(Some((r, 16))));
    }

    #[test]
    fn checklist_98_none_chunk_has_done_and_zero_length() {
        let mut out = [0u8; 20];
        assert_eq!(encode_none(HeaderMode::Structured, TO, &mut out), Ok(20));
        assert_eq!(&out[..8], &[0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 0]);
        assert_eq!(&out[16..20], &[0, 0, 0, 0]);
    }

    #[test]
    fn checklist_116_extended_chunk_echoes_offset() {
        let mut out = [0u8; 32];
        assert_eq!(encode_none(HeaderMode::Extended, TO, &mut out), Ok(32));
        assert_eq!(&out[..4], &[0x6e, 0x8a, 0x27, 0x8c]);
        let (h, _) = ChunkHeader::decode(&out, HeaderMode::Extended)
            .unwrap()
            .unwrap();
        assert_eq!(h.offset, 4096);
        assert_eq!(h.cookie, TO.cookie);
    }

    #[test]
    fn checklist_99_error_chunk_layout() {
        let mut out = [0u8; 64];
        let n = encode_error(
            HeaderMode::Structured,
            TO,
            ErrorCode::Inval,
            "bad",
            &mut out,
        )
        .unwrap();
        assert_eq!(n, 20 + 6 + 3);
        let (h, hl) = ChunkHeader::decode(&out, HeaderMode::Structured)
            .unwrap()
            .unwrap();
        assert_eq!(h.ty, ChunkType::Error);
        assert!(h.flags.contains(ReplyFlags::DONE));
        assert_eq!(
            ChunkPayload::decode(h.ty, &out[hl..n]),
            Ok(ChunkPayload::Error {
                error: ErrorCode::Inval,
                message: "bad",
                offset: None
            })
        );
    }

    #[test]
    fn checklist_105_119_block_status_layouts() {
        let ext = [
            BlockStatusExtent { len: 512, flags: 3 },
            BlockStatusExtent {
                len: 1024,
                flags: 0,
            },
        ];
        let mut out = [0u8; 128];
        let n = encode_block_status(HeaderMode::Structured, TO, 1, &ext, true, &mut out).unwrap();
        assert_eq!(n, 20 + 4 + 16);
        let n = encode_block_status(HeaderMode::Extended, TO, 1, &ext, true, &mut out).unwrap();
        assert_eq!(n, 32 + 8 + 32);
        let (h, hl) = ChunkHeader::decode(&out, HeaderMode::Extended)
            .unwrap()
            .unwrap();
        assert_eq!(h.ty, ChunkType::BlockStatusExt);
        match ChunkPayload::decode(h.ty, &out[hl..n]).unwrap() {
            ChunkPayload::BlockStatus { id, extents } => {
                assert_eq!(id, 1);
                assert!(extents.eq(ext.iter().copied()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn offset_data_header_reserves_prefix() {
        let mut out = [0u8; 28];
        let n = encode_offset_data_header(HeaderMode::Structured, TO, 4096, 512, true, &mut out)
            .unwrap();
        assert_eq!(n, 28);
        assert_eq!(&out[16..20], &[0, 0, 2, 8]);
        assert_eq!(&out[20..28], &4096u64.to_be_bytes());
    }

    #[test]
    fn checklist_98_offset_hole_rules() {
        let mut out = [0u8; 32];
        let n = encode_offset_hole(HeaderMode::Structured, TO, 0, 512, false, &mut out).unwrap();
        assert_eq!(n, 32);
        assert!(ChunkPayload::decode(ChunkType::OffsetHole, &[0; 12]).is_err());
    }
}
