//! The machine and the versions a run measured, for the report header.

use super::procfs;
use crate::util::root;
use std::path::Path;
use std::process::Command;

pub struct Env {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub mem_gib: f64,
    pub kernel: String,
    pub load_start: String,
    pub load_end: String,
    /// (tool, version line)
    pub versions: Vec<(&'static str, String)>,
}

/// The first non-empty output line of a command, or `?`.
fn first_line(program: &str, args: &[&str], pick: impl Fn(&str) -> bool) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && pick(l))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
}

/// `git rev-parse` of the tree nbdd was built from, marked `-dirty` when
/// sources differ from it (the report and chart themselves excluded).
fn git_rev() -> String {
    let r = root();
    let rev = first_line(
        "git",
        &[
            "-C",
            &r.display().to_string(),
            "rev-parse",
            "--short=12",
            "HEAD",
        ],
        |_| true,
    );
    let dirty = Command::new("git")
        .args([
            "-C",
            &r.display().to_string(),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
        ])
        .args([":!BENCHMARKS.md", ":!docs/bench.svg"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty { format!("{rev}-dirty") } else { rev }
}

impl Env {
    /// Reads the machine now; `load_end` is filled by [`Env::finish`].
    pub fn capture(nbdd: &Path) -> Self {
        let nbdd_s = nbdd.display().to_string();
        Self {
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"], |_| true),
            cpu: procfs::cpu_model(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            mem_gib: procfs::mem_gib(),
            kernel: procfs::kernel(),
            load_start: procfs::loadavg(),
            load_end: String::new(),
            versions: vec![
                (
                    "nbdd",
                    format!(
                        "{} (git {})",
                        first_line(&nbdd_s, &["--version"], |_| true),
                        git_rev()
                    ),
                ),
                ("nbdkit", first_line("nbdkit", &["--version"], |_| true)),
                ("qemu-nbd", first_line("qemu-nbd", &["--version"], |_| true)),
                ("fio", first_line("fio", &["--version"], |_| true)),
                (
                    "libnbd",
                    first_line("nbdinfo", &["--version"], |l| l.starts_with("libnbd")),
                ),
                ("rustc", first_line("rustc", &["--version"], |_| true)),
            ],
        }
    }

    pub fn finish(&mut self) {
        self.load_end = procfs::loadavg();
    }
}
