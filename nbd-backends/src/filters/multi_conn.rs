//! `multi-conn`: advertise multi-conn (or hide it) and, in `emulate` mode,
//! make it true by replicating a flush (or a FUA write) on one connection
//! to every connection's handle of the layer below
//! (`multi-conn-mode=auto|emulate|plugin|disable|unsafe`). Dirty tracking
//! (`multi-conn-track-dirty=connection|fast|off`) skips flushes with
//! nothing to flush; `multi-conn-exportname=true` replicates only among
//! connections to the same export name.
//!
//! Skipping is conservative outside emulate mode: a flush is skipped only
//! when no connection wrote since the last flush and every connection
//! shares one handle (or the layer below is multi-conn itself).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::params::FilterParams;
use crate::{Backend, Caps, ClientInfo, ZeroFlags};

/// `multi-conn-mode=` (auto is resolved when the filter is built).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Replicate flushes; advertise multi-conn.
    Emulate,
    /// Keep the layer below's flag; no replication.
    Plugin,
    /// Never advertise.
    Disable,
    /// Always advertise, replicating nothing (unsafe).
    Unsafe,
}

/// `multi-conn-track-dirty=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// Per connection.
    Connection,
    /// For the whole export.
    Fast,
    /// Pass every flush.
    Off,
}

/// One connection's handle and what it did since its last flush.
struct Conn {
    handle: Arc<dyn Backend>,
    export: String,
    wrote: AtomicBool,
    /// Read since another connection's flush: may cache stale data.
    read: AtomicBool,
}

struct Shared {
    mode: Mode,
    track: Track,
    by_export: bool,
    conns: Mutex<Vec<Weak<Conn>>>,
    dirty: AtomicBool,
}

impl Shared {
    fn live(&self) -> Vec<Arc<Conn>> {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|w| w.strong_count() > 0);
        conns.iter().filter_map(Weak::upgrade).collect()
    }
}

/// Per-connection view, registered with the export's list.
pub struct MultiConn {
    inner: Arc<dyn Backend>,
    shared: Arc<Shared>,
    me: Arc<Conn>,
}

impl MultiConn {
    fn register(shared: &Arc<Shared>, inner: Arc<dyn Backend>, export: &str) -> Self {
        let me = Arc::new(Conn {
            handle: Arc::clone(&inner),
            export: export.to_owned(),
            wrote: AtomicBool::new(false),
            read: AtomicBool::new(false),
        });
        shared
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&me));
        Self {
            inner,
            shared: Arc::clone(shared),
            me,
        }
    }

    /// Over `inner`, with `mode` (`None`: auto) and `track`.
    ///
    /// # Errors
    ///
    /// Emulation needs a layer below that can flush.
    pub fn new(
        inner: Arc<dyn Backend>,
        mode: Option<Mode>,
        track: Track,
        by_export: bool,
    ) -> Result<Self, String> {
        let caps = inner.caps();
        let mode = match mode {
            Some(Mode::Emulate) if !caps.contains(Caps::FLUSH) => {
                return Err(
                    "multi-conn filter: multi-conn-mode=emulate needs a layer below that can flush"
                        .into(),
                );
            }
            Some(m) => m,
            None if caps.contains(Caps::MULTI_CONN) => Mode::Plugin,
            None if caps.contains(Caps::FLUSH) => Mode::Emulate,
            None => Mode::Disable,
        };
        let shared = Arc::new(Shared {
            mode,
            track,
            by_export,
            conns: Mutex::new(Vec::new()),
            dirty: AtomicBool::new(false),
        });
        Ok(Self::register(&shared, inner, ""))
    }

    fn wrote(&self) {
        self.me.wrote.store(true, Ordering::SeqCst);
        self.shared.dirty.store(true, Ordering::SeqCst);
    }

    /// Flush every connection that needs it (emulate mode).
    fn flush_all(&self) -> io::Result<()> {
        let s = &self.shared;
        if s.track == Track::Fast && !s.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let mut flushed: Vec<Arc<dyn Backend>> = Vec::new();
        for c in s.live() {
            if s.by_export && c.export != self.me.export {
                continue;
            }
            let needed = match s.track {
                Track::Off | Track::Fast => true,
                Track::Connection => {
                    let mine = Arc::ptr_eq(&c, &self.me);
                    c.wrote.load(Ordering::SeqCst) || (!mine && c.read.load(Ordering::SeqCst))
                }
            };
            c.wrote.store(false, Ordering::SeqCst);
            c.read.store(false, Ordering::SeqCst);
            if needed && !flushed.iter().any(|h| Arc::ptr_eq(h, &c.handle)) {
                c.handle.flush()?;
                flushed.push(Arc::clone(&c.handle));
            }
        }
        Ok(())
    }

    /// Flush this connection only, unless nothing anywhere needs it.
    fn flush_one(&self) -> io::Result<()> {
        let s = &self.shared;
        let shared_handle = || {
            s.live()
                .iter()
                .all(|c| Arc::ptr_eq(&c.handle, &self.me.handle))
        };
        let can_skip = s.track != Track::Off
            && (s.mode == Mode::Plugin || shared_handle())
            && !s.dirty.load(Ordering::SeqCst);
        if can_skip {
            return Ok(());
        }
        self.inner.flush()?;
        if s.track != Track::Off && (s.mode == Mode::Plugin || shared_handle()) {
            s.dirty.store(false, Ordering::SeqCst);
        }
        Ok(())
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let modes = ["auto", "emulate", "plugin", "disable", "unsafe"];
    let mode = match p.take_choice("multi-conn-mode", &modes)? {
        Some("emulate") => Some(Mode::Emulate),
        Some("plugin") => Some(Mode::Plugin),
        Some("disable") => Some(Mode::Disable),
        Some("unsafe") => Some(Mode::Unsafe),
        _ => None,
    };
    let track = match p.take_choice("multi-conn-track-dirty", &["connection", "fast", "off"])? {
        Some("fast") => Track::Fast,
        Some("off") => Track::Off,
        _ => Track::Connection,
    };
    let by_export = p.take_bool("multi-conn-exportname")?.unwrap_or(false);
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(MultiConn::new(b, mode, track, by_export)?))
    }))
}

