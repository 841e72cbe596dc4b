//! The queue runner: takes committed messages, sends each to its route's upstreams in
//! failover order, records per-recipient outcomes in the spool, and schedules retries with
//! backoff until the message's maximum age.
//!
//! Rules (BRIEF.md): a 5xx for one recipient fails only that recipient; 4xx and connection
//! failures are retried; a timeout or drop after the final dot ("maybe delivered") is
//! recorded in the message's state (upstream, time, bytes sent) and retried at that
//! upstream only, after `queue.ambiguous_retry`, never handed to another upstream, so
//! failover does not blindly duplicate; a message leaves the spool only once no recipient
//! is pending.
//!
//! An upstream that lacks an extension the message needs (SMTPUTF8, 8BITMIME, a large
//! enough SIZE) is passed over for the next one of the route. Only when every upstream of
//! the route lacked one does the message fail for good; if any was merely unavailable, it
//! might take the message once it is back, so the message waits for the next attempt.
//!
//! The runner also closes pooled upstream connections: those idle past their
//! `idle_timeout` periodically, and all idle ones when it stops.

mod body;
mod ledger;
mod outcome;
mod shape;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::{MissedTickBehavior, timeout};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::delivery::body::{BodyReader, body_tail};
use crate::delivery::ledger::Ledger;
use crate::delivery::outcome::Report;
use crate::rules::{LiveRules, Timing};
use crate::shutdown::Shutdown;
use crate::spool::{Ambiguous, Envelope, RcptStatus, Spool, schedule};
use crate::telemetry::events::{self, Attempt};
use crate::telemetry::metrics::{Completion, Metrics, RcptOutcome, UpstreamMetrics};
use crate::upstream::Upstreams;
use crate::upstream::client::{Outgoing, transmitted_size};
use crate::upstream::error::Capability;
use crate::upstream::shaping::Cap;

/// Most delivery attempts in flight at once; the pools bound connections per upstream,
/// this bounds the tasks (and open spool files) waiting for them.
const MAX_IN_FLIGHT: usize = 1024;

/// Longest a round of QUITs to idle upstream connections may take (periodic reaping, and
/// the close at shutdown). The QUITs run concurrently, so one slow upstream cannot hold up
/// the others; connections still open after this are closed without QUIT.
const QUIT_LIMIT: Duration = Duration::from_secs(5);

/// What the runner's task is told.
#[derive(Debug)]
enum Job {
    /// A message to deliver, now or when it is due.
    Deliver(Envelope),
    /// A message left the queue (for the queue gauges).
    Left {
        /// When it was received.
        received_unix: u64,
        /// Its queue id.
        id: String,
    },
}

/// Hands committed messages to the runner.
#[derive(Debug, Clone)]
pub struct DeliveryHandle {
    tx: mpsc::UnboundedSender<Job>,
}

impl DeliveryHandle {
    /// Queues a message for delivery now (it is already durable in the spool).
    pub fn submit(&self, env: Envelope) {
        // The runner only stops at shutdown; the message stays in the spool for the next start.
        let _ = self.tx.send(Job::Deliver(env));
    }

    /// Tells the runner a message left the queue.
    fn left(&self, env: &Envelope) {
        let _ = self.tx.send(Job::Left {
            received_unix: env.received_unix,
            id: env.id.to_string(),
        });
    }
}

/// Starts the runner with what the spool recovered.
pub fn start(
    spool: Spool,
    rules: LiveRules,
    clock: Clock,
    recovered: Vec<Envelope>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) -> DeliveryHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = DeliveryHandle { tx };
    let runner = Runner {
        spool,
        rules,
        clock,
        back: handle.clone(),
        shutdown: shutdown.clone(),
        metrics,
    };
    for env in recovered {
        handle.submit(env);
    }
    shutdown.tracker.spawn(runner.run(rx));
    handle
}

