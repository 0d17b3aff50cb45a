//! Shared helpers for the integration tests: hand-written wire bytes (so
//! the expected output never comes from the encoders under test) and a
//! driver that runs the documented server negotiation loop.

#![allow(dead_code)]

use nbd_proto::server::{
    BlockSizes, Connection, ConnectionConfig, ExportInfo, HandshakeConfig, Input, StartTls,
};
use nbd_proto::{OptReplyType, ProtocolError, TransmissionFlags};

pub const NBDMAGIC: [u8; 8] = *b"NBDMAGIC";
pub const IHAVEOPT: [u8; 8] = *b"IHAVEOPT";
pub const REP_MAGIC: [u8; 8] = [0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9];

pub const ACK: u32 = 1;
pub const SERVER: u32 = 2;
pub const INFO: u32 = 3;
pub const META: u32 = 4;
pub const ERR_UNSUP: u32 = 0x8000_0001;
pub const ERR_POLICY: u32 = 0x8000_0002;
pub const ERR_INVALID: u32 = 0x8000_0003;
pub const ERR_TLS_REQD: u32 = 0x8000_0005;
pub const ERR_UNKNOWN: u32 = 0x8000_0006;
pub const ERR_SHUTDOWN: u32 = 0x8000_0007;
pub const ERR_TOO_BIG: u32 = 0x8000_0009;
pub const ERR_EXT_HEADER_REQD: u32 = 0x8000_000a;

/// Disk export size used throughout.
pub const DISK_SIZE: u64 = 1 << 20;

/// The 18-byte greeting with the given handshake flags.
pub fn greeting(flags: u16) -> Vec<u8> {
    let mut v = NBDMAGIC.to_vec();
    v.extend_from_slice(&IHAVEOPT);
    v.extend_from_slice(&flags.to_be_bytes());
    v
}

