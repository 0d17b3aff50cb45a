//! What each backend is and which parameters it takes, with a line of help
//! for each: the source of `nbdd PLUGIN --help` and of the keys the
//! registry accepts (a key that is not listed here is "unknown").
//!
//! Parameter names and meanings follow nbdkit 1.32-1.40; where nbdd cannot
//! do what nbdkit does the help says so (and the backend warns once).

/// One `key=value` parameter of a backend.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// The key (`size`).
    pub key: &'static str,
    /// What the value looks like (`SIZE`, `true|false`).
    pub value: &'static str,
    /// May be given more than once (`split file=`, `curl header=`).
    pub repeat: bool,
    /// One line of help.
    pub doc: &'static str,
}

/// A backend's entry in the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Plugin {
    /// Command-line name (`memory`).
    pub name: &'static str,
    /// The key a bare word (one without `=`) stands for, or "" if none.
    pub magic: &'static str,
    /// One line: what it serves.
    pub summary: &'static str,
    /// A few sentences of description for `--help`.
    pub about: &'static str,
    /// Every key it accepts.
    pub params: &'static [Param],
    /// Keys not in `params` are accepted too (the `data` plugin's `$VAR`
    /// variables).
    pub any_keys: bool,
    /// A command line that works.
    pub example: &'static str,
}

const fn p(key: &'static str, value: &'static str, doc: &'static str) -> Param {
    Param {
        key,
        value,
        repeat: false,
        doc,
    }
}

const fn many(key: &'static str, value: &'static str, doc: &'static str) -> Param {
    Param {
        key,
        value,
        repeat: true,
        doc,
    }
}

const SIZE_DOC: &str =
    "virtual size; suffixes k M G T P E (powers of 1024) and s (512-byte sectors)";
const ALLOCATOR: Param = p(
    "allocator",
    "sparse|malloc|zstd",
    "storage strategy; nbdd always uses its sparse pages (malloc, malloc,mlock=true and zstd are accepted with a warning)",
);

