//! The `nbdd` command line, in nbdkit's conventions.
//!
//! `nbdd [OPTIONS] BACKEND [KEY=VALUE ...]`. As with GNU getopt, options may
//! appear anywhere (before or after the backend) until a `--`; every other
//! word is the backend name followed by its parameters. Both `--opt=value`
//! and `--opt value` work, and short options cluster (`-fv`, `-p10809`).
//! The option table below drives both the parser and `--help`, so the help
//! cannot forget an option.

use std::path::PathBuf;
use std::str::FromStr;

pub use crate::tls::TlsMode;

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
                "invalid --log value '{s}' (expected stderr, syslog or null)"
            )),
        }
    }
}

/// Everything the command line asked for, validated for consistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Backend name (first bare word).
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
    /// `-U`: listen on a Unix socket instead of TCP.
    pub unix: Option<UnixPath>,
    /// `-f` (also implied by `--run` and `-s`): do not daemonize.
    pub foreground: bool,
    /// `-r`: serve every export read-only.
    pub readonly: bool,
    /// `-e`: the export name (default `""`), used for the URI too.
    pub export_name: String,
    /// `-o`: oldstyle handshake (`-n` switches back to newstyle).
    pub oldstyle: bool,
    /// `-P`: write the server's pid here once it listens.
    pub pidfile: Option<PathBuf>,
    /// `-v` count: 0 = warnings, 1 = info, 2+ = debug.
    pub verbose: u8,
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
    /// `-s`: serve one client on stdin/stdout.
    pub single: bool,
    /// `--log`, resolved: stderr in the foreground, syslog once daemonized.
    pub log: LogTarget,
    /// `--vsock`.
    pub vsock: bool,
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
            unix: None,
            foreground: false,
            readonly: false,
            export_name: String::new(),
            oldstyle: false,
            pidfile: None,
            verbose: 0,
            tls: TlsMode::Off,
            tls_certificates: None,
            tls_psk: None,
            tls_verify_peer: false,
            run: None,
            print_uri: false,
            exit_with_parent: false,
            handshake_limit: 60,
            single: false,
            log: LogTarget::Stderr,
            vsock: false,
        }
    }
}

/// What the command line asks `nbdd` to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Serve.
    Run(Box<Config>),
    /// `--help`: print [`help_text`] and exit 0.
    Help,
    /// `--version`: print the version and exit 0.
    Version,
}

/// One row of the option table.
struct Opt {
    long: &'static str,
    short: Option<char>,
    /// The value's placeholder, or `None` for a flag.
    value: Option<&'static str>,
    help: &'static str,
}

const fn opt(
    long: &'static str,
    short: Option<char>,
    value: Option<&'static str>,
    help: &'static str,
) -> Opt {
    Opt {
        long,
        short,
        value,
        help,
    }
}

