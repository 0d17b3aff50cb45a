//! A sparse RAM disk, shared by every event loop without a global lock.
//!
//! Pages are allocated on the first write that puts non-zero bytes in them
//! and freed again as soon as they hold only zeroes (after trim,
//! write_zeroes, a zero write or a shrink), so an export of any size up to
//! 2^63-1 bytes costs nothing until it is written.
//!
//! **Page size: 4 KiB.** It equals the block size clients prefer (and the
//! `preferred` NBD block size we advertise), so a typical 4 KiB random write
//! touches exactly one page and allocates no more than it stores; with
//! 32 KiB pages the same workload would use up to 8× the memory and every
//! small write into a fresh page would zero-fill 28 KiB it does not need.
//!
//! **Concurrency.** nbdd's event loops call this backend inline from
//! several threads at once. The page table ([`table`]) is a radix tree that
//! lookups walk without locking; each page has its own lock ([`leaf`]), so
//! requests on different pages never wait for each other, and a reader of
//! a page sees a concurrent page-aligned write to it wholly or not at all
//! (a request spanning pages is atomic page by page, which NBD allows: it
//! leaves overlapping in-flight requests unordered). Every write is done
//! under its page lock and a completed write is seen by any request that
//! starts after it, on any thread (MULTI_CONN). Resizes exclude writes
//! through a per-thread split lock ([`gate`]).
//!
//! **Zero scan.** A write into a page that exists copies, then asks whether
//! its data was zero: real data answers in its first 64-byte block, and
//! only zero data makes the whole page be scanned, to free it. A write into
//! a hole scans its data once to decide whether to allocate. So the scan
//! costs a few nanoseconds except for zero data, where it is the point.
//! Skipping it for existing pages (freeing lazily, on trim) would save
//! nothing measurable and would leave zeroed pages allocated and reported
//! as data, so sparseness stays exact: a page is freed the moment it is
//! all zero.
//!
//! **Memory.** Beyond the pages: a 1.6 KiB leaf (a word of bits, then 24
//! bytes of slot per page) for each 256 KiB of address space written, 0.6%
//! for dense data, and an 8 KiB interior node per 128 MiB written (fewer,
//! shared, higher up). Scattered small writes are the worst case: a 4 KiB
//! write into untouched space costs a leaf and up to four nodes besides its
//! page (9× its data in a 2^63-byte export; 3.4× in a 1 TiB one, whose
//! lowest level has 8,192 nodes, 64 MiB, at most). Nodes outlive the pages
//! they held (see [`table`]): once everything is trimmed, what stays is a
//! leaf per 256 KiB once written, and the nodes above.

mod gate;
mod leaf;
mod table;
#[cfg(test)]
mod tests;

use std::io;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::util::{check_read, check_write, is_zero, len64, out_of_range, push_extent};
use crate::{
    Backend, Caps, Execution, Extent, ExtentFlags, Page, Piece, ZeroFlags, size::MAX_SIZE,
};
use gate::Gate;
pub use leaf::PAGE_SIZE;
use leaf::{LEAF_BITS, Leaf, PAGE, mask};
use table::{LEAVES, Level, Root, Run};

/// log2 of the bytes under one leaf (64 pages: 256 KiB).
const LEAF_SHIFT: u32 = LEAF_BITS + PAGE.trailing_zeros();

// The table covers every byte of the largest export.
const _: () = assert!(LEAVES << LEAF_SHIFT > MAX_SIZE);

/// A sparse in-memory export (`nbdd memory SIZE`).
pub struct MemoryBackend {
    table: Box<Root>,
    size: AtomicU64,
    gate: Gate,
    /// Serialises resizes, including the freeing a shrink does after it has
    /// let writes in again.
    resizing: Mutex<()>,
}

impl MemoryBackend {
    /// An all-zero export of `size` bytes; nothing is allocated yet.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `size` exceeds 2^63-1.
    pub fn new(size: u64) -> io::Result<Self> {
        if size > MAX_SIZE {
            return Err(out_of_range());
        }
        Ok(Self {
            table: Root::boxed(),
            size: AtomicU64::new(size),
            gate: Gate::new(),
            resizing: Mutex::new(()),
        })
    }

    /// Bytes of page memory currently allocated (for tests and stats).
    /// Walks the table: O(nodes), not for a hot path.
    #[doc(hidden)]
    pub fn allocated_bytes(&self) -> u64 {
        let mut pages = 0u64;
        let _ = self.table.walk(0, 0, LEAVES, &mut |run| {
            if let Run::Leaf { leaf, .. } = run {
                pages += u64::from(leaf.present().count_ones());
            }
            ControlFlow::Continue(())
        });
        pages * PAGE
    }

