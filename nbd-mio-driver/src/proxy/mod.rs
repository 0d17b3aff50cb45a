//! The `nbd` backend: a proxy to another NBD server (`nbd uri=nbd://...`),
//! built on nbd-proto's `client::Connection`. It lives in the driver
//! crate because nbd-backends must not depend on nbd-proto; the driver
//! registers it with [`nbd_backends::build_with_filters_ext`] through
//! [`BACKEND`].
//!
//! Parameters, as nbdkit's nbd plugin: `uri=` (or `socket=` /
//! `hostname=` + `port=`, `export=`), `retry=N` (seconds: how long to
//! keep trying the first connection at start-up, and how long a request
//! waits for a lost upstream to come back; default 0) and
//! `shared=true|false` (default false).
//!
//! - `shared=false`: each client connection gets its own upstream
//!   connection through [`Backend::open`] (nbdkit's default). The export's
//!   own value only probes the upstream at start-up (size, flags,
//!   description) and closes that connection.
//! - `shared=true`: one upstream connection serves every client.
//!
//! Each upstream connection is served one of two ways:
//! - Unfiltered (the export *is* the proxy): the server takes it
//!   ([`take_upstream`]) into its own `mio::Poll` ([`upstream::Upstream`]):
//!   many requests in flight, replies completed like pool jobs.
//! - Under a filter (`--filter=cow nbd ...`): the filter calls the proxy
//!   through the [`Backend`] trait on a worker thread, and the proxy
//!   serves each call itself, blocking, one at a time ([`direct::Direct`]).
//!
//! Both paths map operations to commands the same way ([`plan`]) and both
//! reconnect a lost upstream with a bounded backoff: requests in flight
//! then fail with EIO (READ, BLOCK_STATUS and CACHE are resent when
//! `retry` > 0), and later ones succeed once it is back.
//!
//! Out of scope: TLS to the upstream (`nbds://` is refused) and
//! nbdkit's `dynamic-export`.

pub mod direct;
#[cfg(test)]
mod direct_tests;
pub mod handshake;
mod link;
pub(crate) mod plan;
mod tasks;
pub mod upstream;
#[cfg(test)]
mod upstream_tests;
pub mod uri;

use std::io::{Error, ErrorKind};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nbd_backends::{
    Backend, BlockSize, Caps, ClientInfo, Execution, ExtBackend, Extent, ZeroFlags,
};
use nbd_proto::client::ClientNegotiated;
use nbd_proto::flags::TransmissionFlags;

use self::direct::Direct;
use self::handshake::Stream;
use self::upstream::Reconnect;
use self::uri::{Address, NBD_PORT, Target, parse_uri};

pub use self::plan::{MAX_EFFECT, MAX_PAYLOAD};

/// The `nbd` backend for [`nbd_backends::build_with_filters_ext`].
pub const BACKEND: ExtBackend = ExtBackend {
    name: "nbd",
    magic: "uri",
    keys: &[
        "uri", "socket", "hostname", "port", "export", "retry", "shared",
    ],
    help: "proxy to another NBD server: nbd uri=nbd://HOST[:PORT]/EXPORT | nbd+unix:///EXPORT?socket=PATH [retry=SECONDS] [shared=true|false]",
    open: open_params,
};

/// How the proxy connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// nbdkit's `retry=`: seconds of retrying (see the module docs).
    pub retry: Duration,
    /// nbdkit's `shared=`: one upstream connection for every client.
    pub shared: bool,
}

fn get<'a>(params: &'a [(String, String)], k: &str) -> Option<&'a str> {
    params.iter().find(|p| p.0 == k).map(|p| p.1.as_str())
}

/// Build the target from `uri=` or nbdkit's separate parameters.
fn target(params: &[(String, String)]) -> Result<Target, String> {
    let get = |k: &str| get(params, k);
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

/// `retry=` and `shared=`.
fn settings(params: &[(String, String)]) -> Result<Settings, String> {
    let retry = match get(params, "retry") {
        None => Duration::ZERO,
        Some(v) => v
            .parse::<u32>()
            .map(|s| Duration::from_secs(u64::from(s)))
            .map_err(|_| format!("nbd: retry: expected whole seconds, got '{v}'"))?,
    };
    let shared = match get(params, "shared")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("false" | "no" | "off" | "0") => false,
        Some("true" | "yes" | "on" | "1") => true,
        Some(v) => return Err(format!("nbd: shared: expected true or false, got '{v}'")),
    };
    Ok(Settings { retry, shared })
}

