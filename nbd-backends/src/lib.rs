//! Storage backends for nbdd.
//!
//! A [`Backend`] is a block store that knows nothing of the NBD wire: it has a
//! size, a set of [`Caps`], optional [`BlockSize`] constraints, and the
//! operations a block device needs. Errors are [`std::io::Error`]; the driver
//! alone maps them to NBD error numbers.
//!
//! Every method takes `&self`: one backend value is shared (behind an `Arc`)
//! by every connection to the export and, for slow backends, by the driver's
//! worker threads. How a backend runs is explicit ([`Backend::execution`]):
//! backends that answer from memory are [`Execution::Inline`], so the driver
//! calls them on the event-loop thread at no extra cost; the others are
//! [`Execution::Blocking`] and called from a small worker pool so a slow disk
//! never stalls other connections.
//!
//! Per-connection state (nbdkit's `open`/`close`, `preconnect`) goes through
//! [`Backend::preconnect`] and [`Backend::open`]: a backend or filter may
//! refuse a client, or hand each connection its own handle (a fresh disk per
//! client, a per-client upstream connection); dropping the handle is the
//! connection's close.

// Unsafe code is forbidden, except with the `rbd` feature, whose FFI
// module (rbd/ffi) is the one place allowed to hold it (Cargo.toml sets the
// crate-wide level to deny for that reason).
#![cfg_attr(not(feature = "rbd"), forbid(unsafe_code))]
#![cfg_attr(feature = "rbd", deny(unsafe_code))]

use std::io;
use std::sync::Arc;

pub mod aio;
mod catalog;
#[cfg(feature = "curl")]
mod curl;
mod data;
mod export;
mod file;
pub mod filters;
mod full;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod lent;
pub mod lifecycle;
mod make;
mod memory;
mod null;
mod pattern;
pub mod qcow2;
mod random;
#[cfg(feature = "rbd")]
pub mod rbd;
mod registry;
mod size;
mod sparse_random;
mod split;
#[cfg(feature = "ssh")]
mod ssh;
mod tmpdisk;
mod util;

pub use aio::{AioQueue, AsyncBackend};
pub use catalog::{PLUGINS, Param, Plugin, plugin, plugin_help};
pub use export::{Export, ExportPolicy, ExportSet, FixedSize};
pub use file::{DirOptions, FileBackend, LazyFile, dir_exports, open_or_read_only};
pub use full::{FullBackend, ZeroBackend};
pub use lent::{Page, Piece};
pub use memory::{MemoryBackend, PAGE_SIZE};
pub use null::NullBackend;
pub use pattern::PatternBackend;
pub use qcow2::{ImageBackend, ImageFormat, ImageOptions};
pub use random::RandomBackend;
#[cfg(feature = "rbd")]
pub use rbd::RbdBackend;
pub use registry::{
    BACKENDS, ExtBackend, ExtOpen, build, build_with_filters, build_with_filters_ext,
};
pub use size::{MAX_SIZE, parse_size};
pub use sparse_random::{MAX_SPARSE_RANDOM, SparseRandom};
pub use split::SplitBackend;
pub use tmpdisk::TmpDisk;
pub use util::plain_error;

bitflags::bitflags! {
    /// What a backend can do. The driver turns these into NBD transmission
    /// flags; a capability that is absent is never advertised.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Caps: u32 {
        /// The export refuses writes, trims and zeroes (EROFS/EPERM).
        const READ_ONLY = 1 << 0;
        /// `flush` makes earlier completed writes durable.
        const FLUSH = 1 << 1;
        /// Writes may be asked to be durable before they complete (FUA).
        const FUA = 1 << 2;
        /// `trim` may discard data.
        const TRIM = 1 << 3;
        /// `write_zeroes` is efficient (not only an emulated write).
        const WRITE_ZEROES = 1 << 4;
        /// `write_zeroes` with `fast` set can tell quickly whether it is fast.
        const FAST_ZERO = 1 << 5;
        /// `extents` reports real holes / zero ranges.
        const EXTENTS = 1 << 6;
        /// `cache` does something useful.
        const CACHE = 1 << 7;
        /// All connections see one coherent store (NBD_FLAG_CAN_MULTI_CONN).
        const MULTI_CONN = 1 << 8;
        /// The medium behaves like a rotating disk.
        const ROTATIONAL = 1 << 9;
        /// `resize` is supported.
        const RESIZE = 1 << 10;
        /// `allocation_depth` answers (qemu's `qemu:allocation-depth` meta
        /// context may be offered); absent, it returns `Unsupported`.
        const ALLOCATION_DEPTH = 1 << 11;
    }
}

