//! The configuration file's shape: one YAML document, every struct `deny_unknown_fields`.
//!
//! Each field's doc comment states its default; docs/configuration.md is written from these
//! comments (and tests/it/docs.rs checks that it documents every key of the schema generated
//! from these types, and no other). Cross-field rules (a route naming an unknown upstream, a
//! duplicate listener address, …) live in `validate.rs`, not here.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::json_schema::{Cidr, SocketAddress};
use crate::config::units::Duration;

// Moved to `policy.rs` with the other policy sections; re-exported so paths stay the same.
pub use crate::config::identity::{NetworkConfig, RewriteMode, SenderCheck, UserConfig};
pub use crate::config::policy::LimitsConfig;
use crate::config::policy::{AuthLockoutConfig, RateLimitRule};
pub use crate::config::redis::RedisConfig;
pub use crate::config::upstream::{
    CircuitBreakerConfig, OAuth2Config, Provider, RouteConfig, UpstreamAuth, UpstreamConfig,
    UpstreamTls,
};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The name postern uses in its banner, EHLO reply and Received headers. Default: `localhost`.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// The SMTP listeners. At least one is required.
    pub listeners: Vec<ListenerConfig>,
    /// The server certificates for listeners with `tls: starttls | implicit` (a default and
    /// more chosen by SNI); required unless every TLS listener has its own `certificate`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Accounts that may AUTH on listeners with `auth: required | optional`. Default: none.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Identities for devices admitted by IP address (printers, scanners). Default: none.
    #[serde(default)]
    pub networks: Vec<NetworkConfig>,
    /// What is checked against an identity's `senders`: `envelope`, `header` (the envelope
    /// and the `From:` / `Sender:` addresses) or `off`; a listener, user or network may
    /// override it. Default: `envelope`.
    #[serde(default)]
    pub sender_check: SenderCheck,
    /// Size, recipient and connection caps.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Rate limits for every client: each counts messages, recipients or connections per
    /// `per` value (client address, user, ...). Default: none.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitRule>,
    /// AUTH-failure lockout. Default: on, 10 failures in `10m` lock an address for `15m`.
    #[serde(default)]
    pub auth_lockout: AuthLockoutConfig,
    /// Server-side timeouts (RFC 5321 section 4.5.3.2).
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// SMTP dialogue options.
    #[serde(default)]
    pub smtp: SmtpConfig,
    /// Headers postern adds to each message.
    #[serde(default)]
    pub headers: HeadersConfig,
    /// AUTH verification cache (so a printer that logs in per message is not held up by argon2).
    #[serde(default)]
    pub auth_cache: AuthCacheConfig,
    /// The durable queue.
    pub queue: QueueConfig,
    /// Where mail goes. At least one is required, and each must be used by a route.
    pub upstreams: Vec<UpstreamConfig>,
    /// Sender-based routing to upstreams, first match wins. Default: none, which is valid only
    /// with exactly one upstream (then every sender goes to it).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The HTTP endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz`. Default: off.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// The Redis shared by several instances, for limits with `scope: cluster`.
    /// Default: none (every limit is local).
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// How long SIGTERM waits for open sessions to finish before closing them. Default: `30s`.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Duration,
}

