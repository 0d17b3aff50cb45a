//! The files and names the table's placeholders stand for.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{TempDir, free_port};

/// The fixtures, made once per test run.
pub struct Env {
    dir: TempDir,
    immutable: PathBuf,
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
        Self { dir, immutable }
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
            .replace("$PIDFILE", &row.join("pid").display().to_string())
            .replace("$PORT", &free_port().to_string())
            .replace("$TMP", &row.display().to_string())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Otherwise the directory cannot be removed, by us or anyone.
        let _ = Command::new("chattr")
            .arg("-i")
            .arg(&self.immutable)
            .status();
        let _ = std::fs::remove_dir_all(self.path());
    }
}
