//! An async NBD server: tokio moves the bytes, [`nbd_proto::server::Connection`]
//! does the protocol. One task per client, all sharing one 64 MiB memory
//! export; every request is answered as soon as it has arrived (replies to
//! a pipelined burst go out together, before the next read). READs are
//! sparse: runs of zeroes travel as `NBD_REPLY_TYPE_OFFSET_HOLE` chunks.
//!
//! ```text
//! cargo run -p nbd-proto --example tokio_server -- 127.0.0.1:10809
//! cargo run -p nbd-proto --example tokio_server -- /tmp/nbd.sock
//! nbdcopy -p disk.img nbd://127.0.0.1
//! ```

#[path = "common/memory.rs"]
mod memory;
#[path = "common/server.rs"]
mod server;

use std::io;
use std::sync::{Arc, Mutex};

use memory::Memory;
use nbd_proto::server::{Connection, ConnectionConfig, Input, Op, Pending};
use nbd_proto::{HeaderMode, OptReplyType};
use server::{export, put, transmit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

/// Listen on `HOST:PORT` or, for an argument with a `/`, a Unix socket.
#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:10809".into());
    let disk = Arc::new(Mutex::new(Memory::new()));
    if addr.contains('/') {
        let listener = UnixListener::bind(&addr)?;
        println!("listening on {addr}");
        loop {
            let (sock, _) = listener.accept().await?;
            tokio::spawn(client(sock, Arc::clone(&disk)));
        }
    } else {
        let listener = TcpListener::bind(&addr).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (sock, _) = listener.accept().await?;
            sock.set_nodelay(true)?;
            tokio::spawn(client(sock, Arc::clone(&disk)));
        }
    }
}

async fn client(sock: impl AsyncRead + AsyncWrite + Unpin, disk: Arc<Mutex<Memory>>) {
    if let Err(e) = serve(sock, &disk).await {
        eprintln!("client: {e}");
    }
}

/// One client: the run loop of the crate docs, with `.await` on I/O.
async fn serve(
    mut sock: impl AsyncRead + AsyncWrite + Unpin,
    disk: &Mutex<Memory>,
) -> io::Result<()> {
    let mut conn = Connection::new(&ConnectionConfig::default());
    let (mut input, mut pos, mut out) = (Vec::new(), 0, Vec::new());
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        transmit(&mut conn, &mut out)?;
        let (used, next) = match conn.handle_input(&input[pos..]) {
            Ok(step) => step,
            Err(e) => {
                sock.write_all(&out).await?; // replies made before it are owed
                return Err(io::Error::other(e));
            }
        };
        pos += used;
        match next {
            Input::NeedInput => {
                sock.write_all(&out).await?;
                out.clear();
                input.drain(..pos);
                pos = 0;
                match sock.read(&mut chunk).await? {
                    0 => return Ok(()),
                    n => input.extend_from_slice(&chunk[..n]),
                }
            }
            Input::Continue | Input::Disconnect => {}
            Input::Closed => return sock.write_all(&out).await,
            Input::Export(q) => {
                let answer = match conn.asked_name() {
                    "" | "mem" => Ok(export()),
                    _ => Err(OptReplyType::ErrUnknown),
                };
                put(&mut out, q, |q, b| conn.answer_export(q, answer, b))?;
            }
            Input::List(q) => {
                let e = export();
                let n = conn.list_entry(&q, e.name, e.description, &mut chunk);
                out.extend_from_slice(&chunk[..n.map_err(io::Error::other)?]);
                put(&mut out, q, |q, b| conn.finish_list(q, b))?;
            }
            Input::MetaContexts(q) => {
                put(&mut out, q, |q, b| conn.answer_meta_contexts(q, Ok(1), b))?;
            }
            Input::Request { op, reply } => {
                execute(&mut conn, &mut disk.lock().unwrap(), op, reply, &mut out)?;
            }
            Input::Reject {
                reply,
                error,
                message,
            } => {
                put(&mut out, reply, |p, b| {
                    conn.reply_error(p, error, message, b)
                })?;
            }
            Input::StartTls(_) | Input::Blocked => unreachable!("{next:?}"),
            // `Input` is non-exhaustive: close on anything else.
            other => return Err(io::Error::other(format!("unexpected {other:?}"))),
        }
    }
}

/// Run one validated request against the disk and queue its reply.
fn execute(
    conn: &mut Connection,
    disk: &mut Memory,
    op: Op<'_>,
    p: Pending,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let chunks = conn
        .negotiated()
        .is_some_and(|n| n.mode != HeaderMode::Simple);
    match op {
        // DF: the client wants the data in one chunk.
        Op::Read { offset, len, df } if chunks && !df && len > 0 => {
            return sparse_read(conn, disk, offset, len as u64, p, out);
        }
        Op::Read { offset, len, .. } => {
            let (at, prefix) = (out.len(), conn.read_prefix_len());
            out.resize(at + prefix + len, 0);
            disk.read(offset, &mut out[at + prefix..]);
            let n = conn
                .reply_read(p, &mut out[at..at + prefix])
                .expect("the prefix fits");
            out.truncate(at + n + len); // n < prefix: an empty read
            return Ok(());
        }
        Op::Write { offset, data, .. } => disk.write(offset, data),
        Op::Trim { offset, len, .. } | Op::WriteZeroes { offset, len, .. } => {
            disk.zero(offset, len)
        }
        Op::BlockStatus { offset, len, .. } => {
            let runs = disk.extents(offset, len);
            return put(out, p, |p, b| conn.reply_block_status(p, 1, &runs, b));
        }
        Op::Flush | Op::Cache { .. } | Op::Resize { .. } => {}
        // `Op` is non-exhaustive: refuse what this server does not know.
        _ => {
            let e = nbd_proto::ErrorCode::Inval;
            return put(out, p, |p, b| conn.reply_error(p, e, "unsupported", b));
        }
    }
    put(out, p, |p, b| conn.reply_ok(p, b))
}

/// A READ as one chunk per run: zeroes as a hole (no data on the wire),
/// data behind its chunk header; then the NONE chunk that ends the reply.
fn sparse_read(
    conn: &mut Connection,
    disk: &Memory,
    offset: u64,
    len: u64,
    p: Pending,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let mut at = offset;
    for run in disk.extents(offset, len) {
        if run.flags == memory::ZEROES {
            let mut head = [0u8; 64]; // a hole chunk is at most 44 bytes
            let n = conn
                .read_hole(&p, at, run.len as u32, &mut head)
                .map_err(io::Error::other)?;
            out.extend_from_slice(&head[..n]);
        } else {
            let (start, prefix, n) = (out.len(), conn.read_prefix_len(), run.len as usize);
            out.resize(start + prefix + n, 0);
            disk.read(at, &mut out[start + prefix..]);
            conn.read_chunk(&p, at, n, &mut out[start..start + prefix])
                .map_err(io::Error::other)?;
        }
        at += run.len;
    }
    put(out, p, |p, b| conn.reply_done(p, b))
}
