//! `FixedSize`: hides RESIZE from clients (issue 15). Every other call is
//! passed through unchanged, including the per-connection hooks, so a
//! per-connection handle is wrapped too, and the fast paths: the
//! asynchronous interface, cached and lent READs, allocation depth. (They
//! were once not forwarded, and every export that could resize but was
//! not allowed to lost them silently: an `rbd` image ran on the worker
//! pool instead of librbd's aio queue, and a `memory` export copied its
//! READs; `tests` below checks each.)

use std::io;
use std::sync::Arc;

use crate::{
    AsyncBackend, Backend, BlockSize, Caps, ClientInfo, DepthExtent, Execution, Extent, Piece,
    ZeroFlags,
};

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
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        self.inner.try_read_cached(offset, buf)
    }
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        self.inner.try_write_cached(offset, data)
    }
    fn read_lent(&self, offset: u64, len: usize, out: &mut Vec<Piece>) -> Option<io::Result<()>> {
        self.inner.read_lent(offset, len, out)
    }
    fn takes_pages(&self) -> bool {
        self.inner.takes_pages()
    }
    fn write_pages(
        &self,
        offset: u64,
        pages: &mut [Option<std::sync::Arc<crate::Page>>],
        fua: bool,
    ) -> io::Result<()> {
        self.inner.write_pages(offset, pages, fua)
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
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        self.inner.allocation_depth(offset, len, out)
    }
    /// Resizes through the asynchronous interface are not possible: it
    /// carries reads, writes, flushes, trims and zeroes only.
    fn as_async(&self) -> Option<&dyn AsyncBackend> {
        self.inner.as_async()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    /// A backend with every optional path, to see which ones the wrapper
    /// passes on.
    struct Full;
    impl AsyncBackend for Full {
        fn queue(&self) -> io::Result<Box<dyn crate::AioQueue>> {
            Err(io::Error::other("not here"))
        }
    }
    impl Backend for Full {
        fn size(&self) -> u64 {
            4096
        }
        fn caps(&self) -> Caps {
            Caps::RESIZE | Caps::ALLOCATION_DEPTH
        }
        fn read_at(&self, _: u64, buf: &mut [u8]) -> io::Result<()> {
            buf.fill(1);
            Ok(())
        }
        fn try_read_cached(&self, _: u64, buf: &mut [u8]) -> bool {
            buf.fill(2);
            true
        }
        fn write_at(&self, _: u64, _: &[u8], _: bool) -> io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64, _: ZeroFlags) -> io::Result<()> {
            Ok(())
        }
        fn allocation_depth(&self, _: u64, len: u64, out: &mut [DepthExtent]) -> io::Result<usize> {
            out[0] = DepthExtent { len, depth: 7 };
            Ok(1)
        }
        fn as_async(&self) -> Option<&dyn AsyncBackend> {
            Some(self)
        }
    }

    #[test]
    fn only_resize_is_withheld() {
        let f = FixedSize::new(Arc::new(Full));
        assert!(!f.caps().contains(Caps::RESIZE));
        assert!(f.resize(0).is_err());
        assert!(f.as_async().is_some(), "the aio queue (rbd) is lost");
        let mut b = [0u8; 4];
        assert!(f.try_read_cached(0, &mut b) && b == [2; 4]);
        let mut d = [DepthExtent::default(); 1];
        assert_eq!(f.allocation_depth(0, 4096, &mut d).unwrap(), 1);
        assert_eq!(d[0].depth, 7);
        let m = FixedSize::new(Arc::new(MemoryBackend::new(1 << 20).unwrap()));
        let mut pieces = Vec::new();
        assert!(m.read_lent(0, 8192, &mut pieces).is_some_and(|r| r.is_ok()));
        assert_eq!(pieces.len(), 2);
        assert!(m.takes_pages(), "zero-copy WRITEs are lost");
        let mut pages = [Some(Arc::new([9u8; crate::lent::PAGE_SIZE]))];
        m.write_pages(4096, &mut pages, false).unwrap();
        let mut b = [0u8; 1];
        m.read_at(4096, &mut b).unwrap();
        assert_eq!(b, [9]);
    }
}
