//! `nbdd`: parse the command line, prepare listeners and exports, become a
//! service (fork, pidfile, systemd notification) and run the event loop.
//! Start-up errors print one line on stderr (`nbdd: ...`) and exit with
//! status 1.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use nbd_mio_driver::cli::{self, Config, Parsed, UnixPath};
use nbd_mio_driver::listen::{self, ListenGuard, Stream};
use nbd_mio_driver::server::{Server, ServerOptions};
use nbd_mio_driver::tls::{TlsMode, TlsServerConfig};
use nbd_mio_driver::{
    activation, banner, captive, daemon, errors, exports, info, logging, notify, privileges,
    tlsdefault,
};

fn main() -> ExitCode {
    return_big_buffers_to_the_os();
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("nbdd: {}", errors::one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// Buffers of 4 MiB and more (a 32 MiB READ's reply, a large WRITE's
/// input) come from mmap and go back to the kernel when freed. glibc's
/// default threshold rises to the largest size freed so far, after which
/// such buffers are carved from the heap and a client's burst stays in
/// the server's RSS after it leaves (issue 9: 2 GiB held). Smaller
/// buffers are recycled by the driver and never reach malloc in steady
/// state, so the cost of mmap for the large ones is rare.
fn return_big_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called
    // before any other thread exists and takes no pointers.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Prints `text` on stdout (the informational options).
fn print(text: &str) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("stdout")?;
    Ok(0)
}

fn run() -> anyhow::Result<u8> {
    let args = std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string()
                .map_err(|a| anyhow::anyhow!("argument {a:?} is not UTF-8"))
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    let mut cfg = match cli::parse(args).map_err(anyhow::Error::msg)? {
        Parsed::Help { backend: None, .. } => return print(&info::help()),
        Parsed::Help {
            backend: Some(b),
            filters,
        } => return print(&info::backend_help(&b, &filters).map_err(anyhow::Error::msg)?),
        Parsed::Version => return print(&format!("nbdd {}\n", env!("CARGO_PKG_VERSION"))),
        Parsed::DumpConfig => return print(&info::dump_config()),
        Parsed::DumpPlugin(c) => {
            return print(&info::dump_plugin(&c.backend).map_err(anyhow::Error::msg)?);
        }
        Parsed::ListOptions { long } => return print(&info::list_options(long)),
        Parsed::Run(cfg) => *cfg,
    };

    // Inherited sockets first, before this process opens any descriptor
    // that could be mistaken for fd 3.
    let activated = match activation::detect().context("socket activation")? {
        Some(n) => {
            if cfg.unix.is_some() || cfg.port_given || cfg.ipaddr.is_some() || cfg.single {
                bail!("socket activation (LISTEN_FDS) cannot be combined with -U, -p, -i or -s");
            }
            // A service manager supervises the process it started.
            cfg.foreground = true;
            Some(activation::take(n).context("socket activation")?)
        }
        None => None,
    };
    let single = if cfg.single {
        Some(Stream::from_stdin().context("-s")?)
    } else {
        None
    };

    // Fork while still single-threaded (see daemon.rs).
    let daemon = if cfg.foreground {
        None
    } else {
        Some(daemon::daemonize().context("daemonizing")?)
    };
    logging::init(cfg.log, cfg.verbose).context("installing the logger")?;
    warn_ignored(&cfg);
    if cfg.exit_with_parent {
        daemon::exit_with_parent().context("--exit-with-parent")?;
    }
    if cfg.swap {
        privileges::lock_memory().map_err(anyhow::Error::msg)?;
    }

    let exports = exports::build(&cfg).map_err(anyhow::Error::msg)?;
    let tls = load_tls(&cfg)?;

    privileges::socket_label(cfg.selinux_label.as_deref()).map_err(anyhow::Error::msg)?;
    let (listeners, guard) = match (activated, &single) {
        (Some(l), _) => (l, ListenGuard::default()),
        (None, Some(_)) => (Vec::new(), ListenGuard::default()),
        (None, None) => listen::bind(&cfg).context("cannot listen")?,
    };
    if cfg.selinux_label.is_some() {
        privileges::socket_label(None).map_err(anyhow::Error::msg)?;
    }
    let mut owned = Vec::new();
    match &cfg.unix {
        Some(UnixPath::Path(p)) => owned.push(p.clone()),
        Some(UnixPath::Private) => {
            if let Some(d) = guard.private_dir() {
                owned.extend([d.to_owned(), d.join("socket")]);
            }
        }
        None => {}
    }
    let owned: Vec<&std::path::Path> = owned.iter().map(|p| p.as_path()).collect();
    privileges::switch_user(cfg.user.as_deref(), cfg.group.as_deref(), &owned)
        .map_err(anyhow::Error::msg)?;
    for l in &listeners {
        log::info!("listening on {}", l.describe());
    }
    // Everything that needs the listeners is computed before the server
    // takes them.
    let uri = listen::uri(&cfg, &listeners);
    let start_line = banner::line(&exports, &listeners, &uri);
    let env = cfg
        .run
        .as_ref()
        .map(|_| captive::environment(&cfg, &listeners));
    let server = Server::new(ServerOptions {
        listeners,
        exports,
        tls,
        tls_mode: cfg.tls,
        handshake: cfg.handshake(),
        oldstyle: cfg.oldstyle,
        threads: cfg.threads.map_or(0, |t| t as usize),
        busy_poll: std::time::Duration::from_micros(cfg.busy_poll_us),
        workers: cfg.workers,
        max_connection_buffer: usize::try_from(cfg.max_connection_buffer).unwrap_or(usize::MAX),
        max_memory: usize::try_from(cfg.max_memory).unwrap_or(usize::MAX),
        single,
        handshake_limit: (cfg.handshake_limit > 0)
            .then(|| std::time::Duration::from_secs(cfg.handshake_limit)),
    })
    .context("starting the server")?;
    // Announce readiness only now: the server has installed its signal
    // handlers, so a supervisor that reacts to the URI, the pidfile or
    // READY=1 with SIGTERM gets a graceful shutdown, not the default
    // "terminate" action.
    announce(&cfg, &uri)?;
    // The start-up line is for a person at a terminal: not with --run
    // (the command's output is the point), -s (one client on stdin) or -q.
    if cfg.foreground && !cfg.quiet && cfg.run.is_none() && !cfg.single {
        eprintln!("{start_line}");
    }
    if let Some(d) = daemon {
        d.ready().context("detaching")?;
    }
    if let Err(e) = notify::notify("READY=1") {
        log::warn!("NOTIFY_SOCKET: {e}");
    }
    // The exitlast and exitwhen filters ask for a stop through the
    // process-wide ServerControl (from whichever thread drops the last
    // handle or polls the event); it stops the loops as SIGTERM would. A
    // request made before this line (an exitwhen event at start-up) runs
    // the hook at once.
    let stop = server.stop_handle();
    nbd_backends::lifecycle::ServerControl::global().on_exit_request(move || stop.stop());
    let captive = match (&cfg.run, env) {
        (Some(command), Some(env)) => {
            let stop = server.stop_handle();
            Some(captive::spawn(command, &env, move || stop.stop())?)
        }
        _ => None,
    };
    server.run().context("serving")?;
    drop(guard);

    match captive {
        Some(c) => Ok(c.wait().context("--run")?),
        None => Ok(0),
    }
}

/// One warning line for each nbdkit option nbdd accepts but cannot apply.
fn warn_ignored(cfg: &Config) {
    for d in &cfg.debug_flags {
        log::warn!("-D {d}: nbdkit debug flags do not apply to nbdd; ignored (use -v)");
    }
}

/// The TLS credentials, from the options or nbdkit's default directory.
fn load_tls(cfg: &Config) -> anyhow::Result<Option<Arc<TlsServerConfig>>> {
    if cfg.tls == TlsMode::Off {
        if cfg.tls_certificates.is_some() || cfg.tls_psk.is_some() {
            log::warn!("--tls-certificates/--tls-psk: TLS is off (add --tls=on); ignored");
        }
        return Ok(None);
    }
    // A PSK file group or others can read is warned about where it is
    // read (tls::psk_file), from the descriptor actually opened.
    let certs = match &cfg.tls_psk {
        Some(_) => None,
        None => Some(
            tlsdefault::certificates(cfg.tls_certificates.as_deref())
                .map_err(anyhow::Error::msg)?,
        ),
    };
    let loaded = TlsServerConfig::load(
        certs.as_deref(),
        cfg.tls_psk.as_deref(),
        cfg.tls_verify_peer,
    )
    .map_err(anyhow::Error::msg)?;
    Ok(Some(Arc::new(loaded)))
}

/// `--print-uri` and the pidfile, once the server is ready to serve.
fn announce(cfg: &Config, uri: &str) -> anyhow::Result<()> {
    if cfg.print_uri {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{uri}")
            .and_then(|()| out.flush())
            .context("--print-uri")?;
    }
    if let Some(p) = &cfg.pidfile {
        daemon::write_pidfile(p).with_context(|| format!("-P: {}", p.display()))?;
    }
    Ok(())
}
