//! `stats`: count operations and bytes; the totals are written to
//! `statsfile=` (or logged) when the export is dropped at shutdown.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Backend, BlockSize, Caps, DepthExtent, Execution, Extent, ZeroFlags};

const OPS: [&str; 7] = ["read", "write", "trim", "zero", "flush", "cache", "extents"];

/// Forwards everything, counting requests and bytes per operation.
pub struct Stats {
    inner: Arc<dyn Backend>,
    file: Option<PathBuf>,
    /// `[op] = (requests, bytes)`, indexed like `OPS`.
    counts: [(AtomicU64, AtomicU64); 7],
}

impl Stats {
    /// Count `inner`'s traffic; report to `file` (or the log) on drop.
    pub fn new(inner: Arc<dyn Backend>, file: Option<PathBuf>) -> Self {
        Self {
            inner,
            file,
            counts: Default::default(),
        }
    }

    fn note(&self, op: usize, bytes: u64) {
        self.counts[op].0.fetch_add(1, Ordering::Relaxed);
        self.counts[op].1.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One line per operation: `read: 12 ops, 49152 bytes`.
    pub fn report(&self) -> String {
        OPS.iter()
            .zip(&self.counts)
            .map(|(name, (n, b))| {
                let (n, b) = (n.load(Ordering::Relaxed), b.load(Ordering::Relaxed));
                format!("{name}: {n} ops, {b} bytes\n")
            })
            .collect()
    }
}

impl Drop for Stats {
    fn drop(&mut self) {
        let report = self.report();
        match &self.file {
            Some(path) => {
                if let Err(e) = std::fs::write(path, &report) {
                    log::warn!("stats: {}: {e}", path.display());
                }
            }
            None => log::info!("stats:\n{report}"),
        }
    }
}

impl Backend for Stats {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn caps(&self) -> Caps {
        self.inner.caps()
    }
    fn block_size(&self) -> Option<BlockSize> {
        self.inner.block_size()
    }
    fn execution(&self) -> Execution {
        self.inner.execution()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.note(0, buf.len() as u64);
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.note(1, data.len() as u64);
        self.inner.write_at(offset, data, fua)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.note(2, len);
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.note(3, len);
        self.inner.write_zeroes(offset, len, flags)
    }
    fn flush(&self) -> io::Result<()> {
        self.note(4, 0);
        self.inner.flush()
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.note(5, len);
        self.inner.cache(offset, len)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        self.note(6, len);
        self.inner.extents(offset, len, out)
    }
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        self.note(6, len);
        self.inner.allocation_depth(offset, len, out)
    }
    fn resize(&self, new_size: u64) -> io::Result<()> {
        self.inner.resize(new_size)
    }
    fn description(&self) -> Option<String> {
        self.inner.description()
    }
}
