//! cargo-fuzz target `server`: arbitrary client bytes through the driver's
//! protocol-and-dispatch layer (nbd-proto's server Connection, the
//! driver's dispatch and output queue) over filter stacks on memory, with
//! every reply parsed by nbd-proto's client side; see
//! `nbd_mio_driver::fuzzing::whole_server` (replayed on stable by
//! `nbd-mio-driver/tests/fuzz_replay.rs`). The heap one run holds at once
//! is bounded too.
#![no_main]

use nbd_mio_driver::fuzzing::{MAX_LIVE_BYTES, warm_up, whole_server};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warm_up();
    let peak = allocation_counter::measure(|| {
        whole_server(data);
    })
    .bytes_max;
    assert!(peak <= MAX_LIVE_BYTES, "{peak} bytes of heap at once");
});
