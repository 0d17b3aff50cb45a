//! The only unsafe code in nbd-backends: librados/librbd through their C
//! API ([`sys`]), wrapped in owning types whose methods are safe to call.
//!
//! Ownership: an [`Image`] owns its `rbd_image_t` and I/O context and
//! holds the [`Cluster`] (`rados_t`) in an `Arc`, so it is closed before
//! the context is destroyed and the cluster shut down last, whatever order
//! values are dropped in. Buffers handed to asynchronous calls are owned by
//! their request until librbd calls back (`aio.rs`).

mod aio;
mod sys;

use std::ffi::{CString, c_int, c_void};
use std::sync::{Arc, Mutex, PoisonError};

pub use aio::{AioKind, Queue};

/// A failed librados/librbd call: what we were doing and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fail {
    /// The call, for messages ("rados_connect").
    pub call: &'static str,
    /// Positive errno.
    pub errno: i32,
}

/// Map a C return value (negative errno on failure) to a `Result`.
fn check(call: &'static str, r: isize) -> Result<usize, Fail> {
    usize::try_from(r).map_err(|_| Fail {
        call,
        errno: i32::try_from(-r).unwrap_or(libc::EIO),
    })
}

fn cstr(call: &'static str, s: &str) -> Result<CString, Fail> {
    CString::new(s).map_err(|_| Fail {
        call,
        errno: libc::EINVAL,
    })
}

/// A connected cluster handle (`rados_t`).
pub struct Cluster(sys::RadosT);

// SAFETY: librados cluster handles may be used from any thread and
// concurrently (the C API is thread-safe; librados serialises internally).
unsafe impl Send for Cluster {}
// SAFETY: as above: every call on a shared handle is internally locked.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// `rados_create(id)`, read `conf` (or Ceph's default search path when
    /// `None`), apply `settings` (`rados_conf_set`, after the file so they
    /// win), then `rados_connect`.
    ///
    /// # Errors
    ///
    /// The first call that failed.
    pub fn connect(
        id: &str,
        conf: Option<&str>,
        settings: &[(&str, String)],
    ) -> Result<Arc<Self>, Fail> {
        let id = cstr("rados_create", id)?;
        let mut handle: sys::RadosT = std::ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer; `id` is a NUL-terminated
        // string that outlives the call (librados copies it).
        let r = unsafe { sys::rados_create(&raw mut handle, id.as_ptr()) };
        check("rados_create", r as isize)?;
        // From here on `Drop` shuts the handle down on every error path.
        let cluster = Self(handle);
        let conf = conf.map(|c| cstr("rados_conf_read_file", c)).transpose()?;
        let path = conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: the handle is live and not yet connected; `path` is NULL
        // (search the default locations) or a NUL-terminated path.
        let r = unsafe { sys::rados_conf_read_file(cluster.0, path) };
        check("rados_conf_read_file", r as isize)?;
        for (key, value) in settings {
            let (k, v) = (cstr("rados_conf_set", key)?, cstr("rados_conf_set", value)?);
            // SAFETY: live handle; both strings are NUL-terminated and
            // outlive the call (librados copies them).
            let r = unsafe { sys::rados_conf_set(cluster.0, k.as_ptr(), v.as_ptr()) };
            check("rados_conf_set", r as isize)?;
        }
        // SAFETY: live, configured, unconnected handle. Blocks for at most
        // `client_mount_timeout`.
        let r = unsafe { sys::rados_connect(cluster.0) };
        check("rados_connect", r as isize)?;
        Ok(Arc::new(cluster))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle came from rados_create and is shut down once;
        // every I/O context and image using it holds an `Arc` to `self`,
        // so none is left.
        unsafe { sys::rados_shutdown(self.0) }
    }
}

/// What [`Image::stat`] reports.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// Size in bytes.
    pub size: u64,
    /// Object size in bytes (`1 << order`).
    pub object_size: u64,
}

/// An open RBD image with its I/O context.
pub struct Image {
    image: sys::ImageT,
    ioctx: sys::IoCtxT,
    /// Asynchronous requests not yet called back (aio.rs).
    inflight: Arc<aio::InFlight>,
    _cluster: Arc<Cluster>,
}

// SAFETY: librbd image handles are thread-safe: the image context locks its
// own state, and concurrent I/O on one handle from several threads is
// supported (rbd-nbd and qemu do it). Our own shared state (`inflight`) is
// behind a mutex.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

/// Where to find an image.
pub struct Location<'a> {
    /// Pool name.
    pub pool: &'a str,
    /// RADOS namespace ("" for the default one).
    pub namespace: &'a str,
    /// Image name.
    pub image: &'a str,
    /// Snapshot name, opened read-only.
    pub snap: Option<&'a str>,
}

