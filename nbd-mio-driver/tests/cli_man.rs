//! nbdd(1) is generated from the option table that also makes `--help`:
//! docs/nbdd.1 must be exactly what the table renders (`cargo xtask man`
//! regenerates it), and every option `--help` shows must be in it.

use std::process::Command;

const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/nbdd.1");

#[test]
fn committed_man_page_is_generated_from_the_option_table() {
    let page = nbd_mio_driver::man::render();
    if std::env::var_os("NBDD_WRITE_MAN").is_some() {
        std::fs::write(PAGE, &page).expect("write docs/nbdd.1");
    }
    let committed = std::fs::read_to_string(PAGE).unwrap_or_default();
    assert!(
        committed == page,
        "docs/nbdd.1 is stale or missing: run `cargo xtask man`"
    );
}

#[test]
fn every_option_of_help_is_in_the_man_page() {
    let out = Command::new(env!("CARGO_BIN_EXE_nbdd"))
        .arg("--help")
        .output()
        .expect("run nbdd --help");
    let help = String::from_utf8(out.stdout).expect("utf-8");
    let page = nbd_mio_driver::man::render().replace("\\-", "-");
    let mut seen = 0;
    for word in help.split_whitespace() {
        if let Some(long) = word.strip_prefix("--") {
            let name: String = long
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() && help.contains(&format!("  --{name}"))
                || help.contains(&format!(", --{name}"))
            {
                assert!(
                    page.contains(&format!("--{name}")),
                    "--{name} is in --help but not in nbdd(1)"
                );
                seen += 1;
            }
        }
    }
    assert!(seen > 40, "only {seen} options found in --help");
    // The page renders with man(1)'s formatter without warnings.
    if let Ok(o) = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z", PAGE])
        .output()
    {
        assert!(
            o.stderr.is_empty(),
            "groff: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
