//! A throwaway single-node Ceph cluster for the rbd tests and benchmark:
//! one mon and one memstore OSD on 127.0.0.1, cephx on, no mgr (RBD I/O,
//! `rbd create` and `rbd pool init` do not need one), everything under one
//! temporary directory. The recipe and its timings are in
//! ../shared/reference/ceph.md; up to a usable `rbd` pool takes ~1 s here.
//!
//! Teardown runs on every exit path: [`Cluster`]'s `Drop` kills and reaps
//! the daemons (started in the foreground, so they are our children) and
//! removes the directory. For the paths where `Drop` never runs (Ctrl-C,
//! SIGKILL, a panic with `panic=abort`), a small reaper shell in its own
//! process group (so a terminal's SIGINT does not reach it) holds a pipe from
//! this process: when the pipe closes without a "done" line, it kills the
//! daemons it was told about and removes the directory.

use crate::util::show;
use std::fs;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Instant;

/// The variable through which the tests find the cluster.
pub const CONF_ENV: &str = "NBDD_TEST_CEPH_CONF";
/// The pool created for tests.
pub const POOL: &str = "rbd";

/// A running cluster; torn down on drop.
pub struct Cluster {
    dir: PathBuf,
    daemons: Vec<Child>,
    reaper: Option<(Child, ChildStdin)>,
}

/// The reaper: reads `pid N` lines; on EOF without `done`, kills them all
/// and removes the directory (`$0`).
const REAPER: &str = r#"pids=""
while read -r cmd arg; do
  case "$cmd" in
    pid) pids="$pids $arg" ;;
    done) exit 0 ;;
  esac
done
for p in $pids; do kill -KILL "$p" 2>/dev/null; done
sleep 0.5
rm -rf -- "$0""#;

impl Cluster {
    /// Bring the cluster up, with a `rbd` pool ready for images.
    ///
    /// # Errors
    /// A step that failed, with the tail of its output; whatever was
    /// started is torn down.
    pub fn up() -> Result<Self, String> {
        let t0 = Instant::now();
        let dir = temp_dir()?;
        let mut c = Self {
            dir,
            daemons: Vec::new(),
            reaper: None,
        };
        c.start_reaper()?;
        let port = free_port()?;
        let fsid = uuid()?;
        for sub in ["run", "log", "mon", "osd/osd.0"] {
            fs::create_dir_all(c.dir.join(sub)).map_err(|e| format!("ceph: mkdir {sub}: {e}"))?;
        }
        fs::write(c.conf(), conf_text(&c.dir, &fsid, port))
            .map_err(|e| format!("ceph: writing ceph.conf: {e}"))?;
        c.make_keys()?;
        let d = c.dir.display().to_string();
        let monmap = format!("{d}/monmap");
        let mon_addr = format!("[v2:127.0.0.1:{port}]");
        run_in(
            None,
            "monmaptool",
            &[
                "--create", "--fsid", &fsid, "--addv", "a", &mon_addr, &monmap,
            ],
        )?;
        let keyring = format!("{d}/keyring");
        c.run(
            "ceph-mon",
            &[
                "--mkfs",
                "-i",
                "a",
                "--monmap",
                &monmap,
                "--keyring",
                &keyring,
            ],
        )?;
        c.spawn_daemon("ceph-mon", "a")?;
        let t_mon = t0.elapsed();
        // `osd new` (~0.3 s, mostly the Python CLI starting) overlaps the
        // OSD's mkfs.
        let osd_uuid = uuid()?;
        let mon_side = {
            let (conf, osd_uuid) = (c.conf(), osd_uuid.clone());
            std::thread::spawn(move || {
                let ceph = |args: &[&str]| run_in(Some(&conf), "ceph", args);
                let id = ceph(&["--connect-timeout", "15", "osd", "new", &osd_uuid])?;
                if id.trim() != "0" {
                    return Err(format!(
                        "ceph: `osd new` gave id {:?}, expected 0",
                        id.trim()
                    ));
                }
                Ok(())
            })
        };
        let mkfs = c.run(
            "ceph-osd",
            &[
                "-i",
                "0",
                "--mkfs",
                "--osd-uuid",
                &osd_uuid,
                "--client_mount_timeout",
                "15",
            ],
        );
        let mon_side = mon_side
            .join()
            .unwrap_or_else(|_| Err("ceph: the mon-side thread panicked".into()));
        mkfs?;
        mon_side?;
        c.spawn_daemon("ceph-osd", "0")?;
        // The pool only now: one created before the OSD exists gets its PGs
        // from the mon's periodic tick, 5 s later (measured: 5.8 s vs 1.0 s).
        c.run("ceph", &["osd", "pool", "create", POOL, "8", "8"])?;
        // The first write to the pool waits for its PGs to go active, i.e.
        // for the OSD to boot; the op timeout bounds that wait.
        c.run(
            "rbd",
            &["--rados_osd_op_timeout", "30", "pool", "init", POOL],
        )?;
        eprintln!(
            "  ceph cluster up in {:.1} s (mon {:.1} s): {}",
            t0.elapsed().as_secs_f64(),
            t_mon.as_secs_f64(),
            c.conf().display()
        );
        Ok(c)
    }

