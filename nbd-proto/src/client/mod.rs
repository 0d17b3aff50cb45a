//! The client side: [`Connection`], one value per connection to a server.
//!
//! [`Connection`] is the whole client in one value: from the server's
//! first byte to `NBD_CMD_DISC`, negotiation (oldstyle, fixed and
//! non-fixed newstyle, STARTTLS, LIST, GO with fallback to EXPORT_NAME,
//! structured replies, extended headers, `base:allocation`) and
//! transmission (requests checked against what the server advertised,
//! cookies tracked in a fixed table of `N` slots, READ replies
//! reassembled into your buffer, block status copied into your extent
//! slice). It allocates nothing and borrows nothing between calls. The
//! crate docs give the [run loop](crate#client-run-loop).
//!
//! - Configure with [`ClientConfig`]; the result of negotiation is a
//!   [`ClientNegotiated`].
//! - Each [`Connection::handle_input`] returns one [`Event`]; data-carrying
//!   events ([`ReadData`], [`BlockStatus`]) borrow the input, [`Done`]
//!   reports a finished request.
//! - Requests are [`Cmd`]s, encoded by [`Connection::encode_request`],
//!   which refuses what the server would have to reject ([`RequestError`]).
//!
//! The older pieces, [`ClientHandshake`] (negotiation only) and
//! [`ReplyDecoder`] (reply framing with a per-cookie length callback),
//! remain for callers that drive transmission themselves.
//!
//! Runnable programs: `examples/blocking_client.rs` (std::net) and
//! `examples/tokio_client.rs`.
//!
//! Spec: [proto.md "Handshake"][hs], ["Transmission"][tx], ["Client-side
//! requirements"][tls] (TLS), ["Request types"][req].
//!
//! [hs]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#handshake
//! [tx]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#transmission
//! [tls]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#client-side-requirements
//! [req]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#request-types

mod connection;
mod event;
mod handshake;
mod receive;
mod reply;
mod request;
mod table;

pub use connection::{ConfigError, Connection, DEFAULT_MAX_CHUNK};
pub use event::{BlockStatus, Done, Event, ReadData, ReplyError, TlsStart};
pub use handshake::{
    BASE_ALLOCATION, CLIENT_TRANSMIT_MAX, ClientConfig, ClientEvent, ClientHandshake,
    ClientNegotiated,
};
pub use reply::{Reply, ReplyDecoder};
pub use request::{Cmd, RequestError, Sent};
