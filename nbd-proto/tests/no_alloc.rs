//! Zero heap allocations across decode -> validate -> encode of a long
//! stream of mixed requests, and across a whole negotiation. nbd-proto is
//! `no_std` without `alloc`, so the compiler already forbids allocation in
//! the crate; this test proves the documented driver loop (caller buffers,
//! borrowed views) needs none either. Counting is per thread
//! (allocation-counter's global allocator, in this test's own binary), and
//! the counter is checked to be live so a zero cannot pass vacuously.

use nbd_proto::server::{Connection, ConnectionConfig, ExportInfo, Input, Op};
use nbd_proto::wire::reply::BlockStatusExtent;
use nbd_proto::wire::request::{Request, RequestHeader};
use nbd_proto::{CmdFlags, Command, Cookie, HeaderMode, TransmissionFlags as TF};

fn count(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

fn header(command: Command, cookie: u64, offset: u64, len: u64) -> RequestHeader {
    RequestHeader {
        flags: CmdFlags::empty(),
        command,
        cookie: Cookie(cookie),
        offset,
        len,
    }
}

/// Negotiate structured replies + base:allocation + GO, all in caller
/// buffers.
fn negotiate(conn: &mut Connection, client: &[u8], out: &mut [u8]) -> Option<()> {
    let mut pos = 0;
    while conn.negotiated().is_none() {
        while conn.poll_transmit(out).ok()? > 0 {}
        let (n, next) = conn.handle_input(&client[pos..]).ok()?;
        pos += n;
        match next {
            Input::Export(q) => {
                let info = ExportInfo {
                    size: 1 << 30,
                    flags: TF::SEND_FLUSH | TF::SEND_FUA | TF::SEND_TRIM,
                    name: "d",
                    description: "",
                    block_sizes: None,
                    meta_contexts: 1,
                };
                conn.answer_export(q, Ok(info), out).ok()?;
            }
            Input::MetaContexts(q) => {
                conn.answer_meta_contexts(q, Ok(1), out).ok()?;
            }
            Input::Continue => {}
            _ => return None,
        }
    }
    Some(())
}

fn client_bytes() -> Vec<u8> {
    use nbd_proto::wire::option::{InfoRequest, MetaContextRequest, encode_option};
    use nbd_proto::{OptionCode, wire::handshake::encode_client_flags};
    let mut v = vec![0u8; 4096];
    let mut p = encode_client_flags(nbd_proto::ClientFlags::all(), &mut v).unwrap();
    p += encode_option(OptionCode::StructuredReply, &[], &mut v[p..]).unwrap();
    p += MetaContextRequest::encode(
        OptionCode::SetMetaContext,
        "",
        &["base:allocation"],
        &mut v[p..],
    )
    .unwrap();
    p += InfoRequest::encode(OptionCode::Go, "", &[], &mut v[p..]).unwrap();
    v.truncate(p);
    v
}

/// 10 000 requests: reads, writes with payloads, trims, flushes, block
/// status, and rejected ones (out of range, unknown command).
fn request_stream(mode: HeaderMode) -> Vec<u8> {
    let mut v = Vec::new();
    let payload = [7u8; 4096];
    let mut frame = [0u8; 32 + 4096];
    for i in 0..10_000u64 {
        let off = (i * 4096) % (1 << 29);
        let h = match i % 7 {
            0 => header(Command::Write, i, off, 4096),
            1 => header(Command::Read, i, off, 4096),
            2 => header(Command::Trim, i, off, 65536),
            3 => header(Command::Flush, i, 0, 0),
            4 => header(Command::BlockStatus, i, off, 1 << 20),
            5 => header(Command::Read, i, 1 << 31, 512),
            _ => header(Command::Unknown(77), i, 0, 0),
        };
        let data: &[u8] = if h.command == Command::Write {
            &payload
        } else {
            &[]
        };
        let n = Request { header: h, data }
            .encode(mode, &mut frame)
            .unwrap();
        v.extend_from_slice(&frame[..n]);
    }
    v
}

#[test]
fn counter_is_installed() {
    assert!(count(|| drop(std::hint::black_box(Box::new(1u8)))) >= 1);
}

#[test]
fn decode_validate_encode_allocates_nothing() {
    assert!(
        count(|| drop(std::hint::black_box(Box::new(1u8)))) >= 1,
        "counter not installed"
    );
    let client = client_bytes();
    let stream = request_stream(HeaderMode::Structured);
    let mut out = vec![0u8; 64 * 1024];
    let mut handled = 0u64;
    let allocs = count(|| {
        let mut conn = Connection::new(&ConnectionConfig::default());
        negotiate(&mut conn, &client, &mut out).expect("negotiation");
        let mut pos = 0;
        loop {
            let (n, next) = conn.handle_input(&stream[pos..]).expect("valid stream");
            pos += n;
            match next {
                Input::Request { op, reply } => {
                    match op {
                        Op::Read { .. } => {
                            assert_eq!(conn.read_prefix_len(), 28);
                            conn.reply_read(reply, &mut out).unwrap();
                        }
                        Op::BlockStatus { len, .. } => {
                            let e = [BlockStatusExtent { len, flags: 3 }];
                            conn.reply_block_status(reply, 1, &e, &mut out).unwrap();
                        }
                        _ => {
                            conn.reply_ok(reply, &mut out).unwrap();
                        }
                    }
                    handled += 1;
                }
                Input::Reject {
                    reply,
                    error,
                    message,
                } => {
                    conn.reply_error(reply, error, message, &mut out).unwrap();
                    handled += 1;
                }
                Input::Continue => {}
                _ => break,
            }
        }
        assert_eq!(conn.in_flight(), 0);
    });
    assert_eq!(handled, 10_000, "the stream was not fully processed");
    assert_eq!(allocs, 0);
}

mod client_conn;
mod common;

use nbd_proto::client::{ClientConfig, Cmd, Connection as ClientConnection, Event};

fn client_request(i: u64) -> Cmd<'static> {
    match i % 5 {
        0 => Cmd::read(i * 4096, 4096),
        1 => Cmd::write(i * 4096, &[9u8; 512]),
        2 => Cmd::block_status(0, 1 << 20),
        3 => Cmd::flush(),
        _ => Cmd::trim(i * 4096, 4096),
    }
}

