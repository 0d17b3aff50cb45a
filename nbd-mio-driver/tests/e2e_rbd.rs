//! `nbdd rbd` end to end against the throwaway Ceph cluster `cargo xtask
//! test` starts (built only with `--features rbd`): real NBD clients
//! (qemu-img, nbdinfo, nbdcopy, fio, libnbd) on one side, and on the other
//! a fresh librbd client (`rbd export`, `rbd diff`) as the judge of what
//! reached the cluster.

#[path = "../../nbd-backends/tests/ceph/mod.rs"]
mod ceph;
mod common;

use std::process::Command;

use common::raw::Raw;
use common::{Server, TempDir, Transport, json, random_file, require_tool, run, run_ok, sha256};
use nbd_proto::{CmdFlags, Command as Cmd, ErrorCode, HeaderMode};

const MIB: u64 = 1 << 20;

/// A server stopped with SIGTERM when dropped, so librbd closes the image
/// (watch and lock released) before the image guard, declared earlier,
/// removes it.
struct Nbdd(Server);

impl std::ops::Deref for Nbdd {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl std::ops::DerefMut for Nbdd {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.0
    }
}

impl Drop for Nbdd {
    fn drop(&mut self) {
        self.0.assert_alive();
        self.0.terminate();
    }
}

/// `nbdd -f -U SOCK EXTRA... rbd rbd/NAME conf=CONF`.
fn start(image: &ceph::Image, extra: &[&str]) -> Server {
    let conf = format!("conf={}", ceph::conf().display());
    let spec = image.spec();
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["rbd", spec.as_str(), conf.as_str()]);
    Server::start(Transport::Unix, &args)
}

/// [`start`], stopped gracefully on drop.
fn serve(image: &ceph::Image, extra: &[&str]) -> Nbdd {
    Nbdd(start(image, extra))
}

fn nbdinfo_json(server: &Server) -> json::Value {
    let nbdinfo = require_tool("nbdinfo", "libnbd-bin");
    let out = run_ok(Command::new(nbdinfo).args(["--json", &server.uri()]));
    json::parse(&out)
}

/// qemu-img convert into the export and back out: both copies hash the
/// same as what a fresh librbd client reads.
#[test]
fn qemu_img_convert_in_and_out_matches_rbd_export() {
    let image = ceph::Image::create("24M", &["--image-feature", "layering"]);
    let mut server = serve(&image, &[]);
    let qemu_img = require_tool("qemu-img", "qemu-utils");
    let dir = TempDir::new("rbd-qemu");
    let (src, back) = (dir.path().join("src.img"), dir.path().join("back.img"));
    random_file(&src, 20 << 20, 11);
    // Leave a 4 MiB hole at the end: converting it must write zeroes or
    // nothing, and the hashes still agree.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(24 << 20)
        .unwrap();
    let uri = server.uri();
    run_ok(
        Command::new(&qemu_img)
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    server.assert_alive();
    let exported = dir.path().join("export.img");
    std::fs::write(&exported, image.export()).unwrap();
    assert_eq!(
        sha256(&exported),
        sha256(&src),
        "rbd export after qemu-img convert in"
    );
    run_ok(
        Command::new(&qemu_img)
            .args(["convert", "-f", "raw", "-O", "raw", &uri])
            .arg(&back),
    );
    assert_eq!(sha256(&back), sha256(&exported), "qemu-img convert out");
}

/// Merged `(offset, length)` data ranges.
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (o, l) in v {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == o => last.1 += l,
            _ => out.push((o, l)),
        }
    }
    out
}

