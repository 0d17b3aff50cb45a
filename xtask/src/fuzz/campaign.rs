//! `cargo xtask fuzz --campaign MINUTES [--until-execs N]`: every target in
//! turn for MINUTES each, resuming from the corpora of earlier runs
//! (`fuzz/corpus/<target>`, kept between runs). Totals per target
//! accumulate in `fuzz/campaign.tsv` (committed); `docs/FUZZING.md` gets a
//! regenerated table. With `--until-execs N`, targets whose total already
//! reaches N are skipped, so the same command can be rerun until a long
//! campaign is complete. A crash is minimised and copied to
//! `fuzz/regressions/<target>/`, where the stable replay tests pick it up;
//! the campaign goes on with the next target and fails at the end.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use super::stats::{RunStats, scan_line};
use crate::util::{root, sh, show};

/// One target's accumulated figures.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Total {
    pub target: String,
    pub execs: u64,
    pub secs: u64,
    pub crashes: u64,
    /// The latest run's figures and length.
    pub last: RunStats,
    pub last_secs: u64,
    pub corpus_bytes: u64,
}

/// Runs the campaign over `targets`.
///
/// # Errors
/// If a run cannot start, the state cannot be written, or a crash was found.
pub fn run(targets: &[String], minutes: u64, until: Option<u64>) -> Result<(), String> {
    let fuzz = root().join("fuzz");
    let state = fuzz.join("campaign.tsv");
    let mut totals = read_state(&std::fs::read_to_string(&state).unwrap_or_default());
    let mut crashed = Vec::new();
    for t in targets {
        let i = slot(&mut totals, t);
        if until.is_some_and(|n| totals[i].execs >= n) {
            eprintln!("== {t}: {} executions already, skipped", totals[i].execs);
            continue;
        }
        eprintln!("== campaign: {t} for {minutes} min");
        let mut left = minutes * 60;
        loop {
            let (s, secs) = run_one(&fuzz, t, left)?;
            let artifact = s.crash.clone();
            let found = artifact.as_ref().is_some_and(|a| reproduces(&fuzz, t, a));
            totals = record(&state, t, s, secs, found)?;
            update_doc(&totals, until)?;
            let Some(artifact) = artifact else { break };
            if found {
                crashed.push(keep_regression(&fuzz, t, &artifact));
                break;
            }
            // A timeout the input does not repeat comes from the machine
            // (load, a stopped process), not the code: not a finding, and
            // the run goes on for the time it had left.
            eprintln!("== {t}: {artifact} does not fail again; not counted, fuzzing on");
            left = left.saturating_sub(secs);
            if left < 60 {
                break;
            }
        }
    }
    if crashed.is_empty() {
        Ok(())
    } else {
        Err(format!("crashes found, kept as regressions: {crashed:?}"))
    }
}

/// Adds one run (and its crash, if `found`) to `t`'s line of the state
/// file and writes it; returns all lines. Read again first: a campaign of another target may have run
/// beside this one (one per core) and recorded its own line meanwhile.
fn record(
    state: &Path,
    t: &str,
    s: RunStats,
    secs: u64,
    found: bool,
) -> Result<Vec<Total>, String> {
    let mut totals = read_state(&std::fs::read_to_string(state).unwrap_or_default());
    let i = slot(&mut totals, t);
    let total = &mut totals[i];
    total.execs += s.execs;
    total.secs += secs;
    total.last_secs = secs;
    total.crashes += u64::from(found);
    let fuzz = state.parent().unwrap_or(state);
    total.corpus_bytes = dir_bytes(&fuzz.join("corpus").join(t));
    total.last = s;
    // Written after every run, so an interrupted campaign keeps what it
    // measured.
    std::fs::write(state, write_state(&totals)).map_err(|e| format!("{}: {e}", state.display()))?;
    Ok(totals)
}

/// Whether `artifact` makes the target fail again when run alone, with the
/// campaign's timeout.
fn reproduces(fuzz: &Path, t: &str, artifact: &str) -> bool {
    let mut cmd = super::nightly_cargo();
    cmd.current_dir(fuzz)
        .args(["+nightly", "fuzz", "run", super::SANITIZER, t])
        .arg(fuzz.join(artifact))
        .args(["--", "-timeout=20", "-runs=1"]);
    eprintln!("+ {}", show(&cmd));
    !matches!(
        cmd.stdin(Stdio::null()).stderr(Stdio::null()).status(),
        Ok(st) if st.success()
    )
}

