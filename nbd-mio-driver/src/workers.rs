//! A small pool of threads for backends that may block (file I/O, remote
//! servers), so a slow disk never stalls other connections on the event
//! loop. Jobs carry their own buffers, which come back with the result and
//! are recycled by the loop; a finished job wakes the loop through a
//! `mio::Waker`.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use nbd_backends::{Backend, DepthExtent, Extent, ZeroFlags};
use nbd_proto::server::Pending;

/// What a job does.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Read `len` bytes into the job buffer.
    Read { offset: u64, len: usize },
    /// Write the job buffer.
    Write { offset: u64, fua: bool },
    /// Flush.
    Flush,
    /// Trim.
    Trim { offset: u64, len: u64, fua: bool },
    /// Write zeroes.
    Zero {
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    },
    /// Cache.
    Cache { offset: u64, len: u64 },
    /// Extents into the job's extent list.
    Extents { offset: u64, len: u64 },
    /// Resize.
    Resize { size: u64 },
}

/// One unit of work and, once done, its result.
pub struct Job {
    /// The connection's unique id (slab slots are reused; ids are not).
    pub conn_id: u64,
    /// Slab key of the connection.
    pub token: usize,
    /// The reply the request is owed (taken when the reply is encoded).
    pub reply: Option<Pending>,
    /// Request flags the reply needs (REQ_ONE, DF).
    pub flags: nbd_proto::CmdFlags,
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// The operation.
    pub op: Op,
    /// Data buffer (write payload in, read data out). Its length only
    /// grows, so a read never pays to zero-fill memory it overwrites.
    pub buf: Vec<u8>,
    /// Where read data starts in `buf`: pool reads leave room in front for
    /// the reply prefix so the finished buffer can become the connection's
    /// output buffer without a copy (see `dispatch::complete`).
    pub data_at: usize,
    /// Extents out.
    pub extents: Vec<Extent>,
    /// For BLOCK_STATUS: the contexts asked about (`conn::META_*` bits).
    pub contexts: u64,
    /// Allocation depths out (`qemu:allocation-depth`).
    pub depths: Vec<DepthExtent>,
    /// Bytes this job holds against its connection's budget (a READ's
    /// reply data, a WRITE's payload), given back when it completes.
    pub cost: usize,
    /// Result.
    pub result: io::Result<()>,
}

impl Job {
    /// Run the operation. A backend that panics fails this request with
    /// EIO instead of taking the worker (and the job, whose reply the
    /// client waits for) with it.
    fn run(&mut self) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_op()));
        if r.is_err() {
            log::error!("a backend panicked; the request fails with EIO");
            self.result = Err(io::Error::from_raw_os_error(libc::EIO));
        }
    }

    fn run_op(&mut self) {
        let b = &*self.backend;
        self.result = match self.op {
            Op::Read { offset, len } => {
                let end = self.data_at + len;
                if self.buf.len() < end {
                    self.buf.resize(end, 0);
                }
                b.read_at(offset, &mut self.buf[self.data_at..end])
            }
            Op::Write { offset, fua } => b.write_at(offset, &self.buf, fua),
            Op::Flush => b.flush(),
            Op::Trim { offset, len, fua } => b.trim(offset, len, fua),
            Op::Zero { offset, len, flags } => b.write_zeroes(offset, len, flags),
            Op::Cache { offset, len } => b.cache(offset, len),
            Op::Extents { offset, len } => self.block_status(offset, len),
            Op::Resize { size } => b.resize(size),
        };
    }

    /// The runs each asked-for context needs: allocation depths
    /// (`qemu:allocation-depth`) and extents (`base:allocation`).
    fn block_status(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let b = &*self.backend;
        self.depths.clear();
        self.extents.clear();
        if self.contexts & crate::conn::META_DEPTH != 0 {
            let cap = crate::dispatch::MAX_EXTENTS;
            self.depths.resize(cap, DepthExtent::default());
            let n = b.allocation_depth(offset, len, &mut self.depths)?;
            // A count beyond the slice is the backend's bug; never trust it
            // further than the slice.
            self.depths.truncate(n.min(cap));
        }
        if self.contexts & crate::conn::META_BASE != 0 {
            let cap = crate::dispatch::MAX_EXTENTS;
            self.extents.resize(cap, Extent::default());
            let n = b.extents(offset, len, &mut self.extents)?;
            self.extents.truncate(n.min(cap));
        }
        Ok(())
    }
}

