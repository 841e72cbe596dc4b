//! Sender rewriting of a buffered header section: pure functions that return a new section,
//! byte-identical to the old one outside the fields they replace or add.
//!
//! The From field(s) are replaced whole, continuation lines included (RFC 5322 2.2.3), and
//! matched case-insensitively (RFC 5322 1.2.2) with the obsolete `From :` form (RFC 5322
//! 4.5). The new field takes the place of the first From; any others are dropped (RFC 5322
//! 3.6: one From field). New fields are folded, so no line reaches 998 octets (RFC 5322
//! 2.1.1).
//!
//! A section without From is returned unchanged: RFC 6409 8 lists the fields an MSA may add
//! (Sender, Date, Message-ID) and From is not among them, and postern adds fields through
//! [`super::prefix`] rather than by editing the client's bytes.

use crate::message::fields::{self, Field};
use crate::message::phrase::mailbox_field;
use crate::message::senders::{Mailbox, field_mailboxes};

/// The section with its From field(s) replaced by one mailbox, `new_address`, keeping the
/// display name of the first From mailbox. Unchanged when there is no From, or when the
/// From is already exactly that one mailbox (a client DKIM signature then survives).
pub fn rewrite_from(block: &[u8], new_address: &str) -> Vec<u8> {
    replace_from(block, new_address, false)
}

/// The single-mailbox collapse, for upstream accounts that may send only as one mailbox
/// (Microsoft 365 refuses anything else with SendAsDenied): From becomes `mailbox`, keeping
/// the first display name, and the original From mailboxes (names kept) go into a new
/// `Reply-To:` field (RFC 5322 3.6.2: replies go there rather than to From) placed after it,
/// when the section has none and they are not just `mailbox` itself.
pub fn collapse(block: &[u8], mailbox: &str) -> Vec<u8> {
    replace_from(block, mailbox, true)
}

/// Shared by [`rewrite_from`] and [`collapse`]; `reply_to` asks for the Reply-To field.
fn replace_from(block: &[u8], address: &str, reply_to: bool) -> Vec<u8> {
    let all = fields::split(block);
    let froms: Vec<&Field> = all.iter().filter(|f| f.is(block, "from")).collect();
    let Some(first) = froms.first() else {
        return block.to_vec();
    };
    // Mailboxes that do not parse are dropped: the display name is a nicety, and a
    // Reply-To can only hold addresses.
    let originals: Vec<Mailbox> = froms
        .iter()
        .filter_map(|f| field_mailboxes(block, f).ok())
        .flatten()
        .collect();
    if froms.len() == 1 && originals.len() == 1 && same(&originals[0].1, address) {
        return block.to_vec();
    }
    let name = field_mailboxes(block, first)
        .ok()
        .and_then(|boxes| boxes.into_iter().next())
        .and_then(|(name, _)| name);
    let mut new = mailbox_field("From", &[(name.as_deref(), address)]);
    let has_reply_to = all.iter().any(|f| f.is(block, "reply-to"));
    let replies: Vec<(Option<&str>, &str)> = originals
        .iter()
        .filter(|(_, a)| !same(a, address))
        .map(|(n, a)| (n.as_deref(), a.as_str()))
        .collect();
    if reply_to && !has_reply_to && !replies.is_empty() {
        new.extend_from_slice(&mailbox_field("Reply-To", &replies));
    }
    let mut out = Vec::with_capacity(block.len() + new.len());
    for f in &all {
        if f.span == first.span {
            out.extend_from_slice(&new);
        } else if !f.is(block, "from") {
            out.extend_from_slice(block.get(f.span.clone()).unwrap_or_default());
        }
    }
    out
}

