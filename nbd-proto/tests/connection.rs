//! The server `Connection` API: the spec rules it applies so that callers
//! need not (each test names the rule and, where one exists, the checklist
//! item of the protocol digest), and its token discipline (a short buffer
//! hands the token back and changes nothing).

mod common;

use common::*;
use nbd_proto::server::{
    BlockSizes, Connection, ConnectionConfig, ExportInfo, ExportOption, HandshakeConfig, Input,
    NeedRoom, Negotiated, Op, TransmissionConfig,
};
use nbd_proto::wire::reply::BlockStatusExtent;
use nbd_proto::wire::request::{Request, RequestHeader};
use nbd_proto::{CmdFlags, Command, Cookie, ErrorCode, HeaderMode, TransmissionFlags as TF};

fn neg(mode: HeaderMode) -> Negotiated {
    let mut n = Negotiated::oldstyle(1 << 40, TF::SEND_FLUSH | TF::SEND_TRIM | TF::SEND_RESIZE);
    n.mode = mode;
    n.meta_contexts = 0b11;
    n
}

fn frame(
    mode: HeaderMode,
    command: Command,
    flags: CmdFlags,
    offset: u64,
    len: u64,
    data: &[u8],
) -> Vec<u8> {
    let header = RequestHeader {
        flags,
        command,
        cookie: Cookie(7),
        offset,
        len,
    };
    let mut v = vec![0u8; 32 + data.len()];
    let n = Request { header, data }.encode(mode, &mut v).unwrap();
    v.truncate(n);
    v
}

/// The request a whole frame yields.
fn request(conn: &mut Connection, bytes: &[u8]) -> (Op<'static>, nbd_proto::server::Pending) {
    let bytes: &'static [u8] = Box::leak(bytes.to_vec().into_boxed_slice());
    match conn.handle_input(bytes).unwrap() {
        (n, Input::Request { op, reply }) if n == bytes.len() => (op, reply),
        (_, other) => panic!("expected a request, got {other:?}"),
    }
}

#[test]
fn checklist_98_empty_structured_read_is_a_lone_none_chunk() {
    for mode in [HeaderMode::Structured, HeaderMode::Extended] {
        let mut c = Connection::in_transmission(neg(mode), TransmissionConfig::default());
        let (op, p) = request(
            &mut c,
            &frame(mode, Command::Read, CmdFlags::empty(), 0, 0, &[]),
        );
        assert_eq!(
            op,
            Op::Read {
                offset: 0,
                len: 0,
                df: false
            }
        );
        let mut out = [0u8; 64];
        let n = c.reply_read(p, &mut out).unwrap();
        let (hlen, ty) = if mode == HeaderMode::Extended {
            (32, 4..8)
        } else {
            (20, 4..8)
        };
        assert_eq!(n, hlen, "a NONE chunk, no OFFSET_DATA prefix");
        assert_eq!(&out[ty], &[0, 1, 0, 0], "flags DONE, type NONE");
        assert_eq!(c.in_flight(), 0);
    }
    // Simple mode: a plain reply header (the data is empty).
    let mut c = Connection::in_transmission(neg(HeaderMode::Simple), TransmissionConfig::default());
    let (_, p) = request(
        &mut c,
        &frame(
            HeaderMode::Simple,
            Command::Read,
            CmdFlags::empty(),
            0,
            0,
            &[],
        ),
    );
    assert_eq!(c.reply_read(p, &mut [0u8; 16]).unwrap(), 16);
}

