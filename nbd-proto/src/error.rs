//! The crate's errors, one small `Copy` enum per layer.
//!
//! - [`DecodeError`]: bytes that can never become a valid frame (the codec).
//! - [`ProtocolError`]: why a connection must end (the state machines).
//!   Errors the peer should hear are not errors here but values: option
//!   error replies and [`server::Input::Reject`](crate::server::Input::Reject).
//! - [`BufferTooSmall`]: an output slice was short; it says how long it
//!   must be. Nothing was written.
//!
//! All implement `core::error::Error` and `Display`, and carry only
//! integers and `&'static str`, so they cost nothing to return.

use crate::types::{Command, ErrorCode, OptReplyType, OptionCode};

/// An output slice was too small; `required` bytes are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer too small: {required} bytes required")]
pub struct BufferTooSmall {
    /// Total bytes the encoder needs.
    pub required: usize,
}

/// A frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A magic number was wrong; the stream cannot be resynchronised.
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    /// A length field disagrees with the frame or its own limits.
    #[error("bad length in {0}")]
    BadLength(&'static str),
    /// A length exceeds what this side accepts.
    #[error("{0} too large")]
    TooLarge(&'static str),
    /// A string was not valid UTF-8 or contained NUL.
    #[error("invalid string in {0}")]
    BadString(&'static str),
    /// A field held a value that is not allowed here.
    #[error("invalid value in {0}")]
    Invalid(&'static str),
}

/// Why a connection must end. Errors the peer should hear are values
/// (option error replies, `Reject`), never this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Undecodable input (bad magic, impossible length).
    #[error("decode error: {0}")]
    Decode(#[from] DecodeError),
    /// The client set client flags this server does not know or did not offer.
    #[error("unsupported client flags {0:#x}")]
    BadClientFlags(u32),
    /// Too many options were sent during negotiation (denial of service).
    #[error("too many options")]
    TooManyOptions,
    /// An option was larger than the configured limit (denial of service).
    #[error("option of {0} bytes exceeds the limit")]
    OptionTooLarge(u32),
    /// `NBD_OPT_EXPORT_NAME` could not be satisfied: the spec's only answer
    /// is to close the connection.
    #[error("export name refused")]
    ExportNameRefused,
    /// A request payload exceeds both the maximum payload and the DoS cap.
    #[error("request payload of {0} bytes exceeds the limit")]
    PayloadTooLarge(u64),
    /// A request arrived after `NBD_CMD_DISC`.
    #[error("request after NBD_CMD_DISC")]
    AfterDisconnect,
    /// The peer sent something the spec forbids and no reply can express.
    #[error("protocol violation: {0}")]
    Violation(&'static str),
    /// A reply from the server did not match any request (client side).
    #[error("unexpected reply for {0:?}")]
    UnexpectedReply(Command),
    /// The server refused an option the client cannot do without
    /// (client side: STARTTLS when TLS is required, GO, EXPORT_NAME).
    #[error("option {0:?} refused with {1:?}")]
    OptionRefused(OptionCode, OptReplyType),
    /// The server answered with an error the client cannot continue from.
    #[error("server error {0:?}")]
    Server(ErrorCode),
}
