//! Building exports from the `nbdd` command line, in nbdkit's style:
//! `nbdd [--filter F]... BACKEND [MAGIC] [key=value]...`.
//!
//! To add a backend: a row in [`BACKENDS`], its keys in `backend_keys`, and
//! an arm in `make_backend`. Filters live in [`crate::filters`].

use std::sync::Arc;

use crate::filters;
use crate::{
    Backend, FileBackend, MemoryBackend, NullBackend, PatternBackend, open_dir, parse_size,
};

/// One export served by the server.
pub struct Export {
    /// The export name clients ask for (NBD_OPT_GO / EXPORT_NAME).
    pub name: String,
    /// Human description for NBD_INFO_DESCRIPTION and NBD_OPT_LIST.
    pub description: Option<String>,
    /// The store behind it, shared by every connection.
    pub backend: Arc<dyn Backend>,
}

/// The set of exports a server offers, in a fixed order; the first one is
/// the default export.
pub struct ExportSet {
    exports: Vec<Export>,
}

impl ExportSet {
    /// A set holding one export.
    pub fn single(name: String, backend: Arc<dyn Backend>) -> Self {
        let description = backend.description();
        Self {
            exports: vec![Export {
                name,
                description,
                backend,
            }],
        }
    }

    /// A set from a list of exports; the first is the default.
    pub fn from_exports(exports: Vec<Export>) -> Self {
        Self { exports }
    }

    /// Find an export by name; "" means the default export (the first one)
    /// unless an export is really named "" (checklist 21).
    pub fn get(&self, name: &str) -> Option<&Export> {
        self.exports.iter().find(|e| e.name == name).or_else(|| {
            if name.is_empty() {
                self.default_export()
            } else {
                None
            }
        })
    }

    /// Every export, in order (for NBD_OPT_LIST).
    pub fn list(&self) -> impl Iterator<Item = &Export> {
        self.exports.iter()
    }

    /// The export served for an empty name: the first one.
    pub fn default_export(&self) -> Option<&Export> {
        self.exports.first()
    }

    /// Number of exports.
    pub fn len(&self) -> usize {
        self.exports.len()
    }

    /// True when there is no export at all (e.g. an empty `dir=`).
    pub fn is_empty(&self) -> bool {
        self.exports.is_empty()
    }
}

/// Backend names, their "magic" parameter, and a one-line help, for
/// `nbdd --help`.
pub const BACKENDS: &[(&str, &str, &str)] = &[
    ("memory", "size", "sparse RAM disk: memory SIZE"),
    (
        "file",
        "file",
        "file or block device: file PATH [cache=none] | file dir=DIR (one export per file)",
    ),
    (
        "null",
        "size",
        "reads zeroes, discards writes: null [SIZE] (default 0)",
    ),
    (
        "pattern",
        "size",
        "read-only, every 8-byte word holds its offset: pattern SIZE",
    ),
];

/// Keys each backend accepts.
fn backend_keys(backend: &str) -> &'static [&'static str] {
    match backend {
        "memory" | "null" | "pattern" => &["size"],
        "file" => &["file", "cache", "dir"],
        _ => &[],
    }
}

/// The command-line words as `(key, value)` pairs, with the magic word
/// rewritten to `magic=word`; each pair is consumed once.
pub(crate) struct Params<'a> {
    backend: &'a str,
    pairs: Vec<(&'a str, &'a str, bool)>,
}

impl<'a> Params<'a> {
    pub(crate) fn parse(
        backend: &'a str,
        magic: &'a str,
        args: &'a [String],
    ) -> Result<Self, String> {
        let mut pairs: Vec<(&str, &str, bool)> = Vec::new();
        for (i, word) in args.iter().enumerate() {
            let (k, v) = match word.split_once('=') {
                Some(kv) => kv,
                None if i == 0 => (magic, word.as_str()),
                None => {
                    return Err(format!(
                        "{backend}: expected key=value, got '{word}' (only the first word may omit the key)"
                    ));
                }
            };
            if pairs.iter().any(|&(seen, _, _)| seen == k) && !filters::REPEATABLE.contains(&k) {
                return Err(format!("{backend}: parameter '{k}' given twice"));
            }
            pairs.push((k, v, false));
        }
        Ok(Self { backend, pairs })
    }