bitflags::bitflags! {
    /// Options for [`Backend::write_zeroes`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ZeroFlags: u8 {
        /// The backend may deallocate the range (punch a hole) as long as it
        /// reads back as zeroes. Absent: the range must stay allocated
        /// (`NBD_CMD_FLAG_NO_HOLE`).
        const MAY_TRIM = 1 << 0;
        /// Fail at once with `ErrorKind::Unsupported` unless zeroing is faster
        /// than writing zeroes (`NBD_CMD_FLAG_FAST_ZERO`); leave data untouched then.
        const FAST = 1 << 1;
        /// The zeroes must be durable before returning (`NBD_CMD_FLAG_FUA`).
        const FUA = 1 << 2;
    }
}

bitflags::bitflags! {
    /// State of an extent, with the same bits as NBD's `base:allocation`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ExtentFlags: u32 {
        /// Not allocated in the backing store (`NBD_STATE_HOLE`).
        const HOLE = 1 << 0;
        /// Reads as zeroes (`NBD_STATE_ZERO`).
        const ZERO = 1 << 1;
    }
}

/// One run of bytes with the same allocation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extent {
    /// Length in bytes; never zero in a result.
    pub len: u64,
    /// Hole / zero state.
    pub flags: ExtentFlags,
}

/// One run of bytes at the same allocation depth, for qemu's
/// `qemu:allocation-depth` meta context (see [`Backend::allocation_depth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DepthExtent {
    /// Length in bytes; never zero in a result.
    pub len: u64,
    /// 0: allocated in no layer; 1: the top layer (the image itself, the
    /// cow overlay); 2: its backing image; n: n-1 layers down. This is the
    /// 32-bit value qemu-nbd sends for the context.
    pub depth: u32,
}

/// Block-size constraints (NBD_INFO_BLOCK_SIZE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Smallest addressable unit; a power of two, at most 64 KiB.
    pub minimum: u32,
    /// Smallest size that avoids read-modify-write; a power of two >= 512.
    pub preferred: u32,
    /// Largest payload accepted in one request.
    pub maximum: u32,
}

impl Default for BlockSize {
    /// The spec's defaults (proto.md "Block size constraints") with the
    /// 32 MiB maximum payload every server should accept.
    fn default() -> Self {
        Self {
            minimum: 1,
            preferred: 4096,
            maximum: 32 * 1024 * 1024,
        }
    }
}

/// Where the driver runs a backend's operations (see [`Backend::execution`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// Fast, memory-only: called on the event-loop thread.
    Inline,
    /// May block (disk, network): called on the driver's worker pool.
    Blocking,
}

/// The transport a client came over, for [`ClientInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// TCP, with the client's address.
    Tcp(std::net::SocketAddr),
    /// A Unix-domain socket.
    Unix,
    /// `AF_VSOCK`, with the client's context ID and port.
    Vsock {
        /// Context ID.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// Anything else (stdin with `-s`, a socket from systemd).
    Other,
}

/// Who is connecting, for [`Backend::preconnect`] and [`Backend::open`].
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo<'a> {
    /// Unique per connection for the life of the server.
    pub id: u64,
    /// Where the client came from.
    pub peer: Peer,
    /// The export name the client asked for ("" before negotiation).
    pub export_name: &'a str,
    /// TLS is active on the connection.
    pub tls: bool,
}

