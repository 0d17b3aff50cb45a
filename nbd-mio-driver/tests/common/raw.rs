//! A raw-socket NBD client for conformance tests.
//!
//! libnbd refuses to send most malformed messages, so protocol corners are
//! driven from here: negotiation is spelled out byte by byte (so a test can
//! send any flag or option it likes), requests are encoded with
//! `nbd_proto`'s wire codec (or written raw), and replies are framed with
//! `nbd_proto::client::ReplyDecoder` and turned into owned [`Msg`]s.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nbd_proto::client::{Reply, ReplyDecoder};
use nbd_proto::wire::reply::ChunkPayload;
use nbd_proto::wire::request::{Request, RequestHeader};
use nbd_proto::{ChunkType, CmdFlags, Command, Cookie, ErrorCode, HeaderMode, TransmissionFlags};

use super::{Server, Transport};

/// How long any single read may block before the test fails (a hung server
/// must fail the test, not stall it).
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// `NBD_OPT_*` numbers used by the tests.
pub mod opt {
    /// `NBD_OPT_EXPORT_NAME`
    pub const EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`
    pub const ABORT: u32 = 2;
    /// `NBD_OPT_LIST`
    pub const LIST: u32 = 3;
    /// `NBD_OPT_STARTTLS`
    pub const STARTTLS: u32 = 5;
    /// `NBD_OPT_INFO`
    pub const INFO: u32 = 6;
    /// `NBD_OPT_GO`
    pub const GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`
    pub const STRUCTURED_REPLY: u32 = 8;
    /// `NBD_OPT_SET_META_CONTEXT`
    pub const SET_META_CONTEXT: u32 = 10;
    /// `NBD_OPT_EXTENDED_HEADERS`
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// `NBD_REP_*` numbers used by the tests.
pub mod rep {
    /// `NBD_REP_ACK`
    pub const ACK: u32 = 1;
    /// `NBD_REP_SERVER`
    pub const SERVER: u32 = 2;
    /// `NBD_REP_INFO`
    pub const INFO: u32 = 3;
    /// `NBD_REP_META_CONTEXT`
    pub const META_CONTEXT: u32 = 4;
    /// `NBD_REP_ERR_UNSUP`
    pub const ERR_UNSUP: u32 = 0x8000_0001;
    /// `NBD_REP_ERR_POLICY`
    pub const ERR_POLICY: u32 = 0x8000_0002;
    /// `NBD_REP_ERR_INVALID`
    pub const ERR_INVALID: u32 = 0x8000_0003;
    /// `NBD_REP_ERR_UNKNOWN`
    pub const ERR_UNKNOWN: u32 = 0x8000_0006;
}

/// Either kind of client socket.
pub enum Sock {
    /// Unix-domain.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One option reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptReply {
    /// The option it answers.
    pub option: u32,
    /// `NBD_REP_*`.
    pub reply: u32,
    /// Its data.
    pub data: Vec<u8>,
}

/// One reply message (a simple reply or one chunk), owned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Msg {
    /// The request's cookie as echoed.
    pub cookie: u64,
    /// A simple reply (not a chunk).
    pub simple: bool,
    /// The last message for its cookie.
    pub done: bool,
    /// Chunk type (raw u16; 0 for simple replies).
    pub ty: u16,
    /// The offset echoed by an extended header (0 otherwise).
    pub hdr_offset: u64,
    /// Chunk payload length from the header.
    pub len: u64,
    /// The error carried, if any.
    pub error: Option<ErrorCode>,
    /// Simple READ data or OFFSET_DATA bytes.
    pub data: Vec<u8>,
    /// OFFSET_DATA / OFFSET_HOLE offset.
    pub at: u64,
    /// OFFSET_HOLE length.
    pub hole: u32,
    /// Block-status context ID.
    pub ctx: u32,
    /// Block-status descriptors (length, flags).
    pub extents: Vec<(u64, u64)>,
}

/// A raw NBD client connection.
pub struct Raw {
    /// The socket.
    pub sock: Sock,
    /// Header mode used for requests and replies.
    pub mode: HeaderMode,
    /// Export size from negotiation.
    pub size: u64,
    /// Transmission flags from negotiation.
    pub flags: TransmissionFlags,
    input: Vec<u8>,
    reads: HashMap<u64, u64>,
    corked: Option<Vec<u8>>,
}

impl Raw {
    /// Connect to `server` without reading anything.
    pub fn connect(server: &Server) -> Self {
        let sock = match server.transport {
            Transport::Unix => Sock::Unix(UnixStream::connect(&server.socket).expect("connect")),
            Transport::Tcp => {
                Sock::Tcp(TcpStream::connect(("127.0.0.1", server.port)).expect("connect"))
            }
        };
        Self::from_sock(sock)
    }

