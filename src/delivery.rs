//! The queue runner: takes committed messages, sends each to its routes' upstreams in
//! failover order (one transaction per route its recipients take; see `failover.rs`),
//! records per-recipient outcomes in the spool, and schedules retries with backoff until the
//! message's maximum age.
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
mod bounce;
mod control;
mod failover;
mod ledger;
mod outcome;
pub mod queue;
mod report;
mod shape;
mod shape_cluster;
pub mod view;

pub use control::{BOUNCED_BY_ADMIN, HELD_BY_ADMIN};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{MissedTickBehavior, timeout};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::cluster::Redis;
use crate::config::schema::OnAmbiguous;
use crate::delivery::ledger::Ledger;
use crate::delivery::queue::{Answer, Command, ControlError, Queue};
use crate::rules::{LiveRules, Timing};
use crate::shutdown::Shutdown;
use crate::spool::{Envelope, Held, RcptStatus, Spool, schedule};
use crate::telemetry::events;
use crate::telemetry::metrics::{Completion, Metrics, RcptOutcome};
use crate::upstream::Upstreams;

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
    Deliver(Box<Envelope>),
    /// A message left the queue (for the queue gauges).
    Left {
        /// When it was received.
        received_unix: u64,
        /// Its queue id.
        id: String,
    },
    /// An administrator's command, answered on the channel.
    Control(Command, oneshot::Sender<Result<Answer, ControlError>>),
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
        let _ = self.tx.send(Job::Deliver(Box::new(env)));
    }

    /// Carries out an administrator's command in the runner's task and returns its answer.
    pub async fn control(&self, cmd: Command) -> Result<Answer, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Job::Control(cmd, tx))
            .map_err(|_| ControlError::Stopped)?;
        rx.await.unwrap_or(Err(ControlError::Stopped))
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
    redis: Option<Redis>,
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
        redis,
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
    /// The shared Redis, for upstreams with `shaping_scope: cluster`.
    redis: Option<Redis>,
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
        // Every message the runner holds; the envelope is small, the body stays on disk.
        let mut queue = Queue::default();
        let period = this.upstreams().reap_period();
        let mut reap = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        reap.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A test moving the clock on: recompute the sleep to the next due time.
        let mut moved = this.clock.moved();
        loop {
            let sleep = queue.next_due().map_or(Duration::from_secs(3600), |due| {
                Duration::from_millis(
                    due.saturating_mul(1000)
                        .saturating_sub(this.clock.unix_millis()),
                )
            });
            tokio::select! {
                () = this.shutdown.stop.cancelled() => break,
                received = rx.recv() => match received {
                    Some(Job::Left { received_unix, id }) => {
                        queue.remove(&id);
                        ledger.left(received_unix, id);
                    }
                    Some(Job::Deliver(env)) => {
                        ledger.arrived(&env);
                        if let Some(env) = queue.arrive(*env, this.clock.unix()) {
                            this.clone().spawn_attempt(env, &in_flight).await;
                        }
                    }
                    Some(Job::Control(cmd, reply)) => {
                        let _ = reply.send(this.control(&mut queue, cmd).await);
                    }
                    None => break,
                },
                () = tokio::time::sleep(sleep) => {
                    for env in queue.take_due(this.clock.unix()) {
                        this.clone().spawn_attempt(env, &in_flight).await;
                    }
                }
                _ = reap.tick() => this.spawn_reap(),
                Ok(()) = moved.changed() => {}
            }
        }
        info!(
            messages = queue.len(),
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

    /// Reports outcomes (bounce.rs), then removes, dead-letters or reschedules the message
    /// after an attempt; `after` says how long a message with recipients left waits.
    async fn finish(&self, mut env: Envelope, timing: Timing, after: After) {
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
        let reported = self.report_outcomes(&mut env, timing).await;
        let failed = env
            .recipients
            .iter()
            .any(|r| matches!(r.status, RcptStatus::Failed { .. }));
        // `failed/` keeps a failed message for the admin even if its bounce is not queued.
        let kept = failed && timing.bounces.dead_letter();
        let age = Duration::from_secs(self.clock.unix().saturating_sub(env.received_unix));
        let id = env.id.to_string();
        if env
            .recipients
            .iter()
            .any(|r| r.status == RcptStatus::Pending)
        {
            self.warn_delay(&mut env, timing).await;
            self.defer(env, timing, after);
        } else if !reported && !kept && !expired {
            // A notification is not queued yet and nothing else keeps the message: it
            // stays until one is, up to queue.max_age.
            self.defer(env, timing, After::Backoff);
        } else if !reported && !kept {
            self.abandon_notification(&env, age);
        } else if failed {
            self.failed(&env, timing);
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
                    warn!(queue_id = %id, error = %e, "delivered, but cannot remove the spool file");
                    // Record that every recipient is done, so that a restart finishes the
                    // file instead of delivering the message again.
                    if let Err(e) = self.spool.update(&env) {
                        warn!(queue_id = %id, error = %e, "cannot record delivery state");
                    }
                }
            }
            self.completed(&env, Completion::Delivered, age);
        }
    }

    /// Past `queue.max_age` and its delivery status notification still not queued: the
    /// message is kept in `failed/` for the admin rather than retried for ever.
    fn abandon_notification(&self, env: &Envelope, age: Duration) {
        let id = env.id.as_str();
        match self.spool.move_to_failed(env) {
            Ok(()) => {
                warn!(queue_id = %id, "its delivery status notification could not be queued before queue.max_age; kept in the failed directory")
            }
            Err(e) => {
                warn!(queue_id = %id, error = %e, "cannot move the message to the failed directory")
            }
        }
        self.completed(env, Completion::Failed, age);
    }

    /// Schedules the next attempt (with backoff, unless the message was only held back),
    /// records it, and hands the message back.
    fn defer(&self, mut env: Envelope, timing: Timing, after: After) {
        let now_ms = self.clock.unix_millis();
        let due_ms = match after {
            // Not an attempt: the counter stays, and it goes when the cap allows.
            After::Shaped { until_ms, .. } => until_ms.max(now_ms),
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
        if matches!(after, After::Ambiguous) && timing.on_ambiguous == OnAmbiguous::Hold {
            hold_ambiguous(&mut env, self.clock.unix());
        }
        let id = env.id.as_str();
        if let After::Shaped { record: false, .. } = after {
            // Nothing to record: nothing was sent, and after a restart the message is
            // admitted afresh.
            info!(queue_id = %id, wait = ?delay, "message waits for its upstream's cap");
            self.back.submit(env);
            return;
        }
        if let Err(e) = self.spool.update(&env) {
            warn!(queue_id = %id, error = %e, "cannot record delivery state");
        }
        match &env.held {
            _ if matches!(after, After::Shaped { .. }) => {
                info!(queue_id = %id, wait = ?delay, "message waits for its upstream's pause")
            }
            Some(held) => {
                warn!(queue_id = %id, attempts = env.attempts, reason = %held.reason, "message held for an administrator")
            }
            None => {
                info!(queue_id = %id, attempts = env.attempts, retry_in = ?delay, "message deferred")
            }
        }
        self.back.submit(env);
    }

    /// Logs and counts a message leaving the queue, and tells the ledger.
    fn completed(&self, env: &Envelope, how: Completion, age: Duration) {
        events::completed(env.id.as_str(), how, env.attempts.saturating_add(1), age);
        self.metrics.completed(how);
        self.back.left(env);
    }
}

