//! `cacheextents`: remember the last block-status answer of the layer
//! below and serve requests that start inside it from memory, for clients
//! that ask for one extent at a time over a slow layer (qemu-img convert
//! over curl). Any write, trim, zero or resize forgets it.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use super::params::FilterParams;
use crate::{Backend, Extent, ZeroFlags};

/// Extents asked of the layer below per request, at most.
const ASK: usize = 1024;

struct Cached {
    offset: u64,
    extents: Vec<Extent>,
}

/// Caches the last extents answer.
pub struct CacheExtents {
    inner: Arc<dyn Backend>,
    last: Mutex<Option<Cached>>,
}

impl CacheExtents {
    /// Over `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            last: Mutex::new(None),
        }
    }

    fn forget(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Copy the extents of `c` from `offset` (which they cover), clipped to
/// `len`, into `out`.
fn serve(c: &Cached, offset: u64, len: u64, out: &mut [Extent]) -> usize {
    let mut pos = c.offset;
    let mut n = 0;
    let end = offset.saturating_add(len);
    for e in &c.extents {
        let (start, stop) = (pos.max(offset), (pos + e.len).min(end));
        pos += e.len;
        if stop <= start {
            if pos >= end {
                break;
            }
            continue;
        }
        let Some(slot) = out.get_mut(n) else {
            break;
        };
        *slot = Extent {
            len: stop - start,
            flags: e.flags,
        };
        n += 1;
    }
    n
}

pub(crate) fn spec(_p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    Ok(super::Spec::new(|b| Ok(Arc::new(CacheExtents::new(b)))))
}

impl super::Filter for CacheExtents {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached forwarded: reads are the layer below's (reads do not touch the remembered extents).
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        super::layer::forward_cached(self, offset, buf)
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self::new(inner)))
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = last.as_ref() {
            let end = c.offset + c.extents.iter().map(|e| e.len).sum::<u64>();
            if (c.offset..end).contains(&offset) && len > 0 {
                return Ok(serve(c, offset, len, out));
            }
        }
        // Ask for many whatever the client asked for: that is the point.
        let mut got = vec![Extent::default(); ASK];
        let n = self.inner.extents(offset, len, &mut got)?;
        got.truncate(n);
        let c = Cached {
            offset,
            extents: got,
        };
        let served = serve(&c, offset, len, out);
        *last = Some(c);
        Ok(served)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.forget();
        self.inner.write_at(offset, data, fua)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.forget();
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.forget();
        self.inner.write_zeroes(offset, len, flags)
    }
    fn resize(&self, new_size: u64) -> io::Result<()> {
        self.forget();
        self.inner.resize(new_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::Stats;
    use crate::{ExtentFlags, MemoryBackend};

    #[test]
    fn one_extent_at_a_time_is_served_from_the_cache() {
        let m = MemoryBackend::new(1 << 20).unwrap();
        m.write_at(0, &[1; 8192], false).unwrap();
        m.write_at(65536, &[1; 4096], false).unwrap();
        let stats = Arc::new(Stats::new(Arc::new(m), None));
        let c = CacheExtents::new(stats.clone());
        let mut one = [Extent::default(); 1];
        let mut pos = 0;
        let mut seen = Vec::new();
        while pos < 1 << 20 {
            assert_eq!(c.extents(pos, (1 << 20) - pos, &mut one).unwrap(), 1);
            seen.push((pos, one[0].flags.contains(ExtentFlags::HOLE)));
            pos += one[0].len;
        }
        assert_eq!(
            seen,
            [(0, false), (8192, true), (65536, false), (69632, true)]
        );
        assert!(
            stats.report().contains("extents: 1 ops"),
            "{}",
            stats.report()
        );
        c.write_at(8192, &[2], false).unwrap();
        c.extents(0, 10, &mut one).unwrap();
        assert!(stats.report().contains("extents: 2 ops"), "a write forgets");
    }
}
