//! The `nbd` backend: a proxy to another NBD server (`nbd uri=nbd://...`),
//! built on nbd-proto's client side. It lives in the driver crate because
//! nbd-backends must not depend on nbd-proto; the driver registers it with
//! [`nbd_backends::build_with_filters_ext`] through [`BACKEND`].
//!
//! One upstream connection per `nbd` export serves every client
//! connection. It is negotiated (blocking) at start-up, then served one of
//! two ways:
//!
//! - Unfiltered (the export *is* the proxy): the server takes the socket
//!   ([`take_upstream`]) and registers it in its own `mio::Poll`
//!   ([`upstream::Upstream`]). The dispatcher encodes each client request
//!   straight into the upstream's output buffer under a cookie of its own,
//!   so many requests are in flight upstream at once; replies are decoded
//!   on readable events and answered like finished pool jobs.
//! - Under a filter (`--filter=cow nbd ...`): the filter calls the proxy
//!   synchronously through the [`Backend`] trait on a worker thread (the
//!   proxy is not inline, so neither is the filter). The proxy then keeps
//!   its socket and serves each call itself, blocking, one request at a
//!   time ([`direct::Direct`]): slower, since requests are serialised
//!   upstream, but any filter stacks over `nbd`.
//!
//! Out of scope: TLS to the upstream (`nbds://` is refused) and reconnect
//! (if the upstream dies, every request fails with EIO).

pub mod direct;
#[cfg(test)]
mod direct_tests;
pub mod handshake;
pub mod upstream;
pub mod uri;

use std::io::{Error, ErrorKind};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use nbd_backends::{Backend, BlockSize, Caps, Execution, ExtBackend, Extent, ZeroFlags};
use nbd_proto::client::ClientNegotiated;
use nbd_proto::flags::TransmissionFlags;

use self::direct::Direct;
use self::handshake::Stream;
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
pub(crate) const MAX_EFFECT: u64 = 1 << 30;
/// The largest READ/WRITE the driver hands a backend (its 32 MiB payload
/// limit), also the cap on the upstream's advertised maximum.
pub(crate) const MAX_PAYLOAD: u32 = 32 << 20;

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

fn open_params(params: &[(String, String)], readonly: bool) -> Result<Arc<dyn Backend>, String> {
    let t = target(params)?;
    let p =
        Arc::new(Proxy::connect(&t, readonly).map_err(|e| format!("nbd: {}: {e}", describe(&t)))?);
    OPENED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Arc::downgrade(&p));
    Ok(p)
}

fn describe(t: &Target) -> String {
    match &t.address {
        Address::Tcp(h, p) => format!("nbd://{h}:{p}/{}", t.export),
        Address::Unix(s) => format!("nbd+unix:///{}?socket={}", t.export, s.display()),
    }
}

/// Every proxy opened in this process, so the server can find the
/// upstream socket behind an export's `Arc<dyn Backend>` (the trait has no
/// downcast).
static OPENED: Mutex<Vec<Weak<Proxy>>> = Mutex::new(Vec::new());

/// An opened upstream the server takes over: the negotiated socket and
/// what negotiation produced.
pub struct Taken {
    /// The socket, at the start of transmission (still blocking).
    pub stream: Stream,
    /// Mode, flags, sizes, `base:allocation` id.
    pub negotiated: ClientNegotiated,
}

/// The largest reply payload accepted from an upstream.
pub const MAX_REPLY: u64 = MAX_PAYLOAD as u64 + 4096;

/// The identity of a backend: the data pointer of its `Arc`.
pub fn backend_id(b: &Arc<dyn Backend>) -> usize {
    Arc::as_ptr(b).cast::<()>() as usize
}

/// Take the upstream socket of the proxy that *is* `backend` (not one a
/// filter wraps); `None` for other backends or when already taken.
pub fn take_upstream(backend: &Arc<dyn Backend>) -> Option<Taken> {
    let id = backend_id(backend);
    let opened = OPENED.lock().unwrap_or_else(PoisonError::into_inner);
    let p = opened
        .iter()
        .filter_map(Weak::upgrade)
        .find(|p| Arc::as_ptr(p).cast::<()>() as usize == id)?;
    let stream = p
        .conn
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()?
        .into_stream();
    Some(Taken {
        stream,
        negotiated: p.neg,
    })
}

