//! A throw-away certificate authority for one test: a CA certificate and a leaf for
//! `localhost` + `127.0.0.1`, written as PEM files into the test's directory so that both
//! postern (server `tls:` and upstream `ca_file:`) and external clients (Python's `ssl`) can
//! load them, plus rustls configs for the in-process sink and raw clients.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// The CA and its one leaf, in memory and on disk.
#[derive(Debug)]
pub struct TestCa {
    /// The CA certificate (PEM), the trust anchor for every client.
    pub ca_pem: String,
    /// Where `ca_pem` was written.
    pub ca_file: PathBuf,
    /// The leaf certificate (PEM) for `localhost` and `127.0.0.1`.
    pub cert_file: PathBuf,
    /// The leaf's PKCS#8 private key (PEM).
    pub key_file: PathBuf,
    /// The DER of the leaf written at start (what postern presents until a reload).
    pub leaf_der: CertificateDer<'static>,
    ca_der: CertificateDer<'static>,
    key_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// Another leaf for `localhost` from the same CA, with its own key: a renewed certificate.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The certificate's DER, as a client sees it in the handshake.
    pub der: CertificateDer<'static>,
}

impl TestCa {
    /// Makes a new CA and leaf and writes `ca.pem`, `cert.pem`, `key.pem` into `dir`.
    pub fn new(dir: &Path) -> TestCa {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "postern test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let (leaf_cert, leaf_key) = leaf(&issuer);

        let ca = TestCa {
            ca_pem: ca_cert.pem(),
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            leaf_der: leaf_cert.der().clone(),
            ca_der: ca_cert.der().clone(),
            key_der: leaf_key.serialize_der(),
            issuer,
        };
        std::fs::write(&ca.ca_file, &ca.ca_pem).unwrap();
        std::fs::write(&ca.cert_file, leaf_cert.pem()).unwrap();
        std::fs::write(&ca.key_file, leaf_key.serialize_pem()).unwrap();
        ca
    }

    /// A new leaf for `localhost` with a new key, signed by this CA (not written anywhere).
    pub fn renew(&self) -> Leaf {
        let (cert, key) = leaf(&self.issuer);
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A leaf with common name `cn` for the DNS names `names` and a fresh key, signed by
    /// this CA, written as `<stem>.pem` and `<stem>.key` in `dir`; returns the two paths.
    pub fn issue(&self, dir: &Path, stem: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    /// A rustls client config that trusts only this CA (ring provider).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A rustls server config presenting the leaf (for the sink's STARTTLS).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf_der.clone()], key)
            .unwrap();
        Arc::new(config)
    }
}

/// A leaf for `localhost` and 127.0.0.1 with a fresh key, signed by `issuer`.
fn leaf(issuer: &Issuer<'static, KeyPair>) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    (leaf.signed_by(&key, issuer).unwrap(), key)
}

/// The name every client verifies: the leaf is issued for it.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
