//! Structured READ replies and BLOCK_STATUS (checklist 96-109).

use nbd_proto::{CmdFlags, Command, ErrorCode, HeaderMode, TransmissionFlags as TF};

use crate::common::Transport;
use crate::common::raw::{Raw, assemble, opt, rep};
use crate::{GRAIN, memory, pattern};

const SIZE: u64 = 1 << 20;
const DONE_NONE: u16 = 0;
const DATA: u16 = 1;
const HOLE: u16 = 2;
const BS: u16 = 5;
const ERR: u16 = 0x8001;

#[test]
fn checklist_96_99_every_read_reply_is_chunked_errors_included() {
    let s = memory(&[]);
    let mut c = Raw::negotiate(&s, HeaderMode::Structured);
    let bad_flag = CmdFlags::from_bits_retain(0x0080);
    for (flags, offset, len) in [
        (bad_flag, 0, 512),               // an invalid flag
        (CmdFlags::empty(), SIZE, 512),   // out of range
        (CmdFlags::empty(), SIZE - 1, 2), // partly out of range
    ] {
        c.request(Command::Read, flags, 21, offset, len);
        let msgs = c.full_reply();
        assert_eq!(msgs.len(), 1, "a single error chunk");
        let m = &msgs[0];
        assert!(
            !m.simple,
            "never a simple reply once structured replies are on"
        );
        assert_eq!(m.ty, ERR);
        assert!(m.len >= 6, "error chunk length");
        assert!(m.done);
        assert_eq!(m.error, Some(ErrorCode::Inval));
    }
    assert_eq!(c.read(0, 512), vec![0; 512]);
}

#[test]
fn checklist_97_98_sparse_read_tiles_range_with_holes_and_data() {
    let s = crate::common::Server::start(Transport::Unix, &["memory", "4M"]);
    let mut c = Raw::negotiate(&s, HeaderMode::Structured);
    // Data at both ends of a 1 MiB window, a hole in the middle.
    let base = 1 << 20;
    let head = pattern(64 << 10, 5);
    let tail = pattern(64 << 10, 6);
    c.write(base, &head);
    c.write(base + (1 << 20) - (64 << 10), &tail);
    c.request(Command::Read, CmdFlags::empty(), 31, base, 1 << 20);
    let msgs = c.full_reply();
    for m in &msgs {
        match m.ty {
            DATA => assert!(m.len >= 9 && !m.data.is_empty()),
            HOLE => assert!(m.len == 12 && m.hole > 0),
            DONE_NONE => assert!(m.len == 0 && m.done),
            other => panic!("chunk type {other:#x}"),
        }
        assert!(m.error.is_none());
    }
    assert!(
        msgs.iter().any(|m| m.ty == HOLE),
        "the hole is sent as OFFSET_HOLE"
    );
    assert!(msgs.iter().any(|m| m.ty == DATA));
    assert!(msgs.last().unwrap().done && msgs[..msgs.len() - 1].iter().all(|m| !m.done));
    let got = assemble(&msgs, base, 1 << 20);
    assert_eq!(got[..64 << 10], head[..]);
    assert_eq!(got[(1 << 20) - (64 << 10)..], tail[..]);
    assert!(
        got[64 << 10..(1 << 20) - (64 << 10)]
            .iter()
            .all(|&b| b == 0)
    );
}

#[test]
fn checklist_101_df_read_is_one_data_chunk_holes_expanded() {
    let s = memory(&[]);
    let mut simple = Raw::negotiate(&s, HeaderMode::Simple);
    assert!(
        !simple.flags.contains(TF::SEND_DF),
        "SEND_DF only with structured replies"
    );
    simple.write(0, &pattern(4096, 7));
    let mut c = Raw::negotiate(&s, HeaderMode::Structured);
    assert!(c.flags.contains(TF::SEND_DF));
    c.request(Command::Read, CmdFlags::DF, 41, 0, 65536);
    let msgs = c.full_reply();
    let data: Vec<_> = msgs.iter().filter(|m| m.ty != DONE_NONE).collect();
    assert_eq!(data.len(), 1, "exactly one content chunk: {msgs:?}");
    assert_eq!(
        (data[0].ty, data[0].at, data[0].data.len()),
        (DATA, 0, 65536)
    );
    assert_eq!(data[0].data[..4096], pattern(4096, 7)[..]);
    assert!(data[0].data[4096..].iter().all(|&b| b == 0));
}

