//! Delivery status notifications as bytes (pure: no I/O, the time is passed in).
//!
//! RFC 3464 (the message/delivery-status report), RFC 6522 (multipart/report), RFC 3461 6
//! (what a DSN says about each recipient), RFC 3834 (Auto-Submitted), RFC 6533 (utf-8
//! address types). The returned original (its header section as text/rfc822-headers, or
//! with RET=FULL the whole message as message/rfc822) is not built here: the caller streams
//! it between [`Report::head`] and [`Report::tail`], so a large message is never held in
//! memory.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::message::rfc5322_date;
use crate::smtp::dsn::{Orcpt, xtext_display};

/// Longest diagnostic text kept in a report field; RFC 5322 2.1.1 caps a line at 998.
const DIAGNOSTIC_MAX: usize = 800;

/// What the notification reports (RFC 3464 2.3.3 Action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The recipient failed for good.
    Failed,
    /// Delivery is late and still being tried (`queue.delay_warning`).
    Delayed,
    /// Delivered to an upstream that does not offer DSN: no further notice will come.
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient the notification is about.
#[derive(Debug, Clone)]
pub struct RcptReport<'a> {
    /// The forward-path (Final-Recipient).
    pub address: &'a str,
    /// RFC 3461 ORCPT, if the client gave one (Original-Recipient).
    pub orcpt: Option<&'a Orcpt>,
    /// The reply or local reason that failed (or last deferred) it.
    pub reply: &'a str,
    /// The host whose reply that was (Remote-MTA), if any.
    pub remote_mta: Option<&'a str>,
}

/// The facts a notification is built from.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// Failed or delayed.
    pub action: Action,
    /// Our hostname: Reporting-MTA, From, Message-ID.
    pub hostname: &'a str,
    /// The original envelope sender, who gets the notification.
    pub to: &'a str,
    /// The original message's queue id.
    pub queue_id: &'a str,
    /// The notification's own queue id (its Message-ID and boundary).
    pub own_id: &'a str,
    /// RFC 3461 ENVID, xtext.
    pub envid: Option<&'a str>,
    /// When the original was received, unix seconds.
    pub arrival_unix: u64,
    /// Now.
    pub now: SystemTime,
    /// The recipients reported on.
    pub rcpts: Vec<RcptReport<'a>>,
    /// The whole message is returned (RET=FULL), not only its header section.
    pub full: bool,
    /// The returned original has 8-bit octets (RFC 6152 BODY=8BITMIME, or SMTPUTF8
    /// headers): its part says `Content-Transfer-Encoding: 8bit` (RFC 2045 6.1, RFC 2046
    /// 5.2.1; the default, 7bit, would be false).
    pub eight_bit: bool,
}

