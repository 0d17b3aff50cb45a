//! `cow`: copy-on-write. Writes land in a private sparse RAM overlay; the
//! inner backend is never modified (it is opened read-only), and nothing
//! written survives the server.
//!
//! nbdkit's parameters: `cow-block-size=` (a power of two from 4 KiB; the
//! default here is 4 KiB, nbdkit's 64 KiB, because the overlay is RAM and a
//! small block copies up less), `cow-on-read=true|false|/PATH` (reads copy
//! blocks into the overlay) and `cow-on-cache=true|false` (cache requests
//! do). All connections share the overlay, unless the layer below hands
//! each its own disk: then each gets its own overlay too.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use super::params::{FilterParams, Switch};
use crate::util::{check_read, check_write, len64, out_of_range, push_depth};
use crate::{Backend, Caps, DepthExtent, Extent, ExtentFlags, MemoryBackend, PAGE_SIZE, ZeroFlags};

/// How the overlay is filled.
#[derive(Debug, Clone)]
pub struct CowOptions {
    /// Overlay block size: a power of two, at least 4 KiB.
    pub block_size: u64,
    /// Copy blocks that are read into the overlay.
    pub on_read: Switch,
    /// Copy blocks named by cache requests into the overlay.
    pub on_cache: bool,
}

impl Default for CowOptions {
    fn default() -> Self {
        Self {
            block_size: PAGE_SIZE as u64,
            on_read: Switch::Always(false),
            on_cache: false,
        }
    }
}

/// Reads come from the overlay for blocks written (or copied up) since
/// start, from the inner backend otherwise.
pub struct Cow {
    inner: Arc<dyn Backend>,
    /// Shared by every connection's copy unless the layer below gives
    /// each its own disk ([`Backend::per_client_data`]).
    overlay: Arc<MemoryBackend>,
    opts: CowOptions,
    /// This copy stands on a per-connection handle: other connections do
    /// not see its overlay, so it is not multi-conn.
    private: bool,
    /// Indices of blocks owned by the overlay. Held for the whole of a
    /// write so that copying a block up and patching it is atomic.
    owned: Arc<Mutex<BTreeSet<u64>>>,
}

impl Cow {
    /// An overlay over `inner`, of its current size, with 4 KiB blocks.
    ///
    /// # Errors
    ///
    /// If the overlay cannot be created (size above 2^63-1).
    pub fn new(inner: Arc<dyn Backend>) -> io::Result<Self> {
        Self::with_options(inner, CowOptions::default())
    }

    /// An overlay over `inner` with `opts`.
    ///
    /// # Errors
    ///
    /// As [`Cow::new`].
    pub fn with_options(inner: Arc<dyn Backend>, opts: CowOptions) -> io::Result<Self> {
        let overlay = Arc::new(MemoryBackend::new(inner.size())?);
        Ok(Self {
            inner,
            overlay,
            opts,
            private: false,
            owned: Arc::new(Mutex::new(BTreeSet::new())),
        })
    }

    fn bs(&self) -> u64 {
        self.opts.block_size
    }

    /// `[start, end)` of block `block`, clipped to the export.
    fn block_range(&self, block: u64) -> (u64, u64) {
        let start = block * self.bs();
        (start, (start + self.bs()).min(self.overlay.size()))
    }

    /// Copy block `block` from the layer below into the overlay.
    fn copy_up(&self, owned: &mut BTreeSet<u64>, block: u64) -> io::Result<()> {
        let (start, end) = self.block_range(block);
        let mut copy = vec![0u8; (end - start) as usize];
        self.inner.read_at(start, &mut copy)?;
        self.overlay.write_at(start, &copy, false)?;
        owned.insert(block);
        Ok(())
    }

