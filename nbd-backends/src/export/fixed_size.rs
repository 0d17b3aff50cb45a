//! `FixedSize`: hides RESIZE from clients (issue 15). Every other call is
//! passed through unchanged, including the per-connection hooks, so a
//! per-connection handle is wrapped too.

use std::io;
use std::sync::Arc;

use crate::{Backend, BlockSize, Caps, ClientInfo, Execution, Extent, ZeroFlags};

/// Wraps a backend so that its size cannot be changed by clients.
pub struct FixedSize {
    inner: Arc<dyn Backend>,
}

impl FixedSize {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self { inner }
    }
}

impl Backend for FixedSize {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn caps(&self) -> Caps {
        self.inner.caps() - Caps::RESIZE
    }
    fn block_size(&self) -> Option<BlockSize> {
        self.inner.block_size()
    }
    fn execution(&self) -> Execution {
        self.inner.execution()
    }
    fn preconnect(&self, client: &ClientInfo<'_>) -> io::Result<()> {
        self.inner.preconnect(client)
    }
    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        Ok(self
            .inner
            .open(client)?
            .map(|h| Arc::new(Self::new(h)) as Arc<dyn Backend>))
    }
    fn per_client_data(&self) -> bool {
        self.inner.per_client_data()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.inner.write_at(offset, data, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.inner.write_zeroes(offset, len, flags)
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.cache(offset, len)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        self.inner.extents(offset, len, out)
    }
    /// `EPERM`, which the driver sends as `NBD_EPERM`: the operation is
    /// forbidden by configuration, not unknown.
    fn resize(&self, _new_size: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }
    fn description(&self) -> Option<String> {
        self.inner.description()
    }
}
