//! The table of metric specs: every metric's name, help text and label names, in one place
//! (the metrics table of docs/observability.md, checked by tests/it/docs.rs, and the
//! real-Prometheus test read the same names), and the histogram buckets.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// A metric's name, help text and labels.
#[derive(Debug)]
pub(super) struct Spec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

pub(super) const fn spec(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> Spec {
    Spec { name, help, labels }
}

// Build and process.
pub(super) const BUILD_INFO: Spec = spec(
    "postern_build_info",
    "Version and git commit of this build (always 1).",
    &["version", "commit"],
);
pub(super) const START_TIME: Spec = spec(
    "postern_start_time_seconds",
    "Unix time the instance started.",
    &[],
);
pub(super) const READY: Spec = spec("postern_ready", "1 when /readyz answers 200.", &[]);
// The front end.
pub(super) const CONNECTIONS: Spec = spec(
    "postern_connections_total",
    "Connections accepted, or refused at connect by reason.",
    &["listener", "result"],
);
pub(super) const SESSIONS_ACTIVE: Spec = spec(
    "postern_sessions_active",
    "Sessions open now.",
    &["listener"],
);
pub(super) const SESSIONS_CLOSED: Spec = spec(
    "postern_sessions_closed_total",
    "Sessions the server closed, by reason.",
    &["listener", "reason"],
);
pub(super) const TLS_HANDSHAKES: Spec = spec(
    "postern_tls_handshakes_total",
    "Server-side TLS handshakes by version and result.",
    &["listener", "version", "result"],
);
pub(super) const AUTH_ATTEMPTS: Spec = spec(
    "postern_auth_attempts_total",
    "AUTH attempts by mechanism and result.",
    &["listener", "mechanism", "result"],
);
pub(super) const AUTH_LOCKOUTS: Spec = spec(
    "postern_auth_lockouts_total",
    "AUTH lockouts started.",
    &["listener"],
);
pub(super) const MESSAGES_ACCEPTED: Spec = spec(
    "postern_messages_accepted_total",
    "Messages queued (250 after DATA).",
    &["listener"],
);
pub(super) const MESSAGES_REFUSED: Spec = spec(
    "postern_messages_refused_total",
    "Transactions or messages refused, by reason.",
    &["listener", "reason"],
);
pub(super) const RECIPIENTS: Spec = spec(
    "postern_recipients_total",
    "Recipients accepted or refused at RCPT.",
    &["listener", "outcome"],
);
pub(super) const MESSAGE_SIZE: Spec = spec(
    "postern_message_size_bytes",
    "Size of accepted messages as stored.",
    &["listener"],
);
pub(super) const RATE_LIMIT_HITS: Spec = spec(
    "postern_rate_limit_hits_total",
    "Rate-limit refusals by rule.",
    &["rule"],
);
// The queue.
pub(super) const QUEUE_MESSAGES: Spec =
    spec("postern_queue_messages", "Messages in the queue.", &[]);
pub(super) const QUEUE_BYTES: Spec = spec(
    "postern_queue_bytes",
    "Bytes of the messages in the queue.",
    &[],
);
pub(super) const QUEUE_OLDEST: Spec = spec(
    "postern_queue_oldest_age_seconds",
    "Age of the oldest message in the queue (0: empty).",
    &[],
);
pub(super) const SPOOL_COMMIT: Spec = spec(
    "postern_spool_commit_duration_seconds",
    "One group commit: data sync, renames, directory sync.",
    &[],
);
pub(super) const SPOOL_BATCH: Spec = spec(
    "postern_spool_commit_batch_messages",
    "Messages made durable per group commit.",
    &[],
);
pub(super) const COMPLETED: Spec = spec(
    "postern_messages_completed_total",
    "Messages leaving the queue, by how.",
    &["result"],
);
pub(super) const DSN_QUEUED: Spec = spec(
    "postern_dsn_queued_total",
    "Delivery status notifications queued to senders, by action.",
    &["action"],
);
// Delivery and upstreams.
pub(super) const DELIVERY_ATTEMPTS: Spec = spec(
    "postern_delivery_attempts_total",
    "Delivery attempts by upstream and result.",
    &["upstream", "result"],
);
pub(super) const DELIVERY_RECIPIENTS: Spec = spec(
    "postern_delivery_recipients_total",
    "Recipient outcomes of delivery attempts.",
    &["upstream", "result"],
);
pub(super) const DELIVERY_LATENCY: Spec = spec(
    "postern_delivery_latency_seconds",
    "From acceptance to the upstream's 250.",
    &["upstream"],
);
pub(super) const UPSTREAM_OPEN: Spec = spec(
    "postern_upstream_connections_open",
    "Connections open to the upstream.",
    &["upstream"],
);
pub(super) const UPSTREAM_BUSY: Spec = spec(
    "postern_upstream_connections_busy",
    "Deliveries in progress (each holds or is opening a connection).",
    &["upstream"],
);
pub(super) const UPSTREAM_FAILURES: Spec = spec(
    "postern_upstream_failures_total",
    "Failed delivery attempts and refused recipients by stage.",
    &["upstream", "stage"],
);
pub(super) const UPSTREAM_UP: Spec = spec(
    "postern_upstream_up",
    "0 when the latest attempt could not reach or log in to the upstream.",
    &["upstream"],
);
pub(super) const UPSTREAM_SHAPED: Spec = spec(
    "postern_upstream_shaped_total",
    "Times a message was held back for an upstream's cap or pause.",
    &["upstream", "cap"],
);
pub(super) const UPSTREAM_THROTTLED: Spec = spec(
    "postern_upstream_throttled_total",
    "Throttling replies (432 4.3.2, 421 4.7.x) that paused the upstream.",
    &["upstream"],
);
pub(super) const UPSTREAM_CIRCUIT_OPEN: Spec = spec(
    "postern_upstream_circuit_open",
    "1 while the upstream's circuit breaker skips it (open, or its probe in flight).",
    &["upstream"],
);
pub(super) const UPSTREAM_CIRCUIT_OPENINGS: Spec = spec(
    "postern_upstream_circuit_openings_total",
    "Times the upstream's circuit breaker opened.",
    &["upstream"],
);
pub(super) const TOKEN_REQUESTS: Spec = spec(
    "postern_oauth2_token_requests_total",
    "OAuth2 token endpoint requests by upstream and result (issued, refused, unavailable).",
    &["upstream", "result"],
);
pub(super) const TOKEN_EXPIRY: Spec = spec(
    "postern_oauth2_token_expiry_timestamp_seconds",
    "When the upstream's current OAuth2 access token expires, unix seconds.",
    &["upstream"],
);
// Configuration and TLS.
pub(super) const RELOADS: Spec = spec(
    "postern_config_reloads_total",
    "Configuration reloads by result.",
    &["result"],
);
pub(super) const RELOAD_OK: Spec = spec(
    "postern_config_last_reload_successful",
    "1 when the latest reload (or the start) succeeded.",
    &[],
);
pub(super) const RELOAD_TIME: Spec = spec(
    "postern_config_last_reload_success_timestamp_seconds",
    "Unix time of the start or the latest good reload.",
    &[],
);
pub(super) const CERT_EXPIRY: Spec = spec(
    "postern_tls_certificate_expiry_timestamp_seconds",
    "notAfter of each certificate the TLS listeners use, unix seconds, by its place in the config.",
    &["certificate"],
);

// The shared Redis (`scope: cluster`).
pub(super) const REDIS_UP: Spec = spec(
    "postern_redis_up",
    "1 while the shared Redis answers; 0 while it is down (cluster limits fall back).",
    &[],
);
pub(super) const REDIS_COMMANDS: Spec = spec(
    "postern_redis_commands_total",
    "Calls to the shared Redis by result (ok, error, timeout, skipped while down).",
    &["result"],
);
pub(super) const REDIS_DURATION: Spec = spec(
    "postern_redis_command_duration_seconds",
    "Duration of the calls sent to the shared Redis.",
    &[],
);
pub(super) const REDIS_FALLBACKS: Spec = spec(
    "postern_redis_fallbacks_total",
    "Decisions taken without Redis (down or slow), by feature and decision.",
    &["feature", "decision"],
);

/// Message sizes: 1 KiB to 64 MiB in powers of four.
pub(super) const SIZE_BUCKETS: [f64; 9] = [
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
pub(super) const COMMIT_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Messages per group commit.
pub(super) const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Acceptance to the upstream's 250: ten milliseconds (a warm pool) to a day (retries).
pub(super) const LATENCY_BUCKETS: [f64; 17] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    14400.0, 86400.0,
];

impl Spec {
    pub(super) fn opts(&self) -> Opts {
        Opts::new(self.name, self.help)
    }

    pub(super) fn counter(&self, r: &Registry) -> prometheus::Result<IntCounterVec> {
        registered(r, IntCounterVec::new(self.opts(), self.labels)?)
    }

    pub(super) fn gauge(&self, r: &Registry) -> prometheus::Result<IntGaugeVec> {
        registered(r, IntGaugeVec::new(self.opts(), self.labels)?)
    }

    pub(super) fn histogram(
        &self,
        r: &Registry,
        buckets: &[f64],
    ) -> prometheus::Result<HistogramVec> {
        let opts = HistogramOpts::new(self.name, self.help).buckets(buckets.to_vec());
        registered(r, HistogramVec::new(opts, self.labels)?)
    }

    pub(super) fn int_gauge(&self, r: &Registry) -> prometheus::Result<IntGauge> {
        registered(r, IntGauge::with_opts(self.opts())?)
    }

    pub(super) fn float_gauge(&self, r: &Registry) -> prometheus::Result<Gauge> {
        registered(r, Gauge::with_opts(self.opts())?)
    }

    pub(super) fn single_histogram(
        &self,
        r: &Registry,
        buckets: &[f64],
    ) -> prometheus::Result<Histogram> {
        let opts = HistogramOpts::new(self.name, self.help).buckets(buckets.to_vec());
        registered(r, Histogram::with_opts(opts)?)
    }
}

pub(super) fn registered<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: C,
) -> prometheus::Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}
