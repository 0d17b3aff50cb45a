//! Request → backend call → reply.
//!
//! nbd-proto has already validated the request and turned it into an
//! [`Op`]; this maps it to a backend call and the outcome to the reply the
//! [`Pending`] token is owed. Inline backends (memory, null, pattern) run on
//! the loop thread: a READ reserves the reply prefix in the output buffer
//! and the backend reads straight into the space after it, so the data is
//! copied once, from the store into the socket buffer. Other backends run on
//! the worker pool and their replies are encoded when the job comes back.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use mio::Registry;
use slab::Slab;

use nbd_backends::{Backend, Caps, DepthExtent, Execution, Extent, ExtentFlags, ZeroFlags};
use nbd_proto::server::{Connection, NeedRoom, OK_REPLY_MAX, Op, Pending, error_reply_len};
use nbd_proto::wire::reply::BlockStatusExtent;
use nbd_proto::{ErrorCode, HeaderMode};

use crate::errno::to_nbd_errno;
use crate::outq::OutQueue as Buf;
use crate::proxy::upstream::{Submitted, Upstream};
use crate::workers::{self, Job, Pool};

/// Most extents asked of a backend for one block-status reply (the spec's
/// ceiling is 2^20; clients re-query from where a short reply ends).
pub const MAX_EXTENTS: usize = 1024;
/// Reads at least this long on a backend with extents are sent sparsely
/// (holes as OFFSET_HOLE chunks): below it the extra chunk headers cost more
/// than the zero bytes they save.
const SPARSE_READ_MIN: usize = 64 * 1024;
/// Room for one OFFSET_HOLE chunk (extended header + offset + length).
const HOLE_CHUNK_MAX: usize = 32 + 12;

/// Loop-wide state the dispatcher reuses so steady state allocates nothing.
pub struct Shared {
    /// The worker pool, if any backend needs it.
    pub pool: Option<Pool>,
    /// Recycled jobs (with their buffers).
    pub free_jobs: Vec<Box<Job>>,
    /// Scratch extents from a backend.
    pub extents: Vec<Extent>,
    /// Scratch allocation depths from a backend.
    pub depths: Vec<DepthExtent>,
    /// Scratch descriptors for the wire.
    pub descriptors: Vec<BlockStatusExtent>,
    /// Upstream connections of `nbd` proxy exports, driven by the loop:
    /// one per client (`shared=false`) or per export (`shared=true`).
    pub upstreams: Slab<Upstream>,
    /// The upstream serving each `shared=true` proxy export on this loop.
    pub shared_upstreams: HashMap<String, usize>,
    /// This loop's registry, for sockets opened while serving (upstreams).
    pub registry: Registry,
    /// Bytes all this loop's connections hold (output queued, replies
    /// and payloads in flight): its share of `--max-memory`.
    pub held: usize,
    /// [aio hook] This loop's queues on asynchronous backends (rbd).
    pub aio: crate::aio::Aio,
    /// Spare pages for zero-copy WRITEs (inflow.rs).
    pub pages: crate::inflow::PagePool,
}

impl Shared {
    /// Scratch space sized once.
    pub fn new(pool: Option<Pool>, registry: Registry) -> Self {
        Self {
            pool,
            free_jobs: Vec::new(),
            extents: vec![Extent::default(); MAX_EXTENTS],
            depths: vec![DepthExtent::default(); MAX_EXTENTS],
            descriptors: Vec::with_capacity(MAX_EXTENTS),
            upstreams: Slab::new(),
            shared_upstreams: HashMap::new(),
            registry,
            held: 0,
            aio: crate::aio::Aio::default(), // [aio hook]
            pages: crate::inflow::PagePool::default(),
        }
    }

    /// A connection's holding changed from `before` to `after` bytes.
    pub fn account(&mut self, before: usize, after: usize) {
        self.held = (self.held + after).saturating_sub(before);
    }

