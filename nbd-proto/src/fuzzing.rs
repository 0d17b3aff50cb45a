//! Fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/` and the
//! stable replay test `tests/fuzz_replay.rs`, so a crasher found by
//! libFuzzer is replayed through exactly the same code on stable.
//!
//! Each harness takes arbitrary bytes, drives one part of the crate the way
//! a driver would, and panics only when an invariant breaks (consumed more
//! than given, an in-flight count gone wrong, a round trip that differs).
//! Not part of the stable API: enabled by the `fuzzing` feature.
#![allow(clippy::panic, clippy::indexing_slicing, missing_docs)]

use crate::client::{ClientConfig, ClientHandshake, ReplyDecoder};
use crate::flags::{CmdFlags, TransmissionFlags};
use crate::server::{
    BlockSizes, Connection, ConnectionConfig, EXPORT_ANSWER_MAX, ExportInfo, HandshakeConfig,
    Input, Negotiated, Op, Pending, TlsMode, TransmissionConfig,
};
use crate::types::{ChunkType, Cookie, HeaderMode, InfoType, OptReplyType};
use crate::wire::handshake::{Greeting, OptionHeader, OptionReplyHeader};
use crate::wire::option::{Info, InfoRequest, MetaContextRequest, OptReply};
use crate::wire::reply::{BlockStatusExtent, ChunkHeader, ChunkPayload, SimpleReply};
use crate::wire::request::{Request, RequestHeader};

fn mode_of(b: u8) -> HeaderMode {
    match b % 3 {
        0 => HeaderMode::Simple,
        1 => HeaderMode::Structured,
        _ => HeaderMode::Extended,
    }
}

/// Split `data` into a control byte and the rest.
fn split(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((c, rest)) => (*c, rest),
        None => (0, &[]),
    }
}

/// Run a server connection over `input`, fed in pieces whose sizes come
/// from `ctl`, answering every question and request as a caller would and
/// checking the invariants: nothing consumed beyond what was given, every
/// request answered exactly once (the in-flight count agrees), no answer
/// refused for lack of room in a buffer of the documented size.
fn serve(conn: &mut Connection, input: &[u8], ctl: u8) {
    let mut out = [0u8; 16384];
    let mut pos = 0usize;
    let mut end = 0usize;
    let step = usize::from(ctl % 64) + 1;
    // Bit 6: WRITEs are streamed (begin_write_stream); bit 7: part of each
    // payload is "read elsewhere" (payload_received) rather than handed out.
    let (stream, direct) = (ctl & 0x40 != 0, ctl & 0x80 != 0);
    let align = if ctl & 1 != 0 { 512 } else { 1 };
    let mut streamed: Option<Pending> = None;
    loop {
        while conn.poll_transmit(&mut out).is_ok_and(|n| n > 0) {}
        let window = &input[pos..end];
        let before = conn.in_flight();
        if stream
            && streamed.is_none()
            && let Some((h, w)) = conn.begin_write_stream(window, 1, align)
        {
            assert!(h <= window.len(), "stream header beyond the input");
            assert_eq!(conn.payload_left(), w.len);
            assert!(w.offset % align == 0 && w.len % align == 0);
            assert_eq!(conn.in_flight(), before + 1);
            pos += h;
            streamed = Some(w.reply);
            continue;
        }
        if direct && streamed.is_some() && !window.is_empty() {
            let k = (window.len() / 2).max(1);
            let k = k.min(usize::try_from(conn.payload_left()).unwrap_or(usize::MAX));
            let left = conn.payload_left();
            assert_eq!(conn.payload_received(k), left - k as u64);
            pos += k;
        }
        if conn.payload_left() == 0
            && let Some(p) = streamed.take()
        {
            assert!(
                conn.reply_ok(p, &mut out[..crate::server::OK_REPLY_MAX])
                    .is_ok()
            );
            assert_eq!(conn.in_flight() + 1, before);
            continue;
        }
        let window = &input[pos..end];
        let Ok((n, next)) = conn.handle_input(window) else {
            return;
        };
        assert!(n <= window.len(), "consumed more than given");
        pos += n;
        match next {
            Input::WriteData(d) => {
                assert!(streamed.is_some(), "payload without a streamed WRITE");
                assert_eq!(d.len(), n, "payload bytes are the bytes consumed");
            }
            Input::Export(q) => {
                let ans = lookup(conn.asked_name().len());
                assert!(
                    conn.answer_export(q, ans, &mut out[..EXPORT_ANSWER_MAX])
                        .is_ok()
                );
            }
            Input::List(q) => {
                assert!(conn.list_entry(&q, "", "fuzz", &mut out).is_ok());
                assert!(conn.finish_list(q, &mut out).is_ok());
            }
            Input::MetaContexts(q) => {
                assert!(conn.answer_meta_contexts(q, Ok(0b11), &mut out).is_ok());
            }
            Input::StartTls(t) => conn.handle_tls_established(t),
            Input::Request { op, reply } => {
                assert_eq!(conn.in_flight(), before + 1);
                answer(conn, op, reply, &mut out);
                assert_eq!(conn.in_flight(), before);
            }
            Input::Reject {
                reply,
                error,
                message,
            } => {
                let room = crate::server::error_reply_len(message.len());
                assert!(
                    conn.reply_error(reply, error, message, &mut out[..room])
                        .is_ok()
                );
                assert_eq!(conn.in_flight(), before);
            }
            Input::Disconnect => assert!(!conn.wants_read()),
            Input::Closed => return,
            Input::Continue => {}
            Input::NeedInput | Input::Blocked => {
                if end == input.len() {
                    return;
                }
                end = (end + step).min(input.len());
            }
        }
    }
}

