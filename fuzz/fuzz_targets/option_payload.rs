//! cargo-fuzz target `option_payload`: see `nbd_proto::fuzzing::option_payload` (the stable
//! test `nbd-proto/tests/fuzz_replay.rs` replays seeds through it too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nbd_proto::fuzzing::option_payload(data));
