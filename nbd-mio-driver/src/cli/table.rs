//! The option table: one row per option, the single source of the parser,
//! `--help`, `--long-options`/`--short-options` and the nbdd(1) man page.

/// One row of the option table.
#[derive(Debug)]
pub struct Opt {
    /// Canonical long name (without `--`).
    pub long: &'static str,
    /// Other long spellings with the same meaning (nbdkit's aliases).
    pub aliases: &'static [&'static str],
    /// Short form.
    pub short: Option<char>,
    /// The value's placeholder, or `None` for a flag.
    pub value: Option<&'static str>,
    /// One line for `--help`.
    pub help: &'static str,
    /// A paragraph for the man page (empty: the help line is enough).
    pub more: &'static str,
}

const fn o(
    long: &'static str,
    short: Option<char>,
    value: Option<&'static str>,
    help: &'static str,
) -> Opt {
    Opt {
        long,
        aliases: &[],
        short,
        value,
        help,
        more: "",
    }
}

impl Opt {
    const fn aka(mut self, aliases: &'static [&'static str]) -> Self {
        self.aliases = aliases;
        self
    }
    const fn more(mut self, more: &'static str) -> Self {
        self.more = more;
        self
    }

    /// True for `--NAME` or one of its aliases.
    #[must_use]
    pub fn answers_to(&self, name: &str) -> bool {
        self.long == name || self.aliases.contains(&name)
    }

    /// `-p, --port=PORT`, as `--help` and the man page show it.
    #[must_use]
    pub fn synopsis(&self) -> String {
        let short = self.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        match self.value {
            Some(v) => format!("{short}--{}={v}", self.long),
            None => format!("{short}--{}", self.long),
        }
    }
}

/// A titled group of options.
pub struct Section {
    /// Heading in `--help` and the man page.
    pub title: &'static str,
    /// Its options, in order.
    pub options: &'static [Opt],
}

/// Every option nbdd understands, grouped as `--help` shows them.
pub const SECTIONS: &[Section] = &[
    Section {
        title: "Listening",
        options: &[
            o("port", Some('p'), Some("PORT"), "TCP port to listen on (default 10809)"),
            o("ipaddr", Some('i'), Some("ADDR"), "listen on this address only (default: all)")
                .aka(&["ip-addr"]),
            o("ipv4-only", Some('4'), None, "IPv4 only: resolve -i to IPv4, or listen on 0.0.0.0"),
            o("ipv6-only", Some('6'), None, "IPv6 only: resolve -i to IPv6, or listen on [::]")
                .more("When both -4 and -6 are given, the last one wins."),
            o("unix", Some('U'), Some("PATH|-"), "listen on a Unix socket; '-' = private temporary one"),
            o("vsock", None, None, "listen on AF_VSOCK port -p (for virtual machines)"),
            o("single", Some('s'), None, "serve one client on stdin/stdout, then exit").aka(&["stdin"]),
            o("selinux-label", None, Some("LABEL"), "SELinux label for the listening sockets")
                .more("Needs SELinux enabled on the host; otherwise nbdd warns and ignores it."),
            o("handshake-limit", None, Some("SECS"), "close clients still negotiating after SECS (default 60; 0 = never)"),
            o("max-connection-buffer", None, Some("SIZE"), "memory one client may hold: output queued plus requests in flight (default 128M); reading stops beyond it"),
            o("max-memory", None, Some("SIZE"), "memory all clients may hold together (default: a quarter of RAM); reading stops beyond it"),
            o("workers", None, Some("N"), "worker threads per event loop for backends that may block (file, curl, filters that sleep; default 4), shared by its connections in turn"),
            o("busy-poll", None, Some("USECS"), "after a request, poll for USECS without sleeping before waiting (lower latency at queue depth 1, at the cost of CPU; default 0)")
                .more("qemu-nbd's option; a slowloris guard nbdkit does not have."),
        ],
    },
    Section {
        title: "Process",
        options: &[
            o("foreground", Some('f'), None, "do not fork into the background").aka(&["no-fork"]),
            o("pidfile", Some('P'), Some("FILE"), "write the pid here once listening").aka(&["pid-file"]),
            o("exit-with-parent", None, None, "exit when the parent process exits (implies -f)"),
            o("run", None, Some("CMD"), "run CMD with $uri etc. set; exit with its status")
                .more("CMD runs under /bin/sh with $uri, $nbd, $port, $unixsocket, $exportname and $tls set. \
                       Without -p or -i the server listens on a private Unix socket."),
            o("print-uri", None, None, "print the NBD URI clients should use"),
            o("user", Some('u'), Some("USER"), "switch to USER (name or number) once listening"),
            o("group", Some('g'), Some("GROUP"), "switch to GROUP (name or number) once listening"),
            o("swap", None, None, "lock the server in memory (mlockall), for swap on this host"),
            o("threads", Some('t'), Some("N"), "event loops (threads), each serving its own connections (default: one per CPU, at most 8)"),
        ],
    },
    Section {
        title: "Exports",
        options: &[
            o("readonly", Some('r'), None, "serve every export read-only").aka(&["read-only"]),
            o("exportname", Some('e'), Some("NAME"), "the export's name (also $exportname for --run)")
                .aka(&["export", "export-name"])
                .more("A server with one export serves it whatever name a client asks for, \
                       as nbdkit does; NBD_OPT_LIST shows NAME."),
            o("description", None, Some("TEXT"), "the export's description (NBD_OPT_LIST, nbdinfo)"),
            o("allow-resize", None, None, "let clients resize the export (NBD_CMD_RESIZE; off by default)")
                .more("Any client could otherwise shrink a shared export. Read-only exports never resize."),
            o("filter", None, Some("NAME"), "add a filter (repeatable; first = nearest the client)"),
            o("add-export", None, Some("NAME=SPEC"), "add an export: SPEC is '[OPTIONS] BACKEND [KEY=VALUE ...]'")
                .more("Repeatable, instead of a BACKEND on the command line. SPEC options: -r, \
                       --filter=NAME, --description=TEXT, --allow-resize, --require-tls. Example: \
                       --add-export 'scratch=memory 1G' --add-export 'golden=-r file disk.img'."),
            o("config", None, Some("FILE"), "read exports from a TOML file ([[export]] tables)"),
            o("default-export", None, Some("NAME"), "the export a client asking for \"\" gets (default: the first)"),
        ],
    },
    Section {
        title: "Protocol",
        options: &[
            o("newstyle", Some('n'), None, "use the fixed newstyle handshake (default)").aka(&["new-style"]),
            o("oldstyle", Some('o'), None, "use the obsolete oldstyle handshake").aka(&["old-style"]),
            o("no-sr", None, None, "refuse structured replies (and extended headers)")
                .aka(&["no-structured-replies"]),
            o("no-mc", None, None, "refuse meta contexts (no block status)").aka(&["no-meta-contexts"]),
            o("mask-handshake", None, Some("MASK"), "clear global handshake flags not in MASK (bit 0 fixed newstyle, bit 1 no zeroes)"),
        ],
    },
    Section {
        title: "TLS",
        options: &[
            o("tls", None, Some("off|on|require"), "TLS mode (default off)"),
            o("tls-certificates", None, Some("DIR"), "directory with ca-cert.pem, server-cert.pem, server-key.pem")
                .more("Default: /etc/pki/nbdkit for root, $HOME/.pki/nbdkit otherwise (nbdkit's places)."),
            o("tls-psk", None, Some("FILE"), "TLS pre-shared keys file (username:hexkey lines)"),
            o("tls-verify-peer", None, None, "require and verify client certificates"),
        ],
    },
    Section {
        title: "Messages",
        options: &[
            o("verbose", Some('v'), None, "more messages (-v info, -vv debug)"),
            o("quiet", Some('q'), None, "no start-up line in the foreground"),
            o("log", None, Some("stderr|syslog|null"), "log destination (default stderr, syslog when forked)"),
            o("debug", Some('D'), Some("NAME.FLAG=N"), "nbdkit debug flag: accepted and ignored, with a warning"),
        ],
    },
    Section {
        title: "Information",
        options: &[
            o("help", None, None, "print this help (BACKEND --help: the backend's) and exit"),
            o("version", Some('V'), None, "print the version and exit"),
            o("dump-config", None, None, "print build facts as key=value lines and exit"),
            o("dump-plugin", None, None, "print facts about BACKEND as key=value lines and exit"),
            o("long-options", None, None, "list every long option (for shell completion) and exit"),
            o("short-options", None, None, "list every short option (for shell completion) and exit"),
        ],
    },
];

