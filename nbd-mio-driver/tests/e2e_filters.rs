//! End-to-end tests of nbdkit's filters as nbdd has them, with real
//! clients (qemu-img, qemu-io, nbdinfo, nbdcopy, nbdsh): the same command
//! lines nbdkit's manual pages give. `NBDD_TEST_SERVER=nbdkit cargo test
//! -p nbd-mio-driver --test e2e_filters` runs them against nbdkit (1.32);
//! the few differences are spelled out where they are checked.

mod common;
#[path = "e2e_plugins/nginx.rs"]
mod nginx;
#[path = "e2e_filters/util.rs"]
mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Flavor, Server, TempDir, Transport, random_file, require_tool, run, run_ok, sha256};
use util::{captive, info, nbdsh, qemu_io, tool};

/// virt-v2v's and KubeVirt's importer's stack, exactly their command line:
/// an HTTP image copied with qemu-img while the web server is killed and
/// restarted mid-copy; the copy completes and is exact. (nginx's `/slow/`
/// stretches the copy so that the outage falls in its middle; without
/// `--filter=retry` the copy fails.)
#[test]
fn cache_cacheextents_retry_over_curl_survive_a_web_server_restart() {
    let tmp = TempDir::new("filters-v2v");
    let mut web = nginx::Nginx::start(tmp.path());
    let image = web.root().join("disk.img");
    random_file(&image, 8 << 20, 7);
    let url = format!("http://127.0.0.1:{}/slow/disk.img", web.port);
    let srv = Server::start(
        Transport::Unix,
        &[
            "--filter=cache",
            "--filter=cacheextents",
            "--filter=retry",
            "curl",
            &url,
            "cache-on-read=true",
            "cache-max-size=1G",
        ],
    );
    let out = tmp.path().join("copy.img");
    let mut copy = Command::new(require_tool("qemu-img", "qemu-utils"))
        .args(["convert", "-f", "raw", "-O", "raw", "-S", "0"])
        .arg(srv.uri())
        .arg(&out)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        copy.try_wait().unwrap().is_none(),
        "the copy is still running"
    );
    web.kill();
    let served_before = web.requests();
    std::thread::sleep(Duration::from_millis(1000));
    web.restart();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = copy.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "copy hung");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "qemu-img convert: {status}\n{}",
        srv.stderr()
    );
    assert_eq!(sha256(&out), sha256(&image), "the copy is exact");
    assert!(
        web.requests() > served_before,
        "the restarted server served the rest of the copy"
    );
}

/// `--filter=F tmpdisk`: each client keeps its own fresh disk through the
/// filters (nbdd opens a handle per connection through every layer).
#[test]
fn tmpdisk_through_filters_is_still_one_disk_per_client() {
    let srv = Server::start(
        Transport::Unix,
        &[
            "--filter=truncate",
            "--filter=offset",
            "--filter=stats",
            "tmpdisk",
            "32M",
            "offset=1M",
            "truncate=16M",
            "statsfile=/dev/null",
        ],
    );
    let code = format!(
        "h2 = nbd.NBD()\nh2.connect_uri({:?})\n\
         h.pwrite(b'mine' * 1024, 8 << 20)\n\
         print(h.pread(4, 8 << 20) == b'mine', h2.pread(4, 8 << 20) == b'mine', h.get_size())",
        srv.uri()
    );
    assert_eq!(nbdsh(&srv.uri(), &code).trim(), "True False 16777216");
}

#[test]
fn ip_allows_and_denies_by_address() {
    let unix = Server::start(
        Transport::Unix,
        &["--filter=ip", "memory", "1M", "deny=allunix"],
    );
    assert!(!run(tool("nbdinfo").arg(unix.uri())).status.success());
    let unix = Server::start(
        Transport::Unix,
        &["--filter=ip", "memory", "1M", "allow=anyunix", "deny=all"],
    );
    assert_eq!(info(&unix.uri()).get("export-size").u64(), 1 << 20);
    if common::flavor() == Flavor::Nbdkit {
        // Debian's nbdkit 1.32.5 refuses every address rule here ("don't
        // know how to parse rule: allow=127.0.0.1"); keywords work.
        return;
    }
    let ok = Server::start(
        Transport::Tcp,
        &[
            "--filter=ip",
            "memory",
            "1M",
            "allow=127.0.0.1,::1",
            "deny=all",
        ],
    );
    assert_eq!(info(&ok.uri()).get("export-size").u64(), 1 << 20);
    // Refused TCP clients: outside every allow rule, or matching a deny
    // rule (allow is the default); the server keeps serving others.
    for rules in [
        ["allow=10.0.0.0/8", "deny=all"],
        ["deny=127.0.0.0/8", "deny=::1"],
    ] {
        let mut args = vec!["--filter=ip", "memory", "1M"];
        args.extend(rules);
        let mut denied = Server::start(Transport::Tcp, &args);
        let out = run(tool("nbdinfo").arg(denied.uri()));
        assert!(
            !out.status.success(),
            "{rules:?}: a denied client is refused"
        );
        denied.assert_alive();
    }
}