/// One SMTP listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A unique name, used in logs and the Received header. Required.
    pub name: String,
    /// `IP:port` to bind, e.g. `"[::]:587"` or `"127.0.0.1:2525"`. Required.
    #[schemars(with = "SocketAddress")]
    pub address: SocketAddr,
    /// `none`, `starttls` (offered, RFC 3207) or `implicit` (TLS from the first byte, RFC 8314).
    /// Default: `starttls`.
    #[serde(default)]
    pub tls: ListenerTls,
    /// `required` (AUTH before MAIL), `optional` (AUTH or an allowlisted address) or `none`
    /// (no AUTH: clients are admitted by `allow_networks` only). Default: `required`.
    #[serde(default)]
    pub auth: AuthMode,
    /// Client networks allowed to connect (CIDR). Others get `554 5.7.1` and are closed.
    /// Default: empty, meaning any address, which is an error with `auth: none`.
    #[serde(default)]
    #[schemars(with = "Vec<Cidr>")]
    pub allow_networks: Vec<IpNet>,
    /// At most this many concurrent sessions on this listener; more get `421 4.7.0`.
    /// Default: no per-listener cap (the global `limits.max_connections` still applies).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Overrides the top-level `sender_check` on this listener (a user's or network's own
    /// setting overrides this one). Default: inherited.
    #[serde(default)]
    pub sender_check: Option<SenderCheck>,
    /// PROXY protocol (v1 or v2) from the load balancers in `trusted`, so that the real
    /// client address drives allowlists, limits and logs. Default: off (every client is
    /// taken at its TCP address).
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    /// This listener's own default certificate (PEM chain, leaf first), instead of
    /// `tls.certificate`; with `private_key`. The listener then uses its own set only
    /// (this and its `sni`), not the top-level one. Default: the top-level `tls` set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PathBuf>,
    /// The private key of `certificate`. Required with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PathBuf>,
    /// More certificates of this listener's own set, chosen by SNI (as `tls.sni`); needs
    /// `certificate`. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniCertificate>,
}

/// A listener's PROXY protocol settings (HAProxy's `send-proxy` / `send-proxy-v2`; the model
/// is Dovecot's `haproxy_trusted_networks`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolConfig {
    /// The load balancers (CIDR). A connection from one of them must start with a PROXY
    /// header, read before the banner within `timeouts.proxy_header`. Required, not empty.
    #[schemars(with = "Vec<Cidr>")]
    pub trusted: Vec<IpNet>,
    /// `true`: every connection must come from `trusted` with a header; others are closed
    /// at once. `false`: other addresses are served directly at their TCP address, and
    /// closed if they send a PROXY header themselves. Default: `false`.
    #[serde(default)]
    pub required: bool,
}

/// TLS mode of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// Plain text only; STARTTLS is not offered.
    None,
    /// STARTTLS offered (and required before AUTH/MAIL when `auth: required`).
    #[default]
    Starttls,
    /// TLS from the first byte.
    Implicit,
}

/// AUTH mode of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every transaction needs AUTH first.
    #[default]
    Required,
    /// AUTH is offered; clients from `networks`/`allow_networks` may also send without it.
    Optional,
    /// AUTH is neither offered nor accepted.
    None,
}

/// The server certificate and key.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Relative paths are resolved against the config
    /// file's directory. Required.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Relative paths are resolved against the
    /// config file's directory. Required.
    pub private_key: PathBuf,
    /// When both files are absent at start, generate a self-signed certificate for
    /// `hostname` and write them. For first runs and labs. Default: `false`.
    #[serde(default)]
    pub generate_self_signed: bool,
    /// How often the certificate and key files (of every set: the top-level one with its
    /// `sni` entries, and each listener's own) are checked for changes (certbot and
    /// cert-manager renew them in place); changed files that load are used for new
    /// handshakes. `0s` turns the check off (SIGHUP still re-reads them). Default: `1m`
    /// (also when only listeners have certificates and there is no `tls:`).
    #[serde(default = "default_tls_check_interval")]
    pub check_interval: Duration,
    /// More certificates, each chosen when the client's SNI is one of its names; no SNI or
    /// an unknown one gets `certificate`. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniCertificate>,
}

/// A certificate chosen by SNI.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// PEM certificate chain, leaf first. Required.
    pub certificate: PathBuf,
    /// Its PEM private key. Required.
    pub private_key: PathBuf,
    /// The names it is chosen for: DNS names or one-label wildcards (`*.example.com`),
    /// each covered by the certificate. Default: its DNS subjectAltNames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

