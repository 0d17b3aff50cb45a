//! The server: N event loops ([`crate::event_loop`]), one per thread, that
//! share nothing on the request path. Loop 0 also accepts connections and
//! hands each to the least loaded loop ([`crate::acceptor`]) and takes
//! the signals: SIGINT, SIGTERM and SIGHUP start a graceful shutdown on
//! every loop (in-flight requests finish, new ones get ESHUTDOWN), then
//! every export is flushed.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::time::Duration;

use mio::{Interest, Poll, Token, Waker};
use nbd_backends::{ExportSet, Peer};
use nbd_proto::server::{ConnectionConfig, HandshakeConfig, TlsMode as ProtoTlsMode};

use crate::acceptor::Acceptor;
use crate::conn::ConnConfig;
use crate::dispatch::Shared;
use crate::event_loop::{LISTENER_BASE, Loop, LoopParts, NewConn, SIGNALS};
use crate::listen::{Listener, Stream};
use crate::tls::{TlsMode, TlsServerConfig};
use crate::workers::Pool;

/// The default negotiation limit (a slowloris guard; qemu-nbd uses 10 s,
/// nbdkit none). `--handshake-limit` changes it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Worker threads per event loop for backends that may block, unless
/// `--workers` says otherwise.
pub const DEFAULT_WORKERS: usize = 4;
/// The most event loops `-t` starts by default (the CPU count above that
/// rarely helps one NBD server: clients and storage need cores too).
pub const MAX_DEFAULT_LOOPS: usize = 8;

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
    /// Negotiation features (`--no-sr`, `--no-mc`, `--mask-handshake`); the
    /// TLS mode and meta-context catalogue are set by the server.
    pub handshake: HandshakeConfig,
    /// Serve oldstyle.
    pub oldstyle: bool,
    /// Serve exactly this one connection (`-s`), then exit.
    pub single: Option<Stream>,
    /// A client must finish negotiating within this time (a slowloris
    /// guard); `None` = no limit.
    pub handshake_limit: Option<Duration>,
    /// Event loops (threads); 0 = the default ([`default_loops`]).
    pub threads: usize,
    /// Keep polling without sleeping this long after the last request
    /// (`--busy-poll`; zero: always sleep in `epoll_wait`).
    pub busy_poll: Duration,
    /// Worker threads per loop (`--workers`); 0 = [`DEFAULT_WORKERS`].
    pub workers: usize,
    /// `--max-connection-buffer`; 0 = the default.
    pub max_connection_buffer: usize,
    /// `--max-memory`; 0 = [`default_max_memory`].
    pub max_memory: usize,
}

/// The default `--max-memory`: a quarter of the machine's RAM (1 GiB if
/// /proc/meminfo cannot be read).
#[must_use]
pub fn default_max_memory() -> usize {
    let kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok())
    });
    kib.map_or(1 << 30, |k| k.saturating_mul(1024) / 4)
}

/// The default number of event loops: one per CPU, at most
/// [`MAX_DEFAULT_LOOPS`].
#[must_use]
pub fn default_loops() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DEFAULT_LOOPS))
}

/// What the loops share: the stop flag, connection ids, each loop's load
/// and waker. Nothing here is touched per request.
pub(crate) struct Control {
    pub stop: AtomicBool,
    pub next_id: AtomicU64,
    /// Live connections per loop (the acceptor balances on it).
    pub loads: Vec<AtomicUsize>,
    wakers: Vec<Arc<Waker>>,
}

impl Control {
    /// Stop every loop.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            let _ = w.wake();
        }
    }
}

/// Ends a running server from another thread.
#[derive(Clone)]
pub struct StopHandle {
    control: Arc<Control>,
}

impl StopHandle {
    /// Begin a graceful shutdown.
    pub fn stop(&self) {
        self.control.request_stop();
    }
}

/// The server.
pub struct Server {
    loops: Vec<Loop>,
    control: Arc<Control>,
    exports: Arc<ExportSet>,
}

