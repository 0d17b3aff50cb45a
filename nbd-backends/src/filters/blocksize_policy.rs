//! `blocksize-policy`: advertise block-size constraints
//! (`blocksize-minimum=`, `-preferred=`, `-maximum=`; unset ones come from
//! the layer below, else 1 / 4096 / 32M) and choose what happens to
//! requests that break them (`blocksize-error-policy=allow|error`).
//! `blocksize-write-disconnect=N` fails writes above N with ESHUTDOWN: a
//! filter cannot close the connection in nbdd, as nbdkit's does.
//!
//! A client that asked for the constraints in NBD_OPT_GO is already held
//! to them by the driver (checklist 28), whatever the policy.

use std::io;
use std::sync::Arc;

use super::params::FilterParams;
use crate::{Backend, BlockSize, Extent, ZeroFlags};

/// The largest maximum nbdd can honour: payloads are buffered whole.
const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;

/// The filter's settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyOptions {
    /// `blocksize-minimum=`.
    pub minimum: Option<u32>,
    /// `blocksize-preferred=`.
    pub preferred: Option<u32>,
    /// `blocksize-maximum=`.
    pub maximum: Option<u32>,
    /// `blocksize-error-policy=error`.
    pub error: bool,
    /// `blocksize-write-disconnect=`.
    pub disconnect: Option<u32>,
}

/// Advertises constraints and enforces them if asked.
pub struct BlocksizePolicy {
    inner: Arc<dyn Backend>,
    opts: PolicyOptions,
    sizes: BlockSize,
}

impl BlocksizePolicy {
    /// Over `inner` with `opts`.
    ///
    /// # Errors
    ///
    /// Constraints that break the protocol's rules.
    pub fn new(inner: Arc<dyn Backend>, opts: PolicyOptions) -> Result<Self, String> {
        let below = inner.block_size();
        let d = BlockSize::default();
        let minimum = opts
            .minimum
            .or(below.map(|b| b.minimum))
            .unwrap_or(d.minimum);
        let preferred = opts.preferred.or(below.map(|b| b.preferred));
        let maximum = opts
            .maximum
            .or(below.map(|b| b.maximum))
            // nbdkit: an unset maximum follows the disconnect size.
            .or(opts.disconnect.map(|n| n / minimum.max(1) * minimum.max(1)))
            .unwrap_or(d.maximum)
            .min(MAX_PAYLOAD);
        let sizes = BlockSize {
            minimum,
            preferred: preferred.unwrap_or(d.preferred),
            maximum,
        };
        let e = |m: String| Err(format!("blocksize-policy filter: {m}"));
        let BlockSize {
            minimum,
            preferred,
            maximum,
        } = sizes;
        if !minimum.is_power_of_two() || minimum > 65536 {
            return e(format!(
                "blocksize-minimum={minimum}: must be a power of 2, at most 64k"
            ));
        }
        if !preferred.is_power_of_two() || !(512..=MAX_PAYLOAD).contains(&preferred) {
            return e(format!(
                "blocksize-preferred={preferred}: must be a power of 2 from 512 to 32M"
            ));
        }
        if minimum > preferred || preferred > maximum {
            return e(format!(
                "need minimum ({minimum}) <= preferred ({preferred}) <= maximum ({maximum})"
            ));
        }
        if !maximum.is_multiple_of(minimum) {
            return e(format!(
                "blocksize-maximum={maximum}: must be a multiple of the minimum ({minimum})"
            ));
        }
        if let Some(d) = opts.disconnect
            && d <= minimum
        {
            return e(format!(
                "blocksize-write-disconnect={d}: must be larger than the minimum ({minimum})"
            ));
        }
        Ok(Self { inner, opts, sizes })
    }

