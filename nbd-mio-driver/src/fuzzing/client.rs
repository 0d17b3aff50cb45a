//! The client side of the harness: everything the server writes is parsed
//! with nbd-proto's client-side decoders as the client reads it, and each
//! reply is checked against the request it answers.

use std::collections::VecDeque;

use nbd_proto::client::{Reply, ReplyDecoder};
use nbd_proto::magic::{OPTION_REPLY_MAGIC, SIMPLE_REPLY_MAGIC};
use nbd_proto::server::Pending;
use nbd_proto::wire::handshake::{ExportNameReply, Greeting, OptionReplyHeader};
use nbd_proto::wire::option::OptReply;
use nbd_proto::wire::reply::{ChunkHeader, ChunkPayload, SimpleReply};
use nbd_proto::{ChunkType, CmdFlags, Command, Cookie, HeaderMode, ReplyFlags};

/// Largest payload the decoder accepts: a READ of the largest export, with
/// room to spare (and the 64 MiB nbd-proto allows, should exports grow).
const MAX_PAYLOAD: u64 = (64 << 20) + 4096;

/// Most bytes the client's buffer grows to for one message: the largest
/// payload and its chunk header. Above what it holds, the buffer grows by
/// doubling only up to this (see [`append`]).
pub const MESSAGE_MAX: usize = MAX_PAYLOAD as usize + 64;

/// Most heap the client's buffer holds at once: while it grows from half
/// the largest message to the whole of it, both copies are live.
pub const CLIENT_HOLD_MAX: usize = MESSAGE_MAX + MESSAGE_MAX / 2;

/// `buf.extend_from_slice(bytes)`, but growing capacity by doubling only
/// up to [`MESSAGE_MAX`]: plain doubling took a buffer holding a 64 MiB
/// READ reply from 64 to 128 MiB, with 192 MiB live during the copy
/// (a fuzz finding: the harness's own heap, not the server's, broke
/// `MAX_LIVE_BYTES`).
fn append(buf: &mut Vec<u8>, bytes: &[u8]) {
    let need = buf.len() + bytes.len();
    if need > buf.capacity() {
        let target = need.max((buf.capacity() * 2).min(MESSAGE_MAX));
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes);
}

/// Data-carrying messages longer than this are checked from their header
/// and counted, not buffered: the checker never looks at READ data, and
/// buffering it (growing a buffer to 64 MiB, page faults on every run) was
/// half the `server` target's time (perf: 30 % memmove, 13 % faulting
/// fresh pages).
const SKIP_MIN: usize = 16 << 10;

/// A READ reply whose header is checked and whose data is being counted.
#[derive(Debug, Clone, Copy)]
enum Skipped {
    /// A simple reply without error.
    Simple(Cookie),
    /// An `OFFSET_DATA` chunk: its header, offset and data length.
    Data(ChunkHeader, u64, u64),
}

/// A reply the server has queued, in queue order.
#[derive(Debug)]
pub struct Expect {
    cookie: u64,
    command: Command,
    offset: u64,
    len: u64,
    flags: CmdFlags,
    /// nbd-proto rejected the request: the reply must be an error.
    rejected: bool,
}

impl Expect {
    pub fn of(p: &Pending, rejected: bool) -> Self {
        Self {
            cookie: p.cookie().0,
            command: p.command(),
            offset: p.offset(),
            len: p.len(),
            flags: p.flags(),
            rejected,
        }
    }
}

enum Stage {
    Greeting,
    Options,
    Transmission(ReplyDecoder),
    /// TLS failed (the server's session got the fuzzer's bytes sent
    /// before the ACK was read): nothing more is checked.
    Opaque,
}

/// NBD_OPT_STARTTLS, NBD_OPT_SET_META_CONTEXT; NBD_REP_ACK, NBD_REP_META_CONTEXT.
const OPT_STARTTLS: u32 = 5;
const OPT_SET_META_CONTEXT: u32 = 10;
const REP_ACK: u32 = 1;
const REP_META_CONTEXT: u32 = 4;

/// What the chunks of the reply in progress said so far.
#[derive(Default)]
struct Progress {
    /// Content chunks: `(start, end)`.
    content: Vec<(u64, u64)>,
    status_chunks: usize,
    error: bool,
    /// It was a simple reply (no chunks).
    simple: bool,
}

