//! One event loop: a thread with its own `mio::Poll`, its connections,
//! their buffers, its worker pool and its upstream sockets. Loops share
//! nothing on the request path (shard per core, as pelikan's workers): a
//! connection is handed to a loop once, at accept, and never moves.
//!
//! Each wake-up reads every readable socket until `WouldBlock`, runs the
//! protocol over what was read (at most [`conn::BUDGET`] requests per
//! connection, the rest parked on a ready list so one busy client cannot
//! starve the others), writes until `WouldBlock`, and re-registers interest
//! only when it changed. Finished pool jobs arrive through the loop's
//! `mio::Waker`; replies from upstream servers of `nbd` proxy exports on
//! their own sockets, registered here too.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use nbd_backends::Peer;
use slab::Slab;

use crate::acceptor::Acceptor;
use crate::conn::{Conn, ConnConfig};
use crate::dispatch::Shared;
use crate::listen::Stream;
use crate::server::Control;
use crate::workers::{Job, Pool};

pub(crate) const WAKER: Token = Token(0);
pub(crate) const SIGNALS: Token = Token(1);
pub(crate) const LISTENER_BASE: usize = 2;
/// Connections, upstream sockets and asynchronous queues share the tokens
/// from here, interleaved: offset `3k` is connection `k`, `3k + 1` upstream
/// `k`, `3k + 2` aio queue `k` (all slab keys, so none has a fixed cap).
const DYN_BASE: usize = 1024;
/// The kinds of token above `DYN_BASE`.
const DYN_KINDS: usize = 3;
/// How often negotiation deadlines are checked.
const EXPIRY_SCAN: Duration = Duration::from_millis(250);
/// How often idle connections give back buffer memory.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// In-flight work gets this long after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The token of connection `key`.
pub(crate) fn conn_token(key: usize) -> Token {
    Token(DYN_BASE + DYN_KINDS * key)
}

/// The token of upstream `key`.
pub(crate) fn upstream_token(key: usize) -> Token {
    Token(DYN_BASE + DYN_KINDS * key + 1)
}

/// [aio hook] The token of the loop's aio queue `key` (aio.rs).
pub(crate) fn aio_token(key: usize) -> Token {
    Token(DYN_BASE + DYN_KINDS * key + 2)
}

/// A connection accepted by loop 0 for this loop.
pub(crate) struct NewConn {
    pub stream: Stream,
    pub name: String,
    pub peer: Peer,
    pub id: u64,
}

struct Slot {
    /// Boxed: a connection is several KiB (its negotiation state), and the
    /// slab's vector doubles as it grows.
    conn: Box<Conn>,
    /// On the ready list already (so it is never queued twice).
    ready: bool,
}

/// One event loop (see the module documentation).
pub(crate) struct Loop {
    pub index: usize,
    poll: Poll,
    control: Arc<Control>,
    cfg: Arc<ConnConfig>,
    conns: Slab<Slot>,
    shared: Shared,
    ready: VecDeque<usize>,
    /// Connections with work that only the loop's memory limit holds back
    /// (`--max-memory`): they wait here for other connections to free
    /// bytes instead of being polled again at once, which spun the loop.
    parked: Vec<usize>,
    inbox: Receiver<NewConn>,
    /// Loop 0 only: listeners and signals.
    acceptor: Option<Acceptor>,
    /// `-s`: exit once the one client is gone.
    single: bool,
    handshake_limit: Option<Duration>,
    /// Deadlines are checked by scanning every connection; doing that on
    /// each wake-up would make a busy server pay O(connections) per
    /// request, so the scan runs at most every `EXPIRY_SCAN`.
    next_expiry_scan: Instant,
    /// Some connection had a deadline at the last scan (or was added since).
    has_deadlines: bool,
    /// `--busy-poll`: how long to keep polling without sleeping after the
    /// last client input.
    busy_poll: Duration,
    /// When a client last sent something or a job last finished (only
    /// kept with `--busy-poll`).
    last_input: Option<Instant>,
    /// The next housekeeping pass.
    next_housekeeping: Instant,
}

/// What a loop is built from.
pub(crate) struct LoopParts {
    pub index: usize,
    pub poll: Poll,
    pub control: Arc<Control>,
    pub cfg: Arc<ConnConfig>,
    pub shared: Shared,
    pub inbox: Receiver<NewConn>,
    pub acceptor: Option<Acceptor>,
    pub single: bool,
    pub handshake_limit: Option<Duration>,
    pub busy_poll: Duration,
}

