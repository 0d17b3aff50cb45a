//! The client negotiation state machine ([proto.md "Handshake"], "Option
//! haggling", from the client's side).
//!
//! It sends options one at a time and waits for each answer, so one output
//! buffer of [`CLIENT_TRANSMIT_MAX`] bytes always suffices and a reply can
//! never be confused with the answer to another option.
//!
//! [proto.md "Handshake"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#handshake

use crate::error::{BufferTooSmall, DecodeError, ProtocolError};
use crate::flags::{ClientFlags, HandshakeFlags, TransmissionFlags};
use crate::magic::OLDSTYLE_MAGIC;
use crate::server::BlockSizes;
use crate::types::{HeaderMode, InfoType, OptReplyType, OptionCode};
use crate::wire::handshake::{
    ExportNameReply, Greeting, NEWSTYLE_GREETING_LEN, OLDSTYLE_GREETING_LEN, OPTION_HEADER_LEN,
    OPTION_REPLY_HEADER_LEN, OptionReplyHeader, encode_client_flags,
};
use crate::wire::option::{Info, InfoRequest, MetaContextRequest, OptReply, encode_option};
use crate::wire::{be_u64_at, head};

/// The only meta context the client asks for.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Room [`ClientHandshake::poll_transmit`] may need: the largest option it
/// sends (GO with a 4096-byte name and three info requests).
pub const CLIENT_TRANSMIT_MAX: usize = OPTION_HEADER_LEN + 4 + crate::wire::MAX_STRING_LEN + 8 + 32;

/// What the client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig<'a> {
    /// Export to open ("" = the server's default export).
    pub export: &'a str,
    /// Send `NBD_OPT_STARTTLS` first and fail if the server refuses.
    pub tls: bool,
    /// Send `NBD_OPT_LIST` and report each export as an event.
    pub list: bool,
    /// Ask for structured replies (`NBD_OPT_STRUCTURED_REPLY`).
    pub structured_replies: bool,
    /// Ask for extended headers (`NBD_OPT_EXTENDED_HEADERS`), falling back
    /// to structured replies when refused.
    pub extended_headers: bool,
    /// Select `base:allocation` (needs structured replies or extended headers).
    pub base_allocation: bool,
    /// Accept `NBD_FLAG_NO_ZEROES` when offered.
    pub no_zeroes: bool,
    /// Largest option reply accepted (a denial-of-service bound).
    pub max_reply_len: u32,
}

impl Default for ClientConfig<'_> {
    fn default() -> Self {
        Self {
            export: "",
            tls: false,
            list: false,
            structured_replies: true,
            extended_headers: false,
            base_allocation: false,
            no_zeroes: true,
            max_reply_len: 64 * 1024,
        }
    }
}

/// The result of a successful client negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientNegotiated {
    /// Header layout for transmission.
    pub mode: HeaderMode,
    /// Export size.
    pub size: u64,
    /// Transmission flags as the server sent them.
    pub flags: TransmissionFlags,
    /// Block-size constraints, when the server sent them.
    pub block_sizes: Option<BlockSizes>,
    /// The context ID of `base:allocation`, when selected.
    pub base_allocation: Option<u32>,
    /// TLS was started.
    pub tls: bool,
    /// The server used the oldstyle greeting (no options were possible).
    pub oldstyle: bool,
}