#[test]
fn checklist_104_block_status_without_context_is_einval() {
    let s = memory(&[]);
    let mut c = Raw::connect(&s);
    c.start();
    c.option(opt::STRUCTURED_REPLY, &[]);
    assert_eq!(c.opt_reply().reply, rep::ACK);
    c.info_go(opt::GO, "", &[]);
    c.finish_go();
    c.mode = HeaderMode::Structured;
    let r = c.call(Command::BlockStatus, CmdFlags::empty(), 0, 4096);
    assert_eq!(r, Some(ErrorCode::Inval));
    assert_eq!(c.read(0, 512), vec![0; 512]);
}

/// One BLOCK_STATUS; returns its single chunk.
fn block_status(c: &mut Raw, flags: CmdFlags, offset: u64, len: u64) -> crate::common::raw::Msg {
    c.request(Command::BlockStatus, flags, 51, offset, len);
    let mut msgs = c.full_reply();
    assert_eq!(msgs.len(), 1, "one chunk per context: {msgs:?}");
    msgs.remove(0)
}

#[test]
fn checklist_105_106_107_109_block_status_base_allocation() {
    let s = memory(&[]);
    let mut c = Raw::negotiate(&s, HeaderMode::Structured);
    let g = GRAIN;
    c.write(2 * g, &pattern(2 * g as usize, 8));
    let m = block_status(&mut c, CmdFlags::empty(), 0, SIZE);
    assert_eq!(m.ty, BS);
    assert_eq!(m.ctx, 1, "the ID SET_META_CONTEXT returned");
    assert!(m.done);
    assert_eq!(m.len, 4 + 8 * m.extents.len() as u64);
    assert!(!m.extents.is_empty() && m.extents.iter().all(|e| e.0 > 0));
    let n = m.extents.len();
    let before_last: u64 = m.extents[..n - 1].iter().map(|e| e.0).sum();
    assert!(before_last < SIZE);
    assert!(m.extents.iter().all(|e| e.1 & !3 == 0), "reserved bits");
    // Unwritten, data, unwritten: 109's cheap detection.
    assert_eq!(m.extents[0], (2 * g, 3));
    assert_eq!(m.extents[1], (2 * g, 0));
    assert_eq!(m.extents[2].1, 3);
    // REQ_ONE: one extent, no longer than asked (106).
    let one = block_status(&mut c, CmdFlags::REQ_ONE, g, 8 * g);
    assert_eq!(one.extents, [(g, 3)]);
    // Partly beyond the end (107).
    let r = c.call(Command::BlockStatus, CmdFlags::empty(), SIZE - 4096, 8192);
    assert_eq!(r, Some(ErrorCode::Inval));
    assert_eq!(c.read(2 * g, 2 * g), pattern(2 * g as usize, 8));
}

#[test]
fn checklist_105_block_status_over_tcp_starts_at_offset() {
    let s = crate::common::Server::start(Transport::Tcp, &["memory", "1M"]);
    let mut c = Raw::negotiate(&s, HeaderMode::Structured);
    c.write(0, &pattern(4096, 1));
    let m = block_status(&mut c, CmdFlags::empty(), 2048, 8192);
    // Extents start at the request offset: 2 KiB of data first.
    assert_eq!(m.extents[0], (2048, 0));
    assert!(m.extents.iter().map(|e| e.0).sum::<u64>() <= 8192 + 4096);
}
