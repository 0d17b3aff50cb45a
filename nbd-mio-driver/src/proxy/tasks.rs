//! Client requests in progress on an upstream: each is a [`Task`] (the
//! pool-style job plus the commands its [`Plan`](super::plan::Plan)
//! produced), and each command in flight occupies one slot of the
//! upstream `client::Connection`, mapped back to its task here.
//!
//! A task finishes when its last command is answered: with the first
//! error any command reported, else (after the FUA-emulating FLUSH, when
//! the plan asks for one) with success. When the upstream is lost, the
//! commands in flight come back as `Disconnected`: READ, BLOCK_STATUS and
//! CACHE (they change nothing) are sent again once the upstream is back,
//! if the proxy may wait for it (`retry=`); every other task fails with
//! EIO, because whether the upstream executed it is unknown.

use std::collections::VecDeque;
use std::io;
use std::time::Instant;

use nbd_backends::{Extent, ExtentFlags};
use nbd_proto::client::{BlockStatus, Cmd, Connection, Done, ReadData, ReplyError, RequestError};
use nbd_proto::wire::reply::BlockStatusExtent;
use slab::Slab;

use super::plan::{PieceData, Pieces, ZEROES};
use super::upstream::{eio, upstream_error};
use crate::buffer::Buf;
use crate::workers::{Job, Op};

/// Finished jobs. Jobs stay boxed: they move between the loop's free
/// list, connections and upstreams without copying their buffers' headers.
#[allow(clippy::vec_box)]
pub(crate) type JobList = Vec<Box<Job>>;

/// One client request being served upstream.
struct Task {
    job: Box<Job>,
    pieces: Pieces,
    /// Commands sent and not yet answered.
    outstanding: u32,
    error: Option<io::Error>,
    /// The FUA-emulating FLUSH has been planned.
    flushed: bool,
    /// In the send queue (pieces left to send).
    queued: bool,
    /// Lost in flight and safe to resend.
    restart: bool,
    /// Fail with EIO if still unsent by then (waiting for the upstream).
    deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct SlotUse {
    task: usize,
    /// A READ piece's place in the job buffer (relative to the READ).
    rel: usize,
    len: usize,
}

/// Every task of one upstream.
pub(crate) struct Tasks {
    tasks: Slab<Task>,
    slots: Vec<Option<SlotUse>>,
    queue: VecDeque<usize>,
    scratch: Vec<BlockStatusExtent>,
}

/// Commands that change nothing upstream, so resending them after a
/// reconnect is safe.
fn idempotent(op: &Op) -> bool {
    matches!(op, Op::Read { .. } | Op::Extents { .. } | Op::Cache { .. })
}

/// A request the client connection refused to send (a mapping bug or a
/// reconnected upstream with fewer features): the errno to answer with.
fn refused(e: RequestError) -> io::Error {
    let raw = match e {
        RequestError::ReadOnly => libc::EPERM,
        RequestError::OutOfRange | RequestError::Misaligned | RequestError::BadLength => {
            libc::EINVAL
        }
        RequestError::TooLong => libc::EOVERFLOW,
        RequestError::Unsupported(_) | RequestError::Flags(_) => {
            return io::ErrorKind::Unsupported.into();
        }
        _ => libc::EIO,
    };
    io::Error::from_raw_os_error(raw)
}

impl Tasks {
    pub(crate) fn new(slots: usize, max_extents: usize) -> Self {
        Self {
            tasks: Slab::new(),
            slots: vec![None; slots],
            queue: VecDeque::new(),
            scratch: vec![BlockStatusExtent { len: 0, flags: 0 }; max_extents],
        }
    }

    /// Tasks not finished.
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Queue `job` with its commands; `deadline` bounds its wait for an
    /// upstream that is not connected.
    pub(crate) fn add(
        &mut self,
        job: Box<Job>,
        pieces: Pieces,
        deadline: Option<Instant>,
    ) -> usize {
        let key = self.tasks.insert(Task {
            job,
            pieces,
            outstanding: 0,
            error: None,
            flushed: false,
            queued: true,
            restart: false,
            deadline,
        });
        self.queue.push_back(key);
        key
    }

    /// Keep a copy of a WRITE payload the task still needs (it could not
    /// all be sent at once, and the caller's slice does not outlive the
    /// call).
    pub(crate) fn stash_payload(&mut self, key: usize, payload: &[u8]) {
        if let Some(t) = self.tasks.get_mut(key)
            && t.queued
            && matches!(t.job.op, Op::Write { .. })
        {
            t.job.buf.clear();
            t.job.buf.extend_from_slice(payload);
        }
    }

    /// Send queued commands while the connection has free slots. `direct`
    /// is a task whose WRITE payload is still the caller's slice.
    pub(crate) fn pump<const N: usize>(
        &mut self,
        conn: &mut Connection<N>,
        wbuf: &mut Buf,
        direct: Option<(usize, &[u8])>,
        done: &mut JobList,
    ) {
        while conn.can_send() {
            let Some(&key) = self.queue.front() else {
                return;
            };
            let Some(t) = self.tasks.get_mut(key) else {
                self.queue.pop_front();
                continue;
            };
            let Some(piece) = t.pieces.next_piece() else {
                self.queue.pop_front();
                t.queued = false;
                continue;
            };
            if t.pieces.is_done() {
                self.queue.pop_front();
                t.queued = false;
            }
            let len = piece.len as usize;
            let data: &[u8] = match piece.data {
                PieceData::None => &[],
                PieceData::Zeroes => ZEROES.get(..len).unwrap_or_default(),
                PieceData::Payload(from) => {
                    let src = match direct {
                        Some((k, p)) if k == key => p,
                        _ => &t.job.buf,
                    };
                    src.get(from..from + len).unwrap_or_default()
                }
            };
            let cmd = Cmd {
                command: piece.command,
                flags: piece.flags,
                offset: piece.offset,
                len: piece.len,
                data,
            };
            let op_offset = match t.job.op {
                Op::Read { offset, .. } => offset,
                _ => piece.offset,
            };
            let fail = match conn.encode_request(&cmd, wbuf.spare(32 + data.len())) {
                Ok(sent) => {
                    wbuf.commit(sent.len);
                    t.outstanding += 1;
                    let use_ = SlotUse {
                        task: key,
                        rel: piece.rel(op_offset),
                        len,
                    };
                    if let Some(s) = sent.slot.and_then(|s| self.slots.get_mut(s)) {
                        *s = Some(use_);
                    }
                    false
                }
                Err(e) => {
                    log::warn!("nbd proxy: not sent upstream: {:?}: {e}", piece.command);
                    t.error.get_or_insert(refused(e));
                    // Send nothing more of it.
                    if t.queued {
                        t.queued = false;
                        self.queue.pop_front();
                    }
                    true
                }
            };
            if fail {
                self.settle(key, None, done);
            }
        }
    }

