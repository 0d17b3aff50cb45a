//! `truncate`: change the size of the layer below (`truncate=SIZE`,
//! `round-up=N`, `round-down=N`, powers of two, applied in that order as
//! nbdkit does). Past the real end reads are zeroes, zeroes may be
//! written (anything else is ENOSPC), trims are ignored and extents are
//! holes.

use std::io;
use std::sync::Arc;

use super::params::FilterParams;
use crate::util::{check_read, check_write, is_zero, len64, out_of_range};
use crate::{Backend, Caps, Extent, ExtentFlags, MAX_SIZE, ZeroFlags};

/// How the new size is computed from the old one.
#[derive(Debug, Clone, Copy, Default)]
pub struct TruncateOptions {
    /// `truncate=`.
    pub size: Option<u64>,
    /// `round-up=` (a power of two).
    pub round_up: Option<u64>,
    /// `round-down=` (a power of two).
    pub round_down: Option<u64>,
}

/// The layer below, cut or extended with zeroes.
pub struct Truncate {
    inner: Arc<dyn Backend>,
    opts: TruncateOptions,
    /// Size of the layer below when built.
    real: u64,
    size: u64,
}

impl Truncate {
    /// `inner` resized as `opts` says.
    ///
    /// # Errors
    ///
    /// If rounding up passes the largest size.
    pub fn new(inner: Arc<dyn Backend>, opts: TruncateOptions) -> Result<Self, String> {
        let real = inner.size();
        let mut size = opts.size.unwrap_or(real);
        if let Some(n) = opts.round_up {
            size = size
                .checked_next_multiple_of(n)
                .filter(|&s| s <= MAX_SIZE)
                .ok_or_else(|| format!("truncate filter: cannot round {size} up to {n}"))?;
        }
        if let Some(n) = opts.round_down {
            size -= size % n;
        }
        Ok(Self {
            inner,
            opts,
            real,
            size,
        })
    }

    /// The part of `[offset, end)` inside the layer below.
    fn below(&self, offset: u64, end: u64) -> Option<(u64, u64)> {
        (offset < self.real).then(|| (offset, end.min(self.real) - offset))
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let round = |p: &mut FilterParams<'_, '_>, key| match p.take_size(key)? {
        Some(n) if !n.is_power_of_two() => Err(p.bad(key, &n.to_string(), "must be a power of 2")),
        n => Ok(n),
    };
    let opts = TruncateOptions {
        size: p.take_size("truncate")?,
        round_up: round(p, "round-up")?,
        round_down: round(p, "round-down")?,
    };
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(Truncate::new(b, opts)?))
    }))
}

impl super::Filter for Truncate {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(
            Self::new(inner, self.opts).map_err(io::Error::other)?,
        ))
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn caps(&self) -> Caps {
        (self.inner.caps() | Caps::EXTENTS) - Caps::RESIZE - Caps::ALLOCATION_DEPTH
    }
    // try_read_cached forwarded: below the old end the data is the layer
    // below's at the same offsets; beyond it, zeroes (as read_at).
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Ok(end) = check_read(offset, len64(buf), self.size) else {
            return false;
        };
        let n = match self.below(offset, end) {
            Some((_, n)) => {
                if !self.inner.try_read_cached(offset, &mut buf[..n as usize]) {
                    return false;
                }
                n as usize
            }
            None => 0,
        };
        buf[n..].fill(0);
        true
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = check_read(offset, len64(buf), self.size)?;
        let n = match self.below(offset, end) {
            Some((_, n)) => {
                self.inner.read_at(offset, &mut buf[..n as usize])?;
                n as usize
            }
            None => 0,
        };
        buf[n..].fill(0);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let end = check_write(offset, len64(data), self.size)?;
        let n = self.below(offset, end).map_or(0, |(_, n)| n as usize);
        if !is_zero(&data[n..]) {
            return Err(crate::util::no_space());
        }
        if n > 0 {
            self.inner.write_at(offset, &data[..n], fua)?;
        }
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        let end = check_read(offset, len, self.size)?;
        match self.below(offset, end) {
            Some((o, n)) => self.inner.trim(o, n, fua),
            None => Ok(()),
        }
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        let end = check_write(offset, len, self.size)?;
        match self.below(offset, end) {
            Some((o, n)) => self.inner.write_zeroes(o, n, flags),
            None => Ok(()),
        }
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = check_read(offset, len, self.size)?;
        match self.below(offset, end) {
            Some((o, n)) => self.inner.cache(o, n),
            None => Ok(()),
        }
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        if offset > self.size {
            return Err(out_of_range());
        }
        let end = offset.saturating_add(len).min(self.size);
        if let Some((o, n)) = self.below(offset, end) {
            let got = self.inner.extents(o, n, out)?;
            // Clip to the new size (the layer below may say more).
            let mut left = n;
            let mut kept = 0;
            for e in out.iter_mut().take(got) {
                if left == 0 {
                    break;
                }
                e.len = e.len.min(left);
                left -= e.len;
                kept += 1;
            }
            return Ok(kept);
        }
        match out.first_mut() {
            Some(first) if end > offset => {
                *first = Extent {
                    len: end - offset,
                    flags: ExtentFlags::HOLE | ExtentFlags::ZERO,
                };
                Ok(1)
            }
            _ => Ok(0),
        }
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
mod tests {
    use super::*;
    use crate::MemoryBackend;

    fn over(size: u64, opts: TruncateOptions) -> Truncate {
        let m = MemoryBackend::new(size).unwrap();
        m.write_at(0, &vec![7; size as usize], false).unwrap();
        Truncate::new(Arc::new(m), opts).unwrap()
    }

    #[test]
    fn sizes_in_nbdkit_order() {
        let o = |size, up, down| TruncateOptions {
            size,
            round_up: up,
            round_down: down,
        };
        assert_eq!(over(1000, o(None, Some(512), None)).size(), 1024);
        assert_eq!(over(1000, o(None, None, Some(512))).size(), 512);
        assert_eq!(over(1000, o(Some(3000), Some(1024), None)).size(), 3072);
        assert_eq!(over(1000, o(Some(10), None, None)).size(), 10);
    }

    #[test]
    fn the_tail_reads_zero_and_takes_only_zeroes() {
        let t = over(
            1000,
            TruncateOptions {
                size: Some(4096),
                ..TruncateOptions::default()
            },
        );
        let mut b = vec![1; 100];
        t.read_at(950, &mut b).unwrap();
        assert_eq!(&b[..50], &[7; 50]);
        assert!(b[50..].iter().all(|&x| x == 0));
        t.write_at(990, &[3; 10], false).unwrap();
        let mut w = vec![3; 20];
        w[10..].fill(0);
        t.write_at(990, &w, false).unwrap();
        let e = t.write_at(2000, &[1], false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        t.write_zeroes(500, 3000, ZeroFlags::empty()).unwrap();
        let mut out = [Extent::default(); 4];
        let n = t.extents(2000, 100, &mut out).unwrap();
        assert_eq!(n, 1);
        assert_eq!(out[0].flags, ExtentFlags::HOLE | ExtentFlags::ZERO);
    }
}
