//! Command-line options of `cargo xtask bench`.

use std::path::PathBuf;

/// The sections (tables) a run can hold, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// `memory 1G`: nbdd variants vs nbdkit, plus the raw-socket reference.
    Memory,
    /// A 1 GiB raw file on tmpfs: nbdd `file` vs nbdkit `file` vs qemu-nbd.
    File,
    /// `memory 1G` over X.509 TLS: rustls vs GnuTLS, fio jobs only.
    Tls,
    /// `null 1G`, four connections: nbdd `-t 1` vs `-t 2` vs nbdkit.
    Scaling,
}

impl Section {
    pub const ALL: [Self; 4] = [Self::Memory, Self::File, Self::Tls, Self::Scaling];

    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "memory" | "plain" => Ok(Self::Memory),
            "file" => Ok(Self::File),
            "tls" | "x509" => Ok(Self::Tls),
            "scaling" | "threads" => Ok(Self::Scaling),
            _ => Err(format!(
                "unknown section {s:?} (memory, file, tls, scaling)"
            )),
        }
    }
}

/// One nbdd configuration benchmarked as its own server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    /// Its name in tables and the chart (`nbdd`, `nbdd-t2`, ...).
    pub name: String,
    /// Extra nbdd flags, placed before the backend.
    pub args: Vec<String>,
}

/// Parsed options.
#[derive(Debug)]
pub struct Options {
    pub repeats: usize,
    /// Seconds per fio job (and for the raw-socket reference).
    pub secs: u32,
    pub quick: bool,
    pub dry_run: bool,
    /// Also run the criterion codec benches (slow).
    pub codec: bool,
    pub rbd: bool,
    pub sections: Vec<Section>,
    pub variants: Vec<Variant>,
    /// `--nbdd-args`: flags every nbdd gets (also the scaling table's).
    pub common: Vec<String>,
    /// A prebuilt nbdd to time instead of building the release binary.
    pub nbdd: Option<PathBuf>,
    /// Where BENCHMARKS.md and bench.svg go; `None`: see [`Options::is_full`].
    pub out: Option<PathBuf>,
    /// The arguments as given, for the report.
    pub argv: Vec<String>,
}

impl Options {
    /// A run that may replace the committed BENCHMARKS.md and chart: every
    /// section, at least three repeats, not `--quick`.
    pub fn is_full(&self) -> bool {
        !self.quick && self.repeats >= 3 && self.sections.len() == Section::ALL.len()
    }

    pub fn has(&self, s: Section) -> bool {
        self.sections.contains(&s)
    }
}

/// Splits a flag string on whitespace (no quoting: nbdd flags need none).
fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// `NAME=FLAGS`; the name must be usable in a file name.
fn parse_variant(s: &str) -> Result<Variant, String> {
    let (name, args) = s
        .split_once('=')
        .ok_or_else(|| format!("--variant {s:?}: expected NAME=FLAGS, e.g. 'nbdd-t2=-t 2'"))?;
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(format!(
            "--variant {s:?}: the name may hold only letters, digits, '-', '_', '.'"
        ));
    }
    Ok(Variant {
        name: name.to_owned(),
        args: words(args),
    })
}

fn number<T: std::str::FromStr>(flag: &str, v: Option<&String>) -> Result<T, String> {
    v.and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{flag} needs a number"))
}

