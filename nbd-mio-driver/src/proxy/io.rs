//! The proxy's I/O thread: owns the one upstream connection, writes the
//! requests workers submit, and matches replies to them by cookie, so any
//! number of requests are in flight upstream at once.
//!
//! Workers never touch the socket: they encode a request, send it here
//! with a completion channel, wake this thread and block on their own
//! completion. If the upstream dies every outstanding and later request
//! fails with EIO (there is no reconnect).

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use mio::net::{TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use nbd_backends::{Extent, ExtentFlags};
use nbd_proto::client::{Reply, ReplyDecoder};
use nbd_proto::types::ErrorCode;
use nbd_proto::wire::reply::ChunkPayload;

use super::handshake::Stream;

const SOCKET: Token = Token(0);
/// The token of the waker workers use after submitting.
pub const WAKE: Token = Token(1);
/// Bytes read from the socket per call.
const READ_CHUNK: usize = 256 * 1024;

/// What a request expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// READ of `len` bytes at `offset`: data (simple or chunked).
    Read {
        /// Request offset (chunk offsets are absolute).
        offset: u64,
        /// Request length.
        len: u32,
    },
    /// BLOCK_STATUS: extents of the `base:allocation` context.
    Status,
    /// Anything else: success or an error.
    Other,
}

/// A completed request's result.
pub enum Done {
    /// READ data, exactly the requested length.
    Data(Vec<u8>),
    /// BLOCK_STATUS extents, as the upstream sent them.
    Extents(Vec<Extent>),
    /// Success without data.
    Ok,
}

/// The reply channel of one request.
pub type Completion = SyncSender<io::Result<Done>>;

/// A message to the I/O thread.
pub enum Msg {
    /// Send `frame` (an encoded request with cookie `cookie`) and complete
    /// `done` when its last reply arrives.
    Submit {
        /// The request's cookie.
        cookie: u64,
        /// Header and payload, encoded.
        frame: Vec<u8>,
        /// How to interpret replies.
        kind: Kind,
        /// Where the result goes.
        done: Completion,
    },
    /// The backend is being dropped: send NBD_CMD_DISC and stop.
    Close(Vec<u8>),
}

struct Pending {
    kind: Kind,
    data: Vec<u8>,
    extents: Vec<Extent>,
    error: Option<ErrorCode>,
    done: Completion,
}

enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn io(&mut self) -> &mut dyn RW {
        match self {
            Self::Tcp(s) => s,
            Self::Unix(s) => s,
        }
    }
}

trait RW: Read + Write {}
impl<T: Read + Write> RW for T {}

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
        // The backend contract spells "not supported" (e.g. a FAST_ZERO
        // that would be slow) as ErrorKind::Unsupported.
        ErrorCode::NotSup => {
            return io::Error::new(ErrorKind::Unsupported, "upstream: operation not supported");
        }
        ErrorCode::Io | ErrorCode::Unknown(_) => libc::EIO,
    };
    io::Error::from_raw_os_error(raw)
}

/// EIO: the upstream connection is gone.
pub fn dead() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// The I/O thread's state.
pub struct IoThread {
    poll: Poll,
    sock: Sock,
    rx: Receiver<Msg>,
    decoder: ReplyDecoder,
    base_allocation: Option<u32>,
    pending: HashMap<u64, Pending>,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
}

