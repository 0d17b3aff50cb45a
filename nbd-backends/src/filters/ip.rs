//! `ip`: allow or deny clients by address (`allow=`, `deny=`, comma
//! lists), checked in [`Backend::preconnect`] and again at open: a client
//! matching an allow rule is accepted, else one matching a deny rule is
//! refused, else it is accepted (nbdkit's rules).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use super::params::FilterParams;
use crate::{Backend, ClientInfo, Peer};

/// One entry of `allow=` / `deny=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `all` / `any`.
    Any,
    /// `allipv4` / `anyipv4`.
    AnyIpv4,
    /// `allipv6` / `anyipv6`.
    AnyIpv6,
    /// `allunix` / `anyunix`.
    AnyUnix,
    /// `allvsock` / `anyvsock`.
    AnyVsock,
    /// An address with a prefix length (`10.0.0.0/8`, `::1`).
    Net(IpAddr, u8),
    /// `vsock-cid:CID`.
    VsockCid(u32),
    /// `vsock-port:PORT`.
    VsockPort(u32),
    /// `uid:`, `gid:`, `pid:`: Unix peer credentials, which nbdd does not
    /// pass to filters: never matches.
    Credential(String),
}

impl Rule {
    /// Parse one rule.
    ///
    /// # Errors
    ///
    /// A reason naming the accepted forms.
    pub fn parse(s: &str) -> Result<Self, String> {
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("'{s}': expected a number"))
        };
        Ok(match s {
            "all" | "any" => Self::Any,
            "allipv4" | "anyipv4" => Self::AnyIpv4,
            "allipv6" | "anyipv6" => Self::AnyIpv6,
            "allunix" | "anyunix" => Self::AnyUnix,
            "allvsock" | "anyvsock" => Self::AnyVsock,
            _ if s.starts_with("vsock-cid:") => Self::VsockCid(num(&s[10..])?),
            _ if s.starts_with("vsock-port:") => Self::VsockPort(num(&s[11..])?),
            _ if ["uid:", "gid:", "pid:"].iter().any(|p| s.starts_with(p)) => {
                num(&s[4..])?;
                Self::Credential(s.to_owned())
            }
            _ => {
                let (addr, bits) = match s.split_once('/') {
                    Some((a, b)) => (a, Some(b)),
                    None => (s, None),
                };
                let addr: IpAddr = addr.parse().map_err(|_| {
                    format!("'{s}' is not an address, a network or a keyword (all, allipv4, allipv6, allunix, allvsock, vsock-cid:, vsock-port:)")
                })?;
                let addr = addr.to_canonical();
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let bits = match bits {
                    None => max,
                    Some(b) => b
                        .parse::<u8>()
                        .ok()
                        .filter(|&b| b <= max)
                        .ok_or_else(|| format!("'{s}': prefix length must be 0 to {max}"))?,
                };
                Self::Net(addr, bits)
            }
        })
    }

    /// Does `peer` match?
    pub fn matches(&self, peer: &Peer) -> bool {
        match (self, peer) {
            (Self::Any, _) => true,
            (Self::AnyUnix, Peer::Unix) | (Self::AnyVsock, Peer::Vsock { .. }) => true,
            (Self::AnyIpv4, Peer::Tcp(a)) => a.ip().to_canonical().is_ipv4(),
            (Self::AnyIpv6, Peer::Tcp(a)) => a.ip().to_canonical().is_ipv6(),
            (Self::Net(net, bits), Peer::Tcp(a)) => in_net(a.ip().to_canonical(), *net, *bits),
            (Self::VsockCid(c), Peer::Vsock { cid, .. }) => c == cid,
            (Self::VsockPort(p), Peer::Vsock { port, .. }) => p == port,
            _ => false,
        }
    }
}

fn in_net(a: IpAddr, net: IpAddr, bits: u8) -> bool {
    let mask = |width: u32| {
        if bits == 0 {
            0
        } else {
            u128::MAX << (width - u32::from(bits))
        }
    };
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = mask(32) as u32;
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = mask(128);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// Admits clients by their address.
pub struct Ip {
    inner: Arc<dyn Backend>,
    rules: Arc<(Vec<Rule>, Vec<Rule>)>,
}

impl Ip {
    /// `allow` and `deny` rules over `inner`.
    pub fn new(inner: Arc<dyn Backend>, allow: Vec<Rule>, deny: Vec<Rule>) -> Self {
        Self {
            inner,
            rules: Arc::new((allow, deny)),
        }
    }

    fn check(&self, client: &ClientInfo<'_>) -> io::Result<()> {
        let (allow, deny) = &*self.rules;
        if allow.iter().any(|r| r.matches(&client.peer))
            || !deny.iter().any(|r| r.matches(&client.peer))
        {
            return Ok(());
        }
        let who = match client.peer {
            Peer::Tcp(a) => a.ip().to_string(),
            Peer::Unix => "a Unix socket".to_owned(),
            Peer::Vsock { cid, port } => format!("vsock {cid}:{port}"),
            Peer::Other => "an unknown transport".to_owned(),
        };
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("ip filter: client from {who} denied"),
        ))
    }
}

