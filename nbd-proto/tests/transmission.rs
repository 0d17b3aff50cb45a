//! Transmission-phase validation and encoding, driven through a small
//! driver that runs the documented loop (checklist 62-120, the items about
//! validation and reply layout).

use nbd_proto::server::{BlockSizes, Connection, Input, Negotiated, Op, TransmissionConfig};
use nbd_proto::wire::request::{Request, RequestHeader};
use nbd_proto::{CmdFlags, Command, Cookie, ErrorCode, HeaderMode, ProtocolError};
use nbd_proto::{TransmissionFlags as TF, wire::reply::BlockStatusExtent};

const SIZE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Exec(Command, u64),
    Reject(u64, ErrorCode),
    Disc,
}

struct Tx {
    tx: Connection,
    input: Vec<u8>,
    out: Vec<u8>,
    seen: Vec<Seen>,
    error: Option<ProtocolError>,
}

fn neg(mode: HeaderMode, flags: TF) -> Negotiated {
    Negotiated {
        mode,
        size: SIZE,
        flags: flags | TF::HAS_FLAGS,
        block_sizes: BlockSizes::DEFAULT,
        block_sizes_agreed: false,
        meta_contexts: 0,
        tls: false,
    }
}

fn all_flags() -> TF {
    TF::SEND_FLUSH
        | TF::SEND_FUA
        | TF::SEND_TRIM
        | TF::SEND_WRITE_ZEROES
        | TF::SEND_FAST_ZERO
        | TF::SEND_CACHE
}

impl Tx {
    fn new(n: Negotiated) -> Self {
        Self::with(n, TransmissionConfig::default())
    }

    fn with(n: Negotiated, cfg: TransmissionConfig) -> Self {
        Self {
            tx: Connection::in_transmission(n, cfg),
            input: Vec::new(),
            out: Vec::new(),
            seen: Vec::new(),
            error: None,
        }
    }

    fn simple() -> Self {
        Self::new(neg(HeaderMode::Simple, all_flags()))
    }

    /// Feed bytes and run the loop: execute commands (READs return 0xab
    /// bytes), answer rejections with `reply_error`, stop on DISC or an error.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.input.extend_from_slice(bytes);
        let mut buf = vec![0u8; 65 << 20];
        loop {
            let input = std::mem::take(&mut self.input);
            let (n, next) = match self.tx.handle_input(&input) {
                Ok(x) => x,
                Err(e) => {
                    self.error = Some(e);
                    self.input = input;
                    break;
                }
            };
            assert!(n <= input.len());
            let stalled = matches!(next, Input::NeedInput | Input::Blocked | Input::Closed);
            match next {
                Input::Request { op, reply } => {
                    self.seen
                        .push(Seen::Exec(reply.command(), reply.cookie().0));
                    let w = match op {
                        Op::Read { len, .. } => {
                            let p = self.tx.read_prefix_len();
                            buf[p..p + len].fill(0xab);
                            let n = self.tx.reply_read(reply, &mut buf).unwrap();
                            assert!(n == p || len == 0);
                            n + len
                        }
                        Op::BlockStatus { len, .. } => {
                            let e = [BlockStatusExtent { len, flags: 0 }];
                            self.tx.reply_block_status(reply, 1, &e, &mut buf).unwrap()
                        }
                        _ => self.tx.reply_ok(reply, &mut buf).unwrap(),
                    };
                    self.out.extend_from_slice(&buf[..w]);
                }
                Input::Reject {
                    reply,
                    error,
                    message,
                } => {
                    self.seen.push(Seen::Reject(reply.cookie().0, error));
                    let w = self
                        .tx
                        .reply_error(reply, error, message, &mut buf)
                        .unwrap();
                    self.out.extend_from_slice(&buf[..w]);
                }
                Input::Disconnect => self.seen.push(Seen::Disc),
                _ => {}
            }
            self.input = input[n..].to_vec();
            if stalled {
                break;
            }
        }
        std::mem::take(&mut self.out)
    }

    fn mode(&self) -> HeaderMode {
        self.tx.negotiated().unwrap().mode
    }
}

