//! `cargo xtask bench`: issue 14's benchmark. fio (`--ioengine=nbd`) and
//! nbdcopy against nbdd and nbdkit side by side (memory backend), nbdd,
//! nbdkit and qemu-nbd serving a file on tmpfs, and nbdd vs nbdkit over
//! X.509 TLS; a raw Unix-socket reference in the same run; medians of
//! round-robin repeats, server CPU from /proc. Writes BENCHMARKS.md and an
//! SVG chart of the ratios. `--codec` adds the criterion codec benches.
//!
//! The pieces: [`opts`] (flags), [`plan`] (jobs, servers, tables),
//! [`runner`] (one table's round robin), [`fio`], [`copy`], [`rawsock`]
//! (the clients), [`server`] and [`procfs`] (processes, CPU), [`report`]
//! and [`chart`] (output), [`pki`] (TLS fixtures), [`rbd`] (extension
//! point).

mod chart;
mod copy;
mod env;
pub mod fio;
mod opts;
mod pki;
mod plan;
mod procfs;
mod rawsock;
mod rbd;
mod report;
mod runner;
mod server;
mod stats;
mod targets;

use crate::util::{cargo, on_path, root, sh, target_dir};
use opts::{Options, Section};
use plan::{Paths, Table};
use std::path::{Path, PathBuf};

pub const USAGE: &str = "\
  bench [--quick] [--dry-run] [--repeats N] [--secs N] [--nbdd-args 'FLAGS']
        [--variant 'NAME=FLAGS']... [--nbdd PATH] [--only memory,file,tls,scaling]
        [--out DIR] [--codec] [--rbd]
        issue 14's benchmark: fio (ioengine=nbd) and nbdcopy against nbdd
        and nbdkit (memory), nbdd/nbdkit/qemu-nbd (file on tmpfs), nbdd
        vs nbdkit over X.509 TLS, and a raw Unix-socket reference; 3
        repeats x 4 s round robin, medians, server CPU from /proc.
        A full run writes BENCHMARKS.md and docs/bench.svg; --quick (one
        1 s repeat), --only or fewer repeats write to target/bench/.
        --variant: one more nbdd server with these flags (repeatable,
        replaces the default `nbdd`); --nbdd-args: flags for every nbdd;
        --codec: also the criterion codec benches; --dry-run: print the plan
  bench tls [--runs N] [--nbdd PATH]
        the same as --only tls --repeats N";

/// Entry point for `cargo xtask bench ...`.
///
/// # Errors
/// A bad option, a missing tool, a failed build, or a server that does
/// not start; failed single runs are listed in the report instead.
pub fn main(args: &[String]) -> Result<(), String> {
    if args.first().map(String::as_str) == Some(rawsock::WRITER_ARG) {
        return rawsock::writer_main(args.get(1).ok_or("raw writer: no socket")?);
    }
    let o = opts::parse(args)?;
    let nbdd = o
        .nbdd
        .clone()
        .unwrap_or_else(|| target_dir().join("release/nbdd"));
    let dir = std::env::temp_dir().join(format!("nbdd-bench-{}", std::process::id()));
    let paths = Paths::new(&dir);
    let mut tables = tables(&o, &nbdd, &paths);
    let mut keep = Vec::new();
    if o.rbd {
        let p = rbd::prepare(plan::JOBS, &nbdd, &o.variants, &paths)?;
        tables.push(p.table);
        keep.push(p.keep);
    }
    if o.dry_run {
        print_plan(&o, &tables, &paths);
        return Ok(());
    }
    check_tools(&o)?;
    if o.codec {
        sh(cargo().args(["bench", "-p", "nbd-proto"]))?;
    }
    if o.nbdd.is_none() {
        sh(cargo().args([
            "build",
            "--release",
            "-p",
            "nbd-mio-driver",
            "--bin",
            "nbdd",
        ]))?;
    }
    remove_stale_runs();
    for d in [&dir, &paths.shm] {
        std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    let result = measure(&o, &nbdd, &paths, &tables);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&paths.shm);
    drop(keep);
    result
}

