//! `cache`: keep blocks of the layer below in a temporary file under
//! `$TMPDIR` (default `/var/tmp`), for slow or remote layers.
//!
//! - `cache=writeback` (default): writes stay in the cache, dirty, until a
//!   flush, a FUA write or an eviction writes them below;
//!   `cache=writethrough`: writes go below at once; `cache=unsafe`: like
//!   writeback, but flushes and FUA are ignored.
//! - `cache-on-read=true|/PATH`: blocks read are kept too (else only
//!   writes and cache requests fill the cache).
//! - `cache-max-size=`: once the cache holds more than
//!   `cache-high-threshold`% of it (95), least recently used blocks are
//!   evicted (dirty ones written below first) down to
//!   `cache-low-threshold`% (80).
//! - `cache-min-block-size=`: the block size (64 KiB).
//!
//! Zeroes and trims write back the dirty blocks they touch, drop the cached
//! ones and go below. Block status shows dirty blocks as data. One lock
//! covers the cache: it is for layers slower than a local file, where
//! serialising cache bookkeeping costs nothing measurable.

mod store;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::params::{FilterParams, Switch};
use crate::util::{check_read, check_write, len64, out_of_range};
use crate::{Backend, Caps, Execution, Extent, ExtentFlags, ZeroFlags};
use store::Store;

/// `cache=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Writes stay in the cache until flushed.
    Writeback,
    /// Writes go below at once.
    Writethrough,
    /// Flushes and FUA are ignored.
    Unsafe,
}

/// The cache's settings.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// `cache=`.
    pub mode: CacheMode,
    /// `cache-min-block-size=`.
    pub block_size: u64,
    /// `cache-max-size=`.
    pub max_size: Option<u64>,
    /// `cache-high-threshold=` (percent).
    pub high: u64,
    /// `cache-low-threshold=` (percent).
    pub low: u64,
    /// `cache-on-read=`.
    pub on_read: Switch,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            mode: CacheMode::Writeback,
            block_size: 64 * 1024,
            max_size: None,
            high: 95,
            low: 80,
            on_read: Switch::Always(false),
        }
    }
}

/// Caches the layer below in a temporary file.
pub struct Cache {
    inner: Arc<dyn Backend>,
    opts: Arc<CacheOptions>,
    size: u64,
    /// Evict above this many blocks, down to `low` blocks.
    limits: Option<(usize, usize)>,
    /// Stands on a per-connection handle: not shared, so not multi-conn.
    private: bool,
    /// Shared by every connection's copy unless the layer below gives
    /// each its own disk ([`Backend::per_client_data`]).
    store: Arc<Mutex<Store>>,
}

impl Cache {
    /// A cache over `inner`.
    ///
    /// # Errors
    ///
    /// Bad settings, or the temporary file cannot be created.
    pub fn new(inner: Arc<dyn Backend>, opts: Arc<CacheOptions>) -> Result<Self, String> {
        let bs = opts.block_size;
        let limits = match opts.max_size {
            None => None,
            Some(max) if max < bs => {
                return Err(format!(
                    "cache filter: cache-max-size={max} is smaller than the block size ({bs})"
                ));
            }
            Some(max) => {
                let blocks = max / bs;
                let high = (blocks * opts.high / 100).max(1) as usize;
                let low = (blocks * opts.low / 100).clamp(1, high as u64) as usize;
                Some((high, low))
            }
        };
        let file = crate::util::temp_file("cache").map_err(|e| format!("cache filter: {e}"))?;
        Ok(Self {
            size: inner.size(),
            inner,
            opts,
            limits,
            private: false,
            store: Arc::new(Mutex::new(Store::new(file, bs))),
        })
    }

