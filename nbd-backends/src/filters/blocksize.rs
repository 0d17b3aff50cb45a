//! `blocksize`: present the layer below only requests it can take:
//! aligned to `minblock=` (unaligned reads are widened, unaligned writes
//! and zeroes become read-modify-write under a lock, unaligned trim heads
//! and tails are dropped, the size is rounded down), reads and writes of at
//! most `maxdata=` and other requests of at most `maxlen=` (split).
//!
//! Clients are told minimum 1 (anything goes) and the preferred size; the
//! maximum payload advertised stays 32 MiB (nbdkit: 4 GiB - 1) because the
//! driver buffers each payload whole.

use std::io;
use std::sync::{Arc, PoisonError, RwLock};

use super::params::FilterParams;
use crate::util::{check_read, check_write, len64, out_of_range};
use crate::{Backend, BlockSize, Caps, Extent, ZeroFlags};

/// The constraints of the layer below (`None`: from the layer below).
#[derive(Debug, Clone, Copy, Default)]
pub struct BlocksizeOptions {
    /// `minblock=`.
    pub minblock: Option<u64>,
    /// `maxdata=`.
    pub maxdata: Option<u64>,
    /// `maxlen=`.
    pub maxlen: Option<u64>,
}

const MAX_PAYLOAD: u64 = 32 * 1024 * 1024;

/// Splits and aligns requests.
pub struct Blocksize {
    inner: Arc<dyn Backend>,
    opts: BlocksizeOptions,
    min: u64,
    maxdata: u64,
    maxlen: u64,
    size: u64,
    /// Read-modify-write cycles take it exclusively, other requests
    /// shared, so no request sees (or overwrites) half a cycle.
    rmw: RwLock<()>,
}

impl Blocksize {
    /// Over `inner` with `opts`.
    ///
    /// # Errors
    ///
    /// Values that do not fit together (a message naming them).
    pub fn new(inner: Arc<dyn Backend>, opts: BlocksizeOptions) -> Result<Self, String> {
        let below = inner.block_size();
        let min = opts
            .minblock
            .unwrap_or(1)
            .max(below.map_or(1, |b| u64::from(b.minimum)));
        if !min.is_power_of_two() || min > 65536 {
            return Err(format!(
                "blocksize filter: minblock={min}: must be a power of 2, at most 64k"
            ));
        }
        let below_max = below.map_or(MAX_PAYLOAD, |b| u64::from(b.maximum));
        let maxdata = opts.maxdata.unwrap_or(MAX_PAYLOAD.min(below_max));
        let maxlen = opts.maxlen.unwrap_or(u64::from(u32::MAX) / min * min);
        for (key, v) in [("maxdata", maxdata), ("maxlen", maxlen)] {
            if v == 0 || !v.is_multiple_of(min) {
                return Err(format!(
                    "blocksize filter: {key}={v}: must be a non-zero multiple of minblock ({min})"
                ));
            }
        }
        let size = inner.size() / min * min;
        Ok(Self {
            inner,
            opts,
            min,
            maxdata,
            maxlen,
            size,
            rmw: RwLock::new(()),
        })
    }

    fn down(&self, x: u64) -> u64 {
        x / self.min * self.min
    }

    fn up(&self, x: u64) -> u64 {
        x.div_ceil(self.min) * self.min
    }

    /// Split `[offset, end)` into an unaligned head, an aligned middle and
    /// an unaligned tail (each possibly empty; a request inside one block
    /// is all head).
    fn split(&self, offset: u64, end: u64) -> [(u64, u64); 3] {
        let a = self.up(offset).min(end);
        let b = self.down(end).max(a);
        [(offset, a), (a, b), (b, end)]
    }