/// Server-side timeouts; a session that exceeds one gets `421 4.4.2` and is closed.
///
/// `command` bounds the time to receive a whole command line, not the gap between bytes, so
/// a client trickling a byte at a time cannot stretch it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// Waiting for the next command (RFC 5321 4.5.3.2.7: at least 5 minutes). Default: `5m`.
    #[serde(default = "default_command_timeout")]
    pub command: Duration,
    /// Waiting for more DATA bytes (RFC 5321 4.5.3.2.5/6). Default: `3m`.
    #[serde(default = "default_data_timeout")]
    pub data: Duration,
    /// Completing a TLS handshake. Default: `30s`.
    #[serde(default = "default_tls_timeout")]
    pub tls_handshake: Duration,
    /// Longest session, however busy: past it the session is closed with `421 4.4.2` at
    /// the next wait for input (a message being received gets up to `timeouts.data` more
    /// to finish). Default: `1h`.
    #[serde(default = "default_session_timeout")]
    pub session: Duration,
    /// Receiving the PROXY header on a listener with `proxy_protocol`, counted from the
    /// connection; a load balancer sends it at once. Default: `5s`.
    #[serde(default = "default_proxy_header_timeout")]
    pub proxy_header: Duration,
}

/// What to do with a bare CR or bare LF inside DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// Refuse the message with `550 5.6.0` (the smuggling-safe default).
    #[default]
    Reject,
    /// Turn each bare CR or LF into CRLF; it still never ends the message.
    Normalise,
}

/// SMTP dialogue options.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// What to do with a bare CR or LF inside DATA: `reject` (refuse the message with
    /// `550 5.6.0`) or `normalise` (turn it into CRLF). Default: `reject`.
    #[serde(default)]
    pub bare_line_endings: BareLineEndings,
    /// What to do with a message that has a line over 998 octets: `wrap` (wrap it when
    /// relaying) or `reject` (refuse it with `550 5.6.0`). Default: `wrap`.
    #[serde(default)]
    pub long_lines: LongLinesPolicy,
}

/// What to do with a message that has a line over 998 octets (RFC 5322 2.1.1; postern never
/// sends one, RFC 5321 4.5.3.1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LongLinesPolicy {
    /// Accept it and wrap the lines when relaying: header fields folded at whitespace,
    /// body lines broken with CRLF SPACE as Postfix does.
    #[default]
    Wrap,
    /// Refuse the message at the end of DATA with `550 5.6.0`.
    Reject,
}

/// Header fix-ups.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// Add `Date:` when the message has none (RFC 6409 8.3). Default: `true`.
    #[serde(default = "yes")]
    pub add_date: bool,
    /// Add `Message-ID:` when the message has none (RFC 6409 8.3). Default: `true`.
    #[serde(default = "yes")]
    pub add_message_id: bool,
}

/// The AUTH success cache.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthCacheConfig {
    /// How long a verified (user, password) pair is trusted without argon2. `0s` disables
    /// the cache. Default: `5m`.
    #[serde(default = "default_auth_cache_ttl")]
    pub ttl: Duration,
    /// Most entries kept. Default: `10000`.
    #[serde(default = "default_auth_cache_size")]
    pub size: usize,
}

/// The durable queue.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// The spool directory; created if absent. Relative paths are resolved against the
    /// config file's directory. Required.
    pub directory: PathBuf,
    /// Give up on a message this long after it was accepted. Default: `5d`.
    #[serde(default = "default_max_age")]
    pub max_age: Duration,
    /// First retry delay after a temporary failure; doubles per attempt. Default: `1m`.
    #[serde(default = "default_min_backoff")]
    pub min_backoff: Duration,
    /// Longest retry delay. Default: `1h`.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
    /// How long a message that may have been delivered (its final dot got no reply) waits
    /// before it is tried again, at the same upstream only. Default: `10m`.
    #[serde(default = "default_ambiguous_retry")]
    pub ambiguous_retry: Duration,
    /// What happens to a message that may have been delivered: `retry` (at the same upstream
    /// after `ambiguous_retry`) or `hold` (kept for an administrator to release, bounce or
    /// delete with `postern queue`). Default: `retry`.
    #[serde(default)]
    pub on_ambiguous: OnAmbiguous,
    /// How a message is made durable before its `250`: `fdatasync` (each file) or `syncfs`
    /// (the spool's filesystem, once per batch). Default: `fdatasync`.
    #[serde(default)]
    pub sync: QueueSync,
    /// What happens to a message with recipients that failed for good: `dsn` (a bounce to
    /// the sender), `dead_letter` (kept in the spool's `failed/`) or `both`. Default: `both`.
    #[serde(default)]
    pub bounces: Bounces,
    /// Send one `Action: delayed` notification once a message has waited this long with
    /// recipients still pending. Default: off.
    #[serde(default)]
    pub delay_warning: Option<Duration>,
}

