//! Handshake framing: greetings, client flags, option and option-reply
//! headers, and the `NBD_OPT_EXPORT_NAME` reply.
//!
//! Spec: [proto.md "Handshake"][hs], ["Fixed newstyle negotiation"][fixed],
//! ["Oldstyle negotiation"][old].
//!
//! [hs]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#handshake
//! [fixed]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#fixed-newstyle-negotiation
//! [old]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#oldstyle-negotiation

use super::{Writer, be_u16_at, be_u32_at, be_u64_at, head};
use crate::error::{BufferTooSmall, DecodeError};
use crate::flags::{ClientFlags, HandshakeFlags, TransmissionFlags};
use crate::magic::{IHAVEOPT, NBDMAGIC, OLDSTYLE_MAGIC, OPTION_REPLY_MAGIC};
use crate::types::{OptReplyType, OptionCode};

/// The server's first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Greeting {
    /// Fixed or plain newstyle: `NBDMAGIC`, `IHAVEOPT`, handshake flags (18 bytes).
    Newstyle(HandshakeFlags),
    /// Oldstyle: magics, export size, 32-bit flags, 124 zero bytes (152 bytes).
    Oldstyle {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags (the high 16 bits of the field are always 0).
        flags: TransmissionFlags,
    },
}

/// Length of the newstyle greeting.
pub const NEWSTYLE_GREETING_LEN: usize = 18;
/// Length of the oldstyle greeting.
pub const OLDSTYLE_GREETING_LEN: usize = 152;

impl Greeting {
    /// Bytes [`Greeting::encode`] writes.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Newstyle(_) => NEWSTYLE_GREETING_LEN,
            Self::Oldstyle { .. } => OLDSTYLE_GREETING_LEN,
        }
    }

    /// Encode into `out`.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is shorter than [`Greeting::encoded_len`].
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut w = Writer::new(out, self.encoded_len())?;
        w.u64(NBDMAGIC);
        match *self {
            Self::Newstyle(flags) => {
                w.u64(IHAVEOPT);
                w.u16(flags.bits());
            }
            Self::Oldstyle { size, flags } => {
                w.u64(OLDSTYLE_MAGIC);
                w.u64(size);
                w.u32(u32::from(flags.bits()));
                w.zeroes(124);
            }
        }
        Ok(w.finish())
    }

    /// Decode a greeting (client side).
    ///
    /// # Errors
    /// [`DecodeError::BadMagic`] when the magics are not NBD's.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some(h) = head::<16>(buf) else {
            return Ok(None);
        };
        let magic = be_u64_at(h, 0);
        if magic != NBDMAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        match be_u64_at(h, 8) {
            IHAVEOPT => {
                let Some(h) = head::<NEWSTYLE_GREETING_LEN>(buf) else {
                    return Ok(None);
                };
                let flags = HandshakeFlags::from_bits_retain(be_u16_at(h, 16));
                Ok(Some((Self::Newstyle(flags), NEWSTYLE_GREETING_LEN)))
            }
            OLDSTYLE_MAGIC => {
                let Some(h) = head::<OLDSTYLE_GREETING_LEN>(buf) else {
                    return Ok(None);
                };
                let size = be_u64_at(h, 16);
                let raw = be_u32_at(h, 24);
                if raw >> 16 != 0 {
                    return Err(DecodeError::Invalid("oldstyle handshake flags"));
                }
                let flags = TransmissionFlags::from_bits_retain(raw as u16);
                Ok(Some((
                    Self::Oldstyle { size, flags },
                    OLDSTYLE_GREETING_LEN,
                )))
            }
            other => Err(DecodeError::BadMagic(other)),
        }
    }
}

/// Encode the client's 32-bit flags.
///
/// # Errors
/// [`BufferTooSmall`] when `out` holds fewer than 4 bytes.
pub fn encode_client_flags(flags: ClientFlags, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
    let mut w = Writer::new(out, 4)?;
    w.u32(flags.bits());
    Ok(w.finish())
}

/// Decode the client's 32-bit flags, keeping unknown bits.
#[must_use]
pub fn decode_client_flags(buf: &[u8]) -> Option<(ClientFlags, usize)> {
    head::<4>(buf).map(|h| (ClientFlags::from_bits_retain(be_u32_at(h, 0)), 4))
}

/// The 16-byte header of a client option: `IHAVEOPT`, option, data length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OptionHeader {
    /// The option number.
    pub option: OptionCode,
    /// Length of the option data that follows.
    pub len: u32,
}

/// Length of an option header.
pub const OPTION_HEADER_LEN: usize = 16;

impl OptionHeader {
    /// Encode the header (the data is written by the caller after it).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` holds fewer than 16 bytes.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut w = Writer::new(out, OPTION_HEADER_LEN)?;
        w.u64(IHAVEOPT);
        w.u32(self.option.into());
        w.u32(self.len);
        Ok(w.finish())
    }

    /// Decode the header only; the data is not required to be present.
    ///
    /// # Errors
    /// [`DecodeError::BadMagic`] when the magic is not `IHAVEOPT`.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some(h) = head::<OPTION_HEADER_LEN>(buf) else {
            return Ok(None);
        };
        let magic = be_u64_at(h, 0);
        if magic != IHAVEOPT {
            return Err(DecodeError::BadMagic(magic));
        }
        let header = Self {
            option: OptionCode::from(be_u32_at(h, 8)),
            len: be_u32_at(h, 12),
        };
        Ok(Some((header, OPTION_HEADER_LEN)))
    }
}

