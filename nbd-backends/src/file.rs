//! A regular file or block device (`nbdd file disk.img`).
//!
//! The file is opened once and shared by every connection, so all of them
//! see one coherent store (`MULTI_CONN`). Calls block on the disk, so
//! [`Backend::execution`] is `Blocking` and the driver runs them on its workers.

mod direct;
mod fallback;
mod lazy;
mod rotational;

pub use fallback::open_or_read_only;
pub use lazy::{DirOptions, LazyFile, dir_exports};

use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom};
use std::num::NonZeroU64;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Advice, FallocateFlags};
use rustix::io::Errno;

use crate::util::{check_read, check_write, len64, out_of_range, push_extent, read_only};
use crate::{Backend, BlockSize, Caps, Extent, ExtentFlags, ZeroFlags};
use direct::{ALIGN, Io};

/// Zeroes for the write_zeroes fallback, aligned so that they can be
/// written with `O_DIRECT` without a copy.
#[repr(C, align(4096))]
struct AlignedZeroes([u8; 64 * 1024]);
static ZEROES: AlignedZeroes = AlignedZeroes([0; 64 * 1024]);

/// A file or block device served through pread/pwrite.
pub struct FileBackend {
    io: Io,
    path: PathBuf,
    size: u64,
    readonly: bool,
    block_device: bool,
    /// The storage underneath is a rotating disk (`NBD_FLAG_ROTATIONAL`).
    rotational: bool,
    // What fallocate can do here, learnt on first use, so that an
    // unsupported mode costs one failed syscall per export, not per request.
    can_punch: AtomicBool,
    can_zero_range: AtomicBool,
    can_allocate: AtomicBool,
    can_seek_data: AtomicBool,
}

/// Errors meaning "this filesystem or device does not do that".
fn unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::NOSYS | Errno::NOTTY | Errno::NODEV
    )
}

