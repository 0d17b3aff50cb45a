//! What the two server examples share: the export they describe and two
//! helpers that queue a [`Connection`]'s output in a `Vec`.

use std::io;

use nbd_proto::TransmissionFlags as TF;
use nbd_proto::server::{Connection, ExportInfo, NeedRoom};

/// The one export: 64 MiB of memory ([`super::memory::Memory`]).
pub fn export() -> ExportInfo<'static> {
    ExportInfo {
        size: super::memory::SIZE,
        // One disk behind a lock: every connection sees every write at
        // once, so clients may open several (multi-conn).
        flags: TF::SEND_FLUSH
            | TF::SEND_FUA
            | TF::SEND_TRIM
            | TF::SEND_WRITE_ZEROES
            | TF::CAN_MULTI_CONN,
        name: "mem",
        description: "64 MiB in memory",
        block_sizes: None,
        // Bit 0: the first entry of the meta-context catalogue, which by
        // default is just `base:allocation` (context ID 1).
        meta_contexts: 1,
    }
}

/// Queue what the connection sends on its own (the greeting, replies to
/// options it answers itself) until it has nothing more.
pub fn transmit(conn: &mut Connection, out: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    loop {
        match conn.poll_transmit(&mut buf).map_err(io::Error::other)? {
            0 => return Ok(()),
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Append what `encode` writes to `out`. On a short buffer the encoder
/// writes nothing and hands the token back in a [`NeedRoom`] with the size
/// it needs: try again with that much room.
pub fn put<T>(
    out: &mut Vec<u8>,
    token: T,
    mut encode: impl FnMut(T, &mut [u8]) -> Result<usize, NeedRoom<T>>,
) -> io::Result<()> {
    let (mut token, mut room) = (token, 1024);
    loop {
        let at = out.len();
        out.resize(at + room, 0);
        match encode(token, &mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(e) if e.required > room => (token, room) = (e.token, e.required),
            Err(e) => return Err(io::Error::other(format!("no room for {}", e.required))),
        }
        out.truncate(at);
    }
}
