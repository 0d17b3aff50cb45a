//! Filters: backends that wrap another backend (`--filter NAME`), stacked
//! in nbdkit's order (the first named is outermost, nearest the client).
//!
//! To add a filter: a module, a row in [`FILTERS`], a `Spec` variant
//! parsed in `parse_stack` and built in `apply`.

mod cow;
mod delay;
mod error;
mod log;
mod offset;
pub mod partition;
mod qcow2dec;
mod readonly;
mod stats;

use std::sync::Arc;

pub use cow::Cow;
pub use delay::{Delay, parse_delay};
pub use error::{ErrorInject, Rule as ErrorRule, parse_errno, parse_rate};
pub use log::Log;
pub use offset::Offset;
pub use qcow2dec::Qcow2Dec;
pub use readonly::ReadOnly;
pub use stats::Stats;

use crate::Backend;
use crate::registry::Params;

/// Filter names, their parameters, and a one-line help, for `nbdd --help`.
pub const FILTERS: &[(&str, &str, &str)] = &[
    ("readonly", "", "refuse writes, trims and zeroes with EPERM"),
    ("offset", "offset= range=", "serve a window of the export"),
    (
        "delay",
        "rdelay= wdelay=",
        "sleep before reads / writes (10ms, 2s)",
    ),
    (
        "error",
        "error= error-rate= error-file= error-OP[-rate|-file]=",
        "inject errors (error=EIO error-rate=10%; OP: pread pwrite trim zero flush cache extents)",
    ),
    (
        "cow",
        "",
        "writes go to a private RAM overlay; the base is never modified",
    ),
    (
        "stats",
        "statsfile=",
        "count requests and bytes, printed at exit",
    ),
    (
        "log",
        "logfile= logappend=",
        "one line per request (time, id, op, offset, count, flags, result)",
    ),
    (
        "partition",
        "partition=",
        "serve partition N of an MBR or GPT disk",
    ),
    (
        "qcow2dec",
        "",
        "the export is a qcow2 image: serve its contents, read-only",
    ),
];

/// A parsed filter with its parameters.
pub(crate) enum Spec {
    ReadOnly,
    Offset {
        offset: u64,
        range: Option<u64>,
    },
    Delay {
        read: std::time::Duration,
        write: std::time::Duration,
    },
    Error {
        // Boxed: seven rules would make every other variant as large.
        rules: Box<[error::Rule; 7]>,
    },
    Cow,
    Stats {
        file: Option<std::path::PathBuf>,
    },
    Log {
        file: Option<std::path::PathBuf>,
        append: bool,
    },
    Partition {
        n: u32,
    },
    Qcow2Dec,
}

/// Parse `names` (outermost first), claiming each filter's keys from `p`.
pub(crate) fn parse_stack(names: &[String], p: &mut Params<'_>) -> Result<Vec<Spec>, String> {
    names
        .iter()
        .map(|name| {
            Ok(match name.as_str() {
                "readonly" => Spec::ReadOnly,
                "offset" => Spec::Offset {
                    offset: p.take_size("offset", "offset")?.unwrap_or(0),
                    range: p.take_size("offset", "range")?,
                },
                "delay" => {
                    let mut d = |k| p.take(k).map_or(Ok(Default::default()), parse_delay);
                    Spec::Delay {
                        read: d("rdelay").map_err(|e| format!("delay: rdelay: {e}"))?,
                        write: d("wdelay").map_err(|e| format!("delay: wdelay: {e}"))?,
                    }
                }
                "error" => Spec::Error {
                    rules: Box::new(error_rules(p)?),
                },
                "cow" => Spec::Cow,
                "qcow2dec" => Spec::Qcow2Dec,
                "stats" => Spec::Stats {
                    file: p.take("statsfile").map(Into::into),
                },
                "log" => Spec::Log {
                    file: p.take("logfile").map(Into::into),
                    append: match p.take("logappend") {
                        None | Some("false" | "0" | "no" | "off") => false,
                        Some("true" | "1" | "yes" | "on") => true,
                        Some(v) => {
                            return Err(format!("log: logappend: expected a boolean, got '{v}'"));
                        }
                    },
                },
                "partition" => Spec::Partition {
                    n: match p.take("partition") {
                        None => return Err("partition: missing parameter partition=N".into()),
                        Some(v) => v.parse().map_err(|_| {
                            format!("partition: partition: expected a number from 1, got '{v}'")
                        })?,
                    },
                },
                other => {
                    let known: Vec<_> = FILTERS.iter().map(|f| f.0).collect();
                    return Err(format!(
                        "unknown filter '{other}' (known: {})",
                        known.join(", ")
                    ));
                }
            })
        })
        .collect()
}

/// The error filter's rules: `error=`, `error-rate=`, `error-file=` for
/// every operation, overridden per operation by `error-OP=`,
/// `error-OP-rate=`, `error-OP-file=` (nbdkit's spellings).
fn error_rules(p: &mut Params<'_>) -> Result<[error::Rule; 7], String> {
    let mut one = |prefix: &str, default: Option<&error::Rule>| {
        let errno = match p.take(prefix) {
            Some(v) => parse_errno(v).map_err(|e| format!("error: {prefix}: {e}"))?,
            None => default.map_or(libc::EIO, |d| d.errno),
        };
        let key = format!("{prefix}-rate");
        let rate = match p.take(&key) {
            Some(v) => parse_rate(v).map_err(|e| format!("error: {key}: {e}"))?,
            // nbdkit's default: no errors until a rate is given.
            None => default.map_or(0.0, |d| d.rate),
        };
        let file = p
            .take(&format!("{prefix}-file"))
            .map(Into::into)
            .or_else(|| default.and_then(|d| d.file.clone()));
        Ok::<_, String>(error::Rule { errno, rate, file })
    };
    let all = one("error", None)?;
    let mut rules: [error::Rule; 7] = std::array::from_fn(|_| all.clone());
    for (rule, op) in rules.iter_mut().zip(error::OPS) {
        *rule = one(&format!("error-{op}"), Some(&all))?;
    }
    Ok(rules)
}

/// Wrap `inner` in the filters of `stack`, innermost (last) first.
pub(crate) fn apply(stack: &[Spec], inner: Arc<dyn Backend>) -> Result<Arc<dyn Backend>, String> {
    let mut b = inner;
    for spec in stack.iter().rev() {
        b = match *spec {
            Spec::ReadOnly => Arc::new(ReadOnly::new(b)),
            Spec::Offset { offset, range } => Arc::new(Offset::new(b, offset, range)?),
            Spec::Delay { read, write } => Arc::new(Delay::new(b, read, write)),
            Spec::Error { ref rules } => Arc::new(ErrorInject::with_rules(b, (**rules).clone())),
            Spec::Cow => Arc::new(Cow::new(b).map_err(|e| format!("cow: {e}"))?),
            Spec::Stats { ref file } => Arc::new(Stats::new(b, file.clone())),
            Spec::Log { ref file, append } => Arc::new(
                Log::new(b, file.as_deref(), append).map_err(|e| match file {
                    Some(f) => format!("log: logfile: {}: {e}", f.display()),
                    None => format!("log: {e}"),
                })?,
            ),
            Spec::Partition { n } => Arc::new(partition::open(b, n)?),
            Spec::Qcow2Dec => Arc::new(Qcow2Dec::new(b).map_err(|e| e.to_string())?),
        };
    }
    Ok(b)
}