struct Runner {
    spool: Spool,
    /// Loaded afresh for each attempt, so a reload reaches the next attempts.
    rules: LiveRules,
    clock: Clock,
    back: DeliveryHandle,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
}

impl Runner {
    /// The upstreams of the current rules.
    fn upstreams(&self) -> Arc<Upstreams> {
        self.rules.load().upstreams.clone()
    }

    async fn run(self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let this = Arc::new(self);
        let mut ledger = Ledger::new(this.metrics.queue.clone());
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        // Deferred messages by due time; the envelope is small, the body stays on disk.
        let mut waiting: BinaryHeap<Reverse<(u64, String, EnvelopeBox)>> = BinaryHeap::new();
        let period = this.upstreams().reap_period();
        let mut reap = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        reap.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A test moving the clock on: recompute the sleep to the next due time.
        let mut moved = this.clock.moved();
        loop {
            let next_due = waiting.peek().map(|Reverse((due, _, _))| *due);
            let sleep = next_due.map_or(Duration::from_secs(3600), |due| {
                Duration::from_millis(
                    due.saturating_mul(1000)
                        .saturating_sub(this.clock.unix_millis()),
                )
            });
            tokio::select! {
                () = this.shutdown.stop.cancelled() => break,
                received = rx.recv() => match received {
                    Some(Job::Left { received_unix, id }) => ledger.left(received_unix, id),
                    Some(Job::Deliver(env)) => {
                        ledger.arrived(&env);
                        if env.next_attempt_unix > this.clock.unix() {
                            waiting.push(Reverse((env.next_attempt_unix, env.id.to_string(), EnvelopeBox(env))));
                        } else {
                            this.clone().spawn_attempt(env, &in_flight).await;
                        }
                    }
                    None => break,
                },
                () = tokio::time::sleep(sleep) => {
                    let now = this.clock.unix();
                    while waiting.peek().is_some_and(|Reverse((due, _, _))| *due <= now) {
                        if let Some(Reverse((_, _, EnvelopeBox(env)))) = waiting.pop() {
                            this.clone().spawn_attempt(env, &in_flight).await;
                        }
                    }
                }
                _ = reap.tick() => this.spawn_reap(),
                Ok(()) = moved.changed() => {}
            }
        }
        info!(
            deferred = waiting.len(),
            "delivery runner stopped; the spool keeps the rest"
        );
        this.close_connections(&in_flight).await;
    }

