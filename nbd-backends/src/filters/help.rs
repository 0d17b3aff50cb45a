//! The text of `nbdd --filter=NAME --help`: what each filter does and
//! every parameter it takes (a unit test checks that every key a filter
//! looks up is listed here, and that each listed key is looked up).

/// One filter's documentation.
pub struct FilterDoc {
    /// `--filter=` name.
    pub name: &'static str,
    /// One line.
    pub summary: &'static str,
    /// `(KEY=VALUE [KEY=VALUE...], explanation)`: the keys of one entry
    /// share the explanation.
    pub params: &'static [(&'static str, &'static str)],
    /// How nbdd differs from nbdkit, if at all.
    pub notes: &'static str,
    /// Parameters that make a working example over `memory 1M` (used by
    /// the tests and shown in the help).
    pub example: &'static str,
}

impl FilterDoc {
    /// Every key documented.
    pub fn keys(&self) -> impl Iterator<Item = &'static str> {
        self.params.iter().flat_map(|(keys, _)| {
            keys.split_whitespace()
                .filter_map(|t| t.split_once('=').map(|(k, _)| k))
        })
    }
}

/// The help text of filter `name`, or `None` if there is no such filter.
pub fn filter_help(name: &str) -> Option<String> {
    let d = FILTER_DOCS.iter().find(|d| d.name == name)?;
    let mut s = format!("nbdd --filter={} - {}\n", d.name, d.summary);
    if d.params.is_empty() {
        s.push_str("\nThis filter has no parameters.\n");
    } else {
        s.push_str("\nParameters:\n");
        for (keys, text) in d.params {
            s.push_str(&format!("  {keys}\n      {text}\n"));
        }
    }
    if !d.notes.is_empty() {
        s.push_str(&format!("\nCompared with nbdkit: {}\n", d.notes));
    }
    let example = if d.example.is_empty() {
        String::new()
    } else {
        format!(" {}", d.example)
    };
    s.push_str(&format!(
        "\nExample:\n  nbdd --filter={} memory 1M{example}\n",
        d.name
    ));
    Some(s)
}

