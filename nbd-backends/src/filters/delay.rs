//! `delay`: sleep before operations, to test clients and the driver
//! against a slow disk. nbdkit's keys: `rdelay=`/`delay-read=`,
//! `wdelay=` (writes, zeroes and trims), `delay-write=`, `delay-zero=`,
//! `delay-trim=`, `delay-extents=`, `delay-cache=`, `delay-fast-zero=`;
//! `delay-open=`/`delay-close=` are accepted with a warning (open and close
//! happen on the event loop, where a sleep would stall every client).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::params::FilterParams;
use crate::{Backend, Execution, Extent, ZeroFlags};

/// How long each kind of operation waits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delays {
    /// Reads.
    pub read: Duration,
    /// Writes.
    pub write: Duration,
    /// Write-zeroes.
    pub zero: Duration,
    /// Trims.
    pub trim: Duration,
    /// Block status.
    pub extents: Duration,
    /// Cache (prefetch).
    pub cache: Duration,
    /// False: a fast zero fails at once with ENOTSUP instead of waiting
    /// (nbdkit's `delay-fast-zero=false`).
    pub fast_zero_waits: bool,
}

/// Sleeps, then forwards. Never inline: a sleep on the event loop would
/// stall every connection.
pub struct Delay {
    inner: Arc<dyn Backend>,
    d: Delays,
}

impl Delay {
    /// Delay reads by `read` and writes, trims and zeroes by `write`.
    pub fn new(inner: Arc<dyn Backend>, read: Duration, write: Duration) -> Self {
        let d = Delays {
            read,
            write,
            zero: write,
            trim: write,
            fast_zero_waits: true,
            ..Delays::default()
        };
        Self::with_delays(inner, d)
    }

    /// Delay each operation as `d` says.
    pub fn with_delays(inner: Arc<dyn Backend>, d: Delays) -> Self {
        Self { inner, d }
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

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let rdelay = p.take_delay("rdelay")?;
    let wdelay = p.take_delay("wdelay")?.unwrap_or_default();
    let mut d = Delays {
        read: p.take_delay("delay-read")?.or(rdelay).unwrap_or_default(),
        write: p.take_delay("delay-write")?.unwrap_or(wdelay),
        zero: p.take_delay("delay-zero")?.unwrap_or(wdelay),
        trim: p.take_delay("delay-trim")?.unwrap_or(wdelay),
        extents: p.take_delay("delay-extents")?.unwrap_or_default(),
        cache: p.take_delay("delay-cache")?.unwrap_or_default(),
        fast_zero_waits: true,
    };
    d.fast_zero_waits = p.take_bool("delay-fast-zero")?.unwrap_or(true);
    for key in ["delay-open", "delay-close"] {
        if p.take_delay(key)?.is_some_and(|t| !t.is_zero()) {
            p.warn(format_args!(
                "{key}= is ignored: nbdd opens and closes connections on its event loop, \
                 where a sleep would stall every client"
            ));
        }
    }
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(Delay::with_delays(b, d)))
    }))
}

fn pause(d: Duration) {
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

impl super::Filter for Delay {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): reads are delayed.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self::with_delays(inner, self.d)))
    }
    fn execution(&self) -> Execution {
        Execution::Blocking
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        pause(self.d.read);
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        pause(self.d.write);
        self.inner.write_at(offset, data, fua)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        pause(self.d.trim);
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        if flags.contains(ZeroFlags::FAST) && !self.d.fast_zero_waits {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        pause(self.d.zero);
        self.inner.write_zeroes(offset, len, flags)
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        pause(self.d.cache);
        self.inner.cache(offset, len)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        pause(self.d.extents);
        self.inner.extents(offset, len, out)
    }
}
