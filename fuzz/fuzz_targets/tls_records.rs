//! cargo-fuzz target `tls_records`: hostile ciphertext and real sessions
//! through the driver's TLS wrapper; see
//! `nbd_mio_driver::tls::fuzzing::server_records` (replayed on stable by
//! `nbd-mio-driver/tests/fuzz_replay.rs`). The heap one run holds at once
//! is bounded too.
#![no_main]

use nbd_mio_driver::tls::fuzzing::{MAX_LIVE_BYTES, server_records, warm_up};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warm_up();
    let peak = allocation_counter::measure(|| server_records(data)).bytes_max;
    assert!(peak <= MAX_LIVE_BYTES, "{peak} bytes of heap at once");
});
