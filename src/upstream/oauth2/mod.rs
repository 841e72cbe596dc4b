//! OAuth 2.0 access tokens for upstream AUTH (SASL XOAUTH2 and OAUTHBEARER, RFC 7628):
//! Microsoft 365 app-only (client credentials with a secret or a certificate, RFC 7523),
//! Google Workspace and delegated Microsoft 365 (refresh token), or any token endpoint.
//!
//! # Layout
//! - `source.rs`: [`TokenSource`], the per-upstream cache: refresh ahead of expiry, once
//!   after a `535`, concurrent refreshes coalesced into one request.
//! - `endpoint.rs`: one token request and its answer (RFC 6749 4.4, 6, 5.1, 5.2).
//! - `assertion.rs`: the signed JWT client assertion (RFC 7523).
//! - [`sasl`]: the XOAUTH2 and OAUTHBEARER strings.
//!
//! Secrets (client secret, refresh token, access token) are held in types whose `Debug`
//! hides them and which have no `Display`: they reach the wire and nothing else.

mod assertion;
mod endpoint;
pub mod sasl;
mod source;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use endpoint::{GrantKind, TokenError};
pub use source::TokenSource;

use crate::clock::Clock;
use crate::config::schema::{OAuth2Config, Provider};
use crate::upstream::BuildError;
use crate::upstream::tls;
use assertion::Signer;
use endpoint::{ClientAuth, Endpoint};

/// A secret read from a file (client secret, refresh token). `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<Arc<str>>) -> Secret {
        Secret(text.into())
    }

    /// The secret itself, for the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// An access token. `Debug` hides it; compare tokens with `==`.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(Arc<str>);

impl AccessToken {
    /// Wraps `token`.
    pub fn new(token: impl Into<Arc<str>>) -> AccessToken {
        AccessToken(token.into())
    }

    /// The token itself, for the SASL string only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(..)")
    }
}

/// What came of a token request (the `result` label of `postern_oauth2_token_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenResult {
    /// A token was issued.
    Issued,
    /// The endpoint answered with an OAuth error (RFC 6749 5.2).
    Refused,
    /// No usable answer (connection, timeout, not a token).
    Unavailable,
}

impl TokenResult {
    /// Every value in declaration order.
    pub const ALL: [TokenResult; 3] = [
        TokenResult::Issued,
        TokenResult::Refused,
        TokenResult::Unavailable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenResult::Issued => "issued",
            TokenResult::Refused => "refused",
            TokenResult::Unavailable => "unavailable",
        }
    }
}

/// Told about token requests (the metrics implement it).
pub trait TokenObserver: fmt::Debug + Send + Sync {
    /// One request to `upstream`'s token endpoint ended with `result`.
    fn token_request(&self, upstream: &str, result: TokenResult);
    /// `upstream`'s current token expires at `unix` seconds.
    fn token_expiry(&self, upstream: &str, unix: u64);
}

/// Reads a secret file: its first line, without the line ending (as `password_file`).
fn read_secret(upstream: &str, key: &'static str, path: &Path) -> Result<Secret, BuildError> {
    let text = read(upstream, key, path)?;
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().next().unwrap_or_default().trim_end();
    Ok(Secret::new(line))
}

fn read(upstream: &str, key: &'static str, path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::File {
        upstream: upstream.to_owned(),
        key,
        path: path.to_owned(),
        source,
    })
}

/// Builds the token source of `upstream` from its `auth.oauth2` section (the provider
/// defaulting to `upstream_provider`); relative paths are taken from `base`.
pub fn source(
    upstream: &str,
    upstream_provider: Option<Provider>,
    o: &OAuth2Config,
    base: &Path,
    clock: Clock,
    observer: Option<Arc<dyn TokenObserver>>,
) -> Result<Arc<TokenSource>, BuildError> {
    let bad = |key: &'static str, problem: String| BuildError::OAuth2 {
        upstream: upstream.to_owned(),
        key,
        problem,
    };
    let Some(provider) = o.provider_or(upstream_provider) else {
        let problem = "required (here or as the upstream's provider)".to_owned();
        return Err(bad("auth.oauth2.provider", problem));
    };
    let url = o
        .endpoint(provider)
        .map_err(|p| bad("auth.oauth2.token_url", p))?;
    let auth = client_auth(upstream, o, base)?;
    let refresh_token = o
        .refresh_token_file
        .as_ref()
        .map(|f| read_secret(upstream, "auth.oauth2.refresh_token_file", &base.join(f)))
        .transpose()?;
    let grant = match (&refresh_token, &auth) {
        (Some(_), _) => GrantKind::RefreshToken,
        (None, ClientAuth::None) => {
            let problem = "no client credential: set client_secret_file, client_certificate \
                           and client_key, or refresh_token_file"
                .into();
            return Err(bad("auth.oauth2", problem));
        }
        (None, _) => GrantKind::ClientCredentials,
    };
    let tls = http_tls(url.scheme() == "https").map_err(|source| BuildError::Tls {
        upstream: upstream.to_owned(),
        source,
    })?;
    let scope = o.effective_scope(provider).map(str::to_owned);
    let endpoint = Endpoint::new(url, o.client_id.clone(), scope, grant, auth, tls)
        .map_err(|p| bad("auth.oauth2", p))?;
    Ok(Arc::new(TokenSource::new(
        upstream.to_owned(),
        endpoint,
        refresh_token,
        clock,
        observer,
    )))
}

/// The client secret, or the assertion signer of the certificate and key, or none.
fn client_auth(upstream: &str, o: &OAuth2Config, base: &Path) -> Result<ClientAuth, BuildError> {
    match (&o.client_secret_file, &o.client_certificate, &o.client_key) {
        (Some(file), None, None) => Ok(ClientAuth::Secret(read_secret(
            upstream,
            "auth.oauth2.client_secret_file",
            &base.join(file),
        )?)),
        (None, Some(cert), Some(key)) => {
            let cert = read(upstream, "auth.oauth2.client_certificate", &base.join(cert))?;
            let key_pem = read(upstream, "auth.oauth2.client_key", &base.join(key))?;
            let signer = Signer::new(&cert, &key_pem).map_err(|problem| BuildError::OAuth2 {
                upstream: upstream.to_owned(),
                key: "auth.oauth2.client_key",
                problem,
            })?;
            Ok(ClientAuth::Assertion(signer))
        }
        (None, None, None) => Ok(ClientAuth::None),
        _ => Err(BuildError::OAuth2 {
            upstream: upstream.to_owned(),
            key: "auth.oauth2",
            problem: "set client_secret_file, or client_certificate and client_key".into(),
        }),
    }
}

/// The token endpoint's TLS: the system roots for `https`; for plain `http` (loopback
/// only) a configuration that trusts nothing, since the client must be given one.
fn http_tls(https: bool) -> Result<rustls::ClientConfig, tls::TlsError> {
    if https {
        let shared = tls::client_config(None, true)?;
        Ok(rustls::ClientConfig::clone(&shared))
    } else {
        tls::no_roots_config()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests;
