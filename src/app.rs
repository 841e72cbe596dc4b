//! Wiring: config -> shared state -> listeners, delivery; owns reload and shutdown.
//!
//! [`start`] returns once every listener is bound, with their addresses, so tests can
//! start postern on `127.0.0.1:0` and read back the ports (mini-redis `start_server`).
//!
//! # Layout
//! - `reload.rs`: [`reload::Reloader`]: SIGHUP re-reads the config file into new rules, and
//!   the certificate watcher swaps in renewed certificate files.
//! - `restart.rs`: the settings a reload cannot apply, pinned to their running values.
//! - `certwatch.rs`: when the certificate files changed.

pub mod admin;
mod certwatch;
mod http;
pub mod reload;
mod restart;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::app::admin::Admin;
use crate::app::admin::token::{self, AdminToken};
use crate::app::certwatch::FilesStamp;
use crate::app::http::{Endpoint, Health};
use crate::app::reload::{ReloadError, ReloadOutcome, Reloader};
use crate::clock::Clock;
use crate::cluster::Redis;
use crate::config::schema::{Config, ListenerTls, QueueSync};
use crate::delivery;
use crate::policy::lockout::{self, Lockout};
use crate::policy::ratelimit;
use crate::rules::{ListenerInfo, Rules};
use crate::server::admission::{Caps, PerIp};
use crate::server::listener::{self, Listener};
use crate::server::tls::ServerTls;
use crate::server::{Runtime, tls};
use crate::shutdown::Shutdown;
use crate::spool::{Envelope, Spool, SyncMode};
use crate::telemetry::metrics::Metrics;
use crate::upstream;
use crate::users::Verifier;

/// Why postern could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum AppError {
    /// TLS set-up failed.
    Tls(tls::TlsError),
    /// The spool could not be opened.
    Spool(String),
    /// An upstream could not be set up.
    Upstream(String),
    /// The Redis client could not be set up (`redis:`).
    Redis(crate::cluster::ConnectError),
    /// The metrics could not be registered (a bug: names are fixed).
    Metrics(prometheus::Error),
    /// The admin API's token file could not be read or generated.
    AdminToken(String),
    /// The HTTP endpoint could not bind.
    Http {
        /// Its address.
        address: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// A listener could not bind.
    Bind {
        /// The listener's name.
        listener: String,
        /// Its address.
        address: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Tls(e) => write!(f, "{e}"),
            AppError::Spool(e) => write!(f, "queue.directory: {e}"),
            AppError::Upstream(e) => write!(f, "upstreams: {e}"),
            AppError::Redis(e) => write!(f, "{e}"),
            AppError::Metrics(e) => write!(f, "metrics: {e}"),
            AppError::AdminToken(e) => write!(f, "http.admin_token_file: {e}"),
            AppError::Http { address, error } => {
                write!(f, "http.address: cannot listen on {address}: {error}")
            }
            AppError::Bind {
                listener,
                address,
                error,
            } => {
                write!(
                    f,
                    "listener {listener:?}: cannot listen on {address}: {error}"
                )
            }
        }
    }
}

impl std::error::Error for AppError {}

/// A started relay.
#[derive(Debug)]
pub struct Running {
    /// Each listener's name and bound address, in config order.
    pub listeners: Vec<(String, SocketAddr)>,
    reloader: Arc<Reloader>,
    shutdown: Shutdown,
    grace: Duration,
    http: Option<Endpoint>,
}

impl Running {
    /// The bound address of the named listener.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Where the HTTP endpoint listens, when `http:` is configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|e| e.address)
    }

    /// Re-reads the config file (what SIGHUP does) and, when it is valid, swaps in its
    /// rules for new sessions and the next delivery attempts. Logs the outcome either way;
    /// on error the running configuration stays.
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        self.reloader.reload().await
    }

    /// Checks the certificate files now, as the watcher does every `tls.check_interval`;
    /// returns whether a renewed pair was swapped in.
    pub async fn check_certificate(&self) -> bool {
        self.reloader.check_certificate().await
    }

    /// Graceful stop: stop accepting, let sessions finish within the grace period, then
    /// tell the rest `421` and wait briefly for them; delivery stops and the spool keeps
    /// whatever is not delivered.
    pub async fn shutdown(self) {
        let Running {
            shutdown,
            grace,
            http,
            ..
        } = self;
        shutdown.stop.cancel();
        shutdown.tracker.close();
        if tokio::time::timeout(grace, shutdown.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open = shutdown.tracker.len(),
                "grace period over; closing remaining sessions"
            );
            shutdown.force.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), shutdown.tracker.wait()).await;
        }
        // Last: `/readyz` said "draining" while sessions finished.
        if let Some(http) = http {
            http.stop().await;
        }
        info!("stopped");
    }
}

/// Starts everything the config describes and returns once listeners are bound. Without a
/// file to re-read, [`Running::reload`] fails; see [`start_file`].
pub async fn start(cfg: Config) -> Result<Running, AppError> {
    start_with(cfg, Clock::new()).await
}

