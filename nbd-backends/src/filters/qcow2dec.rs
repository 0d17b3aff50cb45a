//! `qcow2dec`: the inner backend's bytes are a qcow2 image; serve what it
//! contains, read-only (as nbdkit's qcow2dec filter does). For writes,
//! backing files and the rest of qcow2, use the `qcow2` backend.

use std::io;
use std::sync::Arc;

use crate::qcow2::dec::{Cluster, Decoder};
use crate::util::{check_read, len64, out_of_range, push_depth, push_extent, read_only};
use crate::{Backend, Caps, DepthExtent, Execution, Extent, ExtentFlags, ZeroFlags};

/// The decoded image.
pub struct Qcow2Dec {
    dec: Decoder,
    inner: Arc<dyn Backend>,
}

impl Qcow2Dec {
    /// Decode `inner` as qcow2.
    ///
    /// # Errors
    ///
    /// When the header or L1 table is malformed, or the image uses a
    /// feature the decoder does not read (backing file, encryption,
    /// external data file, zstd compression, extended L2).
    pub fn new(inner: Arc<dyn Backend>) -> io::Result<Self> {
        Ok(Self {
            dec: Decoder::open(Arc::clone(&inner))?,
            inner,
        })
    }

    /// Each cluster in `[offset, offset + len)` (clipped to the image) as
    /// `(run length, cluster state)`, fed to `push` until it returns false.
    fn walk(
        &self,
        offset: u64,
        len: u64,
        mut push: impl FnMut(u64, Cluster) -> bool,
    ) -> io::Result<()> {
        let size = self.dec.size();
        if offset > size {
            return Err(out_of_range());
        }
        let (end, cs) = (
            offset.saturating_add(len).min(size),
            self.dec.cluster_size(),
        );
        let mut pos = offset;
        while pos < end {
            let to = ((pos / cs + 1) * cs).min(end);
            if !push(to - pos, self.dec.lookup(pos / cs)?) {
                break;
            }
            pos = to;
        }
        Ok(())
    }
}

pub(crate) fn spec(_p: &mut super::params::FilterParams<'_, '_>) -> Result<super::Spec, String> {
    Ok(super::Spec::new(|b| {
        let d = Qcow2Dec::new(b).map_err(|e| {
            let e = e.to_string();
            format!(
                "qcow2dec filter: {}",
                e.strip_prefix("qcow2dec: ").unwrap_or(&e)
            )
        })?;
        Ok(Arc::new(d))
    })
    .read_only_below())
}

impl super::Filter for Qcow2Dec {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): the data is decoded from qcow2 clusters.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self::new(inner)?))
    }
    fn block_size(&self) -> Option<crate::BlockSize> {
        None
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn cache(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.dec.size()
    }
    fn caps(&self) -> Caps {
        let kept = self.inner.caps() & (Caps::MULTI_CONN | Caps::ROTATIONAL);
        kept | Caps::READ_ONLY | Caps::FLUSH | Caps::EXTENTS | Caps::ALLOCATION_DEPTH
    }
    fn execution(&self) -> Execution {
        self.inner.execution()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = check_read(offset, len64(buf), self.dec.size())?;
        let cs = self.dec.cluster_size();
        let mut pos = offset;
        while pos < end {
            let to = ((pos / cs + 1) * cs).min(end);
            let part = &mut buf[(pos - offset) as usize..(to - offset) as usize];
            self.dec.read_in_cluster(pos, part)?;
            pos = to;
        }
        Ok(())
    }
    fn write_at(&self, _offset: u64, _data: &[u8], _fua: bool) -> io::Result<()> {
        Err(read_only())
    }
    fn trim(&self, _offset: u64, _len: u64, _fua: bool) -> io::Result<()> {
        Err(read_only())
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _flags: ZeroFlags) -> io::Result<()> {
        Err(read_only())
    }
    fn resize(&self, _new_size: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        let mut n = 0;
        self.walk(offset, len, |l, c| {
            let flags = match c {
                Cluster::Unallocated | Cluster::Zero => ExtentFlags::HOLE | ExtentFlags::ZERO,
                Cluster::Data(_) | Cluster::Compressed { .. } => ExtentFlags::empty(),
            };
            push_extent(out, &mut n, l, flags)
        })?;
        Ok(n)
    }
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        let mut n = 0;
        self.walk(offset, len, |l, c| {
            push_depth(out, &mut n, l, u32::from(c != Cluster::Unallocated))
        })?;
        Ok(n)
    }
    fn description(&self) -> Option<String> {
        self.inner.description()
    }
}
