//! The protocol's flag fields, one `bitflags` type each: handshake, client,
//! transmission, command and reply flags, and the `base:allocation`
//! status bits.
//!
//! Decoders use `from_bits_retain` so unknown bits stay visible: the spec
//! requires some of them to be rejected (client flags, command flags), and
//! silently truncating them would hide a protocol violation.
//!
//! Spec: [proto.md "Flag fields"][hs] (handshake phase), ["Flag
//! fields"][tx] (transmission phase), ["`base:allocation` metadata
//! context"][alloc].
//!
//! [hs]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#flag-fields
//! [tx]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#flag-fields-1
//! [alloc]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#baseallocation-metadata-context

bitflags::bitflags! {
    /// Handshake flags, server to client, 16 bits ([proto.md "Handshake flags"]).
    ///
    /// [proto.md "Handshake flags"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#handshake-flags
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
    pub struct HandshakeFlags: u16 {
        /// `NBD_FLAG_FIXED_NEWSTYLE`
        const FIXED_NEWSTYLE = 1 << 0;
        /// `NBD_FLAG_NO_ZEROES`
        const NO_ZEROES = 1 << 1;
    }
}

bitflags::bitflags! {
    /// Client flags, client to server, 32 bits ([proto.md "Client flags"]).
    ///
    /// [proto.md "Client flags"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#client-flags
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
    pub struct ClientFlags: u32 {
        /// `NBD_FLAG_C_FIXED_NEWSTYLE`
        const FIXED_NEWSTYLE = 1 << 0;
        /// `NBD_FLAG_C_NO_ZEROES`
        const NO_ZEROES = 1 << 1;
    }
}

bitflags::bitflags! {
    /// Transmission flags, 16 bits ([proto.md "Transmission flags"]).
    ///
    /// [proto.md "Transmission flags"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#transmission-flags
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
    pub struct TransmissionFlags: u16 {
        /// `NBD_FLAG_HAS_FLAGS`: always set.
        const HAS_FLAGS = 1 << 0;
        /// `NBD_FLAG_READ_ONLY`
        const READ_ONLY = 1 << 1;
        /// `NBD_FLAG_SEND_FLUSH`
        const SEND_FLUSH = 1 << 2;
        /// `NBD_FLAG_SEND_FUA`
        const SEND_FUA = 1 << 3;
        /// `NBD_FLAG_ROTATIONAL`
        const ROTATIONAL = 1 << 4;
        /// `NBD_FLAG_SEND_TRIM`
        const SEND_TRIM = 1 << 5;
        /// `NBD_FLAG_SEND_WRITE_ZEROES`
        const SEND_WRITE_ZEROES = 1 << 6;
        /// `NBD_FLAG_SEND_DF`
        const SEND_DF = 1 << 7;
        /// `NBD_FLAG_CAN_MULTI_CONN`
        const CAN_MULTI_CONN = 1 << 8;
        /// `NBD_FLAG_SEND_RESIZE` (experimental RESIZE extension)
        const SEND_RESIZE = 1 << 9;
        /// `NBD_FLAG_SEND_CACHE`
        const SEND_CACHE = 1 << 10;
        /// `NBD_FLAG_SEND_FAST_ZERO`
        const SEND_FAST_ZERO = 1 << 11;
        /// `NBD_FLAG_BLOCK_STATUS_PAYLOAD` (extended headers extension)
        const BLOCK_STATUS_PAYLOAD = 1 << 12;
    }
}

bitflags::bitflags! {
    /// Command flags, 16 bits in every request ([proto.md "Command flags"]).
    ///
    /// [proto.md "Command flags"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#command-flags
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
    pub struct CmdFlags: u16 {
        /// `NBD_CMD_FLAG_FUA`: force unit access.
        const FUA = 1 << 0;
        /// `NBD_CMD_FLAG_NO_HOLE`: WRITE_ZEROES must allocate.
        const NO_HOLE = 1 << 1;
        /// `NBD_CMD_FLAG_DF`: don't fragment a structured READ reply.
        const DF = 1 << 2;
        /// `NBD_CMD_FLAG_REQ_ONE`: one extent per BLOCK_STATUS context.
        const REQ_ONE = 1 << 3;
        /// `NBD_CMD_FLAG_FAST_ZERO`: fail WRITE_ZEROES fast unless cheap.
        const FAST_ZERO = 1 << 4;
        /// `NBD_CMD_FLAG_PAYLOAD_LEN` (extended headers): length is a payload length.
        const PAYLOAD_LEN = 1 << 5;
    }
}

bitflags::bitflags! {
    /// Reply chunk flags, 16 bits ([proto.md "Structured reply chunk message"]).
    ///
    /// [proto.md "Structured reply chunk message"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#structured-reply-chunk-message
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
    pub struct ReplyFlags: u16 {
        /// `NBD_REPLY_FLAG_DONE`: the last chunk of a reply.
        const DONE = 1 << 0;
    }
}

bitflags::bitflags! {
    /// `base:allocation` status bits ([proto.md "The `base:` metadata namespace"]).
    ///
    /// [proto.md "The `base:` metadata namespace"]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#the-base-metadata-namespace
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
    pub struct AllocationFlags: u32 {
        /// `NBD_STATE_HOLE`: not allocated.
        const HOLE = 1 << 0;
        /// `NBD_STATE_ZERO`: reads as zeroes.
        const ZERO = 1 << 1;
    }
}
