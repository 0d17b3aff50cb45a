//! Start-up modes serving real NBD clients (libnbd's nbdinfo and Python
//! bindings): `--run` captive mode, `-s` on a socketpair, systemd socket
//! activation as libnbd performs it, and a daemonized server.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NBDD: &str = env!("CARGO_BIN_EXE_nbdd");

fn need(tool: &str, package: &str) {
    assert!(
        Path::new(tool).exists(),
        "missing {tool}: apt-get install {package}"
    );
}

fn run(cmd: &mut Command) -> Output {
    // `timeout` turns a server that never exits into a failure, not a hang.
    let out = cmd.output().unwrap();
    assert!(
        out.status.code() != Some(124),
        "timed out; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn run_serves_the_command_then_stops() {
    need("/usr/bin/nbdinfo", "libnbd-bin");
    let out = run(Command::new("timeout").args([
        "20",
        NBDD,
        "-r",
        "-e",
        "disk",
        "memory",
        "1M",
        "--run",
        r#"nbdinfo --size "$uri" && nbdinfo "$uri" | grep -q 'is_read_only: true'"#,
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), "1048576\n");
}

#[test]
fn run_exit_status_is_the_commands() {
    need("/usr/bin/nbdinfo", "libnbd-bin");
    let out = run(Command::new("timeout").args([
        "20",
        NBDD,
        "null",
        "4K",
        "--run",
        r#"nbdinfo --size "$uri"; exit 3"#,
    ]));
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "4096\n");
}

#[test]
fn single_serves_a_socketpair_client() {
    need("/usr/lib/python3/dist-packages/nbd.py", "python3-libnbd");
    // As inetd or libnbd's connect_command do: one end of a socketpair is
    // nbdd's stdin and stdout. nbdd must exit once the client disconnects.
    let script = format!(
        "import nbd, socket, subprocess\n\
         a, b = socket.socketpair()\n\
         p = subprocess.Popen(['{NBDD}', '-s', 'memory', '3M'], stdin=b, stdout=b)\n\
         b.close()\n\
         h = nbd.NBD()\n\
         h.connect_socket(a.detach())\n\
         assert h.get_size() == 3 * 1024 * 1024\n\
         h.pwrite(b'x' * 512, 4096)\n\
         assert h.pread(512, 4096) == b'x' * 512\n\
         h.shutdown()\n\
         del h\n\
         assert p.wait(timeout=10) == 0, 'nbdd -s exit status'\n\
         print('ok')\n"
    );
    let out = run(Command::new("timeout").args(["20", "/usr/bin/python3", "-c", &script]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), "ok\n");
}

#[test]
fn libnbd_socket_activation() {
    need("/usr/bin/nbdinfo", "libnbd-bin");
    // `nbdinfo -- [ CMD ]` starts CMD with LISTEN_PID/LISTEN_FDS=1.
    let out = run(Command::new("timeout").args([
        "20", "nbdinfo", "--size", "--", "[", NBDD, "memory", "2M", "]",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), "2097152\n");
}

#[test]
fn daemon_serves_after_the_parent_returns() {
    need("/usr/bin/nbdinfo", "libnbd-bin");
    let dir = std::env::temp_dir().join(format!("nbdd-e2e-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("s.sock");
    let pidfile = dir.join("pid");
    let out = run(Command::new("timeout").args([
        "20",
        NBDD,
        "-P",
        pidfile.to_str().unwrap(),
        "-U",
        sock.to_str().unwrap(),
        "memory",
        "8M",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No waiting: the parent returned only once the daemon could serve.
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let info = run(Command::new("timeout").args(["20", "nbdinfo", "--size", &uri]));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert_eq!(
        stdout(&info),
        "8388608\n",
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && sock.exists() {
        assert!(Instant::now() < deadline, "daemon did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The one-liner of the service issue: `nbdd memory SIZE --run 'qemu-img
/// convert -n SRC $uri'` uploads an image, and a second `--run` in the same
/// command compares it while the server still holds the data.
#[test]
fn run_with_qemu_img_convert_and_compare() {
    need("/usr/bin/qemu-img", "qemu-utils");
    let dir = std::env::temp_dir().join(format!("nbdd-run-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.raw");
    // A deterministic, non-zero 4 MiB image.
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let script = format!(
        r#"qemu-img convert -n -f raw -O raw {s} "$uri" && qemu-img compare -f raw -F raw {s} "$uri""#,
        s = src.display()
    );
    let out = run(Command::new("timeout").args(["60", NBDD, "memory", "4M", "--run", &script]));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("Images are identical"),
        "{}",
        stdout(&out)
    );
}
