//! The memory backend called from several threads at once, as nbdd's event
//! loops call it (MULTI_CONN: every connection sees one coherent store).
//!
//! - page-aligned writes are never seen torn: a reader sees each 4 KiB page
//!   wholly old or wholly new, and never goes back to an older page;
//! - a write that completed before a barrier is seen by every thread after
//!   it, including frees (trims) and writes into pages that did not exist;
//! - a shrink that races writes past the new end leaves no page behind it.

use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};

use nbd_backends::{Backend, MemoryBackend, PAGE_SIZE, ZeroFlags};

const PAGE: u64 = PAGE_SIZE as u64;

/// A page whose every 8-byte word is `stamp`.
fn stamped(pages: usize, stamp: u64) -> Vec<u8> {
    stamp.to_ne_bytes().repeat(pages * PAGE_SIZE / 8)
}

/// The word a page is made of, or a panic naming the page if it is torn.
fn stamp_of(page: &[u8], what: &str) -> u64 {
    let (words, _) = page.as_chunks::<8>();
    let first = words[0];
    let torn = words.iter().position(|w| *w != first);
    assert!(torn.is_none(), "{what}: torn page (word {torn:?} differs)");
    u64::from_ne_bytes(first)
}

/// Counts a thread out when dropped, even by a panic, so that threads
/// waiting for it stop instead of hanging the test.
struct Finish<'a>(&'a AtomicU64);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Pages owned by one writer each, then pages all writers share.
const OWN: u64 = 32;
const WRITERS: u64 = 3;
const SHARED_FIRST: u64 = OWN * WRITERS;
const SHARED: u64 = 8;

#[test]
fn page_aligned_writes_are_never_seen_torn() {
    let m = MemoryBackend::new((SHARED_FIRST + SHARED) * PAGE).unwrap();
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (m, done) = (&m, &done);
            s.spawn(move || {
                let _finish = Finish(done);
                let mut x = 0x1234_5678 + w;
                for seq in 1..=20_000u64 {
                    let stamp = ((w + 1) << 40) | seq;
                    // 1-3 pages in its own range: stamps only grow there.
                    let n = 1 + xorshift(&mut x) % 3;
                    let page = w * OWN + xorshift(&mut x) % (OWN - n + 1);
                    m.write_at(page * PAGE, &stamped(n as usize, stamp), false)
                        .unwrap();
                    // And the shared pages: data, zeroes (which free the
                    // page) or a trim, racing the other writers.
                    let page = SHARED_FIRST + xorshift(&mut x) % SHARED;
                    match seq % 4 {
                        0 => m.write_at(page * PAGE, &[0; PAGE_SIZE], false).unwrap(),
                        1 => m.trim(page * PAGE, PAGE, false).unwrap(),
                        _ => m.write_at(page * PAGE, &stamped(1, stamp), false).unwrap(),
                    }
                }
            });
        }
        for r in 0..2u64 {
            let (m, done) = (&m, &done);
            s.spawn(move || {
                let mut last = vec![0u64; (SHARED_FIRST + SHARED) as usize];
                let mut x = 0x9876 + r;
                let mut buf = vec![0u8; 8 * PAGE_SIZE];
                let mut reads = 0;
                while done.load(Ordering::Acquire) < WRITERS || reads < 1_000 {
                    let n = 1 + xorshift(&mut x) % 8;
                    let first = xorshift(&mut x) % (SHARED_FIRST + SHARED - n + 1);
                    let buf = &mut buf[..(n * PAGE) as usize];
                    m.read_at(first * PAGE, buf).unwrap();
                    for (i, page) in buf.chunks(PAGE_SIZE).enumerate() {
                        let p = first + i as u64;
                        let stamp = stamp_of(page, &format!("page {p}"));
                        if p < SHARED_FIRST {
                            assert_eq!(stamp >> 40, [0, p / OWN + 1][usize::from(stamp != 0)]);
                            assert!(stamp >= last[p as usize], "page {p} went back in time");
                            last[p as usize] = stamp;
                        }
                    }
                    reads += 1;
                }
            });
        }
    });
}

