//! Whole negotiation transcripts for the server [`Handshake`]: client bytes
//! in, exact server bytes out, one test per path of nbd-protocol.md section
//! 9 (named by checklist number). Expected bytes are written by hand in
//! `common`, never produced by the encoders under test.

mod common;

use common::*;
use nbd_proto::server::{HandshakeConfig, TlsMode};
use nbd_proto::{HeaderMode, ProtocolError};

fn cfg() -> HandshakeConfig {
    HandshakeConfig::default()
}

/// Fixed newstyle client that accepted NO_ZEROES.
fn fixed() -> Driver {
    Driver::start(cfg(), 3).0
}

fn tls_cfg(tls: TlsMode) -> HandshakeConfig {
    HandshakeConfig { tls, ..cfg() }
}

fn export_name_reply(size: u64, flags: u16, zeroes: bool) -> Vec<u8> {
    let mut v = size.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    if zeroes {
        v.extend_from_slice(&[0; 124]);
    }
    v
}

fn go_ok(option: u32, flags: u16) -> Vec<u8> {
    cat(&[info_export(option, DISK_SIZE, flags), rep(option, ACK, b"")])
}

fn list_reply() -> Vec<u8> {
    cat(&[
        server_rep("disk", "a test disk"),
        server_rep("ro", ""),
        rep(3, ACK, b""),
    ])
}

// ---- 9.1 greeting and flags ------------------------------------------

#[test]
fn checklist_1_2_greeting_is_18_bytes_with_known_flags_only() {
    let (_, g) = Driver::start(cfg(), 3);
    assert_eq!(g, greeting(0x0003));
    let no_z = HandshakeConfig {
        no_zeroes: false,
        ..cfg()
    };
    let (_, g) = Driver::start(no_z, 1);
    assert_eq!(g, greeting(0x0001));
}

#[test]
fn checklist_3_unknown_client_flag_closes_silently() {
    let mut d = Driver::new(cfg());
    d.feed(&[]);
    let out = d.feed(&4u32.to_be_bytes());
    assert!(out.is_empty());
    assert_eq!(d.error, Some(ProtocolError::BadClientFlags(4)));
}

#[test]
fn checklist_4_no_zeroes_not_offered_closes() {
    let mut d = Driver::new(HandshakeConfig {
        no_zeroes: false,
        ..cfg()
    });
    d.feed(&[]);
    assert!(d.feed(&3u32.to_be_bytes()).is_empty());
    assert_eq!(d.error, Some(ProtocolError::BadClientFlags(3)));
}

#[test]
fn checklist_5_good_client_flags_wait_for_options() {
    for flags in [1u32, 3] {
        let (d, _) = Driver::start(cfg(), flags);
        assert!(d.error.is_none());
        assert!(d.hs.wants_read());
        assert!(!d.hs.wants_write());
    }
}

#[test]
fn checklist_6_bad_option_magic_disconnects() {
    let mut d = fixed();
    let mut o = opt(3, b"");
    o[0] ^= 1;
    assert!(d.feed(&o).is_empty());
    assert!(matches!(d.error, Some(ProtocolError::Decode(_))));
}

// ---- 9.2 generic option handling --------------------------------------

#[test]
fn checklist_8_10_unknown_option_with_data_then_list() {
    let mut d = fixed();
    let input = cat(&[opt(0x1234, &[7; 7]), opt(3, b"")]);
    let out = d.feed(&input);
    assert_eq!(
        out,
        cat(&[rep(0x1234, ERR_UNSUP, b"unknown option"), list_reply()])
    );
}

#[test]
fn checklist_10_hundred_garbage_bytes_drained_exactly() {
    let mut d = fixed();
    // The garbage looks like a LIST option itself: it must not be parsed.
    let mut garbage = opt(3, b"").repeat(6);
    garbage.truncate(100);
    let out = d.feed(&cat(&[opt(0x55, &garbage), opt(3, b"")]));
    assert_eq!(
        out,
        cat(&[rep(0x55, ERR_UNSUP, b"unknown option"), list_reply()])
    );
}