/// Parses the arguments after `bench`. A leading `tls` (the older
/// `bench tls [--runs N]` form) means `--only tls`.
///
/// # Errors
/// On an unknown option, a bad value or a duplicate variant name.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        repeats: 3,
        secs: 4,
        quick: false,
        dry_run: false,
        codec: false,
        rbd: false,
        sections: Section::ALL.to_vec(),
        common: Vec::new(),
        variants: Vec::new(),
        nbdd: None,
        out: None,
        argv: args.to_vec(),
    };
    let mut common: Vec<String> = Vec::new();
    let mut repeats = None;
    let mut secs = None;
    let mut it = args.iter().peekable();
    if it.peek().is_some_and(|a| *a == "tls") {
        it.next();
        o.sections = vec![Section::Tls];
    }
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned());
        match flag {
            "--quick" => o.quick = true,
            "--dry-run" => o.dry_run = true,
            "--codec" => o.codec = true,
            "--rbd" => o.rbd = true,
            "--repeats" | "--runs" => repeats = Some(number::<usize>(flag, value().as_ref())?),
            "--secs" => secs = Some(number::<u32>(flag, value().as_ref())?),
            "--nbdd-args" => common.extend(words(&value().ok_or("--nbdd-args needs flags")?)),
            "--variant" => o.variants.push(parse_variant(
                &value().ok_or("--variant needs NAME=FLAGS")?,
            )?),
            "--nbdd" => o.nbdd = Some(value().ok_or("--nbdd needs a path")?.into()),
            "--out" => o.out = Some(value().ok_or("--out needs a directory")?.into()),
            "--only" => {
                let v = value().ok_or("--only needs sections")?;
                o.sections = v.split(',').map(Section::parse).collect::<Result<_, _>>()?;
            }
            _ => return Err(format!("bench: unknown option {a:?}")),
        }
    }
    if o.quick {
        o.repeats = 1;
        o.secs = 1;
    }
    o.repeats = repeats.unwrap_or(o.repeats);
    o.secs = secs.unwrap_or(o.secs);
    if o.repeats == 0 || o.secs == 0 {
        return Err("--repeats and --secs must be at least 1".into());
    }
    if o.variants.is_empty() {
        o.variants.push(Variant {
            name: "nbdd".into(),
            args: Vec::new(),
        });
    }
    for v in &mut o.variants {
        v.args.extend(common.iter().cloned());
    }
    o.common = common;
    for (i, v) in o.variants.iter().enumerate() {
        if o.variants[..i].iter().any(|w| w.name == v.name) {
            return Err(format!("--variant name {:?} given twice", v.name));
        }
        if ["nbdkit", "qemu-nbd"].contains(&v.name.as_str()) {
            return Err(format!(
                "--variant name {:?} is taken by a reference server",
                v.name
            ));
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options, String> {
        parse(&args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_are_a_full_run_of_one_nbdd() {
        let o = p(&[]).unwrap();
        assert_eq!((o.repeats, o.secs), (3, 4));
        assert!(o.is_full());
        assert_eq!(o.variants.len(), 1);
        assert_eq!(o.variants[0].name, "nbdd");
        assert!(o.variants[0].args.is_empty());
    }

    #[test]
    fn quick_is_one_short_repeat_and_not_full() {
        let o = p(&["--quick", "--dry-run"]).unwrap();
        assert_eq!((o.repeats, o.secs), (1, 1));
        assert!(o.dry_run && !o.is_full());
    }

    #[test]
    fn variants_get_the_common_args_appended() {
        let o = p(&[
            "--variant",
            "nbdd-t1=-t 1",
            "--variant=nbdd-t2=-t 2",
            "--nbdd-args",
            "--busy-poll=50",
        ])
        .unwrap();
        let got: Vec<(&str, Vec<&str>)> = o
            .variants
            .iter()
            .map(|v| (v.name.as_str(), v.args.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            got,
            [
                ("nbdd-t1", vec!["-t", "1", "--busy-poll=50"]),
                ("nbdd-t2", vec!["-t", "2", "--busy-poll=50"])
            ]
        );
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(p(&["--variant", "noequals"]).is_err());
        assert!(p(&["--variant", "a b=-t 1"]).is_err());
        assert!(p(&["--variant", "x=-t 1", "--variant", "x=-t 2"]).is_err());
        assert!(p(&["--variant", "nbdkit=-t 1"]).is_err());
        assert!(p(&["--repeats", "0"]).is_err());
        assert!(p(&["--only", "disk"]).is_err());
        assert!(p(&["--frobnicate"]).is_err());
    }

    #[test]
    fn the_old_tls_form_selects_only_tls() {
        let o = p(&["tls", "--runs", "5"]).unwrap();
        assert_eq!(o.sections, [Section::Tls]);
        assert_eq!(o.repeats, 5);
        assert!(!o.is_full());
    }
}
