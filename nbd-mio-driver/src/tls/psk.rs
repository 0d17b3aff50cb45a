//! Pre-shared key sessions through OpenSSL.
//!
//! rustls has no external PSK (dependencies.md 2.1), so PSK runs on OpenSSL,
//! made sans-IO by giving `SslStream` an in-memory [`Pipe`] whose reads say
//! `WouldBlock` when empty (the recipe verified in dependencies.md 2.2).
//!
//! Security choices:
//! - TLS 1.3 (preferred) and TLS 1.2 only. OpenSSL's TLS 1.3 PSK uses
//!   `psk_dhe_ke` unless `SSL_OP_ALLOW_NO_DHE_KEX` is set, so it is forward
//!   secret; the TLS 1.2 list holds only ECDHE-PSK suites for the same reason.
//! - No tickets, no session cache, no renegotiation: NBD clients never
//!   resume, and a TLS 1.2 peer renegotiating in a loop would only cost CPU.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use openssl::ex_data::Index;
use openssl::ssl::{
    ErrorCode, ShutdownState, Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions,
    SslSessionCacheMode, SslStream, SslVersion,
};

use super::psk_file::PskKeys;
use super::{SESSION_BUFFER_LIMIT, TlsSession};

/// TLS 1.2 suites offered to PSK clients: ECDHE-PSK only (forward secret).
/// GnuTLS clients enable them with `+ECDHE-PSK` in their priority string, as
/// libnbd and qemu do.
const TLS12_PSK_CIPHERS: &str =
    "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256";

/// Loaded PSK configuration, shared by all connections.
pub struct PskConfig {
    context: SslContext,
    identity: Index<Ssl, String>,
}

impl PskConfig {
    /// Read the psktool file at `path` and build the OpenSSL context.
    pub fn load(path: &Path) -> Result<Self, String> {
        let keys = Arc::new(PskKeys::load(path)?);
        Self::from_keys(keys).map_err(|e| format!("{}: TLS setup: {e}", path.display()))
    }

    /// A configuration from keys already parsed (`load` reads a file; the
    /// fuzz harness builds its own).
    pub fn from_keys(keys: Arc<PskKeys>) -> Result<Self, openssl::error::ErrorStack> {
        let identity = Ssl::new_ex_index::<String>()?;
        let mut builder = SslContextBuilder::new(SslMethod::tls_server())?;
        builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        builder.set_cipher_list(TLS12_PSK_CIPHERS)?;
        builder.set_options(SslOptions::NO_TICKET | SslOptions::NO_RENEGOTIATION);
        builder.set_session_cache_mode(SslSessionCacheMode::OFF);
        builder.set_num_tickets(0)?;
        builder.set_psk_server_callback(move |ssl, offered, out| {
            // Returning 0 refuses the identity; OpenSSL then fails the
            // handshake (no certificate is configured to fall back on).
            let Some(user) = offered.and_then(|id| std::str::from_utf8(id).ok()) else {
                return Ok(0);
            };
            let Some(key) = keys.get(user) else {
                log::info!("TLS-PSK: unknown user {user:?}");
                return Ok(0);
            };
            let Some(dest) = out.get_mut(..key.len()) else {
                return Ok(0);
            };
            dest.copy_from_slice(key);
            ssl.set_ex_data(identity, user.to_owned());
            Ok(key.len())
        });
        Ok(Self {
            context: builder.build(),
            identity,
        })
    }

    /// A fresh session for one connection.
    pub fn new_session(&self) -> io::Result<OpensslSession> {
        let ssl = Ssl::new(&self.context).map_err(io::Error::other)?;
        let stream = SslStream::new(ssl, Pipe::default()).map_err(io::Error::other)?;
        Ok(OpensslSession {
            stream,
            identity: self.identity,
            handshaking: true,
            peer_closed: false,
            failed: false,
            early_plaintext: Vec::new(),
        })
    }
}

/// The in-memory transport under OpenSSL. `incoming` is bounded by
/// [`SESSION_BUFFER_LIMIT`] (the feed returns a short count); `outgoing` is
/// bounded by [`OpensslSession::write_plaintext`] refusing to encrypt more
/// while it is full, plus at most one handshake flight or record.
#[derive(Default)]
struct Pipe {
    incoming: VecDeque<u8>,
    outgoing: VecDeque<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.incoming.read(buf)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An OpenSSL server connection behind [`TlsSession`].
pub struct OpensslSession {
    stream: SslStream<Pipe>,
    identity: Index<Ssl, String>,
    handshaking: bool,
    peer_closed: bool,
    /// Set after a fatal error: OpenSSL must not be driven again.
    failed: bool,
    /// Plaintext written before the handshake finished, sent right after.
    early_plaintext: Vec<u8>,
}

impl OpensslSession {
    fn fail(&mut self, what: &str, e: openssl::ssl::Error) -> io::Error {
        self.failed = true;
        io::Error::new(io::ErrorKind::InvalidData, format!("TLS-PSK {what}: {e}"))
    }

