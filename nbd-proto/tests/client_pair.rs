//! `client::Connection` against nbd-proto's own server state machines in
//! memory (no sockets): negotiation in simple, structured and extended
//! mode, then pipelined mixed requests whose READ replies arrive cut into
//! shuffled data/hole chunks interleaved with other replies, fed to the
//! client in random-sized pieces. Every reply is checked against a model
//! of the disk (checklist 65, 97, 105).

mod client_conn;
mod common;

use std::collections::HashMap;

use client_conn::server::{Lcg, MemServer};
use nbd_proto::client::{ClientConfig, Cmd, Connection, Event};
use nbd_proto::wire::reply::BlockStatusExtent;
use nbd_proto::{Command, HeaderMode};

const SIZE: usize = 256 * 1024;
const N: usize = 16;

/// Negotiate; returns the client and server.
fn negotiate(cfg: &ClientConfig<'_>, seed: u64) -> (Connection<N>, MemServer, Vec<String>) {
    let mut c = Connection::<N>::new(cfg).unwrap();
    let mut s = MemServer::new(SIZE, seed);
    let mut s2c = s.feed(&[]);
    let mut out = vec![0u8; nbd_proto::client::CLIENT_TRANSMIT_MAX];
    let mut log = Vec::new();
    loop {
        let (used, ev) = c.handle_input(&s2c).expect("client negotiation");
        let ev = match ev {
            Event::Transmit => {
                let n = c.poll_transmit(&mut out).unwrap();
                s2c.drain(..used);
                s2c.extend(s.feed(&out[..n]));
                continue;
            }
            Event::ListEntry { name, .. } => format!("list {name}"),
            Event::MetaContext { name, .. } => format!("meta {name}"),
            Event::Info(_) => "info".into(),
            Event::Ready(n) => format!("ready {:?}", n.mode),
            Event::Idle => break,
            other => panic!("unexpected {other:?}"),
        };
        s2c.drain(..used);
        log.push(ev);
    }
    assert!(s2c.is_empty());
    (c, s, log)
}

struct Pending {
    cmd: Command,
    expect: Vec<u8>,
    got: Vec<u8>,
    extents: Vec<BlockStatusExtent>,
    len: u64,
}

