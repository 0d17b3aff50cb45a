//! Credentials for the harness, made once per process with OpenSSL: an
//! ECDSA P-256 self-signed certificate for `localhost` (cheap to make and
//! to sign with), a PSK file with one user, and rustls client configs that
//! trust the certificate.

use std::sync::{Arc, OnceLock};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509NameBuilder};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::tls::psk::PskConfig;
use crate::tls::psk_file::PskKeys;
use crate::tls::x509::X509Config;

/// Every configuration a run may use.
pub struct Fixtures {
    pub x509: X509Config,
    pub x509_verify: X509Config,
    pub psk: PskConfig,
    /// Clients trusting the certificate: TLS 1.3 only, TLS 1.2 only.
    pub client13: Arc<ClientConfig>,
    pub client12: Arc<ClientConfig>,
    /// The X.509 server configuration as the driver holds it (the
    /// whole-server harness's `--tls`).
    pub driver: Arc<crate::tls::TlsServerConfig>,
}

/// The process-wide fixtures.
pub fn get() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(make)
}

fn make() -> Fixtures {
    let (cert, key) = self_signed();
    let roots = || {
        let mut r = RootCertStore::empty();
        r.add(cert.clone()).expect("trust the certificate");
        r
    };
    let server = |cas| X509Config::new(vec![cert.clone()], key.clone_key(), cas).expect("config");
    let client = |v: &'static rustls::SupportedProtocolVersion| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let c = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[v])
            .expect("versions")
            .with_root_certificates(roots())
            .with_no_client_auth();
        Arc::new(c)
    };
    let keys = PskKeys::parse("alice:00112233445566778899aabbccddeeff\n").expect("psk");
    Fixtures {
        x509: server(None),
        // No client here ever has a certificate: the handshake must fail
        // cleanly, which is the point of this configuration.
        x509_verify: server(Some(roots())),
        psk: PskConfig::from_keys(Arc::new(keys)).expect("psk config"),
        client13: client(&rustls::version::TLS13),
        client12: client(&rustls::version::TLS12),
        driver: Arc::new(crate::tls::TlsServerConfig {
            inner: crate::tls::Inner::X509(server(None)),
        }),
    }
}

fn self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    let key = PKey::from_ec_key(EcKey::generate(&group).expect("key")).expect("pkey");
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, "localhost")
        .expect("cn");
    let name = name.build();
    let mut b = X509::builder().expect("builder");
    b.set_version(2).expect("v3");
    let serial = BigNum::from_u32(1).and_then(|n| n.to_asn1_integer());
    b.set_serial_number(&serial.expect("serial"))
        .expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(&name).expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("now"))
        .expect("nb");
    b.set_not_after(&Asn1Time::days_from_now(3650).expect("later"))
        .expect("na");
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .build(&b.x509v3_context(None, None))
        .expect("san");
    b.append_extension(san).expect("san");
    b.sign(&key, MessageDigest::sha256()).expect("sign");
    let cert = b.build().to_der().expect("der");
    let pkcs8 = key.private_key_to_pkcs8().expect("pkcs8");
    (cert.into(), PrivateKeyDer::Pkcs8(pkcs8.into()))
}