/// The index of `t`'s line in `totals`, added if it has none yet.
fn slot(totals: &mut Vec<Total>, t: &str) -> usize {
    match totals.iter().position(|x| x.target == t) {
        Some(i) => i,
        None => {
            totals.push(Total {
                target: t.to_owned(),
                ..Total::default()
            });
            totals.len() - 1
        }
    }
}

/// One libFuzzer run of `secs`, its status lines echoed; returns what it
/// reported and how long it really fuzzed (less than `secs` after a crash).
/// The target is built first so that compiling is not counted.
fn run_one(fuzz: &Path, t: &str, secs: u64) -> Result<(RunStats, u64), String> {
    let mut build = super::nightly_cargo();
    build
        .current_dir(fuzz)
        .args(["+nightly", "fuzz", "build", super::SANITIZER, t]);
    sh(&mut build)?;
    let mut args = vec![
        "+nightly".to_owned(),
        "fuzz".into(),
        "run".into(),
        super::SANITIZER.into(),
        t.into(),
    ];
    std::fs::create_dir_all(fuzz.join("corpus").join(t)).map_err(|e| format!("corpus/{t}: {e}"))?;
    args.push(format!("corpus/{t}"));
    for dir in ["seeds", "regressions"] {
        if fuzz.join(dir).join(t).is_dir() {
            args.push(format!("{dir}/{t}"));
        }
    }
    args.extend([
        "--".into(),
        format!("-max_total_time={secs}"),
        // A slow input is a finding too (seconds per input is a hang).
        "-timeout=20".into(),
        "-print_final_stats=1".into(),
    ]);
    let mut cmd = super::nightly_cargo();
    cmd.current_dir(fuzz).args(&args);
    eprintln!("+ {}", show(&cmd));
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", show(&cmd)))?;
    let started = Instant::now();
    let mut s = RunStats::default();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("pulse") || line.contains("DONE") || line.starts_with("stat::") {
                eprintln!("{line}");
            }
            scan_line(&mut s, &line);
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() && s.crash.is_none() {
        return Err(format!("{t}: cargo fuzz failed ({status})"));
    }
    Ok((s, started.elapsed().as_secs()))
}

/// Minimise `artifact` and copy it to regressions/<t>/; returns its path.
fn keep_regression(fuzz: &Path, t: &str, artifact: &str) -> String {
    let artifact = fuzz.join(artifact);
    let name = artifact
        .file_name()
        .map_or_else(|| "crash".to_owned(), |n| n.to_string_lossy().into_owned());
    let mut tmin = super::nightly_cargo();
    tmin.current_dir(fuzz)
        .args(["+nightly", "fuzz", "tmin", super::SANITIZER, t])
        .arg(&artifact)
        .args(["-r", "2000"]);
    eprintln!("+ {}", show(&tmin));
    let out = tmin.stdin(Stdio::null()).stderr(Stdio::null()).output();
    // tmin writes a file per step; the last one it names is the smallest.
    let source = out
        .ok()
        .and_then(|o| minimized_path(&String::from_utf8_lossy(&o.stdout)).map(|p| fuzz.join(p)))
        .filter(|p| p.is_file())
        .unwrap_or(artifact);
    let dest = fuzz.join("regressions").join(t).join(&name);
    let _ = std::fs::create_dir_all(dest.parent().unwrap_or(fuzz));
    match std::fs::copy(&source, &dest) {
        Ok(_) => dest.display().to_string(),
        Err(e) => format!("{} (copy failed: {e})", source.display()),
    }
}

/// The input `cargo fuzz tmin` ended with: the path in its closing
/// "Reproduce with: cargo fuzz run ... PATH" line.
fn minimized_path(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .rev()
        .find(|l| l.contains("minimized-from-"))?
        .split_whitespace()
        .last()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

const HEADER: &str = "# target\texecutions\tseconds\tcrashes\texec_per_sec\tcov\tft\tcorpus_units\tcorpus_bytes\tlast_seconds";

/// `fuzz/campaign.tsv` → totals (unknown or short lines are skipped).
pub fn read_state(text: &str) -> Vec<Total> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let n = |i: usize| f.get(i)?.parse::<u64>().ok();
            Some(Total {
                target: (*f.first()?).to_owned(),
                execs: n(1)?,
                secs: n(2)?,
                crashes: n(3)?,
                last: RunStats {
                    exec_per_sec: n(4)?,
                    cov: n(5)?,
                    ft: n(6)?,
                    corpus_units: n(7)?,
                    ..RunStats::default()
                },
                corpus_bytes: n(8)?,
                last_secs: n(9).unwrap_or(0),
            })
        })
        .collect()
}

