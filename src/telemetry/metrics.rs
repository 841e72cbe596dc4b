//! Every Prometheus metric postern exports, declared in one place: the table of [`Spec`]s
//! below (docs/observability.md, "Metrics").
//!
//! One [`Metrics`] per running instance, with its own registry (tests run several servers in
//! one process). Label values come from enums ([`labels`]) or from config names (listeners,
//! upstreams, rate-limit rules), never from a client: no address, user name or sender is a
//! label.
//!
//! On the per-message path counting costs atomics only: each listener's and upstream's
//! series are resolved once ([`ListenerMetrics`], [`UpstreamMetrics`]) and then bumped
//! directly; the label maps behind them are looked up on rare paths only (a new upstream
//! name, an unusual refusal reason, a failure stage, a rate-limit hit).

mod labels;
mod listener;
mod process;
mod redis;
mod spec;
#[cfg(test)]
mod tests;
mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Registry, TextEncoder,
};

pub use labels::{
    AttemptResult, AuthResult, Completion, ConnResult, DsnAction, RcptOutcome, STAGES, TlsVersion,
};
pub use listener::{ListenerMetrics, SessionGuard};
pub use process::ProcessMetrics;
pub use redis::{CallResult, Feature, RedisMetrics};
pub use upstream::UpstreamMetrics;

use crate::upstream::oauth2::{TokenObserver, TokenResult};
use spec::*;

/// The registered families; [`Metrics`] derefs to them.
#[derive(Debug)]
pub struct Families {
    registry: Registry,
    connections: IntCounterVec,
    sessions_active: IntGaugeVec,
    sessions_closed: IntCounterVec,
    tls_handshakes: IntCounterVec,
    auth_attempts: IntCounterVec,
    auth_lockouts: IntCounterVec,
    messages_accepted: IntCounterVec,
    messages_refused: IntCounterVec,
    recipients: IntCounterVec,
    message_size: HistogramVec,
    rate_limit_hits: IntCounterVec,
    delivery_attempts: IntCounterVec,
    delivery_recipients: IntCounterVec,
    delivery_latency: HistogramVec,
    /// By [`Completion`], in `Completion::ALL` order.
    completed: [IntCounter; 4],
    /// By [`DsnAction`], in `DsnAction::ALL` order.
    dsn_queued: [IntCounter; 3],
    upstream_open: IntGaugeVec,
    upstream_busy: IntGaugeVec,
    upstream_failures: IntCounterVec,
    upstream_up: IntGaugeVec,
    upstream_shaped: IntCounterVec,
    upstream_throttled: IntCounterVec,
    upstream_circuit_open: IntGaugeVec,
    upstream_circuit_openings: IntCounterVec,
    token_requests: IntCounterVec,
    token_expiry: IntGaugeVec,
    reloads: IntCounterVec,
    /// Queue gauges, kept by the delivery runner.
    pub queue: QueueGauges,
    /// Group-commit histograms, fed by the spool's committer thread.
    pub spool: SpoolMetrics,
    /// 1 when the latest reload (or the start) succeeded.
    pub reload_ok: IntGauge,
    /// Unix time of the start or the latest good reload.
    pub reload_time: Gauge,
    /// Each certificate's notAfter, unix seconds, by config place (`tls`, `tls.sni[0]`,
    /// `listeners[NAME]`, ...).
    cert_expiry: IntGaugeVec,
    /// 1 when `/readyz` would answer 200.
    pub ready: IntGauge,
    /// Unix time the instance started.
    pub start_time: Gauge,
    /// The `process_*` series, read at scrape time.
    pub process: ProcessMetrics,
    /// The shared Redis's series.
    pub redis: RedisMetrics,
}

