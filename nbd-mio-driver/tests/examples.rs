//! nbd-proto's examples run for real, their output asserted: a user's
//! first contact with the crate must work against real peers.
//!
//! - The client examples (`examples/blocking_client.rs`,
//!   `examples/tokio_client.rs`) against nbdd, against nbdkit
//!   (`nbdkit memory 64M` on a Unix socket) and against the server examples.
//! - The server examples (`examples/blocking_server.rs`,
//!   `examples/tokio_server.rs`) with qemu-img (convert in, compare, convert
//!   out), nbdinfo (`--json`, `--map`), nbdcopy (both ways, four
//!   connections) and the client examples, over Unix sockets and TCP.
//!
//! A missing tool fails the test with the Debian package to install.

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
        // Not `run`: its deadline is for clients, and a first build of the
        // examples (tokio) on a loaded 2-core machine takes longer.
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run cargo build --examples");
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

// ---- The server examples (`examples/blocking_server.rs`,
// `examples/tokio_server.rs`) with real clients: qemu-img, nbdinfo,
// nbdcopy and the client examples above.

/// A server example on a Unix socket or a free TCP port; killed on drop.
struct ExampleServer {
    child: std::process::Child,
    name: &'static str,
    /// The URI of the default export.
    uri: String,
    /// The Unix socket path or `127.0.0.1:PORT`.
    addr: String,
    dir: TempDir,
}

impl ExampleServer {
    fn start(name: &'static str, transport: Transport) -> Self {
        // A free port can be taken before the example binds it: retry.
        for _ in 0..5 {
            if let Some(s) = Self::try_start(name, transport) {
                return s;
            }
        }
        panic!("{name} did not start");
    }

