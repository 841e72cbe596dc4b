//! The upstream side: where accepted mail goes.
//!
//! [`Upstreams`] is the facade the delivery layer uses: built once from the config, it
//! routes a sender to an ordered list of upstream names ([`route::Router`]) and delivers a
//! message to one named upstream, over a pooled SMTP connection ([`pool::Pool`] →
//! [`client::Client`]) or into a directory ([`directory::Directory`]). Failover across the
//! list, retries and backoff belong to the delivery layer: it sees per-recipient outcomes and
//! classified errors ([`error::Error::is_permanent`], [`error::Error::is_maybe_delivered`]).
//!
//! # Layout
//! - `client.rs`: one SMTP session's transactions: envelope, per-recipient outcomes,
//!   dot-stuffed streaming.
//! - `conn.rs`: the stream under it: timeouts, reply reading, EHLO, STARTTLS, AUTH.
//! - [`oauth2`]: OAuth 2.0 access tokens for AUTH XOAUTH2 / OAUTHBEARER.
//! - `hints.rs`: what known provider refusals mean, for the log.
//! - `pool.rs`: per-upstream connection cap and idle reuse.
//! - `tls.rs`: rustls client configuration (RFC 7817).
//! - `route.rs`: sender, recipient, listener and identity → upstream names.
//! - `breaker.rs`: the circuit breaker that skips an upstream failing again and again.
//! - `directory.rs`: the `directory:` upstream.
//! - `wrap.rs`: lines over 998 octets wrapped on the way to any upstream.
//! - `error.rs`: the error enum and its classification.

pub mod breaker;
pub mod client;
mod conn;
pub mod directory;
pub mod error;
mod hints;
pub mod oauth2;
pub mod pool;
pub mod probe;
pub mod route;
pub mod settings;
pub mod shaping;
pub mod tls;
pub mod wrap;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::config::schema::{Config, UpstreamAuth, UpstreamConfig, UpstreamTls};
use crate::upstream::breaker::Breaker;
use crate::upstream::client::{
    AuthSecret, Credentials, Outgoing, RcptOutcome, Security, Settings, Timeouts, TlsTarget,
};
use crate::upstream::directory::Directory;
use crate::upstream::error::{Error, Stage};
use crate::upstream::oauth2::TokenObserver;
use crate::upstream::pool::Pool;
use crate::upstream::route::Router;
use crate::upstream::shaping::Shaper;
use crate::upstream::tls::TlsError;

