//! `client::Connection` against scripted server transcripts: every byte
//! the server "sends" is written by hand, every byte the client sends is
//! checked. Numbers refer to the conformance checklist in
//! shared/reference/nbd-protocol.md (server obligations the client relies
//! on, and client obligations it enforces).

mod client_conn;
mod common;

use client_conn::*;
use common::*;
use nbd_proto::client::{
    ClientConfig, Cmd, ConfigError, Connection, Event, ReplyError, RequestError,
};
use nbd_proto::wire::reply::BlockStatusExtent;
use nbd_proto::{CmdFlags, Command, Cookie, ErrorCode, HeaderMode, ProtocolError};

const FLAGS: u16 = DISK_WIRE_FLAGS | DF;

fn structured(meta: bool) -> (Connection<8>, Recorder) {
    let cfg = ClientConfig {
        base_allocation: meta,
        ..ClientConfig::default()
    };
    ready(&cfg, &structured_server(DISK_SIZE, FLAGS, meta))
}

fn send<const N: usize>(c: &mut Connection<N>, cmd: Cmd<'_>) -> (Cookie, usize, Vec<u8>) {
    let mut out = vec![0u8; 64 + cmd.data.len()];
    let s = c.encode_request(&cmd, &mut out).unwrap();
    out.truncate(s.len);
    (s.cookie, s.slot.unwrap(), out)
}

#[test]
fn checklist_7_23_34_43_go_transcript_with_base_allocation() {
    let (c, r) = structured(true);
    let sent = cat(&[
        3u32.to_be_bytes().to_vec(),
        opt(8, b""),
        opt(10, &meta_data("", &["base:allocation"])),
        opt(7, &info_data("", &[1, 2, 3])),
    ]);
    assert_eq!(r.sent, sent);
    assert_eq!(
        r.log,
        [
            "meta 9 base:allocation",
            "info Export { size: 1048576, flags: TransmissionFlags(HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | SEND_DF | SEND_CACHE | SEND_FAST_ZERO) }",
            "ready Structured 1048576",
            "idle"
        ]
    );
    let n = c.negotiated().unwrap();
    assert_eq!(n.base_allocation, Some(9));
    assert_eq!(c.in_flight(), 0);
    assert!(c.can_send() && !c.wants_read() && !c.wants_write());
}

#[test]
fn oldstyle_greeting_is_ready_without_sending() {
    let mut g = NBDMAGIC.to_vec();
    g.extend_from_slice(&[0, 0, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53]);
    g.extend_from_slice(&4096u64.to_be_bytes());
    g.extend_from_slice(&1u32.to_be_bytes());
    g.extend_from_slice(&[0; 124]);
    let mut c = Connection::<4>::new(&ClientConfig::default()).unwrap();
    // The 16 bytes of magic announce the 152-byte oldstyle greeting.
    match c.handle_input(&g[..16]).unwrap() {
        (0, Event::NeedInput { needed }) => assert_eq!(needed, 152),
        other => panic!("{other:?}"),
    }
    let mut r = Recorder::new(0);
    r.run(&mut c, &g, 7).unwrap();
    assert!(r.sent.is_empty());
    assert_eq!(r.log, ["ready Simple 4096", "idle"]);
    assert!(c.negotiated().unwrap().oldstyle);
}

#[test]
fn checklist_1_empty_input_needs_the_18_byte_greeting() {
    let mut c = Connection::<4>::new(&ClientConfig::default()).unwrap();
    assert!(matches!(
        c.handle_input(&[]).unwrap(),
        (0, Event::NeedInput { needed: 18 })
    ));
    assert!(c.wants_read());
    assert_eq!(c.poll_transmit(&mut [0u8; 64]), Ok(0));
}