/// `nbdinfo --map` reports as data exactly the objects `rbd diff` lists.
#[test]
fn nbdinfo_map_matches_rbd_diff() {
    let image = ceph::Image::simple("32M", "1M");
    let mut server = serve(&image, &[]);
    let mut c = Raw::negotiate(&server, HeaderMode::Structured);
    c.write(3 * MIB + 100, &[1; 4096]);
    c.write(9 * MIB, &[2; MIB as usize]);
    c.write(20 * MIB + MIB / 2, &[3; 2 * MIB as usize]);
    drop(c);
    let nbdinfo = require_tool("nbdinfo", "libnbd-bin");
    let map = json::parse(&run_ok(Command::new(nbdinfo).args([
        "--map",
        "--json",
        &server.uri(),
    ])));
    server.assert_alive();
    let mut covered = 0;
    let mut data = Vec::new();
    for e in map.arr() {
        let (o, l, ty) = (
            e.get("offset").u64(),
            e.get("length").u64(),
            e.get("type").u64(),
        );
        assert_eq!(o, covered, "extents are contiguous");
        covered += l;
        assert!(ty == 0 || ty == 3, "data, or hole+zero: {ty}");
        if ty == 0 {
            data.push((o, l));
        }
    }
    assert_eq!(covered, 32 * MIB);
    let spec = image.spec();
    let diff = ceph::rbd(&["diff", "--whole-object", "--format", "json", &spec]);
    let diff = json::parse(&String::from_utf8_lossy(&diff));
    let listed: Vec<(u64, u64)> = diff
        .arr()
        .iter()
        .map(|e| (e.get("offset").u64(), e.get("length").u64()))
        .collect();
    let want = vec![(3 * MIB, MIB), (9 * MIB, MIB), (20 * MIB, 3 * MIB)];
    assert_eq!(merge(listed), want, "rbd diff");
    assert_eq!(merge(data), want, "nbdinfo --map");
}

/// Four connections at once (nbdcopy -C 4) on an image with the default
/// features (exclusive lock, object map): multi-conn is advertised because
/// they all share nbdd's one librbd handle, and the copy is exact. With
/// four event loops the connections land on different loops, each with its
/// own aio queue on the image.
#[test]
fn nbdcopy_over_four_connections() {
    let image = ceph::Image::create("32M", &[]);
    let mut server = serve(&image, &["-t", "4"]);
    let info = nbdinfo_json(&server);
    let export = &info.get("exports").arr()[0];
    assert!(export.get("can_multi_conn").bool(), "multi-conn");
    assert_eq!(
        export.get("block_size_preferred").u64(),
        4 * MIB,
        "object size"
    );
    let nbdcopy = require_tool("nbdcopy", "libnbd-bin");
    let dir = TempDir::new("rbd-nbdcopy");
    let (src, back) = (dir.path().join("src.img"), dir.path().join("back.img"));
    random_file(&src, 32 << 20, 5);
    let uri = server.uri();
    let copy = |from: &str, to: &str| {
        run_ok(Command::new(&nbdcopy).args(["-C", "4", "--requests=16", "--flush", from, to]))
    };
    copy(src.to_str().unwrap(), &uri);
    server.assert_alive();
    let exported = dir.path().join("export.img");
    std::fs::write(&exported, image.export()).unwrap();
    assert_eq!(
        sha256(&exported),
        sha256(&src),
        "rbd export after nbdcopy -C 4"
    );
    copy(&uri, back.to_str().unwrap());
    assert_eq!(sha256(&back), sha256(&src), "nbdcopy -C 4 back out");
}

