//! `partition`: serve one partition of a disk image with an MBR or GPT
//! partition table (`partition=N`, numbered from 1 as Linux does).
//!
//! The table is read from the inner backend when the export is built (and
//! again for each per-connection handle of the layer below); the result is
//! an [`Offset`] window. Sectors are 512 bytes unless
//! `partition-sectorsize=4k` or the layer below advertises a 4 KiB minimum
//! block size (nbdkit 1.40's rule). MBR: the four primary entries only
//! (logical partitions inside an extended one are not followed). GPT:
//! entry N of the partition array; the protective MBR (type 0xEE) selects
//! GPT.

use std::io;
use std::sync::Arc;

use super::Offset;
use super::params::FilterParams;
use crate::Backend;

/// MBR type of a GPT protective partition.
const GPT_PROTECTIVE: u8 = 0xee;
/// MBR types of extended partitions (CHS, LBA, Linux).
const EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];
/// Refuse partition arrays larger than this: a corrupt header must not make
/// us read gigabytes at start-up (the usual array is 128 × 128 bytes).
const MAX_GPT_ARRAY: u64 = 1 << 20;

/// Where partition `n` lies: `(start, length)` in bytes.
///
/// # Errors
///
/// A one-line message when the table is missing or malformed, or `n` is
/// not a used partition.
pub fn locate(inner: &dyn Backend, n: u32) -> Result<(u64, u64), String> {
    locate_with(inner, n, default_sector(inner))
}

/// The sector size nbdkit assumes: the layer below's minimum block size
/// when it is 512 or 4096, else 512.
fn default_sector(inner: &dyn Backend) -> u64 {
    match inner.block_size().map(|b| b.minimum) {
        Some(4096) => 4096,
        _ => 512,
    }
}

/// [`locate`] with `sector`-byte sectors (512 or 4096).
///
/// # Errors
///
/// As [`locate`].
pub fn locate_with(inner: &dyn Backend, n: u32, sector: u64) -> Result<(u64, u64), String> {
    let err = |m: String| format!("partition filter: {m}");
    let mut mbr = [0u8; 512];
    if inner.size() < sector {
        return Err(err("disk is smaller than one sector".into()));
    }
    inner
        .read_at(0, &mut mbr)
        .map_err(|e| err(format!("reading the MBR: {e}")))?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Err(err(
            "no MBR or GPT partition table (no 0x55AA signature)".into()
        ));
    }
    let entry = |i: usize| &mbr[446 + 16 * i..446 + 16 * (i + 1)];
    let le32 = |b: &[u8], at: usize| {
        u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
    };
    if (0..4).any(|i| entry(i)[4] == GPT_PROTECTIVE) {
        return gpt(inner, n, sector).map_err(err);
    }
    if !(1..=4).contains(&n) {
        return Err(err(format!(
            "partition={n} is out of range: an MBR has primary partitions 1-4"
        )));
    }
    let e = entry(n as usize - 1);
    let ty = e[4];
    if ty == 0 {
        return Err(err(format!("partition={n} is unused in the MBR")));
    }
    if EXTENDED.contains(&ty) {
        return Err(err(format!(
            "partition={n} is an extended partition (logical partitions are not supported)"
        )));
    }
    let (start, len) = (le32(e, 8) * sector, le32(e, 12) * sector);
    check_fits(inner, n, start, len).map_err(err)
}

fn check_fits(inner: &dyn Backend, n: u32, start: u64, len: u64) -> Result<(u64, u64), String> {
    match start.checked_add(len) {
        Some(end) if end <= inner.size() && len > 0 => Ok((start, len)),
        _ => Err(format!(
            "partition={n} ({start}+{len} bytes) does not fit in the disk ({} bytes)",
            inner.size()
        )),
    }
}

fn gpt(inner: &dyn Backend, n: u32, sector: u64) -> Result<(u64, u64), String> {
    let mut h = [0u8; 92];
    if inner.size() < 2 * sector {
        return Err("disk too small for a GPT header".into());
    }
    inner
        .read_at(sector, &mut h)
        .map_err(|e| format!("reading the GPT header: {e}"))?;
    if &h[0..8] != b"EFI PART" {
        return Err("protective MBR but no GPT header at sector 1".into());
    }
    let le32 = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let le64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (array_lba, count, entry_size) = (le64(72), le32(80), u64::from(le32(84)));
    if entry_size < 128 || entry_size % 8 != 0 || entry_size > 4096 {
        return Err(format!("GPT partition entry size {entry_size} is invalid"));
    }
    if n == 0 || n > count {
        return Err(format!(
            "partition={n} is out of range: the GPT has entries 1-{count}"
        ));
    }
    if u64::from(count) * entry_size > MAX_GPT_ARRAY {
        return Err(format!(
            "GPT partition array of {count} entries is too large"
        ));
    }
    let at = array_lba
        .checked_mul(sector)
        .and_then(|a| a.checked_add(u64::from(n - 1) * entry_size))
        .filter(|a| a.checked_add(entry_size).is_some_and(|e| e <= inner.size()))
        .ok_or_else(|| "GPT partition array lies outside the disk".to_owned())?;
    let mut e = [0u8; 48];
    inner
        .read_at(at, &mut e)
        .map_err(|err| format!("reading GPT entry {n}: {err}"))?;
    if e[0..16].iter().all(|&b| b == 0) {
        return Err(format!("partition={n} is unused in the GPT"));
    }
    let lba = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&e[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (first, last) = (lba(32), lba(40));
    if last < first {
        return Err(format!(
            "partition={n} has last LBA {last} < first LBA {first}"
        ));
    }
    let start = first
        .checked_mul(sector)
        .ok_or_else(|| format!("partition={n} starts past 2^64"))?;
    let len = (last - first + 1)
        .checked_mul(sector)
        .ok_or_else(|| format!("partition={n} is too long"))?;
    check_fits(inner, n, start, len)
}

/// Partition `n` of `inner` as an export (512-byte sectors unless the
/// layer below says 4 KiB).
///
/// # Errors
///
/// As [`locate`].
pub fn open(inner: Arc<dyn Backend>, n: u32) -> Result<Partition, String> {
    Partition::new(inner, n, None)
}

/// The window onto one partition, re-located on every per-connection
/// handle of the layer below.
pub struct Partition {
    base: Arc<dyn Backend>,
    window: Arc<dyn Backend>,
    n: u32,
    sector: Option<u64>,
}

impl Partition {
    /// Partition `n` of `base`, with `sector`-byte sectors (`None`: the
    /// layer below's minimum block size if 4 KiB, else 512).
    ///
    /// # Errors
    ///
    /// As [`locate`].
    pub fn new(base: Arc<dyn Backend>, n: u32, sector: Option<u64>) -> Result<Self, String> {
        let s = sector.unwrap_or_else(|| default_sector(&*base));
        let (start, len) = locate_with(&*base, n, s)?;
        let window = Arc::new(Offset::new(Arc::clone(&base), start, Some(len))?);
        Ok(Self {
            base,
            window,
            n,
            sector,
        })
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let n = p.take_with("partition", |v| {
        v.parse::<u32>()
            .map_err(|_| "expected a partition number from 1")
    })?;
    let sector = p.take_with("partition-sectorsize", |v| match crate::parse_size(v) {
        Ok(s @ (512 | 4096)) => Ok(s),
        _ => Err("expected 512 or 4096"),
    })?;
    let n = n.ok_or_else(|| p.error("missing parameter partition=N (from 1)"))?;
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(Partition::new(b, n, sector)?))
    }))
}

