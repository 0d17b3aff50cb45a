//! Range checks and error values shared by the backends.

use std::io;

/// `EINVAL`: a read, trim, cache or extents request outside the export
/// (checklist 67, 68, 72). The driver maps it to `NBD_EINVAL`.
pub(crate) fn out_of_range() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// `ENOSPC`: a write or write_zeroes past the end (checklist 69, 72).
pub(crate) fn no_space() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

/// `EROFS`: a modification of a read-only export (checklist 70, 71); the
/// driver maps it to `NBD_EPERM`.
pub(crate) fn read_only() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

/// An I/O error as a user reads it: the message without Rust's
/// " (os error N)" suffix, which says nothing more to a user.
pub fn plain_error(e: &io::Error) -> String {
    let s = e.to_string();
    match (e.raw_os_error(), s.rfind(" (os error ")) {
        (Some(_), Some(i)) if s.ends_with(')') => s[..i].to_owned(),
        _ => s,
    }
}

/// End of `[offset, offset + len)` if it lies within `size`; overflow of
/// `offset + len` is detected, never wrapped (checklist 68).
pub(crate) fn range_end(offset: u64, len: u64, size: u64) -> Option<u64> {
    offset.checked_add(len).filter(|&end| end <= size)
}

/// Check a read-like request; returns its end.
pub(crate) fn check_read(offset: u64, len: u64, size: u64) -> io::Result<u64> {
    range_end(offset, len, size).ok_or_else(out_of_range)
}

/// Check a write-like request; returns its end.
pub(crate) fn check_write(offset: u64, len: u64, size: u64) -> io::Result<u64> {
    range_end(offset, len, size).ok_or_else(no_space)
}

/// Length of a buffer as u64 (lossless on every supported target).
pub(crate) fn len64(buf: &[u8]) -> u64 {
    buf.len() as u64
}

/// True when every byte of `data` is zero. ORs each 64-byte block into one
/// word, which the compiler vectorises, and branches once per block: a
/// mostly-zero 4 KiB page is scanned several times faster than word by word
/// (`write-mostly-zero` in benches/memory.rs), and real data still stops the
/// scan in its first block.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    let (blocks, tail) = data.as_chunks::<64>();
    let fold = |b: &[u8; 64]| {
        let (words, _) = b.as_chunks::<8>();
        words.iter().fold(0, |acc, w| acc | u64::from_ne_bytes(*w))
    };
    blocks.iter().all(|b| fold(b) == 0) && tail.iter().all(|&b| b == 0)
}

/// Push an extent into `out[*n..]`, merging it with the previous one when
/// the flags match. Returns false when `out` is full (the extent is dropped).
pub(crate) fn push_extent(
    out: &mut [crate::Extent],
    n: &mut usize,
    len: u64,
    flags: crate::ExtentFlags,
) -> bool {
    if len == 0 {
        return true;
    }
    if let Some(prev) = n.checked_sub(1).and_then(|i| out.get_mut(i))
        && prev.flags == flags
    {
        prev.len += len;
        return true;
    }
    match out.get_mut(*n) {
        Some(slot) => {
            *slot = crate::Extent { len, flags };
            *n += 1;
            true
        }
        None => false,
    }
}

/// One "allocated data" extent for `[offset, offset + len)` clipped to
/// `size`: what a backend that knows nothing of holes reports.
pub(crate) fn all_data(
    size: u64,
    offset: u64,
    len: u64,
    out: &mut [crate::Extent],
) -> io::Result<usize> {
    if offset > size {
        return Err(out_of_range());
    }
    let end = offset.saturating_add(len).min(size);
    match out.first_mut() {
        Some(first) if end > offset => {
            *first = crate::Extent {
                len: end - offset,
                flags: crate::ExtentFlags::empty(),
            };
            Ok(1)
        }
        _ => Ok(0),
    }
}