    /// Closes pooled connections idle past their `idle_timeout`, in a task of its own so
    /// the loop keeps dispatching; bounded, and abandoned at shutdown (the drain closes
    /// whatever is left).
    fn spawn_reap(&self) {
        let upstreams = self.upstreams();
        let stop = self.shutdown.stop.clone();
        self.shutdown.tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                _ = timeout(QUIT_LIMIT, upstreams.reap_idle()) => {}
            }
        });
    }

    /// The drain: waits until the attempts in flight have handed their connections back
    /// (or the grace period is over), then says QUIT on every idle connection (RFC 5321
    /// 4.1.1.10), bounded by [`QUIT_LIMIT`].
    async fn close_connections(&self, in_flight: &Semaphore) {
        let all = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
        tokio::select! {
            _ = in_flight.acquire_many(all) => {}
            () = self.shutdown.force.cancelled() => {}
        }
        if timeout(QUIT_LIMIT, self.upstreams().close_idle())
            .await
            .is_err()
        {
            warn!("upstream connections closed without QUIT: QUIT took too long");
        }
    }

    async fn spawn_attempt(self: Arc<Self>, env: Envelope, in_flight: &Arc<Semaphore>) {
        let permit = tokio::select! {
            () = self.shutdown.stop.cancelled() => return,
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let tracker = self.shutdown.tracker.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let id = env.id.to_string();
            let span = tracing::info_span!("delivery", queue_id = %id);
            let _ = tracing::Instrument::instrument(self.attempt(env), span).await;
        });
    }

    /// One delivery attempt over the route, then the bookkeeping.
    async fn attempt(&self, mut env: Envelope) {
        // One snapshot for the whole attempt: its upstreams, route and retry timing.
        let rules = self.rules.load_full();
        let upstreams = &rules.upstreams;
        let Some(route) = upstreams.router().route(&env.sender) else {
            // Accepted under rules that had a route (a reload may have changed them since):
            // keep it and retry until queue.max_age, so a route dropped by a mistaken
            // reload bounces nothing if it is put back.
            warn!(sender = %env.sender, "no route for this sender in the current configuration; retrying later");
            self.finish(env, rules.timing, After::Backoff);
            return;
        };
        // A message that may already be at an upstream goes there or nowhere.
        let pinned: [String; 1];
        let route = match &env.maybe_delivered {
            Some(amb) if upstreams.contains(&amb.upstream) => {
                pinned = [amb.upstream.clone()];
                &pinned[..]
            }
            Some(amb) => {
                warn!(upstream = %amb.upstream, "the upstream that may have this message is no longer configured; trying the route");
                route
            }
            None => route,
        };
        let mut tried = Vec::with_capacity(route.len());
        for upstream in route {
            let result = self.try_upstream(upstreams, upstream, &mut env).await;
            match &result {
                Tried::Done => {}
                Tried::Failover(why) => {
                    warn!(upstream = %upstream, error = %why, "upstream failed; trying the next one");
                }
                Tried::Unsupported(missing) => {
                    info!(upstream = %upstream, missing = %missing, "upstream cannot take this message; trying the next one");
                }
                Tried::RetryLater(why) => {
                    warn!(upstream = %upstream, error = %why, "delivery deferred");
                }
                Tried::MaybeDelivered(why) => {
                    warn!(upstream = %upstream, error = %why, retry_in = ?rules.timing.ambiguous_retry, "maybe delivered: no reply to the final dot; trying again at this upstream only");
                }
                // Logged where it is decided.
                Tried::Shaped { .. } => {}
            }
            // A paused upstream is passed over like an unavailable one; a capped one is
            // waited for (its account's allowance is not spilled onto the next upstream).
            let stop = !matches!(
                result,
                Tried::Failover(_)
                    | Tried::Unsupported(_)
                    | Tried::Shaped {
                        cap: Cap::Throttled,
                        ..
                    }
            );
            tried.push((upstream.as_str(), result));
            if stop {
                break;
            }
        }
        if let Some(why) = unsupported_everywhere(&tried) {
            fail_pending(&mut env, &route.join(","), &why);
        }
        let after = match (tried.last(), shape::only_held_back(&tried)) {
            (Some((_, Tried::MaybeDelivered(_))), _) => After::Ambiguous,
            (_, Some(until_ms)) => After::Shaped { until_ms },
            _ => After::Backoff,
        };
        self.finish(env, rules.timing, after);
    }

    /// Tries the pending recipients at `upstream`; logs and counts the attempt.
    async fn try_upstream(
        &self,
        upstreams: &Upstreams,
        upstream: &str,
        env: &mut Envelope,
    ) -> Tried {
        let pending: Vec<usize> = (0..env.recipients.len())
            .filter(|&i| env.recipients[i].status == RcptStatus::Pending)
            .collect();
        if pending.is_empty() {
            return Tried::Done;
        }
        let metrics = self.metrics.upstream(upstream);
        if let Some(held) =
            shape::admit(upstreams, upstream, env, self.clock.unix_millis(), &metrics)
        {
            return held;
        }
        let started = std::time::Instant::now();
        let (tried, report) = self
            .send(upstreams, upstream, env, &pending, &metrics)
            .await;
        let now_ms = self.clock.unix_millis();
        let tried = shape::settle(upstreams, upstream, env, tried, &report, now_ms, &metrics);
        metrics.attempt(report.result);
        events::attempt(&Attempt {
            queue_id: env.id.as_str(),
            upstream,
            attempt: env.attempts.saturating_add(1),
            recipients: pending.len(),
            reply: &report.reply,
            code: report.code,
            duration: started.elapsed(),
            result: report.result,
        });
        tried
    }

    /// Sends the message to `upstream` for the `pending` recipients and records their
    /// outcomes in `env`.
    async fn send(
        &self,
        upstreams: &Upstreams,
        upstream: &str,
        env: &mut Envelope,
        pending: &[usize],
        metrics: &UpstreamMetrics,
    ) -> (Tried, Report) {
        let local = |why: String| (Tried::RetryLater(why.clone()), Report::local(why));
        let body = match self.spool.open_body(&env.id) {
            Ok(b) => b,
            Err(e) => return local(format!("cannot read the spool file: {e}")),
        };
        let tail = match body_tail(&body.file, body.body_len) {
            Ok(tail) => tail,
            Err(e) => return local(format!("cannot read the spool file: {e}")),
        };
        let addresses: Vec<String> = pending
            .iter()
            .map(|&i| env.recipients[i].address.clone())
            .collect();
        // The spool file holds more after the body (prefix, envelope, trailer): the
        // upstream must read exactly `body_len` bytes.
        let mut file = BodyReader {
            file: body.file,
            left: body.body_len,
        };
        let mut out = Outgoing {
            sender: &env.sender,
            recipients: &addresses,
            prefix: &body.prefix,
            body: &mut file,
            // RFC 1870 5: what is transmitted, the prefix included, not only the body.
            size: transmitted_size(&body.prefix, body.body_len, &tail),
            body_8bit: env.body_8bit,
            smtputf8: env.smtputf8,
        };
        let id = env.id.to_string();
        let size = out.size;
        let result = upstreams.deliver(upstream, &id, &mut out).await;
        let accepted_ms = match env.accepted_ms {
            0 => env.received_unix.saturating_mul(1000),
            ms => ms,
        };
        let since_accepted =
            Duration::from_millis(self.clock.unix_millis().saturating_sub(accepted_ms));
        let (tried, report) =
            outcome::apply(env, pending, upstream, result, metrics, since_accepted);
        match tried {
            Tried::MaybeDelivered(_) => {
                env.maybe_delivered = Some(Ambiguous {
                    upstream: upstream.to_owned(),
                    at_unix: self.clock.unix(),
                    bytes: size,
                });
            }
            // The upstream answered for the message: whatever it had is settled.
            Tried::Done => env.maybe_delivered = None,
            Tried::Failover(_)
            | Tried::Unsupported(_)
            | Tried::RetryLater(_)
            | Tried::Shaped { .. } => {}
        }
        (tried, report)
    }

    /// Removes, dead-letters or reschedules the message after an attempt; `after` says how
    /// long a message with recipients left waits.
    fn finish(&self, mut env: Envelope, timing: Timing, after: After) {
        let pending = env
            .recipients
            .iter()
            .any(|r| r.status == RcptStatus::Pending);
        let expired =
            self.clock.unix().saturating_sub(env.received_unix) >= timing.max_age.as_secs();
        if pending && expired {
            fail_pending(
                &mut env,
                "-",
                "message expired in the queue (queue.max_age)",
            );
        }
        let age = Duration::from_secs(self.clock.unix().saturating_sub(env.received_unix));
        let id = env.id.to_string();
        if env
            .recipients
            .iter()
            .any(|r| r.status == RcptStatus::Pending)
        {
            self.defer(env, timing, after);
        } else if env
            .recipients
            .iter()
            .any(|r| matches!(r.status, RcptStatus::Failed { .. }))
        {
            match self.spool.move_to_failed(&env) {
                Ok(()) => {
                    warn!(queue_id = %id, "message failed for some recipients; kept in the failed directory")
                }
                Err(e) => warn!(queue_id = %id, error = %e, "cannot move to the failed directory"),
            }
            let how = if pending && expired {
                Completion::Expired
            } else {
                Completion::Failed
            };
            self.completed(&env, how, age);
        } else {
            match self.spool.remove(&env.id) {
                Ok(()) => info!(queue_id = %id, "message delivered and removed from the queue"),
                Err(e) => {
                    warn!(queue_id = %id, error = %e, "delivered, but cannot remove the spool file")
                }
            }
            self.completed(&env, Completion::Delivered, age);
        }
    }

    /// Schedules the next attempt (with backoff, unless the message was only held back),
    /// records it, and hands the message back.
    fn defer(&self, mut env: Envelope, timing: Timing, after: After) {
        let now_ms = self.clock.unix_millis();
        let due_ms = match after {
            // Not an attempt: the counter stays, and it goes when the cap allows.
            After::Shaped { until_ms } => until_ms.max(now_ms),
            After::Ambiguous | After::Backoff => {
                env.attempts += 1;
                let seed = env.received_unix ^ u64::from(env.attempts);
                let delay = match after {
                    After::Ambiguous => timing.ambiguous_retry,
                    _ => schedule::next_delay(
                        env.attempts,
                        timing.min_backoff,
                        timing.max_backoff,
                        seed,
                    ),
                };
                // No sooner than `delay` from now.
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                now_ms.saturating_add(delay_ms.max(1000))
            }
        };
        // The due time is kept in whole seconds: round up (rounding down could retry before
        // the backoff or the booked time).
        env.next_attempt_unix = due_ms.div_ceil(1000);
        let delay = std::time::Duration::from_millis(due_ms.saturating_sub(now_ms));
        let id = env.id.as_str();
        if let After::Shaped { .. } = after {
            // Nothing to record: no attempt was made, and after a restart the message is
            // admitted afresh.
            info!(queue_id = %id, wait = ?delay, "message waits for its upstream's cap");
            self.back.submit(env);
            return;
        }
        if let Err(e) = self.spool.update(&env) {
            warn!(queue_id = %id, error = %e, "cannot record delivery state");
        }
        info!(queue_id = %id, attempts = env.attempts, retry_in = ?delay, "message deferred");
        self.back.submit(env);
    }

    /// Logs and counts a message leaving the queue, and tells the ledger.
    fn completed(&self, env: &Envelope, how: Completion, age: Duration) {
        events::completed(env.id.as_str(), how, env.attempts.saturating_add(1), age);
        self.metrics.completed(how);
        self.back.left(env);
    }
}

