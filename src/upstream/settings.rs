//! What it takes to open a connection to one upstream: address, TLS, credentials,
//! timeouts. Shared by the client (`client.rs`) and the connection below it (`conn.rs`),
//! which therefore do not import each other's types.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use crate::upstream::oauth2::TokenSource;

/// RFC 5321 4.5.3.2.6: the client waits at least 10 minutes for the reply to the final dot.
const FINAL_DOT_MIN: Duration = Duration::from_secs(600);

/// How the connection is secured.
#[derive(Debug, Clone)]
pub enum Security {
    /// Plain text (loopback sinks, internal MTAs).
    Plain,
    /// STARTTLS, required (RFC 3207): no STARTTLS offered is [`Error::NoStartTls`].
    StartTls(TlsTarget),
    /// TLS from the first byte (RFC 8314).
    Implicit(TlsTarget),
}

/// What TLS needs: the client configuration and the name to verify (RFC 7817).
#[derive(Debug, Clone)]
pub struct TlsTarget {
    /// From [`crate::upstream::tls::client_config`].
    pub config: Arc<ClientConfig>,
    /// Verified against the certificate and sent as SNI when a DNS name.
    pub server_name: ServerName<'static>,
}

/// Upstream AUTH credentials. `Debug` hides the secret.
#[derive(Clone)]
pub struct Credentials {
    /// Login name (with OAuth2: the mailbox).
    pub username: String,
    /// What proves it.
    pub secret: AuthSecret,
}

/// A password, or the source of OAuth 2.0 access tokens. `Debug` hides the password.
#[derive(Clone)]
pub enum AuthSecret {
    /// A password (from `password` or `password_file`): AUTH PLAIN or LOGIN.
    Password(String),
    /// Access tokens (`oauth2`): AUTH XOAUTH2 or OAUTHBEARER (RFC 7628).
    OAuth2(Arc<TokenSource>),
}

impl fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthSecret::Password(_) => f.write_str("Password(..)"),
            AuthSecret::OAuth2(source) => f.debug_tuple("OAuth2").field(source).finish(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &self.secret)
            .finish()
    }
}

/// Client timeouts (RFC 5321 4.5.3.2).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Each command's reply, each write, and the TLS handshake (RFC: 5 minutes for most).
    pub command: Duration,
}

impl Timeouts {
    /// Wait for the reply to the final dot: at least 10 minutes (RFC 5321 4.5.3.2.6).
    pub fn final_dot(&self) -> Duration {
        self.command.max(FINAL_DOT_MIN)
    }
}

/// Everything needed to open a connection to one upstream.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The upstream's configured name (for errors and logs).
    pub name: String,
    /// Host name or IP address to connect to.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS mode and parameters.
    pub security: Security,
    /// Name sent in EHLO/HELO.
    pub helo_name: String,
    /// AUTH credentials, when configured.
    pub credentials: Option<Credentials>,
    /// Timeouts.
    pub timeouts: Timeouts,
}
