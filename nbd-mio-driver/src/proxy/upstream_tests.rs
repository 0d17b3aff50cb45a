//! [`super::upstream::Upstream`] in a real `mio::Poll` against a scripted
//! upstream: a thread serving nbd-proto's server state machines over a
//! Unix socket, which can drop the connection after a given number of
//! requests (unanswered) and come back on the next accept.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use nbd_backends::{Backend, NullBackend, ZeroFlags};
use nbd_proto::client::ClientNegotiated;
use nbd_proto::server::{Connection, ConnectionConfig, ExportInfo, Input, Op as Wire};
use nbd_proto::{CmdFlags, Command, TransmissionFlags as TF};

use super::handshake::{Peer, open_peer};
use super::upstream::{Reconnect, Submitted, Upstream};
use crate::workers::{Job, Op};

const SIZE: u64 = 1 << 20;

/// What the scripted upstream saw: (command, flags, offset, len).
type Log = Arc<Mutex<Vec<(Command, CmdFlags, u64, u64)>>>;

/// Serve `sessions`: each entry is how many requests to answer before
/// dropping the connection (`None`: until the client leaves).
pub(super) fn upstream(flags: TF, sessions: Vec<Option<usize>>) -> (PathBuf, Log, JoinHandle<()>) {
    let dir = std::env::temp_dir().join(format!(
        "nbdd-upstream-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("up.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let log: Log = Arc::default();
    let log2 = Arc::clone(&log);
    let t = std::thread::spawn(move || {
        let mut disk = vec![0u8; SIZE as usize];
        for limit in sessions {
            let (s, _) = listener.accept().unwrap();
            serve(s, flags, limit, &mut disk, &log2);
        }
    });
    (path, log, t)
}

fn serve(mut s: UnixStream, flags: TF, limit: Option<usize>, disk: &mut [u8], log: &Log) {
    let mut c = Connection::new(&ConnectionConfig::default());
    let mut out = vec![0u8; 64 * 1024];
    let mut input = Vec::new();
    let mut answered = 0;
    loop {
        let n = c.poll_transmit(&mut out).unwrap();
        s.write_all(&out[..n]).unwrap();
        let (used, next) = c.handle_input(&input).unwrap();
        let w = match next {
            Input::Export(q) => {
                let info = ExportInfo {
                    size: SIZE,
                    flags,
                    name: "",
                    description: "",
                    block_sizes: None,
                    meta_contexts: 1,
                };
                c.answer_export(q, Ok(info), &mut out).unwrap()
            }
            Input::MetaContexts(q) => c.answer_meta_contexts(q, Ok(1), &mut out).unwrap(),
            Input::Request { op, reply } => {
                log.lock().unwrap().push((
                    reply.command(),
                    reply.flags(),
                    reply.offset(),
                    reply.len(),
                ));
                if limit == Some(answered) {
                    // Crash: drop the connection without answering.
                    return;
                }
                answered += 1;
                let (o, l) = (reply.offset() as usize, reply.len() as usize);
                match op {
                    Wire::Read { .. } => {
                        let p = c.read_prefix_len();
                        out[p..p + l].copy_from_slice(&disk[o..o + l]);
                        c.reply_read(reply, &mut out).unwrap() + l
                    }
                    Wire::Write { data, .. } => {
                        disk[o..o + l].copy_from_slice(data);
                        c.reply_ok(reply, &mut out).unwrap()
                    }
                    _ => c.reply_ok(reply, &mut out).unwrap(),
                }
            }
            Input::Continue => 0,
            Input::NeedInput | Input::Blocked => {
                input.drain(..used);
                let mut b = [0u8; 65536];
                match s.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => input.extend_from_slice(&b[..n]),
                }
                continue;
            }
            _ => return,
        };
        input.drain(..used);
        if s.write_all(&out[..w]).is_err() {
            return;
        }
    }
}

fn job(op: Op, buf: Vec<u8>) -> Box<Job> {
    let backend: Arc<dyn Backend> = Arc::new(NullBackend::new(SIZE).unwrap());
    Box::new(Job {
        conn_id: 0,
        token: 0,
        reply: None,
        flags: CmdFlags::empty(),
        backend,
        op,
        buf,
        data_at: 0,
        extents: Vec::new(),
        contexts: 0,
        depths: Vec::new(),
        result: Ok(()),
        cost: 0,
    })
}

struct Harness {
    poll: Poll,
    up: Upstream,
}

impl Harness {
    fn new(path: &std::path::Path, retry: Duration) -> Self {
        let poll = Poll::new().unwrap();
        let peer = Peer::Unix(path.to_path_buf());
        let first = open_peer(&peer, "", Duration::from_secs(5)).unwrap();
        let neg: ClientNegotiated = first.negotiated;
        let taken = super::Taken {
            stream: Some(first.stream),
            negotiated: neg,
            reconnect: Reconnect {
                peer,
                export: String::new(),
                retry,
            },
        };
        let up = Upstream::from_taken(taken, poll.registry(), Token(7)).unwrap();
        Self { poll, up }
    }

    /// Submit; returns the job if answered at once.
    fn submit(&mut self, op: Op, payload: &[u8]) -> Option<Box<Job>> {
        match self.up.submit(job(op, Vec::new()), payload) {
            Submitted::Now(j) => Some(j),
            Submitted::Queued => {
                if self.up.wants_write() {
                    self.up.on_writable();
                }
                None
            }
        }
    }

    /// Run the loop until `n` jobs are done (10 s at most).
    fn finish(&mut self, n: usize) -> super::tasks::JobList {
        let mut events = Events::with_capacity(16);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.up.done.len() < n {
            assert!(Instant::now() < deadline, "jobs did not finish");
            let now = Instant::now();
            self.up.tick(now);
            let t = self
                .up
                .next_deadline()
                .map_or(Duration::from_millis(50), |d| {
                    d.saturating_duration_since(now)
                })
                .min(Duration::from_millis(50));
            self.poll.poll(&mut events, Some(t)).unwrap();
            for ev in &events {
                if ev.is_writable() {
                    self.up.on_writable();
                }
                if ev.is_readable() || ev.is_read_closed() {
                    self.up.on_readable();
                }
            }
            if self.up.wants_write() {
                self.up.on_writable();
            }
        }
        std::mem::take(&mut self.up.done)
    }

    /// Run the loop until reconnected (10 s at most).
    fn until_connected(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.up.is_connected() {
            assert!(Instant::now() < deadline, "did not reconnect");
            let _ = self.finish(0);
            std::thread::sleep(Duration::from_millis(20));
            let now = Instant::now();
            self.up.tick(now);
            let mut events = Events::with_capacity(16);
            self.poll
                .poll(&mut events, Some(Duration::from_millis(20)))
                .unwrap();
            for ev in &events {
                if ev.is_writable() {
                    self.up.on_writable();
                }
                if ev.is_readable() || ev.is_read_closed() {
                    self.up.on_readable();
                }
            }
        }
    }
}

fn errno(j: &Job) -> Option<i32> {
    j.result
        .as_ref()
        .err()
        .and_then(std::io::Error::raw_os_error)
}

#[test]
fn pipelined_writes_and_reads_round_trip() {
    let (path, log, t) = upstream(TF::SEND_FLUSH | TF::SEND_FUA, vec![None]);
    let mut h = Harness::new(&path, Duration::ZERO);
    for i in 0..8u64 {
        let data = vec![i as u8 + 1; 4096];
        assert!(
            h.submit(
                Op::Write {
                    offset: i * 4096,
                    fua: i == 0
                },
                &data
            )
            .is_none()
        );
    }
    let done = h.finish(8);
    assert!(done.iter().all(|j| j.result.is_ok()));
    for i in 0..8u64 {
        assert!(
            h.submit(
                Op::Read {
                    offset: i * 4096,
                    len: 4096
                },
                &[]
            )
            .is_none()
        );
    }
    let done = h.finish(8);
    for j in &done {
        let Op::Read { offset, .. } = j.op else {
            panic!()
        };
        assert!(j.buf.iter().all(|&b| u64::from(b) == offset / 4096 + 1));
    }
    let log = log.lock().unwrap();
    assert_eq!(log[0].1, CmdFlags::FUA, "native FUA is forwarded");
    drop(h);
    t.join().unwrap();
}

#[test]
fn fua_without_upstream_fua_sends_a_flush_after_the_write() {
    let (path, log, t) = upstream(TF::SEND_FLUSH, vec![None]);
    let mut h = Harness::new(&path, Duration::ZERO);
    assert!(
        h.submit(
            Op::Write {
                offset: 0,
                fua: true
            },
            &[1u8; 512]
        )
        .is_none()
    );
    let done = h.finish(1);
    assert!(done[0].result.is_ok());
    let log = log.lock().unwrap().clone();
    let cmds: Vec<_> = log.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        cmds,
        [
            (Command::Write, CmdFlags::empty()),
            (Command::Flush, CmdFlags::empty())
        ]
    );
    drop(h);
    t.join().unwrap();
}