/// Every built-in backend, in `--help` order.
pub const PLUGINS: &[Plugin] = &[
    Plugin {
        name: "memory",
        magic: "size",
        summary: "sparse RAM disk",
        about: "A RAM disk shared by every client, initially all zeroes. Memory is spent only on \
                written 4 KiB pages; trim and zeroing free them. Contents are lost when the \
                server exits.",
        params: &[p("size", "SIZE", SIZE_DOC), ALLOCATOR],
        any_keys: false,
        example: "nbdd memory 1G",
    },
    Plugin {
        name: "file",
        magic: "file",
        summary: "file or block device, or one export per file of a directory",
        about: "Serves a regular file or block device with pread/pwrite on the worker pool. \
                Flush is fdatasync, trim punches holes, extents come from SEEK_DATA/SEEK_HOLE. \
                Exactly one of file=, dir=, fd= or dirfd= must be given.",
        params: &[
            p("file", "PATH", "the file or block device to serve"),
            p(
                "dir",
                "DIR",
                "serve every regular file in DIR, one export each, named after the file",
            ),
            p(
                "fd",
                "N",
                "serve the file open on inherited file descriptor N",
            ),
            p(
                "dirfd",
                "N",
                "as dir=, for the directory open on inherited file descriptor N",
            ),
            p(
                "cache",
                "default|none",
                "none: bypass the page cache (O_DIRECT where the filesystem allows it)",
            ),
            p(
                "fadvise",
                "normal|random|sequential",
                "access-pattern hint to the kernel (posix_fadvise); the default is normal",
            ),
        ],
        any_keys: false,
        example: "nbdd file disk.img fadvise=sequential",
    },
    Plugin {
        name: "null",
        magic: "size",
        summary: "reads zeroes, discards writes",
        about: "Everything written is thrown away and every read returns zeroes; for \
                measuring the server itself.",
        params: &[p(
            "size",
            "SIZE",
            "virtual size (default 0); suffixes as for memory",
        )],
        any_keys: false,
        example: "nbdd null 10G",
    },
    Plugin {
        name: "pattern",
        magic: "size",
        summary: "read-only; every 8-byte word holds its own offset",
        about: "Each aligned 8-byte word holds its own offset as a big-endian number, so any \
                byte read can be checked. Read-only.",
        params: &[p("size", "SIZE", SIZE_DOC)],
        any_keys: false,
        example: "nbdd pattern 1G",
    },
    Plugin {
        name: "qcow2",
        magic: "file",
        summary: "qcow2 image, read-write",
        about: "A qcow2 image (v2 or v3) through the imago library: writes allocate clusters, \
                compressed clusters are read, the backing chain is followed (read-only). \
                Block status and qemu:allocation-depth come from the L2 tables.",
        params: &[
            p("file", "PATH", "the qcow2 image"),
            p(
                "backing",
                "PATH",
                "use PATH as the backing file instead of the image's own; empty: none",
            ),
            p(
                "backing-format",
                "qcow2|raw|vmdk",
                "format of backing= (probed when absent)",
            ),
        ],
        any_keys: false,
        example: "nbdd qcow2 disk.qcow2",
    },
    Plugin {
        name: "vmdk",
        magic: "file",
        summary: "VMware vmdk image with flat extents, read-only",
        about: "A vmdk descriptor with flat (and zero) extents, read-only. Sparse extents \
                (monolithicSparse, streamOptimized) are refused.",
        params: &[p("file", "PATH", "the vmdk descriptor file")],
        any_keys: false,
        example: "nbdd vmdk disk.vmdk",
    },
    Plugin {
        name: "data",
        magic: "data",
        summary: "a disk written from the command line (bytes, strings, files, repeats)",
        about: "Builds a small disk image from an expression: bytes (0x55, 017, 65), le16:/be16:/\
                le32:/be32:/le64:/be64: words, \"strings\" with C escapes, @OFFSET, @+N, @-N, \
                @^ALIGN, <FILE, <(SHELL SCRIPT), ( groups ), EXPR*N repeats, EXPR[START:END] \
                slices, EXPR -> \\NAME and \\NAME, $VAR (a parameter or environment variable \
                holding more data), # comments. Writable; writes are lost at exit. Exactly one \
                of data=, raw= or base64= is required. At most 1 GiB of non-zero data.",
        params: &[
            p("data", "EXPR", "the disk contents in the data format above"),
            p("raw", "BYTES", "the disk contents, literally"),
            p("base64", "BASE64", "the disk contents, base64-encoded"),
            p("size", "SIZE", "truncate or zero-extend the data to SIZE"),
            ALLOCATOR,
        ],
        any_keys: true,
        example: "nbdd data '( 0x55 0xAA )*256 @0x1fe le16:0xaa55' size=1M",
    },
    Plugin {
        name: "random",
        magic: "size",
        summary: "random data, the same for the same seed",
        about: "Every byte is computed from the seed and its offset (the same bytes as \
                nbdkit's random plugin), so reads are repeatable. A write succeeds only if it \
                writes what is already there (EIO otherwise); trim and zero fail with EIO.",
        params: &[
            p("size", "SIZE", SIZE_DOC),
            p("seed", "N", "32-bit seed (default: the time at start-up)"),
        ],
        any_keys: false,
        example: "nbdd random 1G seed=42",
    },
    Plugin {
        name: "sparse-random",
        magic: "size",
        summary: "a sparse disk with runs of random data, like a virtual machine's",
        about: "Runs of 4 KiB data blocks separated by holes, chosen at start-up from the seed \
                (the same layout and bytes as nbdkit's sparse-random plugin for aligned reads). \
                Writes must match what is there (EIO otherwise); trim and zero succeed only on \
                holes. The block map costs at most 1 bit per 4 KiB block, computed at start-up; \
                sizes up to 16T.",
        params: &[
            p("size", "SIZE", SIZE_DOC),
            p("seed", "N", "32-bit seed (default: the time at start-up)"),
            p(
                "percent",
                "N",
                "approximate percentage of the disk holding data, 0-100 (default 10)",
            ),
            p(
                "runlength",
                "SIZE",
                "average length of a data run (default 16M)",
            ),
            p(
                "random-content",
                "true|false",
                "fill each data block with random bytes instead of one repeated byte",
            ),
        ],
        any_keys: false,
        example: "nbdd sparse-random 100G seed=1 percent=20",
    },
    Plugin {
        name: "zero",
        magic: "",
        summary: "an empty, zero-length, read-only export",
        about: "A device of zero bytes, for testing clients' corner cases. Takes no parameters.",
        params: &[],
        any_keys: false,
        example: "nbdd zero",
    },
    Plugin {
        name: "full",
        magic: "size",
        summary: "reads zeroes; every write, trim and zero fails with ENOSPC",
        about: "Behaves like a thin-provisioned disk whose storage has run out: reads return \
                zeroes, writes, trims and zeroes fail with ENOSPC (no space left on device).",
        params: &[p("size", "SIZE", SIZE_DOC)],
        any_keys: false,
        example: "nbdd full 1G",
    },
    Plugin {
        name: "split",
        magic: "file",
        summary: "several files concatenated into one disk",
        about: "The files, in command-line order, appear as one disk; requests that cross a \
                boundary are split. Every bare word is a file. The files must not change size \
                while served. Flush syncs every file.",
        params: &[many(
            "file",
            "PATH",
            "a file to append to the disk (give at least one)",
        )],
        any_keys: false,
        example: "nbdd split part1.img part2.img part3.img",
    },
    Plugin {
        name: "tmpdisk",
        magic: "size",
        summary: "a fresh, empty disk for each client, deleted when it disconnects",
        about: "Each connection gets its own sparse file in $TMPDIR (default /var/tmp), made \
                with mkfs (ext4 unless type= says otherwise) or with command=, a shell fragment \
                that must create \"$disk\" (with $size and every other parameter as shell \
                variables). The file is deleted when the client disconnects. Not multi-conn.",
        params: &[
            p(
                "size",
                "SIZE",
                "size of each disk (a command= must make a disk of exactly this size)",
            ),
            p("type", "FS", "filesystem for mkfs -t (default ext4)"),
            p("label", "LABEL", "filesystem label (mkfs -L)"),
            p(
                "command",
                "SCRIPT",
                "shell fragment creating \"$disk\" instead of mkfs",
            ),
        ],
        any_keys: true,
        example: "nbdd tmpdisk 16G type=xfs",
    },
    #[cfg(feature = "curl")]
    Plugin {
        name: "curl",
        magic: "url",
        summary: "read-only HTTP/HTTPS image with range requests",
        about: "Serves a remote image over HTTP or HTTPS, read-only. The size comes from a HEAD \
                request (Content-Length); the server must honour Range requests. Reads run on \
                the worker pool, one HTTP request each.",
        params: &[
            p("url", "URL", "http:// or https:// address of the image"),
            p(
                "cookie",
                "COOKIE",
                "Cookie header value (name=value; name2=value2), or +FILE to read it from FILE",
            ),
            many(
                "header",
                "NAME: VALUE",
                "an extra request header (repeatable)",
            ),
            p("user", "USER", "HTTP basic authentication user"),
            p(
                "password",
                "PASSWORD",
                "password for user=; +FILE reads it from FILE, - from standard input",
            ),
            p(
                "sslverify",
                "true|false",
                "verify the server's certificate and name (default true)",
            ),
            p(
                "cainfo",
                "FILE",
                "PEM file of certificate authorities to trust instead of the built-in ones",
            ),
            p(
                "timeout",
                "SECS",
                "per-request timeout in seconds (0 = none, the default)",
            ),
            p("user-agent", "STRING", "User-Agent header"),
            p(
                "followlocation",
                "true|false",
                "follow redirects (default true)",
            ),
            p("proxy", "URL", "HTTP proxy to connect through"),
        ],
        any_keys: false,
        example: "nbdd curl https://example.com/disk.img sslverify=false",
    },
    #[cfg(feature = "ssh")]
    Plugin {
        name: "ssh",
        magic: "path",
        summary: "a file on an SSH server, over SFTP",
        about: "Serves a remote file through SFTP (libssh2). Authentication tries the agent, \
                then identity= (or ~/.ssh/id_ed25519, id_ecdsa, id_rsa), then password=. The \
                host key is checked against known-hosts unless verify-remote-host=false. \
                One SSH session is shared by every client, one request at a time.",
        params: &[
            p(
                "path",
                "PATH",
                "the remote file (relative to the user's home directory unless absolute)",
            ),
            p("host", "HOST", "the SSH server (required)"),
            p("port", "PORT", "its port (default 22)"),
            p("user", "USER", "remote user (default: $USER)"),
            p(
                "password",
                "PASSWORD",
                "password; +FILE reads it from FILE, - from standard input",
            ),
            p("identity", "FILE", "private key file"),
            p(
                "known-hosts",
                "FILE",
                "known_hosts file (default ~/.ssh/known_hosts)",
            ),
            p(
                "verify-remote-host",
                "true|false",
                "check the host key against known-hosts (default true)",
            ),
            p(
                "timeout",
                "SECS",
                "timeout for connecting and each request (default none)",
            ),
            p(
                "compression",
                "true|false",
                "ask for compression (default false)",
            ),
            p(
                "create",
                "true|false",
                "create (or truncate) the remote file at start-up, of create-size bytes",
            ),
            p(
                "create-size",
                "SIZE",
                "size of the file made by create=true",
            ),
            p(
                "create-mode",
                "MODE",
                "octal permissions of the file made by create=true (default 0600)",
            ),
            p(
                "config",
                "FILE",
                "accepted for nbdkit compatibility; ssh config files are not read (warning)",
            ),
        ],
        any_keys: false,
        example: "nbdd ssh host=server path=/var/lib/images/disk.img user=alice",
    },
    #[cfg(feature = "rbd")]
    Plugin {
        name: "rbd",
        magic: "image",
        summary: "a Ceph RBD image, through librbd",
        about: "Serves an RBD image of a Ceph cluster (docs/RBD.md). One librbd handle serves \
                every client; the event loop keeps many requests in flight to the cluster. \
                FLUSH and FUA are librbd flushes, TRIM a discard, WRITE_ZEROES \
                rbd_write_zeroes; extents at object granularity. A snapshot is read-only.",
        params: &[
            p(
                "image",
                "[POOL/[NAMESPACE/]]IMAGE[@SNAP]",
                "the image, with the rbd tool's spec (pool, namespace and snapshot optional)",
            ),
            p("pool", "POOL", "the pool (default rbd)"),
            p("namespace", "NS", "RADOS namespace (default: none)"),
            p("snap", "SNAP", "serve this snapshot, read-only"),
            p(
                "conf",
                "PATH",
                "ceph.conf (default: $CEPH_CONF, then /etc/ceph/ceph.conf)",
            ),
            p("id", "NAME", "cephx user, without client. (default admin)"),
            p("keyring", "PATH", "keyring (default: what ceph.conf says)"),
            p(
                "timeout",
                "SECS",
                "fail OSD requests after SECS (rados_osd_op_timeout; default 0: wait)",
            ),
            p(
                "connect-timeout",
                "SECS",
                "give up reaching the monitors at start-up after SECS (default 30)",
            ),
        ],
        any_keys: false,
        example: "nbdd rbd vms/disk0 id=nbdd",
    },
];

