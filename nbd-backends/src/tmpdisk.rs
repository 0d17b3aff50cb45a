//! `tmpdisk SIZE [type=FS] [label=L] [command=SCRIPT]`: each connection
//! gets a fresh disk of its own, made when it selects the export
//! ([`Backend::open`]) and gone when it closes.
//!
//! The disk is a sparse file in a private directory under `$TMPDIR`
//! (`/var/tmp` by default), formatted with `mkfs -t TYPE` (ext4 unless
//! `type=` says otherwise), or made by `command=`, a `/bin/sh` fragment
//! that must create `"$disk"` (it sees `$disk`, `$size` and every other
//! parameter as variables). The file is opened and then unlinked at once,
//! so it disappears with the connection even if the server is killed.

use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::registry::Params;
use crate::{Backend, BlockSize, Caps, ClientInfo, Extent, FileBackend, ZeroFlags};

/// The configuration every connection's disk is made from.
pub struct TmpDisk {
    size: u64,
    fs_type: String,
    label: Option<String>,
    command: Option<String>,
    /// Other parameters, exported to `command` as shell variables.
    vars: Vec<(String, String)>,
    readonly: bool,
}

/// Caps of every per-connection disk: a file's, but never multi-conn
/// (two connections never see the same disk).
fn disk_caps(readonly: bool) -> Caps {
    let c = Caps::FLUSH | Caps::EXTENTS | Caps::CACHE;
    if readonly {
        c | Caps::READ_ONLY
    } else {
        c | Caps::FUA | Caps::TRIM | Caps::WRITE_ZEROES | Caps::FAST_ZERO
    }
}

fn shell_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl TmpDisk {
    pub(crate) fn from_params(p: &mut Params<'_>, readonly: bool) -> Result<Self, String> {
        let size = p
            .take_size("tmpdisk", "size")?
            .ok_or_else(|| crate::make::missing_size("tmpdisk"))?;
        let fs_type = p.take("type").unwrap_or("ext4").to_owned();
        if fs_type.is_empty()
            || !fs_type
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        {
            return Err(format!(
                "tmpdisk: type: '{fs_type}' is not a filesystem name"
            ));
        }
        let label = p.take("label").map(str::to_owned);
        let command = p.take("command").map(str::to_owned);
        let mut vars = Vec::new();
        for (k, v) in p.take_rest() {
            if !shell_name(k) || k == "disk" {
                return Err(format!(
                    "tmpdisk: parameter '{k}' cannot be a shell variable for command="
                ));
            }
            vars.push((k.to_owned(), v.to_owned()));
        }
        Ok(Self {
            size,
            fs_type,
            label,
            command,
            vars,
            readonly,
        })
    }

    /// Make one disk: a private directory, the disk file in it, formatted.
    /// Returns the opened disk; the directory and file are already gone.
    pub fn make(&self) -> io::Result<FileBackend> {
        let dir = private_dir()?;
        let disk = dir.join("disk");
        let r = self
            .create(&disk)
            .and_then(|()| FileBackend::open(&disk, self.readonly, false));
        let _ = std::fs::remove_file(&disk);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    fn create(&self, disk: &Path) -> io::Result<()> {
        let mut cmd = match &self.command {
            Some(script) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(script);
                c
            }
            None => {
                std::fs::File::create_new(disk)?.set_len(self.size)?;
                self.mkfs(disk)
            }
        };
        cmd.env("disk", disk)
            .env("size", self.size.to_string())
            .env("type", &self.fs_type)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(l) = &self.label {
            cmd.env("label", l);
        }
        let out = cmd.stderr(Stdio::piped()).output()?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            let last = msg
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(io::Error::other(format!(
                "{} failed ({}): {last}",
                if self.command.is_some() {
                    "command"
                } else {
                    "mkfs"
                },
                out.status
            )));
        }
        if !disk.is_file() {
            return Err(io::Error::other("command did not create $disk"));
        }
        Ok(())
    }

    /// `mkfs -t TYPE` with the option that makes each mkfs work on a
    /// plain file without asking, and the label option it spells.
    fn mkfs(&self, disk: &Path) -> Command {
        let t = self.fs_type.as_str();
        let (force, label_opt): (&[&str], &str) = match t {
            _ if t.starts_with("ext") => (&["-F"], "-L"),
            "vfat" | "fat" | "msdos" => (&["-I"], "-n"),
            "ntfs" => (&["-Q", "-F"], "-L"),
            "xfs" | "btrfs" => (&["-f"], "-L"),
            _ => (&[], "-L"),
        };
        let mut c = Command::new("mkfs");
        c.args(["-t", t]).args(force);
        if t.starts_with("ext") {
            c.arg("-q"); // mke2fs is chatty; only its errors matter
        }
        if let Some(l) = &self.label {
            c.args([label_opt, l]);
        }
        c.arg(disk);
        c
    }
}

