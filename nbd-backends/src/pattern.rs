//! A read-only export whose every 8-byte aligned word holds its own offset,
//! big-endian (`nbdd pattern SIZE`, the same content as nbdkit's pattern
//! plugin). Any byte read can be checked without keeping a copy, which makes
//! it the reference source for copy and offset tests.

use std::io;

use crate::util::{check_read, len64, out_of_range, read_only};
use crate::{Backend, Caps, Execution, ZeroFlags, size::MAX_SIZE};

/// Content computed from the offset; writes fail with `EROFS`.
#[derive(Debug, Clone, Copy)]
pub struct PatternBackend {
    size: u64,
}

impl PatternBackend {
    /// A pattern export of `size` bytes.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `size` exceeds 2^63-1.
    pub fn new(size: u64) -> io::Result<Self> {
        if size > MAX_SIZE {
            return Err(out_of_range());
        }
        Ok(Self { size })
    }

    /// The byte at `offset`: byte `offset % 8` of the big-endian word
    /// `offset & !7`.
    pub fn byte_at(offset: u64) -> u8 {
        (offset & !7).to_be_bytes()[(offset % 8) as usize]
    }
}

impl Backend for PatternBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        Caps::READ_ONLY | Caps::CACHE | Caps::MULTI_CONN
    }

    fn execution(&self) -> Execution {
        Execution::Inline
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_read(offset, len64(buf), self.size)?;
        // Unaligned head byte by byte, then whole words, then the tail.
        let head = ((8 - offset % 8) % 8).min(len64(buf)) as usize;
        let (first, rest) = buf.split_at_mut(head);
        for (i, b) in first.iter_mut().enumerate() {
            *b = Self::byte_at(offset + i as u64);
        }
        let mut word = offset + head as u64;
        let (words, tail) = rest.as_chunks_mut::<8>();
        for w in words {
            *w = word.to_be_bytes();
            word += 8;
        }
        for (i, b) in tail.iter_mut().enumerate() {
            *b = Self::byte_at(word + i as u64);
        }
        Ok(())
    }

    fn write_at(&self, _offset: u64, _data: &[u8], _fua: bool) -> io::Result<()> {
        Err(read_only())
    }

    fn trim(&self, _offset: u64, _len: u64, _fua: bool) -> io::Result<()> {
        Err(read_only())
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _flags: ZeroFlags) -> io::Result<()> {
        Err(read_only())
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        check_read(offset, len, self.size).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_hold_their_offsets_at_any_alignment() {
        let p = PatternBackend::new(1 << 20).unwrap();
        let mut all = vec![0; 4096];
        p.read_at(8192, &mut all).unwrap();
        assert_eq!(&all[..8], &8192u64.to_be_bytes());
        assert_eq!(&all[8..16], &8200u64.to_be_bytes());
        for start in 0..17 {
            for len in [0, 1, 7, 8, 9, 23, 100] {
                let mut b = vec![0xee; len];
                p.read_at(8192 + start, &mut b).unwrap();
                assert_eq!(
                    b,
                    all[start as usize..start as usize + len],
                    "{start} {len}"
                );
            }
        }
    }

    #[test]
    fn high_offsets_and_read_only() {
        let p = PatternBackend::new(MAX_SIZE).unwrap();
        let mut b = [0; 3];
        p.read_at(0x0102_0304_0506_0700 + 5, &mut b).unwrap();
        assert_eq!(b, [0x06, 0x07, 0x00]);
        let e = p.write_at(0, &[1], false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    }
}
