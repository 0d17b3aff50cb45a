//! An export that reads zeroes and discards writes (`nbdd null SIZE`), for
//! measuring the server itself with no storage cost.

use std::io;

use crate::util::{check_read, check_write, len64, out_of_range, push_extent};
use crate::{Backend, Caps, Execution, Extent, ExtentFlags, ZeroFlags, size::MAX_SIZE};

/// Reads zeroes, accepts and drops every write; every extent is a hole.
#[derive(Debug, Clone, Copy)]
pub struct NullBackend {
    size: u64,
}

impl NullBackend {
    /// A null export of `size` bytes.
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
}

impl Backend for NullBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        Caps::FLUSH
            | Caps::FUA
            | Caps::TRIM
            | Caps::WRITE_ZEROES
            | Caps::FAST_ZERO
            | Caps::EXTENTS
            | Caps::CACHE
            | Caps::MULTI_CONN
    }

    fn execution(&self) -> Execution {
        Execution::Inline
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_read(offset, len64(buf), self.size)?;
        buf.fill(0);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        check_write(offset, len64(data), self.size).map(drop)
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        check_read(offset, len, self.size).map(drop)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> io::Result<()> {
        check_write(offset, len, self.size).map(drop)
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        check_read(offset, len, self.size).map(drop)
    }

    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        if offset > self.size {
            return Err(out_of_range());
        }
        let end = offset.saturating_add(len).min(self.size);
        let mut n = 0;
        push_extent(
            out,
            &mut n,
            end - offset,
            ExtentFlags::HOLE | ExtentFlags::ZERO,
        );
        Ok(n)
    }
}
