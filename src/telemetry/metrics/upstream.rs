//! One upstream's series and its health, resolved on first use.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use super::Families;
use super::labels::{AttemptResult, RcptOutcome, STAGES};
use crate::upstream::shaping::Cap;

/// One upstream's resolved handles and its health.
#[derive(Debug)]
pub struct UpstreamMetrics {
    name: String,
    attempts: [IntCounter; 4],
    recipients: [IntCounter; 3],
    latency: Histogram,
    up: IntGauge,
    failures: IntCounterVec,
    /// By [`Cap`], in `Cap::ALL` order.
    shaped: [IntCounter; 4],
    throttled: IntCounter,
    circuit_open: IntGauge,
    circuit_openings: IntCounter,
}

impl UpstreamMetrics {
    pub(super) fn new(f: &Families, name: &str) -> UpstreamMetrics {
        for stage in STAGES {
            f.upstream_failures.with_label_values(&[name, stage]);
        }
        let up = f.upstream_up.with_label_values(&[name]);
        up.set(1);
        f.upstream_open.with_label_values(&[name]);
        f.upstream_busy.with_label_values(&[name]);
        UpstreamMetrics {
            name: name.to_owned(),
            attempts: AttemptResult::ALL
                .map(|r| f.delivery_attempts.with_label_values(&[name, r.as_str()])),
            recipients: RcptOutcome::ALL
                .map(|r| f.delivery_recipients.with_label_values(&[name, r.as_str()])),
            latency: f.delivery_latency.with_label_values(&[name]),
            up,
            failures: f.upstream_failures.clone(),
            shaped: Cap::ALL.map(|c| f.upstream_shaped.with_label_values(&[name, c.as_str()])),
            throttled: f.upstream_throttled.with_label_values(&[name]),
            circuit_open: f.upstream_circuit_open.with_label_values(&[name]),
            circuit_openings: f.upstream_circuit_openings.with_label_values(&[name]),
        }
    }

    /// Counts an attempt by its result.
    pub fn attempt(&self, result: AttemptResult) {
        self.attempts[result as usize].inc();
    }

    /// Counts recipient outcomes.
    pub fn recipients(&self, outcome: RcptOutcome, n: usize) {
        self.recipients[outcome as usize].inc_by(n as u64);
    }

    /// Records the time from acceptance to the upstream's 250.
    pub fn delivered_after(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    /// Counts a failure at `stage`; `unreachable` marks the upstream down (it could not
    /// be reached or logged in to) until its next successful attempt.
    pub fn failure(&self, stage: &str, unreachable: bool) {
        self.failures.with_label_values(&[&self.name, stage]).inc();
        if unreachable {
            self.up.set(0);
        }
    }

    /// Counts a message held back by `cap`.
    pub fn shaped(&self, cap: Cap) {
        self.shaped[cap as usize].inc();
    }

    /// Counts a throttling reply.
    pub fn throttled(&self) {
        self.throttled.inc();
    }

    /// The upstream answered for the message: it is up.
    pub fn reached(&self) {
        self.up.set(1);
    }

    /// Counts an opening of the circuit breaker.
    pub fn circuit_opened(&self) {
        self.circuit_openings.inc();
        self.circuit_open.set(1);
    }

    /// Sets whether the circuit breaker skips the upstream now.
    pub fn set_circuit_open(&self, open: bool) {
        self.circuit_open.set(i64::from(open));
    }

    /// Whether the latest attempt reached the upstream (or none was made yet).
    pub fn is_up(&self) -> bool {
        self.up.get() != 0
    }
}
