//! Every Prometheus metric postern exports, declared in one place (README: "Metrics").
//!
//! One [`Metrics`] per running instance, with its own registry (tests run several servers in
//! one process). Label values come from enums or from config names (listeners, upstreams,
//! rate-limit rules), never from a client: no address, user name or sender is a label.
//!
//! On the per-message path counting costs atomics only: each listener's and upstream's
//! counters are resolved once ([`ListenerMetrics`], [`UpstreamMetrics`]) and then bumped
//! directly; the label maps behind them are looked up on rare paths only (a new upstream
//! name, an unusual refusal reason, a failure stage).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::reason::Reason;
use crate::smtp::sasl::Mechanism;

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

/// Why a connection was refused before its session began (or `Accepted`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnResult {
    /// Served.
    Accepted,
    /// Not in the listener's `allow_networks`.
    Allowlist,
    /// Over the named `connections` rate rule.
    ConnectionRate(String),
    /// Over a connection cap.
    ConnectionCap,
}

/// The `result` label values of `postern_connections_total`, in [`ConnResult::index`] order.
const CONN_RESULTS: [&str; 4] = ["accepted", "allowlist", "connection_rate", "connection_cap"];

impl ConnResult {
    fn index(&self) -> usize {
        match self {
            ConnResult::Accepted => 0,
            ConnResult::Allowlist => 1,
            ConnResult::ConnectionRate(_) => 2,
            ConnResult::ConnectionCap => 3,
        }
    }
}

/// The TLS version a handshake settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// What came of an AUTH attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// The password was verified.
    Success,
    /// The password matched a recent success (no argon2 run).
    Cached,
    /// Unknown user or wrong password.
    Failure,
    /// Refused while the address or user is locked out.
    LockedOut,
    /// The verifier was busy: `454`, try again.
    Deferred,
}

impl AuthResult {
    const ALL: [AuthResult; 5] = [
        AuthResult::Success,
        AuthResult::Cached,
        AuthResult::Failure,
        AuthResult::LockedOut,
        AuthResult::Deferred,
    ];

    fn as_str(self) -> &'static str {
        match self {
            AuthResult::Success => "success",
            AuthResult::Cached => "cached",
            AuthResult::Failure => "failure",
            AuthResult::LockedOut => "locked_out",
            AuthResult::Deferred => "deferred",
        }
    }
}

/// The outcome of one delivery attempt of one message at one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// The upstream took it (for every recipient it did not refuse for good).
    Delivered,
    /// To be retried: a 4xx, an unreachable upstream, a missing extension.
    Deferred,
    /// Refused for good (5xx) for every pending recipient.
    Failed,
    /// Sent, but no reply to the final dot: the upstream may have it.
    MaybeDelivered,
}

impl AttemptResult {
    const ALL: [AttemptResult; 4] = [
        AttemptResult::Delivered,
        AttemptResult::Deferred,
        AttemptResult::Failed,
        AttemptResult::MaybeDelivered,
    ];

    /// The label value and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Delivered => "delivered",
            AttemptResult::Deferred => "deferred",
            AttemptResult::Failed => "failed",
            AttemptResult::MaybeDelivered => "maybe_delivered",
        }
    }
}

/// What became of one recipient in a delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptOutcome {
    /// Accepted by the upstream.
    Delivered,
    /// Refused for now (4xx): retried.
    Deferred,
    /// Refused for good (5xx), or expired.
    Failed,
}

impl RcptOutcome {
    const ALL: [RcptOutcome; 3] = [
        RcptOutcome::Delivered,
        RcptOutcome::Deferred,
        RcptOutcome::Failed,
    ];

    /// The label value and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            RcptOutcome::Delivered => "delivered",
            RcptOutcome::Deferred => "deferred",
            RcptOutcome::Failed => "failed",
        }
    }
}

