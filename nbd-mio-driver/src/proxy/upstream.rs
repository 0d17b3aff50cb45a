//! The proxy's upstream connection as the event loop sees it: a
//! non-blocking socket registered in the server's `mio::Poll`, an
//! nbd-proto [`Connection`] doing the protocol (cookies, reassembly of
//! READ replies, block status), and the client requests in progress
//! ([`Tasks`]).
//!
//! A client request becomes a pool-style [`Job`]; [`plan`] maps it to
//! upstream commands, all of which may be in flight at once. When its
//! last reply arrives the job moves to `done`, and the server hands it to
//! its connection exactly as a finished pool job.
//!
//! **Reconnect.** When the upstream drops, requests in flight fail with
//! EIO (READ, BLOCK_STATUS and CACHE are resent instead when `retry` > 0),
//! and the upstream is reconnected — non-blocking, in the same loop —
//! after a backoff that doubles from 100 ms to at most 2 s, for as long
//! as this upstream exists. Requests arriving meanwhile wait up to
//! `retry` for it (0: they fail with EIO at once); once it is back they
//! succeed. A reconnected upstream must have the same size.
//!
//! The loop's duties: call [`Upstream::on_readable`] /
//! [`Upstream::on_writable`] on events for its token,
//! [`Upstream::on_writable`] when [`Upstream::wants_write`] after
//! submitting, [`Upstream::tick`] when [`Upstream::next_deadline`] has
//! passed (and at least that often), and deliver `done`.

use std::io;
use std::time::{Duration, Instant};

use mio::{Registry, Token};
use nbd_backends::{Extent, ExtentFlags};
use nbd_proto::ErrorCode;
use nbd_proto::client::{CLIENT_TRANSMIT_MAX, ClientNegotiated, Cmd, Connection, Event};

use super::handshake::{Peer, Stream, check_same, client_config};
use super::link::{Backoff, Sock};
use super::plan::{Plan, plan};
use super::tasks::Tasks;
use crate::buffer::{Buf, ReadEnd};
use crate::dispatch::MAX_EXTENTS;
use crate::workers::{Job, Op};

/// Upstream commands in flight at once (per upstream connection).
pub const SLOTS: usize = 128;
/// Initial buffer sizes (they grow to the largest request in flight).
const BUF_INITIAL: usize = 64 * 1024;
/// A reconnect whose connect and negotiation take longer has failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests wait for the very first connection of an upstream
/// opened in the background (not an outage: `retry` does not apply).
const FIRST_CONNECT_WAIT: Duration = ATTEMPT_TIMEOUT;

/// How a lost upstream comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// The address connected to at start-up.
    pub peer: Peer,
    /// The export to ask for.
    pub export: String,
    /// How long a request waits for the upstream to come back before it
    /// fails with EIO; zero fails it at once while the upstream is down.
    pub retry: Duration,
}

enum Link {
    /// Connected: negotiating or in transmission (see `conn`).
    Up(Sock),
    /// A TCP connect in progress.
    Connecting(Sock),
    /// No socket; the next attempt is due per `backoff`.
    Down,
}

/// What [`Upstream::submit`] did with a request.
pub enum Submitted {
    /// Sent upstream (or waiting for it); the job comes back through `done`.
    Queued,
    /// Answered without the upstream (the job's result says how); the
    /// caller encodes the reply now and recycles the job.
    Now(Box<Job>),
}

/// One upstream connection driven by the server's loop.
pub struct Upstream {
    link: Link,
    conn: Box<Connection<SLOTS>>,
    /// What the export was advertised with (the first negotiation).
    first: ClientNegotiated,
    wbuf: Buf,
    rbuf: Buf,
    tasks: Tasks,
    /// Finished jobs for the server to deliver.
    pub done: Vec<Box<Job>>,
    reconnect: Option<Reconnect>,
    registry: Option<Registry>,
    token: Token,
    backoff: Backoff,
    /// The current attempt must be connected and negotiated by then.
    attempt_deadline: Option<Instant>,
    /// The upstream was lost and has not come back yet.
    outage: bool,
    closing: bool,
    max_chunk: u32,
}

