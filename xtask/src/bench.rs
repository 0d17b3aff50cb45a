//! `cargo xtask bench`: criterion benches of the codec, then fio against
//! nbdd and nbdkit side by side (same machine, same run, memory backend,
//! Unix socket, iodepth 16, 10 s per workload), with a markdown report.

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
    fn start(program: &Path, dir: &Path, name: &str) -> Result<Self, String> {
        let sock = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(program);
        cmd.args(["-f", "-U"]).arg(&sock).args(["memory", "1G"]);
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

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
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
fn fio(uri: &str, rw: &str, bs: &str, secs: Option<u32>) -> Result<Rate, String> {
    let mut cmd = Command::new("fio");
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

/// Starts `program`, fills the working set, runs every workload.
fn measure(program: &Path, dir: &Path, name: &str) -> Result<Vec<Rate>, String> {
    let server = Server::start(program, dir, name)?;
    fio(&server.uri(), "write", "1M", None)?;
    WORKLOADS
        .iter()
        .map(|(_, rw, bs)| fio(&server.uri(), rw, bs, Some(SECS)))
        .collect()
}

/// Runs the benches and writes the report.
///
/// # Errors
/// If a build, bench or fio run fails, or fio/nbdkit are missing.
pub fn run() -> Result<(), String> {
    sh(cargo().args(["bench", "-p", "nbd-proto"]))?;
    for (tool, pkg) in [("fio", "fio"), ("nbdkit", "nbdkit")] {
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
    let ours = measure(&nbdd, &dir, "nbdd");
    let theirs = measure(Path::new("nbdkit"), &dir, "nbdkit");
    let _ = std::fs::remove_dir_all(&dir);
    let report = render(&ours?, &theirs?);
    println!("{report}");
    let path = root().join("target/bench-report.md");
    let _ = std::fs::create_dir_all(root().join("target"));
    std::fs::write(&path, &report).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("report written to {}", path.display());
    Ok(())
}

fn render(ours: &[Rate], theirs: &[Rate]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# nbdd vs nbdkit (fio ioengine=nbd)\n");
    let _ = writeln!(
        s,
        "memory backend, Unix socket, iodepth 16, {SECS} s per workload, {WORKING_SET} pre-filled working set, \
         same machine and run; nbdkit is multi-threaded, nbdd single-threaded.\n"
    );
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
    s
}
