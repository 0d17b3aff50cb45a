//! Replays every committed input of the driver's fuzz targets
//! (`fuzz/seeds/<target>/*` and `fuzz/regressions/<target>/*`) through the
//! functions the targets call, on stable, with the same heap bounds the
//! targets check: `tls_records` (`tls::fuzzing::server_records`) and
//! `server` (`fuzzing::whole_server`).

use std::path::{Path, PathBuf};

use nbd_mio_driver::fuzzing as server;
use nbd_mio_driver::tls::fuzzing::{MAX_LIVE_BYTES, server_records, warm_up};

/// Every committed input of `target`: (`seeds` or `regressions`, path).
fn inputs(target: &str) -> Vec<(&'static str, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut v = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            v.push((dir, e.unwrap().path()));
        }
    }
    v.sort();
    assert!(
        !v.is_empty(),
        "no seeds for {target} under {}",
        root.display()
    );
    v
}

/// The whole-server target's inputs. Each seed must also reach
/// transmission and get replies, or it no longer tests what it was
/// written for (the input layout changed under it).
#[test]
fn replay_server() {
    for (dir, path) in inputs("server") {
        let data = std::fs::read(&path).unwrap();
        server::warm_up();
        let r = std::panic::catch_unwind(|| {
            let mut summary = server::Summary::default();
            let peak = allocation_counter::measure(|| summary = server::whole_server(&data));
            (summary, peak.bytes_max)
        });
        let (summary, peak) = r.unwrap_or_else(|_| panic!("{} panicked", path.display()));
        assert!(
            peak <= server::MAX_LIVE_BYTES,
            "{}: {peak} bytes of heap at once",
            path.display()
        );
        eprintln!("{}: {summary:?}, heap {peak}", path.display());
        if dir == "seeds" {
            assert!(
                summary.requests >= 1,
                "{}: only {summary:?}",
                path.display()
            );
        }
    }
}

#[test]
fn replay_tls_records() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join("tls_records")) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            // The process-wide fixtures are made outside the measurement.
            warm_up();
            let r = std::panic::catch_unwind(|| {
                allocation_counter::measure(|| server_records(&data)).bytes_max
            });
            let peak = r.unwrap_or_else(|_| panic!("{} panicked", path.display()));
            assert!(
                peak <= MAX_LIVE_BYTES,
                "{}: {peak} bytes of heap at once",
                path.display()
            );
            count += 1;
        }
    }
    assert!(
        count > 0,
        "no seeds for tls_records under {}",
        root.display()
    );
}
