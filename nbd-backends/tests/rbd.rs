//! The rbd backend against the test cluster (`cargo xtask test` starts it;
//! built only with `--features rbd`): what the conformance suite cannot
//! see — extents at object granularity, the asynchronous interface and its
//! eventfd, start-up errors, the minimum-caps user.

#[path = "ceph/mod.rs"]
mod ceph;

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nbd_backends::aio::{AioOp, AioQueue, Completion, Submitted};
use nbd_backends::rbd::Params;
use nbd_backends::{Backend, Caps, Extent, ExtentFlags, RbdBackend, ZeroFlags};

const OBJ: u64 = 64 * 1024;

fn params(image: &str, extra: &[(&str, &str)]) -> Params {
    let conf = ceph::conf().display().to_string();
    Params::parse(|k| match k {
        "image" => Some(image),
        "conf" => Some(conf.as_str()),
        _ => extra.iter().find(|e| e.0 == k).map(|e| e.1),
    })
    .unwrap()
}

fn open(image: &ceph::Image) -> RbdBackend {
    RbdBackend::open(&params(&image.name, &[]), false).unwrap()
}

fn extents(b: &dyn Backend) -> Vec<(u64, bool)> {
    let mut out = vec![Extent::default(); 64];
    let n = b.extents(0, b.size(), &mut out).unwrap();
    out[..n]
        .iter()
        .map(|e| {
            (
                e.len,
                e.flags.contains(ExtentFlags::HOLE | ExtentFlags::ZERO),
            )
        })
        .collect()
}

/// Holes are exactly the objects that do not exist, with or without the
/// object map (fast-diff).
#[test]
fn extents_are_absent_objects() {
    for features in [
        &["layering"][..],
        &["layering", "exclusive-lock", "object-map", "fast-diff"],
    ] {
        let mut extra = vec!["--object-size", "64K"];
        for f in features {
            extra.extend(["--image-feature", f]);
        }
        let image = ceph::Image::create("1M", &extra);
        let b = open(&image);
        assert_eq!(
            extents(&b),
            [(1 << 20, true)],
            "{features:?}: a new image is one hole"
        );
        b.write_at(3 * OBJ + 10, &[1; 100], false).unwrap();
        b.write_at(10 * OBJ - 1, &[2; 2], false).unwrap();
        let want = [
            (3 * OBJ, true),
            (OBJ, false),
            (5 * OBJ, true),
            (2 * OBJ, false),
            (5 * OBJ, true),
        ];
        assert_eq!(extents(&b), want, "{features:?}");
        // Zeroing (may trim) whole objects deletes them: holes again.
        b.write_zeroes(9 * OBJ, 2 * OBJ, ZeroFlags::MAY_TRIM)
            .unwrap();
        let after = [(3 * OBJ, true), (OBJ, false), (12 * OBJ, true)];
        assert_eq!(extents(&b), after, "{features:?}");
        // A thick (NO_HOLE) zero allocates.
        b.write_zeroes(0, OBJ, ZeroFlags::empty()).unwrap();
        assert_eq!(extents(&b)[0], (OBJ, false), "{features:?}");
        let mut one = [Extent::default()];
        assert_eq!(b.extents(OBJ, 1, &mut one).unwrap(), 1);
        assert_eq!(one[0].len, 1, "clipped to the request");
    }
}

#[test]
fn caps_block_size_and_snapshots() {
    let image = ceph::Image::simple("1M", "64K");
    let b = open(&image);
    let caps = b.caps();
    for c in [
        Caps::FLUSH,
        Caps::FUA,
        Caps::TRIM,
        Caps::WRITE_ZEROES,
        Caps::FAST_ZERO,
    ] {
        assert!(caps.contains(c), "{c:?}");
    }
    assert!(caps.contains(Caps::MULTI_CONN | Caps::RESIZE | Caps::EXTENTS | Caps::CACHE));
    let bs = b.block_size().unwrap();
    assert_eq!(
        (bs.minimum, bs.preferred, bs.maximum),
        (1, 64 * 1024, 32 << 20)
    );
    assert!(b.description().unwrap().contains(&image.spec()));
    b.write_at(0, b"before", true).unwrap();
    image.snapshot("s1");
    b.write_at(0, b"after!", true).unwrap();
    let snap = RbdBackend::open(&params(&image.name, &[("snap", "s1")]), false).unwrap();
    assert!(snap.caps().contains(Caps::READ_ONLY));
    assert!(!snap.caps().contains(Caps::RESIZE));
    let mut got = [0u8; 6];
    snap.read_at(0, &mut got).unwrap();
    assert_eq!(&got, b"before");
    let e = snap.write_at(0, b"x", false).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    // `-r` opens the head read-only too.
    let ro = RbdBackend::open(&params(&image.name, &[]), true).unwrap();
    assert!(ro.caps().contains(Caps::READ_ONLY));
    ro.read_at(0, &mut got).unwrap();
    assert_eq!(&got, b"after!");
    b.cache(0, 1 << 20).unwrap();
}

