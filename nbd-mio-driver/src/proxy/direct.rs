//! The proxy served through the [`nbd_backends::Backend`] trait, for when
//! a filter wraps it: the filter calls its inner backend synchronously on
//! a worker thread, where the event loop's [`super::upstream::Upstream`]
//! cannot reach. The proxy then drives its own negotiated connection,
//! blocking, one request at a time under a mutex: encode, `write_all`,
//! read and decode replies until the final chunk.
//!
//! This path serialises requests (one in flight upstream) where the
//! unfiltered, loop-driven path keeps many in flight; it is correct, and
//! its cost is one upstream round trip per request. The emulation rules
//! match upstream.rs: FLUSH/TRIM/CACHE the upstream lacks are no-ops,
//! WRITE_ZEROES without upstream support becomes WRITEs of zeroes, a
//! FAST_ZERO the upstream cannot honour fails with ENOTSUP before touching
//! data, and `base:allocation` missing upstream reports all data. Being
//! synchronous, this path also splits requests the compact header cannot
//! carry (over 4 GiB) instead of refusing them, and emulates FUA with a
//! FLUSH when the upstream lacks FUA.
//!
//! A transport failure (I/O error, a 60 s read timeout, a reply that
//! breaks the protocol) leaves the stream out of step, so the connection
//! is declared dead, logged once, shut down, and every request after it
//! fails with EIO.

use std::io;
use std::time::Duration;

use nbd_backends::{Extent, ExtentFlags, ZeroFlags};
use nbd_proto::client::{ClientNegotiated, Reply, ReplyDecoder};
use nbd_proto::wire::reply::ChunkPayload;
use nbd_proto::wire::request::{Request, RequestHeader};
use nbd_proto::{CmdFlags, Command, Cookie, ErrorCode, TransmissionFlags};

use super::handshake::Stream;
use super::upstream::{eio, upstream_error};
use super::{MAX_EFFECT, MAX_PAYLOAD, MAX_REPLY};

/// A reply slower than this means a dead or wedged upstream: a worker
/// must not hang on it forever.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Zeroes written per WRITE when the upstream has no WRITE_ZEROES.
const ZERO_CHUNK: usize = 1 << 20;

/// Where a reply's payload goes.
enum Sink<'a> {
    /// Nothing expected.
    None,
    /// READ data for `buf`, which starts at `offset`; `covered` counts the
    /// bytes the chunks filled.
    Read {
        offset: u64,
        buf: &'a mut [u8],
        covered: u64,
    },
    /// `base:allocation` extents into `out`, at most `limit` bytes.
    Extents {
        id: u32,
        out: &'a mut [Extent],
        n: usize,
        total: u64,
        limit: u64,
    },
}

/// One negotiated upstream connection used synchronously.
pub struct Direct {
    stream: Stream,
    neg: ClientNegotiated,
    decoder: ReplyDecoder,
    /// Encoded request (header and WRITE payload), reused.
    out: Vec<u8>,
    /// Bytes read and not yet decoded, reused.
    input: Vec<u8>,
    next_cookie: u64,
    dead: bool,
}

impl Direct {
    /// Wrap a negotiated, blocking `stream`, with [`REPLY_TIMEOUT`] on
    /// reads and writes.
    ///
    /// # Errors
    ///
    /// Setting the timeouts.
    pub fn new(stream: Stream, neg: ClientNegotiated) -> io::Result<Self> {
        stream.set_timeouts(Some(REPLY_TIMEOUT))?;
        Ok(Self {
            stream,
            decoder: ReplyDecoder::new(neg.mode, MAX_REPLY),
            neg,
            out: Vec::new(),
            input: Vec::new(),
            next_cookie: 1,
            dead: false,
        })
    }

    /// Give the socket up (the event loop takes it over).
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    fn has(&self, f: TransmissionFlags) -> bool {
        self.neg.flags.contains(f)
    }

