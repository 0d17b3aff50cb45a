//! The qcow2 backend against qemu's own tools: images qemu writes read
//! back identically through us, images we write pass `qemu-img check` and
//! read back identically through qemu, and block status (extents and
//! allocation depth) matches `qemu-img map` exactly. Needs qemu-utils.

#[path = "qcow2/tools.rs"]
mod tools;

use std::path::Path;
use std::sync::Arc;

use nbd_backends::{
    Backend, Caps, DepthExtent, Extent, ExtentFlags, ImageBackend, ImageOptions, ZeroFlags,
};
use tools::{Dir, check, create, map, merge, qemu_io, raw_bytes, run, s};

const MIB: u64 = 1 << 20;

fn open(path: &Path, readonly: bool) -> ImageBackend {
    let opts = ImageOptions {
        readonly,
        ..ImageOptions::default()
    };
    ImageBackend::open(path, &opts).unwrap()
}

fn read_all(b: &dyn Backend) -> Vec<u8> {
    let mut v = vec![0u8; b.size() as usize];
    b.read_at(0, &mut v).unwrap();
    v
}

/// base.qcow2 (data, a zero cluster, a compressed copy) and top.qcow2
/// over it (its own data, a zero cluster over base data).
fn chain(dir: &Dir) -> (std::path::PathBuf, std::path::PathBuf) {
    let (base, top) = (dir.path("base.qcow2"), dir.path("top.qcow2"));
    create(&base, "4M", None);
    qemu_io(
        &base,
        &[
            "write -P 0xaa 0 1M",
            "write -z 2M 512k",
            "write -P 0x11 3M 64k",
        ],
    );
    create(&top, "4M", Some((&base, "qcow2")));
    qemu_io(
        &top,
        &[
            "write -P 0xbb 512k 1M",
            "write -z 64k 64k",
            "write -P 0xcc 3968k 100",
        ],
    );
    (base, top)
}

#[test]
fn reads_match_qemu_for_a_backing_chain() {
    let dir = Dir::new("chain");
    let (_, top) = chain(&dir);
    let b = open(&top, true);
    assert_eq!(read_all(&b), raw_bytes(&top, &dir));
    assert!(
        b.caps()
            .contains(Caps::READ_ONLY | Caps::EXTENTS | Caps::ALLOCATION_DEPTH)
    );
}

#[test]
fn compressed_clusters_read_back() {
    let dir = Dir::new("compressed");
    let (src, comp) = (dir.path("src.qcow2"), dir.path("comp.qcow2"));
    create(&src, "2M", None);
    qemu_io(&src, &["write -P 0x5a 0 1M", "write -P 0x33 1M 4k"]);
    run(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", s(&src), s(&comp)],
    );
    let m = run("qemu-img", &["map", "--output=json", s(&comp)]);
    assert!(
        m.contains("\"compressed\": true"),
        "qemu made compressed clusters: {m}"
    );
    assert_eq!(read_all(&open(&comp, true)), raw_bytes(&src, &dir));
}

#[test]
fn extents_match_qemu_img_map() {
    let dir = Dir::new("extents");
    let (_, top) = chain(&dir);
    let b = open(&top, true);
    let want = merge(map(&top).iter().map(|e| {
        let mut f = ExtentFlags::empty();
        if !e.data {
            f |= ExtentFlags::HOLE;
        }
        if e.zero {
            f |= ExtentFlags::ZERO;
        }
        (e.length, f)
    }));
    let mut out = [Extent::default(); 64];
    let n = b.extents(0, b.size(), &mut out).unwrap();
    let got = merge(out[..n].iter().map(|e| (e.len, e.flags)));
    assert_eq!(got, want);
    // A request starting inside a run, and one capped by `out`.
    let n = b.extents(100, 1000, &mut out).unwrap();
    assert_eq!(out[..n].iter().map(|e| e.len).sum::<u64>(), 1000);
    assert_eq!(b.extents(0, b.size(), &mut out[..1]).unwrap(), 1);
}

/// qemu-img map's depth is 0-based and names the bottom layer where no
/// layer has the data; qemu:allocation-depth is 1-based with 0 there.
fn depth_from_map(path: &Path) -> Vec<(u64, u32)> {
    merge(
        map(path)
            .iter()
            .map(|e| (e.length, if e.present { e.depth + 1 } else { 0 })),
    )
}

fn depths(b: &dyn Backend) -> Vec<(u64, u32)> {
    let mut out = [DepthExtent::default(); 64];
    let n = b.allocation_depth(0, b.size(), &mut out).unwrap();
    merge(out[..n].iter().map(|d| (d.len, d.depth)))
}

