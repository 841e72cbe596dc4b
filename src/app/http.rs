//! The HTTP endpoint (`http.address`): `GET /metrics` (Prometheus text format), `/healthz`
//! (the process serves) and `/readyz` (ready for traffic; the body names each failed
//! check). Routed by axum and served by hyper on its own task, on the same runtime but never
//! in the way of the SMTP side: a scrape reads atomics and formats text, the spool check
//! runs on a blocking thread under a deadline, at most once a second. Connections are
//! capped, and each must send its request head within seconds and is closed after a minute,
//! so a slow or idle client cannot hold descriptors the SMTP side needs. It keeps serving
//! through a drain, answering `/readyz` with 503 `draining` so that a load balancer moves
//! traffic away, and stops when postern does. The admin API (`/api/v1/`, admin.rs) is served
//! here too, behind its bearer token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::app::admin::{self, Admin};
use crate::server::Runtime;
use crate::shutdown::Shutdown;
use crate::upstream::breaker::Shown;

/// Longest the spool check may take before the spool counts as not writable (a hung
/// filesystem must not hang the probe).
const SPOOL_CHECK_LIMIT: Duration = Duration::from_secs(2);
/// How long a spool check's result is reused: probes and scrapes in a burst share one.
const SPOOL_CHECK_REUSE: Duration = Duration::from_secs(1);
/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 32;
/// A connection must send its request head within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this, kept alive or not.
const CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// What the readiness checks look at.
#[derive(Debug)]
pub(crate) struct Health {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) shutdown: Shutdown,
    /// Listeners configured.
    pub(crate) listeners: usize,
    /// Listeners bound and accepting now.
    pub(crate) bound: Arc<AtomicUsize>,
    /// The latest spool check and when it was made; held while one runs, so checks
    /// never pile up behind a hung filesystem.
    pub(crate) spool_check: Mutex<Option<(Instant, Result<(), String>)>>,
    /// Held while a scrape refreshes and renders, so that concurrent scrapes (an HA pair
    /// of Prometheus servers) do not interleave their refreshes.
    pub(crate) scraping: Mutex<()>,
}

impl Health {
    /// Every failed readiness check, described; empty when ready.
    pub(crate) async fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let bound = self.bound.load(Ordering::Relaxed);
        if bound < self.listeners {
            problems.push(format!(
                "listeners: {bound} of {} accepting",
                self.listeners
            ));
        }
        if self.shutdown.stop.is_cancelled() {
            problems.push("draining: shutting down, not taking new sessions".to_owned());
        } else if self.shutdown.draining.load(Ordering::Relaxed) {
            problems.push(
                "draining: queue drain in progress (postern queue drain), not taking new sessions"
                    .to_owned(),
            );
        }
        if let Err(why) = self.spool_writable().await {
            problems.push(format!("spool: not writable: {why}"));
        }
        problems.extend(self.routes());
        self.rt.metrics.ready.set(i64::from(problems.is_empty()));
        problems
    }

    /// The spool check, reused for [`SPOOL_CHECK_REUSE`].
    async fn spool_writable(&self) -> Result<(), String> {
        let mut last = self.spool_check.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < SPOOL_CHECK_REUSE
        {
            return result.clone();
        }
        let result = self.check_spool().await;
        *last = Some((Instant::now(), result.clone()));
        result
    }

    async fn check_spool(&self) -> Result<(), String> {
        let spool = self.rt.spool.clone();
        let check = tokio::task::spawn_blocking(move || spool.check_writable());
        match tokio::time::timeout(SPOOL_CHECK_LIMIT, check).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(format!("check failed: {e}")),
            Err(_) => Err(format!("no answer within {SPOOL_CHECK_LIMIT:?}")),
        }
    }

    /// A route whose every upstream is failing: it could not be reached or logged in to at
    /// its latest attempt, or its circuit breaker skips it now.
    fn routes(&self) -> Vec<String> {
        let rules = self.rt.rules();
        let metrics = &self.rt.metrics;
        let now = self.rt.clock.now();
        let why = |name: &str| -> Option<&'static str> {
            let open = rules
                .upstreams
                .breaker(name)
                .is_some_and(|b| b.shown(now) == Shown::Open);
            if open {
                Some("circuit breaker open")
            } else if !metrics.upstream(name).is_up() {
                Some("down")
            } else {
                None
            }
        };
        let mut problems = Vec::new();
        for (i, names) in rules.upstreams.router().upstream_lists().enumerate() {
            let failing: Option<Vec<String>> = names
                .iter()
                .map(|n| why(n).map(|w| format!("{n}: {w}")))
                .collect();
            if let Some(each) = failing {
                problems.push(format!(
                    "routes[{i}]: every upstream is failing ({})",
                    each.join(", ")
                ));
            }
        }
        problems
    }

    /// Brings the gauges that are read rather than counted up to date.
    fn refresh(&self) {
        let rt = &self.rt;
        rt.metrics.queue.refresh(rt.clock.unix());
        let rules = rt.rules();
        let now = rt.clock.now();
        for (name, pool) in rules.upstreams.pools() {
            rt.metrics
                .upstream_connections(name, pool.open_connections(), pool.busy());
            if let Some(breaker) = rules.upstreams.breaker(name) {
                let open = breaker.shown(now) == Shown::Open;
                rt.metrics.upstream(name).set_circuit_open(open);
            }
        }
    }
}

