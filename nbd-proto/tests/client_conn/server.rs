//! An in-memory NBD server on nbd-proto's own server state machines,
//! for the client pair tests: a `Vec<u8>` disk, READ replies cut into
//! data and hole chunks at random points and sent in random order, and
//! the chunks of different requests interleaved (all legal, checklist 97).

use nbd_proto::AllocationFlags;
use nbd_proto::server::{Connection, ConnectionConfig, ExportInfo, Input, Op, Pending};
use nbd_proto::wire::reply::BlockStatusExtent;
use nbd_proto::{HeaderMode, OptReplyType, TransmissionFlags as TF};

/// A small deterministic generator.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

pub struct MemServer {
    conn: Connection,
    pub disk: Vec<u8>,
    input: Vec<u8>,
    rng: Lcg,
    pub disconnected: bool,
}

pub const FLAGS: TF = TF::SEND_FLUSH
    .union(TF::SEND_FUA)
    .union(TF::SEND_TRIM)
    .union(TF::SEND_WRITE_ZEROES)
    .union(TF::SEND_CACHE);

impl MemServer {
    pub fn new(size: usize, seed: u64) -> Self {
        Self {
            conn: Connection::new(&ConnectionConfig::default()),
            disk: vec![0; size],
            input: Vec::new(),
            rng: Lcg(seed),
            disconnected: false,
        }
    }