    /// `ceph.conf` (it names the admin keyring, so it is all a client needs).
    pub fn conf(&self) -> PathBuf {
        self.dir.join("ceph.conf")
    }

    /// Run `program -c ceph.conf args...`; its stdout, or an error with
    /// the tail of its output.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        run_in(Some(&self.conf()), program, args)
    }

    fn start_reaper(&mut self) -> Result<(), String> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(REAPER)
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("ceph: cannot start the reaper shell: {e}"))?;
        let stdin = child.stdin.take().ok_or("ceph: reaper without stdin")?;
        self.reaper = Some((child, stdin));
        Ok(())
    }

    fn tell_reaper(&mut self, line: &str) {
        if let Some((_, stdin)) = &mut self.reaper {
            let _ = writeln!(stdin, "{line}");
        }
    }

    /// Keys: the mon, client.admin, osd.0 and client.nbdd (the minimum
    /// caps docs/RBD.md recommends, in `nbdd.keyring` as well); the mon
    /// imports them all at mkfs, so no `ceph auth` round trip is needed.
    fn make_keys(&self) -> Result<(), String> {
        let d = self.dir.display().to_string();
        let (k, nk) = (format!("{d}/keyring"), format!("{d}/nbdd.keyring"));
        let tool = |args: &[&str]| run_in(None, "ceph-authtool", args).map(drop);
        tool(&[
            "--create-keyring",
            &k,
            "--gen-key",
            "-n",
            "mon.",
            "--cap",
            "mon",
            "allow *",
        ])?;
        tool(&[
            &k,
            "--gen-key",
            "-n",
            "client.admin",
            "--cap",
            "mon",
            "allow *",
            "--cap",
            "osd",
            "allow *",
            "--cap",
            "mgr",
            "allow *",
        ])?;
        tool(&[
            &k,
            "--gen-key",
            "-n",
            "osd.0",
            "--cap",
            "mon",
            "allow profile osd",
            "--cap",
            "mgr",
            "allow profile osd",
            "--cap",
            "osd",
            "allow *",
        ])?;
        tool(&[
            "--create-keyring",
            &nk,
            "--gen-key",
            "-n",
            "client.nbdd",
            "--cap",
            "mon",
            "profile rbd",
            "--cap",
            "osd",
            "profile rbd pool=rbd",
        ])?;
        tool(&[&k, "--import-keyring", &nk])
    }

    /// Start a daemon in the foreground (`-f`), so it stays our child and
    /// is reaped by `Drop`.
    fn spawn_daemon(&mut self, program: &str, id: &str) -> Result<(), String> {
        let out = self.dir.join(format!("log/{program}.{id}.out"));
        let file = fs::File::create(&out).map_err(|e| format!("ceph: {}: {e}", out.display()))?;
        let err = file.try_clone().map_err(|e| format!("ceph: {e}"))?;
        let mut cmd = Command::new(program);
        cmd.arg("-c").arg(self.conf()).args(["-f", "-i", id]);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("ceph: cannot run {}: {e}", show(&cmd)))?;
        self.tell_reaper(&format!("pid {}", child.id()));
        self.daemons.push(child);
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let t = Instant::now();
        // SIGKILL: a throwaway cluster needs no graceful shutdown (~2 s
        // per daemon with SIGTERM).
        for d in &mut self.daemons {
            let _ = d.kill();
        }
        for d in &mut self.daemons {
            let _ = d.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
        self.tell_reaper("done");
        if let Some((mut child, stdin)) = self.reaper.take() {
            drop(stdin);
            let _ = child.wait();
        }
        eprintln!(
            "  ceph cluster torn down in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
}

/// `program [-c conf] args...`, output captured. (`ceph-authtool` and
/// `monmaptool` get no conf: they need none.)
fn run_in(conf: Option<&Path>, program: &str, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(program);
    if let Some(conf) = conf {
        cmd.arg("-c").arg(conf);
    }
    cmd.args(args);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ceph: cannot run {program}: {e} (is ceph-common installed?)"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let tail: Vec<&str> = text.lines().rev().take(8).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "ceph: {} failed ({}):\n    {}",
        show(&cmd),
        out.status,
        tail.join("\n    ")
    ))
}

