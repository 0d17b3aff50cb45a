//! A zero-allocation, sans-IO implementation of the Network Block Device
//! protocol ([NBD][proto]): a byte-exact codec for every message, and a
//! server and a client state machine, each one value per connection.
//!
//! The crate does no I/O, reads no clock and spawns nothing. You move the
//! bytes (with std::net, tokio, mio, io_uring, ...); it tells you what they
//! mean and what to send back. It is `#![no_std]` without `alloc`, forbids
//! `unsafe`, and never panics on input.
//!
//! # Where to start
//! - Writing a server: [`server::Connection`], one per client, from the
//!   first byte to `NBD_CMD_DISC` (negotiation, STARTTLS, transmission,
//!   shutdown). The [server run loop](#server-run-loop) below is the whole
//!   contract; `examples/blocking_server.rs` and `examples/tokio_server.rs`
//!   are complete programs.
//! - Writing a client: [`client::Connection`], one per server connection,
//!   with requests checked before they are sent and READ replies
//!   reassembled into your buffer. See the [client run loop](#client-run-loop)
//!   and `examples/blocking_client.rs`, `examples/tokio_client.rs`.
//! - Framing messages yourself (a proxy, a fuzzer, a protocol analyser):
//!   [`wire`], the codec under both state machines.
//!
//! The vocabulary both sides share: [`flags`] (the protocol's flag fields),
//! [`types`] (its numbered values: options, commands, errors, ...),
//! [`magic`] (its magic numbers) and [`error`].
//!
//! # Contract
//! - Decoders take a borrowed slice and return `Ok(None)` when more bytes
//!   are needed, `Ok(Some((value, consumed)))` with `consumed <= len`, or
//!   `Err` for input that can never become valid. Values borrow the input
//!   (a WRITE's data is a slice of your buffer).
//! - Encoders write into a caller slice and return the length, or
//!   [`BufferTooSmall`] with the length they need. The state machines'
//!   answers and replies return [`server::NeedRoom`] instead, which hands
//!   the question or reply token back: nothing is ever half-written or lost.
//! - State machines are poll style: `handle_*` feeds input, `poll_*` and
//!   the `answer_*` / `reply_*` calls produce output, `wants_read` /
//!   `wants_write` drive readiness. A [`ProtocolError`] means "close now";
//!   every error the peer should hear is a value (an option error reply or
//!   [`server::Input::Reject`]).
//! - Decisions are owned tokens that the answer consumes, so nothing can be
//!   answered twice, and nothing the crate returns borrows the connection.
//! - Every length and offset from the wire is checked before use; limits
//!   (option sizes, payload sizes, options per connection) are
//!   configurable and bounded, so a hostile peer cannot make the caller
//!   allocate without bound.
//!
//! # Server run loop
//! One [`server::Connection`] per client, fed with
//! [`server::Connection::handle_input`], drained with
//! [`server::Connection::poll_transmit`]:
//! 1. Create it with a [`server::ConnectionConfig`] (the default: fixed
//!    newstyle, structured replies, extended headers, `base:allocation`,
//!    no TLS).
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
//! Large WRITEs without the input buffer: before `handle_input`, a server
//! may call [`server::Connection::begin_write_stream`], which accepts a
//! valid WRITE on its header alone ([`server::StreamedWrite`]). Its payload
//! then comes back from `handle_input` as [`server::Input::WriteData`]
//! (bytes already buffered), or the server reads it straight into its own
//! storage and reports it with [`server::Connection::payload_received`];
//! once [`server::Connection::payload_left`] is 0 it replies and requests
//! are parsed again. Invalid WRITEs are never streamed: `handle_input`
//! rejects them as usual.
//!
//! The whole negotiation, in memory:
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
//! from the server's greeting to `NBD_CMD_DISC`.
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
//! Negotiation and one READ, in memory:
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
//!
//! # Examples
//! Four complete programs ship in the crate's `examples/` directory. The
//! test suite runs them against real peers: the servers with qemu-img,
//! nbdinfo and nbdcopy as clients, the clients against nbdd, nbdkit and
//! the two servers.
//!
//! | example | what it shows |
//! |---|---|
//! | `blocking_server` | std::net, a thread per client, a 64 MiB memory export, zero-copy READ replies, `base:allocation` block status |
//! | `tokio_server` | tokio, a task per client, sparse READ replies (holes as `OFFSET_HOLE` chunks) |
//! | `blocking_client` | std::net: connect, GO, write, read back, block status, disconnect |
//! | `tokio_client` | tokio: extended headers (with fallback), eight pipelined requests |
//!
//! ```text
//! cargo run -p nbd-proto --example blocking_server -- 127.0.0.1:10809
//! cargo run -p nbd-proto --example blocking_client -- nbd://127.0.0.1:10809
//! ```
//!
//! The servers take `HOST:PORT` or a Unix socket path; the clients an NBD
//! URI (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`),
//! `HOST PORT` or a socket path.
//!
//! # Features
//! - `arbitrary`: derives `arbitrary::Arbitrary` on the wire types.
//! - `fuzzing`: the fuzz harnesses (`nbd_proto::fuzzing`), shared by the
//!   cargo-fuzz targets and a stable replay test; not a stable API.
//!
//! # The specification
//! The docs cite the NBD protocol ([`doc/proto.md`][proto] of the
//! NetworkBlockDevice project) by section title, as `proto.md "Section"`,
//! linked where a section of that title exists. Extended headers
//! ([`EXTENDED_HEADERS`][ext]) and `NBD_CMD_RESIZE` ([`RESIZE`][resize]) are
//! experimental extensions specified on branches of the same repository.
//!
//! [proto]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
//! [ext]: https://github.com/NetworkBlockDevice/nbd/blob/extension-ext-header/doc/proto.md
//! [resize]: https://github.com/NetworkBlockDevice/nbd/blob/extension-resize/doc/proto.md
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

/// The README's code blocks, compiled as doctests so the README cannot
/// drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
