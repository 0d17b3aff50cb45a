//! An in-memory NBD server on nbd-proto's own server state machines,
//! for the client pair tests: a `Vec<u8>` disk, READ replies cut into
//! data and hole chunks at random points and sent in random order, and
//! the chunks of different requests interleaved (all legal, checklist 97).

use nbd_proto::AllocationFlags;
use nbd_proto::server::{
    ExportInfo, Handshake, HandshakeConfig, HandshakeEvent, Incoming, Transmission,
    TransmissionConfig,
};
use nbd_proto::wire::reply::{BlockStatusExtent, ReplyTo};
use nbd_proto::wire::request::Request;
use nbd_proto::{Command, HeaderMode, OptReplyType, TransmissionFlags as TF};

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
    hs: Handshake,
    pub tx: Option<Transmission>,
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
            hs: Handshake::new(HandshakeConfig::default()),
            tx: None,
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
        if self.tx.is_none() {
            self.negotiate(&mut out);
        }
        if self.tx.is_some() {
            let replies = self.transmit();
            out.extend(self.interleave(replies));
        }
        out
    }

    fn negotiate(&mut self, out: &mut Vec<u8>) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            loop {
                let n = self.hs.poll_transmit(&mut buf);
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            if let Some(neg) = self.hs.negotiated() {
                self.tx = Some(Transmission::new(neg, TransmissionConfig::default()));
                return;
            }
            let input = std::mem::take(&mut self.input);
            let (n, ev) = self.hs.handle_input(&input).expect("server handshake");
            let size = self.disk.len() as u64;
            let w = match ev {
                Some(HandshakeEvent::Export(q)) => {
                    let info = ExportInfo {
                        size,
                        flags: FLAGS,
                        name: "mem",
                        description: "",
                        block_sizes: None,
                    };
                    let ans = if q.name().is_empty() || q.name() == "mem" {
                        Ok(info)
                    } else {
                        Err(OptReplyType::ErrUnknown)
                    };
                    self.hs.answer_export(&q, ans, &mut buf).unwrap()
                }
                Some(HandshakeEvent::List) => {
                    let a = self.hs.answer_list_entry("mem", "", &mut buf).unwrap();
                    a + self.hs.finish_list(&mut buf[a..]).unwrap()
                }
                Some(HandshakeEvent::MetaContexts(q)) => self
                    .hs
                    .answer_meta_contexts(&q, &["base:allocation"], &mut buf)
                    .unwrap(),
                Some(_) => panic!("unexpected server event"),
                None => 0,
            };
            out.extend_from_slice(&buf[..w]);
            self.input = input[n..].to_vec();
            if n == 0 && ev.is_none() && !self.hs.wants_write() && self.hs.negotiated().is_none() {
                return;
            }
        }
    }

    /// Execute every whole request buffered; returns each request's reply
    /// as a list of chunks (the last one final).
    fn transmit(&mut self) -> Vec<Vec<Vec<u8>>> {
        let mut replies = Vec::new();
        let mut pos = 0;
        let input = std::mem::take(&mut self.input);
        loop {
            let tx = self.tx.as_mut().unwrap();
            let (n, inc) = tx
                .handle_request(&input[pos..])
                .expect("server transmission");
            pos += n;
            match inc {
                Some(Incoming::Command(req)) => {
                    let r = self.execute(req);
                    replies.push(r);
                }
                Some(Incoming::Reject {
                    to, error, message, ..
                }) => {
                    let mut b = vec![0u8; 4200];
                    let w = tx.reply_error(to, error, message, &mut b).unwrap();
                    replies.push(vec![b[..w].to_vec()]);
                }
                Some(Incoming::Disconnect) => self.disconnected = true,
                None if n == 0 => break,
                None => {}
            }
        }
        self.input = input[pos..].to_vec();
        replies
    }

    fn execute(&mut self, req: Request<'_>) -> Vec<Vec<u8>> {
        let h = req.header;
        let to = ReplyTo {
            cookie: h.cookie,
            offset: h.offset,
        };
        let (off, len) = (h.offset as usize, h.len as usize);
        let tx = self.tx.as_mut().unwrap();
        let mut b = vec![0u8; 64 + len];
        match h.command {
            Command::Read => return self.read(to, off, len),
            Command::Write => self.disk[off..off + len].copy_from_slice(req.data),
            Command::Trim | Command::WriteZeroes => self.disk[off..off + len].fill(0),
            Command::BlockStatus => {
                let zero = self.disk[off..off + len].iter().all(|&x| x == 0);
                let flags = if zero {
                    AllocationFlags::ZERO.bits()
                } else {
                    0
                };
                let first = 1 + self.rng.below(len as u64);
                // The last descriptor may run past the request (note 11).
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
                let w = tx.encode_block_status(to, 1, &e, true, &mut b).unwrap();
                return vec![b[..w].to_vec()];
            }
            _ => {}
        }
        let w = tx.reply_ok(to, &mut b).unwrap();
        vec![b[..w].to_vec()]
    }

    /// A READ: whole in simple mode; else cut at random points into data
    /// and (where zero) hole chunks, shuffled, then a NONE chunk.
    fn read(&mut self, to: ReplyTo, off: usize, len: usize) -> Vec<Vec<u8>> {
        let tx = self.tx.as_mut().unwrap();
        let p = tx.read_prefix_len();
        if tx.mode() == HeaderMode::Simple {
            let mut b = vec![0u8; p + len];
            b[p..].copy_from_slice(&self.disk[off..off + len]);
            tx.encode_read_prefix(to, off as u64, len, true, &mut b)
                .unwrap();
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
            let mut b = vec![0u8; p + piece.len() + 16];
            if piece.iter().all(|&x| x == 0) && self.rng.below(2) == 0 {
                let n = tx
                    .encode_hole(to, at, piece.len() as u32, false, &mut b)
                    .unwrap();
                b.truncate(n);
            } else {
                b[p..p + piece.len()].copy_from_slice(piece);
                tx.encode_read_prefix(to, at, piece.len(), false, &mut b)
                    .unwrap();
                b.truncate(p + piece.len());
            }
            chunks.push(b);
        }
        for i in (1..chunks.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            chunks.swap(i, j);
        }
        let mut b = vec![0u8; 64];
        let n = tx.encode_done(to, &mut b).unwrap();
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
