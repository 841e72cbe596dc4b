//! The `redis:` section: where the Redis shared by several postern instances is, for rate
//! limits, the AUTH lockout and upstream shaping marked `scope: cluster`.
//!
//! Like [`crate::config::schema`], every struct is `deny_unknown_fields` and each field's doc
//! comment states its default. The password is read from `password_file` only, never from the
//! URL, so that it is neither in the config file nor in a log line that quotes the URL.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::resolve;
use crate::config::units::Duration;

/// The Redis server shared by the instances of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`, or `rediss://host:port[/db]` for TLS. Must carry no user
    /// name or password (use `username` and `password_file`). Required.
    pub url: String,
    /// The ACL user name (Redis 6 `AUTH username password`). Default: none (the `default`
    /// user, or `requirepass`).
    #[serde(default)]
    pub username: Option<String>,
    /// A file whose first line is the password. Relative paths are resolved against the
    /// config file's directory. Default: none (no AUTH).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS settings for a `rediss://` URL. Default: the system's trusted roots.
    #[serde(default)]
    pub tls: Option<RedisTlsConfig>,
    /// Put before every key postern writes, so that several clusters (or other programs) can
    /// share one Redis. Default: `postern:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// The longest a session waits for one Redis call; past it, Redis is taken as down and
    /// each rule's `on_redis_error` applies until it answers again. Default: `200ms`.
    #[serde(default = "default_command_timeout")]
    pub command_timeout: Duration,
    /// The longest a (re)connection may take, TLS handshake and AUTH included. Default: `2s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
}

/// TLS to Redis (a `rediss://` URL).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// PEM file of the CA certificates the server's certificate must chain to, instead of the
    /// system's trusted roots. Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl RedisConfig {
    /// Resolves the relative paths against `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &mut self.password_file {
            *p = resolve(base, p);
        }
        if let Some(p) = self.tls.as_mut().and_then(|t| t.ca_file.as_mut()) {
            *p = resolve(base, p);
        }
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }
}

fn default_key_prefix() -> String {
    "postern:".into()
}
fn default_command_timeout() -> Duration {
    Duration(std::time::Duration::from_millis(200))
}
fn default_connect_timeout() -> Duration {
    Duration::secs(2)
}
