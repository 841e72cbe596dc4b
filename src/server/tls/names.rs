//! The names a certificate answers to in SNI, and matching a client's SNI against them.
//!
//! RFC 6066 section 3: the SNI `host_name` is a DNS name (no IP literal, no trailing dot),
//! compared case-insensitively. RFC 6125 section 6.4.3: a wildcard `*` stands for exactly
//! one whole left-most label, so `*.example.com` matches `mail.example.com` but neither
//! `example.com` nor `a.b.example.com`. Only DNS subjectAltNames count (RFC 6125 section
//! 6.4.4: the CN is not consulted when SANs are present, and postern requires them).

use x509_parser::extensions::GeneralName;

/// A name a certificate is chosen for: an exact DNS name or a one-label wildcard, lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Claim {
    /// `mail.example.com`.
    Exact(String),
    /// `*.example.com`, held as `example.com` (the part after `*.`).
    Wildcard(String),
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Exact(name) => f.write_str(name),
            Claim::Wildcard(parent) => write!(f, "*.{parent}"),
        }
    }
}

impl Claim {
    /// Parses a configured or certified name: a DNS name, or `*.` and a DNS name of at least
    /// two labels (RFC 6125 6.4.3: no `*.com`-style wildcard over a whole top-level domain).
    pub fn parse(name: &str) -> Result<Claim, String> {
        let lower = name.to_ascii_lowercase();
        if let Some(parent) = lower.strip_prefix("*.") {
            check_dns_name(parent).map_err(|p| format!("{name:?}: {p}"))?;
            if !parent.contains('.') {
                return Err(format!(
                    "{name:?}: a wildcard needs at least two labels after \"*.\""
                ));
            }
            return Ok(Claim::Wildcard(parent.to_owned()));
        }
        check_dns_name(&lower).map_err(|p| format!("{name:?}: {p}"))?;
        Ok(Claim::Exact(lower))
    }

    /// Whether a certificate name `self` covers the configured name `wanted`: the same
    /// name, or a wildcard whose one label `wanted` fills.
    pub fn covers(&self, wanted: &Claim) -> bool {
        match (self, wanted) {
            (a, b) if a == b => true,
            (Claim::Wildcard(parent), Claim::Exact(name)) => wildcard_parent(name) == Some(parent),
            _ => false,
        }
    }
}

/// The part of `name` a one-label wildcard would stand for removed: `a.example.com` ->
/// `example.com`; `None` for a single label.
pub fn wildcard_parent(name: &str) -> Option<&str> {
    name.split_once('.').map(|(_, rest)| rest)
}

/// The client's SNI as postern compares it: lowercase, without a trailing dot. rustls
/// hands the resolver names already in that form, so a handshake costs no allocation here.
pub fn normalise_sni(sni: &str) -> std::borrow::Cow<'_, str> {
    let sni = sni.strip_suffix('.').unwrap_or(sni);
    if sni.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(sni.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(sni)
    }
}

/// RFC 1035 section 2.3.1 and RFC 5890 (A-labels): letters, digits and hyphens, labels of
/// 1 to 63 octets not starting or ending with a hyphen, 253 octets in all; not an IP address
/// (RFC 6066 section 3: SNI carries no IP literal).
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("is not a DNS name (1 to 253 characters)".into());
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("is an IP address: SNI carries DNS names only (RFC 6066 section 3)".into());
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("is not a DNS name (label {label:?})"));
        }
    }
    Ok(())
}

/// The DNS subjectAltNames of a DER certificate, as claims; names that are not valid DNS
/// names or wildcards are skipped (SNI cannot carry them). `Err` when the certificate does
/// not parse.
pub fn dns_names(der: &[u8]) -> Result<Vec<Claim>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("its subjectAltName does not parse: {e}"))?;
    let mut claims: Vec<Claim> = san
        .into_iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Claim::parse(dns).ok(),
            _ => None,
        })
        .collect();
    claims.sort();
    claims.dedup();
    Ok(claims)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_wildcards() {
        let ok = [
            ("Mail.Example.COM", Claim::Exact("mail.example.com".into())),
            ("*.example.com", Claim::Wildcard("example.com".into())),
            ("localhost", Claim::Exact("localhost".into())),
            (
                "xn--bcher-kva.example",
                Claim::Exact("xn--bcher-kva.example".into()),
            ),
        ];
        for (name, want) in ok {
            assert_eq!(Claim::parse(name).unwrap(), want, "{name}");
        }
        for bad in [
            "",
            "*",
            "*.com",
            "a.*.example.com",
            "*a.example.com",
            "127.0.0.1",
            "::1",
            "-a.example",
            "a-.example",
            "a..example",
            "mail.example.com.",
            "a b.example",
            "bücher.example",
        ] {
            assert!(Claim::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn wildcards_cover_one_label() {
        let wild = Claim::parse("*.example.com").unwrap();
        let exact = |n: &str| Claim::parse(n).unwrap();
        assert!(wild.covers(&exact("mail.example.com")));
        assert!(wild.covers(&wild));
        assert!(!wild.covers(&exact("example.com")));
        assert!(!wild.covers(&exact("a.b.example.com")));
        assert!(!wild.covers(&exact("mail.example.org")));
        assert!(exact("mail.example.com").covers(&exact("MAIL.example.com")));
        assert!(!exact("mail.example.com").covers(&wild));
        assert_eq!(wildcard_parent("a.b.c"), Some("b.c"));
        assert_eq!(wildcard_parent("localhost"), None);
        assert_eq!(normalise_sni("Mail.Example.com."), "mail.example.com");
        assert!(matches!(
            normalise_sni("mail.example.com."),
            std::borrow::Cow::Borrowed("mail.example.com")
        ));
    }

    #[test]
    fn reads_the_dns_sans_only() {
        let mut params = rcgen::CertificateParams::new(vec![
            "b.example".to_owned(),
            "*.a.example".to_owned(),
            "B.example".to_owned(),
        ])
        .unwrap();
        params.subject_alt_names.push(rcgen::SanType::IpAddress(
            std::net::Ipv4Addr::LOCALHOST.into(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            dns_names(cert.der()).unwrap(),
            vec![
                Claim::Exact("b.example".into()),
                Claim::Wildcard("a.example".into())
            ]
        );
        assert!(dns_names(b"not a certificate").is_err());
    }
}
