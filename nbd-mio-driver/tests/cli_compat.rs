//! Runs every row of docs/NBDKIT-COMPAT.md against the real `nbdd`: the
//! table is parsed here, so the document and the binary cannot drift.
//! Each row's check is `KIND ARGS => EXPECT ...` (the document explains
//! the kinds and expectations). All rows run; the test fails with the list
//! of rows that did not hold.

mod common;

#[path = "cli_compat/env.rs"]
mod env;
#[path = "cli_compat/expect.rs"]
mod expect;
#[path = "cli_compat/table.rs"]
mod table;

#[test]
fn every_row_of_the_compat_table_holds() {
    common::require_tool("nbdinfo", "libnbd-bin");
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/NBDKIT-COMPAT.md"
    ))
    .expect("read docs/NBDKIT-COMPAT.md");
    let rows = table::rows(&doc);
    assert!(rows.len() > 60, "only {} rows parsed", rows.len());
    let env = env::Env::new();
    let mut failed = Vec::new();
    for row in &rows {
        if let Err(e) = expect::run(&env, &row.check) {
            failed.push(format!(
                "line {}: {}\n    {}",
                row.line,
                row.check,
                e.replace('\n', "\n    ")
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} rows failed:\n{}",
        failed.len(),
        rows.len(),
        failed.join("\n")
    );
}

#[test]
fn every_option_of_the_table_is_in_the_document() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/NBDKIT-COMPAT.md"
    ))
    .expect("read docs/NBDKIT-COMPAT.md");
    for o in nbd_mio_driver::cli::table::options() {
        let named = ['`', '=', ' ']
            .iter()
            .any(|end| doc.contains(&format!("--{}{end}", o.long)));
        assert!(named, "docs/NBDKIT-COMPAT.md lacks --{}", o.long);
    }
}

/// The Filters table has a row for every filter nbdd has, and every key a
/// filter takes is used by one of that filter's checks (so it runs).
#[test]
fn every_filter_and_key_has_a_row() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/NBDKIT-COMPAT.md"
    ))
    .expect("read docs/NBDKIT-COMPAT.md");
    let rows = table::rows(&doc);
    let mut missing = Vec::new();
    for d in nbd_backends::filters::help::FILTER_DOCS {
        let flag = format!("--filter={} ", d.name);
        let checks: Vec<_> = rows
            .iter()
            .filter(|r| r.check.contains(&flag))
            .map(|r| r.check.as_str())
            .collect();
        if checks.is_empty() {
            missing.push(format!("{}: no row", d.name));
            continue;
        }
        for k in d.keys() {
            let used = checks
                .iter()
                .any(|c| c.contains(&format!(" {k}=")) || c.contains(&format!("'{k}=")));
            if !used {
                missing.push(format!("{}: {k}= in no check", d.name));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/NBDKIT-COMPAT.md:\n{}",
        missing.join("\n")
    );
}
