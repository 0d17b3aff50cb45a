//! Against real `xz` output (the xz-utils tool, which the test suite
//! installs), so the index reader is checked on the format as written.

use super::*;
use crate::MemoryBackend;

fn xz_tool() -> std::path::PathBuf {
    let p = std::path::PathBuf::from("/usr/bin/xz");
    assert!(p.exists(), "xz is missing: apt-get install -y xz-utils");
    p
}

/// Compress `data` with `xz ARGS`.
fn compress(data: &[u8], args: &[&str]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(xz_tool())
        .args(args)
        .args(["-c", "-T1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn image(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) % 253) as u8 ^ (i >> 13) as u8)
        .collect()
}

fn backend(bytes: &[u8]) -> Arc<dyn Backend> {
    let m = MemoryBackend::new(bytes.len() as u64).unwrap();
    m.write_at(0, bytes, false).unwrap();
    Arc::new(m)
}

#[test]
fn random_reads_across_blocks_and_streams() {
    let data = image(300_000);
    let mut xz = compress(&data[..200_000], &["--block-size=65536"]);
    // A second stream, after stream padding, as `cat a.xz b.xz` makes.
    xz.extend_from_slice(&[0; 8]);
    xz.extend_from_slice(&compress(&data[200_000..], &["--block-size=30000"]));
    let opts = XzOptions {
        max_depth: 2,
        ..XzOptions::default()
    };
    let x = Xz::new(backend(&xz), opts).unwrap();
    assert_eq!(x.size(), data.len() as u64);
    assert!(x.index.blocks.len() >= 8, "{}", x.index.blocks.len());
    assert!(x.caps().contains(Caps::READ_ONLY));
    for &(off, len) in &[
        (0usize, 10usize),
        (65_530, 20),
        (199_990, 40),
        (1, 299_999),
        (299_999, 1),
    ] {
        let mut buf = vec![0; len];
        x.read_at(off as u64, &mut buf).unwrap();
        assert!(buf == data[off..off + len], "read at {off}+{len}");
    }
    assert!(x.write_at(0, &[1], false).is_err());
}

#[test]
fn limits_and_corruption() {
    let data = image(100_000);
    let xz = compress(&data, &[]);
    let small = XzOptions {
        max_block: 1000,
        ..XzOptions::default()
    };
    let e = Xz::new(backend(&xz), small).err().unwrap();
    assert!(e.contains("xz-max-block=1000"), "{e}");
    let mut bad = xz.clone();
    bad[100] ^= 0xff;
    let x = Xz::new(backend(&bad), XzOptions::default()).unwrap();
    let e = x.read_at(0, &mut [0; 10]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "integrity check fails");
    assert!(Xz::new(backend(&data[..4096]), XzOptions::default()).is_err());
}
