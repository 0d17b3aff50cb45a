//! Asynchronous backends: many requests in flight from the event loop, no
//! thread per request (the `rbd` backend, through librbd's aio calls).
//!
//! Each event loop of the driver opens its own queue
//! ([`AsyncBackend::queue`]), registers the queue's [`AioQueue::notify_fd`]
//! in its poller, submits operations with an owned buffer and a tag of its
//! own, and when the fd is readable calls [`AioQueue::poll_completions`],
//! which hands back each finished operation's tag, result and buffer. The buffer is the
//! driver's: a READ's data lands in it at the offset the driver chose (so
//! the reply header can sit in front of it and the whole buffer becomes the
//! output without a copy); a WRITE's payload is read from it. Operations the
//! interface does not carry (extents, resize, cache) go through the
//! synchronous [`Backend`](crate::Backend) methods as before.

use std::io;
use std::os::fd::BorrowedFd;

use crate::ZeroFlags;

/// An operation for [`AsyncBackend::submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AioOp {
    /// Read `len` bytes at `offset` into `buf[at..at + len]`; the backend
    /// grows the buffer if it is shorter (never shrinks it).
    Read {
        /// Export offset.
        offset: u64,
        /// Where the data starts in the buffer.
        at: usize,
        /// Bytes to read.
        len: usize,
    },
    /// Write the whole buffer at `offset`; with `fua`, durably before the
    /// completion is reported.
    Write {
        /// Export offset.
        offset: u64,
        /// Force unit access.
        fua: bool,
    },
    /// Make every write completed before this one durable.
    Flush,
    /// Discard a range (a hint).
    Trim {
        /// Export offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Durable before completion.
        fua: bool,
    },
    /// Make a range read as zeroes ([`ZeroFlags`] as for
    /// [`Backend::write_zeroes`](crate::Backend::write_zeroes)).
    Zero {
        /// Export offset.
        offset: u64,
        /// Length.
        len: u64,
        /// May-trim, fast, FUA.
        flags: ZeroFlags,
    },
}

/// A finished operation: the tag given to `submit`, its result, and the
/// buffer given to `submit`.
pub type Completion = (u64, io::Result<()>, Vec<u8>);

/// What [`AsyncBackend::submit`] did.
#[derive(Debug)]
pub enum Submitted {
    /// Started: the completion comes from
    /// [`AsyncBackend::poll_completions`].
    Pending,
    /// Finished at once (refused, or nothing to do): the result and the
    /// buffer; no completion follows.
    Now(io::Result<()>, Vec<u8>),
}

/// A backend that runs operations asynchronously. Each event loop opens
/// its own [`AioQueue`], so completions return to the loop that submitted
/// them. Offsets and lengths are validated by the driver as for
/// [`Backend`](crate::Backend); implementations still check.
pub trait AsyncBackend: Send + Sync {
    /// A new completion queue, for one event loop.
    ///
    /// # Errors
    ///
    /// When the queue's notification fd cannot be created.
    fn queue(&self) -> io::Result<Box<dyn AioQueue>>;
}

/// One event loop's handle on an [`AsyncBackend`]: operations submitted
/// here complete here.
pub trait AioQueue: Send {
    /// Start `op`. Its completion comes later from
    /// [`AioQueue::poll_completions`] with `tag` and `buf`, unless it
    /// finished at once ([`Submitted::Now`]: out of range, read-only, a
    /// FAST_ZERO that would not be fast, zero length).
    fn submit(&mut self, op: AioOp, buf: Vec<u8>, tag: u64) -> Submitted;

    /// Readable when completions may be waiting. Polled edge-triggered:
    /// each readiness is followed by [`AioQueue::poll_completions`], which
    /// drains everything.
    fn notify_fd(&self) -> BorrowedFd<'_>;

    /// Hand every finished operation to `done` and return how many. Never
    /// blocks. Resets the fd's readiness first, so a completion that lands
    /// during the call makes the fd readable again.
    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize;
}