    /// How requests on `handle` (a connection's handle on export `name`)
    /// run: a proxy's upstream socket served by this loop, the worker pool,
    /// or inline. Decided once, when the client selects the export.
    pub fn exec_for(&mut self, handle: &Arc<dyn Backend>, name: &str) -> Exec {
        if let Some(p) = crate::proxy::as_proxy(&**handle) {
            return self
                .upstream_for(p, name)
                .map_or(Exec::Pool, |(key, owned)| Exec::Upstream { key, owned });
        }
        // [aio hook] An asynchronous backend runs on this loop's queue;
        // what its interface does not carry goes to the pool.
        if self.pool.is_some()
            && let Some(key) = self.aio.queue_for(handle, &self.registry)
        {
            return Exec::Aio { key };
        }
        match handle.execution() {
            Execution::Blocking if self.pool.is_some() => Exec::Pool,
            _ => Exec::Inline,
        }
    }

    /// The upstream for a proxy: its own (a per-client handle), or the
    /// export's on this loop (`shared=true`; the first loop takes the one
    /// opened at start-up, the others connect their own).
    fn upstream_for(&mut self, p: &crate::proxy::Proxy, name: &str) -> Option<(usize, bool)> {
        if p.is_shared()
            && let Some(&key) = self.shared_upstreams.get(name)
        {
            return Some((key, false));
        }
        let taken = match crate::proxy::Proxy::take_for_loop(p) {
            Some(t) => t,
            None if p.is_shared() => p.another_upstream(),
            None => return None,
        };
        let entry = self.upstreams.vacant_entry();
        let token = crate::event_loop::upstream_token(entry.key());
        match Upstream::from_taken(taken, &self.registry, token) {
            Ok(u) => {
                let key = entry.key();
                entry.insert(u);
                if p.is_shared() {
                    self.shared_upstreams.insert(name.to_owned(), key);
                }
                Some((key, !p.is_shared()))
            }
            Err(e) => {
                log::warn!("nbd proxy: cannot register the upstream socket: {e}");
                None
            }
        }
    }
}

/// How a connection's requests run (see [`Shared::exec_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// On the loop thread (memory-only backends).
    Inline,
    /// On the worker pool.
    Pool,
    /// Forwarded to upstream `key` of this loop; `owned`: the connection's
    /// own, closed with it.
    Upstream {
        /// Slab key in [`Shared::upstreams`].
        key: usize,
        /// Per-client (closed with the connection).
        owned: bool,
    },
    /// [aio hook] Submitted to this loop's queue `key` on an asynchronous
    /// backend (aio.rs); block status, resize and cache on the pool.
    Aio {
        /// Slab key of the queue in [`Shared::aio`].
        key: usize,
    },
}

/// The map from a backend error to the wire: the single place that decides.
pub fn wire_error(e: &io::Error) -> ErrorCode {
    ErrorCode::from(to_nbd_errno(e))
}

/// Encode into `out` with `encode`, giving it `room` bytes and, if the
/// encoder reports it needs more, exactly what it asks for. An encoder
/// that still fails would lose a reply (the client would hang and the
/// in-flight count leak), which nbd-proto's contract rules out; a debug
/// build stops there.
pub fn put<T>(
    out: &mut Buf,
    room: usize,
    token: T,
    mut encode: impl FnMut(T, &mut [u8]) -> Result<usize, NeedRoom<T>>,
) {
    let (mut room, mut token) = (room, token);
    loop {
        match encode(token, out.spare(room)) {
            Ok(n) => {
                out.commit(n);
                return;
            }
            Err(NeedRoom { required, token: t }) if required > room => {
                (room, token) = (required, t);
            }
            Err(NeedRoom { required, .. }) => {
                debug_assert!(
                    false,
                    "encoder needs {required} bytes, had {room}: reply lost"
                );
                log::error!("a reply could not be encoded ({required} bytes) and was lost");
                return;
            }
        }
    }
}