#[test]
fn allocation_depth_matches_qemu_img_map() {
    let dir = Dir::new("depth");
    let (base, top) = chain(&dir);
    // Three layers: mid between base and top.
    let mid = dir.path("mid.qcow2");
    create(&mid, "4M", Some((&base, "qcow2")));
    qemu_io(&mid, &["write -P 0x22 1536k 256k"]);
    run(
        "qemu-img",
        &["rebase", "-u", "-F", "qcow2", "-b", s(&mid), s(&top)],
    );
    let got = depths(&open(&top, true));
    assert_eq!(got, depth_from_map(&top));
    for d in [0, 1, 2, 3] {
        assert!(
            got.iter().any(|&(_, x)| x == d),
            "depth {d} present: {got:?}"
        );
    }
}

/// The same numbers qemu-nbd itself sends for `qemu:allocation-depth`.
#[test]
fn allocation_depth_matches_qemu_nbd() {
    let dir = Dir::new("qnbd");
    let (_, top) = chain(&dir);
    assert_eq!(depths(&open(&top, true)), qemu_nbd_depths(&top, &dir));
    // A backing file shorter than the overlay: qemu counts the zeroes past
    // its end as allocated in that layer.
    let (short, long) = (dir.path("short.qcow2"), dir.path("long.qcow2"));
    create(&short, "1M", None);
    qemu_io(&short, &["write -P 1 0 64k"]);
    create(&long, "3M", Some((&short, "qcow2")));
    qemu_io(&long, &["write -P 2 2M 64k"]);
    let ours = depths(&open(&long, true));
    assert_eq!(ours, qemu_nbd_depths(&long, &dir));
    assert!(
        ours.contains(&(MIB - 65536, 0)) && ours.contains(&(MIB, 2)),
        "{ours:?}"
    );
}

fn qemu_nbd_depths(top: &Path, dir: &Dir) -> Vec<(u64, u32)> {
    let sock = dir.path("s");
    let mut q = std::process::Command::new("qemu-nbd")
        .args(["-r", "-A", "-f", "qcow2", "-k", s(&sock), s(top)])
        .spawn()
        .expect("qemu-nbd: install qemu-utils");
    // Up to 10 s on a loaded machine.
    for _ in 0..500 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///?socket={}", s(&sock));
    let out = run("nbdinfo", &["--map=qemu:allocation-depth", &uri]);
    let _ = q.kill();
    let _ = q.wait();
    let _ = std::fs::remove_file(&sock);
    merge(out.lines().map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w[1].parse::<u64>().unwrap(), w[2].parse::<u32>().unwrap())
    }))
}

/// Writes of every kind through us; qemu must find a consistent image
/// with exactly the bytes we meant.
fn exercise(b: &ImageBackend, model: &mut [u8]) {
    let mut put = |off: u64, data: &[u8]| {
        b.write_at(off, data, false).unwrap();
        model[off as usize..off as usize + data.len()].copy_from_slice(data);
    };
    put(0, &[0x42; 4096]);
    put(65536 - 7, &[0x43; 100_000]); // crosses clusters, unaligned
    put(3 * MIB + 5, &[0x44; 3]);
    b.write_at(2 * MIB, &[0x45; 200_000], true).unwrap();
    model[2 * MIB as usize..2 * MIB as usize + 200_000].fill(0x45);
    let mut zero = |off: u64, len: u64, flags| {
        b.write_zeroes(off, len, flags).unwrap();
        model[off as usize..(off + len) as usize].fill(0);
    };
    zero(2 * MIB + 1000, 70_000, ZeroFlags::MAY_TRIM);
    zero(2 * MIB + 128 * 1024, 64 * 1024, ZeroFlags::empty());
    zero(512 * 1024, 1000, ZeroFlags::MAY_TRIM | ZeroFlags::FUA);
    // Trim of whole clusters: contents unspecified, so the model takes
    // whatever reads back (and qemu must agree below).
    b.trim(MIB, 256 * 1024, false).unwrap();
    b.read_at(MIB, &mut model[MIB as usize..MIB as usize + 256 * 1024])
        .unwrap();
    b.flush().unwrap();
    assert_eq!(read_all(b), *model);
}

#[test]
fn our_writes_pass_qemu_img_check_and_read_back_in_qemu() {
    let dir = Dir::new("write");
    let img = dir.path("w.qcow2");
    create(&img, "4M", None);
    let b = open(&img, false);
    let mut model = vec![0u8; 4 * MIB as usize];
    exercise(&b, &mut model);
    drop(b);
    check(&img);
    assert_eq!(raw_bytes(&img, &dir), model);
}

