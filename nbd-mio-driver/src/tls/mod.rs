//! TLS sessions for NBD STARTTLS, behind one sans-IO trait.
//!
//! After the server ACKs `NBD_OPT_STARTTLS` the same socket carries a TLS
//! handshake and then the rest of negotiation and transmission (nbd-protocol.md
//! 3.11). The event loop must not know which TLS library runs, so it sees only
//! [`TlsSession`]: it feeds socket bytes in and drains socket bytes out.
//!
//! Two implementations sit behind the trait:
//! - X.509 certificates through rustls ([`x509`]): pure Rust, the common path;
//! - pre-shared keys through OpenSSL ([`psk`]), because rustls cannot serve
//!   external PSKs (dependencies.md section 2.1) while qemu and libnbd clients
//!   use psktool key files.
//!
//! # Driving a session (the loop's contract)
//!
//! 1. Socket readable: read into a buffer, then call
//!    [`TlsSession::feed_ciphertext`] with the unconsumed part; after each
//!    call, drain [`TlsSession::read_plaintext`] until it returns `Ok(0)`, then
//!    feed the rest. A session never buffers more than a bounded amount, so
//!    `feed_ciphertext` may consume fewer bytes than offered.
//! 2. Hand the plaintext to the protocol state machine; put its replies in with
//!    [`TlsSession::write_plaintext`] (also bounded: retry the rest later).
//! 3. While [`TlsSession::wants_write`] is true, move bytes from
//!    [`TlsSession::take_ciphertext`] to the socket; register for writability
//!    when the socket would block.
//! 4. Any `Err` is fatal for that connection: optionally flush
//!    `take_ciphertext` once (it may hold an alert), then close.

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod keys;
pub mod mode;
pub mod psk;
pub mod psk_file;
pub mod x509;

use std::io;
use std::path::Path;

pub use mode::TlsMode;

/// How much plaintext or ciphertext one session may hold in its own buffers
/// in each direction before it pushes back. One TLS record is at most 16 KiB
/// of plaintext (RFC 8446 section 5.1), so 64 KiB holds a few records: enough
/// to keep the pipe full, small enough that 10,000 idle connections cost
/// little and a peer cannot make us buffer without bound.
pub const SESSION_BUFFER_LIMIT: usize = 64 * 1024;

/// One TLS connection, sans-IO. The loop feeds it socket bytes and drains
/// socket bytes; see the module docs for the calling sequence.
pub trait TlsSession: Send {
    /// Ciphertext read from the socket; returns bytes consumed (may be
    /// `< data.len()` if internal buffers are full: call
    /// [`read_plaintext`](Self::read_plaintext) until it returns 0, then feed
    /// the rest). `Err` = fatal TLS error (bad record, failed handshake,
    /// refused certificate or PSK identity): close the connection.
    fn feed_ciphertext(&mut self, data: &[u8]) -> io::Result<usize>;

    /// Decrypted application bytes; `Ok(0)` = none available now. The loop
    /// calls it until 0 after every feed: it must drain already-decrypted data
    /// before waiting for readability again.
    fn read_plaintext(&mut self, out: &mut [u8]) -> io::Result<usize>;

    /// Plaintext to send; returns bytes accepted, which may be fewer than
    /// `data.len()` (even 0) when internal buffers are full. While
    /// handshaking, both implementations *buffer* the plaintext (up to
    /// [`SESSION_BUFFER_LIMIT`]) and send it once the handshake completes.
    fn write_plaintext(&mut self, data: &[u8]) -> io::Result<usize>;

    /// True when ciphertext is waiting to go to the socket.
    fn wants_write(&self) -> bool;

    /// Move pending ciphertext into `out`; returns bytes written (0 when
    /// nothing is pending).
    fn take_ciphertext(&mut self, out: &mut [u8]) -> io::Result<usize>;

    /// True until the handshake completes.
    fn is_handshaking(&self) -> bool;

    /// True once the peer sent close_notify.
    fn peer_closed(&self) -> bool;

    /// Queue a close_notify alert (flush it with
    /// [`take_ciphertext`](Self::take_ciphertext)).
    fn send_close_notify(&mut self);

    /// Human-readable peer identity once known (PSK username, or the client
    /// certificate's subject), for logs.
    fn peer_identity(&self) -> Option<String> {
        None
    }
}

/// Server-side TLS configuration, loaded once at startup.
pub struct TlsServerConfig {
    inner: Inner,
}

/// Which library serves sessions. Kept private so the loop cannot depend on it.
enum Inner {
    X509(x509::X509Config),
    Psk(psk::PskConfig),
}

impl TlsServerConfig {
    /// Load the server's credentials.
    ///
    /// `certs_dir` holds `ca-cert.pem`, `server-cert.pem` and `server-key.pem`
    /// (the nbdkit/qemu layout; `ca-cert.pem` is needed only with
    /// `verify_peer`, which then requires every client to present a
    /// certificate signed by that CA). `psk_file` is psktool's format:
    /// `username:hexkey` lines. PSK takes precedence when both are given (as
    /// nbdkit does); `verify_peer` has no meaning for PSK, whose key already
    /// authenticates the client. Errors are one line naming the file and the
    /// problem.
    pub fn load(
        certs_dir: Option<&Path>,
        psk_file: Option<&Path>,
        verify_peer: bool,
    ) -> Result<Self, String> {
        let inner = match (psk_file, certs_dir) {
            (Some(psk_file), _) => Inner::Psk(psk::PskConfig::load(psk_file)?),
            (None, Some(dir)) => Inner::X509(x509::X509Config::load(dir, verify_peer)?),
            (None, None) => {
                return Err("TLS needs --tls-certificates DIR or --tls-psk FILE".to_owned());
            }
        };
        Ok(Self { inner })
    }

    /// A fresh server session for one connection.
    pub fn new_session(&self) -> io::Result<Box<dyn TlsSession>> {
        match &self.inner {
            Inner::X509(cfg) => Ok(Box::new(cfg.new_session()?)),
            Inner::Psk(cfg) => Ok(Box::new(cfg.new_session()?)),
        }
    }

    /// `"x509"` or `"psk"`, for the startup log line.
    pub fn kind(&self) -> &'static str {
        match self.inner {
            Inner::X509(_) => "x509",
            Inner::Psk(_) => "psk",
        }
    }
}

impl std::fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material: only the kind.
        f.debug_struct("TlsServerConfig")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_without_credentials_is_a_one_line_error() {
        let err = TlsServerConfig::load(None, None, false).unwrap_err();
        assert!(err.contains("--tls-certificates"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn psk_takes_precedence_over_certificates() {
        let dir = std::env::temp_dir().join(format!("nbdd-tls-prec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let psk = dir.join("keys.psk");
        std::fs::write(&psk, "alice:00112233445566778899aabbccddeeff\n").unwrap();
        // The certificate directory is empty: loading it would fail, so a
        // success proves the PSK file won.
        let cfg = TlsServerConfig::load(Some(&dir), Some(&psk), true).unwrap();
        assert_eq!(cfg.kind(), "psk");
        assert!(!format!("{cfg:?}").contains("0011"));
        let session = cfg.new_session().unwrap();
        assert!(session.is_handshaking());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
