//! One fio run with libnbd's `nbd` engine, read back from its terse line.

use super::stats::Sample;
use crate::util::show;
use std::path::Path;
use std::process::{Command, Stdio};

/// The fio command for one job of `(rw, bs, iodepth, jobs)`: `jobs`
/// connections (one per fio job, totalled as one group), time based,
/// over the whole export.
pub fn command(
    uri: &str,
    home: Option<&Path>,
    (rw, bs, iodepth, jobs): (&str, u64, u32, u32),
    secs: u32,
) -> Command {
    let mut cmd = Command::new("fio");
    if let Some(h) = home {
        cmd.env("HOME", h);
    }
    cmd.args(["--name=bench", "--ioengine=nbd"])
        .arg(format!("--numjobs={jobs}"))
        .arg(format!("--uri={uri}"))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={bs}"))
        .arg(format!("--iodepth={iodepth}"))
        .arg(format!("--runtime={secs}"))
        .args(["--time_based", "--output-format=terse", "--terse-version=3"]);
    if jobs > 1 {
        cmd.arg("--group_reporting");
    }
    cmd
}

/// Runs `cmd` (from [`command`]) and returns what the job moved.
/// CPU is the caller's to fill in.
///
/// # Errors
/// If fio fails, prints no terse line or reports an error.
pub fn run(mut cmd: Command, writes: bool, bs: u64) -> Result<Sample, String> {
    eprintln!("+ {}", show(&cmd));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run fio: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("3;")).ok_or_else(|| {
        format!(
            "fio gave no terse result ({}):\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    parse_terse(line, writes, bs)
}

/// Terse v3, 1-based: 5 error; read 6 KiB moved, 9 runtime ms; write 47
/// KiB moved, 50 runtime ms.
fn parse_terse(line: &str, writes: bool, bs: u64) -> Result<Sample, String> {
    let f: Vec<&str> = line.split(';').collect();
    let num = |i: usize| {
        f.get(i - 1)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("fio terse field {i} missing or not a number"))
    };
    if num(5)? != 0.0 {
        return Err(format!("fio reported error {}", f[4]));
    }
    let (kib, ms) = if writes {
        (num(47)?, num(50)?)
    } else {
        (num(6)?, num(9)?)
    };
    if kib <= 0.0 || ms <= 0.0 {
        return Err(format!("fio moved nothing ({kib} KiB in {ms} ms)"));
    }
    let bytes = kib * 1024.0;
    Ok(Sample {
        secs: ms / 1000.0,
        bytes,
        requests: bytes / bs as f64,
        cpu: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(read: (u64, u64), write: (u64, u64)) -> String {
        let mut f = vec!["0".to_owned(); 130];
        f[0] = "3".into();
        f[5] = read.0.to_string();
        f[8] = read.1.to_string();
        f[46] = write.0.to_string();
        f[49] = write.1.to_string();
        f.join(";")
    }

    #[test]
    fn reads_and_writes_come_from_their_own_fields() {
        let r = parse_terse(&line((8192, 2000), (0, 0)), false, 4096).unwrap();
        assert_eq!(
            (r.bytes, r.secs, r.requests),
            (8192.0 * 1024.0, 2.0, 2048.0)
        );
        let w = parse_terse(&line((0, 0), (1024, 500)), true, 1 << 20).unwrap();
        assert_eq!((w.bytes, w.secs, w.requests), (1048576.0, 0.5, 1.0));
    }

    #[test]
    fn an_error_or_an_empty_run_is_refused() {
        let mut bad = line((8192, 2000), (0, 0));
        bad = bad.replacen("3;0;0;0;0", "3;0;0;0;5", 1);
        assert!(parse_terse(&bad, false, 4096).is_err());
        assert!(parse_terse(&line((0, 0), (0, 0)), true, 4096).is_err());
        assert!(parse_terse("3;fio;x", false, 4096).is_err());
    }
}
