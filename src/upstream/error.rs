//! What can go wrong talking to an upstream, and whether it is worth retrying.
//!
//! The delivery layer needs four answers from an error: retry later or give up
//! ([`Error::is_permanent`]); whether the message may already have been delivered
//! ([`Error::is_maybe_delivered`]), in which case it must not fail over to another upstream
//! (BRIEF: "no blind duplicates"); and whether this upstream merely lacks an extension the
//! message needs ([`Error::unsupported`]), in which case another upstream of the route may
//! still take it.

use std::fmt;
use std::io;

use crate::smtp::reply_parser::UpstreamReply;
use crate::upstream::hints::hint;
use crate::upstream::oauth2::TokenError;

/// The point of the dialogue where an error happened; named in logs and bounces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// TCP connect (and name resolution).
    Connect,
    /// TLS handshake, implicit or after STARTTLS.
    TlsHandshake,
    /// Waiting for the 220 greeting.
    Greeting,
    /// EHLO or HELO.
    Ehlo,
    /// The STARTTLS command.
    StartTls,
    /// The AUTH exchange.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// The DATA command (before the 354).
    Data,
    /// Sending the message content.
    Body,
    /// Waiting for the reply to the final dot.
    FinalDot,
    /// RSET before reusing a pooled connection.
    Rset,
    /// Writing to a directory upstream.
    Directory,
}

impl Stage {
    /// Whether the stage sets the session up (connect, TLS, greeting, EHLO, STARTTLS,
    /// AUTH): failing there means the upstream could not be reached or logged in to, with
    /// nothing about any message decided.
    pub fn is_session_setup(self) -> bool {
        matches!(
            self,
            Stage::Connect
                | Stage::TlsHandshake
                | Stage::Greeting
                | Stage::Ehlo
                | Stage::StartTls
                | Stage::Auth
        )
    }

