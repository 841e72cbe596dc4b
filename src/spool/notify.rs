//! What the spool keeps for delivery status notifications (RFC 3461): the DSN parameters
//! the client gave and which notifications were already sent, so none is sent twice, even
//! across restarts. Kept apart from the envelope's delivery fields, and left out of the
//! JSON when empty, so spool files written before DSN support load unchanged.

use serde::{Deserialize, Serialize};

use crate::smtp::dsn::{Notify, Orcpt, Ret};

/// The message's DSN state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDsn {
    /// RFC 3461 4.3 `RET=` from MAIL FROM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// RFC 3461 4.4 `ENVID=` from MAIL FROM, still xtext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// The `Action: delayed` notification (`queue.delay_warning`) was queued.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_warned: bool,
}

impl MessageDsn {
    /// Nothing to store.
    pub fn is_empty(&self) -> bool {
        *self == MessageDsn::default()
    }
}

/// One recipient's DSN state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptDsn {
    /// RFC 3461 4.1 `NOTIFY=` from its RCPT TO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// RFC 3461 4.2 `ORCPT=` from its RCPT TO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<Orcpt>,
    /// The upstream whose reply failed it (for the report's Remote-MTA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// It was delivered to an upstream without DSN: a success notice it asked for is
    /// postern's to send ("relayed", RFC 3461 4.1).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relayed: bool,
    /// Its outcome was reported (the notification was queued, or none was wanted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reported: bool,
}

impl RcptDsn {
    /// Nothing to store.
    pub fn is_empty(&self) -> bool {
        *self == RcptDsn::default()
    }

    /// RFC 3461 4.1: a success is reported only when NOTIFY has SUCCESS.
    pub fn wants_success(&self) -> bool {
        self.notify.is_some_and(|n| n.success)
    }

    /// RFC 3461 4.1: a failure is reported unless NOTIFY was given without FAILURE.
    pub fn wants_failure(&self) -> bool {
        self.notify.is_none_or(|n| n.failure)
    }

    /// The client asked for failure notices in so many words (`NOTIFY=...FAILURE...`):
    /// RFC 3461 4.1 makes that a request the server must honour, whatever its own choice
    /// for recipients without NOTIFY.
    pub fn asked_for_failure(&self) -> bool {
        self.notify.is_some_and(|n| n.failure)
    }

    /// RFC 3461 4.1: a delay is reported when NOTIFY has DELAY, or was not given (the
    /// server's choice; postern, as Postfix, then warns).
    pub fn wants_delay(&self) -> bool {
        self.notify.is_none_or(|n| n.delay)
    }
}
