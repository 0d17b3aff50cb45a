//! Transmission requests: compact (28-byte) and extended (32-byte) headers,
//! and a whole request with its payload.
//!
//! Spec: [proto.md "Request message"][req], ["Request types"][types]; the
//! 32-byte layout is the [`EXTENDED_HEADERS` extension][ext].
//!
//! [req]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#request-message
//! [types]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#request-types
//! [ext]: https://github.com/NetworkBlockDevice/nbd/blob/extension-ext-header/doc/proto.md

use nom::Parser;
use nom::number::{be_u16, be_u32, be_u64};

use super::{Writer, nom_err};
use crate::error::{BufferTooSmall, DecodeError};
use crate::flags::CmdFlags;
use crate::magic::{EXTENDED_REQUEST_MAGIC, REQUEST_MAGIC};
use crate::types::{Command, Cookie, HeaderMode};

/// A request header, in either layout. `len` is 64-bit so both fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RequestHeader {
    /// Command flags (unknown bits kept).
    pub flags: CmdFlags,
    /// Command type.
    pub command: Command,
    /// Opaque identifier echoed in the reply.
    pub cookie: Cookie,
    /// Offset in bytes (for RESIZE: the new size).
    pub offset: u64,
    /// Effect length, or payload length (WRITE; PAYLOAD_LEN in extended mode).
    pub len: u64,
}

impl RequestHeader {
    /// Bytes of payload that follow this header on the wire.
    ///
    /// Compact mode: only `NBD_CMD_WRITE` carries a payload. Extended mode:
    /// WRITE and any request with `NBD_CMD_FLAG_PAYLOAD_LEN` do.
    #[must_use]
    pub fn payload_len(&self, mode: HeaderMode) -> u64 {
        match mode {
            // The extension text says WRITE MUST set PAYLOAD_LEN, but qemu
            // (8.2 to 10) sends WRITE without it: a WRITE always carries
            // its payload, as in compact mode.
            HeaderMode::Extended
                if self.flags.contains(CmdFlags::PAYLOAD_LEN) || self.command == Command::Write =>
            {
                self.len
            }
            HeaderMode::Extended => 0,
            _ if self.command == Command::Write => self.len,
            _ => 0,
        }
    }

    /// Header plus payload length, saturating (a driver sizes its read
    /// buffer with this before the payload arrives).
    #[must_use]
    pub fn frame_len(&self, mode: HeaderMode) -> u64 {
        (mode.request_header_len() as u64).saturating_add(self.payload_len(mode))
    }

    /// Decode a header only (the payload need not be present).
    ///
    /// # Errors
    /// [`DecodeError::BadMagic`] when the magic does not match `mode`; the
    /// stream cannot be resynchronised after that.
    pub fn decode(buf: &[u8], mode: HeaderMode) -> Result<Option<(Self, usize)>, DecodeError> {
        let hlen = mode.request_header_len();
        let Some(frame) = buf.get(..hlen) else {
            return Ok(None);
        };
        let what = "request header";
        let (rest, (magic, flags, command, cookie, offset)) =
            (be_u32(), be_u16(), be_u16(), be_u64(), be_u64())
                .parse_complete(frame)
                .map_err(nom_err(what))?;
        let expected = match mode {
            HeaderMode::Extended => EXTENDED_REQUEST_MAGIC,
            _ => REQUEST_MAGIC,
        };
        if magic != expected {
            return Err(DecodeError::BadMagic(u64::from(magic)));
        }
        let len = match mode {
            HeaderMode::Extended => be_u64().parse_complete(rest).map_err(nom_err(what))?.1,
            _ => u64::from(be_u32().parse_complete(rest).map_err(nom_err(what))?.1),
        };
        let header = Self {
            flags: CmdFlags::from_bits_retain(flags),
            command: Command::from(command),
            cookie: Cookie(cookie),
            offset,
            len,
        };
        Ok(Some((header, hlen)))
    }

    /// Encode the header (client side). In compact mode `len` must fit 32 bits.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short. A compact-mode length
    /// above `u32::MAX` is clamped; callers check it first.
    pub fn encode(&self, mode: HeaderMode, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut w = Writer::new(out, mode.request_header_len())?;
        match mode {
            HeaderMode::Extended => w.u32(EXTENDED_REQUEST_MAGIC),
            _ => w.u32(REQUEST_MAGIC),
        }
        w.u16(self.flags.bits());
        w.u16(self.command.into());
        w.u64(self.cookie.0);
        w.u64(self.offset);
        match mode {
            HeaderMode::Extended => w.u64(self.len),
            _ => w.u32(u32::try_from(self.len).unwrap_or(u32::MAX)),
        }
        Ok(w.finish())
    }
}

