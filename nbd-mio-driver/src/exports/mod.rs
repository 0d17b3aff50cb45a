//! The exports the command line asks for: one BACKEND (nbdkit's form), or
//! several from `--add-export` and `--config`, each built by nbd-backends'
//! registry with its own filters, then given its policy (description,
//! RESIZE permission, TLS requirement).

pub mod config;
pub mod spec;

use nbd_backends::{Export, ExportPolicy, ExportSet, build_with_filters_ext};

use crate::cli::{Config, TlsMode};
pub use spec::ExportSpec;

/// Backends defined in the driver (the `nbd` proxy).
fn extra() -> [nbd_backends::ExtBackend; 1] {
    [crate::proxy::BACKEND]
}

/// Builds every export `cfg` describes.
///
/// # Errors
///
/// One line naming the export, option or parameter at fault.
pub fn build(cfg: &Config) -> Result<ExportSet, String> {
    let set = if cfg.multi_export() {
        build_many(cfg)?
    } else {
        build_one(cfg)?
    };
    if cfg.tls == TlsMode::Off
        && let Some(e) = set.list().find(|e| e.tls_required)
    {
        return Err(format!(
            "export '{}' requires TLS, but TLS is off (add --tls=on and credentials)",
            e.name
        ));
    }
    Ok(set)
}

/// nbdkit's form: `nbdd [--filter F]... BACKEND ARGS`.
fn build_one(cfg: &Config) -> Result<ExportSet, String> {
    let set = build_with_filters_ext(
        &cfg.backend,
        &cfg.backend_args,
        &cfg.filters,
        &cfg.export_name,
        cfg.readonly,
        &extra(),
    )
    .map_err(|e| explain(&e, &cfg.backend, &cfg.filters))?;
    let any_name = set.serves_any_name();
    let policy = ExportPolicy {
        description: cfg.description.clone(),
        allow_resize: cfg.allow_resize,
        tls_required: false,
    };
    warn_resize(cfg.allow_resize, &set, "--allow-resize");
    let set = with_policy(set, &policy);
    Ok(if any_name { set.serve_any_name() } else { set })
}

fn with_policy(set: ExportSet, policy: &ExportPolicy) -> ExportSet {
    let exports = set.into_exports().into_iter();
    ExportSet::from_exports(exports.map(|e| e.with_policy(policy)).collect())
}

/// An allowed resize the backend cannot do deserves a word.
fn warn_resize(asked: bool, set: &ExportSet, what: &str) {
    if asked
        && let Some(e) = set
            .list()
            .find(|e| !e.backend.caps().contains(nbd_backends::Caps::RESIZE))
    {
        log::warn!(
            "{what}: export '{}' cannot be resized by its backend",
            e.name
        );
    }
}

/// `--config` exports, then `--add-export` ones, in that order.
fn build_many(cfg: &Config) -> Result<ExportSet, String> {
    let (mut specs, mut default) = match &cfg.config_file {
        Some(path) => config::load(path)?,
        None => (Vec::new(), None),
    };
    for v in &cfg.add_exports {
        specs.push(spec::parse_add_export(v)?);
    }
    if cfg.default_export.is_some() {
        default.clone_from(&cfg.default_export);
    }
    let mut exports: Vec<Export> = Vec::with_capacity(specs.len());
    for s in &specs {
        if exports.iter().any(|e| e.name == s.name) {
            return Err(format!("{}: export name given twice", s.origin));
        }
        exports.push(build_spec(s, cfg.readonly)?);
    }
    let set = ExportSet::from_exports(exports);
    match default {
        Some(d) => set.with_default(&d),
        None => Ok(set),
    }
}

fn build_spec(s: &ExportSpec, readonly: bool) -> Result<Export, String> {
    let set = build_with_filters_ext(
        &s.backend,
        &s.args,
        &s.filters,
        &s.name,
        readonly || s.readonly,
        &extra(),
    )
    .map_err(|e| format!("{}: {}", s.origin, explain(&e, &s.backend, &s.filters)))?;
    warn_resize(s.policy.allow_resize, &set, &s.origin);
    let mut exports = set.into_exports();
    if exports.len() != 1 {
        return Err(format!(
            "{}: the backend gives {} exports (dir=?); an export needs exactly one",
            s.origin,
            exports.len()
        ));
    }
    let e = exports.remove(0);
    Ok(e.with_policy(&s.policy))
}

/// Rewords a registry message so it names the option at fault: a filter's
/// message gets `--filter=NAME:` (`error: error-trim: ...` read as a
/// stutter after `nbdd:`), and a key no one took is not blamed on the
/// backend alone when filters were given too.
#[must_use]
pub fn explain(msg: &str, backend: &str, filters: &[String]) -> String {
    if let Some(f) = filters
        .iter()
        .find(|f| f.as_str() != backend && msg.starts_with(&format!("{f}: ")))
    {
        return format!("--filter={f}: {}", &msg[f.len() + 2..]);
    }
    let suffix = format!(" for backend {backend}");
    if !filters.is_empty()
        && msg.starts_with("unknown parameter ")
        && let Some(head) = msg.strip_suffix(&suffix)
    {
        return format!(
            "{head}: not a parameter of backend {backend} nor of filter {}",
            filters.join(", ")
        );
    }
    msg.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn messages_name_the_filter() {
        assert_eq!(
            explain(
                "error: error-trim: invalid error 'EFOO'",
                "memory",
                &f(&["error"])
            ),
            "--filter=error: error-trim: invalid error 'EFOO'"
        );
        assert_eq!(
            explain(
                "unknown parameter 'cow-block-size' for backend memory",
                "memory",
                &f(&["cow"])
            ),
            "unknown parameter 'cow-block-size': not a parameter of backend memory nor of filter cow"
        );
        assert_eq!(
            explain("memory: size: bad", "memory", &[]),
            "memory: size: bad"
        );
    }
}