/// The catalogue entry of backend `name`.
pub fn plugin(name: &str) -> Option<&'static Plugin> {
    PLUGINS.iter().find(|p| p.name == name)
}

/// `nbdd PLUGIN --help`: description and every parameter of `name`, or
/// `None` for a backend this crate does not know.
pub fn plugin_help(name: &str) -> Option<String> {
    let pl = plugin(name)?;
    let mut s = format!("{} - {}\n\n", pl.name, pl.summary);
    s.push_str(&wrap(pl.about, 76, ""));
    s.push_str("\nParameters");
    if !pl.magic.is_empty() {
        s.push_str(&format!(" (a bare word is {}=WORD)", pl.magic));
    }
    s.push_str(":\n");
    if pl.params.is_empty() {
        s.push_str("  (none)\n");
    }
    for q in pl.params {
        let more = if q.repeat { " (repeatable)" } else { "" };
        s.push_str(&format!("  {}={}{more}\n", q.key, q.value));
        s.push_str(&wrap(q.doc, 72, "      "));
    }
    s.push_str(&format!("\nExample:\n  {}\n", pl.example));
    Some(s)
}

/// Greedy word wrap to `width` columns, each line prefixed by `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(indent);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_has_help_naming_each_key() {
        for (name, magic, _) in crate::BACKENDS {
            let pl = plugin(name).unwrap_or_else(|| panic!("{name} has no catalogue entry"));
            assert_eq!(pl.magic, *magic, "{name}");
            let help = plugin_help(name).unwrap();
            for q in pl.params {
                assert!(help.contains(&format!("  {}=", q.key)), "{name}: {}", q.key);
                assert!(!q.doc.is_empty());
            }
            assert!(help.lines().all(|l| l.len() <= 80), "{help}");
        }
        assert_eq!(PLUGINS.len(), crate::BACKENDS.len());
        assert!(plugin_help("nope").is_none());
    }
}
