//! Issue 14: `--busy-poll=USECS` keeps the loop polling, without sleeping,
//! for USECS after client input (lower latency at queue depth 1); the
//! default (0) sleeps in `epoll_wait` at once. The flag was once parsed but
//! did nothing (its "busy" benchmark rows were noise between identical
//! servers); these tests fail if it stops spinning or if the default spins.
//! CPU use is read from /proc, not timed: a spinning loop uses about 100
//! ticks a second, a sleeping one about none.

mod common;

use std::time::Duration;

use common::raw::Raw;
use common::{Server, Transport};
use nbd_proto::HeaderMode;

/// Ticks of CPU the server uses in the `window` after one READ, and the
/// client, still connected.
fn ticks_after_a_request(s: &Server, window: Duration) -> (u64, Raw) {
    let mut c = Raw::negotiate(s, HeaderMode::Simple);
    let before = s.cpu_ticks();
    assert_eq!(c.read(0, 4096), vec![0; 4096]);
    std::thread::sleep(window);
    (s.cpu_ticks() - before, c)
}

#[test]
fn busy_poll_spins_after_input_then_sleeps() {
    let s = Server::start(
        Transport::Unix,
        &["-t", "1", "--busy-poll=1000000", "memory", "1M"],
    );
    // Within the second after the request the loop polls without sleeping:
    // most of 50 ticks (the machine is shared, so not all of them).
    let (spun, _client) = ticks_after_a_request(&s, Duration::from_millis(500));
    assert!(spun >= 20, "{spun} ticks in 0.5 s with --busy-poll=1s");
    // Once the second is over it sleeps again.
    std::thread::sleep(Duration::from_millis(700));
    let before = s.cpu_ticks();
    std::thread::sleep(Duration::from_millis(500));
    let idle = s.cpu_ticks() - before;
    assert!(
        idle <= 5,
        "{idle} ticks in 0.5 s after the busy-poll window"
    );
}

#[test]
fn the_default_does_not_spin() {
    let s = Server::start(Transport::Unix, &["-t", "1", "memory", "1M"]);
    let (used, _client) = ticks_after_a_request(&s, Duration::from_millis(500));
    assert!(used <= 5, "{used} ticks in 0.5 s after one request");
}
