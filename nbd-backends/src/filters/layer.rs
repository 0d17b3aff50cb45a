//! [`Filter`]: a backend over another one, forwarding whatever it does
//! not change, so each filter writes only what it changes.
//!
//! Every filter forwards [`Backend::preconnect`] to the layer below, and
//! its [`Backend::open`] wraps a per-connection handle of the layer below
//! in a fresh copy of itself ([`Filter::reopen`]), so that
//! `--filter=X tmpdisk` gives each client its own disk through `X`. State
//! that belongs to the export (statistics, a shared cache, a connection
//! count) is behind an `Arc` the copies share. [`Backend::as_any`] is
//! never forwarded (the driver must not drive a filter's layer below
//! behind its back).

use std::io;
use std::sync::Arc;

use crate::{
    Backend, BlockSize, Caps, ClientInfo, DepthExtent, Execution, Extent, Peer, ZeroFlags,
};

/// A backend layered over `inner()`. Every method defaults to the layer
/// below; `Backend` is implemented for every `Filter`.
pub trait Filter: Send + Sync + 'static {
    /// The layer below.
    fn inner(&self) -> &Arc<dyn Backend>;
    /// This filter over `inner`, a per-connection handle of the layer
    /// below, sharing the export-wide state of `self`.
    ///
    /// # Errors
    ///
    /// When the filter cannot stand on that handle (a partition table
    /// missing from a fresh disk, say): the client is refused.
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>>;

    /// See [`Backend::size`].
    fn size(&self) -> u64 {
        self.inner().size()
    }
    /// See [`Backend::caps`].
    fn caps(&self) -> Caps {
        self.inner().caps()
    }
    /// See [`Backend::block_size`].
    fn block_size(&self) -> Option<BlockSize> {
        self.inner().block_size()
    }
    /// See [`Backend::execution`].
    fn execution(&self) -> Execution {
        self.inner().execution()
    }
    /// See [`Backend::preconnect`].
    ///
    /// # Errors
    ///
    /// The layer below's refusal.
    fn preconnect(&self, client: &ClientInfo<'_>) -> io::Result<()> {
        self.inner().preconnect(client)
    }
    /// See [`Backend::open`]: a copy of this filter around the layer
    /// below's handle, or `None` when the layer below has none.
    ///
    /// # Errors
    ///
    /// The layer below's refusal, or [`Filter::reopen`]'s.
    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        match self.inner().open(client)? {
            Some(handle) => self.reopen(handle).map(Some),
            None => Ok(None),
        }
    }
    /// See [`Backend::per_client_data`]: a filter's copy shows what the
    /// handle below it shows.
    fn per_client_data(&self) -> bool {
        self.inner().per_client_data()
    }
    /// See [`Backend::read_at`].
    ///
    /// # Errors
    ///
    /// As the layer below.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner().read_at(offset, buf)
    }
    /// See [`Backend::try_read_cached`]. Not forwarded by default: a read
    /// answered this way skips the filter's [`Filter::read_at`], so a
    /// filter that changes data or offsets, counts, delays, limits, logs
    /// or fails reads would be bypassed. Filters whose reads are the layer
    /// below's, byte for byte at the same offsets, forward it with
    /// [`forward_cached`]; offset and truncate translate it themselves.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        let _ = (offset, buf);
        false
    }
    /// See [`Backend::try_write_cached`]. Not forwarded by default, for
    /// the same reason: it skips the filter's [`Filter::write_at`]. Filters
    /// whose writes reach the layer below unchanged forward it with
    /// [`forward_cached_write`]; offset moves it itself.
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        let _ = (offset, data);
        false
    }
    /// See [`Backend::write_at`].
    ///
    /// # Errors
    ///
    /// As the layer below.
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.inner().write_at(offset, data, fua)
    }
    /// See [`Backend::flush`].
    ///
    /// # Errors
    ///
    /// As the layer below.
    fn flush(&self) -> io::Result<()> {
        self.inner().flush()
    }
    /// See [`Backend::trim`].
    ///
    /// # Errors
    ///
    /// As the layer below.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.inner().trim(offset, len, fua)
    }
    /// See [`Backend::write_zeroes`].
    ///
    /// # Errors
    ///
    /// As the layer below.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.inner().write_zeroes(offset, len, flags)
    }
    /// See [`Backend::cache`].
    ///
    /// # Errors
    ///
    /// As the layer below.
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner().cache(offset, len)
    }
    /// See [`Backend::extents`].
    ///
    /// # Errors
    ///
    /// As the layer below.
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        self.inner().extents(offset, len, out)
    }
    /// See [`Backend::allocation_depth`]. A filter that moves, resizes or
    /// rewrites data must drop [`Caps::ALLOCATION_DEPTH`] and refuse this.
    ///
    /// # Errors
    ///
    /// As the layer below.
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        self.inner().allocation_depth(offset, len, out)
    }
    /// See [`Backend::resize`].
    ///
    /// # Errors
    ///
    /// As the layer below.
    fn resize(&self, new_size: u64) -> io::Result<()> {
        self.inner().resize(new_size)
    }
    /// See [`Backend::description`].
    fn description(&self) -> Option<String> {
        self.inner().description()
    }
}