/// The 20-byte header of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OptionReplyHeader {
    /// The option being answered.
    pub option: OptionCode,
    /// The reply type.
    pub reply: OptReplyType,
    /// Length of the reply data that follows.
    pub len: u32,
}

/// Length of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;

impl OptionReplyHeader {
    /// Encode the header.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` holds fewer than 20 bytes.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut w = Writer::new(out, OPTION_REPLY_HEADER_LEN)?;
        w.u64(OPTION_REPLY_MAGIC);
        w.u32(self.option.into());
        w.u32(self.reply.into());
        w.u32(self.len);
        Ok(w.finish())
    }

    /// Decode the header only.
    ///
    /// # Errors
    /// [`DecodeError::BadMagic`] when the magic is wrong.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some(h) = head::<OPTION_REPLY_HEADER_LEN>(buf) else {
            return Ok(None);
        };
        let magic = be_u64_at(h, 0);
        if magic != OPTION_REPLY_MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let header = Self {
            option: OptionCode::from(be_u32_at(h, 8)),
            reply: OptReplyType::from(be_u32_at(h, 12)),
            len: be_u32_at(h, 16),
        };
        Ok(Some((header, OPTION_REPLY_HEADER_LEN)))
    }
}

/// Encode a whole option reply: header plus `data`.
///
/// # Errors
/// [`BufferTooSmall`] when `out` cannot hold it; `BadLength` never happens
/// for data under 4 GiB, which callers guarantee.
pub fn encode_option_reply(
    option: OptionCode,
    reply: OptReplyType,
    data: &[u8],
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let total = OPTION_REPLY_HEADER_LEN.saturating_add(data.len());
    let mut w = Writer::new(out, total)?;
    w.u64(OPTION_REPLY_MAGIC);
    w.u32(option.into());
    w.u32(reply.into());
    w.u32(len);
    w.bytes(data);
    Ok(w.finish())
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero bytes
/// unless both sides agreed on `NO_ZEROES` ([proto.md "Handshake flags"]).
///
/// [proto.md "Handshake flags"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#handshake-flags
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ExportNameReply {
    /// Export size.
    pub size: u64,
    /// Transmission flags.
    pub flags: TransmissionFlags,
    /// Omit the 124 zero bytes.
    pub no_zeroes: bool,
}

impl ExportNameReply {
    /// Bytes [`ExportNameReply::encode`] writes: 10 or 134.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        if self.no_zeroes { 10 } else { 134 }
    }

    /// Encode into `out`.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut w = Writer::new(out, self.encoded_len())?;
        w.u64(self.size);
        w.u16(self.flags.bits());
        if !self.no_zeroes {
            w.zeroes(124);
        }
        Ok(w.finish())
    }

    /// Decode (client side); `no_zeroes` says whether padding is expected.
    #[must_use]
    pub fn decode(buf: &[u8], no_zeroes: bool) -> Option<(Self, usize)> {
        let len = if no_zeroes { 10 } else { 134 };
        let frame = buf.get(..len)?;
        let reply = Self {
            size: be_u64_at(frame, 0),
            flags: TransmissionFlags::from_bits_retain(be_u16_at(frame, 8)),
            no_zeroes,
        };
        Some((reply, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checklist_1_newstyle_greeting_bytes() {
        let mut out = [0u8; 18];
        let g = Greeting::Newstyle(HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES);
        assert_eq!(g.encode(&mut out), Ok(18));
        assert_eq!(
            out,
            [
                0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f,
                0x50, 0x54, 0x00, 0x03
            ]
        );
        assert_eq!(Greeting::decode(&out), Ok(Some((g, 18))));
        assert_eq!(Greeting::decode(&out[..17]), Ok(None));
    }

    #[test]
    fn oldstyle_greeting_is_152_bytes_with_zero_padding() {
        let mut out = [0xffu8; 160];
        let g = Greeting::Oldstyle {
            size: 1 << 30,
            flags: TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH,
        };
        assert_eq!(g.encode(&mut out), Ok(152));
        assert_eq!(&out[8..16], &[0, 0, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53]);
        assert_eq!(&out[24..28], &[0, 0, 0, 5]);
        assert!(out[28..152].iter().all(|&b| b == 0));
        assert_eq!(Greeting::decode(&out), Ok(Some((g, 152))));
    }

    #[test]
    fn checklist_7_option_reply_magic_and_echo() {
        let mut out = [0u8; 32];
        let n = encode_option_reply(OptionCode::List, OptReplyType::Ack, &[], &mut out).unwrap();
        assert_eq!(n, 20);
        assert_eq!(&out[..8], &[0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
        assert_eq!(&out[8..20], &[0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn checklist_18_19_export_name_reply_lengths() {
        let mut out = [0u8; 134];
        let r = ExportNameReply {
            size: 4096,
            flags: TransmissionFlags::HAS_FLAGS,
            no_zeroes: false,
        };
        assert_eq!(r.encode(&mut out), Ok(134));
        let r2 = ExportNameReply {
            no_zeroes: true,
            ..r
        };
        assert_eq!(r2.encode(&mut out), Ok(10));
        assert_eq!(
            r2.encode(&mut out[..9]),
            Err(BufferTooSmall { required: 10 })
        );
    }

    #[test]
    fn option_header_rejects_bad_magic() {
        let buf = [0u8; 16];
        assert_eq!(OptionHeader::decode(&buf), Err(DecodeError::BadMagic(0)));
    }
}
