//! The async shell on the inbound side: accept loops, one task per connection driving the
//! sans-I/O engine, TLS.

pub mod conn;
pub mod listener;
pub mod tls;

use std::sync::Arc;

use ipnet::IpNet;

use crate::config::schema::{AuthMode, HeadersConfig, ListenerConfig, ListenerTls, TimeoutsConfig};
use crate::delivery::DeliveryHandle;
use crate::policy::Policy;
use crate::spool::Spool;
use crate::upstream::route::Router;
use crate::users::Users;

/// What every session needs, shared by all listeners.
#[derive(Debug)]
pub struct Shared {
    /// Our hostname (banner, Received).
    pub hostname: String,
    /// The listeners' TLS configuration, when any listener uses TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Credentials.
    pub users: Arc<Users>,
    /// Sender rules and device identities.
    pub policy: Policy,
    /// Routes, to refuse a sender no route takes at MAIL time rather than after DATA.
    pub router: Router,
    /// The durable queue.
    pub spool: Spool,
    /// Where committed messages are handed for delivery.
    pub delivery: DeliveryHandle,
    /// Size/recipient/error caps.
    pub max_message_size: u64,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// Error replies before 421.
    pub max_errors: u32,
    /// Bare CR/LF handling in DATA.
    pub bare_line_endings: crate::config::schema::BareLineEndings,
    /// Session timeouts.
    pub timeouts: TimeoutsConfig,
    /// Header fix-ups.
    pub headers: HeadersConfig,
}

/// One listener's settings.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Its name.
    pub name: String,
    /// TLS mode.
    pub tls: ListenerTls,
    /// AUTH mode.
    pub auth: AuthMode,
    /// Client allowlist (empty = any).
    pub allow_networks: Vec<IpNet>,
}

impl From<&ListenerConfig> for ListenerInfo {
    fn from(l: &ListenerConfig) -> Self {
        ListenerInfo {
            name: l.name.clone(),
            tls: l.tls,
            auth: l.auth,
            allow_networks: l.allow_networks.clone(),
        }
    }
}