/// Answer one request: READs in one piece or as chunks, BLOCK_STATUS with
/// a run per context, everything else with success.
fn answer(conn: &mut Connection, op: Op<'_>, p: Pending, out: &mut [u8]) {
    let structured = conn
        .negotiated()
        .is_some_and(|n| n.mode != HeaderMode::Simple);
    let r = match op {
        Op::Read { len, .. } if structured && len % 2 == 1 => {
            assert!(conn.read_chunk(&p, p.offset(), 0, out).is_ok());
            assert!(conn.read_hole(&p, p.offset(), 1, out).is_ok());
            conn.reply_done(p, out)
        }
        Op::Read { .. } => conn.reply_read(p, &mut out[..crate::server::READ_PREFIX_MAX]),
        Op::BlockStatus { contexts, len, .. } => {
            let e = [
                BlockStatusExtent {
                    len: len / 2,
                    flags: 1,
                },
                BlockStatusExtent {
                    len: u64::MAX,
                    flags: 3,
                },
            ];
            let mut ids = (0..64u32).filter(|i| contexts & (1 << i) != 0);
            let last = ids.next_back().unwrap_or(0);
            for id in ids {
                assert!(conn.block_status_chunk(&p, id + 1, &e, out).is_ok());
            }
            conn.reply_block_status(p, last + 1, &e, out)
        }
        _ => conn.reply_ok(p, &mut out[..crate::server::OK_REPLY_MAX]),
    };
    assert!(r.is_ok());
}

/// Harness `request_stream`: the first byte picks the mode, flags and
/// limits; the rest is a client byte stream in transmission.
pub fn request_stream(data: &[u8]) {
    let (ctl, rest) = split(data);
    let (ctl2, rest) = split(rest);
    let mut neg = Negotiated::oldstyle(
        1 << 20,
        TransmissionFlags::from_bits_retain(u16::from(ctl2) << 2),
    );
    neg.mode = mode_of(ctl);
    neg.meta_contexts = u64::from(ctl >> 6);
    if ctl & 0x08 != 0 {
        neg.block_sizes = BlockSizes {
            minimum: 512,
            preferred: 4096,
            maximum: 65536,
        };
        neg.block_sizes_agreed = true;
    }
    let mut conn = Connection::in_transmission(neg, TransmissionConfig::default());
    serve(&mut conn, rest, ctl >> 2);
}