#[test]
fn export_names_over_4096_bytes_are_refused_up_front() {
    let name = "x".repeat(4097);
    let cfg = ClientConfig {
        export: &name,
        ..ClientConfig::default()
    };
    assert_eq!(
        Connection::<4>::new(&cfg).err(),
        Some(ConfigError::ExportNameTooLong)
    );
}

#[test]
fn checklist_54_58_starttls_is_a_token_and_negotiation_restarts() {
    let cfg = ClientConfig {
        tls: true,
        ..ClientConfig::default()
    };
    let mut c = Connection::<4>::new(&cfg).unwrap();
    let pre = cat(&[greeting(3), rep(5, ACK, b""), b"\x16\x03\x01TLS".to_vec()]);
    let mut out = [0u8; 64];
    let (n, ev) = c.handle_input(&pre).unwrap();
    assert_eq!((n, matches!(ev, Event::Transmit)), (18, true));
    assert_eq!(c.poll_transmit(&mut out), Ok(4));
    assert!(matches!(
        c.handle_input(&pre[18..]).unwrap(),
        (0, Event::Transmit)
    ));
    assert_eq!(c.poll_transmit(&mut out), Ok(16));
    let (n, ev) = c.handle_input(&pre[18..]).unwrap();
    assert_eq!(n, 20, "exactly the ACK is consumed: the rest is TLS");
    let Event::StartTls(token) = ev else {
        panic!("{ev:?}")
    };
    // Until TLS is reported up, nothing is consumed.
    assert!(matches!(
        c.handle_input(&pre[38..]).unwrap(),
        (0, Event::TlsPending)
    ));
    c.handle_tls_established(token);
    // After TLS, STRUCTURED_REPLY is asked again (digest note 17).
    let mut r = Recorder::new(0);
    let post = cat(&[rep(8, ACK, b""), info_export(7, 512, 1), rep(7, ACK, b"")]);
    r.run(&mut c, &post, 5).unwrap();
    assert_eq!(
        r.sent,
        cat(&[opt(8, b""), opt(7, &info_data("", &[1, 2, 3]))])
    );
    assert!(c.negotiated().unwrap().tls);
}

#[test]
fn checklist_115_116_extended_headers() {
    let cfg = ClientConfig {
        extended_headers: true,
        base_allocation: true,
        ..ClientConfig::default()
    };
    let server = cat(&[
        greeting(3),
        rep(11, ACK, b""),
        meta_rep(10, 4, "base:allocation"),
        rep(10, ACK, b""),
        info_export(7, DISK_SIZE, FLAGS),
        rep(7, ACK, b""),
    ]);
    let (mut c, r) = ready::<4>(&cfg, &server);
    assert!(
        r.sent
            .starts_with(&cat(&[3u32.to_be_bytes().to_vec(), opt(11, b"")]))
    );
    assert_eq!(c.negotiated().unwrap().mode, HeaderMode::Extended);
    // checklist 118: an extended WRITE carries PAYLOAD_LEN and a 64-bit length.
    let (cookie, slot, bytes) = send(&mut c, Cmd::write(4096, b"abcd"));
    assert_eq!(&bytes[..8], &[0x21, 0xe4, 0x1c, 0x71, 0, 0x20, 0, 1]);
    assert_eq!(&bytes[24..32], &4u64.to_be_bytes());
    assert_eq!(&bytes[32..], b"abcd");
    // checklist 119: BLOCK_STATUS_EXT with 64-bit descriptors.
    let (bc, bslot, _) = send(&mut c, Cmd::block_status(0, 8192));
    let mut bs = 4u32.to_be_bytes().to_vec();
    bs.extend_from_slice(&1u32.to_be_bytes());
    bs.extend_from_slice(&(1u64 << 40).to_be_bytes());
    bs.extend_from_slice(&3u64.to_be_bytes());
    let replies = cat(&[
        ext_chunk(DONE, T_NONE, cookie, 4096, b""),
        ext_chunk(DONE, T_BS_EXT, bc, 0, &bs),
    ]);
    let mut r = Recorder::new(0);
    r.run(&mut c, &replies, 3).unwrap();
    assert_eq!(
        r.log,
        [
            format!("done {slot} Ok(())"),
            format!("done {bslot} Ok(())"),
            "idle".into()
        ]
    );
    // The descriptor ran past the request: clipped to it (digest note 11).
    assert_eq!(
        r.extents[&bslot],
        [BlockStatusExtent {
            len: 8192,
            flags: 3
        }]
    );
}

