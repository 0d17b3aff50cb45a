//! `exitlast`: ask the server to exit when the last client disconnects
//! (never before the first one connects). Counts per-connection handles
//! ([`Backend::open`]), so it needs a driver that opens one per client;
//! the exit goes through [`ServerControl`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::params::FilterParams;
use crate::lifecycle::ServerControl;
use crate::{Backend, ClientInfo};

struct Shared {
    control: &'static ServerControl,
    open: AtomicUsize,
}

/// Counts connections; the last one to close asks the server to exit.
pub struct ExitLast {
    inner: Arc<dyn Backend>,
    shared: Arc<Shared>,
    counted: bool,
}

impl ExitLast {
    /// Over `inner`, reporting to `control`.
    pub fn new(inner: Arc<dyn Backend>, control: &'static ServerControl) -> Self {
        let shared = Arc::new(Shared {
            control,
            open: AtomicUsize::new(0),
        });
        Self {
            inner,
            shared,
            counted: false,
        }
    }

    fn copy(&self, inner: Arc<dyn Backend>) -> Self {
        self.shared.open.fetch_add(1, Ordering::SeqCst);
        Self {
            inner,
            shared: Arc::clone(&self.shared),
            counted: true,
        }
    }
}

impl Drop for ExitLast {
    fn drop(&mut self) {
        if self.counted && self.shared.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared
                .control
                .request_exit("exitlast filter: the last client disconnected");
        }
    }
}

pub(crate) fn spec(_p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    Ok(super::Spec::new(|b| {
        Ok(Arc::new(ExitLast::new(b, ServerControl::global())))
    }))
}

impl super::Filter for ExitLast {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached forwarded: reads are the layer below's; the filter counts connections.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        super::layer::forward_cached(self, offset, buf)
    }
    // try_write_cached forwarded: writes are the layer below's; the filter counts connections.
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        super::layer::forward_cached_write(self, offset, data)
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(self.copy(inner)))
    }
    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        let inner = super::layer::open_below(&self.inner, client)?;
        Ok(Some(Arc::new(self.copy(inner))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryBackend, Peer};

    #[test]
    fn exits_when_the_last_of_several_leaves() {
        let control: &'static ServerControl = Box::leak(Box::new(ServerControl::new()));
        let e = ExitLast::new(Arc::new(MemoryBackend::new(1).unwrap()), control);
        let c = ClientInfo {
            id: 1,
            peer: Peer::Unix,
            export_name: "",
            tls: false,
        };
        let a = e.open(&c).unwrap().unwrap();
        let b = e.open(&c).unwrap().unwrap();
        drop(a);
        assert!(!control.exit_requested());
        drop(b);
        assert!(control.exit_requested());
    }
}
