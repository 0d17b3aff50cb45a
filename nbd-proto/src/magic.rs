//! The protocol's magic numbers: greetings, option headers and replies,
//! request and reply headers.
//!
//! The two 64-bit magics the spec writes with fewer than 16 hex digits are
//! still 8-byte fields on the wire (leading zero bytes).
//!
//! Spec: [proto.md "Handshake"][hs], ["Transmission"][tx], ["Reserved Magic
//! values"][reserved].
//!
//! [hs]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#handshake
//! [tx]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#transmission
//! [reserved]: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#reserved-magic-values

/// `NBDMAGIC` / `INIT_PASSWD`: the first 8 bytes from the server in both styles.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `cliserv_magic`: the second field of the oldstyle greeting.
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// `IHAVEOPT`: newstyle greeting field and the prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// `NBD_REP_MAGIC`: prefix of every fixed-newstyle option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`: compact (28-byte) request header.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_EXTENDED_REQUEST_MAGIC`: extended (32-byte) request header.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// `NBD_SIMPLE_REPLY_MAGIC`: simple (16-byte) reply header.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`: structured (20-byte) reply chunk header.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// `NBD_EXTENDED_REPLY_MAGIC`: extended (32-byte) reply chunk header.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;
