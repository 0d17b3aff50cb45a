//! About a second of random operations from four threads on one memory
//! export, each thread checked against its own `Vec<u8>` model.
//!
//! Each thread owns a byte range, and the ranges are deliberately not page
//! aligned, so neighbouring threads write different bytes of the same
//! pages at once: no update may be lost, and a page may be freed only when
//! both threads' bytes in it are zero. At the end the whole export must
//! equal the models side by side, and exactly the pages holding non-zero
//! bytes may be allocated.

use nbd_backends::{Backend, Extent, ExtentFlags, MemoryBackend, PAGE_SIZE, ZeroFlags};

const THREADS: usize = 4;
/// Bytes per thread: 24 pages and a bit, so boundaries fall mid-page.
const SPAN: usize = 24 * PAGE_SIZE + 1234;
const OPS: usize = 5_000;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A random sub-range of `0..SPAN`, up to three pages long.
fn range(x: &mut u64) -> (usize, usize) {
    let off = xorshift(x) as usize % SPAN;
    let len = (xorshift(x) as usize % (3 * PAGE_SIZE)).min(SPAN - off);
    (off, len)
}

/// One thread's run on `[base, base + SPAN)`; returns its model.
fn run(m: &MemoryBackend, t: usize) -> Vec<u8> {
    let base = (t * SPAN) as u64;
    let mut model = vec![0u8; SPAN];
    let mut x = 0xdead_beef_u64 + t as u64;
    let mut buf = vec![0u8; 3 * PAGE_SIZE];
    let mut ext = [Extent::default(); 32];
    for i in 0..OPS {
        let (off, len) = range(&mut x);
        let at = base + off as u64;
        let what = xorshift(&mut x) % 8;
        match what {
            0..=2 => {
                // Zero data one time in four, to free pages by writing.
                let seed = (xorshift(&mut x) % 4) as u8 * (t as u8 + 1);
                let data: Vec<u8> = (0..len).map(|j| seed.wrapping_mul(j as u8 | 1)).collect();
                m.write_at(at, &data, false).unwrap();
                model[off..off + len].copy_from_slice(&data);
            }
            3 => {
                m.trim(at, len as u64, false).unwrap();
                model[off..off + len].fill(0);
            }
            4 => {
                m.write_zeroes(at, len as u64, ZeroFlags::MAY_TRIM).unwrap();
                model[off..off + len].fill(0);
            }
            5 => {
                let n = m.extents(at, len as u64, &mut ext).unwrap();
                let mut pos = off;
                for e in &ext[..n] {
                    let end = (pos + e.len as usize).min(SPAN);
                    if e.flags.contains(ExtentFlags::ZERO) {
                        let zero = model[pos..end].iter().all(|&b| b == 0);
                        assert!(zero, "thread {t} op {i}: ZERO extent over data at {pos}");
                    }
                    pos += e.len as usize;
                }
            }
            _ => {
                m.read_at(at, &mut buf[..len]).unwrap();
                assert!(
                    buf[..len] == model[off..off + len],
                    "thread {t} op {i}: read at {off}"
                );
            }
        }
    }
    model
}

#[test]
fn four_threads_of_random_ops_match_their_models() {
    let m = MemoryBackend::new((THREADS * SPAN) as u64).unwrap();
    let models: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let m = &m;
                s.spawn(move || run(m, t))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all = models.concat();
    let mut back = vec![0xa5; all.len()];
    m.read_at(0, &mut back).unwrap();
    assert!(back == all, "the export differs from the models");
    let with_data = all.chunks(PAGE_SIZE).filter(|p| p.iter().any(|&b| b != 0));
    assert_eq!(
        m.allocated_bytes(),
        with_data.count() as u64 * PAGE_SIZE as u64
    );
}
