//! The librados/librbd C functions the backend calls, declared by hand from
//! Debian 12's headers (`rados/librados.h`, `rbd/librbd.h`, librbd API
//! 1.16, Ceph 16.2 "pacific"). Every one of them exists since at least
//! librbd 1.12 (Ceph 14), so newer releases link too. Handles are opaque
//! `void *`; return values are 0 or a byte count on success and a negative
//! errno on failure.

use std::ffi::{c_char, c_int, c_void};

pub type RadosT = *mut c_void;
pub type IoCtxT = *mut c_void;
pub type ImageT = *mut c_void;
pub type CompletionT = *mut c_void;
/// `rbd_callback_t`: runs on a librbd thread when a request completes.
pub type Callback = Option<unsafe extern "C" fn(CompletionT, *mut c_void)>;
/// The `rbd_diff_iterate2` callback: (offset, length, exists, arg).
pub type DiffCallback = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// `rbd_image_info_t`.
#[repr(C)]
pub struct ImageInfo {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: c_int,
    pub block_name_prefix: [c_char; 24],
    pub parent_pool: i64,
    pub parent_name: [c_char; 96],
}

/// `RBD_FEATURE_EXCLUSIVE_LOCK`.
pub const FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
/// `RBD_WRITE_ZEROES_FLAG_THICK_PROVISION`: zeroes stay allocated (NBD's
/// NO_HOLE); without it librbd discards whole objects and zeroes the rest.
pub const WRITE_ZEROES_THICK: c_int = 1;
/// `LIBRADOS_OP_FLAG_FADVISE_WILLNEED`: the OSD keeps what it read cached.
pub const OP_FADVISE_WILLNEED: c_int = 0x10;

#[link(name = "rados")]
unsafe extern "C" {
    pub fn rados_create(cluster: *mut RadosT, id: *const c_char) -> c_int;
    pub fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
    pub fn rados_conf_set(cluster: RadosT, option: *const c_char, value: *const c_char) -> c_int;
    pub fn rados_connect(cluster: RadosT) -> c_int;
    pub fn rados_shutdown(cluster: RadosT);
    pub fn rados_ioctx_create(cluster: RadosT, pool: *const c_char, io: *mut IoCtxT) -> c_int;
    pub fn rados_ioctx_destroy(io: IoCtxT);
    pub fn rados_ioctx_set_namespace(io: IoCtxT, nspace: *const c_char);
}

#[link(name = "rbd")]
unsafe extern "C" {
    pub fn rbd_open(
        io: IoCtxT,
        name: *const c_char,
        image: *mut ImageT,
        snap: *const c_char,
    ) -> c_int;
    pub fn rbd_open_read_only(
        io: IoCtxT,
        name: *const c_char,
        image: *mut ImageT,
        snap: *const c_char,
    ) -> c_int;
    pub fn rbd_close(image: ImageT) -> c_int;
    pub fn rbd_stat(image: ImageT, info: *mut ImageInfo, infosize: usize) -> c_int;
    pub fn rbd_get_size(image: ImageT, size: *mut u64) -> c_int;
    pub fn rbd_get_features(image: ImageT, features: *mut u64) -> c_int;
    pub fn rbd_resize(image: ImageT, size: u64) -> c_int;

    pub fn rbd_read2(image: ImageT, ofs: u64, len: usize, buf: *mut c_char, flags: c_int) -> isize;
    pub fn rbd_write2(
        image: ImageT,
        ofs: u64,
        len: usize,
        buf: *const c_char,
        flags: c_int,
    ) -> isize;
    pub fn rbd_discard(image: ImageT, ofs: u64, len: u64) -> c_int;
    pub fn rbd_write_zeroes(
        image: ImageT,
        ofs: u64,
        len: usize,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> isize;
    pub fn rbd_flush(image: ImageT) -> c_int;
    pub fn rbd_diff_iterate2(
        image: ImageT,
        fromsnap: *const c_char,
        ofs: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: DiffCallback,
        arg: *mut c_void,
    ) -> c_int;

    pub fn rbd_aio_create_completion(arg: *mut c_void, cb: Callback, c: *mut CompletionT) -> c_int;
    pub fn rbd_aio_release(c: CompletionT);
    pub fn rbd_aio_get_return_value(c: CompletionT) -> isize;

    pub fn rbd_aio_read2(
        image: ImageT,
        off: u64,
        len: usize,
        buf: *mut c_char,
        c: CompletionT,
        flags: c_int,
    ) -> c_int;
    pub fn rbd_aio_write2(
        image: ImageT,
        off: u64,
        len: usize,
        buf: *const c_char,
        c: CompletionT,
        flags: c_int,
    ) -> c_int;
    pub fn rbd_aio_discard(image: ImageT, off: u64, len: u64, c: CompletionT) -> c_int;
    pub fn rbd_aio_write_zeroes(
        image: ImageT,
        off: u64,
        len: usize,
        c: CompletionT,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> c_int;
    pub fn rbd_aio_flush(image: ImageT, c: CompletionT) -> c_int;
}