impl Loop {
    pub(crate) fn new(p: LoopParts) -> Self {
        Self {
            index: p.index,
            poll: p.poll,
            control: p.control,
            cfg: p.cfg,
            conns: Slab::new(),
            shared: p.shared,
            ready: VecDeque::new(),
            parked: Vec::new(),
            inbox: p.inbox,
            acceptor: p.acceptor,
            single: p.single,
            handshake_limit: p.handshake_limit,
            next_expiry_scan: Instant::now(),
            has_deadlines: false,
            busy_poll: p.busy_poll,
            last_input: None,
            next_housekeeping: Instant::now() + HOUSEKEEPING,
        }
    }

    /// This loop's waker (for the pool and the acceptor).
    pub(crate) fn make_waker(poll: &Poll) -> io::Result<Arc<Waker>> {
        Ok(Arc::new(Waker::new(poll.registry(), WAKER)?))
    }

    pub(crate) fn add_conn(&mut self, n: NewConn) {
        let NewConn {
            mut stream,
            name,
            peer,
            id,
        } = n;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, conn_token(key), interest)
        {
            log::warn!("{name}: cannot register the connection: {e}");
            self.control.loads[self.index].fetch_sub(1, Ordering::Relaxed);
            return;
        }
        log::info!("{name}: connected");
        let deadline = self.handshake_limit.map(|d| Instant::now() + d);
        let conn = Conn::new(id, (name, peer), stream, &self.cfg, deadline);
        entry.insert(Slot {
            conn: Box::new(conn),
            ready: true,
        });
        self.ready.push_back(key);
        // The new connection has a negotiation deadline.
        self.has_deadlines |= self.handshake_limit.is_some();
    }

    fn mark_ready(&mut self, key: usize) {
        if let Some(s) = self.conns.get_mut(key)
            && !s.ready
        {
            s.ready = true;
            self.ready.push_back(key);
        }
    }

    /// How long the next poll may sleep.
    fn timeout(&self, stopping: Option<Instant>, now: Instant) -> Option<Duration> {
        let upstream_done = self
            .shared
            .upstreams
            .iter()
            .any(|(_, u)| !u.done.is_empty());
        if !self.ready.is_empty() || upstream_done {
            return Some(Duration::ZERO);
        }
        // --busy-poll: right after client input, poll without sleeping.
        // At queue depth 1 the next request comes tens of µs after the
        // reply, and a sleep plus wake-up costs more than that (issue 14's
        // ping-pong on this VM: 12-16k round trips/s waiting in epoll_wait,
        // 39-46k polling).
        if self
            .last_input
            .is_some_and(|t| now.saturating_duration_since(t) < self.busy_poll)
        {
            return Some(Duration::ZERO);
        }
        let mut t = self
            .shared
            .upstreams
            .iter()
            .filter_map(|(_, u)| u.next_deadline())
            .min()
            .map(|d| d.saturating_duration_since(now));
        if let Some(a) = self.acceptor.as_ref().and_then(|a| a.retry_at()) {
            let d = a.saturating_duration_since(now);
            t = Some(t.map_or(d, |t| t.min(d)));
        }
        if stopping.is_some() || self.has_deadlines {
            t = Some(t.map_or(EXPIRY_SCAN, |t| t.min(EXPIRY_SCAN)));
        }
        if !self.conns.is_empty() {
            let h = self.next_housekeeping.saturating_duration_since(now);
            t = Some(t.map_or(h, |t| t.min(h)));
        }
        t
    }

    /// Serve until the stop flag (a signal, [`crate::server::StopHandle`]),
    /// or with `-s` the client leaving; in-flight work gets a grace period.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut stopping: Option<Instant> = None;
        loop {
            let now = Instant::now();
            // Upstream timers: reconnect backoff, waiting requests.
            for (_, u) in &mut self.shared.upstreams {
                u.tick(now);
            }
            let timeout = self.timeout(stopping, now);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events {
                self.on_event(ev);
            }
            self.take_new_conns();
            if let Some(a) = &mut self.acceptor {
                for n in a.retry_due(&self.control) {
                    self.add_conn(n);
                }
            }
            self.collect_jobs();
            self.unpark();
            if self.control.stop.load(Ordering::SeqCst) && stopping.is_none() {
                stopping = Some(Instant::now() + SHUTDOWN_GRACE);
                self.begin_shutdown();
            }
            self.service_ready();
            // Output written this pass may have freed what parked ones wait
            // for, with no event to follow.
            self.unpark();
            // Requests the dispatcher encoded for upstreams leave now.
            for (_, u) in &mut self.shared.upstreams {
                if u.wants_write() {
                    u.on_writable();
                }
            }
            self.expire(stopping);
            self.housekeep();
            if (stopping.is_some() || self.single) && self.conns.is_empty() {
                break;
            }
        }
        for (_, u) in &mut self.shared.upstreams {
            u.disconnect();
            u.deregister(self.poll.registry());
        }
        Ok(())
    }

    fn on_event(&mut self, ev: &mio::event::Event) {
        match ev.token() {
            WAKER => {}
            SIGNALS => {
                if let Some(a) = &mut self.acceptor
                    && a.signalled()
                {
                    self.control.request_stop();
                }
            }
            // [aio hook] Completions are waiting on an aio queue.
            Token(t) if t >= DYN_BASE && (t - DYN_BASE) % DYN_KINDS == 2 => {
                self.shared.aio.on_ready((t - DYN_BASE) / DYN_KINDS);
            }
            Token(t) if t >= DYN_BASE && (t - DYN_BASE) % DYN_KINDS == 1 => {
                if let Some(u) = self.shared.upstreams.get_mut((t - DYN_BASE) / DYN_KINDS) {
                    if ev.is_writable() {
                        u.on_writable();
                    }
                    if ev.is_readable() || ev.is_read_closed() {
                        u.on_readable();
                    }
                }
            }
            Token(t) if t >= DYN_BASE => {
                let key = (t - DYN_BASE) / DYN_KINDS;
                let Some(s) = self.conns.get_mut(key) else {
                    return;
                };
                if ev.is_readable() || ev.is_read_closed() {
                    // A client that closed sends nothing more to wait for.
                    if !self.busy_poll.is_zero() && !ev.is_read_closed() {
                        self.last_input = Some(Instant::now());
                    }
                    if s.ready {
                        // Input it already holds waits to be processed, and
                        // the pass that processes it reads the socket after
                        // (`should_read_again`). Reading now, before that,
                        // took a whole large WRITE into the input buffer
                        // (growing it) instead of into pages.
                        s.conn.defer_read();
                    } else if let Err(e) = s.conn.on_readable(ev.is_read_closed()) {
                        log::info!("{}: {e}", s.conn.peer);
                        self.close(key);
                        return;
                    }
                }
                self.mark_ready(key);
            }
            Token(t) => {
                let Some(a) = &mut self.acceptor else { return };
                for n in a.accept(t - LISTENER_BASE, &self.control) {
                    self.add_conn(n);
                }
            }
        }
    }

    /// Connections the acceptor handed to this loop.
    fn take_new_conns(&mut self) {
        while let Ok(n) = self.inbox.try_recv() {
            self.add_conn(n);
        }
    }

    fn begin_shutdown(&mut self) {
        if let Some(a) = &mut self.acceptor {
            a.close_listeners();
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(s) = self.conns.get_mut(key) {
                s.conn.begin_shutdown();
            }
            // Let idle connections notice the shutdown and close.
            self.mark_ready(key);
        }
    }

    fn collect_jobs(&mut self) {
        // Upstream replies first: they need no channel.
        let keys: Vec<usize> = self
            .shared
            .upstreams
            .iter()
            .filter(|(_, u)| !u.done.is_empty())
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            while let Some(job) = self.shared.upstreams.get_mut(k).and_then(|u| u.done.pop()) {
                self.deliver(job);
            }
        }
        // [aio hook] Finished aio jobs, in completion order (the list's
        // memory is kept).
        let mut done = std::mem::take(&mut self.shared.aio.done);
        for job in done.drain(..) {
            self.deliver(job);
        }
        self.shared.aio.done = done;
        loop {
            let Some(job) = self.shared.pool.as_mut().and_then(Pool::try_finished) else {
                return;
            };
            self.deliver(job);
        }
    }

    /// Hand a finished job to its connection (dropped if the connection
    /// closed meanwhile: slab keys are reused, ids are not) and recycle it.
    fn deliver(&mut self, mut job: Box<Job>) {
        let key = job.token;
        if let Some(s) = self.conns.get_mut(key)
            && s.conn.id == job.conn_id
        {
            let before = s.conn.held();
            s.conn.on_job_done(&mut job, &mut self.shared);
            self.shared.account(before, s.conn.held());
            self.mark_ready(key);
            // A reply leaves now; the client's next request follows it.
            if !self.busy_poll.is_zero() {
                self.last_input = Some(Instant::now());
            }
        }
        crate::dispatch::recycle(&mut self.shared, job);
    }

    fn service_ready(&mut self) {
        let mut rounds = self.ready.len();
        while rounds > 0 {
            rounds -= 1;
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(s) = self.conns.get_mut(key) else {
                continue;
            };
            s.ready = false;
            let c = &mut s.conn;
            let before = c.held();
            let status = c.process(&self.cfg, &mut self.shared, key);
            let written = c.on_writable();
            self.shared.account(before, c.held());
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    log::info!("{}: {e}", c.peer);
                    self.close(key);
                    continue;
                }
            };
            if let Err(e) = written {
                if e.kind() != io::ErrorKind::BrokenPipe
                    && e.kind() != io::ErrorKind::ConnectionReset
                {
                    log::info!("{}: write: {e}", c.peer);
                }
                self.close(key);
                continue;
            }
            let mut more = status.more;
            if c.should_read_again() {
                if let Err(e) = c.on_readable(true) {
                    log::info!("{}: {e}", c.peer);
                    self.close(key);
                    continue;
                }
                more = true;
            }
            let room = c.has_output_room();
            // A closing connection (DISC, a protocol error) is closed once
            // its output is out and no job is in flight: replies from the
            // pool or an aio queue are owed too (checklist 110: a WRITE,
            // DISC and junk in one burst still gets the WRITE's reply).
            if c.finished() {
                self.close(key);
                continue;
            }
            if more && room {
                if self.shared.held >= self.cfg.limits.per_loop {
                    if !self.parked.contains(&key) {
                        self.parked.push(key);
                    }
                } else {
                    self.mark_ready(key);
                }
            }
        }
    }

    /// Back on the ready list once the loop's memory is below its limit
    /// again: only other connections' output draining or jobs finishing
    /// free it, and each of those is an event that ran this wake-up.
    fn unpark(&mut self) {
        if self.parked.is_empty() || self.shared.held >= self.cfg.limits.per_loop {
            return;
        }
        while let Some(key) = self.parked.pop() {
            self.mark_ready(key);
        }
    }

    fn housekeep(&mut self) {
        let now = Instant::now();
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + HOUSEKEEPING;
        for (_, s) in &mut self.conns {
            s.conn.housekeep();
        }
    }

    fn expire(&mut self, stopping: Option<Instant>) {
        let now = Instant::now();
        let force = stopping.is_some_and(|d| now >= d);
        if !force && now < self.next_expiry_scan {
            return;
        }
        self.next_expiry_scan = now + EXPIRY_SCAN;
        self.has_deadlines = self.conns.iter().any(|(_, s)| s.conn.deadline.is_some());
        if !force && !self.has_deadlines {
            return;
        }
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, s)| force || s.conn.deadline.is_some_and(|d| now >= d))
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            if let Some(s) = self.conns.get(key) {
                let why = if force {
                    "closed at shutdown"
                } else {
                    "negotiation timed out"
                };
                log::info!("{}: {why}", s.conn.peer);
            }
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let Slot { conn: mut c, .. } = self.conns.remove(key);
        self.shared.account(c.held(), 0);
        c.close_tls();
        let _ = self.poll.registry().deregister(&mut c.stream);
        let _ = c.stream.shutdown();
        // A per-client upstream goes with its client.
        if let Some(k) = c.owned_upstream()
            && self.shared.upstreams.contains(k)
        {
            let mut u = self.shared.upstreams.remove(k);
            u.disconnect();
            u.deregister(self.poll.registry());
        }
        self.control.loads[self.index].fetch_sub(1, Ordering::Relaxed);
        log::info!("{}: disconnected", c.peer);
    }
}
