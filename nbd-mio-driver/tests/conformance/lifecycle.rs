//! Several connections and the server's own life: EOF mid-payload (83),
//! shutdown on SIGTERM (112), multi-connection consistency (114).

use std::collections::HashSet;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use nbd_proto::{CmdFlags, Command, ErrorCode, HeaderMode, TransmissionFlags as TF};

use crate::common::raw::{Raw, Sock, encode_request};
use crate::common::{Server, TempDir, Transport};
use crate::{memory, pattern};

#[test]
fn checklist_83_eof_mid_payload_other_connections_unaffected() {
    let s = memory(&[]);
    let mut b = Raw::negotiate(&s, HeaderMode::Structured);
    b.write(0, &pattern(4096, 1));
    let mut a = Raw::negotiate(&s, HeaderMode::Simple);
    let frame = encode_request(
        a.mode,
        Command::Write,
        CmdFlags::empty(),
        1,
        65536,
        65536,
        &[0; 65536],
    );
    a.send(&frame[..28 + 1000]);
    match &a.sock {
        Sock::Unix(u) => u.shutdown(Shutdown::Write).unwrap(),
        Sock::Tcp(t) => t.shutdown(Shutdown::Write).unwrap(),
    }
    // No reply to the truncated WRITE, just the close.
    a.expect_closed();
    assert_eq!(b.read(0, 4096), pattern(4096, 1));
    assert_eq!(
        b.read(65536, 1000),
        vec![0; 1000],
        "the partial WRITE did nothing"
    );
    // And new connections are still served.
    let mut c = Raw::negotiate(&s, HeaderMode::Extended);
    assert_eq!(c.read(0, 4096), pattern(4096, 1));
}

#[test]
fn checklist_114_multi_conn_write_a_flush_b_read_c() {
    let s = memory(&[]);
    let mut a = Raw::negotiate(&s, HeaderMode::Simple);
    let mut b = Raw::negotiate(&s, HeaderMode::Structured);
    let mut c = Raw::negotiate(&s, HeaderMode::Extended);
    for x in [&a, &b, &c] {
        assert!(x.flags.contains(TF::CAN_MULTI_CONN));
    }
    a.write(123 * 512, &pattern(8192, 4));
    assert_eq!(b.call(Command::Flush, CmdFlags::empty(), 0, 0), None);
    assert_eq!(c.read(123 * 512, 8192), pattern(8192, 4));
}

/// `nbdd -f -U SOCK ARGS...` started by hand: the test needs its pid.
fn spawn_nbdd(dir: &TempDir, args: &[&str]) -> (std::process::Child, std::path::PathBuf) {
    let sock = dir.path().join("nbd.sock");
    let child = Process::new(env!("CARGO_BIN_EXE_nbdd"))
        .arg("-f")
        .arg("-U")
        .arg(&sock)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nbdd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "nbdd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, sock)
}

#[test]
fn checklist_112_sigterm_finishes_in_flight_requests_then_exits_0() {
    let dir = TempDir::new("sigterm");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 8 << 20]).unwrap();
    // The file backend runs on the worker pool, so requests really are in
    // flight when the signal lands.
    let (mut child, sock) = spawn_nbdd(&dir, &["file", disk.to_str().unwrap()]);
    let mut c = Raw::connect_unix(&sock);
    c.start();
    c.negotiate_after_flags("", HeaderMode::Simple);
    let mut cookies = HashSet::new();
    for i in 0..32u64 {
        let at = i * 65536;
        if i % 2 == 0 {
            c.request_with(
                Command::Write,
                CmdFlags::empty(),
                i,
                at,
                65536,
                &pattern(65536, i as u8),
            );
        } else {
            c.request(Command::Read, CmdFlags::empty(), i, at, 65536);
        }
        cookies.insert(i);
    }
    let pid = child.id().to_string();
    let st = Process::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    let started = Instant::now();
    let mut shutdown_replies = 0;
    while !cookies.is_empty() {
        let m = c.reply();
        assert!(
            cookies.remove(&m.cookie),
            "cookie {} answered twice",
            m.cookie
        );
        match m.error {
            None => {}
            Some(ErrorCode::Shutdown) => shutdown_replies += 1,
            Some(e) => panic!("cookie {}: {e:?}", m.cookie),
        }
    }
    // Then the server disconnects by itself, and exits with status 0 -
    // once the replies are out, not when the 5 s shutdown grace expires.
    c.expect_closed();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed {:?} after SIGTERM: idle connections wait for the grace period",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "nbdd did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!sock.exists(), "the Unix socket is removed at exit");
    eprintln!(
        "{shutdown_replies} ESHUTDOWN replies; closed and exited {:?} after SIGTERM",
        started.elapsed()
    );
}

/// Issue 15: WRITE, DISC, then junk, in one burst. The WRITE is applied
/// and its reply was already computed when the junk ends the connection;
/// that reply is owed and must arrive before the close (checklist 110:
/// nothing after DISC is executed, everything before it is answered).
#[test]
fn checklist_110_reply_before_disc_survives_junk_after_it() {
    // Inline (memory; rbd's aio queue with --features rbd) and worker-pool
    // (file) backends: a reply still in flight when the junk arrives is
    // owed too.
    let dir = TempDir::new("junk-after-disc");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let file = Server::start(Transport::Unix, &["file", disk.to_str().unwrap()]);
    for s in [memory(&[]), file] {
        reply_before_disc_survives_junk(&s);
    }
}

fn reply_before_disc_survives_junk(s: &Server) {
    let mut c = Raw::negotiate(s, HeaderMode::Simple);
    let mut burst = encode_request(
        c.mode,
        Command::Write,
        CmdFlags::empty(),
        1,
        0,
        4096,
        &pattern(4096, 9),
    );
    burst.extend(encode_request(
        c.mode,
        Command::Disc,
        CmdFlags::empty(),
        2,
        0,
        0,
        &[],
    ));
    burst.extend(b"this is not a request at all, it is junk after DISC");
    c.send(&burst);
    assert_eq!(c.status(1), None, "the WRITE's reply arrived");
    c.expect_closed();
    let mut d = Raw::negotiate(s, HeaderMode::Simple);
    assert_eq!(d.read(0, 4096), pattern(4096, 9), "the WRITE was applied");
}
