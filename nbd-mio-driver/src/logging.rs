//! A small `log` backend for `--log=stderr|syslog|null` and `-v`.
//!
//! Syslog is written directly to the local datagram socket `/dev/log` in
//! the traditional `<PRI>TAG[PID]: MESSAGE` form, which every syslog daemon
//! and journald accept, so no dependency is needed.

use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::cli::LogTarget;

/// The syslog facility for system daemons (`LOG_DAEMON`, RFC 5424 table 1).
const FACILITY_DAEMON: u8 = 3;

/// Maps `-v` counts to a level: warnings by default, info with `-v`, debug
/// with `-vv`, trace beyond.
#[must_use]
pub fn level_for(verbose: u8) -> LevelFilter {
    match verbose {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Where log records go.
enum Sink {
    Stderr,
    Syslog(Mutex<Option<UnixDatagram>>),
    Null,
}

struct Logger {
    sink: Sink,
    level: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.level && !matches!(self.sink, Sink::Null)
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        match &self.sink {
            Sink::Stderr => {
                let level = match r.level() {
                    Level::Warn => "warning".to_owned(),
                    l => l.as_str().to_ascii_lowercase(),
                };
                // One write per line so concurrent threads do not interleave.
                let line = format!("nbdd: {level}: {}\n", r.args());
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::Syslog(sock) => {
                let msg = syslog_line(r.level(), std::process::id(), &r.args().to_string());
                let mut sock = sock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if sock.is_none() {
                    *sock = connect_syslog();
                }
                // A syslog daemon restart invalidates the connection: retry
                // once on a fresh one, then drop the message.
                if let Some(s) = sock.as_ref()
                    && s.send(msg.as_bytes()).is_err()
                {
                    *sock = connect_syslog();
                    if let Some(s) = sock.as_ref() {
                        let _ = s.send(msg.as_bytes());
                    }
                }
            }
            Sink::Null => {}
        }
    }

    fn flush(&self) {}
}

fn connect_syslog() -> Option<UnixDatagram> {
    let s = UnixDatagram::unbound().ok()?;
    s.connect("/dev/log").ok()?;
    Some(s)
}

/// Formats one syslog datagram (`<PRI>nbdd[PID]: MESSAGE`).
fn syslog_line(level: Level, pid: u32, msg: &str) -> String {
    let severity: u8 = match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    format!("<{}>nbdd[{pid}]: {msg}", FACILITY_DAEMON * 8 + severity)
}

/// Installs the process-wide logger. Call once, after daemonizing (so the
/// pid in syslog lines is the server's).
///
/// # Errors
///
/// If a logger was already installed.
pub fn init(target: LogTarget, verbose: u8) -> std::io::Result<()> {
    let level = level_for(verbose);
    let sink = match target {
        LogTarget::Stderr => Sink::Stderr,
        LogTarget::Syslog => Sink::Syslog(Mutex::new(connect_syslog())),
        LogTarget::Null => Sink::Null,
    };
    // The logger lives for the whole process; leaking it once avoids
    // needing the `log/std` feature for `set_boxed_logger`.
    let logger: &'static Logger = Box::leak(Box::new(Logger { sink, level }));
    log::set_logger(logger).map_err(|_| std::io::Error::other("a logger is already installed"))?;
    log::set_max_level(if target == LogTarget::Null {
        LevelFilter::Off
    } else {
        level
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_levels() {
        assert_eq!(level_for(0), LevelFilter::Warn);
        assert_eq!(level_for(1), LevelFilter::Info);
        assert_eq!(level_for(2), LevelFilter::Debug);
        assert_eq!(level_for(9), LevelFilter::Trace);
    }

    #[test]
    fn syslog_priorities() {
        // daemon(3) * 8 + severity
        assert_eq!(syslog_line(Level::Error, 7, "x"), "<27>nbdd[7]: x");
        assert_eq!(syslog_line(Level::Warn, 7, "x"), "<28>nbdd[7]: x");
        assert_eq!(syslog_line(Level::Info, 7, "x"), "<30>nbdd[7]: x");
        assert_eq!(syslog_line(Level::Debug, 7, "x"), "<31>nbdd[7]: x");
    }
}
