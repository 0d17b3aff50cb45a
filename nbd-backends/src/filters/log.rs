//! `log`: one line per request, written to `logfile=` when the request
//! completes, in the spirit of nbdkit's log filter (which prints an entry
//! and an exit line; one line is easier to grep and cannot interleave).
//!
//! ```text
//! 2026-08-21 10:15:02.123456 id=7 Write offset=0x10000 count=0x1000 flags=fua result=ok us=81
//! 2026-08-21 10:15:02.123913 id=8 Read offset=0x0 count=0x200 flags=- result=EIO us=12
//! ```
//!
//! A backend does not see connections, so the request id is global to the
//! export (nbdkit's `connection=` field is not reproducible here).

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::{Backend, BlockSize, Caps, DepthExtent, Execution, Extent, ZeroFlags};

/// Forwards everything, appending one line per request to a file.
pub struct Log {
    inner: Arc<dyn Backend>,
    /// `None`: lines go to the `log` crate at info level.
    file: Option<Mutex<File>>,
    next_id: AtomicU64,
}

impl Log {
    /// Log `inner`'s requests to `path` (truncated unless `append`), or to
    /// the process log when `path` is `None`.
    ///
    /// # Errors
    ///
    /// If the file cannot be opened for writing.
    pub fn new(inner: Arc<dyn Backend>, path: Option<&Path>, append: bool) -> io::Result<Self> {
        let file = path
            .map(|p| {
                OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(p)
            })
            .transpose()?;
        Ok(Self {
            inner,
            file: file.map(Mutex::new),
            next_id: AtomicU64::new(1),
        })
    }

    /// Run `op`, then write its line.
    fn logged<T>(
        &self,
        name: &str,
        offset: u64,
        count: u64,
        flags: &str,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let r = op();
        let us = start.elapsed().as_micros();
        let result = match &r {
            Ok(_) => "ok".to_owned(),
            Err(e) => error_name(e),
        };
        let flags = if flags.is_empty() { "-" } else { flags };
        let line = format!(
            "{} id={id} {name} offset={offset:#x} count={count:#x} flags={flags} result={result} us={us}\n",
            timestamp(SystemTime::now())
        );
        match &self.file {
            // One write_all per line under the lock, so lines from worker
            // threads never interleave.
            Some(f) => {
                let mut f = f.lock().unwrap_or_else(PoisonError::into_inner);
                if let Err(e) = f.write_all(line.as_bytes()) {
                    log::warn!("log filter: {e}");
                }
            }
            None => log::info!("{}", line.trim_end()),
        }
        r
    }
}

/// `EIO`, `ENOSPC`, ... for raw errors; the kind otherwise.
fn error_name(e: &io::Error) -> String {
    let names = [
        (libc::EPERM, "EPERM"),
        (libc::EIO, "EIO"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::EROFS, "EROFS"),
        (libc::EOVERFLOW, "EOVERFLOW"),
        (libc::ENOTSUP, "ENOTSUP"),
        (libc::ESHUTDOWN, "ESHUTDOWN"),
    ];
    match e.raw_os_error() {
        Some(code) => names
            .iter()
            .find(|n| n.0 == code)
            .map_or_else(|| format!("errno{code}"), |n| n.1.to_owned()),
        None => format!("{:?}", e.kind()),
    }
}

/// `YYYY-MM-DD HH:MM:SS.uuuuuu` in UTC, from the days-to-civil conversion
/// (proleptic Gregorian calendar; no time-zone database needed).
pub(crate) fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Shift the epoch to 0000-03-01 so leap days fall at the end of an era year.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

fn zero_flags(f: ZeroFlags) -> String {
    let mut v = Vec::new();
    if f.contains(ZeroFlags::MAY_TRIM) {
        v.push("may_trim");
    }
    if f.contains(ZeroFlags::FAST) {
        v.push("fast");
    }
    if f.contains(ZeroFlags::FUA) {
        v.push("fua");
    }
    v.join(",")
}

fn fua(f: bool) -> &'static str {
    if f { "fua" } else { "" }
}

impl Backend for Log {
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
        // Writing the line is a syscall: keep it off the event loop when
        // logging to a file.
        if self.file.is_none() {
            self.inner.execution()
        } else {
            Execution::Blocking
        }
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = buf.len() as u64;
        self.logged("Read", offset, n, "", || self.inner.read_at(offset, buf))
    }
    fn write_at(&self, offset: u64, data: &[u8], f: bool) -> io::Result<()> {
        self.logged("Write", offset, data.len() as u64, fua(f), || {
            self.inner.write_at(offset, data, f)
        })
    }
    fn flush(&self) -> io::Result<()> {
        self.logged("Flush", 0, 0, "", || self.inner.flush())
    }
    fn trim(&self, offset: u64, len: u64, f: bool) -> io::Result<()> {
        self.logged("Trim", offset, len, fua(f), || {
            self.inner.trim(offset, len, f)
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.logged("Zero", offset, len, &zero_flags(flags), || {
            self.inner.write_zeroes(offset, len, flags)
        })
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.logged("Cache", offset, len, "", || self.inner.cache(offset, len))
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        self.logged("Extents", offset, len, "", || {
            self.inner.extents(offset, len, out)
        })
    }
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        self.logged("AllocationDepth", offset, len, "", || {
            self.inner.allocation_depth(offset, len, out)
        })
    }
    fn resize(&self, new_size: u64) -> io::Result<()> {
        self.logged("Resize", new_size, 0, "", || self.inner.resize(new_size))
    }
    fn description(&self) -> Option<String> {
        self.inner.description()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let at = |s: u64, us: u64| {
            timestamp(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us))
        };
        assert_eq!(at(0, 0), "1970-01-01 00:00:00.000000");
        // 2000-02-29 (a leap day in a century year divisible by 400).
        assert_eq!(at(951_782_400 + 3661, 7), "2000-02-29 01:01:01.000007");
        assert_eq!(at(1_709_251_199, 999_999), "2024-02-29 23:59:59.999999");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01 00:00:00.000000");
    }

    #[test]
    fn one_line_per_request_with_result() {
        let dir = std::env::temp_dir().join(format!("nbd-log-test-{}", std::process::id()));
        let inner = Arc::new(MemoryBackend::new(8192).unwrap());
        let log = Log::new(inner, Some(&dir), false).unwrap();
        log.write_at(4096, &[1; 512], true).unwrap();
        let mut buf = [0; 16];
        log.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, [1; 16]);
        log.write_at(8192, &[1], false).unwrap_err();
        log.write_zeroes(0, 100, ZeroFlags::MAY_TRIM | ZeroFlags::FAST)
            .unwrap();
        log.flush().unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].contains(" id=1 Write offset=0x1000 count=0x200 flags=fua result=ok us="),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains(" id=2 Read offset=0x1000 count=0x10 flags=- result=ok "));
        assert!(lines[2].contains(" id=3 Write offset=0x2000 count=0x1 flags=- result=ENOSPC "));
        assert!(
            lines[3].contains(" id=4 Zero offset=0x0 count=0x64 flags=may_trim,fast result=ok ")
        );
        assert!(lines[4].contains(" id=5 Flush "));
    }
}
