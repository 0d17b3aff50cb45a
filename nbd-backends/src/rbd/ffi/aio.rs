//! Asynchronous librbd calls, completed into per-event-loop queues.
//!
//! Each request is a boxed [`Slot`] owning its buffer; librbd holds the box
//! (as the completion's callback argument) until the request finishes. The
//! callback, on a librbd thread, releases the completion, moves the slot
//! into its [`Queue`]'s list and bumps the queue's eventfd; the event loop
//! that owns the queue drains it ([`Queue::poll`]). Every loop has its own
//! queue and fd, so completions go straight to the loop that submitted them
//! (librbd's per-image event socket, `rbd_set_image_notification`, has one
//! fd per image and could not tell loops apart). The callback does nothing
//! else: a FUA write's flush is issued by the loop when it sees the write
//! done.

use std::ffi::c_void;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::{Fail, Image, check, sys};

/// One asynchronous operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AioKind {
    /// Read `len` bytes at `off` into `buf[at..at + len]` (the buffer grows
    /// if it is shorter).
    Read { off: u64, at: usize, len: usize },
    /// Write the whole buffer at `off`.
    Write { off: u64 },
    /// Discard a range.
    Discard { off: u64, len: u64 },
    /// Zero a range; `thick` keeps it allocated.
    Zero { off: u64, len: usize, thick: bool },
    /// Flush every write completed before it.
    Flush,
}

/// A finished operation, as [`Queue::poll`] hands it back.
pub struct Completed {
    /// The caller's tag from [`Image::submit`].
    pub tag: u64,
    /// What librbd said.
    pub result: Result<(), Fail>,
    /// The buffer given to `submit`, back to its owner.
    pub buf: Vec<u8>,
}

/// Requests started and not yet called back, so that closing the image
/// can wait for them. Counting is one atomic operation per request; the
/// mutex and condvar are only for the waiter at close.
#[derive(Default)]
pub(super) struct InFlight {
    n: AtomicUsize,
    lock: Mutex<()>,
    idle: Condvar,
}

impl InFlight {
    fn start(&self) {
        self.n.fetch_add(1, Ordering::AcqRel);
    }

    fn finish(&self) {
        if self.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Under the lock, so a waiter between its check and its wait
            // cannot miss this.
            let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.idle.notify_all();
        }
    }

    /// Block until every started request has been called back.
    pub(super) fn wait_idle(&self) {
        let mut g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        while self.n.load(Ordering::Acquire) > 0 {
            g = self.idle.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The part of a queue librbd's callback threads touch.
// The slots stay boxed: each travels to librbd as a raw pointer (a stable
// address) and is recycled through `Queue::free`, so steady state allocates
// nothing per request.
#[allow(clippy::vec_box)]
struct Shared {
    /// Signalled once per completion (a counter; one read resets it).
    events: OwnedFd,
    /// Finished slots; `None` once the queue is gone (its loop ended), so a
    /// late completion is dropped instead of parked in a list nobody reads
    /// (a slot holds the `Arc` of this very struct: that would leak both).
    done: Mutex<Option<Vec<Box<Slot>>>>,
}

/// A completion queue for one event loop.
#[allow(clippy::vec_box)]
pub struct Queue {
    shared: Arc<Shared>,
    /// Reused to take the finished list without allocating.
    scratch: Vec<Box<Slot>>,
    /// Slots of finished requests, for the next ones.
    free: Vec<Box<Slot>>,
}

struct Slot {
    tag: u64,
    buf: Vec<u8>,
    kind: AioKind,
    /// Issue a flush when this (write-like) operation succeeds, and report
    /// it only after that (FUA).
    then_flush: bool,
    call: &'static str,
    /// librbd's return value, set by the callback.
    ret: isize,
    queue: Arc<Shared>,
    inflight: Arc<InFlight>,
}

impl Queue {
    /// A queue with its own eventfd.
    ///
    /// # Errors
    ///
    /// eventfd(2)'s.
    pub fn new() -> std::io::Result<Self> {
        use rustix::event::{EventfdFlags, eventfd};
        let events = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Self {
            shared: Arc::new(Shared {
                events,
                done: Mutex::new(Some(Vec::new())),
            }),
            scratch: Vec::new(),
            free: Vec::new(),
        })
    }

    /// Readable when completions are waiting.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.shared.events.as_fd()
    }

    /// Hand every finished request to `done` (issuing the flush of a FUA
    /// write first); returns how many were handed over. Never blocks.
    pub fn poll(&mut self, image: &Image, done: &mut dyn FnMut(Completed)) -> usize {
        // Reset the counter before taking the list: a completion pushed
        // after this read bumps it again, so none is missed.
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.shared.events, &mut counter);
        let mut list = self
            .shared
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(finished) = &mut *list {
            std::mem::swap(&mut self.scratch, finished);
        }
        drop(list);
        let mut delivered = 0;
        let (finished, free) = (&mut self.scratch, &mut self.free);
        for mut slot in finished.drain(..) {
            if slot.ret >= 0 && slot.then_flush {
                slot.then_flush = false;
                slot.kind = AioKind::Flush;
                match issue(image, slot) {
                    Ok(()) => continue,
                    Err((e, s)) => {
                        slot = s;
                        slot.ret = -isize::try_from(e.errno).unwrap_or(5);
                    }
                }
            }
            let result = match (check(slot.call, slot.ret), slot.kind) {
                (Err(e), _) => Err(e),
                (Ok(n), AioKind::Read { len, .. }) if n != len => Err(Fail {
                    call: slot.call,
                    errno: libc::EIO,
                }),
                (Ok(_), _) => Ok(()),
            };
            done(Completed {
                tag: slot.tag,
                result,
                buf: std::mem::take(&mut slot.buf),
            });
            free.push(slot);
            delivered += 1;
        }
        delivered
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Finished slots go now; later completions are dropped by `push`.
        let done = self
            .shared
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(done);
    }
}

