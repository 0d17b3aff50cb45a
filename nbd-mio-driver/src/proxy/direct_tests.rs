//! [`super::direct::Direct`] against a scripted upstream on a socket pair:
//! each test plays the server side with nbd-proto's reply encoders.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use nbd_backends::{Extent, ExtentFlags, ZeroFlags};
use nbd_proto::client::ClientNegotiated;
use nbd_proto::wire::reply::{
    BlockStatusExtent, ReplyTo, encode_block_status, encode_error, encode_offset_data_header,
    encode_offset_hole,
};
use nbd_proto::wire::request::RequestHeader;
use nbd_proto::{Command, ErrorCode, HeaderMode, TransmissionFlags};

use super::direct::Direct;
use super::handshake::Stream;

const SIZE: u64 = 1 << 20;
const BASE_ID: u32 = 7;

fn negotiated(flags: TransmissionFlags) -> ClientNegotiated {
    ClientNegotiated {
        mode: HeaderMode::Structured,
        size: SIZE,
        flags: flags | TransmissionFlags::HAS_FLAGS,
        block_sizes: None,
        base_allocation: Some(BASE_ID),
        tls: false,
        oldstyle: false,
    }
}

/// Read one request header (and a WRITE's payload) from the client.
fn request(s: &mut UnixStream) -> RequestHeader {
    let mut h = [0u8; 28];
    s.read_exact(&mut h).unwrap();
    let (hdr, _) = RequestHeader::decode(&h, HeaderMode::Structured)
        .unwrap()
        .unwrap();
    if hdr.command == Command::Write {
        let mut data = vec![0u8; hdr.len as usize];
        s.read_exact(&mut data).unwrap();
    }
    hdr
}

/// A client on one end; `server` answers on the other.
fn pair(
    flags: TransmissionFlags,
    server: impl FnOnce(UnixStream) + Send + 'static,
) -> (Direct, JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || server(b));
    (Direct::new(Stream::Unix(a), negotiated(flags)).unwrap(), t)
}

fn to(h: &RequestHeader) -> ReplyTo {
    ReplyTo {
        cookie: h.cookie,
        offset: h.offset,
    }
}

#[test]
fn read_assembles_data_and_hole_chunks() {
    let (mut d, t) = pair(TransmissionFlags::empty(), |mut s| {
        let h = request(&mut s);
        assert_eq!((h.command, h.offset, h.len), (Command::Read, 4096, 8));
        let mut out = [0u8; 64];
        let n =
            encode_offset_hole(HeaderMode::Structured, to(&h), 4096, 4, false, &mut out).unwrap();
        s.write_all(&out[..n]).unwrap();
        let n = encode_offset_data_header(HeaderMode::Structured, to(&h), 4100, 4, true, &mut out)
            .unwrap();
        s.write_all(&out[..n]).unwrap();
        s.write_all(b"abcd").unwrap();
    });
    let mut buf = [0xffu8; 8];
    d.read(4096, &mut buf).unwrap();
    assert_eq!(&buf, b"\0\0\0\0abcd");
    t.join().unwrap();
}

#[test]
fn error_chunk_maps_to_errno_and_the_connection_stays_usable() {
    let (mut d, t) = pair(TransmissionFlags::SEND_FLUSH, |mut s| {
        let h = request(&mut s);
        let mut out = [0u8; 64];
        let n = encode_error(
            HeaderMode::Structured,
            to(&h),
            ErrorCode::NoSpc,
            "full",
            &mut out,
        )
        .unwrap();
        s.write_all(&out[..n]).unwrap();
        let h = request(&mut s);
        assert_eq!(h.command, Command::Flush);
        let n =
            nbd_proto::wire::reply::encode_none(HeaderMode::Structured, to(&h), &mut out).unwrap();
        s.write_all(&out[..n]).unwrap();
    });
    let e = d.write(0, b"data", false).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    d.flush().unwrap();
    t.join().unwrap();
}

#[test]
fn extents_are_clipped_to_the_request() {
    let (mut d, t) = pair(TransmissionFlags::empty(), |mut s| {
        let h = request(&mut s);
        assert_eq!((h.command, h.len), (Command::BlockStatus, 8192));
        let ext = [
            BlockStatusExtent {
                len: 4096,
                flags: 0,
            },
            BlockStatusExtent {
                len: 65536,
                flags: 3,
            },
        ];
        let mut out = [0u8; 128];
        let n = encode_block_status(
            HeaderMode::Structured,
            to(&h),
            BASE_ID,
            &ext,
            true,
            &mut out,
        )
        .unwrap();
        s.write_all(&out[..n]).unwrap();
    });
    let mut out = [Extent::default(); 4];
    assert_eq!(d.extents(0, 8192, &mut out).unwrap(), 2);
    assert_eq!(out[0].len, 4096);
    assert_eq!(out[1].len, 4096, "clipped to the 8 KiB asked");
    assert_eq!(out[1].flags, ExtentFlags::HOLE | ExtentFlags::ZERO);
    t.join().unwrap();
}

#[test]
fn emulation_without_upstream_support() {
    // No WRITE_ZEROES, FLUSH, TRIM or FAST_ZERO upstream: zeroes become a
    // WRITE, FAST fails before any request, flush and trim are no-ops.
    let (mut d, t) = pair(TransmissionFlags::empty(), |mut s| {
        let h = request(&mut s);
        assert_eq!((h.command, h.len), (Command::Write, 1000));
        let mut out = [0u8; 64];
        let n =
            nbd_proto::wire::reply::encode_none(HeaderMode::Structured, to(&h), &mut out).unwrap();
        s.write_all(&out[..n]).unwrap();
        // Nothing else arrives before the client closes.
        assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0);
    });
    let fast = d.write_zeroes(0, 1000, ZeroFlags::FAST).unwrap_err();
    assert_eq!(fast.kind(), std::io::ErrorKind::Unsupported);
    d.write_zeroes(0, 1000, ZeroFlags::MAY_TRIM).unwrap();
    d.flush().unwrap();
    d.trim(0, 4096, false).unwrap();
    d.cache(0, 4096).unwrap();
    drop(d);
    t.join().unwrap();
}

#[test]
fn a_dead_upstream_fails_with_eio_from_then_on() {
    let (mut d, t) = pair(TransmissionFlags::empty(), |mut s| {
        let _ = request(&mut s);
        // Close without answering.
    });
    let mut buf = [0u8; 512];
    assert_eq!(
        d.read(0, &mut buf).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    assert_eq!(
        d.read(0, &mut buf).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    t.join().unwrap();
}

#[test]
fn a_reply_for_another_cookie_kills_the_connection() {
    let (mut d, t) = pair(TransmissionFlags::empty(), |mut s| {
        let h = request(&mut s);
        let mut out = [0u8; 64];
        let wrong = ReplyTo {
            cookie: nbd_proto::Cookie(h.cookie.0 + 100),
            offset: h.offset,
        };
        let n =
            nbd_proto::wire::reply::encode_none(HeaderMode::Structured, wrong, &mut out).unwrap();
        s.write_all(&out[..n]).unwrap();
    });
    let mut buf = [0u8; 512];
    assert_eq!(
        d.read(0, &mut buf).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    t.join().unwrap();
}
