//! A real rustls client, in memory: after a completed handshake the
//! fuzzer's bytes choose the traffic, how it is cut into deliveries, what
//! is corrupted and who closes when.

use std::collections::VecDeque;
use std::io::{Read, Write};

use nbd_backends::fuzzing::Input;
use rustls::ClientConnection;
use rustls::pki_types::ServerName;

use super::fixtures::Fixtures;
use crate::tls::{SESSION_BUFFER_LIMIT, TlsSession};

/// Most client ciphertext waiting for delivery before the client stops
/// writing: several times the session's buffers, far below
/// [`super::MAX_LIVE_BYTES`].
const MAX_IN_FLIGHT: usize = 8 * SESSION_BUFFER_LIMIT;

/// Take size once the first takes have cut a record short: one maximal
/// TLS record with its overhead.
const BULK_TAKE: usize = 16 * 1024 + 256;

/// Both ends and the bytes in flight between them.
struct Pair {
    server: Box<dyn TlsSession>,
    client: ClientConnection,
    /// Ciphertext from the client not yet fed to the server.
    to_server: Vec<u8>,
    /// Plaintext sent and not yet read by the other side (only what is in
    /// flight is kept, so the harness's own memory stays bounded too).
    to_server_plain: VecDeque<u8>,
    to_client_plain: VecDeque<u8>,
    /// Plaintext the server has read, for the back-pressure check.
    server_read: usize,
    /// A byte was flipped, or a side failed: delivery may stop early.
    damaged: bool,
    /// Each side sent close_notify: it writes nothing more.
    client_closed: bool,
    server_closed: bool,
}

pub fn run(f: &Fixtures, tls13: bool, input: &mut Input<'_>) {
    let config = if tls13 { &f.client13 } else { &f.client12 };
    let name = ServerName::try_from("localhost").expect("name");
    let mut p = Pair {
        server: Box::new(f.x509.new_session().expect("session")),
        client: ClientConnection::new(config.clone(), name).expect("client"),
        to_server: Vec::new(),
        to_server_plain: VecDeque::new(),
        to_client_plain: VecDeque::new(),
        server_read: 0,
        damaged: false,
        client_closed: false,
        server_closed: false,
    };
    p.handshake();
    while !input.is_empty() && !p.damaged {
        p.step(input);
    }
    p.finish();
}

impl Pair {
    fn handshake(&mut self) {
        for _ in 0..16 {
            if !self.client.is_handshaking() && !self.server.is_handshaking() {
                return;
            }
            self.client_out();
            self.deliver(usize::MAX, true);
            self.server_to_client(SESSION_BUFFER_LIMIT);
        }
        panic!("in-memory handshake did not finish");
    }

    fn step(&mut self, input: &mut Input<'_>) {
        match input.u8() % 9 {
            0 => {
                let n = usize::from(input.u16() % 4096);
                let data = input.bytes(n).to_vec();
                self.client_write(&data);
            }
            8 => {
                // Bulk: enough to overflow the session's buffers from a
                // short input.
                let data = vec![input.u8(); usize::from(input.u16())];
                self.client_write(&data);
            }
            1 => self.deliver(usize::from(input.u16()), true),
            2 => self.deliver(usize::from(input.u16()), false),
            3 if !self.to_server.is_empty() => {
                let at = usize::from(input.u16()) % self.to_server.len();
                self.to_server[at] ^= input.u8() | 1;
                self.damaged = true;
                self.deliver(usize::MAX, true);
            }
            4 if !self.server_closed => {
                let data = vec![input.u8(); usize::from(input.u16())];
                match self.server.write_plaintext(&data) {
                    Ok(n) => {
                        assert!(n <= data.len());
                        self.to_client_plain.extend(&data[..n]);
                    }
                    Err(_) => self.damaged = true,
                }
            }
            5 => self.server_to_client(usize::from(input.u16() % 16384) + 1),
            6 => {
                self.client.send_close_notify();
                self.client_closed = true;
                self.client_out();
            }
            7 => {
                self.server.send_close_notify();
                self.server_closed = true;
            }
            _ => {}
        }
    }

    /// The client writes, unless it already has [`MAX_IN_FLIGHT`] bytes
    /// on the way: what the harness holds must stay bounded as well.
    fn client_write(&mut self, data: &[u8]) {
        if !self.client_closed && self.to_server.len() < MAX_IN_FLIGHT {
            let w = self.client.writer().write(data).expect("client write");
            // After its own close_notify the server drops what comes in:
            // nothing written now will arrive, and keeping it would grow
            // the harness without bound (regression harness_client_writes_after_server_close).
            if !self.server_closed {
                self.to_server_plain.extend(&data[..w]);
            }
            self.client_out();
        }
    }

