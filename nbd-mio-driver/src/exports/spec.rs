//! One export as the user described it: `--add-export NAME=SPEC`, where
//! SPEC is a small command line of its own, `[OPTIONS] BACKEND [KEY=VALUE
//! ...]`, split like a shell would split it.

use nbd_backends::ExportPolicy;

/// An export to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSpec {
    /// Its name.
    pub name: String,
    /// Backend name.
    pub backend: String,
    /// Backend and filter parameters, as on the command line.
    pub args: Vec<String>,
    /// Filters, outermost first.
    pub filters: Vec<String>,
    /// Served read-only.
    pub readonly: bool,
    /// Description, resize permission, TLS requirement.
    pub policy: ExportPolicy,
    /// Where it was defined, for error messages (`--add-export 'x'`).
    pub origin: String,
}

/// Parses one `--add-export` value.
///
/// # Errors
///
/// One line naming the export and the word at fault.
pub fn parse_add_export(value: &str) -> Result<ExportSpec, String> {
    let (name, spec) = value.split_once('=').ok_or_else(|| {
        format!("--add-export: expected NAME=SPEC (e.g. 'scratch=memory 1G'), got '{value}'")
    })?;
    let origin = format!("--add-export '{name}'");
    let words = split_words(spec).map_err(|e| format!("{origin}: {e}"))?;
    let mut s = ExportSpec {
        name: name.to_owned(),
        backend: String::new(),
        args: Vec::new(),
        filters: Vec::new(),
        readonly: false,
        policy: ExportPolicy::default(),
        origin,
    };
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        if !s.backend.is_empty() {
            s.args.push(w);
            continue;
        }
        let (opt, inline) = match w.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o.to_owned(), Some(v.to_owned())),
            _ => (w.clone(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| words.next())
                .ok_or_else(|| format!("{}: {what} needs a value", s.origin))
        };
        match opt.as_str() {
            "-r" | "--readonly" | "--read-only" => s.readonly = true,
            "--allow-resize" => s.policy.allow_resize = true,
            "--require-tls" => s.policy.tls_required = true,
            "--filter" => s.filters.push(value("--filter")?),
            "--description" => s.policy.description = Some(value("--description")?),
            o if o.starts_with('-') => {
                return Err(format!(
                    "{}: unknown export option '{o}' (export options: -r, --filter=NAME, \
                     --description=TEXT, --allow-resize, --require-tls)",
                    s.origin
                ));
            }
            _ => s.backend = w,
        }
    }
    if s.backend.is_empty() {
        return Err(format!(
            "{}: no backend given (e.g. '{name}=memory 1G')",
            s.origin
        ));
    }
    check(&s)?;
    Ok(s)
}

/// Rules every export obeys, whichever way it was given.
pub fn check(s: &ExportSpec) -> Result<(), String> {
    if s.policy.allow_resize && s.readonly {
        return Err(format!(
            "{}: a read-only export cannot allow resize",
            s.origin
        ));
    }
    if s.name.len() > nbd_proto::wire::MAX_STRING_LEN {
        return Err(format!("{}: export name longer than 4096 bytes", s.origin));
    }
    Ok(())
}

/// Splits `s` into words as `sh` would for plain words: blanks separate,
/// `'...'` and `"..."` quote, a backslash escapes the next character.
/// No expansions: the value was already through the user's shell once.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(cur.take()),
            '\'' | '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => w.extend(chars.next()),
                        Some(x) => w.push(x),
                        None => return Err(format!("unterminated {c} quote")),
                    }
                }
            }
            '\\' => cur.get_or_insert_with(String::new).extend(chars.next()),
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_sh() {
        assert_eq!(
            split_words(r#"file "my disk.img"  a='b c' d\ e"#).unwrap(),
            ["file", "my disk.img", "a=b c", "d e"]
        );
        assert_eq!(split_words("x ''").unwrap(), ["x", ""]);
        assert!(split_words("'open").unwrap_err().contains("unterminated"));
    }

    #[test]
    fn spec_options_then_backend() {
        let s =
            parse_add_export("golden=-r --filter=cow --description 'Golden image' file disk.img")
                .unwrap();
        assert_eq!(s.name, "golden");
        assert!(s.readonly);
        assert_eq!(s.filters, ["cow"]);
        assert_eq!(s.policy.description.as_deref(), Some("Golden image"));
        assert_eq!(
            (s.backend.as_str(), s.args.as_slice()),
            ("file", &["disk.img".to_owned()][..])
        );
        let s = parse_add_export("s=--allow-resize --require-tls memory 1G -r").unwrap();
        assert!(s.policy.allow_resize && s.policy.tls_required && !s.readonly);
        assert_eq!(
            s.args,
            ["1G", "-r"],
            "after the backend every word is a parameter"
        );
    }

    #[test]
    fn spec_errors_name_the_export() {
        for (v, needle) in [
            ("nameonly", "NAME=SPEC"),
            ("a=", "no backend"),
            ("a=--bogus memory", "'--bogus'"),
            ("a=--filter", "needs a value"),
            ("a=-r --allow-resize memory 1M", "cannot allow resize"),
        ] {
            let e = parse_add_export(v).unwrap_err();
            assert!(e.contains(needle), "{v}: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
