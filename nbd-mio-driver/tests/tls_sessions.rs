//! nbd_mio_driver::tls as the event loop uses it: in-memory handshakes with
//! rustls and OpenSSL clients (bytes shuttled by hand, respecting the short
//! feeds of the session contract), then real GnuTLS peers (`gnutls-cli`, the
//! library behind qemu and libnbd) over loopback sockets.
//!
//! Certificates and PSK keys are made at test time by tests/pki/make-pki.sh
//! (certtool and psktool; `apt-get install gnutls-bin`).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nbd_mio_driver::tls::{SESSION_BUFFER_LIMIT, TlsServerConfig, TlsSession};
use openssl::ssl::{ShutdownState, SslContextBuilder, SslMethod, SslStream, SslVersion};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const MIB: usize = 1024 * 1024;
const DEADLINE: Duration = Duration::from_secs(30);

#[path = "tls_sessions/gnutls.rs"]
mod gnutls;

// ---------------------------------------------------------------- fixtures

/// The PKI of tests/pki/make-pki.sh, made once per test binary.
fn pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        for tool in ["certtool", "psktool", "gnutls-cli"] {
            if Command::new(tool).arg("--version").output().is_err() {
                panic!("{tool} not found: apt-get install gnutls-bin");
            }
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls-pki");
        let _ = std::fs::remove_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pki/make-pki.sh");
        let out = Command::new("sh").arg(&script).arg(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "make-pki.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn psk_hex() -> String {
    let text = std::fs::read_to_string(pki().join("keys.psk")).unwrap();
    text.trim().strip_prefix("alice:").unwrap().to_owned()
}

fn x509_server(verify_peer: bool) -> TlsServerConfig {
    TlsServerConfig::load(Some(pki()), None, verify_peer).unwrap()
}

fn psk_server() -> TlsServerConfig {
    TlsServerConfig::load(None, Some(&pki().join("keys.psk")), false).unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ------------------------------------------------- in-memory client peers

/// The client end of an in-memory connection.
trait Peer {
    fn feed(&mut self, ciphertext: &[u8]);
    fn take(&mut self) -> Vec<u8>;
    fn read_all(&mut self) -> Vec<u8>;
    fn write(&mut self, data: &[u8]) -> usize;
    fn close(&mut self);
    fn closed_by_peer(&mut self) -> bool;
    fn handshaking(&self) -> bool;
}

/// A rustls client; `received` holds plaintext drained during feeds, since
/// rustls refuses more ciphertext while 16 KiB of plaintext is unread.
struct RustlsClient {
    conn: rustls::ClientConnection,
    received: Vec<u8>,
}

impl RustlsClient {
    fn drain(&mut self) {
        if let Err(e) = self.conn.reader().read_to_end(&mut self.received) {
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        }
    }
}

impl Peer for RustlsClient {
    fn feed(&mut self, mut ciphertext: &[u8]) {
        while !ciphertext.is_empty() {
            self.conn.read_tls(&mut ciphertext).unwrap();
            self.conn.process_new_packets().unwrap();
            self.drain();
        }
    }
    fn take(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out).unwrap();
        }
        out
    }
    fn read_all(&mut self) -> Vec<u8> {
        self.drain();
        std::mem::take(&mut self.received)
    }
    fn write(&mut self, data: &[u8]) -> usize {
        // rustls's own default buffer limit (64 KiB) makes this short.
        self.conn.writer().write(data).unwrap()
    }
    fn close(&mut self) {
        self.conn.send_close_notify();
    }
    fn closed_by_peer(&mut self) -> bool {
        self.conn.process_new_packets().unwrap().peer_has_closed()
    }
    fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }
}

/// OpenSSL's transport for the test client: reads say WouldBlock when empty.
#[derive(Default)]
struct MemPipe {
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Read for MemPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.drain(..n);
        Ok(n)
    }
}

impl Write for MemPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct OpensslClient {
    stream: SslStream<MemPipe>,
    connected: bool,
}

