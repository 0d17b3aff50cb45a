//! One behavioural suite run against every backend (house-style §3.8).
//!
//! Each backend is described by a [`Fixture`]: the backend plus what it
//! promises (does it keep data, do trims read back as zeroes, may
//! FAST_ZERO succeed). The suite asserts only what the backend promises:
//! trim contents are unspecified by NBD (checklist 89), so "zeroes after
//! trim" is checked only where the backend documents it.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use nbd_backends::{
    Backend, Caps, Execution, Extent, ExtentFlags, FileBackend, MemoryBackend, NullBackend,
    PatternBackend, ZeroFlags,
};

/// What a backend under test promises.
struct Fixture {
    backend: Arc<dyn Backend>,
    /// Writes are visible to later reads (false for null).
    stores: bool,
    /// A trimmed range reads back as zeroes.
    trim_zeroes: bool,
    /// `Some(true)`: FAST write_zeroes succeeds; `Some(false)`: it fails
    /// with `Unsupported`.
    fast_zero: bool,
    /// Expected content of a never-written byte.
    initial: fn(u64) -> u8,
    _file: Option<TempFile>,
}

/// A file under a directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(dir: &str, size: u64) -> Self {
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
const SIZE: u64 = (1 << 20) + 1000;
/// For O_DIRECT, which needs a block-multiple size.
const ALIGNED_SIZE: u64 = 1 << 20;

fn zero(_: u64) -> u8 {
    0
}

fn memory() -> Fixture {
    Fixture {
        backend: Arc::new(MemoryBackend::new(SIZE).unwrap()),
        stores: true,
        trim_zeroes: true,
        fast_zero: true,
        initial: zero,
        _file: None,
    }
}

fn null() -> Fixture {
    Fixture {
        backend: Arc::new(NullBackend::new(SIZE).unwrap()),
        stores: false,
        trim_zeroes: true,
        fast_zero: true,
        initial: zero,
        _file: None,
    }
}

fn pattern() -> Fixture {
    Fixture {
        backend: Arc::new(PatternBackend::new(SIZE).unwrap()),
        stores: false,
        trim_zeroes: false,
        fast_zero: false,
        initial: PatternBackend::byte_at,
        _file: None,
    }
}

/// The cow filter over the read-only pattern: writable, and every byte
/// not written still reads as the pattern.
fn cow_over_pattern() -> Fixture {
    let inner = Arc::new(PatternBackend::new(SIZE).unwrap());
    Fixture {
        backend: Arc::new(nbd_backends::filters::Cow::new(inner).unwrap()),
        stores: true,
        trim_zeroes: false,
        fast_zero: true,
        initial: PatternBackend::byte_at,
        _file: None,
    }
}

/// The log filter over memory, logging to a temporary file.
fn log_over_memory() -> Fixture {
    let tmp = TempFile::new("/tmp", 0);
    let inner = Arc::new(MemoryBackend::new(SIZE).unwrap());
    let log = nbd_backends::filters::Log::new(inner, Some(&tmp.0), false).unwrap();
    Fixture {
        backend: Arc::new(log),
        _file: Some(tmp),
        ..memory()
    }
}

/// Partition 2 of a memory disk with an MBR (checks the window arithmetic).
fn partition_of_memory() -> Fixture {
    let disk = Arc::new(MemoryBackend::new(4 << 20).unwrap());
    let mut entry = [0u8; 16];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&2049u32.to_le_bytes());
    disk.write_at(446 + 16, &entry, false).unwrap();
    disk.write_at(510, &[0x55, 0xaa], false).unwrap();
    let p = nbd_backends::filters::partition::open(disk, 2).unwrap();
    assert_eq!(p.size(), 2049 * 512);
    Fixture {
        backend: Arc::new(p),
        ..memory()
    }
}

