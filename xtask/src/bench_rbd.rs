//! `cargo xtask bench --rbd`: nbdd serving an RBD image against librbd
//! itself, on one throwaway cluster (xtask/src/ceph.rs), in one run.
//!
//! For each workload (4k random read and write, 1M sequential read and
//! write, queue depth 32) three clients run back to back on the same 256 MiB
//! image: `rbd bench` (the reference: librbd in-process, 32 threads),
//! fio's `rbd` engine (librbd in-process, the same fio job as the NBD run)
//! and fio's `nbd` engine through `nbdd rbd` on a Unix socket. The table
//! goes to stdout and to the "RBD" section of BENCHMARKS.md (between
//! markers, so other sections of that file are left alone).

use crate::ceph::{Cluster, POOL};
use crate::util::{cargo, on_path, root, sh, show, target_dir};
use std::fmt::Write as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// (label, rbd bench --io-type, --io-pattern, --io-size, --io-total, fio --rw, --bs).
/// Totals give `rbd bench` a few seconds at the rates measured here.
const WORKLOADS: &[(&str, &str, &str, &str, &str, &str, &str)] = &[
    (
        "4k randread",
        "read",
        "rand",
        "4K",
        "512M",
        "randread",
        "4k",
    ),
    (
        "4k randwrite",
        "write",
        "rand",
        "4K",
        "192M",
        "randwrite",
        "4k",
    ),
    ("1M seq read", "read", "seq", "1M", "4G", "read", "1M"),
    ("1M seq write", "write", "seq", "1M", "2G", "write", "1M"),
];
const IMAGE: &str = "bench";
const IMAGE_SIZE: &str = "256M";
const DEPTH: &str = "32";
const FIO_SECS: &str = "5";
const START: &str = "<!-- rbd-bench:start -->";
const END: &str = "<!-- rbd-bench:end -->";

/// Rounds per client and workload (the best is kept).
const ROUNDS: usize = 2;

/// Operations per second and bytes per second.
#[derive(Clone, Copy, Default)]
struct Rate {
    iops: f64,
    bps: f64,
}

impl Rate {
    fn max(self, other: Self) -> Self {
        if other.iops > self.iops { other } else { self }
    }
}

/// Runs the comparison and writes the report.
///
/// # Errors
/// Missing tools, a failed build, bring-up or run.
pub fn run() -> Result<(), String> {
    for (tool, pkg) in [
        ("fio", "fio"),
        ("rbd", "ceph-common"),
        ("ceph-osd", "ceph-osd"),
    ] {
        if !on_path(tool) {
            return Err(format!(
                "`{tool}` is needed; install it with:\n  apt-get install -y {pkg}"
            ));
        }
    }
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "nbd-mio-driver",
        "--features",
        "rbd",
        "--bin",
        "nbdd",
    ]))?;
    let nbdd = target_dir().join("release/nbdd");
    let load_before = loadavg();
    let cluster = Cluster::up()?;
    let spec = format!("{POOL}/{IMAGE}");
    cluster.run(
        "rbd",
        &[
            "create",
            "--size",
            IMAGE_SIZE,
            "--image-feature",
            "layering",
            &spec,
        ],
    )?;
    // Reads must find data: fill the whole image first.
    let fill = [
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4M",
        "--io-threads",
        "16",
        "--io-total",
        IMAGE_SIZE,
        "--io-pattern",
        "seq",
        &spec,
    ];
    cluster.run("rbd", &fill)?;
    let server = Nbdd::start(&nbdd, &cluster, &spec)?;
    let mut rows = Vec::new();
    let rbd_engine = [
        "--ioengine=rbd".to_owned(),
        "--clientname=admin".to_owned(),
        format!("--pool={POOL}"),
        format!("--rbdname={IMAGE}"),
    ];
    let nbd_engine = [
        "--ioengine=nbd".to_owned(),
        format!("--uri={}", server.uri()),
    ];
    for &(label, ty, pattern, size, total, rw, bs) in WORKLOADS {
        eprintln!("== {label}");
        // The three clients take turns, ROUNDS times, and each keeps its
        // best: the machine is shared, so a burst of load elsewhere must
        // not land on one client only.
        let (mut bench, mut fio_rbd, mut fio_nbd) =
            (Rate::default(), Rate::default(), Rate::default());
        for _ in 0..ROUNDS {
            bench = bench.max(rbd_bench(&cluster, &spec, ty, pattern, size, total)?);
            fio_rbd = fio_rbd.max(fio(&cluster, &rbd_engine, rw, bs)?);
            fio_nbd = fio_nbd.max(fio(&cluster, &nbd_engine, rw, bs)?);
        }
        rows.push((label, bench, fio_rbd, fio_nbd));
    }
    drop(server);
    drop(cluster);
    let report = render(&rows, &load_before, &loadavg());
    println!("{report}");
    write_section(&root().join("BENCHMARKS.md"), &report)
}

/// nbdd serving the image on a Unix socket; killed on drop.
struct Nbdd {
    child: Child,
    sock: std::path::PathBuf,
}