pub fn write_state(totals: &[Total]) -> String {
    let mut s = format!("{HEADER}\n");
    for t in totals {
        let _ = writeln!(
            s,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            t.target,
            t.execs,
            t.secs,
            t.crashes,
            t.last.exec_per_sec,
            t.last.cov,
            t.last.ft,
            t.last.corpus_units,
            t.corpus_bytes,
            t.last_secs
        );
    }
    s
}

const BEGIN: &str =
    "<!-- campaign table: generated by `cargo xtask fuzz --campaign`; do not edit -->";
const END: &str = "<!-- end of campaign table -->";

/// The generated part of docs/FUZZING.md.
pub fn table(totals: &[Total], until: Option<u64>) -> String {
    let goal = until.unwrap_or(100_000_000);
    let mut s = format!(
        "{BEGIN}\n\nTotals accumulate over every run (fuzz/campaign.tsv); exec/s, cov, ft \
         and corpus are those the latest run ended with (corpus: libFuzzer's units, and the \
         KiB of fuzz/corpus/<target> on disk). \"To {goal}\" is the fuzzing time still \
         needed for that many executions at the latest rate, on this machine.\n\n\
         | target | total executions | total time | latest run | exec/s | cov | ft | corpus (units, KiB) | crashes | to {goal} |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for t in totals {
        let left = goal.saturating_sub(t.execs);
        let eta = left
            .checked_div(t.last.exec_per_sec)
            .map_or_else(|| "?".to_owned(), hours);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {}, {} | {} | {eta} |",
            t.target,
            t.execs,
            hours(t.secs),
            hours(t.last_secs),
            t.last.exec_per_sec,
            t.last.cov,
            t.last.ft,
            t.last.corpus_units,
            t.corpus_bytes / 1024,
            t.crashes
        );
    }
    s.push('\n');
    s.push_str(END);
    s
}

fn hours(secs: u64) -> String {
    if secs < 3600 {
        format!("{} min", secs.div_ceil(60))
    } else {
        format!("{:.1} h", secs as f64 / 3600.0)
    }
}

/// Replace the generated table in docs/FUZZING.md (appending it if the
/// markers are missing).
fn update_doc(totals: &[Total], until: Option<u64>) -> Result<(), String> {
    let path = root().join("docs/FUZZING.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Fuzzing\n\n".to_owned());
    let new = table(totals, until);
    let doc = match (doc.find(BEGIN), doc.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{new}{}", &doc[..a], &doc[b + END.len()..]),
        _ => format!("{}\n{new}\n", doc.trim_end()),
    };
    std::fs::write(&path, doc).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_path_tmin_ends_with() {
        let out = "\nReproduce with:\n\n\tcargo fuzz run --sanitizer=none t \
                   artifacts/t/minimized-from-0142\n\n";
        assert_eq!(minimized_path(out), Some("artifacts/t/minimized-from-0142"));
        assert_eq!(minimized_path("tmin failed\n"), None);
    }

    #[test]
    fn state_round_trips_and_table_has_a_row_per_target() {
        let t = Total {
            target: "tls_records".into(),
            execs: 5_000_000,
            secs: 7200,
            crashes: 1,
            last: RunStats {
                exec_per_sec: 1000,
                cov: 3476,
                ft: 7577,
                corpus_units: 688,
                ..RunStats::default()
            },
            corpus_bytes: 196_608,
            last_secs: 300,
        };
        let text = write_state(std::slice::from_ref(&t));
        assert_eq!(read_state(&text), vec![t.clone()]);
        let table = table(&[t], None);
        assert!(
            table.contains(
                "| tls_records | 5000000 | 2.0 h | 5 min | 1000 | 3476 | 7577 | 688, 192 | 1 | 26.4 h |"
            ),
            "{table}"
        );
    }
}
