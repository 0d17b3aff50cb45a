//! The fixed-capacity table of requests in flight.
//!
//! A cookie is the slot index in its low 32 bits and a per-connection
//! generation in its high 32 bits: a reply finds its slot in O(1), and a
//! reply naming a slot that has since been reused (a server bug) does not
//! match the new request's cookie. Free slots form a linked list through
//! `next_free`, so allocation is O(1) too.

use crate::types::{Command, Cookie, ErrorCode};

/// One request in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) cookie: Cookie,
    pub(crate) command: Command,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// READ: bytes the reply chunks have covered so far.
    pub(crate) covered: u64,
    /// The first error the server reported for this request.
    pub(crate) error: Option<ErrorCode>,
    busy: bool,
    next_free: u32,
}

impl Slot {
    const EMPTY: Self = Self {
        cookie: Cookie(0),
        command: Command::Read,
        offset: 0,
        len: 0,
        covered: 0,
        error: None,
        busy: false,
        next_free: 0,
    };
}

/// `N` slots; no allocation.
#[derive(Debug, Clone)]
pub(crate) struct Table<const N: usize> {
    slots: [Slot; N],
    /// First free slot, or `N` when full.
    free: u32,
    generation: u32,
    busy: usize,
}

impl<const N: usize> Table<N> {
    /// Slot indices must fit the cookie's low 32 bits.
    const FITS: () = assert!(N < u32::MAX as usize, "too many slots");

    pub(crate) fn new() -> Self {
        let () = Self::FITS;
        let mut slots = [Slot::EMPTY; N];
        for (i, s) in (1u32..).zip(slots.iter_mut()) {
            s.next_free = i;
        }
        Self {
            slots,
            free: 0,
            generation: 0,
            busy: 0,
        }
    }

    /// Requests in flight.
    pub(crate) fn busy(&self) -> usize {
        self.busy
    }

    pub(crate) fn is_full(&self) -> bool {
        self.free as usize >= N
    }

    /// Take a free slot for a request; `None` when all `N` are in use.
    pub(crate) fn insert(&mut self, command: Command, offset: u64, len: u64) -> Option<u32> {
        let idx = self.free;
        let slot = self.slots.get_mut(idx as usize)?;
        self.generation = self.generation.wrapping_add(1);
        self.free = slot.next_free;
        *slot = Slot {
            cookie: Cookie((u64::from(self.generation) << 32) | u64::from(idx)),
            command,
            offset,
            len,
            covered: 0,
            error: None,
            busy: true,
            next_free: 0,
        };
        self.busy += 1;
        Some(idx)
    }

    /// The busy slot answering to `cookie`.
    pub(crate) fn find(&self, cookie: Cookie) -> Option<u32> {
        let idx = u32::try_from(cookie.0 & 0xffff_ffff).ok()?;
        let s = self.slots.get(idx as usize)?;
        (s.busy && s.cookie == cookie).then_some(idx)
    }

    pub(crate) fn get(&self, idx: u32) -> Option<&Slot> {
        self.slots.get(idx as usize).filter(|s| s.busy)
    }

    pub(crate) fn get_mut(&mut self, idx: u32) -> Option<&mut Slot> {
        self.slots.get_mut(idx as usize).filter(|s| s.busy)
    }

    /// Free a slot, returning what it held.
    pub(crate) fn remove(&mut self, idx: u32) -> Option<Slot> {
        let free = self.free;
        let s = self.slots.get_mut(idx as usize).filter(|s| s.busy)?;
        let held = *s;
        s.busy = false;
        s.next_free = free;
        self.free = idx;
        self.busy -= 1;
        Some(held)
    }

    /// Any busy slot (to fail requests when the connection is lost).
    pub(crate) fn any_busy(&self) -> Option<u32> {
        if self.busy == 0 {
            return None;
        }
        (0u32..)
            .zip(&self.slots)
            .find(|(_, s)| s.busy)
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_find_their_slot_and_stale_ones_do_not() {
        let mut t = Table::<2>::new();
        let a = t.insert(Command::Read, 0, 1).unwrap();
        let b = t.insert(Command::Write, 0, 1).unwrap();
        assert!(t.is_full());
        assert_eq!(t.insert(Command::Flush, 0, 0), None);
        let ca = t.get(a).unwrap().cookie;
        assert_eq!(t.find(ca), Some(a));
        t.remove(a).unwrap();
        assert_eq!(t.find(ca), None, "a freed slot answers no cookie");
        let c = t.insert(Command::Trim, 0, 1).unwrap();
        assert_eq!(c, a, "slots are reused");
        assert_ne!(t.get(c).unwrap().cookie, ca, "with a new cookie");
        assert_eq!(t.find(ca), None);
        assert_eq!(t.busy(), 2);
        assert_eq!(t.remove(b).map(|s| s.command), Some(Command::Write));
        assert_eq!(t.remove(b).map(|s| s.command), None, "no double free");
        assert_eq!(t.any_busy(), Some(c));
    }

    #[test]
    fn zero_capacity_table_is_always_full() {
        let mut t = Table::<0>::new();
        assert!(t.is_full());
        assert_eq!(t.insert(Command::Read, 0, 1), None);
        assert_eq!(t.find(Cookie(0)), None);
    }
}
