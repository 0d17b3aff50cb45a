//! The one mapping from a backend operation to the NBD commands sent
//! upstream, shared by the loop-driven [`super::upstream::Upstream`] and
//! the blocking [`super::direct::Direct`], so both paths behave alike:
//!
//! - READ and WRITE are split at the upstream's maximum payload (its
//!   `NBD_INFO_BLOCK_SIZE` maximum, else the spec's 32 MiB default),
//!   rounded down to its minimum block size.
//! - TRIM, WRITE_ZEROES and CACHE longer than the compact header's 32-bit
//!   length are split into 1 GiB pieces (aligned to any minimum block
//!   size) rather than refused: the client asked for a range operation,
//!   and NBD promises no atomicity across it anyway. With extended headers
//!   upstream they go in one piece.
//! - FUA the upstream lacks is emulated with a FLUSH sent after every
//!   piece succeeded (a FLUSH covers writes completed before it was sent,
//!   proto.md "NBD_CMD_FLUSH"); with neither FUA nor FLUSH upstream,
//!   writes are stable when answered and FUA needs nothing.
//! - FLUSH, TRIM and CACHE the upstream does not offer are no-ops (no
//!   FLUSH: writes are already stable; TRIM and CACHE are hints).
//! - WRITE_ZEROES without upstream support becomes WRITEs of zeroes, 1 MiB
//!   each; FAST_ZERO the upstream cannot honour fails with ENOTSUP before
//!   touching data (checklist 92).
//! - BLOCK_STATUS asks for at most 1 GiB (a shorter answer is legal);
//!   without `base:allocation` upstream the range is reported as data.
//! - RESIZE is not forwarded.

use std::io;

use nbd_backends::ZeroFlags;
use nbd_proto::client::ClientNegotiated;
use nbd_proto::{CmdFlags, Command, HeaderMode, TransmissionFlags as TF};

use crate::workers::Op;

/// Largest effect length of one payload-less request in compact mode.
pub const MAX_EFFECT: u64 = 1 << 30;
/// The largest READ/WRITE the driver hands a backend (its payload
/// limit), also the cap on an upstream's advertised maximum.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Zeroes written per WRITE when the upstream has no WRITE_ZEROES.
pub(crate) const ZERO_CHUNK: usize = 1 << 20;
/// The source of emulated zero writes.
pub(crate) static ZEROES: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// What to do for one operation.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Answer at once, without the upstream.
    Now(io::Result<()>),
    /// No `base:allocation` upstream: the whole range is allocated data.
    AllData,
    /// Send these commands.
    Send(Pieces),
}

/// Where a piece's payload comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PieceData {
    /// No payload.
    None,
    /// The operation's payload from this offset (`len` bytes).
    Payload(usize),
    /// `len` zero bytes ([`ZEROES`]).
    Zeroes,
}

/// One NBD command of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) command: Command,
    pub(crate) flags: CmdFlags,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) data: PieceData,
}

impl Piece {
    /// Where a READ piece's data goes in the operation's buffer.
    pub(crate) fn rel(&self, op_offset: u64) -> usize {
        (self.offset - op_offset) as usize
    }
}

/// The commands of one operation, produced one at a time; every piece may
/// be in flight at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pieces {
    command: Command,
    flags: CmdFlags,
    data: PieceData,
    start: u64,
    at: u64,
    end: u64,
    step: u64,
    /// Send one FLUSH once every piece succeeded (FUA emulation).
    pub(crate) flush_after: bool,
}

impl Pieces {
    /// The next piece, or `None` when all were produced.
    pub(crate) fn next_piece(&mut self) -> Option<Piece> {
        if self.at >= self.end {
            return None;
        }
        let len = (self.end - self.at).min(self.step);
        let data = match self.data {
            PieceData::Payload(_) => PieceData::Payload((self.at - self.start) as usize),
            d => d,
        };
        let flush = self.command == Command::Flush;
        let p = Piece {
            command: self.command,
            flags: self.flags,
            // FLUSH carries offset 0 and length 0 (proto.md).
            offset: if flush { 0 } else { self.at },
            len: if flush { 0 } else { len },
            data,
        };
        self.at += len;
        Some(p)
    }

