//! What an `auth.oauth2` section means beyond its keys: the provider's token endpoint and
//! scope, and the rule that a token endpoint is reached over TLS. Used by validation and by
//! the upstream layer alike, so both read the same URL.

use std::net::IpAddr;
use std::path::Path;

use reqwest::Url;

use crate::config::resolve;
use crate::config::schema::{OAuth2Config, OAuth2Provider};

/// Microsoft Entra ID's v2.0 token endpoint, for a tenant.
const MICROSOFT_TOKEN_URL: &str = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token";
/// Exchange Online's scope for app-only and delegated SMTP AUTH.
pub const MICROSOFT_SCOPE: &str = "https://outlook.office365.com/.default";
/// Google's token endpoint.
const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// Gmail's full-access scope (the only one that allows SMTP).
pub const GOOGLE_SCOPE: &str = "https://mail.google.com/";

impl OAuth2Config {
    /// The token endpoint: `token_url`, else the provider's (Microsoft's needs `tenant`).
    /// RFC 6749 3.2 requires TLS to the token endpoint; plain `http` is allowed only to a
    /// loopback address (tests, a local token helper).
    pub fn endpoint(&self) -> Result<Url, String> {
        let written = match (&self.token_url, self.provider) {
            (Some(url), _) => url.clone(),
            (None, OAuth2Provider::Microsoft) => match &self.tenant {
                Some(t) => MICROSOFT_TOKEN_URL.replace("{tenant}", t),
                None => {
                    return Err("required for provider microsoft unless token_url is set".into());
                }
            },
            (None, OAuth2Provider::Google) => GOOGLE_TOKEN_URL.to_owned(),
            (None, OAuth2Provider::Generic) => {
                return Err("required for provider generic: set token_url".into());
            }
        };
        let url = Url::parse(&written).map_err(|e| format!("{written:?} is not a URL: {e}"))?;
        match url.scheme() {
            "https" => Ok(url),
            "http" if is_loopback(&url) => Ok(url),
            "http" => Err(format!(
                "{written:?}: a token endpoint must be https (http only on a loopback address)"
            )),
            other => Err(format!("{written:?}: scheme {other:?} is not https")),
        }
    }

    /// The scope asked for: `scope`, else the provider's.
    pub fn effective_scope(&self) -> Option<&str> {
        match (&self.scope, self.provider) {
            (Some(s), _) => Some(s.as_str()),
            (None, OAuth2Provider::Microsoft) => Some(MICROSOFT_SCOPE),
            (None, OAuth2Provider::Google) => Some(GOOGLE_SCOPE),
            (None, OAuth2Provider::Generic) => None,
        }
    }

    /// The files this section names (secret, certificate, key, refresh token), with the
    /// key each is under.
    pub fn files(&self) -> [(&'static str, Option<&Path>); 4] {
        [
            ("client_secret_file", self.client_secret_file.as_deref()),
            ("client_certificate", self.client_certificate.as_deref()),
            ("client_key", self.client_key.as_deref()),
            ("refresh_token_file", self.refresh_token_file.as_deref()),
        ]
    }

    /// Resolves the file paths against `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let files = [
            self.client_secret_file.as_mut(),
            self.client_certificate.as_mut(),
            self.client_key.as_mut(),
            self.refresh_token_file.as_mut(),
        ];
        for path in files.into_iter().flatten() {
            *path = resolve(base, path);
        }
    }
}

/// Whether the URL's host is `localhost` or a loopback address.
fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(provider: OAuth2Provider, tenant: Option<&str>, url: Option<&str>) -> OAuth2Config {
        OAuth2Config {
            provider,
            tenant: tenant.map(str::to_owned),
            client_id: "c".into(),
            client_secret_file: None,
            client_certificate: None,
            client_key: None,
            refresh_token_file: None,
            token_url: url.map(str::to_owned),
            scope: None,
        }
    }

    #[test]
    fn provider_endpoints_and_scopes() {
        use OAuth2Provider::*;
        let ms = cfg(Microsoft, Some("contoso.onmicrosoft.com"), None);
        assert_eq!(
            ms.endpoint().unwrap().as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(ms.effective_scope(), Some(MICROSOFT_SCOPE));
        let g = cfg(Google, None, None);
        assert_eq!(
            g.endpoint().unwrap().as_str(),
            "https://oauth2.googleapis.com/token"
        );
        assert_eq!(g.effective_scope(), Some(GOOGLE_SCOPE));
        assert_eq!(cfg(Generic, None, None).effective_scope(), None);
        let rows = [
            (
                cfg(Microsoft, None, None),
                "required for provider microsoft unless token_url is set",
            ),
            (
                cfg(Generic, None, None),
                "required for provider generic: set token_url",
            ),
            (
                cfg(Generic, None, Some("http://idp.example/token")),
                "\"http://idp.example/token\": a token endpoint must be https (http only on a loopback address)",
            ),
            (
                cfg(Generic, None, Some("ftp://127.0.0.1/t")),
                "\"ftp://127.0.0.1/t\": scheme \"ftp\" is not https",
            ),
        ];
        for (c, problem) in rows {
            assert_eq!(c.endpoint().unwrap_err(), problem);
        }
        for ok in [
            "http://127.0.0.1:8080/t",
            "http://[::1]/t",
            "http://localhost/t",
            "https://idp.example/t",
        ] {
            assert!(cfg(Generic, None, Some(ok)).endpoint().is_ok(), "{ok}");
        }
    }
}
