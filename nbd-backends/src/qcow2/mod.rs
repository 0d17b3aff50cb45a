//! `qcow2` and `vmdk`: disk images served through imago, the image library
//! by a QEMU block-layer maintainer (see docs/DEPENDENCIES.md).
//!
//! qcow2 is read-write: clusters are allocated on write, compressed
//! clusters are read, zero clusters and discard serve WRITE_ZEROES and
//! TRIM, the backing chain is the image's own (opened read-only) or
//! `backing=`. vmdk is read-only (imago does not write it).
//!
//! Locking: imago's `FormatAccess` serves concurrent reads and writes
//! through `&self`; discarding and resizing take `&mut self` (they may move
//! mappings under an I/O in flight), so the image sits behind a `RwLock`
//! whose write side is taken only for those.
//!
//! Hostile images: imago checks header fields, table sizes (the L1 and
//! refcount tables are capped at 32 MiB) and offsets against the file;
//! [`open::ChainGate`] bounds the backing chain; we check the virtual size
//! against [`crate::MAX_SIZE`] and every request against the size.

pub(crate) mod dec;
mod map;
mod open;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use imago::FormatAccess;
use imago::file::File;
use imago::format::PreallocateMode;

pub use open::ImageFormat;

use crate::util::{check_read, check_write, len64};
use crate::{Backend, BlockSize, Caps, DepthExtent, Execution, Extent, ZeroFlags};

/// How to open an image (`qcow2 FILE [backing=PATH] [backing-format=F]`).
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// The format, or `None` to probe the file's magic.
    pub format: Option<ImageFormat>,
    /// Open read-only.
    pub readonly: bool,
    /// Replace the image's backing file with this one (opened read-only);
    /// `Some("")` means no backing file at all.
    pub backing: Option<PathBuf>,
    /// The override's format, or probe it.
    pub backing_format: Option<ImageFormat>,
}

/// A disk image file.
pub struct ImageBackend {
    img: RwLock<FormatAccess<File>>,
    format: ImageFormat,
    readonly: bool,
    /// qcow2 v3 cluster size: zero clusters exist, discard is aligned to it.
    zero_granularity: Option<u64>,
    has_backing: bool,
    description: String,
}

impl ImageBackend {
    /// Open `path` as described by `opts`.
    ///
    /// # Errors
    ///
    /// The image cannot be opened, is corrupt, is not of a format we
    /// serve (raw is the `file` backend's job), or has a virtual size
    /// above [`crate::MAX_SIZE`]. A vmdk image is always opened read-only.
    pub fn open(path: &Path, opts: &ImageOptions) -> io::Result<Self> {
        let format = match opts.format {
            Some(f) => f,
            None => ImageFormat::probe(path)?,
        };
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        if format == ImageFormat::Raw {
            return Err(bad(
                "not a qcow2 or vmdk image (raw files: use the file backend)".into(),
            ));
        }
        // imago does not write vmdk: such an export is read-only.
        let readonly = opts.readonly || format == ImageFormat::Vmdk;
        let backing = match &opts.backing {
            None => None,
            Some(p) if p.as_os_str().is_empty() => Some(None),
            Some(p) => Some(Some(open::open_backing(p, opts.backing_format).map_err(
                |e| io::Error::new(e.kind(), format!("backing {}: {e}", p.display())),
            )?)),
        };
        let (img, has_backing) = open::open(path, format, !readonly, backing)?;
        if img.size() > crate::MAX_SIZE {
            return Err(bad(format!(
                "virtual size {} is above {}",
                img.size(),
                crate::MAX_SIZE
            )));
        }
        Ok(Self {
            zero_granularity: img.inner().zero_granularity(),
            img: RwLock::new(img),
            format,
            readonly,
            has_backing,
            // The format only: the path is the server's business and a
            // description reaches LIST before TLS (as for `file`).
            description: format!("{} image", format.name()),
        })
    }

    /// The image's format.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    fn shared(&self) -> RwLockReadGuard<'_, FormatAccess<File>> {
        self.img.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn exclusive(&self) -> RwLockWriteGuard<'_, FormatAccess<File>> {
        self.img.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn writable(&self) -> io::Result<()> {
        if self.readonly {
            Err(crate::util::read_only())
        } else {
            Ok(())
        }
    }

    /// FUA / FLUSH: imago's metadata caches to the file, then fsync.
    fn durable(img: &FormatAccess<File>) -> io::Result<()> {
        img.flush()?;
        img.sync()
    }
}

impl Backend for ImageBackend {
    fn size(&self) -> u64 {
        self.shared().size()
    }
    fn caps(&self) -> Caps {
        let always = Caps::FLUSH | Caps::EXTENTS | Caps::ALLOCATION_DEPTH | Caps::MULTI_CONN;
        if self.readonly {
            return always | Caps::READ_ONLY;
        }
        let mut caps = always | Caps::FUA | Caps::TRIM | Caps::RESIZE;
        if self.zero_granularity.is_some() {
            caps |= Caps::WRITE_ZEROES;
        }
        caps
    }
    fn block_size(&self) -> Option<BlockSize> {
        // A write smaller than a cluster into an unallocated one costs a
        // copy-on-write of the rest of the cluster.
        self.zero_granularity.map(|c| BlockSize {
            preferred: u32::try_from(c).unwrap_or(4096).clamp(4096, 2 << 20),
            ..BlockSize::default()
        })
    }
    fn execution(&self) -> Execution {
        Execution::Blocking
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let img = self.shared();
        check_read(offset, len64(buf), img.size())?;
        img.read(buf, offset)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.writable()?;
        let img = self.shared();
        check_write(offset, len64(data), img.size())?;
        img.write(data, offset)?;
        if fua { Self::durable(&img) } else { Ok(()) }
    }
    fn flush(&self) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        Self::durable(&self.shared())
    }
    /// Discards whole clusters only (a hint: partial ones are left alone).
    /// Over a backing file a discarded cluster becomes a zero cluster, as
    /// in qemu, so the backing file's old data does not reappear.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.writable()?;
        check_read(offset, len, self.size())?;
        let Some(c) = self.zero_granularity else {
            return Ok(());
        };
        let (start, end) = (offset.next_multiple_of(c), (offset + len) / c * c);
        if start < end {
            let mut img = self.exclusive();
            if self.has_backing {
                img.discard_to_zero(start, end - start)?;
            } else {
                match img.discard_to_any(start, end - start) {
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
                    r => r?,
                }
            }
        }
        if fua {
            Self::durable(&self.shared())
        } else {
            Ok(())
        }
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.writable()?;
        check_write(offset, len, self.size())?;
        // Unaligned heads and tails are written as data: never "fast".
        if flags.contains(ZeroFlags::FAST) {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        if flags.contains(ZeroFlags::MAY_TRIM) {
            self.exclusive().discard_to_zero(offset, len)?;
        } else {
            // Keeps existing clusters allocated (marked zero).
            self.shared().write_zeroes(offset, len)?;
        }
        if flags.contains(ZeroFlags::FUA) {
            Self::durable(&self.shared())
        } else {
            Ok(())
        }
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        map::extents(&self.shared(), offset, len, out)
    }
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        map::depths(&self.shared(), offset, len, out)
    }
    fn resize(&self, new_size: u64) -> io::Result<()> {
        self.writable()?;
        if new_size > crate::MAX_SIZE {
            return Err(crate::util::no_space());
        }
        let mut img = self.exclusive();
        img.resize(new_size, PreallocateMode::None)?;
        Self::durable(&img)
    }
    fn description(&self) -> Option<String> {
        Some(self.description.clone())
    }
}