impl super::Filter for Partition {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.window
    }
    // try_read_cached forwarded: the layer below is the partition's offset window, which checks and moves the range.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        super::layer::forward_cached(self, offset, buf)
    }
    // try_write_cached forwarded: the layer below is the partition's offset window, which checks and moves the range.
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        super::layer::forward_cached_write(self, offset, data)
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        let p = Self::new(inner, self.n, self.sector).map_err(io::Error::other)?;
        Ok(Arc::new(p))
    }
    /// The table is read again from the handle of the layer below (a fresh
    /// disk per client has its own, or none).
    fn open(&self, client: &crate::ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        match self.base.open(client)? {
            Some(h) => super::Filter::reopen(self, h).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    fn disk() -> Arc<MemoryBackend> {
        Arc::new(MemoryBackend::new(4 << 20).unwrap())
    }

    fn mbr_entry(d: &MemoryBackend, i: u64, ty: u8, start: u32, sectors: u32) {
        let mut e = [0u8; 16];
        e[4] = ty;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
        d.write_at(446 + 16 * i, &e, false).unwrap();
        d.write_at(510, &[0x55, 0xaa], false).unwrap();
    }

    #[test]
    fn mbr_primary_partitions() {
        let d = disk();
        mbr_entry(&d, 0, 0x83, 2048, 2048);
        mbr_entry(&d, 1, 0x83, 4096, 100);
        mbr_entry(&d, 2, 0x05, 5000, 100);
        assert_eq!(locate(&*d, 1), Ok((2048 * 512, 2048 * 512)));
        assert_eq!(locate(&*d, 2), Ok((4096 * 512, 100 * 512)));
        assert!(locate(&*d, 3).unwrap_err().contains("extended"));
        assert!(locate(&*d, 4).unwrap_err().contains("unused"));
        assert!(locate(&*d, 5).unwrap_err().contains("out of range"));
        assert!(locate(&*d, 0).unwrap_err().contains("out of range"));
        mbr_entry(&d, 3, 0x83, 8150, 100);
        assert!(locate(&*d, 4).unwrap_err().contains("does not fit"));
        let p = open(d.clone(), 2).unwrap();
        d.write_at(4096 * 512, b"hello", false).unwrap();
        let mut b = [0; 5];
        p.read_at(0, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert_eq!(p.size(), 100 * 512);
    }

    #[test]
    fn four_kib_sectors() {
        let d = disk();
        mbr_entry(&d, 0, 0x83, 16, 32);
        assert_eq!(locate_with(&*d, 1, 4096), Ok((16 * 4096, 32 * 4096)));
        assert_eq!(locate(&*d, 1), Ok((16 * 512, 32 * 512)));
    }

    #[test]
    fn no_table() {
        let d = disk();
        assert!(locate(&*d, 1).unwrap_err().contains("no MBR or GPT"));
    }

    #[test]
    fn gpt_entries() {
        let d = disk();
        mbr_entry(&d, 0, 0xee, 1, 8191);
        let mut h = [0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        d.write_at(512, &h, false).unwrap();
        let entry = |i: u64, first: u64, last: u64| {
            let mut e = [0u8; 128];
            e[0] = 0xaf; // any non-zero type GUID
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            d.write_at(1024 + 128 * i, &e, false).unwrap();
        };
        entry(0, 2048, 4095);
        entry(1, 4096, 6143);
        assert_eq!(locate(&*d, 2), Ok((4096 * 512, 2048 * 512)));
        assert_eq!(locate(&*d, 1), Ok((2048 * 512, 2048 * 512)));
        assert!(locate(&*d, 3).unwrap_err().contains("unused"));
        let e = locate(&*d, 129).unwrap_err();
        assert!(e.contains("out of range") && e.contains("1-128"), "{e}");
        entry(2, 6144, 1 << 40);
        assert!(locate(&*d, 3).unwrap_err().contains("does not fit"));
    }
}
