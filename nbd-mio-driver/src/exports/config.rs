//! `--config FILE`: exports described in TOML.
//!
//! ```toml
//! default = "golden"            # what a client asking for "" gets
//!
//! [[export]]
//! name = "scratch"
//! backend = "memory"
//! args = ["1G"]                 # words as on the command line
//! resize = true
//!
//! [[export]]
//! name = "golden"
//! backend = "file"
//! params = { file = "disk.img" }
//! filters = ["cow"]
//! description = "Golden image"
//! readonly = false
//! require-tls = true
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use nbd_backends::ExportPolicy;
use serde::Deserialize;

use super::spec::{ExportSpec, check};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default: Option<String>,
    #[serde(default)]
    export: Vec<Entry>,
}

/// One `[[export]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Entry {
    name: String,
    backend: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    #[serde(default)]
    filters: Vec<String>,
    #[serde(default)]
    readonly: bool,
    description: Option<String>,
    #[serde(default)]
    resize: bool,
    #[serde(default)]
    require_tls: bool,
}

/// The exports of a config file and its default export, if named.
pub type Loaded = (Vec<ExportSpec>, Option<String>);

/// Reads and checks `path`.
///
/// # Errors
///
/// One line: `FILE:LINE: what is wrong`.
pub fn load(path: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "--config: {}: {}",
            path.display(),
            nbd_backends::plain_error(&e)
        )
    })?;
    parse(&path.display().to_string(), &text)
}

/// Parses config `text`; `name` is the file name for messages.
///
/// # Errors
///
/// As [`load`].
pub fn parse(name: &str, text: &str) -> Result<Loaded, String> {
    let file: File = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text.get(..s.start).unwrap_or(text).matches('\n').count() + 1);
        let msg = e.message().replace('\n', " ");
        match line {
            Some(l) => format!("{name}:{l}: {}", msg.trim()),
            None => format!("{name}: {}", msg.trim()),
        }
    })?;
    if file.export.is_empty() {
        return Err(format!("{name}: no [[export]] table"));
    }
    let specs = file
        .export
        .into_iter()
        .map(|e| entry(name, e))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((specs, file.default))
}

fn entry(file: &str, e: Entry) -> Result<ExportSpec, String> {
    let origin = format!("{file}: export '{}'", e.name);
    let mut args = e.args;
    for (k, v) in e.params {
        let v = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                return Err(format!(
                    "{origin}: params.{k}: expected a string, number or boolean, got {}",
                    other.type_str()
                ));
            }
        };
        args.push(format!("{k}={v}"));
    }
    let s = ExportSpec {
        name: e.name,
        backend: e.backend,
        args,
        filters: e.filters,
        readonly: e.readonly,
        policy: ExportPolicy {
            description: e.description,
            allow_resize: e.resize,
            tls_required: e.require_tls,
        },
        origin,
    };
    check(&s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses() {
        let text = r#"
default = "golden"
[[export]]
name = "scratch"
backend = "memory"
args = ["1G"]
resize = true
[[export]]
name = "golden"
backend = "file"
params = { file = "disk.img", cache = "none" }
filters = ["cow"]
description = "Golden image"
require-tls = true
"#;
        let (specs, default) = parse("x.toml", text).unwrap();
        assert_eq!(default.as_deref(), Some("golden"));
        assert_eq!(specs[0].args, ["1G"]);
        assert!(specs[0].policy.allow_resize);
        assert_eq!(specs[1].args, ["cache=none", "file=disk.img"]);
        assert!(specs[1].policy.tls_required && !specs[1].readonly);
        assert_eq!(specs[1].filters, ["cow"]);
    }

    #[test]
    fn errors_are_one_line_with_file_and_line() {
        let cases = [
            (
                "[[export]]\nname = \"a\"\nbackend = \"memory\"\nresise = true\n",
                "x.toml:4:",
            ),
            ("[[export]]\nname = \"a\"\n", "backend"),
            ("default = 1\n", "x.toml:1:"),
            ("", "no [[export]]"),
            (
                "[[export]]\nname = \"a\"\nbackend = \"memory\"\nparams = { size = [1] }\n",
                "params.size",
            ),
            (
                "[[export]]\nname = \"a\"\nbackend = \"m\"\nreadonly = true\nresize = true\n",
                "export 'a': a read-only export cannot allow resize",
            ),
        ];
        for (text, needle) in cases {
            let e = parse("x.toml", text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