impl Families {
    /// Registers every family in a new registry, with the build info and the process
    /// collector.
    fn register() -> prometheus::Result<Families> {
        let r = Registry::new();
        let build = BUILD_INFO.gauge(&r)?;
        let version = [env!("CARGO_PKG_VERSION"), env!("POSTERN_GIT_COMMIT")];
        build.with_label_values(&version).set(1);
        Ok(Families {
            connections: CONNECTIONS.counter(&r)?,
            sessions_active: SESSIONS_ACTIVE.gauge(&r)?,
            sessions_closed: SESSIONS_CLOSED.counter(&r)?,
            tls_handshakes: TLS_HANDSHAKES.counter(&r)?,
            auth_attempts: AUTH_ATTEMPTS.counter(&r)?,
            auth_lockouts: AUTH_LOCKOUTS.counter(&r)?,
            messages_accepted: MESSAGES_ACCEPTED.counter(&r)?,
            messages_refused: MESSAGES_REFUSED.counter(&r)?,
            recipients: RECIPIENTS.counter(&r)?,
            message_size: MESSAGE_SIZE.histogram(&r, &SIZE_BUCKETS)?,
            rate_limit_hits: RATE_LIMIT_HITS.counter(&r)?,
            delivery_attempts: DELIVERY_ATTEMPTS.counter(&r)?,
            delivery_recipients: DELIVERY_RECIPIENTS.counter(&r)?,
            delivery_latency: DELIVERY_LATENCY.histogram(&r, &LATENCY_BUCKETS)?,
            completed: {
                let vec = COMPLETED.counter(&r)?;
                Completion::ALL.map(|c| vec.with_label_values(&[c.as_str()]))
            },
            dsn_queued: {
                let vec = DSN_QUEUED.counter(&r)?;
                DsnAction::ALL.map(|a| vec.with_label_values(&[a.as_str()]))
            },
            upstream_open: UPSTREAM_OPEN.gauge(&r)?,
            upstream_busy: UPSTREAM_BUSY.gauge(&r)?,
            upstream_failures: UPSTREAM_FAILURES.counter(&r)?,
            upstream_up: UPSTREAM_UP.gauge(&r)?,
            upstream_shaped: UPSTREAM_SHAPED.counter(&r)?,
            upstream_throttled: UPSTREAM_THROTTLED.counter(&r)?,
            upstream_circuit_open: UPSTREAM_CIRCUIT_OPEN.gauge(&r)?,
            upstream_circuit_openings: UPSTREAM_CIRCUIT_OPENINGS.counter(&r)?,
            token_requests: TOKEN_REQUESTS.counter(&r)?,
            token_expiry: TOKEN_EXPIRY.gauge(&r)?,
            reloads: RELOADS.counter(&r)?,
            queue: QueueGauges {
                messages: QUEUE_MESSAGES.int_gauge(&r)?,
                bytes: QUEUE_BYTES.int_gauge(&r)?,
                oldest_age: QUEUE_OLDEST.int_gauge(&r)?,
                oldest_received: Arc::new(AtomicU64::new(0)),
            },
            spool: SpoolMetrics {
                commit: SPOOL_COMMIT.single_histogram(&r, &COMMIT_BUCKETS)?,
                batch: SPOOL_BATCH.single_histogram(&r, &BATCH_BUCKETS)?,
            },
            reload_ok: RELOAD_OK.int_gauge(&r)?,
            reload_time: RELOAD_TIME.float_gauge(&r)?,
            cert_expiry: CERT_EXPIRY.gauge(&r)?,
            ready: READY.int_gauge(&r)?,
            start_time: START_TIME.float_gauge(&r)?,
            process: ProcessMetrics::register(&r)?,
            redis: RedisMetrics::register(&r)?,
            registry: r,
        })
    }
}

/// The queue's gauges.
#[derive(Debug, Clone)]
pub struct QueueGauges {
    /// Messages in the queue.
    pub messages: IntGauge,
    /// Their bytes.
    pub bytes: IntGauge,
    /// Age of the oldest, set at scrape time from [`QueueGauges::oldest_received`].
    pub oldest_age: IntGauge,
    /// When the oldest queued message was received, unix seconds (0: queue empty).
    pub oldest_received: Arc<AtomicU64>,
}

impl QueueGauges {
    /// Sets the oldest message's age as of `now` (unix seconds).
    pub fn refresh(&self, now: u64) {
        let oldest = self.oldest_received.load(Ordering::Relaxed);
        let age = if oldest == 0 {
            0
        } else {
            now.saturating_sub(oldest)
        };
        self.oldest_age.set(i64::try_from(age).unwrap_or(i64::MAX));
    }
}

/// The spool's group-commit histograms.
#[derive(Debug, Clone)]
pub struct SpoolMetrics {
    /// Seconds per group commit.
    pub commit: Histogram,
    /// Messages per group commit.
    pub batch: Histogram,
}

impl crate::spool::CommitObserver for SpoolMetrics {
    fn committed(&self, messages: usize, took: Duration) {
        self.commit.observe(took.as_secs_f64());
        self.batch.observe(messages as f64);
    }
}

/// One instance's metrics: the families, and the per-upstream and per-rule handles
/// resolved so far.
#[derive(Debug)]
pub struct Metrics {
    families: Families,
    upstreams: Family<UpstreamMetrics>,
    rules: Family<IntCounter>,
}

impl std::ops::Deref for Metrics {
    type Target = Families;
    fn deref(&self) -> &Families {
        &self.families
    }
}

impl Metrics {
    /// Registers every metric, the build info and the process collector.
    pub fn new() -> prometheus::Result<Metrics> {
        let families = Families::register()?;
        for result in ["success", "failure"] {
            families.reloads.with_label_values(&[result]);
        }
        Ok(Metrics {
            families,
            upstreams: Family::default(),
            rules: Family::default(),
        })
    }

