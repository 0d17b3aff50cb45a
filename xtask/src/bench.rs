//! `cargo xtask bench`: criterion benches of the codec, then fio against
//! nbdd and nbdkit side by side (and qemu-nbd for the file backend) (same machine, same run, memory backend,
//! Unix socket, iodepth 16, 10 s per workload), then the same over TLS
//! (X.509 with fio, 5 s per workload; PSK with nbdcopy, because fio's nbd
//! engine does not let libnbd read a `tls-psk-file`), with a markdown report.

pub mod tls;

use crate::util::{cargo, on_path, root, sh, show, target_dir};
use std::fmt::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// (label, fio rw, block size).
const WORKLOADS: &[(&str, &str, &str)] = &[
    ("4k randread", "randread", "4k"),
    ("4k randwrite", "randwrite", "4k"),
    ("1M seq read", "read", "1M"),
    ("1M seq write", "write", "1M"),
];
/// The region fio works on; pre-filled so reads hit real data, not holes.
const WORKING_SET: &str = "256M";
const SECS: u32 = 10;
/// Seconds per fio workload over TLS (kept short: the TLS run is extra).
const TLS_SECS: u32 = 5;
/// Seconds per fio workload in the three-way file comparison.
const FILE_SECS: u32 = 5;
/// Bytes nbdcopy moves each way in the PSK run.
const PSK_COPY_BYTES: usize = 256 << 20;

/// How clients reach the server.
enum Security<'a> {
    /// No TLS.
    Plain,
    /// `--tls=require` with the certificates in this directory (the
    /// layout of tests/pki/make-pki.sh). fio's libnbd finds the CA in
    /// `$HOME/.pki/libnbd/ca-cert.pem`; `home` is that `$HOME`.
    X509 { certs: &'a Path, home: &'a Path },
    /// `--tls=require --tls-psk=FILE`; the user is `alice`.
    Psk(&'a Path),
}

impl Security<'_> {
    fn server_args(&self) -> Vec<String> {
        match self {
            Self::Plain => Vec::new(),
            Self::X509 { certs, .. } => vec![
                "--tls=require".into(),
                format!("--tls-certificates={}", certs.display()),
            ],
            Self::Psk(file) => vec![
                "--tls=require".into(),
                format!("--tls-psk={}", file.display()),
            ],
        }
    }
}

/// One fio result: IOPS and bytes per second of the job's direction.
#[derive(Clone, Copy, Debug, Default)]
struct Rate {
    iops: f64,
    bytes_per_sec: f64,
}

/// A server on a Unix socket, killed on drop.
struct Server {
    child: Child,
    sock: PathBuf,
}

impl Server {
    fn start(
        program: &Path,
        dir: &Path,
        name: &str,
        sec: &Security,
        size: &str,
    ) -> Result<Self, String> {
        let sock = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(program);
        cmd.args(["-f", "-U"])
            .arg(&sock)
            .args(sec.server_args())
            .args(["memory", size]);
        Self::spawn(cmd, sock, name)
    }

