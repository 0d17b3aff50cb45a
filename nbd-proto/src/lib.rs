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
//! [`client::Connection`] is a whole client connection in one value,
//! from the server's greeting to `NBD_CMD_DISC`. Two complete programs
//! show it against real servers:
//! `examples/blocking_client.rs` (std::net: connect, GO, write, read
//! back, block status) and `examples/tokio_client.rs` (tokio, extended
//! headers, pipelined requests), both in the crate's source package; run
//! them with
//! `cargo run -p nbd-proto --example blocking_client -- nbd://HOST/EXPORT`.
//!
//! 1. Create a [`client::Connection`] from a [`client::ClientConfig`];
//!    `Connection<N>` keeps up to `N` requests in flight.
//! 2. Loop on [`client::Connection::handle_input`] with the bytes received
//!    so far; it returns how many it consumed and one [`client::Event`]:
//!    - `NeedInput`: receive more bytes;
//!    - `Transmit`: write what [`client::Connection::poll_transmit`] gives;
//!    - `StartTls(token)`: run a TLS handshake, then
//!      [`client::Connection::handle_tls_established`]`(token)`;
//!    - `Ready`: negotiation is over;
//!    - `ReadData` / `BlockStatus`: copy the bytes or extents out with
//!      their `copy_into`;
//!    - `Done`: the reply for a cookie is complete (success or why not);
//!    - `Idle`: nothing in flight; `Closed`: close the transport.
//!
//!    Drop the consumed bytes after acting on the event (events with data
//!    borrow the input).
//! 3. Send requests with [`client::Connection::encode_request`]
//!    ([`client::Cmd::read`], [`client::Cmd::write`], …): it checks them
//!    against what the server advertised, picks the cookie and writes the
//!    frame into your buffer.
//! 4. On EOF call [`client::Connection::handle_eof`]: requests in flight
//!    are then reported lost, then `Closed`.
//!
//! ```
//! use nbd_proto::client::*;
//!
//! // What a server sends: greeting, ACK to STRUCTURED_REPLY, then the GO
//! // answer (NBD_INFO_EXPORT: 4 KiB, HAS_FLAGS) and its ACK.
//! let mut server = Vec::new();
//! server.extend_from_slice(b"NBDMAGICIHAVEOPT\0\x03");
//! let rep = |opt: u8, ty: u8, data: &[u8]| {
//!     let mut v = vec![0, 3, 0xe8, 0x89, 4, 0x55, 0x65, 0xa9, 0, 0, 0, opt, 0, 0, 0, ty];
//!     v.extend_from_slice(&(data.len() as u32).to_be_bytes());
//!     v.extend_from_slice(data);
//!     v
//! };
//! server.extend(rep(8, 1, &[]));
//! server.extend(rep(7, 3, &[0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 1]));
//! server.extend(rep(7, 1, &[]));
//!
//! let mut conn: Connection = Connection::new(&ClientConfig::default()).unwrap();
//! let (mut out, mut sent, mut pos) = ([0u8; CLIENT_TRANSMIT_MAX], Vec::new(), 0);
//! loop {
//!     let (used, event) = conn.handle_input(&server[pos..]).expect("protocol error");
//!     pos += used;
//!     match event {
//!         Event::Transmit => {
//!             let n = conn.poll_transmit(&mut out).unwrap();
//!             sent.extend_from_slice(&out[..n]); // write these to the socket
//!         }
//!         Event::Ready(neg) => { assert_eq!(neg.size, 4096); break; }
//!         Event::NeedInput { .. } => unreachable!("the script is complete"),
//!         _ => {}
//!     }
//! }
//!
//! // A READ of 4 bytes, answered by one OFFSET_DATA chunk with DONE.
//! let frame = conn.encode_request(&Cmd::read(0, 4), &mut out).unwrap();
//! assert_eq!(frame.len, 28);
//! let mut reply = vec![0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1];
//! reply.extend_from_slice(&frame.cookie.0.to_be_bytes());
//! reply.extend_from_slice(&12u32.to_be_bytes());
//! reply.extend_from_slice(&0u64.to_be_bytes());
//! reply.extend_from_slice(b"data");
//! let (mut buf, mut pos) = ([0u8; 4], 0);
//! loop {
//!     let (used, event) = conn.handle_input(&reply[pos..]).unwrap();
//!     pos += used;
//!     match event {
//!         Event::ReadData(d) => d.copy_into(&mut buf).unwrap(),
//!         Event::Done(done) => { assert_eq!(done.result, Ok(())); break; }
//!         other => panic!("{other:?}"),
//!     }
//! }
//! assert_eq!(&buf, b"data");
//! ```
//!
//! [`client::ClientHandshake`] and [`client::ReplyDecoder`] remain for
//! callers that frame replies themselves.
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
