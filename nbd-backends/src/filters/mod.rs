//! Filters: backends that wrap another backend (`--filter NAME`), stacked
//! in nbdkit's order (the first named is outermost, nearest the client),
//! with nbdkit's names and parameters.
//!
//! To add a filter: a module implementing [`Filter`] with a
//! `spec(&mut FilterParams) -> Result<Spec, String>` that takes its keys,
//! a row in [`PARSERS`], its documentation in [`help::FILTER_DOCS`] (a
//! test checks every key it takes is documented) and a row in [`FILTERS`].

mod blocksize;
mod blocksize_policy;
mod cache;
mod cacheextents;
mod checkwrite;
mod count;
mod cow;
mod delay;
mod error;
mod exitlast;
mod exitwhen;
mod fua;
pub mod help;
mod ip;
mod layer;
mod limit;
mod log;
mod multi_conn;
mod noextents;
mod nozero;
mod offset;
mod params;
pub mod partition;
mod protect;
mod rate;
mod readahead;
mod readonly;
mod retry;
mod stats;
mod truncate;

use std::sync::Arc;

pub use blocksize::{Blocksize, BlocksizeOptions};
pub use blocksize_policy::{BlocksizePolicy, PolicyOptions};
pub use cache::{Cache, CacheMode, CacheOptions};
pub use cacheextents::CacheExtents;
pub use checkwrite::CheckWrite;
pub use count::Count;
pub use cow::{Cow, CowOptions};
pub use delay::{Delay, Delays, parse_delay};
pub use error::{ErrorInject, Rule as ErrorRule, parse_errno, parse_rate};
pub use exitlast::ExitLast;
pub use exitwhen::{Event as ExitEvent, ExitWhen};
pub use fua::{Fua, FuaMode};
pub use ip::{Ip, Rule as IpRule};
pub use layer::{Filter, OwnedClient};
pub use limit::Limit;
pub use log::Log;
pub use multi_conn::{Mode as MultiConnMode, MultiConn, Track as MultiConnTrack};
pub use noextents::NoExtents;
pub use nozero::{FastZeroMode, NoZero, ZeroMode};
pub use offset::Offset;
pub use params::{Switch, parse_bool};
pub use protect::{Protect, RangeSpec};
pub use rate::{Rate, RateOptions, RateSource};
pub use readahead::ReadAhead;
pub use readonly::ReadOnly;
pub use retry::{Retry, RetryOptions};
pub use stats::{Stats, StatsOptions};
pub use truncate::{Truncate, TruncateOptions};

use crate::Backend;
use crate::registry::Params;
use params::FilterParams;

/// Filter names, their parameters, and a one-line help, for `nbdd --help`
/// (the full text of each is [`help::filter_help`]).
pub const FILTERS: &[(&str, &str, &str)] = &[
    (
        "readonly",
        "readonly-file=",
        "refuse writes, trims and zeroes (while readonly-file exists)",
    ),
    ("offset", "offset= range=", "serve a window of the export"),
    (
        "delay",
        "rdelay= wdelay= delay-read|write|zero|trim|extents|cache= delay-fast-zero=",
        "sleep before operations (10ms, 2s)",
    ),
    (
        "error",
        "error= error-rate= error-file= error-OP[-rate|-file]=",
        "inject errors (error=EIO error-rate=10%; OP: pread pwrite trim zero flush cache extents)",
    ),
    (
        "cow",
        "cow-block-size= cow-on-read= cow-on-cache=",
        "writes go to a private RAM overlay; the base is never modified",
    ),
    (
        "stats",
        "statsfile= statsappend= statsthreshold=",
        "count requests, bytes and time, written at exit",
    ),
    (
        "log",
        "logfile= logscript= logappend=",
        "one line per request (time, connection, id, op, offset, count, flags, result)",
    ),
    (
        "partition",
        "partition= partition-sectorsize=",
        "serve partition N of an MBR or GPT disk",
    ),
];

/// Keys that may be given more than once (`protect=A-B protect=C-D`).
pub const REPEATABLE: &[&str] = &[
    "protect",
    "exit-when-file-created",
    "exit-when-file-deleted",
    "exit-when-pipe-closed",
    "exit-when-process-exits",
    "exit-when-script",
];

