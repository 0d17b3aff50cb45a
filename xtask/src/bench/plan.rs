//! What a run measures: the jobs, the servers and the tables that pair
//! them. Nothing here starts a process; [`super::runner`] does.

use std::path::{Path, PathBuf};

/// The export size, and the size of the nbdcopy source file.
pub const EXPORT_BYTES: u64 = 1 << 30;
/// nbdcopy's request size, passed explicitly so requests can be counted.
pub const COPY_REQUEST: u64 = 256 << 10;

/// How one job moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// fio `--ioengine=nbd`, one connection, `time_based`.
    Fio {
        rw: &'static str,
        bs: u64,
        iodepth: u32,
        /// fio jobs, one connection each (reported as one group).
        jobs: u32,
    },
    /// nbdcopy of the source file on /dev/shm into the export.
    CopyIn,
    /// nbdcopy of the export to `null:`.
    CopyOut,
}

/// One row of a table.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    /// Short stable name (chart axis, logs).
    pub key: &'static str,
    /// The chart's axis label.
    pub short: &'static str,
    /// The table's wording.
    pub label: &'static str,
    pub kind: Kind,
}

impl Job {
    /// 1 MiB fio jobs are compared with the raw-socket reference.
    pub const fn vs_raw(&self) -> bool {
        matches!(self.kind, Kind::Fio { bs, .. } if bs == 1 << 20)
    }

    pub const fn is_fio(&self) -> bool {
        matches!(self.kind, Kind::Fio { .. })
    }
}

const fn fio(
    key: &'static str,
    short: &'static str,
    label: &'static str,
    rw: &'static str,
    bs: u64,
    iodepth: u32,
) -> Job {
    Job {
        key,
        short,
        label,
        kind: Kind::Fio {
            rw,
            bs,
            iodepth,
            jobs: 1,
        },
    }
}

/// Issue 14's jobs, in its order.
pub const JOBS: &[Job] = &[
    fio(
        "rr4k-qd1",
        "4k randread QD1",
        "fio 4k randread, iodepth 1",
        "randread",
        4096,
        1,
    ),
    fio(
        "rr4k-qd32",
        "4k randread QD32",
        "fio 4k randread, iodepth 32",
        "randread",
        4096,
        32,
    ),
    fio(
        "rw4k-qd32",
        "4k randwrite QD32",
        "fio 4k randwrite, iodepth 32",
        "randwrite",
        4096,
        32,
    ),
    fio(
        "read1m-qd8",
        "1M read QD8",
        "fio 1M read, iodepth 8",
        "read",
        1 << 20,
        8,
    ),
    fio(
        "write1m-qd8",
        "1M write QD8",
        "fio 1M write, iodepth 8",
        "write",
        1 << 20,
        8,
    ),
    Job {
        key: "copy-in",
        short: "nbdcopy in",
        label: "nbdcopy 1 GiB file (tmpfs) → server",
        kind: Kind::CopyIn,
    },
    Job {
        key: "copy-out",
        short: "nbdcopy out",
        label: "nbdcopy server → null:",
        kind: Kind::CopyOut,
    },
];

/// Whether a server is one we measure or one we compare against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An nbdd variant: gets ratio columns.
    Subject,
    /// nbdkit, qemu-nbd: the denominators.
    Reference,
}

/// How to start one server. `argv` holds the literal `{sock}` where the
/// Unix socket path goes.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    pub name: String,
    pub role: Role,
    pub argv: Vec<String>,
}