/// Something the client's driver should know about or act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent<'a> {
    /// STARTTLS was acknowledged: run a TLS handshake over the connection
    /// (input after the consumed bytes is TLS), then call
    /// [`ClientHandshake::handle_tls_established`].
    StartTls,
    /// One `NBD_REP_SERVER` answer to LIST.
    ListEntry {
        /// Export name.
        name: &'a str,
        /// Description (may be empty).
        description: &'a str,
    },
    /// One `NBD_REP_INFO` answer to GO.
    Info(Info<'a>),
    /// One `NBD_REP_META_CONTEXT` answer to SET_META_CONTEXT.
    MetaContext {
        /// Context ID for BLOCK_STATUS replies.
        id: u32,
        /// Context name.
        name: &'a str,
    },
    /// The server refused an optional option; negotiation goes on.
    Refused {
        /// The option.
        option: OptionCode,
        /// The error reply.
        reply: OptReplyType,
        /// The server's message.
        message: &'a str,
    },
    /// Negotiation finished; see [`ClientHandshake::negotiated`].
    Ready(ClientNegotiated),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    ClientFlags,
    StartTls,
    List,
    ExtendedHeaders,
    StructuredReply,
    SetMeta,
    Go,
    ExportName,
}

impl Step {
    fn option(self) -> OptionCode {
        match self {
            Self::ClientFlags | Self::ExportName => OptionCode::ExportName,
            Self::StartTls => OptionCode::StartTls,
            Self::List => OptionCode::List,
            Self::ExtendedHeaders => OptionCode::ExtendedHeaders,
            Self::StructuredReply => OptionCode::StructuredReply,
            Self::SetMeta => OptionCode::SetMetaContext,
            Self::Go => OptionCode::Go,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Send(Step),
    Await(Step),
    Tls,
    Done(ClientNegotiated),
    Failed,
}

/// The client negotiation state machine: [`ClientHandshake::poll_transmit`]
/// then [`ClientHandshake::handle_input`] until [`ClientEvent::Ready`].
///
/// [`Connection`](super::Connection) covers negotiation *and* transmission in one
/// value and borrows nothing; this type remains for callers that drive
/// transmission themselves with [`ReplyDecoder`](super::ReplyDecoder).
#[derive(Debug, Clone)]
pub struct ClientHandshake<'a> {
    core: Negotiation,
    export: &'a str,
}

impl<'a> ClientHandshake<'a> {
    /// Start negotiating; the server speaks first.
    #[must_use]
    pub fn new(cfg: ClientConfig<'a>) -> Self {
        Self {
            core: Negotiation::new(&cfg),
            export: cfg.export,
        }
    }

    /// The result once negotiation finished.
    #[must_use]
    pub fn negotiated(&self) -> Option<ClientNegotiated> {
        self.core.negotiated()
    }

    /// True when [`ClientHandshake::handle_input`] needs server bytes.
    #[must_use]
    pub fn wants_read(&self) -> bool {
        self.core.wants_read()
    }

    /// True when [`ClientHandshake::poll_transmit`] has bytes to write.
    #[must_use]
    pub fn wants_write(&self) -> bool {
        self.core.wants_write()
    }

    /// The TLS handshake after [`ClientEvent::StartTls`] completed: options
    /// negotiated so far are forgotten, as they are by the server.
    pub fn handle_tls_established(&mut self) {
        self.core.handle_tls_established();
    }

    /// Encode the next client message into `out`. Returns 0 when there is
    /// nothing to send.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `out` is shorter than the message (never
    /// with [`CLIENT_TRANSMIT_MAX`] bytes); nothing changes then.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        self.core.poll_transmit(self.export, out)
    }

    /// Feed bytes from the server. Returns how many were consumed and at
    /// most one event borrowing `input`; call again until `(0, None)`.
    ///
    /// # Errors
    /// A [`ProtocolError`] means the connection cannot continue: a malformed
    /// reply, or the server refused something the configuration requires
    /// (STARTTLS, the export).
    pub fn handle_input<'b>(&mut self, input: &'b [u8]) -> Step1<'b> {
        self.core.handle_input(input)
    }
}

