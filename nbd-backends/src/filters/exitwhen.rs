//! `exitwhen`: exit gracefully when an event happens (a file created or
//! deleted, a pipe closed, a process gone, a script exiting 88): from then
//! on new clients are refused, and the server exits through
//! [`ServerControl`] once no client is connected. Events are checked when
//! clients connect and disconnect, and every `exit-when-poll=` seconds
//! (default 60) by a background thread while the server is idle. An event
//! that already happened at start-up exits at once.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::params::FilterParams;
use crate::lifecycle::ServerControl;
use crate::{Backend, ClientInfo};

/// One `exit-when-*` event.
#[derive(Debug)]
pub enum Event {
    /// `exit-when-file-created=`.
    FileCreated(PathBuf),
    /// `exit-when-file-deleted=`.
    FileDeleted(PathBuf),
    /// `exit-when-pipe-closed=FD`: our own descriptor of that pipe,
    /// opened through `/proc/self/fd` so no unsafe code borrows the raw
    /// number; its writers closing shows as POLLHUP.
    PipeClosed(i32, File),
    /// `exit-when-process-exits=`.
    ProcessExits(i32),
    /// `exit-when-script=`: `sh -c SCRIPT` exiting 88.
    Script(String),
}

impl Event {
    /// Has it happened?
    fn happened(&self) -> bool {
        match self {
            Self::FileCreated(p) => p.exists(),
            Self::FileDeleted(p) => !p.exists(),
            Self::PipeClosed(_, f) => {
                let mut fds = [rustix::event::PollFd::new(f, rustix::event::PollFlags::IN)];
                let zero = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
                    && fds[0]
                        .revents()
                        .intersects(rustix::event::PollFlags::HUP | rustix::event::PollFlags::ERR)
            }
            Self::ProcessExits(pid) => !process_alive(*pid),
            Self::Script(s) => match std::process::Command::new("sh").arg("-c").arg(s).status() {
                Ok(st) if st.code() == Some(88) => true,
                Ok(st) if st.success() => false,
                Ok(st) => {
                    log::warn!("exitwhen filter: exit-when-script: {st}");
                    false
                }
                Err(e) => {
                    log::warn!("exitwhen filter: exit-when-script: {e}");
                    false
                }
            },
        }
    }
}

/// Is process `pid` running? A zombie (exited, not yet reaped by its
/// parent) is not: it has exited, which is the event.
fn process_alive(pid: i32) -> bool {
    let exists = rustix::process::Pid::from_raw(pid)
        .is_some_and(|p| rustix::process::test_kill_process(p) != Err(rustix::io::Errno::SRCH));
    // /proc/PID/stat is "PID (COMM) STATE ...": the state follows the last
    // ')' (COMM may hold anything).
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
        st.rfind(')')
            .and_then(|i| st[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    });
    exists && !zombie
}

struct Shared {
    control: &'static ServerControl,
    events: Vec<Event>,
    open: AtomicUsize,
    triggered: AtomicBool,
}

impl Shared {
    /// Check the events (once one happened, the answer stays yes).
    fn triggered(&self) -> bool {
        if self.triggered.load(Ordering::SeqCst) {
            return true;
        }
        match self.events.iter().find(|e| e.happened()) {
            Some(e) => {
                log::info!("exitwhen filter: {e:?} happened");
                self.triggered.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Exit if the event happened and nobody is connected.
    fn maybe_exit(&self) {
        if self.open.load(Ordering::SeqCst) == 0 && self.triggered() {
            self.control.request_exit("exitwhen filter: event happened");
        }
    }
}

/// Refuses clients once an event happened; exits when idle after it.
pub struct ExitWhen {
    inner: Arc<dyn Backend>,
    shared: Arc<Shared>,
    counted: bool,
}

impl ExitWhen {
    /// Watch `events` over `inner`, polling every `poll` while idle.
    pub fn new(
        inner: Arc<dyn Backend>,
        events: Vec<Event>,
        poll: Duration,
        control: &'static ServerControl,
    ) -> Self {
        let shared = Arc::new(Shared {
            control,
            events,
            open: AtomicUsize::new(0),
            triggered: AtomicBool::new(false),
        });
        if !shared.events.is_empty() {
            shared.maybe_exit();
            let weak = Arc::downgrade(&shared);
            let spawned = std::thread::Builder::new()
                .name("exitwhen".into())
                .spawn(move || poll_loop(&weak, poll));
            if let Err(e) = spawned {
                log::warn!("exitwhen filter: cannot start the poll thread: {e}");
            }
        }
        Self {
            inner,
            shared,
            counted: false,
        }
    }

    fn refusal(&self) -> io::Result<()> {
        if self.shared.triggered() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "exitwhen filter: the server is exiting",
            ));
        }
        Ok(())
    }
}

fn poll_loop(shared: &Weak<Shared>, poll: Duration) {
    loop {
        std::thread::sleep(poll);
        let Some(s) = shared.upgrade() else {
            return;
        };
        s.maybe_exit();
        if s.control.exit_requested() {
            return;
        }
    }
}

