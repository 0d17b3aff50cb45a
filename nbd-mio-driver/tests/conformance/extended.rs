//! Extended headers (checklist 115-120). The raw client's reply decoder
//! in extended mode rejects simple and 20-byte structured replies, so
//! every successful `reply()` here also checks "no simple reply" (116).

use nbd_proto::{CmdFlags, Command, ErrorCode, HeaderMode, TransmissionFlags as TF};

use crate::common::raw::{Raw, opt, rep};
use crate::{GRAIN, memory, pattern};

const SIZE: u64 = 1 << 20;
const ERR_EXT_HEADER_REQD: u32 = 0x8000_000a;

#[test]
fn checklist_115_117_negotiation() {
    let s = memory(&[]);
    let mut c = Raw::connect(&s);
    c.start();
    c.option(opt::EXTENDED_HEADERS, b"x");
    let r = c.opt_reply();
    assert_eq!(
        (r.option, r.reply),
        (opt::EXTENDED_HEADERS, rep::ERR_INVALID)
    );
    c.option(opt::EXTENDED_HEADERS, &[]);
    assert_eq!(c.opt_reply().reply, rep::ACK);
    c.option(opt::STRUCTURED_REPLY, &[]);
    let r = c.opt_reply();
    assert_eq!(
        r.reply, ERR_EXT_HEADER_REQD,
        "extended headers take precedence"
    );
    c.info_go(opt::GO, "", &[]);
    c.finish_go();
    c.mode = HeaderMode::Extended;
    assert_eq!(c.read(0, 512), vec![0; 512]);
}

#[test]
fn checklist_116_replies_are_32_byte_chunks_echoing_the_offset() {
    let s = memory(&[]);
    let mut c = Raw::negotiate(&s, HeaderMode::Extended);
    let e = CmdFlags::empty();
    c.request_with(
        Command::Write,
        CmdFlags::PAYLOAD_LEN,
        1,
        12288,
        4096,
        &pattern(4096, 1),
    );
    c.request(Command::Flush, e, 2, 0, 0);
    c.request(Command::Read, e, 3, 12288, 4096);
    c.request(Command::Trim, e, 4, 65536, 4096);
    c.request(Command::Read, e, 5, SIZE + 512, 512);
    c.request(Command::Cache, e, 6, 8192, 4096);
    // Replies may come in any order (an asynchronous backend answers the
    // out-of-range READ before the others); each must echo its own offset.
    let mut replies: Vec<_> = (0..6).map(|_| c.full_reply()).collect();
    replies.sort_by_key(|msgs| msgs[0].cookie);
    for (msgs, (cookie, offset)) in replies.iter().zip([
        (1, 12288),
        (2, 0),
        (3, 12288),
        (4, 65536),
        (5, SIZE + 512),
        (6, 8192),
    ]) {
        assert_eq!(msgs[0].cookie, cookie);
        assert!(
            msgs.iter().all(|m| m.cookie == cookie),
            "one reply at a time"
        );
        for m in msgs {
            assert!(!m.simple);
            assert_eq!(m.hdr_offset, offset, "cookie {cookie}: echoed offset");
        }
        if cookie == 5 {
            assert_eq!(msgs[0].error, Some(ErrorCode::Inval));
        } else {
            assert!(msgs.iter().all(|m| m.error.is_none()), "cookie {cookie}");
        }
    }
}

#[test]
fn checklist_118_payload_len_rules() {
    let s = memory(&[]);
    let mut c = Raw::negotiate(&s, HeaderMode::Extended);
    // WRITE with PAYLOAD_LEN: normal.
    c.write(0, &pattern(8192, 2));
    // A payload on a command with no payload form: drained, then EINVAL.
    let junk = crate::common::raw::encode_request(
        c.mode,
        Command::Write,
        CmdFlags::PAYLOAD_LEN,
        0xdead,
        0,
        4,
        b"evil",
    );
    c.request_with(
        Command::Flush,
        CmdFlags::PAYLOAD_LEN,
        7,
        0,
        junk.len() as u64,
        &junk,
    );
    assert_eq!(c.status(7), Some(ErrorCode::Inval));
    c.request_with(Command::Read, CmdFlags::PAYLOAD_LEN, 8, 0, 100, &[1; 100]);
    assert_eq!(c.status(8), Some(ErrorCode::Inval));
    assert_eq!(
        c.read(0, 8192),
        pattern(8192, 2),
        "the embedded WRITE never ran"
    );
    // A PAYLOAD_LEN far above the maximum payload: hard disconnect.
    let frame = crate::common::raw::encode_request(
        c.mode,
        Command::Flush,
        CmdFlags::PAYLOAD_LEN,
        9,
        0,
        1 << 40,
        &[],
    );
    c.send(&frame);
    c.send_lossy(&[0; 4096]);
    c.expect_closed();
}

#[test]
fn checklist_119_block_status_is_type_6_with_64_bit_descriptors() {
    let s = memory(&[]);
    let mut c = Raw::negotiate(&s, HeaderMode::Extended);
    c.write(GRAIN, &pattern(GRAIN as usize, 3));
    c.request(Command::BlockStatus, CmdFlags::empty(), 11, 0, SIZE);
    let msgs = c.full_reply();
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.ty, 6, "BLOCK_STATUS_EXT, never type 5");
    assert_eq!(m.ctx, 1);
    assert!(!m.extents.is_empty());
    assert_eq!(m.len, 8 + 16 * m.extents.len() as u64);
    assert!(
        m.extents.iter().all(|e| e.1 >> 32 == 0),
        "upper status bits 0"
    );
    assert_eq!(m.extents[..2], [(GRAIN, 3), (GRAIN, 0)]);
    // 64-bit effect lengths are legal here; the reply still ends at the
    // export's end.
    c.request(Command::BlockStatus, CmdFlags::empty(), 12, 0, SIZE);
    let m = c.full_reply().remove(0);
    assert_eq!(m.extents.iter().map(|e| e.0).sum::<u64>(), SIZE);
}

fn bs_payload(effect: u64, ids: &[u32]) -> Vec<u8> {
    let mut p = effect.to_be_bytes().to_vec();
    for id in ids {
        p.extend_from_slice(&id.to_be_bytes());
    }
    p
}

#[test]
fn checklist_120_block_status_payload_form() {
    let s = memory(&[]);
    let structured = Raw::negotiate(&s, HeaderMode::Structured);
    assert!(
        !structured.flags.contains(TF::BLOCK_STATUS_PAYLOAD),
        "only with extended headers"
    );
    let mut c = Raw::negotiate(&s, HeaderMode::Extended);
    assert!(c.flags.contains(TF::BLOCK_STATUS_PAYLOAD));
    let f = CmdFlags::PAYLOAD_LEN;
    let ok = bs_payload(65536, &[1]);
    c.request_with(Command::BlockStatus, f, 13, 0, ok.len() as u64, &ok);
    let m = c.full_reply().remove(0);
    assert_eq!((m.ty, m.ctx, m.error), (6, 1, None));
    assert_eq!(m.extents, [(65536, 3)]);
    for ids in [&[99u32][..], &[1, 1], &[0]] {
        let p = bs_payload(65536, ids);
        c.request_with(Command::BlockStatus, f, 14, 0, p.len() as u64, &p);
        assert_eq!(c.status(14), Some(ErrorCode::Inval), "ids {ids:?}");
    }
    assert_eq!(c.read(0, 512), vec![0; 512]);
}
