//! Accepting connections (loop 0): listeners, signals, and the hand-off of
//! each accepted connection to the least loaded event loop.
//!
//! Out of descriptors (`EMFILE`/`ENFILE`), accept fails while clients wait
//! in the backlog; the listener is edge-triggered, so no new event would
//! come for them. Accepting is then retried on a short timer (logged once
//! per burst) while established clients are served; it never spins.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use mio::Waker;
use nbd_backends::{ClientInfo, ExportSet};

use crate::event_loop::NewConn;
use crate::listen::Listener;
use crate::server::Control;

/// How long to wait before accepting again after running out of
/// descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Loop 0's listening side.
pub(crate) struct Acceptor {
    listeners: Vec<Listener>,
    signals: signal_hook_mio::v1_0::Signals,
    /// Per loop (index 0 = this loop, served directly): where to send.
    handoff: Vec<Option<(Sender<NewConn>, Arc<Waker>)>>,
    exports: Arc<ExportSet>,
    /// Accept again at this time (after EMFILE and friends).
    retry: Option<Instant>,
    /// The current burst of accept failures was logged.
    logged: bool,
}

/// Errors that mean "out of resources for now", not "this client failed".
fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl Acceptor {
    pub(crate) fn new(
        listeners: Vec<Listener>,
        signals: signal_hook_mio::v1_0::Signals,
        handoff: Vec<Option<(Sender<NewConn>, Arc<Waker>)>>,
        exports: Arc<ExportSet>,
    ) -> Self {
        Self {
            listeners,
            signals,
            handoff,
            exports,
            retry: None,
            logged: false,
        }
    }

    /// The listeners, registered by the caller in loop 0's poll.
    pub(crate) fn listeners_mut(&mut self) -> &mut [Listener] {
        &mut self.listeners
    }

    pub(crate) fn signals_mut(&mut self) -> &mut signal_hook_mio::v1_0::Signals {
        &mut self.signals
    }

    /// True when a stop signal arrived.
    pub(crate) fn signalled(&mut self) -> bool {
        let mut any = false;
        for sig in self.signals.pending() {
            log::info!("signal {sig}: shutting down");
            any = true;
        }
        any
    }

    /// Stop accepting (shutdown).
    pub(crate) fn close_listeners(&mut self) {
        self.listeners.clear();
        self.retry = None;
    }

    /// When accepting should be retried, if it failed for lack of resources.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.retry
    }

    /// Retry accepting on every listener if the timer is due; returns the
    /// connections for loop 0.
    pub(crate) fn retry_due(&mut self, control: &Control) -> Vec<NewConn> {
        match self.retry {
            Some(t) if Instant::now() >= t => {
                self.retry = None;
                (0..self.listeners.len())
                    .flat_map(|i| self.accept(i, control))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// Accept on listener `i` until it would block; hand each connection to
    /// the least loaded loop. Returns loop 0's share.
    pub(crate) fn accept(&mut self, i: usize, control: &Control) -> Vec<NewConn> {
        let mut mine = Vec::new();
        loop {
            let Some(l) = self.listeners.get(i) else {
                return mine;
            };
            match l.accept() {
                Ok((stream, name, peer)) => {
                    self.logged = false;
                    let id = control.next_id.fetch_add(1, Ordering::Relaxed) + 1;
                    if !self.admit(id, &name, peer) {
                        let _ = stream.shutdown();
                        continue;
                    }
                    let n = NewConn {
                        stream,
                        name,
                        peer,
                        id,
                    };
                    if let Some(n) = self.hand_off(n, control) {
                        mine.push(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return mine,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !self.logged {
                        log::warn!("accept: {e}; retrying every {ACCEPT_RETRY:?}");
                        self.logged = true;
                    }
                    if exhausted(&e) {
                        self.retry = Some(Instant::now() + ACCEPT_RETRY);
                        return mine;
                    }
                    // A client-side failure (ECONNABORTED...): next one.
                }
            }
        }
    }

    /// nbdkit's preconnect: the export (a filter such as `ip`) may refuse
    /// the client before a byte is exchanged. With several exports the
    /// default one decides; each export's `open` decides again at GO.
    fn admit(&self, id: u64, name: &str, peer: nbd_backends::Peer) -> bool {
        let Some(e) = self.exports.default_export() else {
            return true;
        };
        let client = ClientInfo {
            id,
            peer,
            export_name: "",
            tls: false,
        };
        match e.backend.preconnect(&client) {
            Ok(()) => true,
            Err(err) => {
                log::info!("{name}: refused: {err}");
                false
            }
        }
    }

    /// Send `n` to the least loaded loop; `Some(n)` when that is loop 0.
    fn hand_off(&self, n: NewConn, control: &Control) -> Option<NewConn> {
        let target = (0..control.loads.len())
            .min_by_key(|&i| control.loads[i].load(Ordering::Relaxed))
            .unwrap_or(0);
        control.loads[target].fetch_add(1, Ordering::Relaxed);
        match self.handoff.get(target) {
            Some(Some((tx, waker))) => {
                match tx.send(n) {
                    Ok(()) => {
                        let _ = waker.wake();
                        None
                    }
                    // That loop has exited (shutdown): serve it here.
                    Err(std::sync::mpsc::SendError(n)) => {
                        control.loads[target].fetch_sub(1, Ordering::Relaxed);
                        control.loads[0].fetch_add(1, Ordering::Relaxed);
                        Some(n)
                    }
                }
            }
            _ => Some(n),
        }
    }
}
