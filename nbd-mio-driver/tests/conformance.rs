//! Protocol conformance of the built `nbdd`, over real sockets, with a raw
//! client (`common::raw`) that can send what libnbd refuses to: each test
//! is named after the items of the conformance checklist
//! (../shared/reference/nbd-protocol.md section 9) it checks. Items covered
//! by nbd-proto's own tests or by the libnbd/qemu e2e tests are not
//! repeated here, only those that need the whole server: the event loop,
//! its buffers, draining, several connections, signals.

mod common;

#[path = "conformance/extended.rs"]
mod extended;
#[path = "conformance/handshake.rs"]
mod handshake;
#[path = "conformance/lifecycle.rs"]
mod lifecycle;
#[path = "conformance/requests.rs"]
mod requests;
#[path = "conformance/structured.rs"]
mod structured;

use common::{Server, Transport};

/// A 1 MiB memory export on a Unix socket, plus any extra options.
pub fn memory(extra: &[&str]) -> Server {
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["memory", "1M"]);
    Server::start(Transport::Unix, &args)
}

/// Deterministic non-zero test bytes (zero bytes would let a hole fake a
/// match).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}