impl OpensslClient {
    fn new(user: &str, key: Vec<u8>, max: Option<SslVersion>) -> Self {
        let mut builder = SslContextBuilder::new(SslMethod::tls_client()).unwrap();
        builder.set_max_proto_version(max).unwrap();
        builder
            .set_cipher_list("ECDHE-PSK-CHACHA20-POLY1305")
            .unwrap();
        let identity = format!("{user}\0").into_bytes();
        builder.set_psk_client_callback(move |_, _, id_out, key_out| {
            id_out[..identity.len()].copy_from_slice(&identity);
            key_out[..key.len()].copy_from_slice(&key);
            Ok(key.len())
        });
        let ssl = openssl::ssl::Ssl::new(&builder.build()).unwrap();
        let mut stream = SslStream::new(ssl, MemPipe::default()).unwrap();
        let _ = stream.connect(); // writes the ClientHello, then WANT_READ
        Self {
            stream,
            connected: false,
        }
    }
}

impl Peer for OpensslClient {
    fn feed(&mut self, ciphertext: &[u8]) {
        self.stream.get_mut().input.extend_from_slice(ciphertext);
        if !self.connected {
            match self.stream.connect() {
                Ok(()) => self.connected = true,
                Err(e) if e.code() == openssl::ssl::ErrorCode::WANT_READ => {}
                Err(e) => panic!("client handshake: {e}"),
            }
        }
    }
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.stream.get_mut().output)
    }
    fn read_all(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 16384];
        while self.connected {
            match self.stream.ssl_read(&mut buf) {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break, // WANT_READ or ZERO_RETURN
            }
        }
        out
    }
    fn write(&mut self, data: &[u8]) -> usize {
        self.stream.ssl_write(data).unwrap()
    }
    fn close(&mut self) {
        let _ = self.stream.shutdown();
    }
    fn closed_by_peer(&mut self) -> bool {
        let _ = self.read_all();
        self.stream.get_shutdown().contains(ShutdownState::RECEIVED)
    }
    fn handshaking(&self) -> bool {
        !self.connected
    }
}

/// Both ends of one in-memory connection plus what each side received.
struct Link<P: Peer> {
    server: Box<dyn TlsSession>,
    client: P,
    at_server: Vec<u8>,
    at_client: Vec<u8>,
    short_feeds: usize,
}

impl<P: Peer> Link<P> {
    fn new(server: Box<dyn TlsSession>, client: P) -> Self {
        Self {
            server,
            client,
            at_server: Vec::new(),
            at_client: Vec::new(),
            short_feeds: 0,
        }
    }

    /// One round: client bytes into the server (honouring short feeds, and
    /// draining plaintext after every feed as the loop must), server bytes
    /// into the client. Returns whether anything moved.
    fn pump(&mut self) -> io::Result<bool> {
        let mut moved = false;
        let to_server = self.client.take();
        let mut rest = &to_server[..];
        while !rest.is_empty() {
            let n = self.server.feed_ciphertext(rest)?;
            if n < rest.len() {
                self.short_feeds += 1;
            }
            let drained = drain(self.server.as_mut(), &mut self.at_server)?;
            assert!(
                n > 0 || drained > 0,
                "session neither consumed nor produced"
            );
            rest = &rest[n..];
            moved = true;
        }
        drain(self.server.as_mut(), &mut self.at_server)?;
        let mut buf = vec![0u8; 16384];
        while self.server.wants_write() {
            let n = self.server.take_ciphertext(&mut buf)?;
            assert!(n > 0, "wants_write but took nothing");
            self.client.feed(&buf[..n]);
            moved = true;
        }
        let got = self.client.read_all();
        self.at_client.extend_from_slice(&got);
        Ok(moved)
    }

    fn settle(&mut self) -> io::Result<()> {
        for _ in 0..10_000 {
            if !self.pump()? {
                return Ok(());
            }
        }
        panic!("link never settled");
    }

    fn handshake(&mut self) -> io::Result<()> {
        self.settle()?;
        assert!(!self.server.is_handshaking());
        assert!(!self.client.handshaking());
        Ok(())
    }

    /// Push `data` through the server's bounded write_plaintext.
    fn server_send(&mut self, data: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < data.len() {
            let n = self.server.write_plaintext(&data[done..])?;
            assert!(n <= SESSION_BUFFER_LIMIT, "write took {n} at once");
            done += n;
            self.pump()?;
        }
        self.settle()
    }
}

