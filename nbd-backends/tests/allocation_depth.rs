//! `Backend::allocation_depth` (qemu:allocation-depth) through the cow
//! filter and the filters that forward it.

use std::sync::Arc;

use nbd_backends::filters::{Cow, Offset, ReadOnly};
use nbd_backends::{Backend, Caps, DepthExtent, FileBackend, MemoryBackend};

fn depths(b: &dyn Backend, off: u64, len: u64) -> Vec<(u64, u32)> {
    let mut out = [DepthExtent::default(); 32];
    let n = b.allocation_depth(off, len, &mut out).unwrap();
    out[..n].iter().map(|d| (d.len, d.depth)).collect()
}

/// A 64 KiB file: data in [0, 16K), a hole in [16K, 48K), data after.
/// `tag` keeps the tests of this binary, which run in parallel, apart.
fn base_file(tag: &str) -> (Arc<dyn Backend>, std::path::PathBuf) {
    let p = std::env::temp_dir().join(format!("nbd-depth-{}-{tag}", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(64 * 1024).unwrap();
    use std::os::unix::fs::FileExt as _;
    f.write_all_at(&[1; 16 * 1024], 0).unwrap();
    f.write_all_at(&[2; 16 * 1024], 48 * 1024).unwrap();
    (Arc::new(FileBackend::open(&p, true, false).unwrap()), p)
}

#[test]
fn cow_overlay_is_1_base_data_2_base_hole_0() {
    let (base, path) = base_file("t1");
    let cow = Cow::new(base).unwrap();
    assert!(cow.caps().contains(Caps::ALLOCATION_DEPTH));
    assert_eq!(
        depths(&cow, 0, 64 * 1024),
        [(16 * 1024, 2), (32 * 1024, 0), (16 * 1024, 2)]
    );
    // A partial write copies up its whole 4 KiB block.
    cow.write_at(20 * 1024 + 5, &[9; 10], false).unwrap();
    cow.write_at(8 * 1024, &[9; 4096], false).unwrap();
    assert_eq!(
        depths(&cow, 0, 64 * 1024),
        [
            (8 * 1024, 2),
            (4 * 1024, 1),
            (4 * 1024, 2),
            (4 * 1024, 0),
            (4 * 1024, 1),
            (24 * 1024, 0),
            (16 * 1024, 2)
        ]
    );
    // From an unaligned offset; capped by the output slice.
    assert_eq!(depths(&cow, 100, 8000), [(8000, 2)]);
    let mut one = [DepthExtent::default(); 1];
    assert_eq!(cow.allocation_depth(0, 64 * 1024, &mut one).unwrap(), 1);
    assert!(cow.allocation_depth(64 * 1024 + 1, 1, &mut one).is_err());
    let _ = std::fs::remove_file(path);
}

#[test]
fn cow_over_cow_counts_layers() {
    let (base, path) = base_file("t2");
    let lower = Arc::new(Cow::new(base).unwrap());
    lower.write_at(0, &[7; 4096], false).unwrap();
    let upper = Cow::new(lower).unwrap();
    upper.write_at(60 * 1024, &[8; 4096], false).unwrap();
    assert_eq!(
        depths(&upper, 0, 64 * 1024),
        [
            (4096, 2),
            (12 * 1024, 3),
            (32 * 1024, 0),
            (12 * 1024, 3),
            (4096, 1)
        ]
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn filters_forward_and_clip() {
    let (base, path) = base_file("t3");
    let cow: Arc<dyn Backend> = Arc::new(Cow::new(base).unwrap());
    let win = Offset::new(cow.clone(), 8 * 1024, Some(16 * 1024)).unwrap();
    assert_eq!(depths(&win, 0, 1 << 20), [(8 * 1024, 2), (8 * 1024, 0)]);
    let ro = ReadOnly::new(cow);
    assert!(ro.caps().contains(Caps::ALLOCATION_DEPTH | Caps::READ_ONLY));
    assert_eq!(depths(&ro, 0, 4096), [(4096, 2)]);
    let _ = std::fs::remove_file(path);
}

#[test]
fn backends_without_layers_say_unsupported() {
    let m = MemoryBackend::new(4096).unwrap();
    assert!(!m.caps().contains(Caps::ALLOCATION_DEPTH));
    let mut out = [DepthExtent::default(); 1];
    let e = m.allocation_depth(0, 4096, &mut out).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
}
