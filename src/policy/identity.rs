//! Who may send as which address: sender patterns shared by users, device networks and
//! routes.

use crate::config::syntax::is_strict_subdomain;

/// One sender pattern from the config: `*`, `@domain`, `@*.domain` or `local@domain`.
///
/// Domains compare ASCII case-insensitively (RFC 5321 2.4: domain names are not case
/// sensitive). `@*.corp.example` matches the subdomains of corp.example at any depth
/// (`a.corp.example`, `b.a.corp.example`) but not corp.example itself: list `@corp.example`
/// beside it to allow both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    /// Any sender, including the null reverse path.
    Any,
    /// Any address at this domain (stored lowercase).
    Domain(String),
    /// Any address at a strict subdomain of this domain (stored lowercase, without `*.`).
    Subdomain(String),
    /// Exactly this address (domain stored lowercase; the local part compares
    /// case-insensitively too, as every provider we relay to treats it).
    Address(String),
}

impl SenderPattern {
    /// Parses a validated pattern; config validation has already rejected malformed ones,
    /// so anything without an `@` that is not `*` is taken as a bare address.
    pub fn parse(s: &str) -> SenderPattern {
        let s = s.trim();
        if s == "*" {
            SenderPattern::Any
        } else if let Some(parent) = s.strip_prefix("@*.") {
            SenderPattern::Subdomain(parent.to_ascii_lowercase())
        } else if let Some(domain) = s.strip_prefix('@') {
            SenderPattern::Domain(domain.to_ascii_lowercase())
        } else {
            SenderPattern::Address(s.chars().flat_map(char::to_lowercase).collect())
        }
    }

    /// True when `sender` (`local@domain`, or `""` for the null path) matches.
    pub fn matches(&self, sender: &str) -> bool {
        match self {
            SenderPattern::Any => true,
            SenderPattern::Domain(domain) => {
                split_domain(sender).is_some_and(|d| d.eq_ignore_ascii_case(domain))
            }
            SenderPattern::Subdomain(parent) => {
                split_domain(sender).is_some_and(|d| is_strict_subdomain(d, parent))
            }
            // `addr` is stored lowercase; compare without allocating a lowered copy.
            SenderPattern::Address(addr) => {
                !sender.is_empty() && sender.chars().flat_map(char::to_lowercase).eq(addr.chars())
            }
        }
    }
}

/// The domain of `local@domain` (after the last `@`, since a quoted local part may hold one).
fn split_domain(addr: &str) -> Option<&str> {
    addr.rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

/// A list of patterns: a sender is allowed when any matches. Shared, not copied: a message
/// whose header is checked holds its identity's rules.
#[derive(Debug, Clone, Default)]
pub struct SenderRules(std::sync::Arc<[SenderPattern]>);

impl SenderRules {
    /// Builds rules from config strings.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> SenderRules {
        SenderRules(
            patterns
                .iter()
                .map(|p| SenderPattern::parse(p.as_ref()))
                .collect(),
        )
    }

    /// True when the sender may be used. The null reverse path is always allowed: it is
    /// what bounces and auto-replies carry (RFC 5321 4.5.5), and it impersonates nobody.
    pub fn allows(&self, sender: &str) -> bool {
        sender.is_empty() || self.0.iter().any(|p| p.matches(sender))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let rows: &[(&str, &str, bool)] = &[
            ("*", "a@b.example", true),
            ("*", "", true),
            ("@corp.example", "x@corp.example", true),
            ("@corp.example", "x@CORP.Example", true),
            ("@corp.example", "x@sub.corp.example", false),
            ("@corp.example", "corp.example", false),
            ("@corp.example", "", false),
            ("@*.corp.example", "x@a.corp.example", true),
            ("@*.corp.example", "x@b.a.corp.example", true),
            ("@*.corp.example", "x@A.CORP.Example", true),
            ("@*.CORP.example", "x@a.corp.example", true),
            ("@*.corp.example", "x@corp.example", false),
            ("@*.corp.example", "x@.corp.example", false),
            ("@*.corp.example", "x@acorp.example", false),
            ("@*.corp.example", "x@a.corp.example.evil", false),
            ("@*.corp.example", "a.corp.example", false),
            ("@*.corp.example", "", false),
            ("@*.b\u{fc}ro.example", "x@a.b\u{fc}ro.example", true),
            ("@*.example", "x@\u{e4}.example", true),
            ("@*.corp.example", "x@\u{e4}rp.example", false),
            ("app1@corp.example", "App1@corp.example", true),
            ("app1@corp.example", "app2@corp.example", false),
            ("app1@corp.example", "", false),
        ];
        for (pattern, sender, want) in rows {
            assert_eq!(
                SenderPattern::parse(pattern).matches(sender),
                *want,
                "{pattern} vs {sender}"
            );
        }
    }

    /// `@*.domain` beside `@domain` allows the domain and all its subdomains.
    #[test]
    fn subdomain_and_domain_together() {
        let rules = SenderRules::new(&["@corp.example", "@*.corp.example"]);
        assert!(rules.allows("a@corp.example"));
        assert!(rules.allows("a@x.y.corp.example"));
        assert!(!rules.allows("a@othercorp.example"));
        let only_subs = SenderRules::new(&["@*.corp.example"]);
        assert!(!only_subs.allows("a@corp.example"));
    }

    #[test]
    fn rules_allow_null_sender() {
        let rules = SenderRules::new(&["app1@corp.example"]);
        assert!(rules.allows(""));
        assert!(rules.allows("app1@corp.example"));
        assert!(!rules.allows("ceo@corp.example"));
    }
}
