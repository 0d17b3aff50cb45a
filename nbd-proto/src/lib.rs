//! A zero-allocation, sans-IO implementation of the Network Block Device
//! protocol: a byte-exact codec plus the server negotiation and
//! transmission state machines (and a client side).
//!
//! The crate is `#![no_std]` without `alloc`, forbids `unsafe`, and never
//! panics on input. It does no I/O, reads no clock and spawns nothing: a
//! driver (the `nbdd` mio loop, or your own event loop) moves bytes.
//!
//! # Server run loop
//! 1. Create a [`server::Handshake`]; write [`server::Handshake::poll_transmit`] to the socket.
//! 2. Feed received bytes to [`server::Handshake::handle_input`] until it returns `(0, None)`,
//!    consuming what it reports; answer every [`server::HandshakeEvent`] at once with the
//!    matching `answer_*` call, and after each call drain `poll_transmit` until it returns 0.
//! 3. On [`server::HandshakeEvent::StartTls`], flush the output, run TLS, then call
//!    [`server::Handshake::handle_tls_established`].
//! 4. When [`server::Handshake::negotiated`] is `Some`, build a [`server::Transmission`] and feed
//!    it the remaining bytes with [`server::Transmission::handle_request`]; execute each
//!    [`server::Incoming::Command`], answer each `Reject` with
//!    [`server::Transmission::reply_error`], and close on `Err` or after `Disconnect` once
//!    [`server::Transmission::in_flight`] is 0.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

// The `Arbitrary` derive (fuzzing only) expands to `::std` paths.
#[cfg(all(feature = "arbitrary", not(test)))]
extern crate std;

pub mod client;
pub mod error;
pub mod flags;
#[cfg(any(fuzzing, feature = "fuzzing"))]
pub mod fuzzing;
pub mod magic;
pub mod server;
pub mod types;
pub mod wire;

pub use error::{BufferTooSmall, DecodeError, ProtocolError};
pub use flags::{
    AllocationFlags, ClientFlags, CmdFlags, HandshakeFlags, ReplyFlags, TransmissionFlags,
};
pub use types::{
    ChunkType, Command, Cookie, ErrorCode, HeaderMode, InfoType, OptReplyType, OptionCode,
};