#[test]
fn checklist_63_simple_read_streams_into_the_buffer() {
    let cfg = ClientConfig {
        structured_replies: false,
        ..ClientConfig::default()
    };
    let server = cat(&[greeting(1), info_export(7, DISK_SIZE, 1), rep(7, ACK, b"")]);
    let (mut c, _) = ready::<4>(&cfg, &server);
    assert_eq!(c.negotiated().unwrap().mode, HeaderMode::Simple);
    let (cookie, slot, bytes) = send(&mut c, Cmd::read(0, 300));
    assert_eq!(&bytes[..8], &[0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0]);
    assert_eq!(&bytes[8..16], &cookie.0.to_be_bytes(), "checklist 62");
    let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let replies = cat(&[simple(cookie, 0), data.clone()]);
    // One byte at a time: the data streams out as it arrives.
    let mut r = Recorder::new(300);
    assert_eq!(r.run(&mut c, &replies, 1).unwrap(), 0);
    assert_eq!(r.reads[&slot], data);
    assert_eq!(r.log, [format!("done {slot} Ok(())"), "idle".into()]);
}

#[test]
fn checklist_86_simple_error_has_no_payload() {
    let (mut c, _) = structured(false);
    let (cookie, slot, _) = send(&mut c, Cmd::read(0, 512));
    let (c2, slot2, _) = send(&mut c, Cmd::flush());
    let replies = cat(&[simple(cookie, 22), simple(c2, 0)]);
    let mut r = Recorder::new(512);
    r.run(&mut c, &replies, 100).unwrap();
    assert_eq!(
        r.log,
        [
            format!("done {slot} Err(Server(Inval))"),
            format!("done {slot2} Ok(())"),
            "idle".into()
        ]
    );
}

#[test]
fn checklist_97_98_chunks_in_any_order_reassemble() {
    let (mut c, _) = structured(false);
    let (cookie, slot, _) = send(&mut c, Cmd::read(4096, 12));
    let replies = cat(&[
        chunk(0, T_DATA, cookie, &data_payload(4104, b"wxyz")),
        chunk(0, T_HOLE, cookie, &hole_payload(4100, 4)),
        chunk(0, T_DATA, cookie, &data_payload(4096, b"abcd")),
        chunk(DONE, T_NONE, cookie, b""),
    ]);
    for piece in [1, 7, replies.len()] {
        let mut c2 = c.clone();
        let mut r = Recorder::new(12);
        r.run(&mut c2, &replies, piece).unwrap();
        assert_eq!(r.reads[&slot], b"abcd\0\0\0\0wxyz", "piece {piece}");
        assert_eq!(r.log, [format!("done {slot} Ok(())"), "idle".into()]);
    }
}

#[test]
fn checklist_97_read_success_without_full_coverage_is_incomplete() {
    let (mut c, _) = structured(false);
    let (cookie, slot, _) = send(&mut c, Cmd::read(0, 8));
    let replies = chunk(DONE, T_DATA, cookie, &data_payload(0, b"half"));
    let mut r = Recorder::new(8);
    r.run(&mut c, &replies, 64).unwrap();
    assert_eq!(r.log[0], format!("done {slot} Err(Incomplete)"));
}

