//! Greeting, client flags and option haggling (checklist 1-27, 50).

use std::time::Duration;

use nbd_proto::{CmdFlags, Command, HeaderMode};

use crate::common::raw::{Raw, info_data, opt, rep};
use crate::common::{Server, TempDir, Transport};
use crate::{memory, pattern};

#[test]
fn checklist_1_2_greeting_is_18_bytes_with_known_flags_only() {
    let s = memory(&[]);
    let mut c = Raw::connect(&s);
    let g = c.greeting();
    assert_eq!(&g[..8], &[0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43]);
    assert_eq!(&g[8..16], &[0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54]);
    let flags = u16::from_be_bytes([g[16], g[17]]);
    assert_eq!(flags & 1, 1, "FIXED_NEWSTYLE");
    assert_eq!(flags & !3, 0, "undefined handshake flags {flags:#x}");
    // Exactly 18 bytes: nothing more until the client speaks.
    assert!(c.quiet_for(Duration::from_millis(200)));
}

#[test]
fn checklist_3_undefined_client_flags_close_without_reply() {
    let s = memory(&[]);
    for flags in [0x0000_0004u32, 0x8000_0001, 0xffff_ffff] {
        let mut c = Raw::connect(&s);
        c.greeting();
        c.client_flags(flags);
        c.expect_closed();
    }
}

#[test]
fn checklist_4_5_valid_client_flags_wait_for_an_option() {
    // nbdd always advertises NO_ZEROES, so the item 4 stimulus (C_NO_ZEROES
    // without the offer) cannot arise; what remains is that flags 1 and 3
    // are accepted and the server then says nothing until an option comes.
    let s = memory(&[]);
    for flags in [1u32, 3] {
        let mut c = Raw::connect(&s);
        let g = c.greeting();
        assert_eq!(g[17] & 2, 2, "NO_ZEROES advertised");
        c.client_flags(flags);
        assert!(c.quiet_for(Duration::from_millis(200)), "flags {flags}");
        c.option(opt::LIST, &[]);
        assert_eq!(c.opt_reply().reply, rep::SERVER);
    }
}

/// Read LIST replies up to the ACK; returns the export names.
fn list(c: &mut Raw) -> Vec<String> {
    c.option(opt::LIST, &[]);
    let mut names = Vec::new();
    loop {
        let r = c.opt_reply();
        assert_eq!(r.option, opt::LIST);
        match r.reply {
            rep::ACK => return names,
            rep::SERVER => {
                let n = u32::from_be_bytes(r.data[..4].try_into().unwrap()) as usize;
                assert!(n <= r.data.len() - 4, "name length inside the reply");
                names.push(String::from_utf8(r.data[4..4 + n].to_vec()).unwrap());
            }
            other => panic!("LIST reply {other:#x}"),
        }
    }
}

#[test]
fn checklist_8_10_unknown_option_is_unsup_and_its_data_drained() {
    let s = memory(&["-e", "disk"]);
    let mut c = Raw::connect(&s);
    c.start();
    c.option(0x1234, b"7 bytes");
    let r = c.opt_reply();
    assert_eq!((r.option, r.reply), (0x1234, rep::ERR_UNSUP));
    // 100 bytes of data that look like an option header: drained, not parsed.
    let mut junk = Vec::new();
    while junk.len() < 100 {
        junk.extend_from_slice(b"IHAVEOPT\0\0\0\x03\0\0\0\0");
    }
    junk.truncate(100);
    c.option(0x1234, &junk);
    assert_eq!(c.opt_reply().reply, rep::ERR_UNSUP);
    assert_eq!(list(&mut c), ["disk"]);
    // The withdrawn PEEK_EXPORT (4) too (checklist 9).
    c.option(4, b"abc");
    assert_eq!(c.opt_reply().reply, rep::ERR_UNSUP);
    assert_eq!(list(&mut c), ["disk"]);
}

#[test]
fn checklist_18_export_name_reply_is_134_bytes_then_transmission() {
    let s = memory(&[]);
    let mut c = Raw::connect(&s);
    c.greeting();
    c.client_flags(1);
    c.option(opt::EXPORT_NAME, b"");
    let r = c.recv(134);
    assert_eq!(u64::from_be_bytes(r[..8].try_into().unwrap()), 1 << 20);
    assert_eq!(r[9] & 1, 1, "HAS_FLAGS");
    assert!(r[10..].iter().all(|&b| b == 0), "124 zero bytes");
    c.size = 1 << 20;
    assert_eq!(c.read(0, 4096), vec![0; 4096]);
}

#[test]
fn checklist_19_export_name_with_no_zeroes_is_10_bytes() {
    let s = memory(&[]);
    let mut c = Raw::connect(&s);
    c.start();
    c.option(opt::EXPORT_NAME, b"");
    let r = c.recv(10);
    assert_eq!(u64::from_be_bytes(r[..8].try_into().unwrap()), 1 << 20);
    // The next bytes must already be the reply to this READ: any padding
    // would show up as a bad reply magic.
    c.write(512, &pattern(512, 3));
    assert_eq!(c.read(512, 512), pattern(512, 3));
}

/// A server that lists its exports (`file dir=`, in nbdd and nbdkit) and
/// so refuses other names; a one-export server answers any name.
fn dir_server(dir: &TempDir) -> Server {
    std::fs::write(dir.path().join("disk"), vec![0u8; 1 << 20]).unwrap();
    let dir_arg = format!("dir={}", dir.path().display());
    Server::start(Transport::Unix, &["file", &dir_arg])
}