/// Why the upstreams could not be built from the config. Each names the upstream.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// Not exactly one of `address` and `directory` is set.
    AddressOrDirectory {
        /// Upstream name.
        upstream: String,
    },
    /// `address` is not `host:port`.
    Address {
        /// Upstream name.
        upstream: String,
        /// The configured value.
        address: String,
    },
    /// The TLS configuration failed (CA file, server name).
    Tls {
        /// Upstream name.
        upstream: String,
        /// The cause.
        source: TlsError,
    },
    /// Not exactly one of `auth.password`, `auth.password_file` and `auth.oauth2` is set.
    Password {
        /// Upstream name.
        upstream: String,
    },
    /// `auth.password_file` or `directory` could not be read or created.
    File {
        /// Upstream name.
        upstream: String,
        /// The config key (`auth.password_file` or `directory`).
        key: &'static str,
        /// The resolved path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The `auth.oauth2` section cannot be used (token URL, key, credentials).
    OAuth2 {
        /// Upstream name.
        upstream: String,
        /// The config key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// Two upstreams share a name.
    Duplicate {
        /// The repeated name.
        upstream: String,
    },
    /// A route names an upstream that is not configured.
    UnknownUpstream {
        /// The unknown name.
        upstream: String,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::AddressOrDirectory { upstream } => {
                write!(
                    f,
                    "upstreams[{upstream}]: set exactly one of address and directory"
                )
            }
            BuildError::Address { upstream, address } => {
                write!(
                    f,
                    "upstreams[{upstream}].address: {address:?} is not host:port"
                )
            }
            BuildError::Tls { upstream, source } => write!(f, "upstreams[{upstream}]: {source}"),
            BuildError::Password { upstream } => write!(
                f,
                "upstreams[{upstream}].auth: set exactly one of password, password_file and oauth2"
            ),
            BuildError::File {
                upstream,
                key,
                path,
                source,
            } => {
                write!(
                    f,
                    "upstreams[{upstream}].{key}: {}: {source}",
                    path.display()
                )
            }
            BuildError::OAuth2 {
                upstream,
                key,
                problem,
            } => write!(f, "upstreams[{upstream}].{key}: {problem}"),
            BuildError::Duplicate { upstream } => {
                write!(f, "upstreams: the name {upstream:?} is used twice")
            }
            BuildError::UnknownUpstream { upstream } => {
                write!(
                    f,
                    "routes: upstream {upstream:?} is not defined in upstreams"
                )
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// One configured upstream.
#[derive(Debug)]
enum Target {
    /// Shared: a reload that leaves an upstream's settings alone hands its pool, warm
    /// connections and all, to the next [`Upstreams`]. The fingerprint says what "alone"
    /// means (see [`fingerprint`]).
    Smtp {
        pool: Arc<Pool>,
        /// Beside the pool, and carried over with it: an upstream a reload leaves alone
        /// keeps its breaker's state.
        breaker: Arc<Breaker>,
        fingerprint: [u8; 32],
        /// The account's caps and pause; carried over by name on every reload (even when
        /// the pool is not), so a reload does not forget what was sent today.
        shaper: Arc<Shaper>,
    },
    Directory(Directory),
}

/// The result of [`Upstreams::rebuild`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Rebuilt {
    /// The new upstreams.
    pub upstreams: Upstreams,
    /// Names of the SMTP upstreams whose pool was carried over unchanged.
    pub kept: Vec<String>,
    /// Pools of the previous upstreams that were removed or changed: nothing new is sent
    /// through them, and their idle connections should get QUIT ([`Upstreams::close_pools`]).
    pub retired: Vec<Arc<Pool>>,
}

/// All upstreams and the router: what the delivery layer talks to.
#[derive(Debug)]
pub struct Upstreams {
    router: Router,
    targets: HashMap<String, Target>,
    context: Context,
}

/// What the upstreams share with the rest of the instance: the clock (token expiry) and
/// who is told about token requests (the metrics). A reload keeps it.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The instance's clock.
    pub clock: Clock,
    /// Told about OAuth2 token requests and expiry.
    pub tokens: Option<Arc<dyn TokenObserver>>,
}

impl Upstreams {
    /// Builds every upstream from a config whose paths are already resolved (as
    /// `config::load` does); relative paths are taken from the working directory.
    pub fn new(cfg: &Config) -> Result<Upstreams, BuildError> {
        Upstreams::with_base_dir(cfg, Path::new(""))
    }

    /// Builds every upstream from the config. Relative paths (`ca_file`, `password_file`,
    /// `directory`) are resolved against `base_dir`, the config file's directory. Password
    /// files are read here, once; a directory upstream's directory is created if absent.
    pub fn with_base_dir(cfg: &Config, base_dir: &Path) -> Result<Upstreams, BuildError> {
        Upstreams::build(cfg, base_dir, None, Context::default())
    }

    /// [`Upstreams::new`] with the instance's clock and token observer (kept by
    /// [`Upstreams::rebuild`]).
    pub fn with_context(cfg: &Config, context: Context) -> Result<Upstreams, BuildError> {
        Upstreams::build(cfg, Path::new(""), None, context)
    }

    /// Builds the upstreams of a reloaded config, taking over from `previous` the pool of
    /// each SMTP upstream whose settings (and the files they name) did not change, so that a
    /// reload keeps warm connections. The other previous pools are returned as retired.
    pub fn rebuild(cfg: &Config, previous: &Upstreams) -> Result<Rebuilt, BuildError> {
        let context = previous.context.clone();
        let upstreams = Upstreams::build(cfg, Path::new(""), Some(previous), context)?;
        let mut kept = Vec::new();
        let mut retired = Vec::new();
        for (name, old) in &previous.targets {
            let Target::Smtp { pool: old, .. } = old else {
                continue;
            };
            match upstreams.targets.get(name) {
                Some(Target::Smtp { pool, .. }) if Arc::ptr_eq(pool, old) => {
                    kept.push(name.clone());
                }
                _ => retired.push(old.clone()),
            }
        }
        kept.sort();
        retired.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(Rebuilt {
            upstreams,
            kept,
            retired,
        })
    }

    fn build(
        cfg: &Config,
        base_dir: &Path,
        previous: Option<&Upstreams>,
        context: Context,
    ) -> Result<Upstreams, BuildError> {
        let mut targets = HashMap::new();
        for u in &cfg.upstreams {
            let reuse = previous.and_then(|p| p.targets.get(&u.name));
            let target = build_target(u, &cfg.hostname, base_dir, reuse, &context)?;
            if targets.insert(u.name.clone(), target).is_some() {
                return Err(BuildError::Duplicate {
                    upstream: u.name.clone(),
                });
            }
        }
        let names: Vec<String> = cfg.upstreams.iter().map(|u| u.name.clone()).collect();
        let router = Router::new(&cfg.routes, &names);
        if let Some(unknown) = router
            .used_upstreams()
            .into_iter()
            .find(|n| !targets.contains_key(*n))
        {
            return Err(BuildError::UnknownUpstream {
                upstream: unknown.to_owned(),
            });
        }
        Ok(Upstreams {
            router,
            targets,
            context,
        })
    }

    /// The sender router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Delivers one message to the upstream named `upstream`. `queue_id` names the files of
    /// a directory upstream.
    pub async fn deliver(
        &self,
        upstream: &str,
        queue_id: &str,
        msg: &mut Outgoing<'_>,
    ) -> Result<Vec<RcptOutcome>, Error> {
        match self.targets.get(upstream) {
            Some(Target::Smtp { pool, .. }) => pool.deliver(msg).await,
            Some(Target::Directory(dir)) => dir.deliver(queue_id, msg).await,
            None => Err(Error::Protocol {
                upstream: upstream.to_owned(),
                stage: Stage::Connect,
                detail: "no such upstream".to_owned(),
            }),
        }
    }

    /// Whether an upstream of this name is configured.
    pub fn contains(&self, upstream: &str) -> bool {
        self.targets.contains_key(upstream)
    }

    /// The caps and pause of an SMTP upstream (a directory upstream has none).
    pub fn shaper(&self, upstream: &str) -> Option<&Shaper> {
        match self.targets.get(upstream) {
            Some(Target::Smtp { shaper, .. }) => Some(shaper),
            _ => None,
        }
    }

    /// The circuit breaker of an SMTP upstream (a directory upstream has none).
    pub fn breaker(&self, upstream: &str) -> Option<&Breaker> {
        match self.targets.get(upstream) {
            Some(Target::Smtp { breaker, .. }) => Some(breaker),
            _ => None,
        }
    }

    /// The connection pool of an SMTP upstream (for metrics).
    pub fn pool(&self, upstream: &str) -> Option<&Pool> {
        match self.targets.get(upstream) {
            Some(Target::Smtp { pool, .. }) => Some(pool),
            _ => None,
        }
    }

    /// Closes idle connections past their `idle_timeout`, all upstreams at once; call it
    /// every [`Upstreams::reap_period`].
    pub async fn reap_idle(&self) {
        let expired = self.smtp_pools().flat_map(Pool::take_expired).collect();
        pool::quit_all(expired).await;
    }

    /// Closes every idle connection, all upstreams at once (shutdown).
    pub async fn close_idle(&self) {
        Upstreams::quit_idle(self.smtp_pools()).await;
    }

    /// Closes every idle connection of `pools` at once (the pools a reload retired).
    pub async fn close_pools(pools: &[Arc<Pool>]) {
        Upstreams::quit_idle(pools.iter().map(Arc::as_ref)).await;
    }

    async fn quit_idle<'a>(pools: impl Iterator<Item = &'a Pool>) {
        let all = pools.flat_map(Pool::take_all).collect();
        pool::quit_all(all).await;
    }

    /// How often to call [`Upstreams::reap_idle`]: half the shortest `idle_timeout`, so no
    /// connection stays idle much beyond its limit (at most 1.5 times it), but no more
    /// often than every second and at least every [`MAX_REAP_PERIOD`].
    pub fn reap_period(&self) -> Duration {
        self.smtp_pools()
            .map(|p| p.idle_timeout() / 2)
            .min()
            .unwrap_or(MAX_REAP_PERIOD)
            .clamp(MIN_REAP_PERIOD, MAX_REAP_PERIOD)
    }

    /// Each SMTP upstream's name and pool (for the connection gauges).
    pub fn pools(&self) -> impl Iterator<Item = (&str, &Pool)> {
        self.targets.iter().filter_map(|(name, t)| match t {
            Target::Smtp { pool, .. } => Some((name.as_str(), pool.as_ref())),
            Target::Directory(_) => None,
        })
    }

    fn smtp_pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools().map(|(_, pool)| pool)
    }
}

