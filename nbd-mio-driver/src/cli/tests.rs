//! Unit tests of the parser: forms, aliases, combinations, errors.

use super::*;

fn run(args: &[&str]) -> Result<Config, String> {
    match parse(args.iter().map(|s| (*s).to_owned()))? {
        Parsed::Run(c) => Ok(*c),
        other => panic!("expected Run, got {other:?}"),
    }
}

#[test]
fn defaults() {
    let c = run(&["memory", "1M"]).unwrap();
    assert_eq!(c.backend, "memory");
    assert_eq!(c.backend_args, ["1M"]);
    assert_eq!(c.port, DEFAULT_PORT);
    assert!(!c.port_given && !c.foreground && !c.readonly);
    assert_eq!(c.log, LogTarget::Syslog);
    assert_eq!(c.tls, TlsMode::Off);
}

#[test]
fn options_anywhere_and_both_value_forms() {
    let c = run(&[
        "-p",
        "1234",
        "memory",
        "size=1M",
        "-r",
        "--exportname=x",
        "--filter",
        "a",
        "--filter=b",
        "-fvv",
        "-ifoo",
    ])
    .unwrap();
    assert_eq!(c.port, 1234);
    assert!(c.port_given && c.readonly && c.foreground);
    assert_eq!(c.export_name, "x");
    assert_eq!(c.filters, ["a", "b"]);
    assert_eq!(c.verbose, 2);
    assert_eq!(c.ipaddr.as_deref(), Some("foo"));
    assert_eq!(c.backend_args, ["size=1M"]);
    assert_eq!(c.log, LogTarget::Stderr);
}

#[test]
fn double_dash_ends_options() {
    let c = run(&["file", "--", "-weird-name", "-r"]).unwrap();
    assert_eq!(c.backend_args, ["-weird-name", "-r"]);
    assert!(!c.readonly);
}

#[test]
fn run_implies_private_socket_and_foreground() {
    let c = run(&["--run", "true", "memory", "1M"]).unwrap();
    assert_eq!(c.unix, Some(UnixPath::Private));
    assert!(c.foreground);
    let c = run(&["--run", "true", "-p", "0", "memory", "1M"]).unwrap();
    assert_eq!(c.unix, None);
    let c = run(&["--run", "true", "-U", "/x/s", "memory"]).unwrap();
    assert_eq!(c.unix, Some(UnixPath::Path("/x/s".into())));
}

#[test]
fn every_flag_is_accepted() {
    let c = run(&[
        "-s",
        "-o",
        "-n",
        "-D",
        "nbdkit.x=1",
        "-t",
        "4",
        "--tls=require",
        "--tls-certificates",
        "/c",
        "--tls-psk=/k",
        "--tls-verify-peer",
        "--print-uri",
        "--exit-with-parent",
        "--log=null",
        "-P",
        "/p",
        "--verbose",
        "null",
    ])
    .unwrap();
    assert!(c.single && c.foreground && !c.oldstyle && c.tls_verify_peer);
    assert!(c.print_uri && c.exit_with_parent);
    assert_eq!(c.tls, TlsMode::Require);
    assert_eq!(c.tls_certificates, Some("/c".into()));
    assert_eq!(c.tls_psk, Some("/k".into()));
    assert_eq!(c.log, LogTarget::Null);
    assert_eq!(c.pidfile, Some("/p".into()));
    assert_eq!(c.verbose, 1);
}

#[test]
fn help_and_version_win() {
    let p = |a: &[&str]| parse(a.iter().map(|s| (*s).to_owned()));
    assert_eq!(
        p(&["--help"]),
        Ok(Parsed::Help {
            backend: None,
            filters: vec![]
        })
    );
    assert_eq!(
        p(&["--filter=cow", "memory", "--help"]),
        Ok(Parsed::Help {
            backend: Some("memory".into()),
            filters: vec!["cow".into()]
        })
    );
    assert_eq!(p(&["memory", "--version"]), Ok(Parsed::Version));
    assert_eq!(p(&["-V"]), Ok(Parsed::Version));
}