impl<T: Filter> Backend for T {
    fn size(&self) -> u64 {
        Filter::size(self)
    }
    fn caps(&self) -> Caps {
        Filter::caps(self)
    }
    fn block_size(&self) -> Option<BlockSize> {
        Filter::block_size(self)
    }
    fn execution(&self) -> Execution {
        Filter::execution(self)
    }
    fn preconnect(&self, client: &ClientInfo<'_>) -> io::Result<()> {
        Filter::preconnect(self, client)
    }
    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        Filter::open(self, client)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        Filter::read_at(self, offset, buf)
    }
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        Filter::try_read_cached(self, offset, buf)
    }
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        Filter::try_write_cached(self, offset, data)
    }
    fn per_client_data(&self) -> bool {
        Filter::per_client_data(self)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        Filter::write_at(self, offset, data, fua)
    }
    fn flush(&self) -> io::Result<()> {
        Filter::flush(self)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        Filter::trim(self, offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        Filter::write_zeroes(self, offset, len, flags)
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        Filter::cache(self, offset, len)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        Filter::extents(self, offset, len, out)
    }
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        out: &mut [DepthExtent],
    ) -> io::Result<usize> {
        Filter::allocation_depth(self, offset, len, out)
    }
    fn resize(&self, new_size: u64) -> io::Result<()> {
        Filter::resize(self, new_size)
    }
    fn description(&self) -> Option<String> {
        Filter::description(self)
    }
}

/// [`Filter::try_read_cached`] for a filter whose reads are exactly the
/// layer below's: the range is checked against the filter's size (which
/// may differ from the layer below's while it is resized) and then asked
/// of the layer below.
pub(crate) fn forward_cached<F: Filter + ?Sized>(f: &F, offset: u64, buf: &mut [u8]) -> bool {
    crate::util::check_read(offset, crate::util::len64(buf), f.size()).is_ok()
        && f.inner().try_read_cached(offset, buf)
}

/// [`Filter::try_write_cached`] for a filter whose writes are exactly the
/// layer below's: checked against the filter's size, then asked below.
pub(crate) fn forward_cached_write<F: Filter + ?Sized>(f: &F, offset: u64, data: &[u8]) -> bool {
    crate::util::check_write(offset, crate::util::len64(data), f.size()).is_ok()
        && f.inner().try_write_cached(offset, data)
}

/// A [`ClientInfo`] that outlives the call it came with (for filters that
/// reopen the layer below later, or log the client).
#[derive(Debug, Clone)]
pub struct OwnedClient {
    /// See [`ClientInfo::id`].
    pub id: u64,
    /// See [`ClientInfo::peer`].
    pub peer: Peer,
    /// See [`ClientInfo::export_name`].
    pub export_name: String,
    /// See [`ClientInfo::tls`].
    pub tls: bool,
}

impl OwnedClient {
    /// Copy `c`.
    pub fn new(c: &ClientInfo<'_>) -> Self {
        Self {
            id: c.id,
            peer: c.peer,
            export_name: c.export_name.to_owned(),
            tls: c.tls,
        }
    }

    /// Borrow it back.
    pub fn info(&self) -> ClientInfo<'_> {
        ClientInfo {
            id: self.id,
            peer: self.peer,
            export_name: &self.export_name,
            tls: self.tls,
        }
    }
}

/// The inner handle a filter's own per-connection copy stands on: the
/// layer below's handle if it has one, else the shared layer itself.
///
/// # Errors
///
/// The layer below's refusal.
pub(crate) fn open_below(
    inner: &Arc<dyn Backend>,
    client: &ClientInfo<'_>,
) -> io::Result<Arc<dyn Backend>> {
    Ok(inner.open(client)?.unwrap_or_else(|| Arc::clone(inner)))
}
