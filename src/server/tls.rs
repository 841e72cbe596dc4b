//! The listeners' rustls configuration: TLS 1.2 and 1.3 only, the server's cipher order,
//! certificates chosen by SNI from a set (the top-level `tls` set, or a listener's own),
//! and the self-signed certificate made on first start when the config asks for one.
//!
//! # Layout
//! - `names.rs`: the names a certificate answers to, and matching an SNI against them.
//! - `certset.rs`: loading and checking a set's certificates; the SNI resolver.

mod certset;
pub mod names;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;

pub use certset::{CertSet, CertSource, Loaded, load_entries};

use crate::config::schema::{Config, ListenerTls, SniCertificate};

/// Why TLS could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate of a set: a file that does not read, a key that is not the
    /// certificate's, a name that is invalid or claimed twice.
    Certificate {
        /// The config key, e.g. `tls.sni[1].private_key`.
        key: String,
        /// What is wrong; it quotes the files.
        problem: String,
    },
    /// rustls refused the configuration.
    Rustls(rustls::Error),
    /// Generating or writing the self-signed certificate failed.
    Generate(String),
}

impl TlsError {
    fn certificate(key: impl Into<String>, problem: impl Into<String>) -> TlsError {
        TlsError::Certificate {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Certificate { key, problem } => write!(f, "{key}: {problem}"),
            TlsError::Rustls(e) => write!(f, "tls: {e}"),
            TlsError::Generate(e) => {
                write!(f, "tls: cannot generate a self-signed certificate: {e}")
            }
        }
    }
}

impl std::error::Error for TlsError {}

/// Every listener's TLS configuration, from one config.
#[derive(Debug, Clone, Default)]
pub struct ServerTls {
    /// The top-level set's, for TLS listeners without their own certificate.
    global: Option<Arc<ServerConfig>>,
    /// By listener name, for listeners with their own certificate.
    own: HashMap<String, Arc<ServerConfig>>,
    /// Each certificate in use: its metric label and notAfter.
    expiries: Vec<(String, i64)>,
}

impl ServerTls {
    /// Loads every set a TLS listener uses, with paths already resolved (as `config::load`
    /// leaves them). Nothing is loaded when no listener uses TLS.
    pub fn load(cfg: &Config) -> Result<ServerTls, TlsError> {
        let mut tls = ServerTls::default();
        let sets = set_sources(cfg);
        for (owner, sources) in sets {
            let loaded = load_entries(&sources, Path::new(""))?;
            tls.expiries
                .extend(loaded.iter().map(|l| (l.source.label.clone(), l.not_after)));
            let config = server_config(&loaded)?;
            match owner {
                Some(listener) => {
                    tls.own.insert(listener, config);
                }
                None => tls.global = Some(config),
            }
        }
        Ok(tls)
    }

    /// The configuration for the TLS listener `listener`; `None` when it has none (a
    /// listener without TLS).
    pub fn for_listener(&self, listener: &str) -> Option<Arc<ServerConfig>> {
        self.own.get(listener).or(self.global.as_ref()).cloned()
    }

    /// Whether any listener has a TLS configuration.
    pub fn is_empty(&self) -> bool {
        self.global.is_none() && self.own.is_empty()
    }

    /// Each certificate in use: its metric label (`tls`, `tls.sni[0]`,
    /// `listeners[NAME]`, ...) and its notAfter, unix seconds.
    pub fn expiries(&self) -> &[(String, i64)] {
        &self.expiries
    }
}

/// The certificate sets the TLS listeners of `cfg` use, paths as they stand in `cfg`:
/// `(None, top-level set)` when a TLS listener has no certificate of its own and `tls:` is
/// configured, and `(Some(listener), its set)` for each TLS listener with one. Each set's
/// default comes first.
pub fn set_sources(cfg: &Config) -> Vec<(Option<String>, Vec<CertSource>)> {
    let mut sets = Vec::new();
    let tls_listeners = cfg
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.tls != ListenerTls::None);
    let mut global_used = false;
    for (i, l) in tls_listeners {
        match (&l.certificate, &l.private_key) {
            (Some(cert), Some(key)) => {
                let key_prefix = format!("listeners[{i}]");
                let label = format!("listeners[{}]", l.name);
                let set = sources(&key_prefix, &label, cert, key, &l.sni);
                sets.push((Some(l.name.clone()), set));
            }
            _ => global_used = true,
        }
    }
    if let Some(t) = cfg.tls.as_ref().filter(|_| global_used) {
        let set = sources("tls", "tls", &t.certificate, &t.private_key, &t.sni);
        sets.insert(0, (None, set));
    }
    sets
}

/// One set's sources: the default at `key`, then its `sni` entries at `key.sni[i]`; metric
/// labels likewise from `label`.
pub fn sources(
    key: &str,
    label: &str,
    cert: &Path,
    private_key: &Path,
    sni: &[SniCertificate],
) -> Vec<CertSource> {
    let mut set = vec![CertSource {
        key: key.to_owned(),
        label: label.to_owned(),
        certificate: cert.to_owned(),
        private_key: private_key.to_owned(),
        names: None,
        default: true,
    }];
    set.extend(sni.iter().enumerate().map(|(i, s)| CertSource {
        key: format!("{key}.sni[{i}]"),
        label: format!("{label}.sni[{i}]"),
        certificate: s.certificate.clone(),
        private_key: s.private_key.clone(),
        names: s.names.clone(),
        default: false,
    }));
    set
}

/// Every file of every set in use, for the certificate watcher.
pub fn watched_files(cfg: &Config) -> Vec<PathBuf> {
    set_sources(cfg)
        .into_iter()
        .flat_map(|(_, set)| set)
        .flat_map(|s| [s.certificate, s.private_key])
        .collect()
}

/// The server config for one loaded set (its default first).
pub fn server_config(loaded: &[Loaded]) -> Result<Arc<ServerConfig>, TlsError> {
    let Some(set) = CertSet::new(loaded) else {
        return Err(TlsError::Generate(
            "a certificate set without certificates".into(),
        ));
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(set));
    // The server's order (rustls's: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305, all with
    // forward secrecy) decides, not the client's: scanners such as testssl.sh flag a server
    // without a cipher order (RFC 9325 section 4.2 leaves it to the server).
    config.ignore_client_order = true;
    Ok(Arc::new(config))
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
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests;
