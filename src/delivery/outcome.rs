//! What one delivery attempt came to: each recipient's new status in the envelope, its log
//! line and count, the attempt's result and deciding reply, the upstream's failure stage
//! and health, and the next step for the route ([`Tried`]).

use std::time::Duration;

use crate::delivery::failover::Tried;
use crate::spool::{Envelope, RcptStatus, Recipient};
use crate::telemetry::events;
use crate::telemetry::metrics::{AttemptResult, RcptOutcome, UpstreamMetrics};
use crate::upstream::client::{RcptOutcome as Sent, RcptResult};
use crate::upstream::error::{Error, Stage};
use crate::upstream::shaping::is_throttling;

/// The attempt as its log line and counter report it.
#[derive(Debug)]
pub(super) struct Report {
    pub(super) result: AttemptResult,
    /// The deciding reply's code (0: none, a local or connection-level problem).
    pub(super) code: u16,
    /// The deciding reply, or what went wrong.
    pub(super) reply: String,
    /// A reply asked to slow down ([`is_throttling`]).
    pub(super) throttled: bool,
}

impl Report {
    /// An attempt that failed before reaching the upstream (the spool file unreadable).
    pub(super) fn local(why: String) -> Report {
        Report {
            result: AttemptResult::Deferred,
            code: 0,
            reply: why,
            throttled: false,
        }
    }
}

/// Whether failing at `stage` means the upstream could not be reached or logged in to
/// (it is then reported down until an attempt gets further).
fn unreachable(stage: Stage) -> bool {
    stage.is_session_setup() || stage == Stage::Directory
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
            // RFC 5321 3.8: a 421 (to RCPT, DATA or the dot) means the upstream is closing
            // the channel, not judging these recipients: what it did not take goes on to the
            // route's next upstream, as for a 421 to MAIL.
            let closing = outcomes.iter().find_map(|o| match &o.result {
                RcptResult::Rejected(reply, _) if reply.code == 421 => Some(reply.to_string()),
                _ => None,
            });
            let report = recipients(env, pending, upstream, outcomes, metrics);
            if report.result == AttemptResult::Delivered {
                metrics.delivered_after(since_accepted);
            }
            match closing {
                Some(reply) => (
                    Tried::Failover(format!("upstream {upstream}: {reply}")),
                    report,
                ),
                None => (Tried::Done, report),
            }
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
    let mut tally = Tally::default();
    for outcome in outcomes {
        let Some(&i) = pending.get(outcome.index) else {
            continue;
        };
        let rcpt = &mut env.recipients[i];
        if let RcptResult::Rejected(reply, _) = &outcome.result {
            tally.throttled |= is_throttling(reply);
        }
        let (counted, reply, stage) = settle(rcpt, outcome.result, upstream);
        events::recipient(id, upstream, &rcpt.address, counted, &reply);
        tally.add(counted, reply, stage);
    }
    tally.report(metrics)
}

/// Sets a recipient's status from the upstream's answer; returns how it counts, the reply
/// to log, and the stage of a refusal.
fn settle(
    rcpt: &mut Recipient,
    result: RcptResult,
    upstream: &str,
) -> (RcptOutcome, String, Option<Stage>) {
    match result {
        RcptResult::Accepted(reply) => {
            rcpt.status = RcptStatus::Delivered {
                upstream: upstream.into(),
                reply: reply.clone(),
            };
            (RcptOutcome::Delivered, reply, None)
        }
        RcptResult::Rejected(reply, stage) => {
            let text = reply.to_string();
            if !reply.is_permanent() {
                return (RcptOutcome::Deferred, text, Some(stage));
            }
            rcpt.status = RcptStatus::Failed {
                reply: text.clone(),
            };
            rcpt.dsn.remote = Some(upstream.into());
            (RcptOutcome::Failed, text, Some(stage))
        }
    }
}

/// The recipients of one attempt, counted by outcome.
#[derive(Debug, Default)]
struct Tally {
    /// Recipients per outcome, indexed by [`RcptOutcome`] (`outcome as usize`).
    counts: [usize; 3],
    /// The first reply of each outcome: the attempt reports the one of its result.
    first: [Option<(u16, String)>; 3],
    /// The stages of the refusals, each once.
    stages: Vec<&'static str>,
    /// A refusal asked to slow down.
    throttled: bool,
}

impl Tally {
    fn add(&mut self, outcome: RcptOutcome, reply: String, stage: Option<Stage>) {
        let i = outcome as usize;
        self.counts[i] += 1;
        self.first[i].get_or_insert_with(|| (code_of(&reply), reply));
        if let Some(stage) = stage.map(Stage::as_str)
            && !self.stages.contains(&stage)
        {
            self.stages.push(stage);
        }
    }

    /// Counts the recipients and refusal stages, and reports the attempt.
    fn report(mut self, metrics: &UpstreamMetrics) -> Report {
        let [delivered, deferred, failed] = self.counts;
        metrics.recipients(RcptOutcome::Delivered, delivered);
        metrics.recipients(RcptOutcome::Deferred, deferred);
        metrics.recipients(RcptOutcome::Failed, failed);
        for stage in &self.stages {
            metrics.failure(stage, false);
        }
        let (result, shown) = if deferred > 0 {
            (AttemptResult::Deferred, RcptOutcome::Deferred)
        } else if delivered > 0 {
            (AttemptResult::Delivered, RcptOutcome::Delivered)
        } else {
            (AttemptResult::Failed, RcptOutcome::Failed)
        };
        let (code, reply) = self.first[shown as usize].take().unwrap_or_default();
        Report {
            result,
            code,
            reply,
            throttled: self.throttled,
        }
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
    let throttled = e.reply().is_some_and(is_throttling);
    let report = |result| Report {
        result,
        code,
        reply: reply.clone(),
        throttled,
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
            Tried::MaybeDelivered(e.to_string()),
            report(AttemptResult::MaybeDelivered),
        );
    }
    if e.fails_over() {
        return (
            Tried::Failover(e.to_string()),
            report(AttemptResult::Deferred),
        );
    }
    if !e.is_permanent() {
        // A live upstream deferred the transaction: wait, do not hop (see
        // `Error::fails_over`).
        return (
            Tried::RetryLater(e.to_string()),
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
        if e.reply().is_some() {
            rcpt.dsn.remote = Some(upstream.into());
        }
    }
    metrics.recipients(RcptOutcome::Failed, pending.len());
    (Tried::Done, report(AttemptResult::Failed))
}

/// The code a reply's text starts with (0 when it does not).
fn code_of(reply: &str) -> u16 {
    reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
}