/// Every option nbdd understands, in `--help` order.
const OPTIONS: &[Opt] = &[
    opt(
        "port",
        Some('p'),
        Some("PORT"),
        "TCP port to listen on (default 10809)",
    ),
    opt(
        "ipaddr",
        Some('i'),
        Some("ADDR"),
        "listen on this address only (default: all)",
    ),
    opt(
        "unix",
        Some('U'),
        Some("PATH|-"),
        "listen on a Unix socket; '-' = private temporary one",
    ),
    opt(
        "vsock",
        None,
        None,
        "listen on AF_VSOCK port -p (for virtual machines)",
    ),
    opt(
        "single",
        Some('s'),
        None,
        "serve one client on stdin/stdout, then exit",
    ),
    opt(
        "foreground",
        Some('f'),
        None,
        "do not fork into the background",
    ),
    opt(
        "pidfile",
        Some('P'),
        Some("FILE"),
        "write the pid here once listening",
    ),
    opt(
        "exit-with-parent",
        None,
        None,
        "exit when the parent process exits",
    ),
    opt(
        "handshake-limit",
        None,
        Some("SECS"),
        "close clients that have not finished negotiating after SECS (default 60; 0 = never)",
    ),
    opt(
        "run",
        None,
        Some("CMD"),
        "run CMD with $uri etc. set; exit with its status",
    ),
    opt(
        "print-uri",
        None,
        None,
        "print the NBD URI clients should use",
    ),
    opt("readonly", Some('r'), None, "serve the export read-only"),
    opt(
        "exportname",
        Some('e'),
        Some("NAME"),
        "export name (used in $uri)",
    ),
    opt(
        "oldstyle",
        Some('o'),
        None,
        "use the obsolete oldstyle handshake",
    ),
    opt(
        "newstyle",
        Some('n'),
        None,
        "use the fixed newstyle handshake (default)",
    ),
    opt(
        "filter",
        None,
        Some("NAME"),
        "add a filter (repeatable; first = nearest the client)",
    ),
    opt(
        "tls",
        None,
        Some("off|on|require"),
        "TLS mode (default off)",
    ),
    opt(
        "tls-certificates",
        None,
        Some("DIR"),
        "directory with ca-cert.pem, server-cert.pem, server-key.pem",
    ),
    opt(
        "tls-psk",
        None,
        Some("FILE"),
        "TLS pre-shared keys file (username:hexkey lines)",
    ),
    opt(
        "tls-verify-peer",
        None,
        None,
        "require and verify client certificates",
    ),
    opt(
        "log",
        None,
        Some("stderr|syslog|null"),
        "log destination (default stderr, syslog when forked)",
    ),
    opt(
        "verbose",
        Some('v'),
        None,
        "more messages (-v info, -vv debug)",
    ),
    opt(
        "debug",
        Some('D'),
        Some("FLAG=N"),
        "accepted for nbdkit compatibility; ignored",
    ),
    opt(
        "threads",
        Some('t'),
        Some("N"),
        "ignored: one event-loop thread serves all clients; file I/O has its own pool",
    ),
    opt("help", None, None, "print this help and exit"),
    opt("version", Some('V'), None, "print the version and exit"),
];

/// The `--help` text: usage and every option. `main` appends the backends.
#[must_use]
pub fn help_text() -> String {
    let mut s = String::from(
        "Usage: nbdd [OPTIONS] BACKEND [KEY=VALUE ...]\n\
         Serve BACKEND over the Network Block Device protocol.\n\
         A bare first parameter fills the backend's main key (nbdd file disk.img).\n\nOptions:\n",
    );
    for o in OPTIONS {
        let short = o
            .short
            .map_or_else(|| "    ".to_owned(), |c| format!("-{c}, "));
        let long = match o.value {
            Some(v) => format!("--{}={v}", o.long),
            None => format!("--{}", o.long),
        };
        s.push_str(&format!("  {short}{long:<34} {}\n", o.help));
    }
    s.push_str(
        "\n--run sets $uri, $nbd, $port, $unixsocket, $exportname and $tls for CMD;\n\
         without -p or -i it listens on a private Unix socket.\n\
         Started by systemd with sockets (LISTEN_PID/LISTEN_FDS), nbdd serves them\n\
         in the foreground; with NOTIFY_SOCKET it reports READY=1 once serving.\n",
    );
    s
}

/// Parses the arguments after the program name.
///
/// # Errors
///
/// A one-line message naming the offending argument; `main` prints it and
/// exits with status 1.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, String> {
    let mut cfg = Config::default();
    let mut words: Vec<String> = Vec::new();
    let mut log: Option<LogTarget> = None;
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
            let o = OPTIONS
                .iter()
                .find(|o| o.long == name)
                .ok_or_else(|| format!("unknown option '--{name}'"))?;
            let value = match (o.value, inline) {
                (None, Some(_)) => return Err(format!("option '--{name}' takes no value")),
                (None, None) => None,
                (Some(_), Some(v)) => Some(v),
                (Some(_), None) => Some(
                    args.next()
                        .ok_or_else(|| format!("option '--{name}' needs a value"))?,
                ),
            };
            if let Some(done) = apply(&mut cfg, &mut log, o, value)? {
                return Ok(done);
            }
        } else if arg.len() > 1 && arg.starts_with('-') {
            // A cluster of short options; a value-taking one eats the rest.
            let cluster = &arg[1..];
            for (i, c) in cluster.char_indices() {
                let o = OPTIONS
                    .iter()
                    .find(|o| o.short == Some(c))
                    .ok_or_else(|| format!("unknown option '-{c}'"))?;
                if o.value.is_some() {
                    let rest = &cluster[i + c.len_utf8()..];
                    let value = if rest.is_empty() {
                        args.next()
                            .ok_or_else(|| format!("option '-{c}' needs a value"))?
                    } else {
                        rest.to_owned()
                    };
                    if let Some(done) = apply(&mut cfg, &mut log, o, Some(value))? {
                        return Ok(done);
                    }
                    break;
                }
                if let Some(done) = apply(&mut cfg, &mut log, o, None)? {
                    return Ok(done);
                }
            }
        } else {
            words.push(arg);
        }
    }
    let mut words = words.into_iter();
    cfg.backend = words.next().ok_or("no backend given (try 'nbdd --help')")?;
    cfg.backend_args = words.collect();
    finish(cfg, log).map(|c| Parsed::Run(Box::new(c)))
}

