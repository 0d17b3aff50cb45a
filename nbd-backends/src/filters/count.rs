//! `count` (nbdkit 1.46): count the bytes read, written, zeroed and
//! trimmed, reported in the server log (`-v`) when the export is dropped
//! at exit. Per-connection copies share the counters.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::params::FilterParams;
use crate::{Backend, ZeroFlags};

/// `[read, written, zeroed, trimmed]` bytes, logged on drop.
#[derive(Default)]
struct Counters([AtomicU64; 4]);

impl Counters {
    fn add(&self, i: usize, n: u64) {
        self.0[i].fetch_add(n, Ordering::Relaxed);
    }

    fn line(&self) -> String {
        let v = |i: usize| self.0[i].load(Ordering::Relaxed);
        format!(
            "count filter: bytes read: {} written: {} zeroed: {} trimmed: {}",
            v(0),
            v(1),
            v(2),
            v(3)
        )
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        log::info!("{}", self.line());
    }
}

/// Forwards everything, counting successful bytes.
pub struct Count {
    inner: Arc<dyn Backend>,
    counters: Arc<Counters>,
}

impl Count {
    /// Count `inner`'s traffic.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            counters: Arc::default(),
        }
    }

    /// What would be logged now.
    pub fn report(&self) -> String {
        self.counters.line()
    }

    fn counted(&self, i: usize, n: u64, r: io::Result<()>) -> io::Result<()> {
        if r.is_ok() {
            self.counters.add(i, n);
        }
        r
    }
}

pub(crate) fn spec(_p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    Ok(super::Spec::new(|b| Ok(Arc::new(Count::new(b)))))
}

impl super::Filter for Count {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): reads are counted in read_at.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self {
            inner,
            counters: Arc::clone(&self.counters),
        }))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = buf.len() as u64;
        self.counted(0, n, self.inner.read_at(offset, buf))
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let n = data.len() as u64;
        self.counted(1, n, self.inner.write_at(offset, data, fua))
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.counted(2, len, self.inner.write_zeroes(offset, len, flags))
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.counted(3, len, self.inner.trim(offset, len, fua))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn counts_bytes_across_copies() {
        let c = Count::new(Arc::new(MemoryBackend::new(8192).unwrap()));
        let copy =
            super::super::Filter::reopen(&c, Arc::new(MemoryBackend::new(8192).unwrap())).unwrap();
        c.write_at(0, &[1; 100], false).unwrap();
        copy.read_at(0, &mut [0; 10]).unwrap();
        copy.write_zeroes(0, 7, ZeroFlags::empty()).unwrap();
        c.trim(0, 4096, false).unwrap();
        assert!(c.write_at(8192, &[1], false).is_err());
        assert_eq!(
            c.report(),
            "count filter: bytes read: 10 written: 100 zeroed: 7 trimmed: 4096"
        );
    }
}
