//! Cross-filter checks: documentation, parameter naming.

use super::*;
use crate::registry::Params;

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn every_filter_is_documented_listed_and_parsed() {
    let doc: Vec<_> = help::FILTER_DOCS.iter().map(|d| d.name).collect();
    let mut parsed: Vec<_> = PARSERS.iter().map(|p| p.0).collect();
    let mut listed: Vec<_> = FILTERS.iter().map(|f| f.0).collect();
    parsed.sort_unstable();
    listed.sort_unstable();
    let mut sorted = doc.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, doc, "FILTER_DOCS in name order");
    assert_eq!(parsed, doc, "a parser per documented filter");
    assert_eq!(listed, doc, "a FILTERS row per filter");
}

/// Every key a filter looks up is documented, and every documented key is
/// looked up: parse each filter with its example and collect the keys.
#[test]
fn every_key_a_filter_takes_is_documented() {
    for d in help::FILTER_DOCS {
        let args = words(d.example);
        let mut p = Params::parse("memory", "size", &args, REPEATABLE).unwrap();
        let (_, asked) = parse_one(d.name, &mut p)
            .unwrap_or_else(|e| panic!("{}: example '{}': {e}", d.name, d.example));
        let documented: Vec<_> = d.keys().collect();
        for k in &asked {
            assert!(
                documented.contains(&k.as_str()),
                "{}: '{k}' undocumented",
                d.name
            );
        }
        for k in &documented {
            assert!(
                asked.iter().any(|a| a == k),
                "{}: '{k}' documented, never taken",
                d.name
            );
        }
        let help = help::filter_help(d.name).unwrap();
        for k in &documented {
            assert!(
                help.contains(&format!("{k}=")),
                "{}: help lacks {k}",
                d.name
            );
        }
    }
    assert!(help::filter_help("nonesuch").is_none());
}

#[test]
fn stray_filter_keys_name_the_filter() {
    assert_eq!(
        unknown_key("cow-block-size", "memory"),
        "parameter 'cow-block-size' belongs to the cow filter: add --filter=cow"
    );
    let e = unknown_key("cow-blocksize", "memory");
    assert!(
        e.starts_with("unknown parameter 'cow-blocksize' (the cow filter takes: cow-block-size"),
        "{e}"
    );
    assert_eq!(
        unknown_key("sise", "memory"),
        "unknown parameter 'sise' for backend memory"
    );
}

/// A key given twice is blamed on the filter that takes it, unless the
/// backend takes it too (`file cache=`).
#[test]
fn keys_given_twice_name_their_owner() {
    let twice = |backend: &str, own: &[&str], line: &str| {
        let args = words(line);
        Params::parse_for(backend, own, "size", &args, REPEATABLE)
            .err()
            .unwrap()
    };
    assert_eq!(
        twice("memory", &["size"], "1M rdelay=1 rdelay=2"),
        "delay filter: parameter 'rdelay' given twice (second value '2')"
    );
    assert_eq!(
        twice("memory", &["size"], "1M size=2M"),
        "memory: parameter 'size' given twice (second value '2M')"
    );
    assert_eq!(
        twice("file", &["file", "cache"], "f cache=none cache=default"),
        "file: parameter 'cache' given twice (second value 'default')"
    );
    assert_eq!(
        twice("memory", &["size"], "1M cache=writeback cache=unsafe"),
        "cache filter: parameter 'cache' given twice (second value 'unsafe')"
    );
}

