//! Reading libFuzzer's output: the status lines (`#N DONE cov: C ft: F
//! corp: K/SIZE exec/s: E ...`) and the final stats (`-print_final_stats=1`:
//! `stat::number_of_executed_units: N`), and where a crash was written.

/// What one libFuzzer run reported.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunStats {
    pub execs: u64,
    pub exec_per_sec: u64,
    pub cov: u64,
    pub ft: u64,
    pub corpus_units: u64,
    pub peak_rss_mb: u64,
    /// `Test unit written to PATH` (a crash, leak, timeout or OOM).
    pub crash: Option<String>,
}

/// True for libFuzzer's slow-unit reports (see [`scan_line`]).
fn is_slow_unit(path: &str) -> bool {
    std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("slow-unit-"))
}

/// Fold one line of libFuzzer's stderr into `s`.
pub fn scan_line(s: &mut RunStats, line: &str) {
    if let Some(v) = stat(line, "stat::number_of_executed_units:") {
        s.execs = v;
    } else if let Some(v) = stat(line, "stat::average_exec_per_sec:") {
        s.exec_per_sec = v;
    } else if let Some(v) = stat(line, "stat::peak_rss_mb:") {
        s.peak_rss_mb = v;
    } else if let Some(path) = line.split("Test unit written to ").nth(1) {
        // libFuzzer also writes the slowest unit so far (`slow-unit-*`,
        // over -report_slow_units seconds of wall time, which a stopped or
        // starved process reaches too): a report, not a failure. Hangs
        // are `timeout-*` units (`-timeout`).
        let path = path.trim();
        if !is_slow_unit(path) {
            s.crash = Some(path.to_owned());
        }
    } else if line.starts_with('#') && line.contains(" cov: ") {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| {
            let i = words.iter().position(|w| *w == key)?;
            words.get(i + 1).copied()
        };
        let num = |w: Option<&str>| w.and_then(|w| w.parse().ok());
        s.cov = num(after("cov:")).unwrap_or(s.cov);
        s.ft = num(after("ft:")).unwrap_or(s.ft);
        let units = after("corp:").and_then(|c| c.split('/').next());
        s.corpus_units = num(units).unwrap_or(s.corpus_units);
        if let Some(n) = words.first().and_then(|w| w[1..].parse().ok()) {
            s.execs = s.execs.max(n);
        }
    }
}

fn stat(line: &str, key: &str) -> Option<u64> {
    line.strip_prefix(key)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_final_stats_and_crash() {
        let mut s = RunStats::default();
        for l in [
            "#16384\tpulse  cov: 3407 ft: 7275 corp: 554/153Kb lim: 4120 exec/s: 819 rss: 42Mb",
            "#33339\tDONE   cov: 3476 ft: 7577 corp: 688/192Kb lim: 4120 exec/s: 813 rss: 42Mb",
            "stat::number_of_executed_units: 33340",
            "stat::average_exec_per_sec:     813",
            "stat::peak_rss_mb:              42",
        ] {
            scan_line(&mut s, l);
        }
        assert_eq!(
            s,
            RunStats {
                execs: 33340,
                exec_per_sec: 813,
                cov: 3476,
                ft: 7577,
                corpus_units: 688,
                peak_rss_mb: 42,
                crash: None
            }
        );
        scan_line(
            &mut s,
            "artifact_prefix='a/'; Test unit written to a/crash-f0 ",
        );
        assert_eq!(s.crash.as_deref(), Some("a/crash-f0"));
        let mut slow = RunStats::default();
        scan_line(
            &mut slow,
            "artifact_prefix='a/'; Test unit written to a/slow-unit-0af3",
        );
        assert_eq!(slow.crash, None, "a slow unit is no crash");
    }
}
