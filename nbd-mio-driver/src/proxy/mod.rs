//! The `nbd` backend: a proxy to another NBD server (`nbd uri=nbd://...`),
//! built on nbd-proto's client side. It lives in the driver crate because
//! nbd-backends must not depend on nbd-proto; the driver registers it with
//! [`nbd_backends::build_with_filters_ext`] through [`BACKEND`].
//!
//! One upstream connection serves every client connection: a dedicated I/O
//! thread ([`io`]) owns it and multiplexes requests from the driver's
//! worker threads by cookie, so several are in flight upstream at once.
//! Out of scope: TLS to the upstream (`nbds://` is refused) and reconnect
//! (if the upstream dies, every request fails with EIO).

pub mod handshake;
pub mod io;
pub mod uri;

use std::io::{Error, ErrorKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};

use mio::Waker;
use nbd_backends::{Backend, BlockSize, Caps, ExtBackend, Extent, ExtentFlags, ZeroFlags};
use nbd_proto::client::ClientNegotiated;
use nbd_proto::flags::{CmdFlags, TransmissionFlags};
use nbd_proto::types::{Command, Cookie, HeaderMode};
use nbd_proto::wire::request::{Request, RequestHeader};

use self::io::{Done, IoThread, Kind, Msg, dead};
use self::uri::{Address, NBD_PORT, Target, parse_uri};

/// The `nbd` backend for [`nbd_backends::build_with_filters_ext`].
pub const BACKEND: ExtBackend = ExtBackend {
    name: "nbd",
    magic: "uri",
    keys: &["uri", "socket", "hostname", "port", "export"],
    help: "proxy to another NBD server: nbd uri=nbd://HOST[:PORT]/EXPORT | nbd+unix:///EXPORT?socket=PATH",
    open: open_params,
};

/// Largest effect length sent in one request: the compact header has 32
/// bits; 1 GiB is aligned to any minimum block size.
const MAX_EFFECT: u64 = 1 << 30;
/// Chunk size when write_zeroes has to be emulated with writes.
const ZERO_CHUNK: usize = 1 << 20;
/// The largest READ/WRITE the driver hands a backend (its 32 MiB payload
/// limit), also the cap on the upstream's advertised maximum.
const MAX_PAYLOAD: u32 = 32 << 20;

/// Build the target from `uri=` or nbdkit's separate parameters.
fn target(params: &[(String, String)]) -> Result<Target, String> {
    let get = |k: &str| params.iter().find(|p| p.0 == k).map(|p| p.1.as_str());
    let export = get("export").map(str::to_owned);
    let mut t = match (get("uri"), get("socket"), get("hostname")) {
        (Some(u), None, None) => parse_uri(u)?,
        (None, Some(s), None) => Target {
            address: Address::Unix(s.into()),
            export: String::new(),
        },
        (None, None, Some(h)) => {
            let port = match get("port") {
                None => NBD_PORT,
                Some(p) => p
                    .parse()
                    .map_err(|_| format!("nbd: port: invalid port '{p}'"))?,
            };
            Target {
                address: Address::Tcp(h.to_owned(), port),
                export: String::new(),
            }
        }
        (None, None, None) => {
            return Err(
                "nbd: missing parameter uri (e.g. nbd uri=nbd+unix:///?socket=/tmp/sock)".into(),
            );
        }
        _ => return Err("nbd: give one of uri=, socket= or hostname=".into()),
    };
    if get("port").is_some() && get("hostname").is_none() {
        return Err("nbd: port= goes with hostname=".into());
    }
    if let Some(e) = export {
        if get("uri").is_some() {
            return Err(
                "nbd: export= cannot be combined with uri= (put it in the URI path)".into(),
            );
        }
        t.export = e;
    }
    Ok(t)
}

fn open_params(params: &[(String, String)], _readonly: bool) -> Result<Arc<dyn Backend>, String> {
    let t = target(params)?;
    let p = Proxy::connect(&t).map_err(|e| format!("nbd: {}: {e}", describe(&t)))?;
    Ok(Arc::new(p))
}

