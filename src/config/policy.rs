//! The policy sections of the config: size, recipient and connection caps (`limits`), rate
//! limits (`rate_limits`, also inside `users[]` and `networks[]` entries) and the AUTH
//! lockout (`auth_lockout`).
//!
//! Like [`crate::config::schema`], every struct is `deny_unknown_fields` and each field's doc
//! comment states its default. Cross-field rules live in `validate.rs`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::units::{ByteSize, Duration};

/// Caps on what a client may send.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message accepted (RFC 1870 SIZE). Default: `25MiB`.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: ByteSize,
    /// Most recipients per transaction; more get `452 4.5.3`. Default: `100`.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Most concurrent sessions over all listeners; more get `421 4.7.0`. Default: `1000`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most concurrent sessions from one client IP address; more get `421 4.7.0`.
    /// Default: `0` (no per-IP cap).
    #[serde(default)]
    pub max_connections_per_ip: usize,
    /// After this many error replies in a session, it is closed with `421 4.7.0`. Default: `10`.
    #[serde(default = "default_max_errors")]
    pub max_errors: u32,
    /// Slowest DATA accepted, in bytes per second: after `timeouts.data`, each byte received
    /// earns `1/min_data_rate` s more, and a client slower than that is closed with
    /// `421 4.4.2` (Postfix's `smtpd_min_data_rate`). `0` turns it off. Default: `500`.
    #[serde(default = "default_min_data_rate")]
    pub min_data_rate: u64,
    /// Most messages queued in one session; the next MAIL gets `421 4.7.0` and the session
    /// closes (the client reconnects). `0`: no cap. Default: `1000`.
    #[serde(default = "default_max_messages_per_session")]
    pub max_messages_per_session: u32,
    /// Most commands without progress (NOOP, RSET, VRFY, HELP) between queued messages;
    /// one more gets `421 4.7.0` and close (Postfix's `smtpd_junk_command_limit`). `0`: no
    /// cap. Default: `100`.
    #[serde(default = "default_max_junk_commands")]
    pub max_junk_commands: u32,
    /// Largest header section examined where a `From:` / `Sender:` check or a `From:`
    /// rewrite needs it; a message whose header section is larger is refused with
    /// `552 5.3.4`, not buffered. Default: `64KiB`.
    #[serde(default = "default_max_header_size")]
    pub max_header_size: ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_size: default_max_message_size(),
            max_recipients: default_max_recipients(),
            max_connections: default_max_connections(),
            max_connections_per_ip: 0,
            max_errors: default_max_errors(),
            min_data_rate: default_min_data_rate(),
            max_messages_per_session: default_max_messages_per_session(),
            max_junk_commands: default_max_junk_commands(),
            max_header_size: default_max_header_size(),
        }
    }
}

/// One rate limit: at most `messages`, `recipients` or `connections` (exactly one of them)
/// per `interval` for each distinct value of `per`, as a GCRA bucket (tokens come back
/// evenly over the interval, not all at once at its end).
///
/// A client over the limit gets `450 4.7.1` (MAIL, RCPT) or `421 4.7.0` (connections) with
/// the time to wait. Messages are counted at MAIL, recipients at each RCPT, connections at
/// accept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// Shown in logs and in the refusal text, unique in its list. Default: derived from
    /// `per` and the quantity, e.g. `per-user-messages`.
    #[serde(default)]
    pub name: Option<String>,
    /// What is counted separately: `ip` (the client address; IPv6 per /64, the smallest
    /// block a site is given), `user` (the AUTH username; unauthenticated clients are not
    /// counted), `identity` (the user, or the `networks` entry of a device; anonymous clients
    /// are not counted), `sender_domain` (the MAIL FROM domain; the null sender is not
    /// counted) or `listener`. Required.
    pub per: RatePer,
    /// Messages (MAIL commands) per interval. Exactly one of `messages`, `recipients` and
    /// `connections` is required.
    #[serde(default)]
    pub messages: Option<u32>,
    /// Recipients (RCPT commands) per interval.
    #[serde(default)]
    pub recipients: Option<u32>,
    /// Connections per interval; not with `per: user` or `per: sender_domain`, which are
    /// unknown when a connection is accepted.
    #[serde(default)]
    pub connections: Option<u32>,
    /// The interval the limit is spread over. Default: `1h`.
    #[serde(default = "default_rate_interval")]
    pub interval: Duration,
    /// How many may come at once after a quiet spell. Default: the limit itself, so
    /// `messages: 3` admits three back to back, then one per `interval / 3`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Listener names this rule applies on. Default: empty, meaning every listener.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// `local` (this instance's memory) or `cluster` (one budget shared by every instance
    /// through `redis:`, checked after the local rules). Default: `local`.
    #[serde(default)]
    pub scope: Scope,
    /// With `scope: cluster`: what to do while Redis is down or slow, `allow` or `deny`
    /// (a temporary refusal). Default: `allow`.
    #[serde(default)]
    pub on_redis_error: Option<OnRedisError>,
}

/// Where a limit's state lives (`scope:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// In this instance's memory.
    #[default]
    Local,
    /// In the shared Redis: one budget for every instance.
    Cluster,
}