/// A client option frame.
pub fn opt(code: u32, data: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A server option reply frame.
pub fn rep(option: u32, ty: u32, data: &[u8]) -> Vec<u8> {
    let mut v = REP_MAGIC.to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&ty.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// INFO/GO option data: name, then info requests.
pub fn info_data(name: &str, reqs: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
    for r in reqs {
        v.extend_from_slice(&r.to_be_bytes());
    }
    v
}

/// LIST/SET_META_CONTEXT option data.
pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

/// An `NBD_REP_INFO` of type `NBD_INFO_EXPORT`.
pub fn info_export(option: u32, size: u64, flags: u16) -> Vec<u8> {
    let mut d = 0u16.to_be_bytes().to_vec();
    d.extend_from_slice(&size.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    rep(option, INFO, &d)
}

/// An `NBD_REP_INFO` carrying a string info (NAME = 1, DESCRIPTION = 2).
pub fn info_str(option: u32, ty: u16, s: &str) -> Vec<u8> {
    let mut d = ty.to_be_bytes().to_vec();
    d.extend_from_slice(s.as_bytes());
    rep(option, INFO, &d)
}

/// An `NBD_REP_INFO` of type `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size(option: u32, min: u32, pref: u32, max: u32) -> Vec<u8> {
    let mut d = 3u16.to_be_bytes().to_vec();
    for x in [min, pref, max] {
        d.extend_from_slice(&x.to_be_bytes());
    }
    rep(option, INFO, &d)
}

/// An `NBD_REP_META_CONTEXT`.
pub fn meta_rep(option: u32, id: u32, name: &str) -> Vec<u8> {
    let mut d = id.to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    rep(option, META, &d)
}

/// An `NBD_REP_SERVER`.
pub fn server_rep(name: &str, desc: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(desc.as_bytes());
    rep(3, SERVER, &d)
}

/// Flags the test exports offer (before the handshake adds its own).
pub fn disk_flags() -> TransmissionFlags {
    TransmissionFlags::SEND_FLUSH
        | TransmissionFlags::SEND_FUA
        | TransmissionFlags::SEND_TRIM
        | TransmissionFlags::SEND_WRITE_ZEROES
        | TransmissionFlags::SEND_FAST_ZERO
        | TransmissionFlags::SEND_CACHE
}

/// HAS_FLAGS | FLUSH | FUA | TRIM | WRITE_ZEROES | FAST_ZERO | CACHE on the wire.
pub const DISK_WIRE_FLAGS: u16 = 0x0001 | 0x0004 | 0x0008 | 0x0020 | 0x0040 | 0x0800 | 0x0400;
/// `NBD_FLAG_SEND_DF`
pub const DF: u16 = 0x0080;
/// `NBD_FLAG_BLOCK_STATUS_PAYLOAD`
pub const BS_PAYLOAD: u16 = 0x1000;

/// The meta contexts the test server knows (IDs 1 and 2).
pub const CATALOGUE: &[&str] = &["base:allocation", "qemu:allocation-depth"];

/// The export table the test driver serves: "disk" (also the default
/// export ""), "ro" (read-only), "bs" (512/4096/64 KiB block sizes) and
/// "secret" (TLS only). Every export offers the contexts of `offered`.
pub fn lookup(name: &str, tls: bool, offered: u64) -> Result<ExportInfo<'static>, OptReplyType> {
    let disk = ExportInfo {
        size: DISK_SIZE,
        flags: disk_flags(),
        name: "disk",
        description: "a test disk",
        block_sizes: None,
        meta_contexts: offered,
    };
    match name {
        "" | "disk" => Ok(disk),
        "ro" => Ok(ExportInfo {
            name: "ro",
            description: "",
            flags: TransmissionFlags::READ_ONLY | TransmissionFlags::SEND_FLUSH,
            ..disk
        }),
        "bs" => Ok(ExportInfo {
            name: "bs",
            block_sizes: Some(BlockSizes {
                minimum: 512,
                preferred: 4096,
                maximum: 65536,
            }),
            ..disk
        }),
        // FAST_ZERO without WRITE_ZEROES: the handshake must drop it.
        "fz" => Ok(ExportInfo {
            name: "fz",
            flags: TransmissionFlags::SEND_FAST_ZERO | TransmissionFlags::SEND_FLUSH,
            ..disk
        }),
        "secret" if tls => Ok(ExportInfo {
            name: "secret",
            ..disk
        }),
        "secret" => Err(OptReplyType::ErrTlsReqd),
        _ => Err(OptReplyType::ErrUnknown),
    }
}

/// What the test driver saw while running the loop.
#[derive(Debug, Default)]
pub struct Seen {
    pub starttls: usize,
    pub lists: usize,
    pub exports: Vec<String>,
    /// The STARTTLS token, until the test says TLS is up.
    pub tls: Option<StartTls>,
}

/// A driver running the documented loop over in-memory buffers.
pub struct Driver {
    pub hs: Connection,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    pub seen: Seen,
    /// Catalogue entries every export offers (bit i = CATALOGUE[i]).
    pub offered: u64,
    pub error: Option<ProtocolError>,
}

impl Driver {
    pub fn new(cfg: HandshakeConfig) -> Self {
        let cfg = ConnectionConfig {
            handshake: HandshakeConfig {
                meta_contexts: CATALOGUE,
                ..cfg
            },
            ..ConnectionConfig::default()
        };
        Self {
            hs: Connection::new(&cfg),
            input: Vec::new(),
            output: Vec::new(),
            seen: Seen::default(),
            offered: 0b01,
            error: None,
        }
    }

    fn flush(&mut self) {
        let mut buf = [0u8; 256];
        loop {
            let n = self.hs.poll_transmit(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            self.output.extend_from_slice(&buf[..n]);
        }
    }

    /// Feed `bytes`, run the loop until it stalls, and return the server
    /// bytes written since the previous call.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.input.extend_from_slice(bytes);
        let mut out = vec![0u8; 16 * 1024];
        loop {
            self.flush();
            if self.error.is_some() || self.hs.is_closed() || self.hs.negotiated().is_some() {
                break;
            }
            let (n, next) = match self.hs.handle_input(&self.input) {
                Ok((n, next)) => (n, next),
                Err(e) => {
                    self.error = Some(e);
                    break;
                }
            };
            assert!(n <= self.input.len(), "consumed more than given");
            let stalled = matches!(next, Input::NeedInput | Input::Blocked | Input::Closed);
            let w = match next {
                Input::Export(q) => {
                    let name = self.hs.asked_name().to_owned();
                    self.seen.exports.push(name.clone());
                    let ans = lookup(&name, self.hs.tls_active(), self.offered);
                    self.hs.answer_export(q, ans, &mut out).unwrap()
                }
                Input::List(q) => {
                    self.seen.lists += 1;
                    let mut pos = 0;
                    for (name, desc) in [("disk", "a test disk"), ("ro", "")] {
                        pos += self.hs.list_entry(&q, name, desc, &mut out[pos..]).unwrap();
                    }
                    pos + self.hs.finish_list(q, &mut out[pos..]).unwrap()
                }
                Input::MetaContexts(q) => {
                    let offered = self.offered;
                    self.hs
                        .answer_meta_contexts(q, Ok(offered), &mut out)
                        .unwrap()
                }
                Input::StartTls(t) => {
                    self.seen.starttls += 1;
                    self.seen.tls = Some(t);
                    0
                }
                Input::NeedInput | Input::Blocked | Input::Continue | Input::Closed => 0,
                other => panic!("unexpected {other:?}"),
            };
            self.output.extend_from_slice(&out[..w]);
            self.input.drain(..n);
            if stalled {
                break;
            }
        }
        self.flush();
        std::mem::take(&mut self.output)
    }

    /// Tell the connection the TLS handshake STARTTLS asked for is done.
    pub fn tls_established(&mut self) {
        let t = self.seen.tls.take().expect("STARTTLS was accepted");
        self.hs.handle_tls_established(t);
    }

    /// Run the greeting and send client flags; returns the greeting bytes.
    pub fn start(cfg: HandshakeConfig, client_flags: u32) -> (Self, Vec<u8>) {
        let mut d = Self::new(cfg);
        let g = d.feed(&[]);
        let rest = d.feed(&client_flags.to_be_bytes());
        assert!(rest.is_empty(), "server spoke after client flags");
        (d, g)
    }
}

/// Concatenate byte vectors.
pub fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}