    /// Connect to a Unix socket path.
    pub fn connect_unix(path: &Path) -> Self {
        Self::from_sock(Sock::Unix(UnixStream::connect(path).expect("connect")))
    }

    fn from_sock(sock: Sock) -> Self {
        match &sock {
            Sock::Unix(s) => s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout"),
            Sock::Tcp(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                s.set_nodelay(true).expect("nodelay");
            }
        }
        Self {
            sock,
            mode: HeaderMode::Simple,
            size: 0,
            flags: TransmissionFlags::empty(),
            input: Vec::new(),
            reads: HashMap::new(),
            corked: None,
        }
    }

    /// Write `bytes` (all of them), or queue them while corked.
    pub fn send(&mut self, bytes: &[u8]) {
        match &mut self.corked {
            Some(q) => q.extend_from_slice(bytes),
            None => self.sock.write_all(bytes).expect("send to server"),
        }
    }

    /// Queue what is sent from now on, until [`Raw::uncork`].
    pub fn cork(&mut self) {
        self.corked.get_or_insert_with(Vec::new);
    }

    /// Send everything queued since [`Raw::cork`] in one write, so the
    /// server finds all of it in one read.
    pub fn uncork(&mut self) {
        if let Some(q) = self.corked.take() {
            self.send(&q);
        }
    }