impl Upstream {
    /// Make the negotiated `stream` non-blocking and register it. This
    /// upstream never reconnects; see [`Upstream::from_taken`].
    ///
    /// # Errors
    ///
    /// Registration errors.
    pub fn new(
        stream: Stream,
        neg: ClientNegotiated,
        max_payload: u64,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Self> {
        let mut sock = Sock::from_stream(stream)?;
        sock.register(registry, token)?;
        let max_chunk = u32::try_from(max_payload).unwrap_or(u32::MAX);
        let mut conn = Box::new(Connection::from_negotiated(neg));
        conn.set_max_chunk_len(max_chunk);
        Ok(Self {
            link: Link::Up(sock),
            conn,
            first: neg,
            wbuf: Buf::with_capacity(BUF_INITIAL),
            rbuf: Buf::with_capacity(BUF_INITIAL),
            tasks: Tasks::new(SLOTS, MAX_EXTENTS),
            done: Vec::new(),
            reconnect: None,
            registry: None,
            token,
            backoff: Backoff::new(Instant::now()),
            attempt_deadline: None,
            outage: false,
            closing: false,
            max_chunk,
        })
    }

    /// An upstream taken from an opened proxy ([`super::take_upstream`]):
    /// connected now (or, without a stream, in the background),
    /// reconnecting when lost.
    ///
    /// # Errors
    ///
    /// Registration errors.
    pub fn from_taken(taken: super::Taken, registry: &Registry, token: Token) -> io::Result<Self> {
        let Some(stream) = taken.stream else {
            return Self::connect(taken.reconnect, taken.negotiated, registry, token);
        };
        let mut u = Self::new(stream, taken.negotiated, super::MAX_REPLY, registry, token)?;
        u.reconnect = Some(taken.reconnect);
        u.registry = Some(registry.try_clone()?);
        Ok(u)
    }

    /// An upstream that connects in the background (a per-client upstream
    /// opened on the loop): requests wait for it like for a reconnect.
    ///
    /// # Errors
    ///
    /// Cloning the registry.
    pub fn connect(
        reconnect: Reconnect,
        first: ClientNegotiated,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Self> {
        let mut conn = Box::new(Connection::from_negotiated(first));
        let max_chunk = u32::try_from(super::MAX_REPLY).unwrap_or(u32::MAX);
        conn.set_max_chunk_len(max_chunk);
        let now = Instant::now();
        let mut u = Self {
            link: Link::Down,
            conn,
            first,
            wbuf: Buf::with_capacity(BUF_INITIAL),
            rbuf: Buf::with_capacity(BUF_INITIAL),
            tasks: Tasks::new(SLOTS, MAX_EXTENTS),
            done: Vec::new(),
            reconnect: Some(reconnect),
            registry: Some(registry.try_clone()?),
            token,
            backoff: Backoff::new(now),
            attempt_deadline: None,
            outage: false,
            closing: false,
            max_chunk,
        };
        u.tick(now);
        Ok(u)
    }

    /// The negotiation in force: the current connection's, else the first.
    fn negotiated(&self) -> ClientNegotiated {
        match (&self.link, self.conn.negotiated()) {
            (Link::Up(_), Some(n)) => *n,
            _ => self.first,
        }
    }

    /// Connected and negotiated (requests may be sent).
    fn ready(&self) -> bool {
        matches!(self.link, Link::Up(_)) && self.conn.negotiated().is_some() && !self.closing
    }

    /// How long a request may wait for the upstream now.
    fn wait_limit(&self) -> Option<Duration> {
        let r = self.reconnect.as_ref()?;
        if self.outage {
            (!r.retry.is_zero()).then_some(r.retry)
        } else {
            Some(r.retry.max(FIRST_CONNECT_WAIT))
        }
    }

    /// Forward the request `job` describes (`payload` is a WRITE's data).
    pub fn submit(&mut self, mut job: Box<Job>, payload: &[u8]) -> Submitted {
        job.result = Ok(());
        match job.op {
            Op::Read { len, .. } => {
                job.data_at = 0;
                job.buf.clear();
                job.buf.resize(len, 0);
            }
            Op::Extents { .. } => job.extents.clear(),
            _ => {}
        }
        let pieces = match plan(&job.op, payload.len(), &self.negotiated()) {
            Plan::Now(r) => {
                job.result = r;
                return Submitted::Now(job);
            }
            Plan::AllData => {
                if let Op::Extents { len, .. } = job.op {
                    job.extents.push(Extent {
                        len: len.max(1),
                        flags: ExtentFlags::empty(),
                    });
                }
                return Submitted::Now(job);
            }
            Plan::Send(p) => p,
        };
        let ready = self.ready();
        let deadline = if ready {
            None
        } else {
            match self.wait_limit() {
                Some(w) => Some(Instant::now() + w),
                None => {
                    job.result = Err(eio());
                    return Submitted::Now(job);
                }
            }
        };
        let key = self.tasks.add(job, pieces, deadline);
        if ready {
            self.tasks.pump(
                &mut self.conn,
                &mut self.wbuf,
                Some((key, payload)),
                &mut self.done,
            );
        }
        self.tasks.stash_payload(key, payload);
        Submitted::Queued
    }

    /// True while bytes wait to be written or a connect is in progress.
    pub fn wants_write(&self) -> bool {
        match self.link {
            Link::Up(_) => !self.wbuf.is_empty(),
            Link::Connecting(_) => true,
            Link::Down => false,
        }
    }

    /// True while the upstream is down and a reconnect is pending.
    pub fn wants_reconnect(&self) -> bool {
        matches!(self.link, Link::Down) && self.reconnect.is_some() && !self.closing
    }

    /// True once connected and negotiated.
    pub fn is_connected(&self) -> bool {
        self.ready()
    }

    /// When [`Upstream::tick`] must next be called: a reconnect attempt,
    /// a connect timeout, or a waiting request's deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        let attempt = self.wants_reconnect().then(|| self.backoff.next());
        // Requests only wait (with a deadline) while not connected.
        let waiting = (!self.ready())
            .then(|| self.tasks.next_deadline())
            .flatten();
        [attempt, self.attempt_deadline, waiting]
            .into_iter()
            .flatten()
            .min()
    }

    /// Timers: start a due reconnect, give up on a slow one, fail requests
    /// that waited too long for the upstream.
    pub fn tick(&mut self, now: Instant) {
        if self.attempt_deadline.is_some_and(|d| d <= now) && !self.ready() {
            self.lost("connect timed out", now);
        }
        if self.wants_reconnect() && self.backoff.due(now) {
            self.start_connect(now);
        }
        // Connected: no request waits, so no scan (tick runs every loop
        // iteration and must cost nothing then).
        if !self.ready() {
            self.tasks.expire(Some(now), &mut self.done);
        }
    }

    fn start_connect(&mut self, now: Instant) {
        let (Some(r), Some(reg)) = (&self.reconnect, &self.registry) else {
            return;
        };
        let sock = Sock::connect(&r.peer).and_then(|mut s| {
            s.register(reg, self.token)?;
            Ok(s)
        });
        match sock {
            Ok(s) => {
                let mut conn = match Connection::new(&client_config(&r.export)) {
                    Ok(c) => Box::new(c),
                    Err(e) => return log::error!("nbd proxy: {e}"),
                };
                conn.set_max_chunk_len(self.max_chunk);
                self.conn = conn;
                self.link = match r.peer {
                    Peer::Tcp(_) => Link::Connecting(s),
                    Peer::Unix(_) => Link::Up(s),
                };
                self.attempt_deadline = Some(now + ATTEMPT_TIMEOUT);
            }
            Err(e) => {
                log::debug!("nbd proxy: reconnect failed: {e}");
                self.backoff.failed(now);
            }
        }
    }

    /// A connect in progress finished (or not yet): true when usable.
    fn check_connect(&mut self) -> bool {
        let Link::Connecting(sock) = &self.link else {
            return matches!(self.link, Link::Up(_));
        };
        match sock.connected() {
            Ok(true) => {
                let Link::Connecting(s) = std::mem::replace(&mut self.link, Link::Down) else {
                    return false;
                };
                self.link = Link::Up(s);
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.lost(&format!("connect: {e}"), Instant::now());
                false
            }
        }
    }

    /// Write queued bytes until the socket would block.
    pub fn on_writable(&mut self) {
        if !self.check_connect() {
            return;
        }
        let Link::Up(sock) = &mut self.link else {
            return;
        };
        if let Err(e) = self.wbuf.write_to(&mut sock.io()) {
            // Replies may already be buffered (a server that answered and
            // then closed): take them before failing what is left.
            let _ = self.read_all();
            self.lost(&format!("write: {e}"), Instant::now());
        }
    }

    /// Read and handle replies until the socket would block.
    pub fn on_readable(&mut self) {
        if !self.check_connect() {
            return;
        }
        if let Err(why) = self.read_all() {
            self.lost(&why, Instant::now());
            return;
        }
        self.pump();
        // Negotiation answers and requests unblocked by replies.
        if !self.wbuf.is_empty() {
            self.on_writable();
        }
    }

    /// Read until `WouldBlock`, handling replies as they arrive; `Err`
    /// says why the connection ended.
    fn read_all(&mut self) -> Result<(), String> {
        loop {
            let Link::Up(sock) = &mut self.link else {
                return Ok(());
            };
            let end = self.rbuf.read_from(&mut sock.io(), 256 * 1024, false);
            self.process();
            match end {
                Ok(ReadEnd::Limit) => {}
                Ok(ReadEnd::WouldBlock) => return Ok(()),
                Ok(ReadEnd::Eof) => return Err("upstream closed the connection".into()),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    fn pump(&mut self) {
        if self.ready() {
            self.tasks
                .pump(&mut self.conn, &mut self.wbuf, None, &mut self.done);
        }
    }

    /// Handle every event the buffered input yields.
    fn process(&mut self) {
        loop {
            if !matches!(self.link, Link::Up(_)) {
                return;
            }
            let (used, ev) = match self.conn.handle_input(self.rbuf.filled()) {
                Ok(x) => x,
                Err(e) => {
                    self.lost(&format!("bad reply: {e}"), Instant::now());
                    return;
                }
            };
            let mut after = None;
            let mut stop = false;
            match ev {
                Event::NeedInput { .. } | Event::Idle | Event::Closed => stop = true,
                Event::Transmit => {
                    let out = self.wbuf.spare(CLIENT_TRANSMIT_MAX);
                    match self.conn.poll_transmit(out) {
                        Ok(n) => self.wbuf.commit(n),
                        Err(_) => stop = true,
                    }
                }
                Event::ReadData(d) => self.tasks.read_data(d),
                Event::BlockStatus(b) => self.tasks.block_status(b),
                Event::Done(d) => after = Some(Ok(d)),
                Event::Ready(n) => after = Some(Err(Some(n))),
                Event::StartTls(_) | Event::TlsPending => after = Some(Err(None)),
                _ => {}
            }
            self.rbuf.consume(used);
            match after {
                Some(Ok(d)) => {
                    let resend = self.resend_deadline(Instant::now());
                    self.tasks.piece_done(d, resend, &mut self.done);
                }
                Some(Err(Some(n))) => self.on_ready(n),
                Some(Err(None)) => {
                    self.lost("upstream asked for TLS", Instant::now());
                    return;
                }
                None if stop => return,
                None => {}
            }
        }
    }

    fn resend_deadline(&self, now: Instant) -> Option<Instant> {
        let r = self.reconnect.as_ref()?;
        (!r.retry.is_zero()).then(|| now + r.retry)
    }

    fn on_ready(&mut self, n: ClientNegotiated) {
        let now = Instant::now();
        if let Err(why) = check_same(&self.first, &n) {
            self.lost(&why, now);
            return;
        }
        if self.outage {
            log::warn!("nbd proxy: upstream connection restored");
        }
        self.outage = false;
        self.attempt_deadline = None;
        self.backoff.reset(now);
        self.tasks.clear_deadlines();
        self.pump();
    }

    /// The connection is gone: fail or park what was in flight, drop the
    /// socket, schedule a reconnect.
    fn lost(&mut self, why: &str, now: Instant) {
        if self.closing {
            return;
        }
        if self.outage {
            log::debug!("nbd proxy: upstream still unavailable: {why}");
        } else {
            log::error!("nbd proxy: upstream connection lost: {why}");
        }
        self.outage = true;
        self.attempt_deadline = None;
        let resend = self.resend_deadline(now);
        self.conn.handle_eof();
        while let Ok((_, Event::Done(d))) = self.conn.handle_input(&[]) {
            self.tasks.piece_done(d, resend, &mut self.done);
        }
        if let (Link::Up(s) | Link::Connecting(s), Some(reg)) = (&mut self.link, &self.registry) {
            s.deregister(reg);
        }
        self.link = Link::Down;
        self.wbuf.consume(self.wbuf.len());
        self.rbuf.consume(self.rbuf.len());
        self.backoff.failed(now);
        match self.wait_limit() {
            Some(w) => self.tasks.set_deadlines(now + w),
            None => self.tasks.expire(None, &mut self.done),
        }
    }

    /// Best effort at shutdown: `NBD_CMD_DISC` so the upstream sees an
    /// orderly close; no reconnect after it.
    pub fn disconnect(&mut self) {
        if self.ready()
            && let Ok(s) = self
                .conn
                .encode_request(&Cmd::disconnect(), self.wbuf.spare(32))
        {
            self.wbuf.commit(s.len);
            self.on_writable();
        }
        self.closing = true;
    }

    /// Deregister the socket.
    pub fn deregister(&mut self, registry: &Registry) {
        if let Link::Up(s) | Link::Connecting(s) = &mut self.link {
            s.deregister(registry);
        }
    }

    /// Client requests not finished.
    pub fn in_progress(&self) -> usize {
        self.tasks.len()
    }
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