/// limit=N: N clients are served, the next is refused (at connect, by
/// preconnect), and one leaving makes room. Default 1.
#[test]
fn limit_refuses_the_client_over_the_limit_until_one_leaves() {
    for (args, n) in [(&[][..], 1), (&["limit=2"][..], 2)] {
        let mut all = vec!["--filter=limit", "memory", "1M"];
        all.extend(args);
        let srv = Server::start(Transport::Unix, &all);
        // h is client 1; clients 2..=n join, client n+1 is refused, then
        // client 2 (or h itself when n = 1) leaves and a retry is served.
        let code = format!(
            "import time\n\
             def join():\n    c = nbd.NBD()\n    try:\n        c.connect_uri({u:?})\n        return c\n    except nbd.Error:\n        return None\n\
             more = [join() for i in range({extra})]\n\
             print('served:', 1 + sum(c is not None for c in more))\n\
             print('next:', 'refused' if join() is None else 'served')\n\
             (more[0] if more else h).shutdown()\n\
             for i in range(100):\n    c = join()\n    if c is not None:\n        print('after one left: served')\n        break\n    time.sleep(0.05)",
            u = srv.uri(),
            extra = n - 1,
        );
        let out = nbdsh(&srv.uri(), &code);
        assert_eq!(
            out.trim(),
            format!("served: {n}\nnext: refused\nafter one left: served"),
            "limit {n}: {}",
            srv.stderr()
        );
    }
}

/// blocksize-policy advertises a 512-byte minimum and refuses what breaks
/// it; blocksize in front turns unaligned client requests into aligned
/// read-modify-writes that pass.
#[test]
fn blocksize_policy_advertises_and_blocksize_fixes_up() {
    let strict = [
        "--filter=blocksize-policy",
        "memory",
        "1M",
        "blocksize-minimum=512",
        "blocksize-preferred=64k",
        "blocksize-error-policy=error",
    ];
    let srv = Server::start(Transport::Unix, &strict);
    let j = info(&srv.uri());
    assert_eq!(j.get("block_size_minimum").u64(), 512);
    assert_eq!(j.get("block_size_preferred").u64(), 65536);
    let out = nbdsh(
        &srv.uri(),
        "h.set_strict_mode(0)\ntry:\n    h.pwrite(b'x', 1)\n    print('served')\nexcept nbd.Error as e:\n    print(e.errnum == errno.EINVAL)",
    );
    assert_eq!(out.trim(), "True", "an unaligned write is refused");
    let mut fixed = vec!["--filter=blocksize"];
    fixed.extend(&strict);
    fixed.push("minblock=512");
    let srv = Server::start(Transport::Unix, &fixed);
    assert_eq!(info(&srv.uri()).get("block_size_minimum").u64(), 1);
    let out = qemu_io(
        &srv,
        &["write -P 0x11 7 3", "read -P 0x11 7 3", "read -P 0 0 7"],
    );
    assert!(!out.contains("error") && !out.contains("fail"), "{out}");
}