    /// The largest READ/WRITE payload the upstream accepts.
    fn max_io(&self) -> usize {
        let max = self.neg.block_sizes.map_or(MAX_PAYLOAD, |b| b.maximum);
        max.clamp(512, MAX_PAYLOAD) as usize
    }

    /// The connection is unusable: log once, shut it down.
    pub fn die(&mut self, why: &str) {
        if !self.dead {
            self.dead = true;
            log::error!("nbd proxy: upstream connection lost: {why}");
            self.stream.shutdown();
        }
    }

    /// Send one request and wait for its last reply. Transport failures
    /// kill the connection (EIO); an upstream error maps to its errno.
    fn call(
        &mut self,
        command: Command,
        flags: CmdFlags,
        offset: u64,
        len: u64,
        data: &[u8],
        sink: &mut Sink<'_>,
    ) -> io::Result<()> {
        if self.dead {
            return Err(eio());
        }
        match self.exchange(command, flags, offset, len, data, sink) {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(upstream_error(e)),
            Err(why) => {
                self.die(&why);
                Err(eio())
            }
        }
    }

    fn exchange(
        &mut self,
        command: Command,
        flags: CmdFlags,
        offset: u64,
        len: u64,
        data: &[u8],
        sink: &mut Sink<'_>,
    ) -> Result<Option<ErrorCode>, String> {
        let cookie = Cookie(self.next_cookie);
        self.next_cookie = self.next_cookie.wrapping_add(1);
        let req = Request {
            header: RequestHeader {
                flags,
                command,
                cookie,
                offset,
                len,
            },
            data,
        };
        let mode = self.neg.mode;
        self.out.resize(mode.request_header_len() + data.len(), 0);
        let n = req
            .encode(mode, &mut self.out)
            .map_err(|e| format!("encode: {e:?}"))?;
        let frame = self.out.get(..n).unwrap_or_default();
        self.stream
            .io()
            .write_all(frame)
            .map_err(|e| format!("write: {e}"))?;
        let read_len = match sink {
            Sink::Read { buf, .. } => Some(buf.len() as u64),
            _ => None,
        };
        let len_of = |c: Cookie| if c == cookie { read_len } else { None };
        let base = self.neg.base_allocation;
        let mut error = None;
        let mut pos = 0;
        loop {
            let avail = self.input.get(pos..).unwrap_or_default();
            let decoded = self
                .decoder
                .decode(avail, len_of)
                .map_err(|e| format!("bad reply: {e}"))?;
            let Some((reply, used)) = decoded else {
                let need = self.decoder.needed(avail, len_of);
                self.input.drain(..pos);
                pos = 0;
                self.fill(need)?;
                continue;
            };
            if reply.cookie() != cookie {
                return Err(format!("reply for unknown cookie {:#x}", reply.cookie().0));
            }
            let fin = reply.is_final();
            apply(reply, sink, base, &mut error)?;
            pos += used;
            if fin {
                break;
            }
        }
        self.input.drain(..pos);
        if !self.input.is_empty() {
            return Err("reply data with no request outstanding".into());
        }
        Ok(error)
    }

    /// Read until `input` holds at least `need` bytes (at least one more).
    fn fill(&mut self, need: usize) -> Result<(), String> {
        let have = self.input.len();
        let want = need.saturating_sub(have).max(64 * 1024);
        self.input.resize(have + want, 0);
        let r = loop {
            match self.stream.io().read(&mut self.input[have..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r,
            }
        };
        match r {
            Ok(0) => {
                self.input.truncate(have);
                Err("upstream closed the connection".into())
            }
            Ok(got) => {
                self.input.truncate(have + got);
                Ok(())
            }
            Err(e) => {
                self.input.truncate(have);
                Err(format!("read: {e}"))
            }
        }
    }

    /// FUA on a write-like command, or a FLUSH after it when the upstream
    /// has no FUA.
    fn fua(&self, fua: bool) -> (CmdFlags, bool) {
        match (fua, self.has(TransmissionFlags::SEND_FUA)) {
            (true, true) => (CmdFlags::FUA, false),
            (true, false) => (CmdFlags::empty(), true),
            (false, _) => (CmdFlags::empty(), false),
        }
    }

    /// `Backend::read_at`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let max = self.max_io();
        let mut at = offset;
        for part in buf.chunks_mut(max) {
            let len = part.len() as u64;
            let mut sink = Sink::Read {
                offset: at,
                buf: part,
                covered: 0,
            };
            self.call(Command::Read, CmdFlags::empty(), at, len, &[], &mut sink)?;
            if let Sink::Read { covered, .. } = sink
                && covered != len
            {
                log::warn!("nbd proxy: upstream READ reply covered {covered} of {len} bytes");
                return Err(eio());
            }
            at += len;
        }
        Ok(())
    }