/// The server's reply to request `i` with `cookie`.
fn client_reply(i: u64, cookie: Cookie) -> Vec<u8> {
    use client_conn::*;
    match i % 5 {
        0 => [
            chunk(0, T_HOLE, cookie, &hole_payload(i * 4096 + 2048, 2048)),
            chunk(0, T_DATA, cookie, &data_payload(i * 4096, &[7u8; 2048])),
            chunk(DONE, T_NONE, cookie, b""),
        ]
        .concat(),
        2 => chunk(
            DONE,
            T_BS,
            cookie,
            &bs_payload(9, &[(4096, 3), (1 << 20, 0)]),
        ),
        3 => chunk(DONE, T_ERROR, cookie, &error_payload(5, "flush failed")),
        _ => simple(cookie, 0),
    }
}

/// Send 10 000 requests in batches of 8, feeding each batch's replies;
/// `replies` gives them (measured run) or is filled (dry run). Returns
/// the number of completed requests and READ bytes checked.
fn client_run(replies: &mut Vec<Vec<u8>>, dry: bool) -> (u64, u64) {
    let cfg = ClientConfig {
        base_allocation: true,
        ..ClientConfig::default()
    };
    let hs_len = replies[0].len();
    let mut c = ClientConnection::<8>::new(&cfg).expect("config");
    let mut out = [0u8; 4096];
    let mut read = [0u8; 4096];
    let mut extents = [nbd_proto::wire::reply::BlockStatusExtent { len: 0, flags: 0 }; 4];
    let (mut done, mut checked) = (0u64, 0u64);
    let mut batch = 0;
    let mut input_at = (0usize, 0usize); // (which replies entry, position)
    let mut i = 0u64;
    loop {
        let (which, pos) = input_at;
        let input = replies.get(which).map_or(&[][..], |v| &v[pos..]);
        let (used, ev) = c.handle_input(input).expect("valid replies");
        input_at.1 += used;
        match ev {
            Event::Transmit => {
                let n = c.poll_transmit(&mut out).unwrap();
                assert!(n > 0);
            }
            Event::Idle if i == 10_000 => break,
            Event::Idle => {
                batch += 1;
                for _ in 0..8 {
                    let s = c.encode_request(&client_request(i), &mut out).unwrap();
                    if dry {
                        let r = client_reply(i, s.cookie);
                        if replies.len() <= batch {
                            replies.push(Vec::new());
                        }
                        replies[batch].extend(r);
                    }
                    i += 1;
                }
                input_at = (batch, 0);
            }
            Event::ReadData(d) => d.copy_into(&mut read).unwrap(),
            Event::BlockStatus(b) => assert_eq!(b.copy_into(&mut extents), 2),
            Event::Done(d) => {
                done += 1;
                if d.command == Command::Read {
                    assert!(d.result.is_ok());
                    assert!(read[..2048].iter().all(|&b| b == 7));
                    assert!(read[2048..].iter().all(|&b| b == 0));
                    read.fill(0xee);
                    checked += 4096;
                }
            }
            Event::Ready(_) | Event::Info(_) | Event::MetaContext { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(input_at.0, batch);
    assert!(hs_len > 0);
    (done, checked)
}

#[test]
fn client_connection_allocates_nothing() {
    let hs = client_conn::structured_server(1 << 30, common::DISK_WIRE_FLAGS, true);
    let mut replies = vec![hs];
    let dry = client_run(&mut replies, true);
    assert_eq!(replies.len(), 1 + 10_000 / 8);
    let mut result = (0, 0);
    let allocs = count(|| result = client_run(&mut replies, false));
    assert_eq!(result, dry);
    assert_eq!(result, (10_000, 2000 * 4096));
    assert_eq!(allocs, 0);
}
