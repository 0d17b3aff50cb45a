//! Replays every committed input of the `backend_stacks` fuzz target
//! (`fuzz/seeds/backend_stacks/*` and `fuzz/regressions/backend_stacks/*`)
//! through `nbd_backends::fuzzing::filter_stacks`, the function the target
//! calls, on stable, in every `cargo test`.

use std::path::Path;

#[test]
fn replay_backend_stacks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join("backend_stacks")) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| nbd_backends::fuzzing::filter_stacks(&data));
            assert!(r.is_ok(), "{} panicked", path.display());
            count += 1;
        }
    }
    assert!(
        count > 0,
        "no seeds for backend_stacks under {}",
        root.display()
    );
}
