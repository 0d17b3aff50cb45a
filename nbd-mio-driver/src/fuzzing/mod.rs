//! Whole-server fuzz harness (feature `fuzzing`; not a stable API), shared
//! by the cargo-fuzz target `server` and the stable replay test
//! `tests/fuzz_replay.rs`.
//!
//! [`whole_server`] serves one client whose bytes come from the fuzzer
//! through the driver's real connection: a [`crate::conn::Conn`] on an
//! in-memory [`Pipe`] instead of a socket (`listen::Stream::Pipe`), served
//! as the event loop serves it (process, write, read again, close when
//! finished), with the loop's dispatch state, output queue and byte
//! budgets, over one to three exports, each a memory backend of up to
//! 192 KiB wrapped in a random filter stack (the `backend_stacks`
//! builder). Requests run inline, or on a worker pool without threads
//! whose jobs the input runs and completes in any order, so replies come
//! back out of order as they do with real workers. With TLS on, STARTTLS
//! starts a real rustls session, which the rest of the input feeds.
//!
//! Input layout: a configuration (handshake features, TLS policy, exports
//! and their stacks; see `setup`), one length byte L, L schedule bytes,
//! then the client's byte stream, raw. Each schedule byte is one event:
//! deliver the next 2^k client bytes, run pool jobs, complete a finished
//! one, let the client read some or all output, run the loop's
//! housekeeping, begin a server shutdown, or close the client's side. When the schedule ends, everything left is
//! delivered, run, completed and read; then the client closes its side
//! and the same again.
//!
//! Invariants, checked as the client reads (`client.rs`): every output
//! byte parses with nbd-proto's client-side decoders (greeting and option
//! replies through `wire`, transmission through
//! [`ReplyDecoder`](nbd_proto::client::ReplyDecoder)), replies arrive
//! exactly in the order the connection queued them (`tap`: the only seam
//! in `conn.rs`, compiled with this feature only), one final reply per
//! request accepted or rejected, rejected ones as errors, READ replies
//! covering the request exactly, block status only for contexts the
//! server announced. The connection never holds more than [`MAX_HELD`]
//! bytes (output queued plus jobs' buffers) nor more than 64 jobs; after
//! the client closed and read everything, the loop has closed the
//! connection, with nothing in flight. The heap one run holds is bounded
//! by [`MAX_LIVE_BYTES`] (checked by the callers with `allocation_counter`).

mod client;
mod pipe;
mod server;
mod setup;
pub(crate) mod tap;
mod tls_client;

pub use pipe::{Pipe, SOCKET_BUF};

use nbd_backends::fuzzing::Input;

/// Largest export the harness builds (the backend stack builder's 24 KiB
/// base times 8): above the 64 KiB where sparse READs start. A client may
/// grow an export that allows RESIZE, so replies are bounded by the
/// payload maximum, not by this.
pub const MAX_EXPORT: usize = 8 * 24 * 1024;

/// The largest READ or WRITE payload nbd-proto accepts by default.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// The harness's connection budget (`--max-connection-buffer`), unless the
/// input asks for a 1 MiB one.
pub const BUDGET: usize = 8 << 20;

/// Most bytes the connection may hold (`Conn::held`: output queued plus
/// jobs in flight). It takes a request while it holds less than its budget
/// and its output is below the high-water mark (4 MiB), so one more
/// maximum payload may come on top, with its chunk headers.
pub const MAX_HELD: usize = BUDGET + crate::conn::OUTPUT_HIGH_WATER + MAX_PAYLOAD + (1 << 20);

/// Most heap one run may hold at once: what the connection holds (above),
/// the output queue's recycled chunks (8 MiB), one input frame (a WRITE's
/// payload), the client's copy of the reply it is parsing (while its
/// buffer grows: `client::CLIENT_HOLD_MAX`), and 8 MiB for
/// the rest (three exports with cow overlays and the builder's models, the
/// pipe's two 256 KiB buffers, 64 jobs' small buffers, scratch space).
/// Checked by the callers with `allocation_counter`.
pub const MAX_LIVE_BYTES: u64 =
    (MAX_HELD + crate::outq::FREE_KEEP + MAX_PAYLOAD + client::CLIENT_HOLD_MAX + (8 << 20)) as u64;

/// Create the process-wide poll, waker and TLS credentials, so a heap
/// measurement of [`whole_server`] sees only the run's own allocations.
pub fn warm_up() {
    server::warm_up();
}

/// What one run did, for tests that want to know their inputs reach
/// transmission.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Requests accepted or rejected, each answered once.
    pub requests: u64,
    /// Output bytes the client read and parsed.
    pub output: u64,
}

/// Serve one fuzzed client; panics when an invariant breaks.
pub fn whole_server(data: &[u8]) -> Summary {
    let mut input = Input::new(data);
    let Some(setup) = setup::read(&mut input) else {
        // A partition layer was refused: no export to serve.
        return Summary::default();
    };
    let schedule_len = usize::from(input.u8());
    let schedule = input.bytes(schedule_len);
    let client_bytes = input.bytes(usize::MAX);
    server::run(setup, schedule, client_bytes)
}
