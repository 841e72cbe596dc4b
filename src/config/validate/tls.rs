//! Rules over the certificates: the top-level `tls` set and each listener's own.
//!
//! Each set is loaded here as at start (`server::tls::load_entries`), so `check-config`
//! reports a key that is not its certificate's, a name that is invalid or not covered by
//! its certificate, or a name two certificates of a set claim, with the key and the files.

use std::path::Path;

use crate::config::resolve;
use crate::config::schema::{Config, ListenerConfig, ListenerTls, TlsConfig};
use crate::server::tls::{self, CertSource};

use super::{Checked, Checker, is_empty};

impl Checker<'_> {
    /// RFC 3207 and RFC 8314: every TLS listener needs a certificate and its key: its own
    /// (`listeners[].certificate`) or the top-level `tls` set.
    pub(super) fn tls(&self, config: &Config) -> Checked {
        for (i, l) in config.listeners.iter().enumerate() {
            self.listener_certificate(i, l)?;
        }
        let needs_global = config
            .listeners
            .iter()
            .enumerate()
            .find(|(_, l)| l.tls != ListenerTls::None && l.certificate.is_none());
        match (&config.tls, needs_global) {
            (None, Some((i, l))) => {
                let problem = format!(
                    "required because listeners[{i}] ({:?}) uses TLS without a certificate of \
                     its own: set tls.certificate and tls.private_key",
                    l.name
                );
                return self.fail("tls", problem);
            }
            (Some(t), _) => self.global_set(t)?,
            (None, None) => {}
        }
        for (i, l) in config.listeners.iter().enumerate() {
            if let (Some(cert), Some(key), true) =
                (&l.certificate, &l.private_key, l.tls != ListenerTls::None)
            {
                let label = format!("listeners[{}]", l.name);
                let set = tls::sources(&format!("listeners[{i}]"), &label, cert, key, &l.sni);
                self.set(&set)?;
            }
        }
        Ok(())
    }

    /// A listener's own certificate keys go together, and only with TLS.
    fn listener_certificate(&self, i: usize, l: &ListenerConfig) -> Checked {
        let key = format!("listeners[{i}]");
        match (&l.certificate, &l.private_key) {
            (Some(_), None) => {
                let problem = format!("required with {key}.certificate");
                return self.fail(format!("{key}.private_key"), problem);
            }
            (None, Some(_)) => {
                let problem = format!("required with {key}.private_key");
                return self.fail(format!("{key}.certificate"), problem);
            }
            (None, None) if !l.sni.is_empty() => {
                let problem = format!(
                    "needs {key}.certificate and {key}.private_key: the listener's default \
                     certificate, served when no SNI certificate matches"
                );
                return self.fail(format!("{key}.sni"), problem);
            }
            _ => {}
        }
        if l.certificate.is_some() && l.tls == ListenerTls::None {
            let problem =
                "this listener has tls: none; a certificate is only used with starttls or implicit";
            return self.fail(format!("{key}.certificate"), problem);
        }
        Ok(())
    }

    /// The top-level set; its default may be generated at start instead (both files absent
    /// with `generate_self_signed`).
    fn global_set(&self, t: &TlsConfig) -> Checked {
        let set = tls::sources("tls", "tls", &t.certificate, &t.private_key, &t.sni);
        if !t.generate_self_signed {
            return self.set(&set);
        }
        let cert = resolve(self.base, &t.certificate).exists();
        let key = resolve(self.base, &t.private_key).exists();
        match (cert, key) {
            // Both are written at start: check the SNI entries alone.
            (false, false) => self.set(&set[1..]),
            (true, false) => self.half_pair("tls.private_key", &t.private_key),
            (false, true) => self.half_pair("tls.certificate", &t.certificate),
            (true, true) => self.set(&set),
        }
    }

    /// Every file of a set reads, each key is its certificate's, and the names are valid,
    /// covered and claimed once.
    fn set(&self, set: &[CertSource]) -> Checked {
        for s in set {
            let (cert_key, key_key) = (
                format!("{}.certificate", s.key),
                format!("{}.private_key", s.key),
            );
            self.ensure(!is_empty(&s.certificate), &cert_key, "must not be empty")?;
            self.ensure(!is_empty(&s.private_key), &key_key, "must not be empty")?;
            self.certificates(&cert_key, &s.certificate)?;
            self.private_key(&key_key, &s.private_key)?;
        }
        match tls::load_entries(set, self.base) {
            Ok(_) => Ok(()),
            Err(tls::TlsError::Certificate { key, problem }) => self.fail(key, problem),
            Err(other) => self.fail(
                set.first().map_or("tls", |s| s.key.as_str()),
                other.to_string(),
            ),
        }
    }

    /// One of the self-signed pair exists and the other does not: generating would overwrite
    /// or mismatch the one that exists.
    fn half_pair(&self, key: &str, missing: &Path) -> Checked {
        let problem = format!(
            "{missing:?} does not exist but the other file of the pair does: supply both, or \
             remove both to have them generated (generate_self_signed)"
        );
        self.fail(key, problem)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use crate::config::load::load_str;

    /// Listeners with certificates of their own need no top-level `tls:`; one without
    /// still does.
    #[test]
    fn listener_certificates_stand_alone() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/configs/fixtures");
        let file = std::path::Path::new(fixtures).join("postern.yaml");
        let yaml = |second: &str| {
            format!(
                "listeners:\n  - {{name: a, address: \"127.0.0.1:0\", certificate: cert.pem, \
                 private_key: key.pem, sni: [{{certificate: sni-cert.pem, private_key: \
                 sni-key.pem}}]}}\n  - {{name: b, address: \"127.0.0.1:0\"{second}}}\nqueue: \
                 {{directory: spool}}\nupstreams: [{{name: o, directory: o}}]\n"
            )
        };
        let own = ", tls: implicit, certificate: sni-cert.pem, private_key: sni-key.pem";
        load_str(&yaml(own), &file).unwrap();
        let err = load_str(&yaml(", tls: implicit"), &file).unwrap_err();
        assert!(
            err.to_string()
                .contains("tls: required because listeners[1] (\"b\") uses TLS without"),
            "{err}"
        );
    }
}
