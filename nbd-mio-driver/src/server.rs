//! The event loop: one thread, many connections.
//!
//! Each wake-up reads every readable socket until `WouldBlock`, runs the
//! protocol over what was read (at most [`conn::BUDGET`] requests per
//! connection, the rest parked on a ready list so one busy client cannot
//! starve the others), writes until `WouldBlock`, and re-registers interest
//! only when it changed. Finished pool jobs arrive through a `mio::Waker`;
//! replies from the upstream servers of `nbd` proxy exports arrive on
//! their own sockets, registered here too. SIGINT/SIGTERM start a graceful
//! shutdown.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use nbd_backends::ExportSet;
use nbd_proto::server::{HandshakeConfig, TlsMode as ProtoTlsMode};
use slab::Slab;

use crate::conn::{Conn, ConnConfig};
use crate::dispatch::Shared;
use crate::listen::{Listener, Stream};
use crate::proxy::upstream::Upstream;
use crate::tls::{TlsMode, TlsServerConfig};
use crate::workers::Pool;

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const LISTENER_BASE: usize = 2;
/// Upstream connections of `nbd` proxy exports (proxy/upstream.rs).
const UPSTREAM_BASE: usize = 512;
const CONN_BASE: usize = 1024;
/// The default negotiation limit (a slowloris guard; qemu-nbd uses 10 s,
/// nbdkit none). `--handshake-limit` changes it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often negotiation deadlines are checked.
const EXPIRY_SCAN: Duration = Duration::from_millis(250);
/// In-flight work gets this long after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Worker threads for backends that may block.
const POOL_THREADS: usize = 4;

/// Everything the server needs.
pub struct ServerOptions {
    /// Listening sockets (may be empty with `single`).
    pub listeners: Vec<Listener>,
    /// Exports.
    pub exports: ExportSet,
    /// TLS credentials.
    pub tls: Option<Arc<TlsServerConfig>>,
    /// TLS policy.
    pub tls_mode: TlsMode,
    /// Serve oldstyle.
    pub oldstyle: bool,
    /// Serve exactly this one connection (`-s`), then exit.
    pub single: Option<Stream>,
    /// A client must finish negotiating within this time (a slowloris
    /// guard); `None` = no limit.
    pub handshake_limit: Option<Duration>,
}

/// Ends a running server from another thread.
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Begin a graceful shutdown.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// The server.
pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: Slab<(Conn, Interest)>,
    cfg: ConnConfig,
    shared: Shared,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    signals: signal_hook_mio::v1_0::Signals,
    next_id: u64,
    single: bool,
    ready: VecDeque<usize>,
    handshake_limit: Option<Duration>,
    /// Deadlines are checked by scanning every connection; doing that on
    /// each wake-up would make a busy server pay O(connections) per
    /// request, so the scan runs at most every `EXPIRY_SCAN`.
    next_expiry_scan: Instant,
    /// Some connection had a deadline at the last scan (or was added since).
    has_deadlines: bool,
}

