//! Running as a service: forking into the background, the pidfile and
//! `--exit-with-parent`.
//!
//! nbdd forks *first*, before building exports or binding, while the
//! process is certainly single-threaded (fork copies only the calling
//! thread, so a worker pool or a logger thread started earlier would be
//! silently lost in the child). The parent then waits on a pipe: the child
//! writes one byte once it listens and has written the pidfile, and the
//! parent exits 0; if the child fails first, the pipe closes empty and the
//! parent exits with the child's status. So `nbdd ... && client` never
//! races the bind, and start-up errors still reach the terminal with
//! exit status 1, as with nbdkit.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::path::Path;

use rustix::process::{Pid, Signal, WaitOptions};

/// The child's side of [`daemonize`]: call [`Daemon::ready`] once serving.
#[derive(Debug)]
pub struct Daemon {
    ready: io::PipeWriter,
}

/// Forks into the background. Returns only in the child, which is the
/// leader of a new session (no controlling terminal, immune to the shell's
/// SIGHUP). The parent waits for [`Daemon::ready`] and exits.
///
/// Must be called while the process has a single thread.
///
/// # Errors
///
/// If `pipe(2)`, `fork(2)` or `setsid(2)` fail.
pub fn daemonize() -> io::Result<Daemon> {
    let (mut reader, writer) = io::pipe()?;
    // Buffered output would otherwise be written twice, once per process.
    io::stdout().flush()?;
    io::stderr().flush()?;
    // SAFETY: called from main before any thread is spawned (see the module
    // doc), so the child is a complete copy of a single-threaded process and
    // may run arbitrary code, not just async-signal-safe functions. rustix
    // offers fork only as an unsafe `runtime` API; libc's is the same call.
    #[allow(unsafe_code)]
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(reader);
            rustix::process::setsid()?;
            Ok(Daemon { ready: writer })
        }
        child => {
            drop(writer);
            let mut byte = [0u8; 1];
            if matches!(reader.read(&mut byte), Ok(1)) {
                std::process::exit(0);
            }
            // The child exited (or crashed) before becoming ready.
            let status = Pid::from_raw(child).and_then(|p| {
                rustix::process::waitpid(Some(p), WaitOptions::empty())
                    .ok()
                    .flatten()
            });
            let code = status
                .and_then(|(_, s)| s.exit_status())
                .filter(|&c| c != 0)
                .unwrap_or(1);
            std::process::exit(code);
        }
    }
}

impl Daemon {
    /// Detaches standard input, output and error (to `/dev/null`), then lets
    /// the waiting parent exit 0. Detaching first matters: a caller reading
    /// our output until EOF (`$(nbdd ...)`) must not hang on the daemon.
    ///
    /// # Errors
    ///
    /// If `/dev/null` cannot be opened or `dup2(2)` fails.
    pub fn ready(mut self) -> io::Result<()> {
        detach_stdio()?;
        self.ready.write_all(b"R")
    }
}

/// Points fds 0, 1 and 2 at `/dev/null`.
fn detach_stdio() -> io::Result<()> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    Ok(())
}

/// Writes this process's pid and a newline to `path`, atomically (write a
/// temporary file, then rename), so that a supervisor polling for the file
/// never reads it half-written.
///
/// # Errors
///
/// The I/O error, with the path in the message.
pub fn write_pidfile(path: &Path) -> io::Result<()> {
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{}\n", std::process::id())).map_err(ctx)?;
    std::fs::rename(&tmp, path).map_err(ctx)
}

/// `--exit-with-parent`: asks the kernel to send us SIGTERM (handled as a
/// graceful shutdown) when the parent process exits, then closes the race
/// where the parent died before the request was made.
///
/// # Errors
///
/// If `prctl(PR_SET_PDEATHSIG)` fails; `Unsupported` off Linux.
pub fn exit_with_parent() -> io::Result<()> {
    let parent = rustix::process::getppid();
    rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
    if rustix::process::getppid() != parent {
        log::info!("parent exited before --exit-with-parent took effect");
        std::process::exit(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_holds_our_pid() {
        let dir = std::env::temp_dir().join(format!("nbdd-pid-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pid");
        write_pidfile(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert!(!dir.join("pid.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pidfile_error_names_the_path() {
        let e = write_pidfile(Path::new("/nonexistent-dir/x.pid")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/x.pid"), "{e}");
    }
}
