//! The protocol's numbered values: options, option replies, info types,
//! commands, reply chunk types, error codes; plus [`Cookie`] and
//! [`HeaderMode`].
//!
//! Every enum has an `Unknown` variant so a value the peer sent always
//! round-trips; the state machines decide how to answer it. Each variant
//! documents its spec constant (`NBD_OPT_GO`, `NBD_CMD_READ`, ...).
//!
//! Spec: [proto.md "Option types"][opt], ["Option reply types"][rep],
//! ["Request types"][req], ["Structured reply types"][chunk], ["Error
//! values"][err].
//!
//! [opt]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-types
//! [rep]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-reply-types
//! [req]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#request-types
//! [chunk]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#structured-reply-types
//! [err]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#error-values

/// The opaque 64-bit request identifier, echoed byte-for-byte in replies
/// (older texts call it "handle").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Cookie(pub u64);

macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $repr:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this crate does not know; kept so it round-trips.
            Unknown($repr),
        }

        impl From<$repr> for $name {
            fn from(v: $repr) -> Self {
                match v {
                    $( $value => Self::$variant, )*
                    other => Self::Unknown(other),
                }
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> Self {
                match v {
                    $( $name::$variant => $value, )*
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

wire_enum! {
    /// Option numbers ([proto.md "Option types"]).
    ///
    /// [proto.md "Option types"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-types
    pub enum OptionCode: u32 {
        /// `NBD_OPT_EXPORT_NAME`
        ExportName = 1,
        /// `NBD_OPT_ABORT`
        Abort = 2,
        /// `NBD_OPT_LIST`
        List = 3,
        /// `NBD_OPT_STARTTLS`
        StartTls = 5,
        /// `NBD_OPT_INFO`
        Info = 6,
        /// `NBD_OPT_GO`
        Go = 7,
        /// `NBD_OPT_STRUCTURED_REPLY`
        StructuredReply = 8,
        /// `NBD_OPT_LIST_META_CONTEXT`
        ListMetaContext = 9,
        /// `NBD_OPT_SET_META_CONTEXT`
        SetMetaContext = 10,
        /// `NBD_OPT_EXTENDED_HEADERS`
        ExtendedHeaders = 11,
    }
}

wire_enum! {
    /// Option reply types ([proto.md "Option reply types"]); bit 31 marks errors.
    ///
    /// [proto.md "Option reply types"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-reply-types
    pub enum OptReplyType: u32 {
        /// `NBD_REP_ACK`
        Ack = 1,
        /// `NBD_REP_SERVER`
        Server = 2,
        /// `NBD_REP_INFO`
        Info = 3,
        /// `NBD_REP_META_CONTEXT`
        MetaContext = 4,
        /// `NBD_REP_ERR_UNSUP`
        ErrUnsup = 0x8000_0001,
        /// `NBD_REP_ERR_POLICY`
        ErrPolicy = 0x8000_0002,
        /// `NBD_REP_ERR_INVALID`
        ErrInvalid = 0x8000_0003,
        /// `NBD_REP_ERR_PLATFORM`
        ErrPlatform = 0x8000_0004,
        /// `NBD_REP_ERR_TLS_REQD`
        ErrTlsReqd = 0x8000_0005,
        /// `NBD_REP_ERR_UNKNOWN`
        ErrUnknown = 0x8000_0006,
        /// `NBD_REP_ERR_SHUTDOWN`
        ErrShutdown = 0x8000_0007,
        /// `NBD_REP_ERR_BLOCK_SIZE_REQD`
        ErrBlockSizeReqd = 0x8000_0008,
        /// `NBD_REP_ERR_TOO_BIG`
        ErrTooBig = 0x8000_0009,
        /// `NBD_REP_ERR_EXT_HEADER_REQD`
        ErrExtHeaderReqd = 0x8000_000a,
    }
}

impl OptReplyType {
    /// True for error replies (bit 31 set).
    #[must_use]
    pub fn is_error(self) -> bool {
        u32::from(self) & 0x8000_0000 != 0
    }
}

wire_enum! {
    /// Info types inside `NBD_REP_INFO` ([proto.md "Option reply types"]).
    ///
    /// [proto.md "Option reply types"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-reply-types
    pub enum InfoType: u16 {
        /// `NBD_INFO_EXPORT`
        Export = 0,
        /// `NBD_INFO_NAME`
        Name = 1,
        /// `NBD_INFO_DESCRIPTION`
        Description = 2,
        /// `NBD_INFO_BLOCK_SIZE`
        BlockSize = 3,
    }
}

wire_enum! {
    /// Request types ([proto.md "Request types"]).
    ///
    /// [proto.md "Request types"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#request-types
    pub enum Command: u16 {
        /// `NBD_CMD_READ`
        Read = 0,
        /// `NBD_CMD_WRITE`
        Write = 1,
        /// `NBD_CMD_DISC`
        Disc = 2,
        /// `NBD_CMD_FLUSH`
        Flush = 3,
        /// `NBD_CMD_TRIM`
        Trim = 4,
        /// `NBD_CMD_CACHE`
        Cache = 5,
        /// `NBD_CMD_WRITE_ZEROES`
        WriteZeroes = 6,
        /// `NBD_CMD_BLOCK_STATUS`
        BlockStatus = 7,
        /// `NBD_CMD_RESIZE` (experimental RESIZE extension)
        Resize = 8,
    }
}

wire_enum! {
    /// Structured / extended reply chunk types ([proto.md "Structured reply types"]).
    ///
    /// [proto.md "Structured reply types"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#structured-reply-types
    pub enum ChunkType: u16 {
        /// `NBD_REPLY_TYPE_NONE`
        None = 0,
        /// `NBD_REPLY_TYPE_OFFSET_DATA`
        OffsetData = 1,
        /// `NBD_REPLY_TYPE_OFFSET_HOLE`
        OffsetHole = 2,
        /// `NBD_REPLY_TYPE_BLOCK_STATUS`
        BlockStatus = 5,
        /// `NBD_REPLY_TYPE_BLOCK_STATUS_EXT`
        BlockStatusExt = 6,
        /// `NBD_REPLY_TYPE_ERROR`
        Error = 0x8001,
        /// `NBD_REPLY_TYPE_ERROR_OFFSET`
        ErrorOffset = 0x8002,
    }
}

impl ChunkType {
    /// True for error chunk types (bit 15 set).
    #[must_use]
    pub fn is_error(self) -> bool {
        u16::from(self) & 0x8000 != 0
    }
}

wire_enum! {
    /// Error values in replies ([proto.md "Error values"]). Host errors must be
    /// mapped into this set; a raw errno never goes on the wire.
    ///
    /// [proto.md "Error values"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#error-values
    pub enum ErrorCode: u32 {
        /// `NBD_EPERM`
        Perm = 1,
        /// `NBD_EIO`
        Io = 5,
        /// `NBD_ENOMEM`
        NoMem = 12,
        /// `NBD_EINVAL`
        Inval = 22,
        /// `NBD_ENOSPC`
        NoSpc = 28,
        /// `NBD_EOVERFLOW`
        Overflow = 75,
        /// `NBD_ENOTSUP`
        NotSup = 95,
        /// `NBD_ESHUTDOWN`
        Shutdown = 108,
    }
}

impl ErrorCode {
    /// A short human-readable message, used for structured error chunks.
    #[must_use]
    pub fn message(self) -> &'static str {
        match self {
            Self::Perm => "operation not permitted",
            Self::Io => "input/output error",
            Self::NoMem => "cannot allocate memory",
            Self::Inval => "invalid argument",
            Self::NoSpc => "no space left on device",
            Self::Overflow => "value too large",
            Self::NotSup => "operation not supported",
            Self::Shutdown => "server is shutting down",
            Self::Unknown(_) => "unknown error",
        }
    }
}

/// Which request/reply header layout is in use (fixed when negotiation ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum HeaderMode {
    /// 28-byte requests; simple replies only.
    Simple,
    /// 28-byte requests; simple or 20-byte structured replies.
    Structured,
    /// 32-byte requests and 32-byte reply chunks (`NBD_OPT_EXTENDED_HEADERS`).
    Extended,
}

impl HeaderMode {
    /// Size of a request header in this mode.
    #[must_use]
    pub fn request_header_len(self) -> usize {
        match self {
            Self::Simple | Self::Structured => 28,
            Self::Extended => 32,
        }
    }
}
