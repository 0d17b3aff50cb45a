//! `retry`: when a request fails, wait (`retry-delay=`, default 2 s,
//! doubled each time with `retry-exponential=yes`, the default), reopen
//! the layer below and try again, up to `retries=` times (default 5). The
//! layer below is reopened through [`Backend::open`] when it hands out
//! per-connection handles; otherwise the same layer is simply retried
//! (right for stateless layers such as an HTTP client). With
//! `retry-readonly=yes` a connection refuses writes after its first
//! failure.
//!
//! Errors that a retry cannot fix come back at once: EPERM, EROFS,
//! EINVAL, ENOSPC, EOVERFLOW and ENOTSUP (a fast zero must fail fast).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::layer::OwnedClient;
use super::params::FilterParams;
use crate::{Backend, ClientInfo, Execution, Extent, ZeroFlags};

/// How to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryOptions {
    /// Retries per request.
    pub retries: u32,
    /// Wait before the first retry.
    pub delay: Duration,
    /// Double the wait each time.
    pub exponential: bool,
    /// Refuse writes after a failure.
    pub readonly: bool,
}

impl Default for RetryOptions {
    fn default() -> Self {
        Self {
            retries: 5,
            delay: Duration::from_secs(2),
            exponential: true,
            readonly: false,
        }
    }
}

/// Retries failed requests on a (re)opened handle of the layer below.
pub struct Retry {
    /// The export's layer below, reopened for `client`.
    base: Arc<dyn Backend>,
    client: Option<OwnedClient>,
    current: RwLock<Arc<dyn Backend>>,
    opts: RetryOptions,
    failed: AtomicBool,
}

impl Retry {
    /// Retry `inner` as `opts` says.
    pub fn new(inner: Arc<dyn Backend>, opts: RetryOptions) -> Self {
        Self {
            base: Arc::clone(&inner),
            client: None,
            current: RwLock::new(inner),
            opts,
            failed: AtomicBool::new(false),
        }
    }

    fn handle(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A new handle of the layer below, if it gives per-connection ones.
    fn reopen_below(&self) {
        let Some(c) = &self.client else {
            return;
        };
        match self.base.open(&c.info()) {
            Ok(Some(h)) => *self.current.write().unwrap_or_else(PoisonError::into_inner) = h,
            Ok(None) => {}
            Err(e) => log::warn!("retry filter: reopening: {e}"),
        }
    }

    fn run<T>(
        &self,
        what: &str,
        write: bool,
        mut op: impl FnMut(&dyn Backend) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut delay = self.opts.delay;
        let mut attempt = 0;
        loop {
            if write && self.opts.readonly && self.failed.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(libc::EROFS));
            }
            let e = match op(&*self.handle()) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if attempt >= self.opts.retries || !retryable(&e) {
                return Err(e);
            }
            attempt += 1;
            self.failed.store(true, Ordering::SeqCst);
            log::info!(
                "retry filter: {what} failed ({e}); retry {attempt} of {} in {delay:?}",
                self.opts.retries
            );
            std::thread::sleep(delay);
            if self.opts.exponential {
                delay = delay.saturating_mul(2);
            }
            self.reopen_below();
        }
    }
}

fn retryable(e: &io::Error) -> bool {
    let permanent = [
        libc::EPERM,
        libc::EROFS,
        libc::EINVAL,
        libc::ENOSPC,
        libc::EOVERFLOW,
        libc::ENOTSUP,
    ];
    e.kind() != io::ErrorKind::Unsupported
        && e.kind() != io::ErrorKind::InvalidInput
        && !e.raw_os_error().is_some_and(|c| permanent.contains(&c))
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let d = RetryOptions::default();
    let opts = RetryOptions {
        retries: p.take_number("retries")?.unwrap_or(d.retries),
        delay: p.take_delay("retry-delay")?.unwrap_or(d.delay),
        exponential: p.take_bool("retry-exponential")?.unwrap_or(d.exponential),
        readonly: p.take_bool("retry-readonly")?.unwrap_or(d.readonly),
    };
    Ok(super::Spec::new(move |b| Ok(Arc::new(Retry::new(b, opts)))))
}

