//! The header stage of one message: where the identity's `sender_check` is `header`, or its
//! `rewrite_mode` rewrites `From:`, the header section is held back (up to
//! `limits.max_header_size`) until it is complete, examined, perhaps rewritten, and only
//! then written to the spool ahead of the body. Other messages stream straight through.
//!
//! RFC 6409 8 lets a submission server check and fix what it submits; the body and every
//! other header field stay byte for byte as the client sent them.

use crate::config::schema::RewriteMode;
use crate::message::block::{Collect, HeaderBlock};
use crate::message::rewrite;
use crate::message::senders::header_senders;
use crate::policy::Rewrite;
use crate::policy::headers::check_header_senders;
use crate::policy::identity::SenderRules;
use crate::reason::Reason;
use crate::smtp::reply::Reply;

/// What happened to a chunk of body bytes fed to the stage.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed<'a> {
    /// Held back: the header section is not complete yet.
    Held,
    /// The header section is over the bound: refuse the message, write nothing more.
    TooLarge,
    /// Complete: write `head` (the fields, maybe rewritten, and the empty line), then
    /// `rest` (the body bytes of this chunk); or refuse the message.
    Complete {
        /// The header section to store, or the refusal.
        head: Result<Vec<u8>, (Reply, Reason)>,
        /// Body bytes of the chunk after the header section.
        rest: &'a [u8],
    },
}

/// One message's header stage.
#[derive(Debug)]
pub struct HeaderStage {
    block: HeaderBlock,
    /// Sender patterns the From/Sender addresses must match, when checked.
    check: Option<SenderRules>,
    /// The address From becomes, and how.
    rewrite: Option<(String, RewriteMode)>,
}

impl HeaderStage {
    /// The stage a message needs, or `None` when it can stream straight through: neither a
    /// header check nor a header rewrite applies.
    pub fn plan(
        check: Option<&SenderRules>,
        rewrite: Option<Rewrite<'_>>,
        limit: usize,
    ) -> Option<HeaderStage> {
        let rewrite = rewrite
            .filter(|r| r.mode != RewriteMode::Envelope)
            .map(|r| (r.address.to_owned(), r.mode));
        if check.is_none() && rewrite.is_none() {
            return None;
        }
        Some(HeaderStage {
            block: HeaderBlock::new(limit),
            check: check.cloned(),
            rewrite,
        })
    }