/// Success without data.
pub fn reply_ok(conn: &mut Connection, out: &mut Buf, p: Pending) {
    put(out, OK_REPLY_MAX, p, |p, b| conn.reply_ok(p, b));
}

/// An error reply with `message`.
pub fn reply_error(
    conn: &mut Connection,
    out: &mut Buf,
    p: Pending,
    code: ErrorCode,
    message: &str,
) {
    crate::trace::error_reply(&p, code, &message, false);
    let room = error_reply_len(message.len());
    put(out, room, p, |p, b| conn.reply_error(p, code, message, b));
}

/// The error reply for a request the backend failed (`e`, the cause, is
/// logged; the client gets the mapped error's message).
fn reply_io_error(conn: &mut Connection, out: &mut Buf, p: Pending, e: &io::Error) {
    let code = wire_error(e);
    crate::trace::backend_error(&p, code, e);
    let message = code.message();
    put(out, error_reply_len(message.len()), p, |p, b| {
        conn.reply_error(p, code, message, b)
    });
}

/// Success, or the mapped error, for a payload-less command.
pub fn reply_result(conn: &mut Connection, out: &mut Buf, p: Pending, r: &io::Result<()>) {
    match r {
        Ok(()) => reply_ok(conn, out, p),
        Err(e) => {
            reply_io_error(conn, out, p, e);
        }
    }
}

/// Did the request run inline, or was it queued?
#[derive(Debug, PartialEq, Eq)]
pub enum Executed {
    /// The reply is in the output buffer.
    Done,
    /// A job is on the pool or an upstream; its reply comes later. It
    /// holds `cost` bytes of the connection's budget until then.
    Queued {
        /// See [`Job::cost`].
        cost: usize,
    },
}

/// Where a connection's requests go.
pub struct Target<'a> {
    /// The connection's id and slab key, for routing finished jobs back.
    pub conn: (u64, usize),
    /// The export's backend (the connection's own handle).
    pub backend: &'a Arc<dyn Backend>,
    /// How its requests run.
    pub exec: Exec,
}

/// The job form of an operation, and for BLOCK_STATUS the contexts asked.
fn job_op(op: &Op<'_>) -> (workers::Op, u64) {
    let contexts = match *op {
        Op::BlockStatus { contexts, .. } => contexts,
        _ => 0,
    };
    (job_op_only(op), contexts)
}

fn job_op_only(op: &Op<'_>) -> workers::Op {
    match *op {
        Op::Read { offset, len, .. } => workers::Op::Read { offset, len },
        Op::Write { offset, fua, .. } => workers::Op::Write { offset, fua },
        Op::Flush => workers::Op::Flush,
        Op::Trim { offset, len, fua } => workers::Op::Trim { offset, len, fua },
        Op::WriteZeroes {
            offset,
            len,
            fua,
            may_trim,
            fast,
        } => workers::Op::Zero {
            offset,
            len,
            flags: zero_flags(fua, may_trim, fast),
        },
        Op::Cache { offset, len } => workers::Op::Cache { offset, len },
        Op::BlockStatus { offset, len, .. } => workers::Op::Extents { offset, len },
        Op::Resize { size } => workers::Op::Resize { size },
        // `execute` answers operations it does not know before this.
        _ => workers::Op::Flush,
    }
}

fn zero_flags(fua: bool, may_trim: bool, fast: bool) -> ZeroFlags {
    let mut z = ZeroFlags::empty();
    z.set(ZeroFlags::MAY_TRIM, may_trim);
    z.set(ZeroFlags::FAST, fast);
    z.set(ZeroFlags::FUA, fua);
    z
}

