//! Property tests: `decode(encode(x)) == x` for every wire type; arbitrary
//! bytes never panic any decoder or state machine and never make them
//! consume more than given; a model of the transmission state machine.

use nbd_proto::fuzzing;
use nbd_proto::server::{Connection, Input, Negotiated, Pending, TransmissionConfig};
use nbd_proto::wire::handshake::{
    ExportNameReply, Greeting, OptionHeader, OptionReplyHeader, decode_client_flags,
    encode_client_flags,
};
use nbd_proto::wire::option::{
    Info, InfoRequest, MetaContextRequest, OptReply, encode_meta_context, encode_server_entry,
};
use nbd_proto::wire::reply::{
    self, BlockStatusExtent, ChunkHeader, ChunkPayload, ReplyTo, SimpleReply,
};
use nbd_proto::wire::request::{Request, RequestHeader};
use nbd_proto::*;
use proptest::prelude::*;

fn mode() -> impl Strategy<Value = HeaderMode> {
    prop_oneof![
        Just(HeaderMode::Simple),
        Just(HeaderMode::Structured),
        Just(HeaderMode::Extended)
    ]
}

fn name() -> impl Strategy<Value = String> {
    "[a-z:/_-]{0,40}"
}

proptest! {
    #[test]
    fn greeting_roundtrip(flags in any::<u16>(), size in any::<u64>(), tf in any::<u16>(), old in any::<bool>()) {
        let g = if old {
            Greeting::Oldstyle { size, flags: TransmissionFlags::from_bits_retain(tf) }
        } else {
            Greeting::Newstyle(HandshakeFlags::from_bits_retain(flags))
        };
        let mut out = [0u8; 200];
        let n = g.encode(&mut out).unwrap();
        prop_assert_eq!(Greeting::decode(&out[..n]), Ok(Some((g, n))));
    }

    #[test]
    fn client_flags_roundtrip(f in any::<u32>()) {
        let mut out = [0u8; 4];
        let f = ClientFlags::from_bits_retain(f);
        prop_assert_eq!(encode_client_flags(f, &mut out), Ok(4));
        prop_assert_eq!(decode_client_flags(&out), Some((f, 4)));
    }

    #[test]
    fn option_headers_roundtrip(o in any::<u32>(), r in any::<u32>(), len in any::<u32>()) {
        let mut out = [0u8; 20];
        let h = OptionHeader { option: OptionCode::from(o), len };
        prop_assert_eq!(h.encode(&mut out), Ok(16));
        prop_assert_eq!(OptionHeader::decode(&out), Ok(Some((h, 16))));
        let rh = OptionReplyHeader { option: OptionCode::from(o), reply: OptReplyType::from(r), len };
        prop_assert_eq!(rh.encode(&mut out), Ok(20));
        prop_assert_eq!(OptionReplyHeader::decode(&out), Ok(Some((rh, 20))));
    }

    #[test]
    fn export_name_reply_roundtrip(size in any::<u64>(), f in any::<u16>(), nz in any::<bool>()) {
        let r = ExportNameReply { size, flags: TransmissionFlags::from_bits_retain(f), no_zeroes: nz };
        let mut out = [0u8; 134];
        let n = r.encode(&mut out).unwrap();
        prop_assert_eq!(ExportNameReply::decode(&out[..n], nz), Some((r, n)));
    }

    #[test]
    fn info_roundtrip(kind in 0u8..5, size in any::<u64>(), f in any::<u16>(), s in name(), a in any::<u32>(), b in any::<u32>(), c in any::<u32>(), t in 4u16..) {
        let info = match kind {
            0 => Info::Export { size, flags: TransmissionFlags::from_bits_retain(f) },
            1 => Info::Name(&s),
            2 => Info::Description(&s),
            3 => Info::BlockSize { minimum: a, preferred: b, maximum: c },
            _ => Info::Unknown(t, s.as_bytes()),
        };
        let mut out = [0u8; 128];
        let n = info.encode(OptionCode::Go, &mut out).unwrap();
        let (h, hl) = OptionReplyHeader::decode(&out).unwrap().unwrap();
        prop_assert_eq!(h.len as usize, n - hl);
        prop_assert_eq!(OptReply::decode(h.reply, &out[hl..n]), Ok(OptReply::Info(info)));
    }

    #[test]
    fn info_and_meta_requests_roundtrip(n in name(), reqs in prop::collection::vec(any::<u16>(), 0..8), qs in prop::collection::vec(name(), 0..5)) {
        let mut out = [0u8; 1024];
        let types: Vec<InfoType> = reqs.iter().map(|&r| InfoType::from(r)).collect();
        let len = InfoRequest::encode(OptionCode::Info, &n, &types, &mut out).unwrap();
        let r = InfoRequest::decode(&out[16..len]).unwrap();
        prop_assert_eq!(r.name, n.as_str());
        prop_assert_eq!(r.requests().collect::<Vec<_>>(), types);
        let q: Vec<&str> = qs.iter().map(String::as_str).collect();
        let len = MetaContextRequest::encode(OptionCode::ListMetaContext, &n, &q, &mut out).unwrap();
        let m = MetaContextRequest::decode(&out[16..len]).unwrap();
        prop_assert_eq!(m.name, n.as_str());
        prop_assert_eq!(m.queries().collect::<Vec<_>>(), q);
    }

    #[test]
    fn server_entry_and_meta_reply_roundtrip(n in name(), d in name(), id in any::<u32>()) {
        let mut out = [0u8; 256];
        let len = encode_server_entry(&n, &d, &mut out).unwrap();
        prop_assert_eq!(OptReply::decode(OptReplyType::Server, &out[20..len]), Ok(OptReply::Server { name: &n, description: &d }));
        let len = encode_meta_context(OptionCode::SetMetaContext, id, &n, &mut out).unwrap();
        prop_assert_eq!(OptReply::decode(OptReplyType::MetaContext, &out[20..len]), Ok(OptReply::MetaContext { id, name: &n }));
    }

    #[test]
    fn request_roundtrip(m in mode(), f in any::<u16>(), c in any::<u16>(), cookie in any::<u64>(), off in any::<u64>(), len in 0u64..64) {
        let mut flags = CmdFlags::from_bits_retain(f);
        let command = Command::from(c);
        // The payload the header implies, in both modes.
        flags.remove(CmdFlags::PAYLOAD_LEN);
        if m == HeaderMode::Extended && f & 1 == 1 { flags |= CmdFlags::PAYLOAD_LEN; }
        let header = RequestHeader { flags, command, cookie: Cookie(cookie), offset: off, len };
        let data = vec![0x5a; header.payload_len(m) as usize];
        let r = Request { header, data: &data };
        let mut out = [0u8; 128];
        let n = r.encode(m, &mut out).unwrap();
        prop_assert_eq!(Request::decode(&out[..n], m), Ok(Some((r, n))));
        prop_assert_eq!(RequestHeader::decode(&out[..n], m), Ok(Some((header, m.request_header_len()))));
    }

    #[test]
    fn simple_reply_and_chunk_header_roundtrip(m in mode(), e in any::<u32>(), cookie in any::<u64>(), fl in any::<u16>(), ty in any::<u16>(), off in any::<u64>(), len in any::<u32>()) {
        let mut out = [0u8; 32];
        let r = SimpleReply { cookie: Cookie(cookie), error: e };
        prop_assert_eq!(r.encode(&mut out), Ok(16));
        prop_assert_eq!(SimpleReply::decode(&out), Ok(Some((r, 16))));
        let ext = m == HeaderMode::Extended;
        let h = ChunkHeader { flags: ReplyFlags::from_bits_retain(fl), ty: ChunkType::from(ty), cookie: Cookie(cookie), offset: if ext { off } else { 0 }, len: u64::from(len) };
        let n = h.encode(m, &mut out).unwrap();
        prop_assert_eq!(ChunkHeader::decode(&out[..n], m), Ok(Some((h, n))));
    }

    #[test]
    fn chunk_payloads_roundtrip(m in prop_oneof![Just(HeaderMode::Structured), Just(HeaderMode::Extended)], off in any::<u64>(), hl in 1u32.., err in any::<u32>(), msg in "[ -~]{0,50}", id in any::<u32>(), ext in prop::collection::vec((1u64..u64::from(u32::MAX), any::<u32>()), 1..6), data in prop::collection::vec(any::<u8>(), 1..64)) {
        let to = ReplyTo { cookie: Cookie(9), offset: off };
        let mut out = vec![0u8; 512];
        let n = reply::encode_offset_hole(m, to, off, hl, false, &mut out).unwrap();
        prop_assert_eq!(check_chunk(m, &out, n).1, ChunkPayload::OffsetHole { offset: off, len: hl });
        let code = ErrorCode::from(err);
        let n = reply::encode_error(m, to, code, &msg, &mut out).unwrap();
        prop_assert_eq!(check_chunk(m, &out, n).1, ChunkPayload::Error { error: code, message: &msg, offset: None });
        let n = reply::encode_error_offset(m, to, code, &msg, off, true, &mut out).unwrap();
        prop_assert_eq!(check_chunk(m, &out, n).1, ChunkPayload::Error { error: code, message: &msg, offset: Some(off) });
        let n = reply::encode_none(m, to, &mut out).unwrap();
        prop_assert_eq!(check_chunk(m, &out, n).1, ChunkPayload::None);
        let p = reply::encode_offset_data_header(m, to, off, data.len(), true, &mut out).unwrap();
        out[p..p + data.len()].copy_from_slice(&data);
        prop_assert_eq!(check_chunk(m, &out, p + data.len()).1, ChunkPayload::OffsetData { offset: off, data: &data });
        let extents: Vec<BlockStatusExtent> = ext.iter().map(|&(len, f)| BlockStatusExtent { len, flags: u64::from(f) }).collect();
        let n = reply::encode_block_status(m, to, id, &extents, true, &mut out).unwrap();
        match check_chunk(m, &out, n).1 {
            ChunkPayload::BlockStatus { id: got, extents: it } => {
                prop_assert_eq!(got, id);
                prop_assert_eq!(it.collect::<Vec<_>>(), extents);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::option_payload(&data);
        fuzzing::request_stream(&data);
        fuzzing::server_handshake(&data);
        fuzzing::client_replies(&data);
    }
}

fn check_chunk(m: HeaderMode, out: &[u8], n: usize) -> (ChunkHeader, ChunkPayload<'_>) {
    let (h, hlen) = ChunkHeader::decode(out, m).unwrap().unwrap();
    assert_eq!(h.len as usize, n - hlen);
    (h, ChunkPayload::decode(h.ty, &out[hlen..n]).unwrap())
}

/// Model-based test of the transmission phase of [`Connection`]: every accepted request gets
/// exactly one final reply, `in_flight` counts the unanswered ones, and
/// nothing is read after DISC.
#[derive(Debug, Clone)]
enum Op {
    Request {
        cmd: u16,
        flags: u16,
        off: u64,
        len: u32,
        bad: bool,
    },
    Answer(usize),
    Disc,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u16..10, any::<u16>(), 0u64..(1 << 21), 0u32..8192, any::<bool>())
            .prop_map(|(cmd, flags, off, len, bad)| Op::Request { cmd, flags: flags & 0x3f, off, len, bad }),
        3 => any::<usize>().prop_map(Op::Answer),
        1 => Just(Op::Disc),
    ]
}

