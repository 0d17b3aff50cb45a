//! The `nbdd` command line, in nbdkit's conventions.
//!
//! `nbdd [OPTIONS] BACKEND [KEY=VALUE ...]`. As with GNU getopt, options may
//! appear anywhere (before or after the backend) until a `--`; every other
//! word is the backend name followed by its parameters. Both `--opt=value`
//! and `--opt value` work, and short options cluster (`-fv`, `-p10809`).
//! The option table ([`table`]) drives the parser, `--help` and the man
//! page, so none of them can forget an option.

mod check;
pub mod table;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::str::FromStr;

pub use crate::tls::TlsMode;
pub use table::{Opt, help_text};

/// The default NBD port (IANA-assigned).
pub const DEFAULT_PORT: u16 = 10809;

/// Where a Unix-domain socket should live (`-U`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixPath {
    /// `-U PATH`.
    Path(PathBuf),
    /// `-U -`: a socket in a fresh private temporary directory, removed at exit.
    Private,
}

/// `--log=stderr|syslog|null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard error (the default in the foreground).
    Stderr,
    /// The local syslog socket `/dev/log` (the default once daemonized).
    Syslog,
    /// Discard all messages.
    Null,
}

impl FromStr for LogTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stderr" => Ok(Self::Stderr),
            "syslog" => Ok(Self::Syslog),
            "null" => Ok(Self::Null),
            _ => Err(format!(
                "--log: invalid value '{s}' (expected stderr, syslog or null)"
            )),
        }
    }
}

/// `-4` / `-6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    /// `-4`.
    V4,
    /// `-6`.
    V6,
}