/// The pool: submit jobs, collect finished ones.
///
/// Fair: each connection has its own queue and workers take from the
/// connections with work in turn (round robin), so one client's backlog
/// delays another client's single request by at most about one request's
/// service time (with a 1 s delay filter and 64 pipelined READs on one
/// connection, a FIFO pool made another client wait 16.7 s).
///
/// Allocation-free in steady state: the queues are `VecDeque`s that keep
/// their capacity and the finished list is swapped, not reallocated (a
/// `std::sync::mpsc` channel allocates a block every 32 messages).
pub struct Pool {
    shared: Arc<PoolShared>,
    threads: Vec<JoinHandle<()>>,
    /// The loop's side of the finished list (swapped with the workers').
    /// Jobs stay boxed: they travel between the loop, the pool and the
    /// free list as one pointer each.
    #[allow(clippy::vec_box)]
    taken: Vec<Box<Job>>,
}

struct PoolShared {
    state: Mutex<PoolState>,
    work: Condvar,
    wake: Arc<mio::Waker>,
}

#[derive(Default)]
struct PoolState {
    /// Per connection (slab key): jobs not started yet.
    queues: Vec<VecDeque<Box<Job>>>,
    /// Connections with queued jobs, in turn order (each at most once).
    turns: VecDeque<usize>,
    #[allow(clippy::vec_box)]
    done: Vec<Box<Job>>,
    closing: bool,
}

impl PoolState {
    /// The next job in round-robin order.
    fn next(&mut self) -> Option<Box<Job>> {
        let key = self.turns.pop_front()?;
        let q = self.queues.get_mut(key)?;
        let job = q.pop_front();
        if !q.is_empty() {
            self.turns.push_back(key);
        }
        job
    }
}

fn lock(m: &Mutex<PoolState>) -> std::sync::MutexGuard<'_, PoolState> {
    // A worker that panicked while holding the lock left the queues in a
    // consistent state (each update is one push or pop).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pool {
    /// Start `n` worker threads; each finished job calls `wake`.
    pub fn new(n: usize, wake: Arc<mio::Waker>) -> io::Result<Self> {
        let shared = Arc::new(PoolShared {
            state: Mutex::new(PoolState::default()),
            work: Condvar::new(),
            wake,
        });
        let mut threads = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let shared = Arc::clone(&shared);
            let t = std::thread::Builder::new()
                .name(format!("nbdd-io-{i}"))
                .spawn(move || worker(&shared))?;
            threads.push(t);
        }
        Ok(Self {
            shared,
            threads,
            taken: Vec::new(),
        })
    }

    /// Queue a job behind its connection's earlier ones.
    pub fn submit(&self, job: Box<Job>) {
        let key = job.token;
        let mut st = lock(&self.shared.state);
        if st.queues.len() <= key {
            st.queues.resize_with(key + 1, VecDeque::new);
        }
        if st.queues[key].is_empty() {
            st.turns.push_back(key);
        }
        st.queues[key].push_back(job);
        drop(st);
        self.shared.work.notify_one();
    }

    /// A pool without threads: jobs wait until [`Pool::run_next`] runs
    /// them, one at a time, when the caller chooses (the whole-server fuzz
    /// harness, which needs a deterministic schedule).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn manual(wake: Arc<mio::Waker>) -> Self {
        Self {
            shared: Arc::new(PoolShared {
                state: Mutex::new(PoolState::default()),
                work: Condvar::new(),
                wake,
            }),
            threads: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// Run the job a worker would take next (round robin) on this thread
    /// and return it finished, instead of queueing it for
    /// [`Pool::try_finished`]. For [`Pool::manual`] pools.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn run_next(&self) -> Option<Box<Job>> {
        let mut job = lock(&self.shared.state).next()?;
        job.run();
        Some(job)
    }

    /// A finished job, if any.
    pub fn try_finished(&mut self) -> Option<Box<Job>> {
        if self.taken.is_empty() {
            let mut st = lock(&self.shared.state);
            std::mem::swap(&mut st.done, &mut self.taken);
        }
        self.taken.pop()
    }
}

fn worker(shared: &PoolShared) {
    let mut st = lock(&shared.state);
    loop {
        if st.closing {
            return;
        }
        let Some(mut job) = st.next() else {
            st = shared
                .work
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            continue;
        };
        // Never hold the lock while running a job.
        drop(st);
        job.run();
        st = lock(&shared.state);
        st.done.push(job);
        let _ = shared.wake.wake();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        lock(&self.shared.state).closing = true;
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
