//! The server side of the harness: one real [`Conn`] on a [`Pipe`], served
//! as `event_loop.rs` serves a connection (`Loop::service_ready`,
//! `Loop::deliver`, `Loop::close`), with the loop's [`Shared`] state and a
//! worker pool without threads whose jobs the schedule runs and completes.

use std::collections::VecDeque;
use std::sync::Arc;

use mio::{Poll, Token, Waker};
use nbd_backends::Peer;

use super::client::{Checker, Expect};
use super::pipe::Pipe;
use super::setup::Setup;
use super::tap::{self, Event};
use super::tls_client::TlsClient;
use super::{MAX_HELD, Summary};
use crate::conn::{Conn, ConnConfig, MAX_QUEUED};
use crate::dispatch::{self, Shared};
use crate::listen::Stream;
use crate::workers::{Job, Pool};

/// The connection's slab key and id (any: there is one).
const KEY: usize = 0;
const ID: u64 = 1;
/// Services in a row before the harness calls it a livelock (each handles
/// up to `conn::BUDGET` requests; inputs are far smaller).
const MAX_SERVICES: usize = 1 << 20;
/// Rounds of the final drain before the harness calls it a livelock.
const MAX_FINAL_ROUNDS: usize = 1 << 16;

thread_local! {
    /// One poll per thread for the pool's waker and the registry `Shared`
    /// needs (nothing is registered: the pipe is no socket).
    static POLL: (Poll, Arc<Waker>) = {
        let poll = Poll::new().expect("epoll");
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).expect("waker"));
        (poll, waker)
    };
}

pub fn warm_up() {
    POLL.with(|_| ());
    let _ = crate::tls::fuzzing::driver_config();
}

/// The loop's view of its one connection.
struct Harness<'a> {
    cfg: ConnConfig,
    shared: Shared,
    /// `None` once the loop closed it.
    conn: Option<Box<Conn>>,
    /// Client bytes not yet delivered.
    client: &'a [u8],
    /// Jobs a worker finished, not yet delivered to the loop (boxed as the
    /// pool and the free list hold them).
    #[allow(clippy::vec_box)]
    finished: Vec<Box<Job>>,
    /// Tap events not yet looked at.
    events: Vec<Event>,
    /// Replies in the order they were queued, for the checker.
    expect: VecDeque<Expect>,
    checker: Checker,
    /// Requests accepted or rejected (each owes one reply).
    requests: u64,
    /// Requests on the pool, by the tap's count.
    queued: usize,
    /// Output bytes the client read.
    read: u64,
    scratch: Vec<u8>,
    /// After the STARTTLS ACK: the client's TLS session, and its
    /// ciphertext not yet taken by the socket.
    tls: Option<TlsClient>,
    to_server: Vec<u8>,
}

/// The connection's pipe, while the loop has the connection.
fn pipe_of(conn: &mut Option<Box<Conn>>) -> Option<&mut Pipe> {
    match &mut conn.as_mut()?.stream {
        Stream::Pipe(p) => Some(p),
        _ => None,
    }
}

/// Serve `client` under `schedule`; panics when an invariant breaks.
pub fn run(setup: Setup, schedule: &[u8], client: &[u8]) -> Summary {
    let registry = POLL.with(|(poll, _)| poll.registry().try_clone().expect("registry"));
    let pool = setup
        .pool
        .then(|| POLL.with(|(_, waker)| Pool::manual(Arc::clone(waker))));
    let oldstyle = setup.cfg.proto.oldstyle;
    tap::arm();
    let stream = Stream::Pipe(Pipe::default());
    let conn = Conn::new(
        ID,
        ("fuzz".to_owned(), Peer::Other),
        stream,
        &setup.cfg,
        None,
    );
    let mut h = Harness {
        cfg: setup.cfg,
        shared: Shared::new(pool, registry),
        conn: Some(Box::new(conn)),
        client,
        finished: Vec::new(),
        events: Vec::new(),
        expect: VecDeque::new(),
        checker: Checker::new(oldstyle),
        requests: 0,
        queued: 0,
        read: 0,
        scratch: Vec::new(),
        tls: None,
        to_server: Vec::new(),
    };
    // A new connection is on the ready list at once (the greeting).
    h.service();
    for &event in schedule {
        h.event(event);
    }
    h.finish();
    tap::disarm();
    Summary {
        requests: h.requests,
        output: h.read,
    }
}