/// Marks every pending recipient failed with `why`; `upstream` names where (`-`: nowhere).
fn fail_pending(env: &mut Envelope, upstream: &str, why: &str) {
    let id = env.id.to_string();
    for rcpt in env
        .recipients
        .iter_mut()
        .filter(|r| r.status == RcptStatus::Pending)
    {
        events::recipient(&id, upstream, &rcpt.address, RcptOutcome::Failed, why);
        rcpt.status = RcptStatus::Failed { reply: why.into() };
    }
}

/// When the route was tried to its end and every upstream lacked an extension the message
/// needs, the reply to fail it with: the first upstream's (the route's primary) code, per
/// [`Capability::failure`], and what each upstream lacked. `None` when any upstream took it
/// or answered for its recipients, or was merely unavailable (down, 4xx, ...): that one
/// may take the message later, so it is retried instead (RFC 6531 3.2 and RFC 6152 3 let a
/// client try another server before giving up).
fn unsupported_everywhere(tried: &[(&str, Tried)]) -> Option<String> {
    let mut missing = Vec::with_capacity(tried.len());
    for (upstream, result) in tried {
        match result {
            Tried::Unsupported(capability) => missing.push((*upstream, capability)),
            Tried::Done
            | Tried::Failover(_)
            | Tried::RetryLater(_)
            | Tried::MaybeDelivered(_)
            | Tried::Shaped { .. } => {
                return None;
            }
        }
    }
    let (_, first) = missing.first()?;
    let each: Vec<String> = missing
        .iter()
        .map(|(upstream, capability)| format!("{upstream}: {capability}"))
        .collect();
    Some(format!("{} ({})", first.failure(), each.join("; ")))
}

