//! The proxy served through the [`nbd_backends::Backend`] trait, for when
//! a filter wraps it: the filter calls its inner backend synchronously on
//! a worker thread, where the event loop's [`super::upstream::Upstream`]
//! cannot reach. The proxy then drives its own connection, blocking, one
//! command at a time under a mutex, with the same op → command mapping as
//! the loop path ([`super::plan`]) and nbd-proto's `client::Connection`
//! for the protocol.
//!
//! A transport failure (I/O error, a 60 s read timeout, a reply that
//! breaks the protocol) leaves the stream out of step: the connection is
//! declared dead, logged once, shut down, and the request fails with EIO
//! (a READ, BLOCK_STATUS or CACHE is sent once more on a new connection
//! when `retry` allows waiting). With reconnect information, the next
//! request reconnects (backoff 100 ms doubling to 2 s between attempts;
//! it waits up to `retry` for the upstream to come back); without, every
//! request after it fails with EIO.

use std::io;
use std::time::{Duration, Instant};

use nbd_backends::{Extent, ExtentFlags, ZeroFlags};
use nbd_proto::client::{ClientNegotiated, Cmd, Connection, Event, ReplyError};
use nbd_proto::wire::reply::BlockStatusExtent;

use super::MAX_REPLY;
use super::handshake::{Stream, check_same, open_peer};
use super::link::Backoff;
use super::plan::{Piece, PieceData, Pieces, Plan, ZEROES, plan};
use super::upstream::{Reconnect, eio, upstream_error};
use crate::workers::Op;

/// A reply slower than this means a dead or wedged upstream: a worker
/// must not hang on it forever.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a request's reply goes.
enum Sink<'a> {
    None,
    /// READ data for `buf`, which starts at the READ's offset `start`.
    Read {
        start: u64,
        buf: &'a mut [u8],
    },
    /// `base:allocation` extents into `out` (`n` so far).
    Extents {
        out: &'a mut [Extent],
        n: usize,
    },
}

/// One negotiated upstream connection used synchronously.
pub struct Direct {
    stream: Option<Stream>,
    conn: Connection<1>,
    first: ClientNegotiated,
    /// Bytes read and not yet decoded, reused.
    input: Vec<u8>,
    /// Encoded request, reused.
    out: Vec<u8>,
    scratch: Vec<BlockStatusExtent>,
    reconnect: Option<Reconnect>,
    backoff: Backoff,
    /// Ever connected: a lazy handle's first connection is not a
    /// restoration, and its failure to connect is logged once, as a lost
    /// connection is.
    connected: bool,
    failure_logged: bool,
}

impl Direct {
    /// Wrap a negotiated, blocking `stream`, with [`REPLY_TIMEOUT`] on
    /// reads and writes. It never reconnects unless given
    /// [`Direct::with_reconnect`].
    ///
    /// # Errors
    ///
    /// Setting the timeouts.
    pub fn new(stream: Stream, neg: ClientNegotiated) -> io::Result<Self> {
        stream.set_timeouts(Some(REPLY_TIMEOUT))?;
        Ok(Self {
            stream: Some(stream),
            conn: Self::connection(neg),
            first: neg,
            input: Vec::new(),
            out: Vec::new(),
            scratch: vec![BlockStatusExtent { len: 0, flags: 0 }; 1024],
            reconnect: None,
            backoff: Backoff::new(Instant::now()),
            connected: true,
            failure_logged: false,
        })
    }

    /// A connection made at the first request (a per-client handle under
    /// a filter): nothing is connected until then.
    #[must_use]
    pub fn lazy(neg: ClientNegotiated, r: Reconnect) -> Self {
        Self {
            stream: None,
            conn: Self::connection(neg),
            first: neg,
            input: Vec::new(),
            out: Vec::new(),
            scratch: vec![BlockStatusExtent { len: 0, flags: 0 }; 1024],
            reconnect: Some(r),
            backoff: Backoff::new(Instant::now()),
            connected: false,
            failure_logged: false,
        }
    }

    /// End the connection politely (`NBD_CMD_DISC`), best effort.
    pub fn close(&mut self) {
        let mut frame = [0u8; 32];
        if let (Some(s), Ok(sent)) = (
            self.stream.as_mut(),
            self.conn.encode_request(&Cmd::disconnect(), &mut frame),
        ) {
            let _ = s.io().write_all(frame.get(..sent.len).unwrap_or_default());
            s.shutdown();
        }
        self.stream = None;
    }

    fn connection(neg: ClientNegotiated) -> Connection<1> {
        let mut c = Connection::from_negotiated(neg);
        c.set_max_chunk_len(u32::try_from(MAX_REPLY).unwrap_or(u32::MAX));
        c
    }

    /// Reconnect to `r` when the connection is lost.
    #[must_use]
    pub fn with_reconnect(mut self, r: Reconnect) -> Self {
        self.reconnect = Some(r);
        self
    }

