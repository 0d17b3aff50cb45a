//! `curl URL`: a read-only image on an HTTP or HTTPS server, read with
//! `Range` requests (nbdkit's curl plugin, for HTTP; built on `ureq`, a
//! blocking client, so reads run on the driver's worker pool).
//!
//! The size comes from a `HEAD` request (`Content-Length`), and the server
//! must say `Accept-Ranges: bytes`. Every read is one `GET` with
//! `Range: bytes=A-B` answered by `206` with exactly that range (a `200`
//! is accepted only for a read of the whole image); anything else is EIO,
//! logged with the status. Connections are kept alive and reused.

use std::io::{self, Read as _};
use std::time::Duration;

use ureq::tls::{PemItem, RootCerts, TlsConfig};

use crate::registry::Params;
use crate::util::{check_read, len64, read_only, read_secret};
use crate::{Backend, Caps, ZeroFlags};

/// Debian's (and libcurl's there) system certificate bundle, used unless
/// `cainfo=` names another; Mozilla's built-in roots where it is missing.
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// An HTTP image.
pub struct CurlBackend {
    agent: ureq::Agent,
    url: String,
    headers: Vec<(String, String)>,
    size: u64,
}

fn http_err(url: &str, what: &str) -> io::Error {
    log::warn!("curl: {url}: {what}");
    io::Error::from_raw_os_error(libc::EIO)
}

impl CurlBackend {
    pub(crate) fn from_params(p: &mut Params<'_>) -> Result<Self, String> {
        let url = p
            .take("url")
            .ok_or("curl: missing parameter url (e.g. curl https://host/disk.img)")?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "curl: url: '{url}': only http:// and https:// are supported"
            ));
        }
        let mut headers = Vec::new();
        for h in p.take_all("header") {
            let (k, v) = h
                .split_once(':')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| format!("curl: header: expected 'Name: value', got '{h}'"))?;
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        if let Some(c) = p.take("cookie") {
            headers.push(("Cookie".into(), read_secret("curl", "cookie", c)?));
        }
        match (p.take("user"), p.take("password")) {
            (Some(user), pw) => {
                let pw = pw
                    .map(|v| read_secret("curl", "password", v))
                    .transpose()?
                    .unwrap_or_default();
                let token = base64_encode(format!("{user}:{pw}").as_bytes());
                headers.push(("Authorization".into(), format!("Basic {token}")));
            }
            (None, Some(_)) => return Err("curl: password= needs user=".into()),
            (None, None) => {}
        }
        let verify = p.take_bool("curl", "sslverify")?.unwrap_or(true);
        let follow = p.take_bool("curl", "followlocation")?.unwrap_or(true);
        let timeout = match p.take("timeout") {
            None | Some("0") => None,
            Some(v) => {
                Some(Duration::from_secs(v.parse().map_err(|_| {
                    format!("curl: timeout: expected seconds, got '{v}'")
                })?))
            }
        };
        let roots = roots(p.take("cainfo"))?;
        let mut cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(if follow { 10 } else { 0 })
            .timeout_global(timeout)
            .tls_config(
                TlsConfig::builder()
                    .disable_verification(!verify)
                    .root_certs(roots)
                    .build(),
            );
        if let Some(ua) = p.take("user-agent") {
            cfg = cfg.user_agent(ua);
        }
        if let Some(proxy) = p.take("proxy") {
            let proxy = ureq::Proxy::new(proxy).map_err(|e| format!("curl: proxy: {e}"))?;
            cfg = cfg.proxy(Some(proxy));
        }
        let agent: ureq::Agent = cfg.build().into();
        let mut b = Self {
            agent,
            url: url.to_owned(),
            headers,
            size: 0,
        };
        b.size = b.head().map_err(|e| format!("curl: {url}: {e}"))?;
        Ok(b)
    }

    /// The image's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `HEAD`: the size, and a check that ranges are served.
    fn head(&self) -> Result<u64, String> {
        let mut req = self.agent.head(&self.url);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let resp = req.call().map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("HEAD answered {status}"));
        }
        let h = resp.headers();
        let size = h
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or("the server sent no Content-Length, so the size is unknown")?;
        let ranges = h
            .get("accept-ranges")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ranges
            .split(',')
            .any(|r| r.trim().eq_ignore_ascii_case("bytes"))
        {
            return Err(
                "the server does not accept byte-range requests (no Accept-Ranges: bytes)".into(),
            );
        }
        if size > crate::MAX_SIZE {
            return Err(format!("size {size} is larger than 2^63-1"));
        }
        Ok(size)
    }
}

/// Trusted roots: `cainfo=FILE`, else the system bundle, else Mozilla's.
fn roots(cainfo: Option<&str>) -> Result<RootCerts, String> {
    let path = match cainfo {
        Some("") => return Ok(RootCerts::WebPki),
        Some(p) => p,
        None if std::path::Path::new(SYSTEM_CA).exists() => SYSTEM_CA,
        None => return Ok(RootCerts::WebPki),
    };
    let pem = std::fs::read(path).map_err(|e| format!("curl: cainfo: {path}: {e}"))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("curl: cainfo: {path}: no PEM certificates"));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

/// Base64 for the basic-authentication header.
fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Backend for CurlBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        Caps::READ_ONLY | Caps::MULTI_CONN
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = check_read(offset, len64(buf), self.size)?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut req = self
            .agent
            .get(&self.url)
            .header("Range", format!("bytes={offset}-{}", end - 1));
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let mut resp = req
            .call()
            .map_err(|e| http_err(&self.url, &e.to_string()))?;
        let status = resp.status().as_u16();
        let whole = offset == 0 && end == self.size;
        if status != 206 && !(status == 200 && whole) {
            return Err(http_err(
                &self.url,
                &format!("GET bytes={offset}-{} answered {status}", end - 1),
            ));
        }
        let mut reader = resp.body_mut().as_reader();
        reader
            .read_exact(buf)
            .map_err(|e| http_err(&self.url, &format!("short read: {e}")))?;
        // Drain what is left (nothing, from a correct server) so the
        // connection can be reused, but never more than a little.
        let mut rest = [0u8; 512];
        if reader.read(&mut rest).unwrap_or(0) > 0 {
            return Err(http_err(
                &self.url,
                "the server sent more than the range asked for",
            ));
        }
        Ok(())
    }

    fn write_at(&self, _offset: u64, _data: &[u8], _fua: bool) -> io::Result<()> {
        Err(read_only())
    }

    fn trim(&self, _offset: u64, _len: u64, _fua: bool) -> io::Result<()> {
        Err(read_only())
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _flags: ZeroFlags) -> io::Result<()> {
        Err(read_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_token() {
        assert_eq!(
            base64_encode(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b""), "");
    }
}