    /// READ data for the task holding `d`'s slot.
    pub(crate) fn read_data(&mut self, d: ReadData<'_>) {
        let Some(u) = self.slots.get(d.slot()).copied().flatten() else {
            return;
        };
        if let Some(t) = self.tasks.get_mut(u.task) {
            let start = t.job.data_at + u.rel;
            if let Some(dst) = t.job.buf.get_mut(start..start + u.len) {
                let _ = d.copy_into(dst);
            }
        }
    }

    /// Block-status extents for the task holding `b`'s slot.
    pub(crate) fn block_status(&mut self, b: BlockStatus<'_>) {
        let Some(u) = self.slots.get(b.slot()).copied().flatten() else {
            return;
        };
        let n = b.copy_into(&mut self.scratch);
        if let Some(t) = self.tasks.get_mut(u.task) {
            t.job
                .extents
                .extend(self.scratch.iter().take(n).map(|e| Extent {
                    len: e.len,
                    flags: ExtentFlags::from_bits_truncate(e.flags as u32),
                }));
        }
    }

    /// A command finished. `resend` is the deadline for resending an
    /// idempotent command lost with the connection (`None`: fail it).
    pub(crate) fn piece_done(&mut self, d: Done, resend: Option<Instant>, done: &mut JobList) {
        let Some(u) = self.slots.get_mut(d.slot).and_then(Option::take) else {
            return;
        };
        let Some(t) = self.tasks.get_mut(u.task) else {
            return;
        };
        t.outstanding = t.outstanding.saturating_sub(1);
        match d.result {
            Ok(()) => {}
            Err(ReplyError::Disconnected) if resend.is_some() && idempotent(&t.job.op) => {
                t.restart = true;
            }
            Err(ReplyError::Server(code)) => {
                t.error.get_or_insert(upstream_error(code));
            }
            Err(_) => {
                t.error.get_or_insert(eio());
            }
        }
        self.settle(u.task, resend, done);
    }

    /// Finish, resend or requeue a task whose commands are all answered.
    fn settle(&mut self, key: usize, resend: Option<Instant>, done: &mut JobList) {
        let Some(t) = self.tasks.get_mut(key) else {
            return;
        };
        if t.outstanding > 0 {
            return;
        }
        if t.error.is_some() {
            let t = self.remove(key);
            let mut job = t.job;
            job.result = Err(t.error.unwrap_or_else(eio));
            done.push(job);
            return;
        }
        if t.restart {
            t.restart = false;
            t.pieces.restart();
            t.job.extents.clear();
            t.deadline = resend;
            if !t.queued {
                t.queued = true;
                self.queue.push_front(key);
            }
            return;
        }
        if t.queued {
            return;
        }
        if t.pieces.flush_after && !t.flushed {
            t.flushed = true;
            t.pieces = Pieces::flush();
            t.queued = true;
            self.queue.push_back(key);
            return;
        }
        let mut job = self.remove(key).job;
        job.result = Ok(());
        done.push(job);
    }

    fn remove(&mut self, key: usize) -> Task {
        let t = self.tasks.remove(key);
        if t.queued {
            self.queue.retain(|&k| k != key);
        }
        t
    }

    /// Give every unsent task a deadline (the upstream just went away).
    pub(crate) fn set_deadlines(&mut self, deadline: Instant) {
        for &k in &self.queue {
            if let Some(t) = self.tasks.get_mut(k)
                && t.outstanding == 0
            {
                t.deadline.get_or_insert(deadline);
            }
        }
    }

    /// The upstream is back: queued tasks are sent now, not timed out.
    pub(crate) fn clear_deadlines(&mut self) {
        for (_, t) in &mut self.tasks {
            t.deadline = None;
        }
    }

    /// Fail, with EIO, unsent tasks whose deadline is `now` or earlier
    /// (`None`: all of them).
    pub(crate) fn expire(&mut self, now: Option<Instant>, done: &mut JobList) {
        if now.is_some_and(|n| self.next_deadline().is_none_or(|d| d > n)) {
            return;
        }
        let expired: Vec<usize> = self
            .queue
            .iter()
            .copied()
            .filter(|&k| {
                self.tasks.get(k).is_some_and(|t| {
                    t.outstanding == 0 && now.is_none_or(|n| t.deadline.is_some_and(|d| d <= n))
                })
            })
            .collect();
        for k in expired {
            if let Some(t) = self.tasks.get_mut(k) {
                t.error.get_or_insert(eio());
            }
            self.settle(k, None, done);
        }
    }

    /// The earliest deadline of a waiting task.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.tasks.iter().filter_map(|(_, t)| t.deadline).min()
    }
}