    fn bs(&self) -> u64 {
        self.opts.block_size
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `[start, end)` of block `b`.
    fn span(&self, b: u64) -> (u64, u64) {
        let start = b * self.bs();
        (start, (start + self.bs()).min(self.size))
    }

    /// Blocks touching `[offset, end)`.
    fn blocks(&self, offset: u64, end: u64) -> std::ops::Range<u64> {
        offset / self.bs()..end.div_ceil(self.bs())
    }

    /// Write `data` below durably: FUA if it has it, else write and flush.
    fn write_below_durably(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let caps = self.inner.caps();
        if caps.contains(Caps::FUA) {
            return self.inner.write_at(offset, data, true);
        }
        self.inner.write_at(offset, data, false)?;
        if caps.contains(Caps::FLUSH) {
            self.inner.flush()?;
        }
        Ok(())
    }

    /// Write dirty block `b` below and mark it clean.
    fn write_back(&self, st: &mut Store, b: u64) -> io::Result<()> {
        let (start, end) = self.span(b);
        let mut data = vec![0u8; (end - start) as usize];
        st.read(b, 0, &mut data)?;
        self.inner.write_at(start, &data, false)?;
        st.clean(b);
        Ok(())
    }

    /// Evict down to the low threshold once above the high one.
    fn evict(&self, st: &mut Store) -> io::Result<()> {
        let Some((high, low)) = self.limits else {
            return Ok(());
        };
        if st.len() <= high {
            return Ok(());
        }
        while st.len() > low {
            let Some(b) = st.oldest() else {
                break;
            };
            if st.is_dirty(b) {
                self.write_back(st, b)?;
            }
            st.remove(b);
        }
        Ok(())
    }

    /// Read `[from, to)` of uncached blocks from below into `out`; with
    /// `keep`, whole blocks are read and cached (clean).
    fn fill(
        &self,
        st: &mut Store,
        from: u64,
        to: u64,
        out: &mut [u8],
        keep: bool,
    ) -> io::Result<()> {
        if !keep {
            return self.inner.read_at(from, out);
        }
        let (first, last) = (from / self.bs(), (to - 1) / self.bs());
        let (start, end) = (self.span(first).0, self.span(last).1);
        let mut whole = vec![0u8; (end - start) as usize];
        self.inner.read_at(start, &mut whole)?;
        out.copy_from_slice(&whole[(from - start) as usize..(to - start) as usize]);
        for b in first..=last {
            let (s, e) = self.span(b);
            st.put(b, &whole[(s - start) as usize..(e - start) as usize], false)?;
        }
        Ok(())
    }

    /// Serve `[offset, offset + buf.len())`: cached blocks from the file,
    /// runs of uncached ones with one read below each.
    fn read_locked(
        &self,
        st: &mut Store,
        offset: u64,
        buf: &mut [u8],
        keep: bool,
    ) -> io::Result<()> {
        let end = offset + len64(buf);
        let mut pos = offset;
        while pos < end {
            let b = pos / self.bs();
            if st.contains(b) {
                let to = self.span(b).1.min(end);
                let part = &mut buf[(pos - offset) as usize..(to - offset) as usize];
                st.read(b, pos - self.span(b).0, part)?;
                pos = to;
                continue;
            }
            let mut to = self.span(b).1.min(end);
            while to < end && !st.contains(to / self.bs()) {
                to = self.span(to / self.bs()).1.min(end);
            }
            let part = &mut buf[(pos - offset) as usize..(to - offset) as usize];
            self.fill(st, pos, to, part, keep)?;
            pos = to;
        }
        Ok(())
    }

    /// The extents from `offset`: the layer below's up to the next dirty
    /// block, or one data extent for a run of dirty blocks.
    fn extents_once(&self, offset: u64, end: u64, out: &mut [Extent]) -> io::Result<usize> {
        let dirty = self
            .lock()
            .dirty_in(offset / self.bs(), end.div_ceil(self.bs()));
        let Some(&first) = dirty.first() else {
            return self.inner.extents(offset, end - offset, out);
        };
        let start = first * self.bs();
        if start > offset {
            return self.inner.extents(offset, start - offset, out);
        }
        let run = dirty
            .iter()
            .enumerate()
            .take_while(|&(i, &b)| b == first + i as u64)
            .count() as u64;
        out[0] = Extent {
            len: self.span(first + run - 1).1.min(end) - offset,
            flags: ExtentFlags::empty(),
        };
        Ok(1)
    }

    /// Write back the dirty blocks touching `[offset, end)` and drop every
    /// cached one, before a zero or trim goes below.
    fn drop_range(&self, st: &mut Store, offset: u64, end: u64) -> io::Result<()> {
        for b in self.blocks(offset, end) {
            if st.is_dirty(b) {
                self.write_back(st, b)?;
            }
            st.remove(b);
        }
        Ok(())
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let d = CacheOptions::default();
    let mode = match p.take_choice("cache", &["writeback", "writethrough", "unsafe"])? {
        Some("writethrough") => CacheMode::Writethrough,
        Some("unsafe") => CacheMode::Unsafe,
        _ => CacheMode::Writeback,
    };
    let block_size = match p.take_size("cache-min-block-size")? {
        Some(bs) if !bs.is_power_of_two() || bs < 4096 => {
            let v = bs.to_string();
            return Err(p.bad("cache-min-block-size", &v, "must be a power of 2, >= 4k"));
        }
        Some(bs) => bs,
        None => d.block_size,
    };
    let max_size = p.take_size("cache-max-size")?;
    let high = p
        .take_number::<u64>("cache-high-threshold")?
        .unwrap_or(d.high);
    let low = p
        .take_number::<u64>("cache-low-threshold")?
        .unwrap_or(d.low);
    if !(0 < low && low < high && high <= 100) {
        return Err(p.error(format_args!(
            "need 0 < cache-low-threshold ({low}) < cache-high-threshold ({high}) <= 100"
        )));
    }
    let on_read = p
        .take_with("cache-on-read", Switch::parse)?
        .unwrap_or(d.on_read);
    let opts = Arc::new(CacheOptions {
        mode,
        block_size,
        max_size,
        high,
        low,
        on_read,
    });
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(Cache::new(b, Arc::clone(&opts))?))
    }))
}

