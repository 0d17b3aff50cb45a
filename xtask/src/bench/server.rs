//! A running server: started on a Unix socket, its CPU time sampled, killed
//! on drop.

use super::plan::ServerSpec;
use super::procfs;
use crate::util::show;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub name: String,
    pub sock: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Server {
    /// Starts `spec` with its socket in `dir` and waits until it accepts.
    ///
    /// # Errors
    /// If it cannot start, exits, or does not listen within 20 s.
    pub fn start(spec: &ServerSpec, dir: &Path) -> Result<Self, String> {
        let sock = dir.join(format!("{}.sock", spec.name));
        let _ = std::fs::remove_file(&sock);
        let argv = spec.command(&sock);
        // Servers log every client that leaves without NBD_CMD_DISC (fio
        // over TLS, our readiness probe): keep that out of the bench's
        // output, and quote it if the server fails.
        let log = dir.join(format!("{}.log", spec.name));
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let file2 = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2);
        eprintln!("+ {}", show(&cmd));
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", show(&cmd)))?;
        let mut s = Self {
            name: spec.name.clone(),
            sock,
            log,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // A successful connect is one the server sees and drops; harmless.
        while UnixStream::connect(&s.sock).is_err() {
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(format!(
                    "{} exited ({st}) before listening{}",
                    s.name,
                    s.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not listen on {} within 20 s{}",
                    s.name,
                    s.sock.display(),
                    s.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    /// The URI clients use (`nbds+unix` when TLS is on).
    pub fn uri(&self, tls: bool) -> String {
        let scheme = if tls { "nbds+unix" } else { "nbd+unix" };
        format!("{scheme}:///?socket={}", self.sock.display())
    }

    /// Server CPU seconds so far (all threads).
    ///
    /// # Errors
    /// If the server died.
    pub fn cpu_secs(&mut self) -> Result<f64, String> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Err(format!("{} died ({st}){}", self.name, self.log_tail()));
        }
        procfs::cpu_secs(self.child.id())
    }
}

impl Server {
    /// The last lines the server printed, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; it said:\n  {tail}")
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}
