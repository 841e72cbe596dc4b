//! The label values of the metrics: each enum's stable names.

use crate::reason::Reason;

/// Why a connection was refused before its session began (or `Accepted`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnResult {
    /// Served.
    Accepted,
    /// Not in the listener's `allow_networks`.
    Allowlist,
    /// Over the named `connections` rate rule.
    ConnectionRate(String),
    /// Over a connection cap.
    ConnectionCap,
    /// Refused with `421 4.3.2` while a queue drain is in progress.
    Draining,
    /// Refused with `421 4.3.2`: out of file descriptors.
    FdLimit,
    /// Closed: a PROXY header from an address not in `proxy_protocol.trusted`, or (with
    /// `required: true`) any connection from such an address.
    ProxyUntrusted,
    /// Closed: a trusted peer sent a malformed or oversized PROXY header.
    ProxyInvalid,
    /// Closed: a trusted peer sent no PROXY header in time (or closed before one).
    ProxyMissing,
}

/// The `result` label values of `postern_connections_total`, in [`ConnResult::index`] order.
pub(super) const CONN_RESULTS: [&str; 9] = [
    "accepted",
    "allowlist",
    "connection_rate",
    "connection_cap",
    "draining",
    "fd_limit",
    "proxy_untrusted",
    "proxy_invalid",
    "proxy_missing",
];

impl ConnResult {
    /// The `result` label value, for logs.
    pub fn as_str(&self) -> &'static str {
        CONN_RESULTS[self.index()]
    }

    pub(super) fn index(&self) -> usize {
        match self {
            ConnResult::Accepted => 0,
            ConnResult::Allowlist => 1,
            ConnResult::ConnectionRate(_) => 2,
            ConnResult::ConnectionCap => 3,
            ConnResult::Draining => 4,
            ConnResult::FdLimit => 5,
            ConnResult::ProxyUntrusted => 6,
            ConnResult::ProxyInvalid => 7,
            ConnResult::ProxyMissing => 8,
        }
    }
}

/// The TLS version a handshake settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// What came of an AUTH attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// The password was verified.
    Success,
    /// The password matched a recent success (no argon2 run).
    Cached,
    /// Unknown user or wrong password.
    Failure,
    /// Refused while the address or user is locked out.
    LockedOut,
    /// The verifier was busy: `454`, try again.
    Deferred,
}

impl AuthResult {
    /// Every value in declaration order, so that `value as usize` indexes this array and the
    /// handles resolved from it.
    pub(super) const ALL: [AuthResult; 5] = [
        AuthResult::Success,
        AuthResult::Cached,
        AuthResult::Failure,
        AuthResult::LockedOut,
        AuthResult::Deferred,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            AuthResult::Success => "success",
            AuthResult::Cached => "cached",
            AuthResult::Failure => "failure",
            AuthResult::LockedOut => "locked_out",
            AuthResult::Deferred => "deferred",
        }
    }
}

/// The outcome of one delivery attempt of one message at one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// The upstream took it (for every recipient it did not refuse for good).
    Delivered,
    /// To be retried: a 4xx, an unreachable upstream, a missing extension.
    Deferred,
    /// Refused for good (5xx) for every pending recipient.
    Failed,
    /// Sent, but no reply to the final dot: the upstream may have it.
    MaybeDelivered,
}

impl AttemptResult {
    /// Every value in declaration order, so that `value as usize` indexes this array and the
    /// handles resolved from it.
    pub(super) const ALL: [AttemptResult; 4] = [
        AttemptResult::Delivered,
        AttemptResult::Deferred,
        AttemptResult::Failed,
        AttemptResult::MaybeDelivered,
    ];

    /// The label value and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Delivered => "delivered",
            AttemptResult::Deferred => "deferred",
            AttemptResult::Failed => "failed",
            AttemptResult::MaybeDelivered => "maybe_delivered",
        }
    }
}

/// What became of one recipient in a delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptOutcome {
    /// Accepted by the upstream.
    Delivered,
    /// Refused for now (4xx): retried.
    Deferred,
    /// Refused for good (5xx), or expired.
    Failed,
}

impl RcptOutcome {
    /// Every value in declaration order, so that `value as usize` indexes this array and the
    /// handles resolved from it.
    pub(super) const ALL: [RcptOutcome; 3] = [
        RcptOutcome::Delivered,
        RcptOutcome::Deferred,
        RcptOutcome::Failed,
    ];

    /// The label value and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            RcptOutcome::Delivered => "delivered",
            RcptOutcome::Deferred => "deferred",
            RcptOutcome::Failed => "failed",
        }
    }
}

/// How a message left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Every recipient delivered.
    Delivered,
    /// Some recipient failed for good: moved to `failed/` (or removed once its bounce is
    /// queued, with `queue.bounces: dsn`).
    Failed,
    /// `queue.max_age` reached with recipients pending: moved to `failed/`.
    Expired,
    /// Removed from the queue by an administrator (`postern queue delete`).
    Deleted,
}

impl Completion {
    /// Every value in declaration order, so that `value as usize` indexes this array and the
    /// handles resolved from it.
    pub(super) const ALL: [Completion; 4] = [
        Completion::Delivered,
        Completion::Failed,
        Completion::Expired,
        Completion::Deleted,
    ];

    /// The label value and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Completion::Delivered => "delivered",
            Completion::Failed => "failed",
            Completion::Expired => "expired",
            Completion::Deleted => "deleted",
        }
    }
}

/// What a delivery status notification reports (RFC 3464 2.3.3 Action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// Recipients that failed for good (a bounce).
    Failed,
    /// Recipients still pending after `queue.delay_warning`.
    Delayed,
    /// NOTIFY=SUCCESS recipients handed to an upstream without DSN.
    Relayed,
}

impl DsnAction {
    /// Every value in declaration order, so that `value as usize` indexes this array and the
    /// handles resolved from it.
    pub(super) const ALL: [DsnAction; 3] =
        [DsnAction::Failed, DsnAction::Delayed, DsnAction::Relayed];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Relayed => "relayed",
        }
    }
}

/// The reasons a session is closed by the server (pre-registered for every listener).
pub(super) const CLOSE_REASONS: [Reason; 9] = [
    Reason::Timeout,
    Reason::DataRate,
    Reason::SessionDuration,
    Reason::TooManyErrors,
    Reason::JunkCommands,
    Reason::TooManyMessages,
    Reason::Lockout,
    Reason::ShuttingDown,
    Reason::StaleRules,
];

/// The reasons a transaction or message is refused (pre-registered for every listener).
pub(super) const REFUSAL_REASONS: [Reason; 10] = [
    Reason::SenderNotOwned,
    Reason::AuthRequired,
    Reason::NoRoute,
    Reason::RateLimit,
    Reason::Size,
    Reason::BareLineEnding,
    Reason::LongLine,
    Reason::HeaderSenderNotOwned,
    Reason::HeaderTooLarge,
    Reason::QueueError,
];

/// Upstream failure stages (pre-registered for every upstream).
pub const STAGES: [&str; 13] = [
    "connect",
    "tls",
    "greeting",
    "ehlo",
    "starttls",
    "auth",
    "mail",
    "rcpt",
    "data",
    "body",
    "final_dot",
    "rset",
    "directory",
];
