//! Client side: a negotiation state machine ([`ClientHandshake`]) and a
//! reply decoder ([`ReplyDecoder`]). Requests are encoded with
//! [`crate::wire::request::Request::encode`].

mod handshake;
mod reply;

pub use handshake::{
    BASE_ALLOCATION, CLIENT_TRANSMIT_MAX, ClientConfig, ClientEvent, ClientHandshake,
    ClientNegotiated,
};
pub use reply::{Reply, ReplyDecoder};
