//! The `rbd` backend's command line: `rbd [POOL/[NAMESPACE/]]IMAGE[@SNAP]`
//! (the `rbd` tool's image spec as the magic word) or the keys one by one;
//! the keys and their help are in the catalogue (catalog.rs).

/// Seconds to wait for the monitors at start-up unless `connect-timeout=`.
pub const CONNECT_TIMEOUT: u64 = 30;

/// What to open and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Pool name (default `rbd`).
    pub pool: String,
    /// RADOS namespace ("" = the default namespace).
    pub namespace: String,
    /// Image name.
    pub image: String,
    /// Snapshot: served read-only.
    pub snap: Option<String>,
    /// ceph.conf; `None` = librados' default search ($CEPH_CONF,
    /// /etc/ceph/ceph.conf, ~/.ceph/config, ./ceph.conf).
    pub conf: Option<String>,
    /// Client name without `client.` (default `admin`).
    pub id: String,
    /// Keyring path; `None` = whatever ceph.conf says.
    pub keyring: Option<String>,
    /// Fail an OSD request after this many seconds (`rados_osd_op_timeout`);
    /// 0 = wait for the cluster as librbd does by default.
    pub timeout: u64,
    /// Give up connecting after this many seconds (`client_mount_timeout`).
    pub connect_timeout: u64,
}

impl Params {
    /// `pool/namespace/image@snap` as the `rbd` tool prints it.
    pub fn spec(&self) -> String {
        let mut s = self.pool.clone();
        s.push('/');
        if !self.namespace.is_empty() {
            s.push_str(&self.namespace);
            s.push('/');
        }
        s.push_str(&self.image);
        if let Some(snap) = &self.snap {
            s.push('@');
            s.push_str(snap);
        }
        s
    }

    /// Parse from `take(key)` (the registry's parameter list).
    ///
    /// # Errors
    ///
    /// One line naming the parameter.
    pub fn parse<'a>(mut take: impl FnMut(&str) -> Option<&'a str>) -> Result<Self, String> {
        let spec = take("image").ok_or(
            "rbd: missing parameter image (e.g. rbd rbd/disk0 or rbd image=disk0 pool=rbd)",
        )?;
        let (path, snap) = match spec.split_once('@') {
            Some((p, s)) => (p, Some(s)),
            None => (spec, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (pool, namespace, image) = match parts.as_slice() {
            [image] => (None, None, *image),
            [pool, image] => (Some(*pool), None, *image),
            [pool, ns, image] => (Some(*pool), Some(*ns), *image),
            _ => {
                return Err(format!(
                    "rbd: image: '{spec}' is not [POOL/[NAMESPACE/]]IMAGE[@SNAP]"
                ));
            }
        };
        let mut merged = |key: &str, inline: Option<&'a str>| match (inline, take(key)) {
            (Some(_), Some(_)) => Err(format!(
                "rbd: {key} given both in image= and as {key}=; give it once"
            )),
            (a, b) => Ok(a.or(b)),
        };
        let pool = merged("pool", pool)?.unwrap_or("rbd");
        let namespace = merged("namespace", namespace)?.unwrap_or("");
        let snap = merged("snap", snap)?;
        for (key, v) in [("image", Some(image)), ("pool", Some(pool)), ("snap", snap)] {
            if v.is_some_and(str::is_empty) {
                return Err(format!("rbd: {key}: must not be empty (image='{spec}')"));
            }
        }
        let id = take("id").unwrap_or("admin");
        let id = id.strip_prefix("client.").unwrap_or(id);
        Ok(Self {
            pool: pool.to_owned(),
            namespace: namespace.to_owned(),
            image: image.to_owned(),
            snap: snap.map(str::to_owned),
            conf: take("conf").map(str::to_owned),
            id: id.to_owned(),
            keyring: take("keyring").map(str::to_owned),
            timeout: secs("timeout", take("timeout"), 0)?,
            connect_timeout: secs("connect-timeout", take("connect-timeout"), CONNECT_TIMEOUT)?,
        })
    }
}

fn secs(key: &str, v: Option<&str>, default: u64) -> Result<u64, String> {
    let Some(v) = v else { return Ok(default) };
    let n = v.strip_suffix('s').unwrap_or(v);
    match n.parse::<u64>() {
        Ok(s) if s <= 86_400 => Ok(s),
        _ => Err(format!(
            "rbd: {key}: expected whole seconds from 0 to 86400, got '{v}'"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[(&str, &str)]) -> Result<Params, String> {
        Params::parse(|k| args.iter().find(|a| a.0 == k).map(|a| a.1))
    }

    #[test]
    fn spec_forms() {
        let p = parse(&[("image", "disk")]).unwrap();
        assert_eq!(
            (p.pool.as_str(), p.image.as_str(), p.id.as_str()),
            ("rbd", "disk", "admin")
        );
        assert_eq!(p.spec(), "rbd/disk");
        let p = parse(&[("image", "vms/tenant/disk@snap1"), ("id", "client.nbd")]).unwrap();
        assert_eq!(p.spec(), "vms/tenant/disk@snap1");
        assert_eq!(p.id, "nbd");
        let p = parse(&[
            ("image", "disk"),
            ("pool", "vms"),
            ("snap", "s"),
            ("timeout", "5s"),
        ])
        .unwrap();
        assert_eq!((p.spec().as_str(), p.timeout), ("vms/disk@s", 5));
        assert_eq!(p.connect_timeout, CONNECT_TIMEOUT);
    }

    #[test]
    fn errors_name_the_parameter() {
        let e = |a: &[(&str, &str)]| parse(a).unwrap_err();
        assert!(e(&[]).contains("missing parameter image"));
        assert!(e(&[("image", "a/b/c/d")]).contains("[POOL/[NAMESPACE/]]IMAGE[@SNAP]"));
        assert!(e(&[("image", "p/d"), ("pool", "q")]).contains("pool given both"));
        assert!(e(&[("image", "p/")]).starts_with("rbd: image: must not be empty"));
        assert!(e(&[("image", "d"), ("timeout", "soon")]).starts_with("rbd: timeout:"));
        assert!(
            e(&[("image", "d"), ("connect-timeout", "-1")]).starts_with("rbd: connect-timeout:")
        );
    }
}