fn describe(t: &Target) -> String {
    match &t.address {
        Address::Tcp(h, p) => format!("nbd://{h}:{p}/{}", t.export),
        Address::Unix(s) => format!("nbd+unix:///{}?socket={}", t.export, s.display()),
    }
}

/// A [`Backend`] forwarding every operation to an upstream NBD server.
pub struct Proxy {
    tx: Mutex<Sender<Msg>>,
    waker: Arc<Waker>,
    next_cookie: AtomicU64,
    mode: HeaderMode,
    neg: ClientNegotiated,
    description: String,
}

impl Proxy {
    /// Connect, negotiate, and start the I/O thread.
    ///
    /// # Errors
    ///
    /// Connection and negotiation errors.
    pub fn connect(target: &Target) -> std::io::Result<Self> {
        let opened = handshake::open(target)?;
        let neg = opened.negotiated;
        let max = u64::from(MAX_PAYLOAD) + 4096;
        let decoder = nbd_proto::client::ReplyDecoder::new(neg.mode, max);
        let (tx, rx) = mpsc::channel();
        let (thread, waker) = IoThread::new(opened.stream, rx, decoder, neg.base_allocation)?;
        std::thread::Builder::new()
            .name("nbd-proxy-io".into())
            .spawn(move || thread.run())?;
        let description = match opened.description {
            Some(d) if !d.is_empty() => format!("{d} (via {})", describe(target)),
            _ => describe(target),
        };
        Ok(Self {
            tx: Mutex::new(tx),
            waker,
            next_cookie: AtomicU64::new(1),
            mode: neg.mode,
            neg,
            description,
        })
    }

    fn has(&self, f: TransmissionFlags) -> bool {
        self.neg.flags.contains(f)
    }

    /// Send one request and wait for its last reply.
    fn call(
        &self,
        command: Command,
        flags: CmdFlags,
        offset: u64,
        len: u64,
        payload: &[u8],
        kind: Kind,
    ) -> std::io::Result<Done> {
        let len32 = u32::try_from(len).map_err(|_| Error::from_raw_os_error(libc::EINVAL))?;
        let cookie = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        let req = Request {
            header: RequestHeader {
                flags,
                command,
                cookie: Cookie(cookie),
                offset,
                len: u64::from(len32),
            },
            data: payload,
        };
        let mut frame = vec![0; self.mode.request_header_len() + payload.len()];
        req.encode(self.mode, &mut frame).map_err(|_| dead())?;
        let (done, wait) = mpsc::sync_channel(1);
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(Msg::Submit {
                cookie,
                frame,
                kind,
                done,
            })
            .map_err(|_| dead())?;
        self.waker.wake()?;
        // A dropped completion means the I/O thread is gone.
        wait.recv().map_err(|_| dead())?
    }

    fn simple(
        &self,
        command: Command,
        flags: CmdFlags,
        offset: u64,
        len: u64,
    ) -> std::io::Result<()> {
        // Split effect lengths the 32-bit compact header cannot carry.
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::from_raw_os_error(libc::EINVAL))?;
        let mut pos = offset;
        loop {
            let n = (end - pos).min(MAX_EFFECT);
            self.call(command, flags, pos, n, &[], Kind::Other)?;
            pos += n;
            if pos >= end {
                return Ok(());
            }
        }
    }

    fn fua_flags(&self, fua: bool) -> CmdFlags {
        if fua && self.has(TransmissionFlags::SEND_FUA) {
            CmdFlags::FUA
        } else {
            CmdFlags::empty()
        }
    }

    /// FUA the upstream cannot do: flush afterwards instead.
    fn emulate_fua(&self, fua: bool) -> std::io::Result<()> {
        if fua && !self.has(TransmissionFlags::SEND_FUA) {
            self.flush()?;
        }
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // NBD_CMD_DISC, so the upstream sees an orderly close.
        let header = RequestHeader {
            flags: CmdFlags::empty(),
            command: Command::Disc,
            cookie: Cookie(0),
            offset: 0,
            len: 0,
        };
        let mut disc = vec![0; self.mode.request_header_len()];
        if header.encode(self.mode, &mut disc).is_ok()
            && let Ok(tx) = self.tx.lock()
            && tx.send(Msg::Close(disc)).is_ok()
        {
            let _ = self.waker.wake();
        }
    }
}