/// What a `scope: cluster` limit does while Redis cannot answer (`on_redis_error:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// Admit (the local rules still apply), logged and counted.
    #[default]
    Allow,
    /// Refuse with a temporary reply, logged and counted.
    Deny,
}

/// What a rate limit counts separately (`per:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RatePer {
    /// The client address (IPv6: its /64).
    Ip,
    /// The authenticated username.
    User,
    /// The user or the device network.
    Identity,
    /// The envelope sender's domain, lowercased.
    SenderDomain,
    /// The listener the client connected to.
    Listener,
}

impl RatePer {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            RatePer::Ip => "ip",
            RatePer::User => "user",
            RatePer::Identity => "identity",
            RatePer::SenderDomain => "sender_domain",
            RatePer::Listener => "listener",
        }
    }
}

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateQuantity {
    /// Connections, at accept.
    Connections,
    /// Messages, at MAIL.
    Messages,
    /// Recipients, at each RCPT.
    Recipients,
}

impl RateQuantity {
    /// The key name, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            RateQuantity::Connections => "connections",
            RateQuantity::Messages => "messages",
            RateQuantity::Recipients => "recipients",
        }
    }
}

impl RateLimitRule {
    /// The quantity and its limit, when exactly one of the three keys is set.
    pub fn quantity(&self) -> Option<(RateQuantity, u32)> {
        match (self.messages, self.recipients, self.connections) {
            (Some(n), None, None) => Some((RateQuantity::Messages, n)),
            (None, Some(n), None) => Some((RateQuantity::Recipients, n)),
            (None, None, Some(n)) => Some((RateQuantity::Connections, n)),
            _ => None,
        }
    }

    /// The configured name, or one derived from `per` and the quantity.
    pub fn display_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let quantity = self.quantity().map_or("limit", |(q, _)| q.as_str());
        format!("per-{}-{quantity}", self.per.as_str().replace('_', "-"))
    }
}

/// The AUTH lockout: after `attempts` failed AUTHs from one client address within `window`,
/// AUTH from it is refused with `454 4.7.0` for `duration`, even with the right password.
///
/// On by default. A success does not clear the count: failures age out of the window.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthLockoutConfig {
    /// Failures that start a lockout; `0` turns the lockout off. Default: `10`.
    #[serde(default = "default_lockout_attempts")]
    pub attempts: u32,
    /// The failures are counted over this span, from the first one. Default: `10m`.
    #[serde(default = "default_lockout_window")]
    pub window: Duration,
    /// How long a lockout lasts. Default: `15m`.
    #[serde(default = "default_lockout_duration")]
    pub duration: Duration,
    /// Also lock an existing username after `attempts` failures from any addresses
    /// (a distributed guess at one account). Unknown usernames are never tracked.
    /// Default: `false`, since anyone can then lock a known user out.
    #[serde(default)]
    pub per_username: bool,
    /// `local` (this instance's table) or `cluster` (failures and lockouts shared through
    /// `redis:`, so a lockout earned on one instance holds on all). Default: `local`.
    #[serde(default)]
    pub scope: Scope,
    /// With `scope: cluster`, while Redis is down or slow: `allow` (fall back to this
    /// instance's own table) or `deny` (AUTH refused with `454 4.7.0`). Default: `allow`.
    #[serde(default)]
    pub on_redis_error: Option<OnRedisError>,
}

impl Default for AuthLockoutConfig {
    fn default() -> Self {
        AuthLockoutConfig {
            attempts: default_lockout_attempts(),
            window: default_lockout_window(),
            duration: default_lockout_duration(),
            per_username: false,
            scope: Scope::Local,
            on_redis_error: None,
        }
    }
}

fn default_max_message_size() -> ByteSize {
    ByteSize::mib(25)
}
fn default_max_recipients() -> usize {
    100
}
fn default_max_connections() -> usize {
    1000
}
fn default_min_data_rate() -> u64 {
    500
}
fn default_max_messages_per_session() -> u32 {
    1000
}
/// 64 KiB holds the headers of any normal message, long Received chains and DKIM
/// signatures included.
fn default_max_header_size() -> ByteSize {
    ByteSize::kib(64)
}
fn default_max_junk_commands() -> u32 {
    100
}
fn default_max_errors() -> u32 {
    10
}
fn default_rate_interval() -> Duration {
    Duration::secs(3600)
}
fn default_lockout_attempts() -> u32 {
    10
}
fn default_lockout_window() -> Duration {
    Duration::secs(600)
}
fn default_lockout_duration() -> Duration {
    Duration::secs(900)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names() {
        let rule = |per, m, r, c| RateLimitRule {
            name: None,
            per,
            messages: m,
            recipients: r,
            connections: c,
            interval: default_rate_interval(),
            burst: None,
            listeners: vec![],
            scope: Scope::Local,
            on_redis_error: None,
        };
        let rows = [
            (
                rule(RatePer::User, Some(1), None, None),
                "per-user-messages",
            ),
            (
                rule(RatePer::SenderDomain, None, Some(1), None),
                "per-sender-domain-recipients",
            ),
            (rule(RatePer::Ip, None, None, Some(1)), "per-ip-connections"),
            (rule(RatePer::Ip, Some(1), Some(1), None), "per-ip-limit"),
        ];
        for (r, want) in rows {
            assert_eq!(r.display_name(), want);
        }
    }
}
