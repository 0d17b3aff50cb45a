//! The page table: a radix tree of fixed depth over leaf indices, whose
//! nodes are created on first use (`OnceLock`) and never locked.
//!
//! Five levels of 512 slots above the leaves cover 2^45 leaves of 64 pages:
//! 2^63 bytes, any export size. A lookup is five `OnceLock::get`s (an
//! acquire load and a pointer each, on lines that stay in cache for a hot
//! export) with no write to shared memory, so readers never contend here.
//! Only what has been written exists: a 4 KiB write into a fresh part of a
//! huge export creates at most one node per level (8 KiB each, fewer as
//! neighbours share them) and one 1.6 KiB leaf.
//!
//! Nodes are never freed while the export lives (a `OnceLock` cannot be
//! emptied through `&self`, and freeing under concurrent lock-free readers
//! would need reclamation this crate cannot write without `unsafe`): pages
//! are freed, the table keeps at most a leaf per 256 KiB and a node per
//! 128 MiB of address space ever written: under 1% of it.
//!
//! Why not a crate: dashmap's shards still write a lock word on every read
//! (readers of one shard bounce its line) and keep no order, so extents
//! over a range would probe page by page; a lock-free ordered map
//! (crossbeam-skiplist) costs a chain of pointer chases per page where the
//! tree costs five hops per 64 pages, and its removal needs epoch
//! reclamation. `std`'s `OnceLock` and `RwLock` give what is needed.

use std::ops::ControlFlow;
use std::sync::OnceLock;

use super::leaf::Leaf;

/// log2 of the slots of an interior node.
const FAN_BITS: u32 = 9;
const FAN: usize = 1 << FAN_BITS;

/// The root: five interior levels over the leaves.
pub(super) type Root = Inner<Inner<Inner<Inner<Inner<Leaf>>>>>;

/// What a walk over a range of leaf indices finds, in order.
pub(super) enum Run<'a> {
    /// Leaves `first..end` do not exist: nothing there was ever written.
    Absent { first: u64, end: u64 },
    /// Leaf number `index`.
    Leaf { index: u64, leaf: &'a Leaf },
}

/// A level of the tree; `leaf` arguments are absolute leaf indices, of
/// which each level uses its own bits.
pub(super) trait Level: Sized {
    /// log2 of the leaves under one node of this level.
    const BITS: u32;
    fn boxed() -> Box<Self>;
    fn get(&self, leaf: u64) -> Option<&Leaf>;
    fn get_or_create(&self, leaf: u64) -> &Leaf;
    /// Visit leaves `first..end` (all under this node, which starts at leaf
    /// `base`), stopping when `f` breaks.
    fn walk<F>(&self, base: u64, first: u64, end: u64, f: &mut F) -> ControlFlow<()>
    where
        F: FnMut(Run<'_>) -> ControlFlow<()>;
}

impl Level for Leaf {
    const BITS: u32 = 0;
    fn boxed() -> Box<Self> {
        Self::boxed()
    }
    fn get(&self, _: u64) -> Option<&Leaf> {
        Some(self)
    }
    fn get_or_create(&self, _: u64) -> &Leaf {
        self
    }
    fn walk<F>(&self, base: u64, _: u64, _: u64, f: &mut F) -> ControlFlow<()>
    where
        F: FnMut(Run<'_>) -> ControlFlow<()>,
    {
        f(Run::Leaf {
            index: base,
            leaf: self,
        })
    }
}

pub(super) struct Inner<T> {
    slots: [OnceLock<Box<T>>; FAN],
}

impl<T: Level> Inner<T> {
    fn slot(leaf: u64) -> usize {
        (leaf >> T::BITS) as usize & (FAN - 1)
    }
}

impl<T: Level> Level for Inner<T> {
    const BITS: u32 = T::BITS + FAN_BITS;

    fn boxed() -> Box<Self> {
        Box::new(Self {
            slots: [const { OnceLock::new() }; FAN],
        })
    }

    fn get(&self, leaf: u64) -> Option<&Leaf> {
        self.slots[Self::slot(leaf)].get()?.get(leaf)
    }

    fn get_or_create(&self, leaf: u64) -> &Leaf {
        self.slots[Self::slot(leaf)]
            .get_or_init(T::boxed)
            .get_or_create(leaf)
    }

    fn walk<F>(&self, base: u64, first: u64, end: u64, f: &mut F) -> ControlFlow<()>
    where
        F: FnMut(Run<'_>) -> ControlFlow<()>,
    {
        if first >= end {
            return ControlFlow::Continue(());
        }
        let lo = Self::slot(first - base);
        let hi = Self::slot(end - 1 - base);
        for (c, slot) in self.slots.iter().enumerate().take(hi + 1).skip(lo) {
            let child = base + ((c as u64) << T::BITS);
            let (a, b) = (first.max(child), end.min(child + (1 << T::BITS)));
            match slot.get() {
                None => f(Run::Absent { first: a, end: b })?,
                Some(node) => node.walk(child, a, b, f)?,
            }
        }
        ControlFlow::Continue(())
    }
}

/// Leaf indices the root covers: every page of a 2^63-byte export.
pub(super) const LEAVES: u64 = 1 << Root::BITS;
