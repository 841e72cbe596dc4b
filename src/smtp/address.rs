//! Reverse and forward paths: RFC 5321 4.1.2 mailbox syntax, with the
//! SMTPUTF8 extension of RFC 6531 3.3 (UTF-8 in atoms, quoted strings and
//! sub-domains).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 4.5.3.1.1: at most 64 octets of local part.
pub const MAX_LOCAL: usize = 64;
/// RFC 5321 4.5.3.1.2: at most 255 octets of domain.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 4.5.3.1.3: at most 256 octets of path, brackets included.
pub const MAX_PATH: usize = 256;

/// Why a path was refused; the session maps every variant to 501 5.1.7
/// (sender) or 501 5.1.3 (recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddressError {
    /// Missing `<` or `>`, or bytes after `>`.
    Brackets,
    /// Path, local part or domain over its RFC 5321 4.5.3.1 cap.
    TooLong,
    /// Malformed source route (`@a,@b:`).
    Route,
    /// Local part is neither a dot-string nor a quoted string.
    LocalPart,
    /// Missing `@`, or a bad domain or address literal.
    Domain,
    /// `<>` where a forward path is required.
    Null,
}

/// A mailbox `local@domain`.
///
/// `local` is stored unquoted (the quoted-string's content with quoted
/// pairs resolved); [`fmt::Display`] re-quotes it when needed. The special
/// recipient `<postmaster>` (RFC 5321 4.1.1.3) is `local: "postmaster"`,
/// `domain: ""`; Display then prints just `postmaster`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part, unquoted.
    pub local: String,
    /// The domain as sent (case kept), or an address literal with its brackets.
    pub domain: String,
}

impl Mailbox {
    /// True if both parts are ASCII (else SMTPUTF8 is required, RFC 6531 3.4).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local) {
            f.write_str(&self.local)?;
        } else {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        if self.domain.is_empty() {
            Ok(())
        } else {
            write!(f, "@{}", self.domain)
        }
    }
}

/// The MAIL FROM path: a mailbox or the null path `<>` used by bounces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>` (RFC 5321 4.5.5).
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// True if the path is null or an ASCII mailbox.
    pub fn is_ascii(&self) -> bool {
        match self {
            ReversePath::Null => true,
            ReversePath::Mailbox(m) => m.is_ascii(),
        }
    }
}

