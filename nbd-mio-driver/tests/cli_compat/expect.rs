//! Running one check of the compat table against the real binary.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nbd_mio_driver::exports::spec::split_words;
use nbd_proto::{HeaderMode, TransmissionFlags};

use crate::common::TempDir;
use crate::common::json::{self, Value};
use crate::common::raw::Raw;
use crate::env::Env;

const NBDD: &str = env!("CARGO_BIN_EXE_nbdd");
const WAIT: Duration = Duration::from_secs(20);

type R = Result<(), String>;

/// Runs `check`; `Err` says what did not hold.
pub fn run(env: &Env, check: &str) -> R {
    let (left, right) = check.split_once(" => ").ok_or("no ' => ' in the check")?;
    let row = TempDir::new("row");
    let words = split_words(left)?;
    let (kind, args) = words.split_first().ok_or("empty check")?;
    let args: Vec<String> = args.iter().map(|a| env.expand(a, row.path())).collect();
    let expects: Vec<String> = split_words(right)?
        .iter()
        .map(|a| env.expand(a, row.path()))
        .collect();
    match kind.as_str() {
        "serve" => serve(env, row.path(), &args, &expects),
        "single" => single(row.path(), &args, &expects),
        "activation" => activation(&args, &expects),
        "fails" => fails(&args, &expects.join(" ")),
        "prints" => prints(&args, &expects.join(" ")),
        "starts" => starts(&args, &expects),
        other => Err(format!("unknown kind '{other}'")),
    }
}

/// Runs `cmd` to completion, killing it after [`WAIT`].
fn output(cmd: &mut Command) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(WAIT) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => {
            signal(pid, rustix::process::Signal::KILL);
            Err("did not exit within 20 s".to_owned())
        }
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn fails(args: &[String], needle: &str) -> R {
    let out = output(Command::new(NBDD).args(args))?;
    let err = text(&out.stderr);
    let line = err.trim_end();
    if out.status.code() != Some(1) {
        return Err(format!("exit status {:?}, stderr: {err}", out.status));
    }
    if line.lines().count() != 1 || !line.starts_with("nbdd: ") {
        return Err(format!("not one 'nbdd: ' line: {err:?}"));
    }
    for noise in ["(os error", "nbdd: error: ", "nbdd: nbdd:"] {
        if line.contains(noise) {
            return Err(format!("noise '{noise}' in: {line}"));
        }
    }
    if !line.contains(needle) {
        return Err(format!("'{needle}' not in: {line}"));
    }
    Ok(())
}

fn prints(args: &[String], needle: &str) -> R {
    let out = output(Command::new(NBDD).args(args))?;
    let so = text(&out.stdout);
    if !out.status.success() || !so.contains(needle) {
        return Err(format!(
            "status {:?}; '{needle}' not in stdout: {so}\nstderr: {}",
            out.status,
            text(&out.stderr)
        ));
    }
    Ok(())
}

/// Where a server under test listens.
#[derive(Clone)]
enum Addr {
    Unix(PathBuf),
    Tcp(u16),
}

fn value_after(args: &[String], short: &str, long: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == short || a == long {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            return Some(v.to_owned());
        }
    }
    None
}

fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

fn ready(addr: &Addr) -> bool {
    match addr {
        Addr::Unix(p) => UnixStream::connect(p).is_ok(),
        Addr::Tcp(port) => {
            connects(SocketAddr::from(([127, 0, 0, 1], *port)))
                || connects(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, *port)))
        }
    }
}

/// What the live checks need to know.
struct Live<'a> {
    env: &'a Env,
    addr: Addr,
    pid: u32,
    row: &'a Path,
    ask: String,
    tls: bool,
}

