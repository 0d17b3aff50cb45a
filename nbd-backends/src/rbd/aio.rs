//! The rbd backend driven from an event loop: each NBD request becomes one
//! librbd aio call (two for FUA: the operation, then a flush), completing
//! into the loop's own queue (ffi/aio.rs).

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use super::ffi::{AioKind, Queue};
use super::{Inner, RbdBackend};
use crate::ZeroFlags;
use crate::aio::{AioOp, AioQueue, AsyncBackend, Completion, Submitted};
use crate::util::{check_read, check_write, out_of_range};

/// One loop's queue on the image.
struct RbdQueue {
    inner: Arc<Inner>,
    queue: Queue,
}

impl AsyncBackend for RbdBackend {
    fn queue(&self) -> io::Result<Box<dyn AioQueue>> {
        Ok(Box::new(RbdQueue {
            inner: Arc::clone(&self.inner),
            queue: Queue::new()?,
        }))
    }
}

impl Inner {
    /// The librbd call for `op` and whether a flush must follow it, or the
    /// immediate result.
    fn plan(&self, op: AioOp, buf_len: usize) -> Result<(AioKind, bool), io::Result<()>> {
        let size = self.size();
        let write = |r: io::Result<u64>| -> Result<(), io::Result<()>> {
            self.writable().map_err(Err)?;
            r.map(drop).map_err(Err)
        };
        match op {
            AioOp::Read { offset, at, len } => {
                check_read(offset, len as u64, size).map_err(Err)?;
                if len == 0 {
                    return Err(Ok(()));
                }
                Ok((
                    AioKind::Read {
                        off: offset,
                        at,
                        len,
                    },
                    false,
                ))
            }
            AioOp::Write { offset, fua } => {
                write(check_write(offset, buf_len as u64, size))?;
                if buf_len == 0 {
                    return if fua {
                        Ok((AioKind::Flush, false))
                    } else {
                        Err(Ok(()))
                    };
                }
                Ok((AioKind::Write { off: offset }, fua))
            }
            AioOp::Flush => Ok((AioKind::Flush, false)),
            AioOp::Trim { offset, len, fua } => {
                write(check_read(offset, len, size))?;
                if len == 0 {
                    return Err(Ok(()));
                }
                Ok((AioKind::Discard { off: offset, len }, fua))
            }
            AioOp::Zero { offset, len, flags } => {
                write(check_write(offset, len, size))?;
                let thick = !flags.contains(ZeroFlags::MAY_TRIM);
                if flags.contains(ZeroFlags::FAST) && thick {
                    // As in the synchronous path: a thick zero is not fast.
                    return Err(Err(io::ErrorKind::Unsupported.into()));
                }
                if len == 0 {
                    return Err(Ok(()));
                }
                let len = usize::try_from(len).map_err(|_| Err(out_of_range()))?;
                let fua = flags.contains(ZeroFlags::FUA);
                Ok((
                    AioKind::Zero {
                        off: offset,
                        len,
                        thick,
                    },
                    fua,
                ))
            }
        }
    }
}

impl AioQueue for RbdQueue {
    fn submit(&mut self, op: AioOp, buf: Vec<u8>, tag: u64) -> Submitted {
        let (kind, then_flush) = match self.inner.plan(op, buf.len()) {
            Ok(k) => k,
            Err(result) => return Submitted::Now(result, buf),
        };
        match self
            .inner
            .image
            .submit(&mut self.queue, kind, then_flush, buf, tag)
        {
            Ok(()) => Submitted::Pending,
            Err((f, buf)) => Submitted::Now(Err(self.inner.error(f)), buf),
        }
    }

    fn notify_fd(&self) -> BorrowedFd<'_> {
        self.queue.fd()
    }

    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let inner = &self.inner;
        self.queue.poll(&inner.image, &mut |c| {
            let result = c.result.map_err(|f| inner.error(f));
            done((c.tag, result, c.buf));
        })
    }
}
