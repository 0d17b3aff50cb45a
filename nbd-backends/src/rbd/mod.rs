//! A Ceph RBD image (`nbdd rbd pool/image`), through librbd.
//!
//! One image handle serves every connection. Event loops drive it
//! asynchronously ([`AsyncBackend`], `aio.rs`): each loop opens a queue with
//! its own eventfd, many requests are in flight, and librbd's completion
//! callbacks hand finished requests to the queue of the loop that sent
//! them. The synchronous [`Backend`] methods (used on the worker pool for
//! extents, resize and cache, and for everything when a filter wraps the
//! export) call librbd's blocking functions on the same handle.
//!
//! Semantics (docs/RBD.md): FLUSH is `rbd_flush` (librbd's cache acknowledges
//! writes before the OSDs do, so FUA is the write followed by a flush); TRIM
//! is a discard; WRITE_ZEROES is `rbd_write_zeroes`, thick-provisioned for
//! NO_HOLE; extents come from `rbd_diff_iterate2` at object granularity;
//! MULTI_CONN is advertised because every connection shares the one handle,
//! so a flush on any connection covers writes completed on all of them.

mod aio;
#[allow(unsafe_code)]
mod ffi;
pub mod params;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::util::{check_read, check_write, out_of_range, push_extent, read_only};
use crate::{AsyncBackend, Backend, BlockSize, Caps, Extent, ExtentFlags, ZeroFlags};
use ffi::{Cluster, Fail, Image, Location};
pub use params::Params;

/// Most objects one extents call looks at: without the fast-diff feature
/// librbd lists each object's snapshots with a round trip to its OSD.
const EXTENT_OBJECTS: u64 = 1024;
/// Most allocated ranges collected per extents call.
const EXTENT_RANGES: usize = 16 * 1024;
/// Largest single librbd discard (`rbd_discard` takes an `int` length).
const DISCARD_CHUNK: u64 = 1 << 30;
/// Buffer for CACHE's prefetching reads.
const CACHE_CHUNK: u64 = 4 << 20;
/// Most bytes one CACHE prefetches: it is a hint, and a tiny request must
/// not make the server read a whole image from the cluster.
const CACHE_MAX: u64 = 64 << 20;
/// The largest request payload the driver accepts.
const MAX_PAYLOAD: u32 = 32 << 20;

/// An open RBD image.
pub struct RbdBackend {
    inner: Arc<Inner>,
}

/// What the backend and its event-loop queues (aio.rs) share.
struct Inner {
    image: Image,
    spec: String,
    read_only: bool,
    object_size: u64,
    size: AtomicU64,
    /// Unix second of the last warning logged (errors are rate-limited).
    warned: AtomicU64,
}

impl RbdBackend {
    /// Connect to the cluster and open the image (read-only for `-r`,
    /// under `cow`, or for a snapshot).
    ///
    /// # Errors
    ///
    /// One line saying what failed: the conf file, the connection (with the
    /// timeout that ran out), the pool, the image.
    pub fn open(p: &Params, read_only: bool) -> Result<Self, String> {
        let spec = p.spec();
        let mut settings = vec![
            ("client_mount_timeout", p.connect_timeout.to_string()),
            // Asynchronous writes from our buffers without librbd copying
            // them: the buffer stays ours, untouched, until librbd calls
            // back, and librbd delays that callback until it no longer
            // references the memory. Our one copy of a WRITE's payload is
            // from the socket buffer into the job's buffer.
            ("rbd_disable_zero_copy_writes", "false".to_owned()),
        ];
        if p.timeout > 0 {
            settings.push(("rados_osd_op_timeout", p.timeout.to_string()));
        }
        if let Some(k) = &p.keyring {
            settings.push(("keyring", k.clone()));
        }
        let cluster = Cluster::connect(&p.id, p.conf.as_deref(), &settings)
            .map_err(|f| connect_error(p, f))?;
        let at = Location {
            pool: &p.pool,
            namespace: &p.namespace,
            image: &p.image,
            snap: p.snap.as_deref(),
        };
        let image = Image::open(&cluster, &at, read_only).map_err(|f| open_error(p, f))?;
        Self::new(image, spec, read_only || p.snap.is_some())
    }