/// A block store. See the crate documentation for the threading contract.
///
/// Offsets and lengths passed by the driver are already validated against
/// [`Backend::size`]; implementations still return `InvalidInput` rather
/// than panic if they are not.
pub trait Backend: Send + Sync {
    /// Current size in bytes.
    fn size(&self) -> u64;
    /// What this backend can do.
    fn caps(&self) -> Caps;
    /// Block-size constraints; `None` means the protocol defaults.
    fn block_size(&self) -> Option<BlockSize> {
        None
    }
    /// Where the driver may call this backend: on the event loop
    /// ([`Execution::Inline`]: every operation completes quickly in memory)
    /// or on its worker pool ([`Execution::Blocking`], the default).
    fn execution(&self) -> Execution {
        Execution::Blocking
    }
    /// A client connected, before negotiation (nbdkit's `preconnect`): an
    /// error refuses it (the `ip` filter). Filters call their inner backend's.
    fn preconnect(&self, client: &ClientInfo<'_>) -> io::Result<()> {
        let _ = client;
        Ok(())
    }
    /// A client selected this export (NBD_OPT_GO / EXPORT_NAME): the handle
    /// its connection uses until it closes, or `None` for this shared value
    /// (the default). Dropping the handle is the connection's close. An error
    /// refuses the client. Filters that wrap a per-connection inner handle
    /// return themselves around it.
    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<std::sync::Arc<dyn Backend>>> {
        let _ = client;
        Ok(None)
    }
    /// True for a per-connection handle whose data is its own (tmpdisk's
    /// disk per client), false (the default) for one that shows the
    /// export's data (the `nbd` proxy's upstream connection per client, or
    /// any filter's copy over the shared value). Filters that keep data
    /// beside the layer below (cow's overlay, the cache) keep one per
    /// connection over handles of the first kind and share one over the
    /// second, as every connection then sees the same disk. Filters
    /// forward it.
    fn per_client_data(&self) -> bool {
        false
    }
    /// Fill `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Fill `buf` from `offset` only if that cannot block (the data is in
    /// the page cache): `true` when done, `false` to go the slow way
    /// ([`Backend::read_at`] on a worker). Lets a driver answer cached
    /// reads of a [`Execution::Blocking`] backend on its event loop,
    /// without the hand-off to a worker and back (at queue depth 1 that
    /// hand-off is most of a request's cost: futexes, an eventfd write, a
    /// second epoll_wait). The default never tries.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        let _ = (offset, buf);
        false
    }
    /// Write `data` at `offset` only if that cannot wait for a disk (the
    /// file lives in memory): `true` when all of it is stored, `false` to
    /// go the slow way ([`Backend::write_at`] on a worker), which may then
    /// store some of the same bytes again. The write counterpart of
    /// [`Backend::try_read_cached`], never asked for FUA writes (they wait
    /// for a flush by definition). The default never tries.
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        let _ = (offset, data);
        false
    }
    /// Zero-copy READ: append `[offset, offset + len)` to `out` as pieces
    /// of the backend's own memory, in order, which stay valid and
    /// unchanged however long the caller holds them (see [`lent`]).
    /// `None`: this backend cannot lend (use [`Backend::read_at`]); the
    /// default. Reserve [`lent::pieces_for`] in `out` first, or the push
    /// may allocate.
    fn read_lent(&self, offset: u64, len: usize, out: &mut Vec<Piece>) -> Option<io::Result<()>> {
        let _ = (offset, len, out);
        None
    }
    /// True when [`Backend::write_pages`] stores pages without copying
    /// them (the default: false, and it is never called).
    fn takes_pages(&self) -> bool {
        false
    }
    /// Zero-copy WRITE: store `pages` (each `Some`, [`lent::PAGE_SIZE`]
    /// bytes) at `offset`, a multiple of the page size, by taking them
    /// into the backend's own storage. A slot left `Some` holds a page
    /// the backend gave back (the one it replaced, or the caller's own if
    /// not kept), which the caller may reuse once nobody else holds it.
    /// Only called when [`Backend::takes_pages`] says so; the default is
    /// `Unsupported`.
    fn write_pages(
        &self,
        offset: u64,
        pages: &mut [Option<Arc<Page>>],
        fua: bool,
    ) -> io::Result<()> {
        let _ = (offset, pages, fua);
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Write `data` at `offset`; with `fua`, durably.
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    /// Discard a range (a hint; contents afterwards are unspecified).
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        let _ = (offset, len, fua);
        Ok(())
    }
    /// Make a range read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()>;
    /// Prefetch a range (a hint).
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Describe `[offset, offset + len)` as consecutive extents starting at
    /// `offset`, written into `out`; returns how many were written (at least
    /// one when `len > 0` and `out` is not empty). The extents may cover less
    /// than `len` but never more than the export.
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        // Default: everything is allocated data.
        let size = self.size();
        if offset > size {
            return Err(util::out_of_range());
        }
        let end = offset.saturating_add(len).min(size);
        match out.first_mut() {
            Some(first) if end > offset => {
                *first = Extent {
                    len: end - offset,
                    flags: ExtentFlags::empty(),
                };
                Ok(1)
            }
            _ => Ok(0),
        }
    }
    /// Describe `[offset, offset + len)` by allocation depth in the layer
    /// chain (qemu's `qemu:allocation-depth`), with the same contract as
    /// [`Backend::extents`]: consecutive runs from `offset`, at least one
    /// when `len > 0` and `out` is not empty, possibly short of `len`.
    /// Answered only by backends with [`Caps::ALLOCATION_DEPTH`]; the
    /// default is `ErrorKind::Unsupported`, so the driver must not offer
    /// the context then.
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        let _ = (offset, len, out);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// The asynchronous interface, for backends the event loop can drive
    /// with many requests in flight (see [`aio`]); `None` (the default)
    /// means every operation goes through the methods here. Filters do not
    /// forward it: they call their inner backend synchronously.
    fn as_async(&self) -> Option<&dyn AsyncBackend> {
        None
    }
    /// Change the size (NBD_CMD_RESIZE).
    fn resize(&self, new_size: u64) -> io::Result<()> {
        let _ = new_size;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// The concrete value, for a driver that drives some backends itself
    /// instead of calling this trait (nbdd's event loop serves the `nbd`
    /// proxy's upstream socket directly). `None` (the default): the driver
    /// calls the trait as [`Backend::execution`] says. A filter never
    /// forwards this: it calls its inner backend through the trait.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
    /// A one-line human description (NBD_INFO_DESCRIPTION / LIST).
    fn description(&self) -> Option<String> {
        None
    }
}
