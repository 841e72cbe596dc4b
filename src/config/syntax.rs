//! The syntax of the small strings in the config: sender patterns, domains and `host:port`.
//!
//! Pure functions that return a problem text an admin can act on; `validate.rs` puts the key
//! in front. `policy/` and `upstream/` match envelope senders against patterns that passed
//! [`sender_pattern`], with [`is_strict_subdomain`] for `@*.domain`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// What a valid sender pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: any sender.
    Any,
    /// `@domain`: any address at that domain.
    Domain,
    /// `@*.domain`: any address at a subdomain of that domain (not the domain itself).
    Subdomain,
    /// `local@domain`: that one address.
    Mailbox,
}

/// Parses a sender pattern: `*`, `@domain`, `@*.domain` or `local@domain`, written bare
/// (no `<>`).
pub fn sender_pattern(p: &str) -> Result<Pattern, String> {
    if p == "*" {
        return Ok(Pattern::Any);
    }
    let shapes = "expected \"*\", \"@domain\" or \"local@domain\"";
    if p.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    {
        return Err(format!(
            "{p:?} has a space, control character or <>: {shapes}"
        ));
    }
    let Some((local, domain)) = p.rsplit_once('@') else {
        return Err(format!("{p:?} is not a sender pattern: {shapes}"));
    };
    if domain.contains('*') {
        return subdomain_pattern(p, local, domain);
    }
    check_domain(domain).map_err(|why| format!("{p:?}: {why}"))?;
    if local.is_empty() {
        return Ok(Pattern::Domain);
    }
    if local.contains('*') {
        return Err(format!(
            "{p:?}: wildcards in the local part are not supported; \"@{domain}\" matches any \
             address at {domain}"
        ));
    }
    // RFC 5321 4.5.3.1.1: a local part is at most 64 octets.
    if local.len() > 64 || local.contains('@') || local.contains(',') {
        return Err(format!(
            "{p:?}: the local part must be at most 64 octets, without '@' or ','"
        ));
    }
    Ok(Pattern::Mailbox)
}

/// A domain with a `*`: only `@*.domain`, a whole leading label, without a local part.
fn subdomain_pattern(p: &str, local: &str, domain: &str) -> Result<Pattern, String> {
    let shape = "a subdomain wildcard is written \"@*.domain\" (as in \"@*.corp.example\"), \
                 with no local part and a valid domain after \"*.\"";
    let parent = domain.strip_prefix("*.").filter(|_| local.is_empty());
    match parent.map(check_domain) {
        Some(Ok(())) => Ok(Pattern::Subdomain),
        _ => Err(format!("{p:?}: {shape}")),
    }
}

/// True when `domain` ends in `.parent` with at least one label before it (so `parent`
/// itself is not its own subdomain); ASCII case-insensitive (RFC 5321 2.4). Compares
/// octets, so UTF-8 domains (RFC 6531) never split a character.
pub fn is_strict_subdomain(domain: &str, parent: &str) -> bool {
    let (d, p) = (domain.as_bytes(), parent.as_bytes());
    if p.is_empty() || d.len() < p.len() + 2 {
        return false;
    }
    let (head, tail) = d.split_at(d.len() - p.len());
    head.ends_with(b".") && tail.eq_ignore_ascii_case(p)
}

/// RFC 5321 4.1.2 and 4.5.3.1.2 (with RFC 6531 for UTF-8 labels): dot-separated labels of
/// letters, digits and hyphens, 1 to 63 octets each, not starting or ending with a hyphen,
/// at most 255 octets in all.
pub fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("the domain is empty".into());
    }
    if domain.len() > 255 {
        return Err("the domain is longer than 255 octets".into());
    }
    for label in domain.split('.') {
        let chars_ok = label.chars().all(|c| c.is_alphanumeric() || c == '-');
        if label.is_empty()
            || label.len() > 63
            || !chars_ok
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!("{domain:?} is not a valid domain"));
        }
    }
    Ok(())
}

/// `host:port` where host is a DNS name, an IPv4 address or a bracketed IPv6 address
/// (RFC 3986 section 3.2.2) and port is 1 to 65535.
pub fn check_host_port(address: &str) -> Result<(), String> {
    let shape = "expected host:port such as smtp.example.com:587, 192.0.2.1:25 or [2001:db8::1]:25";
    let bad = || format!("{address:?} is not a valid address: {shape}");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p >= 1 => {}
        _ => {
            return Err(format!(
                "{address:?}: the port must be a number from 1 to 65535"
            ));
        }
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().map(|_| ()).map_err(|_| bad());
    }
    // All-numeric hosts are meant as IPv4 addresses ("999.1.1.1" is no DNS name).
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return host.parse::<Ipv4Addr>().map(|_| ()).map_err(|_| bad());
    }
    match check_domain(host) {
        Ok(()) if host.is_ascii() => Ok(()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_patterns() {
        use Pattern::*;
        let table: &[(&str, Option<Pattern>)] = &[
            ("*", Some(Any)),
            ("@corp.example", Some(Domain)),
            ("@*.corp.example", Some(Subdomain)),
            ("@*.example", Some(Subdomain)),
            ("@*.b\u{fc}ro.example", Some(Subdomain)),
            ("@*", None),
            ("@*.", None),
            ("@*foo.example", None),
            ("@*.*.example", None),
            ("@a.*.example", None),
            ("@*..example", None),
            ("@**.example", None),
            ("a@*.corp.example", None),
            ("*@*.corp.example", None),
            ("app1@corp.example", Some(Mailbox)),
            ("scans@büro.example", Some(Mailbox)),
            ("a.b+tag@x-y.example", Some(Mailbox)),
            ("", None),
            ("@", None),
            ("corp.example", None),
            ("user@", None),
            ("<user@corp.example>", None),
            ("user @corp.example", None),
            ("*@corp.example", None),
            ("a@b@corp.example", None),
            ("user@-corp.example", None),
            ("user@corp..example", None),
            ("user@corp.example.", None),
            ("user@corp_example", None),
        ];
        for (input, want) in table {
            assert_eq!(sender_pattern(input).ok(), *want, "{input:?}");
        }
        assert_eq!(
            sender_pattern("@*foo.example").err().as_deref(),
            Some(
                "\"@*foo.example\": a subdomain wildcard is written \"@*.domain\" (as in \
                 \"@*.corp.example\"), with no local part and a valid domain after \"*.\""
            )
        );
        let long_local = format!("{}@corp.example", "x".repeat(65));
        assert_eq!(sender_pattern(&long_local).ok(), None);
    }

    #[test]
    fn host_ports() {
        let table: &[(&str, bool)] = &[
            ("smtp.office365.com:587", true),
            ("localhost:25", true),
            ("192.0.2.1:25", true),
            ("[2001:db8::1]:465", true),
            ("relay:65535", true),
            ("smtp.office365.com", false),
            ("smtp.office365.com:0", false),
            ("smtp.office365.com:65536", false),
            ("smtp.office365.com:smtp", false),
            (":25", false),
            ("999.1.1.1:25", false),
            ("2001:db8::1:25", false),
            ("[nonsense]:25", false),
            ("smtp_relay:25", false),
            ("bürö.example:25", false),
        ];
        for (input, ok) in table {
            assert_eq!(check_host_port(input).is_ok(), *ok, "{input:?}");
        }
    }
}
