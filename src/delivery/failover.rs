//! One delivery attempt: the pending recipients grouped by route, each group sent through
//! its route's upstreams in failover order, one transaction per group.
//!
//! Rules:
//! - Routes match per recipient ([`crate::upstream::route`]), so a message whose recipients
//!   take different routes is split: each group goes through its own route.
//! - Failover (the next upstream of the route, at once): the upstream could not be reached,
//!   its TLS, greeting, EHLO or AUTH failed, it said `421` (RFC 5321 3.8), the connection
//!   broke or timed out before the final dot, or it lacks an extension the message needs.
//!   A live upstream's other `4xx` to MAIL, RCPT, DATA or the dot defers the message (it
//!   waits for its next attempt at the same route): see [`crate::upstream::error::Error::fails_over`].
//! - No blind duplicates: a group whose final dot got no reply is recorded as maybe
//!   delivered at that upstream, with the recipients it carried; those recipients go to that
//!   upstream only until it answers, whatever the route says.
//! - The circuit breaker ([`crate::upstream::breaker`]): an upstream whose breaker is open
//!   is skipped as if it had failed over; after the cool-down one attempt probes it.

use std::time::Duration;

use tracing::{info, warn};

use crate::delivery::body::{BodyReader, body_tail};
use crate::delivery::outcome::{self, Report};
use crate::delivery::{After, Runner, fail_recipients};
use crate::delivery::{bounce, shape};
use crate::smtp::dsn::RcptParams;
use crate::spool::{Ambiguous, Envelope, RcptStatus};
use crate::telemetry::events::{self, Attempt};
use crate::telemetry::metrics::UpstreamMetrics;
use crate::upstream::Upstreams;
use crate::upstream::breaker::{Admission, Transition, Verdict};
use crate::upstream::client::{DsnParams, Outgoing, transmitted_size};
use crate::upstream::error::Capability;
use crate::upstream::route::Origin;
use crate::upstream::shaping::Cap;

/// Where a group of recipients goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Via {
    /// The route at this index of `routes:`.
    Route(usize),
    /// Only this upstream: it may already have them (`maybe_delivered`).
    Pinned(String),
    /// No route takes them under the current configuration.
    Nowhere,
}

/// Recipients (indexes into the envelope) that travel together, and their upstreams.
#[derive(Debug)]
struct Group {
    via: Via,
    upstreams: Vec<String>,
    rcpts: Vec<usize>,
}

/// Groups the pending recipients: those a pin covers go to its upstream (if it is still
/// configured), the rest by their route. Groups keep the order of their first recipient.
fn plan(env: &mut Envelope, upstreams: &Upstreams) -> Vec<Group> {
    let pending: Vec<usize> = (0..env.recipients.len())
        .filter(|&i| env.recipients[i].status == RcptStatus::Pending)
        .collect();
    // A pin from before messages were split names no recipients: it covers all pending.
    for pin in env
        .maybe_delivered
        .iter_mut()
        .filter(|p| p.recipients.is_empty())
    {
        pin.recipients = pending
            .iter()
            .map(|&i| env.recipients[i].address.clone())
            .collect();
    }
    let origin = Origin {
        sender: &env.sender,
        listener: &env.listener,
        identity: env.identity.as_deref(),
    };
    let router = upstreams.router();
    let mut groups: Vec<Group> = Vec::new();
    for i in pending {
        let address = &env.recipients[i].address;
        let pin = env
            .maybe_delivered
            .iter()
            .find(|p| p.recipients.contains(address));
        let (via, list) = match (pin, router.route(&origin, address)) {
            (Some(pin), _) if upstreams.contains(&pin.upstream) => (
                Via::Pinned(pin.upstream.clone()),
                vec![pin.upstream.clone()],
            ),
            (_, Some(m)) => (Via::Route(m.index), m.upstreams.to_vec()),
            (_, None) => (Via::Nowhere, Vec::new()),
        };
        if let Some(pin) = pin.filter(|p| !upstreams.contains(&p.upstream)) {
            warn!(upstream = %pin.upstream, recipient = %address, "the upstream that may have this message is no longer configured; trying the route");
        }
        match groups.iter_mut().find(|g| g.via == via) {
            Some(g) => g.rcpts.push(i),
            None => groups.push(Group {
                via,
                upstreams: list,
                rcpts: vec![i],
            }),
        }
    }
    groups
}