/// Run a validated request.
pub fn execute(
    conn: &mut Connection,
    out: &mut Buf,
    target: &Target<'_>,
    op: Op<'_>,
    p: Pending,
    shared: &mut Shared,
) -> Executed {
    let backend = target.backend;
    if !known(&op) {
        reply_error(conn, out, p, ErrorCode::Inval, "unsupported command");
        return Executed::Done;
    }
    match target.exec {
        Exec::Upstream { key, .. } => {
            let data = match op {
                Op::Write { data, .. } => data,
                _ => &[],
            };
            let job = new_job(shared, target, job_op(&op), p);
            let Some(up) = shared.upstreams.get_mut(key) else {
                let mut job = job;
                job.result = Err(io::Error::from_raw_os_error(libc::EIO));
                complete(conn, out, &mut job, &mut shared.descriptors);
                recycle(shared, job);
                return Executed::Done;
            };
            let cost = job.cost;
            match up.submit(job, data) {
                Submitted::Queued => Executed::Queued { cost },
                Submitted::Now(mut job) => {
                    complete(conn, out, &mut job, &mut shared.descriptors);
                    recycle(shared, job);
                    Executed::Done
                }
            }
        }
        Exec::Aio { key } => run_aio(conn, out, target, op, p, shared, key), // [aio hook]
        Exec::Pool => match op {
            // A read the page cache can answer is answered here, without
            // the round trip through a worker (at queue depth 1 that was 11
            // system calls per request against 3).
            Op::Read { offset, len, .. } => {
                match read_cached(conn, out, &**backend, p, offset, len) {
                    Ok(()) => Executed::Done,
                    Err(p) => queue(conn, target, op, p, shared),
                }
            }
            // Likewise a write to a file in memory (tmpfs): the hand-off
            // cost 2 µs of CPU per 4 KiB write and a third of the IOPS
            // (BENCHMARKS.md, file backend, before this). FUA waits for a
            // flush, so it always goes to a worker.
            Op::Write {
                offset,
                data,
                fua: false,
            } if data.len() <= CACHED_READ_MAX && backend.try_write_cached(offset, data) => {
                reply_ok(conn, out, p);
                Executed::Done
            }
            _ => queue(conn, target, op, p, shared),
        },
        Exec::Inline => {
            run_inline(conn, out, backend, op, p, shared);
            Executed::Done
        }
    }
}

/// Largest read (or write) tried from (or into) the page cache on the loop
/// thread (a bigger copy would stall the loop's other clients for too
/// long).
const CACHED_READ_MAX: usize = 1 << 20;

/// Answer a READ from the page cache if it is all there; hand the token
/// back otherwise.
fn read_cached(
    conn: &mut Connection,
    out: &mut Buf,
    backend: &dyn Backend,
    p: Pending,
    offset: u64,
    len: usize,
) -> Result<(), Pending> {
    if len == 0 || len > CACHED_READ_MAX {
        return Err(p);
    }
    let prefix = conn.read_prefix_len();
    let spare = out.spare(prefix + len);
    let (head, data) = spare.split_at_mut(prefix);
    if !backend.try_read_cached(offset, &mut data[..len]) {
        return Err(p);
    }
    match conn.reply_read(p, head) {
        Ok(n) => {
            out.commit(n + len);
            Ok(())
        }
        Err(NeedRoom { token, .. }) => Err(token),
    }
}

/// True for the operations this driver implements (nbd-proto's `Op` may
/// grow: it is `#[non_exhaustive]`).
fn known(op: &Op<'_>) -> bool {
    matches!(
        op,
        Op::Read { .. }
            | Op::Write { .. }
            | Op::Flush
            | Op::Trim { .. }
            | Op::WriteZeroes { .. }
            | Op::Cache { .. }
            | Op::BlockStatus { .. }
            | Op::Resize { .. }
    )
}

/// Put the request on the worker pool.
fn queue(
    conn: &Connection,
    target: &Target<'_>,
    op: Op<'_>,
    p: Pending,
    shared: &mut Shared,
) -> Executed {
    let mut job = new_job(shared, target, job_op(&op), p);
    match op {
        Op::Write { data, .. } => {
            job.buf.clear();
            job.buf.extend_from_slice(data);
            job.cost = data.len();
        }
        // Room in front for the reply prefix, so the finished buffer can
        // become the output buffer without a copy (see `complete`).
        Op::Read { .. } => job.data_at = conn.read_prefix_len(),
        _ => {}
    }
    let cost = job.cost;
    if let Some(pool) = &shared.pool {
        pool.submit(job);
    }
    Executed::Queued { cost }
}