    /// Apply `op` to `[offset, end)` block by block, first copying up any
    /// block that is only partly covered and not yet in the overlay.
    fn modify(
        &self,
        offset: u64,
        end: u64,
        mut op: impl FnMut(u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        let mut pos = offset;
        while pos < end {
            let block = pos / self.bs();
            let (start, block_end) = self.block_range(block);
            let to = block_end.min(end);
            let whole = pos == start && to == block_end;
            if !whole && !owned.contains(&block) {
                self.copy_up(&mut owned, block)?;
            }
            op(pos, to - pos)?;
            owned.insert(block);
            pos = to;
        }
        Ok(())
    }
}

impl Cow {
    /// Push the base's depths for `[pos, pos + len)` into `out`, each one
    /// layer deeper (from extents: 2 where allocated, 0 in holes). False
    /// when `out` filled up.
    fn base_depth(
        &self,
        mut pos: u64,
        len: u64,
        out: &mut [DepthExtent],
        n: &mut usize,
    ) -> io::Result<bool> {
        let end = pos + len;
        let deep = self.inner.caps().contains(Caps::ALLOCATION_DEPTH);
        let mut buf = [DepthExtent::default(); 16];
        let mut ext = [Extent::default(); 16];
        while pos < end {
            let got = if deep {
                let k = self.inner.allocation_depth(pos, end - pos, &mut buf)?;
                for d in buf.iter_mut().take(k) {
                    d.depth = if d.depth == 0 {
                        0
                    } else {
                        d.depth.saturating_add(1)
                    };
                }
                k
            } else {
                let k = self.inner.extents(pos, end - pos, &mut ext)?;
                for (d, e) in buf.iter_mut().zip(&ext[..k]) {
                    let hole = e.flags.contains(ExtentFlags::HOLE);
                    *d = DepthExtent {
                        len: e.len,
                        depth: if hole { 0 } else { 2 },
                    };
                }
                k
            };
            let before = pos;
            for d in &buf[..got] {
                let l = d.len.min(end - pos);
                if l == 0 {
                    break;
                }
                if !push_depth(out, n, l, d.depth) {
                    return Ok(false);
                }
                pos += l;
            }
            if pos == before {
                // A base that describes nothing: call the rest allocated,
                // as the default `extents` does, rather than loop.
                return Ok(push_depth(out, n, end - pos, 2));
            }
        }
        Ok(true)
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let mut opts = CowOptions::default();
    if let Some(bs) = p.take_size("cow-block-size")? {
        if !bs.is_power_of_two() || bs < 4096 {
            return Err(p.bad(
                "cow-block-size",
                &bs.to_string(),
                "must be a power of 2, >= 4K",
            ));
        }
        opts.block_size = bs;
    }
    if let Some(s) = p.take_with("cow-on-read", Switch::parse)? {
        opts.on_read = s;
    }
    opts.on_cache = p.take_bool("cow-on-cache")?.unwrap_or(false);
    let name = p.filter();
    Ok(super::Spec::new(move |b| {
        let c = Cow::with_options(b, opts.clone()).map_err(|e| format!("{name} filter: {e}"))?;
        Ok(Arc::new(c))
    })
    .read_only_below())
}

impl super::Filter for Cow {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): reads of written blocks come from the overlay.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        if !inner.per_client_data() {
            // The same disk as every other connection's (the nbd proxy's
            // connection per client): one overlay for all, as nbdkit has.
            return Ok(Arc::new(Self {
                inner,
                overlay: Arc::clone(&self.overlay),
                opts: self.opts.clone(),
                private: self.private,
                owned: Arc::clone(&self.owned),
            }));
        }
        let mut c = Self::with_options(inner, self.opts.clone())?;
        c.private = true;
        Ok(Arc::new(c))
    }
    fn size(&self) -> u64 {
        self.overlay.size()
    }
    fn caps(&self) -> Caps {
        let caps = Caps::FLUSH
            | Caps::FUA
            | Caps::TRIM
            | Caps::WRITE_ZEROES
            | Caps::FAST_ZERO
            | Caps::CACHE
            | Caps::ALLOCATION_DEPTH;
        if self.private {
            caps
        } else {
            caps | Caps::MULTI_CONN
        }
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = check_read(offset, len64(buf), self.overlay.size())?;
        let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        let on_read = self.opts.on_read.on();
        let mut pos = offset;
        while pos < end {
            let block = pos / self.bs();
            let to = self.block_range(block).1.min(end);
            let part = &mut buf[(pos - offset) as usize..(to - offset) as usize];
            if !owned.contains(&block) && on_read {
                self.copy_up(&mut owned, block)?;
            }
            if owned.contains(&block) {
                self.overlay.read_at(pos, part)?;
            } else {
                self.inner.read_at(pos, part)?;
            }
            pos = to;
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        let end = check_write(offset, len64(data), self.overlay.size())?;
        self.modify(offset, end, |pos, len| {
            let from = (pos - offset) as usize;
            self.overlay
                .write_at(pos, &data[from..from + len as usize], false)
        })
    }
    /// Nothing is ever written below: flushing the RAM overlay is a no-op.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    /// Trim is a hint; the inner data stays visible.
    fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        check_read(offset, len, self.overlay.size()).map(drop)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> io::Result<()> {
        let end = check_write(offset, len, self.overlay.size())?;
        self.modify(offset, end, |pos, len| {
            self.overlay.write_zeroes(pos, len, ZeroFlags::MAY_TRIM)
        })
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.opts.on_cache {
            return self.inner.cache(offset, len);
        }
        let end = check_read(offset, len, self.overlay.size())?;
        let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        let (first, last) = (offset / self.bs(), end.div_ceil(self.bs()));
        for block in first..last {
            if !owned.contains(&block) {
                self.copy_up(&mut owned, block)?;
            }
        }
        Ok(())
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [crate::Extent]) -> io::Result<usize> {
        // Everything is data: the overlay hides what the layer below knows.
        crate::util::all_data(self.overlay.size(), offset, len, out)
    }
    /// Overlay blocks are depth 1; the rest is the base's depth plus one
    /// (qemu-nbd's numbering for an overlay on a chain).
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        let size = self.overlay.size();
        if offset > size {
            return Err(out_of_range());
        }
        let end = offset.saturating_add(len).min(size);
        let owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut n, mut pos) = (0, offset);
        while pos < end && n < out.len() {
            let block = pos / self.bs();
            let mine = owned.contains(&block);
            // Extend the run while blocks stay on the same side.
            let mut to = self.block_range(block).1.min(end);
            while to < end && owned.contains(&(to / self.bs())) == mine {
                to = (to + self.bs()).min(end);
            }
            let ok = if mine {
                push_depth(out, &mut n, to - pos, 1)
            } else {
                self.base_depth(pos, to - pos, out, &mut n)?
            };
            if !ok {
                break;
            }
            pos = to;
        }
        Ok(n)
    }
    fn resize(&self, _new_size: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Arc<dyn Backend> {
        let m = MemoryBackend::new(256 * 1024).unwrap();
        m.write_at(0, &[7; 256 * 1024], false).unwrap();
        Arc::new(m)
    }

    #[test]
    fn big_blocks_copy_up_around_partial_writes() {
        let b = base();
        let opts = CowOptions {
            block_size: 64 * 1024,
            ..CowOptions::default()
        };
        let c = Cow::with_options(Arc::clone(&b), opts).unwrap();
        c.write_at(65_536 + 10, &[1; 3], false).unwrap();
        let mut got = vec![0; 20];
        c.read_at(65_536, &mut got).unwrap();
        assert_eq!(&got[..10], &[7; 10]);
        assert_eq!(&got[10..13], &[1; 3]);
        // The base changes under an unowned block: visible; owned: not.
        b.write_at(0, &[9], false).unwrap();
        b.write_at(65_536, &[9], false).unwrap();
        let mut one = [0];
        c.read_at(0, &mut one).unwrap();
        assert_eq!(one, [9]);
        c.read_at(65_536, &mut one).unwrap();
        assert_eq!(one, [7], "the whole 64 KiB block was copied up");
    }

    #[test]
    fn on_read_and_on_cache_copy_blocks_up() {
        let b = base();
        let opts = CowOptions {
            on_read: Switch::Always(true),
            on_cache: true,
            ..CowOptions::default()
        };
        let c = Cow::with_options(Arc::clone(&b), opts).unwrap();
        let mut one = [0];
        c.read_at(5000, &mut one).unwrap();
        c.cache(100_000, 10).unwrap();
        b.write_zeroes(0, 256 * 1024, ZeroFlags::empty()).unwrap();
        c.read_at(4096, &mut one).unwrap();
        assert_eq!(one, [7], "read block was saved");
        c.read_at(100_000 / 4096 * 4096, &mut one).unwrap();
        assert_eq!(one, [7], "cached block was saved");
        c.read_at(0, &mut one).unwrap();
        assert_eq!(one, [0], "other blocks come from below");
    }
}