/// Lower bound of [`Upstreams::reap_period`].
const MIN_REAP_PERIOD: Duration = Duration::from_secs(1);
/// Upper bound of [`Upstreams::reap_period`].
pub const MAX_REAP_PERIOD: Duration = Duration::from_secs(30);

/// Builds one upstream; an SMTP upstream takes over `previous`'s pool when its fingerprint
/// is the same.
fn build_target(
    u: &UpstreamConfig,
    hostname: &str,
    base: &Path,
    previous: Option<&Target>,
    context: &Context,
) -> Result<Target, BuildError> {
    match (&u.address, &u.directory) {
        (Some(address), None) => {
            let fingerprint = fingerprint(u, hostname, base);
            let shaper = match previous {
                Some(Target::Smtp { shaper, .. }) => {
                    shaper.set_caps(u.caps());
                    shaper.clone()
                }
                _ => Arc::new(Shaper::new(u.caps())),
            };
            shaper.set_sharing(u.sharing());
            if let Some(Target::Smtp {
                pool,
                breaker,
                fingerprint: old,
                ..
            }) = previous
                && *old == fingerprint
            {
                return Ok(Target::Smtp {
                    pool: pool.clone(),
                    breaker: breaker.clone(),
                    fingerprint,
                    shaper,
                });
            }
            let settings = settings(u, address, hostname, base, context)?;
            let pool = Pool::new(settings, u.max_connections(), u.idle_timeout().get())
                .with_messages_per_connection(u.messages_per_connection());
            Ok(Target::Smtp {
                pool: Arc::new(pool),
                breaker: Arc::new(Breaker::new(&u.circuit_breaker())),
                fingerprint,
                shaper,
            })
        }
        (None, Some(dir)) => {
            let path = base.join(dir);
            std::fs::create_dir_all(&path).map_err(|source| BuildError::File {
                upstream: u.name.clone(),
                key: "directory",
                path: path.clone(),
                source,
            })?;
            Ok(Target::Directory(Directory::new(&u.name, path)))
        }
        _ => Err(BuildError::AddressOrDirectory {
            upstream: u.name.clone(),
        }),
    }
}