/// [aio hook] Submit the request to the loop's queue `key` (aio.rs), or
/// put it on the pool if the async interface does not carry it.
fn run_aio(
    conn: &mut Connection,
    out: &mut Buf,
    target: &Target<'_>,
    op: Op<'_>,
    p: Pending,
    shared: &mut Shared,
    key: usize,
) -> Executed {
    let jop = job_op(&op);
    if crate::aio::to_aio(&jop.0, 0).is_none() {
        return queue(conn, target, op, p, shared);
    }
    let payload = match op {
        Op::Write { data, .. } => data,
        _ => &[],
    };
    let mut job = new_job(shared, target, jop, p);
    // The WRITE payload is copied into the job (as for the pool).
    job.cost += payload.len();
    let cost = job.cost;
    match shared.aio.submit(key, job, payload, conn.read_prefix_len()) {
        Ok(()) => Executed::Queued { cost },
        Err(mut job) => {
            complete(conn, out, &mut job, &mut shared.descriptors);
            recycle(shared, job);
            Executed::Done
        }
    }
}

fn run_inline(
    conn: &mut Connection,
    out: &mut Buf,
    backend: &Arc<dyn Backend>,
    op: Op<'_>,
    p: Pending,
    shared: &mut Shared,
) {
    match op {
        Op::Read { offset, len, df } => {
            read_inline(conn, out, &**backend, p, offset, len, df, shared)
        }
        Op::Write { offset, data, fua } => {
            let r = backend.write_at(offset, data, fua);
            reply_result(conn, out, p, &r);
        }
        Op::BlockStatus {
            offset,
            len,
            contexts,
            ..
        } => match status_inline(&**backend, offset, len, contexts, shared) {
            Ok((n, d)) => {
                let runs = Runs {
                    contexts,
                    extents: &shared.extents[..n],
                    depths: &shared.depths[..d],
                };
                reply_block_status(conn, out, p, &runs, &mut shared.descriptors);
            }
            Err(e) => reply_result(conn, out, p, &Err(e)),
        },
        Op::Resize { size } => {
            let r = backend.resize(size);
            reply_result(conn, out, p, &r);
        }
        Op::Flush => reply_result(conn, out, p, &backend.flush()),
        Op::Trim { offset, len, fua } => {
            reply_result(conn, out, p, &backend.trim(offset, len, fua))
        }
        Op::WriteZeroes {
            offset,
            len,
            fua,
            may_trim,
            fast,
        } => {
            let r = backend.write_zeroes(offset, len, zero_flags(fua, may_trim, fast));
            reply_result(conn, out, p, &r);
        }
        Op::Cache { offset, len } => reply_result(conn, out, p, &backend.cache(offset, len)),
        _ => reply_error(conn, out, p, ErrorCode::Inval, "unsupported command"),
    }
}

/// A recycled (or, until the free list warms up, new) job for `op`.
fn new_job(
    shared: &mut Shared,
    target: &Target<'_>,
    (op, contexts): (workers::Op, u64),
    p: Pending,
) -> Box<Job> {
    let flags = p.flags();
    let mut job = shared.free_jobs.pop().unwrap_or_else(|| {
        Box::new(Job {
            conn_id: 0,
            token: 0,
            reply: None,
            flags,
            backend: Arc::clone(target.backend),
            op,
            buf: Vec::new(),
            data_at: 0,
            extents: Vec::with_capacity(MAX_EXTENTS),
            contexts: 0,
            depths: Vec::new(),
            result: Ok(()),
            cost: 0,
        })
    });
    job.conn_id = target.conn.0;
    job.token = target.conn.1;
    job.reply = Some(p);
    job.flags = flags;
    job.backend = Arc::clone(target.backend);
    job.op = op;
    job.data_at = 0;
    job.result = Ok(());
    job.cost = cost_of(&op);
    job.contexts = contexts;
    job
}

