//! Zero-copy WRITEs: a large page-aligned WRITE's payload is read from the
//! socket straight into pages, which a backend that takes pages (memory)
//! then installs in place of its own. Without it each byte was copied
//! twice on the loop thread: by the kernel into the input buffer, then
//! into the backend's pages (perf on fio 1 MiB writes: that second copy
//! was 41 % of the server's CPU).
//!
//! nbd-proto accepts such a WRITE on its header
//! (`Connection::begin_write_stream`); payload bytes already in the input
//! buffer are copied in (at most one read batch), the rest is read with
//! `readv` into the pages. Pages come from a per-loop pool that the pages
//! the backend gives back refill, so steady state allocates nothing.

use std::io::{self, IoSliceMut, Read};
use std::sync::Arc;

use nbd_backends::lent::PAGE_SIZE;
use nbd_backends::{Backend, Page};
use nbd_proto::server::StreamedWrite;

/// WRITEs at least this long are streamed: below it the input buffer
/// holds the whole frame after one read anyway.
pub const STREAM_MIN: u64 = 256 * 1024;

/// Pages a loop keeps for the next streamed WRITE: a few 1 MiB writes'
/// worth (16 MiB), so a burst does not hold memory after it.
const POOL_KEEP: usize = 4096;

/// Iovecs per `readv`: 256 KiB, the input buffer's largest read.
const IOVECS: usize = 64;

/// A loop's spare pages.
#[derive(Default)]
pub struct PagePool {
    pages: Vec<Arc<Page>>,
}

impl PagePool {
    /// A page to receive into (recycled, or new: new data needs memory).
    fn take(&mut self) -> Arc<Page> {
        self.pages.pop().unwrap_or_else(|| Arc::new([0; PAGE_SIZE]))
    }

    /// Keep `page` if nobody else holds it (a READ reply may) and the pool
    /// has room.
    fn give(&mut self, mut page: Arc<Page>) {
        if Arc::get_mut(&mut page).is_some() && self.pages.len() < POOL_KEEP {
            if self.pages.capacity() == 0 {
                self.pages.reserve_exact(POOL_KEEP);
            }
            self.pages.push(page);
        }
    }

    /// Give back the pool's memory (housekeeping on an idle loop).
    pub fn release(&mut self) {
        self.pages = Vec::new();
    }

    /// Bytes the pool holds.
    pub fn bytes(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }
}

/// The WRITE being received, if any.
#[derive(Default)]
pub struct Inflow {
    write: Option<StreamedWrite>,
    /// One slot per page of the payload (kept, with its capacity, between
    /// WRITEs).
    pages: Vec<Option<Arc<Page>>>,
    /// Payload bytes received so far.
    filled: usize,
}

impl Inflow {
    /// True while a payload is being received or waits to be stored.
    pub fn is_active(&self) -> bool {
        self.write.is_some()
    }

    /// True when payload bytes are still to come.
    pub fn wants_payload(&self) -> bool {
        self.write.is_some() && self.filled < self.len()
    }

    /// True when the whole payload is in and the write can be stored.
    pub fn is_complete(&self) -> bool {
        self.write.is_some() && self.filled == self.len()
    }

    fn len(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }

    /// Bytes of pages this WRITE holds.
    pub fn held(&self) -> usize {
        if self.write.is_some() { self.len() } else { 0 }
    }

    /// Start receiving `w` (page-aligned, as nbd-proto was asked).
    pub fn start(&mut self, w: StreamedWrite, pool: &mut PagePool) {
        debug_assert!(self.write.is_none());
        let n = usize::try_from(w.len).unwrap_or(0) / PAGE_SIZE;
        self.pages.clear();
        self.pages.extend((0..n).map(|_| Some(pool.take())));
        self.filled = 0;
        self.write = Some(w);
    }

    /// Payload bytes that were already in the input buffer.
    pub fn absorb(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.filled < self.len() {
            let (page, at) = (self.filled / PAGE_SIZE, self.filled % PAGE_SIZE);
            let dst = &mut page_mut(&mut self.pages[page])[at..];
            let n = dst.len().min(data.len());
            dst[..n].copy_from_slice(&data[..n]);
            data = &data[n..];
            self.filled += n;
        }
    }

