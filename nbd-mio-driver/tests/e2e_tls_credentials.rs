//! TLS credentials at start-up: every valid RSA key size loads and serves
//! nbdinfo over TLS (ring refused moduli that were not a multiple of 512
//! bits), the reference NBD suite's certificate setup works, a key that
//! does not match its certificate says so (and only then), a key the
//! provider cannot use says "unsupported key: <what it is>", and a PSK file
//! others can read is warned about.
//!
//! Keys and certificates are made here with certtool and openssl
//! (`apt-get install gnutls-bin openssl`).

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, TempDir, Transport, require_tool, run, run_ok};
use tls::{ClientAuth, tls_uri};

/// Runs `cmd`, panicking with its stderr on failure.
fn must(cmd: &mut Command) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn certtool() -> Command {
    let mut c = Command::new(require_tool("certtool", "gnutls-bin"));
    c.arg("--no-text");
    c
}

fn openssl() -> Command {
    Command::new(require_tool("openssl", "openssl"))
}

/// How a private key is made.
#[derive(Clone, Copy, Debug)]
enum Key {
    /// certtool: PKCS#1 "RSA PRIVATE KEY" (what certtool writes).
    CerttoolRsa(u32),
    /// openssl genpkey: PKCS#8 "PRIVATE KEY".
    OpensslRsa(u32),
    /// ECDSA P-256 (certtool; SEC1 "EC PRIVATE KEY").
    Ec,
    /// Ed448 (openssl): valid, but no rustls provider signs with it.
    Ed448,
}

fn make_key(kind: Key, out: &Path) {
    let o = out.to_str().unwrap();
    match kind {
        Key::CerttoolRsa(bits) => must(certtool().args([
            "--generate-privkey",
            "--key-type=rsa",
            &format!("--bits={bits}"),
            "--outfile",
            o,
        ])),
        Key::OpensslRsa(bits) => must(openssl().args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            &format!("rsa_keygen_bits:{bits}"),
            "-out",
            o,
        ])),
        Key::Ec => must(certtool().args([
            "--generate-privkey",
            "--key-type=ecdsa",
            "--curve=secp256r1",
            "--outfile",
            o,
        ])),
        Key::Ed448 => must(openssl().args(["genpkey", "-algorithm", "ed448", "-out", o])),
    }
}

/// A certificate template (certtool syntax).
fn template(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\nexpiration_days = 3650\n")).unwrap();
    p
}

const SERVER_INFO: &str = "organization = nbdd test\ncn = localhost\ndns_name = localhost\n\
                           tls_www_server\nencryption_key\nsigning_key";

/// A self-signed CA in `dir/ca-{key,cert}.pem`.
fn make_ca(dir: &Path, key: Key) {
    make_key(key, &dir.join("ca-key.pem"));
    let info = template(dir, "ca.info", "cn = nbdd test CA\nca\ncert_signing_key");
    must(
        certtool()
            .arg("--generate-self-signed")
            .arg("--load-privkey")
            .arg(dir.join("ca-key.pem"))
            .arg("--template")
            .arg(info)
            .arg("--outfile")
            .arg(dir.join("ca-cert.pem")),
    );
}

/// `dir/PREFIX-cert.pem` for the key in `key_file`, signed by `dir`'s CA.
fn sign(dir: &Path, prefix: &str, key_file: &Path, info_text: &str) {
    let info = template(dir, &format!("{prefix}.info"), info_text);
    must(
        certtool()
            .arg("--generate-certificate")
            .arg("--load-privkey")
            .arg(key_file)
            .arg("--load-ca-certificate")
            .arg(dir.join("ca-cert.pem"))
            .arg("--load-ca-privkey")
            .arg(dir.join("ca-key.pem"))
            .arg("--template")
            .arg(info)
            .arg("--outfile")
            .arg(dir.join(format!("{prefix}-cert.pem"))),
    );
}

