//! The spool envelope and the trace header of a message about to be committed.

use std::time::UNIX_EPOCH;

use super::{Backend, SessionFacts, Tx};
use crate::message::{self, Trace};
use crate::smtp::command::BodyType;
use crate::smtp::session::Envelope;
use crate::spool::{self, SpoolError, SpoolWriter};
use crate::upstream::wrap::{self, MAX_LINE};

impl Backend {
    /// The spool envelope and the header prefix (Received, and Date / Message-ID where
    /// missing) for a message about to be committed.
    pub(super) fn envelope(
        &self,
        tx: &Tx,
        writer: &SpoolWriter,
        envelope: &Envelope,
        facts: SessionFacts<'_>,
    ) -> (spool::Envelope, Vec<u8>) {
        let recipients: Vec<String> = envelope.rcpts.iter().map(|r| r.to.to_string()).collect();
        let now = self.rt.clock.wall();
        // RFC 6531 3.4: a sender rewritten to a UTF-8 address needs SMTPUTF8 upstream even
        // when the client's own envelope was ASCII.
        let smtputf8 = envelope.params.smtputf8
            || !tx.sender.is_ascii()
            || recipients.iter().any(|r| !r.is_ascii());
        let id = writer.id().to_string();
        let trace = Trace {
            helo: facts.helo.unwrap_or("unknown"),
            client_ip: self.ip,
            hostname: &self.rules.hostname,
            esmtp: facts.esmtp,
            tls: facts.tls,
            authenticated: facts.authenticated,
            utf8: smtputf8,
            queue_id: &id,
            single_rcpt: (recipients.len() == 1).then(|| recipients[0].as_str()),
            now,
        };
        let headers = &self.rules.headers;
        let prefix = message::prefix(
            &trace,
            headers.add_date && !tx.scan.has_date,
            headers.add_message_id && !tx.scan.has_message_id,
        );
        let recipients = recipients
            .into_iter()
            .zip(&envelope.rcpts)
            .map(|(address, rcpt)| spool::Recipient {
                address,
                status: spool::RcptStatus::Pending,
                // RFC 3461 4.1, 4.2: kept to act on and to relay.
                dsn: spool::RcptDsn {
                    notify: rcpt.params.notify,
                    orcpt: rcpt.params.orcpt.clone(),
                    remote: None,
                    relayed: false,
                    reported: false,
                },
            })
            .collect();
        let env = spool::Envelope {
            identity: self.label.clone(),
            smtputf8,
            body_8bit: envelope.params.body == Some(BodyType::EightBitMime) || tx.eight_bit,
            size: prefix.len() as u64 + writer.written(),
            // RFC 3461 4.3, 4.4.
            dsn: spool::MessageDsn {
                ret: envelope.params.ret,
                envid: envelope.params.envid.clone(),
                delay_warned: false,
            },
            ..spool::Envelope::new(
                writer.id().clone(),
                now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                tx.sender.clone(),
                recipients,
                self.listener.name.clone(),
                self.ip,
            )
        };
        (env, prefix)
    }
}

/// The octets wrapping will add to the message on the way out (RFC 5322 2.1.1: no line over
/// 998 octets), for the SIZE declared upstream (RFC 1870 5). The cheap path decides: the
/// DATA decoder measured the client's lines as it decoded them, a header rewrite measured
/// its own, and a prefix shorter than a line cannot hold a long one. Only a message with a
/// long line is read back and counted.
pub(super) fn wrap_octets(
    tx: &Tx,
    writer: &mut SpoolWriter,
    envelope: &Envelope,
    prefix: &[u8],
) -> Result<u64, SpoolError> {
    let long_prefix = prefix.len() > MAX_LINE && !wrap::fits(prefix);
    if envelope.longest_line <= MAX_LINE && !tx.head_long && !long_prefix {
        return Ok(0);
    }
    wrap::added_octets(prefix, |each| writer.read_back(each))
}
