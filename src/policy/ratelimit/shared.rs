//! The rules with `scope: cluster`: one budget for every instance, in the shared Redis
//! ([`crate::cluster`]).
//!
//! [`RateLimits::check_shared`] runs the local rules first (cheap, and a client over a
//! local limit costs Redis nothing), then every cluster rule that applies in one GCRA call:
//! all of them are charged only if all admit. A refusal reads exactly as a local one (the
//! same reply, counted as the same `postern_rate_limit_hits_total{rule}`).
//!
//! While Redis cannot answer (down, or slower than `redis.command_timeout`), each applicable
//! rule's `on_redis_error` decides: one `deny` among them refuses the request with a
//! temporary reply ([`Refusal::Unavailable`]); otherwise it is admitted on the local rules
//! alone. Either way the decision is counted in `postern_redis_fallbacks_total`; the first
//! of each kind in an outage is logged at `info`, the rest at `debug` (no line per session).

use tracing::{debug, info};

use super::{Counted, Hit, Key, Keys, Limiter, RateLimits, RuleSet};
use crate::cluster::gcra::{Charge, Verdict};
use crate::cluster::{Redis, Unavailable};
use crate::config::policy::{OnRedisError, Scope};
use crate::policy::networks::client_prefix_key;
use crate::telemetry::metrics::Feature;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over a rule, local or cluster.
    Limit(Hit),
    /// A cluster rule with `on_redis_error: deny` could not be checked (Redis down or slow).
    Unavailable {
        /// That rule's name.
        rule: String,
    },
}

impl RateLimits {
    /// Counts one `what`: the local rules ([`RateLimits::check`]), then, when they admit, the
    /// cluster rules in one Redis call; see the module documentation. `redis` is `None`
    /// only when a reload brought in cluster rules that the running instance, started
    /// without `redis:`, cannot check: they fall back as if Redis were down.
    pub async fn check_shared(
        &self,
        redis: Option<&Redis>,
        what: Counted,
        keys: &Keys<'_>,
        overrides: Option<&RuleSet>,
    ) -> Result<(), Refusal> {
        self.check(what, keys, overrides).map_err(Refusal::Limit)?;
        self.check_cluster(redis, what, keys, overrides).await
    }

    /// The cluster half of [`RateLimits::check_shared`]: every applicable cluster rule in
    /// one Redis call.
    async fn check_cluster(
        &self,
        redis: Option<&Redis>,
        what: Counted,
        keys: &Keys<'_>,
        overrides: Option<&RuleSet>,
    ) -> Result<(), Refusal> {
        if !overrides.unwrap_or(&self.global).cluster {
            return Ok(());
        }
        let rules: Vec<(&Limiter, Key)> = self
            .applicable(what, keys, overrides, Scope::Cluster)
            .collect();
        if rules.is_empty() {
            return Ok(());
        }
        let Some(redis) = redis else {
            return fallback(None, &rules, Unavailable::Down);
        };
        let charges: Vec<Charge> = rules
            .iter()
            .map(|(lim, key)| charge(redis, lim, key))
            .collect();
        // Boxed: the Redis call's future is large, and inline it would sit in every
        // session's task, including those with no cluster rule.
        match Box::pin(redis.gcra_check(&charges)).await {
            Ok(Verdict::Admitted) => Ok(()),
            Ok(Verdict::Refused { index, retry_after }) => {
                let lim = rules.get(index).or(rules.first()).map(|(lim, _)| *lim);
                match lim {
                    Some(lim) => Err(Refusal::Limit(lim.hit(retry_after))),
                    None => Ok(()),
                }
            }
            Err(why) => fallback(Some(redis), &rules, why),
        }
    }
}

/// The Redis bucket of `lim` for `key`: `<prefix>rl:<rule>:<key>`, one cell per request.
fn charge(redis: &Redis, lim: &Limiter, key: &Key) -> Charge {
    let spec = &lim.spec;
    Charge {
        key: redis.key(&["rl", &lim.name, &key_text(key)]),
        emission: spec.interval / spec.limit.max(1),
        burst: spec.burst,
        cost: 1,
    }
}

/// A bucket key as written into the Redis key: the name, or the address (IPv6: its /64,
/// written `2001:db8::/64`, as the cluster lockout writes it).
fn key_text(key: &Key) -> String {
    match key {
        Key::Name(name) => name.to_string(),
        Key::Ip(ip) => client_prefix_key(*ip),
    }
}

/// The decision without Redis: refused when one of `rules` says `deny`.
fn fallback(
    redis: Option<&Redis>,
    rules: &[(&Limiter, Key)],
    why: Unavailable,
) -> Result<(), Refusal> {
    let deny = rules
        .iter()
        .find(|(lim, _)| lim.on_redis_error == OnRedisError::Deny);
    // Counted each time, logged at info once per outage (not once per session).
    let first = redis.is_some_and(|r| r.fallback(Feature::RateLimit, deny.is_none()));
    match deny {
        Some((lim, _)) => {
            if first {
                info!(rule = %lim.name, why = ?why, "cluster rate limit unchecked (Redis unavailable): refused, on_redis_error: deny; logged once per outage, counted in postern_redis_fallbacks_total");
            } else {
                debug!(rule = %lim.name, why = ?why, "cluster rate limit unchecked (Redis unavailable): refused, on_redis_error: deny");
            }
            Err(Refusal::Unavailable {
                rule: lim.name.clone(),
            })
        }
        None => {
            if first {
                info!(why = ?why, rules = rules.len(), "cluster rate limits unchecked (Redis unavailable): admitted, on_redis_error: allow; logged once per outage, counted in postern_redis_fallbacks_total");
            } else {
                debug!(why = ?why, rules = rules.len(), "cluster rate limits unchecked (Redis unavailable): admitted, on_redis_error: allow");
            }
            Ok(())
        }
    }
}