    /// Take client bytes; return every server byte they cause.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.input.extend_from_slice(bytes);
        let mut out = Vec::new();
        if self.conn.negotiated().is_none() {
            self.negotiate(&mut out);
        }
        if self.conn.negotiated().is_some() {
            let replies = self.transmit();
            out.extend(self.interleave(replies));
        }
        out
    }

    fn negotiate(&mut self, out: &mut Vec<u8>) {
        let mut buf = vec![0u8; 16 * 1024];
        while self.conn.negotiated().is_none() {
            loop {
                let n = self.conn.poll_transmit(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            let input = std::mem::take(&mut self.input);
            let (n, next) = self.conn.handle_input(&input).expect("server handshake");
            let size = self.disk.len() as u64;
            let c = &mut self.conn;
            let stalled = matches!(next, Input::NeedInput | Input::Blocked | Input::Closed);
            let w = match next {
                Input::Export(q) => {
                    let info = ExportInfo {
                        size,
                        flags: FLAGS,
                        name: "mem",
                        description: "",
                        block_sizes: None,
                        meta_contexts: 1,
                    };
                    let ans = if c.asked_name().is_empty() || c.asked_name() == "mem" {
                        Ok(info)
                    } else {
                        Err(OptReplyType::ErrUnknown)
                    };
                    c.answer_export(q, ans, &mut buf).unwrap()
                }
                Input::List(q) => {
                    let a = c.list_entry(&q, "mem", "", &mut buf).unwrap();
                    a + c.finish_list(q, &mut buf[a..]).unwrap()
                }
                Input::MetaContexts(q) => c.answer_meta_contexts(q, Ok(1), &mut buf).unwrap(),
                Input::Continue | Input::NeedInput | Input::Blocked => 0,
                other => panic!("unexpected server input {other:?}"),
            };
            out.extend_from_slice(&buf[..w]);
            self.input = input[n..].to_vec();
            if stalled {
                return;
            }
        }
        loop {
            let n = self.conn.poll_transmit(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// Execute every whole request buffered; returns each request's reply
    /// as a list of chunks (the last one final).
    fn transmit(&mut self) -> Vec<Vec<Vec<u8>>> {
        let mut replies = Vec::new();
        let mut pos = 0;
        let input = std::mem::take(&mut self.input);
        loop {
            let (n, next) = self
                .conn
                .handle_input(&input[pos..])
                .expect("server transmission");
            pos += n;
            match next {
                Input::Request { op, reply } => {
                    let r = self.execute(op, reply);
                    replies.push(r);
                }
                Input::Reject {
                    reply,
                    error,
                    message,
                } => {
                    let mut b = vec![0u8; 4200];
                    let w = self
                        .conn
                        .reply_error(reply, error, message, &mut b)
                        .unwrap();
                    replies.push(vec![b[..w].to_vec()]);
                }
                Input::Disconnect => self.disconnected = true,
                Input::Continue => {}
                _ => break,
            }
        }
        self.input = input[pos..].to_vec();
        replies
    }

    fn execute(&mut self, op: Op<'_>, p: Pending) -> Vec<Vec<u8>> {
        let (off, len) = (p.offset() as usize, p.len() as usize);
        let mut b = vec![0u8; 64 + len];
        match op {
            Op::Read { .. } => return self.read(p, off, len),
            Op::Write { data, .. } => self.disk[off..off + len].copy_from_slice(data),
            Op::Trim { .. } | Op::WriteZeroes { .. } => self.disk[off..off + len].fill(0),
            Op::BlockStatus { .. } => {
                let zero = self.disk[off..off + len].iter().all(|&x| x == 0);
                let flags = if zero {
                    AllocationFlags::ZERO.bits()
                } else {
                    0
                };
                let first = 1 + self.rng.below(len as u64);
                // Runs past the request are clipped by the server side.
                let e = [
                    BlockStatusExtent {
                        len: first,
                        flags: u64::from(flags),
                    },
                    BlockStatusExtent {
                        len: len as u64 - first + 4096,
                        flags: u64::from(flags),
                    },
                ];
                let w = self.conn.reply_block_status(p, 1, &e, &mut b).unwrap();
                return vec![b[..w].to_vec()];
            }
            _ => {}
        }
        let w = self.conn.reply_ok(p, &mut b).unwrap();
        vec![b[..w].to_vec()]
    }

    /// A READ: whole in simple mode; else cut at random points into data
    /// and (where zero) hole chunks, shuffled, then a NONE chunk.
    fn read(&mut self, p: Pending, off: usize, len: usize) -> Vec<Vec<u8>> {
        let c = &mut self.conn;
        let pre = c.read_prefix_len();
        if c.negotiated().unwrap().mode == HeaderMode::Simple {
            let mut b = vec![0u8; pre + len];
            b[pre..].copy_from_slice(&self.disk[off..off + len]);
            c.reply_read(p, &mut b).unwrap();
            return vec![b];
        }
        let mut cuts = vec![0, len];
        for _ in 0..self.rng.below(4) {
            cuts.push(self.rng.below(len as u64) as usize);
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut chunks = Vec::new();
        for w in cuts.windows(2) {
            let (a, z) = (w[0], w[1]);
            let piece = &self.disk[off + a..off + z];
            let at = (off + a) as u64;
            let mut b = vec![0u8; pre + piece.len() + 16];
            if piece.iter().all(|&x| x == 0) && self.rng.below(2) == 0 {
                let n = c.read_hole(&p, at, piece.len() as u32, &mut b).unwrap();
                b.truncate(n);
            } else {
                b[pre..pre + piece.len()].copy_from_slice(piece);
                c.read_chunk(&p, at, piece.len(), &mut b).unwrap();
                b.truncate(pre + piece.len());
            }
            chunks.push(b);
        }
        for i in (1..chunks.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            chunks.swap(i, j);
        }
        let mut b = vec![0u8; 64];
        let n = c.reply_done(p, &mut b).unwrap();
        chunks.push(b[..n].to_vec());
        chunks
    }

    /// Interleave the chunks of different replies, keeping each reply's
    /// own order (its final chunk last).
    fn interleave(&mut self, mut replies: Vec<Vec<Vec<u8>>>) -> Vec<u8> {
        for r in &mut replies {
            r.reverse();
        }
        let mut out = Vec::new();
        while !replies.is_empty() {
            let i = self.rng.below(replies.len() as u64) as usize;
            out.extend(replies[i].pop().unwrap());
            if replies[i].is_empty() {
                replies.swap_remove(i);
            }
        }
        out
    }
}
