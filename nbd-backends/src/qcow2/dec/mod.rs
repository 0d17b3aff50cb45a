//! A minimal read-only qcow2 decoder over any [`Backend`], for the
//! `qcow2dec` filter (nbdkit's filter of that name does the same job).
//!
//! imago, which the `qcow2` backend uses, reads only from its own storage
//! types, and plugging a backend in as one means implementing `unsafe`
//! trait methods, which this crate forbids. The read-only subset of qcow2
//! is small: header, L1, L2, zlib-compressed clusters, zero clusters. No
//! backing files, snapshots (the active layer is read), encryption or
//! external data files; such images are refused at open.

mod header;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use header::Header;

use crate::Backend;

/// Bits 9..55 of an L1 entry or a standard L2 entry: the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;
/// L2 tables kept in memory (each one cluster, at most 2 MiB).
const L2_CACHE: usize = 16;

/// Where one guest cluster's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cluster {
    Unallocated,
    Zero,
    Data(u64),
    Compressed { offset: u64, len: u64 },
}

/// The decoder: a checked header, the L1 table, a small L2 cache.
pub(crate) struct Decoder {
    inner: Arc<dyn Backend>,
    h: Header,
    l1: Vec<u64>,
    l2: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
}

fn corrupt(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("qcow2dec: {m}"))
}

/// Big-endian u64 words of `bytes`.
fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

impl Decoder {
    /// Read and check the header and L1 table of the image in `inner`.
    pub(crate) fn open(inner: Arc<dyn Backend>) -> io::Result<Self> {
        let mut b = [0u8; 112];
        if inner.size() < 112 {
            return Err(corrupt("image shorter than a qcow2 header".into()));
        }
        inner.read_at(0, &mut b)?;
        let h = Header::parse(&b, inner.size()).map_err(|e| corrupt(e.to_string()))?;
        // Bounded by Header::parse (at most 32 MiB).
        let mut raw = vec![0u8; (h.l1_entries * 8) as usize];
        inner.read_at(h.l1_offset, &mut raw)?;
        Ok(Self {
            inner,
            h,
            l1: words(&raw),
            l2: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn size(&self) -> u64 {
        self.h.size
    }

    pub(crate) fn cluster_size(&self) -> u64 {
        self.h.cluster_size()
    }

    /// A host range the image points to must lie inside the image.
    fn in_file(&self, off: u64, len: u64, what: &str) -> io::Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.inner.size() => Ok(()),
            _ => Err(corrupt(format!(
                "{what} at {off} is past the end of the image"
            ))),
        }
    }

    fn l2_table(&self, at: u64) -> io::Result<Arc<Vec<u64>>> {
        let mut cache = self.l2.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = cache.get(&at) {
            return Ok(Arc::clone(t));
        }
        let cs = self.cluster_size();
        if !at.is_multiple_of(cs) {
            return Err(corrupt(format!("unaligned L2 table at {at}")));
        }
        self.in_file(at, cs, "L2 table")?;
        let mut raw = vec![0u8; cs as usize];
        self.inner.read_at(at, &mut raw)?;
        if cache.len() >= L2_CACHE {
            cache.clear();
        }
        let t = Arc::new(words(&raw));
        cache.insert(at, Arc::clone(&t));
        Ok(t)
    }

    /// Where guest cluster `n` is.
    pub(crate) fn lookup(&self, n: u64) -> io::Result<Cluster> {
        let per_l2 = self.cluster_size() / 8;
        let l1e = self.l1.get((n / per_l2) as usize).copied().unwrap_or(0);
        let l2_at = l1e & OFFSET_MASK;
        if l2_at == 0 {
            return Ok(Cluster::Unallocated);
        }
        let e = self.l2_table(l2_at)?[(n % per_l2) as usize];
        let cb = self.h.cluster_bits;
        if e & COMPRESSED != 0 {
            // qcow2.txt "Compressed Clusters Descriptor": x = 62 - (cb - 8).
            let x = 62 - (cb - 8);
            let offset = e & ((1u64 << x) - 1);
            let sectors = ((e >> x) & ((1u64 << (cb - 8)) - 1)) + 1;
            // The last sector may run past the end of the file.
            let len =
                (sectors * 512 - (offset & 511)).min(self.inner.size().saturating_sub(offset));
            self.in_file(offset, len, "compressed cluster")?;
            return Ok(Cluster::Compressed { offset, len });
        }
        if self.h.v3 && e & ZERO != 0 {
            return Ok(Cluster::Zero);
        }
        match e & OFFSET_MASK {
            0 => Ok(Cluster::Unallocated),
            off if !off.is_multiple_of(self.cluster_size()) => {
                Err(corrupt(format!("unaligned data cluster at {off}")))
            }
            off => {
                self.in_file(off, self.cluster_size(), "data cluster")?;
                Ok(Cluster::Data(off))
            }
        }
    }

    /// Fill `buf` from guest offset `pos`, which lies in one cluster.
    pub(crate) fn read_in_cluster(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        let cs = self.cluster_size();
        let within = pos % cs;
        match self.lookup(pos / cs)? {
            Cluster::Unallocated | Cluster::Zero => {
                buf.fill(0);
                Ok(())
            }
            Cluster::Data(off) => self.inner.read_at(off + within, buf),
            Cluster::Compressed { offset, len } => {
                let mut packed = vec![0u8; len as usize];
                self.inner.read_at(offset, &mut packed)?;
                let plain =
                    miniz_oxide::inflate::decompress_to_vec_with_limit(&packed, cs as usize)
                        .map_err(|e| corrupt(format!("compressed cluster at {offset}: {e}")))?;
                let from = within as usize;
                match plain.get(from..from + buf.len()) {
                    Some(src) => {
                        buf.copy_from_slice(src);
                        Ok(())
                    }
                    None => Err(corrupt(format!("compressed cluster at {offset} is short"))),
                }
            }
        }
    }
}
