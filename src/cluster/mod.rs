//! The Redis shared by several postern instances (`redis:`), for the limits marked
//! `scope: cluster`: rate-limit rules, the AUTH lockout and upstream shaping.
//!
//! # One way to call it, under a deadline
//! Everything postern keeps in Redis is a Lua script, loaded once and run with EVALSHA
//! (redis-rs [`redis::Script`] falls back to loading it on `NOSCRIPT`, as after a Redis
//! restart). No Redis module is used: managed Redis services cannot load them. Each call goes
//! through [`Redis::run`], which bounds it by `redis.command_timeout` (a tokio timeout, so a
//! test's paused clock drives it too). A call that fails or times out marks Redis *down*:
//! the following calls answer [`Unavailable::Down`] at once, without a round trip, and each
//! limit applies its `on_redis_error` (allow or deny). A background task ([`Redis::watch`])
//! then PINGs it with a growing pause (100 ms doubling to 2 s) on a fresh connection, and
//! marks it *up* at the first answer; while Redis is up it PINGs it every [`HEARTBEAT`], so
//! that an outage shows before a session needs Redis. So a dead or slow Redis costs a session at most one
//! `command_timeout`, and recovery needs no restart. Both transitions are logged once
//! (`warn` with the error, `info`) and `postern_redis_up` follows them.
//!
//! At start Redis is down until the first PING answers (in the background: postern starts
//! and serves with Redis unreachable, limits falling back).
//!
//! # Keys
//! Every key is `redis.key_prefix` (default `postern:`) followed by the feature and its own
//! parts, e.g. `postern:rl:per-user-messages:alice` ([`Redis::key`]). A script touches
//! several keys; they carry no `{hash tag}` because postern talks to one Redis node (a
//! primary, with replicas or Sentinel for failover), not to a Redis Cluster.
//!
//! # Layout
//! - `connect.rs`: the client from the config (URL, user, password file, TLS).
//! - [`gcra`]: the rate-limit script (check several buckets at once, or reserve).
//! - [`lockout`]: the AUTH-lockout script (count failures, hold locks).
//! - [`shaping`]: an upstream's shared pause (its caps are GCRA reservations).
//! - `test_server.rs` (tests only): a real `redis-server` on a free loopback port.

mod connect;
pub mod gcra;
pub mod lockout;
pub mod shaping;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, ScriptInvocation};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use connect::ConnectError;

use crate::config::redis::RedisConfig;
use crate::telemetry::metrics::{CallResult, Feature, RedisMetrics};

/// Why a call to Redis has no answer. Each limit then applies its `on_redis_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Redis was already known to be down; nothing was sent.
    Down,
    /// This call failed (connection refused or lost, an error reply).
    Error,
    /// This call got no answer within `redis.command_timeout`.
    Timeout,
}

/// The first pause of the prober after a failed PING; it doubles up to [`PROBE_MAX`].
const PROBE_MIN: Duration = Duration::from_millis(100);
/// The longest pause of the prober between two PINGs.
pub const PROBE_MAX: Duration = Duration::from_secs(2);

