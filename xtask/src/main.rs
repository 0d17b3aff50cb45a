//! `cargo xtask`: developer tasks for nbdd, std-only so it builds in
//! seconds on a fresh machine.
//!
//! - `cargo xtask test [--quick] [--no-install] [--against-nbdkit]`: the one
//!   command that checks (and, as root, installs) the interop tools, then
//!   runs fmt, clippy and every test including the end-to-end suite.
//! - `cargo xtask ci`: what `.ci/run` calls; `test` with installing allowed.
//! - `cargo xtask fuzz [TARGET] [--secs N]`: cargo-fuzz on nightly;
//!   `--campaign MINUTES [--until-execs N]`: a recorded, resumable campaign.
//! - `cargo xtask bench [...]`: issue 14's benchmark (fio and nbdcopy,
//!   nbdd vs nbdkit and qemu-nbd); writes BENCHMARKS.md and docs/bench.svg.
//! - `cargo xtask bench --rbd` (alone): nbdd rbd vs librbd on a throwaway
//!   cluster; writes the RBD section of BENCHMARKS.md.
//! - `cargo xtask ceph CMD...`: CMD with a throwaway Ceph cluster up.
//! - `cargo xtask man [--install]`: regenerate docs/nbdd.1 from the option
//!   table (via tests/cli_man.rs), optionally install it.

mod bench;
mod bench_rbd;
mod ceph;
mod fuzz;
mod man;
mod prereq;
mod test;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  test [--quick] [--no-install] [--against-nbdkit]
        check/install interop tools, then fmt --check, clippy -D warnings,
        cargo test --workspace (unit, property and end-to-end tests), then
        the rbd tests (--features rbd) against a throwaway Ceph cluster.
        --quick           skip fmt and clippy
        --no-install      never run apt-get; print the install line instead
        --against-nbdkit  run the e2e suite against nbdkit (validates the tests)
  ci    same as `test`, installing missing packages when root
  fuzz [TARGET] [--secs N]
        run each fuzz target (or TARGET) for N seconds (default 60) on nightly
  fuzz [TARGET] --campaign MINUTES [--until-execs N]
        every target (or TARGET) for MINUTES each, resuming from its corpus;
        totals in fuzz/campaign.tsv, table in docs/FUZZING.md; targets that
        already have N executions are skipped
{BENCH}
  bench --rbd
        alone: nbdd rbd vs librbd (rbd bench, fio's rbd engine) on a throwaway
        Ceph cluster; table in the RBD section of BENCHMARKS.md
  ceph CMD [ARGS...]
        run CMD with a throwaway Ceph cluster up (NBDD_TEST_CEPH_CONF set),
        e.g. cargo xtask ceph cargo test -p nbd-mio-driver --features rbd --test e2e_rbd
  man [--install]
        regenerate docs/nbdd.1 from nbdd's option table; --install copies it
        to /usr/local/share/man/man1";

/// The usage text, with the bench section from [`bench::USAGE`].
fn usage() -> String {
    USAGE.replace("{BENCH}", bench::USAGE)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "test" => test::parse(rest).and_then(|o| test::run(&o)),
        "ci" => test::run(&test::Options {
            install: true,
            ..test::Options::default()
        }),
        "fuzz" => fuzz::parse(rest).and_then(|o| fuzz::run(&o)),
        "bench" if rest == ["--rbd"] => bench_rbd::run(),
        "bench" => bench::main(rest),
        "ceph" => ceph::run_with(rest),
        "man" => man::run(rest),
        "help" | "-h" | "--help" => {
            println!("{}", usage());
            Ok(())
        }
        _ => Err(format!(
            "unknown command or options: {args:?}\n\n{}",
            usage()
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
