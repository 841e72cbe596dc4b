//! The HTTP endpoint (`http.address`): `GET /metrics` (Prometheus text format), `/healthz`
//! (the process serves) and `/readyz` (ready for traffic; the body names each failed
//! check). Served by axum on its own task, on the same runtime but never in the way of the
//! SMTP side: a scrape reads atomics and formats text, the spool check runs on a blocking
//! thread under a deadline. It keeps serving through a drain, answering `/readyz` with 503
//! `draining` so that a load balancer moves traffic away, and stops when postern does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::server::Runtime;
use crate::shutdown::Shutdown;

/// Longest the spool check may take before the spool counts as not writable (a hung
/// filesystem must not hang the probe).
const SPOOL_CHECK_LIMIT: Duration = Duration::from_secs(2);

/// What the readiness checks look at.
#[derive(Debug)]
pub(crate) struct Health {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) shutdown: Shutdown,
    /// Listeners configured.
    pub(crate) listeners: usize,
    /// Listeners bound and accepting now.
    pub(crate) bound: Arc<AtomicUsize>,
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
        }
        if let Err(why) = self.spool_writable().await {
            problems.push(format!("spool: not writable: {why}"));
        }
        problems.extend(self.routes());
        self.rt.metrics.ready.set(i64::from(problems.is_empty()));
        problems
    }

    async fn spool_writable(&self) -> Result<(), String> {
        let spool = self.rt.spool.clone();
        let check = tokio::task::spawn_blocking(move || spool.check_writable());
        match tokio::time::timeout(SPOOL_CHECK_LIMIT, check).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(format!("check failed: {e}")),
            Err(_) => Err(format!("no answer within {SPOOL_CHECK_LIMIT:?}")),
        }
    }

    /// A route whose every upstream is failing (could not be reached or logged in to at
    /// its latest attempt).
    fn routes(&self) -> Vec<String> {
        let rules = self.rt.rules();
        let metrics = &self.rt.metrics;
        rules
            .upstreams
            .router()
            .upstream_lists()
            .enumerate()
            .filter(|(_, names)| !names.iter().any(|n| metrics.upstream(n).is_up()))
            .map(|(i, names)| {
                format!(
                    "routes[{i}]: every upstream is failing ({})",
                    names.join(", ")
                )
            })
            .collect()
    }

    /// Brings the gauges that are read rather than counted up to date.
    fn refresh(&self) {
        let rt = &self.rt;
        rt.metrics.queue.refresh(rt.clock.unix());
        let rules = rt.rules();
        for (name, pool) in rules.upstreams.pools() {
            rt.metrics
                .upstream_connections(name, pool.open_connections(), pool.busy());
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
    pub(crate) async fn start(address: SocketAddr, health: Health) -> std::io::Result<Endpoint> {
        let socket = TcpListener::bind(address).await?;
        let address = socket.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(Arc::new(health));
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(socket, app)
                .with_graceful_shutdown(async move { until.cancelled().await })
                .await;
            if let Err(e) = served {
                warn!(error = %e, "HTTP endpoint stopped");
            }
        });
        info!(%address, "HTTP endpoint listening: /metrics /healthz /readyz");
        Ok(Endpoint {
            address,
            stop,
            task,
        })
    }

    /// Stops serving; waits briefly for requests in progress.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> Response {
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
        return (StatusCode::OK, "ready\n").into_response();
    }
    let mut body = String::from("not ready\n");
    for p in problems {
        body.push_str(&p);
        body.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}
