//! nbdd's driver: a single-threaded mio event loop that owns sockets, TLS
//! and timers, drives `nbd-proto` state machines over many connections and
//! calls `nbd-backends` for storage. The `nbdd` binary (`main.rs`) parses the
//! command line and calls [`server::Server`].

// Module owners while the crate is being built in parallel:
// cli, listen, errno, main.rs, activation, captive, daemon, logging,
// notify, banner, errors, exports, info, man, privileges, tlsdefault: startup; tls: TLS sessions;
// server, conn, buffer, workers, dispatch: the event loop.
pub(crate) mod acceptor;
pub mod activation;
// aio: asynchronous backends (rbd) driven by the event loop.
pub mod aio;
pub mod banner;
pub mod buffer;
pub mod captive;
pub mod cli;
pub mod conn;
pub mod daemon;
pub mod dispatch;
pub mod errno;
pub mod errors;
pub(crate) mod event_loop;
pub mod exports;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod inflow;
pub mod info;
pub mod listen;
pub mod logging;
pub mod man;
pub mod notify;
pub mod outq;
pub mod privileges;
pub mod proxy;
pub mod server;
pub mod tls;
pub mod tlsdefault;
pub mod trace;
pub mod vsock;
pub mod workers;
