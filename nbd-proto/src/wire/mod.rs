//! The codec: byte-exact encoders and decoders for every NBD message.
//!
//! Both state machines are built on it; use it directly to frame messages
//! yourself (a proxy, an analyser, a test peer). One module per phase:
//! [`handshake`] (greetings, client flags, option and option-reply
//! headers), [`option`] (option payloads and their replies), [`request`]
//! (request headers) and [`reply`] (simple replies and reply chunks).
//!
//! Decoders follow httparse: they take a borrowed slice and return
//! `Ok(None)` when more bytes are needed, `Ok(Some((value, consumed)))` with
//! `consumed <= input.len()` when a whole frame is there, and `Err` only for
//! input that can never become valid. Encoders write into a caller slice and
//! return the length, or [`BufferTooSmall`] with the length they need.
//! Nothing allocates.
//!
//! Spec: [proto.md "Protocol phases"][phases] and ["Values"][values].
//!
//! [phases]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#protocol-phases
//! [values]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#values

pub mod handshake;
pub mod option;
pub mod reply;
pub mod request;

use crate::error::{BufferTooSmall, DecodeError};

/// Longest string the spec allows (names, messages, context names).
pub const MAX_STRING_LEN: usize = 4096;

/// A bounds-checked cursor for encoding into a caller slice.
pub(crate) struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Start writing at the beginning of `out`, which must hold `total` bytes.
    pub(crate) fn new(out: &'a mut [u8], total: usize) -> Result<Self, BufferTooSmall> {
        if out.len() < total {
            return Err(BufferTooSmall { required: total });
        }
        Ok(Self { out, pos: 0 })
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        // `new` checked the total size; a short write here is a bug in the
        // caller's length computation, so it truncates instead of panicking.
        let end = self.pos.saturating_add(b.len()).min(self.out.len());
        if let Some(dst) = self.out.get_mut(self.pos..end) {
            let n = dst.len();
            dst.copy_from_slice(b.get(..n).unwrap_or_default());
        }
        self.pos = end;
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }

    pub(crate) fn zeroes(&mut self, n: usize) {
        let end = self.pos.saturating_add(n).min(self.out.len());
        if let Some(dst) = self.out.get_mut(self.pos..end) {
            dst.fill(0);
        }
        self.pos = end;
    }

    pub(crate) fn finish(self) -> usize {
        self.pos
    }
}

/// Take the first `N` bytes as an array, or `None` when fewer are present.
pub(crate) fn head<const N: usize>(buf: &[u8]) -> Option<&[u8; N]> {
    buf.split_first_chunk::<N>().map(|(h, _)| h)
}

pub(crate) fn be_u16_at(buf: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    if let Some(s) = buf.get(at..at.saturating_add(2)) {
        b.copy_from_slice(s);
    }
    u16::from_be_bytes(b)
}

pub(crate) fn be_u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = buf.get(at..at.saturating_add(4)) {
        b.copy_from_slice(s);
    }
    u32::from_be_bytes(b)
}

pub(crate) fn be_u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = buf.get(at..at.saturating_add(8)) {
        b.copy_from_slice(s);
    }
    u64::from_be_bytes(b)
}

/// Validate an NBD string: UTF-8, no NUL, at most 4096 bytes.
pub(crate) fn check_str<'a>(b: &'a [u8], what: &'static str) -> Result<&'a str, DecodeError> {
    if b.len() > MAX_STRING_LEN {
        return Err(DecodeError::TooLarge(what));
    }
    if b.contains(&0) {
        return Err(DecodeError::BadString(what));
    }
    core::str::from_utf8(b).map_err(|_| DecodeError::BadString(what))
}

/// Map a nom failure on an exactly framed slice to our own error.
pub(crate) fn nom_err(
    what: &'static str,
) -> impl Fn(nom::Err<nom::error::Error<&[u8]>>) -> DecodeError {
    move |_| DecodeError::BadLength(what)
}
