//! What negotiation needs to know about an export, and what it produces.

use crate::flags::TransmissionFlags;
use crate::types::HeaderMode;

/// The server's TLS policy for a connection ([proto.md "TLS support"]).
///
/// [proto.md "TLS support"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#tls-support
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// NOTLS: `NBD_OPT_STARTTLS` is refused.
    #[default]
    Off,
    /// SELECTIVETLS with no TLS-only export: TLS is offered, plaintext allowed.
    On,
    /// FORCEDTLS: nothing but STARTTLS and ABORT before TLS.
    Require,
}

/// Block-size constraints (`NBD_INFO_BLOCK_SIZE`): the minimum, preferred
/// and maximum sizes a client must respect once it agreed to them
/// ([proto.md "Size constraints"]).
///
/// [proto.md "Size constraints"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#size-constraints
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Minimum block size: a power of two, at most 64 KiB.
    pub minimum: u32,
    /// Preferred block size: a power of two, at least `max(minimum, 512)`.
    pub preferred: u32,
    /// Maximum payload: at least `preferred`.
    pub maximum: u32,
}

impl BlockSizes {
    /// The spec's defaults with a 32 MiB maximum payload.
    pub const DEFAULT: Self = Self {
        minimum: 1,
        preferred: 4096,
        maximum: 32 * 1024 * 1024,
    };

    /// True when the values obey the spec's rules ([proto.md "Size constraints"]).
    ///
    /// [proto.md "Size constraints"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#size-constraints
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.minimum.is_power_of_two()
            && self.minimum <= 65536
            && self.preferred.is_power_of_two()
            && self.preferred >= self.minimum.max(512)
            && self.maximum >= self.preferred
    }
}

/// What the caller says about an export, in answer to an
/// [`ExportQuestion`](super::ExportQuestion) (through
/// [`Connection::answer_export`](super::Connection::answer_export)). The
/// connection turns it into the `NBD_INFO_*` replies the client asked for
/// ([proto.md "Option reply types"]) or the `NBD_OPT_EXPORT_NAME` reply.
///
/// [proto.md "Option reply types"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-reply-types
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo<'a> {
    /// Size in bytes.
    pub size: u64,
    /// Capability flags of the export: READ_ONLY, SEND_FLUSH, SEND_FUA,
    /// ROTATIONAL, SEND_TRIM, SEND_WRITE_ZEROES, SEND_FAST_ZERO,
    /// CAN_MULTI_CONN, SEND_RESIZE, SEND_CACHE. The connection adds
    /// HAS_FLAGS and the negotiated ones (SEND_DF, BLOCK_STATUS_PAYLOAD) and
    /// drops those whose preconditions fail (FAST_ZERO without
    /// WRITE_ZEROES, RESIZE on a read-only export).
    pub flags: TransmissionFlags,
    /// Canonical name (`NBD_INFO_NAME`).
    pub name: &'a str,
    /// Description (`NBD_INFO_DESCRIPTION`); empty for none.
    pub description: &'a str,
    /// Constraints; `None` means the defaults.
    pub block_sizes: Option<BlockSizes>,
    /// The meta contexts this export offers: bit i =
    /// [`HandshakeConfig::meta_contexts`](super::HandshakeConfig::meta_contexts)`[i]`.
    /// A selection made by SET_META_CONTEXT is kept for transmission only
    /// where this allows it.
    pub meta_contexts: u64,
}

impl<'a> ExportInfo<'a> {
    /// An export of `size` bytes with `flags`: no name or description to
    /// report, default block sizes, offering the first catalogue context
    /// (`base:allocation` in the default configuration).
    #[must_use]
    pub fn new(size: u64, flags: TransmissionFlags) -> Self {
        Self {
            size,
            flags,
            name: "",
            description: "",
            block_sizes: None,
            meta_contexts: 1,
        }
    }
}

/// The result of a successful negotiation: everything transmission needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Header layout for the rest of the connection.
    pub mode: HeaderMode,
    /// Export size.
    pub size: u64,
    /// Transmission flags exactly as sent to the client.
    pub flags: TransmissionFlags,
    /// Constraints as advertised (defaults when none were).
    pub block_sizes: BlockSizes,
    /// The client requested `NBD_INFO_BLOCK_SIZE` in GO, so it promised to
    /// honour the constraints.
    pub block_sizes_agreed: bool,
    /// Selected meta contexts: bit `i` set means context ID `i + 1` (the
    /// index into the driver's offered list) is selected for this export.
    pub meta_contexts: u64,
    /// TLS was active.
    pub tls: bool,
}

impl Negotiated {
    /// The result of an oldstyle greeting: simple replies, no options.
    #[must_use]
    pub fn oldstyle(size: u64, flags: TransmissionFlags) -> Self {
        Self {
            mode: HeaderMode::Simple,
            size,
            flags: flags | TransmissionFlags::HAS_FLAGS,
            block_sizes: BlockSizes::DEFAULT,
            block_sizes_agreed: false,
            meta_contexts: 0,
            tls: false,
        }
    }
}
