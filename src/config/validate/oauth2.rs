//! Rules over an upstream's `auth.oauth2` section: which credential goes with which
//! provider, the token endpoint, and the files it names (read here; their content never
//! reaches an error).

use std::path::Path;

use crate::config::resolve;
use crate::config::schema::{OAuth2Config, Provider};

use super::{Checked, Checker};

impl Checker<'_> {
    /// One `auth.oauth2` section under `key`; `upstream` is the upstream's own `provider`.
    pub(super) fn oauth2(
        &self,
        key: &str,
        o: &OAuth2Config,
        upstream: Option<Provider>,
    ) -> Checked {
        let Some(provider) = o.provider_or(upstream) else {
            let problem =
                "required: microsoft, google or generic (here or as the upstream's provider)";
            return self.fail(format!("{key}.provider"), problem);
        };
        if let (Some(own), Some(theirs)) = (o.provider, upstream) {
            self.ensure(
                own == theirs,
                format!("{key}.provider"),
                format!(
                    "{} differs from the upstream's provider {}",
                    own.as_str(),
                    theirs.as_str()
                ),
            )?;
        }
        self.ensure(
            !o.client_id.trim().is_empty(),
            format!("{key}.client_id"),
            "must not be empty",
        )?;
        if let Some(tenant) = &o.tenant {
            // Put into the token URL's path: a GUID or a domain, nothing that could change
            // which endpoint is asked.
            let ok = !tenant.is_empty()
                && tenant
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            self.ensure(
                ok,
                format!("{key}.tenant"),
                format!("{tenant:?} is not a tenant id or domain"),
            )?;
        }
        let url_key = match (provider, &o.token_url) {
            (Provider::Microsoft, None) => "tenant",
            _ => "token_url",
        };
        if let Err(problem) = o.endpoint(provider) {
            return self.fail(format!("{key}.{url_key}"), problem);
        }
        self.oauth2_credential(key, o, provider)
    }

    /// Exactly one way to prove the client (a secret, or a certificate and its key), or
    /// none with a refresh token (a public client); Google's refresh grant needs the
    /// secret.
    fn oauth2_credential(&self, key: &str, o: &OAuth2Config, provider: Provider) -> Checked {
        let (secret, cert, private) = (
            o.client_secret_file.as_deref(),
            o.client_certificate.as_deref(),
            o.client_key.as_deref(),
        );
        let refresh = o.refresh_token_file.as_deref();
        if secret.is_some() && (cert.is_some() || private.is_some()) {
            let problem = "set client_secret_file, or client_certificate and client_key, not both";
            return self.fail(format!("{key}.client_certificate"), problem);
        }
        match (cert, private) {
            (Some(_), None) => {
                return self.fail(
                    format!("{key}.client_key"),
                    "required with client_certificate",
                );
            }
            (None, Some(_)) => {
                return self.fail(
                    format!("{key}.client_certificate"),
                    "required with client_key",
                );
            }
            _ => {}
        }
        match provider {
            Provider::Google => {
                self.ensure(
                    refresh.is_some(),
                    format!("{key}.refresh_token_file"),
                    "required for provider google (Gmail SMTP takes delegated tokens only)",
                )?;
                self.ensure(
                    secret.is_some(),
                    format!("{key}.client_secret_file"),
                    "required for provider google",
                )?;
            }
            Provider::Microsoft | Provider::Generic => {
                self.ensure(
                    secret.is_some() || cert.is_some() || refresh.is_some(),
                    key,
                    "set client_secret_file, client_certificate and client_key, or \
                     refresh_token_file",
                )?;
            }
        }
        if let Some(file) = secret {
            self.password_file(&format!("{key}.client_secret_file"), file)?;
        }
        if let Some(file) = refresh {
            self.password_file(&format!("{key}.refresh_token_file"), file)?;
        }
        if let (Some(cert), Some(private)) = (cert, private) {
            self.assertion_key(key, cert, private)?;
        }
        Ok(())
    }

    /// The certificate is PEM and its key an RSA key that can sign (RS256, RFC 7518 3.3).
    fn assertion_key(&self, key: &str, cert: &Path, private: &Path) -> Checked {
        self.certificates(&format!("{key}.client_certificate"), cert)?;
        let key_key = format!("{key}.client_key");
        self.private_key(&key_key, private)?;
        let pem = std::fs::read(resolve(self.base, private)).unwrap_or_default();
        match jsonwebtoken::EncodingKey::from_rsa_pem(&pem) {
            Ok(_) => Ok(()),
            Err(_) => self.fail(
                key_key,
                format!("{private:?} is not an RSA private key (the client assertion is RS256)"),
            ),
        }
    }
}
