//! The server negotiation state machine ([proto.md "Handshake"], "Option
//! haggling", "TLS support"), used by [`Connection`](super::Connection).
//!
//! It processes one option frame per [`Handshake::handle_input`] call and
//! answers options that need no outside knowledge itself (through
//! [`Handshake::poll_transmit`]). Options that need the caller (export
//! lookup, LIST, meta contexts, STARTTLS) come back as owned questions
//! ([`question`](super::question)); the answers are encoded in `answer.rs`.
//!
//! [proto.md "Handshake"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#handshake

use super::export::{Negotiated, TlsMode};
use super::meta::{self, NameBuf};
use super::question::{
    ExportOption, ExportQuestion, InfoWanted, ListQuestion, MetaQuestion, StartTls,
};
use crate::error::{BufferTooSmall, DecodeError, ProtocolError};
use crate::flags::{ClientFlags, HandshakeFlags};
use crate::types::{HeaderMode, InfoType, OptReplyType, OptionCode};
use crate::wire::handshake::{
    Greeting, OPTION_HEADER_LEN, OptionHeader, decode_client_flags, encode_option_reply,
};
use crate::wire::option::{InfoRequest, MetaContextRequest};

/// The `base:allocation` context ([proto.md "The `base:` metadata namespace"]).
///
/// [proto.md "The `base:` metadata namespace"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#the-base-metadata-namespace
pub const BASE_ALLOCATION: &str = "base:allocation";
/// qemu's `qemu:allocation-depth` context: how many layers down an extent
/// is allocated (0 = nowhere, 1 = the top layer; qemu's docs/interop/nbd.txt).
pub const QEMU_ALLOCATION_DEPTH: &str = "qemu:allocation-depth";

/// Limits and features of the negotiation: the TLS policy, which options
/// are accepted, the bounds that keep a hostile client from costing memory
/// or time, and the meta-context catalogue. The default suits a modern
/// server (fixed newstyle, structured replies, extended headers,
/// `base:allocation`, no TLS). Spec: [proto.md "Handshake"].
///
/// [proto.md "Handshake"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#handshake
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// TLS policy.
    pub tls: TlsMode,
    /// Offer `NBD_FLAG_FIXED_NEWSTYLE`. Without it a client may only send
    /// `NBD_OPT_EXPORT_NAME` (nbdkit's `--mask-handshake` bit 0).
    pub fixed_newstyle: bool,
    /// Offer `NBD_FLAG_NO_ZEROES`.
    pub no_zeroes: bool,
    /// Accept `NBD_OPT_STRUCTURED_REPLY`.
    pub structured_replies: bool,
    /// Accept `NBD_OPT_EXTENDED_HEADERS`.
    pub extended_headers: bool,
    /// Accept `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`
    /// (nbdkit's `--no-mc` turns them off: `NBD_REP_ERR_UNSUP`).
    pub allow_meta_contexts: bool,
    /// Largest option the server parses (INFO/GO/meta contexts); larger
    /// ones are drained and refused with `NBD_REP_ERR_TOO_BIG`. The caller's
    /// input buffer must hold `16 + max_option_len` bytes
    /// ([`Connection::needed`](super::Connection::needed) says how many are needed now).
    pub max_option_len: u32,
    /// Largest option the server drains at all; larger ones end the
    /// connection (a denial of service; nbdkit uses 64 MiB).
    pub max_drain_len: u32,
    /// Most options per connection (a denial of service beyond).
    pub max_options: u32,
    /// The meta contexts this server knows, in ID order: entry `i` gets
    /// context ID `i + 1` (at most 64 entries). Which of them an export
    /// offers is the caller's answer to a [`MetaQuestion`] and
    /// [`ExportInfo::meta_contexts`](super::ExportInfo::meta_contexts).
    pub meta_contexts: &'static [&'static str],
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        Self {
            tls: TlsMode::Off,
            fixed_newstyle: true,
            no_zeroes: true,
            structured_replies: true,
            extended_headers: true,
            allow_meta_contexts: true,
            // Four 4096-byte strings plus framing fit easily.
            max_option_len: 64 * 1024,
            max_drain_len: 64 * 1024 * 1024,
            // nbdkit allows 32; `nbdinfo --list` on a server with many
            // exports sends an INFO per export, so allow more.
            max_options: 1024,
            meta_contexts: &[BASE_ALLOCATION],
        }
    }
}

