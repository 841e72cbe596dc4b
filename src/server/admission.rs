//! Whether a new connection is served: the connection caps, the allowlist and the
//! `connections` rate rules, each refusal with its reply and its `connections_total` result.
//!
//! Two steps, because a listener behind a load balancer learns the client's address only
//! from the PROXY header: [`Gate::reserve`] takes the caps that do not depend on the address
//! (global, listener) before the header is read, so waiting headers are bounded too;
//! [`Gate::admit`] runs after it, on the real address (allowlist, connection rate, per IP).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::policy::networks;
use crate::policy::ratelimit::{Counted, Keys, Refusal as RateRefusal};
use crate::reason::Reason;
use crate::rules::{ListenerInfo, Rules};
use crate::server::Runtime;
use crate::smtp::reply::Reply;
use crate::telemetry::metrics::ConnResult;

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

/// Slots held for the life of a session; each is given back when it is dropped.
#[derive(Debug, Default)]
#[allow(dead_code, reason = "the fields are held for their Drop, never read")]
pub struct Permits {
    global: Option<OwnedSemaphorePermit>,
    listener: Option<OwnedSemaphorePermit>,
    ip: Option<IpSlot>,
}

/// A connection that will not be served: what it is told, and its metrics result.
#[derive(Debug)]
pub struct Refusal {
    /// The reply it gets instead of the banner.
    pub reply: Reply,
    /// What `postern_connections_total` counts it as.
    pub result: ConnResult,
}

/// Admission for one connection on one listener.
#[derive(Debug)]
pub struct Gate<'a> {
    /// Process-wide state (metrics).
    pub rt: &'a Runtime,
    /// The rules snapshot the session will run under.
    pub rules: &'a Rules,
    /// The listener's settings in that snapshot.
    pub info: &'a ListenerInfo,
    /// The shared caps.
    pub caps: &'a Caps,
    /// The listener's own cap, if configured.
    pub own_cap: Option<&'a Arc<Semaphore>>,
}

impl Gate<'_> {
    /// The caps that do not depend on the client's address: `limits.max_connections` and
    /// the listener's `max_connections`. `peer` is only for the logs.
    pub fn reserve(&self, peer: SocketAddr) -> Result<Permits, Refusal> {
        let name = &self.info.name;
        let Ok(global) = self.caps.global.clone().try_acquire_owned() else {
            warn!(listener = %name, client = %peer, reason = %Reason::ConnectionCap, "global connection limit reached");
            return Err(too_many());
        };
        let listener = match self.own_cap {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    warn!(listener = %name, client = %peer, reason = %Reason::ConnectionCap, "listener connection limit reached");
                    return Err(too_many());
                }
            },
            None => None,
        };
        Ok(Permits {
            global: Some(global),
            listener,
            ip: None,
        })
    }

    /// The rules on the client's (real) address, with the slots [`Gate::reserve`] took: the
    /// allowlist (behind a load balancer; a listener without `proxy_protocol` checked it
    /// before the caps), the `connections` rate rules, `limits.max_connections_per_ip`. On
    /// refusal the slots are given back.
    pub async fn admit(&self, client: SocketAddr, held: Permits) -> Result<Permits, Refusal> {
        let name = &self.info.name;
        let ip = networks::canonical(client.ip());
        if self.info.proxy_protocol.is_some() {
            self.allowlist(client)?;
        }
        self.connection_rate(client, ip).await?;
        let Some(ip_slot) = self.caps.per_ip.acquire(ip) else {
            warn!(listener = %name, client = %client, reason = %Reason::ConnectionCap, "per-IP connection limit reached");
            return Err(too_many());
        };
        Ok(Permits {
            ip: ip_slot,
            ..held
        })
    }

    /// The listener's `allow_networks`, on the client's (real) address. Also run before
    /// [`Gate::reserve`] on a listener without `proxy_protocol`, whose clients' addresses are
    /// known at accept: there, as before the PROXY protocol, a client outside the allowlist
    /// is told `554 5.7.1` even when the connection caps are full, and takes no slot.
    pub fn allowlist(&self, client: SocketAddr) -> Result<(), Refusal> {
        let ip = networks::canonical(client.ip());
        if networks::allowed(&self.info.allow_networks, ip) {
            return Ok(());
        }
        info!(listener = %self.info.name, client = %client, reason = %Reason::Allowlist, "client not in allow_networks");
        Err(Refusal {
            reply: Reply::not_allowed_client(),
            result: ConnResult::Allowlist,
        })
    }

    /// Counts the connection against the `connections` rate rules (a device's own, if its
    /// `networks` entry has some): the local ones, then those with `scope: cluster` in the
    /// shared Redis, in the connection's own task (a slow Redis delays this client's banner
    /// by at most `redis.command_timeout`, never the accept loop). Over a rule: `421 4.7.0`;
    /// a cluster rule with `on_redis_error: deny` that cannot be checked: `421 4.3.0`.
    async fn connection_rate(&self, client: SocketAddr, ip: IpAddr) -> Result<(), Refusal> {
        let rules = self.rules;
        let identity = rules.policy.connect_identity(ip);
        let label = identity.label();
        let keys = Keys::connection(ip, &self.info.name, label.as_deref());
        let limits = &rules.rate_limits;
        let overrides = limits.overrides_for(&identity);
        let redis = self.rt.redis.as_ref();
        let checked = limits.check_shared(redis, Counted::Connection, &keys, overrides);
        let name = &self.info.name;
        match checked.await {
            Ok(()) => Ok(()),
            Err(RateRefusal::Limit(hit)) => {
                warn!(listener = %name, client = %client, reason = %Reason::ConnectionRate, rule = %hit.rule, limit = %hit.description, "connection rate limit reached");
                self.rt.metrics.rate_limit_hit(&hit.rule);
                Err(Refusal {
                    reply: Reply::connection_rate(&hit.rule, hit.retry_after),
                    result: ConnResult::ConnectionRate(hit.rule),
                })
            }
            Err(RateRefusal::Unavailable { rule }) => Err(Refusal {
                reply: Reply::connection_rate_unavailable(&rule),
                result: ConnResult::ConnectionRate(rule),
            }),
        }
    }
}

fn too_many() -> Refusal {
    Refusal {
        reply: Reply::too_many_connections(),
        result: ConnResult::ConnectionCap,
    }
}
