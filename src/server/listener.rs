//! Accept loops: one per listener, with the global and per-listener connection caps, the
//! per-IP cap, the allowlist, and backoff when accept itself fails (EMFILE and friends).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, debug, info, warn};

use crate::policy::networks;
use crate::policy::ratelimit::{Counted, Hit, Keys};
use crate::reason::Reason;
use crate::rules::{ListenerInfo, Rules};
use crate::server::Runtime;
use crate::server::conn;
use crate::server::fdlimit::Spare;
use crate::shutdown::Shutdown;
use crate::smtp::reply::Reply;
use crate::telemetry::metrics::{ConnResult, ListenerMetrics};

/// Concurrent sessions per client address, for `limits.max_connections_per_ip`.
#[derive(Debug, Default)]
pub struct PerIp {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one slot of a client's per-IP count; frees it on drop.
#[derive(Debug)]
pub struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// A table with this cap (0 = unlimited).
    pub fn new(limit: usize) -> Arc<PerIp> {
        Arc::new(PerIp {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `ip`, or None when it already has `limit` sessions.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Option<IpSlot>> {
        if self.limit == 0 {
            return Some(None);
        }
        let mut counts = self.counts.lock().ok()?;
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Some(IpSlot {
            table: self.clone(),
            ip,
        }))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.table.counts.lock()
            && let Some(n) = counts.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A bound listener ready to serve.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub socket: TcpListener,
    /// Its settings at start. Each connection takes them from the current rules instead
    /// (a reload may change `auth` and `allow_networks`); the reloader keeps every bound
    /// listener in them, so this is only a fallback.
    pub info: Arc<ListenerInfo>,
    /// Its own cap, if configured.
    pub own_cap: Option<Arc<Semaphore>>,
    /// Its metrics.
    pub metrics: Arc<ListenerMetrics>,
}

/// The caps every listener shares.
#[derive(Debug, Clone)]
pub struct Caps {
    /// `limits.max_connections`.
    pub global: Arc<Semaphore>,
    /// `limits.max_connections_per_ip`.
    pub per_ip: Arc<PerIp>,
    /// Refusals being written (allowlist, caps). They hold no connection slot, so they get
    /// their own small cap: past it a refused connection is closed without a reply, which
    /// keeps a flood of refused clients (each owed a TLS handshake on an implicit listener)
    /// from costing unbounded descriptors and CPU.
    pub refusals: Arc<Semaphore>,
}

impl Caps {
    /// Concurrent refusals in progress before further refused connections are just closed.
    pub const MAX_REFUSALS: usize = 64;
}

/// Accepts until shutdown; each connection runs in its own tracked task.
pub async fn run(listener: Listener, rt: Arc<Runtime>, caps: Caps, shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(5);
    let mut spare = Spare::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.stop.cancelled() => break,
            accepted = listener.socket.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e)
                if Spare::is_exhaustion(&e)
                    && spare
                        .refuse_one(
                            &listener.socket,
                            &rt.rules().hostname,
                            &listener.info.name,
                            &listener.metrics,
                        )
                        .await =>
            {
                continue;
            }
            Err(e) => {
                // Out of memory, or of descriptors with no spare to give up: wait and try
                // again rather than spin (mini-redis accept backoff), doubling up to one
                // second.
                warn!(listener = %listener.info.name, error = %e, "accept failed");
                tokio::select! {
                    () = shutdown.stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let rules = rt.rules();
        let info = rules
            .listener(&listener.info.name)
            .unwrap_or(&listener.info)
            .clone();
        let (refusal, permits) = if shutdown.draining.load(Ordering::Relaxed) {
            // A queue drain: new mail goes elsewhere while the queue empties.
            listener.metrics.connection(&ConnResult::Draining);
            let refusal = Some(Reply::shutting_down(&rules.hostname));
            (refusal, (None, None, None))
        } else {
            admit(&listener, &info, &rules, &rt, &caps, peer)
        };
        let refusing = match refusal {
            None => None,
            Some(_) => match caps.refusals.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    debug!(listener = %listener.info.name, client = %peer, "refusal cap reached: closed without a reply");
                    drop(tcp);
                    continue;
                }
            },
        };
        let span = tracing::info_span!("session", session = %session_id(), listener = %listener.info.name, client = %peer);
        let accepted = conn::Accepted { tcp, peer, refusal };
        let metrics = listener.metrics.clone();
        let task = conn::serve(accepted, rt.clone(), rules, info, metrics, shutdown.clone());
        shutdown.tracker.spawn(
            async move {
                let _permits = (permits, refusing);
                task.await;
            }
            .instrument(span),
        );
    }
    info!(listener = %listener.info.name, "stopped accepting");
}

/// Slots held for the life of a session.
type Permits = (
    Option<OwnedSemaphorePermit>,
    Option<OwnedSemaphorePermit>,
    Option<IpSlot>,
);

/// Decides whether a new connection may be served, and takes its slots.
fn admit(
    listener: &Listener,
    info: &ListenerInfo,
    rules: &Rules,
    rt: &Runtime,
    caps: &Caps,
    peer: SocketAddr,
) -> (Option<Reply>, Permits) {
    let (refusal, permits, result) = admit_or_refuse(listener, info, rules, caps, peer);
    if let ConnResult::ConnectionRate(rule) = &result {
        rt.metrics.rate_limit_hit(rule);
    }
    listener.metrics.connection(&result);
    (refusal, permits)
}

/// [`admit`], with what became of the connection for the metrics.
fn admit_or_refuse(
    listener: &Listener,
    info: &ListenerInfo,
    rules: &Rules,
    caps: &Caps,
    peer: SocketAddr,
) -> (Option<Reply>, Permits, ConnResult) {
    let refused = |reply: Reply, result| (Some(reply), (None, None, None), result);
    let ip = networks::canonical(peer.ip());
    if !networks::allowed(&info.allow_networks, ip) {
        info!(listener = %listener.info.name, client = %peer, reason = %Reason::Allowlist, "client not in allow_networks");
        return refused(Reply::not_allowed_client(), ConnResult::Allowlist);
    }
    if let Err(hit) = connection_rate(rules, &info.name, ip) {
        warn!(listener = %listener.info.name, client = %peer, reason = %Reason::ConnectionRate, rule = %hit.rule, limit = %hit.description, "connection rate limit reached");
        let reply = Reply::connection_rate(&hit.rule, hit.retry_after);
        return refused(reply, ConnResult::ConnectionRate(hit.rule));
    }
    let Ok(global) = caps.global.clone().try_acquire_owned() else {
        warn!(listener = %listener.info.name, client = %peer, reason = %Reason::ConnectionCap, "global connection limit reached");
        return refused(Reply::too_many_connections(), ConnResult::ConnectionCap);
    };
    let own = match &listener.own_cap {
        Some(sem) => match sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                warn!(listener = %listener.info.name, client = %peer, reason = %Reason::ConnectionCap, "listener connection limit reached");
                return refused(Reply::too_many_connections(), ConnResult::ConnectionCap);
            }
        },
        None => None,
    };
    let Some(slot) = caps.per_ip.acquire(ip) else {
        warn!(listener = %listener.info.name, client = %peer, reason = %Reason::ConnectionCap, "per-IP connection limit reached");
        return refused(Reply::too_many_connections(), ConnResult::ConnectionCap);
    };
    (None, (Some(global), own, slot), ConnResult::Accepted)
}

/// Counts the connection against the `connections` rate rules (a device's own, if its
/// `networks` entry has some).
fn connection_rate(rules: &Rules, listener: &str, ip: IpAddr) -> Result<(), Hit> {
    let identity = rules.policy.connect_identity(ip);
    let label = identity.label();
    let keys = Keys::connection(ip, listener, label.as_deref());
    let limits = &rules.rate_limits;
    limits.check(Counted::Connection, &keys, limits.overrides_for(&identity))
}

/// A short random id that names a session in every log line.
fn session_id() -> String {
    let n: u64 = rand::random();
    format!("{n:016x}")
}
