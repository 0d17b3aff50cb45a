//! End-to-end load with fio's NBD engine (`ioengine=nbd`, built on
//! libnbd): a short mixed random read/write job with data verification.
//!
//! Run against the reference: `NBDD_TEST_SERVER=nbdkit cargo test -p
//! nbd-mio-driver --test e2e_tools`.

mod common;

use common::{Server, Transport, json, require_tool, run};
use std::process::{Command, Output};

/// A 3-second 4 KiB randrw job at iodepth 16 with crc32c verification of
/// every block read back (checklist 62, 63, 65 under load).
fn fio_randrw(uri: &str) -> Output {
    let fio = require_tool("fio", "fio");
    run(Command::new(fio).args([
        "--name=e2e",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randrw",
        "--bs=4k",
        "--iodepth=16",
        "--size=32M",
        "--runtime=3",
        "--time_based",
        "--verify=crc32c",
        "--verify_fatal=1",
        // Otherwise fio leaves `local-e2e-0-verify.state` in the crate dir.
        "--verify_state_save=0",
        "--output-format=json",
    ]))
}

/// The job's JSON, after the engine's "connected" line that fio prints to
/// stdout first.
fn fio_json(out: &Output) -> json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("\n{").map_or(0, |i| i + 1);
    json::parse(&text[start..])
}

fn randrw_verifies(transport: Transport) {
    let mut server = Server::start(transport, &["memory", "32M"]);
    let out = fio_randrw(&server.uri());
    assert!(
        out.status.success(),
        "fio failed ({}):\n{}\n{}\nserver stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    let doc = fio_json(&out);
    let job = &doc.get("jobs").arr()[0];
    assert_eq!(job.get("error").u64(), 0, "fio job error");
    let read = job.get("read").get("io_bytes").u64();
    let write = job.get("write").get("io_bytes").u64();
    assert!(
        read > 0 && write > 0,
        "fio did no I/O: read {read} write {write}"
    );
    server.assert_alive();
}

#[test]
fn fio_randrw_verify_unix() {
    randrw_verifies(Transport::Unix);
}

#[test]
fn fio_randrw_verify_tcp() {
    randrw_verifies(Transport::Tcp);
}

/// Negative control: the same job against the `null` backend, which
/// discards writes, must fail verification. Without this, a fio build or
/// option change that silently stopped verifying would pass the test above.
#[test]
fn fio_verify_detects_lost_writes() {
    let mut server = Server::start(Transport::Unix, &["null", "32M"]);
    let out = fio_randrw(&server.uri());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("verify"),
        "fio verification did not catch discarded writes ({}):\n{stderr}",
        out.status
    );
    server.assert_alive();
}
