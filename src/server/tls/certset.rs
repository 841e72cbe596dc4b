//! A set of certificates chosen by SNI: one default and any number more, each loaded from
//! its PEM files, checked (key matches, names valid, no name claimed twice) and served by a
//! rustls [`ResolvesServerCert`].
//!
//! # Choice (RFC 6066 section 3, RFC 6125 section 6.4.3)
//! The client's SNI, lowercased, is looked up among the names every certificate of the set
//! claims (its DNS subjectAltNames, or an SNI entry's explicit `names`): an exact name
//! first, then a one-label wildcard (`*.example.com` for `mail.example.com`). No SNI, or
//! an SNI no certificate claims, gets the default certificate, as Postfix does: a client
//! that does not verify names still gets TLS, one that does sees the mismatch itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;
use super::names::{Claim, dns_names, normalise_sni, wildcard_parent};
use crate::config::error::describe_io;
use crate::config::resolve;

/// One certificate of a set, as configured.
#[derive(Debug, Clone)]
pub struct CertSource {
    /// The config key of the entry, for errors: `tls`, `tls.sni[0]`, `listeners[1].sni[0]`.
    pub key: String,
    /// The name the expiry metric carries: `tls`, `tls.sni[0]`,
    /// `listeners[submission]`, `listeners[submission].sni[0]` (config names only).
    pub label: String,
    /// The PEM chain, leaf first, as written (errors quote it; it is opened relative to
    /// the loader's base directory).
    pub certificate: PathBuf,
    /// The PEM private key, as written.
    pub private_key: PathBuf,
    /// An SNI entry's `names`, replacing the certificate's DNS subjectAltNames; `None` for
    /// the default certificate and for an entry without `names`.
    pub names: Option<Vec<String>>,
    /// Whether this is the set's default (it needs no name; the others must have one).
    pub default: bool,
}

/// A loaded, checked certificate.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Where it was configured.
    pub source: CertSource,
    /// The chain and signing key rustls presents.
    pub key: Arc<CertifiedKey>,
    /// The names SNI chooses it for.
    pub claims: Vec<Claim>,
    /// The leaf's notAfter, unix seconds.
    pub not_after: i64,
}

/// Loads every entry (files opened at `resolve(base, path)`) and checks that no name is
/// claimed by two of them. The first failure names the key, the file and the problem.
pub fn load_entries(sources: &[CertSource], base: &Path) -> Result<Vec<Loaded>, TlsError> {
    let loaded = sources
        .iter()
        .map(|s| load_one(s, base))
        .collect::<Result<Vec<_>, _>>()?;
    let mut owners: HashMap<&Claim, &Loaded> = HashMap::new();
    for cert in &loaded {
        for claim in &cert.claims {
            if let Some(other) = owners.insert(claim, cert) {
                return Err(TlsError::certificate(
                    &cert.source.key,
                    format!(
                        "{:?} claims {claim}, as does {:?} ({}): one name, one certificate \
                         per set (list `names` to choose which serves it)",
                        cert.source.certificate, other.source.certificate, other.source.key
                    ),
                ));
            }
        }
    }
    Ok(loaded)
}

/// Reads, pairs and names one certificate.
fn load_one(src: &CertSource, base: &Path) -> Result<Loaded, TlsError> {
    let cert_key = format!("{}.certificate", src.key);
    let key_key = format!("{}.private_key", src.key);
    let chain =
        read_chain(&src.certificate, base).map_err(|p| TlsError::certificate(&cert_key, p))?;
    let private =
        read_key(&src.private_key, base).map_err(|p| TlsError::certificate(&key_key, p))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, private, &provider).map_err(|e| {
        let problem = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "{:?} is not the private key of the certificate in {:?}",
                src.private_key, src.certificate
            ),
            other => format!("{:?} cannot be used: {other}", src.private_key),
        };
        TlsError::certificate(&key_key, problem)
    })?;
    let leaf = key.cert.first().map(|c| c.as_ref()).unwrap_or_default();
    let certified = dns_names(leaf)
        .map_err(|p| TlsError::certificate(&cert_key, format!("{:?}: {p}", src.certificate)))?;
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(0);
    let claims = match &src.names {
        Some(names) => chosen_names(src, names, &certified)?,
        None => certified,
    };
    if claims.is_empty() && !src.default {
        let problem = format!(
            "{:?} has no DNS subjectAltName, so no SNI can choose it (`names` must be among \
             them): use a certificate issued for the names it is to serve",
            src.certificate
        );
        return Err(TlsError::certificate(&cert_key, problem));
    }
    Ok(Loaded {
        source: src.clone(),
        key: Arc::new(key),
        claims,
        not_after,
    })
}

/// An entry's explicit `names`: each valid and covered by the certificate (a name it is
/// not issued for would be served to clients that then refuse it).
fn chosen_names(
    src: &CertSource,
    names: &[String],
    certified: &[Claim],
) -> Result<Vec<Claim>, TlsError> {
    if names.is_empty() {
        let problem = "must list at least one name (leave it out to use the certificate's)";
        return Err(TlsError::certificate(format!("{}.names", src.key), problem));
    }
    let mut claims = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let key = format!("{}.names[{i}]", src.key);
        let claim = Claim::parse(name).map_err(|p| TlsError::certificate(&key, p))?;
        if !certified.iter().any(|c| c.covers(&claim)) {
            let have: Vec<String> = certified.iter().map(Claim::to_string).collect();
            let problem = format!(
                "{name:?} is not covered by the certificate in {:?} (its DNS names: {})",
                src.certificate,
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    have.join(", ")
                }
            );
            return Err(TlsError::certificate(&key, problem));
        }
        claims.push(claim);
    }
    claims.sort();
    claims.dedup();
    Ok(claims)
}

/// The PEM certificates in `written`; the problem quotes the path as written.
fn read_chain(written: &Path, base: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(resolve(base, written))
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_problem(written, &e))?;
    if chain.is_empty() {
        return Err(format!("{written:?} holds no PEM CERTIFICATE"));
    }
    Ok(chain)
}

/// The PEM private key in `written`.
fn read_key(written: &Path, base: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(resolve(base, written)).map_err(|e| match e {
        pem::Error::NoItemsFound => format!("{written:?} holds no PEM PRIVATE KEY"),
        other => pem_problem(written, &other),
    })
}

fn pem_problem(written: &Path, err: &pem::Error) -> String {
    match err {
        pem::Error::Io(io) => format!("cannot read {written:?}: {}", describe_io(io)),
        _ => format!("{written:?} is not valid PEM: {err}"),
    }
}

/// A set's certificates, looked up by the client's SNI.
#[derive(Debug)]
pub struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    /// A set from loaded certificates, the first being the default.
    pub fn new(loaded: &[Loaded]) -> Option<CertSet> {
        let default = loaded.first()?.key.clone();
        let mut set = CertSet {
            default,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for cert in loaded {
            for claim in &cert.claims {
                let map = match claim {
                    Claim::Exact(name) => (&mut set.exact, name),
                    Claim::Wildcard(parent) => (&mut set.wildcard, parent),
                };
                map.0.insert(map.1.clone(), cert.key.clone());
            }
        }
        Some(set)
    }

    /// The certificate for a client that sent `sni` (or none).
    pub fn choose(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(sni) = sni.map(normalise_sni) else {
            return &self.default;
        };
        self.exact
            .get(sni.as_ref())
            .or_else(|| wildcard_parent(&sni).and_then(|p| self.wildcard.get(p)))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for CertSet {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(client_hello.server_name()).clone())
    }
}
