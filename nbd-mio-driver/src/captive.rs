//! Captive mode (`--run 'COMMAND'`): run a client command against the
//! server, stop the server when it exits, and exit with its status.
//!
//! The command runs under `/bin/sh -c` with `uri`, `nbd` (same as `uri`),
//! `port`, `unixsocket`, `exportname` and `tls` in its environment, so the
//! shell expands `$uri` and friends when it parses the command, and
//! programs it starts can read them too. Variables that do not apply are
//! removed rather than inherited, so a stale `$port` from the caller's
//! environment cannot point the command at the wrong server.

use std::io;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use crate::cli::{Config, TlsMode};
use crate::listen::Listener;

/// The environment a captive command sees: `(name, Some(value))` to set,
/// `(name, None)` to remove.
#[must_use]
pub fn environment(cfg: &Config, listeners: &[Listener]) -> Vec<(&'static str, Option<String>)> {
    let uri = crate::listen::uri(cfg, listeners);
    let port = listeners.iter().find_map(Listener::tcp_port);
    let socket = listeners.iter().find_map(Listener::unix_path);
    let tls = match cfg.tls {
        TlsMode::Off => None,
        TlsMode::On => Some("1".to_owned()),
        TlsMode::Require => Some("2".to_owned()),
    };
    let mut env = vec![
        ("uri", Some(uri.clone())),
        ("nbd", Some(uri)),
        ("port", port.map(|p| p.to_string())),
        (
            "unixsocket",
            socket.map(|p| p.to_string_lossy().into_owned()),
        ),
        ("exportname", Some(cfg.export_name.clone())),
        ("tls", tls),
    ];
    env.extend(crate::activation::VARS.iter().map(|v| (*v, None)));
    env
}

/// A running captive command.
#[derive(Debug)]
pub struct Captive {
    waiter: JoinHandle<io::Result<ExitStatus>>,
}

/// Starts `command` under `/bin/sh -c`, with the given environment changes
/// and our stdin, stdout and stderr. When it exits, `on_exit` runs on the
/// waiting thread (main passes the server's stop handle).
///
/// # Errors
///
/// If `/bin/sh` cannot be started.
pub fn spawn(
    command: &str,
    env: &[(&'static str, Option<String>)],
    on_exit: impl FnOnce() + Send + 'static,
) -> io::Result<Captive> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(command).stdin(Stdio::inherit());
    for (name, value) in env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    let mut child = cmd.spawn()?;
    let waiter = std::thread::Builder::new()
        .name("captive".to_owned())
        .spawn(move || {
            let status = child.wait();
            on_exit();
            status
        })?;
    Ok(Captive { waiter })
}

impl Captive {
    /// Waits for the command and returns the status nbdd should exit with:
    /// the command's own, or 128 + N if signal N killed it (the shell's
    /// convention).
    ///
    /// # Errors
    ///
    /// If waiting for the child failed.
    pub fn wait(self) -> io::Result<u8> {
        let status = self
            .waiter
            .join()
            .map_err(|_| io::Error::other("captive waiter thread panicked"))??;
        Ok(exit_code(status))
    }
}

fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from((128 + sig) & 0xff).unwrap_or(1),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn runs_with_environment_and_reports_status() {
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopped);
        let env = [("uri", Some("nbd://x:1/".to_owned())), ("port", None)];
        let c = spawn(
            r#"test "$uri" = nbd://x:1/ && test -z "${port+set}" && exit 7"#,
            &env,
            move || flag.store(true, Ordering::SeqCst),
        )
        .unwrap();
        assert_eq!(c.wait().unwrap(), 7);
        assert!(stopped.load(Ordering::SeqCst));
    }

    #[test]
    fn signal_death_maps_to_128_plus() {
        let c = spawn("kill -TERM $$", &[], || {}).unwrap();
        assert_eq!(c.wait().unwrap(), 128 + 15);
    }

    #[test]
    fn environment_for_tcp_and_tls() {
        let tcp = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = tcp.local_addr().unwrap().port();
        let cfg = Config {
            ipaddr: Some("127.0.0.1".into()),
            export_name: "e".into(),
            tls: TlsMode::On,
            ..Config::default()
        };
        let env = environment(&cfg, &[Listener::Tcp(tcp)]);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        let uri = format!("nbd://127.0.0.1:{port}/e");
        assert_eq!(get("uri"), Some(uri.clone()));
        assert_eq!(get("nbd"), Some(uri));
        assert_eq!(get("port"), Some(port.to_string()));
        assert_eq!(get("unixsocket"), None);
        assert_eq!(get("exportname"), Some("e".into()));
        assert_eq!(get("tls"), Some("1".into()));
        assert_eq!(get("LISTEN_FDS"), None);
    }
}