/// The outcome of trying one upstream of the route.
#[derive(Debug)]
enum Tried {
    /// Every pending recipient got an answer (accepted, rejected, or deferred by 4xx).
    Done,
    /// This upstream is unavailable now (down, 4xx, TLS, ...): try the next one.
    Failover(String),
    /// This upstream lacks an extension the message needs: try the next one.
    Unsupported(Capability),
    /// Stop for now and retry the same route later.
    RetryLater(String),
    /// The final dot got no reply: the upstream may have the message. Stop, and retry at
    /// this upstream only, after `queue.ambiguous_retry`.
    MaybeDelivered(String),
    /// Held back by the upstream's cap or pause until `until_ms`: not an attempt.
    Shaped {
        /// When the upstream allows it, unix milliseconds.
        until_ms: u64,
        /// What holds it back.
        cap: Cap,
    },
}

/// How a message with recipients left waits after an attempt.
#[derive(Debug, Clone, Copy)]
enum After {
    /// The next attempt after the retry backoff.
    Backoff,
    /// Maybe delivered: after `queue.ambiguous_retry`.
    Ambiguous,
    /// Only held back by caps: at the time they allow, not counted as an attempt.
    Shaped {
        /// Unix milliseconds.
        until_ms: u64,
    },
}

/// An envelope in the waiting heap, ordered only by the (due, id) beside it.
struct EnvelopeBox(Envelope);

