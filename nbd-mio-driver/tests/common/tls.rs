//! TLS fixtures for the end-to-end tests: a throw-away PKI made by
//! tests/pki/make-pki.sh, client credential directories in the layouts qemu
//! and libnbd read, TLS URIs and qemu `--object` strings, and a raw NBD
//! client that can STARTTLS with rustls to check exact reply codes.
//!
//! Not declared in `common/mod.rs` (so other test binaries do not compile
//! it): a test binary includes it with `#[path = "common/tls.rs"] mod tls;`
//! next to `mod common;`.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::common::{Server, TempDir, Transport, require_tool};

/// A fresh PKI: CA, server and client certificates, a rogue CA and client,
/// and `keys.psk` for user `alice` (see tests/pki/make-pki.sh).
pub struct Pki {
    dir: TempDir,
}

/// How a client authenticates.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// X.509: a directory with `ca-cert.pem` (and optionally
    /// `client-cert.pem`/`client-key.pem`).
    X509(PathBuf),
    /// PSK: a user name and a directory holding `keys.psk`.
    Psk {
        /// The PSK identity.
        user: String,
        /// Directory with `keys.psk` (qemu reads the file by that name).
        dir: PathBuf,
    },
}

impl Pki {
    /// Runs make-pki.sh into a private directory.
    ///
    /// # Panics
    /// If certtool/psktool are missing (with the apt-get line) or the script
    /// fails.
    pub fn new() -> Self {
        require_tool("certtool", "gnutls-bin");
        require_tool("psktool", "gnutls-bin");
        let dir = TempDir::new("pki");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pki/make-pki.sh");
        let out = Command::new("sh")
            .arg(&script)
            .arg(dir.path().join("pki"))
            .output()
            .expect("run make-pki.sh");
        assert!(
            out.status.success(),
            "make-pki.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    /// The server's `--tls-certificates` directory. It also holds the CA and
    /// the good client certificate, so it doubles as a full client directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// The server's `--tls-psk` file (user `alice`).
    pub fn psk_file(&self) -> PathBuf {
        self.dir().join("keys.psk")
    }

    /// The hex key of `alice`.
    pub fn psk_hex(&self) -> String {
        let text = std::fs::read_to_string(self.psk_file()).expect("read keys.psk");
        text.trim()
            .strip_prefix("alice:")
            .expect("keys.psk starts with alice:")
            .to_owned()
    }

    /// A client with the CA and the good client certificate.
    pub fn x509_client(&self) -> ClientAuth {
        ClientAuth::X509(self.dir())
    }

    /// A client that trusts the CA but has no certificate of its own.
    pub fn x509_anonymous(&self) -> ClientAuth {
        let d = self.subdir("anon");
        copy(&self.dir().join("ca-cert.pem"), &d.join("ca-cert.pem"));
        ClientAuth::X509(d)
    }

    /// A client whose certificate comes from the rogue CA. Its
    /// `ca-cert.pem` holds both CAs: the real one to trust the server, the
    /// rogue one because qemu checks its own certificate against that file.
    pub fn x509_rogue(&self) -> ClientAuth {
        let d = self.subdir("rogue-client");
        let mut cas = std::fs::read(self.dir().join("ca-cert.pem")).expect("read CA");
        cas.extend(std::fs::read(self.dir().join("rogue/ca-cert.pem")).expect("read rogue CA"));
        std::fs::write(d.join("ca-cert.pem"), cas).expect("write CA bundle");
        for f in ["client-cert.pem", "client-key.pem"] {
            copy(&self.dir().join("rogue").join(f), &d.join(f));
        }
        ClientAuth::X509(d)
    }

    /// The good PSK client (`alice` with the server's key).
    pub fn psk_client(&self) -> ClientAuth {
        ClientAuth::Psk {
            user: "alice".into(),
            dir: self.dir(),
        }
    }

    /// A PSK client with an arbitrary user and hex key (for negative tests).
    pub fn psk_custom(&self, tag: &str, user: &str, hex: &str) -> ClientAuth {
        let d = self.subdir(tag);
        std::fs::write(d.join("keys.psk"), format!("{user}:{hex}\n")).expect("write keys.psk");
        ClientAuth::Psk {
            user: user.into(),
            dir: d,
        }
    }

    fn subdir(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).expect("mkdir client dir");
        d
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

/// The `nbds://` URI of the default export for `auth` (libnbd syntax: the
/// PSK user is the URI's user part; libnbd 1.14 has no `tls-username`).
pub fn tls_uri(server: &Server, auth: &ClientAuth) -> String {
    let (user, query) = match auth {
        ClientAuth::X509(d) => (String::new(), format!("tls-certificates={}", d.display())),
        ClientAuth::Psk { user, dir } => (
            format!("{user}@"),
            format!("tls-psk-file={}", dir.join("keys.psk").display()),
        ),
    };
    match server.transport {
        Transport::Unix => format!(
            "nbds+unix://{user}/?socket={}&{query}",
            server.socket.display()
        ),
        Transport::Tcp => format!("nbds://{user}127.0.0.1:{}/?{query}", server.port),
    }
}

/// qemu's `--object` for `auth`, with id `tls0`.
pub fn qemu_tls_object(auth: &ClientAuth) -> String {
    match auth {
        ClientAuth::X509(d) => {
            format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", d.display())
        }
        ClientAuth::Psk { user, dir } => format!(
            "tls-creds-psk,id=tls0,endpoint=client,dir={},username={user}",
            dir.display()
        ),
    }
}

/// qemu `--image-opts` for the default export over TLS object `tls0`. The
/// server certificate names `localhost`; over a Unix socket qemu has no host
/// name to check unless told.
pub fn qemu_tls_image_opts(server: &Server) -> String {
    format!(
        "{},tls-creds=tls0,tls-hostname=localhost",
        server.qemu_image_opts("")
    )
}

// ------------------------------------------------------------ raw client

/// `IHAVEOPT`, the option request magic.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Option reply magic.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Reply types.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_ERR_UNSUP`.
pub const ERR_UNSUP: u32 = 0x8000_0001;
/// `NBD_REP_ERR_INVALID`.
pub const ERR_INVALID: u32 = 0x8000_0003;
/// `NBD_REP_ERR_TLS_REQD`.
pub const ERR_TLS_REQD: u32 = 0x8000_0005;
/// Option numbers.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS`.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Simple reply magic.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Structured reply magic.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// How long a raw client waits for any one read.
const RAW_TIMEOUT: Duration = Duration::from_secs(20);

enum Wire {
    Plain(UnixStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, UnixStream>>),
}

/// A hand-driven NBD client on a Unix socket, plaintext until
/// [`RawClient::start_tls`].
pub struct RawClient {
    wire: Wire,
}

/// One option reply: its type and payload.
#[derive(Debug)]
pub struct OptReply {
    /// `NBD_REP_*`.
    pub kind: u32,
    /// The reply's data.
    pub data: Vec<u8>,
}

impl RawClient {
    /// Connects and completes the fixed-newstyle greeting (client flags
    /// FIXED_NEWSTYLE | NO_ZEROES).
    pub fn connect(server: &Server) -> Self {
        assert_eq!(server.transport, Transport::Unix, "raw client: Unix only");
        let sock = UnixStream::connect(&server.socket).expect("connect");
        sock.set_read_timeout(Some(RAW_TIMEOUT)).expect("timeout");
        let mut c = Self {
            wire: Wire::Plain(sock),
        };
        let mut greet = [0u8; 18];
        c.read_exact(&mut greet).expect("greeting");
        assert_eq!(&greet[..8], b"NBDMAGIC");
        assert_eq!(
            u64::from_be_bytes(greet[8..16].try_into().unwrap()),
            IHAVEOPT
        );
        c.write_all(&3u32.to_be_bytes()).expect("client flags");
        c
    }

    /// The option request bytes.
    pub fn option_bytes(opt: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + data.len());
        v.extend(IHAVEOPT.to_be_bytes());
        v.extend(opt.to_be_bytes());
        v.extend((data.len() as u32).to_be_bytes());
        v.extend(data);
        v
    }

    /// Sends option `opt` and reads replies up to the final one (ACK or an
    /// error); INFO/SERVER replies before it are returned too.
    pub fn option(&mut self, opt: u32, data: &[u8]) -> Vec<OptReply> {
        self.write_all(&Self::option_bytes(opt, data))
            .expect("send option");
        self.replies(opt)
    }

    /// Reads option replies for `opt` up to the final one.
    pub fn replies(&mut self, opt: u32) -> Vec<OptReply> {
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.read_exact(&mut h).expect("option reply header");
            assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), REPLY_MAGIC);
            assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), opt);
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            let mut data = vec![0u8; len];
            self.read_exact(&mut data).expect("option reply data");
            let last = kind == REP_ACK || kind & 0x8000_0000 != 0;
            out.push(OptReply { kind, data });
            if last {
                return out;
            }
        }
    }

    /// Sends STARTTLS, expects ACK, then runs a rustls handshake as `auth`
    /// (X.509 only: rustls has no external PSK). With `pipelined`, the
    /// ClientHello leaves in the same write as the option, before the ACK
    /// is read: the server must feed bytes it already read to the session.
    pub fn start_tls(mut self, auth: &ClientAuth, pipelined: bool) -> io::Result<Self> {
        let ClientAuth::X509(dir) = auth else {
            panic!("raw TLS client: X.509 only");
        };
        let mut conn = rustls::ClientConnection::new(
            Arc::new(rustls_config(dir)),
            ServerName::try_from("localhost").expect("server name"),
        )
        .map_err(io::Error::other)?;
        let mut first = Self::option_bytes(OPT_STARTTLS, &[]);
        if pipelined {
            conn.write_tls(&mut first)?;
        }
        self.write_all(&first)?;
        let ack = self.replies(OPT_STARTTLS);
        assert_eq!(ack.len(), 1);
        assert_eq!(ack[0].kind, REP_ACK, "STARTTLS must be ACKed");
        let Wire::Plain(mut sock) = self.wire else {
            panic!("TLS already active");
        };
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        Ok(Self {
            wire: Wire::Tls(Box::new(rustls::StreamOwned::new(conn, sock))),
        })
    }

    /// Sends TLS close_notify (no-op in plaintext).
    pub fn send_close_notify(&mut self) {
        if let Wire::Tls(s) = &mut self.wire {
            s.conn.send_close_notify();
            let _ = s.conn.complete_io(&mut s.sock);
        }
    }

    /// `Ok` when the server closes the connection (EOF, reset or a TLS
    /// alert) within the read timeout; `Err` says what it did instead.
    pub fn server_closes(&mut self) -> Result<(), String> {
        let mut buf = [0u8; 4096];
        match self.read(&mut buf) {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!("server sent {n} more bytes instead of closing")),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err("server kept the connection open".into())
            }
            Err(_) => Ok(()),
        }
    }

    /// Sends `data` without ever reading from the socket (rustls'
    /// `complete_io` may read; a client that never reads is the point of
    /// back-pressure tests).
    pub fn send_without_reading(&mut self, data: &[u8]) {
        match &mut self.wire {
            Wire::Plain(s) => s.write_all(data).expect("send"),
            Wire::Tls(s) => {
                s.conn.writer().write_all(data).expect("encrypt");
                while s.conn.wants_write() {
                    s.conn.write_tls(&mut s.sock).expect("send ciphertext");
                }
            }
        }
    }

    /// Writes raw bytes (through TLS when active).
    pub fn send_raw(&mut self, data: &[u8]) {
        self.write_all(data).expect("send");
    }

    /// The underlying socket (for shutting it down without close_notify).
    pub fn socket(&self) -> &UnixStream {
        match &self.wire {
            Wire::Plain(s) => s,
            Wire::Tls(s) => &s.sock,
        }
    }
}

