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