/// `queue.on_ambiguous: hold`: a maybe-delivered message waits for an administrator (to
/// release it, which tries it again at the same upstream, or to bounce or delete it).
fn hold_ambiguous(env: &mut Envelope, now: u64) {
    let pins: Vec<String> = env
        .maybe_delivered
        .iter()
        .map(crate::delivery::view::maybe_text)
        .collect();
    let reason = match pins.is_empty() {
        true => "maybe delivered; queue.on_ambiguous: hold".to_owned(),
        false => format!("{}; queue.on_ambiguous: hold", pins.join("; ")),
    };
    env.held = Some(Held {
        at_unix: now,
        reason,
    });
}

/// Marks every pending recipient failed with `why`; `upstream` names where (`-`: nowhere).
fn fail_pending(env: &mut Envelope, upstream: &str, why: &str) {
    let all: Vec<usize> = (0..env.recipients.len()).collect();
    fail_recipients(env, &all, upstream, why);
}

/// Marks the recipients at `rcpts` that are still pending failed with `why`.
fn fail_recipients(env: &mut Envelope, rcpts: &[usize], upstream: &str, why: &str) {
    let id = env.id.to_string();
    for (i, rcpt) in env.recipients.iter_mut().enumerate() {
        if rcpt.status != RcptStatus::Pending || !rcpts.contains(&i) {
            continue;
        }
        events::recipient(&id, upstream, &rcpt.address, RcptOutcome::Failed, why);
        rcpt.status = RcptStatus::Failed { reply: why.into() };
    }
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
        /// A transaction did take place (the upstream answered with a throttling reply,
        /// maybe after taking some recipients): the new state must be recorded.
        record: bool,
    },
}
