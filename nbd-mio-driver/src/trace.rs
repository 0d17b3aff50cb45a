//! What `-v` and `-v -v` say about a connection, one line each, prefixed
//! with the peer (issue 12: negotiation was invisible and requests were
//! printed in Rust `Debug` form).
//!
//! `-v` (info): each option received (name, export asked, meta-context
//! queries), each answer (ACK or the error and its message, export size
//! and flags in words, block sizes, meta contexts agreed, the number of
//! exports listed), the outcome of the negotiation, TLS starting, and
//! requests that failed in the backend with the cause. `-v -v` (debug):
//! one line per request (`READ offset=0 len=4096 flags=FUA|DF`) and every
//! error reply in words (`EIO`, `ENOSPC`).
//!
//! Options and answers are decoded from the bytes the connection consumed
//! and queued, so every option nbd-proto handles by itself appears too.
//! Every function returns at once unless its level is enabled: nothing is
//! decoded, formatted or allocated otherwise.

use std::cell::RefCell;
use std::fmt::Write as _;

use log::Level;
use nbd_proto::server::{Negotiated, Pending};
use nbd_proto::{
    ClientFlags, CmdFlags, Command, ErrorCode, HeaderMode, OptReplyType, OptionCode,
    TransmissionFlags,
};

use crate::conn::META_CONTEXTS;

/// Option reply magic (proto.md "Option reply").
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Longest name or message quoted in a line.
const QUOTE_MAX: usize = 200;

/// True when `-v` lines are wanted.
pub fn on() -> bool {
    log::log_enabled!(Level::Info)
}

/// True when `-v -v` lines are wanted.
pub fn requests_on() -> bool {
    log::log_enabled!(Level::Debug)
}

thread_local! {
    /// The connection this event loop is serving, for the error replies
    /// encoded deep in dispatch (set only at `-v`).
    static PEER: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Name the connection being served on this thread (`-v` only).
pub fn serving(peer: &str) {
    if on() {
        PEER.with_borrow_mut(|p| {
            if p != peer {
                peer.clone_into(p);
            }
        });
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `b` as a quoted, escaped string (one line whatever the client sent).
fn quote(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(QUOTE_MAX)]);
    let more = if b.len() > QUOTE_MAX { "..." } else { "" };
    format!("{s:?}{more}")
}

/// A length-prefixed (u32) string at `at`: its text and where it ends.
fn string_at(b: &[u8], at: usize) -> Option<(String, usize)> {
    let n = be32(b, at)? as usize;
    let s = b.get(at + 4..(at + 4).checked_add(n)?)?;
    Some((quote(s), at + 4 + n))
}

/// Flag names joined with `|`, or `none`.
fn words<'a>(names: impl Iterator<Item = &'a str>, unknown: u32) -> String {
    let mut s: Vec<String> = names.map(str::to_owned).collect();
    if unknown != 0 {
        s.push(format!("{unknown:#x}"));
    }
    if s.is_empty() {
        "none".to_owned()
    } else {
        s.join("|")
    }
}

/// Request flags in words: `FUA|DF`.
pub fn cmd_flags(f: CmdFlags) -> String {
    let unknown = f.bits() & !CmdFlags::all().bits();
    words(f.iter_names().map(|(n, _)| n), unknown.into())
}

/// Transmission flags in words, without the always-set `HAS_FLAGS`.
pub fn transmission_flags(f: TransmissionFlags) -> String {
    let f = f - TransmissionFlags::HAS_FLAGS;
    let unknown = f.bits() & !TransmissionFlags::all().bits();
    words(f.iter_names().map(|(n, _)| n), unknown.into())
}

/// `NBD_OPT_GO`, or `option 42` for one nbd-proto does not know.
pub fn option_name(code: u32) -> String {
    let n = match OptionCode::from(code) {
        OptionCode::ExportName => "EXPORT_NAME",
        OptionCode::Abort => "ABORT",
        OptionCode::List => "LIST",
        OptionCode::StartTls => "STARTTLS",
        OptionCode::Info => "INFO",
        OptionCode::Go => "GO",
        OptionCode::StructuredReply => "STRUCTURED_REPLY",
        OptionCode::ListMetaContext => "LIST_META_CONTEXT",
        OptionCode::SetMetaContext => "SET_META_CONTEXT",
        OptionCode::ExtendedHeaders => "EXTENDED_HEADERS",
        OptionCode::Unknown(n) => return format!("option {n}"),
    };
    format!("NBD_OPT_{n}")
}

