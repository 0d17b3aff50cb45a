//! The disk the server examples export: 64 MiB of memory, zeroes until
//! written. Storage only, nothing of the protocol; shared by
//! `blocking_server.rs` and `tokio_server.rs`.
//!
//! Offsets and lengths are not checked here: `server::Connection` only
//! hands over requests that lie inside the export.

use nbd_proto::AllocationFlags;
use nbd_proto::wire::reply::BlockStatusExtent;

/// Export size.
pub const SIZE: u64 = 64 << 20;
/// Runs of zeroes are found at this granularity (and at the range's ends).
const BLOCK: u64 = 4096;
static ZERO_BLOCK: [u8; BLOCK as usize] = [0; BLOCK as usize];
/// `base:allocation` status of zeroes: a hole that reads as zeroes.
pub const ZEROES: u64 = (AllocationFlags::HOLE.bits() | AllocationFlags::ZERO.bits()) as u64;

/// 64 MiB of memory (the allocator maps untouched pages lazily).
pub struct Memory(Vec<u8>);

impl Memory {
    /// An all-zero disk.
    pub fn new() -> Self {
        Self(vec![0; SIZE as usize])
    }

    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        offset as usize..(offset + len) as usize
    }

    /// Copy `buf.len()` bytes at `offset` into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        buf.copy_from_slice(&self.0[self.range(offset, buf.len() as u64)]);
    }

    /// Store `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let r = self.range(offset, data.len() as u64);
        self.0[r].copy_from_slice(data);
    }

    /// Zero `len` bytes at `offset` (TRIM and WRITE_ZEROES alike).
    pub fn zero(&mut self, offset: u64, len: u64) {
        let r = self.range(offset, len);
        self.0[r].fill(0);
    }

    /// The range as runs of data (status 0) and zeroes ([`ZEROES`]), in
    /// order, neighbours merged: a `base:allocation` answer.
    pub fn extents(&self, offset: u64, len: u64) -> Vec<BlockStatusExtent> {
        let (mut runs, end) = (Vec::<BlockStatusExtent>::new(), offset + len);
        let mut pos = offset;
        while pos < end {
            let next = ((pos / BLOCK + 1) * BLOCK).min(end);
            // A slice comparison is a memcmp, fast even in debug builds.
            let zero = self.0[self.range(pos, next - pos)] == ZERO_BLOCK[..(next - pos) as usize];
            let flags = if zero { ZEROES } else { 0 };
            match runs.last_mut() {
                Some(last) if last.flags == flags => last.len += next - pos,
                _ => runs.push(BlockStatusExtent {
                    len: next - pos,
                    flags,
                }),
            }
            pos = next;
        }
        runs
    }
}
