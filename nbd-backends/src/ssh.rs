//! `ssh host=HOST PATH`: a file on an SSH server, read and written over
//! SFTP (nbdkit's ssh plugin; built on libssh2 through the `ssh2` crate).
//!
//! One session and one open file serve every client, one request at a
//! time under a mutex: libssh2 sessions are not re-entrant. Calls block,
//! so they run on the driver's worker pool. Flush is the SFTP fsync
//! extension (OpenSSH's `fsync@openssh.com`); a server without it makes
//! flush fail with EIO.

use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ssh2::{CheckResult, KnownHostFileKind, OpenFlags, OpenType, Session};

use crate::registry::Params;
use crate::util::{check_read, check_write, len64, read_only, read_secret};
use crate::{Backend, Caps, ZeroFlags};

/// A remote file.
pub struct SshBackend {
    /// The session must outlive the file; both are used under the lock.
    inner: Mutex<(Session, ssh2::File)>,
    size: u64,
    readonly: bool,
    what: String,
}

struct Opts<'a> {
    host: &'a str,
    port: u16,
    user: String,
    password: Option<String>,
    identity: Option<&'a str>,
    known_hosts: Option<&'a str>,
    verify: bool,
    timeout: Option<Duration>,
    compression: bool,
    create: Option<(u64, i32)>,
}

fn ssh_err(what: &str, e: impl std::fmt::Display) -> String {
    format!("ssh: {what}: {e}")
}

/// `$USER`, else the name of our uid in /etc/passwd (what ssh itself uses).
fn current_user() -> Option<String> {
    if let Ok(u) = std::env::var("USER") {
        return Some(u);
    }
    let uid = rustix::process::getuid().as_raw().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_owned())
    })
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

impl SshBackend {
    pub(crate) fn from_params(p: &mut Params<'_>, readonly: bool) -> Result<Self, String> {
        let path = p
            .take("path")
            .ok_or("ssh: missing parameter path (e.g. ssh host=server disk.img)")?;
        let host = p.take("host").ok_or("ssh: missing parameter host")?;
        let port = match p.take("port") {
            None => 22,
            Some(v) => v
                .parse()
                .map_err(|_| format!("ssh: port: expected a port number, got '{v}'"))?,
        };
        let user = match p.take("user") {
            Some(u) => u.to_owned(),
            None => current_user().ok_or("ssh: no user= and no name for this process's uid")?,
        };
        let password = p
            .take("password")
            .map(|v| read_secret("ssh", "password", v))
            .transpose()?;
        let timeout = match p.take("timeout") {
            None | Some("0") => None,
            Some(v) => {
                Some(Duration::from_secs(v.parse().map_err(|_| {
                    format!("ssh: timeout: expected seconds, got '{v}'")
                })?))
            }
        };
        let create = match p.take_bool("ssh", "create")? {
            Some(true) => {
                let size = p
                    .take_size("ssh", "create-size")?
                    .ok_or("ssh: create=true needs create-size=")?;
                let mode = match p.take("create-mode") {
                    None => 0o600,
                    Some(m) => i32::from_str_radix(m.trim_start_matches("0o"), 8)
                        .ok()
                        .filter(|m| (0..=0o7777).contains(m))
                        .ok_or_else(|| {
                            format!("ssh: create-mode: expected octal permissions, got '{m}'")
                        })?,
                };
                Some((size, mode))
            }
            _ => None,
        };
        if p.take("config").is_some() {
            log::warn!("ssh: config= is accepted but nbdd does not read ssh configuration files");
        }
        let opts = Opts {
            host,
            port,
            user,
            password,
            identity: p.take("identity"),
            known_hosts: p.take("known-hosts"),
            verify: p.take_bool("ssh", "verify-remote-host")?.unwrap_or(true),
            timeout,
            compression: p.take_bool("ssh", "compression")?.unwrap_or(false),
            create,
        };
        Self::connect(&opts, path, readonly)
    }

    fn connect(o: &Opts<'_>, path: &str, readonly: bool) -> Result<Self, String> {
        let what = format!("{}@{}:{}", o.user, o.host, path);
        let tcp = TcpStream::connect((o.host, o.port))
            .map_err(|e| ssh_err(&format!("{}:{}", o.host, o.port), e))?;
        let mut sess = Session::new().map_err(|e| ssh_err("session", e))?;
        sess.set_compress(o.compression);
        if let Some(t) = o.timeout {
            sess.set_timeout(u32::try_from(t.as_millis()).unwrap_or(u32::MAX));
        }
        sess.set_tcp_stream(tcp);
        sess.handshake().map_err(|e| ssh_err("handshake", e))?;
        if o.verify {
            check_host(&sess, o)?;
        }
        authenticate(&sess, o)?;
        let sftp = sess.sftp().map_err(|e| ssh_err("sftp", e))?;
        let mut flags = if readonly {
            OpenFlags::READ
        } else {
            OpenFlags::READ | OpenFlags::WRITE
        };
        let mut mode = 0o600;
        if let Some((_, m)) = o.create {
            flags |= OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE;
            mode = m;
        }
        let mut file = sftp
            .open_mode(Path::new(path), flags, mode, OpenType::File)
            .map_err(|e| ssh_err(path, e))?;
        if let Some((size, _)) = o.create {
            let stat = ssh2::FileStat {
                size: Some(size),
                uid: None,
                gid: None,
                perm: None,
                atime: None,
                mtime: None,
            };
            file.setstat(stat).map_err(|e| ssh_err("create-size", e))?;
        }
        let size = file
            .stat()
            .map_err(|e| ssh_err(path, e))?
            .size
            .ok_or_else(|| ssh_err(path, "no size"))?;
        Ok(Self {
            inner: Mutex::new((sess, file)),
            size,
            readonly,
            what,
        })
    }