impl ServerSpec {
    fn new(name: &str, role: Role, argv: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            role,
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The command line with the socket filled in.
    pub fn command(&self, sock: &Path) -> Vec<String> {
        let s = sock.display().to_string();
        self.argv.iter().map(|a| a.replace("{sock}", &s)).collect()
    }
}

/// Where the files a run needs live (created by the runner).
pub struct Paths {
    /// Sockets, the libnbd `$HOME`, certificates.
    pub dir: PathBuf,
    /// 1 GiB of random data on /dev/shm, the nbdcopy source.
    pub source: PathBuf,
    /// The directory on /dev/shm holding the source and the file table's
    /// images (`NAME.raw`, one per server).
    pub shm: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path) -> Self {
        let pid = std::process::id();
        Self {
            dir: dir.to_path_buf(),
            source: PathBuf::from(format!("/dev/shm/nbdd-bench-{pid}/source.raw")),
            shm: PathBuf::from(format!("/dev/shm/nbdd-bench-{pid}")),
        }
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// The `$HOME` under which libnbd finds `.pki/libnbd/ca-cert.pem`.
    pub fn tls_home(&self) -> PathBuf {
        self.dir.join("home")
    }

    pub fn image(&self, server: &str) -> PathBuf {
        self.shm.join(format!("{server}.raw"))
    }
}

/// One table: servers that all run the same jobs, round robin.
#[derive(Clone, Debug)]
pub struct Table {
    /// `memory`, `file`, `tls` (or an extension's own).
    pub key: &'static str,
    pub title: String,
    /// One paragraph on what is served and how.
    pub note: String,
    pub servers: Vec<ServerSpec>,
    pub jobs: Vec<Job>,
    /// Clients connect with `nbds+unix://` and this `$HOME`.
    pub tls_home: Option<PathBuf>,
    /// Measure the raw-socket reference once per repeat of this table.
    pub raw_reference: bool,
    /// Images to create (1 GiB, sparse) before the servers start.
    pub images: Vec<PathBuf>,
    /// Pre-fill each export with random data before the first run.
    pub prefill: bool,
}

fn nbdd_spec(nbdd: &Path, v: &super::opts::Variant, name: &str, tail: &[String]) -> ServerSpec {
    let mut argv = vec![
        nbdd.display().to_string(),
        "-f".into(),
        "-U".into(),
        "{sock}".into(),
    ];
    argv.extend(v.args.iter().cloned());
    argv.extend(tail.iter().cloned());
    ServerSpec {
        name: name.to_owned(),
        role: Role::Subject,
        argv,
    }
}

fn tls_flags(pki: &Path) -> Vec<String> {
    vec![
        "--tls=require".into(),
        format!("--tls-certificates={}", pki.display()),
    ]
}

/// nbdd variants and nbdkit, each `memory 1G`.
pub fn memory_table(nbdd: &Path, variants: &[super::opts::Variant]) -> Table {
    let tail = ["memory".to_owned(), "1G".to_owned()];
    let mut servers: Vec<ServerSpec> = variants
        .iter()
        .map(|v| nbdd_spec(nbdd, v, &v.name, &tail))
        .collect();
    servers.push(ServerSpec::new(
        "nbdkit",
        Role::Reference,
        &["nbdkit", "-f", "-U", "{sock}", "memory", "1G"],
    ));
    Table {
        key: "memory",
        title: "memory backend (nbdd vs nbdkit)".into(),
        note: "`memory 1G` on each server, pre-filled with random data through nbdcopy; \
               Unix socket; fio `--ioengine=nbd`, one connection per job."
            .into(),
        servers,
        jobs: JOBS.to_vec(),
        tls_home: None,
        raw_reference: true,
        images: Vec::new(),
        prefill: true,
    }
}

/// A fresh 1 GiB image on tmpfs per server: nbdd `file`, nbdkit `file`,
/// `qemu-nbd -f raw`.
pub fn file_table(nbdd: &Path, variants: &[super::opts::Variant], paths: &Paths) -> Table {
    let mut servers: Vec<ServerSpec> = variants
        .iter()
        .map(|v| {
            let name = format!("{}-file", v.name);
            let img = paths.image(&name).display().to_string();
            nbdd_spec(nbdd, v, &name, &["file".into(), img])
        })
        .collect();
    let kit_img = paths.image("nbdkit-file").display().to_string();
    servers.push(ServerSpec::new(
        "nbdkit-file",
        Role::Reference,
        &["nbdkit", "-f", "-U", "{sock}", "file", &kit_img],
    ));
    let qemu_img = paths.image("qemu-nbd").display().to_string();
    // -t: keep serving after a client leaves; -e 8: nbdcopy opens several
    // connections; --cache/--aio: qemu-nbd's defaults, spelled out.
    servers.push(ServerSpec::new(
        "qemu-nbd",
        Role::Reference,
        &[
            "qemu-nbd",
            "-t",
            "-e",
            "8",
            "-f",
            "raw",
            "--cache=writeback",
            "--aio=threads",
            "-k",
            "{sock}",
            &qemu_img,
        ],
    ));
    let images = servers.iter().map(|s| paths.image(&s.name)).collect();
    Table {
        key: "file",
        title: "file backend (nbdd vs nbdkit vs qemu-nbd)".into(),
        note: "one 1 GiB raw image on tmpfs (/dev/shm) per server, pre-filled with random data; \
               `nbdd file`, `nbdkit file`, `qemu-nbd -f raw --cache=writeback --aio=threads`; \
               Unix socket."
            .into(),
        servers,
        jobs: JOBS.to_vec(),
        tls_home: None,
        raw_reference: false,
        images,
        prefill: true,
    }
}

/// `memory 1G` over X.509: fio jobs only.
pub fn tls_table(nbdd: &Path, variants: &[super::opts::Variant], paths: &Paths) -> Table {
    let mut tail = tls_flags(&paths.pki());
    tail.extend(["memory".to_owned(), "1G".to_owned()]);
    let mut servers: Vec<ServerSpec> = variants
        .iter()
        .map(|v| nbdd_spec(nbdd, v, &format!("{}-tls", v.name), &tail))
        .collect();
    let mut kit = vec![
        "nbdkit".to_owned(),
        "-f".into(),
        "-U".into(),
        "{sock}".into(),
    ];
    kit.extend(tail);
    servers.push(ServerSpec {
        name: "nbdkit-tls".into(),
        role: Role::Reference,
        argv: kit,
    });
    Table {
        key: "tls",
        title: "TLS (X.509, nbdd rustls vs nbdkit GnuTLS)".into(),
        note: "`--tls=require` with a test CA (tests/pki/make-pki.sh), `memory 1G` pre-filled; \
               the client is libnbd (GnuTLS), which finds the CA in `$HOME/.pki/libnbd`."
            .into(),
        servers,
        jobs: JOBS.iter().copied().filter(Job::is_fio).collect(),
        tls_home: Some(paths.tls_home()),
        raw_reference: false,
        images: Vec::new(),
        prefill: true,
    }
}

/// The scaling job: issue 14's null-backend check that the request path,
/// not storage, is what more event loops multiply.
pub const SCALING_JOB: Job = Job {
    key: "rr4k-qd16-x4",
    short: "4 x 4k randread QD16",
    label: "fio 4k randread, iodepth 16, 4 jobs (4 connections)",
    kind: Kind::Fio {
        rw: "randread",
        bs: 4096,
        iodepth: 16,
        jobs: 4,
    },
};

/// `null 1G` served by nbdd with one and with two event loops, and by
/// nbdkit: how far the loops scale on this machine.
pub fn scaling_table(nbdd: &Path, base: &[String]) -> Table {
    let tail = ["null".to_owned(), "1G".to_owned()];
    let mut servers: Vec<ServerSpec> = [1, 2]
        .iter()
        .map(|t| {
            let mut args = base.to_vec();
            args.extend(["-t".to_owned(), t.to_string()]);
            let v = super::opts::Variant {
                name: format!("nbdd-t{t}"),
                args,
            };
            nbdd_spec(nbdd, &v, &v.name, &tail)
        })
        .collect();
    servers.push(ServerSpec::new(
        "nbdkit-null",
        Role::Reference,
        &["nbdkit", "-f", "-U", "{sock}", "null", "1G"],
    ));
    Table {
        key: "scaling",
        title: "event loops (null backend: nbdd -t 1, nbdd -t 2, nbdkit)".into(),
        note: "`null 1G` (reads zeroes, no storage cost), 4 fio jobs of one connection each, \
               4k random reads at iodepth 16, fio's group total. fio runs on the same 2 cores \
               as the server, so `-t 2` competes with the client for them."
            .into(),
        servers,
        jobs: vec![SCALING_JOB],
        tls_home: None,
        raw_reference: false,
        images: Vec::new(),
        prefill: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::opts::Variant;

    fn variants() -> Vec<Variant> {
        vec![
            Variant {
                name: "nbdd-t1".into(),
                args: vec!["-t".into(), "1".into()],
            },
            Variant {
                name: "nbdd-t2".into(),
                args: vec!["-t".into(), "2".into()],
            },
        ]
    }

    #[test]
    fn the_jobs_are_issue_14s() {
        let keys: Vec<&str> = JOBS.iter().map(|j| j.key).collect();
        assert_eq!(
            keys,
            [
                "rr4k-qd1",
                "rr4k-qd32",
                "rw4k-qd32",
                "read1m-qd8",
                "write1m-qd8",
                "copy-in",
                "copy-out"
            ]
        );
        assert_eq!(JOBS.iter().filter(|j| j.vs_raw()).count(), 2);
    }

    #[test]
    fn variant_flags_go_before_the_backend() {
        let t = memory_table(Path::new("/x/nbdd"), &variants());
        let names: Vec<&str> = t.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["nbdd-t1", "nbdd-t2", "nbdkit"]);
        assert_eq!(
            t.servers[1].command(Path::new("/s")),
            ["/x/nbdd", "-f", "-U", "/s", "-t", "2", "memory", "1G"]
        );
    }

    #[test]
    fn scaling_compares_one_and_two_loops_on_null() {
        let t = scaling_table(Path::new("nbdd"), &["--busy-poll=0".into()]);
        assert_eq!(
            t.servers[1].command(Path::new("/s")),
            [
                "nbdd",
                "-f",
                "-U",
                "/s",
                "--busy-poll=0",
                "-t",
                "2",
                "null",
                "1G"
            ]
        );
        assert_eq!(t.servers[2].name, "nbdkit-null");
        assert!(matches!(t.jobs[0].kind, Kind::Fio { jobs: 4, .. }));
        assert!(!t.prefill);
    }

    #[test]
    fn file_and_tls_tables_have_their_own_servers() {
        let paths = Paths::new(Path::new("/tmp/b"));
        let f = file_table(Path::new("nbdd"), &variants(), &paths);
        assert_eq!(f.images.len(), 4);
        assert_eq!(f.servers.last().unwrap().name, "qemu-nbd");
        let t = tls_table(Path::new("nbdd"), &variants(), &paths);
        assert!(t.jobs.iter().all(Job::is_fio));
        assert!(
            t.servers
                .iter()
                .all(|s| s.argv.contains(&"--tls=require".to_owned()))
        );
    }
}
