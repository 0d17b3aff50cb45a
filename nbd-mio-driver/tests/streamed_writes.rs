//! Zero-copy WRITEs (inflow.rs): page-aligned WRITEs of 256 KiB and more
//! on a memory export are received straight into pages. Their data must
//! read back exactly whatever way the payload arrives, a WRITE cut off
//! mid-payload must change nothing, and what follows a streamed WRITE in
//! the same burst must be parsed as requests again (checklist 62, 80).

mod common;

use std::time::Duration;

use common::raw::{Raw, encode_request};
use common::{Server, Transport};
use nbd_proto::{CmdFlags, Command, HeaderMode};

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 12) as u8)
        .collect()
}

fn write_frame(mode: HeaderMode, cookie: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let flags = if mode == HeaderMode::Extended {
        CmdFlags::PAYLOAD_LEN
    } else {
        CmdFlags::empty()
    };
    let len = data.len() as u64;
    encode_request(mode, Command::Write, flags, cookie, offset, len, data)
}

/// The header alone, then the payload in uneven pieces with pauses (so the
/// server reads each piece separately), then a FLUSH in the same send as
/// the payload's last bytes: every byte lands, and the FLUSH is answered.
#[test]
fn payload_in_pieces_reads_back() {
    for mode in [HeaderMode::Simple, HeaderMode::Extended] {
        let s = Server::start(Transport::Unix, &["memory", "8M"]);
        let mut c = Raw::negotiate(&s, mode);
        let data = pattern(2 * MIB, 3);
        let frame = write_frame(mode, 1, 4096, &data);
        let header = mode.request_header_len();
        let flush = encode_request(mode, Command::Flush, CmdFlags::empty(), 2, 0, 0, &[]);
        let cuts = [
            header,
            header + 1,
            header + 5000,
            header + 700_000,
            frame.len() - 3,
        ];
        let mut at = 0;
        for cut in cuts {
            c.send(&frame[at..cut]);
            std::thread::sleep(Duration::from_millis(20));
            at = cut;
        }
        let mut tail = frame[at..].to_vec();
        tail.extend_from_slice(&flush);
        c.send(&tail);
        assert_eq!(c.status(1), None, "{mode:?}: the streamed WRITE failed");
        assert_eq!(c.status(2), None, "{mode:?}: the FLUSH after it failed");
        let back = c.read(4096, data.len() as u64);
        assert!(back == data, "{mode:?}: data read back differs");
        // The pages around it are untouched.
        assert!(c.read(0, 4096).iter().all(|&b| b == 0));
        assert!(
            c.read(4096 + data.len() as u64, 4096)
                .iter()
                .all(|&b| b == 0)
        );
    }
}

/// Pipelined large WRITEs over each other and over data, then one client
/// READing while another overwrites: the last write wins, READ replies
/// sent from pages keep the bytes they had (checklist 62).
#[test]
fn pipelined_overwrites_keep_order() {
    let s = Server::start(Transport::Unix, &["memory", "8M"]);
    let mut c = Raw::negotiate(&s, HeaderMode::Structured);
    let mut burst = Vec::new();
    for (i, seed) in [1u8, 2, 3, 4].iter().enumerate() {
        let off = (i as u64 % 2) * 256 * 1024;
        burst.extend(write_frame(
            HeaderMode::Structured,
            i as u64,
            off,
            &pattern(MIB, *seed),
        ));
    }
    c.send(&burst);
    for i in 0..4 {
        assert_eq!(c.status(i), None, "WRITE {i}");
    }
    // WRITE 3 (seed 4, at 256 KiB) went last; WRITE 2 (seed 3, at 0) left
    // only its first 256 KiB visible.
    let back = c.read(0, (MIB + 256 * 1024) as u64);
    assert!(back[..256 * 1024] == pattern(MIB, 3)[..256 * 1024]);
    assert!(back[256 * 1024..] == pattern(MIB, 4)[..]);
}

/// A client that sends a WRITE's header and half its payload, then goes
/// away: nothing of it is stored (the old data stays), and the server
/// serves the next client.
#[test]
fn write_cut_off_mid_payload_changes_nothing() {
    let s = Server::start(Transport::Unix, &["memory", "8M"]);
    let old = pattern(MIB, 9);
    let mut c = Raw::negotiate(&s, HeaderMode::Simple);
    c.write(0, &old);
    drop(c);
    let mut cut = Raw::negotiate(&s, HeaderMode::Simple);
    let frame = write_frame(HeaderMode::Simple, 1, 0, &pattern(MIB, 10));
    cut.send(&frame[..frame.len() / 2]);
    std::thread::sleep(Duration::from_millis(50));
    drop(cut);
    std::thread::sleep(Duration::from_millis(50));
    let mut c = Raw::negotiate(&s, HeaderMode::Simple);
    assert!(
        c.read(0, MIB as u64) == old,
        "a WRITE never completed changed data"
    );
}

/// Not page-aligned, or on a read-only export: the ordinary path, with
/// the ordinary results (checklist 70: EPERM).
#[test]
fn unaligned_and_read_only_writes_behave_as_before() {
    let s = Server::start(Transport::Unix, &["memory", "8M"]);
    let mut c = Raw::negotiate(&s, HeaderMode::Simple);
    let data = pattern(MIB + 100, 5);
    c.write(1000, &data);
    assert!(c.read(1000, data.len() as u64) == data);

    let ro = Server::start(Transport::Unix, &["-r", "memory", "8M"]);
    let mut c = Raw::negotiate(&ro, HeaderMode::Simple);
    c.send(&write_frame(HeaderMode::Simple, 3, 0, &pattern(MIB, 1)));
    assert_eq!(c.status(3), Some(nbd_proto::ErrorCode::Perm));
    assert_eq!(c.call(Command::Flush, CmdFlags::empty(), 0, 0), None);
}