    /// True when every piece was produced.
    pub(crate) fn is_done(&self) -> bool {
        self.at >= self.end
    }

    /// Start over (an idempotent operation resent after a reconnect).
    pub(crate) fn restart(&mut self) {
        self.at = self.start;
    }

    /// A FLUSH alone (the FUA emulation's second step).
    pub(crate) fn flush() -> Self {
        Self {
            command: Command::Flush,
            flags: CmdFlags::empty(),
            data: PieceData::None,
            start: 0,
            at: 0,
            end: 1,
            step: 1,
            flush_after: false,
        }
    }
}

impl Iterator for Pieces {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        self.next_piece()
    }
}

/// The upstream's largest READ/WRITE payload, a multiple of its minimum
/// block size.
pub(crate) fn max_io(neg: &ClientNegotiated) -> u64 {
    let (min, max) = neg
        .block_sizes
        .map_or((1, MAX_PAYLOAD), |b| (b.minimum.max(1), b.maximum));
    let max = u64::from(max.clamp(512, MAX_PAYLOAD));
    let min = u64::from(min);
    (max / min * min).max(min)
}

fn effect_cap(neg: &ClientNegotiated) -> u64 {
    match neg.mode {
        HeaderMode::Extended => u64::MAX,
        _ => MAX_EFFECT,
    }
}

/// FUA on a write-like command: the flag, or a FLUSH afterwards.
fn fua(fua: bool, neg: &ClientNegotiated) -> (CmdFlags, bool) {
    let f = neg.flags;
    match (fua, f.contains(TF::SEND_FUA), f.contains(TF::SEND_FLUSH)) {
        (true, true, _) => (CmdFlags::FUA, false),
        (true, false, flush) => (CmdFlags::empty(), flush),
        (false, _, _) => (CmdFlags::empty(), false),
    }
}

fn pieces(
    command: Command,
    flags: CmdFlags,
    offset: u64,
    len: u64,
    step: u64,
    data: PieceData,
    flush_after: bool,
) -> Plan {
    match offset.checked_add(len) {
        None => Plan::Now(Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range beyond the export",
        ))),
        Some(_) if len == 0 => Plan::Now(Ok(())),
        Some(end) => Plan::Send(Pieces {
            command,
            flags,
            data,
            start: offset,
            at: offset,
            end,
            step: step.max(1),
            flush_after,
        }),
    }
}

/// Map `op` (with a WRITE payload of `payload_len` bytes) to commands for
/// an upstream that negotiated `neg`.
pub(crate) fn plan(op: &Op, payload_len: usize, neg: &ClientNegotiated) -> Plan {
    let has = |f: TF| neg.flags.contains(f);
    let none = PieceData::None;
    match *op {
        Op::Read { offset, len } => pieces(
            Command::Read,
            CmdFlags::empty(),
            offset,
            len as u64,
            max_io(neg),
            none,
            false,
        ),
        Op::Write { offset, fua: f } => {
            let (flags, flush) = fua(f, neg);
            let data = PieceData::Payload(0);
            let len = payload_len as u64;
            pieces(Command::Write, flags, offset, len, max_io(neg), data, flush)
        }
        Op::Flush if has(TF::SEND_FLUSH) => Plan::Send(Pieces::flush()),
        Op::Trim {
            offset,
            len,
            fua: f,
        } if has(TF::SEND_TRIM) => {
            let (flags, flush) = fua(f, neg);
            pieces(
                Command::Trim,
                flags,
                offset,
                len,
                effect_cap(neg),
                none,
                flush,
            )
        }
        Op::Cache { offset, len } if has(TF::SEND_CACHE) => {
            let cap = effect_cap(neg);
            pieces(
                Command::Cache,
                CmdFlags::empty(),
                offset,
                len,
                cap,
                none,
                false,
            )
        }
        // Hints or nothing to make durable: nothing to do upstream.
        Op::Flush | Op::Trim { .. } | Op::Cache { .. } => Plan::Now(Ok(())),
        Op::Zero { offset, len, flags } => zero(offset, len, flags, neg),
        Op::Extents { offset, len } => {
            if neg.base_allocation.is_none() {
                return Plan::AllData;
            }
            let len = len.min(neg.size.saturating_sub(offset)).min(MAX_EFFECT);
            let c = Command::BlockStatus;
            pieces(c, CmdFlags::empty(), offset, len, MAX_EFFECT, none, false)
        }
        Op::Resize { .. } => Plan::Now(Err(io::ErrorKind::Unsupported.into())),
    }
}

