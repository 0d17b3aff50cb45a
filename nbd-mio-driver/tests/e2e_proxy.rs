//! The `nbd` proxy survives losing its upstream (issue 15): the upstream
//! (nbdkit, or a second nbdd) is killed and restarted on the same socket
//! under a connected libnbd client. nbdd keeps serving that client:
//! requests while the upstream is down fail with EIO (or, with `retry=`,
//! wait for it), and later requests succeed on the reconnected upstream,
//! seeing the data written before the crash (the upstream serves a file).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, TempDir, Transport, python_nbd, require_tool};

/// An upstream server that can be killed and started again on the same
/// Unix socket, serving the same image file.
struct Upstream {
    program: PathBuf,
    args: Vec<String>,
    socket: PathBuf,
    child: Option<Child>,
    dir: TempDir,
}

impl Upstream {
    /// `program -f -U SOCKET [filters] file IMAGE [params]`.
    fn new(program: PathBuf, filters: &[&str], params: &[&str]) -> Self {
        let dir = TempDir::new("proxy-upstream");
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
        let socket = dir.path().join("up.sock");
        let mut args: Vec<String> = filters.iter().map(|s| (*s).to_string()).collect();
        args.extend(["file".into(), image.display().to_string()]);
        args.extend(params.iter().map(|s| (*s).to_string()));
        let mut u = Self {
            program,
            args,
            socket,
            child: None,
            dir,
        };
        u.start();
        u
    }

    fn nbdkit(filters: &[&str], params: &[&str]) -> Self {
        Self::new(require_tool("nbdkit", "nbdkit"), filters, params)
    }