#[test]
fn flags_of_truncate_fua_multi_conn_nozero_and_noextents() {
    let size = |args: &[&str]| {
        let s = Server::start(Transport::Unix, args);
        info(&s.uri()).get("export-size").u64()
    };
    assert_eq!(
        size(&["--filter=truncate", "memory", "1000", "round-up=512"]),
        1024
    );
    assert_eq!(
        size(&["--filter=truncate", "memory", "1M", "truncate=3000"]),
        3000
    );
    let flag = |args: &[&str], key: &str| {
        let s = Server::start(Transport::Unix, args);
        info(&s.uri()).get(key).bool()
    };
    assert!(!flag(&["--filter=fua", "memory", "1M"], "can_fua"));
    assert!(flag(
        &["--filter=fua", "memory", "1M", "fuamode=emulate"],
        "can_fua"
    ));
    assert!(!flag(
        &[
            "--filter=multi-conn",
            "memory",
            "1M",
            "multi-conn-mode=disable"
        ],
        "can_multi_conn"
    ));
    assert!(flag(
        &[
            "--filter=multi-conn",
            "tmpdisk",
            "1M",
            "multi-conn-mode=unsafe"
        ],
        "can_multi_conn"
    ));
    // nozero: zeroes become writes and fast zeroes fail. (nbdkit also
    // stops advertising them; nbdd's driver always advertises
    // WRITE_ZEROES and FAST_ZERO and answers them itself.)
    let nozero = Server::start(Transport::Unix, &["--filter=nozero", "memory", "1M"]);
    let out = nbdsh(
        &nozero.uri(),
        "h.pwrite(b'x' * 4096, 0)\n\
         try:\n    h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)\n    print('fast')\n\
         except nbd.Error:\n    print('refused')\n\
         if h.can_zero():\n    h.zero(4096, 0)\nelse:\n    h.pwrite(bytes(4096), 0)\n\
         print(h.pread(4096, 0) == bytes(4096))",
    );
    assert_eq!(out.trim(), "refused\nTrue");
    // A sparse disk with one written block, mapped with and without
    // noextents: everything is data with it.
    let map = |filters: &[&str]| {
        let mut args: Vec<&str> = filters.to_vec();
        args.extend(["memory", "4M"]);
        let s = Server::start(Transport::Unix, &args);
        qemu_io(&s, &["write -P 1 1M 64k"]);
        run_ok(tool("nbdinfo").args(["--map", &s.uri()]))
    };
    assert!(map(&[]).contains("hole"), "memory has holes");
    assert!(!map(&["--filter=noextents"]).contains("hole"));
}

#[test]
fn protect_refuses_changes_to_the_protected_range_only() {
    let srv = Server::start(
        Transport::Unix,
        &[
            "--filter=protect",
            "memory",
            "1M",
            "protect=0-0x1bd",
            "protect=~0-0x7ffff",
        ],
    );
    let out = nbdsh(
        &srv.uri(),
        "def w(data, at):\n    try:\n        h.pwrite(data, at)\n        return 'ok'\n    except nbd.Error as e:\n        return 'EPERM' if e.errnum == errno.EPERM else str(e)\n\
         print(w(b'x', 0), w(bytes(16), 16), w(b'x', 0x1be), w(b'x', 0x80000))",
    );
    assert_eq!(out.trim(), "EPERM ok ok EPERM");
}

/// checkwrite: a correct copy onto itself passes, a wrong byte is EIO.
#[test]
fn checkwrite_checks_a_copy_instead_of_writing() {
    let tmp = TempDir::new("filters-checkwrite");
    let img = tmp.path().join("disk.img");
    random_file(&img, 4 << 20, 3);
    let before = sha256(&img);
    let srv = Server::start(
        Transport::Unix,
        &["--filter=checkwrite", "file", &img.display().to_string()],
    );
    run_ok(tool("nbdcopy").args([&srv.uri(), &srv.uri()]));
    let out = nbdsh(
        &srv.uri(),
        "data = h.pread(512, 4096)\nh.pwrite(data, 4096)\n\
         try:\n    h.pwrite(bytes([data[0] ^ 1]), 4096)\n    print('written')\n\
         except nbd.Error as e:\n    print(e.errnum == errno.EIO)",
    );
    assert_eq!(out.trim(), "True");
    assert_eq!(sha256(&img), before, "the file was never written");
}

#[test]
fn xz_and_gzip_images_serve_their_contents() {
    let tmp = TempDir::new("filters-compressed");
    let img = tmp.path().join("disk.img");
    random_file(&img, 6 << 20, 11);
    let want = sha256(&img);
    let xz = require_tool("xz", "xz-utils");
    run_ok(
        Command::new(xz)
            .args(["-k", "-T1", "--block-size=1MiB"])
            .arg(&img),
    );
    run_ok(
        Command::new(require_tool("gzip", "gzip"))
            .args(["-k", "-1"])
            .arg(&img),
    );
    for (filter, file) in [("xz", "disk.img.xz"), ("gzip", "disk.img.gz")] {
        let path = tmp.path().join(file).display().to_string();
        let srv = Server::start(
            Transport::Unix,
            &[&format!("--filter={filter}"), "file", &path],
        );
        let j = info(&srv.uri());
        assert!(j.get("is_read_only").bool(), "{filter}");
        let out = tmp.path().join(format!("{filter}.out"));
        run_ok(tool("nbdcopy").arg(srv.uri()).arg(&out));
        assert_eq!(sha256(&out), want, "{filter}");
        // Random access across a block boundary (1 MiB blocks).
        let code = format!(
            "d = open({:?}, 'rb').read()\nprint(h.pread(12, 1048570) == d[1048570:1048582])",
            img.display().to_string()
        );
        assert_eq!(nbdsh(&srv.uri(), &code).trim(), "True", "{filter}");
    }
}