fn req(
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

fn write(mode: HeaderMode, cookie: u64, off: u64, data: &[u8]) -> Vec<u8> {
    let flags = if mode == HeaderMode::Extended {
        CmdFlags::PAYLOAD_LEN
    } else {
        CmdFlags::empty()
    };
    let mut v = req(mode, Command::Write, flags, cookie, off, data.len() as u64);
    v.extend_from_slice(data);
    v
}

fn simple_reply(cookie: u64, error: u32) -> Vec<u8> {
    let mut v = vec![0x67, 0x44, 0x66, 0x98];
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v
}

const S: HeaderMode = HeaderMode::Simple;
const E: CmdFlags = CmdFlags::empty();

/// After any rejection the connection must stay usable.
fn still_usable(t: &mut Tx) {
    let before = t.seen.len();
    t.feed(&req(t.mode(), Command::Flush, E, 999, 0, 0));
    assert_eq!(t.seen[before..], [Seen::Exec(Command::Flush, 999)]);
    assert!(t.error.is_none());
}

#[test]
fn checklist_62_63_read_reply_carries_cookie_and_data() {
    let mut t = Tx::simple();
    for cookie in [0x0123_4567_89ab_cdef, u64::MAX] {
        let out = t.feed(&req(S, Command::Read, E, cookie, 0, 4096));
        let mut want = simple_reply(cookie, 0);
        want.extend_from_slice(&[0xab; 4096]);
        assert_eq!(out, want);
    }
    assert_eq!(t.tx.in_flight(), 0);
}

#[test]
fn checklist_64_bad_request_magic_disconnects() {
    let mut t = Tx::simple();
    let mut r = req(S, Command::Read, E, 1, 0, 512);
    r[3] = 0x14;
    assert!(t.feed(&r).is_empty());
    assert!(matches!(t.error, Some(ProtocolError::Decode(_))));
}

#[test]
fn checklist_67_68_read_range_errors_are_einval() {
    let mut t = Tx::simple();
    let out = t.feed(&cat(&[
        req(S, Command::Read, E, 1, SIZE - 512, 1024),
        req(S, Command::Read, E, 2, SIZE + 4096, 512),
        req(S, Command::Read, E, 3, u64::MAX - 10, 512),
    ]));
    assert_eq!(
        out,
        cat(&[
            simple_reply(1, 22),
            simple_reply(2, 22),
            simple_reply(3, 22)
        ])
    );
    still_usable(&mut t);
}

#[test]
fn checklist_69_write_past_end_enospc_after_drain() {
    let mut t = Tx::simple();
    let out = t.feed(&write(S, 7, SIZE - 10, &[1; 100]));
    assert_eq!(out, simple_reply(7, 28));
    still_usable(&mut t);
}

#[test]
fn checklist_70_71_read_only_rejects_writes_with_eperm() {
    let mut t = Tx::new(neg(S, all_flags() | TF::READ_ONLY));
    t.feed(&cat(&[
        write(S, 1, 0, &[1; 512]),
        req(S, Command::Trim, E, 2, 0, 512),
        req(S, Command::WriteZeroes, E, 3, 0, 512),
    ]));
    assert_eq!(
        t.seen,
        [
            Seen::Reject(1, ErrorCode::Perm),
            Seen::Reject(2, ErrorCode::Perm),
            Seen::Reject(3, ErrorCode::Perm)
        ]
    );
    still_usable(&mut t);
}

#[test]
fn checklist_72_trim_past_end_einval_write_zeroes_enospc() {
    let mut t = Tx::simple();
    t.feed(&cat(&[
        req(S, Command::Trim, E, 1, SIZE, 512),
        req(S, Command::WriteZeroes, E, 2, SIZE, 512),
    ]));
    assert_eq!(
        t.seen,
        [
            Seen::Reject(1, ErrorCode::Inval),
            Seen::Reject(2, ErrorCode::NoSpc)
        ]
    );
    still_usable(&mut t);
}

#[test]
fn checklist_73_misaligned_requests_einval_when_agreed() {
    let mut n = neg(S, all_flags());
    n.block_sizes = BlockSizes {
        minimum: 512,
        preferred: 4096,
        maximum: 65536,
    };
    n.block_sizes_agreed = true;
    let mut t = Tx::new(n);
    t.feed(&cat(&[
        req(S, Command::Read, E, 1, 1, 512),
        write(S, 2, 0, &[0; 100]),
        req(S, Command::Read, E, 3, 512, 512),
    ]));
    assert_eq!(
        t.seen,
        [
            Seen::Reject(1, ErrorCode::Inval),
            Seen::Reject(2, ErrorCode::Inval),
            Seen::Exec(Command::Read, 3)
        ]
    );
}

#[test]
fn checklist_74_zero_length_requests_do_not_disconnect() {
    let mut t = Tx::simple();
    t.feed(&cat(&[
        req(S, Command::Read, E, 1, 0, 0),
        write(S, 2, 0, &[]),
        req(S, Command::Trim, E, 3, 0, 0),
        req(S, Command::WriteZeroes, E, 4, 0, 0),
    ]));
    assert_eq!(t.seen.len(), 4);
    still_usable(&mut t);
}

#[test]
fn checklist_75_unknown_commands_einval() {
    let mut t = Tx::simple();
    for (i, c) in [9u16, 42, 0xffff].into_iter().enumerate() {
        t.feed(&req(S, Command::from(c), E, i as u64, 0, 0));
    }
    assert_eq!(
        t.seen,
        [
            Seen::Reject(0, ErrorCode::Inval),
            Seen::Reject(1, ErrorCode::Inval),
            Seen::Reject(2, ErrorCode::Inval)
        ]
    );
    still_usable(&mut t);
}

#[test]
fn checklist_76_77_unknown_and_misplaced_flags_einval() {
    let mut t = Tx::simple();
    let mut w = write(S, 2, 0, &[5; 64]);
    w[5] |= CmdFlags::NO_HOLE.bits() as u8;
    let mut w_df = write(S, 4, 0, &[5; 64]);
    w_df[5] |= CmdFlags::DF.bits() as u8;
    t.feed(&cat(&[
        req(
            S,
            Command::Read,
            CmdFlags::from_bits_retain(0x80),
            1,
            0,
            512,
        ),
        w,
        req(S, Command::Read, CmdFlags::REQ_ONE, 3, 0, 512),
        w_df,
        req(S, Command::Trim, CmdFlags::FAST_ZERO, 5, 0, 512),
    ]));
    let want: Vec<_> = (1..=5).map(|c| Seen::Reject(c, ErrorCode::Inval)).collect();
    assert_eq!(t.seen, want);
    still_usable(&mut t);
}

#[test]
fn checklist_78_fua_on_read_flush_cache_accepted() {
    let mut t = Tx::simple();
    let f = CmdFlags::FUA;
    t.feed(&cat(&[
        req(S, Command::Read, f, 1, 0, 512),
        req(S, Command::Flush, f, 2, 0, 0),
        req(S, Command::Cache, f, 3, 0, 512),
    ]));
    assert_eq!(
        t.seen,
        [
            Seen::Exec(Command::Read, 1),
            Seen::Exec(Command::Flush, 2),
            Seen::Exec(Command::Cache, 3)
        ]
    );
}

#[test]
fn checklist_79_unadvertised_commands_einval() {
    let mut t = Tx::new(neg(S, TF::empty()));
    t.feed(&cat(&[
        req(S, Command::Trim, E, 1, 0, 512),
        req(S, Command::Flush, E, 2, 0, 0),
        req(S, Command::WriteZeroes, E, 3, 0, 512),
        req(S, Command::Read, CmdFlags::FUA, 4, 0, 512),
    ]));
    let want: Vec<_> = (1..=4).map(|c| Seen::Reject(c, ErrorCode::Inval)).collect();
    assert_eq!(t.seen, want);
}

#[test]
fn checklist_80_rejected_payload_with_embedded_header_is_drained() {
    let mut t = Tx::new(neg(S, all_flags() | TF::READ_ONLY));
    // The payload is full of valid READ headers.
    let fake = req(S, Command::Read, E, 0xbad, 0, 512).repeat(65536 / 28 + 1);
    let out = t.feed(&cat(&[
        write(S, 1, 0, &fake[..65536]),
        req(S, Command::Read, E, 2, 0, 16),
    ]));
    assert_eq!(
        t.seen,
        [
            Seen::Reject(1, ErrorCode::Perm),
            Seen::Exec(Command::Read, 2)
        ]
    );
    let mut want = simple_reply(1, 1);
    want.extend(simple_reply(2, 0));
    want.extend_from_slice(&[0xab; 16]);
    assert_eq!(out, want);
}

#[test]
fn checklist_80_drain_works_across_partial_input() {
    let mut t = Tx::new(neg(S, all_flags() | TF::READ_ONLY));
    let input = cat(&[
        write(S, 1, 0, &[0x25; 300]),
        req(S, Command::Flush, E, 2, 0, 0),
    ]);
    for chunk in input.chunks(7) {
        t.feed(chunk);
    }
    assert_eq!(
        t.seen,
        [
            Seen::Reject(1, ErrorCode::Perm),
            Seen::Exec(Command::Flush, 2)
        ]
    );
}

#[test]
fn checklist_81_write_above_maximum_but_small_drained_einval() {
    let mut n = neg(S, all_flags());
    n.size = 64 << 20;
    n.block_sizes.maximum = 65536;
    n.block_sizes_agreed = true;
    let mut t = Tx::new(n);
    t.feed(&write(S, 1, 0, &vec![0; 1 << 20]));
    assert_eq!(t.seen, [Seen::Reject(1, ErrorCode::Inval)]);
    still_usable(&mut t);
}

/// A client that never agreed to block sizes may send up to 64 MiB (the
/// reference NBD test client's `integrityhuge` sends up to 47.5 MiB;
/// nbdkit accepts 64 MiB), whatever maximum was advertised; above that the
/// request is refused as before.
#[test]
fn unnegotiated_clients_may_send_up_to_64_mib() {
    let mut n = neg(S, all_flags());
    n.size = 128 << 20;
    let mut t = Tx::new(n);
    let big = 48 << 20;
    t.feed(&write(S, 1, 0, &vec![5; big]));
    let out = t.feed(&req(S, Command::Read, E, 2, 0, big as u64));
    assert_eq!(
        t.seen,
        [Seen::Exec(Command::Write, 1), Seen::Exec(Command::Read, 2)]
    );
    assert_eq!(out.len(), 16 + big);
    t.feed(&req(S, Command::Read, E, 3, 0, (64 << 20) + 1));
    assert_eq!(t.seen[2], Seen::Reject(3, ErrorCode::Inval));
    assert_eq!(
        t.tx.needed(&req(S, Command::Write, E, 4, 0, 64 << 20)),
        28 + (64 << 20)
    );
    assert_eq!(
        t.tx.needed(&req(S, Command::Write, E, 4, 0, (64 << 20) + 1)),
        28
    );
}

#[test]
fn checklist_82_huge_write_header_disconnects() {
    let mut t = Tx::simple();
    let r = req(S, Command::Write, E, 1, 0, 0xffff_ffff);
    assert!(t.feed(&r).is_empty());
    assert_eq!(t.error, Some(ProtocolError::PayloadTooLarge(0xffff_ffff)));
}

#[test]
fn checklist_84_large_trim_is_not_a_disconnect() {
    let mut n = neg(S, all_flags());
    n.size = 4 << 30;
    let mut t = Tx::new(n);
    t.feed(&cat(&[
        req(S, Command::Trim, E, 1, 0, 1 << 30),
        req(S, Command::WriteZeroes, E, 2, 0, 1 << 30),
    ]));
    assert_eq!(
        t.seen,
        [
            Seen::Exec(Command::Trim, 1),
            Seen::Exec(Command::WriteZeroes, 2)
        ]
    );
}

#[test]
fn checklist_93_fast_zero_unadvertised_einval() {
    let mut t = Tx::new(neg(S, TF::SEND_WRITE_ZEROES));
    t.feed(&cat(&[
        req(S, Command::WriteZeroes, CmdFlags::FAST_ZERO, 1, 0, 512),
        req(S, Command::WriteZeroes, CmdFlags::NO_HOLE, 2, 0, 512),
    ]));
    assert_eq!(
        t.seen,
        [
            Seen::Reject(1, ErrorCode::Inval),
            Seen::Exec(Command::WriteZeroes, 2)
        ]
    );
}

#[test]
fn checklist_94_95_cache_flags_and_unadvertised_cache() {
    let mut t = Tx::simple();
    t.feed(&req(
        S,
        Command::Cache,
        CmdFlags::from_bits_retain(0x80),
        1,
        0,
        512,
    ));
    assert_eq!(t.seen, [Seen::Reject(1, ErrorCode::Inval)]);
    let mut t = Tx::new(neg(S, TF::empty()));
    t.feed(&req(S, Command::Cache, E, 2, 0, 512));
    assert_eq!(t.seen, [Seen::Exec(Command::Cache, 2)]);
}

fn error_chunk(cookie: u64, error: u32, msg: &str) -> Vec<u8> {
    let mut v = vec![0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 0x01];
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&(6 + msg.len() as u32).to_be_bytes());
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend_from_slice(msg.as_bytes());
    v
}

