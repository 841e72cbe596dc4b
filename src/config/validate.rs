//! Cross-field rules over a parsed [`Config`]: each broken rule is one [`ConfigError`] that
//! names the key and says what to do.
//!
//! # Order
//! Sections are checked in the order of [`Config`]'s fields (hostname, listeners, tls, users,
//! networks, limits, rate_limits, auth_lockout, timeouts, queue, upstreams, routes, log, http, redis), each list top to bottom, and the
//! first failure is returned. One error at a time keeps the message short and the golden tests
//! exact (chasquid does the same); the order makes the answer the same on every run.
//!
//! # Files
//! The certificate, private key, upstream CA files and password files are opened here, resolved
//! against the config file's directory, so a missing certificate fails `check-config` instead
//! of the first TLS handshake. Messages quote paths as written in the config. A password file's
//! content is never put into an error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration as StdDuration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::error::{ConfigError, describe_io};
use crate::config::schema::{
    AuthMode, Config, LimitsConfig, ListenerConfig, ListenerTls, LogConfig, QueueConfig,
    TimeoutsConfig, UpstreamConfig, UpstreamTls,
};
use crate::config::syntax::{check_host_port, sender_pattern};
use crate::config::units::Duration;
use crate::config::{MAX_ARGON2_M_COST, config_dir, resolve};

mod http;
mod identity;
mod oauth2;
mod policy;
mod redis;
mod routes;
mod tls;
use policy::Owner;

/// The result of one rule or section.
type Checked = Result<(), ConfigError>;

/// Checks every rule over `config`, which was read from `file`; relative paths in `config`
/// are resolved against `file`'s directory before files are opened.
///
/// Returns the first failure in the order described in the module documentation.
pub fn validate(config: &Config, file: &Path) -> Checked {
    let c = Checker {
        file,
        base: config_dir(file),
        redis: config.redis.is_some(),
    };
    c.hostname(&config.hostname)?;
    c.listeners(&config.listeners)?;
    c.tls(config)?;
    c.users(&config.users, &config.listeners)?;
    c.networks(&config.networks, &config.listeners)?;
    c.limits(&config.limits)?;
    let listeners = &config.listeners;
    c.rate_limits("rate_limits", &config.rate_limits, listeners, Owner::Global)?;
    c.auth_lockout(&config.auth_lockout)?;
    c.timeouts(&config.timeouts)?;
    c.queue(&config.queue)?;
    c.upstreams(&config.upstreams)?;
    c.routes(config)?;
    c.log(&config.log)?;
    c.http(config.http.as_ref(), &config.listeners)?;
    c.redis(config.redis.as_ref())
}

/// Carries the file name into every error and the base directory into every file check.
struct Checker<'a> {
    file: &'a Path,
    base: &'a Path,
    /// A `redis:` section is configured (`scope: cluster` needs one).
    redis: bool,
}

