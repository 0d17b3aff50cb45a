//! An async NBD client: tokio moves the bytes, [`nbd_proto::client::Connection`]
//! does the protocol. It asks for extended headers (falling back to
//! structured replies on servers without them), keeps 8 READs in flight
//! at once, and checks what it wrote.
//!
//! ```text
//! cargo run -p nbd-proto --example tokio_client -- nbd://localhost:10809/disk
//! cargo run -p nbd-proto --example tokio_client -- 'nbd+unix:///?socket=/tmp/nbd.sock'
//! ```

#[path = "common/address.rs"]
mod address;

use std::io;

use nbd_proto::client::{CLIENT_TRANSMIT_MAX, ClientConfig, Cmd, Connection, Event};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

const BLOCK: usize = 16 * 1024;
const READS: usize = 8;

/// Drive the connection until `until` returns true for an event; READ
/// data lands in `reads[slot]`.
async fn run(
    conn: &mut Connection<16>,
    sock: &mut dyn Stream,
    input: &mut Vec<u8>,
    reads: &mut [Vec<u8>],
    mut until: impl FnMut(&Event<'_>) -> bool,
) -> io::Result<()> {
    let mut out = [0u8; CLIENT_TRANSMIT_MAX];
    loop {
        let (used, ev) = conn.handle_input(input).map_err(io::Error::other)?;
        let stop = until(&ev);
        match ev {
            Event::NeedInput { .. } => {
                input.drain(..used);
                let mut chunk = [0u8; 64 * 1024];
                match sock.read(&mut chunk).await? {
                    0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                    n => input.extend_from_slice(&chunk[..n]),
                }
                continue;
            }
            Event::Transmit => {
                let n = conn.poll_transmit(&mut out).map_err(io::Error::other)?;
                sock.write_all(&out[..n]).await?;
            }
            Event::ReadData(d) => {
                let slot = d.slot();
                d.copy_into(&mut reads[slot]).map_err(io::Error::other)?;
            }
            Event::Done(d) if d.result.is_err() => {
                return Err(io::Error::other(format!("{:?}: {:?}", d.command, d.result)));
            }
            Event::StartTls(_) => return Err(io::Error::other("TLS not configured")),
            _ => {}
        }
        input.drain(..used);
        if stop {
            return Ok(());
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, export) = address::parse(&args).map_err(io::Error::other)?;
    let mut sock: Box<dyn Stream> = match addr {
        address::Address::Tcp(h, p) => Box::new(TcpStream::connect((h.as_str(), p)).await?),
        address::Address::Unix(path) => Box::new(UnixStream::connect(path).await?),
    };
    let cfg = ClientConfig {
        export: &export,
        extended_headers: true,
        ..ClientConfig::default()
    };
    let mut conn = Connection::<16>::new(&cfg).map_err(io::Error::other)?;
    let (mut input, mut reads) = (Vec::new(), vec![vec![0u8; BLOCK]; 16]);
    run(&mut conn, &mut *sock, &mut input, &mut reads, |e| {
        matches!(e, Event::Ready(_))
    })
    .await?;
    let neg = *conn.negotiated().expect("ready");
    println!("connected: size {}, {:?} replies", neg.size, neg.mode);

    // Write READS blocks in one burst (pipelined), then wait for all.
    let data = address::pattern(BLOCK * READS);
    let mut frame = vec![0u8; 64 + BLOCK];
    for (i, block) in data.chunks(BLOCK).enumerate() {
        let s = conn
            .encode_request(&Cmd::write((i * BLOCK) as u64, block), &mut frame)
            .map_err(io::Error::other)?;
        sock.write_all(&frame[..s.len]).await?;
    }
    run(&mut conn, &mut *sock, &mut input, &mut reads, |e| {
        matches!(e, Event::Idle)
    })
    .await?;
    println!("wrote {} bytes in {READS} pipelined requests", data.len());

    // READS reads in flight at once; each lands in the buffer of its slot.
    let mut slots = Vec::new();
    for i in 0..READS {
        let s = conn
            .encode_request(&Cmd::read((i * BLOCK) as u64, BLOCK as u64), &mut frame)
            .map_err(io::Error::other)?;
        sock.write_all(&frame[..s.len]).await?;
        slots.push(s.slot.expect("a READ has a slot"));
    }
    run(&mut conn, &mut *sock, &mut input, &mut reads, |e| {
        matches!(e, Event::Idle)
    })
    .await?;
    let same = slots
        .iter()
        .zip(data.chunks(BLOCK))
        .all(|(&s, block)| reads[s] == block);
    println!(
        "read back {} bytes in {READS} pipelined requests: {}",
        data.len(),
        if same { "identical" } else { "DIFFERENT" }
    );

    let s = conn
        .encode_request(&Cmd::disconnect(), &mut frame)
        .map_err(io::Error::other)?;
    sock.write_all(&frame[..s.len]).await?;
    run(&mut conn, &mut *sock, &mut input, &mut reads, |e| {
        matches!(e, Event::Closed)
    })
    .await?;
    println!("disconnected");
    Ok(())
}