/// `NBD_REP_ERR_UNSUP` and friends.
fn reply_name(t: OptReplyType) -> String {
    let n = match t {
        OptReplyType::Ack => "ACK",
        OptReplyType::Server => "SERVER",
        OptReplyType::Info => "INFO",
        OptReplyType::MetaContext => "META_CONTEXT",
        OptReplyType::ErrUnsup => "ERR_UNSUP",
        OptReplyType::ErrPolicy => "ERR_POLICY",
        OptReplyType::ErrInvalid => "ERR_INVALID",
        OptReplyType::ErrPlatform => "ERR_PLATFORM",
        OptReplyType::ErrTlsReqd => "ERR_TLS_REQD",
        OptReplyType::ErrUnknown => "ERR_UNKNOWN",
        OptReplyType::ErrShutdown => "ERR_SHUTDOWN",
        OptReplyType::ErrBlockSizeReqd => "ERR_BLOCK_SIZE_REQD",
        OptReplyType::ErrTooBig => "ERR_TOO_BIG",
        OptReplyType::ErrExtHeaderReqd => "ERR_EXT_HEADER_REQD",
        OptReplyType::Unknown(n) => return format!("reply type {n:#x}"),
    };
    format!("NBD_REP_{n}")
}

/// `READ`, `WRITE_ZEROES`...
pub fn command_name(c: Command) -> String {
    let n = match c {
        Command::Read => "READ",
        Command::Write => "WRITE",
        Command::Disc => "DISC",
        Command::Flush => "FLUSH",
        Command::Trim => "TRIM",
        Command::Cache => "CACHE",
        Command::WriteZeroes => "WRITE_ZEROES",
        Command::BlockStatus => "BLOCK_STATUS",
        Command::Resize => "RESIZE",
        Command::Unknown(n) => return format!("command {n}"),
    };
    n.to_owned()
}

/// The errno name of a reply error: `EIO`, `ENOSPC`...
pub fn error_name(e: ErrorCode) -> String {
    let n = match e {
        ErrorCode::Perm => "EPERM",
        ErrorCode::Io => "EIO",
        ErrorCode::NoMem => "ENOMEM",
        ErrorCode::Inval => "EINVAL",
        ErrorCode::NoSpc => "ENOSPC",
        ErrorCode::Overflow => "EOVERFLOW",
        ErrorCode::NotSup => "ENOTSUP",
        ErrorCode::Shutdown => "ESHUTDOWN",
        ErrorCode::Unknown(n) => return format!("error {n}"),
    };
    n.to_owned()
}

/// `-v`: what the client just sent during negotiation (`consumed`: the
/// bytes nbd-proto took): its flags, or an option and what it asks.
pub fn received(peer: &str, consumed: &[u8]) {
    if !on() || consumed.is_empty() {
        return;
    }
    if consumed.len() == 4 {
        let f = ClientFlags::from_bits_retain(be32(consumed, 0).unwrap_or(0));
        let unknown = f.bits() & !ClientFlags::all().bits();
        let names = f.iter_names().map(|(n, _)| n);
        log::info!("{peer}: client flags {}", words(names, unknown));
        return;
    }
    if consumed.get(..8) != Some(b"IHAVEOPT".as_slice()) {
        return;
    }
    let (Some(code), Some(len)) = (be32(consumed, 8), be32(consumed, 12)) else {
        return;
    };
    let data = consumed.get(16..).unwrap_or_default();
    let what = describe_option(OptionCode::from(code), data, len);
    log::info!("{peer}: received {}{what}", option_name(code));
}

/// The interesting part of an option's data.
fn describe_option(code: OptionCode, data: &[u8], len: u32) -> String {
    match code {
        OptionCode::ExportName => format!(" export {}", quote(data)),
        OptionCode::Info | OptionCode::Go => {
            let Some((name, end)) = string_at(data, 0) else {
                return format!(" ({len} bytes)");
            };
            let n = be16(data, end).unwrap_or(0);
            let asks: Vec<&str> = (0..usize::from(n))
                .filter_map(|i| be16(data, end + 2 + 2 * i))
                .map(|t| match t {
                    0 => "EXPORT",
                    1 => "NAME",
                    2 => "DESCRIPTION",
                    3 => "BLOCK_SIZE",
                    _ => "unknown",
                })
                .collect();
            if asks.is_empty() {
                format!(" export {name}")
            } else {
                format!(" export {name}, asking for {}", asks.join("|"))
            }
        }
        OptionCode::ListMetaContext | OptionCode::SetMetaContext => {
            let Some((name, mut at)) = string_at(data, 0) else {
                return format!(" ({len} bytes)");
            };
            let n = be32(data, at).unwrap_or(0);
            at += 4;
            let mut queries = Vec::new();
            for _ in 0..n.min(16) {
                match string_at(data, at) {
                    Some((q, end)) => {
                        queries.push(q);
                        at = end;
                    }
                    None => break,
                }
            }
            let all = if n == 0 {
                "all".to_owned()
            } else {
                queries.join(", ")
            };
            format!(" export {name}, contexts {all}")
        }
        _ if len > 0 => format!(" ({len} bytes of data)"),
        _ => String::new(),
    }
}

