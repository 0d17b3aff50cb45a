//! Request → backend call → reply.
//!
//! Inline backends (memory, null, pattern) run on the loop thread: a READ
//! reserves the reply prefix in the output buffer and the backend reads
//! straight into the space after it, so the data is copied once, from the
//! store into the socket buffer. Other backends run on the worker pool and
//! their replies are encoded when the job comes back.

use std::io;
use std::sync::Arc;

use nbd_backends::{Backend, Caps, Extent, ExtentFlags, ZeroFlags};
use nbd_proto::server::Transmission;
use nbd_proto::wire::reply::{BlockStatusExtent, ReplyTo};
use nbd_proto::wire::request::Request;
use nbd_proto::{CmdFlags, Command, ErrorCode, HeaderMode};

use crate::buffer::Buf;
use crate::errno::to_nbd_errno;
use crate::proxy::upstream::{Submitted, Upstream};
use crate::workers::{Job, Op, Pool};

/// Most extents sent in one block-status chunk (the spec's ceiling is
/// 2^20; clients re-query from where a short reply ends).
pub const MAX_EXTENTS: usize = 1024;
/// Reads at least this long on a backend with extents are sent sparsely
/// (holes as OFFSET_HOLE chunks): below it the extra chunk headers cost more
/// than the zero bytes they save.
const SPARSE_READ_MIN: usize = 64 * 1024;
/// Room kept for an error reply (header + the longest message we send).
const ERROR_REPLY_ROOM: usize = 32 + 6 + 128;

/// Loop-wide state the dispatcher reuses so steady state allocates nothing.
pub struct Shared {
    /// The worker pool, if any backend needs it.
    pub pool: Option<Pool>,
    /// Recycled jobs (with their buffers).
    pub free_jobs: Vec<Box<Job>>,
    /// Scratch extents from a backend.
    pub extents: Vec<Extent>,
    /// Scratch descriptors for the wire.
    pub descriptors: Vec<BlockStatusExtent>,
    /// Upstream connections of `nbd` proxy exports, driven by the loop.
    pub upstreams: Vec<Upstream>,
    /// [aio hook] Exports with an async backend (rbd), driven by the loop.
    pub aio: crate::aio::Aio,
}

impl Shared {
    /// Scratch space sized once.
    pub fn new(pool: Option<Pool>) -> Self {
        Self {
            pool,
            free_jobs: Vec::new(),
            extents: vec![Extent::default(); MAX_EXTENTS],
            descriptors: Vec::with_capacity(MAX_EXTENTS),
            upstreams: Vec::new(),
            aio: crate::aio::Aio::default(), // [aio hook]
        }
    }
}

/// The map from a backend error to the wire: the single place that decides.
pub fn wire_error(e: &io::Error) -> ErrorCode {
    ErrorCode::from(to_nbd_errno(e))
}

/// Did the request run inline, or was it queued on the pool?
#[derive(Debug, PartialEq, Eq)]
pub enum Executed {
    /// The reply is in the output buffer.
    Done,
    /// A job is on the pool; its reply comes later.
    Queued,
}

fn zero_flags(f: CmdFlags) -> ZeroFlags {
    let mut z = ZeroFlags::empty();
    if !f.contains(CmdFlags::NO_HOLE) {
        z |= ZeroFlags::MAY_TRIM;
    }
    if f.contains(CmdFlags::FAST_ZERO) {
        z |= ZeroFlags::FAST;
    }
    if f.contains(CmdFlags::FUA) {
        z |= ZeroFlags::FUA;
    }
    z
}

/// Encode success or the mapped error for a payload-less command.
pub fn reply_result(t: &mut Transmission, out: &mut Buf, to: ReplyTo, r: &io::Result<()>) {
    let spare = out.spare(ERROR_REPLY_ROOM);
    let n = match r {
        Ok(()) => t.reply_ok(to, spare),
        Err(e) => {
            let code = wire_error(e);
            t.reply_error(to, code, code.message(), spare)
        }
    };
    out.commit(n.unwrap_or(0));
}