#[test]
fn writes_to_an_overlay_leave_the_base_alone() {
    let dir = Dir::new("overlay");
    let (base, top) = chain(&dir);
    let before = raw_bytes(&base, &dir);
    let b = open(&top, false);
    let mut model = read_all(&b);
    assert_eq!(model, raw_bytes(&top, &dir));
    exercise(&b, &mut model);
    // A discard over the backing file must not bring base data back.
    b.trim(0, 4 * MIB, false).unwrap();
    b.read_at(0, &mut model).unwrap();
    drop(b);
    check(&top);
    check(&base);
    assert_eq!(raw_bytes(&top, &dir), model);
    assert_eq!(raw_bytes(&base, &dir), before, "base untouched");
    assert!(
        model[..MIB as usize].iter().all(|&x| x != 0xaa),
        "no base data resurfaced"
    );
}

#[test]
fn backing_override_and_none() {
    let dir = Dir::new("override");
    let (base, top) = chain(&dir);
    let other = dir.path("other.raw");
    std::fs::write(&other, vec![0x77u8; 4 * MIB as usize]).unwrap();
    let with = |backing: &Path| ImageOptions {
        readonly: true,
        backing: Some(backing.into()),
        ..ImageOptions::default()
    };
    let b = ImageBackend::open(&top, &with(&other)).unwrap();
    let mut buf = [0u8; 4];
    b.read_at(0, &mut buf).unwrap();
    assert_eq!(
        buf, [0x77; 4],
        "unallocated cluster comes from the override"
    );
    b.read_at(512 * 1024, &mut buf).unwrap();
    assert_eq!(buf, [0xbb; 4], "top's own data");
    let none = ImageBackend::open(&top, &with(Path::new(""))).unwrap();
    none.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, [0; 4], "no backing: unallocated reads zero");
    let mut d = [DepthExtent::default(); 1];
    none.allocation_depth(0, 4096, &mut d).unwrap();
    assert_eq!(d[0].depth, 0);
    // The image's own backing file is opened read-only: a read-only base works.
    let mut perm = std::fs::metadata(&base).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&base, perm).unwrap();
    let rw = open(&top, false);
    rw.write_at(0, &[1], false).unwrap();
}

#[test]
fn resize_grows_and_qemu_sees_it() {
    let dir = Dir::new("resize");
    let img = dir.path("r.qcow2");
    create(&img, "1M", None);
    let b = open(&img, false);
    assert!(b.caps().contains(Caps::RESIZE));
    b.resize(3 * MIB).unwrap();
    assert_eq!(b.size(), 3 * MIB);
    b.write_at(3 * MIB - 1, &[9], false).unwrap();
    drop(b);
    check(&img);
    let raw = raw_bytes(&img, &dir);
    assert_eq!(raw.len() as u64, 3 * MIB);
    assert_eq!(raw[raw.len() - 1], 9);
}

/// A header field made hostile must give an error at open, never a panic
/// or a huge allocation.
#[test]
fn hostile_images_are_refused() {
    let dir = Dir::new("hostile");
    let good = dir.path("good.qcow2");
    create(&good, "1M", None);
    qemu_io(&good, &["write -P 1 0 64k"]);
    let bytes = std::fs::read(&good).unwrap();
    // (offset, big-endian value) patches of the header.
    let cases: &[(&str, usize, &[u8])] = &[
        ("cluster_bits 40", 20, &40u32.to_be_bytes()),
        ("l1_size 2^31", 36, &(1u32 << 31).to_be_bytes()),
        ("size 2^63", 24, &(1u64 << 63).to_be_bytes()),
        ("refcount table huge", 56, &u32::MAX.to_be_bytes()),
        ("version 9", 4, &9u32.to_be_bytes()),
    ];
    for (what, at, val) in cases {
        let mut b = bytes.clone();
        b[*at..*at + val.len()].copy_from_slice(val);
        let p = dir.path("bad.qcow2");
        std::fs::write(&p, &b).unwrap();
        // Writable: the refcount table is loaded too.
        let r = ImageBackend::open(&p, &ImageOptions::default());
        assert!(r.is_err(), "{what}: opened");
    }
    // An L1 table past the end of the file: qemu too opens such an image
    // (it reads as if the table were all zero entries); what matters is
    // that reading it neither panics nor returns old data.
    let mut b = bytes.clone();
    b[40..48].copy_from_slice(&(1u64 << 50).to_be_bytes());
    let p = dir.path("l1.qcow2");
    std::fs::write(&p, &b).unwrap();
    if let Ok(img) = ImageBackend::open(
        &p,
        &ImageOptions {
            readonly: true,
            ..Default::default()
        },
    ) {
        let mut buf = vec![0u8; 65536];
        if img.read_at(0, &mut buf).is_ok() {
            assert!(buf.iter().all(|&x| x == 0));
        }
    }
    // zstd compression: refused, not misread as zlib.
    let z = dir.path("zstd.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compression_type=zstd",
            s(&z),
            "1M",
        ],
    );
    assert!(ImageBackend::open(&z, &ImageOptions::default()).is_err());
    // A truncated image, and one that is its own backing file.
    let p = dir.path("short.qcow2");
    std::fs::write(&p, &bytes[..100]).unwrap();
    assert!(ImageBackend::open(&p, &ImageOptions::default()).is_err());
    let lp = dir.path("loop.qcow2");
    create(&lp, "1M", None);
    run(
        "qemu-img",
        &["rebase", "-u", "-F", "qcow2", "-b", s(&lp), s(&lp)],
    );
    let e = ImageBackend::open(&lp, &ImageOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("chain"), "{e}");
}

