//! `stats`: count operations, bytes and time; the totals are written to
//! `statsfile=` (replaced, or appended to with `statsappend=true`; logged
//! without a file) when the export is dropped at shutdown, in nbdkit's
//! format:
//!
//! ```text
//! total: 191 ops, 21.917545 s, 25.13 GiB, 1.15 GiB/s
//! read: 136 ops, 0.000230 s, 3.16 MiB, 13.43 GiB/s op, 147.83 KiB/s total
//! ```
//!
//! With `statsthreshold=P` (default 95; 0 = off) each operation also gets
//! nbdkit's request size and alignment breakdown, covering P% of requests.
//! Per-connection copies share the counters.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::params::FilterParams;
use crate::{Backend, DepthExtent, Extent, ZeroFlags};

const OPS: [&str; 7] = ["read", "write", "trim", "zero", "extents", "cache", "flush"];
const READ: usize = 0;
const WRITE: usize = 1;
const TRIM: usize = 2;
const ZERO: usize = 3;
const EXTENTS: usize = 4;
const CACHE: usize = 5;
const FLUSH: usize = 6;

/// Requests of one size class (bits needed for the length).
#[derive(Clone, Copy)]
struct Class {
    reqs: u64,
    bytes: u64,
    /// `[b]` = requests whose offset has at least `b` trailing zero bits.
    aligned: [u64; 65],
}

/// Counters of one operation.
#[derive(Default)]
struct Op {
    reqs: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
    /// Size/alignment histogram, allocated on first use when enabled.
    classes: Mutex<Option<Box<[Class; 65]>>>,
}

/// Where and how to report.
#[derive(Debug, Clone, Default)]
pub struct StatsOptions {
    /// `statsfile=`; `None`: the log.
    pub file: Option<PathBuf>,
    /// `statsappend=true`.
    pub append: bool,
    /// `statsthreshold=`: percentage of requests the breakdown covers;
    /// 0 turns it off.
    pub threshold: u32,
}

/// The counters of one export, reported when the last copy goes.
struct Shared {
    opts: StatsOptions,
    start: Instant,
    ops: [Op; 7],
}

/// Forwards everything, counting requests, bytes and time per operation.
pub struct Stats {
    inner: Arc<dyn Backend>,
    shared: Arc<Shared>,
}

impl Stats {
    /// Count `inner`'s traffic; report to `file` (or the log) on drop,
    /// without the size breakdown.
    pub fn new(inner: Arc<dyn Backend>, file: Option<PathBuf>) -> Self {
        let opts = StatsOptions {
            file,
            ..StatsOptions::default()
        };
        Self::with_options(inner, opts)
    }

    /// Count `inner`'s traffic, reporting as `opts` says.
    pub fn with_options(inner: Arc<dyn Backend>, opts: StatsOptions) -> Self {
        let shared = Arc::new(Shared {
            opts,
            start: Instant::now(),
            ops: Default::default(),
        });
        Self { inner, shared }
    }

    /// The report as it would be written now.
    pub fn report(&self) -> String {
        self.shared.report()
    }

    fn timed<T>(&self, op: usize, offset: u64, bytes: u64, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.shared
            .note(op, offset, bytes, t.elapsed().as_nanos() as u64);
        r
    }
}

impl Shared {
    fn note(&self, op: usize, offset: u64, bytes: u64, nanos: u64) {
        let o = &self.ops[op];
        o.reqs.fetch_add(1, Ordering::Relaxed);
        o.bytes.fetch_add(bytes, Ordering::Relaxed);
        o.nanos.fetch_add(nanos, Ordering::Relaxed);
        if self.opts.threshold == 0 || op == FLUSH {
            return;
        }
        let mut classes = o.classes.lock().unwrap_or_else(PoisonError::into_inner);
        let classes = classes.get_or_insert_with(|| {
            let empty = Class {
                reqs: 0,
                bytes: 0,
                aligned: [0; 65],
            };
            Box::new([empty; 65])
        });
        // nbdkit's class: floor(log2(size)), so 4096..8191 is "12 bits".
        let c = &mut classes[bytes.checked_ilog2().unwrap_or(0) as usize];
        c.reqs += 1;
        // Extents requests may name u64::MAX bytes.
        c.bytes = c.bytes.saturating_add(bytes);
        let tz = if offset == 0 {
            64
        } else {
            offset.trailing_zeros()
        };
        for a in &mut c.aligned[..=tz as usize] {
            *a += 1;
        }
    }

    fn report(&self) -> String {
        let elapsed = self.start.elapsed().as_secs_f64().max(1e-9);
        let load = |o: &Op| {
            (
                o.reqs.load(Ordering::Relaxed),
                o.bytes.load(Ordering::Relaxed),
                o.nanos.load(Ordering::Relaxed) as f64 / 1e9,
            )
        };
        let (mut n, mut bytes) = (0u64, 0u64);
        for o in &self.ops {
            let (r, b, _) = load(o);
            n += r;
            bytes = bytes.saturating_add(b);
        }
        let mut s = format!(
            "total: {n} ops, {elapsed:.6} s, {}, {}/s\n",
            human(bytes as f64),
            human(bytes as f64 / elapsed)
        );
        for (name, o) in OPS.iter().zip(&self.ops) {
            let (r, b, t) = load(o);
            if r == 0 {
                continue;
            }
            let per_op = if t > 0.0 { b as f64 / t } else { 0.0 };
            let _ = writeln!(
                s,
                "{name}: {r} ops, {t:.6} s, {}, {}/s op, {}/s total",
                human(b as f64),
                human(per_op),
                human(b as f64 / elapsed)
            );
            self.breakdown(&mut s, o, r);
        }
        s
    }