/// Encode an error reply.
pub fn reply_error(
    t: &mut Transmission,
    out: &mut Buf,
    to: ReplyTo,
    code: ErrorCode,
    message: &str,
) {
    let n = t.reply_error(
        to,
        code,
        message,
        out.spare(ERROR_REPLY_ROOM + message.len()),
    );
    out.commit(n.unwrap_or(0));
}

/// Run a validated request.
pub fn execute(
    conn: (u64, usize),
    t: &mut Transmission,
    out: &mut Buf,
    backend: &Arc<dyn Backend>,
    req: &Request<'_>,
    shared: &mut Shared,
) -> Executed {
    let h = req.header;
    let to = ReplyTo {
        cookie: h.cookie,
        offset: h.offset,
    };
    let fua = h.flags.contains(CmdFlags::FUA);
    // Lengths were validated against the export size (a u64) and, for
    // READ/WRITE, against the maximum payload, so they fit usize.
    let op = match h.command {
        Command::Read => Op::Read {
            offset: h.offset,
            len: h.len as usize,
        },
        Command::Write => Op::Write {
            offset: h.offset,
            fua,
        },
        Command::Flush => Op::Flush,
        Command::Trim => Op::Trim {
            offset: h.offset,
            len: h.len,
            fua,
        },
        Command::WriteZeroes => Op::Zero {
            offset: h.offset,
            len: h.len,
            flags: zero_flags(h.flags),
        },
        Command::Cache => Op::Cache {
            offset: h.offset,
            len: h.len,
        },
        Command::BlockStatus => {
            let len = if h.flags.contains(CmdFlags::PAYLOAD_LEN) {
                nbd_proto_effect_len(req.data)
            } else {
                h.len
            };
            Op::Extents {
                offset: h.offset,
                len,
            }
        }
        Command::Resize => Op::Resize { size: h.offset },
        Command::Disc | Command::Unknown(_) => {
            reply_error(t, out, to, ErrorCode::Inval, "unknown command");
            return Executed::Done;
        }
    };
    if let Op::Read { len: 0, .. } = op
        && t.mode() != HeaderMode::Simple
    {
        // An OFFSET_DATA chunk carries at least one byte (checklist 98):
        // an empty READ is answered with a lone NONE chunk instead.
        let n = t.encode_done(to, out.spare(64)).unwrap_or(0);
        out.commit(n);
        return Executed::Done;
    }
    if !shared.upstreams.is_empty() {
        // An `nbd` proxy export: forward on the loop (proxy/upstream.rs).
        let id = crate::proxy::backend_id(backend);
        if let Some(i) = shared.upstreams.iter().position(|u| u.backend_id == id) {
            let job = new_job(shared, conn, to, h.flags, backend, op);
            let up = &mut shared.upstreams[i];
            return match up.submit(job, req.data) {
                Submitted::Queued => Executed::Queued,
                Submitted::Now(mut job) => {
                    complete(t, out, &mut job, &mut shared.descriptors);
                    shared.free_jobs.push(job);
                    Executed::Done
                }
            };
        }
    }
    // [aio hook] An async backend (rbd): submitted on the loop (aio.rs).
    if let Some(i) = shared.aio.index(backend, &op) {
        let job = new_job(shared, conn, to, h.flags, backend, op);
        shared.aio.submit(i, job, req.data, t.read_prefix_len());
        return Executed::Queued;
    }
    if backend.execution() == nbd_backends::Execution::Blocking && shared.pool.is_some() {
        let mut job = new_job(shared, conn, to, h.flags, backend, op);
        match op {
            Op::Write { .. } => {
                job.buf.clear();
                job.buf.extend_from_slice(req.data);
            }
            Op::Read { .. } => job.data_at = t.read_prefix_len(),
            _ => {}
        }
        if let Some(pool) = &shared.pool {
            pool.submit(job);
        }
        return Executed::Queued;
    }
    match op {
        Op::Read { offset, len } => read_inline(t, out, backend, to, h.flags, offset, len, shared),
        Op::Write { offset, fua } => {
            let r = backend.write_at(offset, req.data, fua);
            reply_result(t, out, to, &r);
        }
        Op::Extents { offset, len } => {
            let r = backend.extents(offset, len, &mut shared.extents);
            match r {
                Ok(n) => {
                    let (ext, desc) = (&shared.extents[..n], &mut shared.descriptors);
                    reply_extents(t, out, to, h.flags, len, ext, desc);
                }
                Err(e) => reply_result(t, out, to, &Err(e)),
            }
        }
        Op::Resize { size } => {
            let r = backend.resize(size);
            if r.is_ok() {
                t.set_size(size);
            }
            reply_result(t, out, to, &r);
        }
        other => {
            let r = run_simple(&**backend, other);
            reply_result(t, out, to, &r);
        }
    }
    Executed::Done
}

