//! Replays every committed input of the `tls_records` fuzz target
//! (`fuzz/seeds/tls_records/*` and `fuzz/regressions/tls_records/*`)
//! through `nbd_mio_driver::tls::fuzzing::server_records`, the function the
//! target calls, on stable, with the same heap bound the target checks.

use std::path::Path;

use nbd_mio_driver::tls::fuzzing::{MAX_LIVE_BYTES, server_records, warm_up};

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