#[test]
fn checklist_10_option_data_split_across_reads() {
    let mut d = fixed();
    let input = cat(&[opt(0x1234, &[1; 40]), opt(3, b"")]);
    let mut out = Vec::new();
    for b in &input {
        out.extend(d.feed(std::slice::from_ref(b)));
    }
    assert_eq!(
        out,
        cat(&[rep(0x1234, ERR_UNSUP, b"unknown option"), list_reply()])
    );
}

#[test]
fn checklist_9_option_4_peek_export_unsupported() {
    let mut d = fixed();
    let out = d.feed(&opt(4, b"disk"));
    assert_eq!(out, rep(4, ERR_UNSUP, b"unknown option"));
    assert!(!d.hs.is_closed());
}

#[test]
fn checklist_11_option_count_limit_disconnects() {
    let mut d = Driver::start(
        HandshakeConfig {
            max_options: 3,
            ..cfg()
        },
        3,
    )
    .0;
    let out = d.feed(&opt(3, b"").repeat(4));
    assert_eq!(out, list_reply().repeat(3));
    assert_eq!(d.error, Some(ProtocolError::TooManyOptions));
}

#[test]
fn checklist_11_oversize_option_disconnects() {
    let mut d = Driver::start(
        HandshakeConfig {
            max_drain_len: 1000,
            ..cfg()
        },
        3,
    )
    .0;
    let mut header = opt(0x1234, b"");
    header[12..16].copy_from_slice(&1001u32.to_be_bytes());
    assert!(d.feed(&header).is_empty());
    assert_eq!(d.error, Some(ProtocolError::OptionTooLarge(1001)));
}

#[test]
fn checklist_11_parsed_option_above_limit_is_drained_too_big() {
    let mut d = Driver::start(
        HandshakeConfig {
            max_option_len: 16,
            ..cfg()
        },
        3,
    )
    .0;
    let big = info_data(&"x".repeat(40), &[]);
    let out = d.feed(&cat(&[opt(6, &big), opt(3, b"")]));
    assert_eq!(
        out,
        cat(&[rep(6, ERR_TOO_BIG, b"option too large"), list_reply()])
    );
}

// ---- 9.3 ABORT, LIST, EXPORT_NAME ---------------------------------------

#[test]
fn checklist_13_abort_without_data_acks_and_closes() {
    let mut d = fixed();
    assert_eq!(d.feed(&opt(2, b"")), rep(2, ACK, b""));
    assert!(d.hs.is_closed());
    assert!(!d.hs.wants_read());
}

#[test]
fn checklist_14_abort_with_data_still_acks() {
    let mut d = fixed();
    assert_eq!(d.feed(&opt(2, b"12345")), rep(2, ACK, b""));
    assert!(d.hs.is_closed());
}

#[test]
fn checklist_16_list_entries_then_ack() {
    let mut d = fixed();
    assert_eq!(d.feed(&opt(3, b"")), list_reply());
    assert_eq!(d.seen.lists, 1);
}

#[test]
fn checklist_17_list_with_data_is_invalid_and_negotiation_continues() {
    let mut d = fixed();
    let out = d.feed(&cat(&[opt(3, b"xyz"), opt(3, b"")]));
    assert_eq!(
        out,
        cat(&[rep(3, ERR_INVALID, b"LIST takes no data"), list_reply()])
    );
    assert_eq!(d.seen.lists, 1);
}

#[test]
fn checklist_18_export_name_without_no_zeroes_is_134_bytes() {
    let mut d = Driver::start(cfg(), 1).0;
    let out = d.feed(&opt(1, b"disk"));
    assert_eq!(out, export_name_reply(DISK_SIZE, DISK_WIRE_FLAGS, true));
    assert_eq!(out.len(), 134);
    let n = d.hs.negotiated().unwrap();
    assert_eq!(n.mode, HeaderMode::Simple);
    assert_eq!(n.flags.bits(), DISK_WIRE_FLAGS);
}