/// `queue.bounces`: how failed recipients are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Bounces {
    /// A delivery status notification (RFC 3464) to the envelope sender; the message is
    /// removed once it is queued.
    Dsn,
    /// The message is kept in the spool's `failed/` directory for the admin; no DSN.
    DeadLetter,
    /// Both: a DSN, and the message kept in `failed/`.
    #[default]
    Both,
}

impl Bounces {
    /// A DSN is sent.
    pub fn dsn(self) -> bool {
        self != Bounces::DeadLetter
    }

    /// The message is kept in `failed/`.
    pub fn dead_letter(self) -> bool {
        self != Bounces::Dsn
    }
}

/// What to do with a maybe-delivered message (`queue.on_ambiguous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnAmbiguous {
    /// Try it again at the same upstream after `queue.ambiguous_retry`.
    #[default]
    Retry,
    /// Hold it until an administrator releases, bounces or deletes it.
    Hold,
}

/// How the spool syncs (`queue.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueSync {
    /// One `fdatasync` per message file (overlapped), then one directory `fsync` per batch:
    /// costs only the spool's own data, whatever else writes to the filesystem.
    #[default]
    Fdatasync,
    /// One `syncfs` per batch: cheapest when the spool has a filesystem of its own, but it
    /// also flushes everything else written to that filesystem.
    Syncfs,
}

/// The HTTP endpoint for metrics and health checks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where it listens, `ip:port`. Keep it on loopback or a management network: it is
    /// plain HTTP without authentication.
    #[schemars(with = "SocketAddress")]
    pub address: SocketAddr,
    /// A file holding the bearer token of the admin API (`/api/v1/`): its first line,
    /// at least 16 characters. Read at start and at each reload. Unset: the admin API is off
    /// (its paths answer 404). Relative to the config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Write a random token to `admin_token_file` (mode 0600) on start when the file is
    /// absent, as `tls.generate_self_signed` does for the certificate. Default: `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub generate_admin_token: bool,
}

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `json` (one object per line) or `text`. Default: `text`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `postern=debug`. Default: `info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            command: default_command_timeout(),
            data: default_data_timeout(),
            tls_handshake: default_tls_timeout(),
            session: default_session_timeout(),
            proxy_header: default_proxy_header_timeout(),
        }
    }
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            add_date: true,
            add_message_id: true,
        }
    }
}

impl Default for AuthCacheConfig {
    fn default() -> Self {
        AuthCacheConfig {
            ttl: default_auth_cache_ttl(),
            size: default_auth_cache_size(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_hostname() -> String {
    "localhost".into()
}
fn default_shutdown_grace() -> Duration {
    Duration::secs(30)
}
fn default_session_timeout() -> Duration {
    Duration::secs(3600)
}
pub(crate) fn default_command_timeout() -> Duration {
    Duration::secs(300)
}
fn default_data_timeout() -> Duration {
    Duration::secs(180)
}
pub(crate) fn default_tls_check_interval() -> Duration {
    Duration::secs(60)
}
fn default_tls_timeout() -> Duration {
    Duration::secs(30)
}
fn default_proxy_header_timeout() -> Duration {
    Duration::secs(5)
}
fn yes() -> bool {
    true
}
fn default_auth_cache_ttl() -> Duration {
    Duration::secs(300)
}
fn default_auth_cache_size() -> usize {
    10_000
}
fn default_max_age() -> Duration {
    Duration::secs(5 * 86_400)
}
fn default_min_backoff() -> Duration {
    Duration::secs(60)
}
fn default_max_backoff() -> Duration {
    Duration::secs(3600)
}
fn default_ambiguous_retry() -> Duration {
    Duration::secs(600)
}
fn default_log_level() -> String {
    "info".into()
}
