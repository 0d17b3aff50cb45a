//! `xz`: serve an `.xz` image read-only, decompressing block by block on
//! demand (seekable when the file has many blocks: `xz --block-size=16M`).
//! The index is read when the export is built; a block larger than
//! `xz-max-block=` (512M) is refused; the last `xz-max-depth=` (8)
//! decompressed blocks are kept. Decoding is liblzma's, fed the stream's
//! header and then the block, so it checks the block's header CRC and
//! integrity check; at most 256 MiB of decoder memory (xz -9 needs 65).

mod index;

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use super::params::FilterParams;
use crate::util::{check_read, len64};
use crate::{Backend, Caps, Execution};
use index::{Block, Index};

const MEMLIMIT: u64 = 256 << 20;

/// The filter's settings.
#[derive(Debug, Clone, Copy)]
pub struct XzOptions {
    /// `xz-max-block=`.
    pub max_block: u64,
    /// `xz-max-depth=`.
    pub max_depth: usize,
}

impl Default for XzOptions {
    fn default() -> Self {
        Self {
            max_block: 512 << 20,
            max_depth: 8,
        }
    }
}

/// Decoded blocks, most recently used first: (block number, data).
type BlockCache = Mutex<Vec<(usize, Arc<Vec<u8>>)>>;

/// The decompressed image.
pub struct Xz {
    inner: Arc<dyn Backend>,
    opts: XzOptions,
    /// Shared by the per-connection copies: the bytes below are the same.
    index: Arc<Index>,
    /// Shared too: a block decoded for one client serves the others.
    cache: Arc<BlockCache>,
}

impl Xz {
    /// Read the index of `inner`.
    ///
    /// # Errors
    ///
    /// Not an xz file, a malformed index, or a block above the limit.
    pub fn new(inner: Arc<dyn Backend>, opts: XzOptions) -> Result<Self, String> {
        let index = index::read_index(&*inner).map_err(|e| format!("xz filter: {e}"))?;
        if let Some(b) = index.blocks.iter().find(|b| b.usize > opts.max_block) {
            return Err(format!(
                "xz filter: a block of {} bytes is larger than xz-max-block={}; recompress with xz --block-size",
                b.usize, opts.max_block
            ));
        }
        Ok(Self {
            inner,
            opts,
            index: Arc::new(index),
            cache: Arc::default(),
        })
    }

    /// Decompress block `i`.
    fn decode(&self, b: &Block) -> io::Result<Vec<u8>> {
        // Incompressible data grows a little in LZMA2; more is corrupt.
        if b.len > b.usize + b.usize / 64 + (64 << 10) {
            return Err(corrupt("a block is larger than its data"));
        }
        let mut input = self.index.headers[b.stream].to_vec();
        let mut block = vec![0u8; b.len as usize];
        self.inner.read_at(b.offset, &mut block)?;
        input.extend_from_slice(&block);
        let mut out = vec![0u8; b.usize as usize];
        let mut s = liblzma::stream::Stream::new_stream_decoder(MEMLIMIT, 0)
            .map_err(|e| io::Error::other(format!("xz filter: {e}")))?;
        loop {
            let (i, o) = (s.total_in() as usize, s.total_out() as usize);
            if i == input.len() || o == out.len() {
                break;
            }
            s.process(&input[i..], &mut out[o..], liblzma::stream::Action::Run)
                .map_err(|e| corrupt(&e.to_string()))?;
            if s.total_in() as usize == i && s.total_out() as usize == o {
                break;
            }
        }
        if s.total_out() != b.usize || (s.total_in() as usize) < input.len() {
            return Err(corrupt("a block does not decompress to its indexed size"));
        }
        Ok(out)
    }

    /// Block `i`'s data, from the cache or decoded.
    fn block(&self, i: usize) -> io::Result<Arc<Vec<u8>>> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pos) = cache.iter().position(|c| c.0 == i) {
            let hit = cache.remove(pos);
            let data = Arc::clone(&hit.1);
            cache.insert(0, hit);
            return Ok(data);
        }
        let data = Arc::new(self.decode(&self.index.blocks[i])?);
        cache.insert(0, (i, Arc::clone(&data)));
        cache.truncate(self.opts.max_depth.max(1));
        Ok(data)
    }
}

fn corrupt(why: &str) -> io::Error {
    log::warn!("xz filter: corrupt image: {why}");
    io::Error::from_raw_os_error(libc::EIO)
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let d = XzOptions::default();
    let opts = XzOptions {
        max_block: p.take_size("xz-max-block")?.unwrap_or(d.max_block),
        max_depth: match p.take_number::<usize>("xz-max-depth")? {
            Some(0) => return Err(p.bad("xz-max-depth", "0", "must be at least 1")),
            n => n.unwrap_or(d.max_depth),
        },
    };
    Ok(super::Spec::new(move |b| Ok(Arc::new(Xz::new(b, opts)?))).read_only_below())
}

impl super::Filter for Xz {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): the data is decompressed.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(
            Self::new(inner, self.opts).map_err(io::Error::other)?,
        ))
    }
    fn size(&self) -> u64 {
        self.index.size
    }
    fn caps(&self) -> Caps {
        Caps::READ_ONLY | Caps::MULTI_CONN | (self.inner.caps() & Caps::FLUSH)
    }
    fn execution(&self) -> Execution {
        Execution::Blocking
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = check_read(offset, len64(buf), self.index.size)?;
        let blocks = &self.index.blocks;
        let mut i = blocks.partition_point(|b| b.uoffset + b.usize <= offset);
        let mut pos = offset;
        while pos < end {
            let b = blocks
                .get(i)
                .ok_or_else(|| corrupt("index does not cover the image"))?;
            let data = self.block(i)?;
            let from = (pos - b.uoffset) as usize;
            let n = ((b.uoffset + b.usize).min(end) - pos) as usize;
            let at = (pos - offset) as usize;
            buf[at..at + n].copy_from_slice(&data[from..from + n]);
            pos += n as u64;
            i += 1;
        }
        Ok(())
    }
    fn write_at(&self, _: u64, _: &[u8], _: bool) -> io::Result<()> {
        Err(crate::util::read_only())
    }
    fn trim(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Err(crate::util::read_only())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: crate::ZeroFlags) -> io::Result<()> {
        Err(crate::util::read_only())
    }
    fn cache(&self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [crate::Extent]) -> io::Result<usize> {
        crate::util::all_data(self.index.size, offset, len, out)
    }
    /// Depth below means nothing here (not advertised).
    fn allocation_depth(
        &self,
        _offset: u64,
        _len: u64,
        _out: &mut [crate::DepthExtent],
    ) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    fn resize(&self, _: u64) -> io::Result<()> {
        Err(crate::util::read_only())
    }
}

#[cfg(test)]
mod tests;
