//! `delay`: sleep before reads (`rdelay=`) and writes (`wdelay=`), to test
//! clients and the driver against a slow disk.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::{Backend, BlockSize, Caps, DepthExtent, Execution, Extent, ZeroFlags};

/// Sleeps, then forwards. Never inline: a sleep on the event loop would
/// stall every connection.
pub struct Delay {
    inner: Arc<dyn Backend>,
    read: Duration,
    write: Duration,
}

impl Delay {
    /// Delay reads by `read` and writes, trims and zeroes by `write`.
    pub fn new(inner: Arc<dyn Backend>, read: Duration, write: Duration) -> Self {
        Self { inner, read, write }
    }
}

/// Parse `10ms`, `2s`, `1.5` (seconds) or `0`.
///
/// # Errors
///
/// A message naming the bad string.
pub fn parse_delay(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid delay '{s}' (e.g. 10ms, 2s, 0.5)");
    let (num, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1e-3)
    } else {
        (s.strip_suffix('s').unwrap_or(s), 1.0)
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(v * scale).map_err(|_| bad())
}

fn pause(d: Duration) {
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

impl Backend for Delay {
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
        Execution::Blocking
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        pause(self.read);
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        pause(self.write);
        self.inner.write_at(offset, data, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        pause(self.write);
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        pause(self.write);
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
    fn resize(&self, new_size: u64) -> io::Result<()> {
        self.inner.resize(new_size)
    }
    fn description(&self) -> Option<String> {
        self.inner.description()
    }
}
