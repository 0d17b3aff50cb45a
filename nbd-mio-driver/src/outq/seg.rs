//! One segment of the output queue: bytes in a chunk of the queue's own,
//! or pages a backend lent to a READ reply (zero-copy, `nbd_backends::lent`).

use std::io::IoSlice;

use nbd_backends::Piece;

pub(super) enum Seg {
    /// `data[start..end]` is unsent.
    Bytes {
        data: Vec<u8>,
        start: usize,
        end: usize,
    },
    /// `pieces[next..]` are unsent (the first perhaps in part): `left`
    /// bytes in all.
    Lent {
        pieces: Vec<Piece>,
        next: usize,
        left: usize,
    },
}

impl Seg {
    /// Bytes not yet sent.
    pub(super) fn unsent(&self) -> usize {
        match self {
            Seg::Bytes { start, end, .. } => end - start,
            Seg::Lent { left, .. } => *left,
        }
    }

    /// Mark up to `n` bytes sent; returns how many were.
    pub(super) fn consume(&mut self, n: usize) -> usize {
        match self {
            Seg::Bytes { start, end, .. } => {
                let k = n.min(*end - *start);
                *start += k;
                k
            }
            Seg::Lent { pieces, next, left } => {
                let k = n.min(*left);
                let mut todo = k;
                while let Some(p) = pieces.get_mut(*next) {
                    let t = todo.min(p.len());
                    p.advance(t);
                    todo -= t;
                    if !p.is_empty() {
                        break;
                    }
                    *next += 1;
                }
                *left -= k;
                k
            }
        }
    }

    /// Fill `iov` with the unsent bytes in order; returns the slots used.
    pub(super) fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        match self {
            Seg::Bytes { data, start, end } => match iov.first_mut() {
                Some(slot) if end > start => {
                    *slot = IoSlice::new(&data[*start..*end]);
                    1
                }
                _ => 0,
            },
            Seg::Lent { pieces, next, .. } => {
                let mut n = 0;
                for (slot, p) in iov.iter_mut().zip(&pieces[*next..]) {
                    *slot = IoSlice::new(p.bytes());
                    n += 1;
                }
                n
            }
        }
    }

    /// The first unsent slice (empty if none).
    pub(super) fn first(&self) -> &[u8] {
        match self {
            Seg::Bytes { data, start, end } => &data[*start..*end],
            Seg::Lent { pieces, next, .. } => pieces.get(*next).map_or(&[], Piece::bytes),
        }
    }

    /// A copy of the unsent bytes (for tracing).
    pub(super) fn to_vec(&self) -> Vec<u8> {
        match self {
            Seg::Bytes { data, start, end } => data[*start..*end].to_vec(),
            Seg::Lent { pieces, next, .. } => pieces[*next..]
                .iter()
                .flat_map(|p| p.bytes().iter().copied())
                .collect(),
        }
    }
}