    /// Write `bytes`, ignoring failure: for bytes sent after a message the
    /// server may already have answered by closing.
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.sock.write_all(bytes);
    }

    /// Read more bytes into the input buffer; returns false at EOF.
    fn fill(&mut self) -> io::Result<bool> {
        let mut tmp = [0u8; 64 * 1024];
        loop {
            match self.sock.read(&mut tmp) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.input.extend_from_slice(&tmp[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Read exactly `n` bytes.
    pub fn recv(&mut self, n: usize) -> Vec<u8> {
        while self.input.len() < n {
            let more = self.fill().expect("read from server");
            assert!(
                more,
                "server closed after {} of {n} bytes",
                self.input.len()
            );
        }
        self.input.drain(..n).collect()
    }

    /// Asserts the server closes the connection without sending anything
    /// more (EOF or a reset, within [`IO_TIMEOUT`]).
    pub fn expect_closed(&mut self) {
        assert!(
            self.input.is_empty(),
            "unexpected bytes: {:02x?}",
            self.input
        );
        match self.fill() {
            Ok(false) => {}
            Ok(true) => panic!("expected a close, got bytes {:02x?}", self.input),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected a close, got {e}"),
        }
    }

    /// True when nothing arrives within `wait` (the socket stays open).
    pub fn quiet_for(&mut self, wait: Duration) -> bool {
        if !self.input.is_empty() {
            return false;
        }
        let set = |s: &Sock, t| match s {
            Sock::Unix(s) => s.set_read_timeout(t),
            Sock::Tcp(s) => s.set_read_timeout(t),
        };
        set(&self.sock, Some(wait)).expect("timeout");
        let r = self.fill();
        set(&self.sock, Some(IO_TIMEOUT)).expect("timeout");
        // A timeout means the socket stayed open and silent.
        matches!(r, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }

    /// Read the 18-byte greeting.
    pub fn greeting(&mut self) -> Vec<u8> {
        self.recv(18)
    }

    /// Send the 32-bit client flags.
    pub fn client_flags(&mut self, flags: u32) {
        self.send(&flags.to_be_bytes());
    }

    /// Send an option header and `data`.
    pub fn option(&mut self, option: u32, data: &[u8]) {
        let mut m = Vec::with_capacity(16 + data.len());
        m.extend_from_slice(b"IHAVEOPT");
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&u32::try_from(data.len()).expect("option len").to_be_bytes());
        m.extend_from_slice(data);
        self.send(&m);
    }

    /// Read one option reply, checking its magic.
    pub fn opt_reply(&mut self) -> OptReply {
        let h = self.recv(20);
        assert_eq!(
            h[..8],
            [0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9],
            "reply magic"
        );
        let be32 = |i: usize| u32::from_be_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let len = be32(16) as usize;
        OptReply {
            option: be32(8),
            reply: be32(12),
            data: self.recv(len),
        }
    }

    /// Greeting plus client flags `FIXED_NEWSTYLE | NO_ZEROES`.
    pub fn start(&mut self) {
        let g = self.greeting();
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        self.client_flags(3);
    }

    /// Send `INFO`/`GO` data for `name` with `infos` requested.
    pub fn info_go(&mut self, option: u32, name: &str, infos: &[u16]) {
        self.option(option, &info_data(name, infos));
    }

    /// Finish a GO: read INFO replies up to the ACK and enter transmission.
    /// Panics on any error reply.
    pub fn finish_go(&mut self) -> Vec<OptReply> {
        let mut got = Vec::new();
        loop {
            let r = self.opt_reply();
            assert_eq!(r.option, opt::GO);
            match r.reply {
                rep::ACK => break,
                rep::INFO => {
                    if r.data[..2] == [0, 0] {
                        self.size = u64::from_be_bytes(r.data[2..10].try_into().expect("size"));
                        self.flags = TransmissionFlags::from_bits_retain(u16::from_be_bytes([
                            r.data[10], r.data[11],
                        ]));
                    }
                    got.push(r);
                }
                other => panic!("GO failed: reply {other:#x} {:?}", r.data),
            }
        }
        got
    }

    /// Negotiate `mode` on the default export, selecting `base:allocation`
    /// unless `mode` is simple.
    pub fn negotiate(server: &Server, mode: HeaderMode) -> Self {
        Self::negotiate_export(server, "", mode)
    }

    /// As [`Raw::negotiate`], for export `name`.
    pub fn negotiate_export(server: &Server, name: &str, mode: HeaderMode) -> Self {
        let mut c = Self::connect(server);
        c.start();
        c.negotiate_after_flags(name, mode);
        c
    }

    /// The option part of [`Raw::negotiate`], after the flags were sent.
    pub fn negotiate_after_flags(&mut self, name: &str, mode: HeaderMode) {
        let ack = |c: &mut Self, o: u32| {
            c.option(o, &[]);
            let r = c.opt_reply();
            assert_eq!((r.option, r.reply), (o, rep::ACK), "option {o}");
        };
        match mode {
            HeaderMode::Simple => {}
            HeaderMode::Structured => ack(self, opt::STRUCTURED_REPLY),
            HeaderMode::Extended => ack(self, opt::EXTENDED_HEADERS),
        }
        if mode != HeaderMode::Simple {
            self.option(
                opt::SET_META_CONTEXT,
                &meta_data(name, &["base:allocation"]),
            );
            let r = self.opt_reply();
            assert_eq!(r.reply, rep::META_CONTEXT, "{r:?}");
            assert_eq!(&r.data[4..], b"base:allocation");
            assert_eq!(self.opt_reply().reply, rep::ACK);
        }
        self.info_go(opt::GO, name, &[]);
        self.finish_go();
        self.mode = mode;
    }

    /// Encode and send one request in the negotiated mode.
    pub fn request(&mut self, cmd: Command, flags: CmdFlags, cookie: u64, offset: u64, len: u64) {
        self.request_with(cmd, flags, cookie, offset, len, &[]);
    }

    /// As [`Raw::request`], with a payload (WRITE data, or any payload in
    /// extended mode).
    pub fn request_with(
        &mut self,
        cmd: Command,
        flags: CmdFlags,
        cookie: u64,
        offset: u64,
        len: u64,
        data: &[u8],
    ) {
        let frame = encode_request(self.mode, cmd, flags, cookie, offset, len, data);
        if cmd == Command::Read {
            self.reads.insert(cookie, len);
        }
        self.send(&frame);
    }

    /// Read the next reply message.
    pub fn reply(&mut self) -> Msg {
        let dec = ReplyDecoder::new(self.mode, 64 << 20);
        loop {
            let reads = &self.reads;
            let got = dec
                .decode(&self.input, |c| reads.get(&c.0).copied())
                .expect("well-formed reply");
            if let Some((reply, n)) = got {
                let msg = to_msg(reply, self.mode);
                self.input.drain(..n);
                if msg.done {
                    self.reads.remove(&msg.cookie);
                }
                return msg;
            }
            let more = self.fill().expect("read reply");
            assert!(more, "server closed while a reply was expected");
        }
    }

    /// Every message up to and including the final one for the next cookie
    /// (assumes replies for one cookie are not interleaved with others).
    pub fn full_reply(&mut self) -> Vec<Msg> {
        let mut v = vec![self.reply()];
        while !v.last().is_some_and(|m| m.done) {
            let m = self.reply();
            assert_eq!(m.cookie, v[0].cookie, "chunks of two replies interleaved");
            v.push(m);
        }
        v
    }

    /// The single error of a one-message reply (or `None` for success).
    pub fn status(&mut self, cookie: u64) -> Option<ErrorCode> {
        let v = self.full_reply();
        assert_eq!(v[0].cookie, cookie);
        v.iter().find_map(|m| m.error)
    }

    /// Run one request and return its error (None = success).
    pub fn call(
        &mut self,
        cmd: Command,
        flags: CmdFlags,
        offset: u64,
        len: u64,
    ) -> Option<ErrorCode> {
        self.request(cmd, flags, 7, offset, len);
        self.status(7)
    }

    /// WRITE `data` at `offset`, asserting success.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let flags = if self.mode == HeaderMode::Extended {
            CmdFlags::PAYLOAD_LEN
        } else {
            CmdFlags::empty()
        };
        self.request_with(Command::Write, flags, 8, offset, data.len() as u64, data);
        assert_eq!(self.status(8), None, "WRITE at {offset}");
    }

    /// READ `len` bytes at `offset`, reassembling chunks and checking they
    /// tile the range exactly; panics on an error reply.
    pub fn read(&mut self, offset: u64, len: u64) -> Vec<u8> {
        self.request(Command::Read, CmdFlags::empty(), 9, offset, len);
        let msgs = self.full_reply();
        assemble(&msgs, offset, len)
    }
}

/// Reassemble a READ reply into bytes, checking that content chunks lie in
/// the range, do not overlap and cover it exactly (checklist 97).
pub fn assemble(msgs: &[Msg], offset: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; usize::try_from(len).expect("len")];
    let mut seen = vec![false; out.len()];
    for m in msgs {
        assert_eq!(m.error, None, "READ failed: {m:?}");
        if m.simple {
            out.copy_from_slice(&m.data);
            return out;
        }
        let (at, n, data) = match ChunkType::from(m.ty) {
            ChunkType::OffsetData => (m.at, m.data.len() as u64, Some(&m.data)),
            ChunkType::OffsetHole => (m.at, u64::from(m.hole), None),
            ChunkType::None => continue,
            other => panic!("unexpected chunk {other:?} in a READ reply"),
        };
        assert!(
            at >= offset && at + n <= offset + len,
            "chunk outside the range"
        );
        let s = (at - offset) as usize;
        for b in &mut seen[s..s + n as usize] {
            assert!(!*b, "overlapping chunks");
            *b = true;
        }
        if let Some(d) = data {
            out[s..s + d.len()].copy_from_slice(d);
        }
    }
    assert!(seen.iter().all(|&b| b), "chunks do not cover the range");
    out
}

