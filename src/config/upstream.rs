//! The `upstreams` and `routes` sections: where mail goes, how postern logs in there, and
//! which messages take which upstreams. Re-exported from [`crate::config::schema`].

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::policy::{OnRedisError, Scope};
use crate::config::schema::default_command_timeout;
use crate::config::units::Duration;

/// Where mail goes: an SMTP smarthost, or a local directory (`directory:` set).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// A unique name, used by routes and logs. Required.
    pub name: String,
    /// `host:port` of an SMTP smarthost. Exactly one of `address` and `directory` is required.
    #[serde(default)]
    pub address: Option<String>,
    /// A directory to write each message into as `ID.eml` with its envelope in `ID.json`.
    /// Relative paths are resolved against the config file's directory.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// `none`, `starttls` or `implicit`. Default: `starttls`. SMTP only, as is every key but
    /// `name`, `address` and `directory`: each is a config error on a directory upstream.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// PEM file of CA certificates to trust instead of the system roots. Relative paths are
    /// resolved against the config file's directory.
    /// Default: system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Verify the upstream's certificate (RFC 7817). `false` is for labs only and is logged
    /// as a warning. Default: `true`.
    #[serde(default)]
    pub tls_verify: Option<bool>,
    /// The name to verify the certificate against (and to send as SNI). Default: the host
    /// part of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Credentials for upstream AUTH (PLAIN or LOGIN, whichever the upstream offers).
    #[serde(default)]
    pub auth: Option<UpstreamAuth>,
    /// Most concurrent connections to this upstream. Default: `4`, or the provider's
    /// (`3` for `microsoft`).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Name sent in EHLO. Default: the top-level `hostname`.
    #[serde(default)]
    pub helo_name: Option<String>,
    /// Connect timeout. Default: `30s`.
    #[serde(default)]
    pub connect_timeout: Option<Duration>,
    /// Timeout for each reply (RFC 5321 4.5.3.2; the final reply after DATA gets 10m).
    /// Default: `5m`.
    #[serde(default)]
    pub command_timeout: Option<Duration>,
    /// Close an idle pooled connection after this long. Default: `30s`.
    #[serde(default)]
    pub idle_timeout: Option<Duration>,
    /// Messages sent over one connection before it is closed with QUIT and a new one is
    /// opened (some providers cap this per session); `0` for no limit. Default: `0`.
    #[serde(default)]
    pub messages_per_connection: Option<u32>,
    /// Skip this upstream for a while after it failed this many times in a row. Default:
    /// `{failures: 5, cooldown: 1m}`.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// The provider behind this upstream, for its account caps: `microsoft` (Microsoft 365:
    /// 3 connections, 30 messages a minute, 10,000 recipients a day per mailbox), `google`
    /// or `generic` (no implied caps). Default: none.
    #[serde(default)]
    pub provider: Option<Provider>,
    /// Most messages in any rolling minute; `0` for no cap. Default: none, or the provider's.
    #[serde(default)]
    pub messages_per_minute: Option<u32>,
    /// Most recipients in any rolling 24 hours; `0` for no cap. Default: none, or the
    /// provider's.
    #[serde(default)]
    pub recipients_per_day: Option<u32>,
    /// `local` (this instance counts its own sends) or `cluster` (the caps and the pause of
    /// a throttling reply shared by every instance through `redis:`: the account's caps are
    /// global). Default: `local`.
    #[serde(default)]
    pub shaping_scope: Option<Scope>,
    /// With `shaping_scope: cluster`, while Redis cannot answer: `allow` (shape with this
    /// instance's own counts) or `deny` (hold the mail until Redis answers). Default:
    /// `allow`.
    #[serde(default)]
    pub shaping_on_redis_error: Option<OnRedisError>,
}

impl UpstreamConfig {
    /// The provider: `provider`, else that of `auth.oauth2`.
    pub fn effective_provider(&self) -> Option<Provider> {
        let oauth2 = self.auth.as_ref().and_then(|a| a.oauth2.as_ref());
        self.provider.or(oauth2.and_then(|o| o.provider))
    }

    /// `max_connections`, else the provider's, else 4.
    pub fn max_connections(&self) -> usize {
        self.max_connections
            .unwrap_or(match self.effective_provider() {
                Some(Provider::Microsoft) => 3,
                _ => default_upstream_connections(),
            })
    }

    /// The account caps: each key if set, else the provider's (`0`: none).
    pub fn caps(&self) -> crate::upstream::shaping::Caps {
        let microsoft = self.effective_provider() == Some(Provider::Microsoft);
        crate::upstream::shaping::Caps {
            messages_per_minute: self
                .messages_per_minute
                .unwrap_or(if microsoft { 30 } else { 0 }),
            recipients_per_day: self.recipients_per_day.unwrap_or(if microsoft {
                10_000
            } else {
                0
            }),
        }
    }

    /// Where the caps and the pause are kept.
    pub fn sharing(&self) -> crate::upstream::shaping::Sharing {
        crate::upstream::shaping::Sharing {
            scope: self.shaping_scope.unwrap_or_default(),
            on_redis_error: self.shaping_on_redis_error.unwrap_or_default(),
        }
    }

