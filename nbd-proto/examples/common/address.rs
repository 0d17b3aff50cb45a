//! Where the server is, from the command line: an NBD URI
//! (`nbd://HOST[:PORT][/EXPORT]`, `nbd+unix:///[EXPORT]?socket=PATH`),
//! `HOST PORT`, or a Unix socket path. Shared by the client examples.

/// A server address and the export to open.
#[derive(Debug)]
pub enum Address {
    /// TCP host and port.
    Tcp(String, u16),
    /// Unix-domain socket path.
    Unix(String),
}

/// Parse the arguments after the program name; returns the address and
/// the export name ("" = the server's default).
pub fn parse(args: &[String]) -> Result<(Address, String), String> {
    match args {
        [uri] if uri.starts_with("nbd+unix://") => {
            let rest = &uri["nbd+unix://".len()..];
            let (path, query) = rest.split_once('?').ok_or("nbd+unix:// needs ?socket=PATH")?;
            let socket = query
                .strip_prefix("socket=")
                .ok_or("nbd+unix:// needs ?socket=PATH")?;
            let export = path.strip_prefix('/').unwrap_or(path);
            Ok((Address::Unix(socket.into()), export.into()))
        }
        [uri] if uri.starts_with("nbd://") => {
            let rest = &uri["nbd://".len()..];
            let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| format!("bad port '{p}'"))?),
                None => (authority, 10809),
            };
            Ok((Address::Tcp(host.into(), port), export.into()))
        }
        [path] => Ok((Address::Unix(path.clone()), String::new())),
        [host, port] => {
            let port = port.parse().map_err(|_| format!("bad port '{port}'"))?;
            Ok((Address::Tcp(host.clone(), port), String::new()))
        }
        _ => Err("usage: CLIENT nbd://HOST[:PORT]/EXPORT | nbd+unix:///EXPORT?socket=PATH | HOST PORT | SOCKET".into()),
    }
}

/// The test pattern written and read back: never all zero in a block.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}