/// A run killed before its cleanup (Ctrl-C) leaves gigabytes on /dev/shm:
/// remove the directories of bench processes that no longer exist.
fn remove_stale_runs() {
    for base in [Path::new("/dev/shm").to_path_buf(), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("nbdd-bench-")
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                eprintln!(
                    "bench: removing {} (left by an interrupted run)",
                    e.path().display()
                );
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn tables(o: &Options, nbdd: &Path, paths: &Paths) -> Vec<Table> {
    let mut t = Vec::new();
    for s in &o.sections {
        t.push(match s {
            Section::Memory => plan::memory_table(nbdd, &o.variants),
            Section::File => plan::file_table(nbdd, &o.variants, paths),
            Section::Tls => plan::tls_table(nbdd, &o.variants, paths),
            Section::Scaling => plan::scaling_table(nbdd, &o.common),
        });
    }
    t
}

fn check_tools(o: &Options) -> Result<(), String> {
    let mut need = vec![
        ("fio", "fio"),
        ("nbdkit", "nbdkit"),
        ("nbdcopy", "libnbd-bin"),
    ];
    if o.has(Section::File) {
        need.push(("qemu-nbd", "qemu-utils"));
    }
    if o.has(Section::Tls) {
        need.push(("certtool", "gnutls-bin"));
    }
    for (tool, pkg) in need {
        if !on_path(tool) {
            return Err(format!(
                "`{tool}` is needed for the benchmark; install it with:\n  apt-get install -y {pkg}"
            ));
        }
    }
    Ok(())
}

/// Fixtures, every table, then the report and chart.
fn measure(o: &Options, nbdd: &Path, paths: &Paths, tables: &[Table]) -> Result<(), String> {
    let mut env = env::Env::capture(nbdd);
    eprintln!("bench: load average at start: {}", env.load_start);
    eprintln!(
        "bench: writing 1 GiB of random data to {}",
        paths.source.display()
    );
    copy::make_source(&paths.source)?;
    if o.has(Section::Tls) {
        pki::make(paths)?;
    }
    let mut results = Vec::new();
    for t in tables {
        results.push(runner::run(t, paths, o.repeats, o.secs)?);
    }
    env.finish();
    eprintln!("bench: load average at end: {}", env.load_end);
    write_outputs(o, &results, &env)
}

/// BENCHMARKS.md and bench.svg: in the repository for a full run (or
/// `--out`), else under target/bench/ so a smoke test never replaces the
/// committed figures.
fn write_outputs(
    o: &Options,
    results: &[runner::TableResult],
    env: &env::Env,
) -> Result<(), String> {
    let (md, svg, rel): (PathBuf, PathBuf, &str) = match (&o.out, o.is_full()) {
        (Some(d), _) => (d.join("BENCHMARKS.md"), d.join("bench.svg"), "bench.svg"),
        (None, true) => (
            root().join("BENCHMARKS.md"),
            root().join("docs/bench.svg"),
            "docs/bench.svg",
        ),
        (None, false) => {
            let d = target_dir().join("bench");
            (d.join("BENCHMARKS.md"), d.join("bench.svg"), "bench.svg")
        }
    };
    let panels: Vec<chart::Panel> = results.iter().map(panel).collect();
    let svg_text = chart::render(&panels)?;
    let argv: String = o.argv.iter().map(|a| format!(" {a}")).collect();
    let text = report::render(results, env, &argv, o.repeats, o.secs, Some(rel));
    // [rbd hook] The RBD section (`cargo xtask bench --rbd`) outlives this.
    let md_text = crate::bench_rbd::keep_section(&md, &text);
    for (path, body) in [(&md, md_text.as_str()), (&svg, svg_text.as_str())] {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        std::fs::write(path, body).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    println!("{text}");
    eprintln!("bench: wrote {} and {}", md.display(), svg.display());
    Ok(())
}

/// One chart panel per table: each nbdd variant's throughput over each
/// reference's.
fn panel(r: &runner::TableResult) -> chart::Panel {
    let sums = report::summaries(r);
    let names = |(a, b): (usize, usize)| {
        format!("{} / {}", r.table.servers[a].name, r.table.servers[b].name)
    };
    chart::Panel {
        title: r.table.title.clone(),
        jobs: r.table.jobs.iter().map(|j| j.short).collect(),
        series: report::pairs(r)
            .into_iter()
            .map(|(a, b)| {
                let v = sums
                    .iter()
                    .map(|row| report::ratio(row[a].mib_s, row[b].mib_s))
                    .collect();
                (names((a, b)), v)
            })
            .collect(),
    }
}

fn print_plan(o: &Options, tables: &[Table], paths: &Paths) {
    let mut total = 0;
    println!(
        "bench plan: {} repeat(s), {} s per fio job, round robin repeat → job → server; source {}",
        o.repeats,
        o.secs,
        paths.source.display()
    );
    for t in tables {
        let secs = runner::estimate_secs(t, o.secs) * o.repeats as u64;
        total += secs;
        println!("\n{} (~{secs} s)", t.title);
        for s in &t.servers {
            println!(
                "  server {:<14} {}",
                s.name,
                s.command(&paths.dir.join(format!("{}.sock", s.name)))
                    .join(" ")
            );
        }
        for j in &t.jobs {
            println!("  job    {:<14} {}", j.key, j.label);
        }
        if t.raw_reference {
            println!("  + raw Unix-socket reference, {} s per repeat", o.secs);
        }
    }
    let out = if o.is_full() {
        "BENCHMARKS.md, docs/bench.svg"
    } else {
        "target/bench/"
    };
    println!(
        "\nabout {} min of measuring; writes {out}",
        total.div_ceil(60)
    );
}
