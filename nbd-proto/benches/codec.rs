//! Codec benchmarks: request decode + validate, reply encode (simple,
//! structured error chunk, read prefix) and a whole handshake. Results are
//! recorded in the crate README.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nbd_proto::server::{
    ExportInfo, Handshake, HandshakeConfig, HandshakeEvent, Negotiated, Transmission,
    TransmissionConfig,
};
use nbd_proto::wire::option::{InfoRequest, encode_option};
use nbd_proto::wire::reply::ReplyTo;
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

fn transmission(mode: HeaderMode) -> Transmission {
    let mut neg = Negotiated::oldstyle(1 << 30, TransmissionFlags::SEND_FLUSH);
    neg.mode = mode;
    Transmission::new(neg, TransmissionConfig::default())
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
                while let Ok((n, Some(inc))) = tx.handle_request(&stream[pos..]) {
                    black_box(inc);
                    pos += n;
                }
                pos
            });
        });
    }
    g.finish();
}

fn reply_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("reply_encode");
    let mut out = [0u8; 128];
    let to = ReplyTo {
        cookie: Cookie(7),
        offset: 4096,
    };
    let mut simple = transmission(HeaderMode::Simple);
    g.bench_function("simple_ok", |b| {
        b.iter(|| simple.reply_ok(black_box(to), &mut out).unwrap())
    });
    let mut st = transmission(HeaderMode::Structured);
    g.bench_function("structured_error_chunk", |b| {
        b.iter(|| {
            st.reply_error(
                black_box(to),
                ErrorCode::Inval,
                "invalid argument",
                &mut out,
            )
            .unwrap()
        })
    });
    g.bench_function("structured_read_prefix", |b| {
        b.iter(|| {
            st.encode_read_prefix(black_box(to), 4096, 4096, true, &mut out)
                .unwrap()
        })
    });
    let mut ext = transmission(HeaderMode::Extended);
    g.bench_function("extended_read_prefix", |b| {
        b.iter(|| {
            ext.encode_read_prefix(black_box(to), 4096, 4096, true, &mut out)
                .unwrap()
        })
    });
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
    };
    let mut out = vec![0u8; 9000];
    c.bench_function("handshake_structured_go", |b| {
        b.iter(|| {
            let mut hs = Handshake::new(HandshakeConfig::default());
            let mut pos = 0;
            while hs.negotiated().is_none() {
                while hs.poll_transmit(&mut out) > 0 {}
                let (n, ev) = hs.handle_input(&client[pos..]).unwrap();
                pos += n;
                if let Some(HandshakeEvent::Export(q)) = ev {
                    hs.answer_export(&q, Ok(info), &mut out).unwrap();
                }
            }
            hs.negotiated()
        });
    });
}

criterion_group!(benches, decode_validate, reply_encode, handshake);
criterion_main!(benches);