impl Report<'_> {
    /// The MIME boundary: `=_` cannot occur in quoted-printable or base64 text (RFC 2045
    /// 6.7), and the ids make it unique to this notification.
    fn boundary(&self) -> String {
        format!("=_postern_{}_{}", self.own_id, self.queue_id)
    }

    /// Everything up to the returned original's own bytes: header, human-readable part,
    /// delivery-status part, and the third part's heading.
    pub fn head(&self) -> String {
        let b = self.boundary();
        let subject = match self.action {
            Action::Failed => "Undelivered Mail Returned to Sender",
            Action::Delayed => "Delayed Mail (still being retried)",
            Action::Relayed => "Successful Mail Delivery Report",
        };
        let third = match (self.full, self.eight_bit) {
            (true, false) => {
                "Content-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n"
            }
            (true, true) => {
                "Content-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n\
                 Content-Transfer-Encoding: 8bit\r\n"
            }
            (false, false) => {
                "Content-Description: Undelivered Message Headers\r\n\
                 Content-Type: text/rfc822-headers\r\n"
            }
            (false, true) => {
                "Content-Description: Undelivered Message Headers\r\n\
                 Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 8bit\r\n"
            }
        };
        format!(
            "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
             To: <{to}>\r\n\
             Subject: {subject}\r\n\
             Date: {date}\r\n\
             Message-ID: <{own}@{host}>\r\n\
             Auto-Submitted: auto-replied\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status;\r\n\
             \tboundary=\"{b}\"\r\n\
             \r\n\
             This is a MIME-encapsulated message.\r\n\
             \r\n\
             --{b}\r\n\
             Content-Description: Notification\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             \r\n\
             {human}\
             \r\n\
             --{b}\r\n\
             Content-Description: Delivery report\r\n\
             Content-Type: message/delivery-status\r\n\
             \r\n\
             {status}\
             --{b}\r\n\
             {third}\
             \r\n",
            host = self.hostname,
            to = self.to,
            date = rfc5322_date(self.now),
            own = self.own_id,
            human = self.human(),
            status = self.delivery_status(),
        )
    }

    /// The closing boundary; `ends_in_crlf`: whether the returned original ended in CRLF
    /// (if not, one is added so the boundary starts a line, RFC 2046 5.1.1).
    pub fn tail(&self, ends_in_crlf: bool) -> String {
        let eol = if ends_in_crlf { "" } else { "\r\n" };
        format!("{eol}\r\n--{}--\r\n", self.boundary())
    }

    /// The human-readable first part (RFC 6522 3).
    fn human(&self) -> String {
        let intro = match self.action {
            Action::Failed => {
                "Your message could not be delivered to one or more recipients.\r\n\
                 It is attached below.\r\n"
            }
            Action::Delayed => {
                "Your message could not be delivered yet to one or more recipients.\r\n\
                 Delivery is still being attempted; you need not send it again.\r\n"
            }
            Action::Relayed => {
                "Your message was passed on to the next system for the recipients below,\r\n\
                 which does not send delivery notifications: no further notice will come.\r\n"
            }
        };
        let mut out = format!(
            "This is the mail system at host {}.\r\n\r\n{intro}\r\n",
            self.hostname
        );
        for r in &self.rcpts {
            out.push_str(&format!("<{}>: {}\r\n", r.address, diagnostic(r.reply)));
        }
        out
    }

    /// The message/delivery-status part (RFC 3464 2.1): per-message fields, then one block
    /// per recipient, each ended by a blank line.
    fn delivery_status(&self) -> String {
        let mut out = format!(
            "Reporting-MTA: dns; {}\r\nX-Postern-Queue-ID: {}\r\n",
            self.hostname, self.queue_id
        );
        // RFC 3464 2.2.1: the ENVID, decoded from xtext.
        if let Some(envid) = self.envid {
            out.push_str(&format!(
                "Original-Envelope-Id: {}\r\n",
                xtext_display(envid)
            ));
        }
        let arrival = UNIX_EPOCH + Duration::from_secs(self.arrival_unix);
        out.push_str(&format!("Arrival-Date: {}\r\n\r\n", rfc5322_date(arrival)));
        for r in &self.rcpts {
            out.push_str(&self.recipient(r));
        }
        out
    }

    /// RFC 3464 2.3: one recipient's fields.
    fn recipient(&self, r: &RcptReport<'_>) -> String {
        // RFC 6533 3: a UTF-8 address is of type utf-8.
        let addr_type = if r.address.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        let mut out = format!("Final-Recipient: {addr_type}; {}\r\n", r.address);
        if let Some(o) = r.orcpt {
            out.push_str(&format!(
                "Original-Recipient: {}; {}\r\n",
                o.addr_type,
                xtext_display(&o.xtext)
            ));
        }
        out.push_str(&format!(
            "Action: {}\r\nStatus: {}\r\n",
            self.action.as_str(),
            status(self.action, r.reply)
        ));
        if let Some(mta) = r.remote_mta {
            out.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
        }
        // RFC 3464 2.3.6: a reply from an SMTP server is of type smtp; a local reason
        // (expiry, no upstream could take it) of an extension type, as Postfix's X-Postfix.
        let diagnostic_type = match r.remote_mta {
            Some(_) => "smtp",
            None => "X-Postern",
        };
        out.push_str(&format!(
            "Diagnostic-Code: {diagnostic_type}; {}\r\n",
            diagnostic(r.reply)
        ));
        out.push_str(&format!(
            "Last-Attempt-Date: {}\r\n\r\n",
            rfc5322_date(self.now)
        ));
        out
    }
}

/// The RFC 3463 status of a recipient: the enhanced code of its reply when it has one of
/// the right class, else the class alone (`5.0.0`, `4.0.0`); an expiry is 5.4.7 (delivery
/// time expired).
fn status(action: Action, reply: &str) -> String {
    let class = match action {
        Action::Failed => '5',
        Action::Delayed => '4',
        Action::Relayed => '2',
    };
    if reply.contains("queue.max_age") {
        return "5.4.7".into();
    }
    let enhanced = reply.split(' ').nth(1).filter(|code| {
        let parts: Vec<&str> = code.split('.').collect();
        parts.len() == 3
            && code.starts_with(class)
            && parts
                .iter()
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    });
    enhanced.map_or_else(|| format!("{class}.0.0"), str::to_owned)
}

