//! `sparse-random SIZE [seed=] [percent=] [runlength=] [random-content=]`:
//! runs of random 4 KiB blocks between holes, shaped like a virtual
//! machine's disk, for benchmarking copy tools.
//!
//! The layout is a two-state Markov chain over blocks, walked once at
//! start-up from the seed: in a hole, a block starts data with probability
//! `Phd`; in data, a block ends it with probability `Pdh = 4096 /
//! runlength`, and `Phd = p * Pdh / (1 - p)` for the requested fraction
//! `p`. This is the construction (and, with the same seed, the layout and
//! the bytes of aligned reads) of nbdkit's sparse-random plugin.

use std::io;

use crate::random::{Xoshiro, eio, take_seed};
use crate::registry::Params;
use crate::util::{check_read, check_write, is_zero, len64, out_of_range, push_extent};
use crate::{Backend, Caps, Extent, ExtentFlags, ZeroFlags};

const BLOCK: u64 = 4096;
/// Blocks per chunk of the map: 4096 bits, 16 MiB of disk.
const CHUNK_BLOCKS: u64 = 4096;
/// Largest size: the map is walked block by block at start-up and costs
/// up to a bit per block, so 16 TiB means 2^32 steps and at most 512 MiB.
pub const MAX_SPARSE_RANDOM: u64 = 16 << 40;

/// 16 MiB of the disk: all hole, all data, or a bitmap.
enum Chunk {
    Hole,
    Data,
    Mixed(Box<[u64; 64]>),
}

impl Chunk {
    fn is_data(&self, i: u64) -> bool {
        match self {
            Self::Hole => false,
            Self::Data => true,
            Self::Mixed(bits) => bits[(i / 64) as usize] >> (i % 64) & 1 == 1,
        }
    }
}

/// The sparse-random disk.
pub struct SparseRandom {
    size: u64,
    seed: u32,
    random_content: bool,
    map: Vec<Chunk>,
}

impl SparseRandom {
    /// Build the map for `size` bytes with `percent` data in runs of about
    /// `runlength` bytes.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a size over [`MAX_SPARSE_RANDOM`], a percentage
    /// outside 0-100 or a zero run length.
    pub fn new(
        size: u64,
        seed: u32,
        percent: f64,
        runlength: u64,
        random_content: bool,
    ) -> io::Result<Self> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_owned());
        if size > MAX_SPARSE_RANDOM {
            return Err(bad(
                "size: at most 16T (the block map is built at start-up)",
            ));
        }
        if !(0.0..=100.0).contains(&percent) {
            return Err(bad("percent: expected a number from 0 to 100"));
        }
        if runlength == 0 {
            return Err(bad("runlength: must be greater than 0"));
        }
        let blocks = size.div_ceil(BLOCK);
        let map = build_map(blocks, seed, percent, runlength);
        Ok(Self {
            size,
            seed,
            random_content,
            map,
        })
    }

    pub(crate) fn from_params(p: &mut Params<'_>) -> Result<Self, String> {
        let seed = take_seed("sparse-random", p)?;
        let size = p
            .take_size("sparse-random", "size")?
            .ok_or_else(|| crate::make::missing_size("sparse-random"))?;
        let percent = match p.take("percent") {
            None => 10.0,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|x| (0.0..=100.0).contains(x))
                .ok_or_else(|| {
                    format!("sparse-random: percent: expected a number from 0 to 100, got '{v}'")
                })?,
        };
        let runlength = p
            .take_size("sparse-random", "runlength")?
            .unwrap_or(16 << 20);
        let random_content = p
            .take_bool("sparse-random", "random-content")?
            .unwrap_or(false);
        Self::new(size, seed, percent, runlength, random_content)
            .map_err(|e| format!("sparse-random: {e}"))
    }

    fn is_data(&self, block: u64) -> bool {
        self.map
            .get((block / CHUNK_BLOCKS) as usize)
            .is_some_and(|c| c.is_data(block % CHUNK_BLOCKS))
    }

    /// Fill `buf` (at most one block) with block `block`'s bytes from
    /// `skip` on.
    fn read_block(&self, block: u64, skip: usize, buf: &mut [u8]) {
        if !self.is_data(block) {
            buf.fill(0);
            return;
        }
        let mut x = Xoshiro::new(u64::from(self.seed).wrapping_add(block * BLOCK));
        if self.random_content {
            for _ in 0..skip {
                x.next_u64();
            }
            for b in buf.iter_mut() {
                *b = x.next_u64() as u8;
            }
        } else {
            // One non-zero byte repeated over the block.
            buf.fill((x.next_u64() as u8).max(1));
        }
    }

    /// Call `f(block, skip, range)` for each block piece of `[offset, end)`,
    /// `range` being the byte range of the request it covers.
    fn pieces(
        offset: u64,
        end: u64,
        mut f: impl FnMut(u64, usize, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let skip = at % BLOCK;
            let n = (BLOCK - skip).min(end - at);
            let start = (at - offset) as usize;
            f(block, skip as usize, start..start + n as usize)?;
            at += n;
        }
        Ok(())
    }
}

