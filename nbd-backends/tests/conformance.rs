//! One behavioural suite run against every backend (house-style §3.8).
//!
//! Each backend is described by a [`Fixture`]: the backend plus what it
//! promises (does it keep data, do trims read back as zeroes, may
//! FAST_ZERO succeed). The suite asserts only what the backend promises:
//! trim contents are unspecified by NBD (checklist 89), so "zeroes after
//! trim" is checked only where the backend documents it.

mod suite;

use std::io::ErrorKind;
use std::sync::Arc;

use nbd_backends::{
    Backend, Caps, Execution, Extent, ExtentFlags, FileBackend, MemoryBackend, NullBackend,
    PatternBackend, ZeroFlags,
};
use suite::{ALIGNED_SIZE, Fixture, SIZE, TempFile, zero};

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

#[cfg(feature = "rbd")]
#[path = "ceph/mod.rs"]
mod ceph;

/// An RBD image on the test cluster (`cargo xtask test` starts it), 64 KiB
/// objects so the 1 MiB export spans 17 of them, resized to the odd SIZE
/// through the backend itself. Images stay in the throwaway cluster: an
/// open image cannot be removed, and the fixture does not outlive its test.
#[cfg(feature = "rbd")]
fn rbd_image(features: &[&str], snap: bool) -> Fixture {
    use nbd_backends::{RbdBackend, rbd::Params};
    let mut extra = vec!["--object-size", "64K"];
    for f in features {
        extra.extend(["--image-feature", f]);
    }
    let image = ceph::Image::create("2M", &extra);
    let name = image.name.clone();
    std::mem::forget(image);
    let conf = ceph::conf().display().to_string();
    let params = |snap: Option<&str>| {
        Params::parse(|k| match k {
            "image" => Some(name.as_str()),
            "conf" => Some(conf.as_str()),
            "snap" => snap,
            _ => None,
        })
        .unwrap()
    };
    let rw = RbdBackend::open(&params(None), false).unwrap();
    rw.resize(SIZE).unwrap();
    assert_eq!(rw.size(), SIZE);
    if !snap {
        return Fixture {
            backend: Arc::new(rw),
            stores: true,
            trim_zeroes: false,
            fast_zero: true,
            initial: zero,
            _file: None,
        };
    }
    let data: Vec<u8> = (0..SIZE).map(snapshot_byte).collect();
    rw.write_at(0, &data, true).unwrap();
    ceph::rbd(&["snap", "create", "--no-progress", &format!("rbd/{name}@s")]);
    let ro = RbdBackend::open(&params(Some("s")), false).unwrap();
    Fixture {
        backend: Arc::new(ro),
        stores: false,
        trim_zeroes: false,
        fast_zero: false,
        initial: snapshot_byte,
        _file: None,
    }
}

/// Content of the snapshot fixture.
#[cfg(feature = "rbd")]
fn snapshot_byte(i: u64) -> u8 {
    (i % 253) as u8 ^ 0x5a
}

// Built only with `--features rbd` (`cargo xtask test` runs them with the
// cluster up): layering only (extents from per-object listing), the default
// features (exclusive lock, object map, fast diff: extents from the object
// map), and a snapshot (read-only).
#[cfg(feature = "rbd")]
conformance! {
    rbd_layering_ => rbd_image(&["layering"], false);
    rbd_default_features_ => rbd_image(&["layering", "exclusive-lock", "object-map", "fast-diff"], false);
    rbd_snapshot_ => rbd_image(&["layering"], true);
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
