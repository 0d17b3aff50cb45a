//! Per-connection handles through filters: over a backend that gives each
//! client its own disk (like nbdkit's tmpdisk), every filter forwards
//! `preconnect` and wraps each client's handle in its own copy, so clients
//! keep their own disks through any stack; export-wide state (statistics,
//! connection limits) is shared by the copies.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use nbd_backends::filters::help::FILTER_DOCS;
use nbd_backends::{
    Backend, Caps, ClientInfo, ExtBackend, MemoryBackend, Peer, ZeroFlags, build_with_filters_ext,
};

const SIZE: u64 = 1 << 20;

static PRECONNECTS: AtomicU32 = AtomicU32::new(0);

/// A fresh empty disk per `open`; the shared value is an empty disk too.
struct PerConn {
    shared: MemoryBackend,
}

impl Backend for PerConn {
    fn size(&self) -> u64 {
        SIZE
    }
    fn caps(&self) -> Caps {
        self.shared.caps() - Caps::MULTI_CONN
    }
    fn preconnect(&self, _: &ClientInfo<'_>) -> io::Result<()> {
        PRECONNECTS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn open(&self, _: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        Ok(Some(Arc::new(OwnDisk(MemoryBackend::new(SIZE)?))))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.shared.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.shared.write_at(offset, data, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.shared.write_zeroes(offset, len, flags)
    }
}

/// A client's own disk: says so ([`Backend::per_client_data`]), so that
/// cow and cache keep their data per connection over it.
struct OwnDisk(MemoryBackend);

impl Backend for OwnDisk {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn caps(&self) -> Caps {
        self.0.caps() - Caps::MULTI_CONN
    }
    fn per_client_data(&self) -> bool {
        true
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.0.write_at(offset, data, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.0.write_zeroes(offset, len, flags)
    }
}

fn open_perconn(_: &[(String, String)], _: bool) -> Result<Arc<dyn Backend>, String> {
    let shared = MemoryBackend::new(SIZE).map_err(|e| e.to_string())?;
    Ok(Arc::new(PerConn { shared }))
}

const PERCONN: ExtBackend = ExtBackend {
    name: "perconn",
    magic: "size",
    keys: &[],
    help: "test: a fresh disk per connection",
    open: open_perconn,
};

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn stack(filters: &[&str], args: &str) -> Result<Arc<dyn Backend>, String> {
    let names: Vec<String> = filters.iter().map(|s| (*s).to_owned()).collect();
    let set = build_with_filters_ext("perconn", &words(args), &names, "", false, &[PERCONN])?;
    Ok(Arc::clone(&set.get("").unwrap().backend))
}

fn client(id: u64) -> ClientInfo<'static> {
    ClientInfo {
        id,
        peer: Peer::Tcp("127.0.0.1:4000".parse().unwrap()),
        export_name: "",
        tls: false,
    }
}

/// The byte at `at`, read as an aligned 512-byte block (the
/// blocksize-policy example refuses smaller reads).
fn byte(b: &dyn Backend, at: u64) -> u8 {
    let mut x = [0xee; 512];
    let start = at / 512 * 512;
    b.read_at(start, &mut x).unwrap();
    x[(at - start) as usize]
}

/// Parameters for this test where a filter's help example does not fit
/// (random errors, a write-protected first sector).
fn args_for(name: &str, example: &str) -> String {
    match name {
        "error" => "error-rate=0".into(),
        _ => example.into(),
    }
}

#[test]
fn every_filter_gives_each_client_its_own_disk() {
    // These need content a fresh empty disk cannot have: opening fails,
    // cleanly, with the filter's reason.
    let needs_content = ["partition", "qcow2dec", "xz", "gzip"];
    for d in FILTER_DOCS {
        if needs_content.contains(&d.name) {
            continue;
        }
        let b = stack(&[d.name], &args_for(d.name, d.example))
            .unwrap_or_else(|e| panic!("{}: {e}", d.name));
        let before = PRECONNECTS.load(Ordering::SeqCst);
        b.preconnect(&client(1))
            .unwrap_or_else(|e| panic!("{}: {e}", d.name));
        assert!(
            PRECONNECTS.load(Ordering::SeqCst) > before,
            "{}: preconnect not forwarded",
            d.name
        );
        let x = b.open(&client(1)).unwrap().expect(d.name);
        let y = b.open(&client(2)).unwrap().expect(d.name);
        if x.caps().contains(Caps::READ_ONLY) || d.name == "checkwrite" {
            continue;
        }
        x.write_at(8192, &[0xab; 512], false)
            .unwrap_or_else(|e| panic!("{}: {e}", d.name));
        x.flush().unwrap();
        assert_eq!(
            byte(&*x, 8192),
            0xab,
            "{}: the writer sees its data",
            d.name
        );
        assert_eq!(
            byte(&*y, 8192),
            0,
            "{}: another client has its own disk",
            d.name
        );
        assert_eq!(
            byte(&*b, 8192),
            0,
            "{}: the shared value is untouched",
            d.name
        );
    }
}

#[test]
fn filters_that_need_content_refuse_a_fresh_disk_cleanly() {
    for (name, args) in [
        ("partition", "partition=1"),
        ("qcow2dec", ""),
        ("xz", ""),
        ("gzip", ""),
    ] {
        // The shared value is empty too, so building fails already.
        let e = stack(&[name], args).err().unwrap();
        assert!(e.starts_with(&format!("{name} filter: ")), "{e}");
    }
}

#[test]
fn a_deep_stack_keeps_disks_apart() {
    let b = stack(
        &["log", "stats", "offset", "cache", "blocksize", "truncate"],
        "offset=4096 cache-min-block-size=4k minblock=512 round-up=4096",
    )
    .unwrap();
    let x = b.open(&client(7)).unwrap().unwrap();
    let y = b.open(&client(8)).unwrap().unwrap();
    x.write_at(1, &[5; 100], false).unwrap();
    assert_eq!(byte(&*x, 50), 5);
    assert_eq!(byte(&*y, 50), 0);
}

#[test]
fn statistics_are_shared_by_the_copies() {
    let path = std::env::temp_dir().join(format!("nbdd-perconn-stats-{}", std::process::id()));
    let b = stack(&["stats"], &format!("statsfile={}", path.display())).unwrap();
    let x = b.open(&client(1)).unwrap().unwrap();
    let y = b.open(&client(2)).unwrap().unwrap();
    x.write_at(0, &[1; 10], false).unwrap();
    y.write_at(0, &[1; 30], false).unwrap();
    drop((x, y, b));
    let report = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(report.contains("write: 2 ops, "), "{report}");
    assert!(report.contains(" 40 bytes, "), "{report}");
}

#[test]
fn limit_counts_connections_across_copies() {
    let b = stack(&["limit"], "limit=2").unwrap();
    let x = b.open(&client(1)).unwrap().unwrap();
    let _y = b.open(&client(2)).unwrap().unwrap();
    assert!(b.preconnect(&client(3)).is_err());
    assert!(b.open(&client(3)).is_err());
    drop(x);
    assert!(b.open(&client(3)).unwrap().is_some());
}
