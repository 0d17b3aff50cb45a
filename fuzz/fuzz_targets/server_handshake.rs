//! cargo-fuzz target `server_handshake`: see `nbd_proto::fuzzing::server_handshake` (the stable
//! test `nbd-proto/tests/fuzz_replay.rs` replays seeds through it too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nbd_proto::fuzzing::server_handshake(data));