/// True when a live proxy still holds its socket: a filter wraps it, so
/// it serves requests itself, one at a time ([`direct`]).
pub fn any_untaken() -> bool {
    let opened = OPENED.lock().unwrap_or_else(PoisonError::into_inner);
    opened.iter().filter_map(Weak::upgrade).any(|p| {
        p.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    })
}

/// The `nbd` backend as `nbd_backends` sees it: the export's description,
/// and, under a filter, the requests themselves (see the module docs).
pub struct Proxy {
    /// The negotiated connection until the server takes it; under a
    /// filter it stays here and serves the trait's data methods, one
    /// request at a time.
    conn: Mutex<Option<Direct>>,
    neg: ClientNegotiated,
    /// `-r`: advertised read-only (so no read-only filter wraps the proxy,
    /// and nbd-proto refuses writes before they reach the upstream).
    readonly: bool,
    description: String,
}

impl Proxy {
    /// Connect and negotiate; the server registers the socket later.
    ///
    /// # Errors
    ///
    /// Connection and negotiation errors.
    pub fn connect(target: &Target, readonly: bool) -> std::io::Result<Self> {
        let opened = handshake::open(target)?;
        let description = match opened.description {
            Some(d) if !d.is_empty() => format!("{d} (via {})", describe(target)),
            _ => describe(target),
        };
        Ok(Self {
            conn: Mutex::new(Some(Direct::new(opened.stream, opened.negotiated)?)),
            neg: opened.negotiated,
            readonly,
            description,
        })
    }

    fn has(&self, f: TransmissionFlags) -> bool {
        self.neg.flags.contains(f)
    }

    /// Run `f` on the connection this proxy still holds (it is wrapped by
    /// a filter). A poisoned lock means a request panicked mid-exchange:
    /// the stream is out of step, so the connection is dead.
    fn with<T>(&self, f: impl FnOnce(&mut Direct) -> std::io::Result<T>) -> std::io::Result<T> {
        let mut guard = match self.conn.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                let mut g = poisoned.into_inner();
                if let Some(d) = g.as_mut() {
                    d.die("a request panicked mid-exchange");
                }
                g
            }
        };
        match guard.as_mut() {
            Some(d) => f(d),
            // Taken by the event loop: the trait is never called then.
            None => Err(Error::new(
                ErrorKind::Unsupported,
                "the nbd backend is driven by the event loop",
            )),
        }
    }

    fn writable(&self) -> std::io::Result<()> {
        if self.readonly {
            Err(ErrorKind::PermissionDenied.into())
        } else {
            Ok(())
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
        if self.readonly {
            c |= Caps::READ_ONLY;
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

    fn execution(&self) -> Execution {
        Execution::Blocking
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.with(|d| d.read(offset, buf))
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> std::io::Result<()> {
        self.writable()?;
        self.with(|d| d.write(offset, data, fua))
    }

    fn flush(&self) -> std::io::Result<()> {
        self.with(Direct::flush)
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()> {
        self.writable()?;
        self.with(|d| d.trim(offset, len, fua))
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> std::io::Result<()> {
        self.writable()?;
        self.with(|d| d.write_zeroes(offset, len, flags))
    }

    fn cache(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.with(|d| d.cache(offset, len))
    }

    fn extents(&self, offset: u64, len: u64, out: &mut [Extent]) -> std::io::Result<usize> {
        self.with(|d| d.extents(offset, len, out))
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
            let e = upstream::upstream_error(ErrorCode::from(code));
            assert_eq!(to_nbd_errno(&e), code, "{e}");
        }
        assert_eq!(
            to_nbd_errno(&upstream::upstream_error(ErrorCode::from(77))),
            5
        );
        assert_eq!(
            upstream::upstream_error(ErrorCode::Perm).kind(),
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
