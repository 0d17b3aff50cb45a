//! Building exports from the `nbdd` command line, in nbdkit's style:
//! `nbdd [--filter F]... BACKEND [MAGIC] [key=value]...`.
//!
//! To add a backend: a row in [`BACKENDS`], its keys in `backend_keys`, and
//! an arm in `make_backend`. Filters live in [`crate::filters`].

use std::sync::Arc;

use crate::export::{Export, ExportSet};
use crate::filters;
use crate::util::parse_bool;
use crate::{Backend, ImageBackend, ImageFormat, ImageOptions, parse_size};

/// Backend names, their "magic" parameter, and a one-line help, for
/// `nbdd --help` (the full text per backend is [`crate::plugin_help`]).
pub const BACKENDS: &[(&str, &str, &str)] = &[
    ("memory", "size", "sparse RAM disk: memory SIZE"),
    (
        "file",
        "file",
        "file or block device: file PATH [cache=none] [fadvise=...] | file dir=DIR",
    ),
    ("null", "size", "reads zeroes, discards writes: null [SIZE]"),
    (
        "pattern",
        "size",
        "read-only, every 8-byte word holds its offset: pattern SIZE",
    ),
    (
        "qcow2",
        "file",
        "qcow2 image, read-write: qcow2 FILE [backing=PATH|backing=] [backing-format=qcow2|raw|vmdk]",
    ),
    (
        "vmdk",
        "file",
        "VMware vmdk image (flat extents), read-only: vmdk FILE",
    ),
    (
        "data",
        "data",
        "disk from the command line: data '0x55 0xAA @0x1fe ...' [size=]",
    ),
    (
        "random",
        "size",
        "random bytes, repeatable per seed: random SIZE [seed=N]",
    ),
    (
        "sparse-random",
        "size",
        "runs of random data between holes: sparse-random SIZE [seed=] [percent=]",
    ),
    ("zero", "", "an empty (zero-length) read-only export: zero"),
    (
        "full",
        "size",
        "reads zeroes, writes fail with ENOSPC: full SIZE",
    ),
    (
        "split",
        "file",
        "files concatenated into one disk: split FILE FILE...",
    ),
    (
        "tmpdisk",
        "size",
        "a fresh empty disk per client: tmpdisk SIZE [type=ext4]",
    ),
    #[cfg(feature = "curl")]
    (
        "curl",
        "url",
        "HTTP/HTTPS image, read-only: curl URL [header=] [sslverify=]",
    ),
    #[cfg(feature = "ssh")]
    (
        "ssh",
        "path",
        "a file over SFTP: ssh host=HOST [user=] PATH",
    ),
    #[cfg(feature = "rbd")]
    (
        "rbd",
        "image",
        "Ceph RBD image: rbd POOL/IMAGE[@SNAP] [conf=] [id=] [keyring=]",
    ),
];

/// The command-line words as `(key, value)` pairs, with every bare word
/// (one without `=`) rewritten to `magic=word` as nbdkit does; each pair
/// is consumed once.
pub(crate) struct Params<'a> {
    backend: &'a str,
    pairs: Vec<(&'a str, &'a str, bool)>,
}

impl<'a> Params<'a> {
    /// Split `args`; a key may appear more than once only if it is in
    /// `repeatable` (`split file=`, `curl header=`).
    #[cfg(test)]
    pub(crate) fn parse(
        backend: &'a str,
        magic: &'a str,
        args: &'a [String],
        repeatable: &[&str],
    ) -> Result<Self, String> {
        Self::parse_for(backend, &[], magic, args, repeatable)
    }

    /// [`Self::parse`], knowing the backend's own keys: a key given twice
    /// is blamed on the backend if it is one of `own`, else on the filter
    /// that takes it (`file cache=` and the cache filter's `cache=`).
    pub(crate) fn parse_for(
        backend: &'a str,
        own: &[&str],
        magic: &'a str,
        args: &'a [String],
        repeatable: &[&str],
    ) -> Result<Self, String> {
        let mut pairs: Vec<(&str, &str, bool)> = Vec::new();
        for word in args {
            let (k, v) = match word.split_once('=') {
                Some(kv) => kv,
                None if !magic.is_empty() => (magic, word.as_str()),
                None => {
                    return Err(format!(
                        "{backend}: expected key=value, got '{word}' ({backend} has no parameter a bare word could stand for)"
                    ));
                }
            };
            if !repeatable.contains(&k) && pairs.iter().any(|&(seen, _, _)| seen == k) {
                let who = match crate::filters::owner_of(k) {
                    Some(f) if !own.contains(&k) => format!("{f} filter"),
                    _ => backend.to_owned(),
                };
                return Err(format!(
                    "{who}: parameter '{k}' given twice (second value '{v}')"
                ));
            }
            pairs.push((k, v, false));
        }
        Ok(Self { backend, pairs })
    }