impl Runner {
    /// One delivery attempt over the message's routes, then the bookkeeping.
    pub(super) async fn attempt(&self, mut env: Envelope) {
        // One snapshot for the whole attempt: its upstreams, routes and retry timing.
        let rules = self.rules.load_full();
        let upstreams = &rules.upstreams;
        let mut after: Option<After> = None;
        for group in plan(&mut env, upstreams) {
            if group.via == Via::Nowhere {
                // Accepted under rules that had a route (a reload may have changed them
                // since): keep them and retry until queue.max_age, so a route dropped by a
                // mistaken reload bounces nothing if it is put back.
                warn!(sender = %env.sender, recipients = group.rcpts.len(), "no route for these recipients in the current configuration; retrying later");
                after = Some(combine(after, After::Backoff));
                continue;
            }
            let retry = rules.timing.ambiguous_retry;
            let this = self.deliver_group(upstreams, &group, &mut env, retry).await;
            after = Some(combine(after, this));
        }
        self.finish(env, rules.timing, after.unwrap_or(After::Backoff))
            .await;
    }

    /// Sends one group through its upstreams in failover order; returns how the message
    /// waits for this group: `queue.ambiguous_retry` when it was left maybe delivered, the
    /// time its upstreams allow when they only held it back (shaping), else the backoff.
    async fn deliver_group(
        &self,
        upstreams: &Upstreams,
        group: &Group,
        env: &mut Envelope,
        ambiguous_retry: Duration,
    ) -> After {
        let mut tried = Vec::with_capacity(group.upstreams.len());
        for upstream in &group.upstreams {
            let result = match self.admit(upstreams, upstream) {
                Admission::Skip => Tried::Skipped,
                Admission::Pass | Admission::Probe => {
                    let result = self
                        .try_upstream(upstreams, upstream, env, &group.rcpts)
                        .await;
                    self.judge(upstreams, upstream, &result);
                    result
                }
            };
            log_tried(upstream, &result, ambiguous_retry);
            // A paused upstream is passed over like an unavailable one; a capped one is
            // waited for (its account's allowance is not spilled onto the next upstream).
            let stop = !matches!(
                result,
                Tried::Failover(_)
                    | Tried::Unsupported(_)
                    | Tried::Skipped
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
            fail_recipients(env, &group.rcpts, &group.upstreams.join(","), &why);
        }
        match (tried.last(), shape::only_held_back(&tried)) {
            (Some((_, Tried::MaybeDelivered(_))), _) => After::Ambiguous,
            (_, Some(until_ms)) => After::Shaped {
                until_ms,
                // A throttling reply may have come after recipients were taken.
                record: tried.iter().any(|(_, t)| {
                    matches!(
                        t,
                        Tried::Shaped {
                            cap: Cap::Throttled,
                            ..
                        }
                    )
                }),
            },
            _ => After::Backoff,
        }
    }

    /// Asks the upstream's circuit breaker (a directory upstream has none).
    fn admit(&self, upstreams: &Upstreams, upstream: &str) -> Admission {
        let Some(breaker) = upstreams.breaker(upstream) else {
            return Admission::Pass;
        };
        let admission = breaker.admit(self.clock.now());
        if admission == Admission::Probe {
            events::circuit_breaker(upstream, Transition::HalfOpen);
        }
        admission
    }

    /// Tells the upstream's circuit breaker how the attempt went; logs and counts a change.
    fn judge(&self, upstreams: &Upstreams, upstream: &str, result: &Tried) {
        let Some(breaker) = upstreams.breaker(upstream) else {
            return;
        };
        let verdict = match result {
            Tried::Failover(_) => Verdict::Failure,
            Tried::Done | Tried::RetryLater(_) | Tried::Unsupported(_) => Verdict::Success,
            Tried::MaybeDelivered(_) | Tried::Local(_) | Tried::Skipped | Tried::Shaped { .. } => {
                Verdict::Neutral
            }
        };
        let Some(transition) = breaker.record(verdict, self.clock.now()) else {
            return;
        };
        events::circuit_breaker(upstream, transition);
        let metrics = self.metrics.upstream(upstream);
        match transition {
            Transition::Opened { .. } => metrics.circuit_opened(),
            Transition::Closed => metrics.set_circuit_open(false),
            Transition::HalfOpen => {}
        }
    }

    /// Tries the group's pending recipients at `upstream`; logs and counts the attempt.
    async fn try_upstream(
        &self,
        upstreams: &Upstreams,
        upstream: &str,
        env: &mut Envelope,
        rcpts: &[usize],
    ) -> Tried {
        let pending: Vec<usize> = rcpts
            .iter()
            .copied()
            .filter(|&i| env.recipients[i].status == RcptStatus::Pending)
            .collect();
        if pending.is_empty() {
            return Tried::Done;
        }
        let metrics = self.metrics.upstream(upstream);
        let now_ms = self.clock.unix_millis();
        let at = shape::At {
            upstreams,
            upstream,
            metrics: &metrics,
            redis: self.redis.as_ref(),
        };
        if let Some(held) = shape::admit(&at, env, pending.len(), now_ms).await {
            return held;
        }
        let started = std::time::Instant::now();
        let (tried, report) = self
            .send(upstreams, upstream, env, &pending, &metrics)
            .await;
        let now_ms = self.clock.unix_millis();
        let tried = shape::settle(&at, env, tried, &report, now_ms).await;
        metrics.attempt(report.result);
        env.last_reply = Some(report.reply.clone());
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
        let local = |why: String| (Tried::Local(why.clone()), Report::local(why));
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
        let rcpt_dsn: Vec<RcptParams> = pending
            .iter()
            .map(|&i| bounce::relayed_params(&env.recipients[i].dsn))
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
            // RFC 1870 5: what is transmitted, the prefix included, not only the body, and
            // what wrapping lines over 998 octets adds (counted at acceptance).
            size: transmitted_size(&body.prefix, body.body_len, &tail)
                .saturating_add(env.wrap_octets),
            body_8bit: env.body_8bit,
            smtputf8: env.smtputf8,
            dsn: DsnParams {
                ret: env.dsn.ret,
                envid: env.dsn.envid.as_deref(),
                rcpts: &rcpt_dsn,
            },
            upstream_dsn: false,
        };
        let id = env.id.to_string();
        let size = out.size;
        let result = upstreams.deliver(upstream, &id, &mut out).await;
        let upstream_dsn = out.upstream_dsn;
        let accepted_ms = match env.accepted_ms {
            0 => env.received_unix.saturating_mul(1000),
            ms => ms,
        };
        let since_accepted =
            Duration::from_millis(self.clock.unix_millis().saturating_sub(accepted_ms));
        let (tried, report) =
            outcome::apply(env, pending, upstream, result, metrics, since_accepted);
        if !upstream_dsn {
            bounce::note_relayed(env, pending, upstream);
        }
        match tried {
            Tried::MaybeDelivered(_) => {
                settle_pins(env, &addresses);
                env.maybe_delivered.push(Ambiguous {
                    upstream: upstream.to_owned(),
                    at_unix: self.clock.unix(),
                    bytes: size,
                    recipients: addresses,
                });
            }
            // The upstream answered for these recipients: whatever it had is settled.
            Tried::Done => settle_pins(env, &addresses),
            Tried::Failover(_)
            | Tried::Unsupported(_)
            | Tried::RetryLater(_)
            | Tried::Local(_)
            | Tried::Skipped
            | Tried::Shaped { .. } => {}
        }
        (tried, report)
    }
}