    /// nbdkit's "Request size and alignment breakdown", largest classes
    /// first, until `threshold` percent of the requests are shown.
    fn breakdown(&self, s: &mut String, o: &Op, total: u64) {
        let classes = o.classes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(classes) = classes.as_ref() else {
            return;
        };
        let mut order: Vec<usize> = (0..65).filter(|&i| classes[i].reqs > 0).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(classes[i].reqs));
        let pct = |x: u64, of: u64| 100.0 * x as f64 / of.max(1) as f64;
        s.push_str("  Request size and alignment breakdown:\n");
        let mut shown = 0;
        for (k, &i) in order.iter().enumerate() {
            if pct(shown, total) >= f64::from(self.opts.threshold) {
                let (reqs, bytes) = order[k..].iter().fold((0u64, 0u64), |(r, b), &j| {
                    (r + classes[j].reqs, b.saturating_add(classes[j].bytes))
                });
                let _ = writeln!(
                    s,
                    "    other sizes: {:4.1}% ({reqs} reqs, {} total)",
                    pct(reqs, total),
                    human(bytes as f64)
                );
                break;
            }
            let c = &classes[i];
            shown += c.reqs;
            let _ = writeln!(
                s,
                "    {i} bits: {:4.1}% ({} reqs, {} total)",
                pct(c.reqs, total),
                c.reqs,
                human(c.bytes as f64)
            );
            // From the largest alignment every request has, each level
            // where the count drops, while any request is left.
            let full = (0..65).rev().find(|&b| c.aligned[b] == c.reqs).unwrap_or(0);
            let mut last = 0;
            for b in full..65 {
                let a = c.aligned[b];
                if a == 0 {
                    break;
                }
                if a != last {
                    let _ = writeln!(s, "         {b} bit aligned: {:5.1}% ({a})", pct(a, c.reqs));
                    last = a;
                }
            }
        }
    }
}

/// `123 bytes`, `3.16 MiB`, `1.15 GiB`, as nbdkit prints sizes.
fn human(v: f64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if v < 1024.0 {
        return format!("{} bytes", v.round() as u64);
    }
    let mut v = v / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

impl Drop for Shared {
    fn drop(&mut self) {
        let report = self.report();
        let Some(path) = &self.opts.file else {
            log::info!("stats:\n{report}");
            return;
        };
        let written = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(self.opts.append)
            .truncate(!self.opts.append)
            .open(path)
            .and_then(|mut f| f.write_all(report.as_bytes()));
        if let Err(e) = written {
            log::warn!("stats filter: statsfile={}: {e}", path.display());
        }
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let opts = StatsOptions {
        file: p.take("statsfile").map(Into::into),
        append: p.take_bool("statsappend")?.unwrap_or(false),
        threshold: match p.take_number::<u32>("statsthreshold")? {
            Some(t) if t > 100 => {
                return Err(p.bad("statsthreshold", &t.to_string(), "expected 0 to 100"));
            }
            t => t.unwrap_or(95),
        },
    };
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(Stats::with_options(b, opts.clone())))
    }))
}

impl super::Filter for Stats {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): reads are counted and timed per request.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self {
            inner,
            shared: Arc::clone(&self.shared),
        }))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = buf.len() as u64;
        self.timed(READ, offset, n, || self.inner.read_at(offset, buf))
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let n = data.len() as u64;
        self.timed(WRITE, offset, n, || self.inner.write_at(offset, data, fua))
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.timed(TRIM, offset, len, || self.inner.trim(offset, len, fua))
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.timed(ZERO, offset, len, || {
            self.inner.write_zeroes(offset, len, flags)
        })
    }
    fn flush(&self) -> io::Result<()> {
        self.timed(FLUSH, 0, 0, || self.inner.flush())
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.timed(CACHE, offset, len, || self.inner.cache(offset, len))
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        self.timed(EXTENTS, offset, len, || {
            self.inner.extents(offset, len, out)
        })
    }
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        self.timed(EXTENTS, offset, len, || {
            self.inner.allocation_depth(offset, len, out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0.0), "0 bytes");
        assert_eq!(human(1023.0), "1023 bytes");
        assert_eq!(human(1024.0 * 1.5), "1.50 KiB");
        assert_eq!(human(3.0 * 1024.0 * 1024.0 * 1024.0), "3.00 GiB");
    }

    #[test]
    fn report_in_nbdkit_format_with_breakdown() {
        let inner = Arc::new(MemoryBackend::new(1 << 20).unwrap());
        let opts = StatsOptions {
            threshold: 95,
            ..StatsOptions::default()
        };
        let s = Stats::with_options(inner, opts);
        for i in 0..3 {
            s.write_at(i * 4096, &[1; 4096], false).unwrap();
        }
        s.write_at(4096 * 8 + 512, &[1; 512], false).unwrap();
        s.flush().unwrap();
        let r = s.report();
        assert!(r.starts_with("total: 5 ops, "), "{r}");
        assert!(r.contains("\nwrite: 4 ops, "), "{r}");
        assert!(r.contains(", 12.50 KiB, "), "{r}");
        assert!(r.contains("\nflush: 1 ops, "), "{r}");
        assert!(!r.contains("read:"), "unused operations are left out: {r}");
        assert!(
            r.contains("    12 bits: 75.0% (3 reqs, 12.00 KiB total)"),
            "{r}"
        );
        assert!(r.contains("12 bit aligned: 100.0% (3)"), "{r}");
        assert!(r.contains("13 bit aligned:  66.7% (2)"), "{r}");
        assert!(
            r.contains("    9 bits: 25.0% (1 reqs, 512 bytes total)"),
            "{r}"
        );
    }
}
