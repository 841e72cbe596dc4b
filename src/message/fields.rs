//! Splits a header section into its fields, byte-exactly, so a rewrite can replace some
//! fields and copy every other byte through.
//!
//! RFC 5322 2.2: a field is a name, a colon and a body; 2.2.3: a line starting with WSP
//! continues (folds) the field above it. The obsolete syntax (RFC 5322 4.5) allows WSP
//! between the name and the colon, so `From :` is a From field here too: a receiving MUA
//! may read it as one, and checking a field postern would otherwise skip is the safe side.

use std::ops::Range;

/// One field (or one stray line that is not a field), located in the section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    /// All its bytes: the first line and every continuation line, each with its line end.
    pub(crate) span: Range<usize>,
    /// The name without trailing WSP, or `None` for a line with no colon or with an invalid
    /// name (kept verbatim and never matched).
    pub(crate) name: Option<Range<usize>>,
    /// The body: from after the colon to the end of the span (line ends included).
    pub(crate) value: Range<usize>,
}

impl Field {
    /// True when the field's name is `name` (ASCII case-insensitive, RFC 5322 1.2.2).
    pub(crate) fn is(&self, block: &[u8], name: &str) -> bool {
        self.name
            .clone()
            .and_then(|r| block.get(r))
            .is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// The fields of `block`, in order, covering every byte of it.
pub(crate) fn split(block: &[u8]) -> Vec<Field> {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < block.len() {
        let rest = block.get(pos..).unwrap_or_default();
        let line_len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let end = pos + line_len;
        let continues = matches!(rest.first(), Some(b' ' | b'\t'));
        match fields.last_mut() {
            Some(last) if continues => {
                last.span.end = end;
                if last.name.is_some() {
                    last.value.end = end;
                }
            }
            _ => fields.push(start_field(block, pos, end)),
        }
        pos = end;
    }
    fields
}

/// A field whose first line is `block[start..end]`.
fn start_field(block: &[u8], start: usize, end: usize) -> Field {
    let line = block.get(start..end).unwrap_or_default();
    let colon = line.iter().position(|&b| b == b':');
    let name = colon.and_then(|c| {
        let raw = line.get(..c)?;
        let trimmed = raw.trim_ascii_end();
        // RFC 5322 2.2: printable US-ASCII except the colon.
        let valid = !trimmed.is_empty() && trimmed.iter().all(|b| (33..=126).contains(b));
        valid.then(|| start..start + trimmed.len())
    });
    let value_start = match (&name, colon) {
        (Some(_), Some(c)) => start + c + 1,
        _ => end,
    };
    Field {
        span: start..end,
        name,
        value: value_start..end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (section, [(field text, name, value)]).
    type Row = (
        &'static str,
        &'static [(&'static str, Option<&'static str>, &'static str)],
    );

    #[test]
    fn splits() {
        let rows: &[Row] = &[
            (
                "From: a@b\r\nSubject: x\r\n",
                &[
                    ("From: a@b\r\n", Some("From"), " a@b\r\n"),
                    ("Subject: x\r\n", Some("Subject"), " x\r\n"),
                ],
            ),
            (
                "From: A\r\n <a@b>\r\n\tx\r\nTo: c\r\n",
                &[
                    (
                        "From: A\r\n <a@b>\r\n\tx\r\n",
                        Some("From"),
                        " A\r\n <a@b>\r\n\tx\r\n",
                    ),
                    ("To: c\r\n", Some("To"), " c\r\n"),
                ],
            ),
            ("FROM :x", &[("FROM :x", Some("FROM"), "x")]),
            (
                "junk line\r\n cont\r\nA:1\r\n",
                &[
                    ("junk line\r\n cont\r\n", None, ""),
                    ("A:1\r\n", Some("A"), "1\r\n"),
                ],
            ),
            (" lead\r\n", &[(" lead\r\n", None, "")]),
            (": no name\r\n", &[(": no name\r\n", None, "")]),
            ("Bad Name: x\r\n", &[("Bad Name: x\r\n", None, "")]),
            ("", &[]),
        ];
        for (block, want) in rows {
            let b = block.as_bytes();
            let got: Vec<(&str, Option<&str>, &str)> = split(b)
                .iter()
                .map(|f| {
                    let text = |r: Range<usize>| std::str::from_utf8(&b[r]).unwrap();
                    (
                        text(f.span.clone()),
                        f.name.clone().map(text),
                        text(f.value.clone()),
                    )
                })
                .collect();
            assert_eq!(got, *want, "{block:?}");
        }
    }
}
