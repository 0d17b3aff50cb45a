//! The cache's blocks: slots of a temporary file, a least-recently-used
//! order and the set of dirty blocks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

struct Entry {
    slot: u64,
    tick: u64,
}

/// Cached blocks of `bs` bytes, each in a slot of the file.
pub(super) struct Store {
    file: File,
    bs: u64,
    blocks: HashMap<u64, Entry>,
    /// tick -> block, oldest first.
    lru: BTreeMap<u64, u64>,
    dirty: BTreeSet<u64>,
    free: Vec<u64>,
    next_slot: u64,
    tick: u64,
}

impl Store {
    pub(super) fn new(file: File, bs: u64) -> Self {
        Self {
            file,
            bs,
            blocks: HashMap::new(),
            lru: BTreeMap::new(),
            dirty: BTreeSet::new(),
            free: Vec::new(),
            next_slot: 0,
            tick: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.blocks.len()
    }

    pub(super) fn contains(&self, b: u64) -> bool {
        self.blocks.contains_key(&b)
    }

    pub(super) fn is_dirty(&self, b: u64) -> bool {
        self.dirty.contains(&b)
    }

    /// Dirty blocks in `[from, to)`, in order.
    pub(super) fn dirty_in(&self, from: u64, to: u64) -> Vec<u64> {
        self.dirty.range(from..to).copied().collect()
    }

    /// Every dirty block, in order.
    pub(super) fn all_dirty(&self) -> Vec<u64> {
        self.dirty.iter().copied().collect()
    }

    /// The least recently used block.
    pub(super) fn oldest(&self) -> Option<u64> {
        self.lru.values().next().copied()
    }

    fn touch(&mut self, b: u64) -> Option<u64> {
        self.tick += 1;
        let e = self.blocks.get_mut(&b)?;
        self.lru.remove(&e.tick);
        e.tick = self.tick;
        self.lru.insert(self.tick, b);
        Some(e.slot)
    }

    /// Read `buf.len()` bytes of block `b` from `within` it.
    pub(super) fn read(&mut self, b: u64, within: u64, buf: &mut [u8]) -> io::Result<()> {
        let slot = self
            .touch(b)
            .ok_or_else(|| io::Error::other("cache: block missing"))?;
        self.file.read_exact_at(buf, slot * self.bs + within)
    }

    /// Store the whole of block `b` (shorter at the end of the export).
    pub(super) fn put(&mut self, b: u64, data: &[u8], dirty: bool) -> io::Result<()> {
        if !self.contains(b) {
            let slot = self.free.pop().unwrap_or_else(|| {
                self.next_slot += 1;
                self.next_slot - 1
            });
            self.blocks.insert(b, Entry { slot, tick: 0 });
        }
        self.patch(b, 0, data, dirty)
    }

    /// Overwrite part of cached block `b`; `dirty` marks it dirty (a clean
    /// patch leaves the flag as it was).
    pub(super) fn patch(
        &mut self,
        b: u64,
        within: u64,
        data: &[u8],
        dirty: bool,
    ) -> io::Result<()> {
        let slot = self
            .touch(b)
            .ok_or_else(|| io::Error::other("cache: block missing"))?;
        self.file.write_all_at(data, slot * self.bs + within)?;
        if dirty {
            self.dirty.insert(b);
        }
        Ok(())
    }

    pub(super) fn clean(&mut self, b: u64) {
        self.dirty.remove(&b);
    }

    /// Forget block `b` (dirty or not); its slot is reused.
    pub(super) fn remove(&mut self, b: u64) {
        if let Some(e) = self.blocks.remove(&b) {
            self.lru.remove(&e.tick);
            self.dirty.remove(&b);
            self.free.push(e.slot);
        }
    }
}