    /// Run `op` over `[from, to)` in pieces of at most `max`.
    fn chunks(
        from: u64,
        to: u64,
        max: u64,
        mut op: impl FnMut(u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut pos = from;
        while pos < to {
            let n = (to - pos).min(max);
            op(pos, n)?;
            pos += n;
        }
        Ok(())
    }

    /// One aligned, bounded request below for the extents from `offset`,
    /// clipped back to `[offset, end)`.
    fn extents_once(&self, offset: u64, end: u64, out: &mut [Extent]) -> io::Result<usize> {
        let from = self.down(offset);
        let to = self
            .up(end)
            .min(self.size)
            .min(from.saturating_add(self.maxlen));
        let n = self.inner.extents(from, to - from, out)?;
        // Drop what lies before `offset`.
        let mut skip = offset - from;
        let mut kept = 0;
        for i in 0..n {
            let mut e = out[i];
            if skip >= e.len {
                skip -= e.len;
                continue;
            }
            e.len -= skip;
            skip = 0;
            out[kept] = e;
            kept += 1;
        }
        Ok(kept)
    }

    /// Read the block holding `[from, to)` and copy that part to `out`.
    fn read_partial(&self, from: u64, to: u64, out: &mut [u8]) -> io::Result<()> {
        let start = self.down(from);
        let mut block = vec![0u8; self.min as usize];
        self.inner.read_at(start, &mut block)?;
        out.copy_from_slice(&block[(from - start) as usize..(to - start) as usize]);
        Ok(())
    }

    /// Read-modify-write the block holding `[from, to)`: `data` (or zeroes
    /// when `None`) goes there.
    fn rmw(&self, from: u64, to: u64, data: Option<&[u8]>, fua: bool) -> io::Result<()> {
        let start = self.down(from);
        let mut block = vec![0u8; self.min as usize];
        self.inner.read_at(start, &mut block)?;
        let part = &mut block[(from - start) as usize..(to - start) as usize];
        match data {
            Some(d) => part.copy_from_slice(d),
            None => part.fill(0),
        }
        self.inner.write_at(start, &block, fua)
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let opts = BlocksizeOptions {
        minblock: p.take_size("minblock")?,
        maxdata: p.take_size("maxdata")?,
        maxlen: p.take_size("maxlen")?,
    };
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(Blocksize::new(b, opts)?))
    }))
}

