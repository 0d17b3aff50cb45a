//! `readahead`: after each read, ask the layer below to prefetch what
//! follows (a cache request), from a background thread so the read is not
//! delayed. The window starts at the read's size (at least 64 KiB) and
//! doubles while reads stay sequential, up to 4 MiB; a jump resets it.
//! Useful only over a layer that acts on cache requests: start-up warns
//! otherwise (add `--filter=cache` after it).

use std::io;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};

use super::params::FilterParams;
use crate::{Backend, Caps};

const MIN_WINDOW: u64 = 64 * 1024;
const MAX_WINDOW: u64 = 4 * 1024 * 1024;
/// Prefetches waiting for the thread; more are dropped (it is a hint).
const QUEUE: usize = 4;

struct State {
    /// Where the last read ended and the current window.
    last_end: u64,
    window: u64,
    /// Started on the first read.
    tx: Option<SyncSender<(u64, u64)>>,
}

/// Prefetches after sequential reads.
pub struct ReadAhead {
    inner: Arc<dyn Backend>,
    state: Mutex<State>,
}

impl ReadAhead {
    /// Prefetch for `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            state: Mutex::new(State {
                last_end: u64::MAX,
                window: MIN_WINDOW,
                tx: None,
            }),
        }
    }

    fn start(&self) -> Option<SyncSender<(u64, u64)>> {
        let (tx, rx) = mpsc::sync_channel::<(u64, u64)>(QUEUE);
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("readahead".into())
            .spawn(move || {
                // Ends when the filter (the sender) is dropped.
                for (offset, len) in rx {
                    let _ = inner.cache(offset, len);
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                log::warn!("readahead filter: cannot start its thread: {e}");
                None
            }
        }
    }

    /// Queue the prefetch that follows a read of `[offset, end)`.
    fn after_read(&self, offset: u64, end: u64) {
        let size = self.inner.size();
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.window = if offset == s.last_end {
            (s.window * 2).min(MAX_WINDOW)
        } else {
            (end - offset).clamp(MIN_WINDOW, MAX_WINDOW)
        };
        s.last_end = end;
        let len = s.window.min(size.saturating_sub(end));
        if len == 0 {
            return;
        }
        if s.tx.is_none() {
            s.tx = self.start();
        }
        if let Some(tx) = &s.tx {
            // Full queue: the thread is behind, and this hint is dropped.
            let _ = tx.try_send((end, len));
        }
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let name = p.filter();
    Ok(super::Spec::new(move |b| {
        if !b.caps().contains(Caps::CACHE) {
            log::warn!(
                "{name} filter: the layer below does nothing with cache requests; \
                 add --filter=cache after --filter=readahead"
            );
        }
        Ok(Arc::new(ReadAhead::new(b)))
    }))
}

impl super::Filter for ReadAhead {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): sequential reads start a prefetch.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self::new(inner)))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)?;
        self.after_read(offset, offset + buf.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;
    use crate::filters::Stats;

    #[test]
    fn sequential_reads_prefetch_a_growing_window() {
        let stats = Arc::new(Stats::new(
            Arc::new(MemoryBackend::new(64 << 20).unwrap()),
            None,
        ));
        let r = ReadAhead::new(stats.clone());
        let mut buf = vec![0; 4096];
        for i in 0..4 {
            r.read_at(i * 4096, &mut buf).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(r.state.lock().unwrap().window, 8 * MIN_WINDOW);
        r.read_at(40 << 20, &mut buf).unwrap();
        assert_eq!(r.state.lock().unwrap().window, MIN_WINDOW, "a jump resets");
        drop(r);
        let t = std::time::Instant::now();
        while !stats.report().contains("cache: 5 ops") && t.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let report = stats.report();
        assert!(report.contains("cache: 5 ops"), "{report}");
    }
}
