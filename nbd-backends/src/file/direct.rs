//! Positional I/O, buffered or `O_DIRECT`.
//!
//! `O_DIRECT` requires the file offset, the length and the memory address
//! to be multiples of the device's logical block size. The driver's buffers
//! sit after a reply header at arbitrary addresses, and clients may send
//! unaligned requests, so unaligned I/O goes through a per-thread aligned
//! bounce buffer: reads cover the aligned span and copy out; writes
//! read-modify-write the partial first and last blocks. The bounce buffer is
//! allocated once per worker thread, never per request.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{PoisonError, RwLock};

/// Alignment used for `O_DIRECT`: 4096 is a multiple of every logical
/// block size Linux supports for direct I/O (512 or 4096 in practice).
pub(crate) const ALIGN: u64 = 4096;
const ALIGN_USIZE: usize = ALIGN as usize;
/// Size of the per-thread bounce buffer: big requests are done in slices.
const BOUNCE: usize = 1 << 20;

thread_local! {
    static BOUNCE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with this thread's aligned bounce buffer of `BOUNCE` bytes.
fn with_bounce<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    BOUNCE_BUF.with(|cell| {
        let mut v = cell.borrow_mut();
        if v.is_empty() {
            // Over-allocate by one alignment unit and slice at the first
            // aligned address: aligned memory without unsafe code. The Vec
            // is never resized afterwards, so the address stays aligned.
            *v = vec![0; BOUNCE + ALIGN_USIZE];
        }
        let skew = v.as_ptr().align_offset(ALIGN_USIZE);
        f(&mut v[skew..skew + BOUNCE])
    })
}

/// pread until `buf` is full; bytes past the end of file read as zeroes
/// (the file may have been shortened behind our back).
pub(crate) fn pread_full(file: &File, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                buf.fill(0);
                return Ok(());
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn aligned(offset: u64, buf: &[u8]) -> bool {
    offset.is_multiple_of(ALIGN)
        && (buf.len() as u64).is_multiple_of(ALIGN)
        && buf.as_ptr().align_offset(ALIGN_USIZE) == 0
}

/// The file plus how to reach it.
pub(crate) struct Io {
    pub(crate) file: File,
    /// `O_DIRECT` is in effect.
    pub(crate) direct: bool,
    /// With `O_DIRECT`, an unaligned write rewrites whole blocks, so it
    /// takes this lock exclusively; aligned writes take it shared. Without
    /// it a concurrent write to the other bytes of a shared block could be
    /// overwritten with the stale copy.
    rmw: RwLock<()>,
    /// How [`Io::read_cached`] may read without blocking (see [`Cached`]).
    cached: AtomicU8,
}

/// How a read that must not block is done, per file.
#[repr(u8)]
enum Cached {
    /// `preadv2(RWF_NOWAIT)`: the kernel fails it rather than wait.
    NoWait = 0,
    /// A plain `pread`: the file lives in memory (tmpfs, ramfs), which
    /// never waits for a disk (and does not support `RWF_NOWAIT`).
    Memory = 1,
    /// Never: `O_DIRECT`, or the filesystem refused `RWF_NOWAIT`.
    Never = 2,
}

/// `statfs` magic numbers of memory filesystems (linux/magic.h).
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

impl Io {
    pub(crate) fn new(file: File, direct: bool) -> Self {
        // `f_type`'s type differs between architectures: cast portably.
        #[allow(clippy::unnecessary_cast)]
        let in_memory = rustix::fs::fstatfs(&file)
            .is_ok_and(|s| matches!(s.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC));
        let cached = match (direct, in_memory) {
            (true, _) => Cached::Never,
            (false, true) => Cached::Memory,
            (false, false) => Cached::NoWait,
        };
        Self {
            file,
            direct,
            rmw: RwLock::new(()),
            cached: AtomicU8::new(cached as u8),
        }
    }

    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if !self.direct || aligned(offset, buf) {
            return pread_full(&self.file, offset, buf);
        }
        let end = offset + buf.len() as u64;
        with_bounce(|bounce| {
            let mut span = offset - offset % ALIGN;
            while span < end {
                let span_end = (span + BOUNCE as u64).min(end.next_multiple_of(ALIGN));
                let chunk = &mut bounce[..(span_end - span) as usize];
                pread_full(&self.file, span, chunk)?;
                let from = span.max(offset);
                let to = span_end.min(end);
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&chunk[(from - span) as usize..(to - span) as usize]);
                span = span_end;
            }
            Ok(())
        })
    }

    /// The whole of `buf` if it can be read without waiting for a disk
    /// (one system call), else `false`: `preadv2(RWF_NOWAIT)` succeeds only
    /// from the page cache; a file in memory is read plainly. Not for
    /// `O_DIRECT`, which bypasses the cache.
    pub(crate) fn read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        let want = buf.len();
        if want == 0 {
            return false;
        }
        match self.cached.load(Ordering::Relaxed) {
            x if x == Cached::Memory as u8 => {
                matches!(self.file.read_at(buf, offset), Ok(n) if n == want)
            }
            x if x == Cached::NoWait as u8 => {
                let mut iov = [io::IoSliceMut::new(buf)];
                let flags = rustix::io::ReadWriteFlags::NOWAIT;
                match rustix::io::preadv2(&self.file, &mut iov, offset, flags) {
                    Ok(n) => n == want,
                    Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => {
                        // Not on this filesystem: stop asking.
                        self.cached.store(Cached::Never as u8, Ordering::Relaxed);
                        false
                    }
                    Err(_) => false,
                }
            }
            _ => false,
        }
    }

    /// The whole of `data` written if that cannot wait for a disk, else
    /// `false` (nothing, or only part, written): only for a file in
    /// memory. Buffered `pwritev2(RWF_NOWAIT)` would extend this to disk
    /// filesystems, but ext4 refuses it (EOPNOTSUPP, Linux 6.18), so a
    /// write to one always goes to a worker, which may have to wait for
    /// writeback or block allocation. Errors (ENOSPC on a full tmpfs) are
    /// left for the worker's write to report.
    pub(crate) fn write_cached(&self, offset: u64, data: &[u8]) -> bool {
        !data.is_empty()
            && self.cached.load(Ordering::Relaxed) == Cached::Memory as u8
            && matches!(self.file.write_at(data, offset), Ok(n) if n == data.len())
    }

    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !self.direct {
            return self.file.write_all_at(data, offset);
        }
        if aligned(offset, data) {
            let _shared = self.rmw.read().unwrap_or_else(PoisonError::into_inner);
            return self.file.write_all_at(data, offset);
        }
        let _exclusive = self.rmw.write().unwrap_or_else(PoisonError::into_inner);
        let end = offset + data.len() as u64;
        with_bounce(|bounce| {
            let mut span = offset - offset % ALIGN;
            while span < end {
                let span_end = (span + BOUNCE as u64).min(end.next_multiple_of(ALIGN));
                let chunk = &mut bounce[..(span_end - span) as usize];
                // Only the partial first and last blocks need old contents.
                if span < offset {
                    pread_full(&self.file, span, &mut chunk[..ALIGN_USIZE])?;
                }
                if span_end > end {
                    let last = chunk.len() - ALIGN_USIZE;
                    pread_full(&self.file, span_end - ALIGN, &mut chunk[last..])?;
                }
                let from = span.max(offset);
                let to = span_end.min(end);
                chunk[(from - span) as usize..(to - span) as usize]
                    .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
                self.file.write_all_at(chunk, span)?;
                span = span_end;
            }
            Ok(())
        })
    }
}
