//! nbd-proto's client examples (`examples/blocking_client.rs`,
//! `examples/tokio_client.rs`) built and run against nbdd and against
//! nbdkit (`nbdkit memory 64M` on a Unix socket), their output asserted:
//! a user's first contact with the crate must work against real servers.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::{Server, TempDir, Transport, require_tool, run};

/// Build the examples once (same profile as this test) and return their
/// directory.
fn examples_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_nbdd"));
        let profile_dir = bin.parent().expect("target/PROFILE").to_path_buf();
        let target = profile_dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "nbd-proto",
            "--examples",
            "--target-dir",
        ])
        .arg(target)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "building the examples failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir.join("examples")
    })
}

/// Run example `name` with `args`; returns its stdout, asserting success.
fn example(name: &str, args: &[&str]) -> String {
    let out = run(Command::new(examples_dir().join(name)).args(args));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_blocking_output(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "connected: size 67108864, Structured replies, base:allocation true",
            "wrote 65536 bytes at offset 0",
            "read back 65536 bytes: identical",
        ],
        "{out}"
    );
    // The written 64 KiB are allocated; the rest of the first MiB of a
    // fresh sparse export is a hole (the page size decides the border).
    let end: u64 = lines[3]
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("block status line: {out}"));
    assert!(lines[3].starts_with("block status: "), "{out}");
    assert!((65536..1 << 20).contains(&end), "{out}");
    assert_eq!(lines[4..], ["disconnected"], "{out}");
}

fn assert_tokio_output(out: &str, mode: &str) {
    let want = [
        format!("connected: size 67108864, {mode} replies"),
        "wrote 131072 bytes in 8 pipelined requests".into(),
        "read back 131072 bytes in 8 pipelined requests: identical".into(),
        "disconnected".into(),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");
}

#[test]
fn blocking_client_against_nbdd_unix_uri() {
    let mut s = Server::start(Transport::Unix, &["memory", "64M"]);
    assert_blocking_output(&example("blocking_client", &[&s.uri()]));
    s.assert_alive();
}

#[test]
fn blocking_client_against_nbdd_host_port() {
    let mut s = Server::start(Transport::Tcp, &["memory", "64M"]);
    let port = s.port.to_string();
    assert_blocking_output(&example("blocking_client", &["127.0.0.1", &port]));
    s.assert_alive();
}

#[test]
fn tokio_client_against_nbdd_gets_extended_headers() {
    let mut s = Server::start(Transport::Tcp, &["memory", "64M"]);
    assert_tokio_output(&example("tokio_client", &[&s.uri()]), "Extended");
    s.assert_alive();
}

/// `nbdkit memory 64M` on a Unix socket in a temporary directory.
struct Nbdkit {
    child: std::process::Child,
    socket: PathBuf,
    _dir: TempDir,
}

impl Nbdkit {
    fn start() -> Self {
        let nbdkit = require_tool("nbdkit", "nbdkit");
        let dir = TempDir::new("examples-nbdkit");
        let socket = dir.path().join("nbdkit.sock");
        let child = Command::new(nbdkit)
            .args(["-f", "-U"])
            .arg(&socket)
            .args(["memory", "64M"])
            // Readiness probes close without negotiating; nbdkit logs each.
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nbdkit");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(std::time::Instant::now() < deadline, "nbdkit did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self {
            child,
            socket,
            _dir: dir,
        }
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn blocking_client_against_nbdkit() {
    let k = Nbdkit::start();
    let path = k.socket.display().to_string();
    assert_blocking_output(&example("blocking_client", &[&path]));
}

#[test]
fn tokio_client_against_nbdkit_falls_back_without_extended_headers() {
    let k = Nbdkit::start();
    let uri = format!("nbd+unix:///?socket={}", k.socket.display());
    let out = example("tokio_client", &[&uri]);
    // nbdkit before 1.40 has no extended headers: the client falls back.
    let mode = if out.contains("Extended") {
        "Extended"
    } else {
        "Structured"
    };
    assert_tokio_output(&out, mode);
}
