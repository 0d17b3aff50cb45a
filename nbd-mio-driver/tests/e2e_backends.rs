//! End-to-end tests of the backends and filters from the command line,
//! with real clients: `file` under qemu-img, `cow` over a read-only base,
//! the `nbd` proxy in front of nbdkit and of nbdd and under filters,
//! `partition` on images labelled by sfdisk, and the `log` filter.
//!
//! Run against the reference: `NBDD_TEST_SERVER=nbdkit cargo test -p
//! nbd-mio-driver --test e2e_backends`.

mod common;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Flavor, Server, TempDir, Transport, python_nbd, random_file, require_tool, run, run_ok, sha256,
};

const MIB: usize = 1 << 20;

fn nbdcopy() -> Command {
    Command::new(require_tool("nbdcopy", "libnbd-bin"))
}

fn nbdinfo() -> Command {
    Command::new(require_tool("nbdinfo", "libnbd-bin"))
}

/// `nbdinfo --size URI`.
fn export_size(uri: &str) -> u64 {
    let out = run_ok(nbdinfo().args(["--size", uri]));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("nbdinfo --size: {out}"))
}

/// Copy the whole export to `path`.
fn copy_out(uri: &str, path: &Path) {
    run_ok(nbdcopy().args([uri, &path.display().to_string()]));
}

/// The first `len` bytes of a file.
fn prefix(path: &Path, len: usize) -> Vec<u8> {
    let mut v = std::fs::read(path).unwrap();
    assert!(
        v.len() >= len,
        "{} is only {} bytes",
        path.display(),
        v.len()
    );
    v.truncate(len);
    v
}

/// An upstream server for the proxy, started by hand on a Unix socket
/// (nbdkit or our own nbdd), killed on drop.
struct Upstream {
    child: Child,
    socket: PathBuf,
    _dir: TempDir,
}

