//! Shared harness for the end-to-end interop tests (`tests/e2e_*.rs`).
//!
//! Each e2e test binary does `mod common;`. The harness starts the server
//! under test with nbdkit's command line, always in the foreground (`-f`),
//! on a Unix socket in a private temporary directory or on a free TCP port
//! of 127.0.0.1, waits until it accepts connections, and kills it on drop.
//!
//! The server is chosen by the environment variable `NBDD_TEST_SERVER`:
//! unset → the `nbdd` binary built by cargo; `nbdkit` → the installed
//! nbdkit (the reference the suite is validated against); anything else →
//! that path, treated like nbdd.
//!
//! Missing external tools make a test **fail** with the exact
//! `apt-get install -y <package>` line, never skip.

// Every test binary uses a different subset of the helpers.
#![allow(dead_code)]

pub mod json;

use std::fs::File;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The interpreter that has Debian's `python3-libnbd`; the `python3` on
/// PATH may be a pyenv build without the `nbd` module.
pub const PYTHON: &str = "/usr/bin/python3";

/// How long a freshly started server may take to accept its first
/// connection. Debug builds on a loaded 2-core CI box can be slow.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which implementation is under test; a few documented nbdkit quirks are
/// allowed for only when the reference server is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Our server (or a path given in `NBDD_TEST_SERVER`).
    Nbdd,
    /// The reference nbdkit.
    Nbdkit,
}

/// Where the server listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A Unix socket in the server's temporary directory (`-U PATH`).
    Unix,
    /// A free TCP port on 127.0.0.1 (`-i 127.0.0.1 -p PORT`).
    Tcp,
}

/// The server program and its flavour, from `NBDD_TEST_SERVER`.
pub fn server_program() -> (PathBuf, Flavor) {
    match std::env::var("NBDD_TEST_SERVER") {
        Ok(s) if s == "nbdkit" => (require_tool("nbdkit", "nbdkit"), Flavor::Nbdkit),
        Ok(s) if !s.is_empty() => (PathBuf::from(s), Flavor::Nbdd),
        _ => (PathBuf::from(env!("CARGO_BIN_EXE_nbdd")), Flavor::Nbdd),
    }
}

/// The flavour under test, without starting anything.
pub fn flavor() -> Flavor {
    server_program().1
}

