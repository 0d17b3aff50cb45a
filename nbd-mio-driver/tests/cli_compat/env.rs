//! The files and names the table's placeholders stand for.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{TempDir, free_port, require_tool, run_ok};

/// The fixtures, made once per test run.
pub struct Env {
    dir: TempDir,
    immutable: PathBuf,
    /// A process that has exited (for `exit-when-process-exits=`).
    dead_pid: u32,
    /// A process a row may kill (`$SLEEPPID`); not reaped until the end,
    /// so it stays a zombie once killed, as an unwatched child would.
    sleeper: std::process::Child,
}

const CONFIG: &str = r#"
default = "golden"

[[export]]
name = "scratch"
backend = "memory"
args = ["1M"]

[[export]]
name = "golden"
backend = "pattern"
params = { size = "2M" }
description = "golden image"
"#;

impl Env {
    pub fn new() -> Self {
        let dir = TempDir::new("compat");
        let p = dir.path();
        std::fs::write(p.join("file.img"), vec![7u8; 1 << 20]).unwrap();
        std::fs::create_dir(p.join("dir")).unwrap();
        std::fs::write(p.join("dir/a.img"), vec![1u8; 4096]).unwrap();
        std::fs::write(p.join("dir/b.img"), vec![2u8; 8192]).unwrap();
        std::fs::write(p.join("keys.psk"), format!("alice:{}\n", "ab".repeat(32))).unwrap();
        // World-readable on purpose: one row checks the warning about it.
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o644);
        std::fs::set_permissions(p.join("keys.psk"), mode).unwrap();
        std::fs::write(p.join("exports.toml"), CONFIG).unwrap();
        let immutable = p.join("immutable.img");
        std::fs::write(&immutable, vec![9u8; 1 << 20]).unwrap();
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(&immutable)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "chattr +i failed (needs root and a filesystem with attributes); install e2fsprogs: apt-get install -y e2fsprogs"
        );
        compressed_copies(p);
        std::fs::write(p.join("mbr.img"), mbr_disk()).unwrap();
        let mut gone = Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let sleeper = Command::new("sleep").arg("600").spawn().unwrap();
        Self {
            dir,
            immutable,
            dead_pid: gone.id(),
            sleeper,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn psk(&self) -> PathBuf {
        self.path().join("keys.psk")
    }

    /// `word` with every placeholder replaced; `row` names per-row files.
    pub fn expand(&self, word: &str, row: &Path) -> String {
        let p = |x: &str| self.path().join(x).display().to_string();
        word.replace("$FILE", &p("file.img"))
            .replace("$IMMUTABLE", &self.immutable.display().to_string())
            .replace("$DIR", &p("dir"))
            .replace("$PSK", &p("keys.psk"))
            .replace("$CONFIG", &p("exports.toml"))
            .replace("$XZ", &p("file.img.xz"))
            .replace("$GZ", &p("file.img.gz"))
            .replace("$QCOW2", &p("file.qcow2"))
            .replace("$MBR", &p("mbr.img"))
            .replace("$DEADPID", &self.dead_pid.to_string())
            .replace("$SLEEPPID", &self.sleeper.id().to_string())
            .replace("$PIDFILE", &row.join("pid").display().to_string())
            .replace("$PORT", &free_port().to_string())
            .replace("$TMP", &row.display().to_string())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
        // Otherwise the directory cannot be removed, by us or anyone.
        let _ = Command::new("chattr")
            .arg("-i")
            .arg(&self.immutable)
            .status();
        let _ = std::fs::remove_dir_all(self.path());
    }
}

/// `$XZ` (256 KiB blocks), `$GZ` and `$QCOW2`: `$FILE` compressed or
/// converted, for the xz, gzip and qcow2dec filters.
fn compressed_copies(dir: &Path) {
    let file = dir.join("file.img");
    run_ok(
        Command::new(require_tool("xz", "xz-utils"))
            .args(["-k", "-T1", "--block-size=256KiB"])
            .arg(&file),
    );
    run_ok(
        Command::new(require_tool("gzip", "gzip"))
            .arg("-k")
            .arg(&file),
    );
    run_ok(
        Command::new(require_tool("qemu-img", "qemu-utils"))
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&file)
            .arg(dir.join("file.qcow2")),
    );
}

/// `$MBR`: a 2 MiB disk whose MBR has one Linux partition, 512-byte
/// sectors 2048 to 4095 (the second MiB), filled with 0x33.
fn mbr_disk() -> Vec<u8> {
    let mut d = vec![0u8; 2 << 20];
    let entry = &mut d[0x1be..0x1ce];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&2048u32.to_le_bytes());
    d[510] = 0x55;
    d[511] = 0xaa;
    d[1 << 20..].fill(0x33);
    d
}
