//! The AUTH-failure lockout: after `attempts` failed AUTHs from one client address within
//! `window`, AUTH from that address is refused (`454 4.7.0`) for `duration`, even with the
//! right password and across connections. Optionally the same per existing username, from
//! any address (`per_username`).
//!
//! The server asks [`Lockout::check`] before verifying credentials, and calls
//! [`Lockout::record_failure`] after a failed verification; when that returns a [`Locked`]
//! the failure started a lockout, and the server closes the session with `421 4.7.0`.
//!
//! # Choices
//! - **Counting window.** An entry counts failures from its first one for `window`; the
//!   next failure after that starts a new count. One timestamp per entry instead of one per
//!   failure keeps an entry at a few dozen bytes; the cost is that a guesser who times his
//!   tries around a window boundary gets up to `2 × (attempts − 1)` in a short span, while
//!   his long-run rate stays at `attempts − 1` per `window`.
//! - **No reset on success.** Failures age out of the window instead: otherwise an attacker
//!   who holds one valid account could log in with it between guesses at others and never
//!   be counted. A success from another address never touches this address's count either.
//! - **Memory.** IPv6 clients are counted per /64 ([`client_prefix`]), so one host cannot
//!   create 2^64 entries. Entries expire after `window` (counting) or `duration` (locked)
//!   and [`Lockout::evict`] removes them; on top of that at most `max_addresses` addresses
//!   are tracked. When the table is full a new address is not tracked (existing counts and
//!   lockouts stay) until eviction makes room: dropping an arbitrary entry instead would let
//!   whoever fills the table lift the lockouts in it. Usernames need no cap: only
//!   existing ones are tracked, so there are at most as many as configured users.
//! - **Reload.** [`Lockout::reconfigure`] changes the settings and keeps every entry; a
//!   lockout already started keeps its end time.
//! - **Cluster.** With `scope: cluster` the server calls [`Lockout::check_shared`] and
//!   [`Lockout::record_failure_shared`] instead: counts and locks live in Redis (`shared.rs`,
//!   [`crate::cluster::lockout`]), and this table is the fallback while Redis is down.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::policy::{AuthLockoutConfig, OnRedisError, Scope};
use crate::policy::networks::client_prefix;

/// Addresses tracked at most (see the module documentation): about 150 MiB of table when
/// full, as measured by `benches/ratelimit_memory.rs`.
pub const MAX_ADDRESSES: usize = 1_000_000;

/// How often the runtime should call [`Lockout::evict`].
pub const EVICT_PERIOD: Duration = Duration::from_secs(60);

/// What a lockout is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedBy {
    /// The client address (its /64 for IPv6).
    Address,
    /// The username, from any address (`per_username: true`).
    Username,
}

/// AUTH is refused: why, and for how much longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// The address or the username.
    pub by: LockedBy,
    /// Time left until AUTH is accepted again.
    pub remaining: Duration,
}

/// The settings in force (swapped on reload).
#[derive(Debug, Clone, Copy)]
struct Settings {
    attempts: u32,
    window: Duration,
    duration: Duration,
    per_username: bool,
    scope: Scope,
    on_redis_error: OnRedisError,
}

impl From<&AuthLockoutConfig> for Settings {
    fn from(c: &AuthLockoutConfig) -> Settings {
        Settings {
            attempts: c.attempts,
            window: c.window.get(),
            duration: c.duration.get(),
            per_username: c.per_username,
            scope: c.scope,
            on_redis_error: c.on_redis_error.unwrap_or_default(),
        }
    }
}

/// One address's or username's failures.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When the current count started.
    since: Instant,
    /// Failures since then.
    failures: u32,
    /// The end of the lockout, once started.
    locked_until: Option<Instant>,
}

impl Entry {
    fn fresh(now: Instant) -> Entry {
        Entry {
            since: now,
            failures: 0,
            locked_until: None,
        }
    }