/// docs/BACKENDS.md has a section per filter naming each of its keys, and
/// README's filter table a row per filter naming each key.
#[test]
fn every_filter_and_key_is_in_the_docs() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let backends = std::fs::read_to_string(format!("{root}/docs/BACKENDS.md")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    // `error-OP=` stands for the per-operation keys of the error filter.
    let named = |text: &str, key: &str| {
        text.contains(&format!("{key}="))
            || key.strip_prefix("error-").is_some_and(|rest| {
                let op = rest.split('-').next().unwrap_or("");
                text.contains("error-OP") && text.contains(op)
            })
    };
    for d in help::FILTER_DOCS {
        let head = format!("\n### `{}", d.name);
        let at = backends
            .find(&format!("{head}`"))
            .or_else(|| backends.find(&format!("{head} ")))
            .unwrap_or_else(|| panic!("docs/BACKENDS.md: no section for {}", d.name));
        let rest = &backends[at + 1..];
        // Up to the next heading of any level.
        let section = &rest[..rest[1..].find("\n#").map_or(rest.len(), |e| e + 1)];
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", d.name)))
            .unwrap_or_else(|| panic!("README.md: no filter row for {}", d.name));
        for k in d.keys() {
            assert!(
                named(section, k),
                "docs/BACKENDS.md, {}: {k}= missing",
                d.name
            );
            assert!(named(row, k), "README.md, {}: {k}= missing", d.name);
        }
    }
}

/// A 2 MiB disk (byte `o` is `o % 251`, one MBR partition over the second
/// MiB) that answers every `try_read_cached` and records where it was asked.
struct Cached {
    mem: crate::MemoryBackend,
    asked: std::sync::Mutex<Vec<(u64, usize)>>,
    /// Where `try_write_cached` was asked (and stored).
    written: std::sync::Mutex<Vec<(u64, usize)>>,
}

impl crate::Backend for Cached {
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn caps(&self) -> crate::Caps {
        self.mem.caps()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.mem.read_at(offset, buf)
    }
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        self.asked.lock().unwrap().push((offset, buf.len()));
        self.mem.read_at(offset, buf).is_ok()
    }
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        self.written.lock().unwrap().push((offset, data.len()));
        self.mem.write_at(offset, data, false).is_ok()
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> std::io::Result<()> {
        self.mem.write_at(offset, data, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: crate::ZeroFlags) -> std::io::Result<()> {
        self.mem.write_zeroes(offset, len, flags)
    }
}

fn cached_disk() -> Arc<Cached> {
    let mem = crate::MemoryBackend::new(2 << 20).unwrap();
    let data: Vec<u8> = (0..2u64 << 20).map(|o| (o % 251) as u8).collect();
    mem.write_at(0, &data, false).unwrap();
    let mut mbr = [0u8; 512];
    mbr[0x1be + 4] = 0x83;
    mbr[0x1be + 8..0x1be + 12].copy_from_slice(&2048u32.to_le_bytes());
    mbr[0x1be + 12..0x1be + 16].copy_from_slice(&2048u32.to_le_bytes());
    mbr[510..].copy_from_slice(&[0x55, 0xaa]);
    mem.write_at(0, &mbr, false).unwrap();
    Arc::new(Cached {
        mem,
        asked: std::sync::Mutex::new(Vec::new()),
        written: std::sync::Mutex::new(Vec::new()),
    })
}

