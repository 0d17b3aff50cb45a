//! From checked parameters to backends: one arm per built-in backend.
//! The keys each one accepts are in [`crate::catalog`]; the registry has
//! already refused any other key.

use std::sync::Arc;

use rustix::fs::Advice;

use crate::registry::{Built, Params};
use crate::{Backend, DirOptions, MemoryBackend, NullBackend, PatternBackend, dir_exports};

/// Build backend `name` from `p`; `readonly` is `-r` (or a cow above).
pub(crate) fn make_backend(
    name: &str,
    p: &mut Params<'_>,
    readonly: bool,
) -> Result<Built, String> {
    let one = |b: Arc<dyn Backend>, d: String| Ok(vec![(None, Some(d), b)]);
    let io = |e: std::io::Error| format!("{name}: {e}");
    match name {
        "memory" | "pattern" | "null" | "full" => {
            if name == "memory" {
                check_allocator(name, p)?;
            }
            let size = match (name, p.take_size(name, "size")?) {
                ("null", None) => 0,
                (_, Some(s)) => s,
                (_, None) => return Err(missing_size(name)),
            };
            let (b, what): (Arc<dyn Backend>, _) = match name {
                "memory" => (Arc::new(MemoryBackend::new(size).map_err(io)?), "RAM disk"),
                "null" => (Arc::new(NullBackend::new(size).map_err(io)?), "null device"),
                "full" => (
                    Arc::new(crate::full::FullBackend::new(size).map_err(io)?),
                    "full device",
                ),
                _ => (
                    Arc::new(PatternBackend::new(size).map_err(io)?),
                    "offset pattern",
                ),
            };
            one(b, format!("{what}, {size} bytes"))
        }
        "zero" => one(Arc::new(crate::full::zero()), "zero-length device".into()),
        "file" => file(p, readonly),
        "qcow2" | "vmdk" => {
            crate::registry::image(name, p, readonly).map(|(b, d)| vec![(None, Some(d), b)])
        }
        "data" => {
            check_allocator(name, p)?;
            let b = crate::data::build(p)?;
            let d = format!("data, {} bytes", b.size());
            one(Arc::new(b), d)
        }
        "random" => {
            let b = crate::random::RandomBackend::from_params(p)?;
            let d = format!("random data, {} bytes, seed {}", b.size(), b.seed());
            one(Arc::new(b), d)
        }
        "sparse-random" => {
            let b = crate::sparse_random::SparseRandom::from_params(p)?;
            let d = format!("sparse random data, {} bytes", b.size());
            one(Arc::new(b), d)
        }
        "split" => {
            let b = crate::split::SplitBackend::from_params(p, readonly)?;
            let d = format!("{} files, {} bytes", b.parts(), b.size());
            one(Arc::new(b), d)
        }
        "tmpdisk" => {
            let b = crate::tmpdisk::TmpDisk::from_params(p, readonly)?;
            one(Arc::new(b), "temporary disk per client".into())
        }
        #[cfg(feature = "curl")]
        "curl" => {
            let b = crate::curl::CurlBackend::from_params(p)?;
            let d = b.url().to_owned();
            one(Arc::new(b), d)
        }
        #[cfg(feature = "ssh")]
        "ssh" => {
            let b = crate::ssh::SshBackend::from_params(p, readonly)?;
            let d = b.describe();
            one(Arc::new(b), d)
        }
        #[cfg(feature = "rbd")]
        "rbd" => {
            let params = crate::rbd::Params::parse(|k| p.take(k))?;
            let b = crate::RbdBackend::open(&params, readonly)?;
            let d = b.description().unwrap_or_default();
            one(Arc::new(b), d)
        }
        _ => Err(format!("unknown backend '{name}'")),
    }
}

pub(crate) fn missing_size(name: &str) -> String {
    format!("{name}: missing parameter size (e.g. {name} 1G)")
}

