//! cargo-fuzz target `backend_stacks`: random filter stacks over a memory
//! base and random operations, checked against a model; see
//! `nbd_backends::fuzzing::filter_stacks` (replayed on stable by
//! `nbd-backends/tests/fuzz_replay.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nbd_backends::fuzzing::filter_stacks(data));