/// Records one option. Returns `Some` for options that end parsing.
fn apply(
    cfg: &mut Config,
    log: &mut Option<LogTarget>,
    o: &Opt,
    value: Option<String>,
) -> Result<Option<Parsed>, String> {
    let v = value.unwrap_or_default();
    match o.long {
        "port" => {
            cfg.port = v.parse().map_err(|_| format!("invalid port '{v}' (-p)"))?;
            cfg.port_given = true;
        }
        "ipaddr" => cfg.ipaddr = Some(v),
        "unix" if v == "-" => cfg.unix = Some(UnixPath::Private),
        "unix" if v.is_empty() => return Err("empty socket path (-U)".to_owned()),
        "unix" => cfg.unix = Some(UnixPath::Path(v.into())),
        "vsock" => cfg.vsock = true,
        "single" => cfg.single = true,
        "foreground" => cfg.foreground = true,
        "pidfile" => cfg.pidfile = Some(v.into()),
        "exit-with-parent" => cfg.exit_with_parent = true,
        "handshake-limit" => {
            cfg.handshake_limit = v
                .parse()
                .map_err(|_| format!("invalid number of seconds '{v}' (--handshake-limit)"))?;
        }
        "run" => cfg.run = Some(v),
        "print-uri" => cfg.print_uri = true,
        "readonly" => cfg.readonly = true,
        "exportname" => cfg.export_name = v,
        "oldstyle" => cfg.oldstyle = true,
        "newstyle" => cfg.oldstyle = false,
        "filter" => cfg.filters.push(v),
        "tls" => cfg.tls = v.parse()?,
        "tls-certificates" => cfg.tls_certificates = Some(v.into()),
        "tls-psk" => cfg.tls_psk = Some(v.into()),
        "tls-verify-peer" => cfg.tls_verify_peer = true,
        "log" => *log = Some(v.parse()?),
        "verbose" => cfg.verbose = cfg.verbose.saturating_add(1),
        "debug" => {}
        "threads" => {
            // Validated so a typo is still caught, then ignored.
            v.parse::<u32>()
                .map_err(|_| format!("invalid thread count '{v}' (-t)"))?;
        }
        "help" => return Ok(Some(Parsed::Help)),
        "version" => return Ok(Some(Parsed::Version)),
        other => unreachable!("option table row '{other}' has no handler"),
    }
    Ok(None)
}

