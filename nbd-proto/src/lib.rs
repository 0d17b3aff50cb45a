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
//!   [`server::Input::Reject`]). Decisions are owned tokens that the answer
//!   consumes, so nothing can be answered twice.
//!
//! # Server run loop
//! One [`server::Connection`] per client, fed with
//! [`server::Connection::handle_input`], drained with
//! [`server::Connection::poll_transmit`]:
//! 1. Create it with a [`server::ConnectionConfig`].
//! 2. Loop: write out `poll_transmit` until it returns 0, then call
//!    `handle_input` with the buffered input, discard the bytes it reports
//!    consumed (after using a WRITE's data), and act on the [`server::Input`]:
//!    - `NeedInput`: read more from the socket; `Continue`: call again;
//!      `Blocked`: write output (or finish in-flight work) first;
//!    - `Export`, `List`, `MetaContexts`: answer with the matching
//!      `answer_*` / `list_entry` call, which consumes the question;
//!    - `StartTls`: flush in plaintext, run TLS, then
//!      [`server::Connection::handle_tls_established`];
//!    - `Request { op, reply }`: run `op` and send one final reply through
//!      `reply` (`reply_ok`, `reply_read`, `reply_error`, ...), now or
//!      later; `Reject`: `reply_error` with what it says;
//!    - `Disconnect`, then `Closed` (or [`server::Connection::is_closed`]):
//!      write out what is queued and close.
//! 3. An `Err(ProtocolError)` also means: write out what is queued, then close.
//!
//! ```
//! use nbd_proto::server::*;
//! use nbd_proto::TransmissionFlags;
//!
//! // What a client sent: flags, then NBD_OPT_GO for the default export.
//! let mut client = Vec::new();
//! client.extend_from_slice(&3u32.to_be_bytes());
//! client.extend_from_slice(b"IHAVEOPT");
//! client.extend_from_slice(&7u32.to_be_bytes());
//! client.extend_from_slice(&6u32.to_be_bytes());
//! client.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
//!
//! let mut conn = Connection::new(&ConnectionConfig::default());
//! let (mut out, mut sent, mut input) = ([0u8; EXPORT_ANSWER_MAX], Vec::new(), &client[..]);
//! while conn.negotiated().is_none() {
//!     loop {
//!         let n = conn.poll_transmit(&mut out).unwrap();
//!         if n == 0 { break; }
//!         sent.extend_from_slice(&out[..n]);
//!     }
//!     let (used, next) = conn.handle_input(input).expect("close the connection");
//!     input = &input[used..];
//!     let written = match next {
//!         Input::Export(q) => {
//!             let info = ExportInfo { size: 1 << 20, flags: TransmissionFlags::SEND_FLUSH,
//!                 name: "disk", description: "", block_sizes: None, meta_contexts: 1 };
//!             let answer = if conn.asked_name().is_empty() { Ok(info) } else { Err(nbd_proto::OptReplyType::ErrUnknown) };
//!             conn.answer_export(q, answer, &mut out).unwrap()
//!         }
//!         Input::Continue => 0,
//!         other => unreachable!("this client sends nothing else: {other:?}"),
//!     };
//!     sent.extend_from_slice(&out[..written]);
//! }
//! assert_eq!(&sent[..8], b"NBDMAGIC");
//! assert_eq!(conn.negotiated().unwrap().size, 1 << 20);
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