/// The offset filter: a window in the middle of a larger memory disk.
fn offset_over_memory() -> Fixture {
    let disk = Arc::new(MemoryBackend::new(SIZE + (1 << 20)).unwrap());
    let w = nbd_backends::filters::Offset::new(disk, 512 * 1024, Some(SIZE)).unwrap();
    Fixture {
        backend: Arc::new(w),
        ..memory()
    }
}

/// The stats filter only counts: every promise of memory still holds.
fn stats_over_memory() -> Fixture {
    let inner = Arc::new(MemoryBackend::new(SIZE).unwrap());
    Fixture {
        backend: Arc::new(nbd_backends::filters::Stats::new(inner, None)),
        ..memory()
    }
}

/// The delay filter with zero delays is transparent.
fn delay_over_memory() -> Fixture {
    let inner = Arc::new(MemoryBackend::new(SIZE).unwrap());
    let zero = std::time::Duration::ZERO;
    Fixture {
        backend: Arc::new(nbd_backends::filters::Delay::new(inner, zero, zero)),
        ..memory()
    }
}

/// The error filter at rate 0 injects nothing.
fn error_rate_zero_over_memory() -> Fixture {
    let inner = Arc::new(MemoryBackend::new(SIZE).unwrap());
    Fixture {
        // errno 5 = EIO, never raised at rate 0.
        backend: Arc::new(nbd_backends::filters::ErrorInject::new(inner, 5, 0.0)),
        ..memory()
    }
}

/// The readonly filter: reads as memory, refuses every change.
fn readonly_over_memory() -> Fixture {
    let inner = Arc::new(MemoryBackend::new(SIZE).unwrap());
    Fixture {
        backend: Arc::new(nbd_backends::filters::ReadOnly::new(inner)),
        stores: false,
        trim_zeroes: false,
        fast_zero: false,
        ..memory()
    }
}

fn file_in(dir: &str, size: u64, cache_none: bool) -> Fixture {
    let tmp = TempFile::new(dir, size);
    let b = FileBackend::open(&tmp.0, false, cache_none).unwrap();
    Fixture {
        backend: Arc::new(b),
        stores: true,
        // PUNCH_HOLE on ext4 and tmpfs leaves zeroes.
        trim_zeroes: true,
        fast_zero: true,
        initial: zero,
        _file: Some(tmp),
    }
}

fn file_tmp() -> Fixture {
    file_in("/tmp", SIZE, false)
}

fn file_shm() -> Fixture {
    file_in("/dev/shm", SIZE, false)
}

fn file_direct() -> Fixture {
    file_in("/tmp", ALIGNED_SIZE, true)
}

fn file_no_fallocate() -> Fixture {
    let tmp = TempFile::new("/tmp", SIZE);
    let b = FileBackend::open(&tmp.0, false, false).unwrap();
    b.disable_fallocate();
    Fixture {
        backend: Arc::new(b),
        stores: true,
        // Trim is then a no-op: contents unspecified.
        trim_zeroes: false,
        fast_zero: false,
        initial: zero,
        _file: Some(tmp),
    }
}

fn file_readonly() -> Fixture {
    let tmp = TempFile::new("/tmp", SIZE);
    Fixture {
        backend: Arc::new(FileBackend::open(&tmp.0, true, false).unwrap()),
        stores: false,
        trim_zeroes: false,
        fast_zero: false,
        initial: zero,
        _file: Some(tmp),
    }
}

