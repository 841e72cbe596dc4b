//! The mail log's fixed vocabulary: one function per kind of line, so that every summary
//! line has the same fields in every code path and operators can grep by queue id.

use std::net::IpAddr;

use crate::reason::Reason;

/// The one summary line per accepted or refused message (BRIEF: "one line per message").
#[derive(Debug)]
pub struct MessageSummary<'a> {
    /// Queue id (empty when refused before a spool file existed).
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
        event = "message",
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

/// Logs a delivery outcome for one recipient.
pub fn delivery(queue_id: &str, upstream: &str, recipient: &str, status: &str, detail: &str) {
    tracing::info!(
        event = "delivery",
        queue_id,
        upstream,
        recipient,
        status,
        detail,
        "delivery {queue_id} to {recipient} via {upstream}: {status}"
    );
}