    /// Time left in a lockout in force at `now`.
    fn remaining(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Whether the entry says nothing any more: no lockout in force, count window over.
    fn expired(&self, now: Instant, window: Duration) -> bool {
        match self.locked_until {
            Some(until) => until <= now,
            None => now.saturating_duration_since(self.since) >= window,
        }
    }

    /// Counts one failure at `now`; returns the lockout's length if it started one.
    fn count(&mut self, now: Instant, s: &Settings) -> Option<Duration> {
        if self.locked_until.is_some() {
            if self.remaining(now).is_some() {
                // Already locked (a verification that raced the lockout): nothing to add.
                return None;
            }
            *self = Entry::fresh(now);
        }
        if now.saturating_duration_since(self.since) >= s.window {
            *self = Entry::fresh(now);
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures < s.attempts {
            return None;
        }
        self.locked_until = Some(now + s.duration);
        Some(s.duration)
    }
}

/// Process-lifetime AUTH-failure state; share it behind an `Arc`.
#[derive(Debug)]
pub struct Lockout {
    settings: ArcSwap<Settings>,
    clock: Clock,
    max_addresses: usize,
    by_address: DashMap<IpAddr, Entry>,
    by_username: DashMap<String, Entry>,
}

impl Lockout {
    /// An empty table with `cfg`'s settings, tracking at most [`MAX_ADDRESSES`] addresses.
    pub fn new(cfg: &AuthLockoutConfig, clock: &Clock) -> Lockout {
        Lockout::with_capacity(cfg, clock, MAX_ADDRESSES)
    }

    /// Like [`Lockout::new`] with another cap on tracked addresses.
    pub fn with_capacity(cfg: &AuthLockoutConfig, clock: &Clock, max_addresses: usize) -> Lockout {
        Lockout {
            settings: ArcSwap::from_pointee(Settings::from(cfg)),
            clock: clock.clone(),
            max_addresses,
            by_address: DashMap::new(),
            by_username: DashMap::new(),
        }
    }

    /// Takes new settings (on reload), keeping every count and lockout.
    pub fn reconfigure(&self, cfg: &AuthLockoutConfig) {
        self.settings.store(Arc::new(Settings::from(cfg)));
    }

    /// Whether AUTH from `ip` as `username` may be tried now. Ask before verifying, so a
    /// locked client learns nothing from a right password.
    pub fn check(&self, ip: IpAddr, username: &str) -> Result<(), Locked> {
        let s = **self.settings.load();
        if s.attempts == 0 {
            return Ok(());
        }
        let now = self.clock.now();
        let address = self.by_address.get(&client_prefix(ip));
        if let Some(remaining) = address.and_then(|e| e.remaining(now)) {
            return Err(Locked {
                by: LockedBy::Address,
                remaining,
            });
        }
        if !s.per_username {
            return Ok(());
        }
        match self
            .by_username
            .get(username)
            .and_then(|e| e.remaining(now))
        {
            Some(remaining) => Err(Locked {
                by: LockedBy::Username,
                remaining,
            }),
            None => Ok(()),
        }
    }

    /// Counts a failed AUTH from `ip` as `username`; `known_user` says whether the username
    /// exists (only those are counted per username). Returns the lockout this failure
    /// started, if any: the server then closes the session with `421 4.7.0`.
    pub fn record_failure(&self, ip: IpAddr, username: &str, known_user: bool) -> Option<Locked> {
        let s = **self.settings.load();
        if s.attempts == 0 {
            return None;
        }
        let now = self.clock.now();
        let cap = Some(self.max_addresses);
        let address = count(&self.by_address, client_prefix(ip), now, &s, cap);
        let user = if s.per_username && known_user {
            count(&self.by_username, username.to_owned(), now, &s, None)
        } else {
            None
        };
        let locked = |by, remaining| Locked { by, remaining };
        address
            .map(|r| locked(LockedBy::Address, r))
            .or_else(|| user.map(|r| locked(LockedBy::Username, r)))
    }

    /// Removes entries that no longer count or lock, and returns their memory.
    pub fn evict(&self) {
        let s = **self.settings.load();
        let now = self.clock.now();
        self.by_address.retain(|_, e| !e.expired(now, s.window));
        self.by_address.shrink_to_fit();
        if s.per_username && s.attempts > 0 {
            self.by_username.retain(|_, e| !e.expired(now, s.window));
        } else {
            self.by_username.clear();
        }
        self.by_username.shrink_to_fit();
    }

    /// Addresses and usernames tracked (for metrics and tests).
    pub fn tracked(&self) -> usize {
        self.by_address.len() + self.by_username.len()
    }
}

/// Counts a failure for `key` in `map`, unless the map is at `cap` and `key` is new.
fn count<K: Hash + Eq>(
    map: &DashMap<K, Entry>,
    key: K,
    now: Instant,
    s: &Settings,
    cap: Option<usize>,
) -> Option<Duration> {
    if cap.is_some_and(|cap| map.len() >= cap) && !map.contains_key(&key) {
        return None;
    }
    map.entry(key)
        .or_insert_with(|| Entry::fresh(now))
        .count(now, s)
}

mod shared;
#[cfg(test)]
mod tests;

pub use shared::LockRefusal;