#[test]
fn a_write_before_a_barrier_is_seen_by_every_thread_after_it() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 200;
    // Each round writes three fresh pages per thread, unaligned, so every
    // write allocates and straddles page boundaries.
    let slot = |round: u64, t: u64| (round * THREADS + t) * 3 * PAGE + 1000;
    let len = 2 * PAGE_SIZE;
    let m = MemoryBackend::new(slot(ROUNDS, 0)).unwrap();
    let barrier = Barrier::new(THREADS as usize);
    let pattern = |round: u64, t: u64| vec![(round * THREADS + t) as u8 | 1; len];
    // A thread that finds a fault notes it and keeps meeting the barrier
    // (a panic would leave the others waiting there for ever).
    let faults: Vec<Vec<String>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (m, barrier) = (&m, &barrier);
                s.spawn(move || {
                    let mut faults = Vec::new();
                    let mut buf = vec![0; len];
                    for round in 0..ROUNDS {
                        m.write_at(slot(round, t), &pattern(round, t), false)
                            .unwrap();
                        if round > 0 {
                            // Free what this thread wrote last round.
                            let last = slot(round - 1, t);
                            m.write_zeroes(last, len as u64, ZeroFlags::MAY_TRIM)
                                .unwrap();
                        }
                        barrier.wait();
                        for other in 0..THREADS {
                            m.read_at(slot(round, other), &mut buf).unwrap();
                            if buf != pattern(round, other) {
                                faults.push(format!("round {round}: write by {other} not seen"));
                            }
                            if round > 0 {
                                m.read_at(slot(round - 1, other), &mut buf).unwrap();
                                if buf.iter().any(|&b| b != 0) {
                                    faults.push(format!("round {round}: zero by {other} not seen"));
                                }
                            }
                        }
                        barrier.wait();
                    }
                    faults
                })
            })
            .collect();
        threads.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let faults = faults.concat();
    let first = &faults[..faults.len().min(4)];
    assert!(
        faults.is_empty(),
        "{} faults, first {first:?}",
        faults.len()
    );
    // Only the last round's data is left: two full pages and two partial
    // ones per thread, 3 pages each.
    assert_eq!(m.allocated_bytes(), THREADS * 3 * PAGE);
}

#[test]
fn a_shrink_racing_writes_past_the_new_end_leaves_no_page_there() {
    const KEEP: u64 = 16 * PAGE + 100;
    const FULL: u64 = 64 * PAGE;
    let m = MemoryBackend::new(FULL).unwrap();
    m.write_at(0, &[7; KEEP as usize], false).unwrap();
    let kept = m.allocated_bytes();
    let stop = AtomicU64::new(0);
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let (m, stop) = (&m, &stop);
            s.spawn(move || {
                let mut x = 77 + w;
                let data = vec![0x5a; 3 * PAGE_SIZE];
                while stop.load(Ordering::Acquire) == 0 {
                    // Past KEEP only; fails with ENOSPC while shrunk.
                    let off = KEEP + xorshift(&mut x) % (FULL - KEEP - data.len() as u64);
                    let _ = m.write_at(off, &data, false);
                }
            });
        }
        let _finish = Finish(&stop);
        for i in 0..100 {
            m.resize(KEEP).unwrap();
            // No write can reach past the end now, and none that started
            // before the shrink left a page there.
            assert_eq!(m.allocated_bytes(), kept, "shrink {i}");
            let mut last = [0u8; 100];
            m.read_at(KEEP - 100, &mut last).unwrap();
            assert_eq!(last, [7; 100], "shrink {i} lost data before the end");
            m.resize(FULL).unwrap();
            std::thread::yield_now();
        }
    });
}
