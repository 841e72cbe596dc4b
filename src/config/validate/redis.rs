//! Rules over the `redis:` section.

use crate::config::redis::RedisConfig;

use super::{Checked, Checker};

impl Checker<'_> {
    /// A Redis URL without credentials in it, TLS settings only with `rediss://`, readable
    /// password and CA files, timeouts above zero.
    pub(super) fn redis(&self, redis: Option<&RedisConfig>) -> Checked {
        let Some(r) = redis else {
            return Ok(());
        };
        self.redis_url(&r.url)?;
        if r.tls.is_some() && !r.uses_tls() {
            return self.fail(
                "redis.tls",
                "needs a rediss:// url (TLS); remove it for redis://",
            );
        }
        if let Some(ca) = r.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
            self.certificates("redis.tls.ca_file", ca)?;
        }
        if let Some(file) = &r.password_file {
            self.password_file("redis.password_file", file)?;
        }
        if r.username.as_deref().is_some_and(str::is_empty) {
            return self.fail(
                "redis.username",
                "must not be empty; remove it for the default user",
            );
        }
        let prefix_ok =
            !r.key_prefix.is_empty() && r.key_prefix.chars().all(|c| c.is_ascii_graphic());
        self.ensure(
            prefix_ok,
            "redis.key_prefix",
            "must be non-empty printable ASCII without spaces, e.g. \"postern:\"",
        )?;
        self.ensure(
            !r.command_timeout.get().is_zero(),
            "redis.command_timeout",
            "must be above 0",
        )?;
        self.ensure(
            !r.connect_timeout.get().is_zero(),
            "redis.connect_timeout",
            "must be above 0",
        )
    }

    /// `redis://` or `rediss://` with a host, and no user name or password in it. The URL is
    /// not quoted in the errors: it might hold the password the check refuses.
    fn redis_url(&self, url: &str) -> Checked {
        const KEY: &str = "redis.url";
        let scheme = url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("redis" | "rediss") => {}
            Some(other) => {
                let problem =
                    format!("scheme {other:?} is not supported; use redis:// or rediss:// (TLS)");
                return self.fail(KEY, problem);
            }
            None => {
                return self.fail(
                    KEY,
                    "not a URL; expected redis://HOST:PORT or rediss://HOST:PORT",
                );
            }
        }
        let Some(parsed) = redis::parse_redis_url(url) else {
            return self.fail(
                KEY,
                "not a URL; expected redis://HOST:PORT or rediss://HOST:PORT",
            );
        };
        if parsed.password().is_some() {
            return self.fail(
                KEY,
                "must not carry a password: put it in a file named by redis.password_file",
            );
        }
        if !parsed.username().is_empty() {
            return self.fail(KEY, "must not carry a user name: set redis.username");
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return self.fail(KEY, "has no host; expected redis://HOST:PORT");
        }
        match redis::IntoConnectionInfo::into_connection_info(url) {
            Ok(_) => Ok(()),
            Err(e) => self.fail(
                KEY,
                format!("cannot be used: {}", e.detail().unwrap_or("bad URL")),
            ),
        }
    }
}
