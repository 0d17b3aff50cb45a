//! The proxy's upstream connection as the event loop sees it: a
//! non-blocking socket registered in the server's `mio::Poll`, an output
//! buffer the dispatcher encodes requests into, and a table of requests in
//! flight keyed by the cookie sent upstream.
//!
//! A client request becomes a pool-style [`Job`] parked here; the upstream
//! cookie is its slot in `pending`, so any number are in flight at once.
//! When the last reply for a cookie arrives the job moves to `done`, and
//! the server hands it to its connection exactly as a finished pool job
//! (`Conn::on_job_done`). Jobs and their buffers come from, and return to,
//! the loop's free list: steady state allocates nothing per request.

use std::io::{self, Read};

use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use nbd_backends::{Extent, ExtentFlags};
use nbd_proto::client::{ClientNegotiated, Reply, ReplyDecoder};
use nbd_proto::wire::reply::ChunkPayload;
use nbd_proto::wire::request::RequestHeader;
use nbd_proto::{CmdFlags, Command, Cookie, ErrorCode, TransmissionFlags};
use slab::Slab;

use super::handshake::Stream;
use crate::buffer::Buf;
use crate::workers::{Job, Op};

/// Initial buffer sizes (they grow to the largest request in flight).
const BUF_INITIAL: usize = 256 * 1024;

enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// One upstream connection driven by the server's loop.
pub struct Upstream {
    sock: Sock,
    neg: ClientNegotiated,
    decoder: ReplyDecoder,
    wbuf: Buf,
    rbuf: Buf,
    /// Requests sent (or queued in `wbuf`), by cookie.
    pending: Slab<Pending>,
    /// Finished jobs for the server to deliver.
    pub done: Vec<Box<Job>>,
    dead: bool,
    /// Identity of the export backend this upstream serves (the data
    /// pointer of its `Arc<dyn Backend>`), for the dispatcher's lookup.
    pub backend_id: usize,
}

struct Pending {
    job: Box<Job>,
    error: Option<ErrorCode>,
}

/// What [`Upstream::submit`] did with a request.
pub enum Submitted {
    /// Sent upstream; the job comes back through `done`.
    Queued,
    /// Answered without the upstream (the job's result says how); the
    /// caller encodes the reply now and recycles the job.
    Now(Box<Job>),
}

impl Upstream {
    /// Make the negotiated `stream` non-blocking and register it.
    ///
    /// # Errors
    ///
    /// Registration errors.
    pub fn new(
        stream: Stream,
        neg: ClientNegotiated,
        max_payload: u64,
        backend_id: usize,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Self> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        let sock = match stream {
            Stream::Tcp(s) => {
                s.set_nonblocking(true)?;
                let mut s = TcpStream::from_std(s);
                registry.register(&mut s, token, interest)?;
                Sock::Tcp(s)
            }
            Stream::Unix(s) => {
                s.set_nonblocking(true)?;
                let mut s = UnixStream::from_std(s);
                registry.register(&mut s, token, interest)?;
                Sock::Unix(s)
            }
        };
        Ok(Self {
            sock,
            decoder: ReplyDecoder::new(neg.mode, max_payload),
            neg,
            wbuf: Buf::with_capacity(BUF_INITIAL),
            rbuf: Buf::with_capacity(BUF_INITIAL),
            pending: Slab::new(),
            done: Vec::new(),
            dead: false,
            backend_id,
        })
    }

    fn has(&self, f: TransmissionFlags) -> bool {
        self.neg.flags.contains(f)
    }

