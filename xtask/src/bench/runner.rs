//! Runs one table: every server started up front, pre-filled, then
//! repeat → job → server round robin (the server order rotated each
//! repeat, so no server always runs right after the same neighbour), with
//! server CPU read from /proc before and after each run.

use super::plan::{Job, Kind, Paths, Table};
use super::report::brief;
use super::server::Server;
use super::stats::Sample;
use super::{copy, fio, rawsock};
use std::path::Path;

/// Everything measured for one table.
pub struct TableResult {
    pub table: Table,
    /// `samples[job][server]`: one per successful repeat.
    pub samples: Vec<Vec<Vec<Sample>>>,
    /// The raw-socket reference, one per repeat (if the table has it).
    pub raw: Vec<Sample>,
    /// Runs that failed, as `job / server: message`; the rest go on.
    pub errors: Vec<String>,
}

/// How long, at most, one repeat of `t` takes with `secs` per fio job
/// (nbdcopy counted at ~2 s); for the dry run's estimate.
pub fn estimate_secs(t: &Table, secs: u32) -> u64 {
    let per_server: u64 = t
        .jobs
        .iter()
        .map(|j| if j.is_fio() { u64::from(secs) + 1 } else { 2 })
        .sum();
    per_server * t.servers.len() as u64 + if t.raw_reference { u64::from(secs) } else { 0 }
}

/// Runs `t` for `repeats` rounds of `secs`-second fio jobs.
///
/// # Errors
/// If a server does not start or cannot be pre-filled (a failing run
/// later is recorded in [`TableResult::errors`] instead).
pub fn run(t: &Table, paths: &Paths, repeats: usize, secs: u32) -> Result<TableResult, String> {
    for img in &t.images {
        copy::make_image(img)?;
    }
    let result = run_servers(t, paths, repeats, secs);
    for img in &t.images {
        let _ = std::fs::remove_file(img);
    }
    result
}

fn run_servers(t: &Table, paths: &Paths, repeats: usize, secs: u32) -> Result<TableResult, String> {
    let mut servers = t
        .servers
        .iter()
        .map(|s| Server::start(s, &paths.dir))
        .collect::<Result<Vec<_>, _>>()?;
    let home = t.tls_home.as_deref();
    for s in servers.iter().filter(|_| t.prefill) {
        eprintln!("bench: pre-filling {} with random data", s.name);
        let from = paths.source.display().to_string();
        copy::run(copy::command(&from, &s.uri(home.is_some()), home))
            .map_err(|e| format!("pre-filling {}: {e}", s.name))?;
    }
    let mut r = TableResult {
        table: t.clone(),
        samples: vec![vec![Vec::new(); servers.len()]; t.jobs.len()],
        raw: Vec::new(),
        errors: Vec::new(),
    };
    let n = servers.len();
    for rep in 0..repeats {
        eprintln!("bench: {}: repeat {}/{repeats}", t.title, rep + 1);
        if t.raw_reference {
            match rawsock::measure(&paths.dir, secs) {
                Ok(s) => {
                    eprintln!("bench: raw Unix socket: {:.0} MiB/s", s.mib_s());
                    r.raw.push(s);
                }
                Err(e) => r.errors.push(format!("raw socket reference: {e}")),
            }
        }
        for (j, job) in t.jobs.iter().enumerate() {
            for k in 0..n {
                let i = (k + rep) % n;
                let server = &mut servers[i];
                match run_one(job, server, paths, home, secs) {
                    Ok(s) => {
                        eprintln!("bench: {} / {}: {}", job.key, server.name, brief(&s));
                        r.samples[j][i].push(s);
                    }
                    Err(e) => {
                        eprintln!("bench: {} / {} failed: {e}", job.key, server.name);
                        r.errors
                            .push(format!("{} / {}: {e}", job.label, server.name));
                    }
                }
            }
        }
    }
    Ok(r)
}

/// One job against one server, with the server's CPU time around it.
fn run_one(
    job: &Job,
    server: &mut Server,
    paths: &Paths,
    home: Option<&Path>,
    secs: u32,
) -> Result<Sample, String> {
    let uri = server.uri(home.is_some());
    let cpu0 = server.cpu_secs()?;
    let mut sample = match job.kind {
        Kind::Fio {
            rw,
            bs,
            iodepth,
            jobs,
        } => fio::run(
            fio::command(&uri, home, (rw, bs, iodepth, jobs), secs),
            rw.contains("write"),
            bs,
        )?,
        Kind::CopyIn => copy::run(copy::command(
            &paths.source.display().to_string(),
            &uri,
            home,
        ))?,
        Kind::CopyOut => copy::run(copy::command(&uri, "null:", home))?,
    };
    sample.cpu = server.cpu_secs()? - cpu0;
    Ok(sample)
}