impl Read for RawClient {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.wire {
            Wire::Plain(s) => s.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl Write for RawClient {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.wire {
            Wire::Plain(s) => s.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.wire {
            Wire::Plain(s) => s.flush(),
            Wire::Tls(s) => s.flush(),
        }
    }
}

/// A rustls client trusting `dir/ca-cert.pem`, presenting
/// `dir/client-{cert,key}.pem` when present.
fn rustls_config(dir: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(&dir.join("ca-cert.pem")) {
        roots.add(cert).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let cert = dir.join("client-cert.pem");
    if cert.exists() {
        let key = std::fs::read(dir.join("client-key.pem")).expect("read client key");
        let pkey = openssl::pkey::PKey::private_key_from_pem(&key).expect("parse client key");
        let der = PrivateKeyDer::Pkcs8(pkey.private_key_to_pkcs8().expect("pkcs8").into());
        builder
            .with_client_auth_cert(load_certs(&cert), der)
            .expect("client cert")
    } else {
        builder.with_no_client_auth()
    }
}

fn load_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let mut reader = io::BufReader::new(
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display())),
    );
    rustls_pemfile::certs(&mut reader)
        .map(|c| c.expect("PEM certificate"))
        .collect()
}

/// The pid of the server process listening on `server.socket` (found in
/// /proc by its command line), for memory checks.
pub fn server_pid(server: &Server) -> u32 {
    let needle = server.socket.display().to_string();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|&b| b == 0)
            .any(|arg| arg == needle.as_bytes())
        {
            return pid;
        }
    }
    panic!("no process has {needle} on its command line");
}

/// Resident memory of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}
