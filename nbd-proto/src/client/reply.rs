//! The client's reply decoder: frames simple replies, structured chunks and
//! extended chunks from the server's byte stream into borrowed views.
//!
//! A simple reply does not say how long it is: a successful READ reply is
//! followed by exactly the requested number of bytes, every other reply by
//! none. So the decoder asks the caller, per cookie, whether it is an
//! outstanding READ and of what length.

use crate::error::{DecodeError, ProtocolError};
use crate::flags::ReplyFlags;
use crate::magic::{EXTENDED_REPLY_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC};
use crate::types::{Cookie, ErrorCode, HeaderMode};
use crate::wire::reply::{ChunkHeader, ChunkPayload, SIMPLE_REPLY_LEN, SimpleReply};
use crate::wire::{be_u32_at, head};

/// One decoded reply message: a whole simple reply or one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A simple reply; `data` is the READ payload (empty otherwise).
    Simple {
        /// The request's cookie.
        cookie: Cookie,
        /// `None` for success.
        error: Option<ErrorCode>,
        /// READ data, borrowed from the input.
        data: &'a [u8],
    },
    /// One structured or extended chunk.
    Chunk {
        /// The chunk header.
        header: ChunkHeader,
        /// Its decoded payload, borrowed from the input.
        payload: ChunkPayload<'a>,
    },
}

impl Reply<'_> {
    /// The cookie this reply answers.
    #[must_use]
    pub fn cookie(&self) -> Cookie {
        match self {
            Self::Simple { cookie, .. } => *cookie,
            Self::Chunk { header, .. } => header.cookie,
        }
    }

    /// True when this is the last message for its cookie.
    #[must_use]
    pub fn is_final(&self) -> bool {
        match self {
            Self::Simple { .. } => true,
            Self::Chunk { header, .. } => header.flags.contains(ReplyFlags::DONE),
        }
    }

    /// The error this message carries, if any.
    #[must_use]
    pub fn error(&self) -> Option<ErrorCode> {
        match self {
            Self::Simple { error, .. } => *error,
            Self::Chunk {
                payload: ChunkPayload::Error { error, .. },
                ..
            } => Some(*error),
            Self::Chunk { .. } => None,
        }
    }
}

/// Frames replies for one connection in a fixed header mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyDecoder {
    mode: HeaderMode,
    max_payload: u64,
}

impl ReplyDecoder {
    /// A decoder for `mode` that refuses payloads above `max_payload` bytes
    /// (a bound on what the caller will buffer; 32 MiB + 4 KiB is plenty
    /// for a server that honours a 32 MiB maximum READ).
    #[must_use]
    pub fn new(mode: HeaderMode, max_payload: u64) -> Self {
        Self { mode, max_payload }
    }

    /// The header mode in use.
    #[must_use]
    pub fn mode(&self) -> HeaderMode {
        self.mode
    }

    /// Decode the next reply message from `input`. `read_len(cookie)` must
    /// return the length of the outstanding READ with that cookie, or
    /// `None` when the cookie is not a READ.
    ///
    /// Returns `Ok(None)` until a whole message is buffered; see
    /// [`ReplyDecoder::needed`] for how many bytes that is.
    ///
    /// # Errors
    /// A bad magic, a reply form the mode forbids, an oversize or malformed
    /// payload: the stream cannot be resynchronised, so disconnect.
    pub fn decode<'a>(
        &self,
        input: &'a [u8],
        mut read_len: impl FnMut(Cookie) -> Option<u64>,
    ) -> Result<Option<(Reply<'a>, usize)>, ProtocolError> {
        let Some(magic) = head::<4>(input).map(|m| be_u32_at(m, 0)) else {
            return Ok(None);
        };
        match (magic, self.mode) {
            (SIMPLE_REPLY_MAGIC, HeaderMode::Simple | HeaderMode::Structured) => {
                let Some((r, hlen)) = SimpleReply::decode(input)? else {
                    return Ok(None);
                };
                let len = if r.error == 0 {
                    read_len(r.cookie).unwrap_or(0)
                } else {
                    0
                };
                if len > self.max_payload {
                    return Err(DecodeError::TooLarge("READ reply").into());
                }
                let end = hlen.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
                let Some(data) = input.get(hlen..end) else {
                    return Ok(None);
                };
                let error = (r.error != 0).then(|| ErrorCode::from(r.error));
                Ok(Some((
                    Reply::Simple {
                        cookie: r.cookie,
                        error,
                        data,
                    },
                    end,
                )))
            }
            (STRUCTURED_REPLY_MAGIC, HeaderMode::Structured)
            | (EXTENDED_REPLY_MAGIC, HeaderMode::Extended) => {
                let Some((header, hlen)) = ChunkHeader::decode(input, self.mode)? else {
                    return Ok(None);
                };
                if header.len > self.max_payload {
                    return Err(DecodeError::TooLarge("reply chunk").into());
                }
                let end = hlen.saturating_add(usize::try_from(header.len).unwrap_or(usize::MAX));
                let Some(data) = input.get(hlen..end) else {
                    return Ok(None);
                };
                let payload = ChunkPayload::decode(header.ty, data)?;
                Ok(Some((Reply::Chunk { header, payload }, end)))
            }
            (SIMPLE_REPLY_MAGIC | STRUCTURED_REPLY_MAGIC | EXTENDED_REPLY_MAGIC, _) => Err(
                ProtocolError::Violation("reply form not allowed in this header mode"),
            ),
            (other, _) => Err(DecodeError::BadMagic(u64::from(other)).into()),
        }
    }

    /// Bytes the next message needs in total (header plus payload) when its
    /// header is buffered, else the smallest header length. Never less than
    /// `input.len()` would need to make progress; use it to size reads.
    #[must_use]
    pub fn needed(&self, input: &[u8], mut read_len: impl FnMut(Cookie) -> Option<u64>) -> usize {
        let hlen = match self.mode {
            HeaderMode::Extended => ChunkHeader::len_for(self.mode),
            _ => SIMPLE_REPLY_LEN,
        };
        let payload = match head::<4>(input).map(|m| be_u32_at(m, 0)) {
            Some(SIMPLE_REPLY_MAGIC) => match SimpleReply::decode(input) {
                Ok(Some((r, _))) if r.error == 0 => read_len(r.cookie).unwrap_or(0),
                _ => 0,
            },
            Some(STRUCTURED_REPLY_MAGIC | EXTENDED_REPLY_MAGIC) => {
                match ChunkHeader::decode(input, self.mode) {
                    Ok(Some((h, n))) => {
                        return n.saturating_add(usize::try_from(h.len).unwrap_or(usize::MAX));
                    }
                    _ => return ChunkHeader::len_for(self.mode),
                }
            }
            _ => 0,
        };
        hlen.saturating_add(usize::try_from(payload).unwrap_or(usize::MAX))
    }
}