    /// Take the (first remaining) value of `key`, if given.
    pub(crate) fn take(&mut self, key: &str) -> Option<&'a str> {
        self.pairs.iter_mut().find(|p| p.0 == key && !p.2).map(|p| {
            p.2 = true;
            p.1
        })
    }

    /// Take every value of a repeatable `key`, in command-line order.
    pub(crate) fn take_all(&mut self, key: &str) -> Vec<&'a str> {
        std::iter::from_fn(|| self.take(key)).collect()
    }

    /// Take every pair nobody has taken yet (the data plugin's variables).
    pub(crate) fn take_rest(&mut self) -> Vec<(&'a str, &'a str)> {
        self.pairs
            .iter_mut()
            .filter(|p| !p.2)
            .map(|p| {
                p.2 = true;
                (p.0, p.1)
            })
            .collect()
    }

    /// Take `key` as a boolean in nbdkit's spellings.
    pub(crate) fn take_bool(&mut self, owner: &str, key: &str) -> Result<Option<bool>, String> {
        self.take(key)
            .map(|v| {
                parse_bool(v)
                    .ok_or_else(|| format!("{owner}: {key}: expected true or false, got '{v}'"))
            })
            .transpose()
    }

    /// Take `key` as a size.
    pub(crate) fn take_size(&mut self, owner: &str, key: &str) -> Result<Option<u64>, String> {
        self.take(key)
            .map(|v| parse_size(v).map_err(|e| format!("{owner}: {key}: {e}")))
            .transpose()
    }

    /// Error for the first parameter not yet taken that is not in `keys`,
    /// so that a misspelt key is reported before a missing one.
    fn check_known(&self, keys: &[&str]) -> Result<(), String> {
        match self.pairs.iter().find(|p| !p.2 && !keys.contains(&p.0)) {
            Some((k, _, _)) => Err(filters::unknown_key(k, self.backend)),
            None => Ok(()),
        }
    }

    /// Error for the first parameter nobody took.
    fn finish(&self) -> Result<(), String> {
        match self.pairs.iter().find(|p| !p.2) {
            Some((k, _, _)) => Err(filters::unknown_key(k, self.backend)),
            None => Ok(()),
        }
    }
}

/// Build the exports from the command line words after the backend name.
///
/// `args` are `key=value` words, except that a first word without '=' is
/// the backend's magic parameter (`memory 1G` == `memory size=1G`,
/// `file disk.img` == `file file=disk.img`). `export_name` is `-e`'s value
/// ("" by default); `readonly` is `-r`.
///
/// # Errors
///
/// One line naming the bad argument, e.g. `memory: size: invalid size
/// 'abc': …` or `unknown parameter 'sise' for backend memory`.
pub fn build(
    backend: &str,
    args: &[String],
    export_name: &str,
    readonly: bool,
) -> Result<ExportSet, String> {
    build_with_filters(backend, args, &[], export_name, readonly)
}

/// [`build`], with filters stacked on every export. `filters` are filter
/// names (`--filter NAME`), the first one outermost (nearest the client),
/// as in nbdkit; their parameters are `key=value` words in `args` next to
/// the backend's, and each filter claims its own keys.
///
/// # Errors
///
/// As [`build`], plus unknown filter names and bad filter parameters.
pub fn build_with_filters(
    backend: &str,
    args: &[String],
    filter_names: &[String],
    export_name: &str,
    readonly: bool,
) -> Result<ExportSet, String> {
    build_with_filters_ext(backend, args, filter_names, export_name, readonly, &[])
}

/// Opens an [`ExtBackend`] from its parameters (each `(key, value)` is one
/// of its `keys`, the magic word already rewritten to its key) and `-r`.
pub type ExtOpen =
    fn(params: &[(String, String)], readonly: bool) -> Result<Arc<dyn Backend>, String>;

/// A backend defined outside this crate, registered by name for one
/// [`build_with_filters_ext`] call. The `nbd` proxy is one: it is built on
/// nbd-proto's client, which this crate must not depend on.
#[derive(Clone, Copy)]
pub struct ExtBackend {
    /// Command-line name (`nbd`).
    pub name: &'static str,
    /// The key a first word without '=' stands for (`uri`).
    pub magic: &'static str,
    /// Every key it accepts; others are reported as unknown.
    pub keys: &'static [&'static str],
    /// One-line help, as in [`BACKENDS`].
    pub help: &'static str,
    /// The constructor.
    pub open: ExtOpen,
}

