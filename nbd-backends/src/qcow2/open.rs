//! Opening an image and its backing chain through imago.
//!
//! Everything an image names (its backing file, an external data file) is
//! opened through [`ChainGate`], which bounds the chain: an image that
//! names itself, or a chain thousands deep, is an error and not a stack
//! overflow.

use std::io;
use std::path::Path;

use imago::file::File;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::vmdk::Vmdk;
use imago::{FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};

/// Deepest backing chain we open (the image itself is layer 1). qemu sets
/// no small limit, but a chain this long is almost certainly a loop.
pub(super) const MAX_CHAIN: u32 = 64;

/// An image format imago reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// QEMU copy-on-write v2 / v3: read and write.
    Qcow2,
    /// VMware disk, descriptor with flat or zero extents (imago reads no
    /// sparse extents): read-only.
    Vmdk,
    /// A raw file (only as a backing image).
    Raw,
}

impl ImageFormat {
    /// Parse a `backing-format=` value (qemu's names).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "qcow2" => Ok(Self::Qcow2),
            "vmdk" => Ok(Self::Vmdk),
            "raw" | "file" => Ok(Self::Raw),
            _ => Err(format!(
                "unknown image format '{s}' (known: qcow2, vmdk, raw)"
            )),
        }
    }

    /// Guess from the first bytes, as qemu-img does for an image without
    /// a recorded backing format: qcow2 and sparse-vmdk magics, else raw.
    pub fn probe(path: &Path) -> io::Result<Self> {
        use std::io::Read as _;
        let mut magic = [0u8; 4];
        let mut f = std::fs::File::open(path)?;
        let n = f.read(&mut magic)?;
        Ok(match &magic[..n] {
            b"QFI\xfb" => Self::Qcow2,
            b"KDMV" => Self::Vmdk,
            _ => Self::Raw,
        })
    }

    /// qemu's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Vmdk => "vmdk",
            Self::Raw => "raw",
        }
    }
}

/// Opens implicit dependencies, counting layers; on a read-only export
/// nothing at all is opened for writing (imago would open an external data
/// file writable otherwise).
pub(super) struct ChainGate {
    /// Layer the next opened image will be (the top image is 1).
    pub(super) next: u32,
    /// Open every storage object read-only.
    pub(super) readonly: bool,
}

impl imago::format::gate::ImplicitOpenGate<File> for ChainGate {
    fn open_format<F: FormatDriverBuilder<File>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<File>> {
        if self.next > MAX_CHAIN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("backing chain deeper than {MAX_CHAIN} images (a loop?)"),
            ));
        }
        let below = Self {
            next: self.next + 1,
            readonly: self.readonly,
        };
        Ok(FormatAccess::new(builder.open(below)?))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<File> {
        let opts = if self.readonly {
            opts.write(false)
        } else {
            opts
        };
        File::open(opts)
    }
}

/// Open `path` as `format`; `writable` for the top image only. `backing`:
/// `None` keeps the image's own backing file (opened read-only), `Some`
/// replaces it (`Some(None)`: no backing at all). Also returns whether
/// the image ends up with a backing image.
pub(super) fn open(
    path: &Path,
    format: ImageFormat,
    writable: bool,
    backing: Option<Option<FormatAccess<File>>>,
) -> io::Result<(FormatAccess<File>, bool)> {
    let gate = ChainGate {
        next: 2,
        readonly: !writable,
    };
    let opts = StorageOpenOptions::new().write(writable);
    Ok(match format {
        ImageFormat::Qcow2 => {
            let b = Qcow2::<File>::builder_path(path)
                .write(writable)
                .storage_open_options(opts);
            let (b, has_backing) = match backing {
                Some(backing) => {
                    let has = backing.is_some();
                    (b.backing(backing), Some(has))
                }
                None => (b, None),
            };
            let q = b.open(gate)?;
            let has_backing = has_backing.unwrap_or(q.implicit_backing_file().is_some());
            (FormatAccess::new(q), has_backing)
        }
        ImageFormat::Vmdk | ImageFormat::Raw if backing.is_some() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a {} image has no backing file to replace", format.name()),
            ));
        }
        // Discards never reach a vmdk or raw backing image: "no backing"
        // is all the callers need to know.
        ImageFormat::Vmdk => (
            FormatAccess::new(
                Vmdk::<File>::builder_path(path)
                    .storage_open_options(opts)
                    .open(gate)?,
            ),
            false,
        ),
        ImageFormat::Raw => (
            FormatAccess::new(
                Raw::<File>::builder_path(path)
                    .write(writable)
                    .storage_open_options(opts)
                    .open(gate)?,
            ),
            false,
        ),
    })
}

/// Open a `backing=` override read-only, with its own chain below it.
pub(super) fn open_backing(
    path: &Path,
    format: Option<ImageFormat>,
) -> io::Result<FormatAccess<File>> {
    let format = match format {
        Some(f) => f,
        None => ImageFormat::probe(path)?,
    };
    open(path, format, false, None).map(|(img, _)| img)
}
