//! A huge memory export costs only what is written: 100 random 64 KiB
//! writes into 1 TiB must allocate well under 100 MiB. Its own test binary,
//! so that the RSS measurement is not disturbed by other tests.

use nbd_backends::{Backend, MemoryBackend};

/// Resident set size in bytes, from /proc/self/statm (field 2, in pages).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn one_tib_export_written_at_100_places_stays_small() {
    const TIB: u64 = 1 << 40;
    let before = rss();
    let m = MemoryBackend::new(TIB).unwrap();
    let data = vec![0x5au8; 65_536];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut offsets = Vec::new();
    for _ in 0..100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = x % (TIB - data.len() as u64);
        m.write_at(off, &data, false).unwrap();
        offsets.push(off);
    }
    let allocated = m.allocated_bytes();
    // 100 unaligned 64 KiB writes touch at most 17 pages each.
    assert!(allocated <= 100 * 17 * 4096, "{allocated} bytes of pages");
    assert!(allocated >= 100 * 16 * 4096);
    let grown = rss().saturating_sub(before);
    assert!(grown < 100 << 20, "RSS grew by {grown} bytes");
    let mut back = vec![0; 65_536];
    for off in offsets {
        m.read_at(off, &mut back).unwrap();
        assert_eq!(back, data);
    }
    // A 1 PiB and a 2^63-1 byte export cost nothing up front either.
    let big = MemoryBackend::new(i64::MAX as u64).unwrap();
    assert_eq!(big.allocated_bytes(), 0);
    assert!(rss().saturating_sub(before) < 100 << 20);
}
