//! End to end with nbd-proto's own client side: `ClientHandshake`
//! negotiates with the built `nbdd` over TCP, requests are encoded with the
//! wire codec and replies framed by `ReplyDecoder`. In simple, structured
//! and extended mode: write 1 MiB of random data (pipelined), read it back
//! (pipelined), compare, and ask for block status.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Server, Transport};
use nbd_proto::client::{
    CLIENT_TRANSMIT_MAX, ClientConfig, ClientEvent, ClientHandshake, ClientNegotiated, Reply,
    ReplyDecoder,
};
use nbd_proto::wire::reply::ChunkPayload;
use nbd_proto::wire::request::{Request, RequestHeader};
use nbd_proto::{CmdFlags, Command, Cookie, HeaderMode};

const EXPORT_SIZE: u64 = 4 << 20;
const DATA_LEN: usize = 1 << 20;

struct Client {
    sock: TcpStream,
    input: Vec<u8>,
    neg: ClientNegotiated,
    reads: HashMap<u64, u64>,
    next_cookie: u64,
}

fn read_more(sock: &mut TcpStream, input: &mut Vec<u8>) {
    let mut tmp = [0u8; 64 * 1024];
    let n = sock.read(&mut tmp).expect("read from nbdd");
    assert!(n > 0, "nbdd closed the connection");
    input.extend_from_slice(&tmp[..n]);
}

impl Client {
    /// Connect and drive `ClientHandshake` to the end.
    fn negotiate(port: u16, cfg: ClientConfig<'_>) -> (Self, Vec<String>) {
        let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        let mut hs = ClientHandshake::new(cfg);
        let mut out = vec![0u8; CLIENT_TRANSMIT_MAX];
        let mut input = Vec::new();
        let mut events = Vec::new();
        loop {
            let n = hs.poll_transmit(&mut out).expect("room for an option");
            if n > 0 {
                sock.write_all(&out[..n]).expect("send option");
            }
            loop {
                let (used, ev) = hs.handle_input(&input).expect("negotiation");
                match ev {
                    Some(ClientEvent::MetaContext { id, name }) => {
                        events.push(format!("meta {id} {name}"))
                    }
                    Some(ClientEvent::Refused { option, .. }) => {
                        events.push(format!("refused {option:?}"))
                    }
                    Some(_) | None => {}
                }
                let idle = used == 0 && ev.is_none();
                input.drain(..used);
                if idle {
                    break;
                }
            }
            if let Some(neg) = hs.negotiated() {
                assert!(input.is_empty(), "bytes after the handshake: {input:?}");
                let c = Self {
                    sock,
                    input,
                    neg,
                    reads: HashMap::new(),
                    next_cookie: 1,
                };
                return (c, events);
            }
            if hs.wants_read() {
                read_more(&mut sock, &mut input);
            }
        }
    }

    fn send(&mut self, command: Command, offset: u64, len: u64, data: &[u8]) -> u64 {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut flags = CmdFlags::empty();
        if self.neg.mode == HeaderMode::Extended && command == Command::Write {
            flags |= CmdFlags::PAYLOAD_LEN;
        }
        let req = Request {
            header: RequestHeader {
                flags,
                command,
                cookie: Cookie(cookie),
                offset,
                len,
            },
            data,
        };
        let mut frame = vec![0u8; 32 + data.len()];
        let n = req.encode(self.neg.mode, &mut frame).expect("encode");
        self.sock.write_all(&frame[..n]).expect("send request");
        if command == Command::Read {
            self.reads.insert(cookie, len);
        }
        cookie
    }