    fn try_start(name: &'static str, transport: Transport) -> Option<Self> {
        let dir = TempDir::new(name);
        let addr = match transport {
            Transport::Unix => dir.path().join("nbd.sock").display().to_string(),
            Transport::Tcp => format!("127.0.0.1:{}", common::free_port()),
        };
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let child = Command::new(examples_dir().join(name))
            .arg(&addr)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut s = Self {
            child,
            name,
            uri: String::new(),
            addr,
            dir,
        };
        s.uri = s.uri_for("");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let up = match transport {
                Transport::Unix => std::os::unix::net::UnixStream::connect(&s.addr).is_ok(),
                Transport::Tcp => std::net::TcpStream::connect(&s.addr).is_ok(),
            };
            if up {
                return Some(s);
            }
            if s.child.try_wait().expect("try_wait").is_some() {
                eprintln!("{name} exited at start: {}", s.stderr());
                return None;
            }
            assert!(std::time::Instant::now() < deadline, "{name} not listening");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The NBD URI of `export` on this server.
    fn uri_for(&self, export: &str) -> String {
        if self.addr.contains('/') {
            format!("nbd+unix:///{export}?socket={}", self.addr)
        } else {
            format!("nbd://{}/{export}", self.addr)
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// The example still runs (a client's error must not kill it).
    fn assert_alive(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(status.is_none(), "{} exited: {}", self.name, self.stderr());
    }
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a client tool, asserting success; returns its stdout.
fn tool(s: &ExampleServer, cmd: &mut Command) -> String {
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} against {} failed ({}):\n{stdout}\n{}\n--- server stderr ---\n{}",
        s.name,
        out.status,
        String::from_utf8_lossy(&out.stderr),
        s.stderr()
    );
    stdout
}

/// A 64 MiB raw image: 1 MiB of random data at 0 and at 32 MiB, zeroes
/// (a hole in the file) elsewhere.
fn sparse_image(path: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let random = path.with_extension("random");
    common::random_file(&random, 1 << 20, 13);
    let data = std::fs::read(&random).expect("read random data");
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(64 << 20).expect("size image");
    for at in [0, 32 << 20] {
        f.write_all_at(&data, at).expect("write image");
    }
}

/// The `nbdinfo --map` of [`sparse_image`]: offset, length, status.
const SPARSE_MAP: [(u64, u64, u32); 4] = [
    (0, 1 << 20, 0),
    (1 << 20, 31 << 20, 3),
    (32 << 20, 1 << 20, 0),
    (33 << 20, 31 << 20, 3),
];

/// `nbdinfo --map` output as (offset, length, status) rows, checking each
/// row's description matches its status.
fn map_rows(out: &str) -> Vec<(u64, u64, u32)> {
    let row = |line: &str| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let status: u32 = f[2].parse().expect("status");
        let desc = if status == 3 { "hole,zero" } else { "data" };
        assert_eq!(f[3], desc, "{line}");
        (
            f[0].parse().expect("offset"),
            f[1].parse().expect("length"),
            status,
        )
    };
    out.lines().map(row).collect()
}

fn qemu_img_round_trip(s: &ExampleServer) {
    let qemu_img = require_tool("qemu-img", "qemu-utils");
    let (src, back) = (s.dir.path().join("src.img"), s.dir.path().join("back.img"));
    sparse_image(&src);
    let raw = ["-f", "raw", "-O", "raw"];
    tool(
        s,
        Command::new(&qemu_img)
            .args(["convert", "-n"])
            .args(raw)
            .arg(&src)
            .arg(&s.uri),
    );
    let same = tool(
        s,
        Command::new(&qemu_img)
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(&s.uri),
    );
    assert!(same.contains("Images are identical"), "{same}");
    tool(
        s,
        Command::new(&qemu_img)
            .arg("convert")
            .args(raw)
            .arg(&s.uri)
            .arg(&back),
    );
    assert_eq!(common::sha256(&back), common::sha256(&src));
}

fn nbdinfo_json(s: &ExampleServer) {
    let nbdinfo = require_tool("nbdinfo", "libnbd-bin");
    let v = common::json::parse(&tool(s, Command::new(&nbdinfo).arg("--json").arg(&s.uri)));
    assert_eq!(v.get("protocol").str(), "newstyle-fixed");
    assert!(v.get("structured").bool());
    let e = &v.get("exports").arr()[0];
    assert_eq!(e.get("export-name").str(), "mem");
    assert_eq!(e.get("description").str(), "64 MiB in memory");
    assert_eq!(e.get("export-size").u64(), 64 << 20);
    let contexts: Vec<&str> = e.get("contexts").arr().iter().map(|c| c.str()).collect();
    assert_eq!(contexts, ["base:allocation"]);
    for (key, want) in [
        ("is_read_only", false),
        ("can_flush", true),
        ("can_fua", true),
        ("can_trim", true),
        ("can_zero", true),
        ("can_multi_conn", true),
        ("can_df", true),
    ] {
        assert_eq!(e.get(key).bool(), want, "{key}");
    }
}

fn nbdinfo_map(s: &ExampleServer) {
    let nbdinfo = require_tool("nbdinfo", "libnbd-bin");
    let nbdcopy = require_tool("nbdcopy", "libnbd-bin");
    let fresh = tool(s, Command::new(&nbdinfo).arg("--map").arg(&s.uri));
    assert_eq!(map_rows(&fresh), [(0, 64 << 20, 3)], "{fresh}");
    let src = s.dir.path().join("src.img");
    sparse_image(&src);
    tool(s, Command::new(&nbdcopy).arg(&src).arg(&s.uri));
    let map = tool(s, Command::new(&nbdinfo).arg("--map").arg(&s.uri));
    assert_eq!(map_rows(&map), SPARSE_MAP, "{map}");
}

fn nbdcopy_both_ways(s: &ExampleServer) {
    let nbdcopy = require_tool("nbdcopy", "libnbd-bin");
    let (src, back) = (s.dir.path().join("src.img"), s.dir.path().join("back.img"));
    common::random_file(&src, 64 << 20, 7);
    // Four connections at once (the export allows multi-conn).
    let conns = "--connections=4";
    tool(s, Command::new(&nbdcopy).arg(conns).arg(&src).arg(&s.uri));
    tool(s, Command::new(&nbdcopy).arg(conns).arg(&s.uri).arg(&back));
    assert_eq!(common::sha256(&back), common::sha256(&src));
}

fn unknown_export_refused(s: &mut ExampleServer) {
    let nbdinfo = require_tool("nbdinfo", "libnbd-bin");
    let out = run(Command::new(&nbdinfo).arg(s.uri_for("nope")));
    assert!(!out.status.success(), "export 'nope' was served");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No such file or directory"), "{err}");
    s.assert_alive();
}

/// Both client examples, one after the other, then the server is alive.
fn client_examples(s: &mut ExampleServer) {
    assert_blocking_output(&example("blocking_client", &[&s.uri]));
    assert_tokio_output(&example("tokio_client", &[&s.uri]), "Extended");
    s.assert_alive();
}

macro_rules! server_example_tests {
    ($name:ident, $transport:expr, $other:expr) => {
        mod $name {
            use super::*;

            fn start() -> ExampleServer {
                ExampleServer::start(stringify!($name), $transport)
            }

            #[test]
            fn qemu_img_convert_in_compare_and_out() {
                qemu_img_round_trip(&start());
            }

            #[test]
            fn nbdinfo_json_describes_the_export() {
                nbdinfo_json(&start());
            }

            #[test]
            fn nbdinfo_map_reports_zeroes_as_holes() {
                nbdinfo_map(&start());
            }

            #[test]
            fn nbdcopy_in_and_out_over_four_connections() {
                nbdcopy_both_ways(&start());
            }

            #[test]
            fn unknown_export_is_refused() {
                unknown_export_refused(&mut start());
            }

            #[test]
            fn client_examples_on_both_transports() {
                client_examples(&mut start());
                client_examples(&mut ExampleServer::start(stringify!($name), $other));
            }
        }
    };
}

server_example_tests!(blocking_server, Transport::Unix, Transport::Tcp);
server_example_tests!(tokio_server, Transport::Tcp, Transport::Unix);
