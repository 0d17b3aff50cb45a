//! `cargo xtask bench tls [--runs N] [--nbdd PATH]`: only the X.509 TLS
//! comparison (fio over `--tls=require`, nbdd vs nbdkit), repeated N times
//! with the two servers alternating, reported as per-workload medians.
//!
//! One fio run on this shared 2-core machine moves by 10-30 % between runs
//! (docs/BENCH.md, runs 1 and 2), too much to see a crypto-provider change;
//! the median of several alternating runs is steadier. `--nbdd PATH` (may
//! be repeated) times other builds instead of the current one, e.g. one
//! made before a change and one after, interleaved in the same rounds so
//! both see the same machine load.

use super::{Rate, Security, TLS_SECS, WORKLOADS, measure, table, tls_fixtures};
use crate::util::{cargo, on_path, root, sh, target_dir};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Parsed `bench tls` options.
pub struct Options {
    runs: usize,
    nbdd: Vec<PathBuf>,
}

/// Parses `[--runs N] [--nbdd PATH]`.
///
/// # Errors
/// On an unknown option or a bad number.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        runs: 5,
        nbdd: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                o.runs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--runs needs a positive number")?;
            }
            "--nbdd" => o.nbdd.push(it.next().ok_or("--nbdd needs a path")?.into()),
            _ => return Err(format!("bench tls: unknown option {a}")),
        }
    }
    Ok(o)
}

/// Runs the repeated TLS comparison and writes target/bench-tls-report.md.
///
/// # Errors
/// If a tool is missing or a server or fio run fails.
pub fn run(o: &Options) -> Result<(), String> {
    for (tool, pkg) in [
        ("fio", "fio"),
        ("nbdkit", "nbdkit"),
        ("certtool", "gnutls-bin"),
    ] {
        if !on_path(tool) {
            return Err(format!("`{tool}` is needed: apt-get install -y {pkg}"));
        }
    }
    let builds = if o.nbdd.is_empty() {
        sh(cargo().args([
            "build",
            "--release",
            "-p",
            "nbd-mio-driver",
            "--bin",
            "nbdd",
        ]))?;
        vec![target_dir().join("release/nbdd")]
    } else {
        o.nbdd.clone()
    };
    let dir = std::env::temp_dir().join(format!("nbdd-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let result = measure_runs(&builds, &dir, o.runs);
    let _ = std::fs::remove_dir_all(&dir);
    let (ours, theirs) = result?;
    let mut s = String::new();
    for (build, ours) in builds.iter().zip(&ours) {
        let _ = writeln!(
            s,
            "X.509 `--tls=require`, memory backend, Unix socket, iodepth 16, {TLS_SECS} s per \
             workload; median of {} alternating runs; nbdd = {}, nbdkit GnuTLS, client libnbd \
             (GnuTLS).\n",
            o.runs,
            build.display()
        );
        table(&mut s, ours, &theirs);
        s.push('\n');
    }
    println!("{s}");
    let path = root().join("target/bench-tls-report.md");
    std::fs::write(&path, &s).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("report written to {}", path.display());
    Ok(())
}

/// `runs` rounds of every nbdd build then nbdkit; per-workload medians of
/// each build, and of nbdkit.
fn measure_runs(
    builds: &[PathBuf],
    dir: &Path,
    runs: usize,
) -> Result<(Vec<Vec<Rate>>, Vec<Rate>), String> {
    let pki = tls_fixtures(dir)?;
    let home = dir.join("home");
    let sec = Security::X509 {
        certs: &pki,
        home: &home,
    };
    let mut ours: Vec<Vec<Vec<Rate>>> = vec![Vec::new(); builds.len()];
    let mut theirs = Vec::new();
    for round in 0..runs {
        eprintln!("bench tls: round {}/{runs}", round + 1);
        for (build, runs) in builds.iter().zip(&mut ours) {
            runs.push(measure(build, dir, "nbdd-x509", &sec, TLS_SECS)?);
        }
        theirs.push(measure(
            Path::new("nbdkit"),
            dir,
            "nbdkit-x509",
            &sec,
            TLS_SECS,
        )?);
    }
    Ok((ours.iter().map(|r| medians(r)).collect(), medians(&theirs)))
}

/// The median IOPS and bandwidth of each workload over the runs.
fn medians(runs: &[Vec<Rate>]) -> Vec<Rate> {
    (0..WORKLOADS.len())
        .map(|w| Rate {
            iops: median(runs.iter().map(|r| r[w].iops).collect()),
            bytes_per_sec: median(runs.iter().map(|r| r[w].bytes_per_sec).collect()),
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