/// Parses the output stream as the client receives it.
pub struct Checker {
    oldstyle: bool,
    stage: Stage,
    /// Received and not yet parsed.
    buf: Vec<u8>,
    /// Offset in the output stream of `buf[0]`.
    at: u64,
    /// Where transmission starts in the output, and its header mode.
    transmission: Option<(u64, HeaderMode)>,
    reply: Progress,
    /// Final replies seen.
    finals: u64,
    /// Context IDs the server announced for SET_META_CONTEXT.
    contexts: Vec<u32>,
    /// The STARTTLS ACK was just parsed: what follows it is ciphertext.
    tls_starts: bool,
    /// A long READ reply in progress and how many of its bytes are still
    /// to come.
    skip: Option<(Skipped, usize)>,
}

impl Checker {
    pub fn new(oldstyle: bool) -> Self {
        Self {
            oldstyle,
            stage: Stage::Greeting,
            buf: Vec::new(),
            at: 0,
            transmission: None,
            reply: Progress::default(),
            finals: 0,
            contexts: Vec::new(),
            tls_starts: false,
            skip: None,
        }
    }

    /// The server has just negotiated: everything it queued so far (`at`
    /// bytes in all) was negotiation.
    pub fn transmission_at(&mut self, at: u64, mode: HeaderMode) {
        if self.transmission.is_none() && !matches!(self.stage, Stage::Opaque) {
            self.transmission = Some((at, mode));
        }
    }

    /// The client read `bytes` (plaintext): parse every whole message now
    /// buffered. At the STARTTLS ACK, parsing stops: the bytes after it
    /// are the server's first TLS records, returned for the TLS client.
    pub fn receive(&mut self, bytes: &[u8], expect: &mut VecDeque<Expect>) -> Option<Vec<u8>> {
        if matches!(self.stage, Stage::Opaque) {
            expect.clear();
            return None;
        }
        let bytes = self.skip_data(bytes, expect);
        let mut buf = std::mem::take(&mut self.buf);
        let rest = if buf.is_empty() {
            // Nothing half-received: parse the new bytes where they are
            // and keep only an incomplete tail.
            let pos = self.parse_all(bytes, expect);
            append(&mut buf, &bytes[pos..]);
            buf
        } else {
            append(&mut buf, bytes);
            let pos = self.parse_all(&buf, expect);
            buf.drain(..pos);
            buf
        };
        if std::mem::take(&mut self.tls_starts) {
            return Some(rest);
        }
        self.buf = rest;
        None
    }

