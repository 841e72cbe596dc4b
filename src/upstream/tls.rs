//! TLS client configuration for upstreams (RFC 7817: TLS server identity checks for email).
//!
//! One `rustls::ClientConfig` per upstream, built once at start: trust anchors from the
//! upstream's `ca_file` or else the system store, TLS 1.3 and 1.2 only, the ring provider.
//! The certificate is checked against the configured `server_name` (or the host of
//! `address`): rustls/webpki do the RFC 6125 matching that RFC 7817 section 3 asks for,
//! including IP addresses in the subjectAltName.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why a TLS client configuration could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// `ca_file` could not be read or is not PEM.
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The read/parse error.
        detail: String,
    },
    /// `ca_file` holds no usable certificate.
    NoCertificates {
        /// The file.
        path: PathBuf,
    },
    /// No `ca_file` and the system trust store is empty or unreadable.
    NoSystemRoots {
        /// What the loader reported.
        detail: String,
    },
    /// The server name is neither a DNS name nor an IP address.
    BadServerName {
        /// The name as configured.
        name: String,
    },
    /// rustls refused the configuration.
    Rustls(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::ReadCa { path, detail } => {
                write!(f, "cannot read CA file {}: {detail}", path.display())
            }
            TlsError::NoCertificates { path } => {
                write!(f, "CA file {} holds no PEM certificate", path.display())
            }
            TlsError::NoSystemRoots { detail } => {
                write!(f, "no system CA certificates found (set ca_file): {detail}")
            }
            TlsError::BadServerName { name } => {
                write!(
                    f,
                    "invalid TLS server name {name:?}: expected a DNS name or IP address"
                )
            }
            TlsError::Rustls(e) => write!(f, "TLS configuration: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Builds the client configuration for one upstream.
///
/// `verify: false` accepts any certificate (labs only): it is logged as a warning here, once
/// per upstream at configuration time, and the verifier's type name says it is dangerous.
/// Signatures on the handshake are still checked, so the connection is at least encrypted to
/// whoever holds the presented key.
pub fn client_config(ca_file: Option<&Path>, verify: bool) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(TlsError::Rustls)?;
    let config = if verify {
        builder
            .with_root_certificates(roots(ca_file)?)
            .with_no_client_auth()
    } else {
        tracing::warn!(
            "upstream TLS certificate verification is disabled (tls_verify: false); \
             the connection can be intercepted"
        );
        let verifier = DangerousAcceptAnyServerCert {
            algorithms: provider.signature_verification_algorithms,
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// A configuration that trusts no certificate: for an HTTP client that only ever speaks
/// plain HTTP to a loopback address (an `http://127.0.0.1` token endpoint) but must be
/// given one.
pub fn no_roots_config() -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(TlsError::Rustls)?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

/// Trust anchors: the CA file when given (and then only it), else the system store.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let read_err = |e: &dyn fmt::Display| TlsError::ReadCa {
                path: path.to_owned(),
                detail: e.to_string(),
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| read_err(&e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| read_err(&e))?;
            let (added, _ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::NoCertificates {
                    path: path.to_owned(),
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let detail = found
                    .errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>();
                return Err(TlsError::NoSystemRoots {
                    detail: detail.join("; "),
                });
            }
        }
    }
    Ok(store)
}

/// Parses the name to verify and send as SNI: a DNS name, or an IP address (checked
/// against IP subjectAltNames; no SNI is sent for it).
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::BadServerName {
        name: name.to_owned(),
    })
}

/// A certificate verifier that trusts every certificate: `tls_verify: false`.
#[derive(Debug)]
struct DangerousAcceptAnyServerCert {
    /// Used to check handshake signatures, which still happens.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for DangerousAcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        let rows: &[(&str, bool)] = &[
            ("smtp.office365.com", true),
            ("127.0.0.1", true),
            ("::1", true),
            ("bad name!", false),
            ("", false),
        ];
        for (name, ok) in rows {
            assert_eq!(server_name(name).is_ok(), *ok, "{name}");
        }
        assert!(matches!(
            server_name("10.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn ca_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        assert!(matches!(
            client_config(Some(&empty), true),
            Err(TlsError::NoCertificates { .. })
        ));
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            client_config(Some(&missing), true),
            Err(TlsError::ReadCa { .. })
        ));
        // Without verification the CA file is not needed at all.
        assert!(client_config(Some(&missing), false).is_ok());
    }
}
