//! Codec benchmarks: request decode + validate, reply encode (simple,
//! structured error chunk, read prefix) and a whole handshake. Results are
//! recorded in the crate README.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nbd_proto::server::{
    Connection, ConnectionConfig, ExportInfo, Input, Negotiated, Pending, TransmissionConfig,
};
use nbd_proto::wire::option::{InfoRequest, encode_option};
use nbd_proto::wire::request::{Request, RequestHeader};
use nbd_proto::{CmdFlags, Command, Cookie, ErrorCode, HeaderMode, OptionCode, TransmissionFlags};

const BATCH: u64 = 1000;

fn requests(mode: HeaderMode) -> Vec<u8> {
    let mut v = Vec::new();
    let mut frame = [0u8; 32];
    for i in 0..BATCH {
        let command = if i % 2 == 0 {
            Command::Read
        } else {
            Command::Flush
        };
        let h = RequestHeader {
            flags: CmdFlags::empty(),
            command,
            cookie: Cookie(i),
            offset: (i * 4096) % (1 << 29),
            len: if command == Command::Read { 4096 } else { 0 },
        };
        let n = Request {
            header: h,
            data: &[],
        }
        .encode(mode, &mut frame)
        .unwrap();
        v.extend_from_slice(&frame[..n]);
    }
    v
}

fn transmission(mode: HeaderMode) -> Connection {
    let mut neg = Negotiated::oldstyle(1 << 30, TransmissionFlags::SEND_FLUSH);
    neg.mode = mode;
    Connection::in_transmission(neg, TransmissionConfig::default())
}

fn decode_validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_decode_validate");
    g.throughput(Throughput::Elements(BATCH));
    for mode in [HeaderMode::Simple, HeaderMode::Extended] {
        let stream = requests(mode);
        g.bench_function(format!("{mode:?}"), |b| {
            b.iter(|| {
                let mut tx = transmission(mode);
                let mut pos = 0;
                while let Ok((n, next @ Input::Request { .. })) = tx.handle_input(&stream[pos..]) {
                    let _ = black_box(next);
                    pos += n;
                }
                pos
            });
        });
    }
    g.finish();
}

/// One READ and one FLUSH frame in `mode`.
fn one(mode: HeaderMode, command: Command) -> Vec<u8> {
    let mut frame = [0u8; 32];
    let header = RequestHeader {
        flags: CmdFlags::empty(),
        command,
        cookie: Cookie(7),
        offset: 4096,
        len: if command == Command::Read { 4096 } else { 0 },
    };
    let n = Request { header, data: &[] }
        .encode(mode, &mut frame)
        .unwrap();
    frame[..n].to_vec()
}

/// Decode one request and encode its reply with `reply` (a reply needs the
/// token only a decoded request gives, so the two are measured together;
/// subtract `request_decode_validate` per element for the reply alone).
fn bench_reply(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mode: HeaderMode,
    command: Command,
    reply: impl Fn(&mut Connection, Pending, &mut [u8]) -> usize,
) {
    let frame = one(mode, command);
    let mut conn = transmission(mode);
    let mut out = [0u8; 128];
    g.bench_function(name, |b| {
        b.iter(|| match conn.handle_input(black_box(&frame)) {
            Ok((_, Input::Request { reply: p, .. })) => reply(&mut conn, p, &mut out),
            _ => unreachable!(),
        })
    });
}

fn reply_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_and_reply");
    bench_reply(
        &mut g,
        "simple_ok",
        HeaderMode::Simple,
        Command::Flush,
        |c, p, o| c.reply_ok(p, o).unwrap(),
    );
    bench_reply(
        &mut g,
        "structured_error_chunk",
        HeaderMode::Structured,
        Command::Flush,
        |c, p, o| {
            c.reply_error(p, ErrorCode::Inval, "invalid argument", o)
                .unwrap()
        },
    );
    bench_reply(
        &mut g,
        "structured_read_prefix",
        HeaderMode::Structured,
        Command::Read,
        |c, p, o| c.reply_read(p, o).unwrap(),
    );
    bench_reply(
        &mut g,
        "extended_read_prefix",
        HeaderMode::Extended,
        Command::Read,
        |c, p, o| c.reply_read(p, o).unwrap(),
    );
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let mut client = vec![0u8; 256];
    client[..4].copy_from_slice(&3u32.to_be_bytes());
    let mut p = 4;
    p += encode_option(OptionCode::StructuredReply, &[], &mut client[p..]).unwrap();
    p += InfoRequest::encode(OptionCode::Go, "", &[], &mut client[p..]).unwrap();
    client.truncate(p);
    let info = ExportInfo {
        size: 1 << 30,
        flags: TransmissionFlags::SEND_FLUSH,
        name: "d",
        description: "",
        block_sizes: None,
        meta_contexts: 1,
    };
    let mut out = vec![0u8; 9000];
    c.bench_function("handshake_structured_go", |b| {
        b.iter(|| {
            let mut conn = Connection::new(&ConnectionConfig::default());
            let mut pos = 0;
            while conn.negotiated().is_none() {
                while conn.poll_transmit(&mut out).unwrap() > 0 {}
                let (n, next) = conn.handle_input(&client[pos..]).unwrap();
                pos += n;
                if let Input::Export(q) = next {
                    conn.answer_export(q, Ok(info), &mut out).unwrap();
                }
            }
            conn.negotiated().copied()
        });
    });
}

criterion_group!(benches, decode_validate, reply_encode, handshake);
criterion_main!(benches);