#[test]
fn checklist_19_export_name_with_no_zeroes_is_10_bytes() {
    let mut d = fixed();
    let out = d.feed(&opt(1, b"disk"));
    assert_eq!(out, export_name_reply(DISK_SIZE, DISK_WIRE_FLAGS, false));
}

#[test]
fn checklist_20_export_name_unknown_closes_without_reply() {
    let mut d = fixed();
    assert!(d.feed(&opt(1, b"nope")).is_empty());
    assert!(d.hs.is_closed());
    assert!(d.hs.negotiated().is_none());
}

#[test]
fn checklist_21_export_name_empty_is_default_export() {
    let mut d = fixed();
    let out = d.feed(&opt(1, b""));
    assert_eq!(out, export_name_reply(DISK_SIZE, DISK_WIRE_FLAGS, false));
    assert_eq!(d.seen.exports, vec![String::new()]);
}

#[test]
fn export_name_with_nul_is_refused() {
    let mut d = fixed();
    assert!(d.feed(&opt(1, b"a\0b")).is_empty());
    assert!(matches!(d.error, Some(ProtocolError::Decode(_))));
}

// ---- 9.4 INFO and GO ----------------------------------------------------

#[test]
fn checklist_22_info_then_negotiation_continues() {
    let mut d = fixed();
    let out = d.feed(&cat(&[opt(6, &info_data("disk", &[])), opt(3, b"")]));
    assert_eq!(out, cat(&[go_ok(6, DISK_WIRE_FLAGS), list_reply()]));
    assert!(d.hs.negotiated().is_none());
}

#[test]
fn checklist_23_go_enters_transmission_without_padding() {
    let mut d = fixed();
    // A request right behind GO stays in the input for transmission.
    let out = d.feed(&cat(&[opt(7, &info_data("disk", &[])), vec![0x25; 28]]));
    assert_eq!(out, go_ok(7, DISK_WIRE_FLAGS));
    assert!(d.hs.negotiated().is_some());
    assert_eq!(d.input, vec![0x25; 28]);
}

#[test]
fn checklist_24_unknown_export_then_valid_go() {
    let mut d = fixed();
    let out = d.feed(&cat(&[
        opt(6, &info_data("nope", &[])),
        opt(7, &info_data("nope", &[])),
        opt(7, &info_data("disk", &[])),
    ]));
    assert_eq!(
        out,
        cat(&[
            rep(6, ERR_UNKNOWN, b""),
            rep(7, ERR_UNKNOWN, b""),
            go_ok(7, DISK_WIRE_FLAGS)
        ])
    );
    assert!(d.hs.negotiated().is_some());
}

#[test]
fn checklist_25_unknown_info_request_ignored() {
    let mut d = fixed();
    let out = d.feed(&opt(7, &info_data("disk", &[0x7777])));
    assert_eq!(out, go_ok(7, DISK_WIRE_FLAGS));
}

#[test]
fn checklist_26_info_and_go_agree() {
    let mut d = fixed();
    let info = d.feed(&opt(6, &info_data("disk", &[])));
    let go = d.feed(&opt(7, &info_data("disk", &[])));
    // Same bytes but for the echoed option number.
    assert_eq!(info[20..32], go[20..32]);
    assert_eq!(info.len(), go.len());
}

#[test]
fn checklist_27_malformed_info_is_invalid() {
    let mut d = fixed();
    let mut bad = info_data("disk", &[]);
    bad[3] = 50; // name length beyond the option
    let mut bad_count = info_data("disk", &[3]);
    bad_count.push(0); // count does not match the remaining bytes
    let out = d.feed(&cat(&[opt(7, &bad), opt(6, &bad_count), opt(3, b"")]));
    assert_eq!(
        out,
        cat(&[
            rep(7, ERR_INVALID, b"malformed option data"),
            rep(6, ERR_INVALID, b"malformed option data"),
            list_reply()
        ])
    );
}

