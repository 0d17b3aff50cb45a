//! Several exports with different backends from one server (issue 10),
//! through `--add-export` and `--config`, checked with real clients:
//! NBD_OPT_LIST names them in order, INFO (nbdinfo --list) and GO (nbdinfo,
//! qemu-img) agree on each, the default export is the one chosen, unknown
//! names are refused, and each export keeps its own read-only flag,
//! filters and RESIZE permission (issue 15).

mod common;

use std::process::Command;

use common::json::{self, Value};
use common::raw::Raw;
use common::{Server, TempDir, Transport, require_tool, run, run_ok};
use nbd_proto::{HeaderMode, TransmissionFlags};

fn nbdinfo(args: &[&str]) -> Value {
    require_tool("nbdinfo", "libnbd-bin");
    json::parse(&run_ok(Command::new("nbdinfo").arg("--json").args(args)))
}

/// (size, read-only, description) of an export object of nbdinfo.
fn facts(e: &Value) -> (u64, bool, String) {
    (
        e.get("export-size").u64(),
        e.get("is_read_only").bool(),
        e.try_get("description")
            .map_or(String::new(), |d| d.str().to_owned()),
    )
}

#[test]
fn add_export_serves_different_backends_and_info_agrees_with_go() {
    let dir = TempDir::new("exports");
    let file = dir.path().join("disk.img");
    std::fs::write(&file, vec![5u8; 3 << 20]).unwrap();
    let spec_file = format!("files=--description='a file' file {}", file.display());
    let s = Server::start(
        Transport::Unix,
        &[
            "--add-export",
            "scratch=--description=Scratch memory 1M",
            "--add-export",
            "golden=-r --description=Golden pattern 2M",
            "--add-export",
            &spec_file,
            "--default-export=golden",
        ],
    );
    let list = nbdinfo(&["--list", &s.uri()]);
    let listed: Vec<(String, (u64, bool, String))> = list
        .get("exports")
        .arr()
        .iter()
        .map(|e| (e.get("export-name").str().to_owned(), facts(e)))
        .collect();
    let want = [
        ("scratch", (1 << 20, false, "Scratch")),
        ("golden", (2 << 20, true, "Golden")),
        ("files", (3 << 20, false, "a file")),
    ];
    assert_eq!(listed.len(), 3, "{listed:?}");
    for ((name, got), (wname, (size, ro, desc))) in listed.iter().zip(want) {
        assert_eq!(name, wname);
        assert_eq!(got, &(size, ro, desc.to_owned()), "LIST/INFO of {name}");
        // GO (nbdinfo without --list) and qemu's client agree with INFO.
        let go = nbdinfo(&[&s.uri_for(name)]);
        assert_eq!(&facts(&go.get("exports").arr()[0]), got, "GO of {name}");
        require_tool("qemu-img", "qemu-utils");
        let q = json::parse(&run_ok(Command::new("qemu-img").args([
            "info",
            "--output=json",
            &s.uri_for(name),
        ])));
        assert_eq!(q.get("virtual-size").u64(), size, "qemu-img info {name}");
    }
    // The default export is the one named, not the first.
    let d = nbdinfo(&[&s.uri()]);
    assert_eq!(facts(&d.get("exports").arr()[0]).0, 2 << 20);
    // With several exports, an unknown name is refused.
    let out = run(Command::new("qemu-img").args(["info", &s.uri_for("nope")]));
    assert!(!out.status.success(), "unknown export served");
    // Each export keeps its own read-only flag: writes reach scratch only.
    require_tool("qemu-io", "qemu-utils");
    let w = |name: &str| {
        run(Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            "write -P 0xab 0 4k",
            &s.uri_for(name),
        ]))
    };
    assert!(w("scratch").status.success());
    let ro = w("golden");
    assert!(
        !ro.status.success() || String::from_utf8_lossy(&ro.stdout).contains("ermission"),
        "golden accepted a write"
    );
}

const CONFIG: &str = r#"
default = "overlay"

[[export]]
name = "grow"
backend = "memory"
args = ["1M"]
resize = true
description = "resizable scratch"

[[export]]
name = "overlay"
backend = "file"
filters = ["cow"]
params = { file = "BASE" }
"#;

fn resize_advertised(s: &Server, name: &str) -> bool {
    let mut c = Raw::connect(s);
    c.start();
    c.negotiate_after_flags(name, HeaderMode::Simple);
    c.flags.contains(TransmissionFlags::SEND_RESIZE)
}

#[test]
fn config_file_gives_each_export_its_filters_and_resize() {
    let dir = TempDir::new("config");
    let base = dir.path().join("base.img");
    std::fs::write(&base, vec![3u8; 1 << 20]).unwrap();
    let cfg = dir.path().join("exports.toml");
    std::fs::write(&cfg, CONFIG.replace("BASE", &base.display().to_string())).unwrap();
    let s = Server::start(Transport::Unix, &["--config", cfg.to_str().unwrap()]);
    let list = nbdinfo(&["--list", &s.uri()]);
    let names: Vec<&str> = list
        .get("exports")
        .arr()
        .iter()
        .map(|e| e.get("export-name").str())
        .collect();
    assert_eq!(names, ["grow", "overlay"]);
    assert!(resize_advertised(&s, "grow"), "resize = true");
    assert!(
        !resize_advertised(&s, "overlay"),
        "resize is off by default"
    );
    assert!(
        !resize_advertised(&s, ""),
        "the default export is 'overlay'"
    );
    // The cow filter applies to 'overlay' only: writes land in its overlay
    // and the base file is untouched.
    require_tool("qemu-io", "qemu-utils");
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xee 0 64k",
        "-c",
        "read -P 0xee 0 64k",
        &s.uri_for("overlay"),
    ]));
    assert!(
        std::fs::read(&base).unwrap().iter().all(|&b| b == 3),
        "base modified"
    );
}

#[test]
fn config_errors_name_file_line_and_export() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[[export]]\nname = \"a\"\nbackend = \"memory\"\nsize = 1\n",
    )
    .unwrap();
    let out =
        run(Command::new(env!("CARGO_BIN_EXE_nbdd")).args(["--config", cfg.to_str().unwrap()]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.starts_with("nbdd: ") && err.contains("bad.toml:4:") && err.contains("size"),
        "{err}"
    );
    std::fs::write(
        &cfg,
        "[[export]]\nname = \"a\"\nbackend = \"memory\"\nargs = [\"1X\"]\n",
    )
    .unwrap();
    let out =
        run(Command::new(env!("CARGO_BIN_EXE_nbdd")).args(["--config", cfg.to_str().unwrap()]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("export 'a'") && err.contains("1X"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