impl Shared {
    /// Queue a finished slot; signal the fd only when the list was empty.
    /// A non-empty list was signalled by the push that filled it, and the
    /// loop resets the fd before it takes the list, so nothing is missed,
    /// and under load one wake-up (and one write syscall) covers many
    /// completions.
    fn push(&self, slot: Box<Slot>) {
        let mut guard = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(done) = &mut *guard else {
            drop(guard);
            // The queue is gone: nobody wants the result.
            drop(slot);
            return;
        };
        let was_empty = done.is_empty();
        done.push(slot);
        drop(guard);
        if was_empty {
            let _ = rustix::io::write(&self.events, &1u64.to_ne_bytes());
        }
    }
}

/// The librbd call behind `kind`, for messages.
fn call_name(kind: AioKind) -> &'static str {
    match kind {
        AioKind::Read { .. } => "rbd_aio_read",
        AioKind::Write { .. } => "rbd_aio_write",
        AioKind::Discard { .. } => "rbd_aio_discard",
        AioKind::Zero { .. } => "rbd_aio_write_zeroes",
        AioKind::Flush => "rbd_aio_flush",
    }
}

/// librbd's completion callback (on one of its threads): hand the slot to
/// its queue. Kept to what cannot block or panic.
unsafe extern "C" fn on_complete(comp: sys::CompletionT, arg: *mut c_void) {
    // SAFETY: `arg` is the `Box<Slot>` that `issue` leaked for this very
    // completion; librbd calls back exactly once per completion, so the box
    // is reclaimed exactly once.
    let mut slot = unsafe { Box::from_raw(arg.cast::<Slot>()) };
    // SAFETY: `comp` is complete (we are its callback) and ours; it is
    // released exactly once, here, and not used afterwards.
    slot.ret = unsafe {
        let r = sys::rbd_aio_get_return_value(comp);
        sys::rbd_aio_release(comp);
        r
    };
    let (queue, inflight) = (Arc::clone(&slot.queue), Arc::clone(&slot.inflight));
    queue.push(slot);
    inflight.finish();
}

