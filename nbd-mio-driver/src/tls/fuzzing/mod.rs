//! Fuzz harness for the TLS session wrapper (feature `fuzzing`; not a
//! stable API), shared by the cargo-fuzz target `tls_records` and the
//! stable replay test `tests/fuzz_replay.rs`.
//!
//! [`server_records`] drives one server session ([`super::TlsSession`])
//! from the fuzzer's bytes in one of two ways:
//! - raw: the bytes are ciphertext from a hostile peer, fed in chunks
//!   (sometimes repeated thousands of times), interleaved with reads,
//!   writes, drains and close_notify, for each credential kind (X.509,
//!   X.509 requiring client certificates, PSK through OpenSSL);
//! - through an in-memory rustls client that completes a real handshake
//!   (TLS 1.3 or 1.2), after which the bytes choose what each side sends,
//!   how records are split when delivered, whether a byte is corrupted on
//!   the way, and when each side closes.
//!
//! Invariants: nothing panics; every count returned fits the buffer given;
//! a failed session stays failed; plaintext arrives intact and in order
//! (a prefix of what was sent, all of it at the end unless corrupted); a
//! session that is fed without being read pushes back after a bounded
//! amount. The caller also bounds the heap: [`MAX_LIVE_BYTES`].

mod client;
mod fixtures;
mod raw;

use nbd_backends::fuzzing::Input;

/// Most heap (Rust allocations) one run may hold at once, whatever it is
/// fed: the session's own buffers are bounded by
/// [`super::SESSION_BUFFER_LIMIT`] in each direction plus rustls's record
/// buffers; the rest is the harness's copies of what was sent. Checked by
/// the fuzz target and the replay test with `allocation_counter`.
pub const MAX_LIVE_BYTES: u64 = 4 << 20;

/// Most ciphertext one raw run feeds in total (repeats included): enough
/// to overflow any buffer several times, small enough to stay fast.
const MAX_FED: usize = 4 << 20;

/// Make the process-wide credentials now, so that a heap measurement of
/// [`server_records`] sees only the run's own allocations.
pub fn warm_up() {
    fixtures::get();
}

/// The driver's X.509 server configuration over the harness's certificate
/// (made once per process), for the whole-server harness.
pub fn driver_config() -> std::sync::Arc<super::TlsServerConfig> {
    std::sync::Arc::clone(&fixtures::get().driver)
}

/// A rustls client configuration (TLS 1.3) trusting the harness's
/// certificate, for `localhost`.
pub fn client_config() -> std::sync::Arc<rustls::ClientConfig> {
    std::sync::Arc::clone(&fixtures::get().client13)
}

/// Run one session from `data`; panics when an invariant breaks.
pub fn server_records(data: &[u8]) {
    let mut input = Input::new(data);
    let f = fixtures::get();
    match input.u8() % 5 {
        0 => raw::run(f.x509.new_session().expect("session"), &mut input),
        1 => raw::run(f.x509_verify.new_session().expect("session"), &mut input),
        2 => raw::run(f.psk.new_session().expect("session"), &mut input),
        tls => client::run(f, tls == 3, &mut input),
    }
}
