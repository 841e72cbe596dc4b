//! RFC 5322 fix-ups over message bytes, all pure: the Received trace header postern adds
//! (RFC 5321 4.4), and Date / Message-ID for messages that lack them (RFC 6409 8.3).
//!
//! Bodies stream to the spool as they arrive, so postern never rewrites the client's
//! bytes: [`HeaderScan`] watches the header section go by, and the fields postern adds are
//! kept as a *prefix* that delivery sends before the body. Field order does not matter
//! for Date and Message-ID (RFC 5322 3.6), and trace fields belong at the top anyway.
//!
//! Sender checks and rewrites do need the client's header section: [`block::HeaderBlock`]
//! buffers it (bounded) as it streams in, [`senders`] reads the From and Sender addresses
//! out of it, and [`rewrite`] replaces From (and adds Reply-To) byte-exactly.
//!
//! # Layout
//! - [`block`]: the bounded header-section collector.
//! - `fields`: splits a header section into fields (private; shared by the others).
//! - [`senders`]: From/Sender addresses, through mail-parser.
//! - [`rewrite`]: From rewriting and the single-mailbox collapse.
//! - `phrase`: display names rendered as RFC 5322 phrases or RFC 2047 encoded words.

pub mod block;
mod fields;
mod phrase;
pub mod rewrite;
pub mod senders;

#[cfg(test)]
mod fuzz_tests;

use std::net::IpAddr;
use std::time::SystemTime;

/// Watches the header section of a message stream for the fields postern may add.
///
/// Memory is bounded: it keeps at most the first few bytes of the current line.
#[derive(Debug, Default, Clone)]
pub struct HeaderScan {
    /// Bytes of the current line seen so far, up to [`NAME_PEEK`].
    line: Vec<u8>,
    /// The current line is longer than the peek window.
    line_long: bool,
    /// The empty line ending the header section has been seen.
    done: bool,
    /// A `Date:` field was seen.
    pub has_date: bool,
    /// A `Message-ID:` field was seen.
    pub has_message_id: bool,
}

/// Enough of a line to recognise `message-id:` (11 octets) case-insensitively.
const NAME_PEEK: usize = 11;

impl HeaderScan {
    /// Feeds the next body bytes (CRLF line endings, as the DATA decoder emits them).
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        for &b in bytes {
            if b == b'\n' {
                if self.line.is_empty() || self.line == b"\r" {
                    self.done = true;
                    return;
                }
                self.end_line();
                continue;
            }
            if self.line.len() < NAME_PEEK + 1 {
                self.line.push(b);
            } else {
                self.line_long = true;
            }
        }
    }

    fn end_line(&mut self) {
        let line = self.line.to_ascii_lowercase();
        if line.starts_with(b"date:") {
            self.has_date = true;
        } else if line.starts_with(b"message-id:") {
            self.has_message_id = true;
        }
        self.line.clear();
        self.line_long = false;
    }
}

/// What the Received header says about the session (RFC 5321 4.4, RFC 3848 protocol names).
#[derive(Debug, Clone)]
pub struct Trace<'a> {
    /// The client's HELO/EHLO name.
    pub helo: &'a str,
    /// The client's address.
    pub client_ip: IpAddr,
    /// Our hostname.
    pub hostname: &'a str,
    /// EHLO (true) or HELO (false).
    pub esmtp: bool,
    /// TLS in use.
    pub tls: bool,
    /// AUTH in use.
    pub authenticated: bool,
    /// The transaction used SMTPUTF8 (RFC 6531).
    pub utf8: bool,
    /// The queue id.
    pub queue_id: &'a str,
    /// The single recipient, named only when there is exactly one (as Postfix does).
    pub single_rcpt: Option<&'a str>,
    /// When the message was received.
    pub now: SystemTime,
}