impl Nbdd {
    fn start(nbdd: &Path, cluster: &Cluster, spec: &str) -> Result<Self, String> {
        let sock = std::env::temp_dir().join(format!("nbdd-bench-rbd-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(nbdd);
        cmd.args(["-f", "-U"])
            .arg(&sock)
            .args(["rbd", spec])
            .arg(format!("conf={}", cluster.conf().display()));
        eprintln!("+ {}", show(&cmd));
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start nbdd: {e}"))?;
        let mut s = Self { child, sock };
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&s.sock).is_err() {
            if Instant::now() > deadline || matches!(s.child.try_wait(), Ok(Some(_))) {
                return Err("nbdd rbd did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }
}

impl Drop for Nbdd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// `rbd bench`'s last line: `elapsed: S ops: N ops/sec: X bytes/sec: Y UNIT`.
fn rbd_bench(
    c: &Cluster,
    spec: &str,
    ty: &str,
    pattern: &str,
    size: &str,
    total: &str,
) -> Result<Rate, String> {
    let args = [
        "bench",
        "--io-type",
        ty,
        "--io-size",
        size,
        "--io-threads",
        DEPTH,
        "--io-total",
        total,
        "--io-pattern",
        pattern,
        spec,
    ];
    let out = c.run("rbd", &args)?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains("ops/sec:"))
        .ok_or_else(|| format!("rbd bench printed no result:\n{out}"))?;
    let iops = line
        .split_whitespace()
        .skip_while(|w| *w != "ops/sec:")
        .nth(1)
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("cannot parse rbd bench: {line}"))?;
    let bytes = size
        .trim_end_matches(['K', 'M'])
        .parse::<f64>()
        .unwrap_or(0.0)
        * if size.ends_with('M') {
            1048576.0
        } else {
            1024.0
        };
    Ok(Rate {
        iops,
        bps: iops * bytes,
    })
}

/// One time-based fio job at queue depth 32 with `engine` options; terse
/// v3: field 5 error, 7/8 read KiB/s and IOPS, 48/49 write (1-based).
fn fio(c: &Cluster, engine: &[String], rw: &str, bs: &str) -> Result<Rate, String> {
    let mut cmd = Command::new("fio");
    // fio's rbd engine finds the cluster through $CEPH_CONF.
    cmd.env("CEPH_CONF", c.conf());
    cmd.args([
        "--name=bench",
        &format!("--rw={rw}"),
        &format!("--bs={bs}"),
        &format!("--iodepth={DEPTH}"),
    ])
    .args(engine)
    .args([
        &format!("--size={IMAGE_SIZE}"),
        &format!("--runtime={FIO_SECS}"),
        "--time_based",
        "--output-format=terse",
        "--terse-version=3",
    ]);
    let writes = rw.contains("write");
    let s = crate::bench::fio::run(cmd, writes, block_bytes(bs))
        .map_err(|e| format!("{e} ({rw} {bs}, {engine:?})"))?;
    Ok(Rate {
        iops: s.iops(),
        bps: s.bytes / s.secs,
    })
}

/// `4k` / `1M` as bytes.
fn block_bytes(size: &str) -> u64 {
    let n = size
        .trim_end_matches(['k', 'K', 'M'])
        .parse::<u64>()
        .unwrap_or(0);
    if size.ends_with('M') {
        n << 20
    } else {
        n << 10
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn render(rows: &[(&str, Rate, Rate, Rate)], before: &str, after: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## RBD: nbdd vs librbd (`cargo xtask bench --rbd`)\n");
    let _ = writeln!(
        s,
        "One throwaway single-node cluster (one mon, one memstore OSD, xtask/src/ceph.rs), one \
         {IMAGE_SIZE} image (4 MiB objects, layering only, pre-filled), queue depth {DEPTH}, same run. \
         `rbd bench` uses {DEPTH} I/O threads in-process; fio runs {FIO_SECS} s per workload, once with \
         its `rbd` engine (librbd in-process) and once with its `nbd` engine through `nbdd rbd` \
         (Unix socket). The three take turns {ROUNDS} times per workload and each keeps its \
         best. The client, nbdd, the OSD and the mon share the machine's 2 cores. \
         Load average before/after: {before} / {after}.\n"
    );
    let _ = writeln!(
        s,
        "| workload | rbd bench IOPS | fio rbd IOPS | nbdd IOPS | nbdd MB/s | nbdd / rbd bench | nbdd / fio rbd |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for (label, bench, frbd, nbd) in rows {
        let _ = writeln!(
            s,
            "| {label} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {:.2} |",
            bench.iops,
            frbd.iops,
            nbd.iops,
            nbd.bps / 1e6,
            nbd.iops / bench.iops,
            nbd.iops / frbd.iops
        );
    }
    s
}

/// `new` (a rewrite of the file at `path` by `cargo xtask bench`) with the
/// RBD section of the old file appended, so that rewrite does not drop it.
pub fn keep_section(path: &Path, new: &str) -> String {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if a < b && !new.contains(START) => {
            format!("{}\n\n{}\n", new.trim_end(), &old[a..b + END.len()])
        }
        _ => new.to_owned(),
    }
}

/// Replace the RBD section of BENCHMARKS.md (between the markers), or
/// append it; other sections are not touched.
fn write_section(path: &Path, report: &str) -> Result<(), String> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let section = format!("{START}\n{report}{END}\n");
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if a < b => format!(
            "{}{section}{}",
            &old[..a],
            &old[b + END.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n{section}", old.trim_end()),
    };
    std::fs::write(path, new).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("RBD section written to {}", path.display());
    Ok(())
}
