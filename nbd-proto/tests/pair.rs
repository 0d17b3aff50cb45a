//! An in-memory client/server pair: the crate's own client side against
//! the server state machines over a `Vec<u8>` disk, no sockets. Negotiates
//! in simple, structured and extended mode, then runs a pipelined stream of
//! mixed requests and checks every reply against a model of the disk.

use std::collections::HashMap;

use nbd_proto::client::{
    ClientConfig, ClientEvent, ClientHandshake, ClientNegotiated, Reply, ReplyDecoder,
};
use nbd_proto::server::{Connection, ConnectionConfig, ExportInfo, Input, Op, Pending as Owed};
use nbd_proto::wire::option::Info;
use nbd_proto::wire::reply::{BlockStatusExtent, ChunkPayload};
use nbd_proto::wire::request::{Request, RequestHeader};
use nbd_proto::{
    AllocationFlags, CmdFlags, Command, Cookie, ErrorCode, HeaderMode, OptReplyType,
    TransmissionFlags as TF,
};

const SIZE: usize = 64 * 1024;

struct Server {
    conn: Connection,
    disk: Vec<u8>,
    input: Vec<u8>,
}

fn export() -> ExportInfo<'static> {
    ExportInfo {
        size: SIZE as u64,
        flags: TF::SEND_FLUSH | TF::SEND_FUA | TF::SEND_TRIM | TF::SEND_WRITE_ZEROES,
        name: "mem",
        description: "memory disk",
        block_sizes: None,
        meta_contexts: 1,
    }
}

impl Server {
    fn new() -> Self {
        Self {
            conn: Connection::new(&ConnectionConfig::default()),
            disk: vec![0; SIZE],
            input: Vec::new(),
        }
    }

