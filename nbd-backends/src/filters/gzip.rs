//! `gzip`: serve a gzip-compressed layer below read-only. gzip cannot
//! seek, so (as nbdkit does) the whole image is decompressed once, when
//! the export is built, into an unlinked temporary file under `$TMPDIR`
//! (default `/var/tmp`) that reads are then served from. Concatenated
//! members (`cat a.gz b.gz`) are one image.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::Instant;

use super::params::FilterParams;
use crate::util::{check_read, len64, read_only};
use crate::{Backend, Caps, Execution, Extent, ZeroFlags};

/// Reads the layer below from start to end, for the decoder.
struct Sequential {
    inner: Arc<dyn Backend>,
    pos: u64,
}

impl Read for Sequential {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.inner.size() - self.pos).min(buf.len() as u64) as usize;
        self.inner.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The decompressed image, in a temporary file.
pub struct Gzip {
    inner: Arc<dyn Backend>,
    file: Arc<File>,
    size: u64,
}

impl Gzip {
    /// Decompress all of `inner`.
    ///
    /// # Errors
    ///
    /// Not gzip, corrupt, or the temporary file cannot be written (full).
    pub fn new(inner: Arc<dyn Backend>) -> Result<Self, String> {
        let e = |m: String| format!("gzip filter: {m}");
        let mut file = crate::util::temp_file("gzip").map_err(|x| e(x.to_string()))?;
        let start = Instant::now();
        // Large reads: the layer below may be remote (curl), one request each.
        let input = BufReader::with_capacity(
            4 << 20,
            Sequential {
                inner: Arc::clone(&inner),
                pos: 0,
            },
        );
        let mut decoder = flate2::bufread::MultiGzDecoder::new(input);
        let size =
            io::copy(&mut decoder, &mut file).map_err(|x| e(format!("decompressing: {x}")))?;
        if size > crate::MAX_SIZE {
            return Err(e("the image is larger than 2^63-1 bytes".into()));
        }
        log::info!(
            "gzip filter: decompressed {} bytes into {size} in {:.1} s",
            inner.size(),
            start.elapsed().as_secs_f64()
        );
        Ok(Self {
            inner,
            file: Arc::new(file),
            size,
        })
    }
}

pub(crate) fn spec(_p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    Ok(super::Spec::new(|b| Ok(Arc::new(Gzip::new(b)?))).read_only_below())
}

impl super::Filter for Gzip {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached not forwarded (the default): the data is decompressed.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self {
            inner,
            file: Arc::clone(&self.file),
            size: self.size,
        }))
    }
    /// The image was decompressed once, for every connection (as nbdkit
    /// does); a per-connection handle of the layer below is not needed.
    fn open(&self, client: &crate::ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        let _ = client;
        Ok(None)
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn caps(&self) -> Caps {
        Caps::READ_ONLY | Caps::MULTI_CONN
    }
    fn execution(&self) -> Execution {
        Execution::Blocking
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_read(offset, len64(buf), self.size)?;
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, _: u64, _: &[u8], _: bool) -> io::Result<()> {
        Err(read_only())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn trim(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Err(read_only())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: ZeroFlags) -> io::Result<()> {
        Err(read_only())
    }
    fn cache(&self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        crate::util::all_data(self.size, offset, len, out)
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
        Err(read_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;
    use std::io::Write as _;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn backend(bytes: &[u8]) -> Arc<dyn Backend> {
        let m = MemoryBackend::new(bytes.len() as u64).unwrap();
        m.write_at(0, bytes, false).unwrap();
        Arc::new(m)
    }

    #[test]
    fn members_decompress_into_one_image() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 97) as u8).collect();
        let mut bytes = gz(&a[..100_000]);
        bytes.extend(gz(&a[100_000..]));
        let g = Gzip::new(backend(&bytes)).unwrap();
        assert_eq!(g.size(), a.len() as u64);
        let mut buf = vec![0; 1000];
        g.read_at(99_500, &mut buf).unwrap();
        assert!(buf == a[99_500..100_500]);
        assert!(g.read_at(300_000, &mut [0]).is_err());
        assert!(g.write_at(0, &[1], false).is_err());
        let e = Gzip::new(backend(b"not gzip at all")).err().unwrap();
        assert!(e.starts_with("gzip filter: decompressing: "), "{e}");
    }
}
