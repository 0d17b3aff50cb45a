//! A small pool of threads for backends that may block (file I/O, remote
//! servers), so a slow disk never stalls other connections on the event
//! loop. Jobs carry their own buffers, which come back with the result and
//! are recycled by the loop; a finished job wakes the loop through a
//! `mio::Waker`.

use std::io;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nbd_backends::{Backend, Extent, ZeroFlags};
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
            Op::Extents { offset, len } => {
                let cap = self.extents.capacity().max(1);
                self.extents.resize(cap, Extent::default());
                match b.extents(offset, len, &mut self.extents) {
                    Ok(n) => {
                        // A count beyond the slice is the backend's bug;
                        // never trust it further than the slice.
                        self.extents.truncate(n.min(cap));
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Op::Resize { size } => b.resize(size),
        };
    }
}

/// The pool: submit jobs, collect finished ones.
pub struct Pool {
    tx: Option<Sender<Box<Job>>>,
    done: Receiver<Box<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Start `n` worker threads; each finished job calls `wake`.
    pub fn new(n: usize, wake: Arc<mio::Waker>) -> io::Result<Self> {
        let (tx, rx) = channel::<Box<Job>>();
        let (done_tx, done) = channel::<Box<Job>>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rx = Arc::clone(&rx);
            let done_tx = done_tx.clone();
            let wake = Arc::clone(&wake);
            let t = std::thread::Builder::new()
                .name(format!("nbdd-io-{i}"))
                .spawn(move || {
                    loop {
                        // Hold the lock only to take a job, never while running it.
                        let job = rx
                            .lock()
                            .map_err(|_| ())
                            .and_then(|r| r.recv().map_err(|_| ()));
                        let Ok(mut job) = job else { return };
                        job.run();
                        if done_tx.send(job).is_err() {
                            return;
                        }
                        let _ = wake.wake();
                    }
                })?;
            threads.push(t);
        }
        Ok(Self {
            tx: Some(tx),
            done,
            threads,
        })
    }

    /// Queue a job.
    pub fn submit(&self, job: Box<Job>) {
        if let Some(tx) = &self.tx {
            // Workers only exit when the pool is dropped.
            let _ = tx.send(job);
        }
    }

    /// A finished job, if any.
    pub fn try_finished(&self) -> Option<Box<Job>> {
        self.done.try_recv().ok()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