/// One option's answer being gathered from its replies.
#[derive(Default)]
struct Answer {
    option: u32,
    details: Vec<String>,
    contexts: Vec<String>,
    listed: usize,
}

impl Answer {
    /// The line for this option, ended by `reply` (an ACK or an error).
    fn line(&self, reply: OptReplyType, message: &[u8]) -> String {
        let mut s = format!("answered {}: ", option_name(self.option));
        if reply.is_error() {
            let _ = write!(s, "{}", reply_name(reply));
            if !message.is_empty() {
                let _ = write!(s, " {}", quote(message));
            }
            return s;
        }
        let mut parts = self.details.clone();
        match OptionCode::from(self.option) {
            OptionCode::List => parts.push(format!("{} exports", self.listed)),
            OptionCode::SetMetaContext | OptionCode::ListMetaContext => {
                let c = if self.contexts.is_empty() {
                    "none".to_owned()
                } else {
                    self.contexts.join(", ")
                };
                parts.push(format!("meta contexts {c}"));
            }
            OptionCode::StructuredReply => parts.push("structured replies on".into()),
            OptionCode::ExtendedHeaders => parts.push("extended headers on".into()),
            OptionCode::StartTls => parts.push("starting TLS".into()),
            OptionCode::Abort => parts.push("closing".into()),
            _ => {}
        }
        if parts.is_empty() {
            s.push_str("ACK");
        } else {
            s.push_str(&parts.join(", "));
        }
        s
    }

    fn info(&mut self, data: &[u8]) {
        let d = match be16(data, 0) {
            Some(0) => match (be64(data, 2), be16(data, 10)) {
                (Some(size), Some(f)) => format!(
                    "size {size}, flags {}",
                    transmission_flags(TransmissionFlags::from_bits_retain(f))
                ),
                _ => return,
            },
            Some(1) => format!("name {}", quote(data.get(2..).unwrap_or_default())),
            Some(2) => format!("description {}", quote(data.get(2..).unwrap_or_default())),
            Some(3) => match (be32(data, 2), be32(data, 6), be32(data, 10)) {
                (Some(min), Some(pref), Some(max)) => {
                    format!("block sizes minimum {min} preferred {pref} maximum {max}")
                }
                _ => return,
            },
            _ => return,
        };
        self.details.push(d);
    }
}

/// `-v`: the option replies just queued during negotiation, one line per
/// option answered.
pub fn answered(peer: &str, out: &[u8]) {
    if !on() {
        return;
    }
    let mut at = 0;
    // The greeting (newstyle: magic, IHAVEOPT, 16-bit flags).
    if out.starts_with(b"NBDMAGICIHAVEOPT") {
        at = 18;
    }
    let mut a: Option<Answer> = None;
    while let (Some(REPLY_MAGIC), Some(option), Some(t), Some(len)) = (
        be64(out, at),
        be32(out, at + 8),
        be32(out, at + 12),
        be32(out, at + 16),
    ) {
        let start = at + 20;
        let Some(data) = out.get(start..start + len as usize) else {
            break;
        };
        at = start + len as usize;
        let ans = a.get_or_insert_with(|| Answer {
            option,
            ..Answer::default()
        });
        match OptReplyType::from(t) {
            OptReplyType::Server => ans.listed += 1,
            OptReplyType::Info => ans.info(data),
            OptReplyType::MetaContext => {
                // LIST_META_CONTEXT answers with ID 0 (meaningless).
                let name = quote(data.get(4..).unwrap_or_default());
                ans.contexts.push(match be32(data, 0).unwrap_or(0) {
                    0 => name,
                    id => format!("{name} (id {id})"),
                });
            }
            // A GO that succeeded was told by `negotiated`, with more.
            OptReplyType::Ack if OptionCode::from(ans.option) == OptionCode::Go => a = None,
            end => {
                log::info!("{peer}: {}", ans.line(end, data));
                a = None;
            }
        }
    }
    // A long LIST is answered in several passes.
    if let Some(ans) = a {
        log::info!(
            "{peer}: answering {}: {} exports so far",
            option_name(ans.option),
            ans.listed
        );
    }
}

