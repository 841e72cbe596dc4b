//! Every Prometheus metric postern exports, declared in one place: the table of [`Spec`]s
//! below (README: "Metrics").
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
#[cfg(test)]
mod tests;
mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use labels::{
    AttemptResult, AuthResult, Completion, ConnResult, DsnAction, RcptOutcome, STAGES, TlsVersion,
};
pub use listener::{ListenerMetrics, SessionGuard};
pub use process::ProcessMetrics;
pub use redis::{CallResult, Feature, RedisMetrics};
pub use upstream::UpstreamMetrics;

use crate::upstream::oauth2::{TokenObserver, TokenResult};

/// A metric's name, help text and labels.
#[derive(Debug)]
struct Spec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

const fn spec(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Spec {
    Spec { name, help, labels }
}

// Build and process.
const BUILD_INFO: Spec = spec(
    "postern_build_info",
    "Version and git commit of this build (always 1).",
    &["version", "commit"],
);
const START_TIME: Spec = spec(
    "postern_start_time_seconds",
    "Unix time the instance started.",
    &[],
);
const READY: Spec = spec("postern_ready", "1 when /readyz answers 200.", &[]);
// The front end.
const CONNECTIONS: Spec = spec(
    "postern_connections_total",
    "Connections accepted, or refused at connect by reason.",
    &["listener", "result"],
);
const SESSIONS_ACTIVE: Spec = spec(
    "postern_sessions_active",
    "Sessions open now.",
    &["listener"],
);
const SESSIONS_CLOSED: Spec = spec(
    "postern_sessions_closed_total",
    "Sessions the server closed, by reason.",
    &["listener", "reason"],
);
const TLS_HANDSHAKES: Spec = spec(
    "postern_tls_handshakes_total",
    "Server-side TLS handshakes by version and result.",
    &["listener", "version", "result"],
);
const AUTH_ATTEMPTS: Spec = spec(
    "postern_auth_attempts_total",
    "AUTH attempts by mechanism and result.",
    &["listener", "mechanism", "result"],
);
const AUTH_LOCKOUTS: Spec = spec(
    "postern_auth_lockouts_total",
    "AUTH lockouts started.",
    &["listener"],
);
const MESSAGES_ACCEPTED: Spec = spec(
    "postern_messages_accepted_total",
    "Messages queued (250 after DATA).",
    &["listener"],
);
const MESSAGES_REFUSED: Spec = spec(
    "postern_messages_refused_total",
    "Transactions or messages refused, by reason.",
    &["listener", "reason"],
);
const RECIPIENTS: Spec = spec(
    "postern_recipients_total",
    "Recipients accepted or refused at RCPT.",
    &["listener", "outcome"],
);
const MESSAGE_SIZE: Spec = spec(
    "postern_message_size_bytes",
    "Size of accepted messages as stored.",
    &["listener"],
);
const RATE_LIMIT_HITS: Spec = spec(
    "postern_rate_limit_hits_total",
    "Rate-limit refusals by rule.",
    &["rule"],
);
// The queue.
const QUEUE_MESSAGES: Spec = spec("postern_queue_messages", "Messages in the queue.", &[]);
const QUEUE_BYTES: Spec = spec(
    "postern_queue_bytes",
    "Bytes of the messages in the queue.",
    &[],
);
const QUEUE_OLDEST: Spec = spec(
    "postern_queue_oldest_age_seconds",
    "Age of the oldest message in the queue (0: empty).",
    &[],
);
const SPOOL_COMMIT: Spec = spec(
    "postern_spool_commit_duration_seconds",
    "One group commit: data sync, renames, directory sync.",
    &[],
);
const SPOOL_BATCH: Spec = spec(
    "postern_spool_commit_batch_messages",
    "Messages made durable per group commit.",
    &[],
);
const COMPLETED: Spec = spec(
    "postern_messages_completed_total",
    "Messages leaving the queue, by how.",
    &["result"],
);
const DSN_QUEUED: Spec = spec(
    "postern_dsn_queued_total",
    "Delivery status notifications queued to senders, by action.",
    &["action"],
);
// Delivery and upstreams.
const DELIVERY_ATTEMPTS: Spec = spec(
    "postern_delivery_attempts_total",
    "Delivery attempts by upstream and result.",
    &["upstream", "result"],
);
const DELIVERY_RECIPIENTS: Spec = spec(
    "postern_delivery_recipients_total",
    "Recipient outcomes of delivery attempts.",
    &["upstream", "result"],
);
const DELIVERY_LATENCY: Spec = spec(
    "postern_delivery_latency_seconds",
    "From acceptance to the upstream's 250.",
    &["upstream"],
);
const UPSTREAM_OPEN: Spec = spec(
    "postern_upstream_connections_open",
    "Connections open to the upstream.",
    &["upstream"],
);
const UPSTREAM_BUSY: Spec = spec(
    "postern_upstream_connections_busy",
    "Deliveries in progress (each holds or is opening a connection).",
    &["upstream"],
);
const UPSTREAM_FAILURES: Spec = spec(
    "postern_upstream_failures_total",
    "Failed delivery attempts and refused recipients by stage.",
    &["upstream", "stage"],
);
const UPSTREAM_UP: Spec = spec(
    "postern_upstream_up",
    "0 when the latest attempt could not reach or log in to the upstream.",
    &["upstream"],
);
const UPSTREAM_SHAPED: Spec = spec(
    "postern_upstream_shaped_total",
    "Times a message was held back for an upstream's cap or pause.",
    &["upstream", "cap"],
);
const UPSTREAM_THROTTLED: Spec = spec(
    "postern_upstream_throttled_total",
    "Throttling replies (432 4.3.2, 421 4.7.x) that paused the upstream.",
    &["upstream"],
);
const UPSTREAM_CIRCUIT_OPEN: Spec = spec(
    "postern_upstream_circuit_open",
    "1 while the upstream's circuit breaker skips it (open, or its probe in flight).",
    &["upstream"],
);
const UPSTREAM_CIRCUIT_OPENINGS: Spec = spec(
    "postern_upstream_circuit_openings_total",
    "Times the upstream's circuit breaker opened.",
    &["upstream"],
);
const TOKEN_REQUESTS: Spec = spec(
    "postern_oauth2_token_requests_total",
    "OAuth2 token endpoint requests by upstream and result (issued, refused, unavailable).",
    &["upstream", "result"],
);
const TOKEN_EXPIRY: Spec = spec(
    "postern_oauth2_token_expiry_timestamp_seconds",
    "When the upstream's current OAuth2 access token expires, unix seconds.",
    &["upstream"],
);
// Configuration and TLS.
const RELOADS: Spec = spec(
    "postern_config_reloads_total",
    "Configuration reloads by result.",
    &["result"],
);
const RELOAD_OK: Spec = spec(
    "postern_config_last_reload_successful",
    "1 when the latest reload (or the start) succeeded.",
    &[],
);
const RELOAD_TIME: Spec = spec(
    "postern_config_last_reload_success_timestamp_seconds",
    "Unix time of the start or the latest good reload.",
    &[],
);
const CERT_EXPIRY: Spec = spec(
    "postern_tls_certificate_expiry_timestamp_seconds",
    "notAfter of each certificate the TLS listeners use, unix seconds, by its place in the config.",
    &["certificate"],
);

// The shared Redis (`scope: cluster`).
const REDIS_UP: Spec = spec(
    "postern_redis_up",
    "1 while the shared Redis answers; 0 while it is down (cluster limits fall back).",
    &[],
);
const REDIS_COMMANDS: Spec = spec(
    "postern_redis_commands_total",
    "Calls to the shared Redis by result (ok, error, timeout, skipped while down).",
    &["result"],
);
const REDIS_DURATION: Spec = spec(
    "postern_redis_command_duration_seconds",
    "Duration of the calls sent to the shared Redis.",
    &[],
);
const REDIS_FALLBACKS: Spec = spec(
    "postern_redis_fallbacks_total",
    "Decisions taken without Redis (down or slow), by feature and decision.",
    &["feature", "decision"],
);

/// Message sizes: 1 KiB to 64 MiB in powers of four.
const SIZE_BUCKETS: [f64; 9] = [
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
/// Group commits: half a millisecond to a second.
const COMMIT_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Messages per group commit.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Acceptance to the upstream's 250: ten milliseconds (a warm pool) to a day (retries).
const LATENCY_BUCKETS: [f64; 17] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    14400.0, 86400.0,
];

impl Spec {
    fn opts(&self) -> Opts {
        Opts::new(self.name, self.help)
    }

    fn counter(&self, r: &Registry) -> prometheus::Result<IntCounterVec> {
        registered(r, IntCounterVec::new(self.opts(), self.labels)?)
    }

    fn gauge(&self, r: &Registry) -> prometheus::Result<IntGaugeVec> {
        registered(r, IntGaugeVec::new(self.opts(), self.labels)?)
    }

    fn histogram(&self, r: &Registry, buckets: &[f64]) -> prometheus::Result<HistogramVec> {
        let opts = HistogramOpts::new(self.name, self.help).buckets(buckets.to_vec());
        registered(r, HistogramVec::new(opts, self.labels)?)
    }

    fn int_gauge(&self, r: &Registry) -> prometheus::Result<IntGauge> {
        registered(r, IntGauge::with_opts(self.opts())?)
    }

    fn float_gauge(&self, r: &Registry) -> prometheus::Result<Gauge> {
        registered(r, Gauge::with_opts(self.opts())?)
    }

    fn single_histogram(&self, r: &Registry, buckets: &[f64]) -> prometheus::Result<Histogram> {
        let opts = HistogramOpts::new(self.name, self.help).buckets(buckets.to_vec());
        registered(r, Histogram::with_opts(opts)?)
    }
}

fn registered<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: C,
) -> prometheus::Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

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
