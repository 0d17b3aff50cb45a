//! Two tiny test devices with nbdkit's names: `full` (reads zeroes, every
//! modification fails with ENOSPC, like a thin-provisioned disk whose pool
//! has run out) and `zero` (a read-only device of zero bytes).

use std::io;

use crate::util::{check_read, check_write, len64, no_space, out_of_range, push_extent, read_only};
use crate::{Backend, Caps, Execution, Extent, ExtentFlags, ZeroFlags, size::MAX_SIZE};

/// `full SIZE`: reads zeroes; writes, trims and zeroes fail with ENOSPC.
#[derive(Debug, Clone, Copy)]
pub struct FullBackend {
    size: u64,
}

impl FullBackend {
    /// A full device of `size` bytes.
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

impl Backend for FullBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        // What nbdkit's full plugin advertises: the operations exist (so
        // clients try them and see ENOSPC), but nothing needs flushing.
        Caps::TRIM
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
        check_write(offset, len64(data), self.size)?;
        Err(no_space())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        check_read(offset, len, self.size)?;
        Err(no_space())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> io::Result<()> {
        check_write(offset, len, self.size)?;
        Err(no_space())
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

/// `zero`: a read-only device of zero bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZeroBackend;

/// The `zero` backend.
pub(crate) fn zero() -> ZeroBackend {
    ZeroBackend
}

impl Backend for ZeroBackend {
    fn size(&self) -> u64 {
        0
    }

    fn caps(&self) -> Caps {
        Caps::READ_ONLY | Caps::CACHE | Caps::MULTI_CONN
    }

    fn execution(&self) -> Execution {
        Execution::Inline
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_read(offset, len64(buf), 0).map(drop)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_reads_zeroes_and_refuses_every_change_with_enospc() {
        let f = FullBackend::new(1 << 20).unwrap();
        let mut b = [0xffu8; 100];
        f.read_at(4096, &mut b).unwrap();
        assert_eq!(b, [0; 100]);
        let enospc = Some(libc::ENOSPC);
        assert_eq!(
            f.write_at(0, &[1], false).unwrap_err().raw_os_error(),
            enospc
        );
        assert_eq!(f.trim(0, 512, false).unwrap_err().raw_os_error(), enospc);
        let z = f.write_zeroes(0, 512, ZeroFlags::MAY_TRIM).unwrap_err();
        assert_eq!(z.raw_os_error(), enospc);
        assert_eq!(
            f.read_at(1 << 20, &mut b).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        let mut e = [Extent::default(); 4];
        assert_eq!(f.extents(0, 1 << 30, &mut e).unwrap(), 1);
        assert_eq!(e[0].len, 1 << 20);
        assert!(e[0].flags.contains(ExtentFlags::HOLE | ExtentFlags::ZERO));
    }

    #[test]
    fn zero_is_empty_and_read_only() {
        let z = zero();
        assert_eq!(z.size(), 0);
        assert!(z.caps().contains(Caps::READ_ONLY));
        z.read_at(0, &mut []).unwrap();
        assert!(z.read_at(0, &mut [0]).is_err());
        assert_eq!(
            z.write_at(0, &[], false).unwrap_err().raw_os_error(),
            Some(libc::EROFS)
        );
    }
}
