//! What one delivery attempt came to: each recipient's new status in the envelope, its log
//! line and count, the attempt's result and deciding reply, the upstream's failure stage
//! and health, and the next step for the route ([`Tried`]).

use std::time::Duration;

use crate::delivery::Tried;
use crate::spool::{Envelope, RcptStatus};
use crate::telemetry::events;
use crate::telemetry::metrics::{AttemptResult, RcptOutcome, UpstreamMetrics};
use crate::upstream::client::{RcptOutcome as Sent, RcptResult};
use crate::upstream::error::{Error, Stage};

/// The attempt as its log line and counter report it.
#[derive(Debug)]
pub(super) struct Report {
    pub(super) result: AttemptResult,
    /// The deciding reply's code (0: none, a local or connection-level problem).
    pub(super) code: u16,
    /// The deciding reply, or what went wrong.
    pub(super) reply: String,
}

impl Report {
    /// An attempt that failed before reaching the upstream (the spool file unreadable).
    pub(super) fn local(why: String) -> Report {
        Report {
            result: AttemptResult::Deferred,
            code: 0,
            reply: why,
        }
    }
}

/// Whether failing at `stage` means the upstream could not be reached or logged in to
/// (it is then reported down until an attempt gets further).
fn unreachable(stage: Stage) -> bool {
    matches!(
        stage,
        Stage::Connect
            | Stage::TlsHandshake
            | Stage::Greeting
            | Stage::Ehlo
            | Stage::StartTls
            | Stage::Auth
            | Stage::Directory
    )
}

/// Applies what the upstream answered for the `pending` recipients of `env`.
pub(super) fn apply(
    env: &mut Envelope,
    pending: &[usize],
    upstream: &str,
    result: Result<Vec<Sent>, Error>,
    metrics: &UpstreamMetrics,
    since_accepted: Duration,
) -> (Tried, Report) {
    match result {
        Ok(outcomes) => {
            metrics.reached();
            let report = recipients(env, pending, upstream, outcomes, metrics);
            if report.result == AttemptResult::Delivered {
                metrics.delivered_after(since_accepted);
            }
            (Tried::Done, report)
        }
        Err(e) => failed(env, pending, upstream, &e, metrics),
    }
}

/// Records each recipient's outcome; the attempt is delivered unless a recipient was
/// deferred, or every one refused for good.
fn recipients(
    env: &mut Envelope,
    pending: &[usize],
    upstream: &str,
    outcomes: Vec<Sent>,
    metrics: &UpstreamMetrics,
) -> Report {
    let id = env.id.as_str();
    let (mut delivered, mut deferred, mut failed) = (0, 0, 0);
    // The first reply of each outcome: the attempt reports the one of its result.
    let mut first: [Option<(u16, String)>; 3] = [None, None, None];
    let mut stages: Vec<&str> = Vec::new();
    for outcome in outcomes {
        let Some(&i) = pending.get(outcome.index) else {
            continue;
        };
        let rcpt = &mut env.recipients[i];
        let (counted, reply) = match outcome.result {
            RcptResult::Accepted(reply) => {
                delivered += 1;
                let shown = (RcptOutcome::Delivered, reply.clone());
                rcpt.status = RcptStatus::Delivered {
                    upstream: upstream.into(),
                    reply,
                };
                shown
            }
            RcptResult::Rejected(reply, stage) => {
                if !stages.contains(&stage.as_str()) {
                    stages.push(stage.as_str());
                }
                let text = reply.to_string();
                if reply.is_permanent() {
                    failed += 1;
                    rcpt.status = RcptStatus::Failed {
                        reply: text.clone(),
                    };
                    (RcptOutcome::Failed, text)
                } else {
                    deferred += 1;
                    (RcptOutcome::Deferred, text)
                }
            }
        };
        events::recipient(id, upstream, &rcpt.address, counted, &reply);
        let slot = match counted {
            RcptOutcome::Delivered => &mut first[0],
            RcptOutcome::Deferred => &mut first[1],
            RcptOutcome::Failed => &mut first[2],
        };
        slot.get_or_insert_with(|| (code_of(&reply), reply));
    }
    metrics.recipients(RcptOutcome::Delivered, delivered);
    metrics.recipients(RcptOutcome::Deferred, deferred);
    metrics.recipients(RcptOutcome::Failed, failed);
    for stage in stages {
        metrics.failure(stage, false);
    }
    let (result, shown) = if deferred > 0 {
        (AttemptResult::Deferred, RcptOutcome::Deferred)
    } else if delivered > 0 {
        (AttemptResult::Delivered, RcptOutcome::Delivered)
    } else {
        (AttemptResult::Failed, RcptOutcome::Failed)
    };
    let [ok, later, never] = first;
    let (code, reply) = match shown {
        RcptOutcome::Delivered => ok,
        RcptOutcome::Deferred => later,
        RcptOutcome::Failed => never,
    }
    .unwrap_or_default();
    Report {
        result,
        code,
        reply,
    }
}

/// The whole attempt failed with `e`.
fn failed(
    env: &mut Envelope,
    pending: &[usize],
    upstream: &str,
    e: &Error,
    metrics: &UpstreamMetrics,
) -> (Tried, Report) {
    let (code, reply) = match e.reply() {
        Some(r) => (r.code, r.to_string()),
        None => (0, e.to_string()),
    };
    let report = |result| Report {
        result,
        code,
        reply: reply.clone(),
    };
    if let Some(missing) = e.unsupported() {
        // Nothing was sent: a verdict on this upstream's extensions, not a failure.
        metrics.reached();
        return (
            Tried::Unsupported(missing.clone()),
            report(AttemptResult::Deferred),
        );
    }
    let stage = e.stage();
    let down = unreachable(stage);
    metrics.failure(stage.as_str(), down);
    if !down {
        metrics.reached();
    }
    if e.is_maybe_delivered() {
        return (
            Tried::RetryLater(e.to_string()),
            report(AttemptResult::MaybeDelivered),
        );
    }
    if !e.is_permanent() {
        return (
            Tried::Failover(e.to_string()),
            report(AttemptResult::Deferred),
        );
    }
    let id = env.id.as_str();
    let text = e.to_string();
    for &i in pending {
        let rcpt = &mut env.recipients[i];
        events::recipient(id, upstream, &rcpt.address, RcptOutcome::Failed, &text);
        rcpt.status = RcptStatus::Failed {
            reply: text.clone(),
        };
    }
    metrics.recipients(RcptOutcome::Failed, pending.len());
    (Tried::Done, report(AttemptResult::Failed))
}

/// The code a reply's text starts with (0 when it does not).
fn code_of(reply: &str) -> u16 {
    reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
}
