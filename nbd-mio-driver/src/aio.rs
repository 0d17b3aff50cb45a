//! Exports whose backend is asynchronous ([`nbd_backends::AsyncBackend`],
//! e.g. `rbd`), driven by the event loop like the `nbd` proxy's upstreams
//! (proxy/upstream.rs): the loop opens one queue per such export
//! ([`nbd_backends::AioQueue`]; with several loops, one each) and registers
//! its notify fd in the loop's `Poll`, the dispatcher submits READ/WRITE/FLUSH/TRIM/
//! WRITE_ZEROES as pool-style [`Job`]s parked here under a tag (their slot),
//! and when the fd is readable the finished ones move to `done`, which the
//! server delivers exactly as finished pool jobs. No thread per request,
//! any number in flight (bounded by each connection's back-pressure).
//!
//! Buffers: the job's own buffer travels to the backend and back. A WRITE's
//! payload is copied once, from the connection's input buffer into it; a
//! READ lands behind room for the reply prefix, so `dispatch::complete`
//! hands the whole buffer to the connection without copying the data.
//! Other commands (block status, resize, cache) still go to the worker pool
//! through the synchronous trait.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nbd_backends::aio::{AioOp, Submitted};
use nbd_backends::{AioQueue, Backend, ExportSet};
use slab::Slab;

use crate::workers::{Job, Op};

/// Tokens of async exports: far above any connection's, so the server's
/// other token ranges are unchanged.
const TOKEN_BASE: usize = usize::MAX / 2;

/// The identity of an export's backend: the data pointer of its `Arc`.
fn backend_id(b: &Arc<dyn Backend>) -> usize {
    Arc::as_ptr(b).cast::<()>() as usize
}

/// True for the tokens [`Aio`] registered.
pub fn owns(token: usize) -> bool {
    token >= TOKEN_BASE
}

struct Entry {
    /// This loop's queue on the export's backend.
    queue: Box<dyn AioQueue>,
    id: usize,
    /// Jobs in flight, keyed by the tag given to the backend.
    jobs: Slab<Box<Job>>,
}

/// The loop's asynchronous exports.
#[derive(Default)]
pub struct Aio {
    exports: Vec<Entry>,
    /// Finished jobs for the server to deliver.
    pub done: Vec<Box<Job>>,
}

impl Aio {
    /// Register the notify fd of every export whose backend is async.
    ///
    /// # Errors
    ///
    /// Registration errors.
    pub fn new(exports: &ExportSet, registry: &Registry) -> io::Result<Self> {
        let mut aio = Self::default();
        for e in exports.list() {
            let Some(a) = e.backend.as_async() else {
                continue;
            };
            let queue = a.queue()?;
            let fd: RawFd = queue.notify_fd().as_raw_fd();
            let token = Token(TOKEN_BASE + aio.exports.len());
            registry.register(&mut SourceFd(&fd), token, Interest::READABLE)?;
            aio.exports.push(Entry {
                queue,
                id: backend_id(&e.backend),
                jobs: Slab::new(),
            });
        }
        Ok(aio)
    }

    /// The entry serving `backend` if `op` goes through the async
    /// interface; `None` sends the request the usual way.
    pub fn index(&self, backend: &Arc<dyn Backend>, op: &Op) -> Option<usize> {
        if self.exports.is_empty() || to_aio(op, 0).is_none() {
            return None;
        }
        let id = backend_id(backend);
        self.exports.iter().position(|e| e.id == id)
    }

    /// Submit `job` to entry `i` (from [`Aio::index`]); `payload` is a
    /// WRITE's data, `prefix` the room a READ leaves for its reply header.
    /// The job always comes back through `done`.
    pub fn submit(&mut self, i: usize, mut job: Box<Job>, payload: &[u8], prefix: usize) {
        let Some(entry) = self.exports.get_mut(i) else {
            return;
        };
        let Some(op) = to_aio(&job.op, prefix) else {
            return;
        };
        let mut buf = std::mem::take(&mut job.buf);
        match op {
            AioOp::Write { .. } => {
                buf.clear();
                buf.extend_from_slice(payload);
            }
            AioOp::Read { .. } => job.data_at = prefix,
            _ => {}
        }
        let slot = entry.jobs.vacant_entry();
        let tag = slot.key() as u64;
        slot.insert(job);
        if let Submitted::Now(result, buf) = entry.queue.submit(op, buf, tag) {
            let job = entry.jobs.remove(tag as usize);
            self.done.push(finished(job, result, buf));
        }
    }

    /// The notify fd of `token` is readable: collect what finished.
    pub fn on_ready(&mut self, token: usize) {
        let Some(entry) = self.exports.get_mut(token - TOKEN_BASE) else {
            return;
        };
        let (jobs, done) = (&mut entry.jobs, &mut self.done);
        entry.queue.poll_completions(&mut |(tag, result, buf)| {
            if let Some(job) = usize::try_from(tag).ok().and_then(|t| jobs.try_remove(t)) {
                done.push(finished(job, result, buf));
            }
        });
    }
}

/// `job` with its result and buffer back. A READ's data must sit where
/// `dispatch::complete` takes it from: a backend that hands back a shorter
/// buffer gets EIO, never a panic (an empty READ just gets the room).
fn finished(mut job: Box<Job>, result: io::Result<()>, buf: Vec<u8>) -> Box<Job> {
    job.buf = buf;
    job.result = result;
    if let (Ok(()), Op::Read { len, .. }) = (&job.result, job.op) {
        let end = job.data_at + len;
        if len == 0 && job.buf.len() < end {
            job.buf.resize(end, 0);
        } else if job.buf.len() < end {
            job.result = Err(io::Error::from_raw_os_error(libc::EIO));
        }
    }
    job
}

/// The async form of `op`, if it has one; READs land at `prefix`.
fn to_aio(op: &Op, prefix: usize) -> Option<AioOp> {
    Some(match *op {
        Op::Read { offset, len } => AioOp::Read {
            offset,
            at: prefix,
            len,
        },
        Op::Write { offset, fua } => AioOp::Write { offset, fua },
        Op::Flush => AioOp::Flush,
        Op::Trim { offset, len, fua } => AioOp::Trim { offset, len, fua },
        Op::Zero { offset, len, flags } => AioOp::Zero { offset, len, flags },
        Op::Cache { .. } | Op::Extents { .. } | Op::Resize { .. } => return None,
    })
}
