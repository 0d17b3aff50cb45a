//! End-to-end TLS: STARTTLS with X.509 certificates and pre-shared keys,
//! driven by the GnuTLS clients people use (libnbd's `nbdinfo`/`nbdcopy`,
//! qemu's `qemu-img`) and by a raw rustls client for exact reply codes.
//!
//! Certificates and keys are made per test by tests/pki/make-pki.sh
//! (`apt-get install gnutls-bin`). Run against the reference with
//! `NBDD_TEST_SERVER=nbdkit cargo test -p nbd-mio-driver --test e2e_tls`.
//! Checklist numbers refer to nbd-protocol.md section 9.

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::io::ErrorKind;
use std::process::Command;

use common::{Server, Transport, random_file, require_tool, run, run_ok, run_py, sha256};
use tls::{
    ClientAuth, ERR_INVALID, ERR_TLS_REQD, ERR_UNSUP, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO,
    OPT_LIST, OPT_STARTTLS, OPT_STRUCTURED_REPLY, Pki, REP_ACK, REP_INFO, REP_SERVER, RawClient,
    SIMPLE_REPLY_MAGIC, qemu_tls_image_opts, qemu_tls_object, tls_uri,
};

fn nbdinfo() -> Command {
    Command::new(require_tool("nbdinfo", "libnbd-bin"))
}

fn nbdcopy() -> Command {
    Command::new(require_tool("nbdcopy", "libnbd-bin"))
}

fn qemu_img() -> Command {
    Command::new(require_tool("qemu-img", "qemu-utils"))
}

/// `--tls=MODE` plus the server credential for `psk` or X.509.
fn server_args(pki: &Pki, mode: &str, psk: bool, extra: &[&str]) -> Vec<String> {
    let mut v = vec![format!("--tls={mode}")];
    if psk {
        v.push(format!("--tls-psk={}", pki.psk_file().display()));
    } else {
        v.push(format!("--tls-certificates={}", pki.dir().display()));
    }
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    v.extend(["memory".into(), "64M".into()]);
    v
}