    /// Take the value of `key`, if given.
    pub(crate) fn take(&mut self, key: &str) -> Option<&'a str> {
        self.pairs.iter_mut().find(|p| p.0 == key).map(|p| {
            p.2 = true;
            p.1
        })
    }

    /// Take every value of `key` (one that may be repeated), in order.
    pub(crate) fn take_all(&mut self, key: &str) -> Vec<&'a str> {
        self.pairs
            .iter_mut()
            .filter(|p| p.0 == key)
            .map(|p| {
                p.2 = true;
                p.1
            })
            .collect()
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
    let magic = match (BACKENDS.iter().find(|b| b.0 == backend), ext) {
        (Some(&(_, magic, _)), _) => magic,
        (None, Some(e)) => e.magic,
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
    let mut params = Params::parse(backend, magic, args)?;
    // Filters claim their keys first, so backend keys are checked against
    // what is left.
    let stack = filters::parse_stack(filter_names, &mut params)?;
    // Below cow, checkwrite, xz and gzip nothing is ever written, so the
    // backend is opened read-only (as nbdkit does): a base file without
    // write permission works.
    let open_ro = readonly || stack.iter().any(|s| s.read_only_below);
    let exports = match ext {
        Some(e) if !BACKENDS.iter().any(|b| b.0 == backend) => {
            params.check_known(e.keys)?;
            let kv: Vec<(String, String)> = e
                .keys
                .iter()
                .filter_map(|&k| params.take(k).map(|v| (k.to_owned(), v.to_owned())))
                .collect();
            let b = (e.open)(&kv, open_ro)?;
            vec![(None, b.description(), b)]
        }
        _ => {
            let keys = backend_keys(backend);
            params.check_known(keys)?;
            make_backend(backend, &mut params, open_ro, keys)?
        }
    };
    params.finish()?;
    let mut set = Vec::with_capacity(exports.len());
    for (name, description, inner) in exports {
        let name = name.unwrap_or_else(|| export_name.to_owned());
        let mut b = filters::apply(&stack, inner)?;
        // -r makes the whole stack read-only, whatever a filter (or the
        // backend) would allow, so it goes outermost.
        if readonly && !b.caps().contains(crate::Caps::READ_ONLY) {
            b = Arc::new(filters::ReadOnly::new(b));
        }
        set.push(Export {
            name,
            description,
            backend: b,
        });
    }
    Ok(ExportSet::from_exports(set))
}

/// `(export name or None for -e's, description, backend)` for each export.
type Built = Vec<(Option<String>, Option<String>, Arc<dyn Backend>)>;

fn make_backend(
    backend: &str,
    p: &mut Params<'_>,
    readonly: bool,
    keys: &[&str],
) -> Result<Built, String> {
    debug_assert!(!keys.is_empty());
    let one = |b: Arc<dyn Backend>, d: String| Ok(vec![(None, Some(d), b)]);
    let io = |e: std::io::Error| format!("{backend}: {e}");
    match backend {
        "memory" | "pattern" | "null" => {
            let size = p.take_size(backend, "size")?;
            let size = match (backend, size) {
                ("null", None) => 0,
                (_, Some(s)) => s,
                (_, None) => {
                    return Err(format!(
                        "{backend}: missing parameter size (e.g. {backend} 1G)"
                    ));
                }
            };
            let (b, what): (Arc<dyn Backend>, _) = match backend {
                "memory" => (Arc::new(MemoryBackend::new(size).map_err(io)?), "RAM disk"),
                "null" => (Arc::new(NullBackend::new(size).map_err(io)?), "null device"),
                _ => (
                    Arc::new(PatternBackend::new(size).map_err(io)?),
                    "offset pattern",
                ),
            };
            one(b, format!("{what}, {size} bytes"))
        }
        "file" => {
            let cache_none = match p.take("cache") {
                None | Some("default") | Some("writeback") => false,
                Some("none") => true,
                Some(other) => {
                    return Err(format!(
                        "file: cache: expected 'none' or 'default', got '{other}'"
                    ));
                }
            };
            match (p.take("file"), p.take("dir")) {
                (Some(path), None) => {
                    let b = FileBackend::open(path, readonly, cache_none)
                        .map_err(|e| format!("file: {path}: {e}"))?;
                    one(Arc::new(b), path.to_owned())
                }
                (None, Some(dir)) => {
                    let files = open_dir(dir, readonly, cache_none)
                        .map_err(|e| format!("file: dir: {dir}: {e}"))?;
                    if files.is_empty() {
                        return Err(format!("file: dir: {dir}: no regular files to export"));
                    }
                    Ok(files
                        .into_iter()
                        .map(|(name, b)| {
                            let d = b.path().display().to_string();
                            (Some(name), Some(d), Arc::new(b) as Arc<dyn Backend>)
                        })
                        .collect())
                }
                (Some(_), Some(_)) => Err("file: give file= or dir=, not both".to_owned()),
                (None, None) => Err("file: missing parameter file (e.g. file disk.img)".to_owned()),
            }
        }
        _ => Err(format!("unknown backend '{backend}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(set.get("other").is_none());
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
        assert!(err.ends_with("pattern, ext)"), "{err}");
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
            assert!(!help.is_empty() && !magic.is_empty());
            if name != "file" {
                build(name, &words("4k"), "", false).unwrap();
            }
        }
    }
}