impl Live<'_> {
    fn uri(&self, with_name: bool) -> String {
        let name = if with_name { self.ask.as_str() } else { "" };
        match (&self.addr, self.tls) {
            (Addr::Unix(p), false) => format!("nbd+unix:///{name}?socket={}", p.display()),
            (Addr::Unix(p), true) => format!(
                "nbds+unix://alice@/{name}?socket={}&tls-psk-file={}",
                p.display(),
                self.env.psk().display()
            ),
            (Addr::Tcp(port), _) => {
                let v4 = connects(SocketAddr::from(([127, 0, 0, 1], *port)));
                let host = if v4 { "127.0.0.1" } else { "[::1]" };
                format!("nbd://{host}:{port}/{name}")
            }
        }
    }

    fn nbdinfo(&self, list: bool) -> Result<Value, String> {
        let mut cmd = Command::new("nbdinfo");
        cmd.arg("--json");
        if list {
            cmd.arg("--list");
        }
        let out = output(cmd.arg(self.uri(!list)))?;
        if !out.status.success() {
            return Err(format!("nbdinfo failed: {}", text(&out.stderr).trim()));
        }
        Ok(json::parse(&text(&out.stdout)))
    }

    /// Runs `cmd` (`sh=`, `py=`) with `$uri` set; it must exit 0.
    fn script(&self, cmd: &mut Command, what: &str) -> R {
        let out = output(cmd.env("uri", self.uri(true)))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{what}: {}\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout).trim(),
            text(&out.stderr).trim()
        ))
    }

    fn proc_field(&self, key: &str) -> Result<String, String> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .map_err(|e| e.to_string())?;
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next().map(str::to_owned))
            .ok_or_else(|| format!("no {key} in /proc/PID/status"))
    }

    /// One live expectation; `Ok(false)` if it is for after the stop.
    fn check(&mut self, e: &str) -> Result<bool, String> {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        match k {
            "ask" => self.ask = v.to_owned(),
            "tls" => self.tls = true,
            "refused" => {
                if self.nbdinfo(false).is_ok() {
                    return Err(format!("export '{}' was served", self.ask));
                }
            }
            "list" => {
                let j = self.nbdinfo(true)?;
                let names: Vec<&str> = j
                    .get("exports")
                    .arr()
                    .iter()
                    .map(|x| x.get("export-name").str())
                    .collect();
                if names.join(",") != v {
                    return Err(format!("listed {names:?}, expected {v}"));
                }
            }
            "resize" => {
                let Addr::Unix(p) = &self.addr else {
                    return Err("resize= needs a Unix socket".to_owned());
                };
                let mut c = Raw::connect_unix(p);
                c.start();
                c.negotiate_after_flags(&self.ask, HeaderMode::Simple);
                let has = c.flags.contains(TransmissionFlags::SEND_RESIZE);
                if has != (v == "yes") {
                    return Err(format!("SEND_RESIZE advertised: {has}"));
                }
            }
            "v4" | "v6" => {
                let Addr::Tcp(port) = self.addr else {
                    return Err("v4/v6 need -p".to_owned());
                };
                let a = if k == "v4" {
                    SocketAddr::from(([127, 0, 0, 1], port))
                } else {
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
                };
                if connects(a) != (v == "yes") {
                    return Err(format!("{a}: connects = {}", v != "yes"));
                }
            }
            "uid" | "gid" => {
                // The socket takes connections (into its backlog) from the
                // bind, before nbdd switches user; once a client has been
                // served, the switch is done.
                self.nbdinfo(false)?;
                let got = self.proc_field(if k == "uid" { "Uid:" } else { "Gid:" })?;
                if got != v {
                    return Err(format!("{k} {got}, expected {v}"));
                }
            }
            "threads" => {
                let got = self.proc_field("Threads:")?;
                if got != v {
                    return Err(format!("{got} threads, expected {v}"));
                }
            }
            "locked" => {
                let kb: u64 = self.proc_field("VmLck:")?.parse().unwrap_or(0);
                if kb == 0 {
                    return Err("VmLck is 0 kB".to_owned());
                }
            }
            "pidfile" => {
                let s = std::fs::read_to_string(self.row.join("pid"))
                    .map_err(|e| format!("pidfile: {e}"))?;
                if s.trim() != self.pid.to_string() {
                    return Err(format!("pidfile holds {s:?}, pid is {}", self.pid));
                }
            }
            "contexts" => {
                let j = self.nbdinfo(false)?;
                let export = j
                    .get("exports")
                    .arr()
                    .first()
                    .and_then(|e| e.try_get("contexts"));
                let names: Vec<&str> =
                    export.map_or(Vec::new(), |c| c.arr().iter().map(|x| x.str()).collect());
                if names.join(",") != v {
                    return Err(format!("meta contexts {names:?}, expected {v:?}"));
                }
            }
            "sh" => self.script(Command::new("sh").args(["-c", v]), e)?,
            "py" => {
                let code = format!("{PY_PRELUDE}{}\n", v.replace("\\n", "\n"));
                let mut py = crate::common::python_nbd();
                self.script(py.args(["-c", &code, &self.uri(true)]).arg(self.row), e)?;
            }
            "stdout" | "stderr" | "warn" | "no-stderr" | "exits" => return Ok(false),
            key => json_field(&self.nbdinfo(false)?, key, v)?,
        }
        Ok(true)
    }
}

/// What `py=CODE` runs before CODE: `h` connected to the export, `uri`,
/// `tmp` (the row's scratch directory) and two helpers.
const PY_PRELUDE: &str = "import nbd, errno, os, sys, time
uri, tmp = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
def err(f, *args):
    \"\"\"The errno f(*args) fails with (0 if it succeeds).\"\"\"
    try:
        f(*args)
    except nbd.Error as e:
        return e.errnum
    return 0
def refused():
    \"\"\"True if another client is refused now.\"\"\"
    c = nbd.NBD()
    try:
        c.connect_uri(uri)
    except nbd.Error:
        return True
    c.shutdown()
    return False
";

/// `key=value` against nbdinfo's JSON: the first export's field, else the
/// server's.
fn json_field(j: &Value, key: &str, want: &str) -> R {
    let export = j.get("exports").arr().first().and_then(|e| e.try_get(key));
    let got = export
        .or_else(|| j.try_get(key))
        .ok_or_else(|| format!("no '{key}' in nbdinfo's output"))?;
    let got = match got {
        Value::Bool(b) => b.to_string(),
        Value::Num(n) | Value::Str(n) => n.clone(),
        other => format!("{other:?}"),
    };
    if got == want {
        Ok(())
    } else {
        Err(format!("{key} = {got:?}, expected {want:?}"))
    }
}

