//! `error`: inject failures (`error=EIO`, `error-rate=10%`), to test how the
//! driver reports backend errors (checklist 85, 86, 113). As in nbdkit,
//! each operation can have its own settings (`error-pread=`,
//! `error-pwrite-rate=`, ...), and `error-file=PATH` (or
//! `error-OP-file=`) injects errors only while `PATH` exists, so a test can
//! switch failures on and off at run time.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::params::FilterParams;

use crate::util::len64;
use crate::{Backend, DepthExtent, Extent, ZeroFlags};

/// Operation names in the per-operation keys (`error-OP=`), in the order
/// of [`ErrorInject::with_rules`]' array.
pub const OPS: [&str; 7] = [
    "pread", "pwrite", "trim", "zero", "flush", "cache", "extents",
];

/// How one operation fails.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The error number injected.
    pub errno: i32,
    /// Probability, 0 to 1.
    pub rate: f64,
    /// Inject only while this file exists.
    pub file: Option<PathBuf>,
}

/// Fails each data operation with probability `rate`, with `errno`.
pub struct ErrorInject {
    inner: Arc<dyn Backend>,
    /// `(errno, threshold, trigger file)` per operation, indexed like
    /// [`OPS`]; the threshold is the probability scaled to u64.
    rules: Arc<[(i32, u64, Option<PathBuf>); 7]>,
    rng: AtomicU64,
}

/// Error names accepted by `error=`.
const ERRNOS: &[(&str, i32)] = &[
    ("EIO", libc::EIO),
    ("EPERM", libc::EPERM),
    ("ENOMEM", libc::ENOMEM),
    ("EINVAL", libc::EINVAL),
    ("ENOSPC", libc::ENOSPC),
    ("EROFS", libc::EROFS),
    ("EOVERFLOW", libc::EOVERFLOW),
    ("ENOTSUP", libc::ENOTSUP),
    ("ESHUTDOWN", libc::ESHUTDOWN),
];

/// Parse an errno name (`EIO`, case-insensitive).
///
/// # Errors
///
/// A message naming the bad string and the accepted names.
pub fn parse_errno(s: &str) -> Result<i32, String> {
    ERRNOS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(s))
        .map(|&(_, e)| e)
        .ok_or_else(|| {
            let names: Vec<_> = ERRNOS.iter().map(|e| e.0).collect();
            format!("invalid error '{s}' (one of {})", names.join(", "))
        })
}

/// Parse a rate: `0.1`, `10%`, `1`.
///
/// # Errors
///
/// A message naming the bad string.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (num, scale) = match s.strip_suffix('%') {
        Some(p) => (p, 0.01),
        None => (s, 1.0),
    };
    num.parse::<f64>()
        .ok()
        .map(|v| v * scale)
        .filter(|v| (0.0..=1.0).contains(v))
        .ok_or_else(|| format!("invalid rate '{s}' (between 0 and 1, or 0% to 100%)"))
}

impl ErrorInject {
    /// Fail with `errno` at probability `rate` (0 to 1).
    pub fn new(inner: Arc<dyn Backend>, errno: i32, rate: f64) -> Self {
        let rule = Rule {
            errno,
            rate,
            file: None,
        };
        Self::with_rules(inner, std::array::from_fn(|_| rule.clone()))
    }