#[test]
fn retry_outlasts_a_passing_failure() {
    let tmp = TempDir::new("filters-retry");
    let trigger = tmp.path().join("fail");
    std::fs::write(&trigger, b"").unwrap();
    let srv = Server::start(
        Transport::Unix,
        &[
            "--filter=retry",
            "--filter=error",
            "memory",
            "1M",
            "error-rate=100%",
            &format!("error-file={}", trigger.display()),
            "retry-delay=1",
        ],
    );
    let t2 = trigger.clone();
    let remover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        std::fs::remove_file(t2).unwrap();
    });
    let out = nbdsh(&srv.uri(), "print(len(h.pread(4096, 0)))");
    remover.join().unwrap();
    assert_eq!(out.trim(), "4096", "{}", srv.stderr());
}

/// error at `-v`: every injected error is logged with its command, range
/// and errno (nbdkit logs the errno and command, at error level; nbdd
/// adds the range and logs at `-v`, as the driver also reports the error).
#[test]
fn error_logs_each_injected_error_at_verbose() {
    let srv = Server::start(
        Transport::Unix,
        &[
            "-v",
            "--filter=error",
            "memory",
            "1M",
            "error-rate=1",
            "error=ENOSPC",
        ],
    );
    let out = nbdsh(
        &srv.uri(),
        "for f, a in ((h.pread, (4096, 8192)), (h.pwrite, (bytes(512), 65536)), (h.flush, ())):\n    try:\n        f(*a)\n    except nbd.Error as e:\n        print(e.errnum)",
    );
    let enospc = libc::ENOSPC.to_string();
    // nbdkit 1.32's error filter cannot fail flushes (error-flush is 1.40).
    let failed = if common::flavor() == Flavor::Nbdd {
        3
    } else {
        2
    };
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![&*enospc; failed],
        "{}",
        srv.stderr()
    );
    // The log line is written when the request fails, before the reply.
    let stderr = srv.stderr();
    let want: Vec<String> = if common::flavor() == Flavor::Nbdd {
        let e = format!("error filter: injecting ENOSPC (errno {enospc}) into");
        vec![
            format!("{e} pread at offset 8192 length 4096"),
            format!("{e} pwrite at offset 65536 length 512"),
            format!("{e} flush\n"),
        ]
    } else {
        ["pread", "pwrite"]
            .map(|op| format!("injecting ENOSPC error into {op}"))
            .to_vec()
    };
    for w in &want {
        assert!(stderr.contains(w), "no '{w}' in stderr:\n{stderr}");
    }
}

/// rate=8M is 1 MiB/s with a 2 s bucket: 4 MiB (of data: pattern has no
/// holes to skip) cannot come in under ~2 s. (A lower bound only: a slow
/// machine cannot make it fail.)
#[test]
fn rate_limits_bandwidth() {
    let srv = Server::start(
        Transport::Unix,
        &["--filter=rate", "pattern", "4M", "rate=8M"],
    );
    let tmp = TempDir::new("filters-rate");
    let t = Instant::now();
    run_ok(tool("nbdcopy").arg(srv.uri()).arg(tmp.path().join("out")));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "4 MiB at 1 MiB/s took {took:?}"
    );
}