#[test]
fn checklist_120_block_status_payload_gives_effect_length_and_ids() {
    let x = HeaderMode::Extended;
    let mut n = neg(x);
    n.flags |= TF::BLOCK_STATUS_PAYLOAD;
    let mut c = Connection::in_transmission(n, TransmissionConfig::default());
    let mut payload = 8192u64.to_be_bytes().to_vec();
    payload.extend_from_slice(&2u32.to_be_bytes());
    let f = frame(
        x,
        Command::BlockStatus,
        CmdFlags::PAYLOAD_LEN,
        4096,
        12,
        &payload,
    );
    let (op, p) = request(&mut c, &f);
    assert_eq!(
        op,
        Op::BlockStatus {
            offset: 4096,
            len: 8192,
            req_one: false,
            contexts: 0b10
        }
    );
    assert_eq!(p.len(), 8192, "the reply is clipped to the effect length");
    // Without a payload: every selected context.
    let f = frame(x, Command::BlockStatus, CmdFlags::empty(), 0, 512, &[]);
    let (op, _) = request(&mut c, &f);
    assert!(matches!(
        op,
        Op::BlockStatus {
            contexts: 0b11,
            len: 512,
            ..
        }
    ));
}

/// Descriptors as the client decodes them: (length, flags) pairs after the
/// chunk header and context ID.
fn descriptors(mode: HeaderMode, chunk: &[u8]) -> Vec<(u64, u64)> {
    match mode {
        HeaderMode::Extended => chunk[40..]
            .chunks(16)
            .map(|d| {
                (
                    u64::from_be_bytes(d[..8].try_into().unwrap()),
                    u64::from_be_bytes(d[8..].try_into().unwrap()),
                )
            })
            .collect(),
        _ => chunk[24..]
            .chunks(8)
            .map(|d| {
                let len = u32::from_be_bytes(d[..4].try_into().unwrap());
                (
                    u64::from(len),
                    u64::from(u32::from_be_bytes(d[4..].try_into().unwrap())),
                )
            })
            .collect(),
    }
}

fn block_status(
    mode: HeaderMode,
    flags: CmdFlags,
    len: u64,
    extents: &[BlockStatusExtent],
) -> Vec<(u64, u64)> {
    let mut c = Connection::in_transmission(neg(mode), TransmissionConfig::default());
    let (_, p) = request(
        &mut c,
        &frame(mode, Command::BlockStatus, flags, 0, len, &[]),
    );
    let mut out = vec![0u8; 64 * 1024];
    let n = c.reply_block_status(p, 1, extents, &mut out).unwrap();
    assert_eq!(c.in_flight(), 0);
    descriptors(mode, &out[..n])
}

fn ext(len: u64, flags: u64) -> BlockStatusExtent {
    BlockStatusExtent { len, flags }
}

#[test]
fn block_status_is_clipped_merged_and_never_empty() {
    let s = HeaderMode::Structured;
    // Clipped to the request; equal neighbours merged; zero lengths dropped.
    let got = block_status(
        s,
        CmdFlags::empty(),
        10_000,
        &[ext(4096, 3), ext(0, 0), ext(4096, 3), ext(8192, 0)],
    );
    assert_eq!(got, [(8192, 3), (1808, 0)]);
    // Nothing reported: the whole request as status 0.
    assert_eq!(block_status(s, CmdFlags::empty(), 5000, &[]), [(5000, 0)]);
    assert_eq!(
        block_status(s, CmdFlags::empty(), 5000, &[ext(0, 1)]),
        [(5000, 0)]
    );
}

#[test]
fn checklist_106_req_one_gives_exactly_one_descriptor() {
    for mode in [HeaderMode::Structured, HeaderMode::Extended] {
        let got = block_status(
            mode,
            CmdFlags::REQ_ONE,
            8192,
            &[ext(4096, 1), ext(4096, 1), ext(100, 0)],
        );
        assert_eq!(got, [(4096, 1)], "one descriptor, not merged with the next");
        let got = block_status(mode, CmdFlags::REQ_ONE, 1000, &[ext(4096, 1)]);
        assert_eq!(got, [(1000, 1)], "never longer than the request");
    }
}

