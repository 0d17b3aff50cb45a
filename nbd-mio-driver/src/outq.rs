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
//! Memory: recycled chunks are kept up to [`FREE_KEEP`] bytes; a
//! connection that goes idle gives them all back ([`OutQueue::release`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// The first chunk's size: negotiation replies are small, and an idle
/// client should cost little.
const FIRST_CHUNK: usize = 1024;
/// The largest chunk for small replies (sizes double up to it as output
/// piles up: many small replies at depth).
const CHUNK: usize = 64 * 1024;
/// Recycled chunk bytes kept per connection for the next burst.
pub const FREE_KEEP: usize = 8 * 1024 * 1024;
/// Segments handed to one `writev` (Linux allows 1024; a few dozen already
/// cover several MiB).
const IOV_MAX: usize = 64;

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

struct Seg {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

/// A queue of output segments. See the module documentation.
#[derive(Default)]
pub struct OutQueue {
    segs: VecDeque<Seg>,
    free: Vec<Vec<u8>>,
    free_bytes: usize,
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
        self.free_bytes + self.segs.iter().map(|s| s.data.len()).sum::<usize>()
    }

    /// A writable slice of at least `min` bytes at the tail; fill it, then
    /// [`OutQueue::commit`].
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        let fits = self
            .segs
            .back()
            .is_some_and(|s| s.data.len() - s.end >= min);
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
            self.segs.push_back(Seg {
                data,
                start: 0,
                end: 0,
            });
        }
        match self.segs.back_mut() {
            Some(s) => &mut s.data[s.end..],
            None => &mut [],
        }
    }

    /// Mark `n` bytes of the last [`OutQueue::spare`] slice as queued.
    pub fn commit(&mut self, n: usize) {
        if let Some(s) = self.segs.back_mut() {
            let n = n.min(s.data.len() - s.end);
            s.end += n;
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
            let take = left.min(s.end - s.start);
            parts.push(&s.data[s.end - take..s.end]);
            left -= take;
        }
        Some(parts.into_iter().rev().flatten().copied().collect())
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
        self.segs.push_back(Seg { data, start, end });
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
            .find(|s| s.end > s.start)
            .map_or(&[], |s| &s.data[s.start..s.end])
    }

    /// Drop `n` sent bytes from the head, recycling emptied segments.
    pub fn consume(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(s) = self.segs.front_mut() else {
                return;
            };
            let k = n.min(s.end - s.start);
            s.start += k;
            n -= k;
            if s.start == s.end {
                self.pop_front();
            }
        }
        // An empty tail chunk stays for the next reply; a fully sent queue
        // keeps nothing but the free list.
        while self
            .segs
            .front()
            .is_some_and(|s| s.start == s.end && s.end > 0)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(s) = self.segs.pop_front() {
            self.recycle(s.data);
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
            for (slot, s) in iov
                .iter_mut()
                .zip(self.segs.iter().filter(|s| s.end > s.start))
            {
                *slot = IoSlice::new(&s.data[s.start..s.end]);
                n_iov += 1;
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
        self.chunk = FIRST_CHUNK;
    }
}

#[cfg(test)]
mod tests {
    use super::OutQueue;

    #[test]
    fn small_replies_share_a_chunk_and_leave_in_one_write() {
        let mut q = OutQueue::default();
        q.extend(b"abc");
        q.extend(b"defg");
        let mut out = Vec::new();
        q.write_to(&mut out).unwrap();
        assert_eq!(out, b"abcdefg");
        assert!(q.is_empty());
    }

    #[test]
    fn a_pushed_vec_is_sent_in_place_and_storage_comes_back() {
        let mut q = OutQueue::default();
        q.extend(b"head");
        let mut v = b"xxDATAyy".to_vec();
        q.push_vec(&mut v, 2, 6);
        q.extend(b"tail");
        assert_eq!(q.len(), 12);
        let mut out = Vec::new();
        q.write_to(&mut out).unwrap();
        assert_eq!(out, b"headDATAtail");
        // The pushed buffer was recycled: the next push hands it back.
        let mut w = Vec::new();
        q.push_vec(&mut w, 0, 0);
        assert!(!w.is_empty(), "a recycled chunk, not a fresh Vec");
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        struct Trickle(Vec<u8>);
        impl std::io::Write for Trickle {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let n = b.len().min(3);
                self.0.extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut q = OutQueue::default();
        for part in [&b"0123456789"[..], b"abcdef"] {
            q.extend(part);
        }
        let mut big = vec![7u8; 100_000];
        q.push_vec(&mut big, 0, 100_000);
        let mut t = Trickle(Vec::new());
        q.write_to(&mut t).unwrap();
        assert_eq!(&t.0[..16], b"0123456789abcdef");
        assert_eq!(t.0.len(), 16 + 100_000);
    }

    #[test]
    fn chunks_come_in_few_sizes() {
        use super::{CHUNK, FIRST_CHUNK, size_class};
        assert_eq!(size_class(1), FIRST_CHUNK);
        assert_eq!(size_class(4097), 8192);
        assert_eq!(size_class(CHUNK), CHUNK);
        assert_eq!(size_class(CHUNK + 1), 2 * CHUNK);
        assert_eq!(size_class((1 << 20) + 32), (1 << 20) + CHUNK);
    }

    #[test]
    fn front_skips_a_reserved_but_empty_segment() {
        let mut q = OutQueue::default();
        q.spare(10);
        q.commit(0);
        let mut v = b"data".to_vec();
        q.push_vec(&mut v, 0, 4);
        assert_eq!(q.front(), b"data");
        q.consume(4);
        assert!(q.is_empty() && q.front().is_empty());
    }

    #[test]
    fn large_reservations_get_their_own_chunk_and_are_recycled() {
        let mut q = OutQueue::default();
        let s = q.spare(1 << 20);
        assert!(s.len() >= 1 << 20);
        q.commit(1 << 20);
        let mut out = Vec::new();
        q.write_to(&mut out).unwrap();
        let held = q.capacity();
        assert!(held >= 1 << 20, "the chunk is kept for the next reply");
        q.spare(1 << 20);
        assert_eq!(q.capacity(), held, "reused, not reallocated");
        q.commit(0);
        q.consume(0);
        q.release();
        assert_eq!(q.capacity(), 0, "idle: nothing kept");
    }
}
