//! The harness's client side of TLS: after the STARTTLS ACK, a real rustls
//! client (TLS 1.3, trusting the harness's certificate) carries the rest
//! of the fuzzer's client bytes as plaintext, so negotiation and
//! transmission over TLS reach the same checks as in the clear.

use std::io::{Read, Write};

use rustls::ClientConnection;
use rustls::pki_types::ServerName;

/// One client TLS session.
pub struct TlsClient {
    conn: ClientConnection,
    /// The server's records did not decrypt (it failed its side first, on
    /// bytes the fuzzer sent before reading the ACK): nothing more is
    /// checked.
    pub failed: bool,
}

impl TlsClient {
    pub fn new() -> Self {
        let name = ServerName::try_from("localhost").expect("name");
        let config = crate::tls::fuzzing::client_config();
        Self {
            conn: ClientConnection::new(config, name).expect("client session"),
            failed: false,
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Plaintext to send; returns how much rustls took (it buffers a
    /// bounded amount until the handshake completes).
    pub fn send(&mut self, plain: &[u8]) -> usize {
        if self.failed {
            return 0;
        }
        self.conn.writer().write(plain).unwrap_or(0)
    }

    /// Ciphertext for the server, appended to `out`.
    pub fn ciphertext(&mut self, out: &mut Vec<u8>) {
        while !self.failed && self.conn.wants_write() {
            if self.conn.write_tls(out).is_err() {
                self.failed = true;
            }
        }
    }

    /// Ciphertext from the server; its plaintext is appended to `plain`.
    pub fn receive(&mut self, mut cipher: &[u8], plain: &mut Vec<u8>) {
        while !self.failed && !cipher.is_empty() {
            match self.conn.read_tls(&mut cipher) {
                Ok(0) | Err(_) => self.failed = true,
                Ok(_) => {}
            }
            if self.conn.process_new_packets().is_err() {
                self.failed = true;
            }
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match self.conn.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => plain.extend_from_slice(&chunk[..n]),
                    // WouldBlock: no more plaintext yet; an unexpected
                    // EOF: the server is gone.
                    Err(_) => break,
                }
            }
        }
    }
}