/// Expectations on what the server printed, once it has stopped.
fn check_output(expects: &[String], stdout: &str, stderr: &str) -> R {
    for e in expects {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        let ok = match k {
            "stdout" => stdout.contains(v),
            "stderr" => stderr.contains(v),
            "no-stderr" => !stderr.contains(v),
            "warn" => {
                stderr
                    .lines()
                    .filter(|l| l.starts_with("nbdd: warning:") && l.contains(v))
                    .count()
                    == 1
            }
            _ => true,
        };
        if !ok {
            return Err(format!(
                "{e}: not so; stdout: {stdout:?} stderr: {stderr:?}"
            ));
        }
    }
    Ok(())
}

fn serve(env: &Env, row: &Path, args: &[String], expects: &[String]) -> R {
    let sock = row.join("nbd.sock");
    let mut full = vec!["-f".to_owned()];
    let addr = if let Some(u) = value_after(args, "-U", "--unix") {
        Addr::Unix(u.into())
    } else if let Some(p) = value_after(args, "-p", "--port") {
        Addr::Tcp(p.parse().map_err(|_| "bad -p")?)
    } else {
        full.extend(["-U".to_owned(), sock.display().to_string()]);
        Addr::Unix(sock)
    };
    full.extend(args.iter().cloned());
    let mut child = Command::new(NBDD)
        .args(&full)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = live(env, row, &addr, &mut child, expects);
    // `exits`: the server must stop by itself (exitlast, exitwhen).
    let by_itself = expects.iter().any(|e| e == "exits");
    if by_itself {
        let t = Instant::now();
        while child.try_wait().map_err(|e| e.to_string())?.is_none() && t.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let stopped = child.try_wait().map_err(|e| e.to_string())?;
    signal(child.id(), rustix::process::Signal::TERM);
    let out = finish(child)?;
    result?;
    if by_itself && !stopped.is_some_and(|s| s.success()) {
        return Err(format!(
            "exits: the server did not exit with status 0 by itself within 20 s ({stopped:?}); stderr: {}",
            text(&out.stderr)
        ));
    }
    check_output(expects, &text(&out.stdout), &text(&out.stderr))
}

fn finish(child: Child) -> Result<Output, String> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(WAIT) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => {
            signal(pid, rustix::process::Signal::KILL);
            Err("did not stop within 20 s of SIGTERM".to_owned())
        }
    }
}

fn live(env: &Env, row: &Path, addr: &Addr, child: &mut Child, expects: &[String]) -> R {
    let start = Instant::now();
    while !ready(addr) {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("exited before serving ({st}): {err}"));
        }
        if start.elapsed() > WAIT {
            return Err("not listening after 20 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut l = Live {
        env,
        addr: addr.clone(),
        pid: child.id(),
        row,
        ask: String::new(),
        tls: false,
    };
    for e in expects {
        l.check(e)?;
    }
    Ok(())
}

/// JSON expectations only, for the kinds that allow one client.
fn json_only(j: &Value, expects: &[String]) -> R {
    for e in expects {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| format!("'{e}': only KEY=VALUE here"))?;
        json_field(j, k, v)?;
    }
    Ok(())
}

fn single(row: &Path, args: &[String], expects: &[String]) -> R {
    let path = row.join("single.sock");
    let listener = UnixListener::bind(&path).map_err(|e| e.to_string())?;
    let info = Command::new("nbdinfo")
        .arg("--json")
        .arg(format!("nbd+unix:///?socket={}", path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let (conn, _) = listener.accept().map_err(|e| e.to_string())?;
    let fd = std::os::fd::OwnedFd::from(conn);
    let out_fd = fd.try_clone().map_err(|e| e.to_string())?;
    let server = Command::new(NBDD)
        .arg("-s")
        .args(args)
        .stdin(Stdio::from(fd))
        .stdout(Stdio::from(out_fd))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let out = finish(info)?;
    let srv = finish(server)?;
    if !out.status.success() {
        return Err(format!(
            "nbdinfo: {} / nbdd: {}",
            text(&out.stderr),
            text(&srv.stderr)
        ));
    }
    json_only(&json::parse(&text(&out.stdout)), expects)
}

fn activation(args: &[String], expects: &[String]) -> R {
    let out = output(
        Command::new("nbdinfo")
            .args(["--json", "--", "[", NBDD])
            .args(args)
            .arg("]"),
    )?;
    if !out.status.success() {
        return Err(format!("nbdinfo: {}", text(&out.stderr)));
    }
    json_only(&json::parse(&text(&out.stdout)), expects)
}

fn starts(args: &[String], expects: &[String]) -> R {
    let mut child = Command::new(NBDD)
        .args(["-f", "--print-uri"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT).unwrap_or_default();
    signal(child.id(), rustix::process::Signal::TERM);
    let out = finish(child)?;
    check_output(expects, &line, &text(&out.stderr))
}
