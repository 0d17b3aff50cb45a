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

use super::{SESSION_BUFFER_LIMIT, TlsSession, keys};

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
        let key = keys::check_key(
            &read_key(&key_path)?,
            &key_path,
            &certs[0],
            &cert_path,
            &provider(),
        )?;
        let client_cas = if verify_peer {
            let ca_path = dir.join("ca-cert.pem");
            let mut roots = RootCertStore::empty();
            for cert in read_certs(&ca_path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", ca_path.display()))?;
            }
            Some(roots)
        } else {
            None
        };
        // check_key has already matched the key to the certificate and
        // loaded it, so an error left here is about the chain or the CAs.
        Self::new(certs, key, client_cas).map_err(|e| format!("{}: {e}", dir.display()))
    }

    /// A configuration from credentials already in memory (`load` reads
    /// and checks them from files; the fuzz harness makes its own). With
    /// `client_cas`, every client must present a certificate they signed.
    pub fn new(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_cas: Option<RootCertStore>,
    ) -> Result<Self, rustls::Error> {
        let provider = provider();
        // TLS 1.3 is listed first and so preferred; 1.2 is the floor the NBD
        // spec requires ("MUST support TLS version 1.2").
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match client_cas {
            Some(roots) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?,
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key)?;
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
            closing: false,
        })
    }
}

/// aws-lc-rs, not ring: ring loads only RSA moduli that are a multiple of
/// 512 bits, refusing valid keys that GnuTLS and OpenSSL take (the
/// reference NBD suite's certificates use RSA 2432).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
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
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no PRIVATE KEY found", path.display()))
}

/// A rustls server connection behind [`TlsSession`].
pub struct RustlsSession {
    conn: ServerConnection,
    peer_closed: bool,
    /// Set after a fatal error: rustls must not be fed again.
    failed: bool,
    /// Set once we queued close_notify: the connection is ending, so what
    /// the peer still sends is read and dropped, never given to rustls.
    /// rustls treats close_notify as its final alert, and a bad record
    /// after it makes it send a second one, tripping its own
    /// `debug_assert!(!sent_fatal_alert)` (found by the tls_records fuzz
    /// target: close_notify, then garbage).
    closing: bool,
}

impl RustlsSession {
    fn fail(&mut self, e: rustls::Error) -> io::Error {
        self.failed = true;
        io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
    }
}

impl TlsSession for RustlsSession {
    fn feed_ciphertext(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.closing && !self.failed {
            return Ok(data.len());
        }
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
                // Any other error is fatal, as a failed process_new_packets
                // is: rustls says "message buffer full" (InvalidData) when
                // its record buffer fills without a record it can take
                // (a handshake message fragmented past its 64 KiB limit).
                // The session stays failed, so a later feed is refused too,
                // even after send_close_notify. Found by the tls_records
                // campaign (regressions `deframer_full_then_*feed`).
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
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
        self.closing = true;
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

    /// A session that sent close_notify ignores what follows instead of
    /// handing rustls records it would answer with a second alert.
    #[test]
    fn bytes_after_our_close_notify_are_dropped() {
        let (cert, key) = test_credentials();
        let cfg = X509Config::new(vec![cert], key, None).unwrap();
        let mut s = cfg.new_session().unwrap();
        s.send_close_notify();
        assert_eq!(s.feed_ciphertext(b"\x16\x03\x01garbage").unwrap(), 10);
        assert_eq!(s.read_plaintext(&mut [0; 16]).unwrap(), 0);
        let mut out = [0u8; 64];
        let n = s.take_ciphertext(&mut out).unwrap();
        assert_eq!(&out[..3], b"\x15\x03\x03", "{:?}", &out[..n]);
    }

    /// A throw-away P-256 key and self-signed certificate.
    fn test_credentials() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        use openssl::{ec, hash, nid, pkey, x509};
        let group = ec::EcGroup::from_curve_name(nid::Nid::X9_62_PRIME256V1).unwrap();
        let key = pkey::PKey::from_ec_key(ec::EcKey::generate(&group).unwrap()).unwrap();
        let mut b = x509::X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_pubkey(&key).unwrap();
        let now = openssl::asn1::Asn1Time::days_from_now(0).unwrap();
        b.set_not_before(&now).unwrap();
        b.set_not_after(&now).unwrap();
        b.sign(&key, hash::MessageDigest::sha256()).unwrap();
        let cert = b.build().to_der().unwrap();
        (
            cert.into(),
            PrivateKeyDer::Pkcs8(key.private_key_to_pkcs8().unwrap().into()),
        )
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
