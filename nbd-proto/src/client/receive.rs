//! Transmission replies, client side: frames simple replies and
//! structured / extended chunks, matches them to the in-flight table, and
//! reassembles READ replies by offset ([proto.md "Simple reply message"],
//! "Structured reply chunk message", "Structured reply types").
//!
//! READ data is never buffered here: once a chunk header is decoded the
//! payload streams out as [`Event::ReadData`] pieces as bytes arrive, so
//! the caller's input buffer only has to hold headers and metadata chunks
//! (block status, error messages), bounded by `max_chunk`.
//!
//! [proto.md "Simple reply message"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#simple-reply-message

use crate::error::{DecodeError, ProtocolError};
use crate::flags::ReplyFlags;
use crate::magic::{EXTENDED_REPLY_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC};
use crate::types::{ChunkType, Command, ErrorCode, HeaderMode};
use crate::wire::reply::{ChunkHeader, ChunkPayload, OFFSET_DATA_PREFIX, SimpleReply};
use crate::wire::{be_u32_at, be_u64_at, head};

use super::event::{BlockStatus, Done, Event, Fill, ReadData, ReplyError};
use super::table::{Slot, Table};

/// Where the reply stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rx {
    /// The next byte starts a reply header.
    Header,
    /// Inside READ data for slot `idx`: `remaining` bytes go to relative
    /// offset `at`; `done` when the chunk carried `NBD_REPLY_FLAG_DONE`.
    Data {
        idx: u32,
        at: u64,
        remaining: u64,
        done: bool,
    },
    /// The reply for slot `idx` is complete; its [`Event::Done`] is due.
    Finish { idx: u32 },
}

/// One step of decoding.
pub(crate) enum Step<'i> {
    /// `n` bytes (from the start of the input given) are needed in all.
    Need(usize),
    /// `n` bytes consumed with nothing to report yet.
    Skip(usize),
    /// `n` bytes consumed and an event to report.
    Event(usize, Event<'i>),
}

type Stepped<'i> = Result<Step<'i>, ProtocolError>;

fn violation(why: &'static str) -> ProtocolError {
    ProtocolError::Violation(why)
}

/// The transmission-phase reply decoder.
#[derive(Debug, Clone)]
pub(crate) struct Receiver {
    mode: HeaderMode,
    base: Option<u32>,
    max_chunk: u64,
    rx: Rx,
}

impl Receiver {
    pub(crate) fn new(mode: HeaderMode, base: Option<u32>, max_chunk: u64) -> Self {
        Self {
            mode,
            base,
            max_chunk,
            rx: Rx::Header,
        }
    }

    pub(crate) fn max_chunk(&self) -> u64 {
        self.max_chunk
    }

    pub(crate) fn set_max_chunk(&mut self, max: u64) {
        self.max_chunk = max;
    }

    /// Between replies (nothing half-decoded).
    pub(crate) fn is_idle(&self) -> bool {
        self.rx == Rx::Header
    }

    /// Forget a half-decoded reply (the connection was lost).
    pub(crate) fn reset(&mut self) {
        self.rx = Rx::Header;
    }

