//! The server side: [`Connection`], one value per client from the first
//! byte to `NBD_CMD_DISC`.
//!
//! A connection asks its caller only what it cannot know (which export a
//! name means, what LIST shows, which meta contexts an export offers, when
//! TLS runs) through owned question tokens that the answers consume; it
//! hands validated requests over as [`Op`]s with a [`Pending`] token that
//! the final reply consumes. Everything else the spec says (option
//! haggling, flag rules, validation, reply layouts, block-status
//! normalisation) happens inside. The crate docs give the
//! [run loop](crate#server-run-loop).
//!
//! | you get | you answer with |
//! |---|---|
//! | [`Input::Export`]\([`ExportQuestion`]) | [`Connection::answer_export`] with an [`ExportInfo`] or a refusal |
//! | [`Input::List`]\([`ListQuestion`]) | [`Connection::list_entry`] per export, [`Connection::finish_list`] |
//! | [`Input::MetaContexts`]\([`MetaQuestion`]) | [`Connection::answer_meta_contexts`] |
//! | [`Input::StartTls`]\([`StartTls`]) | a TLS handshake, then [`Connection::handle_tls_established`] |
//! | [`Input::Request`] with an [`Op`] and a [`Pending`] | `reply_ok`, `reply_read`, `reply_block_status`, `reply_error`, ... |
//! | [`Input::Reject`] | [`Connection::reply_error`] |
//!
//! Configuration: [`ConnectionConfig`] ([`HandshakeConfig`] for
//! negotiation, [`TransmissionConfig`] for requests). Buffer sizes:
//! [`EXPORT_ANSWER_MAX`], [`HANDSHAKE_ANSWER_MAX`], [`OK_REPLY_MAX`],
//! [`READ_PREFIX_MAX`], [`error_reply_len`]; a short buffer returns
//! [`NeedRoom`] with the token, never a lost reply.
//!
//! Spec: [proto.md "Handshake"][hs], ["Transmission"][tx], ["TLS support"][tls],
//! ["Metadata querying"][meta], ["Size constraints"][size].
//!
//! [hs]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#handshake
//! [tx]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#transmission
//! [tls]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#tls-support
//! [meta]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#metadata-querying
//! [size]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#size-constraints

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
pub use connection::{
    Connection, ConnectionConfig, HANDSHAKE_ANSWER_MAX, Input, POLL_TRANSMIT_MAX,
};
pub use export::{BlockSizes, ExportInfo, Negotiated, TlsMode};
pub use handshake::{BASE_ALLOCATION, HandshakeConfig, QEMU_ALLOCATION_DEPTH};
pub use question::{ExportOption, ExportQuestion, ListQuestion, MetaQuestion, NeedRoom, StartTls};
pub use replies::{OK_REPLY_MAX, READ_PREFIX_MAX, error_reply_len};
pub use request::{Op, Pending, StreamedWrite};
pub use transmission::TransmissionConfig;
