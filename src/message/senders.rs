//! The originator addresses of a header section: every mailbox of every `From:` field and
//! the mailbox of every `Sender:` field (RFC 5322 3.6.2), for the ownership check.
//!
//! Field values go through mail-parser's RFC 5322 address parser (folding, RFC 2047
//! encoded words, quoted display names, groups and comments are its job); postern splits
//! the fields itself (the private `fields` module) so that the fields checked are exactly
//! the fields [`super::rewrite`] replaces, duplicates included: a message with two From
//! fields has both checked, the classic spoof being a second From that some MUAs show
//! instead.
//!
//! The parser is lenient and the check must not be, so each address it returns must also be
//! an RFC 5321 4.1.2 mailbox as MAIL FROM would take it ([`crate::smtp::address`]), and
//! anything that does not come out as a clean list of mailboxes is reported as
//! [`Unparseable`] for policy to refuse rather than skip.

use std::fmt;

use mail_parser::MessageParser;

use crate::message::fields::{self, Field};
use crate::smtp::address::{ReversePath, parse_reverse_path};

/// Which originator field an address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderField {
    /// `From:`, the author(s) (RFC 5322 3.6.2).
    From,
    /// `Sender:`, the agent that sent it on the author's behalf (RFC 5322 3.6.2).
    Sender,
}

impl SenderField {
    /// The field name as written in replies and logs: `From` or `Sender`.
    pub fn name(self) -> &'static str {
        match self {
            SenderField::From => "From",
            SenderField::Sender => "Sender",
        }
    }
}

/// One originator mailbox found in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAddress {
    /// The field it came from.
    pub field: SenderField,
    /// The address, `local@domain` (local part unquoted as in [`crate::smtp::address`]).
    pub address: String,
    /// The display name, RFC 2047 words decoded and comments kept, if there was one.
    pub display_name: Option<String>,
}

/// The originator mailboxes of a header section, in field order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderSenders {
    /// Every From and Sender mailbox, in the order of the fields and of the mailboxes
    /// within each field.
    pub addresses: Vec<HeaderAddress>,
    /// How many From fields there were (RFC 5322 3.6 allows exactly one).
    pub from_fields: usize,
    /// How many Sender fields there were (RFC 5322 3.6 allows at most one).
    pub sender_fields: usize,
}

/// Why a From or Sender field cannot be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The field holds no mailbox at all (empty, a bare word, an empty group).
    NoAddress,
    /// Some element of the field is not a mailbox (a name without an address).
    NotAMailbox,
    /// An address is not RFC 5321 mailbox syntax (or uses a quoted local part, which the
    /// parser cannot give back exactly, so postern refuses to guess).
    BadAddress,
    /// A Sender field with more than one mailbox (RFC 5322 3.6.2: `sender = "Sender:"
    /// mailbox`).
    NotOneMailbox,
}

/// A From or Sender field that yields no checkable address: policy refuses the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparseable {
    /// The field.
    pub field: SenderField,
    /// What is wrong with it.
    pub problem: Problem,
    /// The offending text (the address, or the field value), lossily decoded and cut to
    /// [`MAX_QUOTED`] characters, for logs.
    pub text: String,
}

/// The most characters of client text an [`Unparseable`] quotes.
pub const MAX_QUOTED: usize = 100;

impl fmt::Display for Unparseable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.problem {
            Problem::NoAddress => "holds no address",
            Problem::NotAMailbox => "holds something that is not a mailbox",
            Problem::BadAddress => "holds an invalid address",
            Problem::NotOneMailbox => "must hold exactly one mailbox",
        };
        write!(f, "{}: header {what}: {:?}", self.field.name(), self.text)
    }
}

impl std::error::Error for Unparseable {}