impl PartialEq for EnvelopeBox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for EnvelopeBox {}
impl PartialOrd for EnvelopeBox {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for EnvelopeBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn utf8() -> Tried {
        Tried::Unsupported(Capability::SmtpUtf8)
    }

    fn eight() -> Tried {
        Tried::Unsupported(Capability::EightBitMime)
    }

    fn big() -> Tried {
        Tried::Unsupported(Capability::Size {
            size: 2000,
            limit: 1000,
        })
    }

    fn down() -> Tried {
        Tried::Failover("connect refused".into())
    }

    /// A message fails for good only when every upstream of the route lacked something;
    /// one that took it, answered for it, or was merely unavailable keeps it pending.
    #[test]
    fn fails_for_good_only_when_no_upstream_can_take_it() {
        // (what each upstream of the route answered, in order; the failure, if any)
        type Row = (Vec<(&'static str, Tried)>, Option<&'static str>);
        let rows: Vec<Row> = vec![
            (
                vec![("a", utf8())],
                Some(
                    "553 5.6.7 the message needs SMTPUTF8 and no upstream of its route offers it \
                     (a: SMTPUTF8 needed but not offered)",
                ),
            ),
            (
                vec![("a", eight()), ("b", eight())],
                Some(
                    "554 5.6.3 the message has 8-bit content and no upstream of its route offers \
                     8BITMIME (a: 8BITMIME needed but not offered; b: 8BITMIME needed but not offered)",
                ),
            ),
            (
                vec![("a", big()), ("b", utf8())],
                Some(
                    "552 5.3.4 the message is larger than every upstream of its route accepts \
                     (a: message of 2000 octets exceeds SIZE 1000; b: SMTPUTF8 needed but not offered)",
                ),
            ),
            (vec![("a", utf8()), ("b", Tried::Done)], None),
            (vec![("a", utf8()), ("b", down())], None),
            (vec![("a", down()), ("b", utf8())], None),
            (
                vec![("a", utf8()), ("b", Tried::RetryLater("maybe".into()))],
                None,
            ),
            (vec![("a", Tried::Done)], None),
            (vec![("a", down())], None),
            (vec![], None),
        ];
        for (tried, expected) in rows {
            assert_eq!(
                unsupported_everywhere(&tried).as_deref(),
                expected,
                "{tried:?}"
            );
        }
    }
}
