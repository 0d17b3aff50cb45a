//! `file dir=DIR`: one export per file, opened when a client selects it
//! (issue 9). Opening every file at start-up made a directory of 1500
//! files fail under `ulimit -n 1024`; nbdkit opens lazily too.
//!
//! Each export knows its size and capabilities from the file's metadata
//! (LIST and INFO need no descriptor). At GO / EXPORT_NAME the file is
//! opened once and shared by that export's clients; after the last one
//! leaves it stays in a small least-recently-used cache of idle files, so
//! a client that reconnects does not reopen it, and the cache's bound
//! keeps the descriptors held by idle exports limited. A file in use is
//! never closed under a connection: the cache only drops its own
//! reference, and the connection's handle keeps the file open.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use rustix::fs::{Access, Advice};

use super::{ALIGN, FileBackend, open_or_read_only, rotational};
use crate::{Backend, BlockSize, Caps, ClientInfo, Extent, ZeroFlags};

/// Idle files kept open at most, whatever the descriptor limit.
const IDLE_MAX: usize = 256;

/// How the files of one `dir=` are opened.
#[derive(Debug, Clone, Copy)]
pub struct DirOptions {
    /// `-r`.
    pub readonly: bool,
    /// `cache=none` (`O_DIRECT` where the filesystem allows it).
    pub cache_none: bool,
    /// `fadvise=`, applied on each open.
    pub advice: Option<Advice>,
}

/// The recently used open files of one directory, most recent last.
struct IdleCache {
    files: Mutex<VecDeque<Arc<FileBackend>>>,
    cap: usize,
}

impl IdleCache {
    /// Mark `f` most recently used; the least recently used beyond the cap
    /// lose the cache's reference (closing them unless a client holds one).
    fn touch(&self, f: &Arc<FileBackend>) {
        let mut evicted = Vec::new();
        {
            let mut q = self.files.lock().unwrap_or_else(PoisonError::into_inner);
            q.retain(|g| !Arc::ptr_eq(g, f));
            q.push_back(Arc::clone(f));
            while q.len() > self.cap {
                evicted.extend(q.pop_front());
            }
        }
        evicted.iter().for_each(close);
    }
}

/// The cache's bound: a quarter of the soft descriptor limit (the rest is
/// for client sockets and files in use), at most [`IDLE_MAX`].
fn idle_cap() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(soft / 4)
        .unwrap_or(IDLE_MAX)
        .clamp(1, IDLE_MAX)
}

/// What is known of a file without holding it open.
#[derive(Debug, Clone, Copy)]
struct Meta {
    size: u64,
    readonly: bool,
    rotational: bool,
    /// `cache=none` on a size `O_DIRECT` can serve (the filesystem may
    /// still refuse it at open; the connection's handle then says so).
    direct: bool,
}

/// One file of a `dir=` export, opened on demand.
pub struct LazyFile {
    path: PathBuf,
    opts: DirOptions,
    meta: Meta,
    /// The open file while anyone (a connection or the cache) holds it.
    open: Mutex<Weak<FileBackend>>,
    cache: Arc<IdleCache>,
}

impl LazyFile {
    fn new(path: PathBuf, opts: DirOptions, cache: Arc<IdleCache>) -> io::Result<Self> {
        let m = fs::metadata(&path)?;
        let block_device = m.file_type().is_block_device();
        let size = if block_device {
            // Only an open device knows its size; opened and closed here.
            FileBackend::open(&path, true, false)?.size
        } else {
            m.len()
        };
        let readonly = opts.readonly || !writable(&path);
        let dev = if block_device { m.rdev() } else { m.dev() };
        let meta = Meta {
            size,
            readonly,
            rotational: rotational::is_rotational(Path::new("/sys"), dev),
            direct: opts.cache_none && size.is_multiple_of(ALIGN),
        };
        Ok(Self {
            path,
            opts,
            meta,
            open: Mutex::new(Weak::new()),
            cache,
        })
    }

