//! A blocking NBD client on `std::net` and [`nbd_proto::client::Connection`]:
//! connect, negotiate with `NBD_OPT_GO`, write 64 KiB, read it back,
//! ask for block status, disconnect.
//!
//! ```text
//! cargo run -p nbd-proto --example blocking_client -- nbd://localhost:10809/disk
//! cargo run -p nbd-proto --example blocking_client -- 'nbd+unix:///?socket=/tmp/nbd.sock'
//! cargo run -p nbd-proto --example blocking_client -- localhost 10809
//! ```

#[path = "common/address.rs"]
mod address;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use nbd_proto::client::{CLIENT_TRANSMIT_MAX, ClientConfig, ClientNegotiated, Cmd, Connection};
use nbd_proto::client::{Done, Event};
use nbd_proto::wire::reply::BlockStatusExtent;

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Where a [`Client::run`] stopped.
enum Stop {
    Ready(ClientNegotiated),
    Done(Done),
    Closed,
}

struct Client {
    conn: Connection<16>,
    sock: Box<dyn Stream>,
    buf: Vec<u8>,
    len: usize,
}

impl Client {
    /// Move bytes until negotiation ends, a request completes or the
    /// connection closes; `data` gets READ data and block-status events.
    fn run(&mut self, mut data: impl FnMut(Event<'_>)) -> io::Result<Stop> {
        let mut out = [0u8; CLIENT_TRANSMIT_MAX];
        loop {
            let (used, ev) = self
                .conn
                .handle_input(&self.buf[..self.len])
                .map_err(io::Error::other)?;
            let stop = match ev {
                Event::NeedInput { needed } => {
                    self.buf.copy_within(used..self.len, 0);
                    self.len -= used;
                    self.fill(needed)?;
                    continue;
                }
                Event::Transmit => {
                    let n = self
                        .conn
                        .poll_transmit(&mut out)
                        .map_err(io::Error::other)?;
                    self.sock.write_all(&out[..n])?;
                    None
                }
                Event::Ready(n) => Some(Stop::Ready(n)),
                Event::Done(d) => Some(Stop::Done(d)),
                Event::Closed => Some(Stop::Closed),
                Event::Idle => return Err(io::Error::other("nothing in flight")),
                Event::StartTls(_) => return Err(io::Error::other("TLS not configured")),
                other => {
                    data(other);
                    None
                }
            };
            self.buf.copy_within(used..self.len, 0);
            self.len -= used;
            if let Some(stop) = stop {
                return Ok(stop);
            }
        }
    }

    /// Read until `needed` bytes are buffered (growing the buffer).
    fn fill(&mut self, needed: usize) -> io::Result<()> {
        if self.buf.len() < needed.max(self.len + 1) {
            self.buf.resize(needed.max(self.len + 4096), 0);
        }
        match self.sock.read(&mut self.buf[self.len..])? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                self.len += n;
                Ok(())
            }
        }
    }

    /// Send one request and wait for its reply.
    fn call(&mut self, cmd: Cmd<'_>, data: impl FnMut(Event<'_>)) -> io::Result<Done> {
        let mut frame = vec![0u8; 32 + cmd.data.len()];
        let sent = self
            .conn
            .encode_request(&cmd, &mut frame)
            .map_err(io::Error::other)?;
        self.sock.write_all(&frame[..sent.len])?;
        match self.run(data)? {
            Stop::Done(d) if d.result.is_ok() => Ok(d),
            Stop::Done(d) => Err(io::Error::other(format!("{:?}: {:?}", d.command, d.result))),
            _ => Err(io::Error::other("connection closed")),
        }
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, export) = address::parse(&args).map_err(io::Error::other)?;
    let sock: Box<dyn Stream> = match addr {
        address::Address::Tcp(h, p) => Box::new(TcpStream::connect((h.as_str(), p))?),
        address::Address::Unix(path) => Box::new(UnixStream::connect(path)?),
    };
    let cfg = ClientConfig {
        export: &export,
        base_allocation: true,
        ..ClientConfig::default()
    };
    let conn = Connection::new(&cfg).map_err(io::Error::other)?;
    let mut c = Client {
        conn,
        sock,
        buf: vec![0; 64 * 1024],
        len: 0,
    };
    let Stop::Ready(neg) = c.run(|_| {})? else {
        return Err(io::Error::other("no export"));
    };
    println!(
        "connected: size {}, {:?} replies, base:allocation {}",
        neg.size,
        neg.mode,
        neg.base_allocation.is_some()
    );

    let data = address::pattern(64 * 1024);
    c.call(Cmd::write(0, &data), |_| {})?;
    println!("wrote {} bytes at offset 0", data.len());

    let mut back = vec![0u8; data.len()];
    c.call(Cmd::read(0, back.len() as u64), |ev| {
        if let Event::ReadData(d) = ev {
            d.copy_into(&mut back).expect("buffer sized to the READ");
        }
    })?;
    println!(
        "read back {} bytes: {}",
        back.len(),
        if back == data {
            "identical"
        } else {
            "DIFFERENT"
        }
    );

    if neg.base_allocation.is_some() {
        let mut extents = [BlockStatusExtent { len: 0, flags: 0 }; 64];
        let mut n = 0;
        c.call(Cmd::block_status(0, neg.size.min(1 << 20)), |ev| {
            if let Event::BlockStatus(b) = ev {
                n = b.copy_into(&mut extents);
            }
        })?;
        // `NBD_STATE_HOLE` is bit 0: the allocated bytes from offset 0.
        let end: u64 = extents[..n]
            .iter()
            .take_while(|e| e.flags & 1 == 0)
            .map(|e| e.len)
            .sum();
        println!("block status: {n} extents, allocated from 0 to {end}");
    } else {
        println!("block status: not offered");
    }

    let mut frame = [0u8; 32];
    let sent = c
        .conn
        .encode_request(&Cmd::disconnect(), &mut frame)
        .map_err(io::Error::other)?;
    c.sock.write_all(&frame[..sent.len])?;
    match c.run(|_| {})? {
        Stop::Closed => println!("disconnected"),
        _ => return Err(io::Error::other("unexpected reply after DISC")),
    }
    Ok(())
}