/// Builds one layer over the layer below, for each export.
type Build = Box<dyn Fn(Arc<dyn Backend>) -> Result<Arc<dyn Backend>, String> + Send + Sync>;

/// A parsed filter, ready to stack.
pub(crate) struct Spec {
    /// Nothing is written below this filter, so the backend is opened
    /// read-only (cow, checkwrite, xz, gzip; as nbdkit does).
    pub(crate) read_only_below: bool,
    build: Build,
}

impl Spec {
    pub(crate) fn new(
        build: impl Fn(Arc<dyn Backend>) -> Result<Arc<dyn Backend>, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            read_only_below: false,
            build: Box::new(build),
        }
    }

    /// Mark the layer below as never written.
    pub(crate) fn read_only_below(mut self) -> Self {
        self.read_only_below = true;
        self
    }
}

type Parser = fn(&mut FilterParams<'_, '_>) -> Result<Spec, String>;

/// Every filter's parser, by name.
const PARSERS: &[(&str, Parser)] = &[
    ("blocksize", blocksize::spec),
    ("blocksize-policy", blocksize_policy::spec),
    ("cache", cache::spec),
    ("cacheextents", cacheextents::spec),
    ("checkwrite", checkwrite::spec),
    ("count", count::spec),
    ("cow", cow::spec),
    ("delay", delay::spec),
    ("error", error::spec),
    ("exitlast", exitlast::spec),
    ("exitwhen", exitwhen::spec),
    ("fua", fua::spec),
    ("ip", ip::spec),
    ("limit", limit::spec),
    ("log", log::spec),
    ("multi-conn", multi_conn::spec),
    ("noextents", noextents::spec),
    ("nozero", nozero::spec),
    ("offset", offset::spec),
    ("partition", partition::spec),
    ("protect", protect::spec),
    ("rate", rate::spec),
    ("readahead", readahead::spec),
    ("readonly", readonly::spec),
    ("retry", retry::spec),
    ("stats", stats::spec),
    ("truncate", truncate::spec),
];

/// Parse `names` (outermost first), claiming each filter's keys from `p`.
pub(crate) fn parse_stack(names: &[String], p: &mut Params<'_>) -> Result<Vec<Spec>, String> {
    names
        .iter()
        .map(|name| parse_one(name, p).map(|(s, _)| s))
        .collect()
}

/// One filter's spec, and the keys it looked up.
fn parse_one(name: &str, p: &mut Params<'_>) -> Result<(Spec, Vec<String>), String> {
    let Some(&(name, parse)) = PARSERS.iter().find(|f| f.0 == name) else {
        let known: Vec<_> = PARSERS.iter().map(|f| f.0).collect();
        return Err(format!(
            "unknown filter '{name}' (known: {})",
            known.join(", ")
        ));
    };
    let mut fp = FilterParams::new(name, p);
    let spec = parse(&mut fp)?;
    Ok((spec, fp.asked))
}

/// Wrap `inner` in the filters of `stack`, innermost (last) first.
pub(crate) fn apply(stack: &[Spec], inner: Arc<dyn Backend>) -> Result<Arc<dyn Backend>, String> {
    let mut b = inner;
    for spec in stack.iter().rev() {
        b = (spec.build)(b)?;
    }
    Ok(b)
}

/// The message for a parameter nobody took: a filter's key given without
/// its `--filter=`, a misspelt filter key, or the backend's unknown key.
pub(crate) fn unknown_key(key: &str, backend: &str) -> String {
    if let Some(doc) = help::FILTER_DOCS
        .iter()
        .find(|d| d.keys().any(|k| k == key))
    {
        return format!(
            "parameter '{key}' belongs to the {0} filter: add --filter={0}",
            doc.name
        );
    }
    let prefixed = help::FILTER_DOCS
        .iter()
        .find(|d| key.starts_with(&format!("{}-", d.name)));
    match prefixed {
        Some(doc) => format!(
            "unknown parameter '{key}' (the {} filter takes: {})",
            doc.name,
            doc.keys().collect::<Vec<_>>().join(", ")
        ),
        None => format!("unknown parameter '{key}' for backend {backend}"),
    }
}

#[cfg(test)]
mod tests;
