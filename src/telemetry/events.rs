//! The mail log's fixed vocabulary: one function per kind of line, so that every line of a
//! kind has the same fields in every code path, `event` names the kind, and operators can
//! follow a message by its queue id from the session that submitted it to the upstream that
//! took it (docs/observability.md, "Logs", where tests/it/docs.rs checks that every event
//! and field is documented).
//!
//! Field values are enums' stable names, numbers, or text the protocol carries (addresses,
//! upstream replies). Never a password, an AUTH payload, a token or a message body: those
//! are not passed to any function here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::reason::Reason;
use crate::telemetry::metrics::{AttemptResult, Completion, RcptOutcome};
use crate::upstream::breaker::Transition;

/// The kinds of mail-log line (the `event` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A session began (after the connection was admitted).
    SessionStart,
    /// A session ended.
    SessionEnd,
    /// A message was queued or refused.
    Message,
    /// One message tried at one upstream.
    DeliveryAttempt,
    /// One recipient's outcome at an upstream.
    Recipient,
    /// A message left the queue: delivered, failed (moved to `failed/`) or expired.
    Completed,
    /// An upstream's circuit breaker changed state.
    CircuitBreaker,
    /// An administrator's command through the admin API (`postern queue ...`).
    Admin,
}

impl Event {
    /// The `event` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::SessionStart => "session_start",
            Event::SessionEnd => "session_end",
            Event::Message => "message",
            Event::DeliveryAttempt => "delivery_attempt",
            Event::Recipient => "recipient",
            Event::Completed => "completed",
            Event::CircuitBreaker => "circuit_breaker",
            Event::Admin => "admin",
        }
    }
}

/// How a session ended (the `end` field of `session_end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The dialogue ended normally (QUIT, or a refusal at connect).
    Quit,
    /// The server closed it (`closed_by` says why).
    ServerClosed,
    /// The client closed the connection without QUIT.
    ClientClosed,
    /// A read or write failed.
    IoError,
    /// The TLS handshake failed.
    TlsError,
    /// The client stopped reading our replies.
    WriteTimeout,
}

impl SessionEnd {
    /// The `end` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Quit => "quit",
            SessionEnd::ServerClosed => "server_closed",
            SessionEnd::ClientClosed => "client_closed",
            SessionEnd::IoError => "io_error",
            SessionEnd::TlsError => "tls_error",
            SessionEnd::WriteTimeout => "write_timeout",
        }
    }
}

/// Logs the start of a session. The session's span adds its id, listener and client.
pub fn session_start(listener: &str, client: SocketAddr, implicit_tls: bool) {
    tracing::info!(
        event = Event::SessionStart.as_str(),
        listener,
        client_ip = %client.ip(),
        client_port = client.port(),
        tls = implicit_tls,
        "session start"
    );
}

/// What a `session_end` line reports.
#[derive(Debug)]
pub struct SessionSummary {
    /// How long the session lasted.
    pub duration: Duration,
    /// Messages queued in it.
    pub messages: u32,
    /// Why the server closed it, when it did.
    pub closed_by: Option<Reason>,
    /// How it ended.
    pub end: SessionEnd,
}

/// Logs the end of a session.
pub fn session_end(s: &SessionSummary) {
    tracing::info!(
        event = Event::SessionEnd.as_str(),
        duration_ms = millis(s.duration),
        messages = s.messages,
        end = s.end.as_str(),
        reason = s.closed_by.map_or("-", Reason::as_str),
        "session end: {}",
        s.end.as_str()
    );
}

/// The one summary line per accepted or refused message (BRIEF: "one line per message").
#[derive(Debug)]
pub struct MessageSummary<'a> {
    /// Queue id (`-` when refused before a spool file existed).
    pub queue_id: &'a str,
    /// Listener name.
    pub listener: &'a str,
    /// Client address.
    pub client_ip: IpAddr,
    /// Authenticated user or device identity.
    pub identity: Option<&'a str>,
    /// Envelope sender (after rewrite).
    pub sender: &'a str,
    /// Number of recipients.
    pub recipients: usize,
    /// Bytes stored (prefix + body).
    pub size: u64,
    /// `queued`, or the refusal's reply.
    pub outcome: &'a str,
    /// Why it was refused (`None` when queued).
    pub reason: Option<Reason>,
}