    /// The open file, opening it if nobody holds it.
    fn acquire(&self) -> io::Result<Arc<FileBackend>> {
        let mut slot = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = slot.upgrade() {
            return Ok(f);
        }
        let f = open_or_read_only(&self.path, self.meta.readonly, self.opts.cache_none)?;
        if let Some(a) = self.opts.advice {
            f.advise(a)?;
        }
        let f = Arc::new(f);
        *slot = Arc::downgrade(&f);
        drop(slot);
        self.cache.touch(&f);
        Ok(f)
    }

    /// The open file if someone holds it (never opens: for the event
    /// loop's non-blocking read).
    fn held(&self) -> Option<Arc<FileBackend>> {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade()
    }

    /// True when a descriptor is open for this file (tests).
    #[doc(hidden)]
    pub fn is_open(&self) -> bool {
        self.held().is_some()
    }
}

/// Before dropping a reference to an open file: the last one syncs it, so that
/// what clients wrote is as durable as with a file open for the server's
/// life (flushed at shutdown).
fn close(f: &Arc<FileBackend>) {
    if Arc::strong_count(f) == 1
        && !f.readonly
        && let Err(e) = f.flush()
    {
        log::warn!("file: {}: flush before closing: {e}", f.path.display());
    }
}

/// `access(W_OK)`: refused for permissions, an immutable file or a
/// read-only filesystem, the cases where nbdkit serves read-only.
fn writable(path: &Path) -> bool {
    match rustix::fs::access(path, Access::WRITE_OK) {
        Ok(()) => true,
        Err(e) => {
            log::warn!(
                "file: {}: cannot open for writing ({}); serving it read-only",
                path.display(),
                crate::plain_error(&e.into())
            );
            false
        }
    }
}

/// A connection's handle: the open file, shared with the export's other
/// clients; dropping it (the connection's close) leaves the file to the
/// idle cache.
struct InUse(Arc<FileBackend>);

impl Drop for InUse {
    fn drop(&mut self) {
        // A file the cache no longer holds closes with its last client.
        close(&self.0);
    }
}

/// Both [`LazyFile`] (through a briefly acquired file, for filters that
/// call the export directly) and [`InUse`] forward to the open file.
macro_rules! forward_io {
    ($get:expr) => {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            $get(self)?.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
            $get(self)?.write_at(offset, data, fua)
        }
        fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
            $get(self)?.trim(offset, len, fua)
        }
        fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
            $get(self)?.write_zeroes(offset, len, flags)
        }
        fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
            $get(self)?.cache(offset, len)
        }
        fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
            $get(self)?.extents(offset, len, out)
        }
    };
}

impl Backend for InUse {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn caps(&self) -> Caps {
        self.0.caps()
    }
    fn block_size(&self) -> Option<BlockSize> {
        self.0.block_size()
    }
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        self.0.try_read_cached(offset, buf)
    }
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        self.0.try_write_cached(offset, data)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
    forward_io!(|s: &Self| io::Result::Ok(Arc::clone(&s.0)));
}

impl Backend for LazyFile {
    fn size(&self) -> u64 {
        self.meta.size
    }

    fn caps(&self) -> Caps {
        let mut c = Caps::FLUSH | Caps::EXTENTS | Caps::CACHE | Caps::MULTI_CONN;
        if self.meta.rotational {
            c |= Caps::ROTATIONAL;
        }
        if self.meta.readonly {
            c | Caps::READ_ONLY
        } else {
            c | Caps::FUA | Caps::TRIM | Caps::WRITE_ZEROES | Caps::FAST_ZERO
        }
    }

    fn block_size(&self) -> Option<BlockSize> {
        self.meta.direct.then(|| BlockSize {
            preferred: ALIGN as u32,
            ..BlockSize::default()
        })
    }

