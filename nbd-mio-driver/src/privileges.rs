//! Process-wide settings applied once at start-up: `-u`/`-g` (switch user
//! and group once listening), `--swap` (mlockall) and `--selinux-label`
//! (the label of the listening sockets).

use std::path::Path;

use rustix::process::{Gid, Uid};

/// `--swap`: keep every page of the server in RAM, so a swap device
/// served to this same host cannot deadlock on paging the server out.
///
/// # Errors
///
/// When the kernel refuses (RLIMIT_MEMLOCK, missing CAP_IPC_LOCK).
pub fn lock_memory() -> Result<(), String> {
    use rustix::mm::{MlockAllFlags, mlockall};
    mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE).map_err(|e| {
        format!(
            "--swap: cannot lock the server in memory: {} (raise 'ulimit -l' or run as root)",
            nbd_backends::plain_error(&e.into())
        )
    })
}

/// SELinux is active on this host.
fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// `--selinux-label`: sockets this thread creates from now on get `label`
/// (what libselinux's `setsockcreatecon` does); `None` restores the
/// default. Without SELinux on the host the option cannot apply: one
/// warning, and serving goes on.
///
/// # Errors
///
/// When SELinux refuses the label.
pub fn socket_label(label: Option<&str>) -> Result<(), String> {
    if !selinux_enabled() {
        if label.is_some() {
            log::warn!("--selinux-label: SELinux is not enabled on this host; ignored");
        }
        return Ok(());
    }
    std::fs::write("/proc/thread-self/attr/sockcreate", label.unwrap_or(""))
        .map_err(|e| format!("--selinux-label: {}", nbd_backends::plain_error(&e)))
}

/// Looks `name` up in an `/etc/passwd`-style file: the id in field 3 and
/// (for passwd) the primary group in field 4. Numbers are taken as ids.
fn lookup(file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    if let Ok(n) = name.parse() {
        return Some((n, None));
    }
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.first() == Some(&name)).then(|| {
            let id = f.get(2)?.parse().ok()?;
            Some((id, f.get(3).and_then(|g| g.parse().ok())))
        })?
    })
}

/// `-u USER` / `-g GROUP`: become them, once the sockets are bound and the
/// exports open (as nbdkit). `owned` (the Unix socket, its private
/// directory) is handed to the new owner so it can still remove it at exit. `-u` without `-g` also takes the user's
/// primary group, so no root group is kept (nbdkit keeps the old group).
///
/// # Errors
///
/// An unknown user or group, or a refused switch; more than one thread
/// running (the switch below applies to the calling thread only, so it
/// must be the only one).
pub fn switch_user(user: Option<&str>, group: Option<&str>, owned: &[&Path]) -> Result<(), String> {
    if user.is_none() && group.is_none() {
        return Ok(());
    }
    let (uid, primary) = match user {
        Some(u) => {
            let (id, g) =
                lookup("/etc/passwd", u).ok_or_else(|| format!("-u: unknown user '{u}'"))?;
            (Some(id), g)
        }
        None => (None, None),
    };
    let gid = match group {
        Some(g) => Some(
            lookup("/etc/group", g)
                .ok_or_else(|| format!("-g: unknown group '{g}'"))?
                .0,
        ),
        None => primary,
    };
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count);
    if threads > 1 {
        return Err(format!(
            "-u/-g: {threads} threads already running; cannot switch safely"
        ));
    }
    for p in owned {
        rustix::fs::chown(*p, uid.map(Uid::from_raw), gid.map(Gid::from_raw)).map_err(|e| {
            format!(
                "-u/-g: {}: {}",
                p.display(),
                nbd_backends::plain_error(&e.into())
            )
        })?;
    }
    let err = |what: &str, e: rustix::io::Errno| {
        format!(
            "{what}: cannot switch: {}",
            nbd_backends::plain_error(&e.into())
        )
    };
    if let Some(g) = gid {
        let g = Gid::from_raw(g);
        rustix::thread::set_thread_groups(&[g]).map_err(|e| err("-g", e))?;
        rustix::thread::set_thread_res_gid(g, g, g).map_err(|e| err("-g", e))?;
    }
    if let Some(u) = uid {
        let u = Uid::from_raw(u);
        rustix::thread::set_thread_res_uid(u, u, u).map_err(|e| err("-u", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_names_and_numbers() {
        assert_eq!(lookup("/etc/passwd", "root"), Some((0, Some(0))));
        assert_eq!(lookup("/etc/passwd", "1234"), Some((1234, None)));
        assert_eq!(lookup("/etc/passwd", "no-such-user-x"), None);
        assert_eq!(lookup("/etc/group", "root").map(|g| g.0), Some(0));
    }
}
