//! Option payloads and option-reply payloads: INFO/GO requests and their
//! `NBD_REP_INFO` items, meta-context queries and replies, LIST entries.
//!
//! Lists inside options (info requests, meta-context queries) are exposed as
//! lazy iterators over the borrowed, already-validated slice: no allocation.
//!
//! Spec: [proto.md "Option types"][opt], ["Option reply types"][rep]
//! (`NBD_REP_INFO` carries the info types), ["Metadata querying"][meta].
//!
//! [opt]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-types
//! [rep]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-reply-types
//! [meta]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#metadata-querying

use nom::Parser;
use nom::bytes::take;
use nom::number::{be_u16, be_u32};

use super::handshake::{OPTION_HEADER_LEN, OPTION_REPLY_HEADER_LEN, OptionHeader};
use super::{Writer, be_u16_at, be_u32_at, be_u64_at, check_str, nom_err};
use crate::error::{BufferTooSmall, DecodeError};
use crate::flags::TransmissionFlags;
use crate::magic::OPTION_REPLY_MAGIC;
use crate::types::{InfoType, OptReplyType, OptionCode};

/// Split off a u32-length-prefixed field (an export name, a query, a
/// LIST name), checking the length against the data before use.
fn length_prefixed<'a>(
    data: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
    let (rest, len) = be_u32().parse_complete(data).map_err(nom_err(what))?;
    let len = usize::try_from(len).map_err(|_| DecodeError::BadLength(what))?;
    take(len).parse_complete(rest).map_err(nom_err(what))
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`: an export name and a list of
/// requested info types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// Export name ("" = default export).
    pub name: &'a str,
    /// Requested `NBD_INFO_*` codes, two bytes each.
    raw: &'a [u8],
}

impl<'a> InfoRequest<'a> {
    /// Decode the whole option data.
    ///
    /// # Errors
    /// `BadLength` when the name or count disagrees with the data length
    /// (the server answers `NBD_REP_ERR_INVALID`), `BadString` for a bad name.
    pub fn decode(data: &'a [u8]) -> Result<Self, DecodeError> {
        let what = "NBD_OPT_INFO/GO";
        let (rest, name) = length_prefixed(data, what)?;
        let (rest, count) = be_u16().parse_complete(rest).map_err(nom_err(what))?;
        let (rest, raw) = take(usize::from(count) * 2)
            .parse_complete(rest)
            .map_err(nom_err(what))?;
        if !rest.is_empty() {
            return Err(DecodeError::BadLength(what));
        }
        Ok(Self {
            name: check_str(name, "export name")?,
            raw,
        })
    }

    /// The requested info types, in the client's order.
    pub fn requests(&self) -> impl Iterator<Item = InfoType> + 'a {
        self.raw.chunks_exact(2).map(|c| {
            InfoType::from(u16::from_be_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ]))
        })
    }

    /// True when the client asked for `ty`.
    #[must_use]
    pub fn requested(&self, ty: InfoType) -> bool {
        self.requests().any(|t| t == ty)
    }

    /// Encode a whole INFO/GO option (header and data), client side.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn encode(
        option: OptionCode,
        name: &str,
        requests: &[InfoType],
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let data_len = 4 + name.len() + 2 + 2 * requests.len();
        let mut w = Writer::new(out, OPTION_HEADER_LEN + data_len)?;
        w.u64(crate::magic::IHAVEOPT);
        w.u32(option.into());
        w.u32(u32::try_from(data_len).unwrap_or(u32::MAX));
        w.u32(u32::try_from(name.len()).unwrap_or(u32::MAX));
        w.bytes(name.as_bytes());
        w.u16(u16::try_from(requests.len()).unwrap_or(u16::MAX));
        for r in requests {
            w.u16((*r).into());
        }
        Ok(w.finish())
    }
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaContextRequest<'a> {
    /// Export name the contexts are for.
    pub name: &'a str,
    count: u32,
    raw: &'a [u8],
}

impl<'a> MetaContextRequest<'a> {
    /// Decode and validate the whole option data, including every query.
    ///
    /// # Errors
    /// `BadLength` when a length runs past the data (the spec's MUST-INVALID
    /// case), `BadString` for a name or query that is not a valid string.
    pub fn decode(data: &'a [u8]) -> Result<Self, DecodeError> {
        let what = "meta context option";
        let (rest, name) = length_prefixed(data, what)?;
        let (raw, count) = be_u32().parse_complete(rest).map_err(nom_err(what))?;
        // Walk every query once now so the iterator below can be infallible.
        let mut cur = raw;
        for _ in 0..count {
            let (r, q) = length_prefixed(cur, what)?;
            check_str(q, "meta context query")?;
            cur = r;
        }
        if !cur.is_empty() {
            return Err(DecodeError::BadLength(what));
        }
        Ok(Self {
            name: check_str(name, "export name")?,
            count,
            raw,
        })
    }

    /// Number of queries.
    #[must_use]
    pub fn query_count(&self) -> u32 {
        self.count
    }

    /// The queries, in order.
    pub fn queries(&self) -> MetaQueries<'a> {
        MetaQueries { rest: self.raw }
    }

    /// Encode a whole LIST/SET_META_CONTEXT option (header and data).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn encode(
        option: OptionCode,
        name: &str,
        queries: &[&str],
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let data_len = 4 + name.len() + 4 + queries.iter().map(|q| 4 + q.len()).sum::<usize>();
        let mut w = Writer::new(out, OPTION_HEADER_LEN + data_len)?;
        w.u64(crate::magic::IHAVEOPT);
        w.u32(option.into());
        w.u32(u32::try_from(data_len).unwrap_or(u32::MAX));
        w.u32(u32::try_from(name.len()).unwrap_or(u32::MAX));
        w.bytes(name.as_bytes());
        w.u32(u32::try_from(queries.len()).unwrap_or(u32::MAX));
        for q in queries {
            w.u32(u32::try_from(q.len()).unwrap_or(u32::MAX));
            w.bytes(q.as_bytes());
        }
        Ok(w.finish())
    }
}

/// Iterator over validated meta-context queries.
#[derive(Debug, Clone)]
pub struct MetaQueries<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for MetaQueries<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let len = usize::try_from(be_u32_at(self.rest, 0)).ok()?;
        let body = self.rest.get(4..)?;
        let q = body.get(..len)?;
        self.rest = body.get(len..)?;
        core::str::from_utf8(q).ok()
    }
}

/// Encode an option with no data (ABORT, LIST, STARTTLS, STRUCTURED_REPLY,
/// EXTENDED_HEADERS) or with raw data (EXPORT_NAME), client side.
///
/// # Errors
/// [`BufferTooSmall`] when `out` is too short.
pub fn encode_option(
    option: OptionCode,
    data: &[u8],
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let mut w = Writer::new(out, OPTION_HEADER_LEN + data.len())?;
    let header = OptionHeader {
        option,
        len: u32::try_from(data.len()).unwrap_or(u32::MAX),
    };
    w.u64(crate::magic::IHAVEOPT);
    w.u32(header.option.into());
    w.u32(header.len);
    w.bytes(data);
    Ok(w.finish())
}

/// One piece of export information (the payload of `NBD_REP_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info<'a> {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// Export size.
        size: u64,
        /// Transmission flags.
        flags: TransmissionFlags,
    },
    /// `NBD_INFO_NAME`: the canonical name.
    Name(&'a str),
    /// `NBD_INFO_DESCRIPTION`: a human-readable description.
    Description(&'a str),
    /// `NBD_INFO_BLOCK_SIZE`: minimum, preferred, maximum payload.
    BlockSize {
        /// Minimum block size.
        minimum: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload size.
        maximum: u32,
    },
    /// An info type this crate does not know, with its raw payload.
    Unknown(u16, &'a [u8]),
}

impl<'a> Info<'a> {
    fn payload_len(&self) -> usize {
        match self {
            Self::Export { .. } => 10,
            Self::Name(s) | Self::Description(s) => s.len(),
            Self::BlockSize { .. } => 12,
            Self::Unknown(_, b) => b.len(),
        }
    }

    /// Bytes of the whole `NBD_REP_INFO` reply, header included.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        OPTION_REPLY_HEADER_LEN + 2 + self.payload_len()
    }

    /// Encode a whole `NBD_REP_INFO` reply answering `option`.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn encode(&self, option: OptionCode, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut w = Writer::new(out, self.encoded_len())?;
        w.u64(OPTION_REPLY_MAGIC);
        w.u32(option.into());
        w.u32(OptReplyType::Info.into());
        w.u32(u32::try_from(2 + self.payload_len()).unwrap_or(u32::MAX));
        match *self {
            Self::Export { size, flags } => {
                w.u16(InfoType::Export.into());
                w.u64(size);
                w.u16(flags.bits());
            }
            Self::Name(s) => {
                w.u16(InfoType::Name.into());
                w.bytes(s.as_bytes());
            }
            Self::Description(s) => {
                w.u16(InfoType::Description.into());
                w.bytes(s.as_bytes());
            }
            Self::BlockSize {
                minimum,
                preferred,
                maximum,
            } => {
                w.u16(InfoType::BlockSize.into());
                w.u32(minimum);
                w.u32(preferred);
                w.u32(maximum);
            }
            Self::Unknown(ty, b) => {
                w.u16(ty);
                w.bytes(b);
            }
        }
        Ok(w.finish())
    }

    /// Decode the data of an `NBD_REP_INFO` reply.
    ///
    /// # Errors
    /// `BadLength` when a fixed-size info has the wrong length.
    pub fn decode(data: &'a [u8]) -> Result<Self, DecodeError> {
        let (ty, body) = data
            .split_first_chunk::<2>()
            .ok_or(DecodeError::BadLength("NBD_REP_INFO"))?;
        let ty = u16::from_be_bytes(*ty);
        Ok(match InfoType::from(ty) {
            InfoType::Export => {
                if body.len() != 10 {
                    return Err(DecodeError::BadLength("NBD_INFO_EXPORT"));
                }
                Self::Export {
                    size: be_u64_at(body, 0),
                    flags: TransmissionFlags::from_bits_retain(be_u16_at(body, 8)),
                }
            }
            InfoType::Name => Self::Name(check_str(body, "NBD_INFO_NAME")?),
            InfoType::Description => Self::Description(check_str(body, "NBD_INFO_DESCRIPTION")?),
            InfoType::BlockSize => {
                if body.len() != 12 {
                    return Err(DecodeError::BadLength("NBD_INFO_BLOCK_SIZE"));
                }
                Self::BlockSize {
                    minimum: be_u32_at(body, 0),
                    preferred: be_u32_at(body, 4),
                    maximum: be_u32_at(body, 8),
                }
            }
            InfoType::Unknown(t) => Self::Unknown(t, body),
        })
    }
}

