//! The memory, null and pattern read/write paths allocate nothing once a
//! page exists (house-style §3.10). Allocations are counted per thread by
//! allocation-counter, in this test's own binary; the counter is checked to
//! be live first, so a zero cannot come from an uninstalled allocator.

use nbd_backends::{Backend, Extent, MemoryBackend, NullBackend, PatternBackend, ZeroFlags};

/// Allocations made by `f` on this thread (allocation-counter installs the
/// counting global allocator).
fn count(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

#[test]
fn hot_paths_do_not_allocate() {
    assert!(count(|| drop(Box::new(1u8))) >= 1, "counter not installed");
    let m = MemoryBackend::new(1 << 30).unwrap();
    let n = NullBackend::new(1 << 30).unwrap();
    let p = PatternBackend::new(1 << 30).unwrap();
    let data = vec![3u8; 65_536];
    let mut buf = vec![0u8; 65_536];
    let mut ext = [Extent::default(); 16];
    // Warm up: the first write to each page allocates it.
    m.write_at(4093, &data, false).unwrap();
    let allocs = count(|| {
        for i in 0..100 {
            let off = 4093 + (i % 7);
            m.write_at(off, &data[..60_000], true).unwrap();
            m.read_at(off, &mut buf).unwrap();
            m.read_at(1 << 29, &mut buf).unwrap(); // absent pages
            m.extents(0, 1 << 30, &mut ext).unwrap();
            m.write_zeroes(1 << 20, 8192, ZeroFlags::MAY_TRIM).unwrap();
            m.flush().unwrap();
            n.write_at(off, &data, false).unwrap();
            n.read_at(off, &mut buf).unwrap();
            n.extents(0, 1 << 30, &mut ext).unwrap();
            p.read_at(off, &mut buf).unwrap();
        }
    });
    assert_eq!(allocs, 0);
}