impl Upstream {
    fn start(program: &Path, args: &[&str]) -> Self {
        let dir = TempDir::new("upstream");
        let socket = dir.path().join("up.sock");
        let mut child = Command::new(program)
            .arg("-f")
            .arg("-U")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&socket).is_err() {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("upstream {} {args:?} exited: {s}", program.display());
            }
            assert!(Instant::now() < deadline, "upstream did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            socket,
            _dir: dir,
        }
    }

    fn nbdkit(args: &[&str]) -> Self {
        Self::start(&require_tool("nbdkit", "nbdkit"), args)
    }

    fn nbdd(args: &[&str]) -> Self {
        Self::start(Path::new(env!("CARGO_BIN_EXE_nbdd")), args)
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// A proxy (the server under test) in front of this upstream.
    fn proxy(&self) -> Server {
        Server::start(Transport::Unix, &["nbd", &format!("uri={}", self.uri())])
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `qemu-img convert` a random 16 MiB image into a `file` export in `dir`
/// and back out; all three copies agree. Then qemu-io writes with FUA
/// (always on a worker), 2 MiB at once (above what the loop writes
/// itself) and small ones (on the loop when `dir` is tmpfs), each read
/// back through a fresh connection and from the file.
fn convert_through_file(dir: &Path) {
    let qemu_img = require_tool("qemu-img", "qemu-utils");
    let qemu_io = require_tool("qemu-io", "qemu-utils");
    let tmp = TempDir::new("convert");
    let (input, output) = (tmp.path().join("in.img"), tmp.path().join("out.img"));
    let disk = dir.join(format!("nbdd-convert-{}.img", std::process::id()));
    random_file(&input, 16 * MIB, 11);
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 * MIB as u64)
        .unwrap();
    let mut server = Server::start(Transport::Unix, &["file", &disk.display().to_string()]);
    let opts = server.qemu_image_opts("");
    run_ok(
        Command::new(&qemu_img)
            .args(["convert", "-n", "-f", "raw", "--target-image-opts"])
            .arg(&input)
            .arg(&opts),
    );
    run_ok(
        Command::new(&qemu_img)
            .args(["convert", "-O", "raw", "--image-opts", &opts])
            .arg(&output),
    );
    server.assert_alive();
    let want = sha256(&input);
    assert_eq!(sha256(&output), want, "read back through nbdd");
    assert_eq!(sha256(&disk), want, "written to the file");
    let writes = [
        ("write -f -P 0x11 4k 4k", 4096, 4096, 0x11),
        ("write -P 0x22 1M 2M", MIB, 2 * MIB, 0x22),
        ("write -P 0x33 12345 777", 12345, 777, 0x33),
    ];
    for (cmd, ..) in writes {
        run_ok(Command::new(&qemu_io).args(["-f", "raw", "-c", cmd, &server.uri()]));
    }
    let file = std::fs::read(&disk).unwrap();
    for (cmd, at, len, byte) in writes {
        let read = format!("read -P {byte:#x} {at} {len}");
        run_ok(Command::new(&qemu_io).args(["-f", "raw", "-c", &read, &server.uri()]));
        assert!(
            file[at..at + len].iter().all(|&b| b == byte),
            "{cmd}: not in the file"
        );
    }
    server.assert_alive();
    let _ = std::fs::remove_file(disk);
}

#[test]
fn qemu_img_convert_through_file() {
    let dir = TempDir::new("convert-disk");
    convert_through_file(dir.path());
}

/// On tmpfs, writes of 1 MiB and less are stored on the event loop
/// (`Backend::try_write_cached`), the rest on the workers.
#[test]
fn qemu_img_convert_through_file_on_tmpfs() {
    let shm = Path::new("/dev/shm");
    assert!(
        shm.is_dir(),
        "/dev/shm (tmpfs) is missing: the test needs a memory filesystem"
    );
    convert_through_file(shm);
}

/// `cow` over a read-only base: writes succeed and read back, and the base
/// file is bit-for-bit unchanged afterwards.
#[test]
fn cow_over_read_only_base() {
    let tmp = TempDir::new("cow");
    let (base, data, output) = (
        tmp.path().join("base.img"),
        tmp.path().join("data.img"),
        tmp.path().join("out.img"),
    );
    random_file(&base, 4 * MIB, 21);
    random_file(&data, 4 * MIB, 22);
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = sha256(&base);
    let mut server = Server::start(
        Transport::Unix,
        &["--filter=cow", "file", &base.display().to_string()],
    );
    let uri = server.uri();
    run_ok(nbdcopy().arg(&data).arg(&uri));
    copy_out(&uri, &output);
    server.assert_alive();
    assert_eq!(
        sha256(&output),
        sha256(&data),
        "writes read back through cow"
    );
    drop(server);
    assert_eq!(sha256(&base), before, "the base file is unchanged");
}

/// nbdcopy through the proxy both ways, checked against the upstream
/// directly; `nbdinfo --map` through the proxy shows the upstream's holes.
fn proxy_copies_and_maps(up: &Upstream) {
    let mut proxy = up.proxy();
    let tmp = TempDir::new("proxy");
    let (input, output, direct) = (
        tmp.path().join("in.img"),
        tmp.path().join("out.img"),
        tmp.path().join("direct.img"),
    );
    random_file(&input, 16 * MIB, 31);
    let uri = proxy.uri();
    assert_eq!(export_size(&uri), 32 * MIB as u64);
    run_ok(nbdcopy().arg(&input).arg(&uri));
    copy_out(&uri, &output);
    copy_out(&up.uri(), &direct);
    let want = std::fs::read(&input).unwrap();
    assert!(
        prefix(&output, 16 * MIB) == want,
        "read back through the proxy"
    );
    assert!(prefix(&direct, 16 * MIB) == want, "written to the upstream");
    let map = run_ok(nbdinfo().args(["--map", &uri]));
    let hole = map.lines().any(|l| {
        let f: Vec<_> = l.split_whitespace().collect();
        f.first() == Some(&"16777216") && f.get(2) == Some(&"3") && l.contains("hole,zero")
    });
    assert!(
        hole,
        "the unwritten second half is a hole through the proxy:\n{map}"
    );
    proxy.assert_alive();
}

#[test]
fn proxy_in_front_of_nbdkit() {
    proxy_copies_and_maps(&Upstream::nbdkit(&["memory", "32M"]));
}

#[test]
fn proxy_in_front_of_nbdd() {
    proxy_copies_and_maps(&Upstream::nbdd(&["memory", "32M"]));
}

/// A write through the proxy, with libnbd's client-side checks off so the
/// request really reaches the server; prints the errno name or "ok".
fn write_errno(uri: &str) -> String {
    let script = "import nbd, sys\n\
        h = nbd.NBD()\n\
        h.set_strict_mode(0)\n\
        h.connect_uri(sys.argv[1])\n\
        try:\n    h.pwrite(b'x' * 512, 0)\n    print('ok')\n\
        except nbd.Error as e:\n    print(e.errno)\n";
    run_ok(python_nbd().args(["-c", script, uri]))
        .trim()
        .to_owned()
}

/// Upstream errors pass through: EPERM from a read-only upstream, ENOSPC
/// injected by nbdkit's error filter.
#[test]
fn proxy_passes_upstream_errors() {
    let ro = Upstream::nbdkit(&["-r", "memory", "1M"]);
    let mut proxy = ro.proxy();
    assert_eq!(write_errno(&proxy.uri()), "EPERM");
    proxy.assert_alive();
    let full = Upstream::nbdkit(&[
        "--filter=error",
        "memory",
        "1M",
        "error=ENOSPC",
        "error-pwrite-rate=100%",
    ]);
    let mut proxy = full.proxy();
    assert_eq!(write_errno(&proxy.uri()), "ENOSPC");
    proxy.assert_alive();
}

/// Partitions of a 64 MiB image labelled by sfdisk (sectors of 512 bytes).
const P2_START: u64 = 22528;
const P2_SECTORS: u64 = 40960;

fn label(disk: &Path, kind: &str) {
    let sfdisk = require_tool("sfdisk", "fdisk");
    std::fs::File::create(disk)
        .unwrap()
        .set_len(64 * MIB as u64)
        .unwrap();
    let script = format!(
        "label: {kind}\nstart=2048, size=20480, type=L\nstart={P2_START}, size={P2_SECTORS}, type=L\n"
    );
    let mut child = Command::new(sfdisk)
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg(disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sfdisk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn partition_serves_partition_2(kind: &str) {
    let tmp = TempDir::new("part");
    let (disk, data, output) = (
        tmp.path().join("disk.img"),
        tmp.path().join("p2.img"),
        tmp.path().join("out.img"),
    );
    label(&disk, kind);
    let len = (P2_SECTORS * 512) as usize;
    random_file(&data, len, 41);
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&std::fs::read(&data).unwrap(), P2_START * 512)
            .unwrap();
    }
    let mut server = Server::start(
        Transport::Unix,
        &[
            "--filter=partition",
            "file",
            &disk.display().to_string(),
            "partition=2",
        ],
    );
    assert_eq!(export_size(&server.uri()), len as u64);
    copy_out(&server.uri(), &output);
    server.assert_alive();
    assert_eq!(sha256(&output), sha256(&data), "partition 2's content");
    // Partition 3 does not exist: the server refuses to start, saying why.
    if common::flavor() == Flavor::Nbdd {
        let out = run(Command::new(env!("CARGO_BIN_EXE_nbdd"))
            .args(["-f", "-U"])
            .arg(tmp.path().join("never.sock"))
            .args(["--filter=partition", "file"])
            .arg(&disk)
            .arg("partition=3"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("partition=3"),
            "{err}"
        );
    }
}

#[test]
fn partition_of_an_mbr_disk() {
    partition_serves_partition_2("dos");
}

#[test]
fn partition_of_a_gpt_disk() {
    partition_serves_partition_2("gpt");
}

/// The log filter writes a line for each request, with its offset.
#[test]
fn log_filter_records_requests() {
    let tmp = TempDir::new("log");
    let (logfile, data) = (tmp.path().join("nbd.log"), tmp.path().join("data.img"));
    random_file(&data, MIB, 51);
    let mut server = Server::start(
        Transport::Unix,
        &[
            "--filter=log",
            "memory",
            "1M",
            &format!("logfile={}", logfile.display()),
        ],
    );
    run_ok(nbdcopy().arg(&data).arg(server.uri()));
    copy_out(&server.uri(), &tmp.path().join("out.img"));
    server.assert_alive();
    let log = std::fs::read_to_string(&logfile).unwrap();
    let writes = log
        .lines()
        .filter(|l| l.contains("Write") && l.contains("offset=0x"))
        .count();
    let reads = log
        .lines()
        .filter(|l| l.contains("Read") && l.contains("offset=0x"))
        .count();
    assert!(
        writes >= 1 && reads >= 1,
        "writes {writes}, reads {reads}:\n{log}"
    );
    assert!(log.contains("offset=0x0 "), "{log}");
}

/// Several requests are in flight upstream at once: eight 200 ms reads
/// issued together through the proxy finish in about one delay (measured
/// ~0.2 s), far sooner than the 1.6 s they take one at a time. The bound
/// leaves room for a loaded CI machine (the other tests of this binary run
/// in parallel) while still failing if requests were serialised.
#[test]
fn proxy_keeps_requests_in_flight() {
    let up = Upstream::nbdkit(&["--filter=delay", "memory", "1M", "rdelay=200ms"]);
    let mut proxy = up.proxy();
    let script = "import nbd, sys, time\n\
        h = nbd.NBD()\n\
        h.connect_uri(sys.argv[1])\n\
        t = time.monotonic()\n\
        for i in range(8):\n    h.aio_pread(nbd.Buffer(4096), i * 4096)\n\
        while h.aio_in_flight() > 0:\n    h.poll(-1)\n\
        print(time.monotonic() - t)\n";
    let secs: f64 = run_ok(python_nbd().args(["-c", script, &proxy.uri()]))
        .trim()
        .parse()
        .unwrap();
    assert!(secs >= 0.2, "the delay filter is in effect ({secs} s)");
    assert!(
        secs < 0.8,
        "8 reads of 200 ms took {secs} s: not all in flight upstream"
    );
    proxy.assert_alive();
}

/// The upstream dies: requests in flight and later ones fail with EIO, the
/// proxy keeps serving (negotiation still works), and logs the loss once.
#[test]
fn proxy_fails_with_eio_when_the_upstream_dies() {
    let up = Upstream::nbdkit(&["--filter=delay", "memory", "1M", "rdelay=2000ms"]);
    let mut proxy = up.proxy();
    let script = "import nbd, sys\n\
        h = nbd.NBD()\n\
        h.connect_uri(sys.argv[1])\n\
        c = h.aio_pread(nbd.Buffer(4096), 0)\n\
        print('sent', flush=True)\n\
        sys.stdin.readline()\n\
        res = []\n\
        try:\n    while not h.aio_command_completed(c):\n        h.poll(-1)\n    res.append('ok')\n\
        except nbd.Error as e:\n    res.append(e.errno)\n\
        try:\n    h.pread(512, 0)\n    res.append('ok')\n\
        except nbd.Error as e:\n    res.append(e.errno)\n\
        print(' '.join(str(r) for r in res))\n";
    let mut child = python_nbd()
        .args(["-c", script, &proxy.uri()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "sent");
    // Let the proxy forward the READ (held 2 s upstream), then kill the
    // upstream under it.
    std::thread::sleep(Duration::from_millis(300));
    drop(up);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        line.trim(),
        "EIO EIO",
        "the READ in flight, then one after the upstream died"
    );
    // A new client still negotiates; its requests fail with EIO.
    let script = "import nbd, sys\n\
        h = nbd.NBD()\n\
        h.connect_uri(sys.argv[1])\n\
        try:\n    h.pread(512, 0)\n    print('ok')\n\
        except nbd.Error as e:\n    print(e.errno)\n";
    let got = run_ok(python_nbd().args(["-c", script, &proxy.uri()]));
    assert_eq!(got.trim(), "EIO");
    proxy.assert_alive();
    let lost = proxy.stderr().matches("upstream connection lost").count();
    assert_eq!(lost, 1, "logged once:\n{}", proxy.stderr());
}

/// `-r` in front of a writable upstream: the proxy itself is read-only, so
/// writes are refused with EPERM before they reach the upstream.
#[test]
fn proxy_read_only() {
    let up = Upstream::nbdkit(&["memory", "1M"]);
    let mut proxy = Server::start(
        Transport::Unix,
        &["-r", "nbd", &format!("uri={}", up.uri())],
    );
    assert_eq!(write_errno(&proxy.uri()), "EPERM");
    proxy.assert_alive();
}

/// nbdd in front of `up` with `filter` over the `nbd` backend; `extra`
/// are the filter's parameters.
fn filtered_proxy(up: &Upstream, filter: &str, extra: &[&str]) -> Server {
    let uri = format!("uri={}", up.uri());
    let flag = format!("--filter={filter}");
    let mut args = vec![flag.as_str(), "nbd", uri.as_str()];
    args.extend_from_slice(extra);
    Server::start(Transport::Unix, &args)
}

/// `cow` over the proxy: writes through cow read back, and the upstream,
/// read directly, is bit-for-bit what it was before.
#[test]
fn cow_over_the_proxy() {
    let up = Upstream::nbdkit(&["memory", "4M"]);
    let tmp = TempDir::new("cowproxy");
    let (base, data, output, direct) = (
        tmp.path().join("base.img"),
        tmp.path().join("data.img"),
        tmp.path().join("out.img"),
        tmp.path().join("direct.img"),
    );
    random_file(&base, 4 * MIB, 61);
    random_file(&data, 4 * MIB, 62);
    run_ok(nbdcopy().arg(&base).arg(up.uri()));
    let mut server = filtered_proxy(&up, "cow", &[]);
    let uri = server.uri();
    assert_eq!(export_size(&uri), 4 * MIB as u64);
    copy_out(&uri, &output);
    assert_eq!(sha256(&output), sha256(&base), "cow reads the upstream");
    run_ok(nbdcopy().arg(&data).arg(&uri));
    copy_out(&uri, &output);
    server.assert_alive();
    assert_eq!(
        sha256(&output),
        sha256(&data),
        "writes read back through cow over nbd"
    );
    copy_out(&up.uri(), &direct);
    assert_eq!(sha256(&direct), sha256(&base), "the upstream is unchanged");
}

/// `offset` over the proxy serves the window [1M, 5M) of the upstream, for
/// reads and writes.
#[test]
fn offset_over_the_proxy() {
    let up = Upstream::nbdkit(&["memory", "8M"]);
    let tmp = TempDir::new("offproxy");
    let (base, data, output, direct) = (
        tmp.path().join("base.img"),
        tmp.path().join("data.img"),
        tmp.path().join("out.img"),
        tmp.path().join("direct.img"),
    );
    random_file(&base, 8 * MIB, 71);
    random_file(&data, 4 * MIB, 72);
    run_ok(nbdcopy().arg(&base).arg(up.uri()));
    let mut server = filtered_proxy(&up, "offset", &["offset=1M", "range=4M"]);
    let uri = server.uri();
    assert_eq!(export_size(&uri), 4 * MIB as u64);
    copy_out(&uri, &output);
    let base_bytes = std::fs::read(&base).unwrap();
    assert!(
        std::fs::read(&output).unwrap() == base_bytes[MIB..5 * MIB],
        "the window is the upstream's [1M, 5M)"
    );
    run_ok(nbdcopy().arg(&data).arg(&uri));
    server.assert_alive();
    copy_out(&up.uri(), &direct);
    let got = std::fs::read(&direct).unwrap();
    let data_bytes = std::fs::read(&data).unwrap();
    assert!(
        got[MIB..5 * MIB] == data_bytes[..],
        "written into the window"
    );
    assert!(
        got[..MIB] == base_bytes[..MIB] && got[5 * MIB..] == base_bytes[5 * MIB..],
        "nothing written outside the window"
    );
}

/// Upstream errors pass through a filter over the proxy (ENOSPC injected
/// by nbdkit's error filter); when the upstream dies, requests fail with
/// EIO and the server keeps serving.
#[test]
fn errors_pass_through_a_filter_over_the_proxy() {
    let full = Upstream::nbdkit(&[
        "--filter=error",
        "memory",
        "1M",
        "error=ENOSPC",
        "error-pwrite-rate=100%",
    ]);
    let mut server = filtered_proxy(&full, "offset", &["offset=512K"]);
    assert_eq!(write_errno(&server.uri()), "ENOSPC");
    server.assert_alive();
    drop(full);
    let script = "import nbd, sys\n\
        h = nbd.NBD()\n\
        h.connect_uri(sys.argv[1])\n\
        res = []\n\
        for _ in range(2):\n    try:\n        h.pread(512, 0)\n        res.append('ok')\n    \
        except nbd.Error as e:\n        res.append(e.errno)\n\
        print(' '.join(str(r) for r in res))\n";
    let got = run_ok(python_nbd().args(["-c", script, &server.uri()]));
    assert_eq!(got.trim(), "EIO EIO", "reads after the upstream died");
    server.assert_alive();
    let lost = server.stderr().matches("upstream connection lost").count();
    assert_eq!(lost, 1, "logged once:\n{}", server.stderr());
}

/// `log` over the proxy records requests, data round-trips to the
/// upstream, and `base:allocation` passes through (the unwritten half is
/// a hole).
#[test]
fn log_over_the_proxy() {
    let up = Upstream::nbdkit(&["memory", "2M"]);
    let tmp = TempDir::new("logproxy");
    let (logfile, data, direct) = (
        tmp.path().join("nbd.log"),
        tmp.path().join("data.img"),
        tmp.path().join("direct.img"),
    );
    random_file(&data, MIB, 81);
    let mut server = filtered_proxy(&up, "log", &[&format!("logfile={}", logfile.display())]);
    run_ok(nbdcopy().arg(&data).arg(server.uri()));
    copy_out(&server.uri(), &tmp.path().join("out.img"));
    let map = run_ok(nbdinfo().args(["--map", &server.uri()]));
    server.assert_alive();
    assert!(
        prefix(&tmp.path().join("out.img"), MIB) == std::fs::read(&data).unwrap(),
        "read back through log over nbd"
    );
    copy_out(&up.uri(), &direct);
    assert!(
        prefix(&direct, MIB) == std::fs::read(&data).unwrap(),
        "written to the upstream"
    );
    let hole = map.lines().any(|l| {
        let f: Vec<_> = l.split_whitespace().collect();
        f.first() == Some(&"1048576") && f.get(2) == Some(&"3") && l.contains("hole,zero")
    });
    assert!(
        hole,
        "the unwritten half is a hole through log over nbd:\n{map}"
    );
    let log = std::fs::read_to_string(&logfile).unwrap();
    let count = |op: &str| {
        log.lines()
            .filter(|l| l.contains(op) && l.contains("offset=0x"))
            .count()
    };
    assert!(
        count("Write") >= 1 && count("Read") >= 1,
        "requests logged:\n{log}"
    );
}
