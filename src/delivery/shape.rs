//! The runner's side of shaping (see `upstream::shaping`): asking an upstream's caps before
//! an attempt, pausing the upstream after a throttling reply, and the wait that follows.
//!
//! A message held back is not a failed attempt: it is not logged or counted as one, its
//! attempt counter does not move, and it goes as soon as the cap allows (the booked time).

use tracing::{info, warn};

use crate::cluster::Redis;
use crate::config::policy::Scope;
use crate::delivery::failover::Tried;
use crate::delivery::outcome::Report;
use crate::delivery::shape_cluster;
use crate::spool::{Envelope, RcptStatus, Shaped};
use crate::telemetry::metrics::UpstreamMetrics;
use crate::upstream::Upstreams;
use crate::upstream::shaping::{Admission, Cap};

/// The upstream an attempt is for, and what shaping it needs.
pub(super) struct At<'a> {
    /// The upstreams of the current rules.
    pub upstreams: &'a Upstreams,
    /// The upstream's name.
    pub upstream: &'a str,
    /// Its metrics.
    pub metrics: &'a UpstreamMetrics,
    /// The shared Redis, for `shaping_scope: cluster`.
    pub redis: Option<&'a Redis>,
}

/// Asks `upstream`'s caps whether `env`, for `pending` recipients (those of the route
/// group being sent), may go now; `Some` (a [`Tried::Shaped`]) when it must wait, with the
/// wait recorded in `env.shaped`.
///
/// With `shaping_scope: cluster` the pause and the caps are asked of the shared Redis
/// (`shape_cluster.rs`).
pub(super) async fn admit(
    at: &At<'_>,
    env: &mut Envelope,
    pending: usize,
    now_ms: u64,
) -> Option<Tried> {
    let (upstreams, upstream, metrics, redis) = (at.upstreams, at.upstream, at.metrics, at.redis);
    let shaper = upstreams.shaper(upstream)?;
    let cluster = shaper.sharing().scope == Scope::Cluster;
    let paused = if cluster {
        shape_cluster::paused_until(redis, shaper, upstream, now_ms).await
    } else {
        shaper.paused_until(now_ms)
    };
    if let Some(until_ms) = paused {
        // A pause the upstream asked for holds booked mail too (the booking is kept).
        let booked = env.shaped.as_ref().is_some_and(|s| s.booked);
        return Some(held(
            env,
            upstream,
            until_ms,
            Cap::Throttled,
            !booked,
            now_ms,
            metrics,
        ));
    }
    if let Some(booked) = env
        .shaped
        .as_ref()
        .filter(|s| s.upstream == upstream && s.booked)
    {
        if booked.until_ms <= now_ms {
            // Its time, already counted when it was booked.
            env.shaped = None;
            return None;
        }
        // Tried before its time (an administrator's retry): it keeps its place instead
        // of booking, and counting, a second one.
        let cap = Cap::ALL
            .into_iter()
            .find(|c| c.as_str() == booked.cap)
            .unwrap_or(Cap::MessagesPerMinute);
        return Some(Tried::Shaped {
            until_ms: booked.until_ms,
            cap,
        });
    }
    let admission = if cluster {
        shape_cluster::admit(redis, shaper, upstream, now_ms, pending).await
    } else {
        shaper.admit(now_ms, pending)
    };
    let Admission::Wait { until_ms, cap } = admission else {
        env.shaped = None;
        return None;
    };
    Some(held(env, upstream, until_ms, cap, true, now_ms, metrics))
}

/// Logs and counts a message held back by `cap` until `until_ms`; `record`: note the wait
/// in `env.shaped` (for the queue listing; a capped wait is a booking).
fn held(
    env: &mut Envelope,
    upstream: &str,
    until_ms: u64,
    cap: Cap,
    record: bool,
    now_ms: u64,
    metrics: &UpstreamMetrics,
) -> Tried {
    info!(
        upstream = %upstream,
        cap = cap.as_str(),
        wait_ms = until_ms.saturating_sub(now_ms),
        "held back for the upstream's cap; not an attempt"
    );
    metrics.shaped(cap);
    if record {
        env.shaped = Some(Box::new(Shaped {
            upstream: upstream.to_owned(),
            until_ms,
            cap: cap.as_str(),
            booked: cap.books(),
        }));
    }
    Tried::Shaped { until_ms, cap }
}

/// After an attempt at `upstream`: a throttling reply pauses the whole upstream (and the
/// attempt's outcome becomes a wait for that pause, so the route's next upstream is tried);
/// a delivery resets the pause.
pub(super) async fn settle(
    at: &At<'_>,
    env: &mut Envelope,
    tried: Tried,
    report: &Report,
    now_ms: u64,
) -> Tried {
    let (upstreams, upstream, metrics, redis) = (at.upstreams, at.upstream, at.metrics, at.redis);
    let Some(shaper) = upstreams.shaper(upstream) else {
        return tried;
    };
    if !report.throttled {
        if matches!(tried, Tried::Done) {
            shaper.delivered();
        }
        return tried;
    }
    let until_ms = shaper.throttled(now_ms);
    if shaper.sharing().scope == Scope::Cluster {
        shape_cluster::throttled(redis, upstream, until_ms, now_ms).await;
    }
    warn!(
        upstream = %upstream,
        reply = %report.reply,
        pause_ms = until_ms.saturating_sub(now_ms),
        "the upstream asked to slow down; pausing it"
    );
    metrics.throttled();
    let pending = env
        .recipients
        .iter()
        .any(|r| r.status == RcptStatus::Pending);
    if !pending {
        return tried;
    }
    env.shaped = Some(Box::new(Shaped {
        upstream: upstream.to_owned(),
        until_ms,
        cap: Cap::Throttled.as_str(),
        booked: false,
    }));
    Tried::Shaped {
        until_ms,
        cap: Cap::Throttled,
    }
}

/// When every upstream tried only held the message back: the earliest time one of them
/// allows it.
pub(super) fn only_held_back(tried: &[(&str, Tried)]) -> Option<u64> {
    let mut earliest: Option<u64> = None;
    for (_, t) in tried {
        let Tried::Shaped { until_ms, .. } = t else {
            return None;
        };
        earliest = Some(earliest.map_or(*until_ms, |e| e.min(*until_ms)));
    }
    earliest
}