/// A new, already unlinked, read-write file in `$TMPDIR` (default
/// `/var/tmp`, as nbdkit: big, and not RAM like `/tmp` may be), for caches
/// and decompressed images. Only this process can reach it, and it
/// vanishes with the last descriptor.
pub(crate) fn temp_file(tag: &str) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir =
        std::env::var_os("TMPDIR").map_or_else(|| "/var/tmp".into(), std::path::PathBuf::from);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = dir.join(format!(
        "nbdd-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

/// Fill `out` with extents for `[offset, end)` by calling `one(pos, end,
/// buf)` for what is left until `out` is full or `end` is reached, merging
/// neighbours of the same kind. For filters whose layer below answers in
/// pieces (a split request, a run cut at a cached block): clients get the
/// whole answer in one reply, as from any other backend.
pub(crate) fn extents_loop(
    offset: u64,
    end: u64,
    out: &mut [crate::Extent],
    mut one: impl FnMut(u64, u64, &mut [crate::Extent]) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut buf = [crate::Extent::default(); 64];
    let (mut n, mut pos) = (0, offset);
    while pos < end && n < out.len() {
        let got = one(pos, end, &mut buf)?;
        if got == 0 {
            break;
        }
        for e in &buf[..got] {
            let len = e.len.min(end - pos);
            if len == 0 || !push_extent(out, &mut n, len, e.flags) {
                return Ok(n);
            }
            pos += len;
        }
    }
    Ok(n)
}

/// nbdkit's boolean spellings (`nbdkit_parse_bool`), case-insensitive.
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// A secret parameter in nbdkit's forms (`password=`, `cookie=`):
/// `+FILE` reads it from FILE, `-` from standard input, `-N` from file
/// descriptor N (one line each, without its newline); anything else is the
/// value itself.
pub(crate) fn read_secret(owner: &str, key: &str, v: &str) -> Result<String, String> {
    use std::io::BufRead as _;
    let from = |path: &str| -> Result<String, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("{owner}: {key}: {path}: {e}"))?;
        let mut line = String::new();
        std::io::BufReader::new(f)
            .read_line(&mut line)
            .map_err(|e| format!("{owner}: {key}: {path}: {e}"))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    };
    match v.strip_prefix('+').or_else(|| v.strip_prefix('-')) {
        Some(path) if v.starts_with('+') => from(path),
        Some("") => from("/dev/stdin"),
        Some(fd) if fd.bytes().all(|b| b.is_ascii_digit()) => from(&format!("/proc/self/fd/{fd}")),
        _ => Ok(v.to_owned()),
    }
}

/// Push a depth run into `out[*n..]`, merging it with the previous one when
/// the depths match. Returns false when `out` is full (the run is dropped).
pub(crate) fn push_depth(
    out: &mut [crate::DepthExtent],
    n: &mut usize,
    len: u64,
    depth: u32,
) -> bool {
    if len == 0 {
        return true;
    }
    if let Some(prev) = n.checked_sub(1).and_then(|i| out.get_mut(i))
        && prev.depth == depth
    {
        prev.len += len;
        return true;
    }
    match out.get_mut(*n) {
        Some(slot) => {
            *slot = crate::DepthExtent { len, depth };
            *n += 1;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_and_secrets_in_nbdkits_forms() {
        for t in ["1", "true", "T", "yes", "y", "ON"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "false", "F", "no", "n", "off"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("maybe"), None);
        let path = std::env::temp_dir().join(format!("nbd-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\nsecond line\n").unwrap();
        let plus = format!("+{}", path.display());
        assert_eq!(read_secret("x", "password", &plus).unwrap(), "s3cret");
        assert_eq!(read_secret("x", "password", "plain").unwrap(), "plain");
        assert_eq!(read_secret("x", "password", "-x").unwrap(), "-x");
        let _ = std::fs::remove_file(&path);
        let e = read_secret("curl", "password", "+/nonexistent-nbdd").unwrap_err();
        assert!(e.starts_with("curl: password: /nonexistent-nbdd: "), "{e}");
    }
}