    /// Start any server command that listens on `sock`.
    fn spawn(mut cmd: Command, sock: PathBuf, name: &str) -> Result<Self, String> {
        eprintln!("+ {}", show(&cmd));
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", show(&cmd)))?;
        let mut s = Self { child, sock };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&s.sock).is_err() {
            if Instant::now() > deadline || matches!(s.child.try_wait(), Ok(Some(_))) {
                return Err(format!(
                    "{name} did not start listening on {}",
                    s.sock.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    fn uri(&self, sec: &Security) -> String {
        match sec {
            Security::Plain => format!("nbd+unix:///?socket={}", self.sock.display()),
            Security::X509 { .. } => format!("nbds+unix:///?socket={}", self.sock.display()),
            // libnbd takes the PSK user from the URI's user part.
            Security::Psk(file) => format!(
                "nbds+unix://alice@/?socket={}&tls-psk-file={}",
                self.sock.display(),
                file.display()
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one fio job and reads its terse (v3) line: field 5 is the error,
/// 7/8 read KiB/s and IOPS, 48/49 write KiB/s and IOPS (1-based).
fn fio(
    uri: &str,
    home: Option<&Path>,
    rw: &str,
    bs: &str,
    secs: Option<u32>,
) -> Result<Rate, String> {
    let mut cmd = Command::new("fio");
    if let Some(h) = home {
        cmd.env("HOME", h);
    }
    cmd.args([
        "--name=bench",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        &format!("--rw={rw}"),
    ])
    .args([
        &format!("--bs={bs}"),
        "--iodepth=16",
        &format!("--size={WORKING_SET}"),
    ])
    .args(["--output-format=terse", "--terse-version=3"]);
    if let Some(s) = secs {
        cmd.args([&format!("--runtime={s}"), "--time_based"]);
    }
    eprintln!("+ {}", show(&cmd));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run fio: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("3;")).ok_or_else(|| {
        format!(
            "fio gave no terse result ({}):\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let f: Vec<&str> = line.split(';').collect();
    let num = |i: usize| {
        f.get(i - 1)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    if num(5) != 0.0 {
        return Err(format!("fio reported error {} for {rw} {bs}", num(5)));
    }
    let (kib, iops) = if rw.contains("write") {
        (num(48), num(49))
    } else {
        (num(7), num(8))
    };
    Ok(Rate {
        iops,
        bytes_per_sec: kib * 1024.0,
    })
}

/// Starts `program`, fills the working set, runs every workload for
/// `secs` seconds each.
fn measure(
    program: &Path,
    dir: &Path,
    name: &str,
    sec: &Security,
    secs: u32,
) -> Result<Vec<Rate>, String> {
    let server = Server::start(program, dir, name, sec, "1G")?;
    let uri = server.uri(sec);
    let home = match sec {
        Security::X509 { home, .. } => Some(*home),
        _ => None,
    };
    fio(&uri, home, "write", "1M", None)?;
    WORKLOADS
        .iter()
        .map(|(_, rw, bs)| fio(&uri, home, rw, bs, Some(secs)))
        .collect()
}

/// nbdcopy of `src` into the export and back out over PSK TLS; returns
/// (upload, download) in bytes per second.
fn psk_copy(program: &Path, dir: &Path, name: &str, psk: &Path) -> Result<(f64, f64), String> {
    let sec = Security::Psk(psk);
    // Exactly the file's size, so the copy back is the same length.
    let server = Server::start(program, dir, name, &sec, &PSK_COPY_BYTES.to_string())?;
    let uri = server.uri(&sec);
    let src = dir.join("psk-src.raw");
    let back = dir.join("psk-back.raw");
    let timed = |from: &dyn AsRef<std::ffi::OsStr>, to: &dyn AsRef<std::ffi::OsStr>| {
        let start = Instant::now();
        sh(Command::new("nbdcopy").arg(from).arg(to))?;
        Ok::<f64, String>(PSK_COPY_BYTES as f64 / start.elapsed().as_secs_f64())
    };
    let up = timed(&src, &uri)?;
    let down = timed(&uri, &back)?;
    let same = std::fs::read(&src).ok() == std::fs::read(&back).ok();
    let _ = std::fs::remove_file(&back);
    if !same {
        return Err(format!("{name}: nbdcopy over PSK returned different data"));
    }
    Ok((up, down))
}

/// Test credentials from tests/pki/make-pki.sh, plus the `$HOME` in which
/// fio's libnbd finds the CA, and the nbdcopy source file.
fn tls_fixtures(dir: &Path) -> Result<PathBuf, String> {
    let pki = dir.join("pki");
    sh(Command::new("sh")
        .arg(root().join("nbd-mio-driver/tests/pki/make-pki.sh"))
        .arg(&pki))?;
    let libnbd = dir.join("home/.pki/libnbd");
    std::fs::create_dir_all(&libnbd).map_err(|e| format!("mkdir {}: {e}", libnbd.display()))?;
    std::fs::copy(pki.join("ca-cert.pem"), libnbd.join("ca-cert.pem"))
        .map_err(|e| format!("copy CA: {e}"))?;
    // Incompressible, so nothing along the way can shortcut it.
    let mut data = vec![0u8; PSK_COPY_BYTES];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(dir.join("psk-src.raw"), data).map_err(|e| format!("write source: {e}"))?;
    Ok(pki)
}

/// Every measurement of one run, for [`render`].
struct Results {
    plain: (Vec<Rate>, Vec<Rate>),
    /// nbdd, nbdkit, qemu-nbd serving one raw file on tmpfs.
    file: [Vec<Rate>; 3],
    x509: (Vec<Rate>, Vec<Rate>),
    psk: ((f64, f64), (f64, f64)),
}

/// Runs the benches and writes the report.
///
/// # Errors
/// If a build, bench or fio run fails, or fio/nbdkit are missing.
pub fn run() -> Result<(), String> {
    sh(cargo().args(["bench", "-p", "nbd-proto"]))?;
    for (tool, pkg) in [
        ("fio", "fio"),
        ("nbdkit", "nbdkit"),
        ("qemu-nbd", "qemu-utils"),
        ("nbdcopy", "libnbd-bin"),
        ("certtool", "gnutls-bin"),
        ("psktool", "gnutls-bin"),
    ] {
        if !on_path(tool) {
            return Err(format!(
                "`{tool}` is needed for the comparison; install it with:\n  apt-get install -y {pkg}"
            ));
        }
    }
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "nbd-mio-driver",
        "--bin",
        "nbdd",
    ]))?;
    let nbdd = target_dir().join("release/nbdd");
    let dir = std::env::temp_dir().join(format!("nbdd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let results = measure_all(&nbdd, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let report = render(&results?);
    println!("{report}");
    let path = root().join("target/bench-report.md");
    let _ = std::fs::create_dir_all(root().join("target"));
    std::fs::write(&path, &report).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("report written to {}", path.display());
    Ok(())
}

/// The same workloads against one raw image on tmpfs, served by nbdd's
/// `file` backend, nbdkit's `file` plugin and qemu-nbd (which has no RAM
/// disk, so this is the three-way comparison). A fresh image per server.
fn measure_file_servers(nbdd: &Path, dir: &Path) -> Result<[Vec<Rate>; 3], String> {
    let image = PathBuf::from(format!("/dev/shm/nbdd-bench-{}.raw", std::process::id()));
    let run = |name: &str, build: &dyn Fn(&Path, &Path) -> Command| -> Result<Vec<Rate>, String> {
        let f = std::fs::File::create(&image).map_err(|e| format!("{}: {e}", image.display()))?;
        f.set_len(1 << 30)
            .map_err(|e| format!("{}: {e}", image.display()))?;
        let sock = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&sock);
        let server = Server::spawn(build(&sock, &image), sock, name)?;
        let uri = server.uri(&Security::Plain);
        fio(&uri, None, "write", "1M", None)?;
        let rates = WORKLOADS
            .iter()
            .map(|(_, rw, bs)| fio(&uri, None, rw, bs, Some(FILE_SECS)))
            .collect();
        drop(server);
        let _ = std::fs::remove_file(&image);
        rates
    };
    let ours = run("nbdd-file", &|sock, img| {
        let mut c = Command::new(nbdd);
        c.args(["-f", "-U"]).arg(sock).arg("file").arg(img);
        c
    })?;
    let nbdkit = run("nbdkit-file", &|sock, img| {
        let mut c = Command::new("nbdkit");
        c.args(["-f", "-U"]).arg(sock).arg("file").arg(img);
        c
    })?;
    let qemu = run("qemu-nbd", &|sock, img| {
        let mut c = Command::new("qemu-nbd");
        // -t: keep serving after a client leaves; -e 8: fio and the fill
        // job may overlap; --cache/--aio: qemu-nbd's defaults spelled out.
        c.args([
            "-t",
            "-e",
            "8",
            "-f",
            "raw",
            "--cache=writeback",
            "--aio=threads",
            "-k",
        ])
        .arg(sock)
        .arg(img);
        c
    })?;
    Ok([ours, nbdkit, qemu])
}

fn measure_all(nbdd: &Path, dir: &Path) -> Result<Results, String> {
    let nbdkit = Path::new("nbdkit");
    let plain = (
        measure(nbdd, dir, "nbdd", &Security::Plain, SECS)?,
        measure(nbdkit, dir, "nbdkit", &Security::Plain, SECS)?,
    );
    let file = measure_file_servers(nbdd, dir)?;
    let pki = tls_fixtures(dir)?;
    let home = dir.join("home");
    let x509 = Security::X509 {
        certs: &pki,
        home: &home,
    };
    let x509 = (
        measure(nbdd, dir, "nbdd-x509", &x509, TLS_SECS)?,
        measure(nbdkit, dir, "nbdkit-x509", &x509, TLS_SECS)?,
    );
    let psk_file = pki.join("keys.psk");
    let psk = (
        psk_copy(nbdd, dir, "nbdd-psk", &psk_file)?,
        psk_copy(nbdkit, dir, "nbdkit-psk", &psk_file)?,
    );
    Ok(Results {
        plain,
        file,
        x509,
        psk,
    })
}

fn render(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# nbdd vs nbdkit (fio ioengine=nbd)\n");
    let _ = writeln!(
        s,
        "memory backend, Unix socket, iodepth 16, {SECS} s per workload, {WORKING_SET} pre-filled working set, \
         same machine and run; nbdkit is multi-threaded, nbdd single-threaded.\n"
    );
    table(&mut s, &r.plain.0, &r.plain.1);
    let _ = writeln!(s, "\n## file backend: nbdd vs nbdkit vs qemu-nbd\n");
    let _ = writeln!(
        s,
        "one 1 GiB raw image on tmpfs (/dev/shm), pre-filled, served by `nbdd file`, `nbdkit file` and \
         `qemu-nbd -f raw --cache=writeback --aio=threads`; Unix socket, iodepth 16, {FILE_SECS} s per workload.\n"
    );
    let _ = writeln!(
        s,
        "| workload | nbdd IOPS | nbdkit IOPS | qemu-nbd IOPS | nbdd/nbdkit | nbdd/qemu-nbd |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    let [ours, kit, qemu] = &r.file;
    for ((((label, _, _), a), b), c) in WORKLOADS.iter().zip(ours).zip(kit).zip(qemu) {
        let _ = writeln!(
            s,
            "| {label} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            a.iops,
            b.iops,
            c.iops,
            a.iops / b.iops,
            a.iops / c.iops
        );
    }
    let _ = writeln!(s, "\n## over TLS (X.509, `--tls=require`)\n");
    let _ = writeln!(
        s,
        "as above, {TLS_SECS} s per workload; nbdd uses rustls, nbdkit GnuTLS; the client is GnuTLS (libnbd).\n"
    );
    table(&mut s, &r.x509.0, &r.x509.1);
    let _ = writeln!(s, "\n## over TLS (PSK, `--tls=require --tls-psk`)\n");
    let _ = writeln!(
        s,
        "nbdcopy of {} MiB of random data into the export and back (fio's nbd engine cannot \
         pass a PSK file to libnbd); nbdd uses OpenSSL, nbdkit GnuTLS.\n",
        PSK_COPY_BYTES >> 20
    );
    let _ = writeln!(s, "| direction | nbdd MB/s | nbdkit MB/s | nbdd/nbdkit |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    let ((ou, od), (tu, td)) = r.psk;
    for (label, a, b) in [("upload (write)", ou, tu), ("download (read)", od, td)] {
        let _ = writeln!(
            s,
            "| {label} | {:.1} | {:.1} | {:.2} |",
            a / 1e6,
            b / 1e6,
            a / b
        );
    }
    s
}

/// One fio comparison table.
fn table(s: &mut String, ours: &[Rate], theirs: &[Rate]) {
    let _ = writeln!(
        s,
        "| workload | nbdd IOPS | nbdd MB/s | nbdkit IOPS | nbdkit MB/s | nbdd/nbdkit |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (((label, _, _), a), b) in WORKLOADS.iter().zip(ours).zip(theirs) {
        let ratio = if b.iops > 0.0 {
            a.iops / b.iops
        } else {
            f64::NAN
        };
        let _ = writeln!(
            s,
            "| {label} | {:.0} | {:.1} | {:.0} | {:.1} | {ratio:.2} |",
            a.iops,
            a.bytes_per_sec / 1e6,
            b.iops,
            b.bytes_per_sec / 1e6
        );
    }
}
