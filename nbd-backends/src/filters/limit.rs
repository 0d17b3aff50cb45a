//! `limit`: at most `limit=N` clients at a time (default 1; 0 = no
//! limit); later ones are refused at connect ([`Backend::preconnect`])
//! and, should one slip through between two checks, at open.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::params::FilterParams;
use crate::{Backend, ClientInfo};

struct Shared {
    limit: usize,
    open: AtomicUsize,
}

impl Shared {
    fn refused(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("limit filter: too many clients (limit={})", self.limit),
        )
    }

    /// Count one more client, unless the limit is reached.
    fn reserve(&self) -> io::Result<()> {
        if self.limit == 0 {
            self.open.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| self.refused())
    }
}

/// Counts per-connection handles; the copy a connection holds gives its
/// place back when dropped.
pub struct Limit {
    inner: Arc<dyn Backend>,
    shared: Arc<Shared>,
    counted: bool,
}

impl Limit {
    /// At most `limit` clients at a time over `inner` (0: no limit).
    pub fn new(inner: Arc<dyn Backend>, limit: usize) -> Self {
        let shared = Arc::new(Shared {
            limit,
            open: AtomicUsize::new(0),
        });
        Self {
            inner,
            shared,
            counted: false,
        }
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        if self.counted {
            self.shared.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let limit = p.take_number::<usize>("limit")?.unwrap_or(1);
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(Limit::new(b, limit)))
    }))
}

impl super::Filter for Limit {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached forwarded: reads are the layer below's; the filter acts at connect.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        super::layer::forward_cached(self, offset, buf)
    }
    // try_write_cached forwarded: writes are the layer below's; the filter acts at connect.
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        super::layer::forward_cached_write(self, offset, data)
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        self.shared.reserve()?;
        Ok(Arc::new(Self {
            inner,
            shared: Arc::clone(&self.shared),
            counted: true,
        }))
    }
    fn preconnect(&self, client: &ClientInfo<'_>) -> io::Result<()> {
        let s = &self.shared;
        if s.limit > 0 && s.open.load(Ordering::SeqCst) >= s.limit {
            return Err(s.refused());
        }
        self.inner.preconnect(client)
    }
    /// Every connection gets a counted copy, whether or not the layer
    /// below has per-connection handles.
    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        self.shared.reserve()?;
        let copy = |inner| Self {
            inner,
            shared: Arc::clone(&self.shared),
            counted: true,
        };
        match super::layer::open_below(&self.inner, client) {
            Ok(inner) => Ok(Some(Arc::new(copy(inner)))),
            Err(e) => {
                self.shared.open.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryBackend, Peer};

    #[test]
    fn refuses_beyond_the_limit_until_one_leaves() {
        let l = Limit::new(Arc::new(MemoryBackend::new(4096).unwrap()), 2);
        let c = |id| ClientInfo {
            id,
            peer: Peer::Unix,
            export_name: "",
            tls: false,
        };
        let a = l.open(&c(1)).unwrap().unwrap();
        l.preconnect(&c(2)).unwrap();
        let b = l.open(&c(2)).unwrap().unwrap();
        let e = l.preconnect(&c(3)).unwrap_err();
        assert!(e.to_string().contains("limit=2"), "{e}");
        assert!(l.open(&c(3)).is_err());
        drop(a);
        let _c = l.open(&c(3)).unwrap().unwrap();
        b.write_at(0, &[1], false).unwrap();
        let unlimited = Limit::new(Arc::new(MemoryBackend::new(1).unwrap()), 0);
        let handles: Vec<_> = (0..100).map(|i| unlimited.open(&c(i)).unwrap()).collect();
        assert_eq!(handles.len(), 100);
    }
}