/// Encode one request frame.
pub fn encode_request(
    mode: HeaderMode,
    cmd: Command,
    flags: CmdFlags,
    cookie: u64,
    offset: u64,
    len: u64,
    data: &[u8],
) -> Vec<u8> {
    let req = Request {
        header: RequestHeader {
            flags,
            command: cmd,
            cookie: Cookie(cookie),
            offset,
            len,
        },
        data,
    };
    let mut frame = vec![0u8; 32 + data.len()];
    let n = req.encode(mode, &mut frame).expect("encode request");
    frame.truncate(n);
    frame
}

/// INFO/GO option data.
pub fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

/// SET/LIST_META_CONTEXT option data.
pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

fn to_msg(reply: Reply<'_>, mode: HeaderMode) -> Msg {
    match reply {
        Reply::Simple {
            cookie,
            error,
            data,
        } => Msg {
            cookie: cookie.0,
            simple: true,
            done: true,
            error,
            data: data.to_vec(),
            ..Msg::default()
        },
        Reply::Chunk { header, payload } => {
            let mut m = Msg {
                cookie: header.cookie.0,
                done: header.flags.contains(nbd_proto::ReplyFlags::DONE),
                ty: header.ty.into(),
                hdr_offset: header.offset,
                len: header.len,
                ..Msg::default()
            };
            match payload {
                ChunkPayload::OffsetData { offset, data } => {
                    m.at = offset;
                    m.data = data.to_vec();
                }
                ChunkPayload::OffsetHole { offset, len } => {
                    m.at = offset;
                    m.hole = len;
                }
                ChunkPayload::BlockStatus { id, extents } => {
                    m.ctx = id;
                    // The iterator is bounded by the header's length: count
                    // descriptors from it rather than trusting the iterator's end.
                    let (fixed, each) = match mode {
                        HeaderMode::Extended => (8, 16),
                        _ => (4, 8),
                    };
                    let count = (header.len.saturating_sub(fixed) / each) as usize;
                    m.extents = extents.take(count).map(|e| (e.len, e.flags)).collect();
                }
                ChunkPayload::Error { error, .. } => m.error = Some(error),
                ChunkPayload::None | ChunkPayload::Unknown(_) => {}
            }
            m
        }
    }
}