/// A question the handshake asks its caller.
#[derive(Debug)]
pub(crate) enum Asked {
    Export(ExportQuestion),
    List(ListQuestion),
    Meta(MetaQuestion),
    StartTls(StartTls),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Oldstyle: ask for the default export before any greeting.
    OldstyleAsk,
    Greeting,
    ClientFlags,
    Options,
    /// Skipping option data, then sending `reply`.
    Draining {
        option: OptionCode,
        remaining: u32,
        reply: OptReplyType,
        message: &'static str,
    },
    /// A question was asked; waiting for its answer.
    Answering(OptionCode),
    /// STARTTLS acknowledged; waiting for the TLS session.
    Tls,
    Done(Negotiated),
    /// The connection must close once the output is written.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    option: OptionCode,
    reply: OptReplyType,
    message: &'static str,
}

/// The server negotiation state machine.
#[derive(Debug, Clone)]
pub(crate) struct Handshake {
    pub(crate) cfg: HandshakeConfig,
    pub(crate) state: State,
    pending: Option<Pending>,
    fixed: bool,
    pub(crate) no_zeroes: bool,
    tls_active: bool,
    pub(crate) structured: bool,
    pub(crate) extended: bool,
    shutting_down: bool,
    options_seen: u32,
    /// Serial number of the outstanding question (tokens carry it).
    pub(crate) serial: u32,
    /// The export name of the outstanding question.
    pub(crate) asked: NameBuf,
    /// Selection of the last SET_META_CONTEXT and a fingerprint of the
    /// export it named (a copy would cost another 4 KiB per connection).
    pub(crate) meta_selected: u64,
    pub(crate) meta_export: Option<meta::NameHash>,
}

impl Handshake {
    /// Start negotiating: newstyle sends the greeting first; oldstyle asks
    /// for the default export first.
    pub(crate) fn new(cfg: HandshakeConfig, oldstyle: bool) -> Self {
        Self {
            cfg,
            state: if oldstyle {
                State::OldstyleAsk
            } else {
                State::Greeting
            },
            pending: None,
            fixed: false,
            no_zeroes: false,
            tls_active: false,
            structured: false,
            extended: false,
            shutting_down: false,
            options_seen: 0,
            serial: 0,
            asked: NameBuf::new(),
            meta_selected: 0,
            meta_export: None,
        }
    }

    /// The effective TLS mode: a client without fixed newstyle is served in
    /// NOTLS mode whatever the configuration ([proto.md "TLS support"]).
    ///
    /// [proto.md "TLS support"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#tls-support
    fn tls_mode(&self) -> TlsMode {
        if self.fixed {
            self.cfg.tls
        } else {
            TlsMode::Off
        }
    }

    pub(crate) fn tls_active(&self) -> bool {
        self.tls_active
    }