/// Every filter, in `--help` order.
pub const FILTER_DOCS: &[FilterDoc] = &[
    FilterDoc {
        name: "blocksize",
        summary: "split, align and read-modify-write requests for the layer below",
        params: &[
            (
                "minblock=SIZE",
                "smallest block and alignment passed below (a power of 2, at most 64k; default: the layer below's minimum, or 1); unaligned reads are widened, unaligned writes and zeroes become read-modify-write, unaligned trim heads and tails are dropped; the size is rounded down to it",
            ),
            (
                "maxdata=SIZE",
                "largest read or write passed below (a multiple of minblock; default 32M or the layer below's maximum); larger ones are split",
            ),
            (
                "maxlen=SIZE",
                "largest trim, zero, cache or extents request passed below (a multiple of minblock; default 4G-1 rounded down to minblock); larger ones are split",
            ),
        ],
        notes: "nbdd advertises a 32 MiB maximum payload (nbdkit 4G-1) because it buffers each payload whole",
        example: "minblock=4k maxdata=64k",
    },
    FilterDoc {
        name: "blocksize-policy",
        summary: "advertise block size constraints and choose what happens to requests that break them",
        params: &[
            (
                "blocksize-minimum=SIZE blocksize-preferred=SIZE blocksize-maximum=SIZE",
                "block sizes to advertise (default: the layer below's, else 1 / 4096 / 32M)",
            ),
            (
                "blocksize-error-policy=allow|error",
                "allow (default): pass requests that break the constraints down; error: fail them with EINVAL",
            ),
            (
                "blocksize-write-disconnect=SIZE",
                "writes larger than SIZE fail with ESHUTDOWN (nbdkit closes the connection)",
            ),
        ],
        notes: "a client that asked for block sizes is held to them by nbdd itself (EINVAL), whatever the policy; blocksize-maximum is capped at 32M; an oversized write fails instead of disconnecting",
        example: "blocksize-minimum=512 blocksize-error-policy=error",
    },
    FilterDoc {
        name: "cache",
        summary: "cache the layer below in a temporary file under $TMPDIR (default /var/tmp)",
        params: &[
            (
                "cache=writeback|writethrough|unsafe",
                "writeback (default): writes stay in the cache until a flush (or FUA, or eviction) writes them below; writethrough: writes go below at once; unsafe: flushes are ignored",
            ),
            (
                "cache-min-block-size=SIZE",
                "cache block size (a power of 2, at least 4k; default 64k)",
            ),
            (
                "cache-max-size=SIZE",
                "limit the cache to SIZE; least recently used blocks are evicted (default: no limit)",
            ),
            (
                "cache-high-threshold=PERCENT cache-low-threshold=PERCENT",
                "eviction starts above high% of cache-max-size and stops below low% (defaults 95 and 80)",
            ),
            (
                "cache-on-read=true|false|/PATH",
                "also cache what is read (default false); /PATH: only while PATH exists",
            ),
        ],
        notes: "",
        example: "cache-max-size=256k cache-min-block-size=4k",
    },
    FilterDoc {
        name: "cacheextents",
        summary: "remember the last block-status answer for requests inside it",
        params: &[],
        notes: "",
        example: "",
    },
    FilterDoc {
        name: "checkwrite",
        summary: "turn writes into checks that the data is already there (EIO if not); the layer below is never written",
        params: &[],
        notes: "",
        example: "",
    },
    FilterDoc {
        name: "count",
        summary: "count bytes read, written, zeroed and trimmed; logged (-v) at exit",
        params: &[],
        notes: "",
        example: "",
    },
    FilterDoc {
        name: "cow",
        summary: "copy-on-write: writes go to a private RAM overlay, the layer below is opened read-only",
        params: &[
            (
                "cow-block-size=SIZE",
                "overlay block size (a power of 2, at least 4k; default 4k)",
            ),
            (
                "cow-on-read=true|false|/PATH",
                "copy blocks that are read into the overlay (default false); /PATH: only while PATH exists",
            ),
            (
                "cow-on-cache=true|false",
                "copy blocks named by cache requests into the overlay (default false)",
            ),
        ],
        notes: "the overlay lives in RAM (nbdkit: a file in $TMPDIR), so the default block is 4k, not 64k",
        example: "cow-block-size=64k cow-on-read=true",
    },
    FilterDoc {
        name: "delay",
        summary: "sleep before operations, to simulate a slow disk",
        params: &[
            ("rdelay=TIME delay-read=TIME", "delay reads (10ms, 2s, 0.5)"),
            ("wdelay=TIME", "delay writes, zeroes and trims"),
            (
                "delay-write=TIME delay-zero=TIME delay-trim=TIME delay-extents=TIME delay-cache=TIME",
                "delay one kind of operation",
            ),
            (
                "delay-fast-zero=BOOL",
                "false: fail fast zero requests at once (ENOTSUP) instead of delaying them (default true)",
            ),
            (
                "delay-open=TIME delay-close=TIME",
                "accepted and ignored with a warning",
            ),
        ],
        notes: "delay-open and delay-close are ignored: connections open and close on nbdd's event loop, where a sleep would stall every client",
        example: "rdelay=1ms wdelay=1ms",
    },
    FilterDoc {
        name: "error",
        summary: "inject errors, to test how clients cope",
        params: &[
            (
                "error=ERRNO",
                "the error injected: EIO (default), EPERM, ENOMEM, EINVAL, ENOSPC, EROFS, EOVERFLOW, ENOTSUP, ESHUTDOWN",
            ),
            (
                "error-rate=RATE",
                "probability per request, 0 to 1 or 0% to 100% (default 0: nothing fails)",
            ),
            ("error-file=PATH", "inject only while PATH exists"),
            (
                "error-pread=ERRNO error-pread-rate=RATE error-pread-file=PATH",
                "the same for reads only",
            ),
            (
                "error-pwrite=ERRNO error-pwrite-rate=RATE error-pwrite-file=PATH",
                "the same for writes only",
            ),
            (
                "error-trim=ERRNO error-trim-rate=RATE error-trim-file=PATH",
                "the same for trims only",
            ),
            (
                "error-zero=ERRNO error-zero-rate=RATE error-zero-file=PATH",
                "the same for write-zeroes only",
            ),
            (
                "error-flush=ERRNO error-flush-rate=RATE error-flush-file=PATH",
                "the same for flushes only",
            ),
            (
                "error-cache=ERRNO error-cache-rate=RATE error-cache-file=PATH",
                "the same for cache requests only",
            ),
            (
                "error-extents=ERRNO error-extents-rate=RATE error-extents-file=PATH",
                "the same for block status only",
            ),
        ],
        notes: "each injection is logged at -v",
        example: "error=ENOSPC error-pwrite-rate=10%",
    },
    FilterDoc {
        name: "exitlast",
        summary: "exit when the last client disconnects (not before the first one)",
        params: &[],
        notes: "",
        example: "",
    },
    FilterDoc {
        name: "exitwhen",
        summary: "exit gracefully when an event happens: refuse new clients, exit when the last one leaves",
        params: &[
            (
                "exit-when-file-created=PATH exit-when-file-deleted=PATH",
                "the event: PATH appears / disappears",
            ),
            (
                "exit-when-pipe-closed=FD",
                "the event: the write end of the pipe whose read end is inherited as FD is closed",
            ),
            (
                "exit-when-process-exits=PID",
                "the event: process PID exits",
            ),
            (
                "exit-when-script=SCRIPT",
                "the event: sh -c SCRIPT exits with status 88 (0: no event; other: logged)",
            ),
            (
                "exit-when-poll=SECS",
                "how often events are checked while idle (default 60)",
            ),
        ],
        notes: "",
        example: "exit-when-file-created=/nonexistent/stop",
    },
    FilterDoc {
        name: "fua",
        summary: "change how FUA (forced unit access) and flush are handled",
        params: &[(
            "fuamode=none|emulate|native|force|pass|discard",
            "none (default): do not advertise FUA; emulate: FUA becomes a flush after the write; native: pass FUA down; force: every write is FUA, flushes do nothing; pass: change nothing; discard: ignore FUA and flush (unsafe)",
        )],
        notes: "",
        example: "fuamode=emulate",
    },
    FilterDoc {
        name: "gzip",
        summary: "serve the gzip-compressed layer below, decompressed once into a temporary file under $TMPDIR (read-only)",
        params: &[],
        notes: "the file is decompressed when the server starts",
        example: "",
    },
    FilterDoc {
        name: "ip",
        summary: "allow or deny clients by address",
        params: &[
            (
                "allow=RULE[,RULE...]",
                "clients matching any of these are accepted",
            ),
            (
                "deny=RULE[,RULE...]",
                "else clients matching any of these are refused; else accepted. RULE: all|any, allipv4|anyipv4, allipv6|anyipv6, allunix|anyunix, allvsock|anyvsock, A.B.C.D[/NN], IPV6[/NN], vsock-cid:CID, vsock-port:PORT, uid:UID, gid:GID, pid:PID",
            ),
        ],
        notes: "uid:, gid: and pid: rules never match (nbdd does not pass Unix peer credentials to filters; a warning says so); IPv4-mapped IPv6 clients match IPv4 rules",
        example: "allow=127.0.0.1,::1 deny=all",
    },
    FilterDoc {
        name: "limit",
        summary: "limit the number of clients connected at once",
        params: &[(
            "limit=N",
            "at most N clients at a time (default 1; 0: no limit); later ones are refused",
        )],
        notes: "",
        example: "limit=2",
    },
    FilterDoc {
        name: "log",
        summary: "log every request (and connection) to a file, the server log or a script",
        params: &[
            (
                "logfile=PATH",
                "one line per request when it completes: time, connection, id, operation, offset, count, flags, result, microseconds",
            ),
            (
                "logscript=SCRIPT",
                "run sh -c SCRIPT for every entry, with $act $type $id $connection $offset $count $flags $return $error set",
            ),
            (
                "logappend=BOOL",
                "append to logfile instead of truncating it (default false)",
            ),
        ],
        notes: "one line per request instead of an entry and an exit line; without logfile or logscript lines go to the server log (-v)",
        example: "",
    },
    FilterDoc {
        name: "multi-conn",
        summary: "advertise (or hide) multi-conn, replicating flushes across connections where needed",
        params: &[
            (
                "multi-conn-mode=auto|emulate|plugin|disable|unsafe",
                "auto (default): plugin if the layer below is multi-conn, else emulate; emulate: a flush on one connection flushes every connection, and multi-conn is advertised; plugin: keep the layer below's; disable: never advertise; unsafe: always advertise",
            ),
            (
                "multi-conn-track-dirty=connection|fast|off",
                "skip flushes with nothing to flush: per connection (default), for the whole export (fast), or never (off)",
            ),
            (
                "multi-conn-exportname=BOOL",
                "true: emulated flushes reach only connections to the same export name (default false)",
            ),
        ],
        notes: "",
        example: "multi-conn-mode=emulate",
    },
    FilterDoc {
        name: "noextents",
        summary: "report everything as allocated data (no holes)",
        params: &[],
        notes: "",
        example: "",
    },
    FilterDoc {
        name: "nozero",
        summary: "disable or change efficient zeroing",
        params: &[
            (
                "zeromode=none|emulate|notrim|plugin",
                "none (default) and emulate: zeroes are written as data; notrim: passed down without may-trim; plugin: passed down unchanged",
            ),
            (
                "fastzeromode=none|slow|ignore|default",
                "none: do not advertise fast zero; slow: fast zeroes fail at once (ENOTSUP); ignore: treat them as normal zeroes (unsafe); default: slow with none/emulate, else the layer below's",
            ),
        ],
        notes: "nbdd always advertises WRITE_ZEROES (it answers them itself if need be), so zeromode=none behaves as emulate",
        example: "zeromode=notrim",
    },
    FilterDoc {
        name: "offset",
        summary: "serve a window of the layer below",
        params: &[
            ("offset=OFFSET", "start of the window (default 0)"),
            ("range=LENGTH", "length of the window (default: to the end)"),
        ],
        notes: "",
        example: "offset=4k range=512k",
    },
    FilterDoc {
        name: "partition",
        summary: "serve one partition of an MBR or GPT disk",
        params: &[
            ("partition=N", "the partition, from 1 (required)"),
            (
                "partition-sectorsize=512|4k",
                "sector size of the table (default: the layer below's minimum block size if 4k, else 512)",
            ),
        ],
        notes: "logical partitions inside an MBR extended partition are not followed",
        example: "partition=1",
    },
    FilterDoc {
        name: "protect",
        summary: "refuse writes that would change protected byte ranges (EPERM)",
        params: &[(
            "protect=START-END protect=~START-END",
            "protect bytes START to END inclusive (decimal, 0NN octal or 0xNN hex; either may be omitted), or with ~ everything else; may be repeated",
        )],
        notes: "",
        example: "protect=0-511",
    },
    FilterDoc {
        name: "qcow2dec",
        summary: "the layer below is a qcow2 image: serve its contents, read-only",
        params: &[],
        notes: "no backing files, encryption, external data files, zstd or extended L2 (use the qcow2 backend for those)",
        example: "",
    },
    FilterDoc {
        name: "rate",
        summary: "limit bandwidth, for the server and per connection",
        params: &[
            (
                "rate=BITSPERSEC connection-rate=BITSPERSEC",
                "limit all connections together / each connection (1M = 2^20 bits per second); reads and writes have separate limits",
            ),
            (
                "rate-file=PATH connection-rate-file=PATH",
                "read the limit from PATH, rechecked every second while the server runs",
            ),
            (
                "burstiness=SECS",
                "bucket size in seconds of the rate (default 2.0)",
            ),
        ],
        notes: "",
        example: "rate=100M",
    },
    FilterDoc {
        name: "readahead",
        summary: "prefetch (cache requests) after sequential reads, in the background",
        params: &[],
        notes: "useful only over a layer that acts on cache requests (add --filter=cache after it)",
        example: "",
    },
    FilterDoc {
        name: "readonly",
        summary: "refuse writes, trims and zeroes",
        params: &[(
            "readonly-file=PATH",
            "read-only only while PATH exists (writes fail with EPERM); without it, always",
        )],
        notes: "",
        example: "",
    },
    FilterDoc {
        name: "retry",
        summary: "retry failed requests, reopening the layer below",
        params: &[
            (
                "retries=N",
                "how many times a request is retried (default 5)",
            ),
            (
                "retry-delay=TIME",
                "wait before the first retry (default 2 seconds)",
            ),
            (
                "retry-exponential=BOOL",
                "double the wait after each retry (default yes)",
            ),
            (
                "retry-readonly=BOOL",
                "after a failure, refuse writes for the rest of the connection (default no)",
            ),
        ],
        notes: "the layer below is reopened only when it hands out per-connection handles; otherwise the same layer is retried",
        example: "retries=2 retry-delay=10ms",
    },
    FilterDoc {
        name: "stats",
        summary: "count requests, bytes and time per operation; written at exit",
        params: &[
            (
                "statsfile=PATH",
                "where the totals go (default: the server log)",
            ),
            (
                "statsappend=BOOL",
                "append to statsfile instead of replacing it (default false)",
            ),
            (
                "statsthreshold=PERCENT",
                "print the request size and alignment breakdown covering PERCENT of requests (default 95; 0: none)",
            ),
        ],
        notes: "statsfile is optional",
        example: "",
    },
    FilterDoc {
        name: "truncate",
        summary: "change the size of the layer below: cut it, or extend it with zeroes",
        params: &[
            (
                "truncate=SIZE",
                "the new size; beyond the old end reads are zeroes and only zeroes may be written",
            ),
            ("round-up=N", "round the size up to a multiple of N"),
            ("round-down=N", "round the size down to a multiple of N"),
        ],
        notes: "",
        example: "truncate=2M",
    },
    FilterDoc {
        name: "xz",
        summary: "serve the xz-compressed layer below, decompressed block by block on demand (read-only)",
        params: &[
            (
                "xz-max-block=SIZE",
                "refuse files with a block larger than SIZE uncompressed (default 512M)",
            ),
            (
                "xz-max-depth=N",
                "how many decompressed blocks are kept (default 8)",
            ),
        ],
        notes: "",
        example: "",
    },
];
