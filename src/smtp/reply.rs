//! SMTP replies and the catalogue of every reply postern sends.
//!
//! Every reply the engine or the shell writes is built here, so texts and
//! codes are reviewed in one place (STYLE.md habit 1). Texts follow Postfix's
//! tone. No constructor ever copies client bytes into a text unsanitised:
//! [`Reply::new`] replaces CR with a space, so a reply can never inject an extra
//! line or terminate early.

use std::borrow::Cow;
use std::fmt;

/// An RFC 3463 enhanced status code `class.subject.detail`, e.g. `2.1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Enhanced {
    /// 2 (success), 4 (persistent transient) or 5 (permanent).
    pub class: u8,
    /// Subject, e.g. 5 for "mail delivery protocol status".
    pub subject: u16,
    /// Detail within the subject.
    pub detail: u16,
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced code and a text.
///
/// A text holding `'\n'` is sent as a multiline reply (RFC 5321 4.2.1), each
/// line carrying the code and the enhanced code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<Enhanced>,
    text: Cow<'static, str>,
}

/// Shorthand for the catalogue: a reply with an enhanced code and a static text.
const fn r(code: u16, e: (u8, u16, u16), text: &'static str) -> Reply {
    Reply {
        code,
        enhanced: Some(Enhanced {
            class: e.0,
            subject: e.1,
            detail: e.2,
        }),
        text: Cow::Borrowed(text),
    }
}

impl Reply {
    /// A reply with an enhanced code (RFC 2034 3: every reply except the
    /// greeting, the EHLO/HELO answer and intermediate 3xx replies carries one).
    ///
    /// CR characters in `text` become spaces: a reply text must never end a
    /// line early. `'\n'` separates the lines of a multiline reply.
    pub fn new(code: u16, enhanced: (u8, u16, u16), text: impl Into<Cow<'static, str>>) -> Reply {
        let mut reply = Reply::plain(code, text);
        reply.enhanced = Some(Enhanced {
            class: enhanced.0,
            subject: enhanced.1,
            detail: enhanced.2,
        });
        reply
    }

    /// A reply without an enhanced code (greeting, EHLO/HELO, 334, 354).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Reply {
        let text = text.into();
        let text = if text.contains('\r') {
            Cow::Owned(text.replace('\r', " "))
        } else {
            text
        };
        Reply {
            code,
            enhanced: None,
            text,
        }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if the reply carries one.
    pub fn enhanced(&self) -> Option<Enhanced> {
        self.enhanced
    }