#[test]
fn checklist_99_error_chunk_wins_and_ends_at_done() {
    let (mut c, _) = structured(false);
    let (cookie, slot, _) = send(&mut c, Cmd::read(0, 8));
    let mut eo = error_payload(5, "bad sector");
    eo.extend_from_slice(&4u64.to_be_bytes());
    let replies = cat(&[
        chunk(0, T_DATA, cookie, &data_payload(0, b"good")),
        chunk(0, 0x8002, cookie, &eo),
        chunk(DONE, T_ERROR, cookie, &error_payload(22, "second error")),
    ]);
    let mut r = Recorder::new(8);
    r.run(&mut c, &replies, 64).unwrap();
    assert_eq!(
        r.log,
        [format!("done {slot} Err(Server(Io))"), "idle".into()]
    );
    assert_eq!(&r.reads[&slot][..4], b"good");
}

#[test]
fn checklist_97_chunk_outside_the_read_breaks_the_connection() {
    let (mut c, _) = structured(false);
    let (cookie, _, _) = send(&mut c, Cmd::read(4096, 8));
    let (_, other, _) = send(&mut c, Cmd::flush());
    let bad = chunk(DONE, T_DATA, cookie, &data_payload(4100, b"12345"));
    let err = c.handle_input(&bad).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::Violation("READ chunk outside the request")
    );
    // Every request in flight is then reported lost, then Closed.
    let mut r = Recorder::new(8);
    r.run(&mut c, &[], 1).unwrap();
    assert_eq!(r.log.len(), 3, "{:?}", r.log);
    assert!(r.log.contains(&format!("done {other} Err(Disconnected)")));
    assert_eq!(r.log[2], "closed");
    assert_eq!(
        c.encode_request(&Cmd::flush(), &mut [0u8; 64]),
        Err(RequestError::Closed)
    );
}

#[test]
fn checklist_97_overlapping_chunks_break_the_connection() {
    let (mut c, _) = structured(false);
    let (cookie, _, _) = send(&mut c, Cmd::read(0, 8));
    let replies = cat(&[
        chunk(0, T_DATA, cookie, &data_payload(0, b"abcdef")),
        chunk(DONE, T_HOLE, cookie, &hole_payload(4, 4)),
    ]);
    let mut r = Recorder::new(8);
    assert_eq!(
        r.run(&mut c, &replies, 64).unwrap_err(),
        ProtocolError::Violation("READ chunks overlap")
    );
}

#[test]
fn checklist_62_reply_for_unknown_cookie_is_a_violation() {
    let (mut c, _) = structured(false);
    let (cookie, _, _) = send(&mut c, Cmd::flush());
    let stale = Cookie(cookie.0 ^ (1 << 32));
    assert_eq!(
        c.handle_input(&simple(stale, 0)).unwrap_err(),
        ProtocolError::Violation("reply for a cookie not in flight")
    );
}

#[test]
fn checklist_98_none_without_done_and_unknown_types() {
    let (mut c, _) = structured(false);
    let (cookie, slot, _) = send(&mut c, Cmd::flush());
    let mut c2 = c.clone();
    assert!(c2.handle_input(&chunk(0, T_NONE, cookie, b"")).is_err());
    let mut c3 = c.clone();
    assert_eq!(
        c3.handle_input(&chunk(DONE, 77, cookie, b"")).unwrap_err(),
        ProtocolError::Violation("unknown reply chunk type")
    );
    // An unknown *error* type is still an error chunk.
    let mut r = Recorder::new(0);
    let e = chunk(DONE, 0x8077, cookie, &error_payload(95, ""));
    r.run(&mut c, &e, 64).unwrap();
    assert_eq!(r.log[0], format!("done {slot} Err(Server(NotSup))"));
}

