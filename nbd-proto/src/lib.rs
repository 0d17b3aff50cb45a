//! A zero-allocation, sans-IO implementation of the Network Block Device
//! protocol: a byte-exact codec plus the server negotiation and
//! transmission state machines (and a client side).
//!
//! The crate is `#![no_std]` without `alloc`, forbids `unsafe`, and never
//! panics on input. It does no I/O, reads no clock and spawns nothing: a
//! driver (the `nbdd` mio loop, or your own event loop) moves bytes.
//!
//! # Contract
//! - Decoders take a borrowed slice and return `Ok(None)` when more bytes
//!   are needed, `Ok(Some((value, consumed)))` with `consumed <= len`, or
//!   `Err` for input that can never become valid. Values borrow the input.
//! - Encoders write into a caller slice and return the length or
//!   [`BufferTooSmall`] with the length they need.
//! - State machines are poll style: `handle_*` feeds input, `poll_*` and
//!   the `answer_*` / `reply_*` calls produce output, `wants_read` /
//!   `wants_write` drive readiness. A [`ProtocolError`] means "close now";
//!   every error the peer should hear is a value (an option error reply or
//!   [`server::Incoming::Reject`]).
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
//!
//! ```
//! use nbd_proto::server::*;
//! use nbd_proto::{OptReplyType, TransmissionFlags};
//!
//! // What a client sent: flags, then NBD_OPT_GO for the default export.
//! let mut client = Vec::new();
//! client.extend_from_slice(&3u32.to_be_bytes());
//! client.extend_from_slice(b"IHAVEOPT");
//! client.extend_from_slice(&7u32.to_be_bytes());
//! client.extend_from_slice(&6u32.to_be_bytes());
//! client.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
//!
//! let mut hs = Handshake::new(HandshakeConfig::default());
//! let (mut out, mut sent) = ([0u8; 9000], Vec::new());
//! let mut pos = 0;
//! let negotiated = loop {
//!     loop {
//!         let n = hs.poll_transmit(&mut out);
//!         if n == 0 { break; }
//!         sent.extend_from_slice(&out[..n]);
//!     }
//!     if let Some(n) = hs.negotiated() { break n; }
//!     let (n, event) = hs.handle_input(&client[pos..]).expect("close the connection");
//!     pos += n;
//!     let w = match event {
//!         Some(HandshakeEvent::Export(q)) => {
//!             let info = ExportInfo { size: 1 << 20, flags: TransmissionFlags::SEND_FLUSH,
//!                 name: "disk", description: "", block_sizes: None };
//!             let answer = if q.name().is_empty() { Ok(info) } else { Err(OptReplyType::ErrUnknown) };
//!             hs.answer_export(&q, answer, &mut out).unwrap()
//!         }
//!         Some(HandshakeEvent::List) => hs.finish_list(&mut out).unwrap(),
//!         Some(HandshakeEvent::MetaContexts(q)) =>
//!             hs.answer_meta_contexts(&q, &["base:allocation"], &mut out).unwrap(),
//!         Some(_) => unimplemented!("STARTTLS: run TLS, then handle_tls_established"),
//!         None if n == 0 => unreachable!("needs more input"),
//!         None => 0,
//!     };
//!     sent.extend_from_slice(&out[..w]);
//! };
//! assert_eq!(&sent[..8], b"NBDMAGIC");
//! let tx = Transmission::new(negotiated, TransmissionConfig::default());
//! assert_eq!(tx.negotiated().size, 1 << 20);
//! ```
//!
//! # Client run loop
//! 1. Create a [`client::ClientHandshake`] with a [`client::ClientConfig`].
//! 2. Loop: write [`client::ClientHandshake::poll_transmit`] (a buffer of
//!    [`client::CLIENT_TRANSMIT_MAX`] bytes always suffices), feed server bytes to
//!    [`client::ClientHandshake::handle_input`] until `(0, None)`, act on each
//!    [`client::ClientEvent`] (`StartTls`: run TLS, then `handle_tls_established`).
//! 3. On [`client::ClientEvent::Ready`], encode requests with
//!    [`wire::request::Request::encode`] and decode replies with a
//!    [`client::ReplyDecoder`], telling it which cookies are READs and their lengths.
//!
//! ```
//! use nbd_proto::client::*;
//! use nbd_proto::{Cookie, HeaderMode};
//!
//! let mut c = ClientHandshake::new(ClientConfig { structured_replies: false, ..Default::default() });
//! let mut server = Vec::new();
//! server.extend_from_slice(b"NBDMAGICIHAVEOPT\0\x03");          // greeting
//! server.extend_from_slice(&[0, 3, 0xe8, 0x89, 4, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 12]);
//! server.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 1]); // INFO_EXPORT: 4 KiB
//! server.extend_from_slice(&[0, 3, 0xe8, 0x89, 4, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]);
//! let (mut out, mut pos) = ([0u8; CLIENT_TRANSMIT_MAX], 0);
//! while c.negotiated().is_none() {
//!     let _to_send = c.poll_transmit(&mut out).unwrap();
//!     let (n, _event) = c.handle_input(&server[pos..]).unwrap();
//!     pos += n;
//! }
//! let neg = c.negotiated().unwrap();
//! assert_eq!((neg.size, neg.mode), (4096, HeaderMode::Simple));
//!
//! // A simple READ reply for cookie 1 carries the 2 bytes that were asked for.
//! let dec = ReplyDecoder::new(neg.mode, 1 << 20);
//! let reply = [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa, 0xbb];
//! let (r, used) = dec.decode(&reply, |c| (c == Cookie(1)).then_some(2)).unwrap().unwrap();
//! assert_eq!(used, 18);
//! assert!(matches!(r, Reply::Simple { data: &[0xaa, 0xbb], .. }));
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

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