    /// Feeds body bytes as they arrive.
    pub fn feed<'a>(&mut self, chunk: &'a [u8]) -> Fed<'a> {
        match self.block.feed(chunk) {
            Collect::Incomplete => Fed::Held,
            Collect::TooLarge => Fed::TooLarge,
            Collect::Complete { body_start } => Fed::Complete {
                head: self.examine(),
                rest: chunk.get(body_start..).unwrap_or_default(),
            },
        }
    }

    /// The message ended: a header section still held is complete now (a message with no
    /// body).
    pub fn finish(&mut self) -> Fed<'static> {
        match self.block.finish() {
            Collect::Incomplete | Collect::TooLarge => Fed::TooLarge,
            Collect::Complete { .. } => Fed::Complete {
                head: self.examine(),
                rest: &[],
            },
        }
    }

    /// Checks the From/Sender addresses, then rewrites From as configured.
    fn examine(&self) -> Result<Vec<u8>, (Reply, Reason)> {
        let fields = self.block.fields();
        if let Some(rules) = &self.check {
            let refuse = |field: &str, address: &str| {
                let reply = Reply::header_sender_not_allowed(field, address);
                (reply, Reason::HeaderSenderNotOwned)
            };
            let senders = header_senders(fields).map_err(|e| {
                // The reply names the field; the log says what is wrong with it.
                tracing::info!(problem = %e, "header sender cannot be checked");
                refuse(e.field.name(), &e.text)
            })?;
            check_header_senders(rules, &senders)
                .map_err(|e| refuse(e.field.name(), &e.address))?;
        }
        let mut head = match &self.rewrite {
            Some((address, RewriteMode::Collapse)) => rewrite::collapse(fields, address),
            Some((address, _)) => rewrite::rewrite_from(fields, address),
            None => fields.to_vec(),
        };
        head.extend_from_slice(self.block.separator());
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(check: Option<&[&str]>, rewrite: Option<(&str, RewriteMode)>) -> HeaderStage {
        let rules = check.map(SenderRules::new);
        let rewrite = rewrite.map(|(address, mode)| Rewrite { address, mode });
        HeaderStage::plan(rules.as_ref(), rewrite, 1024).unwrap()
    }

    #[test]
    fn no_stage_without_a_check_or_header_rewrite() {
        let envelope_only = Rewrite {
            address: "a@b.example",
            mode: RewriteMode::Envelope,
        };
        assert!(HeaderStage::plan(None, Some(envelope_only), 1024).is_none());
        assert!(HeaderStage::plan(None, None, 1024).is_none());
    }

    #[test]
    fn checked_and_rewritten_across_chunks() {
        let mut s = stage(
            Some(&["@corp.example"]),
            Some(("scans@corp.example", RewriteMode::Header)),
        );
        assert_eq!(s.feed(b"From: \"Scanner\" <scan"), Fed::Held);
        let Fed::Complete { head, rest } =
            s.feed(b"ner@corp.example>\r\nSubject: x\r\n\r\nbody\r\n")
        else {
            panic!("not complete");
        };
        assert_eq!(rest, b"body\r\n");
        assert_eq!(
            head.unwrap(),
            b"From: Scanner <scans@corp.example>\r\nSubject: x\r\n\r\n".to_vec()
        );
    }

    /// The check reads the client's own From, before the rewrite replaces it: a device's
    /// `scanner@localhost` passes `@localhost` and is then rewritten; a foreign From is
    /// refused even though the rewrite would have replaced it.
    #[test]
    fn checked_before_rewriting() {
        let rewrite = Some(("scans@corp.example", RewriteMode::Header));
        let mut s = stage(Some(&["@localhost"]), rewrite);
        let Fed::Complete { head, .. } = s.feed(b"From: scanner@localhost\r\n\r\n") else {
            panic!("not complete");
        };
        assert_eq!(head.unwrap(), b"From: scans@corp.example\r\n\r\n".to_vec());
        let mut s = stage(Some(&["@localhost"]), rewrite);
        let Fed::Complete { head, .. } = s.feed(b"From: ceo@other.example\r\n\r\n") else {
            panic!("not complete");
        };
        assert_eq!(head.unwrap_err().1, Reason::HeaderSenderNotOwned);
    }

    #[test]
    fn refusals() {
        let mut s = stage(Some(&["@corp.example"]), None);
        let Fed::Complete { head, .. } = s.feed(b"From: ceo@other.example\r\n\r\n") else {
            panic!("not complete");
        };
        let (reply, reason) = head.unwrap_err();
        assert_eq!(reason, Reason::HeaderSenderNotOwned);
        assert_eq!(
            reply.to_string(),
            "550 5.7.1 Error: From: header address <ceo@other.example> not owned by user"
        );
        let mut big = stage(Some(&["*"]), None);
        let line = format!("X-Pad: {}\r\n", "a".repeat(200));
        let mut fed = Fed::Held;
        for _ in 0..10 {
            fed = big.feed(line.as_bytes());
            if fed != Fed::Held {
                break;
            }
        }
        assert_eq!(fed, Fed::TooLarge);
    }

    #[test]
    fn headers_only_message_completes_at_the_end() {
        let mut s = stage(Some(&["*"]), None);
        assert_eq!(s.feed(b"From: a@b.example\r\nSubject: x\r\n"), Fed::Held);
        let Fed::Complete { head, rest } = s.finish() else {
            panic!("not complete");
        };
        assert!(rest.is_empty());
        assert_eq!(
            head.unwrap(),
            b"From: a@b.example\r\nSubject: x\r\n".to_vec()
        );
    }
}