impl Server {
    /// Register everything; nothing is served until [`Server::run`].
    pub fn new(opts: ServerOptions) -> io::Result<Self> {
        let single = opts.single.is_some();
        let n = match opts.threads {
            // One client needs one loop.
            _ if single => 1,
            0 => default_loops(),
            t => t,
        };
        let polls = (0..n)
            .map(|_| Poll::new())
            .collect::<io::Result<Vec<_>>>()?;
        let wakers = polls
            .iter()
            .map(Loop::make_waker)
            .collect::<io::Result<Vec<_>>>()?;
        let control = Arc::new(Control {
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            loads: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            wakers: wakers.clone(),
        });
        let limits = limits(&opts, n);
        let exports = Arc::new(opts.exports);
        let workers = if opts.workers == 0 {
            DEFAULT_WORKERS
        } else {
            opts.workers
        };
        let mut cfg = conn_config(
            &opts.handshake,
            opts.tls_mode,
            opts.oldstyle,
            opts.tls,
            &exports,
        );
        cfg.limits = limits;
        log_limits(&cfg, (n, workers), opts.handshake_limit, opts.busy_poll);
        let cfg = Arc::new(cfg);
        // A pool is needed where some export is called through the trait and
        // may block (a top-level `nbd` proxy is driven by the loop instead).
        let needs_pool = exports.list().any(|e| {
            e.backend.execution() == nbd_backends::Execution::Blocking
                && crate::proxy::as_proxy(&*e.backend).is_none()
        });
        let mut inboxes = Vec::with_capacity(n);
        let mut handoff = vec![None];
        for w in wakers.iter().skip(1) {
            let (tx, rx) = channel::<NewConn>();
            handoff.push(Some((tx, Arc::clone(w))));
            inboxes.push(rx);
        }
        let (_tx0, rx0) = channel::<NewConn>();
        inboxes.insert(0, rx0);
        let acceptor = acceptor(&polls[0], opts.listeners, handoff, &exports)?;
        let mut acceptor = Some(acceptor);
        let mut loops = Vec::with_capacity(n);
        for (i, (poll, inbox)) in polls.into_iter().zip(inboxes).enumerate() {
            let pool = if needs_pool {
                Some(Pool::new(workers, Arc::clone(&wakers[i]))?)
            } else {
                None
            };
            let registry = poll.registry().try_clone()?;
            loops.push(Loop::new(LoopParts {
                index: i,
                poll,
                control: Arc::clone(&control),
                cfg: Arc::clone(&cfg),
                shared: Shared::new(pool, registry),
                inbox,
                acceptor: acceptor.take(),
                single,
                handshake_limit: opts.handshake_limit,
                busy_poll: opts.busy_poll,
            }));
        }
        if let Some(stream) = opts.single {
            control.loads[0].fetch_add(1, Ordering::Relaxed);
            loops[0].add_conn(NewConn {
                stream,
                name: "stdin".to_owned(),
                peer: Peer::Other,
                id: control.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            });
        }
        Ok(Self {
            loops,
            control,
            exports,
        })
    }

    /// A handle that stops the server from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            control: Arc::clone(&self.control),
        }
    }

    /// The number of event loops.
    pub fn loops(&self) -> usize {
        self.loops.len()
    }

    /// Serve until a signal, [`StopHandle::stop`], or (with `-s`) the client
    /// leaving; then finish in-flight work, flush every export and return.
    ///
    /// # Errors
    /// A loop's poll failing.
    pub fn run(self) -> io::Result<()> {
        let mut loops = self.loops.into_iter();
        let first = loops.next();
        let threads: Vec<_> = loops
            .map(|l| {
                let name = format!("nbdd-loop-{}", l.index);
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || l.run())
            })
            .collect::<io::Result<_>>()?;
        let mut result = first.map_or(Ok(()), Loop::run);
        // Loop 0 ends on the stop flag (or -s's client leaving): the others
        // follow.
        self.control.request_stop();
        for t in threads {
            match t.join() {
                Ok(r) => result = result.and(r),
                Err(_) => result = Err(io::Error::other("an event loop panicked")),
            }
        }
        flush_exports(&self.exports);
        result
    }
}