#[test]
fn checklist_96_99_structured_read_errors_are_error_chunks() {
    let st = HeaderMode::Structured;
    let mut t = Tx::new(neg(st, all_flags() | TF::SEND_DF));
    let out = t.feed(&cat(&[
        req(st, Command::Read, CmdFlags::REQ_ONE, 1, 0, 512),
        req(st, Command::Read, E, 2, SIZE, 512),
    ]));
    assert_eq!(
        out,
        cat(&[
            error_chunk(1, 22, "flag not valid for this command"),
            error_chunk(2, 22, "request beyond the end of the export"),
        ])
    );
    still_usable(&mut t);
}

#[test]
fn checklist_97_101_structured_read_is_one_offset_data_chunk() {
    let st = HeaderMode::Structured;
    let mut t = Tx::new(neg(st, all_flags() | TF::SEND_DF));
    let out = t.feed(&req(st, Command::Read, CmdFlags::DF, 9, 4096, 16));
    let mut want = vec![0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1];
    want.extend_from_slice(&9u64.to_be_bytes());
    want.extend_from_slice(&24u32.to_be_bytes());
    want.extend_from_slice(&4096u64.to_be_bytes());
    want.extend_from_slice(&[0xab; 16]);
    assert_eq!(out, want);
    assert_eq!(t.tx.in_flight(), 0);
}

