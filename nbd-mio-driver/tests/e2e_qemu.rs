//! End-to-end interop with qemu's NBD client (`qemu-img`, `qemu-io` from
//! Debian `qemu-utils`), over both a Unix socket and TCP on 127.0.0.1.
//!
//! Run against the reference: `NBDD_TEST_SERVER=nbdkit cargo test -p
//! nbd-mio-driver --test e2e_qemu`. Checklist numbers refer to
//! nbd-protocol.md section 9.

mod common;

use common::{Server, Transport, json, random_file, require_tool, run, run_ok};
use std::process::Command;

fn qemu_img() -> Command {
    Command::new(require_tool("qemu-img", "qemu-utils"))
}

fn qemu_io() -> Command {
    Command::new(require_tool("qemu-io", "qemu-utils"))
}

/// qemu negotiates fixed newstyle + GO (checklist 1, 23) and reads the
/// size from NBD_INFO_EXPORT (checklist 22).
fn info_reports_size(transport: Transport) {
    let mut server = Server::start(transport, &["memory", "64M"]);
    let out = run_ok(qemu_img().args(["info", "--output=json", &server.uri()]));
    let info = json::parse(&out);
    assert_eq!(
        info.get("virtual-size").u64(),
        64 << 20,
        "qemu-img info: {out}"
    );
    server.assert_alive();
}

#[test]
fn qemu_img_info_size_unix() {
    info_reports_size(Transport::Unix);
}

#[test]
fn qemu_img_info_size_tcp() {
    info_reports_size(Transport::Tcp);
}

/// Writes a random raw image into the export with `qemu-img convert` and
/// compares it back: every WRITE lands and every READ returns it
/// (checklist 63), across many pipelined requests (checklist 65).
fn convert_then_compare(transport: Transport) {
    let mut server = Server::start(transport, &["memory", "16M"]);
    let src = server.dir().join("src.raw");
    random_file(&src, 16 << 20, 0x5eed_0001);
    let uri = server.uri();
    // -n: the NBD target already exists and cannot be created by qemu-img.
    run_ok(
        qemu_img()
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    let out = run_ok(
        qemu_img()
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    assert!(
        out.contains("Images are identical"),
        "qemu-img compare: {out}"
    );
    server.assert_alive();
}

#[test]
fn qemu_img_convert_compare_unix() {
    convert_then_compare(Transport::Unix);
}

#[test]
fn qemu_img_convert_compare_tcp() {
    convert_then_compare(Transport::Tcp);
}

/// A pattern written with qemu-io reads back, unwritten areas read as
/// zeroes (memory backend starts zeroed), and a mismatch is detectable:
/// the negative control makes sure qemu-io's pattern check is not vacuous.
fn qemu_io_pattern(transport: Transport) {
    let mut server = Server::start(transport, &["memory", "1M"]);
    let opts = server.qemu_image_opts("");
    let out = run_ok(qemu_io().args([
        "--image-opts",
        &opts,
        "-c",
        "write -P 0xab 0 64k",
        "-c",
        "read -P 0xab 0 64k",
        "-c",
        "read -P 0 64k 64k",
        "-c",
        "read -P 0 960k 64k",
    ]));
    assert!(
        !out.contains("failed"),
        "qemu-io reported a failure:\n{out}"
    );
    assert_eq!(
        out.matches("read 65536/65536 bytes").count(),
        3,
        "qemu-io output:\n{out}"
    );

    let bad = run(qemu_io().args(["--image-opts", &opts, "-c", "read -P 0xcd 0 64k"]));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(
        !bad.status.success() && text.contains("Pattern verification failed"),
        "a wrong pattern must be detected; qemu-io said ({}):\n{text}",
        bad.status
    );
    server.assert_alive();
}

#[test]
fn qemu_io_write_read_pattern_unix() {
    qemu_io_pattern(Transport::Unix);
}

#[test]
fn qemu_io_write_read_pattern_tcp() {
    qemu_io_pattern(Transport::Tcp);
}

/// A `-r` export is opened read-only by qemu (READ_ONLY flag, checklist 33)
/// and reads work; qemu refuses a read-write open of it.
#[test]
fn qemu_io_read_only_export() {
    let mut server = Server::start(Transport::Unix, &["-r", "pattern", "1M"]);
    let opts = server.qemu_image_opts("");
    let out = run_ok(qemu_io().args(["-r", "--image-opts", &opts, "-c", "read 0 64k"]));
    assert!(
        out.contains("read 65536/65536 bytes"),
        "qemu-io output:\n{out}"
    );
    let rw = run(qemu_io().args(["--image-opts", &opts, "-c", "write -P 1 0 4k"]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&rw.stdout),
        String::from_utf8_lossy(&rw.stderr)
    );
    assert!(
        !rw.status.success() || !text.contains("wrote 4096/4096"),
        "a write to a read-only export must not succeed:\n{text}"
    );
    server.assert_alive();
}