    pub(crate) fn negotiated(&self) -> Option<Negotiated> {
        match self.state {
            State::Done(n) => Some(n),
            _ => None,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed && self.pending.is_none()
    }

    pub(crate) fn is_answering(&self) -> bool {
        matches!(self.state, State::Answering(_) | State::OldstyleAsk)
    }

    pub(crate) fn wants_read(&self) -> bool {
        self.pending.is_none()
            && matches!(
                self.state,
                State::ClientFlags | State::Options | State::Draining { .. }
            )
    }

    pub(crate) fn wants_write(&self) -> bool {
        self.state == State::Greeting || self.pending.is_some()
    }

    /// Every later option but ABORT gets `NBD_REP_ERR_SHUTDOWN` (checklist 61).
    pub(crate) fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// The header mode the options so far agreed on.
    pub(crate) fn mode(&self) -> HeaderMode {
        if self.extended {
            HeaderMode::Extended
        } else if self.structured {
            HeaderMode::Structured
        } else {
            HeaderMode::Simple
        }
    }

    /// Bytes of input needed to make progress: the whole option frame when
    /// it will be parsed, else just a header.
    pub(crate) fn needed(&self, input: &[u8]) -> usize {
        match (self.state, OptionHeader::decode(input)) {
            (State::Options, Ok(Some((h, hlen)))) if h.len <= self.cfg.max_option_len => {
                hlen.saturating_add(h.len as usize)
            }
            _ => OPTION_HEADER_LEN,
        }
    }

    /// Pending output: the greeting, or a reply made without the caller.
    pub(crate) fn poll_transmit(&mut self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        if self.state == State::Greeting {
            let mut flags = HandshakeFlags::empty();
            if self.cfg.fixed_newstyle {
                flags |= HandshakeFlags::FIXED_NEWSTYLE;
            }
            if self.cfg.no_zeroes {
                flags |= HandshakeFlags::NO_ZEROES;
            }
            let n = Greeting::Newstyle(flags).encode(out)?;
            self.state = State::ClientFlags;
            return Ok(n);
        }
        let Some(p) = self.pending else {
            return Ok(0);
        };
        let n = encode_option_reply(p.option, p.reply, p.message.as_bytes(), out)?;
        self.pending = None;
        Ok(n)
    }

    fn reply(&mut self, option: OptionCode, reply: OptReplyType, message: &'static str) {
        self.pending = Some(Pending {
            option,
            reply,
            message,
        });
    }

    /// Ask a question: the state waits for its answer.
    fn ask(&mut self, option: OptionCode) -> u32 {
        self.serial = self.serial.wrapping_add(1);
        self.state = State::Answering(option);
        self.serial
    }

    /// Feed client bytes: how many were consumed and, when the caller must
    /// decide something, the question.
    pub(crate) fn handle_input(
        &mut self,
        input: &[u8],
    ) -> Result<(usize, Option<Asked>), ProtocolError> {
        if self.pending.is_some() {
            return Ok((0, None));
        }
        match self.state {
            State::OldstyleAsk => {
                self.asked.set("");
                let serial = self.ask(OptionCode::ExportName);
                let q = ExportQuestion {
                    option: ExportOption::Oldstyle,
                    wanted: InfoWanted::default(),
                    serial,
                };
                Ok((0, Some(Asked::Export(q))))
            }
            State::ClientFlags => self.handle_client_flags(input),
            State::Options => self.handle_option(input),
            State::Draining {
                option,
                remaining,
                reply,
                message,
            } => Ok((self.drain(input, option, remaining, reply, message), None)),
            _ => Ok((0, None)),
        }
    }

    fn drain(
        &mut self,
        input: &[u8],
        option: OptionCode,
        remaining: u32,
        reply: OptReplyType,
        message: &'static str,
    ) -> usize {
        let n = remaining.min(u32::try_from(input.len()).unwrap_or(u32::MAX));
        let left = remaining - n;
        if left == 0 {
            // A drained ABORT is still acknowledged, then closes.
            self.state = if option == OptionCode::Abort {
                State::Closed
            } else {
                State::Options
            };
            self.reply(option, reply, message);
        } else {
            self.state = State::Draining {
                option,
                remaining: left,
                reply,
                message,
            };
        }
        n as usize
    }

    fn handle_client_flags(
        &mut self,
        input: &[u8],
    ) -> Result<(usize, Option<Asked>), ProtocolError> {
        let Some((flags, n)) = decode_client_flags(input) else {
            return Ok((0, None));
        };
        // Unknown bits, or NO_ZEROES we did not offer: the spec says close
        // (checklist 3, 4).
        let mut allowed = ClientFlags::empty();
        if self.cfg.fixed_newstyle {
            allowed |= ClientFlags::FIXED_NEWSTYLE;
        }
        if self.cfg.no_zeroes {
            allowed |= ClientFlags::NO_ZEROES;
        }
        if !allowed.contains(flags) {
            return Err(ProtocolError::BadClientFlags(flags.bits()));
        }
        self.fixed = flags.contains(ClientFlags::FIXED_NEWSTYLE);
        self.no_zeroes = flags.contains(ClientFlags::NO_ZEROES);
        self.state = State::Options;
        Ok((n, None))
    }

    /// Refuse an option after draining its data.
    fn refuse(
        &mut self,
        header: OptionHeader,
        reply: OptReplyType,
        message: &'static str,
    ) -> (usize, Option<Asked>) {
        if header.len == 0 {
            self.reply(header.option, reply, message);
        } else {
            // The message survives the drain, so a refusal reads the same
            // whether or not the option carried data.
            self.state = State::Draining {
                option: header.option,
                remaining: header.len,
                reply,
                message,
            };
        }
        (OPTION_HEADER_LEN, None)
    }

    fn handle_option(&mut self, input: &[u8]) -> Result<(usize, Option<Asked>), ProtocolError> {
        let Some((header, hlen)) = OptionHeader::decode(input)? else {
            return Ok((0, None));
        };
        if header.len > self.cfg.max_drain_len {
            return Err(ProtocolError::OptionTooLarge(header.len));
        }
        let needs_data = matches!(
            header.option,
            OptionCode::ExportName
                | OptionCode::Info
                | OptionCode::Go
                | OptionCode::ListMetaContext
                | OptionCode::SetMetaContext
        );
        // Options that are parsed must be buffered whole; check the size
        // before asking the caller for more bytes.
        let parse = needs_data && header.len <= self.cfg.max_option_len;
        let frame_len = hlen.saturating_add(header.len as usize);
        let data = if parse {
            match input.get(hlen..frame_len) {
                Some(d) => d,
                None => return Ok((0, None)),
            }
        } else {
            &[]
        };
        self.options_seen = self.options_seen.saturating_add(1);
        if self.options_seen > self.cfg.max_options {
            return Err(ProtocolError::TooManyOptions);
        }
        let option = header.option;
        if option == OptionCode::ExportName {
            let q = self.handle_export_name(header, data, parse)?;
            return Ok((frame_len, Some(q)));
        }
        // Non-fixed newstyle clients may only send EXPORT_NAME (nbdkit
        // answers INVALID, which is all that can be said).
        if !self.fixed {
            return Ok(self.refuse(header, OptReplyType::ErrInvalid, ""));
        }
        if option == OptionCode::Abort {
            // ACK even with data, which is ignored (checklist 13, 14).
            if header.len > 0 {
                self.state = State::Draining {
                    option,
                    remaining: header.len,
                    reply: OptReplyType::Ack,
                    message: "",
                };
                return Ok((hlen, None));
            }
            self.state = State::Closed;
            self.reply(option, OptReplyType::Ack, "");
            return Ok((hlen, None));
        }
        if self.shutting_down {
            return Ok(self.refuse(header, OptReplyType::ErrShutdown, "server is shutting down"));
        }
        if option == OptionCode::StartTls {
            return Ok(self.handle_starttls(header));
        }
        if self.tls_mode() == TlsMode::Require && !self.tls_active {
            return Ok(self.refuse(header, OptReplyType::ErrTlsReqd, "TLS is required"));
        }
        if needs_data && !parse {
            return Ok(self.refuse(header, OptReplyType::ErrTooBig, "option too large"));
        }
        Ok(match option {
            OptionCode::List if header.len > 0 => {
                self.refuse(header, OptReplyType::ErrInvalid, "LIST takes no data")
            }
            OptionCode::List => {
                let serial = self.ask(option);
                (hlen, Some(Asked::List(ListQuestion { serial })))
            }
            OptionCode::StructuredReply => {
                let reply = self.structured_reply(header.len);
                self.refuse(header, reply, "")
            }
            OptionCode::ExtendedHeaders => {
                let reply = self.extended_headers(header.len);
                self.refuse(header, reply, "")
            }
            OptionCode::Info | OptionCode::Go => (frame_len, self.handle_info(option, data)),
            OptionCode::ListMetaContext | OptionCode::SetMetaContext => {
                (frame_len, self.handle_meta(option, data))
            }
            _ => self.refuse(header, OptReplyType::ErrUnsup, "unknown option"),
        })
    }

    fn structured_reply(&mut self, len: u32) -> OptReplyType {
        if len > 0 {
            OptReplyType::ErrInvalid
        } else if !self.cfg.structured_replies {
            OptReplyType::ErrUnsup
        } else if self.extended {
            OptReplyType::ErrExtHeaderReqd
        } else if self.structured {
            OptReplyType::ErrInvalid
        } else {
            self.structured = true;
            OptReplyType::Ack
        }
    }

    fn extended_headers(&mut self, len: u32) -> OptReplyType {
        if len > 0 {
            OptReplyType::ErrInvalid
        } else if !self.cfg.extended_headers {
            OptReplyType::ErrUnsup
        } else if self.extended {
            OptReplyType::ErrInvalid
        } else {
            self.extended = true;
            OptReplyType::Ack
        }
    }

    fn handle_info(&mut self, option: OptionCode, data: &[u8]) -> Option<Asked> {
        match InfoRequest::decode(data) {
            Ok(req) => {
                self.asked.set(req.name);
                let wanted = InfoWanted {
                    name: req.requested(InfoType::Name),
                    description: req.requested(InfoType::Description),
                    block_size: req.requested(InfoType::BlockSize),
                };
                let go = option == OptionCode::Go;
                let serial = self.ask(option);
                Some(Asked::Export(ExportQuestion {
                    option: if go {
                        ExportOption::Go
                    } else {
                        ExportOption::Info
                    },
                    wanted,
                    serial,
                }))
            }
            Err(e) => {
                self.reply(option, OptReplyType::ErrInvalid, invalid_message(e));
                None
            }
        }
    }

    fn handle_meta(&mut self, option: OptionCode, data: &[u8]) -> Option<Asked> {
        let list = option == OptionCode::ListMetaContext;
        if !self.cfg.allow_meta_contexts {
            self.reply(option, OptReplyType::ErrUnsup, "");
            return None;
        }
        if !list {
            // SET replaces the selection even when it fails (checklist 48).
            self.meta_selected = 0;
            self.meta_export = None;
        }
        if !self.structured && !self.extended {
            let msg = "negotiate structured replies first";
            self.reply(option, OptReplyType::ErrInvalid, msg);
            return None;
        }
        match MetaContextRequest::decode(data) {
            Ok(request) => {
                self.asked.set(request.name);
                let matched = meta::matched(list, &request, self.cfg.meta_contexts);
                let serial = self.ask(option);
                Some(Asked::Meta(MetaQuestion {
                    list,
                    matched,
                    serial,
                }))
            }
            Err(e) => {
                self.reply(option, OptReplyType::ErrInvalid, invalid_message(e));
                None
            }
        }
    }

    fn handle_starttls(&mut self, header: OptionHeader) -> (usize, Option<Asked>) {
        // NOTLS: the server can do TLS but is configured not to, which the
        // spec calls POLICY (UNSUP would claim no TLS support at all).
        let (reply, message) = if self.tls_mode() == TlsMode::Off {
            (OptReplyType::ErrPolicy, "TLS is disabled on this server")
        } else if self.tls_active {
            (OptReplyType::ErrInvalid, "TLS is already active")
        } else if header.len > 0 {
            (OptReplyType::ErrInvalid, "STARTTLS takes no data")
        } else {
            self.reply(header.option, OptReplyType::Ack, "");
            self.serial = self.serial.wrapping_add(1);
            self.state = State::Tls;
            let q = StartTls {
                serial: self.serial,
            };
            return (OPTION_HEADER_LEN, Some(Asked::StartTls(q)));
        };
        self.refuse(header, reply, message)
    }

    fn handle_export_name(
        &mut self,
        header: OptionHeader,
        data: &[u8],
        parsed: bool,
    ) -> Result<Asked, ProtocolError> {
        // EXPORT_NAME has no error reply: every refusal is a disconnect
        // (proto.md "NBD_OPT_EXPORT_NAME"; checklist 20, 53).
        let tls_missing = self.tls_mode() == TlsMode::Require && !self.tls_active;
        if !parsed
            || tls_missing
            || self.extended
            || self.shutting_down
            || header.len as usize > crate::wire::MAX_STRING_LEN
        {
            return Err(ProtocolError::ExportNameRefused);
        }
        let name = crate::wire::check_str(data, "export name")?;
        self.asked.set(name);
        let serial = self.ask(OptionCode::ExportName);
        Ok(Asked::Export(ExportQuestion {
            option: ExportOption::ExportName,
            wanted: InfoWanted::default(),
            serial,
        }))
    }

    /// The TLS handshake completed: forget everything negotiated in
    /// plaintext (checklist 58) and read options again.
    pub(crate) fn handle_tls_established(&mut self, token: StartTls) {
        if self.state == State::Tls && token.serial == self.serial {
            self.tls_active = true;
            self.structured = false;
            self.extended = false;
            self.meta_selected = 0;
            self.meta_export = None;
            self.state = State::Options;
        }
    }
}

fn invalid_message(e: DecodeError) -> &'static str {
    match e {
        DecodeError::BadString(_) => "invalid string",
        DecodeError::TooLarge(_) => "string too long",
        _ => "malformed option data",
    }
}