#[test]
fn checklist_20_export_name_unknown_closes_without_reply() {
    let dir = TempDir::new("checklist20");
    let s = dir_server(&dir);
    let mut c = Raw::connect(&s);
    c.start();
    c.option(opt::EXPORT_NAME, b"nosuch");
    c.expect_closed();
}

#[test]
fn checklist_22_info_reports_export_and_stays_in_negotiation() {
    let s = memory(&["-e", "disk"]);
    let mut c = Raw::connect(&s);
    c.start();
    c.info_go(opt::INFO, "disk", &[]);
    let mut export = None;
    loop {
        let r = c.opt_reply();
        assert_eq!(r.option, opt::INFO);
        match r.reply {
            rep::ACK => break,
            rep::INFO if r.data[..2] == [0, 0] => {
                assert_eq!(r.data.len(), 12, "INFO_EXPORT length");
                export = Some(r.data.clone());
            }
            rep::INFO => {}
            other => panic!("INFO reply {other:#x}"),
        }
    }
    let export = export.expect("an NBD_INFO_EXPORT");
    assert_eq!(
        u64::from_be_bytes(export[2..10].try_into().unwrap()),
        1 << 20
    );
    assert_eq!(list(&mut c), ["disk"]);
}

#[test]
fn checklist_23_go_has_no_padding_and_transmission_follows() {
    let s = memory(&[]);
    let mut c = Raw::connect(&s);
    c.start();
    c.info_go(opt::GO, "", &[]);
    c.finish_go();
    assert_eq!(c.size, 1 << 20);
    c.request(Command::Read, CmdFlags::empty(), 1, 0, 8);
    // Straight after the ACK: the simple reply magic, no zero padding.
    assert_eq!(c.recv(4), [0x67, 0x44, 0x66, 0x98]);
}

/// nbdkit's policy: a server with one export serves it whatever name the
/// client asks for (EXPORT_NAME, INFO and GO alike).
#[test]
fn one_export_answers_any_name() {
    let s = memory(&["-e", "disk"]);
    let mut c = Raw::connect(&s);
    c.start();
    c.negotiate_after_flags("any-other-name", HeaderMode::Simple);
    assert_eq!(c.size, 1 << 20);
}

#[test]
fn checklist_24_unknown_export_info_go_is_err_unknown_then_go_works() {
    let dir = TempDir::new("checklist24");
    let s = dir_server(&dir);
    let mut c = Raw::connect(&s);
    c.start();
    for o in [opt::INFO, opt::GO] {
        c.info_go(o, "nosuch", &[]);
        let r = c.opt_reply();
        assert_eq!((r.option, r.reply), (o, rep::ERR_UNKNOWN), "no INFO first");
    }
    c.negotiate_after_flags("disk", HeaderMode::Simple);
    assert_eq!(c.read(0, 512), vec![0; 512]);
}

/// INFO or GO; returns the INFO_EXPORT payload.
fn export_info(c: &mut Raw, o: u32, infos: &[u16]) -> Vec<u8> {
    c.info_go(o, "", infos);
    let mut export = None;
    loop {
        let r = c.opt_reply();
        match r.reply {
            rep::ACK => return export.expect("INFO_EXPORT"),
            rep::INFO if r.data[..2] == [0, 0] => export = Some(r.data),
            rep::INFO => {}
            other => panic!("reply {other:#x}"),
        }
    }
}

#[test]
fn checklist_25_26_unknown_info_ignored_info_and_go_agree() {
    let s = memory(&[]);
    let mut c = Raw::connect(&s);
    c.start();
    let info = export_info(&mut c, opt::INFO, &[0x7777, 3]);
    let go = export_info(&mut c, opt::GO, &[0x7777, 3]);
    assert_eq!(info, go, "INFO and GO report the same size and flags");
    c.size = 1 << 20;
    assert_eq!(c.read(0, 512), vec![0; 512]);
}

#[test]
fn checklist_27_malformed_info_is_err_invalid_and_negotiation_continues() {
    let s = memory(&[]);
    let mut c = Raw::connect(&s);
    c.start();
    // Name length past the option's end.
    let mut bad_name = info_data("", &[]);
    bad_name[..4].copy_from_slice(&100u32.to_be_bytes());
    // Info count claims 3 requests, 1 present.
    let mut bad_count = info_data("", &[1]);
    let at = bad_count.len() - 4;
    bad_count[at..at + 2].copy_from_slice(&3u16.to_be_bytes());
    for data in [bad_name, bad_count] {
        for o in [opt::INFO, opt::GO] {
            c.option(o, &data);
            let r = c.opt_reply();
            assert_eq!((r.option, r.reply), (o, rep::ERR_INVALID));
        }
    }
    c.negotiate_after_flags("", HeaderMode::Simple);
    assert_eq!(c.read(0, 512), vec![0; 512]);
}

#[test]
fn checklist_50_starttls_on_notls_server_is_refused_then_go_works() {
    let s = memory(&[]);
    let mut c = Raw::connect(&s);
    c.start();
    c.option(opt::STARTTLS, &[]);
    let r = c.opt_reply();
    assert_eq!(r.option, opt::STARTTLS);
    assert!(
        r.reply == rep::ERR_POLICY || r.reply == rep::ERR_UNSUP,
        "STARTTLS answered {:#x}",
        r.reply
    );
    c.negotiate_after_flags("", HeaderMode::Structured);
    assert_eq!(c.read(0, 512), vec![0; 512]);
}