#[test]
fn checklist_101_df_without_send_df_einval() {
    let st = HeaderMode::Structured;
    let mut t = Tx::new(neg(st, all_flags()));
    t.feed(&req(st, Command::Read, CmdFlags::DF, 1, 0, 512));
    assert_eq!(t.seen, [Seen::Reject(1, ErrorCode::Inval)]);
}

#[test]
fn checklist_102_df_read_above_limit_eoverflow() {
    let st = HeaderMode::Structured;
    let mut n = neg(st, all_flags() | TF::SEND_DF);
    n.size = 1 << 30;
    let cfg = TransmissionConfig {
        max_df_read: 65536,
        ..TransmissionConfig::default()
    };
    let mut t = Tx::with(n, cfg);
    t.feed(&req(st, Command::Read, CmdFlags::DF, 1, 0, 65537));
    assert_eq!(t.seen, [Seen::Reject(1, ErrorCode::Overflow)]);
}

#[test]
fn checklist_103_structured_non_read_gets_simple_reply() {
    let st = HeaderMode::Structured;
    let mut t = Tx::new(neg(st, all_flags()));
    assert_eq!(
        t.feed(&req(st, Command::Flush, E, 5, 0, 0)),
        simple_reply(5, 0)
    );
}

#[test]
fn checklist_104_block_status_without_context_einval() {
    for mode in [HeaderMode::Simple, HeaderMode::Structured] {
        let mut t = Tx::new(neg(mode, all_flags()));
        t.feed(&req(mode, Command::BlockStatus, E, 1, 0, 512));
        assert_eq!(t.seen, [Seen::Reject(1, ErrorCode::Inval)]);
        still_usable(&mut t);
    }
    // Selected in simple mode is impossible too (no chunks to answer with).
    let mut n = neg(S, all_flags());
    n.meta_contexts = 1;
    let mut t = Tx::new(n);
    t.feed(&req(S, Command::BlockStatus, E, 1, 0, 512));
    assert_eq!(t.seen, [Seen::Reject(1, ErrorCode::Inval)]);
}

