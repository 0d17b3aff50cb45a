//! The behavioural suite shared by `conformance.rs` (backends and the
//! original layers) and `conformance_filters.rs` (filter stacks): each
//! test target does `mod suite;` and invokes [`conformance!`].

// Each target uses a different subset.
#![allow(dead_code, unused_macros)]

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use nbd_backends::{Backend, Caps, Extent, ExtentFlags, ZeroFlags};

/// What a backend under test promises.
pub struct Fixture {
    pub backend: Arc<dyn Backend>,
    /// Writes are visible to later reads (false for null).
    pub stores: bool,
    /// A trimmed range reads back as zeroes.
    pub trim_zeroes: bool,
    /// `Some(true)`: FAST write_zeroes succeeds; `Some(false)`: it fails
    /// with `Unsupported`.
    pub fast_zero: bool,
    /// Expected content of a never-written byte.
    pub initial: fn(u64) -> u8,
    pub _file: Option<TempFile>,
}

/// A file under a directory, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(dir: &str, size: u64) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "{dir}/nbd-backends-test-{}-{n}",
            std::process::id()
        ));
        let f = std::fs::File::create(&path).expect("create temp file");
        f.set_len(size).expect("set_len");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Not a multiple of the 4 KiB page: the partial last page is exercised.
pub const SIZE: u64 = (1 << 20) + 1000;
/// For O_DIRECT, which needs a block-multiple size.
pub const ALIGNED_SIZE: u64 = 1 << 20;

pub fn zero(_: u64) -> u8 {
    0
}

pub fn writable(f: &Fixture) -> bool {
    !f.backend.caps().contains(Caps::READ_ONLY)
}

pub fn read_all(b: &dyn Backend) -> Vec<u8> {
    let mut v = vec![0xa5; b.size() as usize];
    b.read_at(0, &mut v).unwrap();
    v
}

/// Expected full content: `initial` where nothing was stored.
pub fn model(f: &Fixture) -> Vec<u8> {
    (0..f.backend.size()).map(f.initial).collect()
}

/// Writes at unaligned offsets spanning page boundaries, then reads them
/// back at other unaligned offsets (checklist 63).
pub fn read_after_write(f: &Fixture) {
    let b = &*f.backend;
    let size = b.size();
    let mut want = model(f);
    assert_eq!(read_all(b), want, "initial content");
    if !writable(f) {
        let e = b.write_at(0, &[1], false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "checklist 70");
        assert_eq!(read_all(b), want, "a refused write changes nothing");
        return;
    }
    let writes: &[(u64, usize)] = &[
        (0, 1),
        (1, 10),
        (4095, 2),
        (4096 * 3 - 7, 8193),
        (20_000, 65_536 + 3),
        (size - 100, 100),
        (size - 1, 1),
    ];
    for (i, &(off, len)) in writes.iter().enumerate() {
        let data: Vec<u8> = (0..len)
            .map(|j| (j as u8).wrapping_mul(7) ^ (i as u8 + 1))
            .collect();
        b.write_at(off, &data, i % 2 == 0).unwrap();
        if f.stores {
            want[off as usize..off as usize + len].copy_from_slice(&data);
        }
    }
    assert_eq!(read_all(b), want);
    for &(off, len) in &[
        (3u64, 5000usize),
        (4093, 9),
        (size - 4097, 4097),
        (12_287, 1),
    ] {
        let mut got = vec![0x5a; len];
        b.read_at(off, &mut got).unwrap();
        assert_eq!(
            got,
            want[off as usize..off as usize + len],
            "read at {off}+{len}"
        );
    }
    b.flush().unwrap();
}

/// Fill the whole export with non-zero bytes, returning the model.
pub fn fill(f: &Fixture) -> Vec<u8> {
    let b = &*f.backend;
    let data: Vec<u8> = (0..b.size()).map(|i| (i % 251) as u8 + 1).collect();
    b.write_at(0, &data, false).unwrap();
    if f.stores { data } else { model(f) }
}

pub fn zeroed(mut want: Vec<u8>, off: u64, len: u64) -> Vec<u8> {
    want[off as usize..(off + len) as usize].fill(0);
    want
}

pub fn trim(f: &Fixture) {
    let b = &*f.backend;
    if !writable(f) {
        assert!(b.trim(0, 4096, false).is_err(), "checklist 71");
        return;
    }
    let want = fill(f);
    let (off, len) = (1000, 3 * 4096 + 17);
    b.trim(off, len, true).unwrap();
    let got = read_all(b);
    // Outside the range nothing may change.
    assert_eq!(got[..off as usize], want[..off as usize]);
    assert_eq!(got[(off + len) as usize..], want[(off + len) as usize..]);
    if f.trim_zeroes {
        assert_eq!(got, zeroed(want.clone(), off, len));
    }
    // Checklist 89: a later write over the range reads back correctly.
    b.write_at(off, &vec![9; len as usize], false).unwrap();
    let mut back = vec![0; len as usize];
    b.read_at(off, &mut back).unwrap();
    if f.stores {
        assert!(back.iter().all(|&x| x == 9));
    }
    b.trim(0, b.size(), false).unwrap();
    b.trim(b.size(), 0, false).unwrap();
}

/// Checklist 90: zeroes read back with and without MAY_TRIM (NO_HOLE).
pub fn write_zeroes(f: &Fixture) {
    let b = &*f.backend;
    if !writable(f) {
        assert!(
            b.write_zeroes(0, 1, ZeroFlags::empty()).is_err(),
            "checklist 71"
        );
        return;
    }
    for flags in [ZeroFlags::empty(), ZeroFlags::MAY_TRIM, ZeroFlags::FUA] {
        for &(off, len) in &[(5u64, 3u64), (4000, 200), (4096, 8192), (777, 70_000)] {
            let want = fill(f);
            b.write_zeroes(off, len, flags).unwrap();
            let want = if f.stores {
                zeroed(want, off, len)
            } else {
                want
            };
            assert_eq!(read_all(b), want, "{flags:?} {off}+{len}");
        }
    }
    let size = b.size();
    b.write_zeroes(0, size, ZeroFlags::MAY_TRIM).unwrap();
    assert!(read_all(b).iter().all(|&x| x == 0));
}