fn zero(offset: u64, len: u64, flags: ZeroFlags, neg: &ClientNegotiated) -> Plan {
    let native = neg.flags.contains(TF::SEND_WRITE_ZEROES);
    let fast = flags.contains(ZeroFlags::FAST);
    if fast && !(native && neg.flags.contains(TF::SEND_FAST_ZERO)) {
        // The upstream cannot promise speed: fail before touching data.
        return Plan::Now(Err(io::ErrorKind::Unsupported.into()));
    }
    let (mut f, flush) = fua(flags.contains(ZeroFlags::FUA), neg);
    if !native {
        let step = max_io(neg).min(ZERO_CHUNK as u64);
        let data = PieceData::Zeroes;
        return pieces(Command::Write, f, offset, len, step, data, flush);
    }
    if !flags.contains(ZeroFlags::MAY_TRIM) {
        f |= CmdFlags::NO_HOLE;
    }
    if fast {
        f |= CmdFlags::FAST_ZERO;
    }
    let cap = effect_cap(neg);
    pieces(
        Command::WriteZeroes,
        f,
        offset,
        len,
        cap,
        PieceData::None,
        flush,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbd_proto::server::BlockSizes;

    fn neg(flags: TF, mode: HeaderMode) -> ClientNegotiated {
        ClientNegotiated {
            mode,
            size: 1 << 40,
            flags: flags | TF::HAS_FLAGS,
            block_sizes: None,
            base_allocation: Some(1),
            tls: false,
            oldstyle: false,
        }
    }

    type Sent = (Vec<(Command, CmdFlags, u64, u64, PieceData)>, bool);

    fn sent(p: Plan) -> Sent {
        let Plan::Send(ps) = p else {
            panic!("not sent: {p:?}")
        };
        let flush = ps.flush_after;
        let v = ps
            .map(|p| (p.command, p.flags, p.offset, p.len, p.data))
            .collect();
        (v, flush)
    }

    #[test]
    fn compact_trim_over_32_bits_is_split_in_both_paths() {
        let n = neg(TF::SEND_TRIM, HeaderMode::Structured);
        let op = Op::Trim {
            offset: 4096,
            len: (5 << 30) + 512,
            fua: false,
        };
        let (v, _) = sent(plan(&op, 0, &n));
        assert_eq!(v.len(), 6);
        assert!(v.iter().all(|p| p.3 <= MAX_EFFECT && p.0 == Command::Trim));
        assert_eq!(
            v[5],
            (
                Command::Trim,
                CmdFlags::empty(),
                4096 + (5 << 30),
                512,
                PieceData::None
            )
        );
        // Extended upstream: one piece.
        let n = neg(TF::SEND_TRIM, HeaderMode::Extended);
        assert_eq!(sent(plan(&op, 0, &n)).0.len(), 1);
    }

    #[test]
    fn fua_without_upstream_fua_is_a_flush_afterwards() {
        let op = Op::Write {
            offset: 0,
            fua: true,
        };
        let native = neg(TF::SEND_FUA | TF::SEND_FLUSH, HeaderMode::Structured);
        assert_eq!(
            sent(plan(&op, 512, &native)),
            (
                vec![(Command::Write, CmdFlags::FUA, 0, 512, PieceData::Payload(0))],
                false
            )
        );
        let flush_only = neg(TF::SEND_FLUSH, HeaderMode::Structured);
        assert!(sent(plan(&op, 512, &flush_only)).1);
        let neither = neg(TF::empty(), HeaderMode::Structured);
        assert_eq!(
            sent(plan(&op, 512, &neither)),
            (
                vec![(
                    Command::Write,
                    CmdFlags::empty(),
                    0,
                    512,
                    PieceData::Payload(0)
                )],
                false
            )
        );
        let f: Vec<_> = Pieces::flush().collect();
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].command, f[0].offset, f[0].len),
            (Command::Flush, 0, 0)
        );
    }

    #[test]
    fn reads_and_writes_split_at_the_upstream_maximum() {
        let mut n = neg(TF::empty(), HeaderMode::Simple);
        n.block_sizes = Some(BlockSizes {
            minimum: 512,
            preferred: 4096,
            maximum: 65536 + 100,
        });
        let (v, _) = sent(plan(
            &Op::Read {
                offset: 0,
                len: 150_000,
            },
            0,
            &n,
        ));
        assert_eq!(
            v.iter().map(|p| p.3).collect::<Vec<_>>(),
            [65536, 65536, 18928]
        );
        let (v, _) = sent(plan(
            &Op::Write {
                offset: 512,
                fua: false,
            },
            70_000,
            &n,
        ));
        assert_eq!(v[1].4, PieceData::Payload(65536));
        assert_eq!(v[1].2, 512 + 65536);
    }

    #[test]
    fn zeroes_fast_and_emulated() {
        let fast = ZeroFlags::FAST;
        let op = |flags| Op::Zero {
            offset: 0,
            len: 3 << 20,
            flags,
        };
        let plain = neg(TF::SEND_FLUSH, HeaderMode::Structured);
        assert!(
            matches!(plan(&op(fast), 0, &plain), Plan::Now(Err(e)) if e.kind() == io::ErrorKind::Unsupported)
        );
        let (v, _) = sent(plan(&op(ZeroFlags::empty()), 0, &plain));
        assert_eq!(v.len(), 3);
        assert!(
            v.iter()
                .all(|p| p.0 == Command::Write && p.4 == PieceData::Zeroes)
        );
        let native = neg(
            TF::SEND_WRITE_ZEROES | TF::SEND_FAST_ZERO,
            HeaderMode::Structured,
        );
        let (v, _) = sent(plan(&op(fast), 0, &native));
        assert_eq!(
            v,
            [(
                Command::WriteZeroes,
                CmdFlags::NO_HOLE | CmdFlags::FAST_ZERO,
                0,
                3 << 20,
                PieceData::None
            )]
        );
        let (v, _) = sent(plan(&op(ZeroFlags::MAY_TRIM), 0, &native));
        assert_eq!(v[0].1, CmdFlags::empty());
    }

    #[test]
    fn unsupported_hints_and_extents() {
        let n = neg(TF::empty(), HeaderMode::Structured);
        for op in [
            Op::Flush,
            Op::Trim {
                offset: 0,
                len: 1,
                fua: true,
            },
            Op::Cache { offset: 0, len: 1 },
        ] {
            assert!(matches!(plan(&op, 0, &n), Plan::Now(Ok(()))), "{op:?}");
        }
        assert!(matches!(
            plan(&Op::Resize { size: 1 }, 0, &n),
            Plan::Now(Err(_))
        ));
        let (v, _) = sent(plan(
            &Op::Extents {
                offset: 0,
                len: 8 << 30,
            },
            0,
            &n,
        ));
        assert_eq!(
            v,
            [(
                Command::BlockStatus,
                CmdFlags::empty(),
                0,
                MAX_EFFECT,
                PieceData::None
            )]
        );
        let mut nb = n;
        nb.base_allocation = None;
        assert!(matches!(
            plan(&Op::Extents { offset: 0, len: 1 }, 0, &nb),
            Plan::AllData
        ));
        assert!(matches!(
            plan(&Op::Read { offset: 0, len: 0 }, 0, &n),
            Plan::Now(Ok(()))
        ));
    }
}
