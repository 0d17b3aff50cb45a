//! `Backend::try_read_cached` and `try_write_cached` on the file backend:
//! reads that cannot block are answered (memory filesystems always, others
//! from the page cache through `preadv2(RWF_NOWAIT)`), writes only on
//! memory filesystems; everything else is left to `read_at` and `write_at`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nbd_backends::{Backend, FileBackend};

fn file_in(dir: &str, tag: &str) -> PathBuf {
    let p = PathBuf::from(dir).join(format!("nbd-cached-{}-{tag}", std::process::id()));
    let mut f = std::fs::File::create(&p).unwrap();
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    p
}

/// The default export of `file PATH ARGS` under `filters`, as the
/// registry builds it.
fn served(path: &Path, filters: &[&str], args: &[&str]) -> Arc<dyn Backend> {
    let mut a = vec![path.display().to_string()];
    a.extend(args.iter().map(|s| (*s).to_owned()));
    let names: Vec<String> = filters.iter().map(|s| (*s).to_owned()).collect();
    let set = nbd_backends::build_with_filters("file", &a, &names, "", false).unwrap();
    Arc::clone(&set.get("").unwrap().backend)
}

fn check(path: &PathBuf, cache_none: bool) -> bool {
    let b = FileBackend::open(path, true, cache_none).unwrap();
    // Warm the page cache the ordinary way first.
    let mut warm = vec![0u8; 65536];
    b.read_at(0, &mut warm).unwrap();
    let mut buf = vec![0u8; 4096];
    let ok = b.try_read_cached(8192, &mut buf);
    if ok {
        assert_eq!(
            buf,
            warm[8192..12288],
            "cached read returned the file's bytes"
        );
    }
    assert!(
        !b.try_read_cached(65536 - 100, &mut buf),
        "a read past EOF goes the slow way"
    );
    ok
}

#[test]
fn memory_filesystem_reads_never_block() {
    if !std::path::Path::new("/dev/shm").is_dir() {
        panic!("/dev/shm (tmpfs) is missing: the test needs a memory filesystem");
    }
    let p = file_in("/dev/shm", "shm");
    assert!(check(&p, false), "tmpfs file read on the loop");
    let _ = std::fs::remove_file(p);
}

#[test]
fn page_cache_reads_on_a_disk_filesystem() {
    let p = file_in(env!("CARGO_TARGET_TMPDIR"), "disk");
    // ext4, xfs and btrfs support RWF_NOWAIT: a warm page is read at once.
    // Another filesystem may fall back (false), which is also correct.
    let f = std::fs::File::open(&p).unwrap();
    #[allow(clippy::unnecessary_cast)] // f_type's type depends on the arch
    let magic = rustix::fs::fstatfs(&f).unwrap().f_type as i64;
    let nowait_fs = matches!(magic, 0xef53 | 0x5846_5342 | 0x9123_683e);
    let fs_ok = check(&p, false);
    eprintln!("fs magic {magic:#x}: RWF_NOWAIT read from the page cache: {fs_ok}");
    assert!(
        fs_ok || !nowait_fs,
        "a warm page of ext4/xfs/btrfs must read at once"
    );
    assert!(!check(&p, true), "O_DIRECT never reads from the cache");
    let _ = std::fs::remove_file(p);
}

/// Through the registry's stacks: filters that keep the file's bytes
/// (readonly, offset) answer cached reads from it, moved by the window;
/// a filter that fails reads on purpose (error) never does.
#[test]
fn cached_reads_through_filters() {
    let p = file_in("/dev/shm", "filters");
    let stack = |filters: &[&str], args: &[&str]| served(&p, filters, args);
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let mut buf = vec![0u8; 4096];
    let b = stack(&["readonly", "offset"], &["offset=4096", "range=32768"]);
    assert!(b.try_read_cached(8192, &mut buf), "readonly over offset");
    assert_eq!(buf, data[12288..16384]);
    assert!(!b.try_read_cached(32768 - 100, &mut buf), "past the window");
    let b = stack(&["readonly", "error"], &["error-rate=1"]);
    assert!(!b.try_read_cached(8192, &mut buf), "through error");
    assert!(b.read_at(8192, &mut buf).is_err(), "the error is injected");
    let _ = std::fs::remove_file(p);
}

fn file_bytes(p: &PathBuf) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// A tmpfs file takes a write on the loop: all of it stored, read back
/// through the backend and the file itself; read-only exports, ranges
/// past the end and empty writes are left to `write_at`.
#[test]
fn memory_filesystem_writes_never_block() {
    let p = file_in("/dev/shm", "shm-write");
    let b = FileBackend::open(&p, false, false).unwrap();
    let data = [0xa5u8; 5000];
    assert!(b.try_write_cached(3000, &data), "tmpfs write on the loop");
    let mut back = vec![0u8; 5000];
    b.read_at(3000, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(file_bytes(&p)[3000..8000], data, "in the file itself");
    let before = file_bytes(&p);
    assert!(!b.try_write_cached(65536 - 100, &data), "past the end");
    assert!(!b.try_write_cached(0, &[]), "empty");
    assert_eq!(file_bytes(&p), before, "refused writes store nothing");
    let ro = FileBackend::open(&p, true, false).unwrap();
    assert!(!ro.try_write_cached(0, &data), "read-only export");
    assert_eq!(file_bytes(&p), before, "read-only stays unchanged");
    let _ = std::fs::remove_file(p);
}

/// On a disk filesystem a write may wait for writeback or allocation, so
/// it always goes to a worker: nothing is written on the loop.
#[test]
fn disk_filesystem_writes_go_to_workers() {
    let p = file_in(env!("CARGO_TARGET_TMPDIR"), "disk-write");
    let f = std::fs::File::open(&p).unwrap();
    #[allow(clippy::unnecessary_cast)] // f_type's type depends on the arch
    let magic = rustix::fs::fstatfs(&f).unwrap().f_type as i64;
    assert_ne!(
        magic, 0x0102_1994,
        "CARGO_TARGET_TMPDIR is on tmpfs: move it to a disk"
    );
    let before = file_bytes(&p);
    let b = FileBackend::open(&p, false, false).unwrap();
    assert!(!b.try_write_cached(0, &[1u8; 4096]));
    assert_eq!(file_bytes(&p), before, "nothing written on the loop");
    let _ = std::fs::remove_file(p);
}

/// Filters that pass writes through unchanged (offset, moved by its
/// window) forward the loop's write; filters that refuse or check writes
/// (readonly, protect) never let it reach the file.
#[test]
fn cached_writes_through_filters() {
    let p = file_in("/dev/shm", "filters-write");
    let stack = |filters: &[&str], args: &[&str]| served(&p, filters, args);
    let b = stack(&["offset"], &["offset=4096", "range=32768"]);
    assert!(b.try_write_cached(100, &[7u8; 50]), "through offset");
    assert_eq!(file_bytes(&p)[4196..4246], [7u8; 50], "moved by the window");
    assert!(
        !b.try_write_cached(32768 - 10, &[7u8; 50]),
        "past the window"
    );
    let before = file_bytes(&p);
    let b = stack(&["readonly"], &[]);
    assert!(!b.try_write_cached(0, &[9u8; 512]), "through readonly");
    let b = stack(&["protect"], &["protect=0-511"]);
    assert!(!b.try_write_cached(0, &[9u8; 512]), "through protect");
    assert_eq!(file_bytes(&p), before, "refused writes store nothing");
    let _ = std::fs::remove_file(p);
}