impl super::Filter for Retry {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.base
    }
    // try_read_cached not forwarded (the default): reads go through the retry loop over a layer below that may be reopened.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self::new(inner, self.opts)))
    }
    /// Each connection gets its own copy: it remembers the client (to
    /// reopen for it) and whether it failed (for `retry-readonly`).
    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        let first = super::layer::open_below(&self.base, client)?;
        Ok(Some(Arc::new(Self {
            base: Arc::clone(&self.base),
            client: Some(OwnedClient::new(client)),
            current: RwLock::new(first),
            opts: self.opts,
            failed: AtomicBool::new(false),
        })))
    }
    fn execution(&self) -> Execution {
        Execution::Blocking
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.run("read", false, |b| b.read_at(offset, buf))
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.run("write", true, |b| b.write_at(offset, data, fua))
    }
    fn flush(&self) -> io::Result<()> {
        self.run("flush", false, |b| b.flush())
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.run("trim", true, |b| b.trim(offset, len, fua))
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.run("zero", true, |b| b.write_zeroes(offset, len, flags))
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.run("cache", false, |b| b.cache(offset, len))
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        self.run("extents", false, |b| b.extents(offset, len, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::ErrorInject;
    use crate::{Caps, MemoryBackend, Peer};
    use std::sync::atomic::AtomicU32;

    fn fast() -> RetryOptions {
        RetryOptions {
            retries: 3,
            delay: Duration::from_millis(1),
            ..RetryOptions::default()
        }
    }

    #[test]
    fn transient_failures_are_retried_permanent_ones_not() {
        let trigger = std::env::temp_dir().join(format!("nbdd-retry-{}", std::process::id()));
        std::fs::write(&trigger, b"").unwrap();
        let rule = crate::filters::ErrorRule {
            errno: libc::EIO,
            rate: 1.0,
            file: Some(trigger.clone()),
        };
        let inner = Arc::new(MemoryBackend::new(4096).unwrap());
        let err = Arc::new(ErrorInject::with_rules(
            inner,
            std::array::from_fn(|_| rule.clone()),
        ));
        let r = Retry::new(err, fast());
        let e = r.read_at(0, &mut [0]).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "gives up after 3 retries"
        );
        // Remove the trigger while the request is being retried.
        let t2 = trigger.clone();
        let slow = Retry::new(
            Arc::clone(&r.base),
            RetryOptions {
                delay: Duration::from_millis(50),
                ..fast()
            },
        );
        let remover = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::remove_file(t2).unwrap();
        });
        slow.write_at(0, &[1], false).unwrap();
        remover.join().unwrap();
        let e = slow.write_at(4096, &[1], false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "not retried");
    }

    /// Per-connection handles that fail until reopened.
    struct Flaky {
        opens: AtomicU32,
    }
    struct Handle(u32);
    impl Backend for Handle {
        fn size(&self) -> u64 {
            1
        }
        fn caps(&self) -> Caps {
            Caps::empty()
        }
        fn read_at(&self, _: u64, buf: &mut [u8]) -> io::Result<()> {
            if self.0 < 2 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            buf.fill(self.0 as u8);
            Ok(())
        }
        fn write_at(&self, _: u64, _: &[u8], _: bool) -> io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64, _: ZeroFlags) -> io::Result<()> {
            Ok(())
        }
    }
    impl Backend for Flaky {
        fn size(&self) -> u64 {
            1
        }
        fn caps(&self) -> Caps {
            Caps::empty()
        }
        fn open(&self, _: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
            let n = self.opens.fetch_add(1, Ordering::SeqCst);
            Ok(Some(Arc::new(Handle(n))))
        }
        fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
            unreachable!("always used through a handle")
        }
        fn write_at(&self, _: u64, _: &[u8], _: bool) -> io::Result<()> {
            unreachable!()
        }
        fn write_zeroes(&self, _: u64, _: u64, _: ZeroFlags) -> io::Result<()> {
            unreachable!()
        }
    }

    #[test]
    fn reopens_the_layer_below_and_goes_read_only() {
        let flaky = Arc::new(Flaky {
            opens: AtomicU32::new(0),
        });
        let opts = RetryOptions {
            readonly: true,
            ..fast()
        };
        let r = Retry::new(flaky.clone(), opts);
        let c = ClientInfo {
            id: 1,
            peer: Peer::Unix,
            export_name: "",
            tls: false,
        };
        let h = r.open(&c).unwrap().unwrap();
        let mut b = [0];
        h.read_at(0, &mut b).unwrap();
        assert_eq!(b, [2], "served by the third handle");
        assert_eq!(flaky.opens.load(Ordering::SeqCst), 3);
        let e = h.write_at(0, &[1], false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "retry-readonly");
    }
}
