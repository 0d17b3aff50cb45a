//! Property tests of `client::Connection`: a READ reply cut into any
//! data/hole chunks, sent in any order and fed in any splits, reassembles
//! to the same bytes (checklist 97); arbitrary server bytes never panic
//! the connection, never make it consume more than given, and never add
//! requests to the table.

mod client_conn;
mod common;

use client_conn::*;
use common::*;
use nbd_proto::client::{ClientConfig, Cmd, Connection, Event};
use nbd_proto::{Cookie, HeaderMode};
use proptest::prelude::*;

const SIZE: u64 = 1 << 20;

fn connection(mode: HeaderMode) -> Connection<4> {
    let cfg = ClientConfig {
        structured_replies: mode != HeaderMode::Simple,
        extended_headers: mode == HeaderMode::Extended,
        base_allocation: true,
        ..ClientConfig::default()
    };
    let server = match mode {
        HeaderMode::Simple => cat(&[greeting(3), info_export(7, SIZE, 1), rep(7, ACK, b"")]),
        HeaderMode::Structured => structured_server(SIZE, DISK_WIRE_FLAGS, true),
        HeaderMode::Extended => cat(&[
            greeting(3),
            rep(11, ACK, b""),
            meta_rep(10, 9, "base:allocation"),
            rep(10, ACK, b""),
            info_export(7, SIZE, DISK_WIRE_FLAGS),
            rep(7, ACK, b""),
        ]),
    };
    let (c, _) = ready::<4>(&cfg, &server);
    assert_eq!(c.negotiated().unwrap().mode, mode);
    c
}

/// One reply chunk in `mode`.
fn one_chunk(mode: HeaderMode, flags: u16, ty: u16, cookie: Cookie, payload: &[u8]) -> Vec<u8> {
    match mode {
        HeaderMode::Extended => ext_chunk(flags, ty, cookie, 0, payload),
        _ => chunk(flags, ty, cookie, payload),
    }
}

/// Feed `wire` in pieces of the given sizes (cycled); returns the READ
/// buffer and the Done results seen.
fn feed(
    c: &mut Connection<4>,
    wire: &[u8],
    splits: &[usize],
    len: usize,
) -> (Vec<u8>, Vec<String>) {
    let mut buf = vec![0xa5u8; len];
    let mut done = Vec::new();
    let (mut pos, mut avail, mut k) = (0, 0, 0);
    loop {
        let (used, ev) = c.handle_input(&wire[pos..avail]).expect("valid reply");
        assert!(used <= avail - pos);
        pos += used;
        match ev {
            Event::ReadData(d) => d.copy_into(&mut buf).unwrap(),
            Event::Done(d) => done.push(format!("{:?}", d.result)),
            Event::NeedInput { .. } if avail < wire.len() => {
                avail = (avail + splits[k % splits.len()]).min(wire.len());
                k += 1;
            }
            Event::Idle | Event::NeedInput { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pos, wire.len(), "every byte consumed");
    (buf, done)
}

proptest! {
    #[test]
    fn reassembled_reads_match_whatever_the_chunking(
        data in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 1..3000),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        holes in any::<u32>(),
        order in any::<u64>(),
        splits in proptest::collection::vec(1usize..200, 1..6),
        extended in any::<bool>(),
        offset in 0u64..4096,
    ) {
        let mode = if extended { HeaderMode::Extended } else { HeaderMode::Structured };
        let mut c = connection(mode);
        let len = data.len();
        let mut out = [0u8; 64];
        let sent = c.encode_request(&Cmd::read(offset, len as u64), &mut out).unwrap();
        let cookie = sent.cookie;
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(len)).collect();
        points.extend([0, len]);
        points.sort_unstable();
        points.dedup();
        let mut chunks: Vec<Vec<u8>> = points.windows(2).enumerate().map(|(i, w)| {
            let piece = &data[w[0]..w[1]];
            let at = offset + w[0] as u64;
            if holes & (1 << (i % 32)) != 0 && piece.iter().all(|&b| b == 0) {
                one_chunk(mode, 0, T_HOLE, cookie, &hole_payload(at, piece.len() as u32))
            } else {
                one_chunk(mode, 0, T_DATA, cookie, &data_payload(at, piece))
            }
        }).collect();
        // Any order (a Fisher-Yates shuffle driven by `order`).
        let mut r = order;
        for i in (1..chunks.len()).rev() {
            chunks.swap(i, (r % (i as u64 + 1)) as usize);
            r = r.rotate_left(7) ^ 0x9e37_79b9;
        }
        chunks.push(one_chunk(mode, DONE, T_NONE, cookie, b""));
        let wire = chunks.concat();
        let (buf, done) = feed(&mut c, &wire, &splits, len);
        prop_assert_eq!(buf, data);
        prop_assert_eq!(done, vec!["Ok(())".to_string()]);
        prop_assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn simple_reads_match_whatever_the_splits(
        data in proptest::collection::vec(any::<u8>(), 1..3000),
        splits in proptest::collection::vec(1usize..300, 1..6),
    ) {
        let mut c = connection(HeaderMode::Simple);
        let mut out = [0u8; 64];
        let sent = c.encode_request(&Cmd::read(0, data.len() as u64), &mut out).unwrap();
        let wire = cat(&[simple(sent.cookie, 0), data.clone()]);
        let (buf, done) = feed(&mut c, &wire, &splits, data.len());
        prop_assert_eq!(buf, data);
        prop_assert_eq!(done, vec!["Ok(())".to_string()]);
    }

    #[test]
    fn arbitrary_replies_never_panic(
        mode_pick in 0u8..3,
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        step in 1usize..64,
    ) {
        let mode = [HeaderMode::Simple, HeaderMode::Structured, HeaderMode::Extended][mode_pick as usize];
        let mut c = connection(mode);
        let mut out = [0u8; 64];
        for cmd in [Cmd::read(0, 100), Cmd::flush(), Cmd::block_status(0, 512)] {
            let _ = c.encode_request(&cmd, &mut out);
        }
        let before = c.in_flight();
        let mut pos = 0;
        for _ in 0..10_000 {
            let end = (pos + step).min(bytes.len());
            let window = &bytes[pos..end];
            let Ok((used, ev)) = c.handle_input(window) else { break };
            prop_assert!(used <= window.len());
            prop_assert!(c.in_flight() <= before);
            pos += used;
            if let Event::ReadData(d) = ev {
                let mut b = vec![0u8; 100];
                prop_assert!(d.copy_into(&mut b).is_ok());
            } else if matches!(ev, Event::Idle | Event::Closed) || (used == 0 && end == bytes.len()) {
                break;
            }
        }
    }

    #[test]
    fn arbitrary_negotiation_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        prefix in any::<bool>(),
        tls in any::<bool>(),
    ) {
        let cfg = ClientConfig { tls, list: true, base_allocation: true, ..ClientConfig::default() };
        let mut c = Connection::<4>::new(&cfg).unwrap();
        let input = if prefix { cat(&[greeting(3), bytes]) } else { bytes };
        let mut out = [0u8; nbd_proto::client::CLIENT_TRANSMIT_MAX];
        let mut pos = 0;
        for _ in 0..1000 {
            let Ok((used, ev)) = c.handle_input(&input[pos..]) else { break };
            prop_assert!(used <= input.len() - pos);
            pos += used;
            match ev {
                Event::Transmit => { prop_assert!(c.poll_transmit(&mut out).unwrap() > 0); }
                Event::StartTls(t) => c.handle_tls_established(t),
                Event::NeedInput { .. } | Event::Idle | Event::Closed => break,
                _ => {}
            }
        }
    }
}
