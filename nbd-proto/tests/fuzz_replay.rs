//! Replays every committed fuzz input (`fuzz/seeds/<target>/*` and
//! `fuzz/regressions/<target>/*`) through the same harness functions the
//! cargo-fuzz targets call, on stable, in every `cargo test`.

use std::path::Path;

use nbd_proto::fuzzing;

fn replay(target: &str, harness: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| harness(&data));
            assert!(r.is_ok(), "{} panicked", path.display());
            count += 1;
        }
    }
    // Seeds are committed; an empty directory means a broken checkout.
    assert!(count > 0, "no seeds for {target} under {}", root.display());
}

#[test]
fn replay_request_stream() {
    replay("request_stream", fuzzing::request_stream);
}

#[test]
fn replay_option_payload() {
    replay("option_payload", fuzzing::option_payload);
}

#[test]
fn replay_server_handshake() {
    replay("server_handshake", fuzzing::server_handshake);
}

#[test]
fn replay_client_replies() {
    replay("client_replies", fuzzing::client_replies);
}
