//! BENCHMARKS.md from a run's results.

use super::env::Env;
use super::plan::Role;
use super::runner::TableResult;
use super::stats::{Sample, Summary};
use std::fmt::Write as _;

/// `a / b` when both were measured.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}"))
}

/// Medians per `[job][server]`.
pub fn summaries(r: &TableResult) -> Vec<Vec<Summary>> {
    r.samples
        .iter()
        .map(|per_server| per_server.iter().map(|s| Summary::of(s)).collect())
        .collect()
}

/// The (subject, reference) server index pairs a table reports ratios for.
pub fn pairs(r: &TableResult) -> Vec<(usize, usize)> {
    let s = &r.table.servers;
    let idx = |role| (0..s.len()).filter(move |&i| s[i].role == role);
    idx(Role::Subject)
        .flat_map(|a| idx(Role::Reference).map(move |b| (a, b)))
        .collect()
}

/// Renders the whole report; `chart` is the chart's path relative to it.
pub fn render(
    results: &[TableResult],
    env: &Env,
    argv: &str,
    repeats: usize,
    secs: u32,
    chart: Option<&str>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench{argv}` on {}; do not edit by hand, run it again. \
         Ratios are nbdd / reference: above 1 nbdd is faster, and for CPU, below 1 nbdd is cheaper.\n",
        env.date
    );
    header(&mut s, env, repeats, secs);
    if let Some(c) = chart {
        let _ = writeln!(
            s,
            "![nbdd throughput relative to nbdkit and qemu-nbd, per job]({c})\n"
        );
    }
    let raw = results
        .iter()
        .find(|r| !r.raw.is_empty())
        .map(|r| Summary::of(&r.raw));
    if let Some(raw) = &raw {
        let _ = writeln!(
            s,
            "**Raw Unix-socket reference** (two processes, 1 MiB writes, no protocol, no storage; \
             median of {}): **{:.0} MiB/s**, {:.3} CPU s/GiB for both ends together. \
             The 1M jobs below are also given as a share of it.\n",
            raw.n, raw.mib_s, raw.cpu_s_per_gib
        );
    }
    super::targets::render(&mut s, results);
    for r in results {
        table(&mut s, r, raw.as_ref());
    }
    s
}

fn header(s: &mut String, env: &Env, repeats: usize, secs: u32) {
    let _ = writeln!(s, "## Machine and method\n");
    let _ = writeln!(
        s,
        "- **Machine:** {}, {} cores, {:.1} GiB memory, Linux {}; load average (1/5/15 min) {} at the start, {} at the end \
         (the machine is shared; fio runs on the same cores as the server).",
        env.cpu, env.cores, env.mem_gib, env.kernel, env.load_start, env.load_end
    );
    let versions: Vec<String> = env
        .versions
        .iter()
        .map(|(t, v)| format!("{t}: {v}"))
        .collect();
    let _ = writeln!(s, "- **Versions:** {}.", versions.join("; "));
    let _ = writeln!(
        s,
        "- **Method:** every server of a table is started up front on a Unix socket and pre-filled; then \
         {repeats} repeat(s) of every job, round robin (repeat → job → server, the server order rotated each \
         repeat) so noise falls on all servers alike; each figure is the median over the repeats. fio jobs are \
         `--ioengine=nbd`, one connection, `--time_based --runtime={secs}` over the whole 1 GiB export; nbdcopy \
         jobs copy 1 GiB with `--request-size=262144` and nbdcopy's other defaults (it opens 4 connections when \
         the server offers multi-conn). Server CPU is utime+stime of the whole process (all threads) from \
         /proc/PID/stat before and after each run; CPU µs/req divides it by the requests of the run (nbdcopy: \
         256 KiB requests). Spread is (max − min) / median of MiB/s over the repeats.\n"
    );
}

fn table(s: &mut String, r: &TableResult, raw: Option<&Summary>) {
    let t = &r.table;
    let sums = summaries(r);
    let pairs = pairs(r);
    let _ = writeln!(s, "## {}\n\n{}\n", t.title, t.note);
    // Ratios first: the figures the targets are stated in.
    let mut head = String::from("| job |");
    let mut rule = String::from("|---|");
    for &(a, b) in &pairs {
        let (na, nb) = (&t.servers[a].name, &t.servers[b].name);
        let _ = write!(head, " {na} / {nb} | CPU/req {na} / {nb} |");
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for (j, job) in t.jobs.iter().enumerate() {
        let mut row = format!("| {} |", job.label);
        for &(a, b) in &pairs {
            let (x, y) = (&sums[j][a], &sums[j][b]);
            let _ = write!(
                row,
                " **{}** | {} |",
                fmt_ratio(ratio(x.mib_s, y.mib_s)),
                fmt_ratio(ratio(x.cpu_us_per_req, y.cpu_us_per_req))
            );
        }
        let _ = writeln!(s, "{row}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| job | server | IOPS | MiB/s | CPU µs/req | CPU s/GiB | spread | % of raw socket |\n\
         |---|---|---:|---:|---:|---:|---:|---:|"
    );
    for (j, job) in t.jobs.iter().enumerate() {
        for (i, spec) in t.servers.iter().enumerate() {
            let x = &sums[j][i];
            if x.n == 0 {
                let _ = writeln!(s, "| {} | {} | failed | | | | | |", job.label, spec.name);
                continue;
            }
            let raw_pct = match raw {
                // Over TLS the reference (plain bytes) is no bound.
                Some(raw) if job.vs_raw() && t.tls_home.is_none() => {
                    format!("{:.0} %", x.mib_s / raw.mib_s * 100.0)
                }
                _ => String::new(),
            };
            let spread = if x.n > 1 {
                format!("{:.0} %", x.spread_pct)
            } else {
                "–".into()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.1} | {:.2} | {:.3} | {spread} | {raw_pct} |",
                job.label, spec.name, x.iops, x.mib_s, x.cpu_us_per_req, x.cpu_s_per_gib,
            );
        }
    }
    let _ = writeln!(s);
    let cmds: Vec<String> = t
        .servers
        .iter()
        .map(|sp| format!("`{}`", display_argv(&sp.argv)))
        .collect();
    let _ = writeln!(s, "Servers: {}.\n", cmds.join(", "));
    if !r.errors.is_empty() {
        let _ = writeln!(s, "Failed runs (left out of the medians):\n");
        for e in &r.errors {
            let first = e.lines().next().unwrap_or("");
            let _ = writeln!(s, "- {first}");
        }
        let _ = writeln!(s);
    }
}

/// A command line without this run's temporary paths: `/tmp/x/pki` is
/// shown as `pki`, `--opt=/a/b` as `--opt=b`.
fn display_argv(argv: &[String]) -> String {
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_owned();
    argv.iter()
        .map(|a| match a.split_once("=/") {
            Some((k, v)) => format!("{k}={}", base(v)),
            None if a.starts_with('/') => base(a),
            None => a.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A sample's one-line log form.
pub fn brief(s: &Sample) -> String {
    format!(
        "{:.0} IOPS, {:.1} MiB/s, {:.2} CPU µs/req",
        s.iops(),
        s.mib_s(),
        s.cpu_us_per_req()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_without_temporary_paths() {
        let argv: Vec<String> = [
            "/w/target/release/nbdd",
            "-U",
            "{sock}",
            "--tls-certificates=/tmp/b-1/pki",
            "file",
            "/dev/shm/img.raw",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(
            display_argv(&argv),
            "nbdd -U {sock} --tls-certificates=pki file img.raw"
        );
    }

    #[test]
    fn ratios_need_both_sides() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 2.0), None);
    }
}