fn drain(server: &mut dyn TlsSession, into: &mut Vec<u8>) -> io::Result<usize> {
    let mut buf = [0u8; 8192];
    let mut total = 0;
    loop {
        match server.read_plaintext(&mut buf)? {
            0 => return Ok(total),
            n => {
                into.extend_from_slice(&buf[..n]);
                total += n;
            }
        }
    }
}

/// 1 MiB each way, then close_notify each way.
fn bulk_and_close<P: Peer>(link: &mut Link<P>) {
    let up = pattern(MIB, 1);
    let mut sent = 0;
    while sent < up.len() {
        sent += link.client.write(&up[sent..]);
        link.pump().unwrap();
    }
    link.settle().unwrap();
    assert_eq!(link.at_server.len(), up.len());
    assert!(link.at_server == up, "client→server bytes differ");
    assert!(
        link.short_feeds > 0,
        "1 MiB in one feed must hit the buffer limit"
    );

    let down = pattern(MIB, 2);
    link.server_send(&down).unwrap();
    assert_eq!(link.at_client.len(), down.len());
    assert!(link.at_client == down, "server→client bytes differ");

    assert!(!link.server.peer_closed());
    link.client.close();
    link.settle().unwrap();
    assert!(link.server.peer_closed());
    link.server.send_close_notify();
    link.settle().unwrap();
    assert!(link.client.closed_by_peer());
}

