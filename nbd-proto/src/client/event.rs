//! What [`Connection::handle_input`](super::Connection::handle_input) reports: one [`Event`] per
//! call, each naming what the caller must do next.

use crate::error::BufferTooSmall;
use crate::types::{Command, Cookie, ErrorCode, OptReplyType, OptionCode};
use crate::wire::option::Info;
use crate::wire::reply::{BlockStatusExtent, BlockStatusIter};

use super::ClientNegotiated;

/// The result of one [`Connection::handle_input`](super::Connection::handle_input) call, beside the
/// count of bytes consumed.
///
/// Events that carry data borrow the input slice: finish with the event,
/// then discard the consumed bytes from your buffer (rustls's unbuffered
/// API works the same way). Variants holding no borrow (`Done`, `Ready`,
/// `NeedInput`, …) can be moved out first.
#[derive(Debug)]
#[must_use]
#[non_exhaustive]
pub enum Event<'i> {
    /// Nothing more can be decoded: receive more bytes. `needed` is how
    /// many bytes, counted from the first unconsumed one, the next step
    /// needs in all (at least 1); a bigger buffer is fine.
    NeedInput {
        /// Bytes the next message needs in total.
        needed: usize,
    },
    /// Negotiation has a message to send: call
    /// [`Connection::poll_transmit`](super::Connection::poll_transmit) and
    /// write its bytes; no input is expected before that.
    Transmit,
    /// The server acknowledged `NBD_OPT_STARTTLS`: start a TLS client
    /// handshake on the transport now (every byte after the consumed ones
    /// is TLS), then hand this value to
    /// [`Connection::handle_tls_established`](super::Connection::handle_tls_established)
    /// and feed plaintext.
    StartTls(TlsStart),
    /// The TLS handshake [`Event::StartTls`] asked for has not been
    /// reported finished yet.
    TlsPending,
    /// One `NBD_REP_SERVER` answer to `NBD_OPT_LIST`.
    ListEntry {
        /// Export name.
        name: &'i str,
        /// Description (may be empty).
        description: &'i str,
    },
    /// One `NBD_REP_INFO` answer to `NBD_OPT_GO`.
    Info(Info<'i>),
    /// One `NBD_REP_META_CONTEXT` answer to `NBD_OPT_SET_META_CONTEXT`.
    MetaContext {
        /// Context ID used in BLOCK_STATUS replies.
        id: u32,
        /// Context name.
        name: &'i str,
    },
    /// The server refused an optional option; negotiation goes on (for
    /// example without extended headers, or with `NBD_OPT_EXPORT_NAME`
    /// after an old server refused `NBD_OPT_GO`).
    Refused {
        /// The option.
        option: OptionCode,
        /// The error reply.
        reply: OptReplyType,
        /// The server's message.
        message: &'i str,
    },
    /// Negotiation finished: requests may be sent with
    /// [`Connection::encode_request`](super::Connection::encode_request).
    Ready(ClientNegotiated),
    /// Nothing is in flight and no reply is expected: send a request, or
    /// `NBD_CMD_DISC` to finish.
    Idle,
    /// Part of a READ's data (or a hole reading as zeroes): copy it into
    /// that READ's buffer with [`ReadData::copy_into`].
    ReadData(ReadData<'i>),
    /// A block-status chunk for a `NBD_CMD_BLOCK_STATUS` request: copy its
    /// extents out with [`BlockStatus::copy_into`].
    BlockStatus(BlockStatus<'i>),
    /// The reply to a request is complete.
    Done(Done),
    /// The connection is over: `NBD_CMD_DISC` was sent and every reply
    /// arrived, or the connection was lost and every request in flight
    /// has been reported [`ReplyError::Disconnected`]. Close the transport.
    Closed,
}

/// Proof that the server acknowledged STARTTLS; consumed by
/// [`Connection::handle_tls_established`](super::Connection::handle_tls_established),
/// so TLS is reported up once per acknowledgement.
#[derive(Debug)]
#[must_use = "run the TLS handshake, then pass this to handle_tls_established"]
pub struct TlsStart {
    pub(crate) _private: (),
}

/// Bytes of a READ reply, placed by offset into the READ's buffer.
#[derive(Debug)]
#[must_use = "copy the data into the READ's buffer with copy_into"]
pub struct ReadData<'i> {
    pub(crate) cookie: Cookie,
    pub(crate) slot: usize,
    pub(crate) request_len: u64,
    pub(crate) at: usize,
    pub(crate) fill: Fill<'i>,
}

#[derive(Debug)]
pub(crate) enum Fill<'i> {
    Data(&'i [u8]),
    Zeroes(usize),
}

impl ReadData<'_> {
    /// The READ's cookie.
    #[must_use]
    pub fn cookie(&self) -> Cookie {
        self.cookie
    }

    /// The READ's slot in the in-flight table (below the table size `N`;
    /// reused once its [`Event::Done`] is reported): index your own
    /// per-request state with it.
    #[must_use]
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Where these bytes go, relative to the start of the READ.
    #[must_use]
    pub fn range(&self) -> core::ops::Range<usize> {
        let len = match self.fill {
            Fill::Data(d) => d.len(),
            Fill::Zeroes(n) => n,
        };
        self.at..self.at.saturating_add(len)
    }

    /// True for an `NBD_REPLY_TYPE_OFFSET_HOLE` (the range reads as zeroes).
    #[must_use]
    pub fn is_hole(&self) -> bool {
        matches!(self.fill, Fill::Zeroes(_))
    }

    /// Write these bytes into `buf`, the whole destination of the READ
    /// (its first byte is the READ's offset). The connection has already
    /// checked that the range lies inside the request.
    ///
    /// # Errors
    /// [`BufferTooSmall`] when `buf` is shorter than the READ; nothing is
    /// written then.
    pub fn copy_into(self, buf: &mut [u8]) -> Result<(), BufferTooSmall> {
        let required = usize::try_from(self.request_len).unwrap_or(usize::MAX);
        if buf.len() < required {
            return Err(BufferTooSmall { required });
        }
        let dst = buf
            .get_mut(self.range())
            .ok_or(BufferTooSmall { required })?;
        match self.fill {
            Fill::Data(d) => dst.copy_from_slice(d.get(..dst.len()).unwrap_or_default()),
            Fill::Zeroes(_) => dst.fill(0),
        }
        Ok(())
    }
}