impl Checker<'_> {
    /// Fails with `problem` at `key`.
    fn fail(&self, key: impl Into<String>, problem: impl Into<String>) -> Checked {
        Err(ConfigError::new(self.file, key, problem))
    }

    /// Fails at `key` when `ok` is false.
    fn ensure(&self, ok: bool, key: impl Into<String>, problem: impl Into<String>) -> Checked {
        if ok { Ok(()) } else { self.fail(key, problem) }
    }

    /// RFC 5321 4.1.1.1 and 4.4: the name goes into the banner, EHLO and Received headers, so
    /// it must be a plain domain.
    fn hostname(&self, hostname: &str) -> Checked {
        match check_host_name(hostname) {
            Ok(()) => Ok(()),
            Err(problem) => self.fail("hostname", problem),
        }
    }

    /// At least one listener; unique names; addresses that can all be bound.
    fn listeners(&self, listeners: &[ListenerConfig]) -> Checked {
        self.ensure(
            !listeners.is_empty(),
            "listeners",
            "at least one listener is required",
        )?;
        let mut names = HashMap::new();
        for (i, l) in listeners.iter().enumerate() {
            let key = format!("listeners[{i}]");
            self.ensure(
                !l.name.is_empty(),
                format!("{key}.name"),
                "must not be empty",
            )?;
            if let Some(j) = names.insert(l.name.as_str(), i) {
                let problem = format!("{:?} is already the name of listeners[{j}]", l.name);
                return self.fail(format!("{key}.name"), problem);
            }
            let earlier = listeners.iter().enumerate().take(i);
            if let Some((j, other)) = earlier
                .into_iter()
                .find(|(_, o)| binds_clash(o.address, l.address))
            {
                let (a, b, name) = (l.address, other.address, &other.name);
                let problem = if a == b {
                    format!("{a} is already used by listeners[{j}] ({name:?})")
                } else {
                    // A wildcard bind takes the port on every address of its family.
                    format!("{a} overlaps {b} of listeners[{j}] ({name:?}): both cannot be bound")
                };
                return self.fail(format!("{key}.address"), problem);
            }
            self.listener_modes(&key, l)?;
        }
        Ok(())
    }

    /// The TLS/AUTH combination and the connection cap of one listener.
    fn listener_modes(&self, key: &str, l: &ListenerConfig) -> Checked {
        // RFC 4954 section 4 and RFC 8314 section 3: no password over plain text.
        let plain_auth = l.tls == ListenerTls::None && l.auth != AuthMode::None;
        self.ensure(
            !plain_auth,
            format!("{key}.auth"),
            "AUTH over plain text is not allowed: use tls: starttls or implicit",
        )?;
        // RFC 6409 section 4.3: without AUTH, only a protected network may submit.
        self.ensure(
            !(l.auth == AuthMode::None && l.allow_networks.is_empty()),
            format!("{key}.allow_networks"),
            "with auth: none this listener would be an open relay: set allow_networks",
        )?;
        self.ensure(
            l.max_connections != Some(0),
            format!("{key}.max_connections"),
            "must be at least 1 (leave it out for no per-listener cap)",
        )?;
        // The PROXY protocol spec (haproxy.org proxy-protocol.txt, section 1): a receiver
        // must only accept headers from known senders, so an empty list would trust nobody
        // and (with `required`) refuse everyone.
        let no_trusted = l
            .proxy_protocol
            .as_ref()
            .is_some_and(|p| p.trusted.is_empty());
        self.ensure(
            !no_trusted,
            format!("{key}.proxy_protocol.trusted"),
            "must list the load balancers' networks (CIDR); leave proxy_protocol out to turn \
             it off",
        )
    }

    /// A non-empty list of valid sender patterns at `key`.
    fn senders(&self, key: &str, senders: &[String]) -> Checked {
        self.ensure(
            !senders.is_empty(),
            key,
            "must list at least one sender pattern: \"*\", \"@domain\" or \"local@domain\"",
        )?;
        for (i, s) in senders.iter().enumerate() {
            if let Err(problem) = sender_pattern(s) {
                return self.fail(format!("{key}[{i}]"), problem);
            }
        }
        Ok(())
    }

    /// Caps that would refuse every message or session when too small.
    fn limits(&self, l: &LimitsConfig) -> Checked {
        // RFC 1870: below 1 KiB not even the headers of a normal message fit.
        self.ensure(
            l.max_message_size.get() >= 1024,
            "limits.max_message_size",
            format!("{} is too small: the minimum is 1KiB", l.max_message_size),
        )?;
        let at_least_one = "must be at least 1";
        self.ensure(l.max_recipients >= 1, "limits.max_recipients", at_least_one)?;
        self.ensure(
            l.max_connections >= 1,
            "limits.max_connections",
            at_least_one,
        )?;
        self.ensure(l.max_errors >= 1, "limits.max_errors", at_least_one)?;
        self.ensure(
            l.max_header_size.get() >= 1024,
            "limits.max_header_size",
            format!("{} is too small: the minimum is 1KiB", l.max_header_size),
        )
    }

    /// RFC 5321 4.5.3.2: timeouts are minutes long; under a second is a typo (`5` for `5m`).
    fn timeouts(&self, t: &TimeoutsConfig) -> Checked {
        self.at_least_a_second("timeouts.command", t.command)?;
        self.at_least_a_second("timeouts.data", t.data)?;
        self.at_least_a_second("timeouts.tls_handshake", t.tls_handshake)?;
        self.at_least_a_second("timeouts.session", t.session)?;
        self.at_least_a_second("timeouts.proxy_header", t.proxy_header)
    }

    /// A timeout of at least one second at `key`.
    fn at_least_a_second(&self, key: impl Into<String>, d: Duration) -> Checked {
        let ok = d.get() >= StdDuration::from_secs(1);
        self.ensure(ok, key, format!("{d} is too short: the minimum is 1s"))
    }

    /// The spool directory and a retry schedule that makes progress.
    fn queue(&self, q: &QueueConfig) -> Checked {
        self.ensure(
            !is_empty(&q.directory),
            "queue.directory",
            "must not be empty",
        )?;
        self.ensure(
            q.max_age.get() > StdDuration::ZERO,
            "queue.max_age",
            "must be more than 0s",
        )?;
        // A zero first delay doubles to zero forever: a retry loop without a pause.
        self.ensure(
            q.min_backoff.get() > StdDuration::ZERO,
            "queue.min_backoff",
            "must be more than 0s",
        )?;
        self.ensure(
            q.min_backoff <= q.max_backoff,
            "queue.min_backoff",
            format!(
                "{} is longer than queue.max_backoff ({}): the first retry delay must not exceed \
                 the longest",
                q.min_backoff, q.max_backoff
            ),
        )?;
        self.at_least_a_second("queue.ambiguous_retry", q.ambiguous_retry)?;
        if let Some(after) = q.delay_warning {
            self.at_least_a_second("queue.delay_warning", after)?;
            // A warning due after the message has expired would never be sent.
            self.ensure(
                after < q.max_age,
                "queue.delay_warning",
                format!(
                    "{after} is not shorter than queue.max_age ({}): the warning would never be sent",
                    q.max_age
                ),
            )?;
        }
        Ok(())
    }

    /// At least one upstream; unique names; each either SMTP or a directory.
    fn upstreams(&self, upstreams: &[UpstreamConfig]) -> Checked {
        self.ensure(
            !upstreams.is_empty(),
            "upstreams",
            "at least one upstream is required",
        )?;
        let mut names = HashMap::new();
        for (i, u) in upstreams.iter().enumerate() {
            let key = format!("upstreams[{i}]");
            self.ensure(
                !u.name.is_empty(),
                format!("{key}.name"),
                "must not be empty",
            )?;
            if let Some(j) = names.insert(u.name.as_str(), i) {
                let problem = format!("{:?} is already the name of upstreams[{j}]", u.name);
                return self.fail(format!("{key}.name"), problem);
            }
            match (&u.address, &u.directory) {
                (Some(address), None) => self.smtp_upstream(&key, u, address)?,
                (None, Some(directory)) => self.directory_upstream(&key, u, directory)?,
                (Some(_), Some(_)) => {
                    let problem = "set address (an SMTP smarthost) or directory (a local \
                                   folder), not both";
                    return self.fail(format!("{key}.directory"), problem);
                }
                (None, None) => {
                    let problem = "set address (an SMTP smarthost, host:port) or directory (a \
                                   local folder)";
                    return self.fail(key, problem);
                }
            }
        }
        Ok(())
    }

    /// An SMTP upstream: its address, CA file and credentials.
    fn smtp_upstream(&self, key: &str, u: &UpstreamConfig, address: &str) -> Checked {
        if let Err(problem) = check_host_port(address) {
            return self.fail(format!("{key}.address"), problem);
        }
        self.ensure(
            u.max_connections() >= 1,
            format!("{key}.max_connections"),
            "must be at least 1",
        )?;
        self.at_least_a_second(format!("{key}.connect_timeout"), u.connect_timeout())?;
        self.at_least_a_second(format!("{key}.command_timeout"), u.command_timeout())?;
        self.at_least_a_second(format!("{key}.idle_timeout"), u.idle_timeout())?;
        self.at_least_a_second(
            format!("{key}.circuit_breaker.cooldown"),
            u.circuit_breaker().cooldown,
        )?;
        let scope = ("shaping_scope", u.shaping_scope.unwrap_or_default());
        let fallback = (u.shaping_on_redis_error.is_some(), "shaping_on_redis_error");
        self.scope(key, scope, fallback)?;
        if let Some(ca_file) = &u.ca_file {
            self.certificates(&format!("{key}.ca_file"), ca_file)?;
        }
        if let Some(name) = &u.server_name {
            // RFC 6125 / 7817: the name the certificate is checked against (a DNS name or an
            // IP address), also sent as SNI.
            let ok = rustls_pki_types::ServerName::try_from(name.as_str()).is_ok();
            self.ensure(
                ok,
                format!("{key}.server_name"),
                format!("{name:?} is not a DNS name or IP address"),
            )?;
        }
        if let Some(helo) = &u.helo_name
            && let Err(problem) = check_host_name(helo)
        {
            // Sent verbatim after EHLO: anything else could inject commands.
            return self.fail(format!("{key}.helo_name"), problem);
        }
        let Some(auth) = &u.auth else { return Ok(()) };
        let auth_key = format!("{key}.auth");
        // RFC 4954 4: PLAIN and LOGIN send the password in the clear; without TLS anyone on
        // the path reads the relay account's password.
        self.ensure(
            u.tls() != UpstreamTls::None,
            auth_key.clone(),
            "AUTH without TLS would send the password or token in clear text: use tls: starttls or \
             implicit",
        )?;
        self.ensure(
            !auth.username.is_empty(),
            format!("{auth_key}.username"),
            "must not be empty",
        )?;
        if let Some(oauth2) = &auth.oauth2 {
            let password = auth.password.is_some() || auth.password_file.is_some();
            self.ensure(
                !password,
                format!("{auth_key}.oauth2"),
                "set password, password_file or oauth2, only one",
            )?;
            return self.oauth2(&format!("{auth_key}.oauth2"), oauth2, u.provider);
        }
        match (&auth.password, &auth.password_file) {
            (Some(_), None) => Ok(()),
            (None, Some(file)) => self.password_file(&format!("{auth_key}.password_file"), file),
            (Some(_), Some(_)) => self.fail(auth_key, "set password or password_file, not both"),
            (None, None) => self.fail(auth_key, "set password, password_file or oauth2"),
        }
    }

    /// TLS, certificates and AUTH mean nothing when mail is written to a folder; setting them
    /// suggests the admin meant an SMTP upstream.
    fn directory_upstream(&self, key: &str, u: &UpstreamConfig, directory: &Path) -> Checked {
        self.ensure(
            !is_empty(directory),
            format!("{key}.directory"),
            "must not be empty",
        )?;
        // Every SMTP-only key is an Option, so one set explicitly is told from its default.
        match u.smtp_keys_set().first() {
            Some(field) => self.fail(
                format!("{key}.{field}"),
                "has no meaning for a directory upstream: remove it, or use address for SMTP",
            ),
            None => Ok(()),
        }
    }

    /// The log filter parses as a tracing `EnvFilter` directive list.
    fn log(&self, log: &LogConfig) -> Checked {
        self.ensure(
            !log.level.is_empty(),
            "log.level",
            "must not be empty (e.g. info)",
        )?;
        match tracing_subscriber::EnvFilter::try_new(&log.level) {
            Ok(_) => Ok(()),
            Err(e) => self.fail("log.level", format!("invalid filter {:?}: {e}", log.level)),
        }
    }

    /// A PEM file with at least one certificate.
    pub(super) fn certificates(&self, key: &str, written: &Path) -> Checked {
        let path = resolve(self.base, written);
        let found = CertificateDer::pem_file_iter(&path).and_then(|items| {
            items
                .map(|item| item.map(|_| ()))
                .collect::<Result<Vec<_>, _>>()
        });
        match found {
            Ok(certs) if certs.is_empty() => {
                self.fail(key, format!("{written:?} holds no PEM CERTIFICATE"))
            }
            Ok(_) => Ok(()),
            Err(e) => self.fail(key, pem_problem(written, &e)),
        }
    }

    /// A PEM file with a private key (PKCS#8, PKCS#1 or SEC1).
    pub(super) fn private_key(&self, key: &str, written: &Path) -> Checked {
        match PrivateKeyDer::from_pem_file(resolve(self.base, written)) {
            Ok(_) => Ok(()),
            Err(pem::Error::NoItemsFound) => {
                self.fail(key, format!("{written:?} holds no PEM PRIVATE KEY"))
            }
            Err(e) => self.fail(key, pem_problem(written, &e)),
        }
    }

    /// A readable, non-empty password file; its content never reaches an error.
    pub(super) fn password_file(&self, key: &str, written: &Path) -> Checked {
        match std::fs::read(resolve(self.base, written)) {
            Err(e) => self.fail(key, format!("cannot read {written:?}: {}", describe_io(&e))),
            Ok(bytes) if bytes.trim_ascii_end().is_empty() => {
                self.fail(key, format!("{written:?} is empty"))
            }
            Ok(_) => Ok(()),
        }
    }
}