/// Walk the chain over `blocks` blocks.
fn build_map(blocks: u64, seed: u32, percent: f64, runlength: u64) -> Vec<Chunk> {
    let chunks = blocks.div_ceil(CHUNK_BLOCKS) as usize;
    if percent == 0.0 || percent == 100.0 {
        let all = || {
            if percent == 0.0 {
                Chunk::Hole
            } else {
                Chunk::Data
            }
        };
        return (0..chunks).map(|_| all()).collect();
    }
    let p_dh = 1.0 / (runlength as f64 / BLOCK as f64);
    let p_hd = (percent / 100.0) * p_dh / (1.0 - percent / 100.0);
    let (t_dh, t_hd) = (p_dh * u64::MAX as f64, p_hd * u64::MAX as f64);
    let mut rng = Xoshiro::new(u64::from(seed));
    let mut data = false;
    let mut map = Vec::with_capacity(chunks);
    let mut block = 0u64;
    while block < blocks {
        let mut bits = [0u64; 64];
        let n = CHUNK_BLOCKS.min(blocks - block);
        for i in 0..n {
            if data {
                bits[(i / 64) as usize] |= 1 << (i % 64);
            }
            let threshold = if data { t_dh } else { t_hd };
            if rng.next_u64() as f64 <= threshold {
                data = !data;
            }
        }
        map.push(if bits.iter().all(|&w| w == 0) {
            Chunk::Hole
        } else if n == CHUNK_BLOCKS && bits.iter().all(|&w| w == u64::MAX) {
            Chunk::Data
        } else {
            Chunk::Mixed(Box::new(bits))
        });
        block += n;
    }
    map
}

impl Backend for SparseRandom {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        Caps::FLUSH
            | Caps::FUA
            | Caps::TRIM
            | Caps::WRITE_ZEROES
            | Caps::EXTENTS
            | Caps::CACHE
            | Caps::MULTI_CONN
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = check_read(offset, len64(buf), self.size)?;
        Self::pieces(offset, end, |block, skip, r| {
            self.read_block(block, skip, &mut buf[r]);
            Ok(())
        })
    }

    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        let end = check_write(offset, len64(data), self.size)?;
        let mut want = [0u8; BLOCK as usize];
        Self::pieces(offset, end, |block, skip, r| {
            let got = &data[r];
            let ok = if self.is_data(block) {
                let want = &mut want[..got.len()];
                self.read_block(block, skip, want);
                want == got
            } else {
                is_zero(got)
            };
            if ok {
                Ok(())
            } else {
                Err(eio(
                    "sparse-random: data written does not match the content",
                ))
            }
        })
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        let end = check_read(offset, len, self.size)?;
        self.holes_only(offset, end)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> io::Result<()> {
        let end = check_write(offset, len, self.size)?;
        self.holes_only(offset, end)
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
        let mut at = offset;
        while at < end {
            let block = at / BLOCK;
            let next = ((block + 1) * BLOCK).min(end);
            let flags = if self.is_data(block) {
                ExtentFlags::empty()
            } else {
                ExtentFlags::HOLE | ExtentFlags::ZERO
            };
            if !push_extent(out, &mut n, next - at, flags) {
                break;
            }
            at = next;
        }
        Ok(n)
    }
}