/// Every option, in `--help` order.
pub fn options() -> impl Iterator<Item = &'static Opt> {
    SECTIONS.iter().flat_map(|s| s.options.iter())
}

/// The option called `--name` (or an alias of it).
#[must_use]
pub fn find_long(name: &str) -> Option<&'static Opt> {
    options().find(|o| o.answers_to(name))
}

/// The option called `-c`.
#[must_use]
pub fn find_short(c: char) -> Option<&'static Opt> {
    options().find(|o| o.short == Some(c))
}

/// The usage lines (also the man page's synopsis).
pub const USAGE: &[&str] = &[
    "nbdd [OPTIONS] BACKEND [[KEY=]VALUE] [KEY=VALUE ...]",
    "nbdd [OPTIONS] --add-export NAME=SPEC ... | --config FILE",
    "nbdd BACKEND --help | --dump-plugin",
    "nbdd --help | --version | --dump-config",
];

/// What nbdd is, in one line (`--help`'s second line and the man page's NAME).
pub const ABOUT: &str = "serve block devices over the Network Block Device protocol";

/// The `--help` text: usage and every option. `main` appends the backends.
#[must_use]
pub fn help_text() -> String {
    let mut s = String::from("Usage:");
    for u in USAGE {
        s.push_str(&format!("\n  {u}"));
    }
    s.push_str(&format!(
        "\nnbdd: {ABOUT}.\n\
         Options go anywhere; a bare first parameter fills the backend's main key (nbdd file disk.img).\n"
    ));
    for sec in SECTIONS {
        s.push_str(&format!("\n{}:\n", sec.title));
        for o in sec.options {
            let short = o.short.map(|c| format!("-{c}, ")).unwrap_or_default();
            let long = o.synopsis().split_off(short.len());
            s.push_str(&format!("  {short:<4}{long:<30} {}\n", o.help));
        }
    }
    s.push_str(
        "\nStarted by systemd with sockets (LISTEN_PID/LISTEN_FDS), nbdd serves them in the\n\
         foreground; with NOTIFY_SOCKET it reports READY=1 once serving.\n",
    );
    s
}