    /// The listener's handles, its series registered at zero.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        ListenerMetrics::new(&self.families, name)
    }

    /// The upstream's handles (made on first use, kept for the process's life).
    pub fn upstream(&self, name: &str) -> Arc<UpstreamMetrics> {
        self.upstreams
            .get(name, |n| UpstreamMetrics::new(&self.families, n))
    }

    /// Registers the upstreams' series at zero, so rates work before their first attempt.
    pub fn register_upstreams<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            self.upstream(name);
        }
    }

    /// Forgets the upstreams a reload removed: their gauges leave the scrape (an `up` of 0
    /// would keep an alert firing for an upstream that no longer exists); their counters
    /// stay, as counters do.
    pub fn retain_upstreams(&self, names: &[&str]) {
        let gone = self.upstreams.names_except(names);
        for name in &gone {
            let gauges = [
                &self.upstream_up,
                &self.upstream_open,
                &self.upstream_busy,
                &self.upstream_circuit_open,
                &self.token_expiry,
            ];
            for gauge in gauges {
                let _ = gauge.remove_label_values(&[name]);
            }
        }
        self.upstreams.remove(&gone);
    }

    /// Sets the expiry gauge to exactly these certificates (label, notAfter): those no
    /// longer in use lose their series.
    pub fn certificate_expiries(&self, certificates: &[(String, i64)]) {
        self.cert_expiry.reset();
        for (label, not_after) in certificates {
            self.cert_expiry.with_label_values(&[label]).set(*not_after);
        }
    }

    /// Counts a rate-limit refusal by `rule`.
    pub fn rate_limit_hit(&self, rule: &str) {
        self.rules
            .get(rule, |r| self.rate_limit_hits.with_label_values(&[r]))
            .inc();
    }

    /// Registers the rules' series at zero.
    pub fn register_rules<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            self.rules
                .get(name, |r| self.rate_limit_hits.with_label_values(&[r]));
        }
    }

    /// Marks the start: the time, and the configuration as loaded.
    pub fn started(&self, now_unix: u64) {
        self.start_time.set(now_unix as f64);
        self.reload_ok.set(1);
        self.reload_time.set(now_unix as f64);
    }

    /// Counts a message leaving the queue.
    pub fn completed(&self, how: Completion) {
        self.completed[how as usize].inc();
    }

    /// Counts a delivery status notification queued to a sender.
    pub fn dsn_queued(&self, action: DsnAction) {
        self.dsn_queued[action as usize].inc();
    }

    /// Counts a reload; a good one also stamps the time.
    pub fn reloaded(&self, ok: bool, now_unix: u64) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
        self.reload_ok.set(i64::from(ok));
        if ok {
            self.reload_time.set(now_unix as f64);
        }
    }

    /// Sets the upstream's connection gauges (at scrape time, from its pool).
    pub fn upstream_connections(&self, name: &str, open: usize, busy: usize) {
        let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.upstream_open
            .with_label_values(&[name])
            .set(to_i64(open));
        self.upstream_busy
            .with_label_values(&[name])
            .set(to_i64(busy));
    }

    /// Every metric in the Prometheus text format (the `process_*` series read now).
    pub fn render(&self) -> Result<String, prometheus::Error> {
        self.process.refresh();
        let mut out = Vec::with_capacity(32 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// Token requests are rare (one an hour per upstream): the label maps are looked up each
/// time.
impl TokenObserver for Metrics {
    fn token_request(&self, upstream: &str, result: TokenResult) {
        if result == TokenResult::Issued {
            // The other results at zero too, so that a rate of refusals works from the start.
            for r in TokenResult::ALL {
                self.token_requests
                    .with_label_values(&[upstream, r.as_str()]);
            }
        }
        self.token_requests
            .with_label_values(&[upstream, result.as_str()])
            .inc();
    }

    fn token_expiry(&self, upstream: &str, unix: u64) {
        self.token_expiry
            .with_label_values(&[upstream])
            .set(i64::try_from(unix).unwrap_or(i64::MAX));
    }
}

/// Handles by name, made on first use: lookups are a lock-free load; a miss copies the
/// map (rare: once per new name).
#[derive(Debug)]
struct Family<T> {
    map: ArcSwap<HashMap<String, Arc<T>>>,
}

impl<T> Default for Family<T> {
    fn default() -> Self {
        Family {
            map: ArcSwap::from_pointee(HashMap::new()),
        }
    }
}

impl<T> Family<T> {
    /// The names known, but for `keep`.
    fn names_except(&self, keep: &[&str]) -> Vec<String> {
        let map = self.map.load();
        map.keys()
            .filter(|name| !keep.contains(&name.as_str()))
            .cloned()
            .collect()
    }

    /// Forgets `names` (they are made afresh on their next use).
    fn remove(&self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        self.map.rcu(|map| {
            let mut map = HashMap::clone(map);
            for name in names {
                map.remove(name);
            }
            map
        });
    }

    fn get(&self, name: &str, make: impl Fn(&str) -> T) -> Arc<T> {
        if let Some(found) = self.map.load().get(name) {
            return found.clone();
        }
        let made = Arc::new(make(name));
        self.map.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(name.to_owned()).or_insert_with(|| made.clone());
            map
        });
        self.map.load().get(name).cloned().unwrap_or(made)
    }
}
