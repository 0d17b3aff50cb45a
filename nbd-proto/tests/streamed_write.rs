//! `Connection::begin_write_stream`: a WRITE accepted on its header, its
//! payload handed out as it arrives or received by the caller directly,
//! and requests parsed again right after it (checklist 62, 69-71, 80: the
//! payload is never parsed as a request, invalid WRITEs are still
//! rejected with their usual errors).

use nbd_proto::server::{BlockSizes, Connection, Input, Negotiated, TransmissionConfig};
use nbd_proto::wire::request::RequestHeader;
use nbd_proto::{CmdFlags, Command, Cookie, ErrorCode, HeaderMode, TransmissionFlags as TF};

const SIZE: u64 = 1 << 20;

fn conn(mode: HeaderMode, flags: TF) -> Connection {
    let neg = Negotiated {
        mode,
        size: SIZE,
        flags: flags | TF::HAS_FLAGS | TF::SEND_FLUSH | TF::SEND_FUA,
        block_sizes: BlockSizes::DEFAULT,
        block_sizes_agreed: false,
        meta_contexts: 0,
        tls: false,
    };
    Connection::in_transmission(neg, TransmissionConfig::default())
}

fn header(
    mode: HeaderMode,
    cmd: Command,
    flags: CmdFlags,
    cookie: u64,
    off: u64,
    len: u64,
) -> Vec<u8> {
    let h = RequestHeader {
        flags,
        command: cmd,
        cookie: Cookie(cookie),
        offset: off,
        len,
    };
    let mut v = vec![0u8; mode.request_header_len()];
    h.encode(mode, &mut v).unwrap();
    v
}

fn write_header(cookie: u64, off: u64, len: u64) -> Vec<u8> {
    header(
        HeaderMode::Simple,
        Command::Write,
        CmdFlags::empty(),
        cookie,
        off,
        len,
    )
}

/// The payload in two parts, the first through `WriteData` and the second
/// "read elsewhere"; then a FLUSH right after it is a request again.
#[test]
fn payload_is_handed_out_then_requests_resume() {
    let mut c = conn(HeaderMode::Simple, TF::empty());
    let payload = vec![0x5a_u8; 8192];
    let mut input = write_header(7, 4096, 8192);
    input.extend_from_slice(&payload[..1000]);
    let (hlen, w) = c.begin_write_stream(&input, 4096, 4096).expect("streamed");
    assert_eq!((hlen, w.offset, w.len, w.fua), (28, 4096, 8192, false));
    assert_eq!(w.reply.cookie(), Cookie(7));
    assert_eq!(c.in_flight(), 1);
    assert_eq!(c.payload_left(), 8192);
    // A second stream cannot start while a payload is being received.
    assert!(c.begin_write_stream(&input[hlen..], 1, 1).is_none());

    let (n, next) = c.handle_input(&input[hlen..]).unwrap();
    assert_eq!(n, 1000);
    assert!(matches!(next, Input::WriteData(d) if d == &payload[..1000]));
    assert_eq!(c.payload_left(), 7192);
    assert_eq!(c.needed(&[]), 0, "payload is never needed whole");

    assert_eq!(c.payload_received(7000), 192);
    // The rest arrives with the next request behind it: only the payload
    // is handed out, the FLUSH header is not payload.
    let mut rest = vec![0x5a_u8; 192];
    rest.extend_from_slice(&header(
        HeaderMode::Simple,
        Command::Flush,
        CmdFlags::empty(),
        8,
        0,
        0,
    ));
    let (n, next) = c.handle_input(&rest).unwrap();
    assert_eq!(n, 192);
    assert!(matches!(next, Input::WriteData(d) if d.len() == 192));
    assert_eq!(c.payload_left(), 0);

    let mut out = [0u8; 64];
    assert_eq!(c.reply_ok(w.reply, &mut out).unwrap(), 16);
    assert_eq!(c.in_flight(), 0);
    let (n, next) = c.handle_input(&rest[192..]).unwrap();
    assert_eq!(n, 28);
    let Input::Request { reply, .. } = next else {
        panic!("not a request: {next:?}");
    };
    assert_eq!(reply.cookie(), Cookie(8));
    let _ = c.reply_ok(reply, &mut out);
}

/// FUA is carried; extended headers with PAYLOAD_LEN stream too.
#[test]
fn extended_fua_write_streams() {
    let mut c = conn(HeaderMode::Extended, TF::empty());
    let flags = CmdFlags::FUA | CmdFlags::PAYLOAD_LEN;
    let h = header(HeaderMode::Extended, Command::Write, flags, 1, 0, 65536);
    let (hlen, w) = c.begin_write_stream(&h, 65536, 4096).expect("streamed");
    assert_eq!((hlen, w.len, w.fua), (32, 65536, true));
    assert_eq!(c.payload_received(65536), 0);
    let mut out = [0u8; 64];
    assert!(c.reply_ok(w.reply, &mut out).is_ok());
}

/// What must not stream is left untouched for `handle_input`, which
/// answers it as it always did.
#[test]
fn declined_requests_are_handled_as_before() {
    let mut c = conn(HeaderMode::Simple, TF::empty());
    // Too short, unaligned, not a WRITE, not a whole header yet.
    assert!(
        c.begin_write_stream(&write_header(1, 0, 512), 4096, 1)
            .is_none()
    );
    assert!(
        c.begin_write_stream(&write_header(1, 100, 8192), 4096, 4096)
            .is_none()
    );
    assert!(
        c.begin_write_stream(&write_header(1, 0, 8100), 4096, 4096)
            .is_none()
    );
    let read = header(
        HeaderMode::Simple,
        Command::Read,
        CmdFlags::empty(),
        1,
        0,
        8192,
    );
    assert!(c.begin_write_stream(&read, 1, 1).is_none());
    assert!(
        c.begin_write_stream(&write_header(1, 0, 8192)[..20], 1, 1)
            .is_none()
    );
    assert_eq!((c.in_flight(), c.payload_left()), (0, 0));

    // Checklist 69: past the end is ENOSPC, after draining the payload.
    let mut past = write_header(2, SIZE, 4096);
    assert!(c.begin_write_stream(&past, 1, 1).is_none());
    past.extend_from_slice(&[0; 4096]);
    let (n, next) = c.handle_input(&past).unwrap();
    assert_eq!(n, 28);
    let Input::Reject { reply, error, .. } = next else {
        panic!("not rejected: {next:?}");
    };
    assert_eq!(error, ErrorCode::NoSpc);
    let mut out = [0u8; 256];
    let _ = c.reply_error(reply, error, "", &mut out);
    let (n, _) = c.handle_input(&past[28..]).unwrap();
    assert_eq!(n, 4096, "the payload is drained, not parsed");

    // Shutting down: ESHUTDOWN through handle_input, never a stream.
    c.begin_shutdown();
    assert!(
        c.begin_write_stream(&write_header(3, 0, 4096), 1, 1)
            .is_none()
    );
}

/// Checklist 70: a read-only export refuses the WRITE (EPERM), streamed
/// or not.
#[test]
fn read_only_write_is_not_streamed() {
    let mut c = conn(HeaderMode::Simple, TF::READ_ONLY);
    let mut w = write_header(4, 0, 4096);
    assert!(c.begin_write_stream(&w, 1, 1).is_none());
    w.extend_from_slice(&[1; 4096]);
    let (_, next) = c.handle_input(&w).unwrap();
    let Input::Reject { reply, error, .. } = next else {
        panic!("not rejected: {next:?}");
    };
    assert_eq!(error, ErrorCode::Perm);
    let _ = c.reply_error(reply, error, "", &mut [0u8; 256]);
}
