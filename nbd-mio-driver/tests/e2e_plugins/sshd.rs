//! A private OpenSSH server for the ssh tests: its own host key, one
//! authorized client key, SFTP in-process, on a free loopback port; the
//! files nbdd needs (known_hosts line for `[127.0.0.1]:PORT`, the client's
//! identity) in the test's directory. Runs as the current user (root in
//! CI), killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, require_tool, run_ok};

pub struct Sshd {
    child: Child,
    pub port: u16,
    pub known_hosts: PathBuf,
    pub identity: PathBuf,
}

impl Sshd {
    pub fn start(parent: &Path) -> Self {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "required tool `sshd` is not installed; install it with:\n  apt-get install -y openssh-server"
        );
        let keygen = require_tool("ssh-keygen", "openssh-client");
        let dir = parent.join("sshd");
        std::fs::create_dir_all(&dir).unwrap();
        let key = |name: &str| {
            let p = dir.join(name);
            run_ok(Command::new(&keygen).args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                &p.display().to_string(),
            ]));
            p
        };
        let (host, identity) = (key("host"), key("id"));
        std::fs::copy(identity.with_extension("pub"), dir.join("authorized_keys")).unwrap();
        let port = free_port();
        let host_pub = std::fs::read_to_string(host.with_extension("pub")).unwrap();
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}")).unwrap();
        let d = dir.display();
        let conf = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n"
        );
        std::fs::write(dir.join("sshd_config"), conf).unwrap();
        // sshd insists on its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new(sshd)
            .args([
                "-D",
                "-e",
                "-f",
                &dir.join("sshd_config").display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        let mut s = Self {
            child,
            port,
            known_hosts,
            identity,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("sshd exited ({st}); run `/usr/sbin/sshd -t -f {d}/sshd_config` to see why");
            }
            assert!(Instant::now() < deadline, "sshd did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
