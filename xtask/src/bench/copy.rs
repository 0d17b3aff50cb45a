//! nbdcopy jobs, the random source file they copy, and pre-filling
//! exports.

use super::plan::{COPY_REQUEST, EXPORT_BYTES};
use super::stats::Sample;
use crate::util::show;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Writes `EXPORT_BYTES` of xorshift output to `path`: incompressible and
/// free of zero blocks, so no server or nbdcopy can shortcut it.
///
/// # Errors
/// If the file cannot be written.
pub fn make_source(path: &Path) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::File::create(path).map_err(err)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..EXPORT_BYTES >> 20 {
        // A plain index loop: xtask is built without optimisation.
        let mut i = 0;
        while i < buf.len() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[i..i + 8].copy_from_slice(&x.to_le_bytes());
            i += 8;
        }
        f.write_all(&buf).map_err(err)?;
    }
    Ok(())
}

/// An nbdcopy command line; `home` is libnbd's `$HOME` for TLS.
pub fn command(from: &str, to: &str, home: Option<&Path>) -> Command {
    let mut cmd = Command::new("nbdcopy");
    if let Some(h) = home {
        cmd.env("HOME", h);
    }
    cmd.arg(format!("--request-size={COPY_REQUEST}"))
        .args([from, to]);
    cmd
}

/// Runs an nbdcopy of the whole export and times it.
///
/// # Errors
/// If nbdcopy fails.
pub fn run(mut cmd: Command) -> Result<Sample, String> {
    eprintln!("+ {}", show(&cmd));
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run nbdcopy: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            show(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let bytes = EXPORT_BYTES as f64;
    Ok(Sample {
        secs,
        bytes,
        requests: bytes / COPY_REQUEST as f64,
        cpu: 0.0,
    })
}

/// Creates a sparse image of the export's size (the file table's servers
/// each get their own).
///
/// # Errors
/// If the file cannot be created.
pub fn make_image(path: &Path) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(EXPORT_BYTES)
        .map_err(|e| format!("{}: {e}", path.display()))
}