/// Builds the prefix postern puts before the client's bytes: Received, then Date and
/// Message-ID when asked for and missing.
pub fn prefix(trace: &Trace<'_>, add_date: bool, add_message_id: bool) -> Vec<u8> {
    let mut out = received(trace).into_bytes();
    if add_date {
        out.extend_from_slice(format!("Date: {}\r\n", rfc5322_date(trace.now)).as_bytes());
    }
    if add_message_id {
        let mut nonce = [0u8; 6];
        rand::fill(&mut nonce);
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let id = format!(
            "Message-ID: <{}.{nonce}@{}>\r\n",
            trace.queue_id, trace.hostname
        );
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// The `with` clause: RFC 3848 ESMTP plus S for TLS and A for AUTH, SMTP for HELO sessions;
/// RFC 6531 3.7.3 UTF8SMTP in place of ESMTP when the transaction used SMTPUTF8.
fn with_protocol(t: &Trace<'_>) -> &'static str {
    match (t.esmtp, t.utf8, t.tls, t.authenticated) {
        (false, ..) => "SMTP",
        (true, false, false, false) => "ESMTP",
        (true, false, true, false) => "ESMTPS",
        (true, false, false, true) => "ESMTPA",
        (true, false, true, true) => "ESMTPSA",
        (true, true, false, false) => "UTF8SMTP",
        (true, true, true, false) => "UTF8SMTPS",
        (true, true, false, true) => "UTF8SMTPA",
        (true, true, true, true) => "UTF8SMTPSA",
    }
}

/// The Received field, folded over lines of reasonable length.
fn received(t: &Trace<'_>) -> String {
    let with = with_protocol(t);
    let helo = sanitize(t.helo, t.utf8);
    let ip = match t.client_ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let rcpt = t
        .single_rcpt
        .map(|r| format!("\r\n\tfor <{}>", sanitize(r, t.utf8)))
        .unwrap_or_default();
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {} (postern) with {with} id {}{rcpt};\r\n\t{}\r\n",
        t.hostname,
        t.queue_id,
        rfc5322_date(t.now)
    )
}

/// Keeps client-supplied text from breaking the header: no control characters.
/// Makes client-supplied text safe for a header: no control characters (no header
/// injection), and outside SMTPUTF8 transactions ASCII only (RFC 5322 2.2; UTF-8 in headers
/// needs RFC 6532, which only SMTPUTF8 may carry).
fn sanitize(s: &str, utf8: bool) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || (!utf8 && !c.is_ascii()) {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// `Wed, 25 Nov 2026 05:57:23 +0000` (RFC 5322 3.3).
pub fn rfc5322_date(t: SystemTime) -> String {
    let http = httpdate::fmt_http_date(t);
    // httpdate gives the same layout with the obsolete zone "GMT"; RFC 5322 prefers +0000.
    match http.strip_suffix("GMT") {
        Some(head) => format!("{head}+0000"),
        None => http,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scan_all(msg: &[u8], split: usize) -> (bool, bool) {
        let mut s = HeaderScan::default();
        s.feed(&msg[..split]);
        s.feed(&msg[split..]);
        (s.has_date, s.has_message_id)
    }

    #[test]
    fn header_scan_at_every_split() {
        let rows: &[(&[u8], (bool, bool))] = &[
            (
                b"Subject: x\r\nDate: Mon\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n",
                (true, true),
            ),
            (b"Subject: x\r\n\r\nDate: in the body\r\n", (false, false)),
            (b"DATE: y\r\nmessage-id: <z>\r\n\r\n", (true, true)),
            (b"X-Date: y\r\nX-Message-ID: <z>\r\n\r\n", (false, false)),
            (
                b"Subject: folded\r\n Date: not a field\r\n\r\n",
                (false, false),
            ),
            (b"\r\nDate: body only\r\n", (false, false)),
            (b"Message-ID: <only@header>\r\n", (false, true)),
            (b"", (false, false)),
        ];
        for (msg, want) in rows {
            for split in 0..=msg.len() {
                assert_eq!(
                    scan_all(msg, split),
                    *want,
                    "{:?} split {split}",
                    String::from_utf8_lossy(msg)
                );
            }
        }
    }

    #[test]
    fn prefix_fields() {
        let trace = Trace {
            helo: "client.example\r\nX-Evil: 1",
            client_ip: "192.0.2.7".parse().unwrap(),
            hostname: "relay.example",
            esmtp: true,
            tls: true,
            authenticated: true,
            utf8: false,
            queue_id: "ABC123",
            single_rcpt: Some("rcpt@example.net"),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
        };
        let p = String::from_utf8(prefix(&trace, true, true)).unwrap();
        let expected_head = "Received: from client.example??X-Evil: 1 ([192.0.2.7])\r\n\tby relay.example (postern) with ESMTPSA id ABC123\r\n\tfor <rcpt@example.net>;\r\n\tWed, 18 Nov 2026 ";
        assert!(p.starts_with(expected_head), "{p}");
        assert!(p.contains(" +0000\r\nDate: Wed, 18 Nov 2026 "), "{p}");
        assert!(p.contains("\r\nMessage-ID: <ABC123."), "{p}");
        assert!(p.ends_with("@relay.example>\r\n"), "{p}");
        let bare = String::from_utf8(prefix(&trace, false, false)).unwrap();
        assert_eq!(bare.matches("\r\n").count(), 4);
        assert!(!bare.contains("Date:") && !bare.contains("Message-ID"));
    }

    /// RFC 3848 and RFC 6531 3.7.3: every combination of HELO/EHLO, SMTPUTF8, TLS and AUTH.
    #[test]
    fn with_protocol_names() {
        let rows = [
            (false, false, true, true, "SMTP"),
            (true, false, false, false, "ESMTP"),
            (true, false, true, false, "ESMTPS"),
            (true, false, false, true, "ESMTPA"),
            (true, false, true, true, "ESMTPSA"),
            (true, true, false, false, "UTF8SMTP"),
            (true, true, true, false, "UTF8SMTPS"),
            (true, true, false, true, "UTF8SMTPA"),
            (true, true, true, true, "UTF8SMTPSA"),
        ];
        for (esmtp, utf8, tls, authenticated, want) in rows {
            let t = Trace {
                helo: "c",
                client_ip: "192.0.2.7".parse().unwrap(),
                hostname: "r",
                esmtp,
                tls,
                authenticated,
                utf8,
                queue_id: "Q",
                single_rcpt: None,
                now: SystemTime::UNIX_EPOCH,
            };
            assert_eq!(with_protocol(&t), want);
        }
    }

    /// Client text in the Received field: control characters never pass; UTF-8 only in
    /// SMTPUTF8 transactions.
    #[test]
    fn sanitize_rows() {
        let rows = [
            ("client.example", false, "client.example"),
            ("a\r\nX-Evil: 1", true, "a??X-Evil: 1"),
            ("b\u{e4}cker.example", false, "b?cker.example"),
            ("b\u{e4}cker.example", true, "b\u{e4}cker.example"),
            ("tab\there\u{7f}", true, "tab?here?"),
        ];
        for (input, utf8, want) in rows {
            assert_eq!(sanitize(input, utf8), want, "{input:?} utf8={utf8}");
        }
    }
}