/// [`build_with_filters`], also knowing the backends in `extra` (looked up
/// after the built-in ones). Filters stack on an extra backend exactly as
/// on a built-in one.
///
/// # Errors
///
/// As [`build_with_filters`]; an extra backend's own message otherwise.
pub fn build_with_filters_ext(
    backend: &str,
    args: &[String],
    filter_names: &[String],
    export_name: &str,
    readonly: bool,
    extra: &[ExtBackend],
) -> Result<ExportSet, String> {
    let ext = extra.iter().find(|b| b.name == backend);
    let builtin = crate::catalog::plugin(backend);
    let (magic, repeatable): (&str, Vec<&str>) = match (builtin, ext) {
        (Some(pl), _) => (
            pl.magic,
            pl.params
                .iter()
                .filter(|q| q.repeat)
                .map(|q| q.key)
                .collect(),
        ),
        (None, Some(e)) => (e.magic, Vec::new()),
        (None, None) => {
            let known: Vec<_> = BACKENDS
                .iter()
                .map(|b| b.0)
                .chain(extra.iter().map(|e| e.name))
                .collect();
            return Err(format!(
                "unknown backend '{backend}' (known: {})",
                known.join(", ")
            ));
        }
    };
    let mut repeatable = repeatable;
    repeatable.extend_from_slice(filters::REPEATABLE);
    let own: Vec<&str> = builtin.map_or_else(
        || ext.map(|e| e.keys.to_vec()).unwrap_or_default(),
        |pl| pl.params.iter().map(|q| q.key).collect(),
    );
    let mut params = Params::parse_for(backend, &own, magic, args, &repeatable)?;
    // Filters claim their keys first, so backend keys are checked against
    // what is left.
    let stack = filters::parse_stack(filter_names, &mut params)?;
    // Below cow, checkwrite, qcow2dec, xz and gzip nothing is ever written,
    // so the backend is opened read-only (as nbdkit does): a base file
    // without write permission works.
    let open_ro = readonly || stack.iter().any(|s| s.read_only_below);
    let exports = match (builtin, ext) {
        (Some(pl), _) => {
            if !pl.any_keys {
                let keys: Vec<&str> = pl.params.iter().map(|q| q.key).collect();
                params.check_known(&keys)?;
            }
            crate::make::make_backend(backend, &mut params, open_ro)?
        }
        (None, Some(e)) => {
            params.check_known(e.keys)?;
            let kv: Vec<(String, String)> = e
                .keys
                .iter()
                .filter_map(|&k| params.take(k).map(|v| (k.to_owned(), v.to_owned())))
                .collect();
            let b = (e.open)(&kv, open_ro)?;
            vec![(None, b.description(), b)]
        }
        (None, None) => return Err(format!("unknown backend '{backend}'")),
    };
    params.finish()?;
    let mut set = Vec::with_capacity(exports.len());
    // A backend that yields one export without naming it is served under
    // any name, as nbdkit does (crate::export's policy).
    let any_name = matches!(exports.as_slice(), [(None, _, _)]);
    for (name, description, inner) in exports {
        let name = name.unwrap_or_else(|| export_name.to_owned());
        let mut b = filters::apply(&stack, inner)?;
        // -r makes the whole stack read-only, whatever a filter (or the
        // backend) would allow, so it goes outermost.
        if readonly && !b.caps().contains(crate::Caps::READ_ONLY) {
            b = Arc::new(filters::ReadOnly::new(b));
        }
        set.push(Export::new(name, description, b));
    }
    let set = ExportSet::from_exports(set);
    Ok(if any_name { set.serve_any_name() } else { set })
}

/// `(export name or None for -e's, description, backend)` for each export.
pub(crate) type Built = Vec<(Option<String>, Option<String>, Arc<dyn Backend>)>;

