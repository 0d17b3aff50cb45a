//! Helpers for e2e_filters: clients, captive runs, a server that may exit.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, Server, TempDir, json, python_nbd, require_tool, run_ok};

/// A client tool, failing with the Debian package to install if absent.
pub fn tool(name: &str) -> Command {
    let package = match name {
        "qemu-io" | "qemu-img" => "qemu-utils",
        _ => "libnbd-bin",
    };
    Command::new(require_tool(name, package))
}

/// `nbdinfo --json`'s first export.
pub fn info(uri: &str) -> json::Value {
    let doc = json::parse(&run_ok(tool("nbdinfo").arg("--json").arg(uri)));
    doc.get("exports").arr()[0].clone()
}

/// Python with `h` connected to `uri` (and `nbd`, `errno` imported).
pub fn nbdsh(uri: &str, code: &str) -> String {
    let script = format!("import nbd, errno, sys\nh = nbd.NBD()\nh.connect_uri({uri:?})\n{code}\n");
    run_ok(python_nbd().args(["-c", &script]))
}

/// `qemu-io -c CMD...` on the server's export; its output. A first
/// command `-r` opens the export read-only.
pub fn qemu_io(srv: &Server, cmds: &[&str]) -> String {
    let mut c = tool("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        if *cmd == "-r" {
            c.arg("-r");
        } else {
            c.args(["-c", cmd]);
        }
    }
    run_ok(c.arg(srv.uri()))
}

/// The server in captive mode (`-U - ARGS --run SCRIPT`), as nbdkit's
/// manual pages do: it stops gracefully when SCRIPT exits.
pub fn captive(args: &[&str], script: &str) -> String {
    let (program, _) = common::server_program();
    run_ok(
        Command::new(program)
            .args(["-U", "-"])
            .args(args)
            .args(["--run", script]),
    )
}
/// A foreground server the test expects to exit by itself.
pub struct Spawned {
    child: Child,
    socket: PathBuf,
    dir: TempDir,
}

impl Spawned {
    pub fn start(args: &[&str]) -> Self {
        let (program, _) = common::server_program();
        let dir = TempDir::new("spawned");
        let socket = dir.path().join("s.sock");
        let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let child = Command::new(program)
            .arg("-f")
            .arg("-U")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the server");
        let mut s = Self { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&s.socket).is_err() {
            assert!(
                s.running(),
                "the server {args:?} exited at start: {}",
                s.stderr()
            );
            assert!(Instant::now() < deadline, "the server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// What the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Its exit code, if it exits within `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
