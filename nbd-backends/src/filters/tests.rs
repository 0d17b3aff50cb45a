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
