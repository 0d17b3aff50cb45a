//! X.509 fixtures for the TLS table: the test CA and server certificate
//! from nbd-mio-driver/tests/pki/make-pki.sh (the layout nbdkit and nbdd
//! both read with `--tls-certificates=DIR`), and a `$HOME` whose
//! `.pki/libnbd/ca-cert.pem` is where fio's and nbdcopy's libnbd find the
//! CA (fio's nbd engine takes only a URI, so nothing else can point it
//! there).

use super::plan::Paths;
use crate::util::{root, sh};
use std::process::Command;

/// Creates the certificates and the libnbd `$HOME`.
///
/// # Errors
/// If make-pki.sh (certtool) fails or a file cannot be copied.
pub fn make(paths: &Paths) -> Result<(), String> {
    let pki = paths.pki();
    sh(Command::new("sh")
        .arg(root().join("nbd-mio-driver/tests/pki/make-pki.sh"))
        .arg(&pki))?;
    let libnbd = paths.tls_home().join(".pki/libnbd");
    std::fs::create_dir_all(&libnbd).map_err(|e| format!("mkdir {}: {e}", libnbd.display()))?;
    std::fs::copy(pki.join("ca-cert.pem"), libnbd.join("ca-cert.pem"))
        .map_err(|e| format!("copy the CA into {}: {e}", libnbd.display()))?;
    Ok(())
}
