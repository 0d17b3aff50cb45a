//! Extension point for benchmarking the `rbd` backend (`--rbd`).
//!
//! Not wired yet. Whoever wires it: build a [`Table`] here from the job
//! list and the nbdd variants (nbdd `rbd` servers as [`Role::Subject`],
//! a reference such as `qemu-nbd` on an `rbd:` URL as
//! [`Role::Reference`]), on the throwaway cluster of `xtask/src/ceph.rs`,
//! and return the cluster in [`Prepared::keep`] so it outlives the
//! table's run; `bench::run` then measures it like the other tables
//! (servers up front, pre-fill, round robin, CPU from /proc) and the
//! report and chart pick it up unchanged.
//!
//! [`Role::Subject`]: super::plan::Role::Subject
//! [`Role::Reference`]: super::plan::Role::Reference

use super::opts::Variant;
use super::plan::{Job, Paths, Table};
use std::path::Path;

/// A table plus whatever must stay alive while it runs (a cluster).
pub struct Prepared {
    pub table: Table,
    pub keep: Box<dyn std::any::Any>,
}

/// The rbd table for `jobs` and these nbdd servers.
///
/// # Errors
/// Always, for now: "not yet wired".
pub fn prepare(
    jobs: &[Job],
    nbdd: &Path,
    variants: &[Variant],
    paths: &Paths,
) -> Result<Prepared, String> {
    let _ = (jobs, nbdd, variants, paths);
    Err("--rbd: not yet wired (see xtask/src/bench/rbd.rs for the extension point)".into())
}