    /// Give the socket up (the event loop takes it over); `None` when the
    /// connection is dead.
    pub fn into_stream(self) -> Option<Stream> {
        self.stream
    }

    /// The connection is unusable: log, shut it down.
    pub fn die(&mut self, why: &str) {
        if let Some(s) = self.stream.take() {
            log::error!("nbd proxy: upstream connection lost: {why}");
            s.shutdown();
            self.backoff.failed(Instant::now());
        }
    }

    /// A live connection: the current one, or a new one when reconnecting
    /// is configured (waiting up to `retry` for the upstream).
    fn ensure(&mut self) -> io::Result<()> {
        if self.stream.is_some() {
            return Ok(());
        }
        let Some(r) = self.reconnect.clone() else {
            return Err(eio());
        };
        let deadline = Instant::now() + r.retry;
        loop {
            let now = Instant::now();
            if self.backoff.due(now) {
                let timeout = REPLY_TIMEOUT.min(Duration::from_secs(10));
                let opened = open_peer(&r.peer, &r.export, timeout).and_then(|o| {
                    check_same(&self.first, &o.negotiated).map_err(io::Error::other)?;
                    o.stream.set_timeouts(Some(REPLY_TIMEOUT))?;
                    Ok(o)
                });
                match opened {
                    Ok(o) => {
                        if self.connected {
                            log::warn!("nbd proxy: upstream connection restored");
                        } else {
                            log::debug!("nbd proxy: connected to the upstream");
                        }
                        self.connected = true;
                        self.conn = Self::connection(o.negotiated);
                        self.stream = Some(o.stream);
                        self.input.clear();
                        self.backoff.reset(now);
                        return Ok(());
                    }
                    Err(e) => {
                        if !self.connected && !self.failure_logged {
                            log::error!("nbd proxy: upstream connection lost: {e}");
                            self.failure_logged = true;
                        } else {
                            log::debug!("nbd proxy: reconnect failed: {e}");
                        }
                        self.backoff.failed(now);
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(eio());
            }
            std::thread::sleep(
                self.backoff
                    .next()
                    .min(deadline)
                    .saturating_duration_since(now),
            );
        }
    }

    fn negotiated(&self) -> ClientNegotiated {
        self.conn.negotiated().copied().unwrap_or(self.first)
    }

    /// Run `op` (a WRITE with `payload`), replies into `sink`. A lost
    /// connection fails it with EIO, or resends an idempotent one once.
    fn run(&mut self, op: Op, payload: &[u8], sink: &mut Sink<'_>) -> io::Result<()> {
        let resend = matches!(op, Op::Read { .. } | Op::Extents { .. } | Op::Cache { .. })
            && self.reconnect.as_ref().is_some_and(|r| !r.retry.is_zero());
        for attempt in 0..2 {
            self.ensure()?;
            match self.run_once(&op, payload, sink) {
                Err(Lost) if resend && attempt == 0 => {
                    if let Sink::Extents { n, .. } = sink {
                        *n = 0;
                    }
                }
                Err(Lost) => return Err(eio()),
                Ok(r) => return r,
            }
        }
        Err(eio())
    }

    fn run_once(
        &mut self,
        op: &Op,
        payload: &[u8],
        sink: &mut Sink<'_>,
    ) -> Result<io::Result<()>, Lost> {
        let pieces = match plan(op, payload.len(), &self.negotiated()) {
            Plan::Now(r) => return Ok(r),
            Plan::AllData => {
                if let (Sink::Extents { out, n }, Op::Extents { len, .. }) = (sink, op)
                    && let Some(first) = out.first_mut()
                {
                    *first = Extent {
                        len: *len,
                        flags: ExtentFlags::empty(),
                    };
                    *n = 1;
                }
                return Ok(Ok(()));
            }
            Plan::Send(p) => p,
        };
        let flush = pieces.flush_after;
        for piece in pieces {
            if let Err(e) = self.call(piece, payload, sink)? {
                return Ok(Err(e));
            }
        }
        if flush {
            for piece in Pieces::flush() {
                if let Err(e) = self.call(piece, payload, &mut Sink::None)? {
                    return Ok(Err(e));
                }
            }
        }
        Ok(Ok(()))
    }

    /// Send one command and wait for its reply: `Err(Lost)` when the
    /// transport failed, else the upstream's answer.
    fn call(
        &mut self,
        p: Piece,
        payload: &[u8],
        sink: &mut Sink<'_>,
    ) -> Result<io::Result<()>, Lost> {
        let len = p.len as usize;
        let data: &[u8] = match p.data {
            PieceData::None => &[],
            PieceData::Zeroes => ZEROES.get(..len).unwrap_or_default(),
            PieceData::Payload(from) => payload.get(from..from + len).unwrap_or_default(),
        };
        let cmd = Cmd {
            command: p.command,
            flags: p.flags,
            offset: p.offset,
            len: p.len,
            data,
        };
        self.out.resize(32 + data.len(), 0);
        let sent = match self.conn.encode_request(&cmd, &mut self.out) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("nbd proxy: not sent upstream: {:?}: {e}", p.command);
                return Ok(Err(io::Error::from_raw_os_error(libc::EINVAL)));
            }
        };
        let Some(stream) = self.stream.as_mut() else {
            return Err(Lost);
        };
        if let Err(e) = stream
            .io()
            .write_all(self.out.get(..sent.len).unwrap_or_default())
        {
            return self.lose(&format!("write: {e}"));
        }
        self.wait(p, sink)
    }