    fn drive_handshake(&mut self) -> io::Result<()> {
        match self.stream.accept() {
            Ok(()) => {
                self.handshaking = false;
                let early = std::mem::take(&mut self.early_plaintext);
                let mut sent = 0;
                while sent < early.len() {
                    match self.encrypt(&early[sent..])? {
                        0 => break,
                        n => sent += n,
                    }
                }
                // Cannot happen (the pipe never refuses a write), but if it
                // did, keep the rest rather than lose it.
                self.early_plaintext = early[sent..].to_vec();
                Ok(())
            }
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => Ok(()),
            Err(e) => Err(self.fail("handshake", e)),
        }
    }

    fn encrypt(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.stream.ssl_write(data) {
            Ok(n) => Ok(n),
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => Ok(0),
            Err(e) => Err(self.fail("write", e)),
        }
    }

    fn dead() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, "TLS-PSK: session failed")
    }
}

impl TlsSession for OpensslSession {
    fn feed_ciphertext(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(Self::dead());
        }
        let pipe = self.stream.get_mut();
        let room = SESSION_BUFFER_LIMIT.saturating_sub(pipe.incoming.len());
        let taken = data.len().min(room);
        pipe.incoming.extend(&data[..taken]);
        if self.handshaking {
            self.drive_handshake()?;
        }
        // After the handshake, records stay in the pipe until read_plaintext
        // decrypts them: that is what bounds `incoming`.
        Ok(taken)
    }

    fn read_plaintext(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(Self::dead());
        }
        if self.handshaking || self.peer_closed || out.is_empty() {
            return Ok(0);
        }
        match self.stream.ssl_read(out) {
            Ok(n) => Ok(n),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                self.peer_closed = true;
                Ok(0)
            }
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                self.peer_closed |= self.stream.get_shutdown().contains(ShutdownState::RECEIVED);
                Ok(0)
            }
            Err(e) => Err(self.fail("read", e)),
        }
    }

    fn write_plaintext(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(Self::dead());
        }
        if self.handshaking {
            let room = SESSION_BUFFER_LIMIT.saturating_sub(self.early_plaintext.len());
            let taken = data.len().min(room);
            self.early_plaintext.extend_from_slice(&data[..taken]);
            return Ok(taken);
        }
        let room = SESSION_BUFFER_LIMIT.saturating_sub(self.stream.get_ref().outgoing.len());
        if room == 0 {
            return Ok(0);
        }
        self.encrypt(&data[..data.len().min(room)])
    }

    fn wants_write(&self) -> bool {
        !self.stream.get_ref().outgoing.is_empty()
    }

    fn take_ciphertext(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.stream.get_mut().outgoing.read(out)
    }

    fn is_handshaking(&self) -> bool {
        self.handshaking
    }

    fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    fn send_close_notify(&mut self) {
        if !self.failed && !self.handshaking {
            // Sent (or Received, if the peer closed first): either way the
            // alert is now in the pipe. An error here means the connection
            // is already broken, and the loop is closing it anyway.
            let _ = self.stream.shutdown();
        }
    }

    fn peer_identity(&self) -> Option<String> {
        self.stream.ssl().ex_data(self.identity).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> OpensslSession {
        let keys = Arc::new(PskKeys::parse("alice:00112233445566778899aabbccddeeff\n").unwrap());
        PskConfig::from_keys(keys).unwrap().new_session().unwrap()
    }

    #[test]
    fn garbage_is_a_handshake_error_not_a_panic() {
        let mut s = session();
        assert!(s.feed_ciphertext(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(s.feed_ciphertext(b"more").is_err(), "stays failed");
        assert!(s.read_plaintext(&mut [0; 16]).is_err());
        assert!(s.write_plaintext(b"x").is_err());
    }

    #[test]
    fn incoming_bytes_are_bounded() {
        let mut s = session();
        // Full-size handshake records carrying one 128 KiB ClientHello (under OpenSSL's 131396-byte cap) that is
        // still incomplete when the pipe fills: OpenSSL waits for the rest,
        // so each feed must stop at the pipe's limit instead of taking all.
        let mut flood = Vec::new();
        for i in 0..10 {
            flood.extend_from_slice(&[0x16, 0x03, 0x01, 0x40, 0x00]);
            let mut body = vec![0u8; 0x4000];
            if i == 0 {
                body[..4].copy_from_slice(&[0x01, 0x02, 0x00, 0x00]); // ClientHello, 128 KiB
            }
            flood.extend_from_slice(&body);
        }
        let first = s.feed_ciphertext(&flood).unwrap();
        assert_eq!(first, SESSION_BUFFER_LIMIT);
        assert!(s.is_handshaking());
        assert!(s.stream.get_ref().incoming.len() <= SESSION_BUFFER_LIMIT);
        let second = s.feed_ciphertext(&flood[first..]).unwrap();
        assert!(
            second > 0 && second <= SESSION_BUFFER_LIMIT,
            "took {second}"
        );
        assert!(s.stream.get_ref().incoming.len() <= SESSION_BUFFER_LIMIT);
    }

    #[test]
    fn writes_before_the_handshake_are_buffered_up_to_the_limit() {
        let mut s = session();
        let big = vec![7u8; SESSION_BUFFER_LIMIT + 10];
        assert_eq!(s.write_plaintext(&big).unwrap(), SESSION_BUFFER_LIMIT);
        assert_eq!(s.write_plaintext(b"x").unwrap(), 0);
        assert!(!s.wants_write(), "nothing is sent before the client hello");
    }
}
