//! `cargo xtask test` / `ci`: prerequisites, then fmt, clippy and the
//! whole test suite, with a summary. Later steps still run after an
//! earlier one fails, so one CI run reports every problem.

use crate::prereq;
use crate::util::{cargo, root, sh};
use std::time::Instant;

/// Options of `cargo xtask test`.
#[derive(Debug)]
pub struct Options {
    /// Skip `cargo fmt --check` and clippy.
    pub quick: bool,
    /// Allow `apt-get install` of missing tools (when root).
    pub install: bool,
    /// Run the e2e suite against nbdkit instead of nbdd.
    pub against_nbdkit: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            quick: false,
            install: true,
            against_nbdkit: false,
        }
    }
}

/// Parses `test` flags.
///
/// # Errors
/// On an unknown flag.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    for a in args {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--no-install" => o.install = false,
            "--against-nbdkit" => o.against_nbdkit = true,
            _ => return Err(format!("unknown `test` option {a:?}")),
        }
    }
    Ok(o)
}

/// Runs the whole check.
///
/// # Errors
/// If any step failed (after running the others), listing them.
pub fn run(o: &Options) -> Result<(), String> {
    let started = Instant::now();
    prereq::ensure(o.install)?;
    if !o.quick {
        prereq::ensure_components(o.install)?;
    }

    let mut results: Vec<(&str, Result<(), String>, f64)> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<(), String>| {
        eprintln!("== {name}");
        let t = Instant::now();
        let r = f();
        results.push((name, r, t.elapsed().as_secs_f64()));
    };
    if !o.quick {
        step("cargo fmt --check", &mut || {
            sh(cargo().args(["fmt", "--all", "--", "--check"]))
        });
        step("cargo clippy -D warnings", &mut || {
            sh(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        });
    }
    step("cargo test --workspace", &mut || {
        let mut c = cargo();
        c.args(["test", "--workspace"]);
        if o.against_nbdkit {
            c.env("NBDD_TEST_SERVER", "nbdkit");
        }
        sh(&mut c)
    });
    if o.against_nbdkit {
        eprintln!("== rbd tests skipped: nbdkit has no rbd plugin");
    } else {
        // Needs librbd, so not part of the default workspace build; clippy
        // sees that code only with the feature on.
        if !o.quick {
            step("cargo clippy --features rbd", &mut || {
                sh(cargo().args([
                    "clippy",
                    "-p",
                    "nbd-backends",
                    "-p",
                    "nbd-mio-driver",
                    "--features",
                    "rbd",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))
            });
        }
        step(
            "rbd tests (throwaway Ceph cluster)",
            &mut crate::ceph::test_step,
        );
    }
    if root().join("fuzz/Cargo.toml").is_file() {
        // The committed seeds are replayed on stable by ordinary tests
        // (nbd-proto, nbd-backends and nbd-mio-driver `fuzz_replay`, part of
        // `cargo test --workspace`). A short libFuzzer
        // run per target on top catches what the seeds do not reach; long
        // campaigns are `cargo xtask fuzz --campaign MINUTES` by hand.
        step("fuzz smoke (10 s per target)", &mut || {
            crate::fuzz::run(&crate::fuzz::Options {
                target: None,
                secs: 10,
                campaign: None,
                until_execs: None,
            })
        });
    }

    eprintln!("\n== summary ({:.0} s)", started.elapsed().as_secs_f64());
    let mut failed = Vec::new();
    for (name, r, secs) in &results {
        let verdict = if r.is_ok() { "ok  " } else { "FAIL" };
        eprintln!("  {verdict}  {name:<28} {secs:>7.1} s");
        if let Err(e) = r {
            failed.push(format!("{name}: {e}"));
        }
    }
    if o.against_nbdkit {
        eprintln!("  (e2e tests ran against nbdkit, not nbdd)");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} step(s) failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        ))
    }
}
