//! `protect`: refuse (EPERM) writes that would change protected ranges
//! (`protect=START-END`, inclusive, repeatable; `~START-END` protects the
//! complement; numbers in decimal, `0NN` octal or `0xNN` hex, either end
//! may be omitted). Writes that leave the bytes as they are succeed, as in
//! nbdkit; zeroes must find zeroes; trims touching a range are refused.

use std::io;
use std::sync::Arc;

use super::params::FilterParams;
use crate::util::{check_write, is_zero};
use crate::{Backend, ZeroFlags};

/// One `protect=` value: inclusive bounds (`None`: the start / end of the
/// export), and whether it is complemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSpec {
    /// First protected byte.
    pub start: Option<u64>,
    /// Last protected byte.
    pub end: Option<u64>,
    /// `~`: protect everything else.
    pub complement: bool,
}

impl RangeSpec {
    /// Parse `START-END` or `~START-END`.
    ///
    /// # Errors
    ///
    /// A reason naming the accepted form.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (complement, body) = match s.strip_prefix('~') {
            Some(b) => (true, b),
            None => (false, s),
        };
        let (a, b) = body
            .split_once('-')
            .ok_or("expected START-END (e.g. 0-511 or 0x200-)")?;
        let num = |v: &str| -> Result<Option<u64>, String> {
            if v.is_empty() {
                return Ok(None);
            }
            let r = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                u64::from_str_radix(h, 16)
            } else if v.len() > 1 && v.starts_with('0') {
                u64::from_str_radix(&v[1..], 8)
            } else {
                v.parse()
            };
            r.map(Some).map_err(|_| format!("'{v}' is not a number"))
        };
        let (start, end) = (num(a)?, num(b)?);
        if let (Some(x), Some(y)) = (start, end)
            && x > y
        {
            return Err("START is after END".into());
        }
        Ok(Self {
            start,
            end,
            complement,
        })
    }

    /// The `[start, end)` ranges it protects in an export of `size` bytes.
    fn ranges(&self, size: u64) -> Vec<(u64, u64)> {
        let start = self.start.unwrap_or(0).min(size);
        let end = self.end.map_or(size, |e| e.saturating_add(1)).min(size);
        let v = if self.complement {
            vec![(0, start), (end, size)]
        } else {
            vec![(start, end)]
        };
        v.into_iter().filter(|(a, b)| a < b).collect()
    }
}

/// Refuses changes inside protected ranges.
pub struct Protect {
    inner: Arc<dyn Backend>,
    specs: Arc<[RangeSpec]>,
    /// Sorted, merged `[start, end)` ranges for this size.
    ranges: Vec<(u64, u64)>,
}

impl Protect {
    /// Protect `specs` of `inner`.
    pub fn new(inner: Arc<dyn Backend>, specs: Arc<[RangeSpec]>) -> Self {
        let size = inner.size();
        let mut ranges: Vec<_> = specs.iter().flat_map(|s| s.ranges(size)).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        Self {
            inner,
            specs,
            ranges: merged,
        }
    }

    /// The protected parts of `[offset, end)`.
    fn overlaps(&self, offset: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges
            .iter()
            .map(move |&(a, b)| (a.max(offset), b.min(end)))
            .filter(|(a, b)| a < b)
    }

    fn denied() -> io::Error {
        io::Error::from_raw_os_error(libc::EPERM)
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let values = p.take_all("protect");
    let specs: Vec<RangeSpec> = values
        .iter()
        .map(|v| RangeSpec::parse(v).map_err(|e| p.bad("protect", v, e)))
        .collect::<Result<_, _>>()?;
    let specs: Arc<[RangeSpec]> = specs.into();
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(Protect::new(b, Arc::clone(&specs))))
    }))
}

impl super::Filter for Protect {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached forwarded: reads are the layer below's; only writes are checked.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        super::layer::forward_cached(self, offset, buf)
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self::new(inner, Arc::clone(&self.specs))))
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let end = check_write(offset, data.len() as u64, self.inner.size())?;
        for (a, b) in self.overlaps(offset, end) {
            let mut have = vec![0u8; (b - a) as usize];
            self.inner.read_at(a, &mut have)?;
            if have[..] != data[(a - offset) as usize..(b - offset) as usize] {
                return Err(Self::denied());
            }
        }
        self.inner.write_at(offset, data, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        let end = check_write(offset, len, self.inner.size())?;
        for (a, b) in self.overlaps(offset, end) {
            let mut pos = a;
            while pos < b {
                let n = (b - pos).min(1 << 20);
                let mut have = vec![0u8; n as usize];
                self.inner.read_at(pos, &mut have)?;
                if !is_zero(&have) {
                    return Err(Self::denied());
                }
                pos += n;
            }
        }
        self.inner.write_zeroes(offset, len, flags)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        let end = check_write(offset, len, self.inner.size())?;
        if self.overlaps(offset, end).next().is_some() {
            return Err(Self::denied());
        }
        self.inner.trim(offset, len, fua)
    }
    fn resize(&self, _new_size: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn parse_ranges() {
        let r = |s| RangeSpec::parse(s).unwrap();
        assert_eq!(r("0-0x1bd").end, Some(0x1bd));
        assert_eq!(r("010-").start, Some(8), "octal");
        assert!(r("~1024-2047").complement);
        assert_eq!(r("-511").start, None);
        for bad in ["5", "9-3", "x-1", "1-0xg"] {
            assert!(RangeSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn protected_bytes_refuse_changes_only() {
        let m = Arc::new(MemoryBackend::new(8192).unwrap());
        m.write_at(0, &[9; 512], false).unwrap();
        let specs: Arc<[RangeSpec]> = vec![RangeSpec::parse("0-511").unwrap()].into();
        let p = Protect::new(m.clone(), specs);
        let e = p.write_at(500, &[1; 20], false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        p.write_at(500, &[9; 12], false).unwrap();
        p.write_at(512, &[1; 20], false).unwrap();
        assert!(p.write_zeroes(0, 4096, ZeroFlags::empty()).is_err());
        p.write_zeroes(512, 4096, ZeroFlags::empty()).unwrap();
        assert!(p.trim(0, 8192, false).is_err());
        p.trim(1024, 1024, false).unwrap();
        let specs: Arc<[RangeSpec]> = vec![RangeSpec::parse("~1024-2047").unwrap()].into();
        let p = Protect::new(m, specs);
        p.write_at(1024, &[3; 1024], false).unwrap();
        assert!(p.write_at(2048, &[3], false).is_err());
        assert!(p.write_at(1000, &[3; 30], false).is_err());
    }
}
