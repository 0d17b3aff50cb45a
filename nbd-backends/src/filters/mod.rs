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
mod gzip;
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
mod qcow2dec;
mod rate;
mod readahead;
mod readonly;
mod retry;
mod stats;
mod truncate;
mod xz;

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
pub use gzip::Gzip;
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
pub use qcow2dec::Qcow2Dec;
pub use rate::{Rate, RateOptions, RateSource};
pub use readahead::ReadAhead;
pub use readonly::ReadOnly;
pub use retry::{Retry, RetryOptions};
pub use stats::{Stats, StatsOptions};
pub use truncate::{Truncate, TruncateOptions};
pub use xz::{Xz, XzOptions};

use crate::Backend;
use crate::registry::Params;
use params::FilterParams;

/// Filter names, their parameters, and a one-line help, for `nbdd --help`
/// (the full text of each is [`help::filter_help`]).
pub const FILTERS: &[(&str, &str, &str)] = &[
    (
        "blocksize",
        "minblock= maxdata= maxlen=",
        "split, align and read-modify-write requests for the layer below",
    ),
    (
        "blocksize-policy",
        "blocksize-minimum= blocksize-preferred= blocksize-maximum= blocksize-error-policy= blocksize-write-disconnect=",
        "advertise block size constraints and choose what happens to requests that break them",
    ),
    (
        "cache",
        "cache= cache-min-block-size= cache-max-size= cache-high-threshold= cache-low-threshold= cache-on-read=",
        "cache the layer below in a temporary file under $TMPDIR (default /var/tmp)",
    ),
    (
        "cacheextents",
        "",
        "remember the last block-status answer for requests inside it",
    ),
    (
        "checkwrite",
        "",
        "turn writes into checks that the data is already there (EIO if not); the layer below is never written",
    ),
    (
        "count",
        "",
        "count bytes read, written, zeroed and trimmed; logged (-v) at exit",
    ),
    (
        "cow",
        "cow-block-size= cow-on-read= cow-on-cache=",
        "copy-on-write: writes go to a private RAM overlay, the layer below is opened read-only",
    ),
    (
        "delay",
        "rdelay= wdelay= delay-OP= delay-fast-zero=",
        "sleep before operations, to simulate a slow disk",
    ),
    (
        "error",
        "error= error-rate= error-file= error-OP[-rate|-file]=",
        "inject errors, to test how clients cope",
    ),
    (
        "exitlast",
        "",
        "exit when the last client disconnects (not before the first one)",
    ),
    (
        "exitwhen",
        "exit-when-file-created|file-deleted|pipe-closed|process-exits|script= exit-when-poll=",
        "exit gracefully when an event happens: refuse new clients, exit when the last one leaves",
    ),
    (
        "fua",
        "fuamode=",
        "change how FUA (forced unit access) and flush are handled",
    ),
    (
        "gzip",
        "",
        "serve the gzip-compressed layer below, decompressed once into a temporary file under $TMPDIR (read-only)",
    ),
    ("ip", "allow= deny=", "allow or deny clients by address"),
    (
        "limit",
        "limit=",
        "limit the number of clients connected at once",
    ),
    (
        "log",
        "logfile= logscript= logappend=",
        "log every request (and connection) to a file, the server log or a script",
    ),
    (
        "multi-conn",
        "multi-conn-mode= multi-conn-track-dirty= multi-conn-exportname=",
        "advertise (or hide) multi-conn, replicating flushes across connections where needed",
    ),
    (
        "noextents",
        "",
        "report everything as allocated data (no holes)",
    ),
    (
        "nozero",
        "zeromode= fastzeromode=",
        "disable or change efficient zeroing",
    ),
    (
        "offset",
        "offset= range=",
        "serve a window of the layer below",
    ),
    (
        "partition",
        "partition= partition-sectorsize=",
        "serve one partition of an MBR or GPT disk",
    ),
    (
        "protect",
        "protect= protect=",
        "refuse writes that would change protected byte ranges (EPERM)",
    ),
    (
        "qcow2dec",
        "",
        "the export is a qcow2 image: serve its contents, read-only",
    ),
    (
        "rate",
        "rate= connection-rate= rate-file= connection-rate-file= burstiness=",
        "limit bandwidth, for the server and per connection",
    ),
    (
        "readahead",
        "",
        "prefetch (cache requests) after sequential reads, in the background",
    ),
    (
        "readonly",
        "readonly-file=",
        "refuse writes, trims and zeroes",
    ),
    (
        "retry",
        "retries= retry-delay= retry-exponential= retry-readonly=",
        "retry failed requests, reopening the layer below",
    ),
    (
        "stats",
        "statsfile= statsappend= statsthreshold=",
        "count requests, bytes and time per operation; written at exit",
    ),
    (
        "truncate",
        "truncate= round-up= round-down=",
        "change the size of the layer below: cut it, or extend it with zeroes",
    ),
    (
        "xz",
        "xz-max-block= xz-max-depth=",
        "serve the xz-compressed layer below, decompressed block by block on demand (read-only)",
    ),
];

/// Keys that may be given more than once (`protect=A-B protect=C-D`).
pub const REPEATABLE: &[&str] = &[
    "protect",
    "allow",
    "deny",
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
    /// read-only (cow, checkwrite, qcow2dec, xz, gzip; as nbdkit does).
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
    ("gzip", gzip::spec),
    ("ip", ip::spec),
    ("limit", limit::spec),
    ("log", log::spec),
    ("multi-conn", multi_conn::spec),
    ("noextents", noextents::spec),
    ("nozero", nozero::spec),
    ("offset", offset::spec),
    ("partition", partition::spec),
    ("protect", protect::spec),
    ("qcow2dec", qcow2dec::spec),
    ("rate", rate::spec),
    ("readahead", readahead::spec),
    ("readonly", readonly::spec),
    ("retry", retry::spec),
    ("stats", stats::spec),
    ("truncate", truncate::spec),
    ("xz", xz::spec),
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

/// The filter whose parameter `key` is, if any.
pub(crate) fn owner_of(key: &str) -> Option<&'static str> {
    help::FILTER_DOCS
        .iter()
        .find(|d| d.keys().any(|k| k == key))
        .map(|d| d.name)
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