#[test]
fn zeroes_without_upstream_write_zeroes_become_writes_of_zeroes() {
    let (path, log, t) = upstream(TF::SEND_FLUSH, vec![None]);
    let mut h = Harness::new(&path, Duration::ZERO);
    let op = Op::Zero {
        offset: 0,
        len: SIZE,
        flags: ZeroFlags::empty(),
    };
    assert!(h.submit(op, &[]).is_none());
    assert!(h.finish(1)[0].result.is_ok());
    let log = log.lock().unwrap().clone();
    assert_eq!(log, [(Command::Write, CmdFlags::empty(), 0, SIZE)]);
    drop(h);
    t.join().unwrap();
}

#[test]
fn lost_upstream_fails_writes_in_flight_resends_reads_and_comes_back() {
    // Session 1 (the harness's connection) answers 1 request, then drops
    // with the others unanswered; session 2 (the reconnect) serves.
    let (path, log, t) = upstream(TF::SEND_FLUSH, vec![Some(1), None]);
    let mut h = Harness::new(&path, Duration::from_secs(5));
    assert!(
        h.submit(
            Op::Write {
                offset: 0,
                fua: false
            },
            &[7u8; 512]
        )
        .is_none()
    );
    assert!(
        h.submit(
            Op::Write {
                offset: 512,
                fua: false
            },
            &[8u8; 512]
        )
        .is_none()
    );
    assert!(
        h.submit(
            Op::Read {
                offset: 0,
                len: 512
            },
            &[]
        )
        .is_none()
    );
    let mut done = h.finish(3);
    done.sort_by_key(|j| matches!(j.op, Op::Read { .. }));
    assert!(done[0].result.is_ok(), "answered before the crash");
    assert_eq!(errno(&done[1]), Some(libc::EIO), "a WRITE in flight fails");
    assert!(
        done[2].result.is_ok(),
        "the READ was resent after the reconnect"
    );
    assert!(done[2].buf.iter().all(|&b| b == 7));
    // Later requests succeed on the new connection.
    assert!(
        h.submit(
            Op::Write {
                offset: 512,
                fua: false
            },
            &[9u8; 512]
        )
        .is_none()
    );
    assert!(h.finish(1)[0].result.is_ok());
    let log = log.lock().unwrap().clone();
    let tail: Vec<Command> = log.iter().rev().take(2).map(|e| e.0).collect();
    assert_eq!(
        tail,
        [Command::Write, Command::Read],
        "resent READ, then the new WRITE: {log:?}"
    );
    drop(h);
    t.join().unwrap();
}

