//! The decisions a server [`Connection`](super::Connection) hands to its
//! caller, as owned tokens.
//!
//! A token is neither `Copy` nor `Clone`, and every `answer_*` call takes it
//! by value: a question cannot be answered twice, and since the connection
//! asks nothing new until the outstanding question is answered, answers
//! cannot come out of order either (quinn's `Incoming` → `accept`/`refuse`,
//! rustls's `Acceptor` → `Accepted`). Tokens borrow nothing, so the caller
//! may discard the consumed input as soon as `handle_input` returns; the
//! export name a question is about is kept by the connection
//! ([`Connection::asked_name`](super::Connection::asked_name)).
//!
//! Answering twice does not compile:
//!
//! ```compile_fail
//! use nbd_proto::server::*;
//! fn twice(c: &mut Connection, q: ExportQuestion, out: &mut [u8]) {
//!     let _ = c.answer_export(q, Err(nbd_proto::OptReplyType::ErrUnknown), out);
//!     let _ = c.answer_export(q, Err(nbd_proto::OptReplyType::ErrUnknown), out);
//! }
//! ```

/// The option that asked about an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportOption {
    /// `NBD_OPT_EXPORT_NAME`: success enters transmission; a refusal ends
    /// the connection (the option has no error reply).
    ExportName,
    /// `NBD_OPT_INFO`: a description only; negotiation goes on.
    Info,
    /// `NBD_OPT_GO`: success enters transmission.
    Go,
    /// An oldstyle server's only question, asked before the greeting: the
    /// default export (a refusal ends the connection).
    Oldstyle,
}

/// The `NBD_INFO_*` items a client asked for in INFO or GO (beyond
/// `NBD_INFO_EXPORT`, which is always sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct InfoWanted {
    pub(crate) name: bool,
    pub(crate) description: bool,
    pub(crate) block_size: bool,
}

/// "Which export is this name, and what is it like?" Answer with
/// [`Connection::answer_export`](super::Connection::answer_export).
#[must_use = "answer it with Connection::answer_export"]
#[derive(Debug, PartialEq, Eq)]
pub struct ExportQuestion {
    pub(crate) option: ExportOption,
    pub(crate) wanted: InfoWanted,
    pub(crate) serial: u32,
}

impl ExportQuestion {
    /// The option that asked.
    #[must_use]
    pub fn option(&self) -> ExportOption {
        self.option
    }

    /// True when a successful answer starts transmission (GO, EXPORT_NAME,
    /// oldstyle): the export answered is the one the connection will use.
    #[must_use]
    pub fn ends_negotiation(&self) -> bool {
        self.option != ExportOption::Info
    }

    /// True when the client asked for `NBD_INFO_BLOCK_SIZE` and so promised
    /// to honour the constraints (GO only; [proto.md "Size constraints"]).
    ///
    /// [proto.md "Size constraints"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#size-constraints
    #[must_use]
    pub fn agrees_block_sizes(&self) -> bool {
        self.wanted.block_size
    }
}

/// `NBD_OPT_LIST`: answer with one
/// [`Connection::list_entry`](super::Connection::list_entry) per export,
/// then [`Connection::finish_list`](super::Connection::finish_list). The
/// caller may stop between entries (to let the output drain) and resume.
#[must_use = "answer it with Connection::list_entry and Connection::finish_list"]
#[derive(Debug, PartialEq, Eq)]
pub struct ListQuestion {
    pub(crate) serial: u32,
}

/// `NBD_OPT_LIST_META_CONTEXT` or `NBD_OPT_SET_META_CONTEXT`: "which of the
/// catalogue's contexts does this export offer?" The client's queries have
/// already been matched against the configured catalogue
/// ([`HandshakeConfig::meta_contexts`](super::HandshakeConfig::meta_contexts));
/// the caller only says what the export supports, with
/// [`Connection::answer_meta_contexts`](super::Connection::answer_meta_contexts).
#[must_use = "answer it with Connection::answer_meta_contexts"]
#[derive(Debug, PartialEq, Eq)]
pub struct MetaQuestion {
    pub(crate) list: bool,
    /// Catalogue entries the client's queries name (bit i = entry i).
    pub(crate) matched: u64,
    pub(crate) serial: u32,
}

impl MetaQuestion {
    /// True for LIST (a query), false for SET (a selection).
    #[must_use]
    pub fn is_list(&self) -> bool {
        self.list
    }

    /// The catalogue entries the client's queries matched (bit i = entry
    /// i); the reply will name those the export offers.
    #[must_use]
    pub fn matched(&self) -> u64 {
        self.matched
    }
}

/// STARTTLS was accepted. Write out everything
/// [`Connection::poll_transmit`](super::Connection::poll_transmit) gives
/// (the acknowledgement) in plaintext, run a TLS handshake over the
/// transport (input after the consumed bytes is already TLS), then hand
/// this back to
/// [`Connection::handle_tls_established`](super::Connection::handle_tls_established).
/// If TLS fails, close the connection.
#[must_use = "run TLS, then hand it to Connection::handle_tls_established"]
#[derive(Debug, PartialEq, Eq)]
pub struct StartTls {
    pub(crate) serial: u32,
}

/// An answer or reply that did not fit the output slice. Nothing was
/// written and nothing changed: call again with `token` and a slice of at
/// least `required` bytes.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "retry with a larger buffer, or the question stays unanswered"]
pub struct NeedRoom<T> {
    /// Bytes the call needs.
    pub required: usize,
    /// The question (or pending reply) handed back.
    pub token: T,
}

impl<T> core::fmt::Display for NeedRoom<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "output buffer too small: {} bytes required",
            self.required
        )
    }
}

impl<T: core::fmt::Debug> core::error::Error for NeedRoom<T> {}

impl<T> From<NeedRoom<T>> for crate::error::BufferTooSmall {
    /// Drop the token: for callers that give up rather than retry.
    fn from(e: NeedRoom<T>) -> Self {
        Self {
            required: e.required,
        }
    }
}