#[test]
fn compact_block_status_splits_runs_beyond_32_bits() {
    // A compact request can ask for up to u32::MAX bytes; descriptors stay
    // 512-aligned 32-bit lengths.
    let (len, big) = (u64::from(u32::MAX), 6u64 << 30);
    let max = u64::from(u32::MAX) & !511;
    let got = block_status(
        HeaderMode::Structured,
        CmdFlags::empty(),
        len,
        &[ext(big, 2)],
    );
    assert_eq!(got, [(max, 2), (len - max, 2)]);
    // Extended headers carry 64-bit lengths: one descriptor.
    let got = block_status(HeaderMode::Extended, CmdFlags::empty(), big, &[ext(big, 2)]);
    assert_eq!(got, [(big, 2)]);
}

#[test]
fn read_only_export_never_advertises_resize() {
    let mut c = Connection::new(&ConnectionConfig::default());
    let mut input = vec![];
    input.extend_from_slice(&3u32.to_be_bytes());
    input.extend_from_slice(&opt(7, &info_data("", &[])));
    let mut out = [0u8; 4096];
    while c.poll_transmit(&mut out).unwrap() > 0 {}
    let mut pos = 0;
    loop {
        let (n, next) = c.handle_input(&input[pos..]).unwrap();
        pos += n;
        if let Input::Export(q) = next {
            let info = ExportInfo {
                size: 4096,
                flags: TF::READ_ONLY | TF::SEND_RESIZE,
                name: "",
                description: "",
                block_sizes: None,
                meta_contexts: 0,
            };
            c.answer_export(q, Ok(info), &mut out).unwrap();
            break;
        }
    }
    let n = c.negotiated().unwrap();
    assert!(n.flags.contains(TF::READ_ONLY) && !n.flags.contains(TF::SEND_RESIZE));
}