#[test]
fn checklist_105_107_block_status_range() {
    let st = HeaderMode::Structured;
    let mut n = neg(st, all_flags());
    n.meta_contexts = 1;
    let mut t = Tx::new(n);
    let out = t.feed(&cat(&[
        req(st, Command::BlockStatus, E, 1, 0, SIZE),
        req(st, Command::BlockStatus, E, 2, SIZE - 512, 1024),
    ]));
    assert_eq!(
        t.seen,
        [
            Seen::Exec(Command::BlockStatus, 1),
            Seen::Reject(2, ErrorCode::Inval)
        ]
    );
    // Type 5, DONE, length 4 + 8, context ID 1.
    assert_eq!(&out[..8], &[0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 5]);
    assert_eq!(&out[16..24], &[0, 0, 0, 12, 0, 0, 0, 1]);
}

#[test]
fn checklist_110_disc_after_pipelined_writes() {
    let mut t = Tx::simple();
    let out = t.feed(&cat(&[
        write(S, 1, 0, &[1; 512]),
        write(S, 2, 512, &[2; 512]),
        write(S, 3, 1024, &[3; 512]),
        req(S, Command::Disc, E, 4, 0, 0),
    ]));
    assert_eq!(
        out,
        cat(&[simple_reply(1, 0), simple_reply(2, 0), simple_reply(3, 0)])
    );
    assert_eq!(t.seen.last(), Some(&Seen::Disc));
    assert!(t.tx.is_closed(), "DISC with nothing in flight closes");
    assert!(!t.tx.wants_read());
    assert_eq!(t.tx.in_flight(), 0);
    t.feed(&req(S, Command::Flush, E, 5, 0, 0));
    assert_eq!(t.error, Some(ProtocolError::AfterDisconnect));
}

