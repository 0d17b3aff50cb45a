//! A leaf of the page table: 64 pages, each behind its own lock, and one
//! word whose bits say which of them are allocated.
//!
//! The per-page lock is what makes a page-aligned 4 KiB write atomic for a
//! concurrent reader (it sees the old or the new page, never a mix), and
//! what keeps requests on different pages apart: they never wait for each
//! other. The `present` bits are changed only under the page's write lock,
//! so they always agree with the slots once the lock is released:
//! `extents`, frees and zeroing use them without taking any page lock
//! (reads take the slot's, which they need for data anyway).
//!
//! Pages are reference-counted so that a READ reply can hold one until it
//! is sent (zero-copy READs, [`crate::lent`]). A write to a page that a
//! reply still holds copies it first (`Arc::make_mut`): the reply keeps
//! the bytes the READ saw, and the copy (one 4 KiB allocation) happens only
//! when a write races a reply to the same page.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};

use crate::lent::Piece;
use crate::util::is_zero;

/// Bytes per page of the sparse store: the lent page size.
pub const PAGE_SIZE: usize = crate::lent::PAGE_SIZE;
pub(super) const PAGE: u64 = PAGE_SIZE as u64;
/// log2 of the pages in a leaf: 64, one bit each of `present`.
pub(super) const LEAF_BITS: u32 = 6;
const LEAF_PAGES: usize = 1 << LEAF_BITS;

type Page = Arc<crate::lent::Page>;
type Slot = RwLock<Option<Page>>;

pub(super) struct Leaf {
    /// Bit `i` is set iff `pages[i]` holds a page.
    present: Bits,
    pages: [Slot; LEAF_PAGES],
}

/// The `present` word on a cache line of its own: every reader of the leaf
/// loads it, so the locks of its first pages must not share its line (a
/// hot page 0, such as a superblock, would slow reads of the other 63).
#[repr(align(64))]
struct Bits(AtomicU64);

/// Bits `lo..hi` of a leaf's `present` word (`lo < hi <= 64`).
pub(super) fn mask(lo: u64, hi: u64) -> u64 {
    let below_hi = if hi >= 64 { !0 } else { (1u64 << hi) - 1 };
    below_hi & !((1u64 << lo) - 1)
}

// A panic under a page lock (none is expected: every access is a bounded
// copy) can leave at worst a half-copied page, as a crash mid-write would;
// the lock is simply reused.
fn write(slot: &Slot) -> RwLockWriteGuard<'_, Option<Page>> {
    slot.write().unwrap_or_else(PoisonError::into_inner)
}

impl Leaf {
    pub(super) fn boxed() -> Box<Self> {
        Box::new(Self {
            present: Bits(AtomicU64::new(0)),
            pages: [const { RwLock::new(None) }; LEAF_PAGES],
        })
    }

    /// Which pages are allocated (bit per page). A write that completed
    /// before this call is reflected (Release/Acquire on the word).
    pub(super) fn present(&self) -> u64 {
        self.present.0.load(Ordering::Acquire)
    }

    /// Copy bytes `from..from + out.len()` of page `i` into `out`; a page
    /// that is not allocated reads as zeroes.
    pub(super) fn read(&self, i: usize, from: usize, out: &mut [u8]) {
        // The slot, not the `present` word: a random 4 KiB READ over a
        // large export misses the cache on whatever it touches first, and
        // for data the slot must be touched anyway (perf: 72 % of
        // `read_at`'s own samples sat on the `present` load at fio 4k
        // QD32 over 1 GiB).
        let slot = self.pages[i].read().unwrap_or_else(PoisonError::into_inner);
        match &*slot {
            Some(page) => out.copy_from_slice(&page[from..from + out.len()]),
            None => out.fill(0),
        }
    }

    /// Lend bytes `from..from + len` of page `i` (zeroes for a hole).
    pub(super) fn lend(&self, i: usize, from: usize, len: usize) -> Piece {
        if self.present() & (1 << i) != 0 {
            let slot = self.pages[i].read().unwrap_or_else(PoisonError::into_inner);
            if let Some(page) = &*slot {
                return Piece::of(page, from..from + len);
            }
        }
        Piece::zero(len)
    }

    /// Write `data` at byte `from` of page `i`. Allocates the page only for
    /// non-zero data, and frees it when the write leaves it all zero.
    pub(super) fn write(&self, i: usize, from: usize, data: &[u8]) {
        let mut slot = write(&self.pages[i]);
        match &mut *slot {
            Some(page) => {
                // Copies the page only while a reply holds it.
                let bytes = Arc::make_mut(page);
                bytes[from..from + data.len()].copy_from_slice(data);
                // Only zero data can clear the page's last non-zero byte:
                // real data stops the scan at its first non-zero word, so
                // the page itself is scanned only after a zero write.
                if is_zero(data) && is_zero(&bytes[..]) {
                    self.clear(i, slot);
                }
            }
            None if is_zero(data) => {}
            None => {
                // The only allocation on the write path: the first non-zero
                // write to a page.
                let mut page: Page = Arc::new([0; PAGE_SIZE]);
                Arc::make_mut(&mut page)[from..from + data.len()].copy_from_slice(data);
                *slot = Some(page);
                self.present.0.fetch_or(1 << i, Ordering::Release);
            }
        }
    }

    /// Store `page` (taken from the caller's slot) as page `i`; the slot
    /// gets the page it replaced, if any. A `zero` page is not stored: the
    /// page becomes a hole and the caller keeps its page.
    pub(super) fn install(&self, i: usize, page: &mut Option<Page>, zero: bool) {
        let mut slot = write(&self.pages[i]);
        if zero {
            if slot.is_some() {
                self.clear(i, slot);
            }
            return;
        }
        let was_hole = slot.is_none();
        std::mem::swap(&mut *slot, page);
        if was_hole {
            self.present.0.fetch_or(1 << i, Ordering::Release);
        }
    }

    /// Zero bytes `from..to` of page `i`, freeing it if it is then all zero.
    pub(super) fn zero(&self, i: usize, from: usize, to: usize) {
        if self.present() & (1 << i) == 0 {
            return;
        }
        let mut slot = write(&self.pages[i]);
        if let Some(page) = &mut *slot {
            let bytes = Arc::make_mut(page);
            bytes[from..to].fill(0);
            if is_zero(&bytes[..]) {
                self.clear(i, slot);
            }
        }
    }

    /// Free every allocated page whose bit is set in `mask`.
    pub(super) fn free(&self, mask: u64) {
        let mut bits = mask & self.present();
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            self.clear(i, write(&self.pages[i]));
        }
    }

    /// Empty slot `i` (held locked by `slot`); the page memory is returned
    /// to the allocator after the lock is released.
    fn clear(&self, i: usize, mut slot: RwLockWriteGuard<'_, Option<Page>>) {
        let old = slot.take();
        if old.is_some() {
            self.present.0.fetch_and(!(1 << i), Ordering::Release);
        }
        drop(slot);
        drop(old);
    }
}