fn open_params(params: &[(String, String)], readonly: bool) -> Result<Arc<dyn Backend>, String> {
    let t = target(params)?;
    let s = settings(params)?;
    let p = Proxy::connect(&t, readonly, s).map_err(|e| format!("nbd: {}: {e}", describe(&t)))?;
    Ok(Arc::new(p))
}

fn describe(t: &Target) -> String {
    match &t.address {
        Address::Tcp(h, p) => format!("nbd://{h}:{p}/{}", t.export),
        Address::Unix(s) => format!("nbd+unix:///{}?socket={}", t.export, s.display()),
    }
}

/// An upstream the server takes over: the negotiated socket (or `None`:
/// connect in the background) and what negotiation produced.
pub struct Taken {
    /// The socket, at the start of transmission (still blocking).
    pub stream: Option<Stream>,
    /// Mode, flags, sizes, `base:allocation` id.
    pub negotiated: ClientNegotiated,
    /// How to reconnect it.
    pub reconnect: Reconnect,
}

/// The largest reply payload accepted from an upstream.
pub const MAX_REPLY: u64 = MAX_PAYLOAD as u64 + 4096;

/// The proxy `backend` is, if it is one (an export's value or a
/// per-client handle from [`Backend::open`]; not one a filter wraps, which
/// the filter calls through the trait).
pub fn as_proxy(backend: &dyn Backend) -> Option<&Proxy> {
    backend.as_any()?.downcast_ref::<Proxy>()
}

/// Take the upstream of the proxy that *is* `backend`, so the event loop
/// serves its socket; `None` for other backends or when already taken.
pub fn take_upstream(backend: &dyn Backend) -> Option<Taken> {
    as_proxy(backend)?.take()
}

/// The `nbd` backend as `nbd_backends` sees it: the export's description,
/// per-client handles ([`Backend::open`]) and, under a filter, the
/// requests themselves (see the module docs).
pub struct Proxy {
    /// The connection until the server takes it; under a filter it stays
    /// here and serves the trait's data methods, one request at a time.
    conn: Mutex<Option<Direct>>,
    neg: ClientNegotiated,
    /// `-r`: advertised read-only (so no read-only filter wraps the proxy,
    /// and nbd-proto refuses writes before they reach the upstream).
    readonly: bool,
    description: String,
    reconnect: Reconnect,
    shared: bool,
}

impl Proxy {
    /// Hand the connection to the event loop (see [`take_upstream`]).
    pub fn take_for_loop(&self) -> Option<Taken> {
        self.take()
    }

    fn take(&self) -> Option<Taken> {
        let direct = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        Some(Taken {
            stream: direct.into_stream(),
            negotiated: self.neg,
            reconnect: self.reconnect.clone(),
        })
    }

    /// A new upstream for another event loop's clients of a `shared=true`
    /// export (one connection per loop: loops share nothing), connected in
    /// the background.
    pub fn another_upstream(&self) -> Taken {
        Taken {
            stream: None,
            negotiated: self.neg,
            reconnect: self.reconnect.clone(),
        }
    }

    /// `shared=true`: every client (of one event loop) uses one upstream.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Connect and negotiate (retrying as `settings.retry` says); with
    /// `shared=false` the connection only probes the upstream and is
    /// closed again.
    ///
    /// # Errors
    ///
    /// Connection and negotiation errors.
    pub fn connect(target: &Target, readonly: bool, settings: Settings) -> std::io::Result<Self> {
        let opened = handshake::open_with_retry(target, settings.retry)?;
        let description = match opened.description {
            Some(d) if !d.is_empty() => format!("{d} (via {})", describe(target)),
            _ => describe(target),
        };
        let reconnect = Reconnect {
            peer: opened.peer,
            export: target.export.clone(),
            retry: settings.retry,
        };
        let neg = opened.negotiated;
        let mut direct = Direct::new(opened.stream, neg)?.with_reconnect(reconnect.clone());
        if !settings.shared {
            direct.close();
        }
        Ok(Self {
            conn: Mutex::new(Some(direct)),
            neg,
            readonly,
            description,
            reconnect,
            shared: settings.shared,
        })
    }