fn start(pki: &Pki, transport: Transport, mode: &str, psk: bool, extra: &[&str]) -> Server {
    let args = server_args(pki, mode, psk, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(transport, &refs)
}

/// nbdinfo over TLS: the size is right and libnbd says TLS is on.
fn nbdinfo_ok(server: &mut Server, auth: &ClientAuth) {
    let uri = tls_uri(server, auth);
    let out = run_ok(nbdinfo().arg(&uri));
    assert!(out.contains("with TLS"), "nbdinfo {uri}: {out}");
    assert!(out.contains("67108864"), "nbdinfo {uri}: {out}");
    server.assert_alive();
}

/// nbdinfo over TLS fails (refused credentials).
fn nbdinfo_refused(server: &mut Server, auth: &ClientAuth, what: &str) {
    let uri = tls_uri(server, auth);
    let out = run(nbdinfo().args(["--size", &uri]));
    assert!(
        !out.status.success(),
        "{what}: nbdinfo {uri} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    server.assert_alive();
}

// ------------------------------------------------------------ nbdinfo

#[test]
fn nbdinfo_x509_require_unix_and_tcp() {
    let pki = Pki::new();
    for transport in [Transport::Unix, Transport::Tcp] {
        let mut server = start(&pki, transport, "require", false, &[]);
        // Without --tls-verify-peer the CA alone is enough on the client.
        nbdinfo_ok(&mut server, &pki.x509_anonymous());
        nbdinfo_ok(&mut server, &pki.x509_client());
    }
}

#[test]
fn nbdinfo_psk_require_unix_and_tcp() {
    let pki = Pki::new();
    for transport in [Transport::Unix, Transport::Tcp] {
        let mut server = start(&pki, transport, "require", true, &[]);
        nbdinfo_ok(&mut server, &pki.psk_client());
    }
}

/// `--tls=on` (SELECTIVETLS): TLS clients upgrade, plaintext clients are
/// served too.
#[test]
fn tls_on_serves_tls_and_plaintext_clients() {
    let pki = Pki::new();
    for psk in [false, true] {
        let mut server = start(&pki, Transport::Unix, "on", psk, &[]);
        let auth = if psk {
            pki.psk_client()
        } else {
            pki.x509_client()
        };
        nbdinfo_ok(&mut server, &auth);
        let out = run_ok(nbdinfo().arg(server.uri()));
        assert!(out.contains("without TLS"), "plaintext nbdinfo: {out}");
        assert!(out.contains("67108864"), "plaintext nbdinfo: {out}");
        server.assert_alive();
    }
}

// ------------------------------------------------------------ qemu-img

/// qemu-img info, convert (write) and compare (read) over TLS.
fn qemu_roundtrip(server: &mut Server, auth: &ClientAuth) {
    let object = qemu_tls_object(auth);
    let opts = qemu_tls_image_opts(server);
    let out = run_ok(qemu_img().args(["info", "--object", &object, "--image-opts", &opts]));
    assert!(out.contains("67108864 bytes"), "qemu-img info: {out}");
    let src = server.dir().join("qemu-src.raw");
    random_file(&src, 8 << 20, 0x7150_0001);
    run_ok(
        qemu_img()
            .args(["convert", "-n", "-f", "raw", "--object", &object])
            .arg(&src)
            .args(["--target-image-opts", &opts]),
    );
    let file_opts = format!(
        "driver=raw,file.driver=file,file.filename={}",
        src.display()
    );
    // The export is 64 MiB and the file 8 MiB: compare checks the common
    // part and that the rest of the export reads as zeroes.
    let out = run_ok(qemu_img().args([
        "compare",
        "--object",
        &object,
        "--image-opts",
        &file_opts,
        &opts,
    ]));
    assert!(
        out.contains("Images are identical"),
        "qemu-img compare: {out}"
    );
    server.assert_alive();
}

#[test]
fn qemu_img_x509_with_verify_peer() {
    let pki = Pki::new();
    for transport in [Transport::Unix, Transport::Tcp] {
        let mut server = start(&pki, transport, "require", false, &["--tls-verify-peer"]);
        qemu_roundtrip(&mut server, &pki.x509_client());
    }
}

#[test]
fn qemu_img_psk() {
    let pki = Pki::new();
    for transport in [Transport::Unix, Transport::Tcp] {
        let mut server = start(&pki, transport, "require", true, &[]);
        qemu_roundtrip(&mut server, &pki.psk_client());
    }
}

// ------------------------------------------------------------ nbdcopy

/// 32 MiB of random data up and back down over TLS, four connections at
/// once (nbdcopy's default with multi-conn), compared by SHA-256. Large
/// pipelined transfers exercise back-pressure through the TLS session.
fn nbdcopy_both_ways(server: &mut Server, auth: &ClientAuth) {
    let src = server.dir().join("copy-src.raw");
    let back = server.dir().join("copy-back.raw");
    random_file(&src, 32 << 20, 0xc0b1_0001);
    let uri = tls_uri(server, auth);
    run_ok(nbdcopy().arg(&src).arg(&uri));
    run_ok(nbdcopy().arg(&uri).arg(&back));
    // The export is 64 MiB: the first 32 MiB must be the file.
    let got = std::fs::read(&back).expect("read copy back");
    assert_eq!(got.len(), 64 << 20);
    let head = server.dir().join("copy-head.raw");
    std::fs::write(&head, &got[..32 << 20]).expect("write head");
    assert_eq!(sha256(&head), sha256(&src), "data changed over TLS");
    assert!(got[32 << 20..].iter().all(|&b| b == 0), "tail not zero");
    server.assert_alive();
}

#[test]
fn nbdcopy_psk_both_directions_sha256() {
    let pki = Pki::new();
    let mut server = start(&pki, Transport::Unix, "require", true, &[]);
    nbdcopy_both_ways(&mut server, &pki.psk_client());
}

#[test]
fn nbdcopy_x509_tcp_both_directions_sha256() {
    let pki = Pki::new();
    let mut server = start(&pki, Transport::Tcp, "require", false, &[]);
    nbdcopy_both_ways(&mut server, &pki.x509_client());
}

// ------------------------------------------------------------ refusals

/// A plaintext client of a FORCEDTLS server gets nothing (checklist 52).
#[test]
fn plaintext_client_against_require_is_refused() {
    let pki = Pki::new();
    let mut server = start(&pki, Transport::Unix, "require", true, &[]);
    let out = run(nbdinfo().args(["--size", &server.uri()]));
    assert!(!out.status.success(), "plaintext nbdinfo succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS"),
        "nbdinfo should say TLS is required: {err}"
    );
    let socket = server.socket.display().to_string();
    let out = run_py(&mut server, "tls_plaintext.py", &[&socket]);
    assert!(out.contains("ALL CHECKS PASSED"), "{out}");
    server.assert_alive();
}

/// `--tls-verify-peer`: only a certificate signed by our CA gets in.
#[test]
fn verify_peer_accepts_our_ca_only() {
    let pki = Pki::new();
    let mut server = start(
        &pki,
        Transport::Unix,
        "require",
        false,
        &["--tls-verify-peer"],
    );
    nbdinfo_ok(&mut server, &pki.x509_client());
    nbdinfo_refused(&mut server, &pki.x509_anonymous(), "no client certificate");
    nbdinfo_refused(&mut server, &pki.x509_rogue(), "rogue CA certificate");
    // qemu with the rogue certificate is refused too.
    let out = run(qemu_img().args([
        "info",
        "--object",
        &qemu_tls_object(&pki.x509_rogue()),
        "--image-opts",
        &qemu_tls_image_opts(&server),
    ]));
    assert!(!out.status.success(), "qemu-img with a rogue cert got in");
    // The server keeps serving good clients after the refusals.
    nbdinfo_ok(&mut server, &pki.x509_client());
}

/// A wrong key and an unknown user are refused; others still get served.
#[test]
fn wrong_psk_and_unknown_user_are_refused() {
    let pki = Pki::new();
    let mut server = start(&pki, Transport::Unix, "require", true, &[]);
    let good = pki.psk_hex();
    // Flip the last hex digit: same user, wrong key.
    let mut bad = good.clone();
    let last = bad.pop().expect("key");
    bad.push(if last == '0' { '1' } else { '0' });
    nbdinfo_refused(
        &mut server,
        &pki.psk_custom("wrong-key", "alice", &bad),
        "wrong key",
    );
    nbdinfo_refused(
        &mut server,
        &pki.psk_custom("unknown", "bob", &good),
        "unknown user",
    );
    let out = run(qemu_img().args([
        "info",
        "--object",
        &qemu_tls_object(&pki.psk_custom("qemu-wrong", "alice", &bad)),
        "--image-opts",
        &qemu_tls_image_opts(&server),
    ]));
    assert!(!out.status.success(), "qemu-img with a wrong PSK got in");
    nbdinfo_ok(&mut server, &pki.psk_client());
}

// ------------------------------------------------------------ raw protocol

/// FORCEDTLS before TLS: every option but STARTTLS and ABORT gets
/// TLS_REQD with no INFO first, and its data is drained (checklist 52);
/// ABORT is ACKed.
#[test]
fn raw_require_refuses_options_before_tls() {
    let pki = Pki::new();
    let server = start(&pki, Transport::Unix, "require", false, &[]);
    let mut c = RawClient::connect(&server);
    let go_data = [0u8, 0, 0, 0, 0, 0];
    for (opt, data) in [
        (OPT_LIST, &[][..]),
        (OPT_INFO, &go_data[..]),
        (OPT_GO, &go_data[..]),
        (OPT_STRUCTURED_REPLY, &[][..]),
        (0x1234, &b"ignored payload"[..]),
    ] {
        let r = c.option(opt, data);
        assert_eq!(r.len(), 1, "option {opt:#x}: {r:?}");
        assert_eq!(r[0].kind, ERR_TLS_REQD, "option {opt:#x}: {r:?}");
    }
    let r = c.option(OPT_ABORT, &[]);
    assert_eq!(r[0].kind, REP_ACK);
    c.server_closes().expect("closed after ABORT");
}

/// FORCEDTLS: EXPORT_NAME before TLS ends the session (checklist 53).
#[test]
fn raw_require_export_name_before_tls_closes() {
    let pki = Pki::new();
    let server = start(&pki, Transport::Unix, "require", false, &[]);
    let mut c = RawClient::connect(&server);
    c.send_raw(&RawClient::option_bytes(OPT_EXPORT_NAME, b""));
    c.server_closes()
        .expect("EXPORT_NAME before TLS must close");
}

/// STARTTLS → ACK → handshake (checklist 54), with the ClientHello sent in
/// the same write as the option; after TLS: a second STARTTLS is INVALID
/// (55), nothing is TLS_REQD (57), LIST works, and STARTTLS with data is
/// INVALID before TLS (56).
#[test]
fn raw_starttls_then_options() {
    let pki = Pki::new();
    let server = start(&pki, Transport::Unix, "require", false, &[]);
    let mut c = RawClient::connect(&server);
    let r = c.option(OPT_STARTTLS, b"x");
    assert_eq!(r[0].kind, ERR_INVALID, "STARTTLS with data: {r:?}");
    let mut c = c.start_tls(&pki.x509_client(), true).expect("handshake");
    let r = c.option(OPT_STARTTLS, &[]);
    assert_eq!(r[0].kind, ERR_INVALID, "second STARTTLS: {r:?}");
    let r = c.option(0x1234, b"data");
    assert_eq!(r[0].kind, ERR_UNSUP, "unknown option after TLS: {r:?}");
    let r = c.option(OPT_LIST, &[]);
    assert_eq!(r.len(), 2, "LIST: {r:?}");
    assert_eq!((r[0].kind, r[1].kind), (REP_SERVER, REP_ACK));
    let r = c.option(OPT_ABORT, &[]);
    assert_eq!(r[0].kind, REP_ACK);
    c.send_close_notify();
    c.server_closes().expect("closed after ABORT");
}

/// State negotiated in plaintext is forgotten at STARTTLS (checklist 58):
/// STRUCTURED_REPLY, STARTTLS, GO, READ → a simple reply. Runs on a
/// SELECTIVETLS server, the only mode where STRUCTURED_REPLY is honoured
/// before TLS. Then a 16 MiB WRITE and READ through the TLS session (more
/// than the output high-water mark), and a close without close_notify.
#[test]
fn raw_plaintext_state_is_forgotten_after_starttls() {
    let pki = Pki::new();
    let mut server = start(&pki, Transport::Unix, "on", false, &[]);
    let mut c = RawClient::connect(&server);
    let r = c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(r[0].kind, REP_ACK, "STRUCTURED_REPLY in plaintext: {r:?}");
    let mut c = c.start_tls(&pki.x509_client(), false).expect("handshake");
    let r = c.option(OPT_GO, &[0, 0, 0, 0, 0, 0]);
    assert_eq!(r.last().map(|r| r.kind), Some(REP_ACK), "GO: {r:?}");
    assert!(
        r.iter().any(|r| r.kind == REP_INFO),
        "GO sent no INFO: {r:?}"
    );

    let read = |c: &mut RawClient, cookie: u64, len: u32| -> Vec<u8> {
        c.send_raw(&request(0, cookie, 0, len, &[]));
        let mut h = [0u8; 16];
        std::io::Read::read_exact(c, &mut h).expect("reply header");
        let magic = u32::from_be_bytes(h[..4].try_into().unwrap());
        assert_eq!(
            magic, SIMPLE_REPLY_MAGIC,
            "READ reply magic {magic:#x}: structured replies survived STARTTLS"
        );
        assert_eq!(
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            0,
            "READ error"
        );
        assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), cookie);
        let mut data = vec![0u8; len as usize];
        std::io::Read::read_exact(c, &mut data).expect("read data");
        data
    };
    assert_eq!(read(&mut c, 1, 512), vec![0u8; 512]);

    let len = 16u32 << 20;
    let pattern: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    c.send_raw(&request(1, 2, 0, len, &pattern));
    let mut h = [0u8; 16];
    std::io::Read::read_exact(&mut c, &mut h).expect("WRITE reply");
    assert_eq!(
        u32::from_be_bytes(h[4..8].try_into().unwrap()),
        0,
        "WRITE error"
    );
    assert!(
        read(&mut c, 3, len) == pattern,
        "16 MiB READ differs from WRITE"
    );

    // Vanish without close_notify: the server must drop the connection and
    // keep serving.
    let _ = c.socket().shutdown(std::net::Shutdown::Both);
    drop(c);
    nbdinfo_ok(&mut server, &pki.x509_client());
}