    /// Forward the request `job` describes (`payload` is a WRITE's data).
    pub fn submit(&mut self, mut job: Box<Job>, payload: &[u8]) -> Submitted {
        if self.dead {
            job.result = Err(eio());
            return Submitted::Now(job);
        }
        let fua = if self.has(TransmissionFlags::SEND_FUA) {
            job.flags & CmdFlags::FUA
        } else {
            // Unadvertised: the export does not offer FUA either.
            CmdFlags::empty()
        };
        let compact = self.neg.mode != nbd_proto::HeaderMode::Extended;
        let fits = |len: u64| !compact || u32::try_from(len).is_ok();
        // (command, flags, offset, len, zero payload bytes)
        let (command, flags, offset, len, zeroes) = match job.op {
            Op::Read { offset, len } => {
                job.buf.clear();
                job.buf.resize(len, 0);
                (Command::Read, CmdFlags::empty(), offset, len as u64, 0)
            }
            Op::Write { offset, .. } => (Command::Write, fua, offset, payload.len() as u64, 0),
            Op::Flush if self.has(TransmissionFlags::SEND_FLUSH) => {
                (Command::Flush, CmdFlags::empty(), 0, 0, 0)
            }
            Op::Trim { offset, len, .. }
                if self.has(TransmissionFlags::SEND_TRIM) && len > 0 && fits(len) =>
            {
                (Command::Trim, fua, offset, len, 0)
            }
            Op::Cache { offset, len }
                if self.has(TransmissionFlags::SEND_CACHE) && len > 0 && fits(len) =>
            {
                (Command::Cache, CmdFlags::empty(), offset, len, 0)
            }
            Op::Zero { offset, len, flags } => {
                use nbd_backends::ZeroFlags;
                let fast = flags.contains(ZeroFlags::FAST);
                if fast && !self.has(TransmissionFlags::SEND_FAST_ZERO) {
                    // The upstream cannot promise speed: fail before
                    // touching data (checklist: FAST_ZERO → ENOTSUP).
                    job.result = Err(io::ErrorKind::Unsupported.into());
                    return Submitted::Now(job);
                }
                if len == 0 {
                    job.result = Ok(());
                    return Submitted::Now(job);
                }
                if !fits(len) {
                    job.result = Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
                    return Submitted::Now(job);
                }
                if self.has(TransmissionFlags::SEND_WRITE_ZEROES) {
                    let mut f = fua;
                    if !flags.contains(ZeroFlags::MAY_TRIM) {
                        f |= CmdFlags::NO_HOLE;
                    }
                    if fast {
                        f |= CmdFlags::FAST_ZERO;
                    }
                    (Command::WriteZeroes, f, offset, len, 0)
                } else if len <= super::MAX_PAYLOAD as u64 {
                    // No WRITE_ZEROES upstream: a WRITE of zeroes.
                    (Command::Write, fua, offset, len, len as usize)
                } else {
                    job.result = Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
                    return Submitted::Now(job);
                }
            }
            Op::Extents { offset, len } => {
                job.extents.clear();
                if self.neg.base_allocation.is_none() || len == 0 {
                    // Without `base:allocation` upstream, everything is data.
                    job.extents.push(Extent {
                        len: len.max(1),
                        flags: ExtentFlags::empty(),
                    });
                    job.result = Ok(());
                    return Submitted::Now(job);
                }
                // A shorter answer than asked is legal: clip to 1 GiB.
                (
                    Command::BlockStatus,
                    CmdFlags::empty(),
                    offset,
                    len.min(super::MAX_EFFECT),
                    0,
                )
            }
            Op::Trim { len, .. } | Op::Cache { len, .. } if !fits(len) => {
                job.result = Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
                return Submitted::Now(job);
            }
            // Unsupported upstream: FLUSH/TRIM/CACHE are no-ops (TRIM and
            // CACHE are hints; no FLUSH means writes are already stable).
            Op::Flush | Op::Trim { .. } | Op::Cache { .. } => {
                job.result = Ok(());
                return Submitted::Now(job);
            }
            Op::Resize { .. } => {
                job.result = Err(io::ErrorKind::Unsupported.into());
                return Submitted::Now(job);
            }
        };
        job.result = Ok(());
        let entry = self.pending.vacant_entry();
        let header = RequestHeader {
            flags,
            command,
            cookie: Cookie(entry.key() as u64),
            offset,
            len,
        };
        let hlen = self.neg.mode.request_header_len();
        let data_len = if command == Command::Write {
            len as usize
        } else {
            0
        };
        let spare = self.wbuf.spare(hlen + data_len);
        let Ok(n) = header.encode(self.neg.mode, spare) else {
            job.result = Err(eio());
            return Submitted::Now(job);
        };
        if command == Command::Write {
            let dst = &mut spare[n..n + data_len];
            if zeroes > 0 {
                dst.fill(0);
            } else {
                dst.copy_from_slice(payload);
            }
        }
        self.wbuf.commit(n + data_len);
        entry.insert(Pending { job, error: None });
        Submitted::Queued
    }

