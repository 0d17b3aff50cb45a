//! A sparse RAM disk.
//!
//! Pages are allocated on the first write that puts non-zero bytes in them
//! and freed again as soon as they hold only zeroes (after trim,
//! write_zeroes, a zero write or a shrink), so an
//! export of any size up to 2^63-1 bytes costs nothing until it is written.
//!
//! **Page size: 4 KiB.** It equals the block size clients prefer (and the
//! `preferred` NBD block size we advertise), so a typical 4 KiB random write
//! touches exactly one page and allocates no more than it stores; with
//! 32 KiB pages the same workload would use up to 8× the memory and every
//! small write into a fresh page would zero-fill 28 KiB it does not need.
//! The cost is more map entries for large sequential data: about 1% extra
//! (a B-tree entry per 4 KiB), and reads walk the map once per request with
//! `BTreeMap::range`, not once per page lookup.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::util::{check_read, check_write, is_zero, len64, out_of_range, push_extent};
use crate::{Backend, Caps, Execution, Extent, ExtentFlags, ZeroFlags, size::MAX_SIZE};

/// Bytes per page of the sparse store.
pub const PAGE_SIZE: usize = 4096;
const PAGE: u64 = PAGE_SIZE as u64;

type Page = Box<[u8; PAGE_SIZE]>;

struct Store {
    size: u64,
    /// Page index (offset / PAGE) → contents. Absent pages read as zeroes.
    pages: BTreeMap<u64, Page>,
}

/// A sparse in-memory export (`nbdd memory SIZE`).
pub struct MemoryBackend {
    store: RwLock<Store>,
    /// Mirror of `store.size` so `size()` never takes the lock.
    size: AtomicU64,
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
            store: RwLock::new(Store {
                size,
                pages: BTreeMap::new(),
            }),
            size: AtomicU64::new(size),
        })
    }

    /// Bytes of page memory currently allocated (for tests and stats).
    #[doc(hidden)]
    pub fn allocated_bytes(&self) -> u64 {
        len64_pages(self.read().pages.len())
    }

    // A panic while holding the lock cannot leave the map inconsistent (each
    // mutation is a single BTreeMap call or a copy into one page), so a
    // poisoned lock is simply reused.
    fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn len64_pages(n: usize) -> u64 {
    (n as u64) * PAGE
}

impl Store {
    /// Zero `[offset, end)` of the page `idx`, where the range lies in that
    /// page; the page is freed if it ends up all zero.
    fn zero_in_page(&mut self, idx: u64, from: usize, to: usize) {
        if let Entry::Occupied(mut e) = self.pages.entry(idx) {
            let page = e.get_mut();
            if let Some(part) = page.get_mut(from..to) {
                part.fill(0);
            }
            if is_zero(&page[..]) {
                e.remove();
            }
        }
    }

    /// Make `[offset, end)` read as zeroes: whole pages are freed, partial
    /// ones zeroed in place. Never allocates.
    fn zero_range(&mut self, offset: u64, end: u64) {
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
        // Remove key by key: O(k log n) and allocation-free, unlike
        // split_off + append, which rebuilds the whole tail of the map.
        while let Some(&idx) = self
            .pages
            .range(first_full..end_full)
            .next()
            .map(|(k, _)| k)
        {
            self.pages.remove(&idx);
        }
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
        let st = self.read();
        let end = check_read(offset, len64(buf), st.size)?;
        if buf.is_empty() {
            return Ok(());
        }
        // `pos` is the first byte of `buf` not yet filled; every index below
        // is a difference of offsets inside [offset, end), so < buf.len().
        let mut pos = offset;
        for (&idx, page) in st.pages.range(offset / PAGE..=(end - 1) / PAGE) {
            let page_start = idx * PAGE;
            let from = page_start.max(offset);
            let to = (page_start + PAGE).min(end);
            buf[(pos - offset) as usize..(from - offset) as usize].fill(0);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&page[(from - page_start) as usize..(to - page_start) as usize]);
            pos = to;
        }
        buf[(pos - offset) as usize..].fill(0);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        let mut st = self.write();
        let end = check_write(offset, len64(data), st.size)?;
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = (PAGE_SIZE - in_page).min((end - pos) as usize);
            let start = (pos - offset) as usize;
            let chunk = &data[start..start + n];
            match st.pages.entry(idx) {
                // A whole page of zeroes is stored as no page at all.
                Entry::Occupied(e) if n == PAGE_SIZE && is_zero(chunk) => {
                    e.remove();
                }
                Entry::Occupied(mut e) => {
                    let page = e.get_mut();
                    page[in_page..in_page + n].copy_from_slice(chunk);
                    // Zero data may have cleared the page's last non-zero
                    // byte. Non-zero data (the common case) skips the scan.
                    if is_zero(chunk) && is_zero(&page[..]) {
                        e.remove();
                    }
                }
                Entry::Vacant(v) => {
                    if !is_zero(chunk) {
                        // The only allocation on the write path: the first
                        // non-zero write to a page.
                        let mut page: Page = Box::new([0; PAGE_SIZE]);
                        page[in_page..in_page + n].copy_from_slice(chunk);
                        v.insert(page);
                    }
                }
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        let mut st = self.write();
        let end = check_read(offset, len, st.size)?;
        st.zero_range(offset, end);
        Ok(())
    }