impl Backend for Proxy {
    fn size(&self) -> u64 {
        self.neg.size
    }

    fn caps(&self) -> Caps {
        let mut c = Caps::empty();
        for (flag, cap) in [
            (TransmissionFlags::READ_ONLY, Caps::READ_ONLY),
            (TransmissionFlags::SEND_FLUSH, Caps::FLUSH),
            (TransmissionFlags::SEND_FUA, Caps::FUA),
            (TransmissionFlags::SEND_TRIM, Caps::TRIM),
            (TransmissionFlags::SEND_WRITE_ZEROES, Caps::WRITE_ZEROES),
            (TransmissionFlags::SEND_FAST_ZERO, Caps::FAST_ZERO),
            (TransmissionFlags::SEND_CACHE, Caps::CACHE),
            (TransmissionFlags::ROTATIONAL, Caps::ROTATIONAL),
        ] {
            if self.has(flag) {
                c |= cap;
            }
        }
        if self.neg.base_allocation.is_some() {
            c |= Caps::EXTENTS;
        }
        // Every client shares the one upstream connection, so a flush on
        // it covers every write any client completed: consistent across
        // connections whatever the upstream advertises.
        c | Caps::MULTI_CONN
    }

    fn block_size(&self) -> Option<BlockSize> {
        self.neg.block_sizes.map(|b| BlockSize {
            minimum: b.minimum,
            preferred: b.preferred,
            maximum: b.maximum.min(MAX_PAYLOAD),
        })
    }