/// Whether a configured path was left empty (`""`).
fn is_empty(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

/// Describes a PEM read failure without quoting the file's content.
fn pem_problem(written: &Path, err: &pem::Error) -> String {
    match err {
        pem::Error::Io(io) => format!("cannot read {written:?}: {}", describe_io(io)),
        _ => format!("{written:?} is not valid PEM: {err}"),
    }
}

/// Whether two listener addresses cannot both be bound: the same address, or the same port
/// where one side is the wildcard of the same family. Port 0 asks the OS for a free port, so
/// it never clashes.
fn binds_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A host name as postern sends it (banner, EHLO): RFC 1123 letters, digits, '-' and '.'.
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    let ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} may contain only letters, digits, '-' and '.'"
        ))
    }
}

/// RFC 9106 section 3.1 (argon2 parameters) in a PHC string as `postern hash-password` writes.
fn check_password_hash(phc: &str) -> Result<(), String> {
    let hash = argon2::PasswordHash::new(phc)
        .map_err(|e| format!("not a PHC string such as `postern hash-password` prints ({e})"))?;
    let algorithm = hash.algorithm.as_str();
    if !matches!(algorithm, "argon2id" | "argon2i" | "argon2d") {
        return Err(format!(
            "algorithm {algorithm:?} is not supported: use argon2id"
        ));
    }
    let params =
        argon2::Params::try_from(&hash).map_err(|e| format!("invalid argon2 parameters ({e})"))?;
    if params.m_cost() > MAX_ARGON2_M_COST {
        return Err(format!(
            "asks for {} KiB of memory per verification; at most {MAX_ARGON2_M_COST} KiB is \
             allowed (m={MAX_ARGON2_M_COST})",
            params.m_cost()
        ));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(
            "has no salt or no hash: use the whole output of `postern hash-password`".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    #[test]
    fn listener_bind_clashes() {
        let table: &[(&str, &str, bool)] = &[
            ("127.0.0.1:25", "127.0.0.1:25", true),
            ("0.0.0.0:25", "127.0.0.1:25", true),
            ("192.0.2.1:25", "0.0.0.0:25", true),
            ("[::]:587", "[::1]:587", true),
            ("127.0.0.1:25", "127.0.0.2:25", false),
            ("0.0.0.0:25", "0.0.0.0:587", false),
            ("0.0.0.0:25", "[::]:25", false),
            ("127.0.0.1:0", "127.0.0.1:0", false),
        ];
        for (a, b, clash) in table {
            let (a, b) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(binds_clash(a, b), *clash, "{a} / {b}");
            assert_eq!(binds_clash(b, a), *clash, "{b} / {a}");
        }
    }

    #[test]
    fn password_hashes() {
        let table: &[(&str, Option<&str>)] = &[
            (
                "$argon2id$v=19$m=8,t=1,p=1$cG9zdGVybmZpeHR1cmU$WiHTSMJpezvihM+Zu2J3QgDBVs0LMf1Ru/2h60OsR9I",
                None,
            ),
            (
                "$argon2i$v=19$m=8,t=1,p=1$cG9zdGVybmZpeHR1cmU$3EzV+1EdyyvwVny5lpmcisvi6jRNxoTWibHBqa/TBC0",
                None,
            ),
            (
                "secret",
                Some(
                    "not a PHC string such as `postern hash-password` prints (password hash string missing field)",
                ),
            ),
            (
                "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                Some("algorithm \"pbkdf2-sha256\" is not supported: use argon2id"),
            ),
            (
                "$argon2id$v=19$m=1,t=1,p=1$cG9zdGVybmZpeHR1cmU$WiHTSMJpezvihM+Zu2J3QgDBVs0LMf1Ru/2h60OsR9I",
                Some("invalid argon2 parameters (invalid parameter value: value to short)"),
            ),
            (
                "$argon2id$v=19$m=8,t=1,p=1$cG9zdGVybmZpeHR1cmU",
                Some("has no salt or no hash: use the whole output of `postern hash-password`"),
            ),
        ];
        for (input, want) in table {
            assert_eq!(
                check_password_hash(input).err().as_deref(),
                *want,
                "{input:?}"
            );
        }
    }
}
