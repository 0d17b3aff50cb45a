//! `readonly`: refuse every modification (`-r`, or `--filter=readonly`);
//! with `readonly-file=PATH` (nbdkit 1.40) only while `PATH` exists.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::params::FilterParams;
use crate::util::read_only;
use crate::{Backend, Caps, ZeroFlags};

/// Passes reads through; writes, trims, zeroes and resizes fail before
/// reaching the inner backend: with `EROFS` (checklist 70, 71) when always
/// read-only, with `EPERM` (as nbdkit) while the switch file exists.
pub struct ReadOnly {
    inner: Arc<dyn Backend>,
    file: Option<PathBuf>,
}

impl ReadOnly {
    /// Wrap `inner`, read-only for good.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self { inner, file: None }
    }

    /// Wrap `inner`, read-only while `file` exists (always when `None`).
    pub fn with_file(inner: Arc<dyn Backend>, file: Option<PathBuf>) -> Self {
        Self { inner, file }
    }

    fn check(&self) -> io::Result<()> {
        match &self.file {
            None => Err(read_only()),
            Some(p) if p.exists() => Err(io::Error::from_raw_os_error(libc::EPERM)),
            Some(_) => Ok(()),
        }
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let file: Option<PathBuf> = p.take("readonly-file").map(Into::into);
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(ReadOnly::with_file(b, file.clone())))
    }))
}

impl super::Filter for ReadOnly {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached forwarded: reads are the layer below's (readonly-file= only guards changes).
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        super::layer::forward_cached(self, offset, buf)
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self::with_file(inner, self.file.clone())))
    }
    fn caps(&self) -> Caps {
        if self.file.is_some() {
            return self.inner.caps();
        }
        let kept = Caps::FLUSH
            | Caps::EXTENTS
            | Caps::ALLOCATION_DEPTH
            | Caps::CACHE
            | Caps::MULTI_CONN
            | Caps::ROTATIONAL;
        (self.inner.caps() & kept) | Caps::READ_ONLY
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.check()?;
        self.inner.write_at(offset, data, fua)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.check()?;
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.check()?;
        self.inner.write_zeroes(offset, len, flags)
    }
    fn resize(&self, new_size: u64) -> io::Result<()> {
        self.check()?;
        self.inner.resize(new_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn switch_file_toggles_writes() {
        let path = std::env::temp_dir().join(format!("nbdd-ro-switch-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let b = ReadOnly::with_file(
            Arc::new(MemoryBackend::new(4096).unwrap()),
            Some(path.clone()),
        );
        assert!(!b.caps().contains(Caps::READ_ONLY));
        b.write_at(0, &[1], false).unwrap();
        std::fs::write(&path, b"").unwrap();
        let e = b.write_at(0, &[2], false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert!(b.write_zeroes(0, 1, ZeroFlags::empty()).is_err());
        std::fs::remove_file(&path).unwrap();
        b.write_at(0, &[3], false).unwrap();
        let mut got = [0];
        b.read_at(0, &mut got).unwrap();
        assert_eq!(got, [3]);
    }
}
