//! Issue 12 item 3 (visibility): `-v` traces the negotiation readably and
//! `-v -v` prints requests in words, with real clients (nbdinfo, qemu-io).
//! Issue 9: `-v` logs the effective limits in one line.

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::process::Command;

use common::{Server, Transport, require_tool, run, run_ok};

/// The lines of `log` containing `needle`, for messages.
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// Asserts one line of `log` contains every piece of `parts`.
fn assert_line(log: &str, parts: &[&str]) {
    assert!(
        log.lines().any(|l| parts.iter().all(|p| l.contains(p))),
        "no line with all of {parts:?} in:\n{log}"
    );
}

/// No Rust `Debug` forms or raw flag numbers in what a person reads.
fn assert_no_debug_forms(log: &str) {
    for bad in [
        "CmdFlags(",
        "TransmissionFlags(",
        "Cookie(",
        "Some(",
        "flags=0x",
    ] {
        assert!(!log.contains(bad), "'{bad}' in the log:\n{log}");
    }
}

#[test]
fn verbose_traces_negotiation_and_requests_in_words() {
    let s = Server::start(Transport::Unix, &["-v", "-v", "memory", "1M"]);
    let nbdinfo = require_tool("nbdinfo", "libnbd-bin");
    run_ok(Command::new(&nbdinfo).arg(s.uri()));
    let qemu_io = require_tool("qemu-io", "qemu-utils");
    run_ok(
        Command::new(qemu_io)
            .args([
                "-f",
                "raw",
                "-c",
                "write -f -P 7 4096 8192",
                "-c",
                "read 0 512",
            ])
            .arg(s.uri()),
    );
    let log = s.stderr();
    // Limits, once, in one line.
    let limits = lines_with(&log, "limits:");
    assert_eq!(limits.len(), 1, "{log}");
    for part in [
        "max-connection-buffer 128M",
        "workers per loop",
        "handshake-limit 60s",
    ] {
        assert!(limits[0].contains(part), "{part} not in {}", limits[0]);
    }
    // Each line about a client starts with the peer.
    let peer = "nbdd: info: unix pid ";
    assert_line(&log, &[peer, "client flags FIXED_NEWSTYLE|NO_ZEROES"]);
    assert_line(&log, &[peer, "received NBD_OPT_STRUCTURED_REPLY"]);
    assert_line(
        &log,
        &["answered NBD_OPT_STRUCTURED_REPLY: structured replies on"],
    );
    assert_line(&log, &["received NBD_OPT_INFO export \"\""]);
    assert_line(
        &log,
        &["answered NBD_OPT_INFO: size 1048576, flags SEND_FLUSH|SEND_FUA|"],
    );
    assert_line(
        &log,
        &["block sizes minimum 1 preferred 4096 maximum 33554432"],
    );
    assert_line(
        &log,
        &["received NBD_OPT_LIST_META_CONTEXT", "contexts all"],
    );
    assert_line(
        &log,
        &["received NBD_OPT_SET_META_CONTEXT", "\"base:allocation\""],
    );
    assert_line(&log, &["meta contexts \"base:allocation\" (id 1)"]);
    // qemu negotiates extended headers (qemu 10) or structured replies.
    assert_line(
        &log,
        &[
            "negotiated export \"\": size 1048576",
            "meta contexts base:allocation",
            "TLS off",
        ],
    );
    // -v -v: requests in words.
    let debug = "nbdd: debug: unix pid ";
    assert_line(
        &log,
        &[debug, "WRITE offset=4096 len=8192 flags=FUA cookie="],
    );
    assert_line(&log, &[debug, "READ offset=0 len=512 flags=none"]);
    assert_no_debug_forms(&log);
}

#[test]
fn verbose_traces_errors_with_their_cause() {
    let dir = common::TempDir::new("trace-dir");
    for n in ["a", "b"] {
        std::fs::write(dir.path().join(n), [0u8; 512]).unwrap();
    }
    let d = format!("dir={}", dir.path().display());
    let s = Server::start(Transport::Unix, &["-v", "file", &d]);
    let nbdinfo = require_tool("nbdinfo", "libnbd-bin");
    let out = run(Command::new(&nbdinfo).arg(s.uri_for("nosuch")));
    assert!(!out.status.success(), "nbdinfo of a missing export");
    let log = s.stderr();
    assert_line(&log, &["received NBD_OPT_GO export \"nosuch\""]);
    assert_line(&log, &["answered NBD_OPT_GO: NBD_REP_ERR_UNKNOWN"]);
    // Only -v: no request lines.
    assert!(!log.contains("nbdd: debug:"), "{log}");

    // A backend error: `full` refuses every write with ENOSPC.
    let s = Server::start(Transport::Unix, &["-v", "-v", "full", "1M"]);
    let qemu_io = require_tool("qemu-io", "qemu-utils");
    let out = run(Command::new(qemu_io)
        .args(["-f", "raw", "-c", "write -P 1 0 4096"])
        .arg(s.uri()));
    // qemu-io reports the failed write on its output but exits 0.
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("No space left"), "{said}");
    let log = s.stderr();
    assert_line(
        &log,
        &[
            "nbdd: info: unix pid ",
            "WRITE offset=0 len=4096",
            "failed: ENOSPC (",
        ],
    );
    assert_no_debug_forms(&log);
}

#[test]
fn quiet_by_default() {
    let s = Server::start(Transport::Unix, &["memory", "1M"]);
    let nbdinfo = require_tool("nbdinfo", "libnbd-bin");
    run_ok(Command::new(&nbdinfo).arg(s.uri()));
    let log = s.stderr();
    for part in [
        "received NBD_OPT",
        "answered",
        "negotiated",
        "limits:",
        "READ ",
    ] {
        assert!(!log.contains(part), "'{part}' without -v:\n{log}");
    }
}

#[test]
fn verbose_says_when_tls_starts_and_what_it_refuses() {
    let pki = tls::Pki::new();
    let psk = format!("--tls-psk={}", pki.psk_file().display());
    let s = Server::start(
        Transport::Unix,
        &["-v", "--tls=require", &psk, "memory", "1M"],
    );
    let nbdinfo = require_tool("nbdinfo", "libnbd-bin");
    run_ok(Command::new(&nbdinfo).arg(tls::tls_uri(&s, &pki.psk_client())));
    let plain = run(Command::new(&nbdinfo).arg(s.uri()));
    assert!(!plain.status.success(), "plaintext client served");
    let log = s.stderr();
    assert_line(&log, &["received NBD_OPT_STARTTLS"]);
    assert_line(&log, &["TLS established"]);
    assert_line(&log, &["negotiated export \"\"", "TLS on"]);
    assert_line(&log, &["answered NBD_OPT_GO: NBD_REP_ERR_TLS_REQD"]);
}
