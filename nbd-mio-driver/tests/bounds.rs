//! Issue 9: hard limits under hostile or greedy clients, over real
//! sockets. Each test reproduces an attack and asserts the bound.

mod common;

use std::time::{Duration, Instant};

use common::raw::Raw;
use common::{Server, Transport};
use nbd_proto::{CmdFlags, Command, HeaderMode};

/// Worker-pool starvation: with a 200 ms delay per READ and 2 workers, one
/// client pipelining 16 READs must not hold back another client's single
/// READ behind its whole backlog (FIFO: 16 × 200 ms / 2 = 1.6 s). The pool
/// takes connections in turn, so the other READ waits at most about one
/// service time for a worker, then runs its own 200 ms.
#[test]
fn one_clients_backlog_does_not_starve_another() {
    let s = Server::start(
        Transport::Unix,
        &["-t", "1", "--workers", "2", "--filter=delay", "memory", "16M", "rdelay=200ms"],
    );
    let mut hog = Raw::negotiate(&s, HeaderMode::Simple);
    let mut other = Raw::negotiate(&s, HeaderMode::Simple);
    for cookie in 0..16 {
        hog.request(Command::Read, CmdFlags::empty(), cookie, cookie * 4096, 4096);
    }
    // Let the hog's requests reach the pool first.
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    assert_eq!(other.read(0, 4096), vec![0; 4096]);
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_millis(800),
        "the single READ waited {waited:?} behind another client's backlog"
    );
    for _ in 0..16 {
        assert_eq!(hog.reply().error, None);
    }
}