/// What an SMTP upstream's pool depends on: its config entry, the EHLO name (the hostname
/// unless it names its own), and the contents of the files it names (CA file, password file,
/// OAuth2 client secret, certificate, key and refresh token), so that a renewed CA bundle or
/// a rotated password or secret counts as a change (and gets a new token). A hash, so that
/// the secrets are not kept a second time.
fn fingerprint(u: &UpstreamConfig, hostname: &str, base: &Path) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(serde_json::to_string(u).unwrap_or_default().as_bytes());
    part(u.helo_name.as_deref().unwrap_or(hostname).as_bytes());
    let oauth2 = u.auth.as_ref().and_then(|a| a.oauth2.as_ref());
    let oauth2_files = oauth2
        .into_iter()
        .flat_map(|o| o.files())
        .filter_map(|(_, f)| f);
    let files = [
        u.ca_file.as_deref(),
        u.auth.as_ref().and_then(|a| a.password_file.as_deref()),
    ];
    for file in files.into_iter().flatten().chain(oauth2_files) {
        // An unreadable file fails the build itself; here it only has to differ.
        part(&std::fs::read(base.join(file)).unwrap_or_default());
    }
    h.finalize().into()
}

/// Connection settings of an SMTP upstream.
fn settings(
    u: &UpstreamConfig,
    address: &str,
    hostname: &str,
    base: &Path,
    context: &Context,
) -> Result<Settings, BuildError> {
    let bad_address = || BuildError::Address {
        upstream: u.name.clone(),
        address: address.to_owned(),
    };
    let (host, port) = split_address(address).ok_or_else(bad_address)?;
    let target = || -> Result<TlsTarget, BuildError> {
        let tls_err = |source| BuildError::Tls {
            upstream: u.name.clone(),
            source,
        };
        let ca_file = u.ca_file.as_ref().map(|p| base.join(p));
        let config = tls::client_config(ca_file.as_deref(), u.tls_verify()).map_err(tls_err)?;
        // RFC 7817 3: the reference identity is the configured name, else the host we dial.
        let name = u.server_name.as_deref().unwrap_or(host);
        let server_name = tls::server_name(name).map_err(tls_err)?;
        Ok(TlsTarget {
            config,
            server_name,
        })
    };
    let security = match u.tls() {
        UpstreamTls::None => Security::Plain,
        UpstreamTls::Starttls => Security::StartTls(target()?),
        UpstreamTls::Implicit => Security::Implicit(target()?),
    };
    let credentials = u
        .auth
        .as_ref()
        .map(|a| credentials(u, a, base, context))
        .transpose()?;
    Ok(Settings {
        name: u.name.clone(),
        host: host.to_owned(),
        port,
        security,
        helo_name: u.helo_name.clone().unwrap_or_else(|| hostname.to_owned()),
        credentials,
        timeouts: Timeouts {
            connect: u.connect_timeout().get(),
            command: u.command_timeout().get(),
        },
    })
}