impl fmt::Display for ReversePath {
    /// The bare address, without brackets; empty for `<>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// A RCPT TO path. `<postmaster>` is a mailbox with an empty domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPath(pub Mailbox);

impl ForwardPath {
    /// True for the domain-less `<postmaster>` recipient.
    pub fn is_postmaster(&self) -> bool {
        self.0.domain.is_empty()
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parses `<...>` after MAIL FROM: (brackets included).
pub fn parse_reverse_path(path: &str) -> Result<ReversePath, AddressError> {
    let inner = unbracket(path)?;
    if inner.is_empty() {
        return Ok(ReversePath::Null);
    }
    parse_mailbox(strip_route(inner)?).map(ReversePath::Mailbox)
}

/// Parses `<...>` after RCPT TO: (brackets included).
pub fn parse_forward_path(path: &str) -> Result<ForwardPath, AddressError> {
    let inner = unbracket(path)?;
    if inner.is_empty() {
        return Err(AddressError::Null);
    }
    // RFC 5321 4.1.1.3: "<Postmaster>" without domain, case-insensitive.
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok(ForwardPath(Mailbox {
            local: "postmaster".to_owned(),
            domain: String::new(),
        }));
    }
    parse_mailbox(strip_route(inner)?).map(ForwardPath)
}

fn unbracket(path: &str) -> Result<&str, AddressError> {
    if path.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    path.strip_prefix('<')
        .and_then(|p| p.strip_suffix('>'))
        .ok_or(AddressError::Brackets)
}

/// RFC 5321 4.1.2 A-d-l: `@one,@two:` is accepted and ignored (RFC 5321
/// C: servers SHOULD ignore source routes).
fn strip_route(inner: &str) -> Result<&str, AddressError> {
    if !inner.starts_with('@') {
        return Ok(inner);
    }
    let (route, rest) = inner.split_once(':').ok_or(AddressError::Route)?;
    for hop in route.split(',') {
        let domain = hop.strip_prefix('@').ok_or(AddressError::Route)?;
        if !is_domain(domain) {
            return Err(AddressError::Route);
        }
    }
    Ok(rest)
}

/// RFC 5321 4.1.2 Mailbox = Local-part "@" ( Domain / address-literal ).
fn parse_mailbox(s: &str) -> Result<Mailbox, AddressError> {
    let (local, rest) = if let Some(q) = s.strip_prefix('"') {
        parse_quoted(q)?
    } else {
        let at = s.rfind('@').ok_or(AddressError::Domain)?;
        let (l, r) = s.split_at(at);
        if !is_dot_string(l) {
            return Err(AddressError::LocalPart);
        }
        (l.to_owned(), r)
    };
    let domain = rest.strip_prefix('@').ok_or(AddressError::Domain)?;
    // Lengths are octets of the wire form (4.5.3.1.1).
    let local_octets = s.len() - rest.len();
    if local_octets > MAX_LOCAL || domain.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    if !(is_domain(domain) || is_address_literal(domain)) {
        return Err(AddressError::Domain);
    }
    Ok(Mailbox {
        local,
        domain: domain.to_owned(),
    })
}

/// Parses the rest of a quoted string after its opening quote; returns the
/// unquoted content and what follows the closing quote.
/// RFC 5321 4.1.2: qtextSMTP is %d32-33 / %d35-91 / %d93-126 (plus UTF-8,
/// RFC 6531), quoted-pairSMTP is `\` %d32-126.
fn parse_quoted(s: &str) -> Result<(String, &str), AddressError> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, s.get(i + 1..).unwrap_or(""))),
            '\\' => match chars.next() {
                Some((_, p)) if (' '..='~').contains(&p) => out.push(p),
                _ => return Err(AddressError::LocalPart),
            },
            c if (' '..='~').contains(&c) || !c.is_ascii() => out.push(c),
            _ => return Err(AddressError::LocalPart),
        }
    }
    Err(AddressError::LocalPart)
}

/// RFC 5322 atext, widened to any non-ASCII character by RFC 6531 3.3.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// RFC 5321 Dot-string = Atom *("." Atom).
fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|a| !a.is_empty() && a.chars().all(is_atext))
}

/// RFC 5321 Domain = sub-domain *("." sub-domain); sub-domain = Let-dig
/// [Ldh-str], or a U-label (RFC 6531 3.3) which we accept as any non-ASCII run.
fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= MAX_DOMAIN
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

