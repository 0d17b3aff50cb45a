//! `build` / `build_with_filters`: the command-line conventions end to end.

use std::time::{Duration, Instant};

use nbd_backends::{Caps, ZeroFlags, build, build_with_filters};

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn dir_mode_serves_one_export_per_regular_file() {
    let dir = format!("/tmp/nbd-backends-dir-{}", std::process::id());
    std::fs::create_dir_all(format!("{dir}/subdir")).unwrap();
    std::fs::write(format!("{dir}/b.img"), vec![2; 8192]).unwrap();
    std::fs::write(format!("{dir}/a.img"), vec![1; 4096]).unwrap();
    let set = build("file", &words(&format!("dir={dir}")), "ignored", true);
    let _ = std::fs::remove_dir_all(&dir);
    let set = set.unwrap();
    let names: Vec<_> = set.list().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a.img", "b.img"], "sorted, directories skipped");
    assert_eq!(set.get("").unwrap().name, "a.img");
    assert_eq!(set.get("b.img").unwrap().backend.size(), 8192);
    // No server path in a description: LIST answers it before TLS.
    assert_eq!(set.get("b.img").unwrap().description, None);
    assert!(
        set.get("b.img")
            .unwrap()
            .backend
            .caps()
            .contains(Caps::READ_ONLY)
    );
}

#[test]
fn readonly_flag_wraps_writable_backends() {
    let set = build("memory", &words("1M"), "x", true).unwrap();
    let b = &set.get("x").unwrap().backend;
    assert!(b.caps().contains(Caps::READ_ONLY));
    assert_eq!(
        b.write_at(0, &[1], false).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    assert!(b.write_zeroes(0, 1, ZeroFlags::empty()).is_err());
}

#[test]
fn offset_filter_windows_the_export() {
    let f = words("offset");
    let set = build_with_filters("pattern", &words("1M offset=4k range=8k"), &f, "", false);
    let b = set.unwrap().get("").unwrap().backend.clone();
    assert_eq!(b.size(), 8192);
    let mut w = [0; 8];
    b.read_at(8, &mut w).unwrap();
    assert_eq!(u64::from_be_bytes(w), 4096 + 8);
    assert!(b.read_at(8190, &mut w).is_err());
    let err = build_with_filters("memory", &words("1M offset=2M"), &f, "", false);
    assert!(err.err().unwrap().contains("past the end"));
    // Without the filter, its key is named as the filter's.
    let err = build("memory", &words("1M offset=4k"), "", false)
        .err()
        .unwrap();
    assert_eq!(
        err,
        "parameter 'offset' belongs to the offset filter: add --filter=offset"
    );
}

#[test]
fn error_filter_injects_the_named_errno() {
    let f = words("error");
    let b = build_with_filters(
        "memory",
        &words("1M error=ENOSPC error-rate=100%"),
        &f,
        "",
        false,
    )
    .unwrap()
    .get("")
    .unwrap()
    .backend
    .clone();
    for _ in 0..10 {
        let e = b.read_at(0, &mut [0; 1]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }
    let b = build_with_filters("memory", &words("1M error-rate=0.5"), &f, "", false)
        .unwrap()
        .get("")
        .unwrap()
        .backend
        .clone();
    let fails = (0..1000)
        .filter(|_| b.read_at(0, &mut [0; 1]).is_err())
        .count();
    assert!((300..700).contains(&fails), "{fails} of 1000 at rate 0.5");
    for bad in ["error=EFOO", "error-rate=2", "error-rate=x%"] {
        let e = build_with_filters("memory", &words(&format!("1M {bad}")), &f, "", false);
        let e = e.err().unwrap();
        assert!(e.starts_with(&format!("error filter: {bad}: ")), "{e}");
    }
}

#[test]
fn delay_filter_sleeps_and_is_not_inline() {
    let f = words("delay");
    let set = build_with_filters("memory", &words("1M rdelay=30ms wdelay=0"), &f, "", false);
    let b = set.unwrap().get("").unwrap().backend.clone();
    assert_eq!(b.execution(), nbd_backends::Execution::Blocking);
    let t = Instant::now();
    b.read_at(0, &mut [0; 1]).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(30));
    let e = build_with_filters("memory", &words("1M rdelay=soon"), &f, "", false);
    let e = e.err().unwrap();
    assert!(e.starts_with("delay filter: rdelay=soon: "), "{e}");
    let e = build_with_filters("memory", &words("1M"), &words("zip"), "", false);
    assert!(e.err().unwrap().contains("unknown filter 'zip'"));
}

#[test]
fn filters_stack_outermost_first() {
    // offset over readonly: still read-only and windowed.
    let f = words("offset readonly");
    let set = build_with_filters("memory", &words("1M offset=512k"), &f, "", false).unwrap();
    let b = &set.get("").unwrap().backend;
    assert_eq!(b.size(), 512 * 1024);
    assert!(b.caps().contains(Caps::READ_ONLY));
}

#[test]
fn stats_filter_writes_its_totals_on_drop() {
    let path = format!("/tmp/nbd-backends-stats-{}", std::process::id());
    let args = words(&format!("4k statsfile={path}"));
    let set = build_with_filters("memory", &args, &words("stats"), "", false).unwrap();
    let b = set.get("").unwrap().backend.clone();
    b.write_at(0, &[1; 100], false).unwrap();
    b.read_at(0, &mut [0; 10]).unwrap();
    b.read_at(0, &mut [0; 10]).unwrap();
    drop((b, set));
    let report = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    let report = report.unwrap();
    // nbdkit's format: "read: 2 ops, 0.000001 s, 20 bytes, ...".
    let line = |op: &str| report.lines().find(|l| l.starts_with(op)).unwrap_or("");
    assert!(line("read: 2 ops, ").contains(" s, 20 bytes, "), "{report}");
    assert!(
        line("write: 1 ops, ").contains(" s, 100 bytes, "),
        "{report}"
    );
}

#[test]
fn cow_filter_makes_a_read_only_file_writable_without_touching_it() {
    let path = format!("/tmp/nbd-backends-cow-{}", std::process::id());
    std::fs::write(&path, vec![7u8; 10_000]).unwrap();
    let set = build_with_filters("file", &words(&path), &words("cow"), "", false).unwrap();
    let b = set.get("").unwrap().backend.clone();
    b.write_at(4090, &[1; 10], false).unwrap();
    let mut got = vec![0; 10_000];
    b.read_at(0, &mut got).unwrap();
    let on_disk = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    let mut want = vec![7u8; 10_000];
    want[4090..4100].fill(1);
    assert_eq!(got, want);
    assert_eq!(on_disk.unwrap(), vec![7u8; 10_000], "the file is untouched");
}

/// A `file` export has no description: it would be the server-side path,
/// sent by NBD_OPT_LIST before TLS with `--tls=on`.
#[test]
fn file_export_has_no_description() {
    let path = format!("/tmp/nbd-backends-desc-{}.img", std::process::id());
    std::fs::write(&path, vec![0; 4096]).unwrap();
    let set = build("file", &words(&path), "", true);
    let _ = std::fs::remove_file(&path);
    assert_eq!(set.unwrap().get("").unwrap().description, None);
}
