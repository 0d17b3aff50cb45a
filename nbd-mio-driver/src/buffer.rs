//! Byte buffers for one connection's input and output.
//!
//! A `Buf` is a `Vec<u8>` with a read cursor: bytes are appended at the
//! tail through [`Buf::spare`] + [`Buf::commit`] and taken from the head
//! with [`Buf::consume`]. Space is reclaimed by compaction, never by a new
//! allocation, so a connection in steady state allocates nothing. Growth is
//! bounded by the caller (a request frame or reply is at most the maximum
//! payload plus a header), so a hostile peer cannot make it unbounded.

use std::io::{self, Read, Write};

/// Why [`Buf::read_from`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// The peer closed its side.
    Eof,
    /// The socket is empty for now; an event will announce more.
    WouldBlock,
    /// The buffer reached the limit; bytes may remain in the socket and,
    /// with edge-triggered polling, no event will announce them.
    Limit,
}

/// A compacting byte buffer. See the module documentation.
#[derive(Debug, Default)]
pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    /// An empty buffer with `capacity` bytes reserved.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            data: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    /// Bytes waiting to be consumed.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Number of bytes waiting.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes the buffer can hold without growing.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Drop `n` bytes from the head.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// A writable slice of at least `min` bytes at the tail: compacts first,
    /// then grows if still too small. Fill it, then [`Buf::commit`].
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        self.spare_upto(min, usize::MAX)
    }

    /// [`Buf::spare`], growing the storage to at most `cap` bytes (or what
    /// `min` needs) instead of doubling past it.
    fn spare_upto(&mut self, min: usize, cap: usize) -> &mut [u8] {
        if self.data.len() - self.end < min {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.data.len() - self.end < min {
                let want = (self.end + min).max((self.data.len() * 2).min(cap));
                // Exactly `want`: `resize` alone may double the capacity
                // past it (Vec's amortised growth), and a 1 MiB WRITE's
                // frame would then hold 2 MiB.
                self.data.reserve_exact(want - self.data.len());
                self.data.resize(want, 0);
            }
        }
        &mut self.data[self.end..]
    }

    /// Mark `n` bytes of the last [`Buf::spare`] slice as filled.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }

    /// Make `data[..filled]` this (empty) buffer's content without copying,
    /// handing the old storage back through `data` for reuse. Does nothing
    /// unless the buffer is empty and `filled` fits.
    pub fn swap_storage(&mut self, data: &mut Vec<u8>, filled: usize) {
        if self.is_empty() && filled <= data.len() {
            std::mem::swap(&mut self.data, data);
            self.start = 0;
            self.end = filled;
        }
    }

    /// Append bytes.
    pub fn extend(&mut self, b: &[u8]) {
        self.spare(b.len())[..b.len()].copy_from_slice(b);
        self.commit(b.len());
    }

    /// Give memory back after a large request once the buffer is empty and
    /// holds more than `limit` bytes (a 32 MiB write must not pin 32 MiB per
    /// idle connection, but bursts up to `limit` reuse the same memory).
    pub fn shrink_if_idle(&mut self, keep: usize, limit: usize) {
        if self.is_empty() && self.data.len() > limit {
            self.data = vec![0; keep];
        }
    }

    /// Read from `r` until `WouldBlock`, EOF or `limit` bytes are buffered,
    /// and say which of the three stopped it. With `short_is_drained`, a
    /// read that returns less than asked also counts as `WouldBlock`: the
    /// caller knows no close is pending (the readiness event did not say
    /// read-closed), so a later arrival, data or FIN, raises a new event.
    pub fn read_from(
        &mut self,
        r: &mut impl Read,
        limit: usize,
        short_is_drained: bool,
    ) -> io::Result<ReadEnd> {
        while self.len() < limit {
            let want = (limit - self.len()).clamp(1, 256 * 1024);
            // Ask for little so an idle connection's buffer stays small;
            // `spare` returns all the free room anyway, and grows (by
            // doubling) only when the buffer is full.
            let left = limit - self.len();
            // Never more storage than the frame being read: doubling past
            // it made a 32 MiB WRITE hold a 64 MiB buffer (found by the
            // whole-server fuzz target's heap bound).
            let spare = self.spare_upto(want.min(4096), limit);
            let room = spare.len().min(left);
            match r.read(&mut spare[..room]) {
                Ok(0) => return Ok(ReadEnd::Eof),
                // A short read took everything the socket had: asking again
                // would only return EAGAIN (a wasted system call per
                // request at queue depth 1). On Linux a later arrival raises
                // a new edge-triggered event, so nothing is missed (tokio
                // clears readiness the same way). A FIN that came with the
                // data would not: the caller says when none did.
                Ok(n) if short_is_drained && n < room => {
                    self.commit(n);
                    return Ok(ReadEnd::WouldBlock);
                }
                Ok(n) => self.commit(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadEnd::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ReadEnd::Limit)
    }

    /// Write to `w` until `WouldBlock` or empty.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<()> {
        while !self.is_empty() {
            match w.write(self.filled()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Buf;

    #[test]
    fn swap_storage_takes_the_vec_and_returns_the_old_one() {
        let mut b = Buf::with_capacity(8);
        let mut v = b"hdr+data-tail".to_vec();
        b.swap_storage(&mut v, 8);
        assert_eq!(b.filled(), b"hdr+data");
        assert_eq!(v.len(), 8, "the old 8-byte storage came back");
        // Not empty any more: a second swap is refused.
        let mut w = vec![1u8; 4];
        b.swap_storage(&mut w, 4);
        assert_eq!(b.filled(), b"hdr+data");
    }

    #[test]
    fn compacts_before_growing() {
        let mut b = Buf::with_capacity(8);
        b.extend(b"abcdef");
        b.consume(4);
        let cap = b.capacity();
        b.extend(b"ghijkl");
        assert_eq!(b.filled(), b"efghijkl");
        assert_eq!(b.capacity(), cap, "compaction made room without allocating");
        b.extend(b"m");
        assert_eq!(b.filled(), b"efghijklm");
    }
}
