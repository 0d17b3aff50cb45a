//! `split FILE FILE...`: regular files concatenated, in command-line
//! order, into one disk. A request that crosses a boundary is split into
//! one pread/pwrite per file. Sizes are read once at start-up: the files
//! must not be resized while served.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::FallocateFlags;

use crate::registry::Params;
use crate::util::{check_read, check_write, len64, read_only};
use crate::{Backend, Caps, ZeroFlags};

struct Part {
    file: File,
    /// Offset of the file's first byte in the disk.
    start: u64,
    len: u64,
}

/// Several files as one disk.
pub struct SplitBackend {
    parts: Vec<Part>,
    size: u64,
    readonly: bool,
}

impl SplitBackend {
    /// Open every path (read-only with `readonly`).
    ///
    /// # Errors
    ///
    /// A message naming the file that cannot be opened or is not a
    /// regular file, or an empty list.
    pub fn open(paths: &[&str], readonly: bool) -> Result<Self, String> {
        if paths.is_empty() {
            return Err("split: missing parameter file (e.g. split a.img b.img)".into());
        }
        let mut parts = Vec::with_capacity(paths.len());
        let mut start = 0u64;
        for path in paths {
            let file = OpenOptions::new()
                .read(true)
                .write(!readonly)
                .open(path)
                .map_err(|e| format!("split: {path}: {e}"))?;
            let meta = file.metadata().map_err(|e| format!("split: {path}: {e}"))?;
            if !meta.is_file() {
                return Err(format!("split: {path}: not a regular file"));
            }
            let len = meta.len();
            parts.push(Part { file, start, len });
            start = start
                .checked_add(len)
                .filter(|&s| s <= crate::MAX_SIZE)
                .ok_or_else(|| "split: the files add up to more than 2^63-1 bytes".to_owned())?;
        }
        Ok(Self {
            parts,
            size: start,
            readonly,
        })
    }

    pub(crate) fn from_params(p: &mut Params<'_>, readonly: bool) -> Result<Self, String> {
        let files = p.take_all("file");
        Self::open(&files, readonly)
    }

    /// How many files make the disk.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// Run `f(file, file_offset, range_in_request)` over the pieces of
    /// `[offset, end)`, in order.
    fn each(
        &self,
        offset: u64,
        end: u64,
        mut f: impl FnMut(&File, u64, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        // The first part that ends after `offset` (parts are sorted).
        let first = self.parts.partition_point(|p| p.start + p.len <= offset);
        let mut at = offset;
        for part in &self.parts[first..] {
            if at >= end {
                break;
            }
            let n = (part.start + part.len).min(end) - at;
            if n == 0 {
                continue; // an empty file
            }
            let r = (at - offset) as usize..(at - offset + n) as usize;
            f(&part.file, at - part.start, r)?;
            at += n;
        }
        Ok(())
    }
}

impl Backend for SplitBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        // One set of files shared by every connection, and flush syncs
        // them all: safe for multi-conn.
        let common = Caps::FLUSH | Caps::CACHE | Caps::MULTI_CONN;
        if self.readonly {
            common | Caps::READ_ONLY
        } else {
            common | Caps::FUA | Caps::TRIM | Caps::WRITE_ZEROES
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = check_read(offset, len64(buf), self.size)?;
        self.each(offset, end, |file, at, r| {
            file.read_exact_at(&mut buf[r], at)
        })
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        if self.readonly {
            return Err(read_only());
        }
        let end = check_write(offset, len64(data), self.size)?;
        self.each(offset, end, |file, at, r| {
            file.write_all_at(&data[r], at)?;
            if fua { file.sync_data() } else { Ok(()) }
        })
    }

    fn flush(&self) -> io::Result<()> {
        self.parts.iter().try_for_each(|p| p.file.sync_data())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        if self.readonly {
            return Err(read_only());
        }
        let end = check_read(offset, len, self.size)?;
        // A hint: a filesystem that cannot punch holes keeps the data.
        self.each(offset, end, |file, at, r| {
            let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            let _ = rustix::fs::fallocate(file, mode, at, r.len() as u64);
            if fua { file.sync_data() } else { Ok(()) }
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        if self.readonly {
            return Err(read_only());
        }
        if flags.contains(ZeroFlags::FAST) {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let end = check_write(offset, len, self.size)?;
        let zeroes = [0u8; 64 * 1024];
        let mut at = offset;
        while at < end {
            let n = (end - at).min(zeroes.len() as u64);
            self.write_at(at, &zeroes[..n as usize], false)?;
            at += n;
        }
        if flags.contains(ZeroFlags::FUA) {
            self.flush()?;
        }
        Ok(())
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        check_read(offset, len, self.size).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_one_disk_and_writes_cross_boundaries() {
        let dir = std::env::temp_dir().join(format!("nbd-split-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths: Vec<String> = [(b'a', 1000usize), (b'b', 0), (b'c', 24), (b'd', 4096)]
            .iter()
            .map(|&(c, n)| {
                let p = dir.join(format!("{}", c as char));
                std::fs::write(&p, vec![c; n]).unwrap();
                p.display().to_string()
            })
            .collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let s = SplitBackend::open(&refs, false).unwrap();
        assert_eq!(s.size(), 1000 + 24 + 4096);
        let mut b = vec![0u8; 30];
        s.read_at(990, &mut b).unwrap();
        assert_eq!(&b[..10], &[b'a'; 10]);
        assert_eq!(&b[10..], &[b'c'; 20]);
        s.write_at(998, &[1, 2, 3, 4], false).unwrap();
        s.write_zeroes(1020, 8, ZeroFlags::empty()).unwrap();
        s.flush().unwrap();
        assert_eq!(std::fs::read(&paths[0]).unwrap()[998..], [1, 2]);
        let c = std::fs::read(&paths[2]).unwrap();
        assert_eq!(c[..2], [3, 4]);
        assert_eq!(c[20..], [0, 0, 0, 0]);
        assert_eq!(std::fs::read(&paths[3]).unwrap()[..4], [0, 0, 0, 0]);
        assert!(s.read_at(5119, &mut [0; 2]).is_err());
        let ro = SplitBackend::open(&refs, true).unwrap();
        assert_eq!(
            ro.write_at(0, &[1], false).unwrap_err().raw_os_error(),
            Some(libc::EROFS)
        );
        let err = SplitBackend::open(&["/nonexistent/x"], true).err().unwrap();
        assert!(err.starts_with("split: /nonexistent/x: "), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