/// Encode an `NBD_REP_SERVER` reply (one LIST entry): name, then an
/// optional description.
///
/// # Errors
/// [`BufferTooSmall`] when `out` is too short.
pub fn encode_server_entry(
    name: &str,
    description: &str,
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let data_len = 4 + name.len() + description.len();
    let mut w = Writer::new(out, OPTION_REPLY_HEADER_LEN + data_len)?;
    w.u64(OPTION_REPLY_MAGIC);
    w.u32(OptionCode::List.into());
    w.u32(OptReplyType::Server.into());
    w.u32(u32::try_from(data_len).unwrap_or(u32::MAX));
    w.u32(u32::try_from(name.len()).unwrap_or(u32::MAX));
    w.bytes(name.as_bytes());
    w.bytes(description.as_bytes());
    Ok(w.finish())
}

/// Encode an `NBD_REP_META_CONTEXT` reply.
///
/// # Errors
/// [`BufferTooSmall`] when `out` is too short.
pub fn encode_meta_context(
    option: OptionCode,
    id: u32,
    name: &str,
    out: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let data_len = 4 + name.len();
    let mut w = Writer::new(out, OPTION_REPLY_HEADER_LEN + data_len)?;
    w.u64(OPTION_REPLY_MAGIC);
    w.u32(option.into());
    w.u32(OptReplyType::MetaContext.into());
    w.u32(u32::try_from(data_len).unwrap_or(u32::MAX));
    w.u32(id);
    w.bytes(name.as_bytes());
    Ok(w.finish())
}

