//! X.509 certificate sessions through rustls.
//!
//! Configuration follows the nbdkit/qemu directory layout: `server-cert.pem`
//! (the chain, leaf first), `server-key.pem`, and `ca-cert.pem` for checking
//! client certificates when `--tls-verify-peer` is given.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use super::{SESSION_BUFFER_LIMIT, TlsSession};

/// Loaded certificate configuration, shared by all connections.
pub struct X509Config {
    config: Arc<ServerConfig>,
}

impl X509Config {
    /// Load `server-cert.pem`, `server-key.pem` and, when `verify_peer`,
    /// `ca-cert.pem` from `dir`. Errors are one line naming the file.
    pub fn load(dir: &Path, verify_peer: bool) -> Result<Self, String> {
        let cert_path = dir.join("server-cert.pem");
        let key_path = dir.join("server-key.pem");
        let certs = read_certs(&cert_path)?;
        let key = read_key(&key_path)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // TLS 1.3 is listed first and so preferred; 1.2 is the floor the NBD
        // spec requires ("MUST support TLS version 1.2").
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS configuration: {e}"))?;
        let builder = if verify_peer {
            let ca_path = dir.join("ca-cert.pem");
            let mut roots = RootCertStore::empty();
            for cert in read_certs(&ca_path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", ca_path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca_path.display()))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            format!(
                "{}: does not match {}: {e}",
                key_path.display(),
                cert_path.display()
            )
        })?;
        // No resumption. NBD clients (qemu, libnbd, nbdkit's GnuTLS) open a
        // fresh session per connection and never resume, so tickets would be
        // wasted bytes after every handshake and a shared session cache would
        // be cross-connection state for nothing.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// A fresh session for one connection.
    pub fn new_session(&self) -> io::Result<RustlsSession> {
        let mut conn = ServerConnection::new(self.config.clone()).map_err(io::Error::other)?;
        // Bounds plaintext queued by write_plaintext plus ciphertext waiting
        // for the socket. Received plaintext is capped by rustls itself
        // (16 KiB: read_tls refuses more until the reader drains it).
        conn.set_buffer_limit(Some(SESSION_BUFFER_LIMIT));
        Ok(RustlsSession {
            conn,
            peer_closed: false,
            failed: false,
        })
    }
}

fn open(path: &Path) -> Result<BufReader<File>, String> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE found", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let key = rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no PRIVATE KEY found", path.display()))?;
    match key {
        // certtool writes EC keys as SEC1 ("BEGIN EC PRIVATE KEY") with the
        // curve parameters inside, which ring 0.17 refuses ("failed to parse
        // private key as RSA, ECDSA, or EdDSA"). Re-encode them as PKCS#8
        // through OpenSSL, already linked for PSK, so certtool's output
        // works as-is (measured with gnutls-bin 3.7.9).
        PrivateKeyDer::Sec1(sec1) => {
            let pkey = openssl::pkey::PKey::private_key_from_der(sec1.secret_sec1_der())
                .and_then(|pkey| pkey.private_key_to_pkcs8())
                .map_err(|e| format!("{}: bad EC PRIVATE KEY: {e}", path.display()))?;
            Ok(PrivateKeyDer::Pkcs8(pkey.into()))
        }
        other => Ok(other),
    }
}

/// A rustls server connection behind [`TlsSession`].
pub struct RustlsSession {
    conn: ServerConnection,
    peer_closed: bool,
    /// Set after a fatal error: rustls must not be fed again.
    failed: bool,
}

impl RustlsSession {
    fn fail(&mut self, e: rustls::Error) -> io::Error {
        self.failed = true;
        io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
    }
}

impl TlsSession for RustlsSession {
    fn feed_ciphertext(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS: session failed",
            ));
        }
        let mut rest = data;
        while !rest.is_empty() {
            // read_tls pulls at most one deframer buffer's worth and refuses
            // (ErrorKind::Other) while received plaintext is full: that is
            // our back-pressure, reported as a short count.
            match self.conn.read_tls(&mut rest) {
                Ok(0) => break, // close_notify already received
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Other => break,
                Err(e) => return Err(e),
            }
            match self.conn.process_new_packets() {
                Ok(state) => self.peer_closed |= state.peer_has_closed(),
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(data.len() - rest.len())
    }

    fn read_plaintext(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self.conn.reader().read(out) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn write_plaintext(&mut self, data: &[u8]) -> io::Result<usize> {
        // rustls queues plaintext written during the handshake and encrypts
        // it once keys exist; set_buffer_limit makes this a short write.
        self.conn.writer().write(data)
    }

    fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    fn take_ciphertext(&mut self, mut out: &mut [u8]) -> io::Result<usize> {
        let mut total = 0;
        while self.conn.wants_write() && !out.is_empty() {
            let n = self.conn.write_tls(&mut out)?;
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok(total)
    }

    fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    fn peer_identity(&self) -> Option<String> {
        let leaf = self.conn.peer_certificates()?.first()?;
        Some(subject_of(leaf).unwrap_or_else(|| "unparsable client certificate".to_owned()))
    }
}

/// `CN=alice, O=Example` from a DER certificate. rustls does not parse
/// subjects, so borrow OpenSSL's parser (already linked for PSK).
fn subject_of(der: &[u8]) -> Option<String> {
    let cert = openssl::x509::X509::from_der(der).ok()?;
    let parts: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|entry| {
            let key = entry.object().nid().short_name().unwrap_or("?");
            let value = entry.data().to_string().unwrap_or_else(|_| "?".to_owned());
            format!("{key}={value}")
        })
        .collect();
    Some(parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("nbdd-x509-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_certificate_names_the_file() {
        let dir = temp_dir("missing");
        let err = X509Config::load(&dir, false).err().unwrap();
        assert!(err.contains("server-cert.pem"), "{err}");
        assert!(!err.contains('\n'));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_without_pem_blocks_is_refused() {
        let dir = temp_dir("nopem");
        std::fs::write(dir.join("server-cert.pem"), "not a certificate\n").unwrap();
        let err = X509Config::load(&dir, false).err().unwrap();
        assert!(err.contains("server-cert.pem: no CERTIFICATE"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