    /// Frees whole pages even without `MAY_TRIM`: the flag protects a later
    /// write from ENOSPC, and RAM pages hold no reservation worth keeping.
    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> io::Result<()> {
        let mut st = self.write();
        let end = check_write(offset, len, st.size)?;
        st.zero_range(offset, end);
        Ok(())
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        check_read(offset, len, self.size()).map(drop)
    }

    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        let st = self.read();
        if offset > st.size {
            return Err(out_of_range());
        }
        let end = offset.saturating_add(len).min(st.size);
        let mut n = 0;
        if end == offset {
            return Ok(0);
        }
        let absent = ExtentFlags::HOLE | ExtentFlags::ZERO;
        let mut pos = offset;
        for (&idx, _) in st.pages.range(offset / PAGE..=(end - 1) / PAGE) {
            let from = (idx * PAGE).max(offset);
            let to = (idx * PAGE + PAGE).min(end);
            if !push_extent(out, &mut n, from - pos, absent)
                || !push_extent(out, &mut n, to - from, ExtentFlags::empty())
            {
                return Ok(n);
            }
            pos = to;
        }
        push_extent(out, &mut n, end - pos, absent);
        Ok(n)
    }

    fn resize(&self, new_size: u64) -> io::Result<()> {
        if new_size > MAX_SIZE {
            return Err(out_of_range());
        }
        let mut st = self.write();
        if new_size < st.size {
            // Drop every page past the new end, and zero the tail of a
            // partial last page so growing again reads zeroes there.
            drop(st.pages.split_off(&new_size.div_ceil(PAGE)));
            if !new_size.is_multiple_of(PAGE) {
                st.zero_in_page(new_size / PAGE, (new_size % PAGE) as usize, PAGE_SIZE);
            }
        }
        st.size = new_size;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_allocation_and_freeing() {
        let m = MemoryBackend::new(1 << 40).unwrap();
        assert_eq!(m.allocated_bytes(), 0);
        // A zero write to an absent page allocates nothing.
        m.write_at(100, &[0; 10], false).unwrap();
        assert_eq!(m.allocated_bytes(), 0);
        // Straddling a boundary allocates the two pages touched.
        m.write_at(PAGE - 1, &[1, 2], false).unwrap();
        assert_eq!(m.allocated_bytes(), 2 * PAGE);
        // A whole-page zero write frees the page.
        m.write_at(PAGE, &[0; PAGE_SIZE], false).unwrap();
        assert_eq!(m.allocated_bytes(), PAGE);
        // Zeroing the last non-zero byte of a page frees it.
        m.write_zeroes(PAGE - 1, 1, ZeroFlags::empty()).unwrap();
        assert_eq!(m.allocated_bytes(), 0);
    }

    #[test]
    fn zero_range_partial_pages_keep_other_bytes() {
        let m = MemoryBackend::new(4 * PAGE).unwrap();
        m.write_at(0, &[7; 4 * PAGE_SIZE], false).unwrap();
        m.trim(10, 3 * PAGE, false).unwrap();
        let mut buf = vec![0xaa; 4 * PAGE_SIZE];
        m.read_at(0, &mut buf).unwrap();
        assert!(buf[..10].iter().all(|&b| b == 7));
        assert!(buf[10..10 + 3 * PAGE_SIZE].iter().all(|&b| b == 0));
        assert!(buf[10 + 3 * PAGE_SIZE..].iter().all(|&b| b == 7));
        // Pages 1 and 2 were freed, 0 and 3 kept.
        assert_eq!(m.allocated_bytes(), 2 * PAGE);
    }

    #[test]
    fn shrink_zeroes_the_tail_of_the_last_page() {
        let m = MemoryBackend::new(3 * PAGE).unwrap();
        m.write_at(0, &[9; 3 * PAGE_SIZE], false).unwrap();
        m.resize(PAGE + 5).unwrap();
        assert_eq!(m.allocated_bytes(), 2 * PAGE);
        m.resize(3 * PAGE).unwrap();
        let mut buf = vec![0xaa; 3 * PAGE_SIZE];
        m.read_at(0, &mut buf).unwrap();
        assert!(buf[..PAGE_SIZE + 5].iter().all(|&b| b == 9));
        assert!(buf[PAGE_SIZE + 5..].iter().all(|&b| b == 0));
    }

    #[test]
    fn extents_merge_and_stop_when_full() {
        let m = MemoryBackend::new(10 * PAGE).unwrap();
        m.write_at(2 * PAGE, &[1; 2 * PAGE_SIZE], false).unwrap();
        m.write_at(7 * PAGE + 1, &[1], false).unwrap();
        let mut out = [Extent::default(); 8];
        let n = m.extents(PAGE / 2, 10 * PAGE, &mut out).unwrap();
        let hz = ExtentFlags::HOLE | ExtentFlags::ZERO;
        let d = ExtentFlags::empty();
        let want = [
            (PAGE + PAGE / 2, hz),
            (2 * PAGE, d),
            (3 * PAGE, hz),
            (PAGE, d),
            (2 * PAGE, hz),
        ];
        let got: Vec<_> = out[..n].iter().map(|e| (e.len, e.flags)).collect();
        assert_eq!(got, want);
        let mut two = [Extent::default(); 2];
        assert_eq!(m.extents(0, 10 * PAGE, &mut two).unwrap(), 2);
        assert_eq!(
            two[1],
            Extent {
                len: 2 * PAGE,
                flags: d
            }
        );
    }

    #[test]
    fn huge_sizes_are_accepted_and_bounded() {
        let m = MemoryBackend::new(MAX_SIZE).unwrap();
        m.write_at(MAX_SIZE - 3, &[1, 2, 3], false).unwrap();
        let mut b = [0; 3];
        m.read_at(MAX_SIZE - 3, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        assert!(m.write_at(MAX_SIZE - 2, &[1, 2, 3], false).is_err());
        assert!(m.read_at(u64::MAX, &mut b).is_err());
        assert!(MemoryBackend::new(MAX_SIZE + 1).is_err());
    }
}
