//! A connection's output: a queue of byte segments sent with vectored
//! writes.
//!
//! A contiguous output buffer must compact (memmove) its unsent bytes to
//! make room and grow (zero-filling) for a large reply: with 1 MiB READ
//! replies and megabytes queued, that was an extra copy of every byte and,
//! when a grown buffer was given back and regrown, most of the server's
//! instructions (callgrind: 62% in memset, 32% in memcpy, on 1 MiB reads).
//! Here small replies share a chunk, a large one gets a chunk of its own,
//! sent chunks are recycled (no allocation and no zero-fill in steady
//! state), and a finished pool READ's buffer joins the queue as it is
//! ([`OutQueue::push_vec`]): no copy of its data at all.
//!
//! A READ reply from a backend that lends its pages (the memory backend)
//! queues the pages themselves ([`OutQueue::push_lent`]): `writev` copies
//! them straight into the socket, the only copy of those bytes.
//!
//! Memory: recycled chunks are kept up to [`FREE_KEEP`] bytes; a
//! connection that goes idle gives them all back ([`OutQueue::release`]).

mod seg;

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use nbd_backends::Piece;
use seg::Seg;

/// The first chunk's size: negotiation replies are small, and an idle
/// client should cost little.
const FIRST_CHUNK: usize = 1024;
/// The largest chunk for small replies (sizes double up to it as output
/// piles up: many small replies at depth).
const CHUNK: usize = 64 * 1024;
/// Recycled chunk bytes kept per connection for the next burst.
pub const FREE_KEEP: usize = 8 * 1024 * 1024;
/// Slices handed to one `writev` (Linux allows 1024). A lent reply is a
/// slice per 4 KiB page, so 128 cover 512 KiB, more than a Unix socket
/// takes per call (about 200 KiB); the array is initialised per call, so
/// not more.
const IOV_MAX: usize = 128;
/// Recycled lists of lent pieces kept (one per lent reply in flight).
const FREE_LENT: usize = 8;
/// Every lent list has room for a 1 MiB READ at any offset (257 pieces,
/// 4 KiB). Grown only to each READ's size, a recycled list grew again
/// whenever it met a larger READ than any before: rare, timing-dependent
/// allocations long after warm-up (measured: 0-2 per run in no_alloc.rs).
const LENT_LIST_MIN: usize = (1 << 20) / 4096 + 1;

/// The size a new chunk of at least `min` bytes gets: a power of two up
/// to [`CHUNK`], a multiple of it above. Chunks of exact sizes (every READ
/// length a client picks) filled the free list with sizes the next request
/// did not fit, so steady state kept allocating (measured in
/// `tests/no_alloc.rs`: about one allocation per ten requests once the
/// list was full); a few classes make every recycled chunk reusable.
fn size_class(min: usize) -> usize {
    if min <= CHUNK {
        min.next_power_of_two().max(FIRST_CHUNK)
    } else {
        min.div_ceil(CHUNK).saturating_mul(CHUNK)
    }
}

/// A queue of output segments. See the module documentation.
#[derive(Default)]
pub struct OutQueue {
    segs: VecDeque<Seg>,
    free: Vec<Vec<u8>>,
    free_bytes: usize,
    /// Emptied lists for lent pieces, kept for their capacity.
    free_lent: Vec<Vec<Piece>>,
    /// Replies may not lend pages (under TLS, see [`OutQueue::copy_only`]).
    copy_only: bool,
    len: usize,
    /// Bytes ever queued (for limits on what one phase may produce).
    total: u64,
    /// Size of the next chunk for small replies.
    chunk: usize,
}

impl OutQueue {
    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes ever queued on this connection.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory held (queued chunks and recycled ones).
    pub fn capacity(&self) -> usize {
        let seg = |s: &Seg| match s {
            Seg::Bytes { data, .. } => data.len(),
            // Lent pages are the backend's, held until sent.
            Seg::Lent { left, .. } => *left,
        };
        self.free_bytes + self.segs.iter().map(seg).sum::<usize>()
    }

