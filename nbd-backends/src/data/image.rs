//! A sparse byte image: what a data expression evaluates to. Only pages
//! holding a non-zero byte are stored, so `@1T 1` or `0*1G` cost nothing,
//! and every operation costs in proportion to stored pages, not length.

use std::collections::BTreeMap;

/// Page size; the same as the memory backend's, so the final image is
/// copied page by page.
pub(crate) const PAGE: u64 = 4096;
const PAGE_USIZE: usize = PAGE as usize;

/// Bytes stored across every image of one evaluation at most: the data
/// plugin is for small images given on the command line (1 GiB).
pub(crate) const MAX_PAGES: usize = (1 << 30) / PAGE_USIZE;

/// A dense range of `len` bytes, zero except where `pages` say otherwise.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub(crate) struct Image {
    pub(crate) len: u64,
    pages: BTreeMap<u64, Box<[u8; PAGE_USIZE]>>,
}

impl Image {
    /// The image holding exactly `bytes`.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Self {
        let mut i = Self::default();
        i.write(0, bytes);
        i
    }

    /// Stored pages.
    pub(crate) fn page_count(&self) -> usize {
        self.pages.len()
    }

    /// The stored pages, by page index.
    pub(crate) fn pages(&self) -> impl Iterator<Item = (u64, &[u8; PAGE_USIZE])> {
        self.pages.iter().map(|(&i, p)| (i, &**p))
    }

    /// Make the image at least `len` bytes long.
    pub(crate) fn extend_to(&mut self, len: u64) {
        self.len = self.len.max(len);
    }

    /// Write `bytes` at `off` (zeroes included: they overwrite).
    /// The caller has checked that `off + bytes.len()` does not overflow.
    pub(crate) fn write(&mut self, off: u64, bytes: &[u8]) {
        let mut at = off;
        let mut rest = bytes;
        while !rest.is_empty() {
            let idx = at / PAGE;
            let skip = (at % PAGE) as usize;
            let n = (PAGE_USIZE - skip).min(rest.len());
            let (piece, tail) = rest.split_at(n);
            if let Some(page) = self.pages.get_mut(&idx) {
                page[skip..skip + n].copy_from_slice(piece);
            } else if piece.iter().any(|&b| b != 0) {
                let mut page = Box::new([0u8; PAGE_USIZE]);
                page[skip..skip + n].copy_from_slice(piece);
                self.pages.insert(idx, page);
            }
            at += n as u64;
            rest = tail;
        }
        self.extend_to(off + bytes.len() as u64);
    }

    /// Zero `[off, off + len)`: dropped pages where wholly covered.
    fn zero(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = off + len;
        let first = off / PAGE;
        let last = (end - 1) / PAGE;
        let touched: Vec<u64> = self.pages.range(first..=last).map(|(&i, _)| i).collect();
        for idx in touched {
            let (ps, pe) = (idx * PAGE, idx * PAGE + PAGE);
            if off <= ps && end >= pe {
                self.pages.remove(&idx);
            } else if let Some(page) = self.pages.get_mut(&idx) {
                let a = (off.max(ps) - ps) as usize;
                let b = (end.min(pe) - ps) as usize;
                page[a..b].fill(0);
            }
        }
    }

    /// Overwrite `[off, off + src.len)` with `src`, its zeroes included
    /// (nbdkit's semantics for a group: `1 1 1 @0 (@2 2)` is `0 0 2`).
    pub(crate) fn paste(&mut self, off: u64, src: &Self) {
        self.zero(off, src.len);
        for (&idx, page) in &src.pages {
            let start = idx * PAGE;
            let n = (src.len - start).min(PAGE) as usize;
            self.write(off + start, &page[..n]);
        }
        self.extend_to(off + src.len);
    }

    /// Bytes `[start, end)` as a new image (the caller checked the bounds).
    pub(crate) fn slice(&self, start: u64, end: u64) -> Self {
        let mut out = Self {
            len: end - start,
            pages: BTreeMap::new(),
        };
        if end == start {
            return out;
        }
        for (&idx, page) in self.pages.range(start / PAGE..=(end - 1) / PAGE) {
            let ps = idx * PAGE;
            let a = start.max(ps);
            let b = end.min(ps + PAGE);
            out.write(a - start, &page[(a - ps) as usize..(b - ps) as usize]);
        }
        out.len = end - start;
        out
    }

    /// Pages `self` repeated `n` times could store at most.
    pub(crate) fn repeat_pages_bound(&self, n: u64) -> u64 {
        let per = if self.len.is_multiple_of(PAGE) { 1 } else { 2 };
        (self.pages.len() as u64)
            .saturating_mul(per)
            .saturating_mul(n)
    }

    /// `self` `n` times in a row, by doubling: O(result) work, not O(n).
    /// The caller checked that `len * n` fits and the page bound.
    pub(crate) fn repeat(&self, n: u64) -> Self {
        if self.pages.is_empty() || n == 0 {
            return Self {
                len: self.len * n,
                pages: BTreeMap::new(),
            };
        }
        let mut result = Self::default();
        let mut power = self.clone();
        let mut k = n;
        loop {
            if k & 1 == 1 {
                result.paste(result.len, &power);
            }
            k >>= 1;
            if k == 0 {
                return result;
            }
            let copy = power.clone();
            power.paste(power.len, &copy);
        }
    }

    /// Every byte, for tests.
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len as usize];
        for (&idx, page) in &self.pages {
            let s = (idx * PAGE) as usize;
            let n = (v.len() - s).min(PAGE_USIZE);
            v[s..s + n].copy_from_slice(&page[..n]);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_paste_slice_repeat() {
        let mut i = Image::from_bytes(&[1, 1, 1, 1]);
        i.paste(1, &Image::from_bytes(&[0, 2]));
        assert_eq!(i.to_vec(), [1, 0, 2, 1]);
        let mut big = Image::default();
        big.write(PAGE - 1, &[7, 8]);
        assert_eq!(big.page_count(), 2);
        assert_eq!(big.slice(PAGE - 2, PAGE + 1).to_vec(), [0, 7, 8]);
        let r = Image::from_bytes(&[5, 6, 7]).repeat(3000);
        assert_eq!(r.len, 9000);
        assert_eq!(r.to_vec(), [5, 6, 7].repeat(3000));
        let z = Image::from_bytes(&[0]).repeat(1 << 40);
        assert_eq!((z.len, z.page_count()), (1 << 40, 0));
        let mut hole = Image::from_bytes(&[9; 10000]);
        hole.paste(
            0,
            &Image {
                len: 9000,
                pages: BTreeMap::new(),
            },
        );
        assert_eq!(hole.page_count(), 1, "covered pages are dropped");
        assert_eq!(hole.to_vec()[8999..9001], [0, 9]);
    }
}
