//! One vocabulary for refusals: every reply that refuses a connection, a command or a
//! message, and every close the server decides, carries one of these stable names in the
//! session's log lines and the message summary line (and, later, as a metric label).
//!
//! A leaf module: the engine, policy and the shell all name reasons from here.

use std::fmt;

/// Why something was refused or a session was closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Over a `rate_limits` rule (messages or recipients): `450 4.7.1`.
    RateLimit,
    /// Over a `rate_limits` connections rule: `421 4.7.0` at connect.
    ConnectionRate,
    /// AUTH refused while the client (or the username) is locked out: `454 4.7.0`, and the
    /// `421 4.7.0` that ends the session reaching the limit.
    Lockout,
    /// Wrong credentials: `535 5.7.8`.
    AuthFailed,
    /// MAIL without AUTH where it is needed: `530 5.7.0`.
    AuthRequired,
    /// The envelope sender is not allowed for the identity: `553 5.7.1`.
    SenderNotOwned,
    /// A `From:` or `Sender:` address is not allowed for the identity: `550 5.7.1`.
    HeaderSenderNotOwned,
    /// The header section is over its bound: `552 5.3.4`.
    HeaderTooLarge,
    /// The message is over `max_message_size`: `552 5.3.4`.
    Size,
    /// Over `max_recipients`: `452 4.5.3`.
    Recipients,
    /// The client address is not in the listener's `allow_networks`: `554 5.7.1`.
    Allowlist,
    /// A connection cap (global, listener, per IP): `421 4.7.0`.
    ConnectionCap,
    /// A command or DATA timeout: `421 4.4.2`.
    Timeout,
    /// DATA arrived slower than `limits.min_data_rate`: `421 4.4.2`.
    DataRate,
    /// The session lasted longer than `timeouts.session`: `421 4.4.2`.
    SessionDuration,
    /// More messages in one session than `limits.max_messages_per_session`: `421 4.7.0`.
    TooManyMessages,
    /// Too many commands without progress (NOOP, RSET, VRFY, HELP): `421 4.7.0`.
    JunkCommands,
    /// Too many error replies in one session: `421 4.7.0`.
    TooManyErrors,
    /// No route takes the sender: `550 5.7.1`.
    NoRoute,
    /// A bare CR or LF in DATA: `550 5.6.0`.
    BareLineEnding,
    /// A line over 998 octets in DATA under `smtp.long_lines: reject`: `550 5.6.0`.
    LongLine,
    /// The spool could not take the message: `451 4.3.0`.
    QueueError,
    /// The server is draining: `421 4.3.2`.
    ShuttingDown,
    /// AUTH as an account a reload added after the session began, whose rules the session
    /// does not have: `421 4.7.0`, reconnect.
    StaleRules,
}

impl Reason {
    /// The stable name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RateLimit => "rate_limit",
            Reason::ConnectionRate => "connection_rate",
            Reason::Lockout => "lockout",
            Reason::AuthFailed => "auth_failed",
            Reason::AuthRequired => "auth_required",
            Reason::SenderNotOwned => "sender_not_owned",
            Reason::HeaderSenderNotOwned => "header_sender_not_owned",
            Reason::HeaderTooLarge => "header_too_large",
            Reason::Size => "size",
            Reason::Recipients => "recipients",
            Reason::Allowlist => "allowlist",
            Reason::ConnectionCap => "connection_cap",
            Reason::Timeout => "timeout",
            Reason::DataRate => "data_rate",
            Reason::SessionDuration => "session_duration",
            Reason::TooManyMessages => "too_many_messages",
            Reason::JunkCommands => "junk_commands",
            Reason::TooManyErrors => "too_many_errors",
            Reason::NoRoute => "no_route",
            Reason::BareLineEnding => "bare_line_ending",
            Reason::LongLine => "long_line",
            Reason::QueueError => "queue_error",
            Reason::ShuttingDown => "shutting_down",
            Reason::StaleRules => "stale_rules",
        }
    }

    /// Every reason, for exhaustive tables (metrics pre-registration, docs).
    pub const ALL: [Reason; 24] = [
        Reason::RateLimit,
        Reason::ConnectionRate,
        Reason::Lockout,
        Reason::AuthFailed,
        Reason::AuthRequired,
        Reason::SenderNotOwned,
        Reason::HeaderSenderNotOwned,
        Reason::HeaderTooLarge,
        Reason::Size,
        Reason::Recipients,
        Reason::Allowlist,
        Reason::ConnectionCap,
        Reason::Timeout,
        Reason::DataRate,
        Reason::SessionDuration,
        Reason::TooManyMessages,
        Reason::JunkCommands,
        Reason::TooManyErrors,
        Reason::NoRoute,
        Reason::BareLineEnding,
        Reason::LongLine,
        Reason::QueueError,
        Reason::ShuttingDown,
        Reason::StaleRules,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let name = r.as_str();
            assert!(seen.insert(name), "duplicate {name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert_eq!(r.to_string(), name);
        }
    }
}
