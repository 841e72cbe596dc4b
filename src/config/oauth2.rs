//! What an `auth.oauth2` section means beyond its keys: the provider's token endpoint and
//! scope, and the rule that a token endpoint is reached over TLS. Used by validation and by
//! the upstream layer alike, so both read the same URL.

use std::net::IpAddr;
use std::path::Path;

use reqwest::Url;

use crate::config::resolve;
use crate::config::schema::{OAuth2Config, Provider};

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
    /// `provider` is the effective one (see [`OAuth2Config::provider_or`]).
    pub fn endpoint(&self, provider: Provider) -> Result<Url, String> {
        let written = match (&self.token_url, provider) {
            (Some(url), _) => url.clone(),
            (None, Provider::Microsoft) => match &self.tenant {
                Some(t) => MICROSOFT_TOKEN_URL.replace("{tenant}", t),
                None => {
                    return Err("required for provider microsoft unless token_url is set".into());
                }
            },
            (None, Provider::Google) => GOOGLE_TOKEN_URL.to_owned(),
            (None, Provider::Generic) => {
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

    /// This section's `provider`, else the upstream's; `None` when neither is set.
    pub fn provider_or(&self, upstream: Option<Provider>) -> Option<Provider> {
        self.provider.or(upstream)
    }

    /// The scope asked for: `scope`, else the provider's.
    pub fn effective_scope(&self, provider: Provider) -> Option<&str> {
        match (&self.scope, provider) {
            (Some(s), _) => Some(s.as_str()),
            (None, Provider::Microsoft) => Some(MICROSOFT_SCOPE),
            (None, Provider::Google) => Some(GOOGLE_SCOPE),
            (None, Provider::Generic) => None,
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
pub fn is_loopback(url: &Url) -> bool {
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

    fn cfg(
        provider: Provider,
        tenant: Option<&str>,
        url: Option<&str>,
    ) -> (OAuth2Config, Provider) {
        let c = OAuth2Config {
            provider: Some(provider),
            tenant: tenant.map(str::to_owned),
            client_id: "c".into(),
            client_secret_file: None,
            client_certificate: None,
            client_key: None,
            refresh_token_file: None,
            token_url: url.map(str::to_owned),
            scope: None,
        };
        (c, provider)
    }

    #[test]
    fn provider_endpoints_and_scopes() {
        use Provider::*;
        let (ms, p) = cfg(Microsoft, Some("contoso.onmicrosoft.com"), None);
        assert_eq!(
            ms.endpoint(p).unwrap().as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(ms.effective_scope(p), Some(MICROSOFT_SCOPE));
        let (g, p) = cfg(Google, None, None);
        assert_eq!(
            g.endpoint(p).unwrap().as_str(),
            "https://oauth2.googleapis.com/token"
        );
        assert_eq!(g.effective_scope(p), Some(GOOGLE_SCOPE));
        let (generic, p) = cfg(Generic, None, None);
        assert_eq!(generic.effective_scope(p), None);
        // The section's provider wins over the upstream's; the upstream's fills in.
        assert_eq!(generic.provider_or(Some(Microsoft)), Some(Generic));
        let unset = OAuth2Config {
            provider: None,
            ..generic
        };
        assert_eq!(unset.provider_or(Some(Microsoft)), Some(Microsoft));
        assert_eq!(unset.provider_or(None), None);
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
        for ((c, p), problem) in rows {
            assert_eq!(c.endpoint(p).unwrap_err(), problem);
        }
        for ok in [
            "http://127.0.0.1:8080/t",
            "http://[::1]/t",
            "http://localhost/t",
            "https://idp.example/t",
        ] {
            let (c, p) = cfg(Generic, None, Some(ok));
            assert!(c.endpoint(p).is_ok(), "{ok}");
        }
    }

    /// `provider` in `auth.oauth2` is the upstream's provider when the upstream names none:
    /// it implies Microsoft 365's caps too.
    #[test]
    fn oauth2_provider_implies_the_upstreams() {
        use crate::config::schema::UpstreamConfig;
        let yaml = "{name: m, address: \"smtp.office365.com:587\", auth: {username: a@b, \
                    oauth2: {provider: microsoft, tenant: t, client_id: c}}}";
        let u: UpstreamConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(u.effective_provider(), Some(Provider::Microsoft));
        assert_eq!(u.max_connections(), 3);
        assert_eq!(u.caps().messages_per_minute, 30);
        assert_eq!(u.caps().recipients_per_day, 10_000);
    }
}