impl super::Filter for Cache {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): reads are served from and fill the cache file.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        if !inner.per_client_data() {
            // The same disk as every other connection's: one cache for all.
            return Ok(Arc::new(Self {
                size: self.size,
                inner,
                opts: Arc::clone(&self.opts),
                limits: self.limits,
                private: self.private,
                store: Arc::clone(&self.store),
            }));
        }
        let mut c = Self::new(inner, Arc::clone(&self.opts)).map_err(io::Error::other)?;
        c.private = true;
        Ok(Arc::new(c))
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn caps(&self) -> Caps {
        let below = self.inner.caps();
        let mut caps = (below | Caps::CACHE | Caps::FLUSH) - Caps::RESIZE - Caps::ALLOCATION_DEPTH;
        if below.intersects(Caps::FUA | Caps::FLUSH) || self.opts.mode == CacheMode::Unsafe {
            caps |= Caps::FUA;
        }
        // Every connection goes through this one cache; a private copy's
        // dirty blocks are seen by no other connection.
        if self.private {
            caps - Caps::MULTI_CONN
        } else {
            caps | Caps::MULTI_CONN
        }
    }
    fn execution(&self) -> Execution {
        Execution::Blocking
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_read(offset, len64(buf), self.size)?;
        let keep = self.opts.on_read.on();
        let mut st = self.lock();
        self.read_locked(&mut st, offset, buf, keep)?;
        if keep {
            self.evict(&mut st)?;
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let end = check_write(offset, len64(data), self.size)?;
        let mode = self.opts.mode;
        let through = mode == CacheMode::Writethrough || (fua && mode == CacheMode::Writeback);
        let mut st = self.lock();
        if through {
            if fua {
                self.write_below_durably(offset, data)?;
            } else {
                self.inner.write_at(offset, data, false)?;
            }
        }
        for b in self.blocks(offset, end) {
            let (start, stop) = self.span(b);
            let (from, to) = (offset.max(start), end.min(stop));
            let part = &data[(from - offset) as usize..(to - offset) as usize];
            if st.contains(b) {
                st.patch(b, from - start, part, !through)?;
            } else if through {
                // Written below; nothing to keep.
            } else if from == start && to == stop {
                st.put(b, part, true)?;
            } else {
                let mut block = vec![0u8; (stop - start) as usize];
                self.inner.read_at(start, &mut block)?;
                block[(from - start) as usize..(to - start) as usize].copy_from_slice(part);
                st.put(b, &block, true)?;
            }
        }
        self.evict(&mut st)
    }
    fn flush(&self) -> io::Result<()> {
        if self.opts.mode == CacheMode::Unsafe {
            return Ok(());
        }
        let mut st = self.lock();
        for b in st.all_dirty() {
            self.write_back(&mut st, b)?;
        }
        drop(st);
        if self.inner.caps().contains(Caps::FLUSH) {
            self.inner.flush()?;
        }
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        let end = check_write(offset, len, self.size)?;
        let mut st = self.lock();
        self.drop_range(&mut st, offset, end)?;
        self.inner
            .trim(offset, len, fua && self.opts.mode != CacheMode::Unsafe)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        let end = check_write(offset, len, self.size)?;
        let mut st = self.lock();
        self.drop_range(&mut st, offset, end)?;
        let mut flags = flags;
        if self.opts.mode == CacheMode::Unsafe {
            flags -= ZeroFlags::FUA;
        }
        self.inner.write_zeroes(offset, len, flags)
    }
    /// Prefetch into the cache; the layer below only sees reads.
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = check_read(offset, len, self.size)?;
        let mut st = self.lock();
        for b in self.blocks(offset, end) {
            if !st.contains(b) {
                let (start, stop) = self.span(b);
                let mut block = vec![0u8; (stop - start) as usize];
                self.inner.read_at(start, &mut block)?;
                st.put(b, &block, false)?;
            }
        }
        self.evict(&mut st)
    }
    /// The layer below's answer, with dirty blocks as data.
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        if offset > self.size {
            return Err(out_of_range());
        }
        let end = offset.saturating_add(len).min(self.size);
        crate::util::extents_loop(offset, end, out, |pos, end, buf| {
            self.extents_once(pos, end, buf)
        })
    }
    /// Depth below means nothing here (not advertised).
    fn allocation_depth(
        &self,
        _offset: u64,
        _len: u64,
        _out: &mut [crate::DepthExtent],
    ) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    fn resize(&self, _new_size: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests;