const X: HeaderMode = HeaderMode::Extended;

fn ext() -> Tx {
    let mut n = neg(X, all_flags() | TF::SEND_DF | TF::BLOCK_STATUS_PAYLOAD);
    n.meta_contexts = 0b1;
    n.block_sizes.maximum = 1 << 20;
    // Agreed, so the 1 MiB maximum is the limit (checklist 118).
    n.block_sizes_agreed = true;
    Tx::new(n)
}

#[test]
fn checklist_116_extended_replies_echo_cookie_and_offset() {
    let mut t = ext();
    let out = t.feed(&req(X, Command::Flush, E, 0x0123_4567_89ab_cdef, 77, 0));
    let mut want = vec![0x6e, 0x8a, 0x27, 0x8c, 0, 1, 0, 0];
    want.extend_from_slice(&0x0123_4567_89ab_cdef_u64.to_be_bytes());
    want.extend_from_slice(&77u64.to_be_bytes());
    want.extend_from_slice(&0u64.to_be_bytes());
    assert_eq!(out, want);
}

#[test]
fn checklist_118_payload_len_rules() {
    let mut t = ext();
    // A READ with a payload: drained, EINVAL, usable.
    let mut r = req(X, Command::Read, CmdFlags::PAYLOAD_LEN, 1, 0, 40);
    r.extend(req(X, Command::Flush, E, 0xbad, 0, 0).repeat(2)[..40].to_vec());
    t.feed(&cat(&[r, write(X, 2, 0, &[7; 4096])]));
    assert_eq!(
        t.seen,
        [
            Seen::Reject(1, ErrorCode::Inval),
            Seen::Exec(Command::Write, 2)
        ]
    );
    // A WRITE without PAYLOAD_LEN still carries its payload (qemu sends
    // it so); the payload must not be parsed as a header.
    let mut w = req(X, Command::Write, E, 3, 0, 32);
    w.extend(req(X, Command::Flush, E, 0xbad, 0, 0));
    t.feed(&w);
    assert_eq!(t.seen[2], Seen::Exec(Command::Write, 3));
    assert_eq!(t.seen.len(), 3);
    // Above the maximum payload: disconnect.
    t.feed(&req(
        X,
        Command::Write,
        CmdFlags::PAYLOAD_LEN,
        4,
        0,
        (1 << 20) + 1,
    ));
    assert_eq!(t.error, Some(ProtocolError::PayloadTooLarge((1 << 20) + 1)));
}