    fn nbdd() -> Self {
        Self::new(PathBuf::from(env!("CARGO_BIN_EXE_nbdd")), &[], &[])
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new(&self.program)
            .arg("-f")
            .arg("-U")
            .arg(&self.socket)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < deadline, "upstream did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no orderly close, as a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    fn proxy(&self, extra: &[&str]) -> Server {
        let uri = format!("uri={}", self.uri());
        let mut args = vec!["nbd", uri.as_str()];
        args.extend_from_slice(extra);
        Server::start(Transport::Unix, &args)
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A libnbd client kept connected across the test, driven line by line:
/// `w OFF BYTE` writes 4 KiB of BYTE, `r OFF` reads 4 KiB and prints its
/// first byte, `ar OFF` starts a read, prints `sent`, then its result.
struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const SCRIPT: &str = r"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print('ready', flush=True)
for line in sys.stdin:
    op, *a = line.split()
    try:
        if op == 'w':
            h.pwrite(bytes([int(a[1])]) * 4096, int(a[0]))
            print('ok', flush=True)
        elif op == 'r':
            print('ok', h.pread(4096, int(a[0]))[0], flush=True)
        elif op == 'ar':
            buf = nbd.Buffer(4096)
            c = h.aio_pread(buf, int(a[0]))
            print('sent', flush=True)
            while not h.aio_command_completed(c):
                h.poll(-1)
            print('ok', buf.to_bytearray()[0], flush=True)
    except nbd.Error as e:
        print('err', e.errno, flush=True)
";

impl Client {
    fn connect(uri: &str) -> Self {
        let mut child = python_nbd()
            .args(["-c", SCRIPT, uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut c = Self {
            child,
            stdin,
            stdout,
        };
        assert_eq!(c.line(), "ready");
        c
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        s.trim().to_string()
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn call(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.line()
    }

    /// Repeat `cmd` until it does not fail (the reconnect takes a backoff
    /// of at most 2 s); returns its answer.
    fn until_ok(&mut self, cmd: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.call(cmd);
            if got.starts_with("ok") || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nbdkit_restart_under_a_connected_client() {
    let mut up = Upstream::nbdkit(&[], &[]);
    let mut proxy = up.proxy(&[]);
    let mut c = Client::connect(&proxy.uri());
    assert_eq!(c.call("w 0 170"), "ok");
    assert_eq!(c.call("r 0"), "ok 170");
    up.kill();
    // retry=0 (the default): fail at once while the upstream is down.
    let t = Instant::now();
    assert_eq!(c.call("r 0"), "err EIO", "EIO while down");
    assert!(t.elapsed() < Duration::from_secs(5), "failed fast");
    up.start();
    // The same client connection, on the reconnected upstream, sees the
    // data written before the crash.
    assert_eq!(c.until_ok("r 0"), "ok 170");
    assert_eq!(c.call("w 4096 7"), "ok");
    assert_eq!(c.call("r 4096"), "ok 7");
    proxy.assert_alive();
    let log = proxy.stderr();
    assert_eq!(log.matches("upstream connection lost").count(), 1, "{log}");
    assert!(log.contains("upstream connection restored"), "{log}");
    // A new client is served too.
    let mut c2 = Client::connect(&proxy.uri());
    assert_eq!(c2.call("r 4096"), "ok 7");
}

#[test]
fn nbdd_upstream_restart_with_retry_waits_instead_of_failing() {
    let mut up = Upstream::nbdd();
    let mut proxy = up.proxy(&["retry=20"]);
    let mut c = Client::connect(&proxy.uri());
    assert_eq!(c.call("w 8192 42"), "ok");
    up.kill();
    // The request waits for the upstream, which comes back 1 s later.
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        up.start();
        up
    });
    let t = Instant::now();
    assert_eq!(c.call("r 8192"), "ok 42", "waited for the upstream");
    assert!(t.elapsed() >= Duration::from_millis(900));
    let _up = restart.join().unwrap();
    assert_eq!(c.call("w 0 1"), "ok");
    proxy.assert_alive();
}

#[test]
fn read_in_flight_when_the_upstream_dies_is_resent_with_retry() {
    // Reads are held 1 s upstream, so one is in flight when it dies.
    let mut up = Upstream::nbdkit(&["--filter=delay"], &["rdelay=1000ms"]);
    let mut proxy = up.proxy(&["retry=20"]);
    let mut c = Client::connect(&proxy.uri());
    assert_eq!(c.call("w 0 99"), "ok");
    c.send("ar 0");
    assert_eq!(c.line(), "sent");
    std::thread::sleep(Duration::from_millis(300));
    up.kill();
    up.start();
    assert_eq!(c.line(), "ok 99", "the READ was resent, not failed");
    proxy.assert_alive();
    assert!(up.dir().exists());
}

#[test]
fn write_in_flight_when_the_upstream_dies_fails_with_eio() {
    // Writes are held 1 s upstream: killed in flight, the WRITE's fate is
    // unknown, so it fails (it is not resent); the next one succeeds.
    let mut up = Upstream::nbdkit(&["--filter=delay"], &["wdelay=1000ms"]);
    let mut proxy = up.proxy(&["retry=20"]);
    let mut c = Client::connect(&proxy.uri());
    c.send("w 0 5");
    std::thread::sleep(Duration::from_millis(300));
    up.kill();
    assert_eq!(c.line(), "err EIO");
    up.start();
    assert_eq!(c.call("w 0 6"), "ok");
    assert_eq!(c.call("r 0"), "ok 6");
    proxy.assert_alive();
}

#[test]
fn filtered_proxy_reconnects_on_the_next_request() {
    // Under a filter the proxy serves requests itself, blocking
    // (proxy/direct.rs): the same recovery, one request at a time.
    let mut up = Upstream::nbdkit(&[], &[]);
    let uri = format!("uri={}", up.uri());
    let mut proxy = Server::start(
        Transport::Unix,
        &["--filter=offset", "nbd", &uri, "offset=4096"],
    );
    let mut c = Client::connect(&proxy.uri());
    assert_eq!(c.call("w 0 33"), "ok");
    up.kill();
    assert_eq!(c.call("r 0"), "err EIO", "EIO while down");
    up.start();
    assert_eq!(c.until_ok("r 0"), "ok 33");
    proxy.assert_alive();
}

#[test]
fn shared_upstream_restart_serves_every_client_again() {
    // shared=true: one upstream connection (one loop: -t 1) serves both
    // clients; killed and restarted, it is reconnected once and both
    // clients go on, a READ sent while it was down waiting (retry=).
    let mut up = Upstream::nbdkit(&[], &[]);
    let uri = format!("uri={}", up.uri());
    let mut proxy = Server::start(
        Transport::Unix,
        &["-t", "1", "nbd", &uri, "shared=true", "retry=20"],
    );
    let mut a = Client::connect(&proxy.uri());
    let mut b = Client::connect(&proxy.uri());
    assert_eq!(a.call("w 0 11"), "ok");
    assert_eq!(b.call("r 0"), "ok 11", "one upstream, one image");
    up.kill();
    a.send("ar 0");
    assert_eq!(a.line(), "sent");
    std::thread::sleep(Duration::from_secs(1));
    up.start();
    assert_eq!(a.line(), "ok 11", "waited for the upstream");
    assert_eq!(b.call("w 4096 12"), "ok");
    assert_eq!(a.call("r 4096"), "ok 12");
    proxy.assert_alive();
    let log = proxy.stderr();
    assert_eq!(
        log.matches("upstream connection lost").count(),
        1,
        "one shared upstream: {log}"
    );
    assert_eq!(
        log.matches("upstream connection restored").count(),
        1,
        "{log}"
    );
}
