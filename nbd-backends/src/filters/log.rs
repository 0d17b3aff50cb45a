//! `log`: one line per request, written to `logfile=` when the request
//! completes, in the spirit of nbdkit's log filter (which prints an entry
//! and an exit line; one line is easier to grep and cannot interleave).
//!
//! ```text
//! 2026-08-21 10:15:02.120001 connection=3 Connect export='' tls=0 size=0x40000000 write=1 flush=1 trim=1 zero=1 fua=1 extents=1 cache=0 multi_conn=1
//! 2026-08-21 10:15:02.123456 connection=3 id=7 Write offset=0x10000 count=0x1000 flags=fua result=ok us=81
//! 2026-08-21 10:15:02.123913 connection=3 id=8 Read offset=0x0 count=0x200 flags=- result=EIO us=12
//! 2026-08-21 10:15:02.130000 connection=3 Disconnect transactions=2
//! ```
//!
//! `connection=N` (the server's connection id) appears when the driver
//! opens a handle per connection; request ids are unique per export.
//! `logscript=SCRIPT` runs `sh -c SCRIPT` for every entry, as nbdkit does,
//! with `$act`, `$type` (`ENTER`, `LEAVE` or `PRINT`), `$id`,
//! `$connection`, `$offset`, `$count`, `$flags`, `$return` (`0`/`-1`) and
//! `$error` (`EIO`...) in its environment; its status is ignored.
//! `logappend=true` appends to `logfile=` instead of truncating it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::params::FilterParams;
use crate::{Backend, Caps, ClientInfo, DepthExtent, Execution, Extent, ZeroFlags};

/// Where entries go; shared by the per-connection copies.
struct Sink {
    /// `None` and no script: lines go to the `log` crate at info level.
    file: Option<Mutex<File>>,
    script: Option<String>,
    next_id: AtomicU64,
}

/// The connection a per-connection copy serves.
struct Conn {
    id: u64,
    transactions: AtomicU64,
}

/// Forwards everything, logging one line per request.
pub struct Log {
    inner: Arc<dyn Backend>,
    sink: Arc<Sink>,
    conn: Option<Conn>,
}

impl Log {
    /// Log `inner`'s requests to `path` (truncated unless `append`), or to
    /// the process log when `path` is `None`.
    ///
    /// # Errors
    ///
    /// If the file cannot be opened for writing.
    pub fn new(inner: Arc<dyn Backend>, path: Option<&Path>, append: bool) -> io::Result<Self> {
        Self::with_script(inner, path, append, None)
    }

    /// As [`Log::new`], also running `script` for every entry.
    ///
    /// # Errors
    ///
    /// If the file cannot be opened for writing.
    pub fn with_script(
        inner: Arc<dyn Backend>,
        path: Option<&Path>,
        append: bool,
        script: Option<String>,
    ) -> io::Result<Self> {
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
        let sink = Sink {
            file: file.map(Mutex::new),
            script,
            next_id: AtomicU64::new(1),
        };
        Ok(Self {
            inner,
            sink: Arc::new(sink),
            conn: None,
        })
    }

    fn prefix(&self) -> String {
        let ts = timestamp(SystemTime::now());
        match &self.conn {
            Some(c) => format!("{ts} connection={}", c.id),
            None => ts,
        }
    }

