//! One request to the token endpoint (RFC 6749 4.4 `client_credentials`, 6
//! `refresh_token`) and its answer (5.1 success, 5.2 error), over reqwest with our rustls.

use std::fmt;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use super::assertion::{ASSERTION_TYPE, Signer};
use super::{AccessToken, Secret};
use crate::config::oauth2::is_loopback;

/// The whole request, connect included, must finish within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP and TLS connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read; a token answer is a few KiB.
const MAX_BODY: usize = 64 * 1024;
/// A token's lifetime when the endpoint does not say (RFC 6749 5.1 makes `expires_in`
/// only RECOMMENDED): short, so that a wrong guess costs one refresh.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Longest provider error text kept for the log.
const MAX_ERROR_TEXT: usize = 400;

/// How the application proves who it is to the endpoint.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// `client_secret` in the form (RFC 6749 2.3.1).
    Secret(Secret),
    /// A signed JWT (RFC 7523 2.2).
    Assertion(Signer),
    /// A public client (a delegated refresh token issued to one): `client_id` only.
    None,
}

/// Which grant to ask with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// App-only access (RFC 6749 4.4).
    ClientCredentials,
    /// Delegated access with a refresh token (RFC 6749 6).
    RefreshToken,
}

/// What the endpoint issued.
#[derive(Debug)]
pub struct Issued {
    /// The access token.
    pub access_token: AccessToken,
    /// How long it is valid.
    pub lifetime: Duration,
    /// A new refresh token, when the endpoint rotates them (Entra ID does).
    pub refresh_token: Option<Secret>,
}

/// Why no token came.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// The endpoint answered with an OAuth error (RFC 6749 5.2), e.g. `invalid_client`.
    Refused {
        /// HTTP status.
        status: u16,
        /// The `error` code.
        error: String,
        /// The `error_description`, when given.
        description: String,
    },
    /// No usable answer: connection, timeout, or an answer that is not a token.
    Unavailable {
        /// What went wrong.
        detail: String,
    },
}

impl TokenError {
    /// The `result` label of the token request metric.
    pub fn result(&self) -> super::TokenResult {
        match self {
            TokenError::Refused { .. } => super::TokenResult::Refused,
            TokenError::Unavailable { .. } => super::TokenResult::Unavailable,
        }
    }

    fn unavailable(detail: impl Into<String>) -> TokenError {
        TokenError::Unavailable {
            detail: detail.into(),
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Refused {
                status,
                error,
                description,
            } if description.is_empty() => write!(f, "HTTP {status}: {error}"),
            TokenError::Refused {
                status,
                error,
                description,
            } => write!(f, "HTTP {status}: {error}: {description}"),
            TokenError::Unavailable { detail } => f.write_str(detail),
        }
    }
}

impl std::error::Error for TokenError {}

/// A token endpoint and how to ask it.
#[derive(Debug)]
pub struct Endpoint {
    /// The token URL.
    pub url: Url,
    /// `client_id`.
    pub client_id: String,
    /// `scope`, when one is asked for.
    pub scope: Option<String>,
    /// The grant.
    pub grant: GrantKind,
    /// The client's credential.
    pub auth: ClientAuth,
    http: reqwest::Client,
}

impl Endpoint {
    /// An endpoint with its own HTTP client over `tls` (no redirects: a token request is
    /// never re-sent elsewhere; no proxy to a loopback address).
    pub fn new(
        url: Url,
        client_id: String,
        scope: Option<String>,
        grant: GrantKind,
        auth: ClientAuth,
        tls: rustls::ClientConfig,
    ) -> Result<Endpoint, String> {
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        // The system's proxy (HTTPS_PROXY, NO_PROXY) is used for a remote endpoint, as a
        // corporate network needs; a local token helper is reached directly.
        if is_loopback(&url) {
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Endpoint {
            url,
            client_id,
            scope,
            grant,
            auth,
            http,
        })
    }

    /// The form fields of one request. `refresh_token` is the current one (refresh grant).
    pub fn form(
        &self,
        refresh_token: Option<&Secret>,
        now_unix: u64,
    ) -> Result<Vec<(&'static str, String)>, TokenError> {
        let mut form = Vec::with_capacity(6);
        match (self.grant, refresh_token) {
            (GrantKind::ClientCredentials, _) => {
                form.push(("grant_type", "client_credentials".to_owned()));
            }
            (GrantKind::RefreshToken, Some(rt)) => {
                form.push(("grant_type", "refresh_token".to_owned()));
                form.push(("refresh_token", rt.expose().to_owned()));
            }
            (GrantKind::RefreshToken, None) => {
                return Err(TokenError::unavailable("no refresh token"));
            }
        }
        form.push(("client_id", self.client_id.clone()));
        if let Some(scope) = &self.scope {
            form.push(("scope", scope.clone()));
        }
        match &self.auth {
            ClientAuth::Secret(secret) => form.push(("client_secret", secret.expose().to_owned())),
            ClientAuth::Assertion(signer) => {
                let jwt = signer
                    .sign(self.url.as_str(), &self.client_id, now_unix)
                    .map_err(|e| {
                        TokenError::unavailable(format!("cannot sign the assertion: {e}"))
                    })?;
                form.push(("client_assertion_type", ASSERTION_TYPE.to_owned()));
                form.push(("client_assertion", jwt));
            }
            ClientAuth::None => {}
        }
        Ok(form)
    }