/// A private temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under `$TMPDIR` (std-only: pid + counter + clock).
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("nbdd-e2e-{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self(dir)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server; killed (and its temp dir removed) on drop.
pub struct Server {
    child: Child,
    /// The flavour under test.
    pub flavor: Flavor,
    /// Unix or TCP.
    pub transport: Transport,
    /// The socket path (Unix transport only).
    pub socket: PathBuf,
    /// The TCP port (TCP transport only).
    pub port: u16,
    stderr_path: PathBuf,
    args: Vec<String>,
    /// False while starting: an early exit is then reported by `start`, not
    /// by `Drop`.
    started: bool,
    // Declared last so it is dropped after the child is reaped.
    dir: TempDir,
}

impl Server {
    /// Starts the server under test with `args` (nbdkit's syntax: flags,
    /// then `BACKEND [k=v...]`), adding `-f` and the listen address.
    ///
    /// # Panics
    /// If the server exits early or does not accept within 30 s; the message
    /// includes its stderr.
    pub fn start(transport: Transport, args: &[&str]) -> Self {
        // A free TCP port found by binding port 0 can be taken by another
        // test before the server binds it; retry a few times on early exit.
        let attempts = if transport == Transport::Tcp { 5 } else { 1 };
        let mut last = String::new();
        for _ in 0..attempts {
            match Self::try_start(transport, args, None) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    /// As [`Server::start`] (Unix socket), under a descriptor limit of
    /// `nofile` (soft and hard, set by `prlimit` before the server runs).
    #[allow(dead_code)]
    pub fn start_with_nofile(args: &[&str], nofile: u64) -> Self {
        Self::try_start(Transport::Unix, args, Some(nofile)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(transport: Transport, args: &[&str], nofile: Option<u64>) -> Result<Self, String> {
        let (program, flavor) = server_program();
        let dir = TempDir::new("srv");
        let socket = dir.path().join("nbd.sock");
        let stderr_path = dir.path().join("server.stderr");
        let mut full: Vec<String> = vec!["-f".into()];
        let mut port = 0;
        match transport {
            Transport::Unix => {
                full.push("-U".into());
                full.push(socket.display().to_string());
            }
            Transport::Tcp => {
                port = free_port();
                full.extend([
                    "-i".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                ]);
            }
        }
        full.extend(args.iter().map(|s| (*s).to_string()));
        let stderr = File::create(&stderr_path).map_err(|e| format!("create stderr file: {e}"))?;
        let mut cmd = match nofile {
            // prlimit sets the limits, then executes the server (same pid).
            Some(n) => {
                let mut c = Command::new(require_tool("prlimit", "util-linux"));
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let child = cmd
            .args(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {} {full:?}: {e}", program.display()))?;
        let mut server = Self {
            child,
            flavor,
            transport,
            socket,
            port,
            stderr_path,
            args: full,
            started: false,
            dir,
        };
        server.wait_ready()?;
        server.started = true;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "server {:?} exited before accepting connections ({status}); stderr:\n{}",
                    self.args,
                    self.stderr()
                ));
            }
            let up = match self.transport {
                Transport::Unix => UnixStream::connect(&self.socket).is_ok(),
                Transport::Tcp => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            };
            if up {
                if self.transport == Transport::Tcp {
                    // Two tests can draw the same free port: the one whose
                    // server lost the bind would then "connect" to the other
                    // test's server and be reset when that test ends. A
                    // server that lost the race exits at once, so check that
                    // ours is still alive a moment after the port answers.
                    std::thread::sleep(Duration::from_millis(100));
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(format!(
                            "server {:?} exited ({status}); port {} is another server's; stderr:\n{}",
                            self.args,
                            self.port,
                            self.stderr()
                        ));
                    }
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "server {:?} did not accept connections within {READY_TIMEOUT:?}; stderr:\n{}",
                    self.args,
                    self.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The server's private temporary directory (for test files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The NBD URI of export `name` (RFC: `nbd+unix:///NAME?socket=` or
    /// `nbd://HOST:PORT/NAME`).
    pub fn uri_for(&self, name: &str) -> String {
        match self.transport {
            Transport::Unix => format!("nbd+unix:///{name}?socket={}", self.socket.display()),
            Transport::Tcp => format!("nbd://127.0.0.1:{}/{name}", self.port),
        }
    }

    /// The URI of the default (empty-named) export.
    pub fn uri(&self) -> String {
        self.uri_for("")
    }

    /// qemu `--image-opts` for export `name` (driver=nbd, explicit server.*).
    pub fn qemu_image_opts(&self, name: &str) -> String {
        let server = match self.transport {
            Transport::Unix => format!("server.type=unix,server.path={}", self.socket.display()),
            Transport::Tcp => format!(
                "server.type=inet,server.host=127.0.0.1,server.port={}",
                self.port
            ),
        };
        // qemu's option syntax escapes a comma by doubling it.
        format!("driver=nbd,{server},export={}", name.replace(',', ",,"))
    }

    /// Panics (with stderr) if the server has died; call after a client run
    /// to catch crashes that the client might not notice.
    /// The server's process id (for /proc measurements).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system, all threads) the server has used, in
    /// clock ticks (100 a second on Linux).
    #[allow(dead_code)]
    pub fn cpu_ticks(&self) -> u64 {
        let s =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("/proc/PID/stat");
        // Fields after the parenthesised command name: state is field 3,
        // utime and stime are fields 14 and 15.
        let rest = &s[s.rfind(')').expect("comm") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    /// Peak resident memory of the server so far, in KiB (VmHWM).
    #[allow(dead_code)]
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// SIGKILL the server now (a crash, for durability tests); dropping it
    /// afterwards does not report the exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.started = false;
    }

    /// SIGTERM (a graceful shutdown), waiting up to 10 s before SIGKILL;
    /// dropping it afterwards does not report the exit. For servers whose
    /// backend should close cleanly (an rbd image releases its watch and
    /// lock, or the next client waits ~30 s for them to time out).
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "server {:?} died during the test ({status}); stderr:\n{}",
                self.args,
                self.stderr()
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server that exited by itself while a test was passing is a bug
        // (checklist 111: never close on its own); report it unless the test
        // is already failing, where a second panic would abort.
        let died = matches!(self.child.try_wait(), Ok(Some(_)));
        let _ = self.child.kill();
        let _ = self.child.wait();
        if died && self.started && !std::thread::panicking() {
            panic!(
                "server {:?} exited during the test; stderr:\n{}",
                self.args,
                self.stderr()
            );
        }
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// The path of `tool` on PATH.
///
/// # Panics
/// If absent, with the exact `apt-get install -y PACKAGE` line.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("required tool `{tool}` is not installed; install it with:\n  apt-get install -y {package}")
    })
}

/// A `Command` for Debian's python3 with the libnbd bindings.
///
/// # Panics
/// If `/usr/bin/python3` cannot `import nbd`, with the apt-get line.
pub fn python_nbd() -> Command {
    let ok = Command::new(PYTHON)
        .args(["-c", "import nbd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{PYTHON} cannot `import nbd`; install the libnbd Python bindings with:\n  apt-get install -y python3-libnbd"
    );
    Command::new(PYTHON)
}

/// Runs one of the scripts in `tests/py/` with `args`; returns its stdout.
///
/// # Panics
/// If the script fails, with its stdout, stderr and the server's stderr.
pub fn run_py(server: &mut Server, script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let mut cmd = python_nbd();
    cmd.arg(&path).args(args);
    let out = run_ok_ctx(&mut cmd, &server.stderr());
    server.assert_alive();
    out
}

/// Runs `cmd`, returning stdout.
///
/// # Panics
/// If it cannot start or exits non-zero, with the command, status, stdout
/// and stderr.
pub fn run_ok(cmd: &mut Command) -> String {
    run_ok_ctx(cmd, "")
}

fn run_ok_ctx(cmd: &mut Command, server_stderr: &str) -> String {
    let out = run(cmd);
    if !out.status.success() {
        panic!(
            "command failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- server stderr ---\n{server_stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How long one client command may run. A server that stops answering
/// must fail the test, not hang CI until its global time cap.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion with no stdin, capturing its output.
///
/// # Panics
/// If it cannot be started, or runs longer than 60 s (it is then killed
/// and the panic shows what it printed so far).
pub fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Drain both pipes on threads so a chatty child cannot block on a full
    // pipe while we wait for it.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err_t = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out_t.join().unwrap_or_default();
                let stderr = err_t.join().unwrap_or_default();
                panic!(
                    "{cmd:?} did not finish within {CLIENT_TIMEOUT:?} (server hung?); killed.\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Writes `len` bytes of deterministic pseudo-random data (xorshift64*,
/// incompressible and with no zero blocks, so holes cannot fake a match).
pub fn random_file(path: &Path, len: usize, seed: u64) {
    let mut state = seed | 1;
    let mut f = std::io::BufWriter::new(File::create(path).expect("create random file"));
    let mut word = [0u8; 8];
    for _ in 0..len / 8 {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        f.write_all(&word).expect("write random file");
    }
    f.flush().expect("flush random file");
}

/// The SHA-256 of a file, from coreutils' `sha256sum`.
pub fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap_or_default().to_owned()
}
pub mod raw;