/// The From and Sender mailboxes of a header section (the fields as [`super::block`]
/// collects them); the first field that yields no checkable address is an error.
///
/// A section without From gives an empty list: whether that is acceptable is policy's call.
pub fn header_senders(block: &[u8]) -> Result<HeaderSenders, Unparseable> {
    let mut out = HeaderSenders::default();
    for field in fields::split(block) {
        let kind = if field.is(block, "from") {
            out.from_fields += 1;
            SenderField::From
        } else if field.is(block, "sender") {
            out.sender_fields += 1;
            SenderField::Sender
        } else {
            continue;
        };
        let mailboxes = field_mailboxes(block, &field).map_err(|(problem, text)| Unparseable {
            field: kind,
            problem,
            text: quote(&text),
        })?;
        if kind == SenderField::Sender && mailboxes.len() != 1 {
            let value = block.get(field.value.clone()).unwrap_or_default();
            return Err(Unparseable {
                field: kind,
                problem: Problem::NotOneMailbox,
                text: quote(&String::from_utf8_lossy(value)),
            });
        }
        out.addresses.extend(
            mailboxes
                .into_iter()
                .map(|(display_name, address)| HeaderAddress {
                    field: kind,
                    address,
                    display_name,
                }),
        );
    }
    Ok(out)
}

/// A parsed mailbox: display name and address.
pub(crate) type Mailbox = (Option<String>, String);

/// The mailboxes of one address field, or the problem and the text it is about.
pub(crate) fn field_mailboxes(
    block: &[u8],
    field: &Field,
) -> Result<Vec<Mailbox>, (Problem, String)> {
    let value = block.get(field.value.clone()).unwrap_or_default();
    let lossy = || String::from_utf8_lossy(value).trim().to_owned();
    // A one-field header section for mail-parser: the name normalised (so `FROM :` parses
    // as From too), the value byte for byte, then the empty line.
    let mut one = b"From:".to_vec();
    one.extend_from_slice(value);
    if !one.ends_with(b"\n") {
        one.extend_from_slice(b"\r\n");
    }
    one.extend_from_slice(b"\r\n");
    let parser = MessageParser::new();
    let parsed = parser.parse_headers(&one);
    let Some(list) = parsed.as_ref().and_then(|m| m.from()) else {
        return Err((Problem::NoAddress, lossy()));
    };
    let mut out = Vec::new();
    // RFC 5322 3.4: a group's members are mailboxes of the list too.
    for addr in list.iter() {
        let Some(raw) = addr.address() else {
            let name = addr.name().unwrap_or_default().to_owned();
            return Err((Problem::NotAMailbox, name));
        };
        let address = checked_address(raw).ok_or_else(|| (Problem::BadAddress, raw.to_owned()))?;
        let name = addr.name().map(str::trim).filter(|n| !n.is_empty());
        out.push((name.map(str::to_owned), address));
    }
    if out.is_empty() {
        return Err((Problem::NoAddress, lossy()));
    }
    Ok(out)
}

/// The address as MAIL FROM would take it, or `None`. Quoted local parts and source routes
/// are refused: mail-parser drops the spaces inside quotes, so the address checked could
/// differ from the one a MUA shows.
fn checked_address(raw: &str) -> Option<String> {
    let clean = !raw.is_empty()
        && !raw.starts_with('@')
        && !raw
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_whitespace() || c.is_control());
    if !clean {
        return None;
    }
    match parse_reverse_path(&format!("<{raw}>")) {
        Ok(ReversePath::Mailbox(m)) => Some(m.to_string()),
        _ => None,
    }
}