    /// Asks for a token (RFC 6749 3.2: a POST of the form, the answer in JSON).
    pub async fn request(
        &self,
        refresh_token: Option<&Secret>,
        now_unix: u64,
    ) -> Result<Issued, TokenError> {
        let form = self.form(refresh_token, now_unix)?;
        let sent = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await;
        // reqwest's errors name the URL, never the form.
        let mut response =
            sent.map_err(|e| TokenError::unavailable(format!("request failed: {e}")))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_BODY => {
                    body.extend_from_slice(&chunk);
                }
                Ok(Some(_)) => return Err(TokenError::unavailable("answer too large")),
                Ok(None) => break,
                Err(e) => return Err(TokenError::unavailable(format!("reading the answer: {e}"))),
            }
        }
        parse(status, &body)
    }
}

/// RFC 6749 5.1 and 5.2; `expires_in` as a number or a numeric string (some endpoints).
#[derive(Deserialize)]
struct Answer {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Reads the endpoint's answer.
pub fn parse(status: u16, body: &[u8]) -> Result<Issued, TokenError> {
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return Err(TokenError::unavailable(format!(
            "HTTP {status}: the answer is not a JSON token response"
        )));
    };
    if let Some(error) = answer.error.filter(|_| !(200..300).contains(&status)) {
        return Err(TokenError::Refused {
            status,
            error: printable(&error),
            description: printable(answer.error_description.as_deref().unwrap_or_default()),
        });
    }
    let token = match answer.access_token {
        Some(t) if (200..300).contains(&status) => t,
        _ => {
            return Err(TokenError::unavailable(format!(
                "HTTP {status} without an access_token"
            )));
        }
    };
    // RFC 6750 2.1: the bearer token's characters (b64token); anything else could break
    // the SASL framing it is put into.
    let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if token.is_empty() || !token.chars().all(b64token) {
        return Err(TokenError::unavailable(
            "the access_token is not a bearer token",
        ));
    }
    if let Some(kind) = answer.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(TokenError::unavailable(format!(
            "token_type {:?} is not Bearer",
            printable(&kind)
        )));
    }
    let seconds = match answer.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok(Issued {
        access_token: AccessToken::new(token),
        lifetime: seconds.map_or(DEFAULT_LIFETIME, Duration::from_secs),
        refresh_token: answer
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(Secret::new),
    })
}

/// Provider text for the log: control characters dropped, length bounded.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_TEXT)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_token_and_an_error() {
        let ok = br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAi.eyJhdWQi.sig-_"}"#;
        let issued = parse(200, ok).unwrap();
        assert_eq!(issued.access_token.expose(), "eyJ0eXAi.eyJhdWQi.sig-_");
        assert_eq!(issued.lifetime, Duration::from_secs(3599));
        assert!(issued.refresh_token.is_none());
        let google = br#"{"access_token":"ya29.a0","expires_in":"3600","token_type":"Bearer","refresh_token":"1//new"}"#;
        let issued = parse(200, google).unwrap();
        assert_eq!(issued.lifetime, Duration::from_secs(3600));
        assert_eq!(issued.refresh_token.unwrap().expose(), "1//new");
        let err = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x"}"#;
        assert_eq!(
            parse(401, err).unwrap_err(),
            TokenError::Refused {
                status: 401,
                error: "invalid_client".into(),
                description: "AADSTS7000215: Invalid client secret provided.Trace ID: x".into(),
            }
        );
    }

    #[test]
    fn refuses_what_is_not_a_bearer_token() {
        let rows: [(u16, &[u8], &str); 5] = [
            (
                502,
                b"<html>bad gateway</html>",
                "HTTP 502: the answer is not a JSON token response",
            ),
            (
                200,
                br#"{"token_type":"Bearer"}"#,
                "HTTP 200 without an access_token",
            ),
            (
                200,
                br#"{"access_token":"a b\u0001"}"#,
                "the access_token is not a bearer token",
            ),
            (
                200,
                br#"{"access_token":"abc","token_type":"mac"}"#,
                "token_type \"mac\" is not Bearer",
            ),
            (
                500,
                br#"{"access_token":"abc"}"#,
                "HTTP 500 without an access_token",
            ),
        ];
        for (status, body, shown) in rows {
            let err = parse(status, body).unwrap_err();
            assert_eq!(err.to_string(), shown);
        }
    }
}
