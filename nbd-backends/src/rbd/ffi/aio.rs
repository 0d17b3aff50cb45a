//! Asynchronous librbd calls, completed through the image's event fd.
//!
//! Each request takes a slot in [`Table`] that owns its buffer until librbd
//! is done with it; the slot index is the completion's `arg` (an integer,
//! never dereferenced). librbd queues finished completions on the image and
//! bumps the eventfd; [`Image::poll`] drains them with `rbd_poll_io_events`.
//! No completion callback is ever set: with an event fd librbd queues the
//! completion anyway, so a callback releasing it would race the poll.

use std::ffi::c_void;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

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

/// A finished operation, as [`Image::poll`] hands it back.
pub struct Completed {
    /// The caller's tag from [`Image::submit`].
    pub tag: u64,
    /// What librbd said.
    pub result: Result<(), Fail>,
    /// The buffer given to `submit`, back to its owner.
    pub buf: Vec<u8>,
}

struct Slot {
    tag: u64,
    buf: Vec<u8>,
    comp: sys::CompletionT,
    /// Issue a flush when this (write-like) operation succeeds, and
    /// complete only after it (FUA).
    then_flush: bool,
    /// For reads: the length asked for (a short read is an error).
    read_len: Option<usize>,
    call: &'static str,
}

/// Requests in flight, indexed by the completion's `arg`.
#[derive(Default)]
pub struct Table {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
}

impl Table {
    fn insert(&mut self, slot: Slot) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        }
    }

    fn take(&mut self, i: usize) -> Option<Slot> {
        let slot = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        Some(slot)
    }
}

/// Create a completion for slot `i` and start `kind` on it, with pointers
/// into the slot's buffer. On failure nothing stays with librbd.
fn issue(image: sys::ImageT, slot: &mut Slot, i: usize, kind: AioKind) -> Result<(), Fail> {
    let mut comp: sys::CompletionT = std::ptr::null_mut();
    let arg = std::ptr::without_provenance_mut::<c_void>(i);
    // SAFETY: valid out-pointer; no callback, so `arg` is only handed back
    // by rbd_aio_get_arg.
    let r = unsafe { sys::rbd_aio_create_completion(arg, None, &raw mut comp) };
    check("rbd_aio_create_completion", r as isize)?;
    slot.comp = comp;
    let (call, r) = match kind {
        AioKind::Read { off, at, len } => {
            let dst = slot.buf[at..at + len].as_mut_ptr().cast();
            // SAFETY: open image with an event fd; `dst` is valid for `len`
            // bytes and stays so (the slot owns the heap buffer and never
            // touches it) until the completion is polled.
            ("rbd_aio_read", unsafe {
                sys::rbd_aio_read2(image, off, len, dst, comp, 0)
            })
        }
        AioKind::Write { off } => {
            let (src, len) = (slot.buf.as_ptr().cast(), slot.buf.len());
            // SAFETY: as for reads: the buffer outlives the request.
            ("rbd_aio_write", unsafe {
                sys::rbd_aio_write2(image, off, len, src, comp, 0)
            })
        }
        // SAFETY (the next three): open image; plain integers; `comp` is
        // owned by the slot until polled.
        AioKind::Discard { off, len } => ("rbd_aio_discard", unsafe {
            sys::rbd_aio_discard(image, off, len, comp)
        }),
        AioKind::Zero { off, len, thick } => {
            let flags = if thick { sys::WRITE_ZEROES_THICK } else { 0 };
            ("rbd_aio_write_zeroes", unsafe {
                sys::rbd_aio_write_zeroes(image, off, len, comp, flags, 0)
            })
        }
        AioKind::Flush => ("rbd_aio_flush", unsafe { sys::rbd_aio_flush(image, comp) }),
    };
    slot.call = call;
    if let Err(e) = check(call, r as isize) {
        // SAFETY: the request was refused, so librbd holds no reference to
        // the completion, which we release once.
        unsafe { sys::rbd_aio_release(comp) };
        return Err(e);
    }
    Ok(())
}