proptest! {
    #[test]
    fn transmission_model(ops in prop::collection::vec(op(), 1..60), m in mode()) {
        let mut neg = Negotiated::oldstyle(1 << 20, TransmissionFlags::all() - TransmissionFlags::READ_ONLY);
        neg.mode = m;
        neg.meta_contexts = 1;
        let mut conn = Connection::in_transmission(neg, TransmissionConfig::default());
        let mut pending: Vec<Pending> = Vec::new();
        let mut disc = false;
        let mut out = [0u8; 256];
        for (i, o) in ops.into_iter().enumerate() {
            match o {
                Op::Request { cmd, flags, off, len, bad } => {
                    let command = if bad { Command::Unknown(99) } else { Command::from(cmd) };
                    let flags = CmdFlags::from_bits_retain(flags);
                    let h = RequestHeader { flags, command, cookie: Cookie(i as u64), offset: off, len: u64::from(len) };
                    let data = vec![1u8; h.payload_len(m) as usize];
                    let mut frame = vec![0u8; 32 + data.len()];
                    let n = Request { header: h, data: &data }.encode(m, &mut frame).unwrap();
                    let r = conn.handle_input(&frame[..n]);
                    if disc {
                        prop_assert!(r.is_err(), "request read after DISC");
                        continue;
                    }
                    let (mut used, next) = r.unwrap();
                    let is_disc = matches!(next, Input::Disconnect);
                    match next {
                        Input::Request { reply, .. } | Input::Reject { reply, .. } => {
                            prop_assert_eq!(reply.cookie(), Cookie(i as u64));
                            pending.push(reply);
                        }
                        Input::Disconnect => { disc = true; prop_assert_eq!(command, Command::Disc); }
                        other => prop_assert!(false, "whole frame gave {:?}", other),
                    }
                    // Drain any rejected payload (a DISC's payload is never
                    // read: nothing is, after DISC).
                    while used < n && !is_disc {
                        let (k, next) = conn.handle_input(&frame[used..n]).unwrap();
                        prop_assert!(matches!(next, Input::Continue) && k > 0);
                        used += k;
                    }
                }
                Op::Answer(k) if !pending.is_empty() => {
                    let p = pending.remove(k % pending.len());
                    conn.reply_error(p, ErrorCode::Io, "x", &mut out).unwrap();
                }
                Op::Answer(_) => {}
                Op::Disc => {
                    let mut frame = [0u8; 32];
                    let h = RequestHeader { flags: CmdFlags::empty(), command: Command::Disc, cookie: Cookie(0), offset: 0, len: 0 };
                    let n = h.encode(m, &mut frame).unwrap();
                    let r = conn.handle_input(&frame[..n]);
                    if disc { prop_assert!(r.is_err()); } else {
                        prop_assert!(matches!(r, Ok((k, Input::Disconnect)) if k == n));
                        disc = true;
                    }
                }
            }
            prop_assert_eq!(conn.in_flight(), pending.len());
            prop_assert_eq!(conn.wants_read(), !disc);
            prop_assert_eq!(conn.is_closed(), disc && pending.is_empty());
        }
    }
}
