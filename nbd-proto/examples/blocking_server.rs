//! A blocking NBD server on `std::net` and [`nbd_proto::server::Connection`]:
//! one 64 MiB memory export, one thread per client, structured replies and
//! `base:allocation` block status (zeroes are reported as holes).
//!
//! ```text
//! cargo run -p nbd-proto --example blocking_server -- 127.0.0.1:10809
//! cargo run -p nbd-proto --example blocking_server -- /tmp/nbd.sock
//! nbdinfo --map nbd://127.0.0.1
//! ```

#[path = "common/memory.rs"]
mod memory;
#[path = "common/server.rs"]
mod server;

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

use memory::Memory;
use nbd_proto::OptReplyType;
use nbd_proto::server::{Connection, ConnectionConfig, Input, Op, Pending};
use server::{export, put, transmit};

/// Listen on `HOST:PORT` or, for an argument with a `/`, a Unix socket.
fn main() -> io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:10809".into());
    let disk = Arc::new(Mutex::new(Memory::new()));
    if addr.contains('/') {
        let listener = UnixListener::bind(&addr)?;
        println!("listening on {addr}");
        for sock in listener.incoming() {
            spawn(sock?, &disk);
        }
    } else {
        let listener = TcpListener::bind(&addr)?;
        println!("listening on {}", listener.local_addr()?);
        for sock in listener.incoming() {
            let sock = sock?;
            sock.set_nodelay(true)?;
            spawn(sock, &disk);
        }
    }
    Ok(())
}

fn spawn(sock: impl Read + Write + Send + 'static, disk: &Arc<Mutex<Memory>>) {
    let disk = Arc::clone(disk);
    std::thread::spawn(move || {
        if let Err(e) = serve(sock, &disk) {
            eprintln!("client: {e}");
        }
    });
}

/// One client from the greeting to `NBD_CMD_DISC`: the run loop of the
/// crate docs. Output is queued in `out` and written before each read.
fn serve(mut sock: impl Read + Write, disk: &Mutex<Memory>) -> io::Result<()> {
    let mut conn = Connection::new(&ConnectionConfig::default());
    let (mut input, mut pos, mut out) = (Vec::new(), 0, Vec::new());
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        transmit(&mut conn, &mut out)?;
        let (used, next) = match conn.handle_input(&input[pos..]) {
            Ok(step) => step,
            Err(e) => {
                sock.write_all(&out)?; // replies made before the error are owed
                return Err(io::Error::other(e));
            }
        };
        pos += used;
        match next {
            Input::NeedInput => {
                sock.write_all(&out)?;
                out.clear();
                input.drain(..pos);
                pos = 0;
                match sock.read(&mut chunk)? {
                    0 => return Ok(()), // the client went away
                    n => input.extend_from_slice(&chunk[..n]),
                }
            }
            Input::Continue | Input::Disconnect => {}
            Input::Closed => return sock.write_all(&out),
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
                let mut disk = disk.lock().unwrap();
                execute(&mut conn, &mut disk, op, reply, &mut out)?;
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
            // TLS is off (the default config), and every request is
            // answered before the next one is read.
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
    match op {
        Op::Read { offset, len, .. } => {
            // The data goes right behind the reply header: no copy.
            let (at, prefix) = (out.len(), conn.read_prefix_len());
            out.resize(at + prefix + len, 0);
            disk.read(offset, &mut out[at + prefix..]);
            let head = &mut out[at..at + prefix];
            let n = conn.reply_read(p, head).expect("the prefix fits");
            // n < prefix only for an empty read (answered by a NONE chunk).
            out.truncate(at + n + len);
            return Ok(());
        }
        Op::Write { offset, data, .. } => disk.write(offset, data),
        Op::Trim { offset, len, .. } | Op::WriteZeroes { offset, len, .. } => {
            disk.zero(offset, len);
        }
        Op::BlockStatus { offset, len, .. } => {
            // One context (ID 1): the crate clips the runs to the request,
            // applies REQ_ONE and splits what 32 bits cannot carry.
            let runs = disk.extents(offset, len);
            return put(out, p, |p, b| conn.reply_block_status(p, 1, &runs, b));
        }
        // Memory needs no flush or cache; RESIZE is not advertised.
        Op::Flush | Op::Cache { .. } | Op::Resize { .. } => {}
        // `Op` is non-exhaustive: refuse what this server does not know.
        _ => {
            let e = nbd_proto::ErrorCode::Inval;
            return put(out, p, |p, b| conn.reply_error(p, e, "unsupported", b));
        }
    }
    put(out, p, |p, b| conn.reply_ok(p, b))
}
