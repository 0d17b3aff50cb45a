//! The raw Unix-socket reference: what two processes on this machine move
//! through one Unix stream socket in 1 MiB writes, with no protocol and
//! no storage. A server's 1 MiB jobs are reported as a share of it.
//!
//! The reader is this process; the writer is this same binary started as
//! `xtask bench __raw-writer SOCKET`, so the bytes cross a process
//! boundary as they do between fio and a server.

use super::procfs;
use super::stats::{MIB, Sample};
use std::io::{Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The hidden subcommand that runs [`writer_main`].
pub const WRITER_ARG: &str = "__raw-writer";
const CHUNK: usize = 1 << 20;

/// The writer: connect, then write 1 MiB buffers until the reader hangs up.
///
/// # Errors
/// If it cannot connect.
pub fn writer_main(sock: &str) -> Result<(), String> {
    let mut s =
        UnixStream::connect(sock).map_err(|e| format!("raw writer: connect {sock}: {e}"))?;
    let buf = vec![0x5au8; CHUNK];
    // Rust ignores SIGPIPE: the reader's close ends this loop with EPIPE.
    while s.write_all(&buf).is_ok() {}
    Ok(())
}

/// Measures for `secs` seconds from the first byte. CPU is both ends'.
///
/// # Errors
/// If the writer cannot be started or the socket fails.
pub fn measure(dir: &Path, secs: u32) -> Result<Sample, String> {
    let path = dir.join("raw.sock");
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .args(["bench", WRITER_ARG])
        .arg(&path)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the raw-socket writer: {e}"))?;
    let result = read_for(&listener, child.id(), secs);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&path);
    result
}

fn read_for(listener: &UnixListener, writer: u32, secs: u32) -> Result<Sample, String> {
    let (mut s, _) = listener
        .accept()
        .map_err(|e| format!("raw reference: accept: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    let err = |e: std::io::Error| format!("raw reference: read: {e}");
    // Start the clock at the first byte, not at connect.
    s.read(&mut buf).map_err(err)?;
    let (cpu0, start) = (both_cpu(writer)?, Instant::now());
    let mut bytes = 0u64;
    let window = Duration::from_secs(u64::from(secs));
    while start.elapsed() < window {
        let n = s.read(&mut buf).map_err(err)?;
        if n == 0 {
            return Err("raw reference: the writer stopped early".into());
        }
        bytes += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = both_cpu(writer)? - cpu0;
    Ok(Sample {
        secs,
        bytes: bytes as f64,
        requests: bytes as f64 / MIB,
        cpu,
    })
}

fn both_cpu(writer: u32) -> Result<f64, String> {
    Ok(procfs::cpu_secs(writer)? + procfs::cpu_secs(std::process::id())?)
}