    pub(crate) fn step<'i, const N: usize>(
        &mut self,
        t: &mut Table<N>,
        input: &'i [u8],
    ) -> Stepped<'i> {
        match self.rx {
            Rx::Header => self.header(t, input),
            Rx::Data {
                idx,
                at,
                remaining,
                done,
            } => self.data(t, input, idx, at, remaining, done),
            Rx::Finish { idx } => {
                self.rx = Rx::Header;
                Ok(Step::Event(0, finish(t, idx)?))
            }
        }
    }

    fn header<'i, const N: usize>(&mut self, t: &mut Table<N>, input: &'i [u8]) -> Stepped<'i> {
        let Some(magic) = head::<4>(input).map(|m| be_u32_at(m, 0)) else {
            return Ok(Step::Need(4));
        };
        match (magic, self.mode) {
            (SIMPLE_REPLY_MAGIC, HeaderMode::Simple | HeaderMode::Structured) => {
                self.simple(t, input)
            }
            (STRUCTURED_REPLY_MAGIC, HeaderMode::Structured)
            | (EXTENDED_REPLY_MAGIC, HeaderMode::Extended) => self.chunk(t, input),
            (SIMPLE_REPLY_MAGIC | STRUCTURED_REPLY_MAGIC | EXTENDED_REPLY_MAGIC, _) => {
                Err(violation("reply form not allowed in this header mode"))
            }
            (other, _) => Err(DecodeError::BadMagic(u64::from(other)).into()),
        }
    }

    fn simple<'i, const N: usize>(&mut self, t: &mut Table<N>, input: &'i [u8]) -> Stepped<'i> {
        let Some((r, hlen)) = SimpleReply::decode(input)? else {
            return Ok(Step::Need(crate::wire::reply::SIMPLE_REPLY_LEN));
        };
        let idx = t
            .find(r.cookie)
            .ok_or(violation("reply for a cookie not in flight"))?;
        let slot = t.get_mut(idx).ok_or(violation("reply slot vanished"))?;
        if r.error != 0 {
            slot.error = Some(wire_error(r.error));
        } else if slot.command == Command::Read {
            // Exactly `len` bytes follow a zero-error READ header
            // (digest note 18); they stream out as data.
            slot.covered = slot.len;
            self.rx = Rx::Data {
                idx,
                at: 0,
                remaining: slot.len,
                done: true,
            };
            return Ok(Step::Skip(hlen));
        }
        Ok(Step::Event(hlen, finish(t, idx)?))
    }

    fn chunk<'i, const N: usize>(&mut self, t: &mut Table<N>, input: &'i [u8]) -> Stepped<'i> {
        let hlen = ChunkHeader::len_for(self.mode);
        let Some((h, _)) = ChunkHeader::decode(input, self.mode)? else {
            return Ok(Step::Need(hlen));
        };
        let idx = t
            .find(h.cookie)
            .ok_or(violation("reply for a cookie not in flight"))?;
        let done = h.flags.contains(ReplyFlags::DONE);
        match h.ty {
            ChunkType::OffsetData => self.offset_data(t, input, idx, hlen, h.len, done),
            ChunkType::None => {
                // NONE is empty and always final (checklist 98).
                if h.len != 0 || !done {
                    return Err(DecodeError::BadLength("NBD_REPLY_TYPE_NONE").into());
                }
                Ok(Step::Event(hlen, finish(t, idx)?))
            }
            ty => {
                if !ty.is_error()
                    && !matches!(
                        ty,
                        ChunkType::OffsetHole | ChunkType::BlockStatus | ChunkType::BlockStatusExt
                    )
                {
                    // An unknown non-error type MUST make the client
                    // hard-disconnect (proto.md "Structured reply types").
                    return Err(violation("unknown reply chunk type"));
                }
                if h.len > self.max_chunk {
                    return Err(DecodeError::TooLarge("reply chunk").into());
                }
                let end = hlen.saturating_add(usize::try_from(h.len).unwrap_or(usize::MAX));
                let Some(data) = input.get(hlen..end) else {
                    return Ok(Step::Need(end));
                };
                let payload = ChunkPayload::decode(ty, data)?;
                self.whole_chunk(t, idx, payload, end, done)
            }
        }
    }

    fn offset_data<'i, const N: usize>(
        &mut self,
        t: &mut Table<N>,
        input: &'i [u8],
        idx: u32,
        hlen: usize,
        len: u64,
        done: bool,
    ) -> Stepped<'i> {
        let slot = t.get_mut(idx).ok_or(violation("reply slot vanished"))?;
        if slot.command != Command::Read {
            return Err(violation("data chunk for a request that is not a READ"));
        }
        // At least one data byte after the offset (checklist 98).
        let data_len = len
            .checked_sub(OFFSET_DATA_PREFIX as u64)
            .filter(|&n| n > 0)
            .ok_or(DecodeError::BadLength("OFFSET_DATA"))?;
        let end = hlen + OFFSET_DATA_PREFIX;
        let Some(off) = input.get(hlen..end) else {
            return Ok(Step::Need(end));
        };
        let at = place(slot, be_u64_at(off, 0), data_len)?;
        self.rx = Rx::Data {
            idx,
            at,
            remaining: data_len,
            done,
        };
        Ok(Step::Skip(end))
    }

    fn whole_chunk<'i, const N: usize>(
        &mut self,
        t: &mut Table<N>,
        idx: u32,
        payload: ChunkPayload<'i>,
        end: usize,
        done: bool,
    ) -> Stepped<'i> {
        let slot = t.get_mut(idx).ok_or(violation("reply slot vanished"))?;
        let ev = match payload {
            ChunkPayload::OffsetHole { offset, len } => {
                if slot.command != Command::Read {
                    return Err(violation("hole chunk for a request that is not a READ"));
                }
                let at = place(slot, offset, u64::from(len))?;
                Event::ReadData(ReadData {
                    cookie: slot.cookie,
                    slot: idx as usize,
                    request_len: slot.len,
                    at: usize::try_from(at).map_err(|_| violation("hole offset"))?,
                    fill: Fill::Zeroes(len as usize),
                })
            }
            ChunkPayload::BlockStatus { id, extents } => {
                if slot.command != Command::BlockStatus {
                    return Err(violation("block status for another command"));
                }
                if Some(id) != self.base {
                    return Err(violation("block status for a context not selected"));
                }
                Event::BlockStatus(BlockStatus {
                    cookie: slot.cookie,
                    slot: idx as usize,
                    id,
                    limit: slot.len,
                    extents,
                })
            }
            ChunkPayload::Error { error, .. } => {
                // The first error wins; the reply ends at DONE.
                let error = if u32::from(error) == 0 {
                    ErrorCode::Io
                } else {
                    error
                };
                slot.error.get_or_insert(error);
                if done {
                    return Ok(Step::Event(end, finish(t, idx)?));
                }
                return Ok(Step::Skip(end));
            }
            _ => return Err(violation("unexpected reply chunk")),
        };
        if done {
            self.rx = Rx::Finish { idx };
        }
        Ok(Step::Event(end, ev))
    }

    fn data<'i, const N: usize>(
        &mut self,
        t: &mut Table<N>,
        input: &'i [u8],
        idx: u32,
        at: u64,
        remaining: u64,
        done: bool,
    ) -> Stepped<'i> {
        if input.is_empty() {
            return Ok(Step::Need(1));
        }
        let n = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(input.len());
        let slot = t.get(idx).ok_or(violation("reply slot vanished"))?;
        let ev = Event::ReadData(ReadData {
            cookie: slot.cookie,
            slot: idx as usize,
            request_len: slot.len,
            at: usize::try_from(at).map_err(|_| violation("data offset"))?,
            fill: Fill::Data(input.get(..n).unwrap_or_default()),
        });
        let remaining = remaining - n as u64;
        self.rx = match (remaining, done) {
            (0, true) => Rx::Finish { idx },
            (0, false) => Rx::Header,
            _ => Rx::Data {
                idx,
                at: at + n as u64,
                remaining,
                done,
            },
        };
        Ok(Step::Event(n, ev))
    }
}