impl FileBackend {
    /// Open `path`, read-only or read-write. With `cache_none`, use
    /// `O_DIRECT` where the filesystem allows it; otherwise (tmpfs, or a
    /// size that is not a multiple of 4096) log a warning and use the page
    /// cache.
    ///
    /// # Errors
    ///
    /// Those of `open(2)`, and `InvalidInput` for something that is neither
    /// a regular file nor a block device.
    pub fn open(path: impl AsRef<Path>, readonly: bool, cache_none: bool) -> io::Result<Self> {
        let path = path.as_ref();
        let mut opts = OpenOptions::new();
        opts.read(true).write(!readonly);
        let mut file = opts.open(path)?;
        let meta = file.metadata()?;
        let block_device = meta.file_type().is_block_device();
        if !meta.is_file() && !block_device {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file or block device", path.display()),
            ));
        }
        let size = if block_device {
            file.seek(SeekFrom::End(0))?
        } else {
            meta.len()
        };
        let mut direct = false;
        if cache_none {
            if !size.is_multiple_of(ALIGN) {
                // Whole-block writes at the end would grow the file.
                log::warn!(
                    "{}: size {size} is not a multiple of {ALIGN}; cache=none ignored",
                    path.display()
                );
            } else {
                match opts.custom_flags(libc::O_DIRECT).open(path) {
                    Ok(f) => {
                        file = f;
                        direct = true;
                    }
                    Err(e) => log::warn!(
                        "{}: O_DIRECT refused ({e}); cache=none ignored",
                        path.display()
                    ),
                }
            }
        }
        // A block device is itself the disk; a file lives on its
        // filesystem's device.
        let dev = if block_device {
            meta.rdev()
        } else {
            meta.dev()
        };
        let rotational = rotational::is_rotational(Path::new("/sys"), dev);
        Ok(Self {
            io: Io::new(file, direct),
            path: path.to_owned(),
            size,
            readonly,
            block_device,
            rotational,
            can_punch: AtomicBool::new(true),
            can_zero_range: AtomicBool::new(true),
            can_allocate: AtomicBool::new(!block_device),
            can_seek_data: AtomicBool::new(!block_device),
        })
    }

    /// True when `O_DIRECT` is in effect.
    pub fn is_direct(&self) -> bool {
        self.io.direct
    }

    /// Tell the kernel how the file will be read (nbdkit's `fadvise=`):
    /// `Random` turns read-ahead off, `Sequential` doubles it on Linux.
    ///
    /// # Errors
    ///
    /// Those of `posix_fadvise(2)`.
    pub fn advise(&self, advice: Advice) -> io::Result<()> {
        rustix::fs::fadvise(&self.io.file, 0, None, advice).map_err(Into::into)
    }

    /// The path this backend was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Behave as on a filesystem without fallocate (some network and FUSE
    /// filesystems), so tests can reach the write-zeroes fallback and the
    /// FAST_ZERO refusal on any machine.
    #[doc(hidden)]
    pub fn disable_fallocate(&self) {
        self.can_punch.store(false, Ordering::Relaxed);
        self.can_zero_range.store(false, Ordering::Relaxed);
        self.can_allocate.store(false, Ordering::Relaxed);
    }

    /// One fallocate attempt: `Ok(true)` done, `Ok(false)` not supported
    /// (remembered in `flag` when the failure is permanent).
    fn try_fallocate(
        &self,
        flag: &AtomicBool,
        mode: FallocateFlags,
        offset: u64,
        len: u64,
    ) -> io::Result<bool> {
        if !flag.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match rustix::fs::fallocate(&self.io.file, mode, offset, len) {
            Ok(()) => Ok(true),
            Err(e) if unsupported(e) => {
                flag.store(false, Ordering::Relaxed);
                Ok(false)
            }
            // A block device refuses unaligned ranges with EINVAL: fall
            // back for this request only.
            Err(Errno::INVAL) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn punch(&self, offset: u64, len: u64) -> io::Result<bool> {
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        self.try_fallocate(&self.can_punch, mode, offset, len)
    }

    /// Zero `[offset, offset + len)` with fallocate, keeping it allocated
    /// unless `may_trim`. `Ok(false)` when no fallocate mode worked.
    fn fast_zero(&self, offset: u64, len: u64, may_trim: bool) -> io::Result<bool> {
        if may_trim && self.punch(offset, len)? {
            return Ok(true);
        }
        let mode = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
        if self.try_fallocate(&self.can_zero_range, mode, offset, len)? {
            return Ok(true);
        }
        // tmpfs has no ZERO_RANGE, but punching a hole and allocating it
        // again gives zeroes that stay allocated, still without writing.
        if !self.block_device
            && self.can_allocate.load(Ordering::Relaxed)
            && self.punch(offset, len)?
        {
            // If re-allocation fails the range reads as zeroes anyway; it
            // is merely left sparse.
            let _ = self.try_fallocate(&self.can_allocate, FallocateFlags::KEEP_SIZE, offset, len);
            return Ok(true);
        }
        Ok(false)
    }

    fn sync(&self) -> io::Result<()> {
        rustix::fs::fdatasync(&self.io.file).map_err(Into::into)
    }
}

impl Backend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        let mut always = Caps::FLUSH | Caps::EXTENTS | Caps::CACHE | Caps::MULTI_CONN;
        if self.rotational {
            always |= Caps::ROTATIONAL;
        }
        if self.readonly {
            always | Caps::READ_ONLY
        } else {
            always | Caps::FUA | Caps::TRIM | Caps::WRITE_ZEROES | Caps::FAST_ZERO
        }
    }

    fn block_size(&self) -> Option<BlockSize> {
        // Unaligned requests work (bounced), but cost a read-modify-write.
        self.io.direct.then(|| BlockSize {
            preferred: ALIGN as u32,
            ..BlockSize::default()
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_read(offset, len64(buf), self.size)?;
        self.io.read(offset, buf)
    }

    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        // A short read (EOF, or part not cached) goes the slow way, which
        // also handles the file shrinking behind our back.
        check_read(offset, len64(buf), self.size).is_ok() && self.io.read_cached(offset, buf)
    }

    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        !self.readonly
            && check_write(offset, len64(data), self.size).is_ok()
            && self.io.write_cached(offset, data)
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        if self.readonly {
            return Err(read_only());
        }
        check_write(offset, len64(data), self.size)?;
        self.io.write(offset, data)?;
        if fua { self.sync() } else { Ok(()) }
    }

    fn flush(&self) -> io::Result<()> {
        self.sync()
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        if self.readonly {
            return Err(read_only());
        }
        check_read(offset, len, self.size)?;
        // Trim is a hint: where holes cannot be punched, do nothing.
        if len > 0 && self.punch(offset, len)? && fua {
            self.sync()?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        if self.readonly {
            return Err(read_only());
        }
        let end = check_write(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        if !self.fast_zero(offset, len, flags.contains(ZeroFlags::MAY_TRIM))? {
            if flags.contains(ZeroFlags::FAST) {
                // NBD_CMD_FLAG_FAST_ZERO: fail at once, data untouched
                // (checklist 92).
                return Err(io::ErrorKind::Unsupported.into());
            }
            let mut pos = offset;
            while pos < end {
                let n = (end - pos).min(len64(&ZEROES.0));
                self.io.write(pos, &ZEROES.0[..n as usize])?;
                pos += n;
            }
        }
        if flags.contains(ZeroFlags::FUA) {
            self.sync()?;
        }
        Ok(())
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        check_read(offset, len, self.size)?;
        // A hint; a filesystem that ignores it is no error.
        let _ = rustix::fs::fadvise(
            &self.io.file,
            offset,
            NonZeroU64::new(len),
            Advice::WillNeed,
        );
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        if offset > self.size {
            return Err(out_of_range());
        }
        let end = offset.saturating_add(len).min(self.size);
        let mut n = 0;
        let hole = ExtentFlags::HOLE | ExtentFlags::ZERO;
        let mut pos = offset;
        while pos < end && self.can_seek_data.load(Ordering::Relaxed) {
            // lseek moves the shared file position, which nothing else uses
            // (all I/O is positional), so concurrent calls are harmless.
            let data = match rustix::fs::seek(&self.io.file, rustix::fs::SeekFrom::Data(pos)) {
                Ok(d) => d.min(end),
                // No data after pos: the rest is a hole.
                Err(Errno::NXIO) => end,
                Err(e) if unsupported(e) || e == Errno::INVAL => {
                    self.can_seek_data.store(false, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            if data > pos {
                if !push_extent(out, &mut n, data - pos, hole) {
                    return Ok(n);
                }
                pos = data;
                continue;
            }
            let next_hole = match rustix::fs::seek(&self.io.file, rustix::fs::SeekFrom::Hole(pos)) {
                Ok(h) => h.min(end),
                Err(Errno::NXIO) => end,
                Err(e) => return Err(e.into()),
            };
            // The file may have changed between the two calls; always move.
            let next = next_hole.max(pos + 1).min(end);
            if !push_extent(out, &mut n, next - pos, ExtentFlags::empty()) {
                return Ok(n);
            }
            pos = next;
        }
        // Block devices, or no SEEK_DATA: the rest is data.
        push_extent(out, &mut n, end - pos, ExtentFlags::empty());
        Ok(n)
    }

    // No description(): the default (none) is deliberate. A description
    // goes out in NBD_OPT_LIST and NBD_INFO_DESCRIPTION, which a
    // `--tls=on` server answers before TLS, so the server-side path would
    // reach anyone who can connect (nbdkit and nbd-server send none).
}