impl SparseRandom {
    /// Trim and zero keep the content only where it is already a hole.
    fn holes_only(&self, offset: u64, end: u64) -> io::Result<()> {
        Self::pieces(offset, end, |block, _, _| {
            if self.is_data(block) {
                Err(eio("sparse-random: trim or zero of a data block"))
            } else {
                Ok(())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fraction_and_runs(s: &SparseRandom) -> (f64, f64) {
        let blocks = s.size / BLOCK;
        let data: Vec<bool> = (0..blocks).map(|b| s.is_data(b)).collect();
        let n = data.iter().filter(|&&d| d).count();
        let runs = data.windows(2).filter(|w| !w[0] && w[1]).count() + usize::from(data[0]);
        (
            n as f64 / blocks as f64,
            (n as f64 * BLOCK as f64) / runs.max(1) as f64,
        )
    }

    #[test]
    fn layout_has_the_requested_shape_and_is_seeded() {
        let s = SparseRandom::new(64 << 30, 1, 10.0, 16 << 20, false).unwrap();
        let (frac, run) = fraction_and_runs(&s);
        assert!((0.07..0.13).contains(&frac), "fraction {frac}");
        assert!(
            ((8 << 20) as f64..(32 << 20) as f64).contains(&run),
            "run {run}"
        );
        let again = SparseRandom::new(64 << 30, 1, 10.0, 16 << 20, false).unwrap();
        let other = SparseRandom::new(64 << 30, 2, 10.0, 16 << 20, false).unwrap();
        let map = |s: &SparseRandom| {
            (0..s.size / BLOCK)
                .map(|b| s.is_data(b))
                .collect::<Vec<_>>()
        };
        assert_eq!(map(&s), map(&again));
        assert_ne!(map(&s), map(&other));
    }

    #[test]
    fn content_matches_the_map_and_writes_are_checked() {
        let s = SparseRandom::new(256 << 20, 5, 50.0, 64 << 10, false).unwrap();
        let data = (0..s.size / BLOCK).find(|&b| s.is_data(b)).unwrap();
        let hole = (0..s.size / BLOCK).find(|&b| !s.is_data(b)).unwrap();
        let mut b = vec![0u8; BLOCK as usize];
        s.read_at(data * BLOCK, &mut b).unwrap();
        assert!(
            b[0] != 0 && b.iter().all(|&x| x == b[0]),
            "one non-zero byte"
        );
        let mut part = vec![0u8; 100];
        s.read_at(data * BLOCK + 7, &mut part).unwrap();
        assert_eq!(part, b[7..107], "unaligned reads see the same bytes");
        s.write_at(data * BLOCK, &b, false).unwrap();
        let eio = Some(libc::EIO);
        assert_eq!(
            s.write_at(data * BLOCK, &vec![0; 4096], false)
                .unwrap_err()
                .raw_os_error(),
            eio
        );
        assert_eq!(
            s.trim(data * BLOCK, 1, false).unwrap_err().raw_os_error(),
            eio
        );
        s.read_at(hole * BLOCK, &mut b).unwrap();
        assert!(is_zero(&b));
        s.write_zeroes(hole * BLOCK, BLOCK, ZeroFlags::empty())
            .unwrap();
        let mut e = [Extent::default(); 2];
        s.extents(hole * BLOCK, BLOCK, &mut e).unwrap();
        assert!(e[0].flags.contains(ExtentFlags::HOLE));
    }

    #[test]
    fn random_content_and_extremes() {
        let s = SparseRandom::new(1 << 20, 9, 100.0, 4096, true).unwrap();
        let mut b = vec![0u8; 8192];
        s.read_at(0, &mut b).unwrap();
        assert_ne!(b[0..4096], b[4096..8192]);
        let mut part = vec![0u8; 10];
        s.read_at(4096 + 100, &mut part).unwrap();
        assert_eq!(part, b[4196..4206]);
        let empty = SparseRandom::new(1 << 30, 9, 0.0, 4096, false).unwrap();
        assert_eq!(fraction_and_runs(&empty).0, 0.0);
        assert!(SparseRandom::new(17 << 40, 1, 10.0, 4096, false).is_err());
        assert!(SparseRandom::new(1, 1, 101.0, 4096, false).is_err());
        assert!(SparseRandom::new(1, 1, 10.0, 0, false).is_err());
    }
}