/// Credentials with the password inline or read from `password_file` (trailing newline
/// dropped, as editors and `echo` add one), or an OAuth2 token source.
fn credentials(
    u: &UpstreamConfig,
    a: &UpstreamAuth,
    base: &Path,
    context: &Context,
) -> Result<Credentials, BuildError> {
    let secret = match (&a.password, &a.password_file, &a.oauth2) {
        (Some(p), None, None) => AuthSecret::Password(p.clone()),
        (None, Some(file), None) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path).map_err(|source| BuildError::File {
                upstream: u.name.clone(),
                key: "auth.password_file",
                path,
                source,
            })?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            AuthSecret::Password(text.strip_suffix('\r').unwrap_or(text).to_owned())
        }
        (None, None, Some(o)) => {
            let observer = context.tokens.clone();
            let clock = context.clock.clone();
            let source = oauth2::source(&u.name, u.provider, o, base, clock, observer)?;
            AuthSecret::OAuth2(source)
        }
        _ => {
            return Err(BuildError::Password {
                upstream: u.name.clone(),
            });
        }
    };
    Ok(Credentials {
        username: a.username.clone(),
        secret,
    })
}

/// Splits `host:port`, `1.2.3.4:port` or `[v6]:port`; the port is required.
fn split_address(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?,
        // An unbracketed host with a colon is an IPv6 address without brackets: ambiguous.
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then_some((host, port))
}

/// A real SMTP sink for the tests: a scripted server on 127.0.0.1:0.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "test harness")]
#[path = "test_sink.rs"]
pub(crate) mod sink;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests;