/// What a queued operation holds against its connection's memory budget:
/// the reply data it will produce (READ). A WRITE's payload is copied
/// into the job for the pool; it is counted where it is copied (`queue`).
fn cost_of(op: &workers::Op) -> usize {
    match *op {
        workers::Op::Read { len, .. } => len,
        _ => 0,
    }
}

/// The largest job buffer kept when a job is recycled: bigger ones (a
/// 32 MiB READ) are freed, so a burst does not pin its memory in the free
/// list of every loop.
pub const JOB_BUF_KEEP: usize = (1 << 20) + 64;
/// Most recycled jobs kept per loop.
pub const FREE_JOBS_KEEP: usize = 256;

/// Put a finished job back on the free list, trimmed (see
/// [`JOB_BUF_KEEP`], [`FREE_JOBS_KEEP`]).
pub fn recycle(shared: &mut Shared, mut job: Box<Job>) {
    job.reply = None;
    if job.buf.capacity() > JOB_BUF_KEEP {
        job.buf = Vec::new();
    }
    if shared.free_jobs.len() < FREE_JOBS_KEEP {
        shared.free_jobs.push(job);
    }
}

/// Read straight into the output buffer behind a reserved reply prefix.
/// With `p` (the whole request) the prefix ends the reply; without, it is
/// one chunk of a chunked reply. On a backend error nothing is committed.
fn read_piece(
    conn: &mut Connection,
    out: &mut Buf,
    backend: &dyn Backend,
    chunk_of: Result<&Pending, Pending>,
    offset: u64,
    len: usize,
) -> Result<(), (io::Error, Option<Pending>)> {
    let chunk_of = match lend(conn, out, backend, chunk_of, offset, len) {
        Lend::Sent(r) => return r,
        Lend::Copy(c) => c,
    };
    let prefix = conn.read_prefix_len();
    let spare = out.spare(prefix + len);
    let (head, data) = spare.split_at_mut(prefix);
    let data = &mut data[..len];
    match chunk_of {
        Ok(p) => {
            backend.read_at(offset, data).map_err(|e| (e, None))?;
            // The prefix slot is exactly the prefix: it cannot be too small.
            let n = conn.read_chunk(p, offset, len, head).unwrap_or(0);
            out.commit(n + len);
        }
        Err(p) => {
            if let Err(e) = backend.read_at(offset, data) {
                return Err((e, Some(p)));
            }
            match conn.reply_read(p, head) {
                Ok(n) => out.commit(n + len),
                Err(NeedRoom { required, .. }) => {
                    debug_assert!(false, "read prefix needs {required}");
                }
            }
        }
    }
    Ok(())
}

/// Smallest READ (or data chunk) answered with lent pages. Below it the
/// copy is a few µs at most, while a lent page costs a reference taken and
/// dropped, and a WRITE that reaches the page before the reply is sent
/// copies it (an allocation): small random I/O, where that race is likely
/// and the copy cheap, keeps copying (and allocating nothing).
const LEND_MIN: usize = 64 * 1024;

/// What [`lend`] did.
enum Lend<'a> {
    /// The reply (or chunk) is queued, or failed with this error.
    Sent(Result<(), (io::Error, Option<Pending>)>),
    /// The backend cannot lend: copy, with the token given back.
    Copy(Result<&'a Pending, Pending>),
}