    /// Write queued requests until the socket would block. A failure kills
    /// the upstream.
    pub fn on_writable(&mut self) {
        if self.dead {
            return;
        }
        let r = match &mut self.sock {
            Sock::Tcp(s) => self.wbuf.write_to(s),
            Sock::Unix(s) => self.wbuf.write_to(s),
        };
        if let Err(e) = r {
            self.die(&format!("write: {e}"));
        }
    }

    /// Read and decode replies until the socket would block.
    pub fn on_readable(&mut self) {
        while !self.dead {
            let r = match &mut self.sock {
                Sock::Tcp(s) => read_some(s, &mut self.rbuf),
                Sock::Unix(s) => read_some(s, &mut self.rbuf),
            };
            match r {
                Ok(true) => {
                    if let Err(why) = self.decode() {
                        self.die(&why);
                    }
                }
                Ok(false) => return,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.die("upstream closed the connection")
                }
                Err(e) => self.die(&format!("read: {e}")),
            }
        }
    }

    /// True while requests wait to be written.
    pub fn wants_write(&self) -> bool {
        !self.dead && !self.wbuf.is_empty()
    }

    /// The upstream is gone: log once, fail everything in flight with EIO.
    fn die(&mut self, why: &str) {
        if self.dead {
            return;
        }
        self.dead = true;
        log::error!("nbd proxy: upstream connection lost: {why}");
        for mut p in self.pending.drain() {
            p.job.result = Err(eio());
            self.done.push(p.job);
        }
        self.wbuf.consume(self.wbuf.len());
    }

    /// Handle every whole reply message buffered.
    fn decode(&mut self) -> Result<(), String> {
        let mut pos = 0;
        loop {
            let pending = &self.pending;
            let read_len = |c: Cookie| match pending.get(c.0 as usize)?.job.op {
                Op::Read { len, .. } => Some(len as u64),
                _ => None,
            };
            let input = self.rbuf.filled().get(pos..).unwrap_or_default();
            let Some((reply, used)) = self
                .decoder
                .decode(input, read_len)
                .map_err(|e| format!("bad reply: {e}"))?
            else {
                break;
            };
            pos += used;
            let base = self.neg.base_allocation;
            if let Some(key) = on_reply(&mut self.pending, reply, base)? {
                let mut p = self.pending.remove(key);
                if let Some(e) = p.error {
                    p.job.result = Err(upstream_error(e));
                }
                self.done.push(p.job);
            }
        }
        self.rbuf.consume(pos);
        Ok(())
    }

    /// Best effort at shutdown: `NBD_CMD_DISC` so the upstream sees an
    /// orderly close.
    pub fn disconnect(&mut self) {
        if self.dead {
            return;
        }
        let header = RequestHeader {
            flags: CmdFlags::empty(),
            command: Command::Disc,
            cookie: Cookie(u64::MAX),
            offset: 0,
            len: 0,
        };
        let hlen = self.neg.mode.request_header_len();
        if let Ok(n) = header.encode(self.neg.mode, self.wbuf.spare(hlen)) {
            self.wbuf.commit(n);
        }
        self.on_writable();
    }

    /// Deregister the socket.
    pub fn deregister(&mut self, registry: &Registry) {
        let _ = match &mut self.sock {
            Sock::Tcp(s) => registry.deregister(s),
            Sock::Unix(s) => registry.deregister(s),
        };
    }
}