/// Addresses compare ASCII case-insensitively, as the sender rules do.
fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::senders::header_senders;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn rewrite_from_rows() {
        let to = "scans@corp.example";
        let rows: &[(&str, &str)] = &[
            (
                "Subject: s\r\nFrom: Scanner <scanner@localhost>\r\nTo: x@y.example\r\n",
                "Subject: s\r\nFrom: Scanner <scans@corp.example>\r\nTo: x@y.example\r\n",
            ),
            (
                "From: \"Big\r\n Printer\" <p@localhost>\r\n (comment)\r\nTo: x@y.example\r\n",
                // mail-parser keeps comments in the display name.
                "From: \"Big Printer (comment)\" <scans@corp.example>\r\nTo: x@y.example\r\n",
            ),
            (
                "From: a@x.example\r\nSubject: s\r\nfrom: b@y.example\r\n",
                "From: scans@corp.example\r\nSubject: s\r\n",
            ),
            (
                "X: 1\r\nFROM : \"Doe, John\" <j@x.example>\r\nY: 2\r\n",
                "X: 1\r\nFrom: \"Doe, John\" <scans@corp.example>\r\nY: 2\r\n",
            ),
            (
                "From: =?ISO-8859-1?Q?J=FCrgen?= <j@x.example>\r\n",
                "From: =?UTF-8?Q?J=C3=BCrgen?= <scans@corp.example>\r\n",
            ),
            ("From: garbage\r\n", "From: scans@corp.example\r\n"),
            ("From: a@x.example", "From: scans@corp.example\r\n"),
            // Unchanged: no From, or already exactly the one mailbox.
            (
                "Subject: no from\r\n\tfolded\r\n",
                "Subject: no from\r\n\tfolded\r\n",
            ),
            ("", ""),
            (
                "From: Scans <SCANS@corp.example>\r\n",
                "From: Scans <SCANS@corp.example>\r\n",
            ),
        ];
        for (block, want) in rows {
            assert_eq!(text(rewrite_from(block.as_bytes(), to)), *want, "{block:?}");
        }
    }

    #[test]
    fn collapse_rows() {
        let to = "relay@corp.example";
        let rows: &[(&str, &str)] = &[
            (
                "From: Alerts <alerts@corp.example>\r\nSubject: s\r\n",
                "From: Alerts <relay@corp.example>\r\nReply-To: Alerts <alerts@corp.example>\r\n\
                 Subject: s\r\n",
            ),
            (
                "From: a@corp.example\r\nreply-to: r@corp.example\r\n",
                "From: relay@corp.example\r\nreply-to: r@corp.example\r\n",
            ),
            (
                "Date: d\r\nFrom: a@x.example, B <b@y.example>\r\n",
                "Date: d\r\nFrom: relay@corp.example\r\nReply-To: a@x.example, B <b@y.example>\r\n",
            ),
            (
                "From: Relay <relay@corp.example>, other@x.example\r\n",
                "From: Relay <relay@corp.example>\r\nReply-To: other@x.example\r\n",
            ),
            (
                "From: a@x.example\r\nFrom: b@y.example\r\n",
                "From: relay@corp.example\r\nReply-To: a@x.example, b@y.example\r\n",
            ),
            (
                "From: Relay <relay@corp.example>\r\n",
                "From: Relay <relay@corp.example>\r\n",
            ),
            ("Subject: none\r\n", "Subject: none\r\n"),
        ];
        for (block, want) in rows {
            assert_eq!(text(collapse(block.as_bytes(), to)), *want, "{block:?}");
        }
    }

    /// Long names and many mailboxes fold; every line stays far under 998 octets, and the
    /// result parses back to the same mailboxes.
    #[test]
    fn long_fields_fold() {
        let name = "\u{e9}t\u{e9} ".repeat(2000);
        let many: Vec<String> = (0..200).map(|i| format!("user{i}@x.example")).collect();
        let block = format!("From: \"{name}\" <a@x.example>, {}\r\n", many.join(", "));
        let out = collapse(block.as_bytes(), "relay@corp.example");
        for line in out.split(|&b| b == b'\n') {
            assert!(line.len() <= 78, "{}", line.len());
        }
        let senders = header_senders(&out).unwrap();
        assert_eq!(senders.addresses[0].address, "relay@corp.example");
        assert_eq!(
            senders.addresses[0].display_name.as_deref(),
            Some(name.trim())
        );
        let reply_to: Vec<&str> = out
            .split(|&b| b == b'\n')
            .filter_map(|l| std::str::from_utf8(l).ok())
            .collect();
        assert!(reply_to.iter().any(|l| l.starts_with("Reply-To: ")));
    }
}
