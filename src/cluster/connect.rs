//! The Redis client from the `redis:` section: the URL, the ACL user, the password read from
//! `password_file` (never from the URL, never logged) and, for `rediss://`, the CA file.
//!
//! TLS goes through rustls with the ring provider (postern's only one), as every other TLS
//! connection postern makes.

use std::fmt;
use std::path::Path;

use redis::{IntoConnectionInfo, TlsCertificates};

use crate::config::error::describe_io;
use crate::config::redis::RedisConfig;

/// Why the Redis client could not be set up (a file unreadable since validation, or a URL
/// redis-rs refuses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    /// The config key, e.g. `redis.password_file`.
    pub key: &'static str,
    /// What is wrong; never a password.
    pub problem: String,
}

impl ConnectError {
    pub(super) fn client(e: redis::RedisError) -> ConnectError {
        ConnectError {
            key: "redis.url",
            problem: e.to_string(),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

impl std::error::Error for ConnectError {}

/// The client for `cfg` (validated, paths resolved).
pub(super) fn client(cfg: &RedisConfig) -> Result<redis::Client, ConnectError> {
    let info = cfg
        .url
        .as_str()
        .into_connection_info()
        .map_err(ConnectError::client)?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &cfg.username {
        settings = settings.set_username(user);
    }
    if let Some(file) = &cfg.password_file {
        settings = settings.set_password(read_password(file)?);
    }
    let info = info.set_redis_settings(settings);
    let ca_file = cfg.tls.as_ref().and_then(|t| t.ca_file.as_deref());
    match ca_file {
        Some(path) if cfg.uses_tls() => {
            let root_cert = std::fs::read(path).map_err(|e| ConnectError {
                key: "redis.tls.ca_file",
                problem: format!("cannot read {}: {}", path.display(), describe_io(&e)),
            })?;
            let certs = TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            redis::Client::build_with_tls(info, certs).map_err(ConnectError::client)
        }
        _ => redis::Client::open(info).map_err(ConnectError::client),
    }
}

/// The password file's first line, without its line ending or trailing spaces (as the
/// OAuth2 secret files are read; an upstream's `password_file` keeps all but a final line
/// ending).
fn read_password(path: &Path) -> Result<String, ConnectError> {
    let text = std::fs::read(path).map_err(|e| ConnectError {
        key: "redis.password_file",
        problem: format!("cannot read {}: {}", path.display(), describe_io(&e)),
    })?;
    let text = String::from_utf8_lossy(&text);
    Ok(text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_owned())
}