impl Server {
    /// Register everything; nothing is served until [`Server::run`].
    pub fn new(opts: ServerOptions) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP, // like SIGTERM, as nbdkit (exit 0)
        ])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let mut listeners = opts.listeners;
        for (i, l) in listeners.iter_mut().enumerate() {
            let token = Token(LISTENER_BASE + i);
            poll.registry().register(l, token, Interest::READABLE)?;
        }
        // `nbd` proxy exports: their negotiated upstream sockets join this
        // loop; they need neither the pool nor a thread.
        let mut upstreams = Vec::new();
        for e in opts.exports.list() {
            if let Some(taken) = crate::proxy::take_upstream(&e.backend) {
                let token = Token(UPSTREAM_BASE + upstreams.len());
                if token.0 >= CONN_BASE {
                    return Err(io::Error::other("too many nbd proxy exports"));
                }
                upstreams.push(Upstream::new(
                    taken.stream,
                    taken.negotiated,
                    crate::proxy::MAX_REPLY,
                    crate::proxy::backend_id(&e.backend),
                    poll.registry(),
                    token,
                )?);
            }
        }
        if crate::proxy::any_untaken() {
            log::info!(
                "nbd proxy under a filter: served through the filter on the worker pool, \
                 one request at a time upstream (slower than an unfiltered nbd export)"
            );
        }
        let is_upstream = |b: &Arc<dyn nbd_backends::Backend>| {
            let id = crate::proxy::backend_id(b);
            upstreams.iter().any(|u: &Upstream| u.backend_id == id)
        };
        let needs_pool = opts.exports.list().any(|e| {
            e.backend.execution() == nbd_backends::Execution::Blocking && !is_upstream(&e.backend)
        });
        let pool = if needs_pool {
            Some(Pool::new(POOL_THREADS, Arc::clone(&waker))?)
        } else {
            None
        };
        let tls = match opts.tls_mode {
            TlsMode::Off => ProtoTlsMode::Off,
            TlsMode::On => ProtoTlsMode::On,
            TlsMode::Require => ProtoTlsMode::Require,
        };
        let cfg = ConnConfig {
            exports: Arc::new(opts.exports),
            handshake: HandshakeConfig {
                tls,
                ..HandshakeConfig::default()
            },
            tls: opts.tls,
            oldstyle: opts.oldstyle,
        };
        let mut shared = Shared::new(pool);
        shared.upstreams = upstreams;
        let mut server = Self {
            poll,
            listeners,
            conns: Slab::new(),
            cfg,
            shared,
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            signals,
            next_id: 0,
            single: opts.single.is_some(),
            ready: VecDeque::new(),
            handshake_limit: opts.handshake_limit,
            next_expiry_scan: Instant::now(),
            has_deadlines: false,
        };
        if let Some(stream) = opts.single {
            server.add_conn(stream, "stdin".to_owned())?;
        }
        Ok(server)
    }

    /// A handle that stops the server from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flag: Arc::clone(&self.stop),
            waker: Arc::clone(&self.waker),
        }
    }

    fn add_conn(&mut self, mut stream: Stream, peer: String) -> io::Result<()> {
        let entry = self.conns.vacant_entry();
        let token = Token(CONN_BASE + entry.key());
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll
            .registry()
            .register(&mut stream, token, interest)?;
        self.next_id += 1;
        log::info!("{peer}: connected");
        let conn = Conn::new(
            self.next_id,
            peer,
            stream,
            &self.cfg,
            self.handshake_limit.map(|d| Instant::now() + d),
        );
        let key = entry.key();
        entry.insert((conn, interest));
        self.ready.push_back(key);
        // The new connection has a negotiation deadline.
        self.has_deadlines |= self.handshake_limit.is_some();
        Ok(())
    }

    fn accept(&mut self, i: usize) {
        loop {
            let Some(l) = self.listeners.get(i) else {
                return;
            };
            match l.accept() {
                Ok((stream, peer)) => {
                    if let Err(e) = self.add_conn(stream, peer) {
                        log::warn!("cannot register a connection: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and friends: log and retry on the next event
                    // rather than spin.
                    log::warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    /// Serve until a signal, [`StopHandle::stop`], or (with `-s`) the client
    /// leaving; then finish in-flight work, flush every export and return.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut stopping: Option<Instant> = None;
        loop {
            let upstream_done = self.shared.upstreams.iter().any(|u| !u.done.is_empty());
            let timeout = if !self.ready.is_empty() || upstream_done {
                Some(Duration::ZERO)
            } else if stopping.is_some() || self.has_deadlines {
                Some(EXPIRY_SCAN)
            } else {
                None
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events {
                match ev.token() {
                    WAKER => {}
                    SIGNALS => {
                        for sig in self.signals.pending() {
                            log::info!("signal {sig}: shutting down");
                            self.stop.store(true, Ordering::SeqCst);
                        }
                    }
                    Token(t) if (UPSTREAM_BASE..CONN_BASE).contains(&t) => {
                        if let Some(u) = self.shared.upstreams.get_mut(t - UPSTREAM_BASE) {
                            if ev.is_writable() {
                                u.on_writable();
                            }
                            if ev.is_readable() || ev.is_read_closed() {
                                u.on_readable();
                            }
                        }
                    }
                    Token(t) if t >= CONN_BASE => {
                        let key = t - CONN_BASE;
                        if let Some((c, _)) = self.conns.get_mut(key) {
                            if (ev.is_readable() || ev.is_read_closed())
                                && let Err(e) = c.on_readable()
                            {
                                log::info!("{}: {e}", c.peer);
                                self.close(key);
                                continue;
                            }
                            self.ready.push_back(key);
                        }
                    }
                    Token(t) => self.accept(t - LISTENER_BASE),
                }
            }
            self.collect_jobs();
            if self.stop.load(Ordering::SeqCst) && stopping.is_none() {
                stopping = Some(Instant::now() + SHUTDOWN_GRACE);
                self.listeners.clear();
                for (key, (c, _)) in &mut self.conns {
                    c.begin_shutdown();
                    // Let idle connections notice the shutdown and close.
                    self.ready.push_back(key);
                }
            }
            self.service_ready();
            // Requests the dispatcher encoded for upstreams leave now.
            for u in &mut self.shared.upstreams {
                if u.wants_write() {
                    u.on_writable();
                }
            }
            self.expire(stopping);
            if stopping.is_some() && self.conns.is_empty() {
                break;
            }
            if self.single && self.conns.is_empty() {
                break;
            }
        }
        for u in &mut self.shared.upstreams {
            u.disconnect();
            u.deregister(self.poll.registry());
        }
        for e in self.cfg.exports.list() {
            let id = crate::proxy::backend_id(&e.backend);
            if self.shared.upstreams.iter().any(|u| u.backend_id == id) {
                // The upstream flushes on NBD_CMD_DISC; nothing to do here.
                continue;
            }
            if let Err(err) = e.backend.flush() {
                log::warn!("flushing export '{}': {err}", e.name);
            }
        }
        Ok(())
    }

    fn collect_jobs(&mut self) {
        // Upstream replies first: they need no channel.
        for i in 0..self.shared.upstreams.len() {
            while let Some(job) = self.shared.upstreams.get_mut(i).and_then(|u| u.done.pop()) {
                self.deliver(job);
            }
        }
        let Some(pool) = &self.shared.pool else {
            return;
        };
        let mut done = Vec::new();
        while let Some(job) = pool.try_finished() {
            done.push(job);
        }
        for job in done {
            self.deliver(job);
        }
    }

    /// Hand a finished job to its connection (dropped if the connection
    /// closed meanwhile: slab keys are reused, ids are not) and recycle it.
    fn deliver(&mut self, mut job: Box<crate::workers::Job>) {
        if let Some((c, _)) = self.conns.get_mut(job.token)
            && c.id == job.conn_id
        {
            c.on_job_done(&mut job, &mut self.shared);
            self.ready.push_back(job.token);
        }
        self.shared.free_jobs.push(job);
    }

    fn service_ready(&mut self) {
        let mut rounds = self.ready.len();
        while rounds > 0 {
            rounds -= 1;
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some((c, _)) = self.conns.get_mut(key) else {
                continue;
            };
            let status = match c.process(&self.cfg, &mut self.shared, key) {
                Ok(s) => s,
                Err(e) => {
                    log::info!("{}: {e}", c.peer);
                    self.close(key);
                    continue;
                }
            };
            if let Err(e) = c.on_writable() {
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
                if let Err(e) = c.on_readable() {
                    log::info!("{}: {e}", c.peer);
                    self.close(key);
                    continue;
                }
                more = true;
            }
            if more && c.has_output_room() && !self.ready.contains(&key) {
                self.ready.push_back(key);
            }
            if c.finished() || (status.closing && !c.wants_write()) {
                self.close(key);
                continue;
            }
            self.update_interest(key);
        }
    }

    fn update_interest(&mut self, key: usize) {
        let Some((c, current)) = self.conns.get_mut(key) else {
            return;
        };
        // With nothing to write, keep READABLE even under back-pressure so
        // a peer close is noticed.
        let want = match (c.wants_read(), c.wants_write()) {
            (true, true) => Interest::READABLE | Interest::WRITABLE,
            (false, true) => Interest::WRITABLE,
            (_, false) => Interest::READABLE,
        };
        if want != *current {
            let token = Token(CONN_BASE + key);
            let r = self.poll.registry().reregister(&mut c.stream, token, want);
            if r.is_ok() {
                *current = want;
            }
        }
    }

    fn expire(&mut self, stopping: Option<Instant>) {
        let now = Instant::now();
        let force = stopping.is_some_and(|d| now >= d);
        if !force && now < self.next_expiry_scan {
            return;
        }
        self.next_expiry_scan = now + EXPIRY_SCAN;
        self.has_deadlines = self.conns.iter().any(|(_, (c, _))| c.deadline.is_some());
        if !force && !self.has_deadlines {
            return;
        }
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, (c, _))| force || c.deadline.is_some_and(|d| now >= d))
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            if let Some((c, _)) = self.conns.get(key) {
                log::info!(
                    "{}: {}",
                    c.peer,
                    if force {
                        "closed at shutdown"
                    } else {
                        "negotiation timed out"
                    }
                );
            }
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let (mut c, _) = self.conns.remove(key);
        c.close_tls();
        let _ = self.poll.registry().deregister(&mut c.stream);
        let _ = c.stream.shutdown();
        log::info!("{}: disconnected", c.peer);
    }
}
