//! cargo-fuzz target `client_replies`: see `nbd_proto::fuzzing::client_replies` (the stable
//! test `nbd-proto/tests/fuzz_replay.rs` replays seeds through it too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nbd_proto::fuzzing::client_replies(data));
