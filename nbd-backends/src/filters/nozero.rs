//! `nozero`: disable or change efficient zeroing (`zeromode=`,
//! `fastzeromode=`, nbdkit's modes), to compare clients' fallbacks.
//!
//! nbdd's driver always advertises WRITE_ZEROES to clients (it can answer
//! them itself), so `zeromode=none` cannot hide the command; it behaves as
//! `emulate` (zeroes are written as data) without fast-zero support.

use std::io;
use std::sync::Arc;

use super::params::FilterParams;
use crate::util::check_write;
use crate::{Backend, Caps, ZeroFlags};

/// nbdkit's `zeromode=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroMode {
    /// Zeroes are written as data; zeroing is not advertised as efficient.
    None,
    /// Zeroes are written as data, fast zero advertised but failing.
    Emulate,
    /// Passed down without MAY_TRIM.
    NoTrim,
    /// Passed down unchanged.
    Plugin,
}

/// nbdkit's `fastzeromode=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastZeroMode {
    /// Not advertised (a fast request fails with ENOTSUP).
    None,
    /// Advertised; every fast request fails at once with ENOTSUP.
    Slow,
    /// Advertised; the fast flag is dropped (unsafe).
    Ignore,
    /// Slow for none/emulate, the layer below's otherwise.
    Default,
}

/// Rewrites write-zeroes requests.
pub struct NoZero {
    inner: Arc<dyn Backend>,
    zero: ZeroMode,
    fast: FastZeroMode,
}

/// Largest write used to emulate zeroing.
const CHUNK: u64 = 1 << 20;

impl NoZero {
    /// `zero` and `fast` modes over `inner`.
    pub fn new(inner: Arc<dyn Backend>, zero: ZeroMode, fast: FastZeroMode) -> Self {
        Self { inner, zero, fast }
    }

    fn emulated(&self) -> bool {
        matches!(self.zero, ZeroMode::None | ZeroMode::Emulate)
    }

    /// Write zeroes as data, at most [`CHUNK`] at a time.
    fn write_zero_data(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        let end = check_write(offset, len, self.inner.size())?;
        let zeroes = vec![0u8; len.min(CHUNK) as usize];
        let mut pos = offset;
        while pos < end {
            let n = (end - pos).min(CHUNK);
            self.inner
                .write_at(pos, &zeroes[..n as usize], fua && pos + n == end)?;
            pos += n;
        }
        Ok(())
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let zero = match p.take_choice("zeromode", &["none", "emulate", "notrim", "plugin"])? {
        None | Some("none") => ZeroMode::None,
        Some("emulate") => ZeroMode::Emulate,
        Some("notrim") => ZeroMode::NoTrim,
        Some(_) => ZeroMode::Plugin,
    };
    let fast = match p.take_choice("fastzeromode", &["none", "slow", "ignore", "default"])? {
        Some("none") => FastZeroMode::None,
        Some("slow") => FastZeroMode::Slow,
        Some("ignore") => FastZeroMode::Ignore,
        _ => FastZeroMode::Default,
    };
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(NoZero::new(b, zero, fast)))
    }))
}

impl super::Filter for NoZero {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached forwarded: reads are the layer below's; only zeroes change.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        super::layer::forward_cached(self, offset, buf)
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self::new(inner, self.zero, self.fast)))
    }
    fn caps(&self) -> Caps {
        let mut caps = self.inner.caps();
        if self.emulated() {
            caps -= Caps::WRITE_ZEROES;
        }
        match (self.fast, self.zero) {
            (FastZeroMode::None, _) | (FastZeroMode::Default, ZeroMode::None) => {
                caps - Caps::FAST_ZERO
            }
            (FastZeroMode::Slow | FastZeroMode::Ignore, _)
            | (FastZeroMode::Default, ZeroMode::Emulate) => caps | Caps::FAST_ZERO,
            (FastZeroMode::Default, _) => caps,
        }
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        let mut flags = flags;
        if flags.contains(ZeroFlags::FAST) {
            let fails = match self.fast {
                FastZeroMode::None | FastZeroMode::Slow => true,
                FastZeroMode::Ignore => false,
                FastZeroMode::Default => self.emulated(),
            };
            if fails {
                return Err(io::Error::from(io::ErrorKind::Unsupported));
            }
            if self.fast == FastZeroMode::Ignore {
                flags -= ZeroFlags::FAST;
            }
        }
        match self.zero {
            ZeroMode::None | ZeroMode::Emulate => {
                self.write_zero_data(offset, len, flags.contains(ZeroFlags::FUA))
            }
            ZeroMode::NoTrim => self
                .inner
                .write_zeroes(offset, len, flags - ZeroFlags::MAY_TRIM),
            ZeroMode::Plugin => self.inner.write_zeroes(offset, len, flags),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;
    use crate::filters::Stats;

    #[test]
    fn emulated_zeroes_are_data_and_fast_fails() {
        let mem = Arc::new(MemoryBackend::new(3 << 20).unwrap());
        mem.write_at(0, &vec![5; 3 << 20], false).unwrap();
        let m = Arc::new(Stats::new(mem, None));
        let z = NoZero::new(m.clone(), ZeroMode::Emulate, FastZeroMode::Default);
        assert!(!z.caps().contains(Caps::WRITE_ZEROES));
        assert!(z.caps().contains(Caps::FAST_ZERO));
        let e = z.write_zeroes(0, 10, ZeroFlags::FAST).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        z.write_zeroes(7, (2 << 20) + 5, ZeroFlags::MAY_TRIM)
            .unwrap();
        let mut b = vec![9; 3 << 20];
        m.read_at(0, &mut b).unwrap();
        assert_eq!(&b[..7], &[5; 7]);
        assert!(b[7..(2 << 20) + 12].iter().all(|&x| x == 0));
        assert_eq!(b[(2 << 20) + 12], 5);
        let r = m.report();
        assert!(r.contains("write: 3 ops") && !r.contains("zero:"), "{r}");
        let none = NoZero::new(m, ZeroMode::None, FastZeroMode::Default);
        assert!(!none.caps().contains(Caps::FAST_ZERO));
    }

    #[test]
    fn plugin_modes_pass_down() {
        let m = Arc::new(Stats::new(
            Arc::new(MemoryBackend::new(8192).unwrap()),
            None,
        ));
        let z = NoZero::new(m.clone(), ZeroMode::Plugin, FastZeroMode::Ignore);
        z.write_zeroes(0, 8192, ZeroFlags::FAST | ZeroFlags::MAY_TRIM)
            .unwrap();
        assert!(m.report().contains("zero: 1 ops"), "passed down as a zero");
        let slow = NoZero::new(m, ZeroMode::NoTrim, FastZeroMode::Slow);
        assert!(slow.write_zeroes(0, 1, ZeroFlags::FAST).is_err());
        slow.write_zeroes(0, 1, ZeroFlags::empty()).unwrap();
    }
}
