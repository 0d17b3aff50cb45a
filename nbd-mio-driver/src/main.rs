//! `nbdd`: parse the command line, prepare listeners and exports, become a
//! service (fork, pidfile, systemd notification) and run the event loop.
//! Start-up errors print one line on stderr and exit with status 1.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use nbd_mio_driver::cli::{self, Config, Parsed};
use nbd_mio_driver::listen::{self, ListenGuard, Stream};
use nbd_mio_driver::server::{Server, ServerOptions};
use nbd_mio_driver::tls::{TlsMode, TlsServerConfig};
use nbd_mio_driver::{activation, captive, daemon, logging, notify};

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("nbdd: error: {e:#}");
            ExitCode::from(1)
        }
    }
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
        Parsed::Help => {
            print!("{}{}", cli::help_text(), backends_help());
            return Ok(0);
        }
        Parsed::Version => {
            println!("nbdd {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
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
    if cfg.exit_with_parent {
        daemon::exit_with_parent().context("--exit-with-parent")?;
    }

    let exports = nbd_backends::build_with_filters_ext(
        &cfg.backend,
        &cfg.backend_args,
        &cfg.filters,
        &cfg.export_name,
        cfg.readonly,
        &[nbd_mio_driver::proxy::BACKEND],
    )
    .map_err(anyhow::Error::msg)?;
    let tls = match cfg.tls {
        TlsMode::Off => None,
        _ => Some(Arc::new(
            TlsServerConfig::load(
                cfg.tls_certificates.as_deref(),
                cfg.tls_psk.as_deref(),
                cfg.tls_verify_peer,
            )
            .map_err(anyhow::Error::msg)?,
        )),
    };

    let (listeners, _guard) = match (activated, &single) {
        (Some(l), _) => (l, ListenGuard::default()),
        (None, Some(_)) => (Vec::new(), ListenGuard::default()),
        (None, None) => listen::bind(&cfg).context("cannot listen")?,
    };
    for l in &listeners {
        log::info!("listening on {}", l.describe());
    }
    // Everything that needs the listeners is computed before the server
    // takes them.
    let uri = listen::uri(&cfg, &listeners);
    let env = cfg
        .run
        .as_ref()
        .map(|_| captive::environment(&cfg, &listeners));
    let server = Server::new(ServerOptions {
        listeners,
        exports,
        tls,
        tls_mode: cfg.tls,
        oldstyle: cfg.oldstyle,
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
    if let Some(d) = daemon {
        d.ready().context("detaching")?;
    }
    if let Err(e) = notify::notify("READY=1") {
        log::warn!("NOTIFY_SOCKET: {e}");
    }
    let captive = match (&cfg.run, env) {
        (Some(command), Some(env)) => {
            let stop = server.stop_handle();
            Some(captive::spawn(command, &env, move || stop.stop())?)
        }
        _ => None,
    };
    server.run().context("serving")?;

    match captive {
        Some(c) => Ok(c.wait().context("--run")?),
        None => Ok(0),
    }
}

/// `--print-uri` and the pidfile, once the server is ready to serve.
fn announce(cfg: &Config, uri: &str) -> anyhow::Result<()> {
    if cfg.print_uri {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{uri}")
            .and_then(|()| out.flush())
            .context("--print-uri")?;
    }
    if let Some(p) = &cfg.pidfile {
        daemon::write_pidfile(p).context("-P")?;
    }
    Ok(())
}

/// The backend list for `--help`.
fn backends_help() -> String {
    let mut s = String::from("\nBackends (the first bare word fills the key in brackets):\n");
    let proxy = nbd_mio_driver::proxy::BACKEND;
    let all = nbd_backends::BACKENDS
        .iter()
        .copied()
        .chain([(proxy.name, proxy.magic, proxy.help)]);
    for (name, magic, help) in all {
        s.push_str(&format!("  {name:<10} [{magic}]  {help}\n"));
    }
    s.push_str("\nFilters (--filter=NAME, parameters as KEY=VALUE):\n");
    for (name, params, help) in nbd_backends::filters::FILTERS {
        s.push_str(&format!("  {name:<10} {params}\n             {help}\n"));
    }
    s
}
