//! Helpers for the `client::Connection` tests: hand-written server reply
//! bytes (so expectations never come from the encoders) and a recorder
//! that runs the documented client loop over in-memory input.

#![allow(dead_code)]

pub mod server;

use std::collections::HashMap;

use nbd_proto::client::{ClientConfig, Connection, Event};
use nbd_proto::wire::reply::BlockStatusExtent;
use nbd_proto::{Cookie, ProtocolError};

pub const SIMPLE_MAGIC: [u8; 4] = [0x67, 0x44, 0x66, 0x98];
pub const CHUNK_MAGIC: [u8; 4] = [0x66, 0x8e, 0x33, 0xef];
pub const EXT_MAGIC: [u8; 4] = [0x6e, 0x8a, 0x27, 0x8c];
pub const DONE: u16 = 1;
pub const T_NONE: u16 = 0;
pub const T_DATA: u16 = 1;
pub const T_HOLE: u16 = 2;
pub const T_BS: u16 = 5;
pub const T_BS_EXT: u16 = 6;
pub const T_ERROR: u16 = 0x8001;

/// A simple reply header (proto.md "Simple reply message").
pub fn simple(cookie: Cookie, error: u32) -> Vec<u8> {
    let mut v = SIMPLE_MAGIC.to_vec();
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&cookie.0.to_be_bytes());
    v
}

/// A 20-byte structured chunk with its payload.
pub fn chunk(flags: u16, ty: u16, cookie: Cookie, payload: &[u8]) -> Vec<u8> {
    let mut v = CHUNK_MAGIC.to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&ty.to_be_bytes());
    v.extend_from_slice(&cookie.0.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A 32-byte extended chunk with its payload.
pub fn ext_chunk(flags: u16, ty: u16, cookie: Cookie, offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = EXT_MAGIC.to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&ty.to_be_bytes());
    v.extend_from_slice(&cookie.0.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// OFFSET_DATA payload.
pub fn data_payload(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut v = offset.to_be_bytes().to_vec();
    v.extend_from_slice(data);
    v
}

/// OFFSET_HOLE payload.
pub fn hole_payload(offset: u64, len: u32) -> Vec<u8> {
    let mut v = offset.to_be_bytes().to_vec();
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// ERROR payload.
pub fn error_payload(error: u32, msg: &str) -> Vec<u8> {
    let mut v = error.to_be_bytes().to_vec();
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend_from_slice(msg.as_bytes());
    v
}

/// 32-bit BLOCK_STATUS payload.
pub fn bs_payload(id: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    for (len, flags) in extents {
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
    }
    v
}

/// What the client loop saw.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Event log, one short line per event.
    pub log: Vec<String>,
    /// READ destinations by slot, created on first data.
    pub reads: HashMap<usize, Vec<u8>>,
    /// Size to give a READ destination (the test knows its READs).
    pub read_len: usize,
    /// Extents copied out, by slot.
    pub extents: HashMap<usize, Vec<BlockStatusExtent>>,
    /// Bytes written by poll_transmit.
    pub sent: Vec<u8>,
}

impl Recorder {
    pub fn new(read_len: usize) -> Self {
        Self {
            read_len,
            ..Self::default()
        }
    }

    /// Run the loop over `input` (which may arrive in `piece`-byte
    /// reads) until the connection needs more than there is. Returns the
    /// unconsumed bytes.
    pub fn run<const N: usize>(
        &mut self,
        c: &mut Connection<N>,
        input: &[u8],
        piece: usize,
    ) -> Result<usize, ProtocolError> {
        let mut avail = 0usize;
        let mut pos = 0usize;
        let mut out = vec![0u8; nbd_proto::client::CLIENT_TRANSMIT_MAX];
        loop {
            let (used, ev) = c.handle_input(&input[pos..avail])?;
            assert!(used <= avail - pos, "consumed more than given");
            let stop = self.on_event(c, ev, &mut out);
            pos += used;
            match stop {
                Stop::Go => {}
                Stop::More if avail < input.len() => avail = (avail + piece).min(input.len()),
                Stop::More | Stop::End => return Ok(input.len() - pos),
            }
        }
    }

    fn on_event<const N: usize>(
        &mut self,
        c: &mut Connection<N>,
        ev: Event<'_>,
        out: &mut [u8],
    ) -> Stop {
        match ev {
            Event::NeedInput { needed } => {
                assert!(needed >= 1);
                return Stop::More;
            }
            Event::Transmit => {
                let n = c.poll_transmit(out).unwrap();
                assert!(n > 0, "Transmit with nothing to send");
                self.sent.extend_from_slice(&out[..n]);
            }
            Event::StartTls(t) => {
                self.log.push("starttls".into());
                c.handle_tls_established(t);
            }
            Event::TlsPending => panic!("TLS left pending"),
            Event::ListEntry { name, .. } => self.log.push(format!("list {name}")),
            Event::Info(i) => self.log.push(format!("info {i:?}")),
            Event::MetaContext { id, name } => self.log.push(format!("meta {id} {name}")),
            Event::Refused { option, .. } => self.log.push(format!("refused {option:?}")),
            Event::Ready(n) => self.log.push(format!("ready {:?} {}", n.mode, n.size)),
            Event::Idle => {
                self.log.push("idle".into());
                return Stop::End;
            }
            Event::ReadData(d) => {
                let buf = self
                    .reads
                    .entry(d.slot())
                    .or_insert_with(|| vec![0xee; self.read_len]);
                d.copy_into(buf).unwrap();
            }
            Event::BlockStatus(b) => {
                let mut e = [BlockStatusExtent { len: 0, flags: 0 }; 4];
                let slot = b.slot();
                let n = b.copy_into(&mut e);
                self.extents
                    .entry(slot)
                    .or_default()
                    .extend_from_slice(&e[..n]);
            }
            Event::Done(d) => self.log.push(format!("done {} {:?}", d.slot, d.result)),
            Event::Closed => {
                self.log.push("closed".into());
                return Stop::End;
            }
            _ => panic!("unknown event"),
        }
        Stop::Go
    }
}

pub enum Stop {
    Go,
    More,
    End,
}

/// Server bytes for: fixed newstyle, STRUCTURED_REPLY ack, (meta context
/// id 9 when `meta`), GO with size and flags, ack.
pub fn structured_server(size: u64, flags: u16, meta: bool) -> Vec<u8> {
    use crate::common::*;
    let mut v = cat(&[greeting(3), rep(8, ACK, b"")]);
    if meta {
        v.extend(meta_rep(10, 9, "base:allocation"));
        v.extend(rep(10, ACK, b""));
    }
    v.extend(info_export(7, size, flags));
    v.extend(rep(7, ACK, b""));
    v
}

/// A connection negotiated against `server`.
pub fn ready<const N: usize>(cfg: &ClientConfig<'_>, server: &[u8]) -> (Connection<N>, Recorder) {
    let mut c = Connection::<N>::new(cfg).unwrap();
    let mut r = Recorder::new(0);
    let left = r.run(&mut c, server, server.len()).unwrap();
    assert_eq!(left, 0, "negotiation left bytes: {:?}", r.log);
    assert!(c.negotiated().is_some(), "{:?}", r.log);
    (c, r)
}