    /// `Backend::write_at`.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let (flags, flush_after) = self.fua(fua);
        let mut at = offset;
        for part in data.chunks(self.max_io()) {
            let len = part.len() as u64;
            self.call(Command::Write, flags, at, len, part, &mut Sink::None)?;
            at += len;
        }
        if flush_after { self.flush() } else { Ok(()) }
    }

    /// `Backend::flush`: a no-op when the upstream has no FLUSH (its
    /// writes are already stable).
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.has(TransmissionFlags::SEND_FLUSH) {
            return Ok(());
        }
        let flags = CmdFlags::empty();
        self.call(Command::Flush, flags, 0, 0, &[], &mut Sink::None)
    }

    /// A ranged command without payload, split into 1 GiB requests (the
    /// compact header has 32-bit lengths).
    fn ranged(
        &mut self,
        command: Command,
        flags: CmdFlags,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let end = offset.checked_add(len).ok_or_else(out_of_range)?;
        let mut at = offset;
        while at < end {
            let n = (end - at).min(MAX_EFFECT);
            self.call(command, flags, at, n, &[], &mut Sink::None)?;
            at += n;
        }
        Ok(())
    }

    /// `Backend::trim`: a hint, a no-op when the upstream has no TRIM.
    pub fn trim(&mut self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        if !self.has(TransmissionFlags::SEND_TRIM) {
            return Ok(());
        }
        let (flags, flush_after) = self.fua(fua);
        self.ranged(Command::Trim, flags, offset, len)?;
        if flush_after { self.flush() } else { Ok(()) }
    }

    /// `Backend::cache`: a hint, a no-op when the upstream has no CACHE.
    pub fn cache(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if !self.has(TransmissionFlags::SEND_CACHE) {
            return Ok(());
        }
        self.ranged(Command::Cache, CmdFlags::empty(), offset, len)
    }

    /// `Backend::write_zeroes`.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        let native = self.has(TransmissionFlags::SEND_WRITE_ZEROES);
        if flags.contains(ZeroFlags::FAST)
            && !(native && self.has(TransmissionFlags::SEND_FAST_ZERO))
        {
            // The upstream cannot promise speed: fail before touching data
            // (FAST_ZERO → ENOTSUP, as the unfiltered path does).
            return Err(io::ErrorKind::Unsupported.into());
        }
        let (mut f, flush_after) = self.fua(flags.contains(ZeroFlags::FUA));
        if native {
            if !flags.contains(ZeroFlags::MAY_TRIM) {
                f |= CmdFlags::NO_HOLE;
            }
            if flags.contains(ZeroFlags::FAST) {
                f |= CmdFlags::FAST_ZERO;
            }
            self.ranged(Command::WriteZeroes, f, offset, len)?;
        } else {
            let end = offset.checked_add(len).ok_or_else(out_of_range)?;
            let zeroes = vec![0u8; self.max_io().min(ZERO_CHUNK)];
            let mut at = offset;
            while at < end {
                let n = (end - at).min(zeroes.len() as u64);
                let part = zeroes.get(..n as usize).unwrap_or_default();
                self.call(Command::Write, f, at, n, part, &mut Sink::None)?;
                at += n;
            }
        }
        if flush_after { self.flush() } else { Ok(()) }
    }

    /// `Backend::extents`: `base:allocation` from the upstream, clipped to
    /// the asked range; all data when the upstream has no such context.
    pub fn extents(&mut self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        let size = self.neg.size;
        if offset > size {
            return Err(out_of_range());
        }
        let len = len.min(size - offset);
        if len == 0 || out.is_empty() {
            return Ok(0);
        }
        let Some(id) = self.neg.base_allocation else {
            out[0] = Extent {
                len,
                flags: ExtentFlags::empty(),
            };
            return Ok(1);
        };
        // A shorter answer than asked is legal: ask for at most 1 GiB.
        let limit = len.min(MAX_EFFECT);
        let mut sink = Sink::Extents {
            id,
            out,
            n: 0,
            total: 0,
            limit,
        };
        let flags = CmdFlags::empty();
        self.call(Command::BlockStatus, flags, offset, limit, &[], &mut sink)?;
        match sink {
            Sink::Extents { n, .. } if n > 0 => Ok(n),
            _ => {
                log::warn!("nbd proxy: upstream BLOCK_STATUS reply had no base:allocation extent");
                Err(eio())
            }
        }
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "range beyond the export")
}

