//! `--filter=qcow2dec file IMAGE`: our own read-only decoder against
//! qemu's tools, and against corrupted images. Needs qemu-utils.

#[path = "qcow2/tools.rs"]
mod tools;

use std::path::Path;
use std::sync::Arc;

use nbd_backends::{Backend, Caps, DepthExtent, Extent, ExtentFlags};
use tools::{Dir, create, map, merge, qemu_io, raw_bytes, run, s};

fn dec(path: &Path) -> Result<Arc<dyn Backend>, String> {
    let args = vec![s(path).to_owned()];
    let set = nbd_backends::build_with_filters("file", &args, &["qcow2dec".to_owned()], "", false)?;
    Ok(Arc::clone(&set.get("").unwrap().backend))
}

fn read_all(b: &dyn Backend) -> Vec<u8> {
    let mut v = vec![0u8; b.size() as usize];
    b.read_at(0, &mut v).unwrap();
    v
}

/// Data, zero clusters, unallocated space, an unaligned tail; then the
/// same compressed by qemu-img convert -c.
fn images(dir: &Dir) -> Vec<std::path::PathBuf> {
    let plain = dir.path("plain.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            s(&plain),
            "3M",
        ],
    );
    qemu_io(
        &plain,
        &[
            "write -P 0x61 0 300k",
            "write -z 64k 8k",
            "write -P 0x62 1M 5000",
            "write -z 2M 64k",
            "write -P 0x63 3068k 4k",
        ],
    );
    let comp = dir.path("comp.qcow2");
    run(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", s(&plain), s(&comp)],
    );
    let big = dir.path("big.qcow2");
    create(&big, "8M", None);
    qemu_io(&big, &["write -P 0x64 100k 1M", "write -z 4M 1M"]);
    vec![plain, comp, big]
}

#[test]
fn contents_and_extents_match_qemu() {
    let dir = Dir::new("dec");
    for img in images(&dir) {
        let b = dec(&img).unwrap();
        assert!(
            b.caps()
                .contains(Caps::READ_ONLY | Caps::EXTENTS | Caps::ALLOCATION_DEPTH)
        );
        assert_eq!(read_all(&*b), raw_bytes(&img, &dir), "{}", img.display());
        let want = merge(map(&img).iter().map(|e| {
            let mut f = ExtentFlags::empty();
            if !e.data {
                f |= ExtentFlags::HOLE;
            }
            if e.zero {
                f |= ExtentFlags::ZERO;
            }
            (e.length, f)
        }));
        let mut out = vec![Extent::default(); 4096];
        let n = b.extents(0, b.size(), &mut out).unwrap();
        assert_eq!(
            merge(out[..n].iter().map(|e| (e.len, e.flags))),
            want,
            "{}",
            img.display()
        );
        let want = merge(map(&img).iter().map(|e| (e.length, u32::from(e.present))));
        let mut out = vec![DepthExtent::default(); 4096];
        let n = b.allocation_depth(0, b.size(), &mut out).unwrap();
        assert_eq!(merge(out[..n].iter().map(|d| (d.len, d.depth))), want);
        assert!(b.write_at(0, &[1], false).is_err(), "read-only");
    }
}

#[test]
fn unsupported_images_are_refused_with_a_reason() {
    let dir = Dir::new("refuse");
    let base = dir.path("base.qcow2");
    create(&base, "1M", None);
    let top = dir.path("top.qcow2");
    create(&top, "1M", Some((&base, "qcow2")));
    assert!(dec(&top).err().unwrap().contains("backing file"));
    let raw = dir.path("raw.img");
    std::fs::write(&raw, [0u8; 4096]).unwrap();
    assert!(dec(&raw).err().unwrap().contains("bad magic"));
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
    assert!(dec(&z).err().unwrap().contains("compression"));
}

/// Flip bytes all over the metadata of a real image: every open, read and
/// status call must return (data or an error), never panic.
#[test]
fn corrupted_metadata_never_panics() {
    let dir = Dir::new("corrupt");
    let imgs = images(&dir);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for img in &imgs {
        let good = std::fs::read(img).unwrap();
        // Metadata lives in the first clusters for these small images.
        let meta = good.len().min(64 * 1024);
        for round in 0..150 {
            let mut b = good.clone();
            for _ in 0..1 + round % 4 {
                let at = (next() as usize) % meta;
                b[at] = next() as u8;
            }
            let p = dir.path("mut.qcow2");
            std::fs::write(&p, &b).unwrap();
            let Ok(d) = dec(&p) else { continue };
            let mut buf = vec![0u8; d.size().min(8 << 20) as usize];
            let _ = d.read_at(0, &mut buf);
            let mut out = [Extent::default(); 64];
            let _ = d.extents(0, d.size(), &mut out);
        }
    }
}