    /// `user@host:path`.
    pub fn describe(&self) -> String {
        self.what.clone()
    }

    fn with<R>(&self, f: impl FnOnce(&mut ssh2::File) -> io::Result<R>) -> io::Result<R> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut g.1).map_err(|e| {
            log::warn!("ssh: {}: {e}", self.what);
            io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO))
        })
    }
}

/// The server's key must be in known-hosts (`[host]:port` for other ports).
fn check_host(sess: &Session, o: &Opts<'_>) -> Result<(), String> {
    let file = o
        .known_hosts
        .map_or_else(|| home().join(".ssh/known_hosts"), PathBuf::from);
    let mut kh = sess.known_hosts().map_err(|e| ssh_err("known hosts", e))?;
    kh.read_file(&file, KnownHostFileKind::OpenSSH)
        .map_err(|e| {
            ssh_err(
                &file.display().to_string(),
                format!("{e} (verify-remote-host=false skips the check)"),
            )
        })?;
    let (key, _) = sess
        .host_key()
        .ok_or_else(|| ssh_err("handshake", "no host key"))?;
    match kh.check_port(o.host, o.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => Err(format!(
            "ssh: {}: the host key does NOT match {}",
            o.host,
            file.display()
        )),
        CheckResult::NotFound => Err(format!(
            "ssh: {}: host key not in {} (add it with ssh-keyscan, or verify-remote-host=false)",
            o.host,
            file.display()
        )),
        CheckResult::Failure => Err(format!("ssh: {}: host key check failed", o.host)),
    }
}

/// The agent, then the identity file(s), then the password.
fn authenticate(sess: &Session, o: &Opts<'_>) -> Result<(), String> {
    let user = o.user.as_str();
    if o.identity.is_none()
        && o.password.is_none()
        && sess.userauth_agent(user).is_ok()
        && sess.authenticated()
    {
        return Ok(());
    }
    let keys: Vec<PathBuf> = match o.identity {
        Some(k) => vec![PathBuf::from(k)],
        None => ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|k| home().join(".ssh").join(k))
            .collect(),
    };
    let mut last = String::from("no key or password accepted");
    for k in keys.iter().filter(|k| k.exists()) {
        match sess.userauth_pubkey_file(user, None, k, None) {
            Ok(()) if sess.authenticated() => return Ok(()),
            Ok(()) => {}
            Err(e) => last = format!("{}: {e}", k.display()),
        }
    }
    if let Some(pw) = &o.password {
        match sess.userauth_password(user, pw) {
            Ok(()) if sess.authenticated() => return Ok(()),
            Ok(()) => {}
            Err(e) => last = format!("password: {e}"),
        }
    }
    Err(format!(
        "ssh: {user}@{}: authentication failed ({last})",
        o.host
    ))
}

impl Backend for SshBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        if self.readonly {
            Caps::READ_ONLY | Caps::FLUSH
        } else {
            Caps::FLUSH | Caps::FUA | Caps::WRITE_ZEROES
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_read(offset, len64(buf), self.size)?;
        self.with(|f| {
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(buf)
        })
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        if self.readonly {
            return Err(read_only());
        }
        check_write(offset, len64(data), self.size)?;
        self.with(|f| {
            f.seek(SeekFrom::Start(offset))?;
            f.write_all(data)?;
            if fua {
                f.fsync().map_err(io::Error::from)
            } else {
                Ok(())
            }
        })
    }

    fn flush(&self) -> io::Result<()> {
        self.with(|f| f.fsync().map_err(io::Error::from))
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        if self.readonly {
            return Err(read_only());
        }
        if flags.contains(ZeroFlags::FAST) {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let end = check_write(offset, len, self.size)?;
        let zeroes = vec![0u8; (end - offset).min(1 << 20) as usize];
        let mut at = offset;
        while at < end {
            let n = (end - at).min(zeroes.len() as u64) as usize;
            self.write_at(at, &zeroes[..n], false)?;
            at += n as u64;
        }
        if flags.contains(ZeroFlags::FUA) {
            self.flush()
        } else {
            Ok(())
        }
    }
}