#[test]
fn checklist_105_block_status_is_copied_and_clipped() {
    let (mut c, _) = structured(true);
    let (cookie, slot, _) = send(&mut c, Cmd::block_status(0, 6000));
    let ext = [(4096, 3), (4096, 0), (512, 0), (512, 0), (512, 0), (512, 1)];
    let replies = chunk(DONE, T_BS, cookie, &bs_payload(9, &ext));
    let mut r = Recorder::new(0);
    r.run(&mut c, &replies, 5).unwrap();
    let got: Vec<(u64, u64)> = r.extents[&slot].iter().map(|e| (e.len, e.flags)).collect();
    // The second descriptor reaches past 6000 bytes: clipped, and the
    // rest dropped.
    assert_eq!(got, [(4096, 3), (1904, 0)]);
    assert_eq!(r.log, [format!("done {slot} Ok(())"), "idle".into()]);
}

#[test]
fn block_status_for_a_context_not_selected_is_a_violation() {
    let (mut c, _) = structured(true);
    let (cookie, _, _) = send(&mut c, Cmd::block_status(0, 512));
    let replies = chunk(DONE, T_BS, cookie, &bs_payload(3, &[(512, 0)]));
    assert!(c.handle_input(&replies).is_err());
}

#[test]
fn checklist_110_disc_has_no_reply_and_ends_after_the_last_reply() {
    let (mut c, _) = structured(false);
    let (cookie, slot, _) = send(&mut c, Cmd::write(0, b"x"));
    let mut out = [0u8; 64];
    let s = c.encode_request(&Cmd::disconnect(), &mut out).unwrap();
    assert_eq!((s.slot, s.len), (None, 28));
    assert_eq!(&out[4..8], &[0, 0, 0, 2]);
    assert_eq!(
        c.encode_request(&Cmd::flush(), &mut out),
        Err(RequestError::Closed),
        "nothing after DISC (checklist 8)"
    );
    let mut r = Recorder::new(0);
    r.run(&mut c, &simple(cookie, 0), 64).unwrap();
    assert_eq!(r.log, [format!("done {slot} Ok(())"), "closed".into()]);
    assert!(c.is_closed());
}

#[test]
fn eof_fails_requests_in_flight_as_disconnected() {
    let (mut c, _) = structured(false);
    let (cookie, slot, _) = send(&mut c, Cmd::read(0, 8));
    // Half a reply arrived, then the transport died.
    let part = chunk(DONE, T_DATA, cookie, &data_payload(0, b"abcdefgh"));
    let mut r = Recorder::new(8);
    r.run(&mut c, &part[..30], 64).unwrap();
    c.handle_eof();
    r.run(&mut c, &[], 1).unwrap();
    assert_eq!(
        r.log,
        [format!("done {slot} Err(Disconnected)"), "closed".into()]
    );
    assert_eq!(ReplyError::Disconnected.code(), ErrorCode::Io);
    assert!(!c.wants_read());
}

#[test]
fn checklist_70_79_93_requests_the_server_must_refuse_never_leave() {
    // "ro" is read-only with FLUSH only.
    const SIZE: u64 = 1 << 30;
    let server = structured_server(SIZE, 0x0001 | 0x0002 | 0x0004, false);
    let (mut c, _) = ready::<4>(&ClientConfig::default(), &server);
    let mut out = [0u8; 128];
    let cases = [
        (Cmd::write(0, b"x"), RequestError::ReadOnly),
        (Cmd::trim(0, 512), RequestError::Unsupported(Command::Trim)),
        (
            Cmd::write_zeroes(0, 512),
            RequestError::Unsupported(Command::WriteZeroes),
        ),
        (
            Cmd::block_status(0, 512),
            RequestError::Unsupported(Command::BlockStatus),
        ),
        (
            Cmd::read(0, 512).with_flags(CmdFlags::FUA),
            RequestError::Flags(CmdFlags::FUA),
        ),
        (
            Cmd::read(0, 512).with_flags(CmdFlags::DF),
            RequestError::Flags(CmdFlags::DF),
        ),
        (
            Cmd::read(0, 512).with_flags(CmdFlags::PAYLOAD_LEN),
            RequestError::Flags(CmdFlags::PAYLOAD_LEN),
        ),
        (Cmd::read(SIZE - 1, 2), RequestError::OutOfRange),
        (Cmd::read(u64::MAX, 2), RequestError::OutOfRange),
        (Cmd::read(0, 0), RequestError::BadLength),
        (Cmd::read(0, 64 << 20), RequestError::TooLong),
    ];
    for (cmd, want) in cases {
        assert_eq!(c.encode_request(&cmd, &mut out), Err(want), "{cmd:?}");
    }
    assert_eq!(c.in_flight(), 0, "a refused request takes no slot");
}

