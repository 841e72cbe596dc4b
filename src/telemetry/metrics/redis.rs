//! The shared Redis's series: whether it answers, each call's result and duration, and the
//! decisions taken without it.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntGauge, Registry};

use super::{REDIS_COMMANDS, REDIS_DURATION, REDIS_FALLBACKS, REDIS_UP};

/// How one call to Redis ended (`result` of `postern_redis_commands_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// Redis answered.
    Ok,
    /// Redis answered with an error, or the connection failed.
    Error,
    /// No answer within `redis.command_timeout`.
    Timeout,
    /// Not sent: Redis is down, waiting for the prober to see it answer.
    Skipped,
}

impl CallResult {
    /// Every value, in declaration order.
    pub const ALL: [CallResult; 4] = [
        CallResult::Ok,
        CallResult::Error,
        CallResult::Timeout,
        CallResult::Skipped,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CallResult::Ok => "ok",
            CallResult::Error => "error",
            CallResult::Timeout => "timeout",
            CallResult::Skipped => "skipped",
        }
    }
}

/// What needed Redis and had to decide without it (`feature` of
/// `postern_redis_fallbacks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// A rate-limit rule with `scope: cluster`.
    RateLimit,
    /// The AUTH lockout with `scope: cluster`.
    Lockout,
    /// Upstream shaping with `shaping_scope: cluster`.
    Shaping,
}

impl Feature {
    /// Every value, in declaration order.
    pub const ALL: [Feature; 3] = [Feature::RateLimit, Feature::Lockout, Feature::Shaping];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::RateLimit => "rate_limit",
            Feature::Lockout => "lockout",
            Feature::Shaping => "shaping",
        }
    }
}

/// The Redis handles, every series registered at zero. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisMetrics {
    up: IntGauge,
    /// By [`CallResult`], in `CallResult::ALL` order.
    commands: [IntCounter; 4],
    duration: Histogram,
    /// By [`Feature`] then allow / deny.
    fallbacks: [[IntCounter; 2]; 3],
}

/// One call's duration: a tenth of a millisecond to a second (the timeout is well below).
const DURATION_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];

impl RedisMetrics {
    pub(super) fn register(r: &Registry) -> prometheus::Result<RedisMetrics> {
        let commands = REDIS_COMMANDS.counter(r)?;
        let fallbacks = REDIS_FALLBACKS.counter(r)?;
        Ok(RedisMetrics {
            up: REDIS_UP.int_gauge(r)?,
            commands: CallResult::ALL.map(|c| commands.with_label_values(&[c.as_str()])),
            duration: REDIS_DURATION.single_histogram(r, &DURATION_BUCKETS)?,
            fallbacks: Feature::ALL
                .map(|f| ["allow", "deny"].map(|d| fallbacks.with_label_values(&[f.as_str(), d]))),
        })
    }

    /// Sets `postern_redis_up`.
    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    /// Counts one call (a script or the prober's PING); `took` is `None` when it was not sent.
    pub fn call(&self, result: CallResult, took: Option<Duration>) {
        self.commands[result as usize].inc();
        if let Some(took) = took {
            self.duration.observe(took.as_secs_f64());
        }
    }

    /// Counts a decision `feature` took without Redis: `allowed` or denied.
    pub fn fallback(&self, feature: Feature, allowed: bool) {
        self.fallbacks[feature as usize][usize::from(!allowed)].inc();
    }
}