    /// A short lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::TlsHandshake => "tls",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "ehlo",
            Stage::StartTls => "starttls",
            Stage::Auth => "auth",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Body => "body",
            Stage::FinalDot => "final_dot",
            Stage::Rset => "rset",
            Stage::Directory => "directory",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An SMTP extension a message needs and an upstream does not offer (or offers too small).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Capability {
    /// RFC 6531 3.2: the envelope or the header has UTF-8 and needs `SMTPUTF8`.
    SmtpUtf8,
    /// RFC 6152 3: the body has 8-bit octets and needs `8BITMIME`.
    EightBitMime,
    /// RFC 1870 4: the message is larger than the upstream's advertised `SIZE`.
    Size {
        /// Octets postern would transmit (see [`crate::upstream::client::Outgoing::size`]).
        size: u64,
        /// The upstream's fixed maximum.
        limit: u64,
    },
}

impl Capability {
    /// The reply to record (and report in a DSN) when no upstream of the route can take
    /// the message: each with the enhanced code its RFC names.
    pub fn failure(&self) -> UpstreamReply {
        match self {
            // RFC 6531 3.5 / RFC 5248: X.6.7, "non-ASCII addresses not permitted".
            Capability::SmtpUtf8 => UpstreamReply::local(
                553,
                (5, 6, 7),
                "the message needs SMTPUTF8 and no upstream of its route offers it",
            ),
            // RFC 6152 3 (no conversion done, so non-delivery); RFC 3463 X.6.3: conversion
            // required but not supported.
            Capability::EightBitMime => UpstreamReply::local(
                554,
                (5, 6, 3),
                "the message has 8-bit content and no upstream of its route offers 8BITMIME",
            ),
            // RFC 1870 6: 552 for a message over the fixed maximum; RFC 3463 X.3.4.
            Capability::Size { .. } => UpstreamReply::local(
                552,
                (5, 3, 4),
                "the message is larger than every upstream of its route accepts",
            ),
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capability::SmtpUtf8 => f.write_str("SMTPUTF8 needed but not offered"),
            Capability::EightBitMime => f.write_str("8BITMIME needed but not offered"),
            Capability::Size { size, limit } => {
                write!(f, "message of {size} octets exceeds SIZE {limit}")
            }
        }
    }
}

/// An upstream delivery failure. Each variant names the upstream (its configured name).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be made.
    Connect {
        /// Upstream name.
        upstream: String,
        /// The OS error (refused, unreachable, DNS failure).
        source: io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, protocol mismatch).
    Tls {
        /// Upstream name.
        upstream: String,
        /// The handshake error; rustls errors arrive wrapped in `io::Error`.
        source: io::Error,
    },
    /// No reply (or no progress writing) within the stage's timeout.
    Timeout {
        /// Upstream name.
        upstream: String,
        /// Where it stalled.
        stage: Stage,
    },
    /// The upstream broke the protocol (unparsable reply, unexpected code, bytes after the
    /// STARTTLS reply, no usable AUTH mechanism).
    Protocol {
        /// Upstream name.
        upstream: String,
        /// Where it happened.
        stage: Stage,
        /// What was wrong.
        detail: String,
    },
    /// The upstream refused a command (or postern refused locally, with a reply of the same
    /// shape: an address that no SMTP command line can carry).
    Reply {
        /// Upstream name.
        upstream: String,
        /// The refused command.
        stage: Stage,
        /// The refusal.
        reply: UpstreamReply,
    },
    /// The upstream rejected our credentials. Treated as temporary: the mail waits in the
    /// queue while the admin fixes the credentials, instead of bouncing everything.
    Auth {
        /// Upstream name.
        upstream: String,
        /// The refusal (usually `535 5.7.8`).
        reply: UpstreamReply,
    },
    /// `tls: starttls` is configured but the upstream does not offer STARTTLS. Temporary: we
    /// never fall back to plain text (that is what a downgrade attacker wants).
    NoStartTls {
        /// Upstream name.
        upstream: String,
    },
    /// The final dot was sent but no reply came (timeout or connection lost). The upstream
    /// may have accepted the message: retry on the same upstream later, never fail over.
    MaybeDelivered {
        /// Upstream name.
        upstream: String,
        /// What happened after the dot.
        cause: String,
    },
    /// The upstream lacks an extension this message needs; nothing was sent and the
    /// connection stays usable. Not permanent: another upstream of the route may have it.
    /// The delivery layer fails the message for good only when no upstream of the route can
    /// take it, with [`Capability::failure`].
    Unsupported {
        /// Upstream name.
        upstream: String,
        /// What is missing.
        capability: Capability,
    },
    /// No OAuth 2.0 access token could be had for AUTH (the token endpoint refused or
    /// could not be reached). Temporary: the mail waits until the endpoint answers.
    Token {
        /// Upstream name.
        upstream: String,
        /// The token endpoint's refusal or what went wrong.
        source: TokenError,
    },
    /// Reading or writing failed (connection reset, or a local file error).
    Io {
        /// Upstream name.
        upstream: String,
        /// Where it happened.
        stage: Stage,
        /// The OS error.
        source: io::Error,
    },
}