/// nbdkit's `allocator=sparse|malloc[,mlock=true]|zstd`: nbdd has one
/// allocator (sparse 4 KiB pages), so the others are served sparse with a
/// warning rather than refused: a script that chose them still works.
fn check_allocator(name: &str, p: &mut Params<'_>) -> Result<(), String> {
    let Some(v) = p.take("allocator") else {
        return Ok(());
    };
    let mut parts = v.split(',');
    let kind = parts.next().unwrap_or_default();
    for opt in parts {
        match opt.split_once('=') {
            Some(("mlock", b)) if kind == "malloc" && crate::util::parse_bool(b).is_some() => {}
            _ => {
                return Err(format!(
                    "{name}: allocator: unknown option '{opt}' (only malloc takes mlock=true)"
                ));
            }
        }
    }
    match kind {
        "sparse" => Ok(()),
        "malloc" | "zstd" => {
            log::warn!("{name}: allocator={v} is served by nbdd's sparse allocator");
            Ok(())
        }
        other => Err(format!(
            "{name}: allocator: expected sparse, malloc or zstd, got '{other}'"
        )),
    }
}

fn file(p: &mut Params<'_>, readonly: bool) -> Result<Built, String> {
    let cache_none = match p.take("cache") {
        None | Some("default" | "writeback") => false,
        Some("none") => true,
        Some(other) => {
            return Err(format!(
                "file: cache: expected 'none' or 'default', got '{other}'"
            ));
        }
    };
    let advice = match p.take("fadvise") {
        None | Some("normal") => None,
        Some("random") => Some(Advice::Random),
        Some("sequential") => Some(Advice::Sequential),
        Some(other) => {
            return Err(format!(
                "file: fadvise: expected normal, random or sequential, got '{other}'"
            ));
        }
    };
    let fd_path = |key: &str, v: &str| {
        v.parse::<u32>()
            .map(|n| format!("/proc/self/fd/{n}"))
            .map_err(|_| format!("file: {key}: expected a file descriptor number, got '{v}'"))
    };
    let given = [p.take("file"), p.take("dir"), p.take("fd"), p.take("dirfd")];
    let single = |path: &str, shown: &str| -> Result<Built, String> {
        let b = crate::file::open_or_read_only(path, readonly, cache_none)
            .map_err(|e| format!("file: {shown}: {}", crate::plain_error(&e)))?;
        if let Some(a) = advice {
            b.advise(a).map_err(|e| format!("file: fadvise: {e}"))?;
        }
        // No description: see FileBackend (no server path before TLS).
        Ok(vec![(None, None, Arc::new(b) as Arc<dyn Backend>)])
    };
    match given {
        [Some(path), None, None, None] => single(path, path),
        [None, None, Some(fd), None] => single(&fd_path("fd", fd)?, &format!("fd={fd}")),
        [None, Some(dir), None, None] => directory(dir, dir, readonly, cache_none, advice),
        [None, None, None, Some(fd)] => directory(
            &fd_path("dirfd", fd)?,
            &format!("dirfd={fd}"),
            readonly,
            cache_none,
            advice,
        ),
        [None, None, None, None] => Err("file: missing parameter file (e.g. file disk.img)".into()),
        _ => Err("file: give one of file=, dir=, fd= or dirfd=".into()),
    }
}

fn directory(
    dir: &str,
    shown: &str,
    readonly: bool,
    cache_none: bool,
    advice: Option<Advice>,
) -> Result<Built, String> {
    let opts = DirOptions {
        readonly,
        cache_none,
        advice,
    };
    // Nothing is opened here: each file when a client selects it.
    let files = dir_exports(dir, opts)
        .map_err(|e| format!("file: dir: {shown}: {}", crate::plain_error(&e)))?;
    if files.is_empty() {
        return Err(format!("file: dir: {shown}: no regular files to export"));
    }
    Ok(files
        .into_iter()
        .map(|(name, b)| (Some(name), None, Arc::new(b) as Arc<dyn Backend>))
        .collect())
}
