//! nbdd(1), rendered in roff from the option table that also drives the
//! parser and `--help`, so the three cannot disagree. `cargo xtask man`
//! writes it to docs/nbdd.1, and tests/cli_man.rs fails when the committed
//! page is not what this renders.

use crate::cli::table::{ABOUT, SECTIONS, USAGE};

/// Escapes text for roff: backslashes, and a leading `.` or `'`.
fn esc(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// The whole page.
#[must_use]
pub fn render() -> String {
    let mut m = String::new();
    m.push_str(&format!(
        ".TH NBDD 1 \"\" \"nbdd {}\" \"User Commands\"\n",
        env!("CARGO_PKG_VERSION")
    ));
    m.push_str(&format!(".SH NAME\nnbdd \\- {}\n", esc(ABOUT)));
    m.push_str(".SH SYNOPSIS\n");
    for u in USAGE {
        m.push_str(&format!(".nf\n{}\n.fi\n", esc(u)));
    }
    m.push_str(&format!(".SH DESCRIPTION\n{}\n", esc(DESCRIPTION)));
    for sec in SECTIONS {
        m.push_str(&format!(".SH {}\n", esc(&sec.title.to_uppercase())));
        for o in sec.options {
            m.push_str(&format!(".TP\n.B {}\n", esc(&o.synopsis())));
            let mut text = o.help.to_owned();
            if !o.aliases.is_empty() {
                let a: Vec<String> = o.aliases.iter().map(|a| format!("--{a}")).collect();
                text.push_str(&format!(" (also {})", a.join(", ")));
            }
            text.push('.');
            if !o.more.is_empty() {
                text.push(' ');
                text.push_str(o.more);
            }
            m.push_str(&format!("{}\n", esc(&text)));
        }
    }
    m.push_str(&format!(".SH EXAMPLES\n{}", examples()));
    m.push_str(".SH SEE ALSO\nnbdkit(1), qemu\\-nbd(8), nbdinfo(1), docs/NBDKIT\\-COMPAT.md\n");
    m
}

const DESCRIPTION: &str = "nbdd serves a RAM disk, a file, a directory of images or another NBD \
server to any NBD client. It takes nbdkit's command line: server options anywhere, then a \
backend and its KEY=VALUE parameters; a bare first parameter fills the backend's main key. \
Several exports with different backends come from --add-export or --config. Without -f it \
forks into the background once it listens; start-up errors still reach the terminal with \
exit status 1.";

fn examples() -> String {
    [
        "nbdd -f memory 1G",
        "nbdd -f -r -U /tmp/nbd.sock file disk.img",
        "nbdd --add-export 'scratch=memory 1G' --add-export 'golden=-r file disk.img'",
        "nbdd memory 1G --run 'qemu-img convert -n disk.qcow2 \"$uri\"'",
    ]
    .iter()
    .map(|e| format!(".PP\n.nf\n{}\n.fi\n", esc(e)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_names_every_option_and_escapes() {
        let m = render();
        for sec in SECTIONS {
            for o in sec.options {
                assert!(m.contains(&esc(&format!("--{}", o.long))), "{}", o.long);
            }
        }
        assert!(m.starts_with(".TH NBDD 1"));
        assert_eq!(esc(".x-y\\"), "\\&.x\\-y\\e");
    }
}