    fn new(image: Image, spec: String, read_only: bool) -> Result<Self, String> {
        let fail = |f: Fail| format!("rbd: {spec}: {}: {}", f.call, errno_text(f.errno));
        let stat = image.stat().map_err(fail)?;
        let exclusive = image.has_exclusive_lock().map_err(fail)?;
        log::info!(
            "rbd: {spec}: {} bytes, {}-byte objects{}{}",
            stat.size,
            stat.object_size,
            if exclusive { ", exclusive-lock" } else { "" },
            if read_only { ", read-only" } else { "" },
        );
        let inner = Inner {
            image,
            spec,
            read_only,
            object_size: stat.object_size.max(512),
            size: AtomicU64::new(stat.size),
            warned: AtomicU64::new(0),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// `pool/[namespace/]image[@snap]`.
    pub fn spec(&self) -> &str {
        &self.inner.spec
    }

    /// The extent list for `[offset, end)` from the allocated ranges.
    fn fill_extents(&self, offset: u64, end: u64, out: &mut [Extent]) -> io::Result<usize> {
        let alloc = self
            .inner
            .image
            .allocated(offset, end - offset, EXTENT_RANGES)
            .map_err(|f| self.inner.error(f))?;
        let end = match (alloc.truncated, alloc.ranges.last()) {
            // Past the last range collected nothing is known.
            (true, Some(&(o, l))) => end.min(o.saturating_add(l)),
            _ => end,
        };
        let hole = ExtentFlags::HOLE | ExtentFlags::ZERO;
        let (mut n, mut pos) = (0, offset);
        for &(o, l) in &alloc.ranges {
            let (start, stop) = (o.max(pos), o.saturating_add(l).min(end));
            if stop <= start {
                continue;
            }
            if !push_extent(out, &mut n, start - pos, hole)
                || !push_extent(out, &mut n, stop - start, ExtentFlags::empty())
            {
                return Ok(n);
            }
            pos = stop;
        }
        push_extent(out, &mut n, end.saturating_sub(pos), hole);
        Ok(n)
    }
}

impl Inner {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// A cluster error as an `io::Error` naming the image (the kind follows
    /// the errno, so the driver maps it to the matching NBD error), logged
    /// at most once a second.
    fn error(&self, f: Fail) -> io::Error {
        let os = io::Error::from_raw_os_error(f.errno);
        let msg = format!("rbd {}: {}: {os}", self.spec, f.call);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.warned.swap(now, Ordering::Relaxed) == now {
            log::debug!("{msg}");
        } else {
            log::warn!("{msg}");
        }
        io::Error::new(os.kind(), msg)
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(read_only())
        } else {
            Ok(())
        }
    }
}

/// `strerror`-style text for an errno.
fn errno_text(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

fn connect_error(p: &Params, f: Fail) -> String {
    let conf = p
        .conf
        .as_deref()
        .unwrap_or("(default search: $CEPH_CONF, /etc/ceph/ceph.conf)");
    match (f.call, f.errno) {
        ("rados_conf_read_file", _) if p.conf.is_none() => {
            "rbd: no ceph.conf found in the default places; give conf=PATH".to_owned()
        }
        ("rados_conf_read_file", e) => format!("rbd: conf={conf}: {}", errno_text(e)),
        ("rados_connect", libc::ETIMEDOUT) => format!(
            "rbd: no monitor of the cluster in conf={conf} answered within connect-timeout={} s; \
             is the cluster up?",
            p.connect_timeout
        ),
        ("rados_connect", e @ (libc::EACCES | libc::EPERM | libc::ENOENT)) => format!(
            "rbd: the cluster refused client.{} ({}); check id= and keyring=",
            p.id,
            errno_text(e)
        ),
        (call, e) => format!(
            "rbd: connecting with conf={conf}: {call}: {}",
            errno_text(e)
        ),
    }
}

fn open_error(p: &Params, f: Fail) -> String {
    match (f.call, f.errno) {
        ("rados_ioctx_create", libc::ENOENT) => format!("rbd: pool '{}' does not exist", p.pool),
        ("rbd_open", libc::ENOENT) => match &p.snap {
            Some(_) => format!("rbd: {}: no such image or snapshot", p.spec()),
            None => format!("rbd: {}: no such image", p.spec()),
        },
        (call, e) => format!("rbd: {}: {call}: {}", p.spec(), errno_text(e)),
    }
}

impl Backend for RbdBackend {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn caps(&self) -> Caps {
        let base = Caps::FLUSH | Caps::EXTENTS | Caps::CACHE | Caps::MULTI_CONN;
        if self.inner.read_only {
            base | Caps::READ_ONLY
        } else {
            base | Caps::FUA | Caps::TRIM | Caps::WRITE_ZEROES | Caps::FAST_ZERO | Caps::RESIZE
        }
    }

    /// Byte-granular I/O; objects are where RBD allocates, discards and
    /// reads ahead, so the object size is the preferred block size.
    fn block_size(&self) -> Option<BlockSize> {
        let preferred = self.inner.object_size.clamp(4096, u64::from(MAX_PAYLOAD));
        Some(BlockSize {
            minimum: 1,
            preferred: u32::try_from(preferred).unwrap_or(MAX_PAYLOAD),
            maximum: MAX_PAYLOAD,
        })
    }

    fn as_async(&self) -> Option<&dyn AsyncBackend> {
        Some(self)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_read(offset, buf.len() as u64, self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        self.inner
            .image
            .read(offset, buf, false)
            .map_err(|f| self.inner.error(f))
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.inner.writable()?;
        check_write(offset, data.len() as u64, self.size())?;
        if !data.is_empty() {
            self.inner
                .image
                .write(offset, data)
                .map_err(|f| self.inner.error(f))?;
        }
        if fua { self.flush() } else { Ok(()) }
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.image.flush().map_err(|f| self.inner.error(f))
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.inner.writable()?;
        let end = check_read(offset, len, self.size())?;
        let mut pos = offset;
        while pos < end {
            let n = (end - pos).min(DISCARD_CHUNK);
            self.inner
                .image
                .discard(pos, n)
                .map_err(|f| self.inner.error(f))?;
            pos += n;
        }
        if fua { self.flush() } else { Ok(()) }
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.inner.writable()?;
        check_write(offset, len, self.size())?;
        let thick = !flags.contains(ZeroFlags::MAY_TRIM);
        if flags.contains(ZeroFlags::FAST) && thick {
            // A thick zero is a server-side write-same: not faster than
            // writing the zeroes, so a FAST request fails (checklist 92).
            return Err(io::ErrorKind::Unsupported.into());
        }
        if len > 0 {
            let len = usize::try_from(len).map_err(|_| out_of_range())?;
            self.inner
                .image
                .write_zeroes(offset, len, thick)
                .map_err(|f| self.inner.error(f))?;
        }
        if flags.contains(ZeroFlags::FUA) {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Read the range (its first 64 MiB) with FADVISE_WILLNEED, so the
    /// OSDs keep it cached.
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = check_read(offset, len, self.size())?.min(offset.saturating_add(CACHE_MAX));
        let mut buf = vec![0u8; len.min(CACHE_CHUNK) as usize];
        let mut pos = offset;
        while pos < end {
            let n = (end - pos).min(CACHE_CHUNK) as usize;
            self.inner
                .image
                .read(pos, &mut buf[..n], true)
                .map_err(|f| self.inner.error(f))?;
            pos += n as u64;
        }
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        let size = self.size();
        if offset > size {
            return Err(out_of_range());
        }
        let window = self.inner.object_size.saturating_mul(EXTENT_OBJECTS);
        let end = offset.saturating_add(len.min(window)).min(size);
        if end == offset || out.is_empty() {
            return Ok(0);
        }
        self.fill_extents(offset, end, out)
    }

    fn resize(&self, new_size: u64) -> io::Result<()> {
        self.inner.writable()?;
        if new_size > crate::MAX_SIZE {
            return Err(out_of_range());
        }
        self.inner
            .image
            .resize(new_size)
            .map_err(|f| self.inner.error(f))?;
        let size = self.inner.image.size().map_err(|f| self.inner.error(f))?;
        self.inner.size.store(size, Ordering::Relaxed);
        Ok(())
    }

    fn description(&self) -> Option<String> {
        Some(format!(
            "RBD image {}, {}-byte objects",
            self.inner.spec, self.inner.object_size
        ))
    }
}