/// One read into `buf`: Ok(true) when bytes arrived, Ok(false) on
/// `WouldBlock`, `UnexpectedEof` when the upstream closed.
fn read_some(r: &mut impl Read, buf: &mut Buf) -> io::Result<bool> {
    loop {
        match r.read(buf.spare(64 * 1024)) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf.commit(n);
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Apply one reply message to its request; returns its slot when final.
fn on_reply(
    pending: &mut Slab<Pending>,
    reply: Reply<'_>,
    base: Option<u32>,
) -> Result<Option<usize>, String> {
    let key = usize::try_from(reply.cookie().0).map_err(|_| "bad cookie")?;
    let fin = reply.is_final();
    let p = pending
        .get_mut(key)
        .ok_or_else(|| format!("reply for unknown cookie {key:#x}"))?;
    match reply {
        Reply::Simple { error, data, .. } => match error {
            Some(e) => p.error = Some(e),
            None => {
                if let Some(dst) = p.job.buf.get_mut(..data.len()) {
                    dst.copy_from_slice(data);
                }
            }
        },
        Reply::Chunk { payload, .. } => match payload {
            ChunkPayload::None => {}
            ChunkPayload::OffsetData { offset, data } => {
                let r = window(&p.job, offset, data.len())?;
                if let Some(dst) = p.job.buf.get_mut(r) {
                    dst.copy_from_slice(data);
                }
            }
            ChunkPayload::OffsetHole { offset, len } => {
                let r = window(&p.job, offset, len as usize)?;
                if let Some(dst) = p.job.buf.get_mut(r) {
                    dst.fill(0);
                }
            }
            ChunkPayload::BlockStatus { id, extents } => {
                if Some(id) == base && matches!(p.job.op, Op::Extents { .. }) {
                    p.job.extents.extend(extents.map(|e| Extent {
                        len: e.len,
                        flags: ExtentFlags::from_bits_truncate(e.flags as u32),
                    }));
                }
            }
            ChunkPayload::Error { error, .. } => {
                p.error.get_or_insert(error);
            }
            ChunkPayload::Unknown(_) => return Err("unknown reply chunk type".into()),
        },
    }
    Ok(fin.then_some(key))
}

/// The part of a READ's buffer a chunk at absolute `offset` covers.
fn window(job: &Job, offset: u64, len: usize) -> Result<std::ops::Range<usize>, String> {
    let Op::Read {
        offset: start,
        len: total,
    } = job.op
    else {
        return Err("data chunk for a request that is not a READ".into());
    };
    let rel = offset
        .checked_sub(start)
        .and_then(|r| usize::try_from(r).ok())
        .filter(|&r| r.checked_add(len).is_some_and(|e| e <= total))
        .ok_or("data chunk outside the READ")?;
    Ok(rel..rel + len)
}

/// The upstream error as the errno the driver maps back to the same NBD
/// error (errno.rs): NBD error values are Linux errno numbers.
pub fn upstream_error(e: ErrorCode) -> io::Error {
    let raw = match e {
        ErrorCode::Perm => libc::EPERM,
        ErrorCode::NoMem => libc::ENOMEM,
        ErrorCode::Inval => libc::EINVAL,
        ErrorCode::NoSpc => libc::ENOSPC,
        ErrorCode::Overflow => libc::EOVERFLOW,
        ErrorCode::Shutdown => libc::ESHUTDOWN,
        ErrorCode::NotSup => return io::ErrorKind::Unsupported.into(),
        ErrorCode::Io | ErrorCode::Unknown(_) => libc::EIO,
    };
    io::Error::from_raw_os_error(raw)
}

/// EIO: the upstream connection is gone.
pub fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}
