//! `noextents`: report the whole export as allocated data, hiding holes
//! (for a layer below whose extents are slow, such as `file` on tmpfs).

use std::io;
use std::sync::Arc;

use super::params::FilterParams;
use crate::{Backend, Caps, Extent};

/// Forwards everything but block status.
pub struct NoExtents {
    inner: Arc<dyn Backend>,
}

pub(crate) fn spec(_p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    Ok(super::Spec::new(|inner| Ok(Arc::new(NoExtents { inner }))))
}

impl super::Filter for NoExtents {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached forwarded: reads are the layer below's; only block status changes.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        super::layer::forward_cached(self, offset, buf)
    }
    // try_write_cached forwarded: writes are the layer below's; only block status changes.
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        super::layer::forward_cached_write(self, offset, data)
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self { inner }))
    }
    fn caps(&self) -> Caps {
        self.inner.caps() - Caps::EXTENTS
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        crate::util::all_data(self.inner.size(), offset, len, out)
    }
}
