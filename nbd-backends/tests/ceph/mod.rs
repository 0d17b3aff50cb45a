//! The throwaway Ceph cluster the rbd tests run against, as they see it:
//! `cargo xtask test` brings it up (xtask/src/ceph.rs) and names its
//! ceph.conf in `NBDD_TEST_CEPH_CONF`; the conf names the admin keyring,
//! and `nbdd.keyring` next to it holds `client.nbdd` with the minimum caps
//! docs/RBD.md recommends. Shared by nbd-backends' and nbd-mio-driver's
//! tests (the latter include this file by path).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The cluster's ceph.conf. Without the variable the test fails: the rbd
/// tests are built only with `--features rbd`, and then they must run.
pub fn conf() -> PathBuf {
    match std::env::var_os("NBDD_TEST_CEPH_CONF") {
        Some(c) => PathBuf::from(c),
        None => panic!(
            "the rbd tests need a Ceph cluster and NBDD_TEST_CEPH_CONF is not set: run \
             `cargo xtask test` (it starts one), or by hand \
             `cargo xtask ceph cargo test --features rbd ...` \
             (needs the Debian packages ceph-mon ceph-osd ceph-common librbd-dev librados-dev)"
        ),
    }
}

/// The keyring of `client.nbdd` (mon `profile rbd`, osd `profile rbd pool=rbd`).
pub fn nbdd_keyring() -> PathBuf {
    conf().with_file_name("nbdd.keyring")
}

/// `program -c CONF args...`; its stdout, panicking with its stderr on failure.
pub fn ceph_tool(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .arg("-c")
        .arg(conf())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (package ceph-common): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `rbd -c CONF args...`.
pub fn rbd(args: &[&str]) -> Vec<u8> {
    ceph_tool("rbd", args)
}

/// An image in pool `rbd` with a name unique to this process, removed
/// (with its snapshots) on drop.
pub struct Image {
    /// The image name.
    pub name: String,
}

impl Image {
    /// `rbd create --size SIZE EXTRA... rbd/NAME`; `extra` chooses features
    /// and object size (e.g. `--image-feature layering --object-size 64K`).
    pub fn create(size: &str, extra: &[&str]) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let spec = format!("rbd/{name}");
        let mut args = vec!["create", "--size", size];
        args.extend_from_slice(extra);
        args.push(&spec);
        rbd(&args);
        Self { name }
    }

    /// A layering-only image (no exclusive lock) with `object` objects.
    pub fn simple(size: &str, object: &str) -> Self {
        Self::create(
            size,
            &["--image-feature", "layering", "--object-size", object],
        )
    }

    /// `rbd/NAME`.
    pub fn spec(&self) -> String {
        format!("rbd/{}", self.name)
    }

    /// The whole image through a fresh librbd client (`rbd export`).
    pub fn export(&self) -> Vec<u8> {
        rbd(&["export", "--no-progress", &self.spec(), "-"])
    }

    /// `rbd snap create rbd/NAME@SNAP`.
    pub fn snapshot(&self, snap: &str) {
        rbd(&[
            "snap",
            "create",
            "--no-progress",
            &format!("{}@{snap}", self.spec()),
        ]);
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            Command::new("rbd")
                .arg("-c")
                .arg(conf())
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let spec = self.spec();
        if !run(&["rm", "--no-progress", &spec]) {
            run(&["snap", "purge", "--no-progress", &spec]);
            run(&["rm", "--no-progress", &spec]);
        }
    }
}