    /// Write one line (and run the script with `vars`).
    fn emit(&self, line: &str, vars: &[(&str, String)]) {
        match &self.sink.file {
            // One write_all per line under the lock, so lines from worker
            // threads never interleave.
            Some(f) => {
                let mut f = f.lock().unwrap_or_else(PoisonError::into_inner);
                if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
                    log::warn!("log filter: {e}");
                }
            }
            None if self.sink.script.is_none() => log::info!("{line}"),
            None => {}
        }
        if let Some(script) = &self.sink.script {
            run_script(script, self.conn.as_ref().map(|c| c.id), vars);
        }
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
        let id = self.sink.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = &self.conn {
            c.transactions.fetch_add(1, Ordering::Relaxed);
        }
        let flags = if flags.is_empty() { "-" } else { flags };
        let vars = |ty: &str| {
            vec![
                ("act", name.to_owned()),
                ("type", ty.to_owned()),
                ("id", id.to_string()),
                ("offset", format!("{offset:#x}")),
                ("count", format!("{count:#x}")),
                ("flags", flags.to_owned()),
            ]
        };
        if let Some(script) = &self.sink.script {
            run_script(script, self.conn.as_ref().map(|c| c.id), &vars("ENTER"));
        }
        let start = Instant::now();
        let r = op();
        let us = start.elapsed().as_micros();
        let result = match &r {
            Ok(_) => "ok".to_owned(),
            Err(e) => error_name(e),
        };
        let line = format!(
            "{} id={id} {name} offset={offset:#x} count={count:#x} flags={flags} result={result} us={us}",
            self.prefix()
        );
        let mut leave = vars("LEAVE");
        leave.push(("return", if r.is_ok() { "0" } else { "-1" }.to_owned()));
        if r.is_err() {
            leave.push(("error", result.clone()));
        }
        self.emit(&line, &leave);
        r
    }
}

/// Run the log script with `vars` (and the connection id) in its
/// environment; its status is ignored, as nbdkit does.
fn run_script(script: &str, conn: Option<u64>, vars: &[(&str, String)]) {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .envs(vars.iter().map(|(k, v)| (k, v)));
    if let Some(id) = conn {
        cmd.env("connection", id.to_string());
    }
    if let Err(e) = cmd.status() {
        log::warn!("log filter: logscript: {e}");
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

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let file: Option<std::path::PathBuf> = p.take("logfile").map(Into::into);
    let script = p.take("logscript").map(str::to_owned);
    let append = p.take_bool("logappend")?.unwrap_or(false);
    let name = p.filter();
    Ok(super::Spec::new(move |b| {
        let log =
            Log::with_script(b, file.as_deref(), append, script.clone()).map_err(
                |e| match &file {
                    Some(f) => format!("{name} filter: logfile={}: {e}", f.display()),
                    None => format!("{name} filter: {e}"),
                },
            )?;
        Ok(Arc::new(log))
    }))
}

fn caps_line(b: &dyn Backend) -> String {
    let c = b.caps();
    let bit = |cap| u8::from(c.contains(cap));
    format!(
        "size={:#x} write={} flush={} trim={} zero={} fua={} extents={} cache={} multi_conn={}",
        b.size(),
        u8::from(!c.contains(Caps::READ_ONLY)),
        bit(Caps::FLUSH),
        bit(Caps::TRIM),
        bit(Caps::WRITE_ZEROES),
        bit(Caps::FUA),
        bit(Caps::EXTENTS),
        bit(Caps::CACHE),
        bit(Caps::MULTI_CONN),
    )
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Some(c) = &self.conn {
            let n = c.transactions.load(Ordering::Relaxed);
            let line = format!("{} Disconnect transactions={n}", self.prefix());
            let vars = [
                ("act", "Disconnect".to_owned()),
                ("type", "PRINT".to_owned()),
            ];
            self.emit(&line, &vars);
        }
    }
}

impl super::Filter for Log {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): every read is logged.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self {
            inner,
            sink: Arc::clone(&self.sink),
            conn: None,
        }))
    }
    /// Every connection gets its own copy, to name it in the lines.
    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        let inner = super::layer::open_below(&self.inner, client)?;
        let copy = Self {
            inner,
            sink: Arc::clone(&self.sink),
            conn: Some(Conn {
                id: client.id,
                transactions: AtomicU64::new(0),
            }),
        };
        let line = format!(
            "{} Connect export='{}' tls={} {}",
            copy.prefix(),
            client.export_name.replace('\'', "'\\''"),
            u8::from(client.tls),
            caps_line(&*copy.inner)
        );
        let vars = [("act", "Connect".to_owned()), ("type", "PRINT".to_owned())];
        copy.emit(&line, &vars);
        Ok(Some(Arc::new(copy)))
    }
    fn execution(&self) -> Execution {
        // Writing the line is a syscall, a script a process: keep them off
        // the event loop.
        if self.sink.file.is_none() && self.sink.script.is_none() {
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