    fn is_inline(&self) -> bool {
        false
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut pos = 0;
        for chunk in buf.chunks_mut(MAX_PAYLOAD as usize) {
            let len = u32::try_from(chunk.len()).map_err(|_| dead())?;
            let at = offset + pos;
            let kind = Kind::Read { offset: at, len };
            match self.call(
                Command::Read,
                CmdFlags::empty(),
                at,
                u64::from(len),
                &[],
                kind,
            )? {
                Done::Data(d) if d.len() == chunk.len() => chunk.copy_from_slice(&d),
                _ => return Err(dead()),
            }
            pos += u64::from(len);
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> std::io::Result<()> {
        let mut pos = 0;
        for chunk in data.chunks(MAX_PAYLOAD as usize) {
            let len = chunk.len() as u64;
            let flags = self.fua_flags(fua);
            self.call(Command::Write, flags, offset + pos, len, chunk, Kind::Other)?;
            pos += len;
        }
        self.emulate_fua(fua)
    }

    fn flush(&self) -> std::io::Result<()> {
        if self.has(TransmissionFlags::SEND_FLUSH) {
            self.call(Command::Flush, CmdFlags::empty(), 0, 0, &[], Kind::Other)?;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()> {
        // TRIM is a hint: without upstream support, doing nothing is valid.
        if self.has(TransmissionFlags::SEND_TRIM) && len > 0 {
            self.simple(Command::Trim, self.fua_flags(fua), offset, len)?;
        }
        self.emulate_fua(fua)
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> std::io::Result<()> {
        let fua = flags.contains(ZeroFlags::FUA);
        let fast = flags.contains(ZeroFlags::FAST);
        if fast && !self.has(TransmissionFlags::SEND_FAST_ZERO) {
            // The upstream cannot promise speed: fail before touching data.
            return Err(Error::new(
                ErrorKind::Unsupported,
                "upstream has no fast zero",
            ));
        }
        if len == 0 {
            return Ok(());
        }
        if !self.has(TransmissionFlags::SEND_WRITE_ZEROES) {
            let zeroes = vec![0u8; ZERO_CHUNK.min(usize::try_from(len).unwrap_or(ZERO_CHUNK))];
            let mut pos = 0;
            while pos < len {
                let n = (len - pos).min(zeroes.len() as u64) as usize;
                self.write_at(offset + pos, &zeroes[..n], false)?;
                pos += n as u64;
            }
            return self.emulate_fua(fua);
        }
        let mut cmd = self.fua_flags(fua);
        if !flags.contains(ZeroFlags::MAY_TRIM) {
            cmd |= CmdFlags::NO_HOLE;
        }
        if fast {
            cmd |= CmdFlags::FAST_ZERO;
        }
        self.simple(Command::WriteZeroes, cmd, offset, len)?;
        self.emulate_fua(fua)
    }

    fn cache(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if self.has(TransmissionFlags::SEND_CACHE) && len > 0 {
            self.simple(Command::Cache, CmdFlags::empty(), offset, len)?;
        }
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> std::io::Result<usize> {
        let size = self.size();
        if offset > size {
            return Err(Error::from_raw_os_error(libc::EINVAL));
        }
        let len = len.min(size - offset);
        if len == 0 || out.is_empty() {
            return Ok(0);
        }
        let Some(_) = self.neg.base_allocation else {
            out[0] = Extent {
                len,
                flags: ExtentFlags::empty(),
            };
            return Ok(1);
        };
        let ask = len.min(MAX_EFFECT);
        let got = match self.call(
            Command::BlockStatus,
            CmdFlags::empty(),
            offset,
            ask,
            &[],
            Kind::Status,
        )? {
            Done::Extents(e) => e,
            _ => return Err(dead()),
        };
        // Clip to what was asked: the upstream's last extent may run past.
        let mut left = ask;
        let mut n = 0;
        for (slot, e) in out.iter_mut().zip(got.iter().filter(|e| e.len > 0)) {
            if left == 0 {
                break;
            }
            let l = e.len.min(left);
            *slot = Extent {
                len: l,
                flags: e.flags,
            };
            left -= l;
            n += 1;
        }
        if n == 0 {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "upstream sent no extents",
            ));
        }
        Ok(n)
    }

    fn description(&self) -> Option<String> {
        Some(self.description.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn nbdkit_parameter_spellings() {
        let t = target(&kv(&[("socket", "/s"), ("export", "e")])).unwrap();
        assert_eq!(t.address, Address::Unix("/s".into()));
        assert_eq!(t.export, "e");
        let t = target(&kv(&[("hostname", "h"), ("port", "99")])).unwrap();
        assert_eq!(t.address, Address::Tcp("h".into(), 99));
        assert!(target(&[]).unwrap_err().contains("missing parameter uri"));
        assert!(target(&kv(&[("uri", "nbd://h/"), ("socket", "/s")])).is_err());
        assert!(target(&kv(&[("uri", "nbd://h/"), ("export", "x")])).is_err());
        assert!(target(&kv(&[("socket", "/s"), ("port", "1")])).is_err());
    }

    #[test]
    fn upstream_errors_map_back_to_the_same_nbd_error() {
        use crate::errno::to_nbd_errno;
        use nbd_proto::types::ErrorCode;
        for code in [1u32, 5, 12, 22, 28, 75, 95, 108] {
            let e = io::upstream_error(ErrorCode::from(code));
            assert_eq!(to_nbd_errno(&e), code, "{e}");
        }
        assert_eq!(to_nbd_errno(&io::upstream_error(ErrorCode::from(77))), 5);
        assert_eq!(
            io::upstream_error(ErrorCode::Perm).kind(),
            ErrorKind::PermissionDenied
        );
    }

    #[test]
    fn connect_refused_is_a_clear_error() {
        let err = open_params(
            &kv(&[("uri", "nbd+unix:///?socket=/nonexistent/sock")]),
            false,
        )
        .err()
        .unwrap();
        assert!(
            err.starts_with("nbd: nbd+unix:///?socket=/nonexistent/sock:"),
            "{err}"
        );
    }
}
