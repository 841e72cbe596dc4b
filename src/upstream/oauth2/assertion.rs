//! The signed JWT client assertion (RFC 7523 2.2) that authenticates the application to
//! the token endpoint in place of a client secret, as Microsoft Entra ID accepts with a
//! certificate credential.
//!
//! Signed with jsonwebtoken's RS256 over ring, the crypto provider rustls already uses
//! here; the header names the certificate by its SHA-256 (`x5t#S256`) and SHA-1 (`x5t`,
//! which older Entra ID tenants look up) thumbprints, base64url without padding (RFC 7515
//! 4.1.7 and 4.1.8).

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::Rng as _;
use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;

/// How long an assertion is valid: a few minutes, enough for one request and clock skew.
pub const LIFETIME: Duration = Duration::from_secs(300);

/// RFC 7523 2.2: the `client_assertion_type` that says the assertion is a JWT.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A certificate's key, ready to sign assertions. `Debug` shows the thumbprint only.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
    /// `x5t#S256`.
    sha256: String,
    /// `x5t`.
    sha1: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("x5t#S256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// RFC 7523 3: the claims of a client assertion.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    /// The token endpoint.
    aud: &'a str,
    /// The client id, as issuer and subject.
    iss: &'a str,
    sub: &'a str,
    /// A fresh id, so that the endpoint can refuse a replay.
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl Signer {
    /// The signer for the first certificate of `cert_pem` and the RSA key `key_pem`
    /// (PKCS#1 or PKCS#8). Tries one signature, so that a key that cannot sign fails here,
    /// at start or reload, and not at the first delivery.
    pub fn new(cert_pem: &[u8], key_pem: &[u8]) -> Result<Signer, String> {
        let cert = CertificateDer::pem_slice_iter(cert_pem)
            .next()
            .ok_or("holds no PEM CERTIFICATE")?
            .map_err(|e| format!("is not valid PEM: {e}"))?;
        let key = EncodingKey::from_rsa_pem(key_pem)
            .map_err(|e| format!("is not a PEM RSA private key (RS256): {e}"))?;
        let signer = Signer {
            key,
            sha256: B64URL.encode(digest(&SHA256, &cert)),
            sha1: B64URL.encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, &cert)),
        };
        signer
            .sign("https://localhost/probe", "probe", 0)
            .map_err(|e| format!("cannot sign with this key: {e}"))?;
        Ok(signer)
    }

    /// A fresh assertion for `client_id` at `token_url`, valid from `now_unix` for
    /// [`LIFETIME`].
    pub fn sign(
        &self,
        token_url: &str,
        client_id: &str,
        now_unix: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::RS256);
        header.x5t_s256 = Some(self.sha256.clone());
        header.x5t = Some(self.sha1.clone());
        let jti: [u8; 16] = rand::rng().random();
        let claims = Claims {
            aud: token_url,
            iss: client_id,
            sub: client_id,
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            nbf: now_unix,
            iat: now_unix,
            exp: now_unix + LIFETIME.as_secs(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
    }
}