/// A handshake that fails (garbage instead of a ClientHello) closes the
/// connection (checklist 54) and the server keeps serving.
#[test]
fn raw_failed_handshake_closes() {
    let pki = Pki::new();
    let mut server = start(&pki, Transport::Unix, "require", false, &[]);
    let mut c = RawClient::connect(&server);
    let r = c.option(OPT_STARTTLS, &[]);
    assert_eq!(r[0].kind, REP_ACK);
    c.send_raw(b"GET / HTTP/1.0\r\n\r\n");
    // The server may send an alert first; it must then close.
    let mut got = 0;
    let mut buf = [0u8; 256];
    loop {
        match std::io::Read::read(&mut c, &mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("server kept the connection open after a failed handshake");
            }
            Err(_) => break,
        }
    }
    assert!(got < 64, "server answered garbage with {got} bytes");
    nbdinfo_ok(&mut server, &pki.x509_client());
}

/// A TLS client that sends many READs and never reads the replies must
/// not make the server buffer them all: ciphertext waiting for the socket
/// counts toward back-pressure like plaintext does. 256 READs of 1 MiB
/// would be 256 MiB of replies; the server may hold a few MiB.
#[test]
fn tls_client_that_does_not_read_is_bounded() {
    let pki = Pki::new();
    let server = start(&pki, Transport::Unix, "require", false, &[]);
    let pid = tls::server_pid(&server);
    let c = RawClient::connect(&server);
    let mut c = c.start_tls(&pki.x509_client(), false).expect("handshake");
    let r = c.option(OPT_GO, &[0, 0, 0, 0, 0, 0]);
    assert_eq!(r.last().map(|r| r.kind), Some(REP_ACK), "GO: {r:?}");
    let before = tls::rss_kib(pid);
    let mut reqs = Vec::new();
    for cookie in 0..256u64 {
        reqs.extend(request(0, cookie, (cookie % 64) << 20, 1 << 20, &[]));
    }
    c.send_without_reading(&reqs);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let after = tls::rss_kib(pid);
    assert!(
        after < before + 64 * 1024,
        "server RSS grew from {before} KiB to {after} KiB for a client that does not read"
    );
    drop(c);
}

/// The same over TLS-PSK (OpenSSL's session, not rustls's), with libnbd
/// as the client: 256 READs of 1 MiB queued, no reply read.
#[test]
fn psk_client_that_does_not_read_is_bounded() {
    let pki = Pki::new();
    let server = start(&pki, Transport::Unix, "require", true, &[]);
    let pid = tls::server_pid(&server);
    let before = tls::rss_kib(pid);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/tls_unread.py");
    let mut child = common::python_nbd()
        .arg(script)
        .args([&tls_uri(&server, &pki.psk_client()), "256", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start tls_unread.py");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("read SENT");
    assert!(line.starts_with("SENT"), "script said {line:?}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let after = tls::rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        after < before + 64 * 1024,
        "server RSS grew from {before} KiB to {after} KiB for a PSK client that does not read ({line})"
    );
}

/// A compact request (28 bytes) plus payload.
fn request(kind: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(28 + payload.len());
    v.extend(0x2560_9513u32.to_be_bytes());
    v.extend(0u16.to_be_bytes());
    v.extend(kind.to_be_bytes());
    v.extend(cookie.to_be_bytes());
    v.extend(offset.to_be_bytes());
    v.extend(len.to_be_bytes());
    v.extend(payload);
    v
}