/// `-v`: negotiation finished; what the connection will use.
pub fn negotiated(peer: &str, export: &str, n: &Negotiated) {
    if !on() {
        return;
    }
    let replies = match n.mode {
        HeaderMode::Simple => "simple replies",
        HeaderMode::Structured => "structured replies",
        HeaderMode::Extended => "extended headers",
    };
    let contexts: Vec<&str> = META_CONTEXTS
        .iter()
        .enumerate()
        .filter(|&(i, _)| n.meta_contexts & (1 << i) != 0)
        .map(|(_, c)| *c)
        .collect();
    let contexts = if contexts.is_empty() {
        "none".to_owned()
    } else {
        contexts.join(", ")
    };
    let b = &n.block_sizes;
    log::info!(
        "{peer}: negotiated export {export:?}: size {}, flags {}, block sizes minimum {} preferred {} maximum {}{}, {replies}, meta contexts {contexts}, TLS {}",
        n.size,
        transmission_flags(n.flags),
        b.minimum,
        b.preferred,
        b.maximum,
        if n.block_sizes_agreed {
            " (agreed)"
        } else {
            ""
        },
        if n.tls { "on" } else { "off" }
    );
}

/// `-v`: the TLS handshake finished.
pub fn tls_established(peer: &str) {
    if on() {
        log::info!("{peer}: TLS established");
    }
}

/// `-v -v`: a request as received.
pub fn request(peer: &str, p: &Pending) {
    if requests_on() {
        log::debug!(
            "{peer}: {} offset={} len={} flags={} cookie={:#x}",
            command_name(p.command()),
            p.offset(),
            p.len(),
            cmd_flags(p.flags()),
            p.cookie().0
        );
    }
}

/// A request is answered with an error: at `-v` when the backend failed
/// (`why`: its error, the cause), at `-v -v` for requests refused by the
/// protocol (`why`: the message sent).
pub fn error_reply(p: &Pending, code: ErrorCode, why: &dyn std::fmt::Display, backend: bool) {
    let level = if backend { Level::Info } else { Level::Debug };
    if log::log_enabled!(level) {
        PEER.with_borrow(|peer| {
            log::log!(
                level,
                "{peer}: {} offset={} len={} cookie={:#x} failed: {} ({why})",
                command_name(p.command()),
                p.offset(),
                p.len(),
                p.cookie().0,
                error_name(code)
            );
        });
    }
}

/// `-v`: the backend failed a request; `e` is the cause.
pub fn backend_error(p: &Pending, code: ErrorCode, e: &std::io::Error) {
    if on() {
        error_reply(p, code, &nbd_backends::plain_error(e), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_as_words() {
        assert_eq!(cmd_flags(CmdFlags::FUA | CmdFlags::DF), "FUA|DF");
        assert_eq!(cmd_flags(CmdFlags::empty()), "none");
        assert_eq!(cmd_flags(CmdFlags::from_bits_retain(0x8001)), "FUA|0x8000");
        let t = TransmissionFlags::HAS_FLAGS
            | TransmissionFlags::READ_ONLY
            | TransmissionFlags::SEND_FLUSH;
        assert_eq!(transmission_flags(t), "READ_ONLY|SEND_FLUSH");
        assert_eq!(option_name(7), "NBD_OPT_GO");
        assert_eq!(option_name(99), "option 99");
        assert_eq!(error_name(ErrorCode::NoSpc), "ENOSPC");
        assert_eq!(command_name(Command::WriteZeroes), "WRITE_ZEROES");
    }

    #[test]
    fn option_data_is_decoded_and_bounded() {
        let mut go = Vec::new();
        go.extend(3u32.to_be_bytes());
        go.extend(b"abc");
        go.extend(1u16.to_be_bytes());
        go.extend(3u16.to_be_bytes());
        assert_eq!(
            describe_option(OptionCode::Go, &go, 11),
            " export \"abc\", asking for BLOCK_SIZE"
        );
        // A name length past the data: no panic, just the size.
        let bad = [0xff, 0xff, 0xff, 0xff, b'a'];
        assert_eq!(describe_option(OptionCode::Go, &bad, 5), " (5 bytes)");
        assert_eq!(
            describe_option(OptionCode::ExportName, b"x\ny", 3),
            " export \"x\\ny\""
        );
    }

    #[test]
    fn answers_read_as_words() {
        let mut a = Answer {
            option: 7,
            ..Answer::default()
        };
        let mut info = vec![0, 0];
        info.extend(4096u64.to_be_bytes());
        info.extend(0x0007u16.to_be_bytes());
        a.info(&info);
        assert_eq!(
            a.line(OptReplyType::Ack, &[]),
            "answered NBD_OPT_GO: size 4096, flags READ_ONLY|SEND_FLUSH"
        );
        assert_eq!(
            a.line(OptReplyType::ErrUnknown, b"no such export"),
            "answered NBD_OPT_GO: NBD_REP_ERR_UNKNOWN \"no such export\""
        );
    }
}