/// Harness `option_payload`: every decoder on the same bytes; what decodes
/// must re-encode to the same bytes.
pub fn option_payload(data: &[u8]) {
    let mut out = [0u8; 8192];
    if let Ok(r) = InfoRequest::decode(data) {
        let mut reqs = [InfoType::Export; 64];
        let mut n = 0;
        for (slot, t) in reqs.iter_mut().zip(r.requests()) {
            *slot = t;
            n += 1;
        }
        if r.requests().count() <= 64 {
            let len = InfoRequest::encode(crate::OptionCode::Go, r.name, &reqs[..n], &mut out);
            assert_eq!(len.ok().map(|l| &out[16..l]), Some(data));
        }
    }
    if let Ok(m) = MetaContextRequest::decode(data) {
        assert_eq!(m.queries().count() as u64, u64::from(m.query_count()));
    }
    if let Ok(i) = Info::decode(data) {
        let n = i.encode(crate::OptionCode::Info, &mut out).ok();
        assert_eq!(n.map(|n| &out[22..n]), data.get(2..));
    }
    let (ctl, rest) = split(data);
    let reply = OptReplyType::from(u32::from(ctl) | (u32::from(ctl & 0x80) << 24));
    let _ = OptReply::decode(reply, rest);
    let ty = ChunkType::from(u16::from(ctl) | (u16::from(ctl & 0x80) << 8));
    if let Ok(ChunkPayload::BlockStatus { extents, .. }) = ChunkPayload::decode(ty, rest) {
        assert!(extents.count() <= rest.len() / 8);
    }
    let _ = Greeting::decode(data);
    let _ = OptionHeader::decode(data);
    let _ = OptionReplyHeader::decode(data);
    let _ = SimpleReply::decode(data);
    for mode in [HeaderMode::Structured, HeaderMode::Extended] {
        if let Ok(Some((h, n))) = ChunkHeader::decode(data, mode) {
            assert!(n <= data.len());
            assert_eq!(h.encode(mode, &mut out), Ok(n));
            assert_eq!(&out[..n], &data[..n]);
        }
    }
    for mode in [HeaderMode::Simple, HeaderMode::Extended] {
        if let Ok(Some((r, n))) = Request::decode(data, mode) {
            assert!(n <= data.len());
            assert_eq!(r.encode(mode, &mut out), Ok(n));
            assert_eq!(&out[..n], &data[..n]);
        }
        let _ = RequestHeader::decode(data, mode);
    }
}

fn lookup(name_len: usize) -> Result<ExportInfo<'static>, OptReplyType> {
    let info = ExportInfo {
        size: 1 << 20,
        flags: TransmissionFlags::SEND_FLUSH
            | TransmissionFlags::SEND_FUA
            | TransmissionFlags::SEND_TRIM,
        name: "",
        description: "fuzz",
        block_sizes: None,
        meta_contexts: 0b01,
    };
    match name_len {
        0 => Ok(info),
        1 => Ok(ExportInfo {
            name: "a",
            block_sizes: Some(BlockSizes {
                minimum: 512,
                preferred: 4096,
                maximum: 65536,
            }),
            meta_contexts: 0b11,
            ..info
        }),
        _ => Err(OptReplyType::ErrUnknown),
    }
}

/// Harness `server_handshake`: the first byte picks the configuration; the
/// rest is what a client sends, from the client flags on. Continues into
/// transmission when negotiation succeeds.
pub fn server_handshake(data: &[u8]) {
    let (ctl, input) = split(data);
    let handshake = HandshakeConfig {
        tls: match ctl % 3 {
            0 => TlsMode::Off,
            1 => TlsMode::On,
            _ => TlsMode::Require,
        },
        fixed_newstyle: ctl & 0x20 == 0,
        no_zeroes: ctl & 0x04 != 0,
        structured_replies: ctl & 0x08 != 0,
        extended_headers: ctl & 0x10 != 0,
        allow_meta_contexts: ctl & 0x40 == 0,
        max_option_len: 4096,
        max_drain_len: 1 << 20,
        max_options: 64,
        meta_contexts: &["base:allocation", "qemu:allocation-depth"],
    };
    let cfg = ConnectionConfig {
        handshake,
        oldstyle: ctl & 0x20 != 0 && ctl & 0x40 != 0,
        ..ConnectionConfig::default()
    };
    let mut conn = Connection::new(&cfg);
    // Whole input at once when bit 7 is set, else in small pieces.
    let step = if ctl & 0x80 != 0 { 63 } else { ctl >> 3 };
    serve(&mut conn, input, step);
}