    /// `tls`, or its default.
    pub fn tls(&self) -> UpstreamTls {
        self.tls.unwrap_or_default()
    }
    /// `tls_verify`, or its default (`true`).
    pub fn tls_verify(&self) -> bool {
        self.tls_verify.unwrap_or(true)
    }
    /// `connect_timeout`, or its default.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or_else(default_connect_timeout)
    }
    /// `command_timeout`, or its default.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout.unwrap_or_else(default_command_timeout)
    }
    /// `idle_timeout`, or its default.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or_else(default_idle_timeout)
    }
    /// `messages_per_connection`, or its default (`0`, no limit).
    pub fn messages_per_connection(&self) -> u32 {
        self.messages_per_connection.unwrap_or(0)
    }
    /// `circuit_breaker`, or its default.
    pub fn circuit_breaker(&self) -> CircuitBreakerConfig {
        self.circuit_breaker.clone().unwrap_or_default()
    }
    /// The SMTP-only keys that are set, by name (an error on a directory upstream).
    pub fn smtp_keys_set(&self) -> Vec<&'static str> {
        [
            ("tls", self.tls.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("tls_verify", self.tls_verify.is_some()),
            ("server_name", self.server_name.is_some()),
            ("auth", self.auth.is_some()),
            ("max_connections", self.max_connections.is_some()),
            ("helo_name", self.helo_name.is_some()),
            ("connect_timeout", self.connect_timeout.is_some()),
            ("command_timeout", self.command_timeout.is_some()),
            ("idle_timeout", self.idle_timeout.is_some()),
            (
                "messages_per_connection",
                self.messages_per_connection.is_some(),
            ),
            ("circuit_breaker", self.circuit_breaker.is_some()),
            ("provider", self.provider.is_some()),
            ("messages_per_minute", self.messages_per_minute.is_some()),
            ("recipients_per_day", self.recipients_per_day.is_some()),
            ("shaping_scope", self.shaping_scope.is_some()),
            (
                "shaping_on_redis_error",
                self.shaping_on_redis_error.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }
}

/// The circuit breaker of an SMTP upstream: after `failures` failed attempts in a row
/// (connect, TLS, greeting, EHLO, AUTH, a `421`, a timeout before the final dot) the
/// upstream is skipped for `cooldown`, then tried with one probe.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Failures in a row that open the breaker; `0` turns it off. Default: `5`.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// How long an open breaker skips the upstream before a probe. Default: `1m`.
    #[serde(default = "default_breaker_cooldown")]
    pub cooldown: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failures: default_breaker_failures(),
            cooldown: default_breaker_cooldown(),
        }
    }
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> Duration {
    Duration::secs(60)
}

/// The provider behind an upstream (its implied caps; and, for OAuth2, its token endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Microsoft 365 / Exchange Online.
    Microsoft,
    /// Google Workspace / Gmail.
    Google,
    /// Any other.
    Generic,
}

impl Provider {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Microsoft => "microsoft",
            Provider::Google => "google",
            Provider::Generic => "generic",
        }
    }
}

/// TLS to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// Plain text; for loopback sinks and internal MTAs only.
    None,
    /// STARTTLS, required: an upstream that does not offer it is a temporary failure.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// Upstream credentials: exactly one of `password`, `password_file` and `oauth2`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuth {
    /// The login name (with `oauth2`: the mailbox to log in as). Required.
    pub username: String,
    /// The password inline.
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored). Relative paths are resolved
    /// against the config file's directory.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Log in with an OAuth 2.0 access token (SASL XOAUTH2 or OAUTHBEARER, RFC 7628)
    /// instead of a password.
    #[serde(default)]
    pub oauth2: Option<OAuth2Config>,
}

/// Where OAuth 2.0 access tokens come from (docs/delivery.md, "OAuth2 to the upstream").
///
/// One grant is used: `refresh_token` when `refresh_token_file` is set (delegated access),
/// else `client_credentials` (app-only) with `client_secret_file` or a signed client
/// assertion (`client_certificate` + `client_key`, RFC 7523).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// `microsoft`, `google` or `generic`: sets the default `token_url` and `scope`.
    /// Default: the upstream's `provider`; one of the two is required (and they must agree).
    #[serde(default)]
    pub provider: Option<Provider>,
    /// The Entra ID tenant (a GUID or a domain); required for `microsoft` unless
    /// `token_url` is set.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The application (client) id. Required.
    pub client_id: String,
    /// A file holding the client secret (trailing newline ignored).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// PEM certificate whose key signs the client assertion (its SHA-256 and SHA-1
    /// thumbprints go in the JWT header as `x5t#S256` and `x5t`).
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// PEM RSA private key of `client_certificate` (RS256).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// A file holding a refresh token (Google Workspace, delegated Microsoft 365).
    #[serde(default)]
    pub refresh_token_file: Option<PathBuf>,
    /// The token endpoint; `https`, or `http` on a loopback address only. Default: the
    /// provider's (required for `generic`).
    #[serde(default)]
    pub token_url: Option<String>,
    /// The scope asked for. Default: `https://outlook.office365.com/.default` (microsoft),
    /// `https://mail.google.com/` (google), none (generic).
    #[serde(default)]
    pub scope: Option<String>,
}

/// A routing rule: every condition it sets must hold (a condition left out holds for
/// every message). Patterns are as in users' `senders`: `user@domain`, `@domain`,
/// `@*.domain` (strict subdomains) and `*`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Envelope senders this route takes. Default: any sender.
    #[serde(default)]
    pub senders: Option<Vec<String>>,
    /// Recipients this route takes; a message whose recipients take different routes is
    /// split per route. Default: any recipient.
    #[serde(default)]
    pub recipients: Option<Vec<String>>,
    /// Names of the listeners whose messages this route takes. Default: any listener.
    #[serde(default)]
    pub listeners: Option<Vec<String>>,
    /// Identities whose messages this route takes: a username, or `network:CIDR` for a
    /// device admitted by a `networks` entry. Default: any client, anonymous included.
    #[serde(default)]
    pub identities: Option<Vec<String>>,
    /// Upstream names in failover order. Required, non-empty.
    pub upstreams: Vec<String>,
}

fn default_upstream_connections() -> usize {
    4
}

fn default_connect_timeout() -> Duration {
    Duration::secs(30)
}

fn default_idle_timeout() -> Duration {
    Duration::secs(30)
}
