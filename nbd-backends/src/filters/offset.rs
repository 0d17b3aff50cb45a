//! `offset`: serve a window of the inner backend (`offset=`, `range=`),
//! e.g. one partition of a disk image.

use std::io;
use std::sync::Arc;

use super::params::FilterParams;
use crate::util::{check_read, check_write, len64, out_of_range};
use crate::{Backend, Caps, DepthExtent, Extent, ZeroFlags};

/// `[offset, offset + range)` of the inner backend, seen from 0.
pub struct Offset {
    inner: Arc<dyn Backend>,
    offset: u64,
    range: u64,
}

impl Offset {
    /// The window starting at `offset`, `range` bytes long (default: to
    /// the end of `inner`).
    ///
    /// # Errors
    ///
    /// A message when the window does not fit inside `inner`.
    pub fn new(inner: Arc<dyn Backend>, offset: u64, range: Option<u64>) -> Result<Self, String> {
        let size = inner.size();
        let range = match range {
            Some(r) => r,
            None => size.checked_sub(offset).ok_or_else(|| {
                format!("offset filter: offset={offset} is past the end ({size})")
            })?,
        };
        if offset.checked_add(range).is_none_or(|end| end > size) {
            return Err(format!(
                "offset filter: offset={offset} + range={range} is past the end ({size})"
            ));
        }
        Ok(Self {
            inner,
            offset,
            range,
        })
    }
}

impl Offset {
    /// `len` cut to the window, for a status request at `offset`.
    fn window(&self, offset: u64, len: u64) -> io::Result<u64> {
        if offset > self.range {
            return Err(out_of_range());
        }
        Ok(len.min(self.range - offset))
    }
}

/// The inner backend may describe past the window: shorten the runs
/// (given by their lengths) to `left` bytes; returns how many are kept.
fn clip<'a>(lens: impl Iterator<Item = &'a mut u64>, mut left: u64) -> usize {
    let mut kept = 0;
    for l in lens {
        if left == 0 {
            break;
        }
        *l = (*l).min(left);
        left -= *l;
        kept += 1;
    }
    kept
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let offset = p.take_size("offset")?.unwrap_or(0);
    let range = p.take_size("range")?;
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(Offset::new(b, offset, range)?))
    }))
}

impl super::Filter for Offset {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        let w = Self::new(inner, self.offset, Some(self.range)).map_err(io::Error::other)?;
        Ok(Arc::new(w))
    }
    fn size(&self) -> u64 {
        self.range
    }
    fn caps(&self) -> Caps {
        // The window has a fixed size.
        self.inner.caps() - Caps::RESIZE
    }
    // try_read_cached forwarded: the data is the layer below's, moved by
    // the window's start; checked against the window as read_at is.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        check_read(offset, len64(buf), self.range).is_ok()
            && self.inner.try_read_cached(self.offset + offset, buf)
    }
    // try_write_cached forwarded: moved and checked as write_at is.
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        check_write(offset, len64(data), self.range).is_ok()
            && self.inner.try_write_cached(self.offset + offset, data)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_read(offset, len64(buf), self.range)?;
        self.inner.read_at(self.offset + offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        check_write(offset, len64(data), self.range)?;
        self.inner.write_at(self.offset + offset, data, fua)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        check_read(offset, len, self.range)?;
        self.inner.trim(self.offset + offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        check_write(offset, len, self.range)?;
        self.inner.write_zeroes(self.offset + offset, len, flags)
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        check_read(offset, len, self.range)?;
        self.inner.cache(self.offset + offset, len)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        let len = self.window(offset, len)?;
        let n = self.inner.extents(self.offset + offset, len, out)?;
        Ok(clip(out.iter_mut().take(n).map(|e| &mut e.len), len))
    }
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        let len = self.window(offset, len)?;
        let n = self
            .inner
            .allocation_depth(self.offset + offset, len, out)?;
        Ok(clip(out.iter_mut().take(n).map(|e| &mut e.len), len))
    }
    /// The window has a fixed size.
    fn resize(&self, _new_size: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}