impl Error {
    /// Whether retrying the same message later is pointless.
    ///
    /// Permanent: a 5xx reply to MAIL, DATA or the final dot (RFC 5321 4.2.1: "the SMTP
    /// client SHOULD NOT repeat the exact request"). Everything else is temporary:
    /// connection and TLS problems, timeouts, 4xx, protocol confusion, credentials, and 5xx
    /// to the greeting/EHLO/RSET (an upstream refusing *us* is a configuration problem, not
    /// a verdict on this message). [`Error::Unsupported`] is not permanent either: it is a
    /// verdict on this upstream, not on the message (see [`Error::unsupported`]).
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Reply { stage, reply, .. } => {
                reply.is_permanent() && matches!(stage, Stage::Mail | Stage::Data | Stage::FinalDot)
            }
            _ => false,
        }
    }

    /// Whether this upstream cannot take mail now, so the next upstream of the route is
    /// tried at once (and the circuit breaker counts a failure): it could not be reached,
    /// its TLS or greeting or AUTH failed (or no OAuth2 token could be had), it said `421` (RFC 5321 3.8: it is closing the
    /// channel) at any stage, the connection broke or timed out before the final dot, or
    /// it spoke nonsense.
    ///
    /// Not a failover: any other reply to MAIL, RCPT, DATA or the final dot. A live
    /// upstream that answers `4xx` for the transaction is deferring *this message* (a
    /// greylist, a quota, a busy mailbox): the message waits for its next attempt, at the
    /// same route, rather than hopping to another upstream that would deliver it along a
    /// path the admin ranked lower. A `5xx` there is a verdict ([`Error::is_permanent`]);
    /// a missing extension is [`Error::unsupported`]; no reply to the dot is
    /// [`Error::is_maybe_delivered`] (never a failover: no blind duplicates).
    pub fn fails_over(&self) -> bool {
        match self {
            Error::Reply { stage, reply, .. } => {
                reply.code == 421 || stage.is_session_setup() || *stage == Stage::Rset
            }
            Error::MaybeDelivered { .. } | Error::Unsupported { .. } => false,
            Error::Connect { .. }
            | Error::Tls { .. }
            | Error::Timeout { .. }
            | Error::Protocol { .. }
            | Error::Auth { .. }
            | Error::Token { .. }
            | Error::NoStartTls { .. }
            | Error::Io { .. } => true,
        }
    }

    /// Whether the upstream may already hold the message (see [`Error::MaybeDelivered`]).
    pub fn is_maybe_delivered(&self) -> bool {
        matches!(self, Error::MaybeDelivered { .. })
    }

    /// What this upstream lacks, when that is why it cannot take the message: try the next
    /// upstream of the route (RFC 6531 3.2 and RFC 6152 3 forbid sending it here anyway).
    pub fn unsupported(&self) -> Option<&Capability> {
        match self {
            Error::Unsupported { capability, .. } => Some(capability),
            _ => None,
        }
    }

    /// The upstream reply carried by this error, if any (for bounces and logs).
    pub fn reply(&self) -> Option<&UpstreamReply> {
        match self {
            Error::Reply { reply, .. } | Error::Auth { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// The configured name of the upstream this error is about.
    pub fn upstream(&self) -> &str {
        match self {
            Error::Connect { upstream, .. }
            | Error::Tls { upstream, .. }
            | Error::Timeout { upstream, .. }
            | Error::Protocol { upstream, .. }
            | Error::Reply { upstream, .. }
            | Error::Auth { upstream, .. }
            | Error::NoStartTls { upstream }
            | Error::MaybeDelivered { upstream, .. }
            | Error::Unsupported { upstream, .. }
            | Error::Token { upstream, .. }
            | Error::Io { upstream, .. } => upstream,
        }
    }

    /// The stage where the error happened.
    pub fn stage(&self) -> Stage {
        match self {
            Error::Connect { .. } => Stage::Connect,
            Error::Tls { .. } => Stage::TlsHandshake,
            Error::Timeout { stage, .. }
            | Error::Protocol { stage, .. }
            | Error::Reply { stage, .. }
            | Error::Io { stage, .. } => *stage,
            Error::Auth { .. } | Error::Token { .. } => Stage::Auth,
            Error::NoStartTls { .. } => Stage::StartTls,
            Error::MaybeDelivered { .. } => Stage::FinalDot,
            Error::Unsupported { .. } => Stage::Mail,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { upstream, source } => {
                write!(f, "upstream {upstream}: connect failed: {source}")
            }
            Error::Tls { upstream, source } => {
                write!(f, "upstream {upstream}: TLS handshake failed: {source}")
            }
            Error::Timeout { upstream, stage } => {
                write!(f, "upstream {upstream}: timed out at {stage}")
            }
            Error::Protocol {
                upstream,
                stage,
                detail,
            } => {
                write!(
                    f,
                    "upstream {upstream}: protocol error at {stage}: {detail}"
                )
            }
            Error::Reply {
                upstream,
                stage,
                reply,
            } => {
                write!(f, "upstream {upstream}: {stage} refused: {reply}")?;
                write_hint(f, reply)
            }
            Error::Auth { upstream, reply } => {
                write!(f, "upstream {upstream}: authentication failed: {reply}")?;
                write_hint(f, reply)
            }
            Error::Token { upstream, source } => {
                write!(
                    f,
                    "upstream {upstream}: cannot get an OAuth2 token: {source}"
                )
            }
            Error::NoStartTls { upstream } => {
                write!(f, "upstream {upstream}: upstream does not offer STARTTLS")
            }
            Error::MaybeDelivered { upstream, cause } => write!(
                f,
                "upstream {upstream}: no reply after the final dot ({cause}); may have been delivered"
            ),
            Error::Unsupported {
                upstream,
                capability,
            } => write!(
                f,
                "upstream {upstream}: cannot take this message: {capability}"
            ),
            Error::Io {
                upstream,
                stage,
                source,
            } => {
                write!(f, "upstream {upstream}: I/O error at {stage}: {source}")
            }
        }
    }
}

/// Appends what a known provider refusal means, when it is one (see [`hint`]).
fn write_hint(f: &mut fmt::Formatter<'_>, reply: &UpstreamReply) -> fmt::Result {
    match hint(reply) {
        Some(h) => write!(f, " (hint: {h})"),
        None => Ok(()),
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. }
            | Error::Tls { source, .. }
            | Error::Io { source, .. } => Some(source),
            Error::Token { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> UpstreamReply {
        UpstreamReply {
            code,
            enhanced: None,
            lines: vec!["x".into()],
        }
    }

    #[test]
    fn permanence() {
        let up = || "m365".to_string();
        let rows: Vec<(Error, bool, &str)> = vec![
            (
                Error::Reply {
                    upstream: up(),
                    stage: Stage::Mail,
                    reply: reply(550),
                },
                true,
                "upstream m365: mail refused: 550 x",
            ),
            (
                Error::Reply {
                    upstream: up(),
                    stage: Stage::Data,
                    reply: reply(554),
                },
                true,
                "upstream m365: data refused: 554 x",
            ),
            (
                Error::Reply {
                    upstream: up(),
                    stage: Stage::FinalDot,
                    reply: reply(552),
                },
                true,
                "upstream m365: final_dot refused: 552 x",
            ),
            (
                Error::Reply {
                    upstream: up(),
                    stage: Stage::FinalDot,
                    reply: reply(451),
                },
                false,
                "upstream m365: final_dot refused: 451 x",
            ),
            (
                Error::Reply {
                    upstream: up(),
                    stage: Stage::Ehlo,
                    reply: reply(550),
                },
                false,
                "upstream m365: ehlo refused: 550 x",
            ),
            (
                Error::Reply {
                    upstream: up(),
                    stage: Stage::Greeting,
                    reply: reply(554),
                },
                false,
                "upstream m365: greeting refused: 554 x",
            ),
            (
                Error::Auth {
                    upstream: up(),
                    reply: reply(535),
                },
                false,
                "upstream m365: authentication failed: 535 x",
            ),
            (
                Error::NoStartTls { upstream: up() },
                false,
                "upstream m365: upstream does not offer STARTTLS",
            ),
            (
                Error::Timeout {
                    upstream: up(),
                    stage: Stage::Rcpt,
                },
                false,
                "upstream m365: timed out at rcpt",
            ),
            (
                Error::MaybeDelivered {
                    upstream: up(),
                    cause: "connection closed".into(),
                },
                false,
                "upstream m365: no reply after the final dot (connection closed); may have been delivered",
            ),
        ];
        for (err, permanent, shown) in rows {
            assert_eq!(err.is_permanent(), permanent, "{err}");
            assert!(err.unsupported().is_none(), "{err}");
            assert_eq!(err.to_string(), shown);
        }
    }

    /// Which errors move on to the next upstream of the route at once, and which leave
    /// the message waiting at this one (a live upstream's 4xx to the transaction).
    #[test]
    fn failover_rule() {
        let up = || "m365".to_string();
        let at = |stage, code| Error::Reply {
            upstream: up(),
            stage,
            reply: reply(code),
        };
        let io = || io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let rows: Vec<(Error, bool)> = vec![
            (
                Error::Connect {
                    upstream: up(),
                    source: io(),
                },
                true,
            ),
            (
                Error::Tls {
                    upstream: up(),
                    source: io(),
                },
                true,
            ),
            (
                Error::Timeout {
                    upstream: up(),
                    stage: Stage::Greeting,
                },
                true,
            ),
            (
                Error::Timeout {
                    upstream: up(),
                    stage: Stage::Body,
                },
                true,
            ),
            (
                Error::Auth {
                    upstream: up(),
                    reply: reply(535),
                },
                true,
            ),
            (Error::NoStartTls { upstream: up() }, true),
            (
                Error::Io {
                    upstream: up(),
                    stage: Stage::Rcpt,
                    source: io(),
                },
                true,
            ),
            (at(Stage::Greeting, 554), true),
            (at(Stage::Greeting, 421), true),
            (at(Stage::Ehlo, 421), true),
            (at(Stage::Mail, 421), true),
            (at(Stage::Data, 421), true),
            (at(Stage::FinalDot, 421), true),
            (at(Stage::Mail, 451), false),
            (at(Stage::Mail, 452), false),
            (at(Stage::Data, 451), false),
            (at(Stage::FinalDot, 451), false),
            (at(Stage::Mail, 550), false),
            (at(Stage::FinalDot, 554), false),
            (
                Error::MaybeDelivered {
                    upstream: up(),
                    cause: "closed".into(),
                },
                false,
            ),
            (
                Error::Unsupported {
                    upstream: up(),
                    capability: Capability::SmtpUtf8,
                },
                false,
            ),
        ];
        for (err, expected) in rows {
            assert_eq!(err.fails_over(), expected, "{err}");
        }
    }

    /// A missing extension is never permanent for the message; each names its own final
    /// reply (RFC 6531 3.5, RFC 6152 3 with RFC 3463 X.6.3, RFC 1870 6).
    #[test]
    fn unsupported_capabilities() {
        let rows = [
            (
                Capability::SmtpUtf8,
                "upstream a: cannot take this message: SMTPUTF8 needed but not offered",
                "553 5.6.7 the message needs SMTPUTF8 and no upstream of its route offers it",
            ),
            (
                Capability::EightBitMime,
                "upstream a: cannot take this message: 8BITMIME needed but not offered",
                "554 5.6.3 the message has 8-bit content and no upstream of its route offers 8BITMIME",
            ),
            (
                Capability::Size {
                    size: 1001,
                    limit: 1000,
                },
                "upstream a: cannot take this message: message of 1001 octets exceeds SIZE 1000",
                "552 5.3.4 the message is larger than every upstream of its route accepts",
            ),
        ];
        for (capability, shown, failure) in rows {
            let err = Error::Unsupported {
                upstream: "a".into(),
                capability: capability.clone(),
            };
            assert!(!err.is_permanent() && !err.is_maybe_delivered(), "{err}");
            assert_eq!(err.unsupported(), Some(&capability));
            assert_eq!(err.stage(), Stage::Mail);
            assert_eq!(err.to_string(), shown);
            assert_eq!(capability.failure().to_string(), failure);
        }
    }
}