/// RFC 5321 4.1.3 address literals: `[1.2.3.4]`, `[IPv6:...]`, or a
/// general `[tag:content]`.
fn is_address_literal(d: &str) -> bool {
    let Some(inner) = d.strip_prefix('[').and_then(|d| d.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner.get(..5).filter(|p| p.eq_ignore_ascii_case("IPv6:")) {
        return inner
            .get(v6.len()..)
            .is_some_and(|a| a.parse::<Ipv6Addr>().is_ok());
    }
    if inner.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    // General-address-literal = Standardized-tag ":" 1*dcontent
    match inner.split_once(':') {
        Some((tag, content)) => {
            is_domain(tag)
                && !content.is_empty()
                && content
                    .bytes()
                    .all(|b| (33..=126).contains(&b) && b != b'[' && b != b']' && b != b'\\')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.to_owned(),
            domain: domain.to_owned(),
        }
    }

    #[test]
    fn reverse_paths() {
        let long_local = format!("<{}@x.example>", "a".repeat(65));
        let long_path = format!("<a@{}.example>", "b.".repeat(130));
        let rows: Vec<(&str, Result<ReversePath, AddressError>)> = vec![
            ("<>", Ok(ReversePath::Null)),
            (
                "<a@b.example>",
                Ok(ReversePath::Mailbox(mb("a", "b.example"))),
            ),
            (
                "<first.last+tag@sub.b-c.example>",
                Ok(ReversePath::Mailbox(mb(
                    "first.last+tag",
                    "sub.b-c.example",
                ))),
            ),
            (
                "<\"a b\\\"c\"@x.example>",
                Ok(ReversePath::Mailbox(mb("a b\"c", "x.example"))),
            ),
            (
                "<@r1.example,@r2.example:u@d.example>",
                Ok(ReversePath::Mailbox(mb("u", "d.example"))),
            ),
            (
                "<u@[192.0.2.1]>",
                Ok(ReversePath::Mailbox(mb("u", "[192.0.2.1]"))),
            ),
            (
                "<u@[IPv6:2001:db8::1]>",
                Ok(ReversePath::Mailbox(mb("u", "[IPv6:2001:db8::1]"))),
            ),
            (
                "<δοκιμή@παράδειγμα.δοκιμή>",
                Ok(ReversePath::Mailbox(mb("δοκιμή", "παράδειγμα.δοκιμή"))),
            ),
            ("a@b.example", Err(AddressError::Brackets)),
            ("<a@b.example", Err(AddressError::Brackets)),
            ("<a@b.example> x", Err(AddressError::Brackets)),
            ("<ab.example>", Err(AddressError::Domain)),
            ("<a@>", Err(AddressError::Domain)),
            ("<a@-b.example>", Err(AddressError::Domain)),
            ("<a@b..example>", Err(AddressError::Domain)),
            ("<a@[300.1.1.1]>", Err(AddressError::Domain)),
            ("<a..b@x.example>", Err(AddressError::LocalPart)),
            (".a@x", Err(AddressError::Brackets)),
            ("<.a@x.example>", Err(AddressError::LocalPart)),
            ("<a b@x.example>", Err(AddressError::LocalPart)),
            ("<\"unterminated@x.example>", Err(AddressError::LocalPart)),
            ("<@r1.example u@d.example>", Err(AddressError::Route)),
            ("<@:u@d.example>", Err(AddressError::Route)),
            (long_local.as_str(), Err(AddressError::TooLong)),
            (long_path.as_str(), Err(AddressError::TooLong)),
        ];
        for (input, want) in rows {
            assert_eq!(parse_reverse_path(input), want, "{input}");
        }
    }

    #[test]
    fn forward_paths() {
        let rows: Vec<(&str, Result<ForwardPath, AddressError>)> = vec![
            ("<>", Err(AddressError::Null)),
            ("<PostMaster>", Ok(ForwardPath(mb("postmaster", "")))),
            (
                "<postmaster@x.example>",
                Ok(ForwardPath(mb("postmaster", "x.example"))),
            ),
            ("<u@x.example>", Ok(ForwardPath(mb("u", "x.example")))),
            ("<u>", Err(AddressError::Domain)),
        ];
        for (input, want) in rows {
            assert_eq!(parse_forward_path(input), want, "{input}");
        }
        assert!(parse_forward_path("<PostMaster>").is_ok_and(|p| p.is_postmaster()));
    }

    #[test]
    fn display_requotes() {
        let rows = [
            (mb("a.b", "x.example"), "a.b@x.example"),
            (mb("a b\"c", "x.example"), "\"a b\\\"c\"@x.example"),
            (mb(".a", "x.example"), "\".a\"@x.example"),
            (mb("postmaster", ""), "postmaster"),
        ];
        for (m, want) in rows {
            assert_eq!(m.to_string(), want);
            if !m.domain.is_empty() {
                let again = parse_reverse_path(&format!("<{m}>"));
                assert_eq!(again, Ok(ReversePath::Mailbox(m.clone())), "round trip");
            }
        }
        assert!(mb("a", "b").is_ascii());
        assert!(!mb("ü", "b").is_ascii());
        assert!(!mb("a", "bü").is_ascii());
    }
}
