//! The text helpers that stand between the files and Prometheus: Grafana's variables
//! substituted, identifiers, metric names and selectors picked out of PromQL, query strings
//! percent-encoded.

use std::collections::BTreeSet;

/// Grafana's variables replaced as a dashboard would send the query: `$__rate_interval` and
/// `$__interval` by `1m`, `$__range` by `1h`, any other `$name` or `${name}` by `.*` (the
/// dashboard's "All" value: every variable here has `allValue: ".*"`).
pub(super) fn grafana_substitute(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = variable_at(after);
        // A braced name may carry a format (`${var:regex}`): the name is before the colon.
        let name = name.split(':').next().unwrap_or(name);
        out.push_str(match name {
            "" => "$",
            "__rate_interval" | "__interval" => "1m",
            "__range" => "1h",
            _ => ".*",
        });
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// The variable name at the start of `after` (the text just past a `$`), braced (`{name}`)
/// or bare, and how many bytes of `after` it takes; an unclosed brace is no name.
fn variable_at(after: &str) -> (&str, usize) {
    if let Some(braced) = after.strip_prefix('{') {
        match braced.find('}') {
            Some(end) => (&braced[..end], end + 2),
            None => ("", 0),
        }
    } else {
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        (&after[..end], end)
    }
}

/// The identifiers of `text` outside quoted strings, with their byte offsets: PromQL
/// metric and label names, function names, keywords.
fn identifiers(text: &str) -> Vec<(usize, &str)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            // Skip the string (backslash escapes included; backquoted ones have none).
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += if bytes[i] == b'\\' && c != b'`' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            out.push((start, &text[start..i]));
        } else if c.is_ascii_digit() {
            // A number or duration (`1e3`, `5m`, `0x1f`): not an identifier's start.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Whether an identifier is one of postern's metric names (`\b(postern|process)_[a-z0-9_]+\b`).
fn is_metric(ident: &str) -> bool {
    ["postern_", "process_"].iter().any(|p| {
        ident.strip_prefix(p).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
    })
}

/// The postern and process metric names in `text`, each once.
pub(super) fn metric_names(text: &str) -> BTreeSet<String> {
    identifiers(text)
        .into_iter()
        .filter(|(_, id)| is_metric(id))
        .map(|(_, id)| id.to_owned())
        .collect()
}

/// The selectors with matchers in `text`: each postern or process metric name followed by
/// `{...}` (quotes respected), as written.
pub(super) fn selectors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (start, id) in identifiers(text) {
        if !is_metric(id) {
            continue;
        }
        let after = &text[start + id.len()..];
        let Some(inner) = after.trim_start().strip_prefix('{') else {
            continue;
        };
        if let Some(matchers) = matchers(inner) {
            out.insert(format!("{id}{{{matchers}}}"));
        }
    }
    out
}

/// The matchers of a selector, given the text just past its `{`: everything up to the
/// closing `}` outside quoted strings (backslash escapes respected); `None` if unclosed.
fn matchers(inner: &str) -> Option<&str> {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '}') => return Some(&inner[..i]),
            (None, _) => {}
        }
    }
    None
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a query string).
pub(super) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `series` as /metrics prints it (`name` or `name{labels}`) as PromQL restricted to the
/// `postern` job.
pub(super) fn with_job(series: &str) -> String {
    match series.split_once('{') {
        Some((name, labels)) => format!(r#"{name}{{job="postern",{labels}"#),
        None => format!(r#"{series}{{job="postern"}}"#),
    }
}

/// The helpers that stand between the files and Prometheus, on fixed inputs.
#[test]
fn substitution_and_extraction() {
    assert_eq!(
        grafana_substitute(
            r#"rate(x{a=~"$instance", b=~"${listener}"}[$__rate_interval]) $__range $__interval"#
        ),
        r#"rate(x{a=~".*", b=~".*"}[1m]) 1h 1m"#
    );
    let expr = r#"sum(rate(postern_a_total{l="postern_not_a_name", m!="}"}[1m])) / process_open_fds and on (instance) postern_b"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        ["postern_a_total", "postern_b", "process_open_fds"]
    );
    assert_eq!(
        selectors(expr).into_iter().collect::<Vec<_>>(),
        [r#"postern_a_total{l="postern_not_a_name", m!="}"}"#]
    );
    assert_eq!(
        percent_encode(r#"up{job="x"}[1m]"#),
        "up%7Bjob%3D%22x%22%7D%5B1m%5D"
    );
}