/// Apply one reply message to the request's sink; the first error wins.
fn apply(
    reply: Reply<'_>,
    sink: &mut Sink<'_>,
    base: Option<u32>,
    error: &mut Option<ErrorCode>,
) -> Result<(), String> {
    match reply {
        Reply::Simple { error: Some(e), .. } => {
            error.get_or_insert(e);
        }
        Reply::Simple { data, .. } => {
            if let Sink::Read { buf, covered, .. } = sink {
                let dst = buf.get_mut(..data.len()).ok_or("READ reply too long")?;
                dst.copy_from_slice(data);
                *covered += data.len() as u64;
            }
        }
        Reply::Chunk { payload, .. } => match payload {
            ChunkPayload::None => {}
            ChunkPayload::OffsetData { offset, data } => {
                let (dst, covered) = window(sink, offset, data.len())?;
                dst.copy_from_slice(data);
                *covered += data.len() as u64;
            }
            ChunkPayload::OffsetHole { offset, len } => {
                let (dst, covered) = window(sink, offset, len as usize)?;
                dst.fill(0);
                *covered += u64::from(len);
            }
            ChunkPayload::BlockStatus { id, extents } => {
                if let Sink::Extents {
                    id: want,
                    out,
                    n,
                    total,
                    limit,
                } = sink
                    && Some(id) == base
                    && id == *want
                {
                    for e in extents {
                        let Some(slot) = out.get_mut(*n) else { break };
                        if *total >= *limit || e.len == 0 {
                            break;
                        }
                        // The last extent may run past the request: clip.
                        let len = e.len.min(*limit - *total);
                        *slot = Extent {
                            len,
                            flags: ExtentFlags::from_bits_truncate(e.flags as u32),
                        };
                        *n += 1;
                        *total += len;
                    }
                }
            }
            ChunkPayload::Error { error: e, .. } => {
                error.get_or_insert(e);
            }
            ChunkPayload::Unknown(_) => return Err("unknown reply chunk type".into()),
        },
    }
    Ok(())
}

/// The part of a READ's buffer a chunk at absolute `offset` covers.
fn window<'s>(
    sink: &'s mut Sink<'_>,
    offset: u64,
    len: usize,
) -> Result<(&'s mut [u8], &'s mut u64), String> {
    let Sink::Read {
        offset: start,
        buf,
        covered,
    } = sink
    else {
        return Err("data chunk for a request that is not a READ".into());
    };
    let rel = offset
        .checked_sub(*start)
        .and_then(|r| usize::try_from(r).ok())
        .filter(|&r| r.checked_add(len).is_some_and(|e| e <= buf.len()))
        .ok_or("data chunk outside the READ")?;
    let dst = buf
        .get_mut(rel..rel + len)
        .ok_or("data chunk outside the READ")?;
    Ok((dst, covered))
}
