//! qemu-img / qemu-io / qemu-nbd helpers for the qcow2 tests, and a tiny
//! reader for `qemu-img map --output=json` (one object per line).

// Each test file uses a different subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A scratch directory, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("nbd-qcow2-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run a tool; fail naming the Debian package when it is missing.
pub fn run(tool: &str, args: &[&str]) -> String {
    let pkg = if tool == "nbdinfo" {
        "libnbd-bin"
    } else {
        "qemu-utils"
    };
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}: install the Debian package {pkg}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `qemu-img create -f qcow2 [-b backing -F fmt] path size`.
pub fn create(path: &Path, size: &str, backing: Option<(&Path, &str)>) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if let Some((b, f)) = backing {
        args.extend(["-b", s(b), "-F", f]);
    }
    args.extend([s(path), size]);
    run("qemu-img", &args);
}

/// qemu-io commands on a qcow2 image, e.g. `write -P 0xaa 0 64k`.
pub fn qemu_io(path: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(s(path));
    run("qemu-io", &args);
}

/// The guest-visible bytes, as qemu reads them.
pub fn raw_bytes(path: &Path, dir: &Dir) -> Vec<u8> {
    let out = dir.path("convert.raw");
    run("qemu-img", &["convert", "-O", "raw", s(path), s(&out)]);
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    v
}

/// `qemu-img check` must pass.
pub fn check(path: &Path) {
    run("qemu-img", &["check", "-q", s(path)]);
}

/// One `qemu-img map` entry.
#[derive(Debug, Clone, Copy)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    /// 0-based layer (qemu-img's numbering).
    pub depth: u32,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let k = format!("\"{key}\": ");
    let from = line.find(&k).unwrap_or_else(|| panic!("{key} in {line}")) + k.len();
    let rest = &line[from..];
    rest[..rest.find([',', '}']).unwrap()].trim()
}

pub fn map(path: &Path) -> Vec<MapEntry> {
    run("qemu-img", &["map", "--output=json", s(path)])
        .lines()
        .filter(|l| l.contains("\"start\""))
        .map(|l| MapEntry {
            start: field(l, "start").parse().unwrap(),
            length: field(l, "length").parse().unwrap(),
            depth: field(l, "depth").parse().unwrap(),
            present: field(l, "present") == "true",
            zero: field(l, "zero") == "true",
            data: field(l, "data") == "true",
        })
        .collect()
}

/// Merge adjacent runs with equal values.
pub fn merge<T: PartialEq + Copy>(runs: impl IntoIterator<Item = (u64, T)>) -> Vec<(u64, T)> {
    let mut v: Vec<(u64, T)> = Vec::new();
    for (len, t) in runs {
        match v.last_mut() {
            Some((l, last)) if *last == t => *l += len,
            _ => v.push((len, t)),
        }
    }
    v
}