/// Everything the command line asked for, validated for consistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Backend name (first bare word); empty with `--add-export`/`--config`.
    pub backend: String,
    /// Backend parameters, verbatim (`KEY=VALUE` or a bare magic value).
    pub backend_args: Vec<String>,
    /// `--filter=NAME`, in command-line order (first = nearest the client).
    pub filters: Vec<String>,
    /// `-p`: TCP port (0 asks the kernel for a free one).
    pub port: u16,
    /// Whether `-p` was given explicitly.
    pub port_given: bool,
    /// `-i`: the one address to listen on, instead of all of them.
    pub ipaddr: Option<String>,
    /// `-4` / `-6`: the last one given.
    pub family: Option<IpFamily>,
    /// `-U`: listen on a Unix socket instead of TCP.
    pub unix: Option<UnixPath>,
    /// `-f` (also implied by `--run` and `-s`): do not daemonize.
    pub foreground: bool,
    /// `-r`: serve every export read-only.
    pub readonly: bool,
    /// `-e`: the export name (default `""`), used for the URI too.
    pub export_name: String,
    /// `--description`: the single export's description.
    pub description: Option<String>,
    /// `--allow-resize`: the single export may be resized by clients.
    pub allow_resize: bool,
    /// `--add-export NAME=SPEC`, verbatim, in order.
    pub add_exports: Vec<String>,
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--default-export NAME`.
    pub default_export: Option<String>,
    /// `-o`: oldstyle handshake (`-n` switches back to newstyle).
    pub oldstyle: bool,
    /// `--no-sr`.
    pub no_sr: bool,
    /// `--no-mc`.
    pub no_mc: bool,
    /// `--mask-handshake`: global handshake flags to keep.
    pub mask_handshake: Option<u16>,
    /// `-P`: write the server's pid here once it listens.
    pub pidfile: Option<PathBuf>,
    /// `-v` count: 0 = warnings, 1 = info, 2+ = debug.
    pub verbose: u8,
    /// `-q`: no start-up line.
    pub quiet: bool,
    /// `-D` values, verbatim (accepted for nbdkit's sake; warned about).
    pub debug_flags: Vec<String>,
    /// `--tls`.
    pub tls: TlsMode,
    /// `--tls-certificates=DIR`.
    pub tls_certificates: Option<PathBuf>,
    /// `--tls-psk=FILE`.
    pub tls_psk: Option<PathBuf>,
    /// `--tls-verify-peer`.
    pub tls_verify_peer: bool,
    /// `--run CMD`: captive mode.
    pub run: Option<String>,
    /// `--print-uri`: print the client URI on stdout once listening.
    pub print_uri: bool,
    /// `--exit-with-parent`.
    pub exit_with_parent: bool,
    /// `--handshake-limit=SECS` (qemu-nbd's name): a client must finish
    /// negotiating within this time; 0 = no limit.
    pub handshake_limit: u64,
    /// `--busy-poll=USECS`: after serving a request, poll without sleeping
    /// for this long before waiting in `epoll_wait` (0 = never spin).
    pub busy_poll_us: u64,
    /// `--workers=N`: worker threads per event loop for backends that may
    /// block (0 = the default).
    pub workers: usize,
    /// `--max-connection-buffer=SIZE` (0 = the default).
    pub max_connection_buffer: u64,
    /// `--max-memory=SIZE` (0 = the default).
    pub max_memory: u64,
    /// `-s`: serve one client on stdin/stdout.
    pub single: bool,
    /// `--log`, resolved: stderr in the foreground, syslog once daemonized.
    pub log: LogTarget,
    /// `--vsock`.
    pub vsock: bool,
    /// `-t`: validated; one event loop serves every client today.
    pub threads: Option<u32>,
    /// `-u`.
    pub user: Option<String>,
    /// `-g`.
    pub group: Option<String>,
    /// `--swap`: mlockall.
    pub swap: bool,
    /// `--selinux-label`.
    pub selinux_label: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backend: String::new(),
            backend_args: Vec::new(),
            filters: Vec::new(),
            port: DEFAULT_PORT,
            port_given: false,
            ipaddr: None,
            family: None,
            unix: None,
            foreground: false,
            readonly: false,
            export_name: String::new(),
            description: None,
            allow_resize: false,
            add_exports: Vec::new(),
            config_file: None,
            default_export: None,
            oldstyle: false,
            no_sr: false,
            no_mc: false,
            mask_handshake: None,
            pidfile: None,
            verbose: 0,
            quiet: false,
            debug_flags: Vec::new(),
            tls: TlsMode::Off,
            tls_certificates: None,
            tls_psk: None,
            tls_verify_peer: false,
            run: None,
            print_uri: false,
            exit_with_parent: false,
            handshake_limit: 60,
            busy_poll_us: 0,
            workers: 0,
            max_connection_buffer: 0,
            max_memory: 0,
            single: false,
            log: LogTarget::Stderr,
            vsock: false,
            threads: None,
            user: None,
            group: None,
            swap: false,
            selinux_label: None,
        }
    }
}

impl Config {
    /// True when exports come from `--add-export` or `--config` rather
    /// than a BACKEND on the command line.
    #[must_use]
    pub fn multi_export(&self) -> bool {
        !self.add_exports.is_empty() || self.config_file.is_some()
    }

    /// The negotiation settings the options ask for (`--no-sr`, `--no-mc`,
    /// `--mask-handshake`; the TLS mode is the server's to set).
    #[must_use]
    pub fn handshake(&self) -> nbd_proto::server::HandshakeConfig {
        let mask = self.mask_handshake.unwrap_or(u16::MAX);
        nbd_proto::server::HandshakeConfig {
            fixed_newstyle: mask & 1 != 0,
            no_zeroes: mask & 2 != 0,
            // Extended headers are a superset of structured replies: a
            // client refused one must not get the other (nbdkit likewise).
            structured_replies: !self.no_sr,
            extended_headers: !self.no_sr,
            allow_meta_contexts: !self.no_mc,
            ..nbd_proto::server::HandshakeConfig::default()
        }
    }
}

/// What the command line asks `nbdd` to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Serve.
    Run(Box<Config>),
    /// `--help`; with a BACKEND (and filters), their help.
    Help {
        /// The backend named next to `--help`, if any.
        backend: Option<String>,
        /// `--filter`s given next to `--help`.
        filters: Vec<String>,
    },
    /// `--version`: print the version and exit 0.
    Version,
    /// `--dump-config`.
    DumpConfig,
    /// `BACKEND --dump-plugin`.
    DumpPlugin(Box<Config>),
    /// `--long-options` (true) or `--short-options` (false).
    ListOptions {
        /// Long options rather than short ones.
        long: bool,
    },
}

/// Informational options, which win over serving.
#[derive(Default)]
struct Info {
    help: bool,
    version: bool,
    dump_config: bool,
    dump_plugin: bool,
    list: Option<bool>,
}

/// Parses the arguments after the program name.
///
/// # Errors
///
/// A one-line message naming the offending option; `main` prints it and
/// exits with status 1.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, String> {
    let mut cfg = Config::default();
    let mut words: Vec<String> = Vec::new();
    let mut log: Option<LogTarget> = None;
    let mut info = Info::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            words.extend(args.by_ref());
            break;
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (body, None),
            };
            let o = table::find_long(name).ok_or_else(|| unknown_long(name))?;
            let value = match (o.value, inline) {
                (None, Some(_)) => return Err(format!("--{name}: takes no value")),
                (None, None) => None,
                (Some(_), Some(v)) => Some(v),
                (Some(_), None) => Some(
                    args.next()
                        .ok_or_else(|| format!("--{name}: needs a value"))?,
                ),
            };
            apply(&mut cfg, &mut log, &mut info, o, value)?;
        } else if arg.len() > 1 && arg.starts_with('-') {
            // A cluster of short options; a value-taking one eats the rest.
            let cluster = &arg[1..];
            for (i, c) in cluster.char_indices() {
                let o = table::find_short(c)
                    .ok_or_else(|| format!("-{c}: unknown option (try 'nbdd --help')"))?;
                if o.value.is_some() {
                    let rest = &cluster[i + c.len_utf8()..];
                    let value = if rest.is_empty() {
                        args.next().ok_or_else(|| format!("-{c}: needs a value"))?
                    } else {
                        rest.to_owned()
                    };
                    apply(&mut cfg, &mut log, &mut info, o, Some(value))?;
                    break;
                }
                apply(&mut cfg, &mut log, &mut info, o, None)?;
            }
        } else {
            words.push(arg);
        }
    }
    let mut words = words.into_iter();
    cfg.backend = words.next().unwrap_or_default();
    cfg.backend_args = words.collect();
    if let Some(done) = informational(&info, &mut cfg) {
        return Ok(done);
    }
    if cfg.backend.is_empty() && !cfg.multi_export() {
        return Err("no backend given (try 'nbdd --help')".to_owned());
    }
    check::finish(cfg, log).map(|c| Parsed::Run(Box::new(c)))
}

/// `--help` and friends, which end parsing without serving.
fn informational(info: &Info, cfg: &mut Config) -> Option<Parsed> {
    let backend = (!cfg.backend.is_empty()).then(|| cfg.backend.clone());
    if info.help {
        return Some(Parsed::Help {
            backend,
            filters: std::mem::take(&mut cfg.filters),
        });
    }
    if info.version {
        return Some(Parsed::Version);
    }
    if let Some(long) = info.list {
        return Some(Parsed::ListOptions { long });
    }
    if info.dump_config {
        return Some(Parsed::DumpConfig);
    }
    if info.dump_plugin {
        return Some(Parsed::DumpPlugin(Box::new(std::mem::take(cfg))));
    }
    None
}

/// The error for an unknown `--name`, with a hint for the options nbdkit
/// gained after 1.40 and for common slips.
fn unknown_long(name: &str) -> String {
    let hint = match name {
        "keepalive" | "timeout" => {
            " (an nbdkit option newer than 1.40; for a negotiation timeout see --handshake-limit)"
        }
        "exports" => " (did you mean --add-export?)",
        _ => " (try 'nbdd --help')",
    };
    format!("--{name}: unknown option{hint}")
}

/// A number in C's notation (`0x1f`, `017`, `31`), as nbdkit parses
/// `--mask-handshake`.
fn parse_c_number(v: &str) -> Option<u64> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if v.len() > 1 && v.starts_with('0') {
        u64::from_str_radix(&v[1..], 8).ok()
    } else {
        v.parse().ok()
    }
}

/// Records one option.
fn apply(
    cfg: &mut Config,
    log: &mut Option<LogTarget>,
    info: &mut Info,
    o: &Opt,
    value: Option<String>,
) -> Result<(), String> {
    let v = value.unwrap_or_default();
    let name = o.long;
    match name {
        "port" => {
            cfg.port = v
                .parse()
                .map_err(|_| format!("-p: invalid port '{v}' (0 to 65535)"))?;
            cfg.port_given = true;
        }
        "ipaddr" => cfg.ipaddr = Some(v),
        "ipv4-only" => cfg.family = Some(IpFamily::V4),
        "ipv6-only" => cfg.family = Some(IpFamily::V6),
        "unix" if v == "-" => cfg.unix = Some(UnixPath::Private),
        "unix" if v.is_empty() => return Err("-U: empty socket path".to_owned()),
        "unix" => cfg.unix = Some(UnixPath::Path(v.into())),
        "vsock" => cfg.vsock = true,
        "single" => cfg.single = true,
        "selinux-label" => cfg.selinux_label = Some(v),
        "max-connection-buffer" | "max-memory" => {
            let n = nbd_backends::parse_size(&v)
                .ok()
                .filter(|&n| n >= 1 << 20)
                .ok_or_else(|| format!("--{name}: expected a size of at least 1M, got '{v}'"))?;
            if name == "max-memory" {
                cfg.max_memory = n;
            } else {
                cfg.max_connection_buffer = n;
            }
        }
        "workers" => {
            cfg.workers = v
                .parse()
                .ok()
                .filter(|&n| (1..=1024).contains(&n))
                .ok_or_else(|| {
                    format!("--workers: expected a thread count from 1 to 1024, got '{v}'")
                })?;
        }
        "busy-poll" => {
            cfg.busy_poll_us = v
                .parse()
                .ok()
                .filter(|&us| us <= 1_000_000)
                .ok_or_else(|| {
                    format!("--busy-poll: expected microseconds from 0 to 1000000, got '{v}'")
                })?;
        }
        "handshake-limit" => {
            cfg.handshake_limit = v
                .parse()
                .map_err(|_| format!("--handshake-limit: invalid number of seconds '{v}'"))?;
        }
        "foreground" => cfg.foreground = true,
        "pidfile" => cfg.pidfile = Some(v.into()),
        "exit-with-parent" => cfg.exit_with_parent = true,
        "run" => cfg.run = Some(v),
        "print-uri" => cfg.print_uri = true,
        "user" => cfg.user = Some(v),
        "group" => cfg.group = Some(v),
        "swap" => cfg.swap = true,
        "threads" => {
            cfg.threads = Some(
                v.parse::<u32>()
                    .map_err(|_| format!("-t: invalid thread count '{v}'"))?,
            );
        }
        "readonly" => cfg.readonly = true,
        "exportname" => cfg.export_name = v,
        "description" => cfg.description = Some(v),
        "allow-resize" => cfg.allow_resize = true,
        "filter" if v.is_empty() => return Err("--filter: empty filter name".to_owned()),
        "filter" => cfg.filters.push(v),
        "add-export" => cfg.add_exports.push(v),
        "config" => cfg.config_file = Some(v.into()),
        "default-export" => cfg.default_export = Some(v),
        "newstyle" => cfg.oldstyle = false,
        "oldstyle" => cfg.oldstyle = true,
        "no-sr" => cfg.no_sr = true,
        "no-mc" => cfg.no_mc = true,
        "mask-handshake" => {
            // nbdkit takes any unsigned number and keeps the bits it knows.
            let n = parse_c_number(&v)
                .ok_or_else(|| format!("--mask-handshake: invalid number '{v}'"))?;
            cfg.mask_handshake = Some((n & 0xffff) as u16);
        }
        "tls" => cfg.tls = v.parse()?,
        "tls-certificates" => cfg.tls_certificates = Some(v.into()),
        "tls-psk" => cfg.tls_psk = Some(v.into()),
        "tls-verify-peer" => cfg.tls_verify_peer = true,
        "verbose" => cfg.verbose = cfg.verbose.saturating_add(1),
        "quiet" => cfg.quiet = true,
        "log" => *log = Some(v.parse()?),
        "debug" => {
            if !v.contains('=') {
                return Err(format!("-D: expected NAME.FLAG=N, got '{v}'"));
            }
            cfg.debug_flags.push(v);
        }
        "help" => info.help = true,
        "version" => info.version = true,
        "dump-config" => info.dump_config = true,
        "dump-plugin" => info.dump_plugin = true,
        "long-options" => info.list = Some(true),
        "short-options" => info.list = Some(false),
        other => unreachable!("option table row '{other}' has no handler"),
    }
    Ok(())
}