    /// Read payload straight into the pages; returns the bytes read (0 at
    /// EOF) and how many were asked for. `WouldBlock` and other errors are
    /// the socket's.
    pub fn read_from(&mut self, r: &mut impl Read) -> io::Result<(usize, usize)> {
        let (first, at) = (self.filled / PAGE_SIZE, self.filled % PAGE_SIZE);
        let asked = (self.len() - self.filled).min(IOVECS * PAGE_SIZE - at);
        let mut slots = self.pages[first..].iter_mut();
        let mut head = Some(at);
        let mut bufs: [IoSliceMut<'_>; IOVECS] = std::array::from_fn(|_| {
            let skip = head.take().unwrap_or(0);
            match slots.next() {
                Some(slot) => IoSliceMut::new(&mut page_mut(slot)[skip..]),
                None => IoSliceMut::new(&mut []),
            }
        });
        let n = r.read_vectored(&mut bufs)?;
        self.filled += n;
        Ok((n, asked))
    }

    /// Store the complete payload through `backend`; the pages it gives
    /// back refill `pool`. Returns the WRITE (for its reply) and the
    /// result.
    pub fn finish(
        &mut self,
        backend: &dyn Backend,
        pool: &mut PagePool,
    ) -> Option<(StreamedWrite, io::Result<()>)> {
        let w = self.write.take()?;
        let r = backend.write_pages(w.offset, &mut self.pages, w.fua);
        for page in self.pages.drain(..).flatten() {
            pool.give(page);
        }
        Some((w, r))
    }

    /// The connection closes mid-payload: the pages go back to the pool,
    /// the WRITE is never answered (nobody is there to read it).
    pub fn abandon(&mut self, pool: &mut PagePool) -> Option<StreamedWrite> {
        for page in self.pages.drain(..).flatten() {
            pool.give(page);
        }
        self.write.take()
    }
}

/// The page of a slot being filled: the inflow's own (from the pool or
/// new, held by nobody else, so `make_mut` never copies).
fn page_mut(slot: &mut Option<Arc<Page>>) -> &mut Page {
    Arc::make_mut(slot.get_or_insert_with(|| Arc::new([0; PAGE_SIZE])))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chunks(Vec<u8>, usize);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
        fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
            let mut total = 0;
            for b in bufs {
                let n = self.read(b)?;
                total += n;
                if n < b.len() {
                    break;
                }
            }
            Ok(total)
        }
    }

    #[test]
    fn absorbed_and_read_bytes_land_in_order() {
        let mut pool = PagePool::default();
        let mut f = Inflow::default();
        let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        let w = stream(0, data.len() as u64);
        f.start(w, &mut pool);
        f.absorb(&data[..5000]);
        let mut src = Chunks(data[5000..].to_vec(), 3000);
        while f.wants_payload() {
            assert!(f.read_from(&mut src).unwrap().0 > 0);
        }
        assert!(f.is_complete());
        let m = nbd_backends::MemoryBackend::new(1 << 20).unwrap();
        let (_, r) = f.finish(&m, &mut pool).unwrap();
        r.unwrap();
        let mut back = vec![0u8; data.len()];
        m.read_at(0, &mut back).unwrap();
        assert_eq!(back, data);
        // Pages over holes are kept by the backend: none came back.
        assert_eq!(pool.bytes(), 0);
        // Overwriting returns the old pages to the pool.
        f.start(stream(0, data.len() as u64), &mut pool);
        f.absorb(&vec![7; data.len()]);
        f.finish(&m, &mut pool).unwrap().1.unwrap();
        assert_eq!(pool.bytes(), data.len());
    }

    fn stream(offset: u64, len: u64) -> StreamedWrite {
        use nbd_proto::server::{BlockSizes, Connection, Negotiated, TransmissionConfig};
        use nbd_proto::wire::request::RequestHeader;
        use nbd_proto::{CmdFlags, Command, Cookie, HeaderMode, TransmissionFlags};
        let neg = Negotiated {
            mode: HeaderMode::Simple,
            size: 1 << 20,
            flags: TransmissionFlags::HAS_FLAGS,
            block_sizes: BlockSizes::DEFAULT,
            block_sizes_agreed: false,
            meta_contexts: 0,
            tls: false,
        };
        let mut c = Connection::in_transmission(neg, TransmissionConfig::default());
        let h = RequestHeader {
            flags: CmdFlags::empty(),
            command: Command::Write,
            cookie: Cookie(1),
            offset,
            len,
        };
        let mut b = [0u8; 28];
        h.encode(HeaderMode::Simple, &mut b).unwrap();
        c.begin_write_stream(&b, 1, 4096).unwrap().1
    }
}