/// The memory limits from `--max-connection-buffer` and `--max-memory`
/// (0: their defaults); each of `loops` event loops gets an equal share
/// of the global one.
fn limits(opts: &ServerOptions, loops: usize) -> crate::conn::Limits {
    let or = |v: usize, d: usize| if v == 0 { d } else { v };
    let total = or(opts.max_memory, default_max_memory());
    crate::conn::Limits {
        connection: or(
            opts.max_connection_buffer,
            crate::conn::DEFAULT_CONNECTION_BUDGET,
        ),
        per_loop: (total / loops.max(1)).max(1),
        ..crate::conn::Limits::default()
    }
}

/// `-v`: the effective limits, in one line (README's "Limits" table).
fn log_limits(
    cfg: &ConnConfig,
    (loops, workers): (usize, usize),
    handshake: Option<Duration>,
    busy_poll: Duration,
) {
    if !log::log_enabled!(log::Level::Info) {
        return;
    }
    let mib = |b: usize| format!("{}M", b >> 20);
    let l = &cfg.limits;
    let deadline = handshake.map_or_else(|| "none".to_owned(), |d| format!("{}s", d.as_secs()));
    log::info!(
        "limits: {loops} event loops, {workers} workers per loop, \
         max-connection-buffer {}, max-memory {} ({} per loop), \
         handshake-limit {deadline}, negotiation output {}, options {}, \
         request payload {}, busy-poll {}us",
        mib(l.connection),
        mib(l.per_loop.saturating_mul(loops)),
        mib(l.per_loop),
        mib(l.handshake_output),
        cfg.proto.handshake.max_options,
        mib(cfg.proto.transmission.max_unnegotiated_payload as usize),
        busy_poll.as_micros()
    );
}

/// The configuration every connection shares.
fn conn_config(
    handshake: &HandshakeConfig,
    tls_mode: TlsMode,
    oldstyle: bool,
    tls: Option<Arc<TlsServerConfig>>,
    exports: &Arc<ExportSet>,
) -> ConnConfig {
    let tls_mode = match tls_mode {
        TlsMode::Off => ProtoTlsMode::Off,
        TlsMode::On => ProtoTlsMode::On,
        TlsMode::Require => ProtoTlsMode::Require,
    };
    ConnConfig {
        limits: crate::conn::Limits::default(),
        exports: Arc::clone(exports),
        proto: ConnectionConfig {
            handshake: HandshakeConfig {
                tls: tls_mode,
                meta_contexts: crate::conn::META_CONTEXTS,
                // `nbdinfo --list` sends a few options per export (meta
                // contexts, INFO): a `dir=` of 1500 files needs more than
                // the default. The bytes a negotiation may produce stay
                // capped (Limits).
                max_options: handshake.max_options.max(
                    u32::try_from(exports.len())
                        .unwrap_or(u32::MAX)
                        .saturating_mul(4)
                        .saturating_add(64),
                ),
                ..*handshake
            },
            oldstyle,
            ..ConnectionConfig::default()
        },
        tls,
    }
}

/// Loop 0's listeners and signals, registered in its poll.
fn acceptor(
    poll: &Poll,
    listeners: Vec<Listener>,
    handoff: Vec<Option<(std::sync::mpsc::Sender<NewConn>, Arc<Waker>)>>,
    exports: &Arc<ExportSet>,
) -> io::Result<Acceptor> {
    // SIGHUP too: its default action would kill the server without
    // flushing or removing its socket (nbdkit also exits cleanly on it).
    let signals = signal_hook_mio::v1_0::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let mut a = Acceptor::new(listeners, signals, handoff, Arc::clone(exports));
    poll.registry()
        .register(a.signals_mut(), SIGNALS, Interest::READABLE)?;
    for (i, l) in a.listeners_mut().iter_mut().enumerate() {
        poll.registry()
            .register(l, Token(LISTENER_BASE + i), Interest::READABLE)?;
    }
    Ok(a)
}

/// Make every export durable at exit. An `nbd` proxy is skipped: its
/// upstreams flush on `NBD_CMD_DISC`, sent by each loop as it stops.
fn flush_exports(exports: &ExportSet) {
    for e in exports.list() {
        if crate::proxy::as_proxy(&*e.backend).is_some() {
            continue;
        }
        if let Err(err) = e.backend.flush() {
            log::warn!("flushing export '{}': {err}", e.name);
        }
    }
}