    /// EINVAL for a request that breaks the constraints, under `error`.
    fn check(&self, what: &str, data: bool, offset: u64, len: u64) -> io::Result<()> {
        if !self.opts.error {
            return Ok(());
        }
        let min = u64::from(self.sizes.minimum);
        let why = if len < min {
            Some(format!("count {len} is smaller than the minimum {min}"))
        } else if data && len > u64::from(self.sizes.maximum) {
            Some(format!(
                "count {len} is larger than the maximum {}",
                self.sizes.maximum
            ))
        } else if !len.is_multiple_of(min) || !offset.is_multiple_of(min) {
            Some(format!(
                "offset {offset} or count {len} is not a multiple of {min}"
            ))
        } else {
            None
        };
        match why {
            Some(w) => {
                log::info!("blocksize-policy filter: {what} refused: {w}");
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            }
            None => Ok(()),
        }
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let size32 = |p: &mut FilterParams<'_, '_>, key| -> Result<Option<u32>, String> {
        match p.take_size(key)? {
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| p.bad(key, &v.to_string(), "must be below 4G")),
            None => Ok(None),
        }
    };
    let error = p.take_choice("blocksize-error-policy", &["allow", "error"])? == Some("error");
    let opts = PolicyOptions {
        minimum: size32(p, "blocksize-minimum")?,
        preferred: size32(p, "blocksize-preferred")?,
        maximum: size32(p, "blocksize-maximum")?,
        error,
        disconnect: size32(p, "blocksize-write-disconnect")?,
    };
    if opts.maximum.is_some_and(|m| m > MAX_PAYLOAD) {
        p.warn(
            "blocksize-maximum is above 32M, the largest payload nbdd buffers: 32M is advertised",
        );
    }
    if opts.disconnect.is_some() {
        p.warn("blocksize-write-disconnect: larger writes fail with ESHUTDOWN; the connection stays open");
    }
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(BlocksizePolicy::new(b, opts)?))
    }))
}

impl super::Filter for BlocksizePolicy {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(
            Self::new(inner, self.opts).map_err(io::Error::other)?,
        ))
    }
    fn block_size(&self) -> Option<BlockSize> {
        Some(self.sizes)
    }
    // try_read_cached forwarded only under blocksize-error-policy=allow
    // (reads are the layer below's): with `error` read_at must check, and
    // log, the request's shape once.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        !self.opts.error && super::layer::forward_cached(self, offset, buf)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check("read", true, offset, buf.len() as u64)?;
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        if self
            .opts
            .disconnect
            .is_some_and(|d| data.len() as u64 > u64::from(d))
        {
            log::warn!(
                "blocksize-policy filter: oversize write of {} bytes refused",
                data.len()
            );
            return Err(io::Error::from_raw_os_error(libc::ESHUTDOWN));
        }
        self.check("write", true, offset, data.len() as u64)?;
        self.inner.write_at(offset, data, fua)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.check("trim", false, offset, len)?;
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.check("zero", false, offset, len)?;
        self.inner.write_zeroes(offset, len, flags)
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check("cache", false, offset, len)?;
        self.inner.cache(offset, len)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        self.check("extents", false, offset, len)?;
        self.inner.extents(offset, len, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    fn m() -> Arc<dyn Backend> {
        Arc::new(MemoryBackend::new(1 << 20).unwrap())
    }

    #[test]
    fn advertises_and_enforces() {
        let opts = PolicyOptions {
            minimum: Some(512),
            preferred: Some(32768),
            error: true,
            ..PolicyOptions::default()
        };
        let p = BlocksizePolicy::new(m(), opts).unwrap();
        let bs = super::super::Filter::block_size(&p).unwrap();
        assert_eq!(
            (bs.minimum, bs.preferred, bs.maximum),
            (512, 32768, 32 << 20)
        );
        p.write_at(512, &[1; 1024], false).unwrap();
        for (off, len) in [(1, 512), (0, 100), (512, 513)] {
            let e = p.write_at(off, &vec![0; len], false).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{off}+{len}");
        }
        assert!(p.trim(0, 100, false).is_err());
        let allow = BlocksizePolicy::new(
            m(),
            PolicyOptions {
                error: false,
                ..opts
            },
        )
        .unwrap();
        allow.write_at(1, &[1; 3], false).unwrap();
    }

    #[test]
    fn invalid_constraints_and_disconnect() {
        let o = |min, pref, max| PolicyOptions {
            minimum: min,
            preferred: pref,
            maximum: max,
            ..PolicyOptions::default()
        };
        assert!(BlocksizePolicy::new(m(), o(Some(3), None, None)).is_err());
        assert!(BlocksizePolicy::new(m(), o(Some(8192), Some(4096), None)).is_err());
        assert!(BlocksizePolicy::new(m(), o(None, Some(256), None)).is_err());
        let d = PolicyOptions {
            disconnect: Some(4096),
            ..PolicyOptions::default()
        };
        let p = BlocksizePolicy::new(m(), d).unwrap();
        assert_eq!(super::super::Filter::block_size(&p).unwrap().maximum, 4096);
        let e = p.write_at(0, &[0; 8192], false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESHUTDOWN));
    }
}