    /// GO / EXPORT_NAME: the client's own handle on the shared open file.
    fn open(&self, _client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        Ok(Some(Arc::new(InUse(self.acquire()?))))
    }

    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        self.held().is_some_and(|f| f.try_read_cached(offset, buf))
    }

    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        self.held()
            .is_some_and(|f| f.try_write_cached(offset, data))
    }

    /// Only an open file has anything to flush (a closed one was synced
    /// when it closed); flushing at shutdown must not open every file.
    fn flush(&self) -> io::Result<()> {
        self.held().map_or(Ok(()), |f| f.flush())
    }

    forward_io!(LazyFile::acquire);
}

/// Every regular file in `dir` (following symbolic links), sorted by
/// name, as `(export name, export)` pairs for `nbdd file dir=DIR`; none is
/// opened yet. Names that are not UTF-8 cannot be export names and are
/// skipped with a warning.
///
/// # Errors
///
/// Those of reading the directory or a file's metadata.
pub fn dir_exports(dir: impl AsRef<Path>, opts: DirOptions) -> io::Result<Vec<(String, LazyFile)>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir.as_ref())? {
        let entry = entry?;
        // A dangling symlink is no file either.
        if !fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            continue;
        }
        match entry.file_name().into_string() {
            Ok(name) => names.push((name, entry.path())),
            Err(raw) => log::warn!("skipping non-UTF-8 file name {raw:?}"),
        }
    }
    names.sort();
    let cache = Arc::new(IdleCache {
        files: Mutex::new(VecDeque::new()),
        cap: idle_cap(),
    });
    names
        .into_iter()
        .map(|(name, path)| Ok((name, LazyFile::new(path, opts, Arc::clone(&cache))?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Peer;

    fn client() -> ClientInfo<'static> {
        ClientInfo {
            id: 1,
            peer: Peer::Unix,
            export_name: "",
            tls: false,
        }
    }

    fn dir_with(n: usize) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nbdd-lazy-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir(&d).unwrap();
        for i in 0..n {
            fs::write(d.join(format!("f{i:02}")), vec![i as u8; 512 * (i + 1)]).unwrap();
        }
        d
    }

    fn opts() -> DirOptions {
        DirOptions {
            readonly: false,
            cache_none: false,
            advice: None,
        }
    }

    #[test]
    fn nothing_is_open_until_a_client_selects_it() {
        let d = dir_with(3);
        let files = dir_exports(&d, opts()).unwrap();
        assert_eq!(files.len(), 3);
        assert!(files.iter().all(|(_, f)| !f.is_open()));
        assert_eq!(files[2].1.size(), 1536);
        let h = files[1].1.open(&client()).unwrap().unwrap();
        assert!(files[1].1.is_open() && !files[0].1.is_open());
        let mut buf = [0u8; 4];
        h.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [1; 4]);
        fs::remove_dir_all(&d).unwrap();
    }

    /// The cache's bound closes idle files, never one a client holds.
    #[test]
    fn the_idle_cache_is_bounded_and_spares_files_in_use() {
        let d = dir_with(4);
        let mut files = dir_exports(&d, opts()).unwrap();
        let cache = Arc::new(IdleCache {
            files: Mutex::new(VecDeque::new()),
            cap: 1,
        });
        for (_, f) in &mut files {
            f.cache = Arc::clone(&cache);
        }
        let held = files[0].1.open(&client()).unwrap().unwrap();
        for (_, f) in &files[1..] {
            drop(f.open(&client()).unwrap().unwrap());
        }
        // f00 is held by its client; of the idle ones only the last stays.
        let open: Vec<bool> = files.iter().map(|(_, f)| f.is_open()).collect();
        assert_eq!(open, [true, false, false, true]);
        let mut buf = [0u8; 2];
        held.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [0; 2]);
        drop(held);
        assert!(!files[0].1.is_open());
        // Direct calls (a filter above the export) open it on demand.
        files[2].1.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [2; 2]);
        fs::remove_dir_all(&d).unwrap();
    }
}