#[test]
fn checklist_28_block_size_info_obeys_rules() {
    let mut d = fixed();
    let out = d.feed(&opt(6, &info_data("bs", &[3])));
    assert_eq!(
        out,
        cat(&[
            info_export(6, DISK_SIZE, DISK_WIRE_FLAGS),
            info_block_size(6, 512, 4096, 65536),
            rep(6, ACK, b"")
        ])
    );
    // Length 14 = type + three u32.
    assert_eq!(&out[32 + 16..32 + 20], &14u32.to_be_bytes());
}

#[test]
fn checklist_28_31_non_default_sizes_sent_even_unasked() {
    let mut d = fixed();
    let out = d.feed(&opt(7, &info_data("bs", &[])));
    assert_eq!(
        out,
        cat(&[
            info_export(7, DISK_SIZE, DISK_WIRE_FLAGS),
            info_block_size(7, 512, 4096, 65536),
            rep(7, ACK, b"")
        ])
    );
    let n = d.hs.negotiated().unwrap();
    assert!(!n.block_sizes_agreed);
}

#[test]
fn checklist_29_30_default_sizes_never_block_size_reqd() {
    let mut d = fixed();
    let out = d.feed(&opt(7, &info_data("disk", &[3])));
    assert_eq!(
        out,
        cat(&[
            info_export(7, DISK_SIZE, DISK_WIRE_FLAGS),
            info_block_size(7, 1, 4096, 32 << 20),
            rep(7, ACK, b"")
        ])
    );
    assert!(d.hs.negotiated().unwrap().block_sizes_agreed);
    let mut d = fixed();
    assert_eq!(
        d.feed(&opt(7, &info_data("disk", &[]))),
        go_ok(7, DISK_WIRE_FLAGS)
    );
}

#[test]
fn checklist_32_name_and_description_infos() {
    let mut d = fixed();
    let out = d.feed(&opt(6, &info_data("", &[1, 2])));
    assert_eq!(
        out,
        cat(&[
            info_export(6, DISK_SIZE, DISK_WIRE_FLAGS),
            info_str(6, 1, "disk"),
            info_str(6, 2, "a test disk"),
            rep(6, ACK, b"")
        ])
    );
}

#[test]
fn checklist_33_flags_have_has_flags_and_no_unsupported_bits() {
    // FAST_ZERO without WRITE_ZEROES is dropped.
    let mut d = fixed();
    let out = d.feed(&opt(7, &info_data("fz", &[])));
    assert_eq!(out, go_ok(7, 0x0001 | 0x0004));
    // DF appears only after structured replies.
    let mut d = fixed();
    let out = d.feed(&cat(&[opt(8, b""), opt(7, &info_data("disk", &[]))]));
    assert_eq!(
        out,
        cat(&[rep(8, ACK, b""), go_ok(7, DISK_WIRE_FLAGS | DF)])
    );
    // BLOCK_STATUS_PAYLOAD only with extended headers (and a context).
    let mut d = fixed();
    let out = d.feed(&cat(&[
        opt(8, b""),
        opt(10, &meta_data("disk", &["base:allocation"])),
        opt(7, &info_data("disk", &[])),
    ]));
    assert!(out.ends_with(&go_ok(7, DISK_WIRE_FLAGS | DF)));
    let mut d = fixed();
    let out = d.feed(&cat(&[
        opt(11, b""),
        opt(10, &meta_data("disk", &["base:allocation"])),
        opt(7, &info_data("disk", &[])),
    ]));
    assert!(out.ends_with(&go_ok(7, DISK_WIRE_FLAGS | DF | BS_PAYLOAD)));
}

// ---- 9.5 structured replies and meta contexts ---------------------------

#[test]
fn checklist_34_structured_reply_ack_or_unsup() {
    let mut d = fixed();
    assert_eq!(d.feed(&opt(8, b"")), rep(8, ACK, b""));
    assert_eq!(
        d.feed(&opt(7, &info_data("disk", &[]))),
        go_ok(7, DISK_WIRE_FLAGS | DF)
    );
    assert_eq!(d.hs.negotiated().unwrap().mode, HeaderMode::Structured);
    let mut d = Driver::start(
        HandshakeConfig {
            structured_replies: false,
            ..cfg()
        },
        3,
    )
    .0;
    assert_eq!(d.feed(&opt(8, b"")), rep(8, ERR_UNSUP, b""));
}

