//! The lockout with `scope: cluster`: counts and locks in the shared Redis
//! ([`crate::cluster::lockout`]), this instance's table as the fallback.
//!
//! Every failure is also counted in the local table, so that when Redis cannot answer
//! (down, or slower than `redis.command_timeout`) `on_redis_error: allow` falls back on
//! what this instance has seen: its own lockouts still hold. `deny` refuses AUTH with
//! `454 4.7.0` instead (temporary: the client retries once Redis is back). Each fallback
//! at a check is counted in `postern_redis_fallbacks_total{feature="lockout"}`.

use std::net::IpAddr;

use tracing::{debug, info};

use super::{Locked, LockedBy, Lockout, Settings};
use crate::cluster::lockout::{Lock, LockoutRule};
use crate::cluster::{Redis, Unavailable};
use crate::config::policy::{OnRedisError, Scope};
use crate::policy::networks::client_prefix_key;
use crate::telemetry::metrics::Feature;

/// Why AUTH may not be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockRefusal {
    /// A lockout is in force.
    Locked(Locked),
    /// The cluster lockout cannot be checked and says `on_redis_error: deny`.
    Unavailable,
}

impl Lockout {
    /// [`Lockout::check`], in Redis when `scope: cluster` (see the module documentation).
    /// `redis` is `None` only when a reload turned the scope to cluster on an instance
    /// started without `redis:`; it falls back as if Redis were down.
    pub async fn check_shared(
        &self,
        redis: Option<&Redis>,
        ip: IpAddr,
        username: &str,
    ) -> Result<(), LockRefusal> {
        let s = **self.settings.load();
        if s.scope == Scope::Local || s.attempts == 0 {
            return self.check(ip, username).map_err(LockRefusal::Locked);
        }
        let Some(redis) = redis else {
            return self.fallback(None, &s, ip, username, Unavailable::Down);
        };
        let subjects = subjects(redis, &s, ip, username, true);
        match Box::pin(redis.lockout_check(&subjects)).await {
            Ok(None) => Ok(()),
            Ok(Some(lock)) => Err(LockRefusal::Locked(locked(lock))),
            Err(why) => self.fallback(Some(redis), &s, ip, username, why),
        }
    }

    /// [`Lockout::record_failure`], in Redis as well when `scope: cluster`; returns the
    /// lockout this failure started (in Redis, or locally while Redis cannot answer).
    pub async fn record_failure_shared(
        &self,
        redis: Option<&Redis>,
        ip: IpAddr,
        username: &str,
        known_user: bool,
    ) -> Option<Locked> {
        let local = self.record_failure(ip, username, known_user);
        let s = **self.settings.load();
        if s.scope == Scope::Local || s.attempts == 0 {
            return local;
        }
        // Without a Redis handle (a reload brought the cluster scope in), this instance's
        // table decides, as while Redis is down.
        let Some(redis) = redis else {
            return local;
        };
        let subjects = subjects(redis, &s, ip, username, known_user);
        let rule = LockoutRule {
            attempts: s.attempts,
            window: s.window,
            duration: s.duration,
        };
        match Box::pin(redis.lockout_fail(&subjects, rule)).await {
            Ok(started) => started.map(locked),
            Err(_) => local,
        }
    }

    /// The decision while Redis cannot answer.
    fn fallback(
        &self,
        redis: Option<&Redis>,
        s: &Settings,
        ip: IpAddr,
        username: &str,
        why: Unavailable,
    ) -> Result<(), LockRefusal> {
        let allow = s.on_redis_error == OnRedisError::Allow;
        // Counted each time, logged at info once per outage (not once per AUTH).
        let first = redis.is_some_and(|r| r.fallback(Feature::Lockout, allow));
        if allow {
            if first {
                info!(why = ?why, "cluster lockout unchecked (Redis unavailable): this instance's table decides; logged once per outage, counted in postern_redis_fallbacks_total");
            } else {
                debug!(why = ?why, "cluster lockout unchecked (Redis unavailable): this instance's table decides");
            }
            self.check(ip, username).map_err(LockRefusal::Locked)
        } else {
            if first {
                info!(why = ?why, "cluster lockout unchecked (Redis unavailable): AUTH refused, on_redis_error: deny; logged once per outage, counted in postern_redis_fallbacks_total");
            } else {
                debug!(why = ?why, "cluster lockout unchecked (Redis unavailable): AUTH refused, on_redis_error: deny");
            }
            Err(LockRefusal::Unavailable)
        }
    }
}

/// The subjects' keys: the address (IPv6: its /64), then the username with
/// `per_username` when `with_user` (a failure counts only existing usernames).
fn subjects(
    redis: &Redis,
    s: &Settings,
    ip: IpAddr,
    username: &str,
    with_user: bool,
) -> Vec<String> {
    let mut keys = vec![redis.lockout_key("ip", &client_prefix_key(ip))];
    if s.per_username && with_user {
        keys.push(redis.lockout_key("user", &escape(username)));
    }
    keys
}

/// A username as the last part of a key: `%` and `:` percent-encoded, so that no user's
/// lock key (`...:user:<name>`) is another's failure counter (`...:user:<other>:fails`), as
/// `a:fails`'s would be `a`'s.
fn escape(username: &str) -> String {
    let mut out = String::with_capacity(username.len());
    for c in username.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    out
}

/// A lock of subject 0 is the address's, of subject 1 the username's.
fn locked(lock: Lock) -> Locked {
    let by = if lock.subject == 0 {
        LockedBy::Address
    } else {
        LockedBy::Username
    };
    Locked {
        by,
        remaining: lock.remaining,
    }
}