/// Checklist 91/92: FAST either zeroes or fails fast with the data intact.
pub fn fast_zero(f: &Fixture) {
    let b = &*f.backend;
    if !writable(f) {
        return;
    }
    let want = fill(f);
    let (off, len) = (4096 + 5, 3 * 4096);
    let r = b.write_zeroes(off, len, ZeroFlags::FAST | ZeroFlags::MAY_TRIM);
    if f.fast_zero {
        r.unwrap();
        let want = if f.stores {
            zeroed(want, off, len)
        } else {
            want
        };
        assert_eq!(read_all(b), want);
    } else {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Unsupported);
        assert_eq!(read_all(b), want, "checklist 92: data unchanged");
        // Without FAST the same request must succeed (checklist 91).
        b.write_zeroes(off, len, ZeroFlags::empty()).unwrap();
        assert_eq!(read_all(b), zeroed(want, off, len));
    }
}

/// Checklist 105/109: extents are consecutive from the offset, nonzero,
/// never past the end, and every byte in a ZERO extent reads as zero.
pub fn check_extents(b: &dyn Backend, off: u64, len: u64, cap: usize) {
    let mut out = vec![Extent::default(); cap];
    let n = b.extents(off, len, &mut out).unwrap();
    assert!(n <= cap);
    let size = b.size();
    if len > 0 && off < size {
        assert!(n >= 1, "at least one extent for {off}+{len}");
    }
    let mut pos = off;
    for e in &out[..n] {
        assert!(e.len > 0, "zero-length extent");
        assert!(
            (ExtentFlags::HOLE | ExtentFlags::ZERO).contains(e.flags),
            "reserved bits"
        );
        let end = pos + e.len;
        assert!(end <= size, "extent past the end of the export");
        if e.flags.contains(ExtentFlags::ZERO) {
            let mut data = vec![0xee; e.len as usize];
            b.read_at(pos, &mut data).unwrap();
            assert!(
                data.iter().all(|&x| x == 0),
                "ZERO extent at {pos} holds data"
            );
        }
        pos = end;
    }
    if cap > 0 && n == cap {
        return;
    }
    // A full answer (out not exhausted) reaches the requested end or the
    // export's end; extents may also stop early, but ours do not.
    assert_eq!(
        pos,
        off.saturating_add(len).min(size),
        "extents for {off}+{len}"
    );
}

pub fn extents(f: &Fixture) {
    let b = &*f.backend;
    if writable(f) {
        b.write_zeroes(0, b.size(), ZeroFlags::MAY_TRIM).unwrap();
        b.write_at(8192, &[1; 5000], false).unwrap();
        b.write_at(100_000, &[2; 10], false).unwrap();
        b.trim(8192 + 4096, 4096, false).unwrap();
        b.write_at(b.size() - 3, &[3; 3], false).unwrap();
    }
    let size = b.size();
    for &(off, len) in &[
        (0, size),
        (1, size - 1),
        (8191, 9000),
        (100_001, 1),
        (size - 1, 1),
        (size, 0),
        (0, u64::MAX),
    ] {
        for cap in [1, 2, 64] {
            check_extents(b, off, len, cap);
        }
    }
    assert!(b.extents(size + 1, 1, &mut [Extent::default()]).is_err());
}

/// Checklist 67-69, 72: out-of-range requests are errors, never panics.
pub fn out_of_range(f: &Fixture) {
    let b = &*f.backend;
    let size = b.size();
    let mut buf = [0u8; 4];
    assert!(b.read_at(size - 1, &mut buf[..2]).is_err());
    assert!(b.read_at(size + 1, &mut buf[..0]).is_err());
    assert!(
        b.read_at(u64::MAX - 1, &mut buf).is_err(),
        "checklist 68 overflow"
    );
    assert!(b.write_at(size - 1, &[1, 2], false).is_err());
    assert!(b.write_at(u64::MAX, &[1], false).is_err());
    assert!(b.trim(size, 1, false).is_err());
    assert!(b.trim(u64::MAX, 2, false).is_err());
    assert!(b.write_zeroes(size - 1, 2, ZeroFlags::empty()).is_err());
    assert!(
        b.write_zeroes(u64::MAX, u64::MAX, ZeroFlags::MAY_TRIM)
            .is_err()
    );
    if writable(f) {
        let e = b.write_at(size, &[1], false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "checklist 69");
    }
    let e = b.read_at(size, &mut buf[..1]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "checklist 67");
    // Zero-length requests at the end are fine (checklist 74).
    b.read_at(size, &mut []).unwrap();
    b.cache(0, size).unwrap();
    b.flush().unwrap();
}

/// One test module per fixture, running the whole suite on it.
#[macro_export]
macro_rules! conformance {
    ($($name:ident => $fixture:expr;)*) => {$(
        mod $name {
            use super::*;
            use super::suite;
            #[test] fn read_after_write() { suite::read_after_write(&$fixture) }
            #[test] fn trim() { suite::trim(&$fixture) }
            #[test] fn write_zeroes() { suite::write_zeroes(&$fixture) }
            #[test] fn fast_zero() { suite::fast_zero(&$fixture) }
            #[test] fn extents() { suite::extents(&$fixture) }
            #[test] fn out_of_range() { suite::out_of_range(&$fixture) }
        }
    )*};
}
