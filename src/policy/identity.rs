//! Who may send as which address: sender patterns shared by users, device networks and
//! routes.

/// One sender pattern from the config: `*`, `@domain` or `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    /// Any sender, including the null reverse path.
    Any,
    /// Any address at this domain (stored lowercase).
    Domain(String),
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
        } else if let Some(domain) = s.strip_prefix('@') {
            SenderPattern::Domain(domain.to_ascii_lowercase())
        } else {
            SenderPattern::Address(s.to_lowercase())
        }
    }

    /// True when `sender` (`local@domain`, or `""` for the null path) matches.
    pub fn matches(&self, sender: &str) -> bool {
        match self {
            SenderPattern::Any => true,
            SenderPattern::Domain(domain) => {
                split_domain(sender).is_some_and(|d| d.eq_ignore_ascii_case(domain))
            }
            SenderPattern::Address(addr) => !sender.is_empty() && sender.to_lowercase() == *addr,
        }
    }
}

/// The domain of `local@domain` (after the last `@`, since a quoted local part may hold one).
fn split_domain(addr: &str) -> Option<&str> {
    addr.rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

/// A list of patterns: a sender is allowed when any matches.
#[derive(Debug, Clone, Default)]
pub struct SenderRules(Vec<SenderPattern>);

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

    #[test]
    fn rules_allow_null_sender() {
        let rules = SenderRules::new(&["app1@corp.example"]);
        assert!(rules.allows(""));
        assert!(rules.allows("app1@corp.example"));
        assert!(!rules.allows("ceo@corp.example"));
    }
}