    /// Everything the client has encrypted goes into `to_server`.
    fn client_out(&mut self) {
        while self.client.wants_write() {
            self.client
                .write_tls(&mut self.to_server)
                .expect("client write_tls");
        }
    }

    /// Feed up to `limit` bytes of `to_server`; with `read`, drain the
    /// server's plaintext as the event loop does. Without it, the session
    /// must refuse more after a bounded amount.
    fn deliver(&mut self, limit: usize, read: bool) {
        let mut budget = limit.min(self.to_server.len());
        let mut unread = 0usize;
        while budget > 0 {
            let n = match self.server.feed_ciphertext(&self.to_server[..budget]) {
                Ok(n) => n,
                Err(_) => {
                    self.damaged = true;
                    return;
                }
            };
            assert!(n <= budget);
            self.to_server.drain(..n);
            budget -= n;
            unread += n;
            if read {
                self.read_server();
                unread = 0;
            } else if n == 0 {
                break;
            }
            if read && n == 0 {
                break;
            }
        }
        if !read {
            // Back-pressure: what was accepted without reading is bounded.
            let before = self.server_read;
            self.read_server();
            let pending = self.server_read - before;
            assert!(
                pending <= 2 * SESSION_BUFFER_LIMIT,
                "{pending} bytes of plaintext buffered for a reader that never read \
                 ({unread} bytes of ciphertext accepted)"
            );
        }
    }

    fn read_server(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.server.read_plaintext(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    arrived(&mut self.to_server_plain, &buf[..n], "server");
                    self.server_read += n;
                }
                Err(_) => {
                    self.damaged = true;
                    break;
                }
            }
        }
    }

    /// Move server ciphertext to the client: the first takes `room` bytes
    /// at a time (a record cut anywhere, then resumed mid-record), the
    /// rest in large takes. Draining megabytes a byte at a time covered
    /// nothing more and was half of the harness's time.
    fn server_to_client(&mut self, room: usize) {
        let mut buf = vec![0u8; room.max(BULK_TAKE)];
        for take in 0.. {
            let room = if take < 2 { room } else { room.max(BULK_TAKE) };
            let n = match self.server.take_ciphertext(&mut buf[..room]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            assert!(n <= room);
            let mut rest = &buf[..n];
            let mut refused = false;
            while !rest.is_empty() && !self.damaged {
                match self.client.read_tls(&mut rest) {
                    Ok(0) => break,
                    Ok(_) => refused = false,
                    // Full: the client reads what it has, then retries once.
                    Err(_) if refused => self.damaged = true,
                    Err(_) => refused = true,
                }
                self.client_in();
            }
        }
        self.client_out();
    }

    fn client_in(&mut self) {
        if self.client.process_new_packets().is_err() {
            self.damaged = true;
            return;
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.client.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            arrived(&mut self.to_client_plain, &buf[..n], "client");
        }
    }

    /// Deliver everything left; undamaged, all of it must have arrived.
    fn finish(&mut self) {
        for _ in 0..1024 {
            if self.damaged || (self.to_server.is_empty() && !self.server.wants_write()) {
                break;
            }
            self.deliver(usize::MAX, true);
            self.server_to_client(SESSION_BUFFER_LIMIT);
        }
        // After its own close_notify the server drops what still comes in
        // (RustlsSession::closing); after the client's it reads no more.
        if !self.damaged && !self.server.peer_closed() && !self.server_closed {
            assert!(
                self.to_server_plain.is_empty(),
                "{} bytes of client data lost",
                self.to_server_plain.len()
            );
        }
        if !self.damaged {
            assert!(
                self.to_client_plain.is_empty(),
                "{} bytes of server data lost",
                self.to_client_plain.len()
            );
        }
    }
}

/// `got` must be the next bytes `who` was sent: nothing arrives that was
/// not sent, nor out of order.
fn arrived(expected: &mut VecDeque<u8>, got: &[u8], who: &str) {
    assert!(got.len() <= expected.len(), "{who} read more than was sent");
    assert!(
        expected.make_contiguous()[..got.len()] == *got,
        "{who} read bytes that were not sent"
    );
    expected.drain(..got.len());
}
