//! `readonly`: refuse every modification (`-r`, or `--filter readonly`).

use std::io;
use std::sync::Arc;

use crate::util::read_only;
use crate::{Backend, BlockSize, Caps, DepthExtent, Execution, Extent, ZeroFlags};

/// Passes reads through; writes, trims, zeroes and resizes fail with
/// `EROFS` (checklist 70, 71) before reaching the inner backend.
pub struct ReadOnly {
    inner: Arc<dyn Backend>,
}

impl ReadOnly {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self { inner }
    }
}

impl Backend for ReadOnly {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn caps(&self) -> Caps {
        let kept = Caps::FLUSH
            | Caps::EXTENTS
            | Caps::ALLOCATION_DEPTH
            | Caps::CACHE
            | Caps::MULTI_CONN
            | Caps::ROTATIONAL;
        (self.inner.caps() & kept) | Caps::READ_ONLY
    }
    fn block_size(&self) -> Option<BlockSize> {
        self.inner.block_size()
    }
    fn execution(&self) -> Execution {
        self.inner.execution()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, _offset: u64, _data: &[u8], _fua: bool) -> io::Result<()> {
        Err(read_only())
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn trim(&self, _offset: u64, _len: u64, _fua: bool) -> io::Result<()> {
        Err(read_only())
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _flags: ZeroFlags) -> io::Result<()> {
        Err(read_only())
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.cache(offset, len)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        self.inner.extents(offset, len, out)
    }
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        self.inner.allocation_depth(offset, len, out)
    }
    fn resize(&self, _new_size: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn description(&self) -> Option<String> {
        self.inner.description()
    }
}