    /// A writable slice of at least `min` bytes at the tail; fill it, then
    /// [`OutQueue::commit`].
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        let fits = matches!(
            self.segs.back(),
            Some(Seg::Bytes { data, end, .. }) if data.len() - end >= min
        );
        if !fits {
            // Chunks grow only while output piles up; a drained queue
            // starts small again (and reuses what it has).
            let want = if self.len == 0 {
                FIRST_CHUNK
            } else {
                let w = self.chunk.max(FIRST_CHUNK);
                self.chunk = (w * 2).min(CHUNK);
                w
            };
            let data = self.take_chunk(min.max(want));
            self.segs.push_back(Seg::Bytes {
                data,
                start: 0,
                end: 0,
            });
        }
        match self.segs.back_mut() {
            Some(Seg::Bytes { data, end, .. }) => &mut data[*end..],
            _ => &mut [],
        }
    }

    /// Mark `n` bytes of the last [`OutQueue::spare`] slice as queued.
    pub fn commit(&mut self, n: usize) {
        if let Some(Seg::Bytes { data, end, .. }) = self.segs.back_mut() {
            let n = n.min(data.len() - *end);
            *end += n;
            self.len += n;
            self.total += n as u64;
        }
    }

    /// A copy of the last `n` bytes queued, if all are still queued (for
    /// tracing what a negotiation step answered).
    pub fn tail(&self, n: usize) -> Option<Vec<u8>> {
        if n > self.len {
            return None;
        }
        let mut parts = Vec::new();
        let mut left = n;
        for s in self.segs.iter().rev() {
            if left == 0 {
                break;
            }
            let bytes = s.to_vec();
            let take = left.min(bytes.len());
            parts.push(bytes[bytes.len() - take..].to_vec());
            left -= take;
        }
        Some(parts.into_iter().rev().flatten().collect())
    }

    /// Append bytes.
    pub fn extend(&mut self, b: &[u8]) {
        self.spare(b.len())[..b.len()].copy_from_slice(b);
        self.commit(b.len());
    }

    /// Queue `v[start..end]` without copying: `v` becomes a segment and is
    /// replaced by a recycled buffer (or an empty one), so the caller's
    /// next use reuses memory instead of allocating.
    ///
    /// The replacement is the largest free buffer: `v` is a pool job's
    /// buffer, which must hold the next READ or WRITE payload, so handing it
    /// a small reply chunk made the job grow again (an allocation per few
    /// dozen pool requests in steady state, `tests/no_alloc.rs`) while the
    /// big buffer sat unused in this list. Small replies take the smallest
    /// fitting chunk ([`Self::take_chunk`]), so big buffers go round
    /// between jobs and this queue.
    pub fn push_vec(&mut self, v: &mut Vec<u8>, start: usize, end: usize) {
        let end = end.min(v.len());
        let start = start.min(end);
        let largest = (0..self.free.len()).max_by_key(|&i| self.free[i].len());
        let spare = largest.map_or_else(Vec::new, |i| self.free.swap_remove(i));
        self.free_bytes -= spare.len();
        let data = std::mem::replace(v, spare);
        self.len += end - start;
        self.total += (end - start) as u64;
        self.segs.push_back(Seg::Bytes { data, start, end });
    }

    /// False once [`OutQueue::copy_only`] was called.
    pub fn lends(&self) -> bool {
        !self.copy_only
    }

    /// Replies copy their data from now on. For a TLS session, which takes
    /// plaintext a slice at a time and encrypts (copies) it anyway: lent
    /// 4 KiB pages would become 4 KiB records.
    pub fn copy_only(&mut self) {
        self.copy_only = true;
    }

    /// An empty list with room for `n` lent pieces, recycled when one is.
    pub fn lent_list(&mut self, n: usize) -> Vec<Piece> {
        let mut v = self.free_lent.pop().unwrap_or_default();
        v.reserve(n.max(LENT_LIST_MIN));
        v
    }

    /// Take back a list that was not queued (emptied, kept for reuse).
    pub fn recycle_lent(&mut self, mut v: Vec<Piece>) {
        v.clear();
        if self.free_lent.len() < FREE_LENT && v.capacity() > 0 {
            self.free_lent.push(v);
        }
    }

    /// Queue the bytes of `pieces`, in order, without copying them.
    pub fn push_lent(&mut self, pieces: Vec<Piece>) {
        let left: usize = pieces.iter().map(Piece::len).sum();
        self.len += left;
        self.total += left as u64;
        self.segs.push_back(Seg::Lent {
            pieces,
            next: 0,
            left,
        });
    }

    /// A recycled chunk of at least `min` bytes, or a new one.
    fn take_chunk(&mut self, min: usize) -> Vec<u8> {
        // Best fit among few chunks: the list is short.
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, c)| c.len() >= min)
            .min_by_key(|(_, c)| c.len())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let c = self.free.swap_remove(i);
                self.free_bytes -= c.len();
                c
            }
            None => vec![0; size_class(min)],
        }
    }

    /// Keep a sent chunk for the next reply. A full list makes room by
    /// dropping smaller chunks: otherwise it filled with the small chunks
    /// of quiet moments, no later reply fitted them, and every larger chunk
    /// was allocated anew and dropped (measured: 1,500 allocations of
    /// 64 KiB per 20,000 requests on a pool backend, `tests/no_alloc.rs`).
    fn recycle(&mut self, mut data: Vec<u8>) {
        if data.capacity() == 0 {
            return;
        }
        // A pool job's buffer comes back with the length of its last READ,
        // its capacity often larger: chunks are matched by length, so give
        // it all of it (the tail is zeroed once, here, not per reply).
        data.resize(data.capacity(), 0);
        while self.free_bytes + data.len() > FREE_KEEP {
            let smallest = (0..self.free.len()).min_by_key(|&i| self.free[i].len());
            match smallest {
                Some(i) if self.free[i].len() < data.len() => {
                    self.free_bytes -= self.free.swap_remove(i).len();
                }
                _ => return,
            }
        }
        self.free_bytes += data.len();
        self.free.push(data);
    }

    /// The unsent bytes of the first segment (for a TLS session, which
    /// takes plaintext a slice at a time).
    pub fn front(&self) -> &[u8] {
        self.segs
            .iter()
            .find(|s| s.unsent() > 0)
            .map_or(&[], Seg::first)
    }

    /// Drop `n` sent bytes from the head, recycling emptied segments.
    pub fn consume(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(s) = self.segs.front_mut() else {
                return;
            };
            n -= s.consume(n);
            if s.unsent() == 0 {
                self.pop_front();
            }
        }
        // An empty tail chunk stays for the next reply; a fully sent queue
        // keeps nothing but the free list.
        while self.segs.front().is_some_and(|s| match s {
            Seg::Bytes { start, end, .. } => start == end && *end > 0,
            Seg::Lent { left, .. } => *left == 0,
        }) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        match self.segs.pop_front() {
            Some(Seg::Bytes { data, .. }) => self.recycle(data),
            Some(Seg::Lent { pieces, .. }) => self.recycle_lent(pieces),
            None => {}
        }
    }

    /// Write to `w` until `WouldBlock` or empty, several segments per
    /// system call.
    ///
    /// # Errors
    /// The socket's error (not `WouldBlock`).
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<()> {
        while self.len > 0 {
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            let mut n_iov = 0;
            for s in &self.segs {
                if n_iov == IOV_MAX {
                    break;
                }
                n_iov += s.slices(&mut iov[n_iov..]);
            }
            match w.write_vectored(&iov[..n_iov]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Give memory back once idle: every recycled chunk (the next reply
    /// allocates one again).
    pub fn release(&mut self) {
        if self.is_empty() {
            self.segs.clear();
        }
        self.free.clear();
        self.free_bytes = 0;
        self.free_lent = Vec::new();
        self.chunk = FIRST_CHUNK;
    }
}

#[cfg(test)]
mod tests;