/// One `NBD_REPLY_TYPE_BLOCK_STATUS` / `_EXT` chunk.
#[derive(Debug)]
#[must_use = "copy the extents out with copy_into"]
pub struct BlockStatus<'i> {
    pub(crate) cookie: Cookie,
    pub(crate) slot: usize,
    pub(crate) id: u32,
    pub(crate) limit: u64,
    pub(crate) extents: BlockStatusIter<'i>,
}

impl BlockStatus<'_> {
    /// The request's cookie.
    #[must_use]
    pub fn cookie(&self) -> Cookie {
        self.cookie
    }

    /// The request's slot (see [`ReadData::slot`]).
    #[must_use]
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The meta context these extents describe (`base:allocation`'s ID,
    /// [`ClientNegotiated::base_allocation`]).
    #[must_use]
    pub fn context(&self) -> u32 {
        self.id
    }

    /// The descriptors exactly as the server sent them.
    #[must_use]
    pub fn raw(&self) -> BlockStatusIter<'_> {
        self.extents
    }

    /// Copy descriptors into `out`, starting at the request's offset and
    /// clipped to its length (the spec lets the last one run past it).
    /// Returns how many were written: at most `out.len()`, and fewer when
    /// the descriptors reach the end of the request first. Dropping
    /// trailing descriptors is legal: a reply may describe less than asked.
    #[must_use]
    pub fn copy_into(self, out: &mut [BlockStatusExtent]) -> usize {
        let mut total = 0u64;
        let mut n = 0;
        for (slot, e) in out.iter_mut().zip(self.extents) {
            if total >= self.limit {
                break;
            }
            let len = e.len.min(self.limit - total);
            *slot = BlockStatusExtent {
                len,
                flags: e.flags,
            };
            total += len;
            n += 1;
        }
        n
    }
}

/// A finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// The request's cookie.
    pub cookie: Cookie,
    /// Its slot, free again from now on (see [`ReadData::slot`]).
    pub slot: usize,
    /// The command.
    pub command: Command,
    /// Success, or why not.
    pub result: Result<(), ReplyError>,
}

/// Why a request did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The server answered with this error (simple reply or error chunk;
    /// the first error chunk wins).
    #[error("server error {0:?}")]
    Server(ErrorCode),
    /// The server reported success for a READ whose chunks did not cover
    /// the whole range (the spec requires it): the missing bytes were never
    /// sent.
    #[error("READ reply did not cover the whole request")]
    Incomplete,
    /// The connection ended (closed, failed, or a protocol error) before
    /// the reply arrived; whether the server executed it is unknown.
    #[error("connection lost before the reply")]
    Disconnected,
}

impl ReplyError {
    /// The NBD error a proxy should pass on: the server's own, else
    /// `NBD_EIO`.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Server(e) => *e,
            Self::Incomplete | Self::Disconnected => ErrorCode::Io,
        }
    }
}