/// The negotiation logic shared by [`ClientHandshake`] and
/// [`Connection`](super::Connection). It holds no borrowed data: the export name is
/// passed to each [`Negotiation::poll_transmit`].
#[derive(Debug, Clone)]
pub(crate) struct Negotiation {
    cfg: ClientConfig<'static>,
    state: State,
    fixed: bool,
    no_zeroes: bool,
    tls: bool,
    listed: bool,
    tried_extended: bool,
    tried_structured: bool,
    tried_meta: bool,
    extended: bool,
    structured: bool,
    size: Option<(u64, TransmissionFlags)>,
    block_sizes: Option<BlockSizes>,
    base_allocation: Option<u32>,
}

pub(crate) type Step1<'b> = Result<(usize, Option<ClientEvent<'b>>), ProtocolError>;

impl Negotiation {
    /// Start negotiating with `cfg` (its export name is not kept).
    pub(crate) fn new(cfg: &ClientConfig<'_>) -> Self {
        Self {
            cfg: ClientConfig { export: "", ..*cfg },
            state: State::Greeting,
            fixed: false,
            no_zeroes: false,
            tls: false,
            listed: false,
            tried_extended: false,
            tried_structured: false,
            tried_meta: false,
            extended: false,
            structured: false,
            size: None,
            block_sizes: None,
            base_allocation: None,
        }
    }

    pub(crate) fn negotiated(&self) -> Option<ClientNegotiated> {
        match self.state {
            State::Done(n) => Some(n),
            _ => None,
        }
    }

    pub(crate) fn wants_read(&self) -> bool {
        matches!(self.state, State::Greeting | State::Await(_))
    }

    pub(crate) fn wants_write(&self) -> bool {
        matches!(self.state, State::Send(_))
    }

    /// Negotiation happened elsewhere: mark it finished with `neg`.
    pub(crate) fn finish_external(&mut self, neg: ClientNegotiated) {
        self.state = State::Done(neg);
    }

    /// STARTTLS was acknowledged and TLS is not yet reported up.
    pub(crate) fn tls_pending(&self) -> bool {
        self.state == State::Tls
    }

    pub(crate) fn handle_tls_established(&mut self) {
        if self.state == State::Tls {
            self.tls = true;
            self.structured = false;
            self.extended = false;
            self.tried_extended = false;
            self.tried_structured = false;
            self.tried_meta = false;
            self.base_allocation = None;
            self.state = State::Send(self.next_step());
        }
    }

    fn next_step(&self) -> Step {
        if self.cfg.tls && !self.tls {
            Step::StartTls
        } else if self.cfg.list && !self.listed {
            Step::List
        } else if self.cfg.extended_headers && !self.tried_extended {
            Step::ExtendedHeaders
        } else if self.cfg.structured_replies && !self.extended && !self.tried_structured {
            Step::StructuredReply
        } else if self.cfg.base_allocation && (self.structured || self.extended) && !self.tried_meta
        {
            Step::SetMeta
        } else {
            Step::Go
        }
    }

    pub(crate) fn poll_transmit(
        &mut self,
        name: &str,
        out: &mut [u8],
    ) -> Result<usize, BufferTooSmall> {
        let State::Send(step) = self.state else {
            return Ok(0);
        };
        let n = match step {
            Step::ClientFlags => {
                let mut flags = ClientFlags::empty();
                if self.fixed {
                    flags |= ClientFlags::FIXED_NEWSTYLE;
                }
                if self.no_zeroes {
                    flags |= ClientFlags::NO_ZEROES;
                }
                encode_client_flags(flags, out)?
            }
            Step::StartTls | Step::List | Step::ExtendedHeaders | Step::StructuredReply => {
                encode_option(step.option(), &[], out)?
            }
            Step::SetMeta => {
                MetaContextRequest::encode(step.option(), name, &[BASE_ALLOCATION], out)?
            }
            Step::Go => InfoRequest::encode(
                OptionCode::Go,
                name,
                &[InfoType::Name, InfoType::Description, InfoType::BlockSize],
                out,
            )?,
            Step::ExportName => encode_option(OptionCode::ExportName, name.as_bytes(), out)?,
        };
        self.state = match step {
            // Client flags get no answer; a non-fixed server takes no
            // option but EXPORT_NAME.
            Step::ClientFlags if !self.fixed => State::Send(Step::ExportName),
            Step::ClientFlags => State::Send(self.next_step()),
            s => State::Await(s),
        };
        Ok(n)
    }