/// [`start`] with a given clock: tests pass one they move on with [`Clock::advance`].
pub async fn start_with(cfg: Config, clock: Clock) -> Result<Running, AppError> {
    launch(None, cfg, clock).await
}

/// [`start_with`] for a config loaded from `file`, which [`Running::reload`] re-reads.
pub async fn start_file(file: &Path, cfg: Config, clock: Clock) -> Result<Running, AppError> {
    launch(Some(file.to_owned()), cfg, clock).await
}

async fn launch(file: Option<PathBuf>, cfg: Config, clock: Clock) -> Result<Running, AppError> {
    let (server_tls, cert_stamp) = stamped_server_tls(&cfg).map_err(AppError::Tls)?;
    let (spool, recovered) = open_spool(&cfg)?;
    let metrics = start_metrics(&cfg, &server_tls, &clock)?;
    spool.observe(Box::new(metrics.spool.clone()));
    let upstreams = upstream::Context {
        clock: clock.clone(),
        tokens: Some(metrics.clone()),
    };
    let rules = Rules::build(&cfg, Arc::new(server_tls), &clock, upstreams)
        .map_err(|e| AppError::Upstream(e.to_string()))?;
    metrics.register_rules(rules.rate_limits.rule_names());
    let rules = Arc::new(ArcSwap::from_pointee(rules));
    let shutdown = Shutdown::default();
    let redis = start_redis(&cfg, &metrics, &shutdown)?;
    let delivery = delivery::start(
        spool.clone(),
        rules.clone(),
        clock.clone(),
        recovered,
        shutdown.clone(),
        metrics.clone(),
        redis.clone(),
    );
    let rt = Arc::new(Runtime {
        rules,
        spool,
        delivery,
        verifier: Verifier::new(&cfg.auth_cache),
        lockout: Lockout::new(&cfg.auth_lockout, &clock),
        clock,
        metrics,
        redis,
    });
    shutdown
        .tracker
        .spawn(evict_policy_state(rt.clone(), shutdown.clone()));
    let token = Arc::new(admin_token(&cfg)?);
    let bound = Arc::new(AtomicUsize::new(0));
    let listeners = bind(&cfg, &rt, &shutdown, &bound).await?;
    let grace = cfg.shutdown_grace.get();
    let http_cfg = cfg.http.clone();
    let reloader = Arc::new(Reloader::new(
        file,
        cfg.clone(),
        cert_stamp,
        rt.clone(),
        shutdown.clone(),
        token.clone(),
    ));
    let http = match &http_cfg {
        Some(h) => {
            let admin = Arc::new(Admin {
                token,
                rt: rt.clone(),
                reloader: reloader.clone(),
                shutdown: shutdown.clone(),
            });
            let health = Health {
                rt: rt.clone(),
                shutdown: shutdown.clone(),
                listeners: cfg.listeners.len(),
                bound,
                spool_check: tokio::sync::Mutex::new(None),
                scraping: tokio::sync::Mutex::new(()),
            };
            let endpoint = Endpoint::start(h.address, health, admin).await;
            Some(endpoint.map_err(|error| AppError::Http {
                address: h.address,
                error,
            })?)
        }
        None => None,
    };
    shutdown.tracker.spawn(reloader.clone().watch_certificate());
    Ok(Running {
        listeners,
        reloader,
        shutdown,
        grace,
        http,
    })
}