    /// Zero bytes `from..to` of page `page` (the range lies in that page).
    fn zero_in_page(&self, page: u64, from: usize, to: usize) {
        if let Some(leaf) = self.table.get(page >> LEAF_BITS) {
            leaf.zero(page_in_leaf(page), from, to);
        }
    }

    /// Free the whole pages `first..end`, visiting only leaves that exist.
    fn free_pages(&self, first: u64, end: u64) {
        if first >= end {
            return;
        }
        let leaves = (first >> LEAF_BITS, ((end - 1) >> LEAF_BITS) + 1);
        let _ = self.table.walk(0, leaves.0, leaves.1, &mut |run| {
            if let Run::Leaf { index, leaf } = run {
                let base = index << LEAF_BITS;
                let lo = first.max(base) - base;
                let hi = end.min(base + (1 << LEAF_BITS)) - base;
                leaf.free(mask(lo, hi));
            }
            ControlFlow::Continue(())
        });
    }

    /// Make `[offset, end)` read as zeroes: whole pages are freed, partial
    /// ones zeroed in place. Never allocates.
    fn zero_range(&self, offset: u64, end: u64) {
        if offset >= end {
            return;
        }
        let first_full = offset.div_ceil(PAGE);
        let end_full = end / PAGE;
        if first_full >= end_full {
            // The range lies within one page, or straddles a boundary
            // without covering any page whole.
            let (a, b) = (offset / PAGE, (end - 1) / PAGE);
            let from = (offset % PAGE) as usize;
            if a == b {
                self.zero_in_page(a, from, from + (end - offset) as usize);
            } else {
                self.zero_in_page(a, from, PAGE_SIZE);
                self.zero_in_page(b, 0, (end % PAGE) as usize);
            }
            return;
        }
        if !offset.is_multiple_of(PAGE) {
            self.zero_in_page(offset / PAGE, (offset % PAGE) as usize, PAGE_SIZE);
        }
        if !end.is_multiple_of(PAGE) {
            self.zero_in_page(end_full, 0, (end % PAGE) as usize);
        }
        self.free_pages(first_full, end_full);
    }
}

/// Index of `page` in its leaf.
fn page_in_leaf(page: u64) -> usize {
    (page & ((1 << LEAF_BITS) - 1)) as usize
}

/// Split `[pos, pos + len)` at page boundaries: `f(page, offset in page,
/// range in the buffer)` for each piece, in order.
fn by_page(pos: u64, len: usize, mut f: impl FnMut(u64, usize, std::ops::Range<usize>)) {
    let mut done = 0;
    while done < len {
        let at = pos + done as u64;
        let in_page = (at % PAGE) as usize;
        let n = (PAGE_SIZE - in_page).min(len - done);
        f(at / PAGE, in_page, done..done + n);
        done += n;
    }
}

/// Split `[pos, pos + len)` at leaf boundaries: `f(leaf index, first byte,
/// range in the buffer)` for each piece, in order.
fn by_leaf(pos: u64, len: usize, mut f: impl FnMut(u64, u64, std::ops::Range<usize>)) {
    let mut done = 0;
    while done < len {
        let at = pos + done as u64;
        let leaf = at >> LEAF_SHIFT;
        let leaf_end = (leaf + 1) << LEAF_SHIFT;
        let n = ((leaf_end - at) as usize).min(len - done);
        f(leaf, at, done..done + n);
        done += n;
    }
}

impl Backend for MemoryBackend {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn caps(&self) -> Caps {
        Caps::FLUSH
            | Caps::FUA
            | Caps::TRIM
            | Caps::WRITE_ZEROES
            | Caps::FAST_ZERO
            | Caps::EXTENTS
            | Caps::CACHE
            | Caps::MULTI_CONN
            | Caps::RESIZE
    }

    fn execution(&self) -> Execution {
        Execution::Inline
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_read(offset, len64(buf), self.size())?;
        by_leaf(offset, buf.len(), |index, at, range| {
            let part = &mut buf[range];
            let Some(leaf) = self.table.get(index) else {
                part.fill(0);
                return;
            };
            by_page(at, part.len(), |page, from, r| {
                leaf.read(page_in_leaf(page), from, &mut part[r]);
            });
        });
        Ok(())
    }