/// A fresh qcow2 image made by qemu-img (package qemu-utils); with
/// `backed`, an overlay on an empty qcow2 base, so that unallocated
/// clusters defer to the backing file.
fn qcow2(backed: bool) -> Fixture {
    let tmp = TempFile::new("/tmp", 0);
    let img = |path: &std::path::Path, backing: Option<&std::path::Path>| {
        let mut c = std::process::Command::new("qemu-img");
        c.args(["create", "-q", "-f", "qcow2"]);
        if let Some(b) = backing {
            c.arg("-F").arg("qcow2").arg("-b").arg(b);
        }
        let st = c.arg(path).arg(ALIGNED_SIZE.to_string()).status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "qemu-img create failed: install qemu-utils"
        );
    };
    let base = backed.then(|| {
        let base = TempFile::new("/tmp", 0);
        img(&base.0, None);
        base
    });
    img(&tmp.0, base.as_ref().map(|b| b.0.as_path()));
    let opts = nbd_backends::ImageOptions::default();
    let b = nbd_backends::ImageBackend::open(&tmp.0, &opts).unwrap();
    // The overlay holds the base open; its file may go now.
    drop(base);
    Fixture {
        backend: Arc::new(b),
        stores: true,
        // Only whole clusters are discarded.
        trim_zeroes: false,
        fast_zero: false,
        initial: zero,
        _file: Some(tmp),
    }
}

fn writable(f: &Fixture) -> bool {
    !f.backend.caps().contains(Caps::READ_ONLY)
}

fn read_all(b: &dyn Backend) -> Vec<u8> {
    let mut v = vec![0xa5; b.size() as usize];
    b.read_at(0, &mut v).unwrap();
    v
}

/// Expected full content: `initial` where nothing was stored.
fn model(f: &Fixture) -> Vec<u8> {
    (0..f.backend.size()).map(f.initial).collect()
}

