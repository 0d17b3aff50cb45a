//! The external tools the test suite needs, how to detect each, and the
//! Debian package that provides it. Missing ones are installed with one
//! `apt-get update` + `apt-get install` when we are root, or reported with
//! the exact install line otherwise.

use crate::util::{is_root, on_path, sh, succeeds};
use std::process::Command;

/// How to tell whether a requirement is met.
enum Probe {
    /// An executable on PATH.
    Tool(&'static str),
    /// A command that must exit 0.
    Cmd(&'static [&'static str]),
}

/// (what, probe, Debian package).
const NEEDS: &[(&str, Probe, &str)] = &[
    ("qemu-img", Probe::Tool("qemu-img"), "qemu-utils"),
    ("qemu-io", Probe::Tool("qemu-io"), "qemu-utils"),
    // Allocation-depth tests compare with qemu-nbd -A.
    ("qemu-nbd", Probe::Tool("qemu-nbd"), "qemu-utils"),
    ("nbdinfo", Probe::Tool("nbdinfo"), "libnbd-bin"),
    ("nbdcopy", Probe::Tool("nbdcopy"), "libnbd-bin"),
    ("nbdsh", Probe::Tool("nbdsh"), "libnbd-bin"),
    // The Debian interpreter explicitly: a pyenv `python3` on PATH does not
    // see the Debian-packaged module.
    (
        "python3 `import nbd`",
        Probe::Cmd(&["/usr/bin/python3", "-c", "import nbd"]),
        "python3-libnbd",
    ),
    ("nbdkit", Probe::Tool("nbdkit"), "nbdkit"),
    ("fio", Probe::Tool("fio"), "fio"),
    ("certtool", Probe::Tool("certtool"), "gnutls-bin"),
    ("psktool", Probe::Tool("psktool"), "gnutls-bin"),
    ("gnutls-cli", Probe::Tool("gnutls-cli"), "gnutls-bin"),
    // cli_compat: an immutable file for the read-only fallback.
    ("chattr", Probe::Tool("chattr"), "e2fsprogs"),
    // cli_man: the generated nbdd(1) must format without warnings.
    ("groff", Probe::Tool("groff"), "groff-base"),
    // bounds.rs: a server under a low descriptor limit.
    ("prlimit", Probe::Tool("prlimit"), "util-linux"),
    // Partition-filter tests label disk images with sfdisk.
    ("sfdisk", Probe::Tool("sfdisk"), "fdisk"),
    // Service tests: socket activation and the sample unit files.
    (
        "systemd-socket-activate",
        Probe::Tool("systemd-socket-activate"),
        "systemd",
    ),
    ("systemd-analyze", Probe::Tool("systemd-analyze"), "systemd"),
    ("pkg-config", Probe::Tool("pkg-config"), "pkg-config"),
    // Plugin tests (e2e_plugins): curl against a local nginx over HTTP and
    // HTTPS (certificates made with openssl), ssh against a local sshd
    // (keys from ssh-keygen), tmpdisk's default mkfs.ext4.
    ("nginx", Probe::Tool("nginx"), "nginx-light"),
    ("openssl", Probe::Tool("openssl"), "openssl"),
    (
        "sshd",
        Probe::Cmd(&["test", "-x", "/usr/sbin/sshd"]),
        "openssh-server",
    ),
    ("ssh-keygen", Probe::Tool("ssh-keygen"), "openssh-client"),
    (
        "mkfs.ext4",
        Probe::Cmd(&["test", "-x", "/usr/sbin/mkfs.ext4"]),
        "e2fsprogs",
    ),
    // Filter tests (e2e_filters, conformance_filters): images for the xz
    // and gzip filters.
    ("xz", Probe::Tool("xz"), "xz-utils"),
    ("gzip", Probe::Tool("gzip"), "gzip"),
    // The rbd backend's tests run a throwaway Ceph cluster (xtask/src/ceph.rs)
    // and link librbd/librados (the .so symlinks come with the -dev packages).
    ("ceph-mon", Probe::Tool("ceph-mon"), "ceph-mon"),
    ("ceph-osd", Probe::Tool("ceph-osd"), "ceph-osd"),
    ("monmaptool", Probe::Tool("monmaptool"), "ceph-base"),
    ("ceph", Probe::Tool("ceph"), "ceph-common"),
    ("rbd", Probe::Tool("rbd"), "ceph-common"),
    ("ceph-authtool", Probe::Tool("ceph-authtool"), "ceph-common"),
    (
        "librbd headers",
        Probe::Cmd(&["test", "-e", "/usr/include/rbd/librbd.h"]),
        "librbd-dev",
    ),
    (
        "librados headers",
        Probe::Cmd(&["test", "-e", "/usr/include/rados/librados.h"]),
        "librados-dev",
    ),
    // The openssl crate (TLS backend) builds against the system headers.
    (
        "OpenSSL headers",
        Probe::Cmd(&["pkg-config", "--exists", "openssl"]),
        "libssl-dev",
    ),
];

fn met(p: &Probe) -> bool {
    match p {
        Probe::Tool(t) => on_path(t),
        Probe::Cmd(argv) => succeeds(Command::new(argv[0]).args(&argv[1..])),
    }
}

/// The Debian packages whose tools are missing, deduplicated, in order.
fn missing() -> Vec<&'static str> {
    let mut pkgs: Vec<&'static str> = Vec::new();
    for (what, probe, pkg) in NEEDS {
        if !met(probe) {
            eprintln!("  missing: {what} (package {pkg})");
            if !pkgs.contains(pkg) {
                pkgs.push(pkg);
            }
        }
    }
    pkgs
}

/// Ensures every needed tool is present.
///
/// # Errors
/// When something is missing and cannot (or may not) be installed; the
/// message holds the exact `apt-get install -y ...` line.
pub fn ensure(install: bool) -> Result<(), String> {
    eprintln!("== checking interop tools");
    let pkgs = missing();
    if pkgs.is_empty() {
        eprintln!("  all present");
        return Ok(());
    }
    let line = format!("apt-get install -y {}", pkgs.join(" "));
    if !install {
        return Err(format!(
            "missing tools (--no-install given); install them with:\n  {line}"
        ));
    }
    if !is_root() || !on_path("apt-get") {
        return Err(format!(
            "missing tools and not root with apt-get; install them with:\n  sudo {line}"
        ));
    }
    let apt = || {
        let mut c = Command::new("apt-get");
        // CI has no stdin: never let debconf ask.
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    sh(apt().arg("update"))?;
    sh(apt()
        .args(["install", "-y", "--no-install-recommends"])
        .args(&pkgs))?;
    let still = missing();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "still missing after apt-get install: {}",
            still.join(" ")
        ))
    }
}

/// Ensures the rustfmt and clippy components exist (rustup installs them
/// in seconds; a minimal-profile toolchain lacks them).
pub fn ensure_components(install: bool) -> Result<(), String> {
    let has = |sub: &str| succeeds(crate::util::cargo().args([sub, "--version"]));
    let missing: Vec<&str> = [("fmt", "rustfmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(sub, _)| !has(sub))
        .map(|(_, comp)| comp)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if install && on_path("rustup") {
        return sh(Command::new("rustup")
            .args(["component", "add"])
            .args(&missing));
    }
    Err(format!(
        "missing toolchain components; install them with:\n  rustup component add {}",
        missing.join(" ")
    ))
}