fn rustls_client(
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_auth: Option<&Path>,
) -> RustlsClient {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(&pki().join("ca-cert.pem")) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match client_auth {
        Some(prefix) => {
            let cert = load_certs(&prefix.with_file_name(format!("{}-cert.pem", name(prefix))));
            let key = load_key(&prefix.with_file_name(format!("{}-key.pem", name(prefix))));
            builder.with_client_auth_cert(cert, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let server_name = ServerName::try_from("localhost").unwrap();
    RustlsClient {
        conn: rustls::ClientConnection::new(Arc::new(config), server_name).unwrap(),
        received: Vec::new(),
    }
}

fn name(prefix: &Path) -> String {
    prefix.file_name().unwrap().to_string_lossy().into_owned()
}

fn load_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let mut reader = io::BufReader::new(std::fs::File::open(path).unwrap());
    rustls_pemfile::certs(&mut reader)
        .map(Result::unwrap)
        .collect()
}

/// certtool's SEC1 EC keys, re-encoded as PKCS#8 for ring (as the server's
/// loader does).
fn load_key(path: &Path) -> PrivateKeyDer<'static> {
    let pem = std::fs::read(path).unwrap();
    let pkey = openssl::pkey::PKey::private_key_from_pem(&pem).unwrap();
    PrivateKeyDer::Pkcs8(pkey.private_key_to_pkcs8().unwrap().into())
}

fn psk_client(user: &str, key_hex: &str, max: Option<SslVersion>) -> OpensslClient {
    let key = (0..key_hex.len() / 2)
        .map(|i| u8::from_str_radix(&key_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    OpensslClient::new(user, key, max)
}

// ------------------------------------------------------ in-memory tests

#[test]
fn x509_rustls_client_tls13_bulk_both_ways_and_close_notify() {
    let server = x509_server(false).new_session().unwrap();
    let mut link = Link::new(server, rustls_client(&[&rustls::version::TLS13], None));
    link.handshake().unwrap();
    assert_eq!(link.server.peer_identity(), None, "no client certificate");
    bulk_and_close(&mut link);
}

#[test]
fn x509_rustls_client_tls12_is_accepted() {
    let server = x509_server(false).new_session().unwrap();
    let mut link = Link::new(server, rustls_client(&[&rustls::version::TLS12], None));
    link.handshake().unwrap();
    assert_eq!(
        link.client.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(link.client.write(b"NBDMAGIC"), 8);
    link.settle().unwrap();
    assert_eq!(link.at_server, b"NBDMAGIC");
}

#[test]
fn plaintext_written_during_the_handshake_is_sent_after_it() {
    for server in [x509_server(false), psk_server()] {
        let mut session = server.new_session().unwrap();
        assert!(session.is_handshaking());
        assert_eq!(session.write_plaintext(b"early").unwrap(), 5);
        if server.kind() == "x509" {
            let mut link = Link::new(session, rustls_client(&[&rustls::version::TLS13], None));
            link.handshake().unwrap();
            link.settle().unwrap();
            assert_eq!(link.at_client, b"early");
        } else {
            let mut link = Link::new(session, psk_client("alice", &psk_hex(), None));
            link.handshake().unwrap();
            link.settle().unwrap();
            assert_eq!(link.at_client, b"early");
        }
    }
}

#[test]
fn x509_verify_peer_accepts_a_client_certificate_from_the_ca() {
    let server = x509_server(true).new_session().unwrap();
    let client = rustls_client(&[&rustls::version::TLS13], Some(&pki().join("client")));
    let mut link = Link::new(server, client);
    link.handshake().unwrap();
    let who = link.server.peer_identity().unwrap();
    assert!(who.contains("CN=alice"), "{who}");
    bulk_and_close(&mut link);
}

#[test]
fn x509_verify_peer_refuses_a_certificate_from_another_ca() {
    let server = x509_server(true).new_session().unwrap();
    let client = rustls_client(
        &[&rustls::version::TLS13],
        Some(&pki().join("rogue/client")),
    );
    let mut link = Link::new(server, client);
    let err = link.settle().unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    assert!(
        link.server
            .feed_ciphertext(b"\x17\x03\x03\x00\x01x")
            .is_err(),
        "stays failed"
    );
}

#[test]
fn x509_verify_peer_refuses_a_client_without_certificate() {
    let server = x509_server(true).new_session().unwrap();
    let mut link = Link::new(server, rustls_client(&[&rustls::version::TLS13], None));
    let err = link.settle().unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[test]
fn psk_openssl_client_tls13_bulk_both_ways_and_close_notify() {
    let server = psk_server().new_session().unwrap();
    let mut link = Link::new(server, psk_client("alice", &psk_hex(), None));
    link.handshake().unwrap();
    assert_eq!(link.server.peer_identity().as_deref(), Some("alice"));
    assert_eq!(link.client.stream.ssl().version_str(), "TLSv1.3");
    bulk_and_close(&mut link);
}

#[test]
fn psk_openssl_client_tls12_gets_a_forward_secret_suite() {
    let server = psk_server().new_session().unwrap();
    let client = psk_client("alice", &psk_hex(), Some(SslVersion::TLS1_2));
    let mut link = Link::new(server, client);
    link.handshake().unwrap();
    let ssl = link.client.stream.ssl();
    assert_eq!(ssl.version_str(), "TLSv1.2");
    let suite = ssl.current_cipher().unwrap().name();
    assert!(suite.starts_with("ECDHE-PSK-"), "{suite}");
    bulk_and_close(&mut link);
}

#[test]
fn psk_wrong_key_fails_the_handshake() {
    let wrong = "00".repeat(32);
    let server = psk_server().new_session().unwrap();
    let mut link = Link::new(server, psk_client("alice", &wrong, None));
    let err = catch_client_panic(&mut link);
    assert!(err.contains("TLS-PSK"), "{err}");
}

#[test]
fn psk_unknown_user_fails_the_handshake() {
    let server = psk_server().new_session().unwrap();
    let mut link = Link::new(server, psk_client("mallory", &psk_hex(), None));
    let err = catch_client_panic(&mut link);
    assert!(err.contains("TLS-PSK"), "{err}");
    assert_eq!(link.server.peer_identity(), None);
}

/// Run the handshake expecting the *server* to fail; the OpenSSL test
/// client may see the alert first, but only the server's error counts.
fn catch_client_panic(link: &mut Link<OpensslClient>) -> String {
    for _ in 0..100 {
        let to_server = link.client.take();
        if let Err(e) = link.server.feed_ciphertext(&to_server) {
            return e.to_string();
        }
        let mut buf = vec![0u8; 16384];
        let n = link.server.take_ciphertext(&mut buf).unwrap();
        link.client
            .stream
            .get_mut()
            .input
            .extend_from_slice(&buf[..n]);
        let _ = link.client.stream.connect();
    }
    panic!("server accepted a bad PSK");
}