/// An error value from the wire; 0 in an error field is a server bug and
/// must never be passed on as "success".
fn wire_error(raw: u32) -> ErrorCode {
    if raw == 0 {
        ErrorCode::Io
    } else {
        ErrorCode::from(raw)
    }
}

/// Check a READ chunk against its request and count it: returns the
/// offset relative to the READ (checklist 97: chunks lie inside the
/// request and do not overlap).
fn place(slot: &mut Slot, offset: u64, len: u64) -> Result<u64, ProtocolError> {
    let rel = offset
        .checked_sub(slot.offset)
        .filter(|r| r.checked_add(len).is_some_and(|e| e <= slot.len))
        .ok_or(violation("READ chunk outside the request"))?;
    slot.covered = slot
        .covered
        .checked_add(len)
        .filter(|&c| c <= slot.len)
        .ok_or(violation("READ chunks overlap"))?;
    Ok(rel)
}

/// Free the slot and report its outcome.
fn finish<'i, const N: usize>(t: &mut Table<N>, idx: u32) -> Result<Event<'i>, ProtocolError> {
    let s = t.remove(idx).ok_or(violation("reply slot vanished"))?;
    let result = match s.error {
        Some(e) => Err(ReplyError::Server(e)),
        None if s.command == Command::Read && s.covered != s.len => Err(ReplyError::Incomplete),
        None => Ok(()),
    };
    Ok(Event::Done(Done {
        cookie: s.cookie,
        slot: idx as usize,
        command: s.command,
        result,
    }))
}