/// `--filter=NAME ARGS` over `disk`.
fn stack(name: &str, args: &str, disk: &Arc<Cached>) -> Arc<dyn Backend> {
    let args = words(args);
    let mut p = Params::parse("memory", "size", &args, REPEATABLE).unwrap();
    let (spec, _) = parse_one(name, &mut p).unwrap_or_else(|e| panic!("{name}: {e}"));
    let below: Arc<dyn Backend> = disk.clone();
    apply(&[spec], below).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Filters whose reads are the layer below's forward the fast cached read
/// (offset and partition moved, ranges checked against the filter's size,
/// truncate's tail zeroes); filters that change, count, delay, fail, log
/// or limit reads never let it reach the layer below.
#[test]
fn cached_reads_go_through_only_filters_that_keep_data() {
    let expect =
        |o: u64, n: usize| -> Vec<u8> { (o..o + n as u64).map(|i| (i % 251) as u8).collect() };
    let forwarding = [
        ("readonly", ""),
        ("readonly", "readonly-file=/nonexistent"),
        ("noextents", ""),
        ("nozero", ""),
        ("fua", "fuamode=emulate"),
        ("protect", "protect=0-511"),
        ("checkwrite", ""),
        ("cacheextents", ""),
        ("ip", "allow=all"),
        ("limit", "limit=2"),
        ("multi-conn", "multi-conn-mode=emulate"),
        ("blocksize-policy", "blocksize-minimum=512"),
    ];
    for (name, args) in forwarding {
        let disk = cached_disk();
        let f = stack(name, args, &disk);
        let mut buf = vec![0u8; 4096];
        assert!(f.try_read_cached(8192, &mut buf), "{name} {args}");
        assert_eq!(buf, expect(8192, 4096), "{name} {args}");
        assert_eq!(*disk.asked.lock().unwrap(), [(8192, 4096)], "{name}");
        assert!(
            !f.try_read_cached((2 << 20) - 100, &mut buf),
            "{name}: past the end"
        );
        assert_eq!(
            disk.asked.lock().unwrap().len(),
            1,
            "{name}: past the end asked below"
        );
    }
    // offset and partition: moved, and checked against the window.
    for (name, args) in [
        ("offset", "offset=1M range=512k"),
        ("partition", "partition=1"),
    ] {
        let disk = cached_disk();
        let f = stack(name, args, &disk);
        let mut buf = vec![0u8; 512];
        assert!(f.try_read_cached(512, &mut buf), "{name}");
        assert_eq!(buf, expect((1 << 20) + 512, 512), "{name}");
        assert!(
            !f.try_read_cached(f.size() - 256, &mut buf),
            "{name}: past the window"
        );
        assert_eq!(
            *disk.asked.lock().unwrap(),
            [((1 << 20) + 512, 512)],
            "{name}"
        );
    }
    // truncate: beyond the old end, zeroes without asking below.
    let disk = cached_disk();
    let f = stack("truncate", "truncate=3M", &disk);
    let mut buf = vec![1u8; 4096];
    assert!(f.try_read_cached((2 << 20) - 2048, &mut buf));
    assert_eq!(buf[..2048], expect((2 << 20) - 2048, 2048));
    assert!(buf[2048..].iter().all(|&b| b == 0));
    let mut tail = vec![1u8; 512];
    assert!(f.try_read_cached(5 << 19, &mut tail));
    assert!(tail.iter().all(|&b| b == 0));
    assert!(!f.try_read_cached((3 << 20) - 256, &mut tail));
    assert_eq!(*disk.asked.lock().unwrap(), [((2 << 20) - 2048, 2048)]);

    let not_forwarding = [
        (
            "blocksize-policy",
            "blocksize-minimum=512 blocksize-error-policy=error",
        ),
        ("blocksize", "minblock=512"),
        ("cache", ""),
        ("cow", ""),
        ("count", ""),
        ("stats", ""),
        ("delay", "rdelay=0"),
        ("error", "error-rate=0"),
        ("log", "logfile=/dev/null"),
        ("rate", "rate=1G"),
        ("readahead", ""),
        ("retry", ""),
    ];
    for (name, args) in not_forwarding {
        let disk = cached_disk();
        let f = stack(name, args, &disk);
        let mut buf = vec![0u8; 4096];
        assert!(
            !f.try_read_cached(8192, &mut buf),
            "{name} {args} forwarded it"
        );
        assert!(
            disk.asked.lock().unwrap().is_empty(),
            "{name} {args} asked below"
        );
        f.read_at(8192, &mut buf).unwrap();
        assert_eq!(buf, expect(8192, 4096), "{name} {args}: read_at");
    }
}

/// Only filters whose writes reach the layer below unchanged forward the
/// loop's write (moved by offset and partition, checked against the
/// filter's size); every filter that refuses, checks, changes, counts,
/// logs, delays or remembers writes leaves it to its own `write_at`.
#[test]
fn cached_writes_go_through_only_filters_that_pass_writes_unchanged() {
    let forwarding = [
        ("noextents", "", 8192),
        ("ip", "allow=all", 8192),
        ("limit", "limit=2", 8192),
        ("exitlast", "", 8192),
        ("exitwhen", "exit-when-file-created=/nonexistent", 8192),
        ("offset", "offset=1M range=512k", (1 << 20) + 8192),
        ("partition", "partition=1", (1 << 20) + 8192),
    ];
    for (name, args, below) in forwarding {
        let disk = cached_disk();
        let f = stack(name, args, &disk);
        assert!(f.try_write_cached(8192, &[0xee; 512]), "{name} {args}");
        assert_eq!(*disk.written.lock().unwrap(), [(below, 512)], "{name}");
        let mut buf = [0u8; 512];
        f.read_at(8192, &mut buf).unwrap();
        assert_eq!(buf, [0xee; 512], "{name}: stored");
        assert!(
            !f.try_write_cached(f.size() - 100, &[0; 512]),
            "{name}: past the end"
        );
        assert_eq!(
            disk.written.lock().unwrap().len(),
            1,
            "{name}: past the end asked below"
        );
    }
    let not_forwarding = [
        ("readonly", ""),
        ("protect", "protect=0-511"),
        ("checkwrite", ""),
        ("nozero", ""),
        ("fua", "fuamode=emulate"),
        ("cacheextents", ""),
        ("multi-conn", "multi-conn-mode=emulate"),
        ("blocksize-policy", "blocksize-minimum=512"),
        ("blocksize", "minblock=512"),
        ("cache", ""),
        ("cow", ""),
        ("count", ""),
        ("stats", ""),
        ("delay", "wdelay=0"),
        ("error", "error-rate=0"),
        ("log", "logfile=/dev/null"),
        ("rate", "rate=1G"),
        ("retry", ""),
        ("truncate", "truncate=3M"),
    ];
    for (name, args) in not_forwarding {
        let disk = cached_disk();
        let f = stack(name, args, &disk);
        assert!(
            !f.try_write_cached(8192, &[0xee; 512]),
            "{name} {args} forwarded it"
        );
        assert!(
            disk.written.lock().unwrap().is_empty(),
            "{name} {args} asked below"
        );
    }
}

/// cow's overlay and the cache are the export's, shared by every
/// connection, when the handles below show one disk (a filter's copy over
/// a shared backend here; the nbd proxy's connections in e2e_backends'
/// cow_over_the_proxy); per_connection.rs has tmpdisk's own disks.
#[test]
fn cow_and_cache_share_their_data_over_handles_of_one_disk() {
    let client = |id| crate::ClientInfo {
        id,
        peer: crate::Peer::Tcp("127.0.0.1:4000".parse().unwrap()),
        export_name: "",
        tls: false,
    };
    for top in ["cow", "cache"] {
        let names = [top.to_owned(), "limit".to_owned()];
        let args = words("limit=0");
        let mut p = Params::parse("memory", "size", &args, REPEATABLE).unwrap();
        let specs = parse_stack(&names, &mut p).unwrap();
        let mem: Arc<dyn Backend> = Arc::new(crate::MemoryBackend::new(1 << 20).unwrap());
        let b = apply(&specs, Arc::clone(&mem)).unwrap();
        let x = b.open(&client(1)).unwrap().expect("limit gives a handle");
        let y = b.open(&client(2)).unwrap().expect("limit gives a handle");
        assert!(!x.per_client_data(), "{top}");
        x.write_at(8192, &[0xab; 512], false).unwrap();
        let mut buf = [0u8; 512];
        y.read_at(8192, &mut buf).unwrap();
        assert_eq!(buf, [0xab; 512], "{top}: another connection sees the write");
        assert!(x.caps().contains(crate::Caps::MULTI_CONN), "{top}");
    }
}
