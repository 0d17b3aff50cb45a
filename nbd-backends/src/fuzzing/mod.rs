//! Fuzz harness for filter stacks (feature `fuzzing`; not a stable API).
//!
//! [`filter_stacks`] reads a filter stack over a memory base and a
//! sequence of operations from the fuzzer's bytes, runs them, and checks
//! every result against a plain model of what the top of the stack must
//! look like: the bytes a read returns, which calls must fail and which
//! must succeed, the size and capabilities. Shared by the cargo-fuzz target
//! `backend_stacks` and the stable replay test `tests/fuzz_replay.rs`.
//!
//! Only deterministic settings are used (error rate 0, delay 0, log to
//! /dev/null), so a failure always replays.

mod input;
mod model;
mod ops;

pub use input::Input;

use std::sync::Arc;

use crate::Backend;

/// A filter stack over a memory base of up to `unit` × 24 KiB, read from
/// `input` exactly as [`filter_stacks`] reads its stack (the layers are
/// checked against the model as they are built). For the driver's
/// whole-server harness; `None` when a partition layer was refused.
pub fn stack(input: &mut Input<'_>, unit: u64) -> Option<Arc<dyn Backend>> {
    model::build_sized(input, unit).map(|(b, _)| b)
}

/// Build a stack from `data`, run operations from the rest of it, and
/// panic on any divergence from the model.
pub fn filter_stacks(data: &[u8]) {
    let mut input = Input::new(data);
    let Some((backend, mut model)) = model::build(&mut input) else {
        // The stack was refused as the model expected (a partition table
        // that names no usable partition): nothing more to run.
        return;
    };
    model.check_caps(&*backend);
    while !input.is_empty() {
        ops::one(&*backend, &mut model, &mut input);
    }
    model.check_all(&*backend);
}
