//! `cargo xtask fuzz [TARGET] [--secs N]`: runs cargo-fuzz (libFuzzer,
//! nightly) on each target declared in `fuzz/Cargo.toml`, or just TARGET.

use crate::util::{cargo, on_path, root, sh, succeeds};
use std::process::Command;

/// Options of `cargo xtask fuzz`.
#[derive(Debug)]
pub struct Options {
    /// A single target; all targets when `None`.
    pub target: Option<String>,
    /// libFuzzer `-max_total_time` per target.
    pub secs: u64,
}

/// Parses `fuzz` arguments.
///
/// # Errors
/// On an unknown flag or a bad number.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        target: None,
        secs: 60,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => {
                let n = it.next().ok_or("--secs needs a number")?;
                o.secs = n.parse().map_err(|_| format!("--secs: bad number {n:?}"))?;
            }
            s if s.starts_with('-') => return Err(format!("unknown `fuzz` option {s:?}")),
            s if o.target.is_none() => o.target = Some(s.to_owned()),
            s => return Err(format!("only one fuzz target may be given (extra {s:?})")),
        }
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
    for t in &chosen {
        eprintln!("== fuzz {t} for {} s", o.secs);
        // `+nightly` is understood by the rustup proxy on PATH, not by the
        // toolchain's own cargo that `$CARGO` points at.
        let mut proxy = Command::new("cargo");
        proxy.current_dir(root()).env_remove("RUSTUP_TOOLCHAIN");
        // New inputs go to corpus/<t> (ignored by git); the committed
        // spec-vector seeds are read but never written to.
        let corpus = format!("corpus/{t}");
        std::fs::create_dir_all(root().join("fuzz").join(&corpus))
            .map_err(|e| format!("{corpus}: {e}"))?;
        let seeds = format!("seeds/{t}");
        let mut args = vec!["+nightly", "fuzz", "run", t.as_str(), corpus.as_str()];
        if root().join("fuzz").join(&seeds).is_dir() {
            args.push(seeds.as_str());
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