/// Checks combinations and fills in implied settings.
fn finish(mut cfg: Config, log: Option<LogTarget>) -> Result<Config, String> {
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
    if cfg.run.is_some() {
        // Captive mode stays in front so it can wait for the command, and
        // (as nbdkit since 1.36) prefers a private socket unless told
        // to use TCP.
        cfg.foreground = true;
        if cfg.unix.is_none() && !tcp {
            cfg.unix = Some(UnixPath::Private);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse(args.iter().map(|s| (*s).to_owned()))? {
            Parsed::Run(c) => Ok(*c),
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&["memory", "1M"]).unwrap();
        assert_eq!(c.backend, "memory");
        assert_eq!(c.backend_args, ["1M"]);
        assert_eq!(c.port, DEFAULT_PORT);
        assert!(!c.port_given && !c.foreground && !c.readonly);
        assert_eq!(c.log, LogTarget::Syslog);
        assert_eq!(c.tls, TlsMode::Off);
    }

    #[test]
    fn options_anywhere_and_both_value_forms() {
        let c = run(&[
            "-p",
            "1234",
            "memory",
            "size=1M",
            "-r",
            "--exportname=x",
            "--filter",
            "a",
            "--filter=b",
            "-fvv",
            "-ifoo",
        ])
        .unwrap();
        assert_eq!(c.port, 1234);
        assert!(c.port_given && c.readonly && c.foreground);
        assert_eq!(c.export_name, "x");
        assert_eq!(c.filters, ["a", "b"]);
        assert_eq!(c.verbose, 2);
        assert_eq!(c.ipaddr.as_deref(), Some("foo"));
        assert_eq!(c.backend_args, ["size=1M"]);
        assert_eq!(c.log, LogTarget::Stderr);
    }

    #[test]
    fn double_dash_ends_options() {
        let c = run(&["file", "--", "-weird-name", "-r"]).unwrap();
        assert_eq!(c.backend_args, ["-weird-name", "-r"]);
        assert!(!c.readonly);
    }

    #[test]
    fn run_implies_private_socket_and_foreground() {
        let c = run(&["--run", "true", "memory", "1M"]).unwrap();
        assert_eq!(c.unix, Some(UnixPath::Private));
        assert!(c.foreground);
        let c = run(&["--run", "true", "-p", "0", "memory", "1M"]).unwrap();
        assert_eq!(c.unix, None);
        let c = run(&["--run", "true", "-U", "/x/s", "memory"]).unwrap();
        assert_eq!(c.unix, Some(UnixPath::Path("/x/s".into())));
    }

    #[test]
    fn every_flag_is_accepted() {
        let c = run(&[
            "-s",
            "-o",
            "-n",
            "-D",
            "nbdkit.x=1",
            "-t",
            "4",
            "--tls=require",
            "--tls-certificates",
            "/c",
            "--tls-psk=/k",
            "--tls-verify-peer",
            "--print-uri",
            "--exit-with-parent",
            "--log=null",
            "-P",
            "/p",
            "--verbose",
            "null",
        ])
        .unwrap();
        assert!(c.single && c.foreground && !c.oldstyle && c.tls_verify_peer);
        assert!(c.print_uri && c.exit_with_parent);
        assert_eq!(c.tls, TlsMode::Require);
        assert_eq!(c.tls_certificates, Some("/c".into()));
        assert_eq!(c.tls_psk, Some("/k".into()));
        assert_eq!(c.log, LogTarget::Null);
        assert_eq!(c.pidfile, Some("/p".into()));
        assert_eq!(c.verbose, 1);
    }

    #[test]
    fn help_and_version_win() {
        let p = |a: &[&str]| parse(a.iter().map(|s| (*s).to_owned()));
        assert_eq!(p(&["--help"]), Ok(Parsed::Help));
        assert_eq!(p(&["memory", "--version"]), Ok(Parsed::Version));
        assert_eq!(p(&["-V"]), Ok(Parsed::Version));
    }

    #[test]
    fn errors_name_the_argument() {
        let cases: &[(&[&str], &str)] = &[
            (&["--bogus", "memory"], "--bogus"),
            (&["-Z", "memory"], "-Z"),
            (&["-p", "70000", "memory"], "70000"),
            (&["-p", "memory"], "'memory'"),
            (&["memory", "-p"], "-p"),
            (&["--tls=maybe", "memory"], "maybe"),
            (&["--log=file", "memory"], "file"),
            (&["-t", "x", "memory"], "'x'"),
            (&["--readonly=yes", "memory"], "--readonly"),
            (&["-U", "/s", "-p", "1", "memory"], "-U"),
            (&["-s", "--run", "x", "memory"], "-s"),
            (&["--vsock", "-U", "/s", "memory"], "--vsock"),
            (&[], "no backend"),
        ];
        for (args, needle) in cases {
            let e = run(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn help_lists_every_option() {
        let h = help_text();
        for o in OPTIONS {
            assert!(h.contains(&format!("--{}", o.long)), "--{}", o.long);
            if let Some(c) = o.short {
                assert!(h.contains(&format!("-{c}, --{}", o.long)), "-{c}");
            }
        }
        assert!(h.contains("event-loop thread"));
    }
}