#[test]
fn without_retry_requests_fail_fast_while_down_and_succeed_once_back() {
    let (path, _log, t) = upstream(TF::SEND_FLUSH, vec![Some(0)]);
    let mut h = Harness::new(&path, Duration::ZERO);
    assert!(
        h.submit(
            Op::Read {
                offset: 0,
                len: 512
            },
            &[]
        )
        .is_none()
    );
    let done = h.finish(1);
    assert_eq!(errno(&done[0]), Some(libc::EIO), "in flight: EIO");
    t.join().unwrap();
    // Down (the listener is gone): fail at once, never hang.
    let j = h
        .submit(
            Op::Read {
                offset: 0,
                len: 512,
            },
            &[],
        )
        .expect("answered now");
    assert_eq!(errno(&j), Some(libc::EIO));
    assert!(h.up.wants_reconnect() || !h.up.is_connected());
    // The upstream comes back on the same path.
    let _ = std::fs::remove_file(&path);
    let (path2, _log2, t2) = {
        let listener = UnixListener::bind(&path).unwrap();
        let log: Log = Arc::default();
        let l2 = Arc::clone(&log);
        let t = std::thread::spawn(move || {
            let mut disk = vec![0u8; SIZE as usize];
            let (s, _) = listener.accept().unwrap();
            serve(s, TF::SEND_FLUSH, None, &mut disk, &l2);
        });
        (path.clone(), log, t)
    };
    assert_eq!(path2, path);
    h.until_connected();
    assert!(
        h.submit(
            Op::Read {
                offset: 0,
                len: 512
            },
            &[]
        )
        .is_none()
    );
    assert!(h.finish(1)[0].result.is_ok());
    drop(h);
    t2.join().unwrap();
}
