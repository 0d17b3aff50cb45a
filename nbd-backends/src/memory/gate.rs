//! Writes against RESIZE: a reader-writer lock split into one lock per
//! thread slot (a "big-reader" lock), so writers on different threads touch
//! different cache lines and never contend, and a resize, which is rare,
//! takes them all.
//!
//! Why writes need it: a write checks its range against the size and then
//! fills pages. Were a shrink to run between the two, the write would
//! allocate pages past the new end, and a later grow would read them back
//! instead of zeroes. Holding its thread's slot for the whole request makes
//! every write happen wholly before or wholly after a resize, as with the
//! single lock this replaced. Reads, trims and zeroing need no gate: they
//! never allocate, and a read that races a shrink returns old data or
//! zeroes, either of which it may see.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Thread slots. More than the event loops nbdd starts by default (8), so
/// that loop threads rarely share a line.
const SLOTS: usize = 16;

/// One slot per cache line pair (adjacent-line prefetch pulls two).
#[repr(align(128))]
struct Slot(RwLock<()>);

pub(super) struct Gate {
    slots: [Slot; SLOTS],
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot, handed out round robin at first use.
    static MINE: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
}

// The guarded value is `()`: a panic while holding a slot leaves nothing
// inconsistent, so poisoning is ignored.
impl Gate {
    pub(super) fn new() -> Self {
        Self {
            slots: [const { Slot(RwLock::new(())) }; SLOTS],
        }
    }

    /// Held by a write for its whole duration.
    pub(super) fn enter(&self) -> RwLockReadGuard<'_, ()> {
        let slot = &self.slots[MINE.with(|&m| m)];
        slot.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Held by a resize while it changes the size: waits for the writes in
    /// flight and holds back new ones. Slots are taken in order, so two
    /// callers cannot deadlock.
    pub(super) fn exclusive(&self) -> [RwLockWriteGuard<'_, ()>; SLOTS] {
        std::array::from_fn(|i| {
            self.slots[i]
                .0
                .write()
                .unwrap_or_else(PoisonError::into_inner)
        })
    }
}
