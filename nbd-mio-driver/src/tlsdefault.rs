//! Where TLS certificates are looked for when `--tls` is on and neither
//! `--tls-certificates` nor `--tls-psk` is given: nbdkit's places, so a
//! machine set up for nbdkit works unchanged.

use std::path::PathBuf;

/// The directory for a server started as root.
pub const ROOT_DIR: &str = "/etc/pki/nbdkit";

/// `/etc/pki/nbdkit` for root, `$HOME/.pki/nbdkit` for anyone else.
#[must_use]
pub fn default_dir() -> Option<PathBuf> {
    if rustix::process::geteuid().is_root() {
        Some(PathBuf::from(ROOT_DIR))
    } else {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pki/nbdkit"))
    }
}

/// The certificate directory to use: the one given, else nbdkit's default
/// if it exists.
///
/// # Errors
///
/// When there is none: the message says what to give.
pub fn certificates(given: Option<&std::path::Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    match default_dir() {
        Some(d) if d.is_dir() => Ok(d),
        Some(d) => Err(format!(
            "--tls: give --tls-certificates=DIR or --tls-psk=FILE (the default, {}, does not exist)",
            d.display()
        )),
        None => Err("--tls: give --tls-certificates=DIR or --tls-psk=FILE".to_owned()),
    }
}
