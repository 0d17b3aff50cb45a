//! How a backend asks the server to stop (nbdkit's `nbdkit_shutdown`),
//! for the `exitlast` and `exitwhen` filters.
//!
//! The filters call [`ServerControl::request_exit`] on the process-wide
//! [`ServerControl::global`]; the driver registers, once it can stop,
//! what stopping means with [`ServerControl::on_exit_request`]:
//!
//! ```no_run
//! # struct Stop; impl Stop { fn stop(&self) {} }
//! # let stop = Stop;
//! nbd_backends::lifecycle::ServerControl::global().on_exit_request(move || stop.stop());
//! ```
//!
//! A request made before the hook is registered (an `exitwhen` event that
//! already happened at start-up) is remembered and runs the hook as soon as
//! it is registered. The stop should be graceful (as for SIGTERM): stop
//! accepting, finish what is in flight, flush, exit 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

type Hook = Box<dyn Fn() + Send + Sync>;

/// A latch: "the server should exit", plus the driver's hooks.
pub struct ServerControl {
    requested: AtomicBool,
    hooks: Mutex<Vec<Hook>>,
}

static GLOBAL: ServerControl = ServerControl::new();

impl Default for ServerControl {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerControl {
    /// A fresh latch (tests use their own; the server uses [`Self::global`]).
    pub const fn new() -> Self {
        Self {
            requested: AtomicBool::new(false),
            hooks: Mutex::new(Vec::new()),
        }
    }

    /// The one the filters built from the command line use.
    pub fn global() -> &'static Self {
        &GLOBAL
    }

    /// Ask the server to exit; `why` is logged. Hooks run once, on the
    /// first request, on the calling thread: they must only signal.
    pub fn request_exit(&self, why: &str) {
        // The flag is set under the lock so that a hook registered at the
        // same time runs exactly once (here or in on_exit_request).
        let hooks = self.hooks.lock().unwrap_or_else(PoisonError::into_inner);
        if self.requested.swap(true, Ordering::SeqCst) {
            return;
        }
        log::info!("exiting: {why}");
        for h in hooks.iter() {
            h();
        }
    }

    /// True once an exit was requested.
    pub fn exit_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Run `hook` when an exit is requested (at once if one already was).
    pub fn on_exit_request(&self, hook: impl Fn() + Send + Sync + 'static) {
        let mut hooks = self.hooks.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under the lock, where request_exit sets the flag.
        if self.exit_requested() {
            hook();
        }
        hooks.push(Box::new(hook));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn hooks_run_once_whenever_registered() {
        let c = ServerControl::new();
        let n = Arc::new(AtomicU32::new(0));
        let n1 = Arc::clone(&n);
        c.on_exit_request(move || {
            n1.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!c.exit_requested());
        c.request_exit("test");
        c.request_exit("again");
        assert!(c.exit_requested());
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let n2 = Arc::clone(&n);
        c.on_exit_request(move || {
            n2.fetch_add(10, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 11, "late hook runs at once");
    }
}