/// A `--tls-certificates` directory whose server key is made by `key`.
fn cert_dir(root: &Path, key: Key) -> PathBuf {
    let dir = root.join(format!("{key:?}").replace(['(', ')'], ""));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca(&dir, Key::Ec);
    make_key(key, &dir.join("server-key.pem"));
    sign(&dir, "server", &dir.join("server-key.pem"), SERVER_INFO);
    dir
}

fn nbdinfo_over_tls(server: &Server, client_dir: &Path) -> String {
    let uri = tls_uri(server, &ClientAuth::X509(client_dir.to_owned()));
    run_ok(Command::new(require_tool("nbdinfo", "libnbd-bin")).arg(&uri))
}

fn serve(dir: &Path, extra: &[&str]) -> Server {
    let certs = format!("--tls-certificates={}", dir.display());
    let mut args = vec!["--tls=require", &certs];
    args.extend(extra);
    args.extend(["memory", "1M"]);
    Server::start(Transport::Unix, &args)
}

/// nbdd with `dir`'s credentials must refuse to start: its stderr.
fn startup_error(dir: &Path) -> String {
    let tmp = TempDir::new("tls-refused");
    let out = run(Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_nbdd"))
        .args(["-f", "-U"])
        .arg(tmp.path().join("s.sock"))
        .arg("--tls=require")
        .arg(format!("--tls-certificates={}", dir.display()))
        .args(["memory", "1M"]));
    assert!(!out.status.success(), "nbdd started with {}", dir.display());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

#[test]
fn every_rsa_key_size_serves_nbdinfo_over_tls() {
    let root = TempDir::new("rsa-sizes");
    let keys = [
        Key::CerttoolRsa(2048),
        Key::CerttoolRsa(2432),
        Key::OpensslRsa(2560),
        Key::CerttoolRsa(3072),
        Key::OpensslRsa(3584),
        Key::CerttoolRsa(4096),
        Key::Ec,
    ];
    // Key generation dominates; spread it over the cores.
    let at = root.path();
    let dirs: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .iter()
            .map(|&k| s.spawn(move || cert_dir(at, k)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (key, dir) in keys.iter().zip(&dirs) {
        let mut server = serve(dir, &[]);
        let out = nbdinfo_over_tls(&server, dir);
        assert!(out.contains("with TLS"), "{key:?}: {out}");
        assert!(out.contains("1048576"), "{key:?}: {out}");
        server.assert_alive();
    }
}

#[test]
fn key_of_another_certificate_is_reported_as_a_mismatch() {
    let root = TempDir::new("mismatch");
    let dir = cert_dir(root.path(), Key::CerttoolRsa(2048));
    make_key(Key::CerttoolRsa(2048), &dir.join("server-key.pem"));
    let err = startup_error(&dir);
    assert!(
        err.contains("server-key.pem: does not match") && err.contains("server-cert.pem"),
        "{err}"
    );
    // A key of another kind: the message says what each one is.
    make_key(Key::Ec, &dir.join("server-key.pem"));
    let err = startup_error(&dir);
    assert!(
        err.contains("the key is EC P-256, the certificate's is RSA 2048 bits"),
        "{err}"
    );
}

#[test]
fn unusable_keys_are_named_not_called_mismatched() {
    let root = TempDir::new("unsupported");
    for (key, what) in [
        (Key::CerttoolRsa(1024), "unsupported key: RSA 1024 bits"),
        (Key::Ed448, "unsupported key: Ed448"),
    ] {
        let dir = cert_dir(root.path(), key);
        let err = startup_error(&dir);
        assert!(err.contains(what), "{key:?}: {err}");
        assert!(!err.contains("does not match"), "{key:?}: {err}");
    }
}

/// The reference NBD project's tests/run/certs: CA, server and client keys
/// are RSA 2432 in PKCS#1 form (certtool's old default size), the server
/// certificate names localhost, and nbd-server checks client certificates
/// against the CA. The same setup made afresh: the CA-signed client gets
/// in and copies data both ways; a self-signed client is refused.
#[test]
fn reference_suite_certificate_setup() {
    let root = TempDir::new("reference");
    let dir = root.path().join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    make_ca(&dir, Key::CerttoolRsa(2432));
    for who in ["server", "client", "selfsigned"] {
        make_key(Key::CerttoolRsa(2432), &dir.join(format!("{who}-key.pem")));
    }
    sign(&dir, "server", &dir.join("server-key.pem"), SERVER_INFO);
    let client_info = "country = GB\nstate = London\nlocality = London\n\
                       organization = nbdd test\ncn = localhost\ntls_www_client\n\
                       encryption_key\nsigning_key";
    sign(&dir, "client", &dir.join("client-key.pem"), client_info);
    let info = template(&dir, "selfsigned.info", client_info);
    must(
        certtool()
            .arg("--generate-self-signed")
            .arg("--load-privkey")
            .arg(dir.join("selfsigned-key.pem"))
            .arg("--template")
            .arg(info)
            .arg("--outfile")
            .arg(dir.join("selfsigned-cert.pem")),
    );
    let mut server = serve(&dir, &["--tls-verify-peer"]);
    let out = nbdinfo_over_tls(&server, &dir);
    assert!(out.contains("with TLS"), "{out}");

    // Data both ways over the verified session (the suite's tlshuge).
    let src = server.dir().join("src.raw");
    let back = server.dir().join("back.raw");
    common::random_file(&src, 1 << 20, 0x2432);
    let uri = tls_uri(&server, &ClientAuth::X509(dir.clone()));
    let nbdcopy = require_tool("nbdcopy", "libnbd-bin");
    run_ok(Command::new(&nbdcopy).arg(&src).arg(&uri));
    run_ok(Command::new(&nbdcopy).arg(&uri).arg(&back));
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());

    // The suite's tlswrongcert: a client certificate no CA signed.
    let wrong = root.path().join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::copy(dir.join("ca-cert.pem"), wrong.join("ca-cert.pem")).unwrap();
    std::fs::copy(
        dir.join("selfsigned-cert.pem"),
        wrong.join("client-cert.pem"),
    )
    .unwrap();
    std::fs::copy(dir.join("selfsigned-key.pem"), wrong.join("client-key.pem")).unwrap();
    let uri = tls_uri(&server, &ClientAuth::X509(wrong));
    let out = run(Command::new(require_tool("nbdinfo", "libnbd-bin")).args(["--size", &uri]));
    assert!(
        !out.status.success(),
        "a self-signed client certificate got in"
    );
    server.assert_alive();
}

/// Like ssh with a private key: a PSK file that group or others can read
/// is used, with a one-line warning; mode 0600 gets none.
#[test]
fn readable_psk_file_is_warned_about() {
    let pki = tls::Pki::new();
    let psk = pki.psk_file();
    for (mode, warned) in [(0o644, true), (0o640, true), (0o600, false)] {
        std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        let arg = format!("--tls-psk={}", psk.display());
        let mut server = Server::start(Transport::Unix, &["--tls=require", &arg, "memory", "1M"]);
        let out = nbdinfo_over_tls_psk(&server, &pki);
        assert!(out.contains("with TLS"), "{out}");
        let err = server.stderr();
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("too open")).collect();
        if warned {
            assert_eq!(lines.len(), 1, "mode {mode:o}: {err}");
            assert!(
                lines[0].contains(&format!("permissions {mode:04o}"))
                    && lines[0].contains(&psk.display().to_string()),
                "mode {mode:o}: {err}"
            );
        } else {
            assert!(lines.is_empty(), "mode {mode:o} warned: {err}");
        }
        server.assert_alive();
    }
}

fn nbdinfo_over_tls_psk(server: &Server, pki: &tls::Pki) -> String {
    let uri = tls_uri(server, &pki.psk_client());
    run_ok(Command::new(require_tool("nbdinfo", "libnbd-bin")).arg(&uri))
}
