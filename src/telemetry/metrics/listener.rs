//! One listener's series, resolved once when it is bound.

use std::sync::Arc;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use super::Families;
use super::labels::{
    AuthResult, CLOSE_REASONS, CONN_RESULTS, ConnResult, REFUSAL_REASONS, TlsVersion,
};
use crate::reason::Reason;
use crate::smtp::sasl::Mechanism;

/// One listener's resolved handles.
#[derive(Debug)]
pub struct ListenerMetrics {
    name: String,
    connections: [IntCounter; CONN_RESULTS.len()],
    active: IntGauge,
    closed: Vec<(Reason, IntCounter)>,
    tls: [IntCounter; 3],
    auth: [[IntCounter; 5]; 2],
    lockouts: IntCounter,
    accepted: IntCounter,
    refused: Vec<(Reason, IntCounter)>,
    rcpt_accepted: IntCounter,
    rcpt_refused: IntCounter,
    size: Histogram,
    sessions_closed: IntCounterVec,
    messages_refused: IntCounterVec,
}

impl ListenerMetrics {
    pub(super) fn new(f: &Families, name: &str) -> ListenerMetrics {
        let reasons = |vec: &IntCounterVec, set: &[Reason]| -> Vec<(Reason, IntCounter)> {
            set.iter()
                .map(|r| (*r, vec.with_label_values(&[name, r.as_str()])))
                .collect()
        };
        let tls = |version: &str, result: &str| {
            f.tls_handshakes.with_label_values(&[name, version, result])
        };
        let auth = |mech: &str| {
            AuthResult::ALL.map(|r| f.auth_attempts.with_label_values(&[name, mech, r.as_str()]))
        };
        ListenerMetrics {
            name: name.to_owned(),
            connections: CONN_RESULTS.map(|r| f.connections.with_label_values(&[name, r])),
            active: f.sessions_active.with_label_values(&[name]),
            closed: reasons(&f.sessions_closed, &CLOSE_REASONS),
            tls: [
                tls("tls1_2", "success"),
                tls("tls1_3", "success"),
                tls("none", "failure"),
            ],
            auth: [auth("plain"), auth("login")],
            lockouts: f.auth_lockouts.with_label_values(&[name]),
            accepted: f.messages_accepted.with_label_values(&[name]),
            refused: reasons(&f.messages_refused, &REFUSAL_REASONS),
            rcpt_accepted: f.recipients.with_label_values(&[name, "accepted"]),
            rcpt_refused: f.recipients.with_label_values(&[name, "refused"]),
            size: f.message_size.with_label_values(&[name]),
            sessions_closed: f.sessions_closed.clone(),
            messages_refused: f.messages_refused.clone(),
        }
    }

    /// Counts a connection by what became of it.
    pub fn connection(&self, result: &ConnResult) {
        self.connections[result.index()].inc();
    }

    /// Counts a session as open until the guard is dropped.
    pub fn session(self: &Arc<Self>) -> SessionGuard {
        self.active.inc();
        SessionGuard(self.clone())
    }

    /// Counts a session the server closed for `reason`.
    pub fn session_closed(&self, reason: Reason) {
        self.by_reason(&self.closed, &self.sessions_closed, reason);
    }

    /// Counts a TLS handshake: its version, or `None` when it failed.
    pub fn tls_handshake(&self, version: Option<TlsVersion>) {
        let i = match version {
            Some(TlsVersion::Tls12) => 0,
            Some(TlsVersion::Tls13) => 1,
            None => 2,
        };
        self.tls[i].inc();
    }

    /// Counts an AUTH attempt.
    pub fn auth(&self, mechanism: Mechanism, result: AuthResult) {
        let m = match mechanism {
            Mechanism::Plain => 0,
            Mechanism::Login => 1,
        };
        self.auth[m][result as usize].inc();
    }

    /// Counts a lockout started by a failure on this listener.
    pub fn lockout(&self) {
        self.lockouts.inc();
    }

    /// Counts a queued message of `size` bytes.
    pub fn message_accepted(&self, size: u64) {
        self.accepted.inc();
        self.size.observe(size as f64);
    }

    /// Counts a transaction or message refused for `reason`.
    pub fn message_refused(&self, reason: Reason) {
        self.by_reason(&self.refused, &self.messages_refused, reason);
    }

    /// Counts a recipient accepted or refused at RCPT.
    pub fn recipient(&self, accepted: bool) {
        if accepted {
            self.rcpt_accepted.inc();
        } else {
            self.rcpt_refused.inc();
        }
    }

    /// A refusal the engine made (it knows only its own reasons): routed to the family
    /// its reason belongs to.
    pub fn engine_refusal(&self, reason: Reason) {
        match reason {
            Reason::Recipients => self.recipient(false),
            other => self.message_refused(other),
        }
    }

    fn by_reason(&self, known: &[(Reason, IntCounter)], vec: &IntCounterVec, reason: Reason) {
        match known.iter().find(|(r, _)| *r == reason) {
            Some((_, c)) => c.inc(),
            None => vec.with_label_values(&[&self.name, reason.as_str()]).inc(),
        }
    }
}

/// Holds a session in `postern_sessions_active` until dropped.
#[derive(Debug)]
pub struct SessionGuard(Arc<ListenerMetrics>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}