impl super::Filter for MultiConn {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self::register(
            &self.shared,
            inner,
            &self.me.export,
        )))
    }
    /// Every connection is registered, handle of its own or not.
    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        let inner = super::layer::open_below(&self.inner, client)?;
        let c = Self::register(&self.shared, inner, client.export_name);
        Ok(Some(Arc::new(c)))
    }
    fn caps(&self) -> Caps {
        let caps = self.inner.caps();
        match self.shared.mode {
            Mode::Emulate | Mode::Unsafe => caps | Caps::MULTI_CONN,
            Mode::Disable => caps - Caps::MULTI_CONN,
            Mode::Plugin => caps,
        }
    }
    // try_read_cached forwarded: the data is the layer below's; noted as a
    // read, as read_at does.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        self.me.read.store(true, Ordering::SeqCst);
        super::layer::forward_cached(self, offset, buf)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.me.read.store(true, Ordering::SeqCst);
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.wrote();
        if fua && self.shared.mode == Mode::Emulate {
            self.inner.write_at(offset, data, false)?;
            return self.flush_all();
        }
        self.inner.write_at(offset, data, fua)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.wrote();
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.wrote();
        if flags.contains(ZeroFlags::FUA) && self.shared.mode == Mode::Emulate {
            self.inner
                .write_zeroes(offset, len, flags - ZeroFlags::FUA)?;
            return self.flush_all();
        }
        self.inner.write_zeroes(offset, len, flags)
    }
    fn flush(&self) -> io::Result<()> {
        if self.shared.mode == Mode::Emulate {
            self.flush_all()
        } else {
            self.flush_one()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::Stats;
    use crate::{MemoryBackend, Peer};

    /// A layer that hands out a counted handle per connection.
    struct PerConn {
        handles: Mutex<Vec<Arc<Stats>>>,
    }
    impl Backend for PerConn {
        fn size(&self) -> u64 {
            4096
        }
        fn caps(&self) -> Caps {
            Caps::FLUSH
        }
        fn open(&self, _: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
            let s = Arc::new(Stats::new(Arc::new(MemoryBackend::new(4096)?), None));
            self.handles.lock().unwrap().push(Arc::clone(&s));
            Ok(Some(s))
        }
        fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: u64, _: &[u8], _: bool) -> io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64, _: ZeroFlags) -> io::Result<()> {
            Ok(())
        }
    }

    fn flushes(s: &Stats) -> String {
        let r = s.report();
        r.lines()
            .find(|l| l.starts_with("flush:"))
            .map_or("0".into(), |l| l.split(' ').nth(1).unwrap().to_owned())
    }

    #[test]
    fn emulate_replicates_flushes_to_dirty_connections() {
        let below = Arc::new(PerConn {
            handles: Mutex::new(Vec::new()),
        });
        let m = MultiConn::new(below.clone(), None, Track::Connection, false).unwrap();
        assert!(m.caps().contains(Caps::MULTI_CONN), "auto = emulate here");
        let c = |id| ClientInfo {
            id,
            peer: Peer::Unix,
            export_name: "",
            tls: false,
        };
        let a = m.open(&c(1)).unwrap().unwrap();
        let b = m.open(&c(2)).unwrap().unwrap();
        let z = m.open(&c(3)).unwrap().unwrap();
        b.write_at(0, &[1], false).unwrap();
        a.flush().unwrap();
        let h = below.handles.lock().unwrap().clone();
        assert_eq!(
            [flushes(&h[0]), flushes(&h[1]), flushes(&h[2])],
            ["0", "1", "0"],
            "only the dirty connection is flushed"
        );
        z.read_at(0, &mut [0]).unwrap();
        a.write_at(0, &[2], true).unwrap();
        assert_eq!(
            [flushes(&h[0]), flushes(&h[1]), flushes(&h[2])],
            ["1", "1", "1"],
            "FUA flushes the writer and the reader that may cache"
        );
        let d = MultiConn::new(below, Some(Mode::Disable), Track::Off, false).unwrap();
        assert!(!d.caps().contains(Caps::MULTI_CONN));
    }
}
