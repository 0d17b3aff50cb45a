//! `cow`: copy-on-write. Writes land in a private sparse RAM overlay; the
//! inner backend is never modified (it may be read-only), and nothing
//! written survives the server.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use crate::util::{check_read, check_write, len64, out_of_range, push_depth};
use crate::{
    Backend, BlockSize, Caps, DepthExtent, Execution, Extent, ExtentFlags, MemoryBackend,
    PAGE_SIZE, ZeroFlags,
};

const BLOCK: u64 = PAGE_SIZE as u64;

/// Reads come from the overlay for blocks written since start, from the
/// inner backend otherwise.
pub struct Cow {
    inner: Arc<dyn Backend>,
    overlay: MemoryBackend,
    /// Indices of 4 KiB blocks owned by the overlay. Held for the whole of
    /// a write so that copying a block up and patching it is atomic.
    written: Mutex<BTreeSet<u64>>,
}

impl Cow {
    /// An overlay over `inner`, of its current size.
    ///
    /// # Errors
    ///
    /// If the overlay cannot be created (size above 2^63-1).
    pub fn new(inner: Arc<dyn Backend>) -> io::Result<Self> {
        let overlay = MemoryBackend::new(inner.size())?;
        Ok(Self {
            inner,
            overlay,
            written: Mutex::new(BTreeSet::new()),
        })
    }

    /// Apply `op` to `[offset, end)` block by block, first copying up any
    /// block that is only partly covered and not yet in the overlay.
    fn modify(
        &self,
        offset: u64,
        end: u64,
        mut op: impl FnMut(u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK;
            let block_end = ((block + 1) * BLOCK).min(self.overlay.size());
            let to = block_end.min(end);
            let whole = pos == block * BLOCK && to == block_end;
            if !whole && !written.contains(&block) {
                let mut copy = [0u8; PAGE_SIZE];
                let part = &mut copy[..(block_end - block * BLOCK) as usize];
                self.inner.read_at(block * BLOCK, part)?;
                self.overlay.write_at(block * BLOCK, part, false)?;
            }
            op(pos, to - pos)?;
            written.insert(block);
            pos = to;
        }
        Ok(())
    }
}

impl Cow {
    /// Push the base's depths for `[pos, pos + len)` into `out`, each one
    /// layer deeper. False when `out` filled up.
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
                buf.iter_mut().take(k).for_each(|d| {
                    d.depth = if d.depth == 0 {
                        0
                    } else {
                        d.depth.saturating_add(1)
                    };
                });
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
                // A base that describes nothing (no run, or empty runs):
                // call the rest allocated data, as the default `extents`
                // does, rather than ask again for ever.
                return Ok(push_depth(out, n, end - pos, 2));
            }
        }
        Ok(true)
    }
}

impl Backend for Cow {
    fn size(&self) -> u64 {
        self.overlay.size()
    }
    fn caps(&self) -> Caps {
        Caps::FLUSH
            | Caps::FUA
            | Caps::TRIM
            | Caps::WRITE_ZEROES
            | Caps::FAST_ZERO
            | Caps::CACHE
            | Caps::MULTI_CONN
            | Caps::ALLOCATION_DEPTH
    }
    fn block_size(&self) -> Option<BlockSize> {
        self.inner.block_size()
    }
    fn execution(&self) -> Execution {
        self.inner.execution()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = check_read(offset, len64(buf), self.size())?;
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK;
            let to = ((block + 1) * BLOCK).min(end);
            let part = &mut buf[(pos - offset) as usize..(to - offset) as usize];
            if written.contains(&block) {
                self.overlay.read_at(pos, part)?;
            } else {
                self.inner.read_at(pos, part)?;
            }
            pos = to;
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        let end = check_write(offset, len64(data), self.size())?;
        self.modify(offset, end, |pos, len| {
            let from = (pos - offset) as usize;
            self.overlay
                .write_at(pos, &data[from..from + len as usize], false)
        })
    }
    /// Trim is a hint; the inner data stays visible.
    fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        check_read(offset, len, self.size()).map(drop)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> io::Result<()> {
        let end = check_write(offset, len, self.size())?;
        self.modify(offset, end, |pos, len| {
            self.overlay.write_zeroes(pos, len, ZeroFlags::MAY_TRIM)
        })
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.cache(offset, len)
    }
    /// Overlay blocks are depth 1; the rest is the base's depth plus one
    /// (qemu-nbd's numbering for an overlay on a chain), or, for a base
    /// that only reports extents, 2 where it is allocated and 0 in holes.
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        let size = self.size();
        if offset > size {
            return Err(out_of_range());
        }
        let end = offset.saturating_add(len).min(size);
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let mut n = 0;
        let mut pos = offset;
        while pos < end && n < out.len() {
            let block = pos / BLOCK;
            let mine = written.contains(&block);
            // Extend the run while blocks stay on the same side.
            let mut to = ((block + 1) * BLOCK).min(end);
            while to < end && written.contains(&(to / BLOCK)) == mine {
                to = (to + BLOCK).min(end);
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
    fn description(&self) -> Option<String> {
        self.inner.description()
    }
}