fn bs_payload(effect: u64, ids: &[u32]) -> Vec<u8> {
    let mut v = effect.to_be_bytes().to_vec();
    for id in ids {
        v.extend_from_slice(&id.to_be_bytes());
    }
    v
}

#[test]
fn checklist_120_block_status_payload_ids() {
    let mut t = ext();
    let f = CmdFlags::PAYLOAD_LEN;
    let mut stream = Vec::new();
    for (cookie, ids) in [(1u64, &[1u32][..]), (2, &[2]), (3, &[1, 1]), (4, &[0])] {
        let p = bs_payload(4096, ids);
        stream.extend(req(X, Command::BlockStatus, f, cookie, 0, p.len() as u64));
        stream.extend(p);
    }
    let out = t.feed(&stream);
    assert_eq!(
        t.seen,
        [
            Seen::Exec(Command::BlockStatus, 1),
            Seen::Reject(2, ErrorCode::Inval),
            Seen::Reject(3, ErrorCode::Inval),
            Seen::Reject(4, ErrorCode::Inval)
        ]
    );
    // Type 6 (BLOCK_STATUS_EXT), length 8 + 16.
    assert_eq!(&out[4..8], &[0, 1, 0, 6]);
    assert_eq!(&out[24..32], &24u64.to_be_bytes());
    still_usable(&mut t);
    // Without BLOCK_STATUS_PAYLOAD advertised the payload form is refused.
    let mut n = neg(X, all_flags());
    n.meta_contexts = 1;
    let mut t = Tx::new(n);
    let p = bs_payload(4096, &[1]);
    t.feed(&cat(&[req(X, Command::BlockStatus, f, 9, 0, 12), p]));
    assert_eq!(t.seen, [Seen::Reject(9, ErrorCode::Inval)]);
    still_usable(&mut t);
}

#[test]
fn needed_reports_whole_frame() {
    let t = Tx::simple();
    let w = write(S, 1, 0, &[0; 100]);
    assert_eq!(t.tx.needed(&w[..10]), 28);
    assert_eq!(t.tx.needed(&w[..30]), 128);
    let _ = Request::decode(&w, S).unwrap().unwrap();
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// `needed` asks the driver to buffer a whole frame only when the request
/// can be valid: a WRITE above the maximum payload is rejected on its
/// header and drained as it streams, so only the header is needed.
#[test]
fn needed_never_asks_for_a_payload_that_will_be_rejected() {
    let t = Connection::in_transmission(
        neg(HeaderMode::Simple, all_flags()),
        TransmissionConfig::default(),
    );
    let small = req(
        HeaderMode::Simple,
        Command::Write,
        CmdFlags::empty(),
        1,
        0,
        4096,
    );
    assert_eq!(t.needed(&small), 28 + 4096);
    let huge = req(
        HeaderMode::Simple,
        Command::Write,
        CmdFlags::empty(),
        2,
        0,
        96 << 20,
    );
    assert_eq!(t.needed(&huge), 28);
    let read = req(
        HeaderMode::Simple,
        Command::Read,
        CmdFlags::empty(),
        3,
        0,
        1 << 20,
    );
    assert_eq!(t.needed(&read), 28);
    assert_eq!(t.needed(&[]), 28);
}