/// The shared Redis when `redis:` is configured, with its prober running until shutdown
/// (Redis is down until the prober's first PING answers; see [`crate::cluster`]).
fn start_redis(
    cfg: &Config,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> Result<Option<Redis>, AppError> {
    let Some(redis_cfg) = &cfg.redis else {
        return Ok(None);
    };
    let redis = Redis::new(redis_cfg, metrics.redis.clone()).map_err(AppError::Redis)?;
    let stop = shutdown.stop.clone();
    shutdown.tracker.spawn(redis.clone().watch(stop));
    Ok(Some(redis))
}

/// The admin API's token from `http.admin_token_file` (generated first when asked for and
/// absent); off when no file is configured.
fn admin_token(cfg: &Config) -> Result<AdminToken, AppError> {
    let token = AdminToken::default();
    let Some(http) = &cfg.http else {
        return Ok(token);
    };
    let Some(path) = &http.admin_token_file else {
        return Ok(token);
    };
    let fail = |e: String| AppError::AdminToken(e);
    if http.generate_admin_token && token::ensure_token(path).map_err(fail)? {
        warn!(file = %path.display(), "generated an admin API token");
    }
    token.set(Some(&token::read_token(path).map_err(fail)?));
    if !http.address.ip().is_loopback() {
        warn!(address = %http.address, "the admin API is on at a non-loopback address: its bearer token travels in plain HTTP");
    }
    Ok(token)
}

/// The metrics of a starting instance: every listener and upstream of `cfg` registered,
/// the start counted as a good load, the certificates' expiry set.
fn start_metrics(cfg: &Config, tls: &ServerTls, clock: &Clock) -> Result<Arc<Metrics>, AppError> {
    let metrics = Metrics::new().map_err(AppError::Metrics)?;
    metrics.register_upstreams(cfg.upstreams.iter().map(|u| u.name.as_str()));
    metrics.started(clock.unix());
    metrics.certificate_expiries(tls.expiries());
    Ok(Arc::new(metrics))
}

/// Opens the spool and returns it with the messages found in it.
fn open_spool(cfg: &Config) -> Result<(Spool, Vec<Envelope>), AppError> {
    let sync = match cfg.queue.sync {
        QueueSync::Fdatasync => SyncMode::Fdatasync,
        QueueSync::Syncfs => SyncMode::Syncfs,
    };
    let (spool, recovered) =
        Spool::open_with(&cfg.queue.directory, sync).map_err(|e| AppError::Spool(e.to_string()))?;
    if !recovered.is_empty() {
        info!(
            messages = recovered.len(),
            "picked up queued messages from the spool"
        );
    }
    Ok((spool, recovered))
}

/// Binds every listener and spawns its accept loop; returns the bound addresses.
async fn bind(
    cfg: &Config,
    rt: &Arc<Runtime>,
    shutdown: &Shutdown,
    accepting_now: &Arc<AtomicUsize>,
) -> Result<Vec<(String, SocketAddr)>, AppError> {
    let caps = Caps {
        global: Arc::new(Semaphore::new(cfg.limits.max_connections)),
        per_ip: PerIp::new(cfg.limits.max_connections_per_ip),
        refusals: Arc::new(Semaphore::new(Caps::MAX_REFUSALS)),
    };
    let mut bound = Vec::new();
    for l in &cfg.listeners {
        let socket = TcpListener::bind(l.address)
            .await
            .map_err(|error| AppError::Bind {
                listener: l.name.clone(),
                address: l.address,
                error,
            })?;
        let address = socket.local_addr().unwrap_or(l.address);
        info!(listener = %l.name, %address, tls = ?l.tls, auth = ?l.auth, "listening");
        bound.push((l.name.clone(), address));
        let listener = Listener {
            socket,
            info: Arc::new(ListenerInfo::from(l)),
            own_cap: l.max_connections.map(|n| Arc::new(Semaphore::new(n))),
            metrics: Arc::new(rt.metrics.listener(&l.name)),
        };
        let accepting = listener::run(listener, rt.clone(), caps.clone(), shutdown.clone());
        let count = accepting_now.clone();
        count.fetch_add(1, Ordering::Relaxed);
        shutdown.tracker.spawn(async move {
            accepting.await;
            count.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(bound)
}

/// The listeners' TLS configurations from the config's certificate sets, the top-level
/// one generated first when asked for and absent, with the stamp of the files: taken after
/// any generation and before reading them, so that a change made meanwhile shows at the
/// watcher's next check. Start and reload share it.
fn stamped_server_tls(cfg: &Config) -> Result<(ServerTls, FilesStamp), tls::TlsError> {
    generate_if_asked(cfg)?;
    let stamp = FilesStamp::of(cfg);
    Ok((ServerTls::load(cfg)?, stamp))
}

/// Generates the self-signed top-level pair when `tls.generate_self_signed` asks for it,
/// a TLS listener uses the top-level set, and both files are absent.
fn generate_if_asked(cfg: &Config) -> Result<(), tls::TlsError> {
    let Some(t) = cfg.tls.as_ref().filter(|t| t.generate_self_signed) else {
        return Ok(());
    };
    let uses_global = cfg
        .listeners
        .iter()
        .any(|l| l.tls != ListenerTls::None && l.certificate.is_none());
    if uses_global && tls::ensure_self_signed(&t.certificate, &t.private_key, &cfg.hostname)? {
        warn!(certificate = %t.certificate.display(), "generated a self-signed certificate; replace it for production");
    }
    Ok(())
}

/// Drops idle rate-limit keys and expired lockout entries periodically, so their memory
/// stays bounded by the clients seen within an interval.
async fn evict_policy_state(rt: Arc<Runtime>, shutdown: Shutdown) {
    let period = ratelimit::EVICT_PERIOD.min(lockout::EVICT_PERIOD);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.stop.cancelled() => return,
            _ = tick.tick() => {
                rt.rules().rate_limits.evict();
                rt.lockout.evict();
            }
        }
    }
}

/// Runs the relay from `cfg` (loaded from `file`) until SIGTERM or SIGINT, then drains.
/// SIGHUP reloads `file`.
pub async fn run(file: &Path, cfg: Config) -> Result<(), AppError> {
    let running = start_file(file, cfg, Clock::new()).await?;
    serve_until_stopped(&running).await;
    info!("shutting down: no new connections; open sessions may finish");
    running.shutdown().await;
    Ok(())
}

/// Waits for SIGTERM or SIGINT; reloads on each SIGHUP meanwhile.
async fn serve_until_stopped(running: &Running) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        // Without signal handlers, the only way out is being killed; wait forever.
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                info!("SIGHUP: reloading the configuration");
                // The outcome is logged by the reloader; a failed reload changes nothing.
                let _ = running.reload().await;
            }
        }
    }
}
