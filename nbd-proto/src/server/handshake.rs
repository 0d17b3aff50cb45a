//! The server negotiation state machine (proto.md "Handshake", "Option
//! haggling", "TLS support").
//!
//! It processes one option frame per [`Handshake::handle_input`] call and
//! answers options that need no outside knowledge itself (through
//! [`Handshake::poll_transmit`]). Options that need the driver (export
//! lookup, LIST, meta contexts) come back as [`HandshakeEvent`]s borrowing
//! the input; the driver answers them at once with an `answer_*` call that
//! encodes the replies into its output buffer.

use super::export::{BlockSizes, ExportInfo, Negotiated, TlsMode};
use super::meta::{self, NameBuf};
use crate::error::{BufferTooSmall, DecodeError, ProtocolError};
use crate::flags::{ClientFlags, HandshakeFlags, TransmissionFlags};
use crate::types::{HeaderMode, InfoType, OptReplyType, OptionCode};
use crate::wire::handshake::{
    ExportNameReply, Greeting, OPTION_HEADER_LEN, OptionHeader, decode_client_flags,
    encode_option_reply,
};
use crate::wire::option::{Info, InfoRequest, MetaContextRequest, encode_server_entry};

/// Limits and features of the negotiation.
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
    /// (nbdkit's `--no-mc` turns them off).
    pub meta_contexts: bool,
    /// Largest option the server parses (INFO/GO/meta contexts); larger
    /// ones are drained and refused with `NBD_REP_ERR_TOO_BIG`. The driver's
    /// input buffer must hold `16 + max_option_len` bytes.
    pub max_option_len: u32,
    /// Largest option the server drains at all; larger ones end the
    /// connection (a denial of service; nbdkit uses 64 MiB).
    pub max_drain_len: u32,
    /// Most options per connection (a denial of service beyond).
    pub max_options: u32,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        Self {
            tls: TlsMode::Off,
            fixed_newstyle: true,
            no_zeroes: true,
            structured_replies: true,
            extended_headers: true,
            meta_contexts: true,
            // Four 4096-byte strings plus framing fit easily.
            max_option_len: 64 * 1024,
            max_drain_len: 64 * 1024 * 1024,
            // nbdkit allows 32; `nbdinfo --list` on a server with many
            // exports sends an INFO per export, so allow more.
            max_options: 1024,
        }
    }
}

/// Which option asked about an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportQuery<'a> {
    /// `NBD_OPT_EXPORT_NAME`: a refusal ends the connection.
    ExportName(&'a str),
    /// `NBD_OPT_INFO`.
    Info(InfoRequest<'a>),
    /// `NBD_OPT_GO`: success enters transmission.
    Go(InfoRequest<'a>),
}

impl<'a> ExportQuery<'a> {
    /// The export name asked for ("" = default).
    #[must_use]
    pub fn name(&self) -> &'a str {
        match self {
            Self::ExportName(n) => n,
            Self::Info(r) | Self::Go(r) => r.name,
        }
    }
}

/// A meta-context option to answer with [`Handshake::answer_meta_contexts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaQuery<'a> {
    /// `NBD_OPT_LIST_META_CONTEXT` (true) or `NBD_OPT_SET_META_CONTEXT`.
    pub list: bool,
    /// The decoded request.
    pub request: MetaContextRequest<'a>,
}