    pub(crate) fn handle_input<'b>(&mut self, input: &'b [u8]) -> Step1<'b> {
        let r = match self.state {
            State::Greeting => self.handle_greeting(input),
            State::Await(Step::ExportName) => Ok(self.handle_export_name(input)),
            State::Await(step) => self.handle_reply(step, input),
            _ => Ok((0, None)),
        };
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    /// Bytes (from the start of `input`) the next server message needs
    /// in total, so a caller can size its read; at least `input.len() + 1`
    /// is never promised, only what the header announces.
    pub(crate) fn needed(&self, input: &[u8]) -> usize {
        match self.state {
            State::Greeting => match head::<16>(input).map(|h| be_u64_at(h, 8)) {
                Some(OLDSTYLE_MAGIC) => OLDSTYLE_GREETING_LEN,
                _ => NEWSTYLE_GREETING_LEN,
            },
            State::Await(Step::ExportName) => {
                if self.no_zeroes {
                    10
                } else {
                    134
                }
            }
            State::Await(_) => match OptionReplyHeader::decode(input) {
                Ok(Some((h, _))) => OPTION_REPLY_HEADER_LEN.saturating_add(h.len as usize),
                _ => OPTION_REPLY_HEADER_LEN,
            },
            _ => 0,
        }
    }

    fn handle_greeting<'b>(&mut self, input: &'b [u8]) -> Step1<'b> {
        let Some((g, n)) = Greeting::decode(input)? else {
            return Ok((0, None));
        };
        match g {
            Greeting::Oldstyle { size, flags } => {
                if self.cfg.tls {
                    return Err(ProtocolError::Violation("oldstyle server cannot do TLS"));
                }
                let neg = ClientNegotiated {
                    mode: HeaderMode::Simple,
                    size,
                    flags,
                    block_sizes: None,
                    base_allocation: None,
                    tls: false,
                    oldstyle: true,
                };
                self.state = State::Done(neg);
                Ok((n, Some(ClientEvent::Ready(neg))))
            }
            Greeting::Newstyle(flags) => {
                self.fixed = flags.contains(HandshakeFlags::FIXED_NEWSTYLE);
                self.no_zeroes = self.cfg.no_zeroes && flags.contains(HandshakeFlags::NO_ZEROES);
                if self.cfg.tls && !self.fixed {
                    return Err(ProtocolError::Violation("server without fixed newstyle"));
                }
                self.state = State::Send(Step::ClientFlags);
                Ok((n, None))
            }
        }
    }

    fn handle_export_name<'b>(&mut self, input: &'b [u8]) -> (usize, Option<ClientEvent<'b>>) {
        let Some((r, n)) = ExportNameReply::decode(input, self.no_zeroes) else {
            return (0, None);
        };
        let neg = self.finish(r.size, r.flags);
        (n, Some(ClientEvent::Ready(neg)))
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

    fn finish(&mut self, size: u64, flags: TransmissionFlags) -> ClientNegotiated {
        let neg = ClientNegotiated {
            mode: self.mode(),
            size,
            flags,
            block_sizes: self.block_sizes,
            base_allocation: self.base_allocation,
            tls: self.tls,
            oldstyle: false,
        };
        self.state = State::Done(neg);
        neg
    }

    fn handle_reply<'b>(&mut self, step: Step, input: &'b [u8]) -> Step1<'b> {
        let Some((h, hlen)) = OptionReplyHeader::decode(input)? else {
            return Ok((0, None));
        };
        if h.len > self.cfg.max_reply_len {
            return Err(DecodeError::TooLarge("option reply").into());
        }
        if h.option != step.option() {
            return Err(ProtocolError::Violation("option reply for another option"));
        }
        let end = OPTION_REPLY_HEADER_LEN.saturating_add(h.len as usize);
        let Some(data) = input.get(hlen..end) else {
            return Ok((0, None));
        };
        let reply = OptReply::decode(h.reply, data)?;
        let ev = self.on_reply(step, reply)?;
        Ok((end, ev))
    }

    /// Advance after the last reply to `step`.
    fn advance(&mut self) {
        self.state = State::Send(self.next_step());
    }

    fn on_reply<'b>(
        &mut self,
        step: Step,
        reply: OptReply<'b>,
    ) -> Result<Option<ClientEvent<'b>>, ProtocolError> {
        if let OptReply::Error(r, message) = reply {
            return self.on_error(step, r, message);
        }
        match (step, reply) {
            (Step::StartTls, OptReply::Ack) => {
                self.state = State::Tls;
                Ok(Some(ClientEvent::StartTls))
            }
            (Step::List, OptReply::Server { name, description }) => {
                Ok(Some(ClientEvent::ListEntry { name, description }))
            }
            (Step::List, OptReply::Ack) => {
                self.listed = true;
                self.advance();
                Ok(None)
            }
            (Step::ExtendedHeaders, OptReply::Ack) => {
                self.tried_extended = true;
                self.extended = true;
                self.advance();
                Ok(None)
            }
            (Step::StructuredReply, OptReply::Ack) => {
                self.tried_structured = true;
                self.structured = true;
                self.advance();
                Ok(None)
            }
            (Step::SetMeta, OptReply::MetaContext { id, name }) => {
                if name == BASE_ALLOCATION {
                    self.base_allocation = Some(id);
                }
                Ok(Some(ClientEvent::MetaContext { id, name }))
            }
            (Step::SetMeta, OptReply::Ack) => {
                self.tried_meta = true;
                self.advance();
                Ok(None)
            }
            (Step::Go, OptReply::Info(info)) => {
                match info {
                    Info::Export { size, flags } => self.size = Some((size, flags)),
                    Info::BlockSize {
                        minimum,
                        preferred,
                        maximum,
                    } => {
                        self.block_sizes = Some(BlockSizes {
                            minimum,
                            preferred,
                            maximum,
                        });
                    }
                    _ => {}
                }
                Ok(Some(ClientEvent::Info(info)))
            }
            (Step::Go, OptReply::Ack) => {
                let Some((size, flags)) = self.size else {
                    return Err(ProtocolError::Violation(
                        "GO acknowledged without NBD_INFO_EXPORT",
                    ));
                };
                Ok(Some(ClientEvent::Ready(self.finish(size, flags))))
            }
            _ => Err(ProtocolError::Violation("unexpected option reply")),
        }
    }

    fn on_error<'b>(
        &mut self,
        step: Step,
        reply: OptReplyType,
        message: &'b str,
    ) -> Result<Option<ClientEvent<'b>>, ProtocolError> {
        let option = step.option();
        match step {
            Step::StartTls | Step::ClientFlags | Step::ExportName => {
                return Err(ProtocolError::OptionRefused(option, reply));
            }
            // Servers before GO answer UNSUP: fall back to EXPORT_NAME,
            // which extended headers forbid.
            Step::Go if reply == OptReplyType::ErrUnsup && !self.extended => {
                self.state = State::Send(Step::ExportName);
                return Ok(Some(ClientEvent::Refused {
                    option,
                    reply,
                    message,
                }));
            }
            Step::Go => return Err(ProtocolError::OptionRefused(option, reply)),
            Step::List => self.listed = true,
            Step::ExtendedHeaders => self.tried_extended = true,
            Step::StructuredReply => self.tried_structured = true,
            Step::SetMeta => self.tried_meta = true,
        }
        self.advance();
        Ok(Some(ClientEvent::Refused {
            option,
            reply,
            message,
        }))
    }
}