#[test]
fn registry_builds_qcow2_with_keys() {
    let dir = Dir::new("registry");
    let (base, top) = chain(&dir);
    let words = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let set = nbd_backends::build("qcow2", &words(&[s(&top)]), "", true).unwrap();
    let b: &Arc<dyn Backend> = &set.get("").unwrap().backend;
    assert_eq!(b.size(), 4 * MIB);
    // The format, never the server path: LIST answers it before TLS.
    let d = b.description().unwrap();
    assert!(d.contains("qcow2") && !d.contains(s(&top)), "{d}");
    assert_eq!(
        set.get("").unwrap().description.as_deref(),
        Some(d.as_str())
    );
    let args = words(&[
        s(&top),
        &format!("backing={}", s(&base)),
        "backing-format=qcow2",
    ]);
    nbd_backends::build("qcow2", &args, "", true).unwrap();
    let e = nbd_backends::build("qcow2", &words(&[s(&top), "backing-format=vhd"]), "", true);
    assert!(e.err().unwrap().contains("unknown image format 'vhd'"));
    let e = nbd_backends::build("qcow2", &words(&["/nonexistent.qcow2"]), "", true);
    assert!(e.err().unwrap().starts_with("qcow2: /nonexistent.qcow2: "));
}

#[test]
fn vmdk_reads_match_qemu_and_is_read_only() {
    let dir = Dir::new("vmdk");
    let (_, top) = chain(&dir);
    // imago reads descriptor + flat (and zero) extents, not sparse ones.
    for sub in ["monolithicFlat", "twoGbMaxExtentFlat"] {
        let vmdk = dir.path(&format!("{sub}.vmdk"));
        let o = format!("subformat={sub}");
        run(
            "qemu-img",
            &["convert", "-O", "vmdk", "-o", &o, s(&top), s(&vmdk)],
        );
        let words = vec![s(&vmdk).to_owned()];
        let set = nbd_backends::build("vmdk", &words, "", false).unwrap();
        let b = &set.get("").unwrap().backend;
        assert!(
            b.caps().contains(Caps::READ_ONLY),
            "vmdk is served read-only"
        );
        assert_eq!(read_all(&**b), raw_bytes(&top, &dir), "{sub}");
        assert!(b.write_at(0, &[1], false).is_err());
    }
    let sparse = dir.path("sparse.vmdk");
    run("qemu-img", &["convert", "-O", "vmdk", s(&top), s(&sparse)]);
    let e = nbd_backends::build("vmdk", &[s(&sparse).to_owned()], "", false);
    assert!(
        e.err().unwrap().contains("sparse"),
        "sparse vmdk: a clear error"
    );
}

/// Four worker threads write, zero and trim their own 2 MiB quarters at
/// once, as the driver's pool does: imago's shared allocator (L2 tables,
/// refcount blocks) must stay consistent.
#[test]
fn concurrent_writers_keep_the_image_consistent() {
    let dir = Dir::new("concurrent");
    let img = dir.path("c.qcow2");
    create(&img, "8M", None);
    let b = Arc::new(open(&img, false));
    let quarters: Vec<Vec<u8>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4u64)
            .map(|q| {
                let b = Arc::clone(&b);
                sc.spawn(move || {
                    let base = q * 2 * MIB;
                    let mut model = vec![0u8; 2 * MIB as usize];
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ q;
                    for i in 0..60u64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let off = x % (2 * MIB - 70_000);
                        let len = 1 + (x >> 32) % 70_000;
                        let (o, l) = (off as usize, len as usize);
                        match i % 5 {
                            3 => {
                                b.write_zeroes(base + off, len, ZeroFlags::MAY_TRIM)
                                    .unwrap();
                                model[o..o + l].fill(0);
                            }
                            4 => {
                                b.write_zeroes(base + off, len, ZeroFlags::empty()).unwrap();
                                model[o..o + l].fill(0);
                            }
                            _ => {
                                let v = vec![(i as u8) | 1; l];
                                b.write_at(base + off, &v, false).unwrap();
                                model[o..o + l].copy_from_slice(&v);
                            }
                        }
                    }
                    model
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    b.flush().unwrap();
    let model = quarters.concat();
    assert_eq!(read_all(&*b), model);
    drop(b);
    check(&img);
    assert_eq!(raw_bytes(&img, &dir), model);
}