    fn has(&self, f: TransmissionFlags) -> bool {
        self.neg.flags.contains(f)
    }

    /// Run `f` on the connection this proxy still holds (it is wrapped by
    /// a filter). A poisoned lock means a request panicked mid-exchange:
    /// the stream is out of step, so the connection is dropped.
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
        // FUA the upstream lacks is emulated with a FLUSH (plan.rs).
        if self.has(TransmissionFlags::SEND_FLUSH) {
            c |= Caps::FUA;
        }
        if self.neg.base_allocation.is_some() {
            c |= Caps::EXTENTS;
        }
        if self.readonly {
            c |= Caps::READ_ONLY;
        }
        // One shared upstream connection: a flush on it covers every write
        // any client completed. Per-client connections are consistent only
        // if the upstream says so.
        if self.shared || self.has(TransmissionFlags::CAN_MULTI_CONN) {
            c |= Caps::MULTI_CONN;
        }
        c
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

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    /// `shared=false`: a handle of its own per client, connected lazily
    /// (by the event loop through [`take_upstream`], or at the first
    /// request under a filter), so opening never blocks.
    fn open(&self, client: &ClientInfo<'_>) -> std::io::Result<Option<Arc<dyn Backend>>> {
        if self.shared {
            return Ok(None);
        }
        log::debug!(
            "nbd proxy: client {} gets its own upstream connection",
            client.id
        );
        let handle = Self {
            conn: Mutex::new(Some(Direct::lazy(self.neg, self.reconnect.clone()))),
            neg: self.neg,
            readonly: self.readonly,
            description: self.description.clone(),
            reconnect: self.reconnect.clone(),
            shared: false,
        };
        Ok(Some(Arc::new(handle)))
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
    fn retry_and_shared_parameters() {
        let s = settings(&kv(&[("retry", "3"), ("shared", "yes")])).unwrap();
        assert_eq!(
            s,
            Settings {
                retry: Duration::from_secs(3),
                shared: true
            }
        );
        let d = settings(&[]).unwrap();
        assert_eq!(
            d,
            Settings {
                retry: Duration::ZERO,
                shared: false
            },
            "nbdkit's defaults"
        );
        assert!(
            settings(&kv(&[("retry", "1.5")]))
                .unwrap_err()
                .contains("whole seconds")
        );
        assert!(
            settings(&kv(&[("shared", "maybe")]))
                .unwrap_err()
                .contains("true or false")
        );
    }

    #[test]
    fn per_client_handles_unless_shared() {
        use nbd_backends::Peer;
        use nbd_proto::TransmissionFlags as TF;
        let client = ClientInfo {
            id: 7,
            peer: Peer::Unix,
            export_name: "",
            tls: false,
        };
        for shared in [false, true] {
            // One session: the start-up probe (closed again unless shared).
            let (path, _log, t) = upstream_tests::upstream(TF::SEND_FLUSH, vec![None]);
            let target = Target {
                address: Address::Unix(path.clone()),
                export: String::new(),
            };
            let s = Settings {
                retry: Duration::ZERO,
                shared,
            };
            let p: Arc<dyn Backend> = Arc::new(Proxy::connect(&target, false, s).unwrap());
            let caps = p.caps();
            assert!(caps.contains(Caps::FUA), "FUA emulated with FLUSH");
            assert_eq!(caps.contains(Caps::MULTI_CONN), shared);
            let handle = p.open(&client).unwrap();
            assert_eq!(handle.is_some(), !shared);
            if let Some(h) = handle {
                assert!(!Arc::ptr_eq(&h, &p), "a handle of its own");
                let taken = take_upstream(&*h).expect("a per-client upstream");
                assert!(
                    taken.stream.is_none(),
                    "connected by the loop, never blocking open"
                );
                assert_eq!(taken.reconnect.peer, handshake::Peer::Unix(path.clone()));
                assert!(take_upstream(&*h).is_none(), "taken once");
            } else {
                assert!(
                    take_upstream(&*p).unwrap().stream.is_some(),
                    "shared: kept connected"
                );
            }
            drop(p);
            t.join().unwrap();
        }
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
