//! The rules snapshot: everything a session or a delivery attempt decides by, built from one
//! [`Config`] and never changed after. A reload builds a new snapshot and swaps it into the
//! [`LiveRules`] cell; a session keeps the snapshot it started with, the delivery runner
//! loads the current one for each attempt. What lives as long as the process (spool,
//! argon2 workers, limiter state) is the runtime's, not here.

use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::clock::Clock;
use crate::config::schema::{
    AuthMode, BareLineEndings, Config, HeadersConfig, ListenerConfig, ListenerTls, LongLinesPolicy,
    ProxyProtocolConfig, SenderCheck, TimeoutsConfig,
};
use crate::policy::Policy;
use crate::policy::ratelimit::RateLimits;
use crate::server::tls::ServerTls;
use crate::upstream::{BuildError, Context, Upstreams};
use crate::users::Accounts;

/// The current rules, swapped whole on reload.
pub type LiveRules = Arc<ArcSwap<Rules>>;

/// One listener's reloadable settings (its address and TLS mode need a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    /// Its name.
    pub name: String,
    /// TLS mode.
    pub tls: ListenerTls,
    /// AUTH mode.
    pub auth: AuthMode,
    /// Client allowlist (empty = any).
    pub allow_networks: Vec<IpNet>,
    /// Its own `sender_check`, if set.
    pub sender_check: Option<SenderCheck>,
    /// Its PROXY protocol settings, if any (read per connection, so a reload applies).
    pub proxy_protocol: Option<ProxyProtocolConfig>,
}

impl From<&ListenerConfig> for ListenerInfo {
    fn from(l: &ListenerConfig) -> Self {
        ListenerInfo {
            name: l.name.clone(),
            tls: l.tls,
            auth: l.auth,
            allow_networks: l.allow_networks.clone(),
            sender_check: l.sender_check,
            proxy_protocol: l.proxy_protocol.clone(),
        }
    }
}

/// Per-session caps from `limits:` and `smtp:`.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Largest message (RFC 1870 SIZE).
    pub max_message_size: u64,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// Error replies before 421.
    pub max_errors: u32,
    /// Bare CR/LF handling in DATA.
    pub bare_line_endings: BareLineEndings,
    /// Lines over 998 octets in DATA.
    pub long_lines: LongLinesPolicy,
    /// Slowest DATA, bytes per second (0: off).
    pub min_data_rate: u64,
    /// Messages per session (0: no cap).
    pub max_messages_per_session: u32,
    /// Commands without progress between messages (0: no cap).
    pub max_junk_commands: u32,
    /// Largest header section held back for a header check or rewrite.
    pub max_header_size: usize,
}

/// Retry timing, from `queue:`.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// First retry delay.
    pub min_backoff: std::time::Duration,
    /// Longest retry delay.
    pub max_backoff: std::time::Duration,
    /// Give up after this long in the queue.
    pub max_age: std::time::Duration,
    /// The wait before a message that may have been delivered is tried again.
    pub ambiguous_retry: std::time::Duration,
    /// Retry or hold a maybe-delivered message (`queue.on_ambiguous`).
    pub on_ambiguous: crate::config::schema::OnAmbiguous,
    /// `queue.bounces`.
    pub bounces: crate::config::schema::Bounces,
    /// `queue.delay_warning` (`None`: off).
    pub delay_warning: Option<std::time::Duration>,
}

/// Everything sessions and deliveries decide by, from one config.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Our hostname (banner, Received).
    pub hostname: String,
    /// The listeners' TLS configurations (empty when no listener uses TLS).
    pub tls: Arc<ServerTls>,
    /// Credentials.
    pub accounts: Arc<Accounts>,
    /// Sender rules and device identities.
    pub policy: Arc<Policy>,
    /// Upstreams and the one router.
    pub upstreams: Arc<Upstreams>,
    /// Listener settings, in config order.
    pub listeners: Vec<Arc<ListenerInfo>>,
    /// Size/recipient/error caps.
    pub limits: SessionLimits,
    /// Session timeouts.
    pub timeouts: TimeoutsConfig,
    /// Header fix-ups.
    pub headers: HeadersConfig,
    /// Delivery retry timing.
    pub timing: Timing,
    /// Rate-limit rules with their buckets (unchanged rules keep theirs across reloads).
    pub rate_limits: Arc<RateLimits>,
}

impl Rules {
    /// Builds a snapshot from a validated config, with the server TLS configurations already
    /// loaded and the upstreams already built.
    pub fn new(
        cfg: &Config,
        tls: Arc<ServerTls>,
        upstreams: Arc<Upstreams>,
        rate_limits: Arc<RateLimits>,
    ) -> Rules {
        Rules {
            hostname: cfg.hostname.clone(),
            tls,
            accounts: Arc::new(Accounts::new(&cfg.users)),
            policy: Arc::new(Policy::new(cfg)),
            upstreams,
            listeners: cfg
                .listeners
                .iter()
                .map(|l| Arc::new(ListenerInfo::from(l)))
                .collect(),
            limits: SessionLimits {
                max_message_size: cfg.limits.max_message_size.get(),
                max_recipients: cfg.limits.max_recipients,
                max_errors: cfg.limits.max_errors,
                bare_line_endings: cfg.smtp.bare_line_endings,
                long_lines: cfg.smtp.long_lines,
                min_data_rate: cfg.limits.min_data_rate,
                max_messages_per_session: cfg.limits.max_messages_per_session,
                max_junk_commands: cfg.limits.max_junk_commands,
                max_header_size: usize::try_from(cfg.limits.max_header_size.get())
                    .unwrap_or(usize::MAX),
            },
            timeouts: cfg.timeouts.clone(),
            headers: cfg.headers.clone(),
            timing: Timing {
                min_backoff: cfg.queue.min_backoff.get(),
                max_backoff: cfg.queue.max_backoff.get(),
                max_age: cfg.queue.max_age.get(),
                ambiguous_retry: cfg.queue.ambiguous_retry.get(),
                on_ambiguous: cfg.queue.on_ambiguous,
                bounces: cfg.queue.bounces,
                delay_warning: cfg.queue.delay_warning.map(|d| d.get()),
            },
            rate_limits,
        }
    }

    /// Builds a first snapshot, its upstreams (sharing `context`) and empty rate-limit
    /// buckets from a validated config.
    pub fn build(
        cfg: &Config,
        tls: Arc<ServerTls>,
        clock: &Clock,
        context: Context,
    ) -> Result<Rules, BuildError> {
        let upstreams = Arc::new(Upstreams::with_context(cfg, context)?);
        let rate_limits = Arc::new(RateLimits::new(cfg, clock));
        Ok(Rules::new(cfg, tls, upstreams, rate_limits))
    }

    /// The named listener's settings.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerInfo>> {
        self.listeners.iter().find(|l| l.name == name)
    }
}
