//! Writes mailbox fields postern builds (the rewritten From, the added Reply-To): display
//! names as RFC 5322 phrases, or RFC 2047 encoded words when a phrase cannot carry them, and
//! lines folded to stay short.
//!
//! Display names come decoded from mail-parser, so they are re-encoded rather than copied:
//! the original bytes may be folded across lines, mix encoded words with atoms, or use a
//! charset other than UTF-8, and one canonical UTF-8 form is simpler to get right.

/// RFC 5322 2.1.1: lines SHOULD be at most 78 characters; postern folds at this width.
const FOLD_AT: usize = 78;

/// RFC 2047 2: an encoded word is at most 75 characters, `=?UTF-8?Q?` and `?=` included.
/// Postern writes at most 66, so that `Reply-To: ` and one word fit in [`FOLD_AT`].
const MAX_WORD: usize = 66;

/// Longest ASCII display name written as a plain phrase or quoted string; longer ones are
/// written as encoded words, which fold.
const MAX_PLAIN: usize = 60;

/// RFC 5322 3.2.3 atext: the characters an atom may hold.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// The words of a display name: atoms when it is atoms separated by single spaces, else one
/// quoted string (RFC 5322 3.2.4), else RFC 2047 encoded words for non-ASCII, control
/// characters, a literal `=?` (which a decoder would take for an encoded word), or length.
fn name_words(name: &str) -> Vec<String> {
    let printable = name.chars().all(|c| (' '..='~').contains(&c));
    if !printable || name.contains("=?") || name.len() > MAX_PLAIN {
        return encoded_words(name);
    }
    let atoms: Vec<&str> = name.split(' ').collect();
    if atoms
        .iter()
        .all(|a| !a.is_empty() && a.chars().all(is_atext))
    {
        return atoms.into_iter().map(str::to_owned).collect();
    }
    let mut quoted = String::from("\"");
    for c in name.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    vec![quoted]
}

/// RFC 2047 4.2 and 5(3): Q-encoded UTF-8 words for use in a phrase, where only letters,
/// digits and `!*+-/` may stand for themselves and a space is `_`; each word holds whole
/// characters (RFC 2047 5) and is at most [`MAX_WORD`] long.
fn encoded_words(name: &str) -> Vec<String> {
    const HEAD: &str = "=?UTF-8?Q?";
    let room = MAX_WORD - HEAD.len() - 2;
    let mut words = Vec::new();
    let mut text = String::new();
    for c in name.chars() {
        let mut enc = String::new();
        if c == ' ' {
            enc.push('_');
        } else if c.is_ascii_alphanumeric() || "!*+-/".contains(c) {
            enc.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                enc.push_str(&format!("={b:02X}"));
            }
        }
        if text.len() + enc.len() > room {
            words.push(format!("{HEAD}{text}?="));
            text.clear();
        }
        text.push_str(&enc);
    }
    if !text.is_empty() {
        words.push(format!("{HEAD}{text}?="));
    }
    words
}

/// One field `Name: mailbox, mailbox` (RFC 5322 3.4), CRLF-terminated and folded between
/// words (RFC 5322 2.2.3) so no line exceeds [`FOLD_AT`] unless one word alone does. Each
/// mailbox is `name <address>` or, without a display name, the bare address.
pub(crate) fn mailbox_field(field: &str, mailboxes: &[(Option<&str>, &str)]) -> Vec<u8> {
    let mut words: Vec<String> = Vec::new();
    for (i, (name, address)) in mailboxes.iter().enumerate() {
        let mut these = match name.map(str::trim).filter(|n| !n.is_empty()) {
            Some(n) => {
                let mut w = name_words(n);
                w.push(format!("<{address}>"));
                w
            }
            None => vec![(*address).to_owned()],
        };
        if i + 1 < mailboxes.len()
            && let Some(last) = these.last_mut()
        {
            last.push(',');
        }
        words.append(&mut these);
    }
    fold(field, &words)
}

/// `field:` then the words, each after a space, with a line break before a word that would
/// pass [`FOLD_AT`] (never before the first, so the field body is never empty on line one).
fn fold(field: &str, words: &[String]) -> Vec<u8> {
    let mut out = format!("{field}:");
    let mut line = out.len();
    for (i, word) in words.iter().enumerate() {
        if i > 0 && line + 1 + word.len() > FOLD_AT {
            out.push_str("\r\n");
            line = 0;
        }
        out.push(' ');
        out.push_str(word);
        line += 1 + word.len();
    }
    out.push_str("\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let rows: &[(&str, &[&str])] = &[
            ("Alice", &["Alice"]),
            ("Alice B. Cooper", &["\"Alice B. Cooper\""]),
            ("Scan to mail", &["Scan", "to", "mail"]),
            ("ceo@corp.example, boss", &["\"ceo@corp.example, boss\""]),
            ("say \"hi\" \\o/", &["\"say \\\"hi\\\" \\\\o/\""]),
            ("two  spaces", &["\"two  spaces\""]),
            ("J\u{fc}rgen M", &["=?UTF-8?Q?J=C3=BCrgen_M?="]),
            ("a=?b?=", &["=?UTF-8?Q?a=3D=3Fb=3F=3D?="]),
            ("tab\there", &["=?UTF-8?Q?tab=09here?="]),
            ("x_y", &["x_y"]),
            ("(c) x", &["\"(c) x\""]),
        ];
        for (name, want) in rows {
            assert_eq!(name_words(name), *want, "{name:?}");
        }
    }

    /// Long and multi-byte names split into words of whole characters, each at most 75.
    #[test]
    fn encoded_words_split_on_characters() {
        let name = "\u{e4}".repeat(40);
        let words = encoded_words(&name);
        assert!(words.iter().all(|w| w.len() <= MAX_WORD), "{words:?}");
        assert_eq!(words.len(), 5);
        assert!(words.iter().all(|w| w.matches('=').count() % 2 == 0));
        let long = "x".repeat(200);
        assert!(name_words(&long).iter().all(|w| w.len() <= MAX_WORD));
    }

    /// (mailboxes, the field written).
    type Row<'a> = (&'a [(Option<&'a str>, &'a str)], &'a str);

    #[test]
    fn fields() {
        let rows: &[Row] = &[
            (&[(None, "a@x.example")], "From: a@x.example\r\n"),
            (&[(Some("  "), "a@x.example")], "From: a@x.example\r\n"),
            (
                &[(Some("Alice"), "a@x.example")],
                "From: Alice <a@x.example>\r\n",
            ),
            (
                &[(Some("A"), "a@x.example"), (None, "b@y.example")],
                "From: A <a@x.example>, b@y.example\r\n",
            ),
            (
                &[(
                    Some("Scanner on the third floor near the kitchen"),
                    "scanner-3rd-floor@printers.corp.example",
                )],
                "From: Scanner on the third floor near the kitchen\r\n \
                 <scanner-3rd-floor@printers.corp.example>\r\n",
            ),
        ];
        for (boxes, want) in rows {
            let got = mailbox_field("From", boxes);
            assert_eq!(String::from_utf8(got).unwrap(), *want);
        }
    }
}
