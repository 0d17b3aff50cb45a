//! Combinations of options: what cannot go together, and what one option
//! implies for others.

use super::{Config, LogTarget, TlsMode};

/// Checks combinations and fills in implied settings.
pub(super) fn finish(mut cfg: Config, log: Option<LogTarget>) -> Result<Config, String> {
    let tcp = cfg.port_given || cfg.ipaddr.is_some();
    if cfg.unix.is_some() && tcp {
        return Err("-U cannot be combined with -p or -i".to_owned());
    }
    if cfg.single && (cfg.unix.is_some() || tcp || cfg.vsock || cfg.run.is_some()) {
        return Err("-s cannot be combined with -U, -p, -i, --vsock or --run".to_owned());
    }
    if cfg.vsock && cfg.unix.is_some() {
        return Err("--vsock cannot be combined with -U".to_owned());
    }
    exports(&cfg)?;
    protocol(&cfg)?;
    if cfg.run.is_some() {
        // Captive mode stays in front so it can wait for the command, and
        // (as nbdkit since 1.36) prefers a private socket unless told
        // to use TCP.
        cfg.foreground = true;
        if cfg.unix.is_none() && !tcp {
            cfg.unix = Some(super::UnixPath::Private);
        }
    }
    // -s serves stdin, and --exit-with-parent watches the process that
    // started us; forking would break both (nbdkit: both imply -f).
    if cfg.single || cfg.exit_with_parent {
        cfg.foreground = true;
    }
    cfg.log = log.unwrap_or(if cfg.foreground {
        LogTarget::Stderr
    } else {
        LogTarget::Syslog
    });
    Ok(cfg)
}

/// The single-export form and the several-export form do not mix: an
/// option of one export would otherwise silently apply to all of them.
fn exports(cfg: &Config) -> Result<(), String> {
    if !cfg.multi_export() {
        if cfg.default_export.is_some() {
            return Err("--default-export needs --add-export or --config".to_owned());
        }
        return Ok(());
    }
    let spec_only = [
        (!cfg.backend.is_empty(), "a BACKEND on the command line"),
        (!cfg.filters.is_empty(), "--filter"),
        (cfg.description.is_some(), "--description"),
        (cfg.allow_resize, "--allow-resize"),
        (!cfg.export_name.is_empty(), "-e"),
    ];
    if let Some((_, what)) = spec_only.iter().find(|(given, _)| *given) {
        return Err(format!(
            "{what} cannot be combined with --add-export or --config \
             (give it inside each export instead)"
        ));
    }
    if cfg.oldstyle {
        return Err(
            "-o serves one export only: it cannot be combined with --add-export or --config"
                .to_owned(),
        );
    }
    Ok(())
}

/// Protocol switches that contradict each other.
fn protocol(cfg: &Config) -> Result<(), String> {
    if cfg.allow_resize && cfg.readonly {
        return Err(
            "--allow-resize cannot be combined with -r (read-only exports never resize)".to_owned(),
        );
    }
    let fixed = cfg.mask_handshake.is_none_or(|m| m & 1 != 0);
    if !fixed && cfg.tls == TlsMode::Require {
        return Err(
            "--mask-handshake without bit 0 (fixed newstyle) cannot be combined with --tls=require"
                .to_owned(),
        );
    }
    if cfg.oldstyle && cfg.tls == TlsMode::Require {
        return Err("-o cannot be combined with --tls=require (oldstyle has no TLS)".to_owned());
    }
    Ok(())
}
