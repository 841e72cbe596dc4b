//! From/Sender ownership: the header addresses a client puts in its message must be ones its
//! identity may send as, under the same sender rules as MAIL FROM.
//!
//! RFC 6409 8 lets an MSA check and fix the header it submits; checking the envelope alone
//! leaves the address recipients see unchecked (a client may send `MAIL FROM:<app@corp>`
//! with `From: ceo@corp`). Parsing is [`crate::message::senders`]'s job; this only decides.

use crate::message::senders::{HeaderSenders, SenderField};
use crate::policy::identity::SenderRules;

/// The first header address the identity does not own, for a reply such as
/// `550 5.7.1 From: header address x@y not owned by this identity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotOwned {
    /// The field it was in.
    pub field: SenderField,
    /// The address, as parsed.
    pub address: String,
}

/// RFC 5322 3.6.2: checks every From mailbox and every Sender mailbox, in header order,
/// against `rules`; the first one not allowed is the answer.
///
/// A message without From or Sender passes here: header addresses that do not exist
/// impersonate nobody (whether such a message is acceptable is a separate rule).
pub fn check_header_senders(rules: &SenderRules, senders: &HeaderSenders) -> Result<(), NotOwned> {
    match senders.addresses.iter().find(|a| !rules.allows(&a.address)) {
        Some(a) => Err(NotOwned {
            field: a.field,
            address: a.address.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::senders::header_senders;

    #[test]
    fn ownership_rows() {
        let rules = SenderRules::new(&["app1@corp.example", "@*.alerts.example"]);
        let rows: &[(&str, Option<(SenderField, &str)>)] = &[
            ("From: App1 <APP1@corp.example>\r\n", None),
            ("From: x@eu.alerts.example, y@us.alerts.example\r\n", None),
            ("Subject: no originator\r\n", None),
            (
                "From: app1@corp.example\r\nFrom: ceo@corp.example\r\n",
                Some((SenderField::From, "ceo@corp.example")),
            ),
            (
                "From: Team: app1@corp.example, ceo@corp.example;\r\n",
                Some((SenderField::From, "ceo@corp.example")),
            ),
            (
                "From: \"app1@corp.example\" <ceo@corp.example>\r\n",
                Some((SenderField::From, "ceo@corp.example")),
            ),
            (
                "From: app1@corp.example\r\nSender: x@alerts.example\r\n",
                Some((SenderField::Sender, "x@alerts.example")),
            ),
        ];
        for (block, want) in rows {
            let senders = header_senders(block.as_bytes()).unwrap();
            let got = check_header_senders(&rules, &senders).err();
            let got = got.as_ref().map(|n| (n.field, n.address.as_str()));
            assert_eq!(got, *want, "{block:?}");
        }
        let n = NotOwned {
            field: SenderField::Sender,
            address: "x@y".into(),
        };
        assert_eq!(n.field.name(), "Sender");
    }
}
