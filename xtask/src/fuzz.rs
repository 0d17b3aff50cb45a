//! `cargo xtask fuzz [TARGET] [--secs N]`: runs cargo-fuzz (libFuzzer,
//! nightly) on each target declared in `fuzz/Cargo.toml`, or just TARGET;
//! `--campaign MINUTES [--until-execs N]` runs them all in turn and records
//! the figures (see [`campaign`]).
//!
//! Targets are built without a sanitizer: every crate they reach is safe
//! Rust (unsafe is forbidden or denied), and the C libraries below
//! (OpenSSL, aws-lc) are not instrumented by cargo-fuzz either, so
//! AddressSanitizer would add no detection, only cost: measured on
//! tls_records, 150 exec/s with it, 810 without, and 400 MB of RSS
//! instead of 42. Panics, debug assertions and the harnesses' own checks
//! are what find bugs here; debug assertions stay on.

mod campaign;
mod stats;

use crate::util::{cargo, on_path, root, sh, succeeds};
use std::process::Command;

/// cargo-fuzz's sanitizer option for every build and run.
const SANITIZER: &str = "--sanitizer=none";

/// `cargo` through the rustup proxy on PATH, which understands
/// `+nightly` (the toolchain cargo that `$CARGO` points at does not).
fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.env_remove("RUSTUP_TOOLCHAIN");
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        c.env("GLIBC_TUNABLES", MALLOC_TUNABLES);
    }
    c
}

/// glibc malloc keeps freed memory instead of returning it: each run
/// allocates and frees megabytes (connection buffers, a memory export),
/// and with glibc's defaults every one was a fresh mmap, page-faulted
/// and zeroed by the kernel. Measured on the `server` target (20 s from
/// its corpus): half its time in page faults, 1493 exec/s before, 3633
/// after. Heap bounds are checked inside the harnesses, so nothing they
/// assert changes.
const MALLOC_TUNABLES: &str = "glibc.malloc.mmap_threshold=33554432:\
    glibc.malloc.trim_threshold=1073741824:glibc.malloc.top_pad=67108864";

/// Options of `cargo xtask fuzz`.
#[derive(Debug)]
pub struct Options {
    /// A single target; all targets when `None`.
    pub target: Option<String>,
    /// libFuzzer `-max_total_time` per target.
    pub secs: u64,
    /// `--campaign MINUTES`: every target, recorded in docs/FUZZING.md.
    pub campaign: Option<u64>,
    /// `--until-execs N`: campaign targets already at N are skipped.
    pub until_execs: Option<u64>,
}

/// Parses `fuzz` arguments.
///
/// # Errors
/// On an unknown flag or a bad number.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        target: None,
        secs: 60,
        campaign: None,
        until_execs: None,
    };
    let number = |flag: &str, v: Option<&String>| {
        let v = v.ok_or(format!("{flag} needs a number"))?;
        v.parse::<u64>()
            .map_err(|_| format!("{flag}: bad number {v:?}"))
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => o.secs = number(a, it.next())?,
            // libFuzzer reads -max_total_time=0 as "forever".
            "--campaign" => match number(a, it.next())? {
                0 => return Err("--campaign needs at least 1 minute".into()),
                n => o.campaign = Some(n),
            },
            "--until-execs" => o.until_execs = Some(number(a, it.next())?),
            s if s.starts_with('-') => return Err(format!("unknown `fuzz` option {s:?}")),
            s if o.target.is_none() => o.target = Some(s.to_owned()),
            s => return Err(format!("only one fuzz target may be given (extra {s:?})")),
        }
    }
    if o.until_execs.is_some() && o.campaign.is_none() {
        return Err("--until-execs needs --campaign MINUTES".into());
    }
    Ok(o)
}

/// The `[[bin]] name = "..."` entries of fuzz/Cargo.toml (a line-based
/// read is enough for the file cargo-fuzz generates).
fn targets(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin
            && line.starts_with("name")
            && let Some(v) = line.split('=').nth(1)
        {
            out.push(v.trim().trim_matches('"').to_owned());
        }
    }
    out
}

/// Installs what is missing, then fuzzes.
///
/// # Errors
/// If there is no fuzz crate, the target is unknown, or a run fails
/// (a crash leaves its input under fuzz/artifacts/).
pub fn run(o: &Options) -> Result<(), String> {
    let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml"))
        .map_err(|e| format!("no fuzz crate (fuzz/Cargo.toml: {e})"))?;
    let all = targets(&manifest);
    let chosen: Vec<String> = match &o.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => return Err(format!("unknown fuzz target {t:?}; targets: {all:?}")),
        None if all.is_empty() => return Err("fuzz/Cargo.toml declares no [[bin]] targets".into()),
        None => all,
    };
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        if !on_path("rustup") {
            return Err("fuzzing needs a nightly toolchain and rustup to get it".into());
        }
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if !succeeds(cargo().args(["fuzz", "--version"])) {
        sh(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    if let Some(minutes) = o.campaign {
        return campaign::run(&chosen, minutes, o.until_execs);
    }
    for t in &chosen {
        eprintln!("== fuzz {t} for {} s", o.secs);
        let mut proxy = nightly_cargo();
        // New inputs go to corpus/<t> (ignored by git); the committed
        // spec-vector seeds are read but never written to.
        let corpus = format!("corpus/{t}");
        std::fs::create_dir_all(root().join("fuzz").join(&corpus))
            .map_err(|e| format!("{corpus}: {e}"))?;
        let seeds = format!("seeds/{t}");
        let mut args = vec![
            "+nightly",
            "fuzz",
            "run",
            SANITIZER,
            t.as_str(),
            corpus.as_str(),
        ];
        let regressions = format!("regressions/{t}");
        for dir in [&seeds, &regressions] {
            if root().join("fuzz").join(dir).is_dir() {
                args.push(dir.as_str());
            }
        }
        let max_time = format!("-max_total_time={}", o.secs);
        args.extend(["--", max_time.as_str()]);
        sh(proxy.current_dir(root().join("fuzz")).args(&args))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_bin_names_only() {
        let toml = "[package]\nname = \"nbd-fuzz\"\n\n[[bin]]\nname = \"request_header\"\npath = \"x.rs\"\n\n[[bin]]\nname = \"option_payload\"\n[dependencies]\nname = \"no\"\n";
        assert_eq!(super::targets(toml), ["request_header", "option_payload"]);
    }
}
