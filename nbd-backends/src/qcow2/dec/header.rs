//! The qcow2 header, for the read-only decoder: parsed and checked before
//! anything it says is used (docs/interop/qcow2.txt in qemu).

use std::io;

/// Largest L1 table we load: qemu's own limit (32 MiB of entries).
const MAX_L1_ENTRIES: u64 = 4 << 20;
/// incompatible_features bits: dirty, corrupt, external data file,
/// compression type, extended L2 entries.
const INCOMPAT_DIRTY: u64 = 1;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;

/// What the decoder needs from the header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) cluster_bits: u32,
    pub(crate) size: u64,
    pub(crate) l1_offset: u64,
    pub(crate) l1_entries: u64,
    /// Zero clusters (bit 0 of an L2 entry) exist from version 3.
    pub(crate) v3: bool,
}

fn bad(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

impl Header {
    /// Parse the first 112 bytes (v2 uses 72) of an image of `file_size`
    /// bytes.
    pub(crate) fn parse(b: &[u8; 112], file_size: u64) -> io::Result<Self> {
        if &b[..4] != b"QFI\xfb" {
            return Err(bad("not a qcow2 image (bad magic)".into()));
        }
        let version = be32(b, 4);
        if !(2..=3).contains(&version) {
            return Err(bad(format!("unsupported qcow2 version {version}")));
        }
        if be64(b, 8) != 0 {
            return Err(bad(
                "images with a backing file are not supported by qcow2dec (use the qcow2 backend)"
                    .into(),
            ));
        }
        let cluster_bits = be32(b, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(format!("invalid cluster_bits {cluster_bits}")));
        }
        let size = be64(b, 24);
        if size > crate::MAX_SIZE {
            return Err(bad(format!("virtual size {size} is too large")));
        }
        if be32(b, 32) != 0 {
            return Err(bad("encrypted images are not supported".into()));
        }
        let l1_entries = u64::from(be32(b, 36));
        let l1_offset = be64(b, 40);
        if version == 3 {
            let incompat = be64(b, 72);
            let header_len = be32(b, 100);
            let compression = if header_len > 104 { b[104] } else { 0 };
            if incompat & !(INCOMPAT_DIRTY | INCOMPAT_COMPRESSION) != 0 {
                return Err(bad(format!(
                    "unsupported incompatible features {incompat:#x}"
                )));
            }
            if compression != 0 {
                return Err(bad(format!(
                    "unsupported compression type {compression} (only zlib)"
                )));
            }
        }
        let h = Self {
            cluster_bits,
            size,
            l1_offset,
            l1_entries,
            v3: version == 3,
        };
        h.check_l1(file_size)?;
        Ok(h)
    }

    /// The L1 table must cover the virtual size, be bounded, aligned and
    /// inside the file.
    fn check_l1(&self, file_size: u64) -> io::Result<()> {
        let per_l1 = 1u64 << (2 * self.cluster_bits - 3);
        let needed = self.size.div_ceil(per_l1);
        if self.l1_entries < needed || self.l1_entries > MAX_L1_ENTRIES {
            return Err(bad(format!(
                "L1 table of {} entries for {} bytes (need {needed}, at most {MAX_L1_ENTRIES})",
                self.l1_entries, self.size
            )));
        }
        let end = self.l1_offset.checked_add(self.l1_entries * 8);
        if !self.l1_offset.is_multiple_of(self.cluster_size()) || end.is_none_or(|e| e > file_size)
        {
            return Err(bad(format!("L1 table at {} is misplaced", self.l1_offset)));
        }
        Ok(())
    }

    pub(crate) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}