/// Harness `client_replies`: the first byte picks the mode; the rest is
/// fed to the client handshake as server bytes, and separately to the
/// reply decoder as a transmission-phase stream.
pub fn client_replies(data: &[u8]) {
    let (ctl, input) = split(data);
    let cfg = ClientConfig {
        export: "e",
        tls: ctl & 0x04 != 0,
        list: ctl & 0x08 != 0,
        structured_replies: ctl & 0x10 != 0,
        extended_headers: ctl & 0x20 != 0,
        base_allocation: ctl & 0x40 != 0,
        no_zeroes: ctl & 0x80 != 0,
        max_reply_len: 8192,
    };
    let mut c = ClientHandshake::new(cfg);
    let mut out = [0u8; crate::client::CLIENT_TRANSMIT_MAX];
    let mut pos = 0usize;
    loop {
        assert!(c.poll_transmit(&mut out).is_ok());
        let window = &input[pos..];
        let Ok((n, ev)) = c.handle_input(window) else {
            break;
        };
        assert!(n <= window.len());
        pos += n;
        if matches!(ev, Some(crate::client::ClientEvent::StartTls)) {
            c.handle_tls_established();
        }
        if n == 0 && ev.is_none() && !c.wants_write() {
            break;
        }
    }
    let dec = ReplyDecoder::new(mode_of(ctl), 1 << 16);
    let read_len = |c: Cookie| c.0.is_multiple_of(3).then_some((c.0 >> 8) % 4096);
    let mut pos = 0usize;
    while let Ok(Some((r, n))) = dec.decode(&input[pos..], read_len) {
        assert!(n > 0 && n <= input.len() - pos);
        assert_eq!(dec.needed(&input[pos..], read_len), n);
        let _ = (r.cookie(), r.is_final(), r.error());
        pos += n;
    }
    let _ = CmdFlags::all();
    client_connection(cfg, input);
}

/// The same bytes through `client::Connection`: negotiation, then (with
/// a few requests in flight) transmission replies. Invariants: never
/// consumes more than given, the in-flight count never grows from input,
/// READ data always fits its READ.
fn client_connection(cfg: ClientConfig<'_>, input: &[u8]) {
    use crate::client::{Cmd, Connection, Event};
    let Ok(mut c) = Connection::<4>::new(&cfg) else {
        return;
    };
    let mut out = [0u8; crate::client::CLIENT_TRANSMIT_MAX];
    let mut read = [0u8; 4096];
    let mut extents = [BlockStatusExtent { len: 0, flags: 0 }; 4];
    let mut pos = 0usize;
    for _ in 0..100_000 {
        let window = input.get(pos..).unwrap_or_default();
        let before = c.in_flight();
        let Ok((n, ev)) = c.handle_input(window) else {
            break;
        };
        assert!(n <= window.len());
        assert!(c.in_flight() <= before);
        pos += n;
        match ev {
            Event::Transmit => assert!(c.poll_transmit(&mut out).is_ok_and(|w| w > 0)),
            Event::StartTls(t) => c.handle_tls_established(t),
            Event::Ready(_) => {
                for cmd in [Cmd::read(0, 4096), Cmd::block_status(0, 4096), Cmd::flush()] {
                    let _ = c.encode_request(&cmd, &mut out);
                }
            }
            Event::ReadData(d) => assert!(d.copy_into(&mut read).is_ok()),
            Event::BlockStatus(b) => assert!(b.copy_into(&mut extents) <= extents.len()),
            Event::NeedInput { .. } | Event::Idle | Event::Closed | Event::TlsPending => break,
            _ => {}
        }
    }
}