#[test]
fn checklist_35_structured_reply_with_data_invalid() {
    let mut d = fixed();
    assert_eq!(d.feed(&opt(8, b"x")), rep(8, ERR_INVALID, b""));
    // Not negotiated: a GO gives simple mode.
    d.feed(&opt(7, &info_data("disk", &[])));
    assert_eq!(d.hs.negotiated().unwrap().mode, HeaderMode::Simple);
}

#[test]
fn checklist_36_second_structured_reply_invalid() {
    let mut d = fixed();
    let out = d.feed(&cat(&[opt(8, b""), opt(8, b"")]));
    assert_eq!(out, cat(&[rep(8, ACK, b""), rep(8, ERR_INVALID, b"")]));
}

#[test]
fn checklist_37_38_meta_context_before_structured_invalid() {
    let mut d = fixed();
    let data = meta_data("disk", &["base:allocation"]);
    let out = d.feed(&cat(&[opt(10, &data), opt(9, &data)]));
    let msg = b"negotiate structured replies first";
    assert_eq!(
        out,
        cat(&[rep(10, ERR_INVALID, msg), rep(9, ERR_INVALID, msg)])
    );
}

/// nbdkit's `--no-mc`: both meta-context options are unsupported, even
/// after structured replies were negotiated.
#[test]
fn meta_contexts_off_answers_unsup() {
    let cfg = HandshakeConfig {
        allow_meta_contexts: false,
        ..cfg()
    };
    let mut d = Driver::start(cfg, 3).0;
    assert_eq!(d.feed(&opt(8, b"")), rep(8, ACK, b""));
    let data = meta_data("disk", &["base:allocation"]);
    let out = d.feed(&cat(&[opt(9, &data), opt(10, &data)]));
    assert_eq!(out, cat(&[rep(9, ERR_UNSUP, b""), rep(10, ERR_UNSUP, b"")]));
}

/// nbdkit's `--mask-handshake` bit 0: without FIXED_NEWSTYLE in the
/// greeting, a client that sets the flag anyway is closed (checklist 3),
/// and one that does not may only send EXPORT_NAME.
#[test]
fn fixed_newstyle_off_is_not_offered_nor_accepted() {
    let cfg = HandshakeConfig {
        fixed_newstyle: false,
        ..cfg()
    };
    let (_, g) = Driver::start(cfg, 2);
    assert_eq!(g, greeting(0x0002));
    let mut d = Driver::new(cfg);
    d.feed(&[]);
    assert!(d.feed(&1u32.to_be_bytes()).is_empty());
    assert_eq!(d.error, Some(ProtocolError::BadClientFlags(1)));
}

fn structured() -> Driver {
    let mut d = fixed();
    assert_eq!(d.feed(&opt(8, b"")), rep(8, ACK, b""));
    d
}

#[test]
fn checklist_39_query_past_option_length_invalid() {
    let mut d = structured();
    let mut data = meta_data("disk", &["base:allocation"]);
    data.truncate(data.len() - 3);
    assert_eq!(
        d.feed(&opt(9, &data)),
        rep(9, ERR_INVALID, b"malformed option data")
    );
}

#[test]
fn checklist_40_list_zero_queries_lists_everything() {
    let mut d = structured();
    d.offered = 0b11;
    let out = d.feed(&opt(9, &meta_data("disk", &[])));
    assert_eq!(
        out,
        cat(&[
            meta_rep(9, 0, "base:allocation"),
            meta_rep(9, 0, "qemu:allocation-depth"),
            rep(9, ACK, b"")
        ])
    );
}

#[test]
fn checklist_41_list_namespace_wildcard() {
    let mut d = structured();
    d.offered = 0b11;
    let out = d.feed(&opt(9, &meta_data("disk", &["base:"])));
    assert_eq!(
        out,
        cat(&[meta_rep(9, 0, "base:allocation"), rep(9, ACK, b"")])
    );
}