fn temp_dir() -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    for n in 0..100u32 {
        let dir = base.join(format!("nbdd-ceph.{}.{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("ceph: mkdir {}: {e}", dir.display())),
        }
    }
    Err("ceph: no free temporary directory name".into())
}

/// A free loopback port for the mon (so parallel clusters do not clash).
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("ceph: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("ceph: {e}"))
}

fn uuid() -> Result<String, String> {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("ceph: reading a uuid: {e}"))
}

/// ceph.conf: loopback only (both `public addr` and `cluster addr`, or the
/// OSD's back ports bind 0.0.0.0), msgr v2 only, size-1 pools, every path
/// under `dir`, and the 0.1 s paxos interval that makes bring-up ~2 s
/// instead of ~8 s.
fn conf_text(dir: &Path, fsid: &str, port: u16) -> String {
    let d = dir.display();
    format!(
        "[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{port}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = {d}/keyring
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
pid file = {d}/run/$name.pid
chdir = \"\"
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
paxos propose interval = 0.1
[mon]
mon data = {d}/mon/$name
mon cluster log file = {d}/log/cluster.log
[osd]
osd data = {d}/osd/$name
osd objectstore = memstore
memstore device bytes = 4294967296
# page-set mode with 4 KiB pages: far less RAM than the bufferlist default
memstore page set = true
memstore page size = 4096
osd op num shards = 1
osd op num threads per shard = 2
[client]
admin socket = {d}/run/$name.$pid.asok
log file = \"\"
log to file = false
"
    )
}

/// The test targets that need the cluster (built with `--features rbd`):
/// the backends' conformance suite and rbd tests, the driver's protocol
/// conformance suite (its export becomes an rbd image) and rbd e2e tests.
const RBD_TESTS: &[&str] = &["conformance", "rbd", "e2e_rbd", "e2e_rbd_fault"];

/// `cargo xtask test`'s rbd step: bring a cluster up, run [`RBD_TESTS`]
/// with the `rbd` feature, tear the cluster down (on every path).
///
/// # Errors
/// Bring-up failures, or test failures.
pub fn test_step() -> Result<(), String> {
    let cluster = Cluster::up()?;
    let mut cmd = crate::util::cargo();
    cmd.args([
        "test",
        "-p",
        "nbd-backends",
        "-p",
        "nbd-mio-driver",
        "--features",
        "rbd",
    ]);
    for t in RBD_TESTS {
        cmd.args(["--test", t]);
    }
    cmd.env(CONF_ENV, cluster.conf());
    crate::util::sh(&mut cmd)
}

/// `cargo xtask ceph CMD [ARGS...]`: run a command with a cluster up and
/// [`CONF_ENV`] set (for iterating on the rbd tests by hand).
///
/// # Errors
/// Bring-up failures, or the command failing.
pub fn run_with(args: &[String]) -> Result<(), String> {
    let Some((program, rest)) = args.split_first() else {
        return Err("usage: cargo xtask ceph CMD [ARGS...]".into());
    };
    let cluster = Cluster::up()?;
    let mut cmd = Command::new(program);
    cmd.args(rest).env(CONF_ENV, cluster.conf());
    crate::util::sh(&mut cmd)
}
