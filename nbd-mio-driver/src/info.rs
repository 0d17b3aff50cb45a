//! What nbdd says about itself without serving: `--help` (also `BACKEND
//! --help`), `--dump-config`, `BACKEND --dump-plugin`, `--long-options`
//! and `--short-options`.

use crate::cli::{self, table};

/// Every backend: `(name, magic key, one-line help)`, built-in ones first.
fn backends() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    let proxy = crate::proxy::BACKEND;
    nbd_backends::BACKENDS
        .iter()
        .copied()
        .chain([(proxy.name, proxy.magic, proxy.help)])
}

/// `--help`: usage, options, backends and filters.
#[must_use]
pub fn help() -> String {
    let mut s = cli::help_text();
    s.push_str(
        "\nBackends (the first bare word fills the key in brackets; BACKEND --help for more):\n",
    );
    for (name, magic, help) in backends() {
        s.push_str(&format!("  {name:<10} [{magic}]  {help}\n"));
    }
    s.push_str("\nFilters (--filter=NAME, parameters as KEY=VALUE):\n");
    for (name, params, help) in nbd_backends::filters::FILTERS {
        s.push_str(&format!("  {name:<10} {params}\n             {help}\n"));
    }
    s
}

/// `BACKEND --help` (with `--filter`s): the help of each.
///
/// # Errors
///
/// An unknown backend or filter, named.
pub fn backend_help(backend: &str, filters: &[String]) -> Result<String, String> {
    let (name, magic, help) = backends()
        .find(|b| b.0 == backend)
        .ok_or_else(|| unknown_backend(backend))?;
    // The catalogue's full help (every parameter) where the backend has
    // one; the one-line row otherwise (the `nbd` proxy lives in the driver).
    let usage = if magic.is_empty() {
        format!("  nbdd [OPTIONS] {name} [KEY=VALUE ...]\n")
    } else {
        format!("  nbdd [OPTIONS] {name} [{magic}=]VALUE [KEY=VALUE ...]\n")
    };
    let mut s = match nbd_backends::plugin_help(name) {
        Some(full) => format!("{full}\nUsage:\n{usage}"),
        None => format!("{name}: {help}\n{usage}"),
    };
    for f in filters {
        let (fname, params, fhelp) = nbd_backends::filters::FILTERS
            .iter()
            .find(|r| r.0 == f.as_str())
            .ok_or_else(|| format!("--filter={f}: unknown filter"))?;
        let params = if params.is_empty() { "(none)" } else { params };
        s.push_str(&format!(
            "\nfilter {fname}: {fhelp}\n  parameters: {params}\n"
        ));
    }
    Ok(s)
}

fn unknown_backend(name: &str) -> String {
    let known: Vec<_> = backends().map(|b| b.0).collect();
    format!("unknown backend '{name}' (known: {})", known.join(", "))
}

/// `--dump-config`: facts about this build, as `key=value` lines with
/// nbdkit's key names where they apply.
#[must_use]
pub fn dump_config() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version.split('.');
    let major = parts.next().unwrap_or("0");
    let minor = parts.next().unwrap_or("0");
    let binary = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let names = |v: Vec<&str>| v.join(",");
    let lines = [
        ("backends", names(backends().map(|b| b.0).collect())),
        ("binary", binary),
        (
            "filters",
            names(nbd_backends::filters::FILTERS.iter().map(|f| f.0).collect()),
        ),
        ("host_cpu", std::env::consts::ARCH.to_owned()),
        ("host_os", std::env::consts::OS.to_owned()),
        ("is_tls", "yes".to_owned()),
        ("name", "nbdd".to_owned()),
        (
            "root_tls_certificates_dir",
            crate::tlsdefault::ROOT_DIR.to_owned(),
        ),
        ("version", version.to_owned()),
        ("version_major", major.to_owned()),
        ("version_minor", minor.to_owned()),
    ];
    lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// `BACKEND --dump-plugin`.
///
/// # Errors
///
/// An unknown or missing backend.
pub fn dump_plugin(backend: &str) -> Result<String, String> {
    if backend.is_empty() {
        return Err("--dump-plugin: which backend? (nbdd memory --dump-plugin)".to_owned());
    }
    let (name, magic, help) = backends()
        .find(|b| b.0 == backend)
        .ok_or_else(|| unknown_backend(backend))?;
    Ok(format!(
        "name={name}\nversion={}\nmagic_config_key={magic}\nthread_model=parallel\ndescription={help}\n",
        env!("CARGO_PKG_VERSION")
    ))
}

/// `--long-options` / `--short-options`: one per line, as nbdkit's bash
/// completion reads them.
#[must_use]
pub fn list_options(long: bool) -> String {
    let mut out = String::new();
    for o in table::options() {
        if long {
            for name in std::iter::once(&o.long).chain(o.aliases) {
                out.push_str(&format!("--{name}\n"));
            }
        } else if let Some(c) = o.short {
            out.push_str(&format!("-{c}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_config_has_nbdkit_keys() {
        let d = dump_config();
        for key in [
            "version=",
            "version_major=",
            "version_minor=",
            "host_os=",
            "is_tls=yes",
        ] {
            assert!(d.lines().any(|l| l.starts_with(key)), "{key}: {d}");
        }
    }

    #[test]
    fn backend_help_and_dump_plugin() {
        assert!(
            backend_help("memory", &[])
                .unwrap()
                .contains("[size=]VALUE")
        );
        assert!(
            backend_help("memory", &["cow".into()])
                .unwrap()
                .contains("filter cow")
        );
        assert!(
            backend_help("disk", &[])
                .unwrap_err()
                .contains("unknown backend 'disk'")
        );
        assert!(
            backend_help("memory", &["zz".into()])
                .unwrap_err()
                .contains("--filter=zz")
        );
        assert!(
            dump_plugin("file")
                .unwrap()
                .contains("magic_config_key=file")
        );
    }

    #[test]
    fn option_lists() {
        let l = list_options(true);
        assert!(l.contains("--read-only\n") && l.contains("--no-fork\n"));
        assert!(list_options(false).lines().all(|l| l.len() == 2));
    }
}
