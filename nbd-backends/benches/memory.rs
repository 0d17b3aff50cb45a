//! Memory backend throughput: 4 KiB and 64 KiB reads and writes on pages
//! that already exist (the steady state a server sees).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nbd_backends::{Backend, MemoryBackend};

const SIZE: u64 = 64 << 20;

fn bench(c: &mut Criterion) {
    let m = MemoryBackend::new(SIZE).unwrap();
    m.write_at(0, &vec![1u8; SIZE as usize], false).unwrap();
    for len in [4096usize, 65_536] {
        let mut g = c.benchmark_group(format!("memory/{}k", len / 1024));
        g.throughput(Throughput::Bytes(len as u64));
        let mut buf = vec![7u8; len];
        let span = SIZE - len as u64;
        let mut off = 0u64;
        g.bench_function("write", |b| {
            b.iter(|| {
                off = (off + 1_048_573) % span;
                m.write_at(black_box(off), &buf, false).unwrap();
            })
        });
        g.bench_function("read", |b| {
            b.iter(|| {
                off = (off + 1_048_573) % span;
                m.read_at(black_box(off), &mut buf).unwrap();
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
