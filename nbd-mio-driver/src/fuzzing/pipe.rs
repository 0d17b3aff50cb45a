//! The harness's socket: an in-memory byte pipe with a kernel-like buffer
//! in each direction, so the connection sees short reads, `WouldBlock`,
//! partial and vectored writes and EOF as it would on a real socket.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};

/// Bytes each direction holds, as a socket buffer would: a client that
/// stops reading makes the server's writes block.
pub const SOCKET_BUF: usize = 256 * 1024;

/// Both directions of the harness's connection. Ring buffers: a `Vec`
/// drained from the front moved up to 256 KiB per short read, a third of
/// the whole-server harness's time.
#[derive(Debug, Default)]
pub struct Pipe {
    /// Client bytes delivered and not yet read by the server.
    input: VecDeque<u8>,
    /// The client closed its side: reads return 0 once `input` is empty.
    eof: bool,
    /// Server bytes not yet read by the client.
    output: VecDeque<u8>,
    /// The server shut the connection down: nothing more is written
    /// (`Stream::shutdown` takes `&self`).
    shut: Cell<bool>,
}

impl Pipe {
    /// Deliver up to `bytes.len()` client bytes (as many as the buffer
    /// takes); returns how many.
    pub fn deliver(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(SOCKET_BUF - self.input.len());
        self.input.extend(&bytes[..n]);
        n
    }

    /// The client closes its sending side.
    pub fn close_input(&mut self) {
        self.eof = true;
    }

    /// True once the client has closed its side.
    pub fn input_closed(&self) -> bool {
        self.eof
    }

    /// Client bytes the server has not read yet.
    pub fn input_len(&self) -> usize {
        self.input.len()
    }

    /// Output waiting for the client.
    pub fn output_len(&self) -> usize {
        self.output.len()
    }

    /// The client reads up to `n` bytes of output into `into`.
    pub fn take_output(&mut self, n: usize, into: &mut Vec<u8>) {
        // Bulk copies: a byte-wise drain cost half the harness's time
        // under coverage instrumentation.
        take_front(&mut self.output, n, into);
    }

    pub(crate) fn shutdown(&self) {
        self.shut.set(true);
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = self.input.len().min(buf.len());
        let (a, b) = self.input.as_slices();
        let k = a.len().min(n);
        buf[..k].copy_from_slice(&a[..k]);
        buf[k..n].copy_from_slice(&b[..n - k]);
        self.input.drain(..n);
        Ok(n)
    }

    /// Fills the slices in order, as `readv` does, up to what is buffered.
    pub(crate) fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for b in bufs.iter_mut().filter(|b| !b.is_empty()) {
            match self.read(b) {
                Ok(n) => {
                    total += n;
                    if n < b.len() {
                        break;
                    }
                }
                Err(e) if total == 0 => return Err(e),
                Err(_) => break,
            }
        }
        if total == 0 && self.input.is_empty() && !self.eof {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(total)
    }

    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// Takes what fits, across slices (a `writev` that fills the socket
    /// buffer stops in the middle of a segment).
    pub(crate) fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.shut.get() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = SOCKET_BUF - self.output.len();
        if room == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for b in bufs {
            let k = b.len().min(room - n);
            self.output.extend(&b[..k]);
            n += k;
            if n == room {
                break;
            }
        }
        Ok(n)
    }
}

/// Move up to `n` bytes from the front of `q` to the end of `into`.
fn take_front(q: &mut VecDeque<u8>, n: usize, into: &mut Vec<u8>) {
    let n = n.min(q.len());
    let (a, b) = q.as_slices();
    let k = a.len().min(n);
    into.extend_from_slice(&a[..k]);
    into.extend_from_slice(&b[..n - k]);
    q.drain(..n);
}