#[test]
fn checklist_42_unknown_namespace_just_acks() {
    let mut d = structured();
    let out = d.feed(&cat(&[
        opt(9, &meta_data("disk", &["foo:bar"])),
        opt(10, &meta_data("disk", &["foo:bar"])),
    ]));
    assert_eq!(out, cat(&[rep(9, ACK, b""), rep(10, ACK, b"")]));
}

#[test]
fn checklist_43_set_base_allocation_selects_id_1() {
    let mut d = structured();
    let out = d.feed(&opt(10, &meta_data("disk", &["base:allocation"])));
    assert_eq!(
        out,
        cat(&[meta_rep(10, 1, "base:allocation"), rep(10, ACK, b"")])
    );
    d.feed(&opt(7, &info_data("disk", &[])));
    assert_eq!(d.hs.negotiated().unwrap().meta_contexts, 1);
}

#[test]
fn checklist_44_set_zero_queries_selects_nothing() {
    let mut d = structured();
    assert_eq!(d.feed(&opt(10, &meta_data("disk", &[]))), rep(10, ACK, b""));
    d.feed(&opt(7, &info_data("disk", &[])));
    assert_eq!(d.hs.negotiated().unwrap().meta_contexts, 0);
}

#[test]
fn checklist_45_46_set_namespace_or_unknown_leaf_ignored() {
    let mut d = structured();
    let out = d.feed(&cat(&[
        opt(10, &meta_data("disk", &["base:"])),
        opt(10, &meta_data("disk", &["base:nonexistent"])),
    ]));
    assert_eq!(out, cat(&[rep(10, ACK, b""), rep(10, ACK, b"")]));
}

#[test]
fn checklist_47_ids_unique_and_duplicates_once() {
    let mut d = structured();
    d.offered = 0b11;
    let out = d.feed(&opt(
        10,
        &meta_data(
            "disk",
            &[
                "qemu:allocation-depth",
                "base:allocation",
                "base:allocation",
            ],
        ),
    ));
    assert_eq!(
        out,
        cat(&[
            meta_rep(10, 1, "base:allocation"),
            meta_rep(10, 2, "qemu:allocation-depth"),
            rep(10, ACK, b"")
        ])
    );
    d.feed(&opt(7, &info_data("disk", &[])));
    assert_eq!(d.hs.negotiated().unwrap().meta_contexts, 0b11);
}

#[test]
fn checklist_48_new_set_replaces_even_when_failing() {
    let mut d = structured();
    let mut bad = meta_data("disk", &["base:allocation"]);
    bad.truncate(bad.len() - 1);
    let out = d.feed(&cat(&[
        opt(10, &meta_data("disk", &["base:allocation"])),
        opt(10, &bad),
        opt(7, &info_data("disk", &[])),
    ]));
    assert!(out.ends_with(&go_ok(7, DISK_WIRE_FLAGS | DF)));
    assert_eq!(d.hs.negotiated().unwrap().meta_contexts, 0);
}

#[test]
fn checklist_104_set_for_other_export_selects_nothing_for_go() {
    let mut d = structured();
    d.feed(&opt(10, &meta_data("ro", &["base:allocation"])));
    d.feed(&opt(7, &info_data("disk", &[])));
    assert_eq!(d.hs.negotiated().unwrap().meta_contexts, 0);
}

// ---- 9.6 TLS -----------------------------------------------------------

#[test]
fn checklist_50_51_notls_refuses_starttls_then_go_works() {
    let mut d = fixed();
    let out = d.feed(&cat(&[opt(5, b""), opt(7, &info_data("disk", &[]))]));
    assert_eq!(
        out,
        cat(&[
            rep(5, ERR_POLICY, b"TLS is disabled on this server"),
            go_ok(7, DISK_WIRE_FLAGS)
        ])
    );
    assert_eq!(d.seen.starttls, 0);
}