impl IoThread {
    /// Make `stream` non-blocking and register it; returns the thread's
    /// state and the waker submitters must call.
    ///
    /// # Errors
    ///
    /// If the poller cannot be created.
    pub fn new(
        stream: Stream,
        rx: Receiver<Msg>,
        decoder: ReplyDecoder,
        base_allocation: Option<u32>,
    ) -> io::Result<(Self, Arc<Waker>)> {
        let poll = Poll::new()?;
        let mut sock = match stream {
            Stream::Tcp(s) => {
                s.set_nonblocking(true)?;
                Sock::Tcp(TcpStream::from_std(s))
            }
            Stream::Unix(s) => {
                s.set_nonblocking(true)?;
                Sock::Unix(UnixStream::from_std(s))
            }
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        match &mut sock {
            Sock::Tcp(s) => poll.registry().register(s, SOCKET, interest)?,
            Sock::Unix(s) => poll.registry().register(s, SOCKET, interest)?,
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        Ok((
            Self {
                poll,
                sock,
                rx,
                decoder,
                base_allocation,
                pending: HashMap::new(),
                wbuf: Vec::new(),
                wpos: 0,
                rbuf: Vec::new(),
            },
            waker,
        ))
    }

    /// Serve until the backend closes or the upstream dies.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(16);
        let why = loop {
            // mio is edge-triggered: every pass drains the channel, writes
            // until WouldBlock and reads until WouldBlock, whatever woke it.
            if let Err(e) = self.poll.poll(&mut events, None)
                && e.kind() != ErrorKind::Interrupted
            {
                break e.to_string();
            }
            match self.step() {
                Ok(true) => {}
                Ok(false) => return,
                Err(why) => break why,
            }
        };
        log::error!("nbd proxy: upstream connection lost: {why}");
        for (_, p) in self.pending.drain() {
            let _ = p.done.send(Err(dead()));
        }
        // Dropping `rx` makes later submissions fail at once.
    }

    /// One pass; `Ok(false)` after a clean close.
    fn step(&mut self) -> Result<bool, String> {
        let mut open = true;
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Submit {
                    cookie,
                    frame,
                    kind,
                    done,
                }) => {
                    let data = match kind {
                        Kind::Read { len, .. } => vec![0; len as usize],
                        _ => Vec::new(),
                    };
                    self.pending.insert(
                        cookie,
                        Pending {
                            kind,
                            data,
                            extents: Vec::new(),
                            error: None,
                            done,
                        },
                    );
                    self.wbuf.extend_from_slice(&frame);
                }
                Ok(Msg::Close(disc)) => {
                    self.wbuf.extend_from_slice(&disc);
                    open = false;
                    break;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        self.write().map_err(|e| format!("write: {e}"))?;
        if !open {
            return Ok(false);
        }
        self.read()?;
        Ok(true)
    }

    fn write(&mut self) -> io::Result<()> {
        while let Some(rest) = self.wbuf.get(self.wpos..).filter(|r| !r.is_empty()) {
            match self.sock.io().write(rest) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        Ok(())
    }

    fn read(&mut self) -> Result<(), String> {
        loop {
            let old = self.rbuf.len();
            self.rbuf.resize(old + READ_CHUNK, 0);
            let r = self
                .sock
                .io()
                .read(self.rbuf.get_mut(old..).unwrap_or_default());
            match r {
                Ok(0) => {
                    self.rbuf.truncate(old);
                    return Err("upstream closed the connection".into());
                }
                Ok(n) => {
                    self.rbuf.truncate(old + n);
                    self.decode()?;
                }
                Err(e) => {
                    self.rbuf.truncate(old);
                    match e.kind() {
                        ErrorKind::WouldBlock => return Ok(()),
                        ErrorKind::Interrupted => {}
                        _ => return Err(format!("read: {e}")),
                    }
                }
            }
        }
    }

    /// Handle every whole reply message in `rbuf`.
    fn decode(&mut self) -> Result<(), String> {
        let mut pos = 0;
        loop {
            let pending = &self.pending;
            let read_len = |c: nbd_proto::types::Cookie| match pending.get(&c.0)?.kind {
                Kind::Read { len, .. } => Some(u64::from(len)),
                _ => None,
            };
            let input = self.rbuf.get(pos..).unwrap_or_default();
            let Some((reply, used)) = self
                .decoder
                .decode(input, read_len)
                .map_err(|e| format!("bad reply: {e}"))?
            else {
                break;
            };
            pos += used;
            on_reply(&mut self.pending, reply, self.base_allocation)?;
        }
        self.rbuf.drain(..pos);
        Ok(())
    }
}

/// Apply one reply message to its request; complete it when final.
fn on_reply(
    pending: &mut HashMap<u64, Pending>,
    reply: Reply<'_>,
    base: Option<u32>,
) -> Result<(), String> {
    let cookie = reply.cookie().0;
    let fin = reply.is_final();
    let p = pending
        .get_mut(&cookie)
        .ok_or_else(|| format!("reply for unknown cookie {cookie:#x}"))?;
    // The slice of the read buffer a chunk at absolute `offset` covers.
    let window =
        |p: &mut Pending, offset: u64, len: usize| -> Result<std::ops::Range<usize>, String> {
            let Kind::Read {
                offset: start,
                len: total,
            } = p.kind
            else {
                return Err("data chunk for a request that is not a READ".into());
            };
            let rel = offset
                .checked_sub(start)
                .and_then(|r| usize::try_from(r).ok())
                .filter(|&r| r.checked_add(len).is_some_and(|e| e <= total as usize))
                .ok_or("data chunk outside the READ")?;
            Ok(rel..rel + len)
        };
    match reply {
        Reply::Simple { error, data, .. } => match error {
            Some(e) => p.error = Some(e),
            None => {
                if let Some(dst) = p.data.get_mut(..data.len()) {
                    dst.copy_from_slice(data);
                }
            }
        },
        Reply::Chunk { payload, .. } => match payload {
            ChunkPayload::None => {}
            ChunkPayload::OffsetData { offset, data } => {
                let r = window(p, offset, data.len())?;
                if let Some(dst) = p.data.get_mut(r) {
                    dst.copy_from_slice(data);
                }
            }
            ChunkPayload::OffsetHole { offset, len } => {
                let r = window(p, offset, len as usize)?;
                if let Some(dst) = p.data.get_mut(r) {
                    dst.fill(0);
                }
            }
            ChunkPayload::BlockStatus { id, extents } => {
                if Some(id) == base && p.kind == Kind::Status {
                    p.extents.extend(extents.map(|e| Extent {
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
    if fin && let Some(p) = pending.remove(&cookie) {
        let result = match (p.error, p.kind) {
            (Some(e), _) => Err(upstream_error(e)),
            (None, Kind::Read { .. }) => Ok(Done::Data(p.data)),
            (None, Kind::Status) => Ok(Done::Extents(p.extents)),
            (None, Kind::Other) => Ok(Done::Ok),
        };
        // The worker may have gone away (it never does: it blocks on this).
        let _ = p.done.send(result);
    }
    Ok(())
}