impl Drop for ExitWhen {
    fn drop(&mut self) {
        if self.counted {
            self.shared.open.fetch_sub(1, Ordering::SeqCst);
            self.shared.maybe_exit();
        }
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    let mut events = Vec::new();
    for v in p.take_all("exit-when-file-created") {
        events.push(Event::FileCreated(v.into()));
    }
    for v in p.take_all("exit-when-file-deleted") {
        events.push(Event::FileDeleted(v.into()));
    }
    for v in p.take_all("exit-when-pipe-closed") {
        let fd: i32 = v.parse().map_err(|_| {
            p.bad(
                "exit-when-pipe-closed",
                v,
                "expected a file descriptor number",
            )
        })?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/proc/self/fd/{fd}"))
            .map_err(|e| p.bad("exit-when-pipe-closed", v, e))?;
        events.push(Event::PipeClosed(fd, f));
    }
    for v in p.take_all("exit-when-process-exits") {
        let pid = v
            .parse::<i32>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| p.bad("exit-when-process-exits", v, "expected a process ID"))?;
        // As nbdkit: a process that is already gone is a mistake, not an
        // event.
        if !process_alive(pid) {
            return Err(p.bad("exit-when-process-exits", v, "no such process"));
        }
        events.push(Event::ProcessExits(pid));
    }
    for v in p.take_all("exit-when-script") {
        events.push(Event::Script(v.to_owned()));
    }
    let poll = p
        .take_delay("exit-when-poll")?
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_millis(10));
    // The events are moved into the one shared state: a second export
    // (file dir=) gets a filter without events of its own.
    let events = std::sync::Mutex::new(Some(events));
    Ok(super::Spec::new(move |b| {
        let ev = events.lock().map(|mut e| e.take()).unwrap_or_default();
        Ok(Arc::new(ExitWhen::new(
            b,
            ev.unwrap_or_default(),
            poll,
            ServerControl::global(),
        )))
    }))
}

impl super::Filter for ExitWhen {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached forwarded: reads are the layer below's; the filter counts connections.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        super::layer::forward_cached(self, offset, buf)
    }
    // try_write_cached forwarded: writes are the layer below's; the filter counts connections.
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        super::layer::forward_cached_write(self, offset, data)
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        self.shared.open.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(Self {
            inner,
            shared: Arc::clone(&self.shared),
            counted: true,
        }))
    }
    fn preconnect(&self, client: &ClientInfo<'_>) -> io::Result<()> {
        self.refusal()?;
        self.inner.preconnect(client)
    }
    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        self.refusal()?;
        let inner = super::layer::open_below(&self.inner, client)?;
        super::Filter::reopen(self, inner).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryBackend, Peer};

    fn control() -> &'static ServerControl {
        Box::leak(Box::new(ServerControl::new()))
    }

    const C: ClientInfo<'static> = ClientInfo {
        id: 1,
        peer: Peer::Unix,
        export_name: "",
        tls: false,
    };

    #[test]
    fn file_created_refuses_new_clients_and_exits_after_the_last() {
        let flag = std::env::temp_dir().join(format!("nbdd-exitwhen-{}", std::process::id()));
        let _ = std::fs::remove_file(&flag);
        let ctl = control();
        let e = ExitWhen::new(
            Arc::new(MemoryBackend::new(1).unwrap()),
            vec![Event::FileCreated(flag.clone())],
            Duration::from_secs(3600),
            ctl,
        );
        let a = e.open(&C).unwrap().unwrap();
        std::fs::write(&flag, b"").unwrap();
        assert!(e.preconnect(&C).is_err(), "refused after the event");
        assert!(e.open(&C).is_err());
        assert!(!ctl.exit_requested(), "a client is still connected");
        drop(a);
        let _ = std::fs::remove_file(&flag);
        assert!(ctl.exit_requested());
    }

    #[test]
    fn idle_poll_sees_a_process_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let ctl = control();
        let _e = ExitWhen::new(
            Arc::new(MemoryBackend::new(1).unwrap()),
            vec![Event::ProcessExits(pid)],
            Duration::from_millis(20),
            ctl,
        );
        assert!(!ctl.exit_requested());
        child.wait().unwrap();
        let t = std::time::Instant::now();
        while !ctl.exit_requested() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(ctl.exit_requested());
    }

    #[test]
    fn an_unreaped_child_has_exited() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(process_alive(pid));
        child.kill().unwrap();
        // Not reaped yet: a zombie until wait().
        let t = std::time::Instant::now();
        while process_alive(pid) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!process_alive(pid), "a zombie is not running");
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn pipe_closed_and_script() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&r);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/proc/self/fd/{fd}"))
            .unwrap();
        let ev = Event::PipeClosed(fd, f);
        assert!(!ev.happened());
        drop(w);
        assert!(ev.happened());
        assert!(Event::Script("exit 88".into()).happened());
        assert!(!Event::Script("exit 0".into()).happened());
        assert!(!Event::Script("exit 3".into()).happened());
    }
}
