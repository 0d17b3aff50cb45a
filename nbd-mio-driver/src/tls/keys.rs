//! Loading the server's private key, with errors that say what is wrong.
//!
//! Three different failures used to share one message ("does not match
//! server-cert.pem: failed to parse private key as RSA, ECDSA, or EdDSA"):
//! a key the crypto provider cannot use, a key for another certificate, and
//! a key it merely could not parse. They are told apart here, in that
//! order of checks: parse (OpenSSL, which reads every PEM key form that
//! certtool and openssl write), compare with the certificate's public key,
//! then hand the key to the rustls provider.

use std::path::Path;

use openssl::nid::Nid;
use openssl::pkey::{HasPublic, Id, PKey, PKeyRef};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What the provider (aws-lc-rs) signs with, for the "unsupported key"
/// message: RSA moduli of 2048 to 8192 bits (any size in between, not
/// only multiples of 512 as ring required), the three NIST curves and
/// Ed25519.
const SUPPORTED: &str = "RSA 2048-8192 bits, EC P-256/P-384/P-521, Ed25519";

/// `key` (as read from `key_path`) re-encoded as PKCS#8, after checking it
/// is the private half of `leaf`'s public key and that `provider` can sign
/// with it. Errors are one line naming the file.
pub fn check_key(
    key: &PrivateKeyDer<'_>,
    key_path: &Path,
    leaf: &CertificateDer<'_>,
    cert_path: &Path,
    provider: &CryptoProvider,
) -> Result<PrivateKeyDer<'static>, String> {
    let pkey = PKey::private_key_from_der(key.secret_der())
        .map_err(|e| format!("{}: unreadable private key: {e}", key_path.display()))?;
    let what = describe(&pkey);
    let cert = openssl::x509::X509::from_der(leaf)
        .map_err(|e| format!("{}: unreadable certificate: {e}", cert_path.display()))?;
    let cert_key = cert
        .public_key()
        .map_err(|e| format!("{}: unreadable public key: {e}", cert_path.display()))?;
    if !cert_key.public_eq(&pkey) {
        return Err(format!(
            "{}: does not match {}: the key is {what}, the certificate's is {}",
            key_path.display(),
            cert_path.display(),
            describe(&cert_key)
        ));
    }
    // One form for every input (PKCS#1 "RSA PRIVATE KEY", SEC1 "EC
    // PRIVATE KEY", PKCS#8): the provider then sees only PKCS#8.
    let pkcs8: PrivateKeyDer<'static> = PrivateKeyDer::Pkcs8(
        pkey.private_key_to_pkcs8()
            .map_err(|e| format!("{}: cannot re-encode key: {e}", key_path.display()))?
            .into(),
    );
    provider
        .key_provider
        .load_private_key(pkcs8.clone_key())
        .map_err(|_| {
            format!(
                "{}: unsupported key: {what} (supported: {SUPPORTED})",
                key_path.display()
            )
        })?;
    Ok(pkcs8)
}

/// "RSA 2432 bits", "EC P-256", "Ed25519", "DSA 2048 bits"...
pub fn describe<T: HasPublic>(pkey: &PKeyRef<T>) -> String {
    match pkey.id() {
        Id::RSA => format!("RSA {} bits", pkey.bits()),
        Id::RSA_PSS => format!("RSA-PSS {} bits", pkey.bits()),
        Id::DSA => format!("DSA {} bits", pkey.bits()),
        Id::ED25519 => "Ed25519".to_owned(),
        Id::ED448 => "Ed448".to_owned(),
        Id::EC => {
            let nid = pkey.ec_key().ok().and_then(|k| k.group().curve_name());
            match nid {
                Some(Nid::X9_62_PRIME256V1) => "EC P-256".to_owned(),
                Some(Nid::SECP384R1) => "EC P-384".to_owned(),
                Some(Nid::SECP521R1) => "EC P-521".to_owned(),
                Some(n) => format!("EC {}", n.short_name().unwrap_or("curve")),
                None => format!("EC {} bits", pkey.bits()),
            }
        }
        other => format!("key type {} ({} bits)", other.as_raw(), pkey.bits()),
    }
}