/// Answer a READ (or one data chunk of it) with the backend's own pages,
/// if it lends them: one copy of the data (by `writev`, into the socket)
/// instead of two.
fn lend<'a>(
    conn: &mut Connection,
    out: &mut Buf,
    backend: &dyn Backend,
    chunk_of: Result<&'a Pending, Pending>,
    offset: u64,
    len: usize,
) -> Lend<'a> {
    if len < LEND_MIN || !out.lends() {
        return Lend::Copy(chunk_of);
    }
    let mut pieces = out.lent_list(nbd_backends::lent::pieces_for(offset, len));
    match backend.read_lent(offset, len, &mut pieces) {
        None => {
            out.recycle_lent(pieces);
            Lend::Copy(chunk_of)
        }
        Some(Err(e)) => {
            out.recycle_lent(pieces);
            Lend::Sent(Err((e, chunk_of.err())))
        }
        Some(Ok(())) => {
            let prefix = conn.read_prefix_len();
            let head = &mut out.spare(prefix)[..prefix];
            // The prefix slot is exactly the prefix: it cannot be too small.
            let n = match chunk_of {
                Ok(p) => conn.read_chunk(p, offset, len, head).unwrap_or(0),
                Err(p) => {
                    conn.reply_read(p, head)
                        .unwrap_or_else(|NeedRoom { required, .. }| {
                            debug_assert!(false, "read prefix needs {required}");
                            0
                        })
                }
            };
            out.commit(n);
            if n > 0 {
                out.push_lent(pieces);
            } else {
                out.recycle_lent(pieces);
            }
            Lend::Sent(Ok(()))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn read_inline(
    conn: &mut Connection,
    out: &mut Buf,
    backend: &dyn Backend,
    p: Pending,
    offset: u64,
    len: usize,
    df: bool,
    shared: &mut Shared,
) {
    let structured = conn
        .negotiated()
        .is_some_and(|n| n.mode != HeaderMode::Simple);
    let sparse =
        structured && !df && len >= SPARSE_READ_MIN && backend.caps().contains(Caps::EXTENTS);
    if !sparse {
        if let Err((e, Some(p))) = read_piece(conn, out, backend, Err(p), offset, len) {
            reply_io_error(conn, out, p, &e);
        }
        return;
    }
    // Sparse read: zero runs become OFFSET_HOLE chunks (beyond nbdkit,
    // which always sends data), data runs are read in place.
    let n = backend
        .extents(offset, len as u64, &mut shared.extents)
        .unwrap_or(0)
        .min(shared.extents.len());
    let end = offset + len as u64;
    let mut pos = offset;
    let runs = shared.extents[..n]
        .iter()
        .map(|e| (e.len, e.flags.contains(ExtentFlags::ZERO)));
    // Whatever the extents did not cover is read as data.
    for (run, zero) in runs.chain(std::iter::once((u64::MAX, false))) {
        if pos >= end {
            break;
        }
        let piece = run.min(end - pos);
        let r = if zero {
            let hole = u32::try_from(piece).unwrap_or(u32::MAX);
            let n = conn
                .read_hole(&p, pos, hole, out.spare(HOLE_CHUNK_MAX))
                .unwrap_or(0);
            out.commit(n);
            Ok(())
        } else {
            read_piece(conn, out, backend, Ok(&p), pos, piece as usize)
        };
        if let Err((e, _)) = r {
            reply_io_error(conn, out, p, &e);
            return;
        }
        pos += piece;
    }
    put(out, OK_REPLY_MAX, p, |p, b| conn.reply_done(p, b));
}

/// What a BLOCK_STATUS found, per context.
pub struct Runs<'a> {
    /// The contexts asked about (`conn::META_*` bits).
    pub contexts: u64,
    /// `base:allocation` runs.
    pub extents: &'a [Extent],
    /// `qemu:allocation-depth` runs.
    pub depths: &'a [DepthExtent],
}

/// Ask an inline backend for the runs `contexts` need, into the loop's
/// scratch lists; returns how many of each.
fn status_inline(
    b: &dyn Backend,
    offset: u64,
    len: u64,
    contexts: u64,
    shared: &mut Shared,
) -> io::Result<(usize, usize)> {
    let mut n = 0;
    let mut d = 0;
    if contexts & crate::conn::META_BASE != 0 {
        n = b
            .extents(offset, len, &mut shared.extents)?
            .min(shared.extents.len());
    }
    if contexts & crate::conn::META_DEPTH != 0 {
        d = b
            .allocation_depth(offset, len, &mut shared.depths)?
            .min(shared.depths.len());
    }
    Ok((n, d))
}

/// Encode the block-status reply: one chunk per context asked about (ID 1
/// `base:allocation`, ID 2 `qemu:allocation-depth`), the last one final;
/// nbd-proto applies the spec's clipping and merging rules.
pub fn reply_block_status(
    conn: &mut Connection,
    out: &mut Buf,
    p: Pending,
    runs: &Runs<'_>,
    desc: &mut Vec<BlockStatusExtent>,
) {
    let mode = conn.negotiated().map_or(HeaderMode::Structured, |n| n.mode);
    let base = runs.contexts & crate::conn::META_BASE != 0;
    let depth = runs.contexts & crate::conn::META_DEPTH != 0;
    if base {
        desc.clear();
        desc.extend(
            runs.extents
                .iter()
                .take(MAX_EXTENTS)
                .map(|e| BlockStatusExtent {
                    len: e.len,
                    flags: u64::from((e.flags & (ExtentFlags::HOLE | ExtentFlags::ZERO)).bits()),
                }),
        );
        let room = nbd_proto::wire::reply::block_status_len(mode, desc.len().max(1));
        if !depth {
            put(out, room, p, |p, b| conn.reply_block_status(p, 1, desc, b));
            return;
        }
        let n = conn
            .block_status_chunk(&p, 1, desc, out.spare(room))
            .unwrap_or(0);
        out.commit(n);
    }
    desc.clear();
    desc.extend(
        runs.depths
            .iter()
            .take(MAX_EXTENTS)
            .map(|d| BlockStatusExtent {
                len: d.len,
                flags: u64::from(d.depth),
            }),
    );
    let room = nbd_proto::wire::reply::block_status_len(mode, desc.len().max(1));
    put(out, room, p, |p, b| conn.reply_block_status(p, 2, desc, b));
}

/// Encode the reply of a finished pool or upstream job.
pub fn complete(
    conn: &mut Connection,
    out: &mut Buf,
    job: &mut Job,
    desc: &mut Vec<BlockStatusExtent>,
) {
    let Some(p) = job.reply.take() else {
        debug_assert!(false, "a job without a reply token");
        return;
    };
    if let Err(e) = &job.result {
        reply_io_error(conn, out, p, e);
        return;
    }
    match job.op {
        workers::Op::Read { len, .. } => {
            let prefix = conn.read_prefix_len();
            let start = job.data_at;
            if start == prefix && job.buf.len() >= prefix + len {
                // The worker left room for the prefix: encode it in place and
                // queue the job's buffer itself. No copy of the data.
                match conn.reply_read(p, &mut job.buf[..prefix]) {
                    Ok(n) if n == prefix => out.push_vec(&mut job.buf, 0, prefix + len),
                    // An empty READ: a lone NONE chunk, shorter than the prefix.
                    Ok(n) => out.extend(&job.buf[..n]),
                    Err(_) => debug_assert!(false, "read prefix of {prefix} bytes"),
                }
                return;
            }
            let spare = out.spare(prefix + len);
            spare[prefix..prefix + len].copy_from_slice(&job.buf[start..start + len]);
            match conn.reply_read(p, &mut spare[..prefix]) {
                Ok(n) => out.commit(n + if n == prefix { len } else { 0 }),
                Err(_) => debug_assert!(false, "read prefix of {prefix} bytes"),
            }
        }
        workers::Op::Extents { .. } => {
            // Upstream (proxy) jobs only ever carry base:allocation.
            let contexts = if job.contexts == 0 {
                crate::conn::META_BASE
            } else {
                job.contexts
            };
            let runs = Runs {
                contexts,
                extents: &job.extents,
                depths: &job.depths,
            };
            reply_block_status(conn, out, p, &runs, desc);
        }
        _ => reply_ok(conn, out, p),
    }
}