/// How often the prober PINGs Redis while it is up.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// A handle on the shared Redis; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    /// The connection the calls use; the prober swaps in a fresh one that answered.
    conn: ArcSwap<ConnectionManager>,
    up: AtomicBool,
    /// Told when a call marks Redis down, so that the prober starts.
    wake: Notify,
    command_timeout: Duration,
    connect_timeout: Duration,
    prefix: String,
    /// For logs: the URL as configured (it holds no password; validation refuses one).
    url: String,
    metrics: RedisMetrics,
    /// The current outage's number: 1 for the one at start, one more each time Redis goes
    /// down again.
    outage: AtomicU64,
    /// By [`Feature`] then allow / deny: the outage whose first fallback was logged.
    fallback_logged: [[AtomicU64; 2]; 3],
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// A handle for `cfg` (validated, paths resolved), down until [`Redis::watch`] sees it
    /// answer. Reads the password file; connects nothing yet.
    pub fn new(cfg: &RedisConfig, metrics: RedisMetrics) -> Result<Redis, ConnectError> {
        let client = connect::client(cfg)?;
        let conn = manager(&client, cfg.connect_timeout.get())?;
        metrics.set_up(false);
        Ok(Redis {
            inner: Arc::new(Inner {
                client,
                conn: ArcSwap::from_pointee(conn),
                up: AtomicBool::new(false),
                wake: Notify::new(),
                command_timeout: cfg.command_timeout.get(),
                connect_timeout: cfg.connect_timeout.get(),
                prefix: cfg.key_prefix.clone(),
                url: cfg.url.clone(),
                metrics,
                outage: AtomicU64::new(1),
                fallback_logged: Default::default(),
            }),
        })
    }

    /// Whether the latest call or PING got an answer.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// The key `prefix` + `parts` joined by `:`, e.g. `postern:rl:per-user-messages:alice`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.inner.prefix.clone();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                key.push(':');
            }
            key.push_str(part);
        }
        key
    }

    /// The metrics.
    pub fn metrics(&self) -> &RedisMetrics {
        &self.inner.metrics
    }

    /// Counts a decision `feature` took without Redis (`allowed` or denied) in
    /// `postern_redis_fallbacks_total`, and says whether it is the first of its kind in this
    /// outage: the caller logs that one at `info` and the others at `debug`, so that an
    /// outage under load logs a few lines, not one per session.
    pub fn fallback(&self, feature: Feature, allowed: bool) -> bool {
        let inner = &self.inner;
        inner.metrics.fallback(feature, allowed);
        let outage = inner.outage.load(Ordering::Acquire);
        let logged = &inner.fallback_logged[feature as usize][usize::from(!allowed)];
        logged.swap(outage, Ordering::AcqRel) != outage
    }

    /// Runs one script invocation within `redis.command_timeout`; see the module
    /// documentation for what a failure does.
    pub async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        let inner = &self.inner;
        if !self.is_up() {
            inner.metrics.call(CallResult::Skipped, None);
            return Err(Unavailable::Down);
        }
        let mut conn = ConnectionManager::clone(&inner.conn.load());
        let started = Instant::now();
        let answer =
            tokio::time::timeout(inner.command_timeout, invocation.invoke_async(&mut conn)).await;
        self.settle(answer, started)
    }

    /// Counts one answer (or its absence) and marks Redis down when there was none.
    fn settle<T>(
        &self,
        answer: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
        started: Instant,
    ) -> Result<T, Unavailable> {
        let inner = &self.inner;
        let took = Some(started.elapsed());
        match answer {
            Ok(Ok(value)) => {
                inner.metrics.call(CallResult::Ok, took);
                Ok(value)
            }
            Ok(Err(e)) => {
                inner.metrics.call(CallResult::Error, took);
                self.mark_down(&e.to_string());
                Err(Unavailable::Error)
            }
            Err(_) => {
                inner.metrics.call(CallResult::Timeout, took);
                let limit = inner.command_timeout;
                self.mark_down(&format!(
                    "no answer within {limit:?} (redis.command_timeout)"
                ));
                Err(Unavailable::Timeout)
            }
        }
    }

    /// Marks Redis down (logged once per outage) and wakes the prober.
    fn mark_down(&self, error: &str) {
        if self.inner.up.swap(false, Ordering::AcqRel) {
            self.inner.outage.fetch_add(1, Ordering::AcqRel);
            warn!(url = %self.inner.url, error, "redis is unavailable; cluster limits apply their on_redis_error until it answers");
            self.inner.metrics.set_up(false);
        }
        self.inner.wake.notify_one();
    }

    /// The prober: while Redis is down, PINGs it on a fresh connection with a growing pause
    /// and marks it up at the first answer (loading the scripts then); while it is up, sleeps
    /// until a call marks it down. Returns when `stop` is cancelled.
    ///
    /// A Redis that answers PING but fails every call (a replica answering `READONLY`, an
    /// out-of-memory one) would be marked up and down again as fast as calls come, each
    /// time with a warning and a recovery in the log. So when Redis goes down less than
    /// [`HEARTBEAT`] after it came up, the prober first waits, and the pause keeps growing
    /// from where it was (to [`PROBE_MAX`]) instead of starting again at [`PROBE_MIN`].
    pub async fn watch(self, stop: CancellationToken) {
        let mut logged = false;
        let mut pause = PROBE_MIN;
        let mut up_since: Option<Instant> = None;
        loop {
            if self.is_up() {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.inner.wake.notified() => continue,
                    () = tokio::time::sleep(HEARTBEAT) => self.heartbeat().await,
                }
                continue;
            }
            match up_since.take() {
                Some(since) if since.elapsed() < HEARTBEAT => {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(PROBE_MAX);
                }
                _ => pause = PROBE_MIN,
            }
            while !self.is_up() {
                match self.probe().await {
                    Ok(()) => break,
                    Err(error) if !logged => {
                        warn!(url = %self.inner.url, error, "redis is unavailable; cluster limits apply their on_redis_error until it answers");
                        logged = true;
                    }
                    Err(error) => debug!(url = %self.inner.url, error, "redis still unavailable"),
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(PROBE_MAX);
            }
            logged = true;
            up_since = Some(Instant::now());
        }
    }

    /// A PING on the connection in use while Redis is up and idle, so that an outage shows
    /// in `postern_redis_up` (and in the log) before a session needs Redis.
    async fn heartbeat(&self) {
        let inner = &self.inner;
        let mut conn = ConnectionManager::clone(&inner.conn.load());
        let started = Instant::now();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<()>(&mut conn);
        let answer = tokio::time::timeout(inner.command_timeout, ping).await;
        // A failure is counted, logged and marks Redis down; nothing else to do here.
        let _ = self.settle(answer, started);
    }

    /// One PING (and the scripts loaded) on a fresh connection, within the connect and
    /// command timeouts; on success the connection is swapped in and Redis marked up.
    async fn probe(&self) -> Result<(), String> {
        let inner = &self.inner;
        let mut conn = manager(&inner.client, inner.connect_timeout).map_err(|e| e.to_string())?;
        let limit = inner.connect_timeout + inner.command_timeout;
        let started = Instant::now();
        let ping = async {
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            for script in [gcra::script(), lockout::script(), shaping::script()] {
                script.prepare_invoke().load_async(&mut conn).await?;
            }
            Ok::<(), redis::RedisError>(())
        };
        let answer = tokio::time::timeout(limit, ping).await;
        let took = Some(started.elapsed());
        match answer {
            Ok(Ok(())) => {
                inner.metrics.call(CallResult::Ok, took);
                inner.conn.store(Arc::new(conn));
                inner.up.store(true, Ordering::Release);
                inner.metrics.set_up(true);
                info!(url = %inner.url, "redis is available; cluster limits are shared again");
                Ok(())
            }
            Ok(Err(e)) => {
                inner.metrics.call(CallResult::Error, took);
                Err(e.to_string())
            }
            Err(_) => {
                inner.metrics.call(CallResult::Timeout, took);
                Err(format!("no answer within {limit:?}"))
            }
        }
    }
}

/// A connection manager that connects on first use, once per attempt (the prober retries).
fn manager(
    client: &redis::Client,
    connect_timeout: Duration,
) -> Result<ConnectionManager, ConnectError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(None)
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(ConnectError::client)
}