    /// Count `bytes` against the data of the long READ reply in progress;
    /// at its end the reply is checked. Returns the bytes after it.
    fn skip_data<'b>(&mut self, bytes: &'b [u8], expect: &mut VecDeque<Expect>) -> &'b [u8] {
        let Some((reply, left)) = self.skip else {
            return bytes;
        };
        let n = left.min(bytes.len());
        self.at += n as u64;
        if n < left {
            self.skip = Some((reply, left - n));
            return &bytes[n..];
        }
        self.skip = None;
        let Stage::Transmission(d) = self.stage else {
            unreachable!("skipping outside transmission")
        };
        match reply {
            Skipped::Simple(cookie) => {
                let r = Reply::Simple {
                    cookie,
                    error: None,
                    data: &[],
                };
                self.check_reply(&r, d.mode(), 0, expect);
            }
            Skipped::Data(header, offset, len) => {
                let payload = ChunkPayload::OffsetData { offset, data: &[] };
                let r = Reply::Chunk { header, payload };
                self.check_reply(&r, d.mode(), len, expect);
            }
        }
        &bytes[n..]
    }

    /// `b` is the front of a long READ reply, with its header and (for a
    /// chunk) its offset and first data byte: check the header's form now,
    /// count the rest as it comes ([`Checker::skip_data`]). Returns what
    /// `b` held, all of it this message's.
    /// (A simple reply this long is one without error, to a READ.)
    fn start_skip(&mut self, d: ReplyDecoder, b: &[u8], need: usize) -> Option<usize> {
        let skipped = if b.get(..4)? != SIMPLE_REPLY_MAGIC.to_be_bytes() {
            let (header, hlen) = ChunkHeader::decode(b, d.mode()).ok()??;
            if header.ty != ChunkType::OffsetData || b.len() <= hlen + 8 {
                return None;
            }
            let offset = match ChunkPayload::decode(header.ty, &b[hlen..]) {
                Ok(ChunkPayload::OffsetData { offset, .. }) => offset,
                other => panic!("OFFSET_DATA chunk does not parse: {other:?}"),
            };
            Skipped::Data(header, offset, header.len - 8)
        } else {
            let (r, _) = SimpleReply::decode(b).ok()??;
            Skipped::Simple(r.cookie)
        };
        self.skip = Some((skipped, need - b.len()));
        Some(b.len())
    }

    /// Parse the whole messages at the front of `b`; how many bytes they
    /// took.
    fn parse_all(&mut self, b: &[u8], expect: &mut VecDeque<Expect>) -> usize {
        let mut pos = 0;
        while !self.tls_starts
            && self.skip.is_none()
            && let Some(n) = self.parse(&b[pos..], expect)
        {
            pos += n;
            self.at += n as u64;
        }
        pos
    }

    /// TLS failed: nothing more can be read, so nothing more is checked.
    pub fn give_up(&mut self, expect: &mut VecDeque<Expect>) {
        self.stage = Stage::Opaque;
        self.buf.clear();
        self.skip = None;
        expect.clear();
    }

    /// The client has read everything: nothing may be left half-sent.
    pub fn finish(&self, requests: u64) {
        if matches!(self.stage, Stage::Opaque) {
            return;
        }
        assert!(
            self.buf.is_empty() && self.skip.is_none(),
            "{} bytes of output do not form a whole message (in a long READ reply: {:?})",
            self.buf.len(),
            self.skip
        );
        assert_eq!(
            self.finals, requests,
            "final replies differ from requests accepted or rejected"
        );
    }

    /// Parse one message from `b`; its length, or `None` until more is
    /// buffered.
    fn parse(&mut self, b: &[u8], expect: &mut VecDeque<Expect>) -> Option<usize> {
        if let Some((start, mode)) = self.transmission
            && self.at == start
            && !matches!(self.stage, Stage::Transmission(_))
        {
            if self.oldstyle {
                // Oldstyle: the greeting was the whole negotiation.
                assert!(matches!(self.stage, Stage::Options), "no oldstyle greeting");
            }
            self.stage = Stage::Transmission(ReplyDecoder::new(mode, MAX_PAYLOAD));
        }
        match &self.stage {
            Stage::Opaque => None,
            Stage::Greeting => self.greeting(b),
            Stage::Options => self.option_reply(b),
            Stage::Transmission(d) => {
                let d = *d;
                let front = expect.front();
                let read_len = |c: nbd_proto::Cookie| {
                    front
                        .filter(|e| e.cookie == c.0 && e.command == Command::Read)
                        .map(|e| e.len)
                };
                let (reply, n) = match d.decode(b, read_len) {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let need = d.needed(b, read_len);
                        if need < SKIP_MIN {
                            return None;
                        }
                        return self.start_skip(d, b, need);
                    }
                    Err(e) => panic!("reply does not parse: {e:?}"),
                };
                self.check_reply(&reply, d.mode(), 0, expect);
                Some(n)
            }
        }
    }

    fn greeting(&mut self, b: &[u8]) -> Option<usize> {
        let (g, n) = match Greeting::decode(b) {
            Ok(Some(g)) => g,
            Ok(None) => return None,
            Err(e) => panic!("greeting does not parse: {e:?}"),
        };
        assert_eq!(
            matches!(g, Greeting::Oldstyle { .. }),
            self.oldstyle,
            "wrong greeting style: {g:?}"
        );
        self.stage = Stage::Options;
        Some(n)
    }

    /// An option reply, or the EXPORT_NAME reply that ends negotiation.
    fn option_reply(&mut self, b: &[u8]) -> Option<usize> {
        assert!(!self.oldstyle, "oldstyle output after the greeting");
        let magic = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        if magic != OPTION_REPLY_MAGIC {
            // Only the EXPORT_NAME reply is not an option reply; it ends
            // exactly where transmission starts.
            let (start, _) = self
                .transmission
                .unwrap_or_else(|| panic!("negotiation output is not an option reply"));
            let len = start - self.at;
            assert!(len == 10 || len == 134, "EXPORT_NAME reply of {len} bytes");
            let (_, n) = ExportNameReply::decode(b, len == 10)?;
            return Some(n);
        }
        let (h, hlen) = match OptionReplyHeader::decode(b) {
            Ok(Some(h)) => h,
            Ok(None) => return None,
            Err(e) => panic!("option reply header does not parse: {e:?}"),
        };
        let end = hlen + h.len as usize;
        let data = b.get(hlen..end)?;
        match OptReply::decode(h.reply, data) {
            Ok(OptReply::Unknown(t, _)) => panic!("unknown option reply type {t:?}"),
            Ok(_) => {}
            Err(e) => panic!("option reply {h:?} does not parse: {e:?}"),
        }
        let (option, reply) = (u32::from(h.option), u32::from(h.reply));
        if option == OPT_STARTTLS && reply == REP_ACK {
            self.tls_starts = true;
        }
        if option == OPT_SET_META_CONTEXT && reply == REP_META_CONTEXT && data.len() >= 4 {
            let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            self.contexts.push(id);
        }
        Some(end)
    }

    /// One transmission message: it answers the oldest reply queued.
    /// `skipped`: data bytes of an `OFFSET_DATA` chunk that were counted,
    /// not kept (its `data` is then empty).
    fn check_reply(
        &mut self,
        r: &Reply<'_>,
        mode: HeaderMode,
        skipped: u64,
        expect: &mut VecDeque<Expect>,
    ) {
        let e = expect
            .front()
            .unwrap_or_else(|| panic!("a reply nobody is owed: {r:?}"));
        assert_eq!(
            r.cookie().0,
            e.cookie,
            "reply out of order: {r:?}, owed {e:?}"
        );
        match r {
            Reply::Simple { error, .. } => {
                assert!(
                    mode == HeaderMode::Simple || e.command != Command::Read,
                    "simple reply to a READ after structured replies"
                );
                self.reply.error = error.is_some();
                self.reply.simple = true;
            }
            Reply::Chunk { header, payload } => {
                if mode == HeaderMode::Extended {
                    assert_eq!(header.offset, e.offset, "extended chunk offset");
                }
                if matches!(payload, ChunkPayload::None) {
                    assert!(header.flags.contains(ReplyFlags::DONE), "NONE before DONE");
                }
                self.chunk(payload, skipped, e);
            }
        }
        if r.is_final() {
            self.final_reply(e);
            expect.pop_front();
        }
    }

    fn chunk(&mut self, payload: &ChunkPayload<'_>, skipped: u64, e: &Expect) {
        let end = e.offset.saturating_add(e.len);
        let mut content = |start: u64, len: u64| {
            assert_eq!(e.command, Command::Read, "content chunk for {e:?}");
            assert!(len > 0, "empty content chunk");
            assert!(
                start >= e.offset && start.saturating_add(len) <= end,
                "content chunk {start}+{len} outside {e:?}"
            );
            self.reply.content.push((start, start + len));
        };
        match *payload {
            ChunkPayload::None => {}
            ChunkPayload::OffsetData { offset, data } => {
                content(offset, data.len() as u64 + skipped);
            }
            ChunkPayload::OffsetHole { offset, len } => content(offset, u64::from(len)),
            ChunkPayload::BlockStatus { id, extents } => {
                assert_eq!(e.command, Command::BlockStatus, "block status for {e:?}");
                assert!(
                    self.contexts.contains(&id),
                    "context {id} was never announced"
                );
                let mut count = 0;
                for x in extents {
                    assert!(x.len > 0, "empty extent");
                    count += 1;
                }
                assert!(count > 0, "block status without extents");
                if e.flags.contains(CmdFlags::REQ_ONE) {
                    assert_eq!(count, 1, "REQ_ONE answered with {count} extents");
                }
                self.reply.status_chunks += 1;
            }
            ChunkPayload::Error { offset, .. } => {
                if let Some(at) = offset {
                    assert!(at >= e.offset && at < end, "error offset {at} for {e:?}");
                }
                self.reply.error = true;
            }
            ChunkPayload::Unknown(_) => panic!("unknown chunk type"),
        }
    }

    /// The reply to `e` is complete: rejected requests failed; a
    /// successful READ covered its range exactly once (DF: in one chunk);
    /// a successful block status said something.
    fn final_reply(&mut self, e: &Expect) {
        let p = std::mem::take(&mut self.reply);
        self.finals += 1;
        if e.rejected {
            assert!(p.error, "a rejected request succeeded: {e:?}");
        }
        if p.error || p.simple {
            // A simple READ reply's length is the decoder's business; a
            // simple block status reply cannot succeed (nbd-proto rejects
            // BLOCK_STATUS without structured replies).
            assert!(
                p.error || e.command != Command::BlockStatus,
                "block status answered by a simple reply"
            );
            return;
        }
        match e.command {
            Command::Read => {
                if e.flags.contains(CmdFlags::DF) {
                    assert!(
                        p.content.len() <= 1,
                        "DF READ in {} chunks",
                        p.content.len()
                    );
                }
                let mut runs = p.content;
                runs.sort_unstable();
                let mut at = e.offset;
                for (start, end) in runs {
                    assert_eq!(start, at, "READ chunks overlap or leave a gap: {e:?}");
                    at = end;
                }
                assert_eq!(at, e.offset + e.len, "READ chunks do not cover {e:?}");
            }
            Command::BlockStatus => assert!(p.status_chunks > 0, "block status said nothing"),
            _ => assert!(
                p.content.is_empty() && p.status_chunks == 0,
                "content for {e:?}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Long READ replies are counted, not buffered: the checker must still
    //! see each one whole, cut anywhere, and still catch a bad one.
    use super::*;
    use nbd_proto::magic::STRUCTURED_REPLY_MAGIC;

    const LEN: u64 = 100_000;

    fn owed() -> VecDeque<Expect> {
        VecDeque::from([Expect {
            cookie: 7,
            command: Command::Read,
            offset: 4096,
            len: LEN,
            flags: CmdFlags::empty(),
            rejected: false,
        }])
    }

    /// One OFFSET_DATA chunk with DONE, `data` bytes from `offset`.
    fn chunk(offset: u64, data: usize) -> Vec<u8> {
        let mut b = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        b.extend(1u16.to_be_bytes()); // NBD_REPLY_FLAG_DONE
        b.extend(1u16.to_be_bytes()); // NBD_REPLY_TYPE_OFFSET_DATA
        b.extend(7u64.to_be_bytes());
        b.extend((8 + data as u32).to_be_bytes());
        b.extend(offset.to_be_bytes());
        b.resize(b.len() + data, 0xa5);
        b
    }

    fn simple() -> Vec<u8> {
        let mut b = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
        b.extend(0u32.to_be_bytes());
        b.extend(7u64.to_be_bytes());
        b.resize(b.len() + LEN as usize, 0x5a);
        b
    }

    /// Deliver `msg` to a checker in transmission, `cut` bytes at a time.
    fn deliver(msg: &[u8], cut: usize) -> (Checker, VecDeque<Expect>) {
        let mut c = Checker::new(false);
        let simple = msg[..4] == SIMPLE_REPLY_MAGIC.to_be_bytes();
        let mode = if simple {
            HeaderMode::Simple
        } else {
            HeaderMode::Structured
        };
        c.transmission_at(0, mode);
        let mut expect = owed();
        for piece in msg.chunks(cut) {
            assert!(c.receive(piece, &mut expect).is_none());
        }
        (c, expect)
    }

    #[test]
    fn a_long_read_reply_is_checked_whole_however_it_is_cut() {
        for msg in [chunk(4096, LEN as usize), simple()] {
            for cut in [1, 7, 20, 29, 4096, 65536, msg.len()] {
                let (c, expect) = deliver(&msg, cut);
                assert!(expect.is_empty(), "cut {cut}: reply not seen");
                assert!(
                    c.buf.capacity() <= SKIP_MIN.max(cut),
                    "cut {cut}: data buffered"
                );
                assert_eq!(c.at, msg.len() as u64);
                c.finish(1);
            }
        }
    }

    #[test]
    #[should_panic(expected = "do not cover")]
    fn a_long_chunk_short_of_the_request_is_caught() {
        deliver(&chunk(4096, LEN as usize - 1), 1000);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn a_long_chunk_past_the_request_is_caught() {
        deliver(&chunk(4097, LEN as usize), 1000);
    }

    #[test]
    #[should_panic(expected = "do not form a whole message")]
    fn a_long_reply_cut_short_is_caught() {
        let msg = simple();
        let (c, _) = deliver(&msg[..msg.len() - 1], 1000);
        c.finish(1);
    }
}
