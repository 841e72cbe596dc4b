//! Wiring: config -> shared state -> listeners, delivery; owns shutdown.
//!
//! [`start`] returns once every listener is bound, with their addresses, so tests can
//! start postern on `127.0.0.1:0` and read back the ports (mini-redis `start_server`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::config::schema::{Config, ListenerTls, QueueSync};
use crate::delivery;
use crate::policy::lockout::{self, Lockout};
use crate::policy::ratelimit;
use crate::rules::{ListenerInfo, Rules};
use crate::server::listener::{self, Caps, Listener, PerIp};
use crate::server::{Runtime, tls};
use crate::shutdown::Shutdown;
use crate::spool::{Spool, SyncMode};
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
            AppError::Tls(e) => write!(f, "tls: {e}"),
            AppError::Spool(e) => write!(f, "queue.directory: {e}"),
            AppError::Upstream(e) => write!(f, "upstreams: {e}"),
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
    shutdown: Shutdown,
    grace: Duration,
}

impl Running {
    /// The bound address of the named listener.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Graceful stop: stop accepting, let sessions finish within the grace period, then
    /// tell the rest `421` and wait briefly for them; delivery stops and the spool keeps
    /// whatever is not delivered.
    pub async fn shutdown(self) {
        let Running {
            shutdown, grace, ..
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
        info!("stopped");
    }
}

/// Starts everything the config describes and returns once listeners are bound.
pub async fn start(cfg: Config) -> Result<Running, AppError> {
    start_with(cfg, Clock::new()).await
}

/// [`start`] with a given clock: tests pass one they move on with [`Clock::advance`].
pub async fn start_with(cfg: Config, clock: Clock) -> Result<Running, AppError> {
    let server_tls = if cfg.listeners.iter().any(|l| l.tls != ListenerTls::None) {
        Some(load_tls(&cfg)?)
    } else {
        None
    };
    let (spool, recovered) = Spool::open_with(
        &cfg.queue.directory,
        match cfg.queue.sync {
            QueueSync::Fdatasync => SyncMode::Fdatasync,
            QueueSync::Syncfs => SyncMode::Syncfs,
        },
    )
    .map_err(|e| AppError::Spool(e.to_string()))?;
    if !recovered.is_empty() {
        info!(
            messages = recovered.len(),
            "picked up queued messages from the spool"
        );
    }
    let rules =
        Rules::build(&cfg, server_tls, &clock).map_err(|e| AppError::Upstream(e.to_string()))?;
    let rules = Arc::new(ArcSwap::from_pointee(rules));
    let shutdown = Shutdown::default();
    let delivery = delivery::start(
        spool.clone(),
        rules.clone(),
        clock.clone(),
        recovered,
        shutdown.clone(),
    );
    let rt = Arc::new(Runtime {
        rules,
        spool,
        delivery,
        verifier: Verifier::new(&cfg.auth_cache),
        lockout: Lockout::new(&cfg.auth_lockout, &clock),
        clock,
    });
    shutdown
        .tracker
        .spawn(evict_policy_state(rt.clone(), shutdown.clone()));
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
        };
        shutdown.tracker.spawn(listener::run(
            listener,
            rt.clone(),
            caps.clone(),
            shutdown.clone(),
        ));
    }
    Ok(Running {
        listeners: bound,
        shutdown,
        grace: cfg.shutdown_grace.get(),
    })
}

fn load_tls(cfg: &Config) -> Result<Arc<rustls::ServerConfig>, AppError> {
    let Some(t) = &cfg.tls else {
        return Err(AppError::Tls(tls::TlsError::Generate(
            "a listener uses TLS but `tls:` is not configured".into(),
        )));
    };
    if t.generate_self_signed
        && tls::ensure_self_signed(&t.certificate, &t.private_key, &cfg.hostname)
            .map_err(AppError::Tls)?
    {
        warn!(certificate = %t.certificate.display(), "generated a self-signed certificate; replace it for production");
    }
    tls::server_config(&t.certificate, &t.private_key).map_err(AppError::Tls)
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

/// Runs until SIGTERM or SIGINT, then drains.
pub async fn run(cfg: Config) -> Result<(), AppError> {
    let running = start(cfg).await?;
    wait_for_signal().await;
    info!("shutting down: no new connections; open sessions may finish");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
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
            // SIGHUP's default action would kill every session mid-DATA; an admin who sends
            // it out of habit must not lose the relay. Reload itself is not built yet.
            _ = hup.recv() => warn!(
                "SIGHUP ignored: configuration reload is not supported yet; \
                 restart postern (SIGTERM drains, queued mail is kept) to apply changes"
            ),
        }
    }
}