/// A decoded option reply payload (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptReply<'a> {
    /// `NBD_REP_ACK`.
    Ack,
    /// `NBD_REP_SERVER`: an export name and description.
    Server {
        /// Export name.
        name: &'a str,
        /// Description (may be empty).
        description: &'a str,
    },
    /// `NBD_REP_INFO`.
    Info(Info<'a>),
    /// `NBD_REP_META_CONTEXT`.
    MetaContext {
        /// Context ID (meaningless in LIST replies).
        id: u32,
        /// Context name.
        name: &'a str,
    },
    /// An error reply, with its optional message.
    Error(OptReplyType, &'a str),
    /// A non-error reply type this crate does not know.
    Unknown(OptReplyType, &'a [u8]),
}

impl<'a> OptReply<'a> {
    /// Decode reply data given its type.
    ///
    /// # Errors
    /// `BadLength`/`BadString` for malformed data.
    pub fn decode(reply: OptReplyType, data: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(match reply {
            OptReplyType::Ack => {
                if !data.is_empty() {
                    return Err(DecodeError::BadLength("NBD_REP_ACK"));
                }
                Self::Ack
            }
            OptReplyType::Server => {
                let what = "NBD_REP_SERVER";
                let (rest, name) = length_prefixed(data, what)?;
                Self::Server {
                    name: check_str(name, what)?,
                    description: check_str(rest, what)?,
                }
            }
            OptReplyType::Info => Self::Info(Info::decode(data)?),
            OptReplyType::MetaContext => {
                let (id, name) = data
                    .split_first_chunk::<4>()
                    .ok_or(DecodeError::BadLength("NBD_REP_META_CONTEXT"))?;
                Self::MetaContext {
                    id: u32::from_be_bytes(*id),
                    name: check_str(name, "NBD_REP_META_CONTEXT")?,
                }
            }
            r if r.is_error() => Self::Error(r, core::str::from_utf8(data).unwrap_or("")),
            r => Self::Unknown(r, data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_request_roundtrip() {
        let mut out = [0u8; 64];
        let n = InfoRequest::encode(
            OptionCode::Go,
            "disk",
            &[InfoType::BlockSize, InfoType::Unknown(0x7777)],
            &mut out,
        )
        .unwrap();
        assert_eq!(n, 16 + 4 + 4 + 2 + 4);
        let req = InfoRequest::decode(&out[16..n]).unwrap();
        assert_eq!(req.name, "disk");
        assert!(req.requested(InfoType::BlockSize));
        assert!(!req.requested(InfoType::Name));
        assert_eq!(req.requests().count(), 2);
    }

    #[test]
    fn checklist_27_info_request_length_mismatch_is_invalid() {
        // name length 10 but only 4 bytes follow
        let data = [0, 0, 0, 10, b'a', b'b', 0, 0];
        assert!(matches!(
            InfoRequest::decode(&data),
            Err(DecodeError::BadLength(_))
        ));
        // trailing garbage after the info list
        let data = [0, 0, 0, 0, 0, 0, 0xff];
        assert!(matches!(
            InfoRequest::decode(&data),
            Err(DecodeError::BadLength(_))
        ));
        // name length near u32::MAX never panics
        let data = [0xff, 0xff, 0xff, 0xff, 0, 0];
        assert!(InfoRequest::decode(&data).is_err());
    }

    #[test]
    fn checklist_39_meta_query_past_option_length_is_invalid() {
        let mut data = [0u8; 4 + 4 + 4 + 3];
        data[7] = 1; // one query
        data[11] = 200; // claims 200 bytes
        assert!(matches!(
            MetaContextRequest::decode(&data),
            Err(DecodeError::BadLength(_))
        ));
    }

    #[test]
    fn meta_request_roundtrip() {
        let mut out = [0u8; 128];
        let n = MetaContextRequest::encode(
            OptionCode::SetMetaContext,
            "",
            &["base:allocation", "qemu:dirty-bitmap:x"],
            &mut out,
        )
        .unwrap();
        let req = MetaContextRequest::decode(&out[16..n]).unwrap();
        assert_eq!(req.query_count(), 2);
        let mut q = req.queries();
        assert_eq!(q.next(), Some("base:allocation"));
        assert_eq!(q.next(), Some("qemu:dirty-bitmap:x"));
        assert_eq!(q.next(), None);
    }

    #[test]
    fn checklist_22_info_export_is_length_12() {
        let mut out = [0u8; 64];
        let info = Info::Export {
            size: 1 << 20,
            flags: TransmissionFlags::HAS_FLAGS,
        };
        let n = info.encode(OptionCode::Info, &mut out).unwrap();
        assert_eq!(n, 32);
        assert_eq!(&out[16..20], &[0, 0, 0, 12]);
        assert_eq!(Info::decode(&out[20..n]), Ok(info));
    }

    #[test]
    fn checklist_16_server_entry_layout() {
        let mut out = [0u8; 64];
        let n = encode_server_entry("a", "desc", &mut out).unwrap();
        assert_eq!(n, 20 + 4 + 1 + 4);
        assert_eq!(
            OptReply::decode(OptReplyType::Server, &out[20..n]),
            Ok(OptReply::Server {
                name: "a",
                description: "desc"
            })
        );
    }
}