/// Wait for `n` completions, blocking in poll(2) on the notify fd so that
/// the test fails if librbd never signals it.
fn collect(a: &mut dyn AioQueue, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions",
            got.len()
        );
        let fd = a.notify_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let t = rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&t)).unwrap();
        a.poll_completions(&mut |c| got.push(c));
    }
    got
}

#[test]
fn async_requests_in_flight_complete_through_the_eventfd() {
    let image = ceph::Image::simple("4M", "64K");
    let b = open(&image);
    let mut q = b.as_async().expect("rbd is asynchronous").queue().unwrap();
    let a = &mut *q;
    let _ = a.notify_fd().as_fd();
    let block = |i: u64| vec![(i as u8).wrapping_mul(13) | 1; 4096];
    for i in 0..64u64 {
        let op = AioOp::Write {
            offset: i * 8192,
            fua: i % 8 == 0,
        };
        assert!(matches!(
            a.submit(op, block(i), 1000 + i),
            Submitted::Pending
        ));
    }
    let done = collect(a, 64);
    let mut tags: Vec<u64> = done.iter().map(|c| c.0).collect();
    tags.sort_unstable();
    assert_eq!(tags, (1000..1064).collect::<Vec<_>>(), "each tag once");
    for (tag, r, buf) in done {
        r.unwrap();
        assert_eq!(buf, block(tag - 1000), "the write buffer comes back");
    }
    // Reads land behind a 16-byte prefix in a recycled (too short) buffer.
    for i in 0..64u64 {
        let op = AioOp::Read {
            offset: i * 8192,
            at: 16,
            len: 4096,
        };
        assert!(matches!(a.submit(op, vec![7; 100], i), Submitted::Pending));
    }
    let reads: HashMap<u64, Vec<u8>> = collect(a, 64)
        .into_iter()
        .map(|(tag, r, buf)| {
            r.unwrap();
            (tag, buf)
        })
        .collect();
    for i in 0..64u64 {
        assert_eq!(reads[&i][16..], block(i)[..], "read {i}");
        assert_eq!(reads[&i][..16], [7; 16], "the prefix is left alone");
    }
    // Flush, trim and zero go the same way.
    let ops = [
        AioOp::Flush,
        AioOp::Trim {
            offset: 0,
            len: 2 * OBJ,
            fua: true,
        },
        AioOp::Zero {
            offset: 8192,
            len: 4096,
            flags: ZeroFlags::empty(),
        },
        AioOp::Zero {
            offset: OBJ * 3,
            len: OBJ,
            flags: ZeroFlags::MAY_TRIM | ZeroFlags::FAST,
        },
    ];
    for (i, op) in ops.into_iter().enumerate() {
        assert!(matches!(
            a.submit(op, Vec::new(), i as u64),
            Submitted::Pending
        ));
    }
    for (_, r, _) in collect(a, ops.len()) {
        r.unwrap();
    }
    let mut z = [1u8; 4096];
    b.read_at(8192, &mut z).unwrap();
    assert_eq!(z, [0; 4096]);
    // What completes at once: nothing to do, refused, out of range.
    let mut now = |op, buf| match a.submit(op, buf, 9) {
        Submitted::Now(r, _) => r,
        Submitted::Pending => panic!("{op:?} should complete at once"),
    };
    now(
        AioOp::Read {
            offset: 0,
            at: 0,
            len: 0,
        },
        Vec::new(),
    )
    .unwrap();
    let fast = now(
        AioOp::Zero {
            offset: 0,
            len: 1,
            flags: ZeroFlags::FAST,
        },
        Vec::new(),
    );
    assert_eq!(fast.unwrap_err().kind(), std::io::ErrorKind::Unsupported);
    let past = now(
        AioOp::Read {
            offset: 4 << 20,
            at: 0,
            len: 1,
        },
        Vec::new(),
    );
    assert_eq!(past.unwrap_err().raw_os_error(), Some(libc::EINVAL));
    let past = now(
        AioOp::Write {
            offset: (4 << 20) - 1,
            fua: false,
        },
        vec![0; 2],
    );
    assert_eq!(past.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(a.poll_completions(&mut |_| panic!("no completion")), 0);
    // A second queue (another event loop) gets its own completions only.
    let mut q2 = b.as_async().unwrap().queue().unwrap();
    for i in 0..8u64 {
        let op = AioOp::Read {
            offset: i * 8192,
            at: 0,
            len: 4096,
        };
        assert!(matches!(
            q2.submit(op, Vec::new(), 500 + i),
            Submitted::Pending
        ));
    }
    let mut tags: Vec<u64> = collect(&mut *q2, 8).into_iter().map(|c| c.0).collect();
    tags.sort_unstable();
    assert_eq!(tags, (500..508).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(q.poll_completions(&mut |c| panic!("q1 got {}", c.0)), 0);
    // A loop that ends with requests in flight: the queue goes first, the
    // requests still finish (their buffers freed), and closing the image
    // waits for them instead of hanging or crashing.
    for i in 0..16u64 {
        let op = AioOp::Write {
            offset: i * 4096,
            fua: true,
        };
        assert!(matches!(
            q2.submit(op, vec![9; 4096], i),
            Submitted::Pending
        ));
    }
    drop(q2);
    drop(q);
    b.flush().unwrap();
    drop(b);
    assert_eq!(
        image.export()[..4096],
        [9; 4096],
        "the orphaned writes landed"
    );
}

/// Data a FUA write acknowledged is visible to a fresh client at once.
#[test]
fn fua_write_is_in_the_cluster_when_it_completes() {
    let image = ceph::Image::simple("1M", "64K");
    let b = open(&image);
    let mut q = b.as_async().unwrap().queue().unwrap();
    let a = &mut *q;
    let data = vec![0xc3; 70_000];
    assert!(matches!(
        a.submit(
            AioOp::Write {
                offset: 1000,
                fua: true
            },
            data.clone(),
            1
        ),
        Submitted::Pending
    ));
    collect(a, 1).remove(0).1.unwrap();
    assert_eq!(image.export()[1000..71_000], data[..]);
}

#[test]
fn the_minimum_caps_user_serves_an_image() {
    let image = ceph::Image::simple("1M", "64K");
    let keyring = ceph::nbdd_keyring().display().to_string();
    let p = params(
        &image.name,
        &[("id", "nbdd"), ("keyring", keyring.as_str())],
    );
    let b = RbdBackend::open(&p, false).unwrap();
    b.write_at(5, b"hello", true).unwrap();
    b.trim(OBJ, OBJ, false).unwrap();
    b.resize(2 << 20).unwrap();
    assert_eq!(b.size(), 2 << 20);
    assert_eq!(extents(&b), [(OBJ, false), ((2 << 20) - OBJ, true)]);
    let mut got = [0u8; 5];
    b.read_at(5, &mut got).unwrap();
    assert_eq!(&got, b"hello");
    // A wrong key is refused with a message naming the user.
    let bad = params(
        &image.name,
        &[("id", "nobody"), ("keyring", keyring.as_str())],
    );
    let e = RbdBackend::open(&bad, false).err().unwrap();
    assert!(e.contains("client.nobody") && e.contains("keyring="), "{e}");
}

#[test]
fn start_up_errors_are_one_clear_line() {
    let image = ceph::Image::simple("1M", "64K");
    let e = |p: &Params| RbdBackend::open(p, false).err().unwrap();
    let msg = e(&params(&image.name, &[("pool", "nopool")]));
    assert_eq!(msg, "rbd: pool 'nopool' does not exist");
    let msg = e(&params("noimage", &[]));
    assert_eq!(msg, "rbd: rbd/noimage: no such image");
    let msg = e(&params(&image.name, &[("snap", "nosnap")]));
    assert!(msg.ends_with("no such image or snapshot"), "{msg}");
    let conf = Params::parse(|k| match k {
        "image" => Some("x"),
        "conf" => Some("/nonexistent/ceph.conf"),
        _ => None,
    })
    .unwrap();
    assert!(
        e(&conf).starts_with("rbd: conf=/nonexistent/ceph.conf:"),
        "{}",
        e(&conf)
    );
}

/// A cluster that is down: the connect timeout bounds the wait.
#[test]
fn a_cluster_that_is_down_fails_within_connect_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("nbdd-rbd-down-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("ceph.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nmon host = [v2:127.0.0.1:{port}]\nauth client required = none\n\
             log to stderr = false\nlog file = \"\"\n"
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let p = Params::parse(|k| match k {
        "image" => Some("x"),
        "conf" => Some(conf_s.as_str()),
        "connect-timeout" => Some("2"),
        _ => None,
    })
    .unwrap();
    let t = Instant::now();
    let e = RbdBackend::open(&p, false).err().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        e.contains("connect-timeout=2 s") && e.contains("is the cluster up"),
        "{e}"
    );
}
