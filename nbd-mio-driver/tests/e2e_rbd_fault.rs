//! An OSD that stops mid-run (SIGSTOP: alive but silent, as a hung or
//! partitioned OSD is; a memstore OSD cannot be restarted with its data).
//! Its own test binary because it stalls the whole test cluster: cargo runs
//! test binaries one after another, so no other rbd test is affected.
//!
//! With `timeout=3` nbdd fails the affected requests with EIO after ~3 s;
//! with the default (librbd waits) they complete once the OSD is back. In
//! both cases the server keeps accepting and serving, and nothing
//! acknowledged is lost.

#[path = "../../nbd-backends/tests/ceph/mod.rs"]
mod ceph;
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::raw::{Msg, Raw};
use common::{Server, Transport};
use nbd_proto::{CmdFlags, Command as Cmd, ErrorCode, HeaderMode};

/// The OSD, stopped until this is dropped (also on a failing assert, so
/// the cluster is never left stopped for the tests after this one).
struct Stopped(String);

impl Stopped {
    fn osd() -> Self {
        let pidfile = ceph::conf().with_file_name("run").join("osd.0.pid");
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()))
            .trim()
            .to_owned();
        signal("-STOP", &pid);
        let stopped = Self(pid);
        stopped.wait_all_threads_stopped();
        stopped
    }

    /// SIGSTOP reaches each of the OSD's threads when it next runs: until
    /// all are stopped, one may still answer a request sent just now.
    fn wait_all_threads_stopped(&self) {
        let tasks = format!("/proc/{}/task", self.0);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let states: Vec<String> = std::fs::read_dir(&tasks)
                .unwrap_or_else(|e| panic!("{tasks}: {e}"))
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                .collect();
            // The state follows the ")" that ends the command name.
            let stopped = |stat: &String| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
            };
            if !states.is_empty() && states.iter().all(stopped) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the OSD did not stop: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

fn signal(sig: &str, pid: &str) {
    let ok = Command::new("kill")
        .args([sig, pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

fn serve(image: &ceph::Image, extra: &[&str]) -> Server {
    let conf = format!("conf={}", ceph::conf().display());
    let spec = image.spec();
    let mut args = vec!["rbd", spec.as_str(), conf.as_str()];
    args.extend_from_slice(extra);
    Server::start(Transport::Unix, &args)
}

fn fill(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed | 1)
        .collect()
}

/// Every reply that arrives until the connection is quiet for `wait`.
fn replies_until_quiet(c: &mut Raw, wait: Duration) -> Vec<Vec<Msg>> {
    let mut got = Vec::new();
    while !c.quiet_for(wait) {
        got.push(c.full_reply());
    }
    got
}

fn error_of(replies: &[Vec<Msg>], cookie: u64) -> Option<Option<ErrorCode>> {
    replies
        .iter()
        .find(|r| r[0].cookie == cookie)
        .map(|r| r.iter().find_map(|m| m.error))
}

#[test]
fn an_osd_stopped_mid_run() {
    let (fast, patient) = (
        ceph::Image::simple("4M", "1M"),
        ceph::Image::simple("4M", "1M"),
    );
    let mut a = serve(&fast, &["timeout=3"]);
    let mut b = serve(&patient, &[]);
    let before = fill(65_536, 1);
    let mut ca = Raw::negotiate(&a, HeaderMode::Structured);
    let mut cb = Raw::negotiate(&b, HeaderMode::Structured);
    for c in [&mut ca, &mut cb] {
        c.write(0, &before);
        assert_eq!(c.call(Cmd::Flush, CmdFlags::empty(), 0, 0), None);
    }
    let after = fill(65_536, 2);

    let stopped = Stopped::osd();
    // timeout=3: a READ fails with EIO after the timeout; a WRITE (which
    // librbd's cache may acknowledge early) and the FLUSH after it cannot
    // both succeed.
    let t = Instant::now();
    ca.request(Cmd::Read, CmdFlags::empty(), 1, 0, 4096);
    assert_eq!(
        ca.status(1),
        Some(ErrorCode::Io),
        "READ while the OSD is stopped"
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    // A FLUSH covers the writes answered before it was sent (not ones
    // merely pipelined ahead of it, which librbd may order after it), so
    // each FLUSH goes out once its WRITE is answered.
    ca.request_with(
        Cmd::Write,
        CmdFlags::empty(),
        2,
        1 << 20,
        4096,
        &after[..4096],
    );
    let w = error_of(&[ca.full_reply()], 2).expect("the WRITE's reply");
    ca.request(Cmd::Flush, CmdFlags::empty(), 3, 0, 0);
    let f = error_of(&[ca.full_reply()], 3).expect("the FLUSH's reply");
    assert!(
        w.is_some() || f == Some(ErrorCode::Io),
        "write {w:?}, flush {f:?}"
    );
    // The default waits: a WRITE is answered (from librbd's cache) or
    // waits, never fails; a FLUSH after an answered WRITE waits while the
    // OSD is stopped...
    cb.request_with(
        Cmd::Write,
        CmdFlags::empty(),
        4,
        1 << 20,
        after.len() as u64,
        &after,
    );
    let mut early = replies_until_quiet(&mut cb, Duration::from_secs(2));
    let write = error_of(&early, 4);
    assert!(matches!(write, None | Some(None)), "WRITE {write:?}");
    cb.request(Cmd::Flush, CmdFlags::empty(), 5, 0, 0);
    early.extend(replies_until_quiet(&mut cb, Duration::from_secs(2)));
    if write.is_some() {
        assert_eq!(
            error_of(&early, 5),
            None,
            "FLUSH answered while the OSD is stopped"
        );
    }
    // ...and both servers still accept and negotiate new clients.
    for s in [&a, &b] {
        let fresh = Raw::negotiate(s, HeaderMode::Extended);
        assert_eq!(fresh.size, 4 << 20);
    }
    a.assert_alive();
    b.assert_alive();
    drop(stopped);

    // Back: the waiting requests complete, nothing is lost, both serve.
    let mut late = early;
    while late.len() < 2 {
        late.push(cb.full_reply());
    }
    assert_eq!(
        error_of(&late, 4),
        Some(None),
        "the WRITE that waited succeeded"
    );
    assert_eq!(
        error_of(&late, 5),
        Some(None),
        "the FLUSH that waited succeeded"
    );
    assert_eq!(cb.read(1 << 20, after.len() as u64), after);
    let export = patient.export();
    assert_eq!(export[..before.len()], before[..]);
    assert_eq!(
        export[1 << 20..(1 << 20) + after.len()],
        after[..],
        "acknowledged + flushed"
    );
    assert_eq!(
        ca.read(0, before.len() as u64),
        before,
        "timeout=3 serves again"
    );
    ca.write(2 << 20, &after);
    assert_eq!(ca.call(Cmd::Flush, CmdFlags::empty(), 0, 0), None);
    assert_eq!(fast.export()[2 << 20..(2 << 20) + after.len()], after[..]);
    // The errors were logged naming the image.
    let log = a.stderr();
    assert!(log.contains(&format!("rbd {}", fast.spec())), "{log}");
    // Closed cleanly, so removing the images does not wait for watches.
    a.terminate();
    b.terminate();
}