/// `qcow2 FILE [backing=] [backing-format=]`, `vmdk FILE`.
pub(crate) fn image(
    backend: &str,
    p: &mut Params<'_>,
    readonly: bool,
) -> Result<(Arc<dyn Backend>, String), String> {
    let Some(path) = p.take("file") else {
        return Err(format!(
            "{backend}: missing parameter file (e.g. {backend} disk.{backend})"
        ));
    };
    let format = if backend == "vmdk" {
        ImageFormat::Vmdk
    } else {
        ImageFormat::Qcow2
    };
    let backing_format = p
        .take("backing-format")
        .map(ImageFormat::parse)
        .transpose()
        .map_err(|e| format!("{backend}: backing-format: {e}"))?;
    let opts = ImageOptions {
        format: Some(format),
        readonly,
        backing: p.take("backing").map(Into::into),
        backing_format,
    };
    let b =
        ImageBackend::open(path.as_ref(), &opts).map_err(|e| format!("{backend}: {path}: {e}"))?;
    let d = b.description().unwrap_or_default();
    Ok((Arc::new(b), d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn magic_and_keyed_forms_agree() {
        for args in ["1G", "size=1G"] {
            let set = build("memory", &words(args), "", false).unwrap();
            let e = set.get("").unwrap();
            assert_eq!(e.backend.size(), 1 << 30);
            assert_eq!(e.name, "");
        }
        let set = build("null", &[], "n", true).unwrap();
        assert_eq!(set.get("n").unwrap().backend.size(), 0);
        assert!(set.get("").is_some(), "empty name means the default export");
        assert_eq!(
            set.get("other").unwrap().name,
            "n",
            "one export answers any name (nbdkit)"
        );
        assert!(
            set.get("n")
                .unwrap()
                .backend
                .caps()
                .contains(crate::Caps::READ_ONLY)
        );
    }

    #[test]
    fn errors_name_the_argument() {
        let err = |b: &str, a: &str| build(b, &words(a), "", false).err().unwrap();
        assert!(err("memory", "abc").starts_with("memory: size: invalid size 'abc'"));
        assert_eq!(
            err("memory", "sise=1G"),
            "unknown parameter 'sise' for backend memory"
        );
        assert!(err("memory", "").contains("missing parameter size"));
        assert!(err("memory", "1G 2G").contains("'2G'"));
        assert!(err("memory", "1G size=2G").contains("twice"));
        assert!(err("disk", "1G").contains("unknown backend 'disk'"));
        assert!(err("file", "/nonexistent/x").starts_with("file: /nonexistent/x:"));
        assert!(err("file", "x cache=maybe").contains("'maybe'"));
        for e in [err("memory", "abc"), err("file", "dir=/nonexistent")] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    fn ext_open(kv: &[(String, String)], readonly: bool) -> Result<Arc<dyn Backend>, String> {
        assert!(readonly);
        match kv {
            [(k, v)] if k == "uri" => {
                Ok(Arc::new(MemoryBackend::new(v.len() as u64 * 512).unwrap()))
            }
            _ => Err(format!("ext: got {kv:?}")),
        }
    }

    #[test]
    fn extra_backends_take_magic_keys_and_filters() {
        let ext = [ExtBackend {
            name: "ext",
            magic: "uri",
            keys: &["uri", "other"],
            help: "test",
            open: ext_open,
        }];
        let filters = ["offset".to_owned()];
        let set =
            build_with_filters_ext("ext", &words("abcd offset=512"), &filters, "e", true, &ext)
                .unwrap();
        let b = &set.get("e").unwrap().backend;
        assert_eq!(b.size(), 3 * 512, "offset filter applied");
        assert!(b.caps().contains(crate::Caps::READ_ONLY));
        let err = build_with_filters_ext("ext", &words("uri=x bad=1"), &[], "", true, &ext)
            .err()
            .unwrap();
        assert_eq!(err, "unknown parameter 'bad' for backend ext");
        let err = build_with_filters_ext("nope", &[], &[], "", true, &ext)
            .err()
            .unwrap();
        assert!(
            err.ends_with(", ext)") && err.contains("qcow2, vmdk"),
            "{err}"
        );
    }

    #[test]
    fn cow_opens_the_base_read_only() {
        let path = std::env::temp_dir().join(format!("nbd-reg-cow-{}", std::process::id()));
        std::fs::write(&path, [7u8; 4096]).unwrap();
        let args = vec![path.display().to_string()];
        let plain = build("file", &args, "", false).unwrap();
        let cow = build_with_filters("file", &args, &["cow".to_owned()], "", false).unwrap();
        let _ = std::fs::remove_file(&path);
        let (plain, cow) = (
            &plain.get("").unwrap().backend,
            &cow.get("").unwrap().backend,
        );
        assert!(!plain.caps().contains(crate::Caps::READ_ONLY));
        assert!(
            !cow.caps().contains(crate::Caps::READ_ONLY),
            "cow is writable"
        );
        cow.write_at(0, &[1], false).unwrap();
        let mut b = [0u8; 2];
        plain.read_at(0, &mut b).unwrap();
        assert_eq!(b, [7, 7], "the base is untouched");
    }

    #[test]
    fn error_filter_per_operation_and_trigger_file() {
        let trigger = std::env::temp_dir().join(format!("nbd-err-trigger-{}", std::process::id()));
        let _ = std::fs::remove_file(&trigger);
        let args = words(&format!(
            "1M error-pwrite=ENOSPC error-pwrite-rate=100% error-pread-rate=1 error-pread-file={}",
            trigger.display()
        ));
        let set = build_with_filters("memory", &args, &["error".to_owned()], "", false).unwrap();
        let b = &set.get("").unwrap().backend;
        let e = b.write_at(0, &[1], false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        let mut buf = [0u8; 1];
        b.read_at(0, &mut buf).unwrap();
        b.flush().unwrap();
        std::fs::write(&trigger, b"").unwrap();
        let e = b.read_at(0, &mut buf).unwrap_err();
        let _ = std::fs::remove_file(&trigger);
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "error-pread defaults to error="
        );
        b.read_at(0, &mut buf).unwrap();
        let err = build_with_filters(
            "memory",
            &words("1M error-trim=EFOO"),
            &["error".to_owned()],
            "",
            false,
        )
        .err()
        .unwrap();
        assert!(
            err.starts_with("error filter: error-trim=EFOO: not an error name"),
            "{err}"
        );
    }

    #[test]
    fn every_listed_backend_builds() {
        for &(name, magic, help) in BACKENDS {
            assert!(!help.is_empty());
            let args = match name {
                "file" | "split" | "curl" | "ssh" | "tmpdisk" | "qcow2" | "vmdk" | "rbd" => {
                    continue;
                }
                "zero" => {
                    assert!(magic.is_empty());
                    ""
                }
                "data" => "(0x55 0xAA)*2048",
                _ => "4k",
            };
            let args: Vec<String> = Some(args)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .into_iter()
                .collect();
            let set = build(name, &args, "", false).unwrap_or_else(|e| panic!("{name}: {e}"));
            let want = if name == "zero" { 0 } else { 4096 };
            assert_eq!(set.get("").unwrap().backend.size(), want, "{name}");
        }
    }

    /// The catalogue is the list of keys the registry accepts: each
    /// documented key gets past the unknown-key check (whatever its bad
    /// value makes the backend say), an undocumented one does not.
    #[test]
    fn every_accepted_key_is_documented_and_no_other() {
        for pl in crate::PLUGINS {
            for q in pl.params {
                let args = vec![format!("{}=/nonexistent-nbdd-value", q.key)];
                if let Err(e) = build(pl.name, &args, "", true) {
                    assert!(
                        !e.contains("unknown parameter"),
                        "{} {}: {e}",
                        pl.name,
                        q.key
                    );
                }
            }
            let err = build(pl.name, &["nosuchkey=1".to_owned()], "", true);
            match err {
                Err(e) if pl.any_keys => {
                    assert!(!e.contains("unknown parameter 'nosuchkey'"), "{e}")
                }
                Err(e) => assert!(
                    e.contains("unknown parameter 'nosuchkey'"),
                    "{}: {e}",
                    pl.name
                ),
                Ok(_) => panic!("{}: nosuchkey accepted", pl.name),
            }
        }
    }

    #[test]
    fn repeats_only_for_repeatable_keys_and_bare_words_are_magic() {
        let dir = std::env::temp_dir().join(format!("nbd-reg-split-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, [1u8; 512]).unwrap();
        std::fs::write(&b, [2u8; 1024]).unwrap();
        let args = vec![a.display().to_string(), format!("file={}", b.display())];
        let set = build("split", &args, "", true).unwrap();
        assert_eq!(set.get("").unwrap().backend.size(), 1536);
        let _ = std::fs::remove_dir_all(&dir);
        let err = |b: &str, a: &[&str]| {
            let a: Vec<String> = a.iter().map(|s| (*s).to_owned()).collect();
            build(b, &a, "", false).err().unwrap()
        };
        assert_eq!(
            err("memory", &["1M", "2M"]),
            "memory: parameter 'size' given twice (second value '2M')"
        );
        assert!(err("zero", &["1M"]).contains("expected key=value, got '1M'"));
        assert_eq!(
            err("data", &["raw=x", "var=1"]),
            "unknown parameter 'var' for backend data ($VAR variables need data=)"
        );
        assert!(err("memory", &["1M", "allocator=slab"]).contains("'slab'"));
        build(
            "memory",
            &words("4s allocator=malloc,mlock=true"),
            "",
            false,
        )
        .unwrap();
        let set = build("data", &words("$v*2 v=0x41"), "", false).unwrap();
        let mut buf = [0u8; 2];
        set.get("").unwrap().backend.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"AA");
    }
}