/// Logs a message summary at info level.
pub fn message(m: &MessageSummary<'_>) {
    tracing::info!(
        event = Event::Message.as_str(),
        queue_id = m.queue_id,
        listener = m.listener,
        client_ip = %m.client_ip,
        identity = m.identity.unwrap_or("-"),
        sender = m.sender,
        recipients = m.recipients,
        size = m.size,
        outcome = m.outcome,
        reason = m.reason.map_or("-", Reason::as_str),
        "message {}: {}",
        m.queue_id,
        m.outcome
    );
}

/// What a `delivery_attempt` line reports.
#[derive(Debug)]
pub struct Attempt<'a> {
    /// Queue id.
    pub queue_id: &'a str,
    /// Upstream name.
    pub upstream: &'a str,
    /// Attempt number of the message (1 = first), across restarts.
    pub attempt: u32,
    /// Recipients tried in this attempt.
    pub recipients: usize,
    /// The reply that decided the attempt (the final dot's, or the refusal's), or a local
    /// description when there was none (connection refused, timeout).
    pub reply: &'a str,
    /// Its code, 0 when there was no reply.
    pub code: u16,
    /// How long the attempt took.
    pub duration: Duration,
    /// What came of it.
    pub result: AttemptResult,
}

/// Logs one delivery attempt.
pub fn attempt(a: &Attempt<'_>) {
    tracing::info!(
        event = Event::DeliveryAttempt.as_str(),
        queue_id = a.queue_id,
        upstream = a.upstream,
        attempt = a.attempt,
        recipients = a.recipients,
        code = a.code,
        reply = a.reply,
        duration_ms = millis(a.duration),
        result = a.result.as_str(),
        "delivery {} via {}: {}",
        a.queue_id,
        a.upstream,
        a.result.as_str()
    );
}

/// Logs one recipient's outcome at `upstream` (`-`: decided locally, as on expiry).
pub fn recipient(
    queue_id: &str,
    upstream: &str,
    recipient: &str,
    result: RcptOutcome,
    reply: &str,
) {
    tracing::info!(
        event = Event::Recipient.as_str(),
        queue_id,
        upstream,
        recipient,
        result = result.as_str(),
        reply,
        "delivery {queue_id} to {recipient} via {upstream}: {}",
        result.as_str()
    );
}

/// Logs a message leaving the queue, `age` after it was received.
pub fn completed(queue_id: &str, result: Completion, attempts: u32, age: Duration) {
    tracing::info!(
        event = Event::Completed.as_str(),
        queue_id,
        result = result.as_str(),
        attempts,
        age_s = age.as_secs(),
        "message {queue_id} {}",
        result.as_str()
    );
}

/// Logs an upstream's circuit breaker changing state (once per change): `opened` (the
/// upstream is skipped for `cooldown_s`), `half_open` (the probe goes out), `closed`.
pub fn circuit_breaker(upstream: &str, transition: Transition) {
    match transition {
        Transition::Opened { failures, cooldown } => tracing::warn!(
            event = Event::CircuitBreaker.as_str(),
            upstream,
            state = "open",
            failures,
            cooldown_s = cooldown.as_secs(),
            "circuit breaker of upstream {upstream} opened after {failures} failures in a row; \
             skipped for {}s",
            cooldown.as_secs()
        ),
        Transition::HalfOpen => tracing::info!(
            event = Event::CircuitBreaker.as_str(),
            upstream,
            state = "half_open",
            "circuit breaker of upstream {upstream} half-open: one probe attempt"
        ),
        Transition::Closed => tracing::info!(
            event = Event::CircuitBreaker.as_str(),
            upstream,
            state = "closed",
            "circuit breaker of upstream {upstream} closed: the upstream is used again"
        ),
    }
}

/// Logs an administrator's command: `action` (`hold`, `release`, `retry`, `delete`,
/// `bounce`, `drain`, `resume`, `purge_failed`), the message it concerns (`-`: all), and what
/// it did.
pub fn admin(action: &'static str, queue_id: &str, detail: &str) {
    tracing::warn!(
        event = Event::Admin.as_str(),
        action,
        queue_id,
        detail,
        "admin: {action} {queue_id}: {detail}"
    );
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