impl Harness<'_> {
    fn pipe(&mut self) -> Option<&mut Pipe> {
        pipe_of(&mut self.conn)
    }

    /// One schedule byte: the low two bits choose, the rest is a parameter.
    fn event(&mut self, e: u8) {
        let arg = e >> 2;
        match e & 3 {
            0 => self.deliver(1 << (arg % 17)),
            1 => {
                for _ in 0..=arg % 4 {
                    self.run_job();
                }
            }
            2 => self.complete_job(usize::from(arg)),
            _ => match arg % 4 {
                // Housekeeping (about once a second in the loop): an idle
                // connection gives back its buffers.
                0 if arg >= 32 => {
                    if let Some(c) = &mut self.conn {
                        c.housekeep();
                    }
                }
                0 => self.read_output(usize::MAX),
                1 => self.read_output(1 << (arg % 16)),
                2 => {
                    // Loop::begin_shutdown: then the connection is ready.
                    if let Some(c) = &mut self.conn {
                        c.begin_shutdown();
                    }
                    self.service();
                }
                _ => self.close_client(),
            },
        }
    }

    /// Up to `n` client bytes reach the socket (through the client's TLS
    /// session once there is one): a readable event.
    fn deliver(&mut self, n: usize) {
        let client = self.client;
        let now = &client[..n.min(client.len())];
        if let Some(t) = &mut self.tls {
            let k = t.send(now);
            self.client = &client[k..];
            t.ciphertext(&mut self.to_server);
            self.push_ciphertext();
            return;
        }
        let Some(p) = self.pipe() else { return };
        if p.input_closed() {
            return;
        }
        let k = p.deliver(now);
        self.client = &client[k..];
        if k > 0 {
            self.readable(false);
        }
    }

    /// The client's TLS records reach the socket as far as it has room.
    fn push_ciphertext(&mut self) {
        let Some(p) = pipe_of(&mut self.conn) else {
            return;
        };
        if p.input_closed() {
            return;
        }
        let k = p.deliver(&self.to_server);
        self.to_server.drain(..k);
        if k > 0 {
            self.readable(false);
        }
    }

    /// The client got `bytes` from the socket: decrypted once TLS is on,
    /// checked, and at the STARTTLS ACK the client starts its TLS session.
    fn client_reads(&mut self, bytes: &[u8]) {
        self.read += bytes.len() as u64;
        let mut plain = Vec::new();
        let plain = match &mut self.tls {
            Some(t) => {
                let handshaking = t.is_handshaking();
                t.receive(bytes, &mut plain);
                if t.failed {
                    // Before the handshake completes this is the fuzzer's
                    // doing (bytes sent before the ACK was read went to
                    // the server's session); after it, the server's.
                    assert!(
                        handshaking,
                        "the server's TLS records broke after the handshake"
                    );
                    self.checker.give_up(&mut self.expect);
                }
                &plain[..]
            }
            None => bytes,
        };
        if let Some(cipher) = self.checker.receive(plain, &mut self.expect) {
            let mut t = TlsClient::new();
            let mut early = Vec::new();
            t.receive(&cipher, &mut early);
            if t.failed || !early.is_empty() {
                self.checker.give_up(&mut self.expect);
            }
            self.tls = Some(t);
        }
        if let Some(t) = &mut self.tls {
            t.ciphertext(&mut self.to_server);
            self.push_ciphertext();
        }
    }

    /// The client closes its side: a read-closed event.
    fn close_client(&mut self) {
        let Some(p) = self.pipe() else { return };
        if p.input_closed() {
            return;
        }
        p.close_input();
        self.readable(true);
    }

    /// `Loop::on_event` for the connection's token.
    fn readable(&mut self, closed: bool) {
        let Some(c) = &mut self.conn else { return };
        if c.on_readable(closed).is_err() {
            self.close();
            return;
        }
        self.service();
    }

    /// A worker takes the next job (round robin) and runs it.
    fn run_job(&mut self) {
        if let Some(job) = self.shared.pool.as_ref().and_then(Pool::run_next) {
            self.finished.push(job);
        }
    }

    /// The loop collects finished job `i` (any order): `Loop::deliver`.
    fn complete_job(&mut self, i: usize) {
        if self.finished.is_empty() {
            return;
        }
        let mut job = self.finished.swap_remove(i % self.finished.len());
        self.take_events();
        if let Some(c) = &mut self.conn
            && c.id == job.conn_id
        {
            let reply = job.reply.as_ref().expect("a job without its reply token");
            self.expect.push_back(Expect::of(reply, false));
            self.queued -= 1;
            let before = c.held();
            c.on_job_done(&mut job, &mut self.shared);
            self.shared.account(before, c.held());
        }
        dispatch::recycle(&mut self.shared, job);
        self.service();
    }

    /// `Loop::service_ready` for this connection, until it is no longer
    /// ready (the loop would service it again on its next pass).
    fn service(&mut self) {
        for _ in 0..MAX_SERVICES {
            let Some(c) = &mut self.conn else { return };
            let before = c.held();
            let status = c.process(&self.cfg, &mut self.shared, KEY);
            let written = c.on_writable();
            self.shared.account(before, c.held());
            self.take_events();
            self.check_bounds();
            let Some(c) = &mut self.conn else { return };
            let (Ok(status), Ok(())) = (status, written) else {
                self.close();
                return;
            };
            let mut more = status.more;
            if c.should_read_again() {
                if c.on_readable(true).is_err() {
                    self.close();
                    return;
                }
                more = true;
            }
            if c.finished() {
                self.close();
                return;
            }
            if !(more && c.has_output_room()) {
                return;
            }
        }
        let p = pipe_of(&mut self.conn).map(|p| (p.input_len(), p.output_len()));
        let c = self.conn.as_ref().expect("open");
        panic!(
            "the connection stays ready forever: held {}, {} jobs, wants write {}, \
             output room {}, read again {}, pipe (in, out) {p:?}",
            c.held(),
            c.queued,
            c.wants_write(),
            c.has_output_room(),
            c.should_read_again(),
        );
    }

    /// `Loop::close`: TLS close_notify, shutdown, the connection dropped.
    /// Its replies must all be out by now.
    fn close(&mut self) {
        let Some(mut c) = self.conn.take() else {
            return;
        };
        self.shared.account(c.held(), 0);
        c.close_tls();
        // What the pipe still holds reaches the client.
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        if let Stream::Pipe(p) = &mut c.stream {
            p.take_output(usize::MAX, &mut bytes);
        }
        let _ = c.stream.shutdown();
        self.take_events();
        self.client_reads(&bytes);
        self.scratch = bytes;
        assert_eq!(self.queued, 0, "closed with {} jobs in flight", self.queued);
    }

    /// Move the tap's events into the checker's expectations.
    fn take_events(&mut self) {
        tap::take(&mut self.events);
        for e in self.events.drain(..) {
            match e {
                Event::Negotiated { at, mode } => self.checker.transmission_at(at, mode),
                Event::Replied(x) => {
                    self.requests += 1;
                    self.expect.push_back(x);
                }
                Event::Queued => {
                    self.requests += 1;
                    self.queued += 1;
                }
            }
        }
    }

    /// The client reads up to `n` bytes of output and checks them: the
    /// socket has room again, a writable event.
    fn read_output(&mut self, n: usize) {
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        if let Some(p) = self.pipe() {
            p.take_output(n, &mut bytes);
        }
        self.client_reads(&bytes);
        let any = !bytes.is_empty();
        self.scratch = bytes;
        if any {
            self.service();
        }
    }

    fn check_bounds(&self) {
        let Some(c) = &self.conn else { return };
        assert!(c.held() <= MAX_HELD, "{} bytes held", c.held());
        assert!(c.queued <= MAX_QUEUED, "{} jobs queued", c.queued);
        assert_eq!(c.queued, self.queued, "jobs counted differently");
    }

    /// What changes when anything happens.
    fn progress(&mut self) -> (usize, usize, usize, u64, usize, bool) {
        let (input, output) = self
            .pipe()
            .map_or((0, 0), |p| (p.input_len(), p.output_len()));
        (
            self.client.len() + self.to_server.len(),
            input,
            output,
            self.read,
            self.queued,
            self.conn.is_some(),
        )
    }

    /// Deliver, run, complete and read everything until nothing moves;
    /// then the client closes its side and the same again. By then the
    /// loop must have closed the connection, every request must have had
    /// its one reply and the client must have read it.
    fn finish(&mut self) {
        for closing in [false, true] {
            if closing {
                self.close_client();
            }
            for round in 0.. {
                assert!(round < MAX_FINAL_ROUNDS, "no quiescence");
                let before = self.progress();
                self.deliver(usize::MAX);
                while let Some(job) = self.shared.pool.as_ref().and_then(Pool::run_next) {
                    self.finished.push(job);
                }
                while !self.finished.is_empty() {
                    self.complete_job(0);
                }
                self.read_output(usize::MAX);
                if self.progress() == before {
                    break;
                }
            }
        }
        assert!(
            self.conn.is_none(),
            "the client closed and every reply was read, yet the connection stays open"
        );
        assert_eq!(self.queued, 0, "jobs never came back");
        assert!(
            self.expect.is_empty(),
            "{} replies queued but never read",
            self.expect.len()
        );
        self.checker.finish(self.requests);
    }
}