impl Image {
    /// Open `at` on `cluster`, read-only if asked (always for a snapshot).
    ///
    /// # Errors
    ///
    /// `rados_ioctx_create` (no such pool) or `rbd_open` (no such image or
    /// snapshot, no permission).
    pub fn open(cluster: &Arc<Cluster>, at: &Location<'_>, read_only: bool) -> Result<Self, Fail> {
        let pool = cstr("rados_ioctx_create", at.pool)?;
        let ns = cstr("rados_ioctx_set_namespace", at.namespace)?;
        let name = cstr("rbd_open", at.image)?;
        let snap = at.snap.map(|s| cstr("rbd_open", s)).transpose()?;
        let mut ioctx: sys::IoCtxT = std::ptr::null_mut();
        // SAFETY: connected cluster handle, NUL-terminated pool name, valid
        // out-pointer.
        let r = unsafe { sys::rados_ioctx_create(cluster.0, pool.as_ptr(), &raw mut ioctx) };
        check("rados_ioctx_create", r as isize)?;
        // SAFETY: the context was just created; librados copies the name.
        unsafe { sys::rados_ioctx_set_namespace(ioctx, ns.as_ptr()) };
        let mut image: sys::ImageT = std::ptr::null_mut();
        let snap_ptr = snap.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let open = if read_only || at.snap.is_some() {
            sys::rbd_open_read_only
        } else {
            sys::rbd_open
        };
        // SAFETY: live I/O context, NUL-terminated names (snap may be NULL
        // for the head), valid out-pointer.
        let r = unsafe { open(ioctx, name.as_ptr(), &raw mut image, snap_ptr) };
        if let Err(e) = check("rbd_open", r as isize) {
            // SAFETY: the context is ours and nothing else uses it.
            unsafe { sys::rados_ioctx_destroy(ioctx) };
            return Err(e);
        }
        Ok(Self {
            image,
            ioctx,
            inflight: Arc::default(),
            _cluster: Arc::clone(cluster),
        })
    }

    /// Size and object size.
    ///
    /// # Errors
    ///
    /// `rbd_stat`'s.
    pub fn stat(&self) -> Result<Stat, Fail> {
        let mut info = std::mem::MaybeUninit::<sys::ImageInfo>::zeroed();
        let len = std::mem::size_of::<sys::ImageInfo>();
        // SAFETY: open image; `info` points at `len` writable bytes.
        let r = unsafe { sys::rbd_stat(self.image, info.as_mut_ptr(), len) };
        check("rbd_stat", r as isize)?;
        // SAFETY: zero-initialised plain data, filled in by rbd_stat.
        let info = unsafe { info.assume_init() };
        Ok(Stat {
            size: info.size,
            object_size: info.obj_size,
        })
    }

    /// The current size (librbd refreshes it if the header changed).
    ///
    /// # Errors
    ///
    /// `rbd_get_size`'s.
    pub fn size(&self) -> Result<u64, Fail> {
        let mut size = 0u64;
        // SAFETY: open image, valid out-pointer.
        let r = unsafe { sys::rbd_get_size(self.image, &raw mut size) };
        check("rbd_get_size", r as isize).map(|_| size)
    }

    /// True when the image has the exclusive-lock feature.
    ///
    /// # Errors
    ///
    /// `rbd_get_features`'s.
    pub fn has_exclusive_lock(&self) -> Result<bool, Fail> {
        let mut features = 0u64;
        // SAFETY: open image, valid out-pointer.
        let r = unsafe { sys::rbd_get_features(self.image, &raw mut features) };
        check("rbd_get_features", r as isize)?;
        Ok(features & sys::FEATURE_EXCLUSIVE_LOCK != 0)
    }

    /// Fill `buf` from `off`; `willneed` asks the OSDs to keep it cached.
    ///
    /// # Errors
    ///
    /// `rbd_read2`'s; a short read (the image shrank under us) is EIO.
    pub fn read(&self, off: u64, buf: &mut [u8], willneed: bool) -> Result<(), Fail> {
        let flags = if willneed {
            sys::OP_FADVISE_WILLNEED
        } else {
            0
        };
        // SAFETY: open image; `buf` is valid for `buf.len()` writable bytes
        // for the whole (synchronous) call.
        let r =
            unsafe { sys::rbd_read2(self.image, off, buf.len(), buf.as_mut_ptr().cast(), flags) };
        match check("rbd_read", r)? {
            n if n == buf.len() => Ok(()),
            _ => Err(Fail {
                call: "rbd_read",
                errno: libc::EIO,
            }),
        }
    }

