//! What `cargo package` ships (the `include` list in Cargo.toml): every
//! source file, every example with its shared modules, the benches, the
//! README and the CHANGELOG; no tests (they need `../fuzz` and the
//! `fuzzing` feature, neither of which is in the package). Offline and
//! quick: `--list` neither builds nor touches the registry.

use std::path::Path;
use std::process::Command;

/// The files `cargo package --list` names, relative to the package root.
fn package_list() -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["package", "-p", "nbd-proto", "--list", "--offline"])
        .args(["--no-verify", "--allow-dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo package --list");
    assert!(
        out.status.success(),
        "cargo package --list failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 file list")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every `.rs` file under `dir` (relative to the package root).
fn rust_files(dir: &str, found: &mut Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(root.join(dir)).expect("read_dir") {
        let path = entry.expect("dir entry").path();
        let rel = path.strip_prefix(root).expect("inside the package");
        let rel = rel.to_str().expect("UTF-8 path").to_owned();
        if path.is_dir() {
            rust_files(&rel, found);
        } else if rel.ends_with(".rs") {
            found.push(rel);
        }
    }
}

#[test]
fn package_ships_sources_examples_and_docs() {
    let list = package_list();
    let mut want = Vec::new();
    for dir in ["src", "examples", "benches"] {
        rust_files(dir, &mut want);
    }
    assert!(want.len() > 30, "the walk found too little: {want:?}");
    want.extend(["README.md", "CHANGELOG.md", "Cargo.toml"].map(String::from));
    let missing: Vec<&String> = want.iter().filter(|f| !list.contains(f)).collect();
    assert!(missing.is_empty(), "not packaged: {missing:?}\n{list:?}");
}

#[test]
fn package_ships_no_tests() {
    let list = package_list();
    let tests: Vec<&String> = list.iter().filter(|f| f.starts_with("tests/")).collect();
    assert!(tests.is_empty(), "tests packaged: {tests:?}");
    assert!(list.iter().any(|f| f == "src/lib.rs"), "{list:?}");
}
