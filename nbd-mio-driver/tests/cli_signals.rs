//! Every stop signal ends nbdd the same graceful way: SIGINT, SIGTERM and
//! SIGHUP stop accepting, finish in-flight requests, flush every export,
//! remove the Unix socket and exit 0 (checklist 112 for the request side).
//! SIGHUP used to kill nbdd by its default action, leaving the socket file
//! behind and nothing flushed; nbdkit exits 0 on it too. (No reload on
//! SIGHUP: nbdd has no configuration file to re-read.)

mod common;

use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use common::raw::Raw;
use nbd_proto::HeaderMode;
use rustix::process::{Pid, Signal};

/// `nbdd -f -U SOCK --filter=log file DISK logfile=LOG`: the log filter
/// records the flush the shutdown must send to the export.
fn spawn(dir: &TempDir) -> Child {
    let p = |f: &str| dir.path().join(f).display().to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_nbdd"))
        .args([
            "-f",
            "-U",
            &p("nbd.sock"),
            "--filter=log",
            "file",
            &p("disk.img"),
        ])
        .arg(format!("logfile={}", p("ops.log")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nbdd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(dir.path().join("nbd.sock")).is_err() {
        assert!(Instant::now() < deadline, "nbdd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("nbdd did not exit after {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Write through a connection left open, signal, then check the exit.
fn stops_gracefully(signal: Signal, what: &str) {
    let dir = TempDir::new("signal");
    std::fs::write(dir.path().join("disk.img"), vec![0u8; 1 << 20]).unwrap();
    let mut child = spawn(&dir);
    let mut c = Raw::connect_unix(&dir.path().join("nbd.sock"));
    c.start();
    c.negotiate_after_flags("", HeaderMode::Simple);
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 | 1).collect();
    c.write(4096, &data);
    // The client never flushes and stays connected: the server must.
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
    let status = wait_exit(&mut child, what);
    assert_eq!(status.code(), Some(0), "{what}: exit status {status}");
    assert!(
        !dir.path().join("nbd.sock").exists(),
        "{what}: the Unix socket file is left behind"
    );
    let log = std::fs::read_to_string(dir.path().join("ops.log")).unwrap();
    let write_at = log.find(" Write ").expect("the WRITE is logged");
    assert!(
        log[write_at..]
            .lines()
            .any(|l| l.contains(" Flush ") && l.contains("result=ok")),
        "{what}: no successful flush of the export after the WRITE:\n{log}"
    );
    let disk = std::fs::read(dir.path().join("disk.img")).unwrap();
    assert_eq!(
        &disk[4096..4096 + data.len()],
        &data[..],
        "{what}: data lost"
    );
}

#[test]
fn sighup_stops_gracefully_flushes_and_removes_the_socket() {
    stops_gracefully(Signal::HUP, "SIGHUP");
}

#[test]
fn sigterm_and_sigint_stop_the_same_way() {
    stops_gracefully(Signal::TERM, "SIGTERM");
    stops_gracefully(Signal::INT, "SIGINT");
}