#[test]
fn checklist_52_forcedtls_refuses_everything_but_abort() {
    let mut d = Driver::start(tls_cfg(TlsMode::Require), 3).0;
    let m = b"TLS is required";
    let out = d.feed(&cat(&[
        opt(3, b""),
        opt(6, &info_data("disk", &[])),
        opt(7, &info_data("disk", &[])),
        opt(8, b""),
        opt(0x1234, &[9; 11]),
        opt(2, b""),
    ]));
    assert_eq!(
        out,
        cat(&[
            rep(3, ERR_TLS_REQD, m),
            rep(6, ERR_TLS_REQD, m),
            rep(7, ERR_TLS_REQD, m),
            rep(8, ERR_TLS_REQD, m),
            rep(0x1234, ERR_TLS_REQD, m),
            rep(2, ACK, b""),
        ])
    );
    assert!(d.hs.is_closed());
}

#[test]
fn checklist_53_forcedtls_export_name_disconnects() {
    let mut d = Driver::start(tls_cfg(TlsMode::Require), 3).0;
    assert!(d.feed(&opt(1, b"disk")).is_empty());
    assert_eq!(d.error, Some(ProtocolError::ExportNameRefused));
}

/// STARTTLS, then (as the driver would after a TLS handshake) reset.
fn start_tls(mode: TlsMode) -> Driver {
    let mut d = Driver::start(tls_cfg(mode), 3).0;
    assert_eq!(d.feed(&opt(5, b"")), rep(5, ACK, b""));
    assert_eq!(d.seen.starttls, 1);
    assert!(!d.hs.wants_read(), "no plaintext read while TLS starts");
    d.tls_established();
    assert!(d.hs.tls_active());
    d
}

#[test]
fn checklist_54_57_starttls_then_options_work() {
    for mode in [TlsMode::On, TlsMode::Require] {
        let mut d = start_tls(mode);
        let out = d.feed(&cat(&[opt(3, b""), opt(7, &info_data("secret", &[]))]));
        assert_eq!(out, cat(&[list_reply(), go_ok(7, DISK_WIRE_FLAGS)]));
        assert!(d.hs.negotiated().unwrap().tls);
    }
}

#[test]
fn checklist_54_bytes_after_starttls_wait_for_tls() {
    let mut d = Driver::start(tls_cfg(TlsMode::On), 3).0;
    // A client that pipelines the TLS ClientHello behind STARTTLS: those
    // bytes must be left for the TLS layer.
    let out = d.feed(&cat(&[opt(5, b""), vec![0x16, 0x03, 0x01]]));
    assert_eq!(out, rep(5, ACK, b""));
    assert_eq!(d.input, vec![0x16, 0x03, 0x01]);
}

#[test]
fn checklist_55_second_starttls_invalid() {
    let mut d = start_tls(TlsMode::Require);
    assert_eq!(
        d.feed(&opt(5, b"")),
        rep(5, ERR_INVALID, b"TLS is already active")
    );
}

#[test]
fn checklist_56_starttls_with_data_invalid() {
    let mut d = Driver::start(tls_cfg(TlsMode::On), 3).0;
    assert_eq!(
        d.feed(&opt(5, b"x")),
        rep(5, ERR_INVALID, b"STARTTLS takes no data")
    );
    assert_eq!(d.seen.starttls, 0);
}

#[test]
fn checklist_58_state_before_starttls_forgotten() {
    let mut d = Driver::start(tls_cfg(TlsMode::On), 3).0;
    let out = d.feed(&cat(&[
        opt(8, b""),
        opt(10, &meta_data("disk", &["base:allocation"])),
        opt(5, b""),
    ]));
    assert!(out.ends_with(&rep(5, ACK, b"")));
    d.tls_established();
    let out = d.feed(&opt(7, &info_data("disk", &[])));
    // No SEND_DF: structured replies were forgotten.
    assert_eq!(out, go_ok(7, DISK_WIRE_FLAGS));
    let n = d.hs.negotiated().unwrap();
    assert_eq!(n.mode, HeaderMode::Simple);
    assert_eq!(n.meta_contexts, 0);
}

