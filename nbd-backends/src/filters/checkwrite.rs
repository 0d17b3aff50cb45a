//! `checkwrite`: writes become checks that the data is already there
//! (EIO if not), to test copying tools: `nbdcopy "$uri" "$uri"` through
//! this filter fails if the copy is wrong. Zeroes and trims check that the
//! range reads as zeroes (sparseness is ignored). The layer below is
//! opened read-only and never written.

use std::io;
use std::sync::Arc;

use super::params::FilterParams;
use crate::util::{check_write, is_zero, len64};
use crate::{Backend, Caps, Extent, ExtentFlags, ZeroFlags};

/// Largest read made to compare.
const CHUNK: u64 = 1 << 20;

/// Compares instead of writing.
pub struct CheckWrite {
    inner: Arc<dyn Backend>,
}

impl CheckWrite {
    /// Check writes against `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self { inner }
    }

    fn mismatch(offset: u64) -> io::Error {
        log::warn!("checkwrite filter: data differs at offset {offset}");
        io::Error::from_raw_os_error(libc::EIO)
    }

    /// EIO unless `[offset, end)` reads as zeroes; ranges the layer below
    /// reports as ZERO are not read.
    fn check_zero(&self, offset: u64, end: u64) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut pos = offset;
        while pos < end {
            let mut ext = [Extent::default(); 1];
            let known_zero = match self.inner.extents(pos, end - pos, &mut ext) {
                Ok(1) if ext[0].flags.contains(ExtentFlags::ZERO) => ext[0].len.min(end - pos),
                _ => 0,
            };
            if known_zero > 0 {
                pos += known_zero;
                continue;
            }
            let n = (end - pos).min(CHUNK);
            buf.resize(n as usize, 0);
            self.inner.read_at(pos, &mut buf)?;
            if !is_zero(&buf) {
                return Err(Self::mismatch(pos));
            }
            pos += n;
        }
        Ok(())
    }
}

pub(crate) fn spec(_p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    Ok(super::Spec::new(|b| Ok(Arc::new(CheckWrite::new(b)))).read_only_below())
}

impl super::Filter for CheckWrite {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached forwarded: reads are the layer below's; only writes become checks.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        super::layer::forward_cached(self, offset, buf)
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self::new(inner)))
    }
    fn caps(&self) -> Caps {
        let kept = Caps::EXTENTS
            | Caps::ALLOCATION_DEPTH
            | Caps::CACHE
            | Caps::MULTI_CONN
            | Caps::ROTATIONAL;
        (self.inner.caps() & kept)
            | Caps::FLUSH
            | Caps::FUA
            | Caps::TRIM
            | Caps::WRITE_ZEROES
            | Caps::FAST_ZERO
    }
    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        check_write(offset, len64(data), self.inner.size())?;
        let mut have = vec![0u8; data.len().min(CHUNK as usize)];
        for (i, want) in data.chunks(CHUNK as usize).enumerate() {
            let at = offset + i as u64 * CHUNK;
            let have = &mut have[..want.len()];
            self.inner.read_at(at, have)?;
            if have != want {
                return Err(Self::mismatch(at));
            }
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        let end = check_write(offset, len, self.inner.size())?;
        self.check_zero(offset, end)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> io::Result<()> {
        let end = check_write(offset, len, self.inner.size())?;
        self.check_zero(offset, end)
    }
    fn resize(&self, _new_size: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn equal_writes_pass_others_fail_and_nothing_changes() {
        let m = Arc::new(MemoryBackend::new(4 << 20).unwrap());
        m.write_at(100, b"hello", false).unwrap();
        let c = CheckWrite::new(m.clone());
        c.write_at(100, b"hello", false).unwrap();
        c.write_at(0, &[0; 100], false).unwrap();
        let e = c.write_at(100, b"help!", false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        c.write_zeroes(1 << 20, 3 << 20, ZeroFlags::empty())
            .unwrap();
        assert!(c.trim(0, 200, false).is_err(), "data is not zero");
        let mut b = [0; 5];
        m.read_at(100, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert!(!c.caps().contains(Caps::READ_ONLY));
    }
}
