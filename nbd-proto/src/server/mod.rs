//! The server side: [`Connection`], one value per client from the first
//! byte to `NBD_CMD_DISC`.
//!
//! A connection asks its caller only what it cannot know (which export a
//! name means, what LIST shows, which meta contexts an export offers, when
//! TLS runs) through owned question tokens that the answers consume; it
//! hands validated requests over as [`Op`]s with a [`Pending`] token that
//! the final reply consumes. Everything else the spec says (option
//! haggling, flag rules, validation, reply layouts, block-status
//! normalisation) happens inside.

mod answer;
mod connection;
mod export;
mod handshake;
mod meta;
mod question;
mod replies;
mod request;
mod transmission;

pub use answer::EXPORT_ANSWER_MAX;
pub use connection::{Connection, ConnectionConfig, HANDSHAKE_ANSWER_MAX, Input};
pub use export::{BlockSizes, ExportInfo, Negotiated, TlsMode};
pub use handshake::{BASE_ALLOCATION, HandshakeConfig, QEMU_ALLOCATION_DEPTH};
pub use question::{ExportOption, ExportQuestion, ListQuestion, MetaQuestion, NeedRoom, StartTls};
pub use replies::{OK_REPLY_MAX, READ_PREFIX_MAX, error_reply_len};
pub use request::{Op, Pending};
pub use transmission::TransmissionConfig;
