//! Where the upstream server is: `nbd://host[:port][/export]` or
//! `nbd+unix:///[export]?socket=PATH` (the NBD URI scheme, as libnbd and
//! qemu spell it), or nbdkit's separate `hostname=`/`port=`/`socket=`/
//! `export=` parameters.

use std::path::PathBuf;

/// The default NBD TCP port (IANA).
pub const NBD_PORT: u16 = 10809;

/// How to reach the upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A TCP host (name, IPv4, or IPv6 without brackets) and port.
    Tcp(String, u16),
    /// A Unix-domain socket path.
    Unix(PathBuf),
}

/// An upstream export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub address: Address,
    /// The export name to ask for ("" = the server's default).
    pub export: String,
}

/// Parse an NBD URI.
///
/// # Errors
///
/// A one-line message for other schemes (`nbds://` and `nbds+unix://`
/// need TLS, which the proxy does not do upstream), a missing `socket=`,
/// a bad port or bad percent-encoding.
pub fn parse_uri(uri: &str) -> Result<Target, String> {
    let bad = |why: &str| format!("nbd: uri '{uri}': {why}");
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
        bad("expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH")
    })?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let export = percent_decode(path).ok_or_else(|| bad("bad %-escape in the export name"))?;
    let mut socket = None;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("socket", v)) => {
                socket = Some(percent_decode(v).ok_or_else(|| bad("bad %-escape in socket"))?);
            }
            _ => return Err(bad(&format!("unsupported query parameter '{kv}'"))),
        }
    }
    let address = match scheme {
        "nbd" => {
            if socket.is_some() {
                return Err(bad("socket= belongs to nbd+unix://"));
            }
            let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad port"))?;
            if host.is_empty() {
                return Err(bad("missing host"));
            }
            Address::Tcp(host, port)
        }
        "nbd+unix" => {
            if !authority.is_empty() {
                return Err(bad(
                    "nbd+unix:// takes no host (nbd+unix:///EXPORT?socket=PATH)",
                ));
            }
            Address::Unix(socket.ok_or_else(|| bad("missing ?socket=PATH"))?.into())
        }
        "nbds" | "nbds+unix" => {
            return Err(bad(
                "TLS to the upstream server is not supported by the nbd proxy",
            ));
        }
        other => return Err(bad(&format!("unknown scheme '{other}'"))),
    };
    Ok(Target { address, export })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(a: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(v6) = a.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        (h, tail.strip_prefix(':'))
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    let port = match port {
        None | Some("") => NBD_PORT,
        Some(p) => p.parse().ok()?,
    };
    Some((host.to_owned(), port))
}

/// `%XX` decoding; `None` on a truncated or non-hex escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(addr: Address, export: &str) -> Result<Target, String> {
        Ok(Target {
            address: addr,
            export: export.to_owned(),
        })
    }

    #[test]
    fn accepted_forms() {
        let tcp = |h: &str, p| Address::Tcp(h.to_owned(), p);
        assert_eq!(parse_uri("nbd://localhost"), t(tcp("localhost", 10809), ""));
        assert_eq!(
            parse_uri("nbd://127.0.0.1:1234/"),
            t(tcp("127.0.0.1", 1234), "")
        );
        assert_eq!(parse_uri("nbd://h:1/a%20b/c"), t(tcp("h", 1), "a b/c"));
        assert_eq!(parse_uri("nbd://[::1]:99/x"), t(tcp("::1", 99), "x"));
        assert_eq!(parse_uri("nbd://[::1]"), t(tcp("::1", 10809), ""));
        assert_eq!(
            parse_uri("nbd+unix:///disk?socket=/tmp/s%3Dk"),
            t(Address::Unix("/tmp/s=k".into()), "disk")
        );
        assert_eq!(
            parse_uri("nbd+unix://?socket=/s"),
            t(Address::Unix("/s".into()), "")
        );
    }

    #[test]
    fn refused_forms_say_why() {
        let e = |u| parse_uri(u).unwrap_err();
        assert!(e("nbds://h/x").contains("TLS"));
        assert!(e("nbd+unix:///x").contains("socket"));
        assert!(e("nbd://h:notaport/").contains("port"));
        assert!(e("nbd:///x").contains("host"));
        assert!(e("http://h/").contains("scheme"));
        assert!(e("/tmp/sock").contains("expected"));
        assert!(e("nbd://h/%zz").contains("escape"));
        assert!(e("nbd+unix://h/?socket=/s").contains("no host"));
        assert!(e("nbd://h/?tls=1").contains("tls=1"));
    }
}