/// Start `slot`'s operation with pointers into its buffer; on failure the
/// slot comes back and nothing stays with librbd.
fn issue(image: &Image, mut slot: Box<Slot>) -> Result<(), (Fail, Box<Slot>)> {
    let kind = slot.kind;
    let call = call_name(kind);
    slot.call = call;
    let inflight = Arc::clone(&slot.inflight);
    let raw = Box::into_raw(slot);
    let mut comp: sys::CompletionT = std::ptr::null_mut();
    // SAFETY: valid out-pointer; `raw` is handed to `on_complete` only.
    let r = unsafe { sys::rbd_aio_create_completion(raw.cast(), Some(on_complete), &raw mut comp) };
    if let Err(e) = check("rbd_aio_create_completion", r as isize) {
        // SAFETY: no completion exists, so the box is still ours alone.
        return Err((e, unsafe { Box::from_raw(raw) }));
    }
    // SAFETY: librbd does not touch `raw` until the callback, so reading
    // the buffer's address and length through it here is unshared.
    let (buf, len) = unsafe { ((*raw).buf.as_mut_ptr(), (*raw).buf.len()) };
    let img = image.image;
    inflight.start();
    // SAFETY (every arm): open image; the buffer pointers stay valid until
    // the callback, because the slot owning the heap buffer is not touched
    // (nor the buffer reallocated) until librbd hands it back; `comp` is
    // released by the callback, or below if the call is refused.
    let r = unsafe {
        match kind {
            AioKind::Read { off, at, len } => {
                sys::rbd_aio_read2(img, off, len, buf.add(at).cast(), comp, 0)
            }
            AioKind::Write { off } => sys::rbd_aio_write2(img, off, len, buf.cast(), comp, 0),
            AioKind::Discard { off, len } => sys::rbd_aio_discard(img, off, len, comp),
            AioKind::Zero { off, len, thick } => {
                let flags = if thick { sys::WRITE_ZEROES_THICK } else { 0 };
                sys::rbd_aio_write_zeroes(img, off, len, comp, flags, 0)
            }
            AioKind::Flush => sys::rbd_aio_flush(img, comp),
        }
    };
    if let Err(e) = check(call, r as isize) {
        inflight.finish();
        // SAFETY: the request was refused: librbd's C wrappers return an
        // error only before handing the completion to the I/O path (errors
        // after that arrive through the callback), so librbd holds no
        // reference to it (released once, here) and will never call back;
        // the box is ours again.
        unsafe { sys::rbd_aio_release(comp) };
        // SAFETY: see above: sole owner again.
        return Err((e, unsafe { Box::from_raw(raw) }));
    }
    Ok(())
}

impl Image {
    /// Start `kind` with `buf`, completing into `queue`; with `then_flush`,
    /// a flush follows a successful write-like operation before it is
    /// reported. The buffer comes back from [`Queue::poll`] with `tag`, or
    /// at once with the error if the request could not be started.
    ///
    /// # Errors
    ///
    /// librbd refusing the request (or a READ range that overflows).
    pub fn submit(
        &self,
        queue: &mut Queue,
        kind: AioKind,
        then_flush: bool,
        mut buf: Vec<u8>,
        tag: u64,
    ) -> Result<(), (Fail, Vec<u8>)> {
        if let AioKind::Read { at, len, .. } = kind {
            let Some(end) = at.checked_add(len) else {
                let fail = Fail {
                    call: "rbd_aio_read",
                    errno: libc::EINVAL,
                };
                return Err((fail, buf));
            };
            if buf.len() < end {
                buf.resize(end, 0);
            }
        }
        let fields = |slot: &mut Slot| {
            slot.tag = tag;
            slot.kind = kind;
            slot.then_flush = then_flush;
            slot.ret = 0;
        };
        let slot = match queue.free.pop() {
            Some(mut slot) => {
                fields(&mut slot);
                slot.buf = buf;
                slot
            }
            None => Box::new(Slot {
                tag,
                buf,
                kind,
                then_flush,
                call: call_name(kind),
                ret: 0,
                queue: Arc::clone(&queue.shared),
                inflight: Arc::clone(&self.inflight),
            }),
        };
        issue(self, slot).map_err(|(e, mut slot)| {
            let buf = std::mem::take(&mut slot.buf);
            queue.free.push(slot);
            (e, buf)
        })
    }
}