/// A recycled (or, until the free list warms up, new) job for `op`.
fn new_job(
    shared: &mut Shared,
    conn: (u64, usize),
    to: ReplyTo,
    flags: CmdFlags,
    backend: &Arc<dyn Backend>,
    op: Op,
) -> Box<Job> {
    let mut job = shared.free_jobs.pop().unwrap_or_else(|| {
        Box::new(Job {
            conn_id: 0,
            token: 0,
            to,
            flags,
            backend: Arc::clone(backend),
            op,
            buf: Vec::new(),
            data_at: 0,
            extents: Vec::with_capacity(MAX_EXTENTS),
            result: Ok(()),
        })
    });
    job.conn_id = conn.0;
    job.token = conn.1;
    job.to = to;
    job.flags = flags;
    job.backend = Arc::clone(backend);
    job.op = op;
    job.data_at = 0;
    job.result = Ok(());
    job
}

/// The effect length of a BLOCK_STATUS payload (validated by nbd-proto).
fn nbd_proto_effect_len(payload: &[u8]) -> u64 {
    payload
        .first_chunk::<8>()
        .map(|b| u64::from_be_bytes(*b))
        .unwrap_or(0)
}

fn run_simple(b: &dyn Backend, op: Op) -> io::Result<()> {
    match op {
        Op::Flush => b.flush(),
        Op::Trim { offset, len, fua } => b.trim(offset, len, fua),
        Op::Zero { offset, len, flags } => b.write_zeroes(offset, len, flags),
        Op::Cache { offset, len } => b.cache(offset, len),
        _ => Ok(()),
    }
}