impl super::Filter for Blocksize {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): reads are widened and split for the layer below, which may not take the client's shape.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(
            Self::new(inner, self.opts).map_err(io::Error::other)?,
        ))
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn caps(&self) -> Caps {
        self.inner.caps() - Caps::RESIZE - Caps::ALLOCATION_DEPTH
    }
    fn block_size(&self) -> Option<BlockSize> {
        let pref = self.inner.block_size().map_or(4096, |b| b.preferred);
        let preferred = u64::from(pref).max(4096).max(self.min) as u32;
        Some(BlockSize {
            minimum: 1,
            preferred,
            maximum: (MAX_PAYLOAD as u32).max(preferred),
        })
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = check_read(offset, len64(buf), self.size)?;
        let _g = self.rmw.read().unwrap_or_else(PoisonError::into_inner);
        let [head, mid, tail] = self.split(offset, end);
        let at = |x: u64| (x - offset) as usize;
        if head.0 < head.1 {
            self.read_partial(head.0, head.1, &mut buf[..at(head.1)])?;
        }
        Self::chunks(mid.0, mid.1, self.maxdata, |pos, n| {
            self.inner.read_at(pos, &mut buf[at(pos)..at(pos + n)])
        })?;
        if tail.0 < tail.1 {
            self.read_partial(tail.0, tail.1, &mut buf[at(tail.0)..])?;
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let end = check_write(offset, len64(data), self.size)?;
        let [head, mid, tail] = self.split(offset, end);
        let at = |x: u64| (x - offset) as usize;
        if head.0 < head.1 || tail.0 < tail.1 {
            let _g = self.rmw.write().unwrap_or_else(PoisonError::into_inner);
            if head.0 < head.1 {
                self.rmw(head.0, head.1, Some(&data[..at(head.1)]), fua)?;
            }
            if tail.0 < tail.1 {
                self.rmw(tail.0, tail.1, Some(&data[at(tail.0)..]), fua)?;
            }
        }
        let _g = self.rmw.read().unwrap_or_else(PoisonError::into_inner);
        Self::chunks(mid.0, mid.1, self.maxdata, |pos, n| {
            self.inner.write_at(pos, &data[at(pos)..at(pos + n)], fua)
        })
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        let end = check_read(offset, len, self.size)?;
        let [_, mid, _] = self.split(offset, end);
        let _g = self.rmw.read().unwrap_or_else(PoisonError::into_inner);
        Self::chunks(mid.0, mid.1, self.maxlen, |pos, n| {
            self.inner.trim(pos, n, fua)
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        let end = check_write(offset, len, self.size)?;
        let [head, mid, tail] = self.split(offset, end);
        let fua = flags.contains(ZeroFlags::FUA);
        if head.0 < head.1 || tail.0 < tail.1 {
            if flags.contains(ZeroFlags::FAST) {
                // A read-modify-write is not fast.
                return Err(io::Error::from(io::ErrorKind::Unsupported));
            }
            let _g = self.rmw.write().unwrap_or_else(PoisonError::into_inner);
            if head.0 < head.1 {
                self.rmw(head.0, head.1, None, fua)?;
            }
            if tail.0 < tail.1 {
                self.rmw(tail.0, tail.1, None, fua)?;
            }
        }
        let _g = self.rmw.read().unwrap_or_else(PoisonError::into_inner);
        Self::chunks(mid.0, mid.1, self.maxlen, |pos, n| {
            self.inner.write_zeroes(pos, n, flags)
        })
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = check_read(offset, len, self.size)?;
        let (from, to) = (self.down(offset), self.up(end).min(self.size));
        Self::chunks(from, to, self.maxlen, |pos, n| self.inner.cache(pos, n))
    }
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
mod tests {
    use super::*;
    use crate::MemoryBackend;
    use crate::filters::Log;

    #[test]
    fn the_layer_below_sees_only_aligned_bounded_requests() {
        let log_path = std::env::temp_dir().join(format!("nbdd-bs-{}", std::process::id()));
        let mem = Arc::new(MemoryBackend::new((1 << 20) + 100).unwrap());
        let log = Arc::new(Log::new(mem.clone(), Some(&log_path), false).unwrap());
        let opts = BlocksizeOptions {
            minblock: Some(4096),
            maxdata: Some(65536),
            maxlen: Some(1 << 17),
        };
        let b = Blocksize::new(log, opts).unwrap();
        assert_eq!(b.size(), 1 << 20, "rounded down");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 + 1).collect();
        b.write_at(1000, &data, true).unwrap();
        b.write_at(5, &[9; 3], false).unwrap();
        b.write_zeroes(300_000, 500_000, ZeroFlags::MAY_TRIM)
            .unwrap();
        b.trim(250_010, 9000, false).unwrap();
        let mut back = vec![0; 200_000];
        b.read_at(1000, &mut back).unwrap();
        assert!(back == data, "data read back");
        let mut small = [0; 4];
        b.read_at(4, &mut small).unwrap();
        assert_eq!(small, [0, 9, 9, 9]);
        let e = b.write_zeroes(1, 10, ZeroFlags::FAST).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        let text = std::fs::read_to_string(&log_path).unwrap();
        let _ = std::fs::remove_file(&log_path);
        for line in text.lines() {
            let field = |k: &str| {
                let v = line.split(&format!(" {k}=0x")).nth(1).unwrap();
                u64::from_str_radix(v.split(' ').next().unwrap(), 16).unwrap()
            };
            let (off, count) = (field("offset"), field("count"));
            assert_eq!(off % 4096, 0, "{line}");
            assert_eq!(count % 4096, 0, "{line}");
            let max = if line.contains(" Read ") || line.contains(" Write ") {
                65536
            } else {
                1 << 17
            };
            assert!(count <= max, "{line}");
        }
        assert!(
            text.contains(" Trim offset=0x3e000 count=0x1000 "),
            "{text}"
        );
    }

    #[test]
    fn bad_combinations_are_refused() {
        let m = || Arc::new(MemoryBackend::new(1 << 20).unwrap()) as Arc<dyn Backend>;
        let o = |min, data| BlocksizeOptions {
            minblock: Some(min),
            maxdata: data,
            maxlen: None,
        };
        assert!(Blocksize::new(m(), o(3000, None)).is_err());
        assert!(Blocksize::new(m(), o(1 << 17, None)).is_err());
        assert!(Blocksize::new(m(), o(4096, Some(5000))).is_err());
        let b = Blocksize::new(m(), o(512, None)).unwrap();
        let bs = super::super::Filter::block_size(&b).unwrap();
        assert_eq!((bs.minimum, bs.preferred, bs.maximum), (1, 4096, 32 << 20));
    }
}