#[test]
fn a_short_buffer_hands_the_token_back_and_changes_nothing() {
    // Negotiation: an INFO answer that does not fit.
    let mut c = Connection::new(&ConnectionConfig::default());
    let mut out = vec![0u8; 64 * 1024];
    assert_eq!(c.poll_transmit(&mut out[..17]).unwrap_err().required, 18);
    assert_eq!(
        c.poll_transmit(&mut out).unwrap(),
        18,
        "the greeting survived"
    );
    let mut input = 3u32.to_be_bytes().to_vec();
    input.extend_from_slice(&opt(7, &info_data("x", &[1, 2])));
    let (n, next) = c.handle_input(&input).unwrap();
    assert!(matches!(next, Input::Continue));
    let (_, next) = c.handle_input(&input[n..]).unwrap();
    let Input::Export(q) = next else {
        panic!("{next:?}")
    };
    assert_eq!(q.option(), ExportOption::Go);
    assert_eq!(c.asked_name(), "x");
    let info = ExportInfo {
        size: 1,
        flags: TF::empty(),
        name: "x",
        description: "some words",
        block_sizes: None,
        meta_contexts: 0,
    };
    let NeedRoom { required, token } = c.answer_export(q, Ok(info), &mut out[..10]).unwrap_err();
    assert!(c.negotiated().is_none(), "nothing changed");
    let n = c
        .answer_export(token, Ok(info), &mut out[..required])
        .unwrap();
    assert_eq!(n, required);
    assert!(c.negotiated().is_some());

    // Transmission: a reply that does not fit keeps the request in flight.
    let mut c =
        Connection::in_transmission(neg(HeaderMode::Extended), TransmissionConfig::default());
    let (_, p) = request(
        &mut c,
        &frame(
            HeaderMode::Extended,
            Command::Flush,
            CmdFlags::empty(),
            0,
            0,
            &[],
        ),
    );
    let back = c
        .reply_error(p, ErrorCode::Io, "disk on fire", &mut out[..8])
        .unwrap_err();
    assert_eq!(c.in_flight(), 1);
    assert_eq!(back.required, 32 + 6 + 12);
    c.reply_error(back.token, ErrorCode::Io, "disk on fire", &mut out)
        .unwrap();
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn resize_reply_records_the_new_size() {
    let mut c = Connection::in_transmission(neg(HeaderMode::Simple), TransmissionConfig::default());
    let f = frame(
        HeaderMode::Simple,
        Command::Resize,
        CmdFlags::empty(),
        1 << 20,
        0,
        &[],
    );
    let (op, p) = request(&mut c, &f);
    assert_eq!(op, Op::Resize { size: 1 << 20 });
    c.reply_ok(p, &mut [0u8; 16]).unwrap();
    assert_eq!(c.negotiated().unwrap().size, 1 << 20);
    // A failed resize changes nothing.
    let f = frame(
        HeaderMode::Simple,
        Command::Resize,
        CmdFlags::empty(),
        5 << 20,
        0,
        &[],
    );
    let (_, p) = request(&mut c, &f);
    c.reply_error(p, ErrorCode::NoSpc, "", &mut [0u8; 16])
        .unwrap();
    assert_eq!(c.negotiated().unwrap().size, 1 << 20);
}

#[test]
fn checklist_112_shutdown_refuses_new_requests_with_eshutdown() {
    let mut c = Connection::in_transmission(neg(HeaderMode::Simple), TransmissionConfig::default());
    c.begin_shutdown();
    let f = frame(
        HeaderMode::Simple,
        Command::Write,
        CmdFlags::empty(),
        0,
        4,
        b"abcd",
    );
    match c.handle_input(&f).unwrap() {
        (n, Input::Reject { error, .. }) => {
            assert_eq!(n, f.len(), "the payload is consumed with it");
            assert_eq!(error, ErrorCode::Shutdown);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn oldstyle_asks_for_the_default_export_then_greets() {
    let cfg = ConnectionConfig {
        oldstyle: true,
        ..ConnectionConfig::default()
    };
    let mut c = Connection::new(&cfg);
    assert_eq!(
        c.poll_transmit(&mut [0u8; 256]).unwrap(),
        0,
        "nothing before the answer"
    );
    let (n, next) = c.handle_input(&[]).unwrap();
    assert_eq!(n, 0);
    let Input::Export(q) = next else {
        panic!("{next:?}")
    };
    assert_eq!((q.option(), c.asked_name()), (ExportOption::Oldstyle, ""));
    let info = ExportInfo {
        size: 1 << 20,
        flags: TF::SEND_FLUSH,
        name: "",
        description: "",
        block_sizes: Some(BlockSizes::DEFAULT),
        meta_contexts: 1,
    };
    let mut out = [0u8; 256];
    let n = c.answer_export(q, Ok(info), &mut out).unwrap();
    assert_eq!(n, 152);
    assert_eq!(&out[..16], b"NBDMAGIC\x00\x00\x42\x02\x81\x86\x12\x53");
    let neg = c.negotiated().unwrap();
    assert_eq!((neg.mode, neg.meta_contexts), (HeaderMode::Simple, 0));
    // Refused: the connection closes without a greeting.
    let mut c = Connection::new(&cfg);
    let Input::Export(q) = c.handle_input(&[]).unwrap().1 else {
        panic!()
    };
    assert_eq!(
        c.answer_export(q, Err(nbd_proto::OptReplyType::ErrUnknown), &mut out)
            .unwrap(),
        0
    );
    assert!(c.is_closed());
}

#[test]
fn meta_contexts_go_only_to_exports_that_offer_them() {
    let mut d = Driver::start(HandshakeConfig::default(), 3).0;
    d.feed(&opt(8, b""));
    // The catalogue has two contexts; the export offers only the first.
    d.offered = 0b01;
    let out = d.feed(&opt(
        10,
        &meta_data("disk", &["base:allocation", "qemu:allocation-depth"]),
    ));
    assert_eq!(
        out,
        cat(&[meta_rep(10, 1, "base:allocation"), rep(10, ACK, b"")])
    );
    d.feed(&opt(7, &info_data("disk", &[])));
    assert_eq!(d.hs.negotiated().unwrap().meta_contexts, 0b01);
}
