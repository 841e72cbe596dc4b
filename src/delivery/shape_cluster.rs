//! Shaping with `shaping_scope: cluster`: the account's caps and the pause of a throttling
//! reply are kept in the shared Redis, so that several instances sending through one account
//! stay within its caps together.
//!
//! Each cap is a GCRA bucket booked in *reserve* mode ([`crate::cluster::gcra`]):
//! `messages_per_minute: N` is a bucket of `N` with one cell back every `60 s / N`, one cell
//! per message; `recipients_per_day: N` one of `N` with a cell back every `24 h / N`, one
//! cell per recipient. A message that does not fit books the earliest turn in both and waits
//! for it, as the local shaper's booking does (GCRA spreads a cap evenly where the local
//! shaper counts a rolling window, so a burst after a quiet spell is the cap either way).
//! A throttling reply pauses the upstream on every instance (the shared pause key, with the
//! length this instance's shaper computed).
//!
//! While Redis cannot answer: `shaping_on_redis_error: allow` shapes with this instance's
//! own counts (the local shaper, which counts every message whatever the scope), `deny`
//! holds the message for [`UNAVAILABLE_RETRY`] (`cap` `redis_unavailable`, not a booking).
//! Both are counted in `postern_redis_fallbacks_total{feature="shaping"}`.

use std::time::Duration;

use tracing::{debug, info};

use crate::cluster::Redis;
use crate::cluster::gcra::Charge;
use crate::config::policy::OnRedisError;
use crate::telemetry::metrics::Feature;
use crate::upstream::shaping::{Admission, Cap, Shaper};

/// How long a message is held while Redis cannot answer and the upstream says `deny`.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(10);

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Until when `upstream` is paused, by Redis's shared pause or this instance's own.
pub(super) async fn paused_until(
    redis: Option<&Redis>,
    shaper: &Shaper,
    upstream: &str,
    now_ms: u64,
) -> Option<u64> {
    let local = shaper.paused_until(now_ms);
    let shared = match redis {
        Some(r) => Box::pin(r.paused_for(upstream)).await.ok(),
        None => None,
    };
    let shared = shared
        .filter(|left| !left.is_zero())
        .map(|left| now_ms.saturating_add(millis(left)));
    local.max(shared)
}

/// Whether a message to `upstream` for `recipients` may go now, by the shared caps.
pub(super) async fn admit(
    redis: Option<&Redis>,
    shaper: &Shaper,
    upstream: &str,
    now_ms: u64,
    recipients: usize,
) -> Admission {
    // Counted locally too: the fallback while Redis cannot answer.
    let local = shaper.admit(now_ms, recipients);
    let Some(r) = redis else {
        return fallback(None, shaper, local, now_ms);
    };
    let (charges, kinds) = charges(r, shaper, upstream, recipients);
    if charges.is_empty() {
        return Admission::Go;
    }
    match Box::pin(r.gcra_reserve(&charges)).await {
        Ok(booked) if booked.wait.is_zero() => Admission::Go,
        Ok(booked) => Admission::Wait {
            until_ms: now_ms.saturating_add(millis(booked.wait)),
            cap: booked
                .index
                .and_then(|i| kinds.get(i).copied())
                .unwrap_or(Cap::MessagesPerMinute),
        },
        Err(_) => fallback(Some(r), shaper, local, now_ms),
    }
}

/// The buckets of the upstream's caps that are set, and which cap each is.
fn charges(
    r: &Redis,
    shaper: &Shaper,
    upstream: &str,
    recipients: usize,
) -> (Vec<Charge>, Vec<Cap>) {
    let caps = shaper.caps();
    // More recipients than a day allows count as the whole day (as the local shaper's
    // window does): the message waits for an empty bucket, then goes. Uncapped, it would
    // wait until the bucket had gone below empty, hours later.
    let rcpts = u32::try_from(recipients)
        .unwrap_or(u32::MAX)
        .min(caps.recipients_per_day);
    let all = [
        (caps.messages_per_minute, MINUTE, Cap::MessagesPerMinute, 1),
        (caps.recipients_per_day, DAY, Cap::RecipientsPerDay, rcpts),
    ];
    all.into_iter()
        .filter(|(limit, ..)| *limit > 0)
        .map(|(limit, period, cap, cost)| {
            let charge = Charge {
                key: r.shaping_key(upstream, cap.as_str()),
                emission: period / limit,
                burst: limit,
                cost,
            };
            (charge, cap)
        })
        .unzip()
}

/// Shares a pause this instance's shaper started (best effort: without Redis the pause
/// holds here only).
pub(super) async fn throttled(redis: Option<&Redis>, upstream: &str, until_ms: u64, now_ms: u64) {
    if let Some(r) = redis {
        let pause = Duration::from_millis(until_ms.saturating_sub(now_ms));
        let _ = Box::pin(r.pause_upstream(upstream, pause)).await;
    }
}

/// The decision without Redis: the local shaper's (`allow`), or a hold (`deny`).
fn fallback(redis: Option<&Redis>, shaper: &Shaper, local: Admission, now_ms: u64) -> Admission {
    let allow = shaper.sharing().on_redis_error == OnRedisError::Allow;
    // Counted each time, logged at info once per outage (not once per message).
    if redis.is_some_and(|r| r.fallback(Feature::Shaping, allow)) {
        info!(
            allow,
            "shared shaping unchecked (Redis unavailable); logged once per outage, counted in postern_redis_fallbacks_total"
        );
    } else {
        debug!(allow, "shared shaping unchecked (Redis unavailable)");
    }
    if allow {
        return local;
    }
    Admission::Wait {
        until_ms: now_ms.saturating_add(millis(UNAVAILABLE_RETRY)),
        cap: Cap::RedisUnavailable,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;
    use crate::cluster::test_server::{RedisServer, handle_on};
    use crate::config::policy::Scope;
    use crate::upstream::shaping::{Caps, Sharing};

    /// A message with more recipients than `recipients_per_day` goes at once from an empty
    /// shared bucket (as with the local shaper) and fills it; the next recipient then waits
    /// one emission interval (24 h / 100), not the 50 more the excess would have cost.
    #[tokio::test]
    async fn a_message_over_the_daily_cap_takes_the_whole_day_not_more() {
        let server = RedisServer::start();
        let (r, stop) = handle_on(&server).await;
        let shaper = Shaper::new(Caps {
            messages_per_minute: 0,
            recipients_per_day: 100,
        });
        shaper.set_sharing(Sharing {
            scope: Scope::Cluster,
            on_redis_error: OnRedisError::Allow,
        });
        let now = 1_000_000;
        assert_eq!(
            admit(Some(&r), &shaper, "up", now, 150).await,
            Admission::Go
        );
        let Admission::Wait { until_ms, cap } = admit(Some(&r), &shaper, "up", now, 1).await else {
            panic!("the bucket is full: the next recipient waits");
        };
        assert_eq!(cap, Cap::RecipientsPerDay);
        let wait = until_ms - now;
        assert!(wait > 863_000 && wait <= 864_000, "{wait} ms");
        stop.cancel();
    }
}