/// A new directory only we can use, under `$TMPDIR` or `/var/tmp`.
fn private_dir() -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    for _ in 0..100 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("nbdd-tmpdisk-{}-{n}-{nanos:x}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "cannot make a private temporary directory",
    ))
}

/// No disk: the driver served the shared value instead of opening one.
fn not_opened() -> io::Error {
    log::error!("tmpdisk: request without a per-connection disk (Backend::open not called)");
    io::Error::from_raw_os_error(libc::EIO)
}

impl Backend for TmpDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        disk_caps(self.readonly)
    }

    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        let disk = self.make().map_err(|e| {
            log::error!("tmpdisk: client {}: {e}", client.id);
            e
        })?;
        // The driver describes the export to this client from its own
        // handle, so a disk of another size (command= decides) is served
        // at that size, as nbdkit does.
        Ok(Some(Arc::new(OwnDisk(disk))))
    }

    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
        Err(not_opened())
    }

    fn write_at(&self, _offset: u64, _data: &[u8], _fua: bool) -> io::Result<()> {
        Err(not_opened())
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _flags: ZeroFlags) -> io::Result<()> {
        Err(not_opened())
    }

    fn description(&self) -> Option<String> {
        Some(format!("temporary {} disk per client", self.fs_type))
    }
}

/// One connection's disk: the file backend without multi-conn.
struct OwnDisk(FileBackend);

impl Backend for OwnDisk {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn caps(&self) -> Caps {
        self.0.caps() - Caps::MULTI_CONN
    }
    fn per_client_data(&self) -> bool {
        true
    }
    fn block_size(&self) -> Option<BlockSize> {
        self.0.block_size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.0.write_at(offset, data, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.0.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.0.write_zeroes(offset, len, flags)
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.cache(offset, len)
    }
    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> io::Result<usize> {
        self.0.extents(offset, len, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Peer;

    fn client() -> ClientInfo<'static> {
        ClientInfo {
            id: 1,
            peer: Peer::Other,
            export_name: "",
            tls: false,
        }
    }

    fn tmp(command: Option<&str>, vars: &[(&str, &str)]) -> TmpDisk {
        TmpDisk {
            size: 4 << 20,
            fs_type: "ext4".into(),
            label: Some("scratch".into()),
            command: command.map(str::to_owned),
            vars: vars.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
            readonly: false,
        }
    }

    #[test]
    fn each_open_is_a_fresh_private_disk() {
        let t = tmp(
            Some(
                "truncate -s $size \"$disk\" && printf %s \"$greeting\" | dd of=\"$disk\" bs=1 seek=$((size - 2)) conv=notrunc status=none",
            ),
            &[("greeting", "hi")],
        );
        let a = t.open(&client()).unwrap().unwrap();
        let b = t.open(&client()).unwrap().unwrap();
        assert_eq!(a.size(), 4 << 20);
        a.write_at(0, b"mine", false).unwrap();
        let mut buf = [0u8; 4];
        b.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [0; 4], "connections do not share a disk");
        assert!(!a.caps().contains(Caps::MULTI_CONN));
        let mut tail = [0u8; 2];
        a.read_at((4 << 20) - 2, &mut tail).unwrap();
        assert_eq!(&tail, b"hi", "parameters are shell variables");
        assert_eq!(
            t.read_at(0, &mut buf).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        // command= decides the size, as in nbdkit; the driver describes
        // each connection's disk from its own handle.
        let other = tmp(Some("truncate -s 1M \"$disk\""), &[]);
        assert_eq!(other.open(&client()).unwrap().unwrap().size(), 1 << 20);
    }

    #[test]
    fn default_is_an_ext4_filesystem_with_the_label() {
        if !Path::new("/sbin/mkfs.ext4").exists() && !Path::new("/usr/sbin/mkfs.ext4").exists() {
            panic!("mkfs.ext4 is missing; install it with: apt-get install -y e2fsprogs");
        }
        let d = tmp(None, &[]).open(&client()).unwrap().unwrap();
        assert_eq!(d.size(), 4 << 20);
        // The ext superblock: magic 0xEF53 at 1024+56, label at 1024+120.
        let mut sb = [0u8; 1024];
        d.read_at(1024, &mut sb).unwrap();
        assert_eq!(&sb[56..58], &[0x53, 0xef]);
        assert_eq!(&sb[120..127], b"scratch");
    }

    #[test]
    fn failures_are_reported() {
        let e = tmp(Some("exit 3"), &[]).make().err().unwrap();
        assert!(e.to_string().contains("command failed"), "{e}");
        let e = tmp(Some("true"), &[]).make().err().unwrap();
        assert!(e.to_string().contains("did not create"), "{e}");
        let mut bad = tmp(None, &[]);
        bad.fs_type = "nosuchfs".into();
        assert!(
            bad.make()
                .err()
                .unwrap()
                .to_string()
                .contains("mkfs failed")
        );
    }
}