/// The running endpoint.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Where it listens.
    pub(crate) address: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// Binds `address` and serves until [`Endpoint::stop`].
    pub(crate) async fn start(
        address: SocketAddr,
        health: Health,
        admin: Arc<Admin>,
    ) -> std::io::Result<Endpoint> {
        let socket = TcpListener::bind(address).await?;
        let address = socket.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(Arc::new(health))
            .merge(admin::routes(admin));
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(socket, app, stop.clone()));
        info!(%address, "HTTP endpoint listening: /metrics /healthz /readyz");
        Ok(Endpoint {
            address,
            stop,
            task,
        })
    }

    /// Stops serving; requests in progress get a moment to finish.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(3), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Accepts until `stop`, each connection in its own task under the caps above.
async fn serve(socket: TcpListener, app: Router, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let tcp = tokio::select! {
            () = stop.cancelled() => break,
            accepted = socket.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    warn!(error = %e, "HTTP endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over the cap the connection is closed unanswered: scrapers retry.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        conns.spawn(connection(tcp, app.clone(), stop.clone(), slot));
        while conns.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}

/// Serves one connection: HTTP/1.1 with a deadline for each request head and a bound on
/// its whole life; at `stop`, requests in progress finish and the connection closes.
async fn connection(
    tcp: tokio::net::TcpStream,
    app: Router,
    stop: CancellationToken,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let stopped = tokio::select! {
        _ = tokio::time::timeout(CONNECTION_LIMIT, conn.as_mut()) => false,
        () = stop.cancelled() => true,
    };
    if stopped {
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> Response {
    let _one_at_a_time = health.scraping.lock().await;
    health.refresh();
    let _ = health.problems().await;
    match health.rt.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            warn!(error = %e, "cannot render the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the metrics\n",
            )
                .into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(health): State<Arc<Health>>) -> Response {
    let problems = health.problems().await;
    if problems.is_empty() {
        // Redis down does not make an instance unready: its cluster limits fall back to
        // each rule's on_redis_error. Said here for whoever looks.
        let body = match &health.rt.redis {
            Some(r) if !r.is_up() => {
                "ready\nredis: unavailable; cluster limits apply their on_redis_error\n"
            }
            _ => "ready\n",
        };
        return (StatusCode::OK, body).into_response();
    }
    let mut body = String::from("not ready\n");
    for p in problems {
        body.push_str(&p);
        body.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}