    /// One rule per operation, indexed like [`OPS`].
    pub fn with_rules(inner: Arc<dyn Backend>, rules: [Rule; 7]) -> Self {
        let threshold = |rate: f64| {
            if rate >= 1.0 {
                u64::MAX
            } else {
                (rate * u64::MAX as f64) as u64
            }
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Self {
            inner,
            rules: Arc::new(rules.map(|r| (r.errno, threshold(r.rate), r.file))),
            rng: AtomicU64::new(seed),
        }
    }

    /// Decide whether this call, on `range` (offset, length; `None` for
    /// flush), fails (xorshift64*: tests need chance, not cryptography).
    fn roll(&self, op: usize, range: Option<(u64, u64)>) -> io::Result<()> {
        let Some((errno, threshold, file)) = self.rules.get(op) else {
            return Ok(());
        };
        let (errno, threshold) = (*errno, *threshold);
        if threshold == 0 || file.as_ref().is_some_and(|f| !f.exists()) {
            return Ok(());
        }
        let step = |mut x: u64| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x
        };
        let prev = self
            .rng
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(step(x)))
            .unwrap_or(1);
        let r = step(prev).wrapping_mul(0x2545_f491_4f6c_dd1d);
        if threshold == u64::MAX || r < threshold {
            // nbdkit logs every injection; -v (info) shows them here, so a
            // test's failures can be matched to the requests that got them.
            log::info!("{}", injected(OPS[op], range, errno));
            Err(io::Error::from_raw_os_error(errno))
        } else {
            Ok(())
        }
    }
}

/// The line logged for an injected error: the command, its range and the
/// errno, by name and number.
fn injected(op: &str, range: Option<(u64, u64)>, errno: i32) -> String {
    let name = ERRNOS
        .iter()
        .find(|e| e.1 == errno)
        .map_or("error", |e| e.0);
    match range {
        Some((offset, len)) => format!(
            "error filter: injecting {name} (errno {errno}) into {op} at offset {offset} length {len}"
        ),
        None => format!("error filter: injecting {name} (errno {errno}) into {op}"),
    }
}

impl super::Filter for ErrorInject {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): reads may be failed on purpose.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        let seed = self.rng.load(Ordering::Relaxed) ^ 0x9e37_79b9_7f4a_7c15;
        Ok(Arc::new(Self {
            inner,
            rules: Arc::clone(&self.rules),
            rng: AtomicU64::new(seed | 1),
        }))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.roll(0, Some((offset, len64(buf))))?;
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.roll(1, Some((offset, len64(data))))?;
        self.inner.write_at(offset, data, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.roll(4, None)?;
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.roll(2, Some((offset, len)))?;
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.roll(3, Some((offset, len)))?;
        self.inner.write_zeroes(offset, len, flags)
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.roll(5, Some((offset, len)))?;
        self.inner.cache(offset, len)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        self.roll(6, Some((offset, len)))?;
        self.inner.extents(offset, len, out)
    }
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        self.roll(6, Some((offset, len)))?;
        self.inner.allocation_depth(offset, len, out)
    }
}

/// The error filter's rules: `error=`, `error-rate=`, `error-file=` for
/// every operation, overridden per operation by `error-OP=`,
/// `error-OP-rate=`, `error-OP-file=` (nbdkit's spellings).
pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let mut one = |prefix: &str, default: Option<&Rule>| {
        let errno = match p.take_with(prefix, parse_errno_name)? {
            Some(e) => e,
            None => default.map_or(libc::EIO, |d| d.errno),
        };
        let rate = match p.take_with(&format!("{prefix}-rate"), parse_rate_value)? {
            Some(r) => r,
            // nbdkit's default: no errors until a rate is given.
            None => default.map_or(0.0, |d| d.rate),
        };
        let file = p
            .take(&format!("{prefix}-file"))
            .map(Into::into)
            .or_else(|| default.and_then(|d| d.file.clone()));
        Ok::<_, String>(Rule { errno, rate, file })
    };
    let all = one("error", None)?;
    let mut rules: [Rule; 7] = std::array::from_fn(|_| all.clone());
    for (rule, op) in rules.iter_mut().zip(OPS) {
        *rule = one(&format!("error-{op}"), Some(&all))?;
    }
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(ErrorInject::with_rules(b, rules.clone())))
    }))
}

/// [`parse_errno`]'s reason without the value (the caller names it).
fn parse_errno_name(s: &str) -> Result<i32, String> {
    parse_errno(s).map_err(|_| {
        let names: Vec<_> = ERRNOS.iter().map(|e| e.0).collect();
        format!("not an error name (one of {})", names.join(", "))
    })
}

fn parse_rate_value(s: &str) -> Result<f64, &'static str> {
    parse_rate(s).map_err(|_| "expected a rate between 0 and 1, or 0% to 100%")
}
