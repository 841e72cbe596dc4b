//! The listeners' rustls configuration: TLS 1.2 and 1.3 only, certificate and key from PEM,
//! and the self-signed certificate made on first start when the config asks for one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        problem: String,
    },
    /// rustls refused the certificate/key pair.
    Rustls(rustls::Error),
    /// Generating or writing the self-signed certificate failed.
    Generate(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem { path, problem } => write!(f, "{}: {problem}", path.display()),
            TlsError::Rustls(e) => write!(f, "certificate and key do not work together: {e}"),
            TlsError::Generate(e) => write!(f, "cannot generate a self-signed certificate: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Builds the server config from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let pem_err = |path: &Path, problem: String| TlsError::Pem {
        path: path.to_owned(),
        problem,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err(cert, "no CERTIFICATE block found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Rustls)?;
    // The server's order (rustls's: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305, all with
    // forward secrecy) decides, not the client's: scanners such as testssl.sh flag a server
    // without a cipher order (RFC 9325 section 4.2 leaves it to the server).
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The notAfter of the first certificate in the PEM file `cert`, unix seconds; `None` when
/// the file cannot be read or parsed.
pub fn certificate_expiry(cert: &Path) -> Option<i64> {
    let first = CertificateDer::pem_file_iter(cert).ok()?.next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Writes a self-signed certificate for `hostname` (and localhost, 127.0.0.1, ::1) when
/// both files are absent. Returns whether it generated one. The key file is created with
/// mode 0600.
pub fn ensure_self_signed(cert: &Path, key: &Path, hostname: &str) -> Result<bool, TlsError> {
    if cert.exists() || key.exists() {
        return Ok(false);
    }
    let names = vec![
        hostname.to_owned(),
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    for path in [cert, key] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| TlsError::Generate(format!("{}: {e}", dir.display())))?;
        }
    }
    write_private(key, generated.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert, generated.cert.pem())
        .map_err(|e| TlsError::Generate(format!("{}: {e}", cert.display())))?;
    Ok(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| TlsError::Generate(format!("{}: {e}", path.display())))?;
    f.write_all(bytes)
        .map_err(|e| TlsError::Generate(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_then_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (
            dir.path().join("tls/cert.pem"),
            dir.path().join("tls/key.pem"),
        );
        assert!(ensure_self_signed(&cert, &key, "relay.example").unwrap());
        assert!(!ensure_self_signed(&cert, &key, "relay.example").unwrap());
        server_config(&cert, &key).unwrap();
        let err = server_config(&key, &key).unwrap_err().to_string();
        assert!(err.contains("key.pem"), "{err}");
    }
}