pub(crate) fn spec(p: &mut FilterParams<'_, '_>) -> Result<super::Spec, String> {
    // Repeatable, as in nbdkit: `allow=A allow=B` is `allow=A,B`.
    let list = |p: &mut FilterParams<'_, '_>, key: &str| -> Result<Vec<Rule>, String> {
        let mut rules = Vec::new();
        for v in p.take_all(key) {
            for s in v.split(',').filter(|s| !s.is_empty()) {
                rules.push(Rule::parse(s).map_err(|e| p.bad(key, v, e))?);
            }
        }
        Ok(rules)
    };
    let allow = list(p, "allow")?;
    let deny = list(p, "deny")?;
    if allow
        .iter()
        .chain(&deny)
        .any(|r| matches!(r, Rule::Credential(_)))
    {
        p.warn("uid:, gid: and pid: rules never match: nbdd does not pass Unix peer credentials to filters");
    }
    Ok(super::Spec::new(move |b| {
        Ok(Arc::new(Ip::new(b, allow.clone(), deny.clone())))
    }))
}

impl super::Filter for Ip {
    fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
    // try_read_cached forwarded: reads are the layer below's; the filter acts at connect.
    fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        super::layer::forward_cached(self, offset, buf)
    }
    // try_write_cached forwarded: writes are the layer below's; the filter acts at connect.
    fn try_write_cached(&self, offset: u64, data: &[u8]) -> bool {
        super::layer::forward_cached_write(self, offset, data)
    }
    fn reopen(&self, inner: Arc<dyn Backend>) -> io::Result<Arc<dyn Backend>> {
        Ok(Arc::new(Self {
            inner,
            rules: Arc::clone(&self.rules),
        }))
    }
    fn preconnect(&self, client: &ClientInfo<'_>) -> io::Result<()> {
        self.check(client)?;
        self.inner.preconnect(client)
    }
    fn open(&self, client: &ClientInfo<'_>) -> io::Result<Option<Arc<dyn Backend>>> {
        self.check(client)?;
        match self.inner.open(client)? {
            Some(h) => super::Filter::reopen(self, h).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    fn client(peer: Peer) -> ClientInfo<'static> {
        ClientInfo {
            id: 1,
            peer,
            export_name: "",
            tls: false,
        }
    }

    fn tcp(a: &str) -> Peer {
        Peer::Tcp(std::net::SocketAddr::new(a.parse().unwrap(), 5000))
    }

    fn ip(allow: &str, deny: &str) -> Ip {
        let l = |s: &str| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(|x| Rule::parse(x).unwrap())
                .collect()
        };
        Ip::new(Arc::new(MemoryBackend::new(1).unwrap()), l(allow), l(deny))
    }

    #[test]
    fn allow_first_then_deny_then_accept() {
        let f = ip("127.0.0.1,::1", "all");
        assert!(f.preconnect(&client(tcp("127.0.0.1"))).is_ok());
        assert!(
            f.preconnect(&client(tcp("::ffff:127.0.0.1"))).is_ok(),
            "mapped"
        );
        assert!(f.preconnect(&client(tcp("::1"))).is_ok());
        let e = f.preconnect(&client(tcp("10.1.2.3"))).unwrap_err();
        assert_eq!(e.to_string(), "ip filter: client from 10.1.2.3 denied");
        assert!(f.open(&client(Peer::Unix)).is_err());
        let f = ip("", "8.0.0.0/8,anyunix,vsock-cid:3");
        assert!(f.preconnect(&client(tcp("8.8.8.8"))).is_err());
        assert!(f.preconnect(&client(tcp("9.8.8.8"))).is_ok());
        assert!(f.preconnect(&client(Peer::Unix)).is_err());
        assert!(
            f.preconnect(&client(Peer::Vsock { cid: 3, port: 1 }))
                .is_err()
        );
        assert!(
            f.preconnect(&client(Peer::Vsock { cid: 4, port: 1 }))
                .is_ok()
        );
        let f = ip("anyipv6", "all");
        assert!(f.preconnect(&client(tcp("fe80::1"))).is_ok());
        assert!(f.preconnect(&client(tcp("1.2.3.4"))).is_err());
        let f = ip("", "2001:db8::/32");
        assert!(f.preconnect(&client(tcp("2001:db8:1::5"))).is_err());
        assert!(f.preconnect(&client(tcp("2001:db9::5"))).is_ok());
    }

    #[test]
    fn bad_rules_are_named() {
        for bad in ["1.2.3.4/33", "bogus", "vsock-cid:x", "::1/129"] {
            assert!(Rule::parse(bad).unwrap_err().contains(bad), "{bad}");
        }
        assert_eq!(Rule::parse("uid:0"), Ok(Rule::Credential("uid:0".into())));
        assert!(!Rule::Credential("uid:0".into()).matches(&Peer::Unix));
    }
}