/// Writes at unaligned offsets spanning page boundaries, then reads them
/// back at other unaligned offsets (checklist 63).
fn read_after_write(f: &Fixture) {
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
fn fill(f: &Fixture) -> Vec<u8> {
    let b = &*f.backend;
    let data: Vec<u8> = (0..b.size()).map(|i| (i % 251) as u8 + 1).collect();
    b.write_at(0, &data, false).unwrap();
    if f.stores { data } else { model(f) }
}

fn zeroed(mut want: Vec<u8>, off: u64, len: u64) -> Vec<u8> {
    want[off as usize..(off + len) as usize].fill(0);
    want
}

fn trim(f: &Fixture) {
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
fn write_zeroes(f: &Fixture) {
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
fn fast_zero(f: &Fixture) {
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
fn check_extents(b: &dyn Backend, off: u64, len: u64, cap: usize) {
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

fn extents(f: &Fixture) {
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
fn out_of_range(f: &Fixture) {
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

macro_rules! conformance {
    ($($name:ident => $fixture:expr;)*) => {$(
        mod $name {
            use super::*;
            #[test] fn read_after_write() { super::read_after_write(&$fixture) }
            #[test] fn trim() { super::trim(&$fixture) }
            #[test] fn write_zeroes() { super::write_zeroes(&$fixture) }
            #[test] fn fast_zero() { super::fast_zero(&$fixture) }
            #[test] fn extents() { super::extents(&$fixture) }
            #[test] fn out_of_range() { super::out_of_range(&$fixture) }
        }
    )*};
}

conformance! {
    memory_ => memory();
    null_ => null();
    pattern_ => pattern();
    file_tmp_ => file_tmp();
    file_shm_ => file_shm();
    file_direct_ => file_direct();
    file_no_fallocate_ => file_no_fallocate();
    file_readonly_ => file_readonly();
    cow_over_pattern_ => cow_over_pattern();
    log_over_memory_ => log_over_memory();
    partition_of_memory_ => partition_of_memory();
    offset_over_memory_ => offset_over_memory();
    stats_over_memory_ => stats_over_memory();
    delay_over_memory_ => delay_over_memory();
    error_rate_zero_over_memory_ => error_rate_zero_over_memory();
    readonly_over_memory_ => readonly_over_memory();
    qcow2_ => qcow2(false);
    qcow2_backed_ => qcow2(true);
}

#[test]
fn o_direct_is_used_on_ext4_and_refused_sizes_fall_back() {
    let f = file_direct();
    let b = FileBackend::open(&f._file.as_ref().unwrap().0, false, true).unwrap();
    assert!(
        b.is_direct(),
        "/tmp is expected to accept O_DIRECT (ext4 here)"
    );
    let odd = TempFile::new("/tmp", SIZE);
    let b = FileBackend::open(&odd.0, false, true).unwrap();
    assert!(
        !b.is_direct(),
        "a size not a multiple of 4096 must not use O_DIRECT"
    );
}

#[test]
fn file_extents_see_real_holes() {
    let f = file_tmp();
    let b = &*f.backend;
    b.write_zeroes(0, b.size(), ZeroFlags::MAY_TRIM).unwrap();
    b.write_at(65_536, &[1; 65_536], false).unwrap();
    let mut out = [Extent::default(); 8];
    let n = b.extents(0, b.size(), &mut out).unwrap();
    let hz = ExtentFlags::HOLE | ExtentFlags::ZERO;
    assert_eq!(
        out[0],
        Extent {
            len: 65_536,
            flags: hz
        }
    );
    assert_eq!(out[1].flags, ExtentFlags::empty());
    assert!(n >= 3 && out[n - 1].flags == hz, "{:?}", &out[..n]);
}

#[test]
fn caps_and_inline() {
    let all_rw = Caps::FLUSH | Caps::FUA | Caps::TRIM | Caps::WRITE_ZEROES | Caps::EXTENTS;
    let m = memory();
    assert!(
        m.backend
            .caps()
            .contains(all_rw | Caps::FAST_ZERO | Caps::RESIZE | Caps::MULTI_CONN)
    );
    for b in [m.backend, null().backend, pattern().backend] {
        assert_eq!(b.execution(), Execution::Inline);
    }
    assert!(pattern().backend.caps().contains(Caps::READ_ONLY));
    let f = file_tmp();
    assert!(
        f.backend
            .caps()
            .contains(all_rw | Caps::MULTI_CONN | Caps::CACHE)
    );
    assert_eq!(f.backend.execution(), Execution::Blocking);
    assert!(file_readonly().backend.caps().contains(Caps::READ_ONLY));
}

#[test]
fn memory_resize_grows_and_shrinks() {
    let f = memory();
    let b = &*f.backend;
    b.write_at(SIZE - 10, &[7; 10], false).unwrap();
    b.resize(SIZE - 5).unwrap();
    assert_eq!(b.size(), SIZE - 5);
    assert!(b.read_at(SIZE - 6, &mut [0; 2]).is_err());
    b.resize(SIZE * 4).unwrap();
    let mut tail = [0xee; 10];
    b.read_at(SIZE - 10, &mut tail).unwrap();
    assert_eq!(
        tail,
        [7, 7, 7, 7, 7, 0, 0, 0, 0, 0],
        "regrown bytes read as zero"
    );
    b.write_at(SIZE * 4 - 1, &[1], false).unwrap();
    assert!(b.resize(u64::MAX).is_err());
    assert_eq!(
        null().backend.resize(1).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
}

/// ROTATIONAL follows sysfs for the device a file lives on (the kernel's
/// own `queue/rotational` for that disk), so a file on a spinning disk is
/// advertised as such and one on tmpfs (no block device) is not.
#[test]
fn file_rotational_follows_sysfs() {
    use std::os::unix::fs::MetadataExt;
    for dir in ["/tmp", "/dev/shm"] {
        let f = file_in(dir, SIZE, false);
        let path = f._file.as_ref().unwrap().0.clone();
        let dev = std::fs::metadata(&path).unwrap().dev();
        let node = format!(
            "/sys/dev/block/{}:{}",
            rustix::fs::major(dev),
            rustix::fs::minor(dev)
        );
        let sysfs = ["queue/rotational", "../queue/rotational"]
            .iter()
            .find_map(|q| std::fs::read_to_string(format!("{node}/{q}")).ok())
            .is_some_and(|s| s.trim() == "1");
        assert_eq!(
            f.backend.caps().contains(Caps::ROTATIONAL),
            sysfs,
            "{dir}: {node}"
        );
    }
}
