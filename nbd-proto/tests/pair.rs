//! An in-memory client/server pair: the crate's own client side against
//! the server state machines over a `Vec<u8>` disk, no sockets. Negotiates
//! in simple, structured and extended mode, then runs a pipelined stream of
//! mixed requests and checks every reply against a model of the disk.

use std::collections::HashMap;

use nbd_proto::client::{
    ClientConfig, ClientEvent, ClientHandshake, ClientNegotiated, Reply, ReplyDecoder,
};
use nbd_proto::server::{
    ExportInfo, Handshake, HandshakeConfig, HandshakeEvent, Incoming, Transmission,
    TransmissionConfig,
};
use nbd_proto::wire::option::Info;
use nbd_proto::wire::reply::{BlockStatusExtent, ChunkPayload, ReplyTo};
use nbd_proto::wire::request::{Request, RequestHeader};
use nbd_proto::{
    AllocationFlags, CmdFlags, Command, Cookie, ErrorCode, HeaderMode, OptReplyType,
    TransmissionFlags as TF,
};

const SIZE: usize = 64 * 1024;

struct Server {
    hs: Handshake,
    tx: Option<Transmission>,
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
    }
}

impl Server {
    fn new() -> Self {
        Self {
            hs: Handshake::new(HandshakeConfig::default()),
            tx: None,
            disk: vec![0; SIZE],
            input: Vec::new(),
        }
    }

    /// Consume client bytes, append server bytes to `out`.
    fn run(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.input.extend_from_slice(bytes);
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let input = std::mem::take(&mut self.input);
            let (n, progressed) = if self.tx.is_some() {
                self.transmission(&input, &mut buf, out)
            } else {
                self.negotiation(&input, &mut buf, out)
            };
            self.input = input[n..].to_vec();
            if !progressed {
                break;
            }
        }
    }

    fn negotiation(&mut self, input: &[u8], buf: &mut [u8], out: &mut Vec<u8>) -> (usize, bool) {
        loop {
            let n = self.hs.poll_transmit(buf);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        if let Some(neg) = self.hs.negotiated() {
            self.tx = Some(Transmission::new(neg, TransmissionConfig::default()));
            return (0, true);
        }
        let (n, ev) = self.hs.handle_input(input).expect("server handshake");
        let w = match ev {
            Some(HandshakeEvent::Export(q)) => {
                let ans = if q.name() == "mem" || q.name().is_empty() {
                    Ok(export())
                } else {
                    Err(OptReplyType::ErrUnknown)
                };
                self.hs.answer_export(&q, ans, buf).unwrap()
            }
            Some(HandshakeEvent::List) => {
                let n = self
                    .hs
                    .answer_list_entry("mem", "memory disk", buf)
                    .unwrap();
                n + self.hs.finish_list(&mut buf[n..]).unwrap()
            }
            Some(HandshakeEvent::MetaContexts(q)) => self
                .hs
                .answer_meta_contexts(&q, &["base:allocation"], buf)
                .unwrap(),
            Some(_) => panic!("unexpected event"),
            None => 0,
        };
        out.extend_from_slice(&buf[..w]);
        let more = self.hs.wants_write() || self.hs.negotiated().is_some();
        (n, n > 0 || w > 0 || more)
    }

    fn transmission(&mut self, input: &[u8], buf: &mut [u8], out: &mut Vec<u8>) -> (usize, bool) {
        let tx = self.tx.as_mut().unwrap();
        let (n, inc) = tx.handle_request(input).expect("server transmission");
        let Some(inc) = inc else {
            return (n, n > 0);
        };
        match inc {
            Incoming::Command(Request { header: h, data }) => {
                let to = ReplyTo {
                    cookie: h.cookie,
                    offset: h.offset,
                };
                let (off, len) = (h.offset as usize, h.len as usize);
                let w = match h.command {
                    Command::Read if tx.mode() == HeaderMode::Simple || len < 2 => {
                        let p = tx.read_prefix_len();
                        buf[p..p + len].copy_from_slice(&self.disk[off..off + len]);
                        tx.encode_read_prefix(to, h.offset, len, true, buf).unwrap() + len
                    }
                    Command::Read => {
                        // Two chunks: data for the first half, then the
                        // second half as data or a hole, then NONE.
                        let half = len / 2;
                        let p = tx.read_prefix_len();
                        buf[p..p + half].copy_from_slice(&self.disk[off..off + half]);
                        tx.encode_read_prefix(to, h.offset, half, false, buf)
                            .unwrap();
                        let mut w = p + half;
                        let rest = &self.disk[off + half..off + len];
                        if rest.iter().all(|&b| b == 0) {
                            let hole = (h.offset + half as u64, (len - half) as u32);
                            w += tx
                                .encode_hole(to, hole.0, hole.1, false, &mut buf[w..])
                                .unwrap();
                        } else {
                            let q = w + p;
                            buf[q..q + rest.len()].copy_from_slice(rest);
                            let at = h.offset + half as u64;
                            tx.encode_read_prefix(to, at, rest.len(), false, &mut buf[w..])
                                .unwrap();
                            w = q + rest.len();
                        }
                        w + tx.encode_done(to, &mut buf[w..]).unwrap()
                    }
                    Command::Write => {
                        self.disk[off..off + data.len()].copy_from_slice(data);
                        tx.reply_ok(to, buf).unwrap()
                    }
                    Command::Trim | Command::WriteZeroes => {
                        self.disk[off..off + len].fill(0);
                        tx.reply_ok(to, buf).unwrap()
                    }
                    Command::BlockStatus => {
                        let zero = self.disk[off..off + len].iter().all(|&b| b == 0);
                        let flags = if zero {
                            AllocationFlags::ZERO.bits()
                        } else {
                            0
                        };
                        let e = [BlockStatusExtent {
                            len: len as u64,
                            flags: u64::from(flags),
                        }];
                        tx.encode_block_status(to, 1, &e, true, buf).unwrap()
                    }
                    _ => tx.reply_ok(to, buf).unwrap(),
                };
                out.extend_from_slice(&buf[..w]);
            }
            Incoming::Reject {
                to, error, message, ..
            } => {
                let w = tx.reply_error(to, error, message, buf).unwrap();
                out.extend_from_slice(&buf[..w]);
            }
            Incoming::Disconnect => {}
        }
        (n, true)
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
            assert!(server.tx.is_some() || server.hs.negotiated().is_some());
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
        assert_eq!(server.tx.as_ref().unwrap().in_flight(), 0);
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
