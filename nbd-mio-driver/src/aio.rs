//! Exports whose backend is asynchronous ([`nbd_backends::AsyncBackend`],
//! e.g. `rbd`), driven by the event loop like the `nbd` proxy's upstreams
//! (proxy/upstream.rs). Each loop opens its own queue on such a backend
//! ([`nbd_backends::AioQueue`]) the first time one of its connections
//! selects the export (`Shared::exec_for` gives the connection
//! `Exec::Aio`), and registers the queue's notify fd in its `Poll` under
//! [`crate::event_loop::aio_token`]. The dispatcher submits
//! READ/WRITE/FLUSH/TRIM/WRITE_ZEROES as pool-style [`Job`]s parked here
//! under a tag (their slab key); when the fd is readable the finished ones
//! move to [`Aio::done`], which the loop delivers exactly as finished pool
//! jobs. No thread per request, any number in flight (bounded by each
//! connection's budget). Other commands (block status, resize, cache) go to
//! the worker pool through the synchronous trait.
//!
//! Buffers: the job's own buffer travels to the backend and back. A WRITE's
//! payload is copied once, from the connection's input buffer into it (the
//! backend writes from it without copying); a READ lands behind room for
//! the reply prefix, so `dispatch::complete` queues the whole buffer as an
//! output segment without copying the data.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Weak};

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use nbd_backends::aio::{AioOp, Submitted};
use nbd_backends::{AioQueue, Backend};
use slab::Slab;

use crate::event_loop::aio_token;
use crate::workers::{Job, Op};

/// One loop's queue on one async backend.
struct Entry {
    /// The backend (a connection's handle on the export). Weak, so the
    /// queue does not keep a closed per-connection handle alive; while it
    /// is alive no other backend can share its address, so comparing
    /// addresses identifies it. Jobs in flight hold it strongly.
    backend: Weak<dyn Backend>,
    queue: Box<dyn AioQueue>,
    /// Jobs in flight, keyed by the tag given to the backend.
    jobs: Slab<Box<Job>>,
}

impl Entry {
    fn serves(&self, handle: &Arc<dyn Backend>) -> bool {
        self.backend.strong_count() > 0
            && std::ptr::addr_eq(self.backend.as_ptr(), Arc::as_ptr(handle))
    }
}

/// A loop's queues on async backends.
#[derive(Default)]
pub struct Aio {
    queues: Slab<Entry>,
    /// Finished jobs for the loop to deliver.
    pub done: Vec<Box<Job>>,
}

impl Aio {
    /// This loop's queue on `handle`, opened and registered on first use;
    /// `None` when `handle` is not asynchronous, or when its queue cannot
    /// be opened (logged; the connection then runs on the pool).
    pub fn queue_for(&mut self, handle: &Arc<dyn Backend>, registry: &Registry) -> Option<usize> {
        let a = handle.as_async()?;
        if let Some((key, _)) = self.queues.iter().find(|(_, e)| e.serves(handle)) {
            return Some(key);
        }
        self.prune(registry);
        let queue = a
            .queue()
            .map_err(|e| log::warn!("cannot open an asynchronous queue: {e}"))
            .ok()?;
        let slot = self.queues.vacant_entry();
        let fd: RawFd = queue.notify_fd().as_raw_fd();
        let token = aio_token(slot.key());
        if let Err(e) = registry.register(&mut SourceFd(&fd), token, Interest::READABLE) {
            log::warn!("cannot register an asynchronous queue: {e}");
            return None;
        }
        let key = slot.key();
        slot.insert(Entry {
            backend: Arc::downgrade(handle),
            queue,
            jobs: Slab::new(),
        });
        Some(key)
    }

    /// Close the queues of handles that are gone (every connection that
    /// used one closed and none of its jobs is in flight).
    fn prune(&mut self, registry: &Registry) {
        let dead: Vec<usize> = self
            .queues
            .iter()
            .filter(|(_, e)| e.backend.strong_count() == 0 && e.jobs.is_empty())
            .map(|(k, _)| k)
            .collect();
        for key in dead {
            let e = self.queues.remove(key);
            let fd = e.queue.notify_fd().as_raw_fd();
            let _ = registry.deregister(&mut SourceFd(&fd));
        }
    }

    /// Submit `job` to queue `key`; `payload` is a WRITE's data, `prefix`
    /// the room a READ leaves for its reply header. `Err` gives back a job
    /// that finished at once (refused, or nothing to do) with its result;
    /// otherwise it comes back through [`Aio::done`].
    pub fn submit(
        &mut self,
        key: usize,
        mut job: Box<Job>,
        payload: &[u8],
        prefix: usize,
    ) -> Result<(), Box<Job>> {
        let (Some(entry), Some(op)) = (self.queues.get_mut(key), to_aio(&job.op, prefix)) else {
            job.result = Err(io::Error::from_raw_os_error(libc::EIO));
            return Err(job);
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
        match entry.queue.submit(op, buf, tag) {
            Submitted::Pending => Ok(()),
            Submitted::Now(result, buf) => {
                Err(finished(entry.jobs.remove(key_of(tag)), result, buf))
            }
        }
    }

    /// Queue `key`'s notify fd is readable: collect what finished.
    pub fn on_ready(&mut self, key: usize) {
        let Some(entry) = self.queues.get_mut(key) else {
            return;
        };
        let (jobs, done) = (&mut entry.jobs, &mut self.done);
        entry.queue.poll_completions(&mut |(tag, result, buf)| {
            if let Some(job) = jobs.try_remove(key_of(tag)) {
                done.push(finished(job, result, buf));
            }
        });
    }
}

/// A tag back to the slab key it was made from (tags are keys, so one that
/// does not fit matches no job).
fn key_of(tag: u64) -> usize {
    usize::try_from(tag).unwrap_or(usize::MAX)
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

/// The async form of `op`, if the interface carries it; READs land at
/// `prefix`.
pub fn to_aio(op: &Op, prefix: usize) -> Option<AioOp> {
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
