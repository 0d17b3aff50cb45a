//! `nbdd`'s command line as a user meets it: `--help`, `--version` and the
//! one-line errors with exit status 1.

use std::process::{Command, Output};

fn nbdd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nbdd"))
        .args(args)
        .output()
        .expect("run nbdd")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_lists_every_nbdkit_option() {
    let out = nbdd(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for opt in [
        "-p, --port",
        "-i, --ipaddr",
        "-U, --unix",
        "-f, --foreground",
        "-r, --readonly",
        "-e, --exportname",
        "-o, --oldstyle",
        "-n, --newstyle",
        "-P, --pidfile",
        "-v, --verbose",
        "-D, --debug",
        "-s, --single",
        "-t, --threads",
        "--version",
        "--filter",
        "--tls=off|on|require",
        "--tls-certificates",
        "--tls-psk",
        "--tls-verify-peer",
        "--run",
        "--print-uri",
        "--exit-with-parent",
        "--log=stderr|syslog|null",
        "--vsock",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}:\n{help}");
    }
    // -t starts event loops; the help says so.
    assert!(help.contains("event loops (threads)"), "{help}");
}

#[test]
fn version_prints_name_and_version() {
    let out = nbdd(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        format!("nbdd {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_arguments_give_one_line_and_status_1() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus", "memory", "1M"], "--bogus"),
        (&["-Z", "memory"], "-Z"),
        (&["-p", "99999", "memory"], "99999"),
        (&["memory", "--port"], "--port"),
        (&["--tls=sometimes", "memory"], "sometimes"),
        (&["--log=file", "memory"], "file"),
        (&["-U", "/tmp/x", "-p", "1", "memory"], "-U"),
        (&[], "no backend"),
    ];
    for (args, needle) in cases {
        let out = nbdd(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("nbdd: "), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