    /// Read replies until the command's `Done`.
    fn wait(&mut self, p: Piece, sink: &mut Sink<'_>) -> Result<io::Result<()>, Lost> {
        loop {
            let (used, ev) = match self.conn.handle_input(&self.input) {
                Ok(x) => x,
                Err(e) => return self.lose(&format!("bad reply: {e}")),
            };
            let mut result = None;
            let mut need = false;
            match ev {
                Event::NeedInput { .. } => need = true,
                Event::ReadData(d) => {
                    if let Sink::Read { start, buf } = sink {
                        let rel = (p.offset - *start) as usize;
                        if let Some(dst) = buf.get_mut(rel..rel + p.len as usize) {
                            let _ = d.copy_into(dst);
                        }
                    }
                }
                Event::BlockStatus(b) => {
                    if let Sink::Extents { out, n } = sink {
                        let got = b.copy_into(&mut self.scratch);
                        for e in self.scratch.iter().take(got) {
                            let Some(slot) = out.get_mut(*n) else { break };
                            *slot = Extent {
                                len: e.len,
                                flags: ExtentFlags::from_bits_truncate(e.flags as u32),
                            };
                            *n += 1;
                        }
                    }
                }
                Event::Done(d) => result = Some(d.result),
                Event::Idle | Event::Closed => {
                    return self.lose("reply missing");
                }
                _ => {}
            }
            self.input.drain(..used);
            match result {
                Some(Ok(())) => return Ok(Ok(())),
                Some(Err(ReplyError::Server(code))) => return Ok(Err(upstream_error(code))),
                Some(Err(ReplyError::Incomplete)) => {
                    log::warn!("nbd proxy: upstream READ reply did not cover the request");
                    return Ok(Err(eio()));
                }
                Some(Err(e)) => return self.lose(&e.to_string()),
                None => {}
            }
            if need {
                self.fill()?;
            }
        }
    }

    fn fill(&mut self) -> Result<(), Lost> {
        let have = self.input.len();
        self.input.resize(have + 64 * 1024, 0);
        let Some(stream) = self.stream.as_mut() else {
            return Err(Lost);
        };
        let r = loop {
            match stream.io().read(&mut self.input[have..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r,
            }
        };
        match r {
            Ok(0) => {
                self.input.truncate(have);
                self.lose("upstream closed the connection")
            }
            Ok(got) => {
                self.input.truncate(have + got);
                Ok(())
            }
            Err(e) => {
                self.input.truncate(have);
                self.lose(&format!("read: {e}"))
            }
        }
    }

    fn lose<T>(&mut self, why: &str) -> Result<T, Lost> {
        self.die(why);
        self.conn.handle_eof();
        self.input.clear();
        Err(Lost)
    }

    /// `Backend::read_at`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let op = Op::Read {
            offset,
            len: buf.len(),
        };
        self.run(op, &[], &mut Sink::Read { start: offset, buf })
    }

    /// `Backend::write_at`.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.run(Op::Write { offset, fua }, data, &mut Sink::None)
    }

    /// `Backend::flush`.
    pub fn flush(&mut self) -> io::Result<()> {
        self.run(Op::Flush, &[], &mut Sink::None)
    }

    /// `Backend::trim`.
    pub fn trim(&mut self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.run(Op::Trim { offset, len, fua }, &[], &mut Sink::None)
    }

    /// `Backend::cache`.
    pub fn cache(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.run(Op::Cache { offset, len }, &[], &mut Sink::None)
    }

    /// `Backend::write_zeroes`.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.run(Op::Zero { offset, len, flags }, &[], &mut Sink::None)
    }

    /// `Backend::extents`: `base:allocation` from the upstream, clipped to
    /// the asked range; all data when the upstream has no such context.
    pub fn extents(&mut self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        let size = self.first.size;
        if offset > size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range beyond the export",
            ));
        }
        let len = len.min(size - offset);
        if len == 0 || out.is_empty() {
            return Ok(0);
        }
        let mut sink = Sink::Extents { out, n: 0 };
        self.run(Op::Extents { offset, len }, &[], &mut sink)?;
        match sink {
            Sink::Extents { n, .. } if n > 0 => Ok(n),
            _ => {
                log::warn!("nbd proxy: upstream BLOCK_STATUS reply had no base:allocation extent");
                Err(eio())
            }
        }
    }
}

/// The transport failed mid-request.
struct Lost;