    /// Consume client bytes, append server bytes to `out`: the documented
    /// run loop.
    fn run(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.input.extend_from_slice(bytes);
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            loop {
                let n = self.conn.poll_transmit(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            let input = std::mem::take(&mut self.input);
            let (n, next) = self.conn.handle_input(&input).expect("server");
            let stalled = matches!(next, Input::NeedInput | Input::Blocked | Input::Closed);
            let w = self.act(next, &mut buf);
            out.extend_from_slice(&buf[..w]);
            self.input = input[n..].to_vec();
            if stalled {
                break;
            }
        }
    }

    fn act(&mut self, next: Input<'_>, buf: &mut [u8]) -> usize {
        let c = &mut self.conn;
        match next {
            Input::Export(q) => {
                let ans = if c.asked_name() == "mem" || c.asked_name().is_empty() {
                    Ok(export())
                } else {
                    Err(OptReplyType::ErrUnknown)
                };
                c.answer_export(q, ans, buf).unwrap()
            }
            Input::List(q) => {
                let n = c.list_entry(&q, "mem", "memory disk", buf).unwrap();
                n + c.finish_list(q, &mut buf[n..]).unwrap()
            }
            Input::MetaContexts(q) => c.answer_meta_contexts(q, Ok(1), buf).unwrap(),
            Input::Request { op, reply } => Self::execute(c, &mut self.disk, op, reply, buf),
            Input::Reject {
                reply,
                error,
                message,
            } => c.reply_error(reply, error, message, buf).unwrap(),
            Input::StartTls(_) => panic!("no TLS here"),
            _ => 0,
        }
    }

    fn execute(c: &mut Connection, disk: &mut [u8], op: Op<'_>, p: Owed, buf: &mut [u8]) -> usize {
        let structured = c.negotiated().unwrap().mode != HeaderMode::Simple;
        match op {
            Op::Read { offset, len, .. } if !structured || len < 2 => {
                let (off, pre) = (offset as usize, c.read_prefix_len());
                buf[pre..pre + len].copy_from_slice(&disk[off..off + len]);
                c.reply_read(p, buf).unwrap() + len
            }
            Op::Read { offset, len, .. } => {
                // Two chunks: data for the first half, then the second half
                // as data or a hole, then NONE.
                let (off, pre, half) = (offset as usize, c.read_prefix_len(), len / 2);
                buf[pre..pre + half].copy_from_slice(&disk[off..off + half]);
                c.read_chunk(&p, offset, half, buf).unwrap();
                let mut w = pre + half;
                let rest = &disk[off + half..off + len];
                let at = offset + half as u64;
                if rest.iter().all(|&b| b == 0) {
                    w += c
                        .read_hole(&p, at, rest.len() as u32, &mut buf[w..])
                        .unwrap();
                } else {
                    let q = w + pre;
                    buf[q..q + rest.len()].copy_from_slice(rest);
                    c.read_chunk(&p, at, rest.len(), &mut buf[w..]).unwrap();
                    w = q + rest.len();
                }
                w + c.reply_done(p, &mut buf[w..]).unwrap()
            }
            Op::Write { offset, data, .. } => {
                let off = offset as usize;
                disk[off..off + data.len()].copy_from_slice(data);
                c.reply_ok(p, buf).unwrap()
            }
            Op::Trim { offset, len, .. } | Op::WriteZeroes { offset, len, .. } => {
                disk[offset as usize..(offset + len) as usize].fill(0);
                c.reply_ok(p, buf).unwrap()
            }
            Op::BlockStatus { offset, len, .. } => {
                let range = &disk[offset as usize..(offset + len) as usize];
                let zero = range.iter().all(|&b| b == 0);
                let flags = if zero {
                    AllocationFlags::ZERO.bits()
                } else {
                    0
                };
                let e = [BlockStatusExtent {
                    len,
                    flags: u64::from(flags),
                }];
                c.reply_block_status(p, 1, &e, buf).unwrap()
            }
            _ => c.reply_ok(p, buf).unwrap(),
        }
    }
}

/// Negotiate; returns the client result, the server and leftover input.
fn negotiate(cfg: ClientConfig<'_>) -> (ClientNegotiated, Server, Vec<String>) {
    let mut client = ClientHandshake::new(cfg);
    let mut server = Server::new();
    let mut s2c = Vec::new();
    let mut log = Vec::new();
    server.run(&[], &mut s2c);
    let mut buf = vec![0u8; nbd_proto::client::CLIENT_TRANSMIT_MAX];
    for _ in 0..100 {
        let mut pos = 0;
        loop {
            let (n, ev) = client.handle_input(&s2c[pos..]).expect("client handshake");
            pos += n;
            match ev {
                Some(ClientEvent::ListEntry { name, .. }) => log.push(format!("list {name}")),
                Some(ClientEvent::MetaContext { id, name }) => {
                    log.push(format!("meta {id} {name}"))
                }
                Some(ClientEvent::Info(Info::Name(n))) => log.push(format!("name {n}")),
                Some(ClientEvent::Refused { option, .. }) => {
                    log.push(format!("refused {option:?}"))
                }
                Some(ClientEvent::Ready(_)) => log.push("ready".into()),
                _ => {}
            }
            if n == 0 && ev.is_none() {
                break;
            }
        }
        s2c.drain(..pos);
        if let Some(neg) = client.negotiated() {
            assert!(s2c.is_empty(), "server sent more than the handshake");
            assert!(server.conn.negotiated().is_some());
            server.run(&[], &mut s2c);
            return (neg, server, log);
        }
        let n = client.poll_transmit(&mut buf).unwrap();
        server.run(&buf[..n], &mut s2c);
    }
    panic!("negotiation did not finish: {log:?}");
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[derive(Debug, Clone)]
struct Pending {
    cmd: Command,
    offset: u64,
    len: u64,
    expect: Option<ErrorCode>,
    /// The model's bytes at read time (READ) or whether the range is zero.
    data: Vec<u8>,
    got: Vec<u8>,
    status: Option<u32>,
}

/// Run `count` mixed requests in batches of 8 pipelined requests.
fn stream(neg: ClientNegotiated, mut server: Server, count: u64, seed: u64) {
    let mode = neg.mode;
    let dec = ReplyDecoder::new(mode, 1 << 20);
    let mut model = vec![0u8; SIZE];
    let mut rng = Lcg(seed);
    let mut cookie = 0u64;
    let mut done = 0u64;
    while done < count {
        let mut c2s = Vec::new();
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        for _ in 0..8 {
            cookie += 1;
            let kind = rng.next() % 9;
            let len = 1 + rng.next() % 2048;
            let offset = rng.next() % (SIZE as u64 - len);
            let (cmd, offset, expect) = match kind {
                0 | 1 => (Command::Write, offset, None),
                2 | 3 => (Command::Read, offset, None),
                4 => (Command::Trim, offset, None),
                5 => (Command::WriteZeroes, offset, None),
                6 => (Command::Flush, 0, None),
                7 if neg.base_allocation.is_some() => (Command::BlockStatus, offset, None),
                7 => (Command::BlockStatus, offset, Some(ErrorCode::Inval)),
                _ => match rng.next() % 3 {
                    0 => (Command::Read, SIZE as u64, Some(ErrorCode::Inval)),
                    1 => (Command::Write, SIZE as u64 - 1, Some(ErrorCode::NoSpc)),
                    _ => (Command::Unknown(42), 0, Some(ErrorCode::Inval)),
                },
            };
            let len = if cmd == Command::Flush || cmd == Command::Unknown(42) {
                0
            } else {
                len
            };
            let payload: Vec<u8> = if cmd == Command::Write {
                (0..len).map(|_| rng.next() as u8 | 1).collect()
            } else {
                Vec::new()
            };
            let mut flags = CmdFlags::empty();
            if mode == HeaderMode::Extended && cmd == Command::Write {
                flags |= CmdFlags::PAYLOAD_LEN;
            }
            let req = Request {
                header: RequestHeader {
                    flags,
                    command: cmd,
                    cookie: Cookie(cookie),
                    offset,
                    len,
                },
                data: &payload,
            };
            let mut frame = vec![0u8; 32 + payload.len()];
            let n = req.encode(mode, &mut frame).unwrap();
            c2s.extend_from_slice(&frame[..n]);
            // The server executes in order, so the model does too.
            let (o, l) = (offset as usize, len as usize);
            let data = match (cmd, expect) {
                (_, Some(_)) => Vec::new(),
                (Command::Write, None) => {
                    model[o..o + l].copy_from_slice(&payload);
                    Vec::new()
                }
                (Command::Trim | Command::WriteZeroes, None) => {
                    model[o..o + l].fill(0);
                    Vec::new()
                }
                (Command::Read | Command::BlockStatus, None) => model[o..o + l].to_vec(),
                _ => Vec::new(),
            };
            pending.insert(
                cookie,
                Pending {
                    cmd,
                    offset,
                    len,
                    expect,
                    data,
                    got: Vec::new(),
                    status: None,
                },
            );
        }
        let mut s2c = Vec::new();
        server.run(&c2s, &mut s2c);
        let mut pos = 0;
        let read_len = |p: &HashMap<u64, Pending>, c: Cookie| {
            p.get(&c.0)
                .filter(|p| p.cmd == Command::Read)
                .map(|p| p.len)
        };
        while pos < s2c.len() {
            let snapshot = pending.clone();
            let (reply, n) = dec
                .decode(&s2c[pos..], |c| read_len(&snapshot, c))
                .expect("client decode")
                .expect("whole reply buffered");
            pos += n;
            let p = pending
                .get_mut(&reply.cookie().0)
                .expect("reply for a pending cookie");
            match reply {
                Reply::Simple { error, data, .. } => {
                    assert_eq!(error, p.expect, "{p:?}");
                    p.got.extend_from_slice(data);
                }
                Reply::Chunk { header, payload } => {
                    if mode == HeaderMode::Extended {
                        assert_eq!(header.offset, p.offset);
                    }
                    match payload {
                        ChunkPayload::OffsetData { offset, data } => {
                            assert_eq!(offset, p.offset + p.got.len() as u64);
                            p.got.extend_from_slice(data);
                        }
                        ChunkPayload::OffsetHole { offset, len } => {
                            assert_eq!(offset, p.offset + p.got.len() as u64);
                            p.got.extend(std::iter::repeat_n(0, len as usize));
                        }
                        ChunkPayload::BlockStatus { id, mut extents } => {
                            assert_eq!(Some(id), neg.base_allocation);
                            let e = extents.next().unwrap();
                            assert_eq!(e.len, p.len);
                            p.status = Some(e.flags as u32);
                        }
                        ChunkPayload::Error { error, .. } => {
                            assert_eq!(Some(error), p.expect, "{p:?}");
                        }
                        ChunkPayload::None => {}
                        other => panic!("unexpected chunk {other:?}"),
                    }
                }
            }
            if reply.is_final() {
                let p = pending.remove(&reply.cookie().0).unwrap();
                if p.expect.is_none() {
                    match p.cmd {
                        Command::Read => assert_eq!(p.got, p.data, "read {}+{}", p.offset, p.len),
                        Command::BlockStatus => {
                            let zero = p.data.iter().all(|&b| b == 0);
                            assert_eq!(p.status, Some(if zero { 2 } else { 0 }));
                        }
                        _ => {}
                    }
                }
                done += 1;
            }
        }
        assert!(pending.is_empty(), "unanswered: {pending:?}");
        assert_eq!(server.conn.in_flight(), 0);
    }
    assert_eq!(server.disk, model);
}

#[test]
fn pair_simple_mode() {
    let cfg = ClientConfig {
        export: "mem",
        structured_replies: false,
        list: true,
        ..ClientConfig::default()
    };
    let (neg, server, log) = negotiate(cfg);
    assert_eq!(neg.mode, HeaderMode::Simple);
    assert_eq!(neg.size, SIZE as u64);
    assert!(neg.flags.contains(TF::HAS_FLAGS | TF::SEND_TRIM));
    assert_eq!(log, ["list mem", "name mem", "ready"]);
    stream(neg, server, 400, 1);
}

#[test]
fn pair_structured_mode_with_base_allocation() {
    let cfg = ClientConfig {
        base_allocation: true,
        ..ClientConfig::default()
    };
    let (neg, server, log) = negotiate(cfg);
    assert_eq!(neg.mode, HeaderMode::Structured);
    assert_eq!(neg.base_allocation, Some(1));
    assert!(neg.flags.contains(TF::SEND_DF));
    assert_eq!(log, ["meta 1 base:allocation", "name mem", "ready"]);
    stream(neg, server, 400, 2);
}

#[test]
fn pair_structured_mode_without_context_rejects_block_status() {
    let (neg, server, _) = negotiate(ClientConfig::default());
    assert_eq!(neg.base_allocation, None);
    stream(neg, server, 200, 3);
}

#[test]
fn pair_extended_mode() {
    let cfg = ClientConfig {
        extended_headers: true,
        base_allocation: true,
        ..ClientConfig::default()
    };
    let (neg, server, _) = negotiate(cfg);
    assert_eq!(neg.mode, HeaderMode::Extended);
    assert!(neg.flags.contains(TF::BLOCK_STATUS_PAYLOAD));
    stream(neg, server, 400, 4);
}

#[test]
fn pair_unknown_export_fails_go() {
    let mut client = ClientHandshake::new(ClientConfig {
        export: "nope",
        ..ClientConfig::default()
    });
    let mut server = Server::new();
    let mut s2c = Vec::new();
    server.run(&[], &mut s2c);
    let mut buf = vec![0u8; 8192];
    let err = loop {
        match client.handle_input(&s2c) {
            Ok((n, _)) => {
                s2c.drain(..n);
                if n > 0 {
                    continue;
                }
            }
            Err(e) => break e,
        }
        let n = client.poll_transmit(&mut buf).unwrap();
        assert!(n > 0, "client stalled");
        server.run(&buf[..n], &mut s2c);
    };
    assert_eq!(
        err,
        nbd_proto::ProtocolError::OptionRefused(
            nbd_proto::OptionCode::Go,
            OptReplyType::ErrUnknown
        )
    );
}