/// Read straight into the output buffer behind a reserved reply prefix.
/// On a backend error nothing is committed and the error is returned.
fn read_piece(
    t: &mut Transmission,
    out: &mut Buf,
    backend: &dyn Backend,
    to: ReplyTo,
    offset: u64,
    len: usize,
    done: bool,
) -> io::Result<()> {
    let prefix = t.read_prefix_len();
    let spare = out.spare(prefix + len);
    backend.read_at(offset, &mut spare[prefix..prefix + len])?;
    let n = t
        .encode_read_prefix(to, offset, len, done, &mut spare[..prefix])
        .unwrap_or(0);
    out.commit(n + len);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn read_inline(
    t: &mut Transmission,
    out: &mut Buf,
    backend: &Arc<dyn Backend>,
    to: ReplyTo,
    flags: CmdFlags,
    offset: u64,
    len: usize,
    shared: &mut Shared,
) {
    let sparse = t.mode() != HeaderMode::Simple
        && !flags.contains(CmdFlags::DF)
        && len >= SPARSE_READ_MIN
        && backend.caps().contains(Caps::EXTENTS);
    if !sparse {
        if let Err(e) = read_piece(t, out, &**backend, to, offset, len, true) {
            let code = wire_error(&e);
            reply_error(t, out, to, code, code.message());
        }
        return;
    }
    // Sparse read: zero runs become OFFSET_HOLE chunks (beyond nbdkit,
    // which always sends data), data runs are read in place.
    let n = backend
        .extents(offset, len as u64, &mut shared.extents)
        .unwrap_or(0);
    let end = offset + len as u64;
    let mut pos = offset;
    for e in &shared.extents[..n] {
        if pos >= end {
            break;
        }
        let piece = e.len.min(end - pos);
        let r = if e.flags.contains(ExtentFlags::ZERO) {
            let n = t
                .encode_hole(to, pos, piece as u32, false, out.spare(64))
                .unwrap_or(0);
            out.commit(n);
            Ok(())
        } else {
            read_piece(t, out, &**backend, to, pos, piece as usize, false)
        };
        if let Err(e) = r {
            let code = wire_error(&e);
            reply_error(t, out, to, code, code.message());
            return;
        }
        pos += piece;
    }
    if pos < end
        && let Err(e) = read_piece(t, out, &**backend, to, pos, (end - pos) as usize, false)
    {
        let code = wire_error(&e);
        reply_error(t, out, to, code, code.message());
        return;
    }
    let n = t.encode_done(to, out.spare(64)).unwrap_or(0);
    out.commit(n);
}

/// Encode the block-status reply for `base:allocation` (context ID 1, the
/// only context nbdd offers) from backend extents.
pub fn reply_extents(
    t: &mut Transmission,
    out: &mut Buf,
    to: ReplyTo,
    flags: CmdFlags,
    req_len: u64,
    extents: &[Extent],
    desc: &mut Vec<BlockStatusExtent>,
) {
    desc.clear();
    let compact = t.mode() != HeaderMode::Extended;
    let mut covered = 0u64;
    for e in extents {
        if e.len == 0 || covered >= req_len {
            break;
        }
        // Clip to the request so 32-bit descriptors always fit.
        let mut len = e.len.min(req_len - covered);
        if compact {
            len = len.min(u64::from(u32::MAX) & !511);
        }
        let status = u64::from((e.flags & (ExtentFlags::HOLE | ExtentFlags::ZERO)).bits());
        match desc.last_mut() {
            // Merge runs with the same status (SHOULD differ, proto.md).
            Some(last) if last.flags == status && !flags.contains(CmdFlags::REQ_ONE) => {
                last.len += len
            }
            _ => desc.push(BlockStatusExtent { len, flags: status }),
        }
        covered += len;
        if flags.contains(CmdFlags::REQ_ONE) || desc.len() == MAX_EXTENTS {
            break;
        }
    }
    if desc.is_empty() {
        // A backend that described nothing: report the range as data, which
        // is always a legal answer.
        desc.push(BlockStatusExtent {
            len: req_len.clamp(1, u64::from(u32::MAX) & !511),
            flags: 0,
        });
    }
    let room = nbd_proto::wire::reply::block_status_len(t.mode(), desc.len());
    let n = t
        .encode_block_status(to, 1, desc, true, out.spare(room))
        .unwrap_or(0);
    out.commit(n);
}

/// Encode the reply of a finished pool job.
pub fn complete(
    t: &mut Transmission,
    out: &mut Buf,
    job: &mut Job,
    desc: &mut Vec<BlockStatusExtent>,
) {
    let to = job.to;
    if let Err(e) = &job.result {
        let code = wire_error(e);
        reply_error(t, out, to, code, code.message());
        return;
    }
    match job.op {
        Op::Read { offset, len } => {
            let prefix = t.read_prefix_len();
            let start = job.data_at;
            if out.is_empty() && start == prefix && job.buf.len() >= prefix + len {
                // The worker left room for the prefix: encode it in place and
                // hand the whole buffer to the connection, whose old storage
                // goes back with the job. No copy of the data.
                if let Ok(n) = t.encode_read_prefix(to, offset, len, true, &mut job.buf[..prefix]) {
                    out.swap_storage(&mut job.buf, n + len);
                    return;
                }
            }
            let spare = out.spare(prefix + len);
            spare[prefix..prefix + len].copy_from_slice(&job.buf[start..start + len]);
            let n = t
                .encode_read_prefix(to, offset, len, true, &mut spare[..prefix])
                .unwrap_or(0);
            out.commit(n + len);
        }
        Op::Extents { len, .. } => reply_extents(t, out, to, job.flags, len, &job.extents, desc),
        Op::Resize { size } => {
            t.set_size(size);
            reply_result(t, out, to, &Ok(()));
        }
        _ => reply_result(t, out, to, &Ok(())),
    }
}