#[test]
fn checklist_73_block_size_constraints_are_honoured() {
    let server = cat(&[
        greeting(3),
        rep(8, ACK, b""),
        info_block_size(7, 512, 4096, 65536),
        info_export(7, 1 << 32 | 512, DISK_WIRE_FLAGS),
        rep(7, ACK, b""),
    ]);
    let (mut c, _) = ready::<4>(&ClientConfig::default(), &server);
    let mut out = [0u8; 128];
    assert_eq!(
        c.encode_request(&Cmd::read(1, 512), &mut out),
        Err(RequestError::Misaligned)
    );
    assert_eq!(
        c.encode_request(&Cmd::read(0, 65536 + 512), &mut out),
        Err(RequestError::TooLong)
    );
    // Over 32 bits in compact mode: split it.
    assert_eq!(
        c.encode_request(&Cmd::trim(0, 1 << 32), &mut out),
        Err(RequestError::TooLong)
    );
    assert!(c.encode_request(&Cmd::trim(0, 1 << 31), &mut out).is_ok());
}

#[test]
fn full_table_and_short_buffer_change_nothing() {
    let (mut c, _) = structured(false);
    let mut small = [0u8; 27];
    assert_eq!(
        c.encode_request(&Cmd::write(0, b"abc"), &mut small),
        Err(RequestError::BufferTooSmall { required: 31 })
    );
    assert_eq!(c.in_flight(), 0);
    let mut cookies = Vec::new();
    for _ in 0..8 {
        cookies.push(send(&mut c, Cmd::flush()).0);
    }
    assert!(!c.can_send());
    assert_eq!(
        c.encode_request(&Cmd::flush(), &mut [0u8; 64]),
        Err(RequestError::Busy)
    );
    cookies.sort();
    cookies.dedup();
    assert_eq!(cookies.len(), 8, "cookies are unique (checklist 62)");
}

#[test]
fn requests_before_negotiation_are_not_ready() {
    let mut c = Connection::<4>::new(&ClientConfig::default()).unwrap();
    assert_eq!(
        c.encode_request(&Cmd::flush(), &mut [0u8; 64]),
        Err(RequestError::NotReady)
    );
}

#[test]
fn oversize_metadata_chunk_is_refused() {
    let (mut c, _) = structured(true);
    c.set_max_chunk_len(1024);
    let (cookie, _, _) = send(&mut c, Cmd::block_status(0, 512));
    let big = chunk(DONE, T_BS, cookie, &bs_payload(9, &[(512, 0); 200]));
    assert!(matches!(
        c.handle_input(&big),
        Err(ProtocolError::Decode(_))
    ));
}

#[test]
fn from_negotiated_starts_in_transmission() {
    let (c0, _) = structured(true);
    let neg = *c0.negotiated().unwrap();
    let mut c = Connection::<4>::from_negotiated(neg);
    assert!(c.can_send());
    assert_eq!(c.poll_transmit(&mut [0u8; 64]), Ok(0));
    let (cookie, slot, _) = send(&mut c, Cmd::block_status(0, 512));
    let mut r = Recorder::new(0);
    r.run(
        &mut c,
        &chunk(DONE, T_BS, cookie, &bs_payload(9, &[(512, 2)])),
        64,
    )
    .unwrap();
    assert_eq!(r.log, [format!("done {slot} Ok(())"), "idle".into()]);
}