/// stats writes nbdkit's report at exit; count logs its totals; log names
/// connections.
#[test]
fn stats_and_log_report_what_clients_did() {
    let tmp = TempDir::new("filters-stats");
    let stats = tmp.path().join("stats.txt");
    let log = tmp.path().join("log.txt");
    captive(
        &[
            "--filter=log",
            "--filter=stats",
            "memory",
            "1M",
            &format!("statsfile={}", stats.display()),
            &format!("logfile={}", log.display()),
        ],
        "qemu-io -f raw -c 'write -P 1 0 64k' -c 'read 0 4k' \"$uri\"",
    );
    let report = std::fs::read_to_string(&stats).unwrap();
    assert!(report.starts_with("total: "), "{report}");
    let write = report
        .lines()
        .find(|l| l.starts_with("write: "))
        .unwrap_or("");
    assert!(
        write.starts_with("write: 1 ops, ") && write.contains(" 64.00 KiB, "),
        "{report}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let flavor = common::flavor();
    let (connect, read) = if flavor == Flavor::Nbdd {
        (" Connect export=", " Read offset=0x0 count=0x1000 ")
    } else {
        (" Connect export=", " Read id=")
    };
    assert!(
        text.contains("connection=") && text.contains(connect),
        "{text}"
    );
    assert!(text.contains(read), "{text}");
}

/// exitlast: the server exits (status 0) when its last client leaves,
/// not before the first comes nor while one is still connected.
#[test]
fn exitlast_exits_when_the_last_client_leaves() {
    let mut s = util::Spawned::start(&["--filter=exitlast", "memory", "1M"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.running(), "no exit before the first client");
    let out = nbdsh(
        &s.uri(),
        "import time\nh2 = nbd.NBD()\nh2.connect_uri(h.get_uri())\nh2.shutdown()\n\
         time.sleep(0.3)\nh3 = nbd.NBD()\nh3.connect_uri(h.get_uri())\nh3.shutdown()\n\
         print(len(h.pread(512, 0)))",
    );
    assert_eq!(out.trim(), "512", "h is still served after h2 and h3 left");
    assert_eq!(
        s.wait(Duration::from_secs(10)),
        Some(0),
        "exits after h: {}",
        s.stderr()
    );
}

/// exitwhen: once the file appears new clients are refused, the connected
/// one is still served, and the server exits (status 0) when it leaves; an
/// idle server sees the file on its next poll.
#[test]
fn exitwhen_exits_after_the_file_appears() {
    let tmp = TempDir::new("filters-exitwhen");
    let flag = tmp.path().join("stop");
    let when = format!("exit-when-file-created={}", flag.display());
    let mut s = util::Spawned::start(&["--filter=exitwhen", "memory", "1M", &when]);
    let code = format!(
        "open({:?}, 'w').close()\nh2 = nbd.NBD()\n\
         try:\n    h2.connect_uri(h.get_uri())\n    print('served')\n\
         except nbd.Error:\n    print('refused')\n\
         print(len(h.pread(512, 0)))",
        flag.display().to_string()
    );
    assert_eq!(nbdsh(&s.uri(), &code).trim(), "refused\n512");
    assert_eq!(
        s.wait(Duration::from_secs(10)),
        Some(0),
        "exits after h: {}",
        s.stderr()
    );

    std::fs::remove_file(&flag).unwrap();
    let mut s = util::Spawned::start(&[
        "--filter=exitwhen",
        "memory",
        "1M",
        &when,
        "exit-when-poll=1",
    ]);
    nbdsh(&s.uri(), "print(h.get_size())");
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.running(), "no event yet");
    std::fs::write(&flag, b"").unwrap();
    assert_eq!(
        s.wait(Duration::from_secs(10)),
        Some(0),
        "the poll saw it: {}",
        s.stderr()
    );
}

/// Filter keys are blamed on the filter, one prefix per message.
#[test]
fn filter_parameter_errors_name_the_filter() {
    if common::flavor() == Flavor::Nbdkit {
        return; // nbdkit's wording differs; the point here is nbdd's.
    }
    let fails = |args: &[&str]| {
        let out = run(Command::new(env!("CARGO_BIN_EXE_nbdd"))
            .args(["-f", "-U", "/nonexistent/s"])
            .args(args));
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    };
    assert_eq!(
        fails(&["--filter=cow", "memory", "1M", "cow-block-size=3k"]),
        "nbdd: cow filter: cow-block-size=3072: must be a power of 2, >= 4K"
    );
    assert_eq!(
        fails(&["memory", "1M", "cache-on-read=true"]),
        "nbdd: parameter 'cache-on-read' belongs to the cache filter: add --filter=cache"
    );
    let e = fails(&["--filter=delay", "memory", "1M", "delay-read=soon"]);
    assert!(
        e.starts_with("nbdd: delay filter: delay-read=soon: "),
        "{e}"
    );
}
