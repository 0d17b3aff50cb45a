//! The conformance suite (see `suite/mod.rs`) over filter stacks built
//! from the command line, as `nbdd --filter=... memory SIZE ...` builds
//! them: each filter must keep every promise of the layer below that it
//! does not document changing.

mod suite;

use std::sync::Arc;

use nbd_backends::{Backend, MemoryBackend, build_with_filters};
use suite::{Fixture, SIZE, zero};

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// `--filter=F...` over `memory SIZE`, with `args`.
fn over_memory(filters: &str, args: &str) -> Arc<dyn Backend> {
    let args = words(&format!("{SIZE} {args}"));
    let set = build_with_filters("memory", &args, &words(filters), "", false)
        .unwrap_or_else(|e| panic!("{filters} {args:?}: {e}"));
    Arc::clone(&set.get("").unwrap().backend)
}

/// A stack that keeps every promise of memory.
fn like_memory(filters: &str, args: &str) -> Fixture {
    Fixture {
        backend: over_memory(filters, args),
        stores: true,
        trim_zeroes: true,
        fast_zero: true,
        initial: zero,
        _file: None,
    }
}

/// Fast zeroes fail (the filter cannot do them fast).
fn slow_zero(filters: &str, args: &str) -> Fixture {
    Fixture {
        fast_zero: false,
        ..like_memory(filters, args)
    }
}

/// Every byte of the compressed test images.
fn pat(i: u64) -> u8 {
    (i % 251) as u8 ^ (i >> 12) as u8
}

fn image() -> Vec<u8> {
    (0..SIZE).map(pat).collect()
}

/// A read-only filter over `compressed` bytes held in memory.
fn decompressing(filter: &str, compressed: &[u8]) -> Fixture {
    let m = MemoryBackend::new(compressed.len() as u64).unwrap();
    m.write_at(0, compressed, false).unwrap();
    let inner: Arc<dyn Backend> = Arc::new(m);
    let backend: Arc<dyn Backend> = match filter {
        "gzip" => Arc::new(nbd_backends::filters::Gzip::new(inner).unwrap()),
        _ => Arc::new(
            nbd_backends::filters::Xz::new(inner, nbd_backends::filters::XzOptions::default())
                .unwrap(),
        ),
    };
    Fixture {
        backend,
        stores: false,
        trim_zeroes: false,
        fast_zero: false,
        initial: pat,
        _file: None,
    }
}

fn gzip() -> Fixture {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&image()).unwrap();
    decompressing("gzip", &e.finish().unwrap())
}

fn xz() -> Fixture {
    let xz = std::path::Path::new("/usr/bin/xz");
    assert!(xz.exists(), "xz is missing: apt-get install -y xz-utils");
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("nbdd-conf-xz-{}-{n}", std::process::id()));
    std::fs::write(&dir, image()).unwrap();
    let out = std::process::Command::new(xz)
        .args(["-c", "-T1", "--block-size=100000"])
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&dir);
    assert!(out.status.success());
    decompressing("xz", &out.stdout)
}

conformance! {
    cache_writeback_ => like_memory("cache", "cache-min-block-size=4k cache-max-size=64k");
    cache_writethrough_ => like_memory("cache", "cache=writethrough cache-min-block-size=4k");
    cache_unsafe_on_read_ => like_memory("cache", "cache=unsafe cache-on-read=true");
    cacheextents_ => like_memory("cacheextents", "");
    readahead_ => like_memory("readahead", "");
    noextents_ => like_memory("noextents", "");
    fua_emulate_ => like_memory("fua", "fuamode=emulate");
    fua_discard_ => like_memory("fua", "fuamode=discard");
    nozero_emulate_ => slow_zero("nozero", "zeromode=emulate");
    nozero_notrim_ => like_memory("nozero", "zeromode=notrim");
    blocksize_ => Fixture {
        // Unaligned trim heads and tails are dropped: not all zero.
        trim_zeroes: false,
        ..slow_zero("blocksize", "minblock=4k maxdata=64k maxlen=128k")
    };
    blocksize_policy_ => like_memory("blocksize-policy", "blocksize-preferred=64k");
    truncate_ => like_memory("truncate", "round-down=4k");
    multi_conn_ => like_memory("multi-conn", "multi-conn-mode=emulate");
    ip_ => like_memory("ip", "allow=all");
    limit_ => like_memory("limit", "limit=3");
    rate_ => like_memory("rate", "rate=10G connection-rate=10G");
    retry_ => like_memory("retry", "retries=1 retry-delay=1ms");
    count_ => like_memory("count", "");
    exitwhen_idle_ => like_memory("exitwhen", "");
    readonly_switch_off_ => like_memory("readonly", "readonly-file=/nonexistent/nbdd-ro");
    delay_zero_ => like_memory("delay", "delay-zero=0 delay-trim=0 delay-extents=0");
    stats_threshold_ => like_memory("stats", "statsthreshold=50");
    gzip_ => gzip();
    xz_ => xz();
    stack_ => Fixture {
        trim_zeroes: false,
        ..slow_zero(
            "log stats cache cacheextents blocksize",
            "cache-min-block-size=8k minblock=512",
        )
    };
}