/// A whole request: header plus its payload, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The header.
    pub header: RequestHeader,
    /// The payload (WRITE data, or a BLOCK_STATUS payload); empty otherwise.
    pub data: &'a [u8],
}

impl<'a> Request<'a> {
    /// Decode a header and its whole payload.
    ///
    /// Returns `Ok(None)` until the payload is complete; callers that do not
    /// want to buffer a large payload use [`RequestHeader::decode`] and
    /// [`RequestHeader::frame_len`] instead.
    ///
    /// # Errors
    /// As [`RequestHeader::decode`].
    pub fn decode(buf: &'a [u8], mode: HeaderMode) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some((header, hlen)) = RequestHeader::decode(buf, mode)? else {
            return Ok(None);
        };
        let payload = usize::try_from(header.payload_len(mode))
            .map_err(|_| DecodeError::TooLarge("request payload"))?;
        let end = hlen
            .checked_add(payload)
            .ok_or(DecodeError::TooLarge("request payload"))?;
        let Some(data) = buf.get(hlen..end) else {
            return Ok(None);
        };
        Ok(Some((Self { header, data }, end)))
    }

    /// Encode the header and payload (client side).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn encode(&self, mode: HeaderMode, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let hlen = mode.request_header_len();
        let total = hlen + self.data.len();
        if out.len() < total {
            return Err(BufferTooSmall { required: total });
        }
        let n = self.header.encode(mode, out)?;
        let mut w = Writer::new(out.get_mut(n..).unwrap_or_default(), self.data.len())?;
        w.bytes(self.data);
        Ok(n + w.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RequestHeader {
        RequestHeader {
            flags: CmdFlags::FUA,
            command: Command::Write,
            cookie: Cookie(0x0123_4567_89ab_cdef),
            offset: 4096,
            len: 4,
        }
    }

    #[test]
    fn compact_request_bytes() {
        let mut out = [0u8; 32];
        let req = Request {
            header: header(),
            data: b"abcd",
        };
        let n = req.encode(HeaderMode::Simple, &mut out).unwrap();
        assert_eq!(n, 32);
        assert_eq!(
            &out[..28],
            &[
                0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 4
            ]
        );
        assert_eq!(
            Request::decode(&out, HeaderMode::Simple),
            Ok(Some((req, 32)))
        );
        assert_eq!(Request::decode(&out[..31], HeaderMode::Simple), Ok(None));
    }

    #[test]
    fn extended_request_bytes() {
        let mut out = [0u8; 36];
        let mut h = header();
        h.flags |= CmdFlags::PAYLOAD_LEN;
        let req = Request {
            header: h,
            data: b"abcd",
        };
        let n = req.encode(HeaderMode::Extended, &mut out).unwrap();
        assert_eq!(n, 36);
        assert_eq!(&out[..4], &[0x21, 0xe4, 0x1c, 0x71]);
        assert_eq!(&out[24..32], &[0, 0, 0, 0, 0, 0, 0, 4]);
        assert_eq!(
            Request::decode(&out, HeaderMode::Extended),
            Ok(Some((req, 36)))
        );
    }

    #[test]
    fn checklist_64_bad_magic_is_an_error() {
        let mut out = [0u8; 28];
        header().encode(HeaderMode::Simple, &mut out).unwrap();
        out[3] = 0x14; // 0x25609514, the nbd-server transaction-log magic
        assert_eq!(
            RequestHeader::decode(&out, HeaderMode::Simple),
            Err(DecodeError::BadMagic(0x2560_9514))
        );
    }

    #[test]
    fn unknown_flags_and_commands_round_trip() {
        let mut out = [0u8; 28];
        let h = RequestHeader {
            flags: CmdFlags::from_bits_retain(0x8080),
            command: Command::Unknown(42),
            cookie: Cookie(u64::MAX),
            offset: u64::MAX,
            len: 0,
        };
        h.encode(HeaderMode::Simple, &mut out).unwrap();
        assert_eq!(
            RequestHeader::decode(&out, HeaderMode::Simple),
            Ok(Some((h, 28)))
        );
    }
}