    /// Handle every message until `count` replies are complete; `on` sees
    /// each message.
    fn collect(&mut self, mut count: usize, mut on: impl FnMut(&Reply<'_>)) {
        let dec = ReplyDecoder::new(self.neg.mode, 64 << 20);
        while count > 0 {
            let reads = &self.reads;
            let got = dec
                .decode(&self.input, |c| reads.get(&c.0).copied())
                .expect("reply");
            let Some((reply, used)) = got else {
                read_more(&mut self.sock, &mut self.input);
                continue;
            };
            assert_eq!(reply.error(), None, "{reply:?}");
            on(&reply);
            if reply.is_final() {
                self.reads.remove(&reply.cookie().0);
                count -= 1;
            }
            self.input.drain(..used);
        }
    }
}

fn random(len: usize, mut state: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        v.extend_from_slice(&(state | 0x0101_0101_0101_0101).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn roundtrip(cfg: ClientConfig<'_>, want: HeaderMode, seed: u64) {
    let s = Server::start(Transport::Tcp, &["memory", "4M"]);
    let (mut c, events) = Client::negotiate(s.port, cfg);
    assert_eq!(c.neg.mode, want, "events: {events:?}");
    assert_eq!(c.neg.size, EXPORT_SIZE);
    let data = random(DATA_LEN, seed);
    // 1 MiB at 512 KiB: four pipelined 256 KiB writes.
    let base = 512 * 1024;
    for (i, piece) in data.chunks(256 * 1024).enumerate() {
        let at = base + (i * 256 * 1024) as u64;
        c.send(Command::Write, at, piece.len() as u64, piece);
    }
    c.collect(4, |_| {});
    // Back in sixteen pipelined 64 KiB reads, reassembled by offset.
    let mut back = vec![0u8; DATA_LEN];
    let mut where_ = HashMap::new();
    for i in 0..16u64 {
        let at = base + i * 65536;
        let cookie = c.send(Command::Read, at, 65536, &[]);
        where_.insert(cookie, at);
    }
    c.collect(16, |r| match r {
        Reply::Simple { cookie, data, .. } => {
            let at = (where_[&cookie.0] - base) as usize;
            back[at..at + data.len()].copy_from_slice(data);
        }
        Reply::Chunk {
            payload: ChunkPayload::OffsetData { offset, data },
            ..
        } => {
            let at = (offset - base) as usize;
            back[at..at + data.len()].copy_from_slice(data);
        }
        Reply::Chunk {
            payload: ChunkPayload::None,
            ..
        } => {}
        other => panic!("unexpected READ reply {other:?}"),
    });
    assert!(back == data, "{want:?}: data read back differs");
    // Block status: hole, 1 MiB of data, hole.
    let Some(id) = c.neg.base_allocation else {
        assert_eq!(want, HeaderMode::Simple, "base:allocation selected");
        return;
    };
    c.send(Command::BlockStatus, 0, EXPORT_SIZE, &[]);
    let mut extents = Vec::new();
    c.collect(1, |r| match r {
        Reply::Chunk {
            header,
            payload:
                ChunkPayload::BlockStatus {
                    id: got,
                    extents: e,
                },
        } => {
            assert_eq!(*got, id);
            let (fixed, each) = if want == HeaderMode::Extended {
                (8, 16)
            } else {
                (4, 8)
            };
            let n = ((header.len - fixed) / each) as usize;
            extents.extend(e.take(n).map(|x| (x.len, x.flags)));
        }
        other => panic!("unexpected BLOCK_STATUS reply {other:?}"),
    });
    assert_eq!(
        extents,
        [
            (base, 3),
            (DATA_LEN as u64, 0),
            (EXPORT_SIZE - base - DATA_LEN as u64, 3)
        ],
        "{want:?}"
    );
}

#[test]
fn rust_client_simple_mode() {
    let cfg = ClientConfig {
        structured_replies: false,
        ..ClientConfig::default()
    };
    roundtrip(cfg, HeaderMode::Simple, 1);
}

#[test]
fn rust_client_structured_mode() {
    let cfg = ClientConfig {
        base_allocation: true,
        ..ClientConfig::default()
    };
    roundtrip(cfg, HeaderMode::Structured, 2);
}

#[test]
fn rust_client_extended_mode() {
    let cfg = ClientConfig {
        extended_headers: true,
        base_allocation: true,
        ..ClientConfig::default()
    };
    roundtrip(cfg, HeaderMode::Extended, 3);
}