/// How a message left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Every recipient delivered.
    Delivered,
    /// Some recipient failed for good: moved to `failed/`.
    Failed,
    /// `queue.max_age` reached with recipients pending: moved to `failed/`.
    Expired,
}

impl Completion {
    const ALL: [Completion; 3] = [
        Completion::Delivered,
        Completion::Failed,
        Completion::Expired,
    ];

    /// The label value and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Completion::Delivered => "delivered",
            Completion::Failed => "failed",
            Completion::Expired => "expired",
        }
    }
}

/// The reasons a session is closed by the server (pre-registered for every listener).
const CLOSE_REASONS: [Reason; 9] = [
    Reason::Timeout,
    Reason::DataRate,
    Reason::SessionDuration,
    Reason::TooManyErrors,
    Reason::JunkCommands,
    Reason::TooManyMessages,
    Reason::Lockout,
    Reason::ShuttingDown,
    Reason::StaleRules,
];

/// The reasons a transaction or message is refused (pre-registered for every listener).
const REFUSAL_REASONS: [Reason; 9] = [
    Reason::SenderNotOwned,
    Reason::AuthRequired,
    Reason::NoRoute,
    Reason::RateLimit,
    Reason::Size,
    Reason::BareLineEnding,
    Reason::HeaderSenderNotOwned,
    Reason::HeaderTooLarge,
    Reason::QueueError,
];

/// Upstream failure stages (pre-registered for every upstream).
pub const STAGES: [&str; 13] = [
    "connect",
    "tls",
    "greeting",
    "ehlo",
    "starttls",
    "auth",
    "mail",
    "rcpt",
    "data",
    "body",
    "final_dot",
    "rset",
    "directory",
];

/// The labelled families; [`Metrics`] derefs to them.
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
    completed: IntCounterVec,
    upstream_open: IntGaugeVec,
    upstream_busy: IntGaugeVec,
    upstream_failures: IntCounterVec,
    upstream_up: IntGaugeVec,
    reloads: IntCounterVec,
    /// Queue gauges, kept by the delivery runner.
    pub queue: QueueGauges,
    /// Group-commit histograms, fed by the spool's committer thread.
    pub spool: SpoolMetrics,
    /// 1 when the latest reload (or the start) succeeded.
    pub reload_ok: IntGauge,
    /// Unix time of the start or the latest good reload.
    pub reload_time: Gauge,
    /// The listeners' certificate's notAfter, unix seconds.
    pub cert_expiry: Gauge,
    /// 1 when `/readyz` would answer 200.
    pub ready: IntGauge,
    /// Unix time the instance started.
    pub start_time: Gauge,
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

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

