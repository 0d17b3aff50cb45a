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

#[cfg(feature = "rbd")]
#[path = "../../nbd-backends/tests/ceph/mod.rs"]
mod ceph;

use common::{Server, Transport};

/// A 1 MiB memory export on a Unix socket, plus any extra options.
///
/// Built with `--features rbd` it is a 1 MiB RBD image on the test cluster
/// instead (layering only, 64 KiB objects), so the whole protocol suite also
/// runs over the asynchronous rbd path: `cargo xtask test` runs it both ways.
/// The image stays in the throwaway cluster (the server still has it open
/// when the test ends).
pub fn memory(extra: &[&str]) -> Server {
    let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    #[cfg(feature = "rbd")]
    {
        let image = ceph::Image::simple("1M", "64K");
        args.extend([
            "rbd".to_owned(),
            image.spec(),
            format!("conf={}", ceph::conf().display()),
        ]);
        std::mem::forget(image);
    }
    #[cfg(not(feature = "rbd"))]
    args.extend(["memory".to_owned(), "1M".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(Transport::Unix, &args)
}

/// The allocation unit of [`memory`]'s export, which block status reports
/// holes in: memory's 4 KiB pages, or the rbd image's 64 KiB objects.
#[cfg(not(feature = "rbd"))]
pub const GRAIN: u64 = 4096;
/// The allocation unit of [`memory`]'s export (the rbd image's objects).
#[cfg(feature = "rbd")]
pub const GRAIN: u64 = 64 * 1024;

/// Deterministic non-zero test bytes (zero bytes would let a hole fake a
/// match).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}