/// fio's NBD engine: random writes at iodepth 32, every block verified.
#[test]
fn fio_random_writes_verify() {
    let image = ceph::Image::simple("16M", "1M");
    let mut server = serve(&image, &[]);
    let fio = require_tool("fio", "fio");
    let out = run(Command::new(fio).args([
        "--name=rbd",
        "--ioengine=nbd",
        &format!("--uri={}", server.uri()),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=32",
        "--size=16M",
        "--io_size=8M",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--verify_state_save=0",
        "--output-format=json",
    ]));
    assert!(
        out.status.success(),
        "fio failed ({}):\n{}\n{}\nserver stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let doc = json::parse(&text[text.find("\n{").map_or(0, |i| i + 1)..]);
    let job = &doc.get("jobs").arr()[0];
    assert_eq!(job.get("error").u64(), 0);
    assert!(job.get("write").get("io_bytes").u64() >= 8 * MIB);
    assert!(
        job.get("read").get("io_bytes").u64() >= 8 * MIB,
        "verify pass read back"
    );
    server.assert_alive();
}

/// What FLUSH or FUA acknowledged survives nbdd being killed with SIGKILL:
/// a fresh librbd client (`rbd export`) reads it.
#[test]
fn flushed_and_fua_writes_survive_sigkill() {
    let image = ceph::Image::create("8M", &[]);
    let mut server = start(&image, &[]);
    let mut c = Raw::negotiate(&server, HeaderMode::Structured);
    let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 | 1).collect();
    let b = vec![0x77u8; 65_536];
    c.write(12_345, &a);
    assert_eq!(c.call(Cmd::Flush, CmdFlags::empty(), 0, 0), None, "FLUSH");
    c.request_with(Cmd::Write, CmdFlags::FUA, 9, 5 * MIB, b.len() as u64, &b);
    assert_eq!(c.status(9), None, "FUA write");
    // Kill with the connection still open: no NBD_CMD_DISC, no shutdown
    // flush, nothing but what was acknowledged.
    server.kill();
    drop(c);
    let export = image.export();
    // The dead client's exclusive lock and watch time out only after ~30 s;
    // removing the image would wait for that, so it stays in the
    // throwaway cluster.
    std::mem::forget(image);
    assert_eq!(export[12_345..12_345 + a.len()], a[..], "flushed write");
    assert_eq!(export[5 << 20..(5 << 20) + b.len()], b[..], "FUA write");
}

/// A snapshot is served read-only with the snapshot's content.
#[test]
fn snapshot_is_read_only() {
    let image = ceph::Image::simple("4M", "1M");
    {
        // Closed gracefully before the snapshot: `snap create` notifies
        // every watcher of the image and waits for their answers.
        let server = serve(&image, &[]);
        let mut c = Raw::negotiate(&server, HeaderMode::Structured);
        c.write(MIB, b"snapshot content");
        assert_eq!(c.call(Cmd::Flush, CmdFlags::empty(), 0, 0), None);
    }
    image.snapshot("s1");
    let mut server = serve(&image, &["--filter=log"]);
    let conf = format!("conf={}", ceph::conf().display());
    let snap = format!("{}@s1", image.spec());
    let ro = Nbdd(Server::start(Transport::Unix, &["rbd", &snap, &conf]));
    let info = nbdinfo_json(&ro);
    assert!(info.get("exports").arr()[0].get("is_read_only").bool());
    let mut c = Raw::negotiate(&ro, HeaderMode::Structured);
    assert_eq!(c.read(MIB, 16), b"snapshot content");
    c.request_with(Cmd::Write, CmdFlags::empty(), 7, 0, 4, b"nope");
    assert_eq!(c.status(7), Some(ErrorCode::Perm), "a write to a snapshot");
    // The head, through a filter (the synchronous path), is still writable.
    let mut h = Raw::negotiate(&server, HeaderMode::Structured);
    h.write(0, b"head");
    assert_eq!(h.read(0, 4), b"head");
    server.assert_alive();
}

/// `--help` lists the backend, `rbd --help` every key; bad command lines
/// are one line naming the problem.
#[test]
fn help_and_start_up_errors() {
    let nbdd = env!("CARGO_BIN_EXE_nbdd");
    let help = run_ok(Command::new(nbdd).arg("--help"));
    assert!(
        help.lines().any(|l| l.trim_start().starts_with("rbd ")),
        "rbd in --help: {help}"
    );
    let help = run_ok(Command::new(nbdd).args(["rbd", "--help"]));
    for key in [
        "image=",
        "pool=",
        "namespace=",
        "snap=",
        "conf=",
        "id=",
        "keyring=",
        "timeout=",
        "connect-timeout=",
    ] {
        assert!(
            help.contains(&format!("  {key}")),
            "rbd --help lists {key}: {help}"
        );
    }
    let conf = format!("conf={}", ceph::conf().display());
    for (args, want) in [
        (vec!["rbd"], "rbd: missing parameter image"),
        (
            vec!["rbd", "rbd/nope", conf.as_str()],
            "rbd: rbd/nope: no such image",
        ),
        (
            vec!["rbd", "nopool/x", conf.as_str()],
            "rbd: pool 'nopool' does not exist",
        ),
        (
            vec!["rbd", "x", "colour=blue"],
            "unknown parameter 'colour' for backend rbd",
        ),
    ] {
        let out = run(Command::new(nbdd)
            .arg("-f")
            .arg("-U")
            .arg("/nonexistent/sock")
            .args(&args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}