fn single<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: C,
) -> prometheus::Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Registers every metric, the build info and the process collector.
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let build = gauge(
            &r,
            "postern_build_info",
            "Version and git commit of this build (always 1).",
            &["version", "commit"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("POSTERN_GIT_COMMIT")])
            .set(1);
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let families = Families {
            connections: counter(
                &r,
                "postern_connections_total",
                "Connections accepted, or refused at connect by reason.",
                &["listener", "result"],
            )?,
            sessions_active: gauge(
                &r,
                "postern_sessions_active",
                "Sessions open now.",
                &["listener"],
            )?,
            sessions_closed: counter(
                &r,
                "postern_sessions_closed_total",
                "Sessions the server closed, by reason.",
                &["listener", "reason"],
            )?,
            tls_handshakes: counter(
                &r,
                "postern_tls_handshakes_total",
                "Server-side TLS handshakes by version and result.",
                &["listener", "version", "result"],
            )?,
            auth_attempts: counter(
                &r,
                "postern_auth_attempts_total",
                "AUTH attempts by mechanism and result.",
                &["listener", "mechanism", "result"],
            )?,
            auth_lockouts: counter(
                &r,
                "postern_auth_lockouts_total",
                "AUTH lockouts started.",
                &["listener"],
            )?,
            messages_accepted: counter(
                &r,
                "postern_messages_accepted_total",
                "Messages queued (250 after DATA).",
                &["listener"],
            )?,
            messages_refused: counter(
                &r,
                "postern_messages_refused_total",
                "Transactions or messages refused, by reason.",
                &["listener", "reason"],
            )?,
            recipients: counter(
                &r,
                "postern_recipients_total",
                "Recipients accepted or refused at RCPT.",
                &["listener", "outcome"],
            )?,
            message_size: histogram(
                &r,
                "postern_message_size_bytes",
                "Size of accepted messages as stored.",
                &["listener"],
                &SIZE_BUCKETS,
            )?,
            rate_limit_hits: counter(
                &r,
                "postern_rate_limit_hits_total",
                "Rate-limit refusals by rule.",
                &["rule"],
            )?,
            delivery_attempts: counter(
                &r,
                "postern_delivery_attempts_total",
                "Delivery attempts by upstream and result.",
                &["upstream", "result"],
            )?,
            delivery_recipients: counter(
                &r,
                "postern_delivery_recipients_total",
                "Recipient outcomes of delivery attempts.",
                &["upstream", "result"],
            )?,
            delivery_latency: histogram(
                &r,
                "postern_delivery_latency_seconds",
                "From acceptance to the upstream's 250.",
                &["upstream"],
                &LATENCY_BUCKETS,
            )?,
            completed: counter(
                &r,
                "postern_messages_completed_total",
                "Messages leaving the queue, by how.",
                &["result"],
            )?,
            upstream_open: gauge(
                &r,
                "postern_upstream_connections_open",
                "Connections open to the upstream.",
                &["upstream"],
            )?,
            upstream_busy: gauge(
                &r,
                "postern_upstream_connections_busy",
                "Connections carrying a delivery now.",
                &["upstream"],
            )?,
            upstream_failures: counter(
                &r,
                "postern_upstream_failures_total",
                "Failed delivery attempts by stage.",
                &["upstream", "stage"],
            )?,
            upstream_up: gauge(
                &r,
                "postern_upstream_up",
                "0 when the latest attempt could not reach or log in to the upstream.",
                &["upstream"],
            )?,
            reloads: counter(
                &r,
                "postern_config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            )?,
            queue: QueueGauges {
                messages: single(
                    &r,
                    IntGauge::new("postern_queue_messages", "Messages in the queue.")?,
                )?,
                bytes: single(
                    &r,
                    IntGauge::new("postern_queue_bytes", "Bytes of the messages in the queue.")?,
                )?,
                oldest_age: single(
                    &r,
                    IntGauge::new(
                        "postern_queue_oldest_age_seconds",
                        "Age of the oldest message in the queue (0: empty).",
                    )?,
                )?,
                oldest_received: Arc::new(AtomicU64::new(0)),
            },
            spool: SpoolMetrics {
                commit: single(
                    &r,
                    Histogram::with_opts(
                        HistogramOpts::new(
                            "postern_spool_commit_duration_seconds",
                            "One group commit: data sync, renames, directory sync.",
                        )
                        .buckets(COMMIT_BUCKETS.to_vec()),
                    )?,
                )?,
                batch: single(
                    &r,
                    Histogram::with_opts(
                        HistogramOpts::new(
                            "postern_spool_commit_batch_messages",
                            "Messages made durable per group commit.",
                        )
                        .buckets(BATCH_BUCKETS.to_vec()),
                    )?,
                )?,
            },
            reload_ok: single(
                &r,
                IntGauge::new(
                    "postern_config_last_reload_successful",
                    "1 when the latest reload (or the start) succeeded.",
                )?,
            )?,
            reload_time: single(
                &r,
                Gauge::new(
                    "postern_config_last_reload_success_timestamp_seconds",
                    "Unix time of the start or the latest good reload.",
                )?,
            )?,
            cert_expiry: single(
                &r,
                Gauge::new(
                    "postern_tls_certificate_expiry_timestamp_seconds",
                    "notAfter of the listeners' certificate, unix seconds.",
                )?,
            )?,
            ready: single(
                &r,
                IntGauge::new("postern_ready", "1 when /readyz answers 200.")?,
            )?,
            start_time: single(
                &r,
                Gauge::new(
                    "postern_start_time_seconds",
                    "Unix time the instance started.",
                )?,
            )?,
            registry: r,
        };
        for result in ["success", "failure"] {
            families.reloads.with_label_values(&[result]);
        }
        for c in Completion::ALL {
            families.completed.with_label_values(&[c.as_str()]);
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
        self.completed.with_label_values(&[how.as_str()]).inc();
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

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::with_capacity(32 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// One listener's resolved handles.
#[derive(Debug)]
pub struct ListenerMetrics {
    name: String,
    connections: [IntCounter; 4],
    active: IntGauge,
    closed: Vec<(Reason, IntCounter)>,
    tls: [IntCounter; 3],
    auth: [[IntCounter; 5]; 2],
    lockouts: IntCounter,
    accepted: IntCounter,
    refused: Vec<(Reason, IntCounter)>,
    rcpt_accepted: IntCounter,
    rcpt_refused: IntCounter,
    size: Histogram,
    sessions_closed: IntCounterVec,
    messages_refused: IntCounterVec,
}

impl ListenerMetrics {
    fn new(f: &Families, name: &str) -> ListenerMetrics {
        let reasons = |vec: &IntCounterVec, set: &[Reason]| -> Vec<(Reason, IntCounter)> {
            set.iter()
                .map(|r| (*r, vec.with_label_values(&[name, r.as_str()])))
                .collect()
        };
        let tls = |version: &str, result: &str| {
            f.tls_handshakes.with_label_values(&[name, version, result])
        };
        let auth = |mech: &str| {
            AuthResult::ALL.map(|r| f.auth_attempts.with_label_values(&[name, mech, r.as_str()]))
        };
        ListenerMetrics {
            name: name.to_owned(),
            connections: CONN_RESULTS.map(|r| f.connections.with_label_values(&[name, r])),
            active: f.sessions_active.with_label_values(&[name]),
            closed: reasons(&f.sessions_closed, &CLOSE_REASONS),
            tls: [
                tls("tls1_2", "success"),
                tls("tls1_3", "success"),
                tls("none", "failure"),
            ],
            auth: [auth("plain"), auth("login")],
            lockouts: f.auth_lockouts.with_label_values(&[name]),
            accepted: f.messages_accepted.with_label_values(&[name]),
            refused: reasons(&f.messages_refused, &REFUSAL_REASONS),
            rcpt_accepted: f.recipients.with_label_values(&[name, "accepted"]),
            rcpt_refused: f.recipients.with_label_values(&[name, "refused"]),
            size: f.message_size.with_label_values(&[name]),
            sessions_closed: f.sessions_closed.clone(),
            messages_refused: f.messages_refused.clone(),
        }
    }

    /// Counts a connection by what became of it.
    pub fn connection(&self, result: &ConnResult) {
        self.connections[result.index()].inc();
    }

    /// Counts a session as open until the guard is dropped.
    pub fn session(self: &Arc<Self>) -> SessionGuard {
        self.active.inc();
        SessionGuard(self.clone())
    }

    /// Counts a session the server closed for `reason`.
    pub fn session_closed(&self, reason: Reason) {
        self.by_reason(&self.closed, &self.sessions_closed, reason);
    }

    /// Counts a TLS handshake: its version, or `None` when it failed.
    pub fn tls_handshake(&self, version: Option<TlsVersion>) {
        let i = match version {
            Some(TlsVersion::Tls12) => 0,
            Some(TlsVersion::Tls13) => 1,
            None => 2,
        };
        self.tls[i].inc();
    }

    /// Counts an AUTH attempt.
    pub fn auth(&self, mechanism: Mechanism, result: AuthResult) {
        let m = match mechanism {
            Mechanism::Plain => 0,
            Mechanism::Login => 1,
        };
        let r = AuthResult::ALL
            .iter()
            .position(|x| *x == result)
            .unwrap_or(0);
        self.auth[m][r].inc();
    }

    /// Counts a lockout started by a failure on this listener.
    pub fn lockout(&self) {
        self.lockouts.inc();
    }

    /// Counts a queued message of `size` bytes with `recipients` recipients.
    pub fn message_accepted(&self, size: u64) {
        self.accepted.inc();
        self.size.observe(size as f64);
    }

    /// Counts a transaction or message refused for `reason`.
    pub fn message_refused(&self, reason: Reason) {
        self.by_reason(&self.refused, &self.messages_refused, reason);
    }

    /// Counts a recipient accepted or refused at RCPT.
    pub fn recipient(&self, accepted: bool) {
        if accepted {
            self.rcpt_accepted.inc();
        } else {
            self.rcpt_refused.inc();
        }
    }

    /// A refusal the engine made (it knows only its own reasons): routed to the family
    /// its reason belongs to.
    pub fn engine_refusal(&self, reason: Reason) {
        match reason {
            Reason::Recipients => self.recipient(false),
            other => self.message_refused(other),
        }
    }

    fn by_reason(&self, known: &[(Reason, IntCounter)], vec: &IntCounterVec, reason: Reason) {
        match known.iter().find(|(r, _)| *r == reason) {
            Some((_, c)) => c.inc(),
            None => vec.with_label_values(&[&self.name, reason.as_str()]).inc(),
        }
    }
}

/// Holds a session in `postern_sessions_active` until dropped.
#[derive(Debug)]
pub struct SessionGuard(Arc<ListenerMetrics>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}

/// One upstream's resolved handles and its health.
#[derive(Debug)]
pub struct UpstreamMetrics {
    name: String,
    attempts: [IntCounter; 4],
    recipients: [IntCounter; 3],
    latency: Histogram,
    up: IntGauge,
    failures: IntCounterVec,
}

impl UpstreamMetrics {
    fn new(f: &Families, name: &str) -> UpstreamMetrics {
        for stage in STAGES {
            f.upstream_failures.with_label_values(&[name, stage]);
        }
        let up = f.upstream_up.with_label_values(&[name]);
        up.set(1);
        f.upstream_open.with_label_values(&[name]);
        f.upstream_busy.with_label_values(&[name]);
        UpstreamMetrics {
            name: name.to_owned(),
            attempts: AttemptResult::ALL
                .map(|r| f.delivery_attempts.with_label_values(&[name, r.as_str()])),
            recipients: RcptOutcome::ALL
                .map(|r| f.delivery_recipients.with_label_values(&[name, r.as_str()])),
            latency: f.delivery_latency.with_label_values(&[name]),
            up,
            failures: f.upstream_failures.clone(),
        }
    }

    /// Counts an attempt by its result.
    pub fn attempt(&self, result: AttemptResult) {
        let i = AttemptResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.attempts[i].inc();
    }

    /// Counts recipient outcomes.
    pub fn recipients(&self, outcome: RcptOutcome, n: usize) {
        let i = RcptOutcome::ALL
            .iter()
            .position(|r| *r == outcome)
            .unwrap_or(0);
        self.recipients[i].inc_by(n as u64);
    }

    /// Records the time from acceptance to the upstream's 250.
    pub fn delivered_after(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    /// Counts a failure at `stage`; `unreachable` marks the upstream down (it could not
    /// be reached or logged in to) until its next successful attempt.
    pub fn failure(&self, stage: &str, unreachable: bool) {
        self.failures.with_label_values(&[&self.name, stage]).inc();
        if unreachable {
            self.up.set(0);
        }
    }

    /// The upstream answered for the message: it is up.
    pub fn reached(&self) {
        self.up.set(1);
    }

    /// Whether the latest attempt reached the upstream (or none was made yet).
    pub fn is_up(&self) -> bool {
        self.up.get() != 0
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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Every family registers (no name clash, valid names), and labelled series exist at
    /// zero before the first event.
    #[test]
    fn registers_and_preregisters() {
        let m = Metrics::new().unwrap();
        let l = m.listener("submission");
        m.register_upstreams(["relay"]);
        let text = m.render().unwrap();
        for series in [
            r#"postern_connections_total{listener="submission",result="accepted"}"#,
            r#"postern_messages_refused_total{listener="submission",reason="sender_not_owned"}"#,
            r#"postern_sessions_closed_total{listener="submission",reason="timeout"}"#,
            r#"postern_auth_attempts_total{listener="submission",mechanism="login",result="locked_out"}"#,
            r#"postern_delivery_attempts_total{result="maybe_delivered",upstream="relay"}"#,
            r#"postern_upstream_failures_total{stage="final_dot",upstream="relay"}"#,
            r#"postern_messages_completed_total{result="expired"}"#,
            r#"postern_config_reloads_total{result="failure"}"#,
        ] {
            assert_eq!(value(&text, series), Some(0.0), "{series} in\n{text}");
        }
        assert_eq!(
            value(&text, r#"postern_upstream_up{upstream="relay"}"#),
            Some(1.0)
        );
        assert!(text.contains("postern_build_info{commit="), "{text}");
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        drop(l);
    }

    /// Counts land on the right series; a reason outside the pre-registered set still
    /// counts; the session gauge follows its guards.
    #[test]
    fn counts_land_where_they_should() {
        let m = Metrics::new().unwrap();
        let l = Arc::new(m.listener("legacy"));
        l.connection(&ConnResult::Allowlist);
        l.message_refused(Reason::Size);
        l.message_refused(Reason::StaleRules);
        l.engine_refusal(Reason::Recipients);
        l.auth(Mechanism::Login, AuthResult::Cached);
        l.tls_handshake(Some(TlsVersion::Tls13));
        let guard = l.session();
        let _second = l.session();
        drop(guard);
        let u = m.upstream("mx");
        u.failure("connect", true);
        m.rate_limit_hit("ip-messages-1h");
        m.rate_limit_hit("ip-messages-1h");
        let text = m.render().unwrap();
        for (series, want) in [
            (
                r#"postern_connections_total{listener="legacy",result="allowlist"}"#,
                1.0,
            ),
            (
                r#"postern_messages_refused_total{listener="legacy",reason="size"}"#,
                1.0,
            ),
            (
                r#"postern_messages_refused_total{listener="legacy",reason="stale_rules"}"#,
                1.0,
            ),
            (
                r#"postern_recipients_total{listener="legacy",outcome="refused"}"#,
                1.0,
            ),
            (
                r#"postern_auth_attempts_total{listener="legacy",mechanism="login",result="cached"}"#,
                1.0,
            ),
            (
                r#"postern_tls_handshakes_total{listener="legacy",result="success",version="tls1_3"}"#,
                1.0,
            ),
            (r#"postern_sessions_active{listener="legacy"}"#, 1.0),
            (
                r#"postern_upstream_failures_total{stage="connect",upstream="mx"}"#,
                1.0,
            ),
            (r#"postern_upstream_up{upstream="mx"}"#, 0.0),
            (
                r#"postern_rate_limit_hits_total{rule="ip-messages-1h"}"#,
                2.0,
            ),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }
        assert!(!m.upstream("mx").is_up());
        m.upstream("mx").reached();
        assert!(m.upstream("mx").is_up());
    }

    #[test]
    fn oldest_age_follows_the_clock() {
        let m = Metrics::new().unwrap();
        m.queue.refresh(1000);
        assert_eq!(m.queue.oldest_age.get(), 0);
        m.queue.oldest_received.store(900, Ordering::Relaxed);
        m.queue.refresh(1000);
        assert_eq!(m.queue.oldest_age.get(), 100);
    }
}
