//! Memory backend throughput.
//!
//! - `memory/{4k,64k,1024k}`: one thread, reads and writes of pages that
//!   already exist (the steady state a server sees), at a large stride over
//!   64 MiB (so mostly from DRAM), plus a 4 KiB write of data that is zero
//!   but for its last byte (the worst case of the zero scan).
//! - `memory-mt/{read,write}-{distinct,shared}/N`: N threads (1, 2, 4) at
//!   once, each doing random page-aligned 4 KiB requests, either on 16 pages
//!   of its own (`distinct`: what event loops serving different clients do;
//!   no two threads touch a page or a cache line in common) or all on the
//!   same 16 pages (`shared`: a hot block every client touches). The sets
//!   fit in cache, so the numbers show synchronisation, not DRAM bandwidth,
//!   which two threads of this 2-core VM saturate at 4 KiB random copies.
//!   `memory-mt/memcpy/N` is the ceiling: the same copies from private
//!   buffers, with no backend. Throughput is the sum over the threads: a
//!   store that scales grows with N up to the cores the machine has.
//!
//! What it measures: docs/BENCH.md ("Memory backend").

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nbd_backends::{Backend, MemoryBackend};

const SIZE: u64 = 64 << 20;
const REQ: usize = 4096;
/// Pages each thread hits: its own in `distinct`, everyone's in `shared`.
const HOT_PAGES: u64 = 16;
/// Distance between threads' sets in `distinct`: four leaves of the table.
const APART: u64 = 1 << 20;

fn filled() -> MemoryBackend {
    let m = MemoryBackend::new(SIZE).unwrap();
    m.write_at(0, &vec![1u8; SIZE as usize], false).unwrap();
    m
}

fn single(c: &mut Criterion) {
    let m = filled();
    for len in [4096usize, 65_536, 1 << 20] {
        let mut g = c.benchmark_group(format!("memory/{}k", len / 1024));
        g.measurement_time(Duration::from_secs(3));
        g.warm_up_time(Duration::from_secs(1));
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
        if len == 4096 {
            let mut mostly_zero = vec![0u8; len];
            mostly_zero[len - 1] = 1;
            g.bench_function("write-mostly-zero", |b| {
                b.iter(|| {
                    off = (off + 1_048_573) % span;
                    m.write_at(black_box(off & !4095), &mostly_zero, false)
                        .unwrap();
                })
            });
        }
        g.finish();
    }
}

/// A step of xorshift64: cheap, and different per thread.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
    /// No backend: copy from a private buffer (the machine's ceiling).
    Copy,
}

#[derive(Clone, Copy)]
enum Where {
    Distinct,
    Shared,
}

/// Page-aligned offset of thread `t`'s next request.
fn offset(w: Where, t: usize, x: &mut u64) -> u64 {
    match w {
        Where::Distinct => t as u64 * APART + (next(x) % HOT_PAGES) * REQ as u64,
        Where::Shared => (next(x) % HOT_PAGES) * REQ as u64,
    }
}

/// Wall time for `threads` threads to do `iters` requests each, started
/// together at a barrier: from the first start to the last finish, so
/// threads that could not run at the same time add up.
fn run(m: &MemoryBackend, op: Op, w: Where, threads: usize, iters: u64) -> Duration {
    let start = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = &start;
                s.spawn(move || {
                    let mut buf = vec![t as u8 + 2; REQ];
                    let private = vec![t as u8 + 3; APART as usize];
                    let mut x = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1);
                    start.wait();
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        let off = offset(w, t, &mut x);
                        match op {
                            Op::Read => m.read_at(black_box(off), &mut buf).unwrap(),
                            Op::Write => m.write_at(black_box(off), &buf, false).unwrap(),
                            Op::Copy => {
                                let at = (off % APART) as usize;
                                buf.copy_from_slice(&private[at..at + REQ]);
                                black_box(&mut buf);
                            }
                        }
                    }
                    (t0, Instant::now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = spans.iter().map(|s| s.0).min().unwrap();
    let last = spans.iter().map(|s| s.1).max().unwrap();
    last - first
}

fn multi(c: &mut Criterion) {
    let m = filled();
    let groups = [
        (Op::Copy, Where::Distinct, "memcpy"),
        (Op::Read, Where::Distinct, "read-distinct"),
        (Op::Read, Where::Shared, "read-shared"),
        (Op::Write, Where::Distinct, "write-distinct"),
        (Op::Write, Where::Shared, "write-shared"),
    ];
    for (op, w, name) in groups {
        let mut g = c.benchmark_group(format!("memory-mt/{name}"));
        g.measurement_time(Duration::from_secs(3));
        g.warm_up_time(Duration::from_secs(1));
        g.sample_size(20);
        for threads in [1usize, 2, 4] {
            g.throughput(Throughput::Bytes((REQ * threads) as u64));
            g.bench_function(threads.to_string(), |b| {
                b.iter_custom(|iters| run(&m, op, w, threads, iters))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, single, multi);
criterion_main!(benches);