/// Run `count` requests, up to `N` in flight, replies fed in random pieces.
fn stream(mut c: Connection<N>, mut s: MemServer, count: usize, seed: u64) {
    let mut rng = Lcg(seed);
    let mut model = vec![0u8; SIZE];
    let base = c.negotiated().unwrap().base_allocation.is_some();
    let mut pending: HashMap<usize, Pending> = HashMap::new();
    let (mut sent, mut done) = (0, 0);
    let mut s2c: Vec<u8> = Vec::new();
    let mut wire = vec![0u8; 64 * 1024];
    let (mut holes, mut pieces) = (0, 0);
    while done < count {
        // Fill the pipeline.
        let mut c2s = Vec::new();
        while c.can_send() && sent < count {
            let len = 1 + rng.below(8192);
            let offset = rng.below(SIZE as u64 - len);
            let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8 | 1).collect();
            let cmd = match rng.below(8) {
                0 | 1 => Cmd::write(offset, &payload),
                2..=4 => Cmd::read(offset, len),
                5 => Cmd::write_zeroes(offset, len),
                6 if base => Cmd::block_status(offset, len),
                _ => Cmd::flush(),
            };
            let s_ = c.encode_request(&cmd, &mut wire).expect("valid request");
            c2s.extend_from_slice(&wire[..s_.len]);
            let (o, l) = (offset as usize, len as usize);
            let expect = match cmd.command {
                Command::Write => {
                    model[o..o + l].copy_from_slice(&payload);
                    Vec::new()
                }
                Command::WriteZeroes => {
                    model[o..o + l].fill(0);
                    Vec::new()
                }
                Command::Read | Command::BlockStatus => model[o..o + l].to_vec(),
                _ => Vec::new(),
            };
            let got = if cmd.command == Command::Read {
                vec![0xee; l]
            } else {
                Vec::new()
            };
            let p = Pending {
                cmd: cmd.command,
                expect,
                got,
                extents: Vec::new(),
                len,
            };
            assert!(pending.insert(s_.slot.unwrap(), p).is_none(), "slot reused");
            sent += 1;
        }
        s2c.extend(s.feed(&c2s));
        // Deliver the replies in random pieces.
        let mut avail = 0;
        loop {
            let (used, ev) = c.handle_input(&s2c[..avail]).expect("client transmission");
            match ev {
                Event::ReadData(d) => {
                    holes += usize::from(d.is_hole());
                    pieces += 1;
                    let p = pending.get_mut(&d.slot()).unwrap();
                    d.copy_into(&mut p.got).unwrap();
                }
                Event::BlockStatus(b) => {
                    let p = pending.get_mut(&b.slot()).unwrap();
                    let mut e = [BlockStatusExtent { len: 0, flags: 0 }; 8];
                    let n = b.copy_into(&mut e);
                    p.extents.extend_from_slice(&e[..n]);
                }
                Event::Done(d) => {
                    assert_eq!(d.result, Ok(()));
                    let p = pending.remove(&d.slot).unwrap();
                    assert_eq!(p.cmd, d.command);
                    check(&p);
                    done += 1;
                }
                Event::NeedInput { .. } if avail < s2c.len() => {
                    avail = (avail + 1 + rng.below(3000) as usize).min(s2c.len());
                }
                Event::NeedInput { .. } | Event::Idle => {
                    s2c.drain(..used);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
            s2c.drain(..used);
            avail -= used;
        }
    }
    assert!(pending.is_empty());
    assert_eq!(s.disk, model);
    if c.negotiated().unwrap().mode != HeaderMode::Simple {
        // The reassembly paths were exercised, not just whole replies.
        assert!(
            holes > 10 && pieces > 2 * count / 3,
            "{holes} holes, {pieces} pieces"
        );
    }
    let mut out = [0u8; 64];
    let disc = c.encode_request(&Cmd::disconnect(), &mut out).unwrap();
    assert!(s.feed(&out[..disc.len]).is_empty(), "no reply to DISC");
    assert!(s.disconnected);
    assert!(matches!(c.handle_input(&[]).unwrap(), (0, Event::Closed)));
}

fn check(p: &Pending) {
    match p.cmd {
        Command::Read => assert_eq!(p.got, p.expect),
        Command::BlockStatus => {
            let total: u64 = p.extents.iter().map(|e| e.len).sum();
            assert_eq!(total, p.len, "extents clipped to the request");
            let zero = p.expect.iter().all(|&b| b == 0);
            assert!(p.extents.iter().all(|e| (e.flags == 2) == zero));
        }
        _ => {}
    }
}

#[test]
fn pair_simple_mode_with_list() {
    let cfg = ClientConfig {
        structured_replies: false,
        list: true,
        export: "mem",
        ..ClientConfig::default()
    };
    let (c, s, log) = negotiate(&cfg, 1);
    assert_eq!(log, ["list mem", "info", "info", "info", "ready Simple"]);
    stream(c, s, 600, 11);
}

#[test]
fn pair_structured_mode_with_base_allocation() {
    let cfg = ClientConfig {
        base_allocation: true,
        ..ClientConfig::default()
    };
    let (c, s, log) = negotiate(&cfg, 2);
    assert_eq!(
        log,
        [
            "meta base:allocation",
            "info",
            "info",
            "info",
            "ready Structured"
        ]
    );
    assert_eq!(c.negotiated().unwrap().mode, HeaderMode::Structured);
    stream(c, s, 600, 12);
}

#[test]
fn pair_extended_mode() {
    let cfg = ClientConfig {
        extended_headers: true,
        base_allocation: true,
        ..ClientConfig::default()
    };
    let (c, s, _) = negotiate(&cfg, 3);
    assert_eq!(c.negotiated().unwrap().mode, HeaderMode::Extended);
    stream(c, s, 600, 13);
}

#[test]
fn pair_unknown_export_is_a_clear_error() {
    let cfg = ClientConfig {
        export: "nope",
        ..ClientConfig::default()
    };
    let mut c = Connection::<N>::new(&cfg).unwrap();
    let mut s = MemServer::new(SIZE, 4);
    let mut s2c = s.feed(&[]);
    let mut out = vec![0u8; 8192];
    let err = loop {
        match c.handle_input(&s2c) {
            Ok((used, Event::Transmit)) => {
                s2c.drain(..used);
                let n = c.poll_transmit(&mut out).unwrap();
                s2c.extend(s.feed(&out[..n]));
            }
            Ok((used, _)) => {
                s2c.drain(..used);
            }
            Err(e) => break e,
        }
    };
    assert_eq!(
        err,
        nbd_proto::ProtocolError::OptionRefused(
            nbd_proto::OptionCode::Go,
            nbd_proto::OptReplyType::ErrUnknown
        )
    );
    assert!(matches!(c.handle_input(&[]).unwrap(), (0, Event::Closed)));
}
