//! `fua`: change how FUA (forced unit access) and flush are handled
//! (`fuamode=none|emulate|native|force|pass|discard`, nbdkit's modes).

use std::io;
use std::sync::Arc;

use super::params::FilterParams;
use crate::{Backend, Caps, ZeroFlags};

/// nbdkit's `fuamode=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuaMode {
    /// Do not advertise FUA (the default).
    None,
    /// Advertise FUA, done as a flush after the write.
    Emulate,
    /// Advertise FUA and pass it down.
    Native,
    /// Every write is FUA; flushes do nothing.
    Force,
    /// Change nothing.
    Pass,
    /// Ignore FUA and flushes (unsafe).
    Discard,
}

/// Rewrites FUA flags and flushes.
pub struct Fua {
    inner: Arc<dyn Backend>,
    mode: FuaMode,
}

impl Fua {
    /// `mode` over `inner`.
    ///
    /// # Errors
    ///
    /// A mode the layer below cannot honour: emulate needs flush, native and
    /// force need FUA.
    pub fn new(inner: Arc<dyn Backend>, mode: FuaMode) -> Result<Self, String> {
        let caps = inner.caps();
        let missing = match mode {
            FuaMode::Emulate if !caps.contains(Caps::FLUSH) => Some("flush"),
            FuaMode::Native | FuaMode::Force if !caps.contains(Caps::FUA) => Some("FUA"),
            _ => None,
        };
        if let Some(what) = missing {
            let name = format!("{mode:?}").to_lowercase();
            return Err(format!(
                "fua filter: fuamode={name} needs {what}, which the layer below does not support"
            ));
        }
        Ok(Self { inner, mode })
    }

    /// The FUA flag to pass down for a client's `fua`.
    fn fua(&self, fua: bool) -> bool {
        match self.mode {
            FuaMode::Force => true,
            FuaMode::Native | FuaMode::Pass => fua,
            FuaMode::None | FuaMode::Emulate | FuaMode::Discard => false,
        }
    }

    /// After a write: the flush that emulates FUA.
    fn after(&self, fua: bool) -> io::Result<()> {
        if fua && self.mode == FuaMode::Emulate {
            self.inner.flush()
        } else {
            Ok(())
        }
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let modes = ["none", "emulate", "native", "force", "pass", "discard"];
    let mode = match p.take_choice("fuamode", &modes)? {
        None | Some("none") => FuaMode::None,
        Some("emulate") => FuaMode::Emulate,
        Some("native") => FuaMode::Native,
        Some("force") => FuaMode::Force,
        Some("pass") => FuaMode::Pass,
        Some(_) => FuaMode::Discard,
    };
    Ok(super::Spec::new(move |b| Ok(Arc::new(Fua::new(b, mode)?))))
}

impl super::Filter for Fua {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached forwarded: reads are the layer below's; only FUA and flush change.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        super::layer::forward_cached(self, offset, buf)
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(
            Self::new(inner, self.mode).map_err(io::Error::other)?,
        ))
    }
    fn caps(&self) -> Caps {
        let caps = self.inner.caps();
        match self.mode {
            FuaMode::None => caps - Caps::FUA,
            FuaMode::Emulate | FuaMode::Native | FuaMode::Force => caps | Caps::FUA,
            FuaMode::Pass => caps,
            FuaMode::Discard => caps | Caps::FUA | Caps::FLUSH,
        }
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.inner.write_at(offset, data, self.fua(fua))?;
        self.after(fua)
    }
    fn flush(&self) -> io::Result<()> {
        match self.mode {
            FuaMode::Force | FuaMode::Discard => Ok(()),
            _ => self.inner.flush(),
        }
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.inner.trim(offset, len, self.fua(fua))?;
        self.after(fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        let fua = flags.contains(ZeroFlags::FUA);
        let mut down = flags - ZeroFlags::FUA;
        if self.fua(fua) {
            down |= ZeroFlags::FUA;
        }
        self.inner.write_zeroes(offset, len, down)?;
        self.after(fua)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NullBackend;
    use std::sync::Mutex;

    /// Records the FUA flags and flushes it sees.
    struct Spy {
        inner: Arc<dyn Backend>,
        seen: Mutex<Vec<&'static str>>,
    }
    impl super::super::Filter for Spy {
        fn inner(&self) -> &Arc<dyn Backend> {
            &self.inner
        }
        fn reopen(&self, _: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
            unreachable!()
        }
        fn write_at(&self, _: u64, _: &[u8], fua: bool) -> io::Result<()> {
            self.seen
                .lock()
                .unwrap()
                .push(if fua { "w+fua" } else { "w" });
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            self.seen.lock().unwrap().push("flush");
            Ok(())
        }
    }

    fn run(mode: FuaMode) -> (Caps, Vec<&'static str>) {
        let spy = Arc::new(Spy {
            inner: Arc::new(NullBackend::new(4096).unwrap()),
            seen: Mutex::new(Vec::new()),
        });
        let f = Fua::new(spy.clone(), mode).unwrap();
        f.write_at(0, &[1], true).unwrap();
        f.write_at(0, &[1], false).unwrap();
        f.flush().unwrap();
        let seen = spy.seen.lock().unwrap().clone();
        (f.caps(), seen)
    }

    #[test]
    fn modes_rewrite_fua_and_flush() {
        let (caps, seen) = run(FuaMode::None);
        assert!(!caps.contains(Caps::FUA));
        assert_eq!(seen, ["w", "w", "flush"]);
        assert_eq!(run(FuaMode::Emulate).1, ["w", "flush", "w", "flush"]);
        assert_eq!(run(FuaMode::Native).1, ["w+fua", "w", "flush"]);
        assert_eq!(run(FuaMode::Force).1, ["w+fua", "w+fua"]);
        assert_eq!(run(FuaMode::Pass).1, ["w+fua", "w", "flush"]);
        let (caps, seen) = run(FuaMode::Discard);
        assert!(caps.contains(Caps::FUA | Caps::FLUSH));
        assert_eq!(seen, ["w", "w"]);
    }
}