impl Image {
    /// Start `kind` with `buf`; with `then_flush`, a flush follows a
    /// successful write-like operation before it completes. The buffer
    /// comes back from [`Image::poll`] with `tag`, or at once with the error
    /// if the request could not be started.
    ///
    /// # Errors
    ///
    /// EINVAL before [`Image::enable_events`]; librbd refusing the request.
    pub fn submit(
        &self,
        kind: AioKind,
        then_flush: bool,
        mut buf: Vec<u8>,
        tag: u64,
    ) -> Result<(), (Fail, Vec<u8>)> {
        if !self.events.load(Ordering::Acquire) {
            let fail = Fail {
                call: "rbd_aio",
                errno: libc::EINVAL,
            };
            return Err((fail, buf));
        }
        let mut read_len = None;
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
            read_len = Some(len);
        }
        let mut table = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = Slot {
            tag,
            buf,
            comp: std::ptr::null_mut(),
            then_flush,
            read_len,
            call: "rbd_aio",
        };
        let i = table.insert(slot);
        let Some(slot) = table.slots[i].as_mut() else {
            unreachable!("slot {i} was just filled")
        };
        match issue(self.image, slot, i, kind) {
            Ok(()) => Ok(()),
            Err(e) => {
                let slot = table.take(i).map(|s| s.buf).unwrap_or_default();
                Err((e, slot))
            }
        }
    }

    /// Hand every finished request to `done`; returns how many. Never
    /// blocks. The caller reads the event fd first, so a completion that
    /// arrives during the drain signals it again.
    pub fn poll(&self, done: &mut dyn FnMut(Completed)) -> usize {
        let mut comps = [std::ptr::null_mut(); 32];
        let mut delivered = 0;
        loop {
            // SAFETY: open image; `comps` has room for 32 handles.
            let n = unsafe { sys::rbd_poll_io_events(self.image, comps.as_mut_ptr(), 32) };
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            for &comp in &comps[..n.min(32)] {
                if let Some(c) = self.finish(comp) {
                    done(c);
                    delivered += 1;
                }
            }
        }
        delivered
    }

    /// Release one polled completion; `None` when it continues as a flush.
    fn finish(&self, comp: sys::CompletionT) -> Option<Completed> {
        // SAFETY: `comp` came from rbd_poll_io_events, so it is complete and
        // ours; it is released exactly once, here.
        let (i, r) = unsafe {
            let i = sys::rbd_aio_get_arg(comp).addr();
            let r = sys::rbd_aio_get_return_value(comp);
            sys::rbd_aio_release(comp);
            (i, r)
        };
        let mut table = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        let mut slot = table.take(i)?;
        if r >= 0 && slot.then_flush {
            slot.then_flush = false;
            let i = table.insert(slot);
            let Some(s) = table.slots[i].as_mut() else {
                unreachable!("slot {i} was just filled")
            };
            match issue(self.image, s, i, AioKind::Flush) {
                Ok(()) => return None,
                Err(e) => {
                    let slot = table.take(i)?;
                    return Some(Completed {
                        tag: slot.tag,
                        result: Err(e),
                        buf: slot.buf,
                    });
                }
            }
        }
        let result = match (check(slot.call, r), slot.read_len) {
            (Err(e), _) => Err(e),
            (Ok(n), Some(want)) if n != want => Err(Fail {
                call: slot.call,
                errno: libc::EIO,
            }),
            (Ok(_), _) => Ok(()),
        };
        Some(Completed {
            tag: slot.tag,
            result,
            buf: slot.buf,
        })
    }
}

/// Before closing: wait for everything in flight, release what the event
/// queue gives back, and leak (never free) a completion it does not.
pub(super) fn drain(image: &mut Image) {
    let table = image
        .inflight
        .get_mut()
        .unwrap_or_else(PoisonError::into_inner);
    let mut pending = 0;
    for slot in table.slots.iter().flatten() {
        // SAFETY: the completion is live (released only when polled) and
        // waiting on it does not consume it.
        unsafe { sys::rbd_aio_wait_for_complete(slot.comp) };
        pending += 1;
    }
    if pending == 0 {
        return;
    }
    // Everything is complete, so its buffer is no longer used; chained
    // flushes are not started (the image is about to be flushed by close).
    for slot in image
        .inflight
        .get_mut()
        .unwrap_or_else(PoisonError::into_inner)
        .slots
        .iter_mut()
        .flatten()
    {
        slot.then_flush = false;
    }
    let mut comps = [std::ptr::null_mut(); 32];
    loop {
        // SAFETY: open image; room for 32 handles.
        let n = unsafe { sys::rbd_poll_io_events(image.image, comps.as_mut_ptr(), 32) };
        let Ok(n) = usize::try_from(n) else { break };
        if n == 0 {
            break;
        }
        for &comp in &comps[..n.min(32)] {
            drop(image.finish(comp));
        }
    }
    log::debug!("rbd: {pending} request(s) still in flight at close were waited for");
}
