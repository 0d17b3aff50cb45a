//! `random SIZE [seed=N]`: a disk of pseudo-random bytes that can be read
//! at any offset without generating what comes before it.
//!
//! The bytes are those of nbdkit's random plugin, so a test can compare
//! the two servers: byte `i` is the low byte of the third output of a
//! xoshiro256** generator whose state is seeded by splitmix64 from
//! `seed + i`. (Both generators are the public-domain ones by Blackman and
//! Vigna.) Not cryptographically secure, and not meant to be.

use std::io;

use crate::registry::Params;
use crate::util::{check_read, check_write, len64, out_of_range};
use crate::{Backend, Caps, ZeroFlags, size::MAX_SIZE};

/// splitmix64: advances `seed` and returns the next output.
pub(crate) fn splitmix64(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xoshiro256** state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Xoshiro([u64; 4]);

impl Xoshiro {
    /// State from a 64-bit seed via four splitmix64 outputs.
    pub(crate) fn new(mut seed: u64) -> Self {
        Self([
            splitmix64(&mut seed),
            splitmix64(&mut seed),
            splitmix64(&mut seed),
            splitmix64(&mut seed),
        ])
    }

    /// The next 64-bit output.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
}

/// Parse a seed as nbdkit does: an unsigned 32-bit number, decimal, `0x`
/// hex or `0` octal. Without one, the time (nbdkit's default too).
pub(crate) fn take_seed(owner: &str, p: &mut Params<'_>) -> Result<u32, String> {
    match p.take("seed") {
        Some(v) => parse_u32(v).ok_or_else(|| {
            format!("{owner}: seed: expected a number from 0 to 4294967295, got '{v}'")
        }),
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32)),
    }
}

/// strtoul-style base detection, 32 bits, no sign.
pub(crate) fn parse_u32(v: &str) -> Option<u32> {
    let (digits, radix) = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None if v.len() > 1 && v.starts_with('0') => (&v[1..], 8),
        None => (v, 10),
    };
    if digits.is_empty() || digits.starts_with('+') {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

/// Random content; writes must match it.
#[derive(Debug, Clone, Copy)]
pub struct RandomBackend {
    size: u64,
    seed: u32,
}

impl RandomBackend {
    /// A random disk of `size` bytes for `seed`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `size` exceeds 2^63-1.
    pub fn new(size: u64, seed: u32) -> io::Result<Self> {
        if size > MAX_SIZE {
            return Err(out_of_range());
        }
        Ok(Self { size, seed })
    }

    pub(crate) fn from_params(p: &mut Params<'_>) -> Result<Self, String> {
        let seed = take_seed("random", p)?;
        let size = p
            .take_size("random", "size")?
            .ok_or_else(|| crate::make::missing_size("random"))?;
        Self::new(size, seed).map_err(|e| format!("random: {e}"))
    }

    /// The seed in use.
    pub fn seed(&self) -> u32 {
        self.seed
    }

    /// The byte at `offset`.
    pub fn byte_at(&self, offset: u64) -> u8 {
        let mut x = Xoshiro::new(u64::from(self.seed).wrapping_add(offset));
        x.next_u64();
        x.next_u64();
        x.next_u64() as u8
    }

    fn fill(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.byte_at(offset + i as u64);
        }
    }
}

/// A write that does not match the content, or a trim or zero (which
/// would change it): EIO, as nbdkit answers; the reason at debug level.
pub(crate) fn eio(what: &str) -> io::Error {
    log::debug!("{what}: EIO");
    io::Error::from_raw_os_error(libc::EIO)
}

impl Backend for RandomBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        // nbdkit's flags: trim and zero exist (and fail), nothing to flush.
        Caps::TRIM | Caps::WRITE_ZEROES | Caps::CACHE | Caps::MULTI_CONN
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_read(offset, len64(buf), self.size)?;
        self.fill(offset, buf);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        check_write(offset, len64(data), self.size)?;
        let mut expect = [0u8; 4096];
        for (i, chunk) in data.chunks(expect.len()).enumerate() {
            let want = &mut expect[..chunk.len()];
            self.fill(offset + (i * 4096) as u64, want);
            if want != chunk {
                return Err(eio("random: data written does not match the content"));
            }
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        check_read(offset, len, self.size)?;
        Err(eio("random: trim would change the content"))
    }

    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> io::Result<()> {
        check_write(offset, len, self.size)?;
        Err(eio("random: zero would change the content"))
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        check_read(offset, len, self.size).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_match_the_published_reference_values() {
        // splitmix64 from seed 1234567: the reference implementation's
        // first outputs.
        let mut s = 1_234_567u64;
        assert_eq!(splitmix64(&mut s), 6_457_827_717_110_365_317);
        assert_eq!(splitmix64(&mut s), 3_203_168_211_198_807_973);
        // xoshiro256** from the state {1, 2, 3, 4}.
        let mut x = Xoshiro([1, 2, 3, 4]);
        assert_eq!(x.next_u64(), 11_520);
        assert_eq!(x.next_u64(), 0);
        assert_eq!(x.next_u64(), 1_509_978_240);
    }

    #[test]
    fn reads_are_deterministic_per_seed_at_any_alignment() {
        let r = RandomBackend::new(1 << 20, 7).unwrap();
        let mut all = vec![0u8; 8192];
        r.read_at(0, &mut all).unwrap();
        let mut part = vec![0u8; 100];
        r.read_at(1001, &mut part).unwrap();
        assert_eq!(part, all[1001..1101]);
        let other = RandomBackend::new(1 << 20, 8).unwrap();
        let mut b = vec![0u8; 8192];
        other.read_at(0, &mut b).unwrap();
        assert_ne!(b, all, "another seed gives other bytes");
        // Seed s at offset o equals seed s+1 at offset o-1 (nbdkit's scheme).
        assert_eq!(other.byte_at(0), r.byte_at(1));
        let zeros = all.iter().filter(|&&x| x == 0).count();
        assert!(zeros < 100, "about 1/256 zero bytes, got {zeros}");
    }

    #[test]
    fn writes_must_match_and_trim_fails() {
        let r = RandomBackend::new(1 << 20, 3).unwrap();
        let mut b = vec![0u8; 10_000];
        r.read_at(500, &mut b).unwrap();
        r.write_at(500, &b, false).unwrap();
        b[9_999] ^= 1;
        let eio = Some(libc::EIO);
        assert_eq!(r.write_at(500, &b, false).unwrap_err().raw_os_error(), eio);
        assert_eq!(r.trim(0, 10, false).unwrap_err().raw_os_error(), eio);
        let z = r.write_zeroes(0, 10, ZeroFlags::empty()).unwrap_err();
        assert_eq!(z.raw_os_error(), eio);
    }

    #[test]
    fn seeds_parse_like_nbdkit() {
        assert_eq!(parse_u32("0x10"), Some(16));
        assert_eq!(parse_u32("010"), Some(8));
        assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
        for bad in ["-1", "4294967296", "", "x", "+1", "0x"] {
            assert_eq!(parse_u32(bad), None, "{bad}");
        }
    }
}