/// Something the driver must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeEvent<'a> {
    /// Look up an export and call [`Handshake::answer_export`].
    Export(ExportQuery<'a>),
    /// `NBD_OPT_LIST`: call [`Handshake::answer_list_entry`] per export,
    /// then [`Handshake::finish_list`].
    List,
    /// Call [`Handshake::answer_meta_contexts`].
    MetaContexts(MetaQuery<'a>),
    /// STARTTLS was accepted: write out [`Handshake::poll_transmit`] in
    /// plaintext, then run a TLS handshake over the connection (input left
    /// after the consumed bytes is already TLS), then call
    /// [`Handshake::handle_tls_established`].
    StartTls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
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
    /// An event was returned; waiting for the driver's answer.
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

/// The server negotiation state machine. See the module documentation.
#[derive(Debug, Clone)]
pub struct Handshake {
    cfg: HandshakeConfig,
    state: State,
    pending: Option<Pending>,
    fixed: bool,
    no_zeroes: bool,
    tls_active: bool,
    structured: bool,
    extended: bool,
    shutting_down: bool,
    options_seen: u32,
    /// Selection of the last SET_META_CONTEXT and the export it named.
    meta_selected: u64,
    meta_export: NameBuf,
}

impl Handshake {
    /// Start negotiating; the greeting is the first thing
    /// [`Handshake::poll_transmit`] writes.
    #[must_use]
    pub fn new(cfg: HandshakeConfig) -> Self {
        Self {
            cfg,
            state: State::Greeting,
            pending: None,
            fixed: false,
            no_zeroes: false,
            tls_active: false,
            structured: false,
            extended: false,
            shutting_down: false,
            options_seen: 0,
            meta_selected: 0,
            meta_export: NameBuf::new(),
        }
    }

    /// The effective TLS mode: a client without fixed newstyle is served in
    /// NOTLS mode whatever the configuration (proto.md "TLS support").
    fn tls_mode(&self) -> TlsMode {
        if self.fixed {
            self.cfg.tls
        } else {
            TlsMode::Off
        }
    }

    /// True while TLS is active on this connection.
    #[must_use]
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The negotiation result once transmission may start.
    #[must_use]
    pub fn negotiated(&self) -> Option<Negotiated> {
        match self.state {
            State::Done(n) => Some(n),
            _ => None,
        }
    }

    /// True when the connection must be closed after the output is written
    /// (ABORT, a refused EXPORT_NAME).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True when [`Handshake::handle_input`] can make progress with more input.
    #[must_use]
    pub fn wants_read(&self) -> bool {
        self.pending.is_none()
            && matches!(
                self.state,
                State::ClientFlags | State::Options | State::Draining { .. }
            )
    }

    /// True when [`Handshake::poll_transmit`] has bytes to write.
    #[must_use]
    pub fn wants_write(&self) -> bool {
        self.state == State::Greeting || self.pending.is_some()
    }

    /// The server is shutting down: every later option but ABORT gets
    /// `NBD_REP_ERR_SHUTDOWN` (checklist 61).
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Write pending output (the greeting, or a reply the state machine made
    /// itself) into `out`. Returns the bytes written; call again until 0.
    #[must_use]
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> usize {
        if self.state == State::Greeting {
            let mut flags = HandshakeFlags::empty();
            if self.cfg.fixed_newstyle {
                flags |= HandshakeFlags::FIXED_NEWSTYLE;
            }
            if self.cfg.no_zeroes {
                flags |= HandshakeFlags::NO_ZEROES;
            }
            if let Ok(n) = Greeting::Newstyle(flags).encode(out) {
                self.state = State::ClientFlags;
                return n;
            }
            return 0;
        }
        let Some(p) = self.pending else {
            return 0;
        };
        match encode_option_reply(p.option, p.reply, p.message.as_bytes(), out) {
            Ok(n) => {
                self.pending = None;
                n
            }
            Err(_) => 0,
        }
    }

    fn reply(&mut self, option: OptionCode, reply: OptReplyType, message: &'static str) {
        self.pending = Some(Pending {
            option,
            reply,
            message,
        });
    }

    /// Feed bytes from the client. Returns how many were consumed and, when
    /// the driver must act, an event borrowing `input`.
    ///
    /// Call it repeatedly (after writing [`Handshake::poll_transmit`]) until
    /// it returns `(0, None)`; once [`Handshake::negotiated`] is `Some`, the
    /// rest of the input belongs to transmission.
    ///
    /// # Errors
    /// A [`ProtocolError`] means the connection must be closed at once.
    pub fn handle_input<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<HandshakeEvent<'a>>), ProtocolError> {
        if self.pending.is_some() {
            return Ok((0, None));
        }
        match self.state {
            State::ClientFlags => self.handle_client_flags(input),
            State::Options => self.handle_option(input),
            State::Draining {
                option,
                remaining,
                reply,
                message,
            } => {
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
                Ok((n as usize, None))
            }
            _ => Ok((0, None)),
        }
    }

    fn handle_client_flags<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<HandshakeEvent<'a>>), ProtocolError> {
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
    fn refuse<'a>(
        &mut self,
        header: OptionHeader,
        reply: OptReplyType,
        message: &'static str,
    ) -> (usize, Option<HandshakeEvent<'a>>) {
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

    fn handle_option<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<HandshakeEvent<'a>>), ProtocolError> {
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
        // before asking the driver for more bytes.
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
        let consumed_whole = if parse { frame_len } else { hlen };
        let option = header.option;

        if option == OptionCode::ExportName {
            return self
                .handle_export_name(header, data, parse)
                .map(|ev| (consumed_whole, Some(ev)));
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
        match option {
            OptionCode::List => {
                if header.len > 0 {
                    return Ok(self.refuse(header, OptReplyType::ErrInvalid, "LIST takes no data"));
                }
                self.state = State::Answering(option);
                Ok((hlen, Some(HandshakeEvent::List)))
            }
            OptionCode::StructuredReply => {
                let reply = if header.len > 0 {
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
                };
                Ok(self.refuse(header, reply, ""))
            }
            OptionCode::ExtendedHeaders => {
                let reply = if header.len > 0 {
                    OptReplyType::ErrInvalid
                } else if !self.cfg.extended_headers {
                    OptReplyType::ErrUnsup
                } else if self.extended {
                    OptReplyType::ErrInvalid
                } else {
                    self.extended = true;
                    OptReplyType::Ack
                };
                Ok(self.refuse(header, reply, ""))
            }
            OptionCode::Info | OptionCode::Go => match InfoRequest::decode(data) {
                Ok(req) => {
                    self.state = State::Answering(option);
                    let q = if option == OptionCode::Go {
                        ExportQuery::Go(req)
                    } else {
                        ExportQuery::Info(req)
                    };
                    Ok((frame_len, Some(HandshakeEvent::Export(q))))
                }
                Err(e) => {
                    self.reply(option, OptReplyType::ErrInvalid, invalid_message(e));
                    Ok((frame_len, None))
                }
            },
            OptionCode::ListMetaContext | OptionCode::SetMetaContext => {
                let list = option == OptionCode::ListMetaContext;
                if !self.cfg.meta_contexts {
                    self.reply(option, OptReplyType::ErrUnsup, "");
                    return Ok((frame_len, None));
                }
                if !list {
                    // SET replaces the selection even when it fails
                    // (checklist 48).
                    self.meta_selected = 0;
                    self.meta_export.clear();
                }
                if !self.structured && !self.extended {
                    self.reply(
                        option,
                        OptReplyType::ErrInvalid,
                        "negotiate structured replies first",
                    );
                    return Ok((frame_len, None));
                }
                match MetaContextRequest::decode(data) {
                    Ok(request) => {
                        self.state = State::Answering(option);
                        Ok((
                            frame_len,
                            Some(HandshakeEvent::MetaContexts(MetaQuery { list, request })),
                        ))
                    }
                    Err(e) => {
                        self.reply(option, OptReplyType::ErrInvalid, invalid_message(e));
                        Ok((frame_len, None))
                    }
                }
            }
            _ => Ok(self.refuse(header, OptReplyType::ErrUnsup, "unknown option")),
        }
    }

    fn handle_starttls<'a>(&mut self, header: OptionHeader) -> (usize, Option<HandshakeEvent<'a>>) {
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
            self.state = State::Tls;
            return (OPTION_HEADER_LEN, Some(HandshakeEvent::StartTls));
        };
        self.refuse(header, reply, message)
    }

    fn handle_export_name<'a>(
        &mut self,
        header: OptionHeader,
        data: &'a [u8],
        parsed: bool,
    ) -> Result<HandshakeEvent<'a>, ProtocolError> {
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
        self.state = State::Answering(OptionCode::ExportName);
        Ok(HandshakeEvent::Export(ExportQuery::ExportName(name)))
    }

    /// The TLS handshake completed: forget everything negotiated in
    /// plaintext (checklist 58) and read options again.
    pub fn handle_tls_established(&mut self) {
        if self.state == State::Tls {
            self.tls_active = true;
            self.structured = false;
            self.extended = false;
            self.meta_selected = 0;
            self.meta_export.clear();
            self.state = State::Options;
        }
    }

    fn advertised_flags(&self, info: &ExportInfo<'_>) -> TransmissionFlags {
        let mut f = info.flags
            & (TransmissionFlags::READ_ONLY
                | TransmissionFlags::SEND_FLUSH
                | TransmissionFlags::SEND_FUA
                | TransmissionFlags::ROTATIONAL
                | TransmissionFlags::SEND_TRIM
                | TransmissionFlags::SEND_WRITE_ZEROES
                | TransmissionFlags::SEND_FAST_ZERO
                | TransmissionFlags::CAN_MULTI_CONN
                | TransmissionFlags::SEND_RESIZE
                | TransmissionFlags::SEND_CACHE);
        f |= TransmissionFlags::HAS_FLAGS;
        // Checklist 33: FAST_ZERO only with WRITE_ZEROES; DF only once
        // chunks can be sent; BLOCK_STATUS_PAYLOAD only with extended headers.
        if !f.contains(TransmissionFlags::SEND_WRITE_ZEROES) {
            f.remove(TransmissionFlags::SEND_FAST_ZERO);
        }
        if self.structured || self.extended {
            f |= TransmissionFlags::SEND_DF;
        }
        if self.extended && self.meta_selected != 0 {
            f |= TransmissionFlags::BLOCK_STATUS_PAYLOAD;
        }
        f
    }

    fn mode(&self) -> HeaderMode {
        if self.extended {
            HeaderMode::Extended
        } else if self.structured {
            HeaderMode::Structured
        } else {
            HeaderMode::Simple
        }
    }

    /// Answer an [`HandshakeEvent::Export`]: `Ok(info)` for a known export,
    /// `Err(reply)` to refuse it (`NBD_REP_ERR_UNKNOWN`, `_TLS_REQD`,
    /// `_POLICY`, ...). Replies are encoded into `out`; returns the length.
    /// A refused EXPORT_NAME writes nothing and closes ([`Handshake::is_closed`]).
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` cannot hold the replies (at most about
    /// 8.3 KiB: keep that much room); nothing is changed then.
    pub fn answer_export(
        &mut self,
        query: &ExportQuery<'_>,
        answer: Result<ExportInfo<'_>, OptReplyType>,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let flags_of = |hs: &Self, info: &ExportInfo<'_>| hs.advertised_flags(info);
        match (query, answer) {
            (ExportQuery::ExportName(_), Err(_)) => {
                self.state = State::Closed;
                Ok(0)
            }
            (ExportQuery::ExportName(name), Ok(info)) => {
                let flags = flags_of(self, &info);
                let reply = ExportNameReply {
                    size: info.size,
                    flags,
                    no_zeroes: self.no_zeroes,
                };
                let n = reply.encode(out)?;
                self.finish_negotiation(name, &info, flags, false);
                Ok(n)
            }
            (ExportQuery::Info(req) | ExportQuery::Go(req), Err(reply)) => {
                let option = if matches!(query, ExportQuery::Go(_)) {
                    OptionCode::Go
                } else {
                    OptionCode::Info
                };
                let n = encode_option_reply(option, reply, &[], out)?;
                self.state = State::Options;
                let _ = req;
                Ok(n)
            }
            (ExportQuery::Info(req) | ExportQuery::Go(req), Ok(info)) => {
                let go = matches!(query, ExportQuery::Go(_));
                let option = if go { OptionCode::Go } else { OptionCode::Info };
                let flags = flags_of(self, &info);
                let mut items: [Option<Info<'_>>; 4] = [None; 4];
                items[0] = Some(Info::Export {
                    size: info.size,
                    flags,
                });
                if req.requested(InfoType::Name) {
                    items[1] = Some(Info::Name(info.name));
                }
                if req.requested(InfoType::Description) && !info.description.is_empty() {
                    items[2] = Some(Info::Description(info.description));
                }
                // Send constraints when asked, and unasked when they are not
                // the defaults (the spec lets servers send extra info).
                if let Some(b) = info
                    .block_sizes
                    .filter(|b| req.requested(InfoType::BlockSize) || *b != BlockSizes::DEFAULT)
                {
                    items[3] = Some(Info::BlockSize {
                        minimum: b.minimum,
                        preferred: b.preferred,
                        maximum: b.maximum,
                    });
                } else if req.requested(InfoType::BlockSize) {
                    let b = BlockSizes::DEFAULT;
                    items[3] = Some(Info::BlockSize {
                        minimum: b.minimum,
                        preferred: b.preferred,
                        maximum: b.maximum,
                    });
                }
                let total: usize =
                    items.iter().flatten().map(Info::encoded_len).sum::<usize>() + 20;
                if out.len() < total {
                    return Err(BufferTooSmall { required: total });
                }
                let mut pos = 0;
                for item in items.iter().flatten() {
                    pos += item.encode(option, out.get_mut(pos..).unwrap_or_default())?;
                }
                pos += encode_option_reply(
                    option,
                    OptReplyType::Ack,
                    &[],
                    out.get_mut(pos..).unwrap_or_default(),
                )?;
                if go {
                    self.finish_negotiation(
                        req.name,
                        &info,
                        flags,
                        req.requested(InfoType::BlockSize),
                    );
                } else {
                    self.state = State::Options;
                }
                Ok(pos)
            }
        }
    }

    fn finish_negotiation(
        &mut self,
        requested_name: &str,
        info: &ExportInfo<'_>,
        flags: TransmissionFlags,
        agreed: bool,
    ) {
        // BLOCK_STATUS is allowed only if the last SET named this export
        // (proto.md "NBD_OPT_SET_META_CONTEXT").
        let same_export =
            self.meta_export.eq_str(requested_name) || self.meta_export.eq_str(info.name);
        self.state = State::Done(Negotiated {
            mode: self.mode(),
            size: info.size,
            flags,
            block_sizes: info.block_sizes.unwrap_or(BlockSizes::DEFAULT),
            block_sizes_agreed: agreed,
            meta_contexts: if same_export { self.meta_selected } else { 0 },
            tls: self.tls_active,
        });
    }

    /// Answer [`HandshakeEvent::List`] with one export; call once per export.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn answer_list_entry(
        &mut self,
        name: &str,
        description: &str,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        encode_server_entry(name, description, out)
    }

    /// End the answer to [`HandshakeEvent::List`] with `NBD_REP_ACK`.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is too short.
    pub fn finish_list(&mut self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let n = encode_option_reply(OptionCode::List, OptReplyType::Ack, &[], out)?;
        self.state = State::Options;
        Ok(n)
    }

    /// Answer [`HandshakeEvent::MetaContexts`] from the contexts the driver
    /// offers (`offered[i]` gets context ID `i + 1`; at most 64), applying
    /// the spec's matching rules: unknown namespaces and leaves are ignored,
    /// an empty leaf lists a namespace but never selects, zero queries list
    /// everything or select nothing (proto.md "Metadata querying").
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` cannot hold the replies.
    pub fn answer_meta_contexts(
        &mut self,
        query: &MetaQuery<'_>,
        offered: &[&str],
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let option = if query.list {
            OptionCode::ListMetaContext
        } else {
            OptionCode::SetMetaContext
        };
        let (selected, n) = meta::answer(option, query, offered, out)?;
        if !query.list {
            self.meta_selected = selected;
            self.meta_export.set(query.request.name);
        }
        self.state = State::Options;
        Ok(n)
    }
}

fn invalid_message(e: DecodeError) -> &'static str {
    match e {
        DecodeError::BadString(_) => "invalid string",
        DecodeError::TooLarge(_) => "string too long",
        _ => "malformed option data",
    }
}