/// Takes `addresses` out of every pin; pins left with no recipient go.
fn settle_pins(env: &mut Envelope, addresses: &[String]) {
    for pin in &mut env.maybe_delivered {
        pin.recipients.retain(|r| !addresses.contains(r));
    }
    env.maybe_delivered.retain(|p| !p.recipients.is_empty());
}

/// Logs what came of trying one upstream (the attempt itself is logged by `try_upstream`).
fn log_tried(upstream: &str, result: &Tried, ambiguous_retry: Duration) {
    match result {
        // Logged where it is decided.
        Tried::Done | Tried::Shaped { .. } => {}
        Tried::Failover(why) => {
            warn!(upstream = %upstream, error = %why, "upstream failed; trying the next one");
        }
        Tried::Unsupported(missing) => {
            info!(upstream = %upstream, missing = %missing, "upstream cannot take this message; trying the next one");
        }
        Tried::Skipped => {
            info!(upstream = %upstream, "upstream skipped: its circuit breaker is open; trying the next one");
        }
        Tried::RetryLater(why) | Tried::Local(why) => {
            warn!(upstream = %upstream, error = %why, "delivery deferred");
        }
        Tried::MaybeDelivered(why) => {
            warn!(upstream = %upstream, error = %why, retry_in = ?ambiguous_retry, "maybe delivered: no reply to the final dot; trying again at this upstream only");
        }
    }
}