    /// The reply text; lines of a multiline reply are joined by `'\n'`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True for 4xx and 5xx replies.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// True for 5xx replies: the client must not retry as is.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Appends the wire form, e.g. `250 2.1.0 Ok\r\n`, to `out`.
    ///
    /// RFC 5321 4.2.1: every line but the last uses `code-`; RFC 2034 3: the
    /// enhanced code is repeated on every line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            let head = match self.enhanced {
                Some(e) => format!("{}{}{} ", self.code, sep, e),
                None => format!("{}{}", self.code, sep),
            };
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    // ---- Catalogue: connection level -------------------------------------

    /// 220 greeting. RFC 5321 4.3.1; no enhanced code (RFC 2034 3).
    pub fn greeting(host: &str) -> Reply {
        Reply::plain(220, format!("{host} ESMTP postern"))
    }

    /// 221 answer to QUIT.
    pub fn bye() -> Reply {
        r(221, (2, 0, 0), "Bye")
    }

    /// 250 answer to HELO: just our name, no enhanced code (RFC 2034 3).
    pub fn helo(host: &str) -> Reply {
        Reply::plain(250, host.to_owned())
    }

    /// 421 after the command or DATA timeout (RFC 5321 4.5.3.2).
    pub fn timeout(host: &str) -> Reply {
        Reply::new(421, (4, 4, 2), format!("{host} Error: timeout exceeded"))
    }

    /// 421 sent to every session while the server drains.
    pub fn shutting_down(host: &str) -> Reply {
        Reply::new(421, (4, 3, 2), format!("{host} Service shutting down"))
    }

    /// 421 to a connection accepted only to be turned away: the process is out of file
    /// descriptors (see `server::fdlimit`).
    pub fn out_of_descriptors(host: &str) -> Reply {
        Reply::new(
            421,
            (4, 3, 2),
            format!("{host} Error: too many open files, try again later"),
        )
    }

    /// 421 after `max_errors` client errors.
    pub fn too_many_errors(host: &str) -> Reply {
        Reply::new(421, (4, 7, 0), format!("{host} Error: too many errors"))
    }

    /// 421 for an engine logic error: the session closes rather than panics.
    pub fn internal_error(host: &str) -> Reply {
        Reply::new(421, (4, 3, 0), format!("{host} Error: internal error"))
    }

    /// 421 for an HTTP request sent to the SMTP port (Postfix does the same).
    pub fn http_refused(host: &str) -> Reply {
        Reply::new(
            421,
            (4, 7, 0),
            format!("{host} Error: HTTP requests not accepted"),
        )
    }

    // ---- Catalogue: generic command results -------------------------------

    /// 250 2.0.0 Ok (RSET, NOOP).
    pub fn ok() -> Reply {
        r(250, (2, 0, 0), "Ok")
    }

    /// 214 answer to HELP.
    pub fn help() -> Reply {
        r(214, (2, 0, 0), "See https://www.rfc-editor.org/rfc/rfc5321")
    }

    /// 252 answer to VRFY (RFC 5321 3.5.3: do not reveal mailboxes).
    pub fn vrfy() -> Reply {
        r(
            252,
            (2, 5, 2),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    /// 500 unknown verb.
    pub fn unrecognized() -> Reply {
        r(500, (5, 5, 2), "Error: command not recognized")
    }

    /// 500 command line longer than the cap (RFC 5321 4.5.3.1.4).
    pub fn line_too_long() -> Reply {
        r(500, (5, 5, 2), "Error: line too long")
    }

    /// 500 bare CR inside a command line.
    pub fn bare_cr_command() -> Reply {
        r(500, (5, 5, 2), "Error: bare <CR> received")
    }

    /// 501 command line that is not UTF-8.
    pub fn invalid_utf8() -> Reply {
        r(501, (5, 5, 2), "Error: invalid UTF-8 in command")
    }

    /// 502 for EXPN and commands postern does not implement.
    pub fn not_implemented() -> Reply {
        r(502, (5, 5, 1), "Error: command not implemented")
    }

    /// 501 EHLO without a domain.
    pub fn ehlo_syntax() -> Reply {
        r(501, (5, 5, 4), "Syntax: EHLO hostname")
    }

    /// 501 HELO without a domain.
    pub fn helo_syntax() -> Reply {
        r(501, (5, 5, 4), "Syntax: HELO hostname")
    }

    /// 501 arguments on a verb that takes none (DATA, STARTTLS, RSET, QUIT).
    pub fn no_params_allowed() -> Reply {
        r(501, (5, 5, 4), "Syntax error: no parameters allowed")
    }

    /// 503 any transaction command before EHLO/HELO.
    pub fn need_helo() -> Reply {
        r(503, (5, 5, 1), "Error: send HELO/EHLO first")
    }

    // ---- Catalogue: MAIL / RCPT / DATA ----------------------------------

    /// 250 MAIL accepted.
    pub fn mail_ok() -> Reply {
        r(250, (2, 1, 0), "Ok")
    }

    /// 250 RCPT accepted.
    pub fn rcpt_ok() -> Reply {
        r(250, (2, 1, 5), "Ok")
    }

    /// 354 go ahead; intermediate, no enhanced code.
    pub fn start_data() -> Reply {
        Reply::plain(354, "End data with <CR><LF>.<CR><LF>")
    }

    /// 250 message stored durably in the spool under `id`.
    pub fn queued(id: &str) -> Reply {
        // The id comes from the spool, but strip line breaks anyway.
        let id: String = id.chars().filter(|c| *c != '\n' && *c != '\r').collect();
        Reply::new(250, (2, 0, 0), format!("Ok: queued as {id}"))
    }

    /// 501 MAIL line without `FROM:<path>`.
    pub fn mail_syntax() -> Reply {
        r(501, (5, 5, 4), "Syntax: MAIL FROM:<address>")
    }

    /// 501 RCPT line without `TO:<path>`.
    pub fn rcpt_syntax() -> Reply {
        r(501, (5, 5, 4), "Syntax: RCPT TO:<address>")
    }

    /// 501 reverse path that fails RFC 5321 4.1.2 syntax or length caps.
    pub fn bad_sender() -> Reply {
        r(501, (5, 1, 7), "Bad sender address syntax")
    }

    /// 501 forward path that fails RFC 5321 4.1.2 syntax or length caps.
    pub fn bad_recipient() -> Reply {
        r(501, (5, 1, 3), "Bad recipient address syntax")
    }

    /// 555 MAIL/RCPT parameter postern does not offer (RFC 5321 4.1.1.11).
    pub fn unsupported_param() -> Reply {
        r(555, (5, 5, 4), "Unsupported parameter")
    }

    /// 501 the same parameter twice.
    pub fn duplicate_param() -> Reply {
        r(501, (5, 5, 4), "Error: duplicate parameter")
    }

    /// 501 a known parameter with a value that does not parse.
    pub fn bad_param_value() -> Reply {
        r(501, (5, 5, 4), "Error: bad parameter value")
    }

    /// 552 SIZE= above the advertised limit (RFC 1870 6).
    pub fn size_exceeded() -> Reply {
        r(552, (5, 3, 4), "Message size exceeds fixed limit")
    }

    /// 552 DATA grew past the limit (RFC 1870 6.3).
    pub fn message_too_big() -> Reply {
        r(552, (5, 3, 4), "Error: message file too big")
    }

    /// 550 bare CR or LF in DATA under the reject policy (SMTP smuggling).
    pub fn bare_line_ending() -> Reply {
        r(
            550,
            (5, 6, 0),
            "Error: bare <CR> or <LF> in message data (SMTP smuggling)",
        )
    }

    /// 550 a line over 998 octets under `smtp.long_lines: reject` (RFC 5322 2.1.1,
    /// RFC 5321 4.5.3.1.6).
    pub fn long_line() -> Reply {
        r(
            550,
            (5, 6, 0),
            "Error: message has a line longer than 998 octets (RFC 5322 2.1.1)",
        )
    }

    /// 553 non-ASCII sender without SMTPUTF8 (RFC 6531 3.4).
    pub fn non_ascii_sender() -> Reply {
        r(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8")
    }

    /// 553 non-ASCII recipient in a transaction without SMTPUTF8 (RFC 6531 3.4).
    pub fn non_ascii_recipient() -> Reply {
        r(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8")
    }

    /// 503 MAIL inside a transaction.
    pub fn nested_mail() -> Reply {
        r(503, (5, 5, 1), "Error: nested MAIL command")
    }

    /// 503 RCPT or DATA before MAIL.
    pub fn need_mail() -> Reply {
        r(503, (5, 5, 1), "Error: need MAIL command")
    }

    /// 554 DATA without any accepted recipient (RFC 2920 3.1).
    pub fn no_valid_recipients() -> Reply {
        r(554, (5, 5, 1), "Error: no valid recipients")
    }

    /// 452 recipient over `max_recipients` (RFC 5321 4.5.3.1.10).
    pub fn too_many_recipients() -> Reply {
        r(452, (4, 5, 3), "Error: too many recipients")
    }

    // ---- Catalogue: STARTTLS / AUTH -------------------------------------

    /// 220 before the TLS handshake (RFC 3207 4).
    pub fn starttls_ready() -> Reply {
        r(220, (2, 0, 0), "Ready to start TLS")
    }

    /// 554 STARTTLS inside TLS.
    pub fn tls_already_active() -> Reply {
        r(554, (5, 5, 1), "Error: TLS already active")
    }

    /// 530 AUTH or MAIL before STARTTLS on a listener that requires it.
    pub fn starttls_first() -> Reply {
        r(530, (5, 7, 0), "Must issue a STARTTLS command first")
    }

    /// 530 MAIL before AUTH on a listener that requires it (RFC 4954 6).
    pub fn auth_required() -> Reply {
        r(530, (5, 7, 0), "Authentication required")
    }

    /// 503 AUTH on a listener without authentication.
    pub fn auth_not_enabled() -> Reply {
        r(503, (5, 5, 1), "Error: authentication not enabled")
    }

    /// 503 second AUTH (RFC 4954 4).
    pub fn already_authenticated() -> Reply {
        r(503, (5, 5, 1), "Error: already authenticated")
    }

    /// 503 AUTH during a mail transaction (RFC 4954 4).
    pub fn auth_in_transaction() -> Reply {
        r(503, (5, 5, 1), "Error: MAIL transaction in progress")
    }

    /// 504 mechanism other than PLAIN / LOGIN (RFC 4954 4).
    pub fn unknown_mechanism() -> Reply {
        r(504, (5, 5, 4), "Unrecognized authentication type")
    }

    /// 501 client sent `*` (RFC 4954 4).
    pub fn auth_aborted() -> Reply {
        r(501, (5, 0, 0), "Authentication aborted")
    }

    /// 501 SASL response that is not base64.
    pub fn invalid_base64() -> Reply {
        r(501, (5, 5, 2), "Error: invalid base64 data")
    }

    /// 501 SASL response that decodes but is malformed.
    pub fn sasl_malformed() -> Reply {
        r(501, (5, 5, 2), "Error: malformed authentication response")
    }

    /// 334 SASL challenge (RFC 4954 4); `text` is already base64.
    pub fn sasl_challenge(text: &'static str) -> Reply {
        Reply::plain(334, text)
    }

    /// 235 AUTH succeeded.
    pub fn auth_ok() -> Reply {
        r(235, (2, 7, 0), "Authentication successful")
    }

    // ---- Catalogue: replies decided by the shell / policy ------------------

    /// 535 bad credentials (RFC 4954 6).
    pub fn auth_failed() -> Reply {
        r(535, (5, 7, 8), "Error: authentication failed")
    }

    /// 454 credential store unavailable (RFC 4954 6).
    pub fn temp_auth_failure() -> Reply {
        r(454, (4, 7, 0), "Temporary authentication failure")
    }

    /// 421 after too many AUTH failures.
    pub fn lockout() -> Reply {
        r(421, (4, 7, 0), "Error: too many authentication failures")
    }

    /// 553 identity may not use this sender.
    pub fn sender_not_allowed() -> Reply {
        r(553, (5, 7, 1), "Sender address rejected: not owned by user")
    }

    /// 550 no route takes this sender (BRIEF: routes by sender; refused at MAIL time so
    /// the client learns at once instead of the message failing after DATA).
    pub fn no_route() -> Reply {
        r(
            550,
            (5, 7, 1),
            "Sender address rejected: no route for this sender",
        )
    }

    /// 550 no route takes this recipient of this sender (routes by recipient domain);
    /// refused at RCPT time, as [`Reply::no_route`] is at MAIL time.
    pub fn no_route_recipient() -> Reply {
        r(
            550,
            (5, 7, 1),
            "Recipient address rejected: no route for this recipient",
        )
    }

    /// 554 client address not in the listener's allowlist.
    pub fn not_allowed_client() -> Reply {
        r(554, (5, 7, 1), "Error: access denied")
    }

    /// 421 connection limit reached.
    pub fn too_many_connections() -> Reply {
        r(421, (4, 7, 0), "Error: too many connections")
    }

    /// 451 the spool write failed: the client keeps the message and retries.
    pub fn queue_error() -> Reply {
        r(451, (4, 3, 0), "Error: queue file write error")
    }

    /// 450 over a rate limit: temporary so clients retry.
    pub fn rate_limited() -> Reply {
        r(
            450,
            (4, 7, 1),
            "Error: rate limit exceeded, try again later",
        )
    }
}

impl fmt::Display for Reply {
    /// The first line as on the wire without CRLF, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.text.split('\n').next().unwrap_or("");
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, first),
            None => write!(f, "{} {}", self.code, first),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        let mut out = Vec::new();
        r.write_to(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn wire_forms() {
        let rows: &[(Reply, &str)] = &[
            (Reply::mail_ok(), "250 2.1.0 Ok\r\n"),
            (
                Reply::greeting("mx.example"),
                "220 mx.example ESMTP postern\r\n",
            ),
            (
                Reply::start_data(),
                "354 End data with <CR><LF>.<CR><LF>\r\n",
            ),
            (
                Reply::new(250, (2, 0, 0), "a\nb\nc"),
                "250-2.0.0 a\r\n250-2.0.0 b\r\n250 2.0.0 c\r\n",
            ),
            (Reply::plain(250, "h\nSIZE 10"), "250-h\r\n250 SIZE 10\r\n"),
            (Reply::new(550, (5, 1, 1), "x\ry"), "550 5.1.1 x y\r\n"),
            (Reply::queued("AB\r\nC"), "250 2.0.0 Ok: queued as ABC\r\n"),
            (
                Reply::timeout("h"),
                "421 4.4.2 h Error: timeout exceeded\r\n",
            ),
            (
                Reply::auth_failed(),
                "535 5.7.8 Error: authentication failed\r\n",
            ),
        ];
        for (reply, want) in rows {
            assert_eq!(wire(reply), *want);
        }
    }

    #[test]
    fn classification() {
        let rows = [
            (Reply::ok(), false, false),
            (Reply::rate_limited(), true, false),
            (Reply::auth_failed(), true, true),
            (Reply::start_data(), false, false),
        ];
        for (reply, err, perm) in rows {
            assert_eq!(
                (reply.is_error(), reply.is_permanent()),
                (err, perm),
                "{reply}"
            );
        }
        assert_eq!(
            Reply::too_many_recipients().to_string(),
            "452 4.5.3 Error: too many recipients"
        );
    }
}
