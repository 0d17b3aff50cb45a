//! `rate`: limit bandwidth with token buckets, for the whole server
//! (`rate=`) and per connection (`connection-rate=`), in bits per second
//! (`1M` = 2^20, as nbdkit's sizes). Reads and writes have separate
//! buckets; zeroes and trims are free (they carry no data on the wire).
//! `rate-file=` / `connection-rate-file=` hold a rate that is re-read at
//! most once a second; `burstiness=` is the bucket size in seconds of the
//! rate (default 2). A request waits (on a worker thread) until its bits
//! are paid for.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::params::FilterParams;
use crate::{Backend, ClientInfo, Execution};

/// Where a rate comes from.
#[derive(Debug, Clone, Default)]
pub struct RateSource {
    /// The fixed rate in bits per second (`None`: unlimited).
    pub rate: Option<u64>,
    /// A file whose contents override it while the server runs.
    pub file: Option<PathBuf>,
}

/// A token bucket of bits.
struct Bucket {
    source: RateSource,
    burst: f64,
    /// Bits per second now (0: unlimited).
    rate: f64,
    tokens: f64,
    last: Instant,
    checked: Option<Instant>,
}

impl Bucket {
    fn new(source: RateSource, burst: f64) -> Self {
        let rate = source.rate.unwrap_or(0) as f64;
        Self {
            source,
            burst,
            rate,
            tokens: rate * burst,
            last: Instant::now(),
            checked: None,
        }
    }

    /// Re-read the rate file, at most once a second. A missing or bad file
    /// keeps the last rate (nbdkit's rule).
    fn reread(&mut self, now: Instant) {
        let Some(path) = &self.source.file else {
            return;
        };
        if self
            .checked
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.checked = Some(now);
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(r) = crate::parse_size(text.trim())
        {
            self.rate = r as f64;
        }
    }

    /// Take `bits`; how long to wait for them.
    fn debit(&mut self, bits: f64) -> Duration {
        let now = Instant::now();
        self.reread(now);
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let capacity = self.rate * self.burst;
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(capacity) - bits;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Read and write buckets.
struct Pair([Mutex<Bucket>; 2]);

impl Pair {
    fn new(source: &RateSource, burst: f64) -> Self {
        let b = || Mutex::new(Bucket::new(source.clone(), burst));
        Self([b(), b()])
    }

    fn debit(&self, dir: usize, bits: f64) -> Duration {
        self.0[dir]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .debit(bits)
    }
}

/// The limits.
#[derive(Debug, Clone, Default)]
pub struct RateOptions {
    /// Whole server.
    pub total: RateSource,
    /// Each connection.
    pub connection: RateSource,
    /// Bucket size in seconds.
    pub burstiness: f64,
}

/// Sleeps so that traffic stays under the rates.
pub struct Rate {
    inner: Arc<dyn Backend>,
    opts: Arc<RateOptions>,
    total: Arc<Pair>,
    connection: Pair,
}

impl Rate {
    /// Limit `inner` as `opts` says.
    pub fn new(inner: Arc<dyn Backend>, opts: RateOptions) -> Self {
        let total = Arc::new(Pair::new(&opts.total, opts.burstiness));
        let connection = Pair::new(&opts.connection, opts.burstiness);
        Self {
            inner,
            opts: Arc::new(opts),
            total,
            connection,
        }
    }

    fn copy(&self, inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            opts: Arc::clone(&self.opts),
            total: Arc::clone(&self.total),
            connection: Pair::new(&self.opts.connection, self.opts.burstiness),
        }
    }

    fn pay(&self, dir: usize, bytes: usize) {
        let bits = bytes as f64 * 8.0;
        let wait = self
            .connection
            .debit(dir, bits)
            .max(self.total.debit(dir, bits));
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let opts = RateOptions {
        total: RateSource {
            rate: p.take_size("rate")?,
            file: p.take("rate-file").map(Into::into),
        },
        connection: RateSource {
            rate: p.take_size("connection-rate")?,
            file: p.take("connection-rate-file").map(Into::into),
        },
        burstiness: p
            .take_with("burstiness", |v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|b| b.is_finite() && *b > 0.0)
                    .ok_or("expected a number of seconds above 0")
            })?
            .unwrap_or(2.0),
    };
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(Rate::new(b, opts.clone())))
    }))
}

impl super::Filter for Rate {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): reads pay into the bandwidth buckets.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(self.copy(inner)))
    }
    /// Each connection gets its own buckets.
    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        let inner = super::layer::open_below(&self.inner, client)?;
        Ok(Some(Arc::new(self.copy(inner))))
    }
    fn execution(&self) -> Execution {
        Execution::Blocking
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.pay(0, buf.len());
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.pay(1, data.len());
        self.inner.write_at(offset, data, fua)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_waits_for_what_exceeds_the_burst() {
        let src = RateSource {
            rate: Some(8000),
            file: None,
        };
        let mut b = Bucket::new(src, 1.0);
        assert_eq!(b.debit(8000.0), Duration::ZERO, "the burst is free");
        let w = b.debit(4000.0);
        assert!(
            w > Duration::from_millis(400) && w <= Duration::from_millis(500),
            "{w:?}"
        );
        let unlimited = &mut Bucket::new(RateSource::default(), 2.0);
        assert_eq!(unlimited.debit(1e12), Duration::ZERO);
    }

    #[test]
    fn rate_file_overrides() {
        let path = std::env::temp_dir().join(format!("nbdd-rate-{}", std::process::id()));
        std::fs::write(&path, "8k\n").unwrap();
        let src = RateSource {
            rate: None,
            file: Some(path.clone()),
        };
        let mut b = Bucket::new(src, 1.0);
        b.debit(0.0);
        assert_eq!(b.rate, 8192.0);
        let _ = std::fs::remove_file(&path);
    }
}