/// When the route was tried to its end and every upstream lacked an extension the message
/// needs, the reply to fail it with: the first upstream's (the route's primary) code, per
/// [`Capability::failure`], and what each upstream lacked. `None` when any upstream took it
/// or answered for its recipients, or was merely unavailable (down, skipped, 4xx, ...): that
/// one may take the message later, so it is retried instead (RFC 6531 3.2 and RFC 6152 3
/// let a client try another server before giving up).
fn unsupported_everywhere(tried: &[(&str, Tried)]) -> Option<String> {
    let mut missing = Vec::with_capacity(tried.len());
    for (upstream, result) in tried {
        match result {
            Tried::Unsupported(capability) => missing.push((*upstream, capability)),
            Tried::Done
            | Tried::Failover(_)
            | Tried::RetryLater(_)
            | Tried::Local(_)
            | Tried::Skipped
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
pub(super) enum Tried {
    /// Every pending recipient got an answer (accepted, rejected, or deferred by 4xx).
    Done,
    /// This upstream cannot take mail now (down, 421, TLS, AUTH, ...): try the next one.
    Failover(String),
    /// This upstream lacks an extension the message needs: try the next one.
    Unsupported(Capability),
    /// Its circuit breaker is open: try the next one.
    Skipped,
    /// The upstream deferred the transaction (a 4xx to MAIL, DATA or the dot): stop, and
    /// retry the same route later.
    RetryLater(String),
    /// Nothing was sent (the spool file could not be read): stop, and retry later.
    Local(String),
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

/// How the message waits when its groups came to `a` and `b`: a maybe-delivered group
/// waits `queue.ambiguous_retry`; else an attempt made (or a group without a route) means
/// the backoff; only when every group was merely held back by shaping does the message go
/// at the earliest time allowed, without counting an attempt.
fn combine(a: Option<After>, b: After) -> After {
    match (a, b) {
        (None, b) => b,
        (Some(After::Ambiguous), _) | (_, After::Ambiguous) => After::Ambiguous,
        (Some(After::Backoff), _) | (_, After::Backoff) => After::Backoff,
        (
            Some(After::Shaped {
                until_ms: x,
                record: r,
            }),
            After::Shaped {
                until_ms: y,
                record: s,
            },
        ) => After::Shaped {
            until_ms: x.min(y),
            record: r || s,
        },
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

    fn upstreams() -> Upstreams {
        let yaml = r#"
listeners: [{name: sub, address: "127.0.0.1:2525"}]
queue: {directory: spool}
upstreams:
  - {name: m365, address: "127.0.0.1:1", tls: none}
  - {name: backup, address: "127.0.0.1:2", tls: none}
  - {name: partner, address: "127.0.0.1:3", tls: none}
routes:
  - {recipients: ["@partner.example"], upstreams: [partner, backup]}
  - {senders: ["*"], upstreams: [m365, backup]}
"#;
        let cfg: crate::config::schema::Config = serde_yaml::from_str(yaml).unwrap();
        Upstreams::new(&cfg).unwrap()
    }

    fn envelope(rcpts: &[&str]) -> Envelope {
        let mut env = crate::spool::record::tests::sample("0123456789ABCDEF".parse().unwrap());
        env.sender = "app@corp.example".into();
        env.recipients = rcpts
            .iter()
            .map(|a| crate::spool::Recipient {
                address: (*a).into(),
                status: RcptStatus::Pending,
                dsn: Default::default(),
            })
            .collect();
        env
    }

    fn pin(upstream: &str, rcpts: &[&str]) -> Ambiguous {
        Ambiguous {
            upstream: upstream.into(),
            at_unix: 1,
            bytes: 10,
            recipients: rcpts.iter().map(|r| (*r).into()).collect(),
        }
    }

    /// (via, upstreams, recipient indexes) of each group.
    fn planned(env: &mut Envelope) -> Vec<(Via, Vec<String>, Vec<usize>)> {
        plan(env, &upstreams())
            .into_iter()
            .map(|g| (g.via, g.upstreams, g.rcpts))
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    /// Pending recipients grouped by route, in order of their first recipient; settled
    /// recipients are left out; a pin takes its recipients to its upstream only; a legacy
    /// pin (no recipients) covers every pending one; a pin at an upstream no longer
    /// configured lets its recipients take their route.
    #[test]
    fn recipients_are_grouped_by_route_and_pin() {
        let rcpts = [
            "a@x.example",
            "b@partner.example",
            "c@y.example",
            "d@Partner.example",
        ];
        let mut env = envelope(&rcpts);
        assert_eq!(
            planned(&mut env),
            [
                (Via::Route(1), names(&["m365", "backup"]), vec![0, 2]),
                (Via::Route(0), names(&["partner", "backup"]), vec![1, 3]),
            ]
        );
        env.recipients[0].status = RcptStatus::Failed {
            reply: "550".into(),
        };
        env.maybe_delivered = vec![pin("backup", &["d@Partner.example"])];
        assert_eq!(
            planned(&mut env),
            [
                (Via::Route(0), names(&["partner", "backup"]), vec![1]),
                (Via::Route(1), names(&["m365", "backup"]), vec![2]),
                (Via::Pinned("backup".into()), names(&["backup"]), vec![3]),
            ]
        );
        env.maybe_delivered = vec![pin("backup", &[])];
        assert_eq!(
            planned(&mut env),
            [(
                Via::Pinned("backup".into()),
                names(&["backup"]),
                vec![1, 2, 3]
            )]
        );
        assert_eq!(
            env.maybe_delivered[0].recipients,
            names(&["b@partner.example", "c@y.example", "d@Partner.example"])
        );
        env.maybe_delivered = vec![pin("gone", &["c@y.example"])];
        assert_eq!(
            planned(&mut env),
            [
                (Via::Route(0), names(&["partner", "backup"]), vec![1, 3]),
                (Via::Route(1), names(&["m365", "backup"]), vec![2]),
            ]
        );
    }

    /// An answer settles the pins of the recipients it covered; a pin left empty goes.
    #[test]
    fn answers_settle_pins() {
        let mut env = envelope(&["a@x", "b@x", "c@x"]);
        env.maybe_delivered = vec![pin("m365", &["a@x", "b@x"]), pin("backup", &["c@x"])];
        settle_pins(&mut env, &names(&["a@x"]));
        assert_eq!(
            env.maybe_delivered,
            [pin("m365", &["b@x"]), pin("backup", &["c@x"])]
        );
        settle_pins(&mut env, &names(&["c@x", "b@x"]));
        assert_eq!(env.maybe_delivered, []);
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
            (vec![("a", Tried::Skipped), ("b", utf8())], None),
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
