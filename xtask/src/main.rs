//! `cargo xtask`: developer tasks for nbdd, std-only so it builds in
//! seconds on a fresh machine.
//!
//! - `cargo xtask test [--quick] [--no-install] [--against-nbdkit]`: the one
//!   command that checks (and, as root, installs) the interop tools, then
//!   runs fmt, clippy and every test including the end-to-end suite.
//! - `cargo xtask ci`: what `.ci/run` calls; `test` with installing allowed.
//! - `cargo xtask fuzz [TARGET] [--secs N]`: cargo-fuzz on nightly.
//! - `cargo xtask bench`: criterion benches, then fio nbdd-vs-nbdkit.
//! - `cargo xtask man [--install]`: regenerate docs/nbdd.1 from the option
//!   table (via tests/cli_man.rs), optionally install it.

mod bench;
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
        cargo test --workspace (unit, property and end-to-end tests).
        --quick           skip fmt and clippy
        --no-install      never run apt-get; print the install line instead
        --against-nbdkit  run the e2e suite against nbdkit (validates the tests)
  ci    same as `test`, installing missing packages when root
  fuzz [TARGET] [--secs N]
        run each fuzz target (or TARGET) for N seconds (default 60) on nightly
  bench run nbd-proto criterion benches, then fio nbdd vs nbdkit;
        report in target/bench-report.md
  man [--install]
        regenerate docs/nbdd.1 from nbdd's option table; --install copies it
        to /usr/local/share/man/man1";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "test" => test::parse(rest).and_then(|o| test::run(&o)),
        "ci" => test::run(&test::Options {
            install: true,
            ..test::Options::default()
        }),
        "fuzz" => fuzz::parse(rest).and_then(|o| fuzz::run(&o)),
        "bench" if rest.is_empty() => bench::run(),
        "man" => man::run(rest),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown command or options: {args:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