    /// Write `data` at `off`.
    ///
    /// # Errors
    ///
    /// `rbd_write2`'s.
    pub fn write(&self, off: u64, data: &[u8]) -> Result<(), Fail> {
        // SAFETY: open image; `data` is valid for the whole synchronous call.
        let r = unsafe { sys::rbd_write2(self.image, off, data.len(), data.as_ptr().cast(), 0) };
        check("rbd_write", r).map(drop)
    }

    /// Discard `[off, off + len)`; `len` must fit an `int` (librbd's limit).
    ///
    /// # Errors
    ///
    /// `rbd_discard`'s.
    pub fn discard(&self, off: u64, len: u64) -> Result<(), Fail> {
        // SAFETY: open image; plain integers.
        let r = unsafe { sys::rbd_discard(self.image, off, len) };
        check("rbd_discard", r as isize).map(drop)
    }

    /// Zero `[off, off + len)`, keeping it allocated when `thick`.
    ///
    /// # Errors
    ///
    /// `rbd_write_zeroes`'s.
    pub fn write_zeroes(&self, off: u64, len: usize, thick: bool) -> Result<(), Fail> {
        let flags = if thick { sys::WRITE_ZEROES_THICK } else { 0 };
        // SAFETY: open image; plain integers.
        let r = unsafe { sys::rbd_write_zeroes(self.image, off, len, flags, 0) };
        check("rbd_write_zeroes", r).map(drop)
    }

    /// Make every completed write durable.
    ///
    /// # Errors
    ///
    /// `rbd_flush`'s.
    pub fn flush(&self) -> Result<(), Fail> {
        // SAFETY: open image.
        let r = unsafe { sys::rbd_flush(self.image) };
        check("rbd_flush", r as isize).map(drop)
    }

    /// Grow or shrink the image.
    ///
    /// # Errors
    ///
    /// `rbd_resize`'s (EROFS on a snapshot).
    pub fn resize(&self, size: u64) -> Result<(), Fail> {
        // SAFETY: open image.
        let r = unsafe { sys::rbd_resize(self.image, size) };
        check("rbd_resize", r as isize).map(drop)
    }

    /// The allocated ranges in `[off, off + len)` as `(offset, length)`,
    /// sorted, at object granularity (`whole_object`), parents included;
    /// at most `cap` of them (`truncated` says if more were cut off).
    ///
    /// # Errors
    ///
    /// `rbd_diff_iterate2`'s.
    pub fn allocated(&self, off: u64, len: u64, cap: usize) -> Result<Allocated, Fail> {
        let state = DiffState {
            ranges: Mutex::new(Vec::new()),
            cap,
        };
        let arg = std::ptr::from_ref(&state).cast_mut().cast::<c_void>();
        // SAFETY: open image; NULL from-snapshot means "since creation";
        // `on_diff` only reads `arg` as the `DiffState` above, which lives
        // until this synchronous call returns.
        let r = unsafe {
            sys::rbd_diff_iterate2(self.image, std::ptr::null(), off, len, 1, 1, on_diff, arg)
        };
        let truncated = r == -libc::ECANCELED;
        if !truncated {
            check("rbd_diff_iterate2", r as isize)?;
        }
        let mut ranges = state
            .ranges
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        ranges.sort_unstable();
        Ok(Allocated { ranges, truncated })
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // Every callback has run (so no buffer is still lent to librbd);
        // rbd_close then waits for librbd's own tail of those completions.
        self.inflight.wait_idle();
        // SAFETY: nothing of ours is in flight; the image and context are
        // closed once, image first.
        unsafe {
            sys::rbd_close(self.image);
            sys::rados_ioctx_destroy(self.ioctx);
        }
    }
}

/// Result of [`Image::allocated`].
pub struct Allocated {
    /// `(offset, length)` of allocated ranges, sorted.
    pub ranges: Vec<(u64, u64)>,
    /// Iteration stopped at the cap; ranges after the last one are unknown.
    pub truncated: bool,
}

struct DiffState {
    ranges: Mutex<Vec<(u64, u64)>>,
    cap: usize,
}

/// `rbd_diff_iterate2` callback. librbd may call it from its own threads,
/// hence the mutex.
unsafe extern "C" fn on_diff(off: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `DiffState` that `Image::allocated` passed and
    // keeps alive until rbd_diff_iterate2 returns; only shared access.
    let state = unsafe { &*arg.cast::<DiffState>() };
    let mut ranges = state.ranges.lock().unwrap_or_else(PoisonError::into_inner);
    if exists == 0 {
        // Only reported against a from-snapshot; we pass none.
        return 0;
    }
    if ranges.len() >= state.cap {
        return -libc::ECANCELED;
    }
    ranges.push((off, len as u64));
    0
}