/// Client text cut to [`MAX_QUOTED`] characters.
fn quote(text: &str) -> String {
    text.chars().take(MAX_QUOTED).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use SenderField::{From, Sender};

    type Want = &'static [(SenderField, &'static str, Option<&'static str>)];

    #[test]
    fn accepted() {
        let rows: &[(&str, Want)] = &[
            (
                "From: a@corp.example\r\n",
                &[(From, "a@corp.example", None)],
            ),
            (
                "From: Alice <alice@corp.example>\r\n",
                &[(From, "alice@corp.example", Some("Alice"))],
            ),
            (
                "Subject: x\r\nFrom: Alice\r\n\t<alice@corp.example>\r\nTo: b@c\r\n",
                &[(From, "alice@corp.example", Some("Alice"))],
            ),
            (
                "From: =?UTF-8?Q?J=C3=BCrgen_M?= <j@corp.example>\r\n",
                &[(From, "j@corp.example", Some("J\u{fc}rgen M"))],
            ),
            (
                "From: \"ceo@corp.example, boss\" <me@mine.example>\r\n",
                &[(From, "me@mine.example", Some("ceo@corp.example, boss"))],
            ),
            (
                "From: Team: a@x.example, B <b@y.example>;\r\n",
                &[
                    (From, "a@x.example", None),
                    (From, "b@y.example", Some("B")),
                ],
            ),
            (
                "From: a@x.example,\r\n B <b@y.example>\r\n",
                &[
                    (From, "a@x.example", None),
                    (From, "b@y.example", Some("B")),
                ],
            ),
            (
                "From: a@x.example (Alice)\r\n",
                &[(From, "a@x.example", Some("Alice"))],
            ),
            (
                "From: a@x.example\r\nSubject: s\r\nFROM : b@y.example\r\n",
                &[(From, "a@x.example", None), (From, "b@y.example", None)],
            ),
            (
                "from: a@x.example\r\nSENDER: <s@y.example>\r\n",
                &[(From, "a@x.example", None), (Sender, "s@y.example", None)],
            ),
            (
                "From: J\u{fc}rgen <j\u{fc}rgen@b\u{fc}cher.example>\r\n",
                &[(From, "j\u{fc}rgen@b\u{fc}cher.example", Some("J\u{fc}rgen"))],
            ),
            ("From: A@CORP.Example", &[(From, "A@CORP.Example", None)]),
            // Not RFC 5322 (an unquoted @ in a phrase), but the address is the angle-addr,
            // as MUAs read it; the display name is not an address and is not checked.
            (
                "From: ceo@corp.example <me@mine.example>\r\n",
                &[(From, "me@mine.example", Some("ceo@corp.example"))],
            ),
            ("Subject: no from\r\n", &[]),
            ("", &[]),
        ];
        for (block, want) in rows {
            let got = header_senders(block.as_bytes()).unwrap();
            let got: Vec<_> = got
                .addresses
                .iter()
                .map(|a| (a.field, a.address.as_str(), a.display_name.as_deref()))
                .collect();
            assert_eq!(got, *want, "{block:?}");
        }
    }

    #[test]
    fn refused() {
        use Problem::*;
        let rows: &[(&str, SenderField, Problem)] = &[
            ("From: garbage\r\n", From, NotAMailbox),
            ("From:\r\n", From, NoAddress),
            ("From: \r\n \r\n", From, NoAddress),
            ("From: undisclosed-recipients:;\r\n", From, NoAddress),
            ("From: a@x.example, Bob\r\n", From, NotAMailbox),
            ("From: <a@@x.example>\r\n", From, BadAddress),
            ("From: <\"a b\"@x.example>\r\n", From, BadAddress),
            ("From: <@relay.example:a@x.example>\r\n", From, BadAddress),
            ("From: <a@x_y>\r\n", From, BadAddress),
            ("From: ok@x.example\r\nFrom: garbage\r\n", From, NotAMailbox),
            // An encoded word is a display name, never an address (RFC 2047 5).
            (
                "From: =?UTF-8?Q?ceo=40corp.example?=\r\n",
                From,
                NotAMailbox,
            ),
            ("From: <a@x.example> <b@y.example>\r\n", From, BadAddress),
            ("From: <>\r\n", From, NoAddress),
            ("From: a@x.example\r\n\tb@y.example\r\n", From, BadAddress),
            (
                "From: a@x.example\r\nSender: a@x.example, b@y.example\r\n",
                Sender,
                NotOneMailbox,
            ),
            (
                "From: a@x.example\r\nSender: nobody\r\n",
                Sender,
                NotAMailbox,
            ),
        ];
        for (block, field, problem) in rows {
            let err = header_senders(block.as_bytes()).unwrap_err();
            assert_eq!(
                (err.field, err.problem),
                (*field, *problem),
                "{block:?}: {err}"
            );
        }
        let err = header_senders(b"From: garbage\r\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "From: header holds something that is not a mailbox: \"garbage\""
        );
    }

    #[test]
    fn counts_fields() {
        let s =
            header_senders(b"From: a@x.example\r\nFrom: b@x.example\r\nSender: c@x.example\r\n")
                .unwrap();
        assert_eq!(
            (s.from_fields, s.sender_fields, s.addresses.len()),
            (2, 1, 3)
        );
    }
}