    fn read_lent(&self, offset: u64, len: usize, out: &mut Vec<Piece>) -> Option<io::Result<()>> {
        if let Err(e) = check_read(offset, len as u64, self.size()) {
            return Some(Err(e));
        }
        by_leaf(offset, len, |index, at, range| {
            let Some(leaf) = self.table.get(index) else {
                by_page(at, range.len(), |_, _, r| out.push(Piece::zero(r.len())));
                return;
            };
            by_page(at, range.len(), |page, from, r| {
                out.push(leaf.lend(page_in_leaf(page), from, r.len()));
            });
        });
        Some(Ok(()))
    }

    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        let _gate = self.gate.enter();
        check_write(offset, len64(data), self.size())?;
        by_leaf(offset, data.len(), |index, at, range| {
            let part = &data[range];
            let leaf: &Leaf = match self.table.get(index) {
                Some(leaf) => leaf,
                // Zeroes into a hole: nothing to store, no leaf to create.
                None if is_zero(part) => return,
                None => self.table.get_or_create(index),
            };
            by_page(at, part.len(), |page, from, r| {
                leaf.write(page_in_leaf(page), from, &part[r]);
            });
        });
        Ok(())
    }

    fn takes_pages(&self) -> bool {
        true
    }

    /// Each page replaces the one stored there (which goes back to the
    /// caller): no byte is copied. An all-zero page is not kept, as
    /// `write_at` keeps none: the slot becomes a hole.
    fn write_pages(
        &self,
        offset: u64,
        pages: &mut [Option<Arc<Page>>],
        _fua: bool,
    ) -> io::Result<()> {
        let _gate = self.gate.enter();
        let len = pages.len() as u64 * PAGE;
        if !offset.is_multiple_of(PAGE) || pages.iter().any(Option::is_none) {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        check_write(offset, len, self.size())?;
        for (k, slot) in pages.iter_mut().enumerate() {
            let page = offset / PAGE + k as u64;
            let index = page >> LEAF_BITS;
            let zero = slot.as_deref().is_some_and(|p| is_zero(&p[..]));
            let leaf: &Leaf = match self.table.get(index) {
                Some(leaf) => leaf,
                None if zero => continue,
                None => self.table.get_or_create(index),
            };
            leaf.install(page_in_leaf(page), slot, zero);
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        let end = check_read(offset, len, self.size())?;
        self.zero_range(offset, end);
        Ok(())
    }

    /// Frees whole pages even without `MAY_TRIM`: the flag protects a later
    /// write from ENOSPC, and RAM pages hold no reservation worth keeping.
    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> io::Result<()> {
        let end = check_write(offset, len, self.size())?;
        self.zero_range(offset, end);
        Ok(())
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        check_read(offset, len, self.size()).map(drop)
    }

    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        let size = self.size();
        if offset > size {
            return Err(out_of_range());
        }
        let end = offset.saturating_add(len).min(size);
        if end == offset {
            return Ok(0);
        }
        let mut n = 0;
        let absent = ExtentFlags::HOLE | ExtentFlags::ZERO;
        // Bytes [from, to) clipped to the request, pushed with `flags`.
        let mut push = |from: u64, to: u64, flags: ExtentFlags| {
            let (a, b) = (from.max(offset), to.min(end));
            if b <= a || push_extent(out, &mut n, b - a, flags) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        };
        let leaves = (offset >> LEAF_SHIFT, ((end - 1) >> LEAF_SHIFT) + 1);
        let _ = self
            .table
            .walk(0, leaves.0, leaves.1, &mut |run| match run {
                Run::Absent { first, end } => push(first << LEAF_SHIFT, end << LEAF_SHIFT, absent),
                Run::Leaf { index, leaf } => {
                    let bits = leaf.present();
                    let base = index << LEAF_SHIFT;
                    // Runs of equal bits: one push per run of pages.
                    let mut p = 0u32;
                    while p < 64 {
                        let rest = bits >> p;
                        let (len, flags) = if rest & 1 == 1 {
                            ((!rest).trailing_zeros(), ExtentFlags::empty())
                        } else {
                            (rest.trailing_zeros().min(64 - p), absent)
                        };
                        let from = base + u64::from(p) * PAGE;
                        push(from, from + u64::from(len) * PAGE, flags)?;
                        p += len;
                    }
                    ControlFlow::Continue(())
                }
            });
        Ok(n)
    }

    fn resize(&self, new_size: u64) -> io::Result<()> {
        if new_size > MAX_SIZE {
            return Err(out_of_range());
        }
        let _one = self.resizing.lock().unwrap_or_else(PoisonError::into_inner);
        let old = {
            let _writes = self.gate.exclusive();
            let old = self.size.swap(new_size, Ordering::AcqRel);
            if new_size < old && !new_size.is_multiple_of(PAGE) {
                // Zero the tail of a partial last page so growing again
                // reads zeroes there.
                self.zero_in_page(new_size / PAGE, (new_size % PAGE) as usize, PAGE_SIZE);
            }
            old
        };
        // Writes now check against the new size and cannot reach the pages
        // past it; free those with writes let in again (a big shrink takes
        // a while), before another resize can grow over them.
        if new_size < old {
            self.free_pages(new_size.div_ceil(PAGE), old.div_ceil(PAGE));
        }
        Ok(())
    }
}