#[test]
fn errors_name_the_argument() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus", "memory"], "--bogus"),
        (&["-Z", "memory"], "-Z"),
        (&["-p", "70000", "memory"], "70000"),
        (&["-p", "memory"], "'memory'"),
        (&["memory", "-p"], "-p"),
        (&["--tls=maybe", "memory"], "maybe"),
        (&["--log=file", "memory"], "file"),
        (&["-t", "x", "memory"], "'x'"),
        (&["-D", "nope", "memory"], "-D"),
        (&["--mask-handshake=x", "memory"], "--mask-handshake"),
        (&["--keepalive", "memory"], "newer than 1.40"),
        (&["--allow-resize", "-r", "memory"], "--allow-resize"),
        (&["--add-export", "a=memory 1M", "memory"], "BACKEND"),
        (&["--add-export", "a=memory 1M", "--filter=cow"], "--filter"),
        (&["--default-export=a", "memory"], "--default-export"),
        (&["--mask-handshake=2", "--tls=require", "memory"], "bit 0"),
        (&["-D", "nope", "memory"], "-D"),
        (&["--mask-handshake=x", "memory"], "--mask-handshake"),
        (&["--keepalive", "memory"], "newer than 1.40"),
        (&["--allow-resize", "-r", "memory"], "--allow-resize"),
        (&["--add-export", "a=memory 1M", "memory"], "BACKEND"),
        (&["--add-export", "a=memory 1M", "--filter=cow"], "--filter"),
        (&["--default-export=a", "memory"], "--default-export"),
        (&["--mask-handshake=2", "--tls=require", "memory"], "bit 0"),
        (&["--readonly=yes", "memory"], "--readonly"),
        (&["-U", "/s", "-p", "1", "memory"], "-U"),
        (&["-s", "--run", "x", "memory"], "-s"),
        (&["--vsock", "-U", "/s", "memory"], "--vsock"),
        (&[], "no backend"),
    ];
    for (args, needle) in cases {
        let e = run(args).unwrap_err();
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn help_lists_every_option() {
    let h = help_text();
    for o in table::options() {
        assert!(h.contains(&format!("--{}", o.long)), "--{}", o.long);
        if let Some(c) = o.short {
            assert!(h.contains(&format!("-{c}, --{}", o.long)), "-{c}");
        }
    }
    assert!(h.contains("event loops (threads)"));
}

#[test]
fn nbdkit_aliases_mean_the_same() {
    let pairs: &[(&[&str], &[&str])] = &[
        (&["--read-only"], &["-r"]),
        (&["--pid-file=/p"], &["-P", "/p"]),
        (&["--export-name=x"], &["-e", "x"]),
        (&["--export=x"], &["-e", "x"]),
        (&["--no-fork"], &["-f"]),
        (&["--ip-addr=::1"], &["-i", "::1"]),
        (&["--stdin"], &["-s"]),
        (&["--new-style"], &["-n"]),
        (&["--old-style"], &["-o"]),
        (&["--no-structured-replies"], &["--no-sr"]),
        (&["--no-meta-contexts"], &["--no-mc"]),
        (&["--ipv6-only"], &["-6"]),
    ];
    for (a, b) in pairs {
        let with = |x: &[&str]| {
            let mut v = x.to_vec();
            v.extend(["memory", "1M"]);
            run(&v).unwrap()
        };
        assert_eq!(with(a), with(b), "{a:?} vs {b:?}");
    }
}

#[test]
fn protocol_switches_map_to_the_handshake() {
    let h = run(&["--no-sr", "--no-mc", "--mask-handshake=0x1", "memory"])
        .unwrap()
        .handshake();
    assert!(!h.structured_replies && !h.extended_headers && !h.allow_meta_contexts);
    assert!(h.fixed_newstyle && !h.no_zeroes);
    let h = run(&["--mask-handshake=0", "memory"]).unwrap().handshake();
    assert!(!h.fixed_newstyle && !h.no_zeroes);
    let d = run(&["memory"]).unwrap().handshake();
    assert_eq!(d, nbd_proto::server::HandshakeConfig::default());
    assert_eq!(parse_c_number("017"), Some(15));
    assert_eq!(parse_c_number("0x1F"), Some(31));
}

#[test]
fn last_family_wins_and_exports_form() {
    let c = run(&["-4", "-6", "memory"]).unwrap();
    assert_eq!(c.family, Some(IpFamily::V6));
    let c = run(&[
        "--add-export",
        "a=memory 1M",
        "--config",
        "x.toml",
        "--default-export=a",
    ])
    .unwrap();
    assert!(c.backend.is_empty() && c.multi_export());
    assert_eq!(c.add_exports, ["a=memory 1M"]);
}

#[test]
fn informational_options() {
    let p = |a: &[&str]| parse(a.iter().map(|s| (*s).to_owned())).unwrap();
    assert_eq!(p(&["--dump-config"]), Parsed::DumpConfig);
    assert_eq!(p(&["--long-options"]), Parsed::ListOptions { long: true });
    match p(&["memory", "1M", "--dump-plugin"]) {
        Parsed::DumpPlugin(c) => assert_eq!(c.backend, "memory"),
        other => panic!("{other:?}"),
    }
}