/// A reply made safe for one header line: control characters become spaces (no field
/// injection), and it is cut to [`DIAGNOSTIC_MAX`] octets on a character boundary.
fn diagnostic(reply: &str) -> String {
    let mut out: String = reply
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > DIAGNOSTIC_MAX {
        let mut cut = DIAGNOSTIC_MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn status_rows() {
        let rows = [
            (Action::Failed, "550 5.1.1 no such user", "5.1.1"),
            (Action::Failed, "554 no enhanced code", "5.0.0"),
            (Action::Failed, "550 4.1.1 wrong class", "5.0.0"),
            (
                Action::Failed,
                "message expired in the queue (queue.max_age)",
                "5.4.7",
            ),
            (Action::Delayed, "451 4.3.0 try later", "4.3.0"),
            (Action::Delayed, "connection refused", "4.0.0"),
            (Action::Failed, "550 5.1234.1 odd", "5.0.0"),
            (Action::Relayed, "250 2.0.0 Ok: queued as 4F", "2.0.0"),
            (Action::Relayed, "250 Ok", "2.0.0"),
        ];
        for (action, reply, want) in rows {
            assert_eq!(status(action, reply), want, "{reply}");
        }
    }

    #[test]
    fn diagnostics_cannot_inject_fields() {
        assert_eq!(diagnostic("550 a\r\nX-Evil: 1"), "550 a  X-Evil: 1");
        let long = "é".repeat(1000);
        let cut = diagnostic(&long);
        assert!(cut.len() <= DIAGNOSTIC_MAX && cut.chars().all(|c| c == 'é'));
    }

    /// The whole head and tail, byte for byte, for a failure with every optional field.
    #[test]
    fn failed_report_bytes() {
        let orcpt = Orcpt {
            addr_type: "rfc822".into(),
            xtext: "Bob+2Bx@example.org".into(),
        };
        let report = Report {
            action: Action::Failed,
            hostname: "relay.example",
            to: "alice@example.com",
            queue_id: "0000000000000001",
            own_id: "0000000000000002",
            envid: Some("QQ+2B1"),
            arrival_unix: 1_700_000_000,
            now: UNIX_EPOCH + Duration::from_secs(1_700_000_060),
            rcpts: vec![
                RcptReport {
                    address: "bob@example.org",
                    orcpt: Some(&orcpt),
                    reply: "550 5.1.1 no such user",
                    remote_mta: Some("mx.example.org"),
                },
                RcptReport {
                    address: "carol@example.org",
                    orcpt: None,
                    reply: "message expired in the queue (queue.max_age)",
                    remote_mta: None,
                },
            ],
            full: false,
            eight_bit: false,
        };
        let b = "=_postern_0000000000000002_0000000000000001";
        let want = format!(
            "From: Mail Delivery System <MAILER-DAEMON@relay.example>\r\n\
             To: <alice@example.com>\r\n\
             Subject: Undelivered Mail Returned to Sender\r\n\
             Date: Tue, 14 Nov 2023 22:14:20 +0000\r\n\
             Message-ID: <0000000000000002@relay.example>\r\n\
             Auto-Submitted: auto-replied\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status;\r\n\
             \tboundary=\"{b}\"\r\n\
             \r\n\
             This is a MIME-encapsulated message.\r\n\
             \r\n\
             --{b}\r\n\
             Content-Description: Notification\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             \r\n\
             This is the mail system at host relay.example.\r\n\
             \r\n\
             Your message could not be delivered to one or more recipients.\r\n\
             It is attached below.\r\n\
             \r\n\
             <bob@example.org>: 550 5.1.1 no such user\r\n\
             <carol@example.org>: message expired in the queue (queue.max_age)\r\n\
             \r\n\
             --{b}\r\n\
             Content-Description: Delivery report\r\n\
             Content-Type: message/delivery-status\r\n\
             \r\n\
             Reporting-MTA: dns; relay.example\r\n\
             X-Postern-Queue-ID: 0000000000000001\r\n\
             Original-Envelope-Id: QQ+1\r\n\
             Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
             \r\n\
             Final-Recipient: rfc822; bob@example.org\r\n\
             Original-Recipient: rfc822; Bob+x@example.org\r\n\
             Action: failed\r\n\
             Status: 5.1.1\r\n\
             Remote-MTA: dns; mx.example.org\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\
             Last-Attempt-Date: Tue, 14 Nov 2023 22:14:20 +0000\r\n\
             \r\n\
             Final-Recipient: rfc822; carol@example.org\r\n\
             Action: failed\r\n\
             Status: 5.4.7\r\n\
             Diagnostic-Code: X-Postern; message expired in the queue (queue.max_age)\r\n\
             Last-Attempt-Date: Tue, 14 Nov 2023 22:14:20 +0000\r\n\
             \r\n\
             --{b}\r\n\
             Content-Description: Undelivered Message Headers\r\n\
             Content-Type: text/rfc822-headers\r\n\
             \r\n"
        );
        assert_eq!(report.head(), want);
        // A returned original with 8-bit octets says so (RFC 2045 6.1: 7bit otherwise).
        let eight = Report {
            full: true,
            eight_bit: true,
            ..report.clone()
        };
        assert!(eight.head().ends_with(
            "Content-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n"
        ));
        assert_eq!(report.tail(true), format!("\r\n--{b}--\r\n"));
        assert_eq!(report.tail(false), format!("\r\n\r\n--{b}--\r\n"));
    }
}