#[test]
fn checklist_59_selectivetls_before_tls() {
    let mut d = Driver::start(tls_cfg(TlsMode::On), 3).0;
    let out = d.feed(&cat(&[
        opt(6, &info_data("secret", &[])),
        opt(0x1234, b""),
        opt(7, &info_data("secret", &[])),
    ]));
    assert_eq!(
        out,
        cat(&[
            rep(6, ERR_TLS_REQD, b""),
            rep(0x1234, ERR_UNSUP, b"unknown option"),
            rep(7, ERR_TLS_REQD, b""),
        ])
    );
    assert!(d.feed(&opt(1, b"secret")).is_empty());
    assert!(d.hs.is_closed());
}

#[test]
fn checklist_60_non_fixed_client_served_notls() {
    let (mut d, _) = Driver::start(tls_cfg(TlsMode::Require), 0);
    // No TLS_REQD for a non-fixed client: options other than EXPORT_NAME
    // are refused with INVALID, STARTTLS included.
    let out = d.feed(&cat(&[opt(3, b""), opt(5, b"")]));
    assert_eq!(
        out,
        cat(&[rep(3, ERR_INVALID, b""), rep(5, ERR_INVALID, b"")])
    );
    let out = d.feed(&opt(1, b"disk"));
    assert_eq!(out, export_name_reply(DISK_SIZE, DISK_WIRE_FLAGS, true));
}

// ---- 9.7 shutdown -------------------------------------------------------

#[test]
fn checklist_61_shutdown_refuses_all_but_abort() {
    let mut d = fixed();
    d.hs.begin_shutdown();
    let m = b"server is shutting down";
    let out = d.feed(&cat(&[
        opt(3, b""),
        opt(7, &info_data("disk", &[])),
        opt(2, b""),
    ]));
    assert_eq!(
        out,
        cat(&[
            rep(3, ERR_SHUTDOWN, m),
            rep(7, ERR_SHUTDOWN, m),
            rep(2, ACK, b"")
        ])
    );
}

// ---- 9.17 extended headers ---------------------------------------------

#[test]
fn checklist_115_extended_headers_ack_invalid_unsup() {
    let mut d = fixed();
    let out = d.feed(&cat(&[opt(11, b"x"), opt(11, b""), opt(11, b"")]));
    assert_eq!(
        out,
        cat(&[
            rep(11, ERR_INVALID, b""),
            rep(11, ACK, b""),
            rep(11, ERR_INVALID, b"")
        ])
    );
    let mut d = Driver::start(
        HandshakeConfig {
            extended_headers: false,
            ..cfg()
        },
        3,
    )
    .0;
    assert_eq!(d.feed(&opt(11, b"")), rep(11, ERR_UNSUP, b""));
}

#[test]
fn checklist_117_extended_then_go_and_structured_reply() {
    let mut d = fixed();
    let out = d.feed(&cat(&[
        opt(11, b""),
        opt(8, b""),
        opt(7, &info_data("disk", &[])),
    ]));
    assert_eq!(
        out,
        cat(&[
            rep(11, ACK, b""),
            rep(8, ERR_EXT_HEADER_REQD, b""),
            go_ok(7, DISK_WIRE_FLAGS | DF)
        ])
    );
    assert_eq!(d.hs.negotiated().unwrap().mode, HeaderMode::Extended);
}

#[test]
fn checklist_117_structured_then_extended_is_extended() {
    let mut d = fixed();
    d.feed(&cat(&[opt(8, b""), opt(11, b"")]));
    d.feed(&opt(7, &info_data("disk", &[])));
    assert_eq!(d.hs.negotiated().unwrap().mode, HeaderMode::Extended);
}

#[test]
fn extended_headers_forbid_export_name() {
    let mut d = fixed();
    d.feed(&opt(11, b""));
    assert!(d.feed(&opt(1, b"disk")).is_empty());
    assert_eq!(d.error, Some(ProtocolError::ExportNameRefused));
}
